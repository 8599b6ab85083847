// Dense forward with bias and optional ReLU: y = x W^T + b, then max(y, 0) when `relu` != 0.
//
// x: [batch, inputs]; W: [outputs, inputs] and b: [outputs] in the flat parameter vector at
// w_off and b_off; y: [batch, outputs]. `inputs` and `w_off` are multiples of 4, so rows are
// read as vec4. Each invocation computes a 4x4 register block: four samples times four
// outputs, sixteen vec4 dot products for every eight vec4 loads.

struct Dense {
    batch: u32,
    inputs: u32,
    outputs: u32,
    w_off: u32,
    b_off: u32,
    relu: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> dims: Dense;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> params: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

// One element of the flat parameter vector, at any offset.
fn param(i: u32) -> f32 {
    return params[i / 4u][i % 4u];
}

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = (wid.y * nwg.x + wid.x) * 64u + lid;
    let bblocks = (dims.batch + 3u) / 4u;
    let oblocks = (dims.outputs + 3u) / 4u;
    if idx >= bblocks * oblocks {
        return;
    }
    let ob = idx % oblocks;
    let bb = idx / oblocks;
    let cols = dims.inputs / 4u;

    // Rows past the batch or the outputs read the last one and are discarded.
    let lb = dims.batch - 1u;
    let lo = dims.outputs - 1u;
    let x0 = min(bb * 4u, lb) * cols;
    let x1 = min(bb * 4u + 1u, lb) * cols;
    let x2 = min(bb * 4u + 2u, lb) * cols;
    let x3 = min(bb * 4u + 3u, lb) * cols;
    let o0 = min(ob * 4u, lo);
    let o1 = min(ob * 4u + 1u, lo);
    let o2 = min(ob * 4u + 2u, lo);
    let o3 = min(ob * 4u + 3u, lo);
    let wbase = dims.w_off / 4u;
    let w0 = wbase + o0 * cols;
    let w1 = wbase + o1 * cols;
    let w2 = wbase + o2 * cols;
    let w3 = wbase + o3 * cols;

    // acc_i: sample i over the four outputs.
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k = 0u; k < cols; k++) {
        let wv0 = params[w0 + k];
        let wv1 = params[w1 + k];
        let wv2 = params[w2 + k];
        let wv3 = params[w3 + k];
        let xv0 = x[x0 + k];
        let xv1 = x[x1 + k];
        let xv2 = x[x2 + k];
        let xv3 = x[x3 + k];
        acc0 += vec4<f32>(dot(xv0, wv0), dot(xv0, wv1), dot(xv0, wv2), dot(xv0, wv3));
        acc1 += vec4<f32>(dot(xv1, wv0), dot(xv1, wv1), dot(xv1, wv2), dot(xv1, wv3));
        acc2 += vec4<f32>(dot(xv2, wv0), dot(xv2, wv1), dot(xv2, wv2), dot(xv2, wv3));
        acc3 += vec4<f32>(dot(xv3, wv0), dot(xv3, wv1), dot(xv3, wv2), dot(xv3, wv3));
    }

    let bias = vec4<f32>(
        param(dims.b_off + o0),
        param(dims.b_off + o1),
        param(dims.b_off + o2),
        param(dims.b_off + o3),
    );
    var rows = array<vec4<f32>, 4>(acc0 + bias, acc1 + bias, acc2 + bias, acc3 + bias);
    for (var i = 0u; i < 4u; i++) {
        let b = bb * 4u + i;
        if b >= dims.batch {
            break;
        }
        var v = rows[i];
        if dims.relu != 0u {
            v = max(v, vec4<f32>(0.0));
        }
        for (var j = 0u; j < 4u; j++) {
            let o = ob * 4u + j;
            if o < dims.outputs {
                y[b * dims.outputs + o] = v[j];
            }
        }
    }
}
