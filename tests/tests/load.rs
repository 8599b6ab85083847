//! The load generator of `easel bench relay --clients` against a real relay on 127.0.0.1
//! (its own runtime, as the child process would be): every acknowledged push is in the
//! room's ledger, nothing is refused, every client pushes. Not timed.

use std::net::SocketAddr;
use std::time::Duration;

use easel_bots::loadgen::{self, LoadOptions, Target};
use easel_protocol::LENET5_28;
use easel_protocol::codec::DEFAULT_BUCKET;
use easel_protocol::{Codec, message};
use easel_relay::{Config, run};
use warp::Filter;

const TOKEN: &str = "load-test-token";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

#[test]
fn twenty_clients_have_every_acked_push_in_the_ledger_and_none_refused() {
    let relay_rt = runtime();
    let config = Config {
        https: None,
        http: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        admin_token: Some(TOKEN.into()),
        ..Config::new(std::sync::Arc::new(easel_client::Lenet))
    };
    let files = warp::path("hello").map(|| "static files here").boxed();
    let relay = relay_rt
        .block_on(run(config, files, std::future::pending::<()>()))
        .expect("relay starts");
    let room = relay.hub.create_room();
    let target = Target {
        addr: relay.http.expect("an HTTP listener"),
        room: room.clone(),
        admin: TOKEN.into(),
    };
    target
        .configure("topk1-qsgd8", message::MAX_TAU)
        .expect("settings");
    let opts = LoadOptions {
        clients: 20,
        interval: Duration::from_millis(300),
        push_for: Duration::from_secs(3),
        codec: Codec::top_k_qsgd_fraction(0.01, LENET5_28.param_count, 8, DEFAULT_BUCKET),
        seed: 3,
        relay_pid: None,
    };
    let out = runtime()
        .block_on(loadgen::run(&target, &opts))
        .expect("load runs");
    let s = out.summary();
    assert_eq!(s.clients_failed, 0, "{:?}", s.first_error);
    assert_eq!((s.refused_too_stale, s.refused_other), (0, 0), "{s:?}");
    assert!(
        out.logs.iter().all(|l| l.acked.len() >= 5),
        "every client pushes about 10 times: {:?}",
        out.logs.iter().map(|l| l.acked.len()).collect::<Vec<_>>()
    );
    let csv = target.ledger_csv().expect("the ledger");
    assert_eq!(loadgen::missing_from_ledger(&out.logs, &csv).unwrap(), 0);
    let slot = relay.hub.room(&room).expect("the room");
    let recorded = slot.with_room(|r| r.ledger().totals().pushes);
    assert_eq!(recorded, s.pushes_answered, "every push is recorded once");
    // The check can fail: a push the room never saw is reported missing.
    let mut forged = out.logs.clone();
    forged[0].acked.push((u64::MAX - 1, u64::MAX));
    assert_eq!(loadgen::missing_from_ledger(&forged, &csv).unwrap(), 1);
}
