//! The live track table behind `/api/tracks`: a [`ResultSink`] in front of publish that
//! forwards every result unchanged and keeps, per open track, its begin and its latest
//! person result; the track's end removes it. Bounded by `capacity` (cameras x
//! `[track] max_tracks`, what the trackers can hold at once): a track beyond it is not
//! listed. The lock is held for a map update or a copy of the table, never while encoding.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;

use super::view::Label;
use crate::publish::{PersonMessage, normalised_box, person_message};
use crate::readout::Readout;
use crate::results::{PersonAffect, ResultSink, SpanEvent, TrackSpan};
use crate::types::{TrackKey, rfc3339};

/// The sink the pipeline writes to: records, then forwards to `inner`.
pub struct LiveTracks {
    inner: Arc<dyn ResultSink>,
    table: Mutex<HashMap<TrackKey, Open>>,
    capacity: usize,
}

/// An open track.
#[derive(Clone)]
struct Open {
    begun: TrackSpan,
    /// The latest person result and when it was handed on.
    latest: Option<(PersonAffect, SystemTime)>,
}

/// One open track as `/api/tracks` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrackEntry {
    pub camera: String,
    pub track_id: u64,
    pub first_seen: String,
    /// The last frame time known here: the latest window's last frame, or the begin.
    pub last_seen: String,
    /// The latest box known, normalised to [0, 1]: x1, y1, x2, y2.
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    /// The latest person message published for the track (`affectd.person/2`, without `seq`
    /// and the embedding); `null` until its first window.
    pub person: Option<PersonMessage>,
}

impl LiveTracks {
    pub fn new(inner: Arc<dyn ResultSink>, capacity: usize) -> Self {
        Self {
            inner,
            table: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// The open tracks of `node`, by camera then track id.
    pub fn list(&self, node: &str) -> Vec<TrackEntry> {
        let open: Vec<Open> = self.table.lock().values().cloned().collect();
        let mut entries: Vec<TrackEntry> = open
            .into_iter()
            .map(|o| {
                let (bbox, size, last_seen) = match &o.latest {
                    Some((a, _)) => (a.bbox, a.frame_size, a.end.max(o.begun.last_seen)),
                    None => (o.begun.bbox, o.begun.frame_size, o.begun.last_seen),
                };
                TrackEntry {
                    camera: o.begun.camera.to_string(),
                    track_id: o.begun.track_id,
                    first_seen: rfc3339(o.begun.first_seen),
                    last_seen: rfc3339(last_seen),
                    bbox: normalised_box(&bbox, size.0, size.1),
                    person: o.latest.map(|(a, at)| person_message(node, a, at)),
                }
            })
            .collect();
        entries.sort_by(|a, b| (&a.camera, a.track_id).cmp(&(&b.camera, b.track_id)));
        entries
    }

    /// The latest read-out of each open track of `camera` that has one, by track id (what
    /// the debug view writes beside the boxes).
    pub fn labels(&self, camera: &str) -> HashMap<u64, Label> {
        let table = self.table.lock();
        table
            .iter()
            .filter(|((c, _), _)| &**c == camera)
            .filter_map(|((_, id), open)| {
                let (a, _) = open.latest.as_ref()?;
                let top = a.classes.get(Readout::top(&a.affect))?;
                Some((
                    *id,
                    Label {
                        top_emotion: top.clone(),
                        valence: a.affect.valence,
                        arousal: a.affect.arousal,
                    },
                ))
            })
            .collect()
    }

    /// Open tracks of `camera`.
    pub fn count(&self, camera: &str) -> usize {
        self.table
            .lock()
            .keys()
            .filter(|(c, _)| &**c == camera)
            .count()
    }
}

impl ResultSink for LiveTracks {
    fn person(&self, affect: PersonAffect) {
        {
            let mut table = self.table.lock();
            let key = (affect.camera.clone(), affect.track_id);
            if let Some(open) = table.get_mut(&key) {
                let kept = PersonAffect {
                    embedding: None,
                    ..affect.clone()
                };
                open.latest = Some((kept, SystemTime::now()));
            }
        }
        self.inner.person(affect);
    }

    fn track(&self, span: TrackSpan) {
        {
            let mut table = self.table.lock();
            match span.event {
                SpanEvent::Begin if table.len() < self.capacity => {
                    table.insert(
                        span.key(),
                        Open {
                            begun: span.clone(),
                            latest: None,
                        },
                    );
                }
                SpanEvent::Begin => {}
                SpanEvent::End => {
                    table.remove(&span.key());
                }
            }
        }
        self.inner.track(span);
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::ModelId;
    use crate::readout::{Affect, ReadoutSource, ScoresSource, ValenceArousalSource};
    use crate::types::BBox;

    #[derive(Default)]
    struct Count(Mutex<(usize, usize)>);

    impl ResultSink for Count {
        fn person(&self, _: PersonAffect) {
            self.0.lock().0 += 1;
        }
        fn track(&self, _: TrackSpan) {
            self.0.lock().1 += 1;
        }
    }

    fn t(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_790_000_000_000 + ms)
    }

    fn span(camera: &str, track_id: u64, event: SpanEvent) -> TrackSpan {
        TrackSpan {
            camera: camera.into(),
            track_id,
            event,
            bbox: BBox::new(0.0, 0.0, 50.0, 100.0),
            frame_size: (100, 200),
            first_seen: t(0),
            last_seen: t(100),
        }
    }

    pub(in crate::observe) fn affect(camera: &str, track_id: u64) -> PersonAffect {
        PersonAffect {
            camera: camera.into(),
            track_id,
            start: t(0),
            end: t(900),
            frames: 8,
            bbox: BBox::new(10.0, 20.0, 60.0, 120.0),
            frame_size: (100, 200),
            classes: Arc::from(vec!["calm".to_owned(), "joy".to_owned()]),
            affect: Affect {
                scores: vec![0.25, 0.75],
                valence: 0.5,
                arousal: 0.1,
            },
            source: ReadoutSource {
                scores: ScoresSource::ZeroShot,
                valence_arousal: ValenceArousalSource::Lexicon,
            },
            model: ModelId::new("m", None),
            embedding: Some(vec![0.0; 4]),
        }
    }

    #[test]
    fn tracks_are_listed_from_begin_to_end_with_their_latest_result() {
        let out = Arc::new(Count::default());
        let live = LiveTracks::new(Arc::clone(&out) as Arc<dyn ResultSink>, 2);
        live.track(span("b", 7, SpanEvent::Begin));
        live.track(span("a", 3, SpanEvent::Begin));
        // Beyond the capacity: forwarded, not listed.
        live.track(span("a", 4, SpanEvent::Begin));
        live.person(affect("a", 3));
        let list = live.list("n");
        assert_eq!(
            list.iter()
                .map(|e| (e.camera.as_str(), e.track_id))
                .collect::<Vec<_>>(),
            [("a", 3), ("b", 7)]
        );
        let person = list[0].person.as_ref().expect("a window came");
        assert_eq!(person.top_emotion, "joy");
        assert!(person.embedding.is_none());
        assert_eq!(list[0].bbox, [0.1, 0.1, 0.6, 0.6]);
        assert_eq!(list[0].last_seen, rfc3339(t(900)));
        assert!(list[1].person.is_none());
        assert_eq!(live.count("a"), 1);

        live.track(span("a", 3, SpanEvent::End));
        assert_eq!(live.list("n").len(), 1);
        // Every result went on, listed or not.
        assert_eq!(*out.0.lock(), (1, 4));
    }
}
