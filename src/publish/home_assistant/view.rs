//! What Home Assistant's sensors show per camera: the people in view (open tracks), their
//! dominant emotion and mean valence and arousal.
//!
//! In: every person result and track begin/end on their way to MQTT. Out: a [`Summary`] per
//! camera, read once a second by the state task. Owns, per configured camera, the latest
//! result of each open track (a track's end removes it); the trackers bound how many.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;

use crate::results::{PersonAffect, SpanEvent, TrackSpan};
use crate::types::CameraId;

/// The retained JSON of `<prefix>/<node>/<camera>/state`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Open tracks: people in view.
    pub persons: usize,
    /// The class with the highest score summed over the people in view that have a result;
    /// `null` when none has.
    pub dominant_emotion: Option<String>,
    /// Mean over the same people, in [-1, 1], to 3 decimals; `null` when none has a result.
    pub valence: Option<f64>,
    pub arousal: Option<f64>,
}

/// A track's latest result.
#[derive(Debug, Clone)]
struct Latest {
    classes: Arc<[String]>,
    scores: Vec<f32>,
    valence: f32,
    arousal: f32,
}

/// Open tracks per configured camera; results of other cameras are ignored.
#[derive(Debug, Default)]
pub struct PeopleInView {
    cameras: Mutex<BTreeMap<CameraId, BTreeMap<u64, Option<Latest>>>>,
}

impl PeopleInView {
    pub fn new(cameras: impl IntoIterator<Item = CameraId>) -> Self {
        Self {
            cameras: Mutex::new(cameras.into_iter().map(|c| (c, BTreeMap::new())).collect()),
        }
    }

    /// A person's new result: the latest of its track (opening it if its begin was missed).
    pub fn person(&self, a: &PersonAffect) {
        if let Some(open) = self.cameras.lock().get_mut(&a.camera) {
            open.insert(
                a.track_id,
                Some(Latest {
                    classes: Arc::clone(&a.classes),
                    scores: a.affect.scores.clone(),
                    valence: a.affect.valence,
                    arousal: a.affect.arousal,
                }),
            );
        }
    }

    pub fn track(&self, span: &TrackSpan) {
        if let Some(open) = self.cameras.lock().get_mut(&span.camera) {
            match span.event {
                SpanEvent::Begin => {
                    open.entry(span.track_id).or_insert(None);
                }
                SpanEvent::End => {
                    open.remove(&span.track_id);
                }
            }
        }
    }

    /// Every configured camera's summary now.
    pub fn summaries(&self) -> Vec<(CameraId, Summary)> {
        self.cameras
            .lock()
            .iter()
            .map(|(camera, open)| (camera.clone(), summarise(open)))
            .collect()
    }
}

fn summarise(open: &BTreeMap<u64, Option<Latest>>) -> Summary {
    let results: Vec<&Latest> = open.values().flatten().collect();
    let n = results.len() as f64;
    let mean = |f: fn(&Latest) -> f32| {
        (n > 0.0).then(|| {
            let m = results.iter().map(|l| f64::from(f(l))).sum::<f64>() / n;
            (m.clamp(-1.0, 1.0) * 1000.0).round() / 1000.0
        })
    };
    // Summed by name: a reload may change the classes while tracks are open.
    let mut totals: Vec<(&str, f64)> = Vec::new();
    for l in &results {
        for (name, score) in l.classes.iter().zip(&l.scores) {
            match totals.iter_mut().find(|(n, _)| *n == name.as_str()) {
                Some((_, total)) => *total += f64::from(*score),
                None => totals.push((name, f64::from(*score))),
            }
        }
    }
    let dominant = totals
        .iter()
        .fold(None::<(&str, f64)>, |best, &(name, total)| match best {
            Some((_, b)) if b >= total => best,
            _ => Some((name, total)),
        })
        .map(|(name, _)| name.to_owned());
    Summary {
        persons: open.len(),
        dominant_emotion: dominant,
        valence: mean(|l| l.valence),
        arousal: mean(|l| l.arousal),
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::model::ModelId;
    use crate::readout::{Affect, ReadoutSource, ScoresSource, ValenceArousalSource};
    use crate::types::BBox;

    fn span(track_id: u64, event: SpanEvent) -> TrackSpan {
        TrackSpan {
            camera: "door".into(),
            track_id,
            event,
            bbox: BBox::default(),
            frame_size: (640, 480),
            first_seen: SystemTime::now(),
            last_seen: SystemTime::now(),
        }
    }

    fn affect(track_id: u64, scores: [f32; 2], valence: f32, arousal: f32) -> PersonAffect {
        PersonAffect {
            camera: "door".into(),
            track_id,
            start: SystemTime::now(),
            end: SystemTime::now(),
            frames: 8,
            bbox: BBox::default(),
            frame_size: (640, 480),
            classes: Arc::from(vec!["happiness".to_owned(), "sadness".to_owned()]),
            affect: Affect {
                scores: scores.to_vec(),
                valence,
                arousal,
            },
            source: ReadoutSource {
                scores: ScoresSource::ZeroShot,
                valence_arousal: ValenceArousalSource::Lexicon,
            },
            model: ModelId::new("t", None),
            embedding: None,
        }
    }

    #[test]
    fn summarises_the_open_tracks_and_forgets_ended_ones() {
        let view = PeopleInView::new(["door".into()]);
        let empty = Summary {
            persons: 0,
            dominant_emotion: None,
            valence: None,
            arousal: None,
        };
        assert_eq!(view.summaries()[0].1, empty);
        view.track(&span(1, SpanEvent::Begin));
        view.track(&span(2, SpanEvent::Begin));
        let begun = view.summaries()[0].1.clone();
        assert_eq!((begun.persons, begun.valence), (2, None));
        view.person(&affect(1, [0.7, 0.3], 0.5, 0.2));
        view.person(&affect(2, [0.2, 0.8], -0.1, 0.4));
        view.person(&affect(2, [0.4, 0.6], -0.3, 0.6));
        assert_eq!(
            view.summaries()[0].1,
            Summary {
                persons: 2,
                dominant_emotion: Some("happiness".into()),
                valence: Some(0.1),
                arousal: Some(0.4),
            }
        );
        view.track(&span(1, SpanEvent::End));
        let one = view.summaries()[0].1.clone();
        assert_eq!(one.dominant_emotion.as_deref(), Some("sadness"));
        assert_eq!((one.persons, one.valence), (1, Some(-0.3)));
        view.track(&span(2, SpanEvent::End));
        assert_eq!(view.summaries()[0].1, empty);
        // Another camera's results are not this node's configured cameras'.
        let mut other = span(3, SpanEvent::Begin);
        other.camera = "yard".into();
        view.track(&other);
        assert_eq!(view.summaries().len(), 1);
    }

    #[test]
    fn the_state_json_has_the_documented_fields() {
        let s = Summary {
            persons: 1,
            dominant_emotion: Some("fear".into()),
            valence: Some(-0.25),
            arousal: None,
        };
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"persons":1,"dominant_emotion":"fear","valence":-0.25,"arousal":null}"#
        );
    }
}
