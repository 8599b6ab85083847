//! What the teacher's dashboard infers about each device from the timings the relay sees:
//! activity spans (computing, waiting, at a barrier, communicating), steps per second, a
//! device's state, its recent verdicts, and bytes per second. Pure: no I/O and no clock;
//! every time is passed in, in milliseconds since the Unix epoch.
//!
//! The relay sees up to four moments per round of a device: when it finished sending the
//! device a center (`sent`), when the device's next push arrived (`arrival`), when a barrier
//! released that push (`released`, only under a barrier strategy), and when it finished
//! sending the center that answers that push. From these, with the artificial delay the
//! teacher set (a device waits its delay after computing, before pushing):
//! - `computing`: from the previous center sent to `arrival - delay`;
//! - `waiting`: the last `delay` milliseconds before `arrival` (never more than the gap);
//! - `barrier`: from `arrival` until the round closed (the push was held for slower ones);
//! - `communicating`: from `arrival` (or the round's close) until the answering center was
//!   written to the socket.
//!
//! A round still under way is drawn up to now by [`Activity::open_spans`]: before its push
//! arrives it is all `computing` (the relay cannot yet tell the delay apart), then its
//! `barrier` wait or its answer grows until the center is sent.
//!
//! The center's and the push's time on the network are inside `computing` (the relay cannot
//! see them apart); on a LAN they are milliseconds against rounds of hundreds.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

/// Spans kept for the dashboards (a few minutes of a full classroom).
pub const SPAN_CAPACITY: usize = 20_000;
/// Pushes per device kept for its steps per second.
pub const RATE_PUSHES: usize = 8;
/// Answered pushes per device whose verdict (staleness, accepted or refused) is kept for
/// the device table and its state ([`crate::devices::device_alert`]).
pub const RECENT_VERDICTS: usize = 8;

/// What a device was doing during a span.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SpanKind {
    Computing,
    /// The teacher's artificial delay.
    Waiting,
    /// Held at a barrier until the round closed.
    Barrier,
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
    infer_round(worker, prev_sent, arrival, None, sent, delay_ms)
}

/// [`infer_spans`] for a push a barrier held until `released`: the time from `arrival` to
/// `released` (clamped to `[arrival, sent]`) is `barrier`, the rest of the answer
/// `communicating`. The spans still tile `[prev_sent, sent]` in time order.
pub fn infer_round(
    worker: u64,
    prev_sent: Option<u64>,
    arrival: u64,
    released: Option<u64>,
    sent: u64,
    delay_ms: u32,
) -> Vec<Span> {
    let span = |kind, start_ms, end_ms| Span {
        worker,
        kind,
        start_ms,
        end_ms,
    };
    let mut out = Vec::with_capacity(4);
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
    let answered = released.map_or(arrival, |r| r.clamp(arrival, sent.max(arrival)));
    if answered > arrival {
        out.push(span(SpanKind::Barrier, arrival, answered));
    }
    if sent > answered {
        out.push(span(SpanKind::Communicating, answered, sent));
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
    /// Whether that push is held at a barrier.
    held: bool,
    /// When the barrier released it (the round closed or was abandoned).
    released: Option<u64>,
    /// Its last pushes, `(wall_ms, local_steps)`, oldest first.
    recent: VecDeque<(u64, u32)>,
    /// The verdicts of its last [`RECENT_VERDICTS`] answered pushes, oldest first.
    verdicts: VecDeque<PushMark>,
}

/// One answered push as the device table shows it: its staleness and its verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PushMark {
    /// Staleness in versions (refused pushes too).
    pub tau: u64,
    pub accepted: bool,
    /// 0 when accepted, else the refusal's error code.
    pub code: u16,
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

    /// A push from `worker` arrived at `arrival`, before the room handled it: from now on
    /// its round is waiting for its answer (or for the barrier).
    pub fn arrived(&mut self, worker: u64, arrival: u64) {
        let t = self.tracks.entry(worker).or_default();
        t.pending = Some(arrival);
        t.held = false;
        t.released = None;
    }

    /// `worker`'s push is held at a barrier.
    pub fn held(&mut self, worker: u64) {
        if let Some(t) = self.tracks.get_mut(&worker) {
            t.held = t.pending.is_some();
        }
    }

    /// The barrier released `worker`'s held push at `at` (its round closed or was
    /// abandoned); its answer is being sent.
    pub fn released(&mut self, worker: u64, at: u64) {
        if let Some(t) = self.tracks.get_mut(&worker)
            && t.held
        {
            t.held = false;
            t.released = Some(at);
        }
    }

    /// `worker`'s connection ended: it has no round under way.
    pub fn left(&mut self, worker: u64) {
        if let Some(t) = self.tracks.get_mut(&worker) {
            t.last_sent = None;
            t.pending = None;
            t.held = false;
            t.released = None;
        }
    }

    /// One of `worker`'s pushes was answered (accepted or refused) with `mark`.
    pub fn verdict(&mut self, worker: u64, mark: PushMark) {
        let t = self.tracks.entry(worker).or_default();
        if t.verdicts.len() == RECENT_VERDICTS {
            t.verdicts.pop_front();
        }
        t.verdicts.push_back(mark);
    }

    /// Forgets every device's verdicts (the room was reset: they judged the old run).
    pub fn clear_verdicts(&mut self) {
        for t in self.tracks.values_mut() {
            t.verdicts.clear();
        }
    }

    /// The verdicts of `worker`'s last [`RECENT_VERDICTS`] answered pushes, oldest first.
    pub fn verdicts(&self, worker: u64) -> Vec<PushMark> {
        self.tracks
            .get(&worker)
            .map(|t| t.verdicts.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Since when `worker`'s push has been held at a barrier, if it is now.
    pub fn held_since(&self, worker: u64) -> Option<u64> {
        let t = self.tracks.get(&worker)?;
        t.pending.filter(|_| t.held)
    }

    /// The spans of every round still under way, drawn up to `now`, for the devices that
    /// `live` gives a delay for (connected and training; their artificial delay): `computing`
    /// since its center was sent while no push has arrived; once one has, the round's spans
    /// as [`infer_round`] splits them, its `barrier` wait up to `now` while held, or its
    /// answer up to `now`. [`Activity::center_sent`] records the same round for good.
    pub fn open_spans(&self, now: u64, live: impl Fn(u64) -> Option<u32>) -> Vec<Span> {
        let mut out = Vec::new();
        for (&worker, t) in &self.tracks {
            let Some(delay) = live(worker) else { continue };
            match t.pending {
                Some(arrival) => {
                    let released = if t.held { Some(now) } else { t.released };
                    let end = now.max(arrival);
                    out.extend(infer_round(
                        worker,
                        t.last_sent,
                        arrival,
                        released,
                        end,
                        delay,
                    ));
                }
                None => {
                    if let Some(sent) = t.last_sent.filter(|&s| s < now) {
                        out.push(Span {
                            worker,
                            kind: SpanKind::Computing,
                            start_ms: sent,
                            end_ms: now,
                        });
                    }
                }
            }
        }
        out
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
        let released = t.released.take();
        t.held = false;
        let spans = infer_round(worker, t.last_sent, arrival, released, sent, delay_ms);
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

    /// Forgets a device's recent pushes (its rate), after a change of its delay.
    pub fn forget_rate(&mut self, worker: u64) {
        if let Some(t) = self.tracks.get_mut(&worker) {
            t.recent.clear();
        }
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

        /// With a barrier: the spans still tile the round in order, the barrier lies
        /// inside `[arrival, released]`, and nothing but communicating follows it.
        #[test]
        fn a_barrier_round_tiles_too(
            prev in prop::option::of(0u64..10_000),
            arrival in 0u64..20_000,
            held in 0u64..5_000,
            answer in 0u64..500,
            delay in 0u32..20_000,
        ) {
            let released = arrival + held;
            let sent = released + answer;
            let spans = infer_round(7, prev, arrival, Some(released), sent, delay);
            for w in spans.windows(2) {
                prop_assert_eq!(w[0].end_ms, w[1].start_ms);
            }
            let barrier: Vec<_> = spans.iter().filter(|s| s.kind == SpanKind::Barrier).collect();
            prop_assert!(barrier.len() <= 1);
            for b in &barrier {
                prop_assert!(b.start_ms == arrival && b.end_ms == released);
            }
            prop_assert_eq!(barrier.len(), usize::from(held > 0));
            prop_assert_eq!(spans.last().map(|s| s.end_ms), (sent > prev.filter(|&p| p <= arrival).unwrap_or(arrival)).then_some(sent));
            // The same round without the barrier differs only in how [arrival, sent] is named.
            let plain = infer_spans(7, prev, arrival, sent, delay);
            let before = |v: &[Span]| v.iter().filter(|s| s.end_ms <= arrival).copied().collect::<Vec<_>>();
            prop_assert_eq!(before(&spans), before(&plain));
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

    #[test]
    fn a_held_push_is_drawn_at_the_barrier_up_to_now_and_then_for_good() {
        let mut a = Activity::default();
        let live = |_: u64| Some(0u32);
        a.joined(1, 0);
        // Computing: one open span from the center sent until now.
        assert_eq!(
            a.open_spans(500, live),
            vec![Span {
                worker: 1,
                kind: SpanKind::Computing,
                start_ms: 0,
                end_ms: 500
            }]
        );
        a.arrived(1, 1000);
        a.held(1);
        assert_eq!(a.held_since(1), Some(1000));
        let open: Vec<_> = a
            .open_spans(4000, live)
            .iter()
            .map(|s| (s.kind, s.start_ms, s.end_ms))
            .collect();
        assert_eq!(
            open,
            vec![
                (SpanKind::Computing, 0, 1000),
                (SpanKind::Barrier, 1000, 4000)
            ]
        );
        // The round closes at 5000; the answer is written at 5010.
        a.pushed(1, 1000, 8);
        a.released(1, 5000);
        assert_eq!(a.held_since(1), None);
        a.center_sent(1, 5010, 0);
        let (spans, _) = a.spans_since(0);
        let kinds: Vec<_> = spans
            .iter()
            .map(|s| (s.kind, s.start_ms, s.end_ms))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (SpanKind::Computing, 0, 1000),
                (SpanKind::Barrier, 1000, 5000),
                (SpanKind::Communicating, 5000, 5010),
            ]
        );
        // A device that is not live, or that left, has no open span.
        assert!(a.open_spans(6000, |_| None).is_empty());
        a.left(1);
        assert!(a.open_spans(6000, live).is_empty());
    }

    #[test]
    fn verdicts_keep_the_newest_and_a_reset_forgets_them() {
        let mut a = Activity::default();
        for tau in 0..20 {
            a.verdict(
                2,
                PushMark {
                    tau,
                    accepted: tau < 10,
                    code: if tau < 10 { 0 } else { 8 },
                },
            );
        }
        let v = a.verdicts(2);
        assert_eq!(v.len(), RECENT_VERDICTS);
        assert_eq!(v.first().map(|m| m.tau), Some(20 - RECENT_VERDICTS as u64));
        assert_eq!(
            v.last().map(|m| (m.tau, m.accepted, m.code)),
            Some((19, false, 8))
        );
        assert!(a.verdicts(3).is_empty());
        a.clear_verdicts();
        assert!(a.verdicts(2).is_empty());
    }
}
