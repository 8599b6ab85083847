//! The wasm-bindgen surface of the CPU path's own measurements: which instruction set its
//! convolutions run on, their check against the `f64` reference (the unit tests cannot run
//! in a browser, so the wasm build checks itself there), and a per-op profile of a training
//! step, the same one `easel bench train --profile` prints natively.
//!
//! Kept beside `web.rs` rather than in it: these are diagnostics for the test and benchmark
//! pages, not part of the trainer the student pages drive.

use js_sys::{Array, Function, Object, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;

use crate::cpu::{direct, profile, simd::Isa};
use crate::data::Mnist;
use crate::model::train_flops_per_sample;
use crate::schedule::epoch_order;

fn js_err(e: impl std::fmt::Display) -> JsValue {
    js_sys::Error::new(&e.to_string()).into()
}

fn set(obj: &Object, key: &str, value: impl Into<JsValue>) {
    // Setting a property on a fresh plain object cannot fail.
    let _ = Reflect::set(obj, &key.into(), &value.into());
}

/// The instruction set the CPU path's convolutions run on in this module: `simd128`, or
/// `simd128-relaxed` in the module built with relaxed SIMD.
#[wasm_bindgen]
pub fn cpu_isa() -> String {
    Isa::best().name().to_string()
}

/// Runs the direct convolution kernels on every instruction set this module has against the
/// im2col + GEMM reference in `f64` (`cpu::direct::self_check`): LeNet's shapes and
/// `random_cases` random ones from `seed`. Returns the names of the instruction sets checked;
/// throws the first mismatch.
#[wasm_bindgen]
pub fn check_cpu_kernels(seed: u32, random_cases: u32) -> Result<Array, JsValue> {
    let isas = direct::self_check(u64::from(seed), random_cases as usize).map_err(js_err)?;
    Ok(isas.iter().map(|isa| JsValue::from(isa.name())).collect())
}

/// The time since the page started, in seconds, from `performance.now()` (in a window or a
/// worker alike; `std::time::Instant` does not exist on wasm32-unknown-unknown).
fn performance_now() -> Result<impl FnMut() -> f64, JsValue> {
    let perf = Reflect::get(&js_sys::global(), &"performance".into())?;
    let now: Function = Reflect::get(&perf, &"now".into())?.dyn_into()?;
    Ok(move || {
        now.call0(&perf)
            .ok()
            .and_then(|v| v.as_f64())
            .unwrap_or(0.0)
            / 1e3
    })
}

/// Times each layer operation of a CPU training step at `batch` on the training digits of
/// `data` (the bytes of `/data/mnist.bin`), as `cpu::profile::profile_step` does natively.
/// Returns `{isa, batch, steps, us_per_step, samples_per_s, gflops, ops: [{op, us_per_step,
/// share}]}`; `samples_per_s` and `gflops` are those of the profiled steps (timer calls
/// included).
#[wasm_bindgen]
pub fn profile_cpu_step(data: Uint8Array, batch: u32) -> Result<JsValue, JsValue> {
    let batch = batch.clamp(1, 1024) as usize;
    let Mnist { train, .. } = Mnist::from_bytes(&data.to_vec()).map_err(js_err)?;
    let order: Vec<u32> = (0..)
        .flat_map(|e| epoch_order(train.len(), 0, e))
        .take(batch * 16)
        .collect();
    let mut now = performance_now()?;
    let ops = profile::profile_step(&train.images, &train.labels, &order, batch, &mut now);
    let total: f64 = ops.iter().map(|(_, us)| us).sum();
    let rows: Array = ops
        .iter()
        .map(|(op, us)| {
            let row = Object::new();
            set(&row, "op", *op);
            set(&row, "us_per_step", *us);
            set(&row, "share", us / total);
            JsValue::from(row)
        })
        .collect();
    let samples_per_s = batch as f64 / (total * 1e-6);
    let out = Object::new();
    set(&out, "isa", cpu_isa());
    set(&out, "batch", batch as u32);
    set(&out, "steps", profile::PROFILE_STEPS as u32);
    set(&out, "us_per_step", total);
    set(&out, "samples_per_s", samples_per_s);
    set(
        &out,
        "gflops",
        samples_per_s * train_flops_per_sample() as f64 / 1e9,
    );
    set(&out, "ops", rows);
    Ok(out.into())
}
