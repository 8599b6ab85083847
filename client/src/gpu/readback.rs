//! Reading GPU buffers back to the CPU: the one place that maps buffers and waits.
//!
//! Why it looks like this. WebGPU never lets a page block on the GPU: a buffer is mapped
//! with `map_async`, whose callback fires once every earlier submission that uses the
//! buffer has finished. In the browser that callback runs from the event loop, so the only
//! way to wait for it is to `.await` something it completes: here a oneshot channel.
//! Natively, wgpu runs map callbacks only inside `Device::poll`, so before awaiting we
//! poll (blocking) until the queue is idle; on the web `poll` is documented as a no-op.
//! The same async code therefore works on both targets without a `cfg`, and native
//! synchronous callers (the [`crate::Trainer`] methods) wrap it in [`block_on`], the only
//! target-specific function here: pollster natively, a clear panic on the web, where
//! blocking the thread would deadlock the page.
//!
//! The trainer's loss ring uses [`map_read`] without waiting: it keeps the receiver and
//! checks it with `try_recv` after a non-blocking poll.

use std::future::Future;

use futures_channel::oneshot;

use super::context::GpuLost;

/// The outcome of a map request.
pub(crate) type MapResult = Result<(), wgpu::BufferAsyncError>;

/// Requests a read mapping of the whole `buffer` and returns a receiver that completes
/// when the mapping is ready. Never waits; call it after the submit that fills `buffer`.
pub(crate) fn map_read(buffer: &wgpu::Buffer) -> oneshot::Receiver<MapResult> {
    let (tx, rx) = oneshot::channel();
    buffer
        .slice(..)
        .map_async(wgpu::MapMode::Read, move |result| {
            // The receiver may be gone if the trainer was dropped; nothing to report then.
            let _ = tx.send(result);
        });
    rx
}

/// Waits for a mapping requested with [`map_read`]. Natively this blocks in
/// `Device::poll` until the queue is idle (which runs the callback); on the web it yields
/// to the browser until the callback has run. A lost device fails the mapping: that is
/// [`GpuLost`], which the browser answers by training on the CPU.
pub(crate) async fn wait_mapped(
    device: &wgpu::Device,
    rx: oneshot::Receiver<MapResult>,
) -> Result<(), GpuLost> {
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| GpuLost(format!("waiting for a readback: {e}")))?;
    rx.await
        .map_err(|_| GpuLost("wgpu dropped a buffer-map callback".into()))?
        .map_err(|e| GpuLost(format!("mapping a readback buffer: {e}")))
}

/// Copies `size` bytes at byte `offset` of `src` (which needs `COPY_SRC`) back to the CPU,
/// through a fresh staging buffer so that concurrent reads never share one. Queued work is
/// finished first, because the copy is submitted after it.
pub(crate) async fn read_buffer(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    src: &wgpu::Buffer,
    offset: u64,
    size: u64,
) -> Result<Vec<u8>, GpuLost> {
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback staging"),
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
        label: Some("readback"),
    });
    encoder.copy_buffer_to_buffer(src, offset, &staging, 0, size);
    queue.submit([encoder.finish()]);
    let rx = map_read(&staging);
    wait_mapped(device, rx).await?;
    let bytes = staging
        .slice(..)
        .get_mapped_range()
        .map_err(|e| GpuLost(format!("reading a mapped buffer: {e}")))?
        .to_vec();
    staging.unmap();
    Ok(bytes)
}

/// Runs a future to completion on the calling thread (native only). The web cannot block,
/// so there it panics; browser code uses the async methods instead.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    #[cfg(not(target_arch = "wasm32"))]
    {
        pollster::block_on(future)
    }
    #[cfg(target_arch = "wasm32")]
    {
        drop(future);
        panic!(
            "the GPU backend cannot block in a browser: use GpuTrainer::read_params().await \
             and GpuTrainer::finish_async().await instead of Trainer::params and Trainer::finish"
        )
    }
}
