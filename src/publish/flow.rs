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
//!
//! Which message an acknowledgement is for: rumqttc numbers publishes (packet ids) in the
//! order they were handed over and reports each as `Outgoing::Publish(pkid)` in that order, so
//! a FIFO of what was handed over ([`Link::handed`]) pairs each with its packet id
//! ([`Link::sent`]); the PUBACK (QoS 1), PUBREC/PUBCOMP (QoS 2) or the write itself (QoS 0)
//! then says which message the broker has, and the outbox deletes it from the spool. What a
//! broken connection leaves unacknowledged is taken back from these copies, in hand-over order.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rumqttc::{AsyncClient, ConnectionError, EventLoop, QoS};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::inbox::Subscriptions;
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
    /// Handed to rumqttc, not yet numbered (`Outgoing::Publish` not yet seen), oldest first.
    handed: VecDeque<Message>,
    /// Numbered by rumqttc, not yet acknowledged: packet id -> (hand-over number, message,
    /// PUBREC received).
    sent: HashMap<u16, (u64, Message, bool)>,
    /// Hand-overs so far: orders [`Link::sent`] when a connection breaks.
    handovers: u64,
    /// The event loop wrote our DISCONNECT.
    pub(super) disconnect_sent: bool,
    pub(super) last_error: Option<String>,
    /// Topic filters subscribed to on every connect.
    pub(super) subscriptions: Subscriptions,
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
            handed: VecDeque::new(),
            sent: HashMap::new(),
            handovers: 0,
            disconnect_sent: false,
            last_error: None,
            subscriptions: Subscriptions::default(),
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
            let copy = message.clone();
            let Message {
                topic,
                payload,
                qos,
                retain,
                ..
            } = message;
            match self.client.try_publish(topic, qos, retain, payload) {
                Ok(()) => {
                    link.in_flight += 1;
                    link.stats.sent += 1;
                    link.handed.push_back(copy);
                }
                Err(_) => {
                    // Only possible if the event loop is gone or its channel is full.
                    link.outbox.unpop(copy);
                    break;
                }
            }
        }
    }

    /// rumqttc wrote (or is writing) the oldest message handed over, as packet `pkid`.
    pub(super) fn numbered(&self, pkid: u16) {
        let mut link = self.link.lock();
        let Some(message) = link.handed.pop_front() else {
            tracing::debug!(pkid, "publish written that was not handed over");
            return;
        };
        if message.qos == QoS::AtMostOnce {
            // QoS 0 is done once written.
            self.complete(&mut link, &message);
        } else {
            link.handovers += 1;
            let order = link.handovers;
            link.sent.insert(pkid, (order, message, false));
            return;
        }
        drop(link);
        self.progress.send_replace(());
    }

    /// The broker acknowledged packet `pkid` (PUBACK, or PUBCOMP for QoS 2).
    pub(super) fn acknowledged(&self, pkid: u16) {
        let mut link = self.link.lock();
        let Some((_, message, _)) = link.sent.remove(&pkid) else {
            tracing::debug!(pkid, "acknowledgement of no message in flight");
            return;
        };
        self.complete(&mut link, &message);
        drop(link);
        self.progress.send_replace(());
    }

    /// The broker has QoS 2 packet `pkid` (PUBREC): should the connection break before
    /// PUBCOMP, it counts as delivered.
    pub(super) fn received(&self, pkid: u16) {
        if let Some(entry) = self.link.lock().sent.get_mut(&pkid) {
            entry.2 = true;
        }
    }

    fn complete(&self, link: &mut Link, message: &Message) {
        link.in_flight = link.in_flight.saturating_sub(1);
        link.stats.acked += 1;
        link.outbox.acknowledged(message);
        self.pump(link);
    }

    pub(super) fn on_connect(&self) {
        let mut link = self.link.lock();
        link.connected = true;
        link.last_error = None;
        link.stats.connects += 1;
        link.outbox.on_connect();
        link.subscriptions.on_connect(&self.client);
        self.pump(&mut link);
        drop(link);
        self.connected.send_replace(true);
        self.ever_connected.send_replace(true);
        self.progress.send_replace(());
    }

    /// A message arrived on a subscribed topic.
    pub(super) fn incoming(&self, publish: rumqttc::Publish) {
        self.link.lock().subscriptions.deliver(publish);
    }

    /// The connection broke or could not be made: take back what rumqttc still holds.
    pub(super) fn on_connection_error(&self, eventloop: &mut EventLoop, error: &ConnectionError) {
        let mut link = self.link.lock();
        link.connected = false;
        // Under the lock nobody hands over more. rumqttc's copies (its unacknowledged state,
        // its channel) are dropped: ours say what to send again, in order. Acknowledgements
        // read before the error are still honoured; other buffered events are stale.
        eventloop.clean();
        eventloop.pending.clear();
        for event in std::mem::take(&mut eventloop.state.events) {
            if let rumqttc::Event::Incoming(
                rumqttc::Packet::PubAck(rumqttc::PubAck { pkid, .. })
                | rumqttc::Packet::PubComp(rumqttc::PubComp { pkid, .. }),
            ) = event
                && let Some((_, message, _)) = link.sent.remove(&pkid)
            {
                self.complete(&mut link, &message);
            }
        }
        let mut numbered: Vec<(u64, Message, bool)> = link.sent.drain().map(|(_, e)| e).collect();
        numbered.sort_by_key(|e| e.0);
        let mut held = Vec::new();
        for (_, message, received) in numbered {
            if received {
                // QoS 2 past PUBREC: the broker has the message; the new session cannot finish
                // the handshake, so count it as done.
                link.stats.acked += 1;
                link.outbox.acknowledged(&message);
            } else {
                held.push(message);
            }
        }
        held.extend(link.handed.drain(..));
        link.in_flight = 0;
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
