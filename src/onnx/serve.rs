//! Serving EmotionCLIP through ONNX Runtime: the two sessions of an exported model (frame
//! encoder and temporal encoder), opened from the export cache with the configured providers.
//!
//! [`OnnxEncoder`] takes and returns plain row-major f32: pixels [N, 3, S, S] (ImageNet-
//! normalised, as `model::preprocess` prepares them) with patch weights [N, P] (the subject
//! mask averaged per patch, `VisionTransformer::patch_weights`) -> frame features [N, E];
//! frame features [B, T, E] -> video embeddings [B, E]. It is owned by one thread (the
//! encoder's); the stage wraps it as its ONNX engine (`encode::engine`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use ort::session::Session;
use ort::value::TensorRef;
use tracing::warn;

use super::cache::{Entry, ExportCache, ExportKey, Outcome, verify};
use super::export::{
    AttentionForm, Error as ExportError, FRAME_FEATURES, PATCH_WEIGHTS, PIXELS, Precision,
    WeightsSource,
};
use crate::detect::{Provider, SessionSpec};
use crate::model::{EmotionClip, EmotionClipConfig};

/// The frame and temporal encoders of one export in ONNX Runtime.
pub struct OnnxEncoder {
    frame: Session,
    temporal: Session,
    provider: Provider,
    precision: Precision,
    entry: PathBuf,
    image_size: usize,
    patches: usize,
    video_len: usize,
    embed_dim: usize,
}

impl std::fmt::Debug for OnnxEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxEncoder")
            .field("entry", &self.entry)
            .field("provider", &self.provider)
            .field("precision", &self.precision)
            .finish_non_exhaustive()
    }
}

/// What [`OnnxEncoder::serve`] would find in the export cache, found by
/// [`OnnxEncoder::probe`] without exporting or writing anything.
#[derive(Debug)]
pub enum CacheProbe {
    /// A verified entry whose sessions open, on `provider`.
    Ready { dir: PathBuf, provider: Provider },
    /// No entry yet: `serve` exports one there.
    Absent { dir: PathBuf },
    /// An entry `serve` would not trust (why), and so exports again.
    Untrusted { dir: PathBuf, why: String },
}

/// How the daemon serves through ONNX Runtime: `[model]`'s keys.
#[derive(Debug, Clone)]
pub struct ServeOptions<'a> {
    /// `[model] onnx_cache_dir`.
    pub cache_dir: &'a Path,
    /// `[model] precision`; one the exporter cannot write yet falls back to f32 (logged).
    pub precision: Precision,
    pub attention: AttentionForm,
    /// Providers, threads, the library (`[model] providers`, `threads`, `[detect]
    /// ort_library`).
    pub session: SessionSpec<'a>,
}

impl OnnxEncoder {
    /// Opens both graphs of a verified cache entry.
    pub fn open(entry: &Entry, spec: &SessionSpec<'_>) -> Result<Self, crate::detect::Error> {
        let (frame, provider) = crate::detect::open_with(spec, &entry.frame_encoder())?;
        let (temporal, _) = crate::detect::open_with(spec, &entry.temporal_encoder())?;
        let cfg = &entry.manifest.model_config;
        let grid = cfg.vision_cfg.grid_size();
        Ok(Self {
            frame,
            temporal,
            provider,
            precision: entry.manifest.precision,
            entry: entry.dir.clone(),
            image_size: cfg.vision_cfg.image_size,
            patches: grid * grid,
            video_len: cfg.temporal.video_len,
            embed_dim: cfg.embed_dim,
        })
    }

    /// Exports `model` into the cache (or reuses its entry) and opens it: what the daemon
    /// does at start, on reload and for every student. The entry is returned for logging.
    pub fn serve(
        model: &EmotionClip,
        source: &WeightsSource,
        opts: &ServeOptions<'_>,
    ) -> anyhow::Result<(Self, Entry)> {
        let cache = ExportCache::new(opts.cache_dir);
        let key = ExportKey::new(source, model.config(), opts.precision, opts.attention);
        let entry = match cache.get(model, &key) {
            Err(ExportError::Usage(why)) if opts.precision != Precision::F32 => {
                warn!(
                    precision = opts.precision.name(),
                    reason = %why,
                    "the ONNX exporter cannot write this precision; serving f32"
                );
                let key = ExportKey::new(source, model.config(), Precision::F32, opts.attention);
                cache.get(model, &key)
            }
            other => other,
        }
        .with_context(|| format!("exporting to the ONNX cache {}", cache.dir().display()))?;
        let encoder = Self::open(&entry, &opts.session)
            .with_context(|| format!("opening {}", entry.dir.display()))?;
        Ok((encoder, entry))
    }

    /// What [`serve`](Self::serve) would find for a model of `config` with the weights of
    /// `source` (`affectd check`): ONNX Runtime is loaded, the entry verified and, when it
    /// exists and is trusted, both its sessions opened as `serve` opens them. Writes nothing.
    /// An error is what would stop `serve` outright: no library, or sessions that cannot open.
    pub fn probe(
        config: &EmotionClipConfig,
        source: &WeightsSource,
        opts: &ServeOptions<'_>,
    ) -> anyhow::Result<CacheProbe> {
        crate::detect::ort_environment(opts.session.ort_library)?;
        let key = ExportKey::new(source, config, opts.precision, opts.attention);
        let dir = ExportCache::new(opts.cache_dir).entry_dir(&key);
        if !dir.exists() {
            return Ok(CacheProbe::Absent { dir });
        }
        let manifest = match verify(&dir, &key) {
            Ok(manifest) => manifest,
            Err(why) => return Ok(CacheProbe::Untrusted { dir, why }),
        };
        let entry = Entry {
            dir,
            manifest,
            outcome: Outcome::Hit,
        };
        let encoder = Self::open(&entry, &opts.session)
            .with_context(|| format!("opening {}", entry.dir.display()))?;
        Ok(CacheProbe::Ready {
            dir: entry.dir,
            provider: encoder.provider,
        })
    }

    /// The execution provider serving.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// The precision of the graphs served.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The cache entry served.
    pub fn entry(&self) -> &Path {
        &self.entry
    }

    pub fn embed_dim(&self) -> usize {
        self.embed_dim
    }

    /// Frame features [n, E] of `pixels` [n, 3, S, S] and `patch_weights` [n, P].
    pub fn frames(
        &mut self,
        pixels: &[f32],
        patch_weights: &[f32],
        n: usize,
    ) -> Result<Vec<f32>, ort::Error> {
        let s = self.image_size;
        debug_assert_eq!(pixels.len(), n * 3 * s * s);
        debug_assert_eq!(patch_weights.len(), n * self.patches);
        let pixels = TensorRef::from_array_view(([n, 3, s, s], pixels))?;
        let weights = TensorRef::from_array_view(([n, self.patches], patch_weights))?;
        let outputs = self
            .frame
            .run(ort::inputs![PIXELS => pixels, PATCH_WEIGHTS => weights])?;
        let (_, data) = outputs[0].try_extract_tensor::<f32>()?;
        Ok(data.to_vec())
    }

    /// Video embeddings [b, E] (not normalised) of frame features [b, T, E].
    pub fn video(&mut self, features: &[f32], b: usize) -> Result<Vec<f32>, ort::Error> {
        let (t, e) = (self.video_len, self.embed_dim);
        debug_assert_eq!(features.len(), b * t * e);
        let features = TensorRef::from_array_view(([b, t, e], features))?;
        let outputs = self
            .temporal
            .run(ort::inputs![FRAME_FEATURES => features])?;
        let (_, data) = outputs[0].try_extract_tensor::<f32>()?;
        Ok(data.to_vec())
    }
}
