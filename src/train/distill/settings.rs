//! What decides the result of a distillation run.

use serde::{Deserialize, Serialize};

use super::loss::LossWeights;
use crate::train::optim::{AdamWConfig, Schedule};

/// Everything that decides the result of a run (recorded in checkpoints and the report; a
/// checkpoint resumes only under the same settings).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Settings {
    /// A preset name or a config path.
    pub student: String,
    pub steps: usize,
    pub batch: usize,
    pub schedule: Schedule,
    pub adamw: AdamWConfig,
    pub loss: LossWeights,
    pub val_fraction: f64,
    pub seed: u64,
    pub eval_every: usize,
    pub checkpoint_every: usize,
}
