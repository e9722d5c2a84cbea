//! Issue 7's per-source brute-force limits, end to end against the real `pinbridge` binary
//! over real sockets. 127.0.0.1, 127.0.0.2 and 127.0.0.3 are separate callers on Linux
//! loopback. Limits are set small (`--source-pin-failures 4 --source-id-failures 4`) so a
//! source is blocked within a few calls; the defaults are argued in SECURITY.md.
//!
//! What is checked: failures counted across calls and conferences block the source; a
//! blocked source's PIN (even the right one) is refused without argon2 and its caller hung
//! up; its next INVITE gets `403` with a Warning before any media port is taken; other
//! sources still get in; a trusted trunk is keyed by caller number; the block survives a
//! restart; the admin API and CLI list and clear it; every event is audited; no PIN is in
//! the log.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::Duration;

use common::call_log::{STEP_WAIT, assert_not_logged, wait_call_log};
use common::caller::Caller;
use common::{Server, SipClient};
use serde_json::Value;

/// The "not correct" prompt (2.5 s), after which the PIN prompt takes keys again.
const SORRY_PROMPT: Duration = Duration::from_millis(3000);
/// The "not recognised" prompt (3.5 s), after which the ID prompt takes keys again.
const ID_UNKNOWN_PROMPT: Duration = Duration::from_millis(4000);

/// Small per-source limits, so a few calls reach them.
fn small_limits(b: common::server::ServerBuilder) -> common::server::ServerBuilder {
    b.arg("--source-pin-failures")
        .arg("4")
        .arg("--source-id-failures")
        .arg("4")
}

const FIRST: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const SECOND: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const TRUNK: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

/// Dials `user` from `ip` (SIP; RTP from 127.0.0.1), optionally as caller `number` (From
/// and P-Asserted-Identity); `Err` with the final response when it is not 200.
fn try_dial(
    server: &Server,
    ip: IpAddr,
    user: &str,
    number: Option<&str>,
) -> Result<Caller, common::SipMessage> {
    let client = SipClient::udp_from(ip, server.sip_addr());
    let from = number.map(|n| format!("sip:{n}@{ip}"));
    let pai = number.map(|n| format!("<sip:{n}@carrier.example>"));
    let headers: Vec<(&str, &str)> = pai
        .iter()
        .map(|p| ("P-Asserted-Identity", p.as_str()))
        .collect();
    Caller::try_dial(client, user, from.as_deref(), &headers)
}

fn dial(server: &Server, ip: IpAddr, user: &str, number: Option<&str>) -> Caller {
    try_dial(server, ip, user, number)
        .unwrap_or_else(|r| panic!("INVITE from {ip} answered {:?}", r.start_line))
}

/// Asserts an INVITE from `ip` (as `number`) is refused with 403 and the Warning.
fn assert_refused(server: &Server, ip: IpAddr, user: &str, number: Option<&str>) {
    match try_dial(server, ip, user, number) {
        Ok(_) => panic!("a blocked source ({ip} {number:?}) got in"),
        Err(r) => {
            assert_eq!(r.status(), Some(403), "{}", r.to_text());
            assert!(
                r.reason()
                    .unwrap_or_default()
                    .contains("Too Many Failed Attempts"),
                "{}",
                r.to_text()
            );
            let warning = r.header("Warning").unwrap_or_default().to_string();
            assert!(
                warning.starts_with("399 pinbridge \"too many failed conference IDs or PINs"),
                "{warning}"
            );
        }
    }
}

fn api(server: &Server, method: &str, path: &str) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let req = ureq::http::Request::builder()
        .method(method)
        .uri(format!("{}{path}", server.http_url()))
        .header("Authorization", format!("Bearer {}", server.admin_token()))
        .body(String::new())
        .unwrap();
    let mut resp = agent.run(req).unwrap();
    let status = resp.status().as_u16();
    let raw = resp.body_mut().read_to_string().unwrap();
    let body = if raw.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&raw).unwrap()
    };
    (status, body)
}

fn audit_actions(server: &Server) -> Vec<(String, String, String)> {
    let (status, body) = api(server, "GET", "/api/audit?limit=1000");
    assert_eq!(status, 200);
    body.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (s("action"), s("target"), s("outcome"))
        })
        .collect()
}

fn blocked_sources(server: &Server) -> Vec<String> {
    let (status, body) = api(server, "GET", "/api/source-blocks");
    assert_eq!(status, 200);
    body.as_array()
        .unwrap()
        .iter()
        .map(|b| b["source"].as_str().unwrap().to_string())
        .collect()
}

/// Wrong PINs unlike the real one and above 65535 (no port number looks like them).
fn wrong_pins(real: &str, n: u32) -> Vec<String> {
    let real: u32 = real.parse().unwrap();
    (1..=n)
        .map(|i| 65_536 + (real + 1_111 * i) % 34_464)
        .map(|p| if p == real { p + 1 } else { p })
        .map(|p| p.to_string())
        .collect()
}

#[test]
fn wrong_pins_from_one_source_across_conferences_block_it_but_not_others() {
    let root = tempfile::tempdir().unwrap();
    let mut server = small_limits(Server::builder())
        .data_root(root.path())
        .organizer("amos.marble@contoso.com", &[])
        .organizer("cora.lane@contoso.com", &[])
        .log_level("info")
        .start();
    let a = server.organizer("amos.marble@contoso.com").clone();
    let b = server.organizer("cora.lane@contoso.com").clone();
    let wrong = wrong_pins(&a.pin, 4);

    // A caller from 127.0.0.1 already waiting in conference B's lobby (before any block).
    let mut waiting = dial(&server, FIRST, &b.conference, None);
    wait_call_log(&server, waiting.call_id(), "waiting in the lobby", 1);

    // Call 1, conference A: three wrong PINs, then the per-call limit hangs up.
    let mut first = dial(&server, FIRST, &a.conference, None);
    wait_call_log(&server, first.call_id(), "waiting in the lobby", 1);
    first.press("*");
    wait_call_log(&server, first.call_id(), "organizer PIN entry", 1);
    for (n, pin) in wrong[..3].iter().enumerate() {
        first.press(&format!("{pin}#"));
        wait_call_log(&server, first.call_id(), "organizer PIN wrong", n + 1);
        std::thread::sleep(SORRY_PROMPT);
    }
    wait_call_log(&server, first.call_id(), "too many wrong PINs", 1);
    first.expect_hung_up(STEP_WAIT);

    // Call 2, conference B: the 4th wrong PIN from this source blocks it; hung up at once.
    let mut second = dial(&server, FIRST, &b.conference, None);
    wait_call_log(&server, second.call_id(), "waiting in the lobby", 1);
    second.press("*");
    wait_call_log(&server, second.call_id(), "organizer PIN entry", 1);
    second.press(&format!("{}#", wrong[3]));
    wait_call_log(&server, second.call_id(), "caller's source is blocked", 1);
    second.expect_hung_up(STEP_WAIT);

    // The caller who was already in the lobby keys conference B's right PIN: refused
    // without argon2 (nothing verified, a `source.refused` audit entry), and hung up.
    waiting.press("*");
    wait_call_log(&server, waiting.call_id(), "organizer PIN entry", 1);
    waiting.press(&format!("{}#", b.pin));
    wait_call_log(&server, waiting.call_id(), "caller's source is blocked", 1);
    waiting.expect_hung_up(STEP_WAIT);
    assert!(
        server
            .log_lines_with(&["organizer PIN verified"])
            .is_empty()
    );

    // New calls from 127.0.0.1 are refused before any media is set up.
    let opened = server.log_lines_with(&["media negotiated"]).len();
    for _ in 0..3 {
        assert_refused(&server, FIRST, &a.conference, None);
    }
    assert_eq!(server.log_lines_with(&["media negotiated"]).len(), opened);

    // 127.0.0.2 has its own budget: the right PIN starts conference A's meeting.
    let mut other = dial(&server, SECOND, &a.conference, None);
    wait_call_log(&server, other.call_id(), "waiting in the lobby", 1);
    other.press("*");
    wait_call_log(&server, other.call_id(), "organizer PIN entry", 1);
    other.press(&format!("{}#", a.pin));
    wait_call_log(&server, other.call_id(), "organizer PIN verified", 1);
    other.hang_up();

    // Audited: 4 failures, the block, the refused PIN, one entry for the three refused calls.
    let log = audit_actions(&server);
    let count = |action: &str| log.iter().filter(|(a, _, _)| a == action).count();
    assert_eq!(count("pin.failure"), 4, "{log:?}");
    assert_eq!(count("source.block"), 1, "{log:?}");
    assert_eq!(count("source.refused"), 2, "{log:?}");
    assert!(
        log.iter()
            .any(|(a, t, o)| a == "source.block" && t == "127.0.0.1" && o.contains("4 wrong PINs")),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|(a, _, o)| a == "source.refused" && o.contains("organizer PIN not checked")),
        "{log:?}"
    );
    assert_eq!(blocked_sources(&server), ["127.0.0.1"]);
    let (_, blocks) = api(&server, "GET", "/api/source-blocks");
    assert_eq!(blocks[0]["reason"], "pin_failures");
    assert_eq!(blocks[0]["refused_calls"], 3);
    for pin in wrong.iter().chain([&a.pin, &b.pin]) {
        assert_not_logged(&server, pin);
    }

    // The block is in the store: it survives a restart.
    server.terminate();
    drop(server);
    let server = small_limits(Server::builder())
        .data_root(root.path())
        .log_level("info")
        .start();
    assert_refused(&server, FIRST, &a.conference, None);
    assert_eq!(blocked_sources(&server), ["127.0.0.1"]);

    // The administrator clears it (CLI) and the source can call again.
    let out = Command::new(env!("CARGO_BIN_EXE_pinbridge"))
        .args(["admin", "source-blocks", "--server", &server.http_url()])
        .arg("--data-dir")
        .arg(server.data_dir())
        .env_remove("PINBRIDGE_ADMIN_TOKEN")
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        listing.contains("127.0.0.1") && listing.contains("wrong PINs"),
        "{listing}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_pinbridge"))
        .args(["admin", "clear-source-block", "127.0.0.1"])
        .args(["--server", &server.http_url()])
        .arg("--data-dir")
        .arg(server.data_dir())
        .env_remove("PINBRIDGE_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(blocked_sources(&server).is_empty());
    let back = dial(&server, FIRST, &a.conference, None);
    wait_call_log(&server, back.call_id(), "waiting in the lobby", 1);
    back.hang_up();
    let log = audit_actions(&server);
    assert!(
        log.iter()
            .any(|(a, t, _)| a == "source.block_clear" && t == "127.0.0.1"),
        "{log:?}"
    );
    // Clearing again: not blocked (404); nonsense: 400; both problem JSON.
    let (status, body) = api(&server, "DELETE", "/api/source-blocks/127.0.0.1");
    assert_eq!(status, 404, "{body}");
    let (status, body) = api(&server, "DELETE", "/api/source-blocks/caller%3A%3Cx%3E");
    assert_eq!(status, 400, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("not a source"),
        "{body}"
    );
}

#[test]
fn unknown_conference_ids_block_a_source_and_a_trusted_trunk_is_keyed_by_caller() {
    let server = small_limits(Server::builder())
        .organizer("amos.marble@contoso.com", &[])
        .arg("--trusted-trunk")
        .arg("127.0.0.3")
        .log_level("info")
        .start();
    let a = server.organizer("amos.marble@contoso.com").clone();

    // Keys unknown IDs on one call until hung up (per-call limit 3) or blocked.
    let spray = |ip: IpAddr, number: Option<&str>, ids: &[&str], end: &str| {
        let mut c = dial(&server, ip, "service", number);
        wait_call_log(&server, c.call_id(), "IVR start", 1);
        std::thread::sleep(Duration::from_millis(500));
        for (n, id) in ids.iter().enumerate() {
            c.press(&format!("{id}#"));
            if n + 1 < ids.len() {
                wait_call_log(&server, c.call_id(), "conference ID unknown", n + 1);
                std::thread::sleep(ID_UNKNOWN_PROMPT);
            }
        }
        wait_call_log(&server, c.call_id(), end, 1);
        c.expect_hung_up(STEP_WAIT);
    };

    // 127.0.0.1: three unknown IDs (the call ends), then the fourth (on a new call) blocks.
    spray(
        FIRST,
        None,
        &["1111", "2222", "3333"],
        "too many unknown conference IDs",
    );
    spray(FIRST, None, &["4444"], "caller's source is blocked");
    assert_refused(&server, FIRST, &a.conference, None);
    // 127.0.0.2 keys the right ID and waits in the lobby.
    let mut other = dial(&server, SECOND, "service", None);
    wait_call_log(&server, other.call_id(), "IVR start", 1);
    std::thread::sleep(Duration::from_millis(500));
    other.press(&format!("{}#", a.conference));
    wait_call_log(&server, other.call_id(), "waiting in the lobby", 1);
    other.hang_up();

    // Through the trusted trunk 127.0.0.3: +15550001 is blocked, +15550002 is not, and
    // neither is the trunk's address itself.
    spray(
        TRUNK,
        Some("+15550001"),
        &["1111", "2222", "3333"],
        "too many unknown conference IDs",
    );
    spray(
        TRUNK,
        Some("+15550001"),
        &["4444"],
        "caller's source is blocked",
    );
    assert_refused(&server, TRUNK, &a.conference, Some("+15550001"));
    let fine = dial(&server, TRUNK, &a.conference, Some("+15550002"));
    wait_call_log(&server, fine.call_id(), "waiting in the lobby", 1);
    fine.hang_up();
    let mut blocked = blocked_sources(&server);
    blocked.sort();
    assert_eq!(blocked, ["127.0.0.1", "caller:+15550001"]);

    let log = audit_actions(&server);
    let count = |action: &str| log.iter().filter(|(a, _, _)| a == action).count();
    assert_eq!(count("conference_id.failure"), 8, "{log:?}");
    assert_eq!(count("source.block"), 2, "{log:?}");
    assert!(
        log.iter().any(|(a, t, o)| a == "conference_id.failure"
            && t == "caller:+15550001"
            && o == "unknown conference ID (4 digits); 4 of 4 allowed within 1 h"),
        "{log:?}"
    );
    // The digits keyed as IDs are not in the audit (a PIN may be typed at the wrong prompt).
    assert!(
        !log.iter()
            .any(|(_, t, o)| t.contains("3333") || o.contains("3333"))
    );

    // The administrator unblocks the caller by number (API, percent-encoded).
    let (status, _) = api(&server, "DELETE", "/api/source-blocks/caller%3A%2B15550001");
    assert_eq!(status, 204);
    let again = dial(&server, TRUNK, &a.conference, Some("+15550001"));
    wait_call_log(&server, again.call_id(), "waiting in the lobby", 1);
    again.hang_up();
}
