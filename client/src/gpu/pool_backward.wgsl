// 2x2 max-pooling backward fused with the ReLU before it.
//
// For each pooling window, the gradient dp of its output goes to the conv output position
// recorded in `argmax` (a flat index into the unpadded conv output) when the pooled value,
// which is the ReLU output there, is positive; the window's other three positions get zero.
// dy: [planes, 2 * pooled_h + 2 * pad, 2 * pooled_w + 2 * pad] holds each plane with a border
// of `pad` zeros on every side (for conv_backward_input, which then reads no bounds). Every
// element inside the border is written, so dy needs no clearing; the border is never
// written, and stays as the zeroed buffer was created.

struct Pool {
    planes: u32,
    pooled_h: u32,
    pooled_w: u32,
    pad: u32,
}

@group(0) @binding(0) var<uniform> dims: Pool;
@group(0) @binding(1) var<storage, read> dp: array<f32>;
@group(0) @binding(2) var<storage, read> argmax: array<u32>;
@group(0) @binding(3) var<storage, read> pooled: array<f32>;
@group(0) @binding(4) var<storage, read_write> dy: array<f32>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = (wid.y * nwg.x + wid.x) * 64u + lid;
    if idx >= dims.planes * dims.pooled_h * dims.pooled_w {
        return;
    }
    let px = idx % dims.pooled_w;
    let t = idx / dims.pooled_w;
    let py = t % dims.pooled_h;
    let plane = t / dims.pooled_h;
    let w = 2u * dims.pooled_w;
    let i00 = (plane * 2u * dims.pooled_h + 2u * py) * w + 2u * px;
    let pw = w + 2u * dims.pad;
    let o00 = (plane * (2u * dims.pooled_h + 2u * dims.pad) + 2u * py + dims.pad) * pw + 2u * px + dims.pad;
    let g = select(0.0, dp[idx], pooled[idx] > 0.0);
    let a = argmax[idx];
    dy[o00] = select(0.0, g, a == i00);
    dy[o00 + 1u] = select(0.0, g, a == i00 + 1u);
    dy[o00 + pw] = select(0.0, g, a == i00 + w);
    dy[o00 + pw + 1u] = select(0.0, g, a == i00 + w + 1u);
}
