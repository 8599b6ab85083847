// Dense backward to the weight and bias, overwriting the flat gradient vector:
//   dW[o, i] = sum over b of dy[b, o] * x[b, i]      (at w_off, a multiple of 4)
//   db[o]    = sum over b of dy[b, o]                (at b_off)
//
// dy: [batch, outputs]; x: [batch, inputs] with `inputs` a multiple of 4. Each invocation
// computes a 4x4 register block, four outputs times one vec4 column of inputs; the
// invocations of the first column also sum the bias gradient.

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
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> grads: array<f32>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = (wid.y * nwg.x + wid.x) * 64u + lid;
    let cols = dims.inputs / 4u;
    let oblocks = (dims.outputs + 3u) / 4u;
    if idx >= oblocks * cols {
        return;
    }
    let col = idx % cols;
    let ob = idx / cols;

    // Outputs past the end read the last one and are discarded.
    let lo = dims.outputs - 1u;
    let o0 = min(ob * 4u, lo);
    let o1 = min(ob * 4u + 1u, lo);
    let o2 = min(ob * 4u + 2u, lo);
    let o3 = min(ob * 4u + 3u, lo);

    // acc_j: output j over the four inputs of the column; db over the four outputs.
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    var db = vec4<f32>(0.0);
    for (var b = 0u; b < dims.batch; b++) {
        let xv = x[b * cols + col];
        let row = b * dims.outputs;
        let d = vec4<f32>(dy[row + o0], dy[row + o1], dy[row + o2], dy[row + o3]);
        acc0 += d.x * xv;
        acc1 += d.y * xv;
        acc2 += d.z * xv;
        acc3 += d.w * xv;
        db += d;
    }

    var rows = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var j = 0u; j < 4u; j++) {
        let o = ob * 4u + j;
        if o >= dims.outputs {
            break;
        }
        let at = dims.w_off + o * dims.inputs + col * 4u;
        let v = rows[j];
        grads[at] = v.x;
        grads[at + 1u] = v.y;
        grads[at + 2u] = v.z;
        grads[at + 3u] = v.w;
        if col == 0u {
            grads[dims.b_off + o] = db[j];
        }
    }
}
