//! `cargo xtask wasm`: builds the browser client into `www/pkg`.
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
