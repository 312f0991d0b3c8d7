//! Multinomial logistic regression with an L2 penalty, fitted by L-BFGS.
//!
//! Objective on (standardised) features `x` with labels `y` in `0..k`:
//! `mean_i -log softmax(W x_i + b)[y_i] + l2 / 2 * |W|^2` (the bias is not penalised). It is
//! convex and smooth, so L-BFGS with a backtracking (Armijo) line search converges to the
//! unique optimum from the zero start; the result does not depend on any random state.

use super::linalg::Matrix;

/// A fitted linear classifier: `logits = W x + b`.
#[derive(Debug, Clone, PartialEq)]
pub struct Logistic {
    pub classes: usize,
    /// Row-major [classes, dim].
    pub weight: Vec<f64>,
    pub bias: Vec<f64>,
}

/// When to stop.
#[derive(Debug, Clone, Copy)]
pub struct Stop {
    pub max_iter: usize,
    /// On the largest absolute gradient entry.
    pub tolerance: f64,
}

impl Default for Stop {
    fn default() -> Self {
        Self {
            max_iter: 500,
            tolerance: 1e-6,
        }
    }
}

impl Logistic {
    /// Fits the classifier. `y[i] < classes`; a class without samples gets a bias that
    /// keeps its probability small.
    pub fn fit(x: &Matrix, y: &[usize], classes: usize, l2: f64, stop: Stop) -> Logistic {
        let dim = x.cols;
        let params = classes * dim + classes;
        let theta = lbfgs(
            |theta, grad| objective(x, y, classes, l2, theta, grad),
            vec![0.0; params],
            stop,
        );
        let (weight, bias) = theta.split_at(classes * dim);
        Logistic {
            classes,
            weight: weight.to_vec(),
            bias: bias.to_vec(),
        }
    }

    /// Class probabilities for each row of `x`.
    pub fn predict(&self, x: &Matrix) -> Vec<Vec<f64>> {
        (0..x.rows)
            .map(|i| softmax(&logits(&self.weight, &self.bias, x.row(i))))
            .collect()
    }
}

/// Mean cross-entropy of the probabilities of the true labels.
pub fn log_loss(probs: &[Vec<f64>], y: &[usize]) -> f64 {
    let n = y.len().max(1) as f64;
    probs
        .iter()
        .zip(y)
        .map(|(p, &c)| -p[c].max(1e-15).ln())
        .sum::<f64>()
        / n
}

fn logits(weight: &[f64], bias: &[f64], x: &[f64]) -> Vec<f64> {
    weight
        .chunks_exact(x.len())
        .zip(bias)
        .map(|(w, b)| w.iter().zip(x).map(|(a, b)| a * b).sum::<f64>() + b)
        .collect()
}

fn softmax(z: &[f64]) -> Vec<f64> {
    let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|v| (v - max).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// The objective at `theta` (= W row-major, then b); writes its gradient into `grad`.
fn objective(x: &Matrix, y: &[usize], k: usize, l2: f64, theta: &[f64], grad: &mut [f64]) -> f64 {
    let dim = x.cols;
    let n = x.rows.max(1) as f64;
    let (w, b) = theta.split_at(k * dim);
    grad.iter_mut().for_each(|g| *g = 0.0);
    let (gw, gb) = grad.split_at_mut(k * dim);
    let mut loss = 0.0;
    for (i, &label) in y.iter().enumerate() {
        let row = x.row(i);
        let z = logits(w, b, row);
        let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = z.iter().map(|v| (v - max).exp()).sum();
        loss += max + sum.ln() - z[label];
        for c in 0..k {
            let p = (z[c] - max).exp() / sum;
            let d = (p - f64::from(u8::from(c == label))) / n;
            gb[c] += d;
            for (g, v) in gw[c * dim..(c + 1) * dim].iter_mut().zip(row) {
                *g += d * v;
            }
        }
    }
    let mut penalty = 0.0;
    for (g, v) in gw.iter_mut().zip(w) {
        *g += l2 * v;
        penalty += v * v;
    }
    loss / n + 0.5 * l2 * penalty
}

/// Limited-memory BFGS (10 pairs) with backtracking line search, minimising `f`.
fn lbfgs(mut f: impl FnMut(&[f64], &mut [f64]) -> f64, mut x: Vec<f64>, stop: Stop) -> Vec<f64> {
    const MEMORY: usize = 10;
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(u, v)| u * v).sum::<f64>();
    let n = x.len();
    let mut g = vec![0.0; n];
    let mut fx = f(&x, &mut g);
    let mut pairs: std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)> = Default::default();
    let mut x_new = vec![0.0; n];
    let mut g_new = vec![0.0; n];
    for _ in 0..stop.max_iter {
        if g.iter().all(|v| v.abs() < stop.tolerance) {
            break;
        }
        // Two-loop recursion: d = -H g.
        let mut d: Vec<f64> = g.iter().map(|v| -v).collect();
        let mut alphas = Vec::with_capacity(pairs.len());
        for (s, yv, rho) in pairs.iter().rev() {
            let a = rho * dot(s, &d);
            d.iter_mut().zip(yv).for_each(|(di, yi)| *di -= a * yi);
            alphas.push(a);
        }
        let gamma = pairs
            .back()
            .map_or(1.0 / dot(&g, &g).sqrt().max(1.0), |(s, yv, _)| {
                dot(s, yv) / dot(yv, yv)
            });
        d.iter_mut().for_each(|v| *v *= gamma);
        for ((s, yv, rho), a) in pairs.iter().zip(alphas.iter().rev()) {
            let beta = rho * dot(yv, &d);
            d.iter_mut()
                .zip(s)
                .for_each(|(di, si)| *di += (a - beta) * si);
        }
        let mut slope = dot(&g, &d);
        if slope >= 0.0 {
            // Not a descent direction (numerical trouble): restart from steepest descent.
            pairs.clear();
            d = g.iter().map(|v| -v).collect();
            slope = -dot(&g, &g);
        }
        let mut step = 1.0;
        let mut accepted = false;
        for _ in 0..40 {
            x_new
                .iter_mut()
                .zip(&x)
                .zip(&d)
                .for_each(|((xn, xv), dv)| *xn = xv + step * dv);
            let f_new = f(&x_new, &mut g_new);
            if f_new.is_finite() && f_new <= fx + 1e-4 * step * slope {
                let s: Vec<f64> = x_new.iter().zip(&x).map(|(a, b)| a - b).collect();
                let yv: Vec<f64> = g_new.iter().zip(&g).map(|(a, b)| a - b).collect();
                let sy = dot(&s, &yv);
                if sy > 1e-12 {
                    if pairs.len() == MEMORY {
                        pairs.pop_front();
                    }
                    pairs.push_back((s, yv, 1.0 / sy));
                }
                std::mem::swap(&mut x, &mut x_new);
                std::mem::swap(&mut g, &mut g_new);
                let converged = (fx - f_new).abs() <= 1e-12 * fx.abs().max(1.0);
                fx = f_new;
                accepted = true;
                if converged {
                    return x;
                }
                break;
            }
            step *= 0.5;
        }
        if !accepted {
            break;
        }
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradient_matches_finite_differences() {
        let x = Matrix::from_rows(&[&[1.0, -0.5], &[0.2, 0.3], &[-1.0, 2.0]], 2);
        let y = [0, 2, 1];
        let theta: Vec<f64> = (0..9).map(|i| (i as f64 * 0.37).sin()).collect();
        let mut grad = vec![0.0; 9];
        objective(&x, &y, 3, 0.1, &theta, &mut grad);
        let mut scratch = vec![0.0; 9];
        for j in 0..9 {
            let (mut up, mut down) = (theta.clone(), theta.clone());
            up[j] += 1e-6;
            down[j] -= 1e-6;
            let numeric = (objective(&x, &y, 3, 0.1, &up, &mut scratch)
                - objective(&x, &y, 3, 0.1, &down, &mut scratch))
                / 2e-6;
            assert!(
                (numeric - grad[j]).abs() < 1e-6,
                "{j}: {numeric} vs {}",
                grad[j]
            );
        }
    }

    #[test]
    fn optimum_has_zero_gradient() {
        let x = Matrix::from_rows(&[&[1.0, 0.0], &[0.9, 0.2], &[0.0, 1.0], &[0.1, 0.8]], 2);
        let y = [0, 0, 1, 1];
        let m = Logistic::fit(&x, &y, 2, 0.01, Stop::default());
        let mut theta = m.weight.clone();
        theta.extend(&m.bias);
        let mut grad = vec![0.0; theta.len()];
        objective(&x, &y, 2, 0.01, &theta, &mut grad);
        assert!(grad.iter().all(|g| g.abs() < 1e-5), "{grad:?}");
        let p = m.predict(&x);
        assert!(p[0][0] > 0.5 && p[3][1] > 0.5);
    }
}
