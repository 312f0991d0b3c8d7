//! Encode: the encoder stage, serving EmotionCLIP on every tracked person's window.
//!
//! In: [`PersonSample`](crate::types::PersonSample)s and track endings from the analytics
//! ([`EncoderSender`]), reloaded models. Out: a [`PersonAffect`](crate::types::PersonAffect)
//! per window update and each track's `end` after its last window, to a
//! [`ResultSink`](crate::types::ResultSink); due windows to a [`WindowTap`] (capture).
//! `[model]` is [`ModelConfig`]; what runs the networks (candle or ONNX Runtime), [`Engine`].

mod config;
mod engine;
mod live;
mod load;
mod persons;
mod stage;
mod tap;
mod worker;

pub use crate::model::{CandleEngine, Engine};
pub use config::{Crop, ModelConfig, ModelDevice, ModelDtype, ModelRuntime};
pub use engine::{OnnxEngine, embed, probe as probe_engine, select as select_engine};
pub use live::{LiveEncoder, WindowUpdate};
pub use load::{LoadedModel, build_readout, load, load_encoder};
pub use persons::{Person, Persons};
pub use stage::{EncoderSender, EncoderStage, EncoderStats, Settings, StageOptions, SwapReply};
pub use tap::{TappedWindow, WindowTap};

#[cfg(test)]
mod tests;
