//! `easel rooms list` and `easel rooms export`: the rooms and runs kept in the database,
//! read without stopping a relay that serves it. `easel rooms apply`: a simulator
//! configuration's settings applied to a live room.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use easel_relay::store::{self, Store};

/// What `easel rooms` does.
#[derive(Subcommand, Debug)]
pub enum RoomsCommand {
    /// Every saved room, the most recent first, with its runs.
    List(DbArg),
    /// One saved run as CSV or JSON (the dashboard's export), on standard output.
    Export {
        /// The room code.
        code: String,
        /// The run id (see `easel rooms list`).
        run: u64,
        #[arg(long, value_enum, default_value = "csv")]
        format: Format,
        #[command(flatten)]
        db: DbArg,
    },
    /// Applies a simulator configuration (`easel sim --config FILE`) to a live room: its
    /// training settings and strategy, and its partition when it differs. The rest of the
    /// file (workers, speeds, network) describes a simulated class; the room has a real one.
    Apply {
        /// The configuration, TOML or JSON, as `easel sim --config` reads it.
        config: PathBuf,
        /// The teacher URL `easel serve` prints:
        /// `http://127.0.0.1:PORT/teacher.html?room=CODE&admin=TOKEN`.
        #[arg(long, value_name = "URL")]
        teacher: String,
    },
}

/// The database to read.
#[derive(clap::Args, Debug)]
pub struct DbArg {
    /// The database (default: easel.db in Easel's data directory, as `easel serve`).
    #[arg(long, value_name = "FILE")]
    db: Option<PathBuf>,
}

impl DbArg {
    fn open(&self) -> anyhow::Result<Store> {
        let path = self.db.clone().unwrap_or_else(store::default_path);
        Ok(Store::open_read_only(&path)?)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Csv,
    Json,
}

/// Runs `easel rooms ...`.
pub fn rooms(cmd: RoomsCommand) -> anyhow::Result<()> {
    match cmd {
        RoomsCommand::List(db) => {
            let store = db.open()?;
            let rooms = store.rooms()?;
            if rooms.is_empty() {
                println!("no saved rooms in {}", store.path().display());
            }
            for r in rooms {
                println!(
                    "{}  version {}  saved {}  runs {}",
                    r.code,
                    r.version,
                    ago(r.updated_ms),
                    r.runs.len()
                );
                for run in &r.runs {
                    println!(
                        "  run {:>3}  {:<24}  {} pushes  {} evaluations{}",
                        run.id,
                        run.name,
                        run.pushes,
                        run.evals,
                        if run.ended_ms.is_none() {
                            "  (current)"
                        } else {
                            ""
                        }
                    );
                }
            }
            Ok(())
        }
        RoomsCommand::Apply { config, teacher } => apply(&config, &teacher),
        RoomsCommand::Export {
            code,
            run,
            format,
            db,
        } => {
            let store = db.open()?;
            let code = easel_relay::room::normalize_code(&code);
            let r = store
                .run(&code, run)?
                .with_context(|| format!("no run {run} in room {code} (see `easel rooms list`)"))?;
            match format {
                Format::Csv => print!("{}", r.to_csv()),
                Format::Json => println!("{}", r.to_json()),
            }
            Ok(())
        }
    }
}

/// `easel rooms apply`: the configuration's settings, then its partition, sent to the room.
fn apply(config: &std::path::Path, teacher: &str) -> anyhow::Result<()> {
    let cfg = easel_sim::SimConfig::load(config)?;
    let target = easel_bots::loadgen::Target::from_teacher_url(teacher)?;
    let change = easel_protocol::settings::SettingsChange::of(&cfg.room_hyper());
    let mut command = serde_json::to_value(&change)?;
    command["type"] = "settings".into();
    let state = target.control(&command).with_context(|| {
        format!(
            "applying {} to room {} (is `easel serve` running at {}?)",
            config.display(),
            target.room,
            target.addr
        )
    })?;
    let settings = &state["settings"];
    println!(
        "room {}: strategy {}, lr {}, batch {}, local steps {}, push codec {}, tau_max {}",
        target.room,
        settings["strategy"],
        settings["lr"],
        settings["batch"],
        settings["local_steps"],
        settings["codec_up"],
        settings["tau_max"]
    );
    if settings["partition"].as_str() != Some(cfg.partition.as_str()) {
        let scheme = serde_json::json!({ "type": "partition", "scheme": cfg.partition });
        target.control(&scheme)?;
        println!(
            "partition {}: the devices rejoin with new shards",
            cfg.partition
        );
    }
    Ok(())
}

/// How long ago a wall time was, for people.
fn ago(ms: u64) -> String {
    let s = easel_relay::room::wall_ms().saturating_sub(ms) / 1000;
    match s {
        0..120 => format!("{s} s ago"),
        120..7200 => format!("{} min ago", s / 60),
        7200..172_800 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}
