//! What waits to be handed to the MQTT client.
//!
//! In: state and results from the `Publisher`; acknowledgements from `flow.rs`. Out: the next
//! message to hand over ([`Outbox::pop`]); with the disk outbox, spool operations to the
//! writer thread (`spool.rs`). Owns: both queues, `seq` (the per-node result counter).
//!
//! Two queues: retained *state* (node and camera status) and *results*. State goes first, is
//! coalesced per topic (only the latest value of a topic is worth sending) and is remembered, so
//! that every reconnect sends it again: the broker may have restarted without persistence and
//! lost its retained messages. Results are bounded (`outbox_capacity`): when full, the oldest
//! result is dropped and counted, so a dead broker costs bounded memory (and spool) and the
//! newest results win.
//!
//! Every result gets the next `seq` ([`Outbox::take_seq`]). With a spool (`outbox = "disk"`)
//! each result is put in the spool when queued, deleted when acknowledged or dropped, and
//! [`Outbox::pop`] hands out a result only once the commit holding it has returned
//! ([`Outbox::set_durable`]): nothing reaches the broker that a crash could lose from disk.

use std::collections::{BTreeMap, VecDeque};

use rumqttc::QoS;

use super::spool::{self, Op, SeqFile, Writer};

/// One message on its way to the broker.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: QoS,
    pub retain: bool,
    /// A result's number (its spool key); `None` for retained state.
    pub seq: Option<u64>,
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
    /// The `seq` of the next result.
    next_seq: u64,
    /// Where `seq` survives a restart (absent: no state folder, `seq` starts at 1 each run).
    seq_file: Option<SeqFile>,
    /// The spool's writer (`outbox = "disk"`).
    spool: Option<Writer>,
    /// Results up to this `seq` are on disk and may be handed over (`u64::MAX` without spool).
    durable: u64,
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
            next_seq: 1,
            seq_file: None,
            spool: None,
            durable: u64::MAX,
        }
    }

    /// `seq` continues from `next` and is kept in `file`.
    pub fn with_seq(mut self, next: u64, file: Option<SeqFile>) -> Self {
        self.next_seq = next.max(1);
        self.seq_file = file;
        self
    }

    /// Results go through `spool` from now on; `replay` (found in it at start, oldest first,
    /// already on disk) is queued ahead of every later result, sent at `qos`. Beyond
    /// `capacity` the oldest are dropped.
    pub fn attach_spool(&mut self, spool: Writer, replay: Vec<spool::Spooled>, qos: QoS) {
        self.durable = self.next_seq.saturating_sub(1);
        self.spool = Some(spool);
        for s in replay.into_iter().rev() {
            self.durable = self.durable.max(s.seq);
            let message = Message {
                topic: s.topic,
                payload: s.payload,
                qos,
                retain: false,
                seq: Some(s.seq),
            };
            if self.results.len() >= self.capacity {
                self.forget(&message);
            } else {
                self.results.push_front(message);
            }
        }
    }

    /// The next result's number; numbers are never reused.
    pub fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(file) = &mut self.seq_file {
            file.cover(seq);
        }
        seq
    }

    /// The `seq` the next result will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Queues a result numbered by [`Outbox::take_seq`] (spooled when there is a spool); drops
    /// (and counts) the oldest one when full. True when one was dropped.
    pub fn push_result(&mut self, message: Message) -> bool {
        if let (Some(spool), Some(seq)) = (&self.spool, message.seq) {
            spool.send(Op::Put(
                seq,
                spool::encode(&message.topic, &message.payload),
            ));
        }
        self.enqueue(message)
    }

    fn enqueue(&mut self, message: Message) -> bool {
        let dropped = self.results.len() >= self.capacity;
        if dropped && let Some(old) = self.results.pop_front() {
            self.forget(&old);
        }
        self.results.push_back(message);
        dropped
    }

    /// A result dropped for lack of room: counted, deleted from the spool.
    fn forget(&mut self, message: &Message) {
        self.dropped_results += 1;
        if let (Some(spool), Some(seq)) = (&self.spool, message.seq) {
            spool.send(Op::Dropped(seq));
        }
    }

    /// The broker has `message`: it leaves the spool.
    pub fn acknowledged(&mut self, message: &Message) {
        if let (Some(spool), Some(seq), false) = (&self.spool, message.seq, message.retain) {
            spool.send(Op::Acked(seq));
        }
    }

    /// Results up to `seq` are on disk: they may be handed over.
    pub fn set_durable(&mut self, seq: u64) {
        self.durable = self.durable.max(seq);
    }

    /// The spool's commit counters, with a spool.
    pub fn spool_counters(&self) -> Option<&spool::SpoolCounters> {
        self.spool.as_ref().map(|w| &*w.counters)
    }

    /// Shutdown: records the exact next `seq` and hands over the spool's writer, to be closed
    /// without the publisher's lock (its last commit reports back under that lock). Later
    /// results are not spooled.
    pub fn close(&mut self) -> Option<Writer> {
        let next = self.next_seq;
        if let Some(file) = &mut self.seq_file {
            file.finish(next);
        }
        self.spool.take()
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

    /// The next message to hand to the client: state before results; a result only once it is
    /// on disk (with a spool).
    pub fn pop(&mut self) -> Option<Message> {
        if let Some(state) = self.state.pop_front() {
            return Some(state);
        }
        let durable = self.durable;
        if self
            .results
            .front()
            .is_some_and(|m| m.seq.is_some_and(|s| s > durable))
        {
            return None;
        }
        self.results.pop_front()
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
                self.forget(&message);
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
        seq: None,
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
            seq: None,
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
    fn with_a_spool_replay_goes_first_and_results_wait_for_their_commit() {
        let dir = tempfile::tempdir().unwrap();
        let writer = spool::Spool::open(dir.path())
            .unwrap()
            .spawn_writer(Default::default(), |_| {})
            .unwrap();
        let mut o = Outbox::new(10, "n/status".into()).with_seq(5, None);
        let replay = (3..5)
            .map(|seq| spool::Spooled {
                seq,
                topic: "r".into(),
                payload: seq.to_string().into_bytes(),
            })
            .collect();
        o.attach_spool(writer, replay, QoS::ExactlyOnce);
        let seq = o.take_seq();
        assert_eq!(seq, 5);
        o.push_result(Message {
            seq: Some(seq),
            ..result(5)
        });
        let first = o.pop().unwrap();
        assert_eq!((first.seq, first.qos), (Some(3), QoS::ExactlyOnce));
        assert_eq!(o.pop().unwrap().seq, Some(4));
        assert!(o.pop().is_none(), "5 is not on disk yet");
        o.set_durable(5);
        assert_eq!(o.pop().unwrap().payload, b"5");
        assert_eq!(o.next_seq(), 6);
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
