//! Drawing one annotated frame and encoding it as JPEG: per person its box, a label with the
//! track id and top emotion, and a small valence/arousal square (valence left to right,
//! arousal bottom to top, a dot where the person is).

use image::codecs::jpeg::JpegEncoder;
use image::{ExtendedColorType, Rgb, RgbImage};

use super::Scene;
use crate::draw;

/// What the view writes beside a box: the latest read-out of the track.
#[derive(Debug, Clone)]
pub struct Label {
    pub top_emotion: String,
    pub valence: f32,
    pub arousal: f32,
}

/// JPEG quality of the view (libjpeg's scale).
const QUALITY: u8 = 80;
/// Text scale: 3x5 glyphs drawn 2x.
const SCALE: u32 = 2;
/// Side of the valence/arousal square, in pixels.
const VA_SIDE: u32 = 31;

/// Track colours, by id.
const PALETTE: [[u8; 3]; 8] = [
    [230, 25, 75],
    [60, 180, 75],
    [255, 225, 25],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
];

/// The scene drawn and JPEG-encoded; `label` gives a track's read-out, if it has one yet.
/// Frames wider than `max_width` are scaled down first (by an integer factor).
pub fn render(
    scene: &Scene,
    label: impl Fn(u64) -> Option<Label>,
    max_width: u32,
) -> image::ImageResult<Vec<u8>> {
    let frame = &scene.frame;
    let step = frame.width.div_ceil(max_width.max(1)).max(1);
    let mut img = downscale(frame.width, frame.height, &frame.rgb, step);
    let s = 1.0 / step as f32;
    for (id, b) in &scene.boxes {
        let colour = Rgb(PALETTE[(*id % PALETTE.len() as u64) as usize]);
        let clamp = |v: f32, hi: u32| ((v * s).max(0.0) as u32).min(hi.saturating_sub(1));
        let (x0, y0) = (clamp(b.x1, img.width()), clamp(b.y1, img.height()));
        let (x1, y1) = (clamp(b.x2, img.width()), clamp(b.y2, img.height()));
        draw::frame_rect(&mut img, (x0, y0), (x1 + 1, y1 + 1), 2, colour);
        let read = label(*id);
        let caption = match &read {
            Some(l) => format!("#{id} {}", l.top_emotion),
            None => format!("#{id}"),
        };
        let (cw, ch) = (
            caption.len() as u32 * draw::advance(SCALE) + 4,
            draw::text_height(SCALE) + 4,
        );
        let cy = if y0 >= ch {
            y0 - ch
        } else {
            y1.saturating_sub(ch)
        };
        draw::fill(&mut img, x0, cy, cw, ch, colour);
        draw::text(&mut img, x0 + 2, cy + 2, &caption, SCALE, Rgb([0, 0, 0]));
        if let Some(l) = read {
            va_marker(&mut img, x1.saturating_sub(VA_SIDE + 2), y0 + 3, &l, colour);
        }
    }
    let mut out = Vec::with_capacity(img.len() / 8);
    JpegEncoder::new_with_quality(&mut out, QUALITY).encode(
        img.as_raw(),
        img.width(),
        img.height(),
        ExtendedColorType::Rgb8,
    )?;
    Ok(out)
}

/// The frame as an image, keeping one pixel in `step` each way.
fn downscale(width: u32, height: u32, rgb: &[u8], step: u32) -> RgbImage {
    if step == 1 {
        return RgbImage::from_raw(width, height, rgb.to_vec())
            .unwrap_or_else(|| RgbImage::new(width, height));
    }
    let (w, h) = (width / step, height / step);
    RgbImage::from_fn(w, h, |x, y| {
        let i = ((y * step) as usize * width as usize + (x * step) as usize) * 3;
        rgb.get(i..i + 3)
            .map_or(Rgb([0, 0, 0]), |p| Rgb([p[0], p[1], p[2]]))
    })
}

/// A shaded square at (x, y) with its axes and a dot at (valence, arousal).
fn va_marker(img: &mut RgbImage, x: u32, y: u32, l: &Label, colour: Rgb<u8>) {
    draw::shade(img, x, y, VA_SIDE, VA_SIDE, 0.35);
    let half = VA_SIDE / 2;
    let grey = Rgb([160, 160, 160]);
    draw::fill(img, x, y + half, VA_SIDE, 1, grey);
    draw::fill(img, x + half, y, 1, VA_SIDE, grey);
    let at = |v: f32| (v.clamp(-1.0, 1.0) * (half as f32 - 2.0)).round() as i64;
    let dx = (i64::from(x + half) + at(l.valence) - 2).max(0) as u32;
    let dy = (i64::from(y + half) - at(l.arousal) - 2).max(0) as u32;
    draw::fill(img, dx, dy, 5, 5, colour);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::SystemTime;

    use super::*;
    use crate::types::{BBox, Frame};

    fn scene(width: u32, height: u32) -> Scene {
        Scene {
            frame: Frame {
                camera: Arc::from("cam"),
                seq: 0,
                pts: None,
                wall: SystemTime::now(),
                width,
                height,
                rgb: vec![90u8; (width * height * 3) as usize].into(),
            },
            boxes: vec![(1, BBox::new(40.0, 60.0, 140.0, 300.0))],
        }
    }

    #[test]
    fn a_person_is_boxed_labelled_and_placed_on_the_valence_arousal_square() {
        let label = |_| {
            Some(Label {
                top_emotion: "happy".into(),
                valence: 1.0,
                arousal: -1.0,
            })
        };
        let jpeg = render(&scene(320, 320), label, 1920).unwrap();
        let img = image::load_from_memory(&jpeg).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (320, 320));
        let near = |p: &Rgb<u8>, c: [u8; 3]| p.0.iter().zip(c).all(|(a, b)| a.abs_diff(b) < 40);
        // Track 1's colour on the box's left edge, mid-height.
        assert!(near(img.get_pixel(40, 180), PALETTE[1]));
        // Valence 1, arousal -1: the dot sits in the square's bottom-right corner, and the
        // square's top-left quadrant is shaded, not the frame's grey.
        let (sx, sy) = (141 - VA_SIDE - 2, 60 + 3);
        assert!(near(
            img.get_pixel(sx + VA_SIDE - 4, sy + VA_SIDE - 4),
            PALETTE[1]
        ));
        assert!(img.get_pixel(sx + 4, sy + 4).0[0] < 60);
        // Nothing outside the box is touched.
        assert!(near(img.get_pixel(250, 250), [90, 90, 90]));
    }

    #[test]
    fn wide_frames_are_scaled_down_and_a_person_without_a_readout_keeps_the_id() {
        let jpeg = render(&scene(3840, 400), |_| None, 1920).unwrap();
        let img = image::load_from_memory(&jpeg).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (1920, 200));
    }
}
