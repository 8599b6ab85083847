//! The lenet5-28 parameter vector: deterministic initialisation and typed views into it.
//!
//! The layout (which tensor sits where in the flat vector) belongs to
//! [`easel_protocol::model_spec`]; this module only fills and slices it.

use easel_protocol::{LENET5_28, ModelSpec};
use rand::RngExt;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The model every part of Easel trains.
pub const SPEC: ModelSpec = LENET5_28;

/// Pixels in one input image.
pub const IMAGE_PIXELS: usize = 28 * 28;

/// Number of classes.
pub const CLASSES: usize = 10;

/// Number of parameters in the flat vector.
pub const PARAMS: usize = easel_protocol::model_spec::lenet5_28::PARAMS;

/// The network's input value for one raw pixel: `pixel / 255`, so inputs lie in `[0, 1]`.
///
/// This is the only place the rule is written; every backend (CPU, GPU, the evaluator)
/// converts through it, so they all see the same inputs.
#[inline]
pub fn pixel_to_input(pixel: u8) -> f32 {
    pixel as f32 / 255.0
}

/// Converts raw pixels to network inputs with [`pixel_to_input`], element by element.
pub fn pixels_to_input(pixels: &[u8]) -> Vec<f32> {
    pixels.iter().map(|&p| pixel_to_input(p)).collect()
}

/// A fresh parameter vector, initialised as PyTorch initialises `nn.Conv2d` and `nn.Linear`:
/// every weight and bias uniform in `[-1/sqrt(fan_in), 1/sqrt(fan_in)]`, where `fan_in` is
/// the number of inputs to one output unit. The same seed gives the same vector everywhere
/// (native and wasm), because the generator is ChaCha8 and nothing depends on the platform.
pub fn init_params(seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut params = vec![0.0f32; SPEC.param_count];
    for t in SPEC.tensors {
        let fan_in = fan_in(t.name);
        let bound = 1.0 / (fan_in as f32).sqrt();
        for p in &mut params[t.range()] {
            *p = rng.random_range(-bound..bound);
        }
    }
    params
}

/// Inputs per output unit of the layer that owns the tensor `name` (for example `conv2.bias`).
fn fan_in(name: &str) -> usize {
    let layer = name.split('.').next().unwrap_or(name);
    let w = SPEC
        .tensor(&format!("{layer}.weight"))
        .expect("every tensor belongs to a layer with a weight");
    w.shape[1..].iter().product()
}

/// A named tensor's slice of the flat vector.
pub fn tensor<'a>(params: &'a [f32], name: &str) -> &'a [f32] {
    let t = SPEC
        .tensor(name)
        .unwrap_or_else(|| panic!("no tensor named {name}"));
    &params[t.range()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixel_to_input_maps_bytes_onto_the_unit_interval() {
        assert_eq!(pixel_to_input(0), 0.0);
        assert_eq!(pixel_to_input(255), 1.0);
        assert_eq!(pixel_to_input(51), 0.2);
        assert_eq!(pixels_to_input(&[0, 255]), vec![0.0, 1.0]);
    }

    #[test]
    fn init_is_deterministic_and_depends_on_the_seed() {
        assert_eq!(init_params(7), init_params(7));
        assert_ne!(init_params(7), init_params(8));
    }

    #[test]
    fn init_respects_pytorch_bounds() {
        let p = init_params(1);
        for t in SPEC.tensors {
            let bound = 1.0 / (fan_in(t.name) as f32).sqrt();
            let s = &p[t.range()];
            assert!(
                s.iter().all(|v| v.abs() <= bound),
                "{} within its bound",
                t.name
            );
            let mean = s.iter().sum::<f32>() / s.len() as f32;
            assert!(mean.abs() < bound * 0.6, "{} roughly centred", t.name);
        }
        assert_eq!(fan_in("conv1.weight"), 25);
        assert_eq!(fan_in("conv2.bias"), 150);
        assert_eq!(fan_in("fc1.weight"), 256);
    }
}
