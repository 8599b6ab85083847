//! The simulator's defining properties, on tiny configurations over the real MNIST file.

use std::path::Path;
use std::sync::OnceLock;

use easel_client::data::{Mnist, default_path};

use super::*;

fn data() -> &'static Mnist {
    static DATA: OnceLock<Mnist> = OnceLock::new();
    DATA.get_or_init(|| Mnist::load(default_path()).expect("data/mnist.bin (cargo xtask data)"))
}

/// A small run: 4 workers, 2 steps of 8 samples a round, 10 ms a step, 1 ms latency,
/// 200 test digits, one virtual second, with `strategy` (the lines of its TOML table).
fn config(strategy: &str) -> SimConfig {
    let text = format!(
        r#"
seed = 3
workers = 4
duration_s = 1.0
eval_every_s = 0.5
eval_samples = 200
[train]
lr = 0.1
batch = 8
local_steps = 2
[speed]
step_ms = 10.0
[network]
latency_ms = 1.0
bandwidth_mbps = 1000.0
[strategy]
{strategy}
"#
    );
    let c = SimConfig::parse(Path::new("t.toml"), &text).unwrap();
    c.validate().unwrap();
    c
}

#[test]
fn the_same_config_gives_byte_identical_output() {
    for strategy in [
        "kind = \"easgd\"\nalpha = 0.5\nstaleness = { kind = \"inverse\" }\ntau_max = 8",
        "kind = \"swarm\"\ntopology = \"ring\"\nquantize = { kind = \"qsgd\", bits = 8, bucket = 512 }",
    ] {
        let mut c = config(strategy);
        c.speed.dist = SpeedDist::Lognormal {
            mu: 0.0,
            sigma: 0.5,
        };
        c.train.codec_up = easel_protocol::Codec::Qsgd {
            bits: 4,
            bucket: 512,
        };
        c.train.error_feedback = true;
        let a = run(&c, data()).unwrap().to_json();
        let b = run(&c, data()).unwrap().to_json();
        assert_eq!(a.as_bytes(), b.as_bytes());
        let r: serde_json::Value = serde_json::from_str(&a).unwrap();
        assert!(r["rounds"].as_u64().unwrap() > 8, "{a}");
        c.seed += 1;
        assert_ne!(run(&c, data()).unwrap().to_json(), a, "the seed matters");
    }
}

#[test]
fn synchronous_rounds_with_one_5x_straggler_take_at_least_4x_longer() {
    let fedavg = "kind = \"fedavg\"\nk = 2";
    let per_round = |stragglers: u32| {
        let mut c = config(fedavg);
        c.speed.stragglers = stragglers;
        c.speed.factor = 5.0;
        let r = run(&c, data()).unwrap();
        assert!(r.version > 1, "{r:?}");
        assert_eq!(
            r.applied,
            4 * r.version,
            "every round averages all 4 workers"
        );
        r.virtual_s / r.version as f64
    };
    let (fast, slow) = (per_round(0), per_round(1));
    assert!(slow >= 4.0 * fast, "{slow} s per round vs {fast} s");
    // Asynchronous EASGD does not wait: the fast workers keep their pace.
    let mut c =
        config("kind = \"easgd\"\nalpha = 0.5\nstaleness = { kind = \"constant\" }\ntau_max = 64");
    c.speed.stragglers = 1;
    c.speed.factor = 5.0;
    let r = run(&c, data()).unwrap();
    let fast_rounds = r.per_worker[1].rounds;
    assert!(
        fast_rounds >= 4 * r.per_worker[0].rounds,
        "{:?}",
        r.per_worker
    );
}

#[test]
fn fedbuff_applies_exactly_every_m_updates() {
    let c = config("kind = \"fedbuff\"\nm = 3\nstaleness = { kind = \"inverse\" }\ntau_max = 16");
    let r = run(&c, data()).unwrap();
    assert!(r.version >= 3, "{r:?}");
    assert_eq!(r.applied, 3 * r.version);
    assert_eq!(r.meter.count, r.applied);
}

#[test]
fn bounded_staleness_never_applies_an_update_older_than_s() {
    let mut c = config("kind = \"bounded\"\ns = 1");
    c.workers = 8;
    c.speed.dist = SpeedDist::Lognormal {
        mu: 0.0,
        sigma: 0.8,
    };
    let r = run(&c, data()).unwrap();
    assert!(
        r.refused > 0,
        "the bound must bite for the test to mean anything"
    );
    assert!(r.staleness.max <= 1, "{:?}", r.staleness);
    assert!(r.per_worker.iter().all(|w| w.meter.tau_max <= 1));
    let unbounded =
        config("kind = \"async_sgd\"\nstaleness = { kind = \"constant\" }\ntau_max = 64");
    let mut u = unbounded;
    u.workers = 8;
    u.speed.dist = c.speed.dist;
    assert!(run(&u, data()).unwrap().staleness.max > 1);
}

#[test]
fn training_improves_the_model_under_every_strategy() {
    for strategy in [
        "kind = \"easgd\"\nalpha = 0.5\nstaleness = { kind = \"inverse\" }\ntau_max = 8",
        "kind = \"fedavg\"\nk = 2\nm_of_n = 3",
        "kind = \"async_sgd\"\nstaleness = { kind = \"inverse\" }\ntau_max = 8",
        "kind = \"adacomm\"\nk0 = 4\nk_min = 1\ninterval_s = 0.3",
        "kind = \"swarm\"\ntopology = \"complete\"",
    ] {
        let mut c = config(strategy);
        c.duration_s = 3.0;
        c.train.batch = 16;
        let r = run(&c, data()).unwrap();
        let (first, last) = (r.curve.first().unwrap(), r.curve.last().unwrap());
        assert!(
            last.loss < 0.6 * first.loss && last.accuracy > first.accuracy + 0.4,
            "{strategy}: {first:?} -> {last:?}"
        );
        assert!(r.bytes_up > 0 && r.bytes_down > 0);
        assert_eq!(last.t_s, 3.0);
    }
}

/// Configs too big for the data or the memory limit fail with a message before anything is
/// allocated: 100,000 workers once aborted with an allocation failure.
#[test]
fn oversized_runs_are_refused_before_allocation() {
    let mut c =
        config("kind = \"easgd\"\nalpha = 0.5\nstaleness = { kind = \"inverse\" }\ntau_max = 8");
    c.workers = 100_000;
    let e = run(&c, data()).unwrap_err().to_string();
    assert!(e.contains("more than the 8000 training digits"), "{e}");
    c.workers = 4;
    c.memory_limit_mib = 1;
    let e = run(&c, data()).unwrap_err().to_string();
    assert!(e.contains("memory_limit_mib"), "{e}");
}
