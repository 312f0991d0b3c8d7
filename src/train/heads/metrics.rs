//! Validation metrics: accuracy, per-class average precision, MSE and R^2.

/// Fraction of rows whose highest probability is the true class.
pub fn accuracy(probs: &[Vec<f64>], y: &[usize]) -> f64 {
    let hits = probs
        .iter()
        .zip(y)
        .filter(|(p, c)| argmax(p) == **c)
        .count();
    hits as f64 / y.len().max(1) as f64
}

/// Index of the largest value (the first on ties).
pub fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// Average precision of `scores` for the positives `positive` (one-vs-rest): the mean, over
/// positives, of the precision at each distinct score threshold reaching them (tied scores
/// count as one threshold, like scikit-learn's `average_precision_score`). `None` without
/// positives.
pub fn average_precision(scores: &[f64], positive: &[bool]) -> Option<f64> {
    let total = positive.iter().filter(|p| **p).count();
    if total == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut seen, mut hits, mut ap) = (0usize, 0usize, 0.0);
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        let mut new_hits = 0;
        while j < order.len() && scores[order[j]] == scores[order[i]] {
            new_hits += usize::from(positive[order[j]]);
            j += 1;
        }
        seen += j - i;
        hits += new_hits;
        ap += new_hits as f64 / total as f64 * (hits as f64 / seen as f64);
        i = j;
    }
    Some(ap)
}

/// Mean squared error.
pub fn mse(pred: &[f64], truth: &[f64]) -> f64 {
    pred.iter()
        .zip(truth)
        .map(|(p, t)| (p - t) * (p - t))
        .sum::<f64>()
        / truth.len().max(1) as f64
}

/// Coefficient of determination, `1 - SS_res / SS_tot`; `None` when the truth is constant.
pub fn r2(pred: &[f64], truth: &[f64]) -> Option<f64> {
    let n = truth.len().max(1) as f64;
    let mean = truth.iter().sum::<f64>() / n;
    let tot: f64 = truth.iter().map(|t| (t - mean) * (t - mean)).sum();
    (tot > 0.0).then(|| 1.0 - mse(pred, truth) * n / tot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn average_precision_by_hand() {
        // Ranks: +, -, +  -> (1/1 + 2/3) / 2.
        let ap = average_precision(&[0.9, 0.8, 0.7], &[true, false, true]).unwrap();
        assert!((ap - (1.0 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
        // All tied: precision is the base rate.
        let tied = average_precision(&[0.5; 4], &[true, false, false, true]).unwrap();
        assert!((tied - 0.5).abs() < 1e-12);
        assert_eq!(average_precision(&[0.1], &[false]), None);
    }

    #[test]
    fn regression_metrics() {
        assert_eq!(mse(&[1.0, 2.0], &[1.0, 4.0]), 2.0);
        assert_eq!(r2(&[1.0, 3.0], &[1.0, 3.0]), Some(1.0));
        assert_eq!(r2(&[1.0, 3.0], &[2.0, 2.0]), None);
        assert_eq!(accuracy(&[vec![0.2, 0.8], vec![0.6, 0.4]], &[1, 1]), 0.5);
    }
}
