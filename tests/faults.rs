//! Issue 7, faults: a panic while handling one call — in the signalling task or in a media
//! worker — is contained to that call. The call is hung up and everything it held (media
//! session, RTP port, SIP leg) is released; every other call goes on without a gap and the
//! server keeps answering new ones.
//!
//! The panics are real ones in the real binary, asked for through the test-only
//! `fault-injection` hooks (`src/fault.rs`; the feature is on in test builds only): a
//! Request-URI user (`fault-panic-on-invite`, `fault-panic-on-ack`) for signalling, an RTP
//! payload for media. With one media worker (`--media-workers 1`), the bystander call shares
//! the panicking session's worker, so a worker that died with it would silence the bystander.
//!
//! Without containment these tests fail: a signalling panic ends the process (no BYE, no new
//! calls), and a media panic ends the worker (the bystander's stream stops).

mod common;

use std::time::Duration;

use common::rtp::RtpPacket;
use common::stats::{gauge, stats, wait_idle};
use common::{Dialed, RtpReceiver, SIP_STEP, SdpOffer, Server, Signal, SipClient, dial, hang_up};
use pinbridge::fault::{MEDIA_PANIC_PAYLOAD, SignallingFault, signalling_user};

/// Longest silence a bystander call may hear while another call fails next to it. The
/// server sends every 20 ms; this allows for a loaded 2-core machine, not for a lost call.
const MAX_GAP: Duration = Duration::from_millis(300);
/// Time for a released call to be gone from every gauge.
const RELEASE: Duration = Duration::from_secs(10);

fn server() -> Server {
    Server::builder()
        .arg("--media-workers")
        .arg("1")
        .log_level("info")
        .start()
}

/// A call that is up, with the server's RTP arriving at `rtp`.
struct Up {
    client: SipClient,
    rtp: RtpReceiver,
    d: Dialed,
}

fn call(server: &Server, user: &str) -> Up {
    let rtp = RtpReceiver::bind();
    let mut client = SipClient::udp(server.sip_addr());
    let d = dial(&mut client, user, &SdpOffer::g711(rtp.addr()));
    Up { client, rtp, d }
}

/// Waits for the first packets of the server's stream.
fn flowing(up: &mut Up) {
    let got = up
        .rtp
        .recv_until(Duration::from_secs(5), |p: &[RtpPacket]| p.len() >= 5);
    assert!(got.len() >= 5, "only {} RTP packets", got.len());
}

/// The longest time between two packets.
fn largest_gap(packets: &[RtpPacket]) -> Duration {
    packets
        .windows(2)
        .map(|w| w[1].received_at.duration_since(w[0].received_at))
        .max()
        .unwrap_or_default()
}

/// The bystander heard a steady stream over `window`.
fn assert_steady(up: &mut Up, window: Duration, what: &str) {
    let packets = up.rtp.recv_for(window);
    let want = (window.as_millis() / 20) as usize;
    assert!(
        packets.len() * 10 >= want * 8,
        "{what}: the bystander got {} packets in {window:?}, want about {want}",
        packets.len()
    );
    let gap = largest_gap(&packets);
    assert!(
        gap <= MAX_GAP,
        "{what}: the bystander's stream stopped for {gap:?}"
    );
}

/// The server still takes a new call and streams to it, then lets it go.
fn still_serving(server: &Server) {
    let mut fresh = call(server, "1000");
    flowing(&mut fresh);
    hang_up(&mut fresh.client, &mut fresh.d.call);
}

/// Every call hung up: nothing is held, and `faults` panics were counted.
fn assert_released(server: &Server, faults: u64) {
    let (last, idle) = wait_idle(server, RELEASE);
    assert!(idle, "the server still holds something: {last}");
    assert_eq!(gauge(&last, "faults_contained"), faults, "{last}");
}

#[test]
fn a_signalling_panic_after_the_ack_hangs_up_that_call_only() {
    let server = server();
    let mut bystander = call(&server, "1000");
    flowing(&mut bystander);

    let user = signalling_user(SignallingFault::OnAck);
    let mut failing = call(&server, user);
    // The call had a confirmed dialog and a media session: it gets a BYE.
    failing
        .client
        .answer_bye(&failing.d.call, Duration::from_secs(5));
    assert!(
        server.wait_for_log("handling the call panicked", SIP_STEP),
        "no log line for the contained panic"
    );
    let logged = server.log_lines_with(&["handling the call panicked"]);
    assert!(
        logged
            .iter()
            .any(|l| l.contains(&failing.d.call.call_id) && l.contains("fault injection")),
        "the panic must be logged with the call's id: {logged:?}"
    );
    assert_steady(&mut bystander, Duration::from_secs(2), "after the panic");
    let during = stats(&server);
    assert_eq!(gauge(&during, "calls"), 1, "{during}");
    assert_eq!(gauge(&during, "media_sessions"), 1, "{during}");

    still_serving(&server);
    hang_up(&mut bystander.client, &mut bystander.d.call);
    assert_released(&server, 1);
}

#[test]
fn a_signalling_panic_on_the_invite_refuses_that_call_only() {
    let server = server();
    let mut bystander = call(&server, "1000");
    flowing(&mut bystander);

    let mut client = SipClient::udp(server.sip_addr());
    let rtp = RtpReceiver::bind();
    let user = signalling_user(SignallingFault::OnInvite);
    let mut invite = client.invite(user, &SdpOffer::g711(rtp.addr()));
    let last = client.expect_final(&mut invite, "INVITE", SIP_STEP);
    let status = last.status().unwrap_or(0);
    assert!(
        (400..700).contains(&status),
        "an INVITE whose handling panicked must get a final error, got {:?}",
        last.start_line
    );
    assert!(server.wait_for_log("handling the call panicked", SIP_STEP));
    let logged = server.log_lines_with(&["handling the call panicked"]);
    assert!(
        logged.iter().any(|l| l.contains(&invite.call_id)),
        "the panic must be logged with the call's id: {logged:?}"
    );
    assert_steady(&mut bystander, Duration::from_secs(1), "after the panic");

    still_serving(&server);
    hang_up(&mut bystander.client, &mut bystander.d.call);
    assert_released(&server, 1);
}

#[test]
fn a_media_panic_drops_that_session_only_and_the_call_is_hung_up() {
    let server = server();
    let mut bystander = call(&server, "1000");
    flowing(&mut bystander);
    // The bystander talks too, so its receive path runs in the same ticks as the panic.
    let talking = bystander.rtp.start_sending(
        bystander.d.media,
        bystander.d.payload_type,
        Signal::Silence,
        Duration::from_secs(20),
    );

    let mut failing = call(&server, "1000");
    flowing(&mut failing);
    let pt = failing.d.payload_type;
    let poison = RtpPacket::build(pt, false, 1, 160, 0xfa17, MEDIA_PANIC_PAYLOAD);
    failing.rtp.send_to(failing.d.media, &poison);
    failing
        .client
        .answer_bye(&failing.d.call, Duration::from_secs(5));
    assert!(
        server.wait_for_log("media session panicked", SIP_STEP),
        "no log line for the contained media panic"
    );
    // Its stream stops: the worker dropped the session and its socket.
    assert!(
        failing
            .rtp
            .wait_quiet(Duration::from_millis(500), Duration::from_secs(3))
            .is_ok(),
        "the failed session still sends"
    );
    assert_steady(
        &mut bystander,
        Duration::from_secs(2),
        "after the media panic",
    );

    still_serving(&server);
    drop(talking);
    hang_up(&mut bystander.client, &mut bystander.d.call);
    assert_released(&server, 1);
}
