//! `affectd train adapt`: a run, step by step.
//!
//! The served model's outputs of every window are computed once (cached on disk), the texts
//! once through the frozen text tower; PACL partitions and clusters the training pairs
//! before the first step. AdamW with warm-up and cosine decay then minimises the objective;
//! the held-out windows (other tracks than the training ones) are evaluated before training,
//! every `eval_every` steps and at the end. Checkpoints hold the trainable tensors, the
//! optimiser moments and the curves; the batches are a function of the step, so `--resume`
//! continues bit for bit.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use candle_core::{DType, Tensor};
use tracing::{info, warn};

use super::model::{Adapted, Trainable};
use super::pacl::{self, Inputs, Thresholds};
use super::pairs::PairedWindows;
use super::report::{self, Report};
use super::sentiment;
use super::settings::{Objective, Settings};
use super::trainer::{Evaluation, Material, PaclPlan, RunState, StepRecord, Trainer};
use crate::model::{ClipTokenizer, EmotionClip};
use crate::train::cache::OutputCache;
use crate::train::checkpoint;
use crate::train::data::{Subset, WindowSource, by_share};
use crate::train::served::Served;
pub use crate::train::session::Paths;
use crate::train::session::{self, Cadence, Learner};
use crate::train::zero_shot::ZeroShot;

/// How an adaptation ended.
pub type Outcome = session::Outcome<Report>;

/// A run of adaptation.
pub struct Run<'a> {
    pub settings: Settings,
    pub served: &'a Served,
    pub paired: &'a PairedWindows,
    /// Where the data and the pairs came from, for the report.
    pub data: PathBuf,
    pub pairs: PathBuf,
    pub paths: Paths,
    pub resume: bool,
    pub stop_after: Option<usize>,
    pub progress: bool,
}

/// Text embeddings [N, E] of `texts` by the frozen text tower of `model`, 64 at a time.
pub fn embed_texts(model: &EmotionClip, texts: &[String]) -> candle_core::Result<Tensor> {
    let tokenizer = ClipTokenizer::new();
    let chunks = texts
        .chunks(64)
        .map(|chunk| {
            let tokens = tokenizer.tokenize_batch(chunk, model.device())?;
            model.encode_text(&tokens)?.to_dtype(DType::F32)
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Tensor::cat(&chunks, 0)
}

impl Run<'_> {
    /// Runs (or resumes) the adaptation. A resumed run learns from the windows it started
    /// with (newer captures wait for the next run) as long as they are all still there.
    pub fn execute(&self) -> anyhow::Result<Outcome> {
        let prior: Option<RunState> = checkpoint::read_state(&self.paths.out, self.resume)?;
        let view = Subset::keeping(self.paired, prior.as_ref().map(|p| p.windows.as_slice()));
        let (train, val) = self.split(&view)?;
        let material = self.material(&view, train, val)?;
        let trainable = Trainable {
            layers: self.served.model.config().vision_cfg.layers,
            blocks: self.settings.blocks,
            temporal: self.settings.temporal,
        };
        let adapted = Adapted::new(
            self.served.model.config(),
            std::sync::Arc::clone(&self.served.tensors),
            trainable,
            self.served.model.device(),
        )?;
        let mut trainer = Trainer::new(adapted, &material, &self.settings)?;
        let extra: Vec<String> = material
            .window_texts
            .iter()
            .map(|texts| {
                texts
                    .iter()
                    .map(|&t| self.paired.texts[t].as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .collect();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let fingerprint =
            checkpoint::fingerprint(&self.settings, &self.served.sha256, &view, &extra);
        let mut state = self.start(&mut trainer, prior, fingerprint)?;
        let cadence = Cadence {
            steps: self.settings.steps,
            batch: self.settings.batch,
            eval_every: self.settings.eval_every,
            checkpoint_every: self.settings.checkpoint_every,
            stop_after: self.stop_after,
        };
        let bar = session::bar(self.progress, self.settings.steps as u64, "adapt");
        let mut learner = Adapting {
            trainer: &mut trainer,
        };
        if let Some(step) = session::run(&mut learner, &mut state, &cadence, &self.paths.out, &bar)?
        {
            return Ok(Outcome::Stopped { step });
        }
        let report = report::finish(&report::RunEnd {
            out: &self.paths.out,
            data: &self.data,
            pairs: &self.pairs,
            settings: &self.settings,
            served: self.served,
            material: &material,
            adapted: &trainer.adapted,
            state: &state,
        })?;
        Ok(Outcome::Finished(Box::new(report)))
    }

    /// Checks there is something to learn and splits the windows by track into training
    /// and held-out indices: whole tracks, shuffled by the seed, held out until they hold
    /// `--val-fraction` of the windows.
    fn split(&self, view: &dyn WindowSource) -> anyhow::Result<(Vec<usize>, Vec<usize>)> {
        let settings = &self.settings;
        if view.is_empty() {
            bail!(
                "{}: none of the captured windows has a text in {}",
                self.data.display(),
                self.pairs.display()
            )
        }
        if settings.batch < 2 || settings.steps == 0 {
            bail!("--batch must be at least 2 (a contrastive batch) and --steps positive")
        }
        std::fs::create_dir_all(&self.paths.out)
            .with_context(|| format!("creating {}", self.paths.out.display()))?;
        let groups: Vec<String> = (0..view.len()).map(|i| view.group(i)).collect();
        let held = by_share(&groups, settings.val_fraction, settings.seed)
            .unwrap_or_else(|| vec![false; groups.len()]);
        let (val, train): (Vec<usize>, Vec<usize>) = (0..view.len()).partition(|&i| held[i]);
        if train.len() < 2 {
            bail!(
                "{} of {} windows fell into the training split; a contrastive batch needs two \
                 (lower --val-fraction, or capture more)",
                train.len(),
                view.len()
            )
        }
        if val.is_empty() {
            warn!("no held-out windows (one track only?): retrieval cannot be measured");
        }
        info!(
            windows = view.len(),
            train = train.len(),
            held_out = val.len(),
            "data split by track"
        );
        Ok((train, val))
    }

    /// The served model's outputs and the texts' embeddings and sentiments, and PACL's
    /// preparation.
    fn material<'s>(
        &'s self,
        view: &'s dyn WindowSource,
        train: Vec<usize>,
        val: Vec<usize>,
    ) -> anyhow::Result<Material<'s>> {
        let served = self.served;
        // The served model's outputs of every window, from the cache or computed once.
        let name = format!("model-{}", served.cache_key()?);
        let reference = OutputCache::open(&self.paths.cache, &name)?.all(
            &served.model,
            view,
            self.settings.batch,
            self.progress,
        )?;
        let reference_rows = reference
            .iter()
            .map(|t| t.video.to_vec1::<f32>())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let started = Instant::now();
        let text_embeddings = embed_texts(&served.model, &self.paired.texts)?;
        let zero_shot = ZeroShot::new(&served.readout, served.model.device())?;
        let text_sentiment = sentiment::log_distributions(&zero_shot, &text_embeddings)?;
        info!(
            texts = self.paired.texts.len(),
            seconds = started.elapsed().as_secs_f32(),
            "texts embedded"
        );
        let window_texts: Vec<Vec<usize>> = (0..view.len())
            .map(|i| self.paired.texts_of(view.id(i)).to_vec())
            .collect();
        let mut material = Material {
            served,
            source: view,
            window_texts,
            text_rows: text_embeddings.to_vec2::<f32>()?,
            text_embeddings,
            text_sentiment,
            reference,
            reference_rows,
            train,
            val,
            pacl: None,
        };
        if let Objective::Pacl {
            sigma_factual,
            sigma_emotional,
            clusters,
        } = self.settings.objective
        {
            let thresholds = Thresholds {
                sigma_factual,
                sigma_emotional,
                clusters,
            };
            material.pacl = Some(pacl_plan(
                &material,
                &zero_shot,
                thresholds,
                self.settings.seed,
            )?);
        }
        if let Objective::Snce { beta } = self.settings.objective {
            let info = super::report::snce_info(&material, beta);
            info!(
                kl_median = info.kl[2],
                suppressed = info.suppressed,
                "SNCE: sentiment KL between different texts, and the share of negatives the \
                 reweighting all but removes"
            );
            if info.suppressed > 0.5 {
                warn!(
                    beta,
                    suppressed = info.suppressed,
                    "--beta removes most negatives (the paper: too large a beta hinders \
                     learning); consider one nearer the median KL"
                );
            }
        }
        Ok(material)
    }

    /// Where training starts: the checkpoint `prior` when it is of this run, else step 0
    /// with the served model's held-out evaluation.
    fn start(
        &self,
        trainer: &mut Trainer,
        prior: Option<RunState>,
        fingerprint: String,
    ) -> anyhow::Result<RunState> {
        let (out, params) = (&self.paths.out, &trainer.adapted.params);
        if let Some(state) = checkpoint::resume(out, params, &mut trainer.opt, prior, &fingerprint)?
        {
            return Ok(state);
        }
        let initial = trainer.evaluate(0)?;
        info!(
            r1 = initial.retrieval.r1,
            r5 = initial.retrieval.r5,
            chance_r1 = initial.retrieval.chance_r1,
            "held-out video->text retrieval of the served model"
        );
        Ok(RunState::fresh(fingerprint, initial, trainer.source()))
    }
}

/// PACL's stages 1 and 2 on the training pairs, and the phases' fall-backs.
fn pacl_plan(
    m: &Material,
    zero_shot: &ZeroShot,
    thresholds: Thresholds,
    seed: u64,
) -> anyhow::Result<PaclPlan> {
    let video = Tensor::stack(&m.reference.iter().map(|t| &t.video).collect::<Vec<_>>(), 0)?;
    let video_sentiment = sentiment::log_distributions(zero_shot, &video)?;
    let pairs: Vec<(usize, usize)> = m
        .train
        .iter()
        .flat_map(|&w| m.window_texts[w].iter().map(move |&t| (w, t)))
        .collect();
    let prepared = pacl::prepare(
        &Inputs {
            pairs: &pairs,
            video: &m.reference_rows,
            text: &m.text_rows,
            video_sentiment: &video_sentiment,
            text_sentiment: &m.text_sentiment,
        },
        thresholds,
        seed,
    );
    // Partitions by window; held-out windows' pairs are never trained on (weak-coupled).
    let mut partitions: Vec<Vec<super::loss::Partition>> = m
        .window_texts
        .iter()
        .map(|t| vec![super::loss::Partition::Weak; t.len()])
        .collect();
    for (&(w, t), p) in pairs.iter().zip(&prepared.partitions) {
        let k = m.window_texts[w].iter().position(|x| *x == t).unwrap_or(0);
        partitions[w][k] = *p;
    }
    let windows_of = |phase: usize| {
        m.train
            .iter()
            .filter(|&&w| partitions[w].iter().any(|p| pacl::allowed(phase, *p)))
            .count()
    };
    let mut effective = [0, 1, 2];
    for (phase, eff) in effective.iter_mut().enumerate() {
        *eff = (phase..3).find(|&q| windows_of(q) >= 2).unwrap_or(2);
        if *eff != phase {
            warn!(
                phase,
                trains_as = *eff,
                "PACL: fewer than two training windows have pairs of this phase's partitions; \
                 it trains on the next phase's"
            );
        }
    }
    let s = &prepared.summary;
    info!(
        strong = s.strong,
        emotional_only = s.emotional_only,
        factual_only = s.factual_only,
        weak = s.weak,
        factual_median = s.factual_scores[2],
        emotional_median = s.emotional_scores[2],
        "PACL partition of the training pairs"
    );
    Ok(PaclPlan {
        partitions,
        factual: prepared.factual,
        emotional: prepared.emotional,
        effective,
        summary: prepared.summary,
    })
}

/// The adaptation as the step loop sees it.
struct Adapting<'t, 'a> {
    trainer: &'t mut Trainer<'a>,
}

impl Learner for Adapting<'_, '_> {
    type Step = StepRecord;
    type Eval = Evaluation;

    fn step(&mut self, step: usize) -> anyhow::Result<StepRecord> {
        self.trainer.step(step)
    }

    fn evaluate(&self, step: usize) -> anyhow::Result<Evaluation> {
        self.trainer.evaluate(step)
    }

    fn save(&self, out: &Path, state: &RunState) -> anyhow::Result<()> {
        checkpoint::save(out, &self.trainer.adapted.params, &self.trainer.opt, state)
    }

    fn loss(step: &StepRecord) -> f32 {
        step.loss
    }

    fn log(step: usize, loss: f32, eval: &Evaluation) {
        info!(
            step,
            loss,
            r1 = eval.retrieval.r1,
            r5 = eval.retrieval.r5,
            top1_agreement = eval.agreement.top1_agreement,
            "held-out retrieval"
        );
    }
}
