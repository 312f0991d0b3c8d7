//! The step loop every training command shares: optimiser steps until the end of the run or
//! `--stop-after`, a held-out evaluation every `eval_every` steps and at the end, a
//! checkpoint every `checkpoint_every` steps and where it stops, and a progress bar (loss,
//! windows/s, ETA) on a terminal.

use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use super::checkpoint::RunState;

/// How a run ended.
pub enum Outcome<R> {
    /// All steps done: the result and its report `R` are in the output folder.
    Finished(Box<R>),
    /// `--stop-after` reached: a checkpoint is saved for `--resume`.
    Stopped { step: usize },
}

/// Where a run writes.
pub struct Paths {
    /// The output folder (results, report, checkpoint).
    pub out: PathBuf,
    /// The cache of a fixed model's outputs per window.
    pub cache: PathBuf,
}

/// A model being trained, as the loop sees it.
pub trait Learner {
    /// What one step records (its loss, learning rate...).
    type Step;
    /// What one held-out evaluation records.
    type Eval;

    /// One optimiser step: step `step` of the run (0-based).
    fn step(&mut self, step: usize) -> anyhow::Result<Self::Step>;
    /// The held-out evaluation of the model after `step` steps.
    fn evaluate(&self, step: usize) -> anyhow::Result<Self::Eval>;
    /// Replaces the checkpoint in `out` with the model, the optimiser and `state`.
    fn save(&self, out: &Path, state: &RunState<Self::Step, Self::Eval>) -> anyhow::Result<()>;
    /// The loss a step record shows on the progress bar.
    fn loss(step: &Self::Step) -> f32;
    /// Logs an evaluation (`loss`: the last step's).
    fn log(step: usize, loss: f32, eval: &Self::Eval);
}

/// When the loop evaluates, saves and stops.
pub struct Cadence {
    /// Steps of the whole run.
    pub steps: usize,
    /// Windows per step (for the windows/s shown).
    pub batch: usize,
    pub eval_every: usize,
    pub checkpoint_every: usize,
    /// Steps of this invocation at most (`--stop-after`).
    pub stop_after: Option<usize>,
}

/// Steps `learner` from `state.step` until the end of the run or `--stop-after`, recording
/// into `state` and checkpointing into `out`: the step it stopped at when that was before
/// the end (logged: `--resume` continues), `None` when the run is complete.
pub fn run<L: Learner>(
    learner: &mut L,
    state: &mut RunState<L::Step, L::Eval>,
    cadence: &Cadence,
    out: &Path,
    bar: &ProgressBar,
) -> anyhow::Result<Option<usize>> {
    bar.set_position(state.step as u64);
    let mut stop_at = cadence.steps;
    if let Some(n) = cadence.stop_after {
        stop_at = stop_at.min(state.step + n);
    }
    while state.step < stop_at {
        let started = Instant::now();
        let record = learner.step(state.step)?;
        state.train_seconds += started.elapsed().as_secs_f64();
        let loss = L::loss(&record);
        state.history.push(record);
        state.step += 1;
        let rate = (state.history.len() * cadence.batch) as f64 / state.train_seconds.max(1e-9);
        bar.set_message(format!("loss {loss:.4}  {rate:.1} windows/s"));
        bar.inc(1);

        if state.step.is_multiple_of(cadence.eval_every.max(1)) || state.step == cadence.steps {
            let eval = learner.evaluate(state.step)?;
            bar.suspend(|| L::log(state.step, loss, &eval));
            state.evals.push(eval);
        }
        if state.step.is_multiple_of(cadence.checkpoint_every.max(1)) || state.step == stop_at {
            learner.save(out, state)?;
        }
    }
    bar.finish_and_clear();
    if state.step < cadence.steps {
        tracing::info!(step = state.step, "stopped; --resume continues");
        return Ok(Some(state.step));
    }
    Ok(None)
}

/// A progress bar of `len` steps labelled `what`, or a hidden one when `show` is false (not
/// a terminal: the logs say how far it got).
pub fn bar(show: bool, len: u64, what: &str) -> ProgressBar {
    if !show {
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
