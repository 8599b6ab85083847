//! What a training loop needs from a backend, whatever device it runs on.

/// A worker's model on one device, with its data shard resident there.
///
/// Indices passed to [`Trainer::step`] index the shard given at construction. Steps are
/// queued and may finish later (the GPU backend never waits inside a step); losses of
/// finished steps come back through [`Trainer::poll_losses`] without blocking.
pub trait Trainer {
    /// `"cpu"` or `"gpu"`.
    fn backend(&self) -> &'static str;
    /// A human-readable description of the device, for example `llvmpipe (LLVM 15.0.6)`.
    fn adapter(&self) -> String;
    /// Replace the parameters (and reset optimizer state if `reset_state`).
    fn set_params(&mut self, params: &[f32], reset_state: bool);
    /// The current parameters; waits for queued steps to finish.
    fn params(&mut self) -> Vec<f32>;
    /// Queue one SGD step on the shard samples with these indices, at learning rate `lr`.
    fn step(&mut self, indices: &[u32], lr: f32);
    /// Mean batch losses of steps that have finished since the last call, in step order.
    /// Never blocks; a backend may report losses only every few steps.
    fn poll_losses(&mut self) -> Vec<f32>;
    /// Wait until every queued step has finished and every loss has been reported.
    fn finish(&mut self) -> Vec<f32>;

    /// GPU command counts of one training step: `(compute dispatches, readbacks)`.
    /// `None` for backends that issue no GPU commands.
    fn step_counters(&self) -> Option<(u32, u32)> {
        None
    }
}

/// The mean of a round's step losses, as a push reports it; NaN for a round with none.
pub fn mean_loss(losses: &[f32]) -> f32 {
    if losses.is_empty() {
        f32::NAN
    } else {
        losses.iter().sum::<f32>() / losses.len() as f32
    }
}
