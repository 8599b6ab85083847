//! `easel sim`: a deterministic discrete-event simulation of a room of workers.
//!
//! A virtual clock in integer microseconds and a binary heap of events (ties broken by a
//! sequence number, so the order never depends on anything but the configuration) drive
//! `N` simulated workers. Each trains the real model on the CPU backend
//! ([`easel_client::CpuTrainer`], one trainer whose parameters are swapped per worker) on its
//! real shard ([`easel_client::data::partition`]), compresses its update with the real
//! codecs (with error feedback), and sends it over a simulated network (latency plus the
//! encoded message's bytes over the bandwidth) to a center driven by the real strategy code
//! ([`easel_protocol::strategy`]). SwarmSGD runs without a center, exactly as the relay
//! routes it ([`easel_protocol::strategy::Swarm`]): each push is averaged with a random
//! neighbour's copy, the neighbour catches up under its own next push, and the mean model is
//! evaluated.
//!
//! A worker's round is computed when it ends, from the model it got back with its last
//! answer.
//!
//! Everything is single-threaded and seeded: the same configuration gives byte-identical
//! output.

pub mod config;
pub mod experiments;
pub mod relay;
pub mod svg;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;

use easel_client::data::{Mnist, partition};
use easel_client::schedule::Cursor;
use easel_client::trainer::mean_loss;
use easel_client::{CpuTrainer, Sgd, Trainer, cpu, model};
use easel_protocol::codec::{self, Codec, ErrorFeedback};
use easel_protocol::message::{self, Message, Push};
use easel_protocol::strategy::{Reply, Strategy, Summary, after_reply};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal};
use serde::Serialize;

pub use config::{ConfigError, SimConfig, SpeedDist};
pub use relay::{Delivery, SimRelay};

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// One evaluation of the model (the center, or Swarm's mean model).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct EvalPoint {
    /// Virtual seconds.
    pub t_s: f64,
    pub accuracy: f64,
    pub loss: f64,
}

/// Staleness of the applied updates.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Staleness {
    /// `histogram[t]`: applied updates with `tau == t`.
    pub histogram: Vec<u64>,
    pub mean: f64,
    pub p95: u32,
    pub max: u32,
}

/// One worker's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorkerResult {
    pub worker: u32,
    /// Rounds of local steps finished.
    pub rounds: u64,
    /// Its applied updates' staleness and view distances.
    pub meter: Summary,
}

/// What a run measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimResult {
    pub strategy: String,
    pub workers: u32,
    pub seed: u64,
    /// Accuracy over virtual time.
    pub curve: Vec<EvalPoint>,
    pub target_accuracy: f64,
    /// The first evaluation at or above the target, in virtual seconds.
    pub time_to_target_s: Option<f64>,
    pub final_accuracy: f64,
    pub best_accuracy: f64,
    /// Bytes of every message from workers (pushes) and to them (centers; Swarm: each
    /// worker's own model after its exchange).
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Rounds of local steps finished, over all workers.
    pub rounds: u64,
    /// SGD steps taken, over all workers.
    pub steps: u64,
    /// Updates applied to the center (Swarm: pushes applied to the relay's copy of the
    /// worker's model and averaged with a neighbour's).
    pub applied: u64,
    /// Updates refused (the worker resynchronised).
    pub refused: u64,
    /// The center's last version (Swarm: the swarm's, one per applied push).
    pub version: u64,
    pub staleness: Staleness,
    /// The elastic-consistency meter over the run: `distance_max` is the empirical `B`.
    pub meter: Summary,
    pub per_worker: Vec<WorkerResult>,
    /// The virtual time the run ended at, in seconds.
    pub virtual_s: f64,
}

/// What happens at an instant of the virtual clock.
#[derive(Clone, Debug)]
enum Event {
    /// Worker `w` finished its round's local steps.
    RoundDone { w: u32 },
    /// Worker `w`'s push reaches the center.
    Arrive {
        w: u32,
        base: u64,
        payload: Vec<u8>,
        loss: f32,
    },
    /// The center's answer reaches worker `w`.
    Answer {
        w: u32,
        version: u64,
        center: Arc<[f32]>,
        reply: Reply,
    },
    /// Evaluate the model.
    Eval,
}

/// One simulated worker's state between rounds.
struct SimWorker {
    /// Training-split indices of its shard.
    shard: Vec<u32>,
    x: Vec<f32>,
    /// Momentum (empty for plain SGD).
    velocity: Vec<f32>,
    /// The center it last received, and its version.
    view: Arc<[f32]>,
    view_version: u64,
    feedback: ErrorFeedback,
    rng: ChaCha8Rng,
    /// Where it is in its shard's epochs (positions into `shard`).
    cursor: Cursor,
    /// This worker's slowdown (stragglers) times the nominal step time, in microseconds.
    step_us: f64,
    rounds: u64,
    last_loss: f32,
}

/// The simulation's state.
struct Sim<'a> {
    cfg: &'a SimConfig,
    data: &'a Mnist,
    now: u64,
    seq: u64,
    heap: BinaryHeap<Reverse<(u64, u64)>>,
    events: BTreeMap<u64, Event>,
    trainer: CpuTrainer,
    workers: Vec<SimWorker>,
    /// The relay's side: the engine the live room drives, answering with the codec of the
    /// models sent back (SwarmSGD's `quantize` when it has one, else the configured one).
    relay: SimRelay,
    batch: Vec<u32>,
    curve: Vec<EvalPoint>,
    bytes_up: u64,
    bytes_down: u64,
    steps: u64,
    end: u64,
}

/// The codecs of pushes and of the models sent back: Swarm's `quantize` both ways when it
/// has one, else the configured ones.
fn codecs(cfg: &SimConfig) -> (Codec, Codec) {
    match cfg.strategy {
        Strategy::Swarm {
            quantize: Some(q), ..
        } => (q, q),
        _ => (cfg.train.codec_up, cfg.train.codec_down),
    }
}

/// Microseconds of a virtual duration in seconds.
fn micros(seconds: f64) -> u64 {
    (seconds * 1e6).round().max(0.0) as u64
}

/// Runs the simulation `cfg` describes on `data` (the real MNIST split).
pub fn run(cfg: &SimConfig, data: &Mnist) -> Result<SimResult, SimError> {
    cfg.validate().map_err(SimError::Config)?;
    cfg.check_fits(data.train.labels.len())
        .map_err(SimError::Config)?;
    let mut sim = Sim::new(cfg, data)?;
    sim.run();
    Ok(sim.result())
}

impl<'a> Sim<'a> {
    fn new(cfg: &'a SimConfig, data: &'a Mnist) -> Result<Sim<'a>, SimError> {
        let n = cfg.workers;
        let scheme = cfg.partition_scheme().map_err(SimError::Config)?;
        let shards = partition(&data.train.labels, n as usize, scheme, cfg.seed)
            .map_err(|e| SimError::Config(format!("partition: {e}")))?;
        // Before any model is allocated: an empty shard is a config error.
        if let Some(i) = shards.iter().position(|s| s.is_empty()) {
            return Err(SimError::Config(format!(
                "partition {} gives worker {i} no digits; use fewer workers or another scheme",
                cfg.partition
            )));
        }
        let init = model::init_params(cfg.seed);
        let center: Arc<[f32]> = init.clone().into();
        let sgd = Sgd {
            momentum: cfg.train.momentum,
            weight_decay: 0.0,
        };
        let trainer = CpuTrainer::new(
            &data.train.images,
            &data.train.labels,
            &init,
            sgd,
            cfg.train.batch as usize,
        );
        let step_us = cfg.speed.step_ms * 1e3;
        let workers = shards
            .into_iter()
            .enumerate()
            .map(|(i, shard)| {
                let seed = cfg.seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let slow = if (i as u32) < cfg.speed.stragglers {
                    cfg.speed.factor
                } else {
                    1.0
                };
                SimWorker {
                    cursor: Cursor::new(shard.len(), seed),
                    shard,
                    x: init.clone(),
                    velocity: if sgd.momentum == 0.0 {
                        Vec::new()
                    } else {
                        vec![0.0; init.len()]
                    },
                    view: center.clone(),
                    view_version: 0,
                    feedback: ErrorFeedback::new(0),
                    rng: ChaCha8Rng::seed_from_u64(seed),
                    step_us: step_us * slow,
                    rounds: 0,
                    last_loss: f32::NAN,
                }
            })
            .collect::<Vec<_>>();
        let rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5EED_0F55_1111);
        let (_, down) = codecs(cfg);
        let relay = SimRelay::new(
            cfg.strategy.clone(),
            n,
            center,
            cfg.train.max_norm,
            down,
            rng,
        )
        .map_err(|e| SimError::Config(e.to_string()))?;
        Ok(Sim {
            cfg,
            data,
            now: 0,
            seq: 0,
            heap: BinaryHeap::new(),
            events: BTreeMap::new(),
            trainer,
            workers,
            relay,
            batch: Vec::with_capacity(cfg.train.batch as usize),
            curve: Vec::new(),
            bytes_up: 0,
            bytes_down: 0,
            steps: 0,
            end: micros(cfg.duration_s),
        })
    }

    fn schedule(&mut self, at: u64, event: Event) {
        self.heap.push(Reverse((at, self.seq)));
        self.events.insert(self.seq, event);
        self.seq += 1;
    }

    /// Microseconds to move `bytes` one way.
    fn transfer_us(&self, bytes: usize) -> u64 {
        let net = &self.cfg.network;
        micros(net.latency_ms / 1e3 + bytes as f64 * 8.0 / (net.bandwidth_mbps * 1e6))
    }

    fn run(&mut self) {
        for w in 0..self.cfg.workers {
            self.start_round(w);
        }
        self.schedule(0, Event::Eval);
        while let Some(Reverse((at, seq))) = self.heap.pop() {
            if at > self.end {
                break;
            }
            self.now = at;
            let event = self
                .events
                .remove(&seq)
                .expect("every scheduled event is stored");
            match event {
                Event::RoundDone { w } => self.round_done(w),
                Event::Arrive {
                    w,
                    base,
                    payload,
                    loss,
                } => self.arrive(w, base, &payload, loss),
                Event::Answer {
                    w,
                    version,
                    center,
                    reply,
                } => self.answer(w, version, center, reply),
                Event::Eval => {
                    self.evaluate();
                    let next = self.now + micros(self.cfg.eval_every_s);
                    if next < self.end {
                        self.schedule(next, Event::Eval);
                    }
                }
            }
        }
        self.now = self.end;
        self.evaluate();
    }

    /// Local steps in a round of worker `w`.
    fn local_steps(&self) -> u32 {
        match self.relay.engine().period() {
            Some(k) => k,
            None => self.cfg.strategy.local_steps(self.cfg.train.local_steps),
        }
    }

    fn start_round(&mut self, w: u32) {
        let steps = self.local_steps();
        let jitter = match self.cfg.speed.dist {
            SpeedDist::Fixed => 1.0,
            SpeedDist::Lognormal { mu, sigma } => {
                let d = LogNormal::new(mu, sigma).expect("validated lognormal parameters");
                d.sample(&mut self.workers[w as usize].rng)
            }
        };
        let us = self.workers[w as usize].step_us * f64::from(steps) * jitter;
        self.schedule(self.now + us.round() as u64, Event::RoundDone { w });
    }

    /// Runs worker `w`'s local steps on the shared trainer; returns the mean loss.
    fn train(&mut self, w: u32) -> f32 {
        let steps = self.local_steps();
        let batch = self.cfg.train.batch as usize;
        let lr = self.cfg.train.lr;
        let worker = &mut self.workers[w as usize];
        let momentum = !worker.velocity.is_empty();
        if momentum {
            self.trainer.swap_state(&mut worker.x, &mut worker.velocity);
        } else {
            self.trainer.swap_params(&mut worker.x);
        }
        for _ in 0..steps {
            let positions = worker.cursor.next_batch(batch);
            self.batch.clear();
            self.batch
                .extend(positions.iter().map(|&i| worker.shard[i as usize]));
            self.trainer.step(&self.batch, lr);
        }
        if momentum {
            self.trainer.swap_state(&mut worker.x, &mut worker.velocity);
        } else {
            self.trainer.swap_params(&mut worker.x);
        }
        self.steps += u64::from(steps);
        worker.rounds += 1;
        let loss = mean_loss(&self.trainer.finish());
        worker.last_loss = loss;
        loss
    }

    fn round_done(&mut self, w: u32) {
        let loss = self.train(w);
        let (up, _) = codecs(self.cfg);
        let train = &self.cfg.train;
        let worker = &mut self.workers[w as usize];
        let feedback = train.error_feedback.then_some(&mut worker.feedback);
        let payload = codec::encode_update(up, &worker.x, &worker.view, feedback, &mut worker.rng);
        let base = worker.view_version;
        let bytes = message::encode(&Message::Push(Push {
            base_version: base,
            local_steps: self.local_steps(),
            samples: 0,
            loss,
            payload: payload.clone(),
        }))
        .len();
        self.bytes_up += bytes as u64;
        let at = self.now + self.transfer_us(bytes);
        self.schedule(
            at,
            Event::Arrive {
                w,
                base,
                payload,
                loss,
            },
        );
    }

    /// Worker `w`'s push reaches the relay: every answer it makes is sent.
    fn arrive(&mut self, w: u32, base: u64, payload: &[u8], loss: f32) {
        for d in self.relay.arrive(w, base, payload, loss, self.now) {
            self.send_answer(d.worker, d.version, d.payload_len, d.center, d.reply);
        }
    }

    /// Sends worker `w` the Center of `version` whose payload has `payload` bytes and
    /// decodes to `received`: its bytes count down, and it lands after the transfer.
    fn send_answer(
        &mut self,
        w: u32,
        version: u64,
        payload: usize,
        received: Arc<[f32]>,
        reply: Reply,
    ) {
        let bytes = message::center_len(payload);
        self.bytes_down += bytes as u64;
        let at = self.now + self.transfer_us(bytes);
        self.schedule(
            at,
            Event::Answer {
                w,
                version,
                center: received,
                reply,
            },
        );
    }

    fn answer(&mut self, w: u32, version: u64, center: Arc<[f32]>, reply: Reply) {
        let worker = &mut self.workers[w as usize];
        let merged = after_reply(
            &self.cfg.strategy,
            reply,
            &mut worker.x,
            &worker.view,
            &center,
        );
        if merged.reset_optimizer {
            worker.velocity.fill(0.0);
        }
        if merged.reset_residual {
            worker.feedback.reset();
        }
        worker.view = center;
        worker.view_version = version;
        self.start_round(w);
    }

    fn evaluate(&mut self) {
        let params = self.relay.engine().center().1.clone();
        let test = &self.data.test;
        let n = self.cfg.eval_samples.unwrap_or(test.len()).min(test.len());
        let e = cpu::evaluate(
            &params,
            &test.images[..n * model::IMAGE_PIXELS],
            &test.labels[..n],
        );
        let t_s = self.now as f64 / 1e6;
        if self.curve.last().is_some_and(|p| p.t_s == t_s) {
            self.curve.pop();
        }
        self.curve.push(EvalPoint {
            t_s,
            accuracy: e.accuracy,
            loss: e.loss,
        });
    }

    fn result(self) -> SimResult {
        let meter = self.relay.engine().meter().clone();
        let summary = meter.summary();
        let per: BTreeMap<u32, Summary> = meter.per_worker().into_iter().collect();
        let target = self.cfg.target_accuracy;
        SimResult {
            strategy: self.cfg.strategy.name().to_string(),
            workers: self.cfg.workers,
            seed: self.cfg.seed,
            target_accuracy: target,
            time_to_target_s: self
                .curve
                .iter()
                .find(|p| p.accuracy >= target)
                .map(|p| p.t_s),
            final_accuracy: self.curve.last().map_or(0.0, |p| p.accuracy),
            best_accuracy: self.curve.iter().map(|p| p.accuracy).fold(0.0, f64::max),
            bytes_up: self.bytes_up,
            bytes_down: self.bytes_down,
            rounds: self.workers.iter().map(|w| w.rounds).sum(),
            steps: self.steps,
            applied: self.relay.applied,
            refused: self.relay.refused,
            version: self.relay.engine().version(),
            staleness: Staleness {
                histogram: meter.histogram().to_vec(),
                mean: summary.tau_mean,
                p95: summary.tau_p95,
                max: summary.tau_max,
            },
            meter: summary,
            per_worker: self
                .workers
                .iter()
                .enumerate()
                .map(|(i, w)| WorkerResult {
                    worker: i as u32,
                    rounds: w.rounds,
                    meter: per.get(&(i as u32)).copied().unwrap_or_default(),
                })
                .collect(),
            virtual_s: self.now as f64 / 1e6,
            curve: self.curve,
        }
    }
}

impl SimResult {
    /// The result as pretty JSON (the same bytes for the same configuration).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("results serialize")
    }

    /// A human-readable summary.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let ttt = self
            .time_to_target_s
            .map_or("not reached".into(), |t| format!("{t:.1} s"));
        let lines = [
            ("strategy", self.strategy.clone()),
            ("workers", self.workers.to_string()),
            ("virtual time", format!("{:.1} s", self.virtual_s)),
            (
                "final / best accuracy",
                format!(
                    "{:.2}% / {:.2}%",
                    100.0 * self.final_accuracy,
                    100.0 * self.best_accuracy
                ),
            ),
            (
                "time to target",
                format!("{ttt} (target {:.0}%)", 100.0 * self.target_accuracy),
            ),
            (
                "rounds / steps",
                format!("{} / {}", self.rounds, self.steps),
            ),
            (
                "applied / refused",
                format!("{} / {}", self.applied, self.refused),
            ),
            (
                "bytes up / down",
                format!("{} / {}", self.bytes_up, self.bytes_down),
            ),
            (
                "tau mean / p95 / max",
                format!(
                    "{:.2} / {} / {}",
                    self.staleness.mean, self.staleness.p95, self.staleness.max
                ),
            ),
            (
                "view distance mean / p95 / B",
                format!(
                    "{:.4} / {:.4} / {:.4}",
                    self.meter.distance_mean, self.meter.distance_p95, self.meter.distance_max
                ),
            ),
        ];
        for (k, v) in lines {
            out.push_str(&format!("{k:<30} {v}\n"));
        }
        out.push_str("\n  t (s)  accuracy    loss\n");
        for p in &self.curve {
            out.push_str(&format!(
                "{:7.1}  {:7.2}%  {:.4}\n",
                p.t_s,
                100.0 * p.accuracy,
                p.loss
            ));
        }
        out
    }
}

/// Peak resident memory of this process so far (`VmHWM` in `/proc/self/status`), in KiB.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests;
