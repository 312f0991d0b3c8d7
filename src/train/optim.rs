//! AdamW (Loshchilov & Hutter 2019) with linear warm-up and cosine decay.
//!
//! candle-nn's `AdamW` keeps its moment estimates private, so a checkpoint could not hold
//! them and `--resume` would restart the moments from zero. This one is the same update
//! (bias-corrected moments, decoupled weight decay) with its state exposed for checkpoints,
//! so a resumed run continues bit for bit.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var, bail};

/// Hyperparameters of the update.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.05,
        }
    }
}

impl AdamWConfig {
    /// The defaults with decoupled weight decay `weight_decay`.
    pub fn with_weight_decay(weight_decay: f64) -> Self {
        Self {
            weight_decay,
            ..Self::default()
        }
    }
}

struct Slot {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
    decay: bool,
}

pub struct AdamW {
    slots: Vec<Slot>,
    steps: u64,
    cfg: AdamWConfig,
}

/// Weight decay applies to matrices only, not to norms, biases and embeddings (the usual
/// ViT recipe).
fn decays(name: &str, var: &Var) -> bool {
    var.rank() >= 2 && !name.contains("embedding")
}

impl AdamW {
    /// Optimises `vars` (name, var) in the order given.
    pub fn new(vars: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        let slots = vars
            .into_iter()
            .map(|(name, var)| {
                Ok(Slot {
                    decay: decays(&name, &var),
                    m: var.zeros_like()?,
                    v: var.zeros_like()?,
                    name,
                    var,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            slots,
            steps: 0,
            cfg,
        })
    }

    /// Updates taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// One update at learning rate `lr`. Parameters without a gradient keep their value
    /// and moments.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.steps += 1;
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.cfg;
        let t = self.steps as i32;
        let (c1, c2) = (1.0 - beta1.powi(t), 1.0 - beta2.powi(t));
        for slot in &mut self.slots {
            let Some(g) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            // Detached: a gradient carries the op graph of the backward pass (which holds
            // the step's activations); moments that kept it would keep every step's graph.
            let g = g.detach();
            slot.m = ((&slot.m * beta1)? + (&g * (1.0 - beta1))?)?.detach();
            slot.v = ((&slot.v * beta2)? + (g.sqr()? * (1.0 - beta2))?)?.detach();
            let update = ((&slot.m / c1)? / ((&slot.v / c2)?.sqrt()? + eps)?)?;
            let theta = slot.var.as_tensor();
            let theta = if slot.decay {
                (theta * (1.0 - lr * weight_decay))?
            } else {
                theta.clone()
            };
            slot.var.set(&(theta - (update * lr)?)?)?;
        }
        Ok(())
    }

    /// The moments by `m.<name>` / `v.<name>`, for a checkpoint.
    pub fn state(&self) -> BTreeMap<String, Tensor> {
        self.slots
            .iter()
            .flat_map(|s| {
                [
                    (format!("m.{}", s.name), s.m.clone()),
                    (format!("v.{}", s.name), s.v.clone()),
                ]
            })
            .collect()
    }

    /// Restores the moments and the step count saved by `state`.
    pub fn restore(&mut self, state: &BTreeMap<String, Tensor>, steps: u64) -> Result<()> {
        for slot in &mut self.slots {
            let (Some(m), Some(v)) = (
                state.get(&format!("m.{}", slot.name)),
                state.get(&format!("v.{}", slot.name)),
            ) else {
                bail!("optimiser state lacks {}", slot.name)
            };
            let dev = slot.var.device();
            slot.m = m.to_device(dev)?;
            slot.v = v.to_device(dev)?;
        }
        self.steps = steps;
        Ok(())
    }
}

/// Linear warm-up from 0 to `peak` over `warmup` steps, then cosine decay to `peak * floor`
/// at `total`.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Schedule {
    pub peak: f64,
    pub warmup: usize,
    pub total: usize,
    pub floor: f64,
}

impl Schedule {
    /// Warm-up over `warmup` steps (at most the run's) to `peak`, then decay to
    /// `peak * floor` at step `total`.
    pub fn new(peak: f64, warmup: usize, total: usize, floor: f64) -> Self {
        Self {
            peak,
            warmup: warmup.min(total),
            total,
            floor,
        }
    }

    /// The learning rate of step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.peak * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((step - self.warmup) as f64 / span).min(1.0);
        let low = self.peak * self.floor;
        low + 0.5 * (self.peak - low) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let s = Schedule {
            peak: 1e-3,
            warmup: 10,
            total: 110,
            floor: 0.1,
        };
        assert!((s.lr(0) - 1e-4).abs() < 1e-12);
        assert!((s.lr(9) - 1e-3).abs() < 1e-12);
        assert!((s.lr(60) - 0.55e-3).abs() < 1e-9);
        assert!((s.lr(110) - 1e-4).abs() < 1e-12);
        assert!(s.lr(30) > s.lr(31));
    }

    #[test]
    fn adamw_minimises_a_quadratic_and_restores_bit_for_bit() -> Result<()> {
        let dev = Device::Cpu;
        let target = Tensor::new(&[[1.0f32, -2.0], [0.5, 3.0]], &dev)?;
        let run = |steps: usize, resume_at: Option<usize>| -> Result<Vec<f32>> {
            let mut w = Var::zeros((2, 2), candle_core::DType::F32, &dev)?;
            let cfg = AdamWConfig {
                weight_decay: 0.0,
                ..Default::default()
            };
            let mut opt = AdamW::new(vec![("w".into(), w.clone())], cfg)?;
            for i in 0..steps {
                if Some(i) == resume_at {
                    // What a checkpoint holds, restored into fresh objects.
                    let (state, n) = (opt.state(), opt.steps());
                    w = Var::from_tensor(&w.as_tensor().copy()?)?;
                    opt = AdamW::new(vec![("w".into(), w.clone())], cfg)?;
                    opt.restore(&state, n)?;
                }
                let loss = (w.as_tensor() - &target)?.sqr()?.sum_all()?;
                opt.step(&loss.backward()?, 0.05)?;
            }
            w.as_tensor().flatten_all()?.to_vec1::<f32>()
        };
        let straight = run(400, None)?;
        // The moments must not hold on to the graphs of past steps (memory would grow with
        // every step).
        let w = Var::zeros(3, candle_core::DType::F32, &dev)?;
        let mut opt = AdamW::new(vec![("w".into(), w.clone())], AdamWConfig::default())?;
        let loss = (w.as_tensor().exp()? * 2.0)?.sum_all()?;
        opt.step(&loss.backward()?, 0.1)?;
        assert!(opt.state().values().all(|t| !t.track_op()));
        for (got, want) in straight.iter().zip([1.0f32, -2.0, 0.5, 3.0]) {
            assert!((got - want).abs() < 1e-2, "{got} vs {want}");
        }
        assert_eq!(straight, run(400, Some(150))?);
        Ok(())
    }
}
