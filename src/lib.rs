//! affectd: per-person emotion and valence/arousal from camera streams, published over MQTT.
//!
//! The stages, in data-flow order: ingest -> analytics (detect -> track -> window sampling)
//! -> encode (EmotionCLIP over each person's window, `model`) -> readout -> publish;
//! `capture` stores windows for training, `service` runs the stages, `health` watches them,
//! `observe` serves metrics, health and the live state over HTTP,
//! `config`, `types` and `backoff` are shared, `digest` names files by content; `train` fits
//! models on captured data. ARCHITECTURE.md is the map.

pub mod analytics;
pub mod backoff;
pub mod capture;
pub mod config;
pub mod detect;
pub mod digest;
pub mod draw;
pub mod durable;
pub mod encode;
pub mod health;
pub mod ingest;
pub mod model;
pub mod observe;
pub mod onnx;
pub mod publish;
pub mod readout;
pub mod results;
pub mod service;
pub mod track;
pub mod train;
pub mod types;
pub mod window;
