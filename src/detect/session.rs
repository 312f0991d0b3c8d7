//! The [`Detector`]: one ONNX Runtime session and the frames-to-persons path around it
//! (letterbox into a batch tensor, run, decode, NMS, back to frame pixels).

use std::path::PathBuf;

use ort::session::Session;
use ort::value::TensorRef;

use crate::types::{Detection, Frame};

use super::Error;
use super::config::{DetectConfig, Provider};
use super::decode::{self, DecodeParams};
use super::letterbox::{Letterbox, Preprocessor};
use super::manifest::Manifest;
use super::runtime;

/// What `affectd check` learns about the engine.
#[derive(Debug, Clone)]
pub struct ProbeReport {
    pub model: PathBuf,
    pub sha256: String,
    pub provider: Provider,
    pub input_shape: Vec<i64>,
    pub output_shapes: Vec<Vec<i64>>,
}

/// A person detector: one ONNX Runtime session, owned by one thread.
pub struct Detector {
    session: Session,
    manifest: Manifest,
    provider: Provider,
    pre: Preprocessor,
    /// Input tensor storage for up to `max_batch` frames; grows once, then is reused.
    input: Vec<f32>,
    /// Frames per run: 1 for fixed-batch models.
    max_batch: usize,
    params: DecodeParams,
    iou: f32,
    max_detections: usize,
    bad_frames: u64,
    letterboxes: Vec<Letterbox>,
    /// Shapes of the last run's outputs (for [`Detector::probe`]); reused between runs.
    output_shapes: Vec<Vec<i64>>,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector")
            .field("model", &self.manifest.model)
            .field("provider", &self.provider)
            .field("max_batch", &self.max_batch)
            .finish_non_exhaustive()
    }
}

impl Detector {
    /// Loads the manifest, checks the model file against its sha256 (a bad copy or a file
    /// cut short is refused here, naming it, not run; hashing the bundled model takes tens of
    /// milliseconds) and opens the session.
    pub fn new(cfg: &DetectConfig) -> Result<Detector, Error> {
        let manifest = Manifest::load(&cfg.engine)?;
        let model = manifest.model_path();
        if !model.is_file() {
            return Err(Error::io(
                &model,
                std::io::Error::new(std::io::ErrorKind::NotFound, "model file not found"),
            ));
        }
        manifest.verify_model()?;
        let (session, provider) = runtime::open_session(cfg, &model)?;
        let input_shape = input_shape(&session).ok_or_else(|| Error::Shape {
            problem: "the model has no tensor input".into(),
        })?;
        let expect = [3, manifest.input_height as i64, manifest.input_width as i64];
        if input_shape.len() != 4 || input_shape[1..] != expect {
            return Err(Error::Shape {
                problem: format!(
                    "model input is {input_shape:?}, the manifest says [N, {}, {}, {}]",
                    expect[0], expect[1], expect[2]
                ),
            });
        }
        let max_batch = if input_shape[0] < 0 { cfg.max_batch } else { 1 };
        tracing::info!(
            model = %model.display(),
            provider = provider.name(),
            max_batch,
            "person detector ready"
        );
        let pre = Preprocessor::new(&manifest);
        Ok(Detector {
            session,
            params: DecodeParams {
                num_classes: manifest.num_classes,
                person_class: manifest.person_class,
                threshold: cfg.confidence,
            },
            manifest,
            provider,
            input: Vec::new(),
            max_batch,
            pre,
            iou: cfg.iou,
            max_detections: cfg.max_detections,
            bad_frames: 0,
            letterboxes: Vec::new(),
            output_shapes: Vec::new(),
        })
    }

    /// The execution provider in use.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// The engine manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Frames dropped because their pixel buffer did not match their size.
    pub fn bad_frames(&self) -> u64 {
        self.bad_frames
    }

    /// Persons in each frame, in frame pixels, best first. Frames go through the model in
    /// batches when its batch dimension is dynamic, else one at a time. A malformed frame is
    /// counted and gets an empty list.
    pub fn run(&mut self, frames: &[&Frame]) -> Result<Vec<Vec<Detection>>, Error> {
        let mut results = Vec::with_capacity(frames.len());
        for chunk in frames.chunks(self.max_batch) {
            self.run_batch(chunk, &mut results)?;
        }
        Ok(results)
    }

    fn run_batch(
        &mut self,
        frames: &[&Frame],
        results: &mut Vec<Vec<Detection>>,
    ) -> Result<(), Error> {
        let plane = self.pre.plane_len();
        let first = results.len();
        // Frames that letterbox cleanly go into the tensor; bad ones get an empty result.
        let mut good: Vec<usize> = Vec::with_capacity(frames.len());
        if self.input.len() < plane * frames.len() {
            self.input.resize(plane * frames.len(), 0.0);
        }
        self.letterboxes.clear();
        for (i, f) in frames.iter().enumerate() {
            let slot = good.len();
            match self
                .pre
                .fill(f, &mut self.input[slot * plane..(slot + 1) * plane])
            {
                Ok(lb) => {
                    good.push(i);
                    self.letterboxes.push(lb);
                }
                Err(e) => {
                    self.bad_frames += 1;
                    tracing::debug!(camera = %f.camera, seq = f.seq, error = %e, "frame dropped");
                }
            }
            results.push(Vec::new());
        }
        if good.is_empty() {
            return Ok(());
        }
        let shape = [
            good.len(),
            3,
            self.manifest.input_height as usize,
            self.manifest.input_width as usize,
        ];
        let tensor = TensorRef::from_array_view((shape, &self.input[..plane * good.len()]))?;
        let outputs = self.session.run(ort::inputs![tensor])?;
        let mut views: Vec<(&[i64], &[f32])> = Vec::with_capacity(outputs.len());
        for i in 0..outputs.len() {
            let (s, d) = outputs[i].try_extract_tensor::<f32>()?;
            views.push((&s[..], d));
        }
        self.output_shapes.resize_with(views.len(), Vec::new);
        for (kept, (s, _)) in self.output_shapes.iter_mut().zip(&views) {
            kept.clear();
            kept.extend_from_slice(s);
        }
        for (b, &i) in good.iter().enumerate() {
            let frame = frames[i];
            let out = &mut results[first + i];
            decode::decode_image(&self.manifest, &self.params, &views, b, good.len(), out)?;
            decode::nms(out, self.iou, self.max_detections);
            decode::to_frame(out, &self.letterboxes[b], frame.width, frame.height);
        }
        Ok(())
    }

    /// Runs the model on `batch` frames that are already letterboxed and normalised (CHW,
    /// [`Detector::input_len`] floats each) and discards the outputs: for benchmarks that
    /// compare the inference itself with other runtimes.
    pub fn infer(&mut self, input: &[f32], batch: usize) -> Result<(), Error> {
        let shape = [
            batch,
            3,
            self.manifest.input_height as usize,
            self.manifest.input_width as usize,
        ];
        let tensor = TensorRef::from_array_view((shape, input))?;
        self.session.run(ort::inputs![tensor])?;
        Ok(())
    }

    /// Floats of one letterboxed frame in the input tensor.
    pub fn input_len(&self) -> usize {
        self.pre.plane_len()
    }

    /// Verifies the model file's sha256 against the manifest, opens the session, runs one
    /// blank frame through [`Detector::run`] and checks that the outputs have the manifest's
    /// shapes.
    pub fn probe(cfg: &DetectConfig) -> Result<ProbeReport, Error> {
        let manifest = Manifest::load(&cfg.engine)?;
        let (model, sha256) = manifest.verify_model()?;
        let mut det = Detector::new(cfg)?;
        let input_shape = input_shape(&det.session).unwrap_or_default();
        let blank = Frame {
            camera: "probe".into(),
            seq: 0,
            pts: None,
            wall: std::time::SystemTime::now(),
            width: manifest.input_width,
            height: manifest.input_height,
            rgb: vec![0u8; 3 * manifest.input_width as usize * manifest.input_height as usize]
                .into(),
        };
        let ran = det.run(&[&blank]);
        let output_shapes = std::mem::take(&mut det.output_shapes);
        if output_shapes.is_empty() {
            // The session failed, or (it cannot, being the input size) the frame was dropped.
            ran?;
            return Err(Error::Shape {
                problem: "the probe frame did not reach the model".into(),
            });
        }
        // Shapes first: a decoder complaint is less telling than the manifest's promise.
        if !manifest.outputs.is_empty() {
            let mut got = output_shapes.clone();
            let mut want = manifest.outputs.clone();
            got.sort();
            want.sort();
            if got != want {
                return Err(Error::Shape {
                    problem: format!(
                        "the model's outputs are {output_shapes:?}, the manifest promises {:?}",
                        manifest.outputs
                    ),
                });
            }
        }
        ran?;
        Ok(ProbeReport {
            model,
            sha256,
            provider: det.provider,
            input_shape,
            output_shapes,
        })
    }
}

/// The shape of the model's first input, when it is a tensor.
fn input_shape(session: &Session) -> Option<Vec<i64>> {
    session
        .inputs()
        .first()
        .and_then(|i| i.dtype().tensor_shape().map(|s| s.to_vec()))
}
