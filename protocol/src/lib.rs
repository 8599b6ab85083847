//! The one owner of Easel's shared formats.
//!
//! Today it holds [`ModelSpec`], the description of the one model every part of Easel trains,
//! averages and checkpoints as a single flat `f32` vector. The wire messages join it here.

pub mod model_spec;

pub use model_spec::{LENET5_28, LayerKind, LayerSpec, ModelSpec, TensorSpec};
