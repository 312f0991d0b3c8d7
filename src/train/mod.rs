//! `affectd train`: adaptation on site, in the daemon's own binary (no Python, no PyTorch).
//!
//! - `distill`: a smaller, faster student encoder learnt from the full candle EmotionCLIP
//!   (the teacher) on windows captured at the site (`[capture]`).
//! - `adapt`: the served encoder fine-tuned against its frozen text tower on captured windows
//!   paired with text (EmotionCLIP's sentiment-guided or PACL's partitioned contrastive
//!   learning, or plain InfoNCE).
//! - `heads`: linear emotion and valence/arousal heads fitted on frozen embeddings.
//!
//! What the trainers share lives here: the windows and their split (`data`), the served
//! model (`served`) and its cached outputs (`cache`), trainable parameters (`params`), AdamW
//! (`optim`), the step loop (`session`) and its checkpoints (`checkpoint`), the zero-shot
//! read-out as tensors (`zero_shot`) and the report chart (`plot`). Results are written with
//! `atomic::write_atomic`, so a daemon reloading them never reads half a file.

pub mod adapt;
mod atomic;
pub mod cache;
pub mod checkpoint;
pub mod data;
pub mod distill;
pub mod heads;
pub mod optim;
pub mod params;
mod plot;
pub mod served;
pub mod session;
pub mod zero_shot;
