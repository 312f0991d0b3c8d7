//! On-site capture: per-track windows of encoder crops, exactly as the encoder saw them,
//! stored in a local dataset folder for later training (nothing leaves the box).
//!
//! The encoder stage hands due windows through its tap ([`CaptureSender`] is its
//! `WindowTap`) over a bounded channel to a writer thread ([`Capture`]) that PNG-encodes and stores them ([`DatasetWriter`]) under a disk
//! quota; [`Dataset`] reads them back. The format is described in [`format`].

mod config;
mod dataset;
mod error;
pub mod format;
mod pins;
mod stage;
mod writer;

pub use config::CaptureConfig;
pub use dataset::{Dataset, read_manifest};
pub use error::CaptureError;
pub use format::{CropSpec, FORMAT, FrameMeta, Manifest, SampleMeta};
pub use pins::Pin;
pub use stage::{Capture, CaptureSender, CaptureStats, CapturedWindow};
pub use writer::{DatasetWriter, WindowRecord, Written};

#[cfg(test)]
mod tests;
