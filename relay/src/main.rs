//! The `easel` command.

use clap::{Parser, Subcommand};

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
    /// Print the model's layer table and parameter layout.
    Model,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Model => print!("{}", easel_client::LENET5_28.canonical_text()),
    }
    Ok(())
}
