//! Direct convolutions in `f32` for LeNet's shapes: the forward pass, the weight and bias
//! gradients and the input gradient, with explicit eight-lane vectors ([`super::simd`]) and
//! no allocation.
//!
//! Layouts and semantics are those of [`super::ops::conv2d_forward`] and
//! [`super::ops::conv2d_backward`] (NCHW, weights `[out, in, k, k]`), which stay the
//! reference these kernels are tested against. Each kernel runs on the instruction set it is
//! given ([`Isa`]); [`Isa::best`] picks the fastest at run time.
//!
//! - Forward: each vector holds eight neighbouring outputs of one output row. A register
//!   block of `CB` output channels by `RB` output rows accumulates over `(ci, ky, kx)`: one
//!   broadcast weight per channel and one unaligned input load per row feed `CB * RB` fused
//!   multiply-adds. A row whose width is not a multiple of eight ends with a vector that
//!   overlaps the one before it (the shared lanes get the same value twice).
//! - Weight gradient: for one input channel and kernel row `ky`, a block of `CB` output
//!   channels by the `K` kernel columns keeps `CB * K` vector partial sums over the samples
//!   and output positions, summed across lanes at the end of a block of samples.
//! - Input gradient: the forward kernel run on the output gradient padded by `k - 1` zeros on
//!   every side, with the kernel flipped and its channel axes swapped.
//!
//! Supported: kernel sides 3 and 5 with outputs at least eight wide ([`supports`]); other
//! shapes fall back to the im2col + GEMM reference.

use super::ops::{self, ConvShape};
#[cfg(target_arch = "x86_64")]
use super::simd::{Avx2, Avx512};
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
use super::simd::{Half, Simd128};
use super::simd::{Isa, Portable, V8};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Vector width in lanes.
const L: usize = 8;

/// Whether the direct kernels handle `s` (otherwise the functions here run the reference).
pub fn supports(s: &ConvShape) -> bool {
    matches!(s.kernel, 3 | 5) && s.kernel <= s.height && s.kernel <= s.width && s.out_w() >= L
}

/// Elements of the scratch [`conv2d_backward`] needs: the padded output gradient of one
/// sample and the flipped weights.
pub fn backward_scratch_len(s: &ConvShape) -> usize {
    let k = s.kernel;
    let (ph, pw) = (s.height + k - 1, s.width + k - 1);
    let padded = s.out_ch * ph * pw;
    let cols = s.patch_len() * s.out_h() * dcols_row(s);
    padded.max(cols) + s.weight_len()
}

/// Elements of one padded row of the input gradient's unfolded matrix: `out_w` values with
/// `k - 1` zeros on each side.
fn dcols_row(s: &ConvShape) -> usize {
    s.out_w() + 2 * (s.kernel - 1)
}

/// Forward convolution, as [`ops::conv2d_forward`], on `isa`.
///
/// # Panics
/// On slices whose lengths do not match `s`, or an `isa` this machine cannot run.
pub fn conv2d_forward(
    isa: Isa,
    s: ConvShape,
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    y: &mut [f32],
) {
    assert_eq!(x.len(), s.x_len(), "conv2d_forward: x length");
    assert_eq!(
        weight.len(),
        s.weight_len(),
        "conv2d_forward: weight length"
    );
    assert_eq!(bias.len(), s.out_ch, "conv2d_forward: bias length");
    assert_eq!(y.len(), s.y_len(), "conv2d_forward: y length");
    assert!(
        isa.is_available(),
        "conv2d_forward: {isa:?} is not available"
    );
    if !supports(&s) {
        return ops::conv2d_forward(s, x, weight, bias, y);
    }
    let a = Fwd {
        g: Geo::of_input(&s),
        batch: s.batch,
        x: x.as_ptr(),
        weight: weight.as_ptr(),
        bias: bias.as_ptr(),
        y: y.as_mut_ptr(),
    };
    // SAFETY: the lengths are checked above and `Geo` describes them; `isa` is available.
    unsafe { run_fwd(isa, &a) }
}

/// Backward convolution, as [`ops::conv2d_backward`], on `isa`: overwrites `dweight` and
/// `dbias` with the gradients summed over the batch and writes `dx` if given. `scratch`
/// holds at least [`backward_scratch_len`] elements (its contents do not matter).
///
/// # Panics
/// On slices whose lengths do not match `s`, or an `isa` this machine cannot run.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward(
    isa: Isa,
    s: ConvShape,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
    dweight: &mut [f32],
    dbias: &mut [f32],
    scratch: &mut [f32],
) {
    s.check_backward_lens(
        x.len(),
        weight.len(),
        dy.len(),
        dx.as_deref().map(<[f32]>::len),
        dweight.len(),
        dbias.len(),
    );
    assert!(
        isa.is_available(),
        "conv2d_backward: {isa:?} is not available"
    );
    if !supports(&s) {
        return ops::conv2d_backward(s, x, weight, dy, dx, dweight, dbias);
    }
    let g = Geo::of_input(&s);
    let (oplane, k) = (g.oh * g.ow, s.kernel);
    // The bias gradient: plain sums of the output gradient's planes.
    dbias.fill(0.0);
    for (n_planes, _) in dy.chunks_exact(s.out_ch * oplane).zip(0..s.batch) {
        for (db, plane) in dbias.iter_mut().zip(n_planes.chunks_exact(oplane)) {
            *db += plane_sum(plane);
        }
    }
    dweight.fill(0.0);
    let a = Dw {
        g,
        batch: s.batch,
        x: x.as_ptr(),
        dy: dy.as_ptr(),
        dweight: dweight.as_mut_ptr(),
    };
    // SAFETY: the lengths are checked above; `isa` is available.
    unsafe { run_dw(isa, &a) };
    let Some(dx) = dx else { return };
    let need = backward_scratch_len(&s);
    assert!(
        scratch.len() >= need,
        "conv2d_backward: scratch of {} elements, {need} needed",
        scratch.len()
    );
    if g.ow.is_multiple_of(L) {
        // Outputs a whole number of vectors wide: the unfolded gradient W^T dy, one sample at a
        // time, folded back by summing whole vectors (no product with a padding zero).
        let cols = &mut scratch[..s.patch_len() * g.oh * dcols_row(&s)];
        cols.fill(0.0);
        let x_step = s.in_ch * s.height * s.width;
        for (dy_n, dx_n) in dy
            .chunks_exact(s.out_ch * oplane)
            .zip(dx.chunks_exact_mut(x_step))
        {
            let a = Dx {
                g,
                weight: weight.as_ptr(),
                dy: dy_n.as_ptr(),
                cols: cols.as_mut_ptr(),
                dx: dx_n.as_mut_ptr(),
            };
            // SAFETY: `dy_n` is `[out_ch, oh, ow]`, `cols` `[in_ch * k * k, oh, ow + 2k - 2]`
            // with zero margins, `dx_n` `[in_ch, height, width]`; `isa` is available.
            unsafe { run_dx(isa, &a) };
        }
        return;
    }
    // Otherwise the input gradient is a forward convolution of the padded output gradient with
    // the flipped kernel: dx[ci, iy, ix] = sum_{co, ky, kx} w[co, ci, k-1-ky, k-1-kx]
    //                                     * dy_padded[co, iy + ky, ix + kx].
    let (ph, pw) = (s.height + k - 1, s.width + k - 1);
    let (padded, flipped) = scratch[..need].split_at_mut(s.out_ch * ph * pw);
    for co in 0..s.out_ch {
        for ci in 0..s.in_ch {
            for ky in 0..k {
                for kx in 0..k {
                    flipped[((ci * s.out_ch + co) * k + ky) * k + kx] =
                        weight[((co * s.in_ch + ci) * k + (k - 1 - ky)) * k + (k - 1 - kx)];
                }
            }
        }
    }
    padded.fill(0.0);
    let dg = Geo {
        in_ch: s.out_ch,
        h: ph,
        w: pw,
        out_ch: s.in_ch,
        oh: s.height,
        ow: s.width,
        k,
    };
    let x_step = s.in_ch * s.height * s.width;
    for (dy_n, dx_n) in dy
        .chunks_exact(s.out_ch * oplane)
        .zip(dx.chunks_exact_mut(x_step))
    {
        // Only the interior changes from sample to sample; the border stays zero.
        for (src, dst) in dy_n
            .chunks_exact(oplane)
            .zip(padded.chunks_exact_mut(ph * pw))
        {
            for (oy, row) in src.chunks_exact(g.ow).enumerate() {
                let at = (oy + k - 1) * pw + k - 1;
                dst[at..at + g.ow].copy_from_slice(row);
            }
        }
        let a = Fwd {
            g: dg,
            batch: 1,
            x: padded.as_ptr(),
            weight: flipped.as_ptr(),
            bias: core::ptr::null(),
            y: dx_n.as_mut_ptr(),
        };
        // SAFETY: `padded` is `[out_ch, ph, pw]`, `flipped` `[in_ch, out_ch, k, k]` and
        // `dx_n` `[in_ch, height, width]`, as `dg` says; `isa` is available.
        unsafe { run_fwd(isa, &a) };
    }
}

/// A sum with eight accumulators.
fn plane_sum(v: &[f32]) -> f32 {
    let mut acc = [0.0f32; L];
    let chunks = v.chunks_exact(L);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..L {
            acc[i] += c[i];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
    for &r in rest {
        s += r;
    }
    s
}

/// One sample's convolution geometry: `[in_ch, h, w]` in, `[out_ch, oh, ow]` out.
#[derive(Clone, Copy)]
struct Geo {
    in_ch: usize,
    h: usize,
    w: usize,
    out_ch: usize,
    oh: usize,
    ow: usize,
    k: usize,
}

impl Geo {
    fn of_input(s: &ConvShape) -> Geo {
        Geo {
            in_ch: s.in_ch,
            h: s.height,
            w: s.width,
            out_ch: s.out_ch,
            oh: s.out_h(),
            ow: s.out_w(),
            k: s.kernel,
        }
    }

    /// The first column of the `j`-th vector of an output row: multiples of eight, then
    /// `ow - 8` for a last vector that overlaps the one before.
    #[inline(always)]
    fn col(&self, j: usize) -> usize {
        (j * L).min(self.ow - L)
    }

    /// Vectors per output row.
    #[inline(always)]
    fn cols(&self) -> usize {
        self.ow.div_ceil(L)
    }
}

/// The forward kernel's operands: `batch` samples laid out as `g` says. `bias` may be null
/// (zero bias).
struct Fwd {
    g: Geo,
    batch: usize,
    x: *const f32,
    weight: *const f32,
    bias: *const f32,
    y: *mut f32,
}

/// The weight-gradient kernel's operands; `dweight` is zero on entry and receives the sums.
struct Dw {
    g: Geo,
    batch: usize,
    x: *const f32,
    dy: *const f32,
    dweight: *mut f32,
}

/// The input-gradient kernel's operands for one sample: `cols` is the unfolded gradient
/// `[in_ch * k * k, oh, ow + 2k - 2]`, whose margins are zero.
struct Dx {
    g: Geo,
    weight: *const f32,
    dy: *const f32,
    cols: *mut f32,
    dx: *mut f32,
}

/// Instantiates the generic kernels for one instruction set in functions compiled for it.
macro_rules! isa_kernels {
    ($fwd:ident, $dw:ident, $dx:ident, $v:ty $(, $feature:literal)?) => {
        $(#[target_feature(enable = $feature)])?
        unsafe fn $dx(a: &Dx) {
            // SAFETY: forwarded from `run_dx`.
            unsafe { dx::<$v>(a) }
        }
        $(#[target_feature(enable = $feature)])?
        unsafe fn $fwd(a: &Fwd) {
            // SAFETY: forwarded from `run_fwd`.
            unsafe { fwd::<$v>(a) }
        }
        $(#[target_feature(enable = $feature)])?
        unsafe fn $dw(a: &Dw) {
            // SAFETY: forwarded from `run_dw`.
            unsafe { dw::<$v>(a) }
        }
    };
}

#[cfg(target_arch = "x86_64")]
isa_kernels!(
    fwd_avx512,
    dw_avx512,
    dx_avx512,
    Avx512,
    "avx2,fma,avx512f,avx512vl"
);
#[cfg(target_arch = "x86_64")]
isa_kernels!(fwd_avx2, dw_avx2, dx_avx2, Avx2, "avx2,fma");
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
unsafe fn fwd_simd128(a: &Fwd) {
    // SAFETY: forwarded from `run_fwd`.
    unsafe { fwd::<Simd128>(a) }
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
unsafe fn dx_simd128(a: &Dx) {
    // SAFETY: forwarded from `run_dx`.
    unsafe { dx::<Simd128>(a) }
}

/// The weight gradient on simd128: once per 128-bit half of the vectors ([`Half`]), each
/// pass with a register block of two output channels where [`Simd128`]'s pairs of registers
/// allow one, so each input vector loaded feeds twice the multiply-adds. The kernel's lanes
/// are independent and each pass adds its sums into `dweight`, so the two passes give the
/// whole gradient.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
unsafe fn dw_simd128(a: &Dw) {
    // SAFETY: forwarded from `run_dw`.
    unsafe {
        dw::<Half<false>>(a);
        dw::<Half<true>>(a);
    }
}
isa_kernels!(fwd_portable, dw_portable, dx_portable, Portable);

/// # Safety
/// As [`run_fwd`].
unsafe fn run_dx(isa: Isa, a: &Dx) {
    // SAFETY (every arm): forwarded from the caller; the instruction set is available.
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { dx_avx512(a) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { dx_avx2(a) },
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        Isa::Simd128 => unsafe { dx_simd128(a) },
        Isa::Portable => unsafe { dx_portable(a) },
        #[allow(unreachable_patterns)]
        other => unreachable!("{other:?} is not available (checked by the caller)"),
    }
}

/// The input-gradient kernel: picks the kernel side and register block.
#[inline(always)]
unsafe fn dx<V: V8>(a: &Dx) {
    // SAFETY (every call): forwarded from the caller.
    unsafe {
        match (a.g.k, V::REGS) {
            (5, 32) => dx_k::<V, 5, 4>(a),
            (5, 16) => dx_k::<V, 5, 2>(a),
            (5, _) => dx_k::<V, 5, 1>(a),
            (3, 32) => dx_k::<V, 3, 6>(a),
            (3, 16) => dx_k::<V, 3, 3>(a),
            (3, _) => dx_k::<V, 3, 1>(a),
            (k, _) => unreachable!("kernel side {k} (checked by supports)"),
        }
    }
}

/// One sample's input gradient: first `cols[(ci, ky, kx), oy, ox] = sum_co w[co, ci, ky, kx]
/// dy[co, oy, ox]` in register blocks of the `K` kernel columns by `RB` output rows, then
/// `dx[ci, iy, ix] = sum_{ky, kx} cols[(ci, ky, kx), iy - ky, ix - kx]` as sums of whole
/// vectors read from the zero-margined rows.
#[inline(always)]
unsafe fn dx_k<V: V8, const K: usize, const RB: usize>(a: &Dx) {
    let g = &a.g;
    let pw = g.ow + 2 * (K - 1);
    let w_step = g.in_ch * K * K;
    // SAFETY: every offset stays inside the sample's output gradient, the weights, the
    // unfolded matrix (data at K - 1 from each row's start) and the input gradient.
    unsafe {
        for ci in 0..g.in_ch {
            for ky in 0..K {
                let row = (ci * K + ky) * K;
                let mut oy = 0;
                while oy < g.oh {
                    let full = oy + RB <= g.oh;
                    for col in (0..g.ow).step_by(L) {
                        if full {
                            dx_cols_block::<V, K, RB>(a, w_step, row, oy, col, pw);
                        } else {
                            dx_cols_block::<V, K, 1>(a, w_step, row, oy, col, pw);
                        }
                    }
                    oy += if full { RB } else { 1 };
                }
            }
        }
        for ci in 0..g.in_ch {
            for iy in 0..g.h {
                for j in 0..g.w.div_ceil(L) {
                    let x0 = (j * L).min(g.w - L);
                    let mut acc = V::zero();
                    let ky_lo = (iy + 1).saturating_sub(g.oh);
                    for ky in ky_lo..=iy.min(K - 1) {
                        let oy = iy - ky;
                        for kx in 0..K {
                            let at =
                                (((ci * K + ky) * K + kx) * g.oh + oy) * pw + (K - 1) + x0 - kx;
                            acc = acc.add(V::load(a.cols.add(at)));
                        }
                    }
                    acc.store(a.dx.add((ci * g.h + iy) * g.w + x0));
                }
            }
        }
    }
}

/// `cols[(row + kx), oy..oy + RB, col..col + 8]` for the `K` kernel columns `kx`.
// Indexing two arrays by the same lane block reads clearer than zipped iterators.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn dx_cols_block<V: V8, const K: usize, const RB: usize>(
    a: &Dx,
    w_step: usize,
    row: usize,
    oy: usize,
    col: usize,
    pw: usize,
) {
    let g = &a.g;
    let oplane = g.oh * g.ow;
    // SAFETY: as in `dx_k`.
    unsafe {
        let mut acc = [[V::zero(); RB]; K];
        for co in 0..g.out_ch {
            let wp = a.weight.add(co * w_step + row);
            let mut wv = [V::zero(); K];
            for (kx, v) in wv.iter_mut().enumerate() {
                *v = V::splat(*wp.add(kx));
            }
            for r in 0..RB {
                let d = V::load(a.dy.add(co * oplane + (oy + r) * g.ow + col));
                for kx in 0..K {
                    acc[kx][r] = wv[kx].mul_add(d, acc[kx][r]);
                }
            }
        }
        for (kx, rows) in acc.iter().enumerate() {
            for (r, v) in rows.iter().enumerate() {
                v.store(
                    a.cols
                        .add(((row + kx) * g.oh + oy + r) * pw + (K - 1) + col),
                );
            }
        }
    }
}

/// # Safety
/// `a`'s pointers address the whole tensors its geometry describes; `isa` is available.
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
unsafe fn run_dw(isa: Isa, a: &Dw) {
    // SAFETY (every arm): forwarded from the caller; the instruction set is available.
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { dw_avx512(a) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { dw_avx2(a) },
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        Isa::Simd128 => unsafe { dw_simd128(a) },
        Isa::Portable => unsafe { dw_portable(a) },
        #[allow(unreachable_patterns)]
        other => unreachable!("{other:?} is not available (checked by the caller)"),
    }
}

/// The forward kernel: picks the kernel side and register block, then runs every sample.
#[inline(always)]
unsafe fn fwd<V: V8>(a: &Fwd) {
    // SAFETY (every call): forwarded from the caller.
    unsafe {
        match (a.g.k, V::REGS, a.g.out_ch.is_multiple_of(3)) {
            (5, 32, true) => fwd_all::<V, 5, 6, 4>(a),
            (5, 32, false) => fwd_all::<V, 5, 4, 4>(a),
            (5, 16, true) => fwd_all::<V, 5, 3, 4>(a),
            (5, 16, false) => fwd_all::<V, 5, 2, 4>(a),
            (5, ..) => fwd_all::<V, 5, 2, 2>(a),
            (3, 32, _) => fwd_all::<V, 3, 4, 4>(a),
            (3, 16, _) => fwd_all::<V, 3, 2, 4>(a),
            (3, ..) => fwd_all::<V, 3, 2, 2>(a),
            (k, ..) => unreachable!("kernel side {k} (checked by supports)"),
        }
    }
}

#[inline(always)]
unsafe fn fwd_all<V: V8, const K: usize, const CB: usize, const RB: usize>(a: &Fwd) {
    let g = &a.g;
    let (x_step, y_step) = (g.in_ch * g.h * g.w, g.out_ch * g.oh * g.ow);
    for n in 0..a.batch {
        // SAFETY: sample `n` lies inside the tensors (the caller's contract).
        let (x, y) = unsafe { (a.x.add(n * x_step), a.y.add(n * y_step)) };
        let mut co = 0;
        while co < g.out_ch {
            let full_c = co + CB <= g.out_ch;
            let mut oy = 0;
            while oy < g.oh {
                let full_r = oy + RB <= g.oh;
                for j in 0..g.cols() {
                    let col = g.col(j);
                    // SAFETY: the block lies inside the output and reads inside the input.
                    unsafe {
                        match (full_c, full_r) {
                            (true, true) => {
                                fwd_block::<V, K, CB, RB>(g, x, a.weight, a.bias, y, co, oy, col)
                            }
                            (true, false) => {
                                fwd_block::<V, K, CB, 1>(g, x, a.weight, a.bias, y, co, oy, col)
                            }
                            (false, true) => {
                                fwd_block::<V, K, 1, RB>(g, x, a.weight, a.bias, y, co, oy, col)
                            }
                            (false, false) => {
                                fwd_block::<V, K, 1, 1>(g, x, a.weight, a.bias, y, co, oy, col)
                            }
                        }
                    }
                }
                oy += if full_r { RB } else { 1 };
            }
            co += if full_c { CB } else { 1 };
        }
    }
}

/// Outputs `co..co + CB`, rows `oy..oy + RB`, columns `col..col + 8` of one sample.
// Indexing two arrays by the same lane block reads clearer than zipped iterators.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn fwd_block<V: V8, const K: usize, const CB: usize, const RB: usize>(
    g: &Geo,
    x: *const f32,
    weight: *const f32,
    bias: *const f32,
    y: *mut f32,
    co: usize,
    oy: usize,
    col: usize,
) {
    let w_step = g.in_ch * K * K;
    // SAFETY: every offset below stays inside the sample's input, the weights and the
    // output, by the block's bounds (checked by `fwd_all`) and the geometry.
    unsafe {
        let mut acc = [[V::zero(); RB]; CB];
        if !bias.is_null() {
            for (c, row) in acc.iter_mut().enumerate() {
                *row = [V::splat(*bias.add(co + c)); RB];
            }
        }
        for ci in 0..g.in_ch {
            let xp = x.add(ci * g.h * g.w + oy * g.w + col);
            let wp = weight.add(co * w_step + ci * K * K);
            for ky in 0..K {
                for kx in 0..K {
                    let mut wv = [V::zero(); CB];
                    for (c, v) in wv.iter_mut().enumerate() {
                        *v = V::splat(*wp.add(c * w_step + ky * K + kx));
                    }
                    for r in 0..RB {
                        let xv = V::load(xp.add((r + ky) * g.w + kx));
                        for c in 0..CB {
                            acc[c][r] = wv[c].mul_add(xv, acc[c][r]);
                        }
                    }
                }
            }
        }
        let plane = g.oh * g.ow;
        for (c, row) in acc.iter().enumerate() {
            for (r, v) in row.iter().enumerate() {
                v.store(y.add((co + c) * plane + (oy + r) * g.ow + col));
            }
        }
    }
}

/// The weight-gradient kernel: picks the kernel side and register block.
#[inline(always)]
unsafe fn dw<V: V8>(a: &Dw) {
    // SAFETY (every call): forwarded from the caller.
    unsafe {
        match (a.g.k, V::REGS, a.g.out_ch.is_multiple_of(4)) {
            (5, 32, true) => dw_all::<V, 5, 4>(a),
            (5, 32, false) => dw_all::<V, 5, 3>(a),
            (5, 16 | 12, _) => dw_all::<V, 5, 2>(a),
            (5, ..) => dw_all::<V, 5, 1>(a),
            (3, 32, _) => dw_all::<V, 3, 6>(a),
            (3, 16 | 12, _) => dw_all::<V, 3, 3>(a),
            (3, ..) => dw_all::<V, 3, 1>(a),
            (k, ..) => unreachable!("kernel side {k} (checked by supports)"),
        }
    }
}

#[inline(always)]
unsafe fn dw_all<V: V8, const K: usize, const CB: usize>(a: &Dw) {
    let g = &a.g;
    let (plane, oplane) = (g.h * g.w, g.oh * g.ow);
    // Blocks of samples whose input plane and CB output-gradient planes fit in about 24 KiB,
    // so a block's passes (one per input channel and kernel row) read from L1.
    let per_sample = plane + CB * oplane;
    let nb = (6144 / per_sample).clamp(1, a.batch.max(1));
    // Lanes of the last, overlapping vector of a row that the one before already covered
    // are masked out, so no product is counted twice.
    let overlap = g.cols() * L - g.ow;
    let mut mask = [1.0f32; L];
    mask[..overlap].fill(0.0);
    let mut n0 = 0;
    while n0 < a.batch {
        let n1 = (n0 + nb).min(a.batch);
        let mut co = 0;
        while co < g.out_ch {
            let full = co + CB <= g.out_ch;
            for ci in 0..g.in_ch {
                for ky in 0..K {
                    // SAFETY: the block's channels, rows and samples lie inside the tensors.
                    unsafe {
                        if full {
                            dw_block::<V, K, CB>(a, &mask, n0, n1, co, ci, ky);
                        } else {
                            dw_block::<V, K, 1>(a, &mask, n0, n1, co, ci, ky);
                        }
                    }
                }
            }
            co += if full { CB } else { 1 };
        }
        n0 = n1;
    }
}

/// Adds to `dweight[co..co + CB, ci, ky, 0..K]` the products over samples `n0..n1`.
// Indexing two arrays by the same lane block reads clearer than zipped iterators.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_block<V: V8, const K: usize, const CB: usize>(
    a: &Dw,
    mask: &[f32; L],
    n0: usize,
    n1: usize,
    co: usize,
    ci: usize,
    ky: usize,
) {
    let g = &a.g;
    let (plane, oplane) = (g.h * g.w, g.oh * g.ow);
    let cols = g.cols();
    // SAFETY: every offset stays inside sample `n`'s input plane `ci` and output-gradient
    // planes `co..co + CB`, and inside the weight gradient.
    unsafe {
        let last_mask = V::load(mask.as_ptr());
        let mut acc = [[V::zero(); K]; CB];
        for n in n0..n1 {
            let xp = a.x.add((n * g.in_ch + ci) * plane + ky * g.w);
            let dp = a.dy.add((n * g.out_ch + co) * oplane);
            for oy in 0..g.oh {
                for j in 0..cols {
                    let col = g.col(j);
                    let mut d = [V::zero(); CB];
                    for (c, v) in d.iter_mut().enumerate() {
                        *v = V::load(dp.add(c * oplane + oy * g.ow + col));
                        if j + 1 == cols && !col.is_multiple_of(L) {
                            *v = v.mul(last_mask);
                        }
                    }
                    for kx in 0..K {
                        let xv = V::load(xp.add(oy * g.w + col + kx));
                        for c in 0..CB {
                            acc[c][kx] = d[c].mul_add(xv, acc[c][kx]);
                        }
                    }
                }
            }
        }
        let w_step = g.in_ch * K * K;
        for (c, row) in acc.iter().enumerate() {
            for (kx, v) in row.iter().enumerate() {
                *a.dweight.add((co + c) * w_step + (ci * K + ky) * K + kx) += v.sum();
            }
        }
    }
}

/// Runs the direct forward and backward passes on every available instruction set and
/// compares them with the im2col + GEMM reference computed in `f64` from the same inputs
/// (random in `[-1, 1)` from `seed`): each element within `1e-5` of the largest magnitude
/// of its tensor (plus one), which is what summation order changes. Without `dx` the
/// parameter gradients must be the same bit for bit. The unit tests and the browser's check
/// of the wasm build ([`self_check`]) both run it.
pub fn check_against_reference(s: ConvShape, seed: u64) -> Result<(), String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x = random(&mut rng, s.x_len());
    let w = random(&mut rng, s.weight_len());
    let b = random(&mut rng, s.out_ch);
    let dy = random(&mut rng, s.y_len());
    let mut y64 = vec![0.0; s.y_len()];
    ops::conv2d_forward(s, &to_f64(&x), &to_f64(&w), &to_f64(&b), &mut y64);
    let mut dx64 = vec![0.0; s.x_len()];
    let mut dw64 = vec![0.0; s.weight_len()];
    let mut db64 = vec![0.0; s.out_ch];
    ops::conv2d_backward(
        s,
        &to_f64(&x),
        &to_f64(&w),
        &to_f64(&dy),
        Some(&mut dx64),
        &mut dw64,
        &mut db64,
    );
    let isas = Isa::available();
    if !isas.contains(&Isa::Portable) {
        return Err(format!("{isas:?} lacks the portable path"));
    }
    for isa in isas {
        // Garbage everywhere: the kernels overwrite, never accumulate into, their outputs.
        let mut y = vec![f32::NAN; s.y_len()];
        conv2d_forward(isa, s, &x, &w, &b, &mut y);
        check("forward y", isa, &s, &y, &y64, 1e-5)?;
        let mut dx = vec![f32::NAN; s.x_len()];
        let mut dw = vec![f32::NAN; s.weight_len()];
        let mut db = vec![f32::NAN; s.out_ch];
        let mut scratch = vec![f32::NAN; backward_scratch_len(&s)];
        conv2d_backward(
            isa,
            s,
            &x,
            &w,
            &dy,
            Some(&mut dx),
            &mut dw,
            &mut db,
            &mut scratch,
        );
        check("backward dx", isa, &s, &dx, &dx64, 1e-5)?;
        check("backward dw", isa, &s, &dw, &dw64, 1e-5)?;
        check("backward db", isa, &s, &db, &db64, 1e-5)?;
        let (mut dw2, mut db2) = (vec![7.0; dw.len()], vec![7.0; db.len()]);
        conv2d_backward(isa, s, &x, &w, &dy, None, &mut dw2, &mut db2, &mut []);
        if (dw2, db2) != (dw, db) {
            return Err(format!(
                "{isa:?} for {s:?}: the gradients without dx differ from those with it"
            ));
        }
    }
    Ok(())
}

/// [`super::pool`]'s pooling + ReLU at LeNet's shapes and `random_cases` random ones, then
/// LeNet's two convolutions at batch 9, then `random_cases` random supported shapes (kernel 3
/// or 5, outputs 8 to 20 wide, 1 to 10 high, 1 to 7 input and 1 to 17 output channels, batch
/// 1 to 3) from `seed`, each through [`check_against_reference`]. Returns the instruction
/// sets that were checked. This is how a build the unit tests cannot run (wasm32, in a
/// browser) checks its own kernels.
pub fn self_check(seed: u64, random_cases: usize) -> Result<Vec<Isa>, String> {
    let lenet = [
        ConvShape {
            batch: 9,
            in_ch: 1,
            height: 28,
            width: 28,
            out_ch: 6,
            kernel: 5,
        },
        ConvShape {
            batch: 9,
            in_ch: 6,
            height: 12,
            width: 12,
            out_ch: 16,
            kernel: 5,
        },
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // The pooling + ReLU kernel at LeNet's two pooling shapes, then odd and even random ones.
    super::pool::check_against_reference(9 * 6, 24, 24, seed)?;
    super::pool::check_against_reference(9 * 16, 8, 8, seed + 1)?;
    for _ in 0..random_cases {
        let (h, w) = (rng.random_range(2..20), rng.random_range(2..20));
        super::pool::check_against_reference(rng.random_range(1..5), h, w, rng.random())?;
    }
    for (i, s) in lenet.into_iter().enumerate() {
        if !supports(&s) {
            return Err(format!("LeNet's {s:?} should be supported"));
        }
        check_against_reference(s, seed + i as u64)?;
    }
    for _ in 0..random_cases {
        let kernel = if rng.random_range(0..2) == 0 { 3 } else { 5 };
        let oh = rng.random_range(1..11usize);
        let s = ConvShape {
            batch: rng.random_range(1..4),
            in_ch: rng.random_range(1..8),
            height: oh + kernel - 1,
            width: 8 + rng.random_range(0..13usize) + kernel - 1,
            out_ch: rng.random_range(1..18),
            kernel,
        };
        if !supports(&s) {
            return Err(format!("{s:?} should be supported"));
        }
        check_against_reference(s, rng.random())?;
    }
    Ok(Isa::available())
}

/// Random values in `[-1, 1)`.
fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0..1.0f32)).collect()
}

fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// `|got - want| <= tol * (max |want| + 1)` for every element: the error of an `f32` sum
/// relative to the size of the tensor, which is what summation order changes.
fn check(
    what: &str,
    isa: Isa,
    s: &ConvShape,
    got: &[f32],
    want: &[f64],
    tol: f64,
) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} elements, want {}",
            got.len(),
            want.len()
        ));
    }
    let scale = want.iter().fold(0.0f64, |m, &w| m.max(w.abs())) + 1.0;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        if err.is_nan() || err > tol * scale {
            return Err(format!(
                "{what} on {isa:?} for {s:?}, element {i}: got {g}, want {w} (scale {scale})"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn matches_reference(s: ConvShape, seed: u64) {
        if let Err(e) = check_against_reference(s, seed) {
            panic!("{e}");
        }
    }

    /// Shapes the direct kernels handle: kernel 3 or 5, outputs 8 to 20 wide (whole vectors
    /// and an overlapping last one), any channel counts (full and partial register blocks).
    fn supported_shape() -> impl Strategy<Value = ConvShape> {
        (
            1usize..4,
            1usize..8,
            1usize..18,
            prop_oneof![Just(3usize), Just(5)],
            0usize..13,
            1usize..11,
        )
            .prop_map(|(batch, in_ch, out_ch, kernel, extra_w, oh)| ConvShape {
                batch,
                in_ch,
                height: oh + kernel - 1,
                width: 8 + extra_w + kernel - 1,
                out_ch,
                kernel,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]
        #[test]
        fn direct_kernels_match_im2col_gemm_on_random_shapes(s in supported_shape(), seed: u64) {
            prop_assert!(supports(&s));
            matches_reference(s, seed);
        }
    }

    #[test]
    fn direct_kernels_match_im2col_gemm_at_lenet_shapes() {
        // LeNet's shapes, then random ones: the check the wasm build runs in the browser.
        let isas = self_check(1, 8).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(isas, Isa::available());
    }

    #[test]
    fn unsupported_shapes_fall_back_to_the_reference() {
        for s in [
            // Kernel side 4.
            ConvShape {
                batch: 2,
                in_ch: 2,
                height: 12,
                width: 12,
                out_ch: 3,
                kernel: 4,
            },
            // Outputs narrower than a vector.
            ConvShape {
                batch: 2,
                in_ch: 3,
                height: 9,
                width: 7,
                out_ch: 5,
                kernel: 3,
            },
        ] {
            assert!(!supports(&s));
            matches_reference(s, 3);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn every_x86_path_this_machine_has_is_tested() {
        // The tests above loop over `Isa::available()`; this says which paths that covers, so
        // a machine with AVX2 cannot silently test only the portable one.
        let isas = Isa::available();
        assert_eq!(
            isas.contains(&Isa::Avx2),
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        );
        assert_eq!(
            isas.contains(&Isa::Avx512),
            isas.contains(&Isa::Avx2) && std::arch::is_x86_feature_detected!("avx512vl")
        );
        assert!(!isas.contains(&Isa::Simd128));
        assert_eq!(isas.last(), Some(&Isa::Portable));
        assert_eq!(isas[0], Isa::best());
    }
}
