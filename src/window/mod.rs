//! Window: per confirmed track, a ring of the last sampled entries (box, frame, timestamps),
//! which the emotion model reads as its 8-frame clip.

mod config;
mod store;

pub use config::WindowConfig;
pub use store::{Entry, Windows};
