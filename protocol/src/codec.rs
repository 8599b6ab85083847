//! The compression codecs for model vectors, shared by the relay and every client.
//!
//! A payload is self-describing: one codec id byte, the vector's length as a little-endian
//! `u32`, the codec's parameters, then the data (PROTOCOL.md gives every layout byte by
//! byte). [`encode`] turns a vector into a payload; [`decode`] turns any byte string into
//! either the vector or a typed [`CodecError`], and never panics. Before it allocates
//! anything, `decode` checks the length in the header against the length the caller
//! expects and every count against the bytes that remain, so a hostile payload cannot make
//! it allocate more than the caller's `expected_len` floats.
//!
//! The codecs:
//! - [`Codec::Fp32`]: the values as they are.
//! - [`Codec::Fp16`]: each value rounded to IEEE half precision (via the `half` crate).
//! - [`Codec::Qsgd`]: stochastic quantization after Alistarh et al. (2017). The vector is cut
//!   into buckets; each bucket sends its scale (the largest magnitude in the bucket, as an
//!   `f32`) and, for each value, a signed level in `-L..=L` with `L = 2^(bits-1) - 1`. A value
//!   `v` with `x = |v| / scale * L` goes to level `floor(x) + 1` with probability
//!   `x - floor(x)` and to `floor(x)` otherwise, with the sign of `v`, so the decoded value
//!   `scale * level / L` is `v` in expectation (unbiased) and off by at most `scale / L`.
//! - [`Codec::TopK`]: the `k` values of largest magnitude, as `u32` indices and `f32` values;
//!   every other value decodes as zero. Pair it with [`ErrorFeedback`].
//! - [`Codec::TopKQsgd`]: top-k, then QSGD on the kept values.
//!
//! Randomness (QSGD's rounding) comes from a generator the caller passes in, so the same
//! seed gives the same bytes.

use half::f16;
use rand::{Rng, RngExt};

use crate::wire::{Put, Reader, Short};

/// Codec id of [`Codec::Fp32`] on the wire.
pub const ID_FP32: u8 = 0;
/// Codec id of [`Codec::Fp16`] on the wire.
pub const ID_FP16: u8 = 1;
/// Codec id of [`Codec::Qsgd`] on the wire.
pub const ID_QSGD: u8 = 2;
/// Codec id of [`Codec::TopK`] on the wire.
pub const ID_TOP_K: u8 = 3;
/// Codec id of [`Codec::TopKQsgd`] on the wire.
pub const ID_TOP_K_QSGD: u8 = 4;

/// Bytes before a payload's parameters: the codec id and the vector's length.
pub const HEADER_LEN: usize = 5;

/// A good QSGD bucket size: 512 values share one scale, so scales cost under 1% of an 8-bit
/// payload, and one large value only coarsens its own bucket.
pub const DEFAULT_BUCKET: u32 = 512;

/// How a vector of `f32` is put into bytes. In configuration files (serde) a codec is a
/// table tagged by `kind`: `{ kind = "qsgd", bits = 8, bucket = 512 }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Codec {
    /// Four bytes per value, exact.
    Fp32,
    /// Two bytes per value, IEEE half precision (round to nearest even).
    Fp16,
    /// Stochastic quantization with a scale per bucket of `bucket` values and `bits` bits
    /// (2, 4 or 8) per value.
    Qsgd { bits: u8, bucket: u32 },
    /// The `k` values of largest magnitude (at most the vector's length are sent).
    TopK { k: u32 },
    /// Top-k, then QSGD on the `k` kept values.
    TopKQsgd { k: u32, bits: u8, bucket: u32 },
}

impl Codec {
    /// Top-k keeping `fraction` of `len` values: `k = ceil(fraction * len)`, at least 1 when
    /// `len > 0`, at most `len`. A fraction that is not a number counts as 1.
    pub fn top_k_fraction(fraction: f64, len: usize) -> Codec {
        Codec::TopK {
            k: k_for_fraction(fraction, len),
        }
    }

    /// Top-k keeping `fraction` of `len` values (as [`Codec::top_k_fraction`]), then QSGD.
    pub fn top_k_qsgd_fraction(fraction: f64, len: usize, bits: u8, bucket: u32) -> Codec {
        Codec::TopKQsgd {
            k: k_for_fraction(fraction, len),
            bits,
            bucket,
        }
    }

    /// The codec's id byte on the wire.
    pub fn id(&self) -> u8 {
        match self {
            Codec::Fp32 => ID_FP32,
            Codec::Fp16 => ID_FP16,
            Codec::Qsgd { .. } => ID_QSGD,
            Codec::TopK { .. } => ID_TOP_K,
            Codec::TopKQsgd { .. } => ID_TOP_K_QSGD,
        }
    }

    /// Checks the parameters: `bits` is 2, 4 or 8 and `bucket` is at least 1.
    pub fn validate(&self) -> Result<(), CodecError> {
        match *self {
            Codec::Qsgd { bits, bucket } | Codec::TopKQsgd { bits, bucket, .. } => {
                levels(bits)?;
                if bucket == 0 {
                    return Err(CodecError::ZeroBucket);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Writes the codec as it appears inside messages: the id byte, then the parameters.
    pub(crate) fn write_descriptor(&self, out: &mut Vec<u8>) {
        out.put_u8(self.id());
        self.write_params(out);
    }

    /// Reads what [`Codec::write_descriptor`] writes and validates it.
    pub(crate) fn read_descriptor(r: &mut Reader) -> Result<Codec, CodecError> {
        let id = r.u8()?;
        Codec::read_params(id, r)
    }

    fn write_params(&self, out: &mut Vec<u8>) {
        match *self {
            Codec::Fp32 | Codec::Fp16 => {}
            Codec::Qsgd { bits, bucket } => {
                out.put_u8(bits);
                out.put_u32(bucket);
            }
            Codec::TopK { k } => out.put_u32(k),
            Codec::TopKQsgd { k, bits, bucket } => {
                out.put_u32(k);
                out.put_u8(bits);
                out.put_u32(bucket);
            }
        }
    }

    fn read_params(id: u8, r: &mut Reader) -> Result<Codec, CodecError> {
        let codec = match id {
            ID_FP32 => Codec::Fp32,
            ID_FP16 => Codec::Fp16,
            ID_QSGD => Codec::Qsgd {
                bits: r.u8()?,
                bucket: r.u32()?,
            },
            ID_TOP_K => Codec::TopK { k: r.u32()? },
            ID_TOP_K_QSGD => Codec::TopKQsgd {
                k: r.u32()?,
                bits: r.u8()?,
                bucket: r.u32()?,
            },
            other => return Err(CodecError::UnknownCodec(other)),
        };
        codec.validate()?;
        Ok(codec)
    }

    /// The same codec with `k` no larger than `len`: what [`encode`] actually sends.
    fn clamped(self, len: usize) -> Codec {
        let clamp = |k: u32| k.min(u32::try_from(len).unwrap_or(u32::MAX));
        match self {
            Codec::TopK { k } => Codec::TopK { k: clamp(k) },
            Codec::TopKQsgd { k, bits, bucket } => Codec::TopKQsgd {
                k: clamp(k),
                bits,
                bucket,
            },
            other => other,
        }
    }
}

impl std::fmt::Display for Codec {
    /// Short names for tables and logs: `fp32`, `fp16`, `qsgd8/512`, `topk444`,
    /// `topk444+qsgd8/512`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Codec::Fp32 => write!(f, "fp32"),
            Codec::Fp16 => write!(f, "fp16"),
            Codec::Qsgd { bits, bucket } => write!(f, "qsgd{bits}/{bucket}"),
            Codec::TopK { k } => write!(f, "topk{k}"),
            Codec::TopKQsgd { k, bits, bucket } => write!(f, "topk{k}+qsgd{bits}/{bucket}"),
        }
    }
}

fn k_for_fraction(fraction: f64, len: usize) -> u32 {
    let fraction = if fraction.is_nan() {
        1.0
    } else {
        fraction.clamp(0.0, 1.0)
    };
    // The epsilon keeps 0.01 * 100 at 1, whatever the rounding of 0.01.
    let k = (fraction * len as f64 - 1e-9).ceil() as usize;
    k.clamp(len.min(1), len).min(u32::MAX as usize) as u32
}

/// Why a payload could not be decoded (or a codec's parameters are invalid).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum CodecError {
    /// The payload ends before a field: the field at offset `at` needs `needed` bytes.
    #[error("payload truncated: {needed} bytes needed at offset {at}")]
    Truncated { needed: usize, at: usize },
    /// The id byte names no codec.
    #[error("unknown codec id {0}")]
    UnknownCodec(u8),
    /// QSGD's bit width is not 2, 4 or 8.
    #[error("unsupported QSGD bit width {0} (2, 4 or 8)")]
    UnsupportedBits(u8),
    /// A QSGD bucket of zero values.
    #[error("QSGD bucket size is zero")]
    ZeroBucket,
    /// The payload's vector length is not the one the receiver expects.
    #[error("payload holds {found} values, expected {expected}")]
    LengthMismatch { expected: usize, found: u64 },
    /// Top-k with more kept values than the vector has.
    #[error("top-k keeps {k} of {len} values")]
    KTooLarge { k: u32, len: usize },
    /// A top-k index at or past the vector's length.
    #[error("top-k index {index} out of range for length {len}")]
    IndexOutOfRange { index: u32, len: usize },
    /// Top-k indices must be strictly increasing; the one at position `position` is not.
    #[error("top-k index at position {position} is not greater than the one before")]
    IndicesNotIncreasing { position: usize },
    /// A QSGD scale that is negative, infinite or NaN.
    #[error("QSGD scale of bucket {bucket} is {scale} (must be finite and >= 0)")]
    BadScale { bucket: usize, scale: f32 },
    /// A stored QSGD level above `2L` (the largest offset level).
    #[error("QSGD level {level} at position {position} is out of range")]
    BadLevel { position: usize, level: u8 },
    /// Bits after the last QSGD level in its final byte are not zero.
    #[error("non-zero padding after the last QSGD level")]
    NonZeroPadding,
    /// Bytes after the end of the data.
    #[error("{extra} bytes after the end of the payload")]
    TrailingBytes { extra: usize },
}

impl From<Short> for CodecError {
    fn from(s: Short) -> Self {
        CodecError::Truncated {
            needed: s.needed,
            at: s.at,
        }
    }
}

impl CodecError {
    /// The error code (see [`crate::codes::code`]) a relay answers a push with when its
    /// payload fails to decode: [`crate::codes::code::WRONG_LENGTH`] for a length
    /// mismatch, [`crate::codes::code::MALFORMED`] for everything else.
    pub fn code(&self) -> u16 {
        match self {
            CodecError::LengthMismatch { .. } => crate::codes::code::WRONG_LENGTH,
            _ => crate::codes::code::MALFORMED,
        }
    }
}

/// `L`, the largest level, for a QSGD bit width: 1, 7 or 127.
fn levels(bits: u8) -> Result<u32, CodecError> {
    match bits {
        2 | 4 | 8 => Ok((1u32 << (bits - 1)) - 1),
        other => Err(CodecError::UnsupportedBits(other)),
    }
}

/// Bytes of a QSGD block of `count` values: the scales, then the packed levels.
/// Saturates instead of overflowing, so that a hostile count fails the bytes check.
fn qsgd_len(count: usize, bits: u8, bucket: u32) -> usize {
    let buckets = count.div_ceil(bucket.max(1) as usize);
    buckets
        .saturating_mul(4)
        .saturating_add(count.saturating_mul(bits as usize).div_ceil(8))
}

/// The exact size in bytes of [`encode`]'s output for `n` values. It depends only on the
/// codec and `n`, never on the values.
pub fn encoded_len(codec: Codec, n: usize) -> usize {
    HEADER_LEN
        + match codec.clamped(n) {
            Codec::Fp32 => 4 * n,
            Codec::Fp16 => 2 * n,
            Codec::Qsgd { bits, bucket } => 5 + qsgd_len(n, bits, bucket),
            Codec::TopK { k } => 4 + 8 * k as usize,
            Codec::TopKQsgd { k, bits, bucket } => {
                9 + 4 * k as usize + qsgd_len(k as usize, bits, bucket)
            }
        }
}

/// The largest payload any valid codec makes for `n` values: top-k of all `n` values,
/// then 8-bit QSGD with buckets of one value, `9n + 14` bytes. A receiver can cap
/// payloads at this size without refusing anything legitimate.
pub fn max_encoded_len(n: usize) -> usize {
    HEADER_LEN + 9 + 9 * n
}

/// Encodes `values` with `codec`. Top-k sends `min(k, values.len())` values.
///
/// A non-finite value is sent as it is by fp32, fp16 and top-k; under QSGD it makes its
/// bucket's scale NaN, which [`decode`] refuses, so corruption is never silently rounded
/// to zeros.
///
/// # Panics
/// If the codec's parameters are invalid ([`Codec::validate`]; codecs read from the wire
/// are always valid) or if `values` has more than `u32::MAX` elements.
pub fn encode<R: Rng + ?Sized>(codec: Codec, values: &[f32], rng: &mut R) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len(codec, values.len()));
    encode_into(codec, values, rng, &mut out);
    out
}

/// [`encode`], appended to `out` (which should have room for [`encoded_len`] more
/// bytes): a message carrying a payload is built in one buffer, with no copy of the
/// payload.
///
/// # Panics
/// As [`encode`].
pub fn encode_into<R: Rng + ?Sized>(codec: Codec, values: &[f32], rng: &mut R, out: &mut Vec<u8>) {
    if let Err(e) = codec.validate() {
        panic!("encode with an invalid codec {codec:?}: {e}");
    }
    let n = u32::try_from(values.len()).expect("a payload holds at most u32::MAX values");
    let codec = codec.clamped(values.len());
    let start_len = out.len();
    out.reserve(encoded_len(codec, values.len()));
    out.put_u8(codec.id());
    out.put_u32(n);
    codec.write_params(out);
    match codec {
        Codec::Fp32 => {
            // Sized once and filled in place: a push per value does not vectorize, and a
            // room's fp32 center is encoded for every new version.
            let start = out.len();
            out.resize(start + 4 * values.len(), 0);
            for (b, v) in out[start..].chunks_exact_mut(4).zip(values) {
                b.copy_from_slice(&v.to_le_bytes());
            }
        }
        Codec::Fp16 => {
            for &v in values {
                out.extend_from_slice(&f16::from_f32(v).to_le_bytes());
            }
        }
        Codec::Qsgd { bits, bucket } => quantize(values, bits, bucket, rng, out),
        Codec::TopK { k } => {
            let kept = top_k_indices(values, k as usize);
            for &i in &kept {
                out.put_u32(i);
            }
            for &i in &kept {
                out.put_f32(values[i as usize]);
            }
        }
        Codec::TopKQsgd { k, bits, bucket } => {
            let kept = top_k_indices(values, k as usize);
            for &i in &kept {
                out.put_u32(i);
            }
            let picked: Vec<f32> = kept.iter().map(|&i| values[i as usize]).collect();
            quantize(&picked, bits, bucket, rng, out);
        }
    }
    debug_assert_eq!(out.len() - start_len, encoded_len(codec, values.len()));
}

/// Decodes a payload that must hold exactly `expected_len` values.
///
/// Total: every byte string gives the vector or a [`CodecError`]. The header's length must
/// equal `expected_len`, every count must fit in the bytes that remain (checked before
/// anything is allocated), top-k indices must be strictly increasing and below the length,
/// QSGD scales finite and non-negative, levels in range, padding bits zero, and nothing may
/// follow the data. Values themselves are not checked for finiteness here; the relay's push
/// validation does that.
pub fn decode(bytes: &[u8], expected_len: usize) -> Result<Vec<f32>, CodecError> {
    let mut r = Reader::new(bytes);
    let id = r.u8()?;
    let n = r.u32()?;
    if n as u64 != expected_len as u64 {
        return Err(CodecError::LengthMismatch {
            expected: expected_len,
            found: n as u64,
        });
    }
    let n = expected_len;
    let codec = Codec::read_params(id, &mut r)?;
    let out = match codec {
        Codec::Fp32 => {
            r.ensure(n, 4)?;
            let mut out = Vec::with_capacity(n);
            for _ in 0..n {
                out.push(r.f32()?);
            }
            out
        }
        Codec::Fp16 => {
            r.ensure(n, 2)?;
            let mut out = Vec::with_capacity(n);
            for _ in 0..n {
                out.push(f16::from_le_bytes(r.array()?).to_f32());
            }
            out
        }
        Codec::Qsgd { bits, bucket } => {
            r.ensure(qsgd_len(n, bits, bucket), 1)?;
            let mut out = vec![0.0; n];
            dequantize(&mut r, bits, bucket, &mut out)?;
            out
        }
        Codec::TopK { k } => {
            let k = check_k(k, n)?;
            r.ensure(k, 8)?;
            let indices = read_indices(&mut r, k, n)?;
            let mut out = vec![0.0; n];
            for &i in &indices {
                out[i as usize] = r.f32()?;
            }
            out
        }
        Codec::TopKQsgd { k, bits, bucket } => {
            let k = check_k(k, n)?;
            let data = k
                .checked_mul(4)
                .and_then(|b| b.checked_add(qsgd_len(k, bits, bucket)))
                .unwrap_or(usize::MAX);
            r.ensure(data, 1)?;
            let indices = read_indices(&mut r, k, n)?;
            let mut kept = vec![0.0; k];
            dequantize(&mut r, bits, bucket, &mut kept)?;
            let mut out = vec![0.0; n];
            for (&i, &v) in indices.iter().zip(&kept) {
                out[i as usize] = v;
            }
            out
        }
    };
    match r.remaining() {
        0 => Ok(out),
        extra => Err(CodecError::TrailingBytes { extra }),
    }
}

fn check_k(k: u32, n: usize) -> Result<usize, CodecError> {
    match usize::try_from(k) {
        Ok(kk) if kk <= n => Ok(kk),
        _ => Err(CodecError::KTooLarge { k, len: n }),
    }
}

/// Reads `k` strictly increasing indices below `n` (their bytes are already checked).
fn read_indices(r: &mut Reader, k: usize, n: usize) -> Result<Vec<u32>, CodecError> {
    let mut indices = Vec::with_capacity(k);
    for position in 0..k {
        let index = r.u32()?;
        if index as usize >= n {
            return Err(CodecError::IndexOutOfRange { index, len: n });
        }
        if indices.last().is_some_and(|&prev| index <= prev) {
            return Err(CodecError::IndicesNotIncreasing { position });
        }
        indices.push(index);
    }
    Ok(indices)
}

/// The indices of the `k` values of largest magnitude, ascending. Among equal magnitudes
/// the choice is arbitrary; NaN counts as larger than any number.
fn top_k_indices(values: &[f32], k: usize) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..values.len() as u32).collect();
    if k < values.len() {
        if k == 0 {
            return Vec::new();
        }
        let mag = |i: &u32| values[*i as usize].abs();
        idx.select_nth_unstable_by(k - 1, |a, b| mag(b).total_cmp(&mag(a)));
        idx.truncate(k);
        idx.sort_unstable();
    }
    idx
}

/// Appends the QSGD block for `values`: one `f32` scale per bucket, then the levels packed
/// `bits` to a value, little-endian within each byte (value `i` in bits
/// `[i*bits, (i+1)*bits)` of the stream), each stored as `level + L`.
fn quantize<R: Rng + ?Sized>(
    values: &[f32],
    bits: u8,
    bucket: u32,
    rng: &mut R,
    out: &mut Vec<u8>,
) {
    let l = levels(bits).expect("validated by encode") as f32;
    let bucket = bucket as usize;
    let mut scales = Vec::with_capacity(values.len().div_ceil(bucket));
    for chunk in values.chunks(bucket) {
        let scale = if chunk.iter().all(|v| v.is_finite()) {
            chunk.iter().fold(0.0f32, |m, v| m.max(v.abs()))
        } else {
            f32::NAN
        };
        scales.push(scale);
        out.put_f32(scale);
    }
    let start = out.len();
    out.resize(start + (values.len() * bits as usize).div_ceil(8), 0);
    let packed = &mut out[start..];
    for (i, &v) in values.iter().enumerate() {
        let scale = scales[i / bucket];
        let level = if scale > 0.0 && scale.is_finite() {
            let x = (v.abs() / scale * l).min(l);
            let floor = x.floor();
            let up = rng.random::<f32>() < x - floor;
            let magnitude = floor + if up { 1.0 } else { 0.0 };
            if v < 0.0 { -magnitude } else { magnitude }
        } else {
            0.0
        };
        let stored = (level + l) as u8;
        let bit = i * bits as usize;
        packed[bit / 8] |= stored << (bit % 8);
    }
}

/// Reads a QSGD block of `out.len()` values written by [`quantize`] (bytes already checked).
fn dequantize(r: &mut Reader, bits: u8, bucket: u32, out: &mut [f32]) -> Result<(), CodecError> {
    let l = levels(bits)?;
    let bucket = bucket as usize;
    let mut scales = Vec::with_capacity(out.len().div_ceil(bucket));
    for b in 0..out.len().div_ceil(bucket) {
        let scale = r.f32()?;
        if !(scale.is_finite() && scale >= 0.0) {
            return Err(CodecError::BadScale { bucket: b, scale });
        }
        scales.push(scale);
    }
    let packed = r.take((out.len() * bits as usize).div_ceil(8))?;
    let mask = ((1u16 << bits) - 1) as u8;
    for (i, o) in out.iter_mut().enumerate() {
        let bit = i * bits as usize;
        let stored = (packed[bit / 8] >> (bit % 8)) & mask;
        if stored as u32 > 2 * l {
            return Err(CodecError::BadLevel {
                position: i,
                level: stored,
            });
        }
        let level = stored as i32 - l as i32;
        *o = scales[i / bucket] * (level as f32 / l as f32);
    }
    let used = out.len() * bits as usize;
    if !used.is_multiple_of(8) && packed[used / 8] >> (used % 8) != 0 {
        return Err(CodecError::NonZeroPadding);
    }
    Ok(())
}

/// Error feedback (Stich, Cordonnier and Jaggi, 2018): what compression drops is kept and
/// added to the next vector, so nothing is lost for good, only delayed.
///
/// Works with every codec: for top-k the residual is the values not sent, for QSGD the
/// rounding error.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ErrorFeedback {
    /// What has been dropped so far and not yet sent.
    pub residual: Vec<f32>,
}

impl ErrorFeedback {
    /// A zero residual for vectors of `len` values.
    pub fn new(len: usize) -> ErrorFeedback {
        ErrorFeedback {
            residual: vec![0.0; len],
        }
    }

    /// Forgets the residual (after a resynchronisation, for instance).
    pub fn reset(&mut self) {
        self.residual.fill(0.0);
    }

    /// Encodes `values + residual` and keeps `(values + residual) - decoded` as the new
    /// residual, where `decoded` is what the receiver will decode. A residual of the wrong
    /// length is first reset to zeros of the right one. If the payload would not decode
    /// (only when the input holds non-finite values), the residual is reset and the payload
    /// returned anyway, for the receiver to refuse.
    ///
    /// # Panics
    /// As [`encode`].
    pub fn compress<R: Rng + ?Sized>(
        &mut self,
        codec: Codec,
        values: &[f32],
        rng: &mut R,
    ) -> Vec<u8> {
        if self.residual.len() != values.len() {
            self.residual = vec![0.0; values.len()];
        }
        for (r, v) in self.residual.iter_mut().zip(values) {
            *r += v;
        }
        let bytes = encode(codec, &self.residual, rng);
        match decode(&bytes, values.len()) {
            Ok(decoded) => {
                for (r, d) in self.residual.iter_mut().zip(&decoded) {
                    *r -= d;
                }
            }
            Err(_) => self.reset(),
        }
        bytes
    }
}

/// A round's push payload: the update `x - base` encoded with `codec`, through `feedback`
/// (error feedback) when the room asks for it. The worker and the simulator both end a round
/// with it.
pub fn encode_update<R: Rng + ?Sized>(
    codec: Codec,
    x: &[f32],
    base: &[f32],
    feedback: Option<&mut ErrorFeedback>,
    rng: &mut R,
) -> Vec<u8> {
    let delta: Vec<f32> = x.iter().zip(base).map(|(a, c)| a - c).collect();
    match feedback {
        Some(f) => f.compress(codec, &delta, rng),
        None => encode(codec, &delta, rng),
    }
}

/// The codecs a benchmark or report compares, by name: `fp32`, `fp16`, `qsgd8`, `qsgd4`,
/// `qsgd2`, `topk1` (top-k 1%) and `topk1-qsgd8` (top-k 1% then 8-bit QSGD), for vectors of
/// `len` values, with QSGD buckets of [`DEFAULT_BUCKET`].
pub fn named_codecs(len: usize) -> Vec<(&'static str, Codec)> {
    let b = DEFAULT_BUCKET;
    vec![
        ("fp32", Codec::Fp32),
        ("fp16", Codec::Fp16),
        ("qsgd8", Codec::Qsgd { bits: 8, bucket: b }),
        ("qsgd4", Codec::Qsgd { bits: 4, bucket: b }),
        ("qsgd2", Codec::Qsgd { bits: 2, bucket: b }),
        ("topk1", Codec::top_k_fraction(0.01, len)),
        ("topk1-qsgd8", Codec::top_k_qsgd_fraction(0.01, len, 8, b)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LENET5_28;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn rng(seed: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(seed)
    }

    fn bits() -> impl Strategy<Value = u8> {
        prop_oneof![Just(2u8), Just(4), Just(8)]
    }

    fn any_codec() -> impl Strategy<Value = Codec> {
        prop_oneof![
            Just(Codec::Fp32),
            Just(Codec::Fp16),
            (bits(), 1u32..70).prop_map(|(bits, bucket)| Codec::Qsgd { bits, bucket }),
            (0u32..80).prop_map(|k| Codec::TopK { k }),
            (0u32..80, bits(), 1u32..70).prop_map(|(k, bits, bucket)| Codec::TopKQsgd {
                k,
                bits,
                bucket
            }),
        ]
    }

    fn values() -> impl Strategy<Value = Vec<f32>> {
        prop::collection::vec(-100.0f32..100.0, 0..200)
    }

    fn max_abs(v: &[f32]) -> f32 {
        v.iter().fold(0.0, |m, x| m.max(x.abs()))
    }

    proptest! {
        /// A round's payload is the update `x - base`: exactly so in fp32; through error
        /// feedback, the same bytes as compressing the update by hand.
        #[test]
        fn an_update_payload_encodes_x_minus_base(
            pairs in prop::collection::vec((-4.0f32..4.0, -4.0f32..4.0), 1..200),
            seed in any::<u64>(),
        ) {
            use rand::SeedableRng;
            let (x, base): (Vec<f32>, Vec<f32>) = pairs.into_iter().unzip();
            let delta: Vec<f32> = x.iter().zip(&base).map(|(a, c)| a - c).collect();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let fp32 = encode_update(Codec::Fp32, &x, &base, None, &mut rng);
            prop_assert_eq!(decode(&fp32, x.len()).unwrap(), delta.clone());
            let codec = Codec::Qsgd { bits: 4, bucket: 64 };
            let (mut a, mut b) = (ErrorFeedback::new(x.len()), ErrorFeedback::new(x.len()));
            let mut r1 = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut r2 = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let via = encode_update(codec, &x, &base, Some(&mut a), &mut r1);
            prop_assert_eq!(via, b.compress(codec, &delta, &mut r2));
        }
    }

    proptest! {
        #[test]
        fn fp32_round_trip_is_exact(v in prop::collection::vec(any::<f32>(), 0..300)) {
            let d = decode(&encode(Codec::Fp32, &v, &mut rng(0)), v.len()).unwrap();
            let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(&d), bits(&v));
        }

        #[test]
        fn fp16_round_trip_is_within_half_precision(v in values()) {
            let d = decode(&encode(Codec::Fp16, &v, &mut rng(0)), v.len()).unwrap();
            for (a, b) in v.iter().zip(&d) {
                // Half precision: 11 significant bits; below 2^-14 the spacing is 2^-24.
                prop_assert!((a - b).abs() <= a.abs() * 2f32.powi(-11) + 2f32.powi(-24));
            }
        }

        #[test]
        fn qsgd_error_is_at_most_scale_over_levels(
            v in values(), bits in bits(), bucket in 1u32..70, seed in any::<u64>()
        ) {
            let codec = Codec::Qsgd { bits, bucket };
            let d = decode(&encode(codec, &v, &mut rng(seed)), v.len()).unwrap();
            let l = levels(bits).unwrap() as f32;
            for (chunk, dchunk) in v.chunks(bucket as usize).zip(d.chunks(bucket as usize)) {
                let scale = max_abs(chunk);
                for (a, b) in chunk.iter().zip(dchunk) {
                    prop_assert!((a - b).abs() <= scale / l * (1.0 + 1e-5));
                    prop_assert!(b.abs() <= scale);
                    prop_assert!(*b == 0.0 || b.signum() == a.signum());
                }
            }
        }

        #[test]
        fn top_k_keeps_exactly_the_k_largest_magnitudes(v in values(), k in 0u32..250) {
            let d = decode(&encode(Codec::TopK { k }, &v, &mut rng(0)), v.len()).unwrap();
            let kept = top_k_indices(&v, k as usize);
            prop_assert_eq!(kept.len(), (k as usize).min(v.len()));
            prop_assert!(kept.windows(2).all(|w| w[0] < w[1]));
            let smallest_kept = kept.iter().map(|&i| v[i as usize].abs()).fold(f32::INFINITY, f32::min);
            for (i, (a, b)) in v.iter().zip(&d).enumerate() {
                if kept.binary_search(&(i as u32)).is_ok() {
                    prop_assert_eq!(a.to_bits(), b.to_bits());
                } else {
                    prop_assert_eq!(*b, 0.0);
                    prop_assert!(a.abs() <= smallest_kept);
                }
            }
        }

        #[test]
        fn top_k_qsgd_sends_only_the_top_k_within_the_qsgd_bound(
            v in values(), k in 0u32..250, bits in bits(), bucket in 1u32..70, seed in any::<u64>()
        ) {
            let codec = Codec::TopKQsgd { k, bits, bucket };
            let d = decode(&encode(codec, &v, &mut rng(seed)), v.len()).unwrap();
            let kept = top_k_indices(&v, k as usize);
            let l = levels(bits).unwrap() as f32;
            let picked: Vec<f32> = kept.iter().map(|&i| v[i as usize]).collect();
            for (c, chunk) in kept.chunks(bucket as usize).enumerate() {
                let scale = max_abs(&picked[c * bucket as usize..][..chunk.len()]);
                for &i in chunk {
                    let (a, b) = (v[i as usize], d[i as usize]);
                    prop_assert!((a - b).abs() <= scale / l * (1.0 + 1e-5));
                }
            }
            let nonzero = d.iter().enumerate().filter(|(_, x)| **x != 0.0);
            for (i, _) in nonzero {
                prop_assert!(kept.binary_search(&(i as u32)).is_ok());
            }
        }

        #[test]
        fn encoded_len_is_exact_and_bounded(codec in any_codec(), v in values(), seed in any::<u64>()) {
            let bytes = encode(codec, &v, &mut rng(seed));
            prop_assert_eq!(bytes.len(), encoded_len(codec, v.len()));
            prop_assert!(bytes.len() <= max_encoded_len(v.len()));
            prop_assert_eq!(bytes[0], codec.id());
        }

        #[test]
        fn every_codec_decodes_what_it_encodes(codec in any_codec(), v in values(), seed in any::<u64>()) {
            let d = decode(&encode(codec, &v, &mut rng(seed)), v.len());
            prop_assert_eq!(d.map(|d| d.len()), Ok(v.len()));
        }

        #[test]
        fn error_feedback_residual_plus_decoded_is_the_input(
            codec in any_codec(), rounds in prop::collection::vec(values(), 1..4), seed in any::<u64>()
        ) {
            let n = rounds[0].len();
            let mut ef = ErrorFeedback::new(n);
            let mut r = rng(seed);
            for v in rounds.iter().map(|v| { let mut v = v.clone(); v.resize(n, 0.5); v }) {
                let input: Vec<f32> = v.iter().zip(&ef.residual).map(|(a, b)| a + b).collect();
                let decoded = decode(&ef.compress(codec, &v, &mut r), n).unwrap();
                for ((i, d), e) in input.iter().zip(&decoded).zip(&ef.residual) {
                    prop_assert!((d + e - i).abs() <= 1e-4 * (1.0 + i.abs()));
                }
            }
        }

        #[test]
        fn decode_never_panics_on_arbitrary_bytes(
            bytes in prop::collection::vec(any::<u8>(), 0..400), expected in 0usize..120
        ) {
            let _ = decode(&bytes, expected);
            // The same bytes behind a header that claims the expected length.
            for id in 0..6u8 {
                let mut b = vec![id];
                b.extend_from_slice(&(expected as u32).to_le_bytes());
                b.extend_from_slice(&bytes);
                let _ = decode(&b, expected);
            }
        }

        #[test]
        fn decode_never_panics_on_mutated_or_truncated_payloads(
            codec in any_codec(), v in values(), seed in any::<u64>(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            cut in any::<prop::sample::Index>()
        ) {
            let mut bytes = encode(codec, &v, &mut rng(seed));
            let _ = decode(&bytes[..cut.index(bytes.len() + 1)], v.len());
            for (at, x) in flips {
                let i = at.index(bytes.len());
                bytes[i] ^= x;
            }
            let _ = decode(&bytes, v.len());
        }

        #[test]
        fn a_valid_payload_with_one_more_byte_is_refused(codec in any_codec(), v in values()) {
            let mut bytes = encode(codec, &v, &mut rng(0));
            bytes.push(0);
            prop_assert_eq!(decode(&bytes, v.len()), Err(CodecError::TrailingBytes { extra: 1 }));
        }
    }

    #[test]
    fn qsgd_is_unbiased_over_many_draws() {
        // Values spread over the whole range, including exact levels and zeros.
        let v: Vec<f32> = (0..48).map(|i| ((i as f32) * 0.37).sin() * 3.0).collect();
        for (bits, bucket) in [(2u8, 16u32), (4, 7), (8, 48)] {
            let codec = Codec::Qsgd { bits, bucket };
            let draws = 4000;
            let mut sum = vec![0.0f64; v.len()];
            let mut r = rng(7);
            for _ in 0..draws {
                let d = decode(&encode(codec, &v, &mut r), v.len()).unwrap();
                for (s, x) in sum.iter_mut().zip(&d) {
                    *s += *x as f64;
                }
            }
            let l = levels(bits).unwrap() as f64;
            for (c, chunk) in v.chunks(bucket as usize).enumerate() {
                let scale = max_abs(chunk) as f64;
                for (j, &x) in chunk.iter().enumerate() {
                    let mean = sum[c * bucket as usize + j] / draws as f64;
                    // One draw errs by at most scale / L with variance at most
                    // (scale / L)^2 / 4; allow 5 standard errors of the mean.
                    let bound = 5.0 * (scale / l) / 2.0 / (draws as f64).sqrt() + 1e-6;
                    assert!(
                        (mean - x as f64).abs() <= bound,
                        "{codec}: mean {mean} vs {x} (bound {bound})"
                    );
                }
            }
        }
    }

    #[test]
    fn top_k_qsgd_is_unbiased_on_the_kept_values() {
        let v: Vec<f32> = (0..64).map(|i| ((i as f32) * 1.3).cos()).collect();
        let codec = Codec::TopKQsgd {
            k: 16,
            bits: 2,
            bucket: 8,
        };
        let kept = top_k_indices(&v, 16);
        let draws = 4000;
        let mut sum = vec![0.0f64; v.len()];
        let mut r = rng(11);
        for _ in 0..draws {
            let d = decode(&encode(codec, &v, &mut r), v.len()).unwrap();
            for (s, x) in sum.iter_mut().zip(&d) {
                *s += *x as f64;
            }
        }
        for &i in &kept {
            let mean = sum[i as usize] / draws as f64;
            let bound = 5.0 * 1.0 / 2.0 / (draws as f64).sqrt();
            assert!((mean - v[i as usize] as f64).abs() <= bound);
        }
    }

    #[test]
    fn error_feedback_sums_track_the_inputs_over_many_rounds() {
        let (n, k, rounds) = (200usize, 20u32, 500);
        for codec in [
            Codec::TopK { k },
            Codec::TopKQsgd {
                k,
                bits: 4,
                bucket: 64,
            },
            Codec::Qsgd {
                bits: 2,
                bucket: 64,
            },
        ] {
            let mut ef = ErrorFeedback::new(n);
            let mut r = rng(3);
            let (mut sum_in, mut sum_out) = (vec![0.0f64; n], vec![0.0f64; n]);
            let mut max_g2 = 0.0f64;
            for _ in 0..rounds {
                let g: Vec<f32> = (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect();
                max_g2 = max_g2.max(g.iter().map(|x| (*x as f64).powi(2)).sum());
                let d = decode(&ef.compress(codec, &g, &mut r), n).unwrap();
                for j in 0..n {
                    sum_in[j] += g[j] as f64;
                    sum_out[j] += d[j] as f64;
                }
            }
            // Telescoping: what was sent plus what is still held is what came in.
            let gap2: f64 = (0..n)
                .map(|j| (sum_in[j] - sum_out[j] - ef.residual[j] as f64).powi(2))
                .sum();
            assert!(gap2.sqrt() < 1e-2, "{codec}: gap {}", gap2.sqrt());
            // Stich et al.: for top-k with delta = k/n the residual stays below
            // sqrt(4 (1 - delta) / delta^2) * max ||g||, however many rounds pass.
            let delta = k as f64 / n as f64;
            let bound = (4.0 * (1.0 - delta) / (delta * delta) * max_g2).sqrt();
            let e2: f64 = ef.residual.iter().map(|x| (*x as f64).powi(2)).sum();
            assert!(
                e2.sqrt() <= bound,
                "{codec}: residual {} > {bound}",
                e2.sqrt()
            );
            // So the mean of what was sent tracks the mean of the inputs.
            let drift = (0..n)
                .map(|j| ((sum_in[j] - sum_out[j]) / rounds as f64).abs())
                .fold(0.0, f64::max);
            assert!(drift < 0.1, "{codec}: mean drift {drift}");
        }
    }

    #[test]
    fn compressed_sizes_meet_the_targets_for_lenet() {
        let n = LENET5_28.param_count;
        let fp32 = encoded_len(Codec::Fp32, n);
        assert_eq!(fp32, 5 + 4 * n);
        let q8 = encoded_len(
            Codec::Qsgd {
                bits: 8,
                bucket: 512,
            },
            n,
        );
        assert!(q8 as f64 <= fp32 as f64 / 3.5, "8-bit QSGD: {q8} of {fp32}");
        let top1 = encoded_len(Codec::top_k_fraction(0.01, n), n);
        assert!(
            top1 as f64 <= fp32 as f64 / 25.0,
            "top-k 1%: {top1} of {fp32}"
        );
        // encoded_len agrees with a real encoding.
        let v: Vec<f32> = (0..n).map(|i| (i as f32 * 0.01).sin()).collect();
        let bytes = encode(Codec::top_k_fraction(0.01, n), &v, &mut rng(1));
        assert_eq!(bytes.len(), top1);
    }

    /// Prints the table PROTOCOL.md quotes (run with `--nocapture`) and checks it against
    /// real encodings of a lenet-sized vector.
    #[test]
    fn bytes_per_push_for_lenet_match_the_table() {
        let n = LENET5_28.param_count;
        let b = DEFAULT_BUCKET;
        let table = [
            (Codec::Fp32, 177_709),
            (Codec::Fp16, 88_857),
            (Codec::Qsgd { bits: 8, bucket: b }, 44_784),
            (Codec::Qsgd { bits: 4, bucket: b }, 22_571),
            (Codec::Qsgd { bits: 2, bucket: b }, 11_465),
            (Codec::top_k_fraction(0.01, n), 3_569),
            (Codec::top_k_qsgd_fraction(0.01, n, 8, b), 2_243),
            (Codec::top_k_qsgd_fraction(0.01, n, 4, b), 2_021),
            (Codec::top_k_fraction(0.001, n), 369),
        ];
        let v: Vec<f32> = (0..n).map(|i| (i as f32 * 0.7).sin() * 0.1).collect();
        let mut r = rng(5);
        let fp32 = encoded_len(Codec::Fp32, n) as f64;
        // A push message adds 30 bytes: header 6, base version 8, steps 4, samples 4,
        // loss 4, payload length 4.
        println!("codec                   payload   push msg   fp32/x");
        for (codec, bytes) in table {
            let real = encode(codec, &v, &mut r).len();
            println!(
                "{:<22} {real:>8} {:>10} {:>8.1}",
                codec.to_string(),
                real + 30,
                fp32 / real as f64
            );
            assert_eq!(real, bytes, "{codec}");
            let with_commas = |x: usize| {
                let s = x.to_string();
                let mut out = String::new();
                for (i, c) in s.chars().enumerate() {
                    if i > 0 && (s.len() - i).is_multiple_of(3) {
                        out.push(',');
                    }
                    out.push(c);
                }
                out
            };
            let row = format!("| {} | {} |", with_commas(real), with_commas(real + 30));
            let doc = include_str!("../../PROTOCOL.md");
            assert!(doc.contains(&row), "PROTOCOL.md has the row {row}");
        }
    }

    #[test]
    fn top_k_fraction_rounds_up_and_stays_in_range() {
        assert_eq!(Codec::top_k_fraction(0.01, 44_426), Codec::TopK { k: 445 });
        assert_eq!(Codec::top_k_fraction(0.0, 10), Codec::TopK { k: 1 });
        assert_eq!(Codec::top_k_fraction(2.0, 10), Codec::TopK { k: 10 });
        assert_eq!(Codec::top_k_fraction(f64::NAN, 10), Codec::TopK { k: 10 });
        assert_eq!(Codec::top_k_fraction(0.5, 0), Codec::TopK { k: 0 });
    }

    #[test]
    fn decode_refuses_what_the_spec_forbids() {
        let v = [1.0f32, -2.0, 3.0, 0.5];
        let mut r = rng(0);
        let top = encode(Codec::TopK { k: 2 }, &v, &mut r);
        // Header: id, len; params: k; indices at 9 and 13.
        let mut swapped = top.clone();
        swapped[9..13].copy_from_slice(&2u32.to_le_bytes());
        swapped[13..17].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(
            decode(&swapped, 4),
            Err(CodecError::IndicesNotIncreasing { position: 1 })
        );
        let mut out_of_range = top.clone();
        out_of_range[13..17].copy_from_slice(&4u32.to_le_bytes());
        assert_eq!(
            decode(&out_of_range, 4),
            Err(CodecError::IndexOutOfRange { index: 4, len: 4 })
        );
        let mut big_k = top.clone();
        big_k[5..9].copy_from_slice(&5u32.to_le_bytes());
        assert_eq!(
            decode(&big_k, 4),
            Err(CodecError::KTooLarge { k: 5, len: 4 })
        );
        assert_eq!(
            decode(&top, 5),
            Err(CodecError::LengthMismatch {
                expected: 5,
                found: 4
            })
        );
        assert_eq!(
            decode(&[9, 0, 0, 0, 0], 0),
            Err(CodecError::UnknownCodec(9))
        );
        let q = encode(Codec::Qsgd { bits: 2, bucket: 4 }, &v, &mut r);
        let mut bad_bits = q.clone();
        bad_bits[5] = 3;
        assert_eq!(decode(&bad_bits, 4), Err(CodecError::UnsupportedBits(3)));
        let mut zero_bucket = q.clone();
        zero_bucket[6..10].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(decode(&zero_bucket, 4), Err(CodecError::ZeroBucket));
        let mut nan_scale = q.clone();
        nan_scale[10..14].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(matches!(
            decode(&nan_scale, 4),
            Err(CodecError::BadScale { bucket: 0, .. })
        ));
        let mut bad_level = q.clone();
        bad_level[14] = 0b11; // stored level 3 > 2L = 2
        assert_eq!(
            decode(&bad_level, 4),
            Err(CodecError::BadLevel {
                position: 0,
                level: 3
            })
        );
        let three = encode(Codec::Qsgd { bits: 2, bucket: 4 }, &v[..3], &mut r);
        let mut padded = three.clone();
        padded[14] |= 0b1100_0000;
        assert_eq!(decode(&padded, 3), Err(CodecError::NonZeroPadding));
        assert_eq!(
            decode(&q[..q.len() - 1], 4),
            Err(CodecError::Truncated { needed: 5, at: 10 })
        );
    }

    #[test]
    fn a_huge_claimed_length_is_refused_before_allocating() {
        let mut b = vec![ID_FP32];
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode(&b, u32::MAX as usize),
            Err(CodecError::Truncated { .. })
        ));
        let mut t = vec![ID_TOP_K];
        t.extend_from_slice(&u32::MAX.to_le_bytes());
        t.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode(&t, u32::MAX as usize),
            Err(CodecError::Truncated { .. })
        ));
    }

    #[test]
    fn non_finite_values_never_vanish_under_qsgd() {
        let v = [1.0, f32::NAN, 2.0, f32::INFINITY];
        let q = encode(Codec::Qsgd { bits: 8, bucket: 2 }, &v, &mut rng(0));
        assert!(matches!(decode(&q, 4), Err(CodecError::BadScale { .. })));
    }
}
