//! Results into messages: the pipeline's [`PersonAffect`] and [`TrackSpan`] values become the
//! versioned JSON of `schemas/` on their topics. The one place that knows the wire format of
//! results.

use std::time::SystemTime;

use tracing::debug;

use super::Publisher;
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
}

impl ResultPublisher {
    /// `metrics` counts the person messages handed to MQTT and their latency.
    pub fn new(publisher: Publisher, node: impl Into<String>, metrics: ResultMetrics) -> Self {
        Self {
            publisher,
            node: node.into(),
            metrics,
        }
    }

    /// True when the message was queued.
    fn send(&self, suffix: &str, message: &impl serde::Serialize, what: &str) -> bool {
        let topic = self.publisher.topics().under(suffix);
        match serde_json::to_vec(message) {
            Ok(payload) => match self.publisher.publish(topic, payload) {
                Ok(()) => true,
                Err(e) => {
                    debug!(error = %e, "{what} not queued");
                    false
                }
            },
            Err(e) => {
                debug!(error = %e, "{what} not serialisable");
                false
            }
        }
    }
}

impl ResultSink for ResultPublisher {
    fn person(&self, affect: PersonAffect) {
        let now = SystemTime::now();
        let (camera, end) = (affect.camera.clone(), affect.end);
        let message = person_message(&self.node, affect, now);
        let suffix = format!("{}/person/{}", message.camera, message.track_id);
        if self.send(&suffix, &message, "person message") {
            let latency = now.duration_since(end).unwrap_or_default();
            self.metrics.person_published(&camera, latency);
        }
    }

    fn track(&self, span: TrackSpan) {
        let message = track_message(&self.node, &span, SystemTime::now());
        self.send(&format!("{}/tracks", span.camera), &message, "track event");
    }
}

/// `affectd.person/1` of a window's affect, sent at `now`.
pub fn person_message(node: &str, a: PersonAffect, now: SystemTime) -> PersonMessage {
    let latency_ms = now.duration_since(a.end).unwrap_or_default().as_secs_f64() * 1e3;
    PersonMessage {
        schema: PERSON_SCHEMA,
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

/// `affectd.track/1` of a track's begin or end, sent at `now`.
pub fn track_message(node: &str, span: &TrackSpan, now: SystemTime) -> TrackEvent {
    TrackEvent {
        schema: TRACK_SCHEMA,
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
