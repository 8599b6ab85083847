//! Layer operations on plain slices, generic over the element type.
//!
//! Every function works on `f32` (training) and `f64` (gradient checks) through [`Float`].
//! Activations are NCHW (`[batch, channels, height, width]`, row-major), convolution weights
//! are `[out, in, k, k]` and dense weights `[out, in]`, as in PyTorch. The GPU kernels are
//! tested against these functions, so their names and semantics are a contract.
//!
//! Convolutions run as im2col followed by a GEMM (`matrixmultiply`). The plain functions
//! allocate their im2col scratch; the `*_with_scratch` variants take it from the caller, which
//! is how the model's training step runs without allocating.

use core::fmt::Debug;
use core::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

/// A floating-point element type the CPU backend computes in: `f32` or `f64`.
pub trait Float:
    Copy
    + Default
    + PartialOrd
    + Debug
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + Send
    + Sync
    + 'static
{
    /// Zero.
    const ZERO: Self;
    /// One.
    const ONE: Self;
    /// Converts from `f32` (exact for `f64`).
    fn from_f32(v: f32) -> Self;
    /// Converts to `f32` (rounding for `f64`).
    fn to_f32(self) -> f32;
    /// Converts from `f64` (rounding for `f32`).
    fn from_f64(v: f64) -> Self;
    /// Converts to `f64` (exact).
    fn to_f64(self) -> f64;
    /// Converts a count, for example a batch size to divide by.
    fn from_usize(v: usize) -> Self;
    /// `e^self`.
    fn exp(self) -> Self;
    /// The natural logarithm.
    fn ln(self) -> Self;
    /// The larger of the two (the other one when one is NaN).
    fn max(self, other: Self) -> Self;

    /// `C <- A B + beta C` for an `m x k` matrix `A`, a `k x n` matrix `B` and an `m x n`
    /// matrix `C`, each given by a pointer and its row and column strides in elements
    /// (`matrixmultiply`'s `sgemm`/`dgemm` with `alpha = 1`). When `beta` is zero, `C` is
    /// only written, never read.
    ///
    /// # Safety
    ///
    /// Every element addressed through the strides must lie inside a live allocation; `C`'s
    /// elements must be distinct and must not overlap `A` or `B`. Prefer the checked wrapper
    /// used inside this module.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    );

    /// The forward convolution the model's passes run: the direct kernels of
    /// [`super::direct`] for `f32` (on [`super::simd::Isa::best`]), this module's im2col + GEMM
    /// reference for `f64`. `scratch` holds at least [`model_scratch_len`] elements.
    fn conv2d_forward_model(
        s: ConvShape,
        x: &[Self],
        weight: &[Self],
        bias: &[Self],
        y: &mut [Self],
        scratch: &mut [Self],
    ) {
        conv2d_forward_with_scratch(s, x, weight, bias, y, scratch);
    }

    /// The dense forward the model's passes run: [`super::dense`]'s vector kernels for `f32`
    /// where [`super::dense::preferred_on`] the best instruction set, else [`dense_forward`].
    #[allow(clippy::too_many_arguments)]
    fn dense_forward_model(
        batch: usize,
        inputs: usize,
        outputs: usize,
        x: &[Self],
        weight: &[Self],
        bias: &[Self],
        y: &mut [Self],
    ) {
        dense_forward(batch, inputs, outputs, x, weight, bias, y);
    }

    /// The dense backward the model's passes run, chosen as in [`Float::dense_forward_model`].
    #[allow(clippy::too_many_arguments)]
    fn dense_backward_model(
        batch: usize,
        inputs: usize,
        outputs: usize,
        x: &[Self],
        weight: &[Self],
        dy: &[Self],
        dx: Option<&mut [Self]>,
        dweight: &mut [Self],
        dbias: &mut [Self],
    ) {
        dense_backward(batch, inputs, outputs, x, weight, dy, dx, dweight, dbias);
    }

    /// 2x2 max pooling then ReLU as the model's passes run them: [`super::pool`]'s kernel for
    /// `f32` (on [`super::simd::Isa::best`]), [`maxpool2_forward`] then [`relu_forward`] for
    /// `f64`.
    fn maxpool2_relu_forward_model(
        planes: usize,
        h: usize,
        w: usize,
        x: &[Self],
        y: &mut [Self],
        argmax: &mut [u32],
    ) {
        maxpool2_forward(planes, h, w, x, y, argmax);
        relu_forward(y);
    }

    /// The backward convolution the model's passes run, chosen as in
    /// [`Float::conv2d_forward_model`].
    #[allow(clippy::too_many_arguments)]
    fn conv2d_backward_model(
        s: ConvShape,
        x: &[Self],
        weight: &[Self],
        dy: &[Self],
        dx: Option<&mut [Self]>,
        dweight: &mut [Self],
        dbias: &mut [Self],
        scratch: &mut [Self],
    ) {
        conv2d_backward_with_scratch(s, x, weight, dy, dx, dweight, dbias, scratch);
    }
}

/// Scratch elements that [`Float::conv2d_forward_model`] and [`Float::conv2d_backward_model`]
/// need for `s`, for either element type.
pub fn model_scratch_len(s: &ConvShape) -> usize {
    s.scratch_len().max(super::direct::backward_scratch_len(s))
}

/// `Float` for `f32` and `f64`: the same inherent methods, and matrixmultiply's GEMM of that
/// precision.
macro_rules! impl_float {
    ($t:ty, $gemm:path $(, { $($extra:tt)* })?) => {
        impl Float for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            #[inline(always)]
            fn from_f32(v: f32) -> Self {
                v as $t
            }
            #[inline(always)]
            fn to_f32(self) -> f32 {
                self as f32
            }
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn from_usize(v: usize) -> Self {
                v as $t
            }
            #[inline(always)]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline(always)]
            fn max(self, other: Self) -> Self {
                <$t>::max(self, other)
            }
            unsafe fn gemm_raw(
                m: usize,
                k: usize,
                n: usize,
                a: *const Self,
                rsa: isize,
                csa: isize,
                b: *const Self,
                rsb: isize,
                csb: isize,
                beta: Self,
                c: *mut Self,
                rsc: isize,
                csc: isize,
            ) {
                // SAFETY: forwarded from the caller's contract.
                unsafe { $gemm(m, k, n, 1.0, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) }
            }
            $($($extra)*)?
        }
    };
}

impl_float!(f32, matrixmultiply::sgemm, {
    fn maxpool2_relu_forward_model(
        planes: usize,
        h: usize,
        w: usize,
        x: &[f32],
        y: &mut [f32],
        argmax: &mut [u32],
    ) {
        let isa = super::simd::Isa::best();
        super::pool::maxpool2_relu_forward(isa, planes, h, w, x, y, argmax);
    }

    fn conv2d_forward_model(
        s: ConvShape,
        x: &[f32],
        weight: &[f32],
        bias: &[f32],
        y: &mut [f32],
        _scratch: &mut [f32],
    ) {
        super::direct::conv2d_forward(super::simd::Isa::best(), s, x, weight, bias, y);
    }

    fn conv2d_backward_model(
        s: ConvShape,
        x: &[f32],
        weight: &[f32],
        dy: &[f32],
        dx: Option<&mut [f32]>,
        dweight: &mut [f32],
        dbias: &mut [f32],
        scratch: &mut [f32],
    ) {
        let isa = super::simd::Isa::best();
        super::direct::conv2d_backward(isa, s, x, weight, dy, dx, dweight, dbias, scratch);
    }

    fn dense_forward_model(
        batch: usize,
        inputs: usize,
        outputs: usize,
        x: &[f32],
        weight: &[f32],
        bias: &[f32],
        y: &mut [f32],
    ) {
        let isa = super::simd::Isa::best();
        if super::dense::preferred_on(isa) {
            super::dense::dense_forward(isa, batch, inputs, outputs, x, weight, bias, y);
        } else {
            dense_forward(batch, inputs, outputs, x, weight, bias, y);
        }
    }

    fn dense_backward_model(
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
        let isa = super::simd::Isa::best();
        if super::dense::preferred_on(isa) {
            super::dense::dense_backward(
                isa, batch, inputs, outputs, x, weight, dy, dx, dweight, dbias,
            );
        } else {
            dense_backward(batch, inputs, outputs, x, weight, dy, dx, dweight, dbias);
        }
    }
});
impl_float!(f64, matrixmultiply::dgemm);

/// A strided read-only view of an `rows x cols` matrix inside a slice.
#[derive(Clone, Copy)]
struct Mat<'a, F> {
    data: &'a [F],
    rs: usize,
    cs: usize,
}

/// A row-major (`cs == 1`) or column-major (`rs == 1`) writable matrix inside a slice.
struct MatMut<'a, F> {
    data: &'a mut [F],
    rs: usize,
    cs: usize,
}

/// Row-major view with `cols` columns.
fn rm<F>(data: &[F], cols: usize) -> Mat<'_, F> {
    Mat {
        data,
        rs: cols,
        cs: 1,
    }
}

/// The transpose of a row-major matrix with `cols` columns (so a column-major view).
fn rm_t<F>(data: &[F], cols: usize) -> Mat<'_, F> {
    Mat {
        data,
        rs: 1,
        cs: cols,
    }
}

/// Row-major writable view with `cols` columns.
fn rm_mut<F>(data: &mut [F], cols: usize) -> MatMut<'_, F> {
    MatMut {
        data,
        rs: cols,
        cs: 1,
    }
}

/// Whether every element of a `rows x cols` strided matrix lies inside `len` elements.
fn fits(len: usize, rows: usize, cols: usize, rs: usize, cs: usize) -> bool {
    rows == 0 || cols == 0 || (rows - 1) * rs + (cols - 1) * cs < len
}

/// `C <- A B + beta C` with `A: m x k`, `B: k x n`, `C: m x n`, bounds-checked.
fn gemm<F: Float>(m: usize, k: usize, n: usize, a: Mat<F>, b: Mat<F>, beta: F, c: MatMut<F>) {
    assert!(
        fits(a.data.len(), m, k, a.rs, a.cs),
        "gemm: A out of bounds"
    );
    assert!(
        fits(b.data.len(), k, n, b.rs, b.cs),
        "gemm: B out of bounds"
    );
    assert!(
        fits(c.data.len(), m, n, c.rs, c.cs),
        "gemm: C out of bounds"
    );
    // Distinct elements of C: row-major with rows at least n apart, or column-major.
    assert!(
        (c.cs == 1 && (m <= 1 || c.rs >= n)) || (c.rs == 1 && (n <= 1 || c.cs >= m)),
        "gemm: C's elements must be distinct"
    );
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the asserts above keep every access in bounds; `c` is a unique borrow, so it
    // overlaps neither `a` nor `b`, and its elements are distinct.
    unsafe {
        F::gemm_raw(
            m,
            k,
            n,
            a.data.as_ptr(),
            a.rs as isize,
            a.cs as isize,
            b.data.as_ptr(),
            b.rs as isize,
            b.cs as isize,
            beta,
            c.data.as_mut_ptr(),
            c.rs as isize,
            c.cs as isize,
        )
    }
}

/// The shape of a valid (no padding), stride-1 convolution with a square kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    /// Samples in the batch.
    pub batch: usize,
    /// Input channels.
    pub in_ch: usize,
    /// Input height.
    pub height: usize,
    /// Input width.
    pub width: usize,
    /// Output channels.
    pub out_ch: usize,
    /// Kernel side.
    pub kernel: usize,
}

impl ConvShape {
    /// Output height: `height - kernel + 1`.
    pub fn out_h(&self) -> usize {
        self.height + 1 - self.kernel
    }

    /// Output width: `width - kernel + 1`.
    pub fn out_w(&self) -> usize {
        self.width + 1 - self.kernel
    }

    /// Elements of the input, `batch * in_ch * height * width`.
    pub fn x_len(&self) -> usize {
        self.batch * self.in_ch * self.height * self.width
    }

    /// Elements of the output, `batch * out_ch * out_h * out_w`.
    pub fn y_len(&self) -> usize {
        self.batch * self.out_ch * self.out_h() * self.out_w()
    }

    /// Elements of the weight, `out_ch * in_ch * kernel * kernel`.
    pub fn weight_len(&self) -> usize {
        self.out_ch * self.patch_len()
    }

    /// Elements of one im2col patch (one column of the im2col matrix): `in_ch * kernel^2`.
    pub fn patch_len(&self) -> usize {
        self.in_ch * self.kernel * self.kernel
    }

    /// Elements of the scratch that [`conv2d_forward_with_scratch`] and
    /// [`conv2d_backward_with_scratch`] need: one sample's im2col matrix,
    /// `patch_len() * out_h() * out_w()`.
    pub fn scratch_len(&self) -> usize {
        self.patch_len() * self.out_h() * self.out_w()
    }

    fn check(&self) {
        assert!(
            self.kernel >= 1 && self.kernel <= self.height && self.kernel <= self.width,
            "conv: kernel {} does not fit a {}x{} input",
            self.kernel,
            self.height,
            self.width
        );
    }

    /// Checks the lengths a backward pass is given against the shape (`dx` when it is
    /// asked for). The one place both CPU backward passes state their preconditions.
    ///
    /// # Panics
    /// On the first length that does not match, naming it.
    pub fn check_backward_lens(
        &self,
        x: usize,
        weight: usize,
        dy: usize,
        dx: Option<usize>,
        dweight: usize,
        dbias: usize,
    ) {
        assert_eq!(x, self.x_len(), "conv2d_backward: x length");
        assert_eq!(weight, self.weight_len(), "conv2d_backward: weight length");
        assert_eq!(dy, self.y_len(), "conv2d_backward: dy length");
        if let Some(dx) = dx {
            assert_eq!(dx, self.x_len(), "conv2d_backward: dx length");
        }
        assert_eq!(
            dweight,
            self.weight_len(),
            "conv2d_backward: dweight length"
        );
        assert_eq!(dbias, self.out_ch, "conv2d_backward: dbias length");
    }
}

/// Copies `src` into `dst` (same length) with fixed-size moves. Rows here are a few to a few
/// dozen elements long, where a `memcpy` call per row costs more than the copy itself.
#[inline(always)]
fn copy_short<F: Copy>(dst: &mut [F], src: &[F]) {
    debug_assert_eq!(dst.len(), src.len());
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (d, s) in (&mut d).zip(&mut s) {
        copy_fixed::<F, 8>(d, s);
    }
    let (d, s) = (d.into_remainder(), s.remainder());
    let mut at = 0;
    if d.len() - at >= 4 {
        copy_fixed::<F, 4>(&mut d[at..], &s[at..]);
        at += 4;
    }
    if d.len() - at >= 2 {
        copy_fixed::<F, 2>(&mut d[at..], &s[at..]);
        at += 2;
    }
    if d.len() > at {
        d[at] = s[at];
    }
}

/// Copies the first `N` elements of `src` over the first `N` of `dst`.
#[inline(always)]
fn copy_fixed<F: Copy, const N: usize>(dst: &mut [F], src: &[F]) {
    let src: &[F; N] = src[..N].try_into().expect("N elements");
    dst[..N].copy_from_slice(src);
}

/// Adds `src` into `dst` (same length), elementwise.
#[inline(always)]
fn add_short<F: Float>(dst: &mut [F], src: &[F]) {
    debug_assert_eq!(dst.len(), src.len());
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (d, s) in (&mut d).zip(&mut s) {
        for i in 0..8 {
            d[i] += s[i];
        }
    }
    for (d, &s) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *d += s;
    }
}

/// Unfolds one sample `x: [in_ch, height, width]` into `cols: [in_ch * k * k, out_h * out_w]`,
/// where `cols[(ci, ky, kx), (oy, ox)] = x[ci, oy + ky, ox + kx]`.
fn im2col<F: Float>(s: &ConvShape, x: &[F], cols: &mut [F]) {
    let (h, w, k, oh, ow) = (s.height, s.width, s.kernel, s.out_h(), s.out_w());
    let p = oh * ow;
    let mut rows = cols.chunks_exact_mut(p);
    for plane in x.chunks_exact(h * w).take(s.in_ch) {
        for ky in 0..k {
            for kx in 0..k {
                let dst = rows.next().expect("cols has in_ch * k * k rows");
                for (oy, d) in dst.chunks_exact_mut(ow).enumerate() {
                    let from = (oy + ky) * w + kx;
                    copy_short(d, &plane[from..from + ow]);
                }
            }
        }
    }
}

/// The transpose of [`im2col`]: `cols_t: [out_h * out_w, in_ch * k * k]`, one contiguous
/// patch per output position, `cols_t[(oy, ox), (ci, ky, kx)] = x[ci, oy + ky, ox + kx]`.
fn im2col_t<F: Float>(s: &ConvShape, x: &[F], cols_t: &mut [F]) {
    let (h, w, k, oh, ow) = (s.height, s.width, s.kernel, s.out_h(), s.out_w());
    let kk = s.patch_len();
    match k {
        // Fixed-size copies for the kernels Easel uses.
        5 => im2col_t_fixed::<F, 5>(s.in_ch, h, w, oh, ow, x, cols_t),
        3 => im2col_t_fixed::<F, 3>(s.in_ch, h, w, oh, ow, x, cols_t),
        _ => {
            for (pos, patch) in cols_t.chunks_exact_mut(kk).take(oh * ow).enumerate() {
                let (oy, ox) = (pos / ow, pos % ow);
                let mut rows = patch.chunks_exact_mut(k);
                for plane in x.chunks_exact(h * w).take(s.in_ch) {
                    for ky in 0..k {
                        let from = (oy + ky) * w + ox;
                        copy_short(rows.next().expect("k rows"), &plane[from..from + k]);
                    }
                }
            }
        }
    }
}

fn im2col_t_fixed<F: Float, const K: usize>(
    in_ch: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    x: &[F],
    cols_t: &mut [F],
) {
    let kk = in_ch * K * K;
    let mut patches = cols_t.chunks_exact_mut(kk);
    for oy in 0..oh {
        for ox in 0..ow {
            let patch = patches.next().expect("one patch per output position");
            let mut rows = patch.chunks_exact_mut(K);
            for plane in x.chunks_exact(h * w).take(in_ch) {
                for ky in 0..K {
                    let from = (oy + ky) * w + ox;
                    copy_fixed::<F, K>(rows.next().expect("K rows"), &plane[from..]);
                }
            }
        }
    }
}

/// Folds `cols: [in_ch * k * k, out_h * out_w]` back into one sample `dx: [in_ch, height,
/// width]`, summing the entries that [`im2col`] copied from the same input element.
fn col2im<F: Float>(s: &ConvShape, cols: &[F], dx: &mut [F]) {
    let (h, w, k, oh, ow) = (s.height, s.width, s.kernel, s.out_h(), s.out_w());
    let p = oh * ow;
    dx.fill(F::ZERO);
    let mut rows = cols.chunks_exact(p);
    for plane in dx.chunks_exact_mut(h * w).take(s.in_ch) {
        for ky in 0..k {
            for kx in 0..k {
                let src = rows.next().expect("cols has in_ch * k * k rows");
                for (oy, r) in src.chunks_exact(ow).enumerate() {
                    let from = (oy + ky) * w + kx;
                    add_short(&mut plane[from..from + ow], r);
                }
            }
        }
    }
}

/// Forward convolution, NCHW, weights `[out, in, k, k]`:
/// `y[n, co, oy, ox] = b[co] + sum_{ci,ky,kx} w[co, ci, ky, kx] x[n, ci, oy + ky, ox + kx]`.
///
/// Allocates its im2col scratch; see [`conv2d_forward_with_scratch`] to avoid that.
pub fn conv2d_forward<F: Float>(s: ConvShape, x: &[F], weight: &[F], bias: &[F], y: &mut [F]) {
    let mut scratch = vec![F::ZERO; s.scratch_len()];
    conv2d_forward_with_scratch(s, x, weight, bias, y, &mut scratch);
}

/// [`conv2d_forward`] with caller-provided scratch of at least [`ConvShape::scratch_len`]
/// elements (its contents on entry do not matter).
pub fn conv2d_forward_with_scratch<F: Float>(
    s: ConvShape,
    x: &[F],
    weight: &[F],
    bias: &[F],
    y: &mut [F],
    scratch: &mut [F],
) {
    s.check();
    assert_eq!(x.len(), s.x_len(), "conv2d_forward: x length");
    assert_eq!(
        weight.len(),
        s.weight_len(),
        "conv2d_forward: weight length"
    );
    assert_eq!(bias.len(), s.out_ch, "conv2d_forward: bias length");
    assert_eq!(y.len(), s.y_len(), "conv2d_forward: y length");
    let (kk, p) = (s.patch_len(), s.out_h() * s.out_w());
    let cols = &mut scratch[..kk * p];
    let x_step = s.in_ch * s.height * s.width;
    for (xn, yn) in x.chunks_exact(x_step).zip(y.chunks_exact_mut(s.out_ch * p)) {
        im2col(&s, xn, cols);
        for (row, &b) in yn.chunks_exact_mut(p).zip(bias) {
            row.fill(b);
        }
        // y_n [out_ch, P] += W [out_ch, K] . cols [K, P]
        gemm(
            s.out_ch,
            kk,
            p,
            rm(weight, kk),
            rm(cols, p),
            F::ONE,
            rm_mut(yn, p),
        );
    }
}

/// Backward convolution for the output gradient `dy` (shape of `y`). Overwrites `dweight`
/// (`[out, in, k, k]`) and `dbias` (`[out]`) with the gradients summed over the batch (it
/// does not accumulate into them); writes the input gradient into `dx` if given.
///
/// Allocates its im2col scratch; see [`conv2d_backward_with_scratch`] to avoid that.
pub fn conv2d_backward<F: Float>(
    s: ConvShape,
    x: &[F],
    weight: &[F],
    dy: &[F],
    dx: Option<&mut [F]>,
    dweight: &mut [F],
    dbias: &mut [F],
) {
    let mut scratch = vec![F::ZERO; s.scratch_len()];
    conv2d_backward_with_scratch(s, x, weight, dy, dx, dweight, dbias, &mut scratch);
}

/// [`conv2d_backward`] with caller-provided scratch of at least [`ConvShape::scratch_len`]
/// elements (its contents on entry do not matter).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward_with_scratch<F: Float>(
    s: ConvShape,
    x: &[F],
    weight: &[F],
    dy: &[F],
    mut dx: Option<&mut [F]>,
    dweight: &mut [F],
    dbias: &mut [F],
    scratch: &mut [F],
) {
    s.check();
    s.check_backward_lens(
        x.len(),
        weight.len(),
        dy.len(),
        dx.as_deref().map(<[F]>::len),
        dweight.len(),
        dbias.len(),
    );
    let (kk, p) = (s.patch_len(), s.out_h() * s.out_w());
    let cols = &mut scratch[..kk * p];
    let x_step = s.in_ch * s.height * s.width;
    dweight.fill(F::ZERO);
    dbias.fill(F::ZERO);
    for (n, (xn, dyn_)) in x
        .chunks_exact(x_step)
        .zip(dy.chunks_exact(s.out_ch * p))
        .enumerate()
    {
        for (db, row) in dbias.iter_mut().zip(dyn_.chunks_exact(p)) {
            *db += sum(row);
        }
        // The transposed unfolding keeps the GEMM's right operand row-major (cheap to pack).
        im2col_t(&s, xn, cols);
        // dW [out_ch, K] += dy_n [out_ch, P] . cols^T [P, K]
        gemm(
            s.out_ch,
            p,
            kk,
            rm(dyn_, p),
            rm(cols, kk),
            F::ONE,
            rm_mut(dweight, kk),
        );
        if let Some(dx) = dx.as_deref_mut() {
            // dcols [K, P] = W^T [K, out_ch] . dy_n [out_ch, P], reusing the scratch.
            gemm(
                kk,
                s.out_ch,
                p,
                rm_t(weight, kk),
                rm(dyn_, p),
                F::ZERO,
                rm_mut(cols, p),
            );
            col2im(&s, cols, &mut dx[n * x_step..(n + 1) * x_step]);
        }
    }
}

/// A sum with four independent accumulators (so it vectorises and rounds less).
fn sum<F: Float>(v: &[F]) -> F {
    let mut acc = [F::ZERO; 4];
    let chunks = v.chunks_exact(4);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..4 {
            acc[i] += c[i];
        }
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for &r in rest {
        s += r;
    }
    s
}

/// ReLU in place: `x <- max(x, 0)`.
pub fn relu_forward<F: Float>(x: &mut [F]) {
    for v in x {
        *v = v.max(F::ZERO);
    }
}

/// ReLU backward in place: `dy <- dy * (y > 0)`, where `y` is the ReLU's output.
pub fn relu_backward<F: Float>(y: &[F], dy: &mut [F]) {
    assert_eq!(y.len(), dy.len(), "relu_backward: lengths");
    for (d, &v) in dy.iter_mut().zip(y) {
        // A select rather than a branch, so the loop vectorises.
        *d = if v > F::ZERO { *d } else { F::ZERO };
    }
}

/// 2x2 stride-2 max pooling over `planes` planes of `h x w` (`planes = batch * channels`),
/// giving `planes` planes of `(h / 2) x (w / 2)` (an odd last row or column is dropped, as in
/// PyTorch). `argmax` receives, for each output, the flat index into `x` of the maximum; on
/// ties the first one in row-major window order wins.
pub fn maxpool2_forward<F: Float>(
    planes: usize,
    h: usize,
    w: usize,
    x: &[F],
    y: &mut [F],
    argmax: &mut [u32],
) {
    let (oh, ow) = (h / 2, w / 2);
    assert_eq!(x.len(), planes * h * w, "maxpool2_forward: x length");
    assert_eq!(y.len(), planes * oh * ow, "maxpool2_forward: y length");
    assert_eq!(argmax.len(), y.len(), "maxpool2_forward: argmax length");
    assert!(
        x.len() <= u32::MAX as usize,
        "maxpool2_forward: x too large"
    );
    let (mut ys, mut args) = (y.chunks_exact_mut(ow), argmax.chunks_exact_mut(ow));
    for pl in 0..planes {
        for oy in 0..oh {
            let r0 = pl * h * w + 2 * oy * w;
            let (top, bottom) = (&x[r0..r0 + 2 * ow], &x[r0 + w..r0 + w + 2 * ow]);
            let (yrow, arow) = (ys.next().expect("y row"), args.next().expect("argmax row"));
            for ox in 0..ow {
                // Window order: top-left, top-right, bottom-left, bottom-right. Selects, not
                // branches: the winner is data-dependent and would defeat branch prediction.
                let (a, b) = (top[2 * ox], top[2 * ox + 1]);
                let (c, d) = (bottom[2 * ox], bottom[2 * ox + 1]);
                let (top_best, top_arg) = if b > a { (b, 1) } else { (a, 0) };
                let (bot_best, bot_arg) = if d > c { (d, 1) } else { (c, 0) };
                let (best, from) = if bot_best > top_best {
                    (bot_best, r0 + w + 2 * ox + bot_arg)
                } else {
                    (top_best, r0 + 2 * ox + top_arg)
                };
                yrow[ox] = best;
                arow[ox] = from as u32;
            }
        }
    }
}

/// Max-pooling backward: zeroes `dx`, then adds each `dy[i]` at `dx[argmax[i]]`.
pub fn maxpool2_backward<F: Float>(dy: &[F], argmax: &[u32], dx: &mut [F]) {
    assert_eq!(dy.len(), argmax.len(), "maxpool2_backward: lengths");
    dx.fill(F::ZERO);
    for (&d, &a) in dy.iter().zip(argmax) {
        dx[a as usize] += d;
    }
}

/// Dense layer: `y[n, o] = b[o] + sum_i x[n, i] w[o, i]` with `x: [batch, inputs]`,
/// `w: [outputs, inputs]`, `b: [outputs]` and `y: [batch, outputs]`.
pub fn dense_forward<F: Float>(
    batch: usize,
    inputs: usize,
    outputs: usize,
    x: &[F],
    weight: &[F],
    bias: &[F],
    y: &mut [F],
) {
    assert_eq!(x.len(), batch * inputs, "dense_forward: x length");
    assert_eq!(
        weight.len(),
        outputs * inputs,
        "dense_forward: weight length"
    );
    assert_eq!(bias.len(), outputs, "dense_forward: bias length");
    assert_eq!(y.len(), batch * outputs, "dense_forward: y length");
    for row in y.chunks_exact_mut(outputs) {
        row.copy_from_slice(bias);
    }
    // y [batch, out] += x [batch, in] . W^T [in, out]
    gemm(
        batch,
        inputs,
        outputs,
        rm(x, inputs),
        rm_t(weight, inputs),
        F::ONE,
        rm_mut(y, outputs),
    );
}

/// Dense backward for the output gradient `dy: [batch, outputs]`. Overwrites `dweight`
/// (`[outputs, inputs]`) and `dbias` (`[outputs]`) with the gradients summed over the batch;
/// writes `dx: [batch, inputs]` if given.
#[allow(clippy::too_many_arguments)]
pub fn dense_backward<F: Float>(
    batch: usize,
    inputs: usize,
    outputs: usize,
    x: &[F],
    weight: &[F],
    dy: &[F],
    dx: Option<&mut [F]>,
    dweight: &mut [F],
    dbias: &mut [F],
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
    // dW [out, in] = dy^T [out, batch] . x [batch, in]
    gemm(
        outputs,
        batch,
        inputs,
        rm_t(dy, outputs),
        rm(x, inputs),
        F::ZERO,
        rm_mut(dweight, inputs),
    );
    dbias.fill(F::ZERO);
    for row in dy.chunks_exact(outputs) {
        for (b, &d) in dbias.iter_mut().zip(row) {
            *b += d;
        }
    }
    if let Some(dx) = dx {
        assert_eq!(dx.len(), batch * inputs, "dense_backward: dx length");
        // dx [batch, in] = dy [batch, out] . W [out, in]
        gemm(
            batch,
            outputs,
            inputs,
            rm(dy, outputs),
            rm(weight, inputs),
            F::ZERO,
            rm_mut(dx, inputs),
        );
    }
}

/// The mean over the batch of the cross-entropy between `softmax(logits)` and the labels,
/// for `logits: [batch, classes]`. Writes `dlogits = (softmax(logits) - onehot(labels)) /
/// batch`, the gradient of the returned mean. Numerically stable: each row's maximum is
/// subtracted before exponentiating. Panics on a label `>= classes`.
pub fn softmax_cross_entropy<F: Float>(
    batch: usize,
    classes: usize,
    logits: &[F],
    labels: &[u8],
    dlogits: &mut [F],
) -> F {
    assert_eq!(logits.len(), batch * classes, "softmax_ce: logits length");
    assert_eq!(labels.len(), batch, "softmax_ce: labels length");
    assert_eq!(dlogits.len(), batch * classes, "softmax_ce: dlogits length");
    let inv_batch = F::ONE / F::from_usize(batch);
    let mut total = F::ZERO;
    for ((row, d), &label) in logits
        .chunks_exact(classes)
        .zip(dlogits.chunks_exact_mut(classes))
        .zip(labels)
    {
        let label = label as usize;
        assert!(label < classes, "softmax_ce: label {label} >= {classes}");
        let max = row.iter().fold(row[0], |m, &v| m.max(v));
        let mut z = F::ZERO;
        for (e, &v) in d.iter_mut().zip(row) {
            *e = (v - max).exp();
            z += *e;
        }
        // loss = logsumexp(row) - row[label] = ln z + max - row[label]
        total += z.ln() + max - row[label];
        let scale = inv_batch / z;
        for e in d.iter_mut() {
            *e *= scale;
        }
        d[label] -= inv_batch;
    }
    total * inv_batch
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    pub(crate) fn random_vec(rng: &mut ChaCha8Rng, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| rng.random_range(lo..hi)).collect()
    }

    /// Asserts `|a - b| <= rtol * max(|a|, |b|) + atol` for each pair, naming the first failure.
    pub(crate) fn assert_close(what: &str, got: &[f64], want: &[f64], rtol: f64, atol: f64) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let tol = rtol * g.abs().max(w.abs()) + atol;
            assert!(
                (g - w).abs() <= tol,
                "{what}[{i}]: got {g}, want {w} (diff {:e}, tol {tol:e})",
                (g - w).abs()
            );
        }
    }

    /// Central-difference derivative of `f` with respect to every element of `x`.
    pub(crate) fn numeric_grad(x: &[f64], h: f64, mut f: impl FnMut(&[f64]) -> f64) -> Vec<f64> {
        let mut x = x.to_vec();
        (0..x.len())
            .map(|i| {
                let orig = x[i];
                x[i] = orig + h;
                let up = f(&x);
                x[i] = orig - h;
                let down = f(&x);
                x[i] = orig;
                (up - down) / (2.0 * h)
            })
            .collect()
    }

    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// The obvious six nested loops, for comparison.
    fn naive_conv<F: Float>(s: ConvShape, x: &[F], w: &[F], b: &[F]) -> Vec<F> {
        let (oh, ow, k) = (s.out_h(), s.out_w(), s.kernel);
        let mut y = vec![F::ZERO; s.y_len()];
        for n in 0..s.batch {
            for co in 0..s.out_ch {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = b[co];
                        for ci in 0..s.in_ch {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let wi = ((co * s.in_ch + ci) * k + ky) * k + kx;
                                    let xi = ((n * s.in_ch + ci) * s.height + oy + ky) * s.width
                                        + ox
                                        + kx;
                                    acc += w[wi] * x[xi];
                                }
                            }
                        }
                        y[((n * s.out_ch + co) * oh + oy) * ow + ox] = acc;
                    }
                }
            }
        }
        y
    }

    const SHAPES: [ConvShape; 4] = [
        ConvShape {
            batch: 2,
            in_ch: 1,
            height: 28,
            width: 28,
            out_ch: 6,
            kernel: 5,
        },
        ConvShape {
            batch: 3,
            in_ch: 6,
            height: 12,
            width: 12,
            out_ch: 16,
            kernel: 5,
        },
        ConvShape {
            batch: 2,
            in_ch: 3,
            height: 9,
            width: 7,
            out_ch: 5,
            kernel: 3,
        },
        ConvShape {
            batch: 1,
            in_ch: 2,
            height: 4,
            width: 6,
            out_ch: 3,
            kernel: 4,
        },
    ];

    #[test]
    fn conv2d_forward_im2col_gemm_matches_naive_direct_conv() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for s in SHAPES {
            let x = random_vec(&mut rng, s.x_len(), -1.0, 1.0);
            let w = random_vec(&mut rng, s.weight_len(), -1.0, 1.0);
            let b = random_vec(&mut rng, s.out_ch, -1.0, 1.0);
            let mut y = vec![f64::NAN; s.y_len()];
            conv2d_forward(s, &x, &w, &b, &mut y);
            assert_close("conv y f64", &y, &naive_conv(s, &x, &w, &b), 1e-12, 1e-12);

            let f = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
            let (x32, w32, b32) = (f(&x), f(&w), f(&b));
            let mut y32 = vec![f32::NAN; s.y_len()];
            conv2d_forward(s, &x32, &w32, &b32, &mut y32);
            let naive32 = naive_conv(s, &x32, &w32, &b32);
            let g: Vec<f64> = y32.iter().map(|&v| v as f64).collect();
            let n: Vec<f64> = naive32.iter().map(|&v| v as f64).collect();
            assert_close("conv y f32", &g, &n, 1e-5, 1e-4);
        }
    }

    #[test]
    fn conv2d_backward_matches_finite_differences() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        // Small shapes: every coordinate of x, w and b is checked.
        for s in [SHAPES[2], SHAPES[3]] {
            let x = random_vec(&mut rng, s.x_len(), -1.0, 1.0);
            let w = random_vec(&mut rng, s.weight_len(), -1.0, 1.0);
            let b = random_vec(&mut rng, s.out_ch, -1.0, 1.0);
            // L = sum(y * r), so dL/dy = r.
            let r = random_vec(&mut rng, s.y_len(), -1.0, 1.0);
            let loss = |x: &[f64], w: &[f64], b: &[f64]| {
                let mut y = vec![0.0; s.y_len()];
                conv2d_forward(s, x, w, b, &mut y);
                dot(&y, &r)
            };
            // Garbage in the outputs: backward must overwrite, not accumulate.
            let mut dx = vec![7.0; s.x_len()];
            let mut dw = vec![7.0; s.weight_len()];
            let mut db = vec![7.0; s.out_ch];
            conv2d_backward(s, &x, &w, &r, Some(&mut dx), &mut dw, &mut db);
            let h = 1e-5;
            let ndx = numeric_grad(&x, h, |x| loss(x, &w, &b));
            let ndw = numeric_grad(&w, h, |w| loss(&x, w, &b));
            let ndb = numeric_grad(&b, h, |b| loss(&x, &w, b));
            assert_close("conv dx", &dx, &ndx, 1e-6, 1e-8);
            assert_close("conv dw", &dw, &ndw, 1e-6, 1e-8);
            assert_close("conv db", &db, &ndb, 1e-6, 1e-8);

            // Without dx, the parameter gradients are the same.
            let mut dw2 = vec![-3.0; s.weight_len()];
            let mut db2 = vec![-3.0; s.out_ch];
            conv2d_backward(s, &x, &w, &r, None, &mut dw2, &mut db2);
            assert_eq!(dw2, dw);
            assert_eq!(db2, db);
        }
    }

    #[test]
    fn conv2d_backward_at_lenet_shapes_matches_finite_differences_on_samples() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for s in [SHAPES[0], SHAPES[1]] {
            let x = random_vec(&mut rng, s.x_len(), -1.0, 1.0);
            let w = random_vec(&mut rng, s.weight_len(), -1.0, 1.0);
            let b = random_vec(&mut rng, s.out_ch, -1.0, 1.0);
            let r = random_vec(&mut rng, s.y_len(), -1.0, 1.0);
            let mut dx = vec![0.0; s.x_len()];
            let mut dw = vec![0.0; s.weight_len()];
            let mut db = vec![0.0; s.out_ch];
            conv2d_backward(s, &x, &w, &r, Some(&mut dx), &mut dw, &mut db);
            let mut y = vec![0.0; s.y_len()];
            let mut eval = |x: &[f64], w: &[f64], b: &[f64]| {
                conv2d_forward(s, x, w, b, &mut y);
                dot(&y, &r)
            };
            let h = 1e-5;
            for _ in 0..40 {
                let (i, j) = (
                    rng.random_range(0..s.x_len()),
                    rng.random_range(0..s.weight_len()),
                );
                let (mut xp, mut xm) = (x.clone(), x.clone());
                xp[i] += h;
                xm[i] -= h;
                let n = (eval(&xp, &w, &b) - eval(&xm, &w, &b)) / (2.0 * h);
                assert_close("conv dx sample", &[dx[i]], &[n], 1e-6, 1e-8);
                let (mut wp, mut wm) = (w.clone(), w.clone());
                wp[j] += h;
                wm[j] -= h;
                let n = (eval(&x, &wp, &b) - eval(&x, &wm, &b)) / (2.0 * h);
                assert_close("conv dw sample", &[dw[j]], &[n], 1e-6, 1e-8);
            }
            let ndb = numeric_grad(&b, h, |b| eval(&x, &w, b));
            assert_close("conv db", &db, &ndb, 1e-6, 1e-8);
        }
    }

    #[test]
    fn relu_backward_matches_finite_differences() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        // Keep inputs away from the kink so that x +- h stays on one side.
        let x: Vec<f64> = random_vec(&mut rng, 200, -1.0, 1.0)
            .into_iter()
            .map(|v| if v.abs() < 1e-3 { 0.5 } else { v })
            .collect();
        let r = random_vec(&mut rng, x.len(), -1.0, 1.0);
        let mut y = x.clone();
        relu_forward(&mut y);
        assert!(y.iter().zip(&x).all(|(&y, &x)| y == x.max(0.0)));
        let mut dy = r.clone();
        relu_backward(&y, &mut dy);
        let n = numeric_grad(&x, 1e-6, |x| {
            let mut y = x.to_vec();
            relu_forward(&mut y);
            dot(&y, &r)
        });
        assert_close("relu dx", &dy, &n, 1e-6, 1e-9);
        assert!(dy.contains(&0.0) && dy.iter().any(|&d| d != 0.0));
    }

    /// Distinct values at least 0.01 apart, in random order, so no pooling window has a tie
    /// that a finite-difference step could flip.
    fn shuffled_distinct(rng: &mut ChaCha8Rng, n: usize) -> Vec<f64> {
        let mut v: Vec<f64> = (0..n).map(|i| i as f64 * 0.01 - 0.3).collect();
        for i in (1..n).rev() {
            v.swap(i, rng.random_range(0..=i));
        }
        v
    }

    #[test]
    fn maxpool2_backward_matches_finite_differences() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for (planes, h, w) in [(6, 8, 8), (2, 5, 7)] {
            let (oh, ow) = (h / 2, w / 2);
            let x = shuffled_distinct(&mut rng, planes * h * w);
            let r = random_vec(&mut rng, planes * oh * ow, -1.0, 1.0);
            let pool = |x: &[f64]| {
                let mut y = vec![0.0; planes * oh * ow];
                let mut a = vec![0u32; y.len()];
                maxpool2_forward(planes, h, w, x, &mut y, &mut a);
                (y, a)
            };
            let (y, arg) = pool(&x);
            for (o, (&v, &a)) in y.iter().zip(&arg).enumerate() {
                assert_eq!(v, x[a as usize], "output {o} is the value at its argmax");
            }
            let mut dx = vec![9.0; x.len()];
            maxpool2_backward(&r, &arg, &mut dx);
            let n = numeric_grad(&x, 1e-4, |x| dot(&pool(x).0, &r));
            assert_close("maxpool dx", &dx, &n, 1e-6, 1e-9);
        }
    }

    #[test]
    fn maxpool2_forward_first_max_wins_on_ties_and_drops_odd_edges() {
        // One 3x5 plane: windows cover rows 0-1 and columns 0-3.
        let x = [
            1.0, 1.0, 0.0, 2.0, 9.0, //
            1.0, 0.5, 2.0, 2.0, 9.0, //
            9.0, 9.0, 9.0, 9.0, 9.0f32,
        ];
        let mut y = [0.0f32; 2];
        let mut a = [0u32; 2];
        maxpool2_forward(1, 3, 5, &x, &mut y, &mut a);
        assert_eq!(y, [1.0, 2.0]);
        assert_eq!(a, [0, 3]);
    }

    #[test]
    fn maxpool2_forward_matches_a_sequential_first_max_scan_on_many_ties() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let (planes, h, w) = (5, 6, 8);
        // Values from {0, 1, 2}: most windows have ties.
        let x: Vec<f32> = (0..planes * h * w)
            .map(|_| rng.random_range(0..3u8) as f32)
            .collect();
        let mut y = vec![0.0f32; planes * 3 * 4];
        let mut a = vec![0u32; y.len()];
        maxpool2_forward(planes, h, w, &x, &mut y, &mut a);
        let mut o = 0;
        for pl in 0..planes {
            for oy in 0..3 {
                for ox in 0..4 {
                    let i0 = pl * h * w + 2 * oy * w + 2 * ox;
                    let window = [i0, i0 + 1, i0 + w, i0 + w + 1];
                    let mut best = window[0];
                    for &i in &window[1..] {
                        if x[i] > x[best] {
                            best = i;
                        }
                    }
                    assert_eq!((y[o], a[o]), (x[best], best as u32), "output {o}");
                    o += 1;
                }
            }
        }
    }

    #[test]
    fn dense_backward_matches_finite_differences() {
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let (batch, inputs, outputs) = (3, 7, 5);
        let x = random_vec(&mut rng, batch * inputs, -1.0, 1.0);
        let w = random_vec(&mut rng, outputs * inputs, -1.0, 1.0);
        let b = random_vec(&mut rng, outputs, -1.0, 1.0);
        let r = random_vec(&mut rng, batch * outputs, -1.0, 1.0);
        let loss = |x: &[f64], w: &[f64], b: &[f64]| {
            let mut y = vec![0.0; batch * outputs];
            dense_forward(batch, inputs, outputs, x, w, b, &mut y);
            dot(&y, &r)
        };
        // The forward against the definition.
        let mut y = vec![f64::NAN; batch * outputs];
        dense_forward(batch, inputs, outputs, &x, &w, &b, &mut y);
        for n in 0..batch {
            for o in 0..outputs {
                let dot: f64 = (0..inputs)
                    .map(|i| x[n * inputs + i] * w[o * inputs + i])
                    .sum();
                let want = b[o] + dot;
                assert_close("dense y", &[y[n * outputs + o]], &[want], 1e-12, 1e-12);
            }
        }
        let mut dx = vec![7.0; x.len()];
        let mut dw = vec![7.0; w.len()];
        let mut db = vec![7.0; b.len()];
        dense_backward(
            batch,
            inputs,
            outputs,
            &x,
            &w,
            &r,
            Some(&mut dx),
            &mut dw,
            &mut db,
        );
        let h = 1e-5;
        assert_close(
            "dense dx",
            &dx,
            &numeric_grad(&x, h, |x| loss(x, &w, &b)),
            1e-6,
            1e-8,
        );
        assert_close(
            "dense dw",
            &dw,
            &numeric_grad(&w, h, |w| loss(&x, w, &b)),
            1e-6,
            1e-8,
        );
        assert_close(
            "dense db",
            &db,
            &numeric_grad(&b, h, |b| loss(&x, &w, b)),
            1e-6,
            1e-8,
        );
    }

    #[test]
    fn softmax_cross_entropy_matches_finite_differences() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let (batch, classes) = (4, 10);
        let logits = random_vec(&mut rng, batch * classes, -3.0, 3.0);
        let labels: Vec<u8> = (0..batch).map(|_| rng.random_range(0..10u8)).collect();
        let mut d = vec![7.0; logits.len()];
        let loss = softmax_cross_entropy(batch, classes, &logits, &labels, &mut d);
        // The loss against the textbook formula.
        let mut want = 0.0;
        for (row, &l) in logits.chunks(classes).zip(&labels) {
            let z: f64 = row.iter().map(|v| v.exp()).sum();
            want += -(row[l as usize].exp() / z).ln();
        }
        assert_close(
            "softmax_ce loss",
            &[loss],
            &[want / batch as f64],
            1e-12,
            0.0,
        );
        let mut scratch = vec![0.0; logits.len()];
        let n = numeric_grad(&logits, 1e-5, |l| {
            softmax_cross_entropy(batch, classes, l, &labels, &mut scratch)
        });
        assert_close("softmax_ce dlogits", &d, &n, 1e-6, 1e-10);
        // Each row of the gradient sums to zero.
        for row in d.chunks(classes) {
            assert!(row.iter().sum::<f64>().abs() < 1e-15);
        }
    }

    #[test]
    fn softmax_cross_entropy_is_stable_for_huge_logits() {
        let logits = [1000.0f32, 0.0, -1000.0, 1000.0, 1000.0, 1000.0];
        let mut d = [0.0f32; 6];
        let loss = softmax_cross_entropy(2, 3, &logits, &[1, 0], &mut d);
        // Row 0: loss 1000 (label far below the max). Row 1: uniform, loss ln 3.
        let want = (1000.0 + 3f32.ln()) / 2.0;
        assert!((loss - want).abs() < 1e-3, "loss {loss}, want {want}");
        assert!(d.iter().all(|v| v.is_finite()));
        assert!((d[0] - 0.5).abs() < 1e-6 && (d[1] + 0.5).abs() < 1e-6);
    }
}
