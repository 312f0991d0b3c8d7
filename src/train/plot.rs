//! A small line-chart PNG for the training reports (`report.png`): no plotting crate or font
//! files are needed on the box: the few labels use `draw`'s built-in 3x5 pixel font.

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::draw::{self, line};

/// One line of a panel.
pub struct Series<'a> {
    pub label: &'a str,
    pub colour: [u8; 3],
    /// (x, y) points in data units.
    pub points: Vec<(f64, f64)>,
}

/// One chart: a title and its lines, drawn on a shared x axis.
pub struct Panel<'a> {
    pub title: &'a str,
    pub series: Vec<Series<'a>>,
    /// Fixed y range, or `None` to fit the data.
    pub y_range: Option<(f64, f64)>,
}

impl<'a> Series<'a> {
    /// The training loss of each step (`losses`: (step, loss) in step order) as a running
    /// mean over ~2% of the run, which keeps the curve readable; red.
    pub fn train_loss(losses: impl ExactSizeIterator<Item = (usize, f32)>) -> Self {
        let losses: Vec<(usize, f32)> = losses.collect();
        let k = (losses.len() / 50).max(1);
        let points = losses
            .chunks(k)
            .map(|c| {
                let mean = c.iter().map(|r| f64::from(r.1)).sum::<f64>() / c.len() as f64;
                ((c[c.len() - 1].0 + 1) as f64, mean)
            })
            .collect();
        Self {
            label: "train",
            colour: [214, 39, 40],
            points,
        }
    }
}

impl<'a> Panel<'a> {
    /// Top-1 agreement and embedding cosine of a model's read-out with a reference's, over
    /// the steps (points (step, value)), on a fixed 0..1 axis.
    pub fn agreement(title: &'a str, top1: Vec<(f64, f64)>, cosine: Vec<(f64, f64)>) -> Self {
        Self {
            title,
            series: vec![
                Series {
                    label: "top-1",
                    colour: [44, 160, 44],
                    points: top1,
                },
                Series {
                    label: "cosine",
                    colour: [148, 103, 189],
                    points: cosine,
                },
            ],
            y_range: Some((0.0, 1.0)),
        }
    }
}

const W: u32 = 640;
const PANEL_H: u32 = 240;
const MARGIN: u32 = 44;
const SCALE: u32 = 2;
const BG: Rgb<u8> = Rgb([255, 255, 255]);
const INK: Rgb<u8> = Rgb([40, 40, 40]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);

fn short(v: f64) -> String {
    if v.abs() >= 100.0 || v == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn draw_panel(img: &mut RgbImage, top: u32, panel: &Panel, x_max: f64) {
    let (left, right) = (MARGIN + 20, W - 16);
    let (plot_top, bottom) = (top + 28, top + PANEL_H - 24);
    let ys = panel
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1));
    let (mut lo, mut hi) = panel.y_range.unwrap_or_else(|| {
        ys.filter(|v| v.is_finite())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                (a.min(v), b.max(v))
            })
    });
    if !lo.is_finite() || !hi.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    if hi - lo < 1e-9 {
        hi = lo + 1.0;
    }
    let x_of = |x: f64| f64::from(left) + (x / x_max.max(1e-9)) * f64::from(right - left);
    let y_of = |y: f64| f64::from(bottom) - (y - lo) / (hi - lo) * f64::from(bottom - plot_top);
    for k in 0..=4 {
        let y = lo + (hi - lo) * f64::from(k) / 4.0;
        let py = y_of(y);
        line(img, (f64::from(left), py), (f64::from(right), py), GRID);
        draw::text(img, 4, py as u32 - 5, &short(y), SCALE, INK);
    }
    line(
        img,
        (f64::from(left), f64::from(plot_top)),
        (f64::from(left), f64::from(bottom)),
        INK,
    );
    line(
        img,
        (f64::from(left), f64::from(bottom)),
        (f64::from(right), f64::from(bottom)),
        INK,
    );
    draw::text(
        img,
        right - 8 * draw::advance(SCALE),
        bottom + 8,
        &format!("step {}", x_max as u64),
        SCALE,
        INK,
    );
    draw::text(img, left, top + 6, panel.title, SCALE, INK);
    let mut label_x = left + (panel.title.len() as u32 + 2) * draw::advance(SCALE);
    for s in &panel.series {
        let colour = Rgb(s.colour);
        for pair in s.points.windows(2) {
            line(
                img,
                (x_of(pair[0].0), y_of(pair[0].1)),
                (x_of(pair[1].0), y_of(pair[1].1)),
                colour,
            );
        }
        if let [only] = s.points.as_slice() {
            line(
                img,
                (x_of(only.0), y_of(only.1)),
                (x_of(only.0) + 2.0, y_of(only.1)),
                colour,
            );
        }
        draw::text(img, label_x, top + 6, s.label, SCALE, colour);
        label_x += (s.label.len() as u32 + 2) * draw::advance(SCALE);
    }
}

/// Draws `panels` stacked, sharing the x axis 0..=`x_max`, and saves a PNG (whatever the
/// file name ends in).
pub fn save(path: &Path, panels: &[Panel], x_max: f64) -> image::ImageResult<()> {
    let mut img = RgbImage::from_pixel(W, PANEL_H * panels.len() as u32, BG);
    for (i, panel) in panels.iter().enumerate() {
        draw_panel(&mut img, i as u32 * PANEL_H, panel, x_max);
    }
    img.save_with_format(path, image::ImageFormat::Png)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_character_has_a_glyph_and_lines_are_drawn() {
        for c in "held-out top-1 agreement cosine loss (train) step 0123456789.:%".chars() {
            assert!(draw::glyph(c).is_some(), "{c:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.png");
        let panel = Panel {
            title: "loss",
            series: vec![Series {
                label: "train",
                colour: [200, 0, 0],
                points: vec![(0.0, 2.0), (50.0, 1.0), (100.0, 0.5)],
            }],
            y_range: None,
        };
        save(&path, &[panel], 100.0).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (W, PANEL_H));
        assert!(img.pixels().filter(|p| p.0 == [200, 0, 0]).count() > 100);
    }
}
