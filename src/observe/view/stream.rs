//! The HTTP side of the view: `/cameras/<id>/snapshot.jpg`, `/cameras/<id>/stream.mjpeg`
//! and the page. A viewer is a receiver of the camera's slot, so the analytics thread offers
//! frames exactly while one exists; a stream takes at most `[http] view_fps` frames a second,
//! and a frame is drawn and encoded once however many viewers want it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::render;
use super::{Scene, ViewTap};
use crate::observe::metrics::ViewMetrics;
use crate::observe::state::LiveTracks;
use crate::types::CameraId;

/// How long a snapshot waits for the camera's next frame.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(3);
/// The multipart boundary of the MJPEG stream.
const BOUNDARY: &str = "affectd-frame";
/// The page at `/`.
const PAGE: &str = include_str!("index.html");

/// The view's settings, from `[http]`.
#[derive(Debug, Clone, Copy)]
pub struct ViewSettings {
    pub fps: f64,
    pub max_viewers: usize,
    pub max_width: u32,
}

/// Serves the view; shared as `Arc`.
pub struct View {
    tap: Arc<ViewTap>,
    tracks: Arc<LiveTracks>,
    settings: ViewSettings,
    metrics: ViewMetrics,
    /// Per camera, the last JPEG and the frame it shows. The lock is held across an encode,
    /// so viewers of one frame wait for the first one's JPEG instead of encoding it again.
    encoded: HashMap<CameraId, Mutex<Option<Encoded>>>,
    /// Ends the streams at shutdown.
    stop: CancellationToken,
}

type Receiver = watch::Receiver<Option<Arc<Scene>>>;
/// A frame and its JPEG.
type Encoded = (Arc<Scene>, Bytes);

impl View {
    pub fn new(
        tap: Arc<ViewTap>,
        tracks: Arc<LiveTracks>,
        settings: ViewSettings,
        metrics: ViewMetrics,
        stop: CancellationToken,
    ) -> Self {
        let encoded = tap
            .cameras
            .keys()
            .map(|c| (c.clone(), Mutex::new(None)))
            .collect();
        Self {
            tap,
            tracks,
            settings,
            metrics,
            encoded,
            stop,
        }
    }

    /// `/`: the page (it holds no data; its script reads the API).
    pub fn page() -> Response {
        (
            [
                (CONTENT_TYPE, "text/html; charset=utf-8"),
                (CACHE_CONTROL, "no-cache"),
            ],
            PAGE,
        )
            .into_response()
    }

    /// `/cameras/<id>/snapshot.jpg`: the camera's next frame, annotated.
    pub async fn snapshot(&self, camera: &str) -> Response {
        let mut rx = match self.viewer(camera) {
            Ok(rx) => rx,
            Err(refused) => return refused.into_response(),
        };
        let waited = tokio::time::timeout(SNAPSHOT_WAIT, rx.changed()).await;
        let scene = rx.borrow_and_update().clone();
        let (Ok(Ok(())), Some(scene)) = (waited, scene) else {
            let why = format!(
                "no frame from camera {camera} within {} s\n",
                SNAPSHOT_WAIT.as_secs()
            );
            return (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
        };
        match self.jpeg(camera, scene).await {
            Some(jpeg) => (
                [(CONTENT_TYPE, "image/jpeg"), (CACHE_CONTROL, "no-store")],
                jpeg,
            )
                .into_response(),
            None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        }
    }

    /// `/cameras/<id>/stream.mjpeg`: annotated frames as `multipart/x-mixed-replace`, at most
    /// `view_fps` a second, until the client goes or the daemon stops.
    pub fn stream(self: &Arc<Self>, camera: &str) -> Response {
        let rx = match self.viewer(camera) {
            Ok(rx) => rx,
            Err(refused) => return refused.into_response(),
        };
        let viewer = Viewer {
            view: Arc::clone(self),
            camera: Arc::from(camera),
            rx,
            last: None,
            _counted: Counted::new(&self.metrics),
        };
        let parts = futures_util::stream::unfold(viewer, |mut v| async move {
            let part = v.next_part().await?;
            Some((Ok::<_, Infallible>(part), v))
        });
        (
            [
                (
                    CONTENT_TYPE,
                    format!("multipart/x-mixed-replace; boundary={BOUNDARY}"),
                ),
                (CACHE_CONTROL, "no-store".to_owned()),
            ],
            Body::from_stream(parts),
        )
            .into_response()
    }

    /// A new viewer of `camera`, or the answer refusing one.
    fn viewer(&self, camera: &str) -> Result<Receiver, (StatusCode, String)> {
        if self.tap.viewers() >= self.settings.max_viewers {
            let why = format!(
                "{} viewers already (http.max_viewers)\n",
                self.settings.max_viewers
            );
            return Err((StatusCode::SERVICE_UNAVAILABLE, why));
        }
        self.tap
            .watch(camera)
            .ok_or_else(|| (StatusCode::NOT_FOUND, format!("no camera {camera}\n")))
    }

    /// The scene drawn and encoded, or the JPEG already made of it.
    async fn jpeg(&self, camera: &str, scene: Arc<Scene>) -> Option<Bytes> {
        let slot = self.encoded.get(camera)?;
        let mut last = slot.lock().await;
        if let Some((shown, jpeg)) = &*last
            && Arc::ptr_eq(shown, &scene)
        {
            return Some(jpeg.clone());
        }
        let labels = self.tracks.labels(camera);
        let max_width = self.settings.max_width;
        let drawn = Arc::clone(&scene);
        let t0 = Instant::now();
        let encoded = tokio::task::spawn_blocking(move || {
            render::render(&drawn, |id| labels.get(&id).cloned(), max_width)
        })
        .await;
        match encoded {
            Ok(Ok(jpeg)) => {
                self.metrics.encoded(t0.elapsed());
                let jpeg = Bytes::from(jpeg);
                *last = Some((scene, jpeg.clone()));
                Some(jpeg)
            }
            Ok(Err(e)) => {
                warn!(camera, error = %e, "view: cannot encode a frame");
                None
            }
            Err(e) => {
                warn!(camera, error = %e, "view: the encoding task failed");
                None
            }
        }
    }
}

/// One MJPEG client.
struct Viewer {
    view: Arc<View>,
    camera: CameraId,
    rx: Receiver,
    /// When the last part was sent.
    last: Option<Instant>,
    _counted: Counted,
}

impl Viewer {
    /// The next part: waits out the rate cap, then for a frame newer than the last one sent.
    /// `None` ends the stream (shutdown).
    async fn next_part(&mut self) -> Option<Bytes> {
        let period = Duration::from_secs_f64(1.0 / self.view.settings.fps);
        let stop = self.view.stop.clone();
        loop {
            if let Some(last) = self.last {
                tokio::select! {
                    () = stop.cancelled() => return None,
                    () = tokio::time::sleep_until((last + period).into()) => {}
                }
            }
            tokio::select! {
                () = stop.cancelled() => return None,
                changed = self.rx.changed() => changed.ok()?,
            }
            let Some(scene) = self.rx.borrow_and_update().clone() else {
                continue;
            };
            self.last = Some(Instant::now());
            if let Some(jpeg) = self.view.jpeg(&self.camera, scene).await {
                return Some(part(&jpeg));
            }
        }
    }
}

/// One multipart part holding `jpeg`.
fn part(jpeg: &[u8]) -> Bytes {
    let head = format!(
        "--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
        jpeg.len()
    );
    let mut out = Vec::with_capacity(head.len() + jpeg.len() + 2);
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(jpeg);
    out.extend_from_slice(b"\r\n");
    Bytes::from(out)
}

/// Counts an open stream in `affectd_view_streams` while it lives.
struct Counted(ViewMetrics);

impl Counted {
    fn new(metrics: &ViewMetrics) -> Self {
        metrics.streams.inc();
        Self(metrics.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.streams.dec();
    }
}
