//! Model: EmotionCLIP in candle and the read-out of its embeddings.

mod readout;
mod readout_config;

pub use readout::{Affect, Ema, Readout, ReadoutError};
pub use readout_config::{EmotionClass, ReadoutConfig, default_classes};
