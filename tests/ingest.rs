//! Ingest with real parts: videotestsrc, the real H.264 clip, a real RTSP server that dies and
//! comes back (once, and ten times) while a second camera keeps streaming, and a pipeline whose
//! teardown hangs.

#[path = "common/fifo.rs"]
mod fifo;
#[path = "common/rtsp.rs"]
mod rtsp;
#[path = "common/serial.rs"]
mod serial;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use affectd::health::Health;
use affectd::ingest::{
    CameraConfig, Decoder, Error, Ingest, IngestConfig, RtspTransport, build_pipeline,
    check_pipeline,
};
use affectd::types::{CameraState, CameraStatus, Frame};
use gstreamer::prelude::*;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "affectd=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

fn camera(id: &str, uri: &str) -> CameraConfig {
    CameraConfig {
        id: id.into(),
        uri: uri.into(),
        username: None,
        password_file: None,
        fps: None,
        decoder: Decoder::Auto,
        rtsp_transport: RtspTransport::Tcp,
        latency_ms: 100,
        loop_file: true,
        enabled: true,
    }
}

/// The README's recovery promise: a camera whose server is back streams again within
/// `backoff_max_s` (the longest wait before the next attempt) plus [`OPEN_S`].
fn recovery_bound(cfg: &IngestConfig) -> Duration {
    Duration::from_secs_f64(cfg.backoff_max_s + OPEN_S)
}

/// The README's allowance for opening a stream once the server answers (RTSP: 0.5-0.7 s
/// measured here).
const OPEN_S: f64 = 2.0;

fn quick_restarts() -> IngestConfig {
    IngestConfig {
        stall_timeout_s: 3.0,
        backoff_initial_s: 0.25,
        backoff_max_s: 1.0,
        ..IngestConfig::default()
    }
}

/// One consumer thread draining the hub, as the analytics would.
struct Collector {
    frames: Arc<Mutex<Vec<Frame>>>,
    done: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Collector {
    fn new(ingest: &Ingest) -> Collector {
        let hub = ingest.hub();
        let frames = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(AtomicBool::new(false));
        let thread = {
            let (frames, done) = (frames.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    let batch = hub.next_batch(Duration::from_millis(100));
                    frames.lock().extend(batch);
                }
            })
        };
        Collector {
            frames,
            done,
            thread: Some(thread),
        }
    }

    fn of(&self, camera: &str) -> Vec<Frame> {
        self.frames
            .lock()
            .iter()
            .filter(|f| &*f.camera == camera)
            .cloned()
            .collect()
    }

    /// Waits until `n` frames of `camera` arrived after `since`; returns how many did.
    fn wait_for_after(
        &self,
        camera: &str,
        since: SystemTime,
        n: usize,
        timeout: Duration,
    ) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let count = self.of(camera).iter().filter(|f| f.wall > since).count();
            if count >= n || Instant::now() > deadline {
                return count;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_for(&self, camera: &str, n: usize, timeout: Duration) -> Vec<Frame> {
        let deadline = Instant::now() + timeout;
        loop {
            let frames = self.of(camera);
            if frames.len() >= n || Instant::now() > deadline {
                return frames;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn status_of(ingest: &Ingest, camera: &str) -> watch::Receiver<CameraStatus> {
    ingest
        .statuses()
        .into_iter()
        .find(|(id, _)| &**id == camera)
        .map(|(_, rx)| rx)
        .expect("camera has a status channel")
}

/// Waits until the camera's state is `state`; returns how long that took.
fn wait_state(
    rx: &watch::Receiver<CameraStatus>,
    state: CameraState,
    timeout: Duration,
) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if rx.borrow().state == state {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn secs(a: SystemTime, b: SystemTime) -> f64 {
    b.duration_since(a).unwrap_or_default().as_secs_f64()
}

/// Frames in order: seq counts up by one, PTS strictly increases by about 1/fps.
fn assert_steady(frames: &[Frame], fps: f64) {
    for pair in frames.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert_eq!(b.seq, a.seq + 1, "seq jumps: {a:?} -> {b:?}");
        let (pa, pb) = (a.pts.expect("pts"), b.pts.expect("pts"));
        assert!(pb > pa, "pts not increasing: {a:?} -> {b:?}");
        let step = (pb - pa).as_secs_f64();
        assert!(
            (step - 1.0 / fps).abs() < 0.02,
            "pts step {step} s at {fps} fps: {a:?} -> {b:?}"
        );
        assert!(b.wall >= a.wall);
    }
}

#[test]
fn videotestsrc_delivers_8_fps_rgb_frames_of_its_size() {
    let _cores = serial::timed();
    logs();
    let cam = camera("bars", "test:red");
    let ingest = Ingest::start(&[cam], &IngestConfig::default(), CancellationToken::new()).unwrap();
    let collector = Collector::new(&ingest);
    let first = collector.wait_for("bars", 1, Duration::from_secs(10));
    assert!(!first.is_empty(), "no frame within 10 s");
    std::thread::sleep(Duration::from_secs(3));
    let frames = collector.of("bars");
    let status = status_of(&ingest, "bars").borrow().clone();
    drop(collector);
    ingest.stop(Duration::from_secs(2));

    let n = frames.len();
    let span = secs(frames[0].wall, frames[n - 1].wall);
    let rate = (n - 1) as f64 / span;
    eprintln!("videotestsrc: {n} frames over {span:.2} s = {rate:.2} fps; status {status:?}");
    assert!((7.0..=9.0).contains(&rate), "{rate} fps");
    assert!(n >= 24, "{n} frames in about 3 s");
    assert_eq!(frames[0].seq, 0);
    assert_steady(&frames, 8.0);
    for f in &frames {
        assert_eq!((f.width, f.height), (640, 480));
        assert_eq!(f.rgb.len(), 640 * 480 * 3);
    }
    // Pattern "red" proves the element property was set and the channel order is RGB.
    assert_eq!(frames[n / 2].pixel(320, 240), Some([255, 0, 0]));
    assert_eq!(status.state, CameraState::Streaming);
    assert!(
        (6.0..=10.0).contains(&status.fps),
        "status fps {}",
        status.fps
    );
    assert_eq!(status.frames_dropped, 0);
    assert_eq!(status.restarts, 0);
}

#[test]
fn the_real_clip_plays_in_real_time_at_8_fps() {
    let _cores = serial::timed();
    logs();
    let cam = camera(
        "path",
        &format!("file:{}", fixture("vtest-10s.mp4").display()),
    );
    let ingest = Ingest::start(&[cam], &IngestConfig::default(), CancellationToken::new()).unwrap();
    let collector = Collector::new(&ingest);
    assert!(
        !collector
            .wait_for("path", 1, Duration::from_secs(10))
            .is_empty()
    );
    std::thread::sleep(Duration::from_secs(3));
    let frames = collector.of("path");
    drop(collector);
    ingest.stop(Duration::from_secs(2));

    let n = frames.len();
    let span = secs(frames[0].wall, frames[n - 1].wall);
    let rate = (n - 1) as f64 / span;
    eprintln!("vtest-10s.mp4: {n} frames over {span:.2} s = {rate:.2} fps");
    // A file is paced like a camera: 8 frames per wall-clock second, not as fast as it decodes.
    assert!((7.0..=9.0).contains(&rate), "{rate} fps");
    assert_steady(&frames, 8.0);
    assert_eq!(frames[0].pts, Some(Duration::ZERO));
    let f = &frames[n - 1];
    assert_eq!((f.width, f.height), (768, 576));
    assert_eq!(f.rgb.len(), 768 * 576 * 3);
    // Real footage, not a blank frame: brightness varies across the picture.
    let lum: Vec<u32> = f
        .rgb
        .chunks(3)
        .map(|p| p.iter().map(|&c| c as u32).sum())
        .collect();
    let (lo, hi) = (lum.iter().min().unwrap(), lum.iter().max().unwrap());
    assert!(hi - lo > 300, "flat picture: {lo}..{hi}");
}

#[test]
fn frames_larger_than_max_size_are_scaled_down_at_ingest_keeping_their_aspect() {
    let _cores = serial::heavy();
    logs();
    // A 4K source (the built-in test template, overridden through pipelines_dir so the
    // source's own caps are 3840x2160) and the real 768x576 clip, with max_size 1920 and 640.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("test.pipeline"),
        "videotestsrc name=src is-live=true ! video/x-raw,width=3840,height=2160,framerate=8/1 \
         ! videorate name=rate ! videoscale ! videoconvert ! capsfilter name=caps ! appsink name=sink\n",
    )
    .unwrap();
    for (max, want_4k, want_clip) in [
        (1920, (1920, 1080), (768, 576)),
        (640, (640, 360), (640, 480)),
    ] {
        let cfg = IngestConfig {
            max_size: max,
            pipelines_dir: Some(dir.path().to_owned()),
            ..IngestConfig::default()
        };
        let cams = [
            camera("uhd", "test:smpte"),
            camera(
                "clip",
                &format!("file:{}", fixture("vtest-10s.mp4").display()),
            ),
        ];
        let ingest = Ingest::start(&cams, &cfg, CancellationToken::new()).unwrap();
        let collector = Collector::new(&ingest);
        let uhd = collector.wait_for("uhd", 2, Duration::from_secs(20));
        let clip = collector.wait_for("clip", 2, Duration::from_secs(20));
        drop(collector);
        ingest.stop(Duration::from_secs(2));
        assert!(
            uhd.len() >= 2 && clip.len() >= 2,
            "max_size {max}: frames missing"
        );
        for (frames, want) in [(&uhd, want_4k), (&clip, want_clip)] {
            for f in frames.iter() {
                assert_eq!((f.width, f.height), want, "max_size {max}");
                assert_eq!(f.rgb.len(), (want.0 * want.1 * 3) as usize);
            }
        }
    }
}

#[test]
fn hostile_uris_cannot_change_the_pipeline() {
    logs();
    affectd::ingest::init().unwrap();
    let cfg = IngestConfig::default();
    let dir = tempfile::tempdir().unwrap();
    // A real file whose name looks like launch syntax: it must be opened literally.
    let evil_file = dir.path().join("x.mp4 ! fakesink name=evil");
    std::fs::copy(fixture("vtest-10s.mp4"), &evil_file).unwrap();
    // Quotes and `!` without spaces (an RTSP URI with spaces is refused outright, below).
    let evil_rtsp = "rtsp://127.0.0.1:9/a\"!fakesink!'b";
    let cases = [
        (
            format!("file:{}", evil_file.display()),
            "location",
            evil_file.display().to_string(),
        ),
        (evil_rtsp.to_owned(), "location", evil_rtsp.to_owned()),
    ];
    for (uri, property, literal) in &cases {
        let built = build_pipeline(&camera("evil", uri), &cfg).unwrap();
        assert!(built.pipeline.by_name("evil").is_none(), "{uri}");
        let fakesinks = built
            .pipeline
            .iterate_recurse()
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.factory().is_some_and(|f| f.name() == "fakesink"))
            .count();
        assert_eq!(fakesinks, 0, "{uri}");
        let src = built.pipeline.by_name("src").unwrap();
        assert_eq!(&src.property::<String>(property), literal);
    }
    let spaced = camera("evil", "rtsp://127.0.0.1:9/a ! fakesink name=evil");
    let e = build_pipeline(&spaced, &cfg).unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e}");
    // A non-string property rejects launch syntax with an error instead of a panic.
    let e = build_pipeline(&camera("evil", "test:smpte ! fakesink name=evil"), &cfg).unwrap_err();
    assert!(matches!(e, Error::Property { .. }), "{e}");

    // The literal file plays: frames of the real clip come out of it.
    let cam = camera("evil", &format!("file:{}", evil_file.display()));
    check_pipeline(&cam, &cfg).unwrap();
    let ingest = Ingest::start(&[cam], &cfg, CancellationToken::new()).unwrap();
    let collector = Collector::new(&ingest);
    let frames = collector.wait_for("evil", 3, Duration::from_secs(10));
    drop(collector);
    ingest.stop(Duration::from_secs(2));
    assert!(frames.len() >= 3);
    assert_eq!((frames[0].width, frames[0].height), (768, 576));
}

#[test]
fn a_missing_file_is_retried_with_backoff_and_reported() {
    let _cores = serial::timed();
    logs();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("gone.mp4");
    let cam = camera("gone", &format!("file:{}", missing.display()));
    let cfg = quick_restarts();
    let e = check_pipeline(&cam, &cfg).unwrap_err();
    assert!(e.to_string().contains("gone.mp4"), "{e}");
    // `check` opens devices too.
    let device = camera("usb", "v4l2:/dev/video-affectd-none");
    let e = check_pipeline(&device, &cfg).unwrap_err();
    assert!(
        matches!(&e, Error::Stream { element, .. } if element == "/GstPipeline:camera-usb/GstV4l2Src:src"),
        "{e}"
    );

    let ingest = Ingest::start(&[cam], &cfg, CancellationToken::new()).unwrap();
    let rx = status_of(&ingest, "gone");
    assert!(wait_state(&rx, CameraState::Reconnecting, Duration::from_secs(5)).is_some());
    // 0.25 + 0.5 + 1 + 1 s of backoff: at least 3 restarts within 3 s.
    std::thread::sleep(Duration::from_secs(3));
    let status = rx.borrow().clone();
    ingest.stop(Duration::from_secs(2));
    eprintln!("missing file: {status:?}");
    assert!((3..=6).contains(&status.restarts), "{status:?}");
    let last = status.last_error.unwrap_or_default();
    assert!(last.contains("gone.mp4") && last.contains("src"), "{last}");
}

#[test]
fn rtsp_camera_recovers_after_its_server_restarts_while_another_keeps_streaming() {
    let _cores = serial::timed();
    logs();
    affectd::ingest::init().unwrap();
    let mut server =
        rtsp::RtspServer::start("door", &rtsp::RtspServer::mp4_launch(&fixture("vtest.mp4")));
    let cameras = [camera("door", &server.url()), camera("bars", "test:ball")];
    let ingest = Ingest::start(&cameras, &quick_restarts(), CancellationToken::new()).unwrap();
    let door = status_of(&ingest, "door");
    let bars = status_of(&ingest, "bars");
    let collector = Collector::new(&ingest);

    let up = wait_state(&door, CameraState::Streaming, Duration::from_secs(15));
    assert!(
        up.is_some(),
        "RTSP camera never streamed: {:?}",
        door.borrow()
    );
    std::thread::sleep(Duration::from_secs(2));
    let before = collector.of("door").len();
    assert!(before >= 12, "{before} RTSP frames in 2 s");

    // The camera dies for several seconds.
    server.stop();
    let t_down = SystemTime::now();
    let noticed = wait_state(&door, CameraState::Reconnecting, Duration::from_secs(8));
    assert!(noticed.is_some(), "death not noticed: {:?}", door.borrow());
    std::thread::sleep(Duration::from_secs(5));
    let during = collector
        .of("door")
        .iter()
        .filter(|f| secs(t_down, f.wall) > noticed.unwrap().as_secs_f64() + 0.5)
        .count();
    assert_eq!(during, 0, "frames while the server was down");
    assert_ne!(door.borrow().state, CameraState::Streaming);

    // It comes back on the same port.
    server.restart();
    let t_up = SystemTime::now();
    let recovery = wait_state(&door, CameraState::Streaming, Duration::from_secs(15))
        .unwrap_or_else(|| panic!("RTSP camera did not recover: {:?}", door.borrow()));
    let bound = recovery_bound(&quick_restarts());
    assert!(
        recovery <= bound,
        "streaming again {recovery:?} after the server came back, over the README's {bound:?}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let after: Vec<Frame> = collector
        .of("door")
        .into_iter()
        .filter(|f| f.wall > t_up)
        .collect();
    let door_status = door.borrow().clone();
    let bars_status = bars.borrow().clone();
    let bars_frames = collector.of("bars");
    drop(collector);
    let t_stop = Instant::now();
    ingest.stop(Duration::from_secs(3));
    let stop_time = t_stop.elapsed();

    eprintln!(
        "RTSP: death noticed after {:.2} s, streaming again {:.2} s after the server came back; \
         {} frames since; stop took {:.2} s; door {door_status:?}; bars {bars_status:?}",
        noticed.unwrap().as_secs_f64(),
        recovery.as_secs_f64(),
        after.len(),
        stop_time.as_secs_f64()
    );
    assert!(after.len() >= 10, "{} frames after recovery", after.len());
    assert_eq!(
        after[0].seq, 0,
        "a restarted pipeline numbers frames from 0"
    );
    assert_eq!((after[0].width, after[0].height), (768, 576));
    assert_steady(&after, 8.0);
    assert!(door_status.restarts >= 1);
    assert_eq!(door_status.state, CameraState::Streaming);
    assert!(door_status.last_error.is_some());

    // The other camera never noticed: no restart and no gap in its frames.
    assert_eq!(bars_status.restarts, 0);
    assert_eq!(bars_status.state, CameraState::Streaming);
    assert_steady(&bars_frames, 8.0);
    let gap = bars_frames
        .windows(2)
        .map(|w| secs(w[0].wall, w[1].wall))
        .fold(0.0, f64::max);
    assert!(gap < 0.5, "test camera paused for {gap:.2} s");
    assert!(stop_time < Duration::from_secs(4));
}

#[test]
fn cancelling_the_stop_token_stops_streaming_and_waiting_cameras() {
    let _cores = serial::timed();
    logs();
    let dir = tempfile::tempdir().unwrap();
    let missing = camera(
        "gone",
        &format!("file:{}", dir.path().join("gone.mp4").display()),
    );
    let cfg = IngestConfig {
        backoff_initial_s: 60.0,
        backoff_max_s: 60.0,
        ..IngestConfig::default()
    };
    let stop = CancellationToken::new();
    let ingest = Ingest::start(
        &[camera("bars", "test:ball"), missing],
        &cfg,
        stop.child_token(),
    )
    .unwrap();
    let (bars, gone) = (status_of(&ingest, "bars"), status_of(&ingest, "gone"));
    let collector = Collector::new(&ingest);
    assert!(wait_state(&bars, CameraState::Streaming, Duration::from_secs(10)).is_some());
    // Now waiting out a minute of backoff.
    assert!(wait_state(&gone, CameraState::Reconnecting, Duration::from_secs(10)).is_some());
    let t0 = Instant::now();
    stop.cancel();
    // A supervisor drops its status sender when its thread ends.
    while bars.has_changed().is_ok() || gone.has_changed().is_ok() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "cameras still running"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(collector);
    ingest.stop(Duration::from_secs(2));
    assert!(t0.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_file_loops_without_a_restart_or_finishes_when_loop_is_off() {
    let _cores = serial::timed();
    logs();
    let uri = format!("file:{}", fixture("vtest-10s.mp4").display());
    let looped = camera("looped", &uri);
    let once = CameraConfig {
        loop_file: false,
        ..camera("once", &uri)
    };
    let ingest = Ingest::start(
        &[looped, once],
        &IngestConfig::default(),
        CancellationToken::new(),
    )
    .unwrap();
    let (looped_rx, once_rx) = (status_of(&ingest, "looped"), status_of(&ingest, "once"));
    let collector = Collector::new(&ingest);
    // The clip lasts 10 s: wait until both cameras are past its end.
    let finished = wait_state(&once_rx, CameraState::Failed, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(1500));
    let frames = collector.of("looped");
    let (looped_status, once_status) = (looped_rx.borrow().clone(), once_rx.borrow().clone());
    let once_frames = collector.of("once").len();
    drop(collector);
    ingest.stop(Duration::from_secs(2));

    eprintln!(
        "loop: {} frames; once: {once_frames} frames, {once_status:?}",
        frames.len()
    );
    assert!(finished.is_some(), "{once_status:?}");
    assert!(
        once_status
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("end of file"),
        "{once_status:?}"
    );
    assert_eq!(once_status.restarts, 0);
    // 10 s at 8 fps.
    assert!(
        (76..=84).contains(&once_frames),
        "{once_frames} frames of a 10 s clip"
    );

    assert_eq!(looped_status.state, CameraState::Streaming);
    assert_eq!(looped_status.restarts, 0);
    // Seq keeps counting across the loop; running time starts again at 0.
    let wrap = frames
        .windows(2)
        .position(|w| w[1].pts < w[0].pts)
        .expect("the looped file started again");
    assert_steady(&frames[..=wrap], 8.0);
    assert_steady(&frames[wrap + 1..], 8.0);
    assert_eq!(frames[wrap + 1].seq, frames[wrap].seq + 1);
    assert!(frames[wrap + 1].pts.unwrap() < Duration::from_millis(250));
    let pause = secs(frames[wrap].wall, frames[wrap + 1].wall);
    assert!(pause < 0.5, "the loop paused the camera for {pause:.2} s");
}

#[test]
fn a_slow_consumer_loses_the_oldest_frames_and_they_are_counted() {
    let _cores = serial::timed();
    logs();
    let cfg = IngestConfig {
        queue_frames: 3,
        ..IngestConfig::default()
    };
    let ingest = Ingest::start(
        &[camera("bars", "test:ball")],
        &cfg,
        CancellationToken::new(),
    )
    .unwrap();
    let rx = status_of(&ingest, "bars");
    let hub = ingest.hub();
    // Nobody drains for 3 s.
    std::thread::sleep(Duration::from_secs(3));
    let status = rx.borrow().clone();
    let queued = hub.next_batch(Duration::ZERO);
    let dropped = hub.queues()[0].1.dropped();
    ingest.stop(Duration::from_secs(2));

    eprintln!(
        "slow consumer: {} queued, {dropped} dropped; {status:?}",
        queued.len()
    );
    assert_eq!(queued.len(), 3);
    // The newest frames are kept, in order.
    assert_eq!(queued[1].seq, queued[0].seq + 1);
    assert_eq!(queued[2].seq, queued[1].seq + 1);
    assert_eq!(dropped, queued[2].seq + 1 - 3);
    assert!(dropped >= 15, "{dropped}");
    assert!(status.frames_dropped >= 10, "{status:?}");
}

#[test]
fn a_stalled_source_is_restarted_and_a_template_can_come_from_disk() {
    let _cores = serial::timed();
    logs();
    let dir = tempfile::tempdir().unwrap();
    // Buffers flow into a closed valve: no error, no EOS, just no frames.
    std::fs::write(
        dir.path().join("test.pipeline"),
        "# frames never pass\nvideotestsrc name=src is-live=true ! valve drop=true ! \
         videorate name=rate ! videoconvert ! capsfilter name=caps ! appsink name=sink\n",
    )
    .unwrap();
    let cfg = IngestConfig {
        stall_timeout_s: 1.0,
        backoff_initial_s: 0.2,
        backoff_max_s: 0.4,
        pipelines_dir: Some(dir.path().to_owned()),
        ..IngestConfig::default()
    };
    let ingest = Ingest::start(
        &[camera("stuck", "test:ball")],
        &cfg,
        CancellationToken::new(),
    )
    .unwrap();
    let rx = status_of(&ingest, "stuck");
    let noticed = wait_state(&rx, CameraState::Reconnecting, Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(2));
    let status = rx.borrow().clone();
    ingest.stop(Duration::from_secs(2));

    eprintln!("stall noticed after {noticed:?}: {status:?}");
    let noticed = noticed.expect("stall not noticed").as_secs_f64();
    assert!((0.9..2.0).contains(&noticed), "{noticed}");
    assert!(status.restarts >= 2, "{status:?}");
    assert_eq!(status.last_error.as_deref(), Some("no frame for 1.0 s"));
}

#[test]
fn a_camera_that_cannot_be_built_fails_alone() {
    logs();
    affectd::ingest::init().unwrap();
    if ["nvh264dec", "nvv4l2decoder"]
        .iter()
        .any(|e| gstreamer::ElementFactory::find(e).is_some())
    {
        eprintln!("NVIDIA decoders are installed here; nothing to test");
        return;
    }
    let nvidia = CameraConfig {
        decoder: Decoder::Nvidia,
        ..camera("gpu", "rtsp://127.0.0.1:9/x")
    };
    let cfg = quick_restarts();
    let e = check_pipeline(&nvidia, &cfg).unwrap_err();
    assert!(matches!(e, Error::MissingElement(_)), "{e}");

    let ingest = Ingest::start(
        &[nvidia, camera("bars", "test:ball")],
        &cfg,
        CancellationToken::new(),
    )
    .unwrap();
    let (gpu, bars) = (status_of(&ingest, "gpu"), status_of(&ingest, "bars"));
    assert!(wait_state(&gpu, CameraState::Failed, Duration::from_secs(5)).is_some());
    assert!(wait_state(&bars, CameraState::Streaming, Duration::from_secs(5)).is_some());
    std::thread::sleep(Duration::from_secs(1));
    let (gpu_status, bars_status) = (gpu.borrow().clone(), bars.borrow().clone());
    ingest.stop(Duration::from_secs(2));
    assert_eq!(gpu_status.state, CameraState::Failed);
    assert!(gpu_status.restarts >= 1, "retried: {gpu_status:?}");
    assert!(
        gpu_status
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("nvh264dec"),
        "{gpu_status:?}"
    );
    assert_eq!(bars_status.state, CameraState::Streaming);
}

#[test]
fn rtsp_credentials_come_from_the_password_file_and_never_show() {
    let _cores = serial::timed();
    logs();
    affectd::ingest::init().unwrap();
    let server = rtsp::RtspServer::start_with_login(
        "locked",
        &rtsp::RtspServer::mp4_launch(&fixture("vtest-10s.mp4")),
        "viewer",
        "hunter2-secret",
    );
    let dir = tempfile::tempdir().unwrap();
    let (good, bad) = (dir.path().join("good"), dir.path().join("bad"));
    std::fs::write(&good, "hunter2-secret\n").unwrap();
    std::fs::write(&bad, "wrong-pw-xyz\n").unwrap();
    let login = |id: &str, password_file: &Path| CameraConfig {
        username: Some("viewer".into()),
        password_file: Some(password_file.to_owned()),
        ..camera(id, &server.url())
    };
    // The password in the URI too, as some cameras are configured: it must not leak either.
    let inline = server
        .url()
        .replace("rtsp://", "rtsp://viewer:wrong-pw-xyz@");
    let cameras = [
        login("good", &good),
        login("bad", &bad),
        camera("inline", &inline),
    ];
    let ingest = Ingest::start(&cameras, &quick_restarts(), CancellationToken::new()).unwrap();
    let collector = Collector::new(&ingest);
    let good_rx = status_of(&ingest, "good");
    let bad_rx = status_of(&ingest, "bad");
    let inline_rx = status_of(&ingest, "inline");
    assert!(wait_state(&good_rx, CameraState::Streaming, Duration::from_secs(10)).is_some());
    assert!(wait_state(&bad_rx, CameraState::Reconnecting, Duration::from_secs(10)).is_some());
    assert!(
        wait_state(
            &inline_rx,
            CameraState::Reconnecting,
            Duration::from_secs(10)
        )
        .is_some()
    );
    let frames = collector.wait_for("good", 5, Duration::from_secs(5));
    let (bad_status, inline_status) = (bad_rx.borrow().clone(), inline_rx.borrow().clone());
    drop(collector);
    ingest.stop(Duration::from_secs(2));

    eprintln!("wrong password: {bad_status:?}\ninline: {inline_status:?}");
    assert!(frames.len() >= 5);
    assert_eq!((frames[0].width, frames[0].height), (768, 576));
    for status in [&bad_status, &inline_status] {
        let text = serde_json::to_string(status).unwrap();
        assert!(status.last_error.is_some(), "{text}");
        assert!(
            !text.contains("wrong-pw-xyz") && !text.contains("hunter2"),
            "{text}"
        );
    }
}

#[test]
fn a_custom_template_can_use_fallbacksrc() {
    let _cores = serial::timed();
    logs();
    affectd::ingest::init().unwrap();
    let server =
        rtsp::RtspServer::start("fb", &rtsp::RtspServer::mp4_launch(&fixture("vtest.mp4")));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rtsp.pipeline"),
        "fallbacksrc name=src enable-audio=false ! videorate name=rate ! videoconvert ! \
         capsfilter name=caps ! appsink name=sink\n",
    )
    .unwrap();
    let cfg = IngestConfig {
        pipelines_dir: Some(dir.path().to_owned()),
        ..IngestConfig::default()
    };
    let cam = camera("fb", &server.url());
    let built = build_pipeline(&cam, &cfg).unwrap();
    let src = built.pipeline.by_name("src").unwrap();
    assert_eq!(src.factory().unwrap().name(), "fallbacksrc");
    assert_eq!(src.property::<String>("uri"), server.url());
    drop(built);

    let ingest = Ingest::start(&[cam], &cfg, CancellationToken::new()).unwrap();
    let collector = Collector::new(&ingest);
    let deadline = Instant::now() + Duration::from_secs(10);
    let real = loop {
        let frames = collector.of("fb");
        let real: Vec<Frame> = frames.into_iter().filter(|f| f.width == 768).collect();
        if real.len() >= 5 || Instant::now() > deadline {
            break real;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let sizes: Vec<(u32, u32)> = collector
        .of("fb")
        .iter()
        .map(|f| (f.width, f.height))
        .collect();
    drop(collector);
    ingest.stop(Duration::from_secs(2));
    eprintln!(
        "fallbacksrc: {} frames of 768x576 among sizes {:?}",
        real.len(),
        {
            let mut s = sizes.clone();
            s.dedup();
            s
        }
    );
    assert!(real.len() >= 5, "sizes seen: {sizes:?}");
    assert_eq!(real[0].height, 576);
}

#[test]
fn broken_custom_templates_are_errors_not_panics() {
    logs();
    affectd::ingest::init().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = IngestConfig {
        pipelines_dir: Some(dir.path().to_owned()),
        ..IngestConfig::default()
    };
    let tail = "videoconvert ! capsfilter name=caps ! appsink name=sink";
    let cases = [
        (
            "videotestsrc name=src ! ! appsink name=sink".to_owned(),
            "does not parse",
        ),
        (format!("nosuchelement name=src ! {tail}"), "plugin missing"),
        (format!("videotestsrc ! {tail}"), "no element named \"src\""),
        (
            "videotestsrc name=src ! appsink name=sink".to_owned(),
            "no element named \"caps\"",
        ),
        (
            "videotestsrc name=src ! capsfilter name=caps ! fakesink name=sink".to_owned(),
            "sink (an appsink)",
        ),
        (
            "videotestsrc name=src ! identity name=caps ! appsink name=sink".to_owned(),
            "caps (a capsfilter)",
        ),
        // `src` is not a videotestsrc here: it has no `pattern`.
        (
            format!("videotestsrc ! identity name=src ! {tail}"),
            "cannot set pattern",
        ),
    ];
    for (text, expected) in &cases {
        std::fs::write(dir.path().join("test.pipeline"), text).unwrap();
        let e = build_pipeline(&camera("t", "test:ball"), &cfg).unwrap_err();
        assert!(e.to_string().contains(expected), "{text}: {e}");
    }
}

#[test]
fn a_hung_teardown_is_abandoned_and_the_camera_restarts_while_its_supervisor_beats() {
    let _cores = serial::timed();
    logs();
    let dir = tempfile::tempdir().unwrap();
    // The first buffer holds the streaming thread for 30 s: no frame arrives (a stall), and
    // setting the pipeline to NULL waits for the sleep: a teardown that hangs.
    std::fs::write(
        dir.path().join("test.pipeline"),
        "videotestsrc name=src is-live=true ! identity sleep-time=30000000 ! \
         videorate name=rate ! videoconvert ! capsfilter name=caps ! appsink name=sink\n",
    )
    .unwrap();
    let cfg = IngestConfig {
        stall_timeout_s: 1.0,
        backoff_initial_s: 0.2,
        backoff_max_s: 0.4,
        teardown_timeout_s: 0.5,
        pipelines_dir: Some(dir.path().to_owned()),
        ..IngestConfig::default()
    };
    let health = Health::new();
    let ingest = Ingest::start_watched(
        &[camera("hung", "test:ball")],
        &cfg,
        CancellationToken::new(),
        &health,
    )
    .unwrap();
    let rx = status_of(&ingest, "hung");
    let t0 = Instant::now();
    // Each run: 1 s to notice the stall, 0.5 s waiting for the teardown, then a fresh one.
    let mut most_stale = Duration::ZERO;
    while t0.elapsed() < Duration::from_secs(6) {
        let beats = health.beats();
        assert_eq!(beats.len(), 1, "{beats:?}");
        assert_eq!(beats[0].0, "ingest-hung");
        most_stale = most_stale.max(beats[0].1);
        std::thread::sleep(Duration::from_millis(50));
    }
    let abandoned = ingest.abandoned_teardowns();
    let status = rx.borrow().clone();
    let t_stop = Instant::now();
    ingest.stop(Duration::from_secs(2));
    let stop_time = t_stop.elapsed();

    eprintln!(
        "hung teardown: {abandoned} teardowns abandoned in 6 s, {} restarts, supervisor beat at \
         most {most_stale:?} apart, stop took {stop_time:?}: {status:?}",
        status.restarts
    );
    assert!(abandoned >= 2, "{abandoned} abandoned: {status:?}");
    assert!(status.restarts >= 2, "{status:?}");
    assert_eq!(status.state, CameraState::Reconnecting, "{status:?}");
    assert_eq!(status.last_error.as_deref(), Some("no frame for 1.0 s"));
    // Never longer than the teardown deadline (plus a tick) without a beat.
    assert!(most_stale < Duration::from_millis(900), "{most_stale:?}");
    // Stopping is bounded too: EOS cannot pass, the teardown hangs, the thread is let go.
    assert!(stop_time < Duration::from_millis(2300), "{stop_time:?}");
}

#[test]
fn a_source_that_blocks_in_its_open_keeps_its_supervisor_beating_and_the_other_camera_playing() {
    let _cores = serial::timed();
    logs();
    let dir = tempfile::tempdir().unwrap();
    // A FIFO with no writer: filesrc's open() blocks inside the change to PLAYING, as a hung
    // network mount or a wedged device would, and never returns on its own.
    let fifo = fifo::make(dir.path(), "no-writer.mp4");
    let cfg = IngestConfig {
        stall_timeout_s: 1.0,
        backoff_initial_s: 0.2,
        backoff_max_s: 0.4,
        teardown_timeout_s: 0.5,
        ..IngestConfig::default()
    };
    let health = Health::new();
    let cameras = [
        camera("blocked", &format!("file:{}", fifo.display())),
        camera("ball", "test:ball"),
    ];
    let ingest = Ingest::start_watched(&cameras, &cfg, CancellationToken::new(), &health).unwrap();
    let (blocked, ball) = (status_of(&ingest, "blocked"), status_of(&ingest, "ball"));
    let collector = Collector::new(&ingest);
    let mut most_stale = Duration::ZERO;
    let mut watch_beats = |how_long: Duration| {
        let t0 = Instant::now();
        while t0.elapsed() < how_long {
            let beats = health.beats();
            assert_eq!(beats.len(), 2, "{beats:?}");
            most_stale = most_stale.max(beats.iter().map(|(_, age)| *age).max().unwrap());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // 1 s to give up on the start, 0.5 s for its teardown (which waits on the same state
    // change: abandoned), then retries every 0.2-0.4 s that find the start still blocked.
    watch_beats(Duration::from_secs(4));
    let hung = blocked.borrow().clone();
    let abandoned_while_hung = ingest.abandoned_teardowns();
    // A writer opens the FIFO and stays, sending nothing: the blocked open() returns, so the
    // next retry starts a fresh pipeline, which opens at once and then gets no frame.
    let writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    watch_beats(Duration::from_secs(3));
    let again = blocked.borrow().clone();
    let abandoned_after = ingest.abandoned_teardowns();
    let ball_status = ball.borrow().clone();
    let t_stop = Instant::now();
    ingest.stop(Duration::from_secs(2));
    let stop_time = t_stop.elapsed();
    let (ball_frames, blocked_frames) = (collector.of("ball").len(), collector.of("blocked").len());
    // End of file for every reader still waiting on the FIFO: no thread is left blocked.
    drop(writer);

    eprintln!(
        "blocked start: supervisors beat at most {most_stale:?} apart, stop took {stop_time:?}, \
         ball {ball_frames} frames; while hung ({abandoned_while_hung} abandoned): {hung:?}; \
         once a writer came ({abandoned_after} abandoned): {again:?}"
    );
    // The start was given up on after stall_timeout_s, and while it stayed blocked no other
    // pipeline was started beside it: one abandoned teardown, retries that say why.
    assert_eq!(hung.state, CameraState::Reconnecting, "{hung:?}");
    assert!(hung.restarts >= 3, "{hung:?}");
    assert!(
        hung.last_error
            .as_deref()
            .is_some_and(|e| e.contains("still blocked")),
        "{hung:?}"
    );
    assert_eq!(abandoned_while_hung, 1, "{hung:?}");
    // Once it returned, a fresh pipeline started, and was restarted as a silent source.
    assert_eq!(
        again.last_error.as_deref(),
        Some("no frame for 1.0 s"),
        "{again:?}"
    );
    assert!(again.restarts > hung.restarts, "{again:?}");
    assert_eq!(blocked_frames, 0);
    // The supervisor beat through every blocked start: never longer than the teardown
    // deadline (plus a tick) without a beat.
    assert!(most_stale < Duration::from_millis(900), "{most_stale:?}");
    // The other camera played throughout.
    assert_eq!(ball_status.state, CameraState::Streaming, "{ball_status:?}");
    assert!(
        ball_frames >= 40,
        "{ball_frames} frames from the ball camera in 7 s"
    );
    assert!(stop_time < Duration::from_millis(2300), "{stop_time:?}");
}

#[test]
fn rtsp_server_killed_10_times_the_camera_comes_back_each_time_and_the_file_never_pauses() {
    let _cores = serial::timed();
    logs();
    affectd::ingest::init().unwrap();
    let mut server =
        rtsp::RtspServer::start("door", &rtsp::RtspServer::mp4_launch(&fixture("vtest.mp4")));
    let clip = format!("file:{}", fixture("vtest.mp4").display());
    let cameras = [camera("door", &server.url()), camera("walkway", &clip)];
    let ingest = Ingest::start(&cameras, &quick_restarts(), CancellationToken::new()).unwrap();
    let door = status_of(&ingest, "door");
    let collector = Collector::new(&ingest);
    let t0 = Instant::now();
    assert!(
        wait_state(&door, CameraState::Streaming, Duration::from_secs(15)).is_some(),
        "RTSP camera never streamed: {:?}",
        door.borrow()
    );
    let mut resumes = Vec::new();
    for round in 1..=10 {
        std::thread::sleep(Duration::from_millis(1500));
        server.stop();
        let noticed = wait_state(&door, CameraState::Reconnecting, Duration::from_secs(8));
        assert!(
            noticed.is_some(),
            "round {round}: death not noticed: {:?}",
            door.borrow()
        );
        // A short outage.
        std::thread::sleep(Duration::from_millis(500));
        server.restart();
        let t_up = SystemTime::now();
        let back = wait_state(&door, CameraState::Streaming, Duration::from_secs(15))
            .unwrap_or_else(|| panic!("round {round}: no recovery: {:?}", door.borrow()));
        let frames = collector.wait_for_after("door", t_up, 8, Duration::from_secs(5));
        assert!(frames >= 8, "round {round}: {frames} frames after recovery");
        resumes.push(back);
    }
    let door_status = door.borrow().clone();
    let walkway = collector.of("walkway");
    drop(collector);
    ingest.stop(Duration::from_secs(3));

    let gap = walkway
        .windows(2)
        .map(|w| secs(w[0].wall, w[1].wall))
        .fold(0.0, f64::max);
    let slowest = resumes.iter().max().unwrap();
    eprintln!(
        "RTSP killed 10 times in {:.1} s: streaming again after {:?} (slowest {slowest:?}); \
         {} file frames, longest pause {gap:.2} s; door {door_status:?}",
        t0.elapsed().as_secs_f64(),
        resumes,
        walkway.len()
    );
    assert!(door_status.restarts >= 10, "{door_status:?}");
    let bound = recovery_bound(&quick_restarts());
    assert!(
        *slowest <= bound,
        "streaming again {slowest:?} after the server came back, over the README's {bound:?}"
    );
    assert!(gap < 2.0, "the file camera paused {gap:.2} s");
    assert!(walkway.len() as f64 >= t0.elapsed().as_secs_f64() * 8.0 * 0.8);
}
