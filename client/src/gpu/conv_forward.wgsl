// Convolution forward fused with bias, ReLU and 2x2 max-pooling.
//
// x: [batch, in_ch, height, width]; weights [out_ch, in_ch, k, k] and bias [out_ch] inside
// the flat parameter vector at w_off and b_off. Valid (no padding), stride 1, so the conv
// output is [batch, out_ch, out_h, out_w] (both even). It is never stored: each invocation
// computes one 2x2 pooling window for four output channels (a 4x4 register block, an
// implicit GEMM tile), applies bias and ReLU, and writes the window's maximum to
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
    let idx = (wid.y * nwg.x + wid.x) * 64u + lid;
    let ph = dims.out_h / 2u;
    let pw = dims.out_w / 2u;
    let oblocks = (dims.out_ch + 3u) / 4u;
    if idx >= dims.batch * oblocks * ph * pw {
        return;
    }
    let px = idx % pw;
    var t = idx / pw;
    let py = t % ph;
    t = t / ph;
    let ob = t % oblocks;
    let b = t / oblocks;

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

    // Accumulators for the window positions (dy, dx), each over the four channels.
    var a00 = bias;
    var a01 = bias;
    var a10 = bias;
    var a11 = bias;
    let oy = 2u * py;
    let ox = 2u * px;
    let plane = dims.height * dims.width;
    for (var c = 0u; c < dims.in_ch; c++) {
        let xc = (b * dims.in_ch + c) * plane;
        let wc = c * ksz;
        for (var kh = 0u; kh < dims.kernel; kh++) {
            let r0 = xc + (oy + kh) * dims.width + ox;
            let r1 = r0 + dims.width;
            let wr = wc + kh * dims.kernel;
            // Slide along the row: the right column at kw is the left column at kw + 1.
            var x00 = x[r0];
            var x10 = x[r1];
            for (var kw = 0u; kw < dims.kernel; kw++) {
                let x01 = x[r0 + kw + 1u];
                let x11 = x[r1 + kw + 1u];
                let wi = wr + kw;
                let wv = vec4<f32>(params[w0 + wi], params[w1 + wi], params[w2 + wi], params[w3 + wi]);
                a00 += wv * x00;
                a01 += wv * x01;
                a10 += wv * x10;
                a11 += wv * x11;
                x00 = x01;
                x10 = x11;
            }
        }
    }

    let zero = vec4<f32>(0.0);
    let v00 = max(a00, zero);
    let v01 = max(a01, zero);
    let v10 = max(a10, zero);
    let v11 = max(a11, zero);
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
