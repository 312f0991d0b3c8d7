//! Pins: a training run names the windows it reads in `DIR/pins/`, and the daemon's quota
//! rotation keeps those (deleting other old ones first). A pin is one JSON file per run
//! output folder (`{"owner", "created", "ids"}`), written when the run starts or resumes and
//! removed when it completes; a run stopped for the night keeps it, so `--resume` finds its
//! windows the next night. A pin not renewed for [`PIN_MAX_AGE`] (a run abandoned) holds
//! nothing and is removed by the next writer that looks.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::CaptureError;
use super::format::PINS;
use crate::durable::{self, PRIVATE_MODE};

/// How long a pin holds without being renewed.
pub const PIN_MAX_AGE: Duration = Duration::from_secs(3 * 24 * 3600);

#[derive(Debug, Serialize, Deserialize)]
struct PinFile {
    /// The run's output folder.
    owner: String,
    created: String,
    ids: Vec<String>,
}

/// The pin of one training run.
#[derive(Debug)]
pub struct Pin {
    path: PathBuf,
}

impl Pin {
    /// Pins `ids` of the dataset in `dir` for the run writing to `owner` (replacing that
    /// run's earlier pin).
    pub fn hold<'a>(
        dir: &Path,
        owner: &Path,
        ids: impl IntoIterator<Item = &'a str>,
    ) -> Result<Pin, CaptureError> {
        let pins = dir.join(PINS);
        std::fs::create_dir_all(&pins).map_err(CaptureError::io(&pins))?;
        let owner = std::path::absolute(owner).unwrap_or_else(|_| owner.to_owned());
        let name = crate::model::weights::fnv1a(owner.as_os_str().as_encoded_bytes());
        let path = pins.join(format!("{name:016x}.json"));
        let file = PinFile {
            owner: owner.display().to_string(),
            created: crate::types::now_rfc3339(),
            ids: ids.into_iter().map(str::to_owned).collect(),
        };
        let json = serde_json::to_vec(&file).expect("a pin serialises");
        durable::replace_bytes(&path, PRIVATE_MODE, &json).map_err(CaptureError::io(&path))?;
        debug!(pin = %path.display(), windows = file.ids.len(), "capture windows pinned");
        Ok(Pin { path })
    }

    /// The run is complete: its windows may go.
    pub fn release(self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            warn!(pin = %self.path.display(), error = %e, "cannot remove a capture pin");
        }
    }
}

/// The ids pinned in the dataset `dir`; pins older than [`PIN_MAX_AGE`] are removed.
pub(crate) fn pinned(dir: &Path) -> HashSet<String> {
    let mut ids = HashSet::new();
    let Ok(entries) = std::fs::read_dir(dir.join(PINS)) else {
        return ids;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let age = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .unwrap_or_default();
        if age > PIN_MAX_AGE {
            warn!(pin = %path.display(), "a capture pin not renewed for 3 days was removed");
            let _ = std::fs::remove_file(&path);
            continue;
        }
        match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<PinFile>(&b).map_err(|e| e.to_string()))
        {
            Ok(pin) => ids.extend(pin.ids),
            Err(e) => debug!(pin = %path.display(), error = %e, "an unreadable pin is ignored"),
        }
    }
    ids
}
