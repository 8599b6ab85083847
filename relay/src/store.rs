//! Durable rooms: one SQLite database (`easel.db` in [`crate::tls::data_dir`]) that keeps
//! every room's settings and roster, its last few centers, its named runs with their
//! series, and its ledger, so that a relay killed (`kill -9`, a closed laptop) and started
//! again resumes the lesson: the same room code, the same teacher URL, the center of the
//! last checkpoint, every run and ledger row written before it.
//!
//! How it is written: a checkpoint task ([`spawn`], every [`Config::checkpoint_every`],
//! 5 s by default, and once more on a clean shutdown) copies what changed under each room's
//! lock ([`crate::hub::RoomSlot::checkpoint`]: settings, roster, the center when its version
//! moved, the ledger rows and run points added since the last checkpoint), releases the
//! lock, and writes the copy in one transaction on a blocking thread. Nothing here runs on
//! the async reactor or under a room's lock.
//!
//! The version rule: a restored room's center is the checkpoint's, under the version
//! `saved + RESTART_GAP`, alone in its ring. Between the checkpoint and the kill the dead
//! relay made fewer than [`RESTART_GAP`] versions (one per applied push: a room makes at
//! most a few thousand a second and checkpoints every few seconds; the task warns when an
//! interval comes near the gap), so no device ever sees a version go backwards, and a push
//! computed from any older version is refused with RESYNC: its worker takes the new center.
//!
//! The admin token: the database keeps only its SHA-256 (`rooms.token_sha256`); the token
//! itself is in a file beside the database ([`token_path`], mode 0600), read again on every
//! start, so the teacher URL printed after a restart is the one printed before it. A copy
//! of the database (to share exports) carries no dashboard access.
//!
//! Failures are typed ([`StoreError`]) and never lose the file: a database held by another
//! `easel serve` (an exclusive `flock` on `easel.db.lock`), one that is not SQLite, or one
//! from a newer Easel (`PRAGMA user_version` above [`SCHEMA_VERSION`]) is refused before
//! anything writes to it.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ledger::{Ledger, Record, Totals, WorkerStats};
use crate::room::{Partition, Room, RoomSettings, RoomSnapshot, WorkerRecord};
use crate::runs::{EvalPoint, MAX_EVALS, MAX_PUSHES, PushPoint, Run, Runs, Series};

/// The schema this relay writes; `PRAGMA user_version` of its databases.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;
/// Versions a restored room skips past its checkpoint (see the module's version rule).
pub const RESTART_GAP: u64 = 1_000_000;
/// Centers kept per room (the newest is the one restored).
pub const KEEP_CENTERS: usize = 3;
/// The database file's name in [`crate::tls::data_dir`].
pub const DB_FILE: &str = "easel.db";
/// Default checkpoint interval.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);

/// The migrations, in order: migration `i` takes a database from `user_version = i` to
/// `i + 1`. Append only: a released migration never changes.
const MIGRATIONS: &[&str] = &[
    // 1: rooms, centers, runs and their series, the ledger.
    "CREATE TABLE rooms (
        code TEXT PRIMARY KEY,
        token_sha256 TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        version INTEGER NOT NULL,
        settings TEXT NOT NULL,
        state TEXT NOT NULL
    );
    CREATE TABLE centers (
        room TEXT NOT NULL REFERENCES rooms(code),
        version INTEGER NOT NULL,
        wall_ms INTEGER NOT NULL,
        params BLOB NOT NULL,
        PRIMARY KEY (room, version)
    );
    CREATE TABLE runs (
        room TEXT NOT NULL REFERENCES rooms(code),
        id INTEGER NOT NULL,
        name TEXT NOT NULL,
        started_ms INTEGER NOT NULL,
        ended_ms INTEGER,
        settings TEXT NOT NULL,
        evals_total INTEGER NOT NULL,
        pushes_total INTEGER NOT NULL,
        PRIMARY KEY (room, id)
    );
    CREATE TABLE run_evals (
        room TEXT NOT NULL, run INTEGER NOT NULL, n INTEGER NOT NULL,
        wall_ms INTEGER NOT NULL, version INTEGER NOT NULL, accuracy REAL, loss REAL,
        PRIMARY KEY (room, run, n)
    );
    CREATE TABLE run_pushes (
        room TEXT NOT NULL, run INTEGER NOT NULL, n INTEGER NOT NULL,
        wall_ms INTEGER NOT NULL, worker INTEGER NOT NULL, tau INTEGER NOT NULL,
        alpha_eff REAL, view_distance REAL, worker_distance REAL,
        bytes_in INTEGER NOT NULL, bytes_out INTEGER NOT NULL, local_steps INTEGER NOT NULL,
        accepted INTEGER NOT NULL, version INTEGER, peer INTEGER,
        PRIMARY KEY (room, run, n)
    );
    CREATE TABLE ledger (
        room TEXT NOT NULL, seq INTEGER NOT NULL,
        wall_ms INTEGER NOT NULL, worker INTEGER NOT NULL, base INTEGER NOT NULL,
        current INTEGER NOT NULL, tau INTEGER NOT NULL, age_ms INTEGER,
        local_steps INTEGER NOT NULL, alpha_eff REAL, worker_distance REAL,
        view_distance REAL, delta_norm REAL, bytes_in INTEGER NOT NULL,
        bytes_out INTEGER NOT NULL, version INTEGER, peer INTEGER,
        code INTEGER NOT NULL, reason TEXT NOT NULL,
        PRIMARY KEY (room, seq)
    );",
];

/// Why the database cannot be used. Each message names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "{path} is in use by another `easel serve` (it holds {lock}): stop that one first, \
         or pass --db with another file"
    )]
    Locked { path: PathBuf, lock: PathBuf },
    #[error(
        "{path} is not an Easel database ({why}); it was left untouched: move it aside \
         (or pass --db with another file) and start again"
    )]
    Corrupt { path: PathBuf, why: String },
    #[error(
        "{path} was written by a newer Easel (schema version {found}; this one reads up to \
         {supported}); it was left untouched: run the newer easel, or pass --db with another file"
    )]
    Newer {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("{path} does not exist: start `easel serve` once to create it, or pass --db")]
    Missing { path: PathBuf },
    #[error("cannot use {path}: {why}")]
    Io { path: PathBuf, why: String },
    #[error("database {path}: {source}")]
    Sql {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("the saved room {code} in {path} cannot be restored: {why}")]
    Bad {
        path: PathBuf,
        code: String,
        why: String,
    },
}

/// The database of one relay.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    /// One connection, used from blocking threads only (checkpoints, exports, restore).
    conn: Mutex<Connection>,
    /// The exclusive lock on `PATH.lock`, held while the store lives (the kernel drops it
    /// when the process dies, `kill -9` included). `None` for read-only stores.
    _lock: Option<File>,
}

/// `PATH.lock`: the file a serving relay holds an exclusive lock on.
pub fn lock_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

/// `PATH.token`: the admin token of the relay that serves this database (mode 0600).
pub fn token_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".token");
    PathBuf::from(p)
}

/// The default database: [`DB_FILE`] in [`crate::tls::data_dir`].
pub fn default_path() -> PathBuf {
    crate::tls::data_dir().join(DB_FILE)
}

/// The admin token kept beside `db`, made (32 hex digits, mode 0600) when there is none.
pub fn admin_token(db: &Path) -> Result<String, StoreError> {
    let path = token_path(db);
    let io = |e: std::io::Error| StoreError::Io {
        path: path.clone(),
        why: e.to_string(),
    };
    match std::fs::read_to_string(&path) {
        Ok(t) if is_token(t.trim()) => return Ok(t.trim().to_string()),
        Ok(_) => {
            return Err(StoreError::Io {
                path: path.clone(),
                why: "it does not hold a token (32 hex digits): delete it to make a new one \
                      (old teacher URLs then stop working)"
                    .into(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let token = crate::room::new_token();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    use std::io::Write;
    let mut f = opts.open(&path).map_err(io)?;
    f.write_all(token.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(token)
}

fn is_token(t: &str) -> bool {
    t.len() >= 16 && t.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// SHA-256 of a token, in hex.
pub fn token_sha256(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A room's settings as saved: the hyper-parameters in the protocol's own encoding (a
/// `Control::Settings` message, exact), the rest as JSON.
#[derive(Serialize, Deserialize)]
struct SavedSettings {
    hyper: Vec<u8>,
    max_norm: f32,
    partition: Partition,
    ledger_capacity: usize,
    init_seed: u64,
}

impl SavedSettings {
    fn of(s: &RoomSettings) -> SavedSettings {
        use easel_protocol::{Control, Message, message};
        SavedSettings {
            hyper: message::encode(&Message::Control(Control::Settings(s.hyper))),
            max_norm: s.max_norm,
            partition: s.partition.clone(),
            ledger_capacity: s.ledger_capacity,
            init_seed: s.init_seed,
        }
    }

    fn settings(self) -> Result<RoomSettings, String> {
        use easel_protocol::{Control, Limits, Message, message};
        let hyper = match message::decode(&self.hyper, &Limits::default()) {
            Ok(Message::Control(Control::Settings(h))) => h,
            Ok(other) => return Err(format!("the saved settings are a {other:?}")),
            Err(e) => return Err(format!("the saved settings do not decode: {e}")),
        };
        hyper
            .validate()
            .map_err(|e| format!("invalid saved setting: {e}"))?;
        Ok(RoomSettings {
            hyper,
            max_norm: self.max_norm,
            partition: self.partition,
            ledger_capacity: self.ledger_capacity,
            init_seed: self.init_seed,
        })
    }
}

/// The rest of a room's state, as JSON.
#[derive(Serialize, Deserialize)]
struct SavedState {
    workers: Vec<WorkerRecord>,
    next_id: u64,
    trainers: u32,
    next_run: u64,
    /// Resets of the room so far: the ledger restarts at each.
    resets: u64,
    totals: Totals,
    histogram: BTreeMap<u64, u64>,
    ledger_workers: BTreeMap<u64, WorkerStats>,
}

/// What a checkpoint copies of one room under its lock.
#[derive(Debug)]
pub struct Checkpoint {
    pub wall_ms: u64,
    pub room: RoomSnapshot,
    pub version: u64,
    /// The center, when its version differs from the last one written.
    pub center: Option<Arc<[f32]>>,
    /// The room was reset since the last checkpoint: the saved ledger starts again.
    pub ledger_restart: bool,
    pub resets: u64,
    pub totals: Totals,
    pub histogram: BTreeMap<u64, u64>,
    pub ledger_workers: BTreeMap<u64, WorkerStats>,
    /// Ledger records added since the last checkpoint.
    pub records: Vec<Record>,
    pub runs: Vec<RunCopy>,
    pub next_run: u64,
}

/// A run's header and the points added to it since the last checkpoint.
#[derive(Debug)]
pub struct RunCopy {
    pub id: u64,
    pub name: String,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    pub settings: serde_json::Value,
    pub evals_total: u64,
    pub pushes_total: u64,
    /// Evaluations numbered `evals_total - evals.len()` and on.
    pub evals: Vec<EvalPoint>,
    pub pushes: Vec<PushPoint>,
}

/// What a room's last successful checkpoint wrote, so the next one writes only what came
/// after it. Kept with the room.
#[derive(Clone, Debug, Default)]
pub struct Cursor {
    pub version: Option<u64>,
    pub resets: u64,
    /// The first ledger seq not written yet.
    pub ledger_next: u64,
    /// Per run id: evaluations and pushes written.
    pub runs: HashMap<u64, (u64, u64)>,
}

impl Cursor {
    /// The cursor once `ck` is written.
    pub fn after(ck: &Checkpoint) -> Cursor {
        Cursor {
            version: Some(ck.version),
            resets: ck.resets,
            ledger_next: ck.totals.pushes,
            runs: ck
                .runs
                .iter()
                .map(|r| (r.id, (r.evals_total, r.pushes_total)))
                .collect(),
        }
    }
}

/// A room as loaded from the database, ready for [`Hub::restore_room`].
#[derive(Debug)]
pub struct Restored {
    pub room: Room,
    pub runs: Runs,
    /// The current run's evaluations (the dashboard's accuracy chart).
    pub evals: Vec<EvalPoint>,
    pub resets: u64,
    /// The version the checkpoint saved (the room now runs at `saved + RESTART_GAP`).
    pub saved_version: u64,
    /// When the checkpoint was written.
    pub saved_ms: u64,
    /// What the database holds of it: everything loaded, but not the center under its new
    /// version, which the first checkpoint writes.
    pub cursor: Cursor,
}

/// A saved room, for lists.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SavedRoom {
    pub code: String,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub version: u64,
    pub runs: Vec<SavedRun>,
}

/// A saved run, for lists.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SavedRun {
    pub id: u64,
    pub name: String,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    pub evals: u64,
    pub pushes: u64,
}

impl Store {
    /// Opens (or creates) the database a relay serves from, and takes its lock: refused
    /// when another process holds it, when the file is not SQLite, or when it is from a
    /// newer Easel; in each case the file is left as it was.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let io = |p: &Path, e: std::io::Error| StoreError::Io {
            path: p.to_path_buf(),
            why: e.to_string(),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        }
        let lock_file = lock_path(path);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_file)
            .map_err(|e| io(&lock_file, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    path: path.to_path_buf(),
                    lock: lock_file,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_file, e)),
        }
        if path.exists() {
            // Checked on a read-only connection: nothing is written to a file refused.
            check_existing(path)?;
        }
        let sql = |source| StoreError::Sql {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = Connection::open(path).map_err(|e| classify(path, e))?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(sql)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(|e| classify(path, e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Io {
                path: path.to_path_buf(),
                why: format!("SQLite would not use WAL mode (journal_mode is {mode})"),
            });
        }
        // WAL with NORMAL: a commit survives the process being killed; a power cut may
        // lose the last checkpoints, never the file.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql)?;
        migrate(path, &mut conn)?;
        Ok(Store {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            _lock: Some(lock),
        })
    }

    /// Opens an existing database to read it (`easel rooms`), without its lock: a serving
    /// relay may be writing it (WAL lets both go on).
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing {
                path: path.to_path_buf(),
            });
        }
        check_existing(path)?;
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| classify(path, e))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(|source| StoreError::Sql {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Store {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            _lock: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sql(&self, source: rusqlite::Error) -> StoreError {
        classify(&self.path, source)
    }

    /// Writes one room's checkpoint in one transaction. Blocking: call it off the reactor.
    pub fn write(&self, token_sha256: &str, ck: &Checkpoint) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.sql(e))?;
        write_checkpoint(&tx, token_sha256, ck).map_err(|e| self.sql(e))?;
        tx.commit().map_err(|e| self.sql(e))
    }

    /// The code of the most recently checkpointed room, if any.
    pub fn latest_room(&self) -> Result<Option<String>, StoreError> {
        self.conn()
            .query_row(
                "SELECT code FROM rooms ORDER BY updated_ms DESC, created_ms DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.sql(e))
    }

    /// Every saved room, the most recent first, with its runs.
    pub fn rooms(&self) -> Result<Vec<SavedRoom>, StoreError> {
        let conn = self.conn();
        let run = |e| self.sql(e);
        let mut rooms: Vec<SavedRoom> = conn
            .prepare(
                "SELECT code, created_ms, updated_ms, version FROM rooms
                 ORDER BY updated_ms DESC, created_ms DESC",
            )
            .and_then(|mut st| {
                st.query_map([], |r| {
                    Ok(SavedRoom {
                        code: r.get(0)?,
                        created_ms: r.get::<_, i64>(1)? as u64,
                        updated_ms: r.get::<_, i64>(2)? as u64,
                        version: r.get::<_, i64>(3)? as u64,
                        runs: Vec::new(),
                    })
                })?
                .collect()
            })
            .map_err(run)?;
        let mut st = conn
            .prepare(
                "SELECT id, name, started_ms, ended_ms, evals_total, pushes_total FROM runs
                 WHERE room = ?1 ORDER BY id",
            )
            .map_err(run)?;
        for room in &mut rooms {
            room.runs = st
                .query_map([&room.code], |r| {
                    Ok(SavedRun {
                        id: r.get::<_, i64>(0)? as u64,
                        name: r.get(1)?,
                        started_ms: r.get::<_, i64>(2)? as u64,
                        ended_ms: r.get::<_, Option<i64>>(3)?.map(|v| v as u64),
                        evals: r.get::<_, i64>(4)? as u64,
                        pushes: r.get::<_, i64>(5)? as u64,
                    })
                })
                .and_then(|rows| rows.collect())
                .map_err(run)?;
        }
        Ok(rooms)
    }

    /// A saved run with its kept series (the export's source), if there is one.
    pub fn run(&self, code: &str, id: u64) -> Result<Option<Run>, StoreError> {
        let conn = self.conn();
        read_run(&conn, code, id).map_err(|e| self.sql(e))
    }

    /// A saved room's newest center and its version (as saved, before [`RESTART_GAP`]).
    pub fn center(&self, code: &str) -> Result<Option<(u64, Vec<f32>)>, StoreError> {
        let conn = self.conn();
        read_center(&conn, code).map_err(|e| self.sql(e))
    }

    /// Loads a saved room to serve it again (see the module's version rule).
    pub fn load_room(&self, code: &str) -> Result<Option<Restored>, StoreError> {
        let conn = self.conn();
        let bad = |why: String| StoreError::Bad {
            path: self.path.clone(),
            code: code.to_string(),
            why,
        };
        let row: Option<(String, String, i64, i64)> = conn
            .query_row(
                "SELECT settings, state, version, updated_ms FROM rooms WHERE code = ?1",
                [code],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(|e| self.sql(e))?;
        let Some((settings, state, version, updated_ms)) = row else {
            return Ok(None);
        };
        let settings: SavedSettings =
            serde_json::from_str(&settings).map_err(|e| bad(format!("settings: {e}")))?;
        let settings = settings.settings().map_err(bad)?;
        let state: SavedState =
            serde_json::from_str(&state).map_err(|e| bad(format!("state: {e}")))?;
        let (saved, center) = read_center(&conn, code)
            .map_err(|e| self.sql(e))?
            .ok_or_else(|| bad("no saved center".into()))?;
        if center.len() != easel_protocol::LENET5_28.param_count {
            return Err(bad(format!(
                "the saved center has {} values, not {}",
                center.len(),
                easel_protocol::LENET5_28.param_count
            )));
        }
        let saved = saved.max(version as u64);
        let records = read_ledger(&conn, code).map_err(|e| self.sql(e))?;
        let ledger = Ledger::restore(
            settings.ledger_capacity,
            records,
            state.totals,
            state.histogram,
            state.ledger_workers,
        );
        let ids: Vec<u64> = conn
            .prepare("SELECT id FROM runs WHERE room = ?1 ORDER BY id")
            .and_then(|mut st| {
                st.query_map([code], |r| r.get::<_, i64>(0).map(|v| v as u64))?
                    .collect()
            })
            .map_err(|e| self.sql(e))?;
        let skip = ids.len().saturating_sub(crate::runs::KEEP_RUNS);
        let mut runs = Vec::new();
        for id in ids.into_iter().skip(skip) {
            if let Some(r) = read_run(&conn, code, id).map_err(|e| self.sql(e))? {
                runs.push(r);
            }
        }
        let runs = Runs::restore(runs, state.next_run).ok_or_else(|| bad("no saved run".into()))?;
        let evals = runs.current().evals.iter().copied().collect();
        let cursor = Cursor {
            version: None,
            resets: state.resets,
            ledger_next: ledger.totals().pushes,
            runs: runs
                .all()
                .map(|r| (r.id, (r.evals.total(), r.pushes.total())))
                .collect(),
        };
        let snap = RoomSnapshot {
            code: code.to_string(),
            settings,
            workers: state.workers,
            next_id: state.next_id,
            trainers: state.trainers,
        };
        let room = Room::restore(snap, center, saved + RESTART_GAP, ledger, Instant::now());
        Ok(Some(Restored {
            room,
            runs,
            evals,
            resets: state.resets,
            saved_version: saved,
            saved_ms: updated_ms as u64,
            cursor,
        }))
    }
}

/// Refuses an existing file that is not SQLite or is from a newer Easel, reading it only.
fn check_existing(path: &Path) -> Result<(), StoreError> {
    let corrupt = |why: &str| StoreError::Corrupt {
        path: path.to_path_buf(),
        why: why.to_string(),
    };
    let mut head = Vec::with_capacity(100);
    File::open(path)
        .and_then(|f| f.take(100).read_to_end(&mut head))
        .map_err(|e| StoreError::Io {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
    if head.is_empty() {
        return Ok(()); // An empty file is an empty SQLite database.
    }
    if head.len() < 100 || !head.starts_with(b"SQLite format 3\0") {
        return Err(corrupt("it does not start with SQLite's header"));
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| classify(path, e))?;
    let found: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| classify(path, e))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::Newer {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    // Reads the schema: a damaged first page fails here.
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    })
    .map_err(|e| classify(path, e))?;
    Ok(())
}

/// SQLite's "not a database" and "malformed" as [`StoreError::Corrupt`].
fn classify(path: &Path, e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
            path: path.to_path_buf(),
            why: e.to_string(),
        },
        _ => StoreError::Sql {
            path: path.to_path_buf(),
            source: e,
        },
    }
}

/// Runs the migrations the database lacks, each in its own transaction.
fn migrate(path: &Path, conn: &mut Connection) -> Result<(), StoreError> {
    let sql = |source| StoreError::Sql {
        path: path.to_path_buf(),
        source,
    };
    let found: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::Newer {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (i, m) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        let tx = conn.transaction().map_err(sql)?;
        tx.execute_batch(m).map_err(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(sql)?;
        tx.commit().map_err(sql)?;
    }
    Ok(())
}

/// NaN as SQL NULL (SQLite would store it as NULL anyway), and back with [`unreal`].
fn real(x: f32) -> Option<f64> {
    (!x.is_nan()).then_some(f64::from(x))
}

fn unreal(x: Option<f64>) -> f32 {
    x.map_or(f32::NAN, |v| v as f32)
}

fn write_checkpoint(
    tx: &rusqlite::Transaction<'_>,
    token_sha256: &str,
    ck: &Checkpoint,
) -> rusqlite::Result<()> {
    let code = ck.room.code.as_str();
    let to_json = |e: serde_json::Error| rusqlite::Error::ToSqlConversionFailure(Box::new(e));
    let settings = serde_json::to_string(&SavedSettings::of(&ck.room.settings)).map_err(to_json)?;
    let state = serde_json::to_string(&SavedState {
        workers: ck.room.workers.clone(),
        next_id: ck.room.next_id,
        trainers: ck.room.trainers,
        next_run: ck.next_run,
        resets: ck.resets,
        totals: ck.totals.clone(),
        histogram: ck.histogram.clone(),
        ledger_workers: ck.ledger_workers.clone(),
    })
    .map_err(to_json)?;
    let ms = ck.wall_ms as i64;
    tx.execute(
        "INSERT INTO rooms (code, token_sha256, created_ms, updated_ms, version, settings, state)
         VALUES (?1, ?2, ?3, ?3, ?4, ?5, ?6)
         ON CONFLICT(code) DO UPDATE SET token_sha256 = ?2, updated_ms = ?3, version = ?4,
             settings = ?5, state = ?6",
        params![code, token_sha256, ms, ck.version as i64, settings, state],
    )?;
    if let Some(center) = &ck.center {
        let bytes: Vec<u8> = center.iter().flat_map(|v| v.to_le_bytes()).collect();
        tx.execute(
            "INSERT OR REPLACE INTO centers (room, version, wall_ms, params) VALUES (?1, ?2, ?3, ?4)",
            params![code, ck.version as i64, ms, bytes],
        )?;
        tx.execute(
            "DELETE FROM centers WHERE room = ?1 AND version NOT IN
             (SELECT version FROM centers WHERE room = ?1 ORDER BY version DESC LIMIT ?2)",
            params![code, KEEP_CENTERS as i64],
        )?;
    }
    if ck.ledger_restart {
        tx.execute("DELETE FROM ledger WHERE room = ?1", [code])?;
    }
    {
        let mut ins = tx.prepare_cached(
            "INSERT OR REPLACE INTO ledger (room, seq, wall_ms, worker, base, current, tau,
             age_ms, local_steps, alpha_eff, worker_distance, view_distance, delta_norm,
             bytes_in, bytes_out, version, peer, code, reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
        )?;
        for r in &ck.records {
            ins.execute(params![
                code,
                r.seq as i64,
                r.wall_ms as i64,
                r.worker as i64,
                r.base as i64,
                r.current as i64,
                r.tau as i64,
                r.age_ms.map(|v| v as i64),
                r.local_steps,
                real(r.alpha_eff),
                real(r.worker_distance),
                real(r.view_distance),
                real(r.delta_norm),
                r.bytes_in as i64,
                r.bytes_out as i64,
                r.version.map(|v| v as i64),
                r.peer.map(|v| v as i64),
                r.code,
                r.reason,
            ])?;
        }
    }
    let keep_from = ck
        .totals
        .pushes
        .saturating_sub(ck.room.settings.ledger_capacity as u64);
    tx.execute(
        "DELETE FROM ledger WHERE room = ?1 AND seq < ?2",
        params![code, keep_from as i64],
    )?;
    for run in &ck.runs {
        let settings = serde_json::to_string(&run.settings).map_err(to_json)?;
        tx.execute(
            "INSERT INTO runs (room, id, name, started_ms, ended_ms, settings, evals_total, pushes_total)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT(room, id) DO UPDATE SET name = ?3, ended_ms = ?5, evals_total = ?7,
                 pushes_total = ?8",
            params![
                code,
                run.id as i64,
                run.name,
                run.started_ms as i64,
                run.ended_ms.map(|v| v as i64),
                settings,
                run.evals_total as i64,
                run.pushes_total as i64
            ],
        )?;
        let mut ins = tx.prepare_cached(
            "INSERT OR REPLACE INTO run_evals (room, run, n, wall_ms, version, accuracy, loss)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        let first = run.evals_total - run.evals.len() as u64;
        for (i, e) in run.evals.iter().enumerate() {
            ins.execute(params![
                code,
                run.id as i64,
                (first + i as u64) as i64,
                e.wall_ms as i64,
                e.version as i64,
                e.accuracy.is_finite().then_some(e.accuracy),
                e.loss.is_finite().then_some(e.loss),
            ])?;
        }
        let mut ins = tx.prepare_cached(
            "INSERT OR REPLACE INTO run_pushes (room, run, n, wall_ms, worker, tau, alpha_eff,
             view_distance, worker_distance, bytes_in, bytes_out, local_steps, accepted, version, peer)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        )?;
        let first = run.pushes_total - run.pushes.len() as u64;
        for (i, p) in run.pushes.iter().enumerate() {
            ins.execute(params![
                code,
                run.id as i64,
                (first + i as u64) as i64,
                p.wall_ms as i64,
                p.worker as i64,
                p.tau as i64,
                real(p.alpha_eff),
                real(p.view_distance),
                real(p.worker_distance),
                p.bytes_in as i64,
                p.bytes_out as i64,
                p.local_steps,
                p.accepted,
                p.version.map(|v| v as i64),
                p.peer.map(|v| v as i64),
            ])?;
        }
        tx.execute(
            "DELETE FROM run_evals WHERE room = ?1 AND run = ?2 AND n < ?3",
            params![
                code,
                run.id as i64,
                run.evals_total.saturating_sub(MAX_EVALS as u64) as i64
            ],
        )?;
        tx.execute(
            "DELETE FROM run_pushes WHERE room = ?1 AND run = ?2 AND n < ?3",
            params![
                code,
                run.id as i64,
                run.pushes_total.saturating_sub(MAX_PUSHES as u64) as i64
            ],
        )?;
    }
    Ok(())
}

fn read_center(conn: &Connection, code: &str) -> rusqlite::Result<Option<(u64, Vec<f32>)>> {
    conn.query_row(
        "SELECT version, params FROM centers WHERE room = ?1 ORDER BY version DESC LIMIT 1",
        [code],
        |r| {
            let v: i64 = r.get(0)?;
            let b: Vec<u8> = r.get(1)?;
            let params = b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Ok((v as u64, params))
        },
    )
    .optional()
}

fn read_ledger(conn: &Connection, code: &str) -> rusqlite::Result<Vec<Record>> {
    let mut st = conn.prepare(
        "SELECT seq, wall_ms, worker, base, current, tau, age_ms, local_steps, alpha_eff,
         worker_distance, view_distance, delta_norm, bytes_in, bytes_out, version, peer, code,
         reason FROM ledger WHERE room = ?1 ORDER BY seq",
    )?;
    st.query_map([code], |r| {
        let u = |i: usize| r.get::<_, i64>(i).map(|v| v as u64);
        let o = |i: usize| r.get::<_, Option<i64>>(i).map(|v| v.map(|v| v as u64));
        Ok(Record {
            seq: u(0)?,
            wall_ms: u(1)?,
            worker: u(2)?,
            base: u(3)?,
            current: u(4)?,
            tau: u(5)?,
            age_ms: o(6)?,
            local_steps: r.get(7)?,
            alpha_eff: unreal(r.get(8)?),
            worker_distance: unreal(r.get(9)?),
            view_distance: unreal(r.get(10)?),
            delta_norm: unreal(r.get(11)?),
            bytes_in: u(12)?,
            bytes_out: u(13)?,
            version: o(14)?,
            peer: o(15)?,
            code: r.get(16)?,
            reason: r.get(17)?,
        })
    })?
    .collect()
}

fn read_run(conn: &Connection, code: &str, id: u64) -> rusqlite::Result<Option<Run>> {
    let head: Option<(String, i64, Option<i64>, String, i64, i64)> = conn
        .query_row(
            "SELECT name, started_ms, ended_ms, settings, evals_total, pushes_total FROM runs
             WHERE room = ?1 AND id = ?2",
            params![code, id as i64],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            },
        )
        .optional()?;
    let Some((name, started_ms, ended_ms, settings, evals_total, pushes_total)) = head else {
        return Ok(None);
    };
    let mut st = conn.prepare(
        "SELECT n, wall_ms, version, accuracy, loss FROM run_evals
         WHERE room = ?1 AND run = ?2 ORDER BY n",
    )?;
    let evals: Vec<(u64, EvalPoint)> = st
        .query_map(params![code, id as i64], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                EvalPoint {
                    wall_ms: r.get::<_, i64>(1)? as u64,
                    version: r.get::<_, i64>(2)? as u64,
                    accuracy: r.get::<_, Option<f64>>(3)?.unwrap_or(f64::NAN),
                    loss: r.get::<_, Option<f64>>(4)?.unwrap_or(f64::NAN),
                },
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut st = conn.prepare(
        "SELECT n, wall_ms, worker, tau, alpha_eff, view_distance, worker_distance, bytes_in,
         bytes_out, local_steps, accepted, version, peer FROM run_pushes
         WHERE room = ?1 AND run = ?2 ORDER BY n",
    )?;
    let pushes: Vec<(u64, PushPoint)> = st
        .query_map(params![code, id as i64], |r| {
            let u = |i: usize| r.get::<_, i64>(i).map(|v| v as u64);
            let o = |i: usize| r.get::<_, Option<i64>>(i).map(|v| v.map(|v| v as u64));
            Ok((
                u(0)?,
                PushPoint {
                    wall_ms: u(1)?,
                    worker: u(2)?,
                    tau: u(3)?,
                    alpha_eff: unreal(r.get(4)?),
                    view_distance: unreal(r.get(5)?),
                    worker_distance: unreal(r.get(6)?),
                    bytes_in: u(7)?,
                    bytes_out: u(8)?,
                    local_steps: r.get(9)?,
                    accepted: r.get(10)?,
                    version: o(11)?,
                    peer: o(12)?,
                },
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let dropped = |first: Option<u64>, total: i64| first.unwrap_or(total as u64);
    Ok(Some(Run {
        id,
        name,
        started_ms: started_ms as u64,
        ended_ms: ended_ms.map(|v| v as u64),
        settings: serde_json::from_str(&settings).unwrap_or(serde_json::Value::Null),
        evals: Series::restore(
            MAX_EVALS,
            dropped(evals.first().map(|e| e.0), evals_total),
            evals.into_iter().map(|e| e.1).collect(),
        ),
        pushes: Series::restore(
            MAX_PUSHES,
            dropped(pushes.first().map(|p| p.0), pushes_total),
            pushes.into_iter().map(|p| p.1).collect(),
        ),
    }))
}
