//! The hook through which windows leave the encoder besides the read-out: capture
//! implements [`WindowTap`]; the encoder calls it and knows nothing of capture.

use crate::types::CameraId;
use crate::window::WindowFrames;

/// A person's current window, handed to a tap.
#[derive(Debug, Clone)]
pub struct TappedWindow {
    pub camera: CameraId,
    pub track_id: u64,
    /// The name of the model that encoded it.
    pub model: String,
    pub frames: WindowFrames,
}

/// Takes windows from the encoder thread. Must never block it.
pub trait WindowTap: Send {
    /// Sampled frames of a person between two windows handed over.
    fn every(&self) -> usize;
    /// Takes a window; returns whether it was kept (a full queue drops and counts it).
    fn offer(&self, window: TappedWindow) -> bool;
}
