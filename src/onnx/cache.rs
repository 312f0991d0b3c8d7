//! The export cache: the ONNX graphs the daemon serves, exported from the loaded candle model
//! at start (and on every reload) into `[model] onnx_cache_dir`, one folder per export
//! identity, and reused while that identity holds.
//!
//! An entry's identity is the weights (their sha256, or the seed of random weights), the model
//! config, [`EXPORTER_VERSION`], the precision and the attention form; its folder name is a
//! digest of them. An entry is trusted only when its `manifest.json` says exactly that
//! identity and both graph files have the sha256 the manifest records (about a second for
//! ViT-B/32's 350 MB); anything else (a missing file, a bit flip, an older exporter's
//! output, a folder cut short) is moved aside, deleted and exported again, with a log line.
//!
//! An export is written into a temporary folder inside the cache and renamed into place in
//! one step, so a crash never leaves a half entry under an entry's name; leftovers of a crash
//! (`.tmp-*`, `.stale-*` older than [`LEFTOVER_AGE`]) are deleted by the next export. Entries
//! not used lately are pruned: the last [`KEEP`] used stay.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::export::{
    self, AttentionForm, EXPORTER_VERSION, Error, ExportManifest, MANIFEST_FILE, Precision,
    WeightsSource,
};
use crate::model::{EmotionClip, EmotionClipConfig};

/// Entries kept after an export (the one in use is always among them).
pub const KEEP: usize = 3;

/// Temporary and moved-aside folders older than this are a crash's leftovers.
pub const LEFTOVER_AGE: Duration = Duration::from_secs(3600);

const TMP_PREFIX: &str = ".tmp-";
const STALE_PREFIX: &str = ".stale-";

/// What an export is made from: the identity of a cache entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportKey {
    pub exporter_version: u32,
    pub weights_sha256: Option<String>,
    pub seed: Option<u64>,
    pub model_config: EmotionClipConfig,
    pub precision: Precision,
    pub attention: AttentionForm,
}

impl ExportKey {
    pub fn new(
        source: &WeightsSource,
        config: &EmotionClipConfig,
        precision: Precision,
        attention: AttentionForm,
    ) -> Self {
        let (weights_sha256, seed) = match source {
            WeightsSource::File { sha256 } => (Some(sha256.clone()), None),
            WeightsSource::Seeded(seed) => (None, Some(*seed)),
        };
        Self {
            exporter_version: EXPORTER_VERSION,
            weights_sha256,
            seed,
            model_config: config.clone(),
            precision,
            attention,
        }
    }

    /// The weights source this key was made from.
    pub fn source(&self) -> WeightsSource {
        match (&self.weights_sha256, self.seed) {
            (Some(sha256), _) => WeightsSource::File {
                sha256: sha256.clone(),
            },
            (None, seed) => WeightsSource::Seeded(seed.unwrap_or(0)),
        }
    }

    /// The entry's folder name: precision and a digest of the whole key.
    pub fn folder_name(&self) -> String {
        let json = serde_json::to_vec(self).expect("the key serialises");
        let digest = hex::encode(Sha256::digest(&json));
        format!("emotionclip-{}-{}", self.precision.name(), &digest[..20])
    }

    /// Why `m` is not an export of this key, if it is not.
    fn mismatch(&self, m: &ExportManifest) -> Option<String> {
        if m.exporter_version != self.exporter_version {
            return Some(format!(
                "exporter version {} (this build writes {})",
                m.exporter_version, self.exporter_version
            ));
        }
        if m.precision != self.precision || m.attention != self.attention {
            return Some(format!(
                "{} / {:?} (wanted {} / {:?})",
                m.precision.name(),
                m.attention,
                self.precision.name(),
                self.attention
            ));
        }
        if m.weights_sha256 != self.weights_sha256 || m.seed != self.seed {
            return Some("exported from other weights".into());
        }
        if m.model_config != self.model_config {
            return Some("exported with another model config".into());
        }
        None
    }
}

/// How [`ExportCache::get`] found its entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Present and verified.
    Hit,
    /// Absent: exported now.
    Exported,
    /// Present but not trusted (the reason): moved aside and exported again.
    Replaced(String),
}

impl Outcome {
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Exported => "exported",
            Outcome::Replaced(_) => "re-exported",
        }
    }
}

/// A verified cache entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub dir: PathBuf,
    pub manifest: ExportManifest,
    pub outcome: Outcome,
}

impl Entry {
    pub fn frame_encoder(&self) -> PathBuf {
        self.dir.join(&self.manifest.frame_encoder.file)
    }
    pub fn temporal_encoder(&self) -> PathBuf {
        self.dir.join(&self.manifest.temporal_encoder.file)
    }
}

/// `[model] onnx_cache_dir`.
#[derive(Debug, Clone)]
pub struct ExportCache {
    dir: PathBuf,
    keep: usize,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |error| Error::Io {
        path: path.to_owned(),
        error,
    }
}

impl ExportCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            keep: KEEP,
        }
    }

    /// Keeps the last `keep` entries (at least 1) instead of [`KEEP`].
    pub fn keeping(mut self, keep: usize) -> Self {
        self.keep = keep.max(1);
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the entry of `key` lives (whether or not it exists).
    pub fn entry_dir(&self, key: &ExportKey) -> PathBuf {
        self.dir.join(key.folder_name())
    }

    /// The verified entry of `key`: the cached one, or `model` exported now (see the module
    /// docs). `model` must be the model `key` describes.
    pub fn get(&self, model: &EmotionClip, key: &ExportKey) -> Result<Entry, Error> {
        let dir = self.entry_dir(key);
        let mut outcome = Outcome::Exported;
        if dir.exists() {
            match verify(&dir, key) {
                Ok(manifest) => {
                    touch(&dir);
                    return Ok(Entry {
                        dir,
                        manifest,
                        outcome: Outcome::Hit,
                    });
                }
                Err(why) => {
                    warn!(
                        entry = %dir.display(),
                        reason = %why,
                        "ONNX export cache entry not trusted; moving it aside and exporting again"
                    );
                    self.move_aside(&dir)?;
                    outcome = Outcome::Replaced(why);
                }
            }
        }
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let tmp = self.dir.join(format!(
            "{TMP_PREFIX}{}-{}-{}",
            key.folder_name(),
            std::process::id(),
            nanos()
        ));
        let t0 = std::time::Instant::now();
        let manifest =
            match export::export(model, &key.source(), key.precision, key.attention, &tmp) {
                Ok(m) => m,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&tmp);
                    return Err(e);
                }
            };
        let _ = crate::durable::sync_dir(&tmp);
        match std::fs::rename(&tmp, &dir) {
            Ok(()) => {}
            // Another process exported the same entry meanwhile: use theirs if it holds.
            Err(_) if dir.exists() => {
                let _ = std::fs::remove_dir_all(&tmp);
                let manifest = verify(&dir, key).map_err(|why| {
                    Error::Usage(format!(
                        "{}: an entry appeared while exporting and is not valid: {why}",
                        dir.display()
                    ))
                })?;
                return Ok(Entry {
                    dir,
                    manifest,
                    outcome,
                });
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(io(&dir)(e));
            }
        }
        let _ = crate::durable::sync_dir(&self.dir);
        info!(
            entry = %dir.display(),
            took_ms = t0.elapsed().as_millis() as u64,
            "exported EmotionCLIP to ONNX"
        );
        self.prune(&dir);
        Ok(Entry {
            dir,
            manifest,
            outcome,
        })
    }

    /// Renames `dir` out of the way (so nobody trusts it again), then deletes it.
    fn move_aside(&self, dir: &Path) -> Result<(), Error> {
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        let aside = self.dir.join(format!(
            "{STALE_PREFIX}{name}-{}-{}",
            std::process::id(),
            nanos()
        ));
        std::fs::rename(dir, &aside).map_err(io(dir))?;
        if let Err(e) = std::fs::remove_dir_all(&aside) {
            warn!(folder = %aside.display(), error = %e, "cannot delete a moved-aside ONNX export");
        }
        Ok(())
    }

    /// Deletes all but the `keep` entries used last (never `current`) and old leftovers.
    fn prune(&self, current: &Path) {
        let Ok(read) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let now = SystemTime::now();
        let mut entries: Vec<(SystemTime, PathBuf)> = Vec::new();
        for e in read.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if !path.is_dir() {
                continue;
            }
            if name.starts_with(TMP_PREFIX) || name.starts_with(STALE_PREFIX) {
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| now.duration_since(t).ok())
                    .is_some_and(|age| age > LEFTOVER_AGE);
                if old {
                    let _ = std::fs::remove_dir_all(&path);
                }
                continue;
            }
            if !name.starts_with("emotionclip-") || path == current {
                continue;
            }
            let used = std::fs::metadata(path.join(MANIFEST_FILE))
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            entries.push((used, path));
        }
        entries.sort_by_key(|e| std::cmp::Reverse(e.0));
        for (_, path) in entries.into_iter().skip(self.keep.saturating_sub(1)) {
            match std::fs::remove_dir_all(&path) {
                Ok(()) => info!(entry = %path.display(), "pruned an old ONNX export"),
                Err(e) => {
                    warn!(entry = %path.display(), error = %e, "cannot prune an old ONNX export")
                }
            }
        }
    }
}

/// The manifest of the entry in `dir` when it is an export of `key` whose graph files have
/// the recorded sha256; else why not.
pub fn verify(dir: &Path, key: &ExportKey) -> Result<ExportManifest, String> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = std::fs::read(&path).map_err(|e| format!("{MANIFEST_FILE}: {e}"))?;
    let manifest: ExportManifest =
        serde_json::from_slice(&bytes).map_err(|e| format!("{MANIFEST_FILE}: {e}"))?;
    if let Some(why) = key.mismatch(&manifest) {
        return Err(format!("{MANIFEST_FILE}: {why}"));
    }
    for graph in [&manifest.frame_encoder, &manifest.temporal_encoder] {
        let file = dir.join(&graph.file);
        let digest =
            crate::digest::sha256_file(&file).map_err(|e| format!("{}: {e}", graph.file))?;
        if digest != graph.sha256 {
            return Err(format!(
                "{}: sha256 {} differs from the manifest's {}",
                graph.file,
                &digest[..12],
                &graph.sha256[..graph.sha256.len().min(12)]
            ));
        }
    }
    Ok(manifest)
}

/// Marks an entry as used now (its manifest's modification time orders the pruning).
fn touch(dir: &Path) {
    let _ = std::fs::File::options()
        .write(true)
        .open(dir.join(MANIFEST_FILE))
        .and_then(|f| f.set_modified(SystemTime::now()));
}

fn nanos() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn tiny_config() -> EmotionClipConfig {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/golden/emotionclip-tiny/config.json");
        EmotionClipConfig::from_json_file(&path).unwrap()
    }

    fn key(seed: u64, cfg: &EmotionClipConfig) -> ExportKey {
        ExportKey::new(
            &WeightsSource::Seeded(seed),
            cfg,
            Precision::F32,
            AttentionForm::Contrib,
        )
    }

    #[test]
    fn an_entry_is_reused_a_corrupt_one_re_exported_and_old_ones_pruned() {
        let cfg = tiny_config();
        let model = EmotionClip::random(&cfg, 1, &Device::Cpu).unwrap();
        let root = tempfile::tempdir().unwrap();
        let cache = ExportCache::new(root.path().join("onnx")).keeping(2);
        let k = key(1, &cfg);

        let first = cache.get(&model, &k).unwrap();
        assert_eq!(first.outcome, Outcome::Exported);
        assert!(first.frame_encoder().is_file() && first.temporal_encoder().is_file());
        let again = cache.get(&model, &k).unwrap();
        assert_eq!(again.outcome, Outcome::Hit);
        assert_eq!(again.dir, first.dir);

        // A flipped byte in a graph: not trusted, replaced.
        let graph = first.frame_encoder();
        let mut bytes = std::fs::read(&graph).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(&graph, &bytes).unwrap();
        let replaced = cache.get(&model, &k).unwrap();
        assert!(
            matches!(&replaced.outcome, Outcome::Replaced(why) if why.contains("sha256")),
            "{:?}",
            replaced.outcome
        );
        assert_eq!(cache.get(&model, &k).unwrap().outcome, Outcome::Hit);

        // A partial entry (manifest missing): replaced too.
        std::fs::remove_file(first.dir.join(MANIFEST_FILE)).unwrap();
        assert!(matches!(
            cache.get(&model, &k).unwrap().outcome,
            Outcome::Replaced(_)
        ));

        // A manifest of other weights under this key's name: not trusted.
        let other = key(2, &cfg);
        let other_model = EmotionClip::random(&cfg, 2, &Device::Cpu).unwrap();
        let o = cache.get(&other_model, &other).unwrap();
        std::fs::copy(o.dir.join(MANIFEST_FILE), first.dir.join(MANIFEST_FILE)).unwrap();
        assert!(matches!(
            cache.get(&model, &k).unwrap().outcome,
            Outcome::Replaced(why) if why.contains("other weights")
        ));

        // Leftovers of a crash are no entries; pruning keeps the last 2 used.
        std::fs::create_dir_all(cache.dir().join(".tmp-crashed")).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let third = key(3, &cfg);
        cache
            .get(&EmotionClip::random(&cfg, 3, &Device::Cpu).unwrap(), &third)
            .unwrap();
        let mut names: Vec<String> = std::fs::read_dir(cache.dir())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        let mut want = vec![k.folder_name(), third.folder_name()];
        want.sort();
        assert_eq!(
            names, want,
            "the entry used longest ago (seed 2) was pruned"
        );
    }

    #[test]
    fn the_key_names_everything_an_export_depends_on() {
        let cfg = tiny_config();
        let base = key(1, &cfg).folder_name();
        assert_eq!(base, key(1, &cfg).folder_name());
        assert_ne!(base, key(2, &cfg).folder_name());
        let mut wider = cfg.clone();
        wider.temporal.layers += 1;
        assert_ne!(base, key(1, &wider).folder_name());
        let standard = ExportKey::new(
            &WeightsSource::Seeded(1),
            &cfg,
            Precision::F32,
            AttentionForm::Standard,
        );
        assert_ne!(base, standard.folder_name());
        let file = ExportKey::new(
            &WeightsSource::File {
                sha256: "ab".repeat(32),
            },
            &cfg,
            Precision::F32,
            AttentionForm::Contrib,
        );
        assert_ne!(base, file.folder_name());
        assert_eq!(
            file.source(),
            WeightsSource::File {
                sha256: "ab".repeat(32)
            }
        );
    }
}
