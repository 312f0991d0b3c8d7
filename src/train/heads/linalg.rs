//! Dense f64 helpers for the heads: a row-major matrix, feature standardisation and a
//! Cholesky solver.

/// A row-major `rows` x `cols` matrix of f64.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl Matrix {
    /// Builds a matrix from rows of one length (`cols`); the caller guarantees the lengths.
    pub fn from_rows(rows: &[&[f64]], cols: usize) -> Self {
        let mut data = Vec::with_capacity(rows.len() * cols);
        for r in rows {
            data.extend_from_slice(r);
        }
        Self {
            rows: rows.len(),
            cols,
            data,
        }
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

/// Per-feature mean and standard deviation of a training set. The heads are fitted on
/// standardised features (better conditioned, one regularisation grid for every model) and
/// the scaling is then folded back into the weights, so a written head applies to the raw
/// embedding.
#[derive(Debug, Clone)]
pub struct Standardiser {
    pub mean: Vec<f64>,
    /// Standard deviation, 1 for constant features.
    pub scale: Vec<f64>,
}

impl Standardiser {
    pub fn fit(x: &Matrix) -> Self {
        let n = x.rows.max(1) as f64;
        let mut mean = vec![0.0; x.cols];
        for i in 0..x.rows {
            for (m, v) in mean.iter_mut().zip(x.row(i)) {
                *m += v;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n);
        let mut var = vec![0.0; x.cols];
        for i in 0..x.rows {
            for ((s, v), m) in var.iter_mut().zip(x.row(i)).zip(&mean) {
                *s += (v - m) * (v - m);
            }
        }
        let scale = var
            .iter()
            .map(|s| {
                let sd = (s / n).sqrt();
                if sd > 1e-12 { sd } else { 1.0 }
            })
            .collect();
        Self { mean, scale }
    }

    /// `(x - mean) / scale`, row by row.
    pub fn apply(&self, x: &Matrix) -> Matrix {
        let mut out = x.clone();
        for row in out.data.chunks_exact_mut(x.cols) {
            for ((v, m), s) in row.iter_mut().zip(&self.mean).zip(&self.scale) {
                *v = (*v - m) / s;
            }
        }
        out
    }

    /// Turns a linear map on standardised features (`w` row-major [k, cols], `b` [k]) into
    /// the same map on raw features.
    pub fn fold(&self, w: &[f64], b: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let cols = self.mean.len();
        let mut raw_w = w.to_vec();
        let mut raw_b = b.to_vec();
        for (row, bias) in raw_w.chunks_exact_mut(cols).zip(raw_b.iter_mut()) {
            for ((v, m), s) in row.iter_mut().zip(&self.mean).zip(&self.scale) {
                *v /= s;
                *bias -= *v * m;
            }
        }
        (raw_w, raw_b)
    }
}

/// `x^T x` ([cols, cols]).
pub fn gram(x: &Matrix) -> Vec<f64> {
    let d = x.cols;
    let mut g = vec![0.0; d * d];
    for i in 0..x.rows {
        let r = x.row(i);
        for (a, ra) in r.iter().enumerate() {
            if *ra == 0.0 {
                continue;
            }
            let row = &mut g[a * d..a * d + d];
            for (gv, rb) in row[a..].iter_mut().zip(&r[a..]) {
                *gv += ra * rb;
            }
        }
    }
    for a in 0..d {
        for b in 0..a {
            g[a * d + b] = g[b * d + a];
        }
    }
    g
}

/// Solves `a x = b` for a symmetric positive definite `a` ([n, n]) by Cholesky; `None` when
/// `a` is not positive definite (numerically).
pub fn cholesky_solve(a: &[f64], b: &[f64]) -> Option<Vec<f64>> {
    let n = b.len();
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum();
            if i == j {
                let d = a[i * n + i] - s;
                if d <= 0.0 || !d.is_finite() {
                    return None;
                }
                l[i * n + i] = d.sqrt();
            } else {
                l[i * n + j] = (a[i * n + j] - s) / l[j * n + j];
            }
        }
    }
    let mut y = vec![0.0; n];
    for i in 0..n {
        let s: f64 = (0..i).map(|k| l[i * n + k] * y[k]).sum();
        y[i] = (b[i] - s) / l[i * n + i];
    }
    let mut x = vec![0.0; n];
    for i in (0..n).rev() {
        let s: f64 = (i + 1..n).map(|k| l[k * n + i] * x[k]).sum();
        x[i] = (y[i] - s) / l[i * n + i];
    }
    Some(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_solves_a_small_system() {
        let a = [4.0, 2.0, 2.0, 3.0];
        let x = cholesky_solve(&a, &[2.0, 1.0]).unwrap();
        assert!((4.0 * x[0] + 2.0 * x[1] - 2.0).abs() < 1e-12);
        assert!((2.0 * x[0] + 3.0 * x[1] - 1.0).abs() < 1e-12);
        assert!(cholesky_solve(&[0.0, 0.0, 0.0, 0.0], &[1.0, 1.0]).is_none());
    }

    #[test]
    fn folding_the_standardiser_gives_the_same_outputs_on_raw_features() {
        let x = Matrix::from_rows(&[&[1.0, 10.0], &[3.0, 30.0], &[2.0, 5.0]], 2);
        let s = Standardiser::fit(&x);
        let z = s.apply(&x);
        let (w, b) = ([0.5, -1.0], [0.25]);
        let (rw, rb) = s.fold(&w, &b);
        for i in 0..3 {
            let on_z = w[0] * z.row(i)[0] + w[1] * z.row(i)[1] + b[0];
            let on_x = rw[0] * x.row(i)[0] + rw[1] * x.row(i)[1] + rb[0];
            assert!((on_z - on_x).abs() < 1e-12);
        }
    }
}
