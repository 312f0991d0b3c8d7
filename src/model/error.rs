use std::path::PathBuf;

/// Errors at the model's edge: files, configs, checkpoints and parity-tool inputs.
/// Model code itself returns `candle_core::Result`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid model config: {source}")]
    ConfigParse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("model config: {key}: {problem}")]
    ConfigInvalid { key: String, problem: String },
    #[error("{path}: cannot read checkpoint: {source}")]
    CheckpointRead {
        path: PathBuf,
        source: candle_core::Error,
    },
    /// The checkpoint lacks keys the config needs, holds them with other shapes, or holds
    /// model keys the config does not use.
    #[error("{path}: checkpoint does not match the model config: {}", describe_problems(.missing, .mis_shaped, .unexpected))]
    CheckpointMismatch {
        path: PathBuf,
        /// Missing keys with the shape the model expects.
        missing: Vec<(String, Vec<usize>)>,
        /// (key, expected shape, shape in the checkpoint).
        mis_shaped: Vec<(String, Vec<usize>, Vec<usize>)>,
        /// Keys in the checkpoint that the model did not read.
        unexpected: Vec<String>,
    },
    /// A parity-tool input is missing or has the wrong dtype or shape.
    #[error("{path}: {problem}")]
    Input { path: PathBuf, problem: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    pub(crate) fn invalid_config(key: &str, problem: impl Into<String>) -> Self {
        Self::ConfigInvalid {
            key: key.to_owned(),
            problem: problem.into(),
        }
    }

    /// True when the fault is in what the user gave (files, config, inputs), not at run time:
    /// the CLI exits with 2 for these.
    pub fn is_usage(&self) -> bool {
        !matches!(self, Self::Candle(_))
    }
}

const LISTED: usize = 20;

fn describe_problems(
    missing: &[(String, Vec<usize>)],
    mis_shaped: &[(String, Vec<usize>, Vec<usize>)],
    unexpected: &[String],
) -> String {
    let mut parts = Vec::new();
    if !missing.is_empty() {
        let mut s = format!("{} missing key(s): ", missing.len());
        let names: Vec<String> = missing
            .iter()
            .take(LISTED)
            .map(|(k, shape)| format!("{k} {shape:?}"))
            .collect();
        s.push_str(&names.join(", "));
        if missing.len() > LISTED {
            s.push_str(&format!(", ... and {} more", missing.len() - LISTED));
        }
        parts.push(s);
    }
    if !mis_shaped.is_empty() {
        let mut s = format!("{} mis-shaped key(s): ", mis_shaped.len());
        let names: Vec<String> = mis_shaped
            .iter()
            .take(LISTED)
            .map(|(k, want, got)| format!("{k} expected {want:?} got {got:?}"))
            .collect();
        s.push_str(&names.join(", "));
        if mis_shaped.len() > LISTED {
            s.push_str(&format!(", ... and {} more", mis_shaped.len() - LISTED));
        }
        parts.push(s);
    }
    if !unexpected.is_empty() {
        let mut s = format!("{} unexpected key(s): ", unexpected.len());
        s.push_str(
            &unexpected
                .iter()
                .take(LISTED)
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
        );
        if unexpected.len() > LISTED {
            s.push_str(&format!(", ... and {} more", unexpected.len() - LISTED));
        }
        parts.push(s);
    }
    parts.join("; ")
}
