//! The arguments and bodies of `easel sim`, `easel report` and `easel bench sim`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use easel_protocol::Staleness;
use easel_protocol::strategy::Strategy;
use easel_sim::config::{Network, Speed, Train};
use easel_sim::{self as sim, SimConfig, SpeedDist, experiments, peak_rss_kib};
use serde_json::json;

use crate::DataArgs;

#[derive(clap::Args, Debug)]
pub struct SimArgs {
    /// The simulation to run: a TOML file (.toml) or JSON (any other extension).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Print the whole result as JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    data: DataArgs,
}

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// The folder of experiment files (*.toml).
    #[arg(long, default_value = "experiments", value_name = "DIR")]
    experiments: PathBuf,
    /// Where report.md, results.json and the SVG plots go.
    #[arg(long, default_value = "experiments/out", value_name = "DIR")]
    out: PathBuf,
    /// Run only these experiments (file names without .toml); all by default.
    #[arg(long, value_name = "ID")]
    only: Vec<String>,
    #[command(flatten)]
    data: DataArgs,
}

#[derive(clap::Args, Debug)]
pub struct BenchSimArgs {
    /// Worker counts to simulate, in increasing order (peak memory is the process's).
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    workers: Vec<u32>,
    /// Virtual seconds each run lasts (each worker does about duration / 0.08 s rounds).
    #[arg(long, default_value_t = 0.2)]
    duration: f64,
    /// Print one JSON object per run.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    data: DataArgs,
}

pub fn sim(args: SimArgs) -> anyhow::Result<()> {
    let config = SimConfig::load(&args.config)?;
    let data = args.data.load()?;
    let result = sim::run(&config, &data)?;
    if args.json {
        println!("{}", result.to_json());
    } else {
        print!("{}", result.to_table());
    }
    Ok(())
}

pub fn report(args: ReportArgs) -> anyhow::Result<()> {
    let data = args.data.load()?;
    let started = Instant::now();
    let outcomes = experiments::report(
        &args.experiments,
        &args.out,
        &args.only,
        &data,
        |e, v, r| {
            eprintln!(
                "{e} / {v}: final {:.2}%, {:.0} s wall so far",
                100.0 * r.final_accuracy,
                started.elapsed().as_secs_f64()
            );
        },
    )?;
    print!("{}", experiments::table(&outcomes));
    eprintln!(
        "wrote {} in {:.0} s",
        args.out.join("report.md").display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The benchmark's short run: asynchronous EASGD (`tau_max` 1,024, so that a thousand
/// workers' pushes are applied, not refused), 4 local steps of 16, 20 ms a step, a 5 ms
/// network at 100 Mbit/s, two evaluations of 500 test digits.
fn bench_config(workers: u32, duration_s: f64) -> SimConfig {
    SimConfig {
        seed: 1,
        workers,
        partition: "iid".into(),
        duration_s,
        eval_every_s: duration_s,
        eval_samples: Some(500),
        target_accuracy: 0.95,
        memory_limit_mib: 1 << 20,
        train: Train {
            lr: 0.05,
            batch: 16,
            local_steps: 4,
            momentum: 0.0,
            codec_up: easel_protocol::Codec::Fp32,
            codec_down: easel_protocol::Codec::Fp32,
            error_feedback: false,
            max_norm: 1e3,
        },
        speed: Speed {
            step_ms: 20.0,
            dist: SpeedDist::Lognormal {
                mu: 0.0,
                sigma: 0.2,
            },
            stragglers: 0,
            factor: 1.0,
        },
        network: Network {
            latency_ms: 5.0,
            bandwidth_mbps: 100.0,
        },
        strategy: Strategy::Easgd {
            alpha: 0.5,
            staleness: Staleness::Inverse,
            tau_max: 1024,
        },
    }
}

pub fn bench(args: BenchSimArgs) -> anyhow::Result<()> {
    let data = args.data.load()?;
    if !args.json {
        println!("workers  virtual s  rounds  steps  wall s  peak RSS MiB");
    }
    for &n in &args.workers {
        let config = bench_config(n, args.duration);
        let started = Instant::now();
        let r = sim::run(&config, &data).with_context(|| format!("{n} workers"))?;
        let wall = started.elapsed().as_secs_f64();
        let peak_mib = peak_rss_kib().map(|k| k as f64 / 1024.0);
        if args.json {
            println!(
                "{}",
                json!({"workers": n, "virtual_s": r.virtual_s, "rounds": r.rounds,
                       "steps": r.steps, "wall_s": wall, "peak_rss_mib": peak_mib})
            );
        } else {
            println!(
                "{n:>7}  {:>9.2}  {:>6}  {:>5}  {wall:>6.2}  {}",
                r.virtual_s,
                r.rounds,
                r.steps,
                peak_mib.map_or("?".into(), |m| format!("{m:.0}"))
            );
        }
    }
    Ok(())
}
