// Convolution backward to the input, fused with the max-pool and ReLU backward of the layer
// below it:
//   dx[b, c, h, w] = sum over (o, kh, kw) of dyp[b, o, h - kh + P, w - kw + P] * weight[o, c, kh, kw]
// where dyp is the gradient of the conv output zero-padded by P = kernel - 1 on every side
// ([batch, out_ch, out_h + 2P, out_w + 2P], as pool_backward writes it with `pad` = P), so
// every term is a plain read: no bounds tests, no clamps and no masks in the loop.
//
// dx is the gradient of this layer's input, which is the below layer's max-pooled ReLU output
// (`below_pooled`, with `below_argmax` holding its positions as flat indices into the below
// conv output [batch, in_ch, 2 height, 2 width]). dx itself is never stored: each value goes
// to the position its window took the maximum from, if the maximum was positive (the ReLU
// mask), and the window's other three positions get zero. So the output `dyb` is the below
// layer's conv-output gradient, every element written, and no pool backward dispatch runs
// for the layer below.
//
// The weight sits in the flat parameter vector at w_off. Each invocation computes a 6x4x4
// register block: six input channels (lenet's six in one block), as two vec3 halves, times a
// 4x4 tile of dx (rows h0.., columns w0..). For every (o, kh) it keeps, per tile row, the four
// dy values under the tile's columns and slides them one column left per kw, so every 96
// multiply-adds need 6 weight and 4 dy loads. Tile rows past dx read the last row and tile
// columns past it start from clamped columns; sliding moves values only toward higher
// columns, so what they read lands in accumulators that are never stored.
//
// The invocations of a workgroup are 64 samples at the same tile and channel block, so the
// loops can skip the kernel rows and columns that see only dy's zero border from this tile
// (a quarter of the terms of a full correlation of 12 x 12 from 8 x 8) without diverging.

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
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> params: array<f32>;
@group(0) @binding(3) var<storage, read> below_argmax: array<u32>;
@group(0) @binding(4) var<storage, read> below_pooled: array<f32>;
@group(0) @binding(5) var<storage, read_write> dyb: array<f32>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let hblocks = (dims.height + 3u) / 4u;
    let wblocks = (dims.width + 3u) / 4u;
    let cblocks = (dims.in_ch + 5u) / 6u;
    let bgroups = (dims.batch + 63u) / 64u;
    let wg = wid.y * nwg.x + wid.x;
    let bg = wg % bgroups;
    let t = wg / bgroups;
    let wb = t % wblocks;
    let t2 = t / wblocks;
    let hb = t2 % hblocks;
    let cb = t2 / hblocks;
    let b = bg * 64u + lid;
    if cb >= cblocks || b >= dims.batch {
        return;
    }

    // Six input channels; lanes past in_ch read the last channel and are discarded.
    let c0 = cb * 6u;
    let last = dims.in_ch - 1u;
    let ksz = dims.kernel * dims.kernel;
    let per_out = dims.in_ch * ksz;
    let wc0 = dims.w_off + min(c0, last) * ksz;
    let wc1 = dims.w_off + min(c0 + 1u, last) * ksz;
    let wc2 = dims.w_off + min(c0 + 2u, last) * ksz;
    let wc3 = dims.w_off + min(c0 + 3u, last) * ksz;
    let wc4 = dims.w_off + min(c0 + 4u, last) * ksz;
    let wc5 = dims.w_off + min(c0 + 5u, last) * ksz;
    let h0 = hb * 4u;
    let w0 = wb * 4u;
    let p = dims.dy_pad;
    let pw = dims.out_w + 2u * p;
    let pplane = (dims.out_h + 2u * p) * pw;
    let last_h = dims.height - 1u;
    let last_w = dims.width - 1u;
    // The kernel rows and columns whose terms reach inside dy from this tile (the others
    // read only its zero border): kh with 0 <= h0 + r - kh < out_h for some r < 4.
    let kh_lo = select(0u, h0 + 1u - dims.out_h, h0 + 1u > dims.out_h);
    let kh_end = min(dims.kernel, h0 + 4u);
    let kw_lo = select(0u, w0 + 1u - dims.out_w, w0 + 1u > dims.out_w);
    let kw_end = min(dims.kernel, w0 + 4u);
    // Padded dy rows of the tile rows at kh = 0 and columns at kw = kw_lo.
    let hr0 = (min(h0 + 0u, last_h) + p) * pw;
    let hr1 = (min(h0 + 1u, last_h) + p) * pw;
    let hr2 = (min(h0 + 2u, last_h) + p) * pw;
    let hr3 = (min(h0 + 3u, last_h) + p) * pw;
    let cj0 = min(w0 + 0u, last_w) + p - kw_lo;
    let cj1 = min(w0 + 1u, last_w) + p - kw_lo;
    let cj2 = min(w0 + 2u, last_w) + p - kw_lo;
    let cj3 = min(w0 + 3u, last_w) + p - kw_lo;

    // a_rj (e_rj): dx at row h0 + r, column w0 + j, over the first (last) three channels.
    var a00 = vec3<f32>(0.0);
    var e00 = vec3<f32>(0.0);
    var a01 = vec3<f32>(0.0);
    var e01 = vec3<f32>(0.0);
    var a02 = vec3<f32>(0.0);
    var e02 = vec3<f32>(0.0);
    var a03 = vec3<f32>(0.0);
    var e03 = vec3<f32>(0.0);
    var a10 = vec3<f32>(0.0);
    var e10 = vec3<f32>(0.0);
    var a11 = vec3<f32>(0.0);
    var e11 = vec3<f32>(0.0);
    var a12 = vec3<f32>(0.0);
    var e12 = vec3<f32>(0.0);
    var a13 = vec3<f32>(0.0);
    var e13 = vec3<f32>(0.0);
    var a20 = vec3<f32>(0.0);
    var e20 = vec3<f32>(0.0);
    var a21 = vec3<f32>(0.0);
    var e21 = vec3<f32>(0.0);
    var a22 = vec3<f32>(0.0);
    var e22 = vec3<f32>(0.0);
    var a23 = vec3<f32>(0.0);
    var e23 = vec3<f32>(0.0);
    var a30 = vec3<f32>(0.0);
    var e30 = vec3<f32>(0.0);
    var a31 = vec3<f32>(0.0);
    var e31 = vec3<f32>(0.0);
    var a32 = vec3<f32>(0.0);
    var e32 = vec3<f32>(0.0);
    var a33 = vec3<f32>(0.0);
    var e33 = vec3<f32>(0.0);
    for (var o = 0u; o < dims.out_ch; o++) {
        let plane = (b * dims.out_ch + o) * pplane;
        let wo = o * per_out;
        for (var kh = kh_lo; kh < kh_end; kh++) {
            let up = kh * pw;
            let r0 = plane + hr0 - up;
            let r1 = plane + hr1 - up;
            let r2 = plane + hr2 - up;
            let r3 = plane + hr3 - up;
            // d_rj = dyp[h0 + r - kh + P, w0 + j - kw + P]; as kw grows the window slides one column left.
            var d00 = dy[r0 + cj0];
            var d01 = dy[r0 + cj1];
            var d02 = dy[r0 + cj2];
            var d03 = dy[r0 + cj3];
            var d10 = dy[r1 + cj0];
            var d11 = dy[r1 + cj1];
            var d12 = dy[r1 + cj2];
            var d13 = dy[r1 + cj3];
            var d20 = dy[r2 + cj0];
            var d21 = dy[r2 + cj1];
            var d22 = dy[r2 + cj2];
            var d23 = dy[r2 + cj3];
            var d30 = dy[r3 + cj0];
            var d31 = dy[r3 + cj1];
            var d32 = dy[r3 + cj2];
            var d33 = dy[r3 + cj3];
            let wr = wo + kh * dims.kernel;
            for (var kw = kw_lo; kw < kw_end; kw++) {
                if kw > kw_lo {
                    let col = w0 + p - kw;
                    d03 = d02;
                    d02 = d01;
                    d01 = d00;
                    d00 = dy[r0 + col];
                    d13 = d12;
                    d12 = d11;
                    d11 = d10;
                    d10 = dy[r1 + col];
                    d23 = d22;
                    d22 = d21;
                    d21 = d20;
                    d20 = dy[r2 + col];
                    d33 = d32;
                    d32 = d31;
                    d31 = d30;
                    d30 = dy[r3 + col];
                }
                let wi = wr + kw;
                let wv = vec3<f32>(params[wc0 + wi], params[wc1 + wi], params[wc2 + wi]);
                let wu = vec3<f32>(params[wc3 + wi], params[wc4 + wi], params[wc5 + wi]);
                a00 += wv * d00;
                e00 += wu * d00;
                a01 += wv * d01;
                e01 += wu * d01;
                a02 += wv * d02;
                e02 += wu * d02;
                a03 += wv * d03;
                e03 += wu * d03;
                a10 += wv * d10;
                e10 += wu * d10;
                a11 += wv * d11;
                e11 += wu * d11;
                a12 += wv * d12;
                e12 += wu * d12;
                a13 += wv * d13;
                e13 += wu * d13;
                a20 += wv * d20;
                e20 += wu * d20;
                a21 += wv * d21;
                e21 += wu * d21;
                a22 += wv * d22;
                e22 += wu * d22;
                a23 += wv * d23;
                e23 += wu * d23;
                a30 += wv * d30;
                e30 += wu * d30;
                a31 += wv * d31;
                e31 += wu * d31;
                a32 += wv * d32;
                e32 += wu * d32;
                a33 += wv * d33;
                e33 += wu * d33;
            }
        }
    }

    store_row(b, c0, h0 + 0u, w0, a00, a01, a02, a03);
    store_row(b, c0 + 3u, h0 + 0u, w0, e00, e01, e02, e03);
    store_row(b, c0, h0 + 1u, w0, a10, a11, a12, a13);
    store_row(b, c0 + 3u, h0 + 1u, w0, e10, e11, e12, e13);
    store_row(b, c0, h0 + 2u, w0, a20, a21, a22, a23);
    store_row(b, c0 + 3u, h0 + 2u, w0, e20, e21, e22, e23);
    store_row(b, c0, h0 + 3u, w0, a30, a31, a32, a33);
    store_row(b, c0 + 3u, h0 + 3u, w0, e30, e31, e32, e33);
}

// Sends the four columns from w0 of dx row h, for the three channels from c0, through the
// below layer's pooling windows, skipping what lies past the channels, rows or columns of dx.
fn store_row(b: u32, c0: u32, h: u32, w0: u32, v0: vec3<f32>, v1: vec3<f32>, v2: vec3<f32>, v3: vec3<f32>) {
    if h >= dims.height {
        return;
    }
    let bw = 2u * dims.width;
    for (var i = 0u; i < 3u; i++) {
        let c = c0 + i;
        if c >= dims.in_ch {
            break;
        }
        let plane = b * dims.in_ch + c;
        let pi = (plane * dims.height + h) * dims.width + w0;
        let bi = (plane * 2u * dims.height + 2u * h) * bw + 2u * w0;
        unpool(pi, bi, bw, v0[i]);
        if w0 + 1u < dims.width {
            unpool(pi + 1u, bi + 2u, bw, v1[i]);
        }
        if w0 + 2u < dims.width {
            unpool(pi + 2u, bi + 4u, bw, v2[i]);
        }
        if w0 + 3u < dims.width {
            unpool(pi + 3u, bi + 6u, bw, v3[i]);
        }
    }
}

// The max-pool and ReLU backward of one window: the gradient g of pooled value pi goes to
// the window position (top-left bi, rows bw apart) that pooling took, if that value was
// positive; the window's other positions get zero.
fn unpool(pi: u32, bi: u32, bw: u32, g: f32) {
    let v = select(0.0, g, below_pooled[pi] > 0.0);
    let a = below_argmax[pi];
    dyb[bi] = select(0.0, v, a == bi);
    dyb[bi + 1u] = select(0.0, v, a == bi + 1u);
    dyb[bi + bw] = select(0.0, v, a == bi + bw);
    dyb[bi + bw + 1u] = select(0.0, v, a == bi + bw + 1u);
}
