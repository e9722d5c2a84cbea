//! Issue 7, kill -9 durability: admin changes acknowledged over the HTTP API (enable a user,
//! reset a PIN, change settings) survive `kill -9` sent the moment the last answer arrives,
//! and the emails they queued are delivered by the next server on the same data directory.
//! DESIGN.md: "an admin operation answers only after sled has flushed it"; SECURITY.md says
//! what that does and does not cover.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use common::{Server, wait_until};

/// Kill/restart cycles; each makes 4 acknowledged changes.
const CYCLES: usize = 5;
/// How long a restarted server may take to deliver the queued emails.
const DELIVERY: Duration = Duration::from_secs(20);

fn admin(
    server: &Server,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut req = ureq::http::Request::builder()
        .method(method)
        .uri(format!("{}{path}", server.http_url()))
        .header("Authorization", format!("Bearer {token}"));
    if body.is_some() {
        req = req.header("Content-Type", "application/json");
    }
    let req = req
        .body(body.map(|b| b.to_string()).unwrap_or_default())
        .unwrap();
    let mut resp = agent
        .run(req)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = resp.status().as_u16();
    let raw = resp.body_mut().read_to_string().unwrap();
    let body = if raw.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{method} {path}: {e}: {raw}"))
    };
    (status, body)
}

/// What the acknowledged answers promised.
#[derive(Default)]
struct Expected {
    /// user id → the `pin_set_at` of its last acknowledged PIN.
    pins: BTreeMap<String, String>,
    /// email queue id → a text the delivered .eml must contain (the PIN it announces).
    emails: BTreeMap<u64, String>,
    dial_in: Option<String>,
    changes: usize,
}

fn queued_email(body: &Value, pin: &str, expected: &mut Expected) {
    assert_eq!(body["email"]["status"], "queued", "{body}");
    let id = body["email"]["id"].as_u64().expect("queued email id");
    expected.emails.insert(id, pin.to_string());
}

/// Checks every promise against the restarted server; returns the changes lost.
fn lost_changes(server: &Server, token: &str, expected: &Expected, outbox: &Path) -> Vec<String> {
    let mut lost = Vec::new();
    for (id, pin_set_at) in &expected.pins {
        let (status, user) = admin(server, token, "GET", &format!("/api/users/{id}"), None);
        if status != 200 || user["enabled"] != true {
            lost.push(format!("user {id}: {status} {user}"));
        } else if user["pin_set_at"].as_str() != Some(pin_set_at) {
            lost.push(format!(
                "user {id}: PIN set at {} not {pin_set_at}",
                user["pin_set_at"]
            ));
        }
    }
    let (_, settings) = admin(server, token, "GET", "/api/settings", None);
    if let Some(n) = &expected.dial_in
        && settings["dial_in_numbers"] != json!([n])
    {
        lost.push(format!(
            "settings: dial_in_numbers {} not [{n}]",
            settings["dial_in_numbers"]
        ));
    }
    let all_delivered = wait_until(DELIVERY, Duration::from_millis(100), || {
        expected
            .emails
            .keys()
            .all(|id| outbox.join(format!("{id}.eml")).exists())
    });
    for (id, pin) in &expected.emails {
        let path = outbox.join(format!("{id}.eml"));
        match std::fs::read_to_string(&path) {
            Ok(text) if text.contains(pin.as_str()) => {}
            Ok(_) => lost.push(format!("email {id} does not carry its PIN")),
            Err(e) => lost.push(format!("email {id} not delivered ({all_delivered}): {e}")),
        }
    }
    lost
}

#[test]
fn acknowledged_admin_changes_survive_kill_9_and_their_emails_are_delivered() {
    let root = tempfile::Builder::new()
        .prefix("pinbridge-kill9-")
        .tempdir()
        .expect("temp dir");
    let outbox = root.path().join("data").join("outbox");
    let mut expected = Expected::default();
    let mut lost_total = 0;
    for cycle in 0..=CYCLES {
        let mut server = Server::builder().data_root(root.path()).start();
        let token = server.admin_token();
        // Everything acknowledged before the last kill is there.
        let lost = lost_changes(&server, &token, &expected, &outbox);
        println!(
            "cycle {cycle}: {} changes acknowledged so far, {} emails, lost: {}",
            expected.changes,
            expected.emails.len(),
            lost.len()
        );
        lost_total += lost.len();
        assert!(
            lost.is_empty(),
            "after kill -9 number {cycle}:\n{}",
            lost.join("\n")
        );
        if cycle == CYCLES {
            break;
        }
        // Acknowledged changes, then kill -9 the moment the last answer is read.
        let id = format!("user{cycle}@contoso.com");
        let (status, created) = admin(
            &server,
            &token,
            "POST",
            "/api/users",
            Some(json!({"id": id, "display_name": format!("User {cycle}"), "email": id})),
        );
        assert_eq!(status, 201, "{created}");
        queued_email(&created, created["pin"].as_str().unwrap(), &mut expected);
        expected.changes += 1;
        let (status, reset) = admin(
            &server,
            &token,
            "POST",
            &format!("/api/users/{id}/reset-pin"),
            None,
        );
        assert_eq!(status, 200, "{reset}");
        queued_email(&reset, reset["pin"].as_str().unwrap(), &mut expected);
        expected.pins.insert(
            id.clone(),
            reset["user"]["pin_set_at"].as_str().unwrap().to_string(),
        );
        expected.changes += 1;
        if cycle > 0 {
            let old = format!("user{}@contoso.com", cycle - 1);
            let (status, reset) = admin(
                &server,
                &token,
                "POST",
                &format!("/api/users/{old}/reset-pin"),
                None,
            );
            assert_eq!(status, 200, "{reset}");
            queued_email(&reset, reset["pin"].as_str().unwrap(), &mut expected);
            expected.pins.insert(
                old,
                reset["user"]["pin_set_at"].as_str().unwrap().to_string(),
            );
            expected.changes += 1;
        }
        let number = format!("+1 206 555 01{cycle:02}");
        let (status, settings) = admin(
            &server,
            &token,
            "PATCH",
            "/api/settings",
            Some(json!({"dial_in_numbers": [number]})),
        );
        assert_eq!(status, 200, "{settings}");
        expected.dial_in = Some(number);
        expected.changes += 1;
        server.signal(libc::SIGKILL);
        let status = server
            .wait_exit(Duration::from_secs(10))
            .expect("killed server exits");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
    }
    println!(
        "kill -9 cycles: {CYCLES}, changes acknowledged: {}, emails: {}, changes lost: {lost_total}",
        expected.changes,
        expected.emails.len()
    );
    assert_eq!(lost_total, 0);
}
