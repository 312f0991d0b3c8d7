//! The end of an adaptation run: the adapted model as a servable checkpoint, and a report
//! (JSON and a PNG of the curves).
//!
//! Output folder:
//! - `adapted.safetensors`, `config.json`: `[model] weights` / `[model] config` of the daemon
//!   (written under temporary names and renamed: a reloading daemon never reads half a file);
//! - `report.json`, `report.png`;
//! - `checkpoint/`: the last checkpoint (for `--resume`).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::model::Adapted;
use super::pacl;
use super::settings::{Objective, Settings};
use super::trainer::{Evaluation, Material, RunState, StepRecord};
use crate::model::EmotionClipConfig;
use crate::train::atomic::write_atomic;
use crate::train::checkpoint::write_json;
use crate::train::params::export_servable;
use crate::train::plot::{self, Panel, Series};

/// `report.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub format: String,
    pub affectd: String,
    /// The model adapted from: the one `[model]` serves.
    pub served: ModelInfo,
    pub adapted: ModelInfo,
    pub data: DataInfo,
    pub settings: Settings,
    /// How the sentiment distributions of SNCE and PACL were obtained.
    pub sentiment: String,
    /// SNCE: how strongly the texts' sentiments reweight each other.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub snce: Option<SnceInfo>,
    /// PACL's partition and pseudo-labels of the training pairs.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pacl: Option<pacl::Summary>,
    pub steps: usize,
    /// Trained scalars and tensors.
    pub trainable_params: usize,
    pub trainable_tensors: usize,
    /// Training windows per second (forward, backward and update; evaluation excluded).
    pub train_windows_per_s: f64,
    pub train_seconds: f64,
    /// Held-out evaluation of the served model and of the result.
    pub initial: Evaluation,
    #[serde(rename = "final")]
    pub result: Evaluation,
    pub evals: Vec<Evaluation>,
    pub history: Vec<StepRecord>,
}

/// The spread of `KL(s_i || s_j)` over ordered pairs of different texts of the run, and
/// the share of those pairs whose negative is all but removed (`w = beta / KL > 4.6`: its
/// term weighs under 1% of what InfoNCE gives it). Choose `--beta` from these.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SnceInfo {
    pub kl: [f64; 5],
    pub suppressed: f64,
}

impl SnceInfo {
    pub fn of(log_s: &[&[f64]], beta: f64) -> Self {
        let mut kls = Vec::new();
        for (i, a) in log_s.iter().enumerate() {
            for (j, b) in log_s.iter().enumerate() {
                if i != j {
                    kls.push(super::sentiment::kl(a, b));
                }
            }
        }
        let suppressed = kls.iter().filter(|k| beta / k.max(1e-12) > 4.6).count();
        Self {
            suppressed: suppressed as f64 / kls.len().max(1) as f64,
            kl: crate::train::adapt::pacl::quantiles(kls),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelInfo {
    pub weights: String,
    pub sha256: String,
    pub config: EmotionClipConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataInfo {
    pub dir: String,
    pub pairs_file: String,
    /// Windows with text, pairs and distinct texts.
    pub windows: usize,
    pub pairs: usize,
    pub texts: usize,
    pub train: usize,
    pub held_out: usize,
    /// Distinct texts of the held-out windows: the retrieval candidates.
    pub held_out_texts: usize,
}

/// What the end of a run hands to the report.
pub(crate) struct RunEnd<'a> {
    pub out: &'a Path,
    pub data: &'a Path,
    pub pairs: &'a Path,
    pub settings: &'a Settings,
    pub served: &'a crate::train::served::Served,
    pub material: &'a Material<'a>,
    pub adapted: &'a Adapted,
    pub state: &'a RunState,
}

/// What `report.json` says of the sentiment source.
pub const SENTIMENT_SOURCE: &str = "zero-shot read-out of the frozen text tower: softmax over the \
     [readout] classes of logit_scale * cos(text, class descriptions); videos: the same \
     classifier on the served model's video embedding";

/// Exports the adapted model, checks it loads, and writes the report.
pub(crate) fn finish(end: &RunEnd) -> anyhow::Result<Report> {
    let cfg = end.served.model.config();
    let (weights, _served) = export_servable(
        end.out,
        "adapted.safetensors",
        &end.adapted.params,
        |_| true,
        cfg,
        end.served.model.device(),
    )?;
    let (m, state) = (end.material, end.state);
    let held_out_texts = m
        .val
        .iter()
        .flat_map(|&w| m.window_texts[w].iter())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let report = Report {
        format: "affectd-adapt-report/1".into(),
        affectd: env!("CARGO_PKG_VERSION").into(),
        served: ModelInfo {
            weights: end.served.weights.display().to_string(),
            sha256: end.served.sha256.clone(),
            config: cfg.clone(),
        },
        adapted: ModelInfo {
            weights: weights.display().to_string(),
            sha256: crate::digest::sha256_file(&weights)?,
            config: cfg.clone(),
        },
        data: DataInfo {
            dir: end.data.display().to_string(),
            pairs_file: end.pairs.display().to_string(),
            windows: m.source.len(),
            pairs: m.window_texts.iter().map(Vec::len).sum(),
            texts: m
                .window_texts
                .iter()
                .flatten()
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            train: m.train.len(),
            held_out: m.val.len(),
            held_out_texts,
        },
        settings: end.settings.clone(),
        sentiment: SENTIMENT_SOURCE.into(),
        snce: match end.settings.objective {
            Objective::Snce { beta } => Some(snce_info(m, beta)),
            _ => None,
        },
        pacl: m.pacl.as_ref().map(|p| p.summary.clone()),
        steps: state.step,
        trainable_params: end.adapted.params.trainable_count(),
        trainable_tensors: end.adapted.params.trainable.len(),
        train_windows_per_s: state.history.iter().map(|r| r.pairs).sum::<usize>() as f64
            / state.train_seconds.max(1e-9),
        train_seconds: state.train_seconds,
        initial: state.evals.first().copied().unwrap_or_default(),
        result: state.evals.last().copied().unwrap_or_default(),
        evals: state.evals.clone(),
        history: state.history.clone(),
    };
    write_json(&end.out.join("report.json"), &report)?;
    write_atomic(&end.out.join("report.png"), |tmp| plot_report(tmp, &report))?;
    Ok(report)
}

/// [`SnceInfo`] over the texts of the run's windows.
pub(crate) fn snce_info(m: &Material, beta: f64) -> SnceInfo {
    let texts: std::collections::BTreeSet<usize> =
        m.window_texts.iter().flatten().copied().collect();
    let log_s: Vec<&[f64]> = texts
        .iter()
        .map(|&t| m.text_sentiment[t].as_slice())
        .collect();
    SnceInfo::of(&log_s, beta)
}

/// The training loss, held-out retrieval and agreement with the served model over the steps.
fn plot_report(path: &Path, report: &Report) -> anyhow::Result<()> {
    let eval = |f: fn(&Evaluation) -> f32| -> Vec<(f64, f64)> {
        report
            .evals
            .iter()
            .map(|e| (e.step as f64, f64::from(f(e))))
            .collect()
    };
    let recall = |label, colour, points| Series {
        label,
        colour,
        points,
    };
    let panels = [
        Panel {
            title: "loss",
            series: vec![Series::train_loss(
                report.history.iter().map(|r| (r.step, r.loss)),
            )],
            y_range: None,
        },
        Panel {
            title: "held-out video to text",
            series: vec![
                recall("r1", [31, 119, 180], eval(|e| e.retrieval.r1)),
                recall("r5", [255, 127, 14], eval(|e| e.retrieval.r5)),
                recall(
                    "chance r1",
                    [150, 150, 150],
                    eval(|e| e.retrieval.chance_r1),
                ),
            ],
            y_range: Some((0.0, 1.0)),
        },
        Panel::agreement(
            "agreement with served",
            eval(|e| e.agreement.top1_agreement),
            eval(|e| e.agreement.embedding_cosine),
        ),
    ];
    plot::save(path, &panels, report.steps as f64)?;
    Ok(())
}
