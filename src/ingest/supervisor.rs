//! One camera's supervisor: a named OS thread that builds the pipeline, plays it, watches its
//! bus, detects stalls and end of stream, and restarts it with exponential backoff.
//!
//! In: the camera's config, the stop token. Out: frames into the camera's queue, its status
//! (`watch`), a heartbeat (stage `ingest-<id>`: every tick while a pipeline plays, every
//! second while it waits to restart or stays finished). Owns: the pipeline of the moment.
//!
//! A pipeline is set to NULL on a helper thread, waited for at most `[ingest]
//! teardown_timeout_s`: a teardown that hangs (an element that never lets its streaming
//! thread go) is logged, its thread abandoned (counted in [`Supervisor::abandoned`]) and the
//! camera restarted on a fresh pipeline; the supervisor never hangs with it. While it waits
//! for a teardown it does not beat: a timeout longer than `[service] stage_stall_s` lets the
//! watchdog see the hang.
//!
//! It is set to PLAYING on a helper thread too (`gst-start-<id>`), not waited for: the
//! synchronous part of that change opens the source and may block for seconds or for ever (a
//! FIFO with no writer, a wedged device). The supervisor beats and watches the bus meanwhile;
//! a start that has not returned after `[ingest] stall_timeout_s` is a run without frames,
//! torn down ([`Error::StartHung`]) and retried.
//!
//! Why the supervisor restarts pipelines itself instead of using gst-plugins-rs `fallbacksrc`
//! (which is registered, and works in a custom template in `[ingest] pipelines_dir`: its `uri`
//! is set like `rtspsrc`'s `location`):
//! - while its source is not (yet) up, `fallbacksrc` produces placeholder frames (in the test
//!   `a_custom_template_can_use_fallbacksrc`, 320x240 frames came before the camera's
//!   768x576) that the analytics would take for real pictures; a dead camera must yield none;
//! - its retry state is internal: the `starting | streaming | reconnecting | failed` status
//!   and the typed last error would have to be re-derived from its statistics;
//! - files, V4L2 devices and test sources need the same restart, stall and backoff logic,
//!   and a single mechanism keeps them alike; `rtspsrc` properties (transport, latency,
//!   credentials) stay plain properties of the `src` element.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use crossbeam_channel::TryRecvError;
use gst::prelude::*;
use gstreamer as gst;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::config::{CameraConfig, IngestConfig, redact_userinfo};
use super::error::Error;
use super::pipeline::{self, Built, RunStats, Template};
use super::queue::FrameQueue;
use crate::backoff::Backoff;
use crate::health::Beat;
use crate::types::{CameraId, CameraState, CameraStatus, now_rfc3339};

/// A run that streamed this long counts as healthy: the next failure restarts after the
/// initial backoff again.
const HEALTHY_RUN: Duration = Duration::from_secs(5);
/// How often the bus, the stop token and the stall clock are looked at while a pipeline plays.
const TICK: Duration = Duration::from_millis(100);
/// How often fps and drop counts are refreshed in the status.
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// The window fps is measured over.
const FPS_WINDOW: Duration = Duration::from_secs(2);
/// EOS grace when the stop token was cancelled without [`Ingest::stop`](super::Ingest::stop)
/// setting a deadline.
const EOS_GRACE: Duration = Duration::from_secs(1);
/// How often the supervisor beats while it waits (restart backoff, a finished file).
const IDLE_BEAT: Duration = Duration::from_secs(1);

/// Everything a supervisor thread owns.
pub(crate) struct Supervisor {
    pub(crate) id: CameraId,
    pub(crate) camera: CameraConfig,
    pub(crate) cfg: IngestConfig,
    pub(crate) queue: Arc<FrameQueue>,
    pub(crate) status: watch::Sender<CameraStatus>,
    /// Cancelled at shutdown.
    pub(crate) stop: CancellationToken,
    /// Until when EOS may drain the pipeline once `stop` is cancelled, and until when the
    /// pipeline must be down, if set before.
    pub(crate) eos_deadline: Arc<OnceLock<(Instant, Instant)>>,
    /// Beaten while the supervisor makes progress.
    pub(crate) beat: Beat,
    /// Teardown threads left behind because `set_state(NULL)` did not return in time (shared
    /// by every camera of an [`Ingest`](super::Ingest)).
    pub(crate) abandoned: Arc<AtomicU64>,
}

/// Tells whether a pipeline's change to PLAYING was accepted, once `set_state` returned.
type Started = crossbeam_channel::Receiver<Result<(), ()>>;

/// How one pipeline run ended.
enum RunEnd {
    /// Shutdown was asked for; the pipeline is down.
    Stopped,
    /// The source failed, stalled or ended: restart after backoff.
    Retry(Error),
    /// A file ended and is not looped.
    Finished,
}

impl Supervisor {
    /// The thread body: runs until shutdown is asked for.
    pub(crate) fn run(self) {
        let source = self
            .camera
            .source()
            .map_or_else(|_| redact_userinfo(&self.camera.uri), |s| s.to_string());
        let mut backoff = Backoff::new(
            Duration::from_secs_f64(self.cfg.backoff_initial_s),
            Duration::from_secs_f64(self.cfg.backoff_max_s),
        );
        let mut last_error: Option<String> = None;
        // The last run's change to PLAYING, when it was given up on before it returned.
        let mut hung_start: Option<Started> = None;
        for attempt in 0u64.. {
            let first_run = attempt == 0;
            if !first_run {
                self.status.send_modify(|s| s.restarts += 1);
            }
            // One blocked start per camera at most: while the last one has not returned (the
            // open it waits in may never), another would only block beside it, a thread more
            // per retry. Wait for it instead, retrying on the same backoff.
            hung_start = hung_start.filter(|s| matches!(s.try_recv(), Err(TryRecvError::Empty)));
            let (end, failed_to_build) = if hung_start.is_some() {
                (RunEnd::Retry(Error::StartStillHung), false)
            } else {
                match pipeline::build(&self.camera, &self.cfg) {
                    Ok(built) => {
                        let template = built.template.file_name();
                        if first_run {
                            info!(camera = %self.id, %source, template, "camera pipeline starting");
                        } else {
                            debug!(camera = %self.id, %source, template, "camera pipeline restarting");
                        }
                        let end = self.run_pipeline(built, &mut backoff, &mut hung_start);
                        (end, false)
                    }
                    Err(e) => (RunEnd::Retry(e), true),
                }
            };
            let e = match end {
                RunEnd::Stopped => return,
                RunEnd::Finished => {
                    info!(camera = %self.id, %source, "file ended and loop = false; camera finished");
                    self.set_state(CameraState::Failed, Some("finished: end of file".into()));
                    self.status.send_modify(|s| s.fps = 0.0);
                    // Stay finished until shutdown.
                    while !self.wait_stop(IDLE_BEAT) {}
                    return;
                }
                RunEnd::Retry(e) => e,
            };
            let delay = backoff.next_delay();
            let text = e.to_string();
            // The same error again (a camera that stays down) is logged once, then at DEBUG.
            let repeated = last_error.as_deref() == Some(text.as_str());
            let retry_in_s = delay.as_secs_f64();
            let state = if failed_to_build {
                if repeated {
                    debug!(camera = %self.id, error = %text, retry_in_s, "camera pipeline still cannot be built");
                } else {
                    error!(camera = %self.id, %source, error = %text, retry_in_s, "camera pipeline cannot be built; fix the config or install the plugin");
                }
                CameraState::Failed
            } else {
                if repeated {
                    debug!(camera = %self.id, error = %text, retry_in_s, "camera source still failing");
                } else {
                    warn!(camera = %self.id, %source, error = %text, retry_in_s, "camera source failed; restarting after backoff");
                }
                CameraState::Reconnecting
            };
            self.set_state(state, Some(text.clone()));
            last_error = Some(text);
            self.status.send_modify(|s| s.fps = 0.0);
            if self.wait_stop(delay) {
                return;
            }
        }
    }

    /// Plays one pipeline until it fails, stalls, ends or shutdown is asked for.
    /// A start given up on (stalled before PLAYING returned) is left in `hung_start`.
    fn run_pipeline(
        &self,
        built: Built,
        backoff: &mut Backoff,
        hung_start: &mut Option<Started>,
    ) -> RunEnd {
        let Built {
            pipeline,
            sink,
            template,
        } = built;
        let stats = RunStats::new();
        pipeline::connect_sink(&sink, self.id.clone(), self.queue.clone(), stats.clone());
        // The state stays `starting` (first run) or `reconnecting` / `failed` (a retry) until
        // the first frame arrives.
        let Some(bus) = pipeline.bus() else {
            return RunEnd::Retry(Error::StateChange);
        };
        let teardown = |end: RunEnd| {
            self.teardown(&pipeline);
            end
        };
        // The change to PLAYING runs on a helper thread: its synchronous part (a source's
        // open, a hardware decoder's set-up) may block for seconds or for ever (a FIFO with
        // no writer, a wedged device), and this thread must keep beating, watching the bus
        // and honouring shutdown meanwhile. A start that never returns is a run without
        // frames: the stall clock below restarts it like any silent source.
        let mut starting = Some(self.start_playing(&pipeline));
        let stall = Duration::from_secs_f64(self.cfg.stall_timeout_s);
        let mut meter = FpsMeter::default();
        let mut streaming_since: Option<Instant> = None;
        let mut next_status = Instant::now() + STATUS_EVERY;
        loop {
            self.beat.beat();
            if let Some(started) = &starting {
                match started.try_recv() {
                    Ok(Ok(())) => starting = None,
                    Ok(Err(())) | Err(TryRecvError::Disconnected) => {
                        let e = bus
                            .pop_filtered(&[gst::MessageType::Error])
                            .map_or(Error::StateChange, |m| self.bus_error(&m));
                        return teardown(RunEnd::Retry(e));
                    }
                    Err(TryRecvError::Empty) => {}
                }
            }
            if self.stop.is_cancelled() {
                let deadlines = self.eos_deadline.get().copied().unwrap_or_else(|| {
                    let eos = Instant::now() + EOS_GRACE;
                    (eos, eos + self.teardown_timeout())
                });
                return self.shutdown(&pipeline, &bus, deadlines);
            }
            // Other messages (state changes, tags, QoS) are discarded here.
            let wanted = [
                gst::MessageType::Error,
                gst::MessageType::Eos,
                gst::MessageType::Warning,
            ];
            let tick = gst::ClockTime::from_mseconds(TICK.as_millis() as u64);
            if let Some(msg) = bus.timed_pop_filtered(tick, &wanted) {
                match msg.view() {
                    gst::MessageView::Error(_) => {
                        return teardown(RunEnd::Retry(self.bus_error(&msg)));
                    }
                    gst::MessageView::Eos(_) => {
                        let looped = template == Template::File && self.camera.loop_file;
                        if !looped {
                            let end = if template == Template::File {
                                RunEnd::Finished
                            } else {
                                RunEnd::Retry(Error::Eos)
                            };
                            return teardown(end);
                        }
                        debug!(camera = %self.id, "end of file; seeking back to the start");
                        let seek = pipeline.seek_simple(
                            gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT,
                            gst::ClockTime::ZERO,
                        );
                        if seek.is_err() {
                            return teardown(RunEnd::Retry(Error::Eos));
                        }
                    }
                    gst::MessageView::Warning(w) => {
                        debug!(camera = %self.id, warning = %self.scrub(&w.error().to_string()), "pipeline warning");
                    }
                    _ => {}
                }
            }

            let now = Instant::now();
            let last_activity = stats.last_frame().unwrap_or(stats.started());
            match streaming_since {
                None if stats.frames() > 0 => {
                    streaming_since = Some(now);
                    info!(camera = %self.id, "camera is streaming");
                    self.set_state(CameraState::Streaming, None);
                }
                Some(since) if now.duration_since(since) >= HEALTHY_RUN => backoff.reset(),
                _ => {}
            }
            let idle = now.saturating_duration_since(last_activity);
            if idle >= stall {
                let e = if starting.is_some() {
                    *hung_start = starting.take();
                    Error::StartHung(idle)
                } else {
                    Error::Stalled(idle)
                };
                return teardown(RunEnd::Retry(e));
            }
            if now >= next_status {
                next_status = now + STATUS_EVERY;
                let fps = meter.record(now, stats.frames());
                let dropped = self.queue.dropped();
                self.status.send_modify(|s| {
                    s.fps = if streaming_since.is_some() { fps } else { 0.0 };
                    s.frames_dropped = dropped;
                });
                if stats.bad_samples() > 0 {
                    debug!(camera = %self.id, bad = stats.bad_samples(), "samples dropped as unreadable");
                }
            }
        }
    }

    /// Sets the pipeline to PLAYING on a helper thread (`gst-start-<id>`); the receiver gets
    /// whether the change was accepted once `set_state` returns. Without a thread the change
    /// runs here, blocking.
    fn start_playing(&self, pipeline: &gst::Pipeline) -> Started {
        let play = |p: &gst::Pipeline| p.set_state(gst::State::Playing).map(drop).map_err(drop);
        let (tx, rx) = crossbeam_channel::bounded(1);
        let (p, sent) = (pipeline.clone(), tx.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("gst-start-{}", self.id))
            .spawn(move || {
                let _ = sent.send(play(&p));
            });
        if let Err(e) = spawned {
            warn!(camera = %self.id, error = %e, "cannot start a thread to start the camera pipeline; starting it on the supervisor's");
            let _ = tx.send(play(pipeline));
        }
        rx
    }

    /// Sends EOS, waits for it until the first deadline, then sets the pipeline to NULL; all
    /// of it off this thread (sending EOS may wait on a hung streaming thread too), waited
    /// for until the second deadline at most.
    fn shutdown(
        &self,
        pipeline: &gst::Pipeline,
        bus: &gst::Bus,
        (deadline, down_by): (Instant, Instant),
    ) -> RunEnd {
        let (pipeline, bus) = (pipeline.clone(), bus.clone());
        let drained = Arc::new(AtomicBool::new(false));
        let drain = Arc::clone(&drained);
        // A little before the join deadline, so that the thread itself ends in time.
        let left = down_by
            .saturating_duration_since(Instant::now())
            .saturating_sub(Duration::from_millis(50));
        let limit =
            left.min(deadline.saturating_duration_since(Instant::now()) + self.teardown_timeout());
        let stopped = self.off_thread(limit, move || {
            // A source in pull mode (filesrc under a demuxer) accepts EOS but never sends it:
            // end the stream at the appsink instead (not at videorate, which would first
            // fill the rest of the file's segment with duplicates).
            let pulled = pipeline
                .by_name("src")
                .and_then(|s| s.static_pad("src"))
                .is_some_and(|p| p.mode() == gst::PadMode::Pull);
            let sink_pad = pipeline.by_name("sink").and_then(|r| r.static_pad("sink"));
            match sink_pad {
                Some(pad) if pulled => pad.send_event(gst::event::Eos::new()),
                _ => pipeline.send_event(gst::event::Eos::new()),
            };
            let wait = deadline.saturating_duration_since(Instant::now());
            let eos = bus.timed_pop_filtered(
                gst::ClockTime::from_nseconds(wait.as_nanos() as u64),
                &[gst::MessageType::Eos, gst::MessageType::Error],
            );
            drain.store(eos.is_some(), Ordering::Relaxed);
            let _ = pipeline.set_state(gst::State::Null);
        });
        let drained = drained.load(Ordering::Relaxed);
        debug!(camera = %self.id, drained, stopped, "camera pipeline stopped");
        RunEnd::Stopped
    }

    /// Sets the pipeline to NULL on a helper thread and waits for it at most `[ingest]
    /// teardown_timeout_s`; true when it stopped. A teardown still hanging then is logged and
    /// its thread left behind (counted): the camera goes on with a fresh pipeline.
    fn teardown(&self, pipeline: &gst::Pipeline) -> bool {
        let pipeline = pipeline.clone();
        self.off_thread(self.teardown_timeout(), move || {
            let _ = pipeline.set_state(gst::State::Null);
        })
    }

    fn teardown_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.cfg.teardown_timeout_s)
    }

    /// Runs `stop` (what takes a pipeline down) on a helper thread and waits for it at most
    /// `timeout`; true when it finished. One still running then is logged and left (counted).
    fn off_thread(&self, timeout: Duration, stop: impl FnOnce() + Send + 'static) -> bool {
        let (done_tx, done) = crossbeam_channel::bounded::<()>(1);
        let spawned = std::thread::Builder::new()
            .name(format!("gst-null-{}", self.id))
            .spawn(move || {
                stop();
                let _ = done_tx.send(());
            });
        if let Err(e) = spawned {
            error!(camera = %self.id, error = %e, "cannot start a thread to stop the camera pipeline; left playing");
            return false;
        }
        let t0 = Instant::now();
        if done.recv_timeout(timeout).is_ok() {
            return true;
        }
        let abandoned = self.abandoned.fetch_add(1, Ordering::Relaxed) + 1;
        error!(
            camera = %self.id,
            waited_s = t0.elapsed().as_secs_f64(),
            abandoned,
            "camera pipeline did not stop (EOS or set_state NULL hung); its thread is abandoned and \
             the camera goes on with a fresh pipeline"
        );
        false
    }

    /// Waits up to `timeout` for the stop token, beating every [`IDLE_BEAT`]; true once
    /// cancelled.
    fn wait_stop(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            self.beat.beat();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return self.stop.is_cancelled();
            }
            if wait_cancelled(&self.stop, Some(left.min(IDLE_BEAT))) {
                return true;
            }
        }
    }

    fn set_state(&self, state: CameraState, last_error: Option<String>) {
        self.status.send_modify(|s| {
            if s.state != state {
                s.state = state;
                s.since = now_rfc3339();
            }
            if last_error.is_some() {
                s.last_error = last_error;
            }
        });
    }

    fn bus_error(&self, message: &gst::Message) -> Error {
        pipeline::bus_error(message, &|s| self.scrub(s))
    }

    /// [`scrub`] with this camera's URI and password.
    fn scrub(&self, text: &str) -> String {
        let password = self
            .camera
            .password_file
            .as_ref()
            .and_then(|f| crate::config::Secret::from_file("password_file", f).ok());
        scrub(
            text,
            &self.camera.uri,
            password.as_ref().map(|p| p.expose()),
        )
    }
}

/// Blocks this thread until `token` is cancelled (true) or `timeout` passes (false; `None`
/// waits for ever). The token's future wakes the thread by unparking it: no polling.
fn wait_cancelled(token: &CancellationToken, timeout: Option<Duration>) -> bool {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let deadline = timeout.map(|t| Instant::now() + t);
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut cancelled = std::pin::pin!(token.cancelled());
    loop {
        if let Poll::Ready(()) = cancelled.as_mut().poll(&mut cx) {
            return true;
        }
        match deadline {
            None => std::thread::park(),
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return false;
                }
                std::thread::park_timeout(left);
            }
        }
    }
}

/// Makes a GStreamer error text about a camera safe to log and publish: the URI's user info
/// and the password become `***`, newlines become spaces.
fn scrub(text: &str, uri: &str, password: Option<&str>) -> String {
    let mut out = text.replace(['\n', '\r'], " ");
    let authority = uri
        .split_once("://")
        .map(|(_, rest)| &rest[..rest.find('/').unwrap_or(rest.len())]);
    if let Some((userinfo, _)) = authority.and_then(|a| a.rsplit_once('@'))
        && !userinfo.is_empty()
    {
        out = out.replace(userinfo, "***");
    }
    if let Some(pw) = password.filter(|p| !p.is_empty()) {
        out = out.replace(pw, "***");
    }
    out
}

/// Frames per second over the last [`FPS_WINDOW`], from a cumulative frame count.
#[derive(Debug, Default)]
pub(crate) struct FpsMeter {
    samples: VecDeque<(Instant, u64)>,
}

impl FpsMeter {
    /// Records the total frame count at `now` and returns the rate over the window.
    pub(crate) fn record(&mut self, now: Instant, total: u64) -> f32 {
        self.samples.push_back((now, total));
        while self.samples.len() > 2 && now.duration_since(self.samples[1].0) >= FPS_WINDOW {
            self.samples.pop_front();
        }
        let (t0, n0) = self.samples[0];
        let dt = now.duration_since(t0).as_secs_f32();
        if dt <= 0.0 {
            0.0
        } else {
            total.saturating_sub(n0) as f32 / dt
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_scrubbed_from_error_texts() {
        let uri = "rtsp://admin:s3cret@10.0.0.2/live@1";
        let text = "Failed: rtsp://admin:s3cret@10.0.0.2/live@1\nuser admin:s3cret pw hunter2";
        assert_eq!(
            scrub(text, uri, Some("hunter2")),
            "Failed: rtsp://***@10.0.0.2/live@1 user *** pw ***"
        );
        assert_eq!(scrub("a@b", "rtsp://h/p@x", None), "a@b");
        assert_eq!(scrub("x", "rtsp://@h/p", Some("")), "x");
    }

    #[test]
    fn waiting_for_the_stop_token_ends_at_the_timeout_or_at_once_on_cancel() {
        let token = CancellationToken::new();
        let start = Instant::now();
        assert!(!wait_cancelled(&token, Some(Duration::from_millis(50))));
        assert!(start.elapsed() >= Duration::from_millis(50));

        let cancel = token.clone();
        let canceller = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            cancel.cancel();
        });
        let start = Instant::now();
        assert!(wait_cancelled(&token, Some(Duration::from_secs(30))));
        assert!(start.elapsed() < Duration::from_secs(10));
        canceller.join().unwrap();
        assert!(wait_cancelled(&token, None));
    }

    #[test]
    fn fps_is_measured_over_the_last_two_seconds() {
        let t = Instant::now();
        let s = Duration::from_millis;
        let mut m = FpsMeter::default();
        assert_eq!(m.record(t, 0), 0.0);
        assert_eq!(m.record(t + s(1000), 8), 8.0);
        assert_eq!(m.record(t + s(2000), 16), 8.0);
        // A burst, then silence: the old rate leaves the window.
        assert_eq!(m.record(t + s(3000), 40), 16.0);
        assert_eq!(m.record(t + s(4000), 40), 12.0);
        assert_eq!(m.record(t + s(5000), 40), 0.0);
    }
}
