//! How a room's training digits are dealt out to its workers, as the settings name it:
//! `iid`, `dirichlet:ALPHA` or `classes:K`. The grammar and its validation live here, with
//! the other settings every side agrees on; the dealing itself is the client's
//! (`easel_client::data::partition`).

use std::fmt;
use std::str::FromStr;

/// The number of classes a scheme deals: MNIST's ten digits.
pub const CLASSES: usize = 10;

/// How digits are dealt out to workers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Partition {
    /// Shuffle all digits and deal them evenly: every worker sees every class about equally
    /// often, and shard sizes differ by at most one.
    Iid,
    /// Label skew: for each class, proportions over the workers are drawn from a symmetric
    /// Dirichlet distribution with concentration `alpha`, and the class's digits are split
    /// in those proportions. Large `alpha` (100 and up) is close to IID; small `alpha`
    /// (0.1 and below) gives most workers only one or two classes.
    Dirichlet {
        /// The concentration, finite and greater than zero.
        alpha: f64,
    },
    /// Every worker holds exactly `k` distinct classes (fewer only if a class has too few
    /// digits), the classes are spread over the workers as evenly as possible, and each
    /// class's digits are split evenly among the workers that hold it.
    ClassesPerWorker {
        /// Classes per worker, from 1 to 10.
        k: usize,
    },
}

/// Why a partition could not be made.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PartitionError {
    /// Zero workers were asked for.
    #[error("cannot deal digits out to 0 workers; ask for at least one worker")]
    NoWorkers,
    /// `k` is not between 1 and the number of classes.
    #[error("{k} classes per worker is out of range: k must be between 1 and 10")]
    BadClassesPerWorker { k: usize },
    /// `alpha` is zero, negative, infinite or NaN.
    #[error("Dirichlet alpha {alpha} is invalid: it must be a finite number greater than 0")]
    BadAlpha { alpha: f64 },
    /// `workers * k` is less than the number of classes, so some class would have no worker.
    #[error(
        "{workers} workers with {k} classes each cannot cover all 10 digits, so some digits \
         would be used by no worker; use more workers or a larger k (workers * k >= 10)"
    )]
    TooFewClassSlots { workers: usize, k: usize },
    /// A label is not a digit from 0 to 9.
    #[error("label {label} at index {index} is not a digit from 0 to 9")]
    BadLabel { index: usize, label: u8 },
    /// A scheme's text (see [`Partition::from_str`]) could not be read.
    #[error(
        "cannot read the partition scheme {text:?}: write `iid`, `dirichlet:ALPHA` (for \
         example `dirichlet:0.5`) or `classes:K` (for example `classes:2`)"
    )]
    Syntax { text: String },
}

impl Partition {
    /// Checks the scheme's own parameters: `alpha` finite and positive, `k` from 1 to 10.
    pub fn validate(&self) -> Result<(), PartitionError> {
        match *self {
            Partition::Iid => Ok(()),
            Partition::Dirichlet { alpha } if alpha.is_finite() && alpha > 0.0 => Ok(()),
            Partition::Dirichlet { alpha } => Err(PartitionError::BadAlpha { alpha }),
            Partition::ClassesPerWorker { k } if (1..=CLASSES).contains(&k) => Ok(()),
            Partition::ClassesPerWorker { k } => Err(PartitionError::BadClassesPerWorker { k }),
        }
    }

    /// [`Partition::validate`], and that the digits can be dealt to `workers` shards: at
    /// least one, and for `classes:K` at least 10 class slots (`workers * k >= 10`), or
    /// some digits would belong to no worker.
    pub fn validate_for(&self, workers: usize) -> Result<(), PartitionError> {
        if workers == 0 {
            return Err(PartitionError::NoWorkers);
        }
        self.validate()?;
        match *self {
            Partition::ClassesPerWorker { k } if workers.saturating_mul(k) < CLASSES => {
                Err(PartitionError::TooFewClassSlots { workers, k })
            }
            _ => Ok(()),
        }
    }
}

/// Reads `iid`, `dirichlet:ALPHA` or `classes:K`, the same text [`Partition`]'s `Display`
/// writes, and validates the parameters.
impl FromStr for Partition {
    type Err = PartitionError;

    fn from_str(text: &str) -> Result<Partition, PartitionError> {
        let syntax = || PartitionError::Syntax {
            text: text.to_string(),
        };
        let t = text.trim();
        let scheme = match t.split_once(':') {
            None if t.eq_ignore_ascii_case("iid") => Partition::Iid,
            Some((name, value)) if name.eq_ignore_ascii_case("dirichlet") => Partition::Dirichlet {
                alpha: value.trim().parse().map_err(|_| syntax())?,
            },
            Some((name, value)) if name.eq_ignore_ascii_case("classes") => {
                Partition::ClassesPerWorker {
                    k: value.trim().parse().map_err(|_| syntax())?,
                }
            }
            _ => return Err(syntax()),
        };
        scheme.validate()?;
        Ok(scheme)
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Partition::Iid => write!(f, "iid"),
            Partition::Dirichlet { alpha } => write!(f, "dirichlet:{alpha}"),
            Partition::ClassesPerWorker { k } => write!(f, "classes:{k}"),
        }
    }
}
