//! A fixed model's outputs (the distillation teacher's, the adapted model's starting point)
//! computed once per window and cached on disk.
//!
//! The cache lives under a folder named for the model's weights digest and config
//! ([`crate::train::served::Served::cache_key`]), one safetensors file per window, named by
//! the digest of the window's files ([`WindowSource::key`]), so a second run (or `--resume`)
//! over the same data never runs the model again, a different model never reads stale
//! outputs, and a capture id reused after a lost dataset never reads another window's. Each
//! run refreshes the files it uses and removes those no run used for [`PRUNE_AFTER`].

use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::{DType, Device, Tensor};

use super::data::{WindowSource, load_windows};
use crate::model::EmotionClip;
use crate::model::preprocess::{self, EncoderCrop, FrameInput};

/// A fixed model's outputs for one window (what a student is trained to reproduce).
#[derive(Debug, Clone)]
pub struct Targets {
    /// [embed_dim]: the un-normalised video embedding.
    pub video: Tensor,
    /// [video_len, width]: the frame encoder's class token after `ln_post` (the feature
    /// hint), per frame.
    pub hint: Tensor,
}

/// Pixels [N*T, 3, S, S] and masks [N*T, S, S] of windows, frames in window order.
pub fn stack_windows(
    windows: &[Vec<EncoderCrop>],
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let inputs: Vec<FrameInput> = windows.iter().flatten().map(EncoderCrop::input).collect();
    preprocess::stack(&inputs, device)
}

/// Video embeddings [B, E] (un-normalised) and frame hints [B, T, width] (the class token
/// after `ln_post`) of `model` for whole windows in one batch.
pub fn video_and_hint(
    model: &EmotionClip,
    windows: &[Vec<EncoderCrop>],
) -> candle_core::Result<(Tensor, Tensor)> {
    let (b, t) = (windows.len(), model.video_len());
    let (pixels, masks) = stack_windows(windows, model.device())?;
    let trace = model.trace_frames(&pixels, &masks)?;
    let video = model.encode_video_from_features(&trace.features.reshape((b, t, ()))?)?;
    Ok((video, trace.cls_post_ln.reshape((b, t, ()))?))
}

/// The outputs of `model` for whole windows in one batch.
pub fn compute(
    model: &EmotionClip,
    windows: &[Vec<EncoderCrop>],
) -> candle_core::Result<Vec<Targets>> {
    let (video, hint) = video_and_hint(model, windows)?;
    let (video, hint) = (video.to_dtype(DType::F32)?, hint.to_dtype(DType::F32)?);
    (0..windows.len())
        .map(|i| {
            Ok(Targets {
                video: video.get(i)?,
                hint: hint.get(i)?,
            })
        })
        .collect()
}

/// Cached outputs no run used for this long are removed.
pub const PRUNE_AFTER: std::time::Duration = std::time::Duration::from_secs(14 * 24 * 3600);

/// The on-disk cache of one model's outputs.
pub struct OutputCache {
    dir: PathBuf,
}

fn file_name(id: &str) -> String {
    let safe: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "{safe}-{:016x}.safetensors",
        crate::model::weights::fnv1a(id.as_bytes())
    )
}

impl OutputCache {
    /// The cache `name` under `root` (a name carrying the model's cache key).
    pub fn open(root: &Path, name: &str) -> anyhow::Result<Self> {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self { dir })
    }

    fn read(&self, key: &str, device: &Device) -> Option<Targets> {
        let path = self.dir.join(file_name(key));
        let mut t = candle_core::safetensors::load(&path, device).ok()?;
        // Used now: kept by the pruning for another PRUNE_AFTER.
        if let Ok(f) = std::fs::File::options().write(true).open(&path) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
        Some(Targets {
            video: t.remove("video")?,
            hint: t.remove("hint")?,
        })
    }

    fn write(&self, key: &str, targets: &Targets) -> anyhow::Result<()> {
        let path = self.dir.join(file_name(key));
        let map: std::collections::HashMap<String, Tensor> = [
            ("video".to_owned(), targets.video.clone()),
            ("hint".to_owned(), targets.hint.clone()),
        ]
        .into();
        crate::train::atomic::write_atomic(&path, |tmp| {
            Ok(candle_core::safetensors::save(&map, tmp)?)
        })
    }

    /// Removes cached outputs that are not of `used` and were not used for [`PRUNE_AFTER`]
    /// (windows rotated out of the capture long ago).
    fn prune(&self, used: &[String]) {
        let used: std::collections::HashSet<String> = used.iter().map(|k| file_name(k)).collect();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let now = std::time::SystemTime::now();
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if used.contains(&name) || !name.ends_with(".safetensors") {
                continue;
            }
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > PRUNE_AFTER);
            if stale && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(cache = %self.dir.display(), removed, "stale cached outputs removed");
        }
    }

    /// [`Self::targets`] with a progress bar (when `progress`) and a log line of the time
    /// it took.
    pub fn all(
        &self,
        model: &EmotionClip,
        source: &dyn WindowSource,
        batch: usize,
        progress: bool,
    ) -> anyhow::Result<Vec<Targets>> {
        let bar = crate::train::session::bar(progress, source.len() as u64, "outputs");
        let started = std::time::Instant::now();
        let targets = self.targets(model, source, batch, |n| bar.inc(n as u64))?;
        bar.finish_and_clear();
        tracing::info!(
            windows = targets.len(),
            seconds = started.elapsed().as_secs_f32(),
            cache = %self.dir.display(),
            "model outputs ready"
        );
        Ok(targets)
    }

    /// Outputs of every window of `source`: read from the cache, or computed in batches of
    /// `batch` windows and stored. `progress(n)` is called as `n` more windows complete.
    pub fn targets(
        &self,
        model: &EmotionClip,
        source: &dyn WindowSource,
        batch: usize,
        mut progress: impl FnMut(usize),
    ) -> anyhow::Result<Vec<Targets>> {
        let device = model.device();
        let keys: Vec<String> = (0..source.len()).map(|i| source.key(i)).collect();
        let mut out: Vec<Option<Targets>> = keys.iter().map(|k| self.read(k, device)).collect();
        progress(out.iter().filter(|t| t.is_some()).count());
        let missing: Vec<usize> = (0..source.len()).filter(|i| out[*i].is_none()).collect();
        for chunk in missing.chunks(batch.max(1)) {
            let windows = load_windows(source, chunk)?;
            let computed = compute(model, &windows)?;
            for (&i, targets) in chunk.iter().zip(computed) {
                self.write(&keys[i], &targets)?;
                out[i] = Some(targets);
            }
            progress(chunk.len());
        }
        self.prune(&keys);
        Ok(out
            .into_iter()
            .map(|t| t.expect("every window filled"))
            .collect())
    }
}
