//! `cargo xtask wasm`: builds the browser client into `www/pkg`, and brings the pages'
//! third-party scripts (the chart library, pinned in `www/package-lock.json`) into
//! `www/vendor`.
//!
//! The wasm-bindgen CLI must be exactly the version of the `wasm-bindgen` crate in
//! `Cargo.lock`, so it is checked and, if needed, installed with `cargo install` (without
//! `--locked`, which fails for wasm-bindgen-cli on this registry).

use crate::{cargo, exec, output, root, target_dir, which};
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::Command;

const TARGET: &str = "wasm32-unknown-unknown";

/// Builds `easel_client.wasm` in release mode and runs wasm-bindgen on it.
pub fn run() -> Result<()> {
    let version = locked_wasm_bindgen_version()?;
    ensure_target()?;
    let bindgen = ensure_bindgen(&version)?;
    exec(cargo().args([
        "build",
        "--release",
        "--target",
        TARGET,
        "-p",
        "easel-client",
        "--lib",
    ]))?;
    let wasm = target_dir()
        .join(TARGET)
        .join("release")
        .join("easel_client.wasm");
    if !wasm.is_file() {
        bail!("the build succeeded but {} is missing", wasm.display());
    }
    let out_dir = root().join("www").join("pkg");
    exec(
        Command::new(&bindgen)
            .args(["--target", "web", "--no-typescript", "--out-dir"])
            .arg(&out_dir)
            .arg(&wasm)
            .current_dir(root()),
    )?;
    eprintln!("==> the browser client is in {}", out_dir.display());
    vendor()
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
