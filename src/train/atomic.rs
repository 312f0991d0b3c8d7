//! Writing a result in one step: a reader sees the old file or the new one, never half.

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
