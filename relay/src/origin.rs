//! Which web pages may open the relay's WebSockets and send its state-changing requests.
//!
//! A browser attaches an `Origin` header to every WebSocket upgrade and every POST: the
//! scheme, host and port of the page that asked. WebSockets are not covered by the
//! same-origin policy, so without this check any page a student or the teacher opens could
//! join the class, push into it, or (with the token) drive it. The rule ([`OriginPolicy`]):
//!
//! - no `Origin` (native bots, curl, tests): allowed, it is not a browser acting for a page;
//! - an origin given with `--allow-origin` (exact scheme, host and port): allowed;
//! - otherwise the origin must be the relay itself as the request reached it: the same scheme
//!   as the listener and the same host and port as the request's `Host`, and
//!   - on the HTTPS listener, any such host: the TLS handshake already bound the name to the
//!     relay's certificate, so a page on another site that points its name at the relay
//!     (DNS rebinding) fails the certificate check before it can send anything;
//!   - on the plain HTTP listener, only the relay's own names (`localhost`, `127.0.0.1`,
//!     `::1`, the LAN addresses and the host name, as the certificate has them): over plain
//!     HTTP a rebinding page would carry the relay's `Host` and port under a foreign name, so
//!     a foreign name is refused even when it matches `Host`.
//!
//! Anything else is answered 403 with the `--allow-origin` to add.

use std::fmt;
use std::sync::Arc;

use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, Method, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection};

/// A listener's scheme (and an origin's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// A web origin: scheme, host (lowercase; IPv6 in brackets) and port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
}

/// Why a text is not an origin.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{text:?} is not an origin like https://classroom.example:8443 ({why})")]
pub struct OriginError {
    pub text: String,
    pub why: &'static str,
}

impl Origin {
    /// Reads `http://HOST[:PORT]` or `https://HOST[:PORT]` (no path; a trailing `/` is
    /// tolerated for people typing `--allow-origin`).
    pub fn parse(text: &str) -> Result<Origin, OriginError> {
        let err = |why| OriginError {
            text: text.to_string(),
            why,
        };
        let lower = text.to_ascii_lowercase();
        let (scheme, at) = if lower.starts_with("https://") {
            (Scheme::Https, "https://".len())
        } else if lower.starts_with("http://") {
            (Scheme::Http, "http://".len())
        } else {
            return Err(err("it must start with http:// or https://"));
        };
        let rest = &text[at..];
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(err("an origin has no path, query or user"));
        }
        let (host, port) = authority(rest, scheme).ok_or_else(|| err("bad host or port"))?;
        Ok(Origin { scheme, host, port })
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme.name(), self.host, self.port)
    }
}

/// `HOST[:PORT]` as lowercase host and port (the scheme's default when absent); `None` when
/// the host is empty or has characters no host name has, or the port is not a number.
fn authority(text: &str, scheme: Scheme) -> Option<(String, u16)> {
    let (host, port) = if let Some(v6) = text.strip_prefix('[') {
        let (addr, after) = v6.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (format!("[{addr}]"), port)
    } else {
        match text.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (text.to_string(), None),
        }
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => scheme.default_port(),
    };
    let host = host.to_ascii_lowercase();
    let ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._[]:".contains(c));
    ok.then_some((host, port))
}

/// The relay's own names and the extra origins it accepts (see the module's rule).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OriginPolicy {
    /// Lowercase host names and addresses (IPv6 in brackets) that are this relay's.
    own_hosts: Vec<String>,
    /// `--allow-origin`.
    allowed: Vec<Origin>,
}

impl OriginPolicy {
    /// A policy with these own names (as [`crate::tls::local_names`] gives them) and extra
    /// origins.
    pub fn new(own_names: &[String], allowed: Vec<Origin>) -> OriginPolicy {
        let own_hosts = own_names
            .iter()
            .map(|n| {
                let n = n.to_ascii_lowercase();
                if n.contains(':') && !n.starts_with('[') {
                    format!("[{n}]")
                } else {
                    n
                }
            })
            .collect();
        OriginPolicy { own_hosts, allowed }
    }

    /// Whether a request that reached the `listener` with these `Origin` and `Host` headers
    /// may go on.
    pub fn allows(&self, listener: Scheme, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else { return true };
        let Ok(origin) = Origin::parse(origin) else {
            return false; // `null` (sandboxed frames, files) and anything odd
        };
        if self.allowed.contains(&origin) {
            return true;
        }
        let Some((host, port)) = host.and_then(|h| authority(h, listener)) else {
            return false;
        };
        if origin.scheme != listener || origin.host != host || origin.port != port {
            return false;
        }
        listener == Scheme::Https || self.own_hosts.contains(&origin.host)
    }
}

/// A filter that answers 403 to WebSocket upgrades and to requests other than GET, HEAD and
/// OPTIONS whose origin the policy refuses, and rejects (so the routes after it run) all
/// other requests.
pub fn guard(policy: Arc<OriginPolicy>, listener: Scheme) -> BoxedFilter<(Response,)> {
    warp::method()
        .and(warp::header::headers_cloned())
        .and_then(move |method: Method, headers: HeaderMap| {
            let policy = policy.clone();
            async move {
                let upgrade = headers.contains_key(warp::http::header::UPGRADE);
                let reads = matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
                if reads && !upgrade {
                    return Err::<Response, Rejection>(warp::reject::not_found());
                }
                // A header that is not visible ASCII is no origin a browser sends: refused.
                let text = |name| headers.get(name).map(|v| v.to_str().unwrap_or("\u{0}"));
                let origin = text(warp::http::header::ORIGIN);
                let host = text(warp::http::header::HOST);
                if policy.allows(listener, origin, host) {
                    return Err(warp::reject::not_found());
                }
                let origin = origin.unwrap_or_default();
                tracing::warn!(
                    "refused a request from the page at {origin:?} (start easel serve with \
                     --allow-origin {origin} to allow it)"
                );
                Ok(crate::reply::status_json(
                    StatusCode::FORBIDDEN,
                    &format!(
                        "the page at {origin} may not use this relay: only its own pages may \
                         (start easel serve with --allow-origin {origin} to allow it)"
                    ),
                ))
            }
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> OriginPolicy {
        let own = ["localhost", "127.0.0.1", "::1", "192.168.1.20", "laptop"].map(String::from);
        let extra = vec![Origin::parse("https://easel.school.example").unwrap()];
        OriginPolicy::new(&own, extra)
    }

    #[test]
    fn origins_parse_with_default_ports_and_refuse_paths() {
        let o = Origin::parse("HTTPS://Classroom.Test:8443/").unwrap();
        assert_eq!(o.to_string(), "https://classroom.test:8443");
        assert_eq!(
            Origin::parse("http://[::1]").unwrap().to_string(),
            "http://[::1]:80"
        );
        for bad in [
            "classroom.test:8443",
            "ws://a:1",
            "http://",
            "http://a:b",
            "http://a/path",
            "null",
            "http://a b",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_relay_accepts_its_own_pages_and_refuses_others() {
        use Scheme::{Http, Https};
        let p = policy();
        let cases: &[(Scheme, Option<&str>, Option<&str>, bool)] = &[
            // No Origin: not a browser page (bots, curl).
            (Http, None, Some("127.0.0.1:8080"), true),
            (Http, None, None, true),
            // The relay's own pages over plain HTTP.
            (
                Http,
                Some("http://127.0.0.1:8080"),
                Some("127.0.0.1:8080"),
                true,
            ),
            (
                Http,
                Some("http://localhost:8080"),
                Some("LOCALHOST:8080"),
                true,
            ),
            (Http, Some("http://[::1]:8080"), Some("[::1]:8080"), true),
            (
                Http,
                Some("http://192.168.1.20:8080"),
                Some("192.168.1.20:8080"),
                true,
            ),
            (Http, Some("http://laptop"), Some("laptop:80"), true),
            // Another site, another port of this machine, another scheme, a mismatch.
            (
                Http,
                Some("http://evil.example"),
                Some("127.0.0.1:8080"),
                false,
            ),
            (
                Http,
                Some("http://127.0.0.1:3000"),
                Some("127.0.0.1:8080"),
                false,
            ),
            (
                Http,
                Some("https://127.0.0.1:8080"),
                Some("127.0.0.1:8080"),
                false,
            ),
            (Http, Some("null"), Some("127.0.0.1:8080"), false),
            (Http, Some("http://127.0.0.1:8080"), None, false),
            // DNS rebinding over plain HTTP: a foreign name with the relay's Host is refused.
            (
                Http,
                Some("http://evil.example:8080"),
                Some("evil.example:8080"),
                false,
            ),
            // Over HTTPS the certificate binds the name: Host-matching names are the relay.
            (
                Https,
                Some("https://classroom.test:8443"),
                Some("classroom.test:8443"),
                true,
            ),
            (
                Https,
                Some("https://192.168.1.20:8443"),
                Some("192.168.1.20:8443"),
                true,
            ),
            (
                Https,
                Some("https://evil.example"),
                Some("192.168.1.20:8443"),
                false,
            ),
            (
                Https,
                Some("http://192.168.1.20:8443"),
                Some("192.168.1.20:8443"),
                false,
            ),
            // --allow-origin, exactly.
            (
                Http,
                Some("https://easel.school.example"),
                Some("127.0.0.1:8080"),
                true,
            ),
            (
                Http,
                Some("https://easel.school.example:444"),
                Some("x"),
                false,
            ),
        ];
        for &(listener, origin, host, want) in cases {
            assert_eq!(
                p.allows(listener, origin, host),
                want,
                "{listener:?} {origin:?} {host:?}"
            );
        }
    }
}
