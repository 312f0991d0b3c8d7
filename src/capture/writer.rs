//! Writing a capture dataset: one writer per folder (a lock file), samples made durable
//! before the index names them, the oldest samples rotated out beyond the quota.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tracing::{info, warn};

use super::CaptureError;
use super::dataset::Dataset;
use super::format::{
    self, FrameMeta, INDEX, MANIFEST, Manifest, SAMPLES, SampleMeta, id_for, sample_paths,
};
use crate::model::preprocess::EncoderCrop;
use crate::types::BBox;

/// A window to store: the crops the encoder saw and where they came from.
#[derive(Debug, Clone)]
pub struct WindowRecord<'a> {
    pub camera: &'a str,
    pub track_id: u64,
    pub model: &'a str,
    pub crops: Vec<&'a EncoderCrop>,
    pub walls: &'a [SystemTime],
    pub frame_seqs: &'a [u64],
    pub bboxes: &'a [BBox],
    pub frame_size: (u32, u32),
}

/// What one write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub id: String,
    pub bytes: u64,
    /// Oldest samples deleted to stay under the quota.
    pub rotated: usize,
}

/// The single writer of a dataset folder.
pub struct DatasetWriter {
    dir: PathBuf,
    manifest: Manifest,
    samples: VecDeque<SampleMeta>,
    total_bytes: u64,
    quota_bytes: u64,
    next_id: u64,
    /// Held for the writer's life: `DIR/.lock`, locked exclusively.
    _lock: File,
}

impl DatasetWriter {
    /// Opens the dataset in `dir` for appending, or creates it with `manifest`. A dataset of
    /// another shape (input size, window length, crop policy) is refused, never changed.
    /// Leftovers of a crash (temporary files, files no index line names, an incomplete
    /// last index line) are cleaned up.
    pub fn open(
        dir: &Path,
        manifest: &Manifest,
        quota_bytes: u64,
    ) -> Result<DatasetWriter, CaptureError> {
        let samples_dir = dir.join(SAMPLES);
        std::fs::create_dir_all(&samples_dir).map_err(CaptureError::io(&samples_dir))?;
        let lock_path = dir.join(".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(CaptureError::io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(CaptureError::Locked {
                    dir: dir.to_owned(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(CaptureError::io(&lock_path)(e)),
        }
        remove_temporaries(dir);
        remove_temporaries(&samples_dir);

        let (manifest, samples) = if dir.join(MANIFEST).exists() {
            let dataset = Dataset::open(dir)?;
            let found = dataset.manifest().clone();
            if !found.compatible(manifest) {
                return Err(CaptureError::Mismatch {
                    dir: dir.to_owned(),
                    found: found.shape(),
                    wanted: manifest.shape(),
                });
            }
            if dataset.index_needs_rewrite() {
                write_index(dir, dataset.samples())?;
            }
            for orphan in dataset.orphans() {
                if let Err(e) = std::fs::remove_file(orphan) {
                    warn!(file = %orphan.display(), error = %e, "cannot delete a stray sample file");
                }
            }
            (found, dataset.samples().to_vec())
        } else {
            let path = dir.join(MANIFEST);
            let json = serde_json::to_vec_pretty(manifest).expect("a manifest serialises");
            write_atomic(&path, &json)?;
            write_index(dir, &[])?;
            (manifest.clone(), Vec::new())
        };
        let next_id = samples
            .iter()
            .filter_map(|s| s.id.parse::<u64>().ok())
            .max()
            .map_or(0, |n| n + 1);
        let total_bytes = samples.iter().map(|s| s.bytes).sum();
        Ok(DatasetWriter {
            dir: dir.to_owned(),
            manifest,
            samples: samples.into(),
            total_bytes,
            quota_bytes,
            next_id,
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Samples in the dataset.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Bytes of all sample files.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Stores one window: its PNG files (durable, then renamed into place), then its index
    /// line; then rotates the oldest samples out if the quota is exceeded.
    pub fn write(&mut self, window: &WindowRecord<'_>) -> Result<Written, CaptureError> {
        let (size, t) = (self.manifest.image_size, self.manifest.video_len);
        let n = window.crops.len();
        if n != t || window.walls.len() != n || window.frame_seqs.len() != n {
            return Err(CaptureError::BadWindow(format!(
                "{n} frames, the dataset's windows have {t}"
            )));
        }
        if window.bboxes.len() != n {
            return Err(CaptureError::BadWindow(format!(
                "{} boxes for {n} frames",
                window.bboxes.len()
            )));
        }
        let (rgb, mask) = format::encode_window(&window.crops, size)?;
        let id = id_for(self.next_id);
        let (rgb_path, mask_path) = sample_paths(&self.dir, &id);
        write_atomic(&rgb_path, &rgb)?;
        if let Err(e) = write_atomic(&mask_path, &mask) {
            let _ = std::fs::remove_file(&rgb_path);
            return Err(e);
        }
        self.next_id += 1;
        let sample = SampleMeta {
            id: id.clone(),
            camera: window.camera.to_owned(),
            track_id: window.track_id,
            model: window.model.to_owned(),
            captured: crate::types::now_rfc3339(),
            frame_size: [window.frame_size.0, window.frame_size.1],
            frames: (0..n)
                .map(|i| {
                    let b = window.bboxes[i];
                    FrameMeta {
                        wall_ms: format::unix_ms(window.walls[i]),
                        seq: window.frame_seqs[i],
                        bbox: [b.x1, b.y1, b.x2, b.y2],
                    }
                })
                .collect(),
            bytes: (rgb.len() + mask.len()) as u64,
        };
        if let Err(e) = self.append_index(&sample) {
            let _ = std::fs::remove_file(&rgb_path);
            let _ = std::fs::remove_file(&mask_path);
            return Err(e);
        }
        self.total_bytes += sample.bytes;
        let bytes = sample.bytes;
        self.samples.push_back(sample);
        let rotated = self.rotate()?;
        Ok(Written { id, bytes, rotated })
    }

    fn append_index(&self, sample: &SampleMeta) -> Result<(), CaptureError> {
        let path = self.dir.join(INDEX);
        let mut line = serde_json::to_vec(sample).expect("a sample serialises");
        line.push(b'\n');
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(CaptureError::io(&path))?;
        file.write_all(&line)
            .and_then(|()| file.sync_data())
            .map_err(CaptureError::io(&path))
    }

    /// Beyond the quota, deletes the oldest samples down to 90% of it (so that the index is
    /// not rewritten on every write), always keeping the newest. The index is rewritten
    /// before any file is deleted, so it never names a missing file.
    fn rotate(&mut self) -> Result<usize, CaptureError> {
        if self.total_bytes <= self.quota_bytes {
            return Ok(0);
        }
        let low = self.quota_bytes / 10 * 9;
        let mut total = self.total_bytes;
        let mut cut = 0;
        while total > low && cut + 1 < self.samples.len() {
            total -= self.samples[cut].bytes;
            cut += 1;
        }
        if cut == 0 {
            return Ok(0);
        }
        let keep: Vec<SampleMeta> = self.samples.iter().skip(cut).cloned().collect();
        write_index(&self.dir, &keep)?;
        for old in self.samples.drain(..cut) {
            let (rgb, mask) = sample_paths(&self.dir, &old.id);
            for p in [rgb, mask] {
                if let Err(e) = std::fs::remove_file(&p) {
                    warn!(file = %p.display(), error = %e, "cannot delete a rotated sample file");
                }
            }
        }
        self.total_bytes = total;
        info!(
            dir = %self.dir.display(),
            deleted = cut,
            kept = self.samples.len(),
            mib = total / (1024 * 1024),
            "capture quota reached: oldest samples deleted"
        );
        Ok(cut)
    }
}

/// Rewrites `DIR/index.jsonl` with `samples`, through a temporary file and a rename.
fn write_index(dir: &Path, samples: &[SampleMeta]) -> Result<(), CaptureError> {
    let mut text = Vec::with_capacity(samples.len() * 1024);
    for s in samples {
        serde_json::to_writer(&mut text, s).expect("a sample serialises");
        text.push(b'\n');
    }
    write_atomic(&dir.join(INDEX), &text)
}

/// Writes `bytes` to `path.tmp`, syncs it, renames it over `path` and syncs the folder.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CaptureError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let result = File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(CaptureError::io(path)(e));
    }
    if let Some(parent) = path.parent()
        && let Ok(d) = File::open(parent)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Deletes `*.tmp` files a crash left in `dir`.
fn remove_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().ends_with(".tmp") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
