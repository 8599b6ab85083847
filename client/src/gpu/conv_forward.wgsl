// Convolution forward fused with bias, ReLU and 2x2 max-pooling.
//
// x: [batch, in_ch, height, width]; weights [out_ch, in_ch, k, k] and bias [out_ch] inside
// the flat parameter vector at w_off and b_off. Valid (no padding), stride 1, so the conv
// output is [batch, out_ch, out_h, out_w] (both even). It is never stored: each invocation
// computes four horizontally adjacent 2x2 pooling windows (2 x 8 conv outputs) for four
// output channels, a 4x16 register block of the implicit GEMM, sliding a 2 x 8 window of
// inputs along each kernel row so that every 64 multiply-adds need 2 input and 4 weight
// loads. It applies bias and ReLU, and writes each window's maximum to
// `pooled: [batch, out_ch, out_h / 2, out_w / 2]` and its position to `argmax`, as a flat
// index into the conv output. Ties go to the first maximum in row-major window order, as on
// the CPU. Because ReLU comes first, `pooled > 0` is also the ReLU mask at the argmax.

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
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> dims: Conv;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> params: array<f32>;
@group(0) @binding(3) var<storage, read_write> pooled: array<f32>;
@group(0) @binding(4) var<storage, read_write> argmax: array<u32>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    // The channel block comes from the workgroup alone, so every weight address below is
    // the same across the workgroup (uniform loads, which implementations can broadcast);
    // the invocations of a workgroup cover different positions.
    let ph = dims.out_h / 2u;
    let pw = dims.out_w / 2u;
    let pwb = (pw + 3u) / 4u;
    let oblocks = (dims.out_ch + 3u) / 4u;
    let positions = dims.batch * ph * pwb;
    let pgroups = (positions + 63u) / 64u;
    let wg = wid.y * nwg.x + wid.x;
    let ob = wg / pgroups;
    let pos = (wg % pgroups) * 64u + lid;
    if ob >= oblocks || pos >= positions {
        return;
    }
    let pb = pos % pwb;
    let t = pos / pwb;
    let py = t % ph;
    let b = t / ph;

    // Four output channels; lanes past out_ch read the last channel and are discarded.
    let o0 = ob * 4u;
    let last = dims.out_ch - 1u;
    let ksz = dims.kernel * dims.kernel;
    let per_out = dims.in_ch * ksz;
    let c0 = min(o0, last);
    let c1 = min(o0 + 1u, last);
    let c2 = min(o0 + 2u, last);
    let c3 = min(o0 + 3u, last);
    let w0 = dims.w_off + c0 * per_out;
    let w1 = dims.w_off + c1 * per_out;
    let w2 = dims.w_off + c2 * per_out;
    let w3 = dims.w_off + c3 * per_out;
    let bias = vec4<f32>(
        params[dims.b_off + c0],
        params[dims.b_off + c1],
        params[dims.b_off + c2],
        params[dims.b_off + c3],
    );

    // a_rc: conv output at row oy + r, column ox + c, over the four channels. Windows past
    // the right edge (when pw is not a multiple of 4) read clamped columns, always in
    // bounds, and are discarded.
    var a00 = bias;
    var a01 = bias;
    var a02 = bias;
    var a03 = bias;
    var a04 = bias;
    var a05 = bias;
    var a06 = bias;
    var a07 = bias;
    var a10 = bias;
    var a11 = bias;
    var a12 = bias;
    var a13 = bias;
    var a14 = bias;
    var a15 = bias;
    var a16 = bias;
    var a17 = bias;
    let oy = 2u * py;
    let ox = 8u * pb;
    let last_col = dims.width - 1u;
    let plane = dims.height * dims.width;
    for (var c = 0u; c < dims.in_ch; c++) {
        let xc = (b * dims.in_ch + c) * plane;
        let wc = c * ksz;
        for (var kh = 0u; kh < dims.kernel; kh++) {
            let r0 = xc + (oy + kh) * dims.width;
            let r1 = r0 + dims.width;
            let wr = wc + kh * dims.kernel;
            // The inputs under the eight columns at kw; each step slides them one left.
            var x00 = x[r0 + min(ox + 0u, last_col)];
            var x01 = x[r0 + min(ox + 1u, last_col)];
            var x02 = x[r0 + min(ox + 2u, last_col)];
            var x03 = x[r0 + min(ox + 3u, last_col)];
            var x04 = x[r0 + min(ox + 4u, last_col)];
            var x05 = x[r0 + min(ox + 5u, last_col)];
            var x06 = x[r0 + min(ox + 6u, last_col)];
            var x10 = x[r1 + min(ox + 0u, last_col)];
            var x11 = x[r1 + min(ox + 1u, last_col)];
            var x12 = x[r1 + min(ox + 2u, last_col)];
            var x13 = x[r1 + min(ox + 3u, last_col)];
            var x14 = x[r1 + min(ox + 4u, last_col)];
            var x15 = x[r1 + min(ox + 5u, last_col)];
            var x16 = x[r1 + min(ox + 6u, last_col)];
            for (var kw = 0u; kw < dims.kernel; kw++) {
                let col = min(ox + kw + 7u, last_col);
                let x07 = x[r0 + col];
                let x17 = x[r1 + col];
                let wi = wr + kw;
                let wv = vec4<f32>(params[w0 + wi], params[w1 + wi], params[w2 + wi], params[w3 + wi]);
                a00 += wv * x00;
                a01 += wv * x01;
                a02 += wv * x02;
                a03 += wv * x03;
                a04 += wv * x04;
                a05 += wv * x05;
                a06 += wv * x06;
                a07 += wv * x07;
                a10 += wv * x10;
                a11 += wv * x11;
                a12 += wv * x12;
                a13 += wv * x13;
                a14 += wv * x14;
                a15 += wv * x15;
                a16 += wv * x16;
                a17 += wv * x17;
                x00 = x01;
                x01 = x02;
                x02 = x03;
                x03 = x04;
                x04 = x05;
                x05 = x06;
                x06 = x07;
                x10 = x11;
                x11 = x12;
                x12 = x13;
                x13 = x14;
                x14 = x15;
                x15 = x16;
                x16 = x17;
            }
        }
    }

    let zero = vec4<f32>(0.0);
    pool(b, o0, oy, ox + 0u, py, 4u * pb + 0u, max(a00, zero), max(a01, zero), max(a10, zero), max(a11, zero));
    if 4u * pb + 1u < pw {
        pool(b, o0, oy, ox + 2u, py, 4u * pb + 1u, max(a02, zero), max(a03, zero), max(a12, zero), max(a13, zero));
    }
    if 4u * pb + 2u < pw {
        pool(b, o0, oy, ox + 4u, py, 4u * pb + 2u, max(a04, zero), max(a05, zero), max(a14, zero), max(a15, zero));
    }
    if 4u * pb + 3u < pw {
        pool(b, o0, oy, ox + 6u, py, 4u * pb + 3u, max(a06, zero), max(a07, zero), max(a16, zero), max(a17, zero));
    }
}

// Writes the maximum and its position of one 2x2 window (top-left conv output at oy, ox;
// pooled position py, px) for the four channels from o0, first maximum winning.
fn pool(b: u32, o0: u32, oy: u32, ox: u32, py: u32, px: u32, v00: vec4<f32>, v01: vec4<f32>, v10: vec4<f32>, v11: vec4<f32>) {
    let ph = dims.out_h / 2u;
    let pw = dims.out_w / 2u;
    for (var j = 0u; j < 4u; j++) {
        let o = o0 + j;
        if o >= dims.out_ch {
            break;
        }
        let i00 = ((b * dims.out_ch + o) * dims.out_h + oy) * dims.out_w + ox;
        var best = v00[j];
        var arg = i00;
        if v01[j] > best {
            best = v01[j];
            arg = i00 + 1u;
        }
        if v10[j] > best {
            best = v10[j];
            arg = i00 + dims.out_w;
        }
        if v11[j] > best {
            best = v11[j];
            arg = i00 + dims.out_w + 1u;
        }
        let pi = ((b * dims.out_ch + o) * ph + py) * pw + px;
        pooled[pi] = best;
        argmax[pi] = arg;
    }
}
