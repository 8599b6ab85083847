//! `easel serve`: the relay, the browser client's files and the MNIST data, over HTTPS for the
//! classroom's devices and plain HTTP for the teacher's own browser.
//!
//! It serves the pages at `/` (the training page, its worker, the wasm bundle that
//! `cargo xtask wasm` writes to `www/pkg/` and the chart library in `www/vendor/`), the data
//! file at `/data/mnist.bin`, and the relay's `/ws` and `/api` routes ([`easel_relay::run`]).
//! Pages and data are the copies built into the binary ([`crate::embedded`]), so the binary
//! alone is the server; `--www DIR` serves a directory instead (edits show on reload) and
//! `--data FILE` (or `EASEL_DATA`) another data file. Browsers give WebGPU only to secure
//! contexts, and plain HTTP is one only on `localhost` and `127.0.0.0/8`: phones and other
//! laptops must use the HTTPS address, with the self-signed certificate made on first run
//! (or a real one from `--cert`/`--key`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use warp::reply::{Reply, Response};

use easel_client::data::Mnist;
use easel_relay::eval::Evaluator;
use easel_relay::{Config, TlsSource};

use crate::{DataArgs, DataSource};

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
    /// Also let pages from this origin (`https://HOST:PORT`) open the relay's sockets and
    /// POST to it, besides its own; repeatable.
    #[arg(long, value_name = "ORIGIN", value_parser = |s: &str| easel_relay::origin::Origin::parse(s).map_err(|e| e.to_string()))]
    allow_origin: Vec<easel_relay::origin::Origin>,
    /// Serve the pages from this directory (Easel's www/, with the wasm bundle in pkg/)
    /// instead of the copy built into this program.
    #[arg(long, value_name = "DIR")]
    www: Option<PathBuf>,
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

/// The files `cargo xtask wasm` writes to `www/pkg/`; the page cannot train without them.
pub const BUNDLE: [&str; 2] = ["pkg/easel_client.js", "pkg/easel_client_bg.wasm"];

/// The chart library `cargo xtask wasm` copies to `www/vendor/`; the pages draw no chart
/// without it.
pub const VENDOR: [&str; 2] = ["vendor/uPlot.iife.min.js", "vendor/uPlot.min.css"];

/// Where the pages come from.
#[derive(Clone, Debug)]
pub enum Pages {
    /// A directory (`--www`): read on every request, so edits show on reload.
    Dir(PathBuf),
    /// The copy of `www/` built into the binary.
    BuiltIn,
}

impl Pages {
    /// The pages `--www` names, or the built-in ones.
    pub fn from_arg(www: Option<PathBuf>) -> Pages {
        www.map_or(Pages::BuiltIn, Pages::Dir)
    }

    /// Whether the file at `path` (relative to `www/`) is there.
    fn has(&self, path: &str) -> bool {
        match self {
            Pages::Dir(dir) => dir.join(path).is_file(),
            Pages::BuiltIn => crate::embedded::www_file(path).is_some(),
        }
    }

    /// Fails when there is no student page at all (a wrong `--www`); otherwise returns one
    /// warning per missing part (the wasm bundle, the chart library), each saying what to
    /// run. The rest is still served: the dashboard and native bots work without the bundle.
    pub fn check(&self) -> anyhow::Result<Vec<String>> {
        let rebuild = match self {
            Pages::Dir(dir) => {
                if !self.has("index.html") {
                    bail!(
                        "{} has no index.html; pass --www with the path of Easel's www/ \
                         directory (or leave --www out to serve the pages built into easel)",
                        dir.display()
                    );
                }
                ""
            }
            Pages::BuiltIn => ", then build easel again (`cargo build --release -p easel-relay`)",
        };
        let source = match self {
            Pages::Dir(dir) => dir.display().to_string(),
            Pages::BuiltIn => format!(
                "the pages built into easel (taken from {} when it was compiled)",
                crate::embedded::WWW_SOURCE
            ),
        };
        let mut warnings = Vec::new();
        if let Some(missing) = BUNDLE.iter().find(|f| !self.has(f)) {
            warnings.push(format!(
                "the browser client is missing from {source} ({missing}): student tabs show \
                 an error and cannot train; run `cargo xtask wasm`{rebuild}, or pass --www DIR"
            ));
        }
        if let Some(missing) = VENDOR.iter().find(|f| !self.has(f)) {
            warnings.push(format!(
                "the chart library is missing from {source} ({missing}): pages draw no charts; \
                 run `cargo xtask wasm`{rebuild}, or pass --www DIR"
            ));
        }
        Ok(warnings)
    }

    /// What `easel serve` prints about them.
    fn describe(&self) -> String {
        match self {
            Pages::Dir(dir) => format!("pages: {}", dir.display()),
            Pages::BuiltIn => format!(
                "pages: built into easel ({} files)",
                crate::embedded::WWW.len()
            ),
        }
    }
}

/// What `/pkg/easel_client.js` answers when the bundle is missing: a module with every name
/// the pages import, whose `init()` fails with what to run. The pages' workers report that
/// error, so the student page says it instead of silently never starting (a missing module,
/// or one that throws while loading, reaches the page only as "the worker failed").
const MISSING_BUNDLE_JS: &str = "\
// Easel: this server has no browser client, so every export fails and says what to run.
const fail = () => {
  throw new Error('this Easel server has no browser client (www/pkg is missing): on the server, '
    + 'run `cargo xtask wasm` and build easel again, or start it with --www DIR');
};
export default async function init() { fail(); }
export const WebSession = { create: fail };
export const WebTrainer = { create: fail };
export const prepare_digit = fail;
export const train_flops_per_sample = fail;
export const compare_gpu_with_cpu = fail;
export const check_cpu_kernels = fail;
export const cpu_isa = fail;
export const profile_cpu_step = fail;
";

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
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "txt" | "md" => "text/plain; charset=utf-8",
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
    let pages = Pages::from_arg(args.www.clone());
    for warning in pages.check()? {
        eprintln!("warning: {warning}");
    }
    if args.https.0.is_none() && args.http.0.is_none() {
        bail!("both --https and --http are off; keep at least one listener");
    }
    let started = std::time::Instant::now();
    let opened = open_store(&args.store)?;
    // The test digits score the center; a bad file is reported now, not on the first score.
    let source = args.data.source();
    let bytes = args.data.bytes()?;
    let mnist = Arc::new(Mnist::from_bytes(&bytes)?);
    let data = match bytes {
        std::borrow::Cow::Borrowed(b) => Bytes::from_static(b),
        std::borrow::Cow::Owned(v) => Bytes::from(v),
    };
    let files = Files {
        pages,
        data,
        data_source: source,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(args, files, mnist, opened, started))
}

/// What `easel serve` hands to browsers besides the relay's routes.
pub struct Files {
    /// The pages, the wasm bundle and the chart library.
    pub pages: Pages,
    /// The bytes of the MNIST file, checked, served from memory.
    pub data: Bytes,
    /// Where `data` came from, for the start-up message.
    pub data_source: DataSource,
}

/// Adds the headers every static answer gets: the right `Content-Type` and
/// `Cache-Control: no-cache` (students rebuild and reload; never keep a stale bundle).
fn with_headers(mut resp: Response, path: &str) -> Response {
    if let Some(ct) = content_type(path) {
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// The browser client as one warp filter: the pages at `/` (with `index.html` for
/// directories) and the MNIST file at `/data/mnist.bin`, with explicit MIME types for scripts
/// and wasm and `Cache-Control: no-cache`. The relay serves the same filter beside its own
/// routes.
pub fn static_files(pages: Pages, data: Bytes) -> BoxedFilter<(Response,)> {
    let data_route = warp::path!("data" / "mnist.bin")
        .and(warp::get())
        .map(move || with_headers(Response::new(data.clone().into()), "mnist.bin"));
    let pages_route = match pages {
        Pages::Dir(www) => warp::get()
            .and(warp::fs::dir(www))
            .map(|file: warp::fs::File| {
                let path = file.path().to_string_lossy().into_owned();
                with_headers(file.into_response(), &path)
            })
            .boxed(),
        Pages::BuiltIn => warp::get()
            .and(warp::path::tail())
            .and_then(|tail: warp::path::Tail| async move {
                let path = match tail.as_str() {
                    "" => "index.html".to_string(),
                    p if p.ends_with('/') => format!("{p}index.html"),
                    p => p.to_string(),
                };
                match crate::embedded::www_file(&path) {
                    Some(bytes) => Ok(with_headers(Response::new(bytes.into()), &path)),
                    None => Err(warp::reject::not_found()),
                }
            })
            .boxed(),
    };
    // Only reached when the pages have no bundle of their own.
    let missing_bundle = warp::path!("pkg" / "easel_client.js")
        .and(warp::get())
        .map(|| with_headers(Response::new(MISSING_BUNDLE_JS.into()), "easel_client.js"));
    data_route
        .or(pages_route)
        .unify()
        .or(missing_bundle)
        .unify()
        .boxed()
}

async fn run(
    args: ServeArgs,
    files: Files,
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
        allowed_origins: args.allow_origin,
        admin_token: opened.as_ref().map(|o| o.token.clone()),
        store: opened.as_ref().map(|o| o.store.clone()),
        checkpoint_every: std::time::Duration::from_secs_f64(args.store.checkpoint_every),
        ..Config::new(std::sync::Arc::new(easel_client::Lenet))
    };
    let described = [files.pages.describe(), describe_data(&files.data_source)];
    let static_routes = static_files(files.pages, files.data);
    let relay = easel_relay::run(config, static_routes, shutdown_signal()).await?;
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
        easel_relay::checkpoint::checkpoint_rooms(&relay.hub, store, &token).await;
        println!("rooms are saved in {}", store.path().display());
    }

    // Tests parse the first `listening on` line; keep its shape.
    if let Some(a) = relay.http {
        println!("listening on http://{a}/");
    }
    if let Some(a) = relay.https {
        println!("listening on https://{a}/");
    }
    for line in described {
        println!("{line}");
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

/// What `easel serve` prints about where the digits come from.
fn describe_data(source: &DataSource) -> String {
    match source {
        DataSource::File(path) => format!("digits: {}", path.display()),
        DataSource::BuiltIn => "digits: built into easel".to_string(),
    }
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

    /// A fresh empty directory for one test.
    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("easel-serve-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn missing_bundle_is_a_warning_that_says_what_to_run() {
        let dir = temp_dir("check");
        let err = Pages::Dir(dir.clone()).check().unwrap_err();
        assert!(err.to_string().contains("no index.html"), "{err}");
        std::fs::write(dir.join("index.html"), "<!doctype html>").unwrap();
        let warnings = Pages::Dir(dir.clone()).check().unwrap();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("pkg/easel_client.js"), "{warnings:?}");
        assert!(
            warnings.iter().all(|w| w.contains("cargo xtask wasm")),
            "{warnings:?}"
        );
        for f in BUNDLE.iter().chain(VENDOR.iter()) {
            let path = dir.join(f);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "").unwrap();
        }
        assert_eq!(
            Pages::Dir(dir.clone()).check().unwrap(),
            Vec::<String>::new()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Every name a page imports from the bundle, from `import ... from './pkg/easel_client.js'`
    /// lines in `www/`.
    fn imported_names(www: &std::path::Path) -> Vec<String> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(www).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "js") {
                continue;
            }
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                let Some(clause) = line
                    .strip_prefix("import ")
                    .and_then(|l| l.strip_suffix(" from './pkg/easel_client.js';"))
                else {
                    continue;
                };
                let (default, named) = clause.split_once('{').unwrap_or((clause, ""));
                if !default.trim().trim_end_matches(',').is_empty() {
                    names.push("default".to_string());
                }
                names.extend(
                    named
                        .trim_end_matches('}')
                        .split(',')
                        .map(|n| n.trim().to_string())
                        .filter(|n| !n.is_empty()),
                );
            }
        }
        names.sort();
        names.dedup();
        names
    }

    #[test]
    fn the_stand_in_bundle_exports_every_name_the_pages_import() {
        let www = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../www");
        let names = imported_names(&www);
        for expected in ["default", "WebSession", "WebTrainer", "prepare_digit"] {
            assert!(names.iter().any(|n| n == expected), "{names:?}");
        }
        for name in names {
            let export = if name == "default" {
                "export default async function init()".to_string()
            } else {
                format!("export const {name} = ")
            };
            assert!(
                MISSING_BUNDLE_JS.contains(&export),
                "the stand-in lacks `{export}`"
            );
        }
    }

    /// Status, headers (lowercase names) and body of one `GET path` over a real socket.
    async fn get(addr: SocketAddr, path: &str) -> (u16, String, Vec<u8>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).await.unwrap();
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a header end");
        let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
        let status = head[9..12].parse().unwrap();
        (status, head, raw[split + 4..].to_vec())
    }

    /// A relay on a free loopback port serving `pages` and `data`, until the sender drops.
    async fn relay(
        pages: Pages,
        data: &'static [u8],
    ) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let config = Config {
            https: None,
            http: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            ..Config::new(std::sync::Arc::new(easel_client::Lenet))
        };
        let files = static_files(pages, Bytes::from_static(data));
        let relay = easel_relay::run(config, files, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
        (relay.http.unwrap(), stop)
    }

    #[tokio::test]
    async fn built_in_pages_and_data_are_served_with_their_types() {
        let (addr, _stop) = relay(Pages::BuiltIn, b"the digits").await;
        let (status, head, body) = get(addr, "/").await;
        assert_eq!(status, 200, "{head}");
        assert!(head.contains("content-type: text/html"), "{head}");
        assert!(head.contains("cache-control: no-cache"), "{head}");
        assert_eq!(
            Some(body.as_slice()),
            crate::embedded::www_file("index.html")
        );
        let (status, head, body) = get(addr, "/data/mnist.bin").await;
        assert_eq!(
            (status, body.as_slice()),
            (200, &b"the digits"[..]),
            "{head}"
        );
        let (status, _, body) = get(addr, "/worker.js").await;
        assert_eq!(status, 200);
        assert_eq!(
            Some(body.as_slice()),
            crate::embedded::www_file("worker.js")
        );
        if let Some(wasm) = crate::embedded::www_file("pkg/easel_client_bg.wasm") {
            let (status, head, body) = get(addr, "/pkg/easel_client_bg.wasm").await;
            assert_eq!(status, 200);
            assert!(head.contains("content-type: application/wasm"), "{head}");
            assert!(
                body == wasm,
                "the served wasm differs from the built-in one"
            );
        }
        assert_eq!(get(addr, "/no-such-page.html").await.0, 404);
        assert_eq!(get(addr, "/../Cargo.toml").await.0, 404);
    }

    #[tokio::test]
    async fn a_directory_without_the_bundle_serves_a_module_that_says_what_to_run() {
        let dir = temp_dir("standin");
        std::fs::write(dir.join("index.html"), "<!doctype html><p>dev page").unwrap();
        let (addr, _stop) = relay(Pages::Dir(dir.clone()), b"").await;
        let (status, _, body) = get(addr, "/").await;
        assert_eq!(
            (status, body.as_slice()),
            (200, &b"<!doctype html><p>dev page"[..])
        );
        let (status, head, body) = get(addr, "/pkg/easel_client.js").await;
        assert_eq!(status, 200);
        assert!(head.contains("content-type: text/javascript"), "{head}");
        let js = String::from_utf8(body).unwrap();
        assert!(js.contains("cargo xtask wasm"), "{js}");
        // A real bundle wins over the stand-in.
        std::fs::create_dir_all(dir.join("pkg")).unwrap();
        std::fs::write(dir.join("pkg/easel_client.js"), "export default 1;").unwrap();
        let (_, _, body) = get(addr, "/pkg/easel_client.js").await;
        assert_eq!(body, b"export default 1;");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
