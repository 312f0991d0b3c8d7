//! What runs the encoder's two networks: the frame encoder over a batch of person-frames and
//! the temporal encoder over full windows. [`Engine`] (`model::engine`) has two
//! implementations, chosen once per loaded model by `[model] runtime` ([`select`]):
//! [`CandleEngine`] (the model itself: the reference, and the fallback) and [`OnnxEngine`]
//! (the same model exported to ONNX and run by ONNX Runtime). The engine belongs to the
//! [`LiveEncoder`](super::LiveEncoder) that owns the model, so it lives on the encoder thread
//! and is swapped with the model on a reload.

use std::path::Path;

use candle_core::{DType, Device, Result, Tensor};
use tracing::{info, warn};

use super::config::{ModelConfig, ModelDtype, ModelRuntime};
use crate::detect::SessionSpec;
use crate::model::embed::{EmbedArgs, EmbedRuntime};
use crate::model::{CandleEngine, EmotionClip, EmotionClipConfig, Engine};
use crate::onnx::serve::{CacheProbe, OnnxEncoder, ServeOptions};
use crate::onnx::{AttentionForm, WeightsSource};

/// The model's export in ONNX Runtime. The patch weights of the masks are computed by the
/// candle model (`VisionTransformer::patch_weights`: a mean per patch); everything after
/// them runs in ONNX Runtime. Its features are f32 on the CPU.
#[derive(Debug)]
pub struct OnnxEngine(pub OnnxEncoder);

fn f32s(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

impl Engine for OnnxEngine {
    fn name(&self) -> &'static str {
        "onnx"
    }

    fn frames(&mut self, model: &EmotionClip, pixels: &Tensor, masks: &Tensor) -> Result<Tensor> {
        let n = pixels.dim(0)?;
        let weights = model.backbone.visual.patch_weights(masks)?;
        let out = self
            .0
            .frames(&f32s(pixels)?, &f32s(&weights)?, n)
            .map_err(candle_core::Error::wrap)?;
        Tensor::from_vec(out, (n, self.0.embed_dim()), &Device::Cpu)
    }

    fn video(&mut self, _model: &EmotionClip, features: &Tensor) -> Result<Tensor> {
        let b = features.dim(0)?;
        let out = self
            .0
            .video(&f32s(features)?, b)
            .map_err(candle_core::Error::wrap)?;
        Tensor::from_vec(out, (b, self.0.embed_dim()), &Device::Cpu)
    }
}

/// The engine `[model] runtime` asks for, for `model` (`weights_sha256`: its weights file's
/// digest, `None` for the seeded random weights of `cfg.seed`). Logs one line saying which
/// engine serves and why. `auto` falls back to candle when ONNX Runtime cannot serve (no
/// library, an export or a session that fails, a half-precision candle model); `onnx` fails
/// then.
pub fn select(
    cfg: &ModelConfig,
    model: &EmotionClip,
    weights_sha256: Option<&str>,
) -> std::result::Result<Box<dyn Engine>, crate::model::Error> {
    let runtime = cfg.runtime;
    if let Some(why) = candle_by_config(cfg) {
        info!(runtime = "candle", "encoder runtime: candle ({why})");
        return Ok(Box::new(CandleEngine));
    }
    let source = weights_source(cfg, weights_sha256);
    let trt_cache = cfg.onnx_cache_dir.join("trt");
    let opts = serve_options(cfg, &trt_cache);
    match OnnxEncoder::serve(model, &source, &opts) {
        Ok((encoder, entry)) => {
            info!(
                runtime = "onnx",
                provider = encoder.provider().name(),
                precision = encoder.precision().name(),
                cache = entry.outcome.name(),
                entry = %entry.dir.display(),
                "encoder runtime: onnx ([model] runtime = \"{}\": ONNX Runtime serves the \
                 exported graphs)",
                runtime.name()
            );
            Ok(Box::new(OnnxEngine(encoder)))
        }
        Err(e) if runtime == ModelRuntime::Auto => {
            warn!(
                runtime = "candle",
                "encoder runtime: candle (auto: ONNX Runtime cannot serve: {e:#})"
            );
            Ok(Box::new(CandleEngine))
        }
        Err(e) => Err(crate::model::Error::Candle(candle_core::Error::Msg(
            format!("[model] runtime = \"onnx\": {e:#}"),
        ))),
    }
}

/// Why the config alone makes candle serve, if it does.
fn candle_by_config(cfg: &ModelConfig) -> Option<String> {
    match cfg.runtime {
        ModelRuntime::Candle => Some("[model] runtime = \"candle\"".into()),
        ModelRuntime::Auto if cfg.dtype != ModelDtype::F32 => Some(format!(
            "auto: dtype {:?} is candle's; ONNX Runtime serves f32 exports",
            cfg.dtype
        )),
        _ => None,
    }
}

fn weights_source(cfg: &ModelConfig, weights_sha256: Option<&str>) -> WeightsSource {
    match weights_sha256 {
        Some(sha256) => WeightsSource::File {
            sha256: sha256.to_owned(),
        },
        None => WeightsSource::Seeded(cfg.seed),
    }
}

/// How `[model]` serves through ONNX Runtime (`trt_cache`: TensorRT's engine folder).
fn serve_options<'a>(cfg: &'a ModelConfig, trt_cache: &'a Path) -> ServeOptions<'a> {
    ServeOptions {
        cache_dir: &cfg.onnx_cache_dir,
        precision: cfg.precision,
        attention: AttentionForm::default(),
        session: SessionSpec {
            section: "model",
            ort_library: cfg.ort_library.as_deref(),
            providers: &cfg.providers,
            threads: cfg.threads,
            trt_fp16: cfg.precision == crate::onnx::Precision::Fp16,
            trt_cache_dir: trt_cache,
        },
    }
}

/// `affectd check`: which engine [`select`] would choose for a model of `arch` with these
/// weights, found without exporting or writing: `Ok` with a line saying which and from what,
/// `Err` with why `runtime = "onnx"` would not start. (`auto` never fails: it would serve
/// candle, and the line says why.)
pub fn probe(
    cfg: &ModelConfig,
    arch: &EmotionClipConfig,
    weights_sha256: Option<&str>,
) -> std::result::Result<String, String> {
    if let Some(why) = candle_by_config(cfg) {
        return Ok(format!("candle ({why})"));
    }
    let source = weights_source(cfg, weights_sha256);
    let trt_cache = cfg.onnx_cache_dir.join("trt");
    let opts = serve_options(cfg, &trt_cache);
    let precision = cfg.precision.name();
    match OnnxEncoder::probe(arch, &source, &opts) {
        Ok(CacheProbe::Ready { dir, provider }) => Ok(format!(
            "onnx {precision} on {}: the cached export {} is verified and opens",
            provider.name(),
            dir.display()
        )),
        Ok(CacheProbe::Absent { dir }) => Ok(format!(
            "onnx {precision}: ONNX Runtime loads; nothing cached at {} yet: `affectd run` \
             exports there at start",
            dir.display()
        )),
        Ok(CacheProbe::Untrusted { dir, why }) => Ok(format!(
            "onnx {precision}: the cached export {} is not trusted ({why}): `affectd run` \
             exports it again at start",
            dir.display()
        )),
        Err(e) if cfg.runtime == ModelRuntime::Auto => {
            Ok(format!("candle (auto: ONNX Runtime cannot serve: {e:#})"))
        }
        Err(e) => Err(format!("[model] runtime = \"onnx\": {e:#}")),
    }
}

/// `affectd embed`: candle, or with `--runtime onnx` the daemon's ONNX path (the model
/// exported into a temporary export cache, served by ONNX Runtime on the CPU with its default
/// threads; the library as the daemon finds it without a config).
pub fn embed(args: &EmbedArgs) -> std::result::Result<(), crate::model::Error> {
    if args.runtime == EmbedRuntime::Candle {
        return crate::model::embed::run(args);
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let tmp = std::env::temp_dir().join(format!("affectd-embed-{}-{nanos}", std::process::id()));
    let weights = &args.model;
    let result = crate::model::embed::run_with(args, &Device::Cpu, &mut |model| {
        let sha256 =
            crate::digest::sha256_file(weights).map_err(|source| crate::model::Error::Io {
                path: weights.clone(),
                source,
            })?;
        let trt_cache = tmp.join("trt");
        let opts = ServeOptions {
            cache_dir: &tmp,
            precision: crate::onnx::Precision::F32,
            attention: AttentionForm::default(),
            session: SessionSpec {
                section: "model",
                ort_library: None,
                providers: &[crate::detect::Provider::Cpu],
                threads: 0,
                trt_fp16: false,
                trt_cache_dir: &trt_cache,
            },
        };
        let (encoder, _) = OnnxEncoder::serve(model, &WeightsSource::File { sha256 }, &opts)
            .map_err(|e| {
                crate::model::Error::Candle(candle_core::Error::Msg(format!(
                    "--runtime onnx: {e:#}"
                )))
            })?;
        Ok(Box::new(OnnxEngine(encoder)))
    });
    let _ = std::fs::remove_dir_all(&tmp);
    result
}
