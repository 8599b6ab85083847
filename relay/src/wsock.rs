//! The workers' WebSocket (`GET /ws`), upgraded here rather than by `warp::ws()` so that
//! its buffers can be sized for a thousand connections:
//!
//! - tungstenite's read buffer is [`READ_BUFFER`] (its default, 128 KiB, is zero-filled
//!   before every read: 128 MiB resident at 1,000 connections and a 128 KiB `memset` per
//!   read; a larger message still grows it to its own size);
//! - nothing is held back in the write buffer (`write_buffer_size` 0: every frame goes to
//!   the socket as it is written), and a binary message above [`FRAGMENT`] bytes (a
//!   Center or a Welcome, 178 kB in fp32) is sent as a fragmented message of frames of at
//!   most [`FRAGMENT`] bytes (RFC 6455 section 5.4; browsers and every WebSocket library
//!   reassemble them), so the write buffer, which never shrinks, stays about one frame
//!   long instead of one whole center per connection.
//!
//! [`Socket`] is a `Stream + Sink` of warp's WebSocket messages, like `warp::ws::WebSocket`,
//! so [`crate::ws::serve_socket`] serves either.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::{Sink, Stream};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tungstenite::Message as TMessage;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame};
use tungstenite::protocol::{Role, WebSocketConfig};
use warp::Filter;
use warp::http::{StatusCode, header};
use warp::ws::Message as WsMessage;

/// Bytes each read asks the socket for (and zero-fills first): a top-k push (2.3 kB) is
/// one read, an fp32 one (178 kB) eleven.
pub const READ_BUFFER: usize = 16 * 1024;

/// Binary messages longer than this go out as fragments of at most this many bytes.
pub const FRAGMENT: usize = 32 * 1024;

/// The upgrade request of a WebSocket: what `warp::ws()` checks (GET, `Connection:
/// upgrade`, `Upgrade: websocket`, version 13, a key), here with the connection's
/// pending upgrade. Rejects like `warp::ws()` (so the next route is tried) otherwise.
pub fn upgrade() -> impl Filter<Extract = (Upgrade,), Error = warp::Rejection> + Clone {
    warp::get()
        .and(warp::header::<String>("connection"))
        .and(warp::header::<String>("upgrade"))
        .and(warp::header::<String>("sec-websocket-version"))
        .and(warp::header::<String>("sec-websocket-key"))
        .and(warp::ext::optional::<OnUpgrade>())
        .and_then(
            |conn: String, up: String, version: String, key: String, on: Option<OnUpgrade>| {
                let ok = conn
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
                    && up.trim().eq_ignore_ascii_case("websocket")
                    && version.trim() == "13";
                std::future::ready(match (ok, on) {
                    (true, Some(on)) => Ok(Upgrade { key, on }),
                    _ => Err(warp::reject::not_found()),
                })
            },
        )
}

/// A WebSocket upgrade request, to be answered with [`Upgrade::on_upgrade`].
pub struct Upgrade {
    key: String,
    on: OnUpgrade,
}

impl std::fmt::Debug for Upgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgrade").finish_non_exhaustive()
    }
}

impl Upgrade {
    /// Answers 101 Switching Protocols and, once the connection is upgraded, runs `serve`
    /// on the socket, whose messages are capped at `max_message` bytes.
    pub fn on_upgrade<F, U>(self, max_message: usize, serve: F) -> warp::reply::Response
    where
        F: FnOnce(Socket) -> U + Send + 'static,
        U: Future<Output = ()> + Send + 'static,
    {
        let accept = tungstenite::handshake::derive_accept_key(self.key.trim().as_bytes());
        let on = self.on;
        tokio::spawn(async move {
            match on.await {
                Ok(upgraded) => serve(Socket::new(upgraded, max_message).await).await,
                Err(e) => tracing::debug!("websocket upgrade failed: {e}"),
            }
        });
        let mut res = warp::reply::Response::default();
        *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = res.headers_mut();
        h.insert(
            header::CONNECTION,
            header::HeaderValue::from_static("upgrade"),
        );
        h.insert(
            header::UPGRADE,
            header::HeaderValue::from_static("websocket"),
        );
        if let Ok(v) = header::HeaderValue::from_str(&accept) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
        res
    }
}

/// The config of the workers' sockets: messages and frames capped at `max_message`.
pub fn config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// A server-side WebSocket whose binary messages above [`FRAGMENT`] bytes are sent
/// fragmented.
pub struct Socket {
    inner: WebSocketStream<TokioIo<Upgraded>>,
    /// Frames of a message being sent, not yet handed to `inner`.
    queue: VecDeque<TMessage>,
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("queued", &self.queue.len())
            .finish_non_exhaustive()
    }
}

impl Socket {
    async fn new(upgraded: Upgraded, max_message: usize) -> Socket {
        let io = TokioIo::new(upgraded);
        let inner =
            WebSocketStream::from_raw_socket(io, Role::Server, Some(config(max_message))).await;
        Socket {
            inner,
            queue: VecDeque::new(),
        }
    }

    /// Hands the queued frames to the socket, as far as it takes them.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), tungstenite::Error>> {
        while !self.queue.is_empty() {
            ready!(Pin::new(&mut self.inner).poll_ready(cx))?;
            let m = self.queue.pop_front().expect("not empty");
            Pin::new(&mut self.inner).start_send(m)?;
        }
        Poll::Ready(Ok(()))
    }
}

/// `data` as frames of at most `size` bytes (slices of the same buffer, no copy): a
/// binary frame, then continuations, the last one final.
pub fn fragments(data: Bytes, size: usize) -> Vec<Frame> {
    let size = size.max(1);
    let n = data.len().div_ceil(size).max(1);
    (0..n)
        .map(|i| {
            let chunk = data.slice(i * size..((i + 1) * size).min(data.len()));
            let op = if i == 0 { Data::Binary } else { Data::Continue };
            Frame::message(chunk, OpCode::Data(op), i + 1 == n)
        })
        .collect()
}

/// warp's message as tungstenite's.
fn to_tungstenite(m: WsMessage) -> TMessage {
    if m.is_close() {
        let frame = m.close_frame().map(|(code, reason)| CloseFrame {
            code: code.into(),
            reason: reason.to_string().into(),
        });
        TMessage::Close(frame)
    } else if m.is_ping() {
        TMessage::Ping(m.into_bytes())
    } else if m.is_pong() {
        TMessage::Pong(m.into_bytes())
    } else if m.is_text() {
        TMessage::Text(m.to_str().unwrap_or_default().into())
    } else {
        TMessage::Binary(m.into_bytes())
    }
}

/// tungstenite's message as warp's; `None` for a raw frame (never read).
fn to_warp(m: TMessage) -> Option<WsMessage> {
    Some(match m {
        TMessage::Binary(b) => WsMessage::binary(b),
        TMessage::Text(t) => WsMessage::text(t.as_str()),
        TMessage::Ping(b) => WsMessage::ping(b),
        TMessage::Pong(b) => WsMessage::pong(b),
        TMessage::Close(Some(f)) => WsMessage::close_with(u16::from(f.code), f.reason.to_string()),
        TMessage::Close(None) => WsMessage::close(),
        TMessage::Frame(_) => return None,
    })
}

impl Stream for Socket {
    type Item = Result<WsMessage, tungstenite::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match ready!(Pin::new(&mut self.inner).poll_next(cx)) {
                None => return Poll::Ready(None),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(m)) => {
                    if let Some(m) = to_warp(m) {
                        return Poll::Ready(Some(Ok(m)));
                    }
                }
            }
        }
    }
}

impl Sink<WsMessage> for Socket {
    type Error = tungstenite::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: WsMessage) -> Result<(), Self::Error> {
        if item.is_binary() && item.as_bytes().len() > FRAGMENT {
            let frames = fragments(item.into_bytes(), FRAGMENT);
            self.queue.extend(frames.into_iter().map(TMessage::Frame));
            Ok(())
        } else {
            Pin::new(&mut self.inner).start_send(to_tungstenite(item))
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_cover_the_message_in_order_and_only_the_last_is_final() {
        for len in [0usize, 1, 5, 31, 32, 33, 100] {
            let data = Bytes::from((0..len as u8).collect::<Vec<u8>>());
            let frames = fragments(data.clone(), 32);
            assert_eq!(frames.len(), len.div_ceil(32).max(1), "{len}");
            let mut joined = Vec::new();
            for (i, f) in frames.iter().enumerate() {
                let h = f.header();
                assert_eq!(h.is_final, i + 1 == frames.len());
                let want = if i == 0 { Data::Binary } else { Data::Continue };
                assert_eq!(h.opcode, OpCode::Data(want));
                assert!(f.payload().len() <= 32);
                joined.extend_from_slice(f.payload());
            }
            assert_eq!(joined, data.to_vec());
        }
    }
}
