//! Deals a set of labelled digits out to workers: evenly (IID), with Dirichlet label skew,
//! or with a fixed number of classes per worker.
//!
//! Everything here is pure and deterministic: the same labels, worker count, scheme and seed
//! give the same shards on every platform, native or wasm, because the only randomness is a
//! [`ChaCha8Rng`] seeded from `seed`.

use crate::model::CLASSES;
pub use easel_protocol::partition::{Partition, PartitionError};
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma};

/// Deals the digits whose labels are `labels` out to `workers` workers.
///
/// Returns, for each worker, the indices into `labels` of its digits, in ascending order.
/// Every index from `0` to `labels.len() - 1` appears in exactly one worker's list. The
/// result depends only on the arguments: the same seed gives the same shards.
///
/// No worker is left empty when that can be avoided, that is when there are at least as
/// many digits as workers. Dirichlet proportions (and, rarely, small classes under
/// [`Partition::ClassesPerWorker`]) can leave a worker with nothing; then, while some worker
/// is empty, the first empty worker takes one digit from the largest worker (the first one
/// on ties), namely the last-dealt digit of that worker's most common class. Each move fills
/// one worker and empties none, so the skew is otherwise untouched.
///
/// Errors: zero workers, an invalid scheme parameter (see [`Partition::validate`]), a label
/// of 10 or more, and for [`Partition::ClassesPerWorker`] fewer than 10 class slots in all
/// (`workers * k < 10`), since then some digits would belong to no worker.
pub fn partition(
    labels: &[u8],
    workers: usize,
    scheme: Partition,
    seed: u64,
) -> Result<Vec<Vec<u32>>, PartitionError> {
    scheme.validate_for(workers)?;
    if let Some(index) = labels.iter().position(|&l| l as usize >= CLASSES) {
        return Err(PartitionError::BadLabel {
            index,
            label: labels[index],
        });
    }
    assert!(
        u32::try_from(labels.len()).is_ok(),
        "at most 2^32 digits can be partitioned"
    );

    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut shards = match scheme {
        Partition::Iid => {
            let mut all: Vec<u32> = (0..labels.len() as u32).collect();
            all.shuffle(&mut rng);
            deal(&all, workers)
        }
        Partition::Dirichlet { alpha } => {
            let mut shards = vec![Vec::new(); workers];
            for mut members in by_class(labels) {
                members.shuffle(&mut rng);
                let p = dirichlet(&mut rng, alpha, workers);
                let n = members.len();
                let (mut start, mut cumulative) = (0, 0.0);
                for (w, shard) in shards.iter_mut().enumerate() {
                    cumulative += p[w];
                    let end = if w + 1 == workers {
                        n
                    } else {
                        ((cumulative * n as f64).round() as usize).clamp(start, n)
                    };
                    shard.extend_from_slice(&members[start..end]);
                    start = end;
                }
            }
            shards
        }
        Partition::ClassesPerWorker { k } => {
            // Lay the classes out in a random order and give worker w the k classes at
            // positions w*k .. w*k+k (mod 10): the k are distinct, and every class is held
            // by floor or ceil of workers*k/10 workers.
            let mut order: Vec<usize> = (0..CLASSES).collect();
            order.shuffle(&mut rng);
            let mut holders = vec![Vec::new(); CLASSES];
            for w in 0..workers {
                for j in 0..k {
                    holders[order[(w * k + j) % CLASSES]].push(w);
                }
            }
            let mut shards = vec![Vec::new(); workers];
            for (mut members, holders) in by_class(labels).into_iter().zip(&holders) {
                members.shuffle(&mut rng);
                for (part, &w) in deal(&members, holders.len()).into_iter().zip(holders) {
                    shards[w].extend(part);
                }
            }
            shards
        }
    };
    fill_empty_workers(&mut shards, labels);
    for shard in &mut shards {
        shard.sort_unstable();
    }
    Ok(shards)
}

/// The indices of each class, in ascending order.
fn by_class(labels: &[u8]) -> Vec<Vec<u32>> {
    let mut classes = vec![Vec::new(); CLASSES];
    for (i, &l) in labels.iter().enumerate() {
        classes[l as usize].push(i as u32);
    }
    classes
}

/// Splits `items` into `parts` consecutive runs whose lengths differ by at most one (the
/// first `items.len() % parts` runs are the longer ones).
fn deal(items: &[u32], parts: usize) -> Vec<Vec<u32>> {
    let (base, extra) = (items.len() / parts, items.len() % parts);
    let mut start = 0;
    (0..parts)
        .map(|i| {
            let len = base + usize::from(i < extra);
            let run = items[start..start + len].to_vec();
            start += len;
            run
        })
        .collect()
}

/// A draw from the symmetric Dirichlet distribution with concentration `alpha` over `n`
/// outcomes.
///
/// Normalised Gamma(alpha) draws, computed in log space so that tiny `alpha` (whose Gamma
/// draws underflow to zero) still gives a proper distribution: a Gamma(alpha) draw is a
/// Gamma(alpha + 1) draw times `U^(1/alpha)` with `U` uniform on (0, 1].
fn dirichlet(rng: &mut ChaCha8Rng, alpha: f64, n: usize) -> Vec<f64> {
    let gamma = Gamma::new(alpha + 1.0, 1.0).expect("alpha + 1 is a valid Gamma shape");
    let logs: Vec<f64> = (0..n)
        .map(|_| {
            let g: f64 = gamma.sample(rng);
            let u = 1.0 - rng.random::<f64>();
            g.ln() + u.ln() / alpha
        })
        .collect();
    let max = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = logs.iter().map(|l| (l - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    weights.iter().map(|w| w / total).collect()
}

/// Moves digits to empty workers as [`partition`] documents.
fn fill_empty_workers(shards: &mut [Vec<u32>], labels: &[u8]) {
    while let Some(empty) = shards.iter().position(Vec::is_empty) {
        let donor = (0..shards.len())
            .rev()
            .max_by_key(|&w| shards[w].len())
            .expect("at least one worker");
        if shards[donor].len() < 2 {
            return;
        }
        let mut counts = [0usize; CLASSES];
        for &i in &shards[donor] {
            counts[labels[i as usize] as usize] += 1;
        }
        let class = (0..CLASSES)
            .rev()
            .max_by_key(|&c| counts[c])
            .expect("ten classes") as u8;
        let at = shards[donor]
            .iter()
            .rposition(|&i| labels[i as usize] == class)
            .expect("the donor holds its most common class");
        let digit = shards[donor].remove(at);
        shards[empty].push(digit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn scheme() -> impl Strategy<Value = Partition> {
        prop_oneof![
            Just(Partition::Iid),
            (-3.0f64..3.0).prop_map(|e| Partition::Dirichlet {
                alpha: 10f64.powf(e)
            }),
            (1usize..=10).prop_map(|k| Partition::ClassesPerWorker { k }),
        ]
    }

    fn labels() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(0u8..10, 0..400)
    }

    /// Whether `workers` and `scheme` can cover every class.
    fn feasible(workers: usize, scheme: Partition) -> bool {
        match scheme {
            Partition::ClassesPerWorker { k } => workers * k >= CLASSES,
            _ => true,
        }
    }

    proptest! {
        #[test]
        fn every_digit_goes_to_exactly_one_worker(
            labels in labels(), workers in 1usize..25, scheme in scheme(), seed: u64,
        ) {
            let result = partition(&labels, workers, scheme, seed);
            if !feasible(workers, scheme) {
                prop_assert!(
                    matches!(result, Err(PartitionError::TooFewClassSlots { .. })),
                    "{:?}",
                    result
                );
                return Ok(());
            }
            let shards = result.unwrap();
            prop_assert_eq!(shards.len(), workers);
            let mut all: Vec<u32> = shards.iter().flatten().copied().collect();
            all.sort_unstable();
            let expected: Vec<u32> = (0..labels.len() as u32).collect();
            prop_assert_eq!(all, expected);
            for shard in &shards {
                prop_assert!(shard.windows(2).all(|w| w[0] < w[1]), "sorted");
            }
            if labels.len() >= workers {
                prop_assert!(shards.iter().all(|s| !s.is_empty()), "no worker left empty");
            }
        }

        #[test]
        fn same_seed_same_shards(
            labels in labels(), workers in 1usize..25, scheme in scheme(), seed: u64,
        ) {
            prop_assert_eq!(
                partition(&labels, workers, scheme, seed),
                partition(&labels, workers, scheme, seed)
            );
        }

        #[test]
        fn iid_sizes_differ_by_at_most_one(
            labels in labels(), workers in 1usize..25, seed: u64,
        ) {
            let shards = partition(&labels, workers, Partition::Iid, seed).unwrap();
            let sizes: Vec<usize> = shards.iter().map(Vec::len).collect();
            let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            prop_assert!(max - min <= 1, "{:?}", sizes);
        }

        #[test]
        fn classes_per_worker_sees_at_most_k_labels(
            labels in labels(), workers in 1usize..25, k in 1usize..=10, seed: u64,
        ) {
            prop_assume!(workers * k >= CLASSES);
            let shards =
                partition(&labels, workers, Partition::ClassesPerWorker { k }, seed).unwrap();
            for shard in &shards {
                let seen: BTreeSet<u8> = shard.iter().map(|&i| labels[i as usize]).collect();
                prop_assert!(seen.len() <= k, "{} labels with k = {}", seen.len(), k);
            }
        }

        #[test]
        fn dirichlet_draws_are_distributions(alpha_exp in -4.0f64..4.0, n in 1usize..50, seed: u64) {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let p = dirichlet(&mut rng, 10f64.powf(alpha_exp), n);
            prop_assert!(p.iter().all(|x| x.is_finite() && *x >= 0.0));
            prop_assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        }

        #[test]
        fn schemes_round_trip_through_text(scheme in scheme()) {
            prop_assert_eq!(scheme.to_string().parse::<Partition>().unwrap(), scheme);
        }
    }

    /// 600 digits of each class, in class order.
    fn balanced_labels() -> Vec<u8> {
        (0..CLASSES as u8)
            .flat_map(|c| std::iter::repeat_n(c, 600))
            .collect()
    }

    /// The mean over workers of the total-variation distance between the worker's label
    /// distribution and the uniform one: 0 for IID shards, close to 0.9 when every worker
    /// holds a single class.
    fn mean_label_skew(labels: &[u8], shards: &[Vec<u32>]) -> f64 {
        let skews = shards.iter().map(|shard| {
            let mut counts = [0usize; CLASSES];
            for &i in shard {
                counts[labels[i as usize] as usize] += 1;
            }
            let n = shard.len() as f64;
            counts
                .iter()
                .map(|&c| (c as f64 / n - 1.0 / CLASSES as f64).abs())
                .sum::<f64>()
                / 2.0
        });
        skews.sum::<f64>() / shards.len() as f64
    }

    #[test]
    fn dirichlet_skew_follows_alpha() {
        let labels = balanced_labels();
        let skew = |alpha: f64| {
            let shards = partition(&labels, 10, Partition::Dirichlet { alpha }, 42).unwrap();
            mean_label_skew(&labels, &shards)
        };
        let (near_iid, mild, skewed) = (skew(1000.0), skew(1.0), skew(0.05));
        assert!(near_iid < 0.05, "alpha 1000 gives skew {near_iid}");
        assert!(skewed > 0.6, "alpha 0.05 gives skew {skewed}");
        assert!(
            near_iid < mild && mild < skewed,
            "{near_iid} < {mild} < {skewed}"
        );
        let iid = partition(&labels, 10, Partition::Iid, 42).unwrap();
        assert!(mean_label_skew(&labels, &iid) < 0.05);
    }

    #[test]
    fn tiny_alpha_still_leaves_no_worker_empty() {
        let labels = balanced_labels();
        let shards = partition(&labels, 30, Partition::Dirichlet { alpha: 1e-3 }, 7).unwrap();
        assert!(shards.iter().all(|s| !s.is_empty()));
        // Nearly every class went whole to one worker; the others got one digit each.
        let small = shards.iter().filter(|s| s.len() == 1).count();
        assert!(small >= 15, "{small} workers with a single digit");
    }

    #[test]
    fn classes_are_spread_evenly_over_workers() {
        let labels = balanced_labels();
        let shards = partition(&labels, 5, Partition::ClassesPerWorker { k: 2 }, 3).unwrap();
        for shard in &shards {
            let seen: BTreeSet<u8> = shard.iter().map(|&i| labels[i as usize]).collect();
            assert_eq!(seen.len(), 2);
            assert_eq!(shard.len(), 1200);
        }
        let shards = partition(&labels, 7, Partition::ClassesPerWorker { k: 3 }, 3).unwrap();
        let mut holders = [0; CLASSES];
        for shard in &shards {
            let seen: BTreeSet<u8> = shard.iter().map(|&i| labels[i as usize]).collect();
            assert_eq!(seen.len(), 3);
            for c in seen {
                holders[c as usize] += 1;
            }
        }
        assert!(holders.iter().all(|&h| h == 2 || h == 3), "{holders:?}");
    }

    #[test]
    fn different_seeds_give_different_shards() {
        let labels = balanced_labels();
        for scheme in [
            Partition::Iid,
            Partition::Dirichlet { alpha: 0.5 },
            Partition::ClassesPerWorker { k: 2 },
        ] {
            assert_ne!(
                partition(&labels, 8, scheme, 1).unwrap(),
                partition(&labels, 8, scheme, 2).unwrap(),
                "{scheme}"
            );
        }
    }

    #[test]
    fn invalid_arguments_give_typed_errors() {
        let labels = [0u8, 1, 2];
        assert_eq!(
            partition(&labels, 0, Partition::Iid, 0),
            Err(PartitionError::NoWorkers)
        );
        for k in [0, 11] {
            assert_eq!(
                partition(&labels, 3, Partition::ClassesPerWorker { k }, 0),
                Err(PartitionError::BadClassesPerWorker { k })
            );
        }
        assert_eq!(
            partition(&labels, 3, Partition::ClassesPerWorker { k: 3 }, 0),
            Err(PartitionError::TooFewClassSlots { workers: 3, k: 3 })
        );
        for alpha in [0.0, -1.0, f64::INFINITY] {
            assert_eq!(
                partition(&labels, 3, Partition::Dirichlet { alpha }, 0),
                Err(PartitionError::BadAlpha { alpha })
            );
        }
        assert!(matches!(
            partition(&labels, 3, Partition::Dirichlet { alpha: f64::NAN }, 0),
            Err(PartitionError::BadAlpha { .. })
        ));
        assert_eq!(
            partition(&[1, 12], 2, Partition::Iid, 0),
            Err(PartitionError::BadLabel {
                index: 1,
                label: 12
            })
        );
    }

    #[test]
    fn scheme_text_is_parsed_and_checked() {
        assert_eq!("iid".parse(), Ok(Partition::Iid));
        assert_eq!(
            "dirichlet:0.5".parse(),
            Ok(Partition::Dirichlet { alpha: 0.5 })
        );
        assert_eq!(
            "classes:2".parse(),
            Ok(Partition::ClassesPerWorker { k: 2 })
        );
        assert!(matches!(
            "dirichlet:-1".parse::<Partition>(),
            Err(PartitionError::BadAlpha { .. })
        ));
        assert!(matches!(
            "shards:3".parse::<Partition>(),
            Err(PartitionError::Syntax { .. })
        ));
    }
}
