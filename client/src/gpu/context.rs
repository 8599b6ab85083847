//! The device: one wgpu instance, adapter, device and queue, with every pipeline built once.

use std::sync::{Arc, Mutex};

use super::kernels::Kernels;

/// The GPU device was lost (driver reset, browser reclaim, `destroy`): its buffers are gone
/// and nothing more can be read from it. The text is the driver's or browser's reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct GpuLost(pub String);

/// Why the GPU backend could not start or could not take a shard.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No adapter matched: no driver is installed, or the browser has no WebGPU.
    #[error(
        "no GPU adapter found ({0}); natively, install a Vulkan driver (for example mesa's \
         llvmpipe: apt-get install mesa-vulkan-drivers libvulkan1); in a browser, WebGPU must \
         be enabled"
    )]
    NoAdapter(#[from] wgpu::RequestAdapterError),
    /// The adapter exists but refused to open a device with WebGPU's default limits.
    #[error("the adapter {adapter} could not open a device: {source}")]
    NoDevice {
        /// The adapter's description.
        adapter: String,
        /// The driver's reason.
        #[source]
        source: wgpu::RequestDeviceError,
    },
    /// A buffer the trainer needs is larger than the device allows in one binding.
    #[error("{what} needs {bytes} bytes, more than the device's limit of {limit} bytes per buffer")]
    TooLarge {
        /// Which buffer.
        what: &'static str,
        /// Its size.
        bytes: u64,
        /// The device's `max_storage_buffer_binding_size` (or `max_buffer_size`).
        limit: u64,
    },
}

/// An open GPU device with every compute pipeline of the model compiled.
///
/// Cloning is cheap (wgpu handles are reference-counted), so trainers keep a clone. On the
/// web the handles are `!Send`; nothing here requires otherwise.
#[derive(Clone, Debug)]
pub struct Gpu {
    /// Kept so that the adapter and device outlive every user of them.
    _instance: wgpu::Instance,
    _adapter: wgpu::Adapter,
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) kernels: Kernels,
    adapter_info: String,
    /// Set by the device-lost callback: why the device was lost.
    lost: Arc<Mutex<Option<String>>>,
}

impl Gpu {
    /// Opens the best available adapter (high-performance preference) of the primary
    /// backends (Vulkan, Metal, DX12, WebGPU; natively wgpu's `WGPU_BACKEND` environment
    /// variable overrides the choice) with WebGPU's default limits, and compiles every
    /// kernel.
    ///
    /// # Errors
    ///
    /// [`GpuError::NoAdapter`] when no adapter is found and [`GpuError::NoDevice`] when the
    /// adapter cannot open a device.
    pub async fn new() -> Result<Gpu, GpuError> {
        // Compute-capable backends only (Vulkan, Metal, DX12, the browser's WebGPU), unless
        // `WGPU_BACKEND` says otherwise; every other instance option may come from the
        // environment too.
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = wgpu::Backends::PRIMARY;
        let instance = wgpu::Instance::new(desc.with_env());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await?;
        let adapter_info = describe(&adapter.get_info());
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("easel"),
                required_features: wgpu::Features::empty(),
                // The kernels stay within WebGPU's defaults: at most 6 storage buffers per
                // stage, 64 invocations per workgroup and 4 KiB of workgroup memory.
                required_limits: wgpu::Limits::default(),
                ..Default::default()
            })
            .await
            .map_err(|source| GpuError::NoDevice {
                adapter: adapter_info.clone(),
                source,
            })?;
        let kernels = Kernels::new(&device);
        let lost = Arc::new(Mutex::new(None));
        let flag = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut slot) = flag.lock() {
                slot.get_or_insert_with(|| {
                    let message = message.trim().trim_end_matches('.');
                    if message.is_empty() {
                        format!("{reason:?}")
                    } else {
                        message.to_string()
                    }
                });
            }
        });
        Ok(Gpu {
            _instance: instance,
            _adapter: adapter,
            device,
            queue,
            kernels,
            adapter_info,
            lost,
        })
    }

    /// Why the device was lost, once it has been; `None` while it works.
    pub fn lost(&self) -> Option<GpuLost> {
        self.lost.lock().ok().and_then(|l| l.clone()).map(GpuLost)
    }

    /// Destroys the device as a driver reset would: every later readback fails with
    /// [`GpuLost`] and [`Gpu::lost`] reports it once the browser has told wgpu. For tests
    /// of the fallback to the CPU.
    pub fn destroy(&self) {
        self.device.destroy();
    }

    /// A human-readable description of the adapter, for example
    /// `llvmpipe (LLVM 19.1.7, 256 bits) (Vulkan, Mesa 25.0.7)`.
    pub fn adapter_info(&self) -> &str {
        &self.adapter_info
    }

    /// The wgpu device.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The wgpu queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }
}

/// `name (backend, driver driver_info)`, leaving out what the platform does not report.
fn describe(info: &wgpu::AdapterInfo) -> String {
    let driver = [info.driver.as_str(), info.driver_info.as_str()]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    if driver.is_empty() {
        format!("{} ({:?})", info.name, info.backend)
    } else {
        format!("{} ({:?}, {driver})", info.name, info.backend)
    }
}
