//! The pure pieces of a local training run: learning-rate schedules and epoch orders.
//!
//! They carry no clock and no I/O, so `easel train`, the bot workers and the browser worker
//! all drive their loops with the same rules.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// How the learning rate changes over a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// The base rate throughout.
    Constant,
    /// Cosine annealing from the base rate at step 0 to zero after the last step
    /// (Loshchilov and Hutter, SGDR, without restarts).
    Cosine,
}

impl LrSchedule {
    /// The learning rate for step `step` (0-based) of `total` steps.
    pub fn lr_at(self, base: f32, step: usize, total: usize) -> f32 {
        match self {
            LrSchedule::Constant => base,
            LrSchedule::Cosine => {
                let t = step.min(total) as f64 / total.max(1) as f64;
                (base as f64 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())) as f32
            }
        }
    }
}

/// The order in which epoch `epoch` visits `n` samples: a permutation of `0..n` that depends
/// only on `seed` and `epoch`.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    order.shuffle(&mut rng);
    order
}

/// Number of batches of at most `batch` samples that cover `n` samples (the last one may be
/// smaller).
pub fn batches_per_epoch(n: usize, batch: usize) -> usize {
    n.div_ceil(batch.max(1))
}

/// Where a run is in its shard: the epoch, that epoch's order ([`epoch_order`]) and the next
/// position. Every trainer's loop takes its batches from one (the worker's rounds, the
/// simulator's workers, the solo page, `easel train`). Batches never cross an epoch: the
/// last batch of an epoch may be smaller, and the next batch starts a new order.
#[derive(Clone, Debug, PartialEq)]
pub struct Cursor {
    seed: u64,
    epoch: u64,
    order: Vec<u32>,
    at: usize,
}

impl Cursor {
    /// At the start of epoch 0 over `n` samples.
    pub fn new(n: usize, seed: u64) -> Cursor {
        Cursor {
            seed,
            epoch: 0,
            order: epoch_order(n, seed, 0),
            at: 0,
        }
    }

    /// The positions (into the shard) of the next batch of at most `batch` samples; empty
    /// only for an empty shard.
    pub fn next_batch(&mut self, batch: usize) -> &[u32] {
        if self.at >= self.order.len() {
            self.epoch += 1;
            self.order = epoch_order(self.order.len(), self.seed, self.epoch);
            self.at = 0;
        }
        let start = self.at;
        self.at = (start + batch.max(1)).min(self.order.len());
        &self.order[start..self.at]
    }

    /// The epoch the last batch came from (0 before any).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Epochs done, fractional: the epoch plus the share of its order already taken.
    pub fn progress(&self) -> f64 {
        self.epoch as f64 + self.at as f64 / self.order.len().max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cosine_starts_at_base_and_ends_at_zero() {
        assert_eq!(LrSchedule::Cosine.lr_at(0.1, 0, 100), 0.1);
        assert!(LrSchedule::Cosine.lr_at(0.1, 100, 100).abs() < 1e-9);
        assert!((LrSchedule::Cosine.lr_at(0.1, 50, 100) - 0.05).abs() < 1e-7);
        assert_eq!(LrSchedule::Constant.lr_at(0.1, 77, 100), 0.1);
    }

    proptest! {
        #[test]
        fn cosine_is_non_increasing(total in 1usize..500, a in 0usize..500, b in 0usize..500) {
            let (lo, hi) = (a.min(b), a.max(b));
            prop_assert!(LrSchedule::Cosine.lr_at(1.0, hi, total) <= LrSchedule::Cosine.lr_at(1.0, lo, total));
        }

        #[test]
        fn epoch_order_is_a_deterministic_permutation(n in 0usize..300, seed: u64, epoch in 0u64..50) {
            let order = epoch_order(n, seed, epoch);
            prop_assert_eq!(&order, &epoch_order(n, seed, epoch));
            let mut sorted = order.clone();
            sorted.sort_unstable();
            prop_assert_eq!(sorted, (0..n as u32).collect::<Vec<_>>());
        }
    }

    #[test]
    fn epochs_differ() {
        assert_ne!(epoch_order(100, 1, 0), epoch_order(100, 1, 1));
    }

    proptest! {
        /// A cursor visits every position exactly once per epoch, in [`epoch_order`], in
        /// batches of `batch` except each epoch's last, and starts the next epoch after.
        #[test]
        fn a_cursor_walks_each_epoch_order_in_batches(
            n in 1usize..60, batch in 1usize..20, seed in any::<u64>(),
        ) {
            let mut c = Cursor::new(n, seed);
            for epoch in 0..3u64 {
                let mut seen = Vec::new();
                for b in 0..batches_per_epoch(n, batch) {
                    let next = c.next_batch(batch).to_vec();
                    let last = b + 1 == batches_per_epoch(n, batch);
                    prop_assert!(next.len() == batch || (last && next.len() <= batch));
                    prop_assert_eq!(c.epoch(), epoch);
                    seen.extend(next);
                }
                prop_assert_eq!(&seen, &epoch_order(n, seed, epoch));
            }
        }
    }
}
