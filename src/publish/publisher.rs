//! The MQTT connection: one rumqttc client, one event-loop task polled forever
//! (`event_loop.rs`), and the [`Publisher`] handle that the pipeline uses to send without ever
//! waiting (`flow.rs` says what is handed to the client and when; `outbox.rs` what waits).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rumqttc::{AsyncClient, LastWill, MqttOptions, QoS, Transport};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::config::OutboxMode;
use super::event_loop;
use super::flow::{Link, Shared};
use super::inbox::Incoming;
use super::outbox::{Message, Outbox};
use super::spool::{SeqFile, Spool, SpoolCounters};
use super::topics::Topics;
use super::{MqttConfig, tls};
use crate::config::{ConfigError, Secret};

/// Largest MQTT packet sent or accepted; larger publishes are refused by `publish`.
pub const MAX_PACKET_BYTES: usize = 256 * 1024;

/// Starting the publisher failed: always a configuration problem naming its key.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Why a message was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("the publisher is shutting down")]
    ShutDown,
    #[error("topic \"{topic}\" {problem}")]
    BadTopic {
        topic: String,
        problem: &'static str,
    },
    #[error("message of {bytes} bytes exceeds the {MAX_PACKET_BYTES}-byte packet limit")]
    TooLarge { bytes: usize },
    #[error("too many distinct retained-state topics; \"{topic}\" is not remembered")]
    TooManyStateTopics { topic: String },
}

/// Counters since start. `queued + in_flight` is what is not yet acknowledged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages waiting in the outbox now.
    pub queued: usize,
    /// Messages handed to the client and not yet acknowledged now.
    pub in_flight: usize,
    /// Messages accepted by `publish` / `publish_state`.
    pub accepted: u64,
    /// Hand-overs to the client (a message re-sent after a reconnect counts again).
    pub sent: u64,
    /// Acknowledged by the broker (QoS 0: written to the socket).
    pub acked: u64,
    /// Results dropped, oldest first, because the outbox was full.
    pub dropped: u64,
    /// Refused by `publish*` (shut down, bad topic, too large, too many state topics).
    pub rejected: u64,
    /// Taken back from a broken connection to be sent again.
    pub requeued: u64,
    /// Successful connects (CONNACK accepted).
    pub connects: u64,
    /// Failed connects and broken connections.
    pub connection_errors: u64,
    /// The `seq` the next result gets.
    pub next_seq: u64,
    /// Disk outbox: spool commits (each one fsync), their total and longest duration, the
    /// operations they carried (results put, acknowledged, dropped), and failed commits.
    pub spool_commits: u64,
    pub spool_commit_micros: u64,
    pub spool_commit_max_micros: u64,
    pub spool_ops: u64,
    pub spool_errors: u64,
}

/// How [`Publisher::shutdown`] went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Time from the call to its return.
    pub elapsed: Duration,
    /// Every message, `offline` included, was acknowledged by the broker.
    pub flushed: bool,
    /// Messages never handed to the broker (left in the outbox).
    pub unsent: usize,
    /// Messages handed over but not acknowledged.
    pub unacked: usize,
    /// An MQTT DISCONNECT was sent and the event loop ended by itself.
    pub disconnected: bool,
}

impl fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} in {} ms ({} unsent, {} unacknowledged, {})",
            if self.flushed {
                "flushed"
            } else {
                "not flushed"
            },
            self.elapsed.as_millis(),
            self.unsent,
            self.unacked,
            if self.disconnected {
                "disconnected cleanly"
            } else {
                "connection dropped"
            }
        )
    }
}

/// A cheap, clonable handle to the MQTT connection. Every method is non-blocking except
/// [`Publisher::shutdown`]. Dropping every handle without `shutdown` ends the event loop at
/// once: queued messages are lost and the broker publishes the last will (`offline`).
#[derive(Clone)]
pub struct Publisher {
    shared: Arc<Shared>,
    /// The event-loop task's heartbeat (`[service]` watches it as stage `mqtt`).
    beat: crate::health::Beat,
}

/// Connects to the broker described by `config` as node `node` and starts the event-loop task
/// on the current tokio runtime (call it from within one). Returns at once: connecting happens
/// in the background (see [`Publisher::connected`]). The node's status is `online` (retained)
/// from the first CONNACK; the broker publishes the last will `offline` if the connection dies.
///
/// [`Publisher::shutdown`] is the orderly end (flush, `offline`, DISCONNECT) and cancels `stop`
/// when done. Cancelling `stop` before that ends the event loop at once, like dropping every
/// handle: what is queued is lost, the broker publishes the last will, and later `publish*`
/// calls are refused.
pub fn start(config: &MqttConfig, node: &str, stop: CancellationToken) -> Result<Publisher, Error> {
    config.validate("mqtt")?;
    crate::config::validate_id("node.id", node)?;
    let topics = Topics::new(&config.topic_prefix, node);
    let will = LastWill::new(topics.node_status(), "offline", QoS::AtLeastOnce, true);
    let options = mqtt_options(config, config.client_id_for(node), Some(will))?;
    let window = usize::from(config.max_inflight);
    let (client, eventloop) = AsyncClient::new(options, window + 8);
    let folder = config.outbox_folder("mqtt")?;
    let dir_error = |e: &dyn fmt::Display| ConfigError::invalid("mqtt.outbox_dir", e.to_string());
    let (seq_file, mut next_seq) = match &folder {
        Some(dir) => {
            let (file, next) = SeqFile::open(dir).map_err(|e| {
                dir_error(&format_args!(
                    "{}: cannot use the folder: {e}",
                    dir.display()
                ))
            })?;
            (Some(file), next)
        }
        None => (None, 1),
    };
    let spool = match (&folder, config.outbox) {
        (Some(dir), OutboxMode::Disk) => Some(Spool::open(dir).map_err(|e| dir_error(&e))?),
        _ => None,
    };
    let mut status = OutboxStatus {
        mode: config.outbox,
        capacity: config.outbox_capacity,
        dropped: 0,
        dropped_total: 0,
        quarantined: None,
        since: crate::types::rfc3339(std::time::SystemTime::now()),
    };
    if let Some(spool) = &spool {
        // The spool's counter is exact; the seq file only carries it over a lost spool.
        next_seq = if spool.quarantined.is_some() || spool.next_seq == 1 {
            spool.next_seq.max(next_seq)
        } else {
            spool.next_seq
        };
        status.dropped_total = spool.dropped_total;
        status.quarantined = spool.quarantined.as_ref().map(|p| p.display().to_string());
    }
    let mut outbox =
        Outbox::new(config.outbox_capacity, topics.node_status()).with_seq(next_seq, seq_file);
    outbox.push_state(topics.node_status(), b"online".to_vec());
    outbox.push_state(topics.outbox(), status.json());
    let counters = Arc::new(SpoolCounters::default());
    let shared = Arc::new(Shared {
        client,
        window,
        qos: qos(config.qos),
        status_interval: Duration::from_secs_f64(config.status_interval_s),
        link: Mutex::new(Link::new(outbox)),
        connected: watch::Sender::new(false),
        ever_connected: watch::Sender::new(false),
        progress: watch::Sender::new(()),
        stop,
        closing: CancellationToken::new(),
        task: Mutex::new(None),
        topics,
    });
    if let Some(mut spool) = spool {
        let replay = std::mem::take(&mut spool.pending);
        let replayed = replay.len();
        let weak = Arc::downgrade(&shared);
        let writer = spool
            .spawn_writer(counters, move |upto| {
                if let Some(shared) = weak.upgrade() {
                    on_spool_commit(&shared, upto);
                }
            })
            .map_err(|e| dir_error(&format_args!("cannot start the spool writer: {e}")))?;
        shared
            .link
            .lock()
            .outbox
            .attach_spool(writer, replay, qos(config.qos));
        tracing::info!(
            dir = %folder.as_deref().unwrap_or(std::path::Path::new("")).display(),
            replayed,
            next_seq,
            "MQTT outbox spool opened"
        );
    }
    spawn_outbox_status(&shared, status);
    let reconnect_max = Duration::from_secs_f64(config.reconnect_max_s);
    let beat = crate::health::Beat::new();
    let task = tokio::spawn(event_loop::run(
        Arc::downgrade(&shared),
        shared.stop.clone(),
        eventloop,
        reconnect_max,
        format!("{}:{}", config.host, config.port),
        beat.clone(),
    ));
    *shared.task.lock() = Some(task);
    tracing::info!(
        broker = %format_args!("{}:{}", config.host, config.port),
        tls = config.tls.is_some(),
        client_id = %config.client_id_for(node),
        "MQTT publisher started"
    );
    Ok(Publisher { shared, beat })
}

/// A spool commit returned: the results it holds may go to the broker.
fn on_spool_commit(shared: &Shared, upto: u64) {
    let mut link = shared.link.lock();
    link.outbox.set_durable(upto);
    shared.pump(&mut link);
    drop(link);
    shared.progress.send_replace(());
}

/// `<prefix>/<node>/outbox`: retained JSON saying where results wait and how many were
/// dropped (outbox full, oldest first), so that subscribers can tell an outbox drop from the
/// other gaps in `seq`.
#[derive(Debug, Clone, serde::Serialize)]
struct OutboxStatus {
    mode: OutboxMode,
    capacity: usize,
    /// Dropped since this start.
    dropped: u64,
    /// Dropped over the spool's life (disk), since this start (memory).
    dropped_total: u64,
    /// Where an unreadable spool was moved at this start.
    quarantined: Option<String>,
    since: String,
}

impl OutboxStatus {
    fn json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Publishes [`OutboxStatus`] again whenever the drop count changed, at most once per
/// `status_interval_s`, until shutdown begins.
fn spawn_outbox_status(shared: &Arc<Shared>, mut status: OutboxStatus) {
    let weak = Arc::downgrade(shared);
    let closing = shared.closing.clone();
    let interval = shared.status_interval;
    let base = status.dropped_total;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = closing.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            let Some(shared) = weak.upgrade() else {
                return;
            };
            let mut link = shared.link.lock();
            let dropped = link.outbox.dropped_results;
            if dropped == status.dropped || link.closing {
                continue;
            }
            status.dropped = dropped;
            status.dropped_total = base + dropped;
            link.outbox
                .push_state(shared.topics.outbox(), status.json());
            shared.pump(&mut link);
        }
    });
}

/// Client options from the config: credentials read from `password_file`, TLS built from
/// `[mqtt.tls]`; `will` is the last will, if any.
pub(crate) fn mqtt_options(
    config: &MqttConfig,
    client_id: String,
    will: Option<LastWill>,
) -> Result<MqttOptions, Error> {
    let mut options = MqttOptions::new(client_id, &config.host, config.port);
    options
        .set_keep_alive(Duration::from_secs(config.keep_alive_s))
        .set_clean_session(true)
        // Our window equals rumqttc's: it never holds a request back nor reuses a packet id.
        .set_inflight(config.max_inflight)
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
    if let Some(will) = will {
        options.set_last_will(will);
    }
    if let Some(username) = &config.username {
        let password = match &config.password_file {
            Some(path) => Some(Secret::from_file("mqtt.password_file", path)?),
            None => None,
        };
        options.set_credentials(username, password.as_ref().map_or("", Secret::expose));
    }
    if let Some(tls_config) = &config.tls {
        let client_config = tls::client_config(tls_config, "mqtt.tls")?;
        options.set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(client_config),
        ));
    }
    Ok(options)
}

fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

impl Publisher {
    /// The event-loop task's heartbeat: it beats on every event and at least once a second
    /// while it waits (for the broker, or before a reconnect), for as long as the task runs.
    pub fn beat(&self) -> crate::health::Beat {
        self.beat.clone()
    }

    /// Topic names of this node.
    pub fn topics(&self) -> &Topics {
        &self.shared.topics
    }

    /// Queues a result message (QoS from `mqtt.qos`, not retained). Never waits: when the
    /// outbox is full the oldest queued result is dropped and counted in [`Stats::dropped`].
    pub fn publish(
        &self,
        topic: impl Into<String>,
        payload: impl Into<Vec<u8>>,
    ) -> Result<(), PublishError> {
        let payload = payload.into();
        self.publish_numbered(topic, |_| payload).map(|_| ())
    }

    /// Queues a result like [`Publisher::publish`], numbered: `payload(seq)` makes the payload
    /// for the result's `seq` (the per-node counter, monotonic across restarts where the state
    /// folder allows). Results are numbered in the order they are queued and sent in that
    /// order. Returns the `seq`.
    pub fn publish_numbered(
        &self,
        topic: impl Into<String>,
        payload: impl FnOnce(u64) -> Vec<u8>,
    ) -> Result<u64, PublishError> {
        let topic = topic.into();
        let mut link = self.shared.link.lock();
        let seq = link.outbox.next_seq();
        let payload = payload(seq);
        link.admit(&topic, payload.len())?;
        let taken = link.outbox.take_seq();
        debug_assert_eq!(taken, seq);
        let message = Message {
            topic,
            payload,
            qos: self.shared.qos,
            retain: false,
            seq: Some(seq),
        };
        if link.outbox.push_result(message) {
            link.dropped_one();
        }
        link.stats.accepted += 1;
        self.shared.pump(&mut link);
        Ok(seq)
    }

    /// Publishes the retained state of `topic` (QoS 1). Only the latest value per topic is
    /// kept; it is sent again after every reconnect, so the broker's retained copy survives a
    /// broker restart without persistence. Never waits and never drops the latest value.
    pub fn publish_state(
        &self,
        topic: impl Into<String>,
        payload: impl Into<Vec<u8>>,
    ) -> Result<(), PublishError> {
        let (topic, payload) = (topic.into(), payload.into());
        let mut link = self.shared.link.lock();
        link.admit(&topic, payload.len())?;
        if !link.outbox.push_state(topic.clone(), payload) {
            link.stats.rejected += 1;
            return Err(PublishError::TooManyStateTopics { topic });
        }
        link.stats.accepted += 1;
        self.shared.pump(&mut link);
        Ok(())
    }

    /// Subscribes to `filter` (QoS 0) now if connected and again after every reconnect (the
    /// session is clean); matching messages arrive on the returned channel, retained ones
    /// first. Dropping the receiver ends the subscription at the next reconnect.
    pub fn subscribe(&self, filter: impl Into<String>) -> tokio::sync::mpsc::Receiver<Incoming> {
        let mut link = self.shared.link.lock();
        let connected = link.connected;
        link.subscriptions
            .add(&self.shared.client, connected, filter.into())
    }

    /// Whether the client is connected now; changes as connections come and go.
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.shared.connected.subscribe()
    }

    /// Becomes true at the first successful connect and stays true (systemd READY waits on it).
    pub fn ever_connected(&self) -> watch::Receiver<bool> {
        self.shared.ever_connected.subscribe()
    }

    /// The last connection error, if the last connection attempt or connection failed.
    pub fn last_error(&self) -> Option<String> {
        self.shared.link.lock().last_error.clone()
    }

    pub fn stats(&self) -> Stats {
        use std::sync::atomic::Ordering::Relaxed;
        let link = self.shared.link.lock();
        let mut stats = Stats {
            queued: link.outbox.len(),
            in_flight: link.in_flight,
            dropped: link.outbox.dropped_results,
            next_seq: link.outbox.next_seq(),
            ..link.stats
        };
        if let Some(c) = link.outbox.spool_counters() {
            stats.spool_commits = c.commits.load(Relaxed);
            stats.spool_commit_micros = c.commit_micros.load(Relaxed);
            stats.spool_commit_max_micros = c.max_commit_micros.load(Relaxed);
            stats.spool_ops = c.ops.load(Relaxed);
            stats.spool_errors = c.errors.load(Relaxed);
        }
        stats
    }

    /// Seconds between periodic camera status messages (`mqtt.status_interval_s`).
    pub fn status_interval(&self) -> Duration {
        self.shared.status_interval
    }

    /// Whether everything handed over was acknowledged by `deadline` (false at once when the
    /// event loop is stopping).
    async fn flushed_by(&self, deadline: tokio::time::Instant) -> bool {
        let shared = &self.shared;
        let mut progress = shared.progress.subscribe();
        loop {
            progress.mark_unchanged();
            {
                let link = shared.link.lock();
                if link.connected && link.outbox.is_empty() && link.in_flight == 0 {
                    return true;
                }
            }
            // The event loop is stopping or gone: nothing more will be acknowledged.
            if shared.stop.is_cancelled() {
                return false;
            }
            if tokio::time::timeout_at(deadline, progress.changed())
                .await
                .is_err()
            {
                return false;
            }
        }
    }

    /// Resolves when shutdown has begun or the event loop has stopped; background publishers
    /// stop then.
    pub async fn closing(&self) {
        self.shared.closing.cancelled().await
    }

    /// Waits until the broker acknowledged the results handed over (up to three quarters of
    /// `timeout`), publishes `offline` (retained) after them, waits for that too, then sends
    /// DISCONNECT and ends the event loop, all within `timeout`; finally
    /// cancels the stop token. Later `publish*` calls are refused. If the broker is
    /// unreachable the time runs out and the connection is dropped; the broker's copy is then
    /// the last will, `offline` as well. A second call, or one after the stop token was
    /// cancelled, returns at once with what is left.
    pub async fn shutdown(&self, timeout: Duration) -> ShutdownReport {
        let start = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        let shared = &self.shared;
        let first = {
            let mut link = shared.link.lock();
            let first = !link.closing;
            link.closing = true;
            first
        };
        shared.closing.cancel();
        // Results first, then `offline`: a subscriber sees every last result of the node
        // before it goes offline. A quarter of the time is kept for `offline` itself, so a
        // backlog that cannot drain never keeps it (and the clean DISCONNECT, which cancels
        // the last will) from going out.
        if first {
            let results_by = deadline - timeout / 4;
            self.flushed_by(results_by).await;
            let mut link = shared.link.lock();
            link.outbox
                .push_state(shared.topics.node_status(), b"offline".to_vec());
            shared.pump(&mut link);
        }
        let flushed = self.flushed_by(deadline).await;

        let task = shared.task.lock().take();
        if let Some(mut task) = task {
            let connected = shared.link.lock().connected;
            if connected && shared.client.try_disconnect().is_ok() {
                // The event loop ends by itself once DISCONNECT is written.
                if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                    shared.stop.cancel();
                    let _ = task.await;
                }
            } else {
                shared.stop.cancel();
                let _ = task.await;
            }
        }
        shared.stop.cancel();

        // What was not acknowledged stays in the spool for the next start.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let writer = shared.link.lock().outbox.close();
        if let Some(mut writer) = writer {
            let wait = left.max(Duration::from_millis(200));
            let closed = tokio::task::spawn_blocking(move || writer.close(wait))
                .await
                .unwrap_or(false);
            if !closed {
                tracing::warn!("MQTT outbox spool did not finish its last commit in time");
            }
        }

        let link = shared.link.lock();
        let report = ShutdownReport {
            elapsed: start.elapsed(),
            flushed,
            unsent: link.outbox.len(),
            unacked: link.in_flight,
            disconnected: link.disconnect_sent,
        };
        tracing::info!(%report, "MQTT publisher stopped");
        report
    }
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("node", &self.shared.topics.base())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qos_levels_map() {
        assert_eq!(qos(0), QoS::AtMostOnce);
        assert_eq!(qos(1), QoS::AtLeastOnce);
        assert_eq!(qos(2), QoS::ExactlyOnce);
    }

    #[tokio::test]
    async fn start_refuses_bad_config_naming_the_key() {
        let config = MqttConfig {
            username: Some("u".into()),
            password_file: Some("/nonexistent/affectd-password".into()),
            ..MqttConfig::default()
        };
        let e = start(&config, "unit", CancellationToken::new())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("mqtt.password_file: cannot read"), "{e}");
        let e = start(&MqttConfig::default(), "a/b", CancellationToken::new())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("node.id: "), "{e}");
    }

    #[tokio::test]
    async fn publishing_without_a_broker_never_waits_and_counts_drops() {
        // Port 1 on loopback: nothing listens, connects fail at once.
        let config = MqttConfig {
            port: 1,
            outbox_capacity: 10,
            ..MqttConfig::default()
        };
        let publisher = start(&config, "unit", CancellationToken::new()).unwrap();
        for i in 0..25 {
            publisher.publish("affectd/unit/r", format!("{i}")).unwrap();
        }
        let stats = publisher.stats();
        assert_eq!(stats.accepted, 25);
        assert_eq!(stats.dropped, 15);
        // `online`, the outbox status and 10 results.
        assert_eq!(stats.queued, 12);
        assert_eq!(stats.next_seq, 26, "every result was numbered");
        assert_eq!(
            publisher.publish("a/+/b", "x"),
            Err(PublishError::BadTopic {
                topic: "a/+/b".into(),
                problem: "contains a wildcard ('+' or '#')"
            })
        );
        let report = publisher.shutdown(Duration::from_millis(200)).await;
        assert!(!report.flushed && !report.disconnected);
        assert_eq!(
            publisher.publish("affectd/unit/r", "late"),
            Err(PublishError::ShutDown)
        );
    }

    #[tokio::test]
    async fn cancelling_the_stop_token_ends_the_publisher_at_once() {
        let config = MqttConfig {
            port: 1,
            ..MqttConfig::default()
        };
        let stop = CancellationToken::new();
        let publisher = start(&config, "unit", stop.child_token()).unwrap();
        publisher.publish("affectd/unit/r", "queued").unwrap();
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), publisher.closing())
            .await
            .expect("status tasks are told to stop");
        assert_eq!(
            publisher.publish("affectd/unit/r", "late"),
            Err(PublishError::ShutDown)
        );
        let report = publisher.shutdown(Duration::from_secs(30)).await;
        assert!(report.elapsed < Duration::from_secs(10), "{report}");
        assert!(!report.flushed && !report.disconnected);
        // The result, `offline` (in place of `online`) and the outbox status.
        assert_eq!(report.unsent, 3, "{report}");
    }
}
