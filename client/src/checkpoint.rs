//! Checkpoints as safetensors with PyTorch's names and layouts.
//!
//! A file holds one `F32` tensor per entry of [`crate::model::SPEC`]'s tensor table
//! (`conv1.weight` `[6, 1, 5, 5]`, ..., `fc3.bias` `[10]`), so
//! `torch.nn.Module.load_state_dict(safetensors.torch.load_file(path))` loads it into the
//! matching PyTorch LeNet-5, and `safetensors.numpy.load_file` reads it in NumPy.
//! The metadata names the model and its layout hash.

use std::collections::HashMap;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::model::SPEC;

/// Why a checkpoint could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("not a safetensors file: {0}")]
    Format(#[from] safetensors::SafeTensorError),
    #[error("the checkpoint has no tensor `{0}`; it was not written for model {model}", model = SPEC.name)]
    MissingTensor(String),
    #[error("tensor `{name}` has dtype {dtype:?} and shape {shape:?}; model {model} needs F32 {expected:?}", model = SPEC.name)]
    WrongTensor {
        name: String,
        dtype: Dtype,
        shape: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("the flat parameter vector has {0} values; model {model} has {params}", model = SPEC.name, params = SPEC.param_count)]
    WrongLength(usize),
}

/// The parameters as a safetensors file, tensor by tensor, in little-endian `f32`.
pub fn to_safetensors(params: &[f32]) -> Result<Vec<u8>, CheckpointError> {
    if params.len() != SPEC.param_count {
        return Err(CheckpointError::WrongLength(params.len()));
    }
    let bytes: Vec<Vec<u8>> = SPEC
        .tensors
        .iter()
        .map(|t| {
            params[t.range()]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect()
        })
        .collect();
    let views = SPEC
        .tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| Ok((t.name, TensorView::new(Dtype::F32, t.shape.to_vec(), b)?)))
        .collect::<Result<Vec<_>, CheckpointError>>()?;
    let metadata = HashMap::from([
        ("model".to_string(), SPEC.name.to_string()),
        ("layout_sha256".to_string(), hex(&SPEC.layout_hash())),
        ("format".to_string(), "pt".to_string()),
    ]);
    Ok(safetensors::serialize(views, Some(metadata))?)
}

/// The flat parameter vector from a safetensors file written for this model (by Easel or by
/// PyTorch's `save_file(model.state_dict())`). Names, dtypes and shapes are all checked.
pub fn from_safetensors(bytes: &[u8]) -> Result<Vec<f32>, CheckpointError> {
    let file = SafeTensors::deserialize(bytes)?;
    let mut params = vec![0.0f32; SPEC.param_count];
    for t in SPEC.tensors {
        let view = file
            .tensor(t.name)
            .map_err(|_| CheckpointError::MissingTensor(t.name.to_string()))?;
        if view.dtype() != Dtype::F32 || view.shape() != t.shape {
            return Err(CheckpointError::WrongTensor {
                name: t.name.to_string(),
                dtype: view.dtype(),
                shape: view.shape().to_vec(),
                expected: t.shape.to_vec(),
            });
        }
        for (p, b) in params[t.range()]
            .iter_mut()
            .zip(view.data().chunks_exact(4))
        {
            *p = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
    }
    Ok(params)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::init_params;

    #[test]
    fn safetensors_round_trip_is_exact() {
        let p = init_params(3);
        let file = to_safetensors(&p).unwrap();
        assert_eq!(from_safetensors(&file).unwrap(), p);
    }

    #[test]
    fn tensors_carry_pytorch_names_and_shapes() {
        let p = init_params(3);
        let file = to_safetensors(&p).unwrap();
        let st = SafeTensors::deserialize(&file).unwrap();
        let w = st.tensor("conv2.weight").unwrap();
        assert_eq!(w.shape(), &[16, 6, 5, 5]);
        let first = f32::from_le_bytes(w.data()[..4].try_into().unwrap());
        assert_eq!(first, crate::model::tensor(&p, "conv2.weight")[0]);
        assert_eq!(st.names().len(), 10);
    }

    #[test]
    fn wrong_shape_and_missing_tensor_are_refused() {
        let wrong = vec![0u8; 8];
        let views = vec![(
            "conv1.weight",
            TensorView::new(Dtype::F32, vec![2], &wrong).unwrap(),
        )];
        let file = safetensors::serialize(views, None).unwrap();
        assert!(matches!(
            from_safetensors(&file),
            Err(CheckpointError::WrongTensor { .. })
        ));
        let views = vec![(
            "other",
            TensorView::new(Dtype::F32, vec![2], &wrong).unwrap(),
        )];
        let file = safetensors::serialize(views, None).unwrap();
        assert!(
            matches!(from_safetensors(&file), Err(CheckpointError::MissingTensor(n)) if n == "conv1.weight")
        );
        assert!(matches!(
            from_safetensors(b"garbage"),
            Err(CheckpointError::Format(_))
        ));
        assert!(matches!(
            to_safetensors(&[0.0; 3]),
            Err(CheckpointError::WrongLength(3))
        ));
    }
}
