//! The `affectd` command: a thin layer over the library.
//!
//! Exit codes: 0 success, 2 bad configuration or usage, 1 runtime failure.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "affectd", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run EmotionCLIP on tensors from a safetensors file and write the embeddings (parity tool).
    Embed(affectd::model::EmbedArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Embed(args) => affectd::model::embed::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(if e.is_usage() { 2 } else { 1 })
        }
    }
}
