//! The frame layer: the six-byte header every Easel message starts with.
//!
//! Decoding goes bytes -> [`Frame`] -> [`crate::Message`]: [`Frame::parse`] checks the size
//! limit, the magic and the version and hands over the type byte; the message layer reads
//! the body. Encoding writes [`Frame::header`] and then the body.

use crate::message::{Limits, ProtocolError};

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
