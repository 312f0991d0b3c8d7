//! What a distillation checkpoint records besides tensors (`crate::train::checkpoint` holds
//! the format): each step's loss and each evaluation's agreement with the teacher.

use serde::{Deserialize, Serialize};

use super::Teacher;
use super::loss::{Agreement, LossParts};
use super::settings::Settings;
use crate::train::data::WindowSource;

/// One training step's record.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct StepRecord {
    pub step: usize,
    pub lr: f64,
    pub loss: LossParts,
}

/// The held-out agreement after `step` steps.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct EvalRecord {
    pub step: usize,
    pub agreement: Agreement,
}

/// The progress of a distillation run.
pub type RunState = crate::train::checkpoint::RunState<StepRecord, EvalRecord>;

/// Identifies a run: its settings, its teacher and the ids of its windows.
pub fn fingerprint(settings: &Settings, teacher: &Teacher, source: &dyn WindowSource) -> String {
    crate::train::checkpoint::fingerprint(settings, &teacher.sha256, source, &[])
}
