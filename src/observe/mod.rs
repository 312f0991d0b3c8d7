//! Observe: the daemon's HTTP endpoints (`[http]`, [`HttpConfig`]): Prometheus `/metrics`,
//! `/healthz`, `/readyz`, the live state as JSON (`/api/cameras`, `/api/tracks`), and the debug
//! view (`/`, `/cameras/<id>/snapshot.jpg`, `/cameras/<id>/stream.mjpeg`; `view/`).
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
mod view;

pub use api::{CAMERAS_SCHEMA, TRACKS_SCHEMA};
pub use config::HttpConfig;
pub use metrics::{AnalyticsMetrics, EncoderMetrics, Metrics, ResultMetrics, Running, ViewMetrics};
pub use server::{Error, Listener, Observed, Server, bind};
pub use sources::{CameraSource, Snapshot, Sources};
pub use state::{LiveTracks, TrackEntry};
pub use view::{Scene, View, ViewSettings, ViewTap};
