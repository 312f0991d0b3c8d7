//! Video embeddings of captured windows: the crops stored by capture go through the same
//! encoder input path as the live windows (`EncoderCrop::input` -> `preprocess::stack` ->
//! `EmotionClip::encode_video`), so the heads see what the read-out will see.

use candle_core::DType;

use crate::capture::{CaptureError, Dataset, SampleMeta};
use crate::model::EmotionClip;
use crate::model::preprocess::{self, FrameInput};

/// Why a window could not be embedded.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("sample {id}: {source}")]
    Load { id: String, source: CaptureError },
    #[error("sample {id}: {problem}")]
    Shape { id: String, problem: String },
    #[error("encoder: {0}")]
    Encode(#[from] candle_core::Error),
}

/// Raw video embeddings of `samples`, in order, encoding up to `max_frames` frames per
/// forward. `progress` is called with the number of windows done.
pub fn embed_samples(
    model: &EmotionClip,
    dataset: &Dataset,
    samples: &[&SampleMeta],
    max_frames: usize,
    mut progress: impl FnMut(usize),
) -> Result<Vec<Vec<f32>>, EmbedError> {
    let (t, s) = (model.video_len(), model.config().vision_cfg.image_size);
    let per_batch = (max_frames / t).max(1);
    let mut out = Vec::with_capacity(samples.len());
    for batch in samples.chunks(per_batch) {
        let mut inputs: Vec<FrameInput> = Vec::with_capacity(batch.len() * t);
        for sample in batch {
            let crops = dataset.load(sample).map_err(|source| EmbedError::Load {
                id: sample.id.clone(),
                source,
            })?;
            if crops.len() != t || crops.iter().any(|c| c.size != s) {
                return Err(EmbedError::Shape {
                    id: sample.id.clone(),
                    problem: format!(
                        "{} crops of {} px, the model takes {t} of {s} px",
                        crops.len(),
                        crops.first().map_or(0, |c| c.size)
                    ),
                });
            }
            inputs.extend(crops.iter().map(|c| c.input()));
        }
        let b = batch.len();
        let (pixels, masks) = preprocess::stack(&inputs, model.device())?;
        let video = pixels.reshape((b, t, 3, s, s))?;
        let mask = masks.reshape((b, t, s, s))?;
        let embeddings = model
            .encode_video(&video, &mask)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        out.extend(embeddings);
        progress(out.len());
    }
    Ok(out)
}
