//! SwarmSGD (Nadiradze et al., 1910.12308): workers sit on a graph; after its local steps a
//! worker picks a neighbour uniformly at random and the two average their models, possibly
//! through a quantizing codec. There is no central model in the update path: whoever wants
//! to evaluate the swarm averages all models (the mean model).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};

use crate::aggregate::{Decision, Policy, Reason, Staleness, distance, validate_push};
use crate::codec::{self, Codec, CodecError};

use super::StrategyError;
use super::center::Refusal;
use super::meter::Meter;

/// The communication graph. In configuration files: `"complete"`, `"ring"` or
/// `"regular:D"` (every worker has `D` neighbours).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Topology {
    /// Every worker is every other's neighbour.
    Complete,
    /// Worker `i`'s neighbours are `i - 1` and `i + 1` (mod n).
    Ring,
    /// A random `d`-regular graph: a circulant graph (each worker joined to the `d/2`
    /// nearest on either side, plus the opposite one when `d` is odd) on a seeded random
    /// relabelling of the workers.
    Regular(u32),
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topology::Complete => f.write_str("complete"),
            Topology::Ring => f.write_str("ring"),
            Topology::Regular(d) => write!(f, "regular:{d}"),
        }
    }
}

impl FromStr for Topology {
    type Err = StrategyError;

    fn from_str(s: &str) -> Result<Topology, StrategyError> {
        match s {
            "complete" => Ok(Topology::Complete),
            "ring" => Ok(Topology::Ring),
            _ => s
                .strip_prefix("regular:")
                .and_then(|d| d.parse().ok())
                .map(Topology::Regular)
                .ok_or_else(|| {
                    StrategyError::Invalid(format!(
                        "unknown topology {s:?}: write complete, ring or regular:D (e.g. regular:4)"
                    ))
                }),
        }
    }
}

impl TryFrom<String> for Topology {
    type Error = StrategyError;
    fn try_from(s: String) -> Result<Topology, StrategyError> {
        s.parse()
    }
}

impl From<Topology> for String {
    fn from(t: Topology) -> String {
        t.to_string()
    }
}

impl Topology {
    /// Checks that a graph of this kind exists on `n` workers.
    pub fn validate(&self, n: u32) -> Result<(), StrategyError> {
        let bad = |msg: String| Err(StrategyError::Invalid(format!("swarm: {msg}")));
        if n < 2 {
            return bad(format!("{self} needs at least 2 workers, not {n}"));
        }
        match *self {
            Topology::Regular(d) if d == 0 || d >= n => {
                bad(format!("regular:{d} needs 1 <= d < workers ({n})"))
            }
            Topology::Regular(d) if d % 2 == 1 && n % 2 == 1 => bad(format!(
                "regular:{d} with an odd degree needs an even number of workers, not {n}"
            )),
            _ => Ok(()),
        }
    }
}

/// A topology laid out on `n` workers.
#[derive(Clone, Debug, PartialEq)]
pub struct Graph {
    topology: Topology,
    n: u32,
    /// Neighbour lists (empty for the complete graph, whose neighbours are implicit).
    adjacency: Vec<Vec<u32>>,
}

impl Graph {
    /// Lays `topology` out on `n` workers; a random regular graph's relabelling comes
    /// from `rng`.
    pub fn new<R: Rng + ?Sized>(
        topology: Topology,
        n: u32,
        rng: &mut R,
    ) -> Result<Graph, StrategyError> {
        topology.validate(n)?;
        let circulant = |d: u32, label: &[u32]| -> Vec<Vec<u32>> {
            let mut adj = vec![Vec::with_capacity(d as usize); n as usize];
            for p in 0..n {
                let node = &mut adj[label[p as usize] as usize];
                for off in 1..=d / 2 {
                    node.push(label[((p + off) % n) as usize]);
                    node.push(label[((p + n - off) % n) as usize]);
                }
                if d % 2 == 1 {
                    node.push(label[((p + n / 2) % n) as usize]);
                }
                node.sort_unstable();
                node.dedup();
            }
            adj
        };
        let identity: Vec<u32> = (0..n).collect();
        let adjacency = match topology {
            Topology::Complete => Vec::new(),
            Topology::Ring => circulant(2, &identity),
            Topology::Regular(d) => {
                let mut label = identity;
                label.shuffle(rng);
                circulant(d, &label)
            }
        };
        Ok(Graph {
            topology,
            n,
            adjacency,
        })
    }

    /// Worker `i`'s neighbours, in increasing order.
    pub fn neighbors(&self, i: u32) -> Vec<u32> {
        match self.topology {
            Topology::Complete => (0..self.n).filter(|&j| j != i).collect(),
            _ => self.adjacency[i as usize].clone(),
        }
    }

    /// A neighbour of worker `i`, uniformly at random.
    pub fn pick<R: Rng + ?Sized>(&self, i: u32, rng: &mut R) -> u32 {
        match self.topology {
            Topology::Complete => {
                let j = rng.random_range(0..self.n - 1);
                if j >= i { j + 1 } else { j }
            }
            _ => {
                let adj = &self.adjacency[i as usize];
                adj[rng.random_range(0..adj.len())]
            }
        }
    }

    /// The edges `(i, j)` with `i < j`, for drawing the graph.
    pub fn edges(&self) -> Vec<(u32, u32)> {
        (0..self.n)
            .flat_map(|i| {
                self.neighbors(i)
                    .into_iter()
                    .filter(move |&j| j > i)
                    .map(move |j| (i, j))
            })
            .collect()
    }
}

/// The exact pairwise average: both models become `(a + b) / 2`, computed in `f32`. Each
/// coordinate's pair sum after is `2 * fl((a + b) / 2) = fl(a + b)`: the sum, and so the
/// mean model, changes by at most the one rounding of `a + b`, and not at all when `a + b`
/// is exact.
///
/// # Panics
/// If the slices differ in length.
pub fn average_pair(a: &mut [f32], b: &mut [f32]) {
    assert_eq!(a.len(), b.len(), "model lengths");
    for (x, y) in a.iter_mut().zip(b.iter_mut()) {
        let m = 0.5 * (*x + *y);
        *x = m;
        *y = m;
    }
}

/// The quantized pairwise average: each side sends its model through `codec` (the real
/// encoder and decoder) and averages its own exact model with the other's decoded one.
/// Returns the bytes both payloads took together.
pub fn quantized_average<R: Rng + ?Sized>(
    a: &mut [f32],
    b: &mut [f32],
    codec: Codec,
    rng: &mut R,
) -> Result<usize, CodecError> {
    codec.validate()?;
    let pa = codec::encode(codec, a, rng);
    let pb = codec::encode(codec, b, rng);
    let qa = codec::decode(&pa, a.len())?;
    let qb = codec::decode(&pb, b.len())?;
    for (x, q) in a.iter_mut().zip(&qb) {
        *x = 0.5 * (*x + q);
    }
    for (y, q) in b.iter_mut().zip(&qa) {
        *y = 0.5 * (*y + q);
    }
    Ok(pa.len() + pb.len())
}

/// The weight of each of the two models in a pairwise average ([`average_pair`]).
pub const PAIR_WEIGHT: f32 = 0.5;

/// What became of an update in a live swarm ([`Swarm::on_update`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Exchange {
    /// The swarm's version after the update (one more than before).
    pub version: u64,
    /// The neighbour the worker averaged with; `None` when it has none (alone in the room).
    pub peer: Option<u32>,
    /// Exchanges the worker's model took part in as the neighbour since it last got it
    /// back: how many averages its view missed.
    pub tau: u32,
    /// `||model - view||` before the update: the distance between the model the worker
    /// computed from and the one its update is applied to (the elastic-consistency meter).
    pub view_distance: f32,
    /// `||x_i - mean||` after the update: the worker's drift from the mean model.
    pub distance_to_mean: f32,
}

impl Exchange {
    /// The weight the pusher's model got: [`PAIR_WEIGHT`] in an average, 1 when it had no
    /// neighbour (its model is taken as it is).
    pub fn weight(&self) -> f32 {
        if self.peer.is_some() {
            PAIR_WEIGHT
        } else {
            1.0
        }
    }
}

/// `sum += k * x`, coordinate by coordinate.
fn add(sum: &mut [f64], x: &[f32], k: f64) {
    for (s, &v) in sum.iter_mut().zip(x) {
        *s += k * f64::from(v);
    }
}

/// The graph in use: a [`Graph`] on the active members, node `k` being worker `ids[k]`.
#[derive(Clone, Debug)]
struct Layout {
    graph: Graph,
    ids: Vec<u32>,
}

/// One worker of a live swarm.
#[derive(Clone, Debug)]
struct Member {
    /// The worker's model as the relay knows it: what it last got back, plus the averages
    /// its neighbours made with it since.
    model: Vec<f32>,
    /// What the worker last got back (its pushes are relative to it).
    view: Vec<f32>,
    /// The version it last got back; its next push must name it.
    version: u64,
    /// Averages made with its model since.
    missed: u32,
    /// In the graph and the mean (connected).
    active: bool,
}

/// SwarmSGD as the relay runs it, live and non-blocking: there is no central model. Each
/// worker pushes `x_i - view_i` after its local steps; the relay rebuilds `x_i` on its
/// own copy of the worker's model (`model_i + delta`, which keeps the averages neighbours
/// made with it meanwhile), picks a neighbour `j` on the graph ([`Graph::pick`]), and the
/// two copies become their average ([`average_pair`]). The pusher gets its new model back
/// at once ([`Swarm::reply`]); the neighbour, busy with its own local steps, gets the
/// average as a correction under its next push (its delta lands on the averaged copy).
///
/// The graph is laid out on the active members in increasing id order; when it cannot be
/// (a `regular:D` with too few workers) the complete graph is used, and below 2 workers
/// there is none. The mean of every member's model, connected or not (a member that left
/// comes back with its model; one removed is forgotten), is what the relay evaluates: a
/// device closing its tab does not make the mean jump.
/// Pure: no I/O, no clock; randomness is passed in.
#[derive(Clone, Debug)]
pub struct Swarm {
    topology: Topology,
    max_norm: f32,
    len: usize,
    members: BTreeMap<u32, Member>,
    layout: Option<Layout>,
    version: u64,
    exchanges: u64,
    /// The sum of every member's model in `f64`, and their mean.
    sum: Vec<f64>,
    mean: Arc<[f32]>,
    meter: Meter,
}

impl Swarm {
    /// A swarm on `topology` for models of `len` values, starting at `version` with no
    /// members; `mean` is the model new members get until there are members.
    pub fn new(topology: Topology, version: u64, mean: Arc<[f32]>, max_norm: f32) -> Swarm {
        Swarm {
            topology,
            max_norm,
            len: mean.len(),
            members: BTreeMap::new(),
            layout: None,
            version,
            exchanges: 0,
            sum: vec![0.0; mean.len()],
            mean,
            meter: Meter::default(),
        }
    }

    /// The topology asked for.
    pub fn topology(&self) -> Topology {
        self.topology
    }

    /// The graph in use: the topology, the complete graph when the topology cannot be laid
    /// out on this many workers, or `None` below 2.
    pub fn graph(&self) -> Option<Topology> {
        self.layout.as_ref().map(|l| l.graph.topology)
    }

    /// The active members, in increasing id order (the graph's nodes).
    pub fn nodes(&self) -> Vec<u32> {
        self.members
            .iter()
            .filter(|(_, m)| m.active)
            .map(|(id, _)| *id)
            .collect()
    }

    /// The graph's edges by worker id, `(a, b)` with `a < b`.
    pub fn edges(&self) -> Vec<(u32, u32)> {
        self.layout.as_ref().map_or_else(Vec::new, |l| {
            l.graph
                .edges()
                .into_iter()
                .map(|(a, b)| (l.ids[a as usize], l.ids[b as usize]))
                .collect()
        })
    }

    /// The swarm's version: one more for every applied update and every reset.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Pairwise averages so far.
    pub fn exchanges(&self) -> u64 {
        self.exchanges
    }

    /// The mean of every member's model (the starting model while there are none).
    pub fn mean(&self) -> &Arc<[f32]> {
        &self.mean
    }

    /// Worker `worker`'s model as the relay knows it.
    pub fn model(&self, worker: u32) -> Option<&[f32]> {
        self.members.get(&worker).map(|m| m.model.as_slice())
    }

    /// Every applied update's `tau` and view distance.
    pub fn meter(&self) -> &Meter {
        &self.meter
    }

    /// Adds `worker` to the graph: a new member starts from `model` (the mean model when
    /// `None`); a member that left comes back with the model it had. Lays the graph out
    /// again.
    pub fn join<R: Rng + ?Sized>(&mut self, worker: u32, model: Option<&[f32]>, rng: &mut R) {
        if !self.members.contains_key(&worker) {
            let m = model.unwrap_or(&self.mean).to_vec();
            add(&mut self.sum, &m, 1.0);
            let member = Member {
                view: m.clone(),
                model: m,
                version: self.version,
                missed: 0,
                active: false,
            };
            self.members.insert(worker, member);
            self.refresh_mean();
        }
        if let Some(m) = self.members.get_mut(&worker) {
            m.active = true;
        }
        self.relayout(rng);
    }

    /// Takes `worker` out of the graph; its model is kept (and counted in the mean) for its
    /// return.
    pub fn leave<R: Rng + ?Sized>(&mut self, worker: u32, rng: &mut R) {
        if let Some(m) = self.members.get_mut(&worker)
            && m.active
        {
            m.active = false;
            self.relayout(rng);
        }
    }

    /// Forgets `worker` (removed by the teacher): out of the graph and the mean.
    pub fn remove<R: Rng + ?Sized>(&mut self, worker: u32, rng: &mut R) {
        self.leave(worker, rng);
        if let Some(m) = self.members.remove(&worker) {
            add(&mut self.sum, &m.model, -1.0);
            self.refresh_mean();
        }
    }

    /// Changes the topology and lays the graph out again.
    pub fn set_topology<R: Rng + ?Sized>(&mut self, topology: Topology, rng: &mut R) {
        self.topology = topology;
        self.relayout(rng);
    }

    /// Starts over: every member's model becomes `model` under a new version, so every
    /// push in flight is refused and its worker resynchronises.
    pub fn reset(&mut self, model: &[f32]) {
        self.version += 1;
        for m in self.members.values_mut() {
            m.model.copy_from_slice(model);
            m.view.copy_from_slice(model);
            m.version = self.version;
            m.missed = 0;
        }
        self.exchanges = 0;
        self.meter = Meter::default();
        self.sum.iter_mut().for_each(|s| *s = 0.0);
        add(&mut self.sum, model, self.members.len() as f64);
        self.mean = model.into();
    }

    /// Lays the graph out on the active members.
    fn relayout<R: Rng + ?Sized>(&mut self, rng: &mut R) {
        let ids = self.nodes();
        let n = ids.len() as u32;
        self.layout = if n < 2 {
            None
        } else {
            let topology = if self.topology.validate(n).is_ok() {
                self.topology
            } else {
                Topology::Complete
            };
            Graph::new(topology, n, rng)
                .ok()
                .map(|graph| Layout { graph, ids })
        };
    }

    fn refresh_mean(&mut self) {
        if !self.members.is_empty() {
            let n = self.members.len() as f64;
            self.mean = self.sum.iter().map(|&s| (s / n) as f32).collect();
        }
    }

    /// Replaces a member's model, keeping the sum current.
    fn set_model(&mut self, worker: u32, model: Vec<f32>) {
        let Some(m) = self.members.get_mut(&worker) else {
            return;
        };
        for ((s, &new), &old) in self.sum.iter_mut().zip(&model).zip(&m.model) {
            *s += f64::from(new) - f64::from(old);
        }
        m.model = model;
    }

    /// Handles `worker`'s push `delta = x_i - view`, made from the model of version `base`
    /// it last got back: checks it (the base must be that version; length, finite values
    /// and norm as [`validate_push`] checks them), rebuilds `x_i` on the relay's copy of
    /// its model and averages it with a random neighbour's. A refused push changes nothing;
    /// the worker must take its model back ([`Swarm::reply`]).
    pub fn on_update<R: Rng + ?Sized>(
        &mut self,
        worker: u32,
        base: u64,
        delta: &[f32],
        rng: &mut R,
    ) -> Result<Exchange, Refusal> {
        let Some(member) = self.members.get(&worker).filter(|m| m.active) else {
            return Err(Refusal::Invalid(Reason::Evicted {
                base,
                oldest: self.version,
            }));
        };
        if base < member.version {
            return Err(Refusal::Invalid(Reason::Evicted {
                base,
                oldest: member.version,
            }));
        }
        let policy = Policy {
            alpha: 0.5,
            staleness: Staleness::Constant,
            tau_max: 0,
            max_norm: self.max_norm,
        };
        if let Decision::Refuse(reason) =
            validate_push(&policy, member.version, base, delta, self.len)
        {
            return Err(reason.into());
        }
        let tau = member.missed;
        let view_distance = distance(&member.model, &member.view);
        let mut x: Vec<f32> = member.model.iter().zip(delta).map(|(m, d)| m + d).collect();
        self.meter.record(worker, tau, view_distance);
        let peer = self.layout.as_ref().map(|l| {
            let k = l
                .ids
                .binary_search(&worker)
                .expect("an active member is a node");
            l.ids[l.graph.pick(k as u32, rng) as usize]
        });
        if let Some(j) = peer {
            let mut y = self.members[&j].model.clone();
            average_pair(&mut x, &mut y);
            self.set_model(j, y);
            if let Some(n) = self.members.get_mut(&j) {
                n.missed += 1;
            }
            self.exchanges += 1;
        }
        self.version += 1;
        self.set_model(worker, x);
        let version = self.version;
        let m = self.members.get_mut(&worker).expect("checked above");
        m.version = version;
        m.missed = 0;
        m.view.copy_from_slice(&m.model);
        self.refresh_mean();
        Ok(Exchange {
            version,
            peer,
            tau,
            view_distance,
            distance_to_mean: distance(&self.members[&worker].model, &self.mean),
        })
    }

    /// What `worker` gets back, after an exchange or a refusal and in its Welcome: its
    /// version and its model encoded with `codec`. The relay's copy and the worker's view
    /// become what the worker decodes, so that both hold the same model.
    pub fn reply<R: Rng + ?Sized>(
        &mut self,
        worker: u32,
        codec: Codec,
        rng: &mut R,
    ) -> Option<(u64, Vec<u8>)> {
        let m = self.members.get(&worker)?;
        let (version, payload) = (m.version, codec::encode(codec, &m.model, rng));
        // The codecs decode what they encode (their round-trip property tests).
        if codec != Codec::Fp32
            && let Ok(decoded) = codec::decode(&payload, self.len)
        {
            self.set_model(worker, decoded);
            self.refresh_mean();
        }
        let m = self.members.get_mut(&worker)?;
        m.view.copy_from_slice(&m.model);
        m.missed = 0;
        Some((version, payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn models(n: usize, len: usize) -> impl proptest::strategy::Strategy<Value = Vec<Vec<f32>>> {
        // Integers of at most 2^10 in magnitude: after at most 12 halvings every value
        // still fits f32's 24-bit significand, so every pair sum is exact.
        prop::collection::vec(
            prop::collection::vec((-(1i32 << 10)..(1 << 10)).prop_map(|k| k as f32), len),
            n,
        )
    }

    fn sum(models: &[Vec<f32>]) -> Vec<f64> {
        (0..models[0].len())
            .map(|j| models.iter().map(|m| f64::from(m[j])).sum())
            .collect()
    }

    proptest! {
        #[test]
        fn a_pairwise_exchange_without_quantization_preserves_the_mean_model(
            mut ms in models(6, 5), pairs in prop::collection::vec((0usize..6, 0usize..6), 1..12)
        ) {
            let before = sum(&ms);
            for (i, j) in pairs {
                if i == j { continue; }
                let (lo, hi) = (i.min(j), i.max(j));
                let (left, right) = ms.split_at_mut(hi);
                average_pair(&mut left[lo], &mut right[0]);
                prop_assert_eq!(&left[lo], &right[0]);
            }
            prop_assert_eq!(sum(&ms), before);
        }

        #[test]
        fn any_pairwise_exchange_changes_a_pair_sum_by_at_most_one_rounding(
            a in prop::collection::vec(-1e3f32..1e3, 8), b in prop::collection::vec(-1e3f32..1e3, 8)
        ) {
            let (mut x, mut y) = (a.clone(), b.clone());
            average_pair(&mut x, &mut y);
            for j in 0..8 {
                prop_assert_eq!(x[j] + y[j], a[j] + b[j]);
            }
        }

        #[test]
        fn neighbours_are_symmetric_regular_and_picked_among_themselves(
            n in 2u32..40, d in 1u32..8, seed in any::<u64>()
        ) {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            for t in [Topology::Complete, Topology::Ring, Topology::Regular(d)] {
                let Ok(g) = Graph::new(t, n, &mut rng) else {
                    prop_assert!(t.validate(n).is_err());
                    continue;
                };
                let degree = match t {
                    Topology::Complete => n - 1,
                    Topology::Ring => n.min(3) - 1,
                    Topology::Regular(d) => d,
                };
                for i in 0..n {
                    let nb = g.neighbors(i);
                    prop_assert_eq!(nb.len() as u32, degree, "{} on {}", t, n);
                    prop_assert!(!nb.contains(&i));
                    for &j in &nb {
                        prop_assert!(g.neighbors(j).contains(&i));
                    }
                    let p = g.pick(i, &mut rng);
                    prop_assert!(nb.contains(&p));
                }
                prop_assert_eq!(g.edges().len() as u32, n * degree / 2);
            }
        }
    }

    #[test]
    fn quantized_exchange_uses_the_real_codec_and_stays_close() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let a0: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin()).collect();
        let b0: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.11).cos()).collect();
        let (mut a, mut b) = (a0.clone(), b0.clone());
        let codec = Codec::Qsgd {
            bits: 8,
            bucket: 512,
        };
        let bytes = quantized_average(&mut a, &mut b, codec, &mut rng).unwrap();
        assert_eq!(bytes, 2 * codec::encoded_len(codec, 1000));
        let mut exact = (a0, b0);
        average_pair(&mut exact.0, &mut exact.1);
        // Each decoded value is off by less than one level, scale / 127 (scale <= 1), and
        // the average halves that.
        let bound = 0.5 * (1000f32).sqrt() / 127.0;
        assert!(crate::distance(&a, &exact.0) < bound);
        assert!(crate::distance(&b, &exact.1) < bound);
        assert_ne!(a, exact.0);
    }

    #[test]
    fn topologies_parse_and_print() {
        for t in ["complete", "ring", "regular:4"] {
            assert_eq!(t.parse::<Topology>().unwrap().to_string(), t);
        }
        assert!("regular:x".parse::<Topology>().is_err());
        assert!(Topology::Regular(3).validate(7).is_err());
        assert!(Topology::Ring.validate(1).is_err());
    }

    /// A live swarm of `models.len()` members (ids 1, 2, ...) on `topology`.
    fn live(topology: Topology, models: &[Vec<f32>], rng: &mut ChaCha8Rng) -> Swarm {
        let len = models[0].len();
        let mut swarm = Swarm::new(topology, 0, vec![0.0; len].into(), 1e9);
        for (i, m) in models.iter().enumerate() {
            swarm.join(i as u32 + 1, Some(m), rng);
        }
        swarm
    }

    fn live_sum(swarm: &Swarm) -> Vec<f64> {
        let models: Vec<Vec<f32>> = swarm
            .nodes()
            .iter()
            .map(|&id| swarm.model(id).unwrap().to_vec())
            .collect();
        sum(&models)
    }

    proptest! {
        #[test]
        fn a_live_exchange_preserves_the_sum_of_models_and_adds_the_push(
            ms in models(5, 4),
            pushes in prop::collection::vec((0u32..5, prop::collection::vec(-8i32..8, 4)), 1..10),
            ring in any::<bool>(), seed in any::<u64>(),
        ) {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let topology = if ring { Topology::Ring } else { Topology::Complete };
            let mut swarm = live(topology, &ms, &mut rng);
            let mut versions = [0u64; 5];
            for (w, delta) in pushes {
                let delta: Vec<f32> = delta.into_iter().map(|d| d as f32).collect();
                let before = live_sum(&swarm);
                let id = w + 1;
                let x = swarm.on_update(id, versions[w as usize], &delta, &mut rng).unwrap();
                let expected: Vec<f64> =
                    before.iter().zip(&delta).map(|(s, &d)| s + f64::from(d)).collect();
                prop_assert_eq!(live_sum(&swarm), expected);
                let peer = x.peer.expect("five members always have a neighbour");
                prop_assert!(swarm.edges().contains(&(id.min(peer), id.max(peer))));
                prop_assert_eq!(swarm.model(id), swarm.model(peer));
                let (v, _) = swarm.reply(id, Codec::Fp32, &mut rng).unwrap();
                prop_assert_eq!(v, x.version);
                versions[w as usize] = v;
            }
            // The mean the relay evaluates is the mean of the members' models.
            let n = swarm.nodes().len() as f64;
            let mean: Vec<f32> = live_sum(&swarm).iter().map(|s| (s / n) as f32).collect();
            prop_assert_eq!(&swarm.mean()[..], &mean[..]);
        }
    }

    #[test]
    fn the_neighbour_gets_the_average_under_its_next_push() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (a, b) = (vec![4.0f32, 0.0], vec![0.0f32, 8.0]);
        let mut swarm = live(Topology::Ring, &[a, b.clone()], &mut rng);
        let first = swarm.on_update(1, 0, &[2.0, 0.0], &mut rng).unwrap();
        assert_eq!((first.peer, first.tau, first.version), (Some(2), 0, 1));
        // Both copies are (6, 0) and (0, 8) averaged: (3, 4); worker 2 does not know yet.
        assert_eq!(swarm.model(2), Some(&[3.0, 4.0][..]));
        // Worker 2 pushed from its view (0, 8): its delta lands on the averaged copy.
        let second = swarm.on_update(2, 0, &[0.0, 2.0], &mut rng).unwrap();
        assert_eq!((second.peer, second.tau), (Some(1), 1));
        assert_eq!(second.view_distance, crate::distance(&[3.0, 4.0], &b));
        // (3, 6) averaged with worker 1's (3, 4).
        assert_eq!(swarm.model(2), Some(&[3.0, 5.0][..]));
        assert_eq!(swarm.model(1), Some(&[3.0, 5.0][..]));
        assert_eq!(swarm.exchanges(), 2);
        assert_eq!(swarm.meter().summary().tau_max, 1);
    }

    #[test]
    fn refused_pushes_change_nothing() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut swarm = live(Topology::Complete, &[vec![1.0; 3], vec![2.0; 3]], &mut rng);
        swarm.on_update(1, 0, &[0.0; 3], &mut rng).unwrap();
        let before: Vec<Vec<f32>> = (1..=2).map(|i| swarm.model(i).unwrap().to_vec()).collect();
        let bad: [(u32, u64, Vec<f32>, u16); 5] = [
            // Worker 1 got version 1 back: version 0 is gone.
            (1, 0, vec![0.0; 3], crate::codes::code::RESYNC),
            (2, 7, vec![0.0; 3], crate::codes::code::RESYNC),
            (2, 0, vec![0.0; 2], crate::codes::code::WRONG_LENGTH),
            (
                2,
                0,
                vec![0.0, f32::NAN, 0.0],
                crate::codes::code::NON_FINITE,
            ),
            (9, 0, vec![0.0; 3], crate::codes::code::RESYNC),
        ];
        for (w, base, delta, code) in bad {
            let e = swarm.on_update(w, base, &delta, &mut rng).unwrap_err();
            assert_eq!(e.code(), code, "{e}");
        }
        let after: Vec<Vec<f32>> = (1..=2).map(|i| swarm.model(i).unwrap().to_vec()).collect();
        assert_eq!(before, after);
        assert_eq!((swarm.version(), swarm.exchanges()), (1, 1));
    }

    #[test]
    fn the_graph_follows_the_members_and_falls_back_to_complete() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut swarm = live(
            Topology::Regular(4),
            &[vec![0.0], vec![2.0], vec![4.0]],
            &mut rng,
        );
        assert_eq!(swarm.graph(), Some(Topology::Complete));
        assert_eq!(swarm.edges(), [(1, 2), (1, 3), (2, 3)]);
        for id in 4..=6 {
            swarm.join(id, None, &mut rng);
        }
        // Newcomers start from the mean model; six members fit regular:4.
        assert_eq!(swarm.model(6), Some(&[2.0][..]));
        assert_eq!(swarm.graph(), Some(Topology::Regular(4)));
        assert_eq!(swarm.edges().len(), 12);
        for id in 2..=6 {
            swarm.leave(id, &mut rng);
        }
        // Alone: no graph; a push is applied to its own model only.
        assert_eq!((swarm.graph(), swarm.nodes()), (None, vec![1]));
        let x = swarm.on_update(1, 0, &[1.0], &mut rng).unwrap();
        assert_eq!((x.peer, swarm.exchanges()), (None, 0));
        // Those that left still count in the mean: (1 + 2 + 4 + 2 + 2 + 2) / 6.
        assert_eq!(swarm.mean()[0], (13.0f64 / 6.0) as f32);
        // A member that comes back has kept its model; the removed are forgotten.
        swarm.join(3, None, &mut rng);
        assert_eq!(swarm.model(3), Some(&[4.0][..]));
        for id in [2, 4, 5, 6] {
            swarm.remove(id, &mut rng);
        }
        assert_eq!(swarm.nodes(), [1, 3]);
        assert_eq!(&swarm.mean()[..], &[2.5]);
    }

    #[test]
    fn a_lossy_reply_leaves_the_relay_holding_what_the_worker_decodes() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let a: Vec<f32> = (0..600).map(|i| (i as f32 * 0.3).sin()).collect();
        let b: Vec<f32> = (0..600).map(|i| (i as f32 * 0.7).cos()).collect();
        let mut swarm = live(Topology::Ring, &[a, b], &mut rng);
        let qsgd = Codec::Qsgd {
            bits: 4,
            bucket: 256,
        };
        let (version, payload) = swarm.reply(1, qsgd, &mut rng).unwrap();
        assert_eq!(version, 0);
        let decoded = codec::decode(&payload, 600).unwrap();
        assert_eq!(swarm.model(1), Some(&decoded[..]));
        swarm.reset(&[0.5; 600]);
        assert_eq!(swarm.version(), 1);
        assert_eq!(&swarm.mean()[..], &[0.5; 600][..]);
        let stale = swarm.on_update(2, 0, &[0.0; 600], &mut rng).unwrap_err();
        assert_eq!(stale.code(), crate::codes::code::RESYNC);
    }
}
