//! Sentiment distributions of texts and videos, in the read-out's emotion classes.
//!
//! EmotionCLIP scores each caption with a pretrained sentiment model (a DistilRoBERTa over 7
//! emotion categories) and PACL embeds both sides with sentiment-aware models (DeepSentiBank,
//! BERTweet, SKEP). affectd ships no second network: the sentiment of a text is the
//! read-out's zero-shot classifier applied to the text's embedding by the frozen text tower,
//! `softmax_k(logit_scale * cos(text, class_k))` over the configured `[readout]` classes
//! (their natural-language descriptions are the sentiment prompts; the eleven defaults
//! include the paper's seven categories), and the sentiment of a video is the same
//! classifier on the video embedding of the model being adapted, before adaptation. Like the
//! paper's sentiment model it is frozen, a fixed function of the text computed once; its
//! categories are the ones the daemon publishes; and it needs neither a download nor a
//! second tokenizer. Its quality is the text tower's: with the released EmotionCLIP weights
//! a tower trained on emotional captions, with seeded random weights noise.

use candle_core::{DType, Result, Tensor};

use crate::train::zero_shot::ZeroShot;

/// Natural-log probabilities over the classes of `zero_shot`, one row per embedding of
/// `embeddings` [N, E] (logs, so a class the softmax rounds to 0 stays finite).
pub fn log_distributions(zero_shot: &ZeroShot, embeddings: &Tensor) -> Result<Vec<Vec<f64>>> {
    let logits = zero_shot
        .logits(&embeddings.to_dtype(DType::F32)?)?
        .to_vec2::<f32>()?;
    Ok(logits.iter().map(|row| log_softmax(row)).collect())
}

/// `log softmax` of one row, in f64.
pub fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &x| m.max(f64::from(x)));
    let sum: f64 = logits.iter().map(|&x| (f64::from(x) - max).exp()).sum();
    let log_z = max + sum.ln();
    logits.iter().map(|&x| f64::from(x) - log_z).collect()
}

/// KL(p || q) of two distributions given as log-probabilities.
pub fn kl(log_p: &[f64], log_q: &[f64]) -> f64 {
    log_p
        .iter()
        .zip(log_q)
        .map(|(&lp, &lq)| lp.exp() * (lp - lq))
        .sum()
}

/// Cosine similarity of two distributions given as log-probabilities (PACL's emotional
/// match: 1 for the same distribution, 0 for disjoint supports).
pub fn cosine(log_p: &[f64], log_q: &[f64]) -> f64 {
    let (p, q): (Vec<f64>, Vec<f64>) = log_p
        .iter()
        .zip(log_q)
        .map(|(a, b)| (a.exp(), b.exp()))
        .unzip();
    let dot = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(a, b)| a * b).sum::<f64>();
    dot(&p, &q) / (dot(&p, &p).sqrt() * dot(&q, &q).sqrt()).max(1e-300)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_of_known_distributions() {
        let ln = |p: &[f64]| p.iter().map(|v| v.ln()).collect::<Vec<_>>();
        // 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1), by hand.
        let k = kl(&ln(&[0.5, 0.5]), &ln(&[0.9, 0.1]));
        assert!((k - 0.510_825_6).abs() < 1e-6, "{k}");
        assert_eq!(kl(&ln(&[0.2, 0.8]), &ln(&[0.2, 0.8])), 0.0);
        let lp = log_softmax(&[1.0, 2.0, 3.0]);
        let z = 1f64.exp() + 2f64.exp() + 3f64.exp();
        assert!((lp[2] - (3f64.exp() / z).ln()).abs() < 1e-12);
        assert!((cosine(&ln(&[0.5, 0.5]), &ln(&[0.5, 0.5])) - 1.0).abs() < 1e-12);
        // (0.9*0.1 + 0.1*0.9) / (0.81 + 0.01).
        let c = cosine(&ln(&[0.9, 0.1]), &ln(&[0.1, 0.9]));
        assert!((c - 0.18 / 0.82).abs() < 1e-12, "{c}");
    }
}
