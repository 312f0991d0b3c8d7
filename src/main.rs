//! The `affectd` command: a thin layer over the library.
//!
//! Exit codes: 0 success, 2 bad configuration or usage, 1 runtime failure.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use affectd::config::{Config, ConfigError};

#[derive(Parser)]
#[command(name = "affectd", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: ingest cameras, analyse, publish over MQTT until SIGTERM.
    Run(ConfigArg),
    /// Parse and validate a config, then probe what it names (pipelines, files, broker).
    Check(ConfigArg),
    /// Run EmotionCLIP on tensors from a safetensors file and write the embeddings (parity tool).
    Embed(affectd::model::EmbedArgs),
    /// Export EmotionCLIP's frame and temporal encoders to ONNX (for ONNX Runtime), with a
    /// manifest.
    ExportOnnx(affectd::onnx::ExportArgs),
    /// Run the person detector (and with --track the tracker) on an image or a video file.
    Detect(affectd::detect::DetectArgs),
    /// Fit models on windows captured on site (`[capture]`).
    Train {
        #[command(subcommand)]
        what: Train,
    },
}

#[derive(Subcommand)]
enum Train {
    /// Fit linear emotion and valence/arousal heads on the served model's video embeddings
    /// of labelled captured windows; write them for `[readout] heads_file`.
    Heads(affectd::train::heads::HeadsArgs),
    /// Distil a smaller, faster student encoder from the full EmotionCLIP (the teacher) on
    /// captured windows; write it for `[model] weights`/`config`, with a report.
    Distill(Box<affectd::train::distill::DistillArgs>),
    /// Fine-tune the served encoder on captured windows paired with text (clip: InfoNCE,
    /// snce: EmotionCLIP's sentiment-guided loss, pacl: partitioned adaptive contrastive
    /// learning); write it for `[model] weights`/`config`, with a report.
    Adapt(Box<affectd::train::adapt::AdaptArgs>),
}

#[derive(clap::Args)]
struct ConfigArg {
    /// The TOML configuration file.
    #[arg(long, short, default_value = "/etc/affectd/affectd.toml")]
    config: PathBuf,
}

/// Why the command failed, deciding the exit code.
enum Failure {
    /// The user's input is wrong: exit 2.
    Usage(anyhow::Error),
    /// Something failed while running: exit 1.
    Runtime(anyhow::Error),
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::Usage(e.into())
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match &cli.command {
        Command::Run(args) => run(args),
        Command::Check(args) => check(args),
        Command::Embed(args) => affectd::encode::embed(args).map_err(|e| {
            if e.is_usage() {
                Failure::Usage(e.into())
            } else {
                Failure::Runtime(e.into())
            }
        }),
        Command::ExportOnnx(args) => affectd::onnx::cli::run(args).map_err(|e| {
            if e.is_usage() {
                Failure::Usage(e.into())
            } else {
                Failure::Runtime(e.into())
            }
        }),
        Command::Detect(args) => affectd::detect::cli::run(args).map_err(|e| match e {
            affectd::detect::Error::Config(e) => Failure::from(e),
            e => Failure::Runtime(e.into()),
        }),
        Command::Train {
            what: Train::Distill(args),
        } => affectd::train::distill::run(args).map_err(|e| match e {
            affectd::train::distill::DistillError::Usage(e) => Failure::Usage(e),
            affectd::train::distill::DistillError::Runtime(e) => Failure::Runtime(e),
        }),
        Command::Train {
            what: Train::Adapt(args),
        } => affectd::train::adapt::run(args).map_err(|e| match e {
            affectd::train::adapt::AdaptError::Usage(e) => Failure::Usage(e),
            affectd::train::adapt::AdaptError::Runtime(e) => Failure::Runtime(e),
        }),
        Command::Train {
            what: Train::Heads(args),
        } => affectd::train::heads::run(args).map_err(|e| {
            if e.is_usage() {
                Failure::Usage(e.into())
            } else {
                Failure::Runtime(e.into())
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (default `info`). Colour only on a terminal;
/// under systemd (journald adds its own timestamps) lines carry no timestamp.
fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

fn run(args: &ConfigArg) -> Result<(), Failure> {
    let config = Config::load(&args.config)?;
    config.check_files()?;
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    affectd::service::run(config, &args.config).map_err(Failure::Runtime)
}

fn check(args: &ConfigArg) -> Result<(), Failure> {
    let config = Config::load(&args.config)?;
    println!("config   ok    {}", args.config.display());
    for warning in config.warnings() {
        println!("config   warn  {warning}");
    }
    let report = affectd::service::check(&config);
    for line in &report.lines {
        println!("{line}");
    }
    if report.failures > 0 {
        return Err(Failure::Runtime(anyhow::anyhow!(
            "{} check(s) failed",
            report.failures
        )));
    }
    println!("all checks passed");
    Ok(())
}
