//! `affectd embed`: runs the model on tensors from a safetensors file and writes the
//! embeddings, for parity checks against the official implementation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::engine::{CandleEngine, Engine};
use super::{EmotionClip, EmotionClipConfig, Error};

/// Arguments of `affectd embed`.
#[derive(Debug, Clone, clap::Args)]
pub struct EmbedArgs {
    /// Weights: `.safetensors` or the official release `.pt` (official key names).
    #[arg(long = "model", value_name = "W")]
    pub model: PathBuf,
    /// Model config JSON in the official layout (`embed_dim`, `vision_cfg`, `text_cfg`,
    /// `temporal`).
    #[arg(long = "model-config", value_name = "C.json")]
    pub model_config: PathBuf,
    /// Input safetensors: `input.video` [B,T,3,H,W] f32 (normalised), `input.mask` [B,T,H,W]
    /// u8, optional `input.text_tokens` [N,77] i64.
    #[arg(long, value_name = "I.safetensors")]
    pub input: PathBuf,
    /// Output safetensors: `frame_features` [B,T,E], `hmn_token` [B*T,width],
    /// `video_embedding` [B,E] (not normalised), `text_embedding` [N,E] with tokens; all f32.
    #[arg(long, value_name = "O.safetensors")]
    pub output: PathBuf,
    /// What runs the frame and temporal encoders: `candle`, or `onnx` (the model exported to
    /// ONNX in a temporary folder and run by ONNX Runtime on the CPU, as the daemon serves
    /// it; the subject token and the text tower stay candle's).
    #[arg(long, value_enum, default_value = "candle")]
    pub runtime: EmbedRuntime,
}

/// `affectd embed --runtime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum EmbedRuntime {
    #[default]
    Candle,
    Onnx,
}

/// Frames encoded per forward pass (bounds memory on long inputs).
const FRAME_BATCH: usize = 32;

/// Runs the parity tool on the CPU.
pub fn run(args: &EmbedArgs) -> Result<(), Error> {
    run_on(args, &Device::Cpu)
}

/// Runs the parity tool on `device`, with candle.
pub fn run_on(args: &EmbedArgs, device: &Device) -> Result<(), Error> {
    run_with(args, device, &mut |_| Ok(Box::new(CandleEngine)))
}

/// Makes the engine that runs a loaded model's frame and temporal encoders.
pub type MakeEngine<'a> = dyn FnMut(&EmotionClip) -> Result<Box<dyn Engine>, Error> + 'a;

/// Runs the parity tool on `device`, the frame and temporal encoders through the engine
/// `engine` makes for the loaded model.
pub fn run_with(
    args: &EmbedArgs,
    device: &Device,
    engine: &mut MakeEngine<'_>,
) -> Result<(), Error> {
    let cfg = EmotionClipConfig::from_json_file(&args.model_config)?;
    let inputs =
        candle_core::safetensors::load(&args.input, device).map_err(|source| Error::Input {
            path: args.input.clone(),
            problem: format!("cannot read safetensors: {source}"),
        })?;
    let bad = |problem: String| Error::Input {
        path: args.input.clone(),
        problem,
    };
    let video = inputs
        .get("input.video")
        .ok_or_else(|| bad("no tensor `input.video`".into()))?;
    let mask = inputs
        .get("input.mask")
        .ok_or_else(|| bad("no tensor `input.mask`".into()))?;
    let s = cfg.vision_cfg.image_size;
    let (b, t) = match video.dims() {
        &[b, t, 3, h, w] if h == s && w == s => (b, t),
        d => {
            return Err(bad(format!(
                "`input.video` is {d:?}, expected [B, T, 3, {s}, {s}]"
            )));
        }
    };
    if mask.dims() != [b, t, s, s] {
        return Err(bad(format!(
            "`input.mask` is {:?}, expected [{b}, {t}, {s}, {s}]",
            mask.dims()
        )));
    }
    if video.dtype() != DType::F32 || mask.dtype() != DType::U8 {
        return Err(bad(format!(
            "`input.video` must be f32 and `input.mask` u8, got {:?} and {:?}",
            video.dtype(),
            mask.dtype()
        )));
    }
    let tokens = match inputs.get("input.text_tokens") {
        None => None,
        Some(tok) => {
            let ctx = cfg.text_cfg.context_length;
            match tok.dims() {
                &[_, l] if l == ctx && tok.dtype() == DType::I64 => Some(tok),
                d => {
                    return Err(bad(format!(
                        "`input.text_tokens` is {d:?} {:?}, expected [N, {ctx}] i64",
                        tok.dtype()
                    )));
                }
            }
        }
    };
    if t != cfg.temporal.video_len {
        return Err(bad(format!(
            "{t} frames per video, the temporal encoder takes exactly {}",
            cfg.temporal.video_len
        )));
    }

    let model = EmotionClip::load(&args.model, &cfg, device)?;
    let mut engine = engine(&model)?;
    let frames = video.reshape((b * t, 3, s, s))?;
    let masks = mask.reshape((b * t, s, s))?;
    let visual = &model.backbone.visual;
    let (mut features, mut hmn) = (Vec::new(), Vec::new());
    for start in (0..b * t).step_by(FRAME_BATCH) {
        let n = FRAME_BATCH.min(b * t - start);
        let (f, m) = (frames.narrow(0, start, n)?, masks.narrow(0, start, n)?);
        features.push(engine.frames(&model, &f, &m)?.to_device(device)?);
        hmn.push(visual.subject_token(&visual.patch_weights(&m)?.to_dtype(model.dtype())?)?);
    }
    let frame_features = Tensor::cat(&features, 0)?.reshape((b, t, cfg.embed_dim))?;
    let hmn_token = Tensor::cat(&hmn, 0)?;
    let video_embedding = engine.video(&model, &frame_features)?;

    let mut out: HashMap<String, Tensor> = HashMap::new();
    out.insert("frame_features".into(), frame_features);
    out.insert("hmn_token".into(), hmn_token);
    out.insert("video_embedding".into(), video_embedding);
    if let Some(tokens) = tokens {
        out.insert("text_embedding".into(), model.encode_text(tokens)?);
    }
    write(&args.output, &out)
}

fn write(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<(), Error> {
    let cpu: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)))
        .collect::<candle_core::Result<_>>()?;
    candle_core::safetensors::save(&cpu, path).map_err(|source| match source {
        candle_core::Error::Io(source) => Error::Io {
            path: path.to_owned(),
            source,
        },
        other => Error::Candle(other),
    })
}
