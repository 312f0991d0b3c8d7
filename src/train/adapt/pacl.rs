//! PACL's first two stages, done once before training with the model as it was served
//! (no gradients), and its progressive schedule.
//!
//! 1. **Partition** (Sec. 3.1): a pair is factual-matched when the cosine of its video and
//!    text embeddings (the served EmotionCLIP as the CLIP evaluator, Eq. 1) exceeds
//!    `sigma_factual`, emotional-matched when the cosine of the video's and the text's
//!    sentiment distributions exceeds `sigma_emotional` (Eq. 2; the paper maps the image to
//!    adjective-noun pairs and embeds both with BERTweet, affectd puts both through the
//!    read-out's zero-shot classifier, see `sentiment`). The paper's sigma is 0.7 for both.
//! 2. **Pseudo-labels** (Sec. 3.2): k-means (K = 2 in the paper) on the training videos'
//!    L2-normalised embeddings gives the factual labels f; on the training texts' sentiment
//!    distributions the emotional labels e (the paper clusters SKEP features, a
//!    sentiment-trained text encoder's; affectd's text tower is not one, so its emotional view
//!    of a text is its sentiment distribution).
//!
//! The schedule (Sec. 3.3.5): the first third of the steps trains on strong-coupled pairs,
//! the second adds the partial-coupled ones, the last third all.

use serde::{Deserialize, Serialize};

use super::loss::Partition;
use super::sentiment;
use crate::model::weights::SplitMix64;
use crate::train::zero_shot::cosine;

/// The three phases of the progressive schedule: which partitions train in each.
pub fn allowed(phase: usize, partition: Partition) -> bool {
    match phase {
        0 => partition == Partition::Strong,
        1 => partition != Partition::Weak,
        _ => true,
    }
}

/// The phase of step `step` of a run of `steps`: thirds.
pub fn phase(step: usize, steps: usize) -> usize {
    (3 * step / steps.max(1)).min(2)
}

/// What the first two stages need of the training pairs.
pub struct Inputs<'a> {
    /// (window, text) of every training pair.
    pub pairs: &'a [(usize, usize)],
    /// The served model's video embedding of each window, by window.
    pub video: &'a [Vec<f32>],
    /// The text tower's embedding of each text, by text.
    pub text: &'a [Vec<f32>],
    /// Sentiment log-probabilities of each window's video and of each text.
    pub video_sentiment: &'a [Vec<f64>],
    pub text_sentiment: &'a [Vec<f64>],
}

/// The thresholds and the cluster count.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub sigma_factual: f64,
    pub sigma_emotional: f64,
    pub clusters: usize,
}

/// Stages 1 and 2: every training pair's partition, every window's factual label and every
/// text's emotional label.
pub struct Prepared {
    /// Partition of `inputs.pairs[i]`.
    pub partitions: Vec<Partition>,
    /// Factual pseudo-label by window (windows of no training pair: their nearest cluster).
    pub factual: Vec<usize>,
    /// Emotional pseudo-label by text.
    pub emotional: Vec<usize>,
    pub summary: Summary,
}

/// For the report: how the pairs fell and how the scores are spread.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub strong: usize,
    pub emotional_only: usize,
    pub factual_only: usize,
    pub weak: usize,
    /// Minimum, quartiles and maximum of the factual (video-text cosine) and emotional
    /// (sentiment cosine) scores of the training pairs.
    pub factual_scores: [f64; 5],
    pub emotional_scores: [f64; 5],
    /// Windows per factual cluster, texts per emotional cluster (over the training pairs).
    pub factual_clusters: Vec<usize>,
    pub emotional_clusters: Vec<usize>,
}

/// Stage 1 and 2 over `inputs` (see the module docs).
pub fn prepare(inputs: &Inputs, thresholds: Thresholds, seed: u64) -> Prepared {
    let mut factual_scores = Vec::with_capacity(inputs.pairs.len());
    let mut emotional_scores = Vec::with_capacity(inputs.pairs.len());
    let partitions: Vec<Partition> = inputs
        .pairs
        .iter()
        .map(|&(w, t)| {
            let f = f64::from(cosine(&inputs.video[w], &inputs.text[t]));
            let e = sentiment::cosine(&inputs.video_sentiment[w], &inputs.text_sentiment[t]);
            factual_scores.push(f);
            emotional_scores.push(e);
            Partition::of(f > thresholds.sigma_factual, e > thresholds.sigma_emotional)
        })
        .collect();

    let mut windows: Vec<usize> = inputs.pairs.iter().map(|p| p.0).collect();
    windows.sort_unstable();
    windows.dedup();
    let unit = |v: &[f32]| -> Vec<f64> {
        let n = v
            .iter()
            .map(|x| f64::from(*x).powi(2))
            .sum::<f64>()
            .sqrt()
            .max(1e-12);
        v.iter().map(|x| f64::from(*x) / n).collect()
    };
    let video_points: Vec<Vec<f64>> = windows.iter().map(|&w| unit(&inputs.video[w])).collect();
    let video_centres = kmeans(&video_points, thresholds.clusters, seed);
    let factual: Vec<usize> = inputs
        .video
        .iter()
        .map(|v| nearest(&video_centres, &unit(v)))
        .collect();
    let probabilities = |log_p: &[f64]| -> Vec<f64> { log_p.iter().map(|l| l.exp()).collect() };
    let text_points: Vec<Vec<f64>> = inputs
        .pairs
        .iter()
        .map(|&(_, t)| probabilities(&inputs.text_sentiment[t]))
        .collect();
    let text_centres = kmeans(&text_points, thresholds.clusters, seed ^ 0x5eed);
    let emotional: Vec<usize> = inputs
        .text_sentiment
        .iter()
        .map(|s| nearest(&text_centres, &probabilities(s)))
        .collect();

    let count = |p: Partition| partitions.iter().filter(|q| **q == p).count();
    let sizes = |labels: &mut dyn Iterator<Item = usize>| {
        let mut n = vec![0; thresholds.clusters.max(1)];
        for l in labels {
            n[l] += 1;
        }
        n
    };
    let summary = Summary {
        strong: count(Partition::Strong),
        emotional_only: count(Partition::EmotionalOnly),
        factual_only: count(Partition::FactualOnly),
        weak: count(Partition::Weak),
        factual_scores: quantiles(factual_scores),
        emotional_scores: quantiles(emotional_scores),
        factual_clusters: sizes(&mut windows.iter().map(|&w| factual[w])),
        emotional_clusters: sizes(&mut inputs.pairs.iter().map(|&(_, t)| emotional[t])),
    };
    Prepared {
        partitions,
        factual,
        emotional,
        summary,
    }
}

/// Minimum, quartiles and maximum (nearest rank).
pub fn quantiles(mut values: Vec<f64>) -> [f64; 5] {
    if values.is_empty() {
        return [0.0; 5];
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    [at(0.0), at(0.25), at(0.5), at(0.75), at(1.0)]
}

fn distance2(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum()
}

/// The index of the centre nearest `p` (the first on ties).
fn nearest(centres: &[Vec<f64>], p: &[f64]) -> usize {
    let mut best = (0, f64::INFINITY);
    for (k, c) in centres.iter().enumerate() {
        let d = distance2(c, p);
        if d < best.1 {
            best = (k, d);
        }
    }
    best.0
}

/// k-means (Lloyd's iterations from a seeded k-means++ start) over `points`: the `k` centres
/// (fewer when there are fewer points). Deterministic for a seed.
pub fn kmeans(points: &[Vec<f64>], k: usize, seed: u64) -> Vec<Vec<f64>> {
    if points.is_empty() || k == 0 {
        return vec![Vec::new(); k.max(1)];
    }
    let mut rng = SplitMix64(seed);
    let uniform = |rng: &mut SplitMix64| (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
    let mut centres = vec![points[(rng.next() % points.len() as u64) as usize].clone()];
    while centres.len() < k.min(points.len()) {
        let d: Vec<f64> = points
            .iter()
            .map(|p| distance2(&centres[nearest(&centres, p)], p))
            .collect();
        let total: f64 = d.iter().sum();
        if total <= 0.0 {
            break;
        }
        let mut r = uniform(&mut rng) * total;
        let mut pick = d.len() - 1;
        for (i, di) in d.iter().enumerate() {
            if r < *di {
                pick = i;
                break;
            }
            r -= di;
        }
        centres.push(points[pick].clone());
    }
    let mut labels: Vec<usize> = vec![usize::MAX; points.len()];
    for _ in 0..100 {
        let next: Vec<usize> = points.iter().map(|p| nearest(&centres, p)).collect();
        if next == labels {
            break;
        }
        labels = next;
        for (c, centre) in centres.iter_mut().enumerate() {
            let members: Vec<&Vec<f64>> = points
                .iter()
                .zip(&labels)
                .filter(|(_, l)| **l == c)
                .map(|(p, _)| p)
                .collect();
            if members.is_empty() {
                continue;
            }
            for (d, value) in centre.iter_mut().enumerate() {
                *value = members.iter().map(|m| m[d]).sum::<f64>() / members.len() as f64;
            }
        }
    }
    centres
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kmeans_finds_two_obvious_groups_whatever_the_seed() {
        let points: Vec<Vec<f64>> = [
            [0.0, 0.1],
            [5.0, 5.2],
            [0.2, -0.1],
            [4.8, 5.1],
            [-0.1, 0.0],
            [5.1, 4.9],
        ]
        .iter()
        .map(|p| p.to_vec())
        .collect();
        for seed in 0..20 {
            let centres = kmeans(&points, 2, seed);
            let labels: Vec<usize> = points.iter().map(|p| nearest(&centres, p)).collect();
            assert_eq!(labels[0], labels[2]);
            assert_eq!(labels[0], labels[4]);
            assert_eq!(labels[1], labels[3]);
            assert_ne!(labels[0], labels[1], "seed {seed}");
            let low = &centres[labels[0]];
            assert!((low[0] - 0.1 / 3.0).abs() < 1e-12 && low[1].abs() < 1e-12);
        }
        assert_eq!(kmeans(&points, 2, 7), kmeans(&points, 2, 7));
    }

    #[test]
    fn pairs_fall_into_the_four_partitions_at_sigma() {
        let ln = |p: &[f64]| p.iter().map(|x| x.ln()).collect::<Vec<_>>();
        // Window 0's video is text 0's direction (cos 1) and text 1's at 60 degrees
        // (cos 0.5); window 1's is orthogonal to both.
        let video = vec![vec![1.0f32, 0.0, 0.0], vec![0.0, 0.0, 1.0]];
        let text = vec![vec![2.0f32, 0.0, 0.0], vec![0.5, 0.866_025_4, 0.0]];
        // Sentiments: video 0 and text 0 alike (cos 0.99), text 1 far from both videos.
        let video_sentiment = vec![ln(&[0.8, 0.1, 0.1]), ln(&[0.7, 0.2, 0.1])];
        let text_sentiment = vec![ln(&[0.7, 0.2, 0.1]), ln(&[0.05, 0.05, 0.9])];
        let pairs = [(0, 0), (0, 1), (1, 0), (1, 1)];
        let inputs = Inputs {
            pairs: &pairs,
            video: &video,
            text: &text,
            video_sentiment: &video_sentiment,
            text_sentiment: &text_sentiment,
        };
        let thresholds = Thresholds {
            sigma_factual: 0.7,
            sigma_emotional: 0.7,
            clusters: 2,
        };
        let p = prepare(&inputs, thresholds, 3);
        use Partition::*;
        // (0, 0): cos 1, sentiment cos 0.99: strong. (0, 1): cos 0.5 (mismatched),
        // sentiment cos 0.2: weak. (1, 0): cos 0, sentiment cos 1: emotional only.
        assert_eq!(p.partitions, [Strong, Weak, EmotionalOnly, Weak]);
        assert!((p.summary.factual_scores[4] - 1.0).abs() < 1e-6);
        assert_eq!(
            p.summary.strong + p.summary.weak + p.summary.emotional_only,
            4
        );
        // Two videos, two clusters: one each; the texts' sentiments are far apart too.
        assert_ne!(p.factual[0], p.factual[1]);
        assert_ne!(p.emotional[0], p.emotional[1]);
        let factual = Thresholds {
            sigma_factual: 0.4,
            ..thresholds
        };
        assert_eq!(prepare(&inputs, factual, 3).partitions[1], FactualOnly);
    }

    #[test]
    fn the_schedule_widens_by_thirds() {
        assert_eq!(
            (phase(0, 90), phase(29, 90), phase(30, 90), phase(89, 90)),
            (0, 0, 1, 2)
        );
        assert!(allowed(0, Partition::Strong) && !allowed(0, Partition::FactualOnly));
        assert!(allowed(1, Partition::EmotionalOnly) && !allowed(1, Partition::Weak));
        assert!(allowed(2, Partition::Weak));
    }
}
