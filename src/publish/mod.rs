//! Publish: MQTT status and results.

mod config;

pub use config::{MqttConfig, TlsConfig};
