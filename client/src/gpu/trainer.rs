//! [`GpuTrainer`]: lenet5-28 training with the parameters, optimizer state and shard on the GPU.
//!
//! A step is one command buffer and one `queue.submit`: gather the batch, the forward pass,
//! the fused softmax cross-entropy, every backward kernel and the SGD update, 18 compute
//! dispatches in all (see [`GpuTrainer::dispatches_per_step`]). Nothing is read back inside
//! a step. The two things that change per step, the sample indices and the small uniform
//! block (batch size, learning rate, loss slot), are uploaded with `queue.write_buffer`,
//! which wgpu orders before the step's submit and after every earlier one.
//!
//! Losses: the softmax kernel writes each step's mean loss into a slot of a ring of
//! [`LOSS_INTERVAL`] floats on the GPU. When the ring is full, the step's command buffer
//! also copies it into a small staging buffer, which is then mapped asynchronously; nothing
//! waits for it. [`Trainer::poll_losses`] hands out the losses of every mapping that has
//! completed, in step order, and never blocks.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};

use easel_protocol::model_spec::lenet5_28 as layout;
use futures_channel::oneshot;
use wgpu::util::DeviceExt;

use super::context::{Gpu, GpuError, GpuLost};
use super::kernels::{ConvDims, DenseDims, Op, StepArgs, UNIFORM_STRIDE};
use super::readback::{self, MapResult};
use crate::Sgd;
use crate::model::{CLASSES, IMAGE_PIXELS, PARAMS, pixel_to_input};
use crate::trainer::Trainer;

/// Steps whose losses are read back together: the loss ring's length.
pub const LOSS_INTERVAL: u32 = 16;

/// The model's layers as the kernels see them.
const CONV1: ConvDims = ConvDims {
    in_ch: 1,
    height: 28,
    width: 28,
    out_ch: 6,
    kernel: 5,
    w_off: layout::CONV1_W as u32,
    b_off: layout::CONV1_B as u32,
};
const CONV2: ConvDims = ConvDims {
    in_ch: 6,
    height: 12,
    width: 12,
    out_ch: 16,
    kernel: 5,
    w_off: layout::CONV2_W as u32,
    b_off: layout::CONV2_B as u32,
};
const FC1: DenseDims = DenseDims {
    inputs: 256,
    outputs: 120,
    w_off: layout::FC1_W as u32,
    b_off: layout::FC1_B as u32,
    relu: true,
};
const FC2: DenseDims = DenseDims {
    inputs: 120,
    outputs: 84,
    w_off: layout::FC2_W as u32,
    b_off: layout::FC2_B as u32,
    relu: true,
};
const FC3: DenseDims = DenseDims {
    inputs: 84,
    outputs: 10,
    w_off: layout::FC3_W as u32,
    b_off: layout::FC3_B as u32,
    relu: false,
};

/// The convolutions' weights and biases fill the parameters before this offset, in one
/// block: their gradients come as one partial sum per sample, which the SGD kernel adds up
/// (see `conv_backward_weight.wgsl`).
const CONV_PARAMS: u32 = layout::FC1_W as u32;
const _: () = assert!(
    layout::CONV1_W == 0
        && layout::CONV1_B == layout::CONV1_W + 6 * 25
        && layout::CONV2_W == layout::CONV1_B + 6
        && layout::CONV2_B == layout::CONV2_W + 16 * 6 * 25
        && layout::FC1_W == layout::CONV2_B + 16,
    "the convolutions' parameters must fill the start of the vector"
);

/// The zero border around each plane of conv2's output gradient, which conv2's input
/// gradient kernel reads without bounds tests (`conv_backward_input.wgsl`).
const DY2_PAD: u32 = CONV2.kernel - 1;

/// The shard's pixels are packed four to a `u32` word.
const WORDS_PER_IMAGE: u32 = (IMAGE_PIXELS / 4) as u32;

/// One flush of the loss ring on its way back to the CPU.
struct PendingLosses {
    staging: wgpu::Buffer,
    steps: u32,
    mapped: oneshot::Receiver<MapResult>,
}

/// The loss ring on the GPU and the staging buffers it is read back through.
struct LossRing {
    ring: wgpu::Buffer,
    /// Slots written since the last flush; the next step writes slot `filled`.
    filled: u32,
    /// Staging buffers that are neither queued nor mapped.
    free: Vec<wgpu::Buffer>,
    /// Flushes in step order whose mapping has not been consumed yet.
    pending: VecDeque<PendingLosses>,
    /// Losses already read back but not yet handed out (older than every pending flush).
    ready: Vec<f32>,
}

impl LossRing {
    fn new(device: &wgpu::Device) -> LossRing {
        let ring = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("loss ring"),
            size: u64::from(LOSS_INTERVAL) * 4,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        // A few in flight at once; more are made only if the GPU falls far behind.
        let free = (0..4).map(|_| staging(device)).collect();
        LossRing {
            ring,
            filled: 0,
            free,
            pending: VecDeque::new(),
            ready: Vec::new(),
        }
    }

    /// Records the copy of the filled slots into a staging buffer; returns the buffer to
    /// map once the encoder is submitted, or `None` when no slot is filled.
    fn record_flush(
        &mut self,
        device: &wgpu::Device,
        encoder: &mut wgpu::CommandEncoder,
    ) -> Option<(wgpu::Buffer, u32)> {
        if self.filled == 0 {
            return None;
        }
        if self.free.is_empty() {
            // Every staging buffer is in flight. Natively, map callbacks only run inside
            // `poll`, so a caller that never polls would make us allocate forever: run the
            // finished ones now (without waiting) and keep their losses for later.
            let _ = device.poll(wgpu::PollType::Poll);
            let mut ready = std::mem::take(&mut self.ready);
            self.collect(&mut ready);
            self.ready = ready;
        }
        // Only when the GPU is far behind: one more buffer, unavoidable.
        let buffer = self.free.pop().unwrap_or_else(|| staging(device));
        encoder.copy_buffer_to_buffer(&self.ring, 0, &buffer, 0, u64::from(self.filled) * 4);
        let steps = self.filled;
        self.filled = 0;
        Some((buffer, steps))
    }

    /// Requests the mapping of a flushed staging buffer (after its submit).
    fn map(&mut self, (staging, steps): (wgpu::Buffer, u32)) {
        let mapped = readback::map_read(&staging);
        self.pending.push_back(PendingLosses {
            staging,
            steps,
            mapped,
        });
    }

    /// Moves the losses of the leading completed mappings into `out`, in step order.
    fn collect(&mut self, out: &mut Vec<f32>) {
        while let Some(front) = self.pending.front_mut() {
            match front.mapped.try_recv() {
                Ok(Some(result)) => {
                    let p = self.pending.pop_front().expect("front exists");
                    // A failed mapping means the device is lost: its losses are gone, and
                    // the next readback reports it.
                    if result.is_ok() {
                        self.consume(p.staging, p.steps, out);
                    }
                }
                Ok(None) => break,
                Err(oneshot::Canceled) => {
                    panic!("wgpu dropped the loss buffer's map callback without calling it")
                }
            }
        }
    }

    /// Reads a mapped flush of `steps` losses into `out` and returns its staging buffer
    /// to the free list.
    fn consume(&mut self, staging: wgpu::Buffer, steps: u32, out: &mut Vec<f32>) {
        {
            let view = staging
                .slice(..)
                .get_mapped_range()
                .expect("the loss staging buffer is mapped");
            let bytes = &view[..steps as usize * 4];
            out.extend(bytemuck::pod_collect_to_vec::<u8, f32>(bytes));
        }
        staging.unmap();
        self.free.push(staging);
    }
}

/// A staging buffer for one ring's worth of losses.
fn staging(device: &wgpu::Device) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("loss staging"),
        size: u64::from(LOSS_INTERVAL) * 4,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

/// Every buffer is a whole number of `vec4<f32>`s long. Kernels bind the parameters (and
/// other buffers) as `array<vec4<f32>>`, whose runtime length is `floor(size / 16)`; a
/// trailing partial vec4 is out of bounds, and browsers clamp out-of-bounds indices (WebGPU
/// robustness), so with 44,426 parameters Chrome read `fc3.bias[8..10]` from the wrong place
/// while native Vulkan happened to read the right values.
const VEC4_BYTES: u64 = 16;

/// A [`Trainer`] on a wgpu device: lenet5-28 with its parameters, gradient, SGD velocity
/// and the whole data shard resident on the GPU.
///
/// Steps are queued and never waited for; see the module documentation for how losses
/// come back. On the web, where nothing may block, use [`GpuTrainer::read_params`] and
/// [`GpuTrainer::finish_async`] instead of [`Trainer::params`] and [`Trainer::finish`]
/// (which panic there).
pub struct GpuTrainer {
    gpu: Gpu,
    sgd: Sgd,
    max_batch: u32,
    shard_len: u32,
    indices: wgpu::Buffer,
    uniforms: wgpu::Buffer,
    params: wgpu::Buffer,
    velocity: wgpu::Buffer,
    /// The step's dispatches in order; dispatch `i` reads uniform slot `i`.
    ops: Vec<(Op, wgpu::BindGroup)>,
    /// The uniform block, rebuilt on the CPU each step and uploaded in one write.
    uniform_block: Vec<u8>,
    losses: LossRing,
    last_dispatches: u32,
    last_submits: u32,
    last_readbacks: u32,
    /// Waits for the GPU (awaited buffer mappings) since construction.
    readbacks: AtomicU32,
}

impl GpuTrainer {
    /// A trainer on `gpu` for the shard `images_u8` (`n * 784` raw pixels) with `labels`
    /// (`n` labels below 10), starting from `params`, for batches of at most `max_batch`.
    /// Every buffer and bind group the steps use is created here.
    ///
    /// # Errors
    ///
    /// [`GpuError::TooLarge`] when the shard or the activations of `max_batch` samples do
    /// not fit in one storage buffer of the device.
    ///
    /// # Panics
    ///
    /// When the lengths disagree, `params` is not [`PARAMS`] long, a label is 10 or more,
    /// or `max_batch` is 0.
    pub fn new(
        gpu: &Gpu,
        images_u8: &[u8],
        labels: &[u8],
        params: &[f32],
        sgd: Sgd,
        max_batch: usize,
    ) -> Result<GpuTrainer, GpuError> {
        assert_eq!(
            images_u8.len(),
            labels.len() * IMAGE_PIXELS,
            "GpuTrainer: {} pixels for {} labels",
            images_u8.len(),
            labels.len()
        );
        assert_eq!(params.len(), PARAMS, "GpuTrainer: parameter vector length");
        if let Some(&bad) = labels.iter().find(|&&l| l as usize >= CLASSES) {
            panic!("GpuTrainer: label {bad} out of range");
        }
        assert!(max_batch > 0, "GpuTrainer: max_batch must be positive");
        let device = &gpu.device;
        let limits = device.limits();
        let limit = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let mb = max_batch as u64;

        let storage = |what: &'static str, bytes: u64| -> Result<wgpu::Buffer, GpuError> {
            if bytes > limit {
                return Err(GpuError::TooLarge { what, bytes, limit });
            }
            Ok(device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(what),
                // Bindings may not be empty; round up to whole vec4s (see `VEC4_BYTES`).
                size: bytes.max(VEC4_BYTES).next_multiple_of(VEC4_BYTES),
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_DST
                    | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }))
        };
        let init = |what: &'static str, bytes: &[u8]| -> Result<wgpu::Buffer, GpuError> {
            let len = bytes.len() as u64;
            if len > limit {
                return Err(GpuError::TooLarge {
                    what,
                    bytes: len,
                    limit,
                });
            }
            let mut padded = bytes.to_vec();
            padded.resize(len.max(VEC4_BYTES).next_multiple_of(VEC4_BYTES) as usize, 0);
            Ok(
                device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some(what),
                    contents: &padded,
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_DST
                        | wgpu::BufferUsages::COPY_SRC,
                }),
            )
        };
        let f32s = |n: u64| n * 4;

        let pixels = init("shard pixels", images_u8)?;
        let shard_labels = init("shard labels", labels)?;
        let lut: Vec<f32> = (0..=255u8).map(pixel_to_input).collect();
        let lut = init("pixel lut", bytemuck::cast_slice(&lut))?;
        let indices = storage("batch indices", mb * 4)?;
        let x0 = storage("input batch", f32s(mb * IMAGE_PIXELS as u64))?;
        let batch_labels = storage("batch labels", mb * 4)?;

        let per = |c: ConvDims| u64::from(c.out_ch * c.out_h() * c.out_w());
        let pooled = |c: ConvDims| per(c) / 4;
        let p1 = storage("pool1", f32s(mb * pooled(CONV1)))?;
        let am1 = storage("pool1 argmax", mb * pooled(CONV1) * 4)?;
        let p2 = storage("pool2", f32s(mb * pooled(CONV2)))?;
        let am2 = storage("pool2 argmax", mb * pooled(CONV2) * 4)?;
        let h1 = storage("fc1", f32s(mb * u64::from(FC1.outputs)))?;
        let h2 = storage("fc2", f32s(mb * u64::from(FC2.outputs)))?;
        let logits = storage("logits", f32s(mb * u64::from(FC3.outputs)))?;
        let dlogits = storage("dlogits", f32s(mb * u64::from(FC3.outputs)))?;
        let dh2 = storage("d fc2", f32s(mb * u64::from(FC2.outputs)))?;
        let dh1 = storage("d fc1", f32s(mb * u64::from(FC1.outputs)))?;
        let dp2 = storage("d pool2", f32s(mb * pooled(CONV2)))?;
        // conv2's output gradient with a zero border of kernel - 1 (see `DY2_PAD`).
        let padded = |c: ConvDims| {
            let pad = 2 * DY2_PAD;
            u64::from(c.out_ch * (c.out_h() + pad) * (c.out_w() + pad))
        };
        let dy2 = storage("d conv2 (padded)", f32s(mb * padded(CONV2)))?;
        let dy1 = storage("d conv1", f32s(mb * per(CONV1)))?;
        let params_buf = init("params", bytemuck::cast_slice(params))?;
        let grads = storage("grads", f32s(PARAMS as u64))?;
        let partials = storage(
            "conv gradient partial sums",
            f32s(mb * u64::from(CONV_PARAMS)),
        )?;
        let velocity = storage("velocity", f32s(PARAMS as u64))?;
        let losses = LossRing::new(device);

        let max_batch = max_batch as u32;

        let bwd_in = |d: DenseDims, input_is_relu: bool| DenseDims {
            relu: input_is_relu,
            ..d
        };
        let plan: Vec<(Op, Vec<&wgpu::Buffer>)> = vec![
            (
                Op::Gather {
                    words: WORDS_PER_IMAGE,
                },
                vec![&pixels, &shard_labels, &indices, &lut, &x0, &batch_labels],
            ),
            (Op::ConvForward(CONV1), vec![&x0, &params_buf, &p1, &am1]),
            (Op::ConvForward(CONV2), vec![&p1, &params_buf, &p2, &am2]),
            (Op::DenseForward(FC1), vec![&p2, &params_buf, &h1]),
            (Op::DenseForward(FC2), vec![&h1, &params_buf, &h2]),
            (Op::DenseForward(FC3), vec![&h2, &params_buf, &logits]),
            (
                Op::SoftmaxCrossEntropy {
                    classes: CLASSES as u32,
                },
                vec![&logits, &batch_labels, &dlogits, &losses.ring],
            ),
            (Op::DenseBackwardWeight(FC3), vec![&dlogits, &h2, &grads]),
            (
                Op::DenseBackwardInput(bwd_in(FC3, true)),
                vec![&dlogits, &params_buf, &h2, &dh2],
            ),
            (Op::DenseBackwardWeight(FC2), vec![&dh2, &h1, &grads]),
            (
                Op::DenseBackwardInput(bwd_in(FC2, true)),
                vec![&dh2, &params_buf, &h1, &dh1],
            ),
            (Op::DenseBackwardWeight(FC1), vec![&dh1, &p2, &grads]),
            // fc1's input is pooled; pool2's backward applies the ReLU mask.
            (
                Op::DenseBackwardInput(bwd_in(FC1, false)),
                vec![&dh1, &params_buf, &p2, &dp2],
            ),
            (
                Op::PoolBackward {
                    channels: CONV2.out_ch,
                    pooled_h: CONV2.out_h() / 2,
                    pooled_w: CONV2.out_w() / 2,
                    pad: DY2_PAD,
                },
                vec![&dp2, &am2, &p2, &dy2],
            ),
            (
                Op::ConvBackwardWeight {
                    conv: CONV2,
                    part_stride: CONV_PARAMS,
                    dy_pad: DY2_PAD,
                },
                vec![&p1, &dy2, &partials],
            ),
            // conv2's input gradient goes straight through pool1's and ReLU's backward.
            (
                Op::ConvBackwardInput(CONV2),
                vec![&dy2, &params_buf, &am1, &p1, &dy1],
            ),
            (
                Op::ConvBackwardWeight {
                    conv: CONV1,
                    part_stride: CONV_PARAMS,
                    dy_pad: 0,
                },
                vec![&x0, &dy1, &partials],
            ),
            (
                Op::Sgd {
                    n: PARAMS as u32,
                    split: CONV_PARAMS,
                },
                vec![&grads, &partials, &params_buf, &velocity],
            ),
        ];
        let uniforms = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("step uniforms"),
            size: plan.len() as u64 * UNIFORM_STRIDE,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let ops: Vec<(Op, wgpu::BindGroup)> = plan
            .iter()
            .enumerate()
            .map(|(slot, (op, buffers))| {
                op.validate();
                let bg =
                    gpu.kernels
                        .bind_group(device, op.kernel(), &uniforms, slot as u32, buffers);
                (*op, bg)
            })
            .collect();
        let uniform_block = vec![0u8; ops.len() * UNIFORM_STRIDE as usize];

        Ok(GpuTrainer {
            gpu: gpu.clone(),
            sgd,
            max_batch,
            shard_len: labels.len() as u32,
            indices,
            uniforms,
            params: params_buf,
            velocity,
            ops,
            uniform_block,
            losses,
            last_dispatches: 0,
            last_submits: 0,
            last_readbacks: 0,
            readbacks: AtomicU32::new(0),
        })
    }

    /// Compute dispatches recorded by the last [`Trainer::step`], counted as they were
    /// recorded (0 before the first step).
    pub fn dispatches_per_step(&self) -> u32 {
        self.last_dispatches
    }

    /// Waits for the GPU (awaited buffer mappings) during the last [`Trainer::step`],
    /// counted; the design keeps it at 0. The asynchronous loss ring mapping that a step
    /// may request is not a wait and is not counted.
    pub fn readbacks_per_step(&self) -> u32 {
        self.last_readbacks
    }

    /// `queue.submit` calls made by the last [`Trainer::step`], counted (1 by design).
    pub fn submits_per_step(&self) -> u32 {
        self.last_submits
    }

    /// Steps whose losses are read back together ([`LOSS_INTERVAL`]).
    pub fn loss_interval(&self) -> u32 {
        LOSS_INTERVAL
    }

    /// Samples in the shard.
    pub fn shard_len(&self) -> usize {
        self.shard_len as usize
    }

    /// The largest batch a step accepts.
    pub fn max_batch(&self) -> usize {
        self.max_batch as usize
    }

    /// The device this trainer runs on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// The current parameters, after every queued step. Works on the web as well as
    /// natively: it awaits the buffer mapping instead of blocking. Fails only when the
    /// device was lost.
    pub async fn read_params(&self) -> Result<Vec<f32>, GpuLost> {
        self.readbacks.fetch_add(1, Ordering::Relaxed);
        let bytes = readback::read_buffer(
            &self.gpu.device,
            &self.gpu.queue,
            &self.params,
            0,
            (PARAMS * 4) as u64,
        )
        .await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Waits (asynchronously) until every queued step has finished and returns every loss
    /// not yet reported, in step order. The web's counterpart of [`Trainer::finish`]. Fails
    /// only when the device was lost.
    pub async fn finish_async(&mut self) -> Result<Vec<f32>, GpuLost> {
        let mut encoder = self
            .gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("flush losses"),
            });
        let flushed = self.losses.record_flush(&self.gpu.device, &mut encoder);
        self.gpu.queue.submit([encoder.finish()]);
        if let Some(f) = flushed {
            self.losses.map(f);
        }
        let mut out = std::mem::take(&mut self.losses.ready);
        while let Some(p) = self.losses.pending.pop_front() {
            self.readbacks.fetch_add(1, Ordering::Relaxed);
            readback::wait_mapped(&self.gpu.device, p.mapped).await?;
            self.losses.consume(p.staging, p.steps, &mut out);
        }
        Ok(out)
    }
}

impl std::fmt::Debug for GpuTrainer {
    /// Sizes and settings, not the buffers.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuTrainer")
            .field("adapter", &self.gpu.adapter_info())
            .field("shard_len", &self.shard_len)
            .field("max_batch", &self.max_batch)
            .field("sgd", &self.sgd)
            .field("pending_loss_flushes", &self.losses.pending.len())
            .finish_non_exhaustive()
    }
}

impl Trainer for GpuTrainer {
    fn backend(&self) -> &'static str {
        "gpu"
    }

    fn step_counters(&self) -> Option<(u32, u32)> {
        Some((self.dispatches_per_step(), self.readbacks_per_step()))
    }

    fn adapter(&self) -> String {
        self.gpu.adapter_info().to_string()
    }

    fn set_params(&mut self, params: &[f32], reset_state: bool) {
        assert_eq!(params.len(), PARAMS, "set_params: parameter vector length");
        let queue = &self.gpu.queue;
        queue.write_buffer(&self.params, 0, bytemuck::cast_slice(params));
        if reset_state {
            let mut encoder =
                self.gpu
                    .device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("reset optimizer state"),
                    });
            encoder.clear_buffer(&self.velocity, 0, None);
            queue.submit([encoder.finish()]);
        }
    }

    fn params(&mut self) -> Vec<f32> {
        readback::block_on(self.read_params()).expect("the GPU device was lost")
    }

    fn step(&mut self, indices: &[u32], lr: f32) {
        let batch = indices.len();
        assert!(
            batch > 0 && batch <= self.max_batch as usize,
            "step: batch of {batch}, must be 1..={}",
            self.max_batch
        );
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.shard_len) {
            panic!("step: index {bad} outside the shard of {}", self.shard_len);
        }
        let readbacks_before = self.readbacks.load(Ordering::Relaxed);
        let (device, queue) = (&self.gpu.device, &self.gpu.queue);

        let args = StepArgs {
            batch: batch as u32,
            lr,
            loss_slot: self.losses.filled,
            sgd: self.sgd,
        };
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("train step"),
        });
        let mut dispatches = 0;
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("train step"),
                timestamp_writes: None,
            });
            let slots = self.uniform_block.chunks_exact_mut(UNIFORM_STRIDE as usize);
            for ((op, bind_group), slot) in self.ops.iter().zip(slots) {
                let groups = op.encode(&args, slot);
                self.gpu.kernels.dispatch(
                    &mut pass,
                    op.kernel(),
                    bind_group,
                    groups,
                    &mut dispatches,
                );
            }
        }
        // Both writes land before this step's submit and after every earlier one.
        queue.write_buffer(&self.indices, 0, bytemuck::cast_slice(indices));
        queue.write_buffer(&self.uniforms, 0, &self.uniform_block);
        self.losses.filled += 1;
        let flushed = if self.losses.filled == LOSS_INTERVAL {
            self.losses.record_flush(device, &mut encoder)
        } else {
            None
        };
        queue.submit([encoder.finish()]);
        let submits = 1;
        if let Some(f) = flushed {
            self.losses.map(f);
        }
        self.last_dispatches = dispatches;
        self.last_submits = submits;
        self.last_readbacks = self.readbacks.load(Ordering::Relaxed) - readbacks_before;
    }

    fn poll_losses(&mut self) -> Vec<f32> {
        // Natively this runs the callbacks of finished mappings without waiting; on the
        // web it does nothing (the browser runs them).
        let _ = self.gpu.device.poll(wgpu::PollType::Poll);
        let mut out = std::mem::take(&mut self.losses.ready);
        self.losses.collect(&mut out);
        out
    }

    fn finish(&mut self) -> Vec<f32> {
        readback::block_on(self.finish_async()).expect("the GPU device was lost")
    }
}

#[cfg(test)]
impl GpuTrainer {
    /// Profiling aid: runs each dispatch of a step alone `reps` times after one full step
    /// with `indices`, waiting for the GPU around each, and returns (label, ms per dispatch).
    pub(crate) fn profile(&mut self, indices: &[u32], reps: u32) -> Vec<(String, f64)> {
        self.step(indices, 0.0);
        let (device, queue) = (&self.gpu.device, &self.gpu.queue);
        let wait = || {
            let _ = device.poll(wgpu::PollType::wait_indefinitely());
        };
        wait();
        let mut out = Vec::new();
        for (i, (op, bind_group)) in self.ops.iter().enumerate() {
            let mut slot = vec![0u8; UNIFORM_STRIDE as usize];
            let args = StepArgs {
                batch: indices.len() as u32,
                lr: 0.0,
                loss_slot: 0,
                sgd: self.sgd,
            };
            let groups = op.encode(&args, &mut slot);
            let mut encoder = device.create_command_encoder(&Default::default());
            let mut n = 0;
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                for _ in 0..reps {
                    self.gpu
                        .kernels
                        .dispatch(&mut pass, op.kernel(), bind_group, groups, &mut n);
                }
            }
            let t = std::time::Instant::now();
            queue.submit([encoder.finish()]);
            wait();
            let ms = t.elapsed().as_secs_f64() * 1e3 / f64::from(reps);
            out.push((format!("{i:2} {op:?}"), ms));
        }
        out
    }
}
