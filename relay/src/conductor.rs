//! Moves every room's lesson on ([`crate::hub::RoomSlot::lesson_tick`]): an arm ends when
//! the center reached the target or its time is up, and the next arm or the reveal follows.

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::Shutdown;
use crate::hub::Hub;

/// How often lessons are looked at: an arm ends at most this late after the evaluation
/// that reached the target.
pub const EVERY: Duration = Duration::from_millis(500);

/// Looks at every room's lesson each [`EVERY`] until `shutdown`.
pub fn spawn(hub: Hub, mut shutdown: Shutdown) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.wait() => break,
                _ = tick.tick() => {}
            }
            for (_, slot) in hub.rooms() {
                slot.lesson_tick();
            }
        }
    })
}
