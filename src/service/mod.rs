//! Service: supervision, signals, systemd notify and watchdog.

mod config;

pub use config::ServiceConfig;
