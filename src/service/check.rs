//! `affectd check`: probe everything a config names, without starting the daemon.

use std::time::Duration;

use crate::config::{Config, check_file};

/// The outcome of `affectd check`: one readable line per probe.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub lines: Vec<String>,
    pub failures: usize,
}

impl CheckReport {
    fn ok(&mut self, what: &str, detail: impl std::fmt::Display) {
        self.lines.push(format!("{what:<8} ok    {detail}"));
    }

    fn fail(&mut self, what: &str, detail: impl std::fmt::Display) {
        self.failures += 1;
        self.lines.push(format!("{what:<8} FAIL  {detail}"));
    }

    fn record<E: std::fmt::Display>(&mut self, what: &str, ok: String, result: Result<(), E>) {
        match result {
            Ok(()) => self.ok(what, ok),
            Err(e) => self.fail(what, e),
        }
    }
}

/// Probes files, pipelines, models and the broker named by `config`.
pub fn check(config: &Config) -> CheckReport {
    let mut report = CheckReport::default();
    for (key, path, kind) in config.referenced_files() {
        report.record(
            "file",
            format!("{key} = {}", path.display()),
            check_file(&key, &path, kind),
        );
    }
    match config.detect.as_ref().map(crate::detect::Detector::probe) {
        None => report.ok("detect", "no [detect] section: ingest and status only"),
        Some(Ok(r)) => report.ok(
            "detect",
            format!(
                "{}: sha256 matches, {} outputs as the manifest says, provider {}",
                r.model.display(),
                r.output_shapes.len(),
                r.provider.name()
            ),
        ),
        Some(Err(e)) => report.fail("detect", e),
    }
    if let Some(model) = &config.model
        && let Some(arch) = check_model(&mut report, model)
    {
        let video_len = arch.temporal.video_len;
        if config.window.length == video_len {
            report.ok("window", format!("length {video_len} = the model's window"));
        } else {
            report.fail(
                "window",
                format!(
                    "window.length: {} does not match the model's window of {video_len} frames",
                    config.window.length
                ),
            );
        }
        if let Some(capture) = config.capture.as_ref().filter(|c| c.enabled) {
            check_capture(&mut report, capture, model, &arch);
        }
    }
    for camera in config.enabled_cameras() {
        report.record(
            "camera",
            format!("{}: pipeline builds", camera.id),
            crate::ingest::check_pipeline(camera, &config.ingest),
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let probe = match runtime {
        Ok(rt) => rt
            .block_on(crate::publish::probe(
                &config.mqtt,
                &config.node.id,
                Duration::from_secs(5),
            ))
            .map_err(|e| e.to_string()),
        Err(e) => Err(format!("cannot start a runtime for the probe: {e}")),
    };
    match probe {
        Ok(took) => report.ok(
            "broker",
            format!(
                "{}:{} accepted an MQTT login in {} ms",
                config.mqtt.host,
                config.mqtt.port,
                took.as_millis()
            ),
        ),
        Err(e) => report.fail("broker", e),
    }
    report
}

/// Opens the weights as `run` would (every key checked against the config) and says which
/// weights will serve. Returns the architecture when it could be read.
fn check_model(
    report: &mut CheckReport,
    cfg: &crate::encode::ModelConfig,
) -> Option<crate::model::EmotionClipConfig> {
    use crate::model::{EmotionClip, EmotionClipConfig};
    let arch = match &cfg.config {
        Some(path) => match EmotionClipConfig::from_json_file(path) {
            Ok(arch) => arch,
            Err(e) => {
                report.fail("model", e);
                return None;
            }
        },
        None => EmotionClipConfig::vit_b32(),
    };
    let loaded = match cfg.weights_to_load() {
        Some(path) => match EmotionClip::load(path, &arch, &candle_core::Device::Cpu) {
            Ok(_) => {
                report.ok(
                    "model",
                    format!("{}: every key present with its shape", path.display()),
                );
                match crate::digest::sha256_file(path) {
                    Ok(digest) => Some(Some(digest)),
                    Err(e) => {
                        report.fail("model", format!("{}: {e}", path.display()));
                        None
                    }
                }
            }
            Err(e) => {
                report.fail("model", e);
                None
            }
        },
        None => {
            report.ok(
            "model",
            format!(
                "UNTRAINED: no weights file{}; seeded random ViT-B/32 will run and every message says \"untrained\"",
                cfg.weights
                    .as_ref()
                    .map(|p| format!(" at {}", p.display()))
                    .unwrap_or_default()
            ),
            );
            Some(None)
        }
    };
    // Which engine `run` would serve the weights with (the export cache read, not written).
    if let Some(weights_sha256) = loaded {
        match crate::encode::probe_engine(cfg, &arch, weights_sha256.as_deref()) {
            Ok(line) => report.ok("encoder", line),
            Err(e) => report.fail("encoder", e),
        }
    }
    Some(arch)
}

/// Says whether the capture folder holds a dataset the model can add to (`run` refuses one
/// of another shape) or will get a new one.
fn check_capture(
    report: &mut CheckReport,
    cfg: &crate::capture::CaptureConfig,
    model: &crate::encode::ModelConfig,
    arch: &crate::model::EmotionClipConfig,
) {
    use crate::capture::{CaptureError, Dataset, Manifest};
    let wanted = Manifest::new(
        arch.vision_cfg.image_size,
        arch.temporal.video_len,
        model.crop_policy(),
        &model.name,
    );
    let dir = &cfg.dir;
    if !dir.join(crate::capture::format::MANIFEST).exists() {
        return report.ok(
            "capture",
            format!("{}: a new dataset of {}", dir.display(), wanted.shape()),
        );
    }
    match Dataset::open(dir) {
        Ok(d) if d.manifest().compatible(&wanted) => report.ok(
            "capture",
            format!(
                "{}: {} samples of {}",
                dir.display(),
                d.samples().len(),
                wanted.shape()
            ),
        ),
        Ok(d) => report.fail(
            "capture",
            CaptureError::Mismatch {
                dir: dir.clone(),
                found: d.manifest().shape(),
                wanted: wanted.shape(),
            },
        ),
        Err(e) => report.fail("capture", e),
    }
}
