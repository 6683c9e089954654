//! The admin HTTP API (actix-web) on `admin.listen`.
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | the status page: peers, forwards, services, refreshed every second from `/status` |
//! | `GET /status` | one JSON snapshot: every peer (as `/peers`, plus ejections and open-latency buckets), every forward and service by result |
//! | `GET /config` | the effective configuration as JSON, the admin token replaced by `"<redacted>"` |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /healthz` | 200 `ok` while the pool's supervisor runs, else 503 |
//! | `GET /readyz` | 200 when every peer with an `addr` has a usable connection, else 503 naming the others |
//! | `GET /peers` | every peer's status as JSON |
//! | `POST /peers` | `{"name","id","addr"}`: 201, 400, 409 |
//! | `DELETE /peers/{name}` | drains and removes: 202, 404 |
//! | `POST /reload` | reads the config file again: 200 with what changed, 400 naming the problems (nothing changed), 409 without a file |
//!
//! With `admin.token` (or `admin.token_file`) set, everything but `GET`
//! requests to `admin.public` paths (default `/healthz`) answers 401 without
//! `Authorization: Bearer <token>`.

use std::net::TcpListener;

use actix_web::body::MessageBody;
use actix_web::dev::{ServerHandle, ServiceRequest, ServiceResponse};
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, App, HttpResponse, HttpServer};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

use std::sync::Arc;

use super::reload::{Live, ReloadError};
use crate::config::PeerConfig;
use crate::{Pool, PoolError};

/// Request bodies larger than this are refused with 413.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

struct AdminState {
    pool: Pool,
    /// What a reload changes; `None` for a bare pool (no reload).
    live: Option<Arc<Live>>,
    metrics: PrometheusHandle,
    process: metrics_process::Collector,
    started: std::time::Instant,
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

fn error(status: actix_web::http::StatusCode, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(ErrorBody {
        error: message.into(),
    })
}

/// Starts the admin server on `listener` (one worker thread) and returns
/// the handle that stops it.
/// `token` is needed for everything but `GET /healthz`.
pub fn start(
    listener: TcpListener,
    pool: Pool,
    metrics: PrometheusHandle,
    token: String,
) -> std::io::Result<ServerHandle> {
    let access = Access {
        token,
        public: vec!["/healthz".into()],
    };
    serve(listener, pool, None, metrics, access)
}

/// The admin server of a sidecar node, with `POST /reload`.
pub(crate) fn start_node(
    listener: TcpListener,
    live: Arc<Live>,
    metrics: PrometheusHandle,
    access: Access,
) -> std::io::Result<ServerHandle> {
    serve(listener, live.pool.clone(), Some(live), metrics, access)
}

fn serve(
    listener: TcpListener,
    pool: Pool,
    live: Option<Arc<Live>>,
    metrics: PrometheusHandle,
    access: Access,
) -> std::io::Result<ServerHandle> {
    let process = metrics_process::Collector::default();
    process.describe();
    let state = web::Data::new(AdminState {
        pool,
        live,
        metrics,
        process,
        started: std::time::Instant::now(),
    });
    let token = web::Data::new(access);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(token.clone())
            .app_data(
                web::JsonConfig::default()
                    .limit(MAX_BODY_BYTES)
                    .error_handler(|err, _| {
                        let status = match &err {
                            actix_web::error::JsonPayloadError::OverflowKnownLength { .. }
                            | actix_web::error::JsonPayloadError::Overflow { .. } => {
                                actix_web::http::StatusCode::PAYLOAD_TOO_LARGE
                            }
                            _ => actix_web::http::StatusCode::BAD_REQUEST,
                        };
                        let response = error(status, format!("bad request body: {err}"));
                        actix_web::error::InternalError::from_response(err, response).into()
                    }),
            )
            .app_data(web::PayloadConfig::default().limit(MAX_BODY_BYTES))
            .wrap(from_fn(require_token))
            .route("/", web::get().to(page))
            .route("/status", web::get().to(status))
            .route("/config", web::get().to(config))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(render_metrics))
            .route("/peers", web::get().to(list_peers))
            .route("/peers", web::post().to(add_peer))
            .route("/peers/{name}", web::delete().to(remove_peer))
            .route("/reload", web::post().to(reload))
            .route("/gate", web::get().to(list_cooling))
            .route("/gate", web::delete().to(forgive_cooling))
            .default_service(web::to(|| async {
                error(actix_web::http::StatusCode::NOT_FOUND, "no such route")
            }))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?
    .run();
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok(handle)
}

/// Who may call what: with a token set, only `GET` requests to `public`
/// paths go without it.
pub(crate) struct Access {
    pub(crate) token: String,
    pub(crate) public: Vec<String>,
}

/// Compares the SHA-256 digests of both, in constant time: the time taken
/// says nothing about the token's bytes, nor its length.
fn same(a: &[u8], b: &[u8]) -> bool {
    let digest = |x: &[u8]| ring::digest::digest(&ring::digest::SHA256, x);
    let (a, b) = (digest(a), digest(b));
    a.as_ref()
        .iter()
        .zip(b.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

async fn require_token(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let (token, public) = req
        .app_data::<web::Data<Access>>()
        .map(|a| {
            let public = req.method() == actix_web::http::Method::GET
                && a.public.iter().any(|p| p == req.path());
            (a.token.clone(), public)
        })
        .unwrap_or_default();
    let open = token.is_empty() || public;
    let presented = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if open || same(presented.as_bytes(), token.as_bytes()) {
        return Ok(next.call(req).await?.map_into_left_body());
    }
    let response = HttpResponse::Unauthorized()
        .insert_header((actix_web::http::header::WWW_AUTHENTICATE, "Bearer"))
        .json(ErrorBody {
            error: "missing or wrong bearer token (admin.token is set)".into(),
        });
    Ok(req.into_response(response).map_into_right_body())
}

/// Alive means the supervisor runs: without it no peer is dialled or
/// admitted again, and only a restart helps.
async fn healthz(state: web::Data<AdminState>) -> HttpResponse {
    if state.pool.is_running() {
        HttpResponse::Ok().content_type("text/plain").body("ok")
    } else {
        HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("the pool's supervisor has stopped")
    }
}

#[derive(Serialize)]
struct Readiness {
    ready: bool,
    not_ready: Vec<String>,
}

async fn readyz(state: web::Data<AdminState>) -> HttpResponse {
    let not_ready = state.pool.not_ready();
    let body = Readiness {
        ready: not_ready.is_empty(),
        not_ready,
    };
    if body.ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn render_metrics(state: web::Data<AdminState>) -> HttpResponse {
    state.process.collect();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        // The page runs only its own inline script and talks only to us.
        .insert_header((
            "Content-Security-Policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             img-src data:; connect-src 'self'",
        ))
        .body(super::status::PAGE)
}

async fn status(state: web::Data<AdminState>) -> HttpResponse {
    let peers = state.pool.peers();
    let ready = state.pool.not_ready().is_empty();
    let rendered = state.metrics.render();
    HttpResponse::Ok().json(super::status::snapshot(
        peers,
        ready,
        state.started.elapsed().as_secs_f64(),
        &rendered,
    ))
}

/// What `GET /config` puts where the token was.
pub const REDACTED: &str = "<redacted>";

async fn config(state: web::Data<AdminState>) -> HttpResponse {
    let Some(live) = &state.live else {
        return error(
            actix_web::http::StatusCode::NOT_FOUND,
            "this admin server fronts a bare pool: there is no node config",
        );
    };
    let mut config = live.current();
    // The token is the one secret a config holds (key files are named by
    // path, never read into it).
    if !config.admin.token.is_empty() {
        config.admin.token = REDACTED.into();
    }
    HttpResponse::Ok().json(config)
}

async fn list_peers(state: web::Data<AdminState>) -> HttpResponse {
    HttpResponse::Ok().json(state.pool.peers())
}

/// The sources whose Initials are ignored now.
async fn list_cooling(state: web::Data<AdminState>) -> HttpResponse {
    HttpResponse::Ok().json(state.pool.cooling_sources())
}

/// Lets them all try again: for the operator who fixed what made a peer
/// fail before any reload could tell the node.
async fn forgive_cooling(state: web::Data<AdminState>) -> HttpResponse {
    let forgiven = state.pool.forgive_all_sources();
    tracing::info!(forgiven, "DELETE /gate: every source may try again");
    HttpResponse::Ok().json(serde_json::json!({ "forgiven": forgiven }))
}

async fn add_peer(state: web::Data<AdminState>, body: web::Json<PeerConfig>) -> HttpResponse {
    use actix_web::http::StatusCode;
    let peer = body.into_inner();
    let name = peer.name.clone();
    match state.pool.add_peer(peer).await {
        Ok(()) => match state.pool.peer(&name) {
            Some(status) => HttpResponse::Created().json(status),
            None => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "peer vanished after being added",
            ),
        },
        Err(e @ PoolError::PeerExists(_)) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e @ PoolError::InvalidPeer(_)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn remove_peer(state: web::Data<AdminState>, name: web::Path<String>) -> HttpResponse {
    let name = name.into_inner();
    if state.pool.peer(&name).is_none() {
        return error(
            actix_web::http::StatusCode::NOT_FOUND,
            format!("no peer named {name:?}"),
        );
    }
    let pool = state.pool.clone();
    let draining = name.clone();
    actix_rt::spawn(async move {
        if let Err(e) = pool.remove_peer(&draining).await {
            tracing::warn!(peer = %draining, error = %e, "removing a peer failed");
        }
    });
    HttpResponse::Accepted().json(serde_json::json!({ "removing": name }))
}

async fn reload(state: web::Data<AdminState>) -> HttpResponse {
    use actix_web::http::StatusCode;
    let Some(live) = &state.live else {
        return error(StatusCode::CONFLICT, ReloadError::NoFile.to_string());
    };
    match live.reload_file().await {
        Ok(report) => HttpResponse::Ok().json(report),
        Err(ReloadError::Invalid(problems)) => HttpResponse::BadRequest().json(serde_json::json!({
            "error": "the config file is not valid; nothing changed",
            "problems": problems,
        })),
        Err(e @ ReloadError::NoFile) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}
