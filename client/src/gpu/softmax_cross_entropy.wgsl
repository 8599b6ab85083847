// Softmax cross-entropy, forward and backward in one pass, in a single workgroup.
//
// logits: [batch, classes]; labels: [batch]. Writes dlogits = (softmax - onehot) / batch and
// the batch mean of -log softmax[label] into losses[slot], the step's slot of the loss ring,
// so the loss stays on the GPU until the ring is read back. Each invocation handles every
// 64th sample; the per-invocation sums are then added in a fixed tree (deterministic).

struct Xent {
    batch: u32,
    classes: u32,
    slot: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> dims: Xent;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<u32>;
@group(0) @binding(3) var<storage, read_write> dlogits: array<f32>;
@group(0) @binding(4) var<storage, read_write> losses: array<f32>;

const WG: u32 = 64u;

var<workgroup> sums: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) lid: u32) {
    let inv_batch = 1.0 / f32(dims.batch);
    var total = 0.0;
    for (var b = lid; b < dims.batch; b += WG) {
        let row = b * dims.classes;
        let label = labels[b];
        var m = logits[row];
        for (var c = 1u; c < dims.classes; c++) {
            m = max(m, logits[row + c]);
        }
        var z = 0.0;
        for (var c = 0u; c < dims.classes; c++) {
            z += exp(logits[row + c] - m);
        }
        // loss = logsumexp(row) - row[label] = ln z + m - row[label]
        total += log(z) + m - logits[row + label];
        let scale = inv_batch / z;
        for (var c = 0u; c < dims.classes; c++) {
            let p = exp(logits[row + c] - m) * scale;
            dlogits[row + c] = select(p, p - inv_batch, c == label);
        }
    }
    sums[lid] = total;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if lid < s {
            sums[lid] += sums[lid + s];
        }
        workgroupBarrier();
    }
    if lid == 0u {
        losses[dims.slot] = sums[0] * inv_batch;
    }
}
