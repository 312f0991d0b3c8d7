//! `affectd train`: adaptation on site, in the daemon's own binary (no Python, no PyTorch).
//!
//! - `distill`: a smaller, faster student encoder learnt from the full candle EmotionCLIP
//!   (the teacher) on windows captured at the site (`[capture]`).
//! - `heads`: linear emotion and valence/arousal heads fitted on frozen embeddings.

pub mod data;
pub mod distill;
pub mod distill_cli;
pub mod heads;
pub mod loss;
pub mod optim;
mod plot;
pub mod report;
pub mod student;
pub mod teacher;

use std::path::Path;

use anyhow::Context;

/// Writes `path` through `write` to a temporary file beside it (`.NAME.tmp`), renamed over
/// it when complete, so a reader (a daemon reloading the student) never sees half a file.
pub(crate) fn write_atomic(
    path: &Path,
    write: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!("writing {}", path.display())));
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}
