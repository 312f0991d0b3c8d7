//! Which tracked persons get a new window frame: every `stride`-th frame a track is seen,
//! once it is `min_track_age` frames old. Stateless: the tracker counts each track's
//! sightings, so nothing here outlives a track.

use crate::track::{TrackId, TrackUpdate};
use crate::types::{BBox, Detection};

use super::config::WindowConfig;

/// Picks the persons to sample from one frame's tracker output.
#[derive(Debug, Clone)]
pub struct Sampler {
    stride: u32,
    min_track_age: u32,
}

impl Sampler {
    pub fn new(cfg: &WindowConfig) -> Self {
        Self {
            stride: cfg.stride.max(1),
            min_track_age: cfg.min_track_age,
        }
    }

    /// The tracks of `update` to sample in this frame, each with the box it contributes:
    /// the matched detection's (what the detector saw), else the filtered one.
    pub fn pick(&self, update: &TrackUpdate, dets: &[Detection]) -> Vec<(TrackId, BBox)> {
        update
            .active
            .iter()
            .filter(|t| t.age >= self.min_track_age)
            .filter(|t| t.sightings.saturating_sub(1) % self.stride == 0)
            .map(|t| {
                let bbox = t
                    .detection
                    .and_then(|i| dets.get(i))
                    .map_or(t.bbox, |d| d.bbox);
                (t.id, bbox)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::track::Track;

    fn track(id: TrackId, age: u32, sightings: u32) -> Track {
        Track {
            id,
            bbox: BBox::new(0.0, 0.0, 1.0, 1.0),
            detection: Some(0),
            score: 0.9,
            age,
            sightings,
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
    fn every_stride_th_sighting_with_the_detection_box() {
        let sampler = Sampler::new(&WindowConfig {
            stride: 3,
            ..WindowConfig::default()
        });
        let picked: Vec<u32> = (1..=10)
            .filter(|&n| {
                let up = TrackUpdate {
                    active: vec![track(1, n, n)],
                    ..Default::default()
                };
                !sampler.pick(&up, &[det(n as f32)]).is_empty()
            })
            .collect();
        assert_eq!(picked, [1, 4, 7, 10]);
        let up = TrackUpdate {
            active: vec![track(1, 0, 1)],
            ..Default::default()
        };
        // The detection's box, not the filtered one.
        assert_eq!(sampler.pick(&up, &[det(5.0)]), [(1, det(5.0).bbox)]);
    }

    #[test]
    fn young_tracks_are_not_sampled() {
        let sampler = Sampler::new(&WindowConfig {
            min_track_age: 2,
            ..WindowConfig::default()
        });
        let up = TrackUpdate {
            active: vec![track(1, 1, 1), track(2, 2, 1)],
            ..Default::default()
        };
        let ids: Vec<TrackId> = sampler.pick(&up, &[det(0.0)]).iter().map(|p| p.0).collect();
        assert_eq!(ids, [2]);
    }
}
