//! The center's side of every strategy with a central model: [`Aggregator::on_update`].
//!
//! An update is what a worker sends after its local steps: `delta = x_i - center(base)`,
//! decoded from the wire, with the center version `base` it started from. The aggregator
//! keeps the recent versions in a [`CenterRing`] (so `x_i` can be rebuilt), decides what
//! to do with the update, and records every applied update in its [`Meter`].

use std::sync::Arc;

use crate::aggregate::{
    Applied, CenterRing, Decision, Policy, Reason, Staleness, apply_push, distance, validate_push,
};
use crate::codes::code;

use super::meter::Meter;
use super::{Strategy, StrategyError};

/// What became of an update.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// The center changed to `version` by `updates` updates (1, or a whole barrier round or
    /// buffer); each worker in `reply` now gets the new center.
    Applied {
        version: u64,
        reply: Vec<u32>,
        updates: u32,
    },
    /// Kept in the buffer, `pending` updates in it now; `reply` gets the (unchanged)
    /// current center and goes on.
    Buffered { pending: u32, reply: Vec<u32> },
    /// Held until the barrier closes, with `pending` updates now waiting; nobody gets a
    /// center yet.
    Held { pending: u32 },
    /// Not applied; the worker must resynchronise with the current center
    /// ([`super::worker::after_reply`] says how).
    Refused(Refusal),
}

/// Why an update was not applied.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// The checks every push passes ([`validate_push`]): length, finite values, norm,
    /// staleness, a base the ring still holds.
    #[error(transparent)]
    Invalid(#[from] Reason),
    /// Bounded staleness: the worker's view is farther than `bound` from the center.
    #[error("view distance {distance} exceeds the bound {bound}")]
    TooFar { distance: f32, bound: f32 },
}

impl Refusal {
    /// The error code sent to the worker ([`crate::codes::code`]).
    pub fn code(&self) -> u16 {
        match self {
            Refusal::Invalid(r) => r.code(),
            Refusal::TooFar { .. } => code::TOO_STALE,
        }
    }
}

/// `center <- center + weight * delta`: asynchronous SGD's step for an update `delta`
/// (a worker's local progress), with a staleness-aware weight.
///
/// # Panics
/// If the slices differ in length.
pub fn apply_delta(center: &mut [f32], delta: &[f32], weight: f32) {
    assert_eq!(center.len(), delta.len(), "center and delta lengths");
    for (c, d) in center.iter_mut().zip(delta) {
        *c += weight * d;
    }
}

/// One update waiting in a barrier or a buffer.
#[derive(Clone, Debug)]
struct Pending {
    worker: u32,
    base: u64,
    delta: Vec<f32>,
}

/// The center of a room with a central model, under one [`Strategy`] (not `swarm`).
#[derive(Clone, Debug)]
pub struct Aggregator {
    strategy: Strategy,
    /// Workers in the room: the barrier's `n`.
    workers: u32,
    /// Updates with `||delta||` above this are refused.
    max_norm: f32,
    ring: CenterRing,
    /// The barrier's or the buffer's updates, in arrival order.
    pending: Vec<Pending>,
    meter: Meter,
    /// What the last update applied by EASGD measured (its distances and norm), so the
    /// relay's ledger need not compute them again; `None` after any other update.
    last_easgd: Option<Applied>,
}

impl Aggregator {
    /// An aggregator for `workers` workers starting from `center` as `version`. Swarm has
    /// no central model and is refused, as are invalid parameters.
    pub fn new(
        strategy: Strategy,
        workers: u32,
        version: u64,
        center: Arc<[f32]>,
        max_norm: f32,
    ) -> Result<Aggregator, StrategyError> {
        strategy.validate(workers)?;
        if let Strategy::Swarm { .. } = strategy {
            return Err(StrategyError::Invalid(
                "swarm has no central model: drive it with strategy::swarm".into(),
            ));
        }
        let ring = CenterRing::new(strategy.ring_capacity(), version, center);
        Ok(Aggregator {
            strategy,
            workers,
            max_norm,
            ring,
            pending: Vec::new(),
            meter: Meter::default(),
            last_easgd: None,
        })
    }

    /// The strategy.
    pub fn strategy(&self) -> &Strategy {
        &self.strategy
    }

    /// The current version and center.
    pub fn center(&self) -> (u64, &Arc<[f32]>) {
        self.ring.newest()
    }

    /// Every applied update's staleness and view distance so far.
    /// The figures of the last update when EASGD applied it ([`apply_push`]'s `tau`,
    /// `alpha_eff`, distances and `||delta||`); `None` when the last update was refused,
    /// or handled by another strategy.
    pub fn last_easgd(&self) -> Option<&Applied> {
        self.last_easgd.as_ref()
    }

    pub fn meter(&self) -> &Meter {
        &self.meter
    }

    /// Updates waiting in the barrier or the buffer.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The recent center versions (for a caller that records distances, like the relay's
    /// ledger).
    pub fn ring(&self) -> &CenterRing {
        &self.ring
    }

    /// Sets the barrier's `n`: in a live room workers come and go.
    pub fn set_workers(&mut self, workers: u32) {
        self.workers = workers.max(1);
    }

    /// Changes the strategy (a teacher's new settings), keeping the center versions when
    /// the ring holds enough for it (else only the newest). Updates waiting in a barrier or
    /// a buffer are dropped; their workers are returned, to be told to resynchronise.
    pub fn set_strategy(&mut self, strategy: Strategy) -> Result<Vec<u32>, StrategyError> {
        strategy.validate(u32::MAX)?;
        if let Strategy::Swarm { .. } = strategy {
            return Err(StrategyError::Invalid(
                "swarm has no central model: drive it with strategy::swarm".into(),
            ));
        }
        if self.ring.len() < strategy.ring_capacity() {
            let (v, c) = self.ring.newest();
            self.ring = CenterRing::new(strategy.ring_capacity(), v, c.clone());
        }
        self.strategy = strategy;
        Ok(std::mem::take(&mut self.pending)
            .into_iter()
            .map(|p| p.worker)
            .collect())
    }

    /// Starts over from `center` as `version`, alone in a fresh ring; pending updates are
    /// dropped and their workers returned.
    pub fn reset(&mut self, version: u64, center: Arc<[f32]>) -> Vec<u32> {
        self.ring = CenterRing::new(self.strategy.ring_capacity(), version, center);
        std::mem::take(&mut self.pending)
            .into_iter()
            .map(|p| p.worker)
            .collect()
    }

    /// Handles `worker`'s update `delta`, computed from center version `base`.
    pub fn on_update(&mut self, worker: u32, base: u64, delta: &[f32]) -> Action {
        match self.try_update(worker, base, delta) {
            Ok(action) => action,
            Err(refusal) => Action::Refused(refusal),
        }
    }

    fn policy(&self, alpha: f32, staleness: Staleness, tau_max: u32) -> Policy {
        Policy {
            alpha,
            staleness,
            tau_max,
            max_norm: self.max_norm,
        }
    }

    /// Checks an update against `policy` and the ring: its staleness and the distance
    /// between its view, `center(base)`, and the current center.
    fn check(&self, policy: &Policy, base: u64, delta: &[f32]) -> Result<(u32, f32), Refusal> {
        let (current, center) = self.ring.newest();
        match validate_push(policy, current, base, delta, center.len()) {
            Decision::Accept { tau, .. } => Ok((tau, distance(self.ring.get(base)?, center))),
            Decision::Refuse(reason) => Err(reason.into()),
        }
    }

    /// Makes `next` the new version and answers `reply`.
    fn publish(&mut self, next: Vec<f32>, reply: Vec<u32>, updates: u32) -> Action {
        let version = self.ring.newest().0 + 1;
        self.ring.push(version, next.into());
        Action::Applied {
            version,
            reply,
            updates,
        }
    }

    fn try_update(&mut self, worker: u32, base: u64, delta: &[f32]) -> Result<Action, Refusal> {
        self.last_easgd = None;
        match self.strategy.clone() {
            Strategy::Easgd {
                alpha,
                staleness,
                tau_max,
            } => {
                let policy = self.policy(alpha, staleness, tau_max);
                let a = apply_push(&mut self.ring, &policy, base, delta)?;
                self.last_easgd = Some(a);
                self.meter.record(worker, a.tau, a.view_distance);
                Ok(Action::Applied {
                    version: a.version,
                    reply: vec![worker],
                    updates: 1,
                })
            }
            Strategy::AsyncSgd { staleness, tau_max } => {
                let (tau, view) = self.check(&self.policy(1.0, staleness, tau_max), base, delta)?;
                self.apply_now(worker, tau, view, delta, staleness.weight(u64::from(tau)))
            }
            Strategy::Bounded { s, b } => {
                let policy = self.policy(1.0, Staleness::Constant, s);
                let (tau, view) = self.check(&policy, base, delta)?;
                if let Some(bound) = b
                    && view > bound
                {
                    return Err(Refusal::TooFar {
                        distance: view,
                        bound,
                    });
                }
                self.apply_now(worker, tau, view, delta, 1.0)
            }
            Strategy::Fedavg { m_of_n, .. } => self.barrier(worker, base, delta, m_of_n),
            Strategy::Adacomm { .. } => self.barrier(worker, base, delta, None),
            Strategy::Fedbuff {
                m,
                staleness,
                tau_max,
            } => {
                self.check(&self.policy(1.0, staleness, tau_max), base, delta)?;
                self.pending.push(Pending {
                    worker,
                    base,
                    delta: delta.to_vec(),
                });
                if self.pending.len() < m as usize {
                    return Ok(Action::Buffered {
                        pending: self.pending.len() as u32,
                        reply: vec![worker],
                    });
                }
                Ok(self.flush(staleness, vec![worker]))
            }
            Strategy::Swarm { .. } => unreachable!("Aggregator::new refuses swarm"),
        }
    }

    /// Asynchronous SGD's step, now: `x~ <- x~ + weight delta`.
    fn apply_now(
        &mut self,
        worker: u32,
        tau: u32,
        view: f32,
        delta: &[f32],
        weight: f32,
    ) -> Result<Action, Refusal> {
        let mut next = self.ring.newest().1.to_vec();
        apply_delta(&mut next, delta, weight);
        self.meter.record(worker, tau, view);
        Ok(self.publish(next, vec![worker], 1))
    }

    /// A synchronous round: only updates from the current version count; the round closes
    /// after `m` of them (all workers by default) with the mean of the workers' models.
    fn barrier(
        &mut self,
        worker: u32,
        base: u64,
        delta: &[f32],
        m: Option<u32>,
    ) -> Result<Action, Refusal> {
        let policy = self.policy(1.0, Staleness::Constant, 0);
        self.check(&policy, base, delta)?;
        self.pending.push(Pending {
            worker,
            base,
            delta: delta.to_vec(),
        });
        // Fewer workers than `m` (a live room whose workers left) close with all of them.
        if self.pending.len() < m.unwrap_or(self.workers).min(self.workers) as usize {
            return Ok(Action::Held {
                pending: self.pending.len() as u32,
            });
        }
        let reply = self.pending.iter().map(|p| p.worker).collect();
        Ok(self.flush(Staleness::Constant, reply))
    }

    /// Applies the pending updates' weighted mean, `x~ <- x~ + (1/m) sum s(tau_i) delta_i`,
    /// accumulated in `f64` in arrival order, and answers `reply`. For a barrier every
    /// `tau_i` is 0 and this is the mean of the workers' models.
    fn flush(&mut self, staleness: Staleness, reply: Vec<u32>) -> Action {
        let pending = std::mem::take(&mut self.pending);
        let (current, center) = self.ring.newest();
        let mut sum = vec![0f64; center.len()];
        for p in &pending {
            let tau = current - p.base;
            let w = f64::from(staleness.weight(tau));
            for (s, d) in sum.iter_mut().zip(&p.delta) {
                *s += w * f64::from(*d);
            }
            // Every pending base passed `check` since the last version, so the ring has it.
            let view = self.ring.get(p.base).map_or(0.0, |v| distance(v, center));
            self.meter.record(p.worker, tau as u32, view);
        }
        let m = pending.len() as f64;
        let next: Vec<f32> = center
            .iter()
            .zip(&sum)
            .map(|(c, s)| (f64::from(*c) + s / m) as f32)
            .collect();
        self.publish(next, reply, pending.len() as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::Strategy;
    use proptest::prelude::*;

    fn agg(strategy: Strategy, workers: u32) -> Aggregator {
        Aggregator::new(strategy, workers, 0, vec![0.0; 3].into(), 1e6).unwrap()
    }

    /// A worker's update: its id, how many versions behind the current center it is
    /// (clamped to what exists) and its delta.
    fn update() -> impl proptest::strategy::Strategy<Value = (u32, u64, Vec<f32>)> {
        (0u32..8, 0u64..12, prop::collection::vec(-1.0f32..1.0, 3))
    }

    proptest! {
        #[test]
        fn fedbuff_applies_exactly_every_m_updates(
            m in 1u32..6, updates in prop::collection::vec(update(), 1..40)
        ) {
            let mut a = agg(Strategy::Fedbuff { m, staleness: Staleness::Inverse, tau_max: 64 }, 8);
            let mut accepted = 0u32;
            for (worker, behind, delta) in updates {
                let current = a.center().0;
                let base = current.saturating_sub(behind);
                let before = a.center().0;
                match a.on_update(worker, base, &delta) {
                    Action::Applied { version, updates, reply } => {
                        accepted += 1;
                        prop_assert_eq!(accepted % m, 0);
                        prop_assert_eq!(updates, m);
                        prop_assert_eq!(version, before + 1);
                        prop_assert_eq!(reply, vec![worker]);
                    }
                    Action::Buffered { pending, .. } => {
                        accepted += 1;
                        prop_assert_eq!(pending, accepted % m);
                        prop_assert_eq!(a.center().0, before);
                    }
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
            prop_assert_eq!(a.center().0, u64::from(accepted / m));
            prop_assert_eq!(a.meter().summary().count, u64::from(accepted - accepted % m));
        }

        #[test]
        fn bounded_staleness_never_applies_an_update_older_than_s(
            s in 0u32..5, updates in prop::collection::vec(update(), 1..40)
        ) {
            let mut a = agg(Strategy::Bounded { s, b: None }, 8);
            for (worker, behind, delta) in updates {
                let current = a.center().0;
                let base = current.saturating_sub(behind);
                match a.on_update(worker, base, &delta) {
                    Action::Applied { .. } => prop_assert!(current - base <= u64::from(s)),
                    Action::Refused(r) => {
                        prop_assert!(current - base > u64::from(s), "{:?}", r);
                        prop_assert_eq!(a.center().0, current);
                    }
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
            prop_assert!(a.meter().summary().tau_max <= s);
        }

        #[test]
        fn a_barrier_closes_after_m_of_n_with_the_mean_model(
            n in 1u32..8, deltas in prop::collection::vec(prop::collection::vec(-4i32..4, 3), 8)
        ) {
            let m = n.div_ceil(2);
            let mut a = agg(Strategy::Fedavg { k: 1, m_of_n: Some(m) }, n);
            for w in 0..m {
                let delta: Vec<f32> = deltas[w as usize].iter().map(|&d| d as f32).collect();
                let action = a.on_update(w, 0, &delta);
                if w + 1 < m {
                    prop_assert_eq!(action, Action::Held { pending: w + 1 });
                } else {
                    prop_assert_eq!(action, Action::Applied {
                        version: 1, reply: (0..m).collect(), updates: m,
                    });
                }
            }
            for j in 0..3 {
                let mean = deltas[..m as usize].iter().map(|d| f64::from(d[j])).sum::<f64>()
                    / f64::from(m);
                prop_assert!((f64::from(a.center().1[j]) - mean).abs() < 1e-6);
            }
            // A straggler's update from the closed round is refused: it resynchronises.
            let late = a.on_update(n, 0, &[0.0; 3]);
            let refused = matches!(late, Action::Refused(Refusal::Invalid(Reason::TooStale { .. })));
            prop_assert!(refused);
        }
    }

    #[test]
    fn async_sgd_scales_the_delta_by_the_staleness_weight() {
        let mut a = agg(
            Strategy::AsyncSgd {
                staleness: Staleness::Inverse,
                tau_max: 8,
            },
            2,
        );
        a.on_update(0, 0, &[2.0, 0.0, 0.0]);
        // One version behind: weight 1/2, view distance ||[2,0,0] - 0|| = 2.
        a.on_update(1, 0, &[0.0, 4.0, 0.0]);
        assert_eq!(a.center().1.to_vec(), vec![2.0, 2.0, 0.0]);
        let s = a.meter().summary();
        assert_eq!((s.count, s.tau_max, s.distance_max), (2, 1, 2.0));
    }

    #[test]
    fn easgd_goes_through_the_shared_elastic_rule_and_bounded_checks_distance() {
        let mut a = agg(
            Strategy::Easgd {
                alpha: 0.5,
                staleness: Staleness::Constant,
                tau_max: 4,
            },
            2,
        );
        a.on_update(0, 0, &[2.0, 2.0, 2.0]);
        assert_eq!(a.center().1.to_vec(), vec![1.0, 1.0, 1.0]);
        assert!(matches!(
            a.on_update(0, 0, &[f32::NAN, 0.0, 0.0]),
            Action::Refused(Refusal::Invalid(Reason::NonFinite { index: 0 }))
        ));
        let mut b = agg(
            Strategy::Bounded {
                s: 10,
                b: Some(1.0),
            },
            2,
        );
        b.on_update(0, 0, &[3.0, 0.0, 0.0]);
        let r = b.on_update(1, 0, &[1.0, 0.0, 0.0]);
        assert_eq!(
            r,
            Action::Refused(Refusal::TooFar {
                distance: 3.0,
                bound: 1.0
            })
        );
        assert_eq!(
            Refusal::TooFar {
                distance: 3.0,
                bound: 1.0
            }
            .code(),
            code::TOO_STALE
        );
        assert!(
            Aggregator::new(
                Strategy::Swarm {
                    topology: super::super::Topology::Ring,
                    quantize: None
                },
                4,
                0,
                vec![0.0].into(),
                1.0
            )
            .is_err()
        );
    }
}
