//! `affectd train distill`: the training loop.
//!
//! Teacher targets are computed once (cached on disk), the student starts from the
//! teacher's layers, and AdamW with warm-up and cosine decay minimises the distillation loss
//! over the training windows. The held-out windows are scored before training (the untrained
//! student), every `eval_every` steps and at the end. Checkpoints hold the trainable tensors,
//! the optimiser moments and the curves; the data order is a function of the step, so
//! `--resume` continues bit for bit.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tracing::info;

use super::data::{WindowSource, batch_indices, split};
use super::loss::{Agreement, AgreementSum, LossParts, LossWeights, ZeroShot, distillation_loss};
use super::optim::{AdamW, AdamWConfig, Schedule};
use super::student::Student;
use super::teacher::{Targets, TeacherCache};
use crate::model::{EmotionClip, Readout};

/// Everything that decides the result of a run (recorded in checkpoints and the report; a
/// checkpoint resumes only under the same settings).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Settings {
    /// A preset name or a config path.
    pub student: String,
    pub steps: usize,
    pub batch: usize,
    pub schedule: Schedule,
    pub adamw: AdamWConfig,
    pub loss: LossWeights,
    pub val_fraction: f64,
    pub seed: u64,
    pub eval_every: usize,
    pub checkpoint_every: usize,
}

/// The teacher: its model, its tensors (to initialise the student) and its identity.
pub struct Teacher {
    pub model: EmotionClip,
    pub tensors: Arc<std::collections::BTreeMap<String, Tensor>>,
    pub weights: PathBuf,
    pub sha256: String,
    pub readout: Readout,
}

impl Teacher {
    /// The model `[model]` describes, as the daemon would serve it (`model::load_encoder`):
    /// the weights file, or the seeded random weights of `allow_untrained` (whose identity is
    /// then `untrained-seed-N`).
    pub fn load(
        model: &crate::model::ModelConfig,
        readout: &crate::model::ReadoutConfig,
    ) -> Result<Self, crate::model::Error> {
        let (clip, digest) = crate::model::load_encoder(model)?;
        let device = clip.device().clone();
        let (tensors, weights, sha256) = match (model.weights_to_load(), digest) {
            (Some(path), Some(sha256)) => (
                crate::model::weights::Checkpoint::open(path)?.tensors(DType::F32, &device)?,
                path.to_owned(),
                sha256,
            ),
            _ => {
                tracing::warn!(
                    seed = model.seed,
                    "the teacher is the UNTRAINED seeded model of allow_untrained: the student \
                     learns to imitate meaningless outputs (fine for a demo)"
                );
                // The same seeded values as the served model, this time with their names.
                let (_, tensors) =
                    crate::model::weights::build_seeded(model.seed, DType::F32, &device, |vb| {
                        EmotionClip::new(vb, clip.config())
                    })?;
                let id = format!("untrained-seed-{}", model.seed);
                (tensors, PathBuf::from(&id), id)
            }
        };
        let readout = crate::model::build_readout(&clip, readout)?;
        Ok(Self {
            model: clip,
            tensors: Arc::new(tensors),
            weights,
            sha256,
            readout,
        })
    }
}

/// One training step's record.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct StepRecord {
    pub step: usize,
    pub lr: f64,
    pub loss: LossParts,
}

/// The held-out agreement after `step` steps.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct EvalRecord {
    pub step: usize,
    pub agreement: Agreement,
}

/// What a checkpoint holds besides tensors.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunState {
    pub fingerprint: String,
    /// Steps completed.
    pub step: usize,
    pub history: Vec<StepRecord>,
    pub evals: Vec<EvalRecord>,
    /// Seconds spent in training steps (not evaluation), over all invocations.
    pub train_seconds: f64,
    /// Ids of the windows the run learns from: a resumed run keeps them.
    #[serde(default)]
    pub windows: Vec<String>,
}

/// How a run ended.
pub enum Outcome {
    /// All steps done: the student and its report are in the output folder.
    Finished(Box<super::report::Report>),
    /// `--stop-after` reached: a checkpoint is saved for `--resume`.
    Stopped { step: usize },
}

/// Where a run writes.
pub struct Paths {
    pub out: PathBuf,
    pub cache: PathBuf,
}

impl Paths {
    fn checkpoint(&self) -> PathBuf {
        self.out.join("checkpoint")
    }
}

/// A run of distillation.
pub struct Run<'a> {
    pub settings: Settings,
    pub teacher: &'a Teacher,
    pub source: &'a dyn WindowSource,
    /// Where the data came from, for the report.
    pub data: PathBuf,
    pub paths: Paths,
    pub resume: bool,
    pub stop_after: Option<usize>,
    pub progress: bool,
}

/// A student forward pass: video embeddings [B, E] and frame hints [B, T, teacher width].
fn student_forward(
    student: &Student,
    windows: &[Vec<crate::model::preprocess::EncoderCrop>],
) -> candle_core::Result<(Tensor, Tensor)> {
    let (video, hint) = super::teacher::video_and_hint(&student.model, windows)?;
    match &student.hint_proj {
        Some(p) => Ok((video, hint.broadcast_matmul(p)?)),
        None => Ok((video, hint)),
    }
}

fn stack_targets(targets: &[Targets], indices: &[usize]) -> candle_core::Result<(Tensor, Tensor)> {
    let video: Vec<&Tensor> = indices.iter().map(|&i| &targets[i].video).collect();
    let hint: Vec<&Tensor> = indices.iter().map(|&i| &targets[i].hint).collect();
    Ok((Tensor::stack(&video, 0)?, Tensor::stack(&hint, 0)?))
}

fn load_windows(
    source: &dyn WindowSource,
    indices: &[usize],
) -> anyhow::Result<Vec<Vec<crate::model::preprocess::EncoderCrop>>> {
    indices
        .iter()
        .map(|&i| {
            source
                .load(i)
                .with_context(|| format!("window {}", source.id(i)))
        })
        .collect()
}

fn fingerprint(settings: &Settings, teacher: &Teacher, source: &dyn WindowSource) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(settings).unwrap_or_default());
    h.update(teacher.sha256.as_bytes());
    for i in 0..source.len() {
        h.update(source.id(i).as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    super::write_atomic(path, |tmp| {
        Ok(std::fs::write(tmp, serde_json::to_vec_pretty(value)?)?)
    })
}

fn to_rows(t: &Tensor) -> candle_core::Result<Vec<Vec<f32>>> {
    t.to_dtype(DType::F32)?.to_vec2::<f32>()
}

impl Run<'_> {
    /// The held-out agreement of `student`.
    fn evaluate(
        &self,
        student: &Student,
        zero_shot: &ZeroShot,
        targets: &[Targets],
        val: &[usize],
    ) -> anyhow::Result<Agreement> {
        let mut sum = AgreementSum::default();
        for chunk in val.chunks(self.settings.batch.max(1)) {
            let windows = load_windows(self.source, chunk)?;
            let (video, hint) = student_forward(student, &windows)?;
            let (t_video, t_hint) = stack_targets(targets, chunk)?;
            let (_, loss) = distillation_loss(
                &self.settings.loss,
                zero_shot,
                &video,
                &hint,
                &t_video,
                &t_hint,
            )?;
            sum.add(
                &self.teacher.readout,
                &to_rows(&video.detach())?,
                &to_rows(&t_video)?,
                loss,
            );
        }
        Ok(sum.finish())
    }

    fn save_checkpoint(
        &self,
        student: &Student,
        opt: &AdamW,
        state: &RunState,
    ) -> anyhow::Result<()> {
        let dir = self.paths.checkpoint();
        let tmp = self.paths.out.join("checkpoint.tmp");
        let old = self.paths.out.join("checkpoint.old");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        candle_core::safetensors::save(
            &student.params.trainable_tensors().into_iter().collect(),
            tmp.join("params.safetensors"),
        )?;
        candle_core::safetensors::save(
            &opt.state().into_iter().collect(),
            tmp.join("optimizer.safetensors"),
        )?;
        write_json(&tmp.join("state.json"), state)?;
        let _ = std::fs::remove_dir_all(&old);
        if dir.exists() {
            std::fs::rename(&dir, &old)?;
        }
        std::fs::rename(&tmp, &dir)?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    }

    /// Restores the checkpoint in OUT (whose state `execute` read) when it is of this run;
    /// `None` when it is of another (different settings, teacher or data: e.g. the nightly
    /// run after new captures).
    fn restore_checkpoint(
        &self,
        student: &Student,
        opt: &mut AdamW,
        state: RunState,
        fingerprint: &str,
    ) -> anyhow::Result<Option<RunState>> {
        if state.fingerprint != fingerprint {
            return Ok(None);
        }
        let dir = self.paths.checkpoint();
        let device = student.model.device();
        let params = candle_core::safetensors::load(dir.join("params.safetensors"), device)?;
        student.params.restore(&params.into_iter().collect())?;
        let moments = candle_core::safetensors::load(dir.join("optimizer.safetensors"), device)?;
        opt.restore(&moments.into_iter().collect(), state.step as u64)?;
        Ok(Some(state))
    }

    /// Runs (or resumes) the distillation. A resumed run learns from the windows it started
    /// with (newer captures wait for the next run) as long as they are all still there.
    pub fn execute(&self) -> anyhow::Result<Outcome> {
        let state_path = self.paths.checkpoint().join("state.json");
        if state_path.exists() && !self.resume {
            bail!(
                "{} holds a checkpoint of an earlier run: pass --resume to continue it (or to \
                 start over if it is of another run), or choose another --out",
                self.paths.out.display()
            )
        }
        let prior: Option<RunState> = if state_path.exists() {
            let text = std::fs::read_to_string(&state_path)
                .with_context(|| format!("--resume: reading {}", state_path.display()))?;
            Some(serde_json::from_str(&text).context("--resume: state.json")?)
        } else {
            None
        };
        let view = prior
            .as_ref()
            .and_then(|p| super::data::Subset::of(self.source, &p.windows))
            .unwrap_or_else(|| super::data::Subset::all(self.source));
        let run = Run {
            settings: self.settings.clone(),
            teacher: self.teacher,
            source: &view,
            data: self.data.clone(),
            paths: Paths {
                out: self.paths.out.clone(),
                cache: self.paths.cache.clone(),
            },
            resume: self.resume,
            stop_after: self.stop_after,
            progress: self.progress,
        };
        run.execute_on_view(prior)
    }

    fn execute_on_view(&self, prior: Option<RunState>) -> anyhow::Result<Outcome> {
        let settings = &self.settings;
        let teacher_cfg = self.teacher.model.config().clone();
        let student_cfg = super::student::student_config(&teacher_cfg, &settings.student)?;
        if self.source.is_empty() {
            bail!("{}: no captured windows to learn from", self.data.display())
        }
        if settings.batch == 0 || settings.steps == 0 {
            bail!("--batch and --steps must be positive")
        }
        std::fs::create_dir_all(&self.paths.out)
            .with_context(|| format!("creating {}", self.paths.out.display()))?;
        let (train, val) = split(self.source, settings.val_fraction, settings.seed);
        if train.is_empty() {
            bail!(
                "all {} windows fell into the held-out split; lower --val-fraction",
                self.source.len()
            )
        }
        info!(
            windows = self.source.len(),
            train = train.len(),
            held_out = val.len(),
            "data split by track"
        );

        // Teacher targets, once.
        let key = {
            use sha2::{Digest, Sha256};
            let cfg = serde_json::to_vec(&teacher_cfg)?;
            let digest = hex::encode(
                Sha256::new()
                    .chain_update(self.teacher.sha256.as_bytes())
                    .chain_update(cfg)
                    .finalize(),
            );
            digest[..16].to_owned()
        };
        let cache = TeacherCache::open(&self.paths.cache, &key)?;
        let bar = self.bar(self.source.len() as u64, "teacher");
        let started = Instant::now();
        let targets = cache.targets(&self.teacher.model, self.source, settings.batch, |n| {
            bar.inc(n as u64)
        })?;
        bar.finish_and_clear();
        info!(
            windows = targets.len(),
            seconds = started.elapsed().as_secs_f32(),
            "teacher targets ready"
        );

        let device = self.teacher.model.device().clone();
        let student = Student::init(
            &student_cfg,
            &teacher_cfg,
            Arc::clone(&self.teacher.tensors),
            settings.seed,
            &device,
        )?;
        let mut opt = AdamW::new(student.params.vars(), settings.adamw)?;
        let zero_shot = ZeroShot::new(&self.teacher.readout, &device)?;
        let fingerprint = fingerprint(settings, self.teacher, self.source);

        let restored = match prior {
            Some(prior) => {
                let restored = self.restore_checkpoint(&student, &mut opt, prior, &fingerprint)?;
                match &restored {
                    Some(s) => info!(step = s.step, "resumed from checkpoint"),
                    None => tracing::warn!(
                        "the checkpoint in {} is of another run (settings, teacher or data \
                         changed); starting over",
                        self.paths.out.display()
                    ),
                }
                restored
            }
            None => None,
        };
        let mut state = match restored {
            Some(state) => state,
            None => {
                let initial = self.evaluate(&student, &zero_shot, &targets, &val)?;
                info!(?initial, "untrained student");
                RunState {
                    fingerprint,
                    step: 0,
                    history: Vec::new(),
                    evals: vec![EvalRecord {
                        step: 0,
                        agreement: initial,
                    }],
                    train_seconds: 0.0,
                    windows: (0..self.source.len())
                        .map(|i| self.source.id(i).to_owned())
                        .collect(),
                }
            }
        };

        let bar = self.bar(settings.steps as u64, "distill");
        bar.set_position(state.step as u64);
        let mut stop_at = settings.steps;
        if let Some(n) = self.stop_after {
            stop_at = stop_at.min(state.step + n);
        }
        while state.step < stop_at {
            let step = state.step;
            let started = Instant::now();
            let indices = batch_indices(&train, step, settings.batch, settings.seed);
            let windows = load_windows(self.source, &indices)?;
            let (video, hint) = student_forward(&student, &windows)?;
            let (t_video, t_hint) = stack_targets(&targets, &indices)?;
            let (loss, parts) =
                distillation_loss(&settings.loss, &zero_shot, &video, &hint, &t_video, &t_hint)?;
            if !parts.total.is_finite() {
                bail!("the loss diverged at step {step} ({parts:?}); lower --lr")
            }
            let grads = loss.backward()?;
            let lr = settings.schedule.lr(step);
            opt.step(&grads, lr)?;
            state.train_seconds += started.elapsed().as_secs_f64();
            state.history.push(StepRecord {
                step,
                lr,
                loss: parts,
            });
            state.step += 1;
            let rate =
                (state.history.len() * settings.batch) as f64 / state.train_seconds.max(1e-9);
            bar.set_message(format!("loss {:.4}  {rate:.1} windows/s", parts.total));
            bar.inc(1);

            let done = state.step == settings.steps;
            if state.step % settings.eval_every.max(1) == 0 || done {
                let agreement = self.evaluate(&student, &zero_shot, &targets, &val)?;
                bar.suspend(|| {
                    info!(
                        step = state.step,
                        loss = parts.total,
                        held_out_cosine = agreement.embedding_cosine,
                        held_out_top1 = agreement.top1_agreement,
                        "held-out agreement"
                    )
                });
                state.evals.push(EvalRecord {
                    step: state.step,
                    agreement,
                });
            }
            if state.step % settings.checkpoint_every.max(1) == 0 || state.step == stop_at {
                self.save_checkpoint(&student, &opt, &state)?;
            }
        }
        bar.finish_and_clear();
        if state.step < settings.steps {
            info!(step = state.step, "stopped; --resume continues");
            return Ok(Outcome::Stopped { step: state.step });
        }
        let report = super::report::finish(self, &student, &student_cfg, &state, &train, &val)?;
        Ok(Outcome::Finished(Box::new(report)))
    }

    fn bar(&self, len: u64, what: &str) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len);
        let style = ProgressStyle::with_template(&format!(
            "{what:>8} [{{bar:30}}] {{pos}}/{{len}} {{msg}} ({{elapsed}}, eta {{eta}})"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style.progress_chars("=> "));
        bar
    }

    pub(crate) fn device(&self) -> &Device {
        self.teacher.model.device()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::preprocess::EncoderCrop;

    /// Windows of moving textured squares: 5 tracks of 3 windows.
    struct Synthetic {
        ids: Vec<String>,
    }

    impl Synthetic {
        fn new(windows: usize) -> Self {
            let ids = (0..windows)
                .map(|i| format!("track{}-w{}", i % 5, i / 5))
                .collect();
            Self { ids }
        }
    }

    impl WindowSource for Synthetic {
        fn len(&self) -> usize {
            self.ids.len()
        }
        fn id(&self, i: usize) -> &str {
            &self.ids[i]
        }
        fn group(&self, i: usize) -> String {
            self.ids[i].split('-').next().unwrap_or_default().to_owned()
        }
        fn load(&self, i: usize) -> anyhow::Result<Vec<EncoderCrop>> {
            let s = 64usize;
            Ok((0..8)
                .map(|f| {
                    let (track, shift) = (i % 5, i / 5 * 8 + f);
                    let rgb = (0..s * s * 3)
                        .map(|k| {
                            let (y, x, c) = (k / (s * 3), k / 3 % s, k % 3);
                            ((x * (track + 1) * 7 + y * (c + 2) * 5 + shift * 11) % 256) as u8
                        })
                        .collect();
                    let mask = (0..s * s)
                        .map(|k| u8::from((k % s) / 16 == track % 4))
                        .collect();
                    EncoderCrop { size: s, rgb, mask }
                })
                .collect())
        }
    }

    fn teacher() -> Teacher {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/tiny-teacher.json"
        );
        let model: crate::model::ModelConfig = toml::from_str(&format!(
            "config = '{path}'\nallow_untrained = true\nseed = 5"
        ))
        .unwrap();
        Teacher::load(&model, &Default::default()).unwrap()
    }

    fn settings(steps: usize) -> Settings {
        Settings {
            student: "vits32".into(),
            steps,
            batch: 4,
            schedule: Schedule {
                peak: 3e-3,
                warmup: 5,
                total: steps,
                floor: 0.05,
            },
            adamw: AdamWConfig::default(),
            loss: LossWeights::default(),
            val_fraction: 0.3,
            seed: 1,
            eval_every: 20,
            checkpoint_every: 25,
        }
    }

    fn run<'a>(teacher: &'a Teacher, source: &'a Synthetic, out: &Path, steps: usize) -> Run<'a> {
        Run {
            settings: settings(steps),
            teacher,
            source,
            data: PathBuf::from("synthetic"),
            paths: Paths {
                out: out.to_owned(),
                cache: out.join("cache"),
            },
            resume: false,
            stop_after: None,
            progress: false,
        }
    }

    #[test]
    fn distillation_learns_and_resume_is_bit_exact() {
        let (teacher, source) = (teacher(), Synthetic::new(15));
        let dir = tempfile::tempdir().unwrap();
        let straight = dir.path().join("straight");
        let Outcome::Finished(report) = run(&teacher, &source, &straight, 60).execute().unwrap()
        else {
            panic!("not finished")
        };
        let first = report.history[..5]
            .iter()
            .map(|r| r.loss.total)
            .sum::<f32>()
            / 5.0;
        let last = report.history[55..]
            .iter()
            .map(|r| r.loss.total)
            .sum::<f32>()
            / 5.0;
        assert!(last < first / 2.0, "loss {first} -> {last}");
        assert!(
            report.result.embedding_cosine > report.initial.embedding_cosine,
            "{:?} -> {:?}",
            report.initial,
            report.result
        );
        assert!(straight.join("report.png").exists());

        let resumed = dir.path().join("resumed");
        let mut r = run(&teacher, &source, &resumed, 60);
        r.stop_after = Some(27);
        assert!(matches!(
            r.execute().unwrap(),
            Outcome::Stopped { step: 27 }
        ));
        let again = run(&teacher, &source, &resumed, 60).execute();
        assert!(
            again.is_err(),
            "a second run into a used --out must not start over"
        );
        // Windows captured since do not join a resumed run.
        let grown = Synthetic::new(18);
        let mut r = run(&teacher, &grown, &resumed, 60);
        r.resume = true;
        assert!(matches!(r.execute().unwrap(), Outcome::Finished(_)));
        let a = std::fs::read(straight.join("student.safetensors")).unwrap();
        let b = std::fs::read(resumed.join("student.safetensors")).unwrap();
        assert!(
            a == b,
            "the resumed student differs from the uninterrupted one"
        );
    }
}
