//! Where a CPU training step spends its time, per layer operation: the same measurement for
//! `easel bench train --profile` (native) and for the browser benchmark (wasm), so the two
//! paths can be compared op by op.
//!
//! The clock is the caller's (`std::time::Instant` natively, `performance.now()` in the
//! browser, where `Instant` does not exist), given as a function returning seconds.

use super::net::{OPS, Workspace, loss_and_grad_with_laps};
use crate::Sgd;
use crate::model::{self, IMAGE_PIXELS, pixel_to_input};

/// Steps timed by [`profile_step`], after [`WARMUP_STEPS`] untimed ones.
pub const PROFILE_STEPS: usize = 200;

/// Untimed steps before the timed ones.
pub const WARMUP_STEPS: usize = 20;

/// Distinct batches the profile cycles through (gathered before the clock starts).
const BATCHES: usize = 16;

/// The names [`profile_step`] reports, in order: [`OPS`], then the SGD update.
pub fn op_names() -> impl Iterator<Item = &'static str> {
    OPS.iter().copied().chain(["sgd step"])
}

/// Times each layer operation of the CPU training step ([`OPS`], then the SGD update) over
/// [`PROFILE_STEPS`] steps of `batch` samples taken in `order` from the split `images_u8`
/// (`n * 784` raw pixels) with `labels`, after [`WARMUP_STEPS`] untimed steps. Returns the
/// mean microseconds per step of each operation, named as [`op_names`] names them. `now`
/// returns the current time in seconds.
///
/// # Panics
/// If `order` holds fewer than `batch` indices, or one outside the split.
pub fn profile_step(
    images_u8: &[u8],
    labels: &[u8],
    order: &[u32],
    batch: usize,
    now: &mut dyn FnMut() -> f64,
) -> Vec<(&'static str, f64)> {
    assert!(
        batch > 0 && order.len() >= batch,
        "profile_step: {} indices for batches of {batch}",
        order.len()
    );
    let batches: Vec<(Vec<f32>, Vec<u8>)> = order
        .chunks_exact(batch)
        .take(BATCHES)
        .map(|idx| {
            let mut x = Vec::with_capacity(batch * IMAGE_PIXELS);
            for &i in idx {
                let i = i as usize;
                let img = &images_u8[i * IMAGE_PIXELS..(i + 1) * IMAGE_PIXELS];
                x.extend(img.iter().map(|&p| pixel_to_input(p)));
            }
            (x, idx.iter().map(|&i| labels[i as usize]).collect())
        })
        .collect();
    let mut params = model::init_params(0);
    let (mut grad, mut velocity) = (vec![0.0; params.len()], vec![0.0; params.len()]);
    let mut ws = Workspace::<f32>::new(batch);
    let mut spent = [0.0f64; OPS.len() + 1];
    for step in 0..WARMUP_STEPS + PROFILE_STEPS {
        let (x, y) = &batches[step % batches.len()];
        let timed = step >= WARMUP_STEPS;
        let mut at = now();
        let mut lap = |op: usize| {
            let t = now();
            if timed {
                spent[op] += t - at;
            }
            at = t;
        };
        loss_and_grad_with_laps(&params, x, y, &mut ws, &mut grad, &mut lap);
        let t = now();
        Sgd::default().step(0.01, &mut params, &grad, &mut velocity);
        if timed {
            spent[OPS.len()] += now() - t;
        }
    }
    op_names()
        .zip(spent)
        .map(|(op, s)| (op, s * 1e6 / PROFILE_STEPS as f64))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_names_every_op_and_counts_time() {
        let n = 70;
        let images: Vec<u8> = (0..n * IMAGE_PIXELS).map(|i| (i * 7 % 256) as u8).collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        let order: Vec<u32> = (0..n as u32).collect();
        let t0 = std::time::Instant::now();
        let ops = profile_step(&images, &labels, &order, 32, &mut || {
            t0.elapsed().as_secs_f64()
        });
        let names: Vec<&str> = ops.iter().map(|(op, _)| *op).collect();
        assert_eq!(names, op_names().collect::<Vec<_>>());
        assert!(ops.iter().all(|(_, us)| *us >= 0.0));
        assert!(ops.iter().map(|(_, us)| us).sum::<f64>() > 0.0);
    }
}
