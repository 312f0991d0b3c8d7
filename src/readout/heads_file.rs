//! The heads file written by `affectd train heads` and read by the read-out (safetensors).
//!
//! Tensors (f32), each section optional but at least one present:
//! - `valence_arousal.weight` [2, E], `valence_arousal.bias` [2]: valence row, arousal row;
//! - `emotion.weight` [K, E], `emotion.bias` [K]: class logits, K >= 2.
//!
//! Metadata: `format` = `affectd.heads/1`; `emotion.classes` = the K class names as a JSON
//! array (with the emotion section); `model.name` / `model.weights` = the encoder the heads
//! were fitted on (informational).
//!
//! Both heads apply to the raw video embedding as the encoder returns it (not
//! L2-normalised): `W x + b`.

use std::collections::HashMap;
use std::path::Path;

use safetensors::Dtype;
use safetensors::tensor::TensorView;

/// `format` metadata value.
pub const HEADS_FORMAT: &str = "affectd.heads/1";

/// A linear valence/arousal head.
#[derive(Debug, Clone, PartialEq)]
pub struct VaHead {
    /// Row-major [2, E]: valence row, arousal row.
    pub weight: Vec<f32>,
    pub bias: [f32; 2],
}

/// A linear emotion classifier; scores are the softmax of its logits.
#[derive(Debug, Clone, PartialEq)]
pub struct EmotionHead {
    pub classes: Vec<String>,
    /// Row-major [K, E].
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// The contents of a heads file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HeadsFile {
    pub valence_arousal: Option<VaHead>,
    pub emotion: Option<EmotionHead>,
    /// Name of the encoder the heads were fitted on.
    pub model_name: Option<String>,
    /// Its weights identity as published (`sha256:...` or `untrained`).
    pub model_weights: Option<String>,
}

impl HeadsFile {
    /// Reads and checks a heads file for embeddings of width `dim`. The error is a sentence
    /// naming the tensor or key at fault.
    pub fn read(path: &Path, dim: usize) -> Result<HeadsFile, String> {
        let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| e.to_string())?;
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| e.to_string())?;
        let meta = header.metadata().clone().unwrap_or_default();
        let names = st.names();
        let has = |name: &str| names.contains(&name);
        let read = |name: &str, shape: &[usize]| -> Result<Vec<f32>, String> {
            let t = st
                .tensor(name)
                .map_err(|_| format!("missing tensor `{name}`"))?;
            if t.dtype() != Dtype::F32 || t.shape() != shape {
                return Err(format!(
                    "`{name}` is {:?} {:?}, expected F32 {shape:?}",
                    t.dtype(),
                    t.shape()
                ));
            }
            let v: Vec<f32> = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            if v.iter().any(|x| !x.is_finite()) {
                return Err(format!("`{name}` has non-finite values"));
            }
            Ok(v)
        };
        let valence_arousal = if has("valence_arousal.weight") || has("valence_arousal.bias") {
            let weight = read("valence_arousal.weight", &[2, dim])?;
            let bias = read("valence_arousal.bias", &[2])?;
            Some(VaHead {
                weight,
                bias: [bias[0], bias[1]],
            })
        } else {
            None
        };
        let emotion = if has("emotion.weight") || has("emotion.bias") {
            let classes: Vec<String> = meta
                .get("emotion.classes")
                .ok_or("metadata `emotion.classes` (the class names) is missing")
                .and_then(|s| {
                    serde_json::from_str(s)
                        .map_err(|_| "metadata `emotion.classes` is not a JSON array of names")
                })?;
            let k = classes.len();
            if k < 2 {
                return Err("metadata `emotion.classes` needs at least two classes".into());
            }
            for (i, c) in classes.iter().enumerate() {
                if c.trim().is_empty() {
                    return Err(format!("metadata `emotion.classes`[{i}] is empty"));
                }
                if classes[..i].contains(c) {
                    return Err(format!("metadata `emotion.classes`: \"{c}\" appears twice"));
                }
            }
            Some(EmotionHead {
                weight: read("emotion.weight", &[k, dim])?,
                bias: read("emotion.bias", &[k])?,
                classes,
            })
        } else {
            None
        };
        if valence_arousal.is_none() && emotion.is_none() {
            return Err("has neither `valence_arousal.*` nor `emotion.*` tensors".into());
        }
        Ok(HeadsFile {
            valence_arousal,
            emotion,
            model_name: meta.get("model.name").cloned(),
            model_weights: meta.get("model.weights").cloned(),
        })
    }

    /// Writes the file (f32 little-endian tensors and the metadata above).
    pub fn write(&self, path: &Path) -> Result<(), String> {
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        let mut meta = HashMap::from([("format".to_owned(), HEADS_FORMAT.to_owned())]);
        if let Some(va) = &self.valence_arousal {
            let dim = va.weight.len() / 2;
            owned.push((
                "valence_arousal.weight".into(),
                vec![2, dim],
                bytes(&va.weight),
            ));
            owned.push(("valence_arousal.bias".into(), vec![2], bytes(&va.bias)));
        }
        if let Some(e) = &self.emotion {
            let k = e.classes.len();
            let dim = e.weight.len() / k.max(1);
            owned.push(("emotion.weight".into(), vec![k, dim], bytes(&e.weight)));
            owned.push(("emotion.bias".into(), vec![k], bytes(&e.bias)));
            meta.insert(
                "emotion.classes".into(),
                serde_json::to_string(&e.classes).map_err(|e| e.to_string())?,
            );
        }
        for (key, value) in [
            ("model.name", &self.model_name),
            ("model.weights", &self.model_weights),
        ] {
            if let Some(v) = value {
                meta.insert(key.into(), v.clone());
            }
        }
        let views = owned
            .iter()
            .map(|(name, shape, data)| {
                TensorView::new(Dtype::F32, shape.clone(), data)
                    .map(|v| (name.as_str(), v))
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, String>>()?;
        safetensors::serialize_to_file(views, Some(meta), path).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_bad_sections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("heads.safetensors");
        let file = HeadsFile {
            valence_arousal: None,
            emotion: Some(EmotionHead {
                classes: vec!["calm".into(), "angry".into()],
                weight: vec![1.0, 0.0, 0.0, 1.0],
                bias: vec![0.0, -1.0],
            }),
            model_name: Some("emotionclip-tiny".into()),
            model_weights: Some("untrained".into()),
        };
        file.write(&path).unwrap();
        assert_eq!(HeadsFile::read(&path, 2).unwrap(), file);
        let e = HeadsFile::read(&path, 3).unwrap_err();
        assert!(e.contains("`emotion.weight`"), "{e}");

        let empty = HeadsFile::default();
        empty.write(&path).unwrap();
        assert!(HeadsFile::read(&path, 2).unwrap_err().contains("neither"));
    }
}
