//! Writing a capture dataset: one writer per folder (a lock file), samples made durable
//! before the index names them, the oldest samples rotated out beyond the quota (except
//! those a training run has pinned). A writer never deletes what it cannot read: it moves it
//! to `quarantine/`.

use std::collections::{HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tracing::{info, warn};

use super::CaptureError;
use super::dataset::Dataset;
use super::format::{
    self, FrameMeta, INDEX, MANIFEST, Manifest, NEXT_ID, QUARANTINE, SAMPLES, SampleMeta, id_for,
    id_of_file, meta_path, sample_paths,
};
use super::pins;
use crate::durable::{self, PRIVATE_MODE};
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
    /// Ids below this may have been handed out (`DIR/next_id`): reserved in blocks of
    /// [`ID_BLOCK`], so the file is written once per block, not per sample.
    reserved: u64,
    /// Held for the writer's life: `DIR/.lock`, locked exclusively.
    _lock: File,
}

impl DatasetWriter {
    /// Opens the dataset in `dir` for appending, or creates it with `manifest`. A dataset of
    /// another shape (input size, window length, crop policy) is refused, never changed.
    /// After a crash: temporary files are deleted (never complete), whole samples no index
    /// line names are put back into the index (a lost index is rebuilt), and what cannot be
    /// used (index lines, sample files without whole metadata) is moved to `quarantine/`.
    /// Ids continue after the highest ever used, whatever was lost.
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
            quarantine(dir, dataset.bad_lines(), dataset.orphans())?;
            if dataset.index_needs_rewrite() {
                write_index(dir, dataset.samples())?;
                info!(
                    dir = %dir.display(),
                    samples = dataset.samples().len(),
                    recovered = dataset.recovered(),
                    quarantined_lines = dataset.bad_lines().len(),
                    "capture index rewritten"
                );
            }
            (found, dataset.samples().to_vec())
        } else {
            let path = dir.join(MANIFEST);
            let json = serde_json::to_vec_pretty(manifest).expect("a manifest serialises");
            write_atomic(&path, &json)?;
            write_index(dir, &[])?;
            (manifest.clone(), Vec::new())
        };
        let next_id = next_id(dir, &samples);
        let reserved = next_id + ID_BLOCK;
        write_next_id(dir, reserved)?;
        let total_bytes = samples.iter().map(|s| s.bytes).sum();
        Ok(DatasetWriter {
            dir: dir.to_owned(),
            manifest,
            samples: samples.into(),
            total_bytes,
            quota_bytes,
            next_id,
            reserved,
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
        if self.next_id >= self.reserved {
            self.reserved = self.next_id + ID_BLOCK;
            write_next_id(&self.dir, self.reserved)?;
        }
        let id = id_for(self.next_id);
        let (rgb_path, mask_path) = sample_paths(&self.dir, &id);
        let meta_path = meta_path(&self.dir, &id);
        let remove = || {
            for p in [&rgb_path, &mask_path, &meta_path] {
                let _ = std::fs::remove_file(p);
            }
        };
        write_atomic(&rgb_path, &rgb)?;
        if let Err(e) = write_atomic(&mask_path, &mask) {
            remove();
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
            digest: Some(format::digest(&rgb, &mask)),
        };
        let meta = serde_json::to_vec(&sample).expect("a sample serialises");
        if let Err(e) = write_atomic(&meta_path, &meta).and_then(|()| self.append_index(&sample)) {
            remove();
            return Err(e);
        }
        self.total_bytes += sample.bytes;
        let bytes = sample.bytes;
        self.samples.push_back(sample);
        let rotated = self.rotate()?;
        Ok(Written { id, bytes, rotated })
    }

    fn append_index(&self, sample: &SampleMeta) -> Result<(), CaptureError> {
        let mut line = serde_json::to_vec(sample).expect("a sample serialises");
        line.push(b'\n');
        append_synced(&self.dir.join(INDEX), &line)
    }

    /// Beyond the quota, deletes the oldest samples down to 90% of it (so that the index is
    /// not rewritten on every write), always keeping the newest and every sample a training
    /// run has pinned. The index is rewritten before any file is deleted, so it never names a
    /// missing file.
    fn rotate(&mut self) -> Result<usize, CaptureError> {
        if self.total_bytes <= self.quota_bytes {
            return Ok(0);
        }
        let pinned = pins::pinned(&self.dir);
        let low = self.quota_bytes / 10 * 9;
        let mut total = self.total_bytes;
        let newest = self.samples.len().saturating_sub(1);
        let mut gone = HashSet::new();
        for (i, s) in self.samples.iter().enumerate() {
            if total <= low || i == newest {
                break;
            }
            if !pinned.contains(&s.id) {
                total -= s.bytes;
                gone.insert(s.id.clone());
            }
        }
        if gone.is_empty() {
            if !pinned.is_empty() {
                warn!(
                    dir = %self.dir.display(),
                    pinned = pinned.len(),
                    "capture quota exceeded, but the oldest samples are pinned by a training run"
                );
            }
            return Ok(0);
        }
        let (old, keep): (Vec<SampleMeta>, Vec<SampleMeta>) =
            self.samples.drain(..).partition(|s| gone.contains(&s.id));
        write_index(&self.dir, &keep)?;
        self.samples = keep.into();
        for s in &old {
            let (rgb, mask) = sample_paths(&self.dir, &s.id);
            for p in [rgb, mask, meta_path(&self.dir, &s.id)] {
                if let Err(e) = std::fs::remove_file(&p)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    warn!(file = %p.display(), error = %e, "cannot delete a rotated sample file");
                }
            }
        }
        self.total_bytes = total;
        info!(
            dir = %self.dir.display(),
            deleted = old.len(),
            kept = self.samples.len(),
            pinned = pinned.len(),
            mib = total / (1024 * 1024),
            "capture quota reached: oldest samples deleted"
        );
        Ok(old.len())
    }
}

/// Ids a writer reserves at a time in `DIR/next_id`.
const ID_BLOCK: u64 = 1000;

/// The first id no sample can have had: after the highest in the index and among the files
/// (samples and quarantine), and at least the reservation in `DIR/next_id` (so ids skip up
/// to [`ID_BLOCK`] after a restart, and never restart, even when every sample is lost).
fn next_id(dir: &Path, samples: &[SampleMeta]) -> u64 {
    let mut highest: Option<u64> = samples.iter().filter_map(|s| s.id.parse().ok()).max();
    for sub in [SAMPLES, QUARANTINE] {
        if let Ok(entries) = std::fs::read_dir(dir.join(sub)) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let id = id_of_file(&name.to_string_lossy()).and_then(|id| id.parse().ok());
                highest = highest.max(id);
            }
        }
    }
    let stored = std::fs::read_to_string(dir.join(NEXT_ID))
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok());
    highest.map_or(0, |n| n + 1).max(stored.unwrap_or(0))
}

fn write_next_id(dir: &Path, next: u64) -> Result<(), CaptureError> {
    write_atomic(&dir.join(NEXT_ID), format!("{next}\n").as_bytes())
}

/// Moves what a writer cannot use into `DIR/quarantine/`: index lines (appended to
/// `index-lines.jsonl`) and sample files. Nothing is deleted.
fn quarantine(dir: &Path, lines: &[String], files: &[PathBuf]) -> Result<(), CaptureError> {
    if lines.is_empty() && files.is_empty() {
        return Ok(());
    }
    let q = dir.join(QUARANTINE);
    std::fs::create_dir_all(&q).map_err(CaptureError::io(&q))?;
    if !lines.is_empty() {
        let mut text = lines.join("\n");
        text.push('\n');
        append_synced(&q.join("index-lines.jsonl"), text.as_bytes())?;
    }
    for f in files {
        let Some(name) = f.file_name() else { continue };
        let to = q.join(name);
        if let Err(e) = std::fs::rename(f, &to) {
            warn!(file = %f.display(), error = %e, "cannot move a sample file to quarantine");
        }
    }
    durable::sync_dir(&q).map_err(CaptureError::io(&q))?;
    warn!(
        quarantine = %q.display(),
        lines = lines.len(),
        files = files.len(),
        "capture: what could not be used was moved to quarantine (nothing deleted)"
    );
    Ok(())
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

/// Appends `bytes` to `path` (created mode 0640) and flushes them to the disk.
fn append_synced(path: &Path, bytes: &[u8]) -> Result<(), CaptureError> {
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(PRIVATE_MODE)
        .open(path)
        .map_err(CaptureError::io(path))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_data())
        .map_err(CaptureError::io(path))
}

/// Writes `bytes` durably over `path` (see [`crate::durable`]), mode 0640.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CaptureError> {
    durable::replace_bytes(path, PRIVATE_MODE, bytes).map_err(CaptureError::io(path))
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
