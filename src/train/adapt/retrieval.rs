//! Video -> text retrieval: each window's video embedding ranks the candidate texts by
//! cosine; a window is found at k when one of its own texts is among the first k.

use serde::{Deserialize, Serialize};

use crate::train::zero_shot::cosine;

/// Recall at 1 and 5 over a set of windows, with what random ranking would score.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Retrieval {
    pub r1: f32,
    pub r5: f32,
    /// Expected R@1 and R@5 of a random ranking of the same candidates.
    pub chance_r1: f32,
    pub chance_r5: f32,
    /// Median rank of a window's best-ranked own text (1 = first).
    pub median_rank: f32,
    pub windows: usize,
    pub candidates: usize,
}

/// Ranks `texts` for every row of `video`; `own[i]` are the indices of window i's texts.
/// A window's rank is 1 + the number of other texts at least as similar as its best own
/// text (ties count against it).
pub fn video_to_text(video: &[Vec<f32>], texts: &[Vec<f32>], own: &[Vec<usize>]) -> Retrieval {
    let c = texts.len();
    let mut ranks = Vec::with_capacity(video.len());
    let (mut chance1, mut chance5) = (0.0, 0.0);
    for (v, mine) in video.iter().zip(own) {
        let sims: Vec<f32> = texts.iter().map(|t| cosine(v, t)).collect();
        let best = mine
            .iter()
            .map(|&k| sims[k])
            .fold(f32::NEG_INFINITY, f32::max);
        let above = (0..c)
            .filter(|k| !mine.contains(k) && sims[*k] >= best)
            .count();
        ranks.push(above + 1);
        chance1 += chance_at(c, mine.len(), 1);
        chance5 += chance_at(c, mine.len(), 5);
    }
    let n = ranks.len().max(1) as f64;
    let within = |k: usize| (ranks.iter().filter(|r| **r <= k).count() as f64 / n) as f32;
    let mut sorted = ranks.clone();
    sorted.sort_unstable();
    let median_rank = match sorted.len() {
        0 => 0.0,
        len if len % 2 == 1 => sorted[len / 2] as f32,
        len => (sorted[len / 2 - 1] + sorted[len / 2]) as f32 / 2.0,
    };
    Retrieval {
        r1: within(1),
        r5: within(5),
        chance_r1: (chance1 / n) as f32,
        chance_r5: (chance5 / n) as f32,
        median_rank,
        windows: ranks.len(),
        candidates: c,
    }
}

/// The probability that one of `own` texts among `c` candidates is in the first `k` of a
/// random order: 1 - C(c - own, k) / C(c, k).
fn chance_at(c: usize, own: usize, k: usize) -> f64 {
    let miss: f64 = (0..k.min(c))
        .map(|j| (c.saturating_sub(own + j)) as f64 / (c - j) as f64)
        .product();
    1.0 - miss
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_recalls_and_chance() {
        let texts = vec![
            vec![1.0, 0.0],
            vec![0.0, 1.0],
            vec![0.7, 0.7],
            vec![-1.0, 0.0],
            vec![0.0, -1.0],
            vec![-0.7, -0.7],
        ];
        // Window 0 points at text 0: rank 1. Window 1 points at text 0 but owns text 3:
        // every other text is more similar, rank 6. Window 2 owns texts 1 and 2 and points
        // between text 0 and 2: text 2 is second, rank 2.
        let video = vec![vec![1.0, 0.0], vec![1.0, 0.0], vec![1.0, 0.4]];
        let own = vec![vec![0], vec![3], vec![1, 2]];
        let r = video_to_text(&video, &texts, &own);
        assert_eq!((r.windows, r.candidates), (3, 6));
        assert!((r.r1 - 1.0 / 3.0).abs() < 1e-6, "{r:?}");
        assert!((r.r5 - 2.0 / 3.0).abs() < 1e-6, "{r:?}");
        assert_eq!(r.median_rank, 2.0);
        // Chance at 1: 1/6 with one own text, 2/6 with two.
        assert!((r.chance_r1 - (1.0 / 6.0 + 1.0 / 6.0 + 2.0 / 6.0) / 3.0).abs() < 1e-6);
        // At 5 of 6: one own text is missed by a random order 1/6 of the time; two never.
        assert!((r.chance_r5 - (5.0 / 6.0 + 5.0 / 6.0 + 1.0) / 3.0).abs() < 1e-6);
        // Ties count against the window.
        let tied = video_to_text(
            &[vec![1.0, 0.0]],
            &[vec![1.0, 0.0], vec![2.0, 0.0]],
            &[vec![1]],
        );
        assert_eq!(tied.r1, 0.0);
    }
}
