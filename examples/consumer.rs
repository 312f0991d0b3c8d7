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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(about = "Consume affectd results in an MQTT v5 consumer group")]
struct Args {
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
    /// Seconds the broker keeps this consumer's session (and queues for it) while it is away.
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

struct Consumer {
    person: jsonschema::Validator,
    track: jsonschema::Validator,
    seq: BTreeMap<String, NodeSeq>,
    minutes: BTreeMap<(String, String, String), Minute>,
    received: u64,
    invalid: u64,
    emit_messages: bool,
}

impl Consumer {
    fn new(args: &Args) -> anyhow::Result<Self> {
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
            println!(
                "{}",
                json!({"kind": "message", "node": node, "seq": seq, "topic": topic, "duplicate": duplicate})
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
        println!(
            "{}",
            json!({"kind": "invalid", "topic": topic, "problem": why})
        );
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
                println!("{}", m.line(&key.0, &key.1, &key.2));
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

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut consumer = Consumer::new(&args)?;
    let id = args
        .client_id
        .clone()
        .unwrap_or_else(|| format!("affectd-consumer-{}", std::process::id()));
    let mut options = MqttOptions::new(id, &args.host, args.port);
    options
        .set_keep_alive(Duration::from_secs(15))
        .set_clean_start(false)
        .set_session_expiry_interval(Some(args.session_expiry_s));
    let (client, mut events) = AsyncClient::new(options, 256);
    let prefix = &args.prefix;
    let topics = [
        format!("$share/{}/{prefix}/+/+/person/+", args.group),
        format!("$share/{}/{prefix}/+/+/tracks", args.group),
    ];
    let deadline = args
        .seconds
        .map(|s| Instant::now() + Duration::from_secs_f64(s));
    loop {
        let wait = deadline.map_or(Duration::from_secs(3600), |d| {
            d.saturating_duration_since(Instant::now())
        });
        let event = tokio::select! {
            e = events.poll() => e,
            () = tokio::time::sleep(wait) => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                // Subscribed again on every connection: a broker that lost the session
                // (restarted without persistence) still gets the subscriptions.
                for t in &topics {
                    client.subscribe(t.clone(), QoS::AtLeastOnce).await?;
                }
                eprintln!(
                    "consumer: connected to {}:{}, group {}",
                    args.host, args.port, args.group
                );
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let topic = String::from_utf8_lossy(&p.topic).into_owned();
                consumer.take(&topic, &p.payload);
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("consumer: {e}; reconnecting in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    println!("{}", consumer.summary());
    let _ = client.disconnect().await;
    Ok(())
}
