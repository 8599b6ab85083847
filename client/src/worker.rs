//! The worker's side of a relay session, shared by the native bots and the browser.
//!
//! This module is the one implementation of PROTOCOL.md's session flow for a training
//! worker. It has no clock, no threads and no I/O: the caller owns the connection, hands
//! every received message to [`Worker::on_bytes`] (or [`Worker::on_message`]), asks for a
//! round of local training with [`Worker::local_round`] when [`Worker::ready`] says so, sends
//! the bytes it returns, and waits the [`Worker::delay_ms`] the teacher asked for on its own
//! clock. The merging rules are `easel_protocol::aggregate`'s and the compression
//! `easel_protocol::codec`'s; nothing here restates them.
//!
//! A session:
//! 1. send [`join`]'s message;
//! 2. on the relay's `Welcome`, compute the shard and the start with [`prepare`], build a
//!    [`Trainer`] on [`Start::shard`], and make the worker with [`Worker::new`];
//! 3. while the session lasts: when [`Worker::ready`], run [`Worker::local_round`] (which
//!    trains `K` steps and returns the encoded `Push`), send it, then feed the answers (an
//!    `Ack`, then a `Center`) to [`Worker::on_bytes`], which pulls toward the center after an
//!    accepted push and resynchronises after a refused one.
//!
//! On the web, where the GPU's parameters can only be read asynchronously, split a round
//! into [`Worker::train_steps`], an awaited read of the parameters, and
//! [`Worker::finish_round`].

use easel_protocol::aggregate::distance;
use easel_protocol::codec::{self, ErrorFeedback};
use easel_protocol::message::{self, Join, caps};
use easel_protocol::strategy::{Reply, after_reply};
use easel_protocol::{
    Ack, Backend, Center, ClientKind, Control, ErrorMessage, Hyper, LENET5_28, Limits, Message,
    Outcome, ProtocolError, Push, Resume, ResumeToken, Shard, Welcome,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::Sgd;
use crate::data::{Partition, PartitionError, Split, partition};
use crate::schedule::Cursor;
use crate::trainer::{Trainer, mean_loss};
pub use easel_protocol::codec::named_codecs;

/// The most shards a `Welcome` may ask the partitioner for; more would only allocate.
pub const MAX_SHARDS: u32 = 65_536;

/// Why a session cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Bytes from the relay that are not a message.
    #[error("undecodable message from the relay: {0}")]
    Protocol(#[from] ProtocolError),
    /// A payload that does not decode to the model's length.
    #[error("undecodable {what} payload: {source}")]
    Payload {
        what: &'static str,
        #[source]
        source: codec::CodecError,
    },
    /// The room trains a model this client does not have.
    #[error("the relay trains {name} ({params} parameters), not lenet5-28")]
    WrongModel { name: String, params: u32 },
    /// Settings out of range.
    #[error("invalid settings from the relay: {0}")]
    BadHyper(&'static str),
    /// A shard this client cannot make.
    #[error("invalid shard from the relay: {0}")]
    BadShard(String),
    /// The shard's partition scheme could not be used.
    #[error("cannot compute the shard: {0}")]
    Partition(#[from] PartitionError),
    /// A message that is valid but not at this point of the session.
    #[error("unexpected {0} from the relay")]
    Unexpected(&'static str),
    /// A center sent as a difference from a version this worker does not hold.
    #[error("a center difference from version {base}, but this worker holds version {held}")]
    CenterBase { base: u64, held: u64 },
}

/// The `Join` a training worker opens its session with: this crate's model, every codec
/// capability, and `resume` (an earlier Welcome's id and token, [`Worker::resume`]) to take
/// up that place again after a reconnection.
pub fn join(room: &str, kind: ClientKind, backend: Backend, resume: Option<Resume>) -> Message {
    Message::Join(Join {
        room: room.to_string(),
        kind,
        backend,
        capabilities: caps::ALL,
        layout_hash: LENET5_28.layout_hash(),
        resume_worker: resume,
    })
}

/// What a worker starts from, computed from a `Welcome` and the training split by
/// [`prepare`]: build the trainer on `shard` with `sgd` and batches of `batch`.
#[derive(Clone, Debug)]
pub struct Start {
    /// This worker's id in the room.
    pub worker_id: u64,
    /// The secret that resumes it.
    pub resume_token: ResumeToken,
    /// The room's settings.
    pub hyper: Hyper,
    /// The indices of the shard's digits in the training split.
    pub indices: Vec<u32>,
    /// The shard's digits, in the order of `indices`.
    pub shard: Split,
    /// The center version the worker starts from.
    pub center_version: u64,
    /// The decoded center of that version.
    pub center: Vec<f32>,
    /// The optimizer the room asks for (its momentum; no weight decay).
    pub sgd: Sgd,
    /// The room's batch size, the most samples one step takes.
    pub batch: usize,
}

/// Checks a `Welcome` and computes what a worker starts from: the model must be lenet5-28,
/// the settings in range, the center must decode, and the shard must be non-empty and
/// inside `train`.
pub fn prepare(welcome: &Welcome, train: &Split) -> Result<Start, WorkerError> {
    if !welcome.model.matches(&LENET5_28) {
        return Err(WorkerError::WrongModel {
            name: welcome.model.name.clone(),
            params: welcome.model.param_count,
        });
    }
    welcome.hyper.validate().map_err(WorkerError::BadHyper)?;
    let center = codec::decode(&welcome.center, LENET5_28.param_count).map_err(|source| {
        WorkerError::Payload {
            what: "center",
            source,
        }
    })?;
    let indices = shard_indices(&welcome.shard, &train.labels)?;
    Ok(Start {
        worker_id: welcome.worker_id,
        resume_token: welcome.resume_token,
        hyper: welcome.hyper,
        shard: train.subset(&indices),
        indices,
        center_version: welcome.center_version,
        center,
        sgd: Sgd {
            momentum: welcome.hyper.momentum,
            weight_decay: 0.0,
        },
        batch: welcome.hyper.batch as usize,
    })
}

/// The training-split indices a [`Shard`] names: an explicit list (each index checked
/// against `labels`), or one shard of [`partition`] computed here from the labels.
pub fn shard_indices(shard: &Shard, labels: &[u8]) -> Result<Vec<u32>, WorkerError> {
    let indices = match shard {
        Shard::Indices(ix) => {
            if let Some(&bad) = ix.iter().find(|&&i| i as usize >= labels.len()) {
                return Err(WorkerError::BadShard(format!(
                    "index {bad} is outside the {} training digits",
                    labels.len()
                )));
            }
            ix.clone()
        }
        Shard::Partition {
            scheme,
            seed,
            workers,
            index,
        } => {
            if *workers == 0 || *workers > MAX_SHARDS || index >= workers {
                return Err(WorkerError::BadShard(format!(
                    "shard {index} of {workers} (at most {MAX_SHARDS} shards)"
                )));
            }
            let scheme: Partition = scheme.parse()?;
            partition(labels, *workers as usize, scheme, *seed)?.swap_remove(*index as usize)
        }
    };
    if indices.is_empty() {
        return Err(WorkerError::BadShard("the shard is empty".into()));
    }
    Ok(indices)
}

/// What a worker has done so far, for progress lines and tests.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// Pushes sent.
    pub pushes: u64,
    /// Pushes the relay acknowledged as accepted.
    pub accepted: u64,
    /// Pushes the relay refused (each followed by a resync).
    pub refused: u64,
    /// Bytes of every message sent.
    pub bytes_up: u64,
    /// Bytes of every message received.
    pub bytes_down: u64,
    /// Local SGD steps taken.
    pub steps: u64,
    /// Training samples seen.
    pub samples: u64,
    /// Staleness of the last accepted push.
    pub last_tau: Option<u32>,
    /// Sum of the staleness of accepted pushes.
    pub tau_sum: u64,
    /// The weight the last accepted push was applied with.
    pub last_alpha_eff: Option<f32>,
    /// Sum of `alpha_eff` over accepted pushes.
    pub alpha_eff_sum: f64,
    /// Mean training loss of the last round (NaN before any loss was reported).
    pub last_loss: f32,
    /// `||x_i - x~||` when the last center arrived, before the pull.
    pub distance_to_center: f32,
    /// Error messages the relay sent.
    pub errors: u64,
}

impl Stats {
    /// Mean staleness of the accepted pushes.
    pub fn mean_tau(&self) -> Option<f64> {
        (self.accepted > 0).then(|| self.tau_sum as f64 / self.accepted as f64)
    }

    /// Mean `alpha_eff` of the accepted pushes.
    pub fn mean_alpha_eff(&self) -> Option<f64> {
        (self.accepted > 0).then(|| self.alpha_eff_sum / self.accepted as f64)
    }
}

/// Where a worker is in the push cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No push in flight: the next round may start.
    Idle,
    /// A push was sent; its Ack has not arrived.
    AwaitAck,
    /// The Ack arrived (accepted or not); the Center that follows has not.
    AwaitCenter { accepted: bool },
}

/// What a received message meant to the worker.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The push was acknowledged.
    Acked(Outcome),
    /// A center arrived: the worker pulled toward it (`resynced: false`) or took it
    /// (`resynced: true`). The worker is ready for its next round unless paused.
    Center { version: u64, resynced: bool },
    /// A control message was applied.
    Control(Control),
    /// The relay reported an error.
    Error(ErrorMessage),
}

/// One training worker's session state, after its `Welcome`.
///
/// Generic over the trainer so that native bots can use `dyn Trainer + Send` and move the
/// worker to a training thread, while the browser uses a plain `dyn Trainer`.
pub struct Worker<T: Trainer + ?Sized = dyn Trainer> {
    worker_id: u64,
    /// The secret of the last Welcome: with the id, what a reconnection resumes with.
    resume_token: ResumeToken,
    hyper: Hyper,
    trainer: Box<T>,
    /// The training-split indices of the shard the trainer holds.
    indices: Vec<u32>,
    /// The most samples one step may take: the batch the trainer was built for.
    capacity: usize,
    /// The center version the worker last received (the base of its next push).
    center_version: u64,
    /// That center, decoded.
    center: Vec<f32>,
    /// The worker's model as read back at the end of its last round.
    x: Vec<f32>,
    feedback: ErrorFeedback,
    rng: ChaCha8Rng,
    /// The seed of the epoch orders.
    seed: u64,
    cursor: Cursor,
    /// The optimizer steps taken since the last push.
    round_steps: u32,
    round_samples: u32,
    phase: Phase,
    paused: bool,
    delay_ms: u32,
    limits: Limits,
    stats: Stats,
}

impl<T: Trainer + ?Sized> std::fmt::Debug for Worker<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("worker_id", &self.worker_id)
            .field("center_version", &self.center_version)
            .field("phase", &self.phase)
            .field("paused", &self.paused)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<T: Trainer + ?Sized> Worker<T> {
    /// A worker from its [`Start`] and a trainer built on `start.shard`. The trainer's
    /// parameters are set to the center, its optimizer state reset. `seed` drives the epoch
    /// orders and QSGD's rounding (mixed with the worker id, so every worker differs).
    pub fn new(start: Start, mut trainer: Box<T>, seed: u64) -> Worker<T> {
        trainer.set_params(&start.center, true);
        let seed = seed ^ start.worker_id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let cursor = Cursor::new(start.shard.len(), seed);
        Worker {
            worker_id: start.worker_id,
            resume_token: start.resume_token,
            hyper: start.hyper,
            trainer,
            indices: start.indices,
            capacity: start.batch.max(1),
            center_version: start.center_version,
            x: start.center.clone(),
            feedback: ErrorFeedback::new(start.center.len()),
            center: start.center,
            rng: ChaCha8Rng::seed_from_u64(seed),
            seed,
            cursor,
            round_steps: 0,
            round_samples: 0,
            phase: Phase::Idle,
            paused: false,
            delay_ms: 0,
            limits: Limits::default(),
            stats: Stats {
                last_loss: f32::NAN,
                distance_to_center: 0.0,
                ..Stats::default()
            },
        }
    }

    /// The id the relay gave this worker.
    pub fn worker_id(&self) -> u64 {
        self.worker_id
    }

    /// What a `Join` on a new connection carries to take this worker's place up again: its
    /// id and the resume token of its last Welcome.
    pub fn resume(&self) -> Resume {
        Resume {
            worker: self.worker_id,
            token: self.resume_token,
        }
    }

    /// The room's current settings.
    pub fn hyper(&self) -> &Hyper {
        &self.hyper
    }

    /// The version of the center the next push is relative to.
    pub fn center_version(&self) -> u64 {
        self.center_version
    }

    /// The center the worker holds.
    pub fn center(&self) -> &[f32] {
        &self.center
    }

    /// The counters so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The worker's model as of its last round boundary: read back at the end of the round,
    /// then pulled toward (or replaced by) the center that answered it. Between rounds it
    /// equals the trainer's parameters.
    pub fn params(&self) -> &[f32] {
        &self.x
    }

    /// The training-split indices of the worker's shard.
    pub fn shard_indices(&self) -> &[u32] {
        &self.indices
    }

    /// The most samples one step takes: the batch its trainer was built for.
    pub fn batch_capacity(&self) -> usize {
        self.capacity
    }

    /// Takes the session up again on a new connection, from the `Start` of the relay's new
    /// `Welcome` (PROTOCOL.md, Join: resume). The worker keeps the model it has (`x` and the
    /// trainer's parameters) and takes the id, the settings and the newest center; the push
    /// that was in flight is forgotten, and so is the error-feedback residual. Pause and
    /// delay stay as the teacher last set them.
    ///
    /// Returns `false` when the new shard differs from the one the trainer holds (the relay
    /// did not know the old id): then the caller must build a trainer on `start.shard` and
    /// hand it over with [`Worker::replace_trainer`] before the next round.
    pub fn rejoin(&mut self, start: Start) -> bool {
        let same_shard = start.indices == self.indices;
        self.worker_id = start.worker_id;
        self.resume_token = start.resume_token;
        self.hyper = start.hyper;
        self.center_version = start.center_version;
        self.center = start.center;
        self.stats.distance_to_center = distance(&self.x, &self.center);
        self.feedback.reset();
        self.phase = Phase::Idle;
        self.round_steps = 0;
        self.round_samples = 0;
        if !same_shard {
            self.indices = start.indices;
            self.capacity = start.batch.max(1);
            self.cursor = Cursor::new(start.shard.len(), self.seed);
        }
        same_shard
    }

    /// Replaces the trainer (after the GPU was lost, or after [`Worker::rejoin`] on a new
    /// shard) with one built on the worker's shard: it starts from the worker's model with a
    /// fresh optimizer state. A round whose parameters were never read is dropped.
    pub fn replace_trainer(&mut self, mut trainer: Box<T>) {
        trainer.set_params(&self.x, true);
        self.trainer = trainer;
        self.round_steps = 0;
        self.round_samples = 0;
    }

    /// The trainer, for callers that must reach it directly (the browser reads the GPU's
    /// parameters asynchronously between [`Worker::train_steps`] and
    /// [`Worker::finish_round`]).
    pub fn trainer_mut(&mut self) -> &mut T {
        &mut self.trainer
    }

    /// Whether a round may start: no push in flight and not paused.
    pub fn ready(&self) -> bool {
        self.phase == Phase::Idle && !self.paused
    }

    /// Whether a push is waiting for its Ack or its Center.
    pub fn in_flight(&self) -> bool {
        self.phase != Phase::Idle
    }

    /// Whether the teacher paused this worker.
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// How long to wait after each round before pushing, as the teacher set it (0: none).
    pub fn delay_ms(&self) -> u32 {
        self.delay_ms
    }

    /// Queues the round's `K` local SGD steps on the trainer (`K` is the Hyper's
    /// `local_steps` under every strategy: FedAvg's `k`, ADACOMM's current period), with batches taken in
    /// [`epoch_order`] over the shard (a new order each epoch, the last batch of an epoch
    /// possibly smaller), of at most the batch the trainer was built for.
    pub fn train_steps(&mut self) {
        // New settings may ask for bigger batches than the trainer was built for.
        let batch = (self.hyper.batch as usize).clamp(1, self.capacity);
        for _ in 0..self.hyper.local_steps {
            let indices = self.cursor.next_batch(batch);
            self.trainer.step(indices, self.hyper.lr);
            self.round_steps += 1;
            self.round_samples += indices.len() as u32;
        }
    }

    /// Ends a round given the trainer's parameters `x` (read back once) and the losses of
    /// its steps: returns the encoded `Push` of `x - center(base)`, compressed with the
    /// room's push codec through error feedback when the room asks for it.
    pub fn finish_round(&mut self, x: Vec<f32>, losses: &[f32]) -> Vec<u8> {
        let loss = mean_loss(losses);
        let feedback = self.hyper.error_feedback.then_some(&mut self.feedback);
        let payload = codec::encode_update(
            self.hyper.codec_up,
            &x,
            &self.center,
            feedback,
            &mut self.rng,
        );
        self.x = x;
        let bytes = message::encode(&Message::Push(Push {
            base_version: self.center_version,
            local_steps: self.round_steps,
            samples: self.round_samples,
            loss,
            payload,
        }));
        self.stats.pushes += 1;
        self.stats.steps += u64::from(self.round_steps);
        self.stats.samples += u64::from(self.round_samples);
        self.stats.bytes_up += bytes.len() as u64;
        self.stats.last_loss = loss;
        self.round_steps = 0;
        self.round_samples = 0;
        self.phase = Phase::AwaitAck;
        bytes
    }

    /// One whole round on a trainer that may block: [`Worker::train_steps`], one read of the
    /// parameters, [`Worker::finish_round`]. Returns the encoded `Push` to send.
    pub fn local_round(&mut self) -> Vec<u8> {
        self.train_steps();
        let x = self.trainer.params();
        let losses = self.trainer.finish();
        self.finish_round(x, &losses)
    }

    /// Handles the bytes of one received WebSocket message: decodes it (counting its bytes)
    /// and passes it to [`Worker::on_message`].
    pub fn on_bytes(&mut self, bytes: &[u8]) -> Result<Event, WorkerError> {
        let msg = message::decode(bytes, &self.limits)?;
        self.on_received(msg, bytes.len())
    }

    /// Handles a message the caller already decoded from `len` received bytes (which count
    /// toward [`Stats::bytes_down`]).
    pub fn on_received(&mut self, msg: Message, len: usize) -> Result<Event, WorkerError> {
        self.stats.bytes_down += len as u64;
        self.on_message(msg)
    }

    /// Handles one message from the relay: an `Ack`, a `Center`, a `Control` or an `Error`.
    pub fn on_message(&mut self, msg: Message) -> Result<Event, WorkerError> {
        match msg {
            Message::Ack(a) => self.on_ack(a),
            Message::Center(c) => self.on_center(c),
            Message::Control(c) => {
                self.on_control(&c);
                Ok(Event::Control(c))
            }
            Message::Error(e) => {
                self.stats.errors += 1;
                Ok(Event::Error(e))
            }
            Message::Join(_) => Err(WorkerError::Unexpected("Join")),
            Message::Welcome(_) => Err(WorkerError::Unexpected("Welcome")),
            Message::Push(_) => Err(WorkerError::Unexpected("Push")),
            Message::Device(_) => Err(WorkerError::Unexpected("Device")),
            // The teacher's backend is the browser's business (web.rs handles it before the
            // worker sees it); the relay sends it to browser tabs only.
            Message::UseBackend(_) => Err(WorkerError::Unexpected("UseBackend")),
            // Lessons are the student page's business too, and only tabs vote.
            Message::Question(_) => Err(WorkerError::Unexpected("Question")),
            Message::Vote(_) => Err(WorkerError::Unexpected("Vote")),
        }
    }

    /// The relay's answer to the push in flight; the Center follows it.
    pub fn on_ack(&mut self, ack: Ack) -> Result<Event, WorkerError> {
        if self.phase != Phase::AwaitAck || ack.base_version != self.center_version {
            return Err(WorkerError::Unexpected("Ack"));
        }
        let accepted = match ack.outcome {
            Outcome::Accepted { tau, alpha_eff, .. } => {
                self.stats.accepted += 1;
                self.stats.last_tau = Some(tau);
                self.stats.tau_sum += u64::from(tau);
                self.stats.last_alpha_eff = Some(alpha_eff);
                self.stats.alpha_eff_sum += f64::from(alpha_eff);
                true
            }
            Outcome::Refused { .. } => {
                self.stats.refused += 1;
                false
            }
        };
        self.phase = Phase::AwaitCenter { accepted };
        Ok(Event::Acked(ack.outcome))
    }

    /// A new center, after an Ack: the room's strategy says what the worker does with it
    /// (`strategy::worker::after_reply`): after an accepted push, EASGD pulls toward it,
    /// `x_i <- x_i - alpha (x_i - x~)`, and the other strategies take it, `x_i <- x~`;
    /// after a refused one the worker takes it and resets the residual (bounded staleness:
    /// keeps its own progress on top of it).
    pub fn on_center(&mut self, c: Center) -> Result<Event, WorkerError> {
        let Phase::AwaitCenter { accepted } = self.phase else {
            return Err(WorkerError::Unexpected("Center"));
        };
        // The center the push was computed from: bounded staleness rebases on it.
        let view = self.center.clone();
        let decoded = codec::decode(&c.payload, self.center.len()).map_err(|source| {
            WorkerError::Payload {
                what: "center",
                source,
            }
        })?;
        match c.base {
            None => self.center = decoded,
            Some(base) if base == self.center_version => {
                for (h, d) in self.center.iter_mut().zip(&decoded) {
                    *h += d;
                }
            }
            Some(base) => {
                return Err(WorkerError::CenterBase {
                    base,
                    held: self.center_version,
                });
            }
        }
        self.center_version = c.version;
        self.stats.distance_to_center = distance(&self.x, &self.center);
        let reply = if accepted {
            Reply::Accepted
        } else {
            Reply::Refused
        };
        let merged = after_reply(
            &self.hyper.strategy(),
            reply,
            &mut self.x,
            &view,
            &self.center,
        );
        self.trainer.set_params(&self.x, merged.reset_optimizer);
        if merged.reset_residual {
            self.feedback.reset();
        }
        self.phase = Phase::Idle;
        Ok(Event::Center {
            version: c.version,
            resynced: !accepted,
        })
    }

    /// Applies a control message meant for this worker: pause, resume, a delay, or new
    /// settings from the next round on (a change of push codec resets the residual).
    /// Momentum and batch capacity stay those the trainer was built with.
    pub fn on_control(&mut self, c: &Control) {
        match *c {
            Control::Pause { .. } => self.paused = true,
            Control::Resume { .. } => self.paused = false,
            Control::Delay { ms, .. } => self.delay_ms = ms,
            Control::Settings(h) => {
                if h.codec_up != self.hyper.codec_up || !h.error_feedback {
                    self.feedback.reset();
                }
                self.hyper = h;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::CpuTrainer;
    use crate::model::{IMAGE_PIXELS, init_params};
    use easel_protocol::Codec;
    use easel_protocol::{ModelInfo, Staleness};

    fn split(n: usize) -> Split {
        let images = (0..n * IMAGE_PIXELS)
            .map(|i| (i * 31 % 256) as u8)
            .collect();
        let labels = (0..n).map(|i| (i % 10) as u8).collect();
        Split::new(images, labels)
    }

    fn hyper(codec_up: Codec, error_feedback: bool) -> Hyper {
        Hyper {
            alpha: 0.5,
            staleness: Staleness::Inverse,
            tau_max: 8,
            local_steps: 3,
            lr: 0.05,
            batch: 4,
            momentum: 0.0,
            codec_up,
            codec_down: Codec::Fp32,
            error_feedback,
            merge: easel_protocol::Merge::Easgd,
        }
    }

    fn welcome(h: Hyper, center: &[f32]) -> Welcome {
        Welcome {
            worker_id: 7,
            resume_token: ResumeToken([9; 16]),
            model: ModelInfo::of(&LENET5_28),
            hyper: h,
            shard: Shard::Partition {
                scheme: "iid".into(),
                seed: 3,
                workers: 4,
                index: 1,
            },
            center_version: 5,
            center: codec::encode(Codec::Fp32, center, &mut ChaCha8Rng::seed_from_u64(0)),
        }
    }

    fn worker(h: Hyper) -> (Worker, Vec<f32>) {
        let train = split(40);
        let center = init_params(1);
        let start = prepare(&welcome(h, &center), &train).unwrap();
        assert_eq!(start.shard.len(), 10);
        let t = CpuTrainer::new(
            &start.shard.images,
            &start.shard.labels,
            &center,
            start.sgd,
            start.batch,
        );
        (Worker::new(start, Box::new(t), 1), center)
    }

    fn ack(base: u64, outcome: Outcome) -> Vec<u8> {
        message::encode(&Message::Ack(Ack {
            base_version: base,
            outcome,
        }))
    }

    fn center_msg(version: u64, c: &[f32]) -> Vec<u8> {
        message::encode(&Message::Center(Center {
            version,
            base: None,
            payload: codec::encode(Codec::Fp32, c, &mut ChaCha8Rng::seed_from_u64(0)),
        }))
    }

    #[test]
    fn a_round_pushes_the_difference_and_pulls_toward_the_center() {
        let (mut w, center) = worker(hyper(Codec::Fp32, false));
        assert!(w.ready());
        let bytes = w.local_round();
        assert!(!w.ready());
        let push = match message::decode(&bytes, &Limits::default()).unwrap() {
            Message::Push(p) => p,
            other => panic!("{other:?}"),
        };
        // A shard of 10 in batches of 4: 4 + 4 + the epoch's last 2.
        assert_eq!(
            (push.base_version, push.local_steps, push.samples),
            (5, 3, 10)
        );
        let delta = codec::decode(&push.payload, center.len()).unwrap();
        let x: Vec<f32> = center.iter().zip(&delta).map(|(c, d)| c + d).collect();
        assert!(delta.iter().any(|&d| d != 0.0), "training moved the model");

        let ev = w
            .on_bytes(&ack(
                5,
                Outcome::Accepted {
                    tau: 2,
                    alpha_eff: 0.25,
                    version: 8,
                },
            ))
            .unwrap();
        assert!(matches!(ev, Event::Acked(Outcome::Accepted { .. })));
        let new_center: Vec<f32> = center.iter().map(|c| c * 0.5).collect();
        let ev = w.on_bytes(&center_msg(8, &new_center)).unwrap();
        assert_eq!(
            ev,
            Event::Center {
                version: 8,
                resynced: false
            }
        );
        let mut expected = x.clone();
        easel_protocol::easgd_pull(&mut expected, &new_center, 0.5);
        let got = w.trainer_mut().params();
        assert!(got.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-5));
        assert_eq!(w.center_version(), 8);
        let s = w.stats();
        assert_eq!((s.pushes, s.accepted, s.last_tau), (1, 1, Some(2)));
        assert_eq!(s.bytes_up, bytes.len() as u64);
        assert!((s.distance_to_center - distance(&x, &new_center)).abs() < 1e-3);
        assert!(w.ready());
    }

    #[test]
    fn the_reply_follows_the_room_strategy() {
        use easel_protocol::Merge;
        let accepted = Outcome::Accepted {
            tau: 0,
            alpha_eff: 0.5,
            version: 6,
        };
        let refused = Outcome::Refused {
            code: easel_protocol::message::code::TOO_STALE,
            message: "stale".into(),
        };
        for (merge, outcome) in [
            (Merge::Fedavg { m_of_n: None }, accepted.clone()),
            (Merge::Fedbuff { m: 2 }, accepted),
            (Merge::Bounded { b: None }, refused),
        ] {
            let h = Hyper {
                merge,
                ..hyper(Codec::Fp32, false)
            };
            let (mut w, center) = worker(h);
            w.local_round();
            let x = w.params().to_vec();
            let rebase = matches!(outcome, Outcome::Refused { .. });
            w.on_bytes(&ack(5, outcome)).unwrap();
            let new_center: Vec<f32> = center.iter().map(|c| c * 0.5).collect();
            w.on_bytes(&center_msg(6, &new_center)).unwrap();
            let expected: Vec<f32> = if rebase {
                // Bounded staleness keeps its progress on the new center.
                (0..x.len())
                    .map(|i| new_center[i] + x[i] - center[i])
                    .collect()
            } else {
                new_center.clone()
            };
            let got = w.trainer_mut().params();
            assert!(
                got.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-5),
                "{merge:?}"
            );
        }
    }

    #[test]
    fn a_rejoin_keeps_the_model_and_takes_the_new_center() {
        let (mut w, center) = worker(hyper(Codec::top_k_fraction(0.01, 44_426), true));
        // The connection dies with a push in flight.
        w.local_round();
        assert!(w.in_flight());
        let trained = w.trainer_mut().params();
        let newer: Vec<f32> = center.iter().map(|c| c * 0.9).collect();
        let mut welcome = welcome(hyper(Codec::Fp32, false), &newer);
        welcome.center_version = 12;
        let start = prepare(&welcome, &split(40)).unwrap();
        assert!(w.rejoin(start), "the same shard keeps the trainer");
        assert!(w.ready() && !w.in_flight());
        assert_eq!(w.center_version(), 12);
        assert_eq!(w.center(), newer.as_slice());
        assert_eq!(
            w.trainer_mut().params(),
            trained,
            "the model it had is kept"
        );
        assert!(w.feedback.residual.iter().all(|&r| r == 0.0));
        // The next push is relative to the new center.
        let bytes = w.local_round();
        let Ok(Message::Push(p)) = message::decode(&bytes, &Limits::default()) else {
            panic!("not a push");
        };
        assert_eq!(p.base_version, 12);
    }

    #[test]
    fn a_rejoin_on_another_shard_asks_for_a_new_trainer() {
        let (mut w, center) = worker(hyper(Codec::Fp32, false));
        let mut welcome = welcome(hyper(Codec::Fp32, false), &center);
        welcome.shard = Shard::Indices(vec![0, 1, 2]);
        let start = prepare(&welcome, &split(40)).unwrap();
        let shard = start.shard.clone();
        assert!(!w.rejoin(start));
        let model = w.params().to_vec();
        let cpu = CpuTrainer::new(&shard.images, &shard.labels, &center, Sgd::default(), 4);
        w.replace_trainer(Box::new(cpu));
        assert_eq!(w.trainer_mut().params(), model);
        let bytes = w.local_round();
        let Ok(Message::Push(p)) = message::decode(&bytes, &Limits::default()) else {
            panic!("not a push");
        };
        // 3 digits in batches of 4: three steps of the whole shard.
        assert_eq!((p.local_steps, p.samples), (3, 9));
    }

    #[test]
    fn settings_with_bigger_batches_stay_within_the_trainer() {
        let (mut w, _) = worker(hyper(Codec::Fp32, false));
        let mut h = hyper(Codec::Fp32, false);
        h.batch = 64;
        w.on_control(&Control::Settings(h));
        let bytes = w.local_round();
        let Ok(Message::Push(p)) = message::decode(&bytes, &Limits::default()) else {
            panic!("not a push");
        };
        // Batches of the trainer's 4, not 64: 4 + 4 + 2 over the shard of 10.
        assert_eq!(p.samples, 10);
    }

    #[test]
    fn a_refusal_resyncs_and_resets_the_residual() {
        let (mut w, center) = worker(hyper(Codec::top_k_fraction(0.01, 44_426), true));
        w.local_round();
        assert!(w.feedback.residual.iter().any(|&r| r != 0.0));
        w.on_bytes(&ack(
            5,
            Outcome::Refused {
                code: message::code::TOO_STALE,
                message: "stale".into(),
            },
        ))
        .unwrap();
        let ev = w.on_bytes(&center_msg(9, &center)).unwrap();
        assert_eq!(
            ev,
            Event::Center {
                version: 9,
                resynced: true
            }
        );
        assert_eq!(w.trainer_mut().params(), center);
        assert!(w.feedback.residual.iter().all(|&r| r == 0.0));
        assert_eq!(w.stats().refused, 1);
    }

    #[test]
    fn out_of_order_and_garbage_messages_are_errors_not_panics() {
        let (mut w, center) = worker(hyper(Codec::Fp32, false));
        assert!(matches!(
            w.on_bytes(&center_msg(6, &center)),
            Err(WorkerError::Unexpected("Center"))
        ));
        assert!(matches!(
            w.on_bytes(b"nonsense"),
            Err(WorkerError::Protocol(_))
        ));
        w.local_round();
        assert!(matches!(
            w.on_bytes(&ack(
                4,
                Outcome::Accepted {
                    tau: 0,
                    alpha_eff: 1.0,
                    version: 6
                }
            )),
            Err(WorkerError::Unexpected("Ack"))
        ));
    }

    #[test]
    fn control_pauses_and_delays() {
        let (mut w, _) = worker(hyper(Codec::Fp32, false));
        w.on_control(&Control::Pause { worker: None });
        assert!(!w.ready());
        w.on_control(&Control::Resume { worker: None });
        w.on_control(&Control::Delay {
            worker: None,
            ms: 250,
        });
        assert!(w.ready());
        assert_eq!(w.delay_ms(), 250);
    }

    #[test]
    fn bad_shards_are_refused() {
        let labels = [0u8; 10];
        for shard in [
            Shard::Indices(vec![3, 10]),
            Shard::Indices(vec![]),
            Shard::Partition {
                scheme: "iid".into(),
                seed: 1,
                workers: u32::MAX,
                index: 0,
            },
            Shard::Partition {
                scheme: "zigzag".into(),
                seed: 1,
                workers: 2,
                index: 0,
            },
        ] {
            assert!(shard_indices(&shard, &labels).is_err(), "{shard:?}");
        }
        assert_eq!(
            shard_indices(&Shard::Indices(vec![9, 0]), &labels).unwrap(),
            vec![9, 0]
        );
    }
}
