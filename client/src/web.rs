//! The browser's view of the client: the only wasm-bindgen surface of Easel.
//!
//! - [`WebSession`]: a room worker. The student page's module Web Worker (`www/worker.js`)
//!   owns the WebSocket and hands every received message to [`WebSession::on_message`],
//!   which answers with what happened (a plain object); [`WebSession::round`] trains one
//!   round and resolves to the `Push` to send. The session logic is `crate::worker`'s, the
//!   same as the native bots'. On the GPU a round is `train_steps`, an awaited read of the
//!   parameters and `finish_round`; when the GPU is lost, the session rebuilds its trainer
//!   on the CPU from the worker's model and goes on.
//! - [`WebTrainer`]: one model training alone (the single-tab page `www/solo.html`), in
//!   small chunks of [`WebTrainer::train_steps`].
//! - [`prepare_digit`]: a drawing made MNIST-like ([`crate::digit`]) for the predictions.
//!
//! Both run on WebGPU when the browser offers it and on the CPU otherwise; when a GPU was
//! wanted but could not be had, `fallback_reason` says why in words a student understands.
//! A `WebSession` in `auto` does not take the GPU on trust: before its first round it times
//! a few real steps of the room's batch on both backends and trains on the faster (a
//! software adapter such as SwiftShader is far slower than the CPU path), and times them
//! again when its rounds fall below half the speed it chose by; the teacher's `UseBackend`
//! (or `?backend=`) forces one. The page's `stats().device` and the relay's Device message
//! say which and why, with both figures.
//! `cpu_isa`, `check_cpu_kernels` and `profile_cpu_step` are the CPU path's diagnostics for
//! the test and benchmark pages. [`compare_gpu_with_cpu`] is a test helper: it trains the same steps on both backends and
//! reports how far apart the parameters end up.
//!
//! Every method that has to wait for the GPU returns a `Promise`. The state lives in an
//! `Rc<RefCell<..>>` that no borrow outlives an `await` on: while a call is waiting on the GPU,
//! the trainer is lent out of the state, and a second overlapping call is rejected with a
//! plain error instead of a panic.

use std::cell::RefCell;
use std::rc::Rc;

use easel_protocol::message::{self, Message, QuestionPhase, Vote};
use easel_protocol::{
    Backend, BackendChoice, ChosenBy, ClientKind, Control, DeviceReport, Limits, Outcome, Resume,
    ResumeToken,
};
use js_sys::{Array, Float32Array, Object, Promise, Reflect, Uint8Array};
use serde::Serialize;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{JsFuture, future_to_promise};

use crate::cpu::{self, CpuTrainer};
use crate::data::{Mnist, Split};
use crate::digit;
use crate::gpu::{Gpu, GpuLost, GpuTrainer};
use crate::model::{self, IMAGE_PIXELS};
use crate::schedule::{Cursor, LrSchedule, batches_per_epoch, epoch_order};
use crate::worker::{self, Event, Start, Worker};
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
    /// A trainer on `images`/`labels` from `params`: on `gpu` when there is one and it can
    /// hold the data, else on the CPU. Returns the reason when a GPU was given but not used.
    fn build(
        gpu: Option<&Gpu>,
        images: &[u8],
        labels: &[u8],
        params: &[f32],
        sgd: Sgd,
        batch: usize,
    ) -> (Engine, Option<String>) {
        let reason = match gpu.map(|g| GpuTrainer::new(g, images, labels, params, sgd, batch)) {
            Some(Ok(t)) => return (Engine::Gpu(Box::new(t)), None),
            Some(Err(e)) => Some(format!("The GPU cannot hold this model's data: {e}.")),
            None => None,
        };
        let cpu = CpuTrainer::new(images, labels, params, sgd, batch);
        (Engine::Cpu(Box::new(cpu)), reason)
    }

    fn trainer(&mut self) -> &mut dyn Trainer {
        match self {
            Engine::Cpu(t) => t.as_mut(),
            Engine::Gpu(t) => t.as_mut(),
        }
    }

    fn trainer_ref(&self) -> &dyn Trainer {
        match self {
            Engine::Cpu(t) => t.as_ref(),
            Engine::Gpu(t) => t.as_ref(),
        }
    }

    /// Why the GPU this engine trains on was lost, once it has been.
    fn lost(&self) -> Option<GpuLost> {
        match self {
            Engine::Cpu(_) => None,
            Engine::Gpu(t) => t.gpu().lost(),
        }
    }

    /// The current parameters, once every queued step has finished.
    async fn read_params(&mut self) -> Result<Vec<f32>, GpuLost> {
        match self {
            Engine::Cpu(t) => Ok(t.params_ref().to_vec()),
            Engine::Gpu(t) => t.read_params().await,
        }
    }

    /// Waits until the queued steps have finished and returns every loss not reported yet,
    /// in step order.
    async fn settle(&mut self) -> Result<Vec<f32>, GpuLost> {
        match self {
            Engine::Cpu(t) => Ok(t.poll_losses()),
            Engine::Gpu(t) => t.finish_async().await,
        }
    }
}

/// The session's worker holds an `Engine`: a [`Trainer`] that is also, on the GPU, read
/// asynchronously between `train_steps` and `finish_round`. On the GPU, `params` and
/// `finish` would block, which the web cannot do: `run_round` reads through
/// [`Engine::settle`] and [`Engine::read_params`] instead, and calls `Worker::local_round`
/// (which uses them) only on the CPU.
impl Trainer for Engine {
    fn backend(&self) -> &'static str {
        self.trainer_ref().backend()
    }
    fn adapter(&self) -> String {
        self.trainer_ref().adapter()
    }
    fn set_params(&mut self, params: &[f32], reset_state: bool) {
        self.trainer().set_params(params, reset_state);
    }
    fn params(&mut self) -> Vec<f32> {
        self.trainer().params()
    }
    fn step(&mut self, indices: &[u32], lr: f32) {
        self.trainer().step(indices, lr);
    }
    fn poll_losses(&mut self) -> Vec<f32> {
        self.trainer().poll_losses()
    }
    fn finish(&mut self) -> Vec<f32> {
        self.trainer().finish()
    }
    fn step_counters(&self) -> Option<(u32, u32)> {
        self.trainer_ref().step_counters()
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
    batch: usize,
    lr: f32,
    schedule: LrSchedule,
    /// Steps in the whole run for the cosine schedule; 0 means the run never ends.
    total_steps: usize,
    /// Steps queued so far.
    step: usize,
    /// Where the run is in the shard's epochs.
    cursor: Cursor,
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
            let lr = self.schedule.lr_at(self.lr, self.step, self.total_steps);
            plan.push((self.cursor.next_batch(self.batch).to_vec(), lr));
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
    let software = get(&info, "isFallbackAdapter").as_bool() == Some(true)
        || words.iter().any(|w| is_software_name(w));
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

/// Whether an adapter's name is that of a software GPU: the CPU emulating one (SwiftShader,
/// llvmpipe, lavapipe, a "software" or "basic render" adapter).
fn is_software_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "software",
        "swiftshader",
        "llvmpipe",
        "lavapipe",
        "basic render",
    ]
    .iter()
    .any(|w| name.contains(w))
}

/// Which backend a page asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Preference {
    Gpu,
    Cpu,
    Auto,
}

impl From<Preference> for BackendChoice {
    fn from(p: Preference) -> BackendChoice {
        match p {
            Preference::Gpu => BackendChoice::Gpu,
            Preference::Cpu => BackendChoice::Cpu,
            Preference::Auto => BackendChoice::Auto,
        }
    }
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

/// Prints a warning to the browser's console.
fn warn(text: &str) {
    web_sys::console::warn_1(&JsValue::from_str(text));
}

/// Opens WebGPU unless `preference` is the CPU; returns it with its adapter's name, or
/// the reason (also printed to the console) why a wanted GPU could not be had.
async fn open_preferred(preference: Preference) -> (Option<(Gpu, String)>, Option<String>) {
    if preference == Preference::Cpu {
        return (None, None);
    }
    match open_gpu().await {
        Ok(opened) => (Some(opened), None),
        Err(reason) => {
            warn(&reason);
            (None, Some(reason))
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

        let (gpu, mut fallback_reason) = open_preferred(preference).await;
        let (engine, reason) = Engine::build(
            gpu.as_ref().map(|(g, _)| g),
            &train.images,
            &train.labels,
            &params,
            Sgd::default(),
            batch,
        );
        fallback_reason = fallback_reason.or(reason.inspect(|r| warn(r)));
        let backend = engine.trainer_ref().backend();
        let adapter = match (&engine, gpu) {
            (Engine::Gpu(_), Some((_, name))) => name,
            _ => engine.trainer_ref().adapter(),
        };
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
                batch,
                lr,
                schedule,
                total_steps,
                step: 0,
                cursor: Cursor::new(shard_len, seed),
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
        s.cursor.progress()
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
            let losses = losses.map_err(|e| js_err(format!("The GPU was lost: {e}")))?;
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
    let params = params.map_err(|e| js_err(format!("The GPU was lost: {e}")))?;
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
    let gpu_losses = gpu_trainer.finish_async().await.map_err(js_err)?;
    let gpu_params = gpu_trainer.read_params().await.map_err(js_err)?;
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

// ---- The room worker ----------------------------------------------------------------------

/// Everything a [`WebSession`] knows. `worker` is `None` before the first `Welcome` and while
/// a round has it lent out.
struct SessionState {
    worker: Option<Worker<Engine>>,
    /// Whether a `Welcome` made the worker (to tell "not joined" from "busy").
    joined: bool,
    /// The GPU new trainers are built on; `None` on the CPU, and after the GPU was lost.
    gpu: Option<Gpu>,
    /// The WebGPU adapter's description while `gpu` is open.
    gpu_name: String,
    /// Whether opening WebGPU was tried since the last time it could have changed (the
    /// teacher asked for the GPU again): a failed try is not repeated every round.
    gpu_tried: bool,
    backend: &'static str,
    adapter: String,
    fallback_reason: Option<String>,
    /// The backend the page's address asks for (`?backend=`, `auto` by default).
    page_choice: BackendChoice,
    /// The backend the teacher asked for, which overrides the page's while it is set.
    teacher_choice: Option<BackendChoice>,
    /// The backend must be decided (timed, or switched) before the next round: at the first
    /// round, after the teacher's choice, and when the speed fell (see [`Probe`]).
    decision_due: bool,
    /// The last decision, which the page shows and the relay is told of.
    decision: Option<Decision>,
    /// The last decision was not yet sent to the relay ([`WebSession::device_message`]).
    report_due: bool,
    /// The speeds of the last timing, and how recent rounds compare with them.
    probe: Probe,
    /// The training split the relay's shards index.
    train: Split,
    /// The seed of the epoch orders and QSGD rounding (mixed with the worker id).
    seed: u64,
    /// The worker id the last Join asked to resume.
    requested: Option<u64>,
    /// The id and resume token of the last Welcome: what a reconnection resumes with.
    resume: Option<Resume>,
    /// Welcomes received: the first join and every reconnection.
    welcomes: u32,
    /// Bytes of the Join and Welcome messages, which the worker's own counters miss.
    handshake_up: u64,
    handshake_down: u64,
}

/// How long each backend is timed, not counting its warm-up step, in milliseconds.
const PROBE_BUDGET_MS: f64 = 500.0;
/// The most steps a timing takes on one backend (a fast device ends here, well inside the
/// budget).
const PROBE_MAX_STEPS: usize = 48;
/// A round slower than this share of the speed the chosen backend was timed at counts as
/// slow; [`SLOW_ROUNDS`] slow rounds in a row time both backends again.
const SLOW_SHARE: f64 = 0.5;
const SLOW_ROUNDS: u32 = 3;
/// The least time between two timings, in milliseconds (a busy machine must not spend its
/// time timing).
const PROBE_EVERY_MS: f64 = 30_000.0;

/// The last timing of both backends, and the rounds since.
#[derive(Clone, Copy, Debug, Default)]
struct Probe {
    /// Samples per second measured on each, 0 when not measured.
    gpu: f64,
    cpu: f64,
    /// When it was taken (`performance.now()`, ms); `None` before the first.
    at_ms: Option<f64>,
    /// How long it took, both backends with their warm-up steps and the trainer built
    /// for it, in milliseconds.
    took_ms: f64,
    /// Timings so far (the page leaves each one's time out of its training speed).
    count: u32,
    /// Rounds in a row slower than [`SLOW_SHARE`] of the chosen backend's speed.
    slow_rounds: u32,
}

/// The backend a tab trains on and why: what the page shows and the relay is told.
#[derive(Clone, Debug)]
struct Decision {
    backend: Backend,
    chosen_by: ChosenBy,
    gpu_samples_per_s: f64,
    cpu_samples_per_s: f64,
    software_gpu: bool,
    adapter: String,
    why: String,
}

/// The milliseconds of `performance.now()` (of the page or the Web Worker), or of the
/// wall clock where there is no `performance`.
fn now_ms() -> f64 {
    let perf = get(&js_sys::global(), "performance");
    get(&perf, "now")
        .dyn_into::<js_sys::Function>()
        .ok()
        .and_then(|now| now.call0(&perf).ok())
        .and_then(|t| t.as_f64())
        .unwrap_or_else(js_sys::Date::now)
}

/// A speed for people: `9,600` (whole samples, thousands grouped).
fn grouped(x: f64) -> String {
    let n = x.round().max(0.0) as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// "GPU 480 digits/s, CPU 9,600 digits/s" for the figures that were measured.
fn figures(gpu: f64, cpu: f64) -> Option<String> {
    let parts: Vec<String> = [("GPU", gpu), ("CPU", cpu)]
        .iter()
        .filter(|(_, v)| *v > 0.0)
        .map(|(name, v)| format!("{name} {} digits/s", grouped(*v)))
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// The sentence for a measured choice: both figures, the winner, and by how much; a
/// software adapter is named as such.
fn measured_why(gpu: f64, cpu: f64, software: bool, adapter: &str) -> String {
    let on_gpu = gpu > cpu;
    let (fast, slow) = if on_gpu { (gpu, cpu) } else { (cpu, gpu) };
    let ratio = fast / slow;
    let ratio = if ratio >= 10.0 {
        format!("{ratio:.0}x")
    } else {
        format!("{ratio:.1}x")
    };
    let mut why = format!(
        "GPU {} digits/s, CPU {} digits/s: training on the {}, {ratio} faster on this device.",
        grouped(gpu),
        grouped(cpu),
        if on_gpu { "GPU" } else { "CPU" },
    );
    if software {
        // The adapter's name without describe_adapter's "(WebGPU, software)".
        let name = adapter.split(" (WebGPU").next().unwrap_or(adapter);
        why.push_str(&format!(
            " This GPU is a software adapter ({name}): the CPU imitating a GPU."
        ));
    }
    why
}

/// What a received message meant, for the page (`kind` tells which).
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum SessionEvent {
    /// The relay admitted this worker (`resumed`: under the id the Join asked for).
    Welcome {
        worker_id: u64,
        /// The secret that resumes this worker, 32 hex digits (the page keeps it with the
        /// id in `sessionStorage`).
        resume_token: String,
        resumed: bool,
        center_version: u64,
        shard: usize,
    },
    /// The relay's answer to the push in flight.
    Ack {
        accepted: bool,
        tau: Option<u32>,
        alpha_eff: Option<f32>,
        code: Option<u16>,
        message: Option<String>,
    },
    /// A new center: the worker pulled toward it, or took it after a refusal (`resynced`).
    Center { version: u64, resynced: bool },
    /// The teacher paused, resumed, delayed or re-set this worker.
    Control {
        action: &'static str,
        delay_ms: Option<u32>,
    },
    /// The relay reported an error (before a Welcome it means the Join was refused).
    Error {
        code: u16,
        message: String,
        joined: bool,
    },
    /// The teacher chose this tab's backend (`auto`, `gpu` or `cpu`); it applies from the
    /// next round.
    Backend { choice: &'static str },
    /// The lesson's question as this tab sees it: `phase` `"open"` (the student may vote),
    /// `"closed"` (the runs are on), `"reveal"` (`supported` and `outcome` say what was
    /// measured) or `"over"` (put it away); `voted` is this tab's answer.
    Question {
        lesson: u32,
        phase: &'static str,
        text: String,
        answers: Vec<String>,
        voted: Option<u8>,
        supported: Option<u8>,
        outcome: String,
    },
}

/// What the student page shows, as `WebSession::stats` returns it.
#[derive(Serialize)]
struct SessionStats {
    backend: &'static str,
    adapter: String,
    fallback_reason: Option<String>,
    joined: bool,
    worker_id: Option<u64>,
    center_version: Option<u64>,
    welcomes: u32,
    pushes: u64,
    accepted: u64,
    refused: u64,
    steps: u64,
    samples: u64,
    last_tau: Option<u32>,
    mean_tau: Option<f64>,
    last_alpha_eff: Option<f32>,
    mean_alpha_eff: Option<f64>,
    bytes_up: u64,
    bytes_down: u64,
    distance_to_center: Option<f32>,
    last_loss: Option<f32>,
    relay_errors: u64,
    paused: bool,
    delay_ms: u32,
    batch: u32,
    local_steps: u32,
    /// The room's strategy name (`easgd`, `fedavg`, ..., `swarm`): the page words its
    /// numbers after it (under SwarmSGD there is no center).
    strategy: Option<&'static str>,
    /// Which backend trains and why, with the measured speeds; `null` until decided.
    device: Option<DeviceView>,
}

/// The page's view of a [`Decision`].
#[derive(Serialize)]
struct DeviceView {
    backend: &'static str,
    /// `measured`, `only_cpu`, `page` or `teacher`.
    chosen_by: &'static str,
    gpu_samples_per_s: Option<f64>,
    cpu_samples_per_s: Option<f64>,
    software_gpu: bool,
    why: String,
    /// How long the last timing of both backends took, in milliseconds; `null` before one.
    timing_ms: Option<f64>,
    /// Timings so far.
    timings: u32,
    /// The teacher's choice (`auto`, `gpu`, `cpu`), `null` when the teacher made none.
    teacher_choice: Option<&'static str>,
    /// The page's own (`?backend=`).
    page_choice: &'static str,
}

/// A `chosen_by`'s name.
fn chosen_by_name(c: ChosenBy) -> &'static str {
    match c {
        ChosenBy::Measured => "measured",
        ChosenBy::OnlyCpu => "only_cpu",
        ChosenBy::Page => "page",
        ChosenBy::Teacher => "teacher",
    }
}

/// A JavaScript value from a serde value; `None` becomes `null`.
fn to_js<T: Serialize>(value: &T) -> Result<JsValue, JsValue> {
    value
        .serialize(&serde_wasm_bindgen::Serializer::new().serialize_missing_as_null(true))
        .map_err(js_err)
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn truncated(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// How the CPU backend describes itself before a trainer exists.
fn cpu_adapter() -> String {
    "this browser's CPU (WebAssembly, 1 thread)".to_string()
}

/// A finite number, or `None`.
fn finite(x: f32) -> Option<f32> {
    x.is_finite().then_some(x)
}

/// One browser tab as a worker of a room, on WebGPU or on the CPU.
///
/// Build it with `await WebSession.create(bytes, "auto", seed)`, send
/// `join_message(room, resumeId, resumeToken, fresh)` on a fresh WebSocket, hand every binary message to
/// `on_message`, and while `ready()`, `await round()` and send the bytes it resolves to
/// (after `delay_ms()`). Calls must not overlap: a call made while `round()` is pending is
/// rejected with a plain error.
#[wasm_bindgen]
pub struct WebSession {
    state: Rc<RefCell<SessionState>>,
}

#[wasm_bindgen]
impl WebSession {
    /// Checks the bytes of `/data/mnist.bin` and opens WebGPU unless `backend` is `"cpu"`.
    /// `"gpu"` trains on it when the page can have it, on the CPU (saying why) otherwise;
    /// `"auto"` times both before the first round and trains on the faster; `"cpu"` trains
    /// on the CPU. Another name is an error.
    pub async fn create(
        data: Uint8Array,
        backend: String,
        seed: u32,
    ) -> Result<WebSession, JsValue> {
        let preference = Preference::parse(&backend)?;
        let Mnist { train, .. } = parse_data(&data)?;
        drop(data);
        let (gpu, fallback_reason) = open_preferred(preference).await;
        let (backend, adapter) = match &gpu {
            Some((_, name)) => ("gpu", name.clone()),
            None => ("cpu", cpu_adapter()),
        };
        let gpu_name = gpu.as_ref().map(|(_, n)| n.clone()).unwrap_or_default();
        Ok(WebSession {
            state: Rc::new(RefCell::new(SessionState {
                worker: None,
                joined: false,
                gpu_tried: preference != Preference::Cpu,
                gpu: gpu.map(|(g, _)| g),
                gpu_name,
                backend,
                adapter,
                fallback_reason,
                page_choice: preference.into(),
                teacher_choice: None,
                decision_due: true,
                decision: None,
                report_due: false,
                probe: Probe::default(),
                train,
                seed: u64::from(seed),
                requested: None,
                resume: None,
                welcomes: 0,
                handshake_up: 0,
                handshake_down: 0,
            })),
        })
    }

    /// The bytes of the `Join` that opens a connection to `room`; `resume` and `token` are
    /// the worker id and resume token (32 hex digits) of an earlier Welcome, to take that
    /// place up again (after a reload: the page kept them). Without them, the session
    /// resumes the worker of its own last Welcome, if any; `fresh` joins as a new worker
    /// (after the relay refused the token, or another connection took the worker over).
    pub fn join_message(
        &self,
        room: String,
        resume: Option<f64>,
        token: Option<String>,
        fresh: bool,
    ) -> Uint8Array {
        let mut s = self.state.borrow_mut();
        let given = resume
            .filter(|r| r.is_finite() && *r >= 0.0)
            .zip(token.as_deref().and_then(ResumeToken::from_hex))
            .map(|(r, token)| Resume {
                worker: r as u64,
                token,
            });
        let resume = if fresh { None } else { given.or(s.resume) };
        s.requested = resume.map(|r| r.worker);
        let backend = if s.backend == "gpu" {
            Backend::Gpu
        } else {
            Backend::Cpu
        };
        let bytes = message::encode(&worker::join(
            room.trim(),
            ClientKind::Browser,
            backend,
            resume,
        ));
        s.handshake_up += bytes.len() as u64;
        Uint8Array::from(bytes.as_slice())
    }

    /// Handles one binary message from the relay and returns what it meant: an object with
    /// `kind` `"welcome"`, `"ack"`, `"center"`, `"control"`, `"error"`, `"backend"` or
    /// `"question"` (see the fields of each in `SessionEvent`). Throws on bytes that break
    /// the session.
    pub fn on_message(&self, bytes: Uint8Array) -> Result<JsValue, JsValue> {
        let bytes = bytes.to_vec();
        let mut s = self.state.borrow_mut();
        let msg = message::decode(&bytes, &Limits::default()).map_err(js_err)?;
        let event = match msg {
            Message::Welcome(welcome) => {
                s.handshake_down += bytes.len() as u64;
                let start = worker::prepare(&welcome, &s.train).map_err(js_err)?;
                s.resume = Some(Resume {
                    worker: start.worker_id,
                    token: start.resume_token,
                });
                let event = SessionEvent::Welcome {
                    worker_id: start.worker_id,
                    resume_token: start.resume_token.to_hex(),
                    resumed: s.requested == Some(start.worker_id),
                    center_version: start.center_version,
                    shard: start.indices.len(),
                };
                welcome_worker(&mut s, start)?;
                s.report_due = s.decision.is_some();
                event
            }
            Message::UseBackend(choice) => {
                s.teacher_choice = Some(choice);
                s.decision_due = true;
                if choice == BackendChoice::Gpu && s.gpu.is_none() {
                    s.gpu_tried = false;
                }
                SessionEvent::Backend {
                    choice: choice.name(),
                }
            }
            // The lesson's question is the page's business: the worker never sees it.
            Message::Question(q) => {
                s.handshake_down += bytes.len() as u64;
                SessionEvent::Question {
                    lesson: q.lesson,
                    phase: match q.phase {
                        QuestionPhase::Open => "open",
                        QuestionPhase::Closed => "closed",
                        QuestionPhase::Reveal => "reveal",
                        QuestionPhase::Over => "over",
                    },
                    text: q.text,
                    answers: q.answers,
                    voted: q.voted,
                    supported: q.supported,
                    outcome: q.outcome,
                }
            }
            Message::Error(e) if !s.joined => {
                s.handshake_down += bytes.len() as u64;
                SessionEvent::Error {
                    code: e.code,
                    message: e.message,
                    joined: false,
                }
            }
            msg => {
                let w = s.worker.as_mut().ok_or_else(busy)?;
                describe(w.on_received(msg, bytes.len()).map_err(js_err)?)
            }
        };
        to_js(&event)
    }

    /// The bytes of a `Vote` for answer `answer` (an index into the Question's answers) of
    /// lesson `lesson`; the relay answers with the Question, the vote in it, or with error 15.
    pub fn vote_message(&self, lesson: u32, answer: u8) -> Uint8Array {
        let bytes = message::encode(&Message::Vote(Vote { lesson, answer }));
        self.state.borrow_mut().handshake_up += bytes.len() as u64;
        Uint8Array::from(bytes.as_slice())
    }

    /// Whether a round may start: joined, no push in flight, not paused.
    pub fn ready(&self) -> bool {
        self.state
            .borrow()
            .worker
            .as_ref()
            .is_some_and(|w| w.ready())
    }

    /// The teacher's delay, in milliseconds, to wait after each round before pushing.
    pub fn delay_ms(&self) -> u32 {
        self.state
            .borrow()
            .worker
            .as_ref()
            .map_or(0, |w| w.delay_ms())
    }

    /// Trains one round of the room's local steps and resolves to the bytes of its `Push`
    /// (`undefined` when no round may start). When the GPU is lost, before or during the
    /// round, the trainer is rebuilt on the CPU from the worker's model and the round runs
    /// there; `fallback_reason` says so.
    pub fn round(&self) -> Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let mut w = {
                let mut s = state.borrow_mut();
                if !s.joined {
                    return Err(js_err("not in a room yet: wait for the Welcome"));
                }
                s.worker.take().ok_or_else(busy)?
            };
            if !w.ready() {
                state.borrow_mut().worker = Some(w);
                return Ok(JsValue::UNDEFINED);
            }
            let push = run_round(&state, &mut w).await;
            state.borrow_mut().worker = Some(w);
            Ok(Uint8Array::from(push.as_slice()).into())
        })
    }

    /// The page's numbers: backend (`"gpu"` or `"cpu"`, the one that trains now), adapter,
    /// fallback reason (why the CPU trains although a GPU was wanted, or why the GPU stopped,
    /// in plain words; `null` when nothing went wrong), worker id, center version,
    /// pushes (accepted, refused), staleness `tau` (last, mean), `alpha_eff` (last, mean),
    /// bytes up and down, distance from the center, last loss, pause and delay, and the
    /// room's strategy name.
    pub fn stats(&self) -> Result<JsValue, JsValue> {
        let s = self.state.borrow();
        let w = s.worker.as_ref();
        let st = w.map(|w| w.stats().clone()).unwrap_or_default();
        to_js(&SessionStats {
            backend: s.backend,
            adapter: s.adapter.clone(),
            fallback_reason: s.fallback_reason.clone(),
            joined: s.joined,
            worker_id: w.map(|w| w.worker_id()),
            center_version: w.map(|w| w.center_version()),
            welcomes: s.welcomes,
            pushes: st.pushes,
            accepted: st.accepted,
            refused: st.refused,
            steps: st.steps,
            samples: st.samples,
            last_tau: st.last_tau,
            mean_tau: st.mean_tau(),
            last_alpha_eff: st.last_alpha_eff,
            mean_alpha_eff: st.mean_alpha_eff(),
            bytes_up: st.bytes_up + s.handshake_up,
            bytes_down: st.bytes_down + s.handshake_down,
            distance_to_center: w.and(finite(st.distance_to_center)),
            last_loss: finite(st.last_loss),
            relay_errors: st.errors,
            paused: w.is_some_and(|w| w.paused()),
            delay_ms: w.map_or(0, |w| w.delay_ms()),
            batch: w.map_or(0, |w| w.hyper().batch),
            local_steps: w.map_or(0, |w| w.hyper().local_steps),
            strategy: w.map(|w| w.hyper().strategy().name()),
            device: s.decision.as_ref().map(|d| DeviceView {
                backend: if d.backend == Backend::Gpu {
                    "gpu"
                } else {
                    "cpu"
                },
                chosen_by: chosen_by_name(d.chosen_by),
                gpu_samples_per_s: (d.gpu_samples_per_s > 0.0).then_some(d.gpu_samples_per_s),
                cpu_samples_per_s: (d.cpu_samples_per_s > 0.0).then_some(d.cpu_samples_per_s),
                software_gpu: d.software_gpu,
                why: d.why.clone(),
                timing_ms: s.probe.at_ms.map(|_| s.probe.took_ms),
                timings: s.probe.count,
                teacher_choice: s.teacher_choice.map(BackendChoice::name),
                page_choice: s.page_choice.name(),
            }),
        })
    }

    /// The bytes of the `Device` message that tells the relay the backend's last decision
    /// (PROTOCOL.md, Device), once per decision and after each Welcome; `undefined` when
    /// the relay already has it.
    pub fn device_message(&self) -> Option<Uint8Array> {
        let mut s = self.state.borrow_mut();
        if !s.report_due || !s.joined {
            return None;
        }
        let d = s.decision.as_ref()?;
        let limit = Limits::default().max_string;
        let bytes = message::encode(&Message::Device(DeviceReport {
            backend: d.backend,
            chosen_by: d.chosen_by,
            gpu_samples_per_s: d.gpu_samples_per_s as f32,
            cpu_samples_per_s: d.cpu_samples_per_s as f32,
            software_gpu: d.software_gpu,
            adapter: truncated(&d.adapter, limit),
            why: truncated(&d.why, limit),
        }));
        s.report_due = false;
        s.handshake_up += bytes.len() as u64;
        Some(Uint8Array::from(bytes.as_slice()))
    }

    /// Class probabilities (10 numbers that sum to 1) of this tab's own model, as of its
    /// last round, for 784 pixels from [`prepare_digit`].
    pub fn predict_own(&self, pixels: Uint8Array) -> Result<Float32Array, JsValue> {
        self.predict_with(pixels, |w| w.params())
    }

    /// Class probabilities of the room's center as this worker last received it, on the
    /// CPU forward pass.
    pub fn predict_center(&self, pixels: Uint8Array) -> Result<Float32Array, JsValue> {
        self.predict_with(pixels, |w| w.center())
    }

    /// Destroys the GPU device, as a driver reset would: the next round finds it lost and
    /// goes on on the CPU. The browser test uses it to check the fallback.
    pub fn lose_gpu(&self) {
        let s = self.state.borrow();
        if let Some(g) = &s.gpu {
            g.destroy();
        }
    }
}

impl WebSession {
    fn predict_with(
        &self,
        pixels: Uint8Array,
        model: impl Fn(&Worker<Engine>) -> &[f32],
    ) -> Result<Float32Array, JsValue> {
        let pixels = pixels.to_vec();
        if pixels.len() != IMAGE_PIXELS {
            return Err(js_err(format!(
                "predict: {} pixels given, an image has {IMAGE_PIXELS}",
                pixels.len()
            )));
        }
        let s = self.state.borrow();
        if !s.joined {
            return Err(js_err("not in a room yet: there is no model to ask"));
        }
        let w = s.worker.as_ref().ok_or_else(busy)?;
        Ok(Float32Array::from(
            cpu::predict(model(w), &pixels).as_slice(),
        ))
    }
}

/// The trainer for a `Start`: on the session's GPU when it has one (else the CPU), with the
/// reason for the backend noted for the page.
fn start_engine(s: &mut SessionState, start: &Start) -> Engine {
    // Once decided, the backend stays the decided one on a new shard.
    let on_gpu = s
        .decision
        .as_ref()
        .is_none_or(|d| d.backend == Backend::Gpu);
    let (engine, reason) = Engine::build(
        s.gpu.as_ref().filter(|_| on_gpu),
        &start.shard.images,
        &start.shard.labels,
        &start.center,
        start.sgd,
        start.batch,
    );
    note_engine(s, &engine, reason);
    engine
}

/// Makes the worker from a Welcome's `start`, or takes the session up again with it after a
/// reconnection (keeping the model, rebuilding the trainer only for a new shard).
fn welcome_worker(s: &mut SessionState, start: Start) -> Result<(), JsValue> {
    s.welcomes += 1;
    if s.joined {
        let mut w = s.worker.take().ok_or_else(busy)?;
        let fresh = (w.shard_indices() != start.indices).then(|| start_engine(s, &start));
        w.rejoin(start);
        if let Some(engine) = fresh {
            w.replace_trainer(Box::new(engine));
        }
        s.worker = Some(w);
    } else {
        let engine = start_engine(s, &start);
        s.worker = Some(Worker::new(start, Box::new(engine), s.seed));
        s.joined = true;
    }
    Ok(())
}

/// Records the backend a new trainer runs on, and why it is not the GPU that was opened.
fn note_engine(s: &mut SessionState, engine: &Engine, reason: Option<String>) {
    if let Some(reason) = reason {
        warn(&reason);
        s.fallback_reason = Some(reason);
        s.gpu = None;
    }
    if let Engine::Cpu(_) = engine {
        s.backend = "cpu";
        s.adapter = engine.trainer_ref().adapter();
    }
}

/// One round on `w`'s trainer, after deciding the backend when that is due; on the GPU
/// with the parameters read asynchronously. A lost GPU (found before the round, or by a
/// failed read) is replaced by a CPU trainer built from the worker's model on its shard,
/// and the round runs there. The round's speed is compared with the timing the backend was
/// chosen by ([`note_round`]).
async fn run_round(state: &Rc<RefCell<SessionState>>, w: &mut Worker<Engine>) -> Vec<u8> {
    if let Some(lost) = w.trainer_mut().lost() {
        fall_back_to_cpu(state, w, &lost);
    }
    let due = state.borrow().decision_due;
    if due {
        decide(state, w).await;
    }
    let samples = w.stats().samples;
    let t0 = now_ms();
    let push = train_round(state, w).await;
    note_round(state, w.stats().samples - samples, now_ms() - t0);
    push
}

async fn train_round(state: &Rc<RefCell<SessionState>>, w: &mut Worker<Engine>) -> Vec<u8> {
    if let Engine::Gpu(_) = w.trainer_mut() {
        w.train_steps();
        let read = async {
            let engine = w.trainer_mut();
            let losses = engine.settle().await?;
            let x = engine.read_params().await?;
            Ok::<_, GpuLost>((x, losses))
        }
        .await;
        match read {
            Ok((x, losses)) => return w.finish_round(x, &losses),
            Err(lost) => fall_back_to_cpu(state, w, &lost),
        }
    }
    w.local_round()
}

/// Decides the backend from the teacher's choice, else the page's: `auto` times both
/// ([`measure`]), `gpu` and `cpu` take that one (the CPU when no GPU can be had). The
/// worker keeps its model: a new trainer starts from it.
async fn decide(state: &Rc<RefCell<SessionState>>, w: &mut Worker<Engine>) {
    let (choice, by) = {
        let s = state.borrow();
        match s.teacher_choice {
            Some(c) => (c, ChosenBy::Teacher),
            None => (s.page_choice, ChosenBy::Page),
        }
    };
    if choice != BackendChoice::Cpu {
        ensure_gpu(state).await;
    }
    let decision = match choice {
        BackendChoice::Auto => measure(state, w).await,
        BackendChoice::Gpu => force(state, w, Backend::Gpu, by),
        BackendChoice::Cpu => force(state, w, Backend::Cpu, by),
    };
    let mut s = state.borrow_mut();
    s.backend = if decision.backend == Backend::Gpu {
        "gpu"
    } else {
        "cpu"
    };
    s.adapter = if decision.backend == Backend::Gpu {
        s.gpu_name.clone()
    } else {
        w.trainer_mut().adapter()
    };
    s.decision_due = false;
    s.report_due = true;
    s.decision = Some(decision);
}

/// Opens WebGPU if the session has no GPU and has not tried since it could have changed;
/// a failure is kept as the fallback reason.
async fn ensure_gpu(state: &Rc<RefCell<SessionState>>) {
    {
        let mut s = state.borrow_mut();
        if s.gpu.is_some() || s.gpu_tried {
            return;
        }
        s.gpu_tried = true;
    }
    let opened = open_gpu().await;
    let mut s = state.borrow_mut();
    match opened {
        Ok((gpu, name)) => {
            s.gpu = Some(gpu);
            s.gpu_name = name;
            s.fallback_reason = None;
        }
        Err(reason) => {
            warn(&reason);
            s.fallback_reason = Some(reason);
        }
    }
}

/// A CPU trainer on `w`'s shard, from its model.
fn cpu_engine(shard: &Split, w: &Worker<Engine>) -> Engine {
    Engine::Cpu(Box::new(CpuTrainer::new(
        &shard.images,
        &shard.labels,
        w.params(),
        worker_sgd(w),
        w.batch_capacity(),
    )))
}

/// A GPU trainer on `w`'s shard, from its model, or why the GPU cannot hold it.
fn gpu_engine(gpu: &Gpu, shard: &Split, w: &Worker<Engine>) -> Result<Engine, String> {
    GpuTrainer::new(
        gpu,
        &shard.images,
        &shard.labels,
        w.params(),
        worker_sgd(w),
        w.batch_capacity(),
    )
    .map(|t| Engine::Gpu(Box::new(t)))
    .map_err(|e| format!("The GPU cannot hold this model's data: {e}."))
}

/// The optimizer of the room's settings (momentum; no weight decay).
fn worker_sgd(w: &Worker<Engine>) -> Sgd {
    Sgd {
        momentum: w.hyper().momentum,
        weight_decay: 0.0,
    }
}

fn engine_backend(e: &Engine) -> Backend {
    match e {
        Engine::Cpu(_) => Backend::Cpu,
        Engine::Gpu(_) => Backend::Gpu,
    }
}

/// Makes `engine` the worker's trainer, or, when it is `None`, starts the current one
/// again from the worker's model (a timing trained it).
fn install(w: &mut Worker<Engine>, engine: Option<Engine>) {
    match engine {
        Some(e) => w.replace_trainer(Box::new(e)),
        None => {
            let x = w.params().to_vec();
            w.trainer_mut().set_params(&x, true);
        }
    }
}

/// Trains on `backend` as the page or the teacher (`by`) asked; the CPU, saying why, when
/// that is the GPU and none can be had. The current trainer stays when it is already on it.
fn force(
    state: &Rc<RefCell<SessionState>>,
    w: &mut Worker<Engine>,
    backend: Backend,
    by: ChosenBy,
) -> Decision {
    let mut s = state.borrow_mut();
    let who = match (by, backend) {
        (ChosenBy::Teacher, _) => "the teacher chose it".to_string(),
        (_, Backend::Gpu) => "the address asks for it (?backend=gpu)".to_string(),
        (_, Backend::Cpu) => "the address asks for it (?backend=cpu)".to_string(),
    };
    let mut failed = None;
    if engine_backend(w.trainer_mut()) != backend {
        let shard = s.train.subset(w.shard_indices());
        let engine = match (backend, s.gpu.as_ref()) {
            (Backend::Cpu, _) => Ok(cpu_engine(&shard, w)),
            (Backend::Gpu, Some(gpu)) => gpu_engine(gpu, &shard, w),
            (Backend::Gpu, None) => Err(s
                .fallback_reason
                .clone()
                .unwrap_or_else(|| "no WebGPU could be opened.".to_string())),
        };
        match engine {
            Ok(e) => install(w, Some(e)),
            Err(reason) => failed = Some(reason),
        }
    }
    let measured = figures(s.probe.gpu, s.probe.cpu)
        .map(|f| format!(" Last timing here: {f}."))
        .unwrap_or_default();
    let why = match &failed {
        None => format!(
            "Training on the {} because {who}.{measured}",
            if backend == Backend::Gpu {
                "GPU"
            } else {
                "CPU"
            }
        ),
        Some(reason) => {
            warn(reason);
            s.fallback_reason = Some(reason.clone());
            format!("The GPU was asked for ({who}), but: {reason} Training on the CPU.")
        }
    };
    Decision {
        backend: engine_backend(w.trainer_mut()),
        chosen_by: by,
        gpu_samples_per_s: s.probe.gpu,
        cpu_samples_per_s: s.probe.cpu,
        software_gpu: is_software_name(&s.gpu_name),
        adapter: s.gpu_name.clone(),
        why,
    }
}

/// `auto`: times a few real steps of the room's batch on the CPU and on the GPU (when there
/// is one; the current trainer is timed in place, the other one built), and trains on the
/// faster. Each timing excludes a warm-up step and lasts about [`PROBE_BUDGET_MS`] (at least
/// one step, at most [`PROBE_MAX_STEPS`]); on the GPU it includes waiting for the steps to
/// finish, as a round does.
async fn measure(state: &Rc<RefCell<SessionState>>, w: &mut Worker<Engine>) -> Decision {
    let (shard, gpu_name, no_gpu) = {
        let s = state.borrow();
        let no_gpu = s.gpu.is_none().then(|| {
            s.fallback_reason
                .clone()
                .unwrap_or_else(|| "no WebGPU could be opened.".to_string())
        });
        (
            s.train.subset(w.shard_indices()),
            s.gpu_name.clone(),
            no_gpu,
        )
    };
    let software = is_software_name(&gpu_name);
    let t0 = now_ms();
    let batch = (w.hyper().batch as usize).clamp(1, w.batch_capacity());
    let lr = w.hyper().lr;
    let order = epoch_order(shard.len(), 0x7153_u64, 0);
    if let Some(reason) = no_gpu {
        if engine_backend(w.trainer_mut()) != Backend::Cpu {
            install(w, Some(cpu_engine(&shard, w)));
        }
        let s = state.borrow();
        return Decision {
            backend: Backend::Cpu,
            chosen_by: ChosenBy::OnlyCpu,
            gpu_samples_per_s: 0.0,
            cpu_samples_per_s: s.probe.cpu,
            software_gpu: false,
            adapter: String::new(),
            why: format!("Training on the CPU, the only backend here: {reason}"),
        };
    }
    // The current trainer is timed in place; the other backend's is built for the timing.
    let current = engine_backend(w.trainer_mut());
    let mut other = match current {
        Backend::Gpu => Ok(cpu_engine(&shard, w)),
        Backend::Cpu => {
            let s = state.borrow();
            match s.gpu.as_ref() {
                Some(gpu) => gpu_engine(gpu, &shard, w),
                None => Err("no WebGPU could be opened.".to_string()),
            }
        }
    };
    let mut speeds = [0.0f64; 2]; // [gpu, cpu]
    let mut gpu_failure = None;
    let slot = |b: Backend| usize::from(b == Backend::Cpu);
    let timed = time_engine(w.trainer_mut(), &order, batch, lr).await;
    match timed {
        Ok(v) => speeds[slot(current)] = v,
        Err(lost) => gpu_failure = Some(format!("The GPU was lost while being timed ({lost}).")),
    }
    match &mut other {
        Ok(e) => match time_engine(e, &order, batch, lr).await {
            Ok(v) => speeds[slot(engine_backend(e))] = v,
            Err(lost) => {
                gpu_failure = Some(format!("The GPU was lost while being timed ({lost})."))
            }
        },
        Err(reason) => gpu_failure = Some(reason.clone()),
    }
    let [gpu, cpu] = speeds;
    let winner = if gpu_failure.is_none() && gpu > cpu {
        Backend::Gpu
    } else {
        Backend::Cpu
    };
    install(w, (winner != current).then(|| other.ok()).flatten());
    let mut s = state.borrow_mut();
    let now = now_ms();
    s.probe = Probe {
        gpu,
        cpu,
        at_ms: Some(now),
        took_ms: now - t0,
        count: s.probe.count + 1,
        slow_rounds: 0,
    };
    let why = match gpu_failure {
        None => measured_why(gpu, cpu, software, &gpu_name),
        Some(reason) => {
            warn(&reason);
            s.fallback_reason = Some(reason.clone());
            s.gpu = None;
            format!("Training on the CPU ({} digits/s): {reason}", grouped(cpu))
        }
    };
    Decision {
        backend: winner,
        chosen_by: ChosenBy::Measured,
        gpu_samples_per_s: gpu,
        cpu_samples_per_s: cpu,
        software_gpu: software,
        adapter: gpu_name,
        why,
    }
}

/// Samples per second of real steps on `engine` in batches of `batch` from `order`: one
/// warm-up step (first uses of buffers and kernels) that does not count, then chunks of
/// steps doubling in size while they fit in [`PROBE_BUDGET_MS`], each chunk waited for.
async fn time_engine(
    engine: &mut Engine,
    order: &[u32],
    batch: usize,
    lr: f32,
) -> Result<f64, GpuLost> {
    let mut batches = order.chunks(batch.max(1)).cycle();
    let mut next = move || batches.next().unwrap_or(&[]);
    engine.trainer().step(next(), lr);
    engine.settle().await?;
    let t0 = now_ms();
    let (mut steps, mut samples, mut chunk) = (0usize, 0usize, 1usize);
    loop {
        for _ in 0..chunk {
            let b = next();
            engine.trainer().step(b, lr);
            samples += b.len();
        }
        steps += chunk;
        engine.settle().await?;
        let elapsed = (now_ms() - t0).max(1e-3);
        let fits = ((PROBE_BUDGET_MS - elapsed) / (elapsed / steps as f64)).floor();
        if fits < 1.0 || steps >= PROBE_MAX_STEPS {
            return Ok(samples as f64 * 1000.0 / elapsed);
        }
        chunk = (chunk * 2).min(fits as usize).min(PROBE_MAX_STEPS - steps);
    }
}

/// Compares a round's speed (`samples` in `ms`) with the timing an `auto` choice was made
/// by: after [`SLOW_ROUNDS`] rounds in a row below [`SLOW_SHARE`] of it, and at least
/// [`PROBE_EVERY_MS`] after the last timing, the next round times both backends again.
fn note_round(state: &Rc<RefCell<SessionState>>, samples: u64, ms: f64) {
    let mut s = state.borrow_mut();
    let Some((backend, ChosenBy::Measured)) = s.decision.as_ref().map(|d| (d.backend, d.chosen_by))
    else {
        return;
    };
    if samples == 0 || ms <= 0.0 {
        return;
    }
    let timed = if backend == Backend::Gpu {
        s.probe.gpu
    } else {
        s.probe.cpu
    };
    let speed = samples as f64 * 1000.0 / ms;
    if speed < SLOW_SHARE * timed {
        s.probe.slow_rounds += 1;
    } else {
        s.probe.slow_rounds = 0;
    }
    let since = s.probe.at_ms.map_or(f64::INFINITY, |t| now_ms() - t);
    if s.probe.slow_rounds >= SLOW_ROUNDS && since >= PROBE_EVERY_MS {
        s.decision_due = true;
    }
}

/// Replaces a lost GPU trainer by a CPU one on the same shard, from the worker's model.
fn fall_back_to_cpu(state: &Rc<RefCell<SessionState>>, w: &mut Worker<Engine>, lost: &GpuLost) {
    let mut s = state.borrow_mut();
    let shard = s.train.subset(w.shard_indices());
    w.replace_trainer(Box::new(cpu_engine(&shard, w)));
    let reason = format!("The GPU was lost ({lost}). Training goes on on the CPU.");
    warn(&reason);
    s.fallback_reason = Some(reason.clone());
    s.gpu = None;
    s.backend = "cpu";
    s.adapter = w.trainer_mut().adapter();
    if let Some(d) = s.decision.as_mut() {
        d.backend = Backend::Cpu;
        d.why = reason;
        s.report_due = true;
    }
}

/// The page's view of a worker event.
fn describe(event: Event) -> SessionEvent {
    match event {
        Event::Acked(Outcome::Accepted { tau, alpha_eff, .. }) => SessionEvent::Ack {
            accepted: true,
            tau: Some(tau),
            alpha_eff: Some(alpha_eff),
            code: None,
            message: None,
        },
        Event::Acked(Outcome::Refused { code, message }) => SessionEvent::Ack {
            accepted: false,
            tau: None,
            alpha_eff: None,
            code: Some(code),
            message: Some(message),
        },
        Event::Center { version, resynced } => SessionEvent::Center { version, resynced },
        Event::Control(c) => {
            let (action, delay_ms) = match c {
                Control::Pause { .. } => ("pause", None),
                Control::Resume { .. } => ("resume", None),
                Control::Delay { ms, .. } => ("delay", Some(ms)),
                Control::Settings(_) => ("settings", None),
            };
            SessionEvent::Control { action, delay_ms }
        }
        Event::Error(e) => SessionEvent::Error {
            code: e.code,
            message: e.message,
            joined: true,
        },
    }
}

/// Makes a `width` x `height` grayscale drawing (0 background, 255 ink, row by row) into the
/// 784 pixels of an MNIST-like digit: cropped to its ink, scaled into 20 x 20 keeping its
/// aspect, centered by mass in 28 x 28. Throws "nothing is drawn yet" for a blank drawing.
#[wasm_bindgen]
pub fn prepare_digit(gray: Uint8Array, width: u32, height: u32) -> Result<Uint8Array, JsValue> {
    let d = digit::mnist_like(&gray.to_vec(), width as usize, height as usize).map_err(js_err)?;
    Ok(Uint8Array::from(d.pixels.as_slice()))
}

/// Floating-point operations one training sample costs (forward, backward, weight gradients),
/// for reporting GFLOP/s.
#[wasm_bindgen]
pub fn train_flops_per_sample() -> f64 {
    model::train_flops_per_sample() as f64
}

/// The CPU path's own measurements, for the test and benchmark pages: which instruction set
/// its convolutions run on, their check against the `f64` reference (the unit tests cannot
/// run in a browser, so the wasm build checks itself there), and a per-op profile of a
/// training step, the same one `easel bench train --profile` prints natively.
mod cpu_diagnostics {
    use super::{js_err, set};
    use js_sys::{Array, Function, Object, Reflect, Uint8Array};
    use wasm_bindgen::prelude::*;

    use crate::cpu::{direct, profile, simd::Isa};
    use crate::data::Mnist;
    use crate::model::train_flops_per_sample;
    use crate::schedule::epoch_order;

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
}
