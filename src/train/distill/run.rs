//! `affectd train distill`: a run, step by step.
//!
//! Teacher targets are computed once (cached on disk), the student starts from the
//! teacher's layers, and AdamW with warm-up and cosine decay minimises the distillation loss
//! over the training windows. The held-out windows are scored before training (the untrained
//! student), every `eval_every` steps and at the end. Checkpoints hold the trainable tensors,
//! the optimiser moments and the curves; the data order is a function of the step, so
//! `--resume` continues bit for bit.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use tracing::info;

use super::Teacher;
use super::checkpoint::{EvalRecord, RunState, StepRecord};
use super::report::{self, Report};
use super::settings::Settings;
use super::student::student_config;
use super::trainer::Trainer;
use crate::train::cache::{OutputCache, Targets};
use crate::train::checkpoint;
use crate::train::data::{Subset, WindowSource, split};
pub use crate::train::session::Paths;
use crate::train::session::{self, Cadence, Learner};

/// How a distillation ended.
pub type Outcome = session::Outcome<Report>;

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

impl Run<'_> {
    /// Runs (or resumes) the distillation. A resumed run learns from the windows it started
    /// with (newer captures wait for the next run) as long as they are all still there.
    pub fn execute(&self) -> anyhow::Result<Outcome> {
        let prior: Option<RunState> = checkpoint::read_state(&self.paths.out, self.resume)?;
        let view = Subset::keeping(self.source, prior.as_ref().map(|p| p.windows.as_slice()));
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

    /// The run on the windows of `self.source`, continuing `prior` when it is of this run.
    fn execute_on_view(&self, prior: Option<RunState>) -> anyhow::Result<Outcome> {
        let student_cfg = student_config(self.teacher.model.config(), &self.settings.student)?;
        let (train, val) = self.split()?;
        let targets = self.teacher_targets()?;
        let mut trainer = Trainer::new(
            self.teacher,
            self.source,
            &self.settings,
            &student_cfg,
            targets,
        )?;
        let mut state = self.start(&mut trainer, prior, &val)?;
        let cadence = Cadence {
            steps: self.settings.steps,
            batch: self.settings.batch,
            eval_every: self.settings.eval_every,
            checkpoint_every: self.settings.checkpoint_every,
            stop_after: self.stop_after,
        };
        let bar = session::bar(self.progress, self.settings.steps as u64, "distill");
        let mut learner = Distilling {
            trainer: &mut trainer,
            train: &train,
            val: &val,
        };
        if let Some(step) = session::run(&mut learner, &mut state, &cadence, &self.paths.out, &bar)?
        {
            return Ok(Outcome::Stopped { step });
        }
        let report = report::finish(&report::RunEnd {
            out: &self.paths.out,
            data: &self.data,
            settings: &self.settings,
            teacher: self.teacher,
            source: self.source,
            student: &trainer.student,
            student_cfg: &student_cfg,
            state: &state,
            train: &train,
            val: &val,
        })?;
        Ok(Outcome::Finished(Box::new(report)))
    }

    /// Checks there is something to learn and splits the windows by track into training
    /// and held-out indices.
    fn split(&self) -> anyhow::Result<(Vec<usize>, Vec<usize>)> {
        let settings = &self.settings;
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
        Ok((train, val))
    }

    /// The teacher's targets of every window, from the cache or computed once.
    fn teacher_targets(&self) -> anyhow::Result<Vec<Targets>> {
        let name = format!("teacher-{}", self.teacher.cache_key()?);
        OutputCache::open(&self.paths.cache, &name)?.all(
            &self.teacher.model,
            self.source,
            self.settings.batch,
            self.progress,
        )
    }

    /// Where training starts: the checkpoint `prior` when it is of this run, else step 0
    /// with the untrained student's held-out agreement.
    fn start(
        &self,
        trainer: &mut Trainer,
        prior: Option<RunState>,
        val: &[usize],
    ) -> anyhow::Result<RunState> {
        let fingerprint = super::checkpoint::fingerprint(&self.settings, self.teacher, self.source);
        let (out, params) = (&self.paths.out, &trainer.student.params);
        if let Some(state) = checkpoint::resume(out, params, &mut trainer.opt, prior, &fingerprint)?
        {
            return Ok(state);
        }
        let initial = trainer.evaluate(val)?;
        info!(?initial, "untrained student");
        let initial = EvalRecord {
            step: 0,
            agreement: initial,
        };
        Ok(RunState::fresh(fingerprint, initial, self.source))
    }
}

/// The distillation as the step loop sees it.
struct Distilling<'t, 'a> {
    trainer: &'t mut Trainer<'a>,
    train: &'t [usize],
    val: &'t [usize],
}

impl Learner for Distilling<'_, '_> {
    type Step = StepRecord;
    type Eval = EvalRecord;

    fn step(&mut self, step: usize) -> anyhow::Result<StepRecord> {
        self.trainer.step(self.train, step)
    }

    fn evaluate(&self, step: usize) -> anyhow::Result<EvalRecord> {
        Ok(EvalRecord {
            step,
            agreement: self.trainer.evaluate(self.val)?,
        })
    }

    fn save(&self, out: &Path, state: &RunState) -> anyhow::Result<()> {
        checkpoint::save(out, &self.trainer.student.params, &self.trainer.opt, state)
    }

    fn loss(step: &StepRecord) -> f32 {
        step.loss.total
    }

    fn log(step: usize, loss: f32, eval: &EvalRecord) {
        info!(
            step,
            loss,
            held_out_cosine = eval.agreement.with_teacher.embedding_cosine,
            held_out_top1 = eval.agreement.with_teacher.top1_agreement,
            "held-out agreement"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::preprocess::EncoderCrop;
    use crate::train::distill::loss::LossWeights;
    use crate::train::optim::{AdamWConfig, Schedule};

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
        let model: crate::encode::ModelConfig = toml::from_str(&format!(
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
            report.result.with_teacher.embedding_cosine
                > report.initial.with_teacher.embedding_cosine,
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
