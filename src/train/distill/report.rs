//! The end of a distillation run: the student as a servable checkpoint, its config, the
//! measured speed-up, and a report (JSON and a PNG of the curves).
//!
//! Output folder:
//! - `student.safetensors`, `config.json`: `[model] weights` / `[model] config` of the daemon;
//! - `report.json`, `report.png`;
//! - `checkpoint/`: the last checkpoint (for `--resume`).
//!
//! The student and config are written under temporary names and renamed into place, so a
//! daemon reloading from this folder never reads a half-written file.

use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::Teacher;
use super::checkpoint::{EvalRecord, RunState, StepRecord};
use super::loss::Agreement;
use super::settings::Settings;
use super::student::{self, Student};
use crate::model::preprocess::EncoderCrop;
use crate::model::{EmotionClip, EmotionClipConfig};
use crate::train::atomic::write_atomic;
use crate::train::cache::stack_windows;
use crate::train::checkpoint::write_json;
use crate::train::data::WindowSource;
use crate::train::params::export_servable;
use crate::train::plot::{self, Panel, Series};

/// Frame-encoder throughput of the teacher and the student on the same frames.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Speed {
    /// Frames per forward.
    pub batch: usize,
    pub teacher_frames_per_s: f64,
    pub student_frames_per_s: f64,
    pub speedup: f64,
}

/// `report.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub format: String,
    pub affectd: String,
    pub teacher: TeacherInfo,
    pub student: StudentInfo,
    pub data: DataInfo,
    pub settings: Settings,
    pub steps: usize,
    /// Training windows per second (forward, backward and update; evaluation excluded).
    pub train_windows_per_s: f64,
    pub train_seconds: f64,
    /// Held-out agreement of the untrained (initialised) student and of the result.
    pub initial: Agreement,
    #[serde(rename = "final")]
    pub result: Agreement,
    pub speed: Speed,
    pub evals: Vec<EvalRecord>,
    pub history: Vec<StepRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TeacherInfo {
    pub weights: String,
    pub sha256: String,
    pub config: EmotionClipConfig,
    pub frame_encoder_params: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StudentInfo {
    pub weights: String,
    pub sha256: String,
    pub config: EmotionClipConfig,
    pub frame_encoder_params: usize,
    pub trainable_params: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataInfo {
    pub dir: String,
    pub windows: usize,
    pub train: usize,
    pub held_out: usize,
}

/// Parameters of the frame encoder (ViT) of a config: what decides the per-frame cost.
pub fn frame_encoder_params(cfg: &EmotionClipConfig) -> usize {
    let v = &cfg.vision_cfg;
    let (w, g) = (v.width, v.grid_size());
    let block = 4 * w * w + 4 * w + 2 * w * v.mlp_width() + v.mlp_width() + w + 4 * w;
    3 * v.patch_size * v.patch_size * w
        + w
        + (g * g + 1) * w
        + 4 * w
        + v.layers * block
        + w * cfg.embed_dim
}

/// Frames per second of `model`'s frame encoder on `pixels`/`masks` (best of a few runs
/// after a warm-up, at least `min_time` in all).
fn frames_per_s(
    model: &EmotionClip,
    pixels: &Tensor,
    masks: &Tensor,
    min_time: Duration,
) -> anyhow::Result<f64> {
    let n = pixels.dim(0)?;
    model.encode_frames(pixels, masks)?;
    let (mut best, mut spent, mut runs) = (f64::INFINITY, Duration::ZERO, 0);
    while runs < 3 || (spent < min_time && runs < 50) {
        let t = Instant::now();
        let (features, _) = model.encode_frames(pixels, masks)?;
        features
            .to_dtype(candle_core::DType::F32)?
            .to_vec2::<f32>()?;
        let e = t.elapsed();
        best = best.min(e.as_secs_f64());
        spent += e;
        runs += 1;
    }
    Ok(n as f64 / best.max(1e-9))
}

/// What the end of a run hands to the report.
pub(crate) struct RunEnd<'a> {
    /// The output folder.
    pub out: &'a Path,
    /// Where the data came from.
    pub data: &'a Path,
    pub settings: &'a Settings,
    pub teacher: &'a Teacher,
    pub source: &'a dyn WindowSource,
    pub student: &'a Student,
    pub student_cfg: &'a EmotionClipConfig,
    pub state: &'a RunState,
    /// Indices of the training and held-out windows.
    pub train: &'a [usize],
    pub val: &'a [usize],
}

/// Exports the student, measures it against the teacher and writes the report.
pub(crate) fn finish(end: &RunEnd) -> anyhow::Result<Report> {
    let (weights, served) = export_servable(
        end.out,
        "student.safetensors",
        &end.student.params,
        student::is_model,
        end.student_cfg,
        end.teacher.model.device(),
    )?;
    let window = end.val.first().or(end.train.first()).copied().unwrap_or(0);
    let speed = measure_speed(&end.teacher.model, &served, end.source.load(window)?)?;
    let report = compose(end, &weights, speed)?;
    write_json(&end.out.join("report.json"), &report)?;
    write_atomic(&end.out.join("report.png"), |tmp| plot_report(tmp, &report))?;
    Ok(report)
}

/// Frame-encoder throughput of the teacher and the `served` student on the frames of
/// `window`.
fn measure_speed(
    teacher: &EmotionClip,
    served: &EmotionClip,
    window: Vec<EncoderCrop>,
) -> anyhow::Result<Speed> {
    let (pixels, masks) = stack_windows(&[window], teacher.device())?;
    let min_time = Duration::from_millis(500);
    let teacher_fps = frames_per_s(teacher, &pixels, &masks, min_time)?;
    let student_fps = frames_per_s(served, &pixels, &masks, min_time)?;
    Ok(Speed {
        batch: pixels.dim(0)?,
        teacher_frames_per_s: teacher_fps,
        student_frames_per_s: student_fps,
        speedup: student_fps / teacher_fps.max(1e-9),
    })
}

/// The report of the run that ended with the student at `weights`.
fn compose(end: &RunEnd, weights: &Path, speed: Speed) -> anyhow::Result<Report> {
    let (teacher, state) = (end.teacher, end.state);
    let teacher_cfg = teacher.model.config();
    let initial = state.evals.first().map(|e| e.agreement).unwrap_or_default();
    let result = state.evals.last().map(|e| e.agreement).unwrap_or_default();
    Ok(Report {
        format: "affectd-distill-report/1".into(),
        affectd: env!("CARGO_PKG_VERSION").into(),
        teacher: TeacherInfo {
            weights: teacher.weights.display().to_string(),
            sha256: teacher.sha256.clone(),
            config: teacher_cfg.clone(),
            frame_encoder_params: frame_encoder_params(teacher_cfg),
        },
        student: StudentInfo {
            weights: weights.display().to_string(),
            sha256: crate::digest::sha256_file(weights)?,
            config: end.student_cfg.clone(),
            frame_encoder_params: frame_encoder_params(end.student_cfg),
            trainable_params: end.student.params.trainable_count(),
        },
        data: DataInfo {
            dir: end.data.display().to_string(),
            windows: end.source.len(),
            train: end.train.len(),
            held_out: end.val.len(),
        },
        settings: end.settings.clone(),
        steps: state.step,
        train_windows_per_s: (state.history.len() * end.settings.batch) as f64
            / state.train_seconds.max(1e-9),
        train_seconds: state.train_seconds,
        initial,
        result,
        speed,
        evals: state.evals.clone(),
        history: state.history.clone(),
    })
}

/// Loss curves (train, and held-out at each evaluation) and held-out agreement curves.
fn plot_report(path: &Path, report: &Report) -> anyhow::Result<()> {
    let train = report.history.iter().map(|r| (r.step, r.loss.total));
    let eval = |f: fn(&Agreement) -> f32| -> Vec<(f64, f64)> {
        report
            .evals
            .iter()
            .map(|e| (e.step as f64, f64::from(f(&e.agreement))))
            .collect()
    };
    let panels = [
        Panel {
            title: "loss",
            series: vec![
                Series::train_loss(train),
                Series {
                    label: "held-out",
                    colour: [31, 119, 180],
                    points: eval(|a| a.loss.total),
                },
            ],
            y_range: None,
        },
        Panel::agreement(
            "held-out agreement",
            eval(|a| a.with_teacher.top1_agreement),
            eval(|a| a.with_teacher.embedding_cosine),
        ),
    ];
    plot::save(path, &panels, report.steps as f64)?;
    Ok(())
}
