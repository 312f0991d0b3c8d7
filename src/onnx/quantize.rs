//! int8 for the exported graphs: symmetric per-output-channel weight quantisation, and the
//! accuracy check of an int8 export against the f32 one on captured windows (what
//! `affectd export-onnx --precision int8` prints, records and refuses on).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::export::{
    Error, FEATURES, FRAME_ENCODER_FILE, FRAME_FEATURES, PATCH_WEIGHTS, PIXELS,
    TEMPORAL_ENCODER_FILE, VIDEO,
};
use crate::model::EmotionClip;
use crate::model::preprocess::{self, EncoderCrop};
use crate::readout::{Readout, ReadoutConfig};
use crate::train::data::WindowSource;
use crate::train::zero_shot::cosine;

/// A weight matrix `[K, N]` (the `B` of `A @ B`) quantised per column (output channel):
/// `B[k, n] ~= q[k, n] * scale[n]`, `q` in [-127, 127], zero point 0.
#[derive(Debug, Clone, PartialEq)]
pub struct PerColumn {
    /// Row-major `[K, N]`.
    pub q: Vec<i8>,
    /// `[N]`.
    pub scale: Vec<f32>,
}

/// Quantises `b` (row-major `[k, n]`) per column, symmetric: each column's largest magnitude
/// maps to 127. An all-zero column gets scale 1 (its values are all 0 either way).
///
/// # Panics
/// When `b` does not hold `k * n` values.
pub fn per_column_symmetric(b: &[f32], k: usize, n: usize) -> PerColumn {
    assert_eq!(b.len(), k * n, "a [{k}, {n}] matrix");
    let mut max = vec![0f32; n];
    for row in b.chunks_exact(n) {
        for (m, v) in max.iter_mut().zip(row) {
            *m = m.max(v.abs());
        }
    }
    let scale: Vec<f32> = max
        .iter()
        .map(|&m| if m > 0.0 { m / 127.0 } else { 1.0 })
        .collect();
    let q = b
        .chunks_exact(n)
        .flat_map(|row| {
            row.iter()
                .zip(&scale)
                .map(|(v, s)| (v / s).round().clamp(-127.0, 127.0) as i8)
        })
        .collect();
    PerColumn { q, scale }
}

/// The default threshold: `export-onnx` refuses an int8 export whose mean video-embedding
/// cosine to f32 is below this, unless forced.
pub const MIN_COSINE: f32 = 0.99;

/// How close an int8 export came to its f32 export on the same windows (in the manifest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccuracyCheck {
    /// Where the windows came from.
    pub windows_from: String,
    pub windows: usize,
    pub frames: usize,
    /// Cosine of the video embeddings (int8 graphs end to end vs f32 graphs end to end).
    pub video_cosine_mean: f32,
    pub video_cosine_min: f32,
    /// Cosine of the frame encoder's features, per frame.
    pub frame_cosine_mean: f32,
    pub frame_cosine_min: f32,
    /// Fraction of windows whose top zero-shot emotion (the default read-out's classes) is
    /// the f32 graphs' one; `None` when the model's text tower cannot embed the class
    /// descriptions (`top1_unavailable` says why: a test model's small vocabulary, say).
    pub top1_agreement: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top1_unavailable: Option<String>,
    /// The threshold on `video_cosine_mean`, and whether the export was forced past it.
    pub min_cosine: f32,
    pub passed: bool,
    pub forced: bool,
}

impl AccuracyCheck {
    /// One line per measure, for the terminal.
    pub fn report(&self) -> String {
        format!(
            "int8 vs f32 on {} windows ({} frames) from {}:\n  video embedding cosine: mean \
             {:.5}, min {:.5}\n  frame feature cosine:   mean {:.5}, min {:.5}\n  top-1 \
             zero-shot agreement: {}",
            self.windows,
            self.frames,
            self.windows_from,
            self.video_cosine_mean,
            self.video_cosine_min,
            self.frame_cosine_mean,
            self.frame_cosine_min,
            match (self.top1_agreement, &self.top1_unavailable) {
                (Some(a), _) => format!("{:.1} %", 100.0 * a),
                (None, why) => format!("n/a ({})", why.as_deref().unwrap_or("not measured")),
            },
        )
    }
}

/// A frame and a temporal session of one export.
struct Pair {
    frame: ort::session::Session,
    temporal: ort::session::Session,
}

impl Pair {
    fn open(dir: &Path) -> Result<Pair, Error> {
        let open = |file: &str| {
            super::session::open_cpu(&dir.join(file), 0, None)
                .map_err(|e| Error::Check(format!("{}: {e}", dir.join(file).display())))
        };
        Ok(Pair {
            frame: open(FRAME_ENCODER_FILE)?,
            temporal: open(TEMPORAL_ENCODER_FILE)?,
        })
    }

    /// Frame features `[n, e]` and the video embedding `[e]` of one window.
    fn window(
        &mut self,
        pixels: &[f32],
        patch_weights: &[f32],
        n: usize,
        side: usize,
    ) -> Result<(Vec<f32>, Vec<f32>), Error> {
        use ort::value::TensorRef;
        let err = |e: ort::Error| Error::Check(format!("running a graph: {e}"));
        let p = patch_weights.len() / n;
        let x = TensorRef::from_array_view(([n, 3, side, side], pixels)).map_err(err)?;
        let w = TensorRef::from_array_view(([n, p], patch_weights)).map_err(err)?;
        let out = self
            .frame
            .run(ort::inputs![PIXELS => x, PATCH_WEIGHTS => w])
            .map_err(err)?;
        let (_, features) = out[FEATURES].try_extract_tensor::<f32>().map_err(err)?;
        let features = features.to_vec();
        drop(out);
        let e = features.len() / n;
        let f = TensorRef::from_array_view(([1, n, e], &features[..])).map_err(err)?;
        let out = self
            .temporal
            .run(ort::inputs![FRAME_FEATURES => f])
            .map_err(err)?;
        let (_, video) = out[VIDEO].try_extract_tensor::<f32>().map_err(err)?;
        let video = video.to_vec();
        Ok((features, video))
    }
}

/// Runs the f32 export in `f32_dir` and the int8 export in `int8_dir` on `windows` (at most
/// `limit`, evenly spaced) and compares them. `model` gives the patch weights of the masks
/// and the read-out's class embeddings (its text tower).
pub fn compare(
    model: &EmotionClip,
    f32_dir: &Path,
    int8_dir: &Path,
    windows: &dyn WindowSource,
    windows_from: &str,
    limit: usize,
    min_cosine: f32,
) -> Result<AccuracyCheck, Error> {
    if windows.is_empty() {
        return Err(Error::Usage(format!(
            "{windows_from}: no windows to check the int8 export on"
        )));
    }
    let (readout, top1_unavailable) =
        match crate::encode::build_readout(model, &ReadoutConfig::default()) {
            Ok(r) => (Some(r), None),
            Err(e) => (None, Some(e.to_string())),
        };
    let mut reference = Pair::open(f32_dir)?;
    let mut int8 = Pair::open(int8_dir)?;
    let take = windows.len().min(limit.max(1));
    let (mut video_cos, mut frame_cos) = (Vec::new(), Vec::new());
    let mut top1 = 0usize;
    for j in 0..take {
        let i = j * windows.len() / take;
        let crops: Vec<EncoderCrop> = windows
            .load(i)
            .map_err(|e| Error::Check(format!("window {}: {e:#}", windows.id(i))))?;
        let inputs: Vec<_> = crops.iter().map(EncoderCrop::input).collect();
        let (pixels, masks) = preprocess::stack(&inputs, model.device())?;
        let n = inputs.len();
        let side = inputs[0].size;
        let patch_weights = model
            .backbone
            .visual
            .patch_weights(&masks)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let pixels = pixels.flatten_all()?.to_vec1::<f32>()?;
        let (f_ref, v_ref) = reference.window(&pixels, &patch_weights, n, side)?;
        let (f_q, v_q) = int8.window(&pixels, &patch_weights, n, side)?;
        let e = v_ref.len();
        frame_cos.extend(
            f_ref
                .chunks_exact(e)
                .zip(f_q.chunks_exact(e))
                .map(|(a, b)| cosine(a, b)),
        );
        video_cos.push(cosine(&v_ref, &v_q));
        if let Some(readout) = &readout {
            top1 += usize::from(top(readout, &v_ref) == top(readout, &v_q));
        }
    }
    let mean = |v: &[f32]| (v.iter().map(|&c| f64::from(c)).sum::<f64>() / v.len() as f64) as f32;
    let min = |v: &[f32]| v.iter().copied().fold(f32::INFINITY, f32::min);
    let video_cosine_mean = mean(&video_cos);
    Ok(AccuracyCheck {
        windows_from: windows_from.to_owned(),
        windows: take,
        frames: frame_cos.len(),
        video_cosine_mean,
        video_cosine_min: min(&video_cos),
        frame_cosine_mean: mean(&frame_cos),
        frame_cosine_min: min(&frame_cos),
        top1_agreement: readout.is_some().then(|| top1 as f32 / take as f32),
        top1_unavailable,
        min_cosine,
        passed: video_cosine_mean >= min_cosine,
        forced: false,
    })
}

fn top(readout: &Readout, video: &[f32]) -> usize {
    Readout::top(&readout.read(video))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_quantised_on_their_own_scale() {
        // [3, 2]: column 0 spans +-2, column 1 +-0.5, column 2 of a [3,3] is zero below.
        let b = [2.0f32, 0.5, -1.0, -0.25, 0.01, 0.0];
        let q = per_column_symmetric(&b, 3, 2);
        assert_eq!(q.scale, [2.0 / 127.0, 0.5 / 127.0]);
        assert_eq!(q.q, [127, 127, -64, -64, 1, 0]);
        for (i, v) in b.iter().enumerate() {
            let back = f32::from(q.q[i]) * q.scale[i % 2];
            assert!((back - v).abs() <= q.scale[i % 2] / 2.0 + 1e-7, "{i}");
        }
        let zero = per_column_symmetric(&[0.0, 1.0, 0.0, -1.0], 2, 2);
        assert_eq!(zero.scale[0], 1.0);
        assert_eq!(zero.q, [0, 127, 0, -127]);
    }
}
