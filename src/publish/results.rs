//! Results into messages: the pipeline's [`PersonAffect`] and [`TrackSpan`] values become the
//! versioned JSON of `schemas/` on their topics. The one place that knows the wire format of
//! results.

use std::sync::Arc;
use std::time::SystemTime;

use tracing::debug;

use super::Publisher;
use super::home_assistant::PeopleInView;
use super::payload::{
    PERSON_SCHEMA, PersonMessage, TRACK_SCHEMA, TrackEvent, WindowSpan, normalised_box,
};
use crate::observe::ResultMetrics;
use crate::readout::Readout;
use crate::results::{PersonAffect, ResultSink, TrackSpan};
use crate::types::rfc3339;

/// Publishes results of one node over MQTT (through the outbox: never blocks).
#[derive(Clone)]
pub struct ResultPublisher {
    publisher: Publisher,
    node: String,
    metrics: ResultMetrics,
    /// With `[mqtt] home_assistant`: the per-camera summary its state topics show.
    people: Option<Arc<PeopleInView>>,
}

impl ResultPublisher {
    /// `metrics` counts the person messages handed to MQTT and their latency.
    pub fn new(publisher: Publisher, node: impl Into<String>, metrics: ResultMetrics) -> Self {
        Self {
            publisher,
            node: node.into(),
            metrics,
            people: None,
        }
    }

    /// Also keeps `people` (Home Assistant's per-camera summary) up to date.
    pub fn with_people_in_view(mut self, people: Option<Arc<PeopleInView>>) -> Self {
        self.people = people;
        self
    }

    /// Queues `message` numbered with the next `seq` (`set_seq` writes it in); true when
    /// queued.
    fn send<M: serde::Serialize>(
        &self,
        suffix: &str,
        mut message: M,
        set_seq: impl FnOnce(&mut M, u64),
        what: &str,
    ) -> bool {
        let topic = self.publisher.topics().under(suffix);
        // Serialising cannot fail for these types; checked here so the numbered closure below
        // (which must return a payload) never meets an error.
        if let Err(e) = serde_json::to_vec(&message) {
            debug!(error = %e, "{what} not serialisable");
            return false;
        }
        let numbered = self.publisher.publish_numbered(topic, |seq| {
            set_seq(&mut message, seq);
            serde_json::to_vec(&message).unwrap_or_default()
        });
        match numbered {
            Ok(_) => true,
            Err(e) => {
                debug!(error = %e, "{what} not queued");
                false
            }
        }
    }
}

impl ResultSink for ResultPublisher {
    fn person(&self, affect: PersonAffect) {
        if let Some(people) = &self.people {
            people.person(&affect);
        }
        let now = SystemTime::now();
        let (camera, end) = (affect.camera.clone(), affect.end);
        let message = person_message(&self.node, affect, now);
        let suffix = format!("{}/person/{}", message.camera, message.track_id);
        if self.send(
            &suffix,
            message,
            |m, seq| m.seq = Some(seq),
            "person message",
        ) {
            let latency = now.duration_since(end).unwrap_or_default();
            self.metrics.person_published(&camera, latency);
        }
    }

    fn track(&self, span: TrackSpan) {
        if let Some(people) = &self.people {
            people.track(&span);
        }
        let message = track_message(&self.node, &span, SystemTime::now());
        self.send(
            &format!("{}/tracks", span.camera),
            message,
            |m, seq| m.seq = seq,
            "track event",
        );
    }
}

/// `affectd.person/2` of a window's affect, sent at `now`; `seq` is set when it is queued.
pub fn person_message(node: &str, a: PersonAffect, now: SystemTime) -> PersonMessage {
    let latency_ms = now.duration_since(a.end).unwrap_or_default().as_secs_f64() * 1e3;
    PersonMessage {
        schema: PERSON_SCHEMA,
        seq: None,
        node: node.to_owned(),
        camera: a.camera.to_string(),
        track_id: a.track_id,
        time: rfc3339(now),
        window: WindowSpan::new(a.start, a.end, a.frames),
        bbox: normalised_box(&a.bbox, a.frame_size.0, a.frame_size.1),
        top_emotion: a.classes[Readout::top(&a.affect)].clone(),
        scores: a
            .classes
            .iter()
            .cloned()
            .zip(a.affect.scores.iter().copied())
            .collect(),
        valence: a.affect.valence,
        arousal: a.affect.arousal,
        readout: a.source,
        model: a.model,
        latency_ms,
        embedding: a.embedding,
    }
}

/// `affectd.track/2` of a track's begin or end, sent at `now`; `seq` (0 here) is set when it
/// is queued.
pub fn track_message(node: &str, span: &TrackSpan, now: SystemTime) -> TrackEvent {
    TrackEvent {
        schema: TRACK_SCHEMA,
        seq: 0,
        node: node.to_owned(),
        camera: span.camera.to_string(),
        track_id: span.track_id,
        event: span.event,
        time: rfc3339(now),
        first_seen: rfc3339(span.first_seen),
        last_seen: rfc3339(span.last_seen),
        bbox: normalised_box(&span.bbox, span.frame_size.0, span.frame_size.1),
    }
}
