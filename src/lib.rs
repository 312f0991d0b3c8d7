//! affectd: per-person emotion and valence/arousal from camera streams, published over MQTT.
//!
//! The modules are the pipeline's stages, in data-flow order.

pub mod config;
pub mod detect;
pub mod ingest;
pub mod model;
pub mod publish;
pub mod service;
pub mod track;
pub mod types;
pub mod window;
