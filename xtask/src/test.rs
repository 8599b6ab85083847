//! `cargo xtask test`: installs the system packages the tests need, prepares the data and
//! the browser client, and runs the Rust tests and the browser tests.

use crate::{apt_install, cargo, data, exec, root, target_dir, wasm, which};
use anyhow::{Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Debian packages the tests need: a headless browser with WebGPU, and Vulkan on the
/// CPU (lavapipe) so that the GPU kernels run natively without a GPU.
const PACKAGES: [&str; 3] = ["chromium", "mesa-vulkan-drivers", "libvulkan1"];

/// Where the browser tests live.
const BROWSER_TESTS: &str = "tests/browser";

/// Runs every step; later steps still run when the Rust tests fail, and the task fails if
/// any step did.
pub fn run() -> Result<()> {
    prerequisites()?;
    data::run()?;
    wasm::run()?;

    let mut failed = Vec::new();
    for src in crate::modgraph::ACYCLIC {
        eprintln!("==> module graph of {src} has no cycle");
        if let Err(e) = crate::modgraph::check(&crate::root().join(src)) {
            eprintln!("xtask: {e:#}");
            failed.push("module cycles");
        }
    }
    if let Err(e) = exec(cargo().args(["test", "--workspace", "--release", "--no-fail-fast"])) {
        eprintln!("xtask: {e:#}");
        failed.push("cargo test");
    }
    if let Err(e) = browser_tests() {
        eprintln!("xtask: {e:#}");
        failed.push("browser tests");
    }
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    eprintln!("==> all tests passed");
    Ok(())
}

/// Installs [`PACKAGES`] (and Node.js) with apt when something is missing and we are root;
/// otherwise prints the command to run and fails.
pub fn prerequisites() -> Result<()> {
    let mut missing = Vec::new();
    if which("chromium").is_none() {
        missing.push("chromium (the `chromium` command)");
    }
    if !lavapipe_icd() {
        missing.push("the lavapipe Vulkan driver (/usr/share/vulkan/icd.d/lvp_icd.*.json)");
    }
    if !libvulkan() {
        missing.push("the Vulkan loader (libvulkan.so.1)");
    }
    let node_missing = which("node").is_none() || which("npm").is_none();
    if node_missing {
        missing.push("Node.js and npm");
    }
    if missing.is_empty() {
        return Ok(());
    }
    let mut packages = PACKAGES.to_vec();
    if node_missing {
        packages.extend(["nodejs", "npm"]);
    }
    eprintln!("==> missing: {}", missing.join("; "));
    apt_install(&packages, "`cargo xtask test`")
}

/// Whether Mesa's CPU Vulkan driver (lavapipe) is registered.
fn lavapipe_icd() -> bool {
    std::fs::read_dir("/usr/share/vulkan/icd.d").is_ok_and(|entries| {
        entries
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().starts_with("lvp_icd"))
    })
}

/// Whether the Vulkan loader is in one of the usual library directories.
fn libvulkan() -> bool {
    let mut dirs: Vec<PathBuf> = ["/lib", "/usr/lib", "/lib64", "/usr/lib64"]
        .iter()
        .map(PathBuf::from)
        .collect();
    for base in ["/lib", "/usr/lib"] {
        if let Ok(entries) = std::fs::read_dir(base) {
            dirs.extend(
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.to_string_lossy().ends_with("-linux-gnu")),
            );
        }
    }
    dirs.iter().any(|d| d.join("libvulkan.so.1").exists())
}

/// The `*.test.mjs` files in `dir`, sorted.
fn browser_test_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.to_string_lossy().ends_with(".test.mjs"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Runs `node --test` on the browser tests against the release `easel` binary and the
/// system Chromium.
fn browser_tests() -> Result<()> {
    let dir = root().join(BROWSER_TESTS);
    let files = browser_test_files(&dir);
    if files.is_empty() {
        eprintln!(
            "==> note: no browser tests yet ({BROWSER_TESTS}/*.test.mjs), so they are skipped"
        );
        return Ok(());
    }
    exec(cargo().args(["build", "--release", "-p", "easel", "--bin", "easel"]))?;
    let install = if dir.join("package-lock.json").exists() {
        "ci"
    } else {
        "install"
    };
    exec(
        Command::new("npm")
            .args([install, "--no-audit", "--no-fund"])
            .current_dir(&dir),
    )?;
    let chromium = which("chromium").unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    exec(
        Command::new("node")
            .arg("--test")
            .args(&files)
            .current_dir(root())
            .env("EASEL_BIN", target_dir().join("release").join("easel"))
            .env("CHROMIUM", chromium),
    )
}
