//! The identity of a served model, written into every result.

use serde::Serialize;

/// Which model produced a result: a name and the weights' digest, or `untrained`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelId {
    pub name: String,
    pub weights: String,
}

impl ModelId {
    /// `sha256` is the hex digest of the weights file; `None` for seeded random weights.
    pub fn new(name: impl Into<String>, sha256: Option<&str>) -> Self {
        Self {
            name: name.into(),
            weights: match sha256 {
                Some(hex) => format!("sha256:{}", &hex[..hex.len().min(16)]),
                None => "untrained".to_owned(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_id_carries_a_short_digest() {
        let id = ModelId::new("emotionclip-vitb32", Some(&"ab".repeat(32)));
        assert_eq!(id.weights, format!("sha256:{}", "ab".repeat(8)));
    }
}
