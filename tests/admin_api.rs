//! The admin HTTP API of the real binary over real sockets: bearer-token auth, RFC 9457
//! problem JSON, each operation, the OpenAPI document, and the refusal to listen beyond
//! loopback without a configured token.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use common::Server;

struct Answer {
    status: u16,
    content_type: String,
    body: Value,
    raw: String,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

fn http(
    server: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Answer {
    let mut req = ureq::http::Request::builder()
        .method(method)
        .uri(format!("{}{path}", server.http_url()));
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    if body.is_some() {
        req = req.header("Content-Type", "application/json");
    }
    let req = req.body(body.unwrap_or("").to_string()).unwrap();
    let mut resp = agent()
        .run(req)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let raw = resp.body_mut().read_to_string().unwrap();
    let body = if raw.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{method} {path}: {e}: {raw}"))
    };
    Answer {
        status,
        content_type,
        body,
        raw,
    }
}

/// The call with the server's own token.
fn admin(server: &Server, method: &str, path: &str, body: Option<Value>) -> Answer {
    let body = body.map(|b| b.to_string());
    http(
        server,
        method,
        path,
        Some(&server.admin_token()),
        body.as_deref(),
    )
}

/// Asserts an RFC 9457 problem with `status` whose detail contains `detail`.
fn assert_problem(a: &Answer, status: u16, detail: &str) {
    assert_eq!(a.status, status, "{}", a.raw);
    assert_eq!(a.content_type, "application/problem+json", "{}", a.raw);
    assert!(
        a.body["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:pinbridge:problem:"),
        "{}",
        a.raw
    );
    assert!(a.body["title"].is_string(), "{}", a.raw);
    assert_eq!(a.body["status"], json!(status), "{}", a.raw);
    let d = a.body["detail"].as_str().unwrap();
    assert!(d.contains(detail), "detail {d:?} lacks {detail:?}");
}

fn enable(server: &Server, id: &str) -> Value {
    let a = admin(
        server,
        "POST",
        "/api/users",
        Some(json!({"id": id, "display_name": "Amos Marble", "email": id})),
    );
    assert_eq!(a.status, 201, "{}", a.raw);
    a.body
}

#[test]
fn admin_routes_need_the_bearer_token() {
    let server = Server::start();
    for (method, path) in [
        ("GET", "/api/users"),
        ("POST", "/api/users"),
        ("GET", "/api/settings"),
        ("GET", "/api/emails"),
        ("DELETE", "/api/lockouts/1234567"),
    ] {
        let none = http(&server, method, path, None, None);
        assert_problem(&none, 401, "missing bearer token");
        let wrong = http(&server, method, path, Some("not-the-token-at-all"), None);
        assert_problem(&wrong, 401, "wrong bearer token");
    }
    // A near miss is still wrong.
    let mut near = server.admin_token();
    near.pop();
    assert_problem(
        &http(&server, "GET", "/api/users", Some(&near), None),
        401,
        "wrong",
    );
    // The right one works; the OpenAPI document needs none.
    assert_eq!(admin(&server, "GET", "/api/users", None).status, 200);
    assert_eq!(
        http(&server, "GET", "/openapi.json", None, None).status,
        200
    );
    // The token file is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(server.data_dir().join("admin-token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_configured_token_is_used_and_no_file_is_written() {
    let token = "configured-admin-token-0123456789";
    let server = Server::builder()
        .env("PINBRIDGE_ADMIN_TOKEN", token)
        .start();
    assert_eq!(
        http(&server, "GET", "/api/users", Some(token), None).status,
        200
    );
    assert!(!server.data_dir().join("admin-token").exists());
    // The token appears in no log line.
    assert!(!server.logs().contains(token));
}

#[test]
fn errors_are_problem_json_with_the_right_status() {
    let server = Server::start();
    enable(&server, "amos@contoso.com");
    let dup = admin(
        &server,
        "POST",
        "/api/users",
        Some(json!({"id": "amos@contoso.com", "display_name": "A", "email": "amos@contoso.com"})),
    );
    assert_problem(&dup, 409, "already exists");
    let bad_email = admin(
        &server,
        "POST",
        "/api/users",
        Some(json!({"id": "b@contoso.com", "display_name": "B", "email": "b at contoso"})),
    );
    assert_problem(&bad_email, 400, "malformed email address");
    let missing = admin(
        &server,
        "POST",
        "/api/users",
        Some(json!({"id": "c@contoso.com"})),
    );
    assert_problem(&missing, 400, "display_name");
    let broken = http(
        &server,
        "POST",
        "/api/users",
        Some(&server.admin_token()),
        Some("{not json"),
    );
    assert_problem(&broken, 400, "request body");
    let unknown_field = admin(
        &server,
        "PATCH",
        "/api/settings",
        Some(json!({"pin_lenght": 6})),
    );
    assert_problem(&unknown_field, 400, "pin_lenght");
    assert_problem(
        &admin(&server, "GET", "/api/users/ghost@contoso.com", None),
        404,
        "no user ghost@contoso.com",
    );
    let to_alone = admin(
        &server,
        "POST",
        "/api/users/amos@contoso.com/reset-pin",
        Some(json!({"send_email_to_address": "x@contoso.com"})),
    );
    assert_problem(&to_alone, 400, "only valid together with send_email");
    let range = admin(
        &server,
        "PATCH",
        "/api/settings",
        Some(json!({"pin_length": 13})),
    );
    assert_problem(
        &range,
        400,
        "pin_length must be between 4 and 12 digits, got 13",
    );
    assert_problem(
        &admin(&server, "GET", "/api/audit?limit=0", None),
        400,
        "limit",
    );
    assert_problem(
        &admin(&server, "GET", "/api/audit?limit=x", None),
        400,
        "limit",
    );
    assert_problem(
        &admin(&server, "DELETE", "/api/lockouts/12ab", None),
        400,
        "not a conference ID",
    );
    assert_problem(
        &admin(&server, "GET", "/api/users/%FF%FE", None),
        400,
        "UTF-8",
    );
    // Just over axum's 2 MiB limit: the server stops reading at the limit and answers, and
    // the few KiB it left unread fit in the socket buffers, so our write does not fail with
    // EPIPE before the answer can be read (a 3 MiB body made that a race).
    let huge = format!("{{\"id\": \"{}\"}}", "x".repeat(2 * 1024 * 1024 + 8 * 1024));
    let too_big = http(
        &server,
        "POST",
        "/api/users",
        Some(&server.admin_token()),
        Some(&huge),
    );
    assert_problem(&too_big, 413, "length limit");
    assert_problem(
        &admin(&server, "GET", "/api/nothing", None),
        404,
        "no such route",
    );
    assert_problem(
        &admin(&server, "PUT", "/api/users", None),
        405,
        "does not take that method",
    );
}

#[test]
fn each_operation_over_http() {
    let server = Server::start();
    let created = enable(&server, "amos@contoso.com");
    let pin = created["pin"].as_str().unwrap().to_string();
    let conference = created["user"]["conference_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(pin.len(), 5);
    assert!(pin.bytes().all(|b| b.is_ascii_digit()));
    assert_eq!(conference.len(), 7);
    assert_eq!(created["user"]["pin"], "*****");
    assert_eq!(created["created"], true);
    assert_eq!(created["email"]["status"], "queued");
    assert_eq!(created["email"]["to"], "amos@contoso.com");

    // Reads: the PIN masked, its length and when it was set.
    let user = admin(&server, "GET", "/api/users/amos@contoso.com", None).body;
    assert_eq!(user["pin"], "*****");
    assert_eq!(user["pin_length"], 5);
    assert!(user["pin_set_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(user["display_name"], "Amos Marble");
    let list = admin(&server, "GET", "/api/users", None).body;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["pin"], "*****");

    // Settings: PIN length 7 applies to the next PIN only; automatic emails off.
    let settings = admin(&server, "GET", "/api/settings", None).body;
    assert_eq!(settings["pin_length"], 5);
    assert_eq!(settings["auto_email"], true);
    let settings = admin(
        &server,
        "PATCH",
        "/api/settings",
        Some(json!({"pin_length": 7, "auto_email": false, "dial_in_numbers": ["+1 206 555 0100"]})),
    );
    assert_eq!(settings.status, 200, "{}", settings.raw);
    assert_eq!(settings.body["pin_length"], 7);
    assert_eq!(
        admin(&server, "GET", "/api/users/amos@contoso.com", None).body["pin_length"],
        5
    );
    let reset = admin(
        &server,
        "POST",
        "/api/users/amos@contoso.com/reset-pin",
        None,
    );
    assert_eq!(reset.status, 200, "{}", reset.raw);
    let new_pin = reset.body["pin"].as_str().unwrap().to_string();
    assert_eq!(new_pin.len(), 7);
    assert_eq!(reset.body["email"]["status"], "not_sent");
    assert!(
        reset.body["email"]["reason"]
            .as_str()
            .unwrap()
            .contains("automatic emails are off")
    );
    // Forced, to another address.
    let forced = admin(
        &server,
        "POST",
        "/api/users/amos@contoso.com/reset-pin",
        Some(json!({"send_email": true, "send_email_to_address": "desk@contoso.com"})),
    );
    assert_eq!(forced.body["email"]["status"], "queued", "{}", forced.raw);
    assert_eq!(forced.body["email"]["to"], "desk@contoso.com");
    let last_pin = forced.body["pin"].as_str().unwrap().to_string();

    // New conference ID.
    let moved = admin(
        &server,
        "POST",
        "/api/users/amos@contoso.com/reset-conference-id",
        Some(json!({"send_email": true})),
    );
    assert_eq!(moved.status, 200, "{}", moved.raw);
    assert_eq!(moved.body["old_conference_id"], conference.as_str());
    assert_ne!(moved.body["user"]["conference_id"], conference.as_str());

    // Disable.
    let disabled = admin(&server, "POST", "/api/users/amos@contoso.com/disable", None);
    assert_eq!(disabled.status, 200);
    assert_eq!(disabled.body["enabled"], false);

    // Lockouts: none; clearing one that is not there is not found.
    assert_eq!(admin(&server, "GET", "/api/lockouts", None).body, json!([]));
    assert_problem(
        &admin(&server, "DELETE", "/api/lockouts/1234567", None),
        404,
        "not locked",
    );

    // Emails: welcome, forced reset, new conference ID; metadata only. With no SMTP server
    // configured they are delivered as .eml files into the outbox folder.
    let mut emails = admin(&server, "GET", "/api/emails", None);
    common::wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        emails = admin(&server, "GET", "/api/emails", None);
        emails
            .body
            .as_array()
            .is_some_and(|l| l.len() == 3 && l.iter().all(|e| e["state"] == "delivered"))
    });
    let list = emails.body.as_array().unwrap();
    assert_eq!(list.len(), 3, "{}", emails.raw);
    assert_eq!(list[1]["to"], "desk@contoso.com");
    assert!(
        list.iter().all(|e| e["state"] == "delivered"),
        "{}",
        emails.raw
    );
    let eml = std::fs::read_dir(server.data_dir().join("outbox"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "eml"))
        })
        .count();
    assert_eq!(eml, 3, "one .eml file per email in the outbox folder");
    assert!(
        list.iter()
            .all(|e| e.get("text").is_none() && e.get("html").is_none())
    );

    // Audit: every change, by the admin from loopback, never a PIN.
    let audit = admin(&server, "GET", "/api/audit", None);
    let actions: Vec<&str> = audit
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    let expected = [common::ADMIN_CHANGE_ACTIONS, &["pin.lockout_clear"]].concat();
    for action in expected {
        assert!(actions.contains(&action), "{action} not in {actions:?}");
    }
    assert!(
        audit
            .body
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["actor"] == "admin" && e["source"] == "127.0.0.1")
    );
    let one = admin(&server, "GET", "/api/audit?limit=1", None).body;
    assert_eq!(one.as_array().unwrap().len(), 1);

    // No PIN anywhere but the responses that created them: not in reads, audit, emails, logs.
    let everything = [
        admin(&server, "GET", "/api/users", None).raw,
        admin(&server, "GET", "/api/audit", None).raw,
        admin(&server, "GET", "/api/emails", None).raw,
        server.logs(),
    ]
    .join("\n");
    for p in [&pin, &new_pin, &last_pin] {
        assert!(!everything.contains(&format!("\"{p}\"")), "PIN {p} leaked");
        assert!(!everything.contains(&format!(" {p} ")), "PIN {p} leaked");
        assert!(!everything.contains(&format!("={p}")), "PIN {p} leaked");
    }
}

/// Every (method, path) the API serves; the OpenAPI document must list exactly these.
const ROUTES: &[(&str, &str)] = &[
    ("get", "/api/users"),
    ("post", "/api/users"),
    ("get", "/api/users/{id}"),
    ("post", "/api/users/{id}/disable"),
    ("post", "/api/users/{id}/reset-pin"),
    ("post", "/api/users/{id}/reset-conference-id"),
    ("get", "/api/lockouts"),
    ("delete", "/api/lockouts/{conference_id}"),
    ("get", "/api/source-blocks"),
    ("delete", "/api/source-blocks/{source}"),
    ("get", "/api/settings"),
    ("patch", "/api/settings"),
    ("get", "/api/audit"),
    ("get", "/api/emails"),
    ("get", "/api/stats"),
];

#[test]
fn the_openapi_document_is_openapi_3_and_lists_every_route() {
    let server = Server::start();
    let a = http(&server, "GET", "/openapi.json", None, None);
    assert_eq!(a.status, 200);
    assert!(
        a.content_type.starts_with("application/json"),
        "{}",
        a.content_type
    );
    let doc: openapiv3::OpenAPI = serde_json::from_str(&a.raw).expect("an OpenAPI 3 document");
    assert!(doc.openapi.starts_with("3.0"), "{}", doc.openapi);
    let mut listed = BTreeSet::new();
    for (path, item) in doc.paths.paths.iter() {
        let item = item.as_item().expect("inline path items");
        for (method, op) in item.iter() {
            assert!(
                op.operation_id.is_some(),
                "{method} {path} has no operationId"
            );
            assert!(
                !op.responses.responses.is_empty(),
                "{method} {path} has no responses"
            );
            listed.insert((method.to_string(), path.clone()));
        }
    }
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(listed, served);
    // Every listed operation is served (a real answer, not the no-route or wrong-method one).
    for (method, path) in &listed {
        let concrete = path
            .replace("{id}", "ghost@contoso.com")
            .replace("{conference_id}", "1234567")
            .replace("{source}", "192.0.2.1");
        let body = matches!(method.as_str(), "post" | "patch").then(|| json!({}));
        let a = admin(&server, &method.to_uppercase(), &concrete, body);
        let kind = a.body.get("type").and_then(Value::as_str).unwrap_or("");
        assert!(
            !kind.ends_with(":no-route") && !kind.ends_with(":method-not-allowed"),
            "{method} {path}: {}",
            a.raw
        );
        assert_ne!(a.status, 401, "{method} {path}");
    }
}

#[test]
fn listening_beyond_loopback_without_a_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pinbridge"))
        .args([
            "serve",
            "--sip-listen",
            "127.0.0.1:0",
            "--http-listen",
            "0.0.0.0:0",
        ])
        .arg("--audio-dir")
        .arg(common::repo_root().join("audio"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env_remove("PINBRIDGE_ADMIN_TOKEN")
        .env_remove("PINBRIDGE_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("pinbridge: invalid configuration: http_listen: 0.0.0.0:0 is reachable beyond this machine")
            && stderr.contains("PINBRIDGE_ADMIN_TOKEN"),
        "{stderr}"
    );
}

// ---- end to end: the API's lockouts and disable against real calls ----

/// The "not correct" prompt, after which the PIN prompt takes keys again (as tests/meeting.rs).
const PIN_INCORRECT_PROMPT: Duration = Duration::from_millis(3000);
/// How long a step of the call flow may take to show in the log.
const STEP_WAIT: Duration = Duration::from_secs(30);

/// A dial-in caller that keys with SIP INFO (`application/dtmf`).
struct InfoCaller {
    client: common::SipClient,
    d: common::Dialed,
    _rtp: common::RtpReceiver,
}

impl InfoCaller {
    fn dial(server: &Server, conference: &str) -> InfoCaller {
        let mut client = common::SipClient::udp(server.sip_addr());
        let rtp = common::RtpReceiver::bind();
        let offer = common::SdpOffer::new(rtp.addr()).pcmu();
        let d = common::dial(&mut client, conference, &offer);
        InfoCaller {
            client,
            d,
            _rtp: rtp,
        }
    }

    fn keys(&mut self, keys: &str) {
        for key in keys.chars() {
            let body = key.to_string();
            self.client.request(
                &mut self.d.call,
                "INFO",
                &[],
                Some(("application/dtmf", &body)),
            );
            let resp = self
                .client
                .expect_final(&mut self.d.call, "INFO", common::SIP_STEP);
            assert_eq!(resp.status(), Some(200), "INFO {key}");
        }
    }

    /// Waits until this call has logged `needle` `n` times.
    fn wait_log(&self, server: &Server, needle: &str, n: usize) {
        let call = format!("call_id={} ", self.d.call.call_id);
        let ok = common::wait_until(STEP_WAIT, Duration::from_millis(50), || {
            server.log_lines_with(&[needle, &call]).len() >= n
        });
        assert!(
            ok,
            "call never logged {needle:?} ({n}×)\n{}",
            server.log_tail()
        );
    }

    /// `*`, then each PIN followed by `#`, waiting for the verdict `expect` each time.
    fn organizer_pins(&mut self, server: &Server, pins: &[&str], expect: &str) {
        self.wait_log(server, "waiting in the lobby", 1);
        self.keys("*");
        self.wait_log(server, "organizer PIN entry", 1);
        for (n, pin) in pins.iter().enumerate() {
            if n > 0 {
                std::thread::sleep(PIN_INCORRECT_PROMPT);
            }
            self.keys(&format!("{pin}#"));
            self.wait_log(server, expect, n + 1);
        }
    }

    fn hang_up(mut self) {
        self.client.bye(&mut self.d.call);
        let _ = self.client.recv(Duration::from_secs(2));
    }
}

#[test]
fn lockouts_from_real_calls_are_listed_and_cleared_and_disable_stops_the_pin() {
    let server = Server::builder()
        .organizer("amos.marble@contoso.com", &[])
        .log_level("info")
        .start();
    let org = server.organizer("amos.marble@contoso.com").clone();
    let wrong: Vec<String> = (1..=5)
        .map(|i| {
            format!(
                "{:05}",
                (org.pin.parse::<u32>().unwrap() + 11_111 * i) % 100_000
            )
        })
        .collect();
    let wrong: Vec<&str> = wrong.iter().map(String::as_str).collect();

    // Five wrong PINs over two calls lock the conference.
    let mut first = InfoCaller::dial(&server, &org.conference);
    first.organizer_pins(&server, &wrong[..3], "organizer PIN wrong");
    let bye = first.client.expect_request(&first.d.call, "BYE", STEP_WAIT);
    first.client.respond(&bye, 200, "OK");
    let mut second = InfoCaller::dial(&server, &org.conference);
    second.organizer_pins(&server, &wrong[3..4], "organizer PIN wrong");
    std::thread::sleep(PIN_INCORRECT_PROMPT);
    second.keys(&format!("{}#", wrong[4]));
    second.wait_log(&server, "locked out", 1);
    second.hang_up();

    let locked = admin(&server, "GET", "/api/lockouts", None);
    assert_eq!(locked.status, 200);
    let list = locked.body.as_array().unwrap();
    assert_eq!(list.len(), 1, "{}", locked.raw);
    assert_eq!(list[0]["conference_id"], org.conference.as_str());
    assert_eq!(list[0]["user_id"], "amos.marble@contoso.com");
    assert!(list[0]["until"].as_str().unwrap().ends_with('Z'));
    let path = format!("/api/lockouts/{}", org.conference);
    let cleared = admin(&server, "DELETE", &path, None);
    assert_eq!(cleared.status, 204, "{}", cleared.raw);
    assert_eq!(admin(&server, "GET", "/api/lockouts", None).body, json!([]));

    // Unlocked: the right PIN starts the meeting again.
    let mut third = InfoCaller::dial(&server, &org.conference);
    third.organizer_pins(&server, &[&org.pin], "organizer PIN verified");
    third.hang_up();

    // Disabled: the bridge no longer knows the conference, so the PIN starts nothing.
    let path = format!("/api/users/{}/disable", org.id);
    assert_eq!(admin(&server, "POST", &path, None).status, 200);
    let mut fourth = InfoCaller::dial(&server, &org.conference);
    fourth.wait_log(&server, "dialled conference ID unknown", 1);
    fourth.keys(&format!("{}#*{}#", org.conference, org.pin));
    std::thread::sleep(Duration::from_secs(2));
    let call = format!("call_id={} ", fourth.d.call.call_id);
    assert!(
        server
            .log_lines_with(&["organizer PIN verified", &call])
            .is_empty()
    );
    assert!(
        server
            .log_lines_with(&["waiting in the lobby", &call])
            .is_empty()
    );
    fourth.hang_up();
}
