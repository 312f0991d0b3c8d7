//! Fitting the heads: the EmotionCLIP paper's linear-probe protocol (Zhang et al., CVPR 2023,
//! after CLIP): the encoder stays frozen, a multinomial logistic regression with an L2
//! penalty predicts the emotion class, a ridge regression predicts valence and arousal, and
//! the regularisation strength is chosen on a validation split.
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

use std::collections::BTreeSet;

use super::examples::{Example, Sides};
use super::report::{FitReport, SplitReport};
use super::{emotion, va};
use crate::readout::HeadsFile;
use crate::train::data::by_share;

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
    let dim = check_embeddings(examples)?;
    let (is_val, split) = split_by_track(examples, opts)?;
    let sides = Sides::new(examples, dim, is_val);
    let emotion = emotion::fit_head(&sides, opts.l2);
    let va = va::fit_head(&sides, opts.ridge);
    if let (Err(no_emotion), Err(no_va)) = (&emotion, &va) {
        return Err(FitError::Nothing(format!("{no_emotion}; {no_va}")));
    }
    let (emotion_head, emotion_report) = emotion.ok().unzip();
    let (va_head, va_report) = va.ok().unzip();
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

/// The embeddings' common width, when all have it and all their values are finite.
fn check_embeddings(examples: &[Example]) -> Result<usize, FitError> {
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
    Ok(dim)
}

/// Which examples are held out for validation (whole tracks), and the split's report.
fn split_by_track(
    examples: &[Example],
    opts: &FitOptions,
) -> Result<(Vec<bool>, SplitReport), FitError> {
    let groups: Vec<(String, u64)> = examples
        .iter()
        .map(|e| (e.camera.clone(), e.track_id))
        .collect();
    let is_val = by_share(&groups, opts.val_fraction, opts.seed).ok_or(FitError::OneTrack)?;
    let tracks = |val: bool| {
        groups
            .iter()
            .zip(&is_val)
            .filter(|(_, v)| **v == val)
            .map(|(g, _)| g)
            .collect::<BTreeSet<_>>()
            .len()
    };
    let report = SplitReport {
        by: "camera+track",
        seed: opts.seed,
        validation_fraction: opts.val_fraction,
        samples_train: is_val.iter().filter(|v| !**v).count(),
        samples_validation: is_val.iter().filter(|v| **v).count(),
        tracks_train: tracks(false),
        tracks_validation: tracks(true),
    };
    Ok((is_val, report))
}
