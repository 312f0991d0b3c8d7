//! The ONNX Runtime session: finding the library, choosing the execution provider, running
//! batches and decoding them.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

use crate::types::{Detection, Frame};

use super::Error;
use super::config::{DetectConfig, Provider};
use super::decode::{self, DecodeParams, GflLevel};
use super::letterbox::{Letterbox, Preprocessor};
use super::manifest::{Layout, Manifest};

/// The ONNX Runtime minor version this build needs at least (ort's `api-31` feature).
pub const ORT_MINOR: u32 = ort::MINOR_VERSION;

/// Where affectd looks for ONNX Runtime when neither the config nor `ORT_DYLIB_PATH` names it.
pub fn library_search_list() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_owned))
    {
        dirs.push(exe_dir.join("../lib/affectd"));
    }
    dirs.push(PathBuf::from("/opt/affectd/onnxruntime/lib"));
    if let Ok(entries) = std::fs::read_dir(".venv/lib") {
        let mut pys: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
            .map(|e| e.path().join("site-packages/onnxruntime/capi"))
            .collect();
        pys.sort();
        dirs.extend(pys);
    } else {
        dirs.push(PathBuf::from(
            ".venv/lib/python3*/site-packages/onnxruntime/capi",
        ));
    }
    dirs
}

/// The library file in `dir`: `libonnxruntime.so.1.<minor>.<patch>`, newest first, else a plain
/// `libonnxruntime.so`.
fn library_in(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<(u32, u32, PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let ver = name.strip_prefix("libonnxruntime.so")?;
            let mut parts = ver.trim_start_matches('.').split('.');
            let _major = parts.next();
            let minor = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
            let patch = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
            Some((minor, patch, e.path()))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, _, p)| p)
}

/// Picks the library: config, then `ORT_DYLIB_PATH`, then the search list. A named file must
/// exist; the error says who named it.
pub fn find_library(configured: Option<&Path>) -> Result<PathBuf, Error> {
    let named = configured
        .map(|p| ("[detect] ort_library", p.to_owned()))
        .or_else(|| {
            std::env::var_os("ORT_DYLIB_PATH")
                .filter(|p| !p.is_empty())
                .map(|p| ("ORT_DYLIB_PATH", PathBuf::from(p)))
        });
    if let Some((who, path)) = named {
        if !path.is_file() {
            return Err(Error::Library {
                problem: format!(
                    "{who} names {}, which does not exist; install ONNX Runtime 1.{ORT_MINOR} \
                     or newer (pip install onnxruntime==1.{ORT_MINOR}.1) and point it at \
                     onnxruntime/capi/libonnxruntime.so.1.{ORT_MINOR}.*",
                    path.display()
                ),
            });
        }
        return Ok(path);
    }
    let dirs = library_search_list();
    dirs.iter()
        .find_map(|d| library_in(d))
        .ok_or_else(|| Error::Library {
            problem: format!(
                "ONNX Runtime (libonnxruntime.so.1.{ORT_MINOR} or newer) not found; set \
                 [detect] ort_library or ORT_DYLIB_PATH, or install it (pip install \
                 onnxruntime==1.{ORT_MINOR}.1). Tried: {}",
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
}

/// The process's ONNX Runtime environment: one per process, created on first use.
static ENVIRONMENT: Mutex<Option<(PathBuf, ort::environment::Environment)>> = Mutex::new(None);

fn environment(configured: Option<&Path>) -> Result<ort::environment::Environment, Error> {
    let mut slot = ENVIRONMENT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((path, env)) = slot.as_ref() {
        if configured.is_some_and(|c| c != path) {
            tracing::warn!(
                loaded = %path.display(),
                "ONNX Runtime is already loaded in this process; ignoring another ort_library"
            );
        }
        return Ok(env.clone());
    }
    let path = find_library(configured)?;
    let env = ort::init_from(&path)
        .map_err(|e| Error::Library {
            problem: e.to_string(),
        })?
        .with_name("affectd")
        .with_telemetry(false)
        .build()?;
    tracing::info!(library = %path.display(), "ONNX Runtime loaded");
    *slot = Some((path, env.clone()));
    Ok(env)
}

/// Logs each unavailable provider only once per process.
static WARNED: OnceLock<Mutex<Vec<Provider>>> = OnceLock::new();

fn warn_once(p: Provider, why: &str) {
    let mut warned = WARNED
        .get_or_init(|| Mutex::new(Vec::new()))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if !warned.contains(&p) {
        warned.push(p);
        tracing::warn!(
            provider = p.name(),
            reason = why,
            "execution provider unavailable; trying the next one"
        );
    }
}

/// Builds the session with the first provider of `cfg.providers` that works.
fn open_session(
    env: &ort::environment::Environment,
    cfg: &DetectConfig,
    model: &Path,
) -> Result<(Session, Provider), Error> {
    let mut last: Option<Error> = None;
    for &p in &cfg.providers {
        let eps = match execution_provider(p, cfg, model) {
            Ok(eps) => eps,
            Err(why) => {
                warn_once(p, &why);
                continue;
            }
        };
        // No spin-waiting between runs: the detector shares the cores with the encoder, and
        // ONNX Runtime's idle threads spinning after every frame starve it.
        let builder = Session::builder(env)?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(ort::Error::from)?
            .with_intra_op_spinning(false)
            .map_err(ort::Error::from)?;
        let builder = if cfg.threads > 0 {
            builder
                .with_intra_threads(cfg.threads)
                .map_err(ort::Error::from)?
        } else {
            builder
        };
        let built = builder
            .with_execution_providers(eps)
            .map_err(ort::Error::from)
            .and_then(|mut b| b.commit_from_file(model));
        match built {
            Ok(session) => return Ok((session, p)),
            Err(e) if p != Provider::Cpu => {
                warn_once(p, &e.to_string());
                last = Some(e.into());
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(last.unwrap_or(Error::Library {
        problem: "no configured execution provider is usable; add \"cpu\" to [detect] providers"
            .into(),
    }))
}

#[allow(unused_variables)]
fn execution_provider(
    p: Provider,
    cfg: &DetectConfig,
    model: &Path,
) -> Result<Vec<ort::ep::ExecutionProviderDispatch>, String> {
    #[allow(unused_imports)]
    use ort::ep::ExecutionProvider;
    match p {
        Provider::Cpu => Ok(vec![ort::ep::CPU::default().build().error_on_failure()]),
        #[cfg(feature = "tensorrt")]
        Provider::Tensorrt => {
            if !ort::ep::TensorRT::is_available().unwrap_or(false) {
                return Err(
                    "this ONNX Runtime has no TensorRT provider (install onnxruntime-gpu)".into(),
                );
            }
            std::fs::create_dir_all(&cfg.trt_cache_dir)
                .map_err(|e| format!("cannot create {}: {e}", cfg.trt_cache_dir.display()))?;
            let cached = std::fs::read_dir(&cfg.trt_cache_dir)
                .map(|d| {
                    d.flatten()
                        .any(|e| e.file_name().to_string_lossy().ends_with(".engine"))
                })
                .unwrap_or(false);
            if !cached {
                tracing::info!(
                    model = %model.display(),
                    cache = %cfg.trt_cache_dir.display(),
                    "building the TensorRT engine; this can take several minutes on first start"
                );
            }
            Ok(vec![
                ort::ep::TensorRT::default()
                    .with_fp16(cfg.trt_fp16)
                    .with_engine_cache(true)
                    .with_engine_cache_path(cfg.trt_cache_dir.display())
                    .build()
                    .error_on_failure(),
            ])
        }
        #[cfg(not(feature = "tensorrt"))]
        Provider::Tensorrt => Err("affectd was built without the `tensorrt` feature".into()),
        #[cfg(feature = "cuda")]
        Provider::Cuda => {
            if !ort::ep::CUDA::is_available().unwrap_or(false) {
                return Err(
                    "this ONNX Runtime has no CUDA provider (install onnxruntime-gpu)".into(),
                );
            }
            Ok(vec![ort::ep::CUDA::default().build().error_on_failure()])
        }
        #[cfg(not(feature = "cuda"))]
        Provider::Cuda => Err("affectd was built without the `cuda` feature".into()),
    }
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String, Error> {
    crate::digest::sha256_file(path).map_err(|e| Error::io(path, e))
}

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
    /// Input tensor storage for up to `batch_capacity` frames; grows once, then is reused.
    input: Vec<f32>,
    /// Frames per run: 1 for fixed-batch models.
    max_batch: usize,
    params: DecodeParams,
    iou: f32,
    max_detections: usize,
    bad_frames: u64,
    letterboxes: Vec<Letterbox>,
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
    /// Loads the manifest and the model and opens the session. Does not verify the sha256
    /// (that is [`Detector::probe`]'s job, run by `affectd check`).
    pub fn new(cfg: &DetectConfig) -> Result<Detector, Error> {
        let manifest = Manifest::load(&cfg.engine)?;
        let model = manifest.model_path();
        if !model.is_file() {
            return Err(Error::io(
                &model,
                std::io::Error::new(std::io::ErrorKind::NotFound, "model file not found"),
            ));
        }
        let env = environment(cfg.ort_library.as_deref())?;
        let (session, provider) = open_session(&env, cfg, &model)?;
        let input_shape = session
            .inputs()
            .first()
            .and_then(|i| i.dtype().tensor_shape().map(|s| s.to_vec()))
            .ok_or_else(|| Error::Shape {
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
        for (b, &i) in good.iter().enumerate() {
            let frame = frames[i];
            let out = &mut results[first + i];
            decode_image(&self.manifest, &self.params, &views, b, good.len(), out)?;
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
    /// blank frame and checks that the outputs have the manifest's shapes.
    pub fn probe(cfg: &DetectConfig) -> Result<ProbeReport, Error> {
        let manifest = Manifest::load(&cfg.engine)?;
        let model = manifest.model_path();
        let sha256 = sha256_file(&model)?;
        if !sha256.eq_ignore_ascii_case(&manifest.sha256) {
            return Err(Error::Checksum {
                path: model,
                expected: manifest.sha256.clone(),
                actual: sha256,
            });
        }
        let mut det = Detector::new(cfg)?;
        let input_shape = det.session.inputs()[0]
            .dtype()
            .tensor_shape()
            .map(|s| s.to_vec())
            .unwrap_or_default();
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
        let plane = det.pre.plane_len();
        det.input.resize(plane, 0.0);
        det.pre
            .fill(&blank, &mut det.input[..plane])
            .map_err(|e| Error::Shape {
                problem: e.to_string(),
            })?;
        let shape = [
            1,
            3,
            manifest.input_height as usize,
            manifest.input_width as usize,
        ];
        let tensor = TensorRef::from_array_view((shape, &det.input[..plane]))?;
        let outputs = det.session.run(ort::inputs![tensor])?;
        let mut output_shapes = Vec::new();
        for i in 0..outputs.len() {
            let (s, _) = outputs[i].try_extract_tensor::<f32>()?;
            output_shapes.push(s.to_vec());
        }
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
        Ok(ProbeReport {
            model,
            sha256,
            provider: det.provider,
            input_shape,
            output_shapes,
        })
    }
}

/// Decodes image `b` of a batch of `batch` from the raw outputs (shape, data), unsorted and in
/// network-input pixels.
pub fn decode_image(
    m: &Manifest,
    p: &DecodeParams,
    outputs: &[(&[i64], &[f32])],
    b: usize,
    batch: usize,
    out: &mut Vec<Detection>,
) -> Result<(), Error> {
    fn image(data: &[f32], b: usize, batch: usize) -> Option<&[f32]> {
        let n = data.len() / batch;
        data.get(b * n..(b + 1) * n)
    }
    let per_image = |data| image(data, b, batch);
    let shape_err = |what: &str| Error::Shape {
        problem: format!(
            "{what}; outputs are {:?}",
            outputs.iter().map(|o| o.0).collect::<Vec<_>>()
        ),
    };
    match m.layout {
        Layout::Nanodet => {
            let reg_len = (4 * m.reg_bins) as i64;
            for &stride in &m.strides {
                let (gw, gh) = decode::grid_cells(m.input_width, m.input_height, stride);
                let cells = (gw * gh) as i64;
                let find = |last: i64| {
                    outputs
                        .iter()
                        .find(|(s, _)| s.len() == 3 && s[1] == cells && s[2] == last)
                        .and_then(|(_, d)| per_image(d))
                };
                let (Some(scores), Some(regs)) = (find(m.num_classes as i64), find(reg_len)) else {
                    return Err(shape_err(&format!(
                        "no [N, {cells}, {}] / [N, {cells}, {reg_len}] pair for stride {stride}",
                        m.num_classes
                    )));
                };
                let level = GflLevel {
                    stride,
                    grid_w: gw,
                    scores,
                    regs,
                    bins: m.reg_bins,
                    centre_offset: m.centre_offset,
                };
                decode::decode_gfl(&level, p, out);
            }
        }
        Layout::Yolov5 => {
            let (_, d) = outputs.first().ok_or_else(|| shape_err("no output"))?;
            decode::decode_yolov5(per_image(d).unwrap_or(&[]), p, out);
        }
        Layout::Yolov8 => {
            let (s, d) = outputs.first().ok_or_else(|| shape_err("no output"))?;
            let ch = (4 + m.num_classes) as i64;
            let (n, channels_first) = match s {
                [_, c, n] if *c == ch => (*n, true),
                [_, n, c] if *c == ch => (*n, false),
                _ => return Err(shape_err(&format!("expected [N, {ch}, n] or [N, n, {ch}]"))),
            };
            decode::decode_yolov8(
                per_image(d).unwrap_or(&[]),
                n as usize,
                channels_first,
                p,
                out,
            );
        }
        Layout::End2end => {
            let (s, d) = outputs.first().ok_or_else(|| shape_err("no output"))?;
            if s.last() != Some(&6) {
                return Err(shape_err("expected [N, n, 6]"));
            }
            let data = if s.len() == 3 {
                per_image(d).unwrap_or(&[])
            } else {
                d
            };
            decode::decode_end2end(data, p, out);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nanodet_manifest() -> Manifest {
        toml::from_str(
            r#"
            model = "m.onnx"
            sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
            layout = "nanodet"
            input_width = 16
            input_height = 16
            channel_order = "bgr"
            mean = [0, 0, 0]
            std = [1, 1, 1]
            num_classes = 2
            person_class = 0
            strides = [8]
            reg_bins = 2
            "#,
        )
        .unwrap()
    }

    #[test]
    fn a_batched_output_is_split_per_image() {
        let m = nanodet_manifest();
        let p = DecodeParams {
            num_classes: 2,
            person_class: 0,
            threshold: 0.5,
        };
        // Batch of 2, 2x2 grid, 2 classes; image 0 has a person in cell 0, image 1 in cell 3.
        let mut cls = vec![0.0f32; 2 * 4 * 2];
        cls[0] = 0.9;
        cls[8 + 3 * 2] = 0.8;
        // All distances one bin (= 8 px) with sharp logits.
        let reg: Vec<f32> = (0..2 * 4 * 8)
            .map(|i| if i % 2 == 1 { 30.0 } else { -30.0 })
            .collect();
        let outputs: [(&[i64], &[f32]); 2] = [(&[2, 4, 8], &reg), (&[2, 4, 2], &cls)];
        let mut a = Vec::new();
        decode_image(&m, &p, &outputs, 0, 2, &mut a).unwrap();
        let mut b = Vec::new();
        decode_image(&m, &p, &outputs, 1, 2, &mut b).unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(b.len(), 1);
        assert!((a[0].bbox.x1 - -4.0).abs() < 1e-3 && (a[0].bbox.x2 - 12.0).abs() < 1e-3);
        assert!((b[0].bbox.x1 - 4.0).abs() < 1e-3 && (b[0].bbox.y2 - 20.0).abs() < 1e-3);
        assert_eq!((a[0].score, b[0].score), (0.9, 0.8));
    }

    #[test]
    fn missing_levels_are_a_shape_error() {
        let m = nanodet_manifest();
        let p = DecodeParams {
            num_classes: 2,
            person_class: 0,
            threshold: 0.5,
        };
        let cls = vec![0.0f32; 8];
        let outputs: [(&[i64], &[f32]); 1] = [(&[1, 4, 2], &cls)];
        let e = decode_image(&m, &p, &outputs, 0, 1, &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("stride 8"), "{e}");
    }

    #[test]
    fn the_library_is_found_by_version_in_a_folder() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "libonnxruntime.so.1.22.0",
            "libonnxruntime.so.1.31.1",
            "other.so",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let found = library_in(dir.path()).unwrap();
        assert!(found.ends_with("libonnxruntime.so.1.31.1"), "{found:?}");
        assert!(library_in(&dir.path().join("missing")).is_none());
        let lib = dir.path().join("libonnxruntime.so.1.31.1");
        assert_eq!(find_library(Some(&lib)).unwrap(), lib);
        let e = find_library(Some(Path::new("/x/lib.so"))).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("ONNX Runtime library: [detect] ort_library names /x/lib.so, which"),
            "{e}"
        );
    }
}
