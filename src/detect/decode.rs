//! Output decoders, NMS and the mapping back to frame pixels. Pure functions over flat `f32`
//! slices: every layout is tested on hand-built tensors.

use crate::types::{BBox, Detection};

use super::Error;
use super::letterbox::Letterbox;
use super::manifest::{Layout, Manifest};

/// What every decoder needs: which class is a person and the score a box must reach.
#[derive(Debug, Clone, Copy)]
pub struct DecodeParams {
    pub num_classes: usize,
    pub person_class: usize,
    pub threshold: f32,
}

/// One level of a NanoDet GFL head, for one image.
#[derive(Debug, Clone, Copy)]
pub struct GflLevel<'a> {
    pub stride: u32,
    /// Grid columns (input width / stride, rounded up).
    pub grid_w: usize,
    /// `[cells, num_classes]`, sigmoid already applied.
    pub scores: &'a [f32],
    /// `[cells, 4 * bins]`: left, top, right, bottom distance logits.
    pub regs: &'a [f32],
    pub bins: usize,
    /// Anchor point of cell (col, row): ((col + offset) * stride, (row + offset) * stride).
    pub centre_offset: f32,
    /// Network input size (width, height): boxes are clamped into it before NMS, as NanoDet's
    /// `distance2bbox(..., max_shape)` does (it changes which overlapping boxes NMS keeps).
    pub input: (f32, f32),
}

/// Grid cells of a level at `stride` for a `w` x `h` input.
pub fn grid_cells(w: u32, h: u32, stride: u32) -> (usize, usize) {
    (w.div_ceil(stride) as usize, h.div_ceil(stride) as usize)
}

/// Decodes a NanoDet GFL level: for each side the softmax expectation over the bins, times
/// the stride, is the distance from the cell's anchor point (Li et al., Generalized Focal Loss);
/// the box is clamped into the network input. This is NanoDet's `get_bboxes` (`Integral`,
/// centre priors at (col + 0.5) * stride, `distance2bbox` with `max_shape`), for the person
/// class; tests/detect.rs compares it with a re-implementation of the official code.
pub fn decode_gfl(level: &GflLevel<'_>, p: &DecodeParams, out: &mut Vec<Detection>) {
    let nc = p.num_classes;
    let reg_len = 4 * level.bins;
    if nc == 0 || level.bins == 0 || level.grid_w == 0 {
        return;
    }
    let cells = (level.scores.len() / nc).min(level.regs.len() / reg_len);
    let s = level.stride as f32;
    for cell in 0..cells {
        let score = level.scores[cell * nc + p.person_class];
        if score.is_nan() || score < p.threshold {
            continue;
        }
        let cx = ((cell % level.grid_w) as f32 + level.centre_offset) * s;
        let cy = ((cell / level.grid_w) as f32 + level.centre_offset) * s;
        let reg = &level.regs[cell * reg_len..(cell + 1) * reg_len];
        let mut d = [0.0f32; 4];
        for (side, logits) in reg.chunks_exact(level.bins).enumerate() {
            d[side] = softmax_expectation(logits) * s;
        }
        let (w, h) = level.input;
        push_valid(
            out,
            BBox::new(cx - d[0], cy - d[1], cx + d[2], cy + d[3]).clamped(w, h),
            score,
        );
    }
}

fn softmax_expectation(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let (mut sum, mut weighted) = (0.0f32, 0.0f32);
    for (k, l) in logits.iter().enumerate() {
        let e = (l - max).exp();
        sum += e;
        weighted += e * k as f32;
    }
    if sum > 0.0 { weighted / sum } else { 0.0 }
}

/// Decodes a YOLOv5 raw output for one image: `rows` x (cx, cy, w, h, objectness, classes...).
/// The score is objectness x person-class probability.
pub fn decode_yolov5(data: &[f32], p: &DecodeParams, out: &mut Vec<Detection>) {
    let stride = 5 + p.num_classes;
    for row in data.chunks_exact(stride) {
        let score = row[4] * row[5 + p.person_class];
        if score >= p.threshold {
            push_valid(out, centre_box(row[0], row[1], row[2], row[3]), score);
        }
    }
}

/// Decodes a YOLOv8 / YOLO11 raw output for one image: `[4 + classes, n]` (channels first, as
/// Ultralytics exports it) or `[n, 4 + classes]` when `channels_first` is false.
pub fn decode_yolov8(
    data: &[f32],
    n: usize,
    channels_first: bool,
    p: &DecodeParams,
    out: &mut Vec<Detection>,
) {
    let ch = 4 + p.num_classes;
    if data.len() < n * ch {
        return;
    }
    let at = |i: usize, c: usize| {
        if channels_first {
            data[c * n + i]
        } else {
            data[i * ch + c]
        }
    };
    for i in 0..n {
        let score = at(i, 4 + p.person_class);
        if score >= p.threshold {
            push_valid(
                out,
                centre_box(at(i, 0), at(i, 1), at(i, 2), at(i, 3)),
                score,
            );
        }
    }
}

/// Decodes an end-to-end output for one image: rows of (x1, y1, x2, y2, score, class).
pub fn decode_end2end(data: &[f32], p: &DecodeParams, out: &mut Vec<Detection>) {
    for row in data.chunks_exact(6) {
        if row[5].round() as i64 == p.person_class as i64 && row[4] >= p.threshold {
            push_valid(out, BBox::new(row[0], row[1], row[2], row[3]), row[4]);
        }
    }
}

fn centre_box(cx: f32, cy: f32, w: f32, h: f32) -> BBox {
    BBox::new(cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0)
}

/// Keeps finite, non-empty boxes only: a broken model output is dropped, never propagated.
fn push_valid(out: &mut Vec<Detection>, bbox: BBox, score: f32) {
    let finite = [bbox.x1, bbox.y1, bbox.x2, bbox.y2, score]
        .iter()
        .all(|v| v.is_finite());
    if finite && bbox.x2 > bbox.x1 && bbox.y2 > bbox.y1 {
        out.push(Detection { bbox, score });
    }
}

/// Greedy non-maximum suppression in place: best score first, a box overlapping a kept one by
/// more than `iou` is dropped, at most `max` are kept.
pub fn nms(dets: &mut Vec<Detection>, iou: f32, max: usize) {
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept = 0;
    for i in 0..dets.len() {
        if kept == max {
            break;
        }
        let d = dets[i];
        if dets[..kept].iter().all(|k| k.bbox.iou(&d.bbox) <= iou) {
            dets[kept] = d;
            kept += 1;
        }
    }
    dets.truncate(kept);
}

/// Maps boxes from network-input pixels to frame pixels and clamps them into the frame;
/// boxes that end up empty (entirely in the padding) are dropped.
pub fn to_frame(dets: &mut Vec<Detection>, lb: &Letterbox, width: u32, height: u32) {
    for d in dets.iter_mut() {
        d.bbox = lb.to_frame(&d.bbox).clamped(width as f32, height as f32);
    }
    dets.retain(|d| d.bbox.width() > 0.0 && d.bbox.height() > 0.0);
}

/// Decodes image `b` of a batch of `batch` from the model's raw outputs (shape, data) with the
/// manifest's layout: persons unsorted, in network-input pixels.
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
                let (gw, gh) = grid_cells(m.input_width, m.input_height, stride);
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
                    input: (m.input_width as f32, m.input_height as f32),
                };
                decode_gfl(&level, p, out);
            }
        }
        Layout::Yolov5 => {
            let (_, d) = outputs.first().ok_or_else(|| shape_err("no output"))?;
            decode_yolov5(per_image(d).unwrap_or(&[]), p, out);
        }
        Layout::Yolov8 => {
            let (s, d) = outputs.first().ok_or_else(|| shape_err("no output"))?;
            let ch = (4 + m.num_classes) as i64;
            let (n, channels_first) = match s {
                [_, c, n] if *c == ch => (*n, true),
                [_, n, c] if *c == ch => (*n, false),
                _ => return Err(shape_err(&format!("expected [N, {ch}, n] or [N, n, {ch}]"))),
            };
            decode_yolov8(
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
            decode_end2end(data, p, out);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: DecodeParams = DecodeParams {
        num_classes: 3,
        person_class: 0,
        threshold: 0.25,
    };

    fn close(a: BBox, b: BBox) -> bool {
        [a.x1 - b.x1, a.y1 - b.y1, a.x2 - b.x2, a.y2 - b.y2]
            .iter()
            .all(|d| d.abs() < 1e-3)
    }

    /// Logits whose softmax expectation is exactly `k` (all mass on bin k).
    fn one_hot(bins: usize, k: usize) -> Vec<f32> {
        (0..bins)
            .map(|i| if i == k { 50.0 } else { -50.0 })
            .collect()
    }

    #[test]
    fn gfl_decodes_distances_from_cell_centres() {
        // 2x2 grid at stride 8 (16x16 input); only cell (col 1, row 0) is a person.
        let bins = 4;
        let mut scores = vec![0.0; 4 * 3];
        scores[3] = 0.9; // cell 1, class 0
        scores[2 * 3 + 1] = 0.99; // cell 2, class 1: not a person
        let mut regs = vec![0.0; 4 * 4 * bins];
        let sides = [1usize, 0, 2, 3]; // l, t, r, b in bins
        for (s, k) in sides.iter().enumerate() {
            regs[(4 * bins) + s * bins..(4 * bins) + (s + 1) * bins]
                .copy_from_slice(&one_hot(bins, *k));
        }
        let level = GflLevel {
            stride: 8,
            grid_w: 2,
            scores: &scores,
            regs: &regs,
            bins,
            centre_offset: 0.5,
            input: (40.0, 40.0),
        };
        let mut out = Vec::new();
        decode_gfl(&level, &P, &mut out);
        assert_eq!(out.len(), 1);
        // centre (12, 4); distances 8, 0, 16, 24
        assert!(
            close(out[0].bbox, BBox::new(4.0, 4.0, 28.0, 28.0)),
            "{out:?}"
        );
        // Clamped into the network input (here 16 x 16), as NanoDet's distance2bbox.
        out.clear();
        decode_gfl(
            &GflLevel {
                input: (16.0, 16.0),
                ..level
            },
            &P,
            &mut out,
        );
        assert!(
            close(out[0].bbox, BBox::new(4.0, 4.0, 16.0, 16.0)),
            "{out:?}"
        );
        assert_eq!(out[0].score, 0.9);
        // Corner convention moves the box by half a stride.
        out.clear();
        decode_gfl(
            &GflLevel {
                centre_offset: 0.0,
                ..level
            },
            &P,
            &mut out,
        );
        assert!(
            close(out[0].bbox, BBox::new(0.0, 0.0, 24.0, 24.0)),
            "{out:?}"
        );
    }

    #[test]
    fn softmax_expectation_of_uniform_logits_is_the_middle_bin() {
        assert!((softmax_expectation(&[0.0; 11]) - 5.0).abs() < 1e-5);
        assert!((softmax_expectation(&[1e4, 1e4]) - 0.5).abs() < 1e-5);
    }

    #[test]
    fn yolov5_multiplies_objectness_and_class() {
        #[rustfmt::skip]
        let data = [
            50.0, 40.0, 20.0, 10.0, 0.9, 0.8, 0.1, 0.1, // person 0.72
            10.0, 10.0, 4.0, 4.0, 0.9, 0.2, 0.9, 0.1,   // person 0.18 < 0.25
            10.0, 10.0, 4.0, 4.0, 0.1, 0.9, 0.9, 0.1,   // objectness too low
        ];
        let mut out = Vec::new();
        decode_yolov5(&data, &P, &mut out);
        assert_eq!(out.len(), 1);
        assert!(close(out[0].bbox, BBox::new(40.0, 35.0, 60.0, 45.0)));
        assert!((out[0].score - 0.72).abs() < 1e-6);
    }

    #[test]
    fn yolov8_reads_both_orientations() {
        // Two candidates, 4 + 3 channels.
        let rows = [
            [50.0, 40.0, 20.0, 10.0, 0.8, 0.1, 0.0],
            [10.0, 10.0, 4.0, 4.0, 0.1, 0.9, 0.0],
        ];
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let mut cf = vec![0.0; 14];
        for (i, r) in rows.iter().enumerate() {
            for (c, v) in r.iter().enumerate() {
                cf[c * 2 + i] = *v;
            }
        }
        for (data, first) in [(&cf, true), (&flat, false)] {
            let mut out = Vec::new();
            decode_yolov8(data, 2, first, &P, &mut out);
            assert_eq!(out.len(), 1, "channels_first {first}");
            assert!(close(out[0].bbox, BBox::new(40.0, 35.0, 60.0, 45.0)));
        }
    }

    #[test]
    fn end2end_keeps_persons_above_threshold() {
        #[rustfmt::skip]
        let data = [
            1.0, 2.0, 30.0, 40.0, 0.9, 0.0,
            1.0, 2.0, 30.0, 40.0, 0.9, 2.0,
            1.0, 2.0, 30.0, 40.0, 0.1, 0.0,
            5.0, 5.0, 5.0, 9.0, 0.9, 0.0, // empty
            f32::NAN, 0.0, 1.0, 1.0, 0.9, 0.0,
        ];
        let mut out = Vec::new();
        decode_end2end(&data, &P, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].bbox, BBox::new(1.0, 2.0, 30.0, 40.0));
    }

    #[test]
    fn nms_keeps_the_best_of_overlapping_boxes() {
        let d = |x: f32, s: f32| Detection {
            bbox: BBox::new(x, 0.0, x + 10.0, 10.0),
            score: s,
        };
        let mut dets = vec![d(0.0, 0.5), d(1.0, 0.9), d(20.0, 0.3), d(2.0, 0.6)];
        nms(&mut dets, 0.45, 100);
        assert_eq!(dets, vec![d(1.0, 0.9), d(20.0, 0.3)]);
        let mut many: Vec<_> = (0..10).map(|i| d(i as f32 * 20.0, 0.5)).collect();
        nms(&mut many, 0.45, 3);
        assert_eq!(many.len(), 3);
    }

    #[test]
    fn boxes_at_the_borders_are_mapped_back_and_clamped() {
        let lb = Letterbox::fit(768, 576, 416, 416); // pad_y 52
        let d = |b: BBox| Detection {
            bbox: b,
            score: 0.9,
        };
        let mut dets = vec![
            d(BBox::new(-5.0, 40.0, 50.0, 120.0)), // sticks out left and into the top pad
            d(BBox::new(380.0, 300.0, 430.0, 380.0)), // sticks out right and bottom
            d(BBox::new(100.0, 0.0, 150.0, 50.0)), // entirely in the top pad
        ];
        to_frame(&mut dets, &lb, 768, 576);
        assert_eq!(dets.len(), 2);
        let s = 768.0 / 416.0;
        assert!(close(dets[0].bbox, BBox::new(0.0, 0.0, 50.0 * s, 68.0 * s)));
        assert!(close(
            dets[1].bbox,
            BBox::new(380.0 * s, 248.0 * s, 768.0, 576.0)
        ));
    }

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
        // Image 0: centre (4, 4) -> (-4, -4, 12, 12), clamped into the 16 x 16 input.
        assert!(close(a[0].bbox, BBox::new(0.0, 0.0, 12.0, 12.0)), "{a:?}");
        // Image 1: centre (12, 12) -> (4, 4, 20, 20), clamped.
        assert!(close(b[0].bbox, BBox::new(4.0, 4.0, 16.0, 16.0)), "{b:?}");
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
}
