//! `easel serve`: the browser client's files and the MNIST data over plain HTTP.
//!
//! It serves `www/` at `/` (the training page, its worker and the wasm bundle that
//! `cargo xtask wasm` writes to `www/pkg/`) and the data file at `/data/mnist.bin`. Browsers
//! give WebGPU only to secure contexts, and plain HTTP is one only on `localhost` and
//! `127.0.0.0/8`: other computers that open this server train on their CPU, and the page
//! tells them why.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use warp::reply::{Reply, Response};

use crate::DataArgs;

/// Options of `easel serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The address to listen on; port 0 picks a free port.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// The directory with the page, its scripts and the wasm bundle in `pkg/`.
    #[arg(long, value_name = "DIR", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../www"))]
    www: PathBuf,
    #[command(flatten)]
    data: DataArgs,
}

/// The files `cargo xtask wasm` writes; the page cannot start without them.
const BUNDLE: [&str; 2] = ["pkg/easel_client.js", "pkg/easel_client_bg.wasm"];

/// Checks that the page, the wasm bundle and the data file are all there, so a missing build
/// step is reported before a browser ever asks for a file.
pub fn check_files(www: &Path, data: &Path) -> anyhow::Result<()> {
    if !www.join("index.html").is_file() {
        bail!(
            "{} has no index.html; pass --www with the path of Easel's www/ directory",
            www.display()
        );
    }
    for file in BUNDLE {
        if !www.join(file).is_file() {
            bail!(
                "the browser client is not built ({} is missing); run `cargo xtask wasm`",
                www.join(file).display()
            );
        }
    }
    if !data.is_file() {
        bail!(
            "the MNIST data file {} does not exist; run `cargo xtask data` (or pass --data FILE)",
            data.display()
        );
    }
    Ok(())
}

/// The right `Content-Type` for the file types the page uses. Browsers refuse module scripts
/// and streaming wasm compilation without them, so they are not left to guessing.
fn content_type(path: &str) -> Option<&'static str> {
    let ext = path.rsplit_once('.').map(|(_, ext)| ext)?;
    Some(match ext {
        "wasm" => "application/wasm",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "html" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "bin" => "application/octet-stream",
        _ => return None,
    })
}

/// Waits for Ctrl-C (or, on Unix, SIGTERM).
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    eprintln!("shutting down");
}

/// Runs `easel serve` until Ctrl-C.
pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let data = args
        .data
        .data
        .clone()
        .unwrap_or_else(easel_client::data::default_path);
    let www = args.www.clone();
    check_files(&www, &data)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(args.http, www, data))
}

/// The browser client as one warp filter: `www/` at `/` (with `index.html` for directories)
/// and the MNIST file at `/data/mnist.bin`, with explicit MIME types for scripts and wasm and
/// `Cache-Control: no-cache`. The relay serves the same filter beside its own routes.
pub fn static_files(www: PathBuf, data: PathBuf) -> BoxedFilter<(Response,)> {
    let data_route = warp::path!("data" / "mnist.bin")
        .and(warp::get())
        .and(warp::fs::file(data));
    data_route
        .or(warp::get().and(warp::fs::dir(www)))
        .unify()
        .map(|file: warp::fs::File| {
            let path = file.path().to_string_lossy().into_owned();
            let mut resp = file.into_response();
            if let Some(ct) = content_type(&path) {
                resp.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static(ct));
            }
            // Students rebuild and reload; never let a browser keep a stale bundle.
            resp.headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            resp
        })
        .boxed()
}

async fn run(addr: SocketAddr, www: PathBuf, data: PathBuf) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener
        .local_addr()
        .context("cannot read the bound address")?;

    let routes = static_files(www, data);

    println!("listening on http://{bound}/");
    let host = if bound.ip().is_unspecified() {
        format!("localhost:{}", bound.port())
    } else {
        bound.to_string()
    };
    println!(
        "open http://{host}/ in a browser on this computer to train (Ctrl-C stops the server)"
    );
    use std::io::Write;
    std::io::stdout().flush().ok();

    warp::serve(routes)
        .incoming(listener)
        .graceful(shutdown_signal())
        .run()
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_scripts_and_wasm_get_their_mime_types() {
        assert_eq!(
            content_type("/x/pkg/easel_client_bg.wasm"),
            Some("application/wasm")
        );
        assert_eq!(
            content_type("www/worker.js"),
            Some("text/javascript; charset=utf-8")
        );
        assert_eq!(content_type("README"), None);
    }

    #[test]
    fn missing_bundle_says_what_to_run() {
        let dir = std::env::temp_dir().join(format!("easel-serve-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("index.html"), "<!doctype html>").unwrap();
        let err = check_files(&dir, &dir.join("mnist.bin")).unwrap_err();
        assert!(err.to_string().contains("cargo xtask wasm"), "{err}");
        std::fs::create_dir_all(dir.join("pkg")).unwrap();
        for f in BUNDLE {
            std::fs::write(dir.join(f), "").unwrap();
        }
        let err = check_files(&dir, &dir.join("mnist.bin")).unwrap_err();
        assert!(err.to_string().contains("cargo xtask data"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
