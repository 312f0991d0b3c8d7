//! Every frame of a still image or a video file, in order and as fast as they decode: for
//! `affectd detect`, tests and benchmarks. (The daemon's cameras, files included, play at
//! their natural rate in the supervised pipelines built from `pipelines/` templates.)

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;

use crate::types::{CameraId, Frame};

use super::error::Error;
use super::pipeline::{bus_error, init, to_frame};

/// Decodes the whole file to RGB, unsynchronised and without dropping frames (the camera
/// template `pipelines/file.pipeline` plays at the clock's pace and converts the rate). The
/// path is set as `src`'s property, never pasted in.
const DECODE: &str = "filesrc name=src ! decodebin ! videoconvert ! video/x-raw,format=RGB ! \
                      appsink name=sink sync=false max-buffers=4";

/// How long [`VideoFile`] waits for a frame before it looks for an error on the bus.
const POLL: gst::ClockTime = gst::ClockTime::from_mseconds(100);

/// Frames of an input file, in order.
pub enum FileFrames {
    Image(Option<Frame>),
    Video(VideoFile),
}

impl FileFrames {
    /// Opens `path`: `.png`, `.jpg` and `.jpeg` are read as one still, anything else is decoded
    /// with GStreamer.
    pub fn open(path: &Path, camera: &str) -> Result<FileFrames, Error> {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        if matches!(ext.as_str(), "png" | "jpg" | "jpeg") {
            Ok(FileFrames::Image(Some(read_image(path, camera)?)))
        } else {
            Ok(FileFrames::Video(VideoFile::open(path, camera)?))
        }
    }
}

impl Iterator for FileFrames {
    type Item = Result<Frame, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            FileFrames::Image(f) => f.take().map(Ok),
            FileFrames::Video(v) => v.next(),
        }
    }
}

/// Reads a still image as an RGB frame (greyscale and alpha are converted).
pub fn read_image(path: &Path, camera: &str) -> Result<Frame, Error> {
    let img = image::open(path).map_err(|e| Error::Input {
        path: path.to_owned(),
        problem: e.to_string(),
    })?;
    let rgb = img.to_rgb8();
    Ok(Frame {
        camera: camera.into(),
        seq: 0,
        pts: Some(Duration::ZERO),
        wall: SystemTime::now(),
        width: rgb.width(),
        height: rgb.height(),
        rgb: Arc::from(rgb.into_raw()),
    })
}

/// A video file decoded to packed RGB by `filesrc ! decodebin ! videoconvert ! appsink`.
pub struct VideoFile {
    path: PathBuf,
    camera: CameraId,
    pipeline: gst::Pipeline,
    sink: gst_app::AppSink,
    seq: u64,
    done: bool,
}

impl VideoFile {
    pub fn open(path: &Path, camera: &str) -> Result<VideoFile, Error> {
        let err = |problem: String| Error::Input {
            path: path.to_owned(),
            problem,
        };
        if !path.is_file() {
            return Err(err("no such file".into()));
        }
        init()?;
        let pipeline = gst::parse::launch_full(DECODE, None, gst::ParseFlags::FATAL_ERRORS)
            .map_err(|e| match e.kind::<gst::ParseError>() {
                Some(gst::ParseError::NoSuchElement) => Error::MissingElement(e.to_string()),
                _ => err(e.to_string()),
            })?
            .downcast::<gst::Pipeline>()
            .map_err(|_| err("not a pipeline".into()))?;
        // Names the pipeline in element paths of bus errors, as ingest's `camera-<id>`.
        if let Some(name) = path.file_name() {
            pipeline.set_property("name", format!("file-{}", name.to_string_lossy()));
        }
        let src = pipeline
            .by_name("src")
            .ok_or_else(|| err("no filesrc".into()))?;
        src.set_property("location", path.to_string_lossy().as_ref());
        let sink = pipeline
            .by_name("sink")
            .and_then(|s| s.downcast::<gst_app::AppSink>().ok())
            .ok_or_else(|| err("no appsink".into()))?;
        pipeline
            .set_state(gst::State::Playing)
            .map_err(|e| err(format!("cannot start decoding: {e}")))?;
        Ok(VideoFile {
            path: path.to_owned(),
            camera: camera.into(),
            pipeline,
            sink,
            seq: 0,
            done: false,
        })
    }

    /// The first error posted on the bus, if any.
    fn bus_error(&self) -> Option<Error> {
        let message = self
            .pipeline
            .bus()?
            .pop_filtered(&[gst::MessageType::Error])?;
        Some(bus_error(&message, &|s| s.to_owned()))
    }

    fn frame(&mut self, sample: &gst::Sample) -> Result<Frame, Error> {
        let frame = sample
            .caps()
            .zip(sample.buffer())
            .and_then(|(caps, buffer)| {
                let info = gst_video::VideoInfo::from_caps(caps).ok()?;
                to_frame(buffer, &info, &self.camera, self.seq, buffer.pts())
            })
            .ok_or_else(|| Error::Input {
                path: self.path.clone(),
                problem: format!("frame {}: a sample that is not RGB video", self.seq),
            })?;
        self.seq += 1;
        Ok(frame)
    }
}

impl Iterator for VideoFile {
    type Item = Result<Frame, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        // Not a blocking pull: a file that does not decode (not a video, no video stream) posts
        // an error but never reaches the appsink, not even as end of stream.
        loop {
            if let Some(sample) = self.sink.try_pull_sample(POLL) {
                return Some(self.frame(&sample));
            }
            let error = self.bus_error();
            if error.is_some() || self.sink.is_eos() {
                self.done = true;
                return error.map(Err);
            }
        }
    }
}

impl Drop for VideoFile {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}
