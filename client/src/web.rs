//! The browser's view of the client: the only wasm-bindgen surface of Easel.
//!
//! A module Web Worker (`www/worker.js`) builds a [`WebTrainer`] from the bytes of
//! `/data/mnist.bin` and calls [`WebTrainer::train_steps`] in small chunks, so the page stays
//! responsive. The trainer runs on WebGPU when the browser offers it and on the CPU otherwise;
//! when a GPU was wanted but could not be had, [`WebTrainer::fallback_reason`] says why in
//! words a student understands. [`compare_gpu_with_cpu`] is a test helper: it trains the same
//! steps on both backends and reports how far apart the parameters end up.
//!
//! Every method that has to wait for the GPU returns a `Promise`. The state lives in an
//! `Rc<RefCell<..>>` that no borrow outlives an `await` on: while a call is waiting on the GPU,
//! the trainer is lent out of the state, and a second overlapping call is rejected with a
//! plain error instead of a panic.

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::{Array, Float32Array, Object, Promise, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{JsFuture, future_to_promise};

use crate::cpu::{self, CpuTrainer};
use crate::data::{Mnist, Split};
use crate::gpu::{Gpu, GpuTrainer};
use crate::model::{self, IMAGE_PIXELS};
use crate::schedule::{LrSchedule, batches_per_epoch, epoch_order};
use crate::{Sgd, Trainer};

/// Installs the panic hook that prints Rust panics to the browser console. It runs once, when
/// the module is instantiated.
#[wasm_bindgen(start)]
fn start() {
    console_error_panic_hook::set_once();
}

/// A model on one device: the GPU (through wgpu on WebGPU) or the CPU (this wasm module).
enum Engine {
    Cpu(Box<CpuTrainer>),
    Gpu(Box<GpuTrainer>),
}

impl Engine {
    fn trainer(&mut self) -> &mut dyn Trainer {
        match self {
            Engine::Cpu(t) => t.as_mut(),
            Engine::Gpu(t) => t.as_mut(),
        }
    }

    /// The current parameters, once every queued step has finished.
    async fn read_params(&mut self) -> Vec<f32> {
        match self {
            Engine::Cpu(t) => t.params_ref().to_vec(),
            Engine::Gpu(t) => t.read_params().await,
        }
    }

    /// Waits until the queued steps have finished and returns every loss not reported yet,
    /// in step order.
    async fn settle(&mut self) -> Vec<f32> {
        match self {
            Engine::Cpu(t) => t.poll_losses(),
            Engine::Gpu(t) => t.finish_async().await,
        }
    }
}

/// Everything a [`WebTrainer`] knows. `engine` is `None` while an async call has it lent out.
struct State {
    engine: Option<Engine>,
    backend: &'static str,
    adapter: String,
    fallback_reason: Option<String>,
    /// The 2,000 held-out digits [`WebTrainer::evaluate`] scores on.
    test: Split,
    /// Samples in the shard this trainer visits.
    shard_len: usize,
    seed: u64,
    batch: usize,
    lr: f32,
    schedule: LrSchedule,
    /// Steps in the whole run for the cosine schedule; 0 means the run never ends.
    total_steps: usize,
    /// Steps queued so far.
    step: usize,
    epoch: u64,
    /// The current epoch's sample order and how far into it the run is.
    order: Vec<u32>,
    cursor: usize,
    /// The parameters as last seen on the host, which [`WebTrainer::predict`] uses.
    host_params: Vec<f32>,
}

impl State {
    /// The shard indices and learning rates of the next `n` steps; advances the run.
    fn plan(&mut self, n: usize) -> Vec<(Vec<u32>, f32)> {
        let mut plan = Vec::with_capacity(n);
        for _ in 0..n {
            if self.total_steps > 0 && self.step >= self.total_steps {
                break;
            }
            if self.cursor >= self.order.len() {
                self.epoch += 1;
                self.order = epoch_order(self.shard_len, self.seed, self.epoch);
                self.cursor = 0;
            }
            let end = (self.cursor + self.batch).min(self.order.len());
            let lr = self.schedule.lr_at(self.lr, self.step, self.total_steps);
            plan.push((self.order[self.cursor..end].to_vec(), lr));
            self.cursor = end;
            self.step += 1;
        }
        plan
    }
}

/// Turns any displayable error into a JavaScript `Error`.
fn js_err(e: impl std::fmt::Display) -> JsValue {
    js_sys::Error::new(&e.to_string()).into()
}

/// Sets `key` on a plain JavaScript object.
fn set(obj: &Object, key: &str, value: impl Into<JsValue>) {
    Reflect::set(obj, &JsValue::from_str(key), &value.into())
        .expect("setting a field on a plain object");
}

/// Reads a property of a JavaScript value, or `undefined` if reading throws.
fn get(target: &JsValue, key: &str) -> JsValue {
    Reflect::get(target, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
}

/// Opens WebGPU and describes its adapter, or says in plain words why this page cannot use it.
///
/// The checks run in the order a student would have to fix them: the page's address (WebGPU
/// exists only in secure contexts), the browser, the GPU and its driver.
async fn open_gpu() -> Result<(Gpu, String), String> {
    let global = js_sys::global();
    let secure = get(&global, "isSecureContext").as_bool().unwrap_or(true);
    let gpu = get(&get(&global, "navigator"), "gpu");
    if gpu.is_undefined() || gpu.is_null() {
        return Err(if !secure {
            "No WebGPU: this page is not a secure context, because it was opened over plain \
             http:// from another computer. Open the https:// address (or http://localhost on \
             the computer running Easel) to train on the GPU."
                .to_string()
        } else {
            "No WebGPU: this browser has no navigator.gpu (WebGPU is missing or switched off). \
             A recent Chrome, Edge or Safari has it."
                .to_string()
        });
    }
    // Ask for an adapter ourselves first, so "no adapter" gets its own message.
    let request = get(&gpu, "requestAdapter")
        .dyn_into::<js_sys::Function>()
        .map_err(|_| "No WebGPU: navigator.gpu has no requestAdapter method.".to_string())?;
    let adapter = match request.call0(&gpu).map(|p| p.dyn_into::<Promise>()) {
        Ok(Ok(promise)) => JsFuture::from(promise).await.unwrap_or(JsValue::NULL),
        _ => JsValue::NULL,
    };
    if adapter.is_null() || adapter.is_undefined() {
        return Err(
            "WebGPU found no adapter: the browser has WebGPU but offers no GPU to it \
                    (the GPU or its driver is blocked, or there is none)."
                .to_string(),
        );
    }
    let gpu = Gpu::new()
        .await
        .map_err(|e| format!("WebGPU could not start the GPU: {e}."))?;
    Ok((gpu, describe_adapter(&adapter)))
}

/// A readable name for a WebGPU adapter from its `info`, for example
/// `google swiftshader (WebGPU, software)`. Browsers often leave some fields empty.
fn describe_adapter(adapter: &JsValue) -> String {
    let info = get(adapter, "info");
    let words: Vec<String> = ["vendor", "architecture", "device", "description"]
        .iter()
        .filter_map(|key| get(&info, key).as_string())
        .map(|w| w.trim().to_string())
        .filter(|w| !w.is_empty())
        .fold(Vec::new(), |mut seen, w| {
            if !seen.contains(&w) {
                seen.push(w);
            }
            seen
        });
    let software = get(&info, "isFallbackAdapter").as_bool() == Some(true);
    let kind = if software {
        "WebGPU, software"
    } else {
        "WebGPU"
    };
    if words.is_empty() {
        format!("unnamed adapter ({kind})")
    } else {
        format!("{} ({kind})", words.join(" "))
    }
}

/// Which backend a page asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Preference {
    Gpu,
    Cpu,
    Auto,
}

impl Preference {
    fn parse(s: &str) -> Result<Preference, JsValue> {
        match s.to_ascii_lowercase().as_str() {
            "gpu" => Ok(Preference::Gpu),
            "cpu" => Ok(Preference::Cpu),
            "auto" | "" => Ok(Preference::Auto),
            other => Err(js_err(format!(
                "unknown backend \"{other}\": use \"gpu\", \"cpu\" or \"auto\""
            ))),
        }
    }
}

/// Parses and checks the MNIST file the relay serves.
fn parse_data(data: &Uint8Array) -> Result<Mnist, JsValue> {
    Mnist::from_bytes(&data.to_vec()).map_err(js_err)
}

/// One worker's model and data in the browser, training on WebGPU or on the CPU.
///
/// Build it with `await WebTrainer.create(bytes, "auto", seed, batch, lr, epochs)`.
#[wasm_bindgen]
pub struct WebTrainer {
    state: Rc<RefCell<State>>,
}

#[wasm_bindgen]
impl WebTrainer {
    /// Builds a trainer from the bytes of `/data/mnist.bin` (checked against the pinned
    /// SHA-256) and resolves to it.
    ///
    /// `backend` is `"gpu"`, `"cpu"` or `"auto"`; `"gpu"` and `"auto"` both fall back to the
    /// CPU when WebGPU cannot be used, and record why. `seed` fixes the initial parameters and
    /// the sample order, `batch` is the number of samples per step and `lr` the base learning
    /// rate. With `epochs`, the learning rate follows a cosine schedule down to zero over that
    /// many passes over the training digits and the run ends there; without it, the rate stays
    /// at `lr` and the run never ends.
    pub async fn create(
        data: Uint8Array,
        backend: String,
        seed: u32,
        batch: u32,
        lr: f32,
        epochs: Option<u32>,
    ) -> Result<WebTrainer, JsValue> {
        let preference = Preference::parse(&backend)?;
        if batch == 0 || batch > 1024 {
            return Err(js_err(format!(
                "batch {batch} is not between 1 and 1024 samples"
            )));
        }
        if !(lr.is_finite() && lr > 0.0) {
            return Err(js_err(format!(
                "learning rate {lr} is not a positive number"
            )));
        }
        let mnist = parse_data(&data)?;
        drop(data);
        let seed = u64::from(seed);
        let batch = batch as usize;
        let params = model::init_params(seed);
        let Mnist { train, test } = mnist;

        let mut fallback_reason = None;
        let gpu = if preference == Preference::Cpu {
            None
        } else {
            match open_gpu().await {
                Ok(opened) => Some(opened),
                Err(reason) => {
                    web_sys::console::warn_1(&JsValue::from_str(&reason));
                    fallback_reason = Some(reason);
                    None
                }
            }
        };
        let mut adapter = None;
        let gpu_trainer = gpu.and_then(|(gpu, name)| {
            match GpuTrainer::new(
                &gpu,
                &train.images,
                &train.labels,
                &params,
                Sgd::default(),
                batch,
            ) {
                Ok(t) => {
                    adapter = Some(name);
                    Some(t)
                }
                Err(e) => {
                    let reason = format!("The GPU cannot hold this model's data: {e}.");
                    web_sys::console::warn_1(&JsValue::from_str(&reason));
                    fallback_reason = Some(reason);
                    None
                }
            }
        });
        let mut engine = match gpu_trainer {
            Some(t) => Engine::Gpu(Box::new(t)),
            None => Engine::Cpu(Box::new(CpuTrainer::new(
                &train.images,
                &train.labels,
                &params,
                Sgd::default(),
                batch,
            ))),
        };
        let backend = engine.trainer().backend();
        let adapter = adapter.unwrap_or_else(|| engine.trainer().adapter());
        let shard_len = train.len();
        let (schedule, total_steps) = match epochs {
            Some(e) if e > 0 => (
                LrSchedule::Cosine,
                batches_per_epoch(shard_len, batch) * e as usize,
            ),
            _ => (LrSchedule::Constant, 0),
        };
        Ok(WebTrainer {
            state: Rc::new(RefCell::new(State {
                engine: Some(engine),
                backend,
                adapter,
                fallback_reason,
                test,
                shard_len,
                seed,
                batch,
                lr,
                schedule,
                total_steps,
                step: 0,
                epoch: 0,
                order: epoch_order(shard_len, seed, 0),
                cursor: 0,
                host_params: params,
            })),
        })
    }

    /// `"gpu"` or `"cpu"`: the backend that actually trains.
    pub fn backend(&self) -> String {
        self.state.borrow().backend.to_string()
    }

    /// The device that trains, for example the WebGPU adapter's name.
    pub fn adapter(&self) -> String {
        self.state.borrow().adapter.clone()
    }

    /// Why a GPU was asked for but the CPU trains, in plain words; `undefined` when the
    /// backend is the one that was asked for.
    pub fn fallback_reason(&self) -> Option<String> {
        self.state.borrow().fallback_reason.clone()
    }

    /// Compute dispatches the last training step issued on the GPU; 0 on the CPU and before
    /// the first step.
    pub fn dispatches_per_step(&self) -> u32 {
        match &self.state.borrow().engine {
            Some(Engine::Gpu(t)) => t.dispatches_per_step(),
            _ => 0,
        }
    }

    /// Waits for the GPU (readbacks) inside the last training step; 0 on the CPU. Losses and
    /// parameters come back between steps, so this stays 0.
    pub fn readbacks_per_step(&self) -> u32 {
        match &self.state.borrow().engine {
            Some(Engine::Gpu(t)) => t.readbacks_per_step(),
            _ => 0,
        }
    }

    /// Samples per step.
    pub fn batch(&self) -> u32 {
        self.state.borrow().batch as u32
    }

    /// Steps taken so far.
    pub fn step(&self) -> f64 {
        self.state.borrow().step as f64
    }

    /// Steps in the whole run; 0 when the run has no end.
    pub fn total_steps(&self) -> f64 {
        self.state.borrow().total_steps as f64
    }

    /// Passes over the training digits so far, as a fraction (1.5 is halfway through the
    /// second epoch).
    pub fn epochs_done(&self) -> f64 {
        let s = self.state.borrow();
        s.epoch as f64 + s.cursor as f64 / s.shard_len.max(1) as f64
    }

    /// The learning rate the next step will use.
    pub fn current_lr(&self) -> f32 {
        let s = self.state.borrow();
        s.schedule.lr_at(s.lr, s.step, s.total_steps)
    }

    /// Whether a run with a fixed number of epochs has taken all its steps.
    pub fn finished(&self) -> bool {
        let s = self.state.borrow();
        s.total_steps > 0 && s.step >= s.total_steps
    }

    /// Runs the next `n` steps of the run (fewer if it ends) and resolves to a `Float32Array`
    /// of the mean batch losses that finished, in step order. On the GPU a loss may arrive
    /// with a later call; every loss arrives exactly once.
    pub fn train_steps(&self, n: u32) -> Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let (mut engine, plan) = {
                let mut s = state.borrow_mut();
                let engine = s.engine.take().ok_or_else(busy)?;
                (engine, s.plan(n as usize))
            };
            {
                let trainer = engine.trainer();
                for (indices, lr) in &plan {
                    trainer.step(indices, *lr);
                }
            }
            let losses = engine.settle().await;
            let mut s = state.borrow_mut();
            if let Engine::Cpu(t) = &engine {
                s.host_params.copy_from_slice(t.params_ref());
            }
            s.engine = Some(engine);
            Ok(Float32Array::from(losses.as_slice()).into())
        })
    }

    /// Resolves to the current parameters as a `Float32Array` (in the layout of
    /// `easel model`), once every queued step has finished.
    pub fn params(&self) -> Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let params = read_params(&state).await?;
            Ok(Float32Array::from(params.as_slice()).into())
        })
    }

    /// Replaces the parameters (for example with the relay's average). With `reset_state`
    /// the optimizer state (momentum) starts over; by default it is kept.
    pub fn set_params(
        &self,
        params: Float32Array,
        reset_state: Option<bool>,
    ) -> Result<(), JsValue> {
        let params = params.to_vec();
        if params.len() != model::PARAMS {
            return Err(js_err(format!(
                "set_params: {} numbers given, the model has {}",
                params.len(),
                model::PARAMS
            )));
        }
        let mut s = self.state.borrow_mut();
        let engine = s.engine.as_mut().ok_or_else(busy)?;
        engine
            .trainer()
            .set_params(&params, reset_state.unwrap_or(false));
        s.host_params = params;
        Ok(())
    }

    /// Resolves to `{accuracy, loss, digits}`: the share of the 2,000 test digits the current
    /// model classifies correctly (0 to 1), its mean cross-entropy loss on them (in nats) and
    /// the number of test digits. It runs on the CPU and takes a moment.
    pub fn evaluate(&self) -> Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let params = read_params(&state).await?;
            let s = state.borrow();
            let e = cpu::evaluate(&params, &s.test.images, &s.test.labels);
            let out = Object::new();
            set(&out, "accuracy", e.accuracy);
            set(&out, "loss", e.loss);
            set(&out, "digits", s.test.len() as f64);
            Ok(out.into())
        })
    }

    /// Class probabilities (10 numbers that sum to 1) for one 28 x 28 image of raw pixels,
    /// 0 for background and 255 for full ink. It uses the parameters as last seen on the host:
    /// on the CPU that is always the current model; on the GPU it is the model as of the last
    /// `params()`, `evaluate()` or `set_params()`.
    pub fn predict(&self, pixels: Uint8Array) -> Result<Float32Array, JsValue> {
        let pixels = pixels.to_vec();
        if pixels.len() != IMAGE_PIXELS {
            return Err(js_err(format!(
                "predict: {} pixels given, an image has {IMAGE_PIXELS}",
                pixels.len()
            )));
        }
        let s = self.state.borrow();
        Ok(Float32Array::from(
            cpu::predict(&s.host_params, &pixels).as_slice(),
        ))
    }
}

/// The error an overlapping call gets.
fn busy() -> JsValue {
    js_err("the trainer is busy: wait for the previous call to finish before making another")
}

/// Reads the parameters with the engine lent out of the state, and remembers them on the host.
async fn read_params(state: &Rc<RefCell<State>>) -> Result<Vec<f32>, JsValue> {
    let mut engine = state.borrow_mut().engine.take().ok_or_else(busy)?;
    let params = engine.read_params().await;
    let mut s = state.borrow_mut();
    s.engine = Some(engine);
    s.host_params.clone_from(&params);
    Ok(params)
}

/// Trains the same `steps` steps on WebGPU and on the CPU, from the same initial parameters
/// (`seed`) over the same batches of `batch` training digits (32 if left out), and resolves to
/// `{max_abs_diff, rel_l2_diff, moved, adapter, steps, batch, lr, gpu_losses, cpu_losses}`.
///
/// `rel_l2_diff` is `|gpu - cpu| / |cpu|` over the final parameter vectors and `moved` is
/// `|cpu - initial| / |initial|`, which shows that the steps changed the model at all. It
/// rejects with the plain-words reason when WebGPU is not available. The browser test uses it.
#[wasm_bindgen]
pub async fn compare_gpu_with_cpu(
    data: Uint8Array,
    steps: u32,
    seed: u32,
    batch: Option<u32>,
) -> Result<JsValue, JsValue> {
    const LR: f32 = 0.05;
    let batch = batch.unwrap_or(32).clamp(1, 1024) as usize;
    let Mnist { train, .. } = parse_data(&data)?;
    let (gpu, adapter) = open_gpu().await.map_err(js_err)?;
    let seed = u64::from(seed);
    let initial = model::init_params(seed);
    let mut gpu_trainer = GpuTrainer::new(
        &gpu,
        &train.images,
        &train.labels,
        &initial,
        Sgd::default(),
        batch,
    )
    .map_err(js_err)?;
    let mut cpu_trainer = CpuTrainer::new(
        &train.images,
        &train.labels,
        &initial,
        Sgd::default(),
        batch,
    );
    let order: Vec<u32> = (0..)
        .flat_map(|epoch| epoch_order(train.len(), seed, epoch))
        .take(steps as usize * batch)
        .collect();
    for indices in order.chunks(batch) {
        gpu_trainer.step(indices, LR);
        cpu_trainer.step(indices, LR);
    }
    let gpu_losses = gpu_trainer.finish_async().await;
    let gpu_params = gpu_trainer.read_params().await;
    let cpu_params = cpu_trainer.params();
    let cpu_losses = cpu_trainer.finish();

    let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
    let diff = norm(
        &mut gpu_params
            .iter()
            .zip(&cpu_params)
            .map(|(&g, &c)| f64::from(g - c)),
    );
    let max_abs_diff = gpu_params
        .iter()
        .zip(&cpu_params)
        .map(|(&g, &c)| f64::from((g - c).abs()))
        .fold(0.0, f64::max);
    let cpu_norm = norm(&mut cpu_params.iter().map(|&c| f64::from(c)));
    let moved = norm(
        &mut cpu_params
            .iter()
            .zip(&initial)
            .map(|(&c, &p)| f64::from(c - p)),
    );
    let initial_norm = norm(&mut initial.iter().map(|&p| f64::from(p)));

    let out = Object::new();
    set(&out, "max_abs_diff", max_abs_diff);
    set(&out, "rel_l2_diff", diff / cpu_norm);
    set(&out, "moved", moved / initial_norm);
    set(&out, "adapter", adapter);
    set(&out, "steps", steps);
    set(&out, "batch", batch as u32);
    set(&out, "lr", LR);
    set(
        &out,
        "gpu_losses",
        gpu_losses
            .iter()
            .map(|&l| JsValue::from(l))
            .collect::<Array>(),
    );
    set(
        &out,
        "cpu_losses",
        cpu_losses
            .iter()
            .map(|&l| JsValue::from(l))
            .collect::<Array>(),
    );
    Ok(out.into())
}

/// Floating-point operations one training sample costs (forward, backward, weight gradients),
/// for reporting GFLOP/s.
#[wasm_bindgen]
pub fn train_flops_per_sample() -> f64 {
    model::train_flops_per_sample() as f64
}
