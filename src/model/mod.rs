//! The subject-aware EmotionCLIP network in candle (Zhang et al., CVPR 2023;
//! github.com/Xeaver/EmotionCLIP `src/models/base.py`): an OpenCLIP ViT frame encoder with the
//! subject token, a transformer temporal encoder and the CLIP text encoder; their
//! hyperparameters, weights (official checkpoints, safetensors, seeded), tokenizer and input
//! preprocessing. Knows nothing of streams or messages: the encoder stage (`encode`) serves
//! it, `train` trains it, `embed` is its parity tool.

pub mod embed;
mod emotionclip;
pub mod engine;
mod error;
mod hparams;
mod id;
pub mod preprocess;
pub mod temporal;
pub mod text;
pub mod tokenizer;
pub(crate) mod transformer;
pub mod vision;
pub mod weights;

pub use embed::EmbedArgs;
pub use emotionclip::{Backbone, EmotionClip, l2_normalize};
pub use engine::{CandleEngine, Engine};
pub use error::Error;
pub use hparams::{EmotionClipConfig, Fusion, TemporalConfig, TextConfig, VisionConfig};
pub use id::ModelId;
pub use tokenizer::ClipTokenizer;
