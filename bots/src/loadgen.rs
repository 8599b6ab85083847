//! `easel bench relay --clients N`: a load generator for one room. N real WebSocket clients
//! on loopback speak the protocol (Join, then a Push every `interval` from a jittered start,
//! each answered by an Ack and a Center); the update is synthetic (random deltas encoded once
//! with the push codec, no training). Each client records its acknowledged pushes, so the
//! room's ledger can be checked for every one of them ([`missing_from_ledger`]).
//!
//! The relay can be another process ([`RelayProcess`]: `easel serve` as a child, or any
//! relay given by its teacher URL), so that its CPU time and memory are read from
//! `/proc/PID` apart from the clients'.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use easel_protocol::message::{self, Join, Message, Push, code};
use easel_protocol::{Backend, ClientKind, Codec, LENET5_28, Limits, Outcome, codec};
use futures_util::{SinkExt, StreamExt};
use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// How long a client waits for any one answer before it counts the push as lost and stops.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Joins in flight at once (the relay answers each with a whole fp32 center).
const JOIN_CONCURRENCY: usize = 32;
/// Distinct synthetic updates, encoded before the clients start.
const PAYLOADS: usize = 16;

/// Where the clients connect: a relay's HTTP address, a room and the admin token (to set the
/// room's push codec and read its ledger).
#[derive(Clone, Debug)]
pub struct Target {
    /// `127.0.0.1:PORT` of the relay's plain HTTP listener.
    pub addr: SocketAddr,
    pub room: String,
    pub admin: String,
}

impl Target {
    /// Reads a teacher URL, `http://127.0.0.1:PORT/teacher.html?room=CODE&admin=TOKEN`
    /// (what `easel serve` prints).
    pub fn from_teacher_url(url: &str) -> anyhow::Result<Target> {
        let bad = || {
            format!(
                "{url:?} is not a teacher URL like \
                 http://127.0.0.1:8080/teacher.html?room=CODE&admin=TOKEN"
            )
        };
        let rest = url.strip_prefix("http://").with_context(bad)?;
        let (authority, tail) = rest.split_once('/').with_context(bad)?;
        let addr: SocketAddr = authority.parse().with_context(bad)?;
        let query = tail.split_once('?').map(|(_, q)| q).with_context(bad)?;
        let field = |name: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .map(str::to_string)
        };
        Ok(Target {
            addr,
            room: field("room").with_context(bad)?,
            admin: field("admin").with_context(bad)?,
        })
    }

    fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The room's settings through the teacher API: the push codec and `tau_max`.
    pub fn configure(&self, codec_up: &str, tau_max: u32) -> anyhow::Result<()> {
        self.control(&serde_json::json!({
            "type": "settings",
            "codec_up": codec_up,
            "tau_max": tau_max,
        }))
        .map(drop)
    }

    /// Sends one command of `POST /api/rooms/CODE/control`; the room's new state, or the
    /// relay's reason for refusing it.
    pub fn control(&self, command: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
        let path = format!("/api/rooms/{}/control?admin={}", self.room, self.admin);
        let body = command.to_string();
        let (status, text) = http(self.addr, "POST", &path, Some(&body), &self.origin())?;
        if status != 200 {
            let why = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or(text);
            bail!("the relay refused {} ({status}): {why}", command["type"]);
        }
        Ok(serde_json::from_str(&text)?)
    }

    /// The room's ledger as CSV.
    pub fn ledger_csv(&self) -> anyhow::Result<String> {
        let path = format!("/api/rooms/{}/ledger.csv?admin={}", self.room, self.admin);
        let (status, text) = http(self.addr, "GET", &path, None, &self.origin())?;
        if status != 200 {
            bail!("the relay did not give the ledger ({status}): {text}");
        }
        Ok(text)
    }
}

/// What the load is.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub clients: usize,
    /// Each client pushes once per interval (from a random start in the first one); a push
    /// answered later than its next slot is followed at once by the next.
    pub interval: Duration,
    /// How long clients keep pushing after the last one joined.
    pub push_for: Duration,
    pub codec: Codec,
    pub seed: u64,
    /// The relay's process id, when it runs on this machine: its CPU time is read when
    /// pushing starts and ends.
    pub relay_pid: Option<u32>,
}

/// What one client saw.
#[derive(Clone, Debug, Default)]
pub struct ClientLog {
    pub worker: u64,
    /// Connect to Welcome.
    pub join: Duration,
    /// `(base, version)` of each accepted push.
    pub acked: Vec<(u64, u64)>,
    /// Push sent to Ack received, each push answered.
    pub latencies: Vec<Duration>,
    pub refused_stale: u64,
    pub refused_other: Vec<u16>,
    /// Why the client stopped early, if it did.
    pub error: Option<String>,
}

/// What the clients together saw.
#[derive(Clone, Debug)]
pub struct LoadOutcome {
    pub logs: Vec<ClientLog>,
    /// From the first connect to the last Welcome.
    pub join_total: Duration,
    /// When pushing started and stopped (the last answer).
    pub push_start: Instant,
    pub push_end: Instant,
    /// The relay's CPU time while the clients joined, and while they pushed: the whole
    /// process.
    pub relay_cpu_join: Option<Duration>,
    pub relay_cpu_push: Option<Duration>,
    /// This process's CPU time while the clients pushed.
    pub own_cpu_push: Option<Duration>,
}

/// Percentiles of a set of durations, in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(mut d: Vec<Duration>) -> Percentiles {
        if d.is_empty() {
            return Percentiles::default();
        }
        d.sort_unstable();
        let at = |q: f64| {
            let i = ((q * d.len() as f64).ceil() as usize).clamp(1, d.len()) - 1;
            d[i].as_secs_f64() * 1e3
        };
        Percentiles {
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

/// Counts over every client.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub clients: usize,
    pub clients_failed: usize,
    pub first_error: Option<String>,
    pub join_ms: Percentiles,
    pub join_total_ms: f64,
    pub push_to_ack_ms: Percentiles,
    pub pushes_answered: u64,
    pub pushes_acked: u64,
    pub refused_too_stale: u64,
    pub refused_other: u64,
    pub refused_other_codes: Vec<u16>,
    pub push_seconds: f64,
    pub pushes_per_s: f64,
}

impl LoadOutcome {
    pub fn summary(&self) -> Summary {
        let logs = &self.logs;
        let acked: u64 = logs.iter().map(|l| l.acked.len() as u64).sum();
        let stale: u64 = logs.iter().map(|l| l.refused_stale).sum();
        let mut other: Vec<u16> = logs
            .iter()
            .flat_map(|l| l.refused_other.iter().copied())
            .collect();
        let refused_other = other.len() as u64;
        other.sort_unstable();
        other.dedup();
        let secs = self
            .push_end
            .saturating_duration_since(self.push_start)
            .as_secs_f64();
        Summary {
            clients: logs.len(),
            clients_failed: logs.iter().filter(|l| l.error.is_some()).count(),
            first_error: logs.iter().find_map(|l| l.error.clone()),
            join_ms: Percentiles::of(logs.iter().map(|l| l.join).collect()),
            join_total_ms: self.join_total.as_secs_f64() * 1e3,
            push_to_ack_ms: Percentiles::of(
                logs.iter()
                    .flat_map(|l| l.latencies.iter().copied())
                    .collect(),
            ),
            pushes_answered: acked + stale + refused_other,
            pushes_acked: acked,
            refused_too_stale: stale,
            refused_other,
            refused_other_codes: other,
            push_seconds: secs,
            pushes_per_s: if secs > 0.0 {
                (acked + stale + refused_other) as f64 / secs
            } else {
                0.0
            },
        }
    }
}

/// Acknowledged pushes that are not in the ledger as accepted (worker, base, version): the
/// ledger CSV's columns `worker`, `base`, `version` and `code`.
pub fn missing_from_ledger(logs: &[ClientLog], csv: &str) -> anyhow::Result<u64> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().context("empty ledger")?.split(',').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .with_context(|| format!("the ledger has no {name} column"))
    };
    let (w, b, v, c) = (col("worker")?, col("base")?, col("version")?, col("code")?);
    let mut accepted = HashSet::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let num = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok());
        if num(c) == Some(0)
            && let (Some(w), Some(b), Some(v)) = (num(w), num(b), num(v))
        {
            accepted.insert((w, b, v));
        }
    }
    Ok(logs
        .iter()
        .flat_map(|l| l.acked.iter().map(move |&(b, v)| (l.worker, b, v)))
        .filter(|k| !accepted.contains(k))
        .count() as u64)
}

/// Random deltas (Gaussian, sigma 1e-3), encoded with `codec`: the clients' updates.
pub fn synthetic_payloads(codec: Codec, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = LENET5_28.param_count;
    (0..PAYLOADS)
        .map(|_| {
            let delta: Vec<f32> = (0..n)
                .map(|_| {
                    // Box-Muller from two uniforms.
                    let (u, v): (f32, f32) = (rng.random_range(1e-7..1.0), rng.random());
                    1e-3 * (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
                })
                .collect();
            codec::encode(codec, &delta, &mut rng)
        })
        .collect()
}

type Ws = WebSocketStream<TcpStream>;

/// Runs the load against `target`: every client joins (at most [`JOIN_CONCURRENCY`] at
/// once), then all push for `opts.push_for`, then close their sockets.
pub async fn run(target: &Target, opts: &LoadOptions) -> anyhow::Result<LoadOutcome> {
    let payloads: Arc<Vec<Vec<u8>>> = Arc::new(synthetic_payloads(opts.codec, opts.seed));
    let joins = Arc::new(Semaphore::new(JOIN_CONCURRENCY));
    // Every client waits here until the last one joined, so pushing starts together.
    let start = Arc::new(tokio::sync::Barrier::new(opts.clients + 1));
    let (t_tx, t_rx) = tokio::sync::watch::channel(None::<Instant>);
    let cpu = |pid: Option<u32>| pid.and_then(|p| cpu_time(p).ok());
    let me = Some(std::process::id());
    let cpu_joining = cpu(opts.relay_pid);
    let join_started = Instant::now();
    let mut tasks = Vec::with_capacity(opts.clients);
    for i in 0..opts.clients {
        let (target, opts) = (target.clone(), opts.clone());
        let (payloads, joins, start, mut t_rx) =
            (payloads.clone(), joins.clone(), start.clone(), t_rx.clone());
        tasks.push(tokio::spawn(async move {
            let mut log = ClientLog::default();
            let joined = {
                let _permit = joins.acquire().await;
                join(&target, &mut log).await
            };
            start.wait().await;
            let push_start = t_rx.wait_for(Option::is_some).await.ok().and_then(|v| *v);
            let Some(push_start) = push_start else {
                return log;
            };
            match joined {
                Ok((ws, base)) => {
                    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed ^ (i as u64 + 1) << 20);
                    let r = pushes(ws, base, &opts, &payloads, push_start, &mut rng, &mut log);
                    if let Err(e) = r.await {
                        log.error = Some(format!("{e:#}"));
                    }
                }
                Err(e) => log.error = Some(format!("join: {e:#}")),
            }
            log
        }));
    }
    start.wait().await;
    let join_total = join_started.elapsed();
    let (cpu_pushing, own_pushing) = (cpu(opts.relay_pid), cpu(me));
    let push_start = Instant::now();
    t_tx.send_replace(Some(push_start));
    let mut logs = Vec::with_capacity(tasks.len());
    for t in tasks {
        logs.push(t.await.context("a client task panicked")?);
    }
    let push_end = Instant::now();
    let since = |a: Option<Duration>, b: Option<Duration>| Some(b?.saturating_sub(a?));
    let cpu_pushed = cpu(opts.relay_pid);
    Ok(LoadOutcome {
        logs,
        join_total,
        push_start,
        push_end,
        relay_cpu_join: since(cpu_joining, cpu_pushing),
        relay_cpu_push: since(cpu_pushing, cpu_pushed),
        own_cpu_push: since(own_pushing, cpu(me)),
    })
}

/// Connects and joins; the socket and the center version of the Welcome.
async fn join(target: &Target, log: &mut ClientLog) -> anyhow::Result<(Ws, u64)> {
    let t0 = Instant::now();
    let tcp = TcpStream::connect(target.addr)
        .await
        .with_context(|| format!("connecting to {}", target.addr))?;
    tcp.set_nodelay(true).ok();
    let mut request = format!("ws://{}/ws", target.addr).into_client_request()?;
    request
        .headers_mut()
        .insert("origin", target.origin().parse()?);
    let cap = Limits::default().max_message;
    // The relay's own small read buffer (tungstenite's 128 KiB default is zero-filled before
    // every read: at thousands of clients the load generator would measure itself).
    let config = WebSocketConfig::default()
        .read_buffer_size(easel_relay::wsock::READ_BUFFER)
        .max_message_size(Some(cap))
        .max_frame_size(Some(cap));
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(request, tcp, Some(config))
        .await
        .context("WebSocket handshake")?;
    let hello = Message::Join(Join {
        room: target.room.clone(),
        kind: ClientKind::Bot,
        backend: Backend::Cpu,
        capabilities: 0,
        layout_hash: LENET5_28.layout_hash(),
        resume_worker: None,
    });
    ws.send(WsMessage::binary(message::encode(&hello))).await?;
    loop {
        match recv(&mut ws).await? {
            Message::Welcome(w) => {
                log.worker = w.worker_id;
                log.join = t0.elapsed();
                return Ok((ws, w.center_version));
            }
            Message::Error(e) => bail!("the relay refused the join: {}", e.message),
            _ => {}
        }
    }
}

/// Pushes every `interval` until `push_for` has passed since `push_start`, then closes.
async fn pushes(
    mut ws: Ws,
    mut base: u64,
    opts: &LoadOptions,
    payloads: &[Vec<u8>],
    push_start: Instant,
    rng: &mut impl Rng,
    log: &mut ClientLog,
) -> anyhow::Result<()> {
    let stop = push_start + opts.push_for;
    let mut next = push_start + opts.interval.mul_f64(rng.random::<f64>());
    while next < stop {
        tokio::time::sleep_until(next.into()).await;
        let push = Message::Push(Push {
            base_version: base,
            local_steps: 16,
            samples: 512,
            loss: f32::NAN,
            payload: payloads[rng.random_range(0..payloads.len())].clone(),
        });
        let sent = Instant::now();
        ws.send(WsMessage::binary(message::encode(&push))).await?;
        let ack = loop {
            if let Message::Ack(a) = recv(&mut ws).await? {
                break a;
            }
        };
        log.latencies.push(sent.elapsed());
        match ack.outcome {
            Outcome::Accepted { version, .. } => log.acked.push((ack.base_version, version)),
            Outcome::Refused {
                code: code::TOO_STALE,
                ..
            } => log.refused_stale += 1,
            Outcome::Refused { code, .. } => log.refused_other.push(code),
        }
        base = loop {
            if let Message::Center(c) = recv(&mut ws).await? {
                break c.version;
            }
        };
        next = (next + opts.interval).max(Instant::now());
    }
    ws.close(None).await.ok();
    Ok(())
}

/// The next protocol message (pings, pongs and text skipped).
async fn recv(ws: &mut Ws) -> anyhow::Result<Message> {
    loop {
        let m = tokio::time::timeout(ANSWER_TIMEOUT, ws.next())
            .await
            .context("the relay did not answer in time")?
            .context("the relay closed the connection")??;
        if let WsMessage::Binary(b) = m {
            return Ok(message::decode(&b, &Limits::default())?);
        }
        if let WsMessage::Close(f) = m {
            bail!("the relay closed the connection: {f:?}");
        }
    }
}

/// One HTTP/1.1 request with `Connection: close`; the status and the body.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    origin: &str,
) -> anyhow::Result<(u16, String)> {
    let mut s = StdTcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nOrigin: {origin}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of HTTP headers")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    let mut payload = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        payload = dechunk(&payload)?;
    }
    Ok((status, String::from_utf8_lossy(&payload).into_owned()))
}

fn dechunk(mut b: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("bad chunk")?;
        let size = usize::from_str_radix(std::str::from_utf8(&b[..eol])?.trim(), 16)?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(b.get(..size).context("short chunk")?);
        b = b.get(size + 2..).context("short chunk")?;
    }
}

/// A relay run as a child process (`BIN serve --https off --http 127.0.0.1:0`), so its
/// CPU time and memory can be read apart from the clients'.
#[derive(Debug)]
pub struct RelayProcess {
    child: Child,
    pub target: Target,
}

impl RelayProcess {
    /// Starts `bin serve` and waits for its teacher URL.
    pub fn spawn(bin: &Path) -> anyhow::Result<RelayProcess> {
        let mut child = Command::new(bin)
            .args(["serve", "--https", "off", "--http", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {} serve", bin.display()))?;
        let out = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(out).lines();
        let target = loop {
            let Some(line) = lines.next() else {
                let _ = child.kill();
                bail!(
                    "{} serve stopped before printing its teacher URL",
                    bin.display()
                );
            };
            let line = line?;
            if let Some(i) = line.find("http://")
                && line.contains("admin=")
            {
                break Target::from_teacher_url(line[i..].trim())?;
            }
        };
        // Keep reading its stdout so that it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(RelayProcess { child, target })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time (user + system, every thread, live or ended) of process `pid`.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    stat_cpu(&format!("/proc/{pid}/stat"))
}

/// utime + stime of a `/proc/.../stat` file.
fn stat_cpu(path: &str) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').context("bad /proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the name and state.
    let ticks: u64 = f.get(11).context("no utime")?.parse::<u64>()?
        + f.get(12).context("no stime")?.parse::<u64>()?;
    // USER_HZ is 100 on Linux for every architecture the relay runs on.
    Ok(Duration::from_millis(ticks * 10))
}

/// Resident and peak resident memory of process `pid`, in bytes (`VmRSS`, `VmHWM`).
pub fn memory(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|k| k * 1024)
            .with_context(|| format!("no {key} in /proc/{pid}/status"))
    };
    Ok((kb("VmRSS:")?, kb("VmHWM:")?))
}

/// Raises this process's open-file limit to its hard limit (each client is a socket here
/// and one in the relay, which inherits the limit).
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        r.rlim_cur
    }
}

/// Whether a refusal code means the push was too stale.
pub fn is_stale(c: u16) -> bool {
    c == code::TOO_STALE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn teacher_urls_give_the_address_room_and_token() {
        let t = Target::from_teacher_url(
            "http://127.0.0.1:8080/teacher.html?room=ABCDE&admin=0123abcd",
        )
        .unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!((t.room.as_str(), t.admin.as_str()), ("ABCDE", "0123abcd"));
        assert!(Target::from_teacher_url("http://127.0.0.1:8080/teacher.html?room=A").is_err());
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let d = (1..=100).map(Duration::from_millis).collect();
        let p = Percentiles::of(d);
        assert_eq!((p.p50, p.p95, p.p99, p.max), (50.0, 95.0, 99.0, 100.0));
    }

    #[test]
    fn acked_pushes_absent_or_refused_in_the_ledger_are_missing() {
        let csv = "seq,wall_ms,worker,base,current,tau,age_ms,alpha_eff,worker_distance,\
                   view_distance,delta_norm,bytes_in,bytes_out,version,peer,accepted,code,reason\n\
                   0,1,3,0,0,0,,0.5,0,0,0,10,10,1,,true,0,\n\
                   1,1,4,1,1,0,,0.5,0,0,0,10,10,,,false,8,too stale\n";
        let log = |worker, acked| ClientLog {
            worker,
            acked,
            ..ClientLog::default()
        };
        let logs = [log(3, vec![(0, 1)]), log(4, vec![(1, 2)])];
        assert_eq!(missing_from_ledger(&logs, csv).unwrap(), 1);
        assert_eq!(missing_from_ledger(&logs[..1], csv).unwrap(), 0);
    }

    #[test]
    fn synthetic_payloads_decode_to_the_model_length() {
        let c = Codec::top_k_qsgd_fraction(0.01, LENET5_28.param_count, 8, codec::DEFAULT_BUCKET);
        for p in synthetic_payloads(c, 7) {
            let d = codec::decode(&p, LENET5_28.param_count).unwrap();
            assert_eq!(d.len(), LENET5_28.param_count);
        }
    }
}
