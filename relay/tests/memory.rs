//! Memory after devices leave, measured in a process of its own (the resident set size is
//! the whole process's, so no other test may run beside it): after 200 fp32 clients joined,
//! pushed and left, the relay's memory goes back near its idle level.

use std::net::SocketAddr;
use std::time::Duration;

use easel_protocol::message::{self, Join};
use easel_protocol::{Backend, ClientKind, Codec, LENET5_28, Limits, Message, Push};
use easel_relay::{Config, run};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use warp::Filter;

type Ws = WebSocketStream<TcpStream>;

async fn recv(ws: &mut Ws) -> Message {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(20), ws.next())
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

/// Joins `room` as a bot (fp32 only) and reads its Welcome.
async fn join_worker(addr: SocketAddr, room: &str) -> Ws {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp)
        .await
        .unwrap();
    let join = Message::Join(Join {
        room: room.into(),
        kind: ClientKind::Bot,
        backend: Backend::Cpu,
        capabilities: 0,
        layout_hash: LENET5_28.layout_hash(),
        resume_worker: None,
    });
    ws.send(WsMessage::binary(message::encode(&join)))
        .await
        .unwrap();
    assert!(matches!(recv(&mut ws).await, Message::Welcome(_)));
    ws
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_returns_to_its_idle_level_once_clients_leave() {
    const CLIENTS: usize = 200;
    let Some(_) = easel_relay::memory::rss_bytes() else {
        return; // not Linux: nothing to measure
    };
    let config = Config {
        https: None,
        http: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..Config::new(std::sync::Arc::new(easel_client::Lenet))
    };
    let files = warp::path("hello").map(|| "static").boxed();
    let relay = run(config, files, std::future::pending())
        .await
        .expect("relay starts");
    let addr = relay.http.unwrap();
    let room = relay.hub.create_room();
    let mb = |b: u64| b as f64 / 1e6;
    let settle = async || {
        tokio::time::sleep(easel_relay::memory::TRIM_AFTER + Duration::from_millis(700)).await;
        easel_relay::memory::rss_bytes().unwrap()
    };
    // Idle: after one client came and went.
    drop(join_worker(addr, &room).await);
    let idle = settle().await;
    // CLIENTS fp32 clients join, push once, read their answer; then all leave.
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let mut ws = join_worker(addr, &room).await;
        ws.send(WsMessage::binary(zero_push(0))).await.unwrap();
        clients.push(ws);
    }
    for ws in &mut clients {
        assert!(matches!(recv(ws).await, Message::Ack(_)));
        assert!(matches!(recv(ws).await, Message::Center(_)));
    }
    let busy = easel_relay::memory::rss_bytes().unwrap();
    drop(clients);
    let after = settle().await;
    println!(
        "RSS: idle {:.1} MB, {CLIENTS} clients {:.1} MB, after they left {:.1} MB",
        mb(idle),
        mb(busy),
        mb(after)
    );
    let slot = relay.hub.room(&room).unwrap();
    assert_eq!(
        slot.with_room(|r| r.workers().values().filter(|w| w.connected).count()),
        0
    );
    // The clients' buffers (theirs and the relay's, in this one process) went back.
    assert!(
        after < idle + (busy - idle) / 4,
        "idle {idle}, busy {busy}, after {after}"
    );
}
