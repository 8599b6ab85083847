//! `cargo xtask dist [--windows]`: the release archives a teacher downloads.
//!
//! `easel` carries its pages, the wasm bundle and the digits (easel/build.rs), so an archive
//! is that one program, the licences, the data's provenance and a short README:
//! `dist/easel-VERSION-x86_64-linux.tar.gz`, and with `--windows`
//! `dist/easel-VERSION-x86_64-windows.zip`, cross-built for `x86_64-pc-windows-gnu` with
//! mingw-w64 (ring compiles C and assembly, so it needs the cross C compiler too).
//! The data and the wasm bundle are built first, so an archive never lacks them.
//!
//! A macOS archive needs a Mac (or osxcross with Apple's SDK, which cannot be had from the
//! package registries here): `cargo xtask wasm && cargo xtask data && cargo build --release
//! -p easel` on a Mac, for `aarch64-apple-darwin` and `x86_64-apple-darwin`.

use crate::{apt_install, cargo, data, exec, output, root, target_dir, wasm, which};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The version every archive name carries: the workspace's.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A platform an archive is built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Platform {
    Linux,
    Windows,
}

impl Platform {
    /// The Rust target triple, or `None` for the host build (`target/release`).
    fn triple(self) -> Option<&'static str> {
        match self {
            Platform::Linux => None,
            Platform::Windows => Some("x86_64-pc-windows-gnu"),
        }
    }

    /// The name of the program in the archive.
    fn exe(self) -> &'static str {
        match self {
            Platform::Linux => "easel",
            Platform::Windows => "easel.exe",
        }
    }

    /// The archive's directory and base name: `easel-VERSION-x86_64-linux`.
    pub fn stem(self) -> String {
        let os = match self {
            Platform::Linux => "linux",
            Platform::Windows => "windows",
        };
        format!("easel-{VERSION}-x86_64-{os}")
    }

    /// The archive's file name.
    pub fn archive(self) -> String {
        match self {
            Platform::Linux => format!("{}.tar.gz", self.stem()),
            Platform::Windows => format!("{}.zip", self.stem()),
        }
    }
}

/// Parses the task's arguments: none for Linux, `--windows` for Linux and Windows.
pub fn platforms(args: &[String]) -> Result<Vec<Platform>> {
    match args {
        [] => Ok(vec![Platform::Linux]),
        [flag] if flag == "--windows" => Ok(vec![Platform::Linux, Platform::Windows]),
        other => bail!("`cargo xtask dist` takes only --windows, got {other:?}"),
    }
}

/// Builds the archives for `args` into `dist/`.
pub fn run(args: &[String]) -> Result<()> {
    let platforms = platforms(args)?;
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        bail!("`cargo xtask dist` builds on x86_64 Linux (the Windows archive is cross-built)");
    }
    data::run()?;
    wasm::run()?;
    let out = root().join("dist");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    for platform in platforms {
        let started = std::time::Instant::now();
        let archive = build(platform, &out)?;
        let size = std::fs::metadata(&archive)
            .with_context(|| format!("reading {}", archive.display()))?
            .len();
        eprintln!(
            "==> {} ({:.1} MB) in {:.0} s",
            archive.display(),
            size as f64 / 1e6,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Builds the program for `platform`, lays the archive's files out under
/// `target/dist/STEM/` and packs them into `out`.
fn build(platform: Platform, out: &Path) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "--release", "-p", "easel", "--bin", "easel"]);
    let mut bin_dir = target_dir();
    if let Some(triple) = platform.triple() {
        ensure_cross(triple)?;
        cmd.args(["--target", triple]);
        bin_dir.push(triple);
    }
    bin_dir.push("release");
    exec(&mut cmd)?;

    let stem = platform.stem();
    let stage_root = target_dir().join("dist");
    let stage = stage_root.join(&stem);
    if stage.exists() {
        std::fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    std::fs::create_dir_all(&stage).with_context(|| format!("creating {}", stage.display()))?;
    let exe = stage.join(platform.exe());
    copy(&bin_dir.join(platform.exe()), &exe)?;
    strip(platform, &exe);
    for (from, to) in [
        ("LICENSE-MIT", "LICENSE-MIT"),
        ("LICENSE-APACHE", "LICENSE-APACHE"),
        ("data/README.md", "MNIST-LICENSE.md"),
    ] {
        copy(&root().join(from), &stage.join(to))?;
    }
    let readme = stage.join("README.txt");
    std::fs::write(&readme, teacher_readme(platform))
        .with_context(|| format!("writing {}", readme.display()))?;
    if platform == Platform::Linux {
        check_runs(&exe)?;
    }

    let archive = out.join(platform.archive());
    if archive.exists() {
        std::fs::remove_file(&archive)
            .with_context(|| format!("removing {}", archive.display()))?;
    }
    match platform {
        Platform::Linux => exec(
            Command::new("tar")
                .args([
                    "--sort=name",
                    "--owner=0",
                    "--group=0",
                    "--numeric-owner",
                    "-czf",
                ])
                .arg(&archive)
                .arg("-C")
                .arg(&stage_root)
                .arg(&stem),
        )?,
        Platform::Windows => {
            if which("zip").is_none() {
                apt_install(&["zip"], "packing the Windows archive")?;
            }
            exec(
                Command::new("zip")
                    .args(["-q", "-r", "-9", "-X"])
                    .arg(&archive)
                    .arg(&stem)
                    .current_dir(&stage_root),
            )?
        }
    }
    Ok(archive)
}

/// Copies one file, saying which on failure.
fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .map(drop)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))
}

/// Drops the debug line tables (the release profile keeps them for profiling) from the
/// archive's copy, which halves it; the symbols stay, so a panic still names its function.
/// Without a `strip` for the platform the program ships as built.
fn strip(platform: Platform, exe: &Path) {
    let tool = match platform {
        Platform::Linux => "strip",
        Platform::Windows => "x86_64-w64-mingw32-strip",
    };
    if which(tool).is_none() {
        eprintln!(
            "==> note: no `{tool}`, so {} keeps its debug tables",
            exe.display()
        );
        return;
    }
    if let Err(e) = exec(Command::new(tool).arg("--strip-debug").arg(exe)) {
        eprintln!("==> note: {e:#}; {} keeps its debug tables", exe.display());
    }
}

/// Runs the archived program once (`--version`), so an archive that cannot start is never
/// written.
fn check_runs(exe: &Path) -> Result<()> {
    let exe_str = exe.to_string_lossy();
    let version = output(exe_str.as_ref(), &["--version"])
        .with_context(|| format!("{} --version failed", exe.display()))?;
    if version.trim() != format!("easel {VERSION}") {
        bail!("{} --version printed {version:?}", exe.display());
    }
    Ok(())
}

/// Installs the Rust target `triple` and the mingw-w64 C cross compiler (for ring) when
/// they are missing.
fn ensure_cross(triple: &str) -> Result<()> {
    if which("rustup").is_some() {
        exec(Command::new("rustup").args(["target", "add", triple]))?;
    } else {
        eprintln!("==> rustup not found; assuming the {triple} target is installed");
    }
    if which("x86_64-w64-mingw32-gcc").is_none() {
        apt_install(
            &["gcc-mingw-w64-x86-64"],
            "cross-building for Windows (ring compiles C)",
        )?;
    }
    Ok(())
}

/// The README.txt of the archive for `platform`: how a teacher runs it.
pub fn teacher_readme(platform: Platform) -> String {
    let (start, folder, home) = match platform {
        Platform::Linux => (
            "./easel serve",
            "Unpack the archive (tar -xzf easel-*.tar.gz), open a terminal in the\n\
             easel-* folder and run",
            "$EASEL_HOME, else ~/.local/share/easel",
        ),
        Platform::Windows => (
            "easel.exe serve",
            "Unzip the archive, open the easel-* folder, type cmd in the address bar\n\
             (a Command Prompt opens there) and run",
            "%EASEL_HOME%, else a .easel folder in the folder you start it from",
        ),
    };
    format!(
        "Easel {VERSION}: a classroom lab for distributed machine learning
==============================================================

Every browser in the room trains the same small neural network on its own share of
10,000 real handwritten digits (MNIST), and this computer merges their models, so the
class watches one shared model learn. This one program is the whole server: the web
pages, the browser client (WebAssembly) and the digits are built into it. Students need
only a browser; nothing is installed on their devices or on this computer.

Running it
----------
{folder}

    {start}

It prints, among other lines:

    listening on http://127.0.0.1:8080/
    listening on https://0.0.0.0:8443/
    room code: ABC123
    students join:   https://192.168.1.20:8443/?room=ABC123
    this computer:   http://127.0.0.1:8080/?room=ABC123
    teacher (this computer only): http://127.0.0.1:8080/teacher.html?room=ABC123&admin=...
    certificate SHA-256: 3F:2A:...

and a QR code of the first join address. Open the teacher address on this computer
(on the projector): it is the live dashboard, with the join QR code, every device, the
room's settings and the charts. Keep it private: its admin token controls the room.
Students open the join address (one line per network address of this computer: use
the one on the classroom's network) or scan the QR code. Ctrl-C stops the server.

{start} --help lists the options: --https ADDR and --http ADDR change the ports
(default 8443 and 8080), --cert FILE --key FILE use a real certificate.

The certificate warning
-----------------------
Browsers give WebGPU (the fast path on a GPU) only to secure pages, so students use the
https:// address. Its certificate is made on this computer on first run, so browsers
warn that it is not trusted. Compare the fingerprint the browser shows with the
\"certificate SHA-256\" line, then accept (Chrome: Advanced, then Proceed). A device that
does not get WebGPU trains on its CPU instead and says why. The certificate is kept
in Easel's data directory, so its fingerprint stays the same from lesson to lesson:
    {home}

The computer's firewall must let devices reach port 8443 (Windows asks the first time:
allow access on private networks). Devices must be on the same network as this computer.

Files
-----
{exe:<16}the server
README.txt      this file
LICENSE-MIT, LICENSE-APACHE
                Easel's licences (MIT OR Apache-2.0, at your option)
MNIST-LICENSE.md
                where the digits come from and their licence (CC BY-SA 3.0)
",
        exe = platform.exe()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archives_are_named_for_version_and_platform() {
        assert_eq!(
            Platform::Linux.archive(),
            format!("easel-{VERSION}-x86_64-linux.tar.gz")
        );
        assert_eq!(
            Platform::Windows.archive(),
            format!("easel-{VERSION}-x86_64-windows.zip")
        );
        assert_eq!(platforms(&[]).unwrap(), vec![Platform::Linux]);
        assert_eq!(
            platforms(&["--windows".into()]).unwrap(),
            vec![Platform::Linux, Platform::Windows]
        );
        assert!(platforms(&["--mac".into()]).is_err());
    }

    #[test]
    fn the_readme_says_how_to_start_it_on_each_platform() {
        let linux = teacher_readme(Platform::Linux);
        assert!(linux.contains("    ./easel serve\n"), "{linux}");
        assert!(!linux.contains("easel.exe"), "{linux}");
        let windows = teacher_readme(Platform::Windows);
        assert!(windows.contains("    easel.exe serve\n"), "{windows}");
        for text in [linux, windows] {
            assert!(text.contains("certificate SHA-256"));
            assert!(text.contains("teacher (this computer only)"));
            assert!(text.lines().all(|l| l.chars().count() <= 90), "{text}");
        }
    }
}
