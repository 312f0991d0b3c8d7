//! The debug view: each camera's latest frame with its tracked people drawn on it, as a
//! JPEG snapshot, an MJPEG stream and the page at `/` (`index.html`, served from the binary).
//!
//! In: the analytics thread offers each frame and its tracks through [`ViewTap`], but only
//! while somebody watches that camera (one hash lookup and one atomic read per frame
//! otherwise: no copy, no drawing, no encoding); the latest person result of each track,
//! from the live track table. Out: JPEGs, drawn and encoded on tokio's blocking pool, never on
//! the analytics thread; a frame several viewers ask for is drawn and encoded once.
//!
//! Owns: per camera one `watch` slot holding the latest offered frame (its receivers are the
//! viewers: the slot's receiver count is the "is anyone watching" test) and the last encoded
//! JPEG.

mod render;
mod stream;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;

use crate::types::{BBox, CameraId, Frame};

pub use render::Label;
pub use stream::{View, ViewSettings};

/// One frame as the tracker saw it.
#[derive(Debug)]
pub struct Scene {
    pub frame: Frame,
    /// Confirmed tracks matched in this frame: id and box in frame pixels.
    pub boxes: Vec<(u64, BBox)>,
}

type Slot = watch::Sender<Option<Arc<Scene>>>;

/// The analytics side of the view: where frames are offered. Shared as `Arc`.
#[derive(Debug)]
pub struct ViewTap {
    cameras: HashMap<CameraId, Slot>,
}

impl ViewTap {
    /// A slot per camera; frames of other cameras are never taken.
    pub fn new(cameras: impl IntoIterator<Item = CameraId>) -> Self {
        Self {
            cameras: cameras
                .into_iter()
                .map(|c| (c, watch::Sender::new(None)))
                .collect(),
        }
    }

    /// Whether anybody watches `camera` now. Cheap enough for every frame.
    pub fn watched(&self, camera: &str) -> bool {
        self.cameras
            .get(camera)
            .is_some_and(|slot| slot.receiver_count() > 0)
    }

    /// Replaces the camera's latest frame (call only when [`ViewTap::watched`]).
    pub fn offer(&self, scene: Scene) {
        if let Some(slot) = self.cameras.get(&*scene.frame.camera) {
            slot.send_replace(Some(Arc::new(scene)));
        }
    }

    /// A viewer of `camera`; frames are taken while it lives. `None` for an unknown camera.
    fn watch(&self, camera: &str) -> Option<watch::Receiver<Option<Arc<Scene>>>> {
        self.cameras.get(camera).map(watch::Sender::subscribe)
    }

    /// Viewers of every camera.
    fn viewers(&self) -> usize {
        self.cameras
            .values()
            .map(watch::Sender::receiver_count)
            .sum()
    }
}
