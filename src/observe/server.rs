//! The HTTP server: axum on the daemon's tokio runtime. Every handler reads values the stages
//! keep (a snapshot, the live track table, the metric registry) and encodes them: no handler
//! waits on a stage.
//!
//! It answers from the moment the port is bound, before the model loads: until the stages
//! are attached, `/healthz` is 200 and `/readyz` 503, both `"starting": true`, the rest 503;
//! a probe never hangs on a daemon that is starting.
//!
//! Auth: with `[http] token_file`, every endpoint but `/`, `/healthz` and `/readyz` answers
//! 401 without `Authorization: Bearer <token>` or an `access_token` query parameter (RFC 6750;
//! what the page's `<img>` streams send); the probes answer every caller with their status
//! code (what load balancers and orchestrators probe), and give the detail only to callers
//! with the token; `/` is a static page holding no data (its script takes the token from the
//! URL's fragment, `/#token=...`, which browsers never send to the server).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::HttpConfig;
use super::api;
use super::metrics::{self, Metrics};
use super::sources::Sources;
use super::state::LiveTracks;
use super::view::View;
use crate::config::{ConfigError, Secret};

/// Starting the server failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The message carries the cause (not chained: one line).
    #[error("http.listen: cannot listen on {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// What the endpoints read.
pub struct Observed {
    pub node: String,
    pub sources: Sources,
    pub metrics: Arc<Metrics>,
    pub tracks: Arc<LiveTracks>,
    /// `[model]` is configured (readiness waits for it).
    pub model_configured: bool,
    /// `[service] stage_stall_s`.
    pub stage_stall: Duration,
    /// How often the systemd watchdog is fed, when systemd asked for one.
    pub watchdog: Option<Duration>,
    /// The debug view.
    pub view: Arc<View>,
}

/// The bound socket and the token, before the stages exist.
pub struct Listener {
    listener: std::net::TcpListener,
    token: Option<Secret>,
}

/// Binds `[http] listen` and reads the token file; `None` when `[http]` is disabled. Done
/// first at start-up, so that a taken port fails the start at once (exit 1, naming
/// `http.listen`).
pub fn bind(cfg: &HttpConfig) -> Result<Option<Listener>, Error> {
    if !cfg.enabled {
        return Ok(None);
    }
    let token = cfg
        .token_file
        .as_ref()
        .map(|p| Secret::from_file("http.token_file", p))
        .transpose()?;
    let bind_error = |error| Error::Bind {
        addr: cfg.listen,
        error,
    };
    let listener = std::net::TcpListener::bind(cfg.listen).map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    Ok(Some(Listener { listener, token }))
}

/// The running server.
pub struct Server {
    app: Arc<App>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Listener {
    /// Serves on the current tokio runtime until `stop` is cancelled; the endpoints say
    /// "starting" until [`Server::attach`]. Logs `http listening addr=...` (the bound port
    /// when `listen` asked for port 0).
    pub fn serve(self, stop: CancellationToken) -> std::io::Result<Server> {
        let addr = self.listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(self.listener)?;
        let auth = self.token.is_some();
        let app = Arc::new(App {
            observed: OnceLock::new(),
            token: self.token,
        });
        let router = Router::new()
            .route("/metrics", get(metrics))
            .route("/api/cameras", get(cameras))
            .route("/api/tracks", get(tracks))
            .route("/cameras/{camera}/snapshot.jpg", get(snapshot))
            .route("/cameras/{camera}/stream.mjpeg", get(stream))
            .route_layer(middleware::from_fn_with_state(
                Arc::clone(&app),
                require_token,
            ))
            .route("/", get(|| async { View::page() }))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(Arc::clone(&app));
        let shutdown = stop.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, router).with_graceful_shutdown(shutdown);
            if let Err(e) = serve.await {
                warn!(error = %e, "http server failed; the endpoints are gone");
            }
        });
        info!(%addr, auth, "http listening");
        Ok(Server { app, stop, task })
    }
}

impl Server {
    /// The stages are running: the endpoints answer from `observed` from now on.
    pub fn attach(&self, observed: Observed) {
        if self.app.observed.set(observed).is_err() {
            warn!("http: the stages were attached twice; the first stay");
        }
    }

    /// Stops accepting, lets requests in progress finish within `timeout`, then closes
    /// what is left.
    pub async fn stop(self, timeout: Duration) {
        self.stop.cancel();
        let mut task = self.task;
        if tokio::time::timeout(timeout, &mut task).await.is_err() {
            task.abort();
            debug!("http requests still open at the deadline were closed");
        }
        debug!("http stopped");
    }
}

struct App {
    /// Set once the stages run.
    observed: OnceLock<Observed>,
    token: Option<Secret>,
}

impl App {
    /// Whether the request carries the token (always, when none is configured).
    fn authorized(&self, headers: &HeaderMap) -> bool {
        self.authorized_with(headers, None)
    }

    /// As [`App::authorized`], also taking the token from an `access_token` query parameter
    /// (RFC 6750, 2.3): what a browser's `<img>` of the debug view can send.
    fn authorized_with(&self, headers: &HeaderMap, query: Option<&str>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let header = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim().as_bytes().to_vec());
        let given = header.or_else(|| query_token(query?)).unwrap_or_default();
        same(&given, token.expose().as_bytes())
    }
}

/// The percent-decoded `access_token` of a query string.
fn query_token(query: &str) -> Option<Vec<u8>> {
    let raw = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("access_token="))?;
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        out.push(match b {
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?
            }
            b'+' => b' ',
            b => b,
        });
    }
    Some(out)
}

/// Constant-time equality (for the token).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_token(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    if app.authorized_with(request.headers(), request.uri().query()) {
        next.run(request).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(WWW_AUTHENTICATE, "Bearer")],
            "a bearer token is required\n",
        )
            .into_response()
    }
}

/// What the endpoints other than the probes answer while the stages start.
fn starting() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let Some(o) = app.observed.get() else {
        return starting();
    };
    match o.metrics.encode(o.sources.snapshot()) {
        Ok(text) => ([(CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            warn!(error = %e, "cannot encode the metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn cameras(State(app): State<Arc<App>>) -> Response {
    let Some(o) = app.observed.get() else {
        return starting();
    };
    let count = |c: &str| o.tracks.count(c);
    Json(api::Cameras::new(&o.node, o.sources.snapshot(), count)).into_response()
}

async fn tracks(State(app): State<Arc<App>>) -> Response {
    let Some(o) = app.observed.get() else {
        return starting();
    };
    Json(api::Tracks::new(&o.node, o.tracks.list(&o.node))).into_response()
}

async fn snapshot(State(app): State<Arc<App>>, Path(camera): Path<String>) -> Response {
    let Some(o) = app.observed.get() else {
        return starting();
    };
    o.view.snapshot(&camera).await
}

async fn stream(State(app): State<Arc<App>>, Path(camera): Path<String>) -> Response {
    let Some(o) = app.observed.get() else {
        return starting();
    };
    o.view.stream(&camera)
}

async fn healthz(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let Some(o) = app.observed.get() else {
        return probe_starting(true, "live");
    };
    let body = api::Health::new(&o.sources.snapshot(), o.stage_stall, o.watchdog);
    let ok = body.live;
    probe(ok, &app, &headers, "live", body)
}

async fn readyz(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let Some(o) = app.observed.get() else {
        return probe_starting(false, "ready");
    };
    let model = api::ModelReady {
        configured: o.model_configured,
        serving: o.metrics.model(),
    };
    let body = api::Ready::new(&o.sources.snapshot(), model);
    let ok = body.ready;
    probe(ok, &app, &headers, "ready", body)
}

/// A probe's answer: 200 or 503, the body to callers with the token, `{"<what>": ok}` to
/// others.
fn probe(ok: bool, app: &App, headers: &HeaderMap, what: &str, body: impl Serialize) -> Response {
    if app.authorized(headers) {
        (probe_status(ok), Json(body)).into_response()
    } else {
        (probe_status(ok), Json(serde_json::json!({ what: ok }))).into_response()
    }
}

/// A probe's answer while the stages start: `{"<what>": ok, "starting": true}`.
fn probe_starting(ok: bool, what: &str) -> Response {
    let body = serde_json::json!({ what: ok, "starting": true });
    (probe_status(ok), Json(body)).into_response()
}

fn probe_status(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// `GET path` over a plain socket: the status line and the body.
    fn get(addr: SocketAddr, path: &str) -> (String, String) {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (head.lines().next().unwrap().to_owned(), body.to_owned())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_starting_daemon_answers_its_probes_at_once() {
        let cfg = HttpConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..HttpConfig::default()
        };
        let listener = bind(&cfg).unwrap().expect("enabled");
        let addr = listener.listener.local_addr().unwrap();
        let server = listener.serve(CancellationToken::new()).unwrap();
        let answers = tokio::task::spawn_blocking(move || {
            ["/healthz", "/readyz", "/metrics", "/api/tracks", "/nothing"].map(|p| get(addr, p))
        })
        .await
        .unwrap();
        assert_eq!(
            answers.each_ref().map(|(status, _)| status.as_str()),
            [
                "HTTP/1.1 200 OK",
                "HTTP/1.1 503 Service Unavailable",
                "HTTP/1.1 503 Service Unavailable",
                "HTTP/1.1 503 Service Unavailable",
                "HTTP/1.1 404 Not Found",
            ]
        );
        assert_eq!(answers[0].1, r#"{"live":true,"starting":true}"#);
        assert_eq!(answers[1].1, r#"{"ready":false,"starting":true}"#);
        server.stop(Duration::from_secs(1)).await;
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "still listening"
        );
    }

    #[test]
    fn a_disabled_server_binds_nothing() {
        let cfg = HttpConfig {
            enabled: false,
            ..HttpConfig::default()
        };
        assert!(bind(&cfg).unwrap().is_none());
    }

    #[test]
    fn the_query_token_is_percent_decoded() {
        assert_eq!(
            query_token("x=1&access_token=a%2Fb+c").as_deref(),
            Some(&b"a/b c"[..])
        );
        assert_eq!(query_token("token=abc"), None);
        assert_eq!(query_token("access_token=%zz"), None);
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"ab", b"abc"));
        assert!(same(b"", b""));
    }
}
