//! The compute kernels: their WGSL sources, bind group layouts, pipelines, the uniform
//! structs that carry their shapes, and how one dispatch of each is recorded.
//!
//! Every kernel is a `.wgsl` file beside this one with one entry point `main` and
//! `@workgroup_size(64)`. Binding 0 is always a small uniform struct (the shapes, offsets
//! into the flat parameter vector and per-step values); the other bindings are storage
//! buffers, at most 6 per kernel (WebGPU guarantees 8 per stage). Large dispatches are
//! split over two grid dimensions, and each kernel recovers its linear index from
//! `num_workgroups`, so any size fits under the 65 535-workgroups-per-dimension limit.

use std::borrow::Cow;
use std::num::NonZeroU64;

use bytemuck::{Pod, Zeroable};

use crate::Sgd;

/// Invocations per workgroup in every kernel (`@workgroup_size(64)`).
pub(crate) const WORKGROUP: u32 = 64;

/// Bytes between the uniform structs of consecutive dispatches in one uniform buffer:
/// WebGPU's `minUniformBufferOffsetAlignment`.
pub(crate) const UNIFORM_STRIDE: u64 = 256;

/// Most workgroups in one grid dimension (WebGPU's `maxComputeWorkgroupsPerDimension`).
const MAX_GROUPS_PER_DIM: u32 = 65_535;

/// How a kernel sees one of its bindings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Uniform,
    Read,
    ReadWrite,
}

/// One compute kernel (one pipeline).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    Gather,
    ConvForward,
    ConvBackwardInput,
    ConvBackwardWeight,
    PoolBackward,
    DenseForward,
    DenseBackwardInput,
    DenseBackwardWeight,
    SoftmaxCrossEntropy,
    Sgd,
}

impl Kernel {
    /// Every kernel, in the order of [`Kernels`]' tables.
    const ALL: [Kernel; 10] = [
        Kernel::Gather,
        Kernel::ConvForward,
        Kernel::ConvBackwardInput,
        Kernel::ConvBackwardWeight,
        Kernel::PoolBackward,
        Kernel::DenseForward,
        Kernel::DenseBackwardInput,
        Kernel::DenseBackwardWeight,
        Kernel::SoftmaxCrossEntropy,
        Kernel::Sgd,
    ];

    /// The kernel's label, WGSL source and bindings (binding `i` is `bindings[i]`).
    fn spec(self) -> (&'static str, &'static str, &'static [Access]) {
        use Access::{Read as R, ReadWrite as W, Uniform as U};
        match self {
            Kernel::Gather => (
                "gather",
                include_str!("gather.wgsl"),
                &[U, R, R, R, R, W, W],
            ),
            Kernel::ConvForward => (
                "conv_forward",
                include_str!("conv_forward.wgsl"),
                &[U, R, R, W, W],
            ),
            Kernel::ConvBackwardInput => (
                "conv_backward_input",
                include_str!("conv_backward_input.wgsl"),
                &[U, R, R, R, R, W],
            ),
            Kernel::ConvBackwardWeight => (
                "conv_backward_weight",
                include_str!("conv_backward_weight.wgsl"),
                &[U, R, R, W],
            ),
            Kernel::PoolBackward => (
                "pool_backward",
                include_str!("pool_backward.wgsl"),
                &[U, R, R, R, W],
            ),
            Kernel::DenseForward => (
                "dense_forward",
                include_str!("dense_forward.wgsl"),
                &[U, R, R, W],
            ),
            Kernel::DenseBackwardInput => (
                "dense_backward_input",
                include_str!("dense_backward_input.wgsl"),
                &[U, R, R, R, W],
            ),
            Kernel::DenseBackwardWeight => (
                "dense_backward_weight",
                include_str!("dense_backward_weight.wgsl"),
                &[U, R, R, W],
            ),
            Kernel::SoftmaxCrossEntropy => (
                "softmax_cross_entropy",
                include_str!("softmax_cross_entropy.wgsl"),
                &[U, R, R, W, W],
            ),
            Kernel::Sgd => ("sgd", include_str!("sgd.wgsl"), &[U, R, R, W, W]),
        }
    }

    fn index(self) -> usize {
        Kernel::ALL
            .iter()
            .position(|&k| k == self)
            .expect("every kernel is in Kernel::ALL")
    }
}

/// Every pipeline and bind group layout, built once when the device is opened.
#[derive(Clone, Debug)]
pub(crate) struct Kernels {
    layouts: Vec<wgpu::BindGroupLayout>,
    pipelines: Vec<wgpu::ComputePipeline>,
}

impl Kernels {
    /// Compiles every kernel. Shader or layout errors are bugs and surface through wgpu's
    /// error handler (a panic natively).
    pub(crate) fn new(device: &wgpu::Device) -> Kernels {
        let mut layouts = Vec::with_capacity(Kernel::ALL.len());
        let mut pipelines = Vec::with_capacity(Kernel::ALL.len());
        for kernel in Kernel::ALL {
            let (label, source, bindings) = kernel.spec();
            let entries: Vec<wgpu::BindGroupLayoutEntry> = bindings
                .iter()
                .enumerate()
                .map(|(i, &access)| wgpu::BindGroupLayoutEntry {
                    binding: i as u32,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: match access {
                            Access::Uniform => wgpu::BufferBindingType::Uniform,
                            Access::Read => wgpu::BufferBindingType::Storage { read_only: true },
                            Access::ReadWrite => {
                                wgpu::BufferBindingType::Storage { read_only: false }
                            }
                        },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                })
                .collect();
            let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(label),
                entries: &entries,
            });
            let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(label),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(Cow::Borrowed(source)),
            });
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(label),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            });
            layouts.push(layout);
            pipelines.push(pipeline);
        }
        Kernels { layouts, pipelines }
    }

    /// A bind group for one dispatch of `kernel`: binding 0 is the 256-byte uniform slot
    /// `slot` of `uniforms`, bindings 1.. are `buffers`, whole, in order.
    pub(crate) fn bind_group(
        &self,
        device: &wgpu::Device,
        kernel: Kernel,
        uniforms: &wgpu::Buffer,
        slot: u32,
        buffers: &[&wgpu::Buffer],
    ) -> wgpu::BindGroup {
        let (label, _, bindings) = kernel.spec();
        assert_eq!(
            bindings.len(),
            buffers.len() + 1,
            "{label}: wrong number of buffers"
        );
        let mut entries = Vec::with_capacity(bindings.len());
        entries.push(wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: uniforms,
                offset: u64::from(slot) * UNIFORM_STRIDE,
                size: NonZeroU64::new(UNIFORM_STRIDE),
            }),
        });
        for (i, b) in buffers.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: b.as_entire_binding(),
            });
        }
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout: &self.layouts[kernel.index()],
            entries: &entries,
        })
    }

    /// Records one dispatch of `kernel` with `groups` workgroups and counts it.
    pub(crate) fn dispatch(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        kernel: Kernel,
        bind_group: &wgpu::BindGroup,
        groups: u32,
        dispatches: &mut u32,
    ) {
        let (x, y) = split_groups(groups);
        pass.set_pipeline(&self.pipelines[kernel.index()]);
        pass.set_bind_group(0, bind_group, &[]);
        pass.dispatch_workgroups(x, y, 1);
        *dispatches += 1;
    }
}

/// Spreads `groups` workgroups over a grid of at most 65 535 in x; the kernels skip the
/// extra invocations of the last row.
fn split_groups(groups: u32) -> (u32, u32) {
    if groups <= MAX_GROUPS_PER_DIM {
        (groups, 1)
    } else {
        (MAX_GROUPS_PER_DIM, groups.div_ceil(MAX_GROUPS_PER_DIM))
    }
}

/// The shape of a valid, stride-1 convolution with its tensors' offsets in the flat vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConvDims {
    pub in_ch: u32,
    pub height: u32,
    pub width: u32,
    pub out_ch: u32,
    pub kernel: u32,
    /// Offset of the `[out_ch, in_ch, kernel, kernel]` weight (or its gradient).
    pub w_off: u32,
    /// Offset of the `[out_ch]` bias (or its gradient).
    pub b_off: u32,
}

impl ConvDims {
    pub(crate) fn out_h(&self) -> u32 {
        self.height + 1 - self.kernel
    }

    pub(crate) fn out_w(&self) -> u32 {
        self.width + 1 - self.kernel
    }
}

/// The shape of a dense layer with its tensors' offsets in the flat vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DenseDims {
    /// A multiple of 4: rows are read as `vec4`.
    pub inputs: u32,
    pub outputs: u32,
    /// Offset of the `[outputs, inputs]` weight, a multiple of 4.
    pub w_off: u32,
    /// Offset of the `[outputs]` bias.
    pub b_off: u32,
    /// Forward: apply ReLU to the output. Backward to the input: mask the result where the
    /// layer's input (the ReLU output of the layer below) is not positive.
    pub relu: bool,
}

/// One dispatch's work, independent of the batch size and the step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Op {
    /// Gather images of `words` u32 words (4 pixels each) and their labels.
    Gather { words: u32 },
    /// Convolution, bias, ReLU and 2x2 max-pool with argmax.
    ConvForward(ConvDims),
    /// Convolution gradient with respect to its input, from the conv-output gradient
    /// zero-padded by `kernel - 1`, fused with the max-pool and ReLU backward of the layer
    /// below: it writes the below layer's conv-output gradient (see
    /// `conv_backward_input.wgsl`).
    ConvBackwardInput(ConvDims),
    /// Convolution gradient with respect to its weight and bias, as one partial sum per
    /// sample: sample `b`'s lands at `b * part_stride` plus the layer's offsets (see
    /// `conv_backward_weight.wgsl`; [`Op::Sgd`] adds them up).
    /// `dy_pad` is the zero border of dy's planes.
    ConvBackwardWeight {
        conv: ConvDims,
        part_stride: u32,
        dy_pad: u32,
    },
    /// Max-pool and ReLU backward over `channels` planes (per sample) of pooled size
    /// `pooled_h x pooled_w`, into planes with a zero border of `pad`.
    PoolBackward {
        channels: u32,
        pooled_h: u32,
        pooled_w: u32,
        pad: u32,
    },
    /// Dense layer with bias and optional ReLU.
    DenseForward(DenseDims),
    /// Dense gradient with respect to its input, optionally masked by ReLU.
    DenseBackwardInput(DenseDims),
    /// Dense gradient with respect to its weight and bias.
    DenseBackwardWeight(DenseDims),
    /// Softmax cross-entropy forward and backward over `classes` logits.
    SoftmaxCrossEntropy { classes: u32 },
    /// SGD over `n` parameters. The gradient of the first `split` comes as one partial sum
    /// per sample of the step's batch (`partials[b * split + i]`), the rest from `grads`.
    Sgd { n: u32, split: u32 },
}

/// The per-step values a dispatch's uniform struct may need.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StepArgs {
    pub batch: u32,
    pub lr: f32,
    /// Where the softmax kernel writes the step's mean loss in the loss ring.
    pub loss_slot: u32,
    pub sgd: Sgd,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct GatherUniform {
    batch: u32,
    words: u32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ConvUniform {
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
    /// Where consecutive samples' partial sums start (the weight gradient only).
    part_stride: u32,
    /// The zero border of dy's planes (the backward kernels only).
    dy_pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct PoolUniform {
    planes: u32,
    pooled_h: u32,
    pooled_w: u32,
    pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct DenseUniform {
    batch: u32,
    inputs: u32,
    outputs: u32,
    w_off: u32,
    b_off: u32,
    relu: u32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct XentUniform {
    batch: u32,
    classes: u32,
    slot: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct SgdUniform {
    n: u32,
    momentum_on: u32,
    split: u32,
    parts: u32,
    lr: f32,
    momentum: f32,
    weight_decay: f32,
    _pad: f32,
}

impl ConvDims {
    fn uniform(&self, batch: u32) -> ConvUniform {
        self.uniform_with(batch, 0, 0)
    }

    fn uniform_with(&self, batch: u32, part_stride: u32, dy_pad: u32) -> ConvUniform {
        ConvUniform {
            batch,
            in_ch: self.in_ch,
            height: self.height,
            width: self.width,
            out_ch: self.out_ch,
            kernel: self.kernel,
            out_h: self.out_h(),
            out_w: self.out_w(),
            w_off: self.w_off,
            b_off: self.b_off,
            part_stride,
            dy_pad,
        }
    }
}

impl DenseDims {
    fn uniform(&self, batch: u32) -> DenseUniform {
        DenseUniform {
            batch,
            inputs: self.inputs,
            outputs: self.outputs,
            w_off: self.w_off,
            b_off: self.b_off,
            relu: u32::from(self.relu),
            _pad: [0; 2],
        }
    }
}

/// Invocations (or blocks) for `n` items in groups of `per`.
fn blocks(n: u32, per: u32) -> u32 {
    n.div_ceil(per)
}

impl Op {
    /// The kernel this op runs.
    pub(crate) fn kernel(&self) -> Kernel {
        match self {
            Op::Gather { .. } => Kernel::Gather,
            Op::ConvForward(_) => Kernel::ConvForward,
            Op::ConvBackwardInput(_) => Kernel::ConvBackwardInput,
            Op::ConvBackwardWeight { .. } => Kernel::ConvBackwardWeight,
            Op::PoolBackward { .. } => Kernel::PoolBackward,
            Op::DenseForward(_) => Kernel::DenseForward,
            Op::DenseBackwardInput(_) => Kernel::DenseBackwardInput,
            Op::DenseBackwardWeight(_) => Kernel::DenseBackwardWeight,
            Op::SoftmaxCrossEntropy { .. } => Kernel::SoftmaxCrossEntropy,
            Op::Sgd { .. } => Kernel::Sgd,
        }
    }

    /// Checks the shape restrictions the kernels rely on.
    pub(crate) fn validate(&self) {
        match self {
            Op::ConvForward(c) => {
                assert!(c.kernel >= 1 && c.kernel <= c.height && c.kernel <= c.width);
                assert!(
                    c.out_h() % 2 == 0 && c.out_w() % 2 == 0,
                    "conv forward pools 2x2: conv output {}x{} must be even",
                    c.out_h(),
                    c.out_w()
                );
            }
            Op::ConvBackwardInput(c) => {
                assert!(c.kernel >= 1 && c.kernel <= c.height && c.kernel <= c.width);
            }
            Op::ConvBackwardWeight {
                conv: c,
                part_stride,
                ..
            } => {
                assert!(c.kernel >= 1 && c.kernel <= c.height && c.kernel <= c.width);
                assert!(
                    c.kernel <= 5,
                    "conv backward weight keeps a 5x5 kernel in registers: kernel {} is larger",
                    c.kernel
                );
                let ends = [
                    c.w_off + c.out_ch * c.in_ch * c.kernel * c.kernel,
                    c.b_off + c.out_ch,
                ];
                assert!(
                    ends.iter().all(|&e| e <= *part_stride),
                    "conv backward weight: the layer's gradient ends at {ends:?}, past the partial sums' stride {part_stride}"
                );
            }
            Op::Sgd { n, split } => {
                assert!(split <= n, "sgd: split {split} past the {n} parameters");
            }
            Op::DenseForward(d) | Op::DenseBackwardInput(d) | Op::DenseBackwardWeight(d) => {
                assert!(
                    d.inputs % 4 == 0 && d.w_off % 4 == 0,
                    "dense kernels read vec4 rows: inputs {} and weight offset {} must be multiples of 4",
                    d.inputs,
                    d.w_off
                );
                assert!(d.outputs > 0);
            }
            Op::Gather { .. } | Op::PoolBackward { .. } | Op::SoftmaxCrossEntropy { .. } => {}
        }
    }

    /// Writes the op's uniform struct for this step into `out` (one uniform slot) and
    /// returns the number of workgroups to dispatch.
    pub(crate) fn encode(&self, args: &StepArgs, out: &mut [u8]) -> u32 {
        let batch = args.batch;
        match self {
            Op::Gather { words } => {
                let u = GatherUniform {
                    batch,
                    words: *words,
                    _pad: [0; 2],
                };
                write(out, &u, blocks(batch * words, WORKGROUP))
            }
            Op::ConvForward(c) => {
                // Four pooling windows side by side per invocation; each workgroup serves
                // one block of four channels.
                let positions = batch * (c.out_h() / 2) * blocks(c.out_w() / 2, 4);
                let n = blocks(c.out_ch, 4) * blocks(positions, WORKGROUP);
                write(out, &c.uniform(batch), n)
            }
            Op::ConvBackwardInput(c) => {
                // A 4x4 tile of six channels per invocation; each workgroup serves one
                // tile and block of six channels for 64 samples.
                let tiles = blocks(c.height, 4) * blocks(c.width, 4);
                let n = blocks(c.in_ch, 6) * tiles * blocks(batch, WORKGROUP);
                write(out, &c.uniform_with(batch, 0, c.kernel - 1), n)
            }
            Op::ConvBackwardWeight {
                conv: c,
                part_stride,
                dy_pad,
            } => {
                // One invocation per sample, input channel and block of four output
                // channels.
                let n = batch * c.in_ch * blocks(c.out_ch, 4);
                write(
                    out,
                    &c.uniform_with(batch, *part_stride, *dy_pad),
                    blocks(n, WORKGROUP),
                )
            }
            Op::PoolBackward {
                channels,
                pooled_h,
                pooled_w,
                pad,
            } => {
                let u = PoolUniform {
                    planes: batch * channels,
                    pooled_h: *pooled_h,
                    pooled_w: *pooled_w,
                    pad: *pad,
                };
                let n = u.planes * pooled_h * pooled_w;
                write(out, &u, blocks(n, WORKGROUP))
            }
            Op::DenseForward(d) => {
                let n = blocks(batch, 4) * blocks(d.outputs, 4);
                write(out, &d.uniform(batch), blocks(n, WORKGROUP))
            }
            Op::DenseBackwardInput(d) => {
                let n = blocks(batch, 4) * (d.inputs / 4);
                write(out, &d.uniform(batch), blocks(n, WORKGROUP))
            }
            Op::DenseBackwardWeight(d) => {
                let n = blocks(d.outputs, 4) * (d.inputs / 4);
                write(out, &d.uniform(batch), blocks(n, WORKGROUP))
            }
            Op::SoftmaxCrossEntropy { classes } => {
                let u = XentUniform {
                    batch,
                    classes: *classes,
                    slot: args.loss_slot,
                    _pad: 0,
                };
                // One workgroup loops over the batch and reduces the loss.
                write(out, &u, 1)
            }
            Op::Sgd { n, split } => {
                let u = SgdUniform {
                    n: *n,
                    momentum_on: u32::from(args.sgd.momentum != 0.0),
                    split: *split,
                    parts: batch,
                    lr: args.lr,
                    momentum: args.sgd.momentum,
                    weight_decay: args.sgd.weight_decay,
                    _pad: 0.0,
                };
                write(out, &u, blocks(*n, WORKGROUP))
            }
        }
    }
}

/// Copies a uniform struct into its slot and passes `groups` through.
fn write<T: Pod>(out: &mut [u8], value: &T, groups: u32) -> u32 {
    let bytes = bytemuck::bytes_of(value);
    out[..bytes.len()].copy_from_slice(bytes);
    groups
}
