//! The device table the dashboard shows and the state JSON carries: one [`DeviceRow`] per
//! training device that ever joined. Pure: the room, its activity and its backend reports in,
//! rows out.

use std::time::Instant;

use serde::Serialize;

use crate::activity::{Activity, DeviceState, device_state};
use crate::backends::{BackendView, Backends};
use crate::room::{Room, kind_name, trains};

/// One row of the device table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeviceRow {
    pub id: u64,
    pub name: String,
    pub kind: &'static str,
    /// The backend it trains on: its last `Device` report's, else its Join's.
    pub backend: &'static str,
    /// Which backend trains and why, with the speeds it measured; `None` before a tab's
    /// first report (and always for bots).
    pub backend_report: Option<BackendView>,
    /// The backend the teacher chose for it (`auto`, `gpu`, `cpu`), `None` when none.
    pub backend_choice: Option<&'static str>,
    /// Local SGD steps per second over its last pushes.
    pub steps_per_s: Option<f64>,
    pub pushes: u64,
    pub accepted: u64,
    /// Mean staleness of its accepted pushes.
    pub mean_tau: Option<f64>,
    /// `||x_i - x~||` of its last accepted push.
    pub distance: Option<f32>,
    /// Seconds since the relay last heard from it.
    pub last_seen_s: f64,
    pub state: DeviceState,
    pub delay_ms: u32,
    pub shard: Option<u32>,
}

/// The device table: every training device that ever joined, by id.
pub fn device_rows(
    room: &Room,
    activity: &Activity,
    backends: &Backends,
    now: Instant,
) -> Vec<DeviceRow> {
    let stats = room.ledger().workers();
    room.workers()
        .values()
        .filter(|w| trains(w.kind))
        .map(|w| {
            let s = stats.get(&w.id);
            DeviceRow {
                id: w.id,
                name: w.name.clone(),
                kind: kind_name(w.kind),
                backend: match backends.backend(w.id).unwrap_or(w.backend) {
                    easel_protocol::Backend::Cpu => "cpu",
                    easel_protocol::Backend::Gpu => "gpu",
                },
                backend_report: backends.view(w.id),
                backend_choice: backends.chosen(w.id).map(|c| c.name()),
                steps_per_s: activity.steps_per_s(w.id),
                pushes: s.map_or(0, |s| s.pushes),
                accepted: s.map_or(0, |s| s.accepted),
                mean_tau: s.and_then(|s| s.mean_tau()),
                distance: s
                    .and_then(|s| s.last_worker_distance)
                    .filter(|d| d.is_finite()),
                last_seen_s: now.saturating_duration_since(w.last_seen).as_secs_f64(),
                state: device_state(w.removed, w.connected, w.paused, w.delay_ms),
                delay_ms: w.delay_ms,
                shard: w.shard_index,
            }
        })
        .collect()
}
