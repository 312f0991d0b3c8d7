//! The durable outbox (`[mqtt] outbox = "disk"`) and `seq`, against a real mosquitto (with
//! persistence, and a persistent-session subscriber that the broker queues for while it is
//! away) and the real daemon: broker outages under load, a SIGKILL during an outage, a corrupt
//! spool at start.
//!
//! The broker is stopped with SIGTERM (`systemctl stop mosquitto`), so that it saves the
//! subscriber's session and queue: a SIGKILLed broker loses what it acknowledged since its last
//! autosave, which no publisher can make up for.

#[path = "common/mosquitto.rs"]
mod mosquitto;

#[path = "common/daemon.rs"]
mod daemon;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use affectd::publish::{self, MqttConfig, OutboxMode, Publisher};
use daemon::{Daemon, NODE, config, detect_sections, fixture, schema};
use mosquitto::{Mosquitto, Msg, Options, Subscriber};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

fn persistent_broker() -> Mosquitto {
    Mosquitto::with(Options {
        persistence: true,
        ..Options::default()
    })
}

fn json(m: &Msg) -> Value {
    serde_json::from_slice(&m.payload).unwrap_or(Value::Null)
}

/// Every `seq` received on result topics -> its distinct payloads and how often it came.
fn by_seq(messages: &[Msg]) -> BTreeMap<u64, (Vec<Vec<u8>>, usize)> {
    let mut seqs: BTreeMap<u64, (Vec<Vec<u8>>, usize)> = BTreeMap::new();
    for m in messages {
        let Some(seq) = json(m)["seq"].as_u64() else {
            continue;
        };
        let entry = seqs.entry(seq).or_default();
        entry.1 += 1;
        if !entry.0.contains(&m.payload) {
            entry.0.push(m.payload.clone());
        }
    }
    seqs
}

/// Asserts that `seqs` holds every number from its first to its last, each for one message
/// (a duplicate is the same payload again); returns (distinct, duplicates).
fn assert_gapless(seqs: &BTreeMap<u64, (Vec<Vec<u8>>, usize)>) -> (usize, usize) {
    let (first, last) = (
        *seqs.keys().next().expect("results"),
        *seqs.keys().last().unwrap(),
    );
    let missing: Vec<u64> = (first..=last).filter(|s| !seqs.contains_key(s)).collect();
    assert!(
        missing.is_empty(),
        "{} of {first}..={last} missing: {:?}",
        missing.len(),
        &missing[..missing.len().min(50)]
    );
    for (seq, (payloads, _)) in seqs {
        assert_eq!(payloads.len(), 1, "seq {seq} names different messages");
    }
    let duplicates = seqs.values().map(|(_, n)| n - 1).sum();
    (seqs.len(), duplicates)
}

async fn start_connected(config: &MqttConfig, node: &str) -> Publisher {
    let publisher = publish::start(config, node, CancellationToken::new()).expect("start");
    let mut rx = publisher.ever_connected();
    tokio::time::timeout(WAIT, rx.wait_for(|c| *c))
        .await
        .expect("first connect")
        .unwrap();
    publisher
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_broker_outages_under_load_lose_no_seq() {
    let mut broker = persistent_broker();
    let topic = "affectd/o1/results";
    let sub = Subscriber::persistent(&broker, topic, "outbox-test-o1");
    let state = tempfile::tempdir().unwrap();
    let config = MqttConfig {
        port: broker.port(),
        reconnect_max_s: 1.0,
        outbox: OutboxMode::Disk,
        outbox_dir: Some(state.path().to_path_buf()),
        ..MqttConfig::default()
    };
    let publisher = start_connected(&config, "o1").await;

    // Load: ~250 results/s of ~500 bytes from a pipeline-like thread, outages or not.
    let stop = Arc::new(AtomicBool::new(false));
    let loader = {
        let (publisher, stop) = (publisher.clone(), stop.clone());
        std::thread::spawn(move || {
            let pad = "x".repeat(450);
            let mut last = 0;
            while !stop.load(Ordering::Relaxed) {
                last = publisher
                    .publish_numbered(topic, |seq| {
                        format!("{{\"seq\":{seq},\"pad\":\"{pad}\"}}").into_bytes()
                    })
                    .expect("queued");
                std::thread::sleep(Duration::from_millis(4));
            }
            last
        })
    };
    let t0 = Instant::now();
    for outage in 0..3 {
        tokio::time::sleep(Duration::from_secs(4)).await;
        let before = publisher.stats();
        broker.stop_gracefully();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let during = publisher.stats();
        eprintln!(
            "outage {outage}: {} results waiting after 10 s ({} accepted)",
            during.queued,
            during.accepted - before.accepted
        );
        assert!(during.queued > 1000, "{during:?}");
        broker.restart();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let last = loader.join().unwrap();
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let s = publisher.stats();
            if s.queued == 0 && s.in_flight == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not drained: {:?}", publisher.stats()));
    assert!(
        sub.wait_for(Duration::from_secs(30), |m| json(m)["seq"] == last)
            .is_some(),
        "the last result (seq {last}) never arrived"
    );
    let stats = publisher.stats();
    let seqs = by_seq(&sub.messages());
    let (distinct, duplicates) = assert_gapless(&seqs);
    assert_eq!(*seqs.keys().next().unwrap(), 1);
    assert_eq!(distinct as u64, last);
    assert_eq!(stats.dropped, 0);
    let commits = stats.spool_commits.max(1);
    eprintln!(
        "{last} results in {:?} through 3 outages: all delivered, {duplicates} QoS 1 \
         duplicates; spool: {} commits (fsync each), mean {} us, max {} us, {:.1} ops/commit",
        t0.elapsed(),
        stats.spool_commits,
        stats.spool_commit_micros / commits,
        stats.spool_commit_max_micros,
        stats.spool_ops as f64 / commits as f64
    );
    assert!(
        stats.spool_commits > 0 && stats.spool_errors == 0,
        "{stats:?}"
    );
    assert!(publisher.shutdown(Duration::from_secs(5)).await.flushed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_publisher_replays_its_spool_and_continues_seq() {
    let broker = persistent_broker();
    let topic = "affectd/o2/results";
    let sub = Subscriber::persistent(&broker, topic, "outbox-test-o2");
    let state = tempfile::tempdir().unwrap();
    // Nothing listens here: the first run spools everything.
    let offline = MqttConfig {
        port: mosquitto::free_port(),
        reconnect_max_s: 1.0,
        outbox: OutboxMode::Disk,
        outbox_dir: Some(state.path().to_path_buf()),
        outbox_capacity: 100,
        ..MqttConfig::default()
    };
    let first = publish::start(&offline, "o2", CancellationToken::new()).unwrap();
    for i in 0..150 {
        first
            .publish_numbered(topic, |seq| format!("{{\"seq\":{seq},\"i\":{i}}}").into())
            .unwrap();
    }
    let report = first.shutdown(Duration::from_millis(300)).await;
    assert_eq!(first.stats().dropped, 50, "{report}");
    drop(first);

    let online = MqttConfig {
        port: broker.port(),
        ..offline
    };
    let second = start_connected(&online, "o2").await;
    let outbox_status = Subscriber::new(&broker, "affectd/o2/outbox");
    assert_eq!(
        second.stats().next_seq,
        151,
        "seq continues after the spool"
    );
    let seq = second
        .publish_numbered(topic, |seq| format!("{{\"seq\":{seq},\"i\":150}}").into())
        .unwrap();
    assert_eq!(seq, 151);
    assert!(
        sub.wait_for(WAIT, |m| json(m)["seq"] == 151).is_some(),
        "{:?}",
        second.stats()
    );
    let got: Vec<u64> = sub
        .messages()
        .iter()
        .filter_map(|m| json(m)["seq"].as_u64())
        .collect();
    // The newest 100 of the first run, in order, then the new one.
    assert_eq!(got, (51..=151).collect::<Vec<_>>());
    // The drops of the first run are on record in the spool.
    let status = outbox_status
        .wait_for(WAIT, |_| true)
        .map(|m| json(&m))
        .expect("retained outbox status");
    assert_eq!(status["mode"], "disk", "{status}");
    assert_eq!(status["dropped_total"], 50, "{status}");
    assert!(second.shutdown(Duration::from_secs(5)).await.flushed);
}

/// A daemon on the bundled clip (detector and tracker: track events) with the disk outbox in
/// `state`.
fn daemon_config(broker: &Mosquitto, state: &Path) -> String {
    let cameras = format!(
        "[[camera]]\nid = \"walkway\"\nuri = \"file:{}\"\n",
        fixture("vtest.mp4").display()
    );
    let extra = format!(
        "outbox = \"disk\"\noutbox_dir = \"{}\"\nreconnect_max_s = 1.0\n{}",
        state.display(),
        detect_sections()
    );
    config(broker, &cameras, &extra)
}

fn is_result(m: &Msg) -> bool {
    m.topic.starts_with(&format!("affectd/{NODE}/"))
        && (m.topic.ends_with("/tracks") || m.topic.contains("/person/"))
}

fn results(sub: &Subscriber) -> Vec<Msg> {
    sub.messages().into_iter().filter(is_result).collect()
}

fn wait_results(sub: &Subscriber, daemon: &mut Daemon, n: usize, limit: Duration) {
    let t0 = Instant::now();
    while results(sub).len() < n {
        assert!(daemon.is_running(), "daemon exited:\n{}", daemon.log());
        assert!(
            t0.elapsed() < limit,
            "{} results after {limit:?}:\n{}",
            results(sub).len(),
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigkill_during_a_broker_outage_then_restart_delivers_everything_spooled() {
    let mut broker = persistent_broker();
    let sub = Subscriber::persistent(&broker, &format!("affectd/{NODE}/#"), "outbox-test-e2e");
    let state = tempfile::tempdir().unwrap();
    let config = daemon_config(&broker, state.path());
    let mut daemon = Daemon::start(&config);
    wait_results(&sub, &mut daemon, 2, Duration::from_secs(60));

    broker.stop_gracefully();
    let outage = SystemTime::now();
    std::thread::sleep(Duration::from_secs(12));
    // Killed with results spooled: no shutdown, no flush.
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    let killed = SystemTime::now();
    let spool = state.path().join("outbox.redb");
    assert!(spool.exists(), "{}", daemon.log());
    let first_log = daemon.log();
    drop(daemon);

    broker.restart();
    let mut daemon = Daemon::start(&config);
    let restarted = SystemTime::now();
    // Wait for a result made by the new process: the spool goes out before it.
    let t0 = Instant::now();
    let made_after = |m: &Msg| {
        json(m)["time"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(SystemTime::from)
            .is_some_and(|t| t > restarted)
    };
    while !results(&sub).iter().any(made_after) {
        assert!(daemon.is_running(), "restart failed:\n{}", daemon.log());
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no new result:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, _) = daemon.terminate(Duration::from_secs(10));
    assert!(status.success(), "{}", daemon.log());

    let got = results(&sub);
    let person = schema("person.v2.schema.json");
    let track = schema("track.v2.schema.json");
    for m in &got {
        let v = json(m);
        let validator = if m.topic.ends_with("/tracks") {
            &track
        } else {
            &person
        };
        assert!(
            validator.is_valid(&v),
            "{v}: {:?}",
            validator.validate(&v).err()
        );
    }
    let in_outage = |m: &&Msg| {
        json(m)["time"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(SystemTime::from)
            .is_some_and(|t| t > outage && t < killed)
    };
    let spooled = got.iter().filter(in_outage).count();
    let seqs = by_seq(&got);
    let (distinct, duplicates) = assert_gapless(&seqs);
    eprintln!(
        "{distinct} results (seq {}..={}), {spooled} of them made during the outage by the \
         killed process, {duplicates} QoS 1 duplicates",
        seqs.keys().next().unwrap(),
        seqs.keys().last().unwrap()
    );
    assert!(
        spooled >= 1,
        "no result was made during the outage:\n{first_log}"
    );
    let log = daemon.log();
    assert!(log.contains("MQTT outbox spool opened"), "{log}");
}

#[test]
fn a_corrupt_spool_is_quarantined_logged_and_the_daemon_runs() {
    let broker = Mosquitto::start();
    let state = tempfile::tempdir().unwrap();
    let junk: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(state.path().join("outbox.redb"), &junk).unwrap();
    std::fs::write(state.path().join("seq"), "5000\n").unwrap();
    let sub = Subscriber::new(&broker, &format!("affectd/{NODE}/#"));
    let cameras = "[[camera]]\nid = \"lab\"\nuri = \"test:smpte\"\n";
    let extra = format!(
        "outbox = \"disk\"\noutbox_dir = \"{}\"\n",
        state.path().display()
    );
    let mut daemon = Daemon::start(&config(&broker, cameras, &extra));
    let status = sub
        .wait_for(Duration::from_secs(20), |m| {
            m.topic == format!("affectd/{NODE}/outbox")
        })
        .map(|m| json(&m));
    let log = daemon.log();
    assert!(daemon.is_running(), "{log}");
    let status = status.unwrap_or_else(|| panic!("no outbox status:\n{log}"));
    assert_eq!(status["mode"], "disk", "{status}");
    let aside = status["quarantined"]
        .as_str()
        .unwrap_or_else(|| panic!("{status}"));
    assert_eq!(std::fs::read(aside).unwrap(), junk, "kept untouched");
    assert!(
        log.contains("MQTT outbox spool is unreadable; moved aside") && log.contains(aside),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        sub.wait_for(WAIT, |m| m.topic.ends_with("/lab/status")
            && json(m)["state"] == "streaming")
            .is_some(),
        "{log}"
    );
    let (status, _) = daemon.terminate(Duration::from_secs(10));
    assert!(status.success(), "{}", daemon.log());
    // The fresh spool opens cleanly next time, and seq went on from the seq file.
    assert!(state.path().join("outbox.redb").exists());
    let next: u64 = std::fs::read_to_string(state.path().join("seq"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        next, 5000,
        "no result was made; the counter is where it was"
    );
}
