//! The frame layer: the six-byte header every Easel message starts with.
//!
//! Decoding goes bytes -> [`Frame`] -> [`crate::Message`]: [`Frame::parse`] checks the size
//! limit, the magic and the version and hands over the type byte; the message layer reads
//! the body. Encoding writes [`Frame::header`] and then the body.

use crate::codec::{self, CodecError};
use crate::codes::{close, code};
use crate::wire::Short;

/// The first four bytes of every message.
pub const MAGIC: [u8; 4] = *b"EASL";
/// The protocol version this crate speaks.
pub const VERSION: u8 = 2;
/// Magic, version and type.
pub const HEADER_LEN: usize = 6;

/// A message whose header has been checked: its type byte and all its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The message type byte (offset 5).
    pub ty: u8,
    /// The whole message, header included, so that offsets in errors count from its start.
    pub bytes: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Checks, in this order: the size against `limits.max_message`
    /// ([`ProtocolError::TooLarge`]), the magic ([`ProtocolError::BadMagic`], also when fewer
    /// than four bytes came and they differ from the magic's start), the presence of the
    /// whole header ([`ProtocolError::Truncated`]) and the version
    /// ([`ProtocolError::UnsupportedVersion`]). The type byte is not judged here.
    pub fn parse(bytes: &'a [u8], limits: &Limits) -> Result<Frame<'a>, ProtocolError> {
        if bytes.len() > limits.max_message {
            return Err(ProtocolError::TooLarge {
                len: bytes.len(),
                max: limits.max_message,
            });
        }
        let head = &bytes[..bytes.len().min(MAGIC.len())];
        if head != &MAGIC[..head.len()] {
            return Err(ProtocolError::BadMagic);
        }
        if bytes.len() < HEADER_LEN {
            return Err(ProtocolError::Truncated {
                needed: HEADER_LEN - bytes.len(),
                at: bytes.len(),
            });
        }
        if bytes[4] != VERSION {
            return Err(ProtocolError::UnsupportedVersion(bytes[4]));
        }
        Ok(Frame {
            ty: bytes[5],
            bytes,
        })
    }

    /// A new message buffer holding the header for type `ty`.
    pub fn header(ty: u8, capacity: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + capacity);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(ty);
        out
    }
}

/// Caps on sizes, checked by [`crate::message::decode`] before anything is allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most bytes of a whole message (configure the WebSocket layer with the same).
    pub max_message: usize,
    /// The most bytes of one payload (a compressed vector).
    pub max_payload: usize,
    /// The most bytes of a free-text string (error and refusal messages).
    pub max_string: usize,
    /// The most indices in a [`crate::message::Shard::Indices`].
    pub max_shard: usize,
}

impl Limits {
    /// Limits for a model of `params` values: a payload up to the largest any valid codec
    /// makes ([`codec::max_encoded_len`]), strings up to 1,024 bytes, shards up to 65,536
    /// indices, and a message up to one payload, one shard and 4,096 bytes more.
    pub fn for_params(params: usize) -> Limits {
        let max_payload = codec::max_encoded_len(params);
        let max_shard = 65_536;
        Limits {
            max_message: max_payload + 4 * max_shard + 4096,
            max_payload,
            max_string: 1024,
            max_shard,
        }
    }
}

impl Default for Limits {
    /// [`Limits::for_params`] for lenet5-28: payloads up to 399,848 bytes, messages up to
    /// 666,088.
    fn default() -> Limits {
        Limits::for_params(crate::LENET5_28.param_count)
    }
}

/// Why bytes are not a message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The message is longer than [`Limits::max_message`].
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    /// The message does not start with `EASL`.
    #[error("bad magic (not an Easel message)")]
    BadMagic,
    /// A protocol version other than this crate's ([`VERSION`]).
    #[error(
        "unsupported protocol version {0}; this side speaks version {v} (reload the page or \
         update the client)",
        v = VERSION
    )]
    UnsupportedVersion(u8),
    /// A message type byte that names no message.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// The message ends inside a field: the field at offset `at` needs `needed` bytes.
    #[error("truncated: {needed} bytes needed at offset {at}")]
    Truncated { needed: usize, at: usize },
    /// A length field above its limit.
    #[error("{what} of {len} bytes exceeds the limit of {max}")]
    FieldTooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    /// A string that is not UTF-8; its bytes start at `at`.
    #[error("string at offset {at} is not UTF-8")]
    BadUtf8 { at: usize },
    /// Bytes after the end of the message's body.
    #[error("{extra} bytes after the end of the message")]
    TrailingBytes { extra: usize },
    /// A field whose value is out of its range.
    #[error("invalid {what}")]
    InvalidValue { what: &'static str },
}

impl ProtocolError {
    /// The [`code`] an [`crate::message::ErrorMessage`] answering this error carries.
    pub fn code(&self) -> u16 {
        match self {
            ProtocolError::TooLarge { .. } => code::OVERSIZED,
            ProtocolError::BadMagic => code::BAD_MAGIC,
            ProtocolError::UnsupportedVersion(_) => code::UNSUPPORTED_VERSION,
            _ => code::MALFORMED,
        }
    }

    /// The WebSocket close code the relay ends the connection with after this error, if it
    /// does: 1009 (message too big) for [`ProtocolError::TooLarge`], 1002 (protocol error)
    /// for a bad magic or version. Other errors are answered and the connection stays.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            ProtocolError::TooLarge { .. } => Some(close::TOO_BIG),
            ProtocolError::BadMagic | ProtocolError::UnsupportedVersion(_) => {
                Some(close::PROTOCOL_ERROR)
            }
            _ => None,
        }
    }
}

impl From<Short> for ProtocolError {
    fn from(s: Short) -> Self {
        ProtocolError::Truncated {
            needed: s.needed,
            at: s.at,
        }
    }
}

impl From<CodecError> for ProtocolError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::Truncated { needed, at } => ProtocolError::Truncated { needed, at },
            CodecError::UnknownCodec(_) => ProtocolError::InvalidValue { what: "codec id" },
            CodecError::UnsupportedBits(_) => ProtocolError::InvalidValue {
                what: "QSGD bit width",
            },
            CodecError::ZeroBucket => ProtocolError::InvalidValue {
                what: "QSGD bucket size",
            },
            _ => ProtocolError::InvalidValue { what: "codec" },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_checks_come_in_order() {
        let limits = Limits {
            max_message: 8,
            ..Limits::default()
        };
        assert_eq!(
            Frame::parse(b"EASL\x02\x03xyz", &limits),
            Err(ProtocolError::TooLarge { len: 9, max: 8 })
        );
        assert_eq!(Frame::parse(b"EAX", &limits), Err(ProtocolError::BadMagic));
        assert_eq!(
            Frame::parse(b"HTTP/1", &limits),
            Err(ProtocolError::BadMagic)
        );
        assert_eq!(
            Frame::parse(b"EA", &limits),
            Err(ProtocolError::Truncated { needed: 4, at: 2 })
        );
        assert_eq!(
            Frame::parse(b"", &limits),
            Err(ProtocolError::Truncated { needed: 6, at: 0 })
        );
        assert_eq!(
            Frame::parse(b"EASL\x01\x01", &limits),
            Err(ProtocolError::UnsupportedVersion(1))
        );
        assert_eq!(
            Frame::parse(b"EASL\x02\x63", &limits).map(|f| f.ty),
            Ok(0x63)
        );
    }
}
