//! `pinbridge admin …` against a running server: each command in text and `--json`, the
//! token from the data directory, `--token` and the environment, and failures as one
//! `pinbridge: …` line with exit status 1.

mod common;

use std::process::{Command, Output};

use serde_json::Value;

use common::Server;

/// `pinbridge admin --server URL ARGS…` with the token read from the server's data dir.
fn cli(server: &Server, args: &[&str]) -> Output {
    cli_with(server, args, |cmd| {
        cmd.arg("--data-dir").arg(server.data_dir());
    })
}

fn cli_with(server: &Server, args: &[&str], extra: impl FnOnce(&mut Command)) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pinbridge"));
    cmd.arg("admin")
        .args(args)
        .args(["--server", &server.http_url()])
        .env_remove("PINBRIDGE_ADMIN_TOKEN")
        .env_remove("PINBRIDGE_ADMIN_URL")
        .env_remove("PINBRIDGE_DATA_DIR");
    extra(&mut cmd);
    cmd.output().expect("running pinbridge admin")
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// Runs a command that must succeed; returns its stdout.
fn ok(server: &Server, args: &[&str]) -> String {
    let out = cli(server, args);
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// Runs a command with `--json` that must succeed; returns the parsed output.
fn json(server: &Server, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    serde_json::from_str(&ok(server, &args)).expect("--json prints JSON")
}

/// Runs a command that must fail; asserts exit 1, nothing on stdout and one
/// `pinbridge: …` line containing `message` on stderr.
fn fails(out: Output, message: &str) {
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(out.stdout.is_empty(), "{}", stdout(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("pinbridge: "), "{err}");
    assert!(err.contains(message), "{err:?} lacks {message:?}");
}

/// The value of the `key: value` line in `text`.
fn field<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no {key:?} line in {text:?}"))
}

#[test]
fn every_command_in_text_and_json() {
    let server = Server::start();

    // enable-user: the conference ID and the PIN, once.
    let text = ok(
        &server,
        &[
            "enable-user",
            "amos@contoso.com",
            "--email",
            "amos@contoso.com",
            "--name",
            "Amos Marble",
        ],
    );
    let conference = field(&text, "conference id").to_string();
    let pin = field(&text, "pin").to_string();
    assert_eq!(conference.len(), 7, "{text}");
    assert_eq!(pin.len(), 5, "{text}");
    assert!(pin.bytes().all(|b| b.is_ascii_digit()));
    assert!(
        field(&text, "email").starts_with("queued to amos@contoso.com"),
        "{text}"
    );
    let created = json(
        &server,
        &["enable-user", "bo@contoso.com", "--email", "bo@contoso.com"],
    );
    assert_eq!(created["created"], true);
    assert_eq!(created["user"]["display_name"], "bo@contoso.com");
    assert_eq!(created["pin"].as_str().unwrap().len(), 5);

    // get-user / list-users: masked.
    let text = ok(&server, &["get-user", "amos@contoso.com"]);
    assert_eq!(field(&text, "pin"), "*****");
    assert_eq!(field(&text, "pin length"), "5");
    assert_eq!(field(&text, "conference id"), conference);
    assert_eq!(field(&text, "name"), "Amos Marble");
    let user = json(&server, &["get-user", "amos@contoso.com"]);
    assert_eq!(user["pin"], "*****");
    let text = ok(&server, &["list-users"]);
    assert!(text.starts_with("ID"), "{text}");
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.contains("amos@contoso.com") && text.contains("*****"));
    assert!(!text.contains(&pin));
    assert_eq!(json(&server, &["list-users"]).as_array().unwrap().len(), 2);

    // settings show / set.
    let text = ok(&server, &["settings", "show"]);
    assert_eq!(field(&text, "pin_length"), "5");
    assert_eq!(field(&text, "auto_email"), "true");
    let text = ok(
        &server,
        &[
            "settings",
            "set",
            "--pin-length",
            "6",
            "--auto-email",
            "false",
            "--dial-in-number",
            "+1 206 555 0100",
            "--dial-in-number",
            "+44 20 7946 0000",
        ],
    );
    assert_eq!(field(&text, "pin_length"), "6");
    assert_eq!(
        field(&text, "dial_in_numbers"),
        "+1 206 555 0100, +44 20 7946 0000"
    );
    let settings = json(&server, &["settings", "show"]);
    assert_eq!(settings["auto_email"], false);

    // reset-pin: new length, no email (auto off) unless forced, elsewhere on request.
    let text = ok(&server, &["reset-pin", "amos@contoso.com"]);
    let new_pin = field(&text, "pin").to_string();
    assert_eq!(new_pin.len(), 6);
    assert!(
        field(&text, "email").starts_with("not sent: automatic emails are off"),
        "{text}"
    );
    let text = ok(
        &server,
        &[
            "reset-pin",
            "amos@contoso.com",
            "--send-email",
            "--send-email-to",
            "desk@contoso.com",
        ],
    );
    assert!(
        field(&text, "email").starts_with("queued to desk@contoso.com"),
        "{text}"
    );
    let reset = json(&server, &["reset-pin", "amos@contoso.com", "--send-email"]);
    assert_eq!(reset["email"]["status"], "queued");
    assert_eq!(reset["email"]["to"], "amos@contoso.com");

    // reset-conference-id.
    let text = ok(&server, &["reset-conference-id", "amos@contoso.com"]);
    let new_conference = field(&text, "conference id");
    assert_ne!(new_conference, conference);
    assert!(
        text.contains(&format!("{conference} no longer works")),
        "{text}"
    );

    // lockouts / clear-lockout.
    assert_eq!(ok(&server, &["lockouts"]), "no conference is locked\n");
    assert_eq!(json(&server, &["lockouts"]), serde_json::json!([]));

    // disable-user.
    assert_eq!(
        ok(&server, &["disable-user", "bo@contoso.com"]),
        "user bo@contoso.com disabled\n"
    );
    assert_eq!(
        json(&server, &["get-user", "bo@contoso.com"])["enabled"],
        false
    );

    // emails: welcome ×2, the two forced resets; metadata only. With the default settings
    // they are delivered as .eml files in the outbox, so each is queued or delivered.
    let text = ok(&server, &["emails"]);
    assert!(text.starts_with("ID"), "{text}");
    assert_eq!(text.lines().count(), 5, "{text}");
    assert!(
        text.contains("desk@contoso.com")
            && text
                .lines()
                .skip(1)
                .all(|l| l.contains("queued") || l.contains("delivered")),
        "{text}"
    );
    let emails = json(&server, &["emails"]);
    assert_eq!(emails.as_array().unwrap().len(), 4);

    // audit: every change, never a PIN.
    let text = ok(&server, &["audit"]);
    for action in common::ADMIN_CHANGE_ACTIONS {
        assert!(text.contains(action), "{action} not in {text}");
    }
    assert!(text.contains("admin (127.0.0.1)"), "{text}");
    assert!(!text.contains(&pin) && !text.contains(&new_pin), "{text}");
    let last = json(&server, &["audit", "--limit", "1"]);
    assert_eq!(last.as_array().unwrap().len(), 1);
    assert_eq!(last[0]["action"], "user.disable");
}

#[test]
fn failures_exit_1_with_the_servers_message() {
    let server = Server::start();
    ok(
        &server,
        &[
            "enable-user",
            "amos@contoso.com",
            "--email",
            "amos@contoso.com",
        ],
    );
    fails(
        cli(&server, &["get-user", "ghost@contoso.com"]),
        "no user ghost@contoso.com (HTTP 404)",
    );
    fails(
        cli(
            &server,
            &[
                "enable-user",
                "amos@contoso.com",
                "--email",
                "amos@contoso.com",
            ],
        ),
        "already exists and is enabled (HTTP 409)",
    );
    fails(
        cli(
            &server,
            &["enable-user", "x@contoso.com", "--email", "nope"],
        ),
        "malformed email address \"nope\"",
    );
    fails(
        cli(
            &server,
            &[
                "reset-pin",
                "amos@contoso.com",
                "--send-email-to",
                "x@contoso.com",
            ],
        ),
        "send_email_to_address is only valid together with send_email (HTTP 400)",
    );
    fails(
        cli(&server, &["settings", "set", "--pin-length", "13"]),
        "pin_length must be between 4 and 12 digits, got 13",
    );
    fails(
        cli(&server, &["clear-lockout", "1234567"]),
        "conference 1234567 is not locked (HTTP 404)",
    );
    // --json does not change how failures look.
    fails(
        cli(&server, &["get-user", "ghost@contoso.com", "--json"]),
        "no user ghost@contoso.com",
    );
}

#[test]
fn the_token_comes_from_the_flag_the_environment_or_the_data_dir() {
    let server = Server::start();
    let token = server.admin_token();
    // --token and PINBRIDGE_ADMIN_TOKEN, with no data dir to read.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = cli_with(&server, &["list-users", "--token", &token], |cmd| {
        cmd.arg("--data-dir").arg(elsewhere.path());
    });
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli_with(&server, &["list-users"], |cmd| {
        cmd.arg("--data-dir")
            .arg(elsewhere.path())
            .env("PINBRIDGE_ADMIN_TOKEN", &token);
    });
    assert!(out.status.success(), "{}", stderr(&out));
    // Wrong token: the server's 401.
    fails(
        cli_with(
            &server,
            &["list-users", "--token", "wrong-token-0123456789"],
            |_| {},
        ),
        "wrong bearer token (HTTP 401)",
    );
    // No token anywhere.
    fails(
        cli_with(&server, &["list-users"], |cmd| {
            cmd.arg("--data-dir").arg(elsewhere.path());
        }),
        "no admin token: pass --token",
    );
}

#[test]
fn no_server_is_a_clear_error() {
    let server = Server::start();
    let token = server.admin_token();
    let url = server.http_url();
    drop(server);
    let out = Command::new(env!("CARGO_BIN_EXE_pinbridge"))
        .args(["admin", "list-users", "--server", &url, "--token", &token])
        .output()
        .unwrap();
    fails(out, &format!("cannot reach the admin API at {url}"));
}
