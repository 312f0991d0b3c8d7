//! Loading the served model: the configured EmotionCLIP weights (or seeded random ones),
//! the engine that runs them (`[model] runtime`: candle, or ONNX Runtime on the export
//! cached for these weights), the read-out's class text embeddings, and the model's identity
//! in results. Start-up, SIGHUP reloads and students all load through [`load`].

use candle_core::{DType, Device};
use tracing::{debug, info, warn};

use super::config::{ModelConfig, ModelDevice};
use super::engine;
use super::live::LiveEncoder;
use crate::model::{ClipTokenizer, EmotionClip, EmotionClipConfig, Error, ModelId};
use crate::readout::{Readout, ReadoutConfig};

/// A model ready to serve: the live encoder, its read-out and its identity.
pub struct LoadedModel {
    pub encoder: LiveEncoder,
    pub readout: Readout,
    pub id: ModelId,
}

/// Loads the configured weights (or the seeded random ones), picks the engine (exporting the
/// model to the ONNX cache when ONNX Runtime serves) and computes the class text embeddings
/// once.
pub fn load(cfg: &ModelConfig, readout: &ReadoutConfig) -> Result<LoadedModel, Error> {
    let (mut model, digest) = load_encoder(cfg)?;
    let readout = build_readout(&model, readout)?;
    // From here the text tower is never run, nor candle's encoders when ONNX Runtime serves:
    // give their memory back (ViT-B/32 f32: about 250 MB, and 420 MB more with ONNX). The
    // text tower goes before the export, which holds a copy of the encoders' weights.
    model.release(false)?;
    let engine = engine::select(cfg, &model, digest.as_deref())?;
    let onnx = engine.name() == "onnx";
    if onnx {
        model.release(true)?;
    }
    debug!(
        encoders = onnx,
        "released the weights this process no longer runs (the text tower, and the encoders \
         when ONNX Runtime serves)"
    );
    let id = ModelId::new(cfg.name.clone(), digest.as_deref());
    if let (_, Some(fitted_on)) = readout.heads_model()
        && fitted_on != id.weights
    {
        warn!(
            heads_fitted_on = fitted_on,
            serving = %id.weights,
            "the heads file was fitted on embeddings of other weights; its outputs are unreliable"
        );
    }
    let encoder = LiveEncoder::new(model, cfg.crop_policy(), cfg.update_every).with_engine(engine);
    Ok(LoadedModel {
        encoder,
        readout,
        id,
    })
}

/// The read-out of `model`: the class text embeddings from its text tower, computed once.
pub fn build_readout(model: &EmotionClip, cfg: &ReadoutConfig) -> Result<Readout, Error> {
    let tokenizer = ClipTokenizer::new();
    let vocab = model.config().text_cfg.vocab_size;
    Readout::build(cfg, model.logit_scale_exp()?, |texts| {
        let tokens = tokenizer.tokenize_batch(texts, model.device())?;
        let max = tokens.max_all()?.to_scalar::<i64>()?;
        if max >= vocab as i64 {
            candle_core::bail!("token id {max} is outside the text tower's vocabulary of {vocab}")
        }
        model
            .encode_text(&tokens)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()
    })
    .map_err(|e| Error::invalid_config("readout", e.to_string()))
}

/// The configured EmotionCLIP (or the seeded random one) and the sha256 of its weights file
/// (`None` for random weights), without the read-out: what [`load`] and `affectd train`
/// share.
pub fn load_encoder(cfg: &ModelConfig) -> Result<(EmotionClip, Option<String>), Error> {
    let device = match cfg.device {
        ModelDevice::Cpu => Device::Cpu,
        ModelDevice::Cuda => Device::new_cuda(0)?,
    };
    let arch = match &cfg.config {
        Some(path) => EmotionClipConfig::from_json_file(path)?,
        None => EmotionClipConfig::vit_b32(),
    };
    match cfg.weights_to_load() {
        Some(path) => {
            let digest = crate::digest::sha256_file(path).map_err(|source| Error::Io {
                path: path.to_owned(),
                source,
            })?;
            info!(weights = %path.display(), sha256 = %digest, "loading EmotionCLIP weights");
            Ok((
                EmotionClip::load_as(path, &arch, &device, cfg.dtype.dtype())?,
                Some(digest),
            ))
        }
        None => {
            warn!(
                seed = cfg.seed,
                weights = ?cfg.weights,
                "UNTRAINED MODEL: no EmotionCLIP weights file, running seeded random weights. \
                 Emotion scores and valence/arousal are meaningless; every message says \
                 \"untrained\". Put the official release at [model] weights for real results."
            );
            Ok((EmotionClip::random(&arch, cfg.seed, &device)?, None))
        }
    }
}
