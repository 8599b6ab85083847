//! Durable rooms (`easel_relay::store`): the database's refusals (locked, corrupt, newer),
//! a checkpoint restored in process, and the real thing: `easel serve` killed with SIGKILL
//! mid-run and started again, then a second `easel serve` on the same database.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use easel_protocol::message::{self, Join, Resume, code};
use easel_protocol::{Backend, ClientKind, Codec, LENET5_28, Limits, Message, Outcome, Push};
use easel_relay::checkpoint;
use easel_relay::hub::{EvalPoint, Hub};
use easel_relay::room::RoomSettings;
use easel_relay::store::{self, RESTART_GAP, SCHEMA_VERSION, Store, StoreError};
use easel_relay::teacher::TeacherControl;

const N: usize = LENET5_28.param_count;

/// A fresh empty directory under the system's temp dir.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "easel-store-{name}-{}-{}",
        std::process::id(),
        easel_relay::room::wall_ms()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn join(room: &str, resume: Option<Resume>) -> Join {
    Join {
        room: room.into(),
        kind: ClientKind::Bot,
        backend: Backend::Cpu,
        capabilities: 0,
        layout_hash: LENET5_28.layout_hash(),
        resume_worker: resume,
    }
}

fn push(base: u64, seed: u64) -> Push {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let delta: Vec<f32> = (0..N)
        .map(|i| ((i as u64 * 31 + seed) % 17) as f32 * 1e-4 - 8e-4)
        .collect();
    Push {
        base_version: base,
        local_steps: 4,
        samples: 128,
        loss: 1.5,
        payload: easel_protocol::codec::encode(Codec::Fp32, &delta, &mut rng),
    }
}

fn ack_of(bytes: &[u8]) -> Outcome {
    match message::decode(bytes, &Limits::default()) {
        Ok(Message::Ack(a)) => a.outcome,
        other => panic!("expected an Ack, got {other:?}"),
    }
}

#[test]
fn a_missing_database_is_created_in_wal_mode_with_the_current_schema() {
    let dir = temp_dir("missing");
    let path = dir.join("sub/dir/easel.db");
    let s = Store::open(&path).expect("created");
    assert!(path.is_file());
    drop(s);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let v: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    // Opening it again migrates nothing and keeps it.
    drop(conn);
    Store::open(&path).expect("opens again");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_second_open_is_refused_while_the_first_holds_the_lock() {
    let dir = temp_dir("locked");
    let path = dir.join("easel.db");
    let first = Store::open(&path).unwrap();
    let err = Store::open(&path).expect_err("the lock is held");
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("easel.db") && msg.contains("another `easel serve`"),
        "{msg}"
    );
    // Reading is allowed beside the server (WAL).
    assert!(
        Store::open_read_only(&path)
            .unwrap()
            .rooms()
            .unwrap()
            .is_empty()
    );
    drop(first);
    Store::open(&path).expect("free again once the first is closed");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_file_of_random_bytes_is_refused_by_name_and_left_untouched() {
    use rand::RngExt;
    let dir = temp_dir("corrupt");
    let path = dir.join("easel.db");
    let bytes: Vec<u8> = (0..8192).map(|_| rand::rng().random()).collect();
    std::fs::write(&path, &bytes).unwrap();
    for err in [
        Store::open(&path).expect_err("not SQLite"),
        Store::open_read_only(&path).expect_err("not SQLite"),
    ] {
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(
            msg.contains("left untouched") && msg.contains("move it aside"),
            "{msg}"
        );
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "the file is unchanged"
    );
    assert!(!dir.join("easel.db-wal").exists() && !dir.join("easel.db-shm").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_database_from_a_newer_easel_is_refused_and_left_untouched() {
    let dir = temp_dir("newer");
    let path = dir.join("easel.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE future (x); INSERT INTO future VALUES (1);")
            .unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 7)
            .unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    for err in [
        Store::open(&path).expect_err("newer"),
        Store::open_read_only(&path).expect_err("newer"),
    ] {
        match &err {
            StoreError::Newer {
                found, supported, ..
            } => assert_eq!((*found, *supported), (SCHEMA_VERSION + 7, SCHEMA_VERSION)),
            other => panic!("{other}"),
        }
        assert!(err.to_string().contains("newer Easel"), "{err}");
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the file is unchanged"
    );
    assert!(!dir.join("easel.db-wal").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_admin_token_is_kept_beside_the_database_and_read_back() {
    let dir = temp_dir("token");
    let path = dir.join("easel.db");
    let t = store::admin_token(&path).unwrap();
    assert_eq!(t.len(), 32);
    assert_eq!(
        store::admin_token(&path).unwrap(),
        t,
        "the same after a restart"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(store::token_path(&path))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpointed_room_comes_back_with_its_center_runs_ledger_and_roster() {
    let dir = temp_dir("restore");
    let path = dir.join("easel.db");
    let hub = Hub::new(
        "tok".into(),
        Limits::default(),
        RoomSettings::default(),
        std::sync::Arc::new(easel_client::Lenet),
    );
    let db = Arc::new(Store::open(&path).unwrap());
    hub.set_store(db.clone());
    let code = hub.create_room();
    let slot = hub.room(&code).unwrap();
    let s = hub.join(&join(&code, None), false).unwrap();
    let id = s.worker_id;
    let Ok(Message::Welcome(welcome)) = message::decode(&s.welcome, &Limits::default()) else {
        panic!("a Welcome")
    };
    let resume = Resume {
        worker: id,
        token: welcome.resume_token,
    };
    let token = store::token_sha256("tok");
    let mut version = 0;
    for i in 0..5 {
        slot.push(id, &push(version, i), 1000, 0).expect("answered");
        version = slot.center().0;
    }
    slot.record_eval(EvalPoint {
        wall_ms: easel_relay::room::wall_ms(),
        version,
        accuracy: 0.5,
        loss: f64::NAN,
    });
    assert_eq!(checkpoint::checkpoint_rooms(&hub, &db, &token).await, 1);
    // A reset empties the ledger: the saved one starts again too.
    slot.start_run("second", true);
    version = slot.center().0;
    for i in 0..3 {
        slot.push(id, &push(version, 10 + i), 1000, 0).unwrap();
        version = slot.center().0;
    }
    // A refused push is in the ledger too.
    slot.push(id, &push(version + 50, 99), 1000, 0).unwrap();
    slot.teacher_control(&TeacherControl::Delay {
        device: Some(id),
        ms: 700,
    })
    .unwrap();
    assert_eq!(checkpoint::checkpoint_rooms(&hub, &db, &token).await, 1);
    // Nothing new: a checkpoint writes only the settings and the roster again.
    assert_eq!(checkpoint::checkpoint_rooms(&hub, &db, &token).await, 1);
    let (saved_version, saved_center) = db.center(&code).unwrap().unwrap();
    assert_eq!(saved_version, version);
    assert_eq!(&saved_center[..], &slot.center().1[..]);
    let csv = [slot.run_csv(1).unwrap(), slot.run_csv(2).unwrap()];
    let ledger = slot.ledger_csv();
    drop((hub, slot, s));
    drop(db);

    // Opened again in this process. Other tests here spawn `easel serve` children; a child
    // forked in the instant before it execs holds a copy of every descriptor, the lock
    // file's among them, so the lock may take a moment to be free (a restart is a new
    // process and never sees this).
    let t0 = Instant::now();
    let db = loop {
        match Store::open(&path) {
            Err(StoreError::Locked { .. }) if t0.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => break Arc::new(other.unwrap()),
        }
    };
    assert_eq!(db.latest_room().unwrap(), Some(code.clone()));
    let rooms = db.rooms().unwrap();
    assert_eq!(rooms[0].runs.len(), 2);
    assert_eq!(db.run(&code, 1).unwrap().unwrap().to_csv(), csv[0]);
    let restored = db.load_room(&code).unwrap().expect("saved");
    assert_eq!(restored.saved_version, version);
    let hub = Hub::new(
        "tok".into(),
        Limits::default(),
        RoomSettings::default(),
        std::sync::Arc::new(easel_client::Lenet),
    );
    hub.set_store(db.clone());
    assert_eq!(hub.restore_room(restored), code);
    let slot = hub.room(&code).unwrap();
    let (v, center) = slot.center();
    assert_eq!(v, version + RESTART_GAP);
    assert_eq!(&center[..], &saved_center[..]);
    assert_eq!(slot.run_csv(1).unwrap(), csv[0]);
    assert_eq!(slot.run_csv(2).unwrap(), csv[1]);
    assert_eq!(slot.ledger_csv(), ledger);
    // The worker resumes as itself with its delay; a push from before is refused with
    // RESYNC, one from the restored center is applied.
    let again = hub.join(&join(&code, Some(resume)), false).unwrap();
    assert_eq!(again.worker_id, id);
    assert_eq!(again.restore.len(), 1, "its delay comes back");
    let (ack, _) = slot.push(id, &push(version, 7), 1000, 0).unwrap();
    assert!(
        matches!(ack_of(&ack), Outcome::Refused { code: c, .. } if c == code::RESYNC),
        "{:?}",
        ack_of(&ack)
    );
    let (ack, _) = slot.push(id, &push(v, 8), 1000, 0).unwrap();
    assert!(
        matches!(ack_of(&ack), Outcome::Accepted { version, .. } if version == v + 1),
        "{:?}",
        ack_of(&ack)
    );
    // A new participant gets a fresh id, after the restored ones.
    let newcomer = hub.join(&join(&code, None), false).unwrap();
    assert_eq!(newcomer.worker_id, id + 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- The real process: `easel serve` killed with SIGKILL, started again. ----

/// `easel serve` on 127.0.0.1 with its data in `home`, checkpointing every second.
struct Serve {
    child: Child,
    http: SocketAddr,
    code: String,
    token: String,
    teacher: String,
    lines: Vec<String>,
    /// From spawning to the last line of the banner.
    startup: Duration,
}

fn source(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn serve_command(home: &Path) -> Command {
    serve_command_on(home, "127.0.0.1:0")
}

/// [`serve_command`] with its HTTP listener on `http` (a restart on the same port, where
/// the bots reconnect).
fn serve_command_on(home: &Path, http: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_easel"));
    cmd.args(["serve", "--https", "off", "--http", http])
        .args(["--checkpoint-every", "1"])
        .arg("--www")
        .arg(source("www"))
        .arg("--data")
        .arg(source("data/mnist.bin"))
        .env("EASEL_HOME", home)
        .env_remove("XDG_DATA_HOME");
    cmd
}

fn start_serve(home: &Path, extra: &[&str]) -> Serve {
    start_serve_on(home, "127.0.0.1:0", extra)
}

fn start_serve_on(home: &Path, http: &str, extra: &[&str]) -> Serve {
    let t0 = Instant::now();
    let mut child = serve_command_on(home, http)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the easel binary runs");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        let n = out.read_line(&mut line).unwrap();
        assert!(n > 0, "easel serve stopped early: {lines:?}");
        let line = line.trim_end().to_string();
        let done = line.starts_with("Ctrl-C stops");
        lines.push(line);
        if done {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "{lines:?}");
    }
    let startup = t0.elapsed();
    // Keep draining its output so it never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let after = |prefix: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in {lines:?}"))
            .trim()
            .to_string()
    };
    let http: SocketAddr = after("listening on http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let code = after("room code:");
    let teacher = after("teacher (this computer only):");
    let token = teacher.split("admin=").nth(1).unwrap().to_string();
    Serve {
        child,
        http,
        code,
        token,
        teacher,
        lines,
        startup,
    }
}

impl Drop for Serve {
    /// A failed test leaves no relay behind (it would hold the test's output open).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The teacher URL without its port (each start picks a free one).
fn without_port(url: &str) -> String {
    let (_, rest) = url.split_once("/teacher.html").expect("a teacher URL");
    rest.to_string()
}

/// GET over a fresh connection: status and body (the relay sends bodies with a length).
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).unwrap();
    let status = raw[9..12].parse().unwrap();
    let body = raw
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A raw worker: joins (resuming `resume`), then pushes and reads each Ack and Center.
struct Worker {
    ws: Ws,
    id: u64,
    /// What resumes this worker (its id and secret token).
    resume: Resume,
    base: u64,
    /// The newest version this device has seen.
    seen: u64,
}

async fn recv(ws: &mut Ws) -> Message {
    use futures_util::StreamExt;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("an answer in time")
            .expect("open")
            .expect("a message");
        if let tokio_tungstenite::tungstenite::Message::Binary(b) = m {
            return message::decode(&b, &Limits::default()).expect("a valid message");
        }
    }
}

async fn send(ws: &mut Ws, m: &Message) {
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::binary(
        message::encode(m),
    ))
    .await
    .unwrap();
}

impl Worker {
    async fn join(addr: SocketAddr, room: &str, resume: Option<Resume>) -> (Worker, Vec<f32>) {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp)
            .await
            .unwrap();
        send(&mut ws, &Message::Join(join(room, resume))).await;
        let Message::Welcome(w) = recv(&mut ws).await else {
            panic!("expected a Welcome")
        };
        let center = easel_protocol::codec::decode(&w.center, N).unwrap();
        let worker = Worker {
            ws,
            id: w.worker_id,
            resume: Resume {
                worker: w.worker_id,
                token: w.resume_token,
            },
            base: w.center_version,
            seen: w.center_version,
        };
        (worker, center)
    }

    /// One push from `base`: its outcome; the Center after it becomes the next base.
    async fn push_from(&mut self, base: u64, seed: u64) -> Outcome {
        send(&mut self.ws, &Message::Push(push(base, seed))).await;
        let Message::Ack(ack) = recv(&mut self.ws).await else {
            panic!("expected an Ack")
        };
        if let Outcome::Accepted { version, .. } = ack.outcome {
            self.seen = self.seen.max(version);
        }
        let Message::Center(c) = recv(&mut self.ws).await else {
            panic!("expected a Center")
        };
        self.base = c.version;
        self.seen = self.seen.max(c.version);
        ack.outcome
    }

    async fn push(&mut self, seed: u64) -> Outcome {
        self.push_from(self.base, seed).await
    }
}

/// The CSV lines of `after` start with every line of `before`.
fn assert_prefix(before: &str, after: &str, what: &str) {
    let (b, a): (Vec<&str>, Vec<&str>) = (before.lines().collect(), after.lines().collect());
    assert!(b.len() > 1, "{what}: nothing before the kill");
    assert!(
        a.len() >= b.len(),
        "{what}: {} rows after, {} before",
        a.len(),
        b.len()
    );
    assert_eq!(
        &a[..b.len()],
        &b[..],
        "{what}: the rows saved before the kill"
    );
}

#[test]
fn a_relay_killed_mid_run_comes_back_with_its_room_token_runs_and_center() {
    let home = temp_dir("sigkill");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut a = start_serve(&home, &[]);
    assert!(
        a.lines.iter().any(|l| l.starts_with("rooms are saved in")),
        "{:?}",
        a.lines
    );
    let (addr, room, token) = (a.http, a.code.clone(), a.token.clone());
    let (mut w, _) = rt.block_on(Worker::join(addr, &room, None));
    for i in 0..20 {
        let o = rt.block_on(w.push(i));
        assert!(matches!(o, Outcome::Accepted { .. }), "{o:?}");
    }
    // Past a checkpoint (every second), then what the teacher would download.
    std::thread::sleep(Duration::from_millis(2500));
    let (s, run_before) = get(addr, &format!("/api/rooms/{room}/runs/1.csv?admin={token}"));
    assert_eq!(s, 200, "{run_before}");
    let (s, ledger_before) = get(addr, &format!("/api/rooms/{room}/ledger.csv?admin={token}"));
    assert_eq!(s, 200);
    // Mid-run: pushes go on, and the relay dies between two of them.
    let t = Instant::now();
    let mut pushes_after = 0;
    while t.elapsed() < Duration::from_millis(1500) {
        rt.block_on(w.push(100 + pushes_after));
        pushes_after += 1;
    }
    a.child.kill().unwrap(); // SIGKILL
    a.child.wait().unwrap();
    let killed_at = Instant::now();
    let (seen, id, resume) = (w.seen, w.id, w.resume);
    drop(w);

    // What the last checkpoint holds.
    let db_path = home.join("easel.db");
    let (saved, saved_center) = {
        let db = Store::open_read_only(&db_path).unwrap();
        db.center(&room).unwrap().expect("a saved center")
    };
    assert!(saved <= seen, "saved {saved}, seen {seen}");

    let b = start_serve(&home, &[]);
    let restart = killed_at.elapsed();
    assert_eq!(b.code, room, "the same room: {:?}", b.lines);
    assert_eq!(b.token, token, "the same admin token");
    assert_eq!(
        without_port(&b.teacher),
        without_port(&a.teacher),
        "the same teacher URL (on the port given)"
    );
    let addr = b.http;
    let (s, _) = get(addr, &format!("/api/rooms/{room}/runs?admin={token}"));
    assert_eq!(s, 200, "the old token opens the dashboard's API");

    // A second `easel serve` on the same database is refused while this one runs.
    let second = serve_command(&home).output().unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("in use by another `easel serve`") && err.contains("easel.db"),
        "{err}"
    );

    // The device resumes as itself; the center is the checkpoint's, under a newer version.
    let (mut w, center) = rt.block_on(Worker::join(addr, &room, Some(resume)));
    assert_eq!(w.id, id);
    assert!(
        w.base > seen,
        "restored version {} must exceed {seen}",
        w.base
    );
    assert_eq!(w.base, saved + RESTART_GAP);
    assert_eq!(center, saved_center, "the checkpoint's center");
    let o = rt.block_on(w.push_from(seen, 1000));
    assert!(
        matches!(o, Outcome::Refused { code: c, .. } if c == code::RESYNC),
        "a push from before the restart: {o:?}"
    );
    let o = rt.block_on(w.push(1001));
    assert!(matches!(o, Outcome::Accepted { .. }), "{o:?}");

    let (_, run_after) = get(addr, &format!("/api/rooms/{room}/runs/1.csv?admin={token}"));
    assert_prefix(&run_before, &run_after, "runs/1.csv");
    let (_, ledger_after) = get(addr, &format!("/api/rooms/{room}/ledger.csv?admin={token}"));
    assert_prefix(&ledger_before, &ledger_after, "ledger.csv");
    let (s, list) = get(addr, &format!("/api/saved/rooms?admin={token}"));
    assert!(s == 200 && list.contains(&room), "{list}");
    let (s, saved_csv) = get(
        addr,
        &format!("/api/saved/rooms/{room}/runs/1.csv?admin={token}"),
    );
    assert_eq!(s, 200);
    assert_prefix(&run_before, &saved_csv, "saved runs/1.csv");
    assert_eq!(get(addr, "/api/saved/rooms?admin=nope").0, 401);

    // The command line reads the same database beside the running relay.
    let list = Command::new(env!("CARGO_BIN_EXE_easel"))
        .args(["rooms", "list"])
        .env("EASEL_HOME", &home)
        .output()
        .unwrap();
    assert!(list.status.success(), "{list:?}");
    assert!(String::from_utf8_lossy(&list.stdout).contains(&room));
    let export = Command::new(env!("CARGO_BIN_EXE_easel"))
        .args(["rooms", "export", &room, "1", "--format", "csv"])
        .env("EASEL_HOME", &home)
        .output()
        .unwrap();
    assert!(export.status.success(), "{export:?}");
    assert_prefix(
        &run_before,
        &String::from_utf8_lossy(&export.stdout),
        "easel rooms export",
    );

    println!(
        "checkpoint every 1 s; {pushes_after} pushes after the last download; versions seen \
         {seen}, saved {saved} (lost {}); restarted in {:.2} s (banner {:.2} s); resumed at {}",
        seen - saved,
        restart.as_secs_f64(),
        b.startup.as_secs_f64(),
        w.base
    );

    // `--new-room` starts fresh; the old room stays listed.
    drop(b);
    let c = start_serve(&home, &["--new-room"]);
    assert_ne!(c.code, room, "a fresh room");
    let fresh = c.code.clone();
    drop(c);
    let rooms = Store::open_read_only(&db_path).unwrap().rooms().unwrap();
    assert!(rooms.iter().any(|r| r.code == room) && rooms.iter().any(|r| r.code == fresh));
    std::fs::remove_dir_all(&home).unwrap();
}

/// The accepted rows of a ledger CSV: `(worker, base, version, wall_ms)`.
fn accepted_rows(csv: &str) -> Vec<(u64, u64, u64, u64)> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().expect("a header").split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).expect(name);
    let (w, b, v, c, t) = (
        col("worker"),
        col("base"),
        col("version"),
        col("code"),
        col("wall_ms"),
    );
    lines
        .filter_map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            let num = |i: usize| f.get(i)?.parse::<u64>().ok();
            (num(c)? == 0).then_some(())?;
            Some((num(w)?, num(b)?, num(v)?, num(t)?))
        })
        .collect()
}

/// Polls `cond` every 200 ms until it gives a value or `limit` passes.
fn wait_for<T>(limit: Duration, what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `easel bots` (a separate process, real training on the digits) against `easel serve`;
/// the relay is SIGKILLed mid-run and started again on the same database and port. Every
/// bot comes back by itself as the same worker (no new worker id appears), has pushes
/// accepted again, and every version it is given after the restart is above every version
/// any device was given before the kill.
#[test]
fn bots_resume_as_themselves_after_the_relay_is_killed_and_restarted() {
    const BOTS: usize = 3;
    let home = temp_dir("sigkill-bots");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let http = format!("127.0.0.1:{port}");
    let mut a = start_serve_on(&home, &http, &[]);
    let (addr, room, token) = (a.http, a.code.clone(), a.token.clone());
    let ledger = |addr: SocketAddr| {
        let (s, csv) = get(addr, &format!("/api/rooms/{room}/ledger.csv?admin={token}"));
        assert_eq!(s, 200, "{csv}");
        accepted_rows(&csv)
    };
    let mut bots = Command::new(env!("CARGO_BIN_EXE_easel"))
        .args([
            "bots",
            "--relay",
            &format!("ws://{http}/ws"),
            "--room",
            &room,
        ])
        .args(["--count", &BOTS.to_string(), "--every", "1"])
        .arg("--data")
        .arg(source("data/mnist.bin"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("easel bots runs");
    struct Kill<'a>(&'a mut Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let bots = Kill(&mut bots);

    // Every bot trained and was accepted a few times.
    let workers = wait_for(Duration::from_secs(120), "every bot pushing", || {
        let rows = ledger(addr);
        let mut ids: Vec<u64> = rows.iter().map(|r| r.0).collect();
        ids.sort_unstable();
        ids.dedup();
        let each = ids
            .iter()
            .all(|id| rows.iter().filter(|r| r.0 == *id).count() >= 2);
        (ids.len() == BOTS && each).then_some(ids)
    });
    // Past a checkpoint (every second), then killed between pushes.
    std::thread::sleep(Duration::from_millis(1500));
    let before = ledger(addr);
    let newest_before = before.iter().map(|r| r.2).max().unwrap();
    a.child.kill().unwrap(); // SIGKILL
    a.child.wait().unwrap();
    let killed_at = Instant::now();
    let killed_ms = easel_relay::room::wall_ms();
    // What any device was given before the kill: at most what the last rows said, plus the
    // versions of pushes answered between that download and the kill (the same number of
    // pushes at most again; the relay makes one version per push).
    let given_before = newest_before + before.len() as u64;

    std::thread::sleep(Duration::from_millis(500));
    assert!(
        bots.0.try_wait().unwrap().is_none(),
        "easel bots must keep running while the relay is down"
    );
    let b = start_serve_on(&home, &http, &[]);
    assert_eq!(
        (b.code.as_str(), b.token.as_str()),
        (room.as_str(), token.as_str())
    );
    let addr = b.http;
    assert_eq!(addr.port(), port);

    // Each bot reconnects by itself (backoff, at most 10 s) and is accepted again.
    let after = wait_for(Duration::from_secs(90), "every bot accepted again", || {
        let rows: Vec<_> = ledger(addr)
            .into_iter()
            .filter(|r| r.3 > killed_ms)
            .collect();
        let all = workers.iter().all(|id| rows.iter().any(|r| r.0 == *id));
        all.then_some(rows)
    });
    let resumed = killed_at.elapsed();
    for &(worker, base, version, _) in &after {
        assert!(
            workers.contains(&worker),
            "worker {worker} is new: a bot joined again instead of resuming {workers:?}"
        );
        assert!(
            base > given_before && version > base,
            "worker {worker}: push from {base} made {version} after the restart, \
             not above the {given_before} given before the kill"
        );
    }
    // The rows saved before the kill are still there, as they were.
    let rows = ledger(addr);
    let saved: Vec<_> = rows.iter().copied().filter(|r| r.3 <= killed_ms).collect();
    // The rows there 1.5 s before the kill were checkpointed (every second).
    assert!(saved.len() >= 2 * BOTS, "{} rows kept", saved.len());
    let n = saved.len().min(before.len());
    assert_eq!(
        saved[..n],
        before[..n],
        "the ledger rows of the last checkpoint"
    );
    assert!(
        bots.0.try_wait().unwrap().is_none(),
        "easel bots still running"
    );
    println!(
        "{BOTS} bots: {} pushes accepted before the kill (newest version {newest_before}, {} \
         kept by the checkpoint); all {BOTS} accepted again as the same workers {:.1} s after \
         the kill, at versions from {}",
        before.len(),
        saved.len(),
        resumed.as_secs_f64(),
        after.iter().map(|r| r.2).min().unwrap()
    );
    drop(b);
    drop(bots);
    std::fs::remove_dir_all(&home).unwrap();
}

/// `easel rooms apply`: a simulator configuration's strategy, training settings and
/// partition reach a live room through the teacher URL; one the room's vocabulary cannot
/// say (a codec without a name) is refused with the setting named, and changes nothing.
#[test]
fn an_experiment_file_is_applied_to_a_live_room() {
    let home = temp_dir("apply");
    let serve = start_serve(&home, &[]);
    let base = std::fs::read_to_string(source("experiments/single/easgd.toml")).unwrap();
    let strategy = base.find("[strategy]").unwrap();
    let fedavg = format!(
        "{}[strategy]\nkind = \"fedavg\"\nk = 4\nm_of_n = 3\n",
        base[..strategy].replace("partition = \"iid\"", "partition = \"classes:2\"")
    );
    let path = home.join("fedavg.toml");
    std::fs::write(&path, &fedavg).unwrap();
    let apply = |file: &Path| {
        Command::new(env!("CARGO_BIN_EXE_easel"))
            .args(["rooms", "apply"])
            .arg(file)
            .args(["--teacher", &serve.teacher])
            .output()
            .unwrap()
    };
    let out = apply(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("strategy \"fedavg:3\""), "{stdout}");
    assert!(stdout.contains("local steps 4"), "{stdout}");
    assert!(stdout.contains("push codec \"qsgd8\""), "{stdout}");
    assert!(stdout.contains("partition classes:2"), "{stdout}");
    // Applied twice: the same settings, and no partition change the second time.
    let again = apply(&path);
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(
        again.status.success() && !stdout.contains("partition"),
        "{stdout}"
    );

    let odd = fedavg.replace("bucket = 512", "bucket = 100");
    let odd_path = home.join("odd.toml");
    std::fs::write(&odd_path, odd).unwrap();
    let refused = apply(&odd_path);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(stderr.contains("codec"), "{stderr}");
}
