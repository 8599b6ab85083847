//! The checkpointing task: every `checkpoint_every`, and once more at shutdown, each room's
//! unsaved state is copied under its lock ([`crate::hub::RoomSlot::checkpoint`]) and written
//! by [`Store::write`] on a blocking thread. Above both the hub and the store, which know
//! nothing of each other.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::Shutdown;
use crate::hub::Hub;
use crate::store::{Cursor, RESTART_GAP, Store, token_sha256};

/// Checkpoints every room once: copies under each room's lock, writes on a blocking
/// thread. Returns how many rooms were written; a failed write is logged and retried next
/// time (the cursor stays).
pub async fn checkpoint_rooms(hub: &Hub, store: &Arc<Store>, token_sha256: &str) -> usize {
    let mut done = 0;
    for (code, slot) in hub.rooms() {
        let ck = slot.checkpoint();
        let made = ck
            .version
            .saturating_sub(slot.saved_cursor().version.unwrap_or(ck.version));
        if made > RESTART_GAP / 4 {
            tracing::warn!(
                room = %code,
                made,
                "a checkpoint interval made more versions than a quarter of RESTART_GAP: \
                 checkpoint more often"
            );
        }
        let (store, token) = (store.clone(), token_sha256.to_string());
        let written = tokio::task::spawn_blocking(move || {
            let r = store.write(&token, &ck);
            (ck, r)
        })
        .await;
        match written {
            Ok((ck, Ok(()))) => {
                slot.set_saved_cursor(Cursor::after(&ck));
                done += 1;
            }
            Ok((_, Err(e))) => tracing::warn!(room = %code, "checkpoint failed: {e}"),
            Err(e) => tracing::warn!(room = %code, "checkpoint panicked: {e}"),
        }
    }
    done
}

/// Checkpoints every room each `every` until `shutdown`, then once more.
pub fn spawn(
    hub: Hub,
    store: Arc<Store>,
    every: Duration,
    mut shutdown: Shutdown,
) -> JoinHandle<()> {
    let token = token_sha256(hub.admin_token());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.wait() => break,
                _ = tick.tick() => {}
            }
            checkpoint_rooms(&hub, &store, &token).await;
        }
        checkpoint_rooms(&hub, &store, &token).await;
    })
}
