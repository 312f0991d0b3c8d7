//! Publish: MQTT status and results; owns every topic and message format.
//!
//! In: results as domain values ([`ResultPublisher`] takes `PersonAffect` and `TrackSpan`),
//! camera statuses. Out: MQTT. [`start`] connects in the background and returns the
//! [`Publisher`] handle; [`spawn_camera_status`] keeps every camera's retained status topic
//! current; [`probe`] checks that the broker accepts this configuration (`affectd check`).

mod config;
mod event_loop;
mod flow;
mod outbox;
mod payload;
mod probe;
mod publisher;
mod results;
mod status;
mod tls;
mod topics;

pub use config::{MqttConfig, TlsConfig};
pub use payload::{
    PERSON_SCHEMA, PersonMessage, TRACK_SCHEMA, TrackEvent, WindowSpan, normalised_box,
};
pub use probe::{ProbeError, probe};
pub use publisher::{
    Error, MAX_PACKET_BYTES, PublishError, Publisher, ShutdownReport, Stats, start,
};
pub use results::{ResultPublisher, person_message, track_message};
pub use status::spawn_camera_status;
pub use topics::Topics;

#[cfg(test)]
pub(crate) use payload::tests::validator as schema_validator;
