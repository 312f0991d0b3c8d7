//! What systemd sees of `affectd run` as a `Type=notify` service with `WatchdogSec=`, with
//! real parts: the real daemon, the bundled clip, the bundled detector, a seeded model, a
//! camera whose GStreamer pipeline really hangs, and no broker at all.
//!
//! - `READY=1` comes once the cameras left `starting` and the model is loaded, with nothing
//!   listening on the broker port (a box whose broker is down at boot must not be killed by
//!   `TimeoutStartSec`);
//! - `WATCHDOG=1` stops while a stage is stalled for real and resumes after: the second
//!   camera's template (`[ingest] pipelines_dir`) holds an `identity sleep-time=6 s`, so its
//!   first buffer blocks the streaming thread; the stall is noticed after 1 s, and setting
//!   the pipeline to NULL then waits for the sleep to end, ~5 s during which the camera's
//!   supervisor cannot beat (`[ingest] teardown_timeout_s` above that, `[service]
//!   stage_stall_s = 2`);
//! - `RELOADING=1` then `READY=1` around SIGHUP, `STOPPING=1` at SIGTERM, exit 0;
//! - SIGTERM while the model is still loading exits at once with status 0;
//! - a detector that fails on every batch (its manifest promises a stride the model does not
//!   have) stops the analytics' heartbeat, so `WATCHDOG=1` stops after `stage_stall_s`.
//! - a camera whose source blocks in its open (a FIFO nobody writes) is given up on and
//!   retried while `WATCHDOG=1` goes on every period and the other camera plays.

#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/fifo.rs"]
mod fifo;
#[path = "common/mosquitto.rs"]
mod mosquitto;
#[path = "common/notify.rs"]
mod notify;
#[path = "common/serial.rs"]
mod serial;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use daemon::{Daemon, detect_sections, fixture, tiny_model_section};
use notify::NotifySocket;

/// systemd's `WatchdogSec=3`: fed every second (a third).
const WATCHDOG: Duration = Duration::from_secs(3);
/// `[service] stage_stall_s` of these tests.
const STAGE_STALL_S: f64 = 2.0;
/// How long the hanging camera's first buffer sleeps in `identity` (microseconds).
const SLEEP_US: u64 = 6_000_000;

/// A port nothing listens on: the broker is down.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// `affectd run` under a notify socket with a watchdog, as systemd would start it.
fn start(config: &str, notify: &NotifySocket) -> Daemon {
    Daemon::start_with(config, |command| notify.environ(command, WATCHDOG))
}

fn signal(daemon: &Daemon, name: &str) {
    let pid = daemon.child.id().to_string();
    let ok = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{name} {pid}");
}

/// Waits until `pred` holds, the daemon running; panics with the log otherwise.
fn wait(daemon: &mut Daemon, what: &str, limit: Duration, mut pred: impl FnMut(&Daemon) -> bool) {
    let t0 = Instant::now();
    while !pred(daemon) {
        assert!(daemon.is_running(), "the daemon exited:\n{}", daemon.log());
        assert!(
            t0.elapsed() < limit,
            "{what}: not within {limit:?}:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The gaps between consecutive times, with the time each gap ended.
fn gaps(times: &[Instant]) -> Vec<(Duration, Instant)> {
    times.windows(2).map(|w| (w[1] - w[0], w[1])).collect()
}

#[test]
fn systemd_sees_ready_without_a_broker_a_stalled_stage_a_reload_and_the_stop() {
    let _cores = serial::timed();
    let templates = tempfile::tempdir().unwrap();
    std::fs::write(
        templates.path().join("test.pipeline"),
        format!(
            "# the first buffer holds the streaming thread: the pipeline cannot stop for a while\n\
             videotestsrc name=src is-live=true ! identity sleep-time={SLEEP_US} ! \
             videorate name=rate ! videoconvert ! capsfilter name=caps ! appsink name=sink\n"
        ),
    )
    .unwrap();
    let config = format!(
        "[node]\nid = \"{node}\"\n\
         [[camera]]\nid = \"walkway\"\nuri = \"file:{clip}\"\n\
         [[camera]]\nid = \"stuck\"\nuri = \"test:ball\"\n\
         [ingest]\npipelines_dir = \"{templates}\"\nstall_timeout_s = 1.0\n\
         backoff_initial_s = 4.0\nbackoff_max_s = 8.0\nteardown_timeout_s = 20.0\n\
         [mqtt]\nport = {port}\n\
         [service]\nstage_stall_s = {STAGE_STALL_S:?}\n\
         {detect}{model}",
        node = daemon::NODE,
        clip = fixture("vtest.mp4").display(),
        templates = templates.path().display(),
        port = closed_port(),
        detect = detect_sections(),
        model = tiny_model_section(),
    );
    let notify = NotifySocket::bind();
    let t0 = Instant::now();
    let mut daemon = start(&config, &notify);

    // READY with the broker down: once the clip plays, the stuck camera is retrying and the
    // model is loaded.
    assert!(
        notify.wait_for("READY=1", Duration::from_secs(120)),
        "no READY=1 with the broker down (exit {:?}):\n{}",
        daemon.child.try_wait(),
        daemon.log()
    );
    let ready = notify.times_of("READY=1")[0];
    // The log line follows the notification.
    wait(
        &mut daemon,
        "the ready log line",
        Duration::from_secs(5),
        |d| d.log().contains("is loaded: ready"),
    );
    let log = daemon.log();
    let model_at = log
        .find("model ready")
        .expect("no `model ready` before READY");
    let ready_line = log
        .lines()
        .find(|l| l.contains("is loaded: ready"))
        .unwrap_or_else(|| panic!("no ready line:\n{log}"));
    assert!(log.find(ready_line).unwrap() > model_at, "{log}");
    assert!(
        ready_line.contains("broker_connected=false"),
        "{ready_line}"
    );
    // READY means every camera left `starting`, not that each streams: with a 1 s stall
    // timeout a file camera whose first frame comes late on busy cores is restarted once
    // (after `backoff_initial_s`). It must stream all the same.
    wait(
        &mut daemon,
        "the file camera streaming",
        Duration::from_secs(10),
        |d| d.log().contains("camera is streaming"),
    );

    // The stuck camera's second run hangs its teardown after READY: the watchdog stops, then
    // resumes once the pipeline let go.
    let stall = Duration::from_secs_f64(STAGE_STALL_S);
    let mut stalled_gap = None;
    wait(
        &mut daemon,
        "a watchdog gap after READY, then a ping",
        Duration::from_secs(60),
        |_| {
            let pings: Vec<Instant> = notify
                .times_of("WATCHDOG=1")
                .into_iter()
                .filter(|t| *t >= ready)
                .collect();
            stalled_gap = gaps(&pings).into_iter().find(|(gap, _)| *gap > stall);
            stalled_gap.is_some()
        },
    );
    let (gap, resumed) = stalled_gap.unwrap();
    let log = daemon.log();
    assert!(
        log.contains("stages stopped making progress")
            && log.contains("ingest-stuck")
            && log.contains("every stage is making progress again"),
        "{log}"
    );
    // Fed again, every second, until the next hang (the camera now waits 8 s).
    std::thread::sleep(Duration::from_millis(2500));
    let after: Vec<Instant> = notify
        .times_of("WATCHDOG=1")
        .into_iter()
        .filter(|t| *t >= resumed)
        .collect();
    assert!(after.len() >= 3, "{} pings after the stall", after.len());
    let normal = gaps(&after).iter().map(|(g, _)| *g).max().unwrap();
    assert!(normal < Duration::from_millis(1500), "{normal:?}");

    // SIGHUP: RELOADING=1, then READY=1 again once the model is reloaded.
    let hup = Instant::now();
    signal(&daemon, "HUP");
    wait(
        &mut daemon,
        "RELOADING=1 then READY=1",
        Duration::from_secs(60),
        |_| notify.times_of("READY=1").len() >= 2,
    );
    let reloading = notify.times_of("RELOADING=1");
    let readies = notify.times_of("READY=1");
    assert_eq!(reloading.len(), 1, "{:?}", notify.messages());
    assert!(reloading[0] >= hup && reloading[0] <= readies[1]);
    // RELOADING=1 carries the monotonic timestamp systemd 253+ requires.
    assert!(
        notify
            .messages()
            .iter()
            .any(|(_, lines)| lines.iter().any(|l| l == "RELOADING=1")
                && lines.iter().any(|l| l.starts_with("MONOTONIC_USEC="))),
        "{:?}",
        notify.messages()
    );

    // SIGTERM: STOPPING=1 and exit 0, the broker still down.
    let (status, took) = daemon.terminate(Duration::from_secs(20));
    let log = daemon.log();
    assert!(status.success(), "exit {status}:\n{log}");
    // Within the shipped `shutdown_timeout_s` (4 s) even with the broker down.
    assert!(
        took <= Duration::from_secs(4),
        "exit {took:?} after SIGTERM:\n{log}"
    );
    assert!(notify.wait_for("STOPPING=1", Duration::from_secs(1)));
    let stopping = notify.times_of("STOPPING=1")[0];
    assert!(stopping > readies[1]);
    assert!(!log.contains("panicked"), "{log}");
    eprintln!(
        "notify: READY {:.2} s after start (broker down); watchdog unfed {:.2} s while the \
         camera's teardown hung, then fed every {:.2} s at most; RELOADING->READY {:.2} s; \
         SIGTERM->exit {:.2} s",
        (ready - t0).as_secs_f64(),
        gap.as_secs_f64(),
        normal.as_secs_f64(),
        (readies[1] - reloading[0]).as_secs_f64(),
        took.as_secs_f64(),
    );
}

#[test]
fn sigterm_while_the_model_loads_exits_at_once_with_status_0() {
    let _cores = serial::heavy();
    // The full-size EmotionCLIP (ViT-B/32), seeded: seconds to build, the load to cut short.
    let config = format!(
        "[node]\nid = \"{node}\"\n\
         [[camera]]\nid = \"walkway\"\nuri = \"file:{clip}\"\n\
         [mqtt]\nport = {port}\n\
         {detect}[model]\nallow_untrained = true\nseed = 7\nonnx_cache_dir = \"onnx-cache\"\n",
        node = daemon::NODE,
        clip = fixture("vtest.mp4").display(),
        port = closed_port(),
        detect = detect_sections(),
    );
    let notify = NotifySocket::bind();
    let mut daemon = start(&config, &notify);
    // MQTT starts just before the model loads.
    wait(&mut daemon, "MQTT started", Duration::from_secs(30), |d| {
        d.log().contains("MQTT publisher started")
    });
    let (status, took) = daemon.terminate(Duration::from_secs(10));
    let log = daemon.log();
    assert!(status.success(), "exit {status}:\n{log}");
    assert!(
        log.contains("SIGTERM during start-up"),
        "the load finished first?\n{log}"
    );
    assert!(!log.contains("model ready"), "{log}");
    assert!(took < Duration::from_secs(3), "{took:?}:\n{log}");
    assert!(notify.times_of("READY=1").is_empty());
    assert!(notify.wait_for("STOPPING=1", Duration::from_secs(1)));
    eprintln!(
        "SIGTERM during the model load: exit 0 after {:.2} s",
        took.as_secs_f64()
    );
}

#[test]
fn a_detector_failing_every_batch_stops_the_watchdog_after_stage_stall_s() {
    let _cores = serial::timed();
    // The bundled NanoDet under a manifest that promises a stride its outputs do not have
    // (a manifest beside the wrong model, which only `affectd check` would catch): the
    // session opens, and every run fails to decode. The analytics must stop beating.
    let engine = tempfile::tempdir().unwrap();
    let repo = env!("CARGO_MANIFEST_DIR");
    let manifest = std::fs::read_to_string(format!("{repo}/engines/nanodet-g-416.toml"))
        .unwrap()
        .replace(
            "model = \"nanodet-g-416.onnx\"",
            &format!("model = \"{repo}/engines/nanodet-g-416.onnx\""),
        )
        .replace("strides = [8, 16, 32]", "strides = [8, 16, 64]");
    assert!(manifest.contains("[8, 16, 64]") && manifest.contains(repo));
    let manifest_path = engine.path().join("wrong.toml");
    std::fs::write(&manifest_path, manifest).unwrap();
    let config = format!(
        "[node]\nid = \"{node}\"\n\
         [[camera]]\nid = \"walkway\"\nuri = \"file:{clip}\"\n\
         [mqtt]\nport = {port}\n\
         [service]\nstage_stall_s = {STAGE_STALL_S:?}\n\
         [detect]\nengine = \"{engine}\"\nproviders = [\"cpu\"]\n",
        node = daemon::NODE,
        clip = fixture("vtest.mp4").display(),
        port = closed_port(),
        engine = manifest_path.display(),
    );
    let notify = NotifySocket::bind();
    let mut daemon = start(&config, &notify);
    assert!(
        notify.wait_for("READY=1", Duration::from_secs(60)),
        "no READY=1:\n{}",
        daemon.log()
    );
    // The stall is noticed within stage_stall_s and a watchdog period.
    wait(
        &mut daemon,
        "the analytics reported stalled",
        Duration::from_secs(15),
        |d| d.log().contains("stages stopped making progress"),
    );
    let noticed = Instant::now();
    // From then on systemd gets no WATCHDOG=1 (it would restart the service).
    std::thread::sleep(Duration::from_secs(4));
    let log = daemon.log();
    let last_ping = *notify
        .times_of("WATCHDOG=1")
        .last()
        .expect("fed before the stall");
    assert!(
        last_ping < noticed,
        "fed again {:?} after the stall was noticed:\n{log}",
        last_ping - noticed
    );
    let stalled_line = log
        .lines()
        .find(|l| l.contains("stages stopped making progress"))
        .unwrap();
    assert!(stalled_line.contains("\"analytics\""), "{stalled_line}");
    assert!(log.contains("detector failed"), "{log}");
    assert!(!log.contains("making progress again"), "{log}");
    let unfed = last_ping.elapsed();
    let (status, _) = daemon.terminate(Duration::from_secs(20));
    assert!(status.success(), "exit {status}:\n{}", daemon.log());
    eprintln!(
        "failing detector: no WATCHDOG=1 for {:.2} s before SIGTERM; {stalled_line}",
        unfed.as_secs_f64()
    );
}

#[test]
fn a_camera_whose_source_blocks_in_its_open_never_starves_the_watchdog() {
    let _cores = serial::timed();
    // A FIFO that nobody writes: opening it blocks inside GStreamer's change to PLAYING for
    // as long as it stays so, like a hung network mount or a wedged device. Beside it, the
    // bundled clip; no detector or model (ingest and camera status only).
    let dir = tempfile::tempdir().unwrap();
    let fifo = fifo::make(dir.path(), "nobody-writes.mp4");
    let config = format!(
        "[node]\nid = \"{node}\"\n\
         [[camera]]\nid = \"blocked\"\nuri = \"file:{fifo}\"\n\
         [[camera]]\nid = \"walkway\"\nuri = \"file:{clip}\"\n\
         [ingest]\nstall_timeout_s = 1.0\nbackoff_initial_s = 0.2\nbackoff_max_s = 0.5\n\
         teardown_timeout_s = 0.5\n\
         [mqtt]\nport = {port}\n\
         [service]\nstage_stall_s = {STAGE_STALL_S:?}\n",
        node = daemon::NODE,
        fifo = fifo.display(),
        clip = fixture("vtest.mp4").display(),
        port = closed_port(),
    );
    let notify = NotifySocket::bind();
    let mut daemon = start(&config, &notify);
    assert!(
        notify.wait_for("READY=1", Duration::from_secs(60)),
        "no READY=1 with a camera blocked in its open:\n{}",
        daemon.log()
    );
    let ready = notify.times_of("READY=1")[0];
    // The clip's first frame may come late on a cold box, past its 1 s stall timeout: it is
    // then restarted, and plays all the same.
    wait(
        &mut daemon,
        "the blocked camera's start given up on, and retries that wait for it",
        Duration::from_secs(60),
        |d| d.log().contains("still blocked") && d.log().contains("camera is streaming"),
    );
    // Several stall periods with the open still blocked.
    std::thread::sleep(Duration::from_secs(3 * STAGE_STALL_S as u64));
    let end = Instant::now();
    let pings: Vec<Instant> = notify
        .times_of("WATCHDOG=1")
        .into_iter()
        .filter(|t| *t >= ready)
        .collect();
    let (status, took) = daemon.terminate(Duration::from_secs(20));
    let log = daemon.log();

    // Fed every WatchdogSec/3 throughout: the blocked start never held up the supervisor.
    let longest = gaps(&pings)
        .into_iter()
        .map(|(gap, _)| gap)
        .chain(pings.last().map(|last| end - *last))
        .max()
        .unwrap_or(end - ready);
    assert!(
        pings.len() >= 5 && longest < Duration::from_millis(1500),
        "{} pings, longest gap {longest:?}:\n{log}",
        pings.len()
    );
    assert!(!log.contains("stages stopped making progress"), "{log}");
    assert!(
        log.contains("camera=blocked") && log.contains("did not finish starting"),
        "{log}"
    );
    // One start blocked at a time: one teardown abandoned, however many retries.
    let abandoned = log
        .lines()
        .filter(|l| l.contains("its thread is abandoned") && l.contains("camera=blocked"))
        .count();
    assert_eq!(abandoned, 1, "{log}");
    assert!(status.success(), "exit {status}:\n{log}");
    assert!(
        took <= Duration::from_secs(4),
        "exit {took:?} after SIGTERM:\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    eprintln!(
        "blocked camera: {} WATCHDOG=1 after READY, longest gap {:.2} s; SIGTERM->exit {:.2} s",
        pings.len(),
        longest.as_secs_f64(),
        took.as_secs_f64()
    );
}
