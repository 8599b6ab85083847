//! The relay's shared state: the rooms, and for each room the channels its connections
//! listen on.
//!
//! Layers: [`crate::ws`] (sockets) calls [`Hub`] and [`RoomSlot`] (locking, channels), which
//! call [`Room`] (pure logic). Every lock here is a `std::sync::Mutex` held for a few
//! synchronous calls and never across an `.await`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use easel_protocol::message::{self, Join, code};
use easel_protocol::{Control, ErrorMessage, Limits, Message, Push};
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::room::{self, Room, RoomSettings};

/// Control messages a connection may have queued before more are dropped. Control is rare
/// (a teacher's clicks); a connection that does not drain eight is not listening anyway.
pub const CONTROL_QUEUE: usize = 8;
/// Center evaluations kept per room (one every few seconds: hours of class).
pub const EVAL_HISTORY: usize = 10_000;

/// One evaluation of a room's center on the test digits.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct EvalPoint {
    pub wall_ms: u64,
    pub version: u64,
    pub accuracy: f64,
    pub loss: f64,
}

/// A handle on the relay's rooms; cheap to clone.
#[derive(Clone, Debug)]
pub struct Hub {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// The teacher's secret: creating rooms, reading ledgers and sending Control need it.
    admin_token: String,
    /// Message size caps, the same as the WebSocket layer's.
    limits: Limits,
    /// Settings a new room starts with.
    defaults: RoomSettings,
    /// Rooms by code. The map's lock is only held to find or insert a room.
    rooms: Mutex<HashMap<String, Arc<RoomSlot>>>,
}

/// A room and the channels to its connections.
#[derive(Debug)]
pub struct RoomSlot {
    /// The room and its connections' control queues, behind one short-held lock.
    state: Mutex<RoomState>,
    /// The newest full fp32 `Center` message, for teachers and observers. A watch holds
    /// one value: a dashboard that stops reading never makes the relay keep more than the
    /// newest center for it.
    centers: watch::Sender<Arc<[u8]>>,
}

#[derive(Debug)]
struct RoomState {
    /// The room's settings, center versions, ledger and workers.
    room: Room,
    /// Bounded control queue of each connected worker, by worker id, with the id of the
    /// connection that owns it (a worker that resumes on a new connection replaces it).
    controls: HashMap<u64, (u64, mpsc::Sender<Control>)>,
    /// Connections ever admitted, to give each one an id.
    connections: u64,
    /// Accuracy and loss of the center over time, newest last, at most [`EVAL_HISTORY`].
    evals: VecDeque<EvalPoint>,
}

/// What a connection gets when its Join is accepted.
#[derive(Debug)]
pub struct Session {
    pub worker_id: u64,
    /// This connection's id in the room, for [`RoomSlot::leave`].
    pub connection: u64,
    pub kind: easel_protocol::ClientKind,
    /// Capability bits from the Join.
    pub capabilities: u32,
    /// The encoded Welcome message.
    pub welcome: Vec<u8>,
    /// The room's newest center (teachers and observers read it).
    pub centers: watch::Receiver<Arc<[u8]>>,
    /// Control messages for this worker from the teacher.
    pub controls: mpsc::Receiver<Control>,
    pub room: Arc<RoomSlot>,
}

impl Hub {
    /// A hub with no rooms.
    pub fn new(admin_token: String, limits: Limits, defaults: RoomSettings) -> Hub {
        Hub {
            shared: Arc::new(Shared {
                admin_token,
                limits,
                defaults,
                rooms: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    pub fn admin_token(&self) -> &str {
        &self.shared.admin_token
    }

    /// Whether `token` is the admin token (compared in constant time).
    pub fn is_admin(&self, token: Option<&str>) -> bool {
        let Some(token) = token else { return false };
        let a = token.as_bytes();
        let b = self.shared.admin_token.as_bytes();
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// Creates a room with the default settings; returns its code.
    pub fn create_room(&self) -> String {
        self.create_room_with(self.shared.defaults.clone())
    }

    /// Creates a room with `settings`, its center initialised from `settings.init_seed`.
    pub fn create_room_with(&self, settings: RoomSettings) -> String {
        let center = easel_client::model::init_params(settings.init_seed);
        let mut rooms = lock(&self.shared.rooms);
        let code = loop {
            let c = room::new_code();
            if !rooms.contains_key(&c) {
                break c;
            }
        };
        let mut room = Room::new(code.clone(), settings, center, Instant::now());
        let (_, first) = room.center_message(0);
        let (centers, _) = watch::channel(first);
        rooms.insert(
            code.clone(),
            Arc::new(RoomSlot {
                state: Mutex::new(RoomState {
                    room,
                    controls: HashMap::new(),
                    connections: 0,
                    evals: VecDeque::new(),
                }),
                centers,
            }),
        );
        code
    }

    /// The room with this code (case-insensitive), if any.
    pub fn room(&self, code: &str) -> Option<Arc<RoomSlot>> {
        lock(&self.shared.rooms)
            .get(&room::normalize_code(code))
            .cloned()
    }

    /// Every room, by code.
    pub fn rooms(&self) -> Vec<(String, Arc<RoomSlot>)> {
        lock(&self.shared.rooms)
            .iter()
            .map(|(c, r)| (c.clone(), r.clone()))
            .collect()
    }

    /// Handles a Join: a [`Session`], or the Error to answer (unknown room, wrong model,
    /// teacher without the token).
    pub fn join(&self, join: &Join, is_admin: bool) -> Result<Session, ErrorMessage> {
        let Some(slot) = self.room(&join.room) else {
            return Err(room::error(
                code::UNKNOWN_ROOM,
                format!("no room {:?}", join.room),
            ));
        };
        slot.join(join, is_admin)
    }
}

impl RoomSlot {
    fn join(self: &Arc<Self>, join: &Join, is_admin: bool) -> Result<Session, ErrorMessage> {
        let mut st = lock(&self.state);
        let welcome = st.room.join(join, is_admin, Instant::now())?;
        let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
        st.connections += 1;
        let connection = st.connections;
        st.controls.insert(welcome.worker_id, (connection, tx));
        Ok(Session {
            worker_id: welcome.worker_id,
            connection,
            kind: join.kind,
            capabilities: join.capabilities,
            welcome: message::encode(&Message::Welcome(welcome)),
            centers: self.centers.subscribe(),
            controls: rx,
            room: self.clone(),
        })
    }

    /// Handles a push: the encoded Ack and the encoded Center to send after it. When the
    /// push made a new version, the observers' watch gets it too.
    pub fn push(
        &self,
        worker: u64,
        push: &Push,
        bytes_in: usize,
        caps: u32,
    ) -> (Vec<u8>, Arc<[u8]>) {
        let mut st = lock(&self.state);
        let (ack, version) = st.room.handle_push(worker, push, bytes_in, Instant::now());
        let (_, center) = st.room.center_message(caps);
        if version.is_some() {
            let (_, full) = st.room.center_message(0);
            self.centers.send_replace(full);
        }
        (message::encode(&Message::Ack(ack)), center)
    }

    /// Applies a teacher's Control and queues what each worker must be told. A worker whose
    /// queue is full misses this message (it is not reading); the room's state still
    /// holds the setting.
    pub fn control(&self, c: &Control) -> Result<(), ErrorMessage> {
        let mut st = lock(&self.state);
        let forwards = st.room.control(c)?;
        for (id, msg) in forwards {
            if let Some((_, tx)) = st.controls.get(&id)
                && tx.try_send(msg).is_err()
            {
                tracing::warn!(worker = id, "control queue full; message dropped");
            }
        }
        Ok(())
    }

    /// Notes that a connection was heard from.
    pub fn touch(&self, worker: u64) {
        lock(&self.state).room.touch(worker, Instant::now());
    }

    /// Connection `connection` of `worker` ended. Nothing happens when the worker has
    /// resumed on a newer connection meanwhile.
    pub fn leave(&self, worker: u64, connection: u64) {
        let mut st = lock(&self.state);
        if st
            .controls
            .get(&worker)
            .is_some_and(|(c, _)| *c == connection)
        {
            st.controls.remove(&worker);
            st.room.leave(worker);
        }
    }

    /// The newest center version and values.
    pub fn center(&self) -> (u64, Arc<[f32]>) {
        lock(&self.state).room.center()
    }

    /// The version of the center in the observers' watch.
    pub fn watched_version(&self) -> Option<u64> {
        match message::decode(&self.centers.borrow(), &Limits::default()) {
            Ok(Message::Center(c)) => Some(c.version),
            _ => None,
        }
    }

    /// Records an evaluation of the center.
    pub fn record_eval(&self, point: EvalPoint) {
        let mut st = lock(&self.state);
        if st.evals.len() == EVAL_HISTORY {
            st.evals.pop_front();
        }
        st.evals.push_back(point);
    }

    /// The evaluations so far, oldest first.
    pub fn evals(&self) -> Vec<EvalPoint> {
        lock(&self.state).evals.iter().copied().collect()
    }

    /// The ledger as CSV.
    pub fn ledger_csv(&self) -> String {
        lock(&self.state).room.ledger().to_csv()
    }

    /// The ledger, the workers and the evaluations as JSON.
    pub fn ledger_json(&self) -> serde_json::Value {
        let st = lock(&self.state);
        let mut v = st.room.ledger().to_json();
        if let Some(obj) = v.as_object_mut() {
            obj.insert("room".into(), st.room.code().into());
            obj.insert("version".into(), st.room.center().0.into());
            obj.insert(
                "connected".into(),
                serde_json::to_value(st.room.workers().values().collect::<Vec<_>>())
                    .unwrap_or_default(),
            );
            obj.insert(
                "evals".into(),
                serde_json::to_value(&st.evals).unwrap_or_default(),
            );
        }
        v
    }

    /// Runs `f` on the room (for tests and the dashboard).
    pub fn with_room<T>(&self, f: impl FnOnce(&Room) -> T) -> T {
        f(&lock(&self.state).room)
    }
}

/// Locks a mutex, taking the data even if a thread panicked while holding it: the state
/// is only changed by short synchronous calls that leave it consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use easel_protocol::{Backend, ClientKind, Codec, LENET5_28, Outcome};

    #[test]
    fn rooms_are_independent_and_found_by_code_in_any_case() {
        let hub = Hub::new("tok".into(), Limits::default(), RoomSettings::default());
        let (a, b) = (hub.create_room(), hub.create_room());
        assert_ne!(a, b);
        assert!(hub.room(&a.to_lowercase()).is_some());
        assert!(hub.room("NOPE!").is_none());
        let join = Join {
            room: a.clone(),
            kind: ClientKind::Bot,
            backend: Backend::Cpu,
            capabilities: 0,
            layout_hash: LENET5_28.layout_hash(),
            resume_worker: None,
        };
        let s = hub.join(&join, false).unwrap();
        let mut rng = rand::rng();
        let push = Push {
            base_version: 0,
            local_steps: 1,
            samples: 1,
            loss: f32::NAN,
            payload: easel_protocol::codec::encode(Codec::Fp32, &[0.0; 44_426], &mut rng),
        };
        let (ack, _) = s.room.push(s.worker_id, &push, 10, 0);
        let ack = match message::decode(&ack, hub.limits()) {
            Ok(Message::Ack(a)) => a,
            other => panic!("{other:?}"),
        };
        assert!(matches!(ack.outcome, Outcome::Accepted { version: 1, .. }));
        assert_eq!(hub.room(&a).unwrap().center().0, 1);
        assert_eq!(hub.room(&a).unwrap().watched_version(), Some(1));
        assert_eq!(hub.room(&b).unwrap().center().0, 0);
        assert!(hub.is_admin(Some("tok")));
        assert!(!hub.is_admin(Some("tok2")) && !hub.is_admin(None));
        let unknown = Join {
            room: "ZZZZZ".into(),
            ..join
        };
        assert_eq!(
            hub.join(&unknown, false).unwrap_err().code,
            code::UNKNOWN_ROOM
        );
    }
}
