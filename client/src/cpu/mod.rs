//! The CPU backend: layer operations, the lenet5-28 passes and a [`Trainer`] on one thread.
//!
//! [`ops`] holds the layer operations (the reference the GPU kernels and [`direct`]'s fast
//! `f32` convolutions are tested against; [`simd`] picks their instruction set at run time),
//! [`net`] chains them into the model, and [`CpuTrainer`] runs SGD steps on a shard held in
//! memory. Everything here also builds for `wasm32-unknown-unknown`.

pub mod dense;
pub mod direct;
pub mod net;
pub mod ops;
pub mod pool;
pub mod profile;
pub mod simd;

pub use net::{Evaluation, Workspace, evaluate, forward, loss_and_grad, predict};
pub use ops::{ConvShape, Float};

use crate::Sgd;
use crate::model::{CLASSES, IMAGE_PIXELS, PARAMS, pixel_to_input};
use crate::trainer::Trainer;

/// A [`Trainer`] that computes on the calling thread. Steps run to completion inside
/// [`Trainer::step`]; their losses wait in a queue for [`Trainer::poll_losses`].
#[derive(Clone)]
pub struct CpuTrainer {
    /// The shard's images as network inputs, `[n, 1, 28, 28]`.
    images: Vec<f32>,
    labels: Vec<u8>,
    params: Vec<f32>,
    grad: Vec<f32>,
    velocity: Vec<f32>,
    sgd: Sgd,
    ws: Workspace<f32>,
    /// The current batch, gathered from the shard.
    batch_images: Vec<f32>,
    batch_labels: Vec<u8>,
    losses: Vec<f32>,
}

impl CpuTrainer {
    /// A trainer for the shard `images_u8` (`n * 784` raw pixels) with `labels` (`n` labels
    /// below 10), starting from `params`. The shard is converted to network inputs once,
    /// here; buffers are sized for batches of `max_batch` (a larger batch later grows them).
    pub fn new(
        images_u8: &[u8],
        labels: &[u8],
        params: &[f32],
        sgd: Sgd,
        max_batch: usize,
    ) -> Self {
        assert_eq!(
            images_u8.len(),
            labels.len() * IMAGE_PIXELS,
            "CpuTrainer: {} pixels for {} labels",
            images_u8.len(),
            labels.len()
        );
        assert_eq!(params.len(), PARAMS, "CpuTrainer: parameter vector length");
        if let Some(&bad) = labels.iter().find(|&&l| l as usize >= CLASSES) {
            panic!("CpuTrainer: label {bad} out of range");
        }
        let max_batch = max_batch.max(1);
        CpuTrainer {
            images: images_u8.iter().map(|&p| pixel_to_input(p)).collect(),
            labels: labels.to_vec(),
            params: params.to_vec(),
            grad: vec![0.0; PARAMS],
            velocity: vec![0.0; PARAMS],
            sgd,
            ws: Workspace::new(max_batch),
            batch_images: vec![0.0; max_batch * IMAGE_PIXELS],
            batch_labels: Vec::with_capacity(max_batch),
            losses: Vec::new(),
        }
    }

    /// Samples in the shard.
    pub fn shard_len(&self) -> usize {
        self.labels.len()
    }

    /// The current parameters, without copying them.
    pub fn params_ref(&self) -> &[f32] {
        &self.params
    }

    /// Exchanges the trainer's parameters and momentum with `params` and `velocity`,
    /// without copying: one trainer (and one copy of the data) can then train many
    /// simulated workers in turn, each keeping its own state between rounds.
    ///
    /// # Panics
    /// If either vector's length is not the model's.
    pub fn swap_state(&mut self, params: &mut Vec<f32>, velocity: &mut Vec<f32>) {
        assert_eq!(params.len(), PARAMS, "swap_state: parameter vector length");
        assert_eq!(velocity.len(), PARAMS, "swap_state: velocity length");
        std::mem::swap(&mut self.params, params);
        std::mem::swap(&mut self.velocity, velocity);
    }

    /// Exchanges the parameters only, for plain SGD (whose velocity is never used).
    ///
    /// # Panics
    /// If the vector's length is not the model's.
    pub fn swap_params(&mut self, params: &mut Vec<f32>) {
        assert_eq!(params.len(), PARAMS, "swap_params: parameter vector length");
        std::mem::swap(&mut self.params, params);
    }
}

impl std::fmt::Debug for CpuTrainer {
    /// Sizes and settings only: the shard and the parameters are too long to print.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuTrainer")
            .field("shard_len", &self.labels.len())
            .field("batch_capacity", &self.ws.capacity())
            .field("sgd", &self.sgd)
            .field("pending_losses", &self.losses.len())
            .finish_non_exhaustive()
    }
}

/// A short description of the CPU and of the instruction set its convolutions run on
/// ([`simd::Isa::best`]).
fn cpu_description() -> String {
    format!(
        "CPU ({} {}, 1 thread)",
        std::env::consts::ARCH,
        simd::Isa::best().name()
    )
}

impl Trainer for CpuTrainer {
    fn backend(&self) -> &'static str {
        "cpu"
    }

    fn adapter(&self) -> String {
        cpu_description()
    }

    fn set_params(&mut self, params: &[f32], reset_state: bool) {
        assert_eq!(params.len(), PARAMS, "set_params: parameter vector length");
        self.params.copy_from_slice(params);
        if reset_state {
            self.velocity.fill(0.0);
        }
    }

    fn params(&mut self) -> Vec<f32> {
        self.params.clone()
    }

    /// Runs the step now: gathers the batch, computes the loss and gradient, applies SGD.
    /// Panics on an empty batch or an index outside the shard.
    fn step(&mut self, indices: &[u32], lr: f32) {
        let batch = indices.len();
        assert!(batch > 0, "CpuTrainer::step: empty batch");
        if batch * IMAGE_PIXELS > self.batch_images.len() {
            self.batch_images.resize(batch * IMAGE_PIXELS, 0.0);
        }
        self.batch_labels.clear();
        for (dst, &i) in self
            .batch_images
            .chunks_exact_mut(IMAGE_PIXELS)
            .zip(indices)
        {
            let i = i as usize;
            assert!(
                i < self.labels.len(),
                "CpuTrainer::step: index {i} outside the shard"
            );
            dst.copy_from_slice(&self.images[i * IMAGE_PIXELS..(i + 1) * IMAGE_PIXELS]);
            self.batch_labels.push(self.labels[i]);
        }
        let loss = loss_and_grad(
            &self.params,
            &self.batch_images[..batch * IMAGE_PIXELS],
            &self.batch_labels,
            &mut self.ws,
            &mut self.grad,
        );
        self.sgd
            .step(lr, &mut self.params, &self.grad, &mut self.velocity);
        self.losses.push(loss);
    }

    fn poll_losses(&mut self) -> Vec<f32> {
        // Drain rather than take, so the queue keeps its capacity and steps do not allocate.
        self.losses.drain(..).collect()
    }

    fn finish(&mut self) -> Vec<f32> {
        self.poll_losses()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::init_params;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Ten random binary prototypes; each sample is its class's prototype with 10% of its
    /// pixels replaced by noise.
    fn synthetic_task(rng: &mut ChaCha8Rng, n: usize) -> (Vec<u8>, Vec<u8>) {
        let protos: Vec<Vec<u8>> = (0..CLASSES)
            .map(|_| {
                (0..IMAGE_PIXELS)
                    .map(|_| if rng.random_range(0..2) == 0 { 0 } else { 255 })
                    .collect()
            })
            .collect();
        let mut images = Vec::with_capacity(n * IMAGE_PIXELS);
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            let label = rng.random_range(0..CLASSES as u8);
            labels.push(label);
            for &p in &protos[label as usize] {
                let noisy = rng.random_range(0..10) == 0;
                images.push(if noisy {
                    rng.random_range(0..=255u8)
                } else {
                    p
                });
            }
        }
        (images, labels)
    }

    #[test]
    fn sgd_steps_reduce_the_loss_on_a_synthetic_task() {
        let mut rng = ChaCha8Rng::seed_from_u64(31);
        let (images, labels) = synthetic_task(&mut rng, 200);
        let params = init_params(3);
        let before = evaluate(&params, &images, &labels);
        let mut t = CpuTrainer::new(&images, &labels, &params, Sgd::default(), 16);
        let mut losses = Vec::new();
        for _ in 0..300 {
            let idx: Vec<u32> = (0..16).map(|_| rng.random_range(0..200u32)).collect();
            t.step(&idx, 0.05);
            losses.extend(t.poll_losses());
        }
        losses.extend(t.finish());
        assert_eq!(losses.len(), 300);
        let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
        let (first, last) = (mean(&losses[..20]), mean(&losses[280..]));
        assert!(last < 0.25 * first, "loss fell from {first} to {last}");
        let after = evaluate(&t.params(), &images, &labels);
        assert!(
            after.loss < 0.25 * before.loss && after.accuracy > 0.95,
            "before {before:?}, after {after:?}"
        );
    }

    #[test]
    fn step_is_loss_and_grad_followed_by_sgd() {
        let mut rng = ChaCha8Rng::seed_from_u64(32);
        let (images, labels) = synthetic_task(&mut rng, 20);
        let params = init_params(4);
        let sgd = Sgd {
            momentum: 0.9,
            weight_decay: 0.01,
        };
        let mut t = CpuTrainer::new(&images, &labels, &params, sgd, 4);
        let idx = [3u32, 17, 3, 0, 11, 5]; // larger than max_batch: the buffers grow
        t.step(&idx, 0.1);

        let mut x = Vec::new();
        for &i in &idx {
            let i = i as usize;
            x.extend(
                images[i * IMAGE_PIXELS..(i + 1) * IMAGE_PIXELS]
                    .iter()
                    .map(|&p| pixel_to_input(p)),
            );
        }
        let y: Vec<u8> = idx.iter().map(|&i| labels[i as usize]).collect();
        let mut grad = vec![0.0; PARAMS];
        let loss = loss_and_grad(&params, &x, &y, &mut Workspace::new(6), &mut grad);
        let (mut p, mut v) = (params.clone(), vec![0.0; PARAMS]);
        sgd.step(0.1, &mut p, &grad, &mut v);
        assert_eq!(t.poll_losses(), vec![loss]);
        assert_eq!(t.params(), p);
        assert!(t.poll_losses().is_empty());

        // set_params replaces the parameters; reset_state clears the momentum.
        t.set_params(&params, true);
        assert_eq!(t.params_ref(), &params[..]);
        t.step(&idx, 0.1);
        assert_eq!(t.params(), p, "same step from a reset state");
        assert_eq!(t.backend(), "cpu");
        assert!(t.adapter().starts_with("CPU ("));
        assert_eq!(t.shard_len(), 20);

        // Swapping state in and out trains two models in turn exactly as two trainers would.
        let (mut a, mut va) = (init_params(5), vec![0.0; PARAMS]);
        let mut alone = CpuTrainer::new(&images, &labels, &a, sgd, 4);
        alone.step(&idx, 0.1);
        t.swap_state(&mut a, &mut va);
        t.step(&idx, 0.1);
        t.swap_state(&mut a, &mut va);
        assert_eq!(a, alone.params());
        assert!(va.iter().any(|&v| v != 0.0));
        let mut b = init_params(5);
        t.swap_params(&mut b);
        assert_eq!(t.params_ref(), &init_params(5)[..]);
        assert!(format!("{t:?}").starts_with("CpuTrainer { shard_len: 20,"));
    }
}
