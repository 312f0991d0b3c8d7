//! The command: read config, labels and dataset, embed the labelled windows, fit, write.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use tracing::{info, warn};

use super::embed::{EmbedError, embed_samples};
use super::examples::Example;
use super::fit::{FitError, FitOptions, fit};
use super::labels::{self, Label, LabelsError};
use super::report::FitReport;
use crate::capture::{CaptureError, CropSpec, Dataset, SampleMeta};
use crate::config::{Config, ConfigError};
use crate::encode::ModelConfig;
use crate::model::{self, EmotionClip, ModelId};
use crate::readout::HeadsFile;
use crate::train::atomic::write_atomic;

/// `affectd train heads`
#[derive(Debug, Clone, clap::Args)]
pub struct HeadsArgs {
    /// The capture dataset folder (`[capture] dir`).
    #[arg(long)]
    pub data: PathBuf,
    /// `sample,emotion,valence,arousal` per labelled sample.
    #[arg(long)]
    pub labels: PathBuf,
    /// The daemon's config: its `[model]` computes the embeddings.
    #[arg(long, short, default_value = "/etc/affectd/affectd.toml")]
    pub config: PathBuf,
    /// Where to write the heads (safetensors), for `[readout] heads_file`.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the metrics as JSON here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Seed of the train/validation split.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Share of the samples (whole tracks) held out for validation.
    #[arg(long, default_value_t = 0.2, value_parser = fraction)]
    pub val_fraction: f64,
    /// Fix the logistic-regression L2 penalty instead of choosing it on validation.
    #[arg(long, value_parser = penalty)]
    pub l2: Option<f64>,
    /// Fix the ridge penalty (valence and arousal) instead of choosing it on validation.
    #[arg(long, value_parser = penalty)]
    pub ridge: Option<f64>,
    /// Leave out labels whose sample is not in the dataset (default: refuse).
    #[arg(long)]
    pub skip_unknown: bool,
}

fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v < 1.0 => Ok(v),
        _ => Err(format!("`{s}` is not a fraction strictly between 0 and 1")),
    }
}

fn penalty(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("`{s}` is not a positive number")),
    }
}

/// Labels naming samples that are not in the dataset, listed in the error.
const LISTED: usize = 10;

/// Why `affectd train heads` failed; [`HeadsError::is_usage`] decides the exit code.
#[derive(Debug, thiserror::Error)]
pub enum HeadsError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Labels(#[from] LabelsError),
    #[error("{0}: {1}")]
    Dataset(PathBuf, CaptureError),
    #[error(
        "{labels}: {count} label(s) name samples that are not in {data}: {listed} (--skip-unknown trains without them)"
    )]
    UnknownSamples {
        labels: PathBuf,
        data: PathBuf,
        count: usize,
        listed: String,
    },
    #[error("{data}: {problem}")]
    Incompatible { data: PathBuf, problem: String },
    #[error("cannot load the model: {0}")]
    Model(#[from] model::Error),
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error(transparent)]
    Fit(#[from] FitError),
    #[error("{path}: cannot write: {problem}")]
    Write { path: PathBuf, problem: String },
}

impl HeadsError {
    /// True when the fault is in what the user gave (exit 2), not at run time (exit 1).
    pub fn is_usage(&self) -> bool {
        match self {
            Self::Model(e) => e.is_usage(),
            Self::Embed(_) | Self::Write { .. } => false,
            _ => true,
        }
    }
}

/// The JSON report: the fit's report plus what it was fitted on.
#[derive(Debug, Serialize)]
struct Report<'a> {
    model: ModelReport,
    data: DataReport<'a>,
    #[serde(flatten)]
    fit: &'a FitReport,
}

#[derive(Debug, Serialize)]
struct ModelReport {
    name: String,
    /// As published in messages: `sha256:<16 hex>` or `untrained`.
    weights: String,
    /// Full hex digest of the weights file (absent for seeded random weights).
    weights_sha256: Option<String>,
    embed_dim: usize,
}

#[derive(Debug, Serialize)]
struct DataReport<'a> {
    dir: &'a Path,
    labels: &'a Path,
    samples_in_dataset: usize,
    labels_read: usize,
    labels_used: usize,
    unknown_samples_skipped: usize,
}

/// Runs `affectd train heads`.
pub fn run(args: &HeadsArgs) -> Result<(), HeadsError> {
    let config = Config::load(&args.config)?;
    let model_cfg = config.model.as_ref().ok_or_else(|| {
        ConfigError::invalid("model", "is absent: the heads are fitted on its embeddings")
    })?;
    let labels = labels::read(&args.labels)?;
    let dataset =
        Dataset::open(&args.data).map_err(|e| HeadsError::Dataset(args.data.clone(), e))?;
    let (known, skipped) = labels_in_dataset(args, &labels, &dataset)?;

    // The encoder as the daemon serves it (the read-out's text side is not needed).
    let (encoder, digest) = crate::encode::load_encoder(model_cfg)?;
    let id = ModelId::new(model_cfg.name.clone(), digest.as_deref());
    check_windows(args, model_cfg, &encoder, &dataset)?;
    info!(windows = known.len(), model = %id.name, weights = %id.weights, "embedding labelled windows");
    let examples = embed_labelled(&encoder, &dataset, &known, model_cfg.max_batch)?;

    let options = FitOptions {
        seed: args.seed,
        val_fraction: args.val_fraction,
        l2: args.l2,
        ridge: args.ridge,
    };
    let mut fitted = fit(&examples, &options)?;
    fitted.heads.model_name = Some(id.name.clone());
    fitted.heads.model_weights = Some(id.weights.clone());

    let report = Report {
        model: ModelReport {
            name: id.name.clone(),
            weights: id.weights.clone(),
            weights_sha256: digest,
            embed_dim: encoder.embed_dim(),
        },
        data: DataReport {
            dir: &args.data,
            labels: &args.labels,
            samples_in_dataset: dataset.samples().len(),
            labels_read: labels.len(),
            labels_used: examples.len(),
            unknown_samples_skipped: skipped,
        },
        fit: &fitted.report,
    };
    write_outputs(args, &fitted.heads, &report)?;
    print_summary(&fitted.report, &args.out);
    Ok(())
}

/// Labels with the metadata of their sample.
type Known<'a> = Vec<(&'a Label, &'a SampleMeta)>;

/// The labels whose sample is in the dataset, with its metadata, and how many were left
/// out: labels of unknown samples are refused unless `--skip-unknown`.
fn labels_in_dataset<'a>(
    args: &HeadsArgs,
    labels: &'a [Label],
    dataset: &'a Dataset,
) -> Result<(Known<'a>, usize), HeadsError> {
    let by_id: HashMap<&str, &SampleMeta> = dataset
        .samples()
        .iter()
        .map(|s| (s.id.as_str(), s))
        .collect();
    let (known, unknown): (Vec<_>, Vec<_>) = labels
        .iter()
        .partition(|l| by_id.contains_key(l.sample.as_str()));
    if !unknown.is_empty() {
        let listed = unknown
            .iter()
            .take(LISTED)
            .map(|l| format!("line {} \"{}\"", l.line, l.sample))
            .collect::<Vec<_>>()
            .join(", ");
        let listed = if unknown.len() > LISTED {
            format!("{listed}, ...")
        } else {
            listed
        };
        if !args.skip_unknown {
            return Err(HeadsError::UnknownSamples {
                labels: args.labels.clone(),
                data: args.data.clone(),
                count: unknown.len(),
                listed,
            });
        }
        warn!(count = unknown.len(), samples = %listed, "labels of samples not in the dataset skipped");
    }
    let known = known
        .into_iter()
        .map(|l| (l, by_id[l.sample.as_str()]))
        .collect();
    Ok((known, unknown.len()))
}

/// Refuses windows of another size or length than the encoder takes; warns when they were
/// cropped differently from what `[model]` crops live.
fn check_windows(
    args: &HeadsArgs,
    model_cfg: &ModelConfig,
    encoder: &EmotionClip,
    dataset: &Dataset,
) -> Result<(), HeadsError> {
    let manifest = dataset.manifest();
    let (size, frames) = (encoder.config().vision_cfg.image_size, encoder.video_len());
    if (manifest.image_size, manifest.video_len) != (size, frames) {
        return Err(HeadsError::Incompatible {
            data: args.data.clone(),
            problem: format!(
                "holds {}, the configured model takes {size} px x {frames} frames",
                manifest.shape()
            ),
        });
    }
    if manifest.crop != CropSpec::from(model_cfg.crop_policy()) {
        warn!(
            captured = %manifest.crop,
            "the windows were cropped differently from what [model] crops live; the heads will see other inputs at run time"
        );
    }
    Ok(())
}

/// The labelled windows with their embeddings by `encoder`, in `max_batch` windows at a
/// time, with progress logged every ten seconds.
fn embed_labelled(
    encoder: &EmotionClip,
    dataset: &Dataset,
    known: &[(&Label, &SampleMeta)],
    max_batch: usize,
) -> Result<Vec<Example>, HeadsError> {
    let wanted: Vec<&SampleMeta> = known.iter().map(|(_, meta)| *meta).collect();
    let t0 = Instant::now();
    let total = wanted.len();
    let mut last_log = Instant::now();
    let embeddings = embed_samples(encoder, dataset, &wanted, max_batch, |done| {
        if last_log.elapsed().as_secs() >= 10 || done == total {
            info!(done, total, "embedded");
            last_log = Instant::now();
        }
    })?;
    info!(seconds = t0.elapsed().as_secs_f64(), "embeddings done");
    Ok(known
        .iter()
        .zip(embeddings)
        .map(|((label, meta), embedding)| Example {
            sample: label.sample.clone(),
            camera: meta.camera.clone(),
            track_id: meta.track_id,
            embedding,
            emotion: label.emotion.clone(),
            va: label.va,
        })
        .collect())
}

/// The heads at `--out` and, with `--report`, the report beside them.
fn write_outputs(args: &HeadsArgs, heads: &HeadsFile, report: &Report) -> Result<(), HeadsError> {
    let json = serde_json::to_string_pretty(report).map_err(|e| HeadsError::Write {
        path: args.report.clone().unwrap_or_default(),
        problem: e.to_string(),
    })?;
    write_atomically(&args.out, |tmp| heads.write(tmp))?;
    if let Some(path) = &args.report {
        write_atomically(path, |tmp| {
            std::fs::write(tmp, format!("{json}\n")).map_err(|e| e.to_string())
        })?;
    }
    Ok(())
}

/// `write_atomic` (a temporary file renamed over `path`: a daemon never reads half a
/// file) with this command's error.
fn write_atomically(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<(), HeadsError> {
    write_atomic(path, |tmp| write(tmp).map_err(anyhow::Error::msg)).map_err(|e| {
        HeadsError::Write {
            path: path.to_owned(),
            problem: e.root_cause().to_string(),
        }
    })
}

fn print_summary(report: &FitReport, out: &Path) {
    let s = &report.split;
    println!(
        "split    {} train / {} validation windows ({} / {} tracks, seed {})",
        s.samples_train, s.samples_validation, s.tracks_train, s.tracks_validation, s.seed
    );
    match &report.emotion {
        Some(e) => println!(
            "emotion  {} classes, l2 {:e}: validation accuracy {:.3}, macro mAP {}",
            e.classes.len(),
            e.l2,
            e.accuracy,
            e.macro_map.map_or("n/a".into(), |m| format!("{m:.3}"))
        ),
        None => println!("emotion  no head (not enough emotion labels)"),
    }
    match &report.valence_arousal {
        Some(va) => {
            for (name, t) in [("valence", &va.valence), ("arousal", &va.arousal)] {
                println!(
                    "{name}  lambda {:e}: validation MSE {:.4}, R2 {}",
                    t.lambda,
                    t.mse,
                    t.r2.map_or("n/a".into(), |r| format!("{r:.3}"))
                );
            }
        }
        None => println!("valence/arousal  no head (not enough valence/arousal labels)"),
    }
    println!("wrote    {}", out.display());
}
