//! Many boxes (issue 13): two affectd nodes on the bundled clip, each publishing to its own edge
//! mosquitto, each edge bridged to one central mosquitto, two consumers (`examples/consumer.rs`,
//! its real `run`) in one shared-subscription group on the central broker.
//!
//! The brokers run the shipped deploy files as far as loopback allows: each edge's bridge is
//! the `connection` section of `deploy/mosquitto/edge.conf` with only its placeholders filled
//! in (TLS with a per-box certificate whose CN is the node id, made here by `openssl`, to the
//! central broker's listener that requires client certificates and takes the CN as user
//! name), and the central broker reads `deploy/mosquitto/affectd.acl` (a box writes only its own
//! node's topics; consumers log in as `dashboards`, password required).
//!
//! Shown: every (node, seq) the daemons published reaches the group, once apart from QoS 1
//! duplicates (counted); one edge broker stopped for 20 s (SIGTERM, as `systemctl stop`, so it
//! saves its persistent store) -> its box's results made meanwhile, held in that daemon's
//! outbox, arrive after it returns, no seq missing, while the other box's results keep flowing;
//! one consumer leaving the group -> the other takes the whole stream. Measured numbers are
//! printed (`--nocapture`).

#[path = "common/mosquitto.rs"]
mod mosquitto;

#[path = "common/daemon.rs"]
mod daemon;

#[path = "common/http.rs"]
mod http;

#[allow(dead_code)]
#[path = "../examples/consumer.rs"]
mod consumer;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use daemon::{Daemon, detect_sections, fixture, tiny_model_section};
use mosquitto::{Mosquitto, Msg, Options, Subscriber, run};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const NODES: [&str; 2] = ["box-a", "box-b"];
/// The consumers' user in `deploy/mosquitto/affectd.acl`.
const USER: &str = "dashboards";
const PASSWORD: &str = "fleet-test-password";
const GROUP: &str = "dashboards";
/// The edge broker of `NODES[0]` is stopped for this long (the figure).
const OUTAGE: Duration = Duration::from_secs(20);

fn deploy(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/mosquitto")
        .join(name)
}

/// A client certificate with CN = `node`, signed by the central broker's test CA (the CA the
/// harness made for it, in its folder): the box's identity at the central broker.
fn node_certificate(central: &Mosquitto, node: &str) -> (PathBuf, PathBuf) {
    let dir = central.dir();
    let (key, csr, crt, ext) = (
        dir.join(format!("{node}.key")),
        dir.join(format!("{node}.csr")),
        dir.join(format!("{node}.crt")),
        dir.join(format!("{node}.ext")),
    );
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    run(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-subj", &format!("/CN={node}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr));
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
        .arg("-in")
        .arg(&csr)
        .arg("-CA")
        .arg(dir.join("ca.crt"))
        .arg("-CAkey")
        .arg(dir.join("ca.key"))
        .arg("-out")
        .arg(&crt)
        .arg("-extfile")
        .arg(&ext));
    (crt, key)
}

/// The `connection` section of `deploy/mosquitto/edge.conf` for `node`, its placeholders
/// filled in for the central broker on loopback; nothing else changed.
fn bridge_section(central: &Mosquitto, node: &str) -> String {
    let (crt, key) = node_certificate(central, node);
    let text = std::fs::read_to_string(deploy("edge.conf")).unwrap();
    let start = text
        .find("\nconnection ")
        .expect("edge.conf has a bridge section");
    let mut section = text[start + 1..].to_owned();
    let address = format!("127.0.0.1:{}", central.mtls_port());
    for (from, to) in [
        (
            "/etc/mosquitto/certs/central-ca.pem",
            central.tls_files().ca_cert.display().to_string(),
        ),
        ("/etc/mosquitto/certs/NODE.crt", crt.display().to_string()),
        ("/etc/mosquitto/certs/NODE.key", key.display().to_string()),
        ("CENTRAL:8883", address),
        ("NODE", node.to_owned()),
    ] {
        assert!(section.contains(from), "edge.conf has no {from}");
        section = section.replace(from, &to);
    }
    section
}

fn daemon_config(node: &str, edge: &Mosquitto) -> String {
    format!(
        "[node]\nid = \"{node}\"\n\
         [[camera]]\nid = \"walkway\"\nuri = \"file:{clip}\"\n\
         [ingest]\nfps = 4\n\
         [mqtt]\nport = {port}\nstatus_interval_s = 5.0\nreconnect_max_s = 1.0\n\
         {detect}{model}",
        clip = fixture("vtest.mp4").display(),
        port = edge.port(),
        detect = detect_sections(),
        model = tiny_model_section(),
    )
}

/// A result (person or track message) as the central observer saw it.
#[derive(Debug, Clone)]
struct Seen {
    node: String,
    seq: u64,
    /// When the daemon made it (`time`).
    made: SystemTime,
    /// When it reached the central broker's observer.
    at: Instant,
}

fn json(m: &Msg) -> Value {
    serde_json::from_slice(&m.payload).unwrap_or(Value::Null)
}

fn is_result_topic(topic: &str) -> bool {
    let parts: Vec<&str> = topic.split('/').collect();
    matches!(
        parts.as_slice(),
        ["affectd", _, _, "person", _] | ["affectd", _, _, "tracks"]
    )
}

fn results(observer: &Subscriber) -> Vec<Seen> {
    observer
        .messages()
        .iter()
        .filter(|m| is_result_topic(&m.topic))
        .map(|m| {
            let v = json(m);
            let made = v["time"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(SystemTime::from)
                .unwrap_or_else(|| panic!("no time in {v}"));
            Seen {
                node: v["node"].as_str().expect("node").to_owned(),
                seq: v["seq"].as_u64().expect("seq"),
                made,
                at: m.at,
            }
        })
        .collect()
}

/// Distinct seqs per node.
fn seqs(seen: &[Seen]) -> BTreeMap<String, BTreeSet<u64>> {
    let mut map: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for s in seen {
        map.entry(s.node.clone()).or_default().insert(s.seq);
    }
    map
}

/// Numbers from 1 to the highest that are not in `set`.
fn missing(set: &BTreeSet<u64>) -> Vec<u64> {
    let last = set.last().copied().unwrap_or(0);
    (1..=last).filter(|s| !set.contains(s)).collect()
}

/// One member of the consumer group: `examples/consumer.rs`'s `run` on the test's runtime,
/// its JSON lines collected with the time they came out.
struct Member {
    name: String,
    lines: Arc<Mutex<Vec<(Instant, Value)>>>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<Value>>>,
}

impl Member {
    fn start(rt: &tokio::runtime::Runtime, central: &Mosquitto, name: &str) -> Member {
        let password_file = central.dir().join(format!("{name}.password"));
        std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
        let port = central.port().to_string();
        let args = consumer::Args::try_parse_from([
            "consumer",
            "--port",
            &port,
            "--group",
            GROUP,
            "--client-id",
            name,
            "--username",
            USER,
            "--password-file",
            password_file.to_str().unwrap(),
            "--messages",
            // A member that stops leaves the group at once (see the consumer's docs).
            "--session-expiry-s",
            "0",
        ])
        .expect("consumer arguments");
        let lines: Arc<Mutex<Vec<(Instant, Value)>>> = Arc::default();
        let out: consumer::Sink = {
            let lines = lines.clone();
            Box::new(move |v| lines.lock().unwrap().push((Instant::now(), v)))
        };
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task =
            rt.spawn(async move { consumer::run(&args, out, stopped.cancelled_owned()).await });
        let member = Member {
            name: name.to_owned(),
            lines,
            stop,
            task: Some(task),
        };
        let t0 = Instant::now();
        while !member
            .lines()
            .iter()
            .any(|(_, v)| v["kind"] == "subscribed")
        {
            let task = member.task.as_ref().unwrap();
            if task.is_finished() {
                let result = rt.block_on(member_result(member));
                panic!("consumer {name} ended: {result:?}\n{}", central.log());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "consumer {name} not subscribed:\n{}",
                central.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        member
    }

    fn lines(&self) -> Vec<(Instant, Value)> {
        self.lines.lock().unwrap().clone()
    }

    /// (node, seq) of its `message` lines, with when each came out.
    fn messages(&self) -> Vec<(String, u64, Instant)> {
        self.lines()
            .into_iter()
            .filter(|(_, v)| v["kind"] == "message")
            .map(|(at, v)| {
                (
                    v["node"].as_str().unwrap().to_owned(),
                    v["seq"].as_u64().unwrap(),
                    at,
                )
            })
            .collect()
    }

    /// Stops it (as SIGINT/SIGTERM stop the command) and returns its summary.
    fn leave(&mut self, rt: &tokio::runtime::Runtime) -> Value {
        self.stop.cancel();
        let task = self.task.take().expect("running");
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .unwrap_or_else(|_| panic!("consumer {} did not stop", self.name))
                .expect("consumer task")
                .expect("consumer result")
        })
    }
}

async fn member_result(mut member: Member) -> String {
    match member.task.take().unwrap().await {
        Ok(Ok(v)) => v.to_string(),
        Ok(Err(e)) => format!("{e:#}"),
        Err(e) => e.to_string(),
    }
}

fn metric(addr: SocketAddr, series: &str) -> Option<f64> {
    let body = http::get(addr, "/metrics", None).body;
    body.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Polls `done` every 50 ms; panics with `context()` after `limit`.
fn wait_for(
    what: &str,
    limit: Duration,
    mut done: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let t0 = Instant::now();
    while !done() {
        assert!(
            t0.elapsed() < limit,
            "{what}: not within {limit:?}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[test]
fn two_boxes_bridge_to_a_central_broker_and_a_consumer_group_gets_every_seq() {
    let t_start = Instant::now();
    // The central broker: consumers log in on the plain listener; edges present a client
    // certificate (CN = node id, taken as user name by `use_identity_as_username`, which the
    // `extra` lines set on the listener that requires certificates) and the ACL of the deploy
    // folder, as shipped, confines each to its own node's topics.
    let central = Mosquitto::with(Options {
        users: vec![(USER.into(), PASSWORD.into())],
        tls: true,
        extra: format!(
            "use_identity_as_username true\nacl_file {}\n",
            deploy("affectd.acl").display()
        ),
        ..Options::default()
    });
    let observer = Subscriber::with_login(&central, "affectd/#", Some((USER, PASSWORD)));
    let mut edges: Vec<Mosquitto> = NODES
        .iter()
        .map(|node| {
            Mosquitto::with(Options {
                persistence: true,
                extra: bridge_section(&central, node),
                ..Options::default()
            })
        })
        .collect();
    let logs = |edges: &[Mosquitto]| {
        format!(
            "central:\n{}\nedge a:\n{}\nedge b:\n{}",
            central.log(),
            edges[0].log(),
            edges[1].log()
        )
    };
    // Each bridge announces itself at the central broker (notification_topic, retained "1").
    let bridge_up = |node: &str, after: Instant| {
        observer.messages().iter().any(|m| {
            m.topic == format!("affectd/{node}/bridge") && m.text() == "1" && m.at >= after
        })
    };
    wait_for(
        "both bridges connected",
        Duration::from_secs(20),
        || NODES.iter().all(|n| bridge_up(n, t_start)),
        || logs(&edges),
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut first = Member::start(&rt, &central, "fleet-consumer-1");
    let mut second = Member::start(&rt, &central, "fleet-consumer-2");

    let mut daemons: Vec<Daemon> = NODES
        .iter()
        .zip(&edges)
        .map(|(node, edge)| Daemon::start(&daemon_config(node, edge)))
        .collect();
    let http_a = daemons[0].http_addr(Duration::from_secs(30));
    let daemon_logs = |daemons: &[Daemon]| {
        format!(
            "daemon a:\n{}\ndaemon b:\n{}",
            daemons[0].log(),
            daemons[1].log()
        )
    };

    // Both boxes publish, and the group shares the stream.
    const WARM: usize = 10;
    wait_for(
        "results of both nodes at the central broker",
        Duration::from_secs(120),
        || {
            let s = seqs(&results(&observer));
            NODES
                .iter()
                .all(|n| s.get(*n).is_some_and(|x| x.len() >= WARM))
        },
        || daemon_logs(&daemons) + &logs(&edges),
    );
    let warm_at = Instant::now();

    // Outage: box a's edge broker stops (SIGTERM: it saves its store, the bridge's queue
    // included) for OUTAGE. Its daemon cannot publish meanwhile: its outbox holds the results.
    let outage_start = Instant::now();
    edges[0].stop_gracefully();
    // Results made from here on (the broker has exited) can only reach it after its return.
    let stopped_sys = SystemTime::now();
    std::thread::sleep(
        (OUTAGE - Duration::from_millis(500)).saturating_sub(outage_start.elapsed()),
    );
    let held = metric(http_a, "affectd_mqtt_outbox_messages").unwrap_or(-1.0);
    assert_eq!(
        metric(http_a, "affectd_mqtt_connected"),
        Some(0.0),
        "box a's daemon still connected with its broker stopped"
    );
    std::thread::sleep(OUTAGE.saturating_sub(outage_start.elapsed()));
    edges[0].restart();
    let back = Instant::now();
    let back_sys = SystemTime::now();
    let outage = back - outage_start;
    // The other box was unaffected: its results kept reaching the group during the outage.
    let b_during = results(&observer)
        .iter()
        .filter(|s| s.node == NODES[1] && s.at > outage_start && s.at < back)
        .count();
    assert!(b_during > 0, "no result of {} during the outage", NODES[1]);

    // Box a's results made during the outage arrive, and then a new one: nothing missing.
    wait_for(
        "box a back: its bridge, a result made after the return, no seq missing",
        Duration::from_secs(60),
        || {
            let seen = results(&observer);
            let s = seqs(&seen);
            bridge_up(NODES[0], back)
                && seen.iter().any(|r| r.node == NODES[0] && r.made > back_sys)
                && missing(&s[NODES[0]]).is_empty()
        },
        || {
            let s = seqs(&results(&observer));
            format!("missing: {:?}\n", missing(&s[NODES[0]]))
                + &daemon_logs(&daemons)
                + &logs(&edges)
        },
    );
    let bridge_back_after = observer
        .messages()
        .iter()
        .find(|m| {
            m.topic == format!("affectd/{}/bridge", NODES[0]) && m.text() == "1" && m.at >= back
        })
        .map(|m| m.at - back)
        .unwrap();
    let made_in_outage: Vec<Seen> = {
        let mut first_seen: BTreeMap<u64, Seen> = BTreeMap::new();
        for r in results(&observer) {
            if r.node == NODES[0] && r.made > stopped_sys && r.made < back_sys {
                first_seen.entry(r.seq).or_insert(r);
            }
        }
        first_seen.into_values().collect()
    };
    assert!(
        !made_in_outage.is_empty(),
        "box a made no result during the outage:\n{}",
        daemon_logs(&daemons)
    );
    for r in &made_in_outage {
        assert!(
            r.at > back,
            "seq {} reached the central broker during the outage",
            r.seq
        );
    }

    // One consumer leaves; the other takes the whole stream.
    let first_summary = first.leave(&rt);
    let switched = Instant::now();
    let first_count = first.messages().len();
    let second_before = second
        .messages()
        .iter()
        .filter(|(_, _, at)| *at <= switched)
        .count();
    assert!(
        first_count > 0 && second_before > 0,
        "the group did not share the stream: {first_count} / {second_before} messages"
    );
    const AFTER: usize = 8;
    wait_for(
        "results of both nodes after the switch",
        Duration::from_secs(90),
        || {
            let seen = results(&observer);
            NODES.iter().all(|n| {
                seen.iter()
                    .filter(|r| r.node == *n && r.at > switched)
                    .count()
                    >= AFTER
            })
        },
        || daemon_logs(&daemons),
    );

    // The end: each daemon flushes its outbox, then says `offline`, which the observer sees
    // after every result of that node (one bridge, one session: in order).
    let stopping = Instant::now();
    for d in &mut daemons {
        let (status, _) = d.terminate(Duration::from_secs(30));
        assert!(status.success(), "{}", d.log());
        let log = d.log();
        let report = log
            .lines()
            .find(|l| l.contains("MQTT publisher stopped"))
            .unwrap_or_else(|| panic!("no publisher report:\n{log}"));
        assert!(
            report.contains("flushed") && report.contains("(0 unsent, 0 unacknowledged"),
            "{report}"
        );
    }
    wait_for(
        "both nodes offline at the central broker",
        Duration::from_secs(30),
        || {
            NODES.iter().all(|n| {
                observer.messages().iter().any(|m| {
                    m.topic == format!("affectd/{n}/status")
                        && m.text() == "offline"
                        && m.at > stopping
                })
            })
        },
        || logs(&edges),
    );
    let seen = results(&observer);
    let at_central = seqs(&seen);
    let group = || {
        let mut union: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
        for (node, seq, _) in first.messages().into_iter().chain(second.messages()) {
            union.entry(node).or_default().insert(seq);
        }
        union
    };
    wait_for(
        "the group got everything the central broker got",
        Duration::from_secs(30),
        || group() == at_central,
        || format!("central {at_central:?}\ngroup {:?}", group()),
    );
    let second_summary = second.leave(&rt);

    // Every seq of every node, from 1 to its last, reached the group.
    for node in NODES {
        let s = &at_central[node];
        assert!(missing(s).is_empty(), "{node}: {:?} missing", missing(s));
    }
    // After the switch, the stream went to the second consumer only, all of it (a message that
    // reached the observer a moment after the first consumer left may still be one the first
    // took before it left: each message goes to one member).
    let first_seqs: BTreeSet<(String, u64)> = first
        .messages()
        .into_iter()
        .map(|(n, s, _)| (n, s))
        .collect();
    let second_seqs: BTreeSet<(String, u64)> = second
        .messages()
        .into_iter()
        .map(|(n, s, _)| (n, s))
        .collect();
    let after_switch: BTreeSet<(String, u64)> = seen
        .iter()
        .filter(|r| r.at > switched)
        .map(|r| (r.node.clone(), r.seq))
        .filter(|k| !first_seqs.contains(k))
        .collect();
    let not_taken: Vec<_> = after_switch.difference(&second_seqs).collect();
    assert!(
        not_taken.is_empty(),
        "after the switch, not at the second consumer: {not_taken:?}"
    );
    assert!(
        first.messages().iter().all(|(_, _, at)| *at <= switched),
        "the first consumer got messages after it left"
    );
    for summary in [&first_summary, &second_summary] {
        assert_eq!(summary["invalid"], 0, "schema violations: {summary}");
    }
    let minutes = second
        .lines()
        .iter()
        .filter(|(_, v)| v["kind"] == "minute" && v["persons"].as_u64() > Some(0))
        .count();
    assert!(minutes > 0, "no per-camera minute aggregate");

    // Numbers.
    let distinct: usize = at_central.values().map(BTreeSet::len).sum();
    let lines = first.messages().len() + second.messages().len();
    let group_duplicates = lines - distinct;
    let central_duplicates = seen.len() - distinct;
    let outage_delay = made_in_outage
        .iter()
        .map(|r| {
            let at = first
                .messages()
                .into_iter()
                .chain(second.messages())
                .filter(|(n, s, _)| n == NODES[0] && *s == r.seq)
                .map(|(_, _, at)| at)
                .min()
                .unwrap();
            at - back
        })
        .max()
        .unwrap();
    let latency_before: Vec<f64> = seen
        .iter()
        .filter(|r| r.at < outage_start)
        .filter_map(|r| {
            let now_sys = SystemTime::now() - r.at.elapsed();
            now_sys.duration_since(r.made).ok().map(|d| d.as_secs_f64())
        })
        .collect();
    let median_latency = {
        let mut l = latency_before.clone();
        l.sort_by(f64::total_cmp);
        l.get(l.len() / 2).copied().unwrap_or(f64::NAN)
    };
    for node in NODES {
        let s = &at_central[node];
        eprintln!(
            "fleet: {node}: seq 1..={} all at the central broker and the group ({} messages)",
            s.last().unwrap(),
            s.len()
        );
    }
    eprintln!(
        "fleet: {distinct} distinct results; {central_duplicates} QoS 1 duplicates at the central \
         broker, {group_duplicates} in the group's {lines} message lines (per consumer: {} and {})",
        first_summary["nodes"].as_object().map_or(0, |n| n
            .values()
            .map(|v| v["duplicates"].as_u64().unwrap_or(0))
            .sum::<u64>()),
        second_summary["nodes"].as_object().map_or(0, |n| n
            .values()
            .map(|v| v["duplicates"].as_u64().unwrap_or(0))
            .sum::<u64>()),
    );
    let mean_bytes = |kind: &str| {
        let sizes: Vec<usize> = observer
            .messages()
            .iter()
            .filter(|m| is_result_topic(&m.topic) && m.topic.contains(kind))
            .map(|m| m.payload.len())
            .collect();
        sizes.iter().sum::<usize>() / sizes.len().max(1)
    };
    let window = |node: &str| {
        let s: Vec<&Seen> = seen.iter().filter(|r| r.node == node).collect();
        let first = s.iter().map(|r| r.made).min().unwrap();
        let last = s.iter().map(|r| r.made).max().unwrap();
        s.len() as f64 / last.duration_since(first).unwrap().as_secs_f64()
    };
    eprintln!(
        "fleet: mean payload {} bytes per person message, {} per track event; {:.1} and {:.1} \
         results/s made per node (tiny model, 4 fps, every sighting sampled)",
        mean_bytes("/person/"),
        mean_bytes("/tracks"),
        window(NODES[0]),
        window(NODES[1]),
    );
    eprintln!(
        "fleet: median delay made -> central broker before the outage {median_latency:.3} s \
         ({} results)",
        latency_before.len()
    );
    eprintln!(
        "fleet: edge of {} stopped {:.1} s: its daemon's outbox held {held} results near the end; \
         {} results made meanwhile, all delivered after the return (bridge up {:.2} s after the \
         restart, last outage result at the group {:.2} s after it); {b_during} results of {} \
         arrived during the outage",
        NODES[0],
        secs(outage),
        made_in_outage.len(),
        secs(bridge_back_after),
        secs(outage_delay),
        NODES[1],
    );
    eprintln!(
        "fleet: consumer 1 took {first_count} messages and left; consumer 2 took {second_before} \
         before and {} after the switch (every one of them)",
        second.messages().len() - second_before
    );
    eprintln!(
        "fleet: warm-up {:.1} s, whole test {:.1} s",
        secs(warm_at - t_start),
        secs(t_start.elapsed())
    );
    drop(rt);
    drop(edges);
}
