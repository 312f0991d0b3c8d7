//! The student being trained: one optimiser step at a time on the training windows, and its
//! agreement with the teacher on the held-out ones.

use std::sync::Arc;

use anyhow::bail;
use candle_core::{DType, Tensor};

use super::Teacher;
use super::checkpoint::StepRecord;
use super::loss::{Agreement, AgreementSum, LossParts, distillation_loss};
use super::settings::Settings;
use super::student::Student;
use crate::model::EmotionClipConfig;
use crate::model::preprocess::EncoderCrop;
use crate::train::cache::{Targets, video_and_hint};
use crate::train::data::{WindowSource, batch_indices, load_windows};
use crate::train::optim::AdamW;
use crate::train::zero_shot::ZeroShot;

/// The student, its optimiser and what it learns to reproduce.
pub struct Trainer<'a> {
    pub student: Student,
    pub opt: AdamW,
    zero_shot: ZeroShot,
    /// The teacher's targets of every window of `source`.
    targets: Vec<Targets>,
    teacher: &'a Teacher,
    source: &'a dyn WindowSource,
    settings: &'a Settings,
}

/// The student against the teacher on some windows.
struct Pass {
    /// Video embeddings [B, E] of the student and of the teacher.
    video: Tensor,
    t_video: Tensor,
    /// The distillation loss and its parts.
    loss: Tensor,
    parts: LossParts,
}

/// A student forward pass: video embeddings [B, E] and frame hints [B, T, teacher width].
fn student_forward(
    student: &Student,
    windows: &[Vec<EncoderCrop>],
) -> candle_core::Result<(Tensor, Tensor)> {
    let (video, hint) = video_and_hint(&student.model, windows)?;
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

fn to_rows(t: &Tensor) -> candle_core::Result<Vec<Vec<f32>>> {
    t.to_dtype(DType::F32)?.to_vec2::<f32>()
}

impl<'a> Trainer<'a> {
    /// A student of `student_cfg` initialised from the teacher's layers (fresh tensors from
    /// the settings' seed), learning `targets` of the windows of `source`.
    pub fn new(
        teacher: &'a Teacher,
        source: &'a dyn WindowSource,
        settings: &'a Settings,
        student_cfg: &EmotionClipConfig,
        targets: Vec<Targets>,
    ) -> anyhow::Result<Self> {
        let device = teacher.model.device().clone();
        let student = Student::init(
            student_cfg,
            teacher.model.config(),
            Arc::clone(&teacher.tensors),
            settings.seed,
            &device,
        )?;
        let opt = AdamW::new(student.params.vars(), settings.adamw)?;
        let zero_shot = ZeroShot::new(&teacher.readout, &device)?;
        Ok(Self {
            student,
            opt,
            zero_shot,
            targets,
            teacher,
            source,
            settings,
        })
    }

    /// The student against the teacher on the windows `indices`.
    fn pass(&self, indices: &[usize]) -> anyhow::Result<Pass> {
        let windows = load_windows(self.source, indices)?;
        let (video, hint) = student_forward(&self.student, &windows)?;
        let (t_video, t_hint) = stack_targets(&self.targets, indices)?;
        let (loss, parts) = distillation_loss(
            &self.settings.loss,
            &self.zero_shot,
            &video,
            &hint,
            &t_video,
            &t_hint,
        )?;
        Ok(Pass {
            video,
            t_video,
            loss,
            parts,
        })
    }

    /// One optimiser step on the windows of training step `step` (drawn from `train`).
    pub fn step(&mut self, train: &[usize], step: usize) -> anyhow::Result<StepRecord> {
        let settings = self.settings;
        let indices = batch_indices(train, step, settings.batch, settings.seed);
        let Pass { loss, parts, .. } = self.pass(&indices)?;
        if !parts.total.is_finite() {
            bail!("the loss diverged at step {step} ({parts:?}); lower --lr")
        }
        let grads = loss.backward()?;
        let lr = settings.schedule.lr(step);
        self.opt.step(&grads, lr)?;
        Ok(StepRecord {
            step,
            lr,
            loss: parts,
        })
    }

    /// The held-out agreement of the student on the windows `val`.
    pub fn evaluate(&self, val: &[usize]) -> anyhow::Result<Agreement> {
        let mut sum = AgreementSum::default();
        for chunk in val.chunks(self.settings.batch.max(1)) {
            let pass = self.pass(chunk)?;
            sum.add(
                &self.teacher.readout,
                &to_rows(&pass.video.detach())?,
                &to_rows(&pass.t_video)?,
                pass.parts,
            );
        }
        Ok(sum.finish())
    }
}
