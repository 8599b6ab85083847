//! `easel bots`: native workers that fill a room without phones.
//!
//! Each bot is a tokio task holding one WebSocket connection (`ws://` or `wss://`) and
//! running exactly the browser's session logic, `easel_client::worker::Worker`; its rounds
//! of local training run on a blocking thread, so training never stalls the reactor. A bot
//! can play a straggler: with a slowdown `F`, it sleeps `(F - 1)` times its measured compute
//! time after each round.

use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use easel_client::data::Split;
use easel_client::worker::{self, Event, Stats, Worker};
use easel_client::{Trainer, cpu::CpuTrainer};
use easel_protocol::message::{self, Message};
use easel_protocol::{Backend, ClientKind, Limits, Welcome};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::Shutdown;
use crate::ws::close;

/// How long a bot waits for any one answer from the relay before giving up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Which certificates a `wss://` connection trusts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    /// The PEM certificate(s) in this file (`--ca`), for instance the relay's self-signed
    /// `cert.pem`.
    Ca(PathBuf),
    /// Any certificate (`--insecure`): the connection is encrypted but not authenticated.
    Insecure,
}

/// What `easel bots` runs.
#[derive(Clone, Debug)]
pub struct BotOptions {
    /// The relay's WebSocket URL: `ws://HOST:PORT/ws` or `wss://HOST:PORT/ws` (`http` and
    /// `https` are read as `ws` and `wss`; a missing path means `/ws`).
    pub relay: String,
    /// The room code.
    pub room: String,
    /// How many bots.
    pub count: usize,
    /// How many of them (the first ones) are stragglers.
    pub slow: usize,
    /// How many times longer a straggler's round takes, at least 1.
    pub slowdown: f64,
    /// Where the bots train.
    pub backend: Backend,
    /// Seed of the bots' epoch orders and QSGD rounding (mixed with each bot's index).
    pub seed: u64,
    /// Each bot stops after this many pushes; `None`: until shutdown.
    pub pushes: Option<u64>,
    /// All bots stop once the bots together have had this many pushes acknowledged.
    pub total_pushes: Option<u64>,
    /// Trust for `wss://`; `None` trusts the self-signed certificate `easel serve` keeps in
    /// Easel's data directory.
    pub trust: Option<Trust>,
}

/// How one bot did.
#[derive(Clone, Debug)]
pub struct BotReport {
    /// The bot's index, `0..count`.
    pub index: usize,
    /// Its worker id in the room (0 before its Welcome).
    pub worker_id: u64,
    /// Whether it played a straggler.
    pub slow: bool,
    /// Acks received (accepted and refused).
    pub acks: u64,
    /// The worker's counters.
    pub stats: Stats,
    /// Seconds spent in local rounds (training and the parameter read-back).
    pub compute_s: f64,
    /// Why it stopped early, if it did.
    pub error: Option<String>,
}

impl BotReport {
    fn new(index: usize, slow: bool) -> BotReport {
        BotReport {
            index,
            worker_id: 0,
            slow,
            acks: 0,
            stats: Stats::default(),
            compute_s: 0.0,
            error: None,
        }
    }

    /// One line for people: pushes, mean staleness, accepted and refused, bytes.
    pub fn line(&self) -> String {
        let s = &self.stats;
        let mean = |v: Option<f64>| v.map_or("-".to_string(), |m| format!("{m:.2}"));
        format!(
            "bot {:>2} (worker {:>3}{}): {:>5} pushes, mean tau {:>6}, mean alpha_eff {:>6}, \
             {} accepted / {} refused, loss {:.3}, {:.1} MB up / {:.1} MB down{}",
            self.index,
            self.worker_id,
            if self.slow { ", slow" } else { "" },
            s.pushes,
            mean(s.mean_tau()),
            mean(s.mean_alpha_eff()),
            s.accepted,
            s.refused,
            s.last_loss,
            s.bytes_up as f64 / 1e6,
            s.bytes_down as f64 / 1e6,
            self.error
                .as_ref()
                .map_or(String::new(), |e| format!(" (stopped: {e})")),
        )
    }
}

/// Where a URL points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    /// `HOST:PORT` (the port defaulted from the scheme).
    pub authority: String,
    pub host: String,
    pub path: String,
}

/// Reads `ws://`, `wss://`, `http://` or `https://` URLs.
pub fn parse_url(url: &str) -> anyhow::Result<Endpoint> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("wss://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("ws://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        bail!("the relay URL {url:?} must start with ws://, wss://, http:// or https://");
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() {
        bail!("the relay URL {url:?} names no host");
    }
    let path = if path.is_empty() || path == "/" {
        "/ws".to_string()
    } else {
        path.to_string()
    };
    let has_port = match authority.rfind(']') {
        Some(close) => authority[close..].contains(':'),
        None => authority.contains(':'),
    };
    let (host, authority) = if has_port {
        let i = authority.rfind(':').unwrap_or(authority.len());
        (authority[..i].to_string(), authority.to_string())
    } else {
        let port = if tls { 443 } else { 80 };
        (authority.to_string(), format!("{authority}:{port}"))
    };
    Ok(Endpoint {
        tls,
        authority,
        host: host.trim_start_matches('[').trim_end_matches(']').into(),
        path,
    })
}

/// A byte stream a WebSocket can run over: plain TCP or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send> Io for S {}

/// A bot's WebSocket connection.
pub type Ws = WebSocketStream<Box<dyn Io>>;

/// Accepts any server certificate (`--insecure`).
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS client configuration for `trust`.
pub fn client_tls(trust: Option<&Trust>) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let ca = match trust {
        Some(Trust::Insecure) => {
            return Ok(builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
                .with_no_client_auth());
        }
        Some(Trust::Ca(path)) => path.clone(),
        None => crate::tls::data_dir().join("cert.pem"),
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&ca)
        .with_context(|| {
            format!(
                "reading the certificate {} (pass --ca FILE with the relay's certificate, \
                 or --insecure)",
                ca.display()
            )
        })?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading the certificate {}", ca.display()))?;
    for c in certs {
        roots
            .add(c)
            .with_context(|| format!("using the certificate in {}", ca.display()))?;
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// Opens a WebSocket to `url`, over TLS for `wss://`, with message and frame caps at the
/// protocol's `max_message`.
pub async fn connect(url: &str, trust: Option<&Trust>) -> anyhow::Result<Ws> {
    let ep = parse_url(url)?;
    let addr = ep
        .authority
        .to_socket_addrs()
        .with_context(|| format!("resolving {}", ep.authority))?
        .next()
        .with_context(|| format!("{} has no address", ep.authority))?;
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {}", ep.authority))?;
    tcp.set_nodelay(true).ok();
    let stream: Box<dyn Io> = if ep.tls {
        let config = client_tls(trust)?;
        let name = rustls::pki_types::ServerName::try_from(ep.host.clone())
            .with_context(|| format!("{:?} is not a server name", ep.host))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS handshake with {}", ep.authority))?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    let cap = Limits::default().max_message;
    let config = WebSocketConfig::default()
        .max_message_size(Some(cap))
        .max_frame_size(Some(cap));
    let scheme = if ep.tls { "wss" } else { "ws" };
    let request = format!("{scheme}://{}{}", ep.authority, ep.path);
    let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .with_context(|| format!("WebSocket handshake with {url}"))?;
    Ok(ws)
}

/// The relay closed the connection with code 4001: the room's partition changed, and the
/// worker joins again (resuming its place) for a shard of the new one.
#[derive(Debug, thiserror::Error)]
#[error("the relay asked to join again (the partition changed)")]
struct RejoinAsked;

/// The next binary message, skipping pings, pongs and text; an error when the connection
/// closes ([`RejoinAsked`] for close code 4001), fails, or stays silent for
/// [`ANSWER_TIMEOUT`].
async fn recv(ws: &mut Ws) -> anyhow::Result<Vec<u8>> {
    loop {
        let next = tokio::time::timeout(ANSWER_TIMEOUT, ws.next())
            .await
            .context("the relay did not answer in time")?;
        match next {
            Some(Ok(WsMessage::Binary(b))) => return Ok(b.to_vec()),
            Some(Ok(WsMessage::Close(Some(f)))) if u16::from(f.code) == close::REJOIN => {
                return Err(RejoinAsked.into());
            }
            Some(Ok(WsMessage::Close(frame))) => {
                bail!("the relay closed the connection ({frame:?})")
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e).context("reading from the relay"),
            None => bail!("the relay closed the connection"),
        }
    }
}

/// A trainer for `start`'s shard on `backend`; `Send`, so rounds can run on a blocking
/// thread.
fn make_trainer(
    backend: Backend,
    gpu: Option<&easel_client::Gpu>,
    start: &worker::Start,
) -> anyhow::Result<Box<dyn Trainer + Send>> {
    let (images, labels) = (&start.shard.images, &start.shard.labels);
    Ok(match (backend, gpu) {
        (Backend::Gpu, Some(gpu)) => Box::new(easel_client::GpuTrainer::new(
            gpu,
            images,
            labels,
            &start.center,
            start.sgd,
            start.batch,
        )?),
        _ => Box::new(CpuTrainer::new(
            images,
            labels,
            &start.center,
            start.sgd,
            start.batch,
        )),
    })
}

/// Shared between the bots: the acknowledged pushes of all of them, and their reports.
struct Shared {
    acks: AtomicU64,
    reports: Mutex<Vec<BotReport>>,
}

impl Shared {
    fn update(&self, r: &BotReport) {
        if let Ok(mut all) = self.reports.lock()
            && let Some(slot) = all.get_mut(r.index)
        {
            *slot = r.clone();
        }
    }
}

/// One bot: join, then rounds until its push budget, the shared budget, or `shutdown`.
async fn bot(
    index: usize,
    opts: Arc<BotOptions>,
    train: Arc<Split>,
    gpu: Option<easel_client::Gpu>,
    shared: Arc<Shared>,
    shutdown: Shutdown,
) -> BotReport {
    let slow = index < opts.slow;
    let mut report = BotReport::new(index, slow);
    if let Err(e) = bot_session(&opts, &train, gpu, &shared, shutdown, &mut report).await {
        report.error = Some(format!("{e:#}"));
    }
    shared.update(&report);
    report
}

/// Connects and joins the room (resuming worker `resume`): the connection and the Welcome.
async fn open(opts: &BotOptions, resume: Option<u64>) -> anyhow::Result<(Ws, Welcome)> {
    let mut ws = connect(&opts.relay, opts.trust.as_ref()).await?;
    let join = worker::join(&opts.room, ClientKind::Bot, opts.backend, resume);
    ws.send(WsMessage::binary(message::encode(&join))).await?;
    let limits = Limits::default();
    loop {
        let bytes = recv(&mut ws).await?;
        match message::decode(&bytes, &limits)? {
            Message::Welcome(w) => return Ok((ws, w)),
            Message::Error(e) => {
                bail!("the relay refused to join: {} (code {})", e.message, e.code)
            }
            _ => continue,
        }
    }
}

/// Joins again as the same worker after a close with code 4001; a push in flight is lost.
/// The trainer is rebuilt when the shard changed.
async fn rejoin(
    opts: &BotOptions,
    train: &Split,
    gpu: Option<&easel_client::Gpu>,
    ws: &mut Ws,
    w: &mut Worker<dyn Trainer + Send>,
) -> anyhow::Result<()> {
    let (fresh, welcome) = open(opts, Some(w.worker_id())).await?;
    *ws = fresh;
    let start = worker::prepare(&welcome, train)?;
    let trainer = make_trainer(opts.backend, gpu, &start)?;
    if !w.rejoin(start) {
        w.replace_trainer(trainer);
    }
    Ok(())
}

/// The next message from the relay; after a close with 4001 the bot joins again
/// ([`rejoin`]) and gets `None`.
async fn recv_or_rejoin(
    opts: &BotOptions,
    train: &Split,
    gpu: Option<&easel_client::Gpu>,
    ws: &mut Ws,
    w: &mut Worker<dyn Trainer + Send>,
) -> anyhow::Result<Option<Vec<u8>>> {
    match recv(ws).await {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.is::<RejoinAsked>() => {
            rejoin(opts, train, gpu, ws, w).await?;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

async fn bot_session(
    opts: &BotOptions,
    train: &Arc<Split>,
    gpu: Option<easel_client::Gpu>,
    shared: &Shared,
    mut shutdown: Shutdown,
    report: &mut BotReport,
) -> anyhow::Result<()> {
    let (mut ws, welcome) = open(opts, None).await?;
    let start = worker::prepare(&welcome, train)?;
    let trainer = make_trainer(opts.backend, gpu.as_ref(), &start)?;
    let seed = opts.seed.wrapping_add(report.index as u64);
    let mut w: Worker<dyn Trainer + Send> = Worker::new(start, trainer, seed);
    report.worker_id = w.worker_id();
    let slowdown = if report.slow {
        opts.slowdown.max(1.0)
    } else {
        1.0
    };
    loop {
        let done_self = opts.pushes.is_some_and(|p| w.stats().pushes >= p);
        let done_all = opts
            .total_pushes
            .is_some_and(|t| shared.acks.load(Ordering::SeqCst) >= t);
        if done_self || done_all || shutdown.is_fired() {
            break;
        }
        if !w.ready() {
            // Paused by the teacher: wait for a control message.
            let bytes = tokio::select! {
                b = recv_or_rejoin(opts, train, gpu.as_ref(), &mut ws, &mut w) => b?,
                _ = shutdown.wait() => break,
            };
            if let Some(bytes) = bytes {
                w.on_bytes(&bytes)?;
            }
            continue;
        }
        let t0 = Instant::now();
        let (back, push) = tokio::task::spawn_blocking(move || {
            let push = w.local_round();
            (w, push)
        })
        .await
        .context("a training round panicked")?;
        w = back;
        let compute = t0.elapsed();
        report.compute_s += compute.as_secs_f64();
        let wait = compute.mul_f64(slowdown - 1.0) + Duration::from_millis(w.delay_ms().into());
        if !wait.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait() => {}
            }
        }
        if let Err(e) = ws.send(WsMessage::binary(push)).await {
            // The relay may have closed with 4001 while the round trained: read why.
            match recv_or_rejoin(opts, train, gpu.as_ref(), &mut ws, &mut w).await {
                Ok(None) => continue,
                _ => return Err(e).context("sending a push"),
            }
        }
        while w.in_flight() {
            let Some(bytes) = recv_or_rejoin(opts, train, gpu.as_ref(), &mut ws, &mut w).await?
            else {
                continue;
            };
            if let Event::Acked(_) = w.on_bytes(&bytes)? {
                report.acks += 1;
                shared.acks.fetch_add(1, Ordering::SeqCst);
            }
        }
        report.stats = w.stats().clone();
        shared.update(report);
    }
    report.stats = w.stats().clone();
    let _ = ws.close(None).await;
    Ok(())
}

/// Runs `opts.count` bots until each has its pushes, the shared budget is spent, or
/// `shutdown` fires; prints every bot's line each `progress` (if given). `train` is the
/// training split the shards index. Returns every bot's report, in index order.
pub async fn run_bots(
    opts: BotOptions,
    train: Arc<Split>,
    shutdown: Shutdown,
    progress: Option<Duration>,
) -> anyhow::Result<Vec<BotReport>> {
    let gpu = if opts.backend == Backend::Gpu {
        let gpu = tokio::task::spawn_blocking(|| pollster::block_on(easel_client::Gpu::new()))
            .await
            .context("starting the GPU")??;
        Some(gpu)
    } else {
        None
    };
    let shared = Arc::new(Shared {
        acks: AtomicU64::new(0),
        reports: Mutex::new(
            (0..opts.count)
                .map(|i| BotReport::new(i, i < opts.slow))
                .collect(),
        ),
    });
    let opts = Arc::new(opts);
    let tasks: Vec<_> = (0..opts.count)
        .map(|i| {
            tokio::spawn(bot(
                i,
                opts.clone(),
                train.clone(),
                gpu.clone(),
                shared.clone(),
                shutdown.clone(),
            ))
        })
        .collect();
    let printer = progress.map(|every| {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Ok(all) = shared.reports.lock() {
                    for r in all.iter() {
                        println!("{}", r.line());
                    }
                }
            }
        })
    });
    let mut reports = Vec::with_capacity(tasks.len());
    for t in tasks {
        reports.push(t.await.context("a bot panicked")?);
    }
    if let Some(p) = printer {
        p.abort();
    }
    Ok(reports)
}
