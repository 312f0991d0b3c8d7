//! Window: a tracked person's clip, the last `length` sampled frames the encoder reads.
//!
//! In: the tracker's per-frame update ([`Sampler`] picks which persons to sample, on the
//! analytics thread). Out: per person, a [`Window`] owned by the encoder stage holding, per
//! sampled frame, the encoder's feature and the crop and mask it saw (never whole frames).

mod config;
mod ring;
mod sampler;

pub use config::WindowConfig;
pub use ring::{Slot, Window, WindowFrames};
pub use sampler::Sampler;
