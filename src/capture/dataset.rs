//! Reading a capture dataset: the manifest, the samples the index names, their crops.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use tracing::warn;

use super::CaptureError;
use super::format::{
    self, FORMAT, INDEX, MANIFEST, Manifest, SAMPLES, SampleMeta, id_of_file, sample_paths,
};
use crate::model::preprocess::EncoderCrop;

/// An opened capture dataset (read-only view).
#[derive(Debug)]
pub struct Dataset {
    dir: PathBuf,
    manifest: Manifest,
    samples: Vec<SampleMeta>,
    /// Index lines that were skipped (unparseable, of another shape, or naming missing files).
    skipped_lines: usize,
    /// Whether the index ends in an incomplete line (no trailing newline).
    torn_tail: bool,
    /// Sample files no index line names.
    orphans: Vec<PathBuf>,
}

impl Dataset {
    /// Opens the dataset in `dir`. Index lines that cannot be used (incomplete, naming files
    /// that are gone, of another window length) and sample files no line names are skipped
    /// with a warning; a missing or foreign manifest is an error.
    pub fn open(dir: &Path) -> Result<Dataset, CaptureError> {
        let manifest = read_manifest(dir)?;
        let index_path = dir.join(INDEX);
        let text = match std::fs::read(&index_path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(CaptureError::io(&index_path)(e)),
        };
        let torn_tail = !text.is_empty() && !text.ends_with('\n');
        let mut samples = Vec::new();
        let mut ids = HashSet::new();
        let mut skipped_lines = 0;
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let problem = match serde_json::from_str::<SampleMeta>(line) {
                Err(e) => Some(format!("not a sample: {e}")),
                Ok(s) if !format::valid_id(&s.id) => Some(format!("bad id {:?}", s.id)),
                Ok(s) if ids.contains(&s.id) => Some(format!("id {} repeated", s.id)),
                Ok(s) if s.frames.len() != manifest.video_len => Some(format!(
                    "{} frames, the dataset's windows have {}",
                    s.frames.len(),
                    manifest.video_len
                )),
                Ok(s) => {
                    let (rgb, mask) = sample_paths(dir, &s.id);
                    if rgb.is_file() && mask.is_file() {
                        ids.insert(s.id.clone());
                        samples.push(s);
                        None
                    } else {
                        Some(format!("sample {}'s files are gone", s.id))
                    }
                }
            };
            if let Some(problem) = problem {
                skipped_lines += 1;
                warn!(index = %index_path.display(), line = n + 1, %problem, "index line skipped");
            }
        }
        let mut orphans = Vec::new();
        let samples_dir = dir.join(SAMPLES);
        if let Ok(entries) = std::fs::read_dir(&samples_dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                let ours = id_of_file(&name).map(|id| ids.contains(id));
                if ours == Some(false) {
                    orphans.push(entry.path());
                }
            }
        }
        if !orphans.is_empty() {
            orphans.sort();
            warn!(
                dir = %samples_dir.display(),
                files = orphans.len(),
                "sample files no index line names are ignored"
            );
        }
        Ok(Dataset {
            dir: dir.to_owned(),
            manifest,
            samples,
            skipped_lines,
            torn_tail,
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
        self.skipped_lines
    }

    /// Sample files no index line names.
    pub fn orphans(&self) -> &[PathBuf] {
        &self.orphans
    }

    /// Whether the index needs rewriting before lines are appended to it.
    pub(crate) fn index_needs_rewrite(&self) -> bool {
        self.skipped_lines > 0 || self.torn_tail
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
