//! [`Engine`]: every strategy behind one door, as the relay's room and the simulator both
//! drive it. It holds what a strategy needs between updates (the center versions or the
//! swarm's models, the barrier's held updates, ADACOMM's schedule and the round's losses)
//! and answers each update with everything a shell needs to reply and to record it: the
//! staleness, the weight, the distances, the version made, the answers of a barrier's
//! round, ADACOMM's new period and the swarm peer. A shell keeps only what is its own: the
//! roster, the ledger, the clock, the network and the encoded centers.

use std::sync::Arc;

use rand::Rng;

use crate::aggregate::{alpha_eff, norm};
use crate::codec::Codec;

use super::center::{Action, Aggregator, Refusal};
use super::meter::Meter;
use super::swarm::Swarm;
use super::worker::Adacomm;
use super::{Strategy, StrategyError};

/// One update as it reaches the engine: `delta = x_i - view`, computed from version `base`,
/// after local steps whose mean training loss was `loss` (ADACOMM's schedule reads it).
#[derive(Clone, Copy, Debug)]
pub struct Update<'a> {
    pub worker: u32,
    pub base: u64,
    pub delta: &'a [f32],
    pub loss: f32,
}

/// An accepted update's answer: the worker takes the center of `version` (under SwarmSGD,
/// its own model after the average, [`Engine::reply`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Answer {
    pub worker: u32,
    /// The version the update was computed from.
    pub base: u64,
    /// Its staleness: versions made since `base` (under SwarmSGD, averages the worker's
    /// model took part in as the neighbour since it last got it back).
    pub tau: u32,
    /// The weight the update got in the version it went into (EASGD's `alpha s(tau)`, a
    /// barrier's `1 / m`, FedBuff's `s(tau) / m`, SwarmSGD's 0.5, ...).
    pub weight: f32,
    /// The newest version when it is answered.
    pub version: u64,
}

/// What becomes of the update itself.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Accepted: answer it now.
    Answered(Answer),
    /// Held at a barrier: its answer comes in [`Outcome::released`] when the round closes,
    /// or as a refusal from [`Engine::release_held`] when the round is abandoned.
    Held,
    /// Refused: the center did not move; the worker resynchronises.
    Refused(Refusal),
}

/// Everything one update did ([`Engine::on_update`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub verdict: Verdict,
    /// Versions made since the update's base (the ledger's `tau`, refusals included).
    pub tau: u64,
    /// `||view - center||` and `||x_i - center||` against the center the update met, and
    /// `||delta||`; NaN where the view is no longer known.
    pub view_distance: f32,
    pub worker_distance: f32,
    pub delta_norm: f32,
    /// The version the update made, if the center changed.
    pub version: Option<u64>,
    /// How many updates that version merged (0 when none was made).
    pub updates: u32,
    /// SwarmSGD: the neighbour the update was averaged with.
    pub peer: Option<u32>,
    /// Held updates of other workers that this update's round close answered.
    pub released: Vec<Answer>,
    /// ADACOMM's new period (local steps), when the round close changed it.
    pub period: Option<u32>,
}

/// An update waiting at a barrier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    pub worker: u32,
    pub base: u64,
    pub tau: u32,
}

/// The weight an update gets under `strategy` when it is one of `m` averaged together:
/// EASGD's `alpha s(tau)`, async SGD's `s(tau)`, bounded staleness's 1, FedBuff's
/// `s(tau) / m` (its own `m`), a barrier's `1 / m`.
pub fn update_weight(strategy: &Strategy, tau: u64, m: u32) -> f32 {
    match *strategy {
        Strategy::Easgd {
            alpha, staleness, ..
        } => alpha_eff(alpha, staleness, tau),
        Strategy::AsyncSgd { staleness, .. } => staleness.weight(tau),
        Strategy::Bounded { .. } => 1.0,
        Strategy::Swarm { .. } => super::swarm::PAIR_WEIGHT,
        Strategy::Fedbuff { staleness, m, .. } => staleness.weight(tau) / m.max(1) as f32,
        Strategy::Fedavg { .. } | Strategy::Adacomm { .. } => 1.0 / m.max(1) as f32,
    }
}

/// `(||view - center||, ||view + delta - center||, ||delta||)` in one pass and with no copy
/// of the worker's model: each sum runs in `f64` in index order, exactly as
/// [`crate::distance`] (after `CenterRing::rebase`) and [`norm`] compute them, so the
/// figures are the same to the bit; the three independent sums overlap in the CPU.
pub fn push_distances(view: &[f32], delta: &[f32], center: &[f32]) -> (f32, f32, f32) {
    let (mut v, mut w, mut d) = (0.0f64, 0.0f64, 0.0f64);
    for ((&x, &dx), &c) in view.iter().zip(delta).zip(center) {
        let dv = f64::from(x) - f64::from(c);
        let dw = f64::from(x + dx) - f64::from(c);
        v += dv * dv;
        w += dw * dw;
        d += f64::from(dx) * f64::from(dx);
    }
    (v.sqrt() as f32, w.sqrt() as f32, d.sqrt() as f32)
}

/// The strategy in use and its state: a central [`Aggregator`] or a [`Swarm`], ADACOMM's
/// schedule, and the updates held at a barrier. Pure: the clock (`now_us`) and the random
/// generator are passed in.
#[derive(Clone, Debug)]
pub struct Engine {
    strategy: Strategy,
    max_norm: f32,
    /// The center's side; `None` under SwarmSGD.
    central: Option<Aggregator>,
    /// SwarmSGD's models; `None` under every other strategy.
    swarm: Option<Swarm>,
    adacomm: Option<Adacomm>,
    held: Vec<Held>,
    /// The losses of the barrier round in progress, in arrival order.
    round_losses: Vec<f32>,
}

impl Engine {
    /// An engine for `workers` workers (the barrier's `n`; [`Engine::set_workers`] changes
    /// it) starting from `center` as `version`. The parameters are checked against
    /// `workers`.
    pub fn new(
        strategy: Strategy,
        workers: u32,
        version: u64,
        center: Arc<[f32]>,
        max_norm: f32,
    ) -> Result<Engine, StrategyError> {
        strategy.validate(workers)?;
        let (central, swarm) = match strategy {
            Strategy::Swarm { topology, .. } => {
                (None, Some(Swarm::new(topology, version, center, max_norm)))
            }
            _ => (
                Some(Aggregator::new(
                    strategy.clone(),
                    workers,
                    version,
                    center,
                    max_norm,
                )?),
                None,
            ),
        };
        Ok(Engine {
            adacomm: Adacomm::of(&strategy),
            strategy,
            max_norm,
            central,
            swarm,
            held: Vec::new(),
            round_losses: Vec::new(),
        })
    }

    pub fn strategy(&self) -> &Strategy {
        &self.strategy
    }

    /// The newest version and the model that stands for the center: the center, or under
    /// SwarmSGD the mean of the workers' models.
    pub fn center(&self) -> (u64, &Arc<[f32]>) {
        match (&self.central, &self.swarm) {
            (Some(a), _) => a.center(),
            (None, Some(s)) => (s.version(), s.mean()),
            (None, None) => unreachable!("an engine is central or a swarm"),
        }
    }

    pub fn version(&self) -> u64 {
        self.center().0
    }

    /// The center's side (its ring of recent versions), unless the strategy is SwarmSGD.
    pub fn central(&self) -> Option<&Aggregator> {
        self.central.as_ref()
    }

    /// The live swarm, under SwarmSGD.
    pub fn swarm(&self) -> Option<&Swarm> {
        self.swarm.as_ref()
    }

    /// The elastic-consistency meter of every applied update.
    pub fn meter(&self) -> &Meter {
        match (&self.central, &self.swarm) {
            (Some(a), _) => a.meter(),
            (None, Some(s)) => s.meter(),
            (None, None) => unreachable!("an engine is central or a swarm"),
        }
    }

    /// ADACOMM's current period, under ADACOMM.
    pub fn period(&self) -> Option<u32> {
        self.adacomm.as_ref().map(Adacomm::period)
    }

    /// Updates held at the barrier now.
    pub fn held(&self) -> &[Held] {
        &self.held
    }

    /// Sets the barrier's `n`: the workers that train now.
    pub fn set_workers(&mut self, workers: u32) {
        if let Some(a) = &mut self.central {
            a.set_workers(workers);
        }
    }

    /// A worker joins (or comes back): under SwarmSGD it becomes a member, starting from
    /// `model` (or the mean model; a returning member keeps its own).
    pub fn join<R: Rng + ?Sized>(&mut self, worker: u32, model: Option<&[f32]>, rng: &mut R) {
        if let Some(s) = &mut self.swarm {
            s.join(worker, model, rng);
        }
    }

    /// A worker left: under SwarmSGD it leaves the graph (its model stays in the mean).
    pub fn leave<R: Rng + ?Sized>(&mut self, worker: u32, rng: &mut R) {
        if let Some(s) = &mut self.swarm {
            s.leave(worker, rng);
        }
    }

    /// A worker was removed: under SwarmSGD it leaves the graph and the mean.
    pub fn remove<R: Rng + ?Sized>(&mut self, worker: u32, rng: &mut R) {
        if let Some(s) = &mut self.swarm {
            s.remove(worker, rng);
        }
    }

    /// Under SwarmSGD, what `worker` gets back (its version and its own model encoded with
    /// `codec`, [`Swarm::reply`]); `None` under a central strategy, whose workers get the
    /// center.
    pub fn reply<R: Rng + ?Sized>(
        &mut self,
        worker: u32,
        codec: Codec,
        rng: &mut R,
    ) -> Option<(u64, Vec<u8>)> {
        self.swarm.as_mut()?.reply(worker, codec, rng)
    }

    /// Handles one decoded update that arrived at time `now_us` (microseconds on the
    /// shell's clock: ADACOMM's schedule reads it).
    pub fn on_update<R: Rng + ?Sized>(
        &mut self,
        u: Update<'_>,
        now_us: u64,
        rng: &mut R,
    ) -> Outcome {
        let current = self.version();
        let mut out = Outcome {
            verdict: Verdict::Held,
            tau: current.saturating_sub(u.base),
            view_distance: f32::NAN,
            worker_distance: f32::NAN,
            delta_norm: f32::NAN,
            version: None,
            updates: 0,
            peer: None,
            released: Vec::new(),
            period: None,
        };
        out.verdict = if self.swarm.is_some() {
            self.exchange(u, rng, &mut out)
        } else {
            self.central_update(u, now_us, &mut out)
        };
        out
    }

    /// SwarmSGD: the update is averaged with a random neighbour's model; always answered
    /// at once.
    fn exchange<R: Rng + ?Sized>(
        &mut self,
        u: Update<'_>,
        rng: &mut R,
        out: &mut Outcome,
    ) -> Verdict {
        out.delta_norm = norm(u.delta);
        let swarm = self.swarm.as_mut().expect("checked by the caller");
        match swarm.on_update(u.worker, u.base, u.delta, rng) {
            Err(r) => Verdict::Refused(r),
            Ok(x) => {
                out.tau = u64::from(x.tau);
                out.view_distance = x.view_distance;
                out.worker_distance = x.distance_to_mean;
                out.version = Some(x.version);
                out.updates = 1;
                out.peer = x.peer;
                Verdict::Answered(Answer {
                    worker: u.worker,
                    base: u.base,
                    tau: x.tau,
                    weight: x.weight(),
                    version: x.version,
                })
            }
        }
    }

    /// The distances of an update against the current center, from the version it is
    /// rebased on.
    fn measure(agg: &Aggregator, base: u64, delta: &[f32], out: &mut Outcome) {
        let center = agg.center().1;
        match agg.ring().get(base) {
            Ok(view) if view.len() == delta.len() => {
                (out.view_distance, out.worker_distance, out.delta_norm) =
                    push_distances(view, delta, center);
            }
            _ => out.delta_norm = norm(delta),
        }
    }

    fn central_update(&mut self, u: Update<'_>, now_us: u64, out: &mut Outcome) -> Verdict {
        let agg = self.central.as_mut().expect("checked by the caller");
        let current = agg.center().0;
        let tau = current.saturating_sub(u.base);
        // EASGD measures the distances as it applies the update: taken from it then.
        let easgd = matches!(self.strategy, Strategy::Easgd { .. });
        if !easgd {
            Self::measure(agg, u.base, u.delta, out);
        }
        let action = agg.on_update(u.worker, u.base, u.delta);
        match (easgd, agg.last_easgd()) {
            (false, _) => {}
            (true, Some(a)) => {
                (out.view_distance, out.worker_distance, out.delta_norm) =
                    (a.view_distance, a.worker_distance, a.delta_norm);
            }
            // Refused: the center did not move, so these are the distances it had.
            (true, None) => Self::measure(agg, u.base, u.delta, out),
        }
        let answer = |weight: f32, version: u64| Answer {
            worker: u.worker,
            base: u.base,
            tau: tau as u32,
            weight,
            version,
        };
        match action {
            Action::Refused(r) => Verdict::Refused(r),
            Action::Buffered { .. } => {
                Verdict::Answered(answer(update_weight(&self.strategy, tau, 1), current))
            }
            Action::Held { .. } => {
                self.held.push(Held {
                    worker: u.worker,
                    base: u.base,
                    tau: tau as u32,
                });
                self.round_losses.push(u.loss);
                Verdict::Held
            }
            Action::Applied {
                version, updates, ..
            } => {
                out.version = Some(version);
                out.updates = updates;
                let weight = update_weight(&self.strategy, tau, updates);
                if self.strategy.is_synchronous() {
                    self.round_losses.push(u.loss);
                    out.released = std::mem::take(&mut self.held)
                        .into_iter()
                        .map(|h| Answer {
                            worker: h.worker,
                            base: h.base,
                            tau: h.tau,
                            weight,
                            version,
                        })
                        .collect();
                    out.period = self.round_closed(now_us);
                }
                Verdict::Answered(answer(weight, version))
            }
        }
    }

    /// A barrier round closed at `now_us`: ADACOMM sets its next period from the mean of the
    /// round's finite losses; returns it when it changed.
    fn round_closed(&mut self, now_us: u64) -> Option<u32> {
        let losses = std::mem::take(&mut self.round_losses);
        let a = self.adacomm.as_mut()?;
        let finite: Vec<f64> = losses
            .iter()
            .filter(|l| l.is_finite())
            .map(|&l| f64::from(l))
            .collect();
        if finite.is_empty() {
            return None;
        }
        let mean = finite.iter().sum::<f64>() / finite.len() as f64;
        let before = a.period();
        let k = a.on_round(now_us, mean);
        (k != before).then_some(k)
    }

    /// Abandons the barrier round in progress (a worker left or paused, the strategy
    /// changed): returns the held updates, to be answered with a refusal, and the center's
    /// ring keeps only the newest version.
    pub fn release_held(&mut self) -> Vec<Held> {
        self.round_losses.clear();
        if !self.held.is_empty()
            && let Some(a) = &mut self.central
        {
            let (v, c) = a.center();
            let c = c.clone();
            a.reset(v, c);
        }
        std::mem::take(&mut self.held)
    }

    /// Changes the strategy (the caller answers the held updates with
    /// [`Engine::release_held`]; buffered ones are dropped). Into SwarmSGD, every worker of
    /// `members` starts from the current center at its version, so its next update is
    /// accepted; out of it, the mean model becomes the next center version (returned), so
    /// every update in flight is refused once and its worker starts from the mean. ADACOMM
    /// starts again from `k0`.
    pub fn switch<R: Rng + ?Sized>(
        &mut self,
        strategy: Strategy,
        members: impl IntoIterator<Item = u32>,
        rng: &mut R,
    ) -> Result<Option<u64>, StrategyError> {
        strategy.validate(u32::MAX)?;
        let mut made = None;
        match (&strategy, &mut self.swarm) {
            (Strategy::Swarm { topology, .. }, Some(s)) => s.set_topology(*topology, rng),
            (Strategy::Swarm { topology, .. }, None) => {
                let (version, center) = self.center();
                let center = center.clone();
                let mut s = Swarm::new(*topology, version, center.clone(), self.max_norm);
                for w in members {
                    s.join(w, Some(&center), rng);
                }
                self.swarm = Some(s);
                self.central = None;
            }
            (_, Some(s)) => {
                let (version, mean) = (s.version() + 1, s.mean().clone());
                let mut a =
                    Aggregator::new(strategy.clone(), u32::MAX, version, mean, self.max_norm)?;
                a.set_workers(1);
                self.central = Some(a);
                self.swarm = None;
                made = Some(version);
            }
            (_, None) => {
                self.central
                    .as_mut()
                    .expect("an engine is central or a swarm")
                    .set_strategy(strategy.clone())?;
            }
        }
        self.adacomm = Adacomm::of(&strategy);
        self.round_losses.clear();
        self.strategy = strategy;
        Ok(made)
    }

    /// Starts over from `center` under the next version, alone in a fresh ring (under
    /// SwarmSGD every member's model becomes `center`), so every update in flight is refused
    /// and its worker resynchronises; held updates are dropped. Returns the new version.
    pub fn reset(&mut self, center: Arc<[f32]>) -> u64 {
        match (&mut self.central, &mut self.swarm) {
            (Some(a), _) => {
                let version = a.center().0 + 1;
                a.reset(version, center);
            }
            (None, Some(s)) => s.reset(&center),
            (None, None) => unreachable!("an engine is central or a swarm"),
        }
        self.held.clear();
        self.round_losses.clear();
        self.version()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Staleness;
    use crate::strategy::{Strategy, Topology};
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    const N: usize = 4;

    fn engine(strategy: Strategy, workers: u32) -> Engine {
        Engine::new(strategy, workers, 0, vec![0.0; N].into(), 1e6).unwrap()
    }

    fn update(worker: u32, base: u64, delta: &[f32], loss: f32) -> Update<'_> {
        Update {
            worker,
            base,
            delta,
            loss,
        }
    }

    #[test]
    fn a_barrier_round_answers_every_held_update_with_the_weight_it_got() {
        // fedavg:3 with 2 workers: the round closes with 2 updates, each weighted 1/2, and the
        // held update's answer says 1/2 as the closing one's does.
        let mut e = engine(
            Strategy::Fedavg {
                k: 1,
                m_of_n: Some(3),
            },
            3,
        );
        e.set_workers(2);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let d = [1.0; N];
        let first = e.on_update(update(0, 0, &d, 1.0), 0, &mut rng);
        assert_eq!(first.verdict, Verdict::Held);
        let second = e.on_update(update(1, 0, &d, 1.0), 0, &mut rng);
        let Verdict::Answered(a) = second.verdict else {
            panic!("the round closes");
        };
        assert_eq!((a.weight, a.version, second.updates), (0.5, 1, 2));
        assert_eq!(second.released.len(), 1);
        assert_eq!(second.released[0].weight, 0.5);
        assert_eq!(second.released[0].worker, 0);
    }

    #[test]
    fn adacomm_skips_a_nan_loss_in_the_round_mean() {
        let mut e = engine(
            Strategy::Adacomm {
                k0: 8,
                k_min: 1,
                interval_s: 1e-6,
            },
            2,
        );
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let d = [0.1; N];
        // Round 1 sets F0 = 2 (the NaN is skipped, not averaged into NaN).
        e.on_update(update(0, 0, &d, f32::NAN), 0, &mut rng);
        e.on_update(update(1, 0, &d, 2.0), 10, &mut rng);
        // Round 2 at loss 0.5: ceil(sqrt(0.5 / 2) * 8) = 4.
        e.on_update(update(0, 1, &d, 0.5), 20, &mut rng);
        let o = e.on_update(update(1, 1, &d, f32::NAN), 30, &mut rng);
        assert_eq!((o.period, e.period()), (Some(4), Some(4)));
    }

    #[test]
    fn switching_into_and_out_of_swarm_keeps_versions_going_up() {
        let mut e = engine(
            Strategy::Easgd {
                alpha: 0.5,
                staleness: Staleness::Constant,
                tau_max: 4,
            },
            2,
        );
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let d = [2.0; N];
        e.on_update(update(0, 0, &d, 1.0), 0, &mut rng);
        assert_eq!(e.version(), 1);
        let swarm = Strategy::Swarm {
            topology: Topology::Complete,
            quantize: None,
        };
        assert_eq!(e.switch(swarm, [0, 1], &mut rng).unwrap(), None);
        let o = e.on_update(update(0, 1, &d, 1.0), 0, &mut rng);
        assert_eq!((o.peer, o.version), (Some(1), Some(2)));
        assert!(matches!(o.verdict, Verdict::Answered(a) if a.weight == 0.5));
        let back = Strategy::AsyncSgd {
            staleness: Staleness::Constant,
            tau_max: 4,
        };
        assert_eq!(e.switch(back, [], &mut rng).unwrap(), Some(3));
        assert_eq!(e.version(), 3);
        assert_eq!(e.reset(vec![0.0; N].into()), 4);
    }

    proptest! {
        /// Every answer's weight is the strategy's weight of its update, and a refusal never
        /// moves the center.
        #[test]
        fn answers_carry_the_strategy_weight_and_refusals_leave_the_center(
            which in 0usize..5,
            pushes in prop::collection::vec((0u32..3, 0u64..4, -1.0f32..1.0), 1..30),
        ) {
            let strategy = [
                Strategy::Easgd { alpha: 0.5, staleness: Staleness::Inverse, tau_max: 2 },
                Strategy::AsyncSgd { staleness: Staleness::Polynomial { a: 0.5 }, tau_max: 2 },
                Strategy::Bounded { s: 1, b: None },
                Strategy::Fedbuff { m: 2, staleness: Staleness::Inverse, tau_max: 2 },
                Strategy::Fedavg { k: 1, m_of_n: None },
            ][which].clone();
            let mut e = engine(strategy.clone(), 3);
            let mut rng = ChaCha8Rng::seed_from_u64(7);
            for (w, back, x) in pushes {
                let (v, before) = { let (v, c) = e.center(); (v, c.to_vec()) };
                let d = [x; N];
                let o = e.on_update(update(w, v.saturating_sub(back), &d, 1.0), 0, &mut rng);
                match &o.verdict {
                    Verdict::Refused(_) => {
                        prop_assert_eq!(e.version(), v);
                        prop_assert_eq!(&e.center().1[..], &before[..]);
                    }
                    Verdict::Answered(a) => {
                        let m = if strategy.is_synchronous() { o.updates } else { 1 };
                        prop_assert_eq!(a.weight, update_weight(&strategy, u64::from(a.tau), m));
                        for r in &o.released {
                            prop_assert_eq!(r.weight, a.weight);
                        }
                    }
                    Verdict::Held => prop_assert!(o.version.is_none()),
                }
            }
        }

        /// The one-pass distances are the protocol's, to the bit.
        #[test]
        fn push_distances_equal_rebase_then_distance_and_norm(
            v in prop::collection::vec(-10.0f32..10.0, 1..300),
            seed in any::<u64>(),
        ) {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let d: Vec<f32> = v.iter().map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let c: Vec<f32> = v.iter().map(|_| rng.random_range(-10.0f32..10.0)).collect();
            let x: Vec<f32> = v.iter().zip(&d).map(|(a, b)| a + b).collect();
            let want = (
                crate::aggregate::distance(&v, &c).to_bits(),
                crate::aggregate::distance(&x, &c).to_bits(),
                norm(&d).to_bits(),
            );
            let (a, b, n) = push_distances(&v, &d, &c);
            prop_assert_eq!((a.to_bits(), b.to_bits(), n.to_bits()), want);
        }
    }
}
