//! `easel serve`: the relay, the browser client's files and the MNIST data, over HTTPS for the
//! classroom's devices and plain HTTP for the teacher's own browser.
//!
//! It serves `www/` at `/` (the training page, its worker and the wasm bundle that
//! `cargo xtask wasm` writes to `www/pkg/`), the data file at `/data/mnist.bin`, and the
//! relay's `/ws` and `/api` routes ([`easel_relay::run`]). Browsers give WebGPU only to secure
//! contexts, and plain HTTP is one only on `localhost` and `127.0.0.0/8`: phones and other
//! laptops must use the HTTPS address, with the self-signed certificate made on first run
//! (or a real one from `--cert`/`--key`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use warp::reply::{Reply, Response};

use easel_client::data::Mnist;
use easel_relay::eval::Evaluator;
use easel_relay::{Config, TlsSource};

use crate::DataArgs;

/// Options of `easel serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The HTTPS listener for the classroom's devices, or `off`; port 0 picks a free port.
    #[arg(long, value_name = "ADDR|off", default_value = "0.0.0.0:8443", value_parser = listener)]
    https: Listener,
    /// The plain HTTP listener for this computer's own browser, or `off`.
    #[arg(long, value_name = "ADDR|off", default_value = "127.0.0.1:8080", value_parser = listener)]
    http: Listener,
    /// A real certificate chain (PEM) instead of the self-signed one; needs --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// The directory with the page, its scripts and the wasm bundle in `pkg/`.
    #[arg(long, value_name = "DIR", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../www"))]
    www: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    store: StoreArgs,
}

/// Where rooms are kept across restarts.
#[derive(clap::Args, Debug)]
pub struct StoreArgs {
    /// The database rooms are checkpointed to (default: easel.db in $EASEL_HOME, else
    /// $XDG_DATA_HOME/easel, else ~/.local/share/easel), or `off` to keep them in memory.
    #[arg(long, value_name = "FILE|off")]
    db: Option<PathBuf>,
    /// Start a fresh room instead of resuming the most recent one (old rooms stay listed).
    #[arg(long)]
    new_room: bool,
    /// Seconds between checkpoints (what a crash can lose at most).
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0, value_parser = positive_secs)]
    checkpoint_every: f64,
}

fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.05..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "`{s}` is not a number of seconds between 0.05 and 3600"
        )),
    }
}

/// The opened database, the admin token kept beside it and the room to resume.
struct Opened {
    store: Arc<easel_relay::store::Store>,
    token: String,
    resume: Option<easel_relay::store::Restored>,
}

/// Opens the database (refused while another `easel serve` holds it) and loads the most
/// recent room unless `--new-room`.
fn open_store(args: &StoreArgs) -> anyhow::Result<Option<Opened>> {
    use easel_relay::store::{self, Store};
    let path = match &args.db {
        Some(p) if p.as_os_str() == "off" => return Ok(None),
        Some(p) => p.clone(),
        None => store::default_path(),
    };
    let store = Store::open(&path)?;
    let token = store::admin_token(&path)?;
    let resume = match (args.new_room, store.latest_room()?) {
        (false, Some(code)) => store.load_room(&code)?,
        _ => None,
    };
    Ok(Some(Opened {
        store: Arc::new(store),
        token,
        resume,
    }))
}

/// A listener address, or none (`off`).
#[derive(Clone, Copy, Debug)]
pub struct Listener(Option<SocketAddr>);

fn listener(s: &str) -> Result<Listener, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(Listener(None));
    }
    s.parse()
        .map(|a| Listener(Some(a)))
        .map_err(|_| format!("`{s}` is not an address like 0.0.0.0:8443 (or `off`)"))
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
    check_files(&args.www, &data)?;
    if args.https.0.is_none() && args.http.0.is_none() {
        bail!("both --https and --http are off; keep at least one listener");
    }
    let started = std::time::Instant::now();
    let opened = open_store(&args.store)?;
    // The test digits score the center; a bad file is reported now, not on the first score.
    let mnist = Arc::new(Mnist::load(&data)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(args, data, mnist, opened, started))
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

async fn run(
    args: ServeArgs,
    data: PathBuf,
    mnist: Arc<Mnist>,
    opened: Option<Opened>,
    started: std::time::Instant,
) -> anyhow::Result<()> {
    let tls = match (args.cert, args.key) {
        (Some(cert), Some(key)) => TlsSource::Pem { cert, key },
        _ => TlsSource::SelfSigned {
            dir: easel_relay::tls::data_dir(),
        },
    };
    let evaluator: Evaluator = Arc::new(move |params: &[f32]| {
        let e = easel_client::cpu::evaluate(params, &mnist.test.images, &mnist.test.labels);
        (e.accuracy, e.loss)
    });
    let config = Config {
        https: args.https.0,
        http: args.http.0,
        tls,
        evaluator: Some(evaluator),
        admin_token: opened.as_ref().map(|o| o.token.clone()),
        store: opened.as_ref().map(|o| o.store.clone()),
        checkpoint_every: std::time::Duration::from_secs_f64(args.store.checkpoint_every),
        ..Config::default()
    };
    let relay = easel_relay::run(config, static_files(args.www, data), shutdown_signal()).await?;
    let store = opened.as_ref().map(|o| o.store.clone());
    let room = match opened.and_then(|o| o.resume) {
        Some(r) => {
            let (saved, ms) = (r.saved_version, r.saved_ms);
            let code = relay.hub.restore_room(r);
            let now = relay.hub.room(&code).map_or(0, |s| s.center().0);
            println!(
                "resumed room {code} from its checkpoint of {} ms ago (version {saved}, now {now}) in {} ms",
                easel_relay::room::wall_ms().saturating_sub(ms),
                started.elapsed().as_millis()
            );
            code
        }
        None => relay.hub.create_room(),
    };
    if let Some(store) = &store {
        // Saved at once, so the URLs printed below survive a crash in the next seconds.
        let token = easel_relay::store::token_sha256(relay.hub.admin_token());
        easel_relay::store::checkpoint_rooms(&relay.hub, store, &token).await;
        println!("rooms are saved in {}", store.path().display());
    }

    // Tests parse the first `listening on` line; keep its shape.
    if let Some(a) = relay.http {
        println!("listening on http://{a}/");
    }
    if let Some(a) = relay.https {
        println!("listening on https://{a}/");
    }
    println!("room code: {room}");
    let joins: Vec<String> = relay
        .join_urls()
        .iter()
        .map(|u| format!("{u}?room={room}"))
        .collect();
    for url in &joins {
        println!("students join:   {url}");
    }
    if let Some(a) = relay.http {
        println!("this computer:   http://{a}/?room={room}");
    }
    if let Some(url) = relay.teacher_url(&room) {
        println!("teacher (this computer only): {url}");
    }
    if let Some(fp) = &relay.fingerprint {
        println!("certificate SHA-256: {fp}");
        println!(
            "(browsers warn about the self-signed certificate: compare this fingerprint, then accept)"
        );
    }
    if let Some(url) = joins.first() {
        match qr_text(url) {
            Ok(qr) => println!("scan to join {url}\n{qr}"),
            Err(e) => eprintln!("no QR code for {url}: {e}"),
        }
    }
    println!("Ctrl-C stops the server");
    use std::io::Write;
    std::io::stdout().flush().ok();
    relay.wait().await;
    Ok(())
}

/// The URL as a QR code drawn with Unicode half blocks, for a phone to scan off the terminal.
fn qr_text(url: &str) -> anyhow::Result<String> {
    let code = qrcode::QrCode::new(url.as_bytes())?;
    Ok(code
        .render::<qrcode::render::unicode::Dense1x2>()
        .dark_color(qrcode::render::unicode::Dense1x2::Light)
        .light_color(qrcode::render::unicode::Dense1x2::Dark)
        .quiet_zone(true)
        .build())
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
