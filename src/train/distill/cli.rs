//! `affectd train distill`: arguments, the captured dataset as a window source, and the run.

use std::path::{Path, PathBuf};

use anyhow::Context;

use tracing::info;

use super::Teacher;
use super::loss::LossWeights;
use super::report::Report;
use super::run::{Outcome, Paths, Run};
use super::settings::Settings;
use crate::train::data::{CapturedWindows, WindowSource};
use crate::train::optim::{AdamWConfig, Schedule};
use crate::train::served::{DeviceArg, ModelSource};

#[derive(clap::Args, Debug, Clone)]
pub struct DistillArgs {
    /// Daemon config: its `[model]` is the teacher and its `[readout]` classes define the
    /// zero-shot distribution (default: the ViT-B/32 preset and the built-in classes).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Teacher weights (.safetensors or the official release .pt); overrides `[model] weights`.
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    /// Teacher hyperparameters (JSON, official layout); overrides `[model] config`.
    #[arg(long)]
    pub teacher_config: Option<PathBuf>,
    /// Capture dataset (`[capture] dir`).
    #[arg(long)]
    pub data: PathBuf,
    /// Student: `vitb32-l6` (half the teacher's frame-encoder blocks), `vits32` (half its
    /// width), or a JSON model config.
    #[arg(long, default_value = "vitb32-l6")]
    pub student: String,
    /// Output folder: student.safetensors, config.json, report.json, report.png, checkpoint/.
    #[arg(long)]
    pub out: PathBuf,
    /// Teacher-output cache (default: OUT/teacher-cache).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Optimiser steps.
    #[arg(long, default_value_t = 2000)]
    pub steps: usize,
    /// Windows per step.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 100)]
    pub warmup: usize,
    /// Final learning rate as a fraction of the peak (cosine decay).
    #[arg(long, default_value_t = 0.01)]
    pub lr_floor: f64,
    /// AdamW decoupled weight decay (matrices only).
    #[arg(long, default_value_t = 0.05)]
    pub weight_decay: f64,
    /// Weight of the video-embedding cosine distance.
    #[arg(long, default_value_t = 1.0)]
    pub w_cosine: f64,
    /// Weight of the frame-feature MSE.
    #[arg(long, default_value_t = 1.0)]
    pub w_feature: f64,
    /// Weight of the zero-shot KL divergence.
    #[arg(long, default_value_t = 1.0)]
    pub w_kl: f64,
    /// Softening temperature of the KL term.
    #[arg(long, default_value_t = 2.0)]
    pub temperature: f64,
    /// Fraction of tracks held out for the agreement metrics.
    #[arg(long, default_value_t = 0.2)]
    pub val_fraction: f64,
    /// Seed of the split, the data order and the student's fresh tensors.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Held-out evaluation every N steps.
    #[arg(long, default_value_t = 100)]
    pub eval_every: usize,
    /// Checkpoint every N steps.
    #[arg(long, default_value_t = 200)]
    pub checkpoint_every: usize,
    /// Continue the checkpoint in OUT when it is of this run (same settings, teacher and
    /// data); otherwise start over.
    #[arg(long)]
    pub resume: bool,
    /// Stop after this many steps in this invocation, with a checkpoint (`--resume` goes on).
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// `cpu`, or `cuda` (needs the `cuda` cargo feature); default: `[model] device`.
    #[arg(long, value_enum)]
    pub device: Option<DeviceArg>,
}

/// Why the command failed: usage problems exit 2, the rest 1.
pub enum DistillError {
    Usage(anyhow::Error),
    Runtime(anyhow::Error),
}

fn settings(args: &DistillArgs) -> Settings {
    Settings {
        student: args.student.clone(),
        steps: args.steps,
        batch: args.batch,
        schedule: Schedule::new(args.lr, args.warmup, args.steps, args.lr_floor),
        adamw: AdamWConfig::with_weight_decay(args.weight_decay),
        loss: LossWeights {
            cosine: args.w_cosine,
            feature: args.w_feature,
            kl: args.w_kl,
            temperature: args.temperature,
        },
        val_fraction: args.val_fraction,
        seed: args.seed,
        eval_every: args.eval_every,
        checkpoint_every: args.checkpoint_every,
    }
}

/// `affectd train distill`.
pub fn run(args: &DistillArgs) -> Result<(), DistillError> {
    use DistillError::{Runtime, Usage};
    let (model_cfg, readout_cfg) = ModelSource {
        config: args.config.as_deref(),
        weights: args.teacher.as_deref(),
        hparams: args.teacher_config.as_deref(),
        device: args.device,
        role: "teacher",
        weights_flag: "--teacher",
    }
    .resolve()
    .map_err(Usage)?;
    let source = CapturedWindows::open(&args.data)
        .with_context(|| format!("--data {}", args.data.display()))
        .map_err(Usage)?;
    let teacher = Teacher::load(&model_cfg, &readout_cfg)
        .context("loading the teacher")
        .map_err(Usage)?;
    check_windows(args, &source, &teacher).map_err(Usage)?;
    info!(
        windows = source.len(),
        teacher = %teacher.weights.display(),
        student = %args.student,
        "distilling"
    );
    let run = Run {
        settings: settings(args),
        teacher: &teacher,
        source: &source,
        data: args.data.clone(),
        paths: Paths {
            out: args.out.clone(),
            cache: args
                .cache
                .clone()
                .unwrap_or_else(|| args.out.join("teacher-cache")),
        },
        resume: args.resume,
        stop_after: args.stop_after,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let pin = source.pin(&args.out);
    match run.execute().map_err(Runtime)? {
        Outcome::Stopped { step } => {
            println!("stopped at step {step}; continue with --resume");
        }
        Outcome::Finished(report) => {
            if let Some(pin) = pin {
                pin.release();
            }
            print_summary(&report, &args.out);
        }
    }
    Ok(())
}

/// Checks that the captured windows are of the teacher's size and length and that the
/// student can be made from the teacher.
fn check_windows(
    args: &DistillArgs,
    source: &CapturedWindows,
    teacher: &Teacher,
) -> anyhow::Result<()> {
    let tc = teacher.model.config();
    source
        .check_fits(tc, "the teacher")
        .with_context(|| format!("--data {}", args.data.display()))?;
    super::student::student_config(tc, &args.student)?;
    Ok(())
}

fn print_summary(report: &Report, out: &Path) {
    let (i, f, s) = (report.initial, report.result, report.speed);
    println!("student      {}", report.student.weights);
    println!("config       {}", out.join("config.json").display());
    println!(
        "held-out     {} windows: top-1 agreement {:.3} (untrained {:.3}), cosine {:.3} (untrained {:.3}), valence/arousal MAE {:.3}/{:.3}",
        f.with_teacher.windows,
        f.with_teacher.top1_agreement,
        i.with_teacher.top1_agreement,
        f.with_teacher.embedding_cosine,
        i.with_teacher.embedding_cosine,
        f.with_teacher.valence_mae,
        f.with_teacher.arousal_mae
    );
    println!(
        "speed        {:.1} -> {:.1} frames/s ({:.2}x) at batch {}",
        s.teacher_frames_per_s, s.student_frames_per_s, s.speedup, s.batch
    );
    println!(
        "training     {:.2} windows/s over {} steps",
        report.train_windows_per_s, report.steps
    );
    println!("report       {}", out.join("report.json").display());
}
