//! `affectd train distill`: a smaller, faster student encoder learnt from the full candle
//! EmotionCLIP (the teacher).
//!
//! In: windows captured at the site (`[capture] dir`, as a [`WindowSource`]) and the teacher
//! (`[model]`, with the `[readout]` classes of its zero-shot distribution).
//! Out, in the `--out` folder: `student.safetensors` and `config.json` (what the daemon's
//! `[model] weights` / `config` point at), `report.json` and `report.png`, and
//! `checkpoint/` for `--resume`.

mod checkpoint;
pub mod cli;
pub mod loss;
pub mod report;
mod run;
mod settings;
pub mod student;
mod trainer;

pub use crate::train::data::WindowSource;
/// The teacher is the model the daemon serves.
pub use crate::train::served::Served as Teacher;
pub use checkpoint::{EvalRecord, RunState, StepRecord};
pub use cli::{DistillArgs, DistillError, run};
pub use report::Report;
pub use run::{Outcome, Paths, Run};
pub use settings::Settings;
