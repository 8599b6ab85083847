//! `cargo xtask wasm`: builds the browser client into `www/pkg`, and brings the pages'
//! third-party scripts (the chart library, pinned in `www/package-lock.json`) into
//! `www/vendor`.
//!
//! The client is built twice from the same code: `easel_client_bg.wasm` with 128-bit SIMD
//! (`.cargo/config.toml`), which every browser Easel targets has, and
//! `easel_client_relaxed_bg.wasm` with relaxed SIMD as well (its CPU kernels then use fused
//! multiply-adds). A browser without relaxed SIMD rejects the whole second module, so the
//! pages choose before loading (`www/wasm-select.js`) and both modules must share one
//! JavaScript glue file: the build checks that wasm-bindgen writes the same glue for both.
//!
//! The wasm-bindgen CLI must be exactly the version of the `wasm-bindgen` crate in
//! `Cargo.lock`, so it is checked and, if needed, installed with `cargo install` (without
//! `--locked`, which fails for wasm-bindgen-cli on this registry).

use crate::{cargo, exec, output, root, target_dir, which};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-unknown-unknown";

/// The relaxed-SIMD build's flags: `.cargo/config.toml`'s `+simd128`, and `+relaxed-simd`.
/// Given through `CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS`, which takes the place of the
/// config file's flags for that one build, in a target directory of its own so that the two
/// builds do not rebuild each other's dependencies.
const RELAXED_RUSTFLAGS: &str = "-C target-feature=+simd128,+relaxed-simd";

/// The relaxed-SIMD module's name in `www/pkg`, beside the baseline `easel_client_bg.wasm`.
const RELAXED_WASM: &str = "easel_client_relaxed_bg.wasm";

/// Builds both modules in release mode and runs wasm-bindgen on them.
pub fn run() -> Result<()> {
    let version = locked_wasm_bindgen_version()?;
    ensure_target()?;
    let bindgen = ensure_bindgen(&version)?;
    let out_dir = root().join("www").join("pkg");
    build_and_bind(&bindgen, &target_dir(), None, &out_dir)?;
    // The relaxed-SIMD module: bound in a directory of its own, and kept only if its glue is
    // the baseline one byte for byte (one `easel_client.js` loads either module).
    let relaxed_target = target_dir().join("relaxed-simd");
    let relaxed_out = relaxed_target.join("pkg");
    build_and_bind(
        &bindgen,
        &relaxed_target,
        Some(RELAXED_RUSTFLAGS),
        &relaxed_out,
    )?;
    let glue = |dir: &Path| {
        let path = dir.join("easel_client.js");
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    };
    if glue(&out_dir)? != glue(&relaxed_out)? {
        bail!(
            "wasm-bindgen wrote different JavaScript glue for the relaxed-SIMD module ({}) than \
             for the baseline one ({}), so one glue file cannot load both",
            relaxed_out.display(),
            out_dir.display()
        );
    }
    let (from, to) = (
        relaxed_out.join("easel_client_bg.wasm"),
        out_dir.join(RELAXED_WASM),
    );
    std::fs::copy(&from, &to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    eprintln!("==> the browser client is in {}", out_dir.display());
    vendor()
}

/// Builds `easel_client.wasm` in release mode into `target` (with `rustflags` for the wasm
/// target instead of `.cargo/config.toml`'s, if given) and runs wasm-bindgen on it into `out`.
fn build_and_bind(
    bindgen: &Path,
    target: &Path,
    rustflags: Option<&str>,
    out: &Path,
) -> Result<()> {
    let mut build = cargo();
    build.env("CARGO_TARGET_DIR", target).args([
        "build",
        "--release",
        "--target",
        TARGET,
        "-p",
        "easel-client",
        "--lib",
    ]);
    if let Some(flags) = rustflags {
        build.env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS", flags);
    }
    exec(&mut build)?;
    let wasm = target
        .join(TARGET)
        .join("release")
        .join("easel_client.wasm");
    if !wasm.is_file() {
        bail!("the build succeeded but {} is missing", wasm.display());
    }
    exec(
        Command::new(bindgen)
            .args(["--target", "web", "--no-typescript", "--out-dir"])
            .arg(out)
            .arg(&wasm)
            .current_dir(root()),
    )
}

/// The files `www/vendor/` gets from `www/node_modules/` after `npm ci`: the chart library
/// uPlot (MIT), which the pages load with a plain `<script>` tag.
const VENDOR_FILES: [(&str, &str); 2] = [
    ("uplot/dist/uPlot.iife.min.js", "uPlot.iife.min.js"),
    ("uplot/dist/uPlot.min.css", "uPlot.min.css"),
];

/// Installs the pages' npm dependencies exactly as locked and copies [`VENDOR_FILES`] into
/// `www/vendor/`.
pub fn vendor() -> Result<()> {
    let www = root().join("www");
    if which("npm").is_none() {
        crate::apt_install(
            &["nodejs", "npm"],
            "bringing in the chart library (with npm)",
        )?;
    }
    exec(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&www)
            // Progress, not a result: stdout stays free for commands that print JSON.
            .stdout(std::process::Stdio::from(std::io::stderr())),
    )
    .context("installing the pages' chart library from the npm registry failed")?;
    let vendor = www.join("vendor");
    std::fs::create_dir_all(&vendor).with_context(|| format!("creating {}", vendor.display()))?;
    for (from, to) in VENDOR_FILES {
        let from = www.join("node_modules").join(from);
        std::fs::copy(&from, vendor.join(to))
            .with_context(|| format!("copying {} into {}", from.display(), vendor.display()))?;
    }
    eprintln!("==> the chart library is in {}", vendor.display());
    Ok(())
}

/// The version of the `wasm-bindgen` package in `Cargo.lock`.
fn locked_wasm_bindgen_version() -> Result<String> {
    let path = root().join("Cargo.lock");
    let lock = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {} (run `cargo generate-lockfile`)", path.display()))?;
    let mut versions = lock_versions(&lock, "wasm-bindgen");
    versions.dedup();
    match versions.as_slice() {
        [] => bail!(
            "Cargo.lock has no `wasm-bindgen` package, so there is no browser client to build \
             yet: the client's wasm-bindgen surface (client/src/web.rs) must depend on \
             `wasm-bindgen` first"
        ),
        [one] => Ok(one.clone()),
        many => bail!(
            "Cargo.lock has several `wasm-bindgen` versions ({}); the CLI can match only one",
            many.join(", ")
        ),
    }
}

/// The versions of every `[[package]]` called `name` in a `Cargo.lock`, sorted.
fn lock_versions(lock: &str, name: &str) -> Vec<String> {
    let mut versions: Vec<String> = lock
        .split("[[package]]")
        .filter(|block| {
            block
                .lines()
                .any(|l| l.trim() == format!("name = \"{name}\""))
        })
        .filter_map(|block| {
            let line = block
                .lines()
                .find(|l| l.trim_start().starts_with("version = \""))?;
            Some(line.split('"').nth(1)?.to_string())
        })
        .collect();
    versions.sort();
    versions
}

/// Makes sure the standard library for the wasm target is installed.
fn ensure_target() -> Result<()> {
    if which("rustup").is_some() {
        exec(Command::new("rustup").args(["target", "add", TARGET]))
    } else {
        eprintln!("==> rustup not found; assuming the {TARGET} target is installed");
        Ok(())
    }
}

/// The path of a wasm-bindgen CLI of exactly `version`, installing it if needed.
fn ensure_bindgen(version: &str) -> Result<PathBuf> {
    let wanted = format!("wasm-bindgen {version}");
    let installed = cargo_home().join("bin").join("wasm-bindgen");
    let candidates = which("wasm-bindgen").into_iter().chain([installed.clone()]);
    for candidate in candidates {
        let found = output(&candidate, &["--version"]);
        if found.as_deref().map(str::trim) == Some(wanted.as_str()) {
            return Ok(candidate);
        }
        if let Some(found) = found {
            eprintln!(
                "==> {} is {}, but Cargo.lock wants {version}",
                candidate.display(),
                found.trim()
            );
        }
    }
    exec(cargo().args(["install", "wasm-bindgen-cli", "--version", version]))
        .context("installing wasm-bindgen-cli failed")?;
    match output(&installed, &["--version"]) {
        Some(found) if found.trim() == wanted => Ok(installed),
        found => bail!(
            "after `cargo install`, {} reports {:?} instead of {wanted}",
            installed.display(),
            found.unwrap_or_default().trim()
        ),
    }
}

/// Where `cargo install` puts binaries: `$CARGO_HOME/bin`, by default `~/.cargo/bin`.
fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from(".cargo"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_package_versions_in_a_lock_file() {
        let lock = r#"
[[package]]
name = "wasm-bindgen"
version = "0.2.130"
source = "registry+https://github.com/rust-lang/crates.io-index"

[[package]]
name = "wasm-bindgen-shared"
version = "0.2.130"

[[package]]
name = "web-sys"
version = "0.3.80"
dependencies = [
 "wasm-bindgen",
]
"#;
        assert_eq!(lock_versions(lock, "wasm-bindgen"), vec!["0.2.130"]);
        assert!(lock_versions(lock, "wasm").is_empty());
    }
}
