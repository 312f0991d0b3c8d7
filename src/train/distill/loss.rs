//! The distillation objective and the agreement metrics.
//!
//! loss = w_cos * (1 - cos(student video, teacher video))
//!      + w_feat * MSE(student frame hint [projected], teacher frame hint)
//!      + w_kl * T^2 * KL(teacher || student zero-shot emotion distribution at temperature T)
//!
//! The zero-shot distribution is the read-out's: softmax over the configured emotion classes
//! of `logit_scale * cos(video, class text embedding)`, with the teacher's text embeddings.

use candle_core::{D, Device, Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::model::l2_normalize;
use crate::readout::Readout;

/// Weights of the three terms and the softening temperature.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct LossWeights {
    pub cosine: f64,
    pub feature: f64,
    pub kl: f64,
    pub temperature: f64,
}

impl Default for LossWeights {
    fn default() -> Self {
        Self {
            cosine: 1.0,
            feature: 1.0,
            kl: 1.0,
            temperature: 2.0,
        }
    }
}

/// The value of each term (unweighted) and the weighted total.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct LossParts {
    pub total: f32,
    pub cosine: f32,
    pub feature: f32,
    pub kl: f32,
}

/// The read-out's zero-shot classifier as tensors.
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

    /// Logits [B, K] of video embeddings [B, E].
    pub fn logits(&self, video: &Tensor) -> Result<Tensor> {
        l2_normalize(video)?.matmul(&self.classes.t()?)? * self.scale
    }
}

/// The objective for a batch: student and teacher video embeddings [B, E] and frame hints
/// [B, T, W] (the student's already projected to the teacher's width).
pub fn distillation_loss(
    weights: &LossWeights,
    zero_shot: &ZeroShot,
    student_video: &Tensor,
    student_hint: &Tensor,
    teacher_video: &Tensor,
    teacher_hint: &Tensor,
) -> Result<(Tensor, LossParts)> {
    let cos = (l2_normalize(student_video)? * l2_normalize(teacher_video)?)?.sum(1)?;
    let cosine = (1.0 - cos)?.mean_all()?;
    let feature = (student_hint - teacher_hint)?.sqr()?.mean_all()?;
    let t = weights.temperature;
    let teacher_logits = (zero_shot.logits(teacher_video)? / t)?;
    let p_teacher = candle_nn::ops::softmax(&teacher_logits, D::Minus1)?;
    let log_p_teacher = candle_nn::ops::log_softmax(&teacher_logits, D::Minus1)?;
    let log_p_student =
        candle_nn::ops::log_softmax(&(zero_shot.logits(student_video)? / t)?, D::Minus1)?;
    let kl = ((p_teacher * (log_p_teacher - log_p_student)?)?
        .sum(1)?
        .mean_all()?
        * (t * t))?;
    let total =
        (((&cosine * weights.cosine)? + (&feature * weights.feature)?)? + (&kl * weights.kl)?)?;
    let parts = LossParts {
        total: total.to_scalar()?,
        cosine: cosine.to_scalar()?,
        feature: feature.to_scalar()?,
        kl: kl.to_scalar()?,
    };
    Ok((total, parts))
}

/// How closely a student follows the teacher on held-out windows.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Agreement {
    /// Mean cosine similarity of the video embeddings.
    pub embedding_cosine: f32,
    /// Fraction of windows whose top zero-shot emotion is the teacher's.
    pub top1_agreement: f32,
    /// Mean absolute difference of the read-out's valence and of its arousal.
    pub valence_mae: f32,
    pub arousal_mae: f32,
    /// The distillation loss on the held-out windows.
    pub loss: LossParts,
    pub windows: usize,
}

/// Accumulates `Agreement` over batches.
#[derive(Default)]
pub struct AgreementSum {
    cosine: f64,
    top1: usize,
    valence: f64,
    arousal: f64,
    loss: [f64; 4],
    n: usize,
}

impl AgreementSum {
    /// Adds a batch of student and teacher video embeddings (rows) and its loss.
    pub fn add(
        &mut self,
        readout: &Readout,
        student: &[Vec<f32>],
        teacher: &[Vec<f32>],
        loss: LossParts,
    ) {
        let b = student.len();
        for (s, t) in student.iter().zip(teacher) {
            let (rs, rt) = (readout.read(s), readout.read(t));
            self.top1 += usize::from(Readout::top(&rs) == Readout::top(&rt));
            self.valence += f64::from((rs.valence - rt.valence).abs());
            self.arousal += f64::from((rs.arousal - rt.arousal).abs());
            self.cosine += f64::from(cosine(s, t));
        }
        for (acc, v) in self
            .loss
            .iter_mut()
            .zip([loss.total, loss.cosine, loss.feature, loss.kl])
        {
            *acc += f64::from(v) * b as f64;
        }
        self.n += b;
    }

    pub fn finish(&self) -> Agreement {
        let n = self.n.max(1) as f64;
        let l = |i: usize| (self.loss[i] / n) as f32;
        Agreement {
            embedding_cosine: (self.cosine / n) as f32,
            top1_agreement: (self.top1 as f64 / n) as f32,
            valence_mae: (self.valence / n) as f32,
            arousal_mae: (self.arousal / n) as f32,
            loss: LossParts {
                total: l(0),
                cosine: l(1),
                feature: l(2),
                kl: l(3),
            },
            windows: self.n,
        }
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>();
    dot(a, b) / (dot(a, a).sqrt() * dot(b, b).sqrt()).max(1e-12)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_outputs_cost_nothing_and_different_ones_do() -> Result<()> {
        let dev = Device::Cpu;
        let zs = ZeroShot {
            classes: l2_normalize(&Tensor::new(
                &[[1f32, 0., 0.], [0., 1., 0.], [0., 0., 1.]],
                &dev,
            )?)?,
            scale: 10.0,
        };
        let v = Tensor::new(&[[1f32, 0.2, -0.3], [0.1, -1.0, 0.4]], &dev)?;
        let h = Tensor::new(
            &[[[0.5f32, 1.0], [2.0, -1.0]], [[0.0, 0.1], [0.2, 0.3]]],
            &dev,
        )?;
        let w = LossWeights::default();
        let (_, same) = distillation_loss(&w, &zs, &v, &h, &v, &h)?;
        assert!(same.total.abs() < 1e-5, "{same:?}");
        let other = Tensor::new(&[[0.1f32, 1.0, 0.3], [1.0, 0.1, 0.4]], &dev)?;
        let (_, diff) = distillation_loss(&w, &zs, &other, &(&h + 1.0)?, &v, &h)?;
        assert!(
            diff.cosine > 0.1 && (diff.feature - 1.0).abs() < 1e-5 && diff.kl > 0.1,
            "{diff:?}"
        );
        Ok(())
    }
}
