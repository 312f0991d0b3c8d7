//! Analytics: the detect -> track -> window-sampling loop, one thread for every camera.
//!
//! In: frames from every camera's queue (ingest's [`FrameHub`](crate::ingest::FrameHub)).
//! Out: [`PersonSample`](crate::types::PersonSample)s and track endings to the encoder stage;
//! track `begin` events (and `end` events when no encoder runs) to the results.

mod worker;

pub use worker::{Analytics, Pipeline};
