//! The numbers Easel's two sides agree on besides the messages' layouts: the error codes
//! of an `Error` message and of a refused push ([`code`]), and the WebSocket close codes the
//! relay ends a connection with ([`close`]). The bottom of the crate: it uses nothing.

/// The error codes of `ErrorMessage` and of a refused push (`Outcome::Refused`).
pub mod code {
    /// The message does not start with `EASL`. The relay closes the connection.
    pub const BAD_MAGIC: u16 = 1;
    /// The protocol version is not [`crate::frame::VERSION`] (2). The relay closes the
    /// connection.
    pub const UNSUPPORTED_VERSION: u16 = 2;
    /// No room has the code given in `Join`.
    pub const UNKNOWN_ROOM: u16 = 3;
    /// The model layout hash in `Join` is not the room's.
    pub const WRONG_MODEL: u16 = 4;
    /// A payload holds the wrong number of values.
    pub const WRONG_LENGTH: u16 = 5;
    /// A pushed update holds a NaN or an infinity.
    pub const NON_FINITE: u16 = 6;
    /// A pushed update's norm is above the room's limit.
    pub const NORM_TOO_LARGE: u16 = 7;
    /// A push's staleness is above `tau_max`; the worker must resync.
    pub const TOO_STALE: u16 = 8;
    /// A message above the size limit. The relay closes the connection (WebSocket 1009).
    pub const OVERSIZED: u16 = 9;
    /// The push's base version is no longer (or not yet) known; the worker must resync.
    pub const RESYNC: u16 = 10;
    /// A message that does not decode: unknown type, truncated, bad UTF-8, a value out of
    /// range, trailing bytes, or a payload that does not decode.
    pub const MALFORMED: u16 = 11;
    /// A well-formed message that is not valid at this point of the session (a push before
    /// `Welcome`, a `Welcome` sent to the relay...).
    pub const UNEXPECTED: u16 = 12;
    /// A control message from a connection that is not the room's teacher; a `Join`
    /// resuming a worker the teacher removed.
    pub const FORBIDDEN: u16 = 13;
    /// A `Join` resumes a worker with a resume token that is not that worker's. Join again
    /// without resuming (as a new worker).
    pub const BAD_RESUME_TOKEN: u16 = 14;
    /// A `Vote` for a lesson that is not asking (over, or another lesson), or for an
    /// answer it does not offer. Nothing is closed; the vote is not counted.
    pub const BAD_VOTE: u16 = 15;
}

/// WebSocket close codes the relay uses: RFC 6455's, and Easel's own from 4000.
pub mod close {
    /// The relay is shutting down, or a peer stopped answering.
    pub const GOING_AWAY: u16 = 1001;
    /// Bad magic or unsupported version.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A message above the size cap.
    pub const TOO_BIG: u16 = 1009;
    /// The teacher removed this device; its resume is refused.
    pub const REMOVED: u16 = 4000;
    /// The room's partition changed: join again (resuming is fine) to get the new shard.
    pub const REJOIN: u16 = 4001;
    /// Another connection resumed this worker (with its token): this one is over.
    pub const SUPERSEDED: u16 = 4002;
}
