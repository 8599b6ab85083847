//! Easel's binary WebSocket messages: their types, [`encode`] and the total [`decode`].
//!
//! Every message is one binary WebSocket message: the six-byte header of
//! [`crate::frame`] (magic `EASL`, version 2, a type byte), then the body. Integers are
//! little-endian and fixed-width, floats IEEE-754 `f32`, strings and byte strings a `u32`
//! length followed by that many bytes (strings in UTF-8). PROTOCOL.md at the repository root
//! gives every layout byte by byte, and must change together with this file.
//!
//! [`decode`] is total: any byte string gives a [`Message`] or a [`ProtocolError`], never a
//! panic, and every length is checked against its [`Limits`] and against the bytes that
//! remain before anything is allocated. [`encode`] writes what it is given; keeping within
//! the limits is the sender's business, and the receiver's `decode` refuses what does not.

use crate::aggregate::Staleness;
use crate::codec::{self, Codec};
use crate::frame::Frame;
use crate::model_spec::ModelSpec;
use crate::wire::{Put, Reader};

/// The message type bytes (offset 5 of every message).
pub mod ty {
    pub const JOIN: u8 = 1;
    pub const WELCOME: u8 = 2;
    pub const PUSH: u8 = 3;
    pub const CENTER: u8 = 4;
    pub const ACK: u8 = 5;
    pub const CONTROL: u8 = 6;
    pub const ERROR: u8 = 7;
    pub const DEVICE: u8 = 8;
    pub const USE_BACKEND: u8 = 9;
    pub const QUESTION: u8 = 10;
    pub const VOTE: u8 = 11;
}

pub use crate::codes::code;

/// The most bytes of a room code.
pub const MAX_ROOM: usize = 16;
/// The most bytes of a model name and of a partition scheme's text.
pub const MAX_NAME: usize = 64;

pub use crate::frame::{Limits, ProtocolError};

/// What kind of participant joins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientKind {
    /// A browser tab training in a Web Worker.
    Browser = 0,
    /// A native bot (`easel bots`).
    Bot = 1,
    /// A simulated worker.
    Sim = 2,
    /// The teacher's dashboard: may send [`Control`], does not train.
    Teacher = 3,
    /// A read-only dashboard: receives centers, does not train.
    Observer = 4,
}

/// Where a worker trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    Cpu = 0,
    Gpu = 1,
}

/// The backend a browser tab is asked to train on: by the teacher ([`Message::UseBackend`])
/// or by the page's address (`?backend=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendChoice {
    /// Time a few steps on each backend and train on the faster.
    Auto = 0,
    Gpu = 1,
    Cpu = 2,
}

impl BackendChoice {
    /// `auto`, `gpu` or `cpu`.
    pub fn name(self) -> &'static str {
        match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Gpu => "gpu",
            BackendChoice::Cpu => "cpu",
        }
    }

    /// Reads `auto`, `gpu` or `cpu` (any case); `None` for anything else.
    pub fn parse(text: &str) -> Option<BackendChoice> {
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(BackendChoice::Auto),
            "gpu" => Some(BackendChoice::Gpu),
            "cpu" => Some(BackendChoice::Cpu),
            _ => None,
        }
    }
}

/// What decided the backend a [`DeviceReport`] names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChosenBy {
    /// `auto`: both backends were timed and the faster trains.
    Measured = 0,
    /// `auto`, but only the CPU can train here (no usable WebGPU; `why` says why).
    OnlyCpu = 1,
    /// The page's address asked for it (`?backend=gpu` or `cpu`).
    Page = 2,
    /// The teacher asked for it ([`Message::UseBackend`]).
    Teacher = 3,
}

/// A browser tab tells the relay which backend it trains on and why, with the speeds it
/// measured (PROTOCOL.md, Device). Sent after each Welcome and whenever the backend or the
/// figures change.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceReport {
    /// The backend that trains now.
    pub backend: Backend,
    pub chosen_by: ChosenBy,
    /// Training samples per second measured on WebGPU, 0 when not measured.
    pub gpu_samples_per_s: f32,
    /// Training samples per second measured on the CPU, 0 when not measured.
    pub cpu_samples_per_s: f32,
    /// The WebGPU adapter is a fallback or software one (SwiftShader, llvmpipe): the CPU
    /// emulating a GPU.
    pub software_gpu: bool,
    /// The WebGPU adapter's description; empty when the tab has none. At most
    /// [`Limits::max_string`] bytes.
    pub adapter: String,
    /// The decision in words, as the student page shows it ("GPU 480 digits/s, CPU 9,600
    /// digits/s: training on the CPU ..."). At most [`Limits::max_string`] bytes.
    pub why: String,
}

/// The most answers a [`Question`] offers (and the fewest: [`MIN_ANSWERS`]).
pub const MAX_ANSWERS: usize = 4;
/// The fewest answers a [`Question`] offers.
pub const MIN_ANSWERS: usize = 2;

/// Where a lesson's question stands ([`Question::phase`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuestionPhase {
    /// Asked: the student may vote, and change the vote, until the run starts.
    Open = 0,
    /// The runs are on: votes are closed, the projector shows the class's answer.
    Closed = 1,
    /// The runs are over: [`Question::supported`] and [`Question::outcome`] say what was
    /// measured.
    Reveal = 2,
    /// The teacher ended the lesson: the page puts the question away.
    Over = 3,
}

/// The teacher's question of a lesson, as one student sees it (relay -> tab; PROTOCOL.md,
/// Question). Sent when a lesson is asked, at each change of phase, after each of this
/// device's votes, and after a Welcome while a lesson is on.
#[derive(Clone, Debug, PartialEq)]
pub struct Question {
    /// The lesson's number in its room; a [`Vote`] names it.
    pub lesson: u32,
    pub phase: QuestionPhase,
    /// The question, at most [`Limits::max_string`] bytes.
    pub text: String,
    /// [`MIN_ANSWERS`] to [`MAX_ANSWERS`] answers, each at most [`Limits::max_string`] bytes.
    pub answers: Vec<String>,
    /// This device's vote, an index into `answers`.
    pub voted: Option<u8>,
    /// At [`QuestionPhase::Reveal`]: the answer the measurement supports, `None` when it
    /// supports none (no measurable difference where the answers claim one).
    pub supported: Option<u8>,
    /// At [`QuestionPhase::Reveal`]: what was measured, in a sentence; empty before.
    pub outcome: String,
}

/// A student's answer to the lesson's open question (tab -> relay; PROTOCOL.md, Vote). A
/// later vote replaces the earlier one; the relay answers with the device's [`Question`],
/// or with an Error ([`code::BAD_VOTE`]) that closes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vote {
    /// [`Question::lesson`].
    pub lesson: u32,
    /// An index into [`Question::answers`].
    pub answer: u8,
}

/// Bits of [`Join::capabilities`]. Fp32 is always supported; unknown bits are ignored.
pub mod caps {
    /// Decodes and encodes [`crate::Codec::Fp16`].
    pub const FP16: u32 = 1 << 0;
    /// Decodes and encodes [`crate::Codec::Qsgd`].
    pub const QSGD: u32 = 1 << 1;
    /// Decodes and encodes [`crate::Codec::TopK`].
    pub const TOP_K: u32 = 1 << 2;
    /// Decodes and encodes [`crate::Codec::TopKQsgd`].
    pub const TOP_K_QSGD: u32 = 1 << 3;
    /// Can apply a [`crate::message::Center`] sent as a difference from an older version.
    pub const CENTER_DIFF: u32 = 1 << 4;
    /// Every capability this crate implements.
    pub const ALL: u32 = FP16 | QSGD | TOP_K | TOP_K_QSGD | CENTER_DIFF;
}

/// A participant asks to enter a room. First message on every connection.
#[derive(Clone, Debug, PartialEq)]
pub struct Join {
    /// The room's short code, at most [`MAX_ROOM`] bytes of UTF-8.
    pub room: String,
    pub kind: ClientKind,
    pub backend: Backend,
    /// [`caps`] bits.
    pub capabilities: u32,
    /// The client's [`ModelSpec::layout_hash`]; the relay refuses a mismatch with
    /// [`code::WRONG_MODEL`].
    pub layout_hash: [u8; 32],
    /// The worker id and resume token of an earlier `Welcome`, to take up that worker's
    /// place and ledger after a reconnection. An id the room does not know gets a fresh
    /// one; a known id with another token is refused with [`code::BAD_RESUME_TOKEN`].
    pub resume_worker: Option<Resume>,
}

/// What a `Join` that takes up an earlier place carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resume {
    /// The worker id of the earlier `Welcome`.
    pub worker: u64,
    /// The secret of that `Welcome`.
    pub token: ResumeToken,
}

/// A worker's secret, given in its `Welcome` and required to resume it: 16 bytes the relay
/// draws from a cryptographic generator. Worker ids are small and guessable (1, 2, 3...);
/// the token is what proves a reconnection is the same worker. Its `Debug` hides it.
#[derive(Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct ResumeToken(pub [u8; 16]);

impl ResumeToken {
    /// 32 lowercase hex digits (how the browser keeps it in `sessionStorage`).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The token written by [`ResumeToken::to_hex`]; `None` for anything but 32 hex digits.
    pub fn from_hex(hex: &str) -> Option<ResumeToken> {
        let hex = hex.as_bytes();
        if hex.len() != 32 {
            return None;
        }
        let mut t = [0u8; 16];
        for (i, b) in t.iter_mut().enumerate() {
            let pair = std::str::from_utf8(&hex[2 * i..2 * i + 2]).ok()?;
            *b = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(ResumeToken(t))
    }

    /// Whether `other` is this token, compared in constant time.
    pub fn matches(&self, other: &ResumeToken) -> bool {
        self.0
            .iter()
            .zip(&other.0)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl std::fmt::Debug for ResumeToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResumeToken(..)")
    }
}

/// The model a room trains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelInfo {
    /// At most [`MAX_NAME`] bytes.
    pub name: String,
    pub layout_hash: [u8; 32],
    pub param_count: u32,
}

impl ModelInfo {
    /// The description of `spec`.
    pub fn of(spec: &ModelSpec) -> ModelInfo {
        ModelInfo {
            name: spec.name.to_string(),
            layout_hash: spec.layout_hash(),
            param_count: spec.param_count as u32,
        }
    }

    /// Whether `spec` is this model: same layout hash and parameter count.
    pub fn matches(&self, spec: &ModelSpec) -> bool {
        self.layout_hash == spec.layout_hash() && self.param_count as usize == spec.param_count
    }
}

/// The largest `tau_max` a room accepts: the relay keeps `tau_max + 1` centers (about
/// 178 KB each for lenet5-28, so at most about 180 MB) to rebase stale pushes on.
pub const MAX_TAU: u32 = 1024;

/// The largest degree of a `regular:D` swarm topology.
pub const MAX_DEGREE: u32 = 1024;

/// A room's training and merging settings, sent in `Welcome` and in [`Control::Settings`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hyper {
    /// The elastic coefficient, in `[0, 1]`.
    pub alpha: f32,
    pub staleness: Staleness,
    /// Pushes staler than this are refused ([`code::TOO_STALE`]); at most [`MAX_TAU`]
    /// (the relay keeps `tau_max + 1` centers to rebase pushes on).
    pub tau_max: u32,
    /// Local SGD steps between pushes (`K`), at least 1.
    pub local_steps: u32,
    /// Learning rate, finite and non-negative.
    pub lr: f32,
    /// Minibatch size, at least 1.
    pub batch: u32,
    /// SGD momentum, in `[0, 1)`. Plain SGD (0) is the default: staleness hurts momentum.
    pub momentum: f32,
    /// How workers compress pushes.
    pub codec_up: Codec,
    /// How the relay compresses centers.
    pub codec_down: Codec,
    /// Whether workers keep an error-feedback residual for their pushes.
    pub error_feedback: bool,
    /// How the relay merges pushes; its shared numbers are the fields above (see
    /// [`Merge`]).
    pub merge: Merge,
}

/// The room's merging strategy as the wire carries it: the kind and only the parameters
/// that [`Hyper`] does not already hold. One copy of every number: `alpha`, `staleness`
/// and `tau_max` are Hyper's, FedAvg's `k` is `local_steps`, bounded staleness's `s` is
/// `tau_max`, and under ADACOMM `local_steps` is the current period (the relay announces
/// each change with [`Control::Settings`]). [`Hyper::strategy`] makes the full
/// [`crate::strategy::Strategy`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Merge {
    /// Asynchronous EASGD (`alpha`, `staleness`, `tau_max`).
    #[default]
    Easgd,
    /// FedAvg: `local_steps` steps, a barrier; `m_of_n: Some(m)` closes a round after the
    /// fastest `m` workers.
    Fedavg { m_of_n: Option<u32> },
    /// Asynchronous SGD on deltas weighed by `staleness`, refused beyond `tau_max`.
    AsyncSgd,
    /// Bounded staleness `s = tau_max`, optionally a view distance bound `b`.
    Bounded { b: Option<f32> },
    /// ADACOMM: FedAvg whose period starts at `k0` and adapts every `interval_s` seconds,
    /// never below `k_min`.
    Adacomm {
        k0: u32,
        k_min: u32,
        interval_s: f32,
    },
    /// FedBuff: every `m` updates (weighed by `staleness`, refused beyond `tau_max`) are
    /// applied together.
    Fedbuff { m: u32 },
    /// SwarmSGD on `topology`, routed by the relay ([`crate::strategy::Swarm`]): each push
    /// is averaged with one random neighbour's model; no central model. The exchanges are
    /// compressed by `codec_up` (pushes) and `codec_down` (the models sent back).
    Swarm { topology: crate::strategy::Topology },
}

impl Default for Hyper {
    /// A new room's settings: plain SGD (staleness hurts momentum), `K = 16` local steps of
    /// batch 32 at learning rate 0.05, elastic averaging with `alpha = 0.5` weighed by
    /// `1 / (1 + tau)`, `tau_max = 16`, fp32 both ways.
    fn default() -> Hyper {
        Hyper {
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
            merge: Merge::Easgd,
        }
    }
}

impl Hyper {
    /// Checks every field's range (the ones documented on each field).
    pub fn validate(&self) -> Result<(), &'static str> {
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err("alpha");
        }
        self.staleness.validate()?;
        if self.local_steps == 0 {
            return Err("local_steps");
        }
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return Err("lr");
        }
        if self.tau_max > MAX_TAU {
            return Err("tau_max");
        }
        if self.batch == 0 {
            return Err("batch");
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err("momentum");
        }
        self.codec_up.validate().map_err(|_| "codec_up")?;
        self.codec_down.validate().map_err(|_| "codec_down")?;
        // The room's size is checked where it is known (the relay's barrier; a swarm's
        // graph falls back to the complete graph when its topology does not fit).
        match self.merge {
            Merge::Swarm {
                topology: crate::strategy::Topology::Regular(d),
            } if d == 0 || d > MAX_DEGREE => Err("strategy"),
            Merge::Swarm { .. } => Ok(()),
            _ => self.strategy().validate(u32::MAX).map_err(|_| "strategy"),
        }
    }

    /// These settings with `strategy` as the room's: its kind becomes the [`Merge`] and its
    /// numbers the shared fields ([`Hyper::strategy`] reads them back). FedAvg's `k` and
    /// ADACOMM's `k0` become `local_steps`; bounded staleness's `s` becomes `tau_max`; a
    /// swarm's `quantize` codec (the simulator's exchanges) becomes both codecs, since a live
    /// room's exchanges are its pushes and centers.
    pub fn with_strategy(mut self, strategy: &crate::strategy::Strategy) -> Hyper {
        use crate::strategy::Strategy as S;
        self.merge = match *strategy {
            S::Easgd {
                alpha,
                staleness,
                tau_max,
            } => {
                (self.alpha, self.staleness, self.tau_max) = (alpha, staleness, tau_max);
                Merge::Easgd
            }
            S::Fedavg { k, m_of_n } => {
                self.local_steps = k;
                Merge::Fedavg { m_of_n }
            }
            S::AsyncSgd { staleness, tau_max } => {
                (self.staleness, self.tau_max) = (staleness, tau_max);
                Merge::AsyncSgd
            }
            S::Bounded { s, b } => {
                self.tau_max = s;
                Merge::Bounded { b }
            }
            S::Adacomm {
                k0,
                k_min,
                interval_s,
            } => {
                self.local_steps = k0;
                Merge::Adacomm {
                    k0,
                    k_min,
                    interval_s: interval_s as f32,
                }
            }
            S::Fedbuff {
                m,
                staleness,
                tau_max,
            } => {
                (self.staleness, self.tau_max) = (staleness, tau_max);
                Merge::Fedbuff { m }
            }
            S::Swarm { topology, quantize } => {
                if let Some(c) = quantize {
                    (self.codec_up, self.codec_down) = (c, c);
                }
                Merge::Swarm { topology }
            }
        };
        self
    }

    /// The full strategy these settings make (see [`Merge`] for which field is which).
    pub fn strategy(&self) -> crate::strategy::Strategy {
        use crate::strategy::Strategy as S;
        let (alpha, staleness, tau_max) = (self.alpha, self.staleness, self.tau_max);
        match self.merge {
            Merge::Easgd => S::Easgd {
                alpha,
                staleness,
                tau_max,
            },
            Merge::Fedavg { m_of_n } => S::Fedavg {
                k: self.local_steps,
                m_of_n,
            },
            Merge::AsyncSgd => S::AsyncSgd { staleness, tau_max },
            Merge::Bounded { b } => S::Bounded { s: tau_max, b },
            Merge::Adacomm {
                k0,
                k_min,
                interval_s,
            } => S::Adacomm {
                k0,
                k_min,
                interval_s: f64::from(interval_s),
            },
            Merge::Fedbuff { m } => S::Fedbuff {
                m,
                staleness,
                tau_max,
            },
            Merge::Swarm { topology } => S::Swarm {
                topology,
                quantize: None,
            },
        }
    }
}

/// Which training digits a worker uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shard {
    /// These indices into the training split.
    Indices(Vec<u32>),
    /// Shard `index` of `workers` made by the client's partitioner (`client::data::partition`)
    /// from the training split's labels with `scheme` (its text form: `iid`,
    /// `dirichlet:ALPHA` or `classes:K`, at most [`MAX_NAME`] bytes) and `seed`. Compact, and
    /// the same on every platform because partitions depend only on their arguments.
    /// `workers` is the room's number of shards, not the number of connected workers.
    Partition {
        scheme: String,
        seed: u64,
        workers: u32,
        index: u32,
    },
}

/// The relay admits a participant.
#[derive(Clone, Debug, PartialEq)]
pub struct Welcome {
    /// This participant's id in the room (give it with `resume_token` as `resume_worker`
    /// to reconnect).
    pub worker_id: u64,
    /// The secret that a `Join` resuming `worker_id` must carry.
    pub resume_token: ResumeToken,
    pub model: ModelInfo,
    pub hyper: Hyper,
    pub shard: Shard,
    /// The version of `center`.
    pub center_version: u64,
    /// The full center, a codec payload (PROTOCOL.md, "Payloads").
    pub center: Vec<u8>,
}

/// A worker sends its model after `local_steps` steps.
#[derive(Clone, Debug, PartialEq)]
pub struct Push {
    /// The center version the worker last received: the payload is relative to it.
    pub base_version: u64,
    pub local_steps: u32,
    /// Training samples seen in those steps.
    pub samples: u32,
    /// Mean training loss over those steps (NaN when not measured).
    pub loss: f32,
    /// `x_i - center(base_version)`, a codec payload.
    pub payload: Vec<u8>,
}

/// The relay sends a center.
#[derive(Clone, Debug, PartialEq)]
pub struct Center {
    pub version: u64,
    /// `None`: the payload is the whole center. `Some(b)`: the payload is
    /// `center(version) - center(b)`, for a receiver that holds version `b` and announced
    /// [`caps::CENTER_DIFF`]. `b < version`.
    pub base: Option<u64>,
    /// A codec payload.
    pub payload: Vec<u8>,
}

/// What became of a push.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Applied with staleness `tau` and weight `alpha_eff`, making center `version`.
    Accepted {
        tau: u32,
        alpha_eff: f32,
        version: u64,
    },
    /// Not applied; the center is untouched. `code` is one of [`code`]; for
    /// [`code::TOO_STALE`] and [`code::RESYNC`] the worker replaces its model with the next
    /// center it receives.
    Refused { code: u16, message: String },
}

/// The relay's answer to a push. A `Center` follows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Ack {
    /// The pushed `base_version`, to match the answer to the push.
    pub base_version: u64,
    pub outcome: Outcome,
}

/// Room control. From the teacher to the relay, `worker: None` means the whole room; from
/// the relay to a worker, it means "you".
#[derive(Clone, Debug, PartialEq)]
pub enum Control {
    /// Stop training.
    Pause { worker: Option<u64> },
    /// Start again.
    Resume { worker: Option<u64> },
    /// An artificial delay: the worker waits `ms` milliseconds after each round of local
    /// steps before pushing, to play a straggler. 0 removes it.
    Delay { worker: Option<u64>, ms: u32 },
    /// New room settings, for every worker from its next round on.
    Settings(Hyper),
}

/// Something went wrong; `code` is one of [`code`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorMessage {
    pub code: u16,
    /// For people, at most [`Limits::max_string`] bytes.
    pub message: String,
}

/// Every Easel message.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    Join(Join),
    Welcome(Welcome),
    Push(Push),
    Center(Center),
    Ack(Ack),
    Control(Control),
    Error(ErrorMessage),
    /// A browser tab's backend and measured speeds (tab -> relay).
    Device(DeviceReport),
    /// The teacher's backend for one tab (relay -> tab).
    UseBackend(BackendChoice),
    /// A lesson's question, as this tab sees it (relay -> tab).
    Question(Question),
    /// A student's answer (tab -> relay).
    Vote(Vote),
}

impl Message {
    /// The type byte ([`ty`]).
    pub fn type_byte(&self) -> u8 {
        match self {
            Message::Join(_) => ty::JOIN,
            Message::Welcome(_) => ty::WELCOME,
            Message::Push(_) => ty::PUSH,
            Message::Center(_) => ty::CENTER,
            Message::Ack(_) => ty::ACK,
            Message::Control(_) => ty::CONTROL,
            Message::Error(_) => ty::ERROR,
            Message::Device(_) => ty::DEVICE,
            Message::UseBackend(_) => ty::USE_BACKEND,
            Message::Question(_) => ty::QUESTION,
            Message::Vote(_) => ty::VOTE,
        }
    }
}

/// The length of the encoded whole-center `Center` message (`base: None`) whose payload has
/// `payload` bytes: header, version, the absent base, the payload's length and bytes.
pub fn center_len(payload: usize) -> usize {
    crate::frame::HEADER_LEN + 8 + 1 + 4 + payload
}

/// The bytes of the whole-center `Center` message of `version` whose payload is `values`
/// encoded with `codec`: the same bytes as [`encode`] of that `Center` (`base: None`) with
/// the payload from [`codec::encode`] (the same draws from `rng`), written into one buffer
/// of the exact size, with no copy of the payload.
pub fn encode_center<R: rand::Rng + ?Sized>(
    version: u64,
    codec: Codec,
    values: &[f32],
    rng: &mut R,
) -> Vec<u8> {
    let payload = codec::encoded_len(codec, values.len());
    let mut out = Frame::header(ty::CENTER, center_len(payload) - crate::frame::HEADER_LEN);
    out.put_u64(version);
    put_opt(&mut out, None);
    out.put_u32(payload as u32);
    codec::encode_into(codec, values, rng, &mut out);
    debug_assert_eq!(out.len(), center_len(payload));
    out
}

/// The bytes of `msg`: header, then body, as PROTOCOL.md lays them out.
pub fn encode(msg: &Message) -> Vec<u8> {
    let payload = match msg {
        Message::Welcome(w) => w.center.len(),
        Message::Push(p) => p.payload.len(),
        Message::Center(c) => c.payload.len(),
        _ => 0,
    };
    let mut out = Frame::header(msg.type_byte(), 96 + payload);
    match msg {
        Message::Join(j) => {
            put_str(&mut out, &j.room);
            out.put_u8(j.kind as u8);
            out.put_u8(j.backend as u8);
            out.put_u32(j.capabilities);
            out.extend_from_slice(&j.layout_hash);
            match j.resume_worker {
                None => out.put_u8(0),
                Some(r) => {
                    out.put_u8(1);
                    out.put_u64(r.worker);
                    out.extend_from_slice(&r.token.0);
                }
            }
        }
        Message::Welcome(w) => {
            out.put_u64(w.worker_id);
            out.extend_from_slice(&w.resume_token.0);
            put_str(&mut out, &w.model.name);
            out.extend_from_slice(&w.model.layout_hash);
            out.put_u32(w.model.param_count);
            put_hyper(&mut out, &w.hyper);
            match &w.shard {
                Shard::Indices(ix) => {
                    out.put_u8(0);
                    out.put_u32(ix.len() as u32);
                    for &i in ix {
                        out.put_u32(i);
                    }
                }
                Shard::Partition {
                    scheme,
                    seed,
                    workers,
                    index,
                } => {
                    out.put_u8(1);
                    put_str(&mut out, scheme);
                    out.put_u64(*seed);
                    out.put_u32(*workers);
                    out.put_u32(*index);
                }
            }
            out.put_u64(w.center_version);
            put_bytes(&mut out, &w.center);
        }
        Message::Push(p) => {
            out.put_u64(p.base_version);
            out.put_u32(p.local_steps);
            out.put_u32(p.samples);
            out.put_f32(p.loss);
            put_bytes(&mut out, &p.payload);
        }
        Message::Center(c) => {
            out.put_u64(c.version);
            put_opt(&mut out, c.base);
            put_bytes(&mut out, &c.payload);
        }
        Message::Ack(a) => {
            out.put_u64(a.base_version);
            match &a.outcome {
                Outcome::Accepted {
                    tau,
                    alpha_eff,
                    version,
                } => {
                    out.put_u8(0);
                    out.put_u32(*tau);
                    out.put_f32(*alpha_eff);
                    out.put_u64(*version);
                }
                Outcome::Refused { code, message } => {
                    out.put_u8(1);
                    out.put_u16(*code);
                    put_str(&mut out, message);
                }
            }
        }
        Message::Control(c) => match c {
            Control::Pause { worker } => {
                out.put_u8(0);
                put_opt(&mut out, *worker);
            }
            Control::Resume { worker } => {
                out.put_u8(1);
                put_opt(&mut out, *worker);
            }
            Control::Delay { worker, ms } => {
                out.put_u8(2);
                put_opt(&mut out, *worker);
                out.put_u32(*ms);
            }
            Control::Settings(h) => {
                out.put_u8(3);
                put_hyper(&mut out, h);
            }
        },
        Message::Error(e) => {
            out.put_u16(e.code);
            put_str(&mut out, &e.message);
        }
        Message::Device(d) => {
            out.put_u8(d.backend as u8);
            out.put_u8(d.chosen_by as u8);
            out.put_f32(d.gpu_samples_per_s);
            out.put_f32(d.cpu_samples_per_s);
            out.put_u8(u8::from(d.software_gpu));
            put_str(&mut out, &d.adapter);
            put_str(&mut out, &d.why);
        }
        Message::UseBackend(c) => out.put_u8(*c as u8),
        Message::Question(q) => {
            out.put_u32(q.lesson);
            out.put_u8(q.phase as u8);
            put_str(&mut out, &q.text);
            out.put_u8(q.answers.len() as u8);
            for a in &q.answers {
                put_str(&mut out, a);
            }
            out.put_u8(q.voted.unwrap_or(NO_ANSWER));
            out.put_u8(q.supported.unwrap_or(NO_ANSWER));
            put_str(&mut out, &q.outcome);
        }
        Message::Vote(v) => {
            out.put_u32(v.lesson);
            out.put_u8(v.answer);
        }
    }
    out
}

/// The byte of an absent answer ([`Question::voted`], [`Question::supported`]).
const NO_ANSWER: u8 = 255;

/// An answer index of a question with `count` answers, or [`NO_ANSWER`].
fn read_answer(
    r: &mut Reader,
    count: usize,
    what: &'static str,
) -> Result<Option<u8>, ProtocolError> {
    match r.u8()? {
        NO_ANSWER => Ok(None),
        a if (a as usize) < count => Ok(Some(a)),
        _ => Err(invalid(what)),
    }
}

/// Reads one message. Total: see the module documentation.
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Message, ProtocolError> {
    let frame = Frame::parse(bytes, limits)?;
    let mut r = Reader::new_at(frame.bytes, crate::frame::HEADER_LEN);
    let msg = match frame.ty {
        ty::JOIN => Message::Join(Join {
            room: read_str(&mut r, MAX_ROOM, "room code")?,
            kind: match r.u8()? {
                0 => ClientKind::Browser,
                1 => ClientKind::Bot,
                2 => ClientKind::Sim,
                3 => ClientKind::Teacher,
                4 => ClientKind::Observer,
                _ => return Err(invalid("client kind")),
            },
            backend: match r.u8()? {
                0 => Backend::Cpu,
                1 => Backend::Gpu,
                _ => return Err(invalid("backend")),
            },
            capabilities: r.u32()?,
            layout_hash: r.array()?,
            resume_worker: match r.u8()? {
                0 => None,
                1 => Some(Resume {
                    worker: r.u64()?,
                    token: ResumeToken(r.array()?),
                }),
                _ => return Err(invalid("option flag")),
            },
        }),
        ty::WELCOME => Message::Welcome(Welcome {
            worker_id: r.u64()?,
            resume_token: ResumeToken(r.array()?),
            model: ModelInfo {
                name: read_str(&mut r, MAX_NAME, "model name")?,
                layout_hash: r.array()?,
                param_count: r.u32()?,
            },
            hyper: read_hyper(&mut r)?,
            shard: match r.u8()? {
                0 => {
                    let count = read_len(&mut r, limits.max_shard, "shard", 4)?;
                    let mut ix = Vec::with_capacity(count);
                    for _ in 0..count {
                        ix.push(r.u32()?);
                    }
                    Shard::Indices(ix)
                }
                1 => {
                    let scheme = read_str(&mut r, MAX_NAME, "partition scheme")?;
                    let seed = r.u64()?;
                    let workers = r.u32()?;
                    let index = r.u32()?;
                    if workers == 0 || index >= workers {
                        return Err(invalid("shard index"));
                    }
                    Shard::Partition {
                        scheme,
                        seed,
                        workers,
                        index,
                    }
                }
                _ => return Err(invalid("shard kind")),
            },
            center_version: r.u64()?,
            center: read_bytes(&mut r, limits.max_payload, "payload")?,
        }),
        ty::PUSH => Message::Push(Push {
            base_version: r.u64()?,
            local_steps: r.u32()?,
            samples: r.u32()?,
            loss: r.f32()?,
            payload: read_bytes(&mut r, limits.max_payload, "payload")?,
        }),
        ty::CENTER => {
            let version = r.u64()?;
            let base = read_opt(&mut r)?;
            if base.is_some_and(|b| b >= version) {
                return Err(invalid("center base version"));
            }
            Message::Center(Center {
                version,
                base,
                payload: read_bytes(&mut r, limits.max_payload, "payload")?,
            })
        }
        ty::ACK => Message::Ack(Ack {
            base_version: r.u64()?,
            outcome: match r.u8()? {
                0 => Outcome::Accepted {
                    tau: r.u32()?,
                    alpha_eff: r.f32()?,
                    version: r.u64()?,
                },
                1 => Outcome::Refused {
                    code: r.u16()?,
                    message: read_str(&mut r, limits.max_string, "message")?,
                },
                _ => return Err(invalid("push outcome")),
            },
        }),
        ty::CONTROL => Message::Control(match r.u8()? {
            0 => Control::Pause {
                worker: read_opt(&mut r)?,
            },
            1 => Control::Resume {
                worker: read_opt(&mut r)?,
            },
            2 => Control::Delay {
                worker: read_opt(&mut r)?,
                ms: r.u32()?,
            },
            3 => Control::Settings(read_hyper(&mut r)?),
            _ => return Err(invalid("control kind")),
        }),
        ty::ERROR => Message::Error(ErrorMessage {
            code: r.u16()?,
            message: read_str(&mut r, limits.max_string, "message")?,
        }),
        ty::DEVICE => Message::Device(DeviceReport {
            backend: match r.u8()? {
                0 => Backend::Cpu,
                1 => Backend::Gpu,
                _ => return Err(invalid("backend")),
            },
            chosen_by: match r.u8()? {
                0 => ChosenBy::Measured,
                1 => ChosenBy::OnlyCpu,
                2 => ChosenBy::Page,
                3 => ChosenBy::Teacher,
                _ => return Err(invalid("chosen by")),
            },
            gpu_samples_per_s: read_speed(&mut r)?,
            cpu_samples_per_s: read_speed(&mut r)?,
            software_gpu: match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(invalid("software flag")),
            },
            adapter: read_str(&mut r, limits.max_string, "adapter")?,
            why: read_str(&mut r, limits.max_string, "why")?,
        }),
        ty::USE_BACKEND => Message::UseBackend(match r.u8()? {
            0 => BackendChoice::Auto,
            1 => BackendChoice::Gpu,
            2 => BackendChoice::Cpu,
            _ => return Err(invalid("backend choice")),
        }),
        ty::QUESTION => {
            let lesson = r.u32()?;
            let phase = match r.u8()? {
                0 => QuestionPhase::Open,
                1 => QuestionPhase::Closed,
                2 => QuestionPhase::Reveal,
                3 => QuestionPhase::Over,
                _ => return Err(invalid("question phase")),
            };
            let text = read_str(&mut r, limits.max_string, "question")?;
            let count = r.u8()? as usize;
            if !(MIN_ANSWERS..=MAX_ANSWERS).contains(&count) {
                return Err(invalid("answer count"));
            }
            let mut answers = Vec::with_capacity(count);
            for _ in 0..count {
                answers.push(read_str(&mut r, limits.max_string, "answer")?);
            }
            Message::Question(Question {
                lesson,
                phase,
                text,
                answers,
                voted: read_answer(&mut r, count, "voted answer")?,
                supported: read_answer(&mut r, count, "supported answer")?,
                outcome: read_str(&mut r, limits.max_string, "outcome")?,
            })
        }
        ty::VOTE => Message::Vote(Vote {
            lesson: r.u32()?,
            answer: r.u8()?,
        }),
        other => return Err(ProtocolError::UnknownType(other)),
    };
    match r.remaining() {
        0 => Ok(msg),
        extra => Err(ProtocolError::TrailingBytes { extra }),
    }
}

/// A measured speed in samples per second: finite and `>= 0` (0: not measured).
fn read_speed(r: &mut Reader) -> Result<f32, ProtocolError> {
    let v = r.f32()?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(invalid("samples per second"))
    }
}

fn invalid(what: &'static str) -> ProtocolError {
    ProtocolError::InvalidValue { what }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.put_u32(b.len() as u32);
    out.extend_from_slice(b);
}

fn put_opt(out: &mut Vec<u8>, v: Option<u64>) {
    match v {
        None => out.put_u8(0),
        Some(v) => {
            out.put_u8(1);
            out.put_u64(v);
        }
    }
}

fn put_hyper(out: &mut Vec<u8>, h: &Hyper) {
    out.put_f32(h.alpha);
    match h.staleness {
        Staleness::Constant => out.put_u8(0),
        Staleness::Inverse => out.put_u8(1),
        Staleness::Polynomial { a } => {
            out.put_u8(2);
            out.put_f32(a);
        }
        Staleness::Hinge { a, b } => {
            out.put_u8(3);
            out.put_f32(a);
            out.put_u32(b);
        }
    }
    out.put_u32(h.tau_max);
    out.put_u32(h.local_steps);
    out.put_f32(h.lr);
    out.put_u32(h.batch);
    out.put_f32(h.momentum);
    h.codec_up.write_descriptor(out);
    h.codec_down.write_descriptor(out);
    out.put_u8(h.error_feedback as u8);
    match h.merge {
        Merge::Easgd => out.put_u8(0),
        Merge::Fedavg { m_of_n } => {
            out.put_u8(1);
            out.put_u32(m_of_n.unwrap_or(0));
        }
        Merge::AsyncSgd => out.put_u8(2),
        Merge::Bounded { b } => {
            out.put_u8(3);
            out.put_f32(b.unwrap_or(0.0));
        }
        Merge::Adacomm {
            k0,
            k_min,
            interval_s,
        } => {
            out.put_u8(4);
            out.put_u32(k0);
            out.put_u32(k_min);
            out.put_f32(interval_s);
        }
        Merge::Fedbuff { m } => {
            out.put_u8(5);
            out.put_u32(m);
        }
        Merge::Swarm { topology } => {
            use crate::strategy::Topology as T;
            out.put_u8(6);
            let (kind, degree) = match topology {
                T::Complete => (0, 0),
                T::Ring => (1, 0),
                T::Regular(d) => (2, d),
            };
            out.put_u8(kind);
            out.put_u32(degree);
        }
    }
}

fn read_merge(r: &mut Reader) -> Result<Merge, ProtocolError> {
    Ok(match r.u8()? {
        0 => Merge::Easgd,
        1 => Merge::Fedavg {
            m_of_n: Some(r.u32()?).filter(|&m| m > 0),
        },
        2 => Merge::AsyncSgd,
        3 => Merge::Bounded {
            b: Some(r.f32()?).filter(|&b| b != 0.0),
        },
        4 => Merge::Adacomm {
            k0: r.u32()?,
            k_min: r.u32()?,
            interval_s: r.f32()?,
        },
        5 => Merge::Fedbuff { m: r.u32()? },
        6 => {
            use crate::strategy::Topology as T;
            let kind = r.u8()?;
            let degree = r.u32()?;
            let topology = match (kind, degree) {
                (0, 0) => T::Complete,
                (1, 0) => T::Ring,
                (2, d) => T::Regular(d),
                _ => return Err(invalid("swarm topology")),
            };
            Merge::Swarm { topology }
        }
        _ => return Err(invalid("strategy")),
    })
}

fn read_hyper(r: &mut Reader) -> Result<Hyper, ProtocolError> {
    let alpha = r.f32()?;
    let staleness = match r.u8()? {
        0 => Staleness::Constant,
        1 => Staleness::Inverse,
        2 => Staleness::Polynomial { a: r.f32()? },
        3 => Staleness::Hinge {
            a: r.f32()?,
            b: r.u32()?,
        },
        _ => return Err(invalid("staleness function")),
    };
    let h = Hyper {
        alpha,
        staleness,
        tau_max: r.u32()?,
        local_steps: r.u32()?,
        lr: r.f32()?,
        batch: r.u32()?,
        momentum: r.f32()?,
        codec_up: Codec::read_descriptor(r)?,
        codec_down: Codec::read_descriptor(r)?,
        error_feedback: match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(invalid("error_feedback flag")),
        },
        merge: read_merge(r)?,
    };
    h.validate()
        .map_err(|what| ProtocolError::InvalidValue { what })?;
    Ok(h)
}

fn read_opt(r: &mut Reader) -> Result<Option<u64>, ProtocolError> {
    match r.u8()? {
        0 => Ok(None),
        1 => Ok(Some(r.u64()?)),
        _ => Err(invalid("option flag")),
    }
}

/// Reads a `u32` count of items of `size` bytes, checks it against `max` and against the
/// bytes that remain.
fn read_len(
    r: &mut Reader,
    max: usize,
    what: &'static str,
    size: usize,
) -> Result<usize, ProtocolError> {
    let len = r.u32()?;
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > max {
        return Err(ProtocolError::FieldTooLong { what, len, max });
    }
    r.ensure(len, size)?;
    Ok(len)
}

fn read_bytes(r: &mut Reader, max: usize, what: &'static str) -> Result<Vec<u8>, ProtocolError> {
    let len = read_len(r, max, what, 1)?;
    Ok(r.take(len)?.to_vec())
}

fn read_str(r: &mut Reader, max: usize, what: &'static str) -> Result<String, ProtocolError> {
    let len = read_len(r, max, what, 1)?;
    let at = r.pos();
    let bytes = r.take(len)?;
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(s.to_string()),
        Err(_) => Err(ProtocolError::BadUtf8 { at }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LENET5_28;
    use proptest::prelude::*;

    fn small() -> Limits {
        Limits {
            max_message: 4096,
            max_payload: 1024,
            max_string: 64,
            max_shard: 64,
        }
    }

    fn codec() -> impl Strategy<Value = Codec> {
        let bits = prop_oneof![Just(2u8), Just(4), Just(8)];
        prop_oneof![
            Just(Codec::Fp32),
            Just(Codec::Fp16),
            (bits.clone(), 1u32..).prop_map(|(bits, bucket)| Codec::Qsgd { bits, bucket }),
            any::<u32>().prop_map(|k| Codec::TopK { k }),
            (any::<u32>(), bits, 1u32..).prop_map(|(k, bits, bucket)| Codec::TopKQsgd {
                k,
                bits,
                bucket
            }),
        ]
    }

    fn staleness() -> impl Strategy<Value = Staleness> {
        prop_oneof![
            Just(Staleness::Constant),
            Just(Staleness::Inverse),
            (0.0f32..100.0).prop_map(|a| Staleness::Polynomial { a }),
            (0.0f32..100.0, any::<u32>()).prop_map(|(a, b)| Staleness::Hinge { a, b }),
        ]
    }

    fn merge() -> impl Strategy<Value = Merge> {
        prop_oneof![
            Just(Merge::Easgd),
            proptest::option::of(1u32..).prop_map(|m_of_n| Merge::Fedavg { m_of_n }),
            Just(Merge::AsyncSgd),
            proptest::option::of(0.001f32..100.0).prop_map(|b| Merge::Bounded { b }),
            (1u32..64, 1u32..64, 0.01f32..1000.0).prop_map(|(k0, k, interval_s)| {
                Merge::Adacomm {
                    k0,
                    k_min: k.min(k0),
                    interval_s,
                }
            }),
            (1u32..).prop_map(|m| Merge::Fedbuff { m }),
            prop_oneof![
                Just(crate::strategy::Topology::Complete),
                Just(crate::strategy::Topology::Ring),
                (1u32..=MAX_DEGREE).prop_map(crate::strategy::Topology::Regular),
            ]
            .prop_map(|topology| Merge::Swarm { topology }),
        ]
    }

    prop_compose! {
        fn hyper()(
            alpha in 0.0f32..=1.0, staleness in staleness(), tau_max in 0..=MAX_TAU,
            local_steps in 1u32.., lr in 0.0f32..10.0, batch in 1u32.., momentum in 0.0f32..0.999,
            codec_up in codec(), codec_down in codec(), error_feedback in any::<bool>(),
            merge in merge()
        ) -> Hyper {
            Hyper { alpha, staleness, tau_max, local_steps, lr, batch, momentum,
                    codec_up, codec_down, error_feedback, merge }
        }
    }

    fn text(max: usize) -> impl Strategy<Value = String> {
        // Any Unicode, cut to at most `max` bytes on a character boundary.
        ".{0,24}".prop_map(move |s: String| {
            let mut end = s.len().min(max);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s[..end].to_string()
        })
    }

    fn payload() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(any::<u8>(), 0..200)
    }

    fn message() -> impl Strategy<Value = Message> {
        let join = (
            text(MAX_ROOM),
            0u8..5,
            any::<bool>(),
            any::<u32>(),
            any::<[u8; 32]>(),
            any::<Option<(u64, [u8; 16])>>(),
        )
            .prop_map(
                |(room, kind, gpu, capabilities, layout_hash, resume_worker)| {
                    Message::Join(Join {
                        room,
                        kind: [
                            ClientKind::Browser,
                            ClientKind::Bot,
                            ClientKind::Sim,
                            ClientKind::Teacher,
                            ClientKind::Observer,
                        ][kind as usize],
                        backend: if gpu { Backend::Gpu } else { Backend::Cpu },
                        capabilities,
                        layout_hash,
                        resume_worker: resume_worker.map(|(worker, t)| Resume {
                            worker,
                            token: ResumeToken(t),
                        }),
                    })
                },
            );
        let shard = prop_oneof![
            prop::collection::vec(any::<u32>(), 0..64).prop_map(Shard::Indices),
            (
                text(MAX_NAME),
                any::<u64>(),
                1u32..,
                any::<prop::sample::Index>()
            )
                .prop_map(|(scheme, seed, workers, i)| Shard::Partition {
                    scheme,
                    seed,
                    workers,
                    index: i.index(workers as usize) as u32,
                }),
        ];
        let welcome = (
            (any::<u64>(), any::<[u8; 16]>()),
            (text(MAX_NAME), any::<[u8; 32]>(), any::<u32>()),
            hyper(),
            shard,
            any::<u64>(),
            payload(),
        )
            .prop_map(
                |((worker_id, t), (name, layout_hash, param_count), hyper, shard, v, center)| {
                    Message::Welcome(Welcome {
                        worker_id,
                        resume_token: ResumeToken(t),
                        model: ModelInfo {
                            name,
                            layout_hash,
                            param_count,
                        },
                        hyper,
                        shard,
                        center_version: v,
                        center,
                    })
                },
            );
        let push = (
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            -1e6f32..1e6,
            payload(),
        )
            .prop_map(|(base_version, local_steps, samples, loss, payload)| {
                Message::Push(Push {
                    base_version,
                    local_steps,
                    samples,
                    loss,
                    payload,
                })
            });
        let center = (1u64.., any::<Option<prop::sample::Index>>(), payload()).prop_map(
            |(version, base, payload)| {
                Message::Center(Center {
                    version,
                    base: base.map(|i| i.index(version as usize) as u64),
                    payload,
                })
            },
        );
        let outcome = prop_oneof![
            (any::<u32>(), 0.0f32..=1.0, any::<u64>()).prop_map(|(tau, alpha_eff, version)| {
                Outcome::Accepted {
                    tau,
                    alpha_eff,
                    version,
                }
            }),
            (any::<u16>(), text(64)).prop_map(|(code, message)| Outcome::Refused { code, message }),
        ];
        let ack = (any::<u64>(), outcome).prop_map(|(base_version, outcome)| {
            Message::Ack(Ack {
                base_version,
                outcome,
            })
        });
        let control = prop_oneof![
            any::<Option<u64>>().prop_map(|worker| Control::Pause { worker }),
            any::<Option<u64>>().prop_map(|worker| Control::Resume { worker }),
            (any::<Option<u64>>(), any::<u32>())
                .prop_map(|(worker, ms)| Control::Delay { worker, ms }),
            hyper().prop_map(Control::Settings),
        ]
        .prop_map(Message::Control);
        let error = (any::<u16>(), text(64))
            .prop_map(|(code, message)| Message::Error(ErrorMessage { code, message }));
        let device = (
            any::<bool>(),
            0u8..4,
            (0.0f32..1e6, 0.0f32..1e6),
            any::<bool>(),
            (text(64), text(200)),
        )
            .prop_map(|(gpu, by, (g, c), software_gpu, (adapter, why))| {
                Message::Device(DeviceReport {
                    backend: if gpu { Backend::Gpu } else { Backend::Cpu },
                    chosen_by: [
                        ChosenBy::Measured,
                        ChosenBy::OnlyCpu,
                        ChosenBy::Page,
                        ChosenBy::Teacher,
                    ][by as usize],
                    gpu_samples_per_s: g,
                    cpu_samples_per_s: c,
                    software_gpu,
                    adapter,
                    why,
                })
            });
        let use_backend = prop_oneof![
            Just(BackendChoice::Auto),
            Just(BackendChoice::Gpu),
            Just(BackendChoice::Cpu)
        ]
        .prop_map(Message::UseBackend);
        let question = (
            any::<u32>(),
            0u8..4,
            text(200),
            prop::collection::vec(text(64), MIN_ANSWERS..=MAX_ANSWERS),
            (any::<u8>(), any::<u8>()),
            text(200),
        )
            .prop_map(|(lesson, phase, text, answers, (v, s), outcome)| {
                let pick = |x: u8| (x < 200).then_some(x % answers.len() as u8);
                Message::Question(Question {
                    lesson,
                    phase: [
                        QuestionPhase::Open,
                        QuestionPhase::Closed,
                        QuestionPhase::Reveal,
                        QuestionPhase::Over,
                    ][phase as usize],
                    text,
                    voted: pick(v),
                    supported: pick(s),
                    answers,
                    outcome,
                })
            });
        let vote = (any::<u32>(), any::<u8>())
            .prop_map(|(lesson, answer)| Message::Vote(Vote { lesson, answer }));
        prop_oneof![
            join,
            welcome,
            push,
            center,
            ack,
            control,
            error,
            device,
            use_backend,
            question,
            vote
        ]
    }

    proptest! {
        /// `with_strategy` is `strategy`'s inverse: settings given their own strategy stay
        /// the same (but ADACOMM's period starts again at `k0`), and any settings given
        /// another's strategy make exactly that strategy.
        #[test]
        fn with_strategy_inverts_strategy(h in hyper(), other in hyper()) {
            let local_steps = match h.merge {
                Merge::Adacomm { k0, .. } => k0,
                _ => h.local_steps,
            };
            prop_assert_eq!(h.with_strategy(&h.strategy()), Hyper { local_steps, ..h });
            prop_assert_eq!(other.with_strategy(&h.strategy()).strategy(), h.strategy());
        }
    }

    proptest! {
        #[test]
        fn every_message_round_trips(msg in message()) {
            let bytes = encode(&msg);
            prop_assert_eq!(&bytes[..4], b"EASL");
            prop_assert_eq!(bytes[4], crate::frame::VERSION);
            prop_assert_eq!(bytes[5], msg.type_byte());
            let back = decode(&bytes, &small());
            prop_assert_eq!(back.as_ref(), Ok(&msg));
            prop_assert_eq!(encode(&back.unwrap()), bytes);
        }

        #[test]
        fn every_proper_prefix_of_a_message_is_truncated(msg in message(), cut in any::<prop::sample::Index>()) {
            let bytes = encode(&msg);
            let cut = cut.index(bytes.len());
            prop_assert!(
                matches!(decode(&bytes[..cut], &small()), Err(ProtocolError::Truncated { .. })),
                "a prefix of {} bytes of {}", cut, bytes.len()
            );
        }

        #[test]
        fn decode_never_panics_on_arbitrary_bytes(tail in prop::collection::vec(any::<u8>(), 0..300), t in 0u8..11) {
            let _ = decode(&tail, &small());
            let mut bytes = b"EASL\x02".to_vec();
            bytes.push(t);
            bytes.extend_from_slice(&tail);
            let _ = decode(&bytes, &small());
            let _ = decode(&bytes, &Limits::default());
        }

        #[test]
        fn decode_never_panics_on_mutated_messages(
            msg in message(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            extra in prop::collection::vec(any::<u8>(), 0..3)
        ) {
            let mut bytes = encode(&msg);
            for (at, x) in flips {
                let i = at.index(bytes.len());
                bytes[i] ^= x;
            }
            bytes.extend_from_slice(&extra);
            let _ = decode(&bytes, &small());
        }

        #[test]
        fn trailing_bytes_are_refused(msg in message(), extra in prop::collection::vec(any::<u8>(), 1..8)) {
            let mut bytes = encode(&msg);
            bytes.extend_from_slice(&extra);
            prop_assert_eq!(
                decode(&bytes, &small()),
                Err(ProtocolError::TrailingBytes { extra: extra.len() })
            );
        }
    }

    fn push(payload: Vec<u8>) -> Message {
        Message::Push(Push {
            base_version: 7,
            local_steps: 10,
            samples: 320,
            loss: f32::NAN,
            payload,
        })
    }

    #[test]
    fn oversized_lengths_are_refused_before_allocating() {
        let mut bytes = encode(&push(vec![1, 2, 3]));
        // The payload length sits at offset 26 of a push.
        bytes[26..30].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode(&bytes, &small()),
            Err(ProtocolError::FieldTooLong {
                what: "payload",
                len: u32::MAX as usize,
                max: 1024
            })
        );
        bytes[26..30].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(
            decode(&bytes, &small()),
            Err(ProtocolError::Truncated {
                needed: 1000,
                at: 30
            })
        );
        let big = encode(&push(vec![0; 2000]));
        assert_eq!(
            decode(&big, &small()),
            Err(ProtocolError::FieldTooLong {
                what: "payload",
                len: 2000,
                max: 1024
            })
        );
        let tight = Limits {
            max_message: 100,
            ..small()
        };
        assert_eq!(
            decode(&big, &tight),
            Err(ProtocolError::TooLarge {
                len: 2030,
                max: 100
            })
        );
    }

    #[test]
    fn a_nan_loss_travels_bit_for_bit() {
        let bytes = encode(&push(vec![9]));
        match decode(&bytes, &small()) {
            Ok(Message::Push(p)) => assert!(p.loss.is_nan()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn values_out_of_range_are_invalid() {
        let join = Message::Join(Join {
            room: "ABCD".into(),
            kind: ClientKind::Bot,
            backend: Backend::Cpu,
            capabilities: caps::ALL,
            layout_hash: LENET5_28.layout_hash(),
            resume_worker: None,
        });
        let mut bytes = encode(&join);
        // Room: length at 6, four bytes at 10; kind at 14, backend at 15.
        bytes[14] = 9;
        assert_eq!(
            decode(&bytes, &small()),
            Err(ProtocolError::InvalidValue {
                what: "client kind"
            })
        );
        let mut bytes = encode(&join);
        bytes[10] = 0xff;
        assert_eq!(
            decode(&bytes, &small()),
            Err(ProtocolError::BadUtf8 { at: 10 })
        );
        let long = Message::Join(Join {
            room: "x".repeat(17),
            ..match join {
                Message::Join(j) => j,
                _ => unreachable!(),
            }
        });
        assert!(matches!(
            decode(&encode(&long), &small()),
            Err(ProtocolError::FieldTooLong {
                what: "room code",
                ..
            })
        ));
        let mut bad_type = encode(&push(vec![]));
        bad_type[5] = 42;
        assert_eq!(
            decode(&bad_type, &small()),
            Err(ProtocolError::UnknownType(42))
        );
        let center = Message::Center(Center {
            version: 3,
            base: Some(3),
            payload: vec![],
        });
        assert_eq!(
            decode(&encode(&center), &small()),
            Err(ProtocolError::InvalidValue {
                what: "center base version"
            })
        );
    }

    #[test]
    fn a_device_report_has_the_protocol_md_layout_and_refuses_bad_speeds() {
        let report = DeviceReport {
            backend: Backend::Cpu,
            chosen_by: ChosenBy::Measured,
            gpu_samples_per_s: 480.0,
            cpu_samples_per_s: 9_600.0,
            software_gpu: true,
            adapter: "google swiftshader".into(),
            why: "GPU 480 digits/s, CPU 9,600 digits/s: training on the CPU".into(),
        };
        let bytes = encode(&Message::Device(report.clone()));
        // Backend at 6, chosen-by at 7, the two speeds at 8 and 12, the flag at 16, then the
        // adapter's length at 17: 25 bytes plus the two texts.
        assert_eq!(bytes.len(), 25 + report.adapter.len() + report.why.len());
        assert_eq!(
            (bytes[5], bytes[6], bytes[7], bytes[16]),
            (ty::DEVICE, 0, 0, 1)
        );
        assert_eq!(bytes[8..12], 480.0f32.to_le_bytes());
        assert_eq!(bytes[12..16], 9_600.0f32.to_le_bytes());
        assert_eq!(bytes[17..21], (report.adapter.len() as u32).to_le_bytes());
        assert_eq!(
            decode(&bytes, &small()),
            Ok(Message::Device(report.clone()))
        );
        for bad in [f32::NAN, f32::INFINITY, -1.0] {
            let mut b = bytes.clone();
            b[8..12].copy_from_slice(&bad.to_le_bytes());
            assert_eq!(
                decode(&b, &small()),
                Err(ProtocolError::InvalidValue {
                    what: "samples per second"
                }),
                "{bad}"
            );
        }
        let mut b = bytes.clone();
        b[7] = 4;
        assert_eq!(
            decode(&b, &small()),
            Err(ProtocolError::InvalidValue { what: "chosen by" })
        );
        let choice = encode(&Message::UseBackend(BackendChoice::Cpu));
        assert_eq!(choice[5..], [ty::USE_BACKEND, 2]);
        let mut b = choice.clone();
        b[6] = 3;
        assert_eq!(
            decode(&b, &small()),
            Err(ProtocolError::InvalidValue {
                what: "backend choice"
            })
        );
        assert_eq!(BackendChoice::parse(" GPU "), Some(BackendChoice::Gpu));
        assert_eq!(BackendChoice::parse("tpu"), None);
    }

    #[test]
    fn a_question_and_a_vote_have_the_protocol_md_layout() {
        let q = Question {
            lesson: 3,
            phase: QuestionPhase::Reveal,
            text: "Which first?".into(),
            answers: vec!["sync".into(), "async".into(), "same".into()],
            voted: Some(1),
            supported: None,
            outcome: "async at 37 s".into(),
        };
        let bytes = encode(&Message::Question(q.clone()));
        // Lesson at 6, phase at 10, the question's length at 11.
        assert_eq!(bytes[5], ty::QUESTION);
        assert_eq!(bytes[6..10], 3u32.to_le_bytes());
        assert_eq!(bytes[10], 2);
        assert_eq!(bytes[11..15], 12u32.to_le_bytes());
        // After the question: the count, three answers, voted, supported, the outcome.
        let at = 15 + 12;
        assert_eq!(bytes[at], 3);
        let answers_end = at + 1 + (4 + 4) + (4 + 5) + (4 + 4);
        assert_eq!(bytes[answers_end..answers_end + 2], [1, 255]);
        assert_eq!(bytes.len(), answers_end + 2 + 4 + 13);
        assert_eq!(decode(&bytes, &small()), Ok(Message::Question(q.clone())));
        let mut b = bytes.clone();
        b[answers_end] = 3;
        assert_eq!(
            decode(&b, &small()),
            Err(ProtocolError::InvalidValue {
                what: "voted answer"
            })
        );
        let mut b = bytes.clone();
        b[at] = 5;
        assert_eq!(
            decode(&b, &small()),
            Err(ProtocolError::InvalidValue {
                what: "answer count"
            })
        );
        let mut b = bytes.clone();
        b[10] = 4;
        assert_eq!(
            decode(&b, &small()),
            Err(ProtocolError::InvalidValue {
                what: "question phase"
            })
        );
        let vote = encode(&Message::Vote(Vote {
            lesson: 3,
            answer: 2,
        }));
        assert_eq!(vote[5..], [ty::VOTE, 3, 0, 0, 0, 2]);
    }

    #[test]
    fn hyper_out_of_range_is_refused() {
        let good = Hyper {
            alpha: 0.5,
            staleness: Staleness::Inverse,
            tau_max: 16,
            local_steps: 10,
            lr: 0.05,
            batch: 32,
            momentum: 0.0,
            codec_up: Codec::Fp32,
            codec_down: Codec::Fp16,
            error_feedback: false,
            merge: Merge::Easgd,
        };
        assert!(good.validate().is_ok());
        for (bad, what) in [
            (Hyper { alpha: 1.5, ..good }, "alpha"),
            (
                Hyper {
                    momentum: 1.0,
                    ..good
                },
                "momentum",
            ),
            (Hyper { batch: 0, ..good }, "batch"),
            (
                Hyper {
                    tau_max: MAX_TAU + 1,
                    ..good
                },
                "tau_max",
            ),
            (
                Hyper {
                    lr: f32::NAN,
                    ..good
                },
                "lr",
            ),
            (
                Hyper {
                    codec_up: Codec::Qsgd { bits: 3, bucket: 8 },
                    ..good
                },
                "QSGD bit width",
            ),
            (
                Hyper {
                    merge: Merge::Fedbuff { m: 0 },
                    ..good
                },
                "strategy",
            ),
            (
                Hyper {
                    merge: Merge::Adacomm {
                        k0: 4,
                        k_min: 8,
                        interval_s: 1.0,
                    },
                    ..good
                },
                "strategy",
            ),
            (
                Hyper {
                    merge: Merge::Swarm {
                        topology: crate::strategy::Topology::Regular(0),
                    },
                    ..good
                },
                "strategy",
            ),
        ] {
            let bytes = encode(&Message::Control(Control::Settings(bad)));
            assert_eq!(
                decode(&bytes, &small()),
                Err(ProtocolError::InvalidValue { what }),
                "{what}"
            );
        }
        // An unknown strategy byte (the last byte of this Hyper) is refused too.
        let mut bytes = encode(&Message::Control(Control::Settings(good)));
        *bytes.last_mut().unwrap() = 7;
        assert_eq!(
            decode(&bytes, &small()),
            Err(ProtocolError::InvalidValue { what: "strategy" })
        );
    }

    proptest! {
        #[test]
        fn center_len_is_the_encoded_length(version in any::<u64>(), payload in prop::collection::vec(any::<u8>(), 0..64)) {
            let c = Message::Center(Center { version, base: None, payload: payload.clone() });
            prop_assert_eq!(encode(&c).len(), center_len(payload.len()));
        }

        /// `encode_center` writes the bytes `encode` makes of the same Center, its payload
        /// from `codec::encode` with the same random draws.
        #[test]
        fn encode_center_is_encode_of_the_center(
            version in any::<u64>(),
            codec in codec(),
            values in prop::collection::vec(-10.0f32..10.0, 0..300),
            seed in any::<u64>(),
        ) {
            use rand::SeedableRng;
            let mut a = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut b = a.clone();
            let payload = codec::encode(codec, &values, &mut a);
            let want = encode(&Message::Center(Center { version, base: None, payload }));
            prop_assert_eq!(encode_center(version, codec, &values, &mut b), want);
            // Both drew the same numbers, so they would go on alike.
            prop_assert_eq!(rand::Rng::next_u64(&mut a), rand::Rng::next_u64(&mut b));
        }
    }

    #[test]
    fn hyper_holds_every_strategy_number_once() {
        let h = Hyper {
            alpha: 0.25,
            staleness: Staleness::Inverse,
            tau_max: 4,
            local_steps: 12,
            lr: 0.05,
            batch: 32,
            momentum: 0.0,
            codec_up: Codec::Fp32,
            codec_down: Codec::Fp32,
            error_feedback: false,
            merge: Merge::Easgd,
        };
        use crate::strategy::Strategy as S;
        let with = |merge| Hyper { merge, ..h }.strategy();
        assert_eq!(
            with(Merge::Easgd),
            S::Easgd {
                alpha: 0.25,
                staleness: Staleness::Inverse,
                tau_max: 4
            }
        );
        assert_eq!(
            with(Merge::Fedavg { m_of_n: Some(2) }),
            S::Fedavg {
                k: 12,
                m_of_n: Some(2)
            }
        );
        assert_eq!(
            with(Merge::Bounded { b: None }),
            S::Bounded { s: 4, b: None }
        );
        assert_eq!(
            with(Merge::Fedbuff { m: 3 }),
            S::Fedbuff {
                m: 3,
                staleness: Staleness::Inverse,
                tau_max: 4
            }
        );
        assert_eq!(
            with(Merge::Swarm {
                topology: crate::strategy::Topology::Ring
            }),
            S::Swarm {
                topology: crate::strategy::Topology::Ring,
                quantize: None
            }
        );
    }

    #[test]
    fn errors_map_to_codes_and_close_codes() {
        assert_eq!(ProtocolError::BadMagic.code(), code::BAD_MAGIC);
        assert_eq!(ProtocolError::BadMagic.close_code(), Some(1002));
        assert_eq!(
            ProtocolError::UnsupportedVersion(2).code(),
            code::UNSUPPORTED_VERSION
        );
        let big = ProtocolError::TooLarge { len: 2, max: 1 };
        assert_eq!(
            (big.code(), big.close_code()),
            (code::OVERSIZED, Some(1009))
        );
        let bad = ProtocolError::UnknownType(9);
        assert_eq!((bad.code(), bad.close_code()), (code::MALFORMED, None));
    }

    #[test]
    fn default_limits_fit_the_largest_lenet_message_and_stay_far_below_tungstenite() {
        let l = Limits::default();
        assert_eq!(
            l.max_payload,
            crate::codec::max_encoded_len(LENET5_28.param_count)
        );
        assert_eq!((l.max_payload, l.max_message), (399_848, 666_088));
        assert!(l.max_message < 1 << 20);
        let welcome = Message::Welcome(Welcome {
            worker_id: 1,
            resume_token: ResumeToken([7; 16]),
            model: ModelInfo::of(&LENET5_28),
            hyper: Hyper {
                alpha: 0.5,
                staleness: Staleness::Constant,
                tau_max: 8,
                local_steps: 1,
                lr: 0.1,
                batch: 1,
                momentum: 0.0,
                codec_up: Codec::Fp32,
                codec_down: Codec::Fp32,
                error_feedback: false,
                merge: Merge::Easgd,
            },
            shard: Shard::Indices((0..l.max_shard as u32).collect()),
            center_version: 0,
            center: vec![0; l.max_payload],
        });
        let bytes = encode(&welcome);
        assert!(bytes.len() <= l.max_message);
        assert_eq!(decode(&bytes, &l), Ok(welcome));
        assert!(ModelInfo::of(&LENET5_28).matches(&LENET5_28));
    }

    #[test]
    fn a_resuming_join_carries_id_and_token_and_the_token_stays_out_of_debug() {
        let token = ResumeToken([0xab; 16]);
        let join = Message::Join(Join {
            room: "ABCDE".into(),
            kind: ClientKind::Browser,
            backend: Backend::Gpu,
            capabilities: 0,
            layout_hash: LENET5_28.layout_hash(),
            resume_worker: Some(Resume { worker: 7, token }),
        });
        let bytes = encode(&join);
        // PROTOCOL.md, Join: 49 + R bytes, and 24 more when resuming.
        assert_eq!(bytes.len(), 73 + 5);
        assert_eq!(bytes[53], 1);
        assert_eq!(&bytes[54..62], &7u64.to_le_bytes());
        assert_eq!(&bytes[62..78], &[0xab; 16]);
        assert_eq!(decode(&bytes, &small()), Ok(join.clone()));
        assert!(!format!("{join:?}").contains("171"), "{join:?}");
        assert_eq!(ResumeToken::from_hex(&token.to_hex()), Some(token));
        assert_eq!(token.to_hex(), "ab".repeat(16));
        for bad in ["", "ab", &"zz".repeat(16), &"ab".repeat(17)] {
            assert_eq!(ResumeToken::from_hex(bad), None, "{bad:?}");
        }
        assert!(token.matches(&token) && !token.matches(&ResumeToken([0xac; 16])));
    }

    /// PROTOCOL.md quotes this hash so that a client written from it can join.
    #[test]
    fn lenet_layout_hash_is_the_one_protocol_md_quotes() {
        let hex: String = LENET5_28
            .layout_hash()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "6e0cd5c7e3578939b17f24d213298472b4d3fd8cf4293037c456a0aeb5c3a724"
        );
        let doc = include_str!("../../PROTOCOL.md");
        assert!(doc.contains(&hex), "PROTOCOL.md quotes the layout hash");
    }

    /// The error-code table in PROTOCOL.md names every code with its number.
    #[test]
    fn protocol_md_lists_every_error_code() {
        let doc = include_str!("../../PROTOCOL.md");
        for (n, name) in [
            (code::BAD_MAGIC, "BAD_MAGIC"),
            (code::UNSUPPORTED_VERSION, "UNSUPPORTED_VERSION"),
            (code::UNKNOWN_ROOM, "UNKNOWN_ROOM"),
            (code::WRONG_MODEL, "WRONG_MODEL"),
            (code::WRONG_LENGTH, "WRONG_LENGTH"),
            (code::NON_FINITE, "NON_FINITE"),
            (code::NORM_TOO_LARGE, "NORM_TOO_LARGE"),
            (code::TOO_STALE, "TOO_STALE"),
            (code::OVERSIZED, "OVERSIZED"),
            (code::RESYNC, "RESYNC"),
            (code::MALFORMED, "MALFORMED"),
            (code::UNEXPECTED, "UNEXPECTED"),
            (code::FORBIDDEN, "FORBIDDEN"),
            (code::BAD_RESUME_TOKEN, "BAD_RESUME_TOKEN"),
        ] {
            assert!(doc.contains(&format!("| {n} | {name} |")), "{n} {name}");
        }
        for t in [
            ty::JOIN,
            ty::WELCOME,
            ty::PUSH,
            ty::CENTER,
            ty::ACK,
            ty::CONTROL,
            ty::ERROR,
        ] {
            assert!(doc.contains(&format!("(type {t})")));
        }
    }
}
