//! `easel bots`: native workers that fill a room without phones.
//!
//! Each bot is a tokio task holding one WebSocket connection (`ws://` or `wss://`) and
//! running exactly the browser's session logic, `easel_client::worker::Worker`; its rounds
//! of local training run on a blocking thread, so training never stalls the reactor. A bot
//! can play a straggler: with a slowdown `F`, it sleeps `(F - 1)` times its measured compute
//! time after each round.
//!
//! A bot comes back by itself: after any lost connection (the relay restarted, a network
//! blip, a close other than 4000) it reconnects with [`Backoff`] (0.5 s doubling to 10 s,
//! jittered, like the browser) and resumes as the same worker, with its id and resume token
//! and the model it has; when the relay no longer knows it, it goes on as a new worker from
//! that model. Only a removal by the teacher (close 4000), a relay it cannot work with, its
//! push budget or shutdown end it.
//!
//! Beside the bots: [`loadgen`], the relay's load generator (`easel bench relay`), and
//! [`experiment`], the 8-worker run against an in-process relay that the end-to-end test
//! and `easel bench relay` share.

pub mod experiment;
pub mod loadgen;

use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use easel_client::data::Split;
use easel_client::worker::{self, Event, Stats, Worker};
use easel_client::{Trainer, cpu::CpuTrainer};
use easel_protocol::message::{self, Message, code};
use easel_protocol::{Backend, ClientKind, Limits, Resume, Welcome};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use easel_protocol::codes::close;
use easel_relay::Shutdown;

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
    /// Connections lost and made again (each a Welcome, resumed or as a new worker).
    pub reconnects: u64,
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
            reconnects: 0,
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
        None => easel_relay::tls::data_dir().join("cert.pem"),
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

/// How a connection ended, when it did not end the bot.
#[derive(Debug, thiserror::Error)]
enum Lost {
    /// Close 4001: the room's partition changed; join again at once for the new shard.
    #[error("the relay asked to join again (the partition changed)")]
    Rejoin,
    /// Close 4002: another connection took this worker over; go on as a new worker.
    #[error("another connection resumed this worker")]
    Superseded,
    /// Anything else: a close, a reset, silence, a relay that is gone. Reconnect after a
    /// backoff.
    #[error("{0}")]
    Dropped(String),
}

/// The bot ends for good: removed by the teacher (4000), or a relay it cannot work with.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Fatal(String);

/// The next binary message, skipping pings, pongs and text; an error when the connection
/// closes, fails, or stays silent for [`ANSWER_TIMEOUT`]: [`Lost`] for what a reconnection
/// mends, [`Fatal`] for a close with 4000 (removed) or 1002 (another protocol version).
async fn recv(ws: &mut Ws) -> anyhow::Result<Vec<u8>> {
    loop {
        let next = match tokio::time::timeout(ANSWER_TIMEOUT, ws.next()).await {
            Ok(next) => next,
            Err(_) => return Err(Lost::Dropped("the relay did not answer in time".into()).into()),
        };
        match next {
            Some(Ok(WsMessage::Binary(b))) => return Ok(b.to_vec()),
            Some(Ok(WsMessage::Close(frame))) => {
                let code = frame.as_ref().map(|f| u16::from(f.code));
                let why = frame
                    .as_ref()
                    .map_or(String::new(), |f| f.reason.to_string());
                return Err(match code {
                    Some(close::REJOIN) => Lost::Rejoin.into(),
                    Some(close::SUPERSEDED) => Lost::Superseded.into(),
                    Some(close::REMOVED) | Some(close::PROTOCOL_ERROR) => {
                        Fatal(format!("the relay closed the connection: {why}")).into()
                    }
                    _ => Lost::Dropped(format!("the relay closed the connection ({code:?} {why})"))
                        .into(),
                });
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                return Err(Lost::Dropped(format!("reading from the relay: {e}")).into());
            }
            None => return Err(Lost::Dropped("the relay closed the connection".into()).into()),
        }
    }
}

/// Reconnection delays: 0.5 s doubling to 10 s, each jittered by ±20 % (as the browser's
/// `www/worker.js`), so that a class of bots does not reconnect in lockstep.
#[derive(Clone, Debug)]
pub struct Backoff {
    attempt: u32,
    rng: rand_chacha::ChaCha8Rng,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(500);
    pub const MAX: Duration = Duration::from_secs(10);

    pub fn new(seed: u64) -> Backoff {
        use rand::SeedableRng;
        Backoff {
            attempt: 0,
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        use rand::RngExt;
        let base = Self::FIRST
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(Self::MAX);
        self.attempt = self.attempt.saturating_add(1);
        base.mul_f64(self.rng.random_range(0.8..1.2))
    }

    /// A connection was made and welcomed: the next loss starts from 0.5 s again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// The one native trainer factory (the bots' and `easel train`'s): on `gpu` when one is
/// given, else on the CPU, for the digits of `split`, from `params`; `Send`, so rounds can
/// run on a blocking thread.
pub fn trainer_on(
    gpu: Option<&easel_client::Gpu>,
    split: &Split,
    params: &[f32],
    sgd: easel_client::Sgd,
    batch: usize,
) -> anyhow::Result<Box<dyn Trainer + Send>> {
    let (images, labels) = (&split.images, &split.labels);
    Ok(match gpu {
        Some(gpu) => Box::new(easel_client::GpuTrainer::new(
            gpu, images, labels, params, sgd, batch,
        )?),
        None => Box::new(CpuTrainer::new(images, labels, params, sgd, batch)),
    })
}

/// A trainer for `start`'s shard on `backend` (the CPU when the GPU is asked for but none
/// could be had).
fn make_trainer(
    backend: Backend,
    gpu: Option<&easel_client::Gpu>,
    start: &worker::Start,
) -> anyhow::Result<Box<dyn Trainer + Send>> {
    let gpu = gpu.filter(|_| backend == Backend::Gpu);
    trainer_on(gpu, &start.shard, &start.center, start.sgd, start.batch)
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

/// Connects and joins the room, resuming `resume` when given: the connection and the
/// Welcome. A refused token (another relay, or a forged id) joins again at once on the same
/// connection as a new worker. A connection that fails is [`Lost::Dropped`]; a refusal that
/// no retry mends (unknown room on the first join, wrong model, removed) is an error.
async fn open(
    opts: &BotOptions,
    mut resume: Option<Resume>,
    first: bool,
) -> anyhow::Result<(Ws, Welcome)> {
    let mut ws = connect(&opts.relay, opts.trust.as_ref())
        .await
        .map_err(|e| Lost::Dropped(format!("{e:#}")))?;
    let limits = Limits::default();
    loop {
        let join = worker::join(&opts.room, ClientKind::Bot, opts.backend, resume);
        ws.send(WsMessage::binary(message::encode(&join)))
            .await
            .map_err(|e| Lost::Dropped(format!("sending the Join: {e}")))?;
        let refused = loop {
            let bytes = recv(&mut ws).await?;
            match message::decode(&bytes, &limits)? {
                Message::Welcome(w) => return Ok((ws, w)),
                Message::Error(e) => break e,
                _ => continue,
            }
        };
        let why = format!("{} (code {})", refused.message, refused.code);
        match refused.code {
            code::BAD_RESUME_TOKEN if resume.is_some() => {
                tracing::info!("resume refused ({why}); joining as a new worker");
                resume = None;
            }
            // The room may come back (a relay restoring its rooms): keep trying.
            code::UNKNOWN_ROOM if !first => {
                return Err(Lost::Dropped(format!("the relay refused to join: {why}")).into());
            }
            _ => bail!(Fatal(format!("the relay refused to join: {why}"))),
        }
    }
}

/// Joins again as the same worker on a new connection (a push in flight is lost), or as a
/// new worker when the relay no longer knows this one (it restarted) or refused its token.
/// The trainer is rebuilt when the shard changed.
async fn rejoin(
    opts: &BotOptions,
    train: &Split,
    gpu: Option<&easel_client::Gpu>,
    resume: Option<Resume>,
    w: &mut Worker<dyn Trainer + Send>,
) -> anyhow::Result<Ws> {
    let (ws, welcome) = open(opts, resume, false).await?;
    let start = worker::prepare(&welcome, train)?;
    let trainer = make_trainer(opts.backend, gpu, &start)?;
    if !w.rejoin(start) {
        w.replace_trainer(trainer);
    }
    Ok(ws)
}

/// After a lost connection: wait the backoff (not for 4001: the relay asked to join again
/// now), then reconnect until a Welcome, or shutdown (`Ok(None)`). Resumes the worker, except
/// after 4002 (another connection took it over: go on as a new worker).
async fn reconnect(
    opts: &BotOptions,
    train: &Split,
    gpu: Option<&easel_client::Gpu>,
    w: &mut Worker<dyn Trainer + Send>,
    lost: &Lost,
    backoff: &mut Backoff,
    shutdown: &mut Shutdown,
) -> anyhow::Result<Option<Ws>> {
    let resume = (!matches!(lost, Lost::Superseded)).then(|| w.resume());
    let mut wait = match lost {
        Lost::Rejoin => Duration::ZERO,
        _ => backoff.next_delay(),
    };
    loop {
        tracing::debug!(worker = w.worker_id(), "{lost}; reconnecting in {wait:?}");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait() => return Ok(None),
        }
        let attempt = tokio::select! {
            r = rejoin(opts, train, gpu, resume, w) => r,
            _ = shutdown.wait() => return Ok(None),
        };
        match attempt {
            Ok(ws) => {
                backoff.reset();
                return Ok(Some(ws));
            }
            Err(e) if e.is::<Lost>() => wait = backoff.next_delay(),
            Err(e) => return Err(e),
        }
    }
}

/// What the bot does with an error of its session: a [`Lost`] connection is mended by a
/// reconnection; anything else ends the bot.
fn lost(e: anyhow::Error) -> anyhow::Result<Lost> {
    e.downcast::<Lost>()
}

async fn bot_session(
    opts: &BotOptions,
    train: &Arc<Split>,
    gpu: Option<easel_client::Gpu>,
    shared: &Shared,
    mut shutdown: Shutdown,
    report: &mut BotReport,
) -> anyhow::Result<()> {
    let (ws, welcome) = open(opts, None, true).await?;
    let mut ws = Some(ws);
    let start = worker::prepare(&welcome, train)?;
    let trainer = make_trainer(opts.backend, gpu.as_ref(), &start)?;
    let seed = opts.seed.wrapping_add(report.index as u64);
    let mut w: Worker<dyn Trainer + Send> = Worker::new(start, trainer, seed);
    let mut backoff = Backoff::new(seed ^ 0xb0ff);
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
        let Some(sock) = ws.as_mut() else {
            break;
        };
        let (back, step) = session_step(w, sock, slowdown, shared, report, &mut shutdown).await;
        w = back;
        if let Err(e) = step {
            let why = lost(e)?;
            ws = None;
            match reconnect(
                opts,
                train,
                gpu.as_ref(),
                &mut w,
                &why,
                &mut backoff,
                &mut shutdown,
            )
            .await?
            {
                Some(fresh) => {
                    ws = Some(fresh);
                    report.worker_id = w.worker_id();
                    report.reconnects += 1;
                }
                None => break,
            }
        }
        report.stats = w.stats().clone();
        shared.update(report);
    }
    report.stats = w.stats().clone();
    if let Some(mut ws) = ws {
        let _ = ws.close(None).await;
    }
    Ok(())
}

/// One step of a connected bot: wait for a control message while paused, or train a round,
/// push it and read its answer. The error is the connection's end ([`Lost`] or [`Fatal`])
/// or the worker's. The worker goes to a blocking thread for the round and comes back.
async fn session_step(
    mut w: Worker<dyn Trainer + Send>,
    ws: &mut Ws,
    slowdown: f64,
    shared: &Shared,
    report: &mut BotReport,
    shutdown: &mut Shutdown,
) -> (Worker<dyn Trainer + Send>, anyhow::Result<()>) {
    if !w.ready() {
        // Paused by the teacher: wait for a control message.
        let r = tokio::select! {
            b = recv(ws) => b.and_then(|bytes| Ok(w.on_bytes(&bytes).map(drop)?)),
            _ = shutdown.wait() => Ok(()),
        };
        return (w, r);
    }
    let t0 = Instant::now();
    let round = tokio::task::spawn_blocking(move || {
        let push = w.local_round();
        (w, push)
    })
    .await;
    let (back, push) = match round {
        Ok(r) => r,
        // The worker went down with its thread: end this bot's task like the thread.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    w = back;
    let compute = t0.elapsed();
    report.compute_s += compute.as_secs_f64();
    let wait = compute.mul_f64(slowdown - 1.0) + Duration::from_millis(w.delay_ms().into());
    if !wait.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait() => return (w, Ok(())),
        }
    }
    let r = push_and_read(&mut w, ws, push, shared, report).await;
    (w, r)
}

/// Sends a push and reads until its answer (Ack and Center).
async fn push_and_read(
    w: &mut Worker<dyn Trainer + Send>,
    ws: &mut Ws,
    push: Vec<u8>,
    shared: &Shared,
    report: &mut BotReport,
) -> anyhow::Result<()> {
    if ws.send(WsMessage::binary(push)).await.is_err() {
        // The relay may have closed (with 4001, say) while the round trained: read why.
        recv(ws).await?;
        return Err(Lost::Dropped("sending a push failed".into()).into());
    }
    while w.in_flight() {
        let bytes = recv(ws).await?;
        if let Event::Acked(_) = w.on_bytes(&bytes)? {
            report.acks += 1;
            shared.acks.fetch_add(1, Ordering::SeqCst);
        }
    }
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
