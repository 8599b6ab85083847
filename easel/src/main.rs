//! The `easel` command: train one worker locally, benchmark it, fill a room with bots, or
//! benchmark the relay's codecs.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

mod cli_bots;
mod cli_rooms;
mod cli_sim;
mod embedded;
mod local;
mod serve;

#[derive(Parser)]
#[command(
    name = "easel",
    version,
    about = "A classroom lab for distributed machine learning"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train one worker on the 8,000 training digits and report accuracy on the 2,000 test digits.
    Train(local::TrainArgs),
    /// Measure training speed.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// Fill a room with native bot workers (run from a second terminal for a demo).
    Bots(cli_bots::BotsArgs),
    /// Print the model's layer table and parameter layout.
    Model,
    /// Run the relay: serve the browser client, the data and the WebSocket endpoint.
    Serve(serve::ServeArgs),
    /// Simulate a room on a virtual clock (deterministic): accuracy over time, bytes, staleness.
    Sim(cli_sim::SimArgs),
    /// Run the experiments in experiments/ and write report.md and SVG plots.
    Report(cli_sim::ReportArgs),
    /// List and export the rooms and runs `easel serve` saved.
    Rooms {
        #[command(subcommand)]
        what: cli_rooms::RoomsCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Steady-state training samples/s with the data resident on the device.
    Train(local::BenchArgs),
    /// Eight bot workers (two 5x slower) against a relay on 127.0.0.1, once per push codec:
    /// final accuracy and bytes per push.
    Relay(cli_bots::BenchRelayArgs),
    /// Simulator wall time and peak memory for 10, 100 and 1,000 simulated workers.
    Sim(cli_sim::BenchSimArgs),
}

/// Which device trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// Pure Rust on one CPU thread.
    Cpu,
    /// WGSL compute shaders through wgpu (Vulkan, Metal, DX12 or WebGPU).
    Gpu,
}

/// Options every command that reads the data shares.
#[derive(clap::Args, Debug)]
pub struct DataArgs {
    /// The Easel MNIST file (default: $EASEL_DATA, else the digits built into this program).
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,
}

/// Where the digits come from: `--data`, else `EASEL_DATA`, else the copy built into the
/// binary. Never the source tree, so the binary works on a machine without a checkout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataSource {
    /// A file named by `--data` or `EASEL_DATA`.
    File(PathBuf),
    /// `data/mnist.bin` as it was when the binary was built.
    BuiltIn,
}

impl DataArgs {
    /// Which digits these options name.
    pub fn source(&self) -> DataSource {
        self.data
            .clone()
            .or_else(easel_client::data::env_path)
            .map_or(DataSource::BuiltIn, DataSource::File)
    }

    /// The bytes of the digits these options name, not yet checked.
    pub fn bytes(&self) -> anyhow::Result<std::borrow::Cow<'static, [u8]>> {
        match self.source() {
            DataSource::BuiltIn => Ok(embedded::mnist()?.into()),
            DataSource::File(path) => Ok(easel_client::data::read(&path)?.into()),
        }
    }

    /// Loads and verifies the data these options name.
    pub fn load(&self) -> anyhow::Result<easel_client::data::Mnist> {
        Ok(easel_client::data::Mnist::from_bytes(&self.bytes()?)?)
    }
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the whole chain of causes on one line, without a backtrace.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train(args) => local::train(args),
        Command::Bench {
            what: BenchCommand::Train(args),
        } => local::bench(args),
        Command::Serve(args) => serve::serve(args),
        Command::Bench {
            what: BenchCommand::Relay(args),
        } => cli_bots::bench_relay(args),
        Command::Bots(args) => cli_bots::bots(args),
        Command::Sim(args) => cli_sim::sim(args),
        Command::Report(args) => cli_sim::report(args),
        Command::Rooms { what } => cli_rooms::rooms(what),
        Command::Bench {
            what: BenchCommand::Sim(args),
        } => cli_sim::bench(args),
        Command::Model => {
            print!("{}", easel_client::LENET5_28.canonical_text());
            Ok(())
        }
    }
}
