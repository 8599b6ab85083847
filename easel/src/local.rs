//! `easel train` and `easel bench train`: one worker, no relay.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use easel_client::data::Mnist;
use easel_client::schedule::{Cursor, LrSchedule, batches_per_epoch, epoch_order};
use easel_client::{Sgd, Trainer, checkpoint, cpu, model};
use serde_json::json;

use crate::{Backend, DataArgs};

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Which device trains.
    #[arg(long, value_enum, default_value = "cpu")]
    backend: Backend,
    /// Passes over the 8,000 training digits.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    epochs: u32,
    /// Samples per SGD step.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    batch: u32,
    /// Base learning rate.
    #[arg(long, default_value_t = 0.1, value_parser = positive_f64)]
    lr: f64,
    /// How the learning rate moves from the base rate over the run.
    #[arg(long, value_enum, default_value = "cosine")]
    schedule: Schedule,
    /// SGD momentum (0 = plain SGD).
    #[arg(long, default_value_t = 0.0, value_parser = unit_f32)]
    momentum: f32,
    /// L2 weight decay.
    #[arg(long, default_value_t = 0.0, value_parser = non_negative_f32)]
    weight_decay: f32,
    /// Seed for the initial parameters and the order of the samples.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object per epoch, and a summary object as the last line.
    #[arg(long)]
    json: bool,
    /// Write the trained parameters as safetensors with PyTorch's names and layouts.
    #[arg(long, value_name = "FILE")]
    save: Option<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Schedule {
    Constant,
    Cosine,
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Which device trains.
    #[arg(long, value_enum, default_value = "cpu")]
    backend: Backend,
    /// Samples per SGD step.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    batch: u32,
    /// How long to measure, after a warm-up.
    #[arg(long, default_value_t = 10.0, value_parser = positive_f32)]
    seconds: f32,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
    /// Also time each layer operation of the CPU path (`--backend cpu` only), over 200
    /// steps after the measurement: microseconds per step and share of the step, per op.
    #[arg(long)]
    profile: bool,
    #[command(flatten)]
    data: DataArgs,
}

fn positive_f32(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a positive number")),
    }
}

fn positive_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a positive number")),
    }
}

fn non_negative_f32(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a number >= 0")),
    }
}

fn unit_f32(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if (0.0..1.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a number in [0, 1)")),
    }
}

/// A trainer on `backend` for the training digits, from `params`.
fn make_trainer(
    backend: Backend,
    data: &Mnist,
    params: &[f32],
    sgd: Sgd,
    batch: usize,
) -> anyhow::Result<Box<dyn Trainer + Send>> {
    let gpu = match backend {
        Backend::Cpu => None,
        Backend::Gpu => Some(pollster::block_on(easel_client::Gpu::new())?),
    };
    easel_bots::trainer_on(gpu.as_ref(), &data.train, params, sgd, batch)
}

pub fn train(args: TrainArgs) -> anyhow::Result<()> {
    let data = args.data.load()?;
    let sgd = Sgd {
        momentum: args.momentum,
        weight_decay: args.weight_decay,
    };
    let batch = args.batch as usize;
    let schedule = match args.schedule {
        Schedule::Constant => LrSchedule::Constant,
        Schedule::Cosine => LrSchedule::Cosine,
    };
    let mut trainer = make_trainer(
        args.backend,
        &data,
        &model::init_params(args.seed),
        sgd,
        batch,
    )?;
    let n = data.train.len();
    let total_steps = batches_per_epoch(n, batch) * args.epochs as usize;
    let (mut step, mut busy, mut train_loss) = (0usize, 0.0f64, f64::NAN);
    let mut last = cpu::Evaluation {
        accuracy: 0.0,
        loss: f64::NAN,
    };
    let started = Instant::now();
    let mut cursor = Cursor::new(n, args.seed);
    for epoch in 0..args.epochs as u64 {
        let t0 = Instant::now();
        let mut losses = Vec::with_capacity(batches_per_epoch(n, batch));
        for _ in 0..batches_per_epoch(n, batch) {
            let lr = schedule.lr_at(args.lr as f32, step, total_steps);
            trainer.step(cursor.next_batch(batch), lr);
            losses.extend(trainer.poll_losses());
            step += 1;
        }
        losses.extend(trainer.finish());
        busy += t0.elapsed().as_secs_f64();
        train_loss = losses.iter().map(|&l| l as f64).sum::<f64>() / losses.len().max(1) as f64;
        last = cpu::evaluate(&trainer.params(), &data.test.images, &data.test.labels);
        let sps = n as f64 * (epoch + 1) as f64 / busy;
        if args.json {
            println!(
                "{}",
                json!({"epoch": epoch + 1, "train_loss": train_loss, "test_accuracy": last.accuracy,
                       "test_loss": last.loss, "samples_per_sec": sps})
            );
        } else {
            println!(
                "epoch {:>3}  train loss {train_loss:.4}  test accuracy {:6.2}%  test loss {:.4}  {sps:.0} samples/s",
                epoch + 1,
                last.accuracy * 100.0,
                last.loss
            );
        }
        if !train_loss.is_finite() {
            anyhow::bail!("training diverged (loss {train_loss}); try a smaller --lr");
        }
    }
    let samples_per_sec = n as f64 * args.epochs as f64 / busy;
    if let Some(path) = &args.save {
        let bytes = checkpoint::to_safetensors(&trainer.params())?;
        std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let summary = json!({
        "model": model::SPEC.name,
        "backend": trainer.backend(),
        "adapter": trainer.adapter(),
        "epochs": args.epochs,
        "batch": batch,
        "lr": args.lr,
        "schedule": format!("{:?}", args.schedule).to_lowercase(),
        "momentum": args.momentum,
        "weight_decay": args.weight_decay,
        "seed": args.seed,
        "train_loss": train_loss,
        "test_accuracy": last.accuracy,
        "test_loss": last.loss,
        "test_digits": data.test.len(),
        "samples_per_sec": samples_per_sec,
        "seconds": started.elapsed().as_secs_f64(),
        "saved": args.save.as_ref().map(|p| p.display().to_string()),
    });
    if args.json {
        println!("{summary}");
    } else {
        println!(
            "{} on {} ({}): test accuracy {:.2}% on {} digits, {samples_per_sec:.0} samples/s",
            model::SPEC.name,
            trainer.backend(),
            trainer.adapter(),
            last.accuracy * 100.0,
            data.test.len()
        );
    }
    Ok(())
}

pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let data = args.data.load()?;
    let batch = args.batch as usize;
    let params = model::init_params(0);
    let mut trainer = make_trainer(args.backend, &data, &params, Sgd::default(), batch)?;
    let n = data.train.len();
    let order: Vec<u32> = (0..64).flat_map(|e| epoch_order(n, 0, e)).collect();
    let mut batches = order.chunks_exact(batch).cycle();
    // A learning rate small enough that a long benchmark never diverges; speed does not depend on it.
    let lr = 0.01;
    for _ in 0..20 {
        trainer.step(batches.next().expect("cycle"), lr);
    }
    trainer.finish();
    let (mut steps, t0) = (0u64, Instant::now());
    while t0.elapsed().as_secs_f32() < args.seconds {
        for _ in 0..10 {
            trainer.step(batches.next().expect("cycle"), lr);
            trainer.poll_losses();
        }
        steps += 10;
    }
    trainer.finish();
    let secs = t0.elapsed().as_secs_f64();
    let sps = (steps * batch as u64) as f64 / secs;
    let gflops = sps * model::train_flops_per_sample() as f64 / 1e9;
    let (dispatches, readbacks) = trainer
        .step_counters()
        .map_or((None, None), |(d, r)| (Some(d), Some(r)));
    let mut out = json!({
        "model": model::SPEC.name,
        "backend": trainer.backend(),
        "adapter": trainer.adapter(),
        "batch": batch,
        "steps": steps,
        "seconds": secs,
        "samples_per_sec": sps,
        "gflops": gflops,
        "dispatches_per_step": dispatches,
        "readbacks_per_step": readbacks,
    });
    let profile = match (args.profile, args.backend) {
        (false, _) => None,
        (true, Backend::Cpu) => Some(profile_cpu_step(&data, &order, batch)),
        (true, Backend::Gpu) => anyhow::bail!("--profile times the CPU path: use --backend cpu"),
    };
    if let Some(ops) = &profile {
        let total: f64 = ops.iter().map(|(_, us)| us).sum();
        out["profile"] = ops
            .iter()
            .map(|(op, us)| json!({"op": op, "us_per_step": us, "share": us / total}))
            .collect();
    }
    if args.json {
        println!("{out}");
    } else {
        println!(
            "{} on {} ({}), batch {batch}: {sps:.0} samples/s, {gflops:.2} GFLOP/s{}",
            model::SPEC.name,
            trainer.backend(),
            trainer.adapter(),
            dispatches.map_or(String::new(), |d| format!(
                ", {d} dispatches and {} readbacks per step",
                readbacks.unwrap_or(0)
            ))
        );
        if let Some(ops) = &profile {
            let total: f64 = ops.iter().map(|(_, us)| us).sum();
            for (op, us) in ops {
                println!("  {op:<28} {us:>8.1} us/step  {:>5.1}%", 100.0 * us / total);
            }
        }
    }
    Ok(())
}

/// Times each layer operation of the CPU training step over batches of `batch` samples in
/// `order` ([`cpu::profile::profile_step`], the same measurement the browser benchmark makes
/// of the wasm path): mean microseconds per step of each.
fn profile_cpu_step(data: &Mnist, order: &[u32], batch: usize) -> Vec<(&'static str, f64)> {
    let t0 = Instant::now();
    let (images, labels) = (&data.train.images, &data.train.labels);
    cpu::profile::profile_step(images, labels, order, batch, &mut || {
        t0.elapsed().as_secs_f64()
    })
}
