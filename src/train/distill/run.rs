//! `affectd train distill`: a run, step by step.
//!
//! Teacher targets are computed once (cached on disk), the student starts from the
//! teacher's layers, and AdamW with warm-up and cosine decay minimises the distillation loss
//! over the training windows. The held-out windows are scored before training (the untrained
//! student), every `eval_every` steps and at the end. Checkpoints hold the trainable tensors,
//! the optimiser moments and the curves; the data order is a function of the step, so
//! `--resume` continues bit for bit.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use tracing::{info, warn};

use super::checkpoint::{self, EvalRecord, RunState};
use super::data::{Subset, WindowSource, split};
use super::report::{self, Report};
use super::settings::Settings;
use super::student::student_config;
use super::teacher::{Targets, Teacher, TeacherCache};
use super::trainer::Trainer;

/// How a run ended.
pub enum Outcome {
    /// All steps done: the student and its report are in the output folder.
    Finished(Box<Report>),
    /// `--stop-after` reached: a checkpoint is saved for `--resume`.
    Stopped { step: usize },
}

/// Where a run writes.
pub struct Paths {
    pub out: PathBuf,
    pub cache: PathBuf,
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

impl Run<'_> {
    /// Runs (or resumes) the distillation. A resumed run learns from the windows it started
    /// with (newer captures wait for the next run) as long as they are all still there.
    pub fn execute(&self) -> anyhow::Result<Outcome> {
        let prior = checkpoint::read_state(&self.paths.out, self.resume)?;
        let view = prior
            .as_ref()
            .and_then(|p| Subset::of(self.source, &p.windows))
            .unwrap_or_else(|| Subset::all(self.source));
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
        self.train(&mut trainer, &mut state, &train, &val)?;
        if state.step < self.settings.steps {
            info!(step = state.step, "stopped; --resume continues");
            return Ok(Outcome::Stopped { step: state.step });
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
        let cache = TeacherCache::open(&self.paths.cache, &self.teacher.cache_key()?)?;
        let bar = self.bar(self.source.len() as u64, "teacher");
        let started = Instant::now();
        let targets =
            cache.targets(&self.teacher.model, self.source, self.settings.batch, |n| {
                bar.inc(n as u64)
            })?;
        bar.finish_and_clear();
        info!(
            windows = targets.len(),
            seconds = started.elapsed().as_secs_f32(),
            "teacher targets ready"
        );
        Ok(targets)
    }

    /// Where training starts: the checkpoint `prior` when it is of this run, else step 0
    /// with the untrained student's held-out agreement.
    fn start(
        &self,
        trainer: &mut Trainer,
        prior: Option<RunState>,
        val: &[usize],
    ) -> anyhow::Result<RunState> {
        let fingerprint = checkpoint::fingerprint(&self.settings, self.teacher, self.source);
        if let Some(prior) = prior {
            if let Some(state) = trainer.restore(&self.paths.out, prior, &fingerprint)? {
                info!(step = state.step, "resumed from checkpoint");
                return Ok(state);
            }
            warn!(
                "the checkpoint in {} is of another run (settings, teacher or data \
                 changed); starting over",
                self.paths.out.display()
            );
        }
        let initial = trainer.evaluate(val)?;
        info!(?initial, "untrained student");
        Ok(RunState::fresh(fingerprint, initial, self.source))
    }

    /// Steps until the end of the run or `--stop-after`, evaluating every `eval_every` steps
    /// and saving a checkpoint every `checkpoint_every` steps and where it stops.
    fn train(
        &self,
        trainer: &mut Trainer,
        state: &mut RunState,
        train: &[usize],
        val: &[usize],
    ) -> anyhow::Result<()> {
        let settings = &self.settings;
        let bar = self.bar(settings.steps as u64, "distill");
        bar.set_position(state.step as u64);
        let mut stop_at = settings.steps;
        if let Some(n) = self.stop_after {
            stop_at = stop_at.min(state.step + n);
        }
        while state.step < stop_at {
            let started = Instant::now();
            let record = trainer.step(train, state.step)?;
            state.train_seconds += started.elapsed().as_secs_f64();
            state.history.push(record);
            state.step += 1;
            let rate =
                (state.history.len() * settings.batch) as f64 / state.train_seconds.max(1e-9);
            bar.set_message(format!(
                "loss {:.4}  {rate:.1} windows/s",
                record.loss.total
            ));
            bar.inc(1);

            if state.step.is_multiple_of(settings.eval_every.max(1)) || state.step == settings.steps
            {
                let agreement = trainer.evaluate(val)?;
                bar.suspend(|| {
                    info!(
                        step = state.step,
                        loss = record.loss.total,
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
            if state.step.is_multiple_of(settings.checkpoint_every.max(1)) || state.step == stop_at
            {
                trainer.save(&self.paths.out, state)?;
            }
        }
        bar.finish_and_clear();
        Ok(())
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
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::model::preprocess::EncoderCrop;
    use crate::train::distill::loss::LossWeights;
    use crate::train::distill::optim::{AdamWConfig, Schedule};

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
