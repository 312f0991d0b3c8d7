//! Publish: MQTT status and results.
//!
//! [`start`] connects (in the background) and returns the [`Publisher`] handle;
//! [`spawn_camera_status`] keeps every camera's retained status topic current; [`probe`]
//! checks that the broker accepts this configuration (`affectd check`).

mod config;
mod outbox;
mod payload;
mod probe;
mod publisher;
mod status;
mod tls;
mod topics;

pub use config::{MqttConfig, TlsConfig};
pub use payload::{
    ModelId, PERSON_SCHEMA, PersonMessage, ReadoutSource, ScoresSource, TRACK_SCHEMA, TrackEvent,
    TrackEventKind, ValenceArousalSource, WindowSpan, normalised_box,
};
pub use probe::{ProbeError, probe};
pub use publisher::{
    Error, MAX_PACKET_BYTES, PublishError, Publisher, ShutdownReport, Stats, start,
};
pub use status::spawn_camera_status;
pub use topics::Topics;
