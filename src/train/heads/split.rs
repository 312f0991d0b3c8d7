//! Train/validation split by track: all windows of one person (camera + track id) land on
//! the same side, so validation measures generalisation to people the heads have not seen.

use std::collections::BTreeMap;

/// Marks each sample as validation (`true`) or training. `groups[i]` is sample `i`'s
/// (camera, track id). Tracks are shuffled with `seed` (the same inputs and seed always give
/// the same split) and moved to validation until it holds at least `fraction` of the
/// samples; both sides keep at least one track. `None` with fewer than two tracks.
pub fn by_track(groups: &[(String, u64)], fraction: f64, seed: u64) -> Option<Vec<bool>> {
    let mut sizes: BTreeMap<&(String, u64), usize> = BTreeMap::new();
    for g in groups {
        *sizes.entry(g).or_default() += 1;
    }
    if sizes.len() < 2 {
        return None;
    }
    let mut order: Vec<&(String, u64)> = sizes.keys().copied().collect();
    let mut rng = SplitMix64(seed);
    for i in (1..order.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    let target = fraction * groups.len() as f64;
    let mut validation = std::collections::BTreeSet::new();
    let mut count = 0usize;
    for g in &order[..order.len() - 1] {
        if validation.is_empty() || (count as f64) < target {
            validation.insert(*g);
            count += sizes[g];
        }
    }
    Some(groups.iter().map(|g| validation.contains(g)).collect())
}

/// Sebastiano Vigna's SplitMix64: a tiny, well-mixed, portable generator.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_never_straddle_and_the_seed_decides() {
        let groups: Vec<(String, u64)> = (0..100)
            .map(|i| (format!("cam{}", i % 2), (i / 10) as u64))
            .collect();
        let a = by_track(&groups, 0.2, 7).unwrap();
        assert_eq!(a, by_track(&groups, 0.2, 7).unwrap());
        for (g, v) in groups.iter().zip(&a) {
            for (h, w) in groups.iter().zip(&a) {
                if g == h {
                    assert_eq!(v, w);
                }
            }
        }
        let n = a.iter().filter(|v| **v).count();
        assert!((20..=30).contains(&n), "{n}");
        assert!(a.iter().any(|v| !v));
        let one = vec![("cam".to_owned(), 1); 5];
        assert_eq!(by_track(&one, 0.2, 0), None);
        let two = vec![("cam".to_owned(), 1), ("cam".to_owned(), 2)];
        let s = by_track(&two, 0.9, 0).unwrap();
        assert_eq!(
            s.iter().filter(|v| **v).count(),
            1,
            "both sides keep a track"
        );
    }
}
