//! The on-disk format `affectd-capture/1`.
//!
//! ```text
//! DIR/manifest.json        format, image_size S, video_len T, crop policy, model, created_by
//! DIR/index.jsonl          one sample per line, oldest first
//! DIR/samples/ID.rgb.png   the T encoder crops, RGB 8-bit, S wide and T*S high (frame 0 on top)
//! DIR/samples/ID.mask.png  their subject masks, grayscale 8-bit, 255 = subject, 0 = not
//! DIR/samples/ID.json      the sample's index line on its own (the index can be rebuilt)
//! DIR/next_id              the lowest id never used (ids never restart)
//! DIR/pins/*.json          windows a training run is reading: rotation keeps them
//! DIR/quarantine/          what a writer found and could not use: moved here, never deleted
//! ```
//!
//! A sample's files (images, then its own metadata) are complete and flushed before its
//! index line is appended, and the index is only ever rewritten through a temporary file and
//! a rename: a crash leaves at worst files that no line names or an incomplete last line.
//! Readers skip both; the next writer puts back into the index every sample whose files and
//! metadata are whole (so a lost `index.jsonl` is rebuilt from the files) and moves anything
//! else, with any index line it cannot read, to `quarantine/`. Files are mode 0640.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use image::codecs::png::{CompressionType, FilterType, PngDecoder, PngEncoder};
use image::{ColorType, ExtendedColorType, ImageDecoder, ImageEncoder};
use serde::{Deserialize, Serialize};

use super::CaptureError;
use crate::model::preprocess::{CropPolicy, EncoderCrop};

/// The `format` of datasets this build writes and reads.
pub const FORMAT: &str = "affectd-capture/1";
/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";
/// The index's file name.
pub const INDEX: &str = "index.jsonl";
/// The folder of the sample files.
pub const SAMPLES: &str = "samples";
/// Where a writer moves what it cannot use.
pub const QUARANTINE: &str = "quarantine";
/// The folder of the pins training runs hold.
pub const PINS: &str = "pins";
/// The file holding the lowest id never used.
pub const NEXT_ID: &str = "next_id";

/// `manifest.json`: what every sample of the dataset is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// Side S of the square encoder crops, in pixels.
    pub image_size: usize,
    /// Frames T per window.
    pub video_len: usize,
    /// How the crops were cut from the frames.
    pub crop: CropSpec,
    /// The model that was running when the dataset was created (each sample names its own).
    pub model: String,
    /// `affectd <version>`.
    pub created_by: String,
    /// RFC 3339 creation time.
    pub created: String,
}

impl Manifest {
    /// The manifest of a new dataset for a model taking `image_size` px x `video_len` frames.
    pub fn new(image_size: usize, video_len: usize, crop: CropPolicy, model: &str) -> Self {
        Self {
            format: FORMAT.to_owned(),
            image_size,
            video_len,
            crop: crop.into(),
            model: model.to_owned(),
            created_by: format!("affectd {}", env!("CARGO_PKG_VERSION")),
            created: crate::types::now_rfc3339(),
        }
    }

    /// A description of what the samples are, for error messages.
    pub fn shape(&self) -> String {
        format!(
            "{} px x {} frames cropped by {}",
            self.image_size, self.video_len, self.crop
        )
    }

    /// Whether samples for `other` can join this dataset (same crops; the model may differ).
    pub fn compatible(&self, other: &Manifest) -> bool {
        self.image_size == other.image_size
            && self.video_len == other.video_len
            && self.crop == other.crop
    }
}

/// The crop policy as recorded in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "lowercase", deny_unknown_fields)]
pub enum CropSpec {
    /// A square of `context` x the person box's longer side (at least `min_side` px).
    Subject { context: f32, min_side: f32 },
    /// Short side resized to `resize`, centre crop.
    Centre { resize: usize },
}

impl From<CropPolicy> for CropSpec {
    fn from(p: CropPolicy) -> Self {
        match p {
            CropPolicy::SubjectCentred { context, min_side } => Self::Subject { context, min_side },
            CropPolicy::CentreCrop { resize } => Self::Centre { resize },
        }
    }
}

impl From<CropSpec> for CropPolicy {
    fn from(c: CropSpec) -> Self {
        match c {
            CropSpec::Subject { context, min_side } => Self::SubjectCentred { context, min_side },
            CropSpec::Centre { resize } => Self::CentreCrop { resize },
        }
    }
}

impl std::fmt::Display for CropSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Subject { context, min_side } => {
                write!(f, "subject (context {context}, min_side {min_side})")
            }
            Self::Centre { resize } => write!(f, "centre (resize {resize})"),
        }
    }
}

/// One line of `index.jsonl`: one captured window of one track.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleMeta {
    /// Unique in the dataset, increasing with capture order (digits); names the files.
    pub id: String,
    pub camera: String,
    pub track_id: u64,
    /// `name` of the model that encoded the window.
    pub model: String,
    /// RFC 3339 time the window was captured.
    pub captured: String,
    /// Width and height of the camera frames, in pixels.
    pub frame_size: [u32; 2],
    /// The window's frames, oldest first.
    pub frames: Vec<FrameMeta>,
    /// Size of the sample's files together.
    pub bytes: u64,
    /// SHA-256 of the RGB then the mask file (hex): names the window's content, e.g. in the
    /// training caches. Absent in samples written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// One frame of a sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameMeta {
    /// Wall-clock time the frame left the decoder, in Unix milliseconds.
    pub wall_ms: u64,
    /// The camera's frame sequence number (restarts at 0 when its pipeline restarts).
    pub seq: u64,
    /// The person's box in frame pixels: x1, y1, x2, y2.
    pub bbox: [f32; 4],
}

impl FrameMeta {
    /// `wall_ms` as a time.
    pub fn wall(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(self.wall_ms)
    }
}

/// Unix milliseconds of `t` (0 before the epoch).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Sample ids are digits only, so they are safe file names.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit())
}

/// The id of the `n`-th sample: zero-padded, so names sort in capture order.
pub fn id_for(n: u64) -> String {
    format!("{n:010}")
}

/// The RGB and mask files of sample `id` in dataset `dir`.
pub fn sample_paths(dir: &Path, id: &str) -> (PathBuf, PathBuf) {
    let samples = dir.join(SAMPLES);
    (
        samples.join(format!("{id}.rgb.png")),
        samples.join(format!("{id}.mask.png")),
    )
}

/// The metadata file of sample `id` in dataset `dir`.
pub fn meta_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(SAMPLES).join(format!("{id}.json"))
}

/// The id a sample file belongs to, when `name` is one of ours.
pub fn id_of_file(name: &str) -> Option<&str> {
    let id = name
        .strip_suffix(".rgb.png")
        .or_else(|| name.strip_suffix(".mask.png"))
        .or_else(|| name.strip_suffix(".json"))?;
    valid_id(id).then_some(id)
}

/// The [`SampleMeta::digest`] of a sample's files.
pub fn digest(rgb: &[u8], mask: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(rgb);
    h.update(mask);
    hex::encode(h.finalize())
}

/// PNG-encodes a window: (RGB frames stacked vertically, masks stacked vertically as 0/255).
/// Every crop must be `size` square with a 0/1 mask.
pub fn encode_window(
    crops: &[&EncoderCrop],
    size: usize,
) -> Result<(Vec<u8>, Vec<u8>), CaptureError> {
    let t = crops.len();
    let mut rgb = Vec::with_capacity(t * size * size * 3);
    let mut mask = Vec::with_capacity(t * size * size);
    for (i, c) in crops.iter().enumerate() {
        if c.size != size || c.rgb.len() != size * size * 3 || c.mask.len() != size * size {
            return Err(CaptureError::BadWindow(format!(
                "frame {i} is a {} px crop with {} RGB bytes and {} mask bytes; the dataset \
                 takes {size} px",
                c.size,
                c.rgb.len(),
                c.mask.len()
            )));
        }
        if let Some(v) = c.mask.iter().find(|&&v| v > 1) {
            return Err(CaptureError::BadWindow(format!(
                "frame {i}'s mask holds {v}; masks are 0/1"
            )));
        }
        rgb.extend_from_slice(&c.rgb);
        mask.extend(c.mask.iter().map(|&v| v * 255));
    }
    let (w, h) = (size as u32, (t * size) as u32);
    let png = |pixels: &[u8], color: ExtendedColorType| -> Result<Vec<u8>, CaptureError> {
        let mut out = Vec::new();
        PngEncoder::new_with_quality(&mut out, CompressionType::Default, FilterType::Adaptive)
            .write_image(pixels, w, h, color)
            .map_err(|e| CaptureError::BadWindow(format!("PNG encoding failed: {e}")))?;
        Ok(out)
    };
    Ok((
        png(&rgb, ExtendedColorType::Rgb8)?,
        png(&mask, ExtendedColorType::L8)?,
    ))
}

/// Decodes a sample's two PNG files into its `t` crops of side `size`; `paths` label errors.
pub fn decode_window(
    rgb_png: &[u8],
    mask_png: &[u8],
    size: usize,
    t: usize,
    paths: (&Path, &Path),
) -> Result<Vec<EncoderCrop>, CaptureError> {
    let rgb = decode_png(rgb_png, ColorType::Rgb8, size, t * size, paths.0)?;
    let mask = decode_png(mask_png, ColorType::L8, size, t * size, paths.1)?;
    if let Some(v) = mask.iter().find(|&&v| v != 0 && v != 255) {
        return Err(CaptureError::corrupt(
            paths.1,
            format!("mask value {v}; masks hold only 0 and 255"),
        ));
    }
    let frame = size * size;
    Ok((0..t)
        .map(|i| EncoderCrop {
            size,
            rgb: rgb[i * frame * 3..(i + 1) * frame * 3].to_vec(),
            mask: mask[i * frame..(i + 1) * frame]
                .iter()
                .map(|&v| v / 255)
                .collect(),
        })
        .collect())
}

fn decode_png(
    bytes: &[u8],
    color: ColorType,
    width: usize,
    height: usize,
    path: &Path,
) -> Result<Vec<u8>, CaptureError> {
    let decoder = PngDecoder::new(Cursor::new(bytes))
        .map_err(|e| CaptureError::corrupt(path, format!("not a readable PNG: {e}")))?;
    let (w, h) = decoder.dimensions();
    if (w as usize, h as usize) != (width, height) || decoder.color_type() != color {
        return Err(CaptureError::corrupt(
            path,
            format!(
                "{w}x{h} {:?}, expected {width}x{height} {color:?}",
                decoder.color_type()
            ),
        ));
    }
    let mut pixels = vec![0u8; decoder.total_bytes() as usize];
    decoder
        .read_image(&mut pixels)
        .map_err(|e| CaptureError::corrupt(path, format!("not a readable PNG: {e}")))?;
    Ok(pixels)
}
