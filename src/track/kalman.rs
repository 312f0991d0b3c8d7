//! Constant-velocity Kalman filter on (cx, cy, aspect = w / h, h), with noise proportional to
//! the box height, as in SORT / DeepSORT / ByteTrack.

// Index loops read like the matrix algebra they implement.
#![allow(clippy::needless_range_loop)]

use crate::types::BBox;

const STD_POS: f64 = 1.0 / 20.0;
const STD_VEL: f64 = 1.0 / 160.0;

type M8 = [[f64; 8]; 8];
type M4 = [[f64; 4]; 4];

/// One track's motion state: mean (cx, cy, a, h and their velocities) and covariance.
#[derive(Debug, Clone)]
pub struct Kalman {
    pub mean: [f64; 8],
    cov: M8,
}

fn measure(b: &BBox) -> [f64; 4] {
    let h = b.height().max(1e-3) as f64;
    let w = b.width() as f64;
    [
        (b.x1 + b.x2) as f64 / 2.0,
        (b.y1 + b.y2) as f64 / 2.0,
        w / h,
        h,
    ]
}

impl Kalman {
    pub fn new(b: &BBox) -> Kalman {
        let z = measure(b);
        let h = z[3];
        let std = [
            2.0 * STD_POS * h,
            2.0 * STD_POS * h,
            1e-2,
            2.0 * STD_POS * h,
            10.0 * STD_VEL * h,
            10.0 * STD_VEL * h,
            1e-5,
            10.0 * STD_VEL * h,
        ];
        let mut cov = [[0.0; 8]; 8];
        for i in 0..8 {
            cov[i][i] = std[i] * std[i];
        }
        let mut mean = [0.0; 8];
        mean[..4].copy_from_slice(&z);
        Kalman { mean, cov }
    }

    /// The current box estimate.
    pub fn bbox(&self) -> BBox {
        let [cx, cy, a, h, ..] = self.mean;
        let h = h.max(0.0);
        let w = (a * h).max(0.0);
        BBox::new(
            (cx - w / 2.0) as f32,
            (cy - h / 2.0) as f32,
            (cx + w / 2.0) as f32,
            (cy + h / 2.0) as f32,
        )
    }

    /// Advances one frame.
    pub fn predict(&mut self) {
        let h = self.mean[3];
        for i in 0..4 {
            self.mean[i] += self.mean[i + 4];
        }
        // P = F P F^T with F = [[I, I], [0, I]].
        let p = self.cov;
        let mut fp = p;
        for i in 0..4 {
            for j in 0..8 {
                fp[i][j] = p[i][j] + p[i + 4][j];
            }
        }
        let mut q = fp;
        for i in 0..8 {
            for j in 0..4 {
                q[i][j] = fp[i][j] + fp[i][j + 4];
            }
        }
        let std = [
            STD_POS * h,
            STD_POS * h,
            1e-2,
            STD_POS * h,
            STD_VEL * h,
            STD_VEL * h,
            1e-5,
            STD_VEL * h,
        ];
        for i in 0..8 {
            q[i][i] += std[i] * std[i];
        }
        self.cov = q;
    }

    /// Stops the height from drifting while a track is unseen (ByteTrack does the same).
    pub fn freeze_height(&mut self) {
        self.mean[7] = 0.0;
    }

    /// Corrects with a measured box.
    pub fn update(&mut self, b: &BBox) {
        let z = measure(b);
        let h = self.mean[3];
        let r = [STD_POS * h, STD_POS * h, 1e-1, STD_POS * h];
        // S = H P H^T + R (the top-left 4x4 block plus R).
        let mut s: M4 = [[0.0; 4]; 4];
        for i in 0..4 {
            for j in 0..4 {
                s[i][j] = self.cov[i][j];
            }
            s[i][i] += r[i] * r[i];
        }
        let Some(si) = invert4(&s) else {
            return;
        };
        // K = P H^T S^-1 (8x4).
        let mut k = [[0.0; 4]; 8];
        for i in 0..8 {
            for j in 0..4 {
                k[i][j] = (0..4).map(|l| self.cov[i][l] * si[l][j]).sum();
            }
        }
        let y: [f64; 4] = std::array::from_fn(|i| z[i] - self.mean[i]);
        for i in 0..8 {
            self.mean[i] += (0..4).map(|j| k[i][j] * y[j]).sum::<f64>();
        }
        // P = P - K H P (H P is the top four rows of P).
        let p = self.cov;
        for i in 0..8 {
            for j in 0..8 {
                self.cov[i][j] = p[i][j] - (0..4).map(|l| k[i][l] * p[l][j]).sum::<f64>();
            }
        }
    }
}

/// Gauss-Jordan inverse with partial pivoting; `None` when singular.
fn invert4(m: &M4) -> Option<M4> {
    let mut a = *m;
    let mut inv: M4 = [[0.0; 4]; 4];
    for (i, row) in inv.iter_mut().enumerate() {
        row[i] = 1.0;
    }
    for c in 0..4 {
        let p = (c..4).max_by(|&x, &y| a[x][c].abs().total_cmp(&a[y][c].abs()))?;
        if a[p][c].abs() < 1e-12 {
            return None;
        }
        a.swap(c, p);
        inv.swap(c, p);
        let d = a[c][c];
        for j in 0..4 {
            a[c][j] /= d;
            inv[c][j] /= d;
        }
        for r in 0..4 {
            if r != c {
                let f = a[r][c];
                for j in 0..4 {
                    a[r][j] -= f * a[c][j];
                    inv[r][j] -= f * inv[c][j];
                }
            }
        }
    }
    Some(inv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_constant_velocity() {
        let b = |t: f32| BBox::new(10.0 + 5.0 * t, 20.0, 50.0 + 5.0 * t, 120.0);
        let mut k = Kalman::new(&b(0.0));
        for t in 1..20 {
            k.predict();
            k.update(&b(t as f32));
        }
        k.predict();
        let p = k.bbox();
        assert!((p.x1 - b(20.0).x1).abs() < 1.0, "{p:?}");
        assert!((p.height() - 100.0).abs() < 1.0, "{p:?}");
        assert!((k.mean[4] - 5.0).abs() < 0.2, "{:?}", k.mean);
    }

    #[test]
    fn inverse_of_a_diagonal_matrix() {
        let m = [
            [2.0, 0.0, 0.0, 0.0],
            [0.0, 4.0, 0.0, 0.0],
            [0.0, 0.0, 0.5, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let i = invert4(&m).unwrap();
        assert_eq!(i[0][0], 0.5);
        assert_eq!(i[2][2], 2.0);
        assert!(invert4(&[[0.0; 4]; 4]).is_none());
    }
}
