// One SGD step over the flat parameter vector, the same rule as `Sgd::step` on the CPU:
//   g <- grad + weight_decay * p;  v <- momentum * v + g;  p <- p - lr * v
// and, when momentum is off (`momentum_on` == 0), p <- p - lr * g without touching v.

struct Sgd {
    n: u32,
    momentum_on: u32,
    _pad0: u32,
    _pad1: u32,
    lr: f32,
    momentum: f32,
    weight_decay: f32,
    _pad2: f32,
}

@group(0) @binding(0) var<uniform> cfg: Sgd;
@group(0) @binding(1) var<storage, read> grads: array<f32>;
@group(0) @binding(2) var<storage, read_write> params: array<f32>;
@group(0) @binding(3) var<storage, read_write> velocity: array<f32>;

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
    let p = params[idx];
    let g = grads[idx];
    if cfg.momentum_on != 0u {
        let v = cfg.momentum * velocity[idx] + g + cfg.weight_decay * p;
        velocity[idx] = v;
        params[idx] = p - cfg.lr * v;
    } else {
        params[idx] = p - cfg.lr * (g + cfg.weight_decay * p);
    }
}
