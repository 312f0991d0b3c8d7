//! The MQTT connection: one rumqttc client, one event-loop task polled forever, and the
//! [`Publisher`] handle that the pipeline uses to send without ever waiting.
//!
//! Flow: `Publisher::publish*` puts a message in the [`Outbox`] and, while connected, hands
//! messages to rumqttc with `try_publish`, at most `mqtt.max_inflight` not yet acknowledged. The
//! event-loop task counts acknowledgements, which opens the window again. When the connection
//! breaks, every message rumqttc still held (sent but unacknowledged, or not yet sent) is taken
//! back into the outbox and sent again after the reconnect (QoS 1 means at least once: a
//! message whose PUBACK was lost is sent twice). Nothing is handed over while disconnected, so
//! results published during an outage wait in the outbox, bounded by `outbox_capacity`
//! (oldest dropped and counted), and go out after the reconnect.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, LastWill, MqttOptions,
    Outgoing, Packet, QoS, Request, Transport,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::outbox::{Message, Outbox};
use super::topics::{Topics, topic_problem};
use super::{MqttConfig, tls};
use crate::config::{ConfigError, Secret};

/// Largest MQTT packet sent or accepted; larger publishes are refused by `publish`.
pub const MAX_PACKET_BYTES: usize = 256 * 1024;
/// First delay after a failed connect; doubled per failure up to `reconnect_max_s`.
const BACKOFF_START: Duration = Duration::from_millis(100);
/// A connection that lasted this long resets the backoff when it breaks.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Repeated connection errors are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(30);

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
}

struct Shared {
    client: AsyncClient,
    /// Messages handed to rumqttc and not yet acknowledged, at most (`mqtt.max_inflight`).
    window: usize,
    topics: Topics,
    qos: QoS,
    status_interval: Duration,
    link: Mutex<Link>,
    connected: watch::Sender<bool>,
    ever_connected: watch::Sender<bool>,
    /// Bumped on every acknowledgement, connect and disconnect; shutdown waits on it.
    progress: watch::Sender<()>,
    /// Stops the event-loop task (after shutdown, or when the last handle is gone).
    stop: CancellationToken,
    /// Cancelled when shutdown begins: status tasks stop publishing.
    closing: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

struct Link {
    outbox: Outbox,
    connected: bool,
    closing: bool,
    /// Handed to rumqttc, not yet acknowledged or taken back.
    in_flight: usize,
    /// The event loop wrote our DISCONNECT.
    disconnect_sent: bool,
    last_error: Option<String>,
    /// When a drop was last logged.
    drop_logged: Option<Instant>,
    stats: Stats,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Connects to the broker described by `config` as node `node` and starts the event-loop task
/// on the current tokio runtime (call it from within one). Returns at once: connecting happens in the background (see
/// [`Publisher::connected`]). The node's status is `online` (retained) from the first CONNACK;
/// the broker publishes the last will `offline` if the connection dies.
pub fn start(config: &MqttConfig, node: &str) -> Result<Publisher, Error> {
    config.validate("mqtt")?;
    crate::config::validate_id("node.id", node)?;
    let topics = Topics::new(&config.topic_prefix, node);
    let will = LastWill::new(topics.node_status(), "offline", QoS::AtLeastOnce, true);
    let options = mqtt_options(config, config.client_id_for(node), Some(will))?;
    let window = usize::from(config.max_inflight);
    let (client, eventloop) = AsyncClient::new(options, window + 8);
    let mut outbox = Outbox::new(config.outbox_capacity, topics.node_status());
    outbox.push_state(topics.node_status(), b"online".to_vec());
    let shared = Arc::new(Shared {
        client,
        window,
        qos: qos(config.qos),
        status_interval: Duration::from_secs_f64(config.status_interval_s),
        link: Mutex::new(Link {
            outbox,
            connected: false,
            closing: false,
            in_flight: 0,
            disconnect_sent: false,
            last_error: None,
            drop_logged: None,
            stats: Stats::default(),
        }),
        connected: watch::Sender::new(false),
        ever_connected: watch::Sender::new(false),
        progress: watch::Sender::new(()),
        stop: CancellationToken::new(),
        closing: CancellationToken::new(),
        task: Mutex::new(None),
        topics,
    });
    let reconnect_max = Duration::from_secs_f64(config.reconnect_max_s);
    let task = tokio::spawn(run(
        Arc::downgrade(&shared),
        shared.stop.clone(),
        eventloop,
        reconnect_max,
        format!("{}:{}", config.host, config.port),
    ));
    *shared.task.lock() = Some(task);
    tracing::info!(
        broker = %format_args!("{}:{}", config.host, config.port),
        tls = config.tls.is_some(),
        client_id = %config.client_id_for(node),
        "MQTT publisher started"
    );
    Ok(Publisher { shared })
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
        let message = Message {
            topic: topic.into(),
            payload: payload.into(),
            qos: self.shared.qos,
            retain: false,
        };
        let mut link = self.shared.link.lock();
        link.admit(&message.topic, message.payload.len())?;
        if link.outbox.push_result(message) {
            link.dropped_one();
        }
        link.stats.accepted += 1;
        self.shared.pump(&mut link);
        Ok(())
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
        let link = self.shared.link.lock();
        Stats {
            queued: link.outbox.len(),
            in_flight: link.in_flight,
            dropped: link.outbox.dropped_results,
            ..link.stats
        }
    }

    /// Seconds between periodic camera status messages (`mqtt.status_interval_s`).
    pub fn status_interval(&self) -> Duration {
        self.shared.status_interval
    }

    /// Resolves when shutdown has begun; background publishers stop then.
    pub async fn closing(&self) {
        self.shared.closing.cancelled().await
    }

    /// Publishes `offline` (retained), waits until the broker acknowledged everything handed
    /// over, then sends DISCONNECT and ends the event loop, all within `timeout`. Later
    /// `publish*` calls are refused. If the broker is unreachable the time runs out and the
    /// connection is dropped; the broker's copy is then the last will, `offline` as well.
    /// A second call returns at once with what is left.
    pub async fn shutdown(&self, timeout: Duration) -> ShutdownReport {
        let start = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        let shared = &self.shared;
        {
            let mut link = shared.link.lock();
            if !link.closing {
                link.closing = true;
                link.outbox
                    .push_state(shared.topics.node_status(), b"offline".to_vec());
                shared.pump(&mut link);
            }
        }
        shared.closing.cancel();

        let mut progress = shared.progress.subscribe();
        let flushed = loop {
            progress.mark_unchanged();
            {
                let link = shared.link.lock();
                if link.connected && link.outbox.is_empty() && link.in_flight == 0 {
                    break true;
                }
            }
            if tokio::time::timeout_at(deadline, progress.changed())
                .await
                .is_err()
            {
                break false;
            }
        };

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

impl Link {
    /// Logs outbox overflow, at most once per [`LOG_EVERY`].
    fn dropped_one(&mut self) {
        if self.drop_logged.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            self.drop_logged = Some(Instant::now());
            tracing::warn!(
                dropped = self.outbox.dropped_results,
                connected = self.connected,
                "MQTT outbox full; dropping the oldest results"
            );
        }
    }

    /// Checks a message before it is queued; counts refusals.
    fn admit(&mut self, topic: &str, payload_len: usize) -> Result<(), PublishError> {
        let refused = if self.closing {
            Some(PublishError::ShutDown)
        } else if let Some(problem) = topic_problem(topic) {
            Some(PublishError::BadTopic {
                topic: topic.to_owned(),
                problem,
            })
        } else if topic.len() + payload_len + 16 > MAX_PACKET_BYTES {
            Some(PublishError::TooLarge { bytes: payload_len })
        } else {
            None
        };
        match refused {
            Some(e) => {
                self.stats.rejected += 1;
                Err(e)
            }
            None => Ok(()),
        }
    }
}

impl Shared {
    /// Hands queued messages to rumqttc while connected and the window has room.
    fn pump(&self, link: &mut Link) {
        while link.connected && link.in_flight < self.window {
            let Some(message) = link.outbox.pop() else {
                break;
            };
            let Message {
                topic,
                payload,
                qos,
                retain,
            } = message;
            match self.client.try_publish(topic, qos, retain, payload) {
                Ok(()) => {
                    link.in_flight += 1;
                    link.stats.sent += 1;
                }
                Err(e) => {
                    // Only possible if the event loop is gone or its channel is full.
                    if let Some(message) = message_of(request_of(e)) {
                        link.outbox.unpop(message);
                    }
                    break;
                }
            }
        }
    }

    fn acknowledged(&self) {
        let mut link = self.link.lock();
        link.in_flight = link.in_flight.saturating_sub(1);
        link.stats.acked += 1;
        self.pump(&mut link);
        drop(link);
        self.progress.send_replace(());
    }

    fn on_connect(&self) {
        let mut link = self.link.lock();
        link.connected = true;
        link.last_error = None;
        link.stats.connects += 1;
        link.outbox.on_connect();
        self.pump(&mut link);
        drop(link);
        self.connected.send_replace(true);
        self.ever_connected.send_replace(true);
        self.progress.send_replace(());
    }

    /// The connection broke or could not be made: take back what rumqttc still holds.
    fn on_connection_error(&self, eventloop: &mut EventLoop, error: &ConnectionError) {
        let mut link = self.link.lock();
        link.connected = false;
        // Under the lock nobody hands over more; drain rumqttc's channel and unacked state.
        eventloop.clean();
        let mut held = Vec::new();
        let mut taken_back = 0;
        for request in eventloop.pending.drain(..) {
            match request {
                Request::Publish(_) => {
                    held.extend(message_of(request));
                    taken_back += 1;
                }
                // QoS 2 past PUBREC: the broker has the message; the new session cannot finish
                // the handshake, so count it as done.
                Request::PubRel(_) => {
                    taken_back += 1;
                    link.stats.acked += 1;
                }
                _ => {}
            }
        }
        link.in_flight = link.in_flight.saturating_sub(taken_back);
        let requeued = link.outbox.requeue(held);
        link.stats.requeued += requeued as u64;
        link.stats.connection_errors += 1;
        link.last_error = Some(error.to_string());
        drop(link);
        self.connected.send_replace(false);
        self.progress.send_replace(());
    }
}

fn message_of(request: Request) -> Option<Message> {
    match request {
        Request::Publish(p) => Some(Message {
            topic: p.topic,
            payload: p.payload.to_vec(),
            qos: p.qos,
            retain: p.retain,
        }),
        _ => None,
    }
}

/// The request a failed `try_publish` hands back.
fn request_of(error: rumqttc::ClientError) -> Request {
    match error {
        rumqttc::ClientError::Request(r) | rumqttc::ClientError::TryRequest(r) => r,
    }
}

/// The event-loop task: polls forever, reconnecting with a capped exponential backoff, until
/// shutdown sent DISCONNECT or `stop` is cancelled.
async fn run(
    shared: std::sync::Weak<Shared>,
    stop: CancellationToken,
    mut eventloop: EventLoop,
    reconnect_max: Duration,
    broker: String,
) {
    let mut backoff = Backoff::new(BACKOFF_START.min(reconnect_max), reconnect_max);
    let mut errors = ErrorLog {
        broker,
        ..ErrorLog::default()
    };
    let mut connected_at: Option<Instant> = None;
    loop {
        let polled = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            polled = eventloop.poll() => polled,
        };
        let Some(shared) = shared.upgrade() else {
            break;
        };
        match polled {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                errors.connected();
                connected_at = Some(Instant::now());
                shared.on_connect();
            }
            Ok(Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_))) => shared.acknowledged(),
            // QoS 0 is done once written.
            Ok(Event::Outgoing(Outgoing::Publish(0))) => shared.acknowledged(),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                let mut link = shared.link.lock();
                if link.closing {
                    link.disconnect_sent = true;
                    link.connected = false;
                    drop(link);
                    shared.connected.send_replace(false);
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                shared.on_connection_error(&mut eventloop, &e);
                drop(shared);
                if connected_at
                    .take()
                    .is_some_and(|t| t.elapsed() >= STABLE_AFTER)
                {
                    backoff.reset();
                }
                let delay = backoff.next();
                errors.failed(&e, delay);
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    if let Some(shared) = shared.upgrade() {
        shared.link.lock().connected = false;
        shared.connected.send_replace(false);
        shared.progress.send_replace(());
    }
}

/// Capped exponential backoff.
#[derive(Debug)]
struct Backoff {
    start: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(start: Duration, max: Duration) -> Self {
        Self {
            start,
            max,
            next: start,
        }
    }

    /// The next delay: the doubling step, shortened by up to a quarter at random so that many
    /// clients of a restarted broker do not all come back at the same instant.
    fn next(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay.mul_f64(1.0 - 0.25 * random_unit())
    }

    fn reset(&mut self) {
        self.next = self.start;
    }
}

/// A number in [0, 1) from the standard library's per-process random hash keys.
fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Rate-limits connection error logs: the first failure in a row is logged, then at most one
/// line per [`LOG_EVERY`] with the count; the rest go to DEBUG.
#[derive(Debug, Default)]
struct ErrorLog {
    /// `host:port`, for the operator reading the log.
    broker: String,
    failures: u64,
    last_logged: Option<Instant>,
}

impl ErrorLog {
    fn failed(&mut self, error: &ConnectionError, retry_in: Duration) {
        self.failures += 1;
        let due = self.last_logged.is_none_or(|t| t.elapsed() >= LOG_EVERY);
        let retry_ms = retry_in.as_millis() as u64;
        if !due {
            tracing::debug!(broker = %self.broker, %error, failures = self.failures, retry_ms, "MQTT connection failed");
            return;
        }
        self.last_logged = Some(Instant::now());
        if operator_must_act(error) {
            tracing::error!(
                broker = %self.broker,
                %error,
                failures = self.failures,
                retry_ms,
                "MQTT broker refuses this client; check credentials and TLS settings"
            );
        } else {
            tracing::warn!(broker = %self.broker, %error, failures = self.failures, retry_ms, "MQTT connection failed; retrying");
        }
    }

    fn connected(&mut self) {
        if self.failures > 0 {
            tracing::info!(broker = %self.broker, failures = self.failures, "MQTT connected again");
        } else {
            tracing::info!(broker = %self.broker, "MQTT connected");
        }
        self.failures = 0;
        self.last_logged = None;
    }
}

/// Errors that retrying will not fix by itself.
fn operator_must_act(error: &ConnectionError) -> bool {
    matches!(
        error,
        ConnectionError::ConnectionRefused(
            ConnectReturnCode::BadUserNamePassword
                | ConnectReturnCode::NotAuthorized
                | ConnectReturnCode::BadClientId
                | ConnectReturnCode::RefusedProtocolVersion
        ) | ConnectionError::Tls(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        for step in [100, 200, 400, 500, 500] {
            let d = b.next().as_millis();
            assert!(step * 3 / 4 <= d && d <= step, "{d} for step {step}");
        }
        b.reset();
        assert!(b.next().as_millis() <= 100);
    }

    #[test]
    fn qos_levels_map() {
        assert_eq!(qos(0), QoS::AtMostOnce);
        assert_eq!(qos(1), QoS::AtLeastOnce);
        assert_eq!(qos(2), QoS::ExactlyOnce);
    }

    #[test]
    fn auth_refusals_need_an_operator() {
        assert!(operator_must_act(&ConnectionError::ConnectionRefused(
            ConnectReturnCode::NotAuthorized
        )));
        assert!(!operator_must_act(&ConnectionError::NetworkTimeout));
    }

    #[tokio::test]
    async fn start_refuses_bad_config_naming_the_key() {
        let config = MqttConfig {
            username: Some("u".into()),
            password_file: Some("/nonexistent/affectd-password".into()),
            ..MqttConfig::default()
        };
        let e = start(&config, "unit").unwrap_err().to_string();
        assert!(e.starts_with("mqtt.password_file: cannot read"), "{e}");
        let e = start(&MqttConfig::default(), "a/b")
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
        let publisher = start(&config, "unit").unwrap();
        for i in 0..25 {
            publisher.publish("affectd/unit/r", format!("{i}")).unwrap();
        }
        let stats = publisher.stats();
        assert_eq!(stats.accepted, 25);
        assert_eq!(stats.dropped, 15);
        // `online` plus 10 results.
        assert_eq!(stats.queued, 11);
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
}
