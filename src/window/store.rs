//! Per-camera store of track windows.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use ringbuf::HeapRb;
use ringbuf::traits::{Observer, RingBuffer};

use crate::track::{TrackId, TrackUpdate};
use crate::types::{BBox, Detection, Frame};

use super::config::WindowConfig;

/// One sampled moment of a track.
///
/// `F` is the slot for what the encoder caches per entry (frame features), filled in later
/// through [`Windows::entries_mut`]; it stays `None` until then.
#[derive(Debug, Clone)]
pub struct Entry<F = ()> {
    /// The subject's box in frame pixels (the matched detection).
    pub bbox: BBox,
    /// The whole frame, shared (not copied) with the detector and other windows.
    pub frame: Frame,
    pub seq: u64,
    pub pts: Option<Duration>,
    pub wall: SystemTime,
    /// Encoder features for this entry, once computed.
    pub features: Option<F>,
}

struct Ring<F> {
    entries: HeapRb<Entry<F>>,
    /// Frames in which the track was seen since its window opened.
    seen: u64,
}

/// The windows of one camera's tracks.
pub struct Windows<F = ()> {
    cfg: WindowConfig,
    rings: HashMap<TrackId, Ring<F>>,
    refused: u64,
}

impl<F> std::fmt::Debug for Windows<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Windows")
            .field("tracks", &self.rings.len())
            .field("refused", &self.refused)
            .finish_non_exhaustive()
    }
}

impl<F> Windows<F> {
    pub fn new(cfg: WindowConfig) -> Self {
        Self {
            cfg,
            rings: HashMap::new(),
            refused: 0,
        }
    }

    /// Applies one frame's tracker output: ended tracks free their ring; active tracks old
    /// enough get an entry every `stride` sightings. Returns the tracks that got an entry.
    pub fn update(
        &mut self,
        frame: &Frame,
        tracks: &TrackUpdate,
        dets: &[Detection],
    ) -> Vec<TrackId> {
        for ended in &tracks.ended {
            self.rings.remove(&ended.id);
        }
        let mut sampled = Vec::new();
        for t in &tracks.active {
            if t.age < self.cfg.min_track_age {
                continue;
            }
            if !self.rings.contains_key(&t.id) {
                if self.rings.len() >= self.cfg.max_tracks {
                    self.refused += 1;
                    continue;
                }
                self.rings.insert(
                    t.id,
                    Ring {
                        entries: HeapRb::new(self.cfg.length),
                        seen: 0,
                    },
                );
            }
            let Some(ring) = self.rings.get_mut(&t.id) else {
                continue;
            };
            ring.seen += 1;
            if (ring.seen - 1) % self.cfg.stride as u64 != 0 {
                continue;
            }
            let bbox = t
                .detection
                .and_then(|i| dets.get(i))
                .map_or(t.bbox, |d| d.bbox);
            ring.entries.push_overwrite(Entry {
                bbox,
                frame: frame.clone(),
                seq: frame.seq,
                pts: frame.pts,
                wall: frame.wall,
                features: None,
            });
            sampled.push(t.id);
        }
        sampled
    }

    /// A track's entries, oldest first. (`&mut self` because ringbuf 0.6 only iterates an
    /// owned ring through `RingBuffer`, which needs exclusive access; nothing is changed.)
    pub fn entries(&mut self, id: TrackId) -> Option<impl Iterator<Item = &Entry<F>>> {
        self.rings
            .get_mut(&id)
            .map(|r| RingBuffer::iter(&mut r.entries))
    }

    /// A track's entries, oldest first, for the encoder to fill `features`.
    pub fn entries_mut(&mut self, id: TrackId) -> Option<impl Iterator<Item = &mut Entry<F>>> {
        self.rings
            .get_mut(&id)
            .map(|r| RingBuffer::iter_mut(&mut r.entries))
    }

    /// Whether a track's window holds `length` entries.
    pub fn is_full(&self, id: TrackId) -> bool {
        self.rings.get(&id).is_some_and(|r| r.entries.is_full())
    }

    /// Drops a track's window.
    pub fn remove(&mut self, id: TrackId) {
        self.rings.remove(&id);
    }

    /// Tracks that have a window.
    pub fn len(&self) -> usize {
        self.rings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rings.is_empty()
    }

    /// Tracks that got no window because `max_tracks` were open.
    pub fn refused(&self) -> u64 {
        self.refused
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::track::{EndedTrack, Track};

    fn frame(seq: u64) -> Frame {
        Frame {
            camera: "c".into(),
            seq,
            pts: Some(Duration::from_millis(seq * 100)),
            wall: SystemTime::UNIX_EPOCH,
            width: 4,
            height: 4,
            rgb: Arc::from(vec![0u8; 48]),
        }
    }

    fn track(id: TrackId, age: u32) -> Track {
        Track {
            id,
            bbox: BBox::new(0.0, 0.0, 1.0, 1.0),
            detection: Some(0),
            score: 0.9,
            age,
            first_seen: SystemTime::UNIX_EPOCH,
        }
    }

    fn det(x: f32) -> Detection {
        Detection {
            bbox: BBox::new(x, 0.0, x + 1.0, 2.0),
            score: 0.9,
        }
    }

    #[test]
    fn keeps_the_last_eight_in_order_and_shares_frames() {
        let mut w: Windows = Windows::new(WindowConfig::default());
        let mut last = None;
        for s in 0..12 {
            let f = frame(s);
            let up = TrackUpdate {
                active: vec![track(1, s as u32)],
                ..Default::default()
            };
            assert_eq!(w.update(&f, &up, &[det(s as f32)]), vec![1]);
            assert_eq!(w.is_full(1), s >= 7);
            last = Some(f);
        }
        let seqs: Vec<u64> = w.entries(1).unwrap().map(|e| e.seq).collect();
        assert_eq!(seqs, (4..12).collect::<Vec<_>>());
        let e = w.entries(1).unwrap().last().unwrap();
        assert_eq!(e.bbox, det(11.0).bbox); // the detection's box, not the filtered one
        // The pixels are shared with the caller's frame, not copied.
        assert!(Arc::ptr_eq(&e.frame.rgb, &last.unwrap().rgb));
    }

    #[test]
    fn stride_age_cap_and_ending_free_memory() {
        let cfg = WindowConfig {
            length: 8,
            stride: 3,
            min_track_age: 2,
            max_tracks: 2,
        };
        let mut w: Windows<Vec<f32>> = Windows::new(cfg);
        for s in 0..10u64 {
            let up = TrackUpdate {
                active: vec![track(1, s as u32), track(2, s as u32), track(3, s as u32)],
                ..Default::default()
            };
            w.update(&frame(s), &up, &[det(0.0)]);
        }
        // Ages 2..=9 are eligible: 8 sightings, every third sampled: ages 2, 5, 8.
        let seqs: Vec<u64> = w.entries(1).unwrap().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![2, 5, 8]);
        assert!(w.entries(3).is_none());
        assert!(w.refused() > 0);
        for e in w.entries_mut(1).unwrap() {
            e.features = Some(vec![1.0; 4]);
        }
        assert!(w.entries(1).unwrap().all(|e| e.features.is_some()));
        let up = TrackUpdate {
            ended: vec![EndedTrack {
                id: 1,
                bbox: BBox::default(),
                first_seen: SystemTime::UNIX_EPOCH,
                last_seen: SystemTime::UNIX_EPOCH,
            }],
            ..Default::default()
        };
        w.update(&frame(10), &up, &[]);
        assert!(w.entries(1).is_none());
        assert_eq!(w.len(), 1);
    }
}
