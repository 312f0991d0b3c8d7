//! Files that survive a crash or a power cut: written beside their final name, flushed to the
//! disk, renamed over it, and the folder flushed, so that after a power cut a reader finds
//! the old file or the new one, never a truncated or empty one (which a rename without the
//! flushes can leave on ext4 and XFS). Files holding images of people or model weights get
//! mode 0640 whatever the process umask (readable by the service's group, never by others).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The mode of capture samples, models and training outputs.
pub const PRIVATE_MODE: u32 = 0o640;

/// Writes `path` in one step: `write` fills a temporary file beside it (`.NAME.tmp`), which
/// is given `mode`, flushed, and renamed over `path`; then the folder is flushed. On an
/// error the temporary file is removed and `path` is untouched.
pub fn replace<E: From<std::io::Error>>(
    path: &Path,
    mode: u32,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let tmp = temporary(path);
    let result = write(&tmp).and_then(|()| {
        set_mode(&tmp, mode)?;
        sync_file(&tmp)?;
        std::fs::rename(&tmp, path)?;
        sync_parent(path)?;
        Ok(())
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// [`replace`] with `bytes` as the content.
pub fn replace_bytes(path: &Path, mode: u32, bytes: &[u8]) -> std::io::Result<()> {
    replace(path, mode, |tmp| {
        let mut f = File::create(tmp)?;
        f.write_all(bytes)
    })
}

/// Where [`replace`] writes before the rename.
pub fn temporary(path: &Path) -> PathBuf {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    path.with_file_name(format!(".{name}.tmp"))
}

/// Flushes a file's data and metadata to the disk.
pub fn sync_file(path: &Path) -> std::io::Result<()> {
    File::open(path)?.sync_all()
}

/// Flushes a folder (its entries: creations, renames, deletions) to the disk.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Flushes the folder holding `path`.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => sync_dir(p),
        _ => sync_dir(Path::new(".")),
    }
}

/// Sets a file's permission bits.
pub fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_file_has_the_mode_whatever_the_umask_and_a_failure_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        replace_bytes(&path, PRIVATE_MODE, b"old").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        let failed: std::io::Result<()> = replace(&path, PRIVATE_MODE, |tmp| {
            std::fs::write(tmp, b"half")?;
            Err(std::io::Error::other("disk full"))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert!(!temporary(&path).exists());
        replace_bytes(&path, 0o600, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
