//! The relay's shared state: the rooms, and for each room the channels its connections
//! listen on.
//!
//! Layers: [`crate::ws`] (sockets) calls [`Hub`] and [`RoomSlot`] (locking, channels), which
//! call [`Room`] (pure logic). Every lock here is a `std::sync::Mutex` held for a few
//! synchronous calls and never across an `.await`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use easel_protocol::message::{self, Join, code};
use easel_protocol::{
    BackendChoice, ClientKind, Control, DeviceReport, ErrorMessage, Hyper, Limits, Message,
    ModelOps, Push, Question, Vote,
};
use tokio::sync::{Notify, mpsc, watch};

use crate::activity::{Activity, PushMark};
use crate::backends::Backends;
use crate::lesson::{self, Lesson, Options, Phase, Step};
use crate::room::{self, Room, RoomSettings, wall_ms};
use crate::runs::{PushPoint, Runs};
use crate::teacher::{MAX_DELAY_MS, SettingsView, TeacherControl};
use easel_protocol::codes::close;

/// Orders a connection may have queued: answers to held pushes and closes. A worker has one
/// push in flight, so it is owed at most one answer, and a close ends the connection, so
/// the queue never fills in practice; Controls do not go through it (see [`Pending`]).
pub const CONTROL_QUEUE: usize = 8;
/// Center evaluations kept per room (one every few seconds: hours of class).
pub const EVAL_HISTORY: usize = 10_000;

/// What the relay tells one connection, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Order {
    /// Close the connection with this WebSocket close code and reason.
    Close { code: u16, reason: String },
    /// The answer to this worker's push held at a barrier: its encoded Ack, then the
    /// encoded Center.
    Answer { ack: Vec<u8>, center: Arc<[u8]> },
}

/// The Controls a connection has yet to write, coalesced: a newer Settings, Delay or
/// Pause/Resume replaces the unsent older one in place. A connection that does not read
/// holds at most three, none is ever dropped, and the last of each kind it writes is the
/// room's latest (a worker that reads again after twelve settings changes gets the twelfth).
/// The teacher's backend choice for a tab (a `UseBackend`, not a Control) is coalesced the
/// same way beside them.
#[derive(Debug, Default)]
pub struct Pending {
    latest: Mutex<Latest>,
    /// Woken on every put; keeps one permit when nobody waits, so no put is missed.
    notify: Notify,
}

/// The newest unsent Control of each kind.
#[derive(Debug, Default)]
struct Latest {
    settings: Option<Control>,
    delay: Option<Control>,
    /// Pause or Resume: the newest wins.
    pause: Option<Control>,
    /// The teacher's backend for this tab (sent as `UseBackend`, not a Control).
    backend: Option<BackendChoice>,
    /// The lesson's question as this tab sees it (a `Question`, not a Control).
    question: Option<Question>,
}

impl Pending {
    /// Replaces the unsent Control of `c`'s kind with `c`.
    pub fn put(&self, c: Control) {
        {
            let mut l = lock(&self.latest);
            let slot = match c {
                Control::Settings(_) => &mut l.settings,
                Control::Delay { .. } => &mut l.delay,
                Control::Pause { .. } | Control::Resume { .. } => &mut l.pause,
            };
            *slot = Some(c);
        }
        self.notify.notify_one();
    }

    /// Replaces the unsent backend choice with `c`.
    pub fn put_backend(&self, c: BackendChoice) {
        lock(&self.latest).backend = Some(c);
        self.notify.notify_one();
    }

    /// Takes the unsent backend choice, if any.
    pub fn take_backend(&self) -> Option<BackendChoice> {
        lock(&self.latest).backend.take()
    }

    /// Replaces the unsent question with `q`.
    pub fn put_question(&self, q: Question) {
        lock(&self.latest).question = Some(q);
        self.notify.notify_one();
    }

    /// Takes the unsent question, if any.
    pub fn take_question(&self) -> Option<Question> {
        lock(&self.latest).question.take()
    }

    /// Resolves after a [`Pending::put`] (possibly one already taken).
    pub async fn changed(&self) {
        self.notify.notified().await;
    }

    /// Takes what is pending: settings first, then the delay, then pause or resume.
    pub fn take(&self) -> Vec<Control> {
        let mut l = lock(&self.latest);
        [l.settings.take(), l.delay.take(), l.pause.take()]
            .into_iter()
            .flatten()
            .collect()
    }

    /// How many Controls are waiting (at most three).
    pub fn len(&self) -> usize {
        let l = lock(&self.latest);
        [&l.settings, &l.delay, &l.pause]
            .iter()
            .filter(|c| c.is_some())
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where the relay writes to one connection: the queue of answers and closes, and its
/// coalesced Controls.
#[derive(Debug)]
struct Mailbox {
    orders: mpsc::Sender<Order>,
    controls: Arc<Pending>,
}

impl Mailbox {
    fn try_send(&self, order: Order) -> Result<(), mpsc::error::TrySendError<Order>> {
        self.orders.try_send(order)
    }
}

pub use crate::runs::EvalPoint;

/// A center taken for evaluation, tagged with the room's reset count
/// ([`RoomSlot::center_for_eval`]).
#[derive(Clone, Debug)]
pub struct EvalTicket {
    /// The room's resets when the center was taken.
    epoch: u64,
    pub version: u64,
    pub center: Arc<[f32]>,
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
    /// The model's initial centers (passed in: the server has no model code).
    model: Arc<dyn ModelOps>,
    /// Rooms by code. The map's lock is only held to find or insert a room.
    rooms: Mutex<HashMap<String, Arc<RoomSlot>>>,
    /// Where devices open the pages (`https://IP:PORT/`, then `http://127.0.0.1:PORT/`), set
    /// once the listeners are bound.
    join_bases: Mutex<Vec<String>>,
    /// The database rooms are checkpointed to, when there is one ([`crate::store`]).
    store: OnceLock<Arc<crate::store::Store>>,
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
    /// The model, for a reset's fresh center.
    model: Arc<dyn ModelOps>,
}

#[derive(Debug)]
struct RoomState {
    /// The room's settings, center versions, ledger and workers.
    room: Room,
    /// The mailbox of each connected worker, by worker id, with the id of the connection
    /// that owns it (a worker that resumes on a new connection replaces it, and the older
    /// connection is closed with 4002).
    controls: HashMap<u64, (u64, Mailbox)>,
    /// Connections ever admitted, to give each one an id.
    connections: u64,
    /// Accuracy and loss of the center over time, newest last, at most [`EVAL_HISTORY`].
    evals: VecDeque<EvalPoint>,
    /// The oldest center version an evaluation may score: the version a reset made. An
    /// evaluation runs outside the lock, so one of the center from before a reset can
    /// arrive after it; it belongs to no run and is dropped.
    eval_floor: u64,
    /// The named runs, the last one current.
    runs: Runs,
    /// Every device's inferred timeline and rates.
    activity: Activity,
    /// Each tab's reported backend and measured speeds, and the teacher's choices.
    backends: Backends,
    /// Resets so far (the saved ledger starts again at each); an [`EvalTicket`] carries
    /// the count it was taken at, and a score is dropped when a reset came in between.
    resets: u64,
    /// What the last checkpoint wrote ([`crate::store`]).
    saved: crate::store::Cursor,
    /// The room's lesson, the current or the last one ([`crate::lesson`]); in memory only.
    lesson: Option<Lesson>,
    /// Lessons asked so far (a lesson's id).
    lessons: u32,
    /// The settings and partition from before the lesson's first arm, put back after it.
    before_lesson: Option<(Hyper, String)>,
}

/// What a connection gets when its Join is accepted.
#[derive(Debug)]
pub struct Session {
    pub worker_id: u64,
    /// The secret of its Welcome, which resuming this worker needs.
    pub resume_token: easel_protocol::ResumeToken,
    /// This connection's id in the room, for [`RoomSlot::leave`].
    pub connection: u64,
    pub kind: easel_protocol::ClientKind,
    /// Capability bits from the Join.
    pub capabilities: u32,
    /// The encoded Welcome message.
    pub welcome: Vec<u8>,
    /// Encoded Controls to send right after the Welcome: a resumed worker's delay and pause,
    /// which the teacher set before it reconnected (or reloaded its page).
    pub restore: Vec<Vec<u8>>,
    /// The room's newest center (teachers and observers read it).
    pub centers: watch::Receiver<Arc<[u8]>>,
    /// Answers to held pushes and closes for this connection.
    pub controls: mpsc::Receiver<Order>,
    /// The teacher's Controls for this worker, coalesced.
    pub pending: Arc<Pending>,
    pub room: Arc<RoomSlot>,
}

impl Hub {
    /// A hub with no rooms.
    pub fn new(
        admin_token: String,
        limits: Limits,
        defaults: RoomSettings,
        model: Arc<dyn ModelOps>,
    ) -> Hub {
        Hub {
            shared: Arc::new(Shared {
                admin_token,
                limits,
                defaults,
                model,
                rooms: Mutex::new(HashMap::new()),
                join_bases: Mutex::new(Vec::new()),
                store: OnceLock::new(),
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

    /// Sets the base URLs devices join at (each ends with `/`).
    pub fn set_join_bases(&self, bases: Vec<String>) {
        *lock(&self.shared.join_bases) = bases;
    }

    /// The join URLs of a room: each base with `?room=CODE`.
    pub fn join_urls(&self, code: &str) -> Vec<String> {
        lock(&self.shared.join_bases)
            .iter()
            .map(|b| format!("{b}?room={code}"))
            .collect()
    }

    /// Creates a room with the default settings; returns its code.
    pub fn create_room(&self) -> String {
        self.create_room_with(self.shared.defaults.clone())
    }

    /// Creates a room with `settings`, its center initialised from `settings.init_seed`.
    pub fn create_room_with(&self, settings: RoomSettings) -> String {
        let center = self.shared.model.init(settings.init_seed);
        let mut rooms = lock(&self.shared.rooms);
        let code = loop {
            let c = room::new_code();
            if !rooms.contains_key(&c) {
                break c;
            }
        };
        insert_room(
            &mut rooms,
            code.clone(),
            settings,
            center,
            &self.shared.model,
        );
        code
    }

    /// Creates a room under a given code (normalized) with the default settings, as a
    /// relay that comes back under the same room code (for a restart); `None` when the code
    /// is taken.
    pub fn create_room_with_code(&self, code: &str) -> Option<String> {
        let code = room::normalize_code(code);
        let settings = self.shared.defaults.clone();
        let center = self.shared.model.init(settings.init_seed);
        let mut rooms = lock(&self.shared.rooms);
        if code.is_empty() || rooms.contains_key(&code) {
            return None;
        }
        insert_room(
            &mut rooms,
            code.clone(),
            settings,
            center,
            &self.shared.model,
        );
        Some(code)
    }
}

/// A hub for the crate's tests: admin token `token`, the default limits, rooms made with
/// `settings`, and the LeNet the binary passes in.
#[cfg(test)]
pub(crate) fn test_hub(token: &str, settings: RoomSettings) -> Hub {
    Hub::new(
        token.into(),
        Limits::default(),
        settings,
        Arc::new(easel_client::Lenet),
    )
}

/// A new room `code` with `settings` and `center` (version 0) in `rooms`.
fn insert_room(
    rooms: &mut HashMap<String, Arc<RoomSlot>>,
    code: String,
    settings: RoomSettings,
    center: Vec<f32>,
    model: &Arc<dyn ModelOps>,
) {
    let runs = Runs::new("run 1", SettingsView::of(&settings).to_json(), wall_ms());
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
                eval_floor: 0,
                runs,
                activity: Activity::default(),
                backends: Backends::default(),
                resets: 0,
                saved: crate::store::Cursor::default(),
                lesson: None,
                lessons: 0,
                before_lesson: None,
            }),
            centers,
            model: model.clone(),
        }),
    );
}

impl Hub {
    /// Sets the database the rooms are checkpointed to (once).
    pub fn set_store(&self, store: Arc<crate::store::Store>) {
        let _ = self.shared.store.set(store);
    }

    /// The database, when the relay has one.
    pub fn store(&self) -> Option<&Arc<crate::store::Store>> {
        self.shared.store.get()
    }

    /// Serves a room loaded from the database again; returns its code.
    pub fn restore_room(&self, r: crate::store::Restored) -> String {
        let code = r.room.code().to_string();
        let mut room = r.room;
        let (_, first) = room.center_message(0);
        let (centers, _) = watch::channel(first);
        let mut evals: VecDeque<EvalPoint> = r.evals.into_iter().collect();
        while evals.len() > EVAL_HISTORY {
            evals.pop_front();
        }
        let eval_floor = room.center().0;
        let slot = RoomSlot {
            state: Mutex::new(RoomState {
                room,
                controls: HashMap::new(),
                connections: 0,
                evals,
                eval_floor,
                runs: r.runs,
                activity: Activity::default(),
                backends: Backends::default(),
                resets: r.resets,
                saved: r.cursor,
                lesson: None,
                lessons: 0,
                before_lesson: None,
            }),
            centers,
            model: self.shared.model.clone(),
        };
        lock(&self.shared.rooms).insert(code.clone(), Arc::new(slot));
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

/// The Controls that give a (resumed) worker back the delay and pause the teacher set for it.
fn restore_controls(w: &room::Worker) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    if w.delay_ms > 0 {
        out.push(Control::Delay {
            worker: None,
            ms: w.delay_ms,
        });
    }
    if w.paused {
        out.push(Control::Pause { worker: None });
    }
    out.into_iter()
        .map(|c| message::encode(&Message::Control(c)))
        .collect()
}

impl RoomSlot {
    /// The model this room trains.
    pub fn model(&self) -> &dyn ModelOps {
        &*self.model
    }

    fn join(self: &Arc<Self>, join: &Join, is_admin: bool) -> Result<Session, ErrorMessage> {
        let mut st = lock(&self.state);
        let welcome = st.room.join(join, is_admin, Instant::now())?;
        let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
        let pending = Arc::new(Pending::default());
        st.connections += 1;
        let connection = st.connections;
        let mailbox = Mailbox {
            orders: tx,
            controls: pending.clone(),
        };
        if let Some((_, older)) = st.controls.insert(welcome.worker_id, (connection, mailbox)) {
            // Resumed while an older connection is open: that one is over. Should its queue
            // be full, dropping its sender closes it all the same (ws.rs).
            let _ = older.try_send(Order::Close {
                code: close::SUPERSEDED,
                reason: "this worker resumed on another connection".into(),
            });
        }
        if room::trains(join.kind) {
            st.activity.joined(welcome.worker_id, wall_ms());
        }
        let mut restore = st
            .room
            .workers()
            .get(&welcome.worker_id)
            .map(restore_controls)
            .unwrap_or_default();
        if let Some(c) = st.backends.chosen(welcome.worker_id) {
            restore.push(message::encode(&Message::UseBackend(c)));
        }
        if join.kind == ClientKind::Browser
            && let Some(l) = st.lesson.as_ref().filter(|l| l.phase != Phase::Over)
        {
            restore.push(message::encode(&Message::Question(
                l.question(welcome.worker_id),
            )));
        }
        Ok(Session {
            worker_id: welcome.worker_id,
            resume_token: welcome.resume_token,
            connection,
            kind: join.kind,
            capabilities: join.capabilities,
            welcome: message::encode(&Message::Welcome(welcome)),
            restore,
            centers: self.centers.subscribe(),
            controls: rx,
            pending,
            room: self.clone(),
        })
    }

    /// Handles a push: the encoded Ack and the encoded Center to send after it, or `None`
    /// while the push is held at a barrier (the answer comes later as an
    /// [`Order::Answer`]). Workers whose held pushes this push released get theirs queued
    /// now. When the push made a new version, the observers' watch gets it too.
    pub fn push(
        &self,
        worker: u64,
        push: &Push,
        bytes_in: usize,
        caps: u32,
    ) -> Option<(Vec<u8>, Arc<[u8]>)> {
        // Decoding needs no room state: done before the lock, as is encoding the Ack after.
        let delta = room::decode_update(push);
        let (ack, center) = {
            let mut st = lock(&self.state);
            st.activity.arrived(worker, wall_ms());
            let pushed = st
                .room
                .handle_decoded(worker, push, delta, bytes_in, Instant::now());
            record_rows_locked(&mut st, pushed.recorded);
            if pushed.version.is_some() {
                let (_, full) = st.room.center_message(0);
                self.centers.send_replace(full);
            }
            if pushed.ack.is_none() {
                st.activity.held(worker);
            }
            released_locked(&mut st, &pushed.released);
            answer_locked(&mut st, pushed.released);
            queue_locked(&mut st, pushed.forwards);
            let ack = pushed.ack?;
            (ack, st.room.reply_center(worker, caps))
        };
        Some((message::encode(&Message::Ack(ack)), center))
    }

    /// Applies a teacher's Control and hands each worker concerned its coalesced copy.
    pub fn control(&self, c: &Control) -> Result<(), ErrorMessage> {
        let mut st = lock(&self.state);
        control_locked(&mut st, c)
    }

    /// Keeps a tab's report of its backend and measured speeds, for the dashboard.
    pub fn device_report(&self, worker: u64, report: DeviceReport) {
        lock(&self.state).backends.report(worker, report);
    }

    /// The center answering `worker`'s push was written to its socket: its timeline gets
    /// the round's spans.
    pub fn center_sent(&self, worker: u64) {
        let mut st = lock(&self.state);
        let delay = st.room.workers().get(&worker).map_or(0, |w| w.delay_ms);
        st.activity.center_sent(worker, wall_ms(), delay);
    }

    /// Applies a command of the teacher's JSON API; the new settings and devices, or what
    /// to fix.
    pub fn teacher_control(&self, c: &TeacherControl) -> Result<serde_json::Value, String> {
        let msg = |e: ErrorMessage| e.message;
        if let TeacherControl::Reset { name } = c {
            self.start_run(name.as_deref().unwrap_or("reset"), true);
            return Ok(self.state_json());
        }
        let mut st = lock(&self.state);
        let now = wall_ms();
        match c {
            TeacherControl::Settings(change) => {
                let hyper = change
                    .apply(st.room.settings().hyper)
                    .map_err(|e| e.message)?;
                control_locked(&mut st, &Control::Settings(hyper)).map_err(msg)?;
            }
            TeacherControl::Delay { device, ms } => {
                if *ms > MAX_DELAY_MS {
                    return Err(format!(
                        "delay {ms} ms is above the {MAX_DELAY_MS} ms limit"
                    ));
                }
                let c = Control::Delay {
                    worker: *device,
                    ms: *ms,
                };
                control_locked(&mut st, &c).map_err(msg)?;
            }
            TeacherControl::Pause { device } | TeacherControl::Resume { device } => {
                let pause = matches!(c, TeacherControl::Pause { .. });
                let c = if pause {
                    Control::Pause { worker: *device }
                } else {
                    Control::Resume { worker: *device }
                };
                control_locked(&mut st, &c).map_err(msg)?;
                let ids: Vec<u64> = match device {
                    Some(id) => vec![*id],
                    None => st.room.workers().keys().copied().collect(),
                };
                for id in ids {
                    st.activity.restart(id, (!pause).then_some(now));
                }
            }
            TeacherControl::Remove { device } => {
                if st.room.remove(*device).map_err(msg)? {
                    close_locked(&mut st, *device, close::REMOVED, "removed by the teacher");
                }
            }
            TeacherControl::Partition { scheme } => {
                set_partition_locked(&mut st, scheme).map_err(msg)?;
            }
            TeacherControl::Backend { device, backend } => {
                let choice = crate::teacher::parse_backend_choice(backend)?;
                match st.room.workers().get(device) {
                    Some(w) if w.kind == easel_protocol::ClientKind::Browser => {}
                    Some(w) => {
                        return Err(format!(
                            "{} is not a browser tab: only tabs can switch backend",
                            w.name
                        ));
                    }
                    None => return Err(format!("no device {device} in this room")),
                }
                st.backends.choose(*device, choice);
                if let Some((_, mailbox)) = st.controls.get(device) {
                    mailbox.controls.put_backend(choice);
                }
            }
            TeacherControl::Reset { .. } => {}
        }
        drop(st);
        Ok(self.state_json())
    }

    /// The room's settings and devices as the control API answers them.
    pub fn state_json(&self) -> serde_json::Value {
        let st = lock(&self.state);
        serde_json::json!({
            "settings": SettingsView::of(st.room.settings()),
            "run": st.runs.current().id,
            "devices": crate::devices::device_rows(&st.room, &st.activity, &st.backends, Instant::now(), wall_ms()),
        })
    }

    /// Ends the current run and starts `name`; with `reset`, from a fresh center (the room's
    /// init seed) with the ledger and the evaluations emptied. Returns the run's id.
    pub fn start_run(&self, name: &str, reset: bool) -> u64 {
        let center = reset.then(|| {
            let seed = lock(&self.state).room.settings().init_seed;
            self.model.init(seed)
        });
        let mut st = lock(&self.state);
        if let Some(center) = center {
            let released = st
                .room
                .release_held(code::RESYNC, "the teacher reset the room: resync");
            st.eval_floor = st.room.reset(center, Instant::now());
            st.resets += 1;
            released_locked(&mut st, &released);
            st.activity.clear_verdicts();
            answer_locked(&mut st, released);
            st.evals.clear();
            let (_, full) = st.room.center_message(0);
            self.centers.send_replace(full);
        }
        let settings = SettingsView::of(st.room.settings()).to_json();
        st.runs.start(name, settings, wall_ms())
    }

    /// The kept runs, oldest first, without their series.
    pub fn runs_json(&self) -> serde_json::Value {
        let st = lock(&self.state);
        serde_json::json!({
            "current": st.runs.current().id,
            "runs": st.runs.all().map(|r| r.summary()).collect::<Vec<_>>(),
        })
    }

    /// A kept run as JSON.
    pub fn run_json(&self, id: u64) -> Option<serde_json::Value> {
        self.run(id).map(|r| r.to_json())
    }

    /// A kept run as CSV.
    pub fn run_csv(&self, id: u64) -> Option<String> {
        self.run(id).map(|r| r.to_csv())
    }

    /// A copy of a kept run: copied under the lock (a memcpy), formatted after it, so an
    /// export of 50,000 points never holds up the room's pushes.
    fn run(&self, id: u64) -> Option<crate::runs::Run> {
        lock(&self.state).runs.get(id).cloned()
    }

    /// Runs `f` on the room, its runs, its devices' timelines and backends (for the
    /// dashboard).
    pub fn with_view<T>(&self, f: impl FnOnce(&Room, &Runs, &Activity, &Backends) -> T) -> T {
        let st = lock(&self.state);
        f(&st.room, &st.runs, &st.activity, &st.backends)
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
            st.activity.left(worker);
            // A barrier round waiting for this worker would wait for ever.
            let released = st.room.release_held(
                code::RESYNC,
                "a worker left; the round starts again: resync",
            );
            record_rows_locked(&mut st, released.len());
            released_locked(&mut st, &released);
            answer_locked(&mut st, released);
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

    /// The newest center to evaluate, with the epoch it belongs to: hand the ticket back
    /// to [`RoomSlot::record_scored`] with its score.
    pub fn center_for_eval(&self) -> EvalTicket {
        let st = lock(&self.state);
        let (version, center) = st.room.center();
        EvalTicket {
            epoch: st.resets,
            version,
            center,
        }
    }

    /// Records the score of a ticket's center (its `version` is the ticket's), unless the
    /// room was reset since the ticket was taken: then the score is the old model's, it
    /// belongs to no run, and it is dropped (`false`).
    pub fn record_scored(&self, ticket: &EvalTicket, mut point: EvalPoint) -> bool {
        point.version = ticket.version;
        let mut st = lock(&self.state);
        if ticket.epoch != st.resets {
            return false;
        }
        record_eval_locked(&mut st, point)
    }

    /// Records an evaluation of the center, unless it scored a center from before the
    /// last reset (then it is dropped and `false` returned).
    pub fn record_eval(&self, point: EvalPoint) -> bool {
        record_eval_locked(&mut lock(&self.state), point)
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

    /// Copies what the database lacks of this room (see [`crate::store::Checkpoint`]):
    /// a few clones under the lock, nothing written here.
    pub fn checkpoint(&self) -> crate::store::Checkpoint {
        let st = lock(&self.state);
        let saved = &st.saved;
        let (version, center) = st.room.center();
        let ledger_restart = st.resets != saved.resets;
        let ledger = st.room.ledger();
        let since = if ledger_restart { 0 } else { saved.ledger_next };
        let runs = st
            .runs
            .all()
            .map(|r| {
                let (evals, pushes) = saved.runs.get(&r.id).copied().unwrap_or((0, 0));
                crate::store::RunCopy {
                    id: r.id,
                    name: r.name.clone(),
                    started_ms: r.started_ms,
                    ended_ms: r.ended_ms,
                    settings: r.settings.clone(),
                    evals_total: r.evals.total(),
                    pushes_total: r.pushes.total(),
                    evals: r.evals.since(evals),
                    pushes: r.pushes.since(pushes),
                }
            })
            .collect();
        crate::store::Checkpoint {
            wall_ms: wall_ms(),
            room: st.room.snapshot(),
            version,
            center: (saved.version != Some(version)).then_some(center),
            ledger_restart,
            resets: st.resets,
            totals: ledger.totals().clone(),
            histogram: ledger.histogram().clone(),
            ledger_workers: ledger.workers().clone(),
            records: ledger.since(since),
            runs,
            next_run: st.runs.next_id(),
        }
    }

    /// What the last checkpoint of this room wrote.
    pub fn saved_cursor(&self) -> crate::store::Cursor {
        lock(&self.state).saved.clone()
    }

    /// Notes what a checkpoint wrote.
    pub fn set_saved_cursor(&self, c: crate::store::Cursor) {
        lock(&self.state).saved = c;
    }

    /// Runs `f` on the room (for tests and the dashboard).
    pub fn with_room<T>(&self, f: impl FnOnce(&Room) -> T) -> T {
        f(&lock(&self.state).room)
    }
}

/// Keeps an evaluation in the room and its current run, unless it scored a center older
/// than the last reset's.
/// The room's lessons ([`crate::lesson`]): the hub applies what a lesson's [`Step`] asks
/// for; [`crate::conductor`] calls [`RoomSlot::lesson_tick`] every half second.
impl RoomSlot {
    /// Asks the lesson `key` of the class in the room: every tab shows the question and the
    /// vote opens. Refused while another lesson's runs are on, or when the class is too
    /// small for it.
    pub fn ask_lesson(&self, key: &str, options: Options) -> Result<serde_json::Value, String> {
        let preset = lesson::preset(key)?;
        {
            let mut st = lock(&self.state);
            if running_locked(&st) {
                return Err("a lesson is running: end it first".into());
            }
            let class = class_locked(&st);
            let room = lesson::Room {
                local_steps: st.room.settings().hyper.local_steps,
                shards: st.room.settings().partition.shards as usize,
            };
            let id = st.lessons + 1;
            let l = Lesson::ask(id, preset, &class, room, options, wall_ms())?;
            st.lessons = id;
            st.lesson = Some(l);
            broadcast_question_locked(&st);
        }
        Ok(self.lesson_json())
    }

    /// Counts a tab's vote; its question with the vote, or the Error to answer.
    pub fn vote(&self, worker: u64, v: Vote) -> Result<Question, ErrorMessage> {
        let mut st = lock(&self.state);
        let Some(l) = st.lesson.as_mut() else {
            return Err(room::error(code::BAD_VOTE, "no lesson is asking"));
        };
        l.vote(worker, v)
            .map_err(|why| room::error(code::BAD_VOTE, why))?;
        Ok(l.question(worker))
    }

    /// Closes the vote and starts the lesson's first arm.
    pub fn begin_lesson(&self) -> Result<serde_json::Value, String> {
        let step = {
            let mut st = lock(&self.state);
            let before = (
                st.room.settings().hyper,
                st.room.settings().partition.scheme.clone(),
            );
            let step = st
                .lesson
                .as_mut()
                .ok_or("no lesson: ask one first")?
                .begin()?;
            st.before_lesson = Some(before);
            step
        };
        self.lesson_step(step);
        Ok(self.lesson_json())
    }

    /// Ends the lesson (putting the room's settings back when an arm was on).
    pub fn end_lesson(&self) -> Result<serde_json::Value, String> {
        let put_back = lock(&self.state)
            .lesson
            .as_mut()
            .ok_or("no lesson to end")?
            .stop("the teacher ended the lesson");
        if put_back {
            self.lesson_step(Step::Interrupted);
        } else {
            broadcast_question_locked(&lock(&self.state));
        }
        Ok(self.lesson_json())
    }

    /// Moves the lesson on when its arm reached the target or its time.
    pub fn lesson_tick(&self) {
        let step = {
            let mut st = lock(&self.state);
            let now = wall_ms();
            let RoomState { lesson, runs, .. } = &mut *st;
            lesson.as_mut().and_then(|l| l.advance(runs.current(), now))
        };
        if let Some(step) = step {
            self.lesson_step(step);
        }
    }

    /// Whether one of the lesson's arms is running (evaluations come more often then).
    pub fn lesson_running(&self) -> bool {
        running_locked(&lock(&self.state))
    }

    /// The lesson as the dashboard shows it, `null` when there has been none.
    pub fn lesson_json(&self) -> serde_json::Value {
        let st = lock(&self.state);
        let voters = st
            .room
            .workers()
            .values()
            .filter(|w| w.kind == ClientKind::Browser && w.connected && !w.removed)
            .count();
        st.lesson
            .as_ref()
            .map_or(serde_json::Value::Null, |l| l.to_json(voters, wall_ms()))
    }

    fn lesson_step(&self, step: Step) {
        match step {
            Step::Start(index) => self.start_arm(index),
            Step::Reveal | Step::Interrupted => {
                let mut st = lock(&self.state);
                put_back_locked(&mut st);
                broadcast_question_locked(&st);
            }
        }
    }

    /// Sets arm `index` up (its settings over the room's from before the lesson, its
    /// partition, the plan's delays) and starts its run from a fresh center.
    fn start_arm(&self, index: usize) {
        let name = {
            let mut st = lock(&self.state);
            let (Some(l), Some((hyper, partition))) = (&st.lesson, &st.before_lesson) else {
                return;
            };
            let arm = l.arms[index].clone();
            let delays = l.plan.delays.clone();
            let name = format!("lesson {} · {}", l.id, arm.label);
            let partition = arm.partition.clone().unwrap_or_else(|| partition.clone());
            let applied = arm
                .settings
                .apply(*hyper)
                .map_err(|e| e.message)
                .and_then(|h| {
                    control_locked(&mut st, &Control::Settings(h)).map_err(|e| e.message)
                });
            if let Err(why) = applied {
                if let Some(l) = st.lesson.as_mut() {
                    l.stop(&format!("the arm's settings were refused: {why}"));
                }
                put_back_locked(&mut st);
                broadcast_question_locked(&st);
                return;
            }
            change_partition_locked(&mut st, &partition);
            for (worker, ms) in delays {
                // A device that left since the plan is no longer there to delay.
                let _ = control_locked(
                    &mut st,
                    &Control::Delay {
                        worker: Some(worker),
                        ms,
                    },
                );
            }
            if index == 0 {
                broadcast_question_locked(&st);
            }
            name
        };
        let run = self.start_run(&name, true);
        if let Some(l) = lock(&self.state).lesson.as_mut() {
            l.arm_started(index, run, wall_ms());
        }
    }
}

fn running_locked(st: &RoomState) -> bool {
    st.lesson
        .as_ref()
        .is_some_and(|l| matches!(l.phase, Phase::Starting { .. } | Phase::Arm { .. }))
}

/// The training devices a lesson plans with: connected, not paused, not removed, each with
/// its own speed: the teacher's delay taken out of its measured rounds (its rate is measured
/// afresh after each change of delay, [`Activity::forget_rate`]).
fn class_locked(st: &RoomState) -> Vec<lesson::Device> {
    let steps = f64::from(st.room.settings().hyper.local_steps.max(1));
    st.room
        .workers()
        .values()
        .filter(|w| room::trains(w.kind) && w.connected && !w.paused && !w.removed)
        .map(|w| lesson::Device {
            worker: w.id,
            name: w.name.clone(),
            steps_per_s: st.activity.steps_per_s(w.id).map(|rate| {
                let own_s = steps / rate - f64::from(w.delay_ms) / 1000.0;
                if own_s > 0.0 { steps / own_s } else { rate }
            }),
        })
        .collect()
}

/// Every connected tab gets the lesson's question as it sees it.
fn broadcast_question_locked(st: &RoomState) {
    let Some(l) = &st.lesson else { return };
    for (id, (_, mailbox)) in &st.controls {
        if st
            .room
            .workers()
            .get(id)
            .is_some_and(|w| w.kind == ClientKind::Browser)
        {
            mailbox.controls.put_question(l.question(*id));
        }
    }
}

/// Puts back the settings and partition from before the lesson, and lifts its delays.
fn put_back_locked(st: &mut RoomState) {
    let Some((hyper, partition)) = st.before_lesson.take() else {
        return;
    };
    let _ = control_locked(st, &Control::Settings(hyper));
    change_partition_locked(st, &partition);
    let delayed: Vec<u64> = st
        .lesson
        .iter()
        .flat_map(|l| l.plan.delays.iter())
        .filter(|(_, ms)| **ms > 0)
        .map(|(w, _)| *w)
        .collect();
    for worker in delayed {
        let _ = control_locked(
            st,
            &Control::Delay {
                worker: Some(worker),
                ms: 0,
            },
        );
    }
}

/// Changes the partition; the connected devices rejoin for a new shard.
fn set_partition_locked(st: &mut RoomState, scheme: &str) -> Result<(), ErrorMessage> {
    for id in st.room.set_partition(scheme)? {
        close_locked(
            st,
            id,
            close::REJOIN,
            "the partition changed: join again for a new shard",
        );
    }
    Ok(())
}

/// [`set_partition_locked`] when `scheme` is not the room's already (a lesson's arms).
fn change_partition_locked(st: &mut RoomState, scheme: &str) {
    if st.room.settings().partition.scheme != scheme {
        let _ = set_partition_locked(st, scheme);
    }
}

fn record_eval_locked(st: &mut RoomState, point: EvalPoint) -> bool {
    if point.version < st.eval_floor {
        return false;
    }
    if st.evals.len() == EVAL_HISTORY {
        st.evals.pop_front();
    }
    st.evals.push_back(point);
    st.runs.current_mut().record_eval(point);
    true
}

/// Applies a Control with the room locked and hands what each worker must be told to its
/// connection's [`Pending`] (coalesced, never dropped).
fn control_locked(st: &mut RoomState, c: &Control) -> Result<(), ErrorMessage> {
    let before = st.room.settings().hyper.strategy();
    let forwards = st.room.control(c)?;
    if let Control::Delay { worker, .. } = c {
        // Its rounds from before the change no longer say how fast it is.
        let ids: Vec<u64> = match worker {
            Some(id) => vec![*id],
            None => st.room.workers().keys().copied().collect(),
        };
        for id in ids {
            st.activity.forget_rate(id);
        }
    }
    let abandon = match c {
        Control::Settings(_) => st.room.settings().hyper.strategy() != before,
        Control::Pause { .. } => true,
        Control::Resume { .. } | Control::Delay { .. } => false,
    };
    if abandon {
        let released = st.room.release_held(
            code::RESYNC,
            "the round was abandoned (a worker paused or the strategy changed): resync",
        );
        record_rows_locked(st, released.len());
        released_locked(st, &released);
        answer_locked(st, released);
    }
    queue_locked(st, forwards);
    Ok(())
}

/// Hands the ledger's newest `rows` rows (those one push or one abandoned round just
/// wrote) to the current run and the activity timeline.
fn record_rows_locked(st: &mut RoomState, rows: usize) {
    // Disjoint fields: the ledger is read while the run and the timeline are written.
    let RoomState {
        room,
        runs,
        activity,
        ..
    } = st;
    let records = room.ledger().records();
    let skip = records.len().saturating_sub(rows);
    for r in records.skip(skip) {
        let point = PushPoint::from(r);
        runs.current_mut().record_push(point);
        activity.pushed(point.worker, point.wall_ms, point.local_steps);
        activity.verdict(
            r.worker,
            PushMark {
                tau: r.tau,
                accepted: r.accepted(),
                code: r.code,
            },
        );
    }
}

/// The barrier released these workers' held pushes now: their timelines end the wait.
fn released_locked(st: &mut RoomState, released: &[(u64, easel_protocol::Ack)]) {
    let now = wall_ms();
    for (id, _) in released {
        st.activity.released(*id, now);
    }
}

/// Queues each worker's Ack and the newest Center (in the codec it reads) to its connection.
fn answer_locked(st: &mut RoomState, acks: Vec<(u64, easel_protocol::Ack)>) {
    for (id, ack) in acks {
        let caps = st.room.workers().get(&id).map_or(0, |w| w.capabilities);
        let center = st.room.reply_center(id, caps);
        let order = Order::Answer {
            ack: message::encode(&Message::Ack(ack)),
            center,
        };
        if let Some((_, tx)) = st.controls.get(&id)
            && tx.try_send(order).is_err()
        {
            tracing::warn!(worker = id, "control queue full; answer dropped");
        }
    }
}

/// Hands Controls to the connections of the workers they name, each replacing the unsent
/// Control of its kind.
fn queue_locked(st: &mut RoomState, forwards: Vec<crate::room::Forward>) {
    for (id, msg) in forwards {
        if let Some((_, mailbox)) = st.controls.get(&id) {
            mailbox.controls.put(msg);
        }
    }
}

/// Tells a connected worker's connection to close with `code` and `reason`.
fn close_locked(st: &mut RoomState, worker: u64, code: u16, reason: &str) {
    if let Some((_, tx)) = st.controls.get(&worker) {
        let order = Order::Close {
            code,
            reason: reason.to_string(),
        };
        if tx.try_send(order).is_err() {
            tracing::warn!(worker, "control queue full; close not queued");
        }
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
        let hub = crate::hub::test_hub("tok", RoomSettings::default());
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
        let (ack, _) = s
            .room
            .push(s.worker_id, &push, 10, 0)
            .expect("EASGD answers at once");
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

    #[test]
    fn controls_coalesce_to_the_newest_and_the_answer_to_a_held_push_still_comes() {
        let mut settings = RoomSettings::default();
        settings.hyper.merge = easel_protocol::Merge::Fedavg { m_of_n: None };
        let hub = crate::hub::test_hub("tok", settings);
        let code = hub.create_room();
        let join = Join {
            room: code,
            kind: ClientKind::Bot,
            backend: Backend::Cpu,
            capabilities: 0,
            layout_hash: LENET5_28.layout_hash(),
            resume_worker: None,
        };
        let (mut a, b) = (
            hub.join(&join, false).unwrap(),
            hub.join(&join, false).unwrap(),
        );
        let room = a.room.clone();
        // Worker a's connection does not drain its queue while the teacher moves its slider.
        for ms in 0..20 {
            room.teacher_control(&TeacherControl::Delay {
                device: Some(a.worker_id),
                ms,
            })
            .unwrap();
        }
        let mut rng = rand::rng();
        let push = Push {
            base_version: 0,
            local_steps: 1,
            samples: 1,
            loss: 1.0,
            payload: easel_protocol::codec::encode(Codec::Fp32, &[0.0; 44_426], &mut rng),
        };
        assert!(
            room.push(a.worker_id, &push, 10, 0).is_none(),
            "held at the barrier"
        );
        assert!(
            room.push(b.worker_id, &push, 10, 0).is_some(),
            "the round closes"
        );
        let mut orders = Vec::new();
        while let Ok(o) = a.controls.try_recv() {
            orders.push(o);
        }
        assert!(
            matches!(orders.as_slice(), [Order::Answer { .. }]),
            "{orders:?}"
        );
        // Twenty delays unread: one is pending, the newest.
        assert_eq!(
            a.pending.take(),
            [Control::Delay {
                worker: None,
                ms: 19
            }]
        );
        assert!(a.pending.is_empty());
    }

    #[test]
    fn a_resumed_worker_gets_back_its_delay_and_pause() {
        let hub = crate::hub::test_hub("tok", RoomSettings::default());
        let code = hub.create_room();
        let join = Join {
            room: code,
            kind: ClientKind::Browser,
            backend: Backend::Gpu,
            capabilities: 0,
            layout_hash: LENET5_28.layout_hash(),
            resume_worker: None,
        };
        let first = hub.join(&join, false).unwrap();
        assert!(
            first.restore.is_empty(),
            "nothing to restore for a new worker"
        );
        let room = first.room.clone();
        let id = first.worker_id;
        room.teacher_control(&TeacherControl::Delay {
            device: Some(id),
            ms: 2500,
        })
        .unwrap();
        room.teacher_control(&TeacherControl::Pause { device: Some(id) })
            .unwrap();
        // The page reloads: the connection goes, a new one resumes the same worker.
        room.leave(id, first.connection);
        let resume = Some(easel_protocol::Resume {
            worker: id,
            token: first.resume_token,
        });
        let again = hub
            .join(
                &Join {
                    resume_worker: resume,
                    ..join
                },
                false,
            )
            .unwrap();
        assert_eq!(again.worker_id, id);
        let restored: Vec<Message> = again
            .restore
            .iter()
            .map(|b| message::decode(b, hub.limits()).unwrap())
            .collect();
        assert_eq!(
            restored,
            [
                Message::Control(Control::Delay {
                    worker: None,
                    ms: 2500
                }),
                Message::Control(Control::Pause { worker: None }),
            ]
        );
    }

    #[test]
    fn teacher_commands_reach_the_connections_they_concern() {
        let hub = crate::hub::test_hub("tok", RoomSettings::default());
        let code = hub.create_room();
        let join = Join {
            room: code.clone(),
            kind: ClientKind::Bot,
            backend: Backend::Cpu,
            capabilities: 0,
            layout_hash: LENET5_28.layout_hash(),
            resume_worker: None,
        };
        let mut a = hub.join(&join, false).unwrap();
        let mut b = hub.join(&join, false).unwrap();
        let room = a.room.clone();
        let delay = TeacherControl::Delay {
            device: Some(a.worker_id),
            ms: 700,
        };
        let state = room.teacher_control(&delay).unwrap();
        assert_eq!(state["devices"][0]["state"], "delayed");
        assert_eq!(
            a.pending.take(),
            [Control::Delay {
                worker: None,
                ms: 700
            }]
        );
        assert!(b.pending.is_empty(), "only the delayed device hears");
        let too_long = TeacherControl::Delay {
            device: None,
            ms: MAX_DELAY_MS + 1,
        };
        assert!(room.teacher_control(&too_long).is_err());
        room.teacher_control(&TeacherControl::Remove {
            device: b.worker_id,
        })
        .unwrap();
        assert!(matches!(
            b.controls.try_recv(),
            Ok(Order::Close {
                code: close::REMOVED,
                ..
            })
        ));
        let partition = TeacherControl::Partition {
            scheme: "classes:2".into(),
        };
        let state = room.teacher_control(&partition).unwrap();
        assert_eq!(state["settings"]["partition"], "classes:2");
        assert!(matches!(
            a.controls.try_recv(),
            Ok(Order::Close {
                code: close::REJOIN,
                ..
            })
        ));
        assert!(
            b.controls.try_recv().is_err(),
            "a removed device is not told again"
        );
        let state = room
            .teacher_control(&TeacherControl::Reset { name: None })
            .unwrap();
        assert_eq!(state["run"], 2);
        assert_eq!(room.center().0, 1, "the reset center is the next version");
        assert_eq!(room.watched_version(), Some(1));
    }

    #[test]
    fn a_lesson_asks_every_tab_counts_votes_runs_its_arm_and_puts_the_room_back() {
        let hub = crate::hub::test_hub("tok", RoomSettings::default());
        let code = hub.create_room();
        let join = |kind| Join {
            room: code.clone(),
            kind,
            backend: Backend::Cpu,
            capabilities: 0,
            layout_hash: LENET5_28.layout_hash(),
            resume_worker: None,
        };
        let tab = hub.join(&join(ClientKind::Browser), false).unwrap();
        let bot = hub.join(&join(ClientKind::Bot), false).unwrap();
        let room = tab.room.clone();
        let opts = Options::new(Some(10), Some(0.9)).unwrap();
        assert!(
            room.ask_lesson("nope", opts)
                .unwrap_err()
                .contains("compression")
        );
        let v = room.ask_lesson("compression", opts).unwrap();
        assert_eq!(v["phase"]["phase"], "vote");
        assert_eq!(
            (v["voters"].as_u64(), v["plan"]["devices"].as_u64()),
            (Some(1), Some(2))
        );
        // The tab is asked; the bot is not.
        let q = tab
            .pending
            .take_question()
            .expect("the tab gets the question");
        assert_eq!(
            (q.lesson, q.phase),
            (1, easel_protocol::QuestionPhase::Open)
        );
        assert_eq!(bot.pending.take_question(), None);
        let voted = room
            .vote(
                tab.worker_id,
                Vote {
                    lesson: 1,
                    answer: 2,
                },
            )
            .unwrap();
        assert_eq!(voted.voted, Some(2));
        let bad = room
            .vote(
                tab.worker_id,
                Vote {
                    lesson: 1,
                    answer: 9,
                },
            )
            .unwrap_err();
        assert_eq!(bad.code, code::BAD_VOTE);
        assert_eq!(room.lesson_json()["tally"], serde_json::json!([0, 0, 1]));
        // A tab joining now is asked too, right after its Welcome.
        let late = hub.join(&join(ClientKind::Browser), false).unwrap();
        assert!(late.restore.iter().any(|m| m[5] == message::ty::QUESTION));
        // Run: the first arm's settings and a fresh named run.
        let before = room.with_room(|r| r.settings().hyper);
        let v = room.begin_lesson().unwrap();
        assert_eq!(v["phase"]["phase"], "arm");
        assert_eq!(v["phase"]["index"], 0);
        let runs = room.runs_json();
        assert_eq!(
            runs["runs"].as_array().unwrap().last().unwrap()["name"],
            "lesson 1 · fp32 (no compression)"
        );
        assert_eq!(
            tab.pending.take_question().map(|q| q.phase),
            Some(easel_protocol::QuestionPhase::Closed)
        );
        assert!(
            room.vote(
                tab.worker_id,
                Vote {
                    lesson: 1,
                    answer: 0
                }
            )
            .is_err()
        );
        assert!(
            room.ask_lesson("gossip", opts)
                .unwrap_err()
                .contains("end it first")
        );
        // The teacher ends it: the room's settings come back, the tabs put it away.
        room.with_room(|r| assert_eq!(r.settings().hyper.codec_up, Codec::Fp32));
        let v = room.end_lesson().unwrap();
        assert_eq!(v["phase"]["phase"], "over");
        assert_eq!(v["stopped"], "the teacher ended the lesson");
        room.with_room(|r| assert_eq!(r.settings().hyper, before));
        assert_eq!(
            tab.pending.take_question().map(|q| q.phase),
            Some(easel_protocol::QuestionPhase::Over)
        );
        drop((bot, late));
    }
}
