//! `easel bots` and `easel bench relay`: the command-line side of [`easel_bots`] and
//! [`easel_bots::experiment`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use easel_bots::experiment::{self, Setup};
use easel_bots::loadgen;
use easel_bots::{self as bots, BotOptions, Trust};
use easel_client::worker::named_codecs;
use easel_protocol::LENET5_28;
use easel_relay::{Shutdown, ShutdownTrigger};
use serde_json::json;

use crate::{Backend, DataArgs};

#[derive(clap::Args, Debug)]
pub struct BotsArgs {
    /// The relay's WebSocket URL, for example ws://127.0.0.1:8080/ws or wss://HOST:8443/ws.
    #[arg(long)]
    relay: String,
    /// The room code.
    #[arg(long)]
    room: String,
    /// How many bots.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    count: u32,
    /// How many of the bots (the first ones) play stragglers.
    #[arg(long, default_value_t = 0)]
    slow: u32,
    /// How many times longer a straggler's round takes.
    #[arg(long, default_value_t = 5.0, value_parser = at_least_one)]
    slowdown: f64,
    /// Which device the bots train on.
    #[arg(long, value_enum, default_value = "cpu")]
    backend: Backend,
    /// Seed of the bots' sample orders.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop each bot after this many pushes (default: run until Ctrl-C).
    #[arg(long)]
    pushes: Option<u64>,
    /// Trust this PEM certificate for wss:// (for instance the relay's cert.pem).
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    ca: Option<PathBuf>,
    /// Accept any certificate for wss:// (encrypted, not authenticated).
    #[arg(long)]
    insecure: bool,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 5)]
    every: u64,
    #[command(flatten)]
    data: DataArgs,
}

#[derive(clap::Args, Debug)]
pub struct BenchRelayArgs {
    /// `all`, or one of fp32, fp16, qsgd8, qsgd4, qsgd2, topk1, topk1-qsgd8. With
    /// `--clients`: the push codec (default topk1-qsgd8; `topk+qsgd8` is the same).
    #[arg(long, default_value = "all")]
    codec: String,
    /// Load mode: this many synthetic WebSocket clients (no training) against one room of a
    /// relay run as a child process (or `--url`); prints one JSON object.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    clients: Option<u32>,
    /// Load mode: each client pushes once per interval (`2s`, `500ms`), from a random start.
    #[arg(long, default_value = "2s", value_parser = duration)]
    interval: Duration,
    /// Load mode: seconds of pushing after the last client joined.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Load mode: the room's tau_max (at most 1,024): each push is about N - 1 versions
    /// stale when every client pushes once per interval.
    #[arg(long, default_value_t = easel_protocol::message::MAX_TAU)]
    tau_max: u32,
    /// Load mode: the `easel` binary to run as the relay (default: this one).
    #[arg(long, value_name = "FILE", conflicts_with = "url")]
    relay_bin: Option<PathBuf>,
    /// Load mode: a running relay's teacher URL
    /// (`http://127.0.0.1:PORT/teacher.html?room=CODE&admin=TOKEN`) instead of a child.
    #[arg(long)]
    url: Option<String>,
    /// Load mode with `--url`: the relay's process id, to read its CPU time and memory.
    #[arg(long, requires = "url")]
    pid: Option<u32>,
    /// Acknowledged pushes per run.
    #[arg(long)]
    pushes: Option<u64>,
    /// Error feedback on pushes: `auto` (for the biased top-k codecs only: unbiased QSGD
    /// with few levels is not contractive, and with 2 bits error feedback diverged), `on`
    /// (every codec but fp32) or `off`.
    #[arg(long, default_value = "auto")]
    error_feedback: ErrorFeedbackMode,
    /// Print one JSON object per codec.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    data: DataArgs,
}

/// When `easel bench relay` uses error feedback.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ErrorFeedbackMode {
    Auto,
    On,
    Off,
}

/// `2s`, `500ms` or a plain number of seconds.
fn duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else {
        (t, 1.0)
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(Duration::from_secs_f64(v * scale)),
        _ => Err(format!("`{s}` is not a duration like 2s or 500ms")),
    }
}

fn at_least_one(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 1.0 => Ok(v),
        _ => Err(format!("`{s}` is not a number >= 1")),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Fires `trigger` on Ctrl-C.
fn on_ctrl_c(trigger: ShutdownTrigger) {
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("stopping after the pushes in flight...");
        }
        trigger.fire();
    });
}

pub fn bots(args: BotsArgs) -> anyhow::Result<()> {
    let data = args.data.load()?;
    let trust = match (args.ca, args.insecure) {
        (Some(ca), _) => Some(Trust::Ca(ca)),
        (None, true) => Some(Trust::Insecure),
        (None, false) => None,
    };
    let opts = BotOptions {
        relay: args.relay,
        room: args.room,
        count: args.count as usize,
        slow: args.slow as usize,
        slowdown: args.slowdown,
        backend: match args.backend {
            Backend::Cpu => easel_protocol::Backend::Cpu,
            Backend::Gpu => easel_protocol::Backend::Gpu,
        },
        seed: args.seed,
        pushes: args.pushes,
        total_pushes: None,
        trust,
    };
    bots::parse_url(&opts.relay)?;
    runtime()?.block_on(async move {
        let (trigger, shutdown) = Shutdown::new();
        on_ctrl_c(trigger);
        let every = Duration::from_secs(args.every.max(1));
        let reports = bots::run_bots(opts, Arc::new(data.train), shutdown, Some(every)).await?;
        println!("final:");
        for r in &reports {
            println!("{}", r.line());
        }
        if reports.iter().all(|r| r.error.is_some()) {
            bail!("every bot stopped with an error");
        }
        Ok(())
    })
}

pub fn bench_relay(args: BenchRelayArgs) -> anyhow::Result<()> {
    if let Some(n) = args.clients {
        return bench_load(&args, n as usize);
    }
    let data = Arc::new(args.data.load()?);
    let all = named_codecs(LENET5_28.param_count);
    let chosen: Vec<_> = if args.codec == "all" {
        all
    } else {
        let found: Vec<_> = all.into_iter().filter(|(n, _)| *n == args.codec).collect();
        if found.is_empty() {
            bail!(
                "unknown codec {:?}: use all, fp32, fp16, qsgd8, qsgd4, qsgd2, topk1 or topk1-qsgd8",
                args.codec
            );
        }
        found
    };
    let mut setup = Setup::default();
    if let Some(p) = args.pushes {
        setup.total_pushes = p;
    }
    let rt = runtime()?;
    if !args.json {
        println!(
            "{} workers ({} of them {}x slower), {} pushes, K = {}, lr = {}, batch = {}, alpha = {}",
            setup.workers,
            setup.slow,
            setup.slowdown,
            setup.total_pushes,
            setup.hyper.local_steps,
            setup.hyper.lr,
            setup.hyper.batch,
            setup.hyper.alpha
        );
        println!(
            "{:<12} {:>9} {:>9} {:>14} {:>9} {:>8} {:>8} {:>7}",
            "codec", "accuracy", "loss", "bytes/push", "fp32/x", "tau f/s", "alpha f/s", "secs"
        );
    }
    let mut fp32_bytes = None;
    for (name, codec) in chosen {
        use easel_protocol::Codec;
        let ef = match args.error_feedback {
            ErrorFeedbackMode::Auto => {
                matches!(codec, Codec::TopK { .. } | Codec::TopKQsgd { .. })
            }
            ErrorFeedbackMode::On => codec != Codec::Fp32,
            ErrorFeedbackMode::Off => false,
        };
        let o = rt.block_on(experiment::run(&setup, name, codec, ef, data.clone()))?;
        let fp32 = *fp32_bytes.get_or_insert(
            easel_protocol::encoded_len(easel_protocol::Codec::Fp32, LENET5_28.param_count) as f64
                + 30.0,
        );
        if args.json {
            println!(
                "{}",
                json!({
                    "codec": name,
                    "error_feedback": ef,
                    "accuracy": o.accuracy,
                    "loss": o.loss,
                    "bytes_per_push": o.bytes_per_push,
                    "fp32_ratio": fp32 / o.bytes_per_push,
                    "pushes": o.ledger_pushes,
                    "version": o.version,
                    "fast_mean_tau": o.fast.mean_tau,
                    "slow_mean_tau": o.slow.mean_tau,
                    "fast_mean_alpha_eff": o.fast.mean_alpha_eff,
                    "slow_mean_alpha_eff": o.slow.mean_alpha_eff,
                    "seconds": o.seconds,
                })
            );
        } else {
            println!(
                "{:<12} {:>8.2}% {:>9.4} {:>14.0} {:>9.1} {:>4.1}/{:<4.1} {:.3}/{:.3} {:>6.1}",
                name,
                100.0 * o.accuracy,
                o.loss,
                o.bytes_per_push,
                fp32 / o.bytes_per_push,
                o.fast.mean_tau,
                o.slow.mean_tau,
                o.fast.mean_alpha_eff,
                o.slow.mean_alpha_eff,
                o.seconds
            );
        }
    }
    Ok(())
}

/// `easel bench relay --clients N`: [`loadgen`] against a child relay (or `--url`).
fn bench_load(args: &BenchRelayArgs, clients: usize) -> anyhow::Result<()> {
    let name = match args.codec.as_str() {
        "all" | "topk+qsgd8" => "topk1-qsgd8",
        other => other,
    };
    let codec = easel_protocol::settings::parse_codec(name).map_err(anyhow::Error::msg)?;
    if !(args.seconds.is_finite() && args.seconds > 0.0) {
        bail!("--seconds must be a positive number");
    }
    let fd_limit = loadgen::raise_fd_limit();
    if fd_limit != 0 && fd_limit < clients as u64 + 64 {
        bail!("the open-file limit is {fd_limit}; raise it (ulimit -Hn) above {clients} + 64");
    }
    let child = match &args.url {
        Some(_) => None,
        None => {
            let bin = match &args.relay_bin {
                Some(b) => b.clone(),
                None => std::env::current_exe().context("finding this program")?,
            };
            Some(loadgen::RelayProcess::spawn(&bin)?)
        }
    };
    let (target, pid) = match (&child, &args.url) {
        (Some(c), _) => (c.target.clone(), Some(c.pid())),
        (None, Some(url)) => (loadgen::Target::from_teacher_url(url)?, args.pid),
        (None, None) => unreachable!("a child is started without --url"),
    };
    target.configure(name, args.tau_max)?;
    let mem = |pid: Option<u32>| pid.and_then(|p| loadgen::memory(p).ok());
    std::thread::sleep(Duration::from_millis(500));
    let idle = mem(pid);
    let opts = loadgen::LoadOptions {
        clients,
        interval: args.interval,
        push_for: Duration::from_secs_f64(args.seconds),
        codec,
        seed: 1,
        relay_pid: pid,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("load-client")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let out = rt.block_on(loadgen::run(&target, &opts))?;
    let loaded = mem(pid);
    // Sockets closed: give the relay a moment to drop the connections, then read again.
    std::thread::sleep(Duration::from_secs(3));
    let after = mem(pid);
    let missing = loadgen::missing_from_ledger(&out.logs, &target.ledger_csv()?)?;
    let s = out.summary();
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let per_push = |d: Option<Duration>| {
        d.filter(|_| s.pushes_answered > 0)
            .map(|d| d.as_secs_f64() * 1e3 / s.pushes_answered as f64)
    };
    let report = json!({
        "clients": clients,
        "interval_s": args.interval.as_secs_f64(),
        "seconds": args.seconds,
        "codec_up": name,
        "tau_max": args.tau_max,
        "relay": match (&args.url, &args.relay_bin) {
            (Some(u), _) => u.clone(),
            (None, Some(b)) => b.display().to_string(),
            (None, None) => "this binary".to_string(),
        },
        "summary": s,
        "acked_missing_from_ledger": missing,
        // The whole relay process, its evaluation of the center every 5 s included.
        "relay_cpu_ms_per_push": per_push(out.relay_cpu_push),
        "relay_cpu_join_ms": out.relay_cpu_join.map(|d| d.as_secs_f64() * 1e3),
        "client_cpu_ms_per_push": per_push(out.own_cpu_push),
        "relay_rss_idle_mib": idle.map(|m| mib(m.0)),
        "relay_rss_loaded_mib": loaded.map(|m| mib(m.0)),
        "relay_rss_peak_mib": loaded.map(|m| mib(m.1)),
        "relay_rss_after_mib": after.map(|m| mib(m.0)),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    drop(child);
    Ok(())
}
