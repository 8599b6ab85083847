//! The lenet5-28 forward and backward passes on the CPU, built from [`super::ops`].
//!
//! Parameters are the flat vector of [`easel_protocol::model_spec`]; images are
//! `[batch, 1, 28, 28]` already converted by [`crate::model::pixel_to_input`]. Every
//! activation lives in a [`Workspace`] allocated once for a maximum batch, so a training step
//! allocates nothing.

use super::ops::{
    ConvShape, Float, maxpool2_backward, model_scratch_len, relu_backward, relu_forward,
    softmax_cross_entropy,
};
use crate::model::{CLASSES, IMAGE_PIXELS, PARAMS, pixel_to_input};
use easel_protocol::model_spec::lenet5_28::*;

const C1: usize = 6; // conv1 output channels
const A1: usize = 24; // conv1 output side
const P1: usize = 12; // pool1 output side
const C2: usize = 16; // conv2 output channels
const A2: usize = 8; // conv2 output side
const P2: usize = 4; // pool2 output side
const FLAT: usize = C2 * P2 * P2; // 256
const H1: usize = 120;
const H2: usize = 84;

fn conv1_shape(batch: usize) -> ConvShape {
    ConvShape {
        batch,
        in_ch: 1,
        height: 28,
        width: 28,
        out_ch: C1,
        kernel: 5,
    }
}

fn conv2_shape(batch: usize) -> ConvShape {
    ConvShape {
        batch,
        in_ch: C1,
        height: P1,
        width: P1,
        out_ch: C2,
        kernel: 5,
    }
}

/// Every activation and gradient buffer of one forward and backward pass, for batches of up
/// to [`Workspace::capacity`] samples. Reusing one workspace across steps means a step never
/// allocates; a larger batch grows it once.
#[derive(Clone, Debug)]
pub struct Workspace<F> {
    capacity: usize,
    a1: Vec<F>,     // [batch, 6, 24, 24] conv1 output (before ReLU)
    p1: Vec<F>,     // [batch, 6, 12, 12] pool1 output, after ReLU
    arg1: Vec<u32>, // [batch, 6, 12, 12]
    a2: Vec<F>,     // [batch, 16, 8, 8] conv2 output (before ReLU)
    p2: Vec<F>,     // [batch, 16, 4, 4] = [batch, 256] after ReLU
    arg2: Vec<u32>, // [batch, 16, 4, 4]
    h1: Vec<F>,     // [batch, 120] after ReLU
    h2: Vec<F>,     // [batch, 84] after ReLU
    logits: Vec<F>, // [batch, 10]
    d_logits: Vec<F>,
    d_h2: Vec<F>,
    d_h1: Vec<F>,
    d_p2: Vec<F>,
    d_a2: Vec<F>,
    d_p1: Vec<F>,
    d_a1: Vec<F>,
    scratch: Vec<F>, // the convolutions' scratch (model_scratch_len), the larger of the two
}

impl<F: Float> Workspace<F> {
    /// A workspace for batches of up to `max_batch` samples.
    pub fn new(max_batch: usize) -> Self {
        let mut ws = Workspace {
            capacity: 0,
            a1: Vec::new(),
            p1: Vec::new(),
            arg1: Vec::new(),
            a2: Vec::new(),
            p2: Vec::new(),
            arg2: Vec::new(),
            h1: Vec::new(),
            h2: Vec::new(),
            logits: Vec::new(),
            d_logits: Vec::new(),
            d_h2: Vec::new(),
            d_h1: Vec::new(),
            d_p2: Vec::new(),
            d_a2: Vec::new(),
            d_p1: Vec::new(),
            d_a1: Vec::new(),
            scratch: Vec::new(),
        };
        let scratch = model_scratch_len(&conv1_shape(1)).max(model_scratch_len(&conv2_shape(1)));
        ws.scratch = vec![F::ZERO; scratch];
        ws.reserve(max_batch);
        ws
    }

    /// The largest batch the workspace holds without growing.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Grows the buffers to hold `batch` samples, if they are smaller.
    pub fn reserve(&mut self, batch: usize) {
        if batch <= self.capacity {
            return;
        }
        let z = F::ZERO;
        let a1 = batch * C1 * A1 * A1;
        let p1 = batch * C1 * P1 * P1;
        let a2 = batch * C2 * A2 * A2;
        let p2 = batch * FLAT;
        self.a1 = vec![z; a1];
        self.p1 = vec![z; p1];
        self.arg1 = vec![0; p1];
        self.a2 = vec![z; a2];
        self.p2 = vec![z; p2];
        self.arg2 = vec![0; p2];
        self.h1 = vec![z; batch * H1];
        self.h2 = vec![z; batch * H2];
        self.logits = vec![z; batch * CLASSES];
        self.d_logits = vec![z; batch * CLASSES];
        self.d_h2 = vec![z; batch * H2];
        self.d_h1 = vec![z; batch * H1];
        self.d_p2 = vec![z; p2];
        self.d_a2 = vec![z; a2];
        self.d_p1 = vec![z; p1];
        self.d_a1 = vec![z; a1];
        self.capacity = batch;
    }
}

/// Slices of the flat parameter vector, one per tensor.
struct Params<'a, F> {
    c1w: &'a [F],
    c1b: &'a [F],
    c2w: &'a [F],
    c2b: &'a [F],
    f1w: &'a [F],
    f1b: &'a [F],
    f2w: &'a [F],
    f2b: &'a [F],
    f3w: &'a [F],
    f3b: &'a [F],
}

impl<'a, F> Params<'a, F> {
    fn new(p: &'a [F]) -> Self {
        assert_eq!(p.len(), PARAMS, "parameter vector length");
        Params {
            c1w: &p[CONV1_W..CONV1_B],
            c1b: &p[CONV1_B..CONV2_W],
            c2w: &p[CONV2_W..CONV2_B],
            c2b: &p[CONV2_B..FC1_W],
            f1w: &p[FC1_W..FC1_B],
            f1b: &p[FC1_B..FC2_W],
            f2w: &p[FC2_W..FC2_B],
            f2b: &p[FC2_B..FC3_W],
            f3w: &p[FC3_W..FC3_B],
            f3b: &p[FC3_B..PARAMS],
        }
    }
}

/// Disjoint mutable slices of the flat gradient vector, one per tensor.
struct Grads<'a, F> {
    c1w: &'a mut [F],
    c1b: &'a mut [F],
    c2w: &'a mut [F],
    c2b: &'a mut [F],
    f1w: &'a mut [F],
    f1b: &'a mut [F],
    f2w: &'a mut [F],
    f2b: &'a mut [F],
    f3w: &'a mut [F],
    f3b: &'a mut [F],
}

impl<'a, F> Grads<'a, F> {
    fn new(g: &'a mut [F]) -> Self {
        assert_eq!(g.len(), PARAMS, "gradient vector length");
        let (c1w, g) = g.split_at_mut(CONV1_B - CONV1_W);
        let (c1b, g) = g.split_at_mut(CONV2_W - CONV1_B);
        let (c2w, g) = g.split_at_mut(CONV2_B - CONV2_W);
        let (c2b, g) = g.split_at_mut(FC1_W - CONV2_B);
        let (f1w, g) = g.split_at_mut(FC1_B - FC1_W);
        let (f1b, g) = g.split_at_mut(FC2_W - FC1_B);
        let (f2w, g) = g.split_at_mut(FC2_B - FC2_W);
        let (f2b, g) = g.split_at_mut(FC3_W - FC2_B);
        let (f3w, f3b) = g.split_at_mut(FC3_B - FC3_W);
        Grads {
            c1w,
            c1b,
            c2w,
            c2b,
            f1w,
            f1b,
            f2w,
            f2b,
            f3w,
            f3b,
        }
    }
}

/// The forward pass over `batch` images (`images: [batch, 1, 28, 28]`, already converted by
/// [`pixel_to_input`]). Returns the logits, `[batch, 10]`, which live in the workspace; the
/// workspace also keeps every activation that [`loss_and_grad`] needs.
pub fn forward<'w, F: Float>(
    params: &[F],
    images: &[F],
    batch: usize,
    ws: &'w mut Workspace<F>,
) -> &'w [F] {
    forward_with_laps(params, images, batch, ws, &mut |_| {})
}

/// The layer operations of a pass, in the order they run, as [`forward_with_laps`] and
/// [`loss_and_grad_with_laps`] name them after each one finishes.
pub const OPS: [&str; 15] = [
    "conv1 forward",
    "pool1 + relu",
    "conv2 forward",
    "pool2 + relu",
    "fc1 forward + relu",
    "fc2 forward + relu",
    "fc3 forward",
    "softmax cross-entropy",
    "fc3 backward + relu",
    "fc2 backward + relu",
    "fc1 backward + relu",
    "pool2 backward",
    "conv2 backward (dw, db, dx)",
    "relu + pool1 backward",
    "conv1 backward (dw, db)",
];

/// [`forward`], calling `lap(i)` after each layer operation, where `OPS[i]` names it; a
/// profiler times the gaps between calls (the plain function passes a no-op).
pub fn forward_with_laps<'w, F: Float>(
    params: &[F],
    images: &[F],
    batch: usize,
    ws: &'w mut Workspace<F>,
    lap: &mut dyn FnMut(usize),
) -> &'w [F] {
    assert_eq!(images.len(), batch * IMAGE_PIXELS, "images length");
    ws.reserve(batch);
    let p = Params::new(params);
    let (s1, s2) = (conv1_shape(batch), conv2_shape(batch));
    let a1 = &mut ws.a1[..s1.y_len()];
    let p1 = &mut ws.p1[..batch * C1 * P1 * P1];
    let arg1 = &mut ws.arg1[..p1.len()];
    let a2 = &mut ws.a2[..s2.y_len()];
    let p2 = &mut ws.p2[..batch * FLAT];
    let arg2 = &mut ws.arg2[..p2.len()];
    let h1 = &mut ws.h1[..batch * H1];
    let h2 = &mut ws.h2[..batch * H2];
    let logits = &mut ws.logits[..batch * CLASSES];
    let scratch = &mut ws.scratch;
    let (c1w, c1b, c2w, c2b) = (p.c1w, p.c1b, p.c2w, p.c2b);

    // ReLU commutes with max pooling, so each conv's ReLU runs on the 4x smaller pooled output.
    // images:                                                     [batch, 1, 28, 28]
    F::conv2d_forward_model(s1, images, c1w, c1b, a1, scratch); // [batch, 6, 24, 24]
    lap(0);
    F::maxpool2_relu_forward_model(batch * C1, A1, A1, a1, p1, arg1); // [batch, 6, 12, 12]
    lap(1);
    F::conv2d_forward_model(s2, p1, c2w, c2b, a2, scratch); //     [batch, 16, 8, 8]
    lap(2);
    F::maxpool2_relu_forward_model(batch * C2, A2, A2, a2, p2, arg2); // [batch, 16, 4, 4]
    lap(3);
    // Flatten is free: NCHW [batch, 16, 4, 4] is channel-major    [batch, 256]
    F::dense_forward_model(batch, FLAT, H1, p2, p.f1w, p.f1b, h1); //        [batch, 120]
    relu_forward(h1); //                                            [batch, 120]
    lap(4);
    F::dense_forward_model(batch, H1, H2, h1, p.f2w, p.f2b, h2); //          [batch, 84]
    relu_forward(h2); //                                            [batch, 84]
    lap(5);
    F::dense_forward_model(batch, H2, CLASSES, h2, p.f3w, p.f3b, logits); // [batch, 10]
    lap(6);
    logits
}

/// The mean softmax cross-entropy of the batch (`batch = labels.len()`, `images: [batch, 1,
/// 28, 28]`) and its gradient with respect to every parameter, written over `grad` (same
/// layout as `params`; its previous contents do not matter).
pub fn loss_and_grad<F: Float>(
    params: &[F],
    images: &[F],
    labels: &[u8],
    ws: &mut Workspace<F>,
    grad: &mut [F],
) -> F {
    loss_and_grad_with_laps(params, images, labels, ws, grad, &mut |_| {})
}

/// [`loss_and_grad`], calling `lap(i)` after each layer operation, where `OPS[i]` names it.
pub fn loss_and_grad_with_laps<F: Float>(
    params: &[F],
    images: &[F],
    labels: &[u8],
    ws: &mut Workspace<F>,
    grad: &mut [F],
    lap: &mut dyn FnMut(usize),
) -> F {
    let batch = labels.len();
    forward_with_laps(params, images, batch, ws, lap);
    let p = Params::new(params);
    let g = Grads::new(grad);
    let (s1, s2) = (conv1_shape(batch), conv2_shape(batch));
    let p1 = &ws.p1[..batch * C1 * P1 * P1];
    let arg1 = &ws.arg1[..p1.len()];
    let p2 = &ws.p2[..batch * FLAT];
    let arg2 = &ws.arg2[..p2.len()];
    let h1 = &ws.h1[..batch * H1];
    let h2 = &ws.h2[..batch * H2];
    let logits = &ws.logits[..batch * CLASSES];
    let d_logits = &mut ws.d_logits[..batch * CLASSES];
    let d_h2 = &mut ws.d_h2[..batch * H2];
    let d_h1 = &mut ws.d_h1[..batch * H1];
    let d_p2 = &mut ws.d_p2[..batch * FLAT];
    let d_a2 = &mut ws.d_a2[..s2.y_len()];
    let d_p1 = &mut ws.d_p1[..p1.len()];
    let d_a1 = &mut ws.d_a1[..s1.y_len()];

    let scratch = &mut ws.scratch;

    // Each comment names the gradient the next line writes, and its shape.
    // d_logits                                                        [batch, 10]
    let loss = softmax_cross_entropy(batch, CLASSES, logits, labels, d_logits);
    lap(7);
    // fc3.weight, fc3.bias; d_h2                                      [batch, 84]
    F::dense_backward_model(
        batch,
        H2,
        CLASSES,
        h2,
        p.f3w,
        d_logits,
        Some(d_h2),
        g.f3w,
        g.f3b,
    );
    relu_backward(h2, d_h2); //                                        [batch, 84]
    lap(8);
    // fc2.weight, fc2.bias; d_h1                                      [batch, 120]
    F::dense_backward_model(batch, H1, H2, h1, p.f2w, d_h2, Some(d_h1), g.f2w, g.f2b);
    relu_backward(h1, d_h1); //                                        [batch, 120]
    lap(9);
    // fc1.weight, fc1.bias; d_p2                                      [batch, 256]
    F::dense_backward_model(batch, FLAT, H1, p2, p.f1w, d_h1, Some(d_p2), g.f1w, g.f1b);
    relu_backward(p2, d_p2); //                                        [batch, 16, 4, 4]
    lap(10);
    maxpool2_backward(d_p2, arg2, d_a2); //                            [batch, 16, 8, 8]
    lap(11);
    // conv2.weight, conv2.bias; d_p1                                  [batch, 6, 12, 12]
    let (w, dw, db) = (p.c2w, g.c2w, g.c2b);
    F::conv2d_backward_model(s2, p1, w, d_a2, Some(&mut *d_p1), dw, db, scratch);
    lap(12);
    relu_backward(p1, d_p1); //                                        [batch, 6, 12, 12]
    maxpool2_backward(d_p1, arg1, d_a1); //                            [batch, 6, 24, 24]
    lap(13);
    // conv1.weight, conv1.bias (no input gradient)
    let (w, dw, db) = (p.c1w, g.c1w, g.c1b);
    F::conv2d_backward_model(s1, images, w, d_a1, None, dw, db, scratch);
    lap(14);
    loss
}

/// Accuracy and mean loss of a model on a labelled split.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Evaluation {
    /// Fraction of samples whose highest logit is their label, in `[0, 1]`.
    pub accuracy: f64,
    /// Mean softmax cross-entropy over the split.
    pub loss: f64,
}

/// Samples per forward pass in [`evaluate`].
const EVAL_CHUNK: usize = 256;

/// Evaluates `params` on a whole split: `images_u8` holds `n * 784` raw pixels and `labels`
/// the `n` labels. Runs batched forward passes of up to 256 samples in `f32` and accumulates
/// the loss in `f64`. An empty split gives accuracy 0 and a NaN loss.
pub fn evaluate(params: &[f32], images_u8: &[u8], labels: &[u8]) -> Evaluation {
    let n = labels.len();
    assert_eq!(images_u8.len(), n * IMAGE_PIXELS, "images length");
    if n == 0 {
        return Evaluation {
            accuracy: 0.0,
            loss: f64::NAN,
        };
    }
    let chunk = n.min(EVAL_CHUNK);
    let mut ws = Workspace::<f32>::new(chunk);
    let mut input = vec![0.0f32; chunk * IMAGE_PIXELS];
    let (mut correct, mut total_loss) = (0usize, 0.0f64);
    for (imgs, labs) in images_u8
        .chunks(chunk * IMAGE_PIXELS)
        .zip(labels.chunks(chunk))
    {
        let b = labs.len();
        let input = &mut input[..b * IMAGE_PIXELS];
        for (x, &px) in input.iter_mut().zip(imgs) {
            *x = pixel_to_input(px);
        }
        let logits = forward(params, input, b, &mut ws);
        for (row, &label) in logits.chunks_exact(CLASSES).zip(labs) {
            let label = label as usize;
            assert!(label < CLASSES, "label {label} out of range");
            let (best, max) = argmax(row);
            if best == label {
                correct += 1;
            }
            let z: f64 = row.iter().map(|&v| (v as f64 - max as f64).exp()).sum();
            total_loss += z.ln() + max as f64 - row[label] as f64;
        }
    }
    Evaluation {
        accuracy: correct as f64 / n as f64,
        loss: total_loss / n as f64,
    }
}

/// Index and value of the first maximum of a non-empty row.
fn argmax(row: &[f32]) -> (usize, f32) {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    (best, row[best])
}

/// Class probabilities (the softmax of the logits) for one image of 784 raw pixels.
pub fn predict(params: &[f32], image_u8: &[u8]) -> [f32; 10] {
    assert_eq!(image_u8.len(), IMAGE_PIXELS, "image length");
    let input: Vec<f32> = image_u8.iter().map(|&p| pixel_to_input(p)).collect();
    let mut ws = Workspace::<f32>::new(1);
    let logits = forward(params, &input, 1, &mut ws);
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut probs = [0.0f32; CLASSES];
    let mut z = 0.0;
    for (p, &l) in probs.iter_mut().zip(logits) {
        *p = (l - max).exp();
        z += *p;
    }
    for p in &mut probs {
        *p /= z;
    }
    probs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::ops::tests::assert_close;
    use crate::model::{SPEC, init_params};
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random_images(rng: &mut ChaCha8Rng, batch: usize) -> Vec<u8> {
        (0..batch * IMAGE_PIXELS)
            .map(|_| rng.random_range(0..=255u8))
            .collect()
    }

    fn random_labels(rng: &mut ChaCha8Rng, batch: usize) -> Vec<u8> {
        (0..batch).map(|_| rng.random_range(0..10u8)).collect()
    }

    fn to_f64(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&x| x as f64).collect()
    }

    fn inputs(pixels: &[u8]) -> Vec<f32> {
        pixels.iter().map(|&p| pixel_to_input(p)).collect()
    }

    #[test]
    fn loss_and_grad_matches_finite_differences() {
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        let batch = 3;
        let params = to_f64(&init_params(5));
        let images = to_f64(&inputs(&random_images(&mut rng, batch)));
        let labels = random_labels(&mut rng, batch);
        let mut ws = Workspace::<f64>::new(batch);
        let mut grad = vec![f64::NAN; PARAMS];
        let loss = loss_and_grad(&params, &images, &labels, &mut ws, &mut grad);
        assert!(loss.is_finite() && loss > 0.0);

        let mut eval_ws = Workspace::<f64>::new(batch);
        let mut scratch = vec![0.0; batch * CLASSES];
        let mut loss_at = |p: &[f64]| {
            let logits = forward(p, &images, batch, &mut eval_ws);
            softmax_cross_entropy(batch, CLASSES, logits, &labels, &mut scratch)
        };
        assert_close("loss", &[loss_at(&params)], &[loss], 1e-14, 0.0);

        let h = 1e-6;
        let mut p = params.clone();
        let mut checked = 0;
        for t in SPEC.tensors {
            // Every coordinate of the small tensors, 40 random ones of the large.
            let coords: Vec<usize> = if t.len() <= 40 {
                t.range().collect()
            } else {
                (0..40).map(|_| rng.random_range(t.range())).collect()
            };
            let mut nonzero = 0;
            for i in coords {
                p[i] = params[i] + h;
                let up = loss_at(&p);
                p[i] = params[i] - h;
                let down = loss_at(&p);
                p[i] = params[i];
                let numeric = (up - down) / (2.0 * h);
                assert_close(
                    &format!("d loss / d {}[{}]", t.name, i - t.offset),
                    &[grad[i]],
                    &[numeric],
                    1e-5,
                    1e-8,
                );
                nonzero += usize::from(grad[i] != 0.0);
                checked += 1;
            }
            assert!(nonzero > 0, "{}: some sampled gradient is non-zero", t.name);
        }
        assert!(checked >= 300, "checked {checked} coordinates");
    }

    #[test]
    fn f32_path_matches_f64_path() {
        let mut rng = ChaCha8Rng::seed_from_u64(22);
        let batch = 8;
        let p32 = init_params(6);
        let x32 = inputs(&random_images(&mut rng, batch));
        let labels = random_labels(&mut rng, batch);
        let (p64, x64) = (to_f64(&p32), to_f64(&x32));

        let mut ws32 = Workspace::<f32>::new(batch);
        let mut ws64 = Workspace::<f64>::new(batch);
        let l32 = to_f64(forward(&p32, &x32, batch, &mut ws32));
        let l64 = forward(&p64, &x64, batch, &mut ws64).to_vec();
        assert_close("logits", &l32, &l64, 1e-4, 1e-5);

        let mut g32 = vec![0.0f32; PARAMS];
        let mut g64 = vec![0.0f64; PARAMS];
        let loss32 = loss_and_grad(&p32, &x32, &labels, &mut ws32, &mut g32);
        let loss64 = loss_and_grad(&p64, &x64, &labels, &mut ws64, &mut g64);
        assert_close("loss", &[loss32 as f64], &[loss64], 1e-5, 0.0);
        for t in SPEC.tensors {
            let (a, b) = (&g32[t.range()], &g64[t.range()]);
            let diff: f64 = a.iter().zip(b).map(|(&a, &b)| (a as f64 - b).powi(2)).sum();
            let norm: f64 = b.iter().map(|b| b * b).sum();
            let rel = (diff / norm).sqrt();
            assert!(
                norm > 0.0 && rel < 1e-4,
                "{}: relative error {rel:e}",
                t.name
            );
        }
    }

    #[test]
    fn forward_is_independent_of_batch_composition_and_workspace_reuse() {
        let mut rng = ChaCha8Rng::seed_from_u64(23);
        let params = init_params(7);
        let x = inputs(&random_images(&mut rng, 5));
        let labels = random_labels(&mut rng, 5);
        // A workspace that already ran a larger batch on other data.
        let mut big = Workspace::<f32>::new(9);
        let other = inputs(&random_images(&mut rng, 9));
        let mut g = vec![0.0f32; PARAMS];
        loss_and_grad(
            &params,
            &other,
            &random_labels(&mut rng, 9),
            &mut big,
            &mut g,
        );
        assert_eq!(big.capacity(), 9);

        let together = forward(&params, &x, 5, &mut big).to_vec();
        let mut small = Workspace::<f32>::new(1);
        for n in 0..5 {
            let one = forward(
                &params,
                &x[n * IMAGE_PIXELS..(n + 1) * IMAGE_PIXELS],
                1,
                &mut small,
            );
            assert_close(
                &format!("sample {n} logits"),
                &to_f64(one),
                &to_f64(&together[n * CLASSES..(n + 1) * CLASSES]),
                1e-5,
                1e-6,
            );
        }

        // Gradients from the reused workspace equal those from a fresh one.
        let mut g_reused = vec![0.0f32; PARAMS];
        let mut g_fresh = vec![0.0f32; PARAMS];
        let l_reused = loss_and_grad(&params, &x, &labels, &mut big, &mut g_reused);
        let l_fresh = loss_and_grad(&params, &x, &labels, &mut Workspace::new(5), &mut g_fresh);
        assert_eq!(l_reused, l_fresh);
        assert_eq!(g_reused, g_fresh);
        // A batch larger than the capacity grows the workspace.
        forward(&params, &other, 9, &mut small);
        assert_eq!(small.capacity(), 9);
    }

    #[test]
    fn evaluate_agrees_with_predict_across_chunks() {
        let mut rng = ChaCha8Rng::seed_from_u64(24);
        let n = EVAL_CHUNK + 44;
        let params = init_params(8);
        let images = random_images(&mut rng, n);
        let labels = random_labels(&mut rng, n);
        let e = evaluate(&params, &images, &labels);
        let (mut correct, mut loss) = (0, 0.0);
        for (img, &l) in images.chunks(IMAGE_PIXELS).zip(&labels) {
            let probs = predict(&params, img);
            let best = argmax(&probs).0;
            correct += usize::from(best == l as usize);
            loss -= (probs[l as usize] as f64).ln();
        }
        assert_close(
            "accuracy",
            &[e.accuracy],
            &[correct as f64 / n as f64],
            0.0,
            1e-12,
        );
        assert_close("loss", &[e.loss], &[loss / n as f64], 1e-5, 0.0);
        assert!(evaluate(&params, &[], &[]).loss.is_nan());
    }

    #[test]
    fn predict_returns_a_probability_distribution() {
        let mut rng = ChaCha8Rng::seed_from_u64(25);
        let params = init_params(9);
        let probs = predict(&params, &random_images(&mut rng, 1));
        assert!(probs.iter().all(|&p| p > 0.0 && p < 1.0));
        assert!((probs.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
}
