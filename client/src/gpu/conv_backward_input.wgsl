// Convolution backward to the input: dx[b, c, h, w] = sum over (o, kh, kw) of
// dy[b, o, h - kh, w - kw] * weight[o, c, kh, kw], terms outside dy counting as zero.
//
// dy: [batch, out_ch, out_h, out_w]; dx: [batch, in_ch, height, width]; the weight sits in
// the flat parameter vector at w_off. Each invocation computes a 4x4x4 register block: four
// input channels times a 4x4 tile of dx (rows h0.., columns w0..). For every (o, kh) it
// keeps, per tile row, the four dy values under the tile's columns and slides them one
// column left per kw, so every 64 multiply-adds need 4 weight and 4 dy loads. Terms outside
// dy read a clamped (in-bounds) address and are multiplied by zero, without branches. The
// channel block comes from the workgroup alone, so the weight addresses are the same
// across the workgroup.

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

// One dy row under the tile: its start in dy (clamped into the plane) and 1 or 0 for
// whether it lies inside dy.
struct Row {
    start: u32,
    inside: f32,
}

fn row_at(plane: u32, oy: i32) -> Row {
    let inside = oy >= 0 && oy < i32(dims.out_h);
    let y = u32(clamp(oy, 0, i32(dims.out_h) - 1));
    return Row(plane + y * dims.out_w, select(0.0, 1.0, inside));
}

// dy at column `col` of `row`, or zero outside dy.
fn dy_at(row: Row, col: i32) -> f32 {
    let inside = col >= 0 && col < i32(dims.out_w);
    let x = u32(clamp(col, 0, i32(dims.out_w) - 1));
    return dy[row.start + x] * select(0.0, row.inside, inside);
}

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let hblocks = (dims.height + 3u) / 4u;
    let wblocks = (dims.width + 3u) / 4u;
    let cblocks = (dims.in_ch + 3u) / 4u;
    let tiles = dims.batch * hblocks * wblocks;
    let tgroups = (tiles + 63u) / 64u;
    let wg = wid.y * nwg.x + wid.x;
    let cb = wg / tgroups;
    let tile = (wg % tgroups) * 64u + lid;
    if cb >= cblocks || tile >= tiles {
        return;
    }
    let wb = tile % wblocks;
    let t = tile / wblocks;
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
    let h0 = i32(hb * 4u);
    let w0 = i32(wb * 4u);
    let ohw = dims.out_h * dims.out_w;

    // a_rj: dx at row h0 + r, column w0 + j, over the four channels.
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
        let plane = (b * dims.out_ch + o) * ohw;
        let wo = o * per_out;
        for (var kh = 0u; kh < dims.kernel; kh++) {
            let oy = h0 - i32(kh);
            let r0 = row_at(plane, oy);
            let r1 = row_at(plane, oy + 1);
            let r2 = row_at(plane, oy + 2);
            let r3 = row_at(plane, oy + 3);
            // d_rj = dy[oy + r, w0 + j - kw]; as kw grows the window slides one column left.
            var d00 = dy_at(r0, w0);
            var d01 = dy_at(r0, w0 + 1);
            var d02 = dy_at(r0, w0 + 2);
            var d03 = dy_at(r0, w0 + 3);
            var d10 = dy_at(r1, w0);
            var d11 = dy_at(r1, w0 + 1);
            var d12 = dy_at(r1, w0 + 2);
            var d13 = dy_at(r1, w0 + 3);
            var d20 = dy_at(r2, w0);
            var d21 = dy_at(r2, w0 + 1);
            var d22 = dy_at(r2, w0 + 2);
            var d23 = dy_at(r2, w0 + 3);
            var d30 = dy_at(r3, w0);
            var d31 = dy_at(r3, w0 + 1);
            var d32 = dy_at(r3, w0 + 2);
            var d33 = dy_at(r3, w0 + 3);
            let wr = wo + kh * dims.kernel;
            for (var kw = 0u; kw < dims.kernel; kw++) {
                if kw > 0u {
                    let col = w0 - i32(kw);
                    d03 = d02;
                    d02 = d01;
                    d01 = d00;
                    d00 = dy_at(r0, col);
                    d13 = d12;
                    d12 = d11;
                    d11 = d10;
                    d10 = dy_at(r1, col);
                    d23 = d22;
                    d22 = d21;
                    d21 = d20;
                    d20 = dy_at(r2, col);
                    d33 = d32;
                    d32 = d31;
                    d31 = d30;
                    d30 = dy_at(r3, col);
                }
                let wi = wr + kw;
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
            }
        }
    }

    store_row(b, c0, u32(h0), u32(w0), a00, a01, a02, a03);
    store_row(b, c0, u32(h0) + 1u, u32(w0), a10, a11, a12, a13);
    store_row(b, c0, u32(h0) + 2u, u32(w0), a20, a21, a22, a23);
    store_row(b, c0, u32(h0) + 3u, u32(w0), a30, a31, a32, a33);
}

// Writes the four columns from w0 of row h of dx for the four channels from c0, skipping
// what lies past the channels, rows or columns of dx.
fn store_row(b: u32, c0: u32, h: u32, w0: u32, v0: vec4<f32>, v1: vec4<f32>, v2: vec4<f32>, v3: vec4<f32>) {
    if h >= dims.height {
        return;
    }
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
