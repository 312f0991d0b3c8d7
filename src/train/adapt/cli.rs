//! `affectd train adapt`: arguments, the captured windows with their texts, and the run.

use std::path::{Path, PathBuf};

use anyhow::Context;

use tracing::{info, warn};

use super::pairs::{self, PairedWindows};
use super::report::Report;
use super::run::{Outcome, Paths, Run};
use super::settings::{Objective, Settings};
use crate::model::ClipTokenizer;
use crate::train::data::{CapturedWindows, WindowSource};
use crate::train::optim::{AdamWConfig, Schedule};
use crate::train::served::{DeviceArg, ModelSource, Served};

/// `--objective`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectiveArg {
    /// Symmetric InfoNCE (CLIP), the baseline.
    Clip,
    /// EmotionCLIP's sentiment-guided contrastive loss.
    Snce,
    /// PACL's partitioned adaptive contrastive learning.
    Pacl,
}

#[derive(clap::Args, Debug, Clone)]
pub struct AdaptArgs {
    /// The objective: `clip` (InfoNCE), `snce` (EmotionCLIP) or `pacl`.
    #[arg(long, value_enum)]
    pub objective: ObjectiveArg,
    /// Capture dataset (`[capture] dir`).
    #[arg(long)]
    pub data: PathBuf,
    /// Texts of the windows: `{"sample": "<capture id>", "text": "..."}` per line.
    #[arg(long)]
    pub pairs: PathBuf,
    /// Output folder: adapted.safetensors, config.json, report.json, report.png, checkpoint/.
    #[arg(long)]
    pub out: PathBuf,
    /// Daemon config: its `[model]` is the model adapted and its `[readout]` classes give
    /// the sentiment distributions (default: the ViT-B/32 preset and the built-in classes).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Weights to adapt (.safetensors or the official release .pt); overrides `[model]
    /// weights`.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Hyperparameters of those weights (JSON, official layout); overrides `[model] config`.
    #[arg(long)]
    pub model_config: Option<PathBuf>,
    /// Frame-encoder blocks trained, counted from the last (with `ln_post` and `proj`);
    /// 0 keeps the frame encoder fixed and trains from its cached outputs.
    #[arg(long, default_value_t = 2)]
    pub blocks: usize,
    /// Keep the temporal encoder fixed.
    #[arg(long)]
    pub freeze_temporal: bool,
    /// Temperature of the contrastive logits (default: the model's own, 1/exp(logit_scale),
    /// for clip and snce; 0.07 for pacl, as the paper).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// snce: strength of the reweighting, `w_ij = beta / KL(s_i || s_j)` (EmotionCLIP's
    /// released training default is 10; 0 is InfoNCE).
    #[arg(long, default_value_t = 10.0)]
    pub beta: f64,
    /// pacl: partition threshold of both the factual and the emotional match.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.7)]
    pub sigma: f64,
    /// pacl: threshold of the factual match (video-text cosine) alone, overriding --sigma.
    #[arg(long, allow_negative_numbers = true)]
    pub sigma_factual: Option<f64>,
    /// pacl: threshold of the emotional match (sentiment cosine) alone, overriding --sigma.
    #[arg(long, allow_negative_numbers = true)]
    pub sigma_emotional: Option<f64>,
    /// pacl: k-means clusters per modality for the pseudo-labels.
    #[arg(long, default_value_t = 2)]
    pub clusters: usize,
    /// Cache of the served model's outputs per window, shareable between runs (default:
    /// OUT/model-cache).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Optimiser steps.
    #[arg(long, default_value_t = 500)]
    pub steps: usize,
    /// Windows (each with one of its texts) per step.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-5)]
    pub lr: f64,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 50)]
    pub warmup: usize,
    /// Final learning rate as a fraction of the peak (cosine decay).
    #[arg(long, default_value_t = 0.01)]
    pub lr_floor: f64,
    /// AdamW decoupled weight decay (matrices only).
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f64,
    /// Fraction of tracks held out for retrieval and agreement.
    #[arg(long, default_value_t = 0.2)]
    pub val_fraction: f64,
    /// Seed of the split, the data order, the text choice and the k-means starts.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Held-out evaluation every N steps.
    #[arg(long, default_value_t = 50)]
    pub eval_every: usize,
    /// Checkpoint every N steps.
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: usize,
    /// Continue the checkpoint in OUT when it is of this run (same settings, model, windows
    /// and texts); otherwise start over.
    #[arg(long)]
    pub resume: bool,
    /// Stop after this many steps in this invocation, with a checkpoint (`--resume` goes on).
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// Leave out pairs whose sample is not in the dataset (default: refuse).
    #[arg(long)]
    pub skip_unknown: bool,
    /// `cpu`, or `cuda` (needs the `cuda` cargo feature); default: `[model] device`.
    #[arg(long, value_enum)]
    pub device: Option<DeviceArg>,
}

/// Why the command failed: usage problems exit 2, the rest 1.
pub enum AdaptError {
    Usage(anyhow::Error),
    Runtime(anyhow::Error),
}

/// Pairs naming samples that are not in the dataset, listed in the error.
const LISTED: usize = 10;

fn settings(args: &AdaptArgs, served: &Served) -> anyhow::Result<Settings> {
    let pick = |one: Option<f64>| one.unwrap_or(args.sigma);
    let objective = match args.objective {
        ObjectiveArg::Clip => Objective::Clip,
        ObjectiveArg::Snce => Objective::Snce { beta: args.beta },
        ObjectiveArg::Pacl => Objective::Pacl {
            sigma_factual: pick(args.sigma_factual),
            sigma_emotional: pick(args.sigma_emotional),
            clusters: args.clusters,
        },
    };
    if matches!(objective, Objective::Pacl { clusters: 0, .. }) {
        anyhow::bail!("--clusters must be positive")
    }
    if !(args.beta >= 0.0 && args.beta.is_finite()) {
        anyhow::bail!("--beta {}: must be a finite number >= 0", args.beta)
    }
    let temperature = match (args.temperature, objective) {
        (Some(t), _) => t,
        (None, Objective::Pacl { .. }) => 0.07,
        (None, _) => 1.0 / f64::from(served.model.logit_scale_exp()?),
    };
    if !(temperature > 0.0 && temperature.is_finite()) {
        anyhow::bail!("--temperature {temperature}: must be positive")
    }
    let layers = served.model.config().vision_cfg.layers;
    if args.blocks > layers {
        anyhow::bail!(
            "--blocks {}: the model has {layers} frame-encoder blocks",
            args.blocks
        )
    }
    Ok(Settings {
        objective,
        temperature,
        blocks: args.blocks,
        temporal: !args.freeze_temporal,
        steps: args.steps,
        batch: args.batch,
        schedule: Schedule::new(args.lr, args.warmup, args.steps, args.lr_floor),
        adamw: AdamWConfig::with_weight_decay(args.weight_decay),
        val_fraction: args.val_fraction,
        seed: args.seed,
        eval_every: args.eval_every,
        checkpoint_every: args.checkpoint_every,
    })
}

/// The captured windows with their texts: pairs of unknown samples are refused unless
/// `--skip-unknown`.
fn paired_windows(args: &AdaptArgs) -> anyhow::Result<PairedWindows> {
    let captured = CapturedWindows::open(&args.data)
        .with_context(|| format!("--data {}", args.data.display()))?;
    let (pairs, repeated) = pairs::read(&args.pairs)?;
    if repeated > 0 {
        info!(repeated, "pairs repeating an earlier line left out");
    }
    let (paired, unknown) = PairedWindows::new(captured, &pairs);
    if !unknown.is_empty() {
        let mut listed = unknown
            .iter()
            .take(LISTED)
            .map(|p| format!("line {} \"{}\"", p.line, p.sample))
            .collect::<Vec<_>>()
            .join(", ");
        if unknown.len() > LISTED {
            listed.push_str(", ...");
        }
        if !args.skip_unknown {
            anyhow::bail!(
                "{}: {} pair(s) name samples that are not in {}: {listed} (--skip-unknown \
                 trains without them)",
                args.pairs.display(),
                unknown.len(),
                args.data.display()
            )
        }
        warn!(count = unknown.len(), samples = %listed, "pairs of samples not in the dataset skipped");
    }
    Ok(paired)
}

/// Refuses texts the text tower cannot read (a vocabulary smaller than CLIP's BPE), naming
/// the first line of the text; warns about texts cut at the context length.
fn check_texts(args: &AdaptArgs, paired: &PairedWindows, served: &Served) -> anyhow::Result<()> {
    let tokenizer = ClipTokenizer::new();
    let text_cfg = &served.model.config().text_cfg;
    let mut cut = 0;
    for (text, line) in paired.texts.iter().zip(&paired.text_lines) {
        let ids = tokenizer.encode(text);
        if let Some(id) = ids.iter().find(|&&id| id as usize >= text_cfg.vocab_size) {
            anyhow::bail!(
                "{}:{line}: the text's CLIP BPE token id {id} is outside the text tower's \
                 vocabulary of {} (the model needs the CLIP vocabulary of 49408)",
                args.pairs.display(),
                text_cfg.vocab_size
            )
        }
        cut += usize::from(!ids.contains(&ClipTokenizer::END));
    }
    if cut > 0 {
        warn!(
            texts = cut,
            "texts longer than the {}-token context are cut (as EmotionCLIP's tokenizer does)",
            ClipTokenizer::CONTEXT_LENGTH
        );
    }
    Ok(())
}

/// `affectd train adapt`.
pub fn run(args: &AdaptArgs) -> Result<(), AdaptError> {
    use AdaptError::{Runtime, Usage};
    let (model_cfg, readout_cfg) = ModelSource {
        config: args.config.as_deref(),
        weights: args.weights.as_deref(),
        hparams: args.model_config.as_deref(),
        device: args.device,
        role: "model to adapt",
        weights_flag: "--weights",
    }
    .resolve()
    .map_err(Usage)?;
    let paired = paired_windows(args).map_err(Usage)?;
    let served = Served::load(&model_cfg, &readout_cfg)
        .context("loading the model")
        .map_err(Usage)?;
    paired
        .captured()
        .check_fits(served.model.config(), "the model")
        .with_context(|| format!("--data {}", args.data.display()))
        .map_err(Usage)?;
    check_texts(args, &paired, &served).map_err(Usage)?;
    let settings = settings(args, &served).map_err(Usage)?;
    info!(
        windows = paired.len(),
        pairs = paired.pair_count(),
        texts = paired.texts.len(),
        model = %served.weights.display(),
        objective = settings.objective.name(),
        "adapting"
    );
    let run = Run {
        settings,
        served: &served,
        paired: &paired,
        data: args.data.clone(),
        pairs: args.pairs.clone(),
        paths: Paths {
            out: args.out.clone(),
            cache: args
                .cache
                .clone()
                .unwrap_or_else(|| args.out.join("model-cache")),
        },
        resume: args.resume,
        stop_after: args.stop_after,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let pin = paired.captured().pin(&args.out);
    match run.execute().map_err(Runtime)? {
        Outcome::Stopped { step } => println!("stopped at step {step}; continue with --resume"),
        Outcome::Finished(report) => {
            if let Some(pin) = pin {
                pin.release();
            }
            print_summary(&report, &args.out);
        }
    }
    Ok(())
}

fn print_summary(report: &Report, out: &Path) {
    let (i, f) = (&report.initial, &report.result);
    println!("adapted      {}", report.adapted.weights);
    println!("config       {}", out.join("config.json").display());
    println!(
        "held-out     {} windows, {} candidate texts: video->text R@1 {:.3} -> {:.3}, R@5 {:.3} -> {:.3} (chance {:.3} / {:.3})",
        f.retrieval.windows,
        f.retrieval.candidates,
        i.retrieval.r1,
        f.retrieval.r1,
        i.retrieval.r5,
        f.retrieval.r5,
        f.retrieval.chance_r1,
        f.retrieval.chance_r5
    );
    println!(
        "read-out     top-1 emotion agreement with the served model {:.3}, embedding cosine {:.3}, valence/arousal MAE {:.3}/{:.3}; {} distinct top emotions (served {})",
        f.agreement.top1_agreement,
        f.agreement.embedding_cosine,
        f.agreement.valence_mae,
        f.agreement.arousal_mae,
        f.distinct_top1,
        f.served_distinct_top1
    );
    println!(
        "training     {} {:.2} windows/s over {} steps",
        report.settings.objective.name(),
        report.train_windows_per_s,
        report.steps
    );
    println!("report       {}", out.join("report.json").display());
}
