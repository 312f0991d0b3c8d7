//! A model being trained: built from the tensors of another (the teacher, or the served model
//! itself), with some tensors trainable `Var`s and the others frozen and shared.
//!
//! [`build`] hands the tensors out while the model's own constructor walks its checkpoint
//! keys: each name is mapped to its source tensor by a [`Layout`]; a frozen one is shared
//! with the source (it must exist there), a trainable one is a copy of it (or, when the source
//! has no tensor of that shape, drawn from the model's init hints with the run's seed).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use candle_core::{DType, Device, Result, Shape, Tensor, Var, bail};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use crate::model::weights::seeded_tensor;
use crate::model::{EmotionClip, EmotionClipConfig};
use crate::train::atomic::write_atomic;
use crate::train::checkpoint::write_json;

/// Where each tensor of the model being built comes from, and whether it trains.
pub trait Layout: Send + Sync {
    /// The name of the source tensor that `name` starts from.
    fn source_name(&self, name: &str) -> String;
    /// Whether `name` is shared with the source and never trained.
    fn is_frozen(&self, name: &str) -> bool;
}

/// A model's tensors by name: trainable ones as `Var`s, frozen ones shared with the source.
#[derive(Default)]
pub struct Params {
    pub trainable: BTreeMap<String, Var>,
    pub frozen: BTreeMap<String, Tensor>,
}

impl Params {
    /// Trainable parameters in name order (the optimiser's order).
    pub fn vars(&self) -> Vec<(String, Var)> {
        self.trainable
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Number of trainable scalars.
    pub fn trainable_count(&self) -> usize {
        self.trainable.values().map(|v| v.elem_count()).sum()
    }

    /// Trainable tensors by name (for checkpoints).
    pub fn trainable_tensors(&self) -> BTreeMap<String, Tensor> {
        self.trainable
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// The device the trainable tensors live on.
    pub fn device(&self) -> Device {
        self.trainable
            .values()
            .next()
            .map_or(Device::Cpu, |v| v.device().clone())
    }

    /// Overwrites every trainable tensor with the one of the same name in `tensors`.
    pub fn restore(&self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        for (name, var) in &self.trainable {
            let Some(t) = tensors.get(name) else {
                bail!("checkpoint lacks {name}")
            };
            var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
        }
        Ok(())
    }

    /// The model as a standalone EmotionCLIP checkpoint: every tensor `is_model` accepts,
    /// frozen ones included (a run's own extra tensors are left out).
    pub fn export(&self, path: &Path, is_model: impl Fn(&str) -> bool) -> Result<()> {
        let mut all: BTreeMap<String, Tensor> = self
            .trainable
            .iter()
            .filter(|(k, _)| is_model(k))
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        all.extend(
            self.frozen
                .iter()
                .filter(|(k, _)| is_model(k))
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        let all: Vec<(String, Tensor)> = all.into_iter().collect();
        candle_core::safetensors::save(&all.into_iter().collect(), path)
    }
}

/// Hands out the model's tensors while it is built, creating each on first request.
struct InitBackend {
    source: Arc<BTreeMap<String, Tensor>>,
    layout: Box<dyn Layout>,
    seed: u64,
    params: Arc<Mutex<Params>>,
}

impl SimpleBackend for InitBackend {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut params = self.params.lock().expect("params lock");
        if let Some(v) = params.trainable.get(name) {
            return Ok(v.as_tensor().clone());
        }
        if let Some(t) = params.frozen.get(name) {
            return Ok(t.clone());
        }
        let source = self
            .source
            .get(&self.layout.source_name(name))
            .filter(|t| t.shape() == &s);
        if self.layout.is_frozen(name) {
            let Some(t) = source else {
                bail!("the source model has no {name} of shape {s:?} to share")
            };
            params.frozen.insert(name.to_owned(), t.clone());
            return Ok(t.clone());
        }
        // A copy: the updates must never write into the source's storage.
        let init = match source {
            Some(t) => t.to_dtype(dtype)?.to_device(dev)?.copy()?,
            None => seeded_tensor(self.seed, name, &s, h, dtype, dev)?,
        };
        let var = Var::from_tensor(&init)?;
        let t = var.as_tensor().clone();
        params.trainable.insert(name.to_owned(), var);
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> Result<Tensor> {
        bail!("parameter {name} requested without a shape")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// Builds `T` with `build` from a `VarBuilder` that hands out the tensors of `source` as
/// `layout` says (f32 on `device`); returns it with its parameters.
pub fn build<T>(
    source: Arc<BTreeMap<String, Tensor>>,
    layout: Box<dyn Layout>,
    seed: u64,
    device: &Device,
    build: impl FnOnce(VarBuilder) -> Result<T>,
) -> Result<(T, Params)> {
    let params = Arc::new(Mutex::new(Params::default()));
    let backend = InitBackend {
        source,
        layout,
        seed,
        params: Arc::clone(&params),
    };
    let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone());
    let built = build(vb)?;
    let params = std::mem::take(&mut *params.lock().expect("params lock"));
    Ok((built, params))
}

/// Writes the model of `params` as `out/<file>` with its `config.json` (under temporary
/// names, renamed: a reloading daemon never reads half a file), then loads it back as the
/// daemon will, proving it serves: the weights path and the served model.
pub fn export_servable(
    out: &Path,
    file: &str,
    params: &Params,
    is_model: impl Fn(&str) -> bool,
    cfg: &EmotionClipConfig,
    device: &Device,
) -> anyhow::Result<(PathBuf, EmotionClip)> {
    let weights = out.join(file);
    write_atomic(&weights, |tmp| Ok(params.export(tmp, is_model)?))?;
    write_json(&out.join("config.json"), cfg)?;
    let served = EmotionClip::load(&weights, cfg, device)
        .with_context(|| format!("re-loading the exported {}", weights.display()))?;
    Ok((weights, served))
}
