//! A relay that a class can lean on, over real sockets on 127.0.0.1: resume tokens, settings
//! that coalesce for a worker that is not reading, dashboards dropped when they stop
//! answering pings, the Origin check, and bots that come back by themselves, through a cut
//! connection and through a relay restart under 60 of them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use easel_bots::{self as bots, BotOptions, BotReport};
use easel_client::data::Split;
use easel_client::model::IMAGE_PIXELS;
use easel_protocol::message::{self, Join, code};
use easel_protocol::{
    Backend, ClientKind, Codec, Control, LENET5_28, Limits, Message, Push, Resume, ResumeToken,
};
use easel_relay::origin::Origin;
use easel_relay::ws::WsConfig;
use easel_relay::{Config, RunningRelay, Shutdown, run};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use warp::Filter;

const TOKEN: &str = "robust-token";
const WAIT: Duration = Duration::from_secs(20);

type Ws = WebSocketStream<TcpStream>;

struct Relay {
    running: RunningRelay,
    stop: oneshot::Sender<()>,
}

impl Relay {
    fn http(&self) -> SocketAddr {
        self.running.http.expect("http listener")
    }

    /// Shuts down (every socket is closed with 1001) and waits until nothing listens.
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.running.wait())
            .await
            .expect("the relay stops");
    }
}

/// A relay with plain HTTP on `addr` (port 0: a free one) and the admin token [`TOKEN`].
async fn start_on(addr: SocketAddr, edit: impl FnOnce(&mut Config)) -> Relay {
    let mut config = Config {
        https: None,
        http: Some(addr),
        admin_token: Some(TOKEN.into()),
        ..Config::new(std::sync::Arc::new(easel_client::Lenet))
    };
    edit(&mut config);
    let files = warp::path("hello").map(|| "static").boxed();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = run(config, files, async move {
        let _ = stopped.await;
    })
    .await
    .expect("relay starts");
    Relay { running, stop }
}

async fn start(edit: impl FnOnce(&mut Config)) -> Relay {
    start_on(SocketAddr::from(([127, 0, 0, 1], 0)), edit).await
}

/// A WebSocket to `path`, with an `Origin` header when given: the socket, or the HTTP
/// status the upgrade was refused with.
async fn try_connect(addr: SocketAddr, path: &str, origin: Option<&str>) -> Result<Ws, u16> {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    let tcp = TcpStream::connect(addr).await.unwrap();
    match tokio_tungstenite::client_async(req, tcp).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("connecting to {path}: {e}"),
    }
}

async fn connect(addr: SocketAddr, path: &str) -> Ws {
    try_connect(addr, path, None).await.expect("upgraded")
}

/// The next binary message, skipping pings and pongs; panics on anything else.
async fn recv(ws: &mut Ws) -> Message {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("an answer in time")
            .expect("open")
            .expect("a message");
        match m {
            WsMessage::Binary(b) => return message::decode(&b, &Limits::default()).unwrap(),
            WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
            other => panic!("expected a binary message, got {other:?}"),
        }
    }
}

/// The close code the connection ends with, reading past anything else.
async fn close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(WsMessage::Close(f))) => return f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

fn join(room: &str, resume: Option<Resume>) -> Vec<u8> {
    message::encode(&Message::Join(Join {
        room: room.into(),
        kind: ClientKind::Bot,
        backend: Backend::Cpu,
        capabilities: 0,
        layout_hash: LENET5_28.layout_hash(),
        resume_worker: resume,
    }))
}

/// Joins `room` as a bot; the socket and its Welcome's id and token.
async fn join_worker(addr: SocketAddr, room: &str, resume: Option<Resume>) -> (Ws, Resume) {
    let mut ws = connect(addr, "/ws").await;
    ws.send(WsMessage::binary(join(room, resume)))
        .await
        .unwrap();
    match recv(&mut ws).await {
        Message::Welcome(w) => (
            ws,
            Resume {
                worker: w.worker_id,
                token: w.resume_token,
            },
        ),
        other => panic!("expected a Welcome, got {other:?}"),
    }
}

fn zero_push(base: u64) -> Vec<u8> {
    let mut rng = rand::rng();
    message::encode(&Message::Push(Push {
        base_version: base,
        local_steps: 1,
        samples: 1,
        loss: 1.0,
        payload: easel_protocol::codec::encode(Codec::Fp32, &[0.0; 44_426], &mut rng),
    }))
}

/// One HTTP/1.1 request with these extra header lines: status and body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A teacher's settings change through the control API, from no page (no Origin).
async fn set_alpha(addr: SocketAddr, room: &str, alpha: f32) {
    let body = format!(r#"{{"type": "settings", "alpha": {alpha}}}"#);
    let path = format!("/api/rooms/{room}/control?admin={TOKEN}");
    let (status, answer) = http(addr, "POST", &path, "", &body).await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn resuming_needs_the_token_and_closes_the_older_socket_with_4002() {
    let relay = start(|_| {}).await;
    let addr = relay.http();
    let room = relay.running.hub.create_room();
    let (mut first, me) = join_worker(addr, &room, None).await;
    let (_other, them) = join_worker(addr, &room, None).await;
    assert_ne!(me.token, them.token);

    // My id with their token, or with none I was given: Error 14, and the socket stays
    // open for a Join without resuming.
    let mut thief = connect(addr, "/ws").await;
    for token in [them.token, ResumeToken([0; 16])] {
        let forged = Resume {
            worker: me.worker,
            token,
        };
        thief
            .send(WsMessage::binary(join(&room, Some(forged))))
            .await
            .unwrap();
        match recv(&mut thief).await {
            Message::Error(e) => assert_eq!(e.code, code::BAD_RESUME_TOKEN, "{}", e.message),
            other => panic!("expected Error 14, got {other:?}"),
        }
    }
    thief
        .send(WsMessage::binary(join(&room, None)))
        .await
        .unwrap();
    assert!(matches!(recv(&mut thief).await, Message::Welcome(w) if w.worker_id != me.worker));

    // With my token: the same worker, and my older socket, still open, is closed with 4002.
    let (mut again, resumed) = join_worker(addr, &room, Some(me)).await;
    assert_eq!(resumed, me);
    assert_eq!(close_code(&mut first).await, Some(4002));
    let slot = relay.running.hub.room(&room).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        slot.with_room(|r| r.workers()[&me.worker].connected),
        "the old socket's end does not disconnect the resumed worker"
    );
    again.send(WsMessage::binary(zero_push(0))).await.unwrap();
    assert!(matches!(recv(&mut again).await, Message::Ack(_)));
}

#[tokio::test]
async fn settings_coalesce_to_the_rooms_latest_for_a_worker_that_was_not_reading() {
    let relay = start(|_| {}).await;
    let addr = relay.http();
    let room = relay.running.hub.create_room();
    let slot = relay.running.hub.room(&room).unwrap();
    let (ws, _) = join_worker(addr, &room, None).await;
    let (mut tx, mut rx) = ws.split();
    // The worker pushes without reading its answers until the relay's writes to it block
    // (each answer carries a 178 kB center) and the relay stops reading it.
    let pusher = tokio::spawn(async move {
        for _ in 0..400 {
            if tx.send(WsMessage::binary(zero_push(0))).await.is_err() {
                break;
            }
        }
        tx
    });
    let pushes = || slot.with_room(|r| r.ledger().totals().pushes);
    let mut last = (pushes(), tokio::time::Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = pushes();
        if now != last.0 {
            last = (now, tokio::time::Instant::now());
        } else if now > 0 && last.1.elapsed() > Duration::from_millis(600) {
            break;
        }
        assert!(now < 400, "the relay never stopped reading the worker");
    }
    // Twelve settings changes while it does not read.
    let alphas: Vec<f32> = (1..=12).map(|i| 0.01 * i as f32 + 0.1).collect();
    for &a in &alphas {
        set_alpha(addr, &room, a).await;
    }
    pusher.abort();
    // It reads again: everything queued for it arrives; its last Settings is the room's.
    let mut settings = Vec::new();
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(1500), rx.next()).await {
        if let WsMessage::Binary(b) = m
            && let Ok(Message::Control(Control::Settings(h))) =
                message::decode(&b, &Limits::default())
        {
            settings.push(h);
        }
    }
    let room_hyper = slot.with_room(|r| r.settings().hyper);
    assert_eq!(room_hyper.alpha, alphas[11]);
    assert_eq!(
        settings.last(),
        Some(&room_hyper),
        "got alphas {:?}",
        settings.iter().map(|h| h.alpha).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_dashboard_that_stops_answering_pings_is_dropped() {
    let relay = start(|c| {
        c.ws = WsConfig {
            ping_every: Duration::from_millis(50),
            dead_after: Duration::from_millis(300),
            observer_every: Duration::from_millis(500),
        }
    })
    .await;
    let addr = relay.http();
    let room = relay.running.hub.create_room();
    let path = format!("/ws/dashboard?room={room}&admin={TOKEN}");
    // One dashboard reads (tungstenite answers pings as it reads); one is a bare TCP socket
    // that makes the upgrade and never reads again.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let upgrade = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    silent.write_all(upgrade.as_bytes()).await.unwrap();
    let mut live = connect(addr, &path).await;
    let reader = tokio::spawn(async move {
        let (mut texts, mut pings) = (0, 0);
        let end = tokio::time::Instant::now() + Duration::from_millis(1500);
        while let Ok(Some(m)) = tokio::time::timeout_at(end, live.next()).await {
            match m {
                Ok(WsMessage::Text(_)) => texts += 1,
                Ok(WsMessage::Ping(_)) => pings += 1,
                Ok(WsMessage::Close(f)) => panic!("the live dashboard was closed: {f:?}"),
                Ok(_) => {}
                Err(e) => panic!("the live dashboard failed: {e}"),
            }
        }
        (texts, pings)
    });
    let (texts, pings) = reader.await.unwrap();
    assert!(texts >= 2 && pings >= 5, "{texts} updates, {pings} pings");
    // The silent one got what was sent before it was found dead, then a close frame (1001,
    // unmasked from the relay: 0x03 0xE9 and the reason), then the end of the connection.
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, silent.read_to_end(&mut raw))
        .await
        .expect("the relay ended the connection")
        .unwrap();
    assert!(
        raw.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&raw[..40])
    );
    let close = b"\x03\xe9no answer to pings";
    assert!(
        raw.windows(close.len()).any(|w| w == close),
        "no close frame 1001"
    );
}

#[tokio::test]
async fn pages_from_other_origins_are_refused_with_403() {
    let extra = "https://classroom.example:8443";
    let relay = start(|c| c.allowed_origins = vec![Origin::parse(extra).unwrap()]).await;
    let addr = relay.http();
    let room = relay.running.hub.create_room();
    let own = format!("http://127.0.0.1:{}", addr.port());
    let evil = "http://evil.example";
    let dash = format!("/ws/dashboard?room={room}&admin={TOKEN}");
    for path in ["/ws", dash.as_str()] {
        assert_eq!(
            try_connect(addr, path, Some(evil)).await.err(),
            Some(403),
            "{path}"
        );
        // Another port of this machine is another origin.
        let other_port = format!("http://127.0.0.1:{}", addr.port() + 1);
        assert_eq!(
            try_connect(addr, path, Some(&other_port)).await.err(),
            Some(403)
        );
        for ok in [Some(own.as_str()), Some(extra), None] {
            assert!(
                try_connect(addr, path, ok).await.is_ok(),
                "{path} from {ok:?}"
            );
        }
    }
    // A worker from the relay's own page trains.
    let mut ws = try_connect(addr, "/ws", Some(&own)).await.unwrap();
    ws.send(WsMessage::binary(join(&room, None))).await.unwrap();
    assert!(matches!(recv(&mut ws).await, Message::Welcome(_)));

    // State-changing POSTs: refused from a foreign page, and nothing changes.
    let slot = relay.running.hub.room(&room).unwrap();
    let alpha = || slot.with_room(|r| r.settings().hyper.alpha);
    let before = alpha();
    let control = format!("/api/rooms/{room}/control?admin={TOKEN}");
    let body = r#"{"type": "settings", "alpha": 0.33}"#;
    let (status, why) = http(addr, "POST", &control, &format!("Origin: {evil}\r\n"), body).await;
    assert_eq!(status, 403, "{why}");
    assert!(why.contains("--allow-origin"), "{why}");
    assert_eq!(alpha(), before);
    let (status, _) = http(
        addr,
        "POST",
        &format!("/api/rooms?admin={TOKEN}"),
        "Origin: null\r\n",
        "",
    )
    .await;
    assert_eq!(status, 403);
    let (status, why) = http(addr, "POST", &control, &format!("Origin: {own}\r\n"), body).await;
    assert_eq!(status, 200, "{why}");
    assert_eq!(alpha(), 0.33);
    // Reading is not guarded (there is nothing to change); the token still guards it.
    let (status, _) = http(
        addr,
        "GET",
        &format!("/api/rooms/{room}/runs?admin={TOKEN}"),
        &format!("Origin: {evil}\r\n"),
        "",
    )
    .await;
    assert_eq!(status, 200);
}

/// Digits with a learnable pattern: label `i % 10`, a bright row at `3 * label`.
fn digits(n: usize) -> Split {
    let mut images = vec![0u8; n * IMAGE_PIXELS];
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    for (i, &l) in labels.iter().enumerate() {
        for x in 0..28 {
            images[i * IMAGE_PIXELS + 3 * usize::from(l) * 28 + x] = 200 + (x as u8 % 50);
        }
    }
    Split::new(images, labels)
}

/// Small, fast rounds, so that 60 bots fit on two cores.
fn fast(c: &mut Config) {
    c.room_defaults.hyper.local_steps = 1;
    c.room_defaults.hyper.batch = 4;
    c.room_defaults.hyper.codec_up = Codec::TopK { k: 2_000 };
}

fn bot_options(relay: String, room: &str, count: usize) -> BotOptions {
    BotOptions {
        relay,
        room: room.into(),
        count,
        slow: 0,
        slowdown: 1.0,
        backend: Backend::Cpu,
        seed: 11,
        pushes: None,
        total_pushes: None,
        trust: None,
    }
}

/// The workers of `room` with an accepted push in its ledger.
fn trained(relay: &Relay, room: &str) -> std::collections::BTreeSet<u64> {
    relay.running.hub.room(room).unwrap().with_room(|r| {
        r.ledger()
            .records()
            .filter(|rec| rec.accepted())
            .map(|rec| rec.worker)
            .collect()
    })
}

/// Waits until `n` workers of `room` have had a push accepted; the time it took.
async fn until_trained(relay: &Relay, room: &str, n: usize, limit: Duration) -> Duration {
    let t0 = tokio::time::Instant::now();
    while trained(relay, room).len() < n {
        assert!(
            t0.elapsed() < limit,
            "after {limit:?}, {} of {n} workers trained",
            trained(relay, room).len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t0.elapsed()
}

/// A TCP relay between the bots and the relay whose connections the test can cut.
struct Cutter {
    addr: SocketAddr,
    cut: tokio::sync::watch::Sender<u64>,
}

async fn cutter(to: SocketAddr) -> Cutter {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (cut, cuts) = tokio::sync::watch::channel(0u64);
    tokio::spawn(async move {
        while let Ok((mut a, _)) = listener.accept().await {
            let mut cuts = cuts.clone();
            cuts.borrow_and_update();
            tokio::spawn(async move {
                let Ok(mut b) = TcpStream::connect(to).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                    _ = cuts.changed() => {}
                }
            });
        }
    });
    Cutter { addr, cut }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_resume_as_themselves_after_their_connections_are_cut() {
    let relay = start(fast).await;
    let room = relay.running.hub.create_room();
    let proxy = cutter(relay.http()).await;
    let (stop, signal) = Shutdown::new();
    let opts = bot_options(format!("ws://{}/ws", proxy.addr), &room, 3);
    let bots = tokio::spawn(bots::run_bots(opts, Arc::new(digits(240)), signal, None));
    until_trained(&relay, &room, 3, WAIT).await;
    let slot = relay.running.hub.room(&room).unwrap();
    // Accepted pushes per worker: every bot must be accepted again after the cut, not
    // only the fastest ones (the room's total alone can grow from two of them).
    let accepted = || {
        slot.with_room(|r| {
            r.ledger()
                .workers()
                .iter()
                .map(|(id, w)| (*id, w.accepted))
                .collect::<std::collections::BTreeMap<u64, u64>>()
        })
    };
    let before = accepted();
    // Every connection is cut mid-session (no close frame: a network that went away).
    proxy.cut.send_modify(|n| *n += 1);
    let t0 = tokio::time::Instant::now();
    loop {
        let now = accepted();
        let back = before
            .iter()
            .filter(|(id, n)| now.get(id).is_some_and(|m| m >= &(**n + 2)))
            .count();
        if back == 3 {
            break;
        }
        assert!(
            t0.elapsed() < WAIT,
            "the bots did not come back: {back} of 3 accepted twice since the cut ({before:?} -> {now:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.fire();
    let reports: Vec<BotReport> = bots.await.unwrap().unwrap();
    // The same three workers, each reconnected, none a new worker.
    let ids: Vec<u64> = slot.with_room(|r| r.workers().keys().copied().collect());
    assert_eq!(ids, [1, 2, 3], "no new worker was made");
    for r in &reports {
        assert!(r.error.is_none(), "{}", r.line());
        assert!(r.reconnects >= 1, "{}", r.line());
        assert!(ids.contains(&r.worker_id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_after_a_relay_restart_ends_with_every_bot_training_within_5_s() {
    const BOTS: usize = 60;
    let relay = start(fast).await;
    let addr = relay.http();
    let room = relay.running.hub.create_room();
    let (stop, signal) = Shutdown::new();
    let opts = bot_options(format!("ws://{addr}/ws"), &room, BOTS);
    let bots = tokio::spawn(bots::run_bots(opts, Arc::new(digits(600)), signal, None));
    until_trained(&relay, &room, BOTS, Duration::from_secs(60)).await;

    // The relay goes away under them and comes back on the same address with the same room
    // code and token. The room's state does not survive this restart, so the relay does
    // not know the bots' ids: each resume gets a fresh id (PROTOCOL.md, Join), and the bot
    // goes on from its own model as a new worker.
    relay.stop().await;
    let relay = start_on(addr, fast).await;
    assert_eq!(
        relay.running.hub.create_room_with_code(&room),
        Some(room.clone())
    );
    let took = until_trained(&relay, &room, BOTS, Duration::from_secs(5)).await;
    println!("{BOTS} bots training again {took:?} after the restart");
    stop.fire();
    let reports: Vec<BotReport> = bots.await.unwrap().unwrap();
    for r in &reports {
        assert!(r.error.is_none(), "{}", r.line());
        assert!(r.reconnects >= 1, "{}", r.line());
    }
    let ids: std::collections::BTreeSet<u64> = reports.iter().map(|r| r.worker_id).collect();
    assert_eq!(ids.len(), BOTS, "each bot is its own worker");
    assert_eq!(
        ids,
        trained(&relay, &room),
        "the trained workers are the bots"
    );
}
