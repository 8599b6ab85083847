//! The teacher's dashboard over real sockets: a relay on 127.0.0.1, two native bots
//! (`easel_bots`) training on synthetic digits, a dashboard WebSocket client and the
//! control, runs and center routes. Nothing here polls the dashboard: it only reads what the
//! relay pushes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use easel_bots::{self as bots, BotOptions};
use easel_client::data::Split;
use easel_client::model::IMAGE_PIXELS;
use easel_protocol::{Backend, LENET5_28};
use easel_relay::room::RoomSettings;
use easel_relay::{Config, RunningRelay, Shutdown, run};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use warp::Filter;

const TOKEN: &str = "dash-token";
const WAIT: Duration = Duration::from_secs(60);

/// Digits with a learnable pattern: label `i % 10`, a bright row at `3 * label`.
fn digits(n: usize) -> Split {
    let mut images = vec![0u8; n * IMAGE_PIXELS];
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    for (i, &l) in labels.iter().enumerate() {
        let row = 3 * usize::from(l);
        for x in 0..28 {
            images[i * IMAGE_PIXELS + row * 28 + x] = 200 + (x as u8 % 50);
        }
    }
    Split::new(images, labels)
}

async fn start() -> RunningRelay {
    let test = Arc::new(digits(100));
    let evaluator: easel_relay::eval::Evaluator = Arc::new(move |p: &[f32]| {
        let e = easel_client::cpu::evaluate(p, &test.images, &test.labels);
        (e.accuracy, e.loss)
    });
    let mut defaults = RoomSettings::default();
    defaults.hyper.local_steps = 2;
    defaults.hyper.batch = 8;
    let config = Config {
        https: None,
        http: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        admin_token: Some(TOKEN.into()),
        room_defaults: defaults,
        evaluator: Some(evaluator),
        eval_every: Duration::from_millis(200),
        ..Config::new(std::sync::Arc::new(easel_client::Lenet))
    };
    let files = warp::path("hello").map(|| "static").boxed();
    // The relay runs until the test's runtime ends.
    run(config, files, std::future::pending())
        .await
        .expect("relay starts")
}

/// One HTTP/1.1 request: status, headers (lowercase names) and the body, de-chunked.
async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String, Vec<u8>) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let mut rest = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let len = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap().trim(), 16)
                .unwrap();
            if len == 0 {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + len]);
            rest.drain(..eol + 2 + len + 2);
        }
        rest = out;
    }
    (head[9..12].parse().unwrap(), head, rest)
}

async fn post(addr: SocketAddr, path: &str, body: Value) -> (u16, Value) {
    let (status, _, body) = http(addr, "POST", path, &body.to_string()).await;
    (status, serde_json::from_slice(&body).unwrap())
}

type Dash = WebSocketStream<TcpStream>;

/// The next JSON message the dashboard socket pushes.
async fn next(ws: &mut Dash) -> Value {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("the relay pushes in time")
            .expect("the socket is open")
            .expect("a message");
        if let Message::Text(t) = m {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

/// Reads pushed messages until `done` holds for one; returns it.
async fn until(ws: &mut Dash, what: &str, mut done: impl FnMut(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let m = next(ws).await;
        if done(&m) {
            return m;
        }
        assert!(tokio::time::Instant::now() < deadline, "never saw {what}");
    }
}

fn device(m: &Value, id: u64) -> Value {
    m["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_sees_bots_controls_them_and_exports_runs() {
    let relay = start().await;
    let addr = relay.http.unwrap();
    let room = relay.hub.create_room();
    let api = |p: &str| format!("/api/rooms/{room}{p}?admin={TOKEN}");

    // No token, no dashboard and no control: 401 with a body that says what to do.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let url = format!("ws://{addr}/ws/dashboard?room={room}");
    match tokio_tungstenite::client_async(url, tcp).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), 401);
            let body = String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).to_string();
            assert!(body.contains("admin token"), "{body}");
        }
        other => panic!("expected 401, got {other:?}"),
    }
    let tcp = TcpStream::connect(addr).await.unwrap();
    let url = format!("ws://{addr}/ws/dashboard?room=NOSUCH&admin={TOKEN}");
    match tokio_tungstenite::client_async(url, tcp).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 404),
        other => panic!("expected 404, got {other:?}"),
    }
    let path = format!("/api/rooms/{room}/control");
    let (status, body) = post(addr, &path, json!({"type": "pause"})).await;
    assert_eq!(status, 401, "{body}");

    // Two bots.
    let (stop_bots, bots_signal) = Shutdown::new();
    let opts = BotOptions {
        relay: format!("ws://{addr}/ws"),
        room: room.clone(),
        count: 2,
        slow: 0,
        slowdown: 1.0,
        backend: Backend::Cpu,
        seed: 7,
        pushes: None,
        total_pushes: None,
        trust: None,
    };
    let bots = tokio::spawn(bots::run_bots(
        opts,
        Arc::new(digits(400)),
        bots_signal,
        None,
    ));

    // The dashboard: a snapshot, then updates that come by themselves.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let url = format!("ws://{addr}/ws/dashboard?room={room}&admin={TOKEN}");
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    let snap = next(&mut ws).await;
    assert_eq!(snap["type"], "snapshot");
    assert_eq!(snap["room"], room.as_str());
    assert_eq!(
        snap["join_urls"],
        json!([format!("http://127.0.0.1:{}/?room={room}", addr.port())])
    );
    assert!(snap["qr_svg"].as_str().unwrap().contains("<svg"));
    assert_eq!(snap["settings"]["local_steps"], 2);
    assert_eq!(snap["run"]["id"], 1);
    let t0 = tokio::time::Instant::now();
    let first = next(&mut ws).await;
    assert_eq!(first["type"], "update");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "updates every ~500 ms"
    );
    let mut evals = 0;
    let live = until(&mut ws, "two training bots and an evaluation", |m| {
        evals += m["evals"].as_array().map_or(0, Vec::len);
        let d = m["devices"].as_array().unwrap();
        evals > 0
            && d.len() == 2
            && d.iter()
                .all(|d| d["state"] == "training" && d["pushes"].as_u64() > Some(1))
    })
    .await;
    let ids: Vec<u64> = live["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_u64().unwrap())
        .collect();
    assert!(device(&live, ids[0])["steps_per_s"].as_f64().unwrap() > 0.0);
    assert!(live["bytes_per_s"]["in"].as_f64().is_some());
    // Every device counted: refused pushes, each push's staleness, the rounds under way.
    assert!(device(&live, ids[0])["refused"].as_u64().is_some());
    assert!(
        device(&live, ids[0])["recent"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    );
    assert!(live["refused_histogram"].is_array() && live["open_spans"].is_array());
    assert!(live.get("work_refused").is_some(), "{live}");

    // Delay one bot: the answer, then the pushed table, show it; its timeline gets waiting.
    let (status, state) = post(
        addr,
        &api("/control"),
        json!({"type": "delay", "device": ids[0], "ms": 300}),
    )
    .await;
    assert_eq!(status, 200, "{state}");
    assert_eq!(device(&state, ids[0])["state"], "delayed");
    let mut waited = false;
    until(&mut ws, "the delayed bot waiting", |m| {
        waited |= m["spans"].as_array().unwrap().iter().any(|s| {
            s["worker"] == ids[0] && s["kind"] == "waiting" && {
                let len = s["end_ms"].as_u64().unwrap() - s["start_ms"].as_u64().unwrap();
                (250..=300).contains(&len)
            }
        });
        let d = device(m, ids[0]);
        waited && d["state"] == "delayed" && d["delay_ms"] == 300
    })
    .await;

    // Bad commands get 400 and a message saying what to fix.
    for (cmd, says) in [
        (json!({"type": "settings", "alpha": 3.0}), "alpha"),
        // A ring of 4 billion centers would exhaust the memory: refused, nothing allocated.
        (json!({"type": "settings", "tau_max": u32::MAX}), "tau_max"),
        (json!({"type": "settings", "codec_up": "zip"}), "fp16"),
        (
            json!({"type": "partition", "scheme": "dirichlet:0"}),
            "partition",
        ),
        (
            json!({"type": "delay", "device": 999, "ms": 5}),
            "no worker 999",
        ),
        (json!({"type": "teleport"}), "not a control command"),
    ] {
        let (status, body) = post(addr, &api("/control"), cmd.clone()).await;
        assert_eq!(status, 400, "{cmd}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(says),
            "{cmd}: {body}"
        );
    }
    let (status, state) = post(
        addr,
        &api("/control"),
        json!({"type": "settings", "staleness": "exp:0.5", "codec_up": "fp16"}),
    )
    .await;
    assert_eq!(status, 200, "{state}");
    assert_eq!(state["settings"]["staleness"], "exp:0.5");
    assert_eq!(state["settings"]["codec_up"], "fp16");

    // A named run: a new snapshot, then pushes recorded under it.
    let (status, body) = post(
        addr,
        &api("/runs"),
        json!({"name": "sync, 2 stragglers", "reset": false}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["started"], 2);
    until(&mut ws, "the new run's snapshot", |m| {
        m["type"] == "snapshot" && m["run"]["name"] == "sync, 2 stragglers"
    })
    .await;
    let mut pushes = 0;
    until(&mut ws, "pushes and an evaluation in run 2", |m| {
        pushes += m["pushes"].as_array().map_or(0, Vec::len);
        pushes >= 4 && m["run"] == 2 && !m["evals"].as_array().unwrap().is_empty()
    })
    .await;
    let (status, head, csv) = http(addr, "GET", &api("/runs/2.csv"), "").await;
    assert_eq!(status, 200);
    assert!(
        head.contains("text/csv") && head.contains("attachment"),
        "{head}"
    );
    let csv = String::from_utf8(csv).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(header[0], "kind");
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert!(rows.iter().all(|r| r.len() == header.len()), "{csv}");
    assert!(rows.iter().any(|r| r[0] == "push") && rows.iter().any(|r| r[0] == "eval"));
    let (status, _, body) = http(addr, "GET", &api("/runs/2.json"), "").await;
    assert_eq!(status, 200);
    let run: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(run["name"], "sync, 2 stragglers");
    assert!(run["pushes"].as_array().unwrap().len() >= 4);
    assert_eq!(run["devices"].as_array().unwrap().len(), 2);
    let (_, _, body) = http(addr, "GET", &api("/runs"), "").await;
    let list: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(list["runs"].as_array().unwrap().len(), 2);
    assert_eq!(list["current"], 2);
    let (status, _, _) = http(addr, "GET", &api("/runs/9.csv"), "").await;
    assert_eq!(status, 404);

    // The center, with PyTorch's names and shapes.
    let (status, head, bytes) = http(addr, "GET", &api("/center.safetensors"), "").await;
    assert_eq!(status, 200);
    assert!(head.contains(".safetensors\""), "{head}");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for t in LENET5_28.tensors {
        let view = st.tensor(t.name).unwrap();
        assert_eq!(view.shape(), t.shape, "{}", t.name);
    }
    assert_eq!(st.len(), LENET5_28.tensors.len());
    let (status, _, _) = http(
        addr,
        "GET",
        &format!("/api/rooms/{room}/center.safetensors"),
        "",
    )
    .await;
    assert_eq!(status, 401);

    // Remove the other bot: its connection is closed with the reason, the table says so.
    let (status, state) = post(
        addr,
        &api("/control"),
        json!({"type": "remove", "device": ids[1]}),
    )
    .await;
    assert_eq!(status, 200, "{state}");
    assert_eq!(device(&state, ids[1])["state"], "removed");
    until(&mut ws, "the removed bot", |m| {
        device(m, ids[1])["state"] == "removed"
    })
    .await;

    // Reset: a fresh center, a new run, the ledger emptied.
    let (status, state) = post(addr, &api("/control"), json!({"type": "reset"})).await;
    assert_eq!(status, 200, "{state}");
    assert_eq!(state["run"], 3);
    let snap = until(&mut ws, "the reset's snapshot", |m| m["type"] == "snapshot").await;
    assert_eq!(snap["run"]["id"], 3);
    // The ledger starts again with the run: its totals are the run's pushes so far.
    let since_reset = snap["pushes"].as_array().unwrap();
    assert_eq!(snap["totals"]["pushes"], since_reset.len());
    let started = snap["run"]["started_ms"].as_u64().unwrap();
    assert!(
        since_reset
            .iter()
            .all(|p| p["wall_ms"].as_u64() >= Some(started))
    );

    stop_bots.fire();
    let reports = tokio::time::timeout(WAIT, bots)
        .await
        .expect("the bots stop")
        .unwrap()
        .unwrap();
    let removed = reports.iter().find(|r| r.worker_id == ids[1]).unwrap();
    let why = removed.error.clone().unwrap_or_default();
    assert!(why.contains("removed by the teacher"), "{why}");
    let kept = reports.iter().find(|r| r.worker_id == ids[0]).unwrap();
    assert_eq!(kept.error, None);
}
