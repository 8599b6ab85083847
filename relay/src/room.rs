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
use easel_protocol::{
    Ack, Backend, Center, CenterRing, ClientKind, Codec, Control, ErrorMessage, Hyper, LENET5_28,
    Message, ModelInfo, ModelSpec, Outcome, Policy, Push, Shard, Staleness, Welcome, apply_push,
    codec,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

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
pub fn normalize_code(code: &str) -> String {
    code.trim().to_ascii_uppercase()
}

/// How the room splits the training digits among its workers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Partition {
    /// `iid`, `dirichlet:ALPHA` or `classes:K` (`easel_client::data::partition`).
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
    /// Center versions kept for rebasing; raised to `tau_max + 1` if lower.
    pub ring_capacity: usize,
    pub partition: Partition,
    /// Ledger records kept (totals stay exact beyond it).
    pub ledger_capacity: usize,
    /// Seed of the initial center (`easel_client::model::init_params`).
    pub init_seed: u64,
}

impl Default for RoomSettings {
    /// Plain SGD (staleness hurts momentum), `K = 16` local steps, `alpha = 0.5` weighed by
    /// `1 / (1 + tau)`, `tau_max = 16`, fp32 both ways, IID shards for 8 workers.
    fn default() -> RoomSettings {
        RoomSettings {
            hyper: Hyper {
                alpha: 0.5,
                staleness: Staleness::Inverse,
                tau_max: 16,
                local_steps: 16,
                lr: 0.05,
                batch: 32,
                momentum: 0.0,
                codec_up: Codec::Fp32,
                codec_down: Codec::Fp32,
                error_feedback: false,
            },
            max_norm: 1e3,
            ring_capacity: 32,
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

impl RoomSettings {
    /// The push acceptance rules these settings make.
    pub fn policy(&self) -> Policy {
        Policy {
            alpha: self.hyper.alpha,
            staleness: self.hyper.staleness,
            tau_max: self.hyper.tau_max,
            max_norm: self.max_norm,
        }
    }

    fn ring_len(&self) -> usize {
        self.ring_capacity.max(self.hyper.tau_max as usize + 1)
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

/// A room.
#[derive(Debug)]
pub struct Room {
    /// The short code devices type to join.
    code: String,
    /// The model every worker of the room trains (lenet5-28); its hash is checked at Join.
    spec: ModelSpec,
    /// Hyper-parameters and acceptance rules; the teacher changes them with Control.
    settings: RoomSettings,
    /// The recent center versions, newest last: the current center, and the bases pushes
    /// are rebased on.
    ring: CenterRing,
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
    /// For lossy center codecs.
    rng: StdRng,
    /// Encoded `Center` messages of the newest version, by codec.
    center_cache: Vec<(Codec, u64, Arc<[u8]>)>,
}

impl Room {
    /// A room for lenet5-28 starting from `center` as version 0.
    ///
    /// # Panics
    /// If `center` does not have lenet5-28's parameter count.
    pub fn new(code: String, settings: RoomSettings, center: Vec<f32>, now: Instant) -> Room {
        assert_eq!(center.len(), LENET5_28.param_count, "center length");
        let ring = CenterRing::new(settings.ring_len(), 0, center.into());
        Room {
            code,
            spec: LENET5_28,
            ledger: Ledger::new(settings.ledger_capacity),
            rng: StdRng::seed_from_u64(settings.init_seed ^ 0x5eed),
            settings,
            ring,
            published: VecDeque::from([(0, now)]),
            workers: BTreeMap::new(),
            next_id: 1,
            trainers: 0,
            center_cache: Vec::new(),
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

    /// The newest version and its center.
    pub fn center(&self) -> (u64, Arc<[f32]>) {
        let (v, c) = self.ring.newest();
        (v, c.clone())
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
        if let Some(id) = join.resume_worker
            && self.workers.get(&id).is_some_and(|w| w.removed)
        {
            return Err(error(
                code::FORBIDDEN,
                format!("worker {id} was removed by the teacher; join again without resuming"),
            ));
        }
        let resumed = join
            .resume_worker
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
        let down = self.down_codec(join.capabilities);
        let (version, center) = self.ring.newest();
        let p = &self.settings.partition;
        Ok(Welcome {
            worker_id: id,
            model: ModelInfo::of(&self.spec),
            hyper: self.settings.hyper,
            shard: Shard::Partition {
                scheme: p.scheme.clone(),
                seed: p.seed,
                workers: p.shards.max(1),
                index: shard_index,
            },
            center_version: version,
            center: codec::encode(down, center, &mut self.rng),
        })
    }

    /// Marks a worker as gone; its record and ledger stay for a resume.
    pub fn leave(&mut self, worker: u64) {
        if let Some(w) = self.workers.get_mut(&worker) {
            w.connected = false;
        }
    }

    /// Notes that the relay heard from `worker`.
    pub fn touch(&mut self, worker: u64, now: Instant) {
        if let Some(w) = self.workers.get_mut(&worker) {
            w.last_seen = now;
        }
    }

    /// Handles one push from `worker`, whose message had `bytes_in` bytes: decodes the
    /// payload, applies it with `aggregate::apply_push` or refuses it (center untouched),
    /// and records it in the ledger. Returns the Ack and, when accepted, the new version.
    /// The `Center` to send after the Ack is [`Room::center_message`].
    pub fn handle_push(
        &mut self,
        worker: u64,
        push: &Push,
        bytes_in: usize,
        now: Instant,
    ) -> (Ack, Option<u64>) {
        let caps = self.workers.get(&worker).map(|w| w.capabilities);
        let (current, _) = self.ring.newest();
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
            code: 0,
            reason: String::new(),
        };
        let outcome = match self.workers.get(&worker).map(|w| w.kind) {
            Some(k) if trains(k) => self.apply(push, &mut rec, now),
            _ => Err((code::UNEXPECTED, "only training workers push".to_string())),
        };
        if let Some(w) = self.workers.get_mut(&worker) {
            w.last_seen = now;
        }
        let ack = Ack {
            base_version: base,
            outcome: match outcome {
                Ok(()) => Outcome::Accepted {
                    tau: rec.tau as u32,
                    alpha_eff: rec.alpha_eff,
                    version: rec.version.unwrap_or(current),
                },
                Err((c, why)) => {
                    rec.code = c;
                    rec.reason = why.clone();
                    Outcome::Refused {
                        code: c,
                        message: why,
                    }
                }
            },
        };
        let ack_len = message::encode(&Message::Ack(ack.clone())).len();
        let center_len = self.center_message(caps.unwrap_or(0)).1.len();
        rec.bytes_out = (ack_len + center_len) as u64;
        let version = rec.version;
        self.ledger.record(rec);
        (ack, version)
    }

    fn apply(&mut self, push: &Push, rec: &mut Record, now: Instant) -> Result<(), (u16, String)> {
        let delta = codec::decode(&push.payload, self.spec.param_count)
            .map_err(|e| (e.code(), e.to_string()))?;
        let applied = apply_push(
            &mut self.ring,
            &self.settings.policy(),
            push.base_version,
            &delta,
        )
        .map_err(|r| (r.code(), r.to_string()))?;
        rec.tau = u64::from(applied.tau);
        rec.alpha_eff = applied.alpha_eff;
        rec.worker_distance = applied.worker_distance;
        rec.view_distance = applied.view_distance;
        rec.delta_norm = applied.delta_norm;
        rec.version = Some(applied.version);
        self.published.push_back((applied.version, now));
        while self.published.len() > self.ring.len() {
            self.published.pop_front();
        }
        self.center_cache.clear();
        Ok(())
    }

    /// The encoded `Center` message of the newest version for a client with capability
    /// bits `caps`: the room's center codec when the client announced it, fp32 otherwise.
    /// Always the whole center (no difference). Cached per version and codec.
    pub fn center_message(&mut self, caps: u32) -> (u64, Arc<[u8]>) {
        let codec = self.down_codec(caps);
        let (version, center) = self.ring.newest();
        if let Some((_, v, bytes)) = self.center_cache.iter().find(|(c, _, _)| *c == codec)
            && *v == version
        {
            return (version, bytes.clone());
        }
        let payload = codec::encode(codec, center, &mut self.rng);
        let bytes: Arc<[u8]> = message::encode(&Message::Center(Center {
            version,
            base: None,
            payload,
        }))
        .into();
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
                self.settings.hyper = hyper;
                if self.ring.len() < self.settings.ring_len() {
                    // A larger tau_max needs a larger ring; older versions are dropped and
                    // pushes from them resync.
                    let (v, c) = self.ring.newest();
                    self.ring = CenterRing::new(self.settings.ring_len(), v, c.clone());
                }
                self.center_cache.clear();
                for id in targets(&self.workers, None)? {
                    out.push((id, Control::Settings(hyper)));
                }
            }
        }
        out.retain(|(id, _)| self.workers.get(id).is_some_and(|w| w.connected));
        Ok(out)
    }

    /// Removes a training worker: it is paused, marked removed (its resume is refused) and
    /// disconnected. Returns whether it was connected (its connection must be closed).
    pub fn remove(&mut self, worker: u64) -> Result<bool, ErrorMessage> {
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
    /// Versions keep counting up: workers never see a version go back.
    ///
    /// # Panics
    /// If `center` does not have lenet5-28's parameter count.
    pub fn reset(&mut self, center: Vec<f32>, now: Instant) -> u64 {
        assert_eq!(center.len(), self.spec.param_count, "center length");
        let version = self.ring.newest().0 + 1;
        self.ring = CenterRing::new(self.settings.ring_len(), version, center.into());
        self.published = VecDeque::from([(version, now)]);
        self.ledger = Ledger::new(self.settings.ledger_capacity);
        self.center_cache.clear();
        version
    }

    /// Sets how the training digits are split (`iid`, `dirichlet:ALPHA`, `classes:K`), for
    /// every Welcome from now on, resumes included. Returns the connected training workers,
    /// which must rejoin to get a shard of the new partition.
    pub fn set_partition(&mut self, scheme: &str) -> Result<Vec<u64>, ErrorMessage> {
        let parsed: easel_client::data::Partition = scheme
            .parse()
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
    use proptest::prelude::*;

    const N: usize = LENET5_28.param_count;

    fn room() -> Room {
        let settings = RoomSettings {
            hyper: Hyper {
                tau_max: 2,
                ..RoomSettings::default().hyper
            },
            ring_capacity: 3,
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
        let mut rng = StdRng::seed_from_u64(0);
        Push {
            base_version: base,
            local_steps: 1,
            samples: 32,
            loss: 1.0,
            payload: encode(Codec::Fp32, delta, &mut rng),
        }
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
        let (ack, v) = r.handle_push(id, &push(0, &vec![2.0; N]), 100, Instant::now());
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
        let (ack, _) = r.handle_push(id, &push(0, &vec![0.0; N]), 100, Instant::now());
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
            let (ack, v) = r.handle_push(id, p, 10, Instant::now());
            assert_eq!((refused_code(&ack), v), (Some(*want), None));
        }
        assert_eq!(r.center().0, 0);
        assert!(r.center().1.iter().all(|&x| x == 0.0));
        assert_eq!(r.ledger().totals().refused, cases.len() as u64);
        // Three versions later, base 0 is too stale.
        for _ in 0..3 {
            let v = r.center().0;
            r.handle_push(id, &push(v, &vec![0.1; N]), 10, Instant::now());
        }
        let (ack, _) = r.handle_push(id, &push(0, &vec![0.0; N]), 10, Instant::now());
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
        r.leave(a.worker_id);
        let again = Join {
            resume_worker: Some(a.worker_id),
            ..join(ClientKind::Bot)
        };
        let c = r.join(&again, false, Instant::now()).unwrap();
        assert_eq!(c.worker_id, a.worker_id);
        assert_eq!(c.shard, a.shard);
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
        let a = r
            .join(&join(ClientKind::Bot), false, Instant::now())
            .unwrap()
            .worker_id;
        let (_, v) = r.handle_push(a, &push(0, &vec![2.0; N]), 10, Instant::now());
        assert_eq!(v, Some(1));
        assert_eq!(r.remove(a), Ok(true));
        assert!(r.workers()[&a].removed && !r.workers()[&a].connected);
        assert!(r.remove(a).is_err() && r.remove(99).is_err());
        let again = Join {
            resume_worker: Some(a),
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
        let (ack, v) = r.handle_push(b, &push(1, &vec![0.0; N]), 10, Instant::now());
        assert!(refused_code(&ack).is_some() && v.is_none());
        let (ack, v) = r.handle_push(b, &push(2, &vec![3.0; N]), 10, Instant::now());
        assert_eq!((refused_code(&ack), v), (None, Some(3)));
    }

    #[test]
    fn partition_changes_apply_to_later_welcomes_and_name_who_must_rejoin() {
        let mut r = room();
        let a = r
            .join(&join(ClientKind::Bot), false, Instant::now())
            .unwrap()
            .worker_id;
        r.join(&join(ClientKind::Teacher), true, Instant::now())
            .unwrap();
        assert!(r.set_partition("dirichlet:-1").is_err());
        assert!(r.set_partition("nonsense").is_err());
        assert_eq!(r.settings().partition.scheme, "iid");
        assert_eq!(r.set_partition("Dirichlet:0.5"), Ok(vec![a]));
        assert_eq!(r.settings().partition.scheme, "dirichlet:0.5");
        r.leave(a);
        let again = Join {
            resume_worker: Some(a),
            ..join(ClientKind::Bot)
        };
        let w = r.join(&again, false, Instant::now()).unwrap();
        assert!(
            matches!(w.shard, Shard::Partition { ref scheme, index: 0, .. } if scheme == "dirichlet:0.5")
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn every_push_lands_in_the_ledger_and_refusals_never_move_the_center(
            pushes in prop::collection::vec((0u64..6, prop_oneof![Just(0.01f32), Just(f32::NAN), Just(50.0)]), 1..12)
        ) {
            let mut r = room();
            let id = r.join(&join(ClientKind::Bot), false, Instant::now()).unwrap().worker_id;
            for (i, &(back, value)) in pushes.iter().enumerate() {
                let (v, before) = r.center();
                let (ack, new) = r.handle_push(id, &push(v.saturating_sub(back), &vec![value; N]), 1, Instant::now());
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
