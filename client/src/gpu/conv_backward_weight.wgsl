// Convolution backward to the weight and bias:
//   dweight[o, c, kh, kw] = sum over (b, oy, ox) of dy[b, o, oy, ox] * x[b, c, oy + kh, ox + kw]
//   dbias[o]              = sum over (b, oy, ox) of dy[b, o, oy, ox]
// written (overwriting) into the flat gradient vector at w_off and b_off.
//
// As a GEMM, dW = dY * im2col(x)^T with a reduction over batch * out_h * out_w, much longer
// than the output is large, so one workgroup computes one 4x4 output block (four output
// channels times four consecutive columns k = (c, kh, kw) of the weight; the extra column
// k = in_ch * k * k is the bias, whose "input" is 1). Its 64 invocations split the
// reduction by rows (b, oy), each keeping the 4x4 block in registers, and then add their
// blocks in a fixed tree, so the result is deterministic.

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

// Four partial vec4 columns per invocation.
var<workgroup> partial: array<vec4<f32>, 256>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let ksz = dims.kernel * dims.kernel;
    let ckk = dims.in_ch * ksz;
    let kblocks = (ckk + 4u) / 4u; // ckk + 1 columns, the last one the bias
    let oblocks = (dims.out_ch + 3u) / 4u;
    let block = wid.y * nwg.x + wid.x;
    if block >= kblocks * oblocks {
        return;
    }
    let kb = block % kblocks;
    let ob = block / kblocks;

    // Each column k is either a weight column (an offset into x relative to the output
    // position), the bias column (input 1) or padding past the end (input 0).
    var off = vec4<u32>(0u);
    var is_x = vec4<f32>(0.0);
    var ones = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        let k = kb * 4u + j;
        if k < ckk {
            let c = k / ksz;
            let r = k % ksz;
            off[j] = (c * dims.height + r / dims.kernel) * dims.width + r % dims.kernel;
            is_x[j] = 1.0;
        } else if k == ckk {
            ones[j] = 1.0;
        }
    }

    // Four output channels; lanes past out_ch read the last channel and are discarded.
    let o0 = ob * 4u;
    let last = dims.out_ch - 1u;
    let ohw = dims.out_h * dims.out_w;
    let d0 = min(o0, last) * ohw;
    let d1 = min(o0 + 1u, last) * ohw;
    let d2 = min(o0 + 2u, last) * ohw;
    let d3 = min(o0 + 3u, last) * ohw;
    let chw = dims.in_ch * dims.height * dims.width;

    // acc_j: column j of the block, over the four output channels.
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var r = lid; r < dims.batch * dims.out_h; r += WG) {
        let b = r / dims.out_h;
        let oy = r % dims.out_h;
        let xrow = b * chw + oy * dims.width;
        let dyrow = b * dims.out_ch * ohw + oy * dims.out_w;
        for (var ox = 0u; ox < dims.out_w; ox++) {
            let di = dyrow + ox;
            let d = vec4<f32>(dy[di + d0], dy[di + d1], dy[di + d2], dy[di + d3]);
            let xi = xrow + ox;
            let xv = vec4<f32>(x[xi + off.x], x[xi + off.y], x[xi + off.z], x[xi + off.w]) * is_x + ones;
            acc0 += d * xv.x;
            acc1 += d * xv.y;
            acc2 += d * xv.z;
            acc3 += d * xv.w;
        }
    }

    partial[lid * 4u] = acc0;
    partial[lid * 4u + 1u] = acc1;
    partial[lid * 4u + 2u] = acc2;
    partial[lid * 4u + 3u] = acc3;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if lid < s {
            for (var j = 0u; j < 4u; j++) {
                partial[lid * 4u + j] += partial[(lid + s) * 4u + j];
            }
        }
        workgroupBarrier();
    }

    // Invocation j writes column j.
    if lid < 4u {
        let k = kb * 4u + lid;
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
