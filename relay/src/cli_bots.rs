//! `easel bots` and `easel bench relay`: the command-line side of [`easel_relay::bots`] and
//! [`easel_relay::experiment`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use easel_client::worker::named_codecs;
use easel_protocol::LENET5_28;
use easel_relay::bots::{self, BotOptions, Trust};
use easel_relay::experiment::{self, Setup};
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
    /// `all`, or one of fp32, fp16, qsgd8, qsgd4, qsgd2, topk1, topk1-qsgd8.
    #[arg(long, default_value = "all")]
    codec: String,
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
