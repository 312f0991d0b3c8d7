//! The distillation objective and the agreement metrics.
//!
//! loss = w_cos * (1 - cos(student video, teacher video))
//!      + w_feat * MSE(student frame hint [projected], teacher frame hint)
//!      + w_kl * T^2 * KL(teacher || student zero-shot emotion distribution at temperature T)
//!
//! The zero-shot distribution is the read-out's: softmax over the configured emotion classes
//! of `logit_scale * cos(video, class text embedding)`, with the teacher's text embeddings.

use candle_core::{D, Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::model::l2_normalize;
use crate::readout::Readout;
use crate::train::zero_shot::{self, ZeroShot};

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

/// How closely a student follows the teacher on held-out windows, and its loss there.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Agreement {
    #[serde(flatten)]
    pub with_teacher: zero_shot::Agreement,
    /// The distillation loss on the held-out windows.
    pub loss: LossParts,
}

/// Accumulates `Agreement` over batches.
#[derive(Default)]
pub struct AgreementSum {
    with_teacher: zero_shot::AgreementSum,
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
        self.with_teacher.add(readout, student, teacher);
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
            with_teacher: self.with_teacher.finish(),
            loss: LossParts {
                total: l(0),
                cosine: l(1),
                feature: l(2),
                kl: l(3),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn identical_outputs_cost_nothing_and_different_ones_do() -> Result<()> {
        let dev = Device::Cpu;
        let zs = ZeroShot::from_classes(
            l2_normalize(&Tensor::new(
                &[[1f32, 0., 0.], [0., 1., 0.], [0., 0., 1.]],
                &dev,
            )?)?,
            10.0,
        );
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

    /// Every term against numpy (float64) on small tensors, computed as:
    ///
    /// ```text
    /// l2 = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    /// C = l2([[1,0,0],[0,1,0],[0,0,1],[.5,.5,0]]); scale = 3
    /// cosine  = (1 - (l2(sv) * l2(tv)).sum(1)).mean()
    /// feature = ((sh - th) ** 2).mean()
    /// lt, ls  = log_softmax(scale * l2(tv) @ C.T / T), log_softmax(scale * l2(sv) @ C.T / T)
    /// kl      = (exp(lt) * (lt - ls)).sum(1).mean() * T**2      # KL(teacher || student)
    /// ```
    ///
    /// The reverse direction KL(student || teacher) and the KL without the T^2 factor are
    /// listed too, so that a swapped direction or a dropped factor cannot pass. (T = 4 would
    /// multiply the float32 rounding of the KL, ~1e-7, past 1e-6; T = 0.5 pins the factor as
    /// well.)
    #[test]
    fn the_terms_match_numpy() -> Result<()> {
        let dev = Device::Cpu;
        let zs = ZeroShot::from_classes(
            l2_normalize(&Tensor::new(
                &[[1f32, 0., 0.], [0., 1., 0.], [0., 0., 1.], [0.5, 0.5, 0.]],
                &dev,
            )?)?,
            3.0,
        );
        let tv = Tensor::new(&[[1f32, 0.2, -0.3], [0.1, -1.0, 0.4]], &dev)?;
        let sv = Tensor::new(&[[0.1f32, 1.0, 0.3], [1.0, 0.1, 0.4]], &dev)?;
        let th = Tensor::new(
            &[[[0.5f32, 1.0], [2.0, -1.0]], [[0.0, 0.1], [0.2, 0.3]]],
            &dev,
        )?;
        let sh = Tensor::new(
            &[[[0.25f32, 1.5], [1.0, -1.0]], [[0.5, 0.1], [-0.2, 0.0]]],
            &dev,
        )?;
        const COSINE: f64 = 0.837445005;
        const FEATURE: f64 = 0.226562501;
        // (T, KL(teacher || student) * T^2, KL(student || teacher) * T^2, KL alone,
        //  total with weights cosine 0.5, feature 2, kl 0.25)
        let cases: [(f64, f64, f64, f64, f64); 3] = [
            (1.0, 1.139658533, 1.057180895, 1.139658533, 1.156762139),
            (2.0, 1.388777562, 1.287657199, 0.347194391, 1.219041896),
            (0.5, 0.774805900, 0.692382408, 3.099223601, 1.065548981),
        ];
        for (t, kl, reverse, without_t2, total) in cases {
            let w = LossWeights {
                cosine: 0.5,
                feature: 2.0,
                kl: 0.25,
                temperature: t,
            };
            let (tensor, got) = distillation_loss(&w, &zs, &sv, &sh, &tv, &th)?;
            let near = |a: f32, b: f64| (f64::from(a) - b).abs() <= 1e-6;
            assert!(near(got.cosine, COSINE), "T {t}: {got:?}");
            assert!(near(got.feature, FEATURE), "T {t}: {got:?}");
            assert!(near(got.kl, kl), "T {t}: {got:?}, want kl {kl}");
            assert!(near(got.total, total), "T {t}: {got:?}, want total {total}");
            assert_eq!(tensor.to_scalar::<f32>()?, got.total);
            // What a wrong direction or a missing T^2 would have given is far from it.
            let far = |a: f32, b: f64| (f64::from(a) - b).abs() > 0.05;
            assert!(far(got.kl, reverse) && (t == 1.0 || far(got.kl, without_t2)));
        }
        Ok(())
    }
}
