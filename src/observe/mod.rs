//! Observe: the daemon's HTTP endpoints (`[http]`, [`HttpConfig`]): Prometheus `/metrics`,
//! `/healthz`, `/readyz`, and the live state as JSON (`/api/cameras`, `/api/tracks`).
//!
//! In: events the stages count through the handles of [`Metrics`]; the stages' own state,
//! read on request ([`Sources`]); every result, through the [`LiveTracks`] tee in front of
//! publish. Out: HTTP on the tokio runtime ([`bind`] and [`Listener::serve`] first, then
//! [`Server::attach`] once the stages run). Nothing flows back into the pipeline.

mod api;
mod config;
mod metrics;
mod server;
mod sources;
mod state;

pub use api::{CAMERAS_SCHEMA, TRACKS_SCHEMA};
pub use config::HttpConfig;
pub use metrics::{AnalyticsMetrics, EncoderMetrics, Metrics, ResultMetrics, Running};
pub use server::{Error, Listener, Observed, Server, bind};
pub use sources::{CameraSource, Snapshot, Sources};
pub use state::{LiveTracks, TrackEntry};
