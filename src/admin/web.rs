//! The self-service page: a user signs in with a one-time link emailed to their primary
//! address, sees their conference ID and masked PIN, and resets their own PIN. Served by the
//! admin listener under `/self`, outside the admin token.
//!
//! Why it is built this way:
//! - **Only ever their own account.** No route takes a user id: every action is for the user
//!   the session was opened for, and that user comes only from a consumed sign-in link.
//! - **Sign-in links** are 256-bit random tokens, stored only hashed, good once for 15 minutes
//!   ([`crate::store::Store::create_sign_in_token`]). The sign-in form answers the same
//!   whether or not the address belongs to an account, so it cannot be used to find users.
//! - **Sessions** live in memory (a restart signs everyone out, which is harmless) for 30
//!   minutes, in an `HttpOnly; SameSite=Strict` cookie scoped to `/self`.
//! - **CSRF**: every form carries a token that must match the session's (or, before sign-in,
//!   a `SameSite=Strict` cookie's: double submit). SameSite alone would do in current browsers;
//!   the token keeps older ones safe too.
//! - **The new PIN is shown once**: the reset is a POST that redirects (303) to `/self`, which
//!   shows the PIN kept for exactly that one view and then forgets it; a reload shows `*****`.
//!   Pages are `Cache-Control: no-store`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::Deserialize;

use super::api::ApiState;
use super::service::{Actor, EmailOptions, Service};
use crate::notify::Email;
use crate::pin::{MASK, Pin, random_token, secrets_equal};
use crate::store::{SIGN_IN_LINK_TTL, UserId};

/// How long a signed-in session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(30 * 60);
/// Sessions kept at most (a flood of sign-ins cannot grow memory without bound).
const MAX_SESSIONS: usize = 10_000;
const SESSION_COOKIE: &str = "pb_session";
const CSRF_COOKIE: &str = "pb_csrf";

/// What the page needs besides the admin service.
pub struct Web {
    /// Where links in emails point: `http://host:port` of this listener as users reach it.
    public_url: String,
    sessions: Mutex<HashMap<String, Session>>,
}

struct Session {
    user: UserId,
    csrf: String,
    expires: Instant,
    /// The PIN a reset just issued, for the one page view that shows it.
    new_pin: Option<Pin>,
}

impl Web {
    pub fn new(public_url: impl Into<String>) -> Arc<Web> {
        Arc::new(Web {
            public_url: public_url.into().trim_end_matches('/').to_string(),
            sessions: Mutex::new(HashMap::new()),
        })
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The session named by the request's cookie, if live (expired ones are dropped here).
    fn session_id(&self, headers: &HeaderMap) -> Option<String> {
        let id = cookie(headers, SESSION_COOKIE)?;
        let mut sessions = self.sessions();
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        sessions.contains_key(&id).then_some(id)
    }
}

/// The `/self` routes, to pass to [`super::api::router_with`].
pub fn routes(web: Arc<Web>) -> Router<ApiState> {
    Router::new()
        .route("/self", get(page))
        .route("/self/sign-in", post(sign_in))
        .route("/self/auth", get(auth))
        .route("/self/reset-pin", post(reset_pin))
        .route("/self/sign-out", post(sign_out))
        .layer(Extension(web))
}

#[derive(Deserialize)]
struct SignInForm {
    email: String,
    csrf: String,
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

#[derive(Deserialize)]
struct AuthQuery {
    token: String,
}

/// `GET /self`: the account page when signed in, else the sign-in form.
async fn page(
    Extension(web): Extension<Arc<Web>>,
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Response {
    let Some(id) = web.session_id(&headers) else {
        let csrf = random_token();
        let body = layout(
            "Sign in",
            &format!(
                r#"<p>Enter the email address of your account. We will send you a sign-in link.</p>
<form method="post" action="/self/sign-in">
<input type="hidden" name="csrf" value="{csrf}">
<label>Email <input id="email" name="email" type="email" required autocomplete="email"></label>
<button id="send-link" type="submit">Send sign-in link</button>
</form>"#
            ),
        );
        return html(
            StatusCode::OK,
            body,
            Some(set_cookie(CSRF_COOKIE, &csrf, 600)),
        );
    };
    let (user_id, csrf, new_pin) = {
        let mut sessions = web.sessions();
        let Some(s) = sessions.get_mut(&id) else {
            return redirect("/self");
        };
        (s.user.clone(), s.csrf.clone(), s.new_pin.take())
    };
    let service = state.service.clone();
    let uid = user_id.to_string();
    let user = tokio::task::spawn_blocking(move || service.user(&uid)).await;
    let user = match user {
        Ok(Ok(user)) => user,
        _ => {
            return problem_page(
                StatusCode::NOT_FOUND,
                "Your account is no longer available.",
            );
        }
    };
    let pin_line = match &new_pin {
        Some(pin) => format!(
            r#"<p>Your new PIN is <strong id="new-pin">{}</strong>. It is shown only this once; it has also been emailed to you.</p>"#,
            pin.expose()
        ),
        None => String::new(),
    };
    let body = layout(
        "Your audio conferencing",
        &format!(
            r#"{pin_line}<dl>
<dt>Name</dt><dd id="name">{name}</dd>
<dt>Conference ID</dt><dd id="conference-id">{conference}</dd>
<dt>PIN</dt><dd id="pin">{MASK}</dd>
</dl>
<form method="post" action="/self/reset-pin">
<input type="hidden" name="csrf" value="{csrf}">
<button id="reset-pin" type="submit">Reset PIN</button>
</form>
<form method="post" action="/self/sign-out">
<input type="hidden" name="csrf" value="{csrf}">
<button id="sign-out" type="submit">Sign out</button>
</form>"#,
            name = escape(&user.display_name),
            conference = escape(&user.conference_id),
        ),
    );
    html(StatusCode::OK, body, None)
}

/// `POST /self/sign-in`: emails a sign-in link if the address is an enabled account's; the
/// answer is the same either way.
async fn sign_in(
    Extension(web): Extension<Arc<Web>>,
    State(state): State<ApiState>,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Response {
    if cookie(&headers, CSRF_COOKIE).is_none_or(|c| !same(&c, &form.csrf)) {
        return problem_page(
            StatusCode::FORBIDDEN,
            "The form expired. Open the page again.",
        );
    }
    let service = state.service.clone();
    let base = web.public_url.clone();
    let email = form.email.trim().to_string();
    let sent =
        tokio::task::spawn_blocking(move || send_sign_in_link(&service, &base, &email)).await;
    if let Ok(Err(e)) = sent {
        tracing::warn!(error = %e, "self-service sign-in link not sent");
    }
    let body = layout(
        "Check your email",
        &format!(
            "<p id=\"sent\">If that address belongs to an account, a sign-in link is on its way. It works once, within {} minutes.</p>",
            SIGN_IN_LINK_TTL.as_secs() / 60
        ),
    );
    html(StatusCode::OK, body, None)
}

fn send_sign_in_link(service: &Service, base: &str, email: &str) -> Result<(), String> {
    let store = service.store();
    let users = store.users().map_err(|e| e.to_string())?;
    let Some(user) = users
        .iter()
        .find(|u| u.enabled && u.email.eq_ignore_ascii_case(email))
    else {
        return Ok(());
    };
    let now = SystemTime::now();
    let token = store
        .create_sign_in_token(&user.id, now)
        .map_err(|e| e.to_string())?;
    let link = format!("{base}/self/auth?token={token}");
    let message = sign_in_email(&user.display_name, &user.email, &link);
    service
        .queue_email(&message, now)
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn sign_in_email(name: &str, to: &str, link: &str) -> Email {
    let minutes = SIGN_IN_LINK_TTL.as_secs() / 60;
    Email {
        to: to.to_string(),
        subject: "Your pinbridge sign-in link".to_string(),
        text: format!(
            "Hello {name},\n\nOpen this link to sign in to your audio conferencing page:\n\n{link}\n\n\
             It works once, within {minutes} minutes. If you did not ask for it, ignore this message.\n"
        ),
        html: format!(
            "<p>Hello {},</p><p><a href=\"{link}\">Sign in to your audio conferencing page</a></p>\
             <p>It works once, within {minutes} minutes. If you did not ask for it, ignore this message.</p>",
            escape(name)
        ),
    }
}

/// `GET /self/auth?token=…`: consumes the link and opens a session.
async fn auth(
    Extension(web): Extension<Arc<Web>>,
    State(state): State<ApiState>,
    Query(query): Query<AuthQuery>,
) -> Response {
    let service = state.service.clone();
    let consumed = tokio::task::spawn_blocking(move || {
        service
            .store()
            .consume_sign_in_token(&query.token, SystemTime::now())
    })
    .await;
    let user = match consumed {
        Ok(Ok(Some(user))) => user,
        Ok(Ok(None)) => {
            return problem_page(
                StatusCode::BAD_REQUEST,
                "This sign-in link has expired or was used already. Ask for a new one.",
            );
        }
        _ => {
            return problem_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Sign-in failed. Try again.",
            );
        }
    };
    let id = random_token();
    {
        let mut sessions = web.sessions();
        if sessions.len() >= MAX_SESSIONS {
            let now = Instant::now();
            sessions.retain(|_, s| s.expires > now);
            if sessions.len() >= MAX_SESSIONS {
                return problem_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Too many sessions. Try later.",
                );
            }
        }
        sessions.insert(
            id.clone(),
            Session {
                user,
                csrf: random_token(),
                expires: Instant::now() + SESSION_TTL,
                new_pin: None,
            },
        );
    }
    let mut response = redirect("/self");
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, &id, SESSION_TTL.as_secs()),
    );
    response
}

/// `POST /self/reset-pin`: the signed-in user's own PIN, emailed, shown once on `/self`.
async fn reset_pin(
    Extension(web): Extension<Arc<Web>>,
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let Some(id) = web.session_id(&headers) else {
        return problem_page(StatusCode::UNAUTHORIZED, "Sign in first.");
    };
    let user = {
        let sessions = web.sessions();
        let Some(s) = sessions.get(&id) else {
            return problem_page(StatusCode::UNAUTHORIZED, "Sign in first.");
        };
        if !same(&s.csrf, &form.csrf) {
            return problem_page(
                StatusCode::FORBIDDEN,
                "The form expired. Open the page again.",
            );
        }
        s.user.clone()
    };
    let service = state.service.clone();
    let actor = Actor::user(&user, Some(peer.ip()));
    let options = EmailOptions {
        send_email: true,
        send_email_to_address: None,
    };
    let uid = user.to_string();
    let reset = tokio::task::spawn_blocking(move || {
        service.reset_pin(&actor, &uid, &options, SystemTime::now())
    })
    .await;
    match reset {
        Ok(Ok(reset)) => {
            if let Some(s) = web.sessions().get_mut(&id) {
                s.new_pin = Some(reset.pin);
            }
            redirect("/self")
        }
        Ok(Err(e)) => problem_page(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(_) => problem_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The reset failed. Try again.",
        ),
    }
}

/// `POST /self/sign-out`.
async fn sign_out(
    Extension(web): Extension<Arc<Web>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Some(id) = web.session_id(&headers) {
        let mut sessions = web.sessions();
        if sessions.get(&id).is_some_and(|s| same(&s.csrf, &form.csrf)) {
            sessions.remove(&id);
        }
    }
    let mut response = redirect("/self");
    response
        .headers_mut()
        .append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", 0));
    response
}

// ---- helpers ------------------------------------------------------------------------------

/// Constant-time comparison of two tokens.
fn same(a: &str, b: &str) -> bool {
    secrets_equal(a.as_bytes(), b.as_bytes())
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn set_cookie(name: &str, value: &str, max_age: u64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/self; Max-Age={max_age}; HttpOnly; SameSite=Strict"
    ))
    .expect("cookie values are hex")
}

fn redirect(to: &'static str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    response
        .headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(to));
    secure(&mut response);
    response
}

fn html(status: StatusCode, body: String, cookie: Option<HeaderValue>) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if let Some(c) = cookie {
        response.headers_mut().append(header::SET_COOKIE, c);
    }
    secure(&mut response);
    response
}

/// No caching (a page may show a PIN), no framing, no foreign scripts.
fn secure(response: &mut Response) {
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
        ),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

fn problem_page(status: StatusCode, message: &str) -> Response {
    let body = layout(
        "pinbridge",
        &format!(
            "<p id=\"error\">{}</p><p><a href=\"/self\">Back</a></p>",
            escape(message)
        ),
    );
    html(status, body, None)
}

fn layout(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
<meta name=\"viewport\" content=\"width=device-width\">\
<style>body{{font-family:sans-serif;max-width:36em;margin:2em auto;padding:0 1em}}dt{{font-weight:bold}}</style>\
</head><body><h1>{t}</h1>{body}</body></html>",
        t = escape(title)
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}
