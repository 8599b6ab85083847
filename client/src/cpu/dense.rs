//! Dense layers in `f32` on the eight-lane vectors of [`super::simd`], for the instruction
//! sets that `matrixmultiply` has no kernel for (wasm32 simd128 and the portable path; on
//! x86_64 with AVX2 it has hand-written FMA kernels, which the model keeps using there).
//!
//! Layouts and semantics are those of [`super::ops::dense_forward`] and
//! [`super::ops::dense_backward`] (`x: [batch, inputs]`, `w: [outputs, inputs]`), which stay
//! the reference these kernels are tested against.
//!
//! - Forward: `y[n, o] = b[o] + x[n, :] . w[o, :]`, a register block of `R` samples by `C`
//!   outputs accumulating eight products per vector along the inputs, summed across lanes at
//!   the end. When the inputs are not a whole number of vectors, the last vector overlaps the
//!   one before and its already-counted lanes are masked to zero.
//! - Weight gradient `dw = dy^T x` and input gradient `dx = dy w`: both `C[m, :] = sum_k
//!   A(m, k) B[k, :]` with `B` row-major, a register block of `R` rows of `C` by `J` vectors
//!   of its columns, each step one broadcast of `A` and `J` loads of `B`. Each block computes
//!   its columns' final values, so a last vector that overlaps the one before only writes the
//!   same values twice.
//!
//! Supported: at least eight inputs and eight outputs ([`supports`]); otherwise the
//! functions here run the reference.

use super::ops;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
use super::simd::Simd128;
#[cfg(target_arch = "x86_64")]
use super::simd::{Avx2, Avx512};
use super::simd::{Isa, Portable, V8};

/// Vector width in lanes.
const L: usize = 8;

/// Whether the vector kernels handle a layer of `inputs` by `outputs`.
pub fn supports(inputs: usize, outputs: usize) -> bool {
    inputs >= L && outputs >= L
}

/// Whether the model's dense layers should run here on `isa` rather than through
/// `matrixmultiply`: where that crate has no SIMD kernel of its own.
pub fn preferred_on(isa: Isa) -> bool {
    matches!(isa, Isa::Simd128 | Isa::Portable)
}

/// Dense forward, as [`ops::dense_forward`], on `isa`.
///
/// # Panics
/// On slices whose lengths do not match, or an `isa` this machine cannot run.
#[allow(clippy::too_many_arguments)]
pub fn dense_forward(
    isa: Isa,
    batch: usize,
    inputs: usize,
    outputs: usize,
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    y: &mut [f32],
) {
    assert_eq!(x.len(), batch * inputs, "dense_forward: x length");
    assert_eq!(
        weight.len(),
        outputs * inputs,
        "dense_forward: weight length"
    );
    assert_eq!(bias.len(), outputs, "dense_forward: bias length");
    assert_eq!(y.len(), batch * outputs, "dense_forward: y length");
    assert!(
        isa.is_available(),
        "dense_forward: {isa:?} is not available"
    );
    if !supports(inputs, outputs) {
        return ops::dense_forward(batch, inputs, outputs, x, weight, bias, y);
    }
    let a = Fwd {
        batch,
        inputs,
        outputs,
        x: x.as_ptr(),
        weight: weight.as_ptr(),
        bias: bias.as_ptr(),
        y: y.as_mut_ptr(),
    };
    // SAFETY: the lengths are checked above; `isa` is available.
    unsafe { run_fwd(isa, &a) }
}

/// Dense backward, as [`ops::dense_backward`], on `isa`: overwrites `dweight` and `dbias` with
/// the gradients summed over the batch and writes `dx` if given.
///
/// # Panics
/// On slices whose lengths do not match, or an `isa` this machine cannot run.
#[allow(clippy::too_many_arguments)]
pub fn dense_backward(
    isa: Isa,
    batch: usize,
    inputs: usize,
    outputs: usize,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
    dweight: &mut [f32],
    dbias: &mut [f32],
) {
    assert_eq!(x.len(), batch * inputs, "dense_backward: x length");
    assert_eq!(
        weight.len(),
        outputs * inputs,
        "dense_backward: weight length"
    );
    assert_eq!(dy.len(), batch * outputs, "dense_backward: dy length");
    assert_eq!(
        dweight.len(),
        outputs * inputs,
        "dense_backward: dweight length"
    );
    assert_eq!(dbias.len(), outputs, "dense_backward: dbias length");
    if let Some(dx) = &dx {
        assert_eq!(dx.len(), batch * inputs, "dense_backward: dx length");
    }
    assert!(
        isa.is_available(),
        "dense_backward: {isa:?} is not available"
    );
    if !supports(inputs, outputs) || batch == 0 {
        return ops::dense_backward(batch, inputs, outputs, x, weight, dy, dx, dweight, dbias);
    }
    dbias.fill(0.0);
    for row in dy.chunks_exact(outputs) {
        for (b, &d) in dbias.iter_mut().zip(row) {
            *b += d;
        }
    }
    // dW [out, in] = dy^T [out, batch] . x [batch, in]
    let dw = Mm {
        m: outputs,
        k: batch,
        n: inputs,
        a: dy.as_ptr(),
        rsa: 1,
        csa: outputs,
        b: x.as_ptr(),
        c: dweight.as_mut_ptr(),
    };
    // SAFETY: `dy` is `[batch, outputs]`, `x` `[batch, inputs]`, `dweight` `[outputs, inputs]`.
    unsafe { run_mm(isa, &dw) };
    if let Some(dx) = dx {
        // dx [batch, in] = dy [batch, out] . W [out, in]
        let a = Mm {
            m: batch,
            k: outputs,
            n: inputs,
            a: dy.as_ptr(),
            rsa: outputs,
            csa: 1,
            b: weight.as_ptr(),
            c: dx.as_mut_ptr(),
        };
        // SAFETY: `dy` is `[batch, outputs]`, `weight` `[outputs, inputs]`, `dx` `[batch, inputs]`.
        unsafe { run_mm(isa, &a) };
    }
}

/// The forward kernel's operands.
struct Fwd {
    batch: usize,
    inputs: usize,
    outputs: usize,
    x: *const f32,
    weight: *const f32,
    bias: *const f32,
    y: *mut f32,
}

/// `C[m, n] = sum_k A(m, k) B[k, n]`: `A(m, k)` at `a + m * rsa + k * csa`, `B` row-major
/// `[k, n]`, `C` row-major `[m, n]` (overwritten).
struct Mm {
    m: usize,
    k: usize,
    n: usize,
    a: *const f32,
    rsa: usize,
    csa: usize,
    b: *const f32,
    c: *mut f32,
}

/// Instantiates the generic kernels for one instruction set in functions compiled for it.
macro_rules! isa_kernels {
    ($fwd:ident, $mm:ident, $v:ty $(, $feature:literal)?) => {
        $(#[target_feature(enable = $feature)])?
        unsafe fn $fwd(a: &Fwd) {
            // SAFETY: forwarded from `run_fwd`.
            unsafe { fwd::<$v>(a) }
        }
        $(#[target_feature(enable = $feature)])?
        unsafe fn $mm(a: &Mm) {
            // SAFETY: forwarded from `run_mm`.
            unsafe { mm::<$v>(a) }
        }
    };
}

#[cfg(target_arch = "x86_64")]
isa_kernels!(fwd_avx512, mm_avx512, Avx512, "avx2,fma,avx512f,avx512vl");
#[cfg(target_arch = "x86_64")]
isa_kernels!(fwd_avx2, mm_avx2, Avx2, "avx2,fma");
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
isa_kernels!(fwd_simd128, mm_simd128, Simd128);
isa_kernels!(fwd_portable, mm_portable, Portable);

/// # Safety
/// `a`'s pointers address the whole matrices it describes; `isa` is available.
unsafe fn run_fwd(isa: Isa, a: &Fwd) {
    // SAFETY (every arm): forwarded from the caller; the instruction set is available.
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { fwd_avx512(a) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { fwd_avx2(a) },
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        Isa::Simd128 => unsafe { fwd_simd128(a) },
        Isa::Portable => unsafe { fwd_portable(a) },
        #[allow(unreachable_patterns)]
        other => unreachable!("{other:?} is not available (checked by the caller)"),
    }
}

/// # Safety
/// As [`run_fwd`].
unsafe fn run_mm(isa: Isa, a: &Mm) {
    // SAFETY (every arm): forwarded from the caller; the instruction set is available.
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { mm_avx512(a) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { mm_avx2(a) },
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        Isa::Simd128 => unsafe { mm_simd128(a) },
        Isa::Portable => unsafe { mm_portable(a) },
        #[allow(unreachable_patterns)]
        other => unreachable!("{other:?} is not available (checked by the caller)"),
    }
}

/// The forward kernel: picks the register block by the registers there are.
#[inline(always)]
unsafe fn fwd<V: V8>(a: &Fwd) {
    // SAFETY (every call): forwarded from the caller.
    unsafe {
        match V::REGS {
            32 => fwd_all::<V, 4, 4>(a),
            16 => fwd_all::<V, 2, 4>(a),
            _ => fwd_all::<V, 2, 2>(a),
        }
    }
}

#[inline(always)]
unsafe fn fwd_all<V: V8, const R: usize, const C: usize>(a: &Fwd) {
    // Lanes of the last, overlapping vector of a row that the one before already covered.
    let vecs = a.inputs.div_ceil(L);
    let mut mask = [1.0f32; L];
    mask[..vecs * L - a.inputs].fill(0.0);
    let mut n = 0;
    while n < a.batch {
        let full_r = n + R <= a.batch;
        let mut o = 0;
        while o < a.outputs {
            let full_c = o + C <= a.outputs;
            // SAFETY: the block's samples and outputs lie inside the matrices.
            unsafe {
                match (full_r, full_c) {
                    (true, true) => fwd_block::<V, R, C>(a, &mask, n, o),
                    (true, false) => fwd_block::<V, R, 1>(a, &mask, n, o),
                    (false, true) => fwd_block::<V, 1, C>(a, &mask, n, o),
                    (false, false) => fwd_block::<V, 1, 1>(a, &mask, n, o),
                }
            }
            o += if full_c { C } else { 1 };
        }
        n += if full_r { R } else { 1 };
    }
}

/// `y[n..n + R, o..o + C]`.
// Indexing two arrays by the same block reads clearer than zipped iterators.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn fwd_block<V: V8, const R: usize, const C: usize>(
    a: &Fwd,
    mask: &[f32; L],
    n: usize,
    o: usize,
) {
    let vecs = a.inputs.div_ceil(L);
    // SAFETY: every offset stays inside rows `n..n + R` of `x`, rows `o..o + C` of the
    // weights and the bias, and the block of `y`.
    unsafe {
        let mut acc = [[V::zero(); C]; R];
        for j in 0..vecs {
            let at = (j * L).min(a.inputs - L);
            let mut xv = [V::zero(); R];
            for (r, v) in xv.iter_mut().enumerate() {
                *v = V::load(a.x.add((n + r) * a.inputs + at));
                if j + 1 == vecs && !at.is_multiple_of(L) {
                    *v = v.mul(V::load(mask.as_ptr()));
                }
            }
            for c in 0..C {
                let wv = V::load(a.weight.add((o + c) * a.inputs + at));
                for r in 0..R {
                    acc[r][c] = xv[r].mul_add(wv, acc[r][c]);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (c, v) in row.iter().enumerate() {
                *a.y.add((n + r) * a.outputs + o + c) = *a.bias.add(o + c) + v.sum();
            }
        }
    }
}

/// The `C = A B` kernel: picks the register block by the registers there are.
#[inline(always)]
unsafe fn mm<V: V8>(a: &Mm) {
    // SAFETY (every call): forwarded from the caller.
    unsafe {
        match V::REGS {
            32 => mm_all::<V, 4, 4>(a),
            16 => mm_all::<V, 4, 2>(a),
            _ => mm_all::<V, 2, 2>(a),
        }
    }
}

#[inline(always)]
unsafe fn mm_all<V: V8, const R: usize, const J: usize>(a: &Mm) {
    let vecs = a.n.div_ceil(L);
    let mut m = 0;
    while m < a.m {
        let full_r = m + R <= a.m;
        let mut j = 0;
        while j < vecs {
            let full_j = j + J <= vecs;
            // SAFETY: the block's rows and column vectors lie inside the matrices.
            unsafe {
                match (full_r, full_j) {
                    (true, true) => mm_block::<V, R, J>(a, m, j),
                    (true, false) => mm_block::<V, R, 1>(a, m, j),
                    (false, true) => mm_block::<V, 1, J>(a, m, j),
                    (false, false) => mm_block::<V, 1, 1>(a, m, j),
                }
            }
            j += if full_j { J } else { 1 };
        }
        m += if full_r { R } else { 1 };
    }
}

/// `C[m..m + R, columns of vectors j..j + J]`; the last vector of a row may overlap the one
/// before (column `n - 8`).
// Indexing two arrays by the same block reads clearer than zipped iterators.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn mm_block<V: V8, const R: usize, const J: usize>(a: &Mm, m: usize, j: usize) {
    let col = |q: usize| ((j + q) * L).min(a.n - L);
    // SAFETY: every offset stays inside rows `m..m + R` of A and C and inside B.
    unsafe {
        let mut acc = [[V::zero(); J]; R];
        for k in 0..a.k {
            let mut bv = [V::zero(); J];
            for (q, v) in bv.iter_mut().enumerate() {
                *v = V::load(a.b.add(k * a.n + col(q)));
            }
            for r in 0..R {
                let av = V::splat(*a.a.add((m + r) * a.rsa + k * a.csa));
                for q in 0..J {
                    acc[r][q] = av.mul_add(bv[q], acc[r][q]);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (q, v) in row.iter().enumerate() {
                v.store(a.c.add((m + r) * a.n + col(q)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0..1.0f32)).collect()
    }

    fn to_f64(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&x| x as f64).collect()
    }

    fn check(what: &str, isa: Isa, got: &[f32], want: &[f64]) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        let scale = want.iter().fold(0.0f64, |m, &w| m.max(w.abs())) + 1.0;
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g as f64 - w).abs() <= 1e-5 * scale,
                "{what} on {isa:?}, element {i}: got {g}, want {w}"
            );
        }
    }

    /// The vector kernels on every available instruction set against the reference in `f64`.
    fn matches_reference(batch: usize, inputs: usize, outputs: usize, seed: u64) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let x = random(&mut rng, batch * inputs);
        let w = random(&mut rng, outputs * inputs);
        let b = random(&mut rng, outputs);
        let dy = random(&mut rng, batch * outputs);
        let mut y64 = vec![0.0; batch * outputs];
        ops::dense_forward(
            batch,
            inputs,
            outputs,
            &to_f64(&x),
            &to_f64(&w),
            &to_f64(&b),
            &mut y64,
        );
        let (mut dx64, mut dw64, mut db64) = (
            vec![0.0; batch * inputs],
            vec![0.0; outputs * inputs],
            vec![0.0; outputs],
        );
        ops::dense_backward(
            batch,
            inputs,
            outputs,
            &to_f64(&x),
            &to_f64(&w),
            &to_f64(&dy),
            Some(&mut dx64),
            &mut dw64,
            &mut db64,
        );
        for isa in Isa::available() {
            let mut y = vec![f32::NAN; batch * outputs];
            dense_forward(isa, batch, inputs, outputs, &x, &w, &b, &mut y);
            check("forward y", isa, &y, &y64);
            let (mut dx, mut dw, mut db) = (
                vec![f32::NAN; batch * inputs],
                vec![f32::NAN; outputs * inputs],
                vec![f32::NAN; outputs],
            );
            dense_backward(
                isa,
                batch,
                inputs,
                outputs,
                &x,
                &w,
                &dy,
                Some(&mut dx),
                &mut dw,
                &mut db,
            );
            check("backward dx", isa, &dx, &dx64);
            check("backward dw", isa, &dw, &dw64);
            check("backward db", isa, &db, &db64);
        }
    }

    #[test]
    fn dense_kernels_match_the_reference_at_lenet_shapes() {
        for (i, (inputs, outputs)) in [(256, 120), (120, 84), (84, 10)].into_iter().enumerate() {
            matches_reference(9, inputs, outputs, i as u64);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]
        #[test]
        fn dense_kernels_match_the_reference_on_random_shapes(
            batch in 1usize..12,
            inputs in 1usize..40,
            outputs in 1usize..30,
            seed: u64,
        ) {
            matches_reference(batch, inputs, outputs, seed);
        }
    }
}
