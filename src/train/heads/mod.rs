//! `affectd train heads`: linear emotion and valence/arousal heads on frozen EmotionCLIP
//! video embeddings.
//!
//! In: captured windows (`[capture] dir`), a labels CSV naming some of them, and the
//! daemon's `[model]` (the frozen encoder). Out: the heads file for `[readout] heads_file`
//! and, with `--report`, the validation metrics as JSON. `fit` describes the protocol.

mod cli;
mod embed;
mod emotion;
mod examples;
mod fit;
pub mod labels;
mod linalg;
mod logistic;
mod metrics;
mod report;
mod ridge;
mod va;

pub use cli::{HeadsArgs, HeadsError, run};
pub use embed::{EmbedError, embed_samples};
pub use emotion::L2_GRID;
pub use examples::Example;
pub use fit::{FitError, FitOptions, Fitted, fit};
pub use report::{
    ClassReport, EmotionReport, FitReport, GridPoint, SplitReport, TargetReport, VaReport,
};
pub use va::RIDGE_GRID;

#[cfg(test)]
mod tests;
