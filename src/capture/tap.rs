//! The encoder stage's hook: counts each track's sampled frames and, when a track's new
//! window is due for capture (`[capture] every`), hands the crops of that window to the
//! writer.

use std::collections::HashMap;

use super::stage::{CaptureSender, CapturedWindow};
use crate::model::{LiveEncoder, PersonSample, TrackKey, WindowUpdate};

/// Per-track capture cadence, owned by the encoder thread.
pub struct CaptureTap {
    sender: CaptureSender,
    /// Sampled frames of each track since its last capture.
    since: HashMap<TrackKey, usize>,
}

impl CaptureTap {
    pub fn new(sender: CaptureSender) -> Self {
        Self {
            sender,
            since: HashMap::new(),
        }
    }

    /// After `encoder` took `batch` and produced `updates`: counts the batch's frames per
    /// track and queues the window of each updated track that is due. Returns how many
    /// windows were queued.
    pub fn after_push(
        &mut self,
        batch: &[PersonSample],
        updates: &[WindowUpdate],
        encoder: &LiveEncoder,
        model: &str,
    ) -> usize {
        for s in batch {
            *self
                .since
                .entry((s.frame.camera.clone(), s.track_id))
                .or_default() += 1;
        }
        let mut queued = 0;
        for u in updates {
            let key = (u.camera.clone(), u.track_id);
            let since = self.since.entry(key.clone()).or_default();
            if *since < self.sender.every() {
                continue;
            }
            let Some(frames) = encoder.window_frames(&key) else {
                continue;
            };
            *since = 0;
            queued += usize::from(self.sender.offer(CapturedWindow {
                camera: u.camera.clone(),
                track_id: u.track_id,
                model: model.to_owned(),
                frames,
            }));
        }
        queued
    }

    /// Forgets an ended track.
    pub fn end_track(&mut self, key: &TrackKey) {
        self.since.remove(key);
    }
}
