//! Read-out: a video embedding -> emotion scores and valence/arousal.
//!
//! In: un-normalised video embeddings from the encoder stage. Out: [`Affect`] (scores over
//! the served classes, valence, arousal) and where they come from ([`ReadoutSource`]).
//! Zero-shot from the classes' natural-language descriptions (EmoCLIP) or heads fitted on
//! site ([`HeadsFile`]); `[readout]` is [`ReadoutConfig`].

mod config;
mod heads_file;
mod scores;
mod source;

pub use config::{EmotionClass, ReadoutConfig, default_classes};
pub use heads_file::{EmotionHead, HEADS_FORMAT, HeadsFile, VaHead};
pub use scores::{Affect, Ema, Readout, ReadoutError};
pub use source::{ReadoutSource, ScoresSource, ValenceArousalSource};
