// Batch gather: copies the shard images named by `indices` into the f32 input batch
// `x: [batch, words * 4]` and their labels into `batch_labels: [batch]`.
//
// The shard stays resident as raw bytes, four pixels (or four labels) per u32 word,
// little-endian. Pixels become inputs through `lut`, the 256 values of the CPU's
// `pixel_to_input`, so both backends see bit-identical inputs.
//
// One invocation per (sample, word): it writes four inputs as one vec4.

struct Dims {
    batch: u32,
    // u32 words per image: pixels / 4.
    words: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> pixels: array<u32>;
@group(0) @binding(2) var<storage, read> labels: array<u32>;
@group(0) @binding(3) var<storage, read> indices: array<u32>;
@group(0) @binding(4) var<storage, read> lut: array<f32, 256>;
@group(0) @binding(5) var<storage, read_write> x: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> batch_labels: array<u32>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = (wid.y * nwg.x + wid.x) * 64u + lid;
    if idx >= dims.batch * dims.words {
        return;
    }
    let b = idx / dims.words;
    let w = idx % dims.words;
    let s = indices[b];
    let word = pixels[s * dims.words + w];
    x[idx] = vec4<f32>(
        lut[word & 0xffu],
        lut[(word >> 8u) & 0xffu],
        lut[(word >> 16u) & 0xffu],
        lut[word >> 24u],
    );
    if w == 0u {
        batch_labels[b] = (labels[s / 4u] >> (8u * (s % 4u))) & 0xffu;
    }
}
