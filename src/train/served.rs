//! The model a training command starts from: the daemon's `[model]` (with command-line
//! overrides) loaded as the daemon serves it, with its named tensors, its identity and its
//! read-out. `distill` learns a student from it (the teacher); `adapt` fine-tunes it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Tensor};

use crate::encode::{ModelConfig, ModelDevice};
use crate::model::EmotionClip;
use crate::readout::{Readout, ReadoutConfig};

/// The served model: its network, its tensors by name, its identity and its read-out.
pub struct Served {
    pub model: EmotionClip,
    pub tensors: Arc<BTreeMap<String, Tensor>>,
    pub weights: PathBuf,
    pub sha256: String,
    pub readout: Readout,
}

impl Served {
    /// The model `[model]` describes, as the daemon would serve it (`encode::load_encoder`):
    /// the weights file, or the seeded random weights of `allow_untrained` (whose identity is
    /// then `untrained-seed-N`).
    pub fn load(model: &ModelConfig, readout: &ReadoutConfig) -> Result<Self, crate::model::Error> {
        let (clip, digest) = crate::encode::load_encoder(model)?;
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
                    "the model trained from is the UNTRAINED seeded model of allow_untrained: \
                     what is learnt from it means nothing (fine for a demo)"
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
        let readout = crate::encode::build_readout(&clip, readout)?;
        Ok(Self {
            model: clip,
            tensors: Arc::new(tensors),
            weights,
            sha256,
            readout,
        })
    }

    /// Names caches of the model's outputs: its weights digest and config.
    pub fn cache_key(&self) -> anyhow::Result<String> {
        use sha2::{Digest, Sha256};
        let cfg = serde_json::to_vec(self.model.config())?;
        let digest = hex::encode(
            Sha256::new()
                .chain_update(self.sha256.as_bytes())
                .chain_update(cfg)
                .finalize(),
        );
        Ok(digest[..16].to_owned())
    }
}

/// `--device`.
#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum DeviceArg {
    Cpu,
    Cuda,
}

/// Where a training command takes its model from.
pub struct ModelSource<'a> {
    /// The daemon config (`--config`): its `[model]` and `[readout]`.
    pub config: Option<&'a Path>,
    /// Overrides `[model] weights`.
    pub weights: Option<&'a Path>,
    /// Overrides `[model] config`.
    pub hparams: Option<&'a Path>,
    /// Overrides `[model] device`.
    pub device: Option<DeviceArg>,
    /// What the model is to the command ("teacher") and the option naming its weights
    /// ("--teacher"), for messages.
    pub role: &'a str,
    pub weights_flag: &'a str,
}

impl ModelSource<'_> {
    /// `[model]` and `[readout]` from `--config` (default: the ViT-B/32 preset and the built-in
    /// classes) with the command-line overrides; errors are usage errors.
    pub fn resolve(&self) -> anyhow::Result<(ModelConfig, ReadoutConfig)> {
        let (mut model, readout) = match self.config {
            Some(path) => {
                let config = crate::config::Config::load(path)?;
                let Some(model) = config.model.clone() else {
                    anyhow::bail!(
                        "{}: no [model] section to take the {} from",
                        path.display(),
                        self.role
                    )
                };
                (model, config.readout.clone())
            }
            None => (toml::from_str::<ModelConfig>("")?, ReadoutConfig::default()),
        };
        if let Some(w) = self.weights {
            model.weights = Some(w.to_owned());
            model.allow_untrained = false;
        }
        if let Some(c) = self.hparams {
            model.config = Some(c.to_owned());
        }
        if model.weights.is_none() && !model.allow_untrained {
            anyhow::bail!(
                "no {}: pass {} (or --config naming [model] weights)",
                self.role,
                self.weights_flag
            )
        }
        if let Some(w) = model.weights_to_load()
            && !w.is_file()
        {
            anyhow::bail!("{} {}: no such file", self.weights_flag, w.display())
        }
        match self.device {
            Some(DeviceArg::Cuda) => model.device = ModelDevice::Cuda,
            Some(DeviceArg::Cpu) => model.device = ModelDevice::Cpu,
            None => {}
        }
        if model.device == ModelDevice::Cuda && !cfg!(feature = "candle-cuda") {
            anyhow::bail!(
                "device cuda: this build has no candle CUDA (cargo feature `candle-cuda`)"
            )
        }
        Ok((model, readout))
    }
}
