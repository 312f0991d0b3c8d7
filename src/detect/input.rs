//! Frames from a still image or a video file, for `affectd detect`, tests and benchmarks.
//! (The daemon's live sources are in `ingest`.)

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::*;

use crate::types::Frame;

use super::Error;

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
    camera: Arc<str>,
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
        gst::init().map_err(|e| err(format!("GStreamer init: {e}")))?;
        let pipeline = gst::parse::launch(
            "filesrc name=src ! decodebin ! videoconvert ! video/x-raw,format=RGB ! \
             appsink name=sink sync=false max-buffers=4",
        )
        .map_err(|e| err(e.to_string()))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| err("not a pipeline".into()))?;
        let src = pipeline
            .by_name("src")
            .ok_or_else(|| err("no filesrc".into()))?;
        // A user-supplied path is a property, never pasted into launch syntax.
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

    fn bus_error(&self) -> Option<Error> {
        let bus = self.pipeline.bus()?;
        while let Some(msg) = bus.pop() {
            if let gst::MessageView::Error(e) = msg.view() {
                return Some(Error::Input {
                    path: self.path.clone(),
                    problem: format!(
                        "{}: {} ({})",
                        e.src()
                            .map(|s| s.path_string().to_string())
                            .unwrap_or_default(),
                        e.error(),
                        e.debug().map(|d| d.to_string()).unwrap_or_default()
                    ),
                });
            }
        }
        None
    }

    fn frame(&mut self, sample: gst::Sample) -> Result<Frame, Error> {
        let err = |problem: &str| Error::Input {
            path: self.path.clone(),
            problem: problem.to_owned(),
        };
        let caps = sample.caps().ok_or_else(|| err("sample without caps"))?;
        let info = gst_video::VideoInfo::from_caps(caps).map_err(|_| err("bad video caps"))?;
        let buffer = sample
            .buffer()
            .ok_or_else(|| err("sample without buffer"))?;
        let pts = buffer.pts().map(|t| Duration::from_nanos(t.nseconds()));
        let vf = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info)
            .map_err(|_| err("cannot map buffer"))?;
        let (w, h) = (info.width(), info.height());
        let stride = vf.plane_stride()[0] as usize;
        let data = vf.plane_data(0).map_err(|_| err("no plane 0"))?;
        let row = w as usize * 3;
        let mut rgb = Vec::with_capacity(row * h as usize);
        for y in 0..h as usize {
            rgb.extend_from_slice(&data[y * stride..y * stride + row]);
        }
        let seq = self.seq;
        self.seq += 1;
        Ok(Frame {
            camera: self.camera.clone(),
            seq,
            pts,
            wall: SystemTime::now(),
            width: w,
            height: h,
            rgb: Arc::from(rgb),
        })
    }
}

impl Iterator for VideoFile {
    type Item = Result<Frame, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.sink.pull_sample() {
            Ok(sample) => Some(self.frame(sample)),
            Err(_) => {
                self.done = true;
                // End of stream, or an error on the bus.
                self.bus_error().map(Err)
            }
        }
    }
}

impl Drop for VideoFile {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}
