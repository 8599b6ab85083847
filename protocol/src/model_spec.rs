//! The model's name, layer table and flat parameter layout.
//!
//! Every Easel model is one flat `f32` vector. The tensors are stored one after another in
//! the order of [`ModelSpec::tensors`], each in PyTorch's layout for the matching module
//! (`conv.weight` is `[out, in, kh, kw]`, `linear.weight` is `[out, in]`, row-major), so a
//! checkpoint written tensor by tensor under these names opens in PyTorch unchanged.
//! The relay averages, compresses and checkpoints the vector without knowing the layers;
//! the layout hash lets both ends of the wire check that they agree on it.

use sha2::{Digest, Sha256};

/// What a layer computes. Shapes of activations are `[batch, channels, height, width]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum LayerKind {
    /// Valid (no padding), stride-1 convolution with a bias.
    Conv2d {
        in_ch: usize,
        out_ch: usize,
        kernel: usize,
    },
    /// Elementwise `max(x, 0)`.
    Relu,
    /// Non-overlapping max pooling with a square window.
    MaxPool { size: usize },
    /// `[batch, c, h, w]` to `[batch, c * h * w]`, channel-major like `torch.flatten`.
    Flatten,
    /// `y = x W^T + b` with `W` of shape `[out, in]`.
    Dense { inputs: usize, outputs: usize },
    /// Softmax followed by the mean cross-entropy over the batch.
    SoftmaxCrossEntropy { classes: usize },
}

/// One layer of the table: its name (the PyTorch module name where it has parameters),
/// what it does and the shape of one sample's output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LayerSpec {
    pub name: &'static str,
    pub kind: LayerKind,
    /// The output shape of one sample, without the batch dimension.
    pub output: &'static [usize],
}

/// One parameter tensor inside the flat vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TensorSpec {
    /// PyTorch's state-dict name, for example `conv1.weight`.
    pub name: &'static str,
    /// PyTorch's shape for it.
    pub shape: &'static [usize],
    /// Where it starts in the flat vector, in `f32` elements.
    pub offset: usize,
}

impl TensorSpec {
    /// Number of `f32` elements in the tensor.
    pub const fn len(&self) -> usize {
        let mut n = 1;
        let mut i = 0;
        while i < self.shape.len() {
            n *= self.shape[i];
            i += 1;
        }
        n
    }

    /// Whether the tensor holds no element (never for a real model).
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The tensor's range in the flat vector.
    pub const fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len()
    }
}

/// A model: its name, input shape, layer table and parameter layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ModelSpec {
    pub name: &'static str,
    /// Shape of one input sample: `[channels, height, width]`.
    pub input: [usize; 3],
    pub classes: usize,
    pub layers: &'static [LayerSpec],
    pub tensors: &'static [TensorSpec],
    /// Total number of parameters: the length of the flat vector.
    pub param_count: usize,
}

impl ModelSpec {
    /// The tensor with this name.
    pub fn tensor(&self, name: &str) -> Option<&TensorSpec> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A SHA-256 over a canonical text of the name, input, layer table and tensor layout.
    /// Two builds agree on the hash exactly when they agree on how to read the flat vector.
    pub fn layout_hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.canonical_text().as_bytes());
        h.finalize().into()
    }

    /// The first 8 bytes of [`Self::layout_hash`] as a little-endian `u64`: short enough to
    /// travel in every message, long enough that a mismatch is never missed in practice.
    pub fn layout_id(&self) -> u64 {
        let h = self.layout_hash();
        u64::from_le_bytes(h[..8].try_into().expect("8 bytes"))
    }

    /// The text that [`Self::layout_hash`] hashes; one line per item.
    pub fn canonical_text(&self) -> String {
        let mut s = format!(
            "model {} input {:?} classes {}\n",
            self.name, self.input, self.classes
        );
        for l in self.layers {
            s += &format!("layer {} {:?} -> {:?}\n", l.name, l.kind, l.output);
        }
        for t in self.tensors {
            s += &format!("tensor {} {:?} @ {}\n", t.name, t.shape, t.offset);
        }
        s += &format!("params {}\n", self.param_count);
        s
    }
}

const fn conv(
    name: &'static str,
    in_ch: usize,
    out_ch: usize,
    output: &'static [usize],
) -> LayerSpec {
    LayerSpec {
        name,
        kind: LayerKind::Conv2d {
            in_ch,
            out_ch,
            kernel: 5,
        },
        output,
    }
}

const fn dense(
    name: &'static str,
    inputs: usize,
    outputs: usize,
    output: &'static [usize],
) -> LayerSpec {
    LayerSpec {
        name,
        kind: LayerKind::Dense { inputs, outputs },
        output,
    }
}

const fn relu(name: &'static str, output: &'static [usize]) -> LayerSpec {
    LayerSpec {
        name,
        kind: LayerKind::Relu,
        output,
    }
}

const fn pool(name: &'static str, output: &'static [usize]) -> LayerSpec {
    LayerSpec {
        name,
        kind: LayerKind::MaxPool { size: 2 },
        output,
    }
}

const fn tensor(name: &'static str, shape: &'static [usize], offset: usize) -> TensorSpec {
    TensorSpec {
        name,
        shape,
        offset,
    }
}

/// Offsets of the lenet5-28 tensors in the flat vector, in PyTorch's state-dict order.
pub mod lenet5_28 {
    pub const CONV1_W: usize = 0; // [6, 1, 5, 5] = 150
    pub const CONV1_B: usize = 150; // [6]
    pub const CONV2_W: usize = 156; // [16, 6, 5, 5] = 2400
    pub const CONV2_B: usize = 2556; // [16]
    pub const FC1_W: usize = 2572; // [120, 256] = 30720
    pub const FC1_B: usize = 33292; // [120]
    pub const FC2_W: usize = 33412; // [84, 120] = 10080
    pub const FC2_B: usize = 43492; // [84]
    pub const FC3_W: usize = 43576; // [10, 84] = 840
    pub const FC3_B: usize = 44416; // [10]
    pub const PARAMS: usize = 44426;
}

/// LeNet-5 for 28x28 inputs, without padding:
/// conv 5x5 1->6, ReLU, max-pool 2, conv 5x5 6->16, ReLU, max-pool 2,
/// dense 256->120, ReLU, dense 120->84, ReLU, dense 84->10, softmax cross-entropy.
pub const LENET5_28: ModelSpec = {
    use lenet5_28::*;
    ModelSpec {
        name: "lenet5-28",
        input: [1, 28, 28],
        classes: 10,
        layers: &[
            conv("conv1", 1, 6, &[6, 24, 24]),
            relu("relu1", &[6, 24, 24]),
            pool("pool1", &[6, 12, 12]),
            conv("conv2", 6, 16, &[16, 8, 8]),
            relu("relu2", &[16, 8, 8]),
            pool("pool2", &[16, 4, 4]),
            LayerSpec {
                name: "flatten",
                kind: LayerKind::Flatten,
                output: &[256],
            },
            dense("fc1", 256, 120, &[120]),
            relu("relu3", &[120]),
            dense("fc2", 120, 84, &[84]),
            relu("relu4", &[84]),
            dense("fc3", 84, 10, &[10]),
            LayerSpec {
                name: "loss",
                kind: LayerKind::SoftmaxCrossEntropy { classes: 10 },
                output: &[1],
            },
        ],
        tensors: &[
            tensor("conv1.weight", &[6, 1, 5, 5], CONV1_W),
            tensor("conv1.bias", &[6], CONV1_B),
            tensor("conv2.weight", &[16, 6, 5, 5], CONV2_W),
            tensor("conv2.bias", &[16], CONV2_B),
            tensor("fc1.weight", &[120, 256], FC1_W),
            tensor("fc1.bias", &[120], FC1_B),
            tensor("fc2.weight", &[84, 120], FC2_W),
            tensor("fc2.bias", &[84], FC2_B),
            tensor("fc3.weight", &[10, 84], FC3_W),
            tensor("fc3.bias", &[10], FC3_B),
        ],
        param_count: PARAMS,
    }
};

/// What a server needs of the model it coordinates but never trains: the initial center
/// for a seed, and a center as a checkpoint file. The client implements it
/// (`easel_client::Lenet`) and the `easel` binary passes it to the relay, so the
/// relay builds without the training backends.
pub trait ModelOps: Send + Sync + std::fmt::Debug {
    /// The initial parameters for `seed`: the same vector on every platform.
    fn init(&self, seed: u64) -> Vec<f32>;
    /// `params` as a safetensors file with PyTorch's tensor names, or why not.
    fn to_safetensors(&self, params: &[f32]) -> Result<Vec<u8>, String>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenet_tensors_tile_the_flat_vector_without_gaps() {
        let mut next = 0;
        for t in LENET5_28.tensors {
            assert_eq!(
                t.offset, next,
                "{} starts where the previous tensor ends",
                t.name
            );
            next += t.len();
        }
        assert_eq!(next, LENET5_28.param_count);
        assert_eq!(LENET5_28.param_count, 44_426);
    }

    #[test]
    fn layer_table_matches_tensor_shapes() {
        for l in LENET5_28.layers {
            match l.kind {
                LayerKind::Conv2d {
                    in_ch,
                    out_ch,
                    kernel,
                } => {
                    let w = LENET5_28.tensor(&format!("{}.weight", l.name)).unwrap();
                    assert_eq!(w.shape, &[out_ch, in_ch, kernel, kernel]);
                    assert_eq!(
                        LENET5_28.tensor(&format!("{}.bias", l.name)).unwrap().shape,
                        &[out_ch]
                    );
                }
                LayerKind::Dense { inputs, outputs } => {
                    let w = LENET5_28.tensor(&format!("{}.weight", l.name)).unwrap();
                    assert_eq!(w.shape, &[outputs, inputs]);
                    assert_eq!(
                        LENET5_28.tensor(&format!("{}.bias", l.name)).unwrap().shape,
                        &[outputs]
                    );
                }
                _ => {}
            }
        }
    }

    #[test]
    fn layout_hash_changes_when_the_layout_changes() {
        let a = LENET5_28;
        let mut tensors = a.tensors.to_vec();
        tensors.swap(0, 1);
        let b = ModelSpec {
            tensors: Box::leak(tensors.into_boxed_slice()),
            ..a
        };
        assert_ne!(a.layout_hash(), b.layout_hash());
        assert_eq!(a.layout_hash(), LENET5_28.layout_hash());
    }
}
