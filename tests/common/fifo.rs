//! A FIFO that nobody writes: opening it for reading blocks until a writer comes, as a hung
//! network mount or a wedged device would. The real fault for "a source that blocks in its
//! open", made with coreutils' `mkfifo`.

use std::path::{Path, PathBuf};

/// Makes the FIFO `dir/name`; returns its path.
pub fn make(dir: &Path, name: &str) -> PathBuf {
    let fifo = dir.join(name);
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo {}: {made}", fifo.display());
    fifo
}
