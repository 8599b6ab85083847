//! Stochastic gradient descent over the flat parameter vector.
//!
//! An optimizer is its config, its state and one `step` over slices. The GPU backend runs
//! the same rule in WGSL (`gpu/sgd.wgsl`) and is tested against [`Sgd::step`].

/// SGD hyper-parameters. Plain SGD (no momentum, no weight decay) is the default: staleness
/// hurts momentum more than plain SGD, and the relay's averaging assumes nothing else.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sgd {
    /// Momentum coefficient mu in `v <- mu v + g`; 0 disables momentum.
    pub momentum: f32,
    /// L2 weight decay lambda, added to the gradient as `lambda * p`.
    pub weight_decay: f32,
}

impl Default for Sgd {
    fn default() -> Self {
        Sgd {
            momentum: 0.0,
            weight_decay: 0.0,
        }
    }
}

impl Sgd {
    /// One step: `g <- grad + wd p; v <- mu v + g; p <- p - lr v` (PyTorch's SGD without
    /// dampening or Nesterov). With `momentum == 0` the velocity is not touched.
    pub fn step(&self, lr: f32, params: &mut [f32], grad: &[f32], velocity: &mut [f32]) {
        assert_eq!(params.len(), grad.len());
        if self.momentum == 0.0 {
            for (p, &g) in params.iter_mut().zip(grad) {
                *p -= lr * (g + self.weight_decay * *p);
            }
        } else {
            assert_eq!(params.len(), velocity.len());
            for ((p, &g), v) in params.iter_mut().zip(grad).zip(velocity.iter_mut()) {
                *v = self.momentum * *v + g + self.weight_decay * *p;
                *p -= lr * *v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_sgd_moves_against_the_gradient() {
        let mut p = vec![1.0, -2.0];
        Sgd::default().step(0.5, &mut p, &[2.0, -4.0], &mut []);
        assert_eq!(p, vec![0.0, 0.0]);
    }

    #[test]
    fn momentum_matches_pytorch_recurrence() {
        let sgd = Sgd {
            momentum: 0.9,
            weight_decay: 0.1,
        };
        let (mut p, mut v) = (vec![1.0f32], vec![0.0f32]);
        sgd.step(0.1, &mut p, &[1.0], &mut v);
        // v = 1 + 0.1 * 1 = 1.1; p = 1 - 0.11 = 0.89
        assert!((v[0] - 1.1).abs() < 1e-6 && (p[0] - 0.89).abs() < 1e-6);
        sgd.step(0.1, &mut p, &[1.0], &mut v);
        // v = 0.9 * 1.1 + 1 + 0.089 = 2.079; p = 0.89 - 0.2079
        assert!((v[0] - 2.079).abs() < 1e-5 && (p[0] - 0.6821).abs() < 1e-5);
    }
}
