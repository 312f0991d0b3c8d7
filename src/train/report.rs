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

use anyhow::Context;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::distill::{EvalRecord, Run, RunState, StepRecord};
use super::loss::Agreement;
use super::plot::{self, Panel, Series};
use super::student::Student;
use super::teacher::stack_windows;
use super::write_atomic;
use crate::model::{EmotionClip, EmotionClipConfig};

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
    pub settings: super::distill::Settings,
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

/// Exports the student, measures it against the teacher and writes the report.
pub(crate) fn finish(
    run: &Run,
    student: &Student,
    cfg: &EmotionClipConfig,
    state: &RunState,
    train: &[usize],
    val: &[usize],
) -> anyhow::Result<Report> {
    let out = &run.paths.out;
    let weights = out.join("student.safetensors");
    write_atomic(&weights, |tmp| Ok(student.params.export(tmp)?))?;
    write_atomic(&out.join("config.json"), |tmp| {
        Ok(std::fs::write(tmp, serde_json::to_vec_pretty(cfg)?)?)
    })?;
    // The exported file, loaded as the daemon will load it: proves it serves.
    let served = EmotionClip::load(&weights, cfg, run.device())
        .with_context(|| format!("re-loading the exported {}", weights.display()))?;
    let window = val.first().or(train.first()).copied().unwrap_or(0);
    let (pixels, masks) = stack_windows(&[run.source.load(window)?], run.device())?;
    let min_time = Duration::from_millis(500);
    let teacher_fps = frames_per_s(&run.teacher.model, &pixels, &masks, min_time)?;
    let student_fps = frames_per_s(&served, &pixels, &masks, min_time)?;
    let speed = Speed {
        batch: pixels.dim(0)?,
        teacher_frames_per_s: teacher_fps,
        student_frames_per_s: student_fps,
        speedup: student_fps / teacher_fps.max(1e-9),
    };
    let teacher_cfg = run.teacher.model.config();
    let initial = state.evals.first().map(|e| e.agreement).unwrap_or_default();
    let result = state.evals.last().map(|e| e.agreement).unwrap_or_default();
    let report = Report {
        format: "affectd-distill-report/1".into(),
        affectd: env!("CARGO_PKG_VERSION").into(),
        teacher: TeacherInfo {
            weights: run.teacher.weights.display().to_string(),
            sha256: run.teacher.sha256.clone(),
            config: teacher_cfg.clone(),
            frame_encoder_params: frame_encoder_params(teacher_cfg),
        },
        student: StudentInfo {
            weights: weights.display().to_string(),
            sha256: crate::digest::sha256_file(&weights)?,
            config: cfg.clone(),
            frame_encoder_params: frame_encoder_params(cfg),
            trainable_params: student.params.trainable_count(),
        },
        data: DataInfo {
            dir: run.data.display().to_string(),
            windows: run.source.len(),
            train: train.len(),
            held_out: val.len(),
        },
        settings: run.settings.clone(),
        steps: state.step,
        train_windows_per_s: (state.history.len() * run.settings.batch) as f64
            / state.train_seconds.max(1e-9),
        train_seconds: state.train_seconds,
        initial,
        result,
        speed,
        evals: state.evals.clone(),
        history: state.history.clone(),
    };
    write_atomic(&out.join("report.json"), |tmp| {
        Ok(std::fs::write(tmp, serde_json::to_vec_pretty(&report)?)?)
    })?;
    write_atomic(&out.join("report.png"), |tmp| plot_report(tmp, &report))?;
    Ok(report)
}

/// Loss curves (train, and held-out at each evaluation) and held-out agreement curves.
fn plot_report(path: &Path, report: &Report) -> anyhow::Result<()> {
    // A running mean over ~2% of the run keeps the train curve readable.
    let k = (report.history.len() / 50).max(1);
    let train: Vec<(f64, f64)> = report
        .history
        .chunks(k)
        .map(|c| {
            let mean = c.iter().map(|r| f64::from(r.loss.total)).sum::<f64>() / c.len() as f64;
            ((c[c.len() - 1].step + 1) as f64, mean)
        })
        .collect();
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
                Series {
                    label: "train",
                    colour: [214, 39, 40],
                    points: train,
                },
                Series {
                    label: "held-out",
                    colour: [31, 119, 180],
                    points: eval(|a| a.loss.total),
                },
            ],
            y_range: None,
        },
        Panel {
            title: "held-out agreement",
            series: vec![
                Series {
                    label: "top-1",
                    colour: [44, 160, 44],
                    points: eval(|a| a.top1_agreement),
                },
                Series {
                    label: "cosine",
                    colour: [148, 103, 189],
                    points: eval(|a| a.embedding_cosine),
                },
            ],
            y_range: Some((0.0, 1.0)),
        },
    ];
    plot::save(path, &panels, report.steps as f64)?;
    Ok(())
}
