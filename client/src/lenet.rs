//! The model as the server sees it: the operations the relay is passed, since it has no
//! model code of its own.

/// LeNet-5 as the relay sees it ([`easel_protocol::ModelOps`]):
/// [`crate::model::init_params`] and [`crate::checkpoint::to_safetensors`], passed to the
/// server by the `easel` binary.
#[derive(Clone, Copy, Debug, Default)]
pub struct Lenet;

impl easel_protocol::ModelOps for Lenet {
    fn init(&self, seed: u64) -> Vec<f32> {
        crate::model::init_params(seed)
    }

    fn to_safetensors(&self, params: &[f32]) -> Result<Vec<u8>, String> {
        crate::checkpoint::to_safetensors(params).map_err(|e| e.to_string())
    }
}
