//! The `easel` command: train one worker locally, benchmark it, or (later) run the relay.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

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
    /// Print the model's layer table and parameter layout.
    Model,
    /// Serve the browser client and the data over HTTP, for training in a browser tab.
    Serve(serve::ServeArgs),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Steady-state training samples/s with the data resident on the device.
    Train(local::BenchArgs),
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
    /// The Easel MNIST file (default: $EASEL_DATA, else data/mnist.bin in the source tree).
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,
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
        Command::Model => {
            print!("{}", easel_client::LENET5_28.canonical_text());
            Ok(())
        }
    }
}
