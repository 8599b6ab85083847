//! The wgpu backend: lenet5-28 training in WGSL compute kernels, natively (Vulkan, Metal,
//! DX12) and in the browser (WebGPU).
//!
//! - [`Gpu`] opens the device and compiles every kernel once.
//! - [`GpuTrainer`] keeps the parameters, gradient, optimizer state and data shard on the
//!   device and runs a whole SGD step as one submit of 18 dispatches, without reading
//!   anything back inside it.
//! - Each kernel is a `.wgsl` file in this directory; `kernels.rs` holds their bindings,
//!   uniform structs and dispatch sizes, and `readback.rs` is the one place that maps
//!   buffers and waits for the GPU.
//!
//! The kernels are tested one by one against [`crate::cpu::ops`], and whole training steps
//! against [`crate::cpu::CpuTrainer`].

mod context;
mod kernels;
mod readback;
mod trainer;

#[cfg(test)]
mod tests;

pub use context::{Gpu, GpuError, GpuLost};
pub use trainer::{GpuTrainer, LOSS_INTERVAL};
