//! `affectd train`: adaptation on site, in the daemon's own binary (no Python, no PyTorch).
//!
//! - `distill`: a smaller, faster student encoder learnt from the full candle EmotionCLIP
//!   (the teacher) on windows captured at the site (`[capture]`).
//! - `heads`: linear emotion and valence/arousal heads fitted on frozen embeddings.

pub mod data;
pub mod distill;
pub mod distill_cli;
pub mod heads;
pub mod loss;
pub mod optim;
mod plot;
pub mod report;
pub mod student;
pub mod teacher;
