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
pub mod data;
pub mod loss;
pub mod optim;
mod plot;
pub mod report;
mod run;
mod settings;
pub mod student;
pub mod teacher;
mod trainer;

pub use checkpoint::{EvalRecord, RunState, StepRecord};
pub use cli::{DistillArgs, DistillError, run};
pub use data::WindowSource;
pub use report::Report;
pub use run::{Outcome, Paths, Run};
pub use settings::Settings;
pub use teacher::Teacher;
