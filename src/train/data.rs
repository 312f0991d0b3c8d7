//! Windows to learn from: a source of captured 8-frame windows (the capture dataset is one),
//! the held-out split and the deterministic order in which training visits them.

use std::path::Path;

use crate::capture::{Dataset, Pin, SampleMeta};
use crate::model::EmotionClipConfig;
use crate::model::preprocess::EncoderCrop;
use crate::model::weights::SplitMix64;

/// Captured windows, addressed by index.
pub trait WindowSource {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A stable id (the capture sample id): names the window in reports.
    fn id(&self, i: usize) -> &str;
    /// What names the window's content in caches: a digest of its files where the source
    /// has one, so an id reused after a dataset was lost never reads another window's
    /// cached outputs.
    fn key(&self, i: usize) -> String {
        self.id(i).to_owned()
    }
    /// Windows of one group (one person's track) stay on one side of the held-out split,
    /// so the held-out score is measured on people the student never trained on.
    fn group(&self, i: usize) -> String;
    /// The window's encoder inputs, oldest frame first.
    fn load(&self, i: usize) -> anyhow::Result<Vec<EncoderCrop>>;
}

/// A capture dataset as training windows; a window's group is its track (camera/track id).
pub struct CapturedWindows {
    pub dataset: Dataset,
}

impl CapturedWindows {
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            dataset: Dataset::open(dir)?,
        })
    }

    fn sample(&self, i: usize) -> &SampleMeta {
        &self.dataset.samples()[i]
    }

    /// Pins every window for the run writing to `out`, so the daemon's quota rotation keeps
    /// them while the run (and its `--resume` the next night) reads them; release it when the
    /// run completes. `None` (logged) when the dataset folder cannot be written.
    pub fn pin(&self, out: &Path) -> Option<Pin> {
        let ids = self.dataset.samples().iter().map(|s| s.id.as_str());
        match Pin::hold(self.dataset.dir(), out, ids) {
            Ok(pin) => Some(pin),
            Err(e) => {
                tracing::warn!(error = %e, "cannot pin the windows: the daemon's quota may rotate them out during the run");
                None
            }
        }
    }

    /// Checks that the windows are of the size and length `model` (`what`, for the message)
    /// takes.
    pub fn check_fits(&self, model: &EmotionClipConfig, what: &str) -> anyhow::Result<()> {
        let manifest = self.dataset.manifest();
        let (size, frames) = (model.vision_cfg.image_size, model.temporal.video_len);
        if (manifest.image_size, manifest.video_len) != (size, frames) {
            anyhow::bail!(
                "windows of {} px x {} frames, {what} takes {size} px x {frames}",
                manifest.image_size,
                manifest.video_len,
            );
        }
        Ok(())
    }
}

impl WindowSource for CapturedWindows {
    fn len(&self) -> usize {
        self.dataset.samples().len()
    }

    fn id(&self, i: usize) -> &str {
        &self.sample(i).id
    }

    fn key(&self, i: usize) -> String {
        let s = self.sample(i);
        match &s.digest {
            Some(d) => d.clone(),
            None => self
                .dataset
                .digest(s)
                .unwrap_or_else(|_| format!("id-{}", s.id)),
        }
    }

    fn group(&self, i: usize) -> String {
        let s = self.sample(i);
        format!("{}/{}", s.camera, s.track_id)
    }

    fn load(&self, i: usize) -> anyhow::Result<Vec<EncoderCrop>> {
        Ok(self.dataset.load(self.sample(i))?)
    }
}

/// The windows of `inner` named by `ids`, in that order (a resumed run keeps the windows it
/// started with, even when more were captured since).
pub struct Subset<'a> {
    inner: &'a dyn WindowSource,
    map: Vec<usize>,
}

impl<'a> Subset<'a> {
    /// `None` when some id is no longer in `inner` (rotated out of the capture quota).
    pub fn of(inner: &'a dyn WindowSource, ids: &[String]) -> Option<Self> {
        let index: std::collections::HashMap<&str, usize> =
            (0..inner.len()).map(|i| (inner.id(i), i)).collect();
        let map = ids
            .iter()
            .map(|id| index.get(id.as_str()).copied())
            .collect::<Option<Vec<_>>>()?;
        Some(Self { inner, map })
    }

    /// All of `inner`.
    pub fn all(inner: &'a dyn WindowSource) -> Self {
        Self {
            inner,
            map: (0..inner.len()).collect(),
        }
    }

    /// The windows a run learns from: those it `started` with when it resumes and they are
    /// all still in `inner` (newer captures wait for the next run), else all of `inner`.
    pub fn keeping(inner: &'a dyn WindowSource, started: Option<&[String]>) -> Self {
        started
            .and_then(|ids| Self::of(inner, ids))
            .unwrap_or_else(|| Self::all(inner))
    }
}

impl WindowSource for Subset<'_> {
    fn len(&self) -> usize {
        self.map.len()
    }
    fn id(&self, i: usize) -> &str {
        self.inner.id(self.map[i])
    }
    fn key(&self, i: usize) -> String {
        self.inner.key(self.map[i])
    }
    fn group(&self, i: usize) -> String {
        self.inner.group(self.map[i])
    }
    fn load(&self, i: usize) -> anyhow::Result<Vec<EncoderCrop>> {
        self.inner.load(self.map[i])
    }
}

/// The encoder inputs of the windows `indices`, each error naming its window.
pub fn load_windows(
    source: &dyn WindowSource,
    indices: &[usize],
) -> anyhow::Result<Vec<Vec<EncoderCrop>>> {
    use anyhow::Context;
    indices
        .iter()
        .map(|&i| {
            source
                .load(i)
                .with_context(|| format!("window {}", source.id(i)))
        })
        .collect()
}

/// A seeded hash of `text`: stable across runs and machines.
pub fn hash(text: &str, seed: u64) -> u64 {
    text.bytes().fold(SplitMix64(seed).next(), |h, b| {
        SplitMix64(h ^ u64::from(b)).next()
    })
}

/// Train and held-out indices: each group goes to the held-out side with probability
/// `val_fraction` (a seeded hash of its name, so the split is stable as data grows). With
/// two or more groups, each side gets at least one.
pub fn split(source: &dyn WindowSource, val_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut groups: Vec<(u64, String)> = (0..source.len())
        .map(|i| source.group(i))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|g| (hash(&g, seed), g))
        .collect();
    groups.sort();
    let cut = (val_fraction.clamp(0.0, 1.0) * u64::MAX as f64) as u64;
    let mut held: Vec<&String> = groups
        .iter()
        .filter(|(h, _)| *h < cut)
        .map(|(_, g)| g)
        .collect();
    if groups.len() >= 2 {
        if held.is_empty() && val_fraction > 0.0 {
            held.push(&groups[0].1);
        }
        if held.len() == groups.len() {
            held.pop();
        }
    }
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for i in 0..source.len() {
        if held.contains(&&source.group(i)) {
            val.push(i);
        } else {
            train.push(i);
        }
    }
    (train, val)
}

/// Marks each item as held out (`true`) or training, by group (`groups[i]` is item i's):
/// the groups are shuffled with `seed` (the same inputs and seed always give the same split)
/// and moved to the held-out side until it holds at least `fraction` of the items; both
/// sides keep at least one group. `None` with fewer than two groups. Unlike [`split`], the
/// held-out share is reached on few, unequal groups.
pub fn by_share<G: Ord>(groups: &[G], fraction: f64, seed: u64) -> Option<Vec<bool>> {
    let mut sizes: std::collections::BTreeMap<&G, usize> = std::collections::BTreeMap::new();
    for g in groups {
        *sizes.entry(g).or_default() += 1;
    }
    if sizes.len() < 2 {
        return None;
    }
    let mut order: Vec<&G> = sizes.keys().copied().collect();
    let mut rng = SplitMix64(seed);
    for i in (1..order.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    let target = fraction * groups.len() as f64;
    let mut held = std::collections::BTreeSet::new();
    let mut count = 0usize;
    for g in &order[..order.len() - 1] {
        if held.is_empty() || (count as f64) < target {
            held.insert(*g);
            count += sizes[g];
        }
    }
    Some(groups.iter().map(|g| held.contains(g)).collect())
}

/// A seeded permutation of `0..n` (Fisher-Yates).
fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = SplitMix64(seed);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// The windows of training step `step`: epochs of `train` in a seeded order that depends on
/// the epoch, so any step's batch is known without replaying earlier ones (`--resume`).
pub fn batch_indices(train: &[usize], step: usize, batch: usize, seed: u64) -> Vec<usize> {
    let n = train.len();
    if n == 0 {
        return Vec::new();
    }
    let mut cached: Option<(usize, Vec<usize>)> = None;
    (0..batch)
        .map(|k| {
            let p = step * batch + k;
            let epoch = p / n;
            if cached.as_ref().is_none_or(|(e, _)| *e != epoch) {
                cached = Some((
                    epoch,
                    permutation(n, seed ^ (epoch as u64).wrapping_mul(0x9e37)),
                ));
            }
            train[cached.as_ref().expect("just set").1[p % n]]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Groups(Vec<String>);

    impl WindowSource for Groups {
        fn len(&self) -> usize {
            self.0.len()
        }
        fn id(&self, i: usize) -> &str {
            &self.0[i]
        }
        fn group(&self, i: usize) -> String {
            self.0[i].split('/').next().unwrap_or_default().to_owned()
        }
        fn load(&self, _: usize) -> anyhow::Result<Vec<EncoderCrop>> {
            anyhow::bail!("no pixels")
        }
    }

    #[test]
    fn a_track_never_lands_on_both_sides() {
        let ids: Vec<String> = (0..60).map(|i| format!("t{}/{i}", i % 12)).collect();
        let source = Groups(ids);
        let (train, val) = split(&source, 0.25, 7);
        assert_eq!(train.len() + val.len(), 60);
        assert!(!train.is_empty() && !val.is_empty());
        for v in &val {
            assert!(train.iter().all(|t| source.group(*t) != source.group(*v)));
        }
        assert_eq!(split(&source, 0.25, 7), (train, val));
    }

    #[test]
    fn shares_are_reached_by_whole_groups_and_the_seed_decides() {
        let groups: Vec<(String, u64)> = (0..100)
            .map(|i| (format!("cam{}", i % 2), (i / 10) as u64))
            .collect();
        let a = by_share(&groups, 0.2, 7).unwrap();
        assert_eq!(a, by_share(&groups, 0.2, 7).unwrap());
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
        assert_eq!(by_share(&one, 0.2, 0), None);
        let two = vec![("cam".to_owned(), 1), ("cam".to_owned(), 2)];
        let s = by_share(&two, 0.9, 0).unwrap();
        assert_eq!(
            s.iter().filter(|v| **v).count(),
            1,
            "both sides keep a track"
        );
    }

    #[test]
    fn each_epoch_visits_every_window_once() {
        let train: Vec<usize> = (100..110).collect();
        let mut seen: Vec<usize> = (0..5)
            .flat_map(|s| batch_indices(&train, s, 2, 3))
            .collect();
        seen.sort();
        assert_eq!(seen, train);
        assert_eq!(
            batch_indices(&train, 7, 3, 3),
            batch_indices(&train, 7, 3, 3)
        );
        assert_ne!(
            batch_indices(&train, 0, 10, 3),
            batch_indices(&train, 1, 10, 3)
        );
    }
}
