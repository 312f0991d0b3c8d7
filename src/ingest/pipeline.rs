//! Pipeline templates (`pipelines/*.pipeline`) and how a camera's pipeline is built from one.
//!
//! A template is gst-launch text with named elements and no user values: after
//! `gst::parse::launch` the camera's URI, path, device, credentials and pattern are set as
//! properties of the element named `src`, the output caps on `caps`, and frames are taken
//! from the appsink named `sink`. A URI such as `x.mp4 ! fakesink` therefore stays one
//! property value; it can never add or re-link elements.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use gstreamer as gst;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;

use gst::prelude::*;
use gst_video::prelude::*;

use super::config::{CameraConfig, Decoder, IngestConfig, RtspTransport, Source, redact_userinfo};
use super::error::Error;
use super::queue::FrameQueue;
use crate::config::Secret;
use crate::types::{CameraId, Frame};

/// A built-in or overriding pipeline template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    File,
    Rtsp,
    /// RTSP with NVDEC on a discrete GPU (`nvh264dec`).
    RtspNvidia,
    /// RTSP with the Jetson hardware decoder (`nvv4l2decoder`).
    RtspJetson,
    V4l2,
    Test,
}

impl Template {
    /// The template's file name, in `pipelines/` and in `[ingest] pipelines_dir`.
    pub fn file_name(self) -> &'static str {
        match self {
            Template::File => "file.pipeline",
            Template::Rtsp => "rtsp.pipeline",
            Template::RtspNvidia => "rtsp-nvidia.pipeline",
            Template::RtspJetson => "rtsp-jetson.pipeline",
            Template::V4l2 => "v4l2.pipeline",
            Template::Test => "test.pipeline",
        }
    }

    fn builtin(self) -> &'static str {
        match self {
            Template::File => include_str!("../../pipelines/file.pipeline"),
            Template::Rtsp => include_str!("../../pipelines/rtsp.pipeline"),
            Template::RtspNvidia => include_str!("../../pipelines/rtsp-nvidia.pipeline"),
            Template::RtspJetson => include_str!("../../pipelines/rtsp-jetson.pipeline"),
            Template::V4l2 => include_str!("../../pipelines/v4l2.pipeline"),
            Template::Test => include_str!("../../pipelines/test.pipeline"),
        }
    }

    /// The template for a source and decoder choice. `nvidia` needs `nvv4l2decoder` (Jetson)
    /// or `nvh264dec` (dGPU); `auto` uses them when installed, else software decode.
    pub fn choose(source: &Source, decoder: Decoder) -> Result<Template, Error> {
        Ok(match source {
            Source::File(_) => Template::File,
            Source::V4l2(_) => Template::V4l2,
            Source::Test(_) => Template::Test,
            Source::Rtsp(_) => {
                let hardware = if element_exists("nvv4l2decoder") {
                    Some(Template::RtspJetson)
                } else if element_exists("nvh264dec") {
                    Some(Template::RtspNvidia)
                } else {
                    None
                };
                match (decoder, hardware) {
                    (Decoder::Software, _) | (Decoder::Auto, None) => Template::Rtsp,
                    (Decoder::Auto | Decoder::Nvidia, Some(t)) => t,
                    (Decoder::Nvidia, None) => {
                        return Err(Error::MissingElement(
                            "neither nvv4l2decoder nor nvh264dec is installed".into(),
                        ));
                    }
                }
            }
        })
    }

    /// The template text: from `pipelines_dir` when it holds this file, else built in.
    /// Lines starting with `#` are comments.
    pub fn text(self, cfg: &IngestConfig) -> Result<String, Error> {
        let raw: Cow<'static, str> = match &cfg.pipelines_dir {
            Some(dir) if dir.join(self.file_name()).exists() => {
                let path = dir.join(self.file_name());
                std::fs::read_to_string(&path)
                    .map(Cow::Owned)
                    .map_err(|source| Error::TemplateRead { path, source })?
            }
            _ => Cow::Borrowed(self.builtin()),
        };
        Ok(raw
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n"))
    }

    /// Live sources pace themselves; a file (and the synthetic source) is played against the
    /// clock so it delivers at its natural rate, like a camera.
    fn sync(self) -> bool {
        matches!(self, Template::File | Template::Test)
    }
}

fn element_exists(name: &str) -> bool {
    gst::ElementFactory::find(name).is_some()
}

/// Initialises GStreamer once and registers the statically linked gst-plugins-rs
/// `fallbackswitch` plugin (its `fallbacksrc` is available to custom templates).
pub fn init() -> Result<(), Error> {
    static INIT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    INIT.get_or_init(|| {
        gst::init().map_err(|e| e.to_string())?;
        gstfallbackswitch::plugin_register_static().map_err(|e| e.to_string())
    })
    .clone()
    .map_err(Error::Init)
}

/// A parsed pipeline with its user values set, not yet playing.
#[derive(Debug)]
pub struct Built {
    pub pipeline: gst::Pipeline,
    pub sink: gst_app::AppSink,
    pub template: Template,
}

/// Builds a camera's pipeline from its template and sets the user values as properties.
/// Does not change its state. `gst` must be initialised ([`init`]).
pub fn build(camera: &CameraConfig, cfg: &IngestConfig) -> Result<Built, Error> {
    let source = camera.source()?;
    let template = Template::choose(&source, camera.decoder)?;
    let text = template.text(cfg)?;
    let name = template.file_name();
    let element =
        gst::parse::launch_full(&text, None, gst::ParseFlags::FATAL_ERRORS).map_err(|e| {
            match e.kind::<gst::ParseError>() {
                Some(gst::ParseError::NoSuchElement) => Error::MissingElement(e.to_string()),
                _ => Error::TemplateParse {
                    template: name.into(),
                    message: e.to_string(),
                },
            }
        })?;
    let pipeline = element
        .downcast::<gst::Pipeline>()
        .map_err(|_| Error::TemplateParse {
            template: name.into(),
            message: "it is a single element, not a pipeline".into(),
        })?;
    // Names the pipeline in GStreamer's own logs and in element paths of errors.
    pipeline.set_property("name", format!("camera-{}", camera.id));
    let by_name = |n: &str| {
        pipeline.by_name(n).ok_or_else(|| Error::TemplateElement {
            template: name.into(),
            name: n.into(),
        })
    };
    let src = by_name("src")?;
    let caps = by_name("caps")?;
    let sink = by_name("sink")?
        .downcast::<gst_app::AppSink>()
        .map_err(|_| Error::TemplateElement {
            template: name.into(),
            name: "sink (an appsink)".into(),
        })?;

    match &source {
        Source::File(path) => {
            let text = path.to_str().ok_or_else(|| Error::Property {
                element: "src".into(),
                property: "location".into(),
                value: path.display().to_string(),
                message: "the path is not UTF-8".into(),
            })?;
            if src.find_property("location").is_none() && src.find_property("uri").is_some() {
                // A custom template with a URI-based source (uridecodebin, fallbacksrc).
                let absolute = std::path::absolute(path).unwrap_or_else(|_| path.clone());
                let uri =
                    gst::glib::filename_to_uri(&absolute, None).map_err(|e| Error::Property {
                        element: "src".into(),
                        property: "uri".into(),
                        value: text.into(),
                        message: e.to_string(),
                    })?;
                set_str(&src, "uri", &uri)?;
            } else {
                set_str(&src, "location", text)?;
            }
        }
        Source::V4l2(path) => {
            let path = path.to_str().ok_or_else(|| Error::Property {
                element: "src".into(),
                property: "device".into(),
                value: path.display().to_string(),
                message: "the path is not UTF-8".into(),
            })?;
            set_str(&src, "device", path)?;
        }
        Source::Test(pattern) => set_str(&src, "pattern", pattern)?,
        Source::Rtsp(uri) => {
            // rtspsrc takes `location`; URI-based sources in custom templates take `uri`.
            let key = if src.find_property("location").is_some() {
                "location"
            } else {
                "uri"
            };
            set_text(&src, key, uri, &redact_userinfo(uri))?;
            // Tuning that only rtspsrc understands is skipped for other sources.
            let protocols = match camera.rtsp_transport {
                RtspTransport::Tcp => "tcp",
                RtspTransport::Udp => "udp",
                RtspTransport::Auto => "udp+udp-mcast+tcp",
            };
            if src.find_property("protocols").is_some() {
                set_str(&src, "protocols", protocols)?;
            }
            if src.find_property("latency").is_some() {
                set_str(&src, "latency", &camera.latency_ms.to_string())?;
            }
            if let Some(user) = &camera.username {
                set_str(&src, "user-id", user)?;
            }
            if let Some(file) = &camera.password_file {
                let password = Secret::from_file("password_file", file)?;
                set_text(&src, "user-pw", password.expose(), "***")?;
            }
        }
    }

    let fps = camera.fps.unwrap_or(cfg.fps).max(1);
    // Sizes up to `max_size` either way: a smaller source passes unscaled, a larger one is
    // fixated by videoscale to the largest size that fits with its display aspect ratio.
    let max = cfg.max_size.clamp(1, i32::MAX as u32) as i32;
    let out_caps = gst_video::VideoCapsBuilder::new()
        .format(gst_video::VideoFormat::Rgb)
        .framerate(gst::Fraction::new(fps as i32, 1))
        .width_range(1..=max)
        .height_range(1..=max)
        .pixel_aspect_ratio(gst::Fraction::new(1, 1))
        .build();
    if caps.find_property("caps").map(|p| p.value_type()) != Some(gst::Caps::static_type()) {
        return Err(Error::TemplateElement {
            template: name.into(),
            name: "caps (a capsfilter)".into(),
        });
    }
    caps.set_property("caps", &out_caps);
    sink.set_sync(template.sync());
    sink.set_max_buffers(2);
    sink.set_drop(true);
    sink.set_property("enable-last-sample", false);
    Ok(Built {
        pipeline,
        sink,
        template,
    })
}

/// Sets a property from text: strings as they are, other types (numbers, enums, flags)
/// parsed by GStreamer. Never panics on a bad value or a template whose element lacks the
/// property.
fn set_str(element: &gst::Element, property: &str, value: &str) -> Result<(), Error> {
    set_text(element, property, value, value)
}

/// [`set_str`], showing `shown` instead of the value in errors (for secrets).
fn set_text(element: &gst::Element, property: &str, value: &str, shown: &str) -> Result<(), Error> {
    let fail = |message: String| Error::Property {
        element: element.name().to_string(),
        property: property.into(),
        value: shown.into(),
        message,
    };
    let pspec = element
        .find_property(property)
        .ok_or_else(|| fail("the element has no such property".into()))?;
    let flags = pspec.flags();
    if !flags.contains(gst::glib::ParamFlags::WRITABLE)
        || flags.contains(gst::glib::ParamFlags::CONSTRUCT_ONLY)
    {
        return Err(fail("the property cannot be set".into()));
    }
    if pspec.value_type() == gst::glib::Type::STRING {
        element.set_property(property, value);
        return Ok(());
    }
    let parsed =
        gst::glib::Value::deserialize_with_pspec(value, &pspec).map_err(|e| fail(e.to_string()))?;
    element.set_property_from_value(property, &parsed);
    Ok(())
}

/// Per-run delivery counters shared by the appsink callback and the supervisor.
#[derive(Debug)]
pub(crate) struct RunStats {
    started: Instant,
    frames: AtomicU64,
    /// Nanoseconds after `started` of the last frame, plus one; 0 before the first.
    last_frame: AtomicU64,
    /// Samples that could not be mapped as video (counted, dropped).
    bad: AtomicU64,
}

impl RunStats {
    pub(crate) fn new() -> Arc<RunStats> {
        Arc::new(RunStats {
            started: Instant::now(),
            frames: AtomicU64::new(0),
            last_frame: AtomicU64::new(0),
            bad: AtomicU64::new(0),
        })
    }

    /// When this run's pipeline was built.
    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    pub(crate) fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }

    pub(crate) fn bad_samples(&self) -> u64 {
        self.bad.load(Ordering::Relaxed)
    }

    /// When the last frame arrived, if any did.
    pub(crate) fn last_frame(&self) -> Option<Instant> {
        match self.last_frame.load(Ordering::Relaxed) {
            0 => None,
            n => Some(self.started + Duration::from_nanos(n - 1)),
        }
    }

    fn on_frame(&self) {
        let ns = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        self.last_frame.store(ns + 1, Ordering::Relaxed);
        self.frames.fetch_add(1, Ordering::Relaxed);
    }
}

/// Wires the appsink to the camera's queue. The callback maps the buffer, copies it into a
/// packed RGB [`Frame`] and pushes it (drop-oldest): it never blocks the streaming thread.
pub(crate) fn connect_sink(
    sink: &gst_app::AppSink,
    camera: CameraId,
    queue: Arc<FrameQueue>,
    stats: Arc<RunStats>,
) {
    let mut seq = 0u64;
    let mut info: Option<(gst::Caps, gst_video::VideoInfo)> = None;
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Flushing)?;
                let frame = sample
                    .caps()
                    .zip(sample.buffer())
                    .and_then(|(caps, buffer)| {
                        if info.as_ref().is_none_or(|(c, _)| c != caps) {
                            info = gst_video::VideoInfo::from_caps(caps)
                                .ok()
                                .map(|i| (caps.to_owned(), i));
                        }
                        let (_, video) = info.as_ref()?;
                        // Running time: 0 at each start and each loop of a file, whatever
                        // timestamps the container carries.
                        let pts = buffer.pts().map(|pts| {
                            sample
                                .segment()
                                .and_then(|s| s.downcast_ref::<gst::ClockTime>())
                                .and_then(|s| s.to_running_time(pts))
                                .unwrap_or(pts)
                        });
                        to_frame(buffer, video, &camera, seq, pts)
                    });
                match frame {
                    Some(frame) => {
                        seq += 1;
                        queue.push(frame);
                        stats.on_frame();
                    }
                    None => {
                        stats.bad.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(camera = %camera, "dropped a sample that is not RGB video");
                    }
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
}

/// Copies a mapped RGB buffer into a packed frame, removing stride padding; `None` when it is
/// not RGB or smaller than its caps say.
pub(super) fn to_frame(
    buffer: &gst::BufferRef,
    info: &gst_video::VideoInfo,
    camera: &CameraId,
    seq: u64,
    pts: Option<gst::ClockTime>,
) -> Option<Frame> {
    if info.format() != gst_video::VideoFormat::Rgb {
        return None;
    }
    let video = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, info).ok()?;
    let (width, height) = (video.width(), video.height());
    let row = width as usize * 3;
    let stride = usize::try_from(*video.plane_stride().first()?).ok()?;
    let data = video.plane_data(0).ok()?;
    let needed = stride
        .checked_mul(height.checked_sub(1)? as usize)?
        .checked_add(row)?;
    if stride < row || data.len() < needed {
        return None;
    }
    let rgb: Arc<[u8]> = if stride == row {
        Arc::from(&data[..row * height as usize])
    } else {
        let mut packed = Vec::with_capacity(row * height as usize);
        for line in data.chunks(stride).take(height as usize) {
            packed.extend_from_slice(&line[..row]);
        }
        packed.into()
    };
    Some(Frame {
        camera: camera.clone(),
        seq,
        pts: pts.map(Duration::from),
        wall: SystemTime::now(),
        width,
        height,
        rgb,
    })
}

/// Builds a camera's pipeline and brings it to PAUSED, then tears it down: what
/// `affectd check` runs for each camera. Files and devices are opened and a file's first
/// frame is decoded (waiting up to `CHECK_TIMEOUT`); live sources are not waited on, so an
/// unreachable RTSP camera passes. Nothing plays.
pub fn check_pipeline(camera: &CameraConfig, cfg: &IngestConfig) -> Result<(), Error> {
    init()?;
    let built = build(camera, cfg)?;
    let pipeline = &built.pipeline;
    let paused = pipeline.set_state(gst::State::Paused).is_ok()
        && pipeline
            .state(gst::ClockTime::from_seconds(CHECK_TIMEOUT.as_secs()))
            .0
            .is_ok();
    let result = if paused {
        Ok(())
    } else {
        Err(pipeline
            .bus()
            .and_then(|bus| bus.pop_filtered(&[gst::MessageType::Error]))
            .map_or(Error::StateChange, |m| bus_error(&m, &|s| s.to_owned())))
    };
    let _ = pipeline.set_state(gst::State::Null);
    result
}

/// How long [`check_pipeline`] waits for a file or device to preroll.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// A bus error message as a typed error; `scrub` removes secrets from the texts.
pub(crate) fn bus_error(message: &gst::Message, scrub: &dyn Fn(&str) -> String) -> Error {
    match message.view() {
        gst::MessageView::Error(err) => Error::Stream {
            element: message
                .src()
                .map(|s| s.path_string().to_string())
                .unwrap_or_else(|| "pipeline".into()),
            message: scrub(&err.error().to_string()),
            debug: err.debug().map(|d| scrub(&d)),
        },
        _ => Error::StateChange,
    }
}
