//! The 8-worker experiment that the end-to-end test and `easel bench relay` share: a real
//! relay on 127.0.0.1 (plain HTTP, the CPU evaluator on the 2,000 test digits), one room
//! created through `POST /api/rooms`, and [`crate`] workers, some of them stragglers,
//! until the room has a fixed number of acknowledged pushes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use easel_client::cpu;
use easel_client::data::Mnist;
use easel_protocol::{Backend, Codec, Hyper, Staleness};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warp::Filter;

use crate::{self as bots, BotOptions, BotReport};
use easel_relay::eval::Evaluator;
use easel_relay::room::{Partition, RoomSettings};
use easel_relay::runs::EvalPoint;
use easel_relay::{Config, Shutdown};

/// The settings of one run.
#[derive(Clone, Debug)]
pub struct Setup {
    /// Bot workers.
    pub workers: usize,
    /// How many of them are stragglers.
    pub slow: usize,
    /// How many times longer a straggler's round takes.
    pub slowdown: f64,
    /// The run ends once this many pushes were acknowledged (in-flight pushes finish).
    pub total_pushes: u64,
    /// Seed of the initial center, the partition and the bots.
    pub seed: u64,
    /// The room's settings (its push codec is replaced by the codec under test).
    pub hyper: Hyper,
}

impl Default for Setup {
    /// Eight IID workers, two of them five times slower, plain SGD with `K = 8` steps of 32
    /// at learning rate 0.1, `alpha = 0.5` weighed by `1 / (1 + tau)`, `tau_max = 64`,
    /// fp32 centers, 1,200 pushes.
    fn default() -> Setup {
        Setup {
            workers: 8,
            slow: 2,
            slowdown: 5.0,
            total_pushes: 1200,
            seed: 1,
            hyper: Hyper {
                alpha: 0.5,
                staleness: Staleness::Inverse,
                tau_max: 64,
                local_steps: 8,
                lr: 0.1,
                batch: 32,
                momentum: 0.0,
                codec_up: Codec::Fp32,
                codec_down: Codec::Fp32,
                error_feedback: false,
                merge: easel_protocol::Merge::Easgd,
            },
        }
    }
}

/// Figures of the pushes of one group of workers, from the relay's ledger.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Group {
    /// Accepted pushes.
    pub accepted: u64,
    /// Refused pushes.
    pub refused: u64,
    /// Mean staleness of the accepted pushes.
    pub mean_tau: f64,
    /// Mean `alpha_eff` of the accepted pushes.
    pub mean_alpha_eff: f64,
}

/// What one run measured.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The codec's name.
    pub name: String,
    pub codec: Codec,
    /// The final center's accuracy on the 2,000 test digits, in `[0, 1]`.
    pub accuracy: f64,
    /// Its mean loss.
    pub loss: f64,
    /// The final center version.
    pub version: u64,
    /// Pushes in the ledger.
    pub ledger_pushes: u64,
    /// Acks the bots received.
    pub acks: u64,
    /// Mean bytes of a push message as the relay received it.
    pub bytes_per_push: f64,
    /// Wall-clock seconds of the bots' run.
    pub seconds: f64,
    /// The stragglers' pushes and the others'.
    pub slow: Group,
    pub fast: Group,
    /// Each bot's report.
    pub reports: Vec<BotReport>,
    /// The relay's periodic evaluations.
    pub evals: Vec<EvalPoint>,
    /// The ledger, as `GET /api/rooms/CODE/ledger.json` gives it.
    pub ledger_json: serde_json::Value,
}

/// One HTTP/1.1 request to the relay: status and body.
async fn http(addr: SocketAddr, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    request(addr, method, path, "").await
}

/// One HTTP/1.1 request to the relay with a JSON `body` (none when empty): status and body.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let mut tcp = TcpStream::connect(addr).await?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .context("an HTTP status line")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Runs `setup` with pushes compressed by `codec` (with error feedback when `error_feedback`)
/// on CPU bots, and measures it.
pub async fn run(
    setup: &Setup,
    name: &str,
    codec: Codec,
    error_feedback: bool,
    data: Arc<Mnist>,
) -> anyhow::Result<Outcome> {
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
                codec_up: codec,
                error_feedback,
                ..setup.hyper
            },
            partition: Partition {
                scheme: "iid".into(),
                seed: setup.seed,
                shards: setup.workers as u32,
            },
            init_seed: setup.seed,
            ..RoomSettings::default()
        },
        eval_every: Duration::from_secs(2),
        evaluator: Some(evaluator),
        ..Config::new(std::sync::Arc::new(easel_client::Lenet))
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let files = warp::path("nothing").map(|| "").boxed();
    let relay = easel_relay::run(config, files, async move {
        let _ = stopped.await;
    })
    .await?;
    let addr = relay.http.context("the relay's HTTP listener")?;
    let (status, body) = http(addr, "POST", &format!("/api/rooms?admin={token}")).await?;
    if status != 201 {
        bail!("POST /api/rooms answered {status}: {body}");
    }
    let code = serde_json::from_str::<serde_json::Value>(&body)?["code"]
        .as_str()
        .context("a room code")?
        .to_string();

    let (_trigger, shutdown) = Shutdown::new();
    let opts = BotOptions {
        relay: format!("ws://{addr}/ws"),
        room: code.clone(),
        count: setup.workers,
        slow: setup.slow,
        slowdown: setup.slowdown,
        backend: Backend::Cpu,
        seed: setup.seed,
        pushes: None,
        total_pushes: Some(setup.total_pushes),
        trust: None,
    };
    let t0 = Instant::now();
    let reports = bots::run_bots(opts, Arc::new(data.train.clone()), shutdown, None).await?;
    let seconds = t0.elapsed().as_secs_f64();
    if let Some(r) = reports.iter().find(|r| r.error.is_some()) {
        bail!("{}", r.line());
    }

    let room = relay.hub.room(&code).context("the room")?;
    let (version, center) = room.center();
    let final_eval = cpu::evaluate(&center, &data.test.images, &data.test.labels);
    let (status, body) = http(
        addr,
        "GET",
        &format!("/api/rooms/{code}/ledger.json?admin={token}"),
    )
    .await?;
    if status != 200 {
        bail!("GET ledger.json answered {status}");
    }
    let ledger_json: serde_json::Value = serde_json::from_str(&body)?;
    let slow_ids: Vec<u64> = reports
        .iter()
        .filter(|r| r.slow)
        .map(|r| r.worker_id)
        .collect();
    let (ledger_pushes, bytes_in, slow, fast) = room.with_room(|r| {
        let mut groups: BTreeMap<bool, (Group, f64, f64)> = BTreeMap::new();
        for rec in r.ledger().records() {
            let g = groups.entry(slow_ids.contains(&rec.worker)).or_default();
            if rec.accepted() {
                g.0.accepted += 1;
                g.1 += rec.tau as f64;
                g.2 += f64::from(rec.alpha_eff);
            } else {
                g.0.refused += 1;
            }
        }
        let group = |slow: bool| {
            groups.get(&slow).map_or(Group::default(), |(g, tau, a)| {
                let n = g.accepted.max(1) as f64;
                Group {
                    mean_tau: tau / n,
                    mean_alpha_eff: a / n,
                    ..*g
                }
            })
        };
        let t = r.ledger().totals();
        (t.pushes, t.bytes_in, group(true), group(false))
    });
    let evals = room.evals();
    let _ = stop.send(());
    relay.wait().await;
    Ok(Outcome {
        name: name.to_string(),
        codec,
        accuracy: final_eval.accuracy,
        loss: final_eval.loss,
        version,
        ledger_pushes,
        acks: reports.iter().map(|r| r.acks).sum(),
        bytes_per_push: bytes_in as f64 / ledger_pushes.max(1) as f64,
        seconds,
        slow,
        fast,
        reports,
        evals,
        ledger_json,
    })
}
