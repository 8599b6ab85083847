//! How a room merges its workers' models: the strategy family, as pure state machines that
//! the relay and the simulator (`easel sim`) both drive. No I/O and no clock here: the time,
//! the random generators and the models are passed in.
//!
//! - [`Strategy`]: which rule a room runs, with its parameters (serde, tagged by `kind`).
//! - [`center`]: the center's side, [`Aggregator::on_update`]: what happens when a worker's
//!   update computed from center version `base` arrives: apply it now, buffer it, hold it
//!   until the barrier, or refuse it (the worker resynchronises).
//! - [`worker`]: the worker's side: how many local steps a round has
//!   ([`Strategy::local_steps`], ADACOMM's [`Adacomm`] period) and what the worker does with
//!   the center it gets back ([`worker::after_reply`]).
//! - [`swarm`]: SwarmSGD's topologies, the seeded choice of a neighbour and the pairwise
//!   average (optionally quantized), and [`Swarm`], the live swarm the relay routes (each
//!   push averaged with one neighbour's model); there is no central model in its update path.
//! - [`engine`]: [`Engine`], every strategy behind one door: the relay's room and the
//!   simulator both hand it each update and get back everything they answer and record.
//! - [`meter`]: the elastic-consistency meter: for every applied update, its staleness `tau`
//!   and the distance between the worker's view and the model the update is applied to,
//!   with per-worker and per-run max, mean and p95 (the empirical `B`).
//!
//! The elastic-averaging rule, the staleness weights and the version ring are
//! [`crate::aggregate`]'s; this module chooses between them and adds the rules that are
//! not elastic averaging (delta application, barriers, buffers, gossip).

pub mod center;
pub mod engine;
pub mod meter;
pub mod swarm;
pub mod worker;

pub use center::{Action, Aggregator, Refusal, apply_delta};
pub use engine::{Answer, Engine, Held, Outcome, Update, Verdict, push_distances, update_weight};
pub use meter::{Meter, Summary};
pub use swarm::{Exchange, Graph, PAIR_WEIGHT, Swarm, Topology, average_pair, quantized_average};
pub use worker::{Adacomm, Merged, Reply, after_reply};

use serde::{Deserialize, Serialize};

use crate::aggregate::Staleness;
use crate::codec::Codec;

/// A room's merging strategy and its parameters. In a configuration file it is a table
/// tagged by `kind`, e.g. `{ kind = "fedavg", k = 8, m_of_n = 6 }`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Strategy {
    /// Asynchronous elastic averaging (today's relay): each push is applied at once with
    /// `alpha_eff = alpha * s(tau)`; the worker pulls toward the new center by `alpha`.
    Easgd {
        alpha: f32,
        staleness: Staleness,
        /// Pushes with `tau > tau_max` are refused.
        tau_max: u32,
    },
    /// Synchronous local SGD / FedAvg: `k` local steps, a barrier, the average. With
    /// `m_of_n = Some(m)` the round closes after the fastest `m` (backup workers); later
    /// arrivals are refused and resynchronise.
    Fedavg { k: u32, m_of_n: Option<u32> },
    /// Asynchronous SGD on deltas: `x~ <- x~ + s(tau) (x_i - x~(base))`, a staleness-aware
    /// learning rate (`inverse` divides it by `1 + tau`); the worker takes the new center.
    AsyncSgd { staleness: Staleness, tau_max: u32 },
    /// Elastic Consistency's synchronization-avoiding scheduler over asynchronous SGD: an
    /// update whose view is more than `s` versions (or, with `b`, a distance `b`) behind the
    /// center is not applied; the worker pulls the center, keeps its own progress on top of
    /// it, and pushes again after its next round.
    Bounded { s: u32, b: Option<f32> },
    /// SwarmSGD: after its local steps a worker's model is averaged with one random
    /// neighbour's on `topology` ([`Swarm`]); no central model. `quantize` is the codec of
    /// the exchanges both ways (the push and the model sent back) in the simulator; a live
    /// room uses its push and center codecs, and its Hyper leaves `quantize` empty.
    Swarm {
        topology: Topology,
        quantize: Option<Codec>,
    },
    /// ADACOMM: synchronous local SGD whose period starts at `k0` local steps and is set
    /// again every `interval_s` (virtual) seconds to `ceil(sqrt(F / F0) k0)`, at least
    /// `k_min`, where `F` is the latest round's mean training loss and `F0` the first's.
    Adacomm {
        k0: u32,
        k_min: u32,
        interval_s: f64,
    },
    /// FedBuff: updates are buffered; every `m`-th one applies the buffer's mean, each
    /// update weighted by `staleness`; the worker takes the center at once.
    Fedbuff {
        m: u32,
        staleness: Staleness,
        tau_max: u32,
    },
}

/// Why a strategy's parameters cannot be used.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum StrategyError {
    #[error("{0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> Result<(), StrategyError> {
    Err(StrategyError::Invalid(msg.into()))
}

impl Strategy {
    /// The strategy's stable name: `easgd`, `fedavg`, `async_sgd`, `bounded`, `swarm`,
    /// `adacomm` or `fedbuff`.
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Easgd { .. } => "easgd",
            Strategy::Fedavg { .. } => "fedavg",
            Strategy::AsyncSgd { .. } => "async_sgd",
            Strategy::Bounded { .. } => "bounded",
            Strategy::Swarm { .. } => "swarm",
            Strategy::Adacomm { .. } => "adacomm",
            Strategy::Fedbuff { .. } => "fedbuff",
        }
    }

    /// Whether the strategy has a barrier (every worker waits for the round to close).
    pub fn is_synchronous(&self) -> bool {
        matches!(self, Strategy::Fedavg { .. } | Strategy::Adacomm { .. })
    }

    /// Local steps of a round: the strategy's own `k` (FedAvg), ADACOMM's starting period
    /// `k0`, or `default_k` (the room's setting) for the others.
    pub fn local_steps(&self, default_k: u32) -> u32 {
        match *self {
            Strategy::Fedavg { k, .. } => k,
            Strategy::Adacomm { k0, .. } => k0,
            _ => default_k,
        }
    }

    /// How many center versions an aggregator must keep to rebase every update it may
    /// accept.
    pub fn ring_capacity(&self) -> usize {
        let versions = match *self {
            Strategy::Easgd { tau_max, .. } | Strategy::AsyncSgd { tau_max, .. } => tau_max,
            Strategy::Fedbuff { tau_max, .. } => tau_max,
            Strategy::Bounded { s, .. } => s,
            Strategy::Fedavg { .. } | Strategy::Adacomm { .. } | Strategy::Swarm { .. } => 0,
        };
        versions as usize + 1
    }

    /// Checks the parameters against a room of `workers` workers; the message says what to
    /// change.
    pub fn validate(&self, workers: u32) -> Result<(), StrategyError> {
        match self {
            Strategy::Easgd {
                alpha, staleness, ..
            } => {
                if !(0.0..=1.0).contains(alpha) {
                    return invalid(format!("easgd: alpha {alpha} must be in [0, 1]"));
                }
                staleness
                    .validate()
                    .map_err(|e| StrategyError::Invalid(e.into()))
            }
            Strategy::AsyncSgd { staleness, .. } | Strategy::Fedbuff { staleness, .. } => {
                staleness
                    .validate()
                    .map_err(|e| StrategyError::Invalid(e.into()))?;
                if let Strategy::Fedbuff { m, .. } = self
                    && *m == 0
                {
                    return invalid("fedbuff: m (updates per application) must be at least 1");
                }
                Ok(())
            }
            Strategy::Fedavg { k, m_of_n } => {
                if *k == 0 {
                    return invalid("fedavg: k (local steps) must be at least 1");
                }
                match m_of_n {
                    Some(m) if *m == 0 || *m > workers => invalid(format!(
                        "fedavg: m_of_n {m} must be between 1 and the {workers} workers"
                    )),
                    _ => Ok(()),
                }
            }
            Strategy::Bounded { b, .. } => match b {
                Some(b) if !(b.is_finite() && *b > 0.0) => {
                    invalid(format!("bounded: b {b} must be a finite number above 0"))
                }
                _ => Ok(()),
            },
            Strategy::Swarm { topology, quantize } => {
                if let Some(c) = quantize {
                    c.validate()
                        .map_err(|e| StrategyError::Invalid(format!("swarm: quantize: {e}")))?;
                }
                topology.validate(workers)
            }
            Strategy::Adacomm {
                k0,
                k_min,
                interval_s,
            } => {
                if *k0 == 0 || *k_min == 0 || k_min > k0 {
                    return invalid(format!(
                        "adacomm: need 1 <= k_min <= k0, got k_min {k_min}, k0 {k0}"
                    ));
                }
                if !(interval_s.is_finite() && *interval_s > 0.0) {
                    return invalid(format!(
                        "adacomm: interval_s {interval_s} must be a positive number of seconds"
                    ));
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategies_round_trip_through_serde_with_stable_names() {
        let all = [
            Strategy::Easgd {
                alpha: 0.5,
                staleness: Staleness::Inverse,
                tau_max: 64,
            },
            Strategy::Fedavg {
                k: 8,
                m_of_n: Some(6),
            },
            Strategy::AsyncSgd {
                staleness: Staleness::Polynomial { a: 0.5 },
                tau_max: 32,
            },
            Strategy::Bounded { s: 4, b: Some(2.0) },
            Strategy::Swarm {
                topology: Topology::Regular(4),
                quantize: Some(Codec::Qsgd {
                    bits: 8,
                    bucket: 512,
                }),
            },
            Strategy::Adacomm {
                k0: 32,
                k_min: 2,
                interval_s: 10.0,
            },
            Strategy::Fedbuff {
                m: 4,
                staleness: Staleness::Constant,
                tau_max: 16,
            },
        ];
        let names: Vec<&str> = all.iter().map(Strategy::name).collect();
        assert_eq!(
            names,
            [
                "easgd",
                "fedavg",
                "async_sgd",
                "bounded",
                "swarm",
                "adacomm",
                "fedbuff"
            ]
        );
        for s in all {
            let json = serde_json::to_string(&s).unwrap();
            assert!(
                json.contains(&format!("\"kind\":\"{}\"", s.name())),
                "{json}"
            );
            assert_eq!(serde_json::from_str::<Strategy>(&json).unwrap(), s);
            assert!(s.validate(8).is_ok(), "{s:?}");
        }
        let unknown = serde_json::from_str::<Strategy>(r#"{"kind":"fedavg","k":8,"kk":1}"#);
        assert!(unknown.unwrap_err().to_string().contains("unknown field"));
    }

    #[test]
    fn bad_parameters_are_refused_with_a_message() {
        let bad = [
            Strategy::Fedavg {
                k: 8,
                m_of_n: Some(9),
            },
            Strategy::Fedavg { k: 0, m_of_n: None },
            Strategy::Easgd {
                alpha: 1.5,
                staleness: Staleness::Constant,
                tau_max: 1,
            },
            Strategy::Bounded {
                s: 1,
                b: Some(f32::NAN),
            },
            Strategy::Swarm {
                topology: Topology::Regular(9),
                quantize: None,
            },
            Strategy::Adacomm {
                k0: 4,
                k_min: 8,
                interval_s: 1.0,
            },
            Strategy::Fedbuff {
                m: 0,
                staleness: Staleness::Constant,
                tau_max: 1,
            },
        ];
        for s in bad {
            let e = s.validate(8).unwrap_err();
            assert!(e.to_string().contains(s.name()), "{e}");
        }
    }
}
