//! affectd: per-person emotion and valence/arousal from camera streams, published over MQTT.
//!
//! The stages, in data-flow order: ingest -> detect -> track -> window -> model -> publish;
//! `capture` stores windows for training, `service` runs them, `config` and `types` are
//! shared, `digest` names files by content; `train` fits models on captured data.

pub mod capture;
pub mod config;
pub mod detect;
pub mod digest;
pub mod ingest;
pub mod model;
pub mod publish;
pub mod service;
pub mod track;
pub mod train;
pub mod types;
pub mod window;
