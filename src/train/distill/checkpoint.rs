//! The run's progress on disk, for `--resume`: `OUT/checkpoint/` holds the trainable tensors
//! (`params.safetensors`), the optimiser moments (`optimizer.safetensors`) and the curves
//! (`state.json`). A checkpoint is replaced whole: written beside it, then renamed.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::data::WindowSource;
use super::loss::{Agreement, LossParts};
use super::optim::AdamW;
use super::settings::Settings;
use super::student::Student;
use super::teacher::Teacher;
use crate::train::atomic::write_atomic;

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

impl RunState {
    /// A run that has taken no step yet: `initial` is the untrained student's agreement.
    pub fn fresh(fingerprint: String, initial: Agreement, source: &dyn WindowSource) -> Self {
        Self {
            fingerprint,
            step: 0,
            history: Vec::new(),
            evals: vec![EvalRecord {
                step: 0,
                agreement: initial,
            }],
            train_seconds: 0.0,
            windows: (0..source.len()).map(|i| source.id(i).to_owned()).collect(),
        }
    }
}

/// The checkpoint folder of the run writing to `out`.
fn dir(out: &Path) -> PathBuf {
    out.join("checkpoint")
}

/// Identifies a run: its settings, its teacher and the ids of its windows.
pub fn fingerprint(settings: &Settings, teacher: &Teacher, source: &dyn WindowSource) -> String {
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

/// `value` as pretty JSON at `path`, written atomically.
pub(super) fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    write_atomic(path, |tmp| {
        Ok(std::fs::write(tmp, serde_json::to_vec_pretty(value)?)?)
    })
}

/// The state of the checkpoint in `out`, if there is one: an error when there is one and
/// `resume` is not set (a second run into a used folder must not start over silently).
pub fn read_state(out: &Path, resume: bool) -> anyhow::Result<Option<RunState>> {
    let state_path = dir(out).join("state.json");
    if state_path.exists() && !resume {
        bail!(
            "{} holds a checkpoint of an earlier run: pass --resume to continue it (or to \
             start over if it is of another run), or choose another --out",
            out.display()
        )
    }
    if !state_path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&state_path)
        .with_context(|| format!("--resume: reading {}", state_path.display()))?;
    Ok(Some(
        serde_json::from_str(&text).context("--resume: state.json")?,
    ))
}

/// Replaces the checkpoint in `out` with `student`, `opt` and `state`.
pub fn save(out: &Path, student: &Student, opt: &AdamW, state: &RunState) -> anyhow::Result<()> {
    let dir = dir(out);
    let tmp = out.join("checkpoint.tmp");
    let old = out.join("checkpoint.old");
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

/// Restores the checkpoint in `out` (whose state `read_state` read) into `student` and
/// `opt` when it is of this run; `None` when it is of another (different settings, teacher
/// or data: e.g. the nightly run after new captures).
pub fn restore(
    out: &Path,
    student: &Student,
    opt: &mut AdamW,
    state: RunState,
    fingerprint: &str,
) -> anyhow::Result<Option<RunState>> {
    if state.fingerprint != fingerprint {
        return Ok(None);
    }
    let dir = dir(out);
    let device = student.model.device();
    let params = candle_core::safetensors::load(dir.join("params.safetensors"), device)?;
    student.params.restore(&params.into_iter().collect())?;
    let moments = candle_core::safetensors::load(dir.join("optimizer.safetensors"), device)?;
    opt.restore(&moments.into_iter().collect(), state.step as u64)?;
    Ok(Some(state))
}
