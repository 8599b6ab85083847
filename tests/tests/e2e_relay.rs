//! End to end: a real relay on 127.0.0.1 and eight bot workers, two of them five times
//! slower, on IID shards of the real MNIST digits. Run it in release mode:
//! `cargo test --release -p easel-tests --test e2e_relay -- --nocapture`.

use std::sync::Arc;

use easel_bots::experiment::{self, Setup};
use easel_client::data::{Mnist, default_path};
use easel_client::worker::named_codecs;
use easel_protocol::{Codec, LENET5_28, encoded_len};

/// Bytes of a Push message around its payload.
const PUSH_HEADER: usize = 30;

/// Runs `setup` with fp32 pushes on the real MNIST digits.
fn run_fp32(setup: &Setup) -> experiment::Outcome {
    let data = Arc::new(Mnist::load(default_path()).expect("the MNIST file (cargo xtask data)"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(experiment::run(setup, "fp32", Codec::Fp32, false, data))
        .expect("the run completes")
}

#[test]
fn eight_bots_two_stragglers_reach_95_percent_and_the_ledger_shows_staleness() {
    let setup = Setup::default();
    let o = run_fp32(&setup);

    for r in &o.reports {
        println!("{}", r.line());
    }
    println!(
        "{} pushes in {:.1} s; center version {}, accuracy {:.2}%, loss {:.4}",
        o.ledger_pushes,
        o.seconds,
        o.version,
        100.0 * o.accuracy,
        o.loss
    );
    println!(
        "fast: {} accepted, mean tau {:.2}, mean alpha_eff {:.4}; slow: {} accepted, mean tau {:.2}, mean alpha_eff {:.4}",
        o.fast.accepted,
        o.fast.mean_tau,
        o.fast.mean_alpha_eff,
        o.slow.accepted,
        o.slow.mean_tau,
        o.slow.mean_alpha_eff
    );

    // Every acknowledged push is in the ledger, and no push was lost on the way.
    assert_eq!(
        o.acks, o.ledger_pushes,
        "client-side Acks == ledger records"
    );
    let sent: u64 = o.reports.iter().map(|r| r.stats.pushes).sum();
    assert_eq!(sent, o.acks, "every push sent was acknowledged");
    let records = o.ledger_json["records"]
        .as_array()
        .map_or(0, |a| a.len() as u64);
    assert_eq!(records, o.ledger_pushes, "ledger.json holds every push");
    assert!(o.ledger_pushes >= setup.total_pushes);

    // The center learned.
    assert!(
        o.accuracy >= 0.95,
        "center accuracy {:.2}% after {} pushes",
        100.0 * o.accuracy,
        o.ledger_pushes
    );
    assert!(!o.evals.is_empty(), "the relay evaluated the center");

    // The stragglers push less often, with staler bases and so smaller weights.
    assert!(o.slow.accepted > 0 && o.fast.accepted > 0);
    let per_slow = o.slow.accepted as f64 / setup.slow as f64;
    let per_fast = o.fast.accepted as f64 / (setup.workers - setup.slow) as f64;
    assert!(
        per_fast > 2.0 * per_slow,
        "fast {per_fast} vs slow {per_slow} pushes each"
    );
    assert!(
        o.slow.mean_tau > o.fast.mean_tau,
        "slow mean tau {} > fast {}",
        o.slow.mean_tau,
        o.fast.mean_tau
    );
    assert!(
        o.slow.mean_alpha_eff < o.fast.mean_alpha_eff,
        "slow mean alpha_eff {} < fast {}",
        o.slow.mean_alpha_eff,
        o.fast.mean_alpha_eff
    );

    // Bytes per push for each codec: this run's measured fp32 push, and the exact sizes.
    let fp32 = o.bytes_per_push;
    assert_eq!(
        fp32,
        (encoded_len(Codec::Fp32, LENET5_28.param_count) + PUSH_HEADER) as f64,
        "the measured fp32 push size"
    );
    println!(
        "bytes per push (lenet5-28, {} values):",
        LENET5_28.param_count
    );
    for (name, codec) in named_codecs(LENET5_28.param_count) {
        let bytes = encoded_len(codec, LENET5_28.param_count) + PUSH_HEADER;
        println!(
            "  {name:<12} {bytes:>8}  ({:.1}x smaller than fp32)",
            fp32 / bytes as f64
        );
    }
}

/// SwarmSGD live on real MNIST: the same eight bots (two 5x stragglers) on a ring, every
/// push averaged with a neighbour's model by the relay, no center; the relay's evaluation of
/// the mean model learns, and the stragglers miss more of their neighbours' averages.
#[test]
fn eight_bots_on_a_swarm_ring_reach_95_percent_without_a_center() {
    let mut setup = Setup::default();
    setup.hyper.merge = easel_protocol::Merge::Swarm {
        topology: easel_protocol::strategy::Topology::Ring,
    };
    let o = run_fp32(&setup);
    println!(
        "swarm ring: {} pushes in {:.1} s; mean model accuracy {:.2}%, loss {:.4}; \
         missed averages: fast {:.2}, slow {:.2} per push",
        o.ledger_pushes,
        o.seconds,
        100.0 * o.accuracy,
        o.loss,
        o.fast.mean_tau,
        o.slow.mean_tau
    );
    assert_eq!(
        o.acks, o.ledger_pushes,
        "client-side Acks == ledger records"
    );
    assert_eq!(
        o.slow.refused + o.fast.refused,
        0,
        "every push names its version"
    );
    let records = o.ledger_json["records"].as_array().expect("records");
    let averaged = records.iter().filter(|r| r["peer"].is_u64()).count();
    // Only a bot alone in the room (the first, before the others join) has no neighbour.
    assert!(
        averaged + 16 >= records.len(),
        "{averaged} of {} pushes averaged",
        records.len()
    );
    assert!(
        o.accuracy >= 0.95,
        "mean model accuracy {:.2}% after {} pushes",
        100.0 * o.accuracy,
        o.ledger_pushes
    );
    assert!(
        o.slow.mean_tau > o.fast.mean_tau,
        "slow missed {} > fast {}",
        o.slow.mean_tau,
        o.fast.mean_tau
    );
}

/// `easel bots` over `wss://` with the relay's self-signed certificate, trusted through
/// `--ca`, and with `--insecure`.
#[test]
fn bots_join_over_wss_with_the_self_signed_certificate() {
    use easel_bots::{BotOptions, Trust, run_bots};
    use easel_relay::http::TlsSource;
    use easel_relay::{Config, Shutdown};
    use std::net::SocketAddr;

    let data = Arc::new(Mnist::load(default_path()).expect("the MNIST file (cargo xtask data)"));
    let dir = std::env::temp_dir().join(format!("easel-bots-wss-{}", std::process::id()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let config = Config {
            https: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            http: None,
            tls: TlsSource::SelfSigned { dir: dir.clone() },
            admin_token: Some("token".into()),
            ..Config::new(std::sync::Arc::new(easel_client::Lenet))
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let files = warp_free_files();
        let relay = easel_relay::run(config, files, async move {
            let _ = stopped.await;
        })
        .await
        .expect("the relay starts");
        let port = relay.https.expect("https").port();
        let code = relay.hub.create_room();
        for (host, trust) in [
            ("localhost", Trust::Ca(dir.join("cert.pem"))),
            ("127.0.0.1", Trust::Insecure),
        ] {
            let (_trigger, shutdown) = Shutdown::new();
            let opts = BotOptions {
                relay: format!("wss://{host}:{port}/ws"),
                room: code.clone(),
                count: 2,
                slow: 0,
                slowdown: 1.0,
                backend: easel_protocol::Backend::Cpu,
                seed: 3,
                pushes: Some(2),
                total_pushes: None,
                trust: Some(trust),
            };
            let reports = run_bots(opts, Arc::new(data.train.clone()), shutdown, None)
                .await
                .expect("the bots run");
            for r in &reports {
                assert!(r.error.is_none(), "{}", r.line());
                assert_eq!((r.stats.pushes, r.acks), (2, 2), "{}", r.line());
            }
        }
        let pushes = relay
            .hub
            .room(&code)
            .unwrap()
            .with_room(|r| r.ledger().totals().pushes);
        assert_eq!(pushes, 8);
        let _ = stop.send(());
        relay.wait().await;
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// A static-file filter that serves nothing.
fn warp_free_files() -> warp::filters::BoxedFilter<(&'static str,)> {
    use warp::Filter;
    warp::path("nothing").map(|| "").boxed()
}
