//! `affectd train heads`: linear heads on frozen EmotionCLIP video embeddings.
//!
//! The EmotionCLIP paper's linear-probe protocol (Zhang et al., CVPR 2023, after
//! CLIP): the encoder stays frozen, a multinomial logistic regression with an L2 penalty
//! predicts the emotion class, a ridge regression predicts valence and arousal, and the
//! regularisation strength is chosen on a validation split.
//!
//! - Input: the raw video embedding (not L2-normalised), as the read-out applies the heads.
//!   Features are standardised with the training mean/std for fitting and the scaling is
//!   folded back into the written weights, so the head file maps raw embeddings.
//! - Split: by track (camera + track id), shuffled with `--seed`; every window of one person
//!   lands on one side. Hyperparameters: the logistic `l2` minimising validation log-loss and,
//!   per target, the ridge `lambda` minimising validation MSE (ties: the stronger penalty).
//!   The reported metrics are those of the fit on the training split; the written heads are
//!   then refitted on training + validation with the chosen hyperparameters.
//! - Deterministic: the same data, labels and seed give the same file.

mod cli;
mod embed;
pub mod labels;
mod linalg;
mod logistic;
mod metrics;
mod ridge;
mod split;

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::Serialize;

use crate::model::{EmotionHead, HeadsFile, VaHead};
use linalg::{Matrix, Standardiser};
use logistic::{Logistic, Stop};
use ridge::NormalEquations;

pub use cli::{HeadsError, run};
pub use embed::{EmbedError, embed_samples};

/// Default logistic-regression penalties tried (on standardised features, mean loss).
pub const L2_GRID: [f64; 6] = [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0];
/// Default ridge penalties tried (on standardised features, summed squared error).
pub const RIDGE_GRID: [f64; 8] = [1e-2, 1e-1, 1.0, 1e1, 1e2, 1e3, 1e4, 1e5];

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

/// One labelled window with its embedding.
#[derive(Debug, Clone)]
pub struct Example {
    pub sample: String,
    pub camera: String,
    pub track_id: u64,
    /// Raw video embedding.
    pub embedding: Vec<f32>,
    pub emotion: Option<String>,
    /// Valence and arousal.
    pub va: Option<[f64; 2]>,
}

/// How to fit.
#[derive(Debug, Clone)]
pub struct FitOptions {
    pub seed: u64,
    pub val_fraction: f64,
    pub l2: Option<f64>,
    pub ridge: Option<f64>,
}

impl Default for FitOptions {
    fn default() -> Self {
        Self {
            seed: 0,
            val_fraction: 0.2,
            l2: None,
            ridge: None,
        }
    }
}

/// The fitted heads and what was measured on the way.
#[derive(Debug, Clone)]
pub struct Fitted {
    pub heads: HeadsFile,
    pub report: FitReport,
}

/// Validation metrics and choices (the JSON report, without the model identity).
#[derive(Debug, Clone, Serialize)]
pub struct FitReport {
    pub input: &'static str,
    pub final_fit: &'static str,
    pub split: SplitReport,
    pub emotion: Option<EmotionReport>,
    pub valence_arousal: Option<VaReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SplitReport {
    pub by: &'static str,
    pub seed: u64,
    pub validation_fraction: f64,
    pub samples_train: usize,
    pub samples_validation: usize,
    pub tracks_train: usize,
    pub tracks_validation: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct EmotionReport {
    pub classes: Vec<String>,
    pub l2: f64,
    pub l2_fixed: bool,
    pub grid: Vec<GridPoint>,
    pub samples_train: usize,
    pub samples_validation: usize,
    pub accuracy: f64,
    /// Mean over classes with validation samples of their average precision.
    pub macro_map: Option<f64>,
    pub log_loss: f64,
    pub per_class: Vec<ClassReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GridPoint {
    pub penalty: f64,
    /// Validation log-loss (emotion) or MSE (valence/arousal).
    pub loss: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassReport {
    pub class: String,
    pub support_train: usize,
    pub support_validation: usize,
    pub average_precision: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VaReport {
    pub samples_train: usize,
    pub samples_validation: usize,
    pub valence: TargetReport,
    pub arousal: TargetReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    pub lambda: f64,
    pub lambda_fixed: bool,
    pub grid: Vec<GridPoint>,
    /// Of the predictions clamped to [-1, 1], as the read-out publishes them.
    pub mse: f64,
    pub r2: Option<f64>,
}

/// Why the data cannot be fitted.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    #[error("examples have embeddings of {0} and {1} values")]
    Width(usize, usize),
    #[error("sample {0}: the embedding has non-finite values")]
    NonFinite(String),
    #[error(
        "all labelled samples come from one track; validation needs at least two tracks (camera + track id)"
    )]
    OneTrack,
    #[error(
        "nothing to fit: the emotion head needs two classes with training samples, the valence/arousal head two training and one validation sample ({0})"
    )]
    Nothing(String),
}

/// Fits the heads present in the labels: emotion when at least two classes have training
/// samples and validation has one, valence/arousal when both sides have labelled samples.
pub fn fit(examples: &[Example], opts: &FitOptions) -> Result<Fitted, FitError> {
    let dim = examples.first().map_or(0, |e| e.embedding.len());
    if let Some(e) = examples.iter().find(|e| e.embedding.len() != dim) {
        return Err(FitError::Width(dim, e.embedding.len()));
    }
    if let Some(e) = examples
        .iter()
        .find(|e| e.embedding.iter().any(|v| !v.is_finite()))
    {
        return Err(FitError::NonFinite(e.sample.clone()));
    }
    let groups: Vec<(String, u64)> = examples
        .iter()
        .map(|e| (e.camera.clone(), e.track_id))
        .collect();
    let is_val =
        split::by_track(&groups, opts.val_fraction, opts.seed).ok_or(FitError::OneTrack)?;
    let tracks = |val: bool| {
        groups
            .iter()
            .zip(&is_val)
            .filter(|(_, v)| **v == val)
            .map(|(g, _)| g)
            .collect::<BTreeSet<_>>()
            .len()
    };
    let split = SplitReport {
        by: "camera+track",
        seed: opts.seed,
        validation_fraction: opts.val_fraction,
        samples_train: is_val.iter().filter(|v| !**v).count(),
        samples_validation: is_val.iter().filter(|v| **v).count(),
        tracks_train: tracks(false),
        tracks_validation: tracks(true),
    };
    let rows = |keep: &dyn Fn(&Example) -> bool, val: Option<bool>| -> Vec<usize> {
        (0..examples.len())
            .filter(|&i| keep(&examples[i]) && val.is_none_or(|v| is_val[i] == v))
            .collect()
    };
    let matrix = |idx: &[usize]| {
        let data: Vec<Vec<f64>> = idx
            .iter()
            .map(|&i| {
                examples[i]
                    .embedding
                    .iter()
                    .map(|&v| f64::from(v))
                    .collect()
            })
            .collect();
        let refs: Vec<&[f64]> = data.iter().map(Vec::as_slice).collect();
        Matrix::from_rows(&refs, dim)
    };

    // Emotion head.
    let has_emotion = |e: &Example| e.emotion.is_some();
    let (em_train, em_val) = (
        rows(&has_emotion, Some(false)),
        rows(&has_emotion, Some(true)),
    );
    let train_classes: BTreeSet<&str> = em_train
        .iter()
        .filter_map(|&i| examples[i].emotion.as_deref())
        .collect();
    let mut why_not = Vec::new();
    let (emotion_head, emotion_report) = if train_classes.len() >= 2 && !em_val.is_empty() {
        let classes: Vec<String> = examples
            .iter()
            .filter_map(|e| e.emotion.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let label = |i: &usize| {
            let name = examples[*i].emotion.as_deref().unwrap_or_default();
            classes.iter().position(|c| c == name).unwrap_or_default()
        };
        let (yt, yv): (Vec<usize>, Vec<usize>) = (
            em_train.iter().map(label).collect(),
            em_val.iter().map(label).collect(),
        );
        let report = fit_emotion(
            &matrix(&em_train),
            &yt,
            &matrix(&em_val),
            &yv,
            &classes,
            opts.l2,
        );
        let all = rows(&has_emotion, None);
        let ya: Vec<usize> = all.iter().map(label).collect();
        let head = refit_emotion(&matrix(&all), &ya, classes.clone(), report.l2);
        (Some(head), Some(report))
    } else {
        why_not.push(format!(
            "{} emotion class(es) in training, {} validation sample(s) with an emotion",
            train_classes.len(),
            em_val.len()
        ));
        (None, None)
    };

    // Valence/arousal head.
    let has_va = |e: &Example| e.va.is_some();
    let (va_train, va_val) = (rows(&has_va, Some(false)), rows(&has_va, Some(true)));
    let (va_head, va_report) = if va_train.len() >= 2 && !va_val.is_empty() {
        let target = |idx: &[usize], t: usize| -> Vec<f64> {
            idx.iter()
                .map(|&i| examples[i].va.unwrap_or_default()[t])
                .collect()
        };
        let (xt, xv) = (matrix(&va_train), matrix(&va_val));
        let scaler = Standardiser::fit(&xt);
        let (zt, zv) = (scaler.apply(&xt), scaler.apply(&xv));
        let mut reports = Vec::new();
        for t in 0..2 {
            reports.push(fit_target(
                &zt,
                &target(&va_train, t),
                &zv,
                &target(&va_val, t),
                opts.ridge,
            ));
        }
        let all = rows(&has_va, None);
        let xa = matrix(&all);
        let scaler = Standardiser::fit(&xa);
        let za = scaler.apply(&xa);
        let mut weight = Vec::with_capacity(2 * dim);
        let mut bias = [0.0f32; 2];
        for (t, r) in reports.iter().enumerate() {
            let (w, b) = NormalEquations::new(&za, &target(&all, t)).solve_at_least(r.lambda);
            let (rw, rb) = scaler.fold(&w, &[b]);
            weight.extend(rw.iter().map(|&v| v as f32));
            bias[t] = rb[0] as f32;
        }
        let [valence, arousal]: [TargetReport; 2] = match reports.try_into() {
            Ok(pair) => pair,
            Err(_) => unreachable!("one report per target"),
        };
        (
            Some(VaHead { weight, bias }),
            Some(VaReport {
                samples_train: va_train.len(),
                samples_validation: va_val.len(),
                valence,
                arousal,
            }),
        )
    } else {
        why_not.push(format!(
            "{} training and {} validation sample(s) with valence/arousal",
            va_train.len(),
            va_val.len()
        ));
        (None, None)
    };
    if emotion_head.is_none() && va_head.is_none() {
        return Err(FitError::Nothing(why_not.join("; ")));
    }
    Ok(Fitted {
        heads: HeadsFile {
            valence_arousal: va_head,
            emotion: emotion_head,
            model_name: None,
            model_weights: None,
        },
        report: FitReport {
            input: "raw video embedding (not L2-normalised); standardised by the training mean/std while fitting, folded into the weights",
            final_fit: "train+validation with the chosen hyperparameters; metrics are of the train-only fit on validation",
            split,
            emotion: emotion_report,
            valence_arousal: va_report,
        },
    })
}

/// Chooses `l2` (or takes the fixed one) and measures the train-only fit on validation.
fn fit_emotion(
    xt: &Matrix,
    yt: &[usize],
    xv: &Matrix,
    yv: &[usize],
    classes: &[String],
    fixed: Option<f64>,
) -> EmotionReport {
    let k = classes.len();
    let scaler = Standardiser::fit(xt);
    let (zt, zv) = (scaler.apply(xt), scaler.apply(xv));
    let candidates: Vec<f64> = match fixed {
        Some(l2) => vec![l2],
        None => L2_GRID.to_vec(),
    };
    let mut grid = Vec::new();
    let mut best: Option<(f64, Vec<Vec<f64>>, f64)> = None;
    // Strongest penalty first, so that ties keep the simpler model.
    for &l2 in candidates.iter().rev() {
        let model = Logistic::fit(&zt, yt, k, l2, Stop::default());
        let probs = model.predict(&zv);
        let loss = logistic::log_loss(&probs, yv);
        grid.push(GridPoint { penalty: l2, loss });
        if best.as_ref().is_none_or(|b| loss < b.2) {
            best = Some((l2, probs, loss));
        }
    }
    grid.reverse();
    let Some((l2, probs, loss)) = best else {
        unreachable!("the candidate list is never empty")
    };
    let per_class = (0..k)
        .map(|c| {
            let scores: Vec<f64> = probs.iter().map(|p| p[c]).collect();
            let positive: Vec<bool> = yv.iter().map(|&y| y == c).collect();
            ClassReport {
                class: classes[c].clone(),
                support_train: yt.iter().filter(|&&y| y == c).count(),
                support_validation: positive.iter().filter(|p| **p).count(),
                average_precision: metrics::average_precision(&scores, &positive),
            }
        })
        .collect::<Vec<_>>();
    let aps: Vec<f64> = per_class
        .iter()
        .filter_map(|c| c.average_precision)
        .collect();
    EmotionReport {
        classes: classes.to_vec(),
        l2,
        l2_fixed: fixed.is_some(),
        grid,
        samples_train: yt.len(),
        samples_validation: yv.len(),
        accuracy: metrics::accuracy(&probs, yv),
        macro_map: (!aps.is_empty()).then(|| aps.iter().sum::<f64>() / aps.len() as f64),
        log_loss: loss,
        per_class,
    }
}

fn refit_emotion(x: &Matrix, y: &[usize], classes: Vec<String>, l2: f64) -> EmotionHead {
    let scaler = Standardiser::fit(x);
    let model = Logistic::fit(&scaler.apply(x), y, classes.len(), l2, Stop::default());
    let (w, b) = scaler.fold(&model.weight, &model.bias);
    EmotionHead {
        classes,
        weight: w.iter().map(|&v| v as f32).collect(),
        bias: b.iter().map(|&v| v as f32).collect(),
    }
}

/// Chooses `lambda` for one target (or takes the fixed one) on standardised features.
fn fit_target(
    zt: &Matrix,
    yt: &[f64],
    zv: &Matrix,
    yv: &[f64],
    fixed: Option<f64>,
) -> TargetReport {
    let normal = NormalEquations::new(zt, yt);
    let candidates: Vec<f64> = match fixed {
        Some(l) => vec![l],
        None => RIDGE_GRID.to_vec(),
    };
    let mut grid = Vec::new();
    let mut best: Option<(f64, Vec<f64>, f64)> = None;
    for &lambda in candidates.iter().rev() {
        let (w, b) = normal.solve_at_least(lambda);
        let pred: Vec<f64> = ridge::predict(&w, b, zv)
            .into_iter()
            .map(|p| p.clamp(-1.0, 1.0))
            .collect();
        let loss = metrics::mse(&pred, yv);
        grid.push(GridPoint {
            penalty: lambda,
            loss,
        });
        if best.as_ref().is_none_or(|b| loss < b.2) {
            best = Some((lambda, pred, loss));
        }
    }
    grid.reverse();
    let Some((lambda, pred, mse)) = best else {
        unreachable!("the candidate list is never empty")
    };
    TargetReport {
        lambda,
        lambda_fixed: fixed.is_some(),
        grid,
        mse,
        r2: metrics::r2(&pred, yv),
    }
}

#[cfg(test)]
mod tests;
