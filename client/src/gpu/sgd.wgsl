// One SGD step over the flat parameter vector, the same rule as `Sgd::step` on the CPU:
//   g <- grad + weight_decay * p;  v <- momentum * v + g;  p <- p - lr * v
// and, when momentum is off (`momentum_on` == 0), p <- p - lr * g without touching v.
//
// The gradient of the first `split` parameters (the convolutions' weights and biases) comes
// as `parts` partial sums, one per sample, laid out as partials[p * split + i]; this kernel
// adds them up in order (so the result is deterministic) instead of a reduction kernel of
// its own. The gradient of the other parameters is grads[i].

struct Sgd {
    n: u32,
    momentum_on: u32,
    split: u32,
    parts: u32,
    lr: f32,
    momentum: f32,
    weight_decay: f32,
    _pad: f32,
}

@group(0) @binding(0) var<uniform> cfg: Sgd;
@group(0) @binding(1) var<storage, read> grads: array<f32>;
@group(0) @binding(2) var<storage, read> partials: array<f32>;
@group(0) @binding(3) var<storage, read_write> params: array<f32>;
@group(0) @binding(4) var<storage, read_write> velocity: array<f32>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = (wid.y * nwg.x + wid.x) * 64u + lid;
    if idx >= cfg.n {
        return;
    }
    var g = 0.0;
    if idx < cfg.split {
        for (var p = 0u; p < cfg.parts; p++) {
            g += partials[p * cfg.split + idx];
        }
    } else {
        g = grads[idx];
    }
    let p = params[idx];
    if cfg.momentum_on != 0u {
        let v = cfg.momentum * velocity[idx] + g + cfg.weight_decay * p;
        velocity[idx] = v;
        params[idx] = p - cfg.lr * v;
    } else {
        params[idx] = p - cfg.lr * (g + cfg.weight_decay * p);
    }
}
