//! Publish: MQTT status and results.
//!
//! [`start`] connects (in the background) and returns the [`Publisher`] handle;
//! [`spawn_camera_status`] keeps every camera's retained status topic current.

mod config;
mod outbox;
mod payload;
mod publisher;
mod status;
mod tls;
mod topics;

pub use config::{MqttConfig, TlsConfig};
pub use payload::{
    ModelId, PERSON_SCHEMA, PersonMessage, TRACK_SCHEMA, TrackEvent, TrackEventKind, WindowSpan,
    normalised_box,
};
pub use publisher::{
    Error, MAX_PACKET_BYTES, PublishError, Publisher, ShutdownReport, Stats, start,
};
pub use status::spawn_camera_status;
pub use topics::Topics;
