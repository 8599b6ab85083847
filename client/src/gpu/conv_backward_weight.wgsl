// Convolution backward to the weight and bias:
//   dweight[o, c, kh, kw] = sum over (b, oy, ox) of dy[b, o, oy, ox] * x[b, c, oy + kh, ox + kw]
//   dbias[o]              = sum over (b, oy, ox) of dy[b, o, oy, ox]
// written (overwriting) into the flat gradient vector at w_off and b_off.
//
// As a GEMM, dW = dY * im2col(x)^T with a reduction over batch * out_h * out_w, much longer
// than the output is large, so one workgroup computes one 4x8 output block (four output
// channels times eight consecutive columns k = (c, kh, kw) of the weight; the extra column
// k = in_ch * k * k is the bias, whose "input" is 1). Its 64 invocations split the
// reduction by rows (b, oy), each keeping the 4x8 block in registers (32 multiply-adds for
// 4 dy and 8 x loads), and then add their blocks in a fixed tree, so the result is
// deterministic.

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
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> grads: array<f32>;

const WG: u32 = 64u;
const COLS: u32 = 8u;

// The eight partial vec4 columns of every invocation.
var<workgroup> partial: array<vec4<f32>, 512>;

// Where column k reads its input: an offset into x relative to the output position, and
// whether it is a weight column (x), the bias column (1) or padding past the end (0).
struct Column {
    off: u32,
    is_x: f32,
    one: f32,
}

fn column(k: u32, ckk: u32, ksz: u32) -> Column {
    if k < ckk {
        let c = k / ksz;
        let r = k % ksz;
        return Column((c * dims.height + r / dims.kernel) * dims.width + r % dims.kernel, 1.0, 0.0);
    }
    return Column(0u, 0.0, select(0.0, 1.0, k == ckk));
}

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let ksz = dims.kernel * dims.kernel;
    let ckk = dims.in_ch * ksz;
    let kblocks = (ckk + COLS) / COLS; // ckk + 1 columns, the last one the bias
    let oblocks = (dims.out_ch + 3u) / 4u;
    let block = wid.y * nwg.x + wid.x;
    if block >= kblocks * oblocks {
        return;
    }
    let kb = block % kblocks;
    let ob = block / kblocks;

    let k0 = kb * COLS;
    let c0 = column(k0, ckk, ksz);
    let c1 = column(k0 + 1u, ckk, ksz);
    let c2 = column(k0 + 2u, ckk, ksz);
    let c3 = column(k0 + 3u, ckk, ksz);
    let c4 = column(k0 + 4u, ckk, ksz);
    let c5 = column(k0 + 5u, ckk, ksz);
    let c6 = column(k0 + 6u, ckk, ksz);
    let c7 = column(k0 + 7u, ckk, ksz);
    let is_lo = vec4<f32>(c0.is_x, c1.is_x, c2.is_x, c3.is_x);
    let is_hi = vec4<f32>(c4.is_x, c5.is_x, c6.is_x, c7.is_x);
    let one_lo = vec4<f32>(c0.one, c1.one, c2.one, c3.one);
    let one_hi = vec4<f32>(c4.one, c5.one, c6.one, c7.one);

    // Four output channels; lanes past out_ch read the last channel and are discarded.
    let o0 = ob * 4u;
    let last = dims.out_ch - 1u;
    let ohw = dims.out_h * dims.out_w;
    let d0 = min(o0, last) * ohw;
    let d1 = min(o0 + 1u, last) * ohw;
    let d2 = min(o0 + 2u, last) * ohw;
    let d3 = min(o0 + 3u, last) * ohw;
    let chw = dims.in_ch * dims.height * dims.width;

    // acc_j: column k0 + j of the block, over the four output channels.
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    var acc4 = vec4<f32>(0.0);
    var acc5 = vec4<f32>(0.0);
    var acc6 = vec4<f32>(0.0);
    var acc7 = vec4<f32>(0.0);
    for (var r = lid; r < dims.batch * dims.out_h; r += WG) {
        let b = r / dims.out_h;
        let oy = r % dims.out_h;
        let xrow = b * chw + oy * dims.width;
        let dyrow = b * dims.out_ch * ohw + oy * dims.out_w;
        for (var ox = 0u; ox < dims.out_w; ox++) {
            let di = dyrow + ox;
            let d = vec4<f32>(dy[di + d0], dy[di + d1], dy[di + d2], dy[di + d3]);
            let xi = xrow + ox;
            let lo = vec4<f32>(x[xi + c0.off], x[xi + c1.off], x[xi + c2.off], x[xi + c3.off]) * is_lo + one_lo;
            let hi = vec4<f32>(x[xi + c4.off], x[xi + c5.off], x[xi + c6.off], x[xi + c7.off]) * is_hi + one_hi;
            acc0 += d * lo.x;
            acc1 += d * lo.y;
            acc2 += d * lo.z;
            acc3 += d * lo.w;
            acc4 += d * hi.x;
            acc5 += d * hi.y;
            acc6 += d * hi.z;
            acc7 += d * hi.w;
        }
    }

    let p = lid * COLS;
    partial[p] = acc0;
    partial[p + 1u] = acc1;
    partial[p + 2u] = acc2;
    partial[p + 3u] = acc3;
    partial[p + 4u] = acc4;
    partial[p + 5u] = acc5;
    partial[p + 6u] = acc6;
    partial[p + 7u] = acc7;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if lid < s {
            for (var j = 0u; j < COLS; j++) {
                partial[lid * COLS + j] += partial[(lid + s) * COLS + j];
            }
        }
        workgroupBarrier();
    }

    // Invocation j writes column k0 + j.
    if lid < COLS {
        let k = k0 + lid;
        let v = partial[lid];
        for (var i = 0u; i < 4u; i++) {
            let o = o0 + i;
            if o >= dims.out_ch {
                break;
            }
            if k < ckk {
                grads[dims.w_off + o * ckk + k] = v[i];
            } else if k == ckk {
                grads[dims.b_off + o] = v[i];
            }
        }
    }
}
