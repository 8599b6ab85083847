//! A room: its settings, its center versions, its ledger and its workers, as synchronous
//! logic with no I/O.
//!
//! The connection layer ([`crate::ws`]) decodes messages and hands them here; a [`Room`]
//! answers with messages to send. The merging rules are `easel_protocol::aggregate`'s; this
//! file only wires them to a room's state and to the [`Ledger`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use easel_protocol::message::{self, Join, caps, code};
use easel_protocol::strategy::{Answer, Engine, Strategy, Update, Verdict};
use easel_protocol::{
    Ack, Backend, Center, ClientKind, Codec, Control, ErrorMessage, Hyper, LENET5_28, Message,
    ModelInfo, ModelSpec, Outcome, Push, ResumeToken, Shard, Welcome, codec,
};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::ledger::{self, Ledger, Record};

/// The letters of room codes: uppercase letters and digits without the look-alikes
/// `0 O 1 I L`, so a code read off a projector is typed right.
pub const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";
/// Characters in a room code: 31^5, about 29 million codes.
pub const CODE_LEN: usize = 5;

/// A fresh random room code.
pub fn new_code() -> String {
    let mut rng = rand::rng();
    (0..CODE_LEN)
        .map(|_| CODE_ALPHABET[rng.random_range(0..CODE_ALPHABET.len())] as char)
        .collect()
}

/// A room code as typed: trimmed and uppercased.
/// A fresh admin token: 32 lowercase hex digits.
pub fn new_token() -> String {
    let mut rng = rand::rng();
    (0..32)
        .map(|_| char::from_digit(rng.random_range(0..16u32), 16).unwrap_or('0'))
        .collect()
}

pub fn normalize_code(code: &str) -> String {
    code.trim().to_ascii_uppercase()
}

/// How the room splits the training digits among its workers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// `iid`, `dirichlet:ALPHA` or `classes:K` (`easel_protocol::Partition`).
    pub scheme: String,
    pub seed: u64,
    /// Number of shards; workers get shard `join order mod shards`.
    pub shards: u32,
}

/// A room's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct RoomSettings {
    /// What workers are told in `Welcome` and `Control::Settings`.
    pub hyper: Hyper,
    /// Pushes with `||delta||` above this are refused (code 7).
    pub max_norm: f32,
    pub partition: Partition,
    /// Ledger records kept (totals stay exact beyond it).
    pub ledger_capacity: usize,
    /// Seed of the initial center (`easel_protocol::ModelOps::init`).
    pub init_seed: u64,
}

impl Default for RoomSettings {
    /// [`Hyper::default`]'s training and merging, IID shards for 8 workers.
    fn default() -> RoomSettings {
        RoomSettings {
            hyper: Hyper::default(),
            max_norm: 1e3,
            partition: Partition {
                scheme: "iid".into(),
                seed: 1,
                shards: 8,
            },
            ledger_capacity: ledger::DEFAULT_CAPACITY,
            init_seed: 1,
        }
    }
}

/// One participant of a room, connected or not.
#[derive(Clone, Debug, Serialize)]
pub struct Worker {
    pub id: u64,
    /// For people: kind and id, `bot-3`.
    pub name: String,
    #[serde(serialize_with = "ser_kind")]
    pub kind: ClientKind,
    #[serde(serialize_with = "ser_backend")]
    pub backend: Backend,
    /// `caps` bits from its Join.
    pub capabilities: u32,
    /// Its shard index (training kinds only).
    pub shard_index: Option<u32>,
    /// When the relay last heard from it.
    #[serde(skip)]
    pub last_seen: Instant,
    pub connected: bool,
    /// The artificial straggler delay the teacher set, in milliseconds.
    pub delay_ms: u32,
    pub paused: bool,
    /// Removed by the teacher: its connection was closed and its resume is refused.
    pub removed: bool,
    /// The secret of its Welcome, required to resume it (never exported).
    #[serde(skip)]
    pub resume_token: ResumeToken,
}

fn ser_kind<S: serde::Serializer>(k: &ClientKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(kind_name(*k))
}

fn ser_backend<S: serde::Serializer>(b: &Backend, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match b {
        Backend::Cpu => "cpu",
        Backend::Gpu => "gpu",
    })
}

/// A client kind's name.
pub fn kind_name(k: ClientKind) -> &'static str {
    match k {
        ClientKind::Browser => "browser",
        ClientKind::Bot => "bot",
        ClientKind::Sim => "sim",
        ClientKind::Teacher => "teacher",
        ClientKind::Observer => "observer",
    }
}

/// Whether a kind trains and pushes.
pub fn trains(k: ClientKind) -> bool {
    matches!(k, ClientKind::Browser | ClientKind::Bot | ClientKind::Sim)
}

/// What a worker is told after a `Control` from the teacher: `worker: None` means "you".
pub type Forward = (u64, Control);

/// A push's update decoded from its payload, or the refusal (code, reason) it earns.
pub type Decoded = Result<Vec<f32>, (u16, String)>;

/// Decodes a push's payload for lenet5-28 (every room's model). Pure and independent of
/// any room, so it runs before the room's lock is taken.
pub fn decode_update(push: &Push) -> Decoded {
    codec::decode(&push.payload, LENET5_28.param_count).map_err(|e| (e.code(), e.to_string()))
}

/// What became of a push: the answers to send now.
#[derive(Debug, Default)]
pub struct Pushed {
    /// The pusher's Ack; `None` while its push is held at a barrier.
    pub ack: Option<Ack>,
    /// The version the push made, if the center changed.
    pub version: Option<u64>,
    /// Other workers whose held pushes the round's close answered, with their Acks; each
    /// gets its Ack, then the new Center.
    pub released: Vec<(u64, Ack)>,
    /// Controls for connected workers (ADACOMM's new period).
    pub forwards: Vec<Forward>,
    /// Ledger rows the push wrote: its own when answered (none while held), and those of
    /// the held pushes its round answered; they are the ledger's newest.
    pub recorded: usize,
}

/// How many of the latest pairwise averages a swarm room keeps for the dashboard.
pub const RECENT_PAIRS: usize = 32;

/// One pairwise average of a swarm room: `a` pushed and was averaged with `b`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Pair {
    pub wall_ms: u64,
    pub a: u64,
    pub b: u64,
}

/// A swarm room's graph, as the dashboard draws it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SwarmView {
    /// The topology the teacher asked for (`complete`, `ring`, `regular:D`).
    pub topology: String,
    /// The layout in use: the topology, `complete` when it cannot be laid out on this many
    /// devices, `none` below 2.
    pub graph: String,
    /// Device ids in the graph, increasing.
    pub nodes: Vec<u64>,
    /// Edges by device id, `a < b`.
    pub edges: Vec<(u64, u64)>,
    /// The latest pairwise averages, oldest first.
    pub pairs: Vec<Pair>,
    /// Pairwise averages so far (since the room's strategy became swarm, or the reset).
    pub exchanges: u64,
}

/// A room.
#[derive(Debug)]
pub struct Room {
    /// The short code devices type to join.
    code: String,
    /// The model every worker of the room trains (lenet5-28); its hash is checked at Join.
    spec: ModelSpec,
    /// Hyper-parameters and acceptance rules; the teacher changes them with Control.
    settings: RoomSettings,
    /// The room's strategy and its state (the recent center versions, or SwarmSGD's
    /// models; the barrier's held pushes; ADACOMM's schedule).
    engine: Engine,
    /// SwarmSGD's latest pairwise averages.
    pairs: VecDeque<Pair>,
    /// The ledger rows of the pushes held at a barrier, written when they are answered.
    held_records: Vec<Record>,
    /// When the room was made: ADACOMM's clock starts there.
    started: Instant,
    /// When each version still in the ring was published, for the ledger's `age_ms`.
    published: VecDeque<(u64, Instant)>,
    /// One record per push, accepted or refused.
    ledger: Ledger,
    /// Every participant that ever joined, connected or not, by id (kept for resumes).
    workers: BTreeMap<u64, Worker>,
    /// The id the next new participant gets.
    next_id: u64,
    /// Training workers ever admitted, for shard assignment.
    trainers: u32,
    /// For lossy center codecs and SwarmSGD's choices (the simulator's generator, so that
    /// the two can be compared draw for draw).
    rng: ChaCha8Rng,
    /// Encoded `Center` messages of the newest version, by codec.
    center_cache: Vec<(Codec, u64, Arc<[u8]>)>,
    /// Pushes computed from a version below this are refused with RESYNC: after a restart
    /// from a checkpoint ([`Room::restore`]), no base a device holds is in the ring.
    resync_below: u64,
}

impl Room {
    /// A room for lenet5-28 starting from `center` as version 0.
    ///
    /// # Panics
    /// If `center` does not have lenet5-28's parameter count, or the settings do not pass
    /// `Hyper::validate`.
    pub fn new(code: String, mut settings: RoomSettings, center: Vec<f32>, now: Instant) -> Room {
        assert_eq!(center.len(), LENET5_28.param_count, "center length");
        let strategy = settings.hyper.strategy();
        if let Strategy::Adacomm { k0, .. } = strategy {
            // ADACOMM's period starts at k0, as when the teacher switches to it.
            settings.hyper.local_steps = k0;
        }
        let engine = room_engine(strategy, 0, center.into(), settings.max_norm);
        Room {
            code,
            spec: LENET5_28,
            ledger: Ledger::new(settings.ledger_capacity),
            rng: ChaCha8Rng::seed_from_u64(settings.init_seed ^ 0x5eed),
            settings,
            engine,
            pairs: VecDeque::new(),
            held_records: Vec::new(),
            started: now,
            published: VecDeque::from([(0, now)]),
            workers: BTreeMap::new(),
            next_id: 1,
            trainers: 0,
            center_cache: Vec::new(),
            resync_below: 0,
        }
    }

    pub fn code(&self) -> &str {
        &self.code
    }

    pub fn settings(&self) -> &RoomSettings {
        &self.settings
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn workers(&self) -> &BTreeMap<u64, Worker> {
        &self.workers
    }

    /// The newest version and its center; under SwarmSGD, the swarm's version and the
    /// mean of its workers' models (connected or not; the removed are forgotten).
    pub fn center(&self) -> (u64, Arc<[f32]>) {
        let (v, c) = self.engine.center();
        (v, c.clone())
    }

    /// The graph and the latest pairwise averages, when the room runs SwarmSGD.
    pub fn swarm_view(&self) -> Option<SwarmView> {
        let s = self.engine.swarm()?;
        Some(SwarmView {
            topology: s.topology().to_string(),
            graph: s.graph().map_or("none".into(), |t| t.to_string()),
            nodes: s.nodes().into_iter().map(u64::from).collect(),
            edges: s
                .edges()
                .into_iter()
                .map(|(a, b)| (u64::from(a), u64::from(b)))
                .collect(),
            pairs: self.pairs.iter().copied().collect(),
            exchanges: s.exchanges(),
        })
    }

    /// Admits a participant: `Welcome`, or the error to answer. A teacher must come with the
    /// admin token (`is_admin`).
    pub fn join(
        &mut self,
        join: &Join,
        is_admin: bool,
        now: Instant,
    ) -> Result<Welcome, ErrorMessage> {
        if join.layout_hash != self.spec.layout_hash() {
            return Err(error(
                code::WRONG_MODEL,
                format!(
                    "this room trains {}; the layout hash differs",
                    self.spec.name
                ),
            ));
        }
        if join.kind == ClientKind::Teacher && !is_admin {
            return Err(error(
                code::FORBIDDEN,
                "joining as teacher needs the admin token in the URL (?admin=TOKEN)",
            ));
        }
        let asked = join.resume_worker;
        if let Some(r) = asked
            && let Some(w) = self.workers.get(&r.worker)
            && w.kind == join.kind
            && !w.resume_token.matches(&r.token)
        {
            return Err(error(
                code::BAD_RESUME_TOKEN,
                format!(
                    "worker {} is not yours to resume (wrong resume token); join again without \
                     resuming",
                    r.worker
                ),
            ));
        }
        if let Some(id) = asked.map(|r| r.worker)
            && self.workers.get(&id).is_some_and(|w| w.removed)
        {
            return Err(error(
                code::FORBIDDEN,
                format!("worker {id} was removed by the teacher; join again without resuming"),
            ));
        }
        let resumed = asked
            .map(|r| r.worker)
            .filter(|id| self.workers.get(id).is_some_and(|w| w.kind == join.kind));
        let id = match resumed {
            Some(id) => id,
            None => {
                let id = self.next_id;
                self.next_id += 1;
                let shard_index = trains(join.kind).then(|| {
                    let i = self.trainers % self.settings.partition.shards.max(1);
                    self.trainers += 1;
                    i
                });
                self.workers.insert(
                    id,
                    Worker {
                        id,
                        name: format!("{}-{id}", kind_name(join.kind)),
                        kind: join.kind,
                        backend: join.backend,
                        capabilities: join.capabilities,
                        shard_index,
                        last_seen: now,
                        connected: true,
                        delay_ms: 0,
                        paused: false,
                        removed: false,
                        resume_token: ResumeToken(rand::rng().random()),
                    },
                );
                id
            }
        };
        let w = self.workers.get_mut(&id).expect("just inserted or found");
        w.connected = true;
        w.last_seen = now;
        w.backend = join.backend;
        w.capabilities = join.capabilities;
        let shard_index = w.shard_index.unwrap_or(0);
        let resume_token = w.resume_token;
        let down = self.down_codec(join.capabilities);
        let (version, center) = match self.engine.swarm() {
            Some(_) if trains(join.kind) => {
                // A newcomer starts from the mean model; a resumed worker gets its own back.
                self.engine.join(id as u32, None, &mut self.rng);
                self.engine
                    .reply(id as u32, down, &mut self.rng)
                    .expect("just joined")
            }
            _ => {
                let (version, center) = self.center();
                (version, codec::encode(down, &center, &mut self.rng))
            }
        };
        let p = &self.settings.partition;
        Ok(Welcome {
            worker_id: id,
            resume_token,
            model: ModelInfo::of(&self.spec),
            hyper: self.settings.hyper,
            shard: Shard::Partition {
                scheme: p.scheme.clone(),
                seed: p.seed,
                workers: p.shards.max(1),
                index: shard_index,
            },
            center_version: version,
            center,
        })
    }

    /// Marks a worker as gone; its record and ledger stay for a resume.
    pub fn leave(&mut self, worker: u64) {
        if let Some(w) = self.workers.get_mut(&worker) {
            w.connected = false;
        }
        self.engine.leave(worker as u32, &mut self.rng);
    }

    /// Notes that the relay heard from `worker`.
    pub fn touch(&mut self, worker: u64, now: Instant) {
        if let Some(w) = self.workers.get_mut(&worker) {
            w.last_seen = now;
        }
    }

    /// Handles one push from `worker`, whose message had `bytes_in` bytes: decodes the
    /// payload, hands it to the room's strategy ([`Aggregator::on_update`]: applied,
    /// buffered, held at the barrier, or refused with the center untouched), and records it
    /// in the ledger. The `Center` to send after each Ack is [`Room::center_message`].
    pub fn handle_push(
        &mut self,
        worker: u64,
        push: &Push,
        bytes_in: usize,
        now: Instant,
    ) -> Pushed {
        let delta = decode_update(push);
        self.handle_decoded(worker, push, delta, bytes_in, now)
    }

    /// [`Room::handle_push`] with the payload already decoded by [`decode_update`], which
    /// needs no room state: the relay decodes before taking the room's lock.
    pub fn handle_decoded(
        &mut self,
        worker: u64,
        push: &Push,
        delta: Decoded,
        bytes_in: usize,
        now: Instant,
    ) -> Pushed {
        let caps = self.workers.get(&worker).map_or(0, |w| w.capabilities);
        let current = self.center().0;
        let base = push.base_version;
        let mut rec = Record {
            seq: 0,
            wall_ms: wall_ms(),
            worker,
            base,
            current,
            tau: current.saturating_sub(base),
            age_ms: self
                .published
                .iter()
                .find(|(v, _)| *v == base)
                .map(|(_, t)| now.saturating_duration_since(*t).as_millis() as u64),
            local_steps: push.local_steps,
            alpha_eff: 0.0,
            worker_distance: f32::NAN,
            view_distance: f32::NAN,
            delta_norm: f32::NAN,
            bytes_in: bytes_in as u64,
            bytes_out: 0,
            version: None,
            peer: None,
            code: 0,
            reason: String::new(),
        };
        let mut out = Pushed::default();
        let verdict = match self.workers.get(&worker).map(|w| w.kind) {
            _ if base < self.resync_below => Err((
                code::RESYNC,
                "the relay restarted from a checkpoint: take the new center".to_string(),
            )),
            Some(k) if trains(k) => match delta {
                Err(refused) => Err(refused),
                Ok(delta) => {
                    // Only a barrier counts the workers (a roster scan: not on every push).
                    if self.engine.strategy().is_synchronous() {
                        self.engine.set_workers(self.active());
                    }
                    let update = Update {
                        worker: worker as u32,
                        base,
                        delta: &delta,
                        loss: push.loss,
                    };
                    let at = now.saturating_duration_since(self.started).as_micros() as u64;
                    let o = self.engine.on_update(update, at, &mut self.rng);
                    self.absorb(o, &mut rec, &mut out, now)
                }
            },
            _ => Err((code::UNEXPECTED, "only training workers push".to_string())),
        };
        if let Some(w) = self.workers.get_mut(&worker) {
            w.last_seen = now;
        }
        out.version = rec.version;
        let ack = match verdict {
            // Held at the barrier: its ledger row is written when the round answers it.
            Ok(None) => {
                self.held_records.push(rec);
                return out;
            }
            Ok(Some(a)) => {
                rec.alpha_eff = a.weight;
                accepted(&a)
            }
            Err((c, why)) => {
                rec.code = c;
                rec.reason = why.clone();
                Ack {
                    base_version: base,
                    outcome: Outcome::Refused {
                        code: c,
                        message: why,
                    },
                }
            }
        };
        rec.bytes_out = self.answer_len(&ack, caps);
        self.ledger.record(rec);
        out.recorded += 1;
        out.ack = Some(ack);
        out
    }

    /// Copies what the engine said about a push into its ledger row and the room's state,
    /// and answers the held pushes its round closed (their rows are written now, with the
    /// weight the round gave them). Returns the pusher's answer: `Ok(None)` while held.
    fn absorb(
        &mut self,
        o: easel_protocol::strategy::Outcome,
        rec: &mut Record,
        out: &mut Pushed,
        now: Instant,
    ) -> Result<Option<Answer>, (u16, String)> {
        rec.tau = o.tau;
        (rec.view_distance, rec.worker_distance, rec.delta_norm) =
            (o.view_distance, o.worker_distance, o.delta_norm);
        rec.version = o.version;
        rec.peer = o.peer.map(u64::from);
        if let Some(version) = o.version {
            self.center_cache.clear();
            if let Some(agg) = self.engine.central() {
                self.published.push_back((version, now));
                while self.published.len() > agg.ring().len() {
                    self.published.pop_front();
                }
            }
        }
        if let Some(b) = rec.peer {
            if self.pairs.len() == RECENT_PAIRS {
                self.pairs.pop_front();
            }
            self.pairs.push_back(Pair {
                wall_ms: rec.wall_ms,
                a: rec.worker,
                b,
            });
        }
        for a in &o.released {
            let worker = u64::from(a.worker);
            let ack = accepted(a);
            if let Some(i) = self.held_records.iter().position(|r| r.worker == worker) {
                // `version` stays empty: the closing push made the version, as its row says.
                let mut held = self.held_records.remove(i);
                held.alpha_eff = a.weight;
                let caps = self.workers.get(&worker).map_or(0, |w| w.capabilities);
                held.bytes_out = self.answer_len(&ack, caps);
                self.ledger.record(held);
                out.recorded += 1;
            }
            out.released.push((worker, ack));
        }
        if let Some(k) = o.period
            && k != self.settings.hyper.local_steps
        {
            self.settings.hyper.local_steps = k;
            let h = self.settings.hyper;
            out.forwards = self.connected_trainers(Control::Settings(h));
        }
        match o.verdict {
            Verdict::Answered(a) => Ok(Some(a)),
            Verdict::Held => Ok(None),
            Verdict::Refused(r) => Err((r.code(), r.to_string())),
        }
    }

    /// Bytes sent to answer a push: its Ack and the Center that follows (the room's, or
    /// under swarm the worker's own model, of the same length), measured without encoding
    /// the Center.
    fn answer_len(&self, ack: &Ack, caps: u32) -> u64 {
        let ack_len = message::encode(&Message::Ack(ack.clone())).len();
        let down = self.down_codec(caps);
        let center_len = message::center_len(codec::encoded_len(down, self.spec.param_count));
        (ack_len + center_len) as u64
    }

    /// The Center that answers `worker`'s push (or its held push) in the codec it reads:
    /// the room's center, or under SwarmSGD the worker's own model after its exchange.
    pub fn reply_center(&mut self, worker: u64, caps: u32) -> Arc<[u8]> {
        let down = self.down_codec(caps);
        if let Some((version, payload)) = self.engine.reply(worker as u32, down, &mut self.rng) {
            return message::encode(&Message::Center(Center {
                version,
                base: None,
                payload,
            }))
            .into();
        }
        self.center_message(caps).1
    }

    /// Connected, unpaused training workers: a barrier's `n`.
    fn active(&self) -> u32 {
        let n = self
            .workers
            .values()
            .filter(|w| trains(w.kind) && w.connected && !w.paused && !w.removed)
            .count();
        n.max(1) as u32
    }
    fn connected_trainers(&self, c: Control) -> Vec<Forward> {
        self.workers
            .values()
            .filter(|w| trains(w.kind) && w.connected)
            .map(|w| (w.id, c.clone()))
            .collect()
    }

    /// Answers every push held at the barrier with a refusal (`code`, `why`): the round
    /// is abandoned (a worker left or paused, the strategy changed, the room was reset) and
    /// its workers resynchronise with the current center. Their ledger rows say so.
    pub fn release_held(&mut self, code: u16, why: &str) -> Vec<(u64, Ack)> {
        let held = self.engine.release_held();
        let mut acks = Vec::with_capacity(held.len());
        for h in held {
            let worker = u64::from(h.worker);
            let ack = Ack {
                base_version: h.base,
                outcome: Outcome::Refused {
                    code,
                    message: why.to_string(),
                },
            };
            if let Some(i) = self.held_records.iter().position(|r| r.worker == worker) {
                let mut rec = self.held_records.remove(i);
                rec.code = code;
                rec.reason = why.to_string();
                let caps = self.workers.get(&worker).map_or(0, |w| w.capabilities);
                rec.bytes_out = self.answer_len(&ack, caps);
                self.ledger.record(rec);
            }
            acks.push((worker, ack));
        }
        acks
    }
    /// The encoded `Center` message of the newest version for a client with capability
    /// bits `caps`: the room's center codec when the client announced it, fp32 otherwise.
    /// Always the whole center (no difference). Cached per version and codec.
    pub fn center_message(&mut self, caps: u32) -> (u64, Arc<[u8]>) {
        let codec = self.down_codec(caps);
        let (version, center) = self.center();
        if let Some((_, v, bytes)) = self.center_cache.iter().find(|(c, _, _)| *c == codec)
            && *v == version
        {
            return (version, bytes.clone());
        }
        let bytes: Arc<[u8]> =
            message::encode_center(version, codec, &center, &mut self.rng).into();
        self.center_cache.retain(|(c, _, _)| *c != codec);
        self.center_cache.push((codec, version, bytes.clone()));
        (version, bytes)
    }

    /// The center codec a client with `caps` gets.
    fn down_codec(&self, caps: u32) -> Codec {
        let c = self.settings.hyper.codec_down;
        let needed = match c {
            Codec::Fp32 => 0,
            Codec::Fp16 => caps::FP16,
            Codec::Qsgd { .. } => caps::QSGD,
            Codec::TopK { .. } => caps::TOP_K,
            Codec::TopKQsgd { .. } => caps::TOP_K_QSGD,
        };
        if caps & needed == needed {
            c
        } else {
            Codec::Fp32
        }
    }

    /// Applies a teacher's `Control` and returns what each affected connected worker must
    /// be told (with `worker: None`, "you"). A worker id the room does not know, or
    /// settings out of range, are an error (code 11) and change nothing.
    pub fn control(&mut self, c: &Control) -> Result<Vec<Forward>, ErrorMessage> {
        let targets =
            |workers: &BTreeMap<u64, Worker>, who: Option<u64>| -> Result<Vec<u64>, ErrorMessage> {
                match who {
                    Some(id) if workers.get(&id).is_some_and(|w| trains(w.kind)) => Ok(vec![id]),
                    Some(id) => Err(error(
                        code::MALFORMED,
                        format!("no worker {id} in this room"),
                    )),
                    None => Ok(workers
                        .values()
                        .filter(|w| trains(w.kind))
                        .map(|w| w.id)
                        .collect()),
                }
            };
        let mut out = Vec::new();
        match *c {
            Control::Pause { worker } | Control::Resume { worker } => {
                let paused = matches!(c, Control::Pause { .. });
                for id in targets(&self.workers, worker)? {
                    if let Some(w) = self.workers.get_mut(&id) {
                        w.paused = paused;
                    }
                    let msg = if paused {
                        Control::Pause { worker: None }
                    } else {
                        Control::Resume { worker: None }
                    };
                    out.push((id, msg));
                }
            }
            Control::Delay { worker, ms } => {
                for id in targets(&self.workers, worker)? {
                    if let Some(w) = self.workers.get_mut(&id) {
                        w.delay_ms = ms;
                    }
                    out.push((id, Control::Delay { worker: None, ms }));
                }
            }
            Control::Settings(hyper) => {
                hyper
                    .validate()
                    .map_err(|what| error(code::MALFORMED, format!("invalid setting: {what}")))?;
                let strategy = hyper.strategy();
                let mut hyper = hyper;
                if strategy != self.settings.hyper.strategy() {
                    // Held or buffered updates are dropped (the caller answers the held
                    // ones with [`Room::release_held`]); ADACOMM starts from `k0`.
                    self.switch(&strategy)
                        .map_err(|e| error(code::MALFORMED, e.to_string()))?;
                    if let Strategy::Adacomm { k0, .. } = strategy {
                        hyper.local_steps = k0;
                    }
                }
                self.settings.hyper = hyper;
                self.center_cache.clear();
                for id in targets(&self.workers, None)? {
                    out.push((id, Control::Settings(hyper)));
                }
            }
        }
        out.retain(|(id, _)| self.workers.get(id).is_some_and(|w| w.connected));
        Ok(out)
    }

    /// Changes the room's strategy ([`Engine::switch`]): into SwarmSGD every connected
    /// worker starts from the center it holds; out of it the mean model becomes the next
    /// center version, published now.
    fn switch(
        &mut self,
        strategy: &Strategy,
    ) -> Result<(), easel_protocol::strategy::StrategyError> {
        let was_swarm = self.engine.swarm().is_some();
        let members: Vec<u32> = self
            .workers
            .values()
            .filter(|w| trains(w.kind) && w.connected)
            .map(|w| w.id as u32)
            .collect();
        let made = self
            .engine
            .switch(strategy.clone(), members, &mut self.rng)?;
        if let Some(version) = made {
            self.published = VecDeque::from([(version, Instant::now())]);
        }
        if was_swarm != self.engine.swarm().is_some() {
            self.pairs.clear();
        }
        Ok(())
    }

    /// Removes a training worker: it is paused, marked removed (its resume is refused) and
    /// disconnected. Returns whether it was connected (its connection must be closed).
    pub fn remove(&mut self, worker: u64) -> Result<bool, ErrorMessage> {
        if self
            .workers
            .get(&worker)
            .is_some_and(|w| trains(w.kind) && !w.removed)
        {
            self.engine.remove(worker as u32, &mut self.rng);
        }
        match self.workers.get_mut(&worker) {
            Some(w) if trains(w.kind) && !w.removed => {
                let was = w.connected;
                w.removed = true;
                w.paused = true;
                w.connected = false;
                Ok(was)
            }
            Some(w) if w.removed => Err(error(
                code::MALFORMED,
                format!("worker {worker} is already removed"),
            )),
            _ => Err(error(
                code::MALFORMED,
                format!("no worker {worker} in this room"),
            )),
        }
    }

    /// Starts over from `center`: the ledger is emptied and `center` becomes the next
    /// version, alone in a fresh ring, so every push computed from an older center is
    /// refused (resync) and its worker takes the new center from the Center that follows.
    /// Versions keep counting up: workers never see a version go back. Under SwarmSGD every
    /// worker's model becomes `center`, under a new version.
    ///
    /// # Panics
    /// If `center` does not have lenet5-28's parameter count.
    pub fn reset(&mut self, center: Vec<f32>, now: Instant) -> u64 {
        assert_eq!(center.len(), self.spec.param_count, "center length");
        let version = self.engine.reset(center.into());
        self.pairs.clear();
        self.held_records.clear();
        self.published = VecDeque::from([(version, now)]);
        self.ledger = Ledger::new(self.settings.ledger_capacity);
        self.center_cache.clear();
        version
    }

    /// Sets how the training digits are split (`iid`, `dirichlet:ALPHA`, `classes:K`), for
    /// every Welcome from now on, resumes included. Returns the connected training workers,
    /// which must rejoin to get a shard of the new partition.
    pub fn set_partition(&mut self, scheme: &str) -> Result<Vec<u64>, ErrorMessage> {
        let shards = self.settings.partition.shards as usize;
        let parsed: easel_protocol::Partition = scheme
            .parse()
            .and_then(|p: easel_protocol::Partition| p.validate_for(shards).map(|()| p))
            .map_err(|e| error(code::MALFORMED, format!("invalid partition: {e}")))?;
        self.settings.partition.scheme = parsed.to_string();
        Ok(self
            .workers
            .values()
            .filter(|w| trains(w.kind) && w.connected)
            .map(|w| w.id)
            .collect())
    }
}

/// A participant as the database keeps it: [`Worker`] without its connection state.
/// New fields must take `#[serde(default)]`, so rosters saved by older relays still load.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub id: u64,
    pub name: String,
    /// [`kind_name`].
    pub kind: String,
    /// `cpu` or `gpu`.
    pub backend: String,
    pub capabilities: u32,
    pub shard_index: Option<u32>,
    pub delay_ms: u32,
    pub paused: bool,
    pub removed: bool,
    /// The worker's resume token ([`ResumeToken::to_hex`]), so that it resumes as itself
    /// after a restart; empty in rosters saved before tokens existed (such a worker joins
    /// again as a new one).
    #[serde(default)]
    pub resume_token: String,
}

/// What a room needs, besides its center, its ledger and its runs, to start again after a
/// restart ([`Room::snapshot`], [`Room::restore`]).
#[derive(Clone, Debug, PartialEq)]
pub struct RoomSnapshot {
    pub code: String,
    pub settings: RoomSettings,
    /// Every participant ever admitted, connected or not, by increasing id.
    pub workers: Vec<WorkerRecord>,
    pub next_id: u64,
    pub trainers: u32,
}

/// A client kind from its [`kind_name`].
pub fn kind_from_name(name: &str) -> Option<ClientKind> {
    Some(match name {
        "browser" => ClientKind::Browser,
        "bot" => ClientKind::Bot,
        "sim" => ClientKind::Sim,
        "teacher" => ClientKind::Teacher,
        "observer" => ClientKind::Observer,
        _ => return None,
    })
}

impl Room {
    /// The room's settings and roster, copied (cheap: no model-sized data).
    pub fn snapshot(&self) -> RoomSnapshot {
        RoomSnapshot {
            code: self.code.clone(),
            settings: self.settings.clone(),
            workers: self
                .workers
                .values()
                .map(|w| WorkerRecord {
                    id: w.id,
                    name: w.name.clone(),
                    kind: kind_name(w.kind).to_string(),
                    backend: match w.backend {
                        Backend::Cpu => "cpu",
                        Backend::Gpu => "gpu",
                    }
                    .to_string(),
                    capabilities: w.capabilities,
                    shard_index: w.shard_index,
                    delay_ms: w.delay_ms,
                    paused: w.paused,
                    removed: w.removed,
                    resume_token: w.resume_token.to_hex(),
                })
                .collect(),
            next_id: self.next_id,
            trainers: self.trainers,
        }
    }

    /// A room started again from a checkpoint: `center` becomes `version`, alone in the
    /// ring, and every push computed from an older version is refused with RESYNC (its
    /// worker takes the new center). The roster comes back disconnected, so each worker
    /// resumes as itself with its shard, delay and pause; held or buffered updates, the
    /// swarm's per-worker models (each resumed worker starts from the mean) and ADACOMM's
    /// loss reference are not kept.
    ///
    /// # Panics
    /// As [`Room::new`].
    pub fn restore(
        snap: RoomSnapshot,
        center: Vec<f32>,
        version: u64,
        ledger: Ledger,
        now: Instant,
    ) -> Room {
        let hyper = snap.settings.hyper;
        let mut room = Room::new(snap.code, snap.settings, center, now);
        // ADACOMM's period as it was, not k0 again.
        room.settings.hyper = hyper;
        let center = room.engine.center().1.clone();
        room.engine = room_engine(hyper.strategy(), version, center, room.settings.max_norm);
        room.published = VecDeque::from([(version, now)]);
        room.workers = snap
            .workers
            .into_iter()
            .filter_map(|w| {
                let kind = kind_from_name(&w.kind)?;
                Some((
                    w.id,
                    Worker {
                        id: w.id,
                        name: w.name,
                        kind,
                        backend: if w.backend == "gpu" {
                            Backend::Gpu
                        } else {
                            Backend::Cpu
                        },
                        capabilities: w.capabilities,
                        shard_index: w.shard_index,
                        last_seen: now,
                        connected: false,
                        delay_ms: w.delay_ms,
                        paused: w.paused,
                        removed: w.removed,
                        resume_token: ResumeToken::from_hex(&w.resume_token)
                            .unwrap_or_else(|| ResumeToken(rand::rng().random())),
                    },
                ))
            })
            .collect();
        room.next_id = snap.next_id.max(1);
        room.trainers = snap.trainers;
        room.ledger = ledger;
        room.resync_below = version;
        room
    }
}

/// A room's engine: its parameters checked as any room size allows (the barrier's `n`
/// follows the connected workers, [`Engine::set_workers`]).
///
/// # Panics
/// If the strategy's parameters are invalid (the settings pass `Hyper::validate` first).
fn room_engine(strategy: Strategy, version: u64, center: Arc<[f32]>, max_norm: f32) -> Engine {
    let mut engine = Engine::new(strategy, u32::MAX, version, center, max_norm)
        .expect("the room's settings pass Hyper::validate");
    engine.set_workers(1);
    engine
}

/// Answers an accepted push with the engine's figures.
fn accepted(a: &Answer) -> Ack {
    Ack {
        base_version: a.base,
        outcome: Outcome::Accepted {
            tau: a.tau,
            alpha_eff: a.weight,
            version: a.version,
        },
    }
}

/// An `ErrorMessage`.
pub fn error(code: u16, message: impl Into<String>) -> ErrorMessage {
    ErrorMessage {
        code,
        message: message.into(),
    }
}

/// Milliseconds since the Unix epoch.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use easel_protocol::codec::encode;
    use easel_protocol::{Merge, Resume};
    use proptest::prelude::*;

    const N: usize = LENET5_28.param_count;

    fn room() -> Room {
        let settings = RoomSettings {
            hyper: Hyper {
                tau_max: 2,
                ..RoomSettings::default().hyper
            },
            ..RoomSettings::default()
        };
        Room::new("ABCDE".into(), settings, vec![0.0; N], Instant::now())
    }

    fn join(kind: ClientKind) -> Join {
        Join {
            room: "ABCDE".into(),
            kind,
            backend: Backend::Cpu,
            capabilities: 0,
            layout_hash: LENET5_28.layout_hash(),
            resume_worker: None,
        }
    }

    fn push(base: u64, delta: &[f32]) -> Push {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        Push {
            base_version: base,
            local_steps: 1,
            samples: 32,
            loss: 1.0,
            payload: encode(Codec::Fp32, delta, &mut rng),
        }
    }

    /// An answer given at once (EASGD): the pusher's Ack and the new version.
    fn answered(p: Pushed) -> (Ack, Option<u64>) {
        assert!(p.released.is_empty());
        (p.ack.expect("answered at once"), p.version)
    }

    fn refused_code(ack: &Ack) -> Option<u16> {
        match ack.outcome {
            Outcome::Refused { code, .. } => Some(code),
            Outcome::Accepted { .. } => None,
        }
    }

    #[test]
    fn accepted_push_applies_easgd_and_is_in_the_ledger() {
        let mut r = room();
        let id = r
            .join(&join(ClientKind::Bot), false, Instant::now())
            .unwrap()
            .worker_id;
        let (ack, v) = answered(r.handle_push(id, &push(0, &vec![2.0; N]), 100, Instant::now()));
        assert_eq!(v, Some(1));
        assert_eq!(
            ack.outcome,
            Outcome::Accepted {
                tau: 0,
                alpha_eff: 0.5,
                version: 1
            }
        );
        // x~ = 0 + 0.5 (2 - 0) = 1 everywhere.
        assert!(r.center().1.iter().all(|&x| x == 1.0));
        let rec = r.ledger().records().next().unwrap();
        assert!(rec.accepted() && rec.tau == 0 && rec.bytes_in == 100);
        assert!(rec.bytes_out > 177_709, "Ack and a fp32 center");
        // Stale by one: alpha_eff = 0.5 / 2.
        let (ack, _) = answered(r.handle_push(id, &push(0, &vec![0.0; N]), 100, Instant::now()));
        assert!(
            matches!(ack.outcome, Outcome::Accepted { tau: 1, alpha_eff, .. } if alpha_eff == 0.25)
        );
    }

    #[test]
    fn bad_pushes_are_refused_counted_and_leave_the_center() {
        let mut r = room();
        let id = r
            .join(&join(ClientKind::Bot), false, Instant::now())
            .unwrap()
            .worker_id;
        let mut nan = vec![0.0; N];
        nan[7] = f32::NAN;
        let cases: Vec<(Push, u16)> = vec![
            (push(0, &[1.0; 10]), code::WRONG_LENGTH),
            (push(0, &nan), code::NON_FINITE),
            (push(0, &vec![100.0; N]), code::NORM_TOO_LARGE),
            (push(5, &vec![0.0; N]), code::RESYNC),
            (
                Push {
                    payload: vec![9, 9, 9],
                    ..push(0, &[])
                },
                code::MALFORMED,
            ),
        ];
        for (p, want) in &cases {
            let (ack, v) = answered(r.handle_push(id, p, 10, Instant::now()));
            assert_eq!((refused_code(&ack), v), (Some(*want), None));
        }
        assert_eq!(r.center().0, 0);
        assert!(r.center().1.iter().all(|&x| x == 0.0));
        assert_eq!(r.ledger().totals().refused, cases.len() as u64);
        // Three versions later, base 0 is too stale.
        for _ in 0..3 {
            let v = r.center().0;
            answered(r.handle_push(id, &push(v, &vec![0.1; N]), 10, Instant::now()));
        }
        let (ack, _) = answered(r.handle_push(id, &push(0, &vec![0.0; N]), 10, Instant::now()));
        assert_eq!(refused_code(&ack), Some(code::TOO_STALE));
    }

    #[test]
    fn join_checks_model_and_teacher_token_and_resumes() {
        let mut r = room();
        let mut wrong = join(ClientKind::Bot);
        wrong.layout_hash[0] ^= 1;
        assert_eq!(
            r.join(&wrong, false, Instant::now()).unwrap_err().code,
            code::WRONG_MODEL
        );
        assert_eq!(
            r.join(&join(ClientKind::Teacher), false, Instant::now())
                .unwrap_err()
                .code,
            code::FORBIDDEN
        );
        assert!(
            r.join(&join(ClientKind::Teacher), true, Instant::now())
                .is_ok()
        );
        let a = r
            .join(&join(ClientKind::Bot), false, Instant::now())
            .unwrap();
        let b = r
            .join(&join(ClientKind::Bot), false, Instant::now())
            .unwrap();
        assert_ne!(a.worker_id, b.worker_id);
        assert!(matches!(
            b.shard,
            Shard::Partition {
                index: 1,
                workers: 8,
                ..
            }
        ));
        assert_ne!(
            a.resume_token, b.resume_token,
            "each worker has its own secret"
        );
        r.leave(a.worker_id);
        // Worker a's id with b's token (or a guessed one) is refused and changes nothing.
        for token in [b.resume_token, ResumeToken([0; 16])] {
            let forged = Join {
                resume_worker: Some(Resume {
                    worker: a.worker_id,
                    token,
                }),
                ..join(ClientKind::Bot)
            };
            let e = r.join(&forged, false, Instant::now()).unwrap_err();
            assert_eq!(e.code, code::BAD_RESUME_TOKEN, "{}", e.message);
            assert!(!r.workers()[&a.worker_id].connected);
        }
        let again = Join {
            resume_worker: Some(Resume {
                worker: a.worker_id,
                token: a.resume_token,
            }),
            ..join(ClientKind::Bot)
        };
        let c = r.join(&again, false, Instant::now()).unwrap();
        assert_eq!(c.worker_id, a.worker_id);
        assert_eq!(
            c.resume_token, a.resume_token,
            "the token stays the worker's"
        );
        assert_eq!(c.shard, a.shard);
        // An id the room does not know (a relay that restarted without it) gets a fresh one.
        let unknown = Join {
            resume_worker: Some(Resume {
                worker: 999,
                token: a.resume_token,
            }),
            ..join(ClientKind::Bot)
        };
        let d = r.join(&unknown, false, Instant::now()).unwrap();
        assert!(d.worker_id != 999 && d.worker_id > b.worker_id);
        assert_eq!(codec::decode(&c.center, N).unwrap(), vec![0.0; N]);
    }

    #[test]
    fn control_sets_worker_flags_and_settings() {
        let mut r = room();
        let id = r
            .join(&join(ClientKind::Bot), false, Instant::now())
            .unwrap()
            .worker_id;
        let f = r
            .control(&Control::Delay {
                worker: Some(id),
                ms: 250,
            })
            .unwrap();
        assert_eq!(
            f,
            vec![(
                id,
                Control::Delay {
                    worker: None,
                    ms: 250
                }
            )]
        );
        assert_eq!(r.workers()[&id].delay_ms, 250);
        r.control(&Control::Pause { worker: None }).unwrap();
        assert!(r.workers()[&id].paused);
        assert!(r.control(&Control::Pause { worker: Some(99) }).is_err());
        let mut h = r.settings().hyper;
        h.tau_max = 40;
        r.control(&Control::Settings(h)).unwrap();
        assert_eq!(r.settings().hyper.tau_max, 40);
        h.alpha = 2.0;
        assert!(r.control(&Control::Settings(h)).is_err());
    }

    #[test]
    fn removed_workers_cannot_resume_and_reset_starts_a_fresh_center() {
        let mut r = room();
        let welcome = r
            .join(&join(ClientKind::Bot), false, Instant::now())
            .unwrap();
        let a = welcome.worker_id;
        let (_, v) = answered(r.handle_push(a, &push(0, &vec![2.0; N]), 10, Instant::now()));
        assert_eq!(v, Some(1));
        assert_eq!(r.remove(a), Ok(true));
        assert!(r.workers()[&a].removed && !r.workers()[&a].connected);
        assert!(r.remove(a).is_err() && r.remove(99).is_err());
        let again = Join {
            resume_worker: Some(Resume {
                worker: a,
                token: welcome.resume_token,
            }),
            ..join(ClientKind::Bot)
        };
        assert_eq!(
            r.join(&again, false, Instant::now()).unwrap_err().code,
            code::FORBIDDEN
        );
        let b = r
            .join(&join(ClientKind::Bot), false, Instant::now())
            .unwrap()
            .worker_id;
        assert_ne!(a, b, "a removed device may join again as a new worker");
        assert_eq!(r.reset(vec![3.0; N], Instant::now()), 2);
        assert_eq!(r.center().0, 2);
        assert!(r.center().1.iter().all(|&x| x == 3.0));
        assert_eq!(r.ledger().totals().pushes, 0);
        // A push from before the reset is refused and leaves the new center alone.
        let (ack, v) = answered(r.handle_push(b, &push(1, &vec![0.0; N]), 10, Instant::now()));
        assert!(refused_code(&ack).is_some() && v.is_none());
        let (ack, v) = answered(r.handle_push(b, &push(2, &vec![3.0; N]), 10, Instant::now()));
        assert_eq!((refused_code(&ack), v), (None, Some(3)));
    }

    #[test]
    fn partition_changes_apply_to_later_welcomes_and_name_who_must_rejoin() {
        let mut r = room();
        let welcome = r
            .join(&join(ClientKind::Bot), false, Instant::now())
            .unwrap();
        let a = welcome.worker_id;
        r.join(&join(ClientKind::Teacher), true, Instant::now())
            .unwrap();
        assert!(r.set_partition("dirichlet:-1").is_err());
        assert!(r.set_partition("nonsense").is_err());
        // Every shard but one digit each: some digits would belong to no worker.
        let shards = r.settings().partition.shards;
        let e = r.set_partition("classes:1").unwrap_err();
        assert!(
            shards < 10 && e.message.contains("cannot cover all 10 digits"),
            "{e:?}"
        );
        assert_eq!(r.settings().partition.scheme, "iid");
        assert_eq!(r.set_partition("Dirichlet:0.5"), Ok(vec![a]));
        assert_eq!(r.settings().partition.scheme, "dirichlet:0.5");
        r.leave(a);
        let again = Join {
            resume_worker: Some(Resume {
                worker: a,
                token: welcome.resume_token,
            }),
            ..join(ClientKind::Bot)
        };
        let w = r.join(&again, false, Instant::now()).unwrap();
        assert!(
            matches!(w.shard, Shard::Partition { ref scheme, index: 0, .. } if scheme == "dirichlet:0.5")
        );
    }

    /// A room under `merge` with `n` bot workers joined.
    fn room_with(merge: Merge, n: usize) -> (Room, Vec<u64>) {
        let mut r = room();
        let ids = (0..n)
            .map(|_| {
                r.join(&join(ClientKind::Bot), false, Instant::now())
                    .unwrap()
                    .worker_id
            })
            .collect();
        let h = Hyper {
            merge,
            ..r.settings().hyper
        };
        r.control(&Control::Settings(h)).unwrap();
        (r, ids)
    }

    #[test]
    fn fedavg_answers_a_round_only_when_every_worker_pushed() {
        let (mut r, ids) = room_with(Merge::Fedavg { m_of_n: None }, 3);
        for round in 0..3u64 {
            for (i, &id) in ids.iter().enumerate() {
                let p = r.handle_push(id, &push(round, &vec![i as f32; N]), 10, Instant::now());
                if i + 1 < ids.len() {
                    assert!(p.ack.is_none() && p.version.is_none() && p.released.is_empty());
                    assert_eq!(r.center().0, round, "held: no new version");
                } else {
                    assert_eq!(p.version, Some(round + 1));
                    let released: Vec<u64> = p.released.iter().map(|(w, _)| *w).collect();
                    assert_eq!(released, ids[..2]);
                    for (_, ack) in p.released.iter().chain([(id, p.ack.unwrap())].iter()) {
                        assert_eq!(ack.base_version, round);
                        assert!(matches!(ack.outcome,
                            Outcome::Accepted { tau: 0, version, alpha_eff }
                                if version == round + 1 && (alpha_eff - 1.0 / 3.0).abs() < 1e-6));
                    }
                }
            }
            // The mean of the deltas 0, 1 and 2 from a center the round started from.
            let expected = round as f32 + 1.0;
            assert!(r.center().1.iter().all(|&x| (x - expected).abs() < 1e-5));
        }
    }

    #[test]
    fn fedavg_m_of_n_closes_after_the_fastest_m_and_refuses_the_late() {
        let (mut r, ids) = room_with(Merge::Fedavg { m_of_n: Some(2) }, 3);
        assert!(
            r.handle_push(ids[0], &push(0, &vec![1.0; N]), 10, Instant::now())
                .ack
                .is_none()
        );
        let p = r.handle_push(ids[1], &push(0, &vec![1.0; N]), 10, Instant::now());
        assert_eq!((p.version, p.released.len()), (Some(1), 1));
        let (ack, v) = answered(r.handle_push(ids[2], &push(0, &vec![1.0; N]), 10, Instant::now()));
        assert_eq!((refused_code(&ack), v), (Some(code::TOO_STALE), None));
    }

    #[test]
    fn a_paused_or_departed_worker_releases_the_held_round_with_resync() {
        let (mut r, ids) = room_with(Merge::Fedavg { m_of_n: None }, 2);
        assert!(
            r.handle_push(ids[0], &push(0, &vec![1.0; N]), 10, Instant::now())
                .ack
                .is_none()
        );
        r.leave(ids[1]);
        let released = r.release_held(code::RESYNC, "gone");
        assert_eq!(released.len(), 1);
        assert_eq!(refused_code(&released[0].1), Some(code::RESYNC));
        // The next round counts the one worker left.
        let (ack, v) = answered(r.handle_push(ids[0], &push(0, &vec![1.0; N]), 10, Instant::now()));
        assert_eq!((refused_code(&ack), v), (None, Some(1)));
    }

    #[test]
    fn swarm_starts_from_the_center_and_hands_the_mean_back_when_switched_off() {
        let ring = easel_protocol::strategy::Topology::Ring;
        let (mut r, ids) = room_with(Merge::Swarm { topology: ring }, 3);
        // Every worker holds center version 0: its first push is accepted.
        let (ack, v) = answered(r.handle_push(ids[0], &push(0, &vec![3.0; N]), 10, Instant::now()));
        assert_eq!((refused_code(&ack), v), (None, Some(1)));
        // The pusher gets its own model back, (3 + 0) / 2, not the mean model (3 / 3).
        let reply = r.reply_center(ids[0], 0);
        let Ok(Message::Center(c)) = message::decode(&reply, &easel_protocol::Limits::default())
        else {
            panic!("a Center");
        };
        assert_eq!(c.version, 1);
        assert!(
            codec::decode(&c.payload, N)
                .unwrap()
                .iter()
                .all(|&x| x == 1.5)
        );
        assert!(r.center().1.iter().all(|&x| (x - 1.0).abs() < 1e-6));
        let view = r.swarm_view().expect("a swarm room");
        assert_eq!((view.nodes, view.graph.as_str()), (ids.clone(), "ring"));
        assert_eq!((view.pairs.len(), view.pairs[0].a), (1, ids[0]));
        // Back to EASGD: the mean model is the next center version; older bases resync.
        let h = Hyper {
            merge: Merge::Easgd,
            ..r.settings().hyper
        };
        r.control(&Control::Settings(h)).unwrap();
        assert!(r.swarm_view().is_none());
        let (v, center) = r.center();
        assert_eq!(v, 2);
        assert!(center.iter().all(|&x| (x - 1.0).abs() < 1e-6));
        let (ack, _) = answered(r.handle_push(ids[1], &push(1, &vec![0.0; N]), 10, Instant::now()));
        assert_eq!(refused_code(&ack), Some(code::RESYNC));
        let (ack, v) = answered(r.handle_push(ids[1], &push(2, &vec![0.0; N]), 10, Instant::now()));
        assert_eq!((refused_code(&ack), v), (None, Some(3)));
    }

    #[test]
    fn fedbuff_makes_a_version_every_m_pushes() {
        let (mut r, ids) = room_with(Merge::Fedbuff { m: 3 }, 2);
        for i in 0..9u64 {
            let v = r.center().0;
            let (ack, new) = answered(r.handle_push(
                ids[i as usize % 2],
                &push(v, &vec![0.1; N]),
                10,
                Instant::now(),
            ));
            assert_eq!(refused_code(&ack), None);
            assert_eq!(new, ((i + 1) % 3 == 0).then_some((i + 1) / 3));
            assert_eq!(r.center().0, (i + 1) / 3);
        }
    }

    #[test]
    fn adacomm_starts_at_k0_and_tells_workers_a_new_period() {
        let (mut r, ids) = room_with(
            Merge::Adacomm {
                k0: 8,
                k_min: 2,
                interval_s: 1e-6,
            },
            1,
        );
        assert_eq!(r.settings().hyper.local_steps, 8);
        let mut p = push(0, &vec![0.1; N]);
        p.loss = 2.0;
        // The room's clock is the `now` it is given: no sleeping.
        let t0 = Instant::now();
        assert!(answered(r.handle_push(ids[0], &p, 10, t0)).1.is_some());
        let p = Push {
            base_version: 1,
            loss: 0.5,
            ..p
        };
        let later = t0 + std::time::Duration::from_millis(2);
        let pushed = r.handle_push(ids[0], &p, 10, later);
        // sqrt(0.5 / 2) * 8 = 4.
        assert_eq!(r.settings().hyper.local_steps, 4);
        assert!(
            matches!(pushed.forwards[..], [(w, Control::Settings(h))] if w == ids[0] && h.local_steps == 4)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn bounded_staleness_never_applies_an_update_staler_than_s(
            backs in prop::collection::vec(0u64..5, 1..16)
        ) {
            let (mut r, ids) = room_with(Merge::Bounded { b: None }, 1);
            for back in backs {
                let v = r.center().0;
                let (ack, _) = answered(r.handle_push(ids[0], &push(v.saturating_sub(back), &vec![0.01; N]), 1, Instant::now()));
                prop_assert_eq!(refused_code(&ack).is_none(), v.saturating_sub(back) + 2 >= v);
            }
            let s = u64::from(r.settings().hyper.tau_max);
            prop_assert!(r.ledger().records().filter(|rec| rec.accepted()).all(|rec| rec.tau <= s));
        }

        #[test]
        fn every_push_lands_in_the_ledger_and_refusals_never_move_the_center(
            pushes in prop::collection::vec((0u64..6, prop_oneof![Just(0.01f32), Just(f32::NAN), Just(50.0)]), 1..12)
        ) {
            let mut r = room();
            let id = r.join(&join(ClientKind::Bot), false, Instant::now()).unwrap().worker_id;
            for (i, &(back, value)) in pushes.iter().enumerate() {
                let (v, before) = r.center();
                let (ack, new) = answered(r.handle_push(id, &push(v.saturating_sub(back), &vec![value; N]), 1, Instant::now()));
                match ack.outcome {
                    Outcome::Accepted { version, .. } => prop_assert_eq!(Some(version), new),
                    Outcome::Refused { .. } => {
                        prop_assert_eq!(new, None);
                        prop_assert_eq!(r.center().0, v);
                        prop_assert_eq!(&*r.center().1, &*before);
                    }
                }
                prop_assert_eq!(r.ledger().totals().pushes, i as u64 + 1);
            }
        }

    }
}
