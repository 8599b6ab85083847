//! HTTPS for classroom devices: the certificate (self-signed on first run, or a real one),
//! and the listeners that serve a warp filter over plain HTTP or over TLS.
//!
//! WebGPU exists only in secure contexts, and phones reach the teacher's laptop by its LAN
//! address, so the relay speaks HTTPS. warp 0.4 has no TLS of its own: a filter becomes a
//! hyper service ([`warp::service`]) served on connections accepted by tokio-rustls.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use warp::Reply;
use warp::filters::BoxedFilter;

use crate::Shutdown;

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct CertKey {
    /// Leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl CertKey {
    /// The SHA-256 fingerprint of the leaf certificate ([`fingerprint`]).
    pub fn fingerprint(&self) -> String {
        self.certs
            .first()
            .map(|c| fingerprint(c.as_ref()))
            .unwrap_or_default()
    }
}

/// Easel's data directory: `$EASEL_HOME`, else `$XDG_DATA_HOME/easel`, else
/// `~/.local/share/easel`, else `./.easel`.
pub fn data_dir() -> PathBuf {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(p) = var("EASEL_HOME") {
        return p;
    }
    if let Some(p) = var("XDG_DATA_HOME") {
        return p.join("easel");
    }
    if let Some(p) = var("HOME") {
        return p.join(".local/share/easel");
    }
    PathBuf::from(".easel")
}

/// The names a self-signed certificate covers: `localhost`, `127.0.0.1`, `::1`, this
/// machine's LAN addresses and its host name (and `NAME.local`).
pub fn local_names() -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    for ip in lan_ips() {
        names.push(ip.to_string());
    }
    if let Some(h) = hostname() {
        names.push(format!("{h}.local"));
        names.push(h);
    }
    names.sort();
    names.dedup();
    names
}

/// The addresses this machine uses to reach other networks (one per IP family), found by
/// "connecting" a UDP socket, which sends nothing.
pub fn lan_ips() -> Vec<IpAddr> {
    let probe = |bind: &str, to: &str| -> Option<IpAddr> {
        let s = UdpSocket::bind(bind).ok()?;
        s.connect(to).ok()?;
        let ip = s.local_addr().ok()?.ip();
        (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
    };
    [
        probe("0.0.0.0:0", "192.0.2.1:9"),
        probe("[::]:0", "[2001:db8::1]:9"),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn hostname() -> Option<String> {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())?;
    let h = raw.trim().to_string();
    let ok = !h.is_empty()
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    ok.then_some(h)
}

/// The self-signed certificate kept in `dir` (`cert.pem`, `key.pem`, and `names.txt`, the
/// names it covers). Made on first run, and made again when this machine has a name or
/// address the kept one does not cover (a laptop on a new network).
pub fn self_signed(dir: &Path) -> anyhow::Result<CertKey> {
    let (cert_path, key_path, names_path) = (
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("names.txt"),
    );
    let names = local_names();
    let covered = std::fs::read_to_string(&names_path).unwrap_or_default();
    let covered: Vec<&str> = covered.lines().collect();
    if cert_path.exists()
        && key_path.exists()
        && names.iter().all(|n| covered.contains(&n.as_str()))
    {
        return load_pem(&cert_path, &key_path);
    }
    let mut all: Vec<String> = names;
    all.extend(covered.iter().map(|s| s.to_string()));
    all.sort();
    all.dedup();
    let (cert_pem, key_pem) = generate(&all)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_private(&key_path, key_pem.as_bytes())?;
    std::fs::write(&cert_path, cert_pem)
        .with_context(|| format!("writing {}", cert_path.display()))?;
    std::fs::write(&names_path, all.join("\n") + "\n")?;
    load_pem(&cert_path, &key_path)
}

/// A new self-signed certificate for `names` (host names or IP addresses): PEM of the
/// certificate and of its private key.
pub fn generate(names: &[String]) -> anyhow::Result<(String, String)> {
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Easel relay (self-signed)");
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

/// A certificate chain and key from PEM files (`--cert`, `--key`).
pub fn load_pem(cert: &Path, key: &Path) -> anyhow::Result<CertKey> {
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    if certs.is_empty() {
        bail!("no certificate in {}", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading a private key from {}", key.display()))?;
    Ok(CertKey { certs, key })
}

/// The SHA-256 of DER bytes as colon-separated uppercase hex, as browsers show it.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A rustls server configuration (ring provider, HTTP/1.1) for `ck`.
pub fn server_config(ck: &CertKey) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(ck.certs.clone(), ck.key.clone_key())?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Serves `filter` over HTTPS on `addr` until `shutdown`. Returns the bound address (port 0
/// picks one) and the accept loop's task.
pub async fn serve_https<R: Reply + 'static>(
    filter: BoxedFilter<(R,)>,
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    shutdown: Shutdown,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(accept_loop(
        listener,
        filter,
        Some(TlsAcceptor::from(tls)),
        shutdown,
    ));
    Ok((local, task))
}

/// Serves `filter` over plain HTTP on `addr` until `shutdown`. Returns the bound address
/// and the accept loop's task.
pub async fn serve_http<R: Reply + 'static>(
    filter: BoxedFilter<(R,)>,
    addr: SocketAddr,
    shutdown: Shutdown,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(accept_loop(listener, filter, None, shutdown));
    Ok((local, task))
}

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn accept_loop<R: Reply + 'static>(
    listener: TcpListener,
    filter: BoxedFilter<(R,)>,
    tls: Option<TlsAcceptor>,
    mut shutdown: Shutdown,
) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.wait() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let filter = filter.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, filter).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => serve_connection(s, filter).await,
                        Ok(Err(e)) => tracing::debug!("TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

async fn serve_connection<IO, R>(io: IO, filter: BoxedFilter<(R,)>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    R: Reply + 'static,
{
    let service = TowerToHyperService::new(warp::service(filter));
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!("connection ended: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_is_made_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("easel-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = self_signed(&dir).unwrap();
        let b = self_signed(&dir).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 32 * 3 - 1);
        let names = std::fs::read_to_string(dir.join("names.txt")).unwrap();
        assert!(names.lines().any(|l| l == "localhost"));
        assert!(names.lines().any(|l| l == "127.0.0.1"));
        assert!(server_config(&a).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
