//! `affectd train`: adaptation on site, in the daemon's own binary (no Python, no PyTorch).
//!
//! - `distill`: a smaller, faster student encoder learnt from the full candle EmotionCLIP
//!   (the teacher) on windows captured at the site (`[capture]`).
//! - `heads`: linear emotion and valence/arousal heads fitted on frozen embeddings.
//!
//! Both write their results with `atomic::write_atomic`, so a daemon reloading them never
//! reads half a file.

mod atomic;
pub mod distill;
pub mod heads;
