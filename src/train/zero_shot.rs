//! The read-out's zero-shot classifier as tensors, and how closely one model's read-out
//! follows another's on the same windows (a student and its teacher, an adapted model and the
//! one it started from).

use candle_core::{Device, Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::model::l2_normalize;
use crate::readout::Readout;

/// The read-out's zero-shot classifier: softmax over the configured emotion classes of
/// `logit_scale * cos(embedding, class text embedding)`.
pub struct ZeroShot {
    /// [K, E], L2-normalised.
    classes: Tensor,
    scale: f64,
}

impl ZeroShot {
    pub fn new(readout: &Readout, device: &Device) -> Result<Self> {
        let (rows, dim, scale) = readout.class_embeddings();
        Ok(Self {
            classes: Tensor::from_slice(rows, (rows.len() / dim, dim), device)?,
            scale: f64::from(scale),
        })
    }

    /// A classifier of explicit (L2-normalised) class rows [K, E] and multiplier.
    pub fn from_classes(classes: Tensor, scale: f64) -> Self {
        Self { classes, scale }
    }

    /// Logits [B, K] of (video or text) embeddings [B, E].
    pub fn logits(&self, embeddings: &Tensor) -> Result<Tensor> {
        l2_normalize(embeddings)?.matmul(&self.classes.t()?)? * self.scale
    }

    /// Class probabilities [B, K] of embeddings [B, E].
    pub fn probabilities(&self, embeddings: &Tensor) -> Result<Tensor> {
        candle_nn::ops::softmax(&self.logits(embeddings)?, candle_core::D::Minus1)
    }
}

/// How closely a model's read-out follows a reference model's on the same windows.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Agreement {
    /// Mean cosine similarity of the video embeddings.
    pub embedding_cosine: f32,
    /// Fraction of windows whose top emotion is the reference's.
    pub top1_agreement: f32,
    /// Mean absolute difference of the read-out's valence and of its arousal.
    pub valence_mae: f32,
    pub arousal_mae: f32,
    pub windows: usize,
}

/// Accumulates [`Agreement`] over batches.
#[derive(Default)]
pub struct AgreementSum {
    cosine: f64,
    top1: usize,
    valence: f64,
    arousal: f64,
    n: usize,
}

impl AgreementSum {
    /// Adds a batch of video embeddings (rows) of the model and of the reference.
    pub fn add(&mut self, readout: &Readout, model: &[Vec<f32>], reference: &[Vec<f32>]) {
        for (s, t) in model.iter().zip(reference) {
            let (rs, rt) = (readout.read(s), readout.read(t));
            self.top1 += usize::from(Readout::top(&rs) == Readout::top(&rt));
            self.valence += f64::from((rs.valence - rt.valence).abs());
            self.arousal += f64::from((rs.arousal - rt.arousal).abs());
            self.cosine += f64::from(cosine(s, t));
            self.n += 1;
        }
    }

    pub fn finish(&self) -> Agreement {
        let n = self.n.max(1) as f64;
        Agreement {
            embedding_cosine: (self.cosine / n) as f32,
            top1_agreement: (self.top1 as f64 / n) as f32,
            valence_mae: (self.valence / n) as f32,
            arousal_mae: (self.arousal / n) as f32,
            windows: self.n,
        }
    }
}

/// Cosine similarity of two vectors (0 for a zero vector).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>();
    dot(a, b) / (dot(a, a).sqrt() * dot(b, b).sqrt()).max(1e-12)
}
