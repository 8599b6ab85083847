//! Easel's relay: rooms of workers merged by asynchronous elastic averaging, over
//! WebSockets, behind HTTPS.
//!
//! Layers, bottom up, each calling only the one below:
//! - `easel_protocol` owns the bytes, the messages and the merging rules;
//! - [`ledger`] and [`room`]: one room's state and rules as synchronous logic, no I/O;
//!   [`runs`] (named runs and their exports), [`activity`] (each device's inferred
//!   timeline, rates and state), [`backends`] (each tab's backend and measured speeds, and
//!   the teacher's choice) and [`teacher`] (the control API's types) are pure too;
//! - [`hub`]: the rooms behind short-held locks, and the channels to connections;
//! - [`ws`]: one WebSocket connection; [`dashboard`]: the teacher's live JSON socket;
//!   [`http`]: the routes and [`http::run`]; [`origin`]: which pages may use them;
//!   [`tls`]: certificates and the HTTPS/HTTP listeners; [`eval`]: center evaluation off
//!   the reactor; [`store`]: the SQLite database rooms are checkpointed to.
//!
//! The server trains nothing and has no model code: the model's operations (its initial
//! center, its checkpoint file, the evaluator) are passed in by the `easel` binary, so this
//! crate builds without wgpu. The bots (`easel-bots`), the simulator (`easel-sim`) and the
//! CLI (`easel`) are crates of their own.

pub mod activity;
pub mod backends;
pub mod checkpoint;
pub mod conductor;
pub mod dashboard;
pub mod devices;
pub mod eval;
pub mod http;
pub mod hub;
pub mod ledger;
pub mod lesson;
pub mod memory;
pub mod origin;
pub mod reply;
pub mod room;
pub mod runs;
pub mod store;
pub mod teacher;
pub mod tls;
pub mod ws;
pub mod wsock;

pub use http::{Config, RunningRelay, TlsSource, run};

use tokio::sync::watch;

/// Tells tasks to stop. Cloneable; every clone sees the same signal.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

/// Fires a [`Shutdown`]; dropping it fires it too.
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

impl Shutdown {
    /// A trigger and the signal it fires.
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger(tx), Shutdown(rx))
    }

    /// Resolves once the trigger fired or was dropped.
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    /// Whether the trigger fired or was dropped.
    pub fn is_fired(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }
}

impl ShutdownTrigger {
    /// Fires the signal.
    pub fn fire(&self) {
        let _ = self.0.send(true);
    }
}
