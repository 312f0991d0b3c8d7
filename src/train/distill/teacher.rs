//! The teacher, and its outputs computed once per window and cached on disk.
//!
//! The cache lives under a folder named for the teacher's weights digest and config, one
//! safetensors file per window id, so a second run (or `--resume`) over the same data never
//! runs the teacher again, and a different teacher never reads stale targets.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};

use super::data::WindowSource;
use crate::model::EmotionClip;
use crate::model::preprocess::{self, EncoderCrop, FrameInput};
use crate::readout::Readout;

/// The teacher: its model, its tensors (to initialise the student) and its identity.
pub struct Teacher {
    pub model: EmotionClip,
    pub tensors: Arc<BTreeMap<String, Tensor>>,
    pub weights: PathBuf,
    pub sha256: String,
    pub readout: Readout,
}

impl Teacher {
    /// The model `[model]` describes, as the daemon would serve it (`encode::load_encoder`):
    /// the weights file, or the seeded random weights of `allow_untrained` (whose identity is
    /// then `untrained-seed-N`).
    pub fn load(
        model: &crate::encode::ModelConfig,
        readout: &crate::readout::ReadoutConfig,
    ) -> Result<Self, crate::model::Error> {
        let (clip, digest) = crate::encode::load_encoder(model)?;
        let device = clip.device().clone();
        let (tensors, weights, sha256) = match (model.weights_to_load(), digest) {
            (Some(path), Some(sha256)) => (
                crate::model::weights::Checkpoint::open(path)?.tensors(DType::F32, &device)?,
                path.to_owned(),
                sha256,
            ),
            _ => {
                tracing::warn!(
                    seed = model.seed,
                    "the teacher is the UNTRAINED seeded model of allow_untrained: the student \
                     learns to imitate meaningless outputs (fine for a demo)"
                );
                // The same seeded values as the served model, this time with their names.
                let (_, tensors) =
                    crate::model::weights::build_seeded(model.seed, DType::F32, &device, |vb| {
                        EmotionClip::new(vb, clip.config())
                    })?;
                let id = format!("untrained-seed-{}", model.seed);
                (tensors, PathBuf::from(&id), id)
            }
        };
        let readout = crate::encode::build_readout(&clip, readout)?;
        Ok(Self {
            model: clip,
            tensors: Arc::new(tensors),
            weights,
            sha256,
            readout,
        })
    }

    /// Names the teacher's target cache: its weights digest and config.
    pub fn cache_key(&self) -> anyhow::Result<String> {
        use sha2::{Digest, Sha256};
        let cfg = serde_json::to_vec(self.model.config())?;
        let digest = hex::encode(
            Sha256::new()
                .chain_update(self.sha256.as_bytes())
                .chain_update(cfg)
                .finalize(),
        );
        Ok(digest[..16].to_owned())
    }
}

/// What the student is trained to reproduce for one window.
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
/// after `ln_post`) of `model` for whole windows in one batch: what the teacher provides and
/// the student is compared on.
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

/// The teacher's targets for whole windows in one batch.
pub fn compute(
    teacher: &EmotionClip,
    windows: &[Vec<EncoderCrop>],
) -> candle_core::Result<Vec<Targets>> {
    let (video, hint) = video_and_hint(teacher, windows)?;
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

/// The on-disk cache of one teacher's targets.
pub struct TeacherCache {
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

impl TeacherCache {
    /// The cache of the teacher identified by `key` (its weights digest and config) under
    /// `root`.
    pub fn open(root: &Path, key: &str) -> anyhow::Result<Self> {
        let dir = root.join(format!("teacher-{key}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self { dir })
    }

    fn read(&self, id: &str, device: &Device) -> Option<Targets> {
        let path = self.dir.join(file_name(id));
        let mut t = candle_core::safetensors::load(&path, device).ok()?;
        Some(Targets {
            video: t.remove("video")?,
            hint: t.remove("hint")?,
        })
    }

    fn write(&self, id: &str, targets: &Targets) -> anyhow::Result<()> {
        let path = self.dir.join(file_name(id));
        let map: std::collections::HashMap<String, Tensor> = [
            ("video".to_owned(), targets.video.clone()),
            ("hint".to_owned(), targets.hint.clone()),
        ]
        .into();
        crate::train::atomic::write_atomic(&path, |tmp| {
            Ok(candle_core::safetensors::save(&map, tmp)?)
        })
    }

    /// Targets of every window of `source`: read from the cache, or computed in batches of
    /// `batch` windows and stored. `progress(done, computed)` is called as windows complete.
    pub fn targets(
        &self,
        teacher: &EmotionClip,
        source: &dyn WindowSource,
        batch: usize,
        mut progress: impl FnMut(usize),
    ) -> anyhow::Result<Vec<Targets>> {
        let device = teacher.device();
        let mut out: Vec<Option<Targets>> = (0..source.len())
            .map(|i| self.read(source.id(i), device))
            .collect();
        progress(out.iter().filter(|t| t.is_some()).count());
        let missing: Vec<usize> = (0..source.len()).filter(|i| out[*i].is_none()).collect();
        for chunk in missing.chunks(batch.max(1)) {
            let windows = chunk
                .iter()
                .map(|&i| {
                    source
                        .load(i)
                        .with_context(|| format!("window {}", source.id(i)))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let computed = compute(teacher, &windows)?;
            for (&i, targets) in chunk.iter().zip(computed) {
                self.write(source.id(i), &targets)?;
                out[i] = Some(targets);
            }
            progress(chunk.len());
        }
        Ok(out
            .into_iter()
            .map(|t| t.expect("every window filled"))
            .collect())
    }
}
