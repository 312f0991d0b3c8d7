//! Publish: MQTT status and results.

mod config;
mod payload;

pub use config::{MqttConfig, TlsConfig};
pub use payload::{
    ModelId, PERSON_SCHEMA, PersonMessage, TRACK_SCHEMA, TrackEvent, TrackEventKind, WindowSpan,
    normalised_box,
};
