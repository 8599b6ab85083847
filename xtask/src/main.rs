//! `cargo xtask`: Easel's build steps, written in Rust.
//!
//! - `cargo xtask data` downloads the MNIST digits and writes `data/mnist.bin`.
//! - `cargo xtask wasm` builds the browser client into `www/pkg`.
//! - `cargo xtask test` installs what the tests need and runs every test.
//! - `cargo xtask demo [ARGS...]` prepares everything and starts `easel serve ARGS...`.
//! - `cargo xtask dist [--windows]` writes the release archives a teacher downloads.
//! - `cargo xtask modules [SRC..]` checks that a crate's modules use each other acyclically.

mod bench_browser;
mod data;
mod dist;
mod modgraph;
mod test;
mod wasm;

use anyhow::{Context, Result, bail};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const USAGE: &str = "\
usage: cargo xtask <task>

tasks:
  data           download the MNIST digits and write data/mnist.bin (skipped when it is up to date)
  wasm           build the browser client into www/pkg (installs wasm-bindgen-cli if needed)
  test           install the system packages the tests need, then run every test
  bench-browser  Easel's wasm client against TensorFlow.js in headless Chromium (JSON figures)
  modules [SRC..] check that the modules of each crate source directory (default: those
                 `test` checks) use each other without a cycle
  demo [ARGS..]  data, wasm, then `easel serve ARGS..`
  dist [--windows]
                 data, wasm, then the release archive dist/easel-VERSION-x86_64-linux.tar.gz
                 (with --windows also dist/easel-VERSION-x86_64-windows.zip, cross-built)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (task, rest) = match args.split_first() {
        Some((task, rest)) => (task.as_str(), rest),
        None => {
            eprintln!("{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    let result = match task {
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        "demo" => demo(rest),
        "dist" => dist::run(rest),
        "modules" => modgraph::run(rest),
        "data" | "wasm" | "test" | "bench-browser" if !rest.is_empty() => Err(anyhow::anyhow!(
            "`cargo xtask {task}` takes no arguments, got {rest:?}\n\n{USAGE}"
        )),
        "data" => data::run(),
        "wasm" => wasm::run(),
        "test" => test::run(),
        "bench-browser" => bench_browser::run(),
        other => Err(anyhow::anyhow!("unknown task {other:?}\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prepares the data and the browser client, then starts the relay with `args` (a leading
/// `--` is dropped, so `cargo xtask demo -- --help` works too).
fn demo(args: &[String]) -> Result<()> {
    let args = args.strip_prefix(&["--".to_string()]).unwrap_or(args);
    data::run()?;
    wasm::run()?;
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--release",
        "-p",
        "easel",
        "--bin",
        "easel",
        "--",
        "serve",
    ])
    .args(args);
    exec(&mut cmd)
}

/// The workspace root (the parent of this crate's directory).
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
}

/// Where cargo puts build outputs: `CARGO_TARGET_DIR` (made absolute) or `<root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                std::env::current_dir()
                    .map(|cwd| cwd.join(&dir))
                    .unwrap_or(dir)
            }
        }
        _ => root().join("target"),
    }
}

/// A `cargo` command (the same cargo that runs xtask) in the workspace root, with the
/// target directory made absolute so that every step agrees on it.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root())
        .env("CARGO_TARGET_DIR", target_dir());
    cmd
}

/// Runs a command with its output streamed to ours, and fails unless it succeeds.
pub fn exec(cmd: &mut Command) -> Result<()> {
    let shown = show(cmd);
    eprintln!("==> {shown}");
    let status = cmd.status().with_context(|| {
        format!(
            "cannot start `{}` (is it installed and on PATH?)",
            cmd.get_program().to_string_lossy()
        )
    })?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Runs a command quietly and returns its standard output, or `None` if it cannot start
/// or fails.
pub fn output(program: impl AsRef<OsStr>, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The command line as one string, for logs.
fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The first executable called `name` on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Installs Debian packages with apt when running as root; otherwise fails with the exact
/// command to run. `why` says what needs them.
pub fn apt_install(packages: &[&str], why: &str) -> Result<()> {
    let list = packages.join(" ");
    if output("id", &["-u"]).as_deref().map(str::trim) != Some("0") {
        bail!(
            "{why} needs system packages; install them with\n\n    sudo apt-get update && \
             sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
             {list}\n\nand run the task again"
        );
    }
    eprintln!("==> {why} needs {list}: installing with apt-get");
    exec(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}
