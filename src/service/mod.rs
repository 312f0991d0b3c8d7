//! Service: supervision, signals, systemd notify and watchdog, `affectd check`.

mod analytics;
mod check;
mod config;
mod health;
mod reload;
mod run;
mod signals;

pub use check::{CheckReport, check};
pub use config::ServiceConfig;
pub use health::{Beat, Health, Systemd};
pub use run::run;
pub use signals::{Signal, Signals};
