//! Ingest: GStreamer sources -> RGB [`Frame`](crate::types::Frame)s at a set rate.

mod config;

pub use config::{CameraConfig, Decoder, IngestConfig, RtspTransport, Source, redact_userinfo};
