//! Publish: MQTT status and results; owns every topic and message format.
//!
//! In: results as domain values ([`ResultPublisher`] takes `PersonAffect` and `TrackSpan`),
//! camera statuses. Out: MQTT. [`start`] connects in the background and returns the
//! [`Publisher`] handle; [`spawn_camera_status`] keeps every camera's retained status topic
//! current; [`probe`] checks that the broker accepts this configuration (`affectd check`);
//! [`home_assistant::start`] publishes Home Assistant discovery and per-camera state.
//! Owns `seq`, the node's result counter, and the outbox: in memory, or with
//! `[mqtt] outbox = "disk"` a spool in `outbox_dir` (`spool.rs`) that every result is committed
//! to before it goes to the broker and replayed from at start.

mod config;
mod event_loop;
mod flow;
pub mod home_assistant;
mod inbox;
mod outbox;
mod payload;
mod probe;
mod publisher;
mod results;
mod spool;
mod status;
mod tls;
mod topics;

pub use config::{MqttConfig, OutboxMode, TlsConfig};
pub use inbox::Incoming;
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
