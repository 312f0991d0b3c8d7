//! Where the parameters come from: a `.safetensors` file or the official release `.pt`
//! (a PyTorch zip pickle whose `model` entry is the state dict), both with the official key
//! names; or seeded random values for running without the checkpoint.
//!
//! Loading goes through a checking backend: every key the model asks for is looked up, and
//! all missing or mis-shaped keys are reported together in one error.

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Shape, Tensor, bail};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, init::NormalOrUniform};

use super::Error;

/// The two checkpoint containers, told apart by their first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFormat {
    Safetensors,
    /// `torch.save` zip archive (`.pt`, `.pth`).
    Pytorch,
}

impl CheckpointFormat {
    pub fn sniff(path: &Path) -> std::io::Result<Self> {
        let mut magic = [0u8; 4];
        let mut file = std::fs::File::open(path)?;
        let n = file.read(&mut magic)?;
        Ok(if n == 4 && magic == *b"PK\x03\x04" {
            Self::Pytorch
        } else {
            Self::Safetensors
        })
    }
}

#[derive(Default)]
struct Problems {
    requested: HashSet<String>,
    missing: Vec<(String, Vec<usize>)>,
    mis_shaped: Vec<(String, Vec<usize>, Vec<usize>)>,
}

/// State-dict entries the model legitimately does not read: buffers (`position_ids`, the
/// text `attn_mask` of older exports) and the second copy of `logit_scale`.
const IGNORED_KEYS: [&str; 3] = [
    "visual_head.position_ids",
    "backbone.logit_scale",
    "backbone.attn_mask",
];

/// Serves tensors from a checkpoint and records, instead of failing on, the first missing
/// or mis-shaped key: the model is still built (with zeros) so that every problem is listed.
struct Checked {
    source: Box<dyn SimpleBackend>,
    names: HashSet<String>,
    problems: Arc<Mutex<Problems>>,
}

impl SimpleBackend for Checked {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        self.problems
            .lock()
            .expect("problems lock")
            .requested
            .insert(name.to_owned());
        if !self.names.contains(name) {
            let mut p = self.problems.lock().expect("problems lock");
            p.missing.push((name.to_owned(), s.dims().to_vec()));
            return Tensor::zeros(s, dtype, dev);
        }
        let t = self.source.get_unchecked(name, dtype, dev)?;
        if t.shape() != &s {
            let mut p = self.problems.lock().expect("problems lock");
            p.mis_shaped
                .push((name.to_owned(), s.dims().to_vec(), t.dims().to_vec()));
            return Tensor::zeros(s, dtype, dev);
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        self.source.get_unchecked(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.names.contains(name)
    }
}

/// A checkpoint opened for building a model.
pub struct Checkpoint {
    path: std::path::PathBuf,
    format: CheckpointFormat,
    source: Option<(Box<dyn SimpleBackend>, HashSet<String>)>,
    problems: Arc<Mutex<Problems>>,
}

impl Checkpoint {
    /// Opens `path` (safetensors, or a PyTorch `.pt` whose `model` entry is the state dict;
    /// a bare state-dict `.pt` works too). Tensors are read lazily.
    pub fn open(path: &Path) -> std::result::Result<Self, Error> {
        let format = CheckpointFormat::sniff(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        let read_err = |source| Error::CheckpointRead {
            path: path.to_owned(),
            source,
        };
        let (source, names): (Box<dyn SimpleBackend>, HashSet<String>) = match format {
            CheckpointFormat::Safetensors => {
                // SAFETY: the file is mapped read-only and not modified by this process; a
                // checkpoint rewritten underneath a running daemon is outside our contract.
                let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }
                    .map_err(read_err)?;
                let names = st.tensors().into_iter().map(|(k, _)| k).collect();
                (Box::new(st), names)
            }
            CheckpointFormat::Pytorch => {
                let mut pth = candle_core::pickle::PthTensors::new(path, Some("model"));
                if pth.as_ref().map_or(true, |p| p.tensor_infos().is_empty()) {
                    // Not the trainer's layout: maybe a bare state dict.
                    if let Ok(bare) = candle_core::pickle::PthTensors::new(path, None)
                        && !bare.tensor_infos().is_empty()
                    {
                        pth = Ok(bare);
                    }
                }
                let pth = pth.map_err(read_err)?;
                let names = pth.tensor_infos().keys().cloned().collect();
                (Box::new(pth), names)
            }
        };
        Ok(Self {
            path: path.to_owned(),
            format,
            source: Some((source, names)),
            problems: Arc::default(),
        })
    }

    /// Every tensor of the checkpoint by name, in `dtype` on `device` (to initialise a
    /// student from the teacher's layers).
    pub fn tensors(
        mut self,
        dtype: DType,
        device: &Device,
    ) -> std::result::Result<std::collections::BTreeMap<String, Tensor>, Error> {
        let (source, names) = self.source.take().expect("checkpoint used once");
        names
            .into_iter()
            .map(|name| {
                let t = source.get_unchecked(&name, dtype, device);
                t.map(|t| (name, t))
            })
            .collect::<Result<_>>()
            .map_err(|source| Error::CheckpointRead {
                path: self.path.clone(),
                source,
            })
    }

    pub fn format(&self) -> CheckpointFormat {
        self.format
    }

    /// Builds a model from this checkpoint with `build`, then fails with every missing,
    /// mis-shaped or unexpected key if there were any (the official code loads strictly:
    /// an unread key means the config does not describe this checkpoint, e.g. fewer layers).
    pub fn build<T>(
        mut self,
        dtype: DType,
        device: &Device,
        build: impl FnOnce(VarBuilder<'static>) -> Result<T>,
    ) -> std::result::Result<T, Error> {
        let (source, names) = self.source.take().expect("checkpoint used once");
        let all_names = names.clone();
        let backend = Checked {
            source,
            names,
            problems: self.problems.clone(),
        };
        let vb = VarBuilder::from_backend(Box::new(backend), dtype, device.clone());
        let built = build(vb);
        let problems = std::mem::take(&mut *self.problems.lock().expect("problems lock"));
        let mut unexpected: Vec<String> = all_names
            .into_iter()
            .filter(|k| !problems.requested.contains(k) && !IGNORED_KEYS.contains(&k.as_str()))
            .collect();
        unexpected.sort();
        if !problems.missing.is_empty() || !problems.mis_shaped.is_empty() || !unexpected.is_empty()
        {
            return Err(Error::CheckpointMismatch {
                path: self.path,
                missing: problems.missing,
                mis_shaped: problems.mis_shaped,
                unexpected,
            });
        }
        built.map_err(|source| Error::CheckpointRead {
            path: self.path,
            source,
        })
    }
}

/// Deterministic random parameters: each tensor drawn from its init hint with a generator
/// seeded by (seed, key name), so values do not depend on build order.
struct Seeded {
    seed: u64,
}

impl SimpleBackend for Seeded {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let n = s.elem_count();
        let mut rng = SplitMix64(self.seed ^ fnv1a(name.as_bytes()));
        let normal = |rng: &mut SplitMix64, mean: f64, std: f64| -> Vec<f32> {
            let mut v = Vec::with_capacity(n + 1);
            while v.len() < n {
                let (a, b) = rng.normal_pair();
                v.push((mean + std * a) as f32);
                v.push((mean + std * b) as f32);
            }
            v.truncate(n);
            v
        };
        let uniform = |rng: &mut SplitMix64, lo: f64, up: f64| -> Vec<f32> {
            (0..n)
                .map(|_| (lo + (up - lo) * rng.unit()) as f32)
                .collect()
        };
        let values = match h {
            Init::Const(v) => vec![v as f32; n],
            Init::Randn { mean, stdev } => normal(&mut rng, mean, stdev),
            Init::Uniform { lo, up } => uniform(&mut rng, lo, up),
            Init::Kaiming {
                dist,
                fan,
                non_linearity,
            } => {
                let std = non_linearity.gain() / (fan.for_shape(&s) as f64).sqrt();
                match dist {
                    NormalOrUniform::Normal => normal(&mut rng, 0., std),
                    NormalOrUniform::Uniform => {
                        let bound = 3f64.sqrt() * std;
                        uniform(&mut rng, -bound, bound)
                    }
                }
            }
        };
        Tensor::from_vec(values, s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> Result<Tensor> {
        bail!("random weights have no shape for {name}")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// The seeded random tensor `name` would get from `seeded_var_builder(seed, ..)`.
pub fn seeded_tensor(
    seed: u64,
    name: &str,
    shape: &Shape,
    hint: Init,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    Seeded { seed }.get(shape.clone(), name, hint, dtype, device)
}

/// Records every tensor a model asks its backend for (to name the tensors of a seeded model).
struct Recording {
    inner: Seeded,
    seen: Arc<Mutex<std::collections::BTreeMap<String, Tensor>>>,
}

impl SimpleBackend for Recording {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let t = self.inner.get(s, name, h, dtype, dev)?;
        self.seen
            .lock()
            .expect("recording lock")
            .insert(name.to_owned(), t.clone());
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        self.inner.get_unchecked(name, dtype, dev)
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// Builds a model from seeded random tensors (as `seeded_var_builder`) and returns it with
/// every tensor it took, by name.
pub fn build_seeded<T>(
    seed: u64,
    dtype: DType,
    device: &Device,
    build: impl FnOnce(VarBuilder<'static>) -> Result<T>,
) -> Result<(T, std::collections::BTreeMap<String, Tensor>)> {
    let seen = Arc::new(Mutex::new(std::collections::BTreeMap::new()));
    let backend = Recording {
        inner: Seeded { seed },
        seen: Arc::clone(&seen),
    };
    let built = build(VarBuilder::from_backend(
        Box::new(backend),
        dtype,
        device.clone(),
    ))?;
    let tensors = std::mem::take(&mut *seen.lock().expect("recording lock"));
    Ok((built, tensors))
}

/// A `VarBuilder` that hands out seeded random tensors (see `EmotionClip::random`).
pub fn seeded_var_builder(seed: u64, dtype: DType, device: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(Seeded { seed }), dtype, device.clone())
}

pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// SplitMix64 (Steele et al. 2014): small, fast, good enough for weight init.
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Two independent standard normals (Box-Muller).
    fn normal_pair(&mut self) -> (f64, f64) {
        let u1 = 1.0 - self.unit();
        let u2 = self.unit();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
        (r * c, r * s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_tensors_depend_on_seed_and_name_only() {
        let dev = Device::Cpu;
        let a = seeded_var_builder(7, DType::F32, &dev);
        let b = seeded_var_builder(7, DType::F32, &dev);
        let hint = Init::Randn {
            mean: 0.,
            stdev: 1.,
        };
        let x = a
            .get_with_hints(16, "k", hint)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let _ = b.get_with_hints(16, "other", hint).unwrap();
        let y = b
            .get_with_hints(16, "k", hint)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(x, y);
        let z = seeded_var_builder(8, DType::F32, &dev)
            .get_with_hints(16, "k", hint)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_ne!(x, z);
        let mean = x.iter().sum::<f32>() / 16.0;
        assert!(mean.abs() < 1.0 && x.iter().all(|v| v.is_finite()));
    }
}
