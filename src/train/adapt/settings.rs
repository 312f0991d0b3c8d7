//! What decides the result of an adaptation run.

use serde::{Deserialize, Serialize};

use crate::train::optim::{AdamWConfig, Schedule};

/// The contrastive objective and its hyperparameters.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum Objective {
    /// Symmetric InfoNCE (CLIP): the baseline.
    Clip,
    /// EmotionCLIP's sentiment-guided contrastive loss (Eq. 5-7): negatives' logits lowered
    /// by `beta / KL(s_i || s_j)` of the texts' sentiment distributions.
    Snce { beta: f64 },
    /// PACL: pairs partitioned by factual and emotional match at the thresholds, k-means
    /// pseudo-labels with `clusters` clusters per modality, positives and negatives built per
    /// partition, strong -> partial -> weak-coupled over the run's thirds.
    Pacl {
        sigma_factual: f64,
        sigma_emotional: f64,
        clusters: usize,
    },
}

impl Objective {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Clip => "clip",
            Self::Snce { .. } => "snce",
            Self::Pacl { .. } => "pacl",
        }
    }
}

/// Everything that decides the result of a run (recorded in checkpoints and the report; a
/// checkpoint resumes only under the same settings).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Settings {
    pub objective: Objective,
    /// Temperature tau of the contrastive logits `cos / tau`.
    pub temperature: f64,
    /// Frame-encoder blocks trained, counted from the last (with `ln_post` and `proj` when
    /// one or more); 0 trains none.
    pub blocks: usize,
    /// Whether the temporal encoder trains.
    pub temporal: bool,
    pub steps: usize,
    pub batch: usize,
    pub schedule: Schedule,
    pub adamw: AdamWConfig,
    pub val_fraction: f64,
    pub seed: u64,
    pub eval_every: usize,
    pub checkpoint_every: usize,
}
