//! SIPp against the real binary: `sipp-scenarios/lobby-caller.xml` puts 20 callers in the
//! lobby of an organizer's conference (sending sip-tester's `g711a.pcap` as they wait), then
//! `sipp-scenarios/organizer.xml` dials the same conference and enters `*`, the PIN and `#`
//! with SIPp 3.6's `play_dtmf` (RFC 2833 events on payload type 96). The meeting starts, the
//! lobby joins it, and the server reports 21 participants; both SIPp runs finish with zero
//! failed calls. `organizer-info.xml` does the same with the keys as SIP INFO
//! (`application/dtmf-relay`), one INFO per key, each answered 200. `anonymous-caller.xml` is checked to wait in the lobby and never start a
//! meeting, even for an organizer who needs no PIN.

mod common;

use std::time::Duration;

use common::sip::Transport;
use common::sipp::{self, SippOutcome, SippRun};
use common::{PortBlock, Server, wait_until};

/// SIPp's own limit for a run (`-timeout`, with `-timeout_error`).
const SIPP_TIMEOUT: Duration = Duration::from_secs(90);
/// Our limit on a SIPp process, above its own.
const PROCESS_LIMIT: Duration = Duration::from_secs(120);
/// How long the server may take to get the callers to where we wait for them.
const STEP_WAIT: Duration = Duration::from_secs(40);
const LOBBY_CALLERS: u32 = 20;

/// `sipp -sf SCENARIO` as a UAC towards the server, with extra arguments. Its SIP port is
/// aux port `port_slot` and its media port aux port `port_slot + 20` (SIPp also binds the
/// three above that one, so slots are five apart).
fn spawn(
    server: &Server,
    scenario: &str,
    ports: &PortBlock,
    port_slot: u16,
    calls: u32,
    extra: &[&str],
    files: &[(&str, &[u8])],
) -> SippRun {
    let mut args = sipp::uac_args(
        &sipp::scenario(scenario),
        server.sip_addr(),
        Transport::Udp,
        ports.aux_port(port_slot),
        ports.aux_port(port_slot + 20),
        calls,
        calls,
        calls,
        SIPP_TIMEOUT,
    );
    args.extend(extra.iter().map(|s| s.to_string()));
    SippRun::spawn_with_files(&format!("sipp {scenario}"), &args, files)
}

fn assert_all_succeeded(outcome: &SippOutcome, calls: u64) {
    assert!(outcome.status.success(), "{}", outcome.report());
    assert_eq!(
        outcome.stat("SuccessfulCall(C)"),
        Some(calls),
        "{}",
        outcome.report()
    );
    assert_eq!(
        outcome.stat("FailedCall(C)"),
        Some(0),
        "{}",
        outcome.report()
    );
}

fn wait_log_count(server: &Server, needles: &[&str], n: usize) {
    let ok = wait_until(STEP_WAIT, Duration::from_millis(100), || {
        server.log_lines_with(needles).len() >= n
    });
    assert!(
        ok,
        "the server logged {:?} {} times, want {n}",
        needles,
        server.log_lines_with(needles).len()
    );
}

#[test]
fn twenty_lobby_callers_then_the_organizer_make_a_meeting_of_21() {
    let server = Server::builder()
        .organizer("amos.marble@contoso.com", &[])
        .log_level("info")
        .start();
    let org = server.organizer("amos.marble@contoso.com").clone();
    let ports = PortBlock::reserve();

    // 20 callers dial the conference ID and stay 30 s.
    let lobby = spawn(
        &server,
        "lobby-caller.xml",
        &ports,
        0,
        LOBBY_CALLERS,
        &["-s", &org.conference, "-d", "30000"],
        &[],
    );
    wait_log_count(
        &server,
        &["waiting in the lobby", "pinbridge::ivr"],
        LOBBY_CALLERS as usize,
    );
    assert!(server.log_lines_with(&["joined the meeting"]).is_empty());

    // The organizer, from an injection file: conference ID and PIN.
    let inf = format!("SEQUENTIAL\n{};{};\n", org.conference, org.pin);
    let organizer = spawn(
        &server,
        "organizer.xml",
        &ports,
        5,
        1,
        &["-inf", "organizer.csv", "-d", "10000"],
        &[("organizer.csv", inf.as_bytes())],
    );
    wait_log_count(&server, &["joined the meeting", "participants=21"], 1);
    assert_eq!(
        server.log_lines_with(&["joined the meeting"]).len(),
        LOBBY_CALLERS as usize + 1,
        "everyone in the lobby joined, and the organizer"
    );

    assert_all_succeeded(&organizer.finish(PROCESS_LIMIT), 1);
    assert_all_succeeded(&lobby.finish(PROCESS_LIMIT), u64::from(LOBBY_CALLERS));
    wait_log_count(&server, &["meeting ended", "reason=LastLeft"], 1);
    let logs = server.logs();
    assert!(
        !logs.contains(&format!("={}", org.pin)) && !logs.contains(&format!(" {} ", org.pin)),
        "the PIN is in the server log"
    );
}

#[test]
fn an_organizer_keying_by_sip_info_starts_the_meeting_for_the_lobby() {
    let server = Server::builder()
        .organizer("mona.kane@contoso.com", &[])
        .log_level("info")
        .start();
    let org = server.organizer("mona.kane@contoso.com").clone();
    let ports = PortBlock::reserve();
    const CALLERS: u32 = 3;
    let lobby = spawn(
        &server,
        "lobby-caller.xml",
        &ports,
        0,
        CALLERS,
        &["-s", &org.conference, "-d", "20000"],
        &[],
    );
    wait_log_count(
        &server,
        &["waiting in the lobby", "pinbridge::ivr"],
        CALLERS as usize,
    );

    let inf = format!("SEQUENTIAL\n{};{};\n", org.conference, org.pin);
    let organizer = spawn(
        &server,
        "organizer-info.xml",
        &ports,
        5,
        1,
        &["-inf", "organizer.csv", "-d", "5000"],
        &[("organizer.csv", inf.as_bytes())],
    );
    wait_log_count(&server, &["joined the meeting", "participants=4"], 1);
    let organizer = organizer.finish(PROCESS_LIMIT);
    assert_all_succeeded(&organizer, 1);
    // One INFO for `*`, one per PIN key, one for `#`; every one answered 200.
    let infos = org.pin.len() as u64 + 2;
    assert_eq!(
        organizer.stat("Retransmissions(C)"),
        Some(0),
        "{}",
        organizer.report()
    );
    // The scenario goes on only past a 200 to each INFO, so success means every key was
    // answered; with no retransmissions, each was sent once.
    assert_eq!(
        organizer.messages.matches("INFO sip:").count() as u64,
        infos,
        "{}",
        organizer.report()
    );
    assert_all_succeeded(&lobby.finish(PROCESS_LIMIT), u64::from(CALLERS));
    let logs = server.logs();
    assert!(
        !logs.contains(&format!("={}", org.pin)) && !logs.contains(&format!(" {} ", org.pin)),
        "the PIN is in the server log"
    );
}

#[test]
fn anonymous_sipp_callers_wait_in_the_lobby_even_without_a_pin_requirement() {
    let server = Server::builder()
        .organizer("lee.gu@contoso.com", &["--no-pin-required"])
        .log_level("info")
        .start();
    let org = server.organizer("lee.gu@contoso.com").clone();
    let ports = PortBlock::reserve();
    let anonymous = spawn(
        &server,
        "anonymous-caller.xml",
        &ports,
        0,
        3,
        &["-s", &org.conference, "-d", "8000"],
        &[],
    );
    wait_log_count(&server, &["waiting in the lobby", "pinbridge::ivr"], 3);
    assert_all_succeeded(&anonymous.finish(PROCESS_LIMIT), 3);
    assert!(server.log_lines_with(&["joined the meeting"]).is_empty());
    assert_eq!(
        server
            .log_lines_with(&["incoming call", "anonymous=true"])
            .len(),
        3
    );
}
