//! Easel's worker: everything a device needs to train the shared model on its own shard.
//!
//! The same code runs natively (bot workers, the simulator, `easel train`, the relay's
//! evaluator) and in the browser as WebAssembly; `web.rs` is its only wasm-bindgen surface.

pub mod checkpoint;
pub mod cpu;
pub mod data;
pub mod digit;
pub mod gpu;
pub mod lenet;
pub mod model;
pub mod optim;
pub mod schedule;
pub mod trainer;
#[cfg(target_arch = "wasm32")]
pub mod web;
pub mod worker;

pub use cpu::CpuTrainer;
pub use easel_protocol::{LENET5_28, ModelSpec};
pub use gpu::{Gpu, GpuTrainer};
pub use lenet::Lenet;
pub use optim::Sgd;
pub use trainer::Trainer;
