//! Where a message's numbers come from (written into every person message).

use serde::Serialize;

/// Where a message's numbers come from: zero-shot scores or a fitted emotion head;
/// valence/arousal from the lexicon (class coordinates weighted by scores) or a fitted head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ReadoutSource {
    pub scores: ScoresSource,
    pub valence_arousal: ValenceArousalSource,
}

/// `readout.scores`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScoresSource {
    /// Cosine similarity to the configured classes' text embeddings.
    ZeroShot,
    /// The emotion head of `[readout] heads_file`; the classes are the head's.
    Head,
}

/// `readout.valence_arousal`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ValenceArousalSource {
    /// The classes' circumplex coordinates weighted by their probabilities.
    Lexicon,
    /// The valence/arousal head of `[readout] heads_file`.
    Head,
}
