//! Letterboxing: scale a frame to fit the network input, keep its aspect ratio, pad the rest,
//! and write normalised NCHW planes. The resampling tables are cached per frame size, so the
//! hot path allocates nothing.

use crate::types::{BBox, Frame};

use super::manifest::{ChannelOrder, Manifest};

/// The mapping between frame pixels and network-input pixels: `input = frame * scale + pad`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    pub scale: f32,
    pub pad_x: f32,
    pub pad_y: f32,
}

impl Letterbox {
    /// Fits a `src_w` x `src_h` image into `dst_w` x `dst_h`, centred.
    pub fn fit(src_w: u32, src_h: u32, dst_w: u32, dst_h: u32) -> Letterbox {
        let scale = (dst_w as f32 / src_w as f32).min(dst_h as f32 / src_h as f32);
        let (w, h) = Self::content_size(src_w, src_h, scale, dst_w, dst_h);
        Letterbox {
            scale,
            pad_x: ((dst_w - w) / 2) as f32,
            pad_y: ((dst_h - h) / 2) as f32,
        }
    }

    fn content_size(src_w: u32, src_h: u32, scale: f32, dst_w: u32, dst_h: u32) -> (u32, u32) {
        let w = ((src_w as f32 * scale).round() as u32).clamp(1, dst_w);
        let h = ((src_h as f32 * scale).round() as u32).clamp(1, dst_h);
        (w, h)
    }

    /// A box in network-input pixels mapped back to frame pixels (not clamped).
    pub fn to_frame(&self, b: &BBox) -> BBox {
        BBox::new(
            (b.x1 - self.pad_x) / self.scale,
            (b.y1 - self.pad_y) / self.scale,
            (b.x2 - self.pad_x) / self.scale,
            (b.y2 - self.pad_y) / self.scale,
        )
    }

    /// A box in frame pixels mapped into network-input pixels.
    pub fn to_input(&self, b: &BBox) -> BBox {
        BBox::new(
            b.x1 * self.scale + self.pad_x,
            b.y1 * self.scale + self.pad_y,
            b.x2 * self.scale + self.pad_x,
            b.y2 * self.scale + self.pad_y,
        )
    }
}

/// A frame that cannot be read as packed RGB of its stated size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("frame of {width}x{height} has {len} bytes, needs {need}")]
pub struct BadFrame {
    pub width: u32,
    pub height: u32,
    pub len: usize,
    pub need: usize,
}

/// One bilinear tap: two source indices and the weight of the second.
#[derive(Debug, Clone, Copy, Default)]
struct Tap {
    i0: u32,
    i1: u32,
    w1: f32,
}

/// Letterboxes frames into normalised NCHW float planes.
#[derive(Debug)]
pub struct Preprocessor {
    dst_w: u32,
    dst_h: u32,
    /// For each output plane, the RGB channel it reads.
    src_channel: [usize; 3],
    /// Per output plane: value = pixel * mul + add.
    mul: [f32; 3],
    add: [f32; 3],
    pad: u8,
    /// Cached for the last frame size.
    src_size: (u32, u32),
    letterbox: Letterbox,
    content: (u32, u32),
    xs: Vec<Tap>,
    ys: Vec<Tap>,
}

impl Preprocessor {
    pub fn new(manifest: &Manifest) -> Preprocessor {
        let src_channel = match manifest.channel_order {
            ChannelOrder::Rgb => [0, 1, 2],
            ChannelOrder::Bgr => [2, 1, 0],
        };
        let mul = manifest.std.map(|s| 1.0 / s);
        let add = [0, 1, 2].map(|c| -manifest.mean[c] / manifest.std[c]);
        Preprocessor {
            dst_w: manifest.input_width,
            dst_h: manifest.input_height,
            src_channel,
            mul,
            add,
            pad: manifest.pad_value,
            src_size: (0, 0),
            letterbox: Letterbox {
                scale: 1.0,
                pad_x: 0.0,
                pad_y: 0.0,
            },
            content: (0, 0),
            xs: Vec::new(),
            ys: Vec::new(),
        }
    }

    /// Floats one frame takes in the input tensor.
    pub fn plane_len(&self) -> usize {
        3 * self.dst_w as usize * self.dst_h as usize
    }

    /// Writes `frame` letterboxed and normalised into `out` (`plane_len()` floats, CHW).
    pub fn fill(&mut self, frame: &Frame, out: &mut [f32]) -> Result<Letterbox, BadFrame> {
        let need = frame.width as usize * frame.height as usize * 3;
        if frame.width == 0 || frame.height == 0 || frame.rgb.len() < need {
            return Err(BadFrame {
                width: frame.width,
                height: frame.height,
                len: frame.rgb.len(),
                need,
            });
        }
        assert_eq!(out.len(), self.plane_len(), "input buffer size");
        if self.src_size != (frame.width, frame.height) {
            self.prepare(frame.width, frame.height);
        }
        let (dw, dh) = (self.dst_w as usize, self.dst_h as usize);
        let (cw, ch) = (self.content.0 as usize, self.content.1 as usize);
        let (px, py) = (self.letterbox.pad_x as usize, self.letterbox.pad_y as usize);
        let row_bytes = frame.width as usize * 3;
        let rgb = &frame.rgb[..need];
        let (p0, rest) = out.split_at_mut(dw * dh);
        let (p1, p2) = rest.split_at_mut(dw * dh);
        let planes = [p0, p1, p2];
        let pad = [0, 1, 2].map(|c| self.pad as f32 * self.mul[c] + self.add[c]);
        for (c, plane) in planes.into_iter().enumerate() {
            let sc = self.src_channel[c];
            let (mul, add) = (self.mul[c], self.add[c]);
            for y in 0..dh {
                let row = &mut plane[y * dw..(y + 1) * dw];
                if y < py || y >= py + ch {
                    row.fill(pad[c]);
                    continue;
                }
                row[..px].fill(pad[c]);
                row[px + cw..].fill(pad[c]);
                let ty = self.ys[y - py];
                let r0 = &rgb[ty.i0 as usize * row_bytes..][..row_bytes];
                let r1 = &rgb[ty.i1 as usize * row_bytes..][..row_bytes];
                for (dst, tx) in row[px..px + cw].iter_mut().zip(&self.xs) {
                    let (a, b) = (tx.i0 as usize * 3 + sc, tx.i1 as usize * 3 + sc);
                    let top = r0[a] as f32 + (r0[b] as f32 - r0[a] as f32) * tx.w1;
                    let bot = r1[a] as f32 + (r1[b] as f32 - r1[a] as f32) * tx.w1;
                    let v = top + (bot - top) * ty.w1;
                    *dst = v * mul + add;
                }
            }
        }
        Ok(self.letterbox)
    }

    fn prepare(&mut self, w: u32, h: u32) {
        let lb = Letterbox::fit(w, h, self.dst_w, self.dst_h);
        let content = Letterbox::content_size(w, h, lb.scale, self.dst_w, self.dst_h);
        let taps = |n: u32, src: u32, out: &mut Vec<Tap>| {
            out.clear();
            // Align pixel centres: source x for output pixel i is (i + 0.5) * src / n - 0.5.
            let ratio = src as f32 / n as f32;
            for i in 0..n {
                let s = ((i as f32 + 0.5) * ratio - 0.5).clamp(0.0, (src - 1) as f32);
                let i0 = s.floor() as u32;
                let i1 = (i0 + 1).min(src - 1);
                out.push(Tap {
                    i0,
                    i1,
                    w1: s - i0 as f32,
                });
            }
        };
        taps(content.0, w, &mut self.xs);
        taps(content.1, h, &mut self.ys);
        self.src_size = (w, h);
        self.letterbox = lb;
        self.content = content;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn manifest(order: ChannelOrder, w: u32, h: u32) -> Manifest {
        Manifest {
            model: "x.onnx".into(),
            sha256: "0".repeat(64),
            layout: super::super::manifest::Layout::Yolov8,
            input_width: w,
            input_height: h,
            channel_order: order,
            mean: [0.0; 3],
            std: [1.0; 3],
            pad_value: 114,
            num_classes: 1,
            person_class: 0,
            strides: vec![],
            reg_bins: 0,
            centre_offset: 0.5,
            outputs: vec![],
            dir: ".".into(),
        }
    }

    fn frame(w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> Frame {
        let mut rgb = Vec::with_capacity((w * h * 3) as usize);
        for y in 0..h {
            for x in 0..w {
                rgb.extend_from_slice(&f(x, y));
            }
        }
        Frame {
            camera: "t".into(),
            seq: 0,
            pts: None,
            wall: std::time::SystemTime::UNIX_EPOCH,
            width: w,
            height: h,
            rgb: Arc::from(rgb),
        }
    }

    #[test]
    fn letterbox_round_trips_boxes() {
        for (w, h) in [
            (768, 576),
            (576, 768),
            (640, 480),
            (416, 416),
            (1920, 1080),
            (7, 3),
        ] {
            let lb = Letterbox::fit(w, h, 416, 416);
            let b = BBox::new(0.0, 0.0, w as f32, h as f32);
            let i = lb.to_input(&b);
            assert!(
                i.x1 >= 0.0 && i.y1 >= 0.0 && i.x2 <= 416.5 && i.y2 <= 416.5,
                "{i:?}"
            );
            // The image touches both sides along its longer dimension.
            assert!(i.width() > 415.0 || i.height() > 415.0, "{i:?}");
            let back = lb.to_frame(&i);
            for (a, b) in [
                (back.x1, b.x1),
                (back.y1, b.y1),
                (back.x2, b.x2),
                (back.y2, b.y2),
            ] {
                assert!((a - b).abs() < 1e-3 * w.max(h) as f32, "{w}x{h}: {back:?}");
            }
        }
    }

    #[test]
    fn letterbox_of_a_wide_frame_pads_top_and_bottom_equally() {
        let lb = Letterbox::fit(768, 576, 416, 416);
        assert_eq!(lb.pad_x, 0.0);
        assert_eq!(lb.pad_y, 52.0);
        assert!((lb.scale - 416.0 / 768.0).abs() < 1e-6);
    }

    #[test]
    fn fill_pads_normalises_and_orders_channels() {
        // Left half red, right half blue; 8x4 into 8x8: 2 rows of padding above and below.
        let f = frame(8, 4, |x, _| if x < 4 { [200, 0, 0] } else { [0, 0, 100] });
        let mut pre = Preprocessor::new(&manifest(ChannelOrder::Bgr, 8, 8));
        let mut out = vec![f32::NAN; pre.plane_len()];
        let lb = pre.fill(&f, &mut out).unwrap();
        assert_eq!((lb.pad_x, lb.pad_y, lb.scale), (0.0, 2.0, 1.0));
        let at = |c: usize, x: usize, y: usize| out[c * 64 + y * 8 + x];
        assert_eq!(at(0, 0, 0), 114.0); // padding
        assert_eq!(at(2, 7, 7), 114.0);
        assert_eq!(at(2, 0, 2), 200.0); // plane 2 is R in BGR order
        assert_eq!(at(0, 0, 2), 0.0);
        assert_eq!(at(0, 7, 5), 100.0); // plane 0 is B
        assert!(out.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn fill_rejects_short_buffers_and_reuses_tables() {
        let mut pre = Preprocessor::new(&manifest(ChannelOrder::Rgb, 16, 16));
        let mut out = vec![0.0; pre.plane_len()];
        let mut bad = frame(4, 4, |_, _| [1, 2, 3]);
        bad.rgb = Arc::from(vec![0u8; 10]);
        assert!(pre.fill(&bad, &mut out).is_err());
        let good = frame(32, 8, |x, _| [x as u8 * 8, 0, 0]);
        pre.fill(&good, &mut out).unwrap();
        let cap = (pre.xs.capacity(), pre.ys.capacity());
        pre.fill(&good, &mut out).unwrap();
        assert_eq!(cap, (pre.xs.capacity(), pre.ys.capacity()));
        // A horizontal ramp stays monotonic after resampling.
        let row: Vec<f32> = (0..16).map(|x| out[6 * 16 + x]).collect();
        assert!(row.windows(2).all(|w| w[0] <= w[1]), "{row:?}");
    }
}
