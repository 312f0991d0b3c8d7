//! Incoming messages: the topic filters this client subscribes to, kept over reconnects.
//!
//! In: [`Publisher::subscribe`](super::Publisher::subscribe) registers a filter; the event
//! loop hands over every PUBLISH it receives. Out: each message matching a filter, on that
//! filter's bounded channel (full: the message is dropped and logged, the event loop never
//! waits). Owns the list of filters; the session is clean, so every connect subscribes again.

use rumqttc::{AsyncClient, QoS};
use tokio::sync::mpsc;

/// Messages buffered per subscription before new ones are dropped.
pub(super) const CAPACITY: usize = 1024;

/// A message the broker delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    pub topic: String,
    pub payload: Vec<u8>,
    /// Delivered from the broker's retained store (on subscribe), not live.
    pub retain: bool,
}

#[derive(Debug, Default)]
pub(super) struct Subscriptions {
    list: Vec<(String, mpsc::Sender<Incoming>)>,
}

impl Subscriptions {
    /// Registers `filter`; subscribes at once when `connected`.
    pub(super) fn add(
        &mut self,
        client: &AsyncClient,
        connected: bool,
        filter: String,
    ) -> mpsc::Receiver<Incoming> {
        let (tx, rx) = mpsc::channel(CAPACITY);
        if connected {
            subscribe(client, &filter);
        }
        self.list.push((filter, tx));
        rx
    }

    /// A new session began: subscribe to every filter again (QoS 0: nothing to acknowledge).
    pub(super) fn on_connect(&mut self, client: &AsyncClient) {
        self.list.retain(|(_, tx)| !tx.is_closed());
        for (filter, _) in &self.list {
            subscribe(client, filter);
        }
    }

    /// Hands `publish` to every subscription whose filter matches its topic.
    pub(super) fn deliver(&self, publish: rumqttc::Publish) {
        let message = Incoming {
            topic: publish.topic,
            payload: publish.payload.to_vec(),
            retain: publish.retain,
        };
        for (filter, tx) in &self.list {
            if rumqttc::matches(&message.topic, filter)
                && let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(message.clone())
            {
                tracing::warn!(topic = %message.topic, "incoming MQTT message dropped: its reader is behind");
            }
        }
    }
}

fn subscribe(client: &AsyncClient, filter: &str) {
    if let Err(e) = client.try_subscribe(filter, QoS::AtMostOnce) {
        tracing::warn!(filter, error = %e, "cannot subscribe");
    }
}
