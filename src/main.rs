//! The `affectd` command line. (Minimal: the lead's main.rs adds the other subcommands.)

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Per-person emotion from camera streams, published over MQTT"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the person detector (and with --track the tracker) on an image or a video file.
    Detect(affectd::detect::DetectArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Detect(args) => affectd::detect::cli::run(&args)?,
    }
    Ok(())
}
