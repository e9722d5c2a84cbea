//! `sipp-scenarios/basic-call.xml` — first checked against SIPp's own UAS (so a failure
//! against pinbridge is pinbridge's), then run 50 times against the real binary.

mod common;

use std::time::Duration;

use common::sip::Transport;
use common::sipp::{self, SippRun};
use common::{PortBlock, Server, SipClient};

/// SIPp's own limit for a whole run (`-timeout`, with `-timeout_error`).
const SIPP_TIMEOUT: Duration = Duration::from_secs(60);
/// Our limit on the SIPp process, above its own.
const PROCESS_LIMIT: Duration = Duration::from_secs(90);

/// Runs basic-call.xml as a UAC against `target` and returns the outcome.
fn run_basic_call(
    target: std::net::SocketAddr,
    ports: &PortBlock,
    calls: u32,
    rate: u32,
    limit: u32,
) -> sipp::SippOutcome {
    let args = sipp::uac_args(
        &sipp::scenario("basic-call.xml"),
        target,
        Transport::Udp,
        ports.aux_port(20),
        ports.aux_port(30),
        calls,
        rate,
        limit,
        SIPP_TIMEOUT,
    );
    SippRun::spawn("sipp basic-call.xml", &args).finish(PROCESS_LIMIT)
}

fn assert_all_calls_succeeded(outcome: &sipp::SippOutcome, calls: u64) {
    assert!(
        outcome.status.success(),
        "SIPp reported failed calls (exit status is 0 only when all succeed)\n{}",
        outcome.report()
    );
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

/// The scenario's normal path (INVITE/180/200/ACK/pause/BYE/200) against `sipp -sn uas`.
#[test]
fn basic_call_scenario_completes_against_sipp_uas() {
    let ports = PortBlock::reserve();
    let uas_port = ports.aux_port(0);
    let uas = sipp::start_uas(
        Transport::Udp,
        uas_port,
        ports.aux_port(10),
        5,
        SIPP_TIMEOUT,
    );
    let target = format!("127.0.0.1:{uas_port}").parse().unwrap();
    let outcome = run_basic_call(target, &ports, 5, 5, 5);
    assert_all_calls_succeeded(&outcome, 5);
    let uas = uas.finish(PROCESS_LIMIT);
    assert!(uas.status.success(), "{}", uas.report());
    assert_eq!(uas.stat("SuccessfulCall(C)"), Some(5), "{}", uas.report());
}

/// The scenario's other path: the far end hangs up during the pause, the scenario answers
/// the BYE and still counts the call as successful.
#[test]
fn basic_call_scenario_answers_a_bye_from_the_far_end() {
    let ports = PortBlock::reserve();
    let uas_port = ports.aux_port(0);
    let hangup = sipp::fixture("uas-hangup.xml");
    let uas = sipp::start_uas_scenario(
        &["-sf", &hangup.display().to_string()],
        Transport::Udp,
        uas_port,
        ports.aux_port(10),
        3,
        SIPP_TIMEOUT,
        &[],
    );
    let target = format!("127.0.0.1:{uas_port}").parse().unwrap();
    let outcome = run_basic_call(target, &ports, 3, 3, 3);
    assert_all_calls_succeeded(&outcome, 3);
    let uas = uas.finish(PROCESS_LIMIT);
    assert!(uas.status.success(), "{}", uas.report());
    assert_eq!(uas.stat("SuccessfulCall(C)"), Some(3), "{}", uas.report());
}

/// 50 calls at 10 calls/s, up to 50 at once, against the real server: every one answered,
/// acknowledged, held for 3 s while the greeting plays, and hung up cleanly. Afterwards the
/// server still answers and shuts down cleanly.
#[test]
fn sipp_basic_call_50_calls_against_pinbridge() {
    let mut server = Server::start();
    let ports = PortBlock::reserve();
    let outcome = run_basic_call(server.sip_addr(), &ports, 50, 10, 50);
    assert_all_calls_succeeded(&outcome, 50);

    let mut client = SipClient::udp(server.sip_addr());
    let mut options = client.options();
    let ok = client.expect_final(&mut options, "OPTIONS", Duration::from_secs(5));
    assert_eq!(ok.status(), Some(200), "server unwell after the run");

    let status = server.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
}
