//! What the teacher's dashboard infers about each device from the timings the relay sees:
//! activity spans (computing, waiting, communicating), steps per second, a device's state,
//! and bytes per second. Pure: no I/O and no clock; every time is passed in, in
//! milliseconds since the Unix epoch.
//!
//! The relay sees three moments per round of a device: when it finished sending the device
//! a center (`sent`), when the device's next push arrived (`arrival`), and when it finished
//! sending the center that answers that push. From these, with the artificial delay the
//! teacher set (a device waits its delay after computing, before pushing):
//! - `computing`: from the previous center sent to `arrival - delay`;
//! - `waiting`: the last `delay` milliseconds before `arrival` (never more than the gap);
//! - `communicating`: from `arrival` until the answering center was written to the socket.
//!
//! The center's and the push's time on the network are inside `computing` (the relay cannot
//! see them apart); on a LAN they are milliseconds against rounds of hundreds.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

/// Spans kept for the dashboards (a few minutes of a full classroom).
pub const SPAN_CAPACITY: usize = 20_000;
/// Pushes per device kept for its steps per second.
pub const RATE_PUSHES: usize = 8;

/// What a device was doing during a span.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SpanKind {
    Computing,
    Waiting,
    Communicating,
}

/// One span of a device's timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Span {
    pub worker: u64,
    pub kind: SpanKind,
    pub start_ms: u64,
    pub end_ms: u64,
}

/// The spans of one round: `prev_sent` is when the previous center was sent (none after a
/// join or a pause), `arrival` when the push arrived, `sent` when the answering center was
/// sent, `delay_ms` the device's artificial delay. Empty spans are left out; the spans are
/// in time order, do not overlap, and cover `[prev_sent, sent]`.
pub fn infer_spans(
    worker: u64,
    prev_sent: Option<u64>,
    arrival: u64,
    sent: u64,
    delay_ms: u32,
) -> Vec<Span> {
    let span = |kind, start_ms, end_ms| Span {
        worker,
        kind,
        start_ms,
        end_ms,
    };
    let mut out = Vec::with_capacity(3);
    if let Some(prev) = prev_sent.filter(|&p| p <= arrival) {
        let wait = u64::from(delay_ms).min(arrival - prev);
        let compute_end = arrival - wait;
        if compute_end > prev {
            out.push(span(SpanKind::Computing, prev, compute_end));
        }
        if wait > 0 {
            out.push(span(SpanKind::Waiting, compute_end, arrival));
        }
    }
    if sent > arrival {
        out.push(span(SpanKind::Communicating, arrival, sent));
    }
    out
}

/// Local steps per second from a device's recent pushes `(wall_ms, local_steps)`, oldest
/// first: the steps of every push after the first over the time since the first. `None`
/// with fewer than two pushes or no time between them.
pub fn steps_per_s(recent: &[(u64, u32)]) -> Option<f64> {
    let (first, rest) = recent.split_first()?;
    let last = rest.last()?;
    let ms = last.0.checked_sub(first.0).filter(|&ms| ms > 0)?;
    let steps: u64 = rest.iter().map(|&(_, s)| u64::from(s)).sum();
    Some(steps as f64 * 1000.0 / ms as f64)
}

/// A device's state in the dashboard's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceState {
    /// Connected, not paused, no artificial delay.
    Training,
    /// Connected and training, with an artificial delay (a straggler by the teacher's hand).
    Delayed,
    Paused,
    Disconnected,
    Removed,
}

/// The state of a device: removed, else disconnected, else paused, else delayed or training.
pub fn device_state(removed: bool, connected: bool, paused: bool, delay_ms: u32) -> DeviceState {
    if removed {
        DeviceState::Removed
    } else if !connected {
        DeviceState::Disconnected
    } else if paused {
        DeviceState::Paused
    } else if delay_ms > 0 {
        DeviceState::Delayed
    } else {
        DeviceState::Training
    }
}

/// Byte counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub wall_ms: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Bytes per second `(in, out)` between two readings of the counters. A counter that went
/// down (the ledger was reset) counts from zero; no time between the readings gives zero.
pub fn bytes_per_s(prev: Counter, now: Counter) -> (f64, f64) {
    let ms = now.wall_ms.saturating_sub(prev.wall_ms);
    if ms == 0 {
        return (0.0, 0.0);
    }
    let grew = |a: u64, b: u64| if b >= a { b - a } else { b };
    let per_s = |bytes: u64| bytes as f64 * 1000.0 / ms as f64;
    (
        per_s(grew(prev.bytes_in, now.bytes_in)),
        per_s(grew(prev.bytes_out, now.bytes_out)),
    )
}

/// What the relay tracks per device for the timeline and the rates.
#[derive(Clone, Debug, Default)]
struct Track {
    /// When the last center was sent to it; `None` after a pause (the gap is not work).
    last_sent: Option<u64>,
    /// The arrival of the push whose answer is not sent yet.
    pending: Option<u64>,
    /// Its last pushes, `(wall_ms, local_steps)`, oldest first.
    recent: VecDeque<(u64, u32)>,
}

/// Every device's timeline of one room, the newest [`SPAN_CAPACITY`] spans.
#[derive(Clone, Debug, Default)]
pub struct Activity {
    tracks: BTreeMap<u64, Track>,
    /// Spans with their sequence numbers, oldest first.
    spans: VecDeque<(u64, Span)>,
    next_seq: u64,
}

impl Activity {
    /// A device joined (or resumed) and was sent a center at `now`.
    pub fn joined(&mut self, worker: u64, now: u64) {
        let t = self.tracks.entry(worker).or_default();
        t.last_sent = Some(now);
        t.pending = None;
    }

    /// A push of `local_steps` steps from `worker` arrived at `arrival`.
    pub fn pushed(&mut self, worker: u64, arrival: u64, local_steps: u32) {
        let t = self.tracks.entry(worker).or_default();
        t.pending = Some(arrival);
        if t.recent.len() == RATE_PUSHES {
            t.recent.pop_front();
        }
        t.recent.push_back((arrival, local_steps));
    }

    /// The center answering `worker`'s push was sent at `sent`; records the round's spans.
    pub fn center_sent(&mut self, worker: u64, sent: u64, delay_ms: u32) {
        let t = self.tracks.entry(worker).or_default();
        let Some(arrival) = t.pending.take() else {
            return;
        };
        let spans = infer_spans(worker, t.last_sent, arrival, sent, delay_ms);
        t.last_sent = Some(sent);
        for s in spans {
            if self.spans.len() == SPAN_CAPACITY {
                self.spans.pop_front();
            }
            self.spans.push_back((self.next_seq, s));
            self.next_seq += 1;
        }
    }

    /// The device was paused (`None`) or resumed at `now`: the time in between is not work.
    pub fn restart(&mut self, worker: u64, now: Option<u64>) {
        self.tracks.entry(worker).or_default().last_sent = now;
    }

    /// Local steps per second of a device over its last [`RATE_PUSHES`] pushes.
    pub fn steps_per_s(&self, worker: u64) -> Option<f64> {
        let t = self.tracks.get(&worker)?;
        steps_per_s(&t.recent.iter().copied().collect::<Vec<_>>())
    }

    /// The kept spans numbered `since` or later, and the number to ask from next time.
    pub fn spans_since(&self, since: u64) -> (Vec<Span>, u64) {
        let spans = self
            .spans
            .iter()
            .filter(|(seq, _)| *seq >= since)
            .map(|(_, s)| *s)
            .collect();
        (spans, self.next_seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Spans are ordered, non-overlapping, non-empty, cover the round exactly, and the
        /// waiting never exceeds the delay.
        #[test]
        fn spans_tile_the_round(
            prev in prop::option::of(0u64..10_000),
            arrival in 0u64..20_000,
            answer in 0u64..500,
            delay in 0u32..20_000,
        ) {
            let sent = arrival + answer;
            let spans = infer_spans(7, prev, arrival, sent, delay);
            for s in &spans {
                prop_assert!(s.start_ms < s.end_ms && s.worker == 7);
            }
            for w in spans.windows(2) {
                prop_assert_eq!(w[0].end_ms, w[1].start_ms);
            }
            let waited: u64 = spans.iter().filter(|s| s.kind == SpanKind::Waiting)
                .map(|s| s.end_ms - s.start_ms).sum();
            prop_assert!(waited <= u64::from(delay));
            match prev.filter(|&p| p <= arrival) {
                Some(p) if sent > p => {
                    prop_assert_eq!(spans.first().map(|s| s.start_ms), Some(p));
                    prop_assert_eq!(spans.last().map(|s| s.end_ms), Some(sent));
                }
                _ => prop_assert!(spans.iter().all(|s| s.kind == SpanKind::Communicating)),
            }
        }

        #[test]
        fn bytes_per_s_is_finite_and_non_negative(
            a in any::<(u32, u32, u32)>(), b in any::<(u32, u32, u32)>(),
        ) {
            let c = |(ms, i, o): (u32, u32, u32)| Counter {
                wall_ms: ms.into(), bytes_in: i.into(), bytes_out: o.into(),
            };
            let (i, o) = bytes_per_s(c(a), c(b));
            prop_assert!(i.is_finite() && o.is_finite() && i >= 0.0 && o >= 0.0);
        }
    }

    #[test]
    fn a_delayed_round_splits_into_computing_waiting_communicating() {
        let s = infer_spans(1, Some(1000), 1800, 1810, 500);
        let kinds: Vec<_> = s.iter().map(|s| (s.kind, s.start_ms, s.end_ms)).collect();
        assert_eq!(
            kinds,
            vec![
                (SpanKind::Computing, 1000, 1300),
                (SpanKind::Waiting, 1300, 1800),
                (SpanKind::Communicating, 1800, 1810),
            ]
        );
        // A delay longer than the gap: all of it was waiting.
        let s = infer_spans(1, Some(1000), 1200, 1200, 500);
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].kind, s[0].start_ms), (SpanKind::Waiting, 1000));
    }

    #[test]
    fn rates_states_and_the_tracker() {
        assert_eq!(steps_per_s(&[(0, 8)]), None);
        assert_eq!(steps_per_s(&[(0, 8), (0, 8)]), None);
        assert_eq!(steps_per_s(&[(1000, 8), (2000, 8), (3000, 8)]), Some(8.0));
        let c = |wall_ms, bytes_in, bytes_out| Counter {
            wall_ms,
            bytes_in,
            bytes_out,
        };
        assert_eq!(bytes_per_s(c(0, 0, 0), c(500, 100, 1000)), (200.0, 2000.0));
        assert_eq!(bytes_per_s(c(0, 900, 0), c(1000, 100, 0)), (100.0, 0.0));
        assert_eq!(bytes_per_s(c(5, 0, 0), c(5, 100, 0)), (0.0, 0.0));
        assert_eq!(device_state(true, true, false, 0), DeviceState::Removed);
        assert_eq!(
            device_state(false, false, true, 9),
            DeviceState::Disconnected
        );
        assert_eq!(device_state(false, true, true, 9), DeviceState::Paused);
        assert_eq!(device_state(false, true, false, 9), DeviceState::Delayed);
        assert_eq!(device_state(false, true, false, 0), DeviceState::Training);

        let mut a = Activity::default();
        a.joined(3, 0);
        a.pushed(3, 100, 8);
        a.center_sent(3, 110, 0);
        a.pushed(3, 1110, 8);
        a.center_sent(3, 1120, 0);
        assert_eq!(a.steps_per_s(3), Some(8.0 * 1000.0 / 1010.0));
        let (spans, next) = a.spans_since(0);
        assert_eq!(spans.len(), 4);
        assert_eq!(a.spans_since(next).0, vec![]);
        a.restart(3, None);
        a.pushed(3, 5000, 8);
        a.center_sent(3, 5001, 0);
        let (spans, _) = a.spans_since(next);
        assert_eq!(spans.len(), 1, "no computing span across a pause");
        // A center sent with no push pending records nothing.
        a.center_sent(3, 6000, 0);
        assert_eq!(a.spans_since(next).0.len(), 1);
    }
}
