//! One person's window: the last `length` sampled frames, as the encoder saw them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::SystemTime;

use crate::model::preprocess::EncoderCrop;
use crate::types::BBox;

/// One sampled frame of a window. `F` is the encoder's per-frame feature.
#[derive(Debug, Clone)]
pub struct Slot<F> {
    pub feature: F,
    /// The encoder input, kept so a new model can re-encode the window (reload) and capture
    /// can store exactly what the encoder saw.
    pub crop: Arc<EncoderCrop>,
    /// Wall time at which the frame left the decoder.
    pub wall: SystemTime,
    /// The person's box in frame pixels.
    pub bbox: BBox,
    pub frame_seq: u64,
}

/// A window's frames without their features (what capture stores).
#[derive(Debug, Clone)]
pub struct WindowFrames {
    pub crops: Vec<Arc<EncoderCrop>>,
    pub walls: Vec<SystemTime>,
    pub bboxes: Vec<BBox>,
    pub frame_seqs: Vec<u64>,
    pub frame_size: (u32, u32),
}

/// The last `length` slots of a person, oldest first, and the update cadence.
#[derive(Debug)]
pub struct Window<F> {
    slots: VecDeque<Slot<F>>,
    length: usize,
    /// Slots pushed since the last update (embedding) of this window.
    since_update: usize,
    /// Size of the frames the boxes are in (the newest frame's).
    frame_size: (u32, u32),
}

impl<F> Window<F> {
    pub fn new(length: usize) -> Self {
        let length = length.max(1);
        Self {
            slots: VecDeque::with_capacity(length),
            length,
            since_update: 0,
            frame_size: (0, 0),
        }
    }

    /// Adds the newest frame, dropping the oldest when full.
    pub fn push(&mut self, slot: Slot<F>, frame_size: (u32, u32)) {
        if self.slots.len() == self.length {
            self.slots.pop_front();
        }
        self.slots.push_back(slot);
        self.since_update += 1;
        self.frame_size = frame_size;
    }

    pub fn is_full(&self) -> bool {
        self.slots.len() == self.length
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Whether the window is due for an embedding: as soon as it first fills, then every
    /// `update_every` new frames.
    pub fn is_due(&self, update_every: usize) -> bool {
        let first = self.since_update == self.length;
        self.is_full() && (first || self.since_update >= update_every.max(1))
    }

    /// Restarts the cadence (an embedding was made).
    pub fn mark_updated(&mut self) {
        self.since_update = 0;
    }

    pub fn slots(&self) -> impl ExactSizeIterator<Item = &Slot<F>> {
        self.slots.iter()
    }

    pub fn slots_mut(&mut self) -> impl ExactSizeIterator<Item = &mut Slot<F>> {
        self.slots.iter_mut()
    }

    /// Wall time of the first and the last frame.
    pub fn span(&self) -> (SystemTime, SystemTime) {
        let wall = |s: Option<&Slot<F>>| s.map_or(SystemTime::UNIX_EPOCH, |s| s.wall);
        (wall(self.slots.front()), wall(self.slots.back()))
    }

    /// The person's box in the newest frame, and that frame's size.
    pub fn newest_box(&self) -> Option<(BBox, (u32, u32))> {
        self.slots.back().map(|s| (s.bbox, self.frame_size))
    }

    /// The frames without features, oldest first.
    pub fn frames(&self) -> WindowFrames {
        WindowFrames {
            crops: self.slots.iter().map(|s| Arc::clone(&s.crop)).collect(),
            walls: self.slots.iter().map(|s| s.wall).collect(),
            bboxes: self.slots.iter().map(|s| s.bbox).collect(),
            frame_seqs: self.slots.iter().map(|s| s.frame_seq).collect(),
            frame_size: self.frame_size,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn slot(n: u64) -> Slot<u64> {
        Slot {
            feature: n,
            crop: Arc::new(EncoderCrop {
                size: 2,
                rgb: vec![n as u8; 12],
                mask: vec![1; 4],
            }),
            wall: SystemTime::UNIX_EPOCH + Duration::from_millis(125 * n),
            bbox: BBox::new(n as f32, 0.0, n as f32 + 1.0, 2.0),
            frame_seq: n,
        }
    }

    #[test]
    fn keeps_the_last_length_frames_and_publishes_when_full_then_every_n() {
        let mut w = Window::new(8);
        let mut due = Vec::new();
        for n in 0..16 {
            w.push(slot(n), (96, 80));
            if w.is_due(4) {
                due.push(n);
                w.mark_updated();
            }
        }
        assert_eq!(due, [7, 11, 15]);
        let seqs: Vec<u64> = w.slots().map(|s| s.frame_seq).collect();
        assert_eq!(seqs, (8..16).collect::<Vec<_>>());
        assert_eq!(w.newest_box().unwrap().0, slot(15).bbox);
        let frames = w.frames();
        assert_eq!(frames.frame_seqs, seqs);
        assert_eq!(frames.frame_size, (96, 80));
        assert_eq!(w.span().1, slot(15).wall);
    }
}
