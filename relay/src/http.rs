//! The relay's routes and [`run`]: `/ws`, the teacher's small JSON API, and the static
//! files, on an HTTPS and a plain HTTP listener.
//!
//! Routes:
//! - `GET /ws` (WebSocket upgrade): the protocol of PROTOCOL.md. `/ws?admin=TOKEN` marks the
//!   teacher's connection, the only one whose Control messages are obeyed.
//! - `POST /api/rooms` (admin): creates a room with the default settings; answers
//!   `{"code": "ABCDE"}`.
//! - `GET /api/rooms` (admin): the room codes.
//! - `GET /api/rooms/CODE/ledger.csv` and `ledger.json` (admin): the staleness ledger.
//! - anything else: the static-file filter given to [`run`].
//!
//! The admin token comes as `?admin=TOKEN` or as `Authorization: Bearer TOKEN`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use easel_protocol::Limits;
use rand::RngExt;
use tokio::task::JoinHandle;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::eval::{self, Evaluator};
use crate::hub::Hub;
use crate::room::RoomSettings;
use crate::ws::{self, WsConfig};
use crate::{Shutdown, tls};

/// Where the HTTPS certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsSource {
    /// A self-signed certificate kept in this directory, made on first run
    /// ([`tls::self_signed`]); usually [`tls::data_dir`].
    SelfSigned { dir: PathBuf },
    /// A real certificate chain and key, PEM (`--cert`, `--key`).
    Pem { cert: PathBuf, key: PathBuf },
}

/// Everything [`run`] needs.
#[derive(Clone)]
pub struct Config {
    /// The HTTPS listener, for devices on the LAN; `None` turns it off.
    pub https: Option<SocketAddr>,
    /// The plain HTTP listener, for the teacher's own browser; `None` turns it off.
    pub http: Option<SocketAddr>,
    pub tls: TlsSource,
    /// The admin token; `None` makes a fresh random one.
    pub admin_token: Option<String>,
    /// Settings of rooms created through the API.
    pub room_defaults: RoomSettings,
    /// Message caps; the WebSocket message and frame caps are `limits.max_message`.
    pub limits: Limits,
    pub ws: WsConfig,
    /// How often each room's center is evaluated (when it changed).
    pub eval_every: Duration,
    /// Scores a center on the test digits; `None` turns evaluation off.
    pub evaluator: Option<Evaluator>,
}

impl Default for Config {
    /// HTTPS on 0.0.0.0:8443 with the self-signed certificate of [`tls::data_dir`], HTTP on
    /// 127.0.0.1:8080, a fresh admin token, evaluation every 5 s (once an evaluator is set).
    fn default() -> Config {
        Config {
            https: Some(SocketAddr::from(([0, 0, 0, 0], 8443))),
            http: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
            tls: TlsSource::SelfSigned {
                dir: tls::data_dir(),
            },
            admin_token: None,
            room_defaults: RoomSettings::default(),
            limits: Limits::default(),
            ws: WsConfig::default(),
            eval_every: Duration::from_secs(5),
            evaluator: None,
        }
    }
}

/// A relay that is serving.
#[derive(Debug)]
pub struct RunningRelay {
    /// The bound HTTPS address (the real port when 0 was asked for).
    pub https: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub admin_token: String,
    /// SHA-256 of the HTTPS certificate, to print for people to compare.
    pub fingerprint: Option<String>,
    /// The rooms, for the CLI (to create a first room) and for tests.
    pub hub: Hub,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningRelay {
    /// Where devices open the pages: `https://ADDRESS:PORT/` for each LAN address when the
    /// HTTPS listener is on all interfaces, else its own address.
    pub fn join_urls(&self) -> Vec<String> {
        let Some(addr) = self.https else {
            return Vec::new();
        };
        let ips = if addr.ip().is_unspecified() {
            tls::lan_ips()
        } else {
            vec![addr.ip()]
        };
        ips.into_iter()
            .map(|ip| format!("https://{}/", SocketAddr::new(ip, addr.port())))
            .collect()
    }

    /// The teacher's URL, on the plain HTTP listener (else HTTPS), with the admin token.
    pub fn teacher_url(&self) -> Option<String> {
        let (scheme, addr) = match (self.http, self.https) {
            (Some(a), _) => ("http", a),
            (None, Some(a)) => ("https", a),
            (None, None) => return None,
        };
        let host = if addr.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], addr.port()))
        } else {
            addr
        };
        Some(format!("{scheme}://{host}/?admin={}", self.admin_token))
    }

    /// Resolves when the listeners and the evaluator have stopped (after shutdown).
    pub async fn wait(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// A fresh admin token: 32 lowercase hex digits.
pub fn new_token() -> String {
    let mut rng = rand::rng();
    (0..32)
        .map(|_| char::from_digit(rng.random_range(0..16u32), 16).unwrap_or('0'))
        .collect()
}

/// Starts the relay: binds the listeners, serves `/ws`, the API and `static_files`, and
/// evaluates centers, until `shutdown` resolves. Returns once everything is bound.
pub async fn run<R: Reply + 'static>(
    config: Config,
    static_files: BoxedFilter<(R,)>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<RunningRelay> {
    let token = config.admin_token.clone().unwrap_or_else(new_token);
    let hub = Hub::new(token.clone(), config.limits, config.room_defaults.clone());
    let (trigger, signal) = Shutdown::new();
    tokio::spawn(async move {
        shutdown.await;
        trigger.fire();
    });
    let app = routes(hub.clone(), config.ws, signal.clone(), static_files);
    let mut tasks = Vec::new();
    let mut relay = RunningRelay {
        https: None,
        http: None,
        admin_token: token,
        fingerprint: None,
        hub: hub.clone(),
        tasks: Vec::new(),
    };
    if let Some(addr) = config.https {
        let ck = match &config.tls {
            TlsSource::SelfSigned { dir } => tls::self_signed(dir)?,
            TlsSource::Pem { cert, key } => tls::load_pem(cert, key)?,
        };
        relay.fingerprint = Some(ck.fingerprint());
        let (bound, task) =
            tls::serve_https(app.clone(), addr, tls::server_config(&ck)?, signal.clone())
                .await
                .with_context(|| format!("listening on https://{addr}"))?;
        relay.https = Some(bound);
        tasks.push(task);
    }
    if let Some(addr) = config.http {
        let (bound, task) = tls::serve_http(app.clone(), addr, signal.clone())
            .await
            .with_context(|| format!("listening on http://{addr}"))?;
        relay.http = Some(bound);
        tasks.push(task);
    }
    if let Some(evaluator) = config.evaluator {
        tasks.push(eval::spawn(hub, evaluator, config.eval_every, signal));
    }
    relay.tasks = tasks;
    Ok(relay)
}

/// Every route: `/ws`, `/api/...`, then `static_files`.
pub fn routes<R: Reply + 'static>(
    hub: Hub,
    ws_cfg: WsConfig,
    shutdown: Shutdown,
    static_files: BoxedFilter<(R,)>,
) -> BoxedFilter<(Response,)> {
    ws_route(hub.clone(), ws_cfg, shutdown)
        .or(api(hub))
        .unify()
        .or(static_files.map(Reply::into_response))
        .unify()
        .boxed()
}

/// `GET /ws`, with the WebSocket caps at the protocol's `max_message`.
pub fn ws_route(hub: Hub, cfg: WsConfig, shutdown: Shutdown) -> BoxedFilter<(Response,)> {
    warp::path("ws")
        .and(warp::path::end())
        .and(admin_token())
        .and(warp::ws())
        .map(move |token: Option<String>, upgrade: warp::ws::Ws| {
            let hub = hub.clone();
            let shutdown = shutdown.clone();
            let is_admin = hub.is_admin(token.as_deref());
            let cap = hub.limits().max_message;
            upgrade
                .max_message_size(cap)
                .max_frame_size(cap)
                .on_upgrade(move |socket| ws::serve_socket(socket, hub, is_admin, cfg, shutdown))
                .into_response()
        })
        .boxed()
}

/// The teacher's JSON API.
pub fn api(hub: Hub) -> BoxedFilter<(Response,)> {
    let h = hub.clone();
    let create = warp::path!("api" / "rooms")
        .and(warp::post())
        .and(admin_token())
        .map(move |token: Option<String>| {
            if !h.is_admin(token.as_deref()) {
                return forbidden();
            }
            let code = h.create_room();
            let body = warp::reply::json(&serde_json::json!({ "code": code }));
            warp::reply::with_status(body, StatusCode::CREATED).into_response()
        });
    let h = hub.clone();
    let list = warp::path!("api" / "rooms")
        .and(warp::get())
        .and(admin_token())
        .map(move |token: Option<String>| {
            if !h.is_admin(token.as_deref()) {
                return forbidden();
            }
            let codes: Vec<String> = h.rooms().into_iter().map(|(c, _)| c).collect();
            warp::reply::json(&serde_json::json!({ "rooms": codes })).into_response()
        });
    let ledger = warp::path!("api" / "rooms" / String / String)
        .and(warp::get())
        .and(admin_token())
        .map(move |code: String, file: String, token: Option<String>| {
            if !hub.is_admin(token.as_deref()) {
                return forbidden();
            }
            let Some(room) = hub.room(&code) else {
                return status_json(StatusCode::NOT_FOUND, "no such room");
            };
            match file.as_str() {
                "ledger.csv" => warp::reply::with_header(
                    room.ledger_csv(),
                    "content-type",
                    "text/csv; charset=utf-8",
                )
                .into_response(),
                "ledger.json" => warp::reply::json(&room.ledger_json()).into_response(),
                _ => status_json(StatusCode::NOT_FOUND, "no such file"),
            }
        });
    create.or(list).unify().or(ledger).unify().boxed()
}

fn forbidden() -> Response {
    status_json(StatusCode::FORBIDDEN, "the admin token is missing or wrong")
}

fn status_json(status: StatusCode, error: &str) -> Response {
    warp::reply::with_status(
        warp::reply::json(&serde_json::json!({ "error": error })),
        status,
    )
    .into_response()
}

/// The admin token of a request: `?admin=TOKEN`, else `Authorization: Bearer TOKEN`.
fn admin_token() -> impl Filter<Extract = (Option<String>,), Error = Rejection> + Clone {
    warp::query::raw()
        .or(warp::any().map(String::new))
        .unify()
        .and(warp::header::optional::<String>("authorization"))
        .map(|query: String, auth: Option<String>| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix("admin=").map(str::to_string))
                .or_else(|| auth.and_then(|a| a.strip_prefix("Bearer ").map(str::to_string)))
        })
}
