//! A digit drawn on a page, made to look like an MNIST digit before the model reads it.
//!
//! MNIST's recipe (LeCun et al.): the ink's bounding box is scaled to fit a 20 x 20 box,
//! keeping its aspect ratio, with anti-aliasing (here: exact area averaging), and placed in
//! a 28 x 28 image so that its center of mass sits at the image's center. Pixels are
//! grayscale, 0 for background and 255 for full ink; the result goes to the model through
//! [`crate::model::pixel_to_input`] like every training digit.

use crate::model::IMAGE_PIXELS;

/// The side of the output image.
pub const SIDE: usize = 28;
/// The side of the box the ink's bounding box is scaled into.
pub const INK_BOX: usize = 20;
/// The largest drawing accepted, per side.
pub const MAX_SIDE: usize = 4096;
/// Pixels at or below this value count as background when the bounding box is found
/// (anti-aliased edges of strokes and canvas noise).
pub const INK_THRESHOLD: u8 = 8;

/// Why a drawing cannot be turned into a digit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DigitError {
    /// The pixel count is not `width * height`, or a side is 0 or above [`MAX_SIDE`].
    #[error(
        "a drawing of {width} x {height} pixels cannot have {len} pixels (sides 1..={MAX_SIDE})"
    )]
    BadSize {
        width: usize,
        height: usize,
        len: usize,
    },
    /// Nothing is drawn.
    #[error("nothing is drawn yet")]
    Empty,
}

/// A drawing made into an MNIST-like digit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digit {
    /// 28 x 28 grayscale pixels, row by row; the brightest is 255.
    pub pixels: Vec<u8>,
    /// Whether centering the mass pushed some ink over the edge (very lopsided drawings;
    /// MNIST's recipe cuts it too).
    pub clipped: bool,
}

/// Turns a `width` x `height` grayscale drawing (row by row, 0 background, 255 ink) into a
/// [`Digit`].
pub fn mnist_like(gray: &[u8], width: usize, height: usize) -> Result<Digit, DigitError> {
    if width == 0
        || height == 0
        || width > MAX_SIDE
        || height > MAX_SIDE
        || gray.len() != width * height
    {
        return Err(DigitError::BadSize {
            width,
            height,
            len: gray.len(),
        });
    }
    let (x0, y0, x1, y1) = ink_box(gray, width).ok_or(DigitError::Empty)?;
    let (bw, bh) = (x1 - x0, y1 - y0);
    let scale = INK_BOX as f64 / bw.max(bh) as f64;
    let nw = ((bw as f64 * scale).round() as usize).clamp(1, INK_BOX);
    let nh = ((bh as f64 * scale).round() as usize).clamp(1, INK_BOX);

    // Area-average the box into nw x nh, separably: rows first, then columns.
    let wx = box_weights(bw, nw);
    let wy = box_weights(bh, nh);
    let mut rows = vec![0.0f64; bh * nw];
    for y in 0..bh {
        let src = &gray[(y0 + y) * width + x0..(y0 + y) * width + x1];
        for (ox, taps) in wx.iter().enumerate() {
            rows[y * nw + ox] = taps.iter().map(|&(i, w)| w * f64::from(src[i])).sum();
        }
    }
    let mut small = vec![0.0f64; nh * nw];
    for (oy, taps) in wy.iter().enumerate() {
        for ox in 0..nw {
            small[oy * nw + ox] = taps.iter().map(|&(i, w)| w * rows[i * nw + ox]).sum();
        }
    }

    // Shift so that the center of mass (of pixel centers) lands on the image's center.
    let (cx, cy) = center_of_mass(&small, nw);
    let half = SIDE as f64 / 2.0;
    let dx = (half - cx).round() as i64;
    let dy = (half - cy).round() as i64;
    let mut kept = Vec::with_capacity(nw * nh);
    let mut clipped = false;
    for y in 0..nh {
        for x in 0..nw {
            let v = small[y * nw + x];
            let (tx, ty) = (x as i64 + dx, y as i64 + dy);
            if !(0..SIDE as i64).contains(&tx) || !(0..SIDE as i64).contains(&ty) {
                clipped |= v > 0.0;
                continue;
            }
            kept.push((ty as usize * SIDE + tx as usize, v));
        }
    }
    // The brightest pixel the digit keeps is 255 (full contrast, even when a far-flung
    // stroke was clipped).
    let peak = kept.iter().map(|&(_, v)| v).fold(0.0, f64::max);
    let mut pixels = vec![0u8; IMAGE_PIXELS];
    if peak > 0.0 {
        for (i, v) in kept {
            pixels[i] = (v / peak * 255.0).round().clamp(0.0, 255.0) as u8;
        }
    }
    Ok(Digit { pixels, clipped })
}

/// The bounding box `(x0, y0, x1, y1)` (exclusive ends) of the pixels above
/// [`INK_THRESHOLD`], or `None` when there are none.
fn ink_box(gray: &[u8], width: usize) -> Option<(usize, usize, usize, usize)> {
    let mut b: Option<(usize, usize, usize, usize)> = None;
    for (i, _) in gray.iter().enumerate().filter(|&(_, &p)| p > INK_THRESHOLD) {
        let (x, y) = (i % width, i / width);
        b = Some(match b {
            None => (x, y, x + 1, y + 1),
            Some((x0, y0, x1, y1)) => (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1)),
        });
    }
    b
}

/// For each of `dst` output cells spread over `src` input cells, the input cells it covers
/// and the share of the output cell each one fills (the shares sum to 1).
fn box_weights(src: usize, dst: usize) -> Vec<Vec<(usize, f64)>> {
    let step = src as f64 / dst as f64;
    (0..dst)
        .map(|o| {
            let (a, b) = (o as f64 * step, (o + 1) as f64 * step);
            let first = a.floor() as usize;
            let last = (b.ceil() as usize).min(src);
            (first..last)
                .map(|i| {
                    let overlap = (b.min(i as f64 + 1.0) - a.max(i as f64)).max(0.0);
                    (i, overlap / step)
                })
                .filter(|&(_, w)| w > 0.0)
                .collect()
        })
        .collect()
}

/// The center of mass of an image `width` wide, in pixel units where pixel `i` spans
/// `[i, i + 1)` (so its center is `i + 0.5`).
pub fn center_of_mass<T: Copy + Into<f64>>(img: &[T], width: usize) -> (f64, f64) {
    let (mut m, mut sx, mut sy) = (0.0, 0.0, 0.0);
    for (i, &v) in img.iter().enumerate() {
        let v: f64 = v.into();
        m += v;
        sx += v * ((i % width) as f64 + 0.5);
        sy += v * ((i / width) as f64 + 0.5);
    }
    if m > 0.0 {
        (sx / m, sy / m)
    } else {
        (0.0, 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A canvas of `w` x `h` with filled discs `(x, y, r)` in fractions of the canvas.
    fn discs(w: usize, h: usize, spots: &[(f64, f64, f64)]) -> Vec<u8> {
        let mut img = vec![0u8; w * h];
        for &(fx, fy, fr) in spots {
            let (cx, cy, r) = (fx * w as f64, fy * h as f64, fr * w.min(h) as f64);
            for y in 0..h {
                for x in 0..w {
                    let d = ((x as f64 + 0.5 - cx).powi(2) + (y as f64 + 0.5 - cy).powi(2)).sqrt();
                    if d <= r {
                        img[y * w + x] = 255;
                    }
                }
            }
        }
        img
    }

    /// The ink's bounding box size of a 28 x 28 digit.
    fn extent(pixels: &[u8]) -> (usize, usize) {
        let (x0, y0, x1, y1) = ink_box(pixels, SIDE).expect("ink");
        (x1 - x0, y1 - y0)
    }

    fn spots() -> impl Strategy<Value = Vec<(f64, f64, f64)>> {
        prop::collection::vec((0.1..0.9f64, 0.1..0.9f64, 0.03..0.12f64), 1..6)
    }

    /// Spots that span at least 45% of the pad, as a digit does: two discs 0.35 apart, and
    /// others. (A lone dot a few pixels wide is no digit: rasterized that small, a one-pixel
    /// edge is an eighth of it, and scaled up to the 20-pixel box it is blocky at one size
    /// and round at another.)
    fn digit_like() -> impl Strategy<Value = Vec<(f64, f64, f64)>> {
        (spots(), 0.1..0.5f64, 0.1..0.9f64, 0.05..0.12f64).prop_map(|(mut s, x, y, r)| {
            s.push((x, y, r));
            s.push((x + 0.35, y, r));
            s
        })
    }

    proptest! {
        #[test]
        fn a_drawing_becomes_784_pixels_centered_by_mass(
            spots in spots(), w in 60..300usize, h in 60..300usize,
        ) {
            let d = mnist_like(&discs(w, h, &spots), w, h).unwrap();
            prop_assert_eq!(d.pixels.len(), IMAGE_PIXELS);
            prop_assert_eq!(d.pixels.iter().copied().max(), Some(255));
            let (ew, eh) = extent(&d.pixels);
            prop_assert!(ew.max(eh) <= INK_BOX, "ink spans {}x{}", ew, eh);
            if !d.clipped {
                prop_assert!(ew.max(eh) >= INK_BOX - 1, "ink spans {}x{}", ew, eh);
                let (cx, cy) = center_of_mass(&d.pixels, SIDE);
                // An integer shift leaves at most half a pixel, plus the rounding to u8.
                prop_assert!((cx - 14.0).abs() <= 0.6 && (cy - 14.0).abs() <= 0.6,
                    "center of mass at ({}, {})", cx, cy);
            }
        }

        #[test]
        fn the_same_drawing_at_another_size_gives_nearly_the_same_digit(spots in digit_like()) {
            let small = mnist_like(&discs(140, 140, &spots), 140, 140).unwrap();
            let big = mnist_like(&discs(420, 420, &spots), 420, 420).unwrap();
            // Rasterizing the discs at another size moves edges by up to a pixel, and the
            // centering's integer shift may round the other way: compare at the best of the
            // nine one-pixel offsets. A wrong scale or placement differs by far more.
            let at = |p: &[u8], x: i64, y: i64| -> f64 {
                let inside = (0..SIDE as i64).contains(&x) && (0..SIDE as i64).contains(&y);
                if inside { f64::from(p[y as usize * SIDE + x as usize]) } else { 0.0 }
            };
            let diff = |dx: i64, dy: i64| -> f64 {
                (0..IMAGE_PIXELS as i64)
                    .map(|i| {
                        let (x, y) = (i % SIDE as i64, i / SIDE as i64);
                        (at(&small.pixels, x, y) - at(&big.pixels, x + dx, y + dy)).abs()
                    })
                    .sum::<f64>() / IMAGE_PIXELS as f64
            };
            let best = (-1..=1).flat_map(|dx| (-1..=1).map(move |dy| (dx, dy)))
                .map(|(dx, dy)| diff(dx, dy))
                .fold(f64::MAX, f64::min);
            prop_assert!(best < 16.0, "mean pixel difference {} (unshifted {})", best, diff(0, 0));
        }

        #[test]
        fn any_bytes_give_a_digit_or_a_typed_error(
            bytes in prop::collection::vec(any::<u8>(), 0..400), w in 0..30usize, h in 0..30usize,
        ) {
            match mnist_like(&bytes, w, h) {
                Ok(d) => prop_assert_eq!(d.pixels.len(), IMAGE_PIXELS),
                Err(DigitError::BadSize { .. }) => prop_assert!(bytes.len() != w * h || w == 0 || h == 0),
                Err(DigitError::Empty) => prop_assert!(bytes.iter().all(|&p| p <= INK_THRESHOLD)),
            }
        }
    }

    #[test]
    fn a_blank_canvas_is_empty_and_a_wrong_size_is_refused() {
        assert_eq!(mnist_like(&[0; 100], 10, 10), Err(DigitError::Empty));
        assert!(matches!(
            mnist_like(&[0; 99], 10, 10),
            Err(DigitError::BadSize { .. })
        ));
    }

    #[test]
    fn a_tall_bar_keeps_its_aspect_and_sits_in_the_middle() {
        // A bar 10 wide and 200 tall becomes 1 wide and 20 tall; its center of mass, 0.5,
        // moves by 13.5, rounded away from zero: column 14.
        let (w, h) = (100, 300);
        let mut img = vec![0u8; w * h];
        for y in 50..250 {
            for x in 45..55 {
                img[y * w + x] = 255;
            }
        }
        let d = mnist_like(&img, w, h).unwrap();
        assert_eq!(extent(&d.pixels), (1, 20));
        let (x0, y0, _, _) = ink_box(&d.pixels, SIDE).unwrap();
        assert_eq!((x0, y0), (14, 4));
    }
}
