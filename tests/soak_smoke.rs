//! Issue 7, timers: dead calls are reclaimed, so no load leaks calls or ports. A short,
//! bounded soak against the real binary: waves of good calls mixed with dead ones — a caller
//! whose ACK never comes (its RTP does), one that sends no RTP, and (both of those) one that
//! never answers the server's BYE — then `GET /api/stats` must show no call, SIP leg, media session or
//! RTP port left.
//!
//! Reclaiming runs on the RFC 3261 timers (T1 = 500 ms, not configurable): no ACK → BYE after
//! 64·T1 = 32 s (§13.3.1.4); an unanswered BYE → Timer F, 64·T1 = 32 s (§17.1.2.2). The RTP
//! timeout is set to 2 s here. So the slowest dead call (no ACK, BYE unanswered) is gone
//! after about 64 s; the test allows 100.
//!
//! `bench/soak.sh` is the long version (10 minutes of loadgen waves, with RSS).

mod common;

use std::time::{Duration, Instant};

use common::stats::{HELD, gauge, stats, wait_idle};
use common::{RtpReceiver, SIP_STEP, SdpOffer, Server, Signal, SipClient, dial, hang_up};

const WAVES: usize = 3;
const GOOD_PER_WAVE: usize = 4;
const NO_ACK_PER_WAVE: usize = 2;
const NO_RTP_PER_WAVE: usize = 2;
/// Two chained 64·T1 timers (32 s each) and slack for a loaded machine.
const RECLAIM: Duration = Duration::from_secs(100);

/// A caller whose ACK never arrives: it takes the 200 and sends RTP (so the RTP timeout
/// does not end the call first), but its SIP side is gone — no ACK, and nobody to answer the
/// server's BYE. Returns its RTP sender, which must outlive the reclaiming.
fn no_ack_call(server: &Server) -> common::rtp::RtpSender {
    let rtp = RtpReceiver::bind();
    let mut client = SipClient::udp(server.sip_addr());
    let mut call = client.invite("1000", &SdpOffer::g711(rtp.addr()));
    let ok = client.expect_final(&mut call, "INVITE", SIP_STEP);
    assert_eq!(ok.status(), Some(200), "{:?}", ok.start_line);
    let media = ok
        .sdp()
        .ok()
        .and_then(|a| a.audio_addr())
        .expect("an audio address in the 200");
    rtp.start_sending(media, 0, Signal::Silence, RECLAIM + Duration::from_secs(10))
}

/// A caller that completes the call and then vanishes: no RTP, no answer to the BYE.
fn no_rtp_call(server: &Server) {
    let rtp = RtpReceiver::bind();
    let mut client = SipClient::udp(server.sip_addr());
    dial(&mut client, "1000", &SdpOffer::g711(rtp.addr()));
}

/// A well-behaved call: talks for a while, then hangs up.
fn good_call(server: &Server) -> (SipClient, common::Dialed, common::rtp::RtpSender) {
    let rtp = RtpReceiver::bind();
    let mut client = SipClient::udp(server.sip_addr());
    let d = dial(&mut client, "1000", &SdpOffer::g711(rtp.addr()));
    let sender = rtp.start_sending(
        d.media,
        d.payload_type,
        Signal::Silence,
        Duration::from_secs(30),
    );
    (client, d, sender)
}

#[test]
fn dead_calls_are_reclaimed_and_nothing_is_left_held() {
    let server = Server::builder()
        .arg("--rtp-timeout")
        .arg("2")
        .log_level("info")
        .start();
    let started = Instant::now();
    let mut most_held = 0;
    let mut unacked = Vec::new();
    for _ in 0..WAVES {
        let good: Vec<_> = (0..GOOD_PER_WAVE).map(|_| good_call(&server)).collect();
        for _ in 0..NO_ACK_PER_WAVE {
            unacked.push(no_ack_call(&server));
        }
        for _ in 0..NO_RTP_PER_WAVE {
            no_rtp_call(&server);
        }
        most_held = most_held.max(gauge(&stats(&server), "media_sessions"));
        std::thread::sleep(Duration::from_secs(1));
        for (mut client, mut d, sender) in good {
            drop(sender);
            hang_up(&mut client, &mut d.call);
        }
    }
    let per_wave = GOOD_PER_WAVE + NO_ACK_PER_WAVE + NO_RTP_PER_WAVE;
    assert!(
        most_held as usize >= per_wave,
        "a wave's calls must all have been up at once (most held: {most_held})"
    );

    let (last, idle) = wait_idle(&server, RECLAIM);
    drop(unacked);
    assert!(
        idle,
        "after {:?} the server still holds {}: {last}",
        started.elapsed(),
        HELD.map(|g| format!("{g}={}", gauge(&last, g))).join(" ")
    );
    eprintln!(
        "all {} calls reclaimed {:?} after the first; stats {last}",
        WAVES * per_wave,
        started.elapsed()
    );
    // Each dead kind took its path: the no-ACK BYE and the RTP-timeout BYE.
    let no_ack = server
        .log_lines_with(&["no ACK for 2xx within 64*T1"])
        .len();
    assert_eq!(no_ack, WAVES * NO_ACK_PER_WAVE, "no-ACK BYEs");
    let no_rtp = server
        .log_lines_with(&["no RTP received; hanging up"])
        .len();
    assert_eq!(no_rtp, WAVES * NO_RTP_PER_WAVE, "RTP-timeout BYEs");
    // And the server still takes calls.
    let (mut client, mut d, sender) = good_call(&server);
    drop(sender);
    hang_up(&mut client, &mut d.call);
}
