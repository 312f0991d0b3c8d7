//! The one table of per-person state on the encoder thread: each tracked person's window,
//! its smoothing and its capture cadence, in one entry keyed by (camera, track id), so that a
//! track's end frees everything at once.

use std::collections::HashMap;

use candle_core::Tensor;

use crate::readout::Ema;
use crate::types::TrackKey;
use crate::window::Window;

/// Everything the encoder stage holds for one person.
#[derive(Debug)]
pub struct Person {
    /// The last `video_len` sampled frames with their features.
    pub window: Window<Tensor>,
    /// Moving average of the read-out; `None` until the first window (and after a reload).
    pub ema: Option<Ema>,
    /// Frames pushed since this person's window was last handed to capture.
    pub capture_since: usize,
}

/// Persons by (camera, track id), at most `max_per_camera` per camera.
#[derive(Debug)]
pub struct Persons {
    map: HashMap<TrackKey, Person>,
    window_length: usize,
    max_per_camera: usize,
    refused: u64,
}

impl Persons {
    pub fn new(window_length: usize, max_per_camera: usize) -> Self {
        Self {
            map: HashMap::new(),
            window_length,
            max_per_camera: max_per_camera.max(1),
            refused: 0,
        }
    }

    /// Whether a sample of `key` may be kept: its person exists, or its camera has room for
    /// one more. A refusal is counted.
    pub fn admit(&mut self, key: &TrackKey) -> bool {
        if self.map.contains_key(key) {
            return true;
        }
        let held = self.map.keys().filter(|k| k.0 == key.0).count();
        let room = held < self.max_per_camera;
        if !room {
            self.refused += 1;
        }
        room
    }

    /// The person of `key`, created with an empty window if new.
    pub fn entry(&mut self, key: &TrackKey) -> &mut Person {
        let length = self.window_length;
        self.map.entry(key.clone()).or_insert_with(|| Person {
            window: Window::new(length),
            ema: None,
            capture_since: 0,
        })
    }

    pub fn get(&self, key: &TrackKey) -> Option<&Person> {
        self.map.get(key)
    }

    pub fn get_mut(&mut self, key: &TrackKey) -> Option<&mut Person> {
        self.map.get_mut(key)
    }

    /// Removes a person (its track ended), returning what was held.
    pub fn remove(&mut self, key: &TrackKey) -> Option<Person> {
        self.map.remove(key)
    }

    /// Every person, in an order that stays the same while the table is not changed.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Person> {
        self.map.values_mut()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Samples refused because their camera was at `max_per_camera`.
    pub fn refused(&self) -> u64 {
        self.refused
    }
}
