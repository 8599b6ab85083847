//! Center evaluation: every few seconds, each room's newest center is scored on the test
//! digits, off the async reactor, and the score is kept with the room.
//!
//! The scoring itself is a plain function ([`Evaluator`]) so that the relay does not
//! depend on how it is done: `easel serve` passes the CPU backend's
//! `easel_client::cpu::evaluate` over the 2,000 test digits.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::Shutdown;
use crate::hub::Hub;
use crate::room::wall_ms;
use crate::runs::EvalPoint;

/// Scores a parameter vector: `(accuracy in [0, 1], mean loss)`. Runs on a blocking thread.
pub type Evaluator = Arc<dyn Fn(&[f32]) -> (f64, f64) + Send + Sync>;

/// Evaluates every room whose center changed since the last call; returns how many were
/// evaluated. `last` remembers the version evaluated per room.
pub async fn evaluate_rooms(
    hub: &Hub,
    evaluator: &Evaluator,
    last: &mut HashMap<String, u64>,
) -> usize {
    evaluate_due(hub, evaluator, last, |_, _| true).await
}

/// [`evaluate_rooms`] for the rooms `due` says are due.
async fn evaluate_due(
    hub: &Hub,
    evaluator: &Evaluator,
    last: &mut HashMap<String, u64>,
    mut due: impl FnMut(&str, &crate::hub::RoomSlot) -> bool,
) -> usize {
    let mut done = 0;
    for (code, slot) in hub.rooms() {
        if !due(&code, &slot) {
            continue;
        }
        let ticket = slot.center_for_eval();
        let version = ticket.version;
        if last.get(&code) == Some(&version) {
            continue;
        }
        let f = evaluator.clone();
        let center = ticket.center.clone();
        // A forward pass over 2,000 digits takes tens of milliseconds: not on the reactor.
        let Ok((accuracy, loss)) = tokio::task::spawn_blocking(move || f(&center)).await else {
            tracing::warn!(room = %code, "evaluation panicked");
            continue;
        };
        // A reset while this ran makes the point one of no run: the ticket's epoch is
        // then an older one, and record_scored drops it.
        let point = EvalPoint {
            wall_ms: wall_ms(),
            version,
            accuracy,
            loss,
        };
        let recorded = slot.record_scored(&ticket, point);
        last.insert(code, version);
        done += usize::from(recorded);
    }
    done
}

/// Whether a room last evaluated `since` ago (never: `None`) is due: after `every`, or
/// after [`LESSON_EVERY`] while its lesson's arm runs. A tick may come a little early:
/// within a tenth of the interval counts.
fn due(since: Option<Duration>, every: Duration, lesson_running: bool) -> bool {
    let Some(since) = since else { return true };
    let after = |d: Duration| since.saturating_add(d / 10) >= d;
    after(every) || (lesson_running && after(LESSON_EVERY))
}

/// How often a room is evaluated while one of its lesson's arms runs: the resolution of
/// the arm's time to the target ([`crate::lesson`]).
pub const LESSON_EVERY: Duration = Duration::from_secs(1);

/// Evaluates every room's center each `every` (only when it changed) until `shutdown`, and
/// a room whose lesson's arm runs each [`LESSON_EVERY`] when that is sooner.
pub fn spawn(
    hub: Hub,
    evaluator: Evaluator,
    every: Duration,
    mut shutdown: Shutdown,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = HashMap::new();
        let mut at: HashMap<String, tokio::time::Instant> = HashMap::new();
        let mut tick = tokio::time::interval(every.min(LESSON_EVERY));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.wait() => break,
                _ = tick.tick() => {}
            }
            let now = tokio::time::Instant::now();
            evaluate_due(&hub, &evaluator, &mut last, |code, slot| {
                let since = at.get(code).map(|t| now - *t);
                let ok = due(since, every, slot.lesson_running());
                if ok {
                    at.insert(code.to_string(), now);
                }
                ok
            })
            .await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::RoomSettings;

    #[tokio::test]
    async fn each_new_center_is_evaluated_once() {
        let hub = crate::hub::test_hub("t", RoomSettings::default());
        let code = hub.create_room();
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = calls.clone();
        let evaluator: Evaluator = Arc::new(move |p: &[f32]| {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            (0.5, p.len() as f64)
        });
        let mut last = HashMap::new();
        assert_eq!(evaluate_rooms(&hub, &evaluator, &mut last).await, 1);
        assert_eq!(evaluate_rooms(&hub, &evaluator, &mut last).await, 0);
        let evals = hub.room(&code).unwrap().evals();
        assert_eq!(evals.len(), 1);
        assert_eq!(
            (evals[0].version, evals[0].accuracy, evals[0].loss),
            (0, 0.5, 44_426.0)
        );
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    /// The reset race: the evaluator took the center before a reset and answers after it.
    /// Its score is the old model's and must not open the new run.
    #[tokio::test]
    async fn a_score_from_before_a_reset_is_not_recorded_in_the_new_run() {
        let hub = crate::hub::test_hub("t", RoomSettings::default());
        let code = hub.create_room();
        let slot = hub.room(&code).unwrap();
        let (old, _) = slot.center();
        let run = slot.start_run("fresh", true);
        let (new, _) = slot.center();
        assert!(new > old);
        let point = |version| EvalPoint {
            wall_ms: wall_ms(),
            version,
            accuracy: 0.937,
            loss: 0.2,
        };
        assert!(!slot.record_eval(point(old)));
        assert!(slot.evals().is_empty());
        let json = slot.run_json(run).unwrap().to_string();
        assert!(!json.contains("0.937"), "{json}");
        assert!(slot.record_eval(point(new)));
        assert_eq!(slot.evals().len(), 1);
        assert!(slot.run_json(run).unwrap().to_string().contains("0.937"));
    }

    #[test]
    fn a_room_is_due_every_interval_and_every_second_while_a_lesson_runs() {
        let s = Duration::from_secs;
        let every = s(5);
        assert!(due(None, every, false));
        assert!(!due(Some(s(1)), every, false));
        assert!(due(Some(s(1)), every, true));
        assert!(!due(Some(Duration::from_millis(500)), every, true));
        assert!(
            due(Some(Duration::from_millis(4_600)), every, false),
            "a tick a little early"
        );
        assert!(due(Some(s(6)), every, false));
    }

    /// On tokio's paused clock: the loop scores the first center at once, a newer center
    /// only at the next tick (`every` later), and never the same version twice.
    #[tokio::test(start_paused = true)]
    async fn the_loop_scores_each_new_center_at_the_next_tick() {
        let hub = crate::hub::test_hub("t", RoomSettings::default());
        let code = hub.create_room();
        let slot = hub.room(&code).unwrap();
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = calls.clone();
        let evaluator: Evaluator = Arc::new(move |_: &[f32]| {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            (0.5, 1.0)
        });
        let calls = move || calls.load(std::sync::atomic::Ordering::SeqCst);
        let every = Duration::from_secs(5);
        let (stop, shutdown) = Shutdown::new();
        let task = spawn(hub.clone(), evaluator, every, shutdown);
        let settle = Duration::from_millis(10);
        tokio::time::sleep(settle).await;
        assert_eq!(calls(), 1, "the first tick is immediate");
        slot.start_run("fresh", true); // a newer center
        tokio::time::sleep(every - 2 * settle).await;
        assert_eq!(calls(), 1, "not before the next tick");
        tokio::time::sleep(2 * settle).await;
        assert_eq!(calls(), 2);
        tokio::time::sleep(10 * every).await;
        assert_eq!(calls(), 2, "no new center, no new score");
        stop.fire();
        task.await.unwrap();
    }

    /// The same race through [`evaluate_rooms`] itself: the teacher resets the room while
    /// the evaluator is scoring the old center (93.7%). The fresh run must not get that
    /// score, and the next evaluation scores the new center.
    #[tokio::test]
    async fn a_reset_during_an_evaluation_never_puts_the_old_score_in_the_new_run() {
        let hub = crate::hub::test_hub("t", RoomSettings::default());
        let code = hub.create_room();
        let slot = hub.room(&code).unwrap();
        let resets = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (s, r) = (slot.clone(), resets.clone());
        let evaluator: Evaluator = Arc::new(move |_: &[f32]| {
            // Only the first call races: the reset lands while the old center is scored.
            if r.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                s.start_run("fresh", true);
                (0.937, 0.2)
            } else {
                (0.1, 2.3)
            }
        });
        let mut last = HashMap::new();
        assert_eq!(evaluate_rooms(&hub, &evaluator, &mut last).await, 0);
        let run = slot.runs_json()["current"].as_u64().unwrap();
        assert!(slot.evals().is_empty(), "{:?}", slot.evals());
        assert!(!slot.run_json(run).unwrap().to_string().contains("0.937"));
        assert_eq!(evaluate_rooms(&hub, &evaluator, &mut last).await, 1);
        let evals = slot.evals();
        assert_eq!(evals.len(), 1);
        assert_eq!(
            (evals[0].version, evals[0].accuracy),
            (slot.center().0, 0.1)
        );
    }

    /// A ticket taken before a reset is refused after it, and a score is recorded under its
    /// ticket's version, whatever version the point claims (so it can never pass for a
    /// newer center's). The epoch check and the version floor are independent guards.
    #[tokio::test]
    async fn a_ticket_from_before_a_reset_is_refused_whatever_its_version() {
        let hub = crate::hub::test_hub("t", RoomSettings::default());
        let slot = hub.room(&hub.create_room()).unwrap();
        let before = slot.center_for_eval();
        slot.start_run("fresh", true);
        let after = slot.center_for_eval();
        let point = EvalPoint {
            wall_ms: wall_ms(),
            version: u64::MAX,
            accuracy: 0.937,
            loss: 0.2,
        };
        assert!(!slot.record_scored(&before, point));
        assert!(slot.evals().is_empty());
        assert!(slot.record_scored(&after, point));
        assert_eq!(
            slot.evals()[0].version,
            after.version,
            "the ticket's version is kept"
        );
    }
}
