//! The subject-aware EmotionCLIP video encoder in candle (Zhang et al., CVPR 2023;
//! github.com/Xeaver/EmotionCLIP `src/models/base.py`): an OpenCLIP ViT frame encoder with the
//! subject token, a transformer temporal encoder and the CLIP text encoder; and the read-out
//! of its embeddings into emotion scores and valence/arousal.

mod config;
pub mod embed;
mod emotionclip;
mod error;
mod heads_file;
mod live;
mod live_config;
pub mod preprocess;
mod readout;
mod readout_config;
mod stage;
pub mod temporal;
pub mod text;
pub mod tokenizer;
mod transformer;
pub mod vision;
pub mod weights;

pub use config::{EmotionClipConfig, Fusion, TemporalConfig, TextConfig, VisionConfig};
pub use embed::EmbedArgs;
pub use emotionclip::{Backbone, EmotionClip, l2_normalize};
pub use error::Error;
pub use heads_file::{EmotionHead, HEADS_FORMAT, HeadsFile, VaHead};
pub use live::{LiveEncoder, PersonSample, TrackKey, WindowFrames, WindowUpdate};
pub use live_config::{Crop, ModelConfig, ModelDevice, ModelDtype};
pub use readout::{Affect, Ema, Readout, ReadoutError};
pub use readout_config::{EmotionClass, ReadoutConfig, default_classes};
pub use stage::{
    EncoderSender, EncoderStage, LoadedModel, StageOptions, build_readout, load, load_encoder,
};
pub use tokenizer::ClipTokenizer;
