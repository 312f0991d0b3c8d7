//! `affectd train adapt`: the served EmotionCLIP video encoder fine-tuned on captured windows
//! paired with text (operator notes, transcripts, descriptions), against its frozen text
//! tower.
//!
//! In: a capture dataset, `pairs.jsonl` ([`pairs`]) and the daemon's `[model]` (the starting
//! point) with its `[readout]` classes (the sentiment distributions, [`sentiment`]). The last
//! `--blocks` frame-encoder blocks and the temporal encoder train ([`model`]) under one of
//! three objectives ([`loss`]): `clip` (InfoNCE), `snce` (EmotionCLIP, Eq. 5-7) or `pacl`
//! (partitioned adaptive contrastive learning, with [`pacl`] preparing the partitions and
//! pseudo-labels). Out, in `--out`: `adapted.safetensors` and `config.json` (what `[model]
//! weights` / `config` point at), `report.json` and `report.png` (held-out video -> text
//! retrieval and agreement with the served read-out, before and after), and `checkpoint/`
//! for `--resume`.

pub mod cli;
pub mod loss;
pub mod model;
pub mod pacl;
pub mod pairs;
pub mod report;
pub mod retrieval;
mod run;
pub mod sentiment;
pub mod settings;
mod trainer;

pub use cli::{AdaptArgs, AdaptError, run};
pub use report::Report;
pub use run::{Outcome, Paths, Run, embed_texts};
pub use settings::{Objective, Settings};
pub use trainer::{Evaluation, StepRecord};
