// Dense backward to the input, fused with the ReLU mask of the layer below:
//   dx[b, i] = sum over o of dy[b, o] * W[o, i],   then zero where x[b, i] <= 0 if `relu` != 0.
//
// x (the layer's input, which is the ReLU output of the layer below) and dx are
// [batch, inputs] with `inputs` a multiple of 4; dy is [batch, outputs]; W is [outputs, inputs]
// in the flat parameter vector at w_off (a multiple of 4). Each invocation computes four
// samples times four consecutive inputs (one vec4 column).

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
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> params: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> dx: array<vec4<f32>>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = (wid.y * nwg.x + wid.x) * 64u + lid;
    let cols = dims.inputs / 4u;
    let bblocks = (dims.batch + 3u) / 4u;
    if idx >= bblocks * cols {
        return;
    }
    let col = idx % cols;
    let bb = idx / cols;

    // Samples past the batch read the last one and are discarded.
    let lb = dims.batch - 1u;
    let d0 = min(bb * 4u, lb) * dims.outputs;
    let d1 = min(bb * 4u + 1u, lb) * dims.outputs;
    let d2 = min(bb * 4u + 2u, lb) * dims.outputs;
    let d3 = min(bb * 4u + 3u, lb) * dims.outputs;
    let wcol = dims.w_off / 4u + col;

    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var o = 0u; o < dims.outputs; o++) {
        let wv = params[wcol + o * cols];
        acc0 += dy[d0 + o] * wv;
        acc1 += dy[d1 + o] * wv;
        acc2 += dy[d2 + o] * wv;
        acc3 += dy[d3 + o] * wv;
    }

    var rows = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var i = 0u; i < 4u; i++) {
        let b = bb * 4u + i;
        if b >= dims.batch {
            break;
        }
        let at = b * cols + col;
        var v = rows[i];
        if dims.relu != 0u {
            v = select(vec4<f32>(0.0), v, x[at] > vec4<f32>(0.0));
        }
        dx[at] = v;
    }
}
