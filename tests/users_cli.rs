//! `pinbridge users add|list` against a temporary data directory: the real binary, its
//! output and exit codes, and the store it leaves behind.

use std::path::Path;
use std::process::{Command, Output};

use pinbridge::pin::{self, Pepper, Pin};
use pinbridge::store::{ConferenceId, Store, UserId};

fn pinbridge(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pinbridge"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("PINBRIDGE_PIN_PEPPER")
        .env_remove("PINBRIDGE_DATA_DIR")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .expect("running the pinbridge binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("utf-8 output")
}

/// Runs `users add` and returns (conference id, PIN) from its two stdout lines.
fn add(data_dir: &Path, id: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec!["users", "add", id, "--email", id];
    args.extend_from_slice(extra);
    let out = pinbridge(data_dir, &args);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout:?}");
    let conference = lines[0].strip_prefix("conference id: ").expect(lines[0]);
    let pin = lines[1].strip_prefix("pin: ").expect(lines[1]);
    (conference.to_string(), pin.to_string())
}

#[test]
fn add_prints_the_conference_id_and_pin_once_and_list_masks_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    let (conference, pin) = add(&data, "amos.marble@contoso.com", &["--name", "Amos Marble"]);
    assert_eq!(conference.len(), 7, "{conference}");
    assert!(conference.bytes().all(|b| b.is_ascii_digit()));
    assert_eq!(pin.len(), 5, "{pin}");
    assert!(pin.bytes().all(|b| b.is_ascii_digit()));

    // Same id again: refused, non-zero, a message naming the conflict, and no PIN.
    let out = pinbridge(
        &data,
        &[
            "users",
            "add",
            "amos.marble@contoso.com",
            "--email",
            "x@example.com",
        ],
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("user amos.marble@contoso.com already exists"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));

    let (_, other_pin) = add(&data, "b@example.com", &["--no-pin-required"]);

    let out = pinbridge(&data, &["users", "list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    // Columns are separated by two or more spaces.
    let rows: Vec<Vec<&str>> = listing
        .lines()
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    assert_eq!(
        rows[0],
        [
            "ID",
            "NAME",
            "EMAIL",
            "CONFERENCE ID",
            "ENABLED",
            "PIN REQUIRED",
            "PIN",
            "PIN LENGTH",
            "PIN SET"
        ]
    );
    assert_eq!(rows.len(), 3, "{listing}");
    assert_eq!(
        rows[1][..8],
        [
            "amos.marble@contoso.com",
            "Amos Marble",
            "amos.marble@contoso.com",
            conference.as_str(),
            "yes",
            "yes",
            "*****",
            "5"
        ]
    );
    assert_eq!(rows[2][0], "b@example.com");
    assert_eq!(rows[2][5], "no", "--no-pin-required");
    assert_eq!(rows[2][6], "*****");
    for digits in [&pin, &other_pin] {
        assert!(!listing.contains(digits.as_str()), "{listing}");
    }

    // The store holds what was printed: the PIN verifies against the stored hash with the
    // generated pepper file, and is not in the audit log.
    let (pepper, _) = Pepper::resolve(None, None, &data).unwrap();
    let store = Store::open(&data).unwrap();
    let user = store
        .user_by_conference(&ConferenceId::parse(&conference).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(user.id, UserId("amos.marble@contoso.com".into()));
    assert!(user.requires_pin);
    assert!(pin::verify(
        &Pin::new(pin.clone()),
        user.pin_hash.as_deref().unwrap(),
        &pepper
    ));
    let audit = store.audit_tail(10).unwrap();
    let actions: Vec<_> = audit.iter().map(|e| (e.actor(), e.action())).collect();
    assert_eq!(actions, [("cli", "user.create"); 3]);
    assert!(
        audit[1].outcome().starts_with("refused: user "),
        "{audit:?}"
    );
    for e in &audit {
        assert!(!e.outcome().contains(&pin) && !e.outcome().contains(&other_pin));
    }
}

#[test]
fn a_store_held_by_another_process_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _held = Store::open(&data).unwrap();
    for args in [
        &["users", "add", "a@example.com", "--email", "a@example.com"][..],
        &["users", "list"][..],
    ] {
        let out = pinbridge(&data, args);
        assert!(!out.status.success(), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("is in use by another process")
                && stderr.contains(&format!("pid {}", std::process::id()))
                && stderr.contains("stop the running pinbridge server"),
            "{stderr}"
        );
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn malformed_email_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = pinbridge(&data, &["users", "add", "bob", "--email", "bob@"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("malformed email address \"bob@\""),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn the_pepper_from_the_environment_is_used_and_a_different_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let run = |id: &str, pepper: &str| {
        Command::new(env!("CARGO_BIN_EXE_pinbridge"))
            .args(["users", "add", id, "--email", id, "--data-dir"])
            .arg(&data)
            .env("PINBRIDGE_PIN_PEPPER", pepper)
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap()
    };
    let out = run("a@example.com", "first pepper, long enough");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !data.join("pepper").exists(),
        "no file when the environment has one"
    );
    let out = run("b@example.com", "second pepper, long enough");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("PIN pepper differs"),
        "{}",
        text(&out.stderr)
    );
}
