//! SwarmSGD (Nadiradze et al., 1910.12308): workers sit on a graph; after its local steps a
//! worker picks a neighbour uniformly at random and the two average their models, possibly
//! through a quantizing codec. There is no central model in the update path: whoever wants
//! to evaluate the swarm averages all models (the mean model).

use std::fmt;
use std::str::FromStr;

use rand::seq::SliceRandom;
use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};

use crate::codec::{self, Codec, CodecError};

use super::StrategyError;

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
}
