//! A consumer of affectd results in a consumer group: MQTT v5 shared subscriptions
//! (`$share/<group>/...`), so several consumers split one stream and one that stops leaves
//! the whole stream to the others. Each message is validated against its JSON Schema
//! (`schemas/person.v2`, `schemas/track.v2`); `seq` is kept per node to count duplicates (QoS 1
//! redeliveries) and gaps; per camera and minute it aggregates the people seen, the dominant
//! emotion and the mean valence and arousal. Output: JSON lines on stdout.
//!
//!     cargo run --example consumer -- --help
//!     cargo run --example consumer -- --host central.example --group dashboards
//!
//! Gaps are counted over what this consumer received: alone in its group that is every
//! message; in a group of several each member sees a share, and the group's union (the
//! `message` lines of every member, `--messages`) is what shows gaps.
//!
//! Leaving the group: on SIGINT or SIGTERM (or after `--seconds`) the consumer sends
//! DISCONNECT and takes every message that was already on its way before exiting. Its
//! session outlives it by `--session-expiry-s`: while the session lasts the broker keeps
//! assigning it a share of the stream (mosquitto 2.0 queues that share for its return), so a
//! member that stops for good and wants the others to take the whole stream at once runs with
//! `--session-expiry-s 0`. `tests/fleet.rs` runs this file's [`run`] against real daemons
//! and brokers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(about = "Consume affectd results in an MQTT v5 consumer group")]
pub struct Args {
    /// Broker host (an edge broker, or the central one the edges bridge to).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// Consumer group: consumers with one group name share the stream.
    #[arg(long, default_value = "affectd")]
    group: String,
    /// MQTT client id; keep it across restarts for the broker to keep the session.
    #[arg(long)]
    client_id: Option<String>,
    /// User name at the broker (the central broker's consumer listener wants one).
    #[arg(long)]
    username: Option<String>,
    /// File holding the password of `--username` (a trailing newline is ignored).
    #[arg(long, requires = "username")]
    password_file: Option<PathBuf>,
    /// First topic level of the daemons (`[mqtt] topic_prefix`).
    #[arg(long, default_value = "affectd")]
    prefix: String,
    /// Folder of the JSON Schemas.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas"))]
    schemas: PathBuf,
    /// Also print a `message` line (node, seq, topic, duplicate) per message received.
    #[arg(long)]
    messages: bool,
    /// Stop after this many seconds (default: run until killed).
    #[arg(long)]
    seconds: Option<f64>,
    /// Seconds the broker keeps this consumer's session (and queues its share for it) while it
    /// is away; 0: the session ends with the connection and the group takes its share.
    #[arg(long, default_value_t = 3600)]
    session_expiry_s: u32,
}

/// What is known of one node's `seq`.
#[derive(Default)]
struct NodeSeq {
    seen: BTreeSet<u64>,
    duplicates: u64,
}

/// One camera's minute.
#[derive(Default)]
struct Minute {
    persons: BTreeSet<u64>,
    messages: u64,
    scores: BTreeMap<String, f64>,
    valence: f64,
    arousal: f64,
}

impl Minute {
    fn line(&self, node: &str, camera: &str, minute: &str) -> Value {
        let n = self.messages.max(1) as f64;
        let dominant = self
            .scores
            .iter()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(k, _)| k.clone());
        json!({
            "kind": "minute", "node": node, "camera": camera, "minute": minute,
            "persons": self.persons.len(), "messages": self.messages,
            "dominant_emotion": dominant,
            "valence": self.valence / n, "arousal": self.arousal / n,
        })
    }
}

/// Where the JSON lines go: stdout for the command, anything for a test.
pub type Sink = Box<dyn FnMut(Value) + Send>;

struct Consumer {
    out: Sink,
    person: jsonschema::Validator,
    track: jsonschema::Validator,
    seq: BTreeMap<String, NodeSeq>,
    minutes: BTreeMap<(String, String, String), Minute>,
    received: u64,
    invalid: u64,
    emit_messages: bool,
}

impl Consumer {
    fn new(args: &Args, out: Sink) -> anyhow::Result<Self> {
        let load = |name: &str| -> anyhow::Result<jsonschema::Validator> {
            let path = args.schemas.join(name);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let value: Value = serde_json::from_str(&text)?;
            jsonschema::options()
                .should_validate_formats(true)
                .build(&value)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
        };
        Ok(Self {
            out,
            person: load("person.v2.schema.json")?,
            track: load("track.v2.schema.json")?,
            seq: BTreeMap::new(),
            minutes: BTreeMap::new(),
            received: 0,
            invalid: 0,
            emit_messages: args.messages,
        })
    }

    fn take(&mut self, topic: &str, payload: &[u8]) {
        self.received += 1;
        let value: Value = match serde_json::from_slice(payload) {
            Ok(v) => v,
            Err(e) => return self.reject(topic, &format!("not JSON: {e}")),
        };
        let validator = match value["schema"].as_str() {
            Some("affectd.person/2") => &self.person,
            Some("affectd.track/2") => &self.track,
            other => return self.reject(topic, &format!("unknown schema {other:?}")),
        };
        let problem = validator.iter_errors(&value).next().map(|e| e.to_string());
        if let Some(why) = problem {
            return self.reject(topic, &why);
        }
        let node = value["node"].as_str().unwrap_or_default().to_owned();
        let seq = value["seq"].as_u64().unwrap_or_default();
        let entry = self.seq.entry(node.clone()).or_default();
        let duplicate = !entry.seen.insert(seq);
        if duplicate {
            entry.duplicates += 1;
        }
        if self.emit_messages {
            (self.out)(
                json!({"kind": "message", "node": node, "seq": seq, "topic": topic, "duplicate": duplicate}),
            );
        }
        if duplicate || value["schema"] != "affectd.person/2" {
            return;
        }
        let camera = value["camera"].as_str().unwrap_or_default().to_owned();
        // The minute of the window's end: "2026-12-01T10:42".
        let minute = value["window"]["end"]
            .as_str()
            .and_then(|t| t.get(..16))
            .unwrap_or_default()
            .to_owned();
        let m = self.minutes.entry((node, camera, minute)).or_default();
        m.messages += 1;
        m.persons
            .insert(value["track_id"].as_u64().unwrap_or_default());
        if let Some(scores) = value["scores"].as_object() {
            for (class, p) in scores {
                *m.scores.entry(class.clone()).or_default() += p.as_f64().unwrap_or(0.0);
            }
        }
        m.valence += value["valence"].as_f64().unwrap_or(0.0);
        m.arousal += value["arousal"].as_f64().unwrap_or(0.0);
        self.flush_minutes(false);
    }

    fn reject(&mut self, topic: &str, why: &str) {
        self.invalid += 1;
        (self.out)(json!({"kind": "invalid", "topic": topic, "problem": why}));
    }

    /// Prints the minutes that are over: older than the newest minute seen of the same camera
    /// (all of them with `all`).
    fn flush_minutes(&mut self, all: bool) {
        let mut newest: HashMap<(String, String), String> = HashMap::new();
        for (node, camera, minute) in self.minutes.keys() {
            let e = newest.entry((node.clone(), camera.clone())).or_default();
            if minute > e {
                *e = minute.clone();
            }
        }
        let done: Vec<_> = self
            .minutes
            .keys()
            .filter(|(n, c, m)| all || newest[&(n.clone(), c.clone())] > *m)
            .cloned()
            .collect();
        for key in done {
            if let Some(m) = self.minutes.remove(&key) {
                (self.out)(m.line(&key.0, &key.1, &key.2));
            }
        }
    }

    fn summary(&mut self) -> Value {
        self.flush_minutes(true);
        let nodes: BTreeMap<&String, Value> = self
            .seq
            .iter()
            .map(|(node, s)| {
                let (first, last) = (s.seen.first().copied(), s.seen.last().copied());
                let span = match (first, last) {
                    (Some(a), Some(b)) => b - a + 1,
                    _ => 0,
                };
                let value = json!({
                    "first_seq": first, "last_seq": last, "distinct": s.seen.len(),
                    "duplicates": s.duplicates, "gaps": span - s.seen.len() as u64,
                });
                (node, value)
            })
            .collect();
        json!({"kind": "summary", "received": self.received, "invalid": self.invalid, "nodes": nodes})
    }
}

/// Consumes until `stop` completes, then leaves (DISCONNECT) and takes what was already on its
/// way; every line goes to `out`, the `summary` last (also returned). Fails when the broker
/// refuses the connection's subscriptions (an ACL, a broker without shared subscriptions).
pub async fn run(args: &Args, out: Sink, stop: impl Future<Output = ()>) -> anyhow::Result<Value> {
    let mut consumer = Consumer::new(args, out)?;
    let id = args
        .client_id
        .clone()
        .unwrap_or_else(|| format!("affectd-consumer-{}", std::process::id()));
    let mut options = MqttOptions::new(id, &args.host, args.port);
    options
        .set_keep_alive(Duration::from_secs(15))
        .set_clean_start(false)
        .set_session_expiry_interval(Some(args.session_expiry_s));
    if let Some(user) = &args.username {
        let password = match &args.password_file {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
            None => String::new(),
        };
        options.set_credentials(user, password);
    }
    let (client, mut events) = AsyncClient::new(options, 256);
    let prefix = &args.prefix;
    let topics = [
        format!("$share/{}/{prefix}/+/+/person/+", args.group),
        format!("$share/{}/{prefix}/+/+/tracks", args.group),
    ];
    tokio::pin!(stop);
    let mut granted = 0;
    loop {
        let event = tokio::select! {
            e = events.poll() => e,
            () = &mut stop => break,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                // Subscribed again on every connection: a broker that lost the session
                // (restarted without persistence) still gets the subscriptions.
                granted = 0;
                for t in &topics {
                    client.subscribe(t.clone(), QoS::AtLeastOnce).await?;
                }
                eprintln!(
                    "consumer: connected to {}:{}, group {}",
                    args.host, args.port, args.group
                );
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if let Some(code) = ack
                    .return_codes
                    .iter()
                    .find(|c| !matches!(c, SubscribeReasonCode::Success(_)))
                {
                    anyhow::bail!("the broker refused a subscription: {code:?}");
                }
                granted += 1;
                if granted == topics.len() {
                    (consumer.out)(
                        json!({"kind": "subscribed", "group": args.group, "filters": topics}),
                    );
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let topic = String::from_utf8_lossy(&p.topic).into_owned();
                consumer.take(&topic, &p.payload);
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("consumer: {e}; reconnecting in 1 s");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = &mut stop => break,
                }
            }
        }
    }
    // Leave: DISCONNECT, then take what arrived before the broker closed the connection. The
    // client acknowledges a message as it reads it, before handing it over, so those are
    // messages the broker will not send to anyone again.
    if client.disconnect().await.is_ok() {
        let drain = async {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let topic = String::from_utf8_lossy(&p.topic).into_owned();
                        consumer.take(&topic, &p.payload);
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Ok(_) => {}
                    // Closed (or never connected): polling again would reconnect.
                    Err(_) => break,
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
    }
    let summary = consumer.summary();
    (consumer.out)(summary.clone());
    Ok(summary)
}

/// SIGINT, SIGTERM or the deadline.
async fn stopped(deadline: Option<Instant>) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    let wait = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        () = wait => {}
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let deadline = args
        .seconds
        .map(|s| Instant::now() + Duration::from_secs_f64(s));
    let out: Sink = Box::new(|line| println!("{line}"));
    run(&args, out, stopped(deadline)).await?;
    Ok(())
}
