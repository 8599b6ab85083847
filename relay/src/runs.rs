//! A room's runs: named stretches of training the teacher compares. Each run keeps its
//! settings (as they were when it started), its center evaluations and one point per push,
//! with a cap on points; the room keeps its last [`KEEP_RUNS`] runs. Pure bookkeeping: no
//! I/O and no clock.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;

use serde::Serialize;

use crate::ledger::Record;

/// One evaluation of a room's center on the test digits.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct EvalPoint {
    pub wall_ms: u64,
    pub version: u64,
    pub accuracy: f64,
    pub loss: f64,
}

/// Runs a room keeps; starting one more forgets the oldest.
pub const KEEP_RUNS: usize = 20;
/// Push points kept per run (the oldest are dropped beyond it, and counted).
pub const MAX_PUSHES: usize = 50_000;
/// Evaluations kept per run.
pub const MAX_EVALS: usize = 5_000;

/// One push as a run remembers it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PushPoint {
    pub wall_ms: u64,
    pub worker: u64,
    pub tau: u64,
    pub alpha_eff: f32,
    /// `||x~(base) - x~||`, the elastic-consistency distance (NaN, JSON null, when refused).
    pub view_distance: f32,
    /// `||x_i - x~||` (NaN, JSON null, when refused).
    pub worker_distance: f32,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub local_steps: u32,
    pub accepted: bool,
    /// The center version the push made, when accepted.
    pub version: Option<u64>,
    /// SwarmSGD: the neighbour the push was averaged with.
    pub peer: Option<u64>,
}

impl From<&Record> for PushPoint {
    fn from(r: &Record) -> PushPoint {
        PushPoint {
            wall_ms: r.wall_ms,
            worker: r.worker,
            tau: r.tau,
            alpha_eff: r.alpha_eff,
            view_distance: r.view_distance,
            worker_distance: r.worker_distance,
            bytes_in: r.bytes_in,
            bytes_out: r.bytes_out,
            local_steps: r.local_steps,
            accepted: r.accepted(),
            version: r.version,
            peer: r.peer,
        }
    }
}

/// A bounded series that numbers its items from 0 for ever, so a reader can ask for what
/// came after the last item it saw even after old ones were dropped.
#[derive(Clone, Debug, Serialize)]
#[serde(transparent)]
pub struct Series<T> {
    #[serde(skip)]
    cap: usize,
    #[serde(skip)]
    dropped: u64,
    items: VecDeque<T>,
}

impl<T: Clone> Series<T> {
    fn new(cap: usize) -> Series<T> {
        Series {
            cap: cap.max(1),
            dropped: 0,
            items: VecDeque::new(),
        }
    }

    fn push(&mut self, t: T) {
        if self.items.len() == self.cap {
            self.items.pop_front();
            self.dropped += 1;
        }
        self.items.push_back(t);
    }

    /// A series as a checkpoint left it: `dropped` items before the kept `items`.
    pub fn restore(cap: usize, dropped: u64, items: Vec<T>) -> Series<T> {
        let mut s = Series::new(cap);
        let skip = items.len().saturating_sub(s.cap);
        s.dropped = dropped + skip as u64;
        s.items = items.into_iter().skip(skip).collect();
        s
    }

    /// Items ever added.
    pub fn total(&self) -> u64 {
        self.dropped + self.items.len() as u64
    }

    /// Items dropped to keep the cap.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The kept items numbered `since` or later.
    pub fn since(&self, since: u64) -> Vec<T> {
        let skip = since.saturating_sub(self.dropped) as usize;
        self.items.iter().skip(skip).cloned().collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter()
    }
}

/// A device's figures over one run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DeviceSummary {
    pub worker: u64,
    pub pushes: u64,
    pub accepted: u64,
    /// Mean staleness of its accepted pushes.
    pub mean_tau: Option<f64>,
    pub local_steps: u64,
    /// Its local steps after its first push over the time since it (kept points only).
    pub steps_per_s: Option<f64>,
    pub bytes_in: u64,
}

/// One run.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub id: u64,
    pub name: String,
    pub started_ms: u64,
    /// When the next run started; `None` for the current one.
    pub ended_ms: Option<u64>,
    /// The room's settings when the run started.
    pub settings: serde_json::Value,
    pub evals: Series<EvalPoint>,
    pub pushes: Series<PushPoint>,
}

/// The CSV columns of a run export, in order.
pub const CSV_HEADER: &str = "kind,wall_ms,t_s,version,accuracy,loss,worker,tau,alpha_eff,\
view_distance,worker_distance,bytes_in,bytes_out,local_steps,accepted,peer";

impl Run {
    pub fn record_push(&mut self, p: PushPoint) {
        self.pushes.push(p);
    }

    pub fn record_eval(&mut self, e: EvalPoint) {
        self.evals.push(e);
    }

    /// Figures per device over the kept push points, by worker id.
    pub fn devices(&self) -> Vec<DeviceSummary> {
        let mut by: BTreeMap<u64, (DeviceSummary, u64, u64, u64, u64)> = BTreeMap::new();
        for p in self.pushes.iter() {
            let (d, tau_sum, _, last, later_steps) = by.entry(p.worker).or_insert((
                DeviceSummary {
                    worker: p.worker,
                    ..DeviceSummary::default()
                },
                0,
                p.wall_ms,
                p.wall_ms,
                0,
            ));
            if d.pushes > 0 {
                *later_steps += u64::from(p.local_steps);
            }
            d.pushes += 1;
            d.local_steps += u64::from(p.local_steps);
            d.bytes_in += p.bytes_in;
            *last = p.wall_ms;
            if p.accepted {
                d.accepted += 1;
                *tau_sum += p.tau;
            }
        }
        by.into_values()
            .map(|(mut d, tau_sum, first, last, later_steps)| {
                d.mean_tau = (d.accepted > 0).then(|| tau_sum as f64 / d.accepted as f64);
                d.steps_per_s =
                    (last > first).then(|| later_steps as f64 * 1000.0 / (last - first) as f64);
                d
            })
            .collect()
    }

    /// The run as CSV with [`CSV_HEADER`]: one row per evaluation (`kind` = `eval`) and per
    /// push (`kind` = `push`), in time order; fields that do not apply, and NaN, are empty.
    /// `t_s` is seconds since the run started.
    pub fn to_csv(&self) -> String {
        let mut rows: Vec<(u64, String)> = Vec::new();
        let t = |ms: u64| (ms.saturating_sub(self.started_ms)) as f64 / 1000.0;
        for e in self.evals.iter() {
            rows.push((
                e.wall_ms,
                format!(
                    "eval,{},{},{},{},{},,,,,,,,,,",
                    e.wall_ms,
                    t(e.wall_ms),
                    e.version,
                    num(e.accuracy),
                    num(e.loss)
                ),
            ));
        }
        for p in self.pushes.iter() {
            rows.push((
                p.wall_ms,
                format!(
                    "push,{},{},{},,,{},{},{},{},{},{},{},{},{},{}",
                    p.wall_ms,
                    t(p.wall_ms),
                    p.version.map(|v| v.to_string()).unwrap_or_default(),
                    p.worker,
                    p.tau,
                    num(p.alpha_eff.into()),
                    num(p.view_distance.into()),
                    num(p.worker_distance.into()),
                    p.bytes_in,
                    p.bytes_out,
                    p.local_steps,
                    p.accepted,
                    p.peer.map(|v| v.to_string()).unwrap_or_default()
                ),
            ));
        }
        rows.sort_by_key(|(ms, _)| *ms);
        let mut out = String::with_capacity(CSV_HEADER.len() + 1 + 80 * rows.len());
        out.push_str(CSV_HEADER);
        out.push('\n');
        for (_, row) in rows {
            let _ = writeln!(out, "{row}");
        }
        out
    }

    /// The run as JSON: its fields, the per-device summary, and how many points were
    /// dropped to keep the caps.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert(
                "devices".into(),
                serde_json::to_value(self.devices()).unwrap_or_default(),
            );
            o.insert("dropped_pushes".into(), self.pushes.dropped().into());
            o.insert("dropped_evals".into(), self.evals.dropped().into());
        }
        v
    }

    /// The run without its series, for lists.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "name": self.name,
            "started_ms": self.started_ms,
            "ended_ms": self.ended_ms,
            "pushes": self.pushes.total(),
            "evals": self.evals.total(),
            "best_accuracy": self.evals.iter().map(|e| e.accuracy).fold(None, |m: Option<f64>, a| Some(m.map_or(a, |m| m.max(a)))),
        })
    }
}

/// A finite number as text, NaN and infinities as an empty field.
fn num(x: f64) -> String {
    if x.is_finite() {
        x.to_string()
    } else {
        String::new()
    }
}

/// A room's runs, oldest first; the last one is current.
#[derive(Clone, Debug)]
pub struct Runs {
    runs: VecDeque<Run>,
    next_id: u64,
}

impl Runs {
    /// Runs with a first one, `name`, started at `now_ms`.
    pub fn new(name: &str, settings: serde_json::Value, now_ms: u64) -> Runs {
        let mut r = Runs {
            runs: VecDeque::new(),
            next_id: 1,
        };
        r.start(name, settings, now_ms);
        r
    }

    /// Ends the current run and starts `name` (`run N` when empty); returns its id.
    pub fn start(&mut self, name: &str, settings: serde_json::Value, now_ms: u64) -> u64 {
        if let Some(cur) = self.runs.back_mut() {
            cur.ended_ms = Some(now_ms);
        }
        if self.runs.len() == KEEP_RUNS {
            self.runs.pop_front();
        }
        let id = self.next_id;
        self.next_id += 1;
        let name = name.trim();
        self.runs.push_back(Run {
            id,
            name: if name.is_empty() {
                format!("run {id}")
            } else {
                name.chars().take(120).collect()
            },
            started_ms: now_ms,
            ended_ms: None,
            settings,
            evals: Series::new(MAX_EVALS),
            pushes: Series::new(MAX_PUSHES),
        });
        id
    }

    /// Runs as a checkpoint left them (oldest first; the last is current, at most
    /// [`KEEP_RUNS`] kept); `next_id` is the id the next run gets. `None` without a run.
    pub fn restore(runs: Vec<Run>, next_id: u64) -> Option<Runs> {
        let skip = runs.len().saturating_sub(KEEP_RUNS);
        let runs: VecDeque<Run> = runs.into_iter().skip(skip).collect();
        let last = runs.back()?.id;
        Some(Runs {
            runs,
            next_id: next_id.max(last + 1),
        })
    }

    /// The id the next run gets.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// The current run.
    pub fn current(&self) -> &Run {
        self.runs.back().expect("there is always a current run")
    }

    pub fn current_mut(&mut self) -> &mut Run {
        self.runs.back_mut().expect("there is always a current run")
    }

    /// The kept run with this id.
    pub fn get(&self, id: u64) -> Option<&Run> {
        self.runs.iter().find(|r| r.id == id)
    }

    /// Every kept run, oldest first.
    pub fn all(&self) -> impl Iterator<Item = &Run> {
        self.runs.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn point(wall_ms: u64, worker: u64, accepted: bool) -> PushPoint {
        PushPoint {
            wall_ms,
            worker,
            tau: 2,
            alpha_eff: 0.25,
            view_distance: if accepted { 0.5 } else { f32::NAN },
            worker_distance: 1.0,
            bytes_in: 10,
            bytes_out: 20,
            local_steps: 8,
            accepted,
            version: accepted.then_some(wall_ms),
            peer: accepted.then_some(worker + 1),
        }
    }

    proptest! {
        /// Every CSV line has the header's column count, rows are in time order, and there
        /// is one row per kept point.
        #[test]
        fn csv_is_rectangular_and_complete(
            pushes in prop::collection::vec((0u64..10_000, 0u64..4, any::<bool>()), 0..40),
            evals in prop::collection::vec((0u64..10_000, 0.0f64..1.0), 0..10),
        ) {
            let mut runs = Runs::new("a, \"quoted\" name", serde_json::json!({}), 0);
            for &(ms, w, ok) in &pushes {
                runs.current_mut().record_push(point(ms, w, ok));
            }
            for &(ms, acc) in &evals {
                runs.current_mut().record_eval(EvalPoint { wall_ms: ms, version: 1, accuracy: acc, loss: f64::NAN });
            }
            let csv = runs.current().to_csv();
            let cols = CSV_HEADER.split(',').count();
            let lines: Vec<&str> = csv.lines().collect();
            prop_assert_eq!(lines[0], CSV_HEADER);
            prop_assert_eq!(lines.len(), 1 + pushes.len() + evals.len());
            let mut last = 0u64;
            for l in &lines[1..] {
                let f: Vec<&str> = l.split(',').collect();
                prop_assert_eq!(f.len(), cols, "{}", l);
                let ms: u64 = f[1].parse().unwrap();
                prop_assert!(ms >= last);
                last = ms;
            }
        }

        #[test]
        fn series_since_returns_exactly_what_came_after(
            n in 0usize..50, cap in 1usize..10, since in 0u64..60,
        ) {
            let mut s = Series::new(cap);
            for i in 0..n as u64 {
                s.push(i);
            }
            prop_assert_eq!(s.total(), n as u64);
            let got = s.since(since);
            let want: Vec<u64> = (since.max(n.saturating_sub(cap) as u64)..n as u64).collect();
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn runs_end_each_other_are_capped_and_summarise_devices() {
        let mut runs = Runs::new("", serde_json::json!({"alpha": 0.5}), 100);
        assert_eq!(runs.current().name, "run 1");
        runs.current_mut().record_push(point(1000, 1, true));
        runs.current_mut().record_push(point(2000, 1, true));
        runs.current_mut().record_push(point(3000, 1, false));
        runs.current_mut().record_push(point(1500, 2, true));
        let d = runs.current().devices();
        assert_eq!(d.len(), 2);
        assert_eq!(
            (d[0].pushes, d[0].accepted, d[0].mean_tau),
            (3, 2, Some(2.0))
        );
        assert_eq!(d[0].steps_per_s, Some(8.0));
        assert_eq!(d[1].steps_per_s, None);
        let json = runs.current().to_json();
        assert_eq!(json["pushes"].as_array().map(Vec::len), Some(4));
        assert!(json["pushes"][2]["view_distance"].is_null());
        assert_eq!(json["devices"][0]["worker"], 1);
        let id = runs.start("sync, 2 stragglers", serde_json::json!({}), 5000);
        assert_eq!(id, 2);
        assert_eq!(runs.get(1).and_then(|r| r.ended_ms), Some(5000));
        assert_eq!(runs.current().name, "sync, 2 stragglers");
        for i in 0..KEEP_RUNS {
            runs.start(&format!("r{i}"), serde_json::json!({}), 6000);
        }
        assert_eq!(runs.all().count(), KEEP_RUNS);
        assert!(runs.get(1).is_none());
        assert_eq!(runs.current().summary()["pushes"], 0);
    }
}
