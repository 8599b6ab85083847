//! One WebSocket connection: bytes in, [`easel_protocol::message`] decoding, calls into the
//! [`Hub`], bytes out.
//!
//! The handler is generic over any `Stream + Sink` of warp WebSocket messages. It never
//! queues more than one outgoing message: every send is awaited (so a client that stops
//! reading stops being read), teachers and observers get centers from a `watch` holding
//! only the newest, the teacher's Controls are coalesced to the newest of each kind
//! ([`crate::hub::Pending`]), and answers to held pushes and closes come through a small
//! bounded queue.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use easel_protocol::message::{self, code};
use easel_protocol::{ClientKind, ErrorMessage, Message};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use warp::ws::Message as WsMessage;

use crate::Shutdown;
use crate::hub::{Hub, Order, Pending, RoomSlot};
use crate::room::{error, trains};

pub use easel_protocol::codes::close;

/// Timing of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WsConfig {
    /// How often the relay pings.
    pub ping_every: Duration,
    /// A peer not heard from for this long (no message, no pong) is dropped; a send that
    /// takes this long drops the peer too.
    pub dead_after: Duration,
    /// Teachers and observers get at most one center per this interval.
    pub observer_every: Duration,
}

impl Default for WsConfig {
    /// Pings every 10 s, dead after 30 s, dashboards updated at most twice a second.
    fn default() -> WsConfig {
        WsConfig {
            ping_every: Duration::from_secs(10),
            dead_after: Duration::from_secs(30),
            observer_every: Duration::from_millis(500),
        }
    }
}

/// What a connection knows after its Join was accepted.
struct Joined {
    worker: u64,
    connection: u64,
    kind: ClientKind,
    caps: u32,
    room: Arc<RoomSlot>,
}

/// The channels of a joined connection: the center watch (teachers and observers only),
/// the queue of answers and closes, and the coalesced Controls.
type Channels = (
    Option<watch::Receiver<Arc<[u8]>>>,
    mpsc::Receiver<Order>,
    Arc<Pending>,
);

/// One event of a connection's loop.
enum Event<E> {
    Shutdown,
    Incoming(Option<Result<WsMessage, E>>),
    Center,
    Order(Order),
    /// The worker resumed on a newer connection (its queue's sender is gone).
    Superseded,
    Controls,
    Tick,
}

/// Whether the connection goes on.
enum Flow {
    Continue,
    /// Continue; the replies answer a push (the relay notes when they were sent).
    Pushed,
    Close,
}

/// Serves one WebSocket until the peer leaves, misbehaves beyond repair, stops answering,
/// or the relay shuts down. `is_admin`: the connection's URL carried the admin token.
pub async fn serve_socket<S, E>(
    socket: S,
    hub: Hub,
    is_admin: bool,
    cfg: WsConfig,
    mut shutdown: Shutdown,
) where
    S: Stream<Item = Result<WsMessage, E>> + Sink<WsMessage, Error = E> + Unpin,
    E: std::error::Error + 'static,
{
    let (mut tx, mut rx) = socket.split();
    let mut joined: Option<Joined> = None;
    let mut centers: Option<watch::Receiver<Arc<[u8]>>> = None;
    let mut controls: Option<mpsc::Receiver<Order>> = None;
    let mut pending: Option<Arc<Pending>> = None;
    let mut next_center = Instant::now();
    let mut last_heard = Instant::now();
    let mut ping = tokio::time::interval_at(Instant::now() + cfg.ping_every, cfg.ping_every);
    loop {
        let event = tokio::select! {
            _ = shutdown.wait() => Event::Shutdown,
            m = rx.next() => Event::Incoming(m),
            _ = center_changed(&mut centers, next_center) => Event::Center,
            o = control(&mut controls) => o.map_or(Event::Superseded, Event::Order),
            _ = controls_changed(&pending) => Event::Controls,
            _ = ping.tick() => Event::Tick,
        };
        let out = match event {
            Event::Shutdown => {
                let _ = send(
                    &mut tx,
                    &cfg,
                    close_msg(close::GOING_AWAY, "relay shutting down"),
                )
                .await;
                break;
            }
            Event::Incoming(None) => break,
            Event::Incoming(Some(Err(e))) => {
                if too_big(&e) {
                    let why = "message above the size limit";
                    let _ = send(&mut tx, &cfg, close_msg(close::TOO_BIG, why)).await;
                }
                tracing::debug!("websocket read error: {e}");
                break;
            }
            Event::Incoming(Some(Ok(m))) => {
                last_heard = Instant::now();
                if let Some(j) = &joined {
                    j.room.touch(j.worker);
                }
                let mut replies = Vec::new();
                let mut channels = None;
                let flow = on_message(&m, &hub, is_admin, &mut joined, &mut channels, &mut replies);
                if let Some((c, q, p)) = channels {
                    centers = c;
                    controls = Some(q);
                    pending = Some(p);
                }
                (replies, flow)
            }
            Event::Center => {
                next_center = Instant::now() + cfg.observer_every;
                let bytes = centers
                    .as_mut()
                    .map(|c| c.borrow_and_update().clone())
                    .map(Bytes::from_owner);
                (
                    bytes.map(WsMessage::binary).into_iter().collect(),
                    Flow::Continue,
                )
            }
            Event::Controls => (
                pending
                    .as_ref()
                    .map(|p| {
                        let controls = p.take().into_iter().map(Message::Control);
                        controls
                            .chain(p.take_backend().map(Message::UseBackend))
                            .chain(p.take_question().map(Message::Question))
                    })
                    .into_iter()
                    .flatten()
                    .map(|m| WsMessage::binary(message::encode(&m)))
                    .collect(),
                Flow::Continue,
            ),
            Event::Superseded => (
                vec![WsMessage::close_with(
                    close::SUPERSEDED,
                    "this worker resumed on another connection",
                )],
                Flow::Close,
            ),
            Event::Order(Order::Answer { ack, center }) => (
                vec![
                    WsMessage::binary(ack),
                    WsMessage::binary(Bytes::from_owner(center)),
                ],
                Flow::Pushed,
            ),
            Event::Order(Order::Close { code, reason }) => {
                (vec![WsMessage::close_with(code, reason)], Flow::Close)
            }
            Event::Tick => {
                if last_heard.elapsed() >= cfg.dead_after {
                    let why = "no answer to pings";
                    let _ = send(&mut tx, &cfg, close_msg(close::GOING_AWAY, why)).await;
                    break;
                }
                (vec![WsMessage::ping(Bytes::new())], Flow::Continue)
            }
        };
        let (replies, flow) = out;
        let mut ok = true;
        for m in replies {
            if send(&mut tx, &cfg, m).await.is_err() {
                ok = false;
                break;
            }
        }
        if !ok || matches!(flow, Flow::Close) {
            break;
        }
        if let (Flow::Pushed, Some(j)) = (flow, &joined) {
            j.room.center_sent(j.worker);
        }
    }
    if let Some(j) = joined {
        j.room.leave(j.worker, j.connection);
    }
    crate::memory::connection_ended();
}

/// Decides the answer to one incoming WebSocket message; fills `replies`.
fn on_message(
    m: &WsMessage,
    hub: &Hub,
    is_admin: bool,
    joined: &mut Option<Joined>,
    channels: &mut Option<Channels>,
    replies: &mut Vec<WsMessage>,
) -> Flow {
    if m.is_ping() || m.is_pong() {
        return Flow::Continue;
    }
    if m.is_close() {
        return Flow::Close;
    }
    if !m.is_binary() {
        replies.push(error_msg(&error(
            code::MALFORMED,
            "text messages are not part of the protocol; send binary",
        )));
        return Flow::Continue;
    }
    let bytes = m.as_bytes();
    let msg = match message::decode(bytes, hub.limits()) {
        Ok(msg) => msg,
        Err(e) => {
            replies.push(error_msg(&error(e.code(), e.to_string())));
            return match e.close_code() {
                Some(c) => {
                    replies.push(close_msg(c, "not Easel protocol version 2"));
                    Flow::Close
                }
                None => Flow::Continue,
            };
        }
    };
    match (msg, joined.as_ref()) {
        (Message::Join(j), None) => match hub.join(&j, is_admin) {
            Ok(s) => {
                replies.push(WsMessage::binary(s.welcome));
                replies.extend(s.restore.into_iter().map(WsMessage::binary));
                // Workers get centers after their Acks only; dashboards from the watch.
                let centers = (!trains(s.kind)).then_some(s.centers);
                *channels = Some((centers, s.controls, s.pending));
                *joined = Some(Joined {
                    worker: s.worker_id,
                    connection: s.connection,
                    kind: s.kind,
                    caps: s.capabilities,
                    room: s.room,
                });
            }
            Err(e) => replies.push(error_msg(&e)),
        },
        (Message::Join(_), Some(_)) => {
            replies.push(error_msg(&error(code::UNEXPECTED, "already joined")));
        }
        (Message::Push(p), Some(j)) if trains(j.kind) => {
            // Held at a barrier: the answer comes later as an Order::Answer.
            let Some((ack, center)) = j.room.push(j.worker, &p, bytes.len(), j.caps) else {
                return Flow::Continue;
            };
            replies.push(WsMessage::binary(ack));
            replies.push(WsMessage::binary(Bytes::from_owner(center)));
            return Flow::Pushed;
        }
        (Message::Push(_), _) => {
            replies.push(error_msg(&error(
                code::UNEXPECTED,
                "push from a connection that is not a joined worker",
            )));
        }
        (Message::Control(c), Some(j)) if j.kind == ClientKind::Teacher => {
            if let Err(e) = j.room.control(&c) {
                replies.push(error_msg(&e));
            }
        }
        (Message::Control(_), _) => {
            replies.push(error_msg(&error(
                code::FORBIDDEN,
                "only the room's teacher may send Control",
            )));
        }
        (Message::Device(d), Some(j)) if j.kind == ClientKind::Browser => {
            j.room.device_report(j.worker, d);
        }
        (Message::Device(_), _) => {
            replies.push(error_msg(&error(
                code::UNEXPECTED,
                "only a joined browser tab reports its backend",
            )));
        }
        (Message::Vote(v), Some(j)) if j.kind == ClientKind::Browser => {
            match j.room.vote(j.worker, v) {
                Ok(q) => replies.push(WsMessage::binary(message::encode(&Message::Question(q)))),
                Err(e) => replies.push(error_msg(&e)),
            }
        }
        (Message::Vote(_), _) => {
            replies.push(error_msg(&error(
                code::UNEXPECTED,
                "only a joined browser tab votes",
            )));
        }
        (Message::Error(e), _) => {
            tracing::debug!(code = e.code, "client error: {}", e.message);
        }
        (
            Message::Welcome(_)
            | Message::Center(_)
            | Message::Ack(_)
            | Message::UseBackend(_)
            | Message::Question(_),
            _,
        ) => {
            replies.push(error_msg(&error(
                code::UNEXPECTED,
                "the relay does not take this message",
            )));
        }
    }
    Flow::Continue
}

/// Resolves when a new center is there for this connection, not before `not_before`;
/// never for connections with no watch.
async fn center_changed(centers: &mut Option<watch::Receiver<Arc<[u8]>>>, not_before: Instant) {
    match centers {
        Some(rx) => {
            tokio::time::sleep_until(not_before).await;
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// The next queued order (`None`: the queue's sender is gone, the worker resumed on another
/// connection); never resolves for connections with no queue.
async fn control(controls: &mut Option<mpsc::Receiver<Order>>) -> Option<Order> {
    match controls {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Resolves when Controls may be pending; never for connections that have none.
async fn controls_changed(pending: &Option<Arc<Pending>>) {
    match pending {
        Some(p) => p.changed().await,
        None => std::future::pending().await,
    }
}

/// Sends one message, giving up after `dead_after` (a peer that does not read).
async fn send<S, E>(tx: &mut S, cfg: &WsConfig, m: WsMessage) -> Result<(), ()>
where
    S: Sink<WsMessage, Error = E> + Unpin,
{
    match tokio::time::timeout(cfg.dead_after, tx.send(m)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

fn error_msg(e: &ErrorMessage) -> WsMessage {
    WsMessage::binary(message::encode(&Message::Error(e.clone())))
}

fn close_msg(code: u16, why: &'static str) -> WsMessage {
    WsMessage::close_with(code, why)
}

/// Whether a read error is tungstenite's "message or frame above the cap" (itself, or the
/// source of warp's error).
fn too_big(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut src = Some(e);
    while let Some(s) = src {
        if let Some(t) = s.downcast_ref::<tungstenite::Error>() {
            return matches!(t, tungstenite::Error::Capacity(_));
        }
        src = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::RoomSettings;
    use easel_protocol::message::Join;
    use easel_protocol::{Backend, LENET5_28, Limits};
    use proptest::prelude::*;

    /// A hub with one room and a connection state that joined it as a bot.
    fn joined_bot() -> (Hub, Option<Joined>) {
        let hub = crate::hub::test_hub("t", RoomSettings::default());
        let room = hub.create_room();
        let (mut joined, mut channels, mut replies) = (None, None, Vec::new());
        on_message(
            &bot_join(room),
            &hub,
            false,
            &mut joined,
            &mut channels,
            &mut replies,
        );
        assert!(joined.is_some());
        (hub, joined)
    }

    /// A bot's Join of `room`, as its first WebSocket message.
    fn bot_join(room: String) -> WsMessage {
        WsMessage::binary(message::encode(&Message::Join(Join {
            room,
            kind: ClientKind::Bot,
            backend: Backend::Cpu,
            capabilities: 0,
            layout_hash: LENET5_28.layout_hash(),
            resume_worker: None,
        })))
    }

    /// An in-memory WebSocket for [`serve_socket`]: what the test sends on `to_relay` arrives
    /// as the peer's messages; what the relay sends lands in `from_relay`, which a test may
    /// leave unread, like a peer that stopped reading. No sockets, so tokio's paused clock
    /// runs the connection's timers exactly.
    struct MemSocket {
        incoming: mpsc::UnboundedReceiver<WsMessage>,
        outgoing: mpsc::UnboundedSender<WsMessage>,
    }

    impl Stream for MemSocket {
        type Item = Result<WsMessage, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            self.incoming.poll_recv(cx).map(|m| m.map(Ok))
        }
    }

    impl Sink<WsMessage> for MemSocket {
        type Error = std::io::Error;
        fn poll_ready(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), std::io::Error>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn start_send(self: std::pin::Pin<&mut Self>, m: WsMessage) -> Result<(), std::io::Error> {
            self.outgoing
                .send(m)
                .map_err(|_| std::io::ErrorKind::BrokenPipe.into())
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), std::io::Error>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_close(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), std::io::Error>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// A relay connection over a [`MemSocket`] with the default timing, joined as a bot:
    /// the room, the peer's two ends and the worker's id.
    async fn connected_bot() -> (
        Arc<RoomSlot>,
        mpsc::UnboundedSender<WsMessage>,
        mpsc::UnboundedReceiver<WsMessage>,
        u64,
    ) {
        let hub = crate::hub::test_hub("t", RoomSettings::default());
        let code = hub.create_room();
        let slot = hub.room(&code).expect("just created");
        let (to_relay, incoming) = mpsc::unbounded_channel();
        let (outgoing, mut from_relay) = mpsc::unbounded_channel();
        let (trigger, shutdown) = Shutdown::new();
        std::mem::forget(trigger); // never shut down
        let socket = MemSocket { incoming, outgoing };
        tokio::spawn(serve_socket(
            socket,
            hub,
            false,
            WsConfig::default(),
            shutdown,
        ));
        to_relay.send(bot_join(code)).expect("the relay reads");
        let welcome = from_relay.recv().await.expect("a Welcome");
        assert!(matches!(
            message::decode(welcome.as_bytes(), &Limits::default()),
            Ok(Message::Welcome(_))
        ));
        let worker = slot.with_room(|r| *r.workers().keys().next().expect("one worker"));
        (slot, to_relay, from_relay, worker)
    }

    /// Pings every 10 s and a peer unheard for 30 s dropped: on tokio's paused clock, the
    /// silent peer is still connected at 29.9 s, got pings at 10 and 20 s, and is closed
    /// with 1001 at the 30 s ping.
    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_pinged_then_dropped_when_dead_after_passes() {
        let (slot, _to_relay, mut from_relay, worker) = connected_bot().await;
        let connected = || slot.with_room(|r| r.workers()[&worker].connected);
        let cfg = WsConfig::default();
        tokio::time::sleep(cfg.dead_after - Duration::from_millis(100)).await;
        assert!(connected());
        let mut sent = Vec::new();
        while let Ok(m) = from_relay.try_recv() {
            sent.push(m);
        }
        assert_eq!(sent.len(), 2, "pings at 10 s and 20 s");
        assert!(sent.iter().all(|m| m.is_ping()));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!connected());
        let close = from_relay.recv().await.expect("a close");
        assert_eq!(close.close_frame().map(|(c, _)| c), Some(close::GOING_AWAY));
    }

    /// Any message, a pong included, counts as heard: a peer that answers every 25 s is
    /// still connected after ten virtual minutes.
    #[tokio::test(start_paused = true)]
    async fn a_peer_heard_within_dead_after_stays_connected() {
        let (slot, to_relay, _from_relay, worker) = connected_bot().await;
        for _ in 0..24 {
            tokio::time::sleep(Duration::from_secs(25)).await;
            to_relay
                .send(WsMessage::pong(Vec::new()))
                .expect("the relay reads");
        }
        assert!(slot.with_room(|r| r.workers()[&worker].connected));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Any bytes, alone or behind a valid Push header, get decodable answers: an Error,
        /// or an Ack and a Center; never a panic.
        #[test]
        fn any_bytes_get_a_decodable_answer(
            bytes in prop::collection::vec(any::<u8>(), 0..400),
            behind_push_header in any::<bool>(),
        ) {
            let (hub, mut joined) = joined_bot();
            let msg = if behind_push_header {
                let mut m = b"EASL\x02\x03".to_vec();
                m.extend_from_slice(&bytes);
                m
            } else {
                bytes
            };
            let (mut channels, mut replies) = (None, Vec::new());
            let _ = on_message(&WsMessage::binary(msg), &hub, false, &mut joined, &mut channels, &mut replies);
            for r in &replies {
                if r.is_binary() {
                    let decoded = message::decode(r.as_bytes(), hub.limits());
                    prop_assert!(matches!(
                        decoded,
                        Ok(Message::Error(_) | Message::Ack(_) | Message::Center(_))
                    ), "{:?}", decoded.map(|m| m.type_byte()));
                } else {
                    prop_assert!(r.is_close());
                }
            }
        }
    }
}
