//! Ridge regression in closed form: `w = (X^T X + lambda I)^-1 X^T (y - mean(y))`,
//! `b = mean(y)` on features centred by the training mean (the bias is not penalised).

use super::linalg::{Matrix, cholesky_solve, gram};

/// The normal equations of one target, computed once and solved for many `lambda`s.
#[derive(Debug, Clone)]
pub struct NormalEquations {
    gram: Vec<f64>,
    xty: Vec<f64>,
    y_mean: f64,
}

impl NormalEquations {
    /// `x` must be centred column-wise (as standardised training features are).
    pub fn new(x: &Matrix, y: &[f64]) -> Self {
        let y_mean = y.iter().sum::<f64>() / y.len().max(1) as f64;
        let mut xty = vec![0.0; x.cols];
        for (i, v) in y.iter().enumerate() {
            for (a, xv) in xty.iter_mut().zip(x.row(i)) {
                *a += xv * (v - y_mean);
            }
        }
        Self {
            gram: gram(x),
            xty,
            y_mean,
        }
    }

    /// Weights and bias for penalty `lambda` (> 0 keeps the system positive definite).
    pub fn solve(&self, lambda: f64) -> Option<(Vec<f64>, f64)> {
        let d = self.xty.len();
        let mut a = self.gram.clone();
        for i in 0..d {
            a[i * d + i] += lambda;
        }
        cholesky_solve(&a, &self.xty).map(|w| (w, self.y_mean))
    }
}

impl NormalEquations {
    /// `solve(lambda)`, raising a penalty too small for the data's conditioning tenfold
    /// until the system is positive definite (all-zero weights if it never is).
    pub fn solve_at_least(&self, lambda: f64) -> (Vec<f64>, f64) {
        let mut l = lambda.max(1e-12);
        for _ in 0..40 {
            if let Some(solution) = self.solve(l) {
                return solution;
            }
            l *= 10.0;
        }
        (vec![0.0; self.xty.len()], self.y_mean)
    }
}

/// `w . x + b` for each row of `x`.
pub fn predict(w: &[f64], b: f64, x: &Matrix) -> Vec<f64> {
    (0..x.rows)
        .map(|i| x.row(i).iter().zip(w).map(|(a, c)| a * c).sum::<f64>() + b)
        .collect()
}
