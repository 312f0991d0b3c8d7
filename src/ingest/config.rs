//! `[[camera]]` and `[ingest]`.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::{ConfigError, check_range, resolve, validate_id};

/// One camera: a `[[camera]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// Id of the camera in MQTT topics and logs: letters, digits, `-` and `_`.
    pub id: String,
    /// Where frames come from: `rtsp://host/path`, `rtsps://...`, `file:PATH` (relative paths
    /// are resolved against the config file's folder), `v4l2:/dev/videoN`, or `test:PATTERN`
    /// (a GStreamer `videotestsrc` pattern such as `smpte` or `ball`, for trying things out).
    pub uri: String,
    /// RTSP user name, when the camera asks for one.
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the RTSP password (first line). The password never appears in logs.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Frames per second handed to the analytics; defaults to `[ingest] fps`.
    #[serde(default)]
    pub fps: Option<u32>,
    /// Decoder choice: `auto` (hardware when the right plugin is installed), `software`,
    /// or `nvidia` (NVDEC through `nvv4l2decoder`/`nvh264dec`; fails if missing).
    #[serde(default)]
    pub decoder: Decoder,
    /// RTSP transport: `tcp` (default: works through NAT and firewalls), `udp` or `auto`.
    #[serde(default)]
    pub rtsp_transport: RtspTransport,
    /// RTSP jitter-buffer latency in milliseconds.
    #[serde(default = "default_latency_ms")]
    pub latency_ms: u32,
    /// For `file:` sources: start again from the beginning at the end of the file.
    #[serde(default = "default_true", rename = "loop")]
    pub loop_file: bool,
    /// `false` keeps the camera in the file but does not start it.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

/// `[ingest]`: settings shared by all cameras.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Frames per second delivered to the analytics (a camera's `fps` overrides it).
    #[serde(default = "default_fps")]
    pub fps: u32,
    /// Frames a camera may hold for a slow consumer; when full, the oldest is dropped and counted.
    #[serde(default = "default_queue_frames")]
    pub queue_frames: usize,
    /// A source that delivers no frame for this many seconds is restarted.
    #[serde(default = "default_stall_timeout_s")]
    pub stall_timeout_s: f64,
    /// First restart delay after a source fails, in seconds; doubles on each failure.
    #[serde(default = "default_backoff_initial_s")]
    pub backoff_initial_s: f64,
    /// Upper bound of the restart delay, in seconds.
    #[serde(default = "default_backoff_max_s")]
    pub backoff_max_s: f64,
    /// How long stopping a pipeline (GStreamer's state change to NULL) may take before its
    /// thread is abandoned and the camera restarted on a fresh pipeline. Keep it below
    /// `[service] stage_stall_s`, or a hung teardown stops the systemd watchdog first.
    #[serde(default = "default_teardown_timeout_s")]
    pub teardown_timeout_s: f64,
    /// Folder of pipeline templates overriding the built-in ones (`file.pipeline`, ...).
    #[serde(default)]
    pub pipelines_dir: Option<PathBuf>,
    /// Longest side of a delivered frame, in pixels: larger sources are scaled down (aspect
    /// kept, square pixels) by the pipeline's `videoscale` before the RGB conversion and the
    /// copy, so a 4K camera costs what a 1080p one does downstream.
    #[serde(default = "default_max_size")]
    pub max_size: u32,
}

/// Which decoder a camera's pipeline uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decoder {
    #[default]
    Auto,
    Software,
    Nvidia,
}

/// RTSP lower transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RtspTransport {
    #[default]
    Tcp,
    Udp,
    Auto,
}

/// A camera's source, parsed from its `uri`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `rtsp://` or `rtsps://`; the full URI as given.
    Rtsp(String),
    File(PathBuf),
    V4l2(PathBuf),
    /// A `videotestsrc` pattern name.
    Test(String),
}

impl Source {
    pub const SCHEMES: &'static str = "rtsp, rtsps, file, v4l2, test";

    /// Parses a camera URI; `key` labels errors.
    pub fn parse(key: &str, uri: &str) -> Result<Source, ConfigError> {
        let Some((scheme, rest)) = uri.split_once(':') else {
            return Err(ConfigError::invalid(
                key,
                format!(
                    "\"{uri}\" has no scheme; start it with one of {}",
                    Self::SCHEMES
                ),
            ));
        };
        let nonempty = |what: &str, v: &str| {
            if v.is_empty() {
                Err(ConfigError::invalid(key, format!("{what} is empty")))
            } else {
                Ok(())
            }
        };
        match scheme {
            "rtsp" | "rtsps" => {
                let host = rest.strip_prefix("//").unwrap_or("");
                nonempty("the RTSP host", host.split(['/', ':']).next().unwrap_or(""))?;
                if uri.chars().any(char::is_whitespace) {
                    return Err(ConfigError::invalid(
                        key,
                        "an RTSP URI cannot contain spaces",
                    ));
                }
                Ok(Source::Rtsp(uri.to_owned()))
            }
            "file" => {
                let path = rest.strip_prefix("//").unwrap_or(rest);
                nonempty("the file path", path)?;
                Ok(Source::File(PathBuf::from(path)))
            }
            "v4l2" => {
                let path = rest.strip_prefix("//").unwrap_or(rest);
                nonempty("the device path", path)?;
                Ok(Source::V4l2(PathBuf::from(path)))
            }
            "test" => {
                let pattern = rest.strip_prefix("//").unwrap_or(rest);
                Ok(Source::Test(if pattern.is_empty() {
                    "smpte".to_owned()
                } else {
                    pattern.to_owned()
                }))
            }
            other => Err(ConfigError::invalid(
                key,
                format!("scheme \"{other}\" is not one of {}", Self::SCHEMES),
            )),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Never print credentials embedded in a URI.
            Source::Rtsp(uri) => f.write_str(&redact_userinfo(uri)),
            Source::File(p) => write!(f, "file:{}", p.display()),
            Source::V4l2(p) => write!(f, "v4l2:{}", p.display()),
            Source::Test(p) => write!(f, "test:{p}"),
        }
    }
}

/// `rtsp://user:pass@host/x` -> `rtsp://***@host/x`.
pub fn redact_userinfo(uri: &str) -> String {
    match uri.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
                None => uri.to_owned(),
            }
        }
        None => uri.to_owned(),
    }
}

impl CameraConfig {
    /// The parsed source. Valid after `validate()`.
    pub fn source(&self) -> Result<Source, ConfigError> {
        Source::parse("uri", &self.uri)
    }

    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        if let Some(p) = &self.password_file {
            self.password_file = Some(resolve(base, p));
        }
        if let Some(rest) = self.uri.strip_prefix("file:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if !path.is_empty() {
                self.uri = format!("file:{}", resolve(base, Path::new(path)).display());
            }
        }
    }

    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        validate_id(&format!("{key}.id"), &self.id)?;
        let source = Source::parse(&format!("{key}.uri"), &self.uri)?;
        if let Some(fps) = self.fps {
            check_range(&format!("{key}.fps"), fps, 1, 60)?;
        }
        check_range(&format!("{key}.latency_ms"), self.latency_ms, 0, 10_000)?;
        let is_rtsp = matches!(source, Source::Rtsp(_));
        if !is_rtsp && (self.username.is_some() || self.password_file.is_some()) {
            return Err(ConfigError::invalid(
                format!("{key}.username"),
                "credentials apply only to rtsp:// and rtsps:// cameras",
            ));
        }
        if self.password_file.is_some() && self.username.is_none() {
            return Err(ConfigError::invalid(
                format!("{key}.password_file"),
                "is set without a username",
            ));
        }
        Ok(())
    }
}

impl IngestConfig {
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        if let Some(p) = &self.pipelines_dir {
            self.pipelines_dir = Some(resolve(base, p));
        }
    }

    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        check_range(&format!("{key}.fps"), self.fps, 1, 60)?;
        check_range(&format!("{key}.queue_frames"), self.queue_frames, 1, 256)?;
        check_range(&format!("{key}.max_size"), self.max_size, 64, 8192)?;
        check_range(
            &format!("{key}.stall_timeout_s"),
            self.stall_timeout_s,
            0.5,
            3600.0,
        )?;
        check_range(
            &format!("{key}.backoff_initial_s"),
            self.backoff_initial_s,
            0.01,
            60.0,
        )?;
        check_range(
            &format!("{key}.backoff_max_s"),
            self.backoff_max_s,
            self.backoff_initial_s,
            3600.0,
        )?;
        check_range(
            &format!("{key}.teardown_timeout_s"),
            self.teardown_timeout_s,
            0.1,
            600.0,
        )?;
        Ok(())
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            fps: default_fps(),
            queue_frames: default_queue_frames(),
            stall_timeout_s: default_stall_timeout_s(),
            backoff_initial_s: default_backoff_initial_s(),
            backoff_max_s: default_backoff_max_s(),
            teardown_timeout_s: default_teardown_timeout_s(),
            pipelines_dir: None,
            max_size: default_max_size(),
        }
    }
}

const fn default_true() -> bool {
    true
}
const fn default_latency_ms() -> u32 {
    200
}
const fn default_fps() -> u32 {
    8
}
const fn default_max_size() -> u32 {
    1920
}
const fn default_queue_frames() -> usize {
    4
}
const fn default_stall_timeout_s() -> f64 {
    10.0
}
const fn default_backoff_initial_s() -> f64 {
    0.5
}
const fn default_backoff_max_s() -> f64 {
    5.0
}
const fn default_teardown_timeout_s() -> f64 {
    5.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse() {
        assert_eq!(
            Source::parse("k", "rtsp://cam/stream").unwrap(),
            Source::Rtsp("rtsp://cam/stream".into())
        );
        assert_eq!(
            Source::parse("k", "file:///a/b.mp4").unwrap(),
            Source::File("/a/b.mp4".into())
        );
        assert_eq!(
            Source::parse("k", "file:b.mp4").unwrap(),
            Source::File("b.mp4".into())
        );
        assert_eq!(
            Source::parse("k", "v4l2:/dev/video0").unwrap(),
            Source::V4l2("/dev/video0".into())
        );
        assert_eq!(
            Source::parse("k", "test:").unwrap(),
            Source::Test("smpte".into())
        );
        let e = Source::parse("camera[1].uri", "htp://x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "camera[1].uri: scheme \"htp\" is not one of rtsp, rtsps, file, v4l2, test"
        );
    }

    #[test]
    fn credentials_are_redacted_in_display() {
        let s = Source::parse("k", "rtsp://admin:secret@10.0.0.2:554/live").unwrap();
        assert_eq!(s.to_string(), "rtsp://***@10.0.0.2:554/live");
        assert_eq!(redact_userinfo("rtsp://h/p@x"), "rtsp://h/p@x");
    }
}
