//! Reading a capture dataset: the manifest, the samples the index names, their crops.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use tracing::{debug, warn};

use super::CaptureError;
use super::format::{
    self, FORMAT, INDEX, MANIFEST, Manifest, SAMPLES, SampleMeta, id_of_file, meta_path,
    sample_paths,
};
use crate::model::preprocess::EncoderCrop;

/// An opened capture dataset (read-only view).
#[derive(Debug)]
pub struct Dataset {
    dir: PathBuf,
    manifest: Manifest,
    samples: Vec<SampleMeta>,
    /// Index lines that were skipped (unparseable, of another shape, or naming missing
    /// files), as they were.
    bad_lines: Vec<String>,
    /// Whether the index ends in an incomplete line (no trailing newline).
    torn_tail: bool,
    /// Whether `index.jsonl` is missing.
    no_index: bool,
    /// Samples no index line names, whole (images and metadata): taken back.
    recovered: usize,
    /// Sample files no index line names that cannot be taken back.
    orphans: Vec<PathBuf>,
}

impl Dataset {
    /// Opens the dataset in `dir`. Index lines that cannot be used (incomplete, naming files
    /// that are gone, of another window length) are skipped with a warning; samples no line
    /// names (a lost or truncated index) are taken back from their own metadata file when
    /// whole, and their files are otherwise left aside ([`Dataset::orphans`]). A missing or
    /// foreign manifest is an error. Nothing is changed on disk.
    pub fn open(dir: &Path) -> Result<Dataset, CaptureError> {
        let manifest = read_manifest(dir)?;
        let index_path = dir.join(INDEX);
        let (text, no_index) = match std::fs::read(&index_path) {
            Ok(bytes) => (String::from_utf8_lossy(&bytes).into_owned(), false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (String::new(), true),
            Err(e) => return Err(CaptureError::io(&index_path)(e)),
        };
        let torn_tail = !text.is_empty() && !text.ends_with('\n');
        let mut samples = Vec::new();
        let mut ids = HashSet::new();
        let mut bad_lines = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let parsed = serde_json::from_str::<SampleMeta>(line)
                .map_err(|e| format!("not a sample: {e}"))
                .and_then(|s| usable(dir, &manifest, s, &ids));
            match parsed {
                Ok(s) => {
                    ids.insert(s.id.clone());
                    samples.push(s);
                }
                Err(problem) => {
                    bad_lines.push(line.to_owned());
                    warn!(index = %index_path.display(), line = n + 1, %problem, "index line skipped");
                }
            }
        }
        // Samples no line names: taken back from their metadata file when whole.
        let mut unnamed: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
        let samples_dir = dir.join(SAMPLES);
        if let Ok(entries) = std::fs::read_dir(&samples_dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if let Some(id) = id_of_file(&name).filter(|id| !ids.contains(*id)) {
                    unnamed.entry(id.to_owned()).or_default().push(entry.path());
                }
            }
        }
        let mut recovered = 0;
        let mut orphans = Vec::new();
        for (id, files) in unnamed {
            let meta = std::fs::read(meta_path(dir, &id))
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<SampleMeta>(&b).map_err(|e| e.to_string()))
                .and_then(|s| {
                    if s.id == id {
                        usable(dir, &manifest, s, &ids)
                    } else {
                        Err(format!("its metadata names sample {}", s.id))
                    }
                });
            match meta {
                Ok(s) => {
                    ids.insert(s.id.clone());
                    samples.push(s);
                    recovered += 1;
                }
                Err(problem) => {
                    debug!(sample = %id, %problem, "sample files no index line names");
                    orphans.extend(files);
                }
            }
        }
        samples.sort_by(|a, b| a.id.cmp(&b.id));
        if recovered > 0 {
            warn!(
                index = %index_path.display(),
                samples = recovered,
                "samples the index did not name were taken back from their own metadata"
            );
        }
        if !orphans.is_empty() {
            orphans.sort();
            warn!(
                dir = %samples_dir.display(),
                files = orphans.len(),
                "sample files no index line names, without whole metadata, are ignored"
            );
        }
        Ok(Dataset {
            dir: dir.to_owned(),
            manifest,
            samples,
            bad_lines,
            torn_tail,
            no_index,
            recovered,
            orphans,
        })
    }

    /// The dataset's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What every sample is.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The usable samples, oldest first.
    pub fn samples(&self) -> &[SampleMeta] {
        &self.samples
    }

    /// Index lines skipped on open.
    pub fn skipped_lines(&self) -> usize {
        self.bad_lines.len()
    }

    /// The index lines skipped on open, as they were.
    pub(crate) fn bad_lines(&self) -> &[String] {
        &self.bad_lines
    }

    /// Samples no index line named, taken back from their metadata files.
    pub fn recovered(&self) -> usize {
        self.recovered
    }

    /// Sample files no index line names that could not be taken back.
    pub fn orphans(&self) -> &[PathBuf] {
        &self.orphans
    }

    /// Whether the index needs rewriting before lines are appended to it.
    pub(crate) fn index_needs_rewrite(&self) -> bool {
        !self.bad_lines.is_empty() || self.torn_tail || self.no_index || self.recovered > 0
    }

    /// The digest of a sample's files (what [`SampleMeta::digest`] records at capture).
    pub fn digest(&self, sample: &SampleMeta) -> Result<String, CaptureError> {
        let (rgb_path, mask_path) = sample_paths(&self.dir, &sample.id);
        let rgb = std::fs::read(&rgb_path).map_err(CaptureError::io(&rgb_path))?;
        let mask = std::fs::read(&mask_path).map_err(CaptureError::io(&mask_path))?;
        Ok(format::digest(&rgb, &mask))
    }

    /// The sample's `video_len` encoder crops, exactly as the encoder saw them.
    pub fn load(&self, sample: &SampleMeta) -> Result<Vec<EncoderCrop>, CaptureError> {
        if !format::valid_id(&sample.id) {
            return Err(CaptureError::corrupt(
                &self.dir,
                format!("bad sample id {:?}", sample.id),
            ));
        }
        let (rgb_path, mask_path) = sample_paths(&self.dir, &sample.id);
        let rgb = std::fs::read(&rgb_path).map_err(CaptureError::io(&rgb_path))?;
        let mask = std::fs::read(&mask_path).map_err(CaptureError::io(&mask_path))?;
        format::decode_window(
            &rgb,
            &mask,
            self.manifest.image_size,
            self.manifest.video_len,
            (&rgb_path, &mask_path),
        )
    }
}

/// `s` when it is a sample of this dataset whose image files are there.
fn usable(
    dir: &Path,
    manifest: &Manifest,
    s: SampleMeta,
    ids: &HashSet<String>,
) -> Result<SampleMeta, String> {
    if !format::valid_id(&s.id) {
        return Err(format!("bad id {:?}", s.id));
    }
    if ids.contains(&s.id) {
        return Err(format!("id {} repeated", s.id));
    }
    if s.frames.len() != manifest.video_len {
        return Err(format!(
            "{} frames, the dataset's windows have {}",
            s.frames.len(),
            manifest.video_len
        ));
    }
    let (rgb, mask) = sample_paths(dir, &s.id);
    if rgb.is_file() && mask.is_file() {
        Ok(s)
    } else {
        Err(format!("sample {}'s files are gone", s.id))
    }
}

/// Reads and checks `DIR/manifest.json`.
pub fn read_manifest(dir: &Path) -> Result<Manifest, CaptureError> {
    let path = dir.join(MANIFEST);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CaptureError::Manifest {
                path,
                problem: "missing: not a capture dataset".into(),
            });
        }
        Err(e) => return Err(CaptureError::io(&path)(e)),
    };
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| CaptureError::Manifest {
            path: path.clone(),
            problem: format!("not JSON: {e}"),
        })?;
    if value["format"] != FORMAT {
        return Err(CaptureError::Manifest {
            path,
            problem: format!("format {} is not {FORMAT}", value["format"]),
        });
    }
    let manifest: Manifest = serde_json::from_value(value).map_err(|e| CaptureError::Manifest {
        path: path.clone(),
        problem: e.to_string(),
    })?;
    if manifest.image_size == 0 || manifest.video_len == 0 {
        return Err(CaptureError::Manifest {
            path,
            problem: "image_size and video_len must be positive".into(),
        });
    }
    Ok(manifest)
}
