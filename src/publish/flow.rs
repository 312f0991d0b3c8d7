//! Flow control: what is handed to rumqttc, and when.
//!
//! `Publisher::publish*` puts a message in the [`Outbox`] and, while connected, hands messages
//! to rumqttc with `try_publish`, at most `mqtt.max_inflight` not yet acknowledged. The
//! event-loop task counts acknowledgements, which opens the window again. When the connection
//! breaks, every message rumqttc still held (sent but unacknowledged, or not yet sent) is taken
//! back into the outbox and sent again after the reconnect (QoS 1 means at least once: a
//! message whose PUBACK was lost is sent twice). Nothing is handed over while disconnected, so
//! results published during an outage wait in the outbox, bounded by `outbox_capacity`
//! (oldest dropped and counted), and go out after the reconnect.

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rumqttc::{AsyncClient, ConnectionError, EventLoop, QoS, Request};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::outbox::{Message, Outbox};
use super::publisher::{MAX_PACKET_BYTES, PublishError, Stats};
use super::topics::{Topics, topic_problem};

/// Repeated warnings (outbox drops, connection errors) are logged at most this often.
pub(super) const LOG_EVERY: Duration = Duration::from_secs(30);

/// What the [`Publisher`](super::Publisher) handles and the event-loop task share.
pub(super) struct Shared {
    pub(super) client: AsyncClient,
    /// Messages handed to rumqttc and not yet acknowledged, at most (`mqtt.max_inflight`).
    pub(super) window: usize,
    pub(super) topics: Topics,
    pub(super) qos: QoS,
    pub(super) status_interval: Duration,
    pub(super) link: Mutex<Link>,
    pub(super) connected: watch::Sender<bool>,
    pub(super) ever_connected: watch::Sender<bool>,
    /// Bumped on every acknowledgement, connect and disconnect; shutdown waits on it.
    pub(super) progress: watch::Sender<()>,
    /// Stops the event-loop task: the token given to `start`, cancelled by its owner, by
    /// shutdown (once flushed or out of time), or when the last handle is gone.
    pub(super) stop: CancellationToken,
    /// Cancelled when shutdown begins or the event loop has stopped: status tasks stop
    /// publishing.
    pub(super) closing: CancellationToken,
    pub(super) task: Mutex<Option<JoinHandle<()>>>,
}

pub(super) struct Link {
    pub(super) outbox: Outbox,
    pub(super) connected: bool,
    pub(super) closing: bool,
    /// Handed to rumqttc, not yet acknowledged or taken back.
    pub(super) in_flight: usize,
    /// The event loop wrote our DISCONNECT.
    pub(super) disconnect_sent: bool,
    pub(super) last_error: Option<String>,
    /// When a drop was last logged.
    drop_logged: Option<Instant>,
    pub(super) stats: Stats,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Link {
    /// Nothing handed over yet; `outbox` holds what goes first.
    pub(super) fn new(outbox: Outbox) -> Link {
        Link {
            outbox,
            connected: false,
            closing: false,
            in_flight: 0,
            disconnect_sent: false,
            last_error: None,
            drop_logged: None,
            stats: Stats::default(),
        }
    }

    /// Logs outbox overflow, at most once per [`LOG_EVERY`].
    pub(super) fn dropped_one(&mut self) {
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
    pub(super) fn admit(&mut self, topic: &str, payload_len: usize) -> Result<(), PublishError> {
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
    pub(super) fn pump(&self, link: &mut Link) {
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

    pub(super) fn acknowledged(&self) {
        let mut link = self.link.lock();
        link.in_flight = link.in_flight.saturating_sub(1);
        link.stats.acked += 1;
        self.pump(&mut link);
        drop(link);
        self.progress.send_replace(());
    }

    pub(super) fn on_connect(&self) {
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
    pub(super) fn on_connection_error(&self, eventloop: &mut EventLoop, error: &ConnectionError) {
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

    /// Our DISCONNECT was written during shutdown: the connection is closed. False when
    /// shutdown has not begun (the write is then none of ours).
    pub(super) fn on_disconnect_sent(&self) -> bool {
        let mut link = self.link.lock();
        if !link.closing {
            return false;
        }
        link.disconnect_sent = true;
        link.connected = false;
        drop(link);
        self.connected.send_replace(false);
        true
    }

    /// The event loop ended: nothing is handed over any more, later `publish*` calls are
    /// refused and status tasks stop.
    pub(super) fn on_stopped(&self) {
        let mut link = self.link.lock();
        link.connected = false;
        link.closing = true;
        drop(link);
        self.closing.cancel();
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
