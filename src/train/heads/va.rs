//! The valence/arousal head: one ridge regression per target, each penalty chosen by
//! validation MSE of the predictions clamped as the read-out publishes them.

use super::examples::{Example, Sides};
use super::linalg::{Matrix, Standardiser};
use super::metrics;
use super::report::{GridPoint, TargetReport, VaReport};
use super::ridge::{self, NormalEquations};
use crate::readout::VaHead;

/// Default ridge penalties tried (on standardised features, summed squared error).
pub const RIDGE_GRID: [f64; 8] = [1e-2, 1e-1, 1.0, 1e1, 1e2, 1e3, 1e4, 1e5];

/// Target `t` (0: valence, 1: arousal) of the examples `idx`.
fn target(examples: &[Example], idx: &[usize], t: usize) -> Vec<f64> {
    idx.iter()
        .map(|&i| examples[i].va.unwrap_or_default()[t])
        .collect()
}

/// The valence/arousal head refitted on both sides, and its report, when training has two
/// labelled samples and validation one; otherwise what is missing.
pub fn fit_head(sides: &Sides, fixed: Option<f64>) -> Result<(VaHead, VaReport), String> {
    let examples = sides.examples;
    let has_va = |e: &Example| e.va.is_some();
    let (train, val) = (
        sides.rows(&has_va, Some(false)),
        sides.rows(&has_va, Some(true)),
    );
    if train.len() < 2 || val.is_empty() {
        return Err(format!(
            "{} training and {} validation sample(s) with valence/arousal",
            train.len(),
            val.len()
        ));
    }
    let (xt, xv) = (sides.matrix(&train), sides.matrix(&val));
    let scaler = Standardiser::fit(&xt);
    let (zt, zv) = (scaler.apply(&xt), scaler.apply(&xv));
    let mut reports = Vec::new();
    for t in 0..2 {
        reports.push(fit_target(
            &zt,
            &target(examples, &train, t),
            &zv,
            &target(examples, &val, t),
            fixed,
        ));
    }
    let head = refit_va(sides, &sides.rows(&has_va, None), &reports);
    let [valence, arousal]: [TargetReport; 2] = match reports.try_into() {
        Ok(pair) => pair,
        Err(_) => unreachable!("one report per target"),
    };
    let report = VaReport {
        samples_train: train.len(),
        samples_validation: val.len(),
        valence,
        arousal,
    };
    Ok((head, report))
}

/// Both targets refitted on the examples `all` with the chosen penalties, the
/// standardisation folded into the weights.
fn refit_va(sides: &Sides, all: &[usize], reports: &[TargetReport]) -> VaHead {
    let xa = sides.matrix(all);
    let scaler = Standardiser::fit(&xa);
    let za = scaler.apply(&xa);
    let mut weight = Vec::with_capacity(2 * sides.dim);
    let mut bias = [0.0f32; 2];
    for (t, r) in reports.iter().enumerate() {
        let (w, b) =
            NormalEquations::new(&za, &target(sides.examples, all, t)).solve_at_least(r.lambda);
        let (rw, rb) = scaler.fold(&w, &[b]);
        weight.extend(rw.iter().map(|&v| v as f32));
        bias[t] = rb[0] as f32;
    }
    VaHead { weight, bias }
}

/// Chooses `lambda` for one target (or takes the fixed one) on standardised features.
fn fit_target(
    zt: &Matrix,
    yt: &[f64],
    zv: &Matrix,
    yv: &[f64],
    fixed: Option<f64>,
) -> TargetReport {
    let normal = NormalEquations::new(zt, yt);
    let candidates: Vec<f64> = match fixed {
        Some(l) => vec![l],
        None => RIDGE_GRID.to_vec(),
    };
    let mut grid = Vec::new();
    let mut best: Option<(f64, Vec<f64>, f64)> = None;
    for &lambda in candidates.iter().rev() {
        let (w, b) = normal.solve_at_least(lambda);
        let pred: Vec<f64> = ridge::predict(&w, b, zv)
            .into_iter()
            .map(|p| p.clamp(-1.0, 1.0))
            .collect();
        let loss = metrics::mse(&pred, yv);
        grid.push(GridPoint {
            penalty: lambda,
            loss,
        });
        if best.as_ref().is_none_or(|b| loss < b.2) {
            best = Some((lambda, pred, loss));
        }
    }
    grid.reverse();
    let Some((lambda, pred, mse)) = best else {
        unreachable!("the candidate list is never empty")
    };
    TargetReport {
        lambda,
        lambda_fixed: fixed.is_some(),
        grid,
        mse,
        r2: metrics::r2(&pred, yv),
    }
}
