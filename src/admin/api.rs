//! The admin HTTP API (axum): JSON in and out over [`Service`], errors as RFC 9457 problem
//! JSON, every `/api/` route behind a bearer token, and an OpenAPI 3 document at
//! `/openapi.json` (hand-written in [`openapi`]; `tests/admin_api.rs` checks that it parses
//! and that every route it lists answers).
//!
//! Handlers are thin: parse, call the service on the blocking pool (argon2 and fsync must not
//! hold a runtime thread), render. The one place a new PIN is turned into text for a response
//! is [`pin_json`].
//!
//! # Adding routes (the self-service page)
//! Build a `Router<ApiState>` and pass it to [`router_with`]; handlers reach the service with
//! `State(service): State<Service>` (or `State<ApiState>`). Routes given there are *not*
//! behind the admin token: they bring their own authentication, and act with
//! [`crate::admin::Actor::user`].

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path as FsPath;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{FromRef, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::service::{
    Actor, AdminError, ConferenceIdReset, EmailOptions, EmailOutcome, EnableUser, Service,
    SettingsPatch, UserView,
};
use crate::pin::Pin;

/// What every handler can reach.
#[derive(Clone, Debug)]
pub struct ApiState {
    pub service: Service,
    pub token: Arc<AdminToken>,
    /// What the server is doing right now, for `GET /api/stats`.
    pub live: Arc<Live>,
}

/// Gauges of the running server for `GET /api/stats` (issue 7: so a soak or an operator can
/// see that calls, media sessions and RTP ports return to zero). The signalling task stores
/// its counts after every turn of its loop (relaxed atomics: a reading may be one turn old);
/// media figures are read from the engine when asked.
#[derive(Default)]
pub struct Live {
    /// Calls the application side holds (IVR, lobby or meeting).
    pub calls: AtomicUsize,
    /// SIP legs the endpoint holds, including ones being torn down (a BYE awaiting its answer).
    pub sip_legs: AtomicUsize,
    /// SIP transactions still open (a finished call's linger for retransmissions, Timer J/K).
    pub sip_transactions: AtomicUsize,
    /// Panics contained to one call or one media session since the start.
    pub faults_contained: AtomicU64,
    /// Set once the media engine runs.
    pub engine: std::sync::OnceLock<crate::media::engine::Engine>,
}

impl Live {
    /// Called by the signalling task after each turn of its loop.
    pub fn publish(&self, calls: &crate::calls::Calls, endpoint: &crate::sip::endpoint::Endpoint) {
        self.calls.store(calls.len(), Ordering::Relaxed);
        self.sip_legs.store(endpoint.leg_count(), Ordering::Relaxed);
        self.sip_transactions
            .store(endpoint.transaction_count(), Ordering::Relaxed);
        self.faults_contained
            .store(calls.faults(), Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("calls", &self.calls)
            .field("sip_legs", &self.sip_legs)
            .finish_non_exhaustive()
    }
}

/// The body of `GET /api/stats`.
#[derive(Debug, Serialize)]
struct StatsView {
    calls: usize,
    sip_legs: usize,
    sip_transactions: usize,
    media_sessions: usize,
    rtp_ports_in_use: usize,
    meetings: usize,
    rtp_packets_sent: u64,
    rtp_packets_received: u64,
    rtp_packets_dropped_foreign: u64,
    rtp_packets_malformed: u64,
    faults_contained: u64,
}

impl FromRef<ApiState> for Service {
    fn from_ref(state: &ApiState) -> Service {
        state.service.clone()
    }
}

/// The admin bearer token. `Debug` redacts it.
pub struct AdminToken(String);

impl AdminToken {
    /// File name of the generated token inside the data directory.
    pub const FILE_NAME: &'static str = "admin-token";

    pub fn new(token: impl Into<String>) -> AdminToken {
        AdminToken(token.into())
    }

    /// The configured token, else the one in `<data_dir>/admin-token`, generated there on first
    /// run (32 random bytes as 64 hex digits, mode 0600) so that `pinbridge admin` on the
    /// same machine finds it. Returns the token and whether the file was created. A token
    /// file readable by others is refused.
    pub fn load_or_create(
        configured: Option<&str>,
        data_dir: &FsPath,
    ) -> std::io::Result<(AdminToken, bool)> {
        if let Some(token) = configured {
            return Ok((AdminToken::new(token), false));
        }
        let path = data_dir.join(Self::FILE_NAME);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let mode = std::fs::metadata(&path)?.permissions().mode();
                if mode & 0o077 != 0 {
                    return Err(std::io::Error::other(format!(
                        "{} is readable by other users (mode {:o}); run `chmod 600 {}`",
                        path.display(),
                        mode & 0o777,
                        path.display()
                    )));
                }
                Ok((AdminToken::new(text.trim()), false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let token = crate::pin::random_token();
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)?;
                writeln!(file, "{token}")?;
                file.sync_all()?;
                Ok((AdminToken::new(token), true))
            }
            Err(e) => Err(e),
        }
    }

    /// Whether `offered` is the token. Compares every byte (no early exit at the first
    /// difference); only the length can be learnt from timing.
    pub fn matches(&self, offered: &str) -> bool {
        crate::pin::secrets_equal(self.0.as_bytes(), offered.as_bytes())
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// An RFC 9457 problem: `type`, `title`, `status`, `detail`, as `application/problem+json`.
#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    /// Last segment of the `type` URI (`urn:pinbridge:problem:<kind>`).
    pub kind: &'static str,
    pub detail: String,
}

impl Problem {
    pub fn new(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            kind,
            detail: detail.into(),
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "bad-request", detail)
    }
}

impl From<AdminError> for Problem {
    fn from(e: AdminError) -> Problem {
        let (status, kind) = match &e {
            AdminError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
            AdminError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            AdminError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request"),
            AdminError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            AdminError::InsufficientStorage(_) => {
                (StatusCode::INSUFFICIENT_STORAGE, "insufficient-storage")
            }
        };
        if status.is_server_error() {
            tracing::error!(error = %e, "admin operation failed");
        }
        Problem::new(status, kind, e.to_string())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = json!({
            "type": format!("urn:pinbridge:problem:{}", self.kind),
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        let mut response = (self.status, Json(body)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"pinbridge-admin\""),
            );
        }
        response
    }
}

type ApiResult<T> = Result<T, Problem>;

/// The admin API alone.
pub fn router(state: ApiState) -> Router {
    router_with(state, Router::new())
}

/// The admin API plus `extra` routes (not behind the admin token; see the module docs).
pub fn router_with(state: ApiState, extra: Router<ApiState>) -> Router {
    let admin = Router::new()
        .route("/api/users", get(list_users).post(enable_user))
        .route("/api/users/{id}", get(get_user))
        .route("/api/users/{id}/disable", post(disable_user))
        .route("/api/users/{id}/reset-pin", post(reset_pin))
        .route(
            "/api/users/{id}/reset-conference-id",
            post(reset_conference_id),
        )
        .route("/api/lockouts", get(list_lockouts))
        .route(
            "/api/lockouts/{conference_id}",
            axum::routing::delete(clear_lockout),
        )
        .route("/api/source-blocks", get(list_source_blocks))
        .route(
            "/api/source-blocks/{source}",
            axum::routing::delete(clear_source_block),
        )
        .route("/api/settings", get(get_settings).patch(update_settings))
        .route("/api/audit", get(get_audit))
        .route("/api/emails", get(list_emails))
        .route("/api/stats", get(get_stats))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/openapi.json", get(openapi_json))
        .merge(admin)
        .merge(extra)
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::map_response(problem_for_plain_errors))
        .with_state(state)
}

/// Turns error responses that are not problem JSON yet (axum's own rejections: a path that is
/// not UTF-8, a body over the size limit) into problems, so every error has one shape. The
/// self-service page's HTML error pages are meant for people and stay as they are.
async fn problem_for_plain_errors(response: Response) -> Response {
    let status = response.status();
    let content_type = response.headers().get(header::CONTENT_TYPE);
    let is_problem = content_type.is_some_and(|v| v == "application/problem+json");
    let is_page = content_type.is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
    if is_problem || is_page || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).trim().to_string();
    let detail = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let kind = match status {
        StatusCode::BAD_REQUEST => "bad-request",
        StatusCode::PAYLOAD_TOO_LARGE => "payload-too-large",
        s if s.is_server_error() => "internal",
        _ => "client-error",
    };
    Problem::new(status, kind, detail).into_response()
}

/// Serves `router` on `listener` until `shutdown` resolves (then finishes open requests).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Admits requests carrying `Authorization: Bearer <token>` and records who they are (the
/// admin, from the peer address) as an [`Actor`] extension for the handler.
async fn require_token(State(state): State<ApiState>, mut req: Request, next: Next) -> Response {
    let offered = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match offered {
        None => {
            return Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing bearer token: send Authorization: Bearer <admin token>",
            )
            .into_response();
        }
        Some(token) if !state.token.matches(token.trim()) => {
            return Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "wrong bearer token",
            )
            .into_response();
        }
        Some(_) => {}
    }
    let source = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    req.extensions_mut().insert(Actor::admin(source));
    next.run(req).await
}

async fn no_route() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "no-route",
        "no such route; see /openapi.json",
    )
}

async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "this route does not take that method; see /openapi.json",
    )
}

/// Runs a service call on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AdminError> + Send + 'static,
) -> ApiResult<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(Problem::from),
        Err(e) => Err(AdminError::Internal(format!("admin task failed: {e}")).into()),
    }
}

/// A JSON request body; an empty body is `T::default()` when `T` has one.
fn body<T: DeserializeOwned>(bytes: &Bytes, empty: Option<T>) -> ApiResult<T> {
    if bytes.iter().all(u8::is_ascii_whitespace)
        && let Some(default) = empty
    {
        return Ok(default);
    }
    serde_json::from_slice(bytes).map_err(|e| Problem::bad_request(format!("request body: {e}")))
}

/// The one place a new PIN becomes response text: shown once, to the caller who made it.
fn pin_json(pin: &Pin) -> Value {
    Value::String(pin.expose().to_string())
}

#[derive(Serialize)]
struct WithPin<'a> {
    user: &'a UserView,
    pin: Value,
    email: &'a EmailOutcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<bool>,
}

async fn list_users(State(s): State<Service>) -> ApiResult<Json<Vec<UserView>>> {
    blocking(move || s.users()).await.map(Json)
}

async fn enable_user(
    State(s): State<Service>,
    Extension(actor): Extension<Actor>,
    bytes: Bytes,
) -> ApiResult<Response> {
    let req: EnableUser = body(&bytes, None)?;
    let e = blocking(move || s.enable_user(&actor, req, SystemTime::now())).await?;
    let status = if e.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let out = WithPin {
        user: &e.user,
        pin: pin_json(&e.pin),
        email: &e.email,
        created: Some(e.created),
    };
    Ok((status, Json(out)).into_response())
}

async fn get_user(State(s): State<Service>, Path(id): Path<String>) -> ApiResult<Json<UserView>> {
    blocking(move || s.user(&id)).await.map(Json)
}

async fn disable_user(
    State(s): State<Service>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> ApiResult<Json<UserView>> {
    blocking(move || s.disable_user(&actor, &id, SystemTime::now()))
        .await
        .map(Json)
}

async fn reset_pin(
    State(s): State<Service>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ApiResult<Response> {
    let options: EmailOptions = body(&bytes, Some(EmailOptions::default()))?;
    let r = blocking(move || s.reset_pin(&actor, &id, &options, SystemTime::now())).await?;
    let out = WithPin {
        user: &r.user,
        pin: pin_json(&r.pin),
        email: &r.email,
        created: None,
    };
    Ok(Json(out).into_response())
}

async fn reset_conference_id(
    State(s): State<Service>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ApiResult<Json<ConferenceIdReset>> {
    let options: EmailOptions = body(&bytes, Some(EmailOptions::default()))?;
    blocking(move || s.reset_conference_id(&actor, &id, &options, SystemTime::now()))
        .await
        .map(Json)
}

async fn list_lockouts(State(s): State<Service>) -> ApiResult<Response> {
    let locked = blocking(move || s.lockouts(SystemTime::now())).await?;
    Ok(Json(locked).into_response())
}

async fn clear_lockout(
    State(s): State<Service>,
    Extension(actor): Extension<Actor>,
    Path(conference): Path<String>,
) -> ApiResult<StatusCode> {
    blocking(move || s.clear_lockout(&actor, &conference, SystemTime::now())).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_source_blocks(State(s): State<Service>) -> ApiResult<Response> {
    let blocked = blocking(move || s.source_blocks(SystemTime::now())).await?;
    Ok(Json(blocked).into_response())
}

async fn clear_source_block(
    State(s): State<Service>,
    Extension(actor): Extension<Actor>,
    Path(source): Path<String>,
) -> ApiResult<StatusCode> {
    blocking(move || s.clear_source_block(&actor, &source, SystemTime::now())).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn get_settings(State(s): State<Service>) -> ApiResult<Response> {
    let settings = blocking(move || s.settings()).await?;
    Ok(Json(settings).into_response())
}

async fn update_settings(
    State(s): State<Service>,
    Extension(actor): Extension<Actor>,
    bytes: Bytes,
) -> ApiResult<Response> {
    let patch: SettingsPatch = body(&bytes, None)?;
    let settings = blocking(move || s.update_settings(&actor, &patch, SystemTime::now())).await?;
    Ok(Json(settings).into_response())
}

#[derive(serde::Deserialize)]
struct AuditQuery {
    limit: Option<usize>,
}

async fn get_audit(
    State(s): State<Service>,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    let entries = blocking(move || s.audit(q.limit)).await?;
    Ok(Json(entries).into_response())
}

async fn list_emails(State(s): State<Service>) -> ApiResult<Response> {
    let emails = blocking(move || s.emails()).await?;
    Ok(Json(emails).into_response())
}

async fn get_stats(State(state): State<ApiState>) -> Json<StatsView> {
    let live = &state.live;
    let media = live.engine.get().map(|e| (e.stats(), e.meetings()));
    let (media, meetings) = media.unwrap_or_default();
    Json(StatsView {
        calls: live.calls.load(Ordering::Relaxed),
        sip_legs: live.sip_legs.load(Ordering::Relaxed),
        sip_transactions: live.sip_transactions.load(Ordering::Relaxed),
        media_sessions: media.sessions_open,
        rtp_ports_in_use: media.ports_in_use,
        meetings,
        rtp_packets_sent: media.packets_sent,
        rtp_packets_received: media.packets_received,
        rtp_packets_dropped_foreign: media.packets_dropped_foreign,
        rtp_packets_malformed: media.packets_malformed,
        faults_contained: live.faults_contained.load(Ordering::Relaxed),
    })
}

async fn openapi_json() -> Json<Value> {
    Json(openapi())
}

/// The OpenAPI 3.0 document of this API. Hand-written: `tests/admin_api.rs` parses it with
/// the `openapiv3` crate and calls every operation it lists, so a route missing here or
/// listed but not served fails that test.
pub fn openapi() -> Value {
    let problem = |description: &str| {
        json!({
            "description": description,
            "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
        })
    };
    let ok = |description: &str, schema: Value| json!({"description": description, "content": {"application/json": {"schema": schema}}});
    let schema = |name: &str| json!({"$ref": format!("#/components/schemas/{name}")});
    let array = |name: &str| json!({"type": "array", "items": schema(name)});
    let id_param = json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}, "description": "user id"}]);
    let email_body = json!({
        "required": false,
        "content": {"application/json": {"schema": schema("EmailOptions")}}
    });
    let mut doc = json!({
        "openapi": "3.0.3",
        "info": {
            "title": "pinbridge admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Administration of audio-conferencing users, PINs, lockouts and tenant settings. Every /api route needs `Authorization: Bearer <admin token>`. Errors are RFC 9457 problem JSON. A PIN appears only in the response that creates it."
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/users": {
                "get": {"operationId": "listUsers", "summary": "List users (PINs masked)",
                    "responses": {"200": ok("users", array("User")), "401": problem("no or wrong token")}},
                "post": {"operationId": "enableUser", "summary": "Enable a user: conference ID and PIN (shown once); a disabled user is enabled again with a new PIN",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": schema("EnableUser")}}},
                    "responses": {"201": ok("created", schema("UserWithPin")), "200": ok("re-enabled", schema("UserWithPin")),
                        "400": problem("malformed request"), "401": problem("no or wrong token"), "409": problem("already enabled")}}
            },
            "/api/users/{id}": {
                "parameters": id_param,
                "get": {"operationId": "getUser", "summary": "Get a user (PIN masked)",
                    "responses": {"200": ok("the user", schema("User")), "401": problem("no or wrong token"), "404": problem("no such user")}}
            },
            "/api/users/{id}/disable": {
                "parameters": id_param,
                "post": {"operationId": "disableUser", "summary": "Disable a user: their PIN no longer starts meetings",
                    "responses": {"200": ok("the user", schema("User")), "401": problem("no or wrong token"), "404": problem("no such user")}}
            },
            "/api/users/{id}/reset-pin": {
                "parameters": id_param,
                "post": {"operationId": "resetPin", "summary": "New PIN at the tenant's length (shown once); the old one stops working",
                    "requestBody": email_body,
                    "responses": {"200": ok("the new PIN", schema("UserWithPin")), "400": problem("bad email options"),
                        "401": problem("no or wrong token"), "404": problem("no such user")}}
            },
            "/api/users/{id}/reset-conference-id": {
                "parameters": id_param,
                "post": {"operationId": "resetConferenceId", "summary": "New conference ID; the old one stops working",
                    "requestBody": email_body,
                    "responses": {"200": ok("the new ID", schema("ConferenceIdReset")), "400": problem("bad email options"),
                        "401": problem("no or wrong token"), "404": problem("no such user")}}
            },
            "/api/lockouts": {
                "get": {"operationId": "listLockouts", "summary": "Conferences whose PIN entry is locked",
                    "responses": {"200": ok("locked conferences", array("Lockout")), "401": problem("no or wrong token")}}
            },
            "/api/lockouts/{conference_id}": {
                "parameters": [{"name": "conference_id", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[0-9]{4,15}$"}}],
                "delete": {"operationId": "clearLockout", "summary": "Clear a lockout",
                    "responses": {"204": {"description": "cleared"}, "400": problem("not a conference ID"),
                        "401": problem("no or wrong token"), "404": problem("not locked")}}
            },
            "/api/source-blocks": {
                "get": {"operationId": "listSourceBlocks", "summary": "Caller sources blocked for too many failed conference IDs or PINs",
                    "responses": {"200": ok("blocked sources", array("SourceBlock")), "401": problem("no or wrong token")}}
            },
            "/api/source-blocks/{source}": {
                "parameters": [{"name": "source", "in": "path", "required": true, "description": "an IP address, or caller:NUMBER for a caller through a trusted trunk (percent-encode + and :)", "schema": {"type": "string"}}],
                "delete": {"operationId": "clearSourceBlock", "summary": "Unblock a source and forget its failures",
                    "responses": {"204": {"description": "cleared"}, "400": problem("not a source"),
                        "401": problem("no or wrong token"), "404": problem("not blocked")}}
            },
            "/api/settings": {
                "get": {"operationId": "getSettings", "summary": "Tenant settings",
                    "responses": {"200": ok("settings", schema("Settings")), "401": problem("no or wrong token")}},
                "patch": {"operationId": "updateSettings", "summary": "Change tenant settings (absent fields keep their value)",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": schema("SettingsPatch")}}},
                    "responses": {"200": ok("settings", schema("Settings")), "400": problem("out of range"), "401": problem("no or wrong token")}}
            },
            "/api/audit": {
                "get": {"operationId": "getAudit", "summary": "The last audit entries, oldest first",
                    "parameters": [{"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 100}}],
                    "responses": {"200": ok("entries", array("AuditEntry")), "400": problem("bad limit"), "401": problem("no or wrong token")}}
            },
            "/api/emails": {
                "get": {"operationId": "listEmails", "summary": "Queued and delivered emails (metadata only)",
                    "responses": {"200": ok("emails", array("Email")), "401": problem("no or wrong token")}}
            },
            "/api/stats": {
                "get": {"operationId": "getStats", "summary": "What the server holds right now (calls, SIP legs and transactions, media sessions, RTP ports, meetings) and RTP and fault counters since it started; read-only",
                    "responses": {"200": ok("gauges and counters", schema("Stats")), "401": problem("no or wrong token")}}
            }
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Problem": {"type": "object", "required": ["type", "title", "status", "detail"], "properties": {
                    "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"}, "detail": {"type": "string"}}},
                "User": {"type": "object", "required": ["id", "display_name", "email", "enabled", "conference_id", "requires_pin", "created_at"], "properties": {
                    "id": {"type": "string"}, "display_name": {"type": "string"}, "email": {"type": "string"},
                    "enabled": {"type": "boolean"}, "conference_id": {"type": "string"},
                    "pin": {"type": "string", "nullable": true, "enum": ["*****"], "description": "always masked"},
                    "pin_length": {"type": "integer", "nullable": true}, "pin_set_at": {"type": "string", "format": "date-time", "nullable": true},
                    "requires_pin": {"type": "boolean"}, "created_at": {"type": "string", "format": "date-time"}}},
                "EmailOutcome": {"type": "object", "required": ["status"], "properties": {
                    "status": {"type": "string", "enum": ["queued", "not_sent"]}, "id": {"type": "integer"},
                    "to": {"type": "string"}, "reason": {"type": "string"}}},
                "UserWithPin": {"type": "object", "required": ["user", "pin", "email"], "properties": {
                    "user": schema("User"), "pin": {"type": "string", "description": "the new PIN, shown only here"},
                    "email": schema("EmailOutcome"), "created": {"type": "boolean"}}},
                "ConferenceIdReset": {"type": "object", "required": ["user", "old_conference_id", "email"], "properties": {
                    "user": schema("User"), "old_conference_id": {"type": "string"}, "email": schema("EmailOutcome")}},
                "EmailOptions": {"type": "object", "additionalProperties": false, "properties": {
                    "send_email": {"type": "boolean", "default": false},
                    "send_email_to_address": {"type": "string", "description": "only with send_email: true"}}},
                "EnableUser": {"type": "object", "additionalProperties": false, "required": ["id", "display_name", "email"], "properties": {
                    "id": {"type": "string"}, "display_name": {"type": "string"}, "email": {"type": "string", "format": "email"},
                    "requires_pin": {"type": "boolean"}, "send_email": {"type": "boolean"}, "send_email_to_address": {"type": "string"}}},
                "Lockout": {"type": "object", "required": ["conference_id", "until"], "properties": {
                    "conference_id": {"type": "string"}, "user_id": {"type": "string", "nullable": true},
                    "until": {"type": "string", "format": "date-time"}}},
                "SourceBlock": {"type": "object", "required": ["source", "reason", "failures", "limit", "until", "refused_calls"], "properties": {
                    "source": {"type": "string", "description": "IP address or caller:NUMBER"},
                    "reason": {"type": "string", "enum": ["pin_failures", "conference_id_failures"]},
                    "failures": {"type": "integer"}, "limit": {"type": "integer"},
                    "until": {"type": "string", "format": "date-time"},
                    "refused_calls": {"type": "integer", "description": "INVITEs answered 403 since the server started"}}},
                "Settings": {"type": "object", "properties": {
                    "pin_length": {"type": "integer", "minimum": 4, "maximum": 12},
                    "allow_anonymous_start": {"type": "boolean"}, "organizers_require_pin": {"type": "boolean"},
                    "auto_email": {"type": "boolean"}, "dial_in_numbers": {"type": "array", "items": {"type": "string"}},
                    "conference_id_length": {"type": "integer", "minimum": 6, "maximum": 15}}},
                "SettingsPatch": {"type": "object", "additionalProperties": false, "properties": {
                    "pin_length": {"type": "integer", "minimum": 4, "maximum": 12},
                    "allow_anonymous_start": {"type": "boolean"}, "organizers_require_pin": {"type": "boolean"},
                    "auto_email": {"type": "boolean"}, "dial_in_numbers": {"type": "array", "items": {"type": "string"}},
                    "conference_id_length": {"type": "integer", "minimum": 6, "maximum": 15}}},
                "AuditEntry": {"type": "object", "required": ["at", "actor", "action", "target", "outcome"], "properties": {
                    "at": {"type": "string", "format": "date-time"}, "actor": {"type": "string"}, "action": {"type": "string"},
                    "target": {"type": "string"}, "outcome": {"type": "string"}, "source": {"type": "string", "nullable": true}}},
                "Stats": {"type": "object", "required": ["calls", "sip_legs", "sip_transactions", "media_sessions", "rtp_ports_in_use", "meetings",
                        "rtp_packets_sent", "rtp_packets_received", "rtp_packets_dropped_foreign", "rtp_packets_malformed", "faults_contained"], "properties": {
                    "calls": {"type": "integer", "description": "calls up (IVR, lobby or meeting)"},
                    "sip_legs": {"type": "integer", "description": "SIP legs, including ones being torn down"},
                    "sip_transactions": {"type": "integer", "description": "open SIP transactions, including ones lingering for retransmissions"},
                    "media_sessions": {"type": "integer"}, "rtp_ports_in_use": {"type": "integer"}, "meetings": {"type": "integer", "description": "meetings with a mix"},
                    "rtp_packets_sent": {"type": "integer"}, "rtp_packets_received": {"type": "integer"},
                    "rtp_packets_dropped_foreign": {"type": "integer", "description": "from a source the call does not accept"},
                    "rtp_packets_malformed": {"type": "integer", "description": "from an accepted source but not usable RTP"},
                    "faults_contained": {"type": "integer", "description": "panics contained to one call or media session"}}},
                "Email": {"type": "object", "required": ["id", "to", "subject", "state", "attempts", "queued_at"], "properties": {
                    "id": {"type": "integer"}, "to": {"type": "string"}, "subject": {"type": "string"},
                    "state": {"type": "string", "enum": ["queued", "delivered"]}, "attempts": {"type": "integer"},
                    "queued_at": {"type": "string", "format": "date-time"}, "last_error": {"type": "string", "nullable": true}}}
            }
        }
    });
    // Every change is persisted before it is answered, so any of them can meet a full disk.
    let full = problem("the store could not write (disk full): free space and restart the server");
    if let Some(paths) = doc["paths"].as_object_mut() {
        for item in paths.values_mut() {
            for method in ["post", "put", "patch", "delete"] {
                let responses = item
                    .get_mut(method)
                    .and_then(|op| op.get_mut("responses"))
                    .and_then(Value::as_object_mut);
                if let Some(responses) = responses {
                    responses.insert("507".into(), full.clone());
                }
            }
        }
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        let t = AdminToken::new("0123456789abcdef");
        assert!(t.matches("0123456789abcdef"));
        assert!(!t.matches("0123456789abcdeF"));
        assert!(!t.matches("0123456789abcde"));
        assert!(!t.matches(""));
        assert_eq!(format!("{t:?}"), "AdminToken(<redacted>)");
    }

    #[test]
    fn the_token_file_is_generated_once_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (first, created) = AdminToken::load_or_create(None, dir.path()).unwrap();
        assert!(created);
        assert_eq!(first.0.len(), 64);
        let path = dir.path().join(AdminToken::FILE_NAME);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (second, created) = AdminToken::load_or_create(None, dir.path()).unwrap();
        assert!(!created);
        assert!(second.matches(&first.0));
        let (configured, _) =
            AdminToken::load_or_create(Some("configured-token-123"), dir.path()).unwrap();
        assert!(configured.matches("configured-token-123"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = AdminToken::load_or_create(None, dir.path()).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn problems_have_the_rfc_9457_members() {
        let p = Problem::from(AdminError::Conflict("user x already exists".into()));
        assert_eq!(p.status, StatusCode::CONFLICT);
        let response = p.into_response();
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }

    #[test]
    fn the_openapi_document_is_openapi_3() {
        let doc: openapiv3::OpenAPI = serde_json::from_value(openapi()).unwrap();
        assert!(doc.openapi.starts_with("3."));
        assert_eq!(doc.paths.paths.len(), 13);
    }

    #[test]
    fn every_write_operation_lists_the_full_disk_problem() {
        let doc = openapi();
        let mut writes = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in ["post", "put", "patch", "delete"] {
                if let Some(op) = item.get(method) {
                    writes += 1;
                    assert!(op["responses"].get("507").is_some(), "{method} {path}");
                }
            }
            if let Some(get) = item.get("get") {
                assert!(get["responses"].get("507").is_none(), "GET {path}");
            }
        }
        assert!(writes >= 7, "{writes} write operations");
    }
}
