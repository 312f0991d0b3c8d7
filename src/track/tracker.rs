//! The tracker: lifecycle tentative -> confirmed -> lost -> removed.

use std::time::SystemTime;

use crate::types::{BBox, Detection};

use super::assign::{FORBIDDEN, assign};
use super::config::TrackConfig;
use super::kalman::Kalman;

/// A track's id: unique per camera (per [`Tracker`]), never reused, given on confirmation.
pub type TrackId = u64;

/// A confirmed track as seen in the current frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Track {
    pub id: TrackId,
    /// The filtered box (Kalman state) in frame pixels.
    pub bbox: BBox,
    /// Index of this frame's detection matched to the track.
    pub detection: Option<usize>,
    /// Score of the last matched detection.
    pub score: f32,
    /// Frames since the track was created.
    pub age: u32,
    /// Frames in which the track was reported active (confirmed and matched), this one
    /// included: 1 on its first.
    pub sightings: u32,
    /// When the track's first detection was seen.
    pub first_seen: SystemTime,
}

/// A track that ended: what a track-end event reports.
#[derive(Debug, Clone, PartialEq)]
pub struct EndedTrack {
    pub id: TrackId,
    /// The last matched detection's box.
    pub bbox: BBox,
    pub first_seen: SystemTime,
    /// When it was last matched to a detection.
    pub last_seen: SystemTime,
}

/// What one frame changed.
#[derive(Debug, Clone, Default)]
pub struct TrackUpdate {
    /// Confirmed tracks matched to a detection in this frame.
    pub active: Vec<Track>,
    /// Tracks confirmed in this frame.
    pub started: Vec<TrackId>,
    /// Tracks that ended in this frame (unseen for longer than `lost_frames`).
    pub ended: Vec<EndedTrack>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Tentative,
    Confirmed,
    Lost,
}

#[derive(Debug, Clone)]
struct Entry {
    id: Option<TrackId>,
    kf: Kalman,
    state: State,
    hits: u32,
    missed: u32,
    age: u32,
    sightings: u32,
    score: f32,
    detection: Option<usize>,
    last_box: BBox,
    first_seen: SystemTime,
    last_seen: SystemTime,
}

impl Entry {
    fn ended(&self) -> Option<EndedTrack> {
        Some(EndedTrack {
            id: self.id?,
            bbox: self.last_box,
            first_seen: self.first_seen,
            last_seen: self.last_seen,
        })
    }
}

/// ByteTrack-style tracker for one camera.
#[derive(Debug)]
pub struct Tracker {
    cfg: TrackConfig,
    tracks: Vec<Entry>,
    next_id: TrackId,
    cost: Vec<f64>,
}

impl Tracker {
    pub fn new(cfg: TrackConfig) -> Tracker {
        Tracker {
            cfg,
            tracks: Vec::new(),
            next_id: 1,
            cost: Vec::new(),
        }
    }

    /// Live tracks (tentative, confirmed and lost).
    pub fn len(&self) -> usize {
        self.tracks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracks.is_empty()
    }

    /// Ends every track (end of stream); returns the confirmed ones.
    pub fn finish(&mut self) -> Vec<EndedTrack> {
        self.tracks.drain(..).filter_map(|t| t.ended()).collect()
    }

    /// Advances one frame with its detections (frame pixels) seen at `at` (the frame's wall
    /// time). Detections with non-finite values or empty boxes are ignored.
    pub fn update(&mut self, dets: &[Detection], at: SystemTime) -> TrackUpdate {
        let mut out = TrackUpdate::default();
        for t in &mut self.tracks {
            if t.state == State::Lost {
                t.kf.freeze_height();
            }
            t.kf.predict();
            t.age += 1;
            t.detection = None;
        }
        let valid = |d: &Detection| {
            d.score.is_finite()
                && [d.bbox.x1, d.bbox.y1, d.bbox.x2, d.bbox.y2]
                    .iter()
                    .all(|v| v.is_finite())
                && d.bbox.area() > 0.0
        };
        let mut high: Vec<usize> = Vec::new();
        let mut low: Vec<usize> = Vec::new();
        for (i, d) in dets.iter().enumerate() {
            if !valid(d) {
                continue;
            }
            if d.score >= self.cfg.high_score {
                high.push(i);
            } else if d.score >= self.cfg.low_score {
                low.push(i);
            }
        }

        // Stage 1: confirmed and lost tracks take high detections.
        let pool: Vec<usize> = (0..self.tracks.len())
            .filter(|&t| self.tracks[t].state != State::Tentative)
            .collect();
        let unmatched_high = self.associate(&pool, &high, dets, self.cfg.match_iou);
        // Stage 2: confirmed tracks still unmatched (not lost ones) take low detections.
        let pool: Vec<usize> = (0..self.tracks.len())
            .filter(|&t| {
                self.tracks[t].state == State::Confirmed && self.tracks[t].detection.is_none()
            })
            .collect();
        self.associate(&pool, &low, dets, self.cfg.low_match_iou);
        // Stage 3: tentative tracks take what is left of the high detections.
        let pool: Vec<usize> = (0..self.tracks.len())
            .filter(|&t| self.tracks[t].state == State::Tentative)
            .collect();
        let fresh = self.associate(&pool, &unmatched_high, dets, self.cfg.tentative_match_iou);

        // Lifecycle.
        let (confirm, lost_frames) = (self.cfg.confirm_frames, self.cfg.lost_frames);
        let mut next_id = self.next_id;
        self.tracks.retain_mut(|t| {
            if t.detection.is_some() {
                t.hits += 1;
                t.missed = 0;
                t.last_seen = at;
                if t.state == State::Lost || (t.state == State::Tentative && t.hits >= confirm) {
                    if t.id.is_none() {
                        t.id = Some(next_id);
                        out.started.push(next_id);
                        next_id += 1;
                    }
                    t.state = State::Confirmed;
                }
                return true;
            }
            t.missed += 1;
            match t.state {
                State::Tentative => false,
                State::Confirmed | State::Lost => {
                    t.state = State::Lost;
                    if t.missed > lost_frames {
                        out.ended.extend(t.ended());
                        false
                    } else {
                        true
                    }
                }
            }
        });
        self.next_id = next_id;

        // New tentative tracks from unmatched confident detections.
        for i in fresh {
            if self.tracks.len() >= self.cfg.max_tracks {
                break;
            }
            let d = &dets[i];
            if d.score < self.cfg.new_track_score {
                continue;
            }
            let mut t = Entry {
                id: None,
                kf: Kalman::new(&d.bbox),
                state: State::Tentative,
                hits: 1,
                missed: 0,
                age: 0,
                sightings: 0,
                score: d.score,
                detection: Some(i),
                last_box: d.bbox,
                first_seen: at,
                last_seen: at,
            };
            if confirm <= 1 {
                t.id = Some(self.next_id);
                t.state = State::Confirmed;
                out.started.push(self.next_id);
                self.next_id += 1;
            }
            self.tracks.push(t);
        }

        out.active = self
            .tracks
            .iter_mut()
            .filter(|t| t.state == State::Confirmed && t.detection.is_some())
            .filter_map(|t| {
                t.sightings += 1;
                Some(Track {
                    id: t.id?,
                    bbox: t.kf.bbox(),
                    detection: t.detection,
                    score: t.score,
                    age: t.age,
                    sightings: t.sightings,
                    first_seen: t.first_seen,
                })
            })
            .collect();
        out
    }

    /// Optimally matches `tracks` to `cands` (indices into `dets`) on 1 - IoU with a minimum
    /// IoU; matched tracks are corrected. Returns the unmatched candidates.
    fn associate(
        &mut self,
        tracks: &[usize],
        cands: &[usize],
        dets: &[Detection],
        min_iou: f32,
    ) -> Vec<usize> {
        if tracks.is_empty() || cands.is_empty() {
            return cands.to_vec();
        }
        self.cost.clear();
        for &t in tracks {
            let pred = self.tracks[t].kf.bbox();
            for &c in cands {
                let iou = pred.iou(&dets[c].bbox);
                self.cost.push(if iou >= min_iou {
                    1.0 - iou as f64
                } else {
                    FORBIDDEN
                });
            }
        }
        let matches = assign(&self.cost, tracks.len(), cands.len());
        let mut taken = vec![false; cands.len()];
        for (k, m) in matches.into_iter().enumerate() {
            if let Some(j) = m {
                let t = &mut self.tracks[tracks[k]];
                let d = &dets[cands[j]];
                t.kf.update(&d.bbox);
                t.detection = Some(cands[j]);
                t.score = d.score;
                t.last_box = d.bbox;
                taken[j] = true;
            }
        }
        cands
            .iter()
            .zip(taken)
            .filter(|(_, t)| !t)
            .map(|(c, _)| *c)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    const T0: SystemTime = SystemTime::UNIX_EPOCH;

    fn person(x: f32, y: f32, score: f32) -> Detection {
        Detection {
            bbox: BBox::new(x, y, x + 40.0, y + 100.0),
            score,
        }
    }

    fn ids_by_x(u: &TrackUpdate, dets: &[Detection]) -> Vec<(f32, TrackId)> {
        let mut v: Vec<_> = u
            .active
            .iter()
            .map(|t| (dets[t.detection.unwrap()].bbox.x1, t.id))
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    }

    #[test]
    fn tentative_tracks_need_confirm_frames_and_a_blip_gets_no_id() {
        let mut t = Tracker::new(TrackConfig::default());
        let blip = [person(500.0, 0.0, 0.9)];
        assert!(t.update(&blip, T0).active.is_empty());
        assert!(t.update(&[], T0).active.is_empty());
        assert!(t.is_empty(), "an unconfirmed track dies on its first miss");
        for f in 0..3 {
            let u = t.update(&[person(10.0 * f as f32, 0.0, 0.9)], T0);
            assert_eq!(u.active.len(), usize::from(f == 2), "frame {f}");
        }
        let u = t.update(&[person(30.0, 0.0, 0.9)], T0);
        assert_eq!(u.active[0].id, 1, "ids start at 1 and the blip used none");
    }

    #[test]
    fn crossing_paths_keep_their_ids() {
        let mut t = Tracker::new(TrackConfig::default());
        let (mut right, mut left) = (None, None);
        for f in 0..40 {
            let xa = 10.0 * f as f32; // walks right
            let xb = 400.0 - 10.0 * f as f32; // walks left
            // When they overlap, only the front person (A) is detected.
            let dets = if (xa - xb).abs() < 30.0 {
                vec![person(xa, 50.0, 0.9)]
            } else {
                vec![person(xa, 50.0, 0.9), person(xb, 52.0, 0.8)]
            };
            let u = t.update(&dets, T0);
            if dets.len() == 2 && u.active.len() == 2 {
                let by_x = ids_by_x(&u, &dets);
                // Before crossing A is on the left; after, on the right.
                let (a, b) = if xa < xb {
                    (by_x[0].1, by_x[1].1)
                } else {
                    (by_x[1].1, by_x[0].1)
                };
                assert_eq!(*right.get_or_insert(a), a, "frame {f}: A changed id");
                assert_eq!(*left.get_or_insert(b), b, "frame {f}: B changed id");
            }
        }
        assert_ne!(right, left);
        assert!(right.is_some());
    }

    #[test]
    fn an_occlusion_of_k_frames_keeps_the_id() {
        let cfg = TrackConfig::default();
        let mut t = Tracker::new(cfg.clone());
        let mut id = None;
        for f in 0..60 {
            let x = 5.0 * f as f32;
            // Hidden behind a pillar for 12 frames.
            let dets = if (20..32).contains(&f) {
                vec![]
            } else {
                vec![person(x, 100.0, 0.85)]
            };
            let u = t.update(&dets, T0);
            assert!(u.ended.is_empty(), "frame {f}");
            if let Some(tr) = u.active.first() {
                assert_eq!(*id.get_or_insert(tr.id), tr.id, "frame {f}");
            } else {
                assert!(f < 2 || (20..32).contains(&f), "frame {f} lost the person");
            }
        }
    }

    #[test]
    fn reappearing_after_the_buffer_gets_a_new_id_and_ids_are_never_reused() {
        let cfg = TrackConfig {
            lost_frames: 5,
            ..TrackConfig::default()
        };
        let mut t = Tracker::new(cfg);
        let mut seen = Vec::new();
        let mut ended = Vec::new();
        for f in 0..40 {
            // Present in 0..10, gone 10..20, back 20..40 at the same place.
            let dets = if (10..20).contains(&f) {
                vec![]
            } else {
                vec![person(100.0, 100.0, 0.9)]
            };
            let u = t.update(&dets, T0 + Duration::from_secs(f));
            ended.extend(u.ended);
            for tr in u.active {
                if seen.last() != Some(&tr.id) {
                    seen.push(tr.id);
                }
            }
        }
        assert_eq!(seen, vec![1, 2]);
        // The end event carries the last box and the times the person was first and last seen.
        assert_eq!(
            ended,
            vec![EndedTrack {
                id: 1,
                bbox: person(100.0, 100.0, 0.9).bbox,
                first_seen: T0,
                last_seen: T0 + Duration::from_secs(9),
            }]
        );
        assert_eq!(t.finish().iter().map(|e| e.id).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn low_score_detections_keep_tracks_alive_but_start_none() {
        let mut t = Tracker::new(TrackConfig::default());
        for f in 0..5 {
            t.update(&[person(2.0 * f as f32, 0.0, 0.9)], T0);
        }
        // The person is partly occluded: score drops to 0.3 (second-stage match).
        for f in 5..40 {
            let u = t.update(
                &[person(2.0 * f as f32, 0.0, 0.3), person(600.0, 0.0, 0.3)],
                T0,
            );
            assert_eq!(u.active.len(), 1, "frame {f}");
            assert_eq!(u.active[0].id, 1);
            assert_eq!(u.active[0].detection, Some(0));
        }
        assert_eq!(t.len(), 1, "low detections start no track");
    }

    #[test]
    fn malformed_detections_are_ignored() {
        let mut t = Tracker::new(TrackConfig::default());
        let bad = [
            Detection {
                bbox: BBox::new(f32::NAN, 0.0, 10.0, 10.0),
                score: 0.9,
            },
            Detection {
                bbox: BBox::new(5.0, 5.0, 5.0, 50.0),
                score: 0.9,
            },
            person(0.0, 0.0, f32::INFINITY),
        ];
        for _ in 0..5 {
            assert!(t.update(&bad, T0).active.is_empty());
        }
        assert!(t.is_empty());
    }

    #[test]
    fn max_tracks_bounds_the_tracker() {
        let cfg = TrackConfig {
            max_tracks: 3,
            ..TrackConfig::default()
        };
        let mut t = Tracker::new(cfg);
        let dets: Vec<_> = (0..10).map(|i| person(60.0 * i as f32, 0.0, 0.9)).collect();
        for _ in 0..5 {
            t.update(&dets, T0);
        }
        assert_eq!(t.len(), 3);
    }
}
