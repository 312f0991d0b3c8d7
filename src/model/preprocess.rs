//! Frames and detections -> encoder inputs: ImageNet-normalised pixels [3, S, S] and the
//! subject mask [S, S].
//!
//! Two crop policies:
//! - `CropPolicy::CentreCrop`: the official evaluation (upstream `src/datasets/meld.py`
//!   151-166): resize the short side to 256 with PIL's bicubic filter, boxes mapped from
//!   detector space by `get_correct_bbox`, mask = union of the boxes scoring strictly above
//!   0.5 at the resized resolution, centre crop 224 of both.
//! - `CropPolicy::SubjectCentred`: for the live path, a square around the subject with
//!   generous context, kept inside the frame, resized to S; the mask follows the same
//!   transform. Subjects are never cropped away (the paper's main failure case, appendix).
//!
//! The resampler reproduces Pillow's `Image.resize(..., BICUBIC)` (what torchvision's
//! `F.resize` calls on PIL images) bit for bit: Keys cubic with a = -0.5, support widened by
//! the scale when shrinking, 22-bit fixed-point coefficients, horizontal then vertical pass
//! with 8-bit rounding in between. It is not torchvision's tensor `interpolate` (a = -0.75).

use candle_core::{Device, Tensor};

use crate::types::{BBox, Detection, Frame};

/// ImageNet channel means (EmotionCLIP normalises with these, not CLIP's).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// A box joins the subject mask when its score is strictly above this.
pub const MASK_SCORE_THRESHOLD: f32 = 0.5;

/// Borrowed packed RGB pixels, rows `width * 3` bytes apart.
#[derive(Debug, Clone, Copy)]
pub struct ImageView<'a> {
    pub width: usize,
    pub height: usize,
    pub rgb: &'a [u8],
}

impl<'a> ImageView<'a> {
    /// `None` when `rgb` is not `width * height * 3` bytes.
    pub fn new(width: usize, height: usize, rgb: &'a [u8]) -> Option<Self> {
        (rgb.len() == width * height * 3 && width > 0 && height > 0).then_some(Self {
            width,
            height,
            rgb,
        })
    }

    pub fn from_frame(frame: &'a Frame) -> Option<Self> {
        Self::new(frame.width as usize, frame.height as usize, &frame.rgb)
    }
}

/// Owned packed RGB pixels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

impl RgbImage {
    pub fn view(&self) -> ImageView<'_> {
        ImageView {
            width: self.width,
            height: self.height,
            rgb: &self.rgb,
        }
    }
}

/// One frame ready for the frame encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameInput {
    /// Side in pixels.
    pub size: usize,
    /// [3, size, size], channel-major, ImageNet-normalised.
    pub pixels: Vec<f32>,
    /// [size, size], 1 where the subject is.
    pub mask: Vec<u8>,
}

/// One frame's encoder input before normalisation: the `size` x `size` RGB crop and its
/// subject mask. `input()` is a pure function of it, so storing a crop (as capture does)
/// keeps exactly the tensors the encoder saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderCrop {
    /// Side in pixels.
    pub size: usize,
    /// Packed RGB, `size * size * 3` bytes.
    pub rgb: Vec<u8>,
    /// [size, size], 1 where the subject is.
    pub mask: Vec<u8>,
}

impl EncoderCrop {
    /// The normalised input of the frame encoder.
    pub fn input(&self) -> FrameInput {
        FrameInput {
            size: self.size,
            pixels: normalize(ImageView {
                width: self.size,
                height: self.size,
                rgb: &self.rgb,
            }),
            mask: self.mask.clone(),
        }
    }
}

/// Stacks prepared frames into the encoder's inputs on `device`: pixels [N, 3, S, S] f32 and
/// masks [N, S, S] u8. All inputs must have the same size.
pub fn stack(inputs: &[FrameInput], device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    let Some(first) = inputs.first() else {
        candle_core::bail!("no frames to stack")
    };
    let s = first.size;
    if let Some(odd) = inputs.iter().find(|i| i.size != s) {
        candle_core::bail!("frames of size {} and {s} in one batch", odd.size)
    }
    let n = inputs.len();
    let pixels: Vec<f32> = inputs
        .iter()
        .flat_map(|i| i.pixels.iter().copied())
        .collect();
    let masks: Vec<u8> = inputs.iter().flat_map(|i| i.mask.iter().copied()).collect();
    Ok((
        Tensor::from_vec(pixels, (n, 3, s, s), device)?,
        Tensor::from_vec(masks, (n, s, s), device)?,
    ))
}

/// How a frame is cropped to the encoder's square input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CropPolicy {
    /// The official evaluation: short side to `resize`, centre crop to the encoder size.
    CentreCrop { resize: usize },
    /// A square of side `context` x the subject box's longer side (at least `min_side`
    /// pixels, at most the frame's short side), centred on the subject and shifted to stay
    /// inside the frame, resized to the encoder size.
    SubjectCentred { context: f32, min_side: f32 },
}

impl CropPolicy {
    /// The official evaluation for 224 inputs.
    pub const OFFICIAL_EVAL: CropPolicy = CropPolicy::CentreCrop { resize: 256 };
    /// The live default: twice the subject's longer side, at least 224 px.
    pub const SUBJECT_DEFAULT: CropPolicy = CropPolicy::SubjectCentred {
        context: 2.0,
        min_side: 224.0,
    };
}

/// Builds the encoder input for one frame. `subject` are the boxes whose union is the subject
/// mask (the tracked person's own box in the live path; all detections in the official
/// evaluation), in frame pixels; only boxes scoring above 0.5 count. The subject-centred crop
/// is centred on the union of those boxes (the whole frame when there is none).
pub fn prepare(
    frame: ImageView,
    subject: &[Detection],
    policy: CropPolicy,
    size: usize,
) -> FrameInput {
    prepare_crop(frame, subject, policy, size).input()
}

/// `prepare` without the final normalisation.
pub fn prepare_crop(
    frame: ImageView,
    subject: &[Detection],
    policy: CropPolicy,
    size: usize,
) -> EncoderCrop {
    match policy {
        CropPolicy::CentreCrop { resize } => {
            let (w, h) = resized_size(frame.width, frame.height, resize);
            let resized = resize_bicubic(
                frame,
                [0.0, 0.0, frame.width as f64, frame.height as f64],
                w,
                h,
            );
            let sx = w as f64 / frame.width as f64;
            let sy = h as f64 / frame.height as f64;
            let boxes: Vec<Detection> = subject
                .iter()
                .map(|d| Detection {
                    bbox: BBox::new(
                        (d.bbox.x1 as f64 * sx) as f32,
                        (d.bbox.y1 as f64 * sy) as f32,
                        (d.bbox.x2 as f64 * sx) as f32,
                        (d.bbox.y2 as f64 * sy) as f32,
                    ),
                    score: d.score,
                })
                .collect();
            let mask = subject_mask(&boxes, w, h);
            centre_crop(&resized, &mask, size)
        }
        CropPolicy::SubjectCentred { context, min_side } => {
            let [left, top, side] =
                subject_square(frame.width, frame.height, subject, context, min_side);
            let pixels = resize_bicubic(frame, [left, top, left + side, top + side], size, size);
            let scale = size as f64 / side;
            let boxes: Vec<Detection> = subject
                .iter()
                .map(|d| Detection {
                    bbox: BBox::new(
                        ((d.bbox.x1 as f64 - left) * scale) as f32,
                        ((d.bbox.y1 as f64 - top) * scale) as f32,
                        ((d.bbox.x2 as f64 - left) * scale) as f32,
                        ((d.bbox.y2 as f64 - top) * scale) as f32,
                    ),
                    score: d.score,
                })
                .collect();
            EncoderCrop {
                size,
                rgb: pixels.rgb,
                mask: subject_mask(&boxes, size, size),
            }
        }
    }
}

/// The official evaluation path for a frame whose boxes are already at the resized
/// resolution (upstream order: resize, boxes -> mask, centre crop both, normalise).
pub fn centre_crop_input(resized: &RgbImage, resized_mask: &[u8], size: usize) -> FrameInput {
    centre_crop(resized, resized_mask, size).input()
}

/// `centre_crop_input` without the final normalisation.
pub fn centre_crop(resized: &RgbImage, resized_mask: &[u8], size: usize) -> EncoderCrop {
    let (left, top) = centre_crop_origin(resized.width, resized.height, size);
    let crop = crop(resized.view(), left, top, size, size);
    let mut mask = Vec::with_capacity(size * size);
    for y in top..top + size {
        mask.extend_from_slice(&resized_mask[y * resized.width + left..][..size]);
    }
    EncoderCrop {
        size,
        rgb: crop.rgb,
        mask,
    }
}

/// The square [left, top, side] (frame pixels, fractional) of the subject-centred policy.
pub fn subject_square(
    width: usize,
    height: usize,
    subject: &[Detection],
    context: f32,
    min_side: f32,
) -> [f64; 3] {
    let (w, h) = (width as f64, height as f64);
    let short = w.min(h);
    let boxes: Vec<BBox> = subject
        .iter()
        .filter(|d| d.score > MASK_SCORE_THRESHOLD)
        .map(|d| d.bbox.clamped(width as f32, height as f32))
        .collect();
    let Some(first) = boxes.first() else {
        return [(w - short) / 2.0, (h - short) / 2.0, short];
    };
    let union = boxes.iter().fold(*first, |u, b| {
        BBox::new(
            u.x1.min(b.x1),
            u.y1.min(b.y1),
            u.x2.max(b.x2),
            u.y2.max(b.y2),
        )
    });
    let longer = f64::from(union.width().max(union.height()));
    let side = (longer * f64::from(context))
        .max(f64::from(min_side))
        .min(short)
        .max(1.0);
    let cx = f64::from(union.x1 + union.x2) / 2.0;
    let cy = f64::from(union.y1 + union.y2) / 2.0;
    let left = (cx - side / 2.0).clamp(0.0, w - side);
    let top = (cy - side / 2.0).clamp(0.0, h - side);
    [left, top, side]
}

/// Union of the boxes scoring strictly above 0.5, as a [height, width] 0/1 mask (upstream
/// `bbox_to_mask`). Fractional edges widen the box: floor of x1/y1, ceil of x2/y2 (upstream
/// `get_correct_bbox`); boxes are clamped into the image.
pub fn subject_mask(boxes: &[Detection], width: usize, height: usize) -> Vec<u8> {
    let mut mask = vec![0u8; width * height];
    for d in boxes.iter().filter(|d| d.score > MASK_SCORE_THRESHOLD) {
        let span = |lo: f32, hi: f32, n: usize| {
            let lo = (lo.floor().max(0.0) as usize).min(n);
            let hi = (hi.ceil().max(0.0) as usize).min(n);
            lo..hi.max(lo)
        };
        let xs = span(d.bbox.x1, d.bbox.x2, width);
        for y in span(d.bbox.y1, d.bbox.y2, height) {
            mask[y * width + xs.start..y * width + xs.end].fill(1);
        }
    }
    mask
}

/// Upstream `get_correct_bbox`: boxes from detector space (a `det_w` x `det_h` letterbox of
/// an image of `width` x `height`, scale only) to integer image pixels.
pub fn detector_to_image(
    boxes: &[Detection],
    width: usize,
    height: usize,
    det_w: usize,
    det_h: usize,
) -> Vec<Detection> {
    let r = (det_w as f64 / width as f64).min(det_h as f64 / height as f64);
    boxes
        .iter()
        .map(|d| {
            let b = d.bbox;
            Detection {
                bbox: BBox::new(
                    (f64::from(b.x1) / r).floor().max(0.0) as f32,
                    (f64::from(b.y1) / r).floor().max(0.0) as f32,
                    (f64::from(b.x2) / r).ceil().min(width as f64) as f32,
                    (f64::from(b.y2) / r).ceil().min(height as f64) as f32,
                ),
                score: d.score,
            }
        })
        .collect()
}

/// torchvision's `Resize(int)` output size: short side to `short`, the long side scaled and
/// truncated.
pub fn resized_size(width: usize, height: usize, short: usize) -> (usize, usize) {
    if width <= height {
        (
            short,
            (short as f64 * height as f64 / width as f64) as usize,
        )
    } else {
        (
            (short as f64 * width as f64 / height as f64) as usize,
            short,
        )
    }
}

/// torchvision's `center_crop` origin: `int(round((size - crop) / 2))`, ties to even.
pub fn centre_crop_origin(width: usize, height: usize, crop: usize) -> (usize, usize) {
    let o = |n: usize| ((n.saturating_sub(crop)) as f64 / 2.0).round_ties_even() as usize;
    (o(width), o(height))
}

/// A `w` x `h` window of `src` at (`left`, `top`); must lie inside.
pub fn crop(src: ImageView, left: usize, top: usize, w: usize, h: usize) -> RgbImage {
    assert!(
        left + w <= src.width && top + h <= src.height,
        "crop outside the image"
    );
    let mut rgb = Vec::with_capacity(w * h * 3);
    for y in top..top + h {
        let row = (y * src.width + left) * 3;
        rgb.extend_from_slice(&src.rgb[row..row + w * 3]);
    }
    RgbImage {
        width: w,
        height: h,
        rgb,
    }
}

/// `ToTensor` + `Normalize(IMAGENET_MEAN, IMAGENET_STD)`: [3, H, W] f32, same op order.
pub fn normalize(src: ImageView) -> Vec<f32> {
    let n = src.width * src.height;
    let mut out = vec![0f32; 3 * n];
    for (i, px) in src.rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            let v = f32::from(px[c]) / 255.0;
            out[c * n + i] = (v - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        }
    }
    out
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's bicubic kernel (a = -0.5).
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Pillow `precompute_coeffs` + `normalize_coeffs_8bpc`: per output pixel, the first input
/// index and fixed-point weights.
fn coefficients(in_size: usize, in0: f64, in1: f64, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = (in1 - in0) / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = in0 + (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C casts truncate toward zero.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = (((center + support + 0.5) as i64).min(in_size as i64) as usize).max(xmin);
            let mut k: Vec<f64> = (xmin..xmax)
                .map(|x| bicubic((x as f64 - center + 0.5) * ss))
                .collect();
            let ww: f64 = k.iter().sum();
            if ww != 0.0 {
                k.iter_mut().for_each(|v| *v /= ww);
            }
            let fixed = k
                .iter()
                .map(|&v| {
                    let s = v * f64::from(1u32 << PRECISION_BITS);
                    if v < 0.0 {
                        (s - 0.5) as i32
                    } else {
                        (s + 0.5) as i32
                    }
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow `Image.resize((out_w, out_h), BICUBIC, box=region)` on RGB; `region` is
/// [left, top, right, bottom] in source pixels (fractional allowed).
pub fn resize_bicubic(src: ImageView, region: [f64; 4], out_w: usize, out_h: usize) -> RgbImage {
    let [x0, y0, x1, y1] = region;
    let xc = coefficients(src.width, x0, x1, out_w);
    let yc = coefficients(src.height, y0, y1, out_h);
    // Horizontal pass over the rows the vertical pass needs.
    let row_lo = yc.first().map_or(0, |(m, _)| *m);
    let row_hi = yc.iter().map(|(m, k)| m + k.len()).max().unwrap_or(0);
    let rows = row_hi.saturating_sub(row_lo);
    let mut tmp = vec![0u8; rows * out_w * 3];
    for r in 0..rows {
        let src_row = &src.rgb[(row_lo + r) * src.width * 3..][..src.width * 3];
        for (x, (xmin, k)) in xc.iter().enumerate() {
            for c in 0..3 {
                let mut acc: i32 = 1 << (PRECISION_BITS - 1);
                for (j, &w) in k.iter().enumerate() {
                    acc += i32::from(src_row[(xmin + j) * 3 + c]) * w;
                }
                tmp[(r * out_w + x) * 3 + c] = clip8(acc);
            }
        }
    }
    let mut out = vec![0u8; out_h * out_w * 3];
    for (y, (ymin, k)) in yc.iter().enumerate() {
        for x in 0..out_w {
            for c in 0..3 {
                let mut acc: i32 = 1 << (PRECISION_BITS - 1);
                for (j, &w) in k.iter().enumerate() {
                    acc += i32::from(tmp[((ymin - row_lo + j) * out_w + x) * 3 + c]) * w;
                }
                out[(y * out_w + x) * 3 + c] = clip8(acc);
            }
        }
    }
    RgbImage {
        width: out_w,
        height: out_h,
        rgb: out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(x1: f32, y1: f32, x2: f32, y2: f32, score: f32) -> Detection {
        Detection {
            bbox: BBox::new(x1, y1, x2, y2),
            score,
        }
    }

    #[test]
    fn mask_takes_boxes_strictly_above_half() {
        let m = subject_mask(&[det(0., 0., 2., 2., 0.5), det(2., 1., 4., 3., 0.51)], 4, 4);
        assert_eq!(m, [0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0]);
    }

    #[test]
    fn mask_widens_fractional_edges_and_clamps() {
        let m = subject_mask(&[det(-3., 0.5, 1.2, 1.0, 0.9)], 3, 2);
        assert_eq!(m, [1, 1, 0, 0, 0, 0]);
    }

    #[test]
    fn resize_keeps_a_flat_image_flat_and_identity_is_exact() {
        let flat = vec![77u8; 10 * 6 * 3];
        let v = ImageView::new(10, 6, &flat).unwrap();
        let up = resize_bicubic(v, [0., 0., 10., 6.], 23, 13);
        assert!(up.rgb.iter().all(|&p| p == 77));
        let noise: Vec<u8> = (0..10 * 6 * 3).map(|i| (i * 37 % 251) as u8).collect();
        let v = ImageView::new(10, 6, &noise).unwrap();
        assert_eq!(resize_bicubic(v, [0., 0., 10., 6.], 10, 6).rgb, noise);
    }

    #[test]
    fn subject_square_stays_inside_and_contains_the_subject() {
        let s = subject_square(640, 480, &[det(600., 100., 630., 200., 0.9)], 2.0, 0.0);
        let [left, top, side] = s;
        assert_eq!(side, 200.0);
        assert!(left + side <= 640.0 && top >= 0.0 && top + side <= 480.0);
        assert!(left <= 600.0 && left + side >= 630.0);
        // No subject: the centred square of the short side.
        assert_eq!(subject_square(640, 480, &[], 2.0, 0.0), [80.0, 0.0, 480.0]);
        // A huge subject is capped at the frame's short side.
        assert_eq!(
            subject_square(640, 480, &[det(0., 0., 640., 480., 0.9)], 2.0, 0.0)[2],
            480.0
        );
    }

    #[test]
    fn subject_centred_mask_follows_the_crop() {
        let rgb = vec![128u8; 400 * 300 * 3];
        let frame = ImageView::new(400, 300, &rgb).unwrap();
        let person = det(100., 100., 150., 200., 0.9);
        let input = prepare(
            frame,
            &[person],
            CropPolicy::SubjectCentred {
                context: 2.0,
                min_side: 0.0,
            },
            224,
        );
        assert_eq!(input.pixels.len(), 3 * 224 * 224);
        // Square of side 200 at (25, 50): the box maps to x 84..140, y 56..168.
        let covered: usize = input.mask.iter().map(|&m| m as usize).sum();
        assert_eq!(covered, (140 - 84) * (168 - 56));
        assert_eq!(input.mask[60 * 224 + 90], 1);
        assert_eq!(input.mask[10 * 224 + 10], 0);
    }
}
