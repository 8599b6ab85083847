//! The one owner of Easel's shared formats and merging rules.
//!
//! - [`model_spec`]: the one model every part of Easel trains, averages and checkpoints as a
//!   single flat `f32` vector, and its layout hash.
//! - [`codec`]: how a vector is compressed into a payload and decoded back (fp32, fp16,
//!   QSGD, top-k, top-k + QSGD, error feedback).
//! - [`codes`]: the error and close codes, the bottom module.
//! - [`partition`]: how a room's digits are dealt out, as its settings name it.
//! - [`settings`]: every setting's name, grammar, check and form schema.
//! - [`frame`] and [`message`]: the binary WebSocket messages, bytes <-> frame <-> message.
//! - [`aggregate`]: asynchronous elastic averaging with staleness accounting, pure.
//! - [`strategy`]: the strategy family (EASGD, FedAvg, async SGD, bounded staleness,
//!   SwarmSGD, ADACOMM, FedBuff) and the elastic-consistency meter, pure.
//!
//! PROTOCOL.md at the repository root describes the wire format byte by byte.

pub mod aggregate;
pub mod codec;
pub mod codes;
pub mod frame;
pub mod message;
pub mod model_spec;
pub mod partition;
pub mod settings;
pub mod strategy;
mod wire;

pub use aggregate::{
    Applied, CenterRing, Decision, Policy, Reason, Staleness, alpha_eff, apply_push, distance,
    easgd_apply, easgd_pull, norm, validate_push,
};
pub use codec::{Codec, CodecError, ErrorFeedback, encoded_len};
pub use message::{
    Ack, Backend, BackendChoice, Center, ChosenBy, ClientKind, Control, DeviceReport, ErrorMessage,
    Hyper, Limits, Merge, Message, ModelInfo, Outcome, ProtocolError, Push, Question,
    QuestionPhase, Resume, ResumeToken, Shard, Vote, Welcome,
};
pub use model_spec::{LENET5_28, LayerKind, LayerSpec, ModelOps, ModelSpec, TensorSpec};
pub use partition::{Partition, PartitionError};
