//! `cargo xtask bench-browser`: headless Chromium trains lenet5-28 at batch 64 in one tab,
//! with Easel's wasm client on WebGPU and on the CPU and with TensorFlow.js beside it, and
//! prints the steady-state figures as JSON (`bench/browser/bench.mjs`), with the native CPU path
//! (`easel bench train --backend cpu`) measured right before and after the wasm one and the
//! wasm/native ratio. Standard output is that one JSON document: the preparation's output goes
//! to standard error. Not part of the tests.

use crate::{cargo, data, exec, root, target_dir, test, wasm, which};
use anyhow::Result;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Prepares what the benchmark needs and runs it.
pub fn run() -> Result<()> {
    test::prerequisites()?;
    data::run()?;
    wasm::run()?;
    exec(cargo().args(["build", "--release", "-p", "easel", "--bin", "easel"]))?;
    let dir = root().join("bench").join("browser");
    exec(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            // npm's "added N packages" would otherwise come before the JSON on stdout.
            .stdout(Stdio::from(std::io::stderr())),
    )?;
    let chromium = which("chromium").unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    exec(
        Command::new("node")
            .arg(dir.join("bench.mjs"))
            .current_dir(root())
            .env("EASEL_BIN", target_dir().join("release").join("easel"))
            .env("CHROMIUM", chromium),
    )
}
