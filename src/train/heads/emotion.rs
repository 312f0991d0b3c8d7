//! The emotion head: a multinomial logistic regression with an L2 penalty, the penalty
//! chosen by validation log-loss.

use std::collections::BTreeSet;

use super::examples::{Example, Sides};
use super::linalg::{Matrix, Standardiser};
use super::logistic::{self, Logistic, Stop};
use super::metrics;
use super::report::{ClassReport, EmotionReport, GridPoint};
use crate::readout::EmotionHead;

/// Default logistic-regression penalties tried (on standardised features, mean loss).
pub const L2_GRID: [f64; 6] = [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0];

/// The emotion head refitted on both sides, and its report, when at least two classes have
/// training samples and validation has one; otherwise what is missing.
pub fn fit_head(sides: &Sides, fixed: Option<f64>) -> Result<(EmotionHead, EmotionReport), String> {
    let examples = sides.examples;
    let has_emotion = |e: &Example| e.emotion.is_some();
    let (train, val) = (
        sides.rows(&has_emotion, Some(false)),
        sides.rows(&has_emotion, Some(true)),
    );
    let train_classes: BTreeSet<&str> = train
        .iter()
        .filter_map(|&i| examples[i].emotion.as_deref())
        .collect();
    if train_classes.len() < 2 || val.is_empty() {
        return Err(format!(
            "{} emotion class(es) in training, {} validation sample(s) with an emotion",
            train_classes.len(),
            val.len()
        ));
    }
    let classes: Vec<String> = examples
        .iter()
        .filter_map(|e| e.emotion.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let label = |i: &usize| {
        let name = examples[*i].emotion.as_deref().unwrap_or_default();
        classes.iter().position(|c| c == name).unwrap_or_default()
    };
    let (yt, yv): (Vec<usize>, Vec<usize>) = (
        train.iter().map(label).collect(),
        val.iter().map(label).collect(),
    );
    let report = fit_emotion(
        &sides.matrix(&train),
        &yt,
        &sides.matrix(&val),
        &yv,
        &classes,
        fixed,
    );
    let all = sides.rows(&has_emotion, None);
    let ya: Vec<usize> = all.iter().map(label).collect();
    let head = refit_emotion(&sides.matrix(&all), &ya, classes.clone(), report.l2);
    Ok((head, report))
}

/// Chooses `l2` (or takes the fixed one) and measures the train-only fit on validation.
fn fit_emotion(
    xt: &Matrix,
    yt: &[usize],
    xv: &Matrix,
    yv: &[usize],
    classes: &[String],
    fixed: Option<f64>,
) -> EmotionReport {
    let k = classes.len();
    let scaler = Standardiser::fit(xt);
    let (zt, zv) = (scaler.apply(xt), scaler.apply(xv));
    let candidates: Vec<f64> = match fixed {
        Some(l2) => vec![l2],
        None => L2_GRID.to_vec(),
    };
    let mut grid = Vec::new();
    let mut best: Option<(f64, Vec<Vec<f64>>, f64)> = None;
    // Strongest penalty first, so that ties keep the simpler model.
    for &l2 in candidates.iter().rev() {
        let model = Logistic::fit(&zt, yt, k, l2, Stop::default());
        let probs = model.predict(&zv);
        let loss = logistic::log_loss(&probs, yv);
        grid.push(GridPoint { penalty: l2, loss });
        if best.as_ref().is_none_or(|b| loss < b.2) {
            best = Some((l2, probs, loss));
        }
    }
    grid.reverse();
    let Some((l2, probs, loss)) = best else {
        unreachable!("the candidate list is never empty")
    };
    let per_class = (0..k)
        .map(|c| {
            let scores: Vec<f64> = probs.iter().map(|p| p[c]).collect();
            let positive: Vec<bool> = yv.iter().map(|&y| y == c).collect();
            ClassReport {
                class: classes[c].clone(),
                support_train: yt.iter().filter(|&&y| y == c).count(),
                support_validation: positive.iter().filter(|p| **p).count(),
                average_precision: metrics::average_precision(&scores, &positive),
            }
        })
        .collect::<Vec<_>>();
    let aps: Vec<f64> = per_class
        .iter()
        .filter_map(|c| c.average_precision)
        .collect();
    EmotionReport {
        classes: classes.to_vec(),
        l2,
        l2_fixed: fixed.is_some(),
        grid,
        samples_train: yt.len(),
        samples_validation: yv.len(),
        accuracy: metrics::accuracy(&probs, yv),
        macro_map: (!aps.is_empty()).then(|| aps.iter().sum::<f64>() / aps.len() as f64),
        log_loss: loss,
        per_class,
    }
}

fn refit_emotion(x: &Matrix, y: &[usize], classes: Vec<String>, l2: f64) -> EmotionHead {
    let scaler = Standardiser::fit(x);
    let model = Logistic::fit(&scaler.apply(x), y, classes.len(), l2, Stop::default());
    let (w, b) = scaler.fold(&model.weight, &model.bias);
    EmotionHead {
        classes,
        weight: w.iter().map(|&v| v as f32).collect(),
        bias: b.iter().map(|&v| v as f32).collect(),
    }
}
