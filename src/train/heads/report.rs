//! What `affectd train heads` measured: the split, the penalties tried and the validation
//! metrics of each head (the JSON report, without the model identity).

use serde::Serialize;

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
