//! Every lesson live, one after the other in one room, as a teacher would run them: a relay on
//! 127.0.0.1 that scores its center on the 2,000 real MNIST test digits every second, four
//! in-process native bots on IID shards of the real training digits (equally fast, so the
//! lessons that need a straggler make one with the delay), and the lesson API driven over
//! HTTP: ask, run, then wait for the reveal. Each lesson's verdict must point the way the
//! lesson teaches. The sentences are printed (LESSONS.md quotes them):
//! `cargo test --release -p easel-tests --test lessons -- --nocapture`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use easel_bots::experiment::request;
use easel_bots::{self as bots, BotOptions};
use easel_client::cpu;
use easel_client::data::{Mnist, default_path};
use easel_protocol::{Backend, Codec, Hyper, Staleness};
use easel_relay::eval::Evaluator;
use easel_relay::room::{Partition, RoomSettings};
use easel_relay::{Config, Shutdown};
use warp::Filter;

const BOTS: usize = 4;
/// Each arm's limit, seconds; most end sooner, at the target.
const ARM_SECONDS: u32 = 45;
const TARGET: f64 = 0.95;

/// POSTs `body` to the room's lesson API; the lesson as JSON.
async fn lesson(addr: SocketAddr, token: &str, room: &str, body: &str) -> serde_json::Value {
    let path = format!("/api/rooms/{room}/lesson?admin={token}");
    let (status, text) = request(addr, "POST", &path, body)
        .await
        .expect("the relay answers");
    assert_eq!(status, 200, "{body} answered {status}: {text}");
    serde_json::from_str(&text).expect("a lesson")
}

/// Asks `preset`, runs it and waits for its reveal; the lesson at the reveal.
async fn run_lesson(
    addr: SocketAddr,
    token: &str,
    room: &str,
    relay: &easel_relay::RunningRelay,
    preset: &str,
) -> serde_json::Value {
    let ask = format!(
        r#"{{"action": "ask", "preset": "{preset}", "seconds": {ARM_SECONDS}, "target": {TARGET}}}"#
    );
    let asked = lesson(addr, token, room, &ask).await;
    assert_eq!(asked["phase"]["phase"], "vote", "{asked}");
    println!("{preset}: {}", asked["plan"]["text"].as_str().unwrap_or(""));
    lesson(addr, token, room, r#"{"action": "run"}"#).await;
    let slot = relay.hub.room(room).expect("the room");
    let t0 = Instant::now();
    let limit = Duration::from_secs(2 * u64::from(ARM_SECONDS) + 30);
    loop {
        let l = slot.lesson_json();
        match l["phase"]["phase"].as_str() {
            Some("reveal") => return l,
            Some("over") => panic!("{preset} stopped: {}", l["stopped"]),
            _ => {}
        }
        assert!(
            t0.elapsed() < limit,
            "{preset} is not over after {limit:?}: {l}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[test]
fn every_lesson_run_on_four_bots_reveals_a_verdict_that_points_the_way_it_teaches() {
    let data = Arc::new(Mnist::load(default_path()).expect("the MNIST file (cargo xtask data)"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let test = data.clone();
        let evaluator: Evaluator = Arc::new(move |params: &[f32]| {
            let e = cpu::evaluate(params, &test.test.images, &test.test.labels);
            (e.accuracy, e.loss)
        });
        let token = easel_relay::room::new_token();
        let config = Config {
            https: None,
            http: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            admin_token: Some(token.clone()),
            room_defaults: RoomSettings {
                hyper: Hyper {
                    alpha: 0.5,
                    staleness: Staleness::Constant,
                    tau_max: 16,
                    local_steps: 8,
                    lr: 0.1,
                    batch: 32,
                    momentum: 0.0,
                    codec_up: Codec::Fp32,
                    codec_down: Codec::Fp32,
                    error_feedback: false,
                    merge: easel_protocol::Merge::Easgd,
                },
                partition: Partition {
                    scheme: "iid".into(),
                    seed: 1,
                    // The default: eight shards, four of them on the bots.
                    shards: 8,
                },
                ..RoomSettings::default()
            },
            eval_every: Duration::from_secs(1),
            evaluator: Some(evaluator),
            ..Config::new(Arc::new(easel_client::Lenet))
        };
        let files = warp::path("nothing").map(|| "").boxed();
        let relay = easel_relay::run(config, files, std::future::pending())
            .await
            .expect("the relay starts");
        let addr = relay.http.expect("the HTTP listener");
        let room = relay.hub.create_room();
        let (stop, shutdown) = Shutdown::new();
        let opts = BotOptions {
            relay: format!("ws://{addr}/ws"),
            room: room.clone(),
            count: BOTS,
            slow: 0,
            slowdown: 1.0,
            backend: Backend::Cpu,
            seed: 1,
            pushes: None,
            total_pushes: None,
            trust: None,
        };
        let train = Arc::new(data.train.clone());
        let bots = tokio::spawn(bots::run_bots(opts, train, shutdown, None));
        let slot = relay.hub.room(&room).expect("the room");

        // (preset, the answers its verdict may support on this class)
        let expected: [(&str, &[u64]); 6] = [
            // A 5x straggler: every sync round waits for it; async does not.
            ("sync-async", &[1]),
            // FedAvg waiting for the fastest 3 of 4 never waits for the straggler.
            ("backup", &[1]),
            // Refusing the straggler's late pushes, or weighing them down: either may
            // come first, or neither; the sentence must count the refusals.
            ("staleness", &[0, 1, 2]),
            // 1% of the values per push, with error feedback, on loopback: a little later or
            // no later (the lesson is the bytes); never "much later".
            ("compression", &[1, 2]),
            // Two digits per device, four of the eight shards on devices: slower, or not at
            // all.
            ("non-iid", &[1, 2]),
            // Gossip on a ring of four: it learns, as fast or slower.
            ("gossip", &[0, 1]),
        ];
        // EASEL_LESSONS=key,key runs only those (to look at one lesson's sentences).
        let only = std::env::var("EASEL_LESSONS").ok();
        let mut failures = Vec::new();
        for (preset, allowed) in expected {
            if only
                .as_ref()
                .is_some_and(|o| !o.split(',').any(|k| k == preset))
            {
                continue;
            }
            // As a teacher would: the next lesson once every bot is back (a partition change
            // makes them rejoin) and has pushed since its last change of delay.
            let t0 = Instant::now();
            while slot.with_view(|r, _, a, _| {
                r.workers()
                    .values()
                    .filter(|w| w.connected && a.steps_per_s(w.id).is_some())
                    .count()
            }) < BOTS
            {
                assert!(
                    t0.elapsed() < Duration::from_secs(60),
                    "the bots do not train"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let l = run_lesson(addr, &token, &room, &relay, preset).await;
            let v = &l["verdict"];
            let sentence = v["sentence"].as_str().unwrap_or("");
            println!("{preset}: {sentence}");
            for r in l["results"].as_array().into_iter().flatten() {
                println!(
                    "  {}: reached {} s, best {}, {} pushes ({} refused), {} bytes up",
                    r["label"],
                    r["reached_s"],
                    r["best_accuracy"],
                    r["pushes"],
                    r["refused"],
                    r["bytes_up"]
                );
            }
            assert_eq!(l["results"].as_array().map(Vec::len), Some(2), "{l}");
            let supported = v["supported"].as_u64();
            if !supported.is_some_and(|s| allowed.contains(&s)) {
                failures.push(format!(
                    "{preset}: supported {supported:?}, expected one of {allowed:?}: {sentence}"
                ));
            }
            if preset == "staleness" {
                assert!(sentence.contains("refused"), "{sentence}");
            }
            if preset == "compression" {
                assert!(sentence.contains("fewer bytes per push"), "{sentence}");
            }
            // After the reveal the room is as before the lesson: no delay left, IID shards.
            slot.with_room(|r| {
                assert!(
                    r.workers().values().all(|w| w.delay_ms == 0),
                    "delays lifted"
                );
                assert_eq!(r.settings().partition.scheme, "iid");
                assert_eq!(r.settings().hyper.merge, easel_protocol::Merge::Easgd);
            });
        }
        stop.fire();
        let reports = bots.await.expect("the bots' task").expect("the bots ran");
        for r in &reports {
            println!("{}", r.line());
        }
        assert!(failures.is_empty(), "{failures:#?}");
    });
}
