//! The three objectives on a batch of B (video, text) pairs, row i of each the i-th pair:
//! video embeddings [B, E] (from the model being trained) and text embeddings [B, E] (the
//! frozen text tower's). Every one is a two-way contrastive loss over the logits
//! `L_ij = cos(v_i, t_j) / tau`:
//!
//!   loss = 1/B sum_i 1/2 (l_v(i) + l_t(i)),
//!   l_v(i) = -log sum_{j in P_v(i)} exp(Lv_ij) / sum_{j in D_v(i)} exp(Lv_ij)
//!
//! and l_t(i) the same over `Lt` (the transposed logits: text i against every video), with
//! P the positives of anchor i and D its positives and negatives. They differ in the logits
//! and the sets:
//!
//! - `clip`: P(i) = {i}, D(i) = the batch; Lv = L, Lt = L^T (symmetric InfoNCE).
//! - `snce` (EmotionCLIP Eq. 5-7): as `clip` with `Lv_ij = L_ij - w_ij`,
//!   `Lt_ij = L_ji - w_ij`, `w_ij = beta / KL(s_i || s_j)` for i != j and 0 on the diagonal,
//!   s the texts' sentiment distributions. A pair of texts of the same sentiment (KL = 0,
//!   w = infinity in the paper) drops out of each other's denominators; the official code
//!   (`src/models/loss_v2.py`) computes `KL(s_j || s_i)` for entry (i, j) and takes `|KL|`;
//!   this follows the paper's Eq. 6.
//! - `pacl` (PACL Eq. 3-14): Lv = L, Lt = L^T, and P, D per the anchor's partition (see
//!   [`pacl_sets`]).

use candle_core::{Device, Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::model::l2_normalize;

/// Added to logits outside a set: `exp` of it is exactly 0 in f32, and so is its gradient.
const OUTSIDE: f64 = -1e30;

/// KL divergences below this count as 0 (the same sentiment): `w = beta / KL_FLOOR` removes
/// the negative as surely as the paper's infinity, without infinities in the arithmetic.
const KL_FLOOR: f64 = 1e-12;

/// The positives and the denominator set of every anchor, on both sides, as 0/1 matrices
/// [B, B] (row i: anchor i; column j: the other side's item j).
#[derive(Debug, Clone, PartialEq)]
pub struct Sets {
    pub b: usize,
    pub pos_v: Vec<f32>,
    pub den_v: Vec<f32>,
    pub pos_t: Vec<f32>,
    pub den_t: Vec<f32>,
}

impl Sets {
    /// Every anchor's positive is its own pair; every item of the batch is in the
    /// denominator.
    pub fn plain(b: usize) -> Self {
        let eye: Vec<f32> = (0..b * b)
            .map(|k| if k / b == k % b { 1.0 } else { 0.0 })
            .collect();
        Self {
            b,
            pos_v: eye.clone(),
            den_v: vec![1.0; b * b],
            pos_t: eye,
            den_t: vec![1.0; b * b],
        }
    }

    /// Item `j` of anchor `i`'s sets on the video (`video`) or text side: (positive,
    /// denominator).
    pub fn get(&self, video: bool, i: usize, j: usize) -> (bool, bool) {
        let (p, d) = if video {
            (&self.pos_v, &self.den_v)
        } else {
            (&self.pos_t, &self.den_t)
        };
        (p[i * self.b + j] > 0.5, d[i * self.b + j] > 0.5)
    }
}

/// `cos(v_i, t_j) / tau`, [B, B].
pub fn logits(video: &Tensor, text: &Tensor, temperature: f64) -> Result<Tensor> {
    l2_normalize(video)?.matmul(&l2_normalize(text)?.t()?)? / temperature
}

/// `log sum_{j: mask_ij = 1} exp(x_ij)` per row.
fn masked_log_sum_exp(x: &Tensor, mask: &[f32], b: usize, device: &Device) -> Result<Tensor> {
    let outside: Vec<f32> = mask
        .iter()
        .map(|&m| if m > 0.5 { 0.0 } else { OUTSIDE as f32 })
        .collect();
    x.broadcast_add(&Tensor::from_vec(outside, (b, b), device)?)?
        .log_sum_exp(1)
}

/// The two-way loss of the module docs over the video-anchored logits `lv` and the
/// text-anchored `lt`.
pub fn two_way(lv: &Tensor, lt: &Tensor, sets: &Sets) -> Result<Tensor> {
    let (b, device) = (sets.b, lv.device());
    let side = |x: &Tensor, pos: &[f32], den: &[f32]| -> Result<Tensor> {
        masked_log_sum_exp(x, den, b, device)? - masked_log_sum_exp(x, pos, b, device)?
    };
    let l_v = side(lv, &sets.pos_v, &sets.den_v)?;
    let l_t = side(lt, &sets.pos_t, &sets.den_t)?;
    ((l_v + l_t)? * 0.5)?.mean_all()
}

/// Symmetric InfoNCE (CLIP).
pub fn info_nce(video: &Tensor, text: &Tensor, temperature: f64) -> Result<Tensor> {
    let l = logits(video, text, temperature)?;
    two_way(&l, &l.t()?, &Sets::plain(l.dim(0)?))
}

/// EmotionCLIP's reweighting (Eq. 6), row-major [B, B]: `beta / KL(s_i || s_j)` off the
/// diagonal, 0 on it; `log_s[i]`: text i's sentiment as log-probabilities.
pub fn snce_weights(log_s: &[&[f64]], beta: f64) -> Vec<f32> {
    let b = log_s.len();
    (0..b * b)
        .map(|k| {
            let (i, j) = (k / b, k % b);
            if i == j {
                return 0.0;
            }
            let kl = super::sentiment::kl(log_s[i], log_s[j]);
            (beta / kl.max(KL_FLOOR)) as f32
        })
        .collect()
}

/// EmotionCLIP's sentiment-guided contrastive loss (Eq. 7).
pub fn snce(
    video: &Tensor,
    text: &Tensor,
    log_s: &[&[f64]],
    beta: f64,
    temperature: f64,
) -> Result<Tensor> {
    let l = logits(video, text, temperature)?;
    let b = l.dim(0)?;
    let w = Tensor::from_vec(snce_weights(log_s, beta), (b, b), l.device())?;
    two_way(&(&l - &w)?, &(l.t()? - &w)?, &Sets::plain(b))
}

/// PACL's partition of a pair (Sec. 3.1) by its factual and emotional match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Partition {
    /// Factual- and emotional-matched (L1).
    Strong,
    /// Emotional-matched, factual-mismatched (L2).
    EmotionalOnly,
    /// Factual-matched, emotional-mismatched (L3).
    FactualOnly,
    /// Neither (L4).
    Weak,
}

impl Partition {
    pub fn of(factual: bool, emotional: bool) -> Self {
        match (factual, emotional) {
            (true, true) => Self::Strong,
            (false, true) => Self::EmotionalOnly,
            (true, false) => Self::FactualOnly,
            (false, false) => Self::Weak,
        }
    }

    pub const ALL: [Partition; 4] = [
        Self::Strong,
        Self::EmotionalOnly,
        Self::FactualOnly,
        Self::Weak,
    ];
}

/// What PACL knows of a batch row: its pair's partition, the factual pseudo-label `f` of
/// its video and the emotional pseudo-label `e` of its text (Sec. 3.2).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PaclRow {
    pub partition: Partition,
    pub factual: usize,
    pub emotional: usize,
}

/// First index of the largest value.
fn argmax(values: impl Iterator<Item = f32>) -> usize {
    let mut best = (0, f32::NEG_INFINITY);
    for (k, v) in values.enumerate() {
        if v > best.1 {
            best = (k, v);
        }
    }
    best.0
}

/// PACL's positives and negatives (Sec. 3.3) of every anchor, from the similarities
/// `sim[i][j] = z^v_i . z^t_j` of the batch:
///
/// - `m_f(t_i)`: the videos whose factual label is that of the video best matching `t_i`
///   (Eq. 6, as its prose says: "the same as f_l"); `m_f^-1(v_i)` the texts whose `m_f`
///   holds `v_i` (Eq. 7);
/// - `m_e(v_i)`: the texts whose emotional label is that of the text best matching `v_i`
///   (Eq. 9); `m_e^-1(t_i)` the videos whose `m_e` holds `t_i` (Eq. 10);
/// - strong-coupled: P = {i}, negatives every j != i (Eq. 5); emotional-only: negatives of
///   `v_i` leave out `m_f^-1(v_i)`, of `t_i` leave out `m_f(t_i)` (Eq. 8); factual-only:
///   negatives of `v_i` leave out `m_e(v_i)`, of `t_i` leave out `m_e^-1(t_i)` (Eq. 11);
///   weak-coupled: P(v_i) = {argmax_k sim[i][k]}, P(t_i) = {argmax_k sim[k][i]}, negatives
///   leave out both (Eq. 12-14).
///
/// D = P and the negatives. Ties in an argmax go to the first index.
pub fn pacl_sets(sim: &[Vec<f32>], rows: &[PaclRow]) -> Sets {
    let b = rows.len();
    let best_text_of_video: Vec<usize> = (0..b).map(|i| argmax(sim[i].iter().copied())).collect();
    let best_video_of_text: Vec<usize> =
        (0..b).map(|i| argmax((0..b).map(|k| sim[k][i]))).collect();
    // v_j in m_f(t_i)
    let in_mf = |i: usize, j: usize| rows[j].factual == rows[best_video_of_text[i]].factual;
    // t_j in m_e(v_i)
    let in_me = |i: usize, j: usize| rows[j].emotional == rows[best_text_of_video[i]].emotional;
    let mut sets = Sets {
        b,
        pos_v: vec![0.0; b * b],
        den_v: vec![0.0; b * b],
        pos_t: vec![0.0; b * b],
        den_t: vec![0.0; b * b],
    };
    for (i, row) in rows.iter().enumerate() {
        let (pos_v, pos_t) = match row.partition {
            Partition::Weak => (best_text_of_video[i], best_video_of_text[i]),
            _ => (i, i),
        };
        sets.pos_v[i * b + pos_v] = 1.0;
        sets.pos_t[i * b + pos_t] = 1.0;
        for j in 0..b {
            // Text j for anchor v_i: t_j in m_f^-1(v_i) <=> v_i in m_f(t_j).
            let (f_v, e_v) = (in_mf(j, i), in_me(i, j));
            // Video j for anchor t_i: v_j in m_e^-1(t_i) <=> t_i in m_e(v_j).
            let (f_t, e_t) = (in_mf(i, j), in_me(j, i));
            let (skip_v, skip_t) = match row.partition {
                Partition::Strong => (false, false),
                Partition::EmotionalOnly => (f_v, f_t),
                Partition::FactualOnly => (e_v, e_t),
                Partition::Weak => (f_v || e_v, f_t || e_t),
            };
            let k = i * b + j;
            if j == pos_v || (j != i && !skip_v) {
                sets.den_v[k] = 1.0;
            }
            if j == pos_t || (j != i && !skip_t) {
                sets.den_t[k] = 1.0;
            }
        }
    }
    sets
}

/// PACL's adaptive contrastive loss over a batch whose rows are `rows`: each anchor's term
/// by its partition (Eq. 5, 8, 11, 14 in Eq. 3), averaged over the batch.
pub fn pacl(video: &Tensor, text: &Tensor, rows: &[PaclRow], temperature: f64) -> Result<Tensor> {
    let l = logits(video, text, temperature)?;
    let sim = l.detach().to_vec2::<f32>()?;
    two_way(&l, &l.t()?, &pacl_sets(&sim, rows))
}

#[cfg(test)]
mod tests {
    //! Each loss against a direct computation of the paper's equations in f64, on small
    //! hand-made batches.
    use std::collections::BTreeSet;

    use super::*;
    use crate::train::adapt::sentiment::kl;

    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    fn unit(a: &[f64]) -> Vec<f64> {
        let n = dot(a, a).sqrt();
        a.iter().map(|x| x / n).collect()
    }

    /// `sim[i][j] = cos(v_i, t_j)`.
    fn cosines(v: &[Vec<f64>], t: &[Vec<f64>]) -> Vec<Vec<f64>> {
        v.iter()
            .map(|vi| t.iter().map(|tj| dot(&unit(vi), &unit(tj))).collect())
            .collect()
    }

    fn tensor(rows: &[Vec<f64>]) -> Tensor {
        let flat: Vec<f32> = rows.iter().flatten().map(|&x| x as f32).collect();
        Tensor::from_vec(flat, (rows.len(), rows[0].len()), &Device::Cpu).unwrap()
    }

    fn value(t: Result<Tensor>) -> f64 {
        f64::from(t.unwrap().to_scalar::<f32>().unwrap())
    }

    /// Five videos and texts in 3-d. Cosines: video i best matches text i, but video 4 text
    /// 1; text i best matches video i, but text 1 video 4 and texts 3 and 4 video 0.
    fn batch() -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
        let v = vec![
            vec![1.0, 0.2, 0.1],
            vec![0.1, 1.0, -0.3],
            vec![-0.5, 0.4, 1.0],
            vec![0.9, -0.6, 0.2],
            vec![0.25, 1.0, 0.05],
        ];
        let t = vec![
            vec![0.8, 0.1, 0.3],
            vec![0.3, 0.9, 0.0],
            vec![-0.2, 0.1, 1.0],
            vec![1.0, -0.2, -0.1],
            vec![0.6, 0.2, 0.7],
        ];
        (v, t)
    }

    /// SNCE(x, y, s) of Eq. 5 with `sim[i][j] = x_i . y_j`.
    fn snce_eq5(sim: &dyn Fn(usize, usize) -> f64, s: &[Vec<f64>], beta: f64, tau: f64) -> f64 {
        let b = s.len();
        let w = |i: usize, j: usize| {
            let kl: f64 = s[i].iter().zip(&s[j]).map(|(p, q)| p * (p / q).ln()).sum();
            // w_ii = 0; beta = 0 is InfoNCE; KL = 0 (i != j) is w = infinity.
            if i == j || beta == 0.0 {
                0.0
            } else if kl == 0.0 {
                f64::INFINITY
            } else {
                beta / kl
            }
        };
        -(0..b)
            .map(|i| {
                let num = (sim(i, i) / tau).exp();
                let den: f64 = (0..b).map(|j| (sim(i, j) / tau - w(i, j)).exp()).sum();
                (num / den).ln()
            })
            .sum::<f64>()
    }

    /// Eq. 7.
    fn snce_eq7(v: &[Vec<f64>], t: &[Vec<f64>], s: &[Vec<f64>], beta: f64, tau: f64) -> f64 {
        let c = cosines(v, t);
        let vt = snce_eq5(&|i, j| c[i][j], s, beta, tau);
        let tv = snce_eq5(&|i, j| c[j][i], s, beta, tau);
        (vt + tv) / (2.0 * s.len() as f64)
    }

    fn sentiments() -> Vec<Vec<f64>> {
        vec![
            vec![0.7, 0.2, 0.1],
            vec![0.1, 0.8, 0.1],
            vec![0.6, 0.3, 0.1],
            vec![0.2, 0.2, 0.6],
            vec![0.7, 0.2, 0.1],
        ]
    }

    fn logs(s: &[Vec<f64>]) -> Vec<Vec<f64>> {
        s.iter()
            .map(|r| r.iter().map(|p| p.ln()).collect())
            .collect()
    }

    #[test]
    fn snce_weights_are_beta_over_kl_with_a_zero_diagonal() {
        let s = sentiments();
        let log_s = logs(&s);
        let refs: Vec<&[f64]> = log_s.iter().map(Vec::as_slice).collect();
        let w = snce_weights(&refs, 2.0);
        let b = s.len();
        for i in 0..b {
            assert_eq!(w[i * b + i], 0.0);
        }
        // KL(s_0 || s_1) = 0.7 ln 7 + 0.2 ln 0.25 + 0 = 1.085 ..., by hand.
        let k01 = 0.7 * 7f64.ln() + 0.2 * 0.25f64.ln();
        assert!((f64::from(w[1]) - 2.0 / k01).abs() < 1e-5, "{}", w[1]);
        // Not symmetric: KL(s_1 || s_0) differs.
        assert!((f64::from(w[b]) - 2.0 / kl(&log_s[1], &log_s[0])).abs() < 1e-5);
        assert!((w[1] - w[b]).abs() > 0.1);
        // Texts 0 and 4 have the same sentiment: the weight is beyond any logit.
        assert!(w[4] > 1e9 && w[4 * b] > 1e9);
    }

    #[test]
    fn snce_equals_eq_5_to_7() {
        let (v, t) = batch();
        let s = sentiments();
        let log_s = logs(&s);
        let refs: Vec<&[f64]> = log_s.iter().map(Vec::as_slice).collect();
        for (beta, tau) in [(0.0, 0.07), (0.5, 0.1), (10.0, 0.07), (3.0, 1.0)] {
            let got = value(snce(&tensor(&v), &tensor(&t), &refs, beta, tau));
            let want = snce_eq7(&v, &t, &s, beta, tau);
            assert!(
                (got - want).abs() < 1e-5,
                "beta {beta} tau {tau}: {got} vs {want}"
            );
        }
        // beta = 0 is InfoNCE (the paper's remark).
        let clip = value(info_nce(&tensor(&v), &tensor(&t), 0.1));
        let zero = value(snce(&tensor(&v), &tensor(&t), &refs, 0.0, 0.1));
        assert!((clip - zero).abs() < 1e-6);
        // The same sentiment removes the negative: texts 0 and 4 drop out of each other's
        // denominators, the other negatives barely move with a small beta.
        let tiny = value(snce(&tensor(&v), &tensor(&t), &refs, 1e-9, 0.1));
        let c = cosines(&v, &t);
        let b = v.len();
        let side = |sim: &dyn Fn(usize, usize) -> f64| -> f64 {
            (0..b)
                .map(|i| {
                    let den: f64 = (0..b)
                        .filter(|&j| !matches!((i, j), (0, 4) | (4, 0)))
                        .map(|j| (sim(i, j) / 0.1).exp())
                        .sum();
                    -((sim(i, i) / 0.1).exp() / den).ln()
                })
                .sum()
        };
        let without = (side(&|i, j| c[i][j]) + side(&|i, j| c[j][i])) / (2.0 * b as f64);
        assert!((tiny - without).abs() < 1e-5, "{tiny} vs {without}");
        assert!(
            (tiny - clip).abs() > 1e-3,
            "removing a negative changes the loss"
        );
    }

    #[test]
    fn info_nce_equals_the_symmetric_cross_entropy() {
        let (v, t) = batch();
        let c = cosines(&v, &t);
        let b = v.len();
        let tau = 0.07;
        let ce = |sim: &dyn Fn(usize, usize) -> f64| -> f64 {
            (0..b)
                .map(|i| {
                    let den: f64 = (0..b).map(|j| (sim(i, j) / tau).exp()).sum();
                    -((sim(i, i) / tau).exp() / den).ln()
                })
                .sum::<f64>()
                / b as f64
        };
        let want = (ce(&|i, j| c[i][j]) + ce(&|i, j| c[j][i])) / 2.0;
        let got = value(info_nce(&tensor(&v), &tensor(&t), tau));
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }

    // PACL, written from the paper's set definitions.

    struct Paper<'a> {
        sim: Vec<Vec<f64>>,
        rows: &'a [PaclRow],
    }

    impl Paper<'_> {
        fn b(&self) -> usize {
            self.rows.len()
        }
        fn argmax(values: Vec<f64>) -> usize {
            let mut best = 0;
            for (k, v) in values.iter().enumerate() {
                if *v > values[best] {
                    best = k;
                }
            }
            best
        }
        /// Eq. 6: m_f(t_i) = {v_j | l = argmax_k z^v_k . z^t_i, f_j = f_l}.
        fn m_f(&self, i: usize) -> BTreeSet<usize> {
            let l = Self::argmax((0..self.b()).map(|k| self.sim[k][i]).collect());
            (0..self.b())
                .filter(|&j| self.rows[j].factual == self.rows[l].factual)
                .collect()
        }
        /// Eq. 7: m_f^-1(v_i) = {t_j | v_i in m_f(t_j)}.
        fn m_f_inv(&self, i: usize) -> BTreeSet<usize> {
            (0..self.b())
                .filter(|&j| self.m_f(j).contains(&i))
                .collect()
        }
        /// Eq. 9: m_e(v_i) = {t_j | l = argmax_k z^v_i . z^t_k, e_j = e_l}.
        fn m_e(&self, i: usize) -> BTreeSet<usize> {
            let l = Self::argmax(self.sim[i].clone());
            (0..self.b())
                .filter(|&j| self.rows[j].emotional == self.rows[l].emotional)
                .collect()
        }
        /// Eq. 10: m_e^-1(t_i) = {v_j | t_i in m_e(v_j)}.
        fn m_e_inv(&self, i: usize) -> BTreeSet<usize> {
            (0..self.b())
                .filter(|&j| self.m_e(j).contains(&i))
                .collect()
        }
        /// (p+(v_i), p-(v_i), p+(t_i), p-(t_i)) of Eq. 5, 8, 11, 14.
        fn sets(&self, i: usize) -> [BTreeSet<usize>; 4] {
            let others = |excluded: BTreeSet<usize>| -> BTreeSet<usize> {
                (0..self.b())
                    .filter(|j| *j != i && !excluded.contains(j))
                    .collect()
            };
            let own: BTreeSet<usize> = [i].into();
            match self.rows[i].partition {
                Partition::Strong => [own.clone(), others([].into()), own, others([].into())],
                Partition::EmotionalOnly => [
                    own.clone(),
                    others(self.m_f_inv(i)),
                    own,
                    others(self.m_f(i)),
                ],
                Partition::FactualOnly => [
                    own.clone(),
                    others(self.m_e(i)),
                    own,
                    others(self.m_e_inv(i)),
                ],
                Partition::Weak => [
                    [Self::argmax(self.sim[i].clone())].into(),
                    others(self.m_f_inv(i).union(&self.m_e(i)).copied().collect()),
                    [Self::argmax(
                        (0..self.b()).map(|k| self.sim[k][i]).collect(),
                    )]
                    .into(),
                    others(self.m_f(i).union(&self.m_e_inv(i)).copied().collect()),
                ],
            }
        }
        /// Eq. 3 per anchor, averaged over the batch.
        fn loss(&self, tau: f64) -> f64 {
            let b = self.b();
            let mut total = 0.0;
            for i in 0..b {
                let [pv, nv, pt, nt] = self.sets(i);
                let term =
                    |pos: &BTreeSet<usize>, neg: &BTreeSet<usize>, s: &dyn Fn(usize) -> f64| {
                        let num: f64 = pos.iter().map(|&j| (s(j) / tau).exp()).sum();
                        let den: f64 = pos.union(neg).map(|&j| (s(j) / tau).exp()).sum();
                        -0.5 * (num / den).ln()
                    };
                total += term(&pv, &nv, &|j| self.sim[i][j]) + term(&pt, &nt, &|j| self.sim[j][i]);
            }
            total / b as f64
        }
    }

    fn rows() -> Vec<PaclRow> {
        use Partition::*;
        let row = |partition, factual, emotional| PaclRow {
            partition,
            factual,
            emotional,
        };
        vec![
            row(Strong, 0, 0),
            row(EmotionalOnly, 1, 0),
            row(FactualOnly, 1, 1),
            row(Weak, 0, 1),
            row(Weak, 1, 0),
        ]
    }

    #[test]
    fn pacl_sets_are_the_papers() {
        let (v, t) = batch();
        let rows = rows();
        let paper = Paper {
            sim: cosines(&v, &t),
            rows: &rows,
        };
        let sim32: Vec<Vec<f32>> = paper
            .sim
            .iter()
            .map(|r| r.iter().map(|&x| x as f32).collect())
            .collect();
        let sets = pacl_sets(&sim32, &rows);
        for i in 0..rows.len() {
            let [pv, nv, pt, nt] = paper.sets(i);
            for j in 0..rows.len() {
                let want_v = (pv.contains(&j), pv.contains(&j) || nv.contains(&j));
                let want_t = (pt.contains(&j), pt.contains(&j) || nt.contains(&j));
                assert_eq!(sets.get(true, i, j), want_v, "video anchor {i}, text {j}");
                assert_eq!(sets.get(false, i, j), want_t, "text anchor {i}, video {j}");
            }
        }
        // By hand (f = 0 1 1 0 1, e = 0 0 1 1 0, best video of each text 0 4 2 0 0, best
        // text of each video 0 1 2 3 1). Weak-coupled row 4: positives text 1 and video 0.
        assert!(sets.get(true, 4, 1).0 && !sets.get(true, 4, 4).0);
        assert!(sets.get(false, 4, 0).0 && !sets.get(false, 4, 4).0);
        // Emotional-only row 1: m_f^-1(v_1) = {t_1, t_2} (texts whose best video has f = 1);
        // m_f(t_1) = {v_1, v_2, v_4} (f of v_4, text 1's best video).
        assert_eq!(paper.m_f_inv(1), [1, 2].into());
        assert_eq!(paper.m_f(1), [1, 2, 4].into());
        let row =
            |video: bool, i: usize| (0..5).map(|j| sets.get(video, i, j).1).collect::<Vec<_>>();
        assert_eq!(row(true, 1), [true, true, false, true, true]);
        assert_eq!(row(false, 1), [true, true, false, true, false]);
        // Factual-only row 2: m_e(v_2) = {t_2, t_3} (e of text 2, its best text).
        assert_eq!(paper.m_e(2), [2, 3].into());
        assert_eq!(row(true, 2), [true, true, true, false, true]);
        // The strong-coupled anchor keeps every negative.
        assert!((0..5).all(|j| sets.get(true, 0, j).1 && sets.get(false, 0, j).1));
    }

    #[test]
    fn pacl_equals_eq_3_over_the_partitions() {
        let (v, t) = batch();
        let rows = rows();
        let paper = Paper {
            sim: cosines(&v, &t),
            rows: &rows,
        };
        for tau in [0.07, 0.5] {
            let got = value(pacl(&tensor(&v), &tensor(&t), &rows, tau));
            let want = paper.loss(tau);
            assert!((got - want).abs() < 1e-5, "tau {tau}: {got} vs {want}");
        }
        // All strong-coupled: PACL is InfoNCE.
        let strong: Vec<PaclRow> = rows
            .iter()
            .map(|r| PaclRow {
                partition: Partition::Strong,
                ..*r
            })
            .collect();
        let a = value(pacl(&tensor(&v), &tensor(&t), &strong, 0.07));
        let b = value(info_nce(&tensor(&v), &tensor(&t), 0.07));
        assert!((a - b).abs() < 1e-6);
    }

    #[test]
    fn gradients_reach_the_videos_only_through_counted_logits() {
        let (v, t) = batch();
        let var = candle_core::Var::from_tensor(&tensor(&v)).unwrap();
        let loss = pacl(var.as_tensor(), &tensor(&t), &rows(), 0.07).unwrap();
        let grads = loss.backward().unwrap();
        let g = grads
            .get(var.as_tensor())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert!(g.iter().flatten().all(|x| x.is_finite()));
        assert!(g.iter().flatten().any(|x| x.abs() > 1e-4));
    }
}
