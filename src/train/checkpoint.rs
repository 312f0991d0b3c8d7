//! A run's progress on disk, for `--resume`: `OUT/checkpoint/` holds the trainable tensors
//! (`params.safetensors`), the optimiser moments (`optimizer.safetensors`) and the curves
//! (`state.json`). A checkpoint is replaced whole: written beside it, then renamed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use candle_core::Tensor;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::data::WindowSource;
use super::optim::AdamW;
use super::params::Params;
use crate::durable::{self, PRIVATE_MODE};
use crate::train::atomic::write_atomic;

/// What a checkpoint holds besides tensors: the records of every step (`S`) and evaluation
/// (`E`) so far.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunState<S, E> {
    pub fingerprint: String,
    /// Steps completed.
    pub step: usize,
    pub history: Vec<S>,
    pub evals: Vec<E>,
    /// Seconds spent in training steps (not evaluation), over all invocations.
    pub train_seconds: f64,
    /// Ids of the windows the run learns from: a resumed run keeps them.
    #[serde(default)]
    pub windows: Vec<String>,
}

impl<S, E> RunState<S, E> {
    /// A run that has taken no step yet: `initial` is the evaluation of the starting model.
    pub fn fresh(fingerprint: String, initial: E, source: &dyn WindowSource) -> Self {
        Self {
            fingerprint,
            step: 0,
            history: Vec::new(),
            evals: vec![initial],
            train_seconds: 0.0,
            windows: (0..source.len()).map(|i| source.id(i).to_owned()).collect(),
        }
    }
}

/// The checkpoint folder of the run writing to `out`.
fn dir(out: &Path) -> PathBuf {
    out.join("checkpoint")
}

/// Identifies a run: its settings, the digest of the model it starts from, the ids of its
/// windows and any `extra` inputs (e.g. the texts paired with the windows).
pub fn fingerprint(
    settings: &impl Serialize,
    model_sha256: &str,
    source: &dyn WindowSource,
    extra: &[&str],
) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(settings).unwrap_or_default());
    h.update(model_sha256.as_bytes());
    for i in 0..source.len() {
        h.update(source.id(i).as_bytes());
        h.update([0]);
    }
    for e in extra {
        h.update(e.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// `value` as pretty JSON at `path`, written atomically.
pub fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    write_atomic(path, |tmp| {
        Ok(std::fs::write(tmp, serde_json::to_vec_pretty(value)?)?)
    })
}

/// The state of the checkpoint in `out`, if there is one: an error when there is one and
/// `resume` is not set (a second run into a used folder must not start over silently).
pub fn read_state<S: DeserializeOwned, E: DeserializeOwned>(
    out: &Path,
    resume: bool,
) -> anyhow::Result<Option<RunState<S, E>>> {
    recover_interrupted_save(out)?;
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

/// Replaces the checkpoint in `out` with the trainable tensors of `params`, `opt` and `state`.
/// The new one is complete and flushed to the disk before it replaces the old (folder
/// renames, each flushed): a crash or power cut at any point leaves one whole checkpoint,
/// as `checkpoint/` or, between the two renames, `checkpoint.old/` ([`read_state`] takes it).
pub fn save(
    out: &Path,
    params: &Params,
    opt: &AdamW,
    state: &impl Serialize,
) -> anyhow::Result<()> {
    let dir = dir(out);
    let tmp = out.join("checkpoint.tmp");
    let old = out.join("checkpoint.old");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let tensors = tmp.join("params.safetensors");
    candle_core::safetensors::save(&params.trainable_tensors().into_iter().collect(), &tensors)?;
    let moments = tmp.join("optimizer.safetensors");
    candle_core::safetensors::save(&opt.state().into_iter().collect(), &moments)?;
    for file in [&tensors, &moments] {
        durable::set_mode(file, PRIVATE_MODE)?;
        durable::sync_file(file)?;
    }
    write_json(&tmp.join("state.json"), state)?;
    durable::sync_dir(&tmp)?;
    if dir.exists() {
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(&dir, &old)?;
    }
    std::fs::rename(&tmp, &dir)?;
    durable::sync_dir(out)?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// A crash between [`save`]'s two renames leaves the last whole checkpoint as
/// `checkpoint.old/` and none as `checkpoint/`: put it back.
fn recover_interrupted_save(out: &Path) -> anyhow::Result<()> {
    let (dir, old) = (dir(out), out.join("checkpoint.old"));
    if !dir.exists() && old.join("state.json").is_file() {
        std::fs::rename(&old, &dir)
            .with_context(|| format!("restoring {} after a crash", old.display()))?;
        durable::sync_dir(out)?;
        tracing::warn!(
            checkpoint = %dir.display(),
            "a crash interrupted the last checkpoint: the one before it was restored"
        );
    }
    Ok(())
}

/// Continues the checkpoint in `out` whose state `read_state` read (`prior`) when it is of
/// this run: its tensors and moments restored into `params` and `opt`. `None` when there is
/// none, or when it is of another run (different settings, model or data: e.g. the nightly
/// run after new captures; logged), to start over.
pub fn resume<S, E>(
    out: &Path,
    params: &Params,
    opt: &mut AdamW,
    prior: Option<RunState<S, E>>,
    fingerprint: &str,
) -> anyhow::Result<Option<RunState<S, E>>> {
    let Some(state) = prior else {
        return Ok(None);
    };
    if state.fingerprint != fingerprint {
        tracing::warn!(
            "the checkpoint in {} is of another run (settings, model or data changed); \
             starting over",
            out.display()
        );
        return Ok(None);
    }
    let dir = dir(out);
    let device = params.device();
    let tensors = candle_core::safetensors::load(dir.join("params.safetensors"), &device)?;
    params.restore(&tensors.into_iter().collect())?;
    let moments: BTreeMap<String, Tensor> =
        candle_core::safetensors::load(dir.join("optimizer.safetensors"), &device)?
            .into_iter()
            .collect();
    opt.restore(&moments, state.step as u64)?;
    tracing::info!(step = state.step, "resumed from checkpoint");
    Ok(Some(state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_between_the_renames_leaves_the_previous_checkpoint_to_resume_from() {
        let out = tempfile::tempdir().unwrap();
        let state = RunState::<u32, u32> {
            fingerprint: "f".into(),
            step: 40,
            history: vec![1, 2],
            evals: vec![3],
            train_seconds: 1.5,
            windows: vec!["000001".into()],
        };
        // What `save` leaves when the power goes after its first rename: the last whole
        // checkpoint as checkpoint.old, the new one still checkpoint.tmp, no checkpoint/.
        let old = out.path().join("checkpoint.old");
        std::fs::create_dir_all(&old).unwrap();
        write_json(&old.join("state.json"), &state).unwrap();
        std::fs::create_dir_all(out.path().join("checkpoint.tmp")).unwrap();
        let found = read_state::<u32, u32>(out.path(), true).unwrap();
        assert_eq!(found, Some(state));
        assert!(dir(out.path()).join("state.json").is_file());
        assert!(!old.exists());
        // Without --resume the restored checkpoint is refused like any other.
        assert!(read_state::<u32, u32>(out.path(), false).is_err());
    }
}
