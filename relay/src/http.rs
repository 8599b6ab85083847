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
//! - `GET /ws/dashboard?room=CODE&admin=TOKEN`: the teacher's live dashboard
//!   ([`crate::dashboard`]).
//! - `POST /api/rooms/CODE/control` (admin, JSON [`TeacherControl`]): settings, delays,
//!   pause, resume, remove, reset, partition; 200 with the new state or 400 with what to fix.
//! - `POST /api/rooms/CODE/runs` (admin, `{"name": ..., "reset": bool}`) starts a run;
//!   `GET /api/rooms/CODE/runs` lists them; `GET /api/rooms/CODE/runs/ID.json` and
//!   `ID.csv` export one.
//! - `GET /api/rooms/CODE/center.safetensors` (admin): the center with PyTorch's names.
//! - `GET /api/saved/rooms` (admin): every room in the database, with its runs;
//!   `GET /api/saved/rooms/CODE/runs/ID.csv` and `ID.json` export a saved run (past rooms
//!   included), as the live exports do.
//! - anything else: the static-file filter given to [`run`].
//!
//! The admin token comes as `?admin=TOKEN` or as `Authorization: Bearer TOKEN`.
//!
//! WebSocket upgrades and POSTs from a browser page that is not the relay's own (nor an
//! `--allow-origin`) are answered 403 before any route runs: see [`crate::origin`].

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use easel_protocol::{Limits, ModelOps};
use tokio::task::JoinHandle;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::eval::{self, Evaluator};
use crate::hub::Hub;
use crate::origin::{self, Origin, OriginPolicy, Scheme};
use crate::reply::{status_json, unauthorized};
use crate::room::RoomSettings;
use crate::room::new_token;
use crate::teacher::TeacherControl;
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
    /// Origins, besides the relay's own, whose pages may open its sockets and POST
    /// (`--allow-origin`).
    pub allowed_origins: Vec<Origin>,
    /// The database rooms are checkpointed to; `None` keeps them in memory only.
    pub store: Option<std::sync::Arc<crate::store::Store>>,
    /// How often each room is checkpointed to `store` (and once more at shutdown).
    pub checkpoint_every: Duration,
    /// The model's operations: the server has no model code of its own.
    pub model: Arc<dyn ModelOps>,
}

impl Config {
    /// HTTPS on 0.0.0.0:8443 with the self-signed certificate of [`tls::data_dir`], HTTP on
    /// 127.0.0.1:8080, a fresh admin token, evaluation every 5 s (once an evaluator is set),
    /// rooms of `model`.
    pub fn new(model: Arc<dyn ModelOps>) -> Config {
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
            allowed_origins: Vec::new(),
            store: None,
            checkpoint_every: crate::store::CHECKPOINT_EVERY,
            model,
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
        https_bases(self.https)
    }

    /// The teacher's dashboard for `room`, on the plain HTTP listener (else HTTPS), with the
    /// admin token: `/teacher.html?room=CODE&admin=TOKEN`.
    pub fn teacher_url(&self, room: &str) -> Option<String> {
        let (scheme, addr) = match (self.http, self.https) {
            (Some(a), _) => ("http", a),
            (None, Some(a)) => ("https", a),
            (None, None) => return None,
        };
        Some(format!(
            "{scheme}://{}/teacher.html?room={room}&admin={}",
            loopback_if_unspecified(addr),
            self.admin_token
        ))
    }

    /// Resolves when the listeners and the evaluator have stopped (after shutdown).
    pub async fn wait(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// `https://ADDRESS:PORT/` for each LAN address when the listener is on all interfaces,
/// else its own address.
fn https_bases(https: Option<SocketAddr>) -> Vec<String> {
    let Some(addr) = https else {
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

/// 127.0.0.1 in place of an unspecified address (0.0.0.0 or ::).
fn loopback_if_unspecified(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

/// Starts the relay: binds the listeners, serves `/ws`, the API and `static_files`, and
/// evaluates centers, until `shutdown` resolves. Returns once everything is bound.
pub async fn run<R: Reply + 'static>(
    config: Config,
    static_files: BoxedFilter<(R,)>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<RunningRelay> {
    let token = config.admin_token.clone().unwrap_or_else(new_token);
    let hub = Hub::new(
        token.clone(),
        config.limits,
        config.room_defaults.clone(),
        config.model.clone(),
    );
    if let Some(store) = &config.store {
        hub.set_store(store.clone());
    }
    let (trigger, signal) = Shutdown::new();
    tokio::spawn(async move {
        shutdown.await;
        trigger.fire();
    });
    let policy = Arc::new(OriginPolicy::new(
        &tls::local_names(),
        config.allowed_origins.clone(),
    ));
    let app = |listener| {
        let guard = origin::guard(policy.clone(), listener);
        let routes = routes(hub.clone(), config.ws, signal.clone(), static_files.clone());
        guard.or(routes).unify().boxed()
    };
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
        let (bound, task) = tls::serve_https(
            app(Scheme::Https),
            addr,
            tls::server_config(&ck)?,
            signal.clone(),
        )
        .await
        .with_context(|| format!("listening on https://{addr}"))?;
        relay.https = Some(bound);
        tasks.push(task);
    }
    if let Some(addr) = config.http {
        let (bound, task) = tls::serve_http(app(Scheme::Http), addr, signal.clone())
            .await
            .with_context(|| format!("listening on http://{addr}"))?;
        relay.http = Some(bound);
        tasks.push(task);
    }
    let mut bases = https_bases(relay.https);
    if let Some(a) = relay.http {
        bases.push(format!("http://{}/", loopback_if_unspecified(a)));
    }
    hub.set_join_bases(bases);
    if let Some(store) = config.store {
        let every = config.checkpoint_every;
        tasks.push(crate::checkpoint::spawn(
            hub.clone(),
            store,
            every,
            signal.clone(),
        ));
    }
    tasks.push(crate::conductor::spawn(hub.clone(), signal.clone()));
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
    ws_route(hub.clone(), ws_cfg, shutdown.clone())
        .or(crate::dashboard::route(hub.clone(), ws_cfg, shutdown))
        .unify()
        .or(teacher_api(hub.clone()))
        .unify()
        .or(saved_api(hub.clone()))
        .unify()
        .or(api(hub))
        .unify()
        .or(static_files.map(Reply::into_response))
        .unify()
        .boxed()
}

/// `GET /ws`, with the WebSocket caps at the protocol's `max_message` and the buffers of
/// [`crate::wsock`].
pub fn ws_route(hub: Hub, cfg: WsConfig, shutdown: Shutdown) -> BoxedFilter<(Response,)> {
    warp::path("ws")
        .and(warp::path::end())
        .and(admin_token())
        .and(crate::wsock::upgrade())
        .map(
            move |token: Option<String>, upgrade: crate::wsock::Upgrade| {
                let hub = hub.clone();
                let shutdown = shutdown.clone();
                let is_admin = hub.is_admin(token.as_deref());
                let cap = hub.limits().max_message;
                upgrade.on_upgrade(cap, move |socket| {
                    ws::serve_socket(socket, hub, is_admin, cfg, shutdown)
                })
            },
        )
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
    // The settings vocabulary: public, it holds nothing of a room.
    let schema = warp::path!("api" / "settings")
        .and(warp::get())
        .map(|| warp::reply::json(&crate::teacher::schema_json()).into_response());
    // The lessons' catalogue: public too.
    let lessons = warp::path!("api" / "lessons")
        .and(warp::get())
        .map(|| warp::reply::json(&crate::lesson::PRESETS).into_response());
    create
        .or(list)
        .unify()
        .or(ledger)
        .unify()
        .or(schema)
        .unify()
        .or(lessons)
        .unify()
        .boxed()
}

/// The dashboard's API: control, runs and the center download. Every route answers 401
/// without the admin token and 404 for an unknown room.
pub fn teacher_api(hub: Hub) -> BoxedFilter<(Response,)> {
    let control = json_post(
        hub.clone(),
        "control",
        "not a control command",
        |room, c: TeacherControl| match room.teacher_control(&c) {
            Ok(state) => warp::reply::json(&state).into_response(),
            Err(why) => bad_request(&why),
        },
    );
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct NewRun {
        #[serde(default)]
        name: String,
        #[serde(default)]
        reset: bool,
    }
    let start = json_post(
        hub.clone(),
        "runs",
        "expected {\"name\": \"...\", \"reset\": true|false}",
        |room, r: NewRun| {
            let id = room.start_run(&r.name, r.reset);
            let mut v = room.runs_json();
            v["started"] = id.into();
            warp::reply::with_status(warp::reply::json(&v), StatusCode::CREATED).into_response()
        },
    );
    let lesson = json_post(
        hub.clone(),
        "lesson",
        "expected {\"action\": \"ask\", \"preset\": KEY, \"seconds\": S, \"target\": A}, {\"action\": \"run\"} or {\"action\": \"end\"}",
        |room, a: crate::teacher::LessonAction| {
            let done = match a {
                crate::teacher::LessonAction::Ask {
                    preset,
                    seconds,
                    target,
                } => crate::lesson::Options::new(seconds, target)
                    .and_then(|o| room.ask_lesson(&preset, o)),
                crate::teacher::LessonAction::Run => room.begin_lesson(),
                crate::teacher::LessonAction::End => room.end_lesson(),
            };
            match done {
                Ok(v) => warp::reply::json(&v).into_response(),
                Err(why) => bad_request(&why),
            }
        },
    );
    let h = hub.clone();
    let list = warp::path!("api" / "rooms" / String / "runs")
        .and(warp::get())
        .and(admin_token())
        .map(move |code: String, token: Option<String>| {
            with_room(&h, &code, token, |room| {
                warp::reply::json(&room.runs_json()).into_response()
            })
        });
    let h = hub.clone();
    let export = warp::path!("api" / "rooms" / String / "runs" / String)
        .and(warp::get())
        .and(admin_token())
        .map(move |code: String, file: String, token: Option<String>| {
            with_room(&h, &code, token, |room| {
                let missing = || status_json(StatusCode::NOT_FOUND, "no such run (see /runs)");
                let (id, ext) = file.rsplit_once('.').unwrap_or((&file, ""));
                let Ok(id) = id.parse::<u64>() else {
                    return missing();
                };
                let name = format!("attachment; filename=\"easel-{code}-run-{id}.{ext}\"");
                match ext {
                    "json" => room.run_json(id).map_or_else(missing, |v| {
                        warp::reply::with_header(warp::reply::json(&v), "content-disposition", name)
                            .into_response()
                    }),
                    "csv" => room.run_csv(id).map_or_else(missing, |csv| {
                        let r = warp::reply::with_header(
                            csv,
                            "content-type",
                            "text/csv; charset=utf-8",
                        );
                        warp::reply::with_header(r, "content-disposition", name).into_response()
                    }),
                    _ => missing(),
                }
            })
        });
    let center = warp::path!("api" / "rooms" / String / "center.safetensors")
        .and(warp::get())
        .and(admin_token())
        .map(move |code: String, token: Option<String>| {
            with_room(&hub, &code, token, |room| {
                let (version, params) = room.center();
                match room.model().to_safetensors(&params) {
                    Ok(bytes) => {
                        let name =
                            format!("attachment; filename=\"easel-{code}-v{version}.safetensors\"");
                        let r = warp::reply::with_header(
                            bytes,
                            "content-type",
                            "application/octet-stream",
                        );
                        warp::reply::with_header(r, "content-disposition", name).into_response()
                    }
                    Err(e) => status_json(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                }
            })
        });
    control
        .or(start)
        .unify()
        .or(lesson)
        .unify()
        .or(list)
        .unify()
        .or(export)
        .unify()
        .or(center)
        .unify()
        .boxed()
}

/// The database's rooms and runs (see the module's route list). Reads happen on a
/// blocking thread; without a database, 404.
pub fn saved_api(hub: Hub) -> BoxedFilter<(Response,)> {
    let h = hub.clone();
    let list = warp::path!("api" / "saved" / "rooms")
        .and(warp::get())
        .and(admin_token())
        .and_then(move |token: Option<String>| {
            let h = h.clone();
            async move {
                Ok::<_, Rejection>(
                    saved(&h, token, |store| {
                        let rooms = store.rooms()?;
                        Ok(warp::reply::json(&serde_json::json!({ "rooms": rooms }))
                            .into_response())
                    })
                    .await,
                )
            }
        });
    let export = warp::path!("api" / "saved" / "rooms" / String / "runs" / String)
        .and(warp::get())
        .and(admin_token())
        .and_then(move |code: String, file: String, token: Option<String>| {
            let h = hub.clone();
            async move {
                Ok::<_, Rejection>(
                    saved(&h, token, move |store| {
                        let missing = || {
                            status_json(
                                StatusCode::NOT_FOUND,
                                "no such saved run (see /api/saved/rooms)",
                            )
                        };
                        let (id, ext) = file.rsplit_once('.').unwrap_or((&file, ""));
                        let Ok(id) = id.parse::<u64>() else {
                            return Ok(missing());
                        };
                        let code = crate::room::normalize_code(&code);
                        let Some(run) = store.run(&code, id)? else {
                            return Ok(missing());
                        };
                        let name = format!("attachment; filename=\"easel-{code}-run-{id}.{ext}\"");
                        Ok(match ext {
                            "json" => warp::reply::with_header(
                                warp::reply::json(&run.to_json()),
                                "content-disposition",
                                name,
                            )
                            .into_response(),
                            "csv" => {
                                let r = warp::reply::with_header(
                                    run.to_csv(),
                                    "content-type",
                                    "text/csv; charset=utf-8",
                                );
                                warp::reply::with_header(r, "content-disposition", name)
                                    .into_response()
                            }
                            _ => missing(),
                        })
                    })
                    .await,
                )
            }
        });
    list.or(export).unify().boxed()
}

/// Runs `f` on the database on a blocking thread when `token` is the admin token; else
/// 401, or 404 without a database, or 500 with the database's error.
async fn saved<F>(hub: &Hub, token: Option<String>, f: F) -> Response
where
    F: FnOnce(&crate::store::Store) -> Result<Response, crate::store::StoreError> + Send + 'static,
{
    if !hub.is_admin(token.as_deref()) {
        return unauthorized();
    }
    let Some(store) = hub.store().cloned() else {
        return status_json(
            StatusCode::NOT_FOUND,
            "this relay keeps no database (easel serve keeps one unless --db off)",
        );
    };
    match tokio::task::spawn_blocking(move || f(&store)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => status_json(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(_) => status_json(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the database read panicked",
        ),
    }
}

/// `POST /api/rooms/CODE/TAIL` (admin) with a JSON body of type `T` (at most 64 KiB),
/// handled by `f`; a body that is not a `T` is 400 with `what` and serde's reason.
fn json_post<T, F>(
    hub: Hub,
    tail: &'static str,
    what: &'static str,
    f: F,
) -> BoxedFilter<(Response,)>
where
    T: serde::de::DeserializeOwned,
    F: Fn(&crate::hub::RoomSlot, T) -> Response + Clone + Send + Sync + 'static,
{
    warp::path("api")
        .and(warp::path("rooms"))
        .and(warp::path::param::<String>())
        .and(warp::path(tail))
        .and(warp::path::end())
        .and(warp::post())
        .and(admin_token())
        .and(warp::body::content_length_limit(64 * 1024))
        .and(warp::body::bytes())
        .map(
            move |code: String, token: Option<String>, body: bytes::Bytes| {
                with_room(&hub, &code, token, |room| {
                    match serde_json::from_slice::<T>(&body) {
                        Ok(t) => f(room, t),
                        Err(e) => bad_request(&format!("{what}: {e}")),
                    }
                })
            },
        )
        .boxed()
}

/// Runs `f` on the room `code` when `token` is the admin token; else 401, or 404.
fn with_room(
    hub: &Hub,
    code: &str,
    token: Option<String>,
    f: impl FnOnce(&crate::hub::RoomSlot) -> Response,
) -> Response {
    if !hub.is_admin(token.as_deref()) {
        return unauthorized();
    }
    match hub.room(code) {
        Some(room) => f(&room),
        None => status_json(StatusCode::NOT_FOUND, "no such room"),
    }
}

fn forbidden() -> Response {
    status_json(StatusCode::FORBIDDEN, "the admin token is missing or wrong")
}

fn bad_request(why: &str) -> Response {
    status_json(StatusCode::BAD_REQUEST, why)
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
