//! The relay's side of a simulated room: [`SimRelay`] hands each update that reaches it to
//! the same [`Engine`] the live room drives, and turns the engine's answers into the models
//! the workers get back, as the relay would send them. The clock and the network are the
//! simulator's ([`super::Sim`]).

use std::collections::BTreeSet;
use std::sync::Arc;

use easel_client::model;
use easel_protocol::codec::{self, Codec};
use easel_protocol::strategy::{
    Answer, Engine, Held, Reply, Strategy, StrategyError, Update, Verdict,
};
use rand_chacha::ChaCha8Rng;

/// One answer on its way to a worker.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub worker: u32,
    /// The version of the model it gets back.
    pub version: u64,
    /// Bytes of that model's payload.
    pub payload_len: usize,
    /// The model as the worker decodes it.
    pub center: Arc<[f32]>,
    pub reply: Reply,
    /// The engine's answer (staleness, weight); `None` for a refusal.
    pub answer: Option<Answer>,
}

/// The engine, the codec of the models sent back, the generator of the relay's random
/// choices, and the workers that take part now (a barrier's `n`).
pub struct SimRelay {
    engine: Engine,
    down: Codec,
    rng: ChaCha8Rng,
    members: BTreeSet<u32>,
    /// Updates applied (a barrier round or a buffer counts each of its updates), and
    /// refused.
    pub applied: u64,
    pub refused: u64,
}

impl SimRelay {
    /// A relay for workers `0..workers`, all members, starting from `center` as version 0;
    /// the models it sends back are encoded with `down`.
    pub fn new(
        strategy: Strategy,
        workers: u32,
        center: Arc<[f32]>,
        max_norm: f32,
        down: Codec,
        mut rng: ChaCha8Rng,
    ) -> Result<SimRelay, StrategyError> {
        let mut engine = Engine::new(strategy, workers, 0, center, max_norm)?;
        for w in 0..workers {
            engine.join(w, None, &mut rng);
        }
        Ok(SimRelay {
            engine,
            down,
            rng,
            members: (0..workers).collect(),
            applied: 0,
            refused: 0,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Worker `w`'s update (the encoded `payload`, computed from `base`, after local steps
    /// of mean loss `loss`) reaches the relay at `now_us`: the answers to send, the pusher's
    /// last (none while its update is held at a barrier).
    pub fn arrive(
        &mut self,
        w: u32,
        base: u64,
        payload: &[u8],
        loss: f32,
        now_us: u64,
    ) -> Vec<Delivery> {
        // Workers only send what the real codecs encode; a failure is a refusal.
        let Ok(delta) = codec::decode(payload, model::PARAMS) else {
            self.refused += 1;
            return vec![self.deliver(w, Reply::Refused, None)];
        };
        let update = Update {
            worker: w,
            base,
            delta: &delta,
            loss,
        };
        let o = self.engine.on_update(update, now_us, &mut self.rng);
        self.applied += u64::from(o.updates);
        let mut out: Vec<Delivery> = o
            .released
            .iter()
            .map(|a| self.deliver(a.worker, Reply::Accepted, Some(*a)))
            .collect();
        match o.verdict {
            Verdict::Answered(a) => out.push(self.deliver(w, Reply::Accepted, Some(a))),
            Verdict::Held => {}
            Verdict::Refused(_) => {
                self.refused += 1;
                out.push(self.deliver(w, Reply::Refused, None));
            }
        }
        out
    }

    /// Worker `w` leaves: the barrier round in progress is abandoned (its held updates are
    /// refused) and the barrier counts one worker fewer.
    pub fn leave(&mut self, w: u32) -> Vec<Delivery> {
        self.members.remove(&w);
        self.engine.leave(w, &mut self.rng);
        self.engine.set_workers(self.members.len() as u32);
        let held = self.engine.release_held();
        self.refuse_held(held)
    }

    /// The room switches to `strategy`, its models now sent back with `down`: held updates
    /// are refused.
    pub fn switch(
        &mut self,
        strategy: Strategy,
        down: Codec,
    ) -> Result<Vec<Delivery>, StrategyError> {
        let members = self.members.iter().copied().collect::<Vec<_>>();
        self.engine.switch(strategy, members, &mut self.rng)?;
        self.engine.set_workers(self.members.len() as u32);
        self.down = down;
        let held = self.engine.release_held();
        Ok(self.refuse_held(held))
    }

    fn refuse_held(&mut self, held: Vec<Held>) -> Vec<Delivery> {
        held.into_iter()
            .map(|h| {
                self.refused += 1;
                self.deliver(h.worker, Reply::Refused, None)
            })
            .collect()
    }

    /// The model `w` gets back: under SwarmSGD its own, else the center, in the codec it
    /// reads, and as it decodes it.
    fn deliver(&mut self, w: u32, reply: Reply, answer: Option<Answer>) -> Delivery {
        let down = self.down;
        if let Some((version, payload)) = self.engine.reply(w, down, &mut self.rng) {
            let center: Arc<[f32]> = codec::decode(&payload, model::PARAMS)
                .expect("the codecs decode what they encode")
                .into();
            return Delivery {
                worker: w,
                version,
                payload_len: payload.len(),
                center,
                reply,
                answer,
            };
        }
        let (version, center) = {
            let (v, c) = self.engine.center();
            (v, c.clone())
        };
        // Shared as it is for fp32, which is exact.
        let (payload_len, center) = if down == Codec::Fp32 {
            (codec::encoded_len(down, center.len()), center)
        } else {
            let payload = codec::encode(down, &center, &mut self.rng);
            let decoded =
                codec::decode(&payload, center.len()).expect("the codecs decode what they encode");
            (payload.len(), decoded.into())
        };
        Delivery {
            worker: w,
            version,
            payload_len,
            center,
            reply,
            answer,
        }
    }
}
