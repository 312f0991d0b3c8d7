//! Writing a result in one step: a reader sees the old file or the new one, never half, even
//! after a power cut (see [`crate::durable`]); results get mode 0640 whatever the umask.

use std::path::Path;

use crate::durable::{self, PRIVATE_MODE};

/// Writes `path` through `write` to a temporary file beside it (`.NAME.tmp`), flushed and
/// renamed over it when complete, so a reader (a daemon reloading the student) never sees
/// half a file, and a power cut leaves the old one or the new one.
pub(crate) fn write_atomic(
    path: &Path,
    write: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    durable::replace(path, PRIVATE_MODE, write)
        .map_err(|e| e.context(format!("writing {}", path.display())))
}
