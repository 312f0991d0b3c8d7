//! The student: a smaller EmotionCLIP video encoder in the teacher's embedding space.
//!
//! A student is an ordinary EmotionCLIP checkpoint (same key names, a smaller config), so the
//! daemon serves it like the teacher. It keeps the subject token (the frame encoder is the
//! same subject-aware ViT) and the teacher's text tower and `logit_scale`, frozen: its video
//! embeddings are read against the same class text embeddings.
//!
//! Initialisation: every tensor whose teacher counterpart has the same shape is copied from
//! it. Student block `j` of `m` takes teacher block `(j + 1) * n / m - 1` of `n`, i.e. every
//! other block ending with the last for `vitb32-l6`; tensors with no same-shaped counterpart
//! (a narrower student) are drawn from the model's init hints with the run's seed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Result, Tensor};
use candle_nn::Init;

use crate::model::{EmotionClip, EmotionClipConfig};
use crate::train::params::{self, Layout, Params};

/// The named student shapes.
pub const PRESETS: [&str; 2] = ["vitb32-l6", "vits32"];

/// Temporal layers of every preset.
const STUDENT_TEMPORAL_LAYERS: usize = 2;

/// The student config for `preset` (a name in `PRESETS`, or a path to a JSON config in the
/// official layout), derived from the teacher's. Presets are named for the ViT-B/32 teacher;
/// on another teacher they scale the same way:
/// - `vitb32-l6`: half the frame-encoder blocks (6 of 12), 2 temporal layers;
/// - `vits32`: half the frame-encoder width (384 of 768, 64-wide heads), all blocks,
///   2 temporal layers.
pub fn student_config(
    teacher: &EmotionClipConfig,
    preset: &str,
) -> anyhow::Result<EmotionClipConfig> {
    let mut cfg = teacher.clone();
    cfg.temporal.layers = teacher.temporal.layers.min(STUDENT_TEMPORAL_LAYERS);
    match preset {
        "vitb32-l6" => cfg.vision_cfg.layers = (teacher.vision_cfg.layers / 2).max(1),
        "vits32" => {
            let v = &mut cfg.vision_cfg;
            v.width = (teacher.vision_cfg.width / 2).max(teacher.vision_cfg.head_width);
            v.width -= v.width % v.head_width;
        }
        path if path.ends_with(".json") => {
            cfg = EmotionClipConfig::from_json_file(Path::new(path))?;
        }
        other => anyhow::bail!(
            "--student {other}: not a preset ({}) nor a .json model config",
            PRESETS.join(", ")
        ),
    }
    if cfg.embed_dim != teacher.embed_dim || cfg.text_cfg != teacher.text_cfg {
        anyhow::bail!(
            "--student {preset}: a student keeps the teacher's embed_dim ({}) and text tower, \
             since it is read against the teacher's class text embeddings",
            teacher.embed_dim
        )
    }
    if cfg.vision_cfg.image_size != teacher.vision_cfg.image_size
        || cfg.temporal.video_len != teacher.temporal.video_len
    {
        anyhow::bail!(
            "--student {preset}: a student takes the teacher's inputs ({} px, {} frames)",
            teacher.vision_cfg.image_size,
            teacher.temporal.video_len
        )
    }
    cfg.validate()?;
    Ok(cfg)
}

/// The teacher tensor a student tensor starts from (the same name with the block index
/// mapped).
fn teacher_name(name: &str, student: &EmotionClipConfig, teacher: &EmotionClipConfig) -> String {
    let stacks = [
        (
            "backbone.visual.transformer.resblocks.",
            student.vision_cfg.layers,
            teacher.vision_cfg.layers,
        ),
        (
            "visual_head.fusion_layer.layers.",
            student.temporal.layers,
            teacher.temporal.layers,
        ),
    ];
    for (prefix, m, n) in stacks {
        if let Some(rest) = name.strip_prefix(prefix)
            && let Some((index, tail)) = rest.split_once('.')
            && let Ok(j) = index.parse::<usize>()
        {
            let i = ((j + 1) * n / m.max(1)).max(1) - 1;
            return format!("{prefix}{i}.{tail}");
        }
    }
    name.to_owned()
}

/// Tensors the student shares with the teacher and never trains: the text tower and the
/// similarity scale.
pub fn is_frozen(name: &str) -> bool {
    name == "logit_scale"
        || (name.starts_with("backbone.") && !name.starts_with("backbone.visual."))
}

/// Parameters of a run besides the model's own (the feature-hint projection).
pub const DISTILL_PREFIX: &str = "distill.";

/// Whether `name` is a tensor of the exported student (not of the run's own).
pub fn is_model(name: &str) -> bool {
    !name.starts_with(DISTILL_PREFIX)
}

/// Student tensors start from the teacher's of the mapped name; the text tower and the
/// similarity scale are shared.
struct StudentLayout {
    student: EmotionClipConfig,
    teacher: EmotionClipConfig,
}

impl Layout for StudentLayout {
    fn source_name(&self, name: &str) -> String {
        teacher_name(name, &self.student, &self.teacher)
    }

    fn is_frozen(&self, name: &str) -> bool {
        is_frozen(name)
    }
}

/// A student model whose parameters are `Var`s, with the feature-hint projection when its
/// frame-encoder width differs from the teacher's.
pub struct Student {
    pub model: EmotionClip,
    /// [student width, teacher width]; `None` when the widths agree.
    pub hint_proj: Option<Tensor>,
    pub params: Params,
    pub config: EmotionClipConfig,
}

impl Student {
    /// Builds the student of `cfg` from the teacher's tensors (see the module docs).
    pub fn init(
        cfg: &EmotionClipConfig,
        teacher_cfg: &EmotionClipConfig,
        teacher: Arc<BTreeMap<String, Tensor>>,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let layout = StudentLayout {
            student: cfg.clone(),
            teacher: teacher_cfg.clone(),
        };
        let (sw, tw) = (cfg.vision_cfg.width, teacher_cfg.vision_cfg.width);
        let ((model, hint_proj), params) =
            params::build(teacher, Box::new(layout), seed, device, |vb| {
                let model = EmotionClip::new(vb.clone(), cfg)?;
                let hint_proj = (sw != tw)
                    .then(|| {
                        vb.pp("distill").get_with_hints(
                            (sw, tw),
                            "hint_proj",
                            Init::Randn {
                                mean: 0.,
                                stdev: (sw as f64).powf(-0.5),
                            },
                        )
                    })
                    .transpose()?;
                Ok((model, hint_proj))
            })?;
        Ok(Self {
            model,
            hint_proj,
            params,
            config: cfg.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_follow_the_teacher() {
        let t = EmotionClipConfig::vit_b32();
        let l6 = student_config(&t, "vitb32-l6").unwrap();
        assert_eq!((l6.vision_cfg.layers, l6.vision_cfg.width), (6, 768));
        assert_eq!(l6.temporal.layers, 2);
        let s = student_config(&t, "vits32").unwrap();
        assert_eq!((s.vision_cfg.layers, s.vision_cfg.width), (12, 384));
        assert_eq!(s.vision_cfg.heads(), 6);
        let e = student_config(&t, "resnet").unwrap_err().to_string();
        assert!(e.contains("vitb32-l6"), "{e}");
    }

    #[test]
    fn blocks_map_to_every_other_teacher_block_ending_with_the_last() {
        let t = EmotionClipConfig::vit_b32();
        let s = student_config(&t, "vitb32-l6").unwrap();
        let mapped: Vec<String> = (0..6)
            .map(|j| {
                teacher_name(
                    &format!("backbone.visual.transformer.resblocks.{j}.ln_1.weight"),
                    &s,
                    &t,
                )
            })
            .collect();
        let want: Vec<String> = [1, 3, 5, 7, 9, 11]
            .iter()
            .map(|i| format!("backbone.visual.transformer.resblocks.{i}.ln_1.weight"))
            .collect();
        assert_eq!(mapped, want);
        assert_eq!(
            teacher_name("visual_head.fusion_layer.layers.0.norm1.bias", &s, &t),
            "visual_head.fusion_layer.layers.2.norm1.bias"
        );
        assert_eq!(
            teacher_name("visual_head.fusion_layer.layers.1.norm1.bias", &s, &t),
            "visual_head.fusion_layer.layers.5.norm1.bias"
        );
        assert_eq!(teacher_name("logit_scale", &s, &t), "logit_scale");
    }
}
