//! Read-out: video embedding -> emotion scores and valence/arousal.
//!
//! Scores are zero-shot, as in EmoCLIP: softmax over classes of `logit_scale * cos(video,
//! class)`, where a class embedding is the mean of its descriptions' text embeddings and a
//! compound class the mean of its components' *un-normalised* embeddings (EmoCLIP Sec. III-C).
//! Valence/arousal is the probability-weighted mean of the classes' circumplex coordinates
//! (the lexicon).
//!
//! A heads file fitted on site (`affectd train heads`, see [`super::heads_file`]) replaces
//! either part: its emotion head gives the scores (softmax of `W x + b` on the raw embedding,
//! over the head's own classes), its valence/arousal head the coordinates (`W x + b`, clamped
//! to [-1, 1]). With an emotion head but no valence/arousal head, the lexicon weighs the
//! head's scores when every head class is a configured class (for its coordinates), and the
//! zero-shot scores otherwise.

use std::sync::Arc;

use super::config::{EmotionClass, ReadoutConfig};
use super::heads_file::{EmotionHead, HeadsFile, VaHead};
use super::source::{ReadoutSource, ScoresSource, ValenceArousalSource};

/// What the read-out says about one window.
#[derive(Debug, Clone, PartialEq)]
pub struct Affect {
    /// Class probabilities in [`Readout::names`] order; they sum to 1.
    pub scores: Vec<f32>,
    pub valence: f32,
    pub arousal: f32,
}

/// Problems building the read-out.
#[derive(Debug, thiserror::Error)]
pub enum ReadoutError {
    #[error("text encoder: {0}")]
    Encode(String),
    #[error("heads file {path}: {problem}")]
    Heads { path: String, problem: String },
}

/// The zero-shot classifier with its class embeddings computed once at start, and the
/// fitted heads when configured.
#[derive(Debug, Clone)]
pub struct Readout {
    /// Configured (zero-shot) class names.
    names: Vec<String>,
    /// [`Self::names`], shared with every result.
    served_names: Arc<[String]>,
    /// L2-normalised class embeddings, row-major [classes, dim].
    classes: Vec<f32>,
    dim: usize,
    logit_scale: f32,
    coordinates: Vec<[f32; 2]>,
    va_head: Option<VaHead>,
    emotion_head: Option<EmotionHead>,
    /// Lexicon coordinates of the emotion head's classes, when all are configured classes.
    head_coordinates: Option<Vec<[f32; 2]>>,
    /// `model.name` and `model.weights` recorded in the heads file.
    heads_model: (Option<String>, Option<String>),
}

impl Readout {
    /// Builds the class embeddings. `encode` maps texts to their un-normalised text
    /// embeddings (one vector per text, all of one length). `logit_scale` is the multiplier
    /// (the exponential of the checkpoint's `logit_scale` parameter).
    pub fn build<E: std::fmt::Display>(
        cfg: &ReadoutConfig,
        logit_scale: f32,
        mut encode: impl FnMut(&[String]) -> Result<Vec<Vec<f32>>, E>,
    ) -> Result<Readout, ReadoutError> {
        let basic: Vec<&EmotionClass> = cfg
            .classes
            .iter()
            .filter(|c| c.components.is_empty())
            .collect();
        let texts: Vec<String> = basic
            .iter()
            .flat_map(|c| c.descriptions.iter().cloned())
            .collect();
        let embeddings = encode(&texts).map_err(|e| ReadoutError::Encode(e.to_string()))?;
        if embeddings.len() != texts.len() {
            return Err(ReadoutError::Encode(format!(
                "{} embeddings for {} texts",
                embeddings.len(),
                texts.len()
            )));
        }
        let dim = embeddings.first().map_or(0, Vec::len);
        if dim == 0 || embeddings.iter().any(|e| e.len() != dim) {
            return Err(ReadoutError::Encode("embeddings of unequal length".into()));
        }

        // Un-normalised embedding and coordinates of each basic class.
        let mut raw: Vec<(&str, Vec<f32>, [f32; 2])> = Vec::new();
        let mut next = embeddings.iter();
        for class in &basic {
            let rows: Vec<&Vec<f32>> = next.by_ref().take(class.descriptions.len()).collect();
            let coords = [class.valence.unwrap_or(0.0), class.arousal.unwrap_or(0.0)];
            raw.push((&class.name, mean(&rows, dim), coords));
        }

        let mut names = Vec::new();
        let mut classes = Vec::new();
        let mut coordinates = Vec::new();
        for class in &cfg.classes {
            let (embedding, coords) = if class.components.is_empty() {
                let (_, e, c) = raw
                    .iter()
                    .find(|(n, _, _)| *n == class.name)
                    .expect("every basic class was embedded above");
                (e.clone(), *c)
            } else {
                let parts: Vec<&(&str, Vec<f32>, [f32; 2])> = class
                    .components
                    .iter()
                    .filter_map(|name| raw.iter().find(|(n, _, _)| n == name))
                    .collect();
                let rows: Vec<&Vec<f32>> = parts.iter().map(|(_, e, _)| e).collect();
                let n = parts.len().max(1) as f32;
                let coords = [
                    class
                        .valence
                        .unwrap_or_else(|| parts.iter().map(|p| p.2[0]).sum::<f32>() / n),
                    class
                        .arousal
                        .unwrap_or_else(|| parts.iter().map(|p| p.2[1]).sum::<f32>() / n),
                ];
                (mean(&rows, dim), coords)
            };
            names.push(class.name.clone());
            classes.extend(normalised(&embedding));
            coordinates.push(coords);
        }
        let heads = match &cfg.heads_file {
            Some(path) => HeadsFile::read(path, dim).map_err(|problem| ReadoutError::Heads {
                path: path.display().to_string(),
                problem,
            })?,
            None => HeadsFile::default(),
        };
        let head_coordinates = heads.emotion.as_ref().and_then(|h| {
            h.classes
                .iter()
                .map(|c| names.iter().position(|n| n == c).map(|i| coordinates[i]))
                .collect()
        });
        let served_names: Arc<[String]> = match &heads.emotion {
            Some(h) => h.classes.clone().into(),
            None => names.clone().into(),
        };
        Ok(Readout {
            names,
            served_names,
            classes,
            dim,
            logit_scale,
            coordinates,
            va_head: heads.valence_arousal,
            emotion_head: heads.emotion,
            head_coordinates,
            heads_model: (heads.model_name, heads.model_weights),
        })
    }

    /// Class names in score order: the emotion head's classes when it is present, the
    /// configured classes otherwise.
    pub fn names(&self) -> &[String] {
        match &self.emotion_head {
            Some(h) => &h.classes,
            None => &self.names,
        }
    }

    /// [`Self::names`] as a shared list, for results.
    pub fn shared_names(&self) -> Arc<[String]> {
        Arc::clone(&self.served_names)
    }

    /// Where the scores and valence/arousal of [`Self::read`] come from.
    pub fn source(&self) -> ReadoutSource {
        ReadoutSource {
            scores: if self.has_emotion_head() {
                ScoresSource::Head
            } else {
                ScoresSource::ZeroShot
            },
            valence_arousal: if self.has_va_head() {
                ValenceArousalSource::Head
            } else {
                ValenceArousalSource::Lexicon
            },
        }
    }

    /// The L2-normalised class embeddings, row-major [classes, dim], and the multiplier
    /// applied to cosine similarities (for training against the same zero-shot classifier).
    pub fn class_embeddings(&self) -> (&[f32], usize, f32) {
        (&self.classes, self.dim, self.logit_scale)
    }

    /// Whether valence/arousal come from a fitted head rather than the lexicon.
    pub fn has_va_head(&self) -> bool {
        self.va_head.is_some()
    }

    /// Whether the scores come from a fitted emotion head rather than zero-shot.
    pub fn has_emotion_head(&self) -> bool {
        self.emotion_head.is_some()
    }

    /// The encoder name and weights identity recorded in the heads file, if any.
    pub fn heads_model(&self) -> (Option<&str>, Option<&str>) {
        (self.heads_model.0.as_deref(), self.heads_model.1.as_deref())
    }

    /// Reads one (un-normalised) video embedding. A wrong length or a non-finite embedding
    /// gives uniform scores and neutral valence/arousal rather than NaN.
    pub fn read(&self, video: &[f32]) -> Affect {
        let k = self.names().len();
        if video.len() != self.dim || video.iter().any(|v| !v.is_finite()) {
            return Affect {
                scores: vec![1.0 / k as f32; k],
                valence: 0.0,
                arousal: 0.0,
            };
        }
        let zero_shot = || {
            let unit = normalised(video);
            let logits: Vec<f32> = self
                .classes
                .chunks_exact(self.dim)
                .map(|c| self.logit_scale * dot(c, &unit))
                .collect();
            softmax(&logits)
        };
        let scores = match &self.emotion_head {
            Some(head) => {
                let logits: Vec<f32> = head
                    .weight
                    .chunks_exact(self.dim)
                    .zip(&head.bias)
                    .map(|(w, b)| dot(w, video) + b)
                    .collect();
                softmax(&logits)
            }
            None => zero_shot(),
        };
        let [valence, arousal] = match &self.va_head {
            Some(head) => {
                let (v, a) = head.weight.split_at(self.dim);
                [
                    (dot(v, video) + head.bias[0]).clamp(-1.0, 1.0),
                    (dot(a, video) + head.bias[1]).clamp(-1.0, 1.0),
                ]
            }
            None => {
                let (probs, coords) = match (&self.emotion_head, &self.head_coordinates) {
                    (Some(_), Some(coords)) => (scores.clone(), coords.as_slice()),
                    (Some(_), None) => (zero_shot(), self.coordinates.as_slice()),
                    (None, _) => (scores.clone(), self.coordinates.as_slice()),
                };
                coords.iter().zip(&probs).fold([0.0, 0.0], |acc, (c, p)| {
                    [acc[0] + p * c[0], acc[1] + p * c[1]]
                })
            }
        };
        Affect {
            scores,
            valence,
            arousal,
        }
    }

    /// The index of the highest score.
    pub fn top(affect: &Affect) -> usize {
        affect
            .scores
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i)
    }
}

/// Per-track exponential moving average of the read-out.
#[derive(Debug, Clone)]
pub struct Ema {
    alpha: f32,
    state: Option<Affect>,
}

impl Ema {
    pub fn new(alpha: f32) -> Self {
        Self { alpha, state: None }
    }

    /// Folds in a new window and returns the smoothed read-out.
    pub fn update(&mut self, new: &Affect) -> Affect {
        let a = self.alpha;
        let next = match self.state.take() {
            Some(old) if old.scores.len() == new.scores.len() => Affect {
                scores: old
                    .scores
                    .iter()
                    .zip(&new.scores)
                    .map(|(o, n)| a * n + (1.0 - a) * o)
                    .collect(),
                valence: a * new.valence + (1.0 - a) * old.valence,
                arousal: a * new.arousal + (1.0 - a) * old.arousal,
            },
            _ => new.clone(),
        };
        self.state = Some(next.clone());
        next
    }
}

fn mean(rows: &[&Vec<f32>], dim: usize) -> Vec<f32> {
    let mut out = vec![0.0; dim];
    for row in rows {
        for (o, v) in out.iter_mut().zip(row.iter()) {
            *o += v;
        }
    }
    let n = rows.len().max(1) as f32;
    out.iter_mut().for_each(|o| *o /= n);
    out
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn normalised(v: &[f32]) -> Vec<f32> {
    let norm = dot(v, v).sqrt().max(1e-12);
    v.iter().map(|x| x / norm).collect()
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three classes on orthogonal axes; "happily surprised" between two of them.
    fn config() -> ReadoutConfig {
        let class = |name: &str, d: &[&str], v: f32, a: f32| EmotionClass {
            name: name.into(),
            descriptions: d.iter().map(|s| (*s).into()).collect(),
            components: vec![],
            valence: Some(v),
            arousal: Some(a),
        };
        ReadoutConfig {
            ema_alpha: 0.5,
            heads_file: None,
            classes: vec![
                class("happiness", &["x", "x2"], 0.8, 0.4),
                class("surprise", &["y"], 0.6, 0.6),
                class("sadness", &["z"], -0.6, -0.5),
                EmotionClass {
                    name: "happily surprised".into(),
                    descriptions: vec![],
                    components: vec!["happiness".into(), "surprise".into()],
                    valence: None,
                    arousal: None,
                },
            ],
        }
    }

    /// Text embeddings on known axes, so the expected scores can be worked out by hand.
    fn axes(texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
        Ok(texts
            .iter()
            .map(|t| match t.as_str() {
                "x" => vec![2.0, 0.0, 0.0],
                "x2" => vec![4.0, 0.0, 0.0],
                "y" => vec![0.0, 1.0, 0.0],
                "z" => vec![0.0, 0.0, 5.0],
                _ => vec![1.0, 1.0, 1.0],
            })
            .collect())
    }

    #[test]
    fn scores_follow_cosine_and_compound_is_the_mean_of_raw_components() {
        let r = Readout::build(&config(), 100.0, axes).unwrap();
        assert_eq!(r.names().len(), 4);
        // Happiness' raw embedding is (3,0,0), surprise's (0,1,0): the compound's raw mean
        // (1.5, 0.5, 0) is dominated by happiness because it is not normalised first.
        let compound = &r.classes[9..12];
        let expect = normalised(&[1.5, 0.5, 0.0]);
        for (a, b) in compound.iter().zip(&expect) {
            assert!((a - b).abs() < 1e-6);
        }
        let a = r.read(&[0.0, 0.0, 3.0]);
        assert_eq!(Readout::top(&a), 2);
        assert!((a.scores.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        assert!((a.valence - -0.6).abs() < 1e-3 && (a.arousal - -0.5).abs() < 1e-3);
        // Compound coordinates default to the components' mean.
        let b = r.read(&expect);
        assert_eq!(Readout::top(&b), 3);
        assert!((b.valence - 0.7).abs() < 0.05, "{}", b.valence);
    }

    #[test]
    fn bad_embeddings_give_uniform_scores_not_nan() {
        let r = Readout::build(&config(), 100.0, axes).unwrap();
        for bad in [vec![f32::NAN, 0.0, 0.0], vec![1.0, 2.0]] {
            let a = r.read(&bad);
            assert!(a.scores.iter().all(|s| (*s - 0.25).abs() < 1e-6));
            assert_eq!((a.valence, a.arousal), (0.0, 0.0));
        }
    }

    #[test]
    fn ema_blends_windows() {
        let mut ema = Ema::new(0.5);
        let one = Affect {
            scores: vec![1.0, 0.0],
            valence: 1.0,
            arousal: 0.0,
        };
        let two = Affect {
            scores: vec![0.0, 1.0],
            valence: -1.0,
            arousal: 1.0,
        };
        assert_eq!(ema.update(&one), one);
        let s = ema.update(&two);
        assert_eq!(s.scores, vec![0.5, 0.5]);
        assert_eq!((s.valence, s.arousal), (0.0, 0.5));
    }

    #[test]
    fn a_fitted_head_replaces_the_lexicon() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("heads.safetensors");
        let w: Vec<f32> = vec![0.5, 0.0, 0.0, 0.0, 0.0, -2.0];
        let b: Vec<f32> = vec![0.1, 0.0];
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let (wb, bb) = (bytes(&w), bytes(&b));
        let tensors = [
            (
                "valence_arousal.weight",
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 3], &wb)
                    .unwrap(),
            ),
            (
                "valence_arousal.bias",
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &bb)
                    .unwrap(),
            ),
        ];
        safetensors::serialize_to_file(tensors, None, &path).unwrap();
        let mut cfg = config();
        cfg.heads_file = Some(path);
        let r = Readout::build(&cfg, 100.0, axes).unwrap();
        assert!(r.has_va_head() && !r.has_emotion_head());
        let a = r.read(&[1.0, 0.0, 1.0]);
        assert!((a.valence - 0.6).abs() < 1e-6);
        assert_eq!(a.arousal, -1.0, "clamped");

        cfg.heads_file = Some(dir.path().join("missing.safetensors"));
        assert!(matches!(
            Readout::build(&cfg, 100.0, axes),
            Err(ReadoutError::Heads { .. })
        ));
    }
}
