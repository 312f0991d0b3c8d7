//! Raster drawing for the images affectd makes itself (the training reports' charts, the
//! debug view's annotated frames): lines, rectangles and a built-in 3x5 pixel font, so no
//! font file or drawing crate is needed on the box. Everything clips at the image's edge.

use image::{Rgb, RgbImage};

/// Horizontal advance of one character at `scale`, in pixels (3 columns and a gap).
pub const fn advance(scale: u32) -> u32 {
    4 * scale
}

/// Height of a line of text at `scale`, in pixels.
pub const fn text_height(scale: u32) -> u32 {
    5 * scale
}

/// 3x5 glyphs, rows top to bottom, `#` = ink; letters are drawn in one case.
pub fn glyph(c: char) -> Option<[&'static str; 5]> {
    Some(match c.to_ascii_lowercase() {
        '0' => ["###", "#.#", "#.#", "#.#", "###"],
        '1' => [".#.", "##.", ".#.", ".#.", "###"],
        '2' => ["###", "..#", "###", "#..", "###"],
        '3' => ["###", "..#", ".##", "..#", "###"],
        '4' => ["#.#", "#.#", "###", "..#", "..#"],
        '5' => ["###", "#..", "###", "..#", "###"],
        '6' => ["###", "#..", "###", "#.#", "###"],
        '7' => ["###", "..#", ".#.", ".#.", ".#."],
        '8' => ["###", "#.#", "###", "#.#", "###"],
        '9' => ["###", "#.#", "###", "..#", "###"],
        '.' => ["...", "...", "...", "...", ".#."],
        ',' => ["...", "...", "...", ".#.", "#.."],
        '-' => ["...", "...", "###", "...", "..."],
        '+' => ["...", ".#.", "###", ".#.", "..."],
        '_' => ["...", "...", "...", "...", "###"],
        '#' => ["#.#", "###", "#.#", "###", "#.#"],
        ':' => ["...", ".#.", "...", ".#.", "..."],
        '%' => ["#.#", "..#", ".#.", "#..", "#.#"],
        '(' => [".#.", "#..", "#..", "#..", ".#."],
        ')' => [".#.", "..#", "..#", "..#", ".#."],
        '/' => ["..#", "..#", ".#.", "#..", "#.."],
        'a' => [".#.", "#.#", "###", "#.#", "#.#"],
        'b' => ["##.", "#.#", "##.", "#.#", "##."],
        'c' => [".##", "#..", "#..", "#..", ".##"],
        'd' => ["##.", "#.#", "#.#", "#.#", "##."],
        'e' => ["###", "#..", "##.", "#..", "###"],
        'f' => ["###", "#..", "##.", "#..", "#.."],
        'g' => [".##", "#..", "#.#", "#.#", ".##"],
        'h' => ["#.#", "#.#", "###", "#.#", "#.#"],
        'i' => ["###", ".#.", ".#.", ".#.", "###"],
        'j' => ["..#", "..#", "..#", "#.#", ".#."],
        'k' => ["#.#", "#.#", "##.", "#.#", "#.#"],
        'l' => ["#..", "#..", "#..", "#..", "###"],
        'm' => ["#.#", "###", "###", "#.#", "#.#"],
        'n' => ["##.", "#.#", "#.#", "#.#", "#.#"],
        'o' => [".#.", "#.#", "#.#", "#.#", ".#."],
        'p' => ["##.", "#.#", "##.", "#..", "#.."],
        'q' => [".#.", "#.#", "#.#", ".#.", "..#"],
        'r' => ["##.", "#.#", "##.", "#.#", "#.#"],
        's' => [".##", "#..", ".#.", "..#", "##."],
        't' => ["###", ".#.", ".#.", ".#.", ".#."],
        'u' => ["#.#", "#.#", "#.#", "#.#", "###"],
        'v' => ["#.#", "#.#", "#.#", "#.#", ".#."],
        'w' => ["#.#", "#.#", "###", "###", "#.#"],
        'x' => ["#.#", "#.#", ".#.", "#.#", "#.#"],
        'y' => ["#.#", "#.#", ".#.", ".#.", ".#."],
        'z' => ["###", "..#", ".#.", "#..", "###"],
        ' ' => ["...", "...", "...", "...", "..."],
        _ => return None,
    })
}

/// Draws `s` with its top-left corner at (x, y), each font pixel a `scale` x `scale` square;
/// characters without a glyph leave a blank.
pub fn text(img: &mut RgbImage, x: u32, y: u32, s: &str, scale: u32, colour: Rgb<u8>) {
    for (k, c) in s.chars().enumerate() {
        let Some(rows) = glyph(c) else { continue };
        let gx = x + k as u32 * advance(scale);
        for (r, row) in rows.iter().enumerate() {
            for (col, bit) in row.bytes().enumerate() {
                if bit == b'#' {
                    let (px, py) = (gx + col as u32 * scale, y + r as u32 * scale);
                    fill(img, px, py, scale, scale, colour);
                }
            }
        }
    }
}

/// A 2-pixel line from one point to another.
pub fn line(img: &mut RgbImage, (x0, y0): (f64, f64), (x1, y1): (f64, f64), colour: Rgb<u8>) {
    let n = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
    for i in 0..=n {
        let t = i as f64 / n as f64;
        let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
        for (dx, dy) in [(0, 0), (1, 0), (0, 1)] {
            let (px, py) = (x as i64 + dx, y as i64 + dy);
            if px >= 0 && py >= 0 && (px as u32) < img.width() && (py as u32) < img.height() {
                img.put_pixel(px as u32, py as u32, colour);
            }
        }
    }
}

/// Fills the `w` x `h` rectangle at (x, y).
pub fn fill(img: &mut RgbImage, x: u32, y: u32, w: u32, h: u32, colour: Rgb<u8>) {
    let (x1, y1) = (
        x.saturating_add(w).min(img.width()),
        y.saturating_add(h).min(img.height()),
    );
    for py in y.min(y1)..y1 {
        for px in x.min(x1)..x1 {
            img.put_pixel(px, py, colour);
        }
    }
}

/// Darkens the `w` x `h` rectangle at (x, y) to `keep` of its brightness (a backdrop that
/// leaves the picture visible).
pub fn shade(img: &mut RgbImage, x: u32, y: u32, w: u32, h: u32, keep: f32) {
    let (x1, y1) = (
        x.saturating_add(w).min(img.width()),
        y.saturating_add(h).min(img.height()),
    );
    for py in y.min(y1)..y1 {
        for px in x.min(x1)..x1 {
            let p = img.get_pixel_mut(px, py);
            p.0 = p.0.map(|v| (f32::from(v) * keep) as u8);
        }
    }
}

/// The outline of the rectangle (x0, y0)-(x1, y1), `thickness` pixels wide, inside it.
pub fn frame_rect(
    img: &mut RgbImage,
    (x0, y0): (u32, u32),
    (x1, y1): (u32, u32),
    thickness: u32,
    colour: Rgb<u8>,
) {
    let (w, h) = (x1.saturating_sub(x0), y1.saturating_sub(y0));
    let t = thickness.min(w).min(h);
    fill(img, x0, y0, w, t, colour);
    fill(img, x0, y1.saturating_sub(t), w, t, colour);
    fill(img, x0, y0, t, h, colour);
    fill(img, x1.saturating_sub(t), y0, t, h, colour);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_clip_at_the_edge_and_text_inks_its_glyphs() {
        let mut img = RgbImage::new(20, 10);
        let red = Rgb([255, 0, 0]);
        fill(&mut img, 15, 5, 100, 100, red);
        assert_eq!(img.pixels().filter(|p| p.0 == red.0).count(), 5 * 5);
        let mut img = RgbImage::new(40, 12);
        text(&mut img, 0, 0, "#1", 2, red);
        // '#' has 12 ink cells, '1' has 8: each is a 2x2 square.
        assert_eq!(img.pixels().filter(|p| p.0 == red.0).count(), (12 + 8) * 4);
        let mut img = RgbImage::new(10, 10);
        frame_rect(&mut img, (2, 2), (8, 8), 1, red);
        assert_eq!(img.pixels().filter(|p| p.0 == red.0).count(), 6 * 4 - 4);
        assert_eq!(img.get_pixel(4, 4).0, [0, 0, 0]);
    }
}
