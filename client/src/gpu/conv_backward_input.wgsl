// Convolution backward to the input: dx[b, c, h, w] = sum over (o, kh, kw) of
// dy[b, o, h - kh, w - kw] * weight[o, c, kh, kw], terms outside dy counting as zero.
//
// dy: [batch, out_ch, out_h, out_w]; dx: [batch, in_ch, height, width]; the weight sits in
// the flat parameter vector at w_off. Each invocation computes a 4x16 register block: four
// input channels times a 4 x 4 patch of dx (four rows, four columns), sliding the dy values
// under it one column per kernel column, so every 64 multiply-adds need 4 dy and 4 weight
// loads.

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
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> params: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;

// dy at column `col` of the row starting at `row`, or zero outside the row or when the
// row itself is outside dy (`ok` false).
fn dy_at(row: u32, ok: bool, col: i32) -> f32 {
    if !ok || col < 0 || col >= i32(dims.out_w) {
        return 0.0;
    }
    return dy[row + u32(col)];
}

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    // The channel block comes from the workgroup alone, so every weight address below is
    // the same across the workgroup (uniform loads, which implementations can broadcast);
    // the invocations of a workgroup cover different positions.
    let wblocks = (dims.width + 3u) / 4u;
    let hblocks = (dims.height + 3u) / 4u;
    let cblocks = (dims.in_ch + 3u) / 4u;
    let positions = dims.batch * hblocks * wblocks;
    let pgroups = (positions + 63u) / 64u;
    let wg = wid.y * nwg.x + wid.x;
    let cb = wg / pgroups;
    let pos = (wg % pgroups) * 64u + lid;
    if cb >= cblocks || pos >= positions {
        return;
    }
    let wb = pos % wblocks;
    let t = pos / wblocks;
    let hb = t % hblocks;
    let b = t / hblocks;

    // Four input channels; lanes past in_ch read the last channel and are discarded.
    let c0 = cb * 4u;
    let last = dims.in_ch - 1u;
    let ksz = dims.kernel * dims.kernel;
    let per_out = dims.in_ch * ksz;
    let wc0 = dims.w_off + min(c0, last) * ksz;
    let wc1 = dims.w_off + min(c0 + 1u, last) * ksz;
    let wc2 = dims.w_off + min(c0 + 2u, last) * ksz;
    let wc3 = dims.w_off + min(c0 + 3u, last) * ksz;
    let h0 = 4u * hb;
    let col = i32(wb * 4u);
    let ohw = dims.out_h * dims.out_w;
    let oh = i32(dims.out_h);

    // a_rj: dx at row h0 + r, column col + j, over the four channels.
    var a00 = vec4<f32>(0.0);
    var a01 = vec4<f32>(0.0);
    var a02 = vec4<f32>(0.0);
    var a03 = vec4<f32>(0.0);
    var a10 = vec4<f32>(0.0);
    var a11 = vec4<f32>(0.0);
    var a12 = vec4<f32>(0.0);
    var a13 = vec4<f32>(0.0);
    var a20 = vec4<f32>(0.0);
    var a21 = vec4<f32>(0.0);
    var a22 = vec4<f32>(0.0);
    var a23 = vec4<f32>(0.0);
    var a30 = vec4<f32>(0.0);
    var a31 = vec4<f32>(0.0);
    var a32 = vec4<f32>(0.0);
    var a33 = vec4<f32>(0.0);
    for (var o = 0u; o < dims.out_ch; o++) {
        let dyo = (b * dims.out_ch + o) * ohw;
        let wo = o * per_out;
        for (var kh = 0u; kh < dims.kernel; kh++) {
            // dy row for dx row h0 + r is oy0 + r; rows outside dy read as zero.
            let oy0 = i32(h0) - i32(kh);
            if oy0 + 3 < 0 || oy0 >= oh {
                continue;
            }
            let ok0 = oy0 + 0 >= 0 && oy0 + 0 < oh;
            let row0 = dyo + u32(clamp(oy0 + 0, 0, oh - 1)) * dims.out_w;
            let ok1 = oy0 + 1 >= 0 && oy0 + 1 < oh;
            let row1 = dyo + u32(clamp(oy0 + 1, 0, oh - 1)) * dims.out_w;
            let ok2 = oy0 + 2 >= 0 && oy0 + 2 < oh;
            let row2 = dyo + u32(clamp(oy0 + 2, 0, oh - 1)) * dims.out_w;
            let ok3 = oy0 + 3 >= 0 && oy0 + 3 < oh;
            let row3 = dyo + u32(clamp(oy0 + 3, 0, oh - 1)) * dims.out_w;
            // d_rj = dy[oy0 + r, col + j - kw]; as kw grows the window slides one column left.
            var d00 = dy_at(row0, ok0, col + 0);
            var d01 = dy_at(row0, ok0, col + 1);
            var d02 = dy_at(row0, ok0, col + 2);
            var d03 = dy_at(row0, ok0, col + 3);
            var d10 = dy_at(row1, ok1, col + 0);
            var d11 = dy_at(row1, ok1, col + 1);
            var d12 = dy_at(row1, ok1, col + 2);
            var d13 = dy_at(row1, ok1, col + 3);
            var d20 = dy_at(row2, ok2, col + 0);
            var d21 = dy_at(row2, ok2, col + 1);
            var d22 = dy_at(row2, ok2, col + 2);
            var d23 = dy_at(row2, ok2, col + 3);
            var d30 = dy_at(row3, ok3, col + 0);
            var d31 = dy_at(row3, ok3, col + 1);
            var d32 = dy_at(row3, ok3, col + 2);
            var d33 = dy_at(row3, ok3, col + 3);
            for (var kw = 0u; kw < dims.kernel; kw++) {
                let wi = wo + kh * dims.kernel + kw;
                let wv = vec4<f32>(params[wc0 + wi], params[wc1 + wi], params[wc2 + wi], params[wc3 + wi]);
                a00 += wv * d00;
                a01 += wv * d01;
                a02 += wv * d02;
                a03 += wv * d03;
                a10 += wv * d10;
                a11 += wv * d11;
                a12 += wv * d12;
                a13 += wv * d13;
                a20 += wv * d20;
                a21 += wv * d21;
                a22 += wv * d22;
                a23 += wv * d23;
                a30 += wv * d30;
                a31 += wv * d31;
                a32 += wv * d32;
                a33 += wv * d33;
                let next = col - i32(kw) - 1;
                d03 = d02;
                d02 = d01;
                d01 = d00;
                d00 = dy_at(row0, ok0, next);
                d13 = d12;
                d12 = d11;
                d11 = d10;
                d10 = dy_at(row1, ok1, next);
                d23 = d22;
                d22 = d21;
                d21 = d20;
                d20 = dy_at(row2, ok2, next);
                d33 = d32;
                d32 = d31;
                d31 = d30;
                d30 = dy_at(row3, ok3, next);
            }
        }
    }

    store(b, c0, h0, u32(col), a00, a01, a02, a03);
    if h0 + 1u < dims.height {
        store(b, c0, h0 + 1u, u32(col), a10, a11, a12, a13);
    }
    if h0 + 2u < dims.height {
        store(b, c0, h0 + 2u, u32(col), a20, a21, a22, a23);
    }
    if h0 + 3u < dims.height {
        store(b, c0, h0 + 3u, u32(col), a30, a31, a32, a33);
    }
}

// Writes four columns from w0 of row h of dx for the four channels from c0, skipping
// channels and columns past the edge.
fn store(b: u32, c0: u32, h: u32, w0: u32, v0: vec4<f32>, v1: vec4<f32>, v2: vec4<f32>, v3: vec4<f32>) {
    for (var i = 0u; i < 4u; i++) {
        let c = c0 + i;
        if c >= dims.in_ch {
            break;
        }
        let base = ((b * dims.in_ch + c) * dims.height + h) * dims.width + w0;
        dx[base] = v0[i];
        if w0 + 1u < dims.width {
            dx[base + 1u] = v1[i];
        }
        if w0 + 2u < dims.width {
            dx[base + 2u] = v2[i];
        }
        if w0 + 3u < dims.width {
            dx[base + 3u] = v3[i];
        }
    }
}
