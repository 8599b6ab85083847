//! The teacher's live dashboard: `GET /ws/dashboard?room=CODE&admin=TOKEN`, a WebSocket of
//! JSON text messages. On connect the relay sends a `snapshot` (room, join URLs and QR code,
//! settings, devices, the current run's history); then every [`UPDATE_EVERY`] an `update`
//! with what is new since the last one. A new run (or a reset) sends a new snapshot.
//! PROTOCOL.md, "Teacher API", lists every field.
//!
//! Each connection has its own interval. It takes the room's lock once per tick to copy
//! what is new (a few hundred points at most), and serializes after releasing it.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::ws::Message as WsMessage;
use warp::{Filter, Reply};

use crate::Shutdown;
use crate::activity::{Activity, Counter, Span, bytes_per_s};
use crate::backends::Backends;
use crate::devices::{DeviceRow, WorkRefused, device_rows, work_refused};
use crate::hub::{Hub, RoomSlot};
use crate::room::{Room, SwarmView, trains, wall_ms};
use crate::runs::{EvalPoint, PushPoint, Runs};
use crate::teacher::SettingsView;
use crate::ws::WsConfig;
use easel_protocol::codes::close;
use easel_protocol::settings::codec_names;

/// How often a dashboard gets an update.
pub const UPDATE_EVERY: Duration = Duration::from_millis(500);
/// Push points a snapshot carries at most (the newest); the run export has them all.
pub const SNAPSHOT_PUSHES: usize = 5_000;
/// How far back a snapshot's activity spans go.
pub const SNAPSHOT_SPANS_MS: u64 = 120_000;

/// Where a dashboard connection is: what it has already been sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Cursor {
    run: u64,
    pushes: u64,
    evals: u64,
    spans: u64,
    counter: Counter,
}

/// What a tick copies out of the room under its lock.
struct Gathered {
    version: u64,
    settings: SettingsView,
    devices: Vec<DeviceRow>,
    evals: Vec<EvalPoint>,
    pushes: Vec<PushPoint>,
    spans: Vec<Span>,
    /// The rounds under way, drawn up to now (replaced by every message).
    open_spans: Vec<Span>,
    histogram: Vec<(u64, u64)>,
    refused_histogram: Vec<(u64, u64)>,
    work_refused: Option<WorkRefused>,
    counter: Counter,
    totals: serde_json::Value,
    swarm: Option<SwarmView>,
}

/// Copies what is new since `cur` (everything of the current run when its run differs)
/// and moves `cur` on. Returns whether the run changed (then a snapshot is due).
fn gather(
    room: &Room,
    runs: &Runs,
    activity: &Activity,
    backends: &Backends,
    cur: &mut Cursor,
) -> (bool, Gathered) {
    let run = runs.current();
    let now = wall_ms();
    let fresh = cur.run != run.id;
    if fresh {
        let kept = run.pushes.total();
        *cur = Cursor {
            run: run.id,
            pushes: kept.saturating_sub(SNAPSHOT_PUSHES as u64),
            evals: 0,
            spans: 0,
            counter: cur.counter,
        };
    }
    let (mut spans, next_span) = activity.spans_since(cur.spans);
    if fresh {
        spans.retain(|s| s.end_ms + SNAPSHOT_SPANS_MS >= now);
    }
    let t = room.ledger().totals();
    let counter = Counter {
        wall_ms: now,
        bytes_in: t.bytes_in,
        bytes_out: t.bytes_out,
    };
    let live = |id: u64| {
        room.workers()
            .get(&id)
            .filter(|w| trains(w.kind) && w.connected && !w.paused && !w.removed)
            .map(|w| w.delay_ms)
    };
    let name = |id: u64| {
        room.workers()
            .get(&id)
            .map_or_else(|| format!("#{id}"), |w| w.name.clone())
    };
    let g = Gathered {
        version: room.center().0,
        settings: SettingsView::of(room.settings()),
        devices: device_rows(room, activity, backends, Instant::now(), now),
        evals: run.evals.since(cur.evals),
        pushes: run.pushes.since(cur.pushes),
        spans,
        open_spans: activity.open_spans(now, live),
        histogram: room
            .ledger()
            .histogram()
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect(),
        refused_histogram: room
            .ledger()
            .refused_histogram()
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect(),
        work_refused: work_refused(room.ledger().records(), now, &room.settings().hyper, name),
        counter,
        totals: serde_json::to_value(t).unwrap_or_default(),
        swarm: room.swarm_view(),
    };
    cur.pushes = run.pushes.total();
    cur.evals = run.evals.total();
    cur.spans = next_span;
    (fresh, g)
}

/// The `snapshot` message.
fn snapshot(hub: &Hub, slot: &RoomSlot, code: &str, g: Gathered) -> serde_json::Value {
    let join_urls = hub.join_urls(code);
    let qr_url = join_urls
        .iter()
        .find(|u| u.starts_with("https://"))
        .or(join_urls.first())
        .cloned();
    let qr_svg = qr_url.as_deref().and_then(|u| qr_svg(u).ok());
    let runs = slot.runs_json();
    let run = slot.with_view(|_, runs, _, _| {
        let r = runs.current();
        serde_json::json!({
            "id": r.id, "name": r.name, "started_ms": r.started_ms, "settings": r.settings,
        })
    });
    serde_json::json!({
        "type": "snapshot",
        "server_ms": g.counter.wall_ms,
        "room": code,
        "join_urls": join_urls,
        "qr_url": qr_url,
        "qr_svg": qr_svg,
        "settings": g.settings,
        "codecs": codec_names(),
        "schema": easel_protocol::settings::SCHEMA,
        "version": g.version,
        "run": run,
        "runs": runs["runs"],
        "devices": g.devices,
        "evals": g.evals,
        "pushes": g.pushes,
        "spans": g.spans,
        "open_spans": g.open_spans,
        "histogram": g.histogram,
        "refused_histogram": g.refused_histogram,
        "work_refused": g.work_refused,
        "totals": g.totals,
        "swarm": g.swarm,
        "lesson": slot.lesson_json(),
        "lessons": crate::lesson::PRESETS,
    })
}

/// The `update` message; `prev` is the counter of the previous message.
fn update(slot: &RoomSlot, run: u64, prev: Counter, g: Gathered) -> serde_json::Value {
    let (bin, bout) = bytes_per_s(prev, g.counter);
    serde_json::json!({
        "type": "update",
        "server_ms": g.counter.wall_ms,
        "run": run,
        "version": g.version,
        "settings": g.settings,
        "devices": g.devices,
        "evals": g.evals,
        "pushes": g.pushes,
        "spans": g.spans,
        "open_spans": g.open_spans,
        "histogram": g.histogram,
        "refused_histogram": g.refused_histogram,
        "work_refused": g.work_refused,
        "bytes_per_s": { "in": bin, "out": bout },
        "totals": g.totals,
        "swarm": g.swarm,
        "lesson": slot.lesson_json(),
    })
}

/// The URL as an SVG QR code (black on white, with its quiet zone), scalable to any size.
pub fn qr_svg(url: &str) -> Result<String, qrcode::types::QrError> {
    let code = qrcode::QrCode::new(url.as_bytes())?;
    Ok(code
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(256, 256)
        .quiet_zone(true)
        .build())
}

/// `GET /ws/dashboard?room=CODE&admin=TOKEN`: 401 without the admin token, 404 for an
/// unknown room, else the dashboard socket, pinged as `cfg` says.
pub fn route(hub: Hub, cfg: WsConfig, shutdown: Shutdown) -> BoxedFilter<(Response,)> {
    warp::path!("ws" / "dashboard")
        .and(warp::query::<std::collections::HashMap<String, String>>())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::ws())
        .map(
            move |q: std::collections::HashMap<String, String>,
                  auth: Option<String>,
                  upgrade: warp::ws::Ws| {
                let token = q
                    .get("admin")
                    .cloned()
                    .or_else(|| auth.and_then(|a| a.strip_prefix("Bearer ").map(str::to_string)));
                if !hub.is_admin(token.as_deref()) {
                    return crate::reply::unauthorized();
                }
                let code = q.get("room").map(|c| crate::room::normalize_code(c));
                let Some((code, slot)) = code.and_then(|c| hub.room(&c).map(|s| (c, s))) else {
                    return crate::reply::status_json(
                        StatusCode::NOT_FOUND,
                        "no such room: pass ?room=CODE with the code `easel serve` printed",
                    );
                };
                let hub = hub.clone();
                let shutdown = shutdown.clone();
                upgrade
                    .on_upgrade(move |socket| serve(socket, hub, slot, code, cfg, shutdown))
                    .into_response()
            },
        )
        .boxed()
}

/// One dashboard connection until it closes, stops answering pings for `cfg.dead_after`
/// (or a send blocks that long), or the relay shuts down.
async fn serve(
    socket: warp::ws::WebSocket,
    hub: Hub,
    slot: std::sync::Arc<RoomSlot>,
    code: String,
    cfg: WsConfig,
    mut shutdown: Shutdown,
) {
    let (mut tx, mut rx) = socket.split();
    let mut cur = Cursor::default();
    let mut tick = tokio::time::interval(UPDATE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let send_timeout = cfg.dead_after;
    let mut last_heard = tokio::time::Instant::now();
    let mut ping = tokio::time::interval_at(last_heard + cfg.ping_every, cfg.ping_every);
    loop {
        tokio::select! {
            _ = shutdown.wait() => {
                let _ = tx.send(WsMessage::close_with(close::GOING_AWAY, "relay shutting down")).await;
                break;
            }
            m = rx.next() => match m {
                Some(Ok(m)) if !m.is_close() => {
                    last_heard = tokio::time::Instant::now();
                    continue;
                }
                _ => break,
            },
            _ = ping.tick() => {
                let msg = if last_heard.elapsed() >= cfg.dead_after {
                    WsMessage::close_with(close::GOING_AWAY, "no answer to pings")
                } else {
                    WsMessage::ping(bytes::Bytes::new())
                };
                let dead = msg.is_close();
                let sent = tokio::time::timeout(send_timeout, tx.send(msg)).await;
                if dead || !matches!(sent, Ok(Ok(()))) {
                    tracing::debug!(room = %code, "dashboard dropped: no answer to pings");
                    break;
                }
            }
            _ = tick.tick() => {
                let prev = cur.counter;
                let (fresh, g) = slot.with_view(|room, runs, activity, backends| {
                    gather(room, runs, activity, backends, &mut cur)
                });
                cur.counter = g.counter;
                let msg = if fresh {
                    snapshot(&hub, &slot, &code, g)
                } else {
                    update(&slot, cur.run, prev, g)
                };
                let text = msg.to_string();
                match tokio::time::timeout(send_timeout, tx.send(WsMessage::text(text))).await {
                    Ok(Ok(())) => {}
                    _ => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activity::{DeviceState, SpanKind};
    use crate::room::RoomSettings;
    use easel_protocol::message::Join;
    use easel_protocol::{Backend, ClientKind, Codec, LENET5_28, Push};

    #[test]
    fn a_cursor_gets_each_point_once_and_a_new_run_is_a_snapshot() {
        let hub = crate::hub::test_hub("t", RoomSettings::default());
        let slot = hub.room(&hub.create_room()).unwrap();
        let join = Join {
            room: String::new(),
            kind: ClientKind::Bot,
            backend: Backend::Cpu,
            capabilities: 0,
            layout_hash: LENET5_28.layout_hash(),
            resume_worker: None,
        };
        let s = hub
            .join(
                &Join {
                    room: slot.with_room(|r| r.code().to_string()),
                    ..join
                },
                false,
            )
            .unwrap();
        let mut rng = rand::rng();
        let mut push = |v| Push {
            base_version: v,
            local_steps: 4,
            samples: 32,
            loss: 1.0,
            payload: easel_protocol::codec::encode(Codec::Fp32, &[0.0; 44_426], &mut rng),
        };
        let p = push(0);
        slot.push(s.worker_id, &p, 10, 0);
        slot.center_sent(s.worker_id);
        let mut cur = Cursor::default();
        let (fresh, g) = slot.with_view(|r, runs, a, b| gather(r, runs, a, b, &mut cur));
        assert!(fresh);
        assert_eq!((g.pushes.len(), g.devices.len()), (1, 1));
        assert_eq!(g.devices[0].state, DeviceState::Training);
        assert!(g.spans.iter().all(|sp| sp.worker == s.worker_id));
        let (fresh, g) = slot.with_view(|r, runs, a, b| gather(r, runs, a, b, &mut cur));
        assert!(!fresh && g.pushes.is_empty());
        let p = push(1);
        slot.push(s.worker_id, &p, 10, 0);
        let (_, g) = slot.with_view(|r, runs, a, b| gather(r, runs, a, b, &mut cur));
        assert_eq!(g.pushes.len(), 1);
        assert_eq!(g.histogram, vec![(0, 2)]);
        slot.start_run("second", false);
        let (fresh, g) = slot.with_view(|r, runs, a, b| gather(r, runs, a, b, &mut cur));
        assert!(fresh && g.pushes.is_empty());
        let json = snapshot(&hub, &slot, "ABCDE", g);
        assert_eq!(json["type"], "snapshot");
        assert_eq!(json["run"]["name"], "second");
    }

    fn joined(hub: &Hub, slot: &RoomSlot) -> u64 {
        let join = Join {
            room: slot.with_room(|r| r.code().to_string()),
            kind: ClientKind::Bot,
            backend: Backend::Cpu,
            capabilities: 0,
            layout_hash: LENET5_28.layout_hash(),
            resume_worker: None,
        };
        hub.join(&join, false).unwrap().worker_id
    }

    fn push(base_version: u64) -> Push {
        Push {
            base_version,
            local_steps: 4,
            samples: 32,
            loss: 1.0,
            payload: easel_protocol::codec::encode(Codec::Fp32, &[0.0; 44_426], &mut rand::rng()),
        }
    }

    /// A device whose pushes come too late: its row counts them refused and turns red with
    /// the reason, the refused histogram has them, and the room's banner offers the fix.
    #[test]
    fn refused_work_is_counted_shown_red_and_bannered() {
        let mut settings = RoomSettings::default();
        settings.hyper.tau_max = 1;
        let hub = crate::hub::test_hub("t", settings);
        let slot = hub.room(&hub.create_room()).unwrap();
        let (slow, fast) = (joined(&hub, &slot), joined(&hub, &slot));
        for v in 0..4 {
            slot.push(fast, &push(v), 10, 0);
            slot.center_sent(fast);
        }
        for _ in 0..2 {
            slot.push(slow, &push(0), 10, 0);
            slot.center_sent(slow);
        }
        let mut cur = Cursor::default();
        let (_, g) = slot.with_view(|r, runs, a, b| gather(r, runs, a, b, &mut cur));
        let row = g.devices.iter().find(|d| d.id == slow).unwrap();
        assert_eq!((row.pushes, row.accepted, row.refused), (2, 0, 2));
        assert_eq!(
            row.recent
                .iter()
                .map(|m| (m.tau, m.accepted))
                .collect::<Vec<_>>(),
            [(4, false), (4, false)]
        );
        let alert = row.alert.as_ref().expect("an alert");
        assert_eq!(alert.level, crate::devices::Level::Red);
        assert!(
            alert
                .reason
                .starts_with("4 versions late, limit 1: its work is thrown away"),
            "{}",
            alert.reason
        );
        assert!(
            g.devices
                .iter()
                .find(|d| d.id == fast)
                .unwrap()
                .alert
                .is_none()
        );
        assert_eq!(g.refused_histogram, vec![(4, 2)]);
        assert_eq!(g.histogram, vec![(0, 4)]);
        let banner = g.work_refused.clone().expect("2 of 6 pushes refused");
        assert_eq!((banner.pushes, banner.refused, banner.max_tau), (6, 2, 4));
        assert_eq!(banner.fixes[0].settings.tau_max, Some(8));
        let json = update(&slot, cur.run, Counter::default(), g);
        assert_eq!(json["work_refused"]["refused"], 2);
        assert_eq!(json["devices"][0]["alert"]["level"], "red");
        assert_eq!(json["refused_histogram"][0][1], 2);
    }

    /// Under FedAvg a held push is drawn at the barrier up to now, and its device says how
    /// many it waits for once it has waited a second.
    #[test]
    fn a_held_push_waits_at_the_barrier_on_the_dashboard() {
        let mut settings = RoomSettings::default();
        settings.hyper.merge = easel_protocol::Merge::Fedavg { m_of_n: None };
        let hub = crate::hub::test_hub("t", settings);
        let slot = hub.room(&hub.create_room()).unwrap();
        let (a, _b, _c) = (
            joined(&hub, &slot),
            joined(&hub, &slot),
            joined(&hub, &slot),
        );
        std::thread::sleep(Duration::from_millis(20));
        assert!(slot.push(a, &push(0), 10, 0).is_none(), "held");
        std::thread::sleep(Duration::from_millis(1100));
        let mut cur = Cursor::default();
        let (_, g) = slot.with_view(|r, runs, act, b| gather(r, runs, act, b, &mut cur));
        let open: Vec<_> = g
            .open_spans
            .iter()
            .filter(|s| s.worker == a)
            .map(|s| s.kind)
            .collect();
        assert_eq!(open, [SpanKind::Computing, SpanKind::Barrier]);
        assert!(
            g.open_spans
                .iter()
                .filter(|s| s.worker != a)
                .all(|s| s.kind == SpanKind::Computing)
        );
        let row = g.devices.iter().find(|d| d.id == a).unwrap();
        let alert = row.alert.as_ref().expect("an amber alert");
        assert_eq!(alert.level, crate::devices::Level::Amber);
        assert!(
            alert
                .reason
                .starts_with("waiting for 2 slower devices at the FedAvg barrier"),
            "{}",
            alert.reason
        );
    }

    #[test]
    fn the_qr_code_is_an_svg() {
        let svg = qr_svg("https://192.168.1.20:8443/?room=ABCDE").unwrap();
        assert!(svg.contains("<svg") && svg.contains("</svg>"));
    }
}
