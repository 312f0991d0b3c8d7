//! The labelled windows, each on the training or the validation side of the split.

use super::linalg::Matrix;

/// One labelled window with its embedding.
#[derive(Debug, Clone)]
pub struct Example {
    pub sample: String,
    pub camera: String,
    pub track_id: u64,
    /// Raw video embedding.
    pub embedding: Vec<f32>,
    pub emotion: Option<String>,
    /// Valence and arousal.
    pub va: Option<[f64; 2]>,
}

/// Examples with embeddings of `dim` values and their side of the split.
pub struct Sides<'a> {
    pub examples: &'a [Example],
    pub dim: usize,
    /// `is_val[i]`: example `i` is on the validation side.
    is_val: Vec<bool>,
}

impl<'a> Sides<'a> {
    pub fn new(examples: &'a [Example], dim: usize, is_val: Vec<bool>) -> Self {
        Self {
            examples,
            dim,
            is_val,
        }
    }

    /// Indices of the examples that `keep` accepts, on side `val` (validation, training, or
    /// `None`: both).
    pub fn rows(&self, keep: &dyn Fn(&Example) -> bool, val: Option<bool>) -> Vec<usize> {
        (0..self.examples.len())
            .filter(|&i| keep(&self.examples[i]) && val.is_none_or(|v| self.is_val[i] == v))
            .collect()
    }

    /// The embeddings of the examples `idx`, one row each.
    pub fn matrix(&self, idx: &[usize]) -> Matrix {
        let data: Vec<Vec<f64>> = idx
            .iter()
            .map(|&i| {
                self.examples[i]
                    .embedding
                    .iter()
                    .map(|&v| f64::from(v))
                    .collect()
            })
            .collect();
        let refs: Vec<&[f64]> = data.iter().map(Vec::as_slice).collect();
        Matrix::from_rows(&refs, self.dim)
    }
}
