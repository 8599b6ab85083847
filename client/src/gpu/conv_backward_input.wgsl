// Convolution backward to the input: dx[b, c, h, w] = sum over (o, kh, kw) of
// dy[b, o, h - kh, w - kw] * weight[o, c, kh, kw], terms outside dy counting as zero.
//
// dy: [batch, out_ch, out_h, out_w]; dx: [batch, in_ch, height, width]; the weight sits in
// the flat parameter vector at w_off. Each invocation computes a 4x4 register block: four
// input channels times four neighbouring columns of one row of dx.

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

// dy at column `col` of the row starting at `row`, or zero outside the row.
fn dy_at(row: u32, col: i32) -> f32 {
    if col < 0 || col >= i32(dims.out_w) {
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
    let idx = (wid.y * nwg.x + wid.x) * 64u + lid;
    let wblocks = (dims.width + 3u) / 4u;
    let cblocks = (dims.in_ch + 3u) / 4u;
    if idx >= dims.batch * cblocks * dims.height * wblocks {
        return;
    }
    let wb = idx % wblocks;
    var t = idx / wblocks;
    let h = t % dims.height;
    t = t / dims.height;
    let cb = t % cblocks;
    let b = t / cblocks;

    // Four input channels; lanes past in_ch read the last channel and are discarded.
    let c0 = cb * 4u;
    let last = dims.in_ch - 1u;
    let ksz = dims.kernel * dims.kernel;
    let per_out = dims.in_ch * ksz;
    let wc0 = dims.w_off + min(c0, last) * ksz;
    let wc1 = dims.w_off + min(c0 + 1u, last) * ksz;
    let wc2 = dims.w_off + min(c0 + 2u, last) * ksz;
    let wc3 = dims.w_off + min(c0 + 3u, last) * ksz;
    let col = i32(wb * 4u);
    let ohw = dims.out_h * dims.out_w;

    // a_j: column col + j of dx, over the four channels.
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    for (var o = 0u; o < dims.out_ch; o++) {
        let dyo = (b * dims.out_ch + o) * ohw;
        let wo = o * per_out;
        for (var kh = 0u; kh < dims.kernel; kh++) {
            let oy = i32(h) - i32(kh);
            if oy < 0 || oy >= i32(dims.out_h) {
                continue;
            }
            let row = dyo + u32(oy) * dims.out_w;
            // d_j = dy[oy, col + j - kw]; as kw grows the window slides one column left.
            var d0 = dy_at(row, col);
            var d1 = dy_at(row, col + 1);
            var d2 = dy_at(row, col + 2);
            var d3 = dy_at(row, col + 3);
            for (var kw = 0u; kw < dims.kernel; kw++) {
                let wi = wo + kh * dims.kernel + kw;
                let wv = vec4<f32>(params[wc0 + wi], params[wc1 + wi], params[wc2 + wi], params[wc3 + wi]);
                a0 += wv * d0;
                a1 += wv * d1;
                a2 += wv * d2;
                a3 += wv * d3;
                d3 = d2;
                d2 = d1;
                d1 = d0;
                d0 = dy_at(row, col - i32(kw) - 1);
            }
        }
    }

    let w0 = wb * 4u;
    for (var i = 0u; i < 4u; i++) {
        let c = c0 + i;
        if c >= dims.in_ch {
            break;
        }
        let base = ((b * dims.in_ch + c) * dims.height + h) * dims.width + w0;
        dx[base] = a0[i];
        if w0 + 1u < dims.width {
            dx[base + 1u] = a1[i];
        }
        if w0 + 2u < dims.width {
            dx[base + 2u] = a2[i];
        }
        if w0 + 3u < dims.width {
            dx[base + 3u] = a3[i];
        }
    }
}
