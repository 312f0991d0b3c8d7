//! What waits to be handed to the MQTT client.
//!
//! Two queues: retained *state* (node and camera status) and *results*. State goes first, is
//! coalesced per topic (only the latest value of a topic is worth sending) and is remembered, so
//! that every reconnect sends it again: the broker may have restarted without persistence and
//! lost its retained messages. Results are bounded: when full, the oldest result is dropped and
//! counted, so a dead broker costs bounded memory and the newest results win.

use std::collections::{BTreeMap, VecDeque};

use rumqttc::QoS;

/// One message on its way to the broker.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: QoS,
    pub retain: bool,
}

/// Distinct retained-state topics remembered at most (cameras are far fewer).
pub(crate) const MAX_STATE_TOPICS: usize = 4096;

#[derive(Debug)]
pub(crate) struct Outbox {
    /// Retained state waiting to be sent, at most one entry per topic.
    state: VecDeque<Message>,
    /// The latest retained payload of every state topic, re-sent after each reconnect.
    latest: BTreeMap<String, Vec<u8>>,
    /// Sent first after a reconnect (the node's own `online`/`offline`).
    first_topic: String,
    results: VecDeque<Message>,
    capacity: usize,
    /// Results dropped because the queue was full.
    pub dropped_results: u64,
    /// State updates refused because too many distinct state topics exist.
    pub dropped_state: u64,
}

impl Outbox {
    /// `capacity` bounds the result queue; `first_topic` is re-sent first after a reconnect.
    pub fn new(capacity: usize, first_topic: String) -> Self {
        Self {
            state: VecDeque::new(),
            latest: BTreeMap::new(),
            first_topic,
            results: VecDeque::with_capacity(capacity.min(1024)),
            capacity,
            dropped_results: 0,
            dropped_state: 0,
        }
    }

    /// Queues a result; drops (and counts) the oldest one when full. True when one was dropped.
    pub fn push_result(&mut self, message: Message) -> bool {
        let dropped = self.results.len() >= self.capacity;
        if dropped {
            self.results.pop_front();
            self.dropped_results += 1;
        }
        self.results.push_back(message);
        dropped
    }

    /// Records the latest retained state of `topic` and queues it (QoS 1), replacing an older
    /// unsent value of the same topic. False when the topic could not be remembered.
    pub fn push_state(&mut self, topic: String, payload: Vec<u8>) -> bool {
        if !self.latest.contains_key(&topic) && self.latest.len() >= MAX_STATE_TOPICS {
            self.dropped_state += 1;
            return false;
        }
        self.latest.insert(topic.clone(), payload.clone());
        if let Some(queued) = self.state.iter_mut().find(|m| m.topic == topic) {
            queued.payload = payload;
        } else {
            self.state.push_back(state_message(topic, payload));
        }
        true
    }

    /// The next message to hand to the client: state before results.
    pub fn pop(&mut self) -> Option<Message> {
        self.state.pop_front().or_else(|| self.results.pop_front())
    }

    /// Puts back a message that `pop` returned but could not be handed over.
    pub fn unpop(&mut self, message: Message) {
        if message.retain && self.latest.contains_key(&message.topic) {
            if !self.state.iter().any(|m| m.topic == message.topic) {
                self.state.push_front(message);
            }
        } else {
            self.results.push_front(message);
        }
    }

    /// Takes back messages that a broken connection left unacknowledged, oldest first.
    ///
    /// State is not re-queued here: [`Outbox::on_connect`] sends its latest value anyway.
    /// Results go back to the front, older than anything queued; if that overflows the
    /// queue, the oldest are dropped and counted. Returns how many results were re-queued.
    pub fn requeue(&mut self, messages: Vec<Message>) -> usize {
        let mut requeued = 0;
        for message in messages.into_iter().rev() {
            if message.retain && self.latest.contains_key(&message.topic) {
                continue;
            }
            if self.results.len() >= self.capacity {
                // The message in hand is older than everything queued: it is the one to drop.
                self.dropped_results += 1;
                continue;
            }
            self.results.push_front(message);
            requeued += 1;
        }
        requeued
    }

    /// A new session began: queue the latest value of every state topic again, the node's own
    /// status first.
    pub fn on_connect(&mut self) {
        self.state.clear();
        if let Some(payload) = self.latest.get(&self.first_topic) {
            self.state
                .push_back(state_message(self.first_topic.clone(), payload.clone()));
        }
        for (topic, payload) in &self.latest {
            if *topic != self.first_topic {
                self.state
                    .push_back(state_message(topic.clone(), payload.clone()));
            }
        }
    }

    /// Messages waiting (state and results).
    pub fn len(&self) -> usize {
        self.state.len() + self.results.len()
    }

    pub fn is_empty(&self) -> bool {
        self.state.is_empty() && self.results.is_empty()
    }
}

fn state_message(topic: String, payload: Vec<u8>) -> Message {
    Message {
        topic,
        payload,
        qos: QoS::AtLeastOnce,
        retain: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(i: u32) -> Message {
        Message {
            topic: "r".into(),
            payload: i.to_string().into_bytes(),
            qos: QoS::AtLeastOnce,
            retain: false,
        }
    }

    fn drain(outbox: &mut Outbox) -> Vec<(String, String)> {
        std::iter::from_fn(|| outbox.pop())
            .map(|m| (m.topic, String::from_utf8(m.payload).unwrap()))
            .collect()
    }

    #[test]
    fn full_result_queue_drops_the_oldest_and_counts() {
        let mut o = Outbox::new(3, "n/status".into());
        for i in 0..5 {
            o.push_result(result(i));
        }
        assert_eq!(o.dropped_results, 2);
        let got: Vec<_> = drain(&mut o).into_iter().map(|(_, p)| p).collect();
        assert_eq!(got, ["2", "3", "4"]);
    }

    #[test]
    fn state_goes_first_and_coalesces_per_topic() {
        let mut o = Outbox::new(10, "n/status".into());
        o.push_result(result(1));
        o.push_state("n/cam/status".into(), b"a".to_vec());
        o.push_state("n/status".into(), b"online".to_vec());
        o.push_state("n/cam/status".into(), b"b".to_vec());
        assert_eq!(o.len(), 3);
        assert_eq!(
            drain(&mut o),
            [
                ("n/cam/status".into(), "b".into()),
                ("n/status".into(), "online".into()),
                ("r".into(), "1".into())
            ]
        );
    }

    #[test]
    fn reconnect_resends_latest_state_node_status_first() {
        let mut o = Outbox::new(10, "n/status".into());
        o.push_state("n/a/status".into(), b"1".to_vec());
        o.push_state("n/status".into(), b"online".to_vec());
        o.push_state("n/a/status".into(), b"2".to_vec());
        drain(&mut o);
        o.push_result(result(7));
        o.on_connect();
        assert_eq!(
            drain(&mut o),
            [
                ("n/status".into(), "online".into()),
                ("n/a/status".into(), "2".into()),
                ("r".into(), "7".into())
            ]
        );
    }

    #[test]
    fn requeued_results_keep_their_order_ahead_of_newer_ones() {
        let mut o = Outbox::new(4, "n/status".into());
        o.push_state("n/status".into(), b"online".to_vec());
        o.push_result(result(3));
        let inflight = vec![
            result(1),
            state_message("n/status".into(), b"online".to_vec()),
            result(2),
        ];
        assert_eq!(o.requeue(inflight), 2);
        let got: Vec<_> = drain(&mut o).into_iter().map(|(_, p)| p).collect();
        assert_eq!(got, ["online", "1", "2", "3"]);
    }

    #[test]
    fn requeue_overflow_drops_the_oldest() {
        let mut o = Outbox::new(2, "n/status".into());
        o.push_result(result(3));
        assert_eq!(o.requeue(vec![result(1), result(2)]), 1);
        assert_eq!(o.dropped_results, 1);
        let got: Vec<_> = drain(&mut o).into_iter().map(|(_, p)| p).collect();
        assert_eq!(got, ["2", "3"]);
    }

    #[test]
    fn unpop_restores_the_front() {
        let mut o = Outbox::new(4, "n/status".into());
        o.push_state("n/status".into(), b"online".to_vec());
        o.push_result(result(1));
        let first = o.pop().unwrap();
        o.unpop(first);
        let second = o.pop().unwrap();
        assert_eq!(second.topic, "n/status");
        let r = o.pop().unwrap();
        o.unpop(r);
        assert_eq!(o.pop().unwrap().payload, b"1");
    }

    #[test]
    fn state_topics_are_bounded() {
        let mut o = Outbox::new(4, "n/status".into());
        for i in 0..MAX_STATE_TOPICS {
            assert!(o.push_state(format!("t/{i}"), vec![]));
        }
        assert!(!o.push_state("t/extra".into(), vec![]));
        assert!(o.push_state("t/0".into(), b"x".to_vec()));
        assert_eq!(o.dropped_state, 1);
    }
}
