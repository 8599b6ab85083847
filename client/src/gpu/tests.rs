//! The GPU kernels and trainer against the CPU reference.
//!
//! Every kernel runs once on random inputs (seeded ChaCha8) and is compared with
//! `crate::cpu::ops` computed in `f64` from the same `f32` inputs. The error measure is
//! `max_i |gpu_i - cpu_i| / max(max_i |cpu_i|, 1e-6)`: the largest absolute error relative
//! to the largest reference magnitude, so it is not dominated by elements that happen to
//! be near zero; it must be at most 1e-4. Discrete outputs (pooling argmax, gathered
//! labels) must match exactly.
//!
//! These tests need a GPU adapter (natively llvmpipe in CI). Without one they fail with a
//! message saying so; they never skip.

use std::sync::OnceLock;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::kernels::{ConvDims, DenseDims, Op, StepArgs, UNIFORM_STRIDE};
use super::readback;
use super::{Gpu, GpuTrainer};
use crate::Sgd;
use crate::cpu::CpuTrainer;
use crate::cpu::ops::{self, ConvShape};
use crate::model::{CLASSES, IMAGE_PIXELS, PARAMS, init_params, pixel_to_input};
use crate::trainer::Trainer;

/// Largest accepted relative error (see the module documentation).
const TOLERANCE: f64 = 1e-4;

/// The shared device; a missing adapter fails every test with the reason.
fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| {
        pollster::block_on(Gpu::new())
            .unwrap_or_else(|e| panic!("the GPU tests need a wgpu adapter and found none: {e}"))
    })
}

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn random(rng: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// `max |got - want| / max(max |want|, 1e-6)`.
fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "lengths differ");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-6);
    let err = got
        .iter()
        .zip(want)
        .fold(0.0f64, |m, (&g, &w)| m.max((g as f64 - w).abs()));
    if got.iter().any(|g| !g.is_finite()) {
        return f64::INFINITY;
    }
    err / scale
}

#[track_caller]
fn assert_close(what: &str, got: &[f32], want: &[f64]) {
    let e = rel_err(got, want);
    eprintln!("{what}: relative error {e:e}");
    assert!(
        e <= TOLERANCE,
        "{what}: relative error {e:e} exceeds {TOLERANCE:e}"
    );
}

fn storage(bytes: &[u8]) -> wgpu::Buffer {
    use wgpu::util::DeviceExt;
    let mut padded = bytes.to_vec();
    padded.resize(bytes.len().max(4).next_multiple_of(4), 0);
    gpu()
        .device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("test buffer"),
            contents: &padded,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
        })
}

fn f32_buffer(v: &[f32]) -> wgpu::Buffer {
    storage(bytemuck::cast_slice(v))
}

/// The flat parameter vector padded to whole `vec4`s, as [`GpuTrainer`] stores it: the dense
/// kernels bind it as `array<vec4<f32>>`, whose last partial `vec4` (44,426 is not a multiple
/// of 4) is out of bounds, and SwiftShader's robust accesses then read fc3's last biases wrong.
fn params_buffer(params: &[f32]) -> wgpu::Buffer {
    let mut padded = params.to_vec();
    padded.resize(params.len().next_multiple_of(4), 0.0);
    f32_buffer(&padded)
}

fn u32_buffer(v: &[u32]) -> wgpu::Buffer {
    storage(bytemuck::cast_slice(v))
}

fn read_f32(b: &wgpu::Buffer) -> Vec<f32> {
    let g = gpu();
    let bytes = pollster::block_on(readback::read_buffer(&g.device, &g.queue, b, 0, b.size()));
    bytemuck::pod_collect_to_vec(&bytes.expect("readback"))
}

fn read_u32(b: &wgpu::Buffer) -> Vec<u32> {
    let g = gpu();
    let bytes = pollster::block_on(readback::read_buffer(&g.device, &g.queue, b, 0, b.size()));
    bytemuck::pod_collect_to_vec(&bytes.expect("readback"))
}

fn args(batch: usize) -> StepArgs {
    StepArgs {
        batch: batch as u32,
        lr: 0.0,
        loss_slot: 0,
        sgd: Sgd::default(),
    }
}

/// Runs one dispatch of `op` with these buffers (bindings 1..) and returns the count of
/// dispatches recorded (always 1).
fn run(op: Op, args: StepArgs, buffers: &[&wgpu::Buffer]) -> u32 {
    op.validate();
    let g = gpu();
    let uniforms = g.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("test uniforms"),
        size: UNIFORM_STRIDE,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut block = vec![0u8; UNIFORM_STRIDE as usize];
    let groups = op.encode(&args, &mut block);
    g.queue.write_buffer(&uniforms, 0, &block);
    let bind_group = g
        .kernels
        .bind_group(&g.device, op.kernel(), &uniforms, 0, buffers);
    let mut encoder = g
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
    let mut dispatches = 0;
    {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
        g.kernels
            .dispatch(&mut pass, op.kernel(), &bind_group, groups, &mut dispatches);
    }
    g.queue.submit([encoder.finish()]);
    dispatches
}

fn shape(c: &ConvDims, batch: usize) -> ConvShape {
    ConvShape {
        batch,
        in_ch: c.in_ch as usize,
        height: c.height as usize,
        width: c.width as usize,
        out_ch: c.out_ch as usize,
        kernel: c.kernel as usize,
    }
}

fn conv_len(c: &ConvDims) -> (usize, usize) {
    let w = (c.out_ch * c.in_ch * c.kernel * c.kernel) as usize;
    (w, c.out_ch as usize)
}

/// The lenet layers, as the trainer runs them.
const CONV1: ConvDims = ConvDims {
    in_ch: 1,
    height: 28,
    width: 28,
    out_ch: 6,
    kernel: 5,
    w_off: 0,
    b_off: 150,
};
const CONV2: ConvDims = ConvDims {
    in_ch: 6,
    height: 12,
    width: 12,
    out_ch: 16,
    kernel: 5,
    w_off: 156,
    b_off: 2556,
};
/// An awkward convolution: channel counts not multiples of 4, a non-square input, odd
/// offsets in the flat vector.
const ODD_CONV: ConvDims = ConvDims {
    in_ch: 3,
    height: 11,
    width: 9,
    out_ch: 5,
    kernel: 4,
    w_off: 7,
    b_off: 7 + 5 * 3 * 16 + 3,
};
const FC1: DenseDims = DenseDims {
    inputs: 256,
    outputs: 120,
    w_off: 2572,
    b_off: 33292,
    relu: true,
};
const FC3: DenseDims = DenseDims {
    inputs: 84,
    outputs: 10,
    w_off: 43576,
    b_off: 44416,
    relu: false,
};
/// Outputs not a multiple of 4 and an odd bias offset.
const ODD_DENSE: DenseDims = DenseDims {
    inputs: 12,
    outputs: 7,
    w_off: 8,
    b_off: 8 + 84 + 1,
    relu: true,
};

/// A flat parameter vector big enough for any layer above, random in `[-0.3, 0.3)`.
fn random_params(rng: &mut ChaCha8Rng) -> Vec<f32> {
    random(rng, PARAMS, -0.3, 0.3)
}

#[test]
fn gather_matches_pixel_to_input_and_labels() {
    let mut r = rng(1);
    let n = 9;
    let images: Vec<u8> = (0..n * IMAGE_PIXELS)
        .map(|_| r.random_range(0..=255u8))
        .collect();
    let labels: Vec<u8> = (0..n).map(|_| r.random_range(0..10u8)).collect();
    let indices = [3u32, 0, 8, 3, 5];
    let batch = indices.len();
    let lut: Vec<f32> = (0..=255u8).map(pixel_to_input).collect();
    let x = f32_buffer(&vec![f32::NAN; batch * IMAGE_PIXELS]);
    let bl = u32_buffer(&vec![99; batch]);
    run(
        Op::Gather {
            words: (IMAGE_PIXELS / 4) as u32,
        },
        args(batch),
        &[
            &storage(&images),
            &storage(&labels),
            &u32_buffer(&indices),
            &f32_buffer(&lut),
            &x,
            &bl,
        ],
    );
    let got = read_f32(&x);
    for (b, &i) in indices.iter().enumerate() {
        let i = i as usize;
        let want: Vec<f32> = images[i * IMAGE_PIXELS..(i + 1) * IMAGE_PIXELS]
            .iter()
            .map(|&p| pixel_to_input(p))
            .collect();
        assert_eq!(&got[b * IMAGE_PIXELS..(b + 1) * IMAGE_PIXELS], &want[..]);
    }
    let want_labels: Vec<u32> = indices.iter().map(|&i| labels[i as usize] as u32).collect();
    assert_eq!(read_u32(&bl), want_labels);
}

/// Conv, bias, ReLU and max-pool on the GPU against the CPU's three ops.
fn check_conv_forward(c: ConvDims, batch: usize, seed: u64) {
    let mut r = rng(seed);
    let s = shape(&c, batch);
    let x = random(&mut r, s.x_len(), -1.0, 1.0);
    let params = random_params(&mut r);
    let (wl, bl) = conv_len(&c);
    let w = &params[c.w_off as usize..][..wl];
    let b = &params[c.b_off as usize..][..bl];

    let mut y = vec![0.0f64; s.y_len()];
    ops::conv2d_forward(s, &to_f64(&x), &to_f64(w), &to_f64(b), &mut y);
    ops::relu_forward(&mut y);
    let planes = batch * s.out_ch;
    let mut want = vec![0.0f64; s.y_len() / 4];
    let mut want_arg = vec![0u32; s.y_len() / 4];
    ops::maxpool2_forward(planes, s.out_h(), s.out_w(), &y, &mut want, &mut want_arg);

    let pooled = f32_buffer(&vec![f32::NAN; want.len()]);
    let argmax = u32_buffer(&vec![u32::MAX; want.len()]);
    run(
        Op::ConvForward(c),
        args(batch),
        &[&f32_buffer(&x), &params_buffer(&params), &pooled, &argmax],
    );
    assert_close("pooled conv output", &read_f32(&pooled), &want);
    let got_arg = read_u32(&argmax);
    let wrong = got_arg
        .iter()
        .zip(&want_arg)
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(
        wrong,
        0,
        "{wrong} of {} argmax positions differ",
        want_arg.len()
    );
    assert!(
        want.contains(&0.0) && want.iter().any(|&v| v > 0.0),
        "the test data exercises both sides of the ReLU"
    );
}

#[test]
fn conv1_forward_relu_pool_matches_cpu() {
    check_conv_forward(CONV1, 3, 10);
}

#[test]
fn conv2_forward_relu_pool_matches_cpu() {
    check_conv_forward(CONV2, 5, 11);
}

#[test]
fn conv_forward_handles_odd_shapes_and_offsets() {
    check_conv_forward(ODD_CONV, 2, 12);
}

/// `planes` planes of `h x w` with a border of `pad` copies of `fill` on every side.
fn pad_planes<T: Copy>(v: &[T], h: usize, w: usize, pad: usize, fill: T) -> Vec<T> {
    let (ph, pw) = (h + 2 * pad, w + 2 * pad);
    let planes = v.len() / (h * w);
    let mut out = vec![fill; planes * ph * pw];
    for (p, plane) in v.chunks_exact(h * w).enumerate() {
        for (y, row) in plane.chunks_exact(w).enumerate() {
            let at = (p * ph + y + pad) * pw + pad;
            out[at..at + w].copy_from_slice(row);
        }
    }
    out
}

/// Pool and ReLU backward on the GPU against the CPU's two ops, into planes with a border
/// of `pad` that must stay untouched.
fn check_pool_backward(channels: usize, h: usize, w: usize, pad: usize, batch: usize, seed: u64) {
    let mut r = rng(seed);
    let planes = batch * channels;
    let mut y = to_f64(&random(&mut r, planes * h * w, -1.0, 1.0));
    ops::relu_forward(&mut y);
    let mut pooled = vec![0.0f64; planes * h * w / 4];
    let mut arg = vec![0u32; pooled.len()];
    ops::maxpool2_forward(planes, h, w, &y, &mut pooled, &mut arg);
    let dp = random(&mut r, pooled.len(), -1.0, 1.0);
    let mut want = vec![0.0f64; y.len()];
    ops::maxpool2_backward(&to_f64(&dp), &arg, &mut want);
    ops::relu_backward(&y, &mut want);

    let pooled32: Vec<f32> = pooled.iter().map(|&v| v as f32).collect();
    const BORDER: f64 = 5.0;
    let want = pad_planes(&want, h, w, pad, BORDER);
    let dy = f32_buffer(&pad_planes(
        &vec![f32::NAN; y.len()],
        h,
        w,
        pad,
        BORDER as f32,
    ));
    run(
        Op::PoolBackward {
            channels: channels as u32,
            pooled_h: (h / 2) as u32,
            pooled_w: (w / 2) as u32,
            pad: pad as u32,
        },
        args(batch),
        &[
            &f32_buffer(&dp),
            &u32_buffer(&arg),
            &f32_buffer(&pooled32),
            &dy,
        ],
    );
    assert_close("pool backward", &read_f32(&dy), &want);
}

#[test]
fn pool2_backward_into_padded_planes_matches_cpu() {
    check_pool_backward(16, 8, 8, 4, 3, 20);
}

#[test]
fn pool1_backward_matches_cpu() {
    check_pool_backward(6, 24, 24, 0, 2, 21);
}

/// Conv weight and bias gradients on the GPU against the CPU. The kernel writes one partial
/// sum per sample at the layer's offsets in rows of `stride` floats, whose other elements
/// must stay untouched; their sum (in `f64`, as the SGD kernel adds them in `f32`) is the
/// gradient.
fn check_conv_backward_weight(c: ConvDims, dy_pad: usize, batch: usize, seed: u64) {
    let mut r = rng(seed);
    let s = shape(&c, batch);
    let x = random(&mut r, s.x_len(), -1.0, 1.0);
    // Sparse like a real pooled gradient: three quarters zero.
    let dy: Vec<f32> = (0..s.y_len())
        .map(|_| {
            if r.random_range(0..4) == 0 {
                r.random_range(-1.0..1.0)
            } else {
                0.0
            }
        })
        .collect();
    let params = random_params(&mut r);
    let (wl, bl) = conv_len(&c);
    let w = &params[c.w_off as usize..][..wl];
    let mut dw = vec![0.0f64; wl];
    let mut db = vec![0.0f64; bl];
    ops::conv2d_backward(
        s,
        &to_f64(&x),
        &to_f64(w),
        &to_f64(&dy),
        None,
        &mut dw,
        &mut db,
    );

    const SENTINEL: f32 = 7.0;
    // One more row than the batch: the kernel must not write past its samples.
    let stride = (c.b_off as usize + bl).max(c.w_off as usize + wl) + 5;
    let partials = f32_buffer(&vec![SENTINEL; (batch + 1) * stride]);
    // A border of NaN: the kernel must not read it.
    let dy_padded = pad_planes(&dy, s.out_h(), s.out_w(), dy_pad, f32::NAN);
    run(
        Op::ConvBackwardWeight {
            conv: c,
            part_stride: stride as u32,
            dy_pad: dy_pad as u32,
        },
        args(batch),
        &[&f32_buffer(&x), &f32_buffer(&dy_padded), &partials],
    );
    let got = read_f32(&partials);
    let (wo, bo) = (c.w_off as usize, c.b_off as usize);
    let mut sum = vec![0.0f32; stride];
    for row in got[..batch * stride].chunks_exact(stride) {
        sum.iter_mut().zip(row).for_each(|(s, v)| *s += v);
    }
    assert_close("conv dweight", &sum[wo..wo + wl], &dw);
    assert_close("conv dbias", &sum[bo..bo + bl], &db);
    let inside = |i: usize| {
        i / stride < batch
            && ((wo..wo + wl).contains(&(i % stride)) || (bo..bo + bl).contains(&(i % stride)))
    };
    let outside = got
        .iter()
        .enumerate()
        .filter(|(i, _)| !inside(*i))
        .filter(|(_, v)| **v != SENTINEL)
        .count();
    assert_eq!(outside, 0, "writes outside the layer's gradient");
}

#[test]
fn conv1_backward_weight_matches_cpu() {
    check_conv_backward_weight(CONV1, 0, 3, 30);
}

#[test]
fn conv2_backward_weight_from_padded_dy_matches_cpu() {
    check_conv_backward_weight(CONV2, 4, 5, 31);
}

#[test]
fn conv_backward_weight_handles_odd_shapes_and_offsets() {
    check_conv_backward_weight(ODD_CONV, 0, 3, 32);
    check_conv_backward_weight(ODD_CONV, 3, 2, 33);
    check_conv_backward_weight(
        ConvDims {
            kernel: 1,
            ..ODD_CONV
        },
        0,
        2,
        34,
    );
}

/// Conv input gradient, through the max-pool and ReLU backward of the layer below, on the
/// GPU against the CPU's three ops.
fn check_conv_backward_input(c: ConvDims, batch: usize, seed: u64) {
    let mut r = rng(seed);
    let s = shape(&c, batch);
    // The layer below: its ReLU'd conv output [batch, in_ch, 2 height, 2 width] pooled into
    // this layer's input.
    let (bh, bw) = (2 * s.height, 2 * s.width);
    let planes = batch * s.in_ch;
    let mut below = to_f64(&random(&mut r, planes * bh * bw, -1.0, 1.0));
    ops::relu_forward(&mut below);
    let mut x = vec![0.0f64; s.x_len()];
    let mut arg = vec![0u32; s.x_len()];
    ops::maxpool2_forward(planes, bh, bw, &below, &mut x, &mut arg);
    let x: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let dy = random(&mut r, s.y_len(), -1.0, 1.0);
    let params = random_params(&mut r);
    let (wl, bl) = conv_len(&c);
    let w = &params[c.w_off as usize..][..wl];
    let mut dx = vec![0.0f64; s.x_len()];
    let (mut dw, mut db) = (vec![0.0f64; wl], vec![0.0f64; bl]);
    ops::conv2d_backward(
        s,
        &to_f64(&x),
        &to_f64(w),
        &to_f64(&dy),
        Some(&mut dx),
        &mut dw,
        &mut db,
    );

    let mut want = vec![0.0f64; below.len()];
    ops::maxpool2_backward(&dx, &arg, &mut want);
    ops::relu_backward(&below, &mut want);

    let pad = c.kernel as usize - 1;
    let dy_padded = pad_planes(&dy, s.out_h(), s.out_w(), pad, 0.0);
    let got = f32_buffer(&vec![f32::NAN; below.len()]);
    run(
        Op::ConvBackwardInput(c),
        args(batch),
        &[
            &f32_buffer(&dy_padded),
            &params_buffer(&params),
            &u32_buffer(&arg),
            &f32_buffer(&x),
            &got,
        ],
    );
    assert_close("below conv output gradient", &read_f32(&got), &want);
}

#[test]
fn conv2_backward_input_through_pool1_matches_cpu() {
    check_conv_backward_input(CONV2, 5, 40);
}

#[test]
fn conv_backward_input_handles_odd_shapes_and_offsets() {
    check_conv_backward_input(ODD_CONV, 3, 41);
    // More samples than one workgroup's 64.
    check_conv_backward_input(ODD_CONV, 67, 42);
}

/// Dense forward (with its ReLU if `d.relu`) on the GPU against the CPU.
fn check_dense_forward(d: DenseDims, batch: usize, seed: u64) {
    let mut r = rng(seed);
    let (i, o) = (d.inputs as usize, d.outputs as usize);
    let x = random(&mut r, batch * i, -1.0, 1.0);
    let params = random_params(&mut r);
    let w = &params[d.w_off as usize..][..o * i];
    let b = &params[d.b_off as usize..][..o];
    let mut want = vec![0.0f64; batch * o];
    ops::dense_forward(batch, i, o, &to_f64(&x), &to_f64(w), &to_f64(b), &mut want);
    if d.relu {
        ops::relu_forward(&mut want);
    }
    let y = f32_buffer(&vec![f32::NAN; batch * o]);
    run(
        Op::DenseForward(d),
        args(batch),
        &[&f32_buffer(&x), &params_buffer(&params), &y],
    );
    assert_close("dense forward", &read_f32(&y), &want);
}

#[test]
fn fc1_forward_relu_matches_cpu() {
    check_dense_forward(FC1, 7, 50);
}

#[test]
fn fc3_forward_matches_cpu() {
    check_dense_forward(FC3, 9, 51);
}

#[test]
fn dense_forward_handles_odd_shapes_and_offsets() {
    check_dense_forward(ODD_DENSE, 5, 52);
}

/// Dense weight, bias and input gradients on the GPU against the CPU; with `d.relu`, the
/// input gradient is masked by the (ReLU) input as the trainer uses it.
fn check_dense_backward(d: DenseDims, batch: usize, seed: u64) {
    let mut r = rng(seed);
    let (i, o) = (d.inputs as usize, d.outputs as usize);
    let mut x = random(&mut r, batch * i, -1.0, 1.0);
    if d.relu {
        x.iter_mut().for_each(|v| *v = v.max(0.0));
    }
    let dy = random(&mut r, batch * o, -1.0, 1.0);
    let params = random_params(&mut r);
    let w = &params[d.w_off as usize..][..o * i];
    let mut dx = vec![0.0f64; batch * i];
    let mut dw = vec![0.0f64; o * i];
    let mut db = vec![0.0f64; o];
    let x64 = to_f64(&x);
    ops::dense_backward(
        batch,
        i,
        o,
        &x64,
        &to_f64(w),
        &to_f64(&dy),
        Some(&mut dx),
        &mut dw,
        &mut db,
    );
    if d.relu {
        ops::relu_backward(&x64, &mut dx);
    }

    const SENTINEL: f32 = -3.0;
    let grads = f32_buffer(&vec![SENTINEL; PARAMS]);
    let (xb, dyb) = (f32_buffer(&x), f32_buffer(&dy));
    run(
        Op::DenseBackwardWeight(d),
        args(batch),
        &[&dyb, &xb, &grads],
    );
    let got = read_f32(&grads);
    let (wo, bo) = (d.w_off as usize, d.b_off as usize);
    assert_close("dense dweight", &got[wo..wo + o * i], &dw);
    assert_close("dense dbias", &got[bo..bo + o], &db);
    let outside = got
        .iter()
        .enumerate()
        .filter(|(k, _)| !(wo..wo + o * i).contains(k) && !(bo..bo + o).contains(k))
        .filter(|(_, v)| **v != SENTINEL)
        .count();
    assert_eq!(outside, 0, "writes outside the layer's gradient");

    let dxb = f32_buffer(&vec![f32::NAN; batch * i]);
    run(
        Op::DenseBackwardInput(d),
        args(batch),
        &[&dyb, &params_buffer(&params), &xb, &dxb],
    );
    assert_close("dense dx", &read_f32(&dxb), &dx);
}

#[test]
fn fc1_backward_matches_cpu() {
    check_dense_backward(FC1, 7, 60);
}

#[test]
fn fc3_backward_with_relu_mask_matches_cpu() {
    check_dense_backward(DenseDims { relu: true, ..FC3 }, 6, 61);
}

#[test]
fn dense_backward_handles_odd_shapes_and_offsets() {
    check_dense_backward(ODD_DENSE, 5, 62);
    check_dense_backward(
        DenseDims {
            relu: false,
            ..ODD_DENSE
        },
        3,
        63,
    );
}

#[test]
fn softmax_cross_entropy_matches_cpu() {
    let mut r = rng(70);
    for (batch, slot) in [(1usize, 0u32), (13, 5), (130, 15)] {
        let logits = random(&mut r, batch * CLASSES, -4.0, 4.0);
        let labels: Vec<u8> = (0..batch).map(|_| r.random_range(0..10u8)).collect();
        let mut want = vec![0.0f64; batch * CLASSES];
        let loss = ops::softmax_cross_entropy(batch, CLASSES, &to_f64(&logits), &labels, &mut want);
        let labels32: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
        let dl = f32_buffer(&vec![f32::NAN; batch * CLASSES]);
        let ring = f32_buffer(&[-1.0; 16]);
        let a = StepArgs {
            loss_slot: slot,
            ..args(batch)
        };
        run(
            Op::SoftmaxCrossEntropy {
                classes: CLASSES as u32,
            },
            a,
            &[&f32_buffer(&logits), &u32_buffer(&labels32), &dl, &ring],
        );
        assert_close("dlogits", &read_f32(&dl), &want);
        let ring = read_f32(&ring);
        assert_close("loss", &ring[slot as usize..][..1], &[loss]);
        assert!(
            ring.iter()
                .enumerate()
                .all(|(i, &v)| i == slot as usize || v == -1.0),
            "only the step's slot of the ring is written"
        );
    }
}

#[test]
fn sgd_step_matches_cpu_rule() {
    let mut r = rng(80);
    for sgd in [
        Sgd::default(),
        Sgd {
            momentum: 0.9,
            weight_decay: 0.01,
        },
        Sgd {
            momentum: 0.0,
            weight_decay: 0.1,
        },
    ] {
        let n = 1001;
        let mut p = random(&mut r, n, -1.0, 1.0);
        let mut v = vec![0.0f32; n];
        let (pb, vb) = (f32_buffer(&p), f32_buffer(&v));
        for (step, lr) in [0.1f32, 0.05, 0.2].into_iter().enumerate() {
            let g = random(&mut r, n, -1.0, 1.0);
            sgd.step(lr, &mut p, &g, &mut v);
            let a = StepArgs { lr, sgd, ..args(1) };
            run(
                Op::Sgd {
                    n: n as u32,
                    split: 0,
                },
                a,
                &[&f32_buffer(&g), &f32_buffer(&[f32::NAN; 4]), &pb, &vb],
            );
            assert_close(
                &format!("params after step {step} with {sgd:?}"),
                &read_f32(&pb),
                &to_f64(&p),
            );
            assert_close("velocity", &read_f32(&vb), &to_f64(&v));
        }
    }
}

#[test]
fn sgd_adds_up_the_partial_sums_of_the_split_parameters() {
    let mut r = rng(81);
    let (n, split, parts) = (1001usize, 300usize, 7usize);
    let sgd = Sgd {
        momentum: 0.9,
        weight_decay: 0.01,
    };
    let mut p = random(&mut r, n, -1.0, 1.0);
    let mut v = random(&mut r, n, -1.0, 1.0);
    let partials = random(&mut r, parts * split, -1.0, 1.0);
    // The first `split` entries of `grads` are never read: NaN would show through.
    let mut grads = random(&mut r, n, -1.0, 1.0);
    grads[..split].fill(f32::NAN);
    let mut g = grads.clone();
    for (i, gi) in g[..split].iter_mut().enumerate() {
        *gi = (0..parts).map(|k| partials[k * split + i]).sum();
    }
    let (pb, vb) = (f32_buffer(&p), f32_buffer(&v));
    sgd.step(0.1, &mut p, &g, &mut v);
    run(
        Op::Sgd {
            n: n as u32,
            split: split as u32,
        },
        StepArgs {
            lr: 0.1,
            sgd,
            ..args(parts)
        },
        &[&f32_buffer(&grads), &f32_buffer(&partials), &pb, &vb],
    );
    assert_close("params", &read_f32(&pb), &to_f64(&p));
    assert_close("velocity", &read_f32(&vb), &to_f64(&v));
}

#[test]
fn sgd_covers_dispatches_larger_than_one_grid_row() {
    // More than 65 535 workgroups of 64: the dispatch spreads over two grid dimensions.
    let n = 65_535 * 64 + 1000;
    let p = vec![1.0f32; n];
    let g: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let pb = f32_buffer(&p);
    let a = StepArgs { lr: 0.5, ..args(1) };
    let op = Op::Sgd {
        n: n as u32,
        split: 0,
    };
    let groups = op.encode(&a, &mut [0u8; UNIFORM_STRIDE as usize]);
    assert!(groups > 65_535);
    run(
        op,
        a,
        &[
            &f32_buffer(&g),
            &f32_buffer(&[0.0; 4]),
            &pb,
            &f32_buffer(&[0.0; 4]),
        ],
    );
    let got = read_f32(&pb);
    let wrong = (0..n)
        .filter(|&i| got[i] != 1.0 - 0.5 * (i % 7) as f32)
        .count();
    assert_eq!(wrong, 0);
}

#[test]
fn many_steps_without_polling_keep_their_losses() {
    let mut r = rng(95);
    let (images, labels) = random_shard(&mut r, 20);
    let params = init_params(6);
    let mut t = GpuTrainer::new(gpu(), &images, &labels, &params, Sgd::default(), 4).unwrap();
    let steps = 10 * t.loss_interval() as usize + 3;
    for _ in 0..steps {
        t.step(&random_batch(&mut r, 20, 4), 0.01);
    }
    let mut got = t.poll_losses();
    got.extend(t.finish());
    assert_eq!(got.len(), steps);
    assert!(got.iter().all(|l| l.is_finite() && *l > 0.0));
}

#[test]
fn gpu_reports_its_adapter() {
    let info = gpu().adapter_info();
    assert!(!info.is_empty());
    eprintln!("adapter: {info}");
}

/// A random shard of `n` images with labels.
fn random_shard(rng: &mut ChaCha8Rng, n: usize) -> (Vec<u8>, Vec<u8>) {
    let images = (0..n * IMAGE_PIXELS)
        .map(|_| rng.random_range(0..=255u8))
        .collect();
    let labels = (0..n).map(|_| rng.random_range(0..10u8)).collect();
    (images, labels)
}

fn random_batch(rng: &mut ChaCha8Rng, n: usize, batch: usize) -> Vec<u32> {
    (0..batch).map(|_| rng.random_range(0..n as u32)).collect()
}

#[test]
fn step_is_one_submit_of_at_most_25_dispatches_without_readback() {
    let mut r = rng(90);
    let (images, labels) = random_shard(&mut r, 50);
    let params = init_params(1);
    let mut t = GpuTrainer::new(gpu(), &images, &labels, &params, Sgd::default(), 64).unwrap();
    assert_eq!(t.dispatches_per_step(), 0, "nothing recorded before a step");
    for batch in [64, 1, 17] {
        t.step(&random_batch(&mut r, 50, batch), 0.01);
        assert!(
            t.dispatches_per_step() <= 25,
            "{} dispatches",
            t.dispatches_per_step()
        );
        assert_eq!(t.dispatches_per_step(), 18);
        assert_eq!(t.readbacks_per_step(), 0);
        assert_eq!(t.submits_per_step(), 1);
    }
    assert_eq!(t.finish().len(), 3);
}

#[test]
fn read_params_returns_what_set_params_wrote() {
    let mut r = rng(91);
    let (images, labels) = random_shard(&mut r, 4);
    let mut t =
        GpuTrainer::new(gpu(), &images, &labels, &init_params(2), Sgd::default(), 8).unwrap();
    assert_eq!(t.params(), init_params(2));
    let p = random_params(&mut r);
    t.set_params(&p, true);
    assert_eq!(t.params(), p);
    assert_eq!(t.backend(), "gpu");
    assert!(format!("{t:?}").contains("shard_len: 4"));
    assert_eq!(t.adapter(), gpu().adapter_info());
}

#[test]
fn training_on_learnable_data_reduces_the_loss() {
    // Each image shows its label as a bright two-row bar over faint noise.
    let mut r = rng(92);
    let n = 64;
    let labels: Vec<u8> = (0..n).map(|_| r.random_range(0..10u8)).collect();
    let mut images: Vec<u8> = (0..n * IMAGE_PIXELS)
        .map(|_| r.random_range(0..64u8))
        .collect();
    for (img, &l) in images.chunks_exact_mut(IMAGE_PIXELS).zip(&labels) {
        let row = 4 + 2 * l as usize;
        img[row * 28..(row + 2) * 28].fill(255);
    }
    let params = init_params(3);
    let sgd = Sgd {
        momentum: 0.9,
        weight_decay: 0.0,
    };
    let mut t = GpuTrainer::new(gpu(), &images, &labels, &params, sgd, 32).unwrap();
    for _ in 0..60 {
        t.step(&random_batch(&mut r, n, 32), 0.05);
    }
    let losses = t.finish();
    assert_eq!(losses.len(), 60);
    let head = losses[..5].iter().sum::<f32>() / 5.0;
    let tail = losses[55..].iter().sum::<f32>() / 5.0;
    assert!(tail < 0.5 * head, "loss {head} -> {tail}: {losses:?}");
}

/// The parameter change of a trainer's steps, `after - before`, in `f64`.
fn update(before: &[f32], after: &[f32]) -> Vec<f64> {
    before
        .iter()
        .zip(after)
        .map(|(&b, &a)| a as f64 - b as f64)
        .collect()
}

/// Runs the same steps on the GPU and CPU trainers from the same start and compares the
/// parameter updates and the losses.
fn check_steps_against_cpu(sgd: Sgd, steps: &[(usize, f32)], seed: u64) {
    let mut r = rng(seed);
    let n = 200;
    let (images, labels) = random_shard(&mut r, n);
    let start = init_params(seed);
    let max_batch = steps.iter().map(|s| s.0).max().unwrap();
    let mut gpu_t = GpuTrainer::new(gpu(), &images, &labels, &start, sgd, max_batch).unwrap();
    let mut cpu_t = CpuTrainer::new(&images, &labels, &start, sgd, max_batch);
    for &(batch, lr) in steps {
        let idx = random_batch(&mut r, n, batch);
        gpu_t.step(&idx, lr);
        cpu_t.step(&idx, lr);
    }
    let (gpu_losses, cpu_losses) = (gpu_t.finish(), cpu_t.finish());
    assert_eq!(gpu_losses.len(), steps.len());
    assert_close("losses", &gpu_losses, &to_f64(&cpu_losses));
    let (gp, cp) = (gpu_t.params(), cpu_t.params());
    assert_close("parameters", &gp, &to_f64(&cp));
    assert_close(
        "parameter update",
        &update(&start, &gp)
            .iter()
            .map(|&v| v as f32)
            .collect::<Vec<_>>(),
        &update(&start, &cp),
    );
}

#[test]
fn training_step_matches_cpu_trainer() {
    check_steps_against_cpu(Sgd::default(), &[(64, 0.1)], 100);
}

#[test]
fn five_training_steps_match_cpu_trainer() {
    let steps = [(64, 0.1), (64, 0.05), (33, 0.1), (64, 0.1), (7, 0.2)];
    check_steps_against_cpu(Sgd::default(), &steps, 101);
}

#[test]
fn five_training_steps_with_momentum_and_weight_decay_match_cpu_trainer() {
    let sgd = Sgd {
        momentum: 0.9,
        weight_decay: 1e-3,
    };
    let steps = [(64, 0.05), (64, 0.05), (17, 0.05), (64, 0.02), (64, 0.05)];
    check_steps_against_cpu(sgd, &steps, 102);
}

#[test]
fn set_params_with_reset_restarts_like_the_cpu_trainer() {
    let mut r = rng(103);
    let n = 50;
    let (images, labels) = random_shard(&mut r, n);
    let sgd = Sgd {
        momentum: 0.9,
        weight_decay: 0.0,
    };
    let (p0, p1) = (init_params(10), init_params(11));
    let mut g = GpuTrainer::new(gpu(), &images, &labels, &p0, sgd, 16).unwrap();
    let mut c = CpuTrainer::new(&images, &labels, &p0, sgd, 16);
    for reset in [false, true] {
        for _ in 0..2 {
            let idx = random_batch(&mut r, n, 16);
            g.step(&idx, 0.05);
            c.step(&idx, 0.05);
        }
        g.set_params(&p1, reset);
        c.set_params(&p1, reset);
        let idx = random_batch(&mut r, n, 16);
        g.step(&idx, 0.05);
        c.step(&idx, 0.05);
        assert_close(
            &format!("update after set_params(reset = {reset})"),
            &update(&p1, &g.params())
                .iter()
                .map(|&v| v as f32)
                .collect::<Vec<_>>(),
            &update(&p1, &c.params()),
        );
    }
}

#[test]
fn losses_come_back_in_order_through_poll_losses_and_finish() {
    let mut r = rng(104);
    let n = 100;
    let (images, labels) = random_shard(&mut r, n);
    let start = init_params(12);
    let mut g = GpuTrainer::new(gpu(), &images, &labels, &start, Sgd::default(), 32).unwrap();
    let mut c = CpuTrainer::new(&images, &labels, &start, Sgd::default(), 32);
    let interval = g.loss_interval() as usize;
    let total = 2 * interval + interval / 2;
    let mut got = Vec::new();
    for i in 0..total {
        let idx = random_batch(&mut r, n, 32);
        g.step(&idx, 0.05);
        c.step(&idx, 0.05);
        got.extend(g.poll_losses());
        assert!(got.len() <= i + 1, "never more losses than steps");
        if i + 1 == interval {
            // A full ring is read back without finish(): poll until it arrives.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while got.len() < interval {
                assert!(
                    std::time::Instant::now() < deadline,
                    "poll_losses never delivered"
                );
                std::thread::sleep(std::time::Duration::from_millis(5));
                got.extend(g.poll_losses());
            }
            assert_eq!(got.len(), interval);
        }
    }
    got.extend(g.finish());
    assert_eq!(got.len(), total, "every step's loss exactly once");
    assert!(g.poll_losses().is_empty() && g.finish().is_empty());
    let want = c.finish();
    for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
        assert!(
            ((a - b) / b).abs() < 1e-4,
            "loss {i}: gpu {a}, cpu {b} (out of order or wrong)"
        );
    }
}

#[test]
#[ignore = "a profiling aid that prints per-dispatch times, not a pass/fail check: run it with --ignored --nocapture (BENCHMARKS.md, per kernel on SwiftShader)"]
fn profile_step() {
    let mut r = rng(5);
    let (images, labels) = random_shard(&mut r, 256);
    let params = init_params(1);
    let mut t = GpuTrainer::new(gpu(), &images, &labels, &params, Sgd::default(), 64).unwrap();
    let batch = random_batch(&mut r, 256, 64);
    let _ = t.profile(&batch, 2);
    let rows = t.profile(&batch, 10);
    let total: f64 = rows.iter().map(|r| r.1).sum();
    for (label, ms) in &rows {
        eprintln!(
            "{ms:8.3} ms {:5.1}%  {}",
            100.0 * ms / total,
            &label[..label.len().min(60)]
        );
    }
    eprintln!("{total:8.3} ms total; {:.0} samples/s", 64e3 / total);
    let t0 = std::time::Instant::now();
    for _ in 0..20 {
        t.step(&batch, 0.0);
    }
    t.finish();
    eprintln!(
        "full step {:.3} ms",
        t0.elapsed().as_secs_f64() * 1e3 / 20.0
    );
}
