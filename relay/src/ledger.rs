//! The staleness ledger of one room: one [`Record`] per push, accepted or refused, and the
//! aggregates the dashboard and the exports read.
//!
//! Pure bookkeeping, no I/O and no clock: the caller passes every time. Memory is bounded:
//! the ledger keeps the last [`Ledger::capacity`] records, while every total, the staleness
//! histogram and the per-worker figures count every push ever recorded, exactly.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// How many records a room keeps by default: 100,000 records of about 100 bytes, 10 MB.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// One push as the relay saw it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Record {
    /// Position of this push among all the room's pushes, from 0.
    pub seq: u64,
    /// Milliseconds since the Unix epoch when the relay handled the push.
    pub wall_ms: u64,
    pub worker: u64,
    /// The center version the push was computed from.
    pub base: u64,
    /// The newest center version when the push arrived.
    pub current: u64,
    /// Staleness `current - base`, 0 for a base from the future.
    pub tau: u64,
    /// Milliseconds since the base version was published (absent when the relay no longer
    /// remembers it).
    pub age_ms: Option<u64>,
    /// Local SGD steps the worker says it took for this push.
    pub local_steps: u32,
    /// The weight the push was applied with (0 when refused).
    pub alpha_eff: f32,
    /// `||x_i - x~||` against the center the push was applied to (NaN when refused).
    pub worker_distance: f32,
    /// `||x~(base) - x~||`: how far the center moved while the worker computed (NaN when
    /// refused).
    pub view_distance: f32,
    /// `||delta||` as sent (NaN when refused before decoding).
    pub delta_norm: f32,
    /// Bytes of the Push message.
    pub bytes_in: u64,
    /// Bytes of the answer: the Ack and the Center after it.
    pub bytes_out: u64,
    /// The center version the push made, when accepted.
    pub version: Option<u64>,
    /// SwarmSGD: the neighbour whose model the push was averaged with.
    pub peer: Option<u64>,
    /// 0 when accepted, else the refusal's error code (PROTOCOL.md, "Error codes").
    pub code: u16,
    /// Why the push was refused; empty when accepted.
    pub reason: String,
}

impl Record {
    /// Whether the push was applied to the center.
    pub fn accepted(&self) -> bool {
        self.code == 0
    }
}

/// Exact totals over every push the room has recorded.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub pushes: u64,
    pub accepted: u64,
    pub refused: u64,
    /// Refusals by error code.
    pub refused_by_code: BTreeMap<u16, u64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Exact per-worker figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerStats {
    pub pushes: u64,
    pub accepted: u64,
    pub refused: u64,
    /// Sum of `tau` over accepted pushes, for the mean.
    pub tau_sum: u64,
    /// Largest `tau` of an accepted push.
    pub tau_max: u64,
    /// `alpha_eff` of the last accepted push.
    pub last_alpha_eff: Option<f32>,
    /// `||x_i - x~||` of the last accepted push: how far the worker was from the center.
    pub last_worker_distance: Option<f32>,
    pub bytes_in: u64,
}

impl WorkerStats {
    /// Mean staleness of this worker's accepted pushes.
    pub fn mean_tau(&self) -> Option<f64> {
        (self.accepted > 0).then(|| self.tau_sum as f64 / self.accepted as f64)
    }
}

/// One point of the time series the dashboard plots.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Point {
    pub wall_ms: u64,
    pub worker: u64,
    pub tau: u64,
    pub alpha_eff: f32,
    pub accepted: bool,
    /// The center version after this push.
    pub version: u64,
}

/// A room's ledger.
#[derive(Clone, Debug)]
pub struct Ledger {
    capacity: usize,
    records: VecDeque<Record>,
    totals: Totals,
    /// Accepted pushes by staleness, exact.
    histogram: BTreeMap<u64, u64>,
    /// Refused pushes by staleness ([`counts_as_refused_work`]): exact since the ledger
    /// began, or since a restart counted from the records a checkpoint kept.
    refused_histogram: BTreeMap<u64, u64>,
    workers: BTreeMap<u64, WorkerStats>,
}

impl Default for Ledger {
    fn default() -> Ledger {
        Ledger::new(DEFAULT_CAPACITY)
    }
}

/// The CSV columns, in order.
pub const CSV_HEADER: &str = "seq,wall_ms,worker,base,current,tau,age_ms,alpha_eff,\
worker_distance,view_distance,delta_norm,bytes_in,bytes_out,version,peer,accepted,code,reason";

impl Ledger {
    /// A ledger keeping at most `capacity` records (at least 1).
    pub fn new(capacity: usize) -> Ledger {
        Ledger {
            capacity: capacity.max(1),
            records: VecDeque::new(),
            totals: Totals::default(),
            histogram: BTreeMap::new(),
            refused_histogram: BTreeMap::new(),
            workers: BTreeMap::new(),
        }
    }

    /// How many records are kept at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Adds a record; its `seq` is overwritten with the push's position. Returns the seq.
    pub fn record(&mut self, mut r: Record) -> u64 {
        r.seq = self.totals.pushes;
        let t = &mut self.totals;
        t.pushes += 1;
        t.bytes_in += r.bytes_in;
        t.bytes_out += r.bytes_out;
        let w = self.workers.entry(r.worker).or_default();
        w.pushes += 1;
        w.bytes_in += r.bytes_in;
        if r.accepted() {
            t.accepted += 1;
            *self.histogram.entry(r.tau).or_default() += 1;
            w.accepted += 1;
            w.tau_sum += r.tau;
            w.tau_max = w.tau_max.max(r.tau);
            w.last_alpha_eff = Some(r.alpha_eff);
            w.last_worker_distance = Some(r.worker_distance);
        } else {
            t.refused += 1;
            *t.refused_by_code.entry(r.code).or_default() += 1;
            w.refused += 1;
            if counts_as_refused_work(r.code) {
                *self.refused_histogram.entry(r.tau).or_default() += 1;
            }
        }
        if self.records.len() == self.capacity {
            self.records.pop_front();
        }
        let seq = r.seq;
        self.records.push_back(r);
        seq
    }

    /// A ledger as a checkpoint left it: the kept `records` (oldest first, at most
    /// `capacity` of them are kept) and the exact totals, histogram and per-worker figures.
    pub fn restore(
        capacity: usize,
        records: Vec<Record>,
        totals: Totals,
        histogram: BTreeMap<u64, u64>,
        workers: BTreeMap<u64, WorkerStats>,
    ) -> Ledger {
        let capacity = capacity.max(1);
        let skip = records.len().saturating_sub(capacity);
        let records: VecDeque<Record> = records.into_iter().skip(skip).collect();
        let mut refused_histogram = BTreeMap::new();
        for r in records.iter().filter(|r| counts_as_refused_work(r.code)) {
            *refused_histogram.entry(r.tau).or_default() += 1;
        }
        Ledger {
            capacity,
            records,
            totals,
            histogram,
            refused_histogram,
            workers,
        }
    }

    /// Copies of the kept records with `seq >= since`, oldest first (for a checkpoint,
    /// which writes only what came after the last one).
    pub fn since(&self, since: u64) -> Vec<Record> {
        let first = self.records.front().map_or(0, |r| r.seq);
        let skip = since.saturating_sub(first) as usize;
        self.records
            .range(skip.min(self.records.len())..)
            .cloned()
            .collect()
    }

    /// The kept records, oldest first.
    pub fn records(&self) -> impl ExactSizeIterator<Item = &Record> + DoubleEndedIterator {
        self.records.iter()
    }

    /// Exact totals over every push.
    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// Accepted pushes by staleness `tau`, exact.
    pub fn histogram(&self) -> &BTreeMap<u64, u64> {
        &self.histogram
    }

    /// Refused pushes by staleness `tau`, RESYNC refusals left out
    /// ([`counts_as_refused_work`]).
    pub fn refused_histogram(&self) -> &BTreeMap<u64, u64> {
        &self.refused_histogram
    }

    /// Exact figures per worker id.
    pub fn workers(&self) -> &BTreeMap<u64, WorkerStats> {
        &self.workers
    }

    /// The time series of the kept records with `seq >= since`.
    pub fn series(&self, since: u64) -> Vec<Point> {
        let mut version = 0;
        self.records
            .iter()
            .filter_map(|r| {
                version = r.version.unwrap_or(r.current);
                (r.seq >= since).then_some(Point {
                    wall_ms: r.wall_ms,
                    worker: r.worker,
                    tau: r.tau,
                    alpha_eff: r.alpha_eff,
                    accepted: r.accepted(),
                    version,
                })
            })
            .collect()
    }

    /// The kept records as CSV with [`CSV_HEADER`]; missing values are empty fields.
    pub fn to_csv(&self) -> String {
        let mut out = String::with_capacity(64 + 120 * self.records.len());
        out.push_str(CSV_HEADER);
        out.push('\n');
        for r in &self.records {
            let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                r.seq,
                r.wall_ms,
                r.worker,
                r.base,
                r.current,
                r.tau,
                opt(r.age_ms),
                r.alpha_eff,
                r.worker_distance,
                r.view_distance,
                r.delta_norm,
                r.bytes_in,
                r.bytes_out,
                opt(r.version),
                opt(r.peer),
                r.accepted(),
                r.code,
                csv_field(&r.reason),
            );
        }
        out
    }

    /// Totals, histogram, per-worker figures (with mean staleness) and the kept records.
    pub fn to_json(&self) -> serde_json::Value {
        let workers: BTreeMap<String, serde_json::Value> = self
            .workers
            .iter()
            .map(|(id, w)| {
                let mut v = serde_json::to_value(w).unwrap_or_default();
                if let Some(obj) = v.as_object_mut() {
                    obj.insert("mean_tau".into(), serde_json::json!(w.mean_tau()));
                }
                (id.to_string(), v)
            })
            .collect();
        let histogram: BTreeMap<String, u64> = self
            .histogram
            .iter()
            .map(|(tau, n)| (tau.to_string(), *n))
            .collect();
        // NaN is not JSON: serde_json writes it as null.
        serde_json::json!({
            "totals": self.totals,
            "histogram": histogram,
            "workers": workers,
            "records": self.records,
        })
    }
}

/// Whether a refusal with this code threw a device's work away for its staleness or its
/// content: every refusal but RESYNC (10), which is the relay's bookkeeping (a reset, a
/// restart, an abandoned barrier round) rather than the settings judging the work, and whose
/// `tau` can be a restart's gap of a million versions. The refused histogram, the device
/// states and the room's refused-work banner count these.
pub fn counts_as_refused_work(code: u16) -> bool {
    code != 0 && code != easel_protocol::codes::code::RESYNC
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(worker: u64, tau: u64, code: u16) -> Record {
        Record {
            seq: 0,
            wall_ms: 1000 + tau,
            worker,
            base: 10,
            current: 10 + tau,
            tau,
            age_ms: Some(5),
            local_steps: 8,
            alpha_eff: if code == 0 {
                0.5 / (1.0 + tau as f32)
            } else {
                0.0
            },
            worker_distance: 1.0,
            view_distance: 0.5,
            delta_norm: 2.0,
            bytes_in: 100,
            bytes_out: 200,
            version: (code == 0).then_some(11 + tau),
            peer: None,
            code,
            reason: if code == 0 {
                String::new()
            } else {
                "too, \"stale\"".into()
            },
        }
    }

    proptest! {
        #[test]
        fn totals_stay_exact_when_records_are_evicted(
            pushes in prop::collection::vec((0u64..4, 0u64..6, prop_oneof![Just(0u16), Just(6u16), Just(8u16)]), 0..200),
            capacity in 1usize..20,
        ) {
            let mut ledger = Ledger::new(capacity);
            for &(w, tau, code) in &pushes {
                ledger.record(rec(w, tau, code));
            }
            let t = ledger.totals();
            prop_assert_eq!(t.pushes, pushes.len() as u64);
            let accepted = pushes.iter().filter(|p| p.2 == 0).count() as u64;
            prop_assert_eq!(t.accepted, accepted);
            prop_assert_eq!(t.refused, pushes.len() as u64 - accepted);
            prop_assert_eq!(ledger.histogram().values().sum::<u64>(), accepted);
            prop_assert_eq!(t.bytes_in, 100 * pushes.len() as u64);
            prop_assert_eq!(ledger.records().len(), pushes.len().min(capacity));
            prop_assert_eq!(ledger.workers().values().map(|w| w.pushes).sum::<u64>(), t.pushes);
            // Kept records are the newest, in order.
            let seqs: Vec<u64> = ledger.records().map(|r| r.seq).collect();
            let first = pushes.len().saturating_sub(capacity) as u64;
            prop_assert_eq!(seqs, (first..pushes.len() as u64).collect::<Vec<_>>());
        }
    }

    #[test]
    fn per_worker_mean_staleness_and_last_alpha() {
        let mut l = Ledger::new(10);
        l.record(rec(1, 0, 0));
        l.record(rec(1, 2, 0));
        l.record(rec(1, 9, 8));
        l.record(rec(2, 4, 0));
        let w1 = &l.workers()[&1];
        assert_eq!((w1.pushes, w1.accepted, w1.refused), (3, 2, 1));
        assert_eq!(w1.mean_tau(), Some(1.0));
        assert_eq!(w1.last_alpha_eff, Some(0.5 / 3.0));
        assert_eq!(l.histogram().get(&4), Some(&1));
        assert_eq!(l.totals().refused_by_code.get(&8), Some(&1));
    }

    #[test]
    fn refused_pushes_have_their_own_histogram_without_resyncs() {
        let mut l = Ledger::new(2);
        l.record(rec(1, 3, 0));
        l.record(rec(1, 88, 8));
        l.record(rec(1, 88, 8));
        l.record(rec(2, 1_000_000, easel_protocol::codes::code::RESYNC));
        assert_eq!(
            l.refused_histogram().iter().collect::<Vec<_>>(),
            [(&88, &2)]
        );
        assert_eq!(l.histogram().iter().collect::<Vec<_>>(), [(&3, &1)]);
        // After a restart it is counted again from the kept records.
        let back = Ledger::restore(
            2,
            l.records().cloned().collect(),
            l.totals().clone(),
            l.histogram().clone(),
            l.workers().clone(),
        );
        assert_eq!(
            back.refused_histogram().iter().collect::<Vec<_>>(),
            [(&88, &1)]
        );
    }

    /// The export keeps every refused push with its staleness and its refusal code.
    #[test]
    fn a_refused_push_is_in_the_csv_with_its_tau_and_code() {
        let mut l = Ledger::new(10);
        l.record(rec(3, 88, 8));
        let csv = l.to_csv();
        let header: Vec<&str> = CSV_HEADER.split(',').collect();
        let row: Vec<&str> = csv.lines().nth(1).unwrap_or_default().split(',').collect();
        let col = |name: &str| header.iter().position(|h| *h == name).map(|i| row[i]);
        assert_eq!(col("tau"), Some("88"));
        assert_eq!(col("accepted"), Some("false"));
        assert_eq!(col("code"), Some("8"));
        assert_eq!(col("worker"), Some("3"));
    }

    #[test]
    fn csv_has_one_line_per_kept_record_and_quotes_reasons() {
        let mut l = Ledger::new(10);
        l.record(rec(1, 0, 0));
        l.record(rec(2, 9, 8));
        let csv = l.to_csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], CSV_HEADER);
        assert_eq!(
            lines[0].split(',').count(),
            lines[1].split(',').count(),
            "{csv}"
        );
        assert!(
            lines[2].ends_with(",false,8,\"too, \"\"stale\"\"\""),
            "{csv}"
        );
        let json = l.to_json();
        assert_eq!(json["totals"]["pushes"], 2);
        assert_eq!(json["records"].as_array().map(Vec::len), Some(2));
        assert_eq!(json["workers"]["1"]["mean_tau"], 0.0);
    }
}
