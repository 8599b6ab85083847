//! Eight-lane `f32` vectors for the direct convolution kernels of [`super::direct`], one
//! implementation per instruction set, and the run-time choice between them.
//!
//! Every kernel is written once, generic over [`V8`], and instantiated inside a function
//! compiled for one instruction set (`#[target_feature]`), so the vector methods, all
//! `#[inline(always)]`, become single instructions there:
//!
//! - [`Isa::Avx512`]: AVX2 + FMA code compiled with AVX-512F/VL enabled, which gives the
//!   compiler 32 vector registers (the kernels then use larger register blocks);
//! - [`Isa::Avx2`]: AVX2 + FMA, 16 registers;
//! - [`Isa::Simd128`]: wasm32 `simd128`, each vector a pair of 128-bit vectors; multiply then
//!   add, or `f32x4.relaxed_madd` in the module built with `relaxed-simd` (the pages load that
//!   one only where the browser validates relaxed SIMD, see `www/wasm-select.js`);
//! - [`Isa::Portable`]: plain `[f32; 8]` arrays that the compiler vectorises for the baseline
//!   target, multiply then add. It runs everywhere and is what the tests compare the others to
//!   besides the im2col + GEMM reference.

use std::sync::OnceLock;

/// An instruction set the direct kernels can run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// x86_64 with AVX-512F and AVX-512VL (and AVX2 + FMA).
    Avx512,
    /// x86_64 with AVX2 and FMA.
    Avx2,
    /// wasm32 built with the `simd128` target feature.
    Simd128,
    /// Anything: plain arrays.
    Portable,
}

impl Isa {
    /// Every instruction set this machine can run, fastest first ([`Isa::Portable`] last).
    pub fn available() -> Vec<Isa> {
        [Isa::Avx512, Isa::Avx2, Isa::Simd128, Isa::Portable]
            .into_iter()
            .filter(|isa| isa.is_available())
            .collect()
    }

    /// Whether this machine can run `self`.
    pub fn is_available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                Isa::Avx2.is_available()
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            Isa::Simd128 => cfg!(all(target_arch = "wasm32", target_feature = "simd128")),
            Isa::Portable => true,
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx512 | Isa::Avx2 => false,
        }
    }

    /// The fastest available instruction set, detected once per process. The environment
    /// variable `EASEL_CPU_ISA` (`avx512`, `avx2`, `portable`) lowers the choice, to compare
    /// the paths in one build; a name that is not available here is ignored.
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            let available = Isa::available();
            let wanted = std::env::var("EASEL_CPU_ISA").ok().and_then(|name| {
                available
                    .iter()
                    .copied()
                    .find(|isa| isa.name() == name.trim())
            });
            wanted.unwrap_or(available[0])
        })
    }

    /// A short lowercase name: `avx512`, `avx2`, `simd128` (`simd128-relaxed` in the module
    /// built with relaxed SIMD) or `portable`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Simd128 if cfg!(target_feature = "relaxed-simd") => "simd128-relaxed",
            Isa::Simd128 => "simd128",
            Isa::Portable => "portable",
        }
    }
}

/// Eight `f32` lanes. Every method is `unsafe`: pointers must address eight readable (or
/// writable) `f32`s, and the methods of an instruction-set type may only run where
/// [`Isa::available`] lists it.
pub(crate) trait V8: Copy {
    /// How many eight-lane vectors the instruction set's registers hold: 32 with AVX-512
    /// (32 registers of 256 bits usable), 16 with AVX2, 8 where a vector is a pair of
    /// 128-bit registers out of 16 (wasm simd128, and the portable path on x86_64's SSE2
    /// baseline). The kernels pick their register blocks by it, so that accumulators are
    /// not spilled to memory.
    const REGS: usize;
    unsafe fn zero() -> Self;
    unsafe fn splat(v: f32) -> Self;
    /// Loads eight lanes from `p` (no alignment needed).
    unsafe fn load(p: *const f32) -> Self;
    /// Stores eight lanes at `p` (no alignment needed).
    unsafe fn store(self, p: *mut f32);
    /// `self * b + c`, fused where the instruction set has it.
    unsafe fn mul_add(self, b: Self, c: Self) -> Self;
    unsafe fn mul(self, b: Self) -> Self;
    unsafe fn add(self, b: Self) -> Self;
    /// The sum of the eight lanes.
    unsafe fn sum(self) -> f32;
}

/// The portable vector: the compiler vectorises these loops for the baseline target.
#[derive(Clone, Copy)]
pub(crate) struct Portable([f32; 8]);

// Lane loops index three arrays at once: clearer than zipped iterators, and they vectorise.
#[allow(clippy::needless_range_loop)]
impl V8 for Portable {
    const REGS: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> Self {
        Portable([0.0; 8])
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        Portable([v; 8])
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller guarantees eight readable lanes.
        Portable(unsafe { p.cast::<[f32; 8]>().read_unaligned() })
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the caller guarantees eight writable lanes.
        unsafe { p.cast::<[f32; 8]>().write_unaligned(self.0) }
    }
    #[inline(always)]
    unsafe fn mul_add(self, b: Self, c: Self) -> Self {
        let mut r = [0.0; 8];
        for i in 0..8 {
            r[i] = self.0[i] * b.0[i] + c.0[i];
        }
        Portable(r)
    }
    #[inline(always)]
    unsafe fn mul(self, b: Self) -> Self {
        let mut r = [0.0; 8];
        for i in 0..8 {
            r[i] = self.0[i] * b.0[i];
        }
        Portable(r)
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        let mut r = [0.0; 8];
        for i in 0..8 {
            r[i] = self.0[i] + b.0[i];
        }
        Portable(r)
    }
    #[inline(always)]
    unsafe fn sum(self) -> f32 {
        let a = &self.0;
        ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::V8;
    use core::arch::x86_64::*;

    /// Shared by [`Avx2`] and [`Avx512`]: the same 256-bit instructions.
    macro_rules! avx_v8 {
        ($name:ident, $regs:expr) => {
            #[derive(Clone, Copy)]
            pub(crate) struct $name(__m256);

            impl V8 for $name {
                const REGS: usize = $regs;
                #[inline(always)]
                unsafe fn zero() -> Self {
                    // SAFETY (all methods): the caller runs this only where AVX2 + FMA exist.
                    $name(unsafe { _mm256_setzero_ps() })
                }
                #[inline(always)]
                unsafe fn splat(v: f32) -> Self {
                    $name(unsafe { _mm256_set1_ps(v) })
                }
                #[inline(always)]
                unsafe fn load(p: *const f32) -> Self {
                    $name(unsafe { _mm256_loadu_ps(p) })
                }
                #[inline(always)]
                unsafe fn store(self, p: *mut f32) {
                    unsafe { _mm256_storeu_ps(p, self.0) }
                }
                #[inline(always)]
                unsafe fn mul_add(self, b: Self, c: Self) -> Self {
                    $name(unsafe { _mm256_fmadd_ps(self.0, b.0, c.0) })
                }
                #[inline(always)]
                unsafe fn mul(self, b: Self) -> Self {
                    $name(unsafe { _mm256_mul_ps(self.0, b.0) })
                }
                #[inline(always)]
                unsafe fn add(self, b: Self) -> Self {
                    $name(unsafe { _mm256_add_ps(self.0, b.0) })
                }
                #[inline(always)]
                unsafe fn sum(self) -> f32 {
                    unsafe {
                        let lo = _mm256_castps256_ps128(self.0);
                        let hi = _mm256_extractf128_ps(self.0, 1);
                        let s = _mm_add_ps(lo, hi);
                        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
                        _mm_cvtss_f32(s)
                    }
                }
            }
        };
    }

    avx_v8!(Avx2, 16);
    avx_v8!(Avx512, 32);
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub(crate) use wasm::{Half, Simd128};

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm {
    use super::V8;
    use core::arch::wasm32::*;

    /// Two 128-bit vectors. The module is built with `simd128` enabled everywhere, so
    /// these are plain instructions (no run-time check is needed or possible).
    #[derive(Clone, Copy)]
    pub(crate) struct Simd128(v128, v128);

    /// One 128-bit half of an eight-lane vector: lanes 0-3 (`HI = false`) or lanes 4-7
    /// (`HI = true`); loads and stores touch only those four of the eight lanes the pointer
    /// addresses, and [`V8::sum`] adds four lanes. A kernel whose lanes are independent (each
    /// lane of a result depends on the same lane of its operands, and results are stored or
    /// summed into memory) computes the whole of its eight-lane result when it runs once with
    /// each half, with register blocks twice as large as [`Simd128`]'s: 16 registers of four
    /// lanes, of which the browser's compiler keeps one or two for itself (`REGS` 12).
    #[derive(Clone, Copy)]
    pub(crate) struct Half<const HI: bool>(v128);

    impl<const HI: bool> Half<HI> {
        /// The first lane of this half in an eight-lane vector.
        const AT: usize = if HI { 4 } else { 0 };
    }

    impl<const HI: bool> V8 for Half<HI> {
        const REGS: usize = 12;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Half(f32x4_splat(0.0))
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            Half(f32x4_splat(v))
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            // SAFETY: the caller guarantees eight readable lanes; this reads four of them.
            unsafe { Half(v128_load(p.add(Self::AT).cast())) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            // SAFETY: the caller guarantees eight writable lanes; this writes four of them.
            unsafe { v128_store(p.add(Self::AT).cast(), self.0) }
        }
        #[inline(always)]
        unsafe fn mul_add(self, b: Self, c: Self) -> Self {
            #[cfg(target_feature = "relaxed-simd")]
            {
                Half(f32x4_relaxed_madd(self.0, b.0, c.0))
            }
            #[cfg(not(target_feature = "relaxed-simd"))]
            {
                Half(f32x4_add(f32x4_mul(self.0, b.0), c.0))
            }
        }
        #[inline(always)]
        unsafe fn mul(self, b: Self) -> Self {
            Half(f32x4_mul(self.0, b.0))
        }
        #[inline(always)]
        unsafe fn add(self, b: Self) -> Self {
            Half(f32x4_add(self.0, b.0))
        }
        #[inline(always)]
        unsafe fn sum(self) -> f32 {
            let s = self.0;
            (f32x4_extract_lane::<0>(s) + f32x4_extract_lane::<2>(s))
                + (f32x4_extract_lane::<1>(s) + f32x4_extract_lane::<3>(s))
        }
    }

    impl V8 for Simd128 {
        const REGS: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Simd128(f32x4_splat(0.0), f32x4_splat(0.0))
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            Simd128(f32x4_splat(v), f32x4_splat(v))
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            // SAFETY: the caller guarantees eight readable lanes.
            unsafe { Simd128(v128_load(p.cast()), v128_load(p.add(4).cast())) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            // SAFETY: the caller guarantees eight writable lanes.
            unsafe {
                v128_store(p.cast(), self.0);
                v128_store(p.add(4).cast(), self.1);
            }
        }
        /// Fused where the engine fuses: the relaxed-SIMD build's `f32x4.relaxed_madd` is
        /// one FMA instruction on x86_64 with FMA3 and on ARM (or a multiply and an add
        /// elsewhere: either rounding is allowed); the plain build multiplies, then adds.
        #[inline(always)]
        unsafe fn mul_add(self, b: Self, c: Self) -> Self {
            #[cfg(target_feature = "relaxed-simd")]
            {
                Simd128(
                    f32x4_relaxed_madd(self.0, b.0, c.0),
                    f32x4_relaxed_madd(self.1, b.1, c.1),
                )
            }
            #[cfg(not(target_feature = "relaxed-simd"))]
            {
                Simd128(
                    f32x4_add(f32x4_mul(self.0, b.0), c.0),
                    f32x4_add(f32x4_mul(self.1, b.1), c.1),
                )
            }
        }
        #[inline(always)]
        unsafe fn mul(self, b: Self) -> Self {
            Simd128(f32x4_mul(self.0, b.0), f32x4_mul(self.1, b.1))
        }
        #[inline(always)]
        unsafe fn add(self, b: Self) -> Self {
            Simd128(f32x4_add(self.0, b.0), f32x4_add(self.1, b.1))
        }
        #[inline(always)]
        unsafe fn sum(self) -> f32 {
            let s = f32x4_add(self.0, self.1);
            (f32x4_extract_lane::<0>(s) + f32x4_extract_lane::<2>(s))
                + (f32x4_extract_lane::<1>(s) + f32x4_extract_lane::<3>(s))
        }
    }
}
