//! Service: runs the stages. Supervision and ordered shutdown, signals, reloads, systemd
//! notify and watchdog, `affectd check`.

mod check;
mod config;
mod reload;
mod run;
mod signals;
mod stages;
mod systemd;

pub use check::{CheckReport, check};
pub use config::ServiceConfig;
pub use run::run;
pub use signals::{Signal, Signals};
pub use systemd::Systemd;
