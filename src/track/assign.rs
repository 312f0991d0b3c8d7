//! Minimum-cost assignment (Hungarian method with potentials, shortest augmenting paths;
//! Kuhn-Munkres as refined by Jonker-Volgenant), O(n^2 m) for n rows <= m columns.

/// Cost of a forbidden pair: large enough that the solver first maximises the number of
/// allowed pairs, then minimises their cost.
pub const FORBIDDEN: f64 = 1e6;

/// For each row, the column assigned to it, given a row-major `rows` x `cols` cost matrix.
/// Pairs whose cost is `>= FORBIDDEN` are never returned.
pub fn assign(cost: &[f64], rows: usize, cols: usize) -> Vec<Option<usize>> {
    assert_eq!(cost.len(), rows * cols, "cost matrix size");
    if rows == 0 || cols == 0 {
        return vec![None; rows];
    }
    if rows > cols {
        let t: Vec<f64> = (0..cols * rows)
            .map(|k| cost[(k % rows) * cols + k / rows])
            .collect();
        let by_col = assign(&t, cols, rows);
        let mut out = vec![None; rows];
        for (c, r) in by_col.into_iter().enumerate() {
            if let Some(r) = r {
                out[r] = Some(c);
            }
        }
        return out;
    }
    let (n, m) = (rows, cols);
    let a = |i: usize, j: usize| cost[(i - 1) * m + (j - 1)];
    let mut u = vec![0.0f64; n + 1];
    let mut v = vec![0.0f64; m + 1];
    let mut p = vec![0usize; m + 1]; // p[j]: row matched to column j (1-based, 0 = none)
    let mut way = vec![0usize; m + 1];
    let mut minv = vec![0.0f64; m + 1];
    let mut used = vec![false; m + 1];
    for i in 1..=n {
        p[0] = i;
        let mut j0 = 0;
        minv.fill(f64::INFINITY);
        used.fill(false);
        loop {
            used[j0] = true;
            let i0 = p[j0];
            let mut delta = f64::INFINITY;
            let mut j1 = 0;
            for j in 1..=m {
                if !used[j] {
                    let cur = a(i0, j) - u[i0] - v[j];
                    if cur < minv[j] {
                        minv[j] = cur;
                        way[j] = j0;
                    }
                    if minv[j] < delta {
                        delta = minv[j];
                        j1 = j;
                    }
                }
            }
            for j in 0..=m {
                if used[j] {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            if p[j0] == 0 {
                break;
            }
        }
        loop {
            let j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut out = vec![None; n];
    for j in 1..=m {
        if p[j] != 0 && a(p[j], j) < FORBIDDEN {
            out[p[j] - 1] = Some(j - 1);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn total(cost: &[f64], cols: usize, a: &[Option<usize>]) -> f64 {
        a.iter()
            .enumerate()
            .filter_map(|(r, c)| c.map(|c| cost[r * cols + c]))
            .sum()
    }

    #[test]
    fn finds_the_optimum_where_greedy_fails() {
        // Greedy takes (0,0)=1 and then (1,1)=10; the optimum is 2 + 2.
        let cost = [1.0, 2.0, 2.0, 10.0];
        let a = assign(&cost, 2, 2);
        assert_eq!(a, vec![Some(1), Some(0)]);
    }

    #[test]
    fn matches_brute_force_on_rectangular_matrices() {
        let mut seed = 7u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as f64 / (1u64 << 31) as f64
        };
        for (rows, cols) in [(3, 5), (5, 3), (4, 4), (1, 6), (6, 1)] {
            let cost: Vec<f64> = (0..rows * cols).map(|_| rnd()).collect();
            let a = assign(&cost, rows, cols);
            let best = brute(&cost, rows, cols, 0, &mut vec![false; cols]);
            assert!(
                (total(&cost, cols, &a) - best).abs() < 1e-9,
                "{rows}x{cols}"
            );
            assert_eq!(a.iter().flatten().count(), rows.min(cols));
        }
    }

    fn brute(cost: &[f64], rows: usize, cols: usize, r: usize, used: &mut Vec<bool>) -> f64 {
        if r == rows {
            return 0.0;
        }
        let mut best = f64::INFINITY;
        let free = used.iter().filter(|u| !**u).count();
        if rows - r > free {
            // More rows than columns left: this row may stay unassigned.
            best = brute(cost, rows, cols, r + 1, used);
        }
        for c in 0..cols {
            if !used[c] {
                used[c] = true;
                best = best.min(cost[r * cols + c] + brute(cost, rows, cols, r + 1, used));
                used[c] = false;
            }
        }
        best
    }

    #[test]
    fn forbidden_pairs_stay_unassigned() {
        let cost = [FORBIDDEN, 0.5, FORBIDDEN, FORBIDDEN];
        assert_eq!(assign(&cost, 2, 2), vec![Some(1), None]);
        assert_eq!(assign(&[], 0, 3), Vec::<Option<usize>>::new());
        assert_eq!(assign(&[], 2, 0), vec![None, None]);
    }
}
