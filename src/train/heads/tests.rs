//! Fitting on synthetic embeddings with known structure.

use super::emotion::L2_GRID;
use super::examples::Example;
use super::fit::{FitError, FitOptions, fit};
use crate::readout::{EmotionClass, HeadsFile, Readout, ReadoutConfig};

/// Deterministic standard normals (SplitMix64 + Box-Muller).
struct Normal(u64);

impl Normal {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn next(&mut self) -> f64 {
        let (u, v) = (self.uniform().max(1e-300), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

const DIM: usize = 32;
const CLASSES: [&str; 4] = ["anger", "happiness", "neutral", "sadness"];

/// 4 Gaussian clusters in 32 dimensions (offset from the origin, so the bias matters), 40
/// tracks of 5 windows, one class per track; valence/arousal a known linear map plus noise.
fn synthetic(seed: u64) -> (Vec<Example>, [Vec<f64>; 2], [f64; 2]) {
    let mut rng = Normal(seed);
    let centres: Vec<Vec<f64>> = (0..4)
        .map(|_| (0..DIM).map(|_| 5.0 + 1.5 * rng.next()).collect())
        .collect();
    let w: [Vec<f64>; 2] = [
        (0..DIM).map(|_| 0.02 * rng.next()).collect(),
        (0..DIM).map(|_| 0.02 * rng.next()).collect(),
    ];
    let b = [0.1, -0.2];
    let mut examples = Vec::new();
    for track in 0..40u64 {
        let class = (track % 4) as usize;
        for window in 0..5 {
            let x: Vec<f64> = centres[class].iter().map(|c| c + rng.next()).collect();
            let va = [0, 1].map(|t| {
                let clean: f64 = w[t].iter().zip(&x).map(|(a, b)| a * b).sum::<f64>() + b[t];
                clean + 0.005 * rng.next()
            });
            examples.push(Example {
                sample: format!("s{track}-{window}"),
                camera: if track % 2 == 0 { "a" } else { "b" }.into(),
                track_id: track / 2,
                embedding: x.iter().map(|&v| v as f32).collect(),
                emotion: Some(CLASSES[class].into()),
                va: Some(va),
            });
        }
    }
    (examples, w, b)
}

#[test]
fn separable_clusters_and_a_linear_map_are_recovered() {
    let t0 = std::time::Instant::now();
    let (examples, _, _) = synthetic(1);
    let fitted = fit(&examples, &FitOptions::default()).unwrap();
    let r = &fitted.report;
    let em = r.emotion.as_ref().unwrap();
    assert_eq!(em.classes, CLASSES);
    assert!(em.accuracy >= 0.95, "validation accuracy {}", em.accuracy);
    assert!(em.macro_map.unwrap() >= 0.95, "{:?}", em.macro_map);
    assert_eq!(em.grid.len(), L2_GRID.len());
    assert_eq!(
        em.per_class
            .iter()
            .map(|c| c.support_train + c.support_validation)
            .sum::<usize>(),
        200
    );
    let va = r.valence_arousal.as_ref().unwrap();
    for target in [&va.valence, &va.arousal] {
        assert!(target.r2.unwrap() > 0.95, "R2 {:?}", target.r2);
        assert!(target.mse < 1e-3, "MSE {}", target.mse);
    }
    assert_eq!(r.split.samples_train + r.split.samples_validation, 200);
    assert!(
        (35..=45).contains(&r.split.samples_validation),
        "{:?}",
        r.split
    );
    // Deterministic: same data and seed, same heads.
    let again = fit(&examples, &FitOptions::default()).unwrap();
    assert_eq!(again.heads, fitted.heads);
    eprintln!("fit in {:?}", t0.elapsed());
}

#[test]
fn tracks_do_not_straddle_the_split_and_fixed_penalties_skip_the_grid() {
    let (examples, _, _) = synthetic(2);
    let opts = FitOptions {
        l2: Some(0.1),
        ridge: Some(1.0),
        seed: 5,
        ..FitOptions::default()
    };
    let fitted = fit(&examples, &opts).unwrap();
    let em = fitted.report.emotion.unwrap();
    assert_eq!((em.l2, em.l2_fixed, em.grid.len()), (0.1, true, 1));
    let va = fitted.report.valence_arousal.unwrap();
    assert_eq!((va.valence.lambda, va.valence.grid.len()), (1.0, 1));
    assert_eq!(
        fitted.report.split.tracks_train + fitted.report.split.tracks_validation,
        40
    );
}

#[test]
fn missing_sections_and_degenerate_data() {
    let (mut examples, _, _) = synthetic(3);
    // Valence/arousal only.
    examples.iter_mut().for_each(|e| e.emotion = None);
    let fitted = fit(&examples, &FitOptions::default()).unwrap();
    assert!(fitted.heads.emotion.is_none() && fitted.heads.valence_arousal.is_some());
    // Nothing at all.
    examples.iter_mut().for_each(|e| e.va = None);
    assert!(matches!(
        fit(&examples, &FitOptions::default()),
        Err(FitError::Nothing(_))
    ));
    // One track.
    let (mut one, _, _) = synthetic(3);
    one.iter_mut().for_each(|e| e.track_id = 1);
    one.iter_mut().for_each(|e| e.camera = "a".into());
    assert!(matches!(
        fit(&one, &FitOptions::default()),
        Err(FitError::OneTrack)
    ));
    one[0].embedding[0] = f32::NAN;
    assert!(matches!(
        fit(&one, &FitOptions::default()),
        Err(FitError::NonFinite(_))
    ));
}

/// Class descriptions embedded on arbitrary but fixed axes of width `DIM`.
fn texts(t: &[String]) -> Result<Vec<Vec<f32>>, String> {
    Ok(t.iter()
        .enumerate()
        .map(|(i, _)| {
            (0..DIM)
                .map(|j| if j == i % DIM { 1.0 } else { 0.1 })
                .collect()
        })
        .collect())
}

fn config(heads: &std::path::Path) -> ReadoutConfig {
    let class = |name: &str, v: f32, a: f32| EmotionClass {
        name: name.into(),
        descriptions: vec![format!("a {name} face")],
        components: vec![],
        valence: Some(v),
        arousal: Some(a),
    };
    ReadoutConfig {
        ema_alpha: 1.0,
        heads_file: Some(heads.to_owned()),
        classes: vec![
            class("anger", -0.5, 0.6),
            class("happiness", 0.8, 0.4),
            class("neutral", 0.0, 0.0),
            class("sadness", -0.6, -0.5),
            class("surprise", 0.4, 0.7),
        ],
    }
}

#[test]
fn the_heads_file_drives_the_readout() {
    let (examples, _, _) = synthetic(4);
    let fitted = fit(&examples, &FitOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("heads.safetensors");
    fitted.heads.write(&path).unwrap();

    let r = Readout::build(&config(&path), 100.0, texts).unwrap();
    assert!(r.has_emotion_head() && r.has_va_head());
    assert_eq!(
        r.names(),
        CLASSES,
        "the head's classes, not the configured five"
    );
    let head = fitted.heads.emotion.as_ref().unwrap();
    let va = fitted.heads.valence_arousal.as_ref().unwrap();
    let mut correct = 0;
    for e in &examples {
        let affect = r.read(&e.embedding);
        // The published scores are the softmax of the head's logits on the raw embedding.
        let logits: Vec<f64> = head
            .weight
            .chunks_exact(DIM)
            .zip(&head.bias)
            .map(|(w, b)| {
                w.iter()
                    .zip(&e.embedding)
                    .map(|(a, x)| f64::from(*a) * f64::from(*x))
                    .sum::<f64>()
                    + f64::from(*b)
            })
            .collect();
        let max = logits.iter().copied().fold(f64::MIN, f64::max);
        let z: f64 = logits.iter().map(|l| (l - max).exp()).sum();
        for (s, l) in affect.scores.iter().zip(&logits) {
            assert!((f64::from(*s) - (l - max).exp() / z).abs() < 1e-4);
        }
        correct += usize::from(r.names()[Readout::top(&affect)] == *e.emotion.as_ref().unwrap());
        let v: f32 = va.weight[..DIM]
            .iter()
            .zip(&e.embedding)
            .map(|(a, b)| a * b)
            .sum::<f32>()
            + va.bias[0];
        assert!((affect.valence - v.clamp(-1.0, 1.0)).abs() < 1e-4);
        let truth = e.va.unwrap();
        assert!((f64::from(affect.valence) - truth[0]).abs() < 0.05);
        assert!((f64::from(affect.arousal) - truth[1]).abs() < 0.05);
    }
    assert!(correct >= 195, "{correct}/200 on the data it was fitted on");

    // Emotion head only: the lexicon weighs the head's scores with the configured
    // coordinates of the same names.
    let only = HeadsFile {
        valence_arousal: None,
        ..fitted.heads.clone()
    };
    only.write(&path).unwrap();
    let r = Readout::build(&config(&path), 100.0, texts).unwrap();
    assert!(r.has_emotion_head() && !r.has_va_head());
    let a = r.read(&examples[0].embedding);
    let coords = [[-0.5, 0.6], [0.8, 0.4], [0.0, 0.0], [-0.6, -0.5]];
    let v: f32 = a.scores.iter().zip(&coords).map(|(p, c)| p * c[0]).sum();
    assert!((a.valence - v).abs() < 1e-5);

    // Valence/arousal only: zero-shot scores over the configured classes.
    let only = HeadsFile {
        emotion: None,
        ..fitted.heads.clone()
    };
    only.write(&path).unwrap();
    let r = Readout::build(&config(&path), 100.0, texts).unwrap();
    assert!(!r.has_emotion_head() && r.has_va_head());
    assert_eq!(r.names().len(), 5);
}
