//! `affectd train distill`: arguments, the captured dataset as a window source, and the run.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tracing::info;

use super::data::WindowSource;
use super::loss::LossWeights;
use super::optim::{AdamWConfig, Schedule};
use super::report::Report;
use super::run::{Outcome, Paths, Run};
use super::settings::Settings;
use super::teacher::Teacher;
use crate::capture::{Dataset, SampleMeta};
use crate::encode::{ModelConfig, ModelDevice};
use crate::model::preprocess::EncoderCrop;
use crate::readout::ReadoutConfig;

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

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum DeviceArg {
    Cpu,
    Cuda,
}

/// A capture dataset as training windows.
pub struct CapturedWindows {
    dataset: Dataset,
}

impl CapturedWindows {
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            dataset: Dataset::open(dir)?,
        })
    }

    fn sample(&self, i: usize) -> &SampleMeta {
        &self.dataset.samples()[i]
    }
}

impl WindowSource for CapturedWindows {
    fn len(&self) -> usize {
        self.dataset.samples().len()
    }

    fn id(&self, i: usize) -> &str {
        &self.sample(i).id
    }

    fn group(&self, i: usize) -> String {
        let s = self.sample(i);
        format!("{}/{}", s.camera, s.track_id)
    }

    fn load(&self, i: usize) -> anyhow::Result<Vec<EncoderCrop>> {
        Ok(self.dataset.load(self.sample(i))?)
    }
}

/// Why the command failed: usage problems exit 2, the rest 1.
pub enum DistillError {
    Usage(anyhow::Error),
    Runtime(anyhow::Error),
}

/// The teacher's `[model]` and `[readout]`: from `--config`, with the command-line overrides.
fn teacher_config(args: &DistillArgs) -> anyhow::Result<(ModelConfig, ReadoutConfig)> {
    let (mut model, readout) = match &args.config {
        Some(path) => {
            let config = crate::config::Config::load(path)?;
            let Some(model) = config.model.clone() else {
                anyhow::bail!(
                    "{}: no [model] section to take the teacher from",
                    path.display()
                )
            };
            (model, config.readout.clone())
        }
        None => (toml::from_str::<ModelConfig>("")?, ReadoutConfig::default()),
    };
    if let Some(w) = &args.teacher {
        model.weights = Some(w.clone());
        model.allow_untrained = false;
    }
    if let Some(c) = &args.teacher_config {
        model.config = Some(c.clone());
    }
    if model.weights.is_none() && !model.allow_untrained {
        anyhow::bail!("no teacher: pass --teacher (or --config naming [model] weights)")
    }
    if let Some(w) = model.weights_to_load()
        && !w.is_file()
    {
        anyhow::bail!("--teacher {}: no such file", w.display())
    }
    Ok((model, readout))
}

fn settings(args: &DistillArgs) -> Settings {
    Settings {
        student: args.student.clone(),
        steps: args.steps,
        batch: args.batch,
        schedule: Schedule {
            peak: args.lr,
            warmup: args.warmup.min(args.steps),
            total: args.steps,
            floor: args.lr_floor,
        },
        adamw: AdamWConfig {
            weight_decay: args.weight_decay,
            ..AdamWConfig::default()
        },
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
    let (mut model_cfg, readout_cfg) = teacher_config(args).map_err(Usage)?;
    match args.device {
        Some(DeviceArg::Cuda) => model_cfg.device = ModelDevice::Cuda,
        Some(DeviceArg::Cpu) => model_cfg.device = ModelDevice::Cpu,
        None => {}
    }
    if model_cfg.device == ModelDevice::Cuda && !cfg!(feature = "cuda") {
        return Err(Usage(anyhow::anyhow!(
            "device cuda: this build has no CUDA (cargo feature `cuda`)"
        )));
    }
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
    match run.execute().map_err(Runtime)? {
        Outcome::Stopped { step } => {
            println!("stopped at step {step}; continue with --resume");
        }
        Outcome::Finished(report) => print_summary(&report, &args.out),
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
    let manifest = source.dataset.manifest();
    let tc = teacher.model.config();
    if manifest.image_size != tc.vision_cfg.image_size
        || manifest.video_len != tc.temporal.video_len
    {
        anyhow::bail!(
            "--data {}: windows of {} px x {} frames, the teacher takes {} px x {}",
            args.data.display(),
            manifest.image_size,
            manifest.video_len,
            tc.vision_cfg.image_size,
            tc.temporal.video_len
        );
    }
    super::student::student_config(tc, &args.student)?;
    Ok(())
}

fn print_summary(report: &Report, out: &Path) {
    let (i, f, s) = (report.initial, report.result, report.speed);
    println!("student      {}", report.student.weights);
    println!("config       {}", out.join("config.json").display());
    println!(
        "held-out     {} windows: top-1 agreement {:.3} (untrained {:.3}), cosine {:.3} (untrained {:.3}), valence/arousal MAE {:.3}/{:.3}",
        f.windows,
        f.top1_agreement,
        i.top1_agreement,
        f.embedding_cosine,
        i.embedding_cosine,
        f.valence_mae,
        f.arousal_mae
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
