//! 2x2 max pooling fused with the ReLU after it, in `f32`, for the model's passes.
//!
//! Semantics are those of [`ops::maxpool2_forward`] followed by [`ops::relu_forward`] on its
//! output (ReLU commutes with max pooling, so the pair is the pooling of the ReLU): the same
//! maxima, the same `argmax` (first maximum in row-major window order, computed on the values
//! before the ReLU) and `max(y, 0)` written as the output. Those two functions stay the
//! reference this kernel is tested against.
//!
//! On wasm32 with `simd128` ([`Isa::Simd128`]) each step takes four outputs of one row: two
//! loads per input row, a shuffle that separates even and odd columns, and compares and
//! bit-selects for the maxima and their indices, with no branch. The scalar reference's
//! selects become branches in the browser's compiler, and on the data of a trained
//! network's deeper layer those mispredict (pool2 ran at 5-9x native time). Elsewhere the
//! reference runs, as before (natively the compiler turns its selects into `cmov`s).

use super::ops;
use super::simd::Isa;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Whether the vector kernel handles planes of `h x w` on `isa` (otherwise the reference
/// runs): simd128 with outputs a multiple of four wide.
pub fn supports(isa: Isa, _h: usize, w: usize) -> bool {
    isa == Isa::Simd128 && w / 2 >= 4 && (w / 2).is_multiple_of(4)
}

/// `y = max(maxpool2(x), 0)` with the pooling's `argmax`, as [`ops::maxpool2_forward`] then
/// [`ops::relu_forward`], on `isa`: `planes` planes of `h x w` in `x`, `planes` planes of
/// `(h / 2) x (w / 2)` in `y` and `argmax`.
///
/// # Panics
/// On slice lengths that do not match, or an `isa` this machine cannot run.
pub fn maxpool2_relu_forward(
    isa: Isa,
    planes: usize,
    h: usize,
    w: usize,
    x: &[f32],
    y: &mut [f32],
    argmax: &mut [u32],
) {
    let (oh, ow) = (h / 2, w / 2);
    assert_eq!(x.len(), planes * h * w, "maxpool2_relu_forward: x length");
    assert_eq!(y.len(), planes * oh * ow, "maxpool2_relu_forward: y length");
    assert_eq!(
        argmax.len(),
        y.len(),
        "maxpool2_relu_forward: argmax length"
    );
    assert!(
        x.len() <= i32::MAX as usize,
        "maxpool2_relu_forward: x too large"
    );
    assert!(
        isa.is_available(),
        "maxpool2_relu_forward: {isa:?} is not available"
    );
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    if supports(isa, h, w) {
        // SAFETY: the lengths are checked above; `ow` is a multiple of four (`supports`).
        unsafe { wasm::forward(planes, h, w, x, y, argmax) };
        return;
    }
    ops::maxpool2_forward(planes, h, w, x, y, argmax);
    ops::relu_forward(y);
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm {
    use core::arch::wasm32::*;

    /// # Safety
    /// `x` holds `planes * h * w` values (at most `i32::MAX`), `y` and `argmax`
    /// `planes * (h / 2) * (w / 2)`, and `w / 2` is a multiple of four.
    pub(super) unsafe fn forward(
        planes: usize,
        h: usize,
        w: usize,
        x: &[f32],
        y: &mut [f32],
        argmax: &mut [u32],
    ) {
        let (oh, ow) = (h / 2, w / 2);
        let (xp, yp, ap) = (x.as_ptr(), y.as_mut_ptr(), argmax.as_mut_ptr());
        let one = i32x4_splat(1);
        let zero = f32x4_splat(0.0);
        // Flat indices of the four windows' top-left inputs, relative to the first.
        let steps = i32x4(0, 2, 4, 6);
        let below = i32x4_splat(w as i32);
        for pl in 0..planes {
            for oy in 0..oh {
                let r0 = pl * h * w + 2 * oy * w;
                let o0 = (pl * oh + oy) * ow;
                for ox in (0..ow).step_by(4) {
                    // SAFETY: inputs r0 + 2 * ox .. + 8 of the row pair and outputs
                    // o0 + ox .. + 4 lie inside the plane (`ow` a multiple of four).
                    unsafe {
                        let t = xp.add(r0 + 2 * ox);
                        let b = t.add(w);
                        let (t0, t1) = (v128_load(t.cast()), v128_load(t.add(4).cast()));
                        let (b0, b1) = (v128_load(b.cast()), v128_load(b.add(4).cast()));
                        // Window order: top-left, top-right, bottom-left, bottom-right.
                        let tl = i32x4_shuffle::<0, 2, 4, 6>(t0, t1);
                        let tr = i32x4_shuffle::<1, 3, 5, 7>(t0, t1);
                        let bl = i32x4_shuffle::<0, 2, 4, 6>(b0, b1);
                        let br = i32x4_shuffle::<1, 3, 5, 7>(b0, b1);
                        // `if b > a { b } else { a }` as in the reference: ties and NaNs keep
                        // the earlier one.
                        let mt = f32x4_gt(tr, tl);
                        let top = v128_bitselect(tr, tl, mt);
                        let mb = f32x4_gt(br, bl);
                        let bot = v128_bitselect(br, bl, mb);
                        let m = f32x4_gt(bot, top);
                        let best = v128_bitselect(bot, top, m);
                        let base = i32x4_add(i32x4_splat((r0 + 2 * ox) as i32), steps);
                        let top_at = i32x4_add(base, v128_and(mt, one));
                        let bot_at = i32x4_add(i32x4_add(base, below), v128_and(mb, one));
                        let at = v128_bitselect(bot_at, top_at, m);
                        // The ReLU: `max(best, 0)`, 0 for NaN like `f32::max`.
                        v128_store(yp.add(o0 + ox).cast(), f32x4_pmax(zero, best));
                        v128_store(ap.add(o0 + ox).cast(), at);
                    }
                }
            }
        }
    }
}

/// Runs [`maxpool2_relu_forward`] on every available instruction set and compares it with
/// [`ops::maxpool2_forward`] then [`ops::relu_forward`] on the same input: the outputs and
/// indices must be the same (`-0` and `0` count as equal). The input (from `seed`) has random values in
/// `[-1, 1)` with many ties (a tenth of them a repeated value, a tenth zeros). The unit tests
/// and the browser's check of the wasm build ([`super::direct::self_check`]) both run it.
pub fn check_against_reference(planes: usize, h: usize, w: usize, seed: u64) -> Result<(), String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x: Vec<f32> = (0..planes * h * w)
        .map(|_| match rng.random_range(0..10) {
            0 => 0.25,
            1 => 0.0,
            _ => rng.random_range(-1.0..1.0f32),
        })
        .collect();
    let n = planes * (h / 2) * (w / 2);
    let (mut y_ref, mut a_ref) = (vec![0.0f32; n], vec![0u32; n]);
    ops::maxpool2_forward(planes, h, w, &x, &mut y_ref, &mut a_ref);
    ops::relu_forward(&mut y_ref);
    for isa in Isa::available() {
        // Garbage in the outputs: the kernel overwrites them.
        let (mut y, mut a) = (vec![f32::NAN; n], vec![u32::MAX; n]);
        maxpool2_relu_forward(isa, planes, h, w, &x, &mut y, &mut a);
        if let Some(i) = (0..n).find(|&i| a[i] != a_ref[i] || y[i] != y_ref[i]) {
            return Err(format!(
                "maxpool2_relu_forward on {isa:?}, {planes} planes of {h}x{w}, output {i}: \
                 got {} at {}, want {} at {}",
                y[i], a[i], y_ref[i], a_ref[i]
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]
        #[test]
        fn pooling_with_relu_matches_the_reference(
            planes in 1usize..5,
            h in 2usize..20,
            w in 2usize..20,
            seed: u64,
        ) {
            if let Err(e) = check_against_reference(planes, h, w, seed) {
                panic!("{e}");
            }
        }
    }

    #[test]
    fn pooling_with_relu_matches_the_reference_at_lenet_shapes() {
        check_against_reference(9 * 6, 24, 24, 1).unwrap_or_else(|e| panic!("{e}"));
        check_against_reference(9 * 16, 8, 8, 2).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn the_vector_kernel_is_for_simd128_only() {
        assert!(supports(Isa::Simd128, 8, 8) && supports(Isa::Simd128, 24, 24));
        assert!(!supports(Isa::Simd128, 8, 6) && !supports(Isa::Simd128, 8, 4));
        assert!(!supports(Isa::Portable, 8, 8));
    }
}
