//! The daemon's TOML configuration: one section per stage.
//!
//! Loading is three steps: parse (unknown keys and wrong types are errors that name the key),
//! resolve relative paths against the config file's folder, then `validate()` every section.
//! Every error is one line of the form `key: problem`.

use std::cmp::Ordering;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::capture::CaptureConfig;
use crate::detect::DetectConfig;
use crate::encode::ModelConfig;
use crate::ingest::{CameraConfig, IngestConfig, Source};
use crate::observe::HttpConfig;
use crate::publish::MqttConfig;
use crate::readout::ReadoutConfig;
use crate::service::ServiceConfig;
use crate::track::TrackConfig;
use crate::window::WindowConfig;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This box: its id appears in every MQTT topic.
    pub node: NodeConfig,
    /// The cameras to watch, one `[[camera]]` table each.
    #[serde(rename = "camera", default)]
    pub cameras: Vec<CameraConfig>,
    /// Settings shared by every camera's ingest pipeline.
    #[serde(default)]
    pub ingest: IngestConfig,
    /// The person detector: engine, ONNX Runtime, thresholds. Absent: no analytics, only
    /// ingest and camera status.
    #[serde(default)]
    pub detect: Option<DetectConfig>,
    /// The multi-person tracker.
    #[serde(default)]
    pub track: TrackConfig,
    /// Per-track frame windows for the emotion model.
    #[serde(default)]
    pub window: WindowConfig,
    /// The MQTT broker that receives status and results.
    #[serde(default)]
    pub mqtt: MqttConfig,
    /// The EmotionCLIP encoder. Absent: no emotion analytics (ingest and status only).
    #[serde(default)]
    pub model: Option<ModelConfig>,
    /// Emotion classes and valence/arousal read-out.
    #[serde(default)]
    pub readout: ReadoutConfig,
    /// On-site capture of encoder windows into a local dataset. Absent: nothing is captured.
    #[serde(default)]
    pub capture: Option<CaptureConfig>,
    /// Process supervision: shutdown and health.
    #[serde(default)]
    pub service: ServiceConfig,
    /// The HTTP endpoints: Prometheus metrics, health, live cameras and tracks.
    #[serde(default)]
    pub http: HttpConfig,
    /// The folder of the config file; relative paths in the file are resolved against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// `[node]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Id of this box in MQTT topics (`affectd/<id>/...`): letters, digits, `-` and `_`.
    pub id: String,
}

/// A configuration problem: always names the file or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {key}{problem}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        /// The dotted key path with a trailing `: `, or empty when the error is syntax.
        key: String,
        problem: String,
    },
    #[error("{key}: {problem}")]
    Invalid { key: String, problem: String },
}

impl ConfigError {
    pub fn invalid(key: impl Into<String>, problem: impl fmt::Display) -> Self {
        Self::Invalid {
            key: key.into(),
            problem: problem.to_string(),
        }
    }
}

impl Config {
    /// What is allowed but unsafe, one line each (logged by `run`, printed by `check`):
    /// credentials that would cross the network in the clear, and secret files others can
    /// read.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let loopback = |host: &str| {
            host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        };
        if self.mqtt.password_file.is_some()
            && self.mqtt.tls.is_none()
            && !loopback(&self.mqtt.host)
        {
            out.push(format!(
                "mqtt.password_file: the broker password goes to {} over plain TCP; add [mqtt.tls]",
                self.mqtt.host
            ));
        }
        let mut secrets: Vec<(String, &Path)> = Vec::new();
        if let Some(p) = &self.mqtt.password_file {
            secrets.push(("mqtt.password_file".into(), p));
        }
        if let Some(p) = self
            .mqtt
            .tls
            .as_ref()
            .and_then(|t| t.client_key_file.as_ref())
        {
            secrets.push(("mqtt.tls.client_key_file".into(), p));
        }
        if let Some(p) = &self.http.token_file {
            secrets.push(("http.token_file".into(), p));
        }
        for (i, c) in self.cameras.iter().enumerate() {
            if let Some(p) = &c.password_file {
                secrets.push((format!("camera[{i}].password_file"), p));
                if c.uri.starts_with("rtsp://") {
                    out.push(format!(
                        "camera[{i}].password_file: RTSP credentials to {} without TLS (a camera \
                         offering only Basic authentication receives the password in the clear); \
                         use rtsps:// where the camera supports it",
                        c.id
                    ));
                }
            }
        }
        for (key, path) in secrets {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path)
                && meta.permissions().mode() & 0o007 != 0
            {
                out.push(format!(
                    "{key}: {} is readable by every user (mode {:o}); chmod o-rwx it",
                    path.display(),
                    meta.permissions().mode() & 0o777
                ));
            }
        }
        out
    }

    /// Reads, parses and validates the file at `path` (without touching other files: see
    /// [`Config::check_files`]).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_text(&text, path)
    }

    /// Parses and validates `text` as the content of the file at `path` (relative paths in
    /// it resolve against that file's folder).
    pub fn from_text(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let base_dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned();
        let mut config = Self::parse(text, path)?;
        config.base_dir = base_dir;
        config.resolve_paths();
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text; `origin` only labels errors. Does not validate.
    pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let position = |offset: usize| {
            let before = &text[..offset.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            (line, column)
        };
        let de = toml::Deserializer::parse(text).map_err(|e| {
            let (line, column) = position(e.span().map_or(0, |s| s.start));
            ConfigError::Parse {
                path: origin.to_owned(),
                line,
                column,
                key: String::new(),
                problem: one_line(e.message()),
            }
        })?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let (line, column) = position(inner.span().map_or(0, |s| s.start));
            ConfigError::Parse {
                path: origin.to_owned(),
                line,
                column,
                key: if key == "." || key.is_empty() {
                    String::new()
                } else {
                    format!("{key}: ")
                },
                problem: one_line(inner.message()),
            }
        })
    }

    fn resolve_paths(&mut self) {
        let base = self.base_dir.clone();
        for camera in &mut self.cameras {
            camera.resolve_paths(&base);
        }
        self.ingest.resolve_paths(&base);
        if let Some(detect) = &mut self.detect {
            detect.resolve_paths(&base);
        }
        self.mqtt.resolve_paths(&base);
        self.readout.resolve_paths(&base);
        if let Some(model) = &mut self.model {
            model.resolve_paths(&base);
            // One ONNX Runtime per process: the encoder's sessions load [detect]'s library.
            model.ort_library = self.detect.as_ref().and_then(|d| d.ort_library.clone());
        }
        if let Some(capture) = &mut self.capture {
            capture.resolve_paths(&base);
        }
        self.http.resolve_paths(&base);
    }

    /// Checks every section; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_id("node.id", &self.node.id)?;
        if self.cameras.is_empty() {
            return Err(ConfigError::invalid(
                "camera",
                "no [[camera]] is configured; add at least one",
            ));
        }
        for (i, camera) in self.cameras.iter().enumerate() {
            camera.validate(&format!("camera[{i}]"))?;
            if let Some(j) = self.cameras[..i].iter().position(|c| c.id == camera.id) {
                return Err(ConfigError::invalid(
                    format!("camera[{i}].id"),
                    format!("\"{}\" is already used by camera[{j}]", camera.id),
                ));
            }
        }
        self.ingest.validate("ingest")?;
        if let Some(detect) = &self.detect {
            detect.validate("detect")?;
        }
        self.track.validate("track")?;
        self.window.validate("window")?;
        self.mqtt.validate("mqtt")?;
        if let Some(model) = &self.model {
            if self.detect.is_none() {
                return Err(ConfigError::invalid(
                    "model",
                    "needs a [detect] section: the encoder runs on detected persons",
                ));
            }
            model.validate("model")?;
        }
        self.readout.validate("readout")?;
        if let Some(capture) = &self.capture {
            if self.model.is_none() {
                return Err(ConfigError::invalid(
                    "capture",
                    "needs a [model] section: it stores the encoder's inputs",
                ));
            }
            capture.validate("capture")?;
        }
        self.service.validate("service")?;
        self.http.validate("http")?;
        Ok(())
    }

    /// Every file or folder the config names, with its key: what `check_files` opens.
    pub fn referenced_files(&self) -> Vec<(String, PathBuf, FileKind)> {
        let mut files = Vec::new();
        for (i, camera) in self.cameras.iter().enumerate() {
            if let Some(p) = &camera.password_file {
                files.push((
                    format!("camera[{i}].password_file"),
                    p.clone(),
                    FileKind::File,
                ));
            }
            if let Ok(Source::File(p)) = camera.source() {
                files.push((format!("camera[{i}].uri"), p, FileKind::File));
            }
        }
        if let Some(p) = &self.ingest.pipelines_dir {
            files.push(("ingest.pipelines_dir".into(), p.clone(), FileKind::Dir));
        }
        if let Some(p) = &self.mqtt.password_file {
            files.push(("mqtt.password_file".into(), p.clone(), FileKind::File));
        }
        if let Some(model) = &self.model {
            if let Some(p) = model.weights_to_load() {
                files.push(("model.weights".into(), p.to_owned(), FileKind::File));
            }
            if let Some(p) = &model.config {
                files.push(("model.config".into(), p.clone(), FileKind::File));
            }
        }
        if let Some(detect) = &self.detect {
            files.push((
                "detect.engine".into(),
                detect.engine.clone(),
                FileKind::File,
            ));
            if let Some(p) = &detect.ort_library {
                files.push(("detect.ort_library".into(), p.clone(), FileKind::File));
            }
        }
        if let Some(p) = self.http.token_file.as_ref().filter(|_| self.http.enabled) {
            files.push(("http.token_file".into(), p.clone(), FileKind::File));
        }
        if let Some(p) = &self.readout.heads_file {
            files.push(("readout.heads_file".into(), p.clone(), FileKind::File));
        }
        if let Some(tls) = &self.mqtt.tls {
            for (name, p) in [
                ("ca_file", &tls.ca_file),
                ("client_cert_file", &tls.client_cert_file),
                ("client_key_file", &tls.client_key_file),
            ] {
                if let Some(p) = p {
                    files.push((format!("mqtt.tls.{name}"), p.clone(), FileKind::File));
                }
            }
        }
        files
    }

    /// Checks that every file the config names can be read: the part of validation that
    /// depends on the machine. `run` and `check` call it after `load`.
    pub fn check_files(&self) -> Result<(), ConfigError> {
        self.referenced_files()
            .iter()
            .try_for_each(|(key, path, kind)| check_file(key, path, *kind))
    }

    /// The cameras that are switched on.
    pub fn enabled_cameras(&self) -> impl Iterator<Item = &CameraConfig> {
        self.cameras.iter().filter(|c| c.enabled)
    }
}

/// What a config key names on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    File,
    Dir,
}

/// Ids become MQTT topic levels and log fields: keep them to a safe alphabet.
pub fn validate_id(key: &str, id: &str) -> Result<(), ConfigError> {
    if id.is_empty() || id.len() > 64 {
        return Err(ConfigError::invalid(key, "must be 1 to 64 characters long"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(ConfigError::invalid(
            key,
            format!("\"{id}\" contains {c:?}; use letters, digits, '-' and '_'"),
        ));
    }
    Ok(())
}

/// Resolves `path` against `base` unless it is absolute.
pub fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        base.join(path)
    }
}

/// Checks that a number lies in `min..=max`.
pub fn check_range<T: PartialOrd + fmt::Display>(
    key: &str,
    value: T,
    min: T,
    max: T,
) -> Result<(), ConfigError> {
    // Written with `partial_cmp` so that NaN (which TOML accepts as `nan`) is refused too.
    let at_least = matches!(
        value.partial_cmp(&min),
        Some(Ordering::Greater | Ordering::Equal)
    );
    let at_most = matches!(
        value.partial_cmp(&max),
        Some(Ordering::Less | Ordering::Equal)
    );
    if !(at_least && at_most) {
        return Err(ConfigError::invalid(
            key,
            format!("{value} is out of range {min}..={max}"),
        ));
    }
    Ok(())
}

/// Checks that `path`, named by `key`, is a readable file or an existing folder.
pub fn check_file(key: &str, path: &Path, kind: FileKind) -> Result<(), ConfigError> {
    match kind {
        FileKind::File => check_readable(key, path),
        FileKind::Dir if path.is_dir() => Ok(()),
        FileKind::Dir => Err(ConfigError::invalid(
            key,
            format!("{} is not a folder", path.display()),
        )),
    }
}

/// Checks that a file named by the config can be opened for reading. Only a regular file is
/// opened: opening a FIFO or a device may block until a writer or the device answers (a
/// camera reading a FIFO), so for those existing is enough here; the part that reads them
/// reports what fails, and retries.
pub fn check_readable(key: &str, path: &Path) -> Result<(), ConfigError> {
    let cannot = |e: std::io::Error| {
        ConfigError::invalid(key, format!("cannot read {}: {e}", path.display()))
    };
    let kind = std::fs::metadata(path).map_err(cannot)?.file_type();
    if kind.is_dir() {
        return Err(ConfigError::invalid(
            key,
            format!("{} is a folder, not a file", path.display()),
        ));
    }
    if !kind.is_file() {
        return Ok(());
    }
    std::fs::File::open(path).map(drop).map_err(cannot)
}

fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A secret read from a file; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Reads a secret from a file, dropping one trailing newline.
    pub fn from_file(key: &str, path: &Path) -> Result<Secret, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::invalid(key, format!("cannot read {}: {e}", path.display()))
        })?;
        let secret = text.strip_suffix('\n').unwrap_or(&text);
        let secret = secret.strip_suffix('\r').unwrap_or(secret);
        if secret.is_empty() {
            return Err(ConfigError::invalid(
                key,
                format!("{} is empty", path.display()),
            ));
        }
        Ok(Secret(secret.to_owned()))
    }

    /// The secret itself, for handing to a library. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[node]
id = "edge-01"

[[camera]]
id = "cam"
uri = "test:smpte"
"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(MINIMAL, Path::new("x.toml")).unwrap();
        c.validate().unwrap();
        assert_eq!(c.ingest.fps, 8);
        assert_eq!(c.mqtt.port, 1883);
        assert_eq!(c.cameras.len(), 1);
    }

    #[test]
    fn unknown_key_names_its_path_and_line() {
        let text = MINIMAL.replace("uri = ", "fps2 = 3\nuri = ");
        let e = Config::parse(&text, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("x.toml:7:1: camera[0].fps2: unknown field `fps2`, expected one of `id`"),
            "{e}"
        );
    }

    #[test]
    fn secret_never_prints() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "hunter2\n").unwrap();
        let s = Secret::from_file("mqtt.password_file", &p).unwrap();
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(format!("{s:?} {s}"), "*** ***");
    }

    #[test]
    fn ids_are_restricted() {
        assert!(validate_id("node.id", "edge_01-a").is_ok());
        let e = validate_id("node.id", "a/b").unwrap_err().to_string();
        assert_eq!(
            e,
            "node.id: \"a/b\" contains '/'; use letters, digits, '-' and '_'"
        );
    }
}
