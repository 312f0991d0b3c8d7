//! The model being adapted, one optimiser step at a time on batches of (window, text)
//! pairs, and its held-out evaluation: video -> text retrieval and agreement with the
//! served model's read-out.

use std::collections::BTreeSet;

use anyhow::bail;
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::loss::{self, PaclRow, Partition};
use super::model::Adapted;
use super::pacl;
use super::retrieval::{self, Retrieval};
use super::settings::{Objective, Settings};
use crate::readout::Readout;
use crate::train::cache::Targets;
use crate::train::checkpoint;
use crate::train::data::{WindowSource, batch_indices, hash, load_windows};
use crate::train::optim::AdamW;
use crate::train::served::Served;
use crate::train::zero_shot::{self, AgreementSum, cosine};

/// One training step's record.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct StepRecord {
    pub step: usize,
    pub lr: f64,
    pub loss: f32,
    /// Pairs in the batch (a window drawn twice in one batch counts once).
    pub pairs: usize,
}

/// The held-out evaluation after `step` steps.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Evaluation {
    pub step: usize,
    /// Video -> text retrieval among the held-out windows' texts.
    pub retrieval: Retrieval,
    /// The read-out of the model against the served model's, on the same windows.
    pub agreement: zero_shot::Agreement,
    /// Distinct top emotions over the held-out windows, of the model and of the served
    /// model: a collapsed model answers one class for everyone.
    pub distinct_top1: usize,
    pub served_distinct_top1: usize,
    /// Mean cosine between the held-out video embeddings of different windows (1:
    /// collapsed), of the model and of the served model.
    pub mean_pairwise_cosine: f32,
    pub served_mean_pairwise_cosine: f32,
}

/// The progress of an adaptation run.
pub type RunState = checkpoint::RunState<StepRecord, Evaluation>;

/// PACL's preparation, as the steps use it.
pub struct PaclPlan {
    /// Partition of (window, text) by window: `partitions[w][k]` is that of the window's
    /// k-th text.
    pub partitions: Vec<Vec<Partition>>,
    pub factual: Vec<usize>,
    pub emotional: Vec<usize>,
    /// The phase whose partitions train in each phase of the schedule: itself, or a wider
    /// one when it has fewer than two windows to contrast.
    pub effective: [usize; 3],
    pub summary: pacl::Summary,
}

/// What a run learns from, fixed for its duration.
pub struct Material<'a> {
    pub served: &'a Served,
    pub source: &'a dyn WindowSource,
    /// Indices into the text table of each window's texts.
    pub window_texts: Vec<Vec<usize>>,
    /// The frozen text tower's embeddings of the texts, [C, E].
    pub text_embeddings: Tensor,
    pub text_rows: Vec<Vec<f32>>,
    /// Each text's sentiment, log-probabilities over the read-out's classes.
    pub text_sentiment: Vec<Vec<f64>>,
    /// The served model's outputs of each window.
    pub reference: Vec<Targets>,
    pub reference_rows: Vec<Vec<f32>>,
    pub train: Vec<usize>,
    pub val: Vec<usize>,
    pub pacl: Option<PaclPlan>,
}

impl Material<'_> {
    /// The texts of window `w` that train in `phase`.
    fn texts(&self, w: usize, phase: usize) -> Vec<usize> {
        match &self.pacl {
            None => self.window_texts[w].clone(),
            Some(plan) => self.window_texts[w]
                .iter()
                .zip(&plan.partitions[w])
                .filter(|(_, p)| pacl::allowed(plan.effective[phase], **p))
                .map(|(t, _)| *t)
                .collect(),
        }
    }

    /// The training windows of `phase` (every one outside PACL).
    fn pool(&self, phase: usize) -> Vec<usize> {
        match self.pacl {
            None => self.train.clone(),
            Some(_) => self
                .train
                .iter()
                .copied()
                .filter(|&w| !self.texts(w, phase).is_empty())
                .collect(),
        }
    }
}

/// The model being adapted and its optimiser.
pub struct Trainer<'a> {
    pub adapted: Adapted,
    pub opt: AdamW,
    m: &'a Material<'a>,
    settings: &'a Settings,
    /// The training windows of each phase.
    pools: [Vec<usize>; 3],
}

fn rows(t: &Tensor) -> candle_core::Result<Vec<Vec<f32>>> {
    t.to_dtype(DType::F32)?.to_vec2::<f32>()
}

impl<'a> Trainer<'a> {
    pub fn new(
        adapted: Adapted,
        m: &'a Material<'a>,
        settings: &'a Settings,
    ) -> anyhow::Result<Self> {
        let opt = AdamW::new(adapted.params.vars(), settings.adamw)?;
        let pools = [m.pool(0), m.pool(1), m.pool(2)];
        Ok(Self {
            adapted,
            opt,
            m,
            settings,
            pools,
        })
    }

    /// The windows of the run.
    pub fn source(&self) -> &dyn WindowSource {
        self.m.source
    }

    fn phase(&self, step: usize) -> usize {
        match self.settings.objective {
            Objective::Pacl { .. } => pacl::phase(step, self.settings.steps),
            _ => 2,
        }
    }

    /// The (window, text) pairs of step `step`: windows in the seeded order of
    /// `batch_indices` over the phase's training windows (repeats dropped), each with one
    /// of its texts chosen by a seeded hash of the window id and the step.
    pub fn batch(&self, step: usize) -> (Vec<usize>, Vec<usize>) {
        let phase = self.phase(step);
        let s = self.settings;
        let mut seen = BTreeSet::new();
        let windows: Vec<usize> = batch_indices(&self.pools[phase], step, s.batch, s.seed)
            .into_iter()
            .filter(|w| seen.insert(*w))
            .collect();
        let texts = windows
            .iter()
            .map(|&w| {
                let texts = self.m.texts(w, phase);
                let pick = hash(self.m.source.id(w), s.seed.wrapping_add(step as u64));
                texts[(pick % texts.len() as u64) as usize]
            })
            .collect();
        (windows, texts)
    }

    /// Video embeddings [B, E] of the windows `indices`.
    fn videos(&self, indices: &[usize]) -> anyhow::Result<Tensor> {
        let windows = if self.adapted.needs_pixels() {
            load_windows(self.m.source, indices)?
        } else {
            Vec::new()
        };
        let cached: Vec<&Targets> = indices.iter().map(|&i| &self.m.reference[i]).collect();
        Ok(self.adapted.forward(&windows, &cached)?)
    }

    /// The objective on the pairs (`windows[i]`, `texts[i]`) with video embeddings `video`.
    fn loss(&self, video: &Tensor, windows: &[usize], texts: &[usize]) -> anyhow::Result<Tensor> {
        let ids = Tensor::from_vec(
            texts.iter().map(|&t| t as u32).collect::<Vec<_>>(),
            texts.len(),
            video.device(),
        )?;
        let text = self.m.text_embeddings.index_select(&ids, 0)?;
        let tau = self.settings.temperature;
        Ok(match self.settings.objective {
            Objective::Clip => loss::info_nce(video, &text, tau)?,
            Objective::Snce { beta } => {
                let s: Vec<&[f64]> = texts
                    .iter()
                    .map(|&t| self.m.text_sentiment[t].as_slice())
                    .collect();
                loss::snce(video, &text, &s, beta, tau)?
            }
            Objective::Pacl { .. } => {
                let Some(plan) = &self.m.pacl else {
                    bail!("PACL without its preparation")
                };
                let rows: Vec<PaclRow> = windows
                    .iter()
                    .zip(texts)
                    .map(|(&w, &t)| {
                        let k = self.m.window_texts[w]
                            .iter()
                            .position(|x| *x == t)
                            .unwrap_or(0);
                        PaclRow {
                            partition: plan.partitions[w][k],
                            factual: plan.factual[w],
                            emotional: plan.emotional[t],
                        }
                    })
                    .collect();
                loss::pacl(video, &text, &rows, tau)?
            }
        })
    }

    /// One optimiser step on the pairs of step `step`.
    pub fn step(&mut self, step: usize) -> anyhow::Result<StepRecord> {
        let (windows, texts) = self.batch(step);
        let video = self.videos(&windows)?;
        let loss = self.loss(&video, &windows, &texts)?;
        let value = loss.to_scalar::<f32>()?;
        if !value.is_finite() {
            bail!("the loss diverged at step {step} ({value}); lower --lr")
        }
        let grads = loss.backward()?;
        let lr = self.settings.schedule.lr(step);
        self.opt.step(&grads, lr)?;
        Ok(StepRecord {
            step,
            lr,
            loss: value,
            pairs: windows.len(),
        })
    }

    /// Retrieval and read-out agreement on the held-out windows after `step` steps.
    pub fn evaluate(&self, step: usize) -> anyhow::Result<Evaluation> {
        let (m, val) = (self.m, &self.m.val);
        let mut model_rows = Vec::with_capacity(val.len());
        for chunk in val.chunks(self.settings.batch.max(1)) {
            model_rows.extend(rows(&self.videos(chunk)?.detach())?);
        }
        let served_rows: Vec<Vec<f32>> = val.iter().map(|&i| m.reference_rows[i].clone()).collect();
        let candidates: Vec<usize> = val
            .iter()
            .flat_map(|&w| m.window_texts[w].iter().copied())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let own: Vec<Vec<usize>> = val
            .iter()
            .map(|&w| {
                m.window_texts[w]
                    .iter()
                    .filter_map(|t| candidates.iter().position(|c| c == t))
                    .collect()
            })
            .collect();
        let texts: Vec<Vec<f32>> = candidates.iter().map(|&t| m.text_rows[t].clone()).collect();
        let mut agreement = AgreementSum::default();
        let readout = &m.served.readout;
        agreement.add(readout, &model_rows, &served_rows);
        Ok(Evaluation {
            step,
            retrieval: retrieval::video_to_text(&model_rows, &texts, &own),
            agreement: agreement.finish(),
            distinct_top1: distinct_top1(readout, &model_rows),
            served_distinct_top1: distinct_top1(readout, &served_rows),
            mean_pairwise_cosine: mean_pairwise_cosine(&model_rows),
            served_mean_pairwise_cosine: mean_pairwise_cosine(&served_rows),
        })
    }
}

/// How many classes are someone's top emotion.
fn distinct_top1(readout: &Readout, rows: &[Vec<f32>]) -> usize {
    rows.iter()
        .map(|r| Readout::top(&readout.read(r)))
        .collect::<BTreeSet<_>>()
        .len()
}

/// Mean cosine over the pairs of different rows (0 with fewer than two).
fn mean_pairwise_cosine(rows: &[Vec<f32>]) -> f32 {
    let (mut sum, mut n) = (0.0f64, 0usize);
    for i in 0..rows.len() {
        for j in i + 1..rows.len() {
            sum += f64::from(cosine(&rows[i], &rows[j]));
            n += 1;
        }
    }
    if n == 0 { 0.0 } else { (sum / n as f64) as f32 }
}
