//! The worker's side of every strategy: what it does with the center it gets back after a
//! push ([`after_reply`]) and ADACOMM's adaptive period ([`Adacomm`]). How many local
//! steps a round has is [`super::Strategy::local_steps`].

use crate::aggregate::easgd_pull;

use super::Strategy;

/// How the worker's push fared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Applied, buffered or released at the barrier: the center is the newest.
    Accepted,
    /// Refused: the worker must resynchronise.
    Refused,
}

/// What [`after_reply`] did beyond the model, for the caller to apply to its trainer and
/// its error feedback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Merged {
    /// The local progress was discarded: reset the optimizer state (momentum).
    pub reset_optimizer: bool,
    /// What the residual held is either lost or already in the model: reset it.
    pub reset_residual: bool,
}

/// Updates the worker's model `x` with the `center` it got back after pushing the update it
/// computed from `view`:
/// - EASGD, accepted: pull toward the center, `x <- x - alpha (x - x~)`;
/// - every other central strategy, accepted: take the center, `x <- x~`;
/// - bounded staleness, refused: pull the center and keep the worker's own progress on top
///   of it, `x <- x~ + (x - view)`, to push it again after the next round;
/// - any other refusal: take the center and drop the progress.
///
/// Under SwarmSGD the "center" a worker gets back is its own model after the pairwise
/// average the relay made ([`super::Swarm::reply`]): it takes it, like the central
/// strategies.
///
/// # Panics
/// If the slices differ in length.
pub fn after_reply(
    strategy: &Strategy,
    reply: Reply,
    x: &mut [f32],
    view: &[f32],
    center: &[f32],
) -> Merged {
    assert!(
        x.len() == view.len() && x.len() == center.len(),
        "model lengths"
    );
    let kept = Merged {
        reset_optimizer: false,
        reset_residual: false,
    };
    match (strategy, reply) {
        (Strategy::Easgd { alpha, .. }, Reply::Accepted) => {
            easgd_pull(x, center, *alpha);
            kept
        }
        (_, Reply::Accepted) => {
            x.copy_from_slice(center);
            kept
        }
        (Strategy::Bounded { .. }, Reply::Refused) => {
            for ((xi, v), c) in x.iter_mut().zip(view).zip(center) {
                *xi = c + (*xi - v);
            }
            Merged {
                reset_optimizer: false,
                reset_residual: true,
            }
        }
        (_, Reply::Refused) => {
            x.copy_from_slice(center);
            Merged {
                reset_optimizer: true,
                reset_residual: true,
            }
        }
    }
}

/// ADACOMM's communication period (Wang and Joshi, SysML 2019): start with `k0` local
/// steps; every `interval` of time, set the period to `ceil(sqrt(F / F0) k0)` clamped to
/// `[k_min, k0]`, where `F0` is the first round's mean training loss and `F` the latest's.
/// Few, long rounds while the loss is high; more frequent averaging as it falls.
#[derive(Clone, Debug, PartialEq)]
pub struct Adacomm {
    k0: u32,
    k_min: u32,
    interval_us: u64,
    f0: Option<f64>,
    next_at_us: u64,
    k: u32,
}

impl Adacomm {
    /// The schedule of [`Strategy::Adacomm`]'s parameters (`interval_s` in seconds).
    pub fn new(k0: u32, k_min: u32, interval_s: f64) -> Adacomm {
        let k0 = k0.max(1);
        Adacomm {
            k0,
            k_min: k_min.clamp(1, k0),
            interval_us: (interval_s * 1e6).max(1.0) as u64,
            f0: None,
            next_at_us: 0,
            k: k0,
        }
    }

    /// The schedule of `strategy` when it is ADACOMM.
    pub fn of(strategy: &Strategy) -> Option<Adacomm> {
        match *strategy {
            Strategy::Adacomm {
                k0,
                k_min,
                interval_s,
            } => Some(Adacomm::new(k0, k_min, interval_s)),
            _ => None,
        }
    }

    /// The current period in local steps.
    pub fn period(&self) -> u32 {
        self.k
    }

    /// A round closed at time `now_us` (microseconds) with mean training loss `loss`:
    /// returns the period of the next round. Losses that are not positive finite numbers
    /// are ignored.
    pub fn on_round(&mut self, now_us: u64, loss: f64) -> u32 {
        if !(loss.is_finite() && loss > 0.0) {
            return self.k;
        }
        let Some(f0) = self.f0 else {
            self.f0 = Some(loss);
            self.next_at_us = now_us.saturating_add(self.interval_us);
            return self.k;
        };
        if now_us >= self.next_at_us {
            let k = ((loss / f0).sqrt() * f64::from(self.k0)).ceil();
            self.k = (k.min(f64::from(self.k0)) as u32).max(self.k_min);
            let skipped = (now_us - self.next_at_us) / self.interval_us + 1;
            self.next_at_us = self
                .next_at_us
                .saturating_add(skipped.saturating_mul(self.interval_us));
        }
        self.k
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Staleness;
    use crate::strategy::Strategy;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn adacomm_period_stays_in_range_and_shrinks_as_the_loss_falls(
            k0 in 1u32..64, k_min in 1u32..64, mut losses in prop::collection::vec(0.01f64..5.0, 1..50)
        ) {
            losses.sort_by(|a, b| b.total_cmp(a));
            let mut a = Adacomm::new(k0, k_min, 1.0);
            let mut last = a.period();
            prop_assert_eq!(last, k0);
            for (i, loss) in losses.into_iter().enumerate() {
                let k = a.on_round(i as u64 * 700_000, loss);
                prop_assert!(k <= last && k <= k0 && k >= k_min.min(k0));
                last = k;
            }
        }
    }

    #[test]
    fn adacomm_follows_the_square_root_rule_once_per_interval() {
        let mut a = Adacomm::new(16, 2, 10.0);
        assert_eq!(a.on_round(0, 2.0), 16);
        assert_eq!(a.on_round(5_000_000, 0.5), 16, "not yet an interval");
        assert_eq!(a.on_round(10_000_000, 0.5), 8, "sqrt(0.5 / 2) * 16");
        assert_eq!(a.on_round(12_000_000, 0.02), 8);
        assert_eq!(a.on_round(40_000_000, 0.02), 2, "ceil(1.6) = 2 = k_min");
        assert_eq!(a.on_round(41_000_000, f64::NAN), 2);
    }

    #[test]
    fn replies_pull_take_or_rebase() {
        let easgd = Strategy::Easgd {
            alpha: 0.5,
            staleness: Staleness::Constant,
            tau_max: 1,
        };
        let bounded = Strategy::Bounded { s: 1, b: None };
        let fedbuff = Strategy::Fedbuff {
            m: 2,
            staleness: Staleness::Constant,
            tau_max: 1,
        };
        let (view, center) = ([1.0f32, 1.0], [3.0f32, 5.0]);
        let run = |s: &Strategy, r: Reply| {
            let mut x = [2.0f32, 0.0];
            let m = after_reply(s, r, &mut x, &view, &center);
            (x, m.reset_optimizer, m.reset_residual)
        };
        assert_eq!(run(&easgd, Reply::Accepted), ([2.5, 2.5], false, false));
        assert_eq!(run(&fedbuff, Reply::Accepted), ([3.0, 5.0], false, false));
        assert_eq!(run(&bounded, Reply::Refused), ([4.0, 4.0], false, true));
        assert_eq!(run(&easgd, Reply::Refused), ([3.0, 5.0], true, true));
    }
}
