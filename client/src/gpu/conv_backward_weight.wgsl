// Convolution backward to the weight and bias, one partial sum per sample:
//   part[b][w_off + (o, c, kh, kw)] = sum over (oy, ox) of dy[b, o, oy, ox] * x[b, c, oy + kh, ox + kw]
//   part[b][b_off + o]              = sum over (oy, ox) of dy[b, o, oy, ox]
// where part[b][i] is partials[b * part_stride + i], and dy's planes may be zero-padded by
// dy_pad on every side (as conv_backward_input reads them). The SGD kernel adds the batch's partial
// sums up in a fixed order as it applies them, so no reduction runs here: no workgroup
// memory, no barriers, and the result is deterministic.
//
// Each invocation owns one sample b, one input channel c and four output channels, and
// keeps the whole 5x5 kernel of those four channels in registers (25 vec4 accumulators, 100
// multiply-adds per step). Along a row of dy it keeps the 5 x 5 inputs under the kernel and
// slides them one column right per step, so every 100 multiply-adds need 4 dy loads and 5 x
// loads. Kernels smaller than 5 x 5 read clamped (in-bounds) rows and columns in the unused
// places and never store them; output channels past out_ch read the last channel and are
// discarded. Requires kernel <= 5 (checked on the Rust side).

struct Conv {
    batch: u32,
    in_ch: u32,
    height: u32,
    width: u32,
    out_ch: u32,
    kernel: u32,
    out_h: u32,
    out_w: u32,
    w_off: u32,
    b_off: u32,
    part_stride: u32,
    dy_pad: u32,
}

@group(0) @binding(0) var<uniform> dims: Conv;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> partials: array<f32>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = (wid.y * nwg.x + wid.x) * 64u + lid;
    let oblocks = (dims.out_ch + 3u) / 4u;
    if idx >= dims.batch * dims.in_ch * oblocks {
        return;
    }
    let ob = idx % oblocks;
    let t = idx / oblocks;
    let c = t % dims.in_ch;
    let b = t / dims.in_ch;

    // Four output channels; lanes past out_ch read the last channel and are discarded.
    let o0 = ob * 4u;
    let last = dims.out_ch - 1u;
    let p = dims.dy_pad;
    let pw = dims.out_w + 2u * p;
    let pplane = (dims.out_h + 2u * p) * pw;
    let dyb = b * dims.out_ch * pplane + p * pw + p;
    let d0 = dyb + min(o0, last) * pplane;
    let d1 = dyb + min(o0 + 1u, last) * pplane;
    let d2 = dyb + min(o0 + 2u, last) * pplane;
    let d3 = dyb + min(o0 + 3u, last) * pplane;
    let xc = (b * dims.in_ch + c) * dims.height * dims.width;
    let last_row = dims.height - 1u;
    let last_col = dims.width - 1u;

    // a_ij: kernel row i, column j, over the four output channels.
    var a00 = vec4<f32>(0.0);
    var a01 = vec4<f32>(0.0);
    var a02 = vec4<f32>(0.0);
    var a03 = vec4<f32>(0.0);
    var a04 = vec4<f32>(0.0);
    var a10 = vec4<f32>(0.0);
    var a11 = vec4<f32>(0.0);
    var a12 = vec4<f32>(0.0);
    var a13 = vec4<f32>(0.0);
    var a14 = vec4<f32>(0.0);
    var a20 = vec4<f32>(0.0);
    var a21 = vec4<f32>(0.0);
    var a22 = vec4<f32>(0.0);
    var a23 = vec4<f32>(0.0);
    var a24 = vec4<f32>(0.0);
    var a30 = vec4<f32>(0.0);
    var a31 = vec4<f32>(0.0);
    var a32 = vec4<f32>(0.0);
    var a33 = vec4<f32>(0.0);
    var a34 = vec4<f32>(0.0);
    var a40 = vec4<f32>(0.0);
    var a41 = vec4<f32>(0.0);
    var a42 = vec4<f32>(0.0);
    var a43 = vec4<f32>(0.0);
    var a44 = vec4<f32>(0.0);
    var bias = vec4<f32>(0.0);
    for (var oy = 0u; oy < dims.out_h; oy++) {
        let r0 = xc + min(oy + 0u, last_row) * dims.width;
        let r1 = xc + min(oy + 1u, last_row) * dims.width;
        let r2 = xc + min(oy + 2u, last_row) * dims.width;
        let r3 = xc + min(oy + 3u, last_row) * dims.width;
        let r4 = xc + min(oy + 4u, last_row) * dims.width;
        // x_ij = x[oy + i, ox + j]; each step slides the window one column right.
        var x00 = x[r0 + min(0u, last_col)];
        var x01 = x[r0 + min(1u, last_col)];
        var x02 = x[r0 + min(2u, last_col)];
        var x03 = x[r0 + min(3u, last_col)];
        var x10 = x[r1 + min(0u, last_col)];
        var x11 = x[r1 + min(1u, last_col)];
        var x12 = x[r1 + min(2u, last_col)];
        var x13 = x[r1 + min(3u, last_col)];
        var x20 = x[r2 + min(0u, last_col)];
        var x21 = x[r2 + min(1u, last_col)];
        var x22 = x[r2 + min(2u, last_col)];
        var x23 = x[r2 + min(3u, last_col)];
        var x30 = x[r3 + min(0u, last_col)];
        var x31 = x[r3 + min(1u, last_col)];
        var x32 = x[r3 + min(2u, last_col)];
        var x33 = x[r3 + min(3u, last_col)];
        var x40 = x[r4 + min(0u, last_col)];
        var x41 = x[r4 + min(1u, last_col)];
        var x42 = x[r4 + min(2u, last_col)];
        var x43 = x[r4 + min(3u, last_col)];
        let dr = oy * pw;
        for (var ox = 0u; ox < dims.out_w; ox++) {
            let col = min(ox + 4u, last_col);
            let x04 = x[r0 + col];
            let x14 = x[r1 + col];
            let x24 = x[r2 + col];
            let x34 = x[r3 + col];
            let x44 = x[r4 + col];
            let di = dr + ox;
            let d = vec4<f32>(dy[d0 + di], dy[d1 + di], dy[d2 + di], dy[d3 + di]);
            bias += d;
            a00 += d * x00;
            a01 += d * x01;
            a02 += d * x02;
            a03 += d * x03;
            a04 += d * x04;
            a10 += d * x10;
            a11 += d * x11;
            a12 += d * x12;
            a13 += d * x13;
            a14 += d * x14;
            a20 += d * x20;
            a21 += d * x21;
            a22 += d * x22;
            a23 += d * x23;
            a24 += d * x24;
            a30 += d * x30;
            a31 += d * x31;
            a32 += d * x32;
            a33 += d * x33;
            a34 += d * x34;
            a40 += d * x40;
            a41 += d * x41;
            a42 += d * x42;
            a43 += d * x43;
            a44 += d * x44;
            x00 = x01; x01 = x02; x02 = x03; x03 = x04;
            x10 = x11; x11 = x12; x12 = x13; x13 = x14;
            x20 = x21; x21 = x22; x22 = x23; x23 = x24;
            x30 = x31; x31 = x32; x32 = x33; x33 = x34;
            x40 = x41; x41 = x42; x42 = x43; x43 = x44;
        }
    }

    let part = b * dims.part_stride;
    store_row(part, o0, c, 0u, a00, a01, a02, a03, a04);
    store_row(part, o0, c, 1u, a10, a11, a12, a13, a14);
    store_row(part, o0, c, 2u, a20, a21, a22, a23, a24);
    store_row(part, o0, c, 3u, a30, a31, a32, a33, a34);
    store_row(part, o0, c, 4u, a40, a41, a42, a43, a44);
    if c == 0u {
        for (var i = 0u; i < 4u; i++) {
            if o0 + i < dims.out_ch {
                partials[part + dims.b_off + o0 + i] = bias[i];
            }
        }
    }
}

// Writes kernel row kh (columns 0..kernel) of input channel c for the four output channels
// from o0 into the partial sums starting at `part`, skipping rows, columns and channels past
// the layer's.
fn store_row(part: u32, o0: u32, c: u32, kh: u32, v0: vec4<f32>, v1: vec4<f32>, v2: vec4<f32>, v3: vec4<f32>, v4: vec4<f32>) {
    let k = dims.kernel;
    if kh >= k {
        return;
    }
    let ksz = k * k;
    let base = part + dims.w_off + c * ksz + kh * k;
    for (var i = 0u; i < 4u; i++) {
        let o = o0 + i;
        if o >= dims.out_ch {
            break;
        }
        let at = base + o * dims.in_ch * ksz;
        partials[at] = v0[i];
        if k > 1u {
            partials[at + 1u] = v1[i];
        }
        if k > 2u {
            partials[at + 2u] = v2[i];
        }
        if k > 3u {
            partials[at + 3u] = v3[i];
        }
        if k > 4u {
            partials[at + 4u] = v4[i];
        }
    }
}
