//! The elastic-consistency meter (Nadiradze et al., 2001.05918): for every applied update,
//! its staleness `tau` and the distance between the worker's view (the center version it
//! computed from) and the model the update is applied to. Per worker and per run: the max,
//! the mean and the p95 of both. The largest distance seen is the run's empirical `B`.

use std::collections::BTreeMap;

use serde::Serialize;

/// The samples of one worker, or of a whole run.
#[derive(Clone, Debug, Default, PartialEq)]
struct Samples {
    taus: Vec<u32>,
    distances: Vec<f32>,
}

impl Samples {
    fn push(&mut self, tau: u32, distance: f32) {
        self.taus.push(tau);
        self.distances.push(distance);
    }

    fn summary(&self) -> Summary {
        let mut taus = self.taus.clone();
        taus.sort_unstable();
        let mut d = self.distances.clone();
        d.sort_unstable_by(f32::total_cmp);
        let n = taus.len();
        let mean = |sum: f64| if n == 0 { 0.0 } else { sum / n as f64 };
        Summary {
            count: n as u64,
            tau_max: taus.last().copied().unwrap_or(0),
            tau_mean: mean(taus.iter().map(|&t| f64::from(t)).sum()),
            tau_p95: p95(&taus).unwrap_or(0),
            distance_max: d.last().copied().unwrap_or(0.0),
            distance_mean: mean(d.iter().map(|&x| f64::from(x)).sum()),
            distance_p95: p95(&d).unwrap_or(0.0),
        }
    }
}

/// The 95th percentile of sorted values by the nearest-rank rule (`ceil(0.95 n)`-th value).
fn p95<T: Copy>(sorted: &[T]) -> Option<T> {
    let n = sorted.len();
    let rank = (n * 95).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

/// Max, mean and p95 of `tau` and of the view distance over some applied updates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Applied updates.
    pub count: u64,
    pub tau_max: u32,
    pub tau_mean: f64,
    pub tau_p95: u32,
    /// The largest view distance: the empirical elastic-consistency constant `B`.
    pub distance_max: f32,
    pub distance_mean: f64,
    pub distance_p95: f32,
}

/// The meter: a pure accumulator of `(worker, tau, distance)` for every applied update.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Meter {
    run: Samples,
    workers: BTreeMap<u32, Samples>,
    /// `histogram[t]`: applied updates with `tau == t`.
    histogram: Vec<u64>,
}

impl Meter {
    /// Records one applied update of `worker` with staleness `tau` and view distance
    /// `distance` (a NaN counts as infinitely far: it sorts above every number).
    pub fn record(&mut self, worker: u32, tau: u32, distance: f32) {
        let distance = if distance.is_nan() {
            f32::INFINITY
        } else {
            distance
        };
        self.run.push(tau, distance);
        self.workers.entry(worker).or_default().push(tau, distance);
        let t = tau as usize;
        if self.histogram.len() <= t {
            self.histogram.resize(t + 1, 0);
        }
        self.histogram[t] += 1;
    }

    /// The whole run's figures; `distance_max` is the empirical `B`.
    pub fn summary(&self) -> Summary {
        self.run.summary()
    }

    /// Each worker's figures, by worker id.
    pub fn per_worker(&self) -> Vec<(u32, Summary)> {
        self.workers
            .iter()
            .map(|(w, s)| (*w, s.summary()))
            .collect()
    }

    /// Applied updates by staleness: entry `t` counts updates with `tau == t`.
    pub fn histogram(&self) -> &[u64] {
        &self.histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn summaries_bound_every_sample_and_the_run_bounds_every_worker(
            samples in prop::collection::vec((0u32..5, 0u32..50, 0.0f32..10.0), 1..200)
        ) {
            let mut m = Meter::default();
            for &(w, tau, d) in &samples {
                m.record(w, tau, d);
            }
            let run = m.summary();
            prop_assert_eq!(run.count, samples.len() as u64);
            prop_assert_eq!(m.histogram().iter().sum::<u64>(), run.count);
            for s in std::iter::once(run).chain(m.per_worker().into_iter().map(|(_, s)| s)) {
                prop_assert!(s.tau_mean <= f64::from(s.tau_max));
                prop_assert!(s.tau_p95 <= s.tau_max);
                prop_assert!(s.distance_p95 <= s.distance_max);
                prop_assert!(s.distance_mean <= f64::from(s.distance_max) + 1e-4);
                prop_assert!(s.tau_max <= run.tau_max && s.distance_max <= run.distance_max);
            }
            let b = samples.iter().map(|s| s.2).fold(0.0f32, f32::max);
            prop_assert_eq!(run.distance_max, b);
        }
    }

    #[test]
    fn p95_is_the_nearest_rank() {
        let mut m = Meter::default();
        for t in 1..=20 {
            m.record(7, t, t as f32);
        }
        let s = m.summary();
        assert_eq!((s.tau_p95, s.tau_max, s.distance_p95), (19, 20, 19.0));
        assert_eq!(s.tau_mean, 10.5);
        assert_eq!(m.per_worker()[0].0, 7);
        assert_eq!(Meter::default().summary(), Summary::default());
        m.record(1, 0, f32::NAN);
        assert_eq!(m.summary().distance_max, f32::INFINITY);
    }
}
