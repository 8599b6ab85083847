//! Asynchronous elastic averaging with staleness accounting, as pure functions.
//!
//! The relay, the native bots and the simulator all merge models with this module; there is
//! no second copy of these rules anywhere. The rules (asynchronous EASGD, Zhang, Choromanska
//! and LeCun, NeurIPS 2015; staleness functions as in FedAsync, Xie et al. 2019):
//!
//! - A worker trains `K` local steps from the center version `v` it last received, then
//!   sends `x_i - center(v)`, compressed. The relay rebuilds `x_i = center(v) + delta` from
//!   its [`CenterRing`] of recent versions.
//! - Staleness `tau = current version - v`. A push with `tau > tau_max` is refused and the
//!   worker resynchronises. Otherwise it is weighted by `alpha_eff = alpha * s(tau)`, with
//!   `s` one of the [`Staleness`] functions.
//! - The relay applies the elastic step against its *current* center,
//!   `x~ <- x~ + alpha_eff (x_i - x~)` ([`easgd_apply`]), and answers with the new center,
//!   toward which the worker pulls, `x_i <- x_i - alpha (x_i - x~)` ([`easgd_pull`]).
//!
//! [`apply_push`] does a whole push on the relay's side and returns what the staleness
//! ledger records, including the elastic-consistency distances ([`distance`]).

use std::collections::VecDeque;
use std::sync::Arc;

use crate::codes::code;

/// How much a stale push still counts: `s(tau)`, in `[0, 1]` and non-increasing in `tau`.
/// In configuration files (serde) a table tagged by `kind`: `{ kind = "hinge", a = 1, b = 4 }`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Staleness {
    /// `s(tau) = 1`: staleness is ignored (up to the cut-off).
    Constant,
    /// `s(tau) = 1 / (1 + tau)`.
    Inverse,
    /// `s(tau) = (1 + tau)^(-a)`, `a >= 0`.
    Polynomial { a: f32 },
    /// `s(tau) = 1` for `tau <= b`, else `1 / (a (tau - b) + 1)`, `a >= 0`.
    Hinge { a: f32, b: u32 },
}

impl Staleness {
    /// `s(tau)`. Always in `[0, 1]` and non-increasing in `tau`; a negative or NaN `a`
    /// (which [`Staleness::validate`] refuses) is treated as 0.
    pub fn weight(&self, tau: u64) -> f32 {
        let tau = tau as f64;
        let w = match *self {
            Staleness::Constant => 1.0,
            Staleness::Inverse => 1.0 / (1.0 + tau),
            Staleness::Polynomial { a } => {
                let a = f64::from(a.max(0.0));
                if tau == 0.0 || a == 0.0 {
                    1.0
                } else {
                    (-a * tau.ln_1p()).exp()
                }
            }
            Staleness::Hinge { a, b } => {
                let b = f64::from(b);
                if tau <= b {
                    1.0
                } else {
                    1.0 / (f64::from(a.max(0.0)) * (tau - b) + 1.0)
                }
            }
        };
        (w as f32).clamp(0.0, 1.0)
    }

    /// Checks the parameters: `a` finite and non-negative.
    pub fn validate(&self) -> Result<(), &'static str> {
        match *self {
            Staleness::Polynomial { a } | Staleness::Hinge { a, .. }
                if !(a.is_finite() && a >= 0.0) =>
            {
                Err("staleness exponent or slope must be finite and >= 0")
            }
            _ => Ok(()),
        }
    }
}

/// `alpha * s(tau)`: the weight a push with staleness `tau` gets in [`easgd_apply`].
pub fn alpha_eff(alpha: f32, staleness: Staleness, tau: u64) -> f32 {
    alpha * staleness.weight(tau)
}

/// The relay's elastic step: `center <- center + alpha_eff (worker - center)`, computed as
/// `(1 - alpha_eff) center + alpha_eff worker` so that `alpha_eff = 1` gives exactly the
/// worker and `alpha_eff = 0` leaves the center exactly as it was.
///
/// # Panics
/// If the slices differ in length (validate pushes first: [`validate_push`]).
pub fn easgd_apply(center: &mut [f32], worker: &[f32], alpha_eff: f32) {
    assert_eq!(center.len(), worker.len(), "center and worker lengths");
    for (c, w) in center.iter_mut().zip(worker) {
        *c = (1.0 - alpha_eff) * *c + alpha_eff * *w;
    }
}

/// The worker's elastic step: `worker <- worker - alpha (worker - center)`, computed as
/// `(1 - alpha) worker + alpha center`. With the center from before [`easgd_apply`] and the
/// same `alpha`, the two steps together keep `center + worker` unchanged: EASGD's symmetric
/// exchange.
///
/// # Panics
/// If the slices differ in length.
pub fn easgd_pull(worker: &mut [f32], center: &[f32], alpha: f32) {
    assert_eq!(center.len(), worker.len(), "center and worker lengths");
    for (w, c) in worker.iter_mut().zip(center) {
        *w = (1.0 - alpha) * *w + alpha * *c;
    }
}

/// The Euclidean norm, accumulated in `f64`.
pub fn norm(v: &[f32]) -> f32 {
    v.iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt() as f32
}

/// `||a - b||`, accumulated in `f64`: for instance `||x_i - x~||`, how far a worker is from
/// the current center, or `||center(v) - x~||`, how far the center moved while the worker
/// computed on version `v` (the elastic-consistency distance between its view and the model
/// its update is applied to). Compares the common prefix if the lengths differ.
pub fn distance(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = f64::from(x) - f64::from(y);
            d * d
        })
        .sum::<f64>()
        .sqrt() as f32
}

/// Why a push was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Reason {
    /// The update's length is not the model's.
    #[error("update has {found} values, the model {expected}")]
    WrongLength { expected: usize, found: usize },
    /// The update holds a NaN or an infinity (the first at `index`).
    #[error("update value {index} is not finite")]
    NonFinite { index: usize },
    /// `||delta||` is above the room's limit.
    #[error("update norm {norm} exceeds {max}")]
    NormTooLarge { norm: f32, max: f32 },
    /// `tau > tau_max`.
    #[error("staleness {tau} exceeds tau_max {tau_max}")]
    TooStale { tau: u64, tau_max: u32 },
    /// The base version is older than any the ring still holds: the worker must resync.
    #[error("base version {base} evicted (oldest kept {oldest})")]
    Evicted { base: u64, oldest: u64 },
    /// The base version is newer than the newest center: the worker must resync.
    #[error("base version {base} is newer than the center {current}")]
    FutureBase { base: u64, current: u64 },
}

impl Reason {
    /// The error code for this reason ([`crate::codes::code`]).
    pub fn code(&self) -> u16 {
        match self {
            Reason::WrongLength { .. } => code::WRONG_LENGTH,
            Reason::NonFinite { .. } => code::NON_FINITE,
            Reason::NormTooLarge { .. } => code::NORM_TOO_LARGE,
            Reason::TooStale { .. } => code::TOO_STALE,
            Reason::Evicted { .. } | Reason::FutureBase { .. } => code::RESYNC,
        }
    }

    /// Whether the worker must replace its model with the current center before pushing
    /// again (too stale, or a base version the relay cannot rebase from).
    pub fn needs_resync(&self) -> bool {
        matches!(
            self,
            Reason::TooStale { .. } | Reason::Evicted { .. } | Reason::FutureBase { .. }
        )
    }
}

/// The outcome of [`validate_push`].
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Apply with weight `alpha_eff`; `tau <= tau_max`.
    Accept { tau: u32, alpha_eff: f32 },
    /// Leave the center untouched.
    Refuse(Reason),
}

/// A room's rules for accepting pushes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    /// The elastic coefficient `alpha`, in `[0, 1]`.
    pub alpha: f32,
    pub staleness: Staleness,
    /// Pushes with `tau > tau_max` are refused.
    pub tau_max: u32,
    /// Pushes with `||delta|| > max_norm` are refused.
    pub max_norm: f32,
}

/// Decides whether a push whose delta is `delta`, computed from center version `base`,
/// may be applied when the current version is `current` and the model has `expected_len`
/// values. Checks in order: base not in the future, `tau <= tau_max`, length, every value
/// finite, `||delta|| <= max_norm`.
pub fn validate_push(
    policy: &Policy,
    current: u64,
    base: u64,
    delta: &[f32],
    expected_len: usize,
) -> Decision {
    let Some(tau) = current.checked_sub(base) else {
        return Decision::Refuse(Reason::FutureBase { base, current });
    };
    if tau > u64::from(policy.tau_max) {
        return Decision::Refuse(Reason::TooStale {
            tau,
            tau_max: policy.tau_max,
        });
    }
    if delta.len() != expected_len {
        return Decision::Refuse(Reason::WrongLength {
            expected: expected_len,
            found: delta.len(),
        });
    }
    if let Some(index) = delta.iter().position(|v| !v.is_finite()) {
        return Decision::Refuse(Reason::NonFinite { index });
    }
    let n = norm(delta);
    if n > policy.max_norm || policy.max_norm.is_nan() {
        return Decision::Refuse(Reason::NormTooLarge {
            norm: n,
            max: policy.max_norm,
        });
    }
    Decision::Accept {
        tau: tau as u32,
        alpha_eff: alpha_eff(policy.alpha, policy.staleness, tau),
    }
}

/// The last few center versions, oldest first, so that a push made against an older
/// version can be rebased: `x_i = center(v) + delta`.
///
/// Choose a capacity above `tau_max`, or pushes the staleness rule would accept come back
/// [`Reason::Evicted`].
#[derive(Clone, Debug)]
pub struct CenterRing {
    capacity: usize,
    entries: VecDeque<(u64, Arc<[f32]>)>,
    /// The last evicted center when nothing else held it: [`apply_push`] writes the next
    /// version into it instead of allocating (and faulting in) a fresh model-sized buffer.
    spare: Option<Arc<[f32]>>,
}

impl CenterRing {
    /// A ring holding at most `capacity` versions (at least 1), starting with `center` as
    /// `version`.
    pub fn new(capacity: usize, version: u64, center: Arc<[f32]>) -> CenterRing {
        // Grown as versions arrive: a large capacity costs nothing until it is used.
        let mut entries = VecDeque::with_capacity(capacity.clamp(1, 64));
        entries.push_back((version, center));
        CenterRing {
            capacity: capacity.max(1),
            entries,
            spare: None,
        }
    }

    /// Adds a newer version, evicting the oldest when full.
    ///
    /// # Panics
    /// If `version` is not greater than the newest version.
    pub fn push(&mut self, version: u64, center: Arc<[f32]>) {
        assert!(
            version > self.newest().0,
            "center versions must increase: {version} after {}",
            self.newest().0
        );
        if self.entries.len() == self.capacity
            && let Some((_, mut old)) = self.entries.pop_front()
            && Arc::get_mut(&mut old).is_some()
        {
            self.spare = Some(old);
        }
        self.entries.push_back((version, center));
    }

    /// A buffer of `len` values that only the caller holds, to write a new version into:
    /// the last evicted center when it has that length (its old values are still there),
    /// else a new zeroed one.
    pub fn take_buffer(&mut self, len: usize) -> Arc<[f32]> {
        match self.spare.take() {
            Some(b) if b.len() == len && Arc::strong_count(&b) == 1 && Arc::weak_count(&b) == 0 => {
                b
            }
            _ => std::iter::repeat_n(0.0, len).collect(),
        }
    }

    /// Hands back a buffer from [`CenterRing::take_buffer`] that was not used.
    pub fn give_back(&mut self, buffer: Arc<[f32]>) {
        self.spare = Some(buffer);
    }

    /// The newest version and its center: the current center.
    pub fn newest(&self) -> (u64, &Arc<[f32]>) {
        let (v, c) = self.entries.back().expect("a ring is never empty");
        (*v, c)
    }

    /// The oldest version still held.
    pub fn oldest(&self) -> u64 {
        self.entries.front().expect("a ring is never empty").0
    }

    /// How many versions are held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Always false: a ring holds at least its newest version.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The center of `version`, or why it is not there.
    pub fn get(&self, version: u64) -> Result<&Arc<[f32]>, Reason> {
        let (newest, _) = self.newest();
        if version > newest {
            return Err(Reason::FutureBase {
                base: version,
                current: newest,
            });
        }
        let oldest = self.oldest();
        if version < oldest {
            return Err(Reason::Evicted {
                base: version,
                oldest,
            });
        }
        // Versions increase but need not be consecutive: search.
        match self.entries.binary_search_by_key(&version, |(v, _)| *v) {
            Ok(i) => Ok(&self.entries[i].1),
            Err(_) => Err(Reason::Evicted {
                base: version,
                oldest,
            }),
        }
    }

    /// `center(base) + delta`: the worker's model.
    pub fn rebase(&self, base: u64, delta: &[f32]) -> Result<Vec<f32>, Reason> {
        let c = self.get(base)?;
        if c.len() != delta.len() {
            return Err(Reason::WrongLength {
                expected: c.len(),
                found: delta.len(),
            });
        }
        Ok(c.iter().zip(delta).map(|(c, d)| c + d).collect())
    }
}

/// What one applied push did: the figures the staleness ledger records.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Applied {
    /// Staleness: the version the push was applied to minus its base version.
    pub tau: u32,
    pub alpha_eff: f32,
    /// The new center's version.
    pub version: u64,
    /// `||delta||`, the size of the update as sent.
    pub delta_norm: f32,
    /// `||x_i - x~||` against the center the push was applied to.
    pub worker_distance: f32,
    /// `||center(base) - x~||`: how far the center moved between the worker's view and the
    /// model its update was applied to (the elastic-consistency distance).
    pub view_distance: f32,
}

/// A whole push on the relay's side: validates it ([`validate_push`]), rebases the delta
/// on its base version, applies the elastic step to the newest center and adds the result
/// to the ring as the next version. On refusal the ring is untouched.
pub fn apply_push(
    ring: &mut CenterRing,
    policy: &Policy,
    base: u64,
    delta: &[f32],
) -> Result<Applied, Reason> {
    // The center's length, not the delta's: a wrong-length delta allocates nothing.
    let mut buffer = ring.take_buffer(ring.newest().1.len());
    let (current, center) = ring.newest();
    let fused = match (ring.get(base), Arc::get_mut(&mut buffer)) {
        (Ok(view), Some(out)) if view.len() == delta.len() && center.len() == delta.len() => {
            fused_apply(view, delta, center, policy, current, base, out)
        }
        _ => None,
    };
    // Anything unusual (a refusal, an evicted base) takes the plain steps, which give the
    // same answer and say why.
    let Some(applied) = fused else {
        ring.give_back(buffer);
        let (current, center) = ring.newest();
        let (tau, alpha_eff) = match validate_push(policy, current, base, delta, center.len()) {
            Decision::Accept { tau, alpha_eff } => (tau, alpha_eff),
            Decision::Refuse(reason) => return Err(reason),
        };
        let worker = ring.rebase(base, delta)?;
        let view = ring.get(base)?;
        let view_distance = distance(view, center);
        let worker_distance = distance(&worker, center);
        let mut next = center.to_vec();
        easgd_apply(&mut next, &worker, alpha_eff);
        let version = current + 1;
        ring.push(version, next.into());
        return Ok(Applied {
            tau,
            alpha_eff,
            version,
            delta_norm: norm(delta),
            worker_distance,
            view_distance,
        });
    };
    ring.push(applied.version, buffer);
    Ok(applied)
}

/// [`validate_push`], `rebase`, [`distance`] twice, [`easgd_apply`] and [`norm`] as one
/// pass over the model, writing the new center into `out` (a buffer the ring recycles):
/// the same operations in the same order (so the same bits), with the four sums
/// overlapping in the CPU and neither the worker's model nor the center copied on the way.
/// The sums are locals of a plain loop so that they stay in registers (captured by a
/// closure they went through memory on every element, which doubled the loop's time).
/// `None` when the push is refused (`out` then holds garbage): the caller's plain steps
/// then say why.
fn fused_apply(
    view: &[f32],
    delta: &[f32],
    center: &[f32],
    policy: &Policy,
    current: u64,
    base: u64,
    out: &mut [f32],
) -> Option<Applied> {
    let tau = current.checked_sub(base)?;
    if tau > u64::from(policy.tau_max) {
        return None;
    }
    let alpha_eff = alpha_eff(policy.alpha, policy.staleness, tau);
    let (mut dv, mut dw, mut dd) = (0.0f64, 0.0f64, 0.0f64);
    // In blocks: the elastic step and the squares, independent per value, vectorize; only
    // the three running sums stay sequential, each adding the same squares in the same
    // order as the plain steps.
    const BLOCK: usize = 64;
    let (mut sa, mut sb, mut sd) = ([0f64; BLOCK], [0f64; BLOCK], [0f64; BLOCK]);
    let blocks = out
        .chunks_mut(BLOCK)
        .zip(view.chunks(BLOCK))
        .zip(delta.chunks(BLOCK))
        .zip(center.chunks(BLOCK));
    for (((o, v), d), c) in blocks {
        let squares = sa.iter_mut().zip(sb.iter_mut()).zip(sd.iter_mut());
        for ((((o, &v), &d), &c), ((qa, qb), qd)) in o.iter_mut().zip(v).zip(d).zip(c).zip(squares)
        {
            let w = v + d;
            let a = f64::from(v) - f64::from(c);
            let b = f64::from(w) - f64::from(c);
            (*qa, *qb, *qd) = (a * a, b * b, f64::from(d) * f64::from(d));
            *o = (1.0 - alpha_eff) * c + alpha_eff * w;
        }
        let m = o.len();
        for ((&qa, &qb), &qd) in sa[..m].iter().zip(&sb[..m]).zip(&sd[..m]) {
            dv += qa;
            dw += qb;
            dd += qd;
        }
    }
    // A sum of squares of finite f32 values cannot overflow f64: a non-finite norm means a
    // non-finite value, which `validate_push` refuses.
    let n = dd.sqrt() as f32;
    if !dd.is_finite() || n > policy.max_norm || policy.max_norm.is_nan() {
        return None;
    }
    Some(Applied {
        tau: tau as u32,
        alpha_eff,
        version: current + 1,
        delta_norm: n,
        worker_distance: dw.sqrt() as f32,
        view_distance: dv.sqrt() as f32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_staleness() -> impl Strategy<Value = Staleness> {
        prop_oneof![
            Just(Staleness::Constant),
            Just(Staleness::Inverse),
            prop_oneof![0.0f32..10.0, Just(0.0), Just(f32::MAX), Just(1e-30)]
                .prop_map(|a| Staleness::Polynomial { a }),
            (
                prop_oneof![0.0f32..10.0, Just(0.0), Just(f32::MAX)],
                any::<u32>()
            )
                .prop_map(|(a, b)| Staleness::Hinge { a, b }),
        ]
    }

    fn vector(n: usize) -> impl Strategy<Value = Vec<f32>> {
        prop::collection::vec(-10.0f32..10.0, n)
    }

    fn policy() -> Policy {
        Policy {
            alpha: 0.5,
            staleness: Staleness::Inverse,
            tau_max: 4,
            max_norm: 1e3,
        }
    }

    proptest! {
        #[test]
        fn staleness_weights_are_in_unit_interval_and_non_increasing(
            s in any_staleness(), tau in any::<u64>(), step in 0u64..1000
        ) {
            let w = s.weight(tau);
            let later = s.weight(tau.saturating_add(step));
            prop_assert!((0.0..=1.0).contains(&w));
            prop_assert!((0.0..=1.0).contains(&later));
            prop_assert!(later <= w);
            prop_assert_eq!(s.weight(0), 1.0);
        }

        #[test]
        fn staleness_weights_are_sane_even_for_invalid_parameters(
            a in any::<f32>(), b in any::<u32>(), tau in any::<u64>()
        ) {
            for s in [Staleness::Polynomial { a }, Staleness::Hinge { a, b }] {
                let w = s.weight(tau);
                prop_assert!((0.0..=1.0).contains(&w));
                prop_assert!(s.weight(tau.saturating_add(1)) <= w);
            }
        }

        /// The one-pass `apply_push` gives the bits of the steps it fuses: rebase,
        /// `distance` twice, `easgd_apply`.
        #[test]
        fn apply_push_equals_rebase_distance_and_easgd_apply_to_the_bit(
            (v0, v1, d) in (1usize..300).prop_flat_map(|n| (vector(n), vector(n), vector(n))),
            alpha in 0.0f32..=1.0,
        ) {
            let mut ring = CenterRing::new(4, 0, v0.clone().into());
            ring.push(1, v1.clone().into());
            let p = Policy { alpha, staleness: Staleness::Constant, tau_max: 4, max_norm: 1e9 };
            let worker = ring.rebase(0, &d).unwrap();
            let mut want = v1.clone();
            easgd_apply(&mut want, &worker, alpha);
            let a = apply_push(&mut ring, &p, 0, &d).unwrap();
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(ring.newest().1), bits(&want));
            prop_assert_eq!(a.view_distance.to_bits(), distance(&v0, &v1).to_bits());
            prop_assert_eq!(a.worker_distance.to_bits(), distance(&worker, &v1).to_bits());
            prop_assert_eq!(a.delta_norm.to_bits(), norm(&d).to_bits());
        }

        /// Pushes through a small ring, so that evicted centers are recycled as the next
        /// version's buffer: every version has the bits of the plain steps on an unrecycled
        /// copy of the ring, and the versions still held are what was stored.
        #[test]
        fn recycled_ring_buffers_give_the_bits_of_the_plain_steps(
            (v0, deltas) in (1usize..200).prop_flat_map(|n| {
                (vector(n), prop::collection::vec((vector(n), 0u64..3), 1..12))
            }),
            alpha in 0.0f32..=1.0,
        ) {
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            let p = Policy { alpha, staleness: Staleness::Inverse, tau_max: 4, max_norm: 1e9 };
            let mut ring = CenterRing::new(3, 0, v0.clone().into());
            let mut history = vec![v0.clone()];
            for (d, behind) in deltas {
                let current = ring.newest().0;
                let base = current.saturating_sub(behind.min(ring.len() as u64 - 1));
                let view = history[base as usize].clone();
                let center = history[current as usize].clone();
                let worker: Vec<f32> = view.iter().zip(&d).map(|(c, d)| c + d).collect();
                let a = apply_push(&mut ring, &p, base, &d).unwrap();
                let mut want = center.clone();
                easgd_apply(&mut want, &worker, a.alpha_eff);
                prop_assert_eq!(bits(ring.newest().1), bits(&want));
                prop_assert_eq!(a.view_distance.to_bits(), distance(&view, &center).to_bits());
                prop_assert_eq!(a.worker_distance.to_bits(), distance(&worker, &center).to_bits());
                prop_assert_eq!(a.delta_norm.to_bits(), norm(&d).to_bits());
                history.push(want);
                for v in ring.oldest()..=ring.newest().0 {
                    prop_assert_eq!(bits(ring.get(v).unwrap()), bits(&history[v as usize]));
                }
            }
        }

        #[test]
        fn apply_with_alpha_one_gives_the_worker_and_zero_keeps_the_center(
            (c, w) in (1usize..50).prop_flat_map(|n| (vector(n), vector(n)))
        ) {
            let mut one = c.clone();
            easgd_apply(&mut one, &w, 1.0);
            prop_assert_eq!(&one, &w);
            let mut zero = c.clone();
            easgd_apply(&mut zero, &w, 0.0);
            prop_assert_eq!(&zero, &c);
        }

        #[test]
        fn apply_then_pull_preserves_the_sum(
            (c, w) in (1usize..50).prop_flat_map(|n| (vector(n), vector(n))),
            alpha in 0.0f32..=1.0
        ) {
            let mut center = c.clone();
            let mut worker = w.clone();
            easgd_apply(&mut center, &w, alpha);
            easgd_pull(&mut worker, &c, alpha);
            for j in 0..c.len() {
                let before = c[j] + w[j];
                let after = center[j] + worker[j];
                prop_assert!((before - after).abs() <= 1e-5 * (1.0 + c[j].abs() + w[j].abs()));
            }
        }

        #[test]
        fn ring_returns_exactly_what_was_stored_and_refuses_evicted_versions(
            capacity in 1usize..8, count in 1usize..20, gaps in prop::collection::vec(1u64..4, 20)
        ) {
            let stored: Vec<(u64, Arc<[f32]>)> = (0..count)
                .scan(0u64, |v, i| { *v += gaps[i]; Some((*v, vec![*v as f32, i as f32].into())) })
                .collect();
            let mut ring = CenterRing::new(capacity, 0, vec![0.0, 0.0].into());
            for (v, c) in &stored {
                ring.push(*v, c.clone());
            }
            let all: Vec<(u64, Arc<[f32]>)> =
                std::iter::once((0, Arc::from(vec![0.0f32, 0.0]))).chain(stored).collect();
            let kept = &all[all.len().saturating_sub(capacity)..];
            prop_assert_eq!(ring.len(), kept.len());
            for (v, c) in &all {
                match ring.get(*v) {
                    Ok(got) => {
                        prop_assert!(kept.iter().any(|(k, _)| k == v));
                        prop_assert_eq!(got, c);
                    }
                    Err(Reason::Evicted { .. }) => prop_assert!(kept.iter().all(|(k, _)| k != v)),
                    Err(other) => prop_assert!(false, "unexpected {:?}", other),
                }
            }
            let newest = ring.newest().0;
            prop_assert!(
                matches!(ring.get(newest + 1), Err(Reason::FutureBase { .. })),
                "a version after the newest is refused"
            );
        }

        #[test]
        fn pushes_beyond_tau_max_are_always_refused(
            tau_max in 0u32..100, extra in 1u64..1000, base in 0u64..1000, s in any_staleness()
        ) {
            let p = Policy { tau_max, staleness: s, ..policy() };
            let current = base + u64::from(tau_max) + extra;
            let refused = matches!(
                validate_push(&p, current, base, &[0.0; 3], 3),
                Decision::Refuse(Reason::TooStale { .. })
            );
            prop_assert!(refused);
        }

        #[test]
        fn pushes_with_non_finite_values_are_always_refused(
            delta in vector(10), at in 0usize..10,
            bad in prop_oneof![Just(f32::NAN), Just(f32::INFINITY), Just(f32::NEG_INFINITY)]
        ) {
            let mut delta = delta;
            delta[at] = bad;
            let p = Policy { max_norm: f32::INFINITY, ..policy() };
            prop_assert_eq!(
                validate_push(&p, 3, 3, &delta, 10),
                Decision::Refuse(Reason::NonFinite { index: delta.iter().position(|v| !v.is_finite()).unwrap() })
            );
        }

        #[test]
        fn accepted_pushes_weigh_alpha_by_staleness(tau in 0u32..5, s in any_staleness()) {
            let p = Policy { staleness: s, ..policy() };
            prop_assert_eq!(
                validate_push(&p, 10 + u64::from(tau), 10, &[1.0; 4], 4),
                Decision::Accept { tau, alpha_eff: p.alpha * s.weight(u64::from(tau)) }
            );
        }
    }

    #[test]
    fn named_staleness_functions_match_their_formulas() {
        assert_eq!(Staleness::Inverse.weight(3), 0.25);
        assert_eq!(Staleness::Constant.weight(1_000), 1.0);
        assert!((Staleness::Polynomial { a: 0.5 }.weight(3) - 0.5).abs() < 1e-7);
        let hinge = Staleness::Hinge { a: 2.0, b: 4 };
        assert_eq!(hinge.weight(4), 1.0);
        assert!((hinge.weight(6) - 0.2).abs() < 1e-7);
        assert!(Staleness::Polynomial { a: -1.0 }.validate().is_err());
        assert!(Staleness::Hinge { a: f32::NAN, b: 0 }.validate().is_err());
        assert!(Staleness::Hinge { a: 1.0, b: 0 }.validate().is_ok());
    }

    #[test]
    fn wrong_length_and_large_norm_are_refused() {
        let p = policy();
        assert_eq!(
            validate_push(&p, 0, 0, &[0.0; 3], 4),
            Decision::Refuse(Reason::WrongLength {
                expected: 4,
                found: 3
            })
        );
        assert!(matches!(
            validate_push(&p, 0, 0, &[1e3, 1e3], 2),
            Decision::Refuse(Reason::NormTooLarge { .. })
        ));
        assert!(matches!(
            validate_push(&p, 0, 1, &[0.0], 1),
            Decision::Refuse(Reason::FutureBase {
                base: 1,
                current: 0
            })
        ));
    }

    #[test]
    fn apply_push_rebases_on_the_base_version_and_applies_to_the_newest() {
        let mut ring = CenterRing::new(4, 0, vec![0.0, 0.0].into());
        ring.push(1, vec![1.0, 1.0].into());
        let p = Policy {
            alpha: 0.5,
            staleness: Staleness::Constant,
            tau_max: 2,
            max_norm: 100.0,
        };
        // Computed from version 0: x_i = [0, 0] + [4, 2] = [4, 2]; center [1, 1].
        let a = apply_push(&mut ring, &p, 0, &[4.0, 2.0]).unwrap();
        assert_eq!((a.tau, a.alpha_eff, a.version), (1, 0.5, 2));
        assert_eq!(ring.newest().1.to_vec(), vec![2.5, 1.5]);
        assert!((a.worker_distance - 10f32.sqrt()).abs() < 1e-6);
        assert!((a.view_distance - 2f32.sqrt()).abs() < 1e-6);
        assert!((a.delta_norm - 20f32.sqrt()).abs() < 1e-6);
        // Refusals leave the ring as it was.
        let before: Vec<f32> = ring.newest().1.to_vec();
        assert_eq!(
            apply_push(&mut ring, &p, 2, &[f32::NAN, 0.0]),
            Err(Reason::NonFinite { index: 0 })
        );
        assert_eq!(ring.newest().0, 2);
        assert_eq!(ring.newest().1.to_vec(), before);
        let mut small = CenterRing::new(1, 0, vec![0.0].into());
        small.push(1, vec![1.0].into());
        assert_eq!(
            apply_push(&mut small, &p, 0, &[0.0]),
            Err(Reason::Evicted { base: 0, oldest: 1 })
        );
        assert_eq!(small.newest().0, 1);
    }
}
