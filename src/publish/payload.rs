//! The JSON messages affectd publishes, versioned by their `schema` field.
//!
//! The JSON Schemas in `schemas/` are the contract; tests validate these types against them.
//! `CHANGELOG.md` records every change of a message format.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;

use crate::model::ModelId;
use crate::readout::ReadoutSource;
use crate::results::SpanEvent;
use crate::types::{BBox, rfc3339};

/// `schema` of [`PersonMessage`] (`schemas/person.v2.schema.json`).
pub const PERSON_SCHEMA: &str = "affectd.person/2";
/// `schema` of [`TrackEvent`] (`schemas/track.v2.schema.json`).
pub const TRACK_SCHEMA: &str = "affectd.track/2";

/// A tracked person's affect after a window update:
/// `<prefix>/<node>/<camera>/person/<track_id>`.
#[derive(Debug, Clone, Serialize)]
pub struct PersonMessage {
    pub schema: &'static str,
    /// The node's result counter (person and track messages share it): one more per message,
    /// never reused, across restarts. Set when the message is queued; `None` (absent) in the
    /// copies `/api/tracks` lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    pub node: String,
    pub camera: String,
    pub track_id: u64,
    pub time: String,
    pub window: WindowSpan,
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    pub top_emotion: String,
    /// Class name -> probability.
    pub scores: BTreeMap<String, f32>,
    pub valence: f32,
    pub arousal: f32,
    /// Where `scores` and `valence`/`arousal` come from.
    pub readout: ReadoutSource,
    pub model: ModelId,
    pub latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Vec<f32>>,
}

/// The frames a message summarises.
#[derive(Debug, Clone, Serialize)]
pub struct WindowSpan {
    pub start: String,
    pub end: String,
    pub frames: usize,
}

impl WindowSpan {
    pub fn new(start: SystemTime, end: SystemTime, frames: usize) -> Self {
        Self {
            start: rfc3339(start),
            end: rfc3339(end),
            frames,
        }
    }
}

/// A track begins (confirmed) or ends (removed): `<prefix>/<node>/<camera>/tracks`.
#[derive(Debug, Clone, Serialize)]
pub struct TrackEvent {
    pub schema: &'static str,
    /// The node's result counter, as in [`PersonMessage::seq`].
    pub seq: u64,
    pub node: String,
    pub camera: String,
    pub track_id: u64,
    pub event: SpanEvent,
    pub time: String,
    pub first_seen: String,
    pub last_seen: String,
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
}

/// A box in a `width` x `height` frame as [x1, y1, x2, y2] in [0, 1].
pub fn normalised_box(b: &BBox, width: u32, height: u32) -> [f32; 4] {
    let (w, h) = (width.max(1) as f32, height.max(1) as f32);
    let c = b.clamped(w, h);
    [c.x1 / w, c.y1 / h, c.x2 / w, c.y2 / h]
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::readout::{ScoresSource, ValenceArousalSource};
    use std::time::Duration;

    /// The validator of `schemas/<name>`, formats checked.
    pub(crate) fn validator(name: &str) -> jsonschema::Validator {
        let path = format!("{}/schemas/{name}", env!("CARGO_MANIFEST_DIR"));
        let schema: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .unwrap()
    }

    fn person() -> PersonMessage {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
        PersonMessage {
            schema: PERSON_SCHEMA,
            seq: Some(17),
            node: "demo".into(),
            camera: "walkway".into(),
            track_id: 3,
            time: rfc3339(t0 + Duration::from_secs(1)),
            window: WindowSpan::new(t0, t0 + Duration::from_millis(875), 8),
            bbox: normalised_box(&BBox::new(-4.0, 10.0, 100.0, 700.0), 768, 576),
            top_emotion: "neutral".into(),
            scores: [("neutral".to_owned(), 0.7), ("happiness".to_owned(), 0.3)].into(),
            valence: 0.1,
            arousal: -0.2,
            readout: ReadoutSource {
                scores: ScoresSource::ZeroShot,
                valence_arousal: ValenceArousalSource::Lexicon,
            },
            model: ModelId::new("emotionclip-vitb32", None),
            latency_ms: 42.5,
            embedding: None,
        }
    }

    #[test]
    fn person_message_matches_its_schema() {
        let v = validator("person.v2.schema.json");
        let json = serde_json::to_value(person()).unwrap();
        assert!(v.is_valid(&json), "{:?}", v.validate(&json).err());
        assert_eq!(json["box"][3], 1.0, "clamped to the frame");
        assert_eq!(json["model"]["weights"], "untrained");
        assert_eq!(json["readout"]["scores"], "zero-shot");

        let mut head = json.clone();
        head["readout"]["scores"] = "head".into();
        head["readout"]["valence_arousal"] = "head".into();
        assert!(v.is_valid(&head));
        let mut unknown = json.clone();
        unknown["readout"]["scores"] = "guess".into();
        assert!(!v.is_valid(&unknown));

        let mut bad = json.clone();
        bad["valence"] = 1.5.into();
        assert!(!v.is_valid(&bad));
        let mut extra = json.clone();
        extra["unknown"] = 1.into();
        assert!(!v.is_valid(&extra));
        let mut unnumbered = json.clone();
        unnumbered.as_object_mut().unwrap().remove("seq");
        assert!(!v.is_valid(&unnumbered), "seq is required");
        let mut zero = json;
        zero["seq"] = 0.into();
        assert!(!v.is_valid(&zero), "seq starts at 1");
    }

    #[test]
    fn track_event_matches_its_schema() {
        let v = validator("track.v2.schema.json");
        let t = rfc3339(SystemTime::UNIX_EPOCH);
        let event = TrackEvent {
            schema: TRACK_SCHEMA,
            seq: 18,
            node: "demo".into(),
            camera: "walkway".into(),
            track_id: 1,
            event: SpanEvent::End,
            time: t.clone(),
            first_seen: t.clone(),
            last_seen: t,
            bbox: [0.1, 0.2, 0.3, 0.4],
        };
        let json = serde_json::to_value(event).unwrap();
        assert!(v.is_valid(&json), "{:?}", v.validate(&json).err());
        assert_eq!(json["event"], "end");
    }
}
