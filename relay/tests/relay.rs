//! The relay over real sockets on 127.0.0.1, driven by a client written only from
//! PROTOCOL.md (hand-built bytes over plain tokio-tungstenite, see `wire`).

mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use easel_relay::http::TlsSource;
use easel_relay::ws::WsConfig;
use easel_relay::{Config, RunningRelay, run};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use warp::Filter;
use wire::{Ack, N};

const TOKEN: &str = "secret-token";
const WAIT: Duration = Duration::from_secs(20);

struct Relay {
    running: RunningRelay,
    _stop: oneshot::Sender<()>,
}

impl Relay {
    fn http(&self) -> SocketAddr {
        self.running.http.expect("http listener")
    }
}

async fn start(edit: impl FnOnce(&mut Config)) -> Relay {
    let mut config = Config {
        https: None,
        http: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        admin_token: Some(TOKEN.into()),
        ..Config::new(std::sync::Arc::new(easel_client::Lenet))
    };
    edit(&mut config);
    let files = warp::path("hello").map(|| "static files here").boxed();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = run(config, files, async move {
        let _ = stopped.await;
    })
    .await
    .expect("relay starts");
    Relay {
        running,
        _stop: stop,
    }
}

type Ws<S> = WebSocketStream<S>;

async fn connect(addr: SocketAddr, path: &str) -> Ws<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}{path}"), tcp)
        .await
        .unwrap();
    ws
}

async fn send<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut Ws<S>, bytes: Vec<u8>) {
    ws.send(Message::binary(bytes)).await.unwrap();
}

/// The next message that is not a ping or pong.
async fn recv<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut Ws<S>) -> Message {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("an answer in time")
            .expect("the connection is open")
            .expect("a message");
        if !(m.is_ping() || m.is_pong()) {
            return m;
        }
    }
}

async fn recv_bin<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut Ws<S>) -> Vec<u8> {
    match recv(ws).await {
        Message::Binary(b) => b.to_vec(),
        other => panic!("expected a binary message, got {other:?}"),
    }
}

/// The close code the relay ends with, reading past any other message.
async fn close_code<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut Ws<S>) -> Option<u16> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

/// One HTTP/1.1 request over a fresh connection: status and body.
async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
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

/// A body that may be sent with chunked transfer encoding: the JSON object in it.
fn json_in(body: &str) -> serde_json::Value {
    let start = body.find('{').expect("a JSON object");
    let end = body.rfind('}').expect("a JSON object");
    serde_json::from_str(&body[start..=end]).unwrap()
}

async fn create_room(addr: SocketAddr) -> String {
    let (status, body) = http(addr, "POST", &format!("/api/rooms?admin={TOKEN}")).await;
    assert_eq!(status, 201, "{body}");
    json_in(&body)["code"].as_str().unwrap().to_string()
}

async fn join_worker(addr: SocketAddr, room: &str) -> (Ws<TcpStream>, wire::Welcome) {
    let mut ws = connect(addr, "/ws").await;
    send(&mut ws, wire::join(room, 1, 0)).await;
    let w = wire::welcome(&recv_bin(&mut ws).await);
    (ws, w)
}

/// Pushes `delta` from `base`; returns the Ack and the Center after it.
async fn round<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut Ws<S>,
    base: u64,
    payload: &[u8],
) -> (Ack, u64, Vec<f32>) {
    send(ws, wire::push(base, payload)).await;
    let (b, ack) = wire::ack(&recv_bin(ws).await);
    assert_eq!(b, base, "the Ack names the push's base");
    let (v, center) = wire::center(&recv_bin(ws).await);
    (ack, v, center)
}

fn delta(scale: f32) -> Vec<f32> {
    (0..N).map(|i| scale * ((i % 7) as f32 - 3.0)).collect()
}

fn close_to(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= 1e-6 * (1.0 + y.abs()))
}

#[tokio::test]
async fn hand_built_client_joins_pushes_and_gets_the_easgd_center() {
    let relay = start(|_| {}).await;
    let addr = relay.http();
    let room = create_room(addr).await;
    let (mut ws, w) = join_worker(addr, &room).await;
    assert_eq!(w.version, 0);
    assert!(w.alpha > 0.0 && w.alpha <= 1.0);

    // x_i = x~(0) + d; x~ <- x~ + alpha (x_i - x~) = x~(0) + alpha d.
    let d = delta(1e-3);
    let (ack, v, center) = round(&mut ws, w.version, &wire::fp32(&d)).await;
    assert_eq!(
        ack,
        Ack::Accepted {
            tau: 0,
            alpha_eff: w.alpha,
            version: 1
        }
    );
    assert_eq!(v, 1);
    let expected: Vec<f32> = w
        .center
        .iter()
        .zip(&d)
        .map(|(c, d)| c + w.alpha * d)
        .collect();
    assert!(close_to(&center, &expected));

    // A second push from the old base is stale by one: alpha_eff = alpha / 2 (inverse).
    let (ack, v2, _) = round(&mut ws, w.version, &wire::fp32(&d)).await;
    assert_eq!(
        ack,
        Ack::Accepted {
            tau: 1,
            alpha_eff: w.alpha / 2.0,
            version: 2
        }
    );
    assert_eq!(v2, 2);

    // Both are in the ledger, with their staleness.
    let (status, csv) = http(
        addr,
        "GET",
        &format!("/api/rooms/{room}/ledger.csv?admin={TOKEN}"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        csv.lines().filter(|l| l.ends_with(",true,0,")).count(),
        2,
        "{csv}"
    );
}

#[tokio::test]
async fn bad_input_gets_the_promised_answers_while_an_honest_worker_trains() {
    let relay = start(|_| {}).await;
    let addr = relay.http();
    let room = create_room(addr).await;
    let (mut honest, w) = join_worker(addr, &room).await;
    let mut base = w.version;
    let small = wire::fp32(&delta(1e-4));
    let mut honest_round = async |base: &mut u64| {
        let (ack, v, _) = round(&mut honest, *base, &small).await;
        assert!(matches!(ack, Ack::Accepted { .. }), "{ack:?}");
        *base = v;
    };

    // Connection-level errors: Error, then close 1002.
    for (bytes, code) in [
        (b"hello world".to_vec(), 1u16),
        (b"GET / HTTP/1.1".to_vec(), 1),
        (b"EASL\x01\x01".to_vec(), 2), // version 1: this relay speaks 2
    ] {
        let mut ws = connect(addr, "/ws").await;
        send(&mut ws, bytes).await;
        assert_eq!(wire::error_code(&recv_bin(&mut ws).await), code);
        assert_eq!(close_code(&mut ws).await, Some(1002));
        honest_round(&mut base).await;
    }

    // Errors the connection survives: each answered, then a valid Join still works.
    let mut ws = connect(addr, "/ws").await;
    let join = wire::join(&room, 1, 0);
    let cases: Vec<(Message, u16)> = vec![
        (Message::binary(join[..20].to_vec()), 11), // truncated
        (Message::binary(b"EASL\x02\x63".to_vec()), 11), // unknown type
        (Message::binary([join.clone(), vec![0]].concat()), 11), // trailing byte
        (Message::text("{\"join\": true}"), 11),    // text
        (Message::binary(wire::join("NOPE9", 1, 0)), 3), // unknown room
        (Message::binary(wire::push(0, &small)), 12), // push before Welcome
        (Message::binary(wire::control_delay(5)), 13), // not the teacher
    ];
    for (m, code) in cases {
        ws.send(m.clone()).await.unwrap();
        assert_eq!(wire::error_code(&recv_bin(&mut ws).await), code, "{m:?}");
        honest_round(&mut base).await;
    }
    send(&mut ws, join).await;
    let bad = wire::welcome(&recv_bin(&mut ws).await);
    assert_ne!(bad.worker, w.worker);

    // Refused pushes: Ack with the code, then the (untouched) center.
    let mut nan = delta(1e-4);
    nan[123] = f32::NAN;
    let mut inf = delta(1e-4);
    inf[0] = f32::INFINITY;
    let mut garbage_payload = wire::fp32(&delta(1e-4));
    garbage_payload.pop();
    for (payload, code) in [
        (wire::fp32(&nan), 6u16),
        (wire::fp32(&inf), 6),
        (wire::fp32(&[0.5; 10]), 5),
        (wire::fp32(&delta(10.0)), 7),
        (garbage_payload, 11),
        (vec![42, 1, 2, 3, 4], 5),
    ] {
        let before = base;
        let (ack, v, _) = round(&mut ws, base, &payload).await;
        assert!(
            matches!(ack, Ack::Refused { code: c, .. } if c == code),
            "{ack:?}"
        );
        assert_eq!(v, before, "a refused push leaves the center");
        honest_round(&mut base).await;
    }
    // A base from the future: refused, resync.
    let (ack, _, _) = round(&mut ws, base + 5, &small).await;
    assert!(matches!(ack, Ack::Refused { code: 10, .. }), "{ack:?}");
    honest_round(&mut base).await;

    // The ledger counted every refusal.
    let (_, body) = http(
        addr,
        "GET",
        &format!("/api/rooms/{room}/ledger.json?admin={TOKEN}"),
    )
    .await;
    let ledger = json_in(&body);
    assert_eq!(ledger["totals"]["refused"], 7, "{}", ledger["totals"]);
    assert_eq!(ledger["totals"]["refused_by_code"]["6"], 2);
}

#[tokio::test]
async fn oversized_message_is_closed_with_1009() {
    let relay = start(|_| {}).await;
    let addr = relay.http();
    let room = create_room(addr).await;
    let (mut honest, w) = join_worker(addr, &room).await;
    let max = 666_088; // max_message for lenet5-28, PROTOCOL.md "Limits"
    let (ws, _) = join_worker(addr, &room).await;
    let huge = wire::push(0, &vec![0u8; max]);
    assert!(huge.len() > max);
    // Send and read at once: the relay may close before it has read everything.
    let (mut tx, mut rx) = ws.split();
    let sender = tokio::spawn(async move {
        let _ = tx.send(Message::binary(huge)).await;
        tx
    });
    let mut code = None;
    while let Ok(Some(m)) = tokio::time::timeout(WAIT, rx.next()).await {
        match m {
            Ok(Message::Close(f)) => {
                code = f.map(|f| f.code);
                break;
            }
            Ok(_) => continue,
            Err(e) => panic!("no close frame before {e}"),
        }
    }
    assert_eq!(code, Some(CloseCode::Size));
    let _ = sender.await;
    let (ack, _, _) = round(&mut honest, w.version, &wire::fp32(&delta(1e-4))).await;
    assert!(matches!(ack, Ack::Accepted { .. }));
}

#[tokio::test]
async fn observer_that_never_reads_holds_at_most_the_newest_center() {
    let relay = start(|c| {
        c.ws = WsConfig {
            observer_every: Duration::from_millis(1),
            ..WsConfig::default()
        }
    })
    .await;
    let addr = relay.http();
    let room = create_room(addr).await;
    // An observer that joins and then never reads again.
    let mut observer = connect(addr, "/ws").await;
    send(&mut observer, wire::join(&room, 4, 0)).await;
    let _welcome = recv_bin(&mut observer).await;
    let (mut ws, w) = join_worker(addr, &room).await;
    let mut base = w.version;
    let payload = wire::fp32(&delta(1e-5));
    let started = std::time::Instant::now();
    for _ in 0..60 {
        let (ack, v, _) = round(&mut ws, base, &payload).await;
        assert!(matches!(ack, Ack::Accepted { .. }));
        base = v;
    }
    // 60 centers of 177 kB were made; the silent observer never slowed the worker down,
    // and the relay keeps one center for it: the watch's newest.
    assert!(started.elapsed() < WAIT);
    let slot = relay.running.hub.room(&room).unwrap();
    assert_eq!(slot.watched_version(), Some(base));
    drop(observer);
}

#[tokio::test]
async fn api_needs_the_admin_token_and_teacher_control_reaches_workers() {
    let relay = start(|_| {}).await;
    let addr = relay.http();
    assert_eq!(http(addr, "POST", "/api/rooms").await.0, 403);
    assert_eq!(http(addr, "POST", "/api/rooms?admin=wrong").await.0, 403);
    let room = create_room(addr).await;
    assert_eq!(
        http(addr, "GET", &format!("/api/rooms/{room}/ledger.csv"))
            .await
            .0,
        403
    );
    assert_eq!(
        http(
            addr,
            "GET",
            &format!("/api/rooms/ZZZZZ/ledger.csv?admin={TOKEN}")
        )
        .await
        .0,
        404
    );
    assert_eq!(
        http(addr, "GET", "/hello").await,
        (200, "static files here".into())
    );

    let (mut worker, _) = join_worker(addr, &room).await;
    // A teacher without the token is refused; with it, its Control reaches the worker.
    let mut t = connect(addr, "/ws").await;
    send(&mut t, wire::join(&room, 3, 0)).await;
    assert_eq!(wire::error_code(&recv_bin(&mut t).await), 13);
    let mut teacher = connect(addr, &format!("/ws?admin={TOKEN}")).await;
    send(&mut teacher, wire::join(&room, 3, 0)).await;
    let _ = wire::welcome(&recv_bin(&mut teacher).await);
    send(&mut teacher, wire::control_delay(250)).await;
    let m = recv_bin(&mut worker).await;
    let (ty, mut c) = wire::open(&m);
    assert_eq!(ty, wire::CONTROL);
    assert_eq!(
        (c.u8(), c.u8(), c.u32()),
        (2, 0, 250),
        "delay, for you, 250 ms"
    );
}

#[tokio::test]
async fn wss_with_the_self_signed_certificate() {
    let dir = std::env::temp_dir().join(format!("easel-wss-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let relay = start(|c| {
        c.https = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        c.tls = TlsSource::SelfSigned { dir: dir.clone() };
    })
    .await;
    let room = create_room(relay.http()).await;
    let https = relay.running.https.expect("https listener");

    // Trust exactly the certificate the relay made.
    let cert = easel_relay::tls::load_pem(&dir.join("cert.pem"), &dir.join("key.pem")).unwrap();
    assert_eq!(Some(cert.fingerprint()), relay.running.fingerprint);
    assert_eq!(
        relay.running.join_urls(),
        vec![format!("https://127.0.0.1:{}/", https.port())]
    );
    let teacher = relay.running.teacher_url(&room).unwrap();
    assert!(
        teacher.ends_with(&format!("/teacher.html?room={room}&admin={TOKEN}")),
        "{teacher}"
    );
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.certs[0].clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    for name in ["localhost", "127.0.0.1"] {
        let tcp = TcpStream::connect(https).await.unwrap();
        let server_name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        let tls = connector.connect(server_name, tcp).await.unwrap();
        let url = format!("wss://{name}:{}/ws", https.port());
        let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
        send(&mut ws, wire::join(&room, 1, 0)).await;
        let w = wire::welcome(&recv_bin(&mut ws).await);
        let (ack, _, _) = round(&mut ws, w.version, &wire::fp32(&delta(1e-4))).await;
        assert!(matches!(ack, Ack::Accepted { .. }), "{ack:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn shutdown_closes_sockets_with_1001_and_stops_listening() {
    let relay = start(|_| {}).await;
    let addr = relay.http();
    let room = relay.running.hub.create_room();
    let (mut ws, _) = join_worker(addr, &room).await;
    relay._stop.send(()).unwrap();
    assert_eq!(close_code(&mut ws).await, Some(1001));
    tokio::time::timeout(WAIT, relay.running.wait())
        .await
        .expect("the relay stops");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "nothing listens any more"
    );
}

#[tokio::test]
async fn a_worker_resumes_its_place_after_reconnecting() {
    let relay = start(|_| {}).await;
    let addr = relay.http();
    let room = create_room(addr).await;
    let (first, w) = join_worker(addr, &room).await;
    let mut ws = connect(addr, "/ws").await;
    // Another worker's token does not resume this one: Error 14 (BAD_RESUME_TOKEN).
    let mut wrong = w.token;
    wrong[0] ^= 1;
    send(&mut ws, wire::join_resume(&room, 1, 0, w.worker, wrong)).await;
    assert_eq!(wire::error_code(&recv_bin(&mut ws).await), 14);
    send(&mut ws, wire::join_resume(&room, 1, 0, w.worker, w.token)).await;
    let again = wire::welcome(&recv_bin(&mut ws).await);
    assert_eq!((again.worker, again.token), (w.worker, w.token));
    // The older connection, still open, is closed with 4002; its end does not mark the
    // resumed worker as gone.
    let mut first = first;
    assert_eq!(close_code(&mut first).await, Some(4002));
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let slot = relay.running.hub.room(&room).unwrap();
    assert!(slot.with_room(|r| r.workers()[&w.worker].connected));
    let (ack, _, _) = round(&mut ws, again.version, &wire::fp32(&delta(1e-4))).await;
    assert!(matches!(ack, Ack::Accepted { .. }));
}

#[tokio::test]
async fn worker_that_never_reads_is_dropped_not_buffered() {
    let relay = start(|c| {
        c.ws = WsConfig {
            ping_every: Duration::from_secs(60),
            dead_after: Duration::from_millis(300),
            observer_every: Duration::from_millis(500),
        }
    })
    .await;
    let addr = relay.http();
    let room = create_room(addr).await;
    let (ws, w) = join_worker(addr, &room).await;
    // Push again and again without ever reading an Ack or a Center. The relay sends each
    // answer before reading the next push, so once the socket is full it stops reading;
    // a send stuck longer than `dead_after` drops the peer.
    let (mut tx, _rx) = ws.split();
    let payload = wire::fp32(&delta(1e-6));
    let pusher = tokio::spawn(async move {
        for _ in 0..400 {
            if tx
                .send(Message::binary(wire::push(0, &payload)))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let slot = relay.running.hub.room(&room).unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while slot.with_room(|r| r.workers()[&w.worker].connected) {
        assert!(tokio::time::Instant::now() < deadline, "still connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pusher.abort();
    let handled = slot.with_room(|r| r.ledger().totals().pushes);
    assert!(
        handled < 400,
        "the relay stopped reading: {handled} pushes handled"
    );
}

#[tokio::test]
async fn centers_are_evaluated_off_the_reactor_and_reported() {
    let evaluator: easel_relay::eval::Evaluator = Arc::new(|p: &[f32]| {
        std::thread::sleep(Duration::from_millis(20));
        (0.25, f64::from(p[0]))
    });
    let relay = start(|c| {
        c.evaluator = Some(evaluator);
        c.eval_every = Duration::from_millis(50);
    })
    .await;
    let addr = relay.http();
    let room = create_room(addr).await;
    let (mut ws, w) = join_worker(addr, &room).await;
    let (_, v, _) = round(&mut ws, w.version, &wire::fp32(&delta(1e-4))).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, body) = http(
            addr,
            "GET",
            &format!("/api/rooms/{room}/ledger.json?admin={TOKEN}"),
        )
        .await;
        let evals = json_in(&body)["evals"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if evals.iter().any(|e| e["version"] == v) {
            assert!(evals.iter().all(|e| e["accuracy"] == 0.25));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no evaluation of version {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_swarm_room_averages_each_push_with_a_neighbour_and_keeps_no_center() {
    let relay = start(|c| {
        c.room_defaults.hyper.merge = easel_protocol::Merge::Swarm {
            topology: easel_protocol::strategy::Topology::Ring,
        };
    })
    .await;
    let addr = relay.http();
    let room = create_room(addr).await;
    let (mut a, wa) = join_worker(addr, &room).await;
    let (mut b, wb) = join_worker(addr, &room).await;
    // Both start from the mean model (the init, as nobody has trained yet).
    assert_eq!((wa.version, wb.version), (0, 0));
    assert_eq!(wa.center, wb.center);
    let c = wa.center.clone();
    let add = |x: &[f32], d: &[f32], k: f32| -> Vec<f32> {
        x.iter().zip(d).map(|(x, d)| x + k * d).collect()
    };

    // A pushes x_a = c + da; its model and B's copy become (x_a + c) / 2 = c + da / 2.
    let da = delta(1e-3);
    let (ack, v, model_a) = round(&mut a, wa.version, &wire::fp32(&da)).await;
    assert_eq!(
        ack,
        Ack::Accepted {
            tau: 0,
            alpha_eff: 0.5,
            version: 1
        }
    );
    assert_eq!(v, 1);
    assert!(close_to(&model_a, &add(&c, &da, 0.5)));

    // B pushed from its view c: its delta lands on its averaged copy c + da / 2 (it missed
    // one average, tau 1), which is then averaged with A's c + da / 2.
    let db = delta(-2e-3);
    let (ack, v, model_b) = round(&mut b, wb.version, &wire::fp32(&db)).await;
    assert_eq!(
        ack,
        Ack::Accepted {
            tau: 1,
            alpha_eff: 0.5,
            version: 2
        }
    );
    assert_eq!(v, 2);
    let both = add(&add(&c, &da, 0.5), &db, 0.5);
    assert!(close_to(&model_b, &both));

    // A pushes again from version 0, which it no longer holds: refused, and it gets back
    // its own copy (with B's average in it), not a center.
    let (ack, v, back) = round(&mut a, wa.version, &wire::fp32(&da)).await;
    assert!(matches!(ack, Ack::Refused { code: 10, .. }), "{ack:?}");
    assert_eq!(v, 1);
    assert!(close_to(&back, &both));

    // What the relay evaluates is the mean model: c + (da + db) / 2, the sum of the two
    // workers' models kept by the exchanges.
    let slot = relay.running.hub.room(&room).unwrap();
    let (version, mean) = slot.center();
    assert_eq!(version, 2);
    assert!(close_to(&mean, &both));
    let view = slot.with_room(|r| r.swarm_view()).expect("a swarm room");
    assert_eq!(
        (view.topology.as_str(), view.graph.as_str()),
        ("ring", "ring")
    );
    assert_eq!(view.nodes, [wa.worker, wb.worker]);
    assert_eq!(view.edges, [(wa.worker, wb.worker)]);
    let pairs: Vec<(u64, u64)> = view.pairs.iter().map(|p| (p.a, p.b)).collect();
    assert_eq!(pairs, [(wa.worker, wb.worker), (wb.worker, wa.worker)]);
    assert_eq!(view.exchanges, 2);

    // The ledger names each push's neighbour.
    let (_, csv) = http(
        addr,
        "GET",
        &format!("/api/rooms/{room}/ledger.csv?admin={TOKEN}"),
    )
    .await;
    let peers: Vec<String> = csv
        .lines()
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.len() == 18 && f[0] != "seq")
        .map(|f| f[14].to_string())
        .collect();
    assert_eq!(
        peers,
        [wb.worker.to_string(), wa.worker.to_string(), String::new()],
        "{csv}"
    );
}
