//! Media renegotiation inside a call, against the real `pinbridge` binary over real sockets
//! on 127.0.0.1: hold and resume by re-INVITE (`a=sendonly`, `a=inactive`, RFC 2543
//! `c=0.0.0.0`) and by UPDATE, a move to a new media address, a codec change, the late
//! offer (INVITE without SDP, answer in the ACK), and the RTP inactivity timeout.
//!
//! Timing assertions here are protocol behaviour (the server stays quiet while held, hangs
//! up only after the configured silence), never speed: every wait is bounded generously.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use common::rtp::{self, RtpPacket};
use common::sip::{Call, Sdp};
use common::{
    Dialed, RtpReceiver, SIP_STEP, SdpOffer, Server, Signal, SipClient, SipMessage, dial, hang_up,
    reinvite,
};

/// The first RTP packet must arrive this soon after the ACK (or a resume).
const FIRST_RTP: Duration = Duration::from_secs(5);
/// Packets still in flight when a hold takes effect may arrive this long after its 200.
const GRACE: Duration = Duration::from_millis(500);
/// How long a held stream must stay silent.
const QUIET: Duration = Duration::from_secs(1);
/// Longest our own RTP sender runs in a test.
const SENDING: Duration = Duration::from_secs(30);

/// A call that is up over UDP with RTP flowing to `rtp`.
struct Up {
    client: SipClient,
    rtp: RtpReceiver,
    d: Dialed,
    /// The offer the call was set up with (re-offers derive from it).
    offer: SdpOffer,
    /// The answer last in force, for the RFC 3264 §8 origin checks.
    answer: Sdp,
    /// Packets received so far, in order.
    packets: Vec<RtpPacket>,
}

/// Dials with `offer` (whose media address is `rtp`'s) and waits for a few packets of the
/// greeting.
fn call_up(server: &Server, rtp: RtpReceiver, offer: SdpOffer) -> Up {
    let mut client = SipClient::udp(server.sip_addr());
    let d = dial(&mut client, "1000", &offer);
    let answer = d.answer.clone();
    let mut up = Up {
        client,
        rtp,
        d,
        offer,
        answer,
        packets: Vec::new(),
    };
    let got = up
        .rtp
        .recv_until(FIRST_RTP, |p: &[RtpPacket]| p.len() >= 10);
    if got.len() < 10 {
        up.client.fail(&format!(
            "only {} RTP packets at {} within {FIRST_RTP:?} of the ACK",
            got.len(),
            up.rtp.addr()
        ));
    }
    up.packets.extend(got);
    up
}

/// `o=` username, session id and address, and the version apart.
fn origin(sdp: &Sdp) -> (String, u64) {
    let o = sdp.origin.clone().expect("SDP has an o= line");
    let f: Vec<&str> = o.split_whitespace().collect();
    assert_eq!(f.len(), 6, "o= has six fields: {o:?}");
    let version = f[2]
        .parse()
        .unwrap_or_else(|_| panic!("o= version is not a number: {o:?}"));
    (
        format!("{} {} {} {} {}", f[0], f[1], f[3], f[4], f[5]),
        version,
    )
}

/// How the new offer travels inside the dialog.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Carrier {
    ReInvite,
    Update,
}

/// Sends `offer` in the dialog and returns the 200's SDP answer, after checking what every
/// answer in an established session must keep (RFC 3264 §8): the same media address and
/// port, and the same `o=` line with the version one higher.
fn renegotiate(up: &mut Up, offer: &SdpOffer, carrier: Carrier) -> Sdp {
    let (resp, answer) = match carrier {
        Carrier::ReInvite => reinvite(&mut up.client, &mut up.d.call, offer),
        Carrier::Update => {
            let body = offer.render();
            let call = &mut up.d.call;
            up.client
                .request(call, "UPDATE", &[], Some(("application/sdp", &body)));
            let resp = up.client.expect_final(call, "UPDATE", SIP_STEP);
            if resp.status() != Some(200) {
                up.client
                    .fail(&format!("UPDATE answered {:?}, want 200", resp.start_line));
            }
            let answer = resp
                .sdp()
                .unwrap_or_else(|e| up.client.fail(&format!("200 to UPDATE without SDP: {e}")));
            (resp, answer)
        }
    };
    check_answer_keeps_session(up, &resp, &answer);
    up.answer = answer.clone();
    answer
}

fn check_answer_keeps_session(up: &Up, resp: &SipMessage, answer: &Sdp) {
    // RFC 3261 §12.2.1.1 (target refresh) and RFC 3311 §5.2: the 2xx carries a Contact.
    assert!(
        resp.contact_uri().is_some(),
        "2xx to a target refresh request needs a Contact: {}",
        resp.to_text()
    );
    assert_eq!(
        answer.audio_addr(),
        Some(up.d.media),
        "the answer must keep our media address and port: {}",
        resp.to_text()
    );
    let (before, v_before) = origin(&up.answer);
    let (after, v_after) = origin(answer);
    assert_eq!(
        after, before,
        "o= must stay the same apart from its version"
    );
    assert_eq!(
        v_after,
        v_before + 1,
        "a changed answer increments the o= version by one (RFC 3264 §8)"
    );
}

/// Drains what was in flight, then asserts nothing arrives for [`QUIET`]. Returns the
/// packets drained during the grace.
fn assert_quiet(up: &mut Up, what: &str) -> Vec<RtpPacket> {
    let late = up.rtp.recv_for(GRACE);
    if let Some(p) = up.rtp.recv_one(QUIET) {
        up.client.fail(&format!(
            "{what}: RTP still arriving {GRACE:?} after the 200 (seq {}, {} in the grace)",
            p.sequence,
            late.len()
        ));
    }
    late
}

/// After a resume: the first packet starts a talkspurt (marker), the sequence continues
/// from the last packet before the hold, and the timestamp has moved on by at least the
/// time we observed silence (RFC 3550 §5.1: it follows the sampling clock, and sequence
/// numbers count packets sent).
fn assert_resumed(up: &mut Up, last_before: &RtpPacket) {
    let resumed = up
        .rtp
        .recv_until(FIRST_RTP, |p: &[RtpPacket]| p.len() >= 10);
    let Some(first) = resumed.first() else {
        up.client
            .fail(&format!("no RTP within {FIRST_RTP:?} of the resume"));
    };
    assert!(
        first.marker,
        "first packet after resume must carry the marker bit: {first:?}"
    );
    assert_eq!(first.ssrc, last_before.ssrc, "SSRC changed across the hold");
    assert_eq!(
        first.sequence,
        last_before.sequence.wrapping_add(1),
        "sequence numbers continue across a hold (no packets were sent meanwhile)"
    );
    let advanced = first.timestamp.wrapping_sub(last_before.timestamp);
    let quiet_samples = (QUIET.as_millis() as u32) * 8;
    assert!(
        (quiet_samples..u32::MAX / 2).contains(&advanced),
        "timestamp should advance by at least the {QUIET:?} of silence ({quiet_samples} \
         samples) across the hold, advanced by {advanced}"
    );
    if let Err(e) = rtp::check_stream(&resumed) {
        panic!("RTP after resume is not one clean stream: {e}");
    }
    assert!(
        resumed.iter().all(|p| p.source == up.d.media),
        "RTP after resume comes from the answered address"
    );
}

/// Hold with `hold` (applied to our original offer), expect `want_direction` in the answer
/// and silence; then resume with `a=sendrecv` and expect the stream to continue.
fn hold_then_resume(
    hold: impl Fn(SdpOffer) -> SdpOffer,
    want_direction: &str,
    carrier: Carrier,
    caller_sends: bool,
) {
    let server = Server::start();
    let rtp = RtpReceiver::bind();
    let offer = SdpOffer::g711(rtp.addr());
    let mut up = call_up(&server, rtp, offer);
    let _sender = caller_sends.then(|| {
        up.rtp
            .start_sending(up.d.media, up.d.payload_type, Signal::Silence, SENDING)
    });

    let hold_offer = hold(up.offer.next_version());
    let answer = renegotiate(&mut up, &hold_offer, carrier);
    let audio = answer.audio().expect("answer has audio");
    assert_eq!(
        audio.direction(),
        want_direction,
        "answer to a hold offer ({carrier:?}): {answer:?}"
    );
    assert_eq!(
        audio.audio_codecs(),
        vec![up.d.payload_type],
        "hold keeps the codec"
    );
    let late = assert_quiet(&mut up, "held");
    let last_before = late
        .last()
        .or(up.packets.last())
        .cloned()
        .expect("packets before the hold");

    let mut resume_offer = hold_offer.next_version().direction("sendrecv");
    resume_offer.connection = None;
    let answer = renegotiate(&mut up, &resume_offer, carrier);
    assert_eq!(answer.audio().unwrap().direction(), "sendrecv");
    assert_resumed(&mut up, &last_before);

    hang_up(&mut up.client, &mut up.d.call);
}

#[test]
fn reinvite_sendonly_holds_and_sendrecv_resumes_the_stream() {
    hold_then_resume(
        |o| o.direction("sendonly"),
        "recvonly",
        Carrier::ReInvite,
        true,
    );
}

#[test]
fn reinvite_inactive_holds_and_resume_continues_the_stream() {
    hold_then_resume(
        |o| o.direction("inactive"),
        "inactive",
        Carrier::ReInvite,
        false,
    );
}

/// RFC 2543 hold: `c=IN IP4 0.0.0.0` with the same port. RFC 3264 §8.4 keeps it
/// meaningful: we must not send to 0.0.0.0, and our answer names our own address.
#[test]
fn reinvite_with_zero_connection_address_holds_and_resume_continues() {
    hold_then_resume(
        |o| o.connection(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        "recvonly",
        Carrier::ReInvite,
        false,
    );
}

/// RFC 3311: UPDATE carries a new offer inside the dialog and the 200 the answer.
#[test]
fn update_holds_and_resumes_like_a_reinvite() {
    hold_then_resume(
        |o| o.direction("sendonly"),
        "recvonly",
        Carrier::Update,
        true,
    );
}

/// The caller moves its media to a new socket twice; each time RTP follows to the new port
/// (from the same server port, one continuing stream) and stops at the old one.
///
/// First move: the caller sends no RTP, so only the SDP can say where to send. Second
/// move: the caller had been sending from the old socket (symmetric RTP latched onto it)
/// and sends from the new one after the re-INVITE; the latch must not keep us on the old.
#[test]
fn reinvite_to_a_new_media_address_moves_the_stream() {
    let server = Server::start();
    let first = RtpReceiver::bind();
    let offer = SdpOffer::g711(first.addr());
    let mut up = call_up(&server, first, offer);

    let second = RtpReceiver::bind();
    let offer2 = up.offer.next_version().media_addr(second.addr());
    move_media(&mut up, second, offer2, false);

    let old_sender = up
        .rtp
        .start_sending(up.d.media, up.d.payload_type, Signal::Silence, SENDING);
    up.packets
        .extend(up.rtp.recv_for(Duration::from_millis(300)));
    old_sender.stop();
    let third = RtpReceiver::bind();
    let offer3 = up.offer.next_version().media_addr(third.addr());
    let _sender = move_media(&mut up, third, offer3, true);

    hang_up(&mut up.client, &mut up.d.call);
}

/// Re-INVITEs `up` to `new`'s address with `offer` (optionally sending from `new` right
/// after), checks RTP arrives there and stops at the old socket, and makes `new` the
/// call's socket.
fn move_media(
    up: &mut Up,
    mut new: RtpReceiver,
    offer: SdpOffer,
    send_from_new: bool,
) -> Option<common::RtpSender> {
    assert_ne!(new.addr(), up.rtp.addr());
    let answer = renegotiate(up, &offer, Carrier::ReInvite);
    assert_eq!(answer.audio().unwrap().direction(), "sendrecv");
    up.offer = offer;
    let sender = send_from_new
        .then(|| new.start_sending(up.d.media, up.d.payload_type, Signal::Silence, SENDING));

    // The old socket first, so what arrives there is judged from the 200, not later.
    assert_quiet(up, "old media address after the move");
    let at_new = new.recv_until(FIRST_RTP, |p: &[RtpPacket]| p.len() >= 25);
    if at_new.len() < 25 {
        up.client.fail(&format!(
            "only {} packets at the new address {} within {FIRST_RTP:?}",
            at_new.len(),
            new.addr()
        ));
    }
    assert!(
        at_new.iter().all(|p| p.source == up.d.media),
        "RTP to the new address comes from the same server port"
    );
    if let Err(e) = rtp::check_stream(&at_new) {
        panic!("RTP at the new address is not one clean stream: {e}");
    }
    let last_old = up.packets.last().expect("packets at the old address");
    assert_eq!(at_new[0].ssrc, last_old.ssrc, "same stream, same SSRC");
    up.rtp = new;
    up.packets = at_new;
    sender
}

/// PCMU in use; a re-offer with PCMA only is answered with PCMA and the stream switches
/// to payload type 8 for good, continuing its sequence numbers.
#[test]
fn reinvite_changes_the_codec_from_pcmu_to_pcma() {
    let server = Server::start();
    let rtp = RtpReceiver::bind();
    let offer = SdpOffer::g711(rtp.addr());
    let mut up = call_up(&server, rtp, offer);
    assert_eq!(up.d.payload_type, 0, "PCMU first in our offer");
    assert!(up.packets.iter().all(|p| p.payload_type == 0));

    let pcma_only = up
        .offer
        .next_version()
        .clear_formats()
        .pcma()
        .telephone_event(101);
    let answer = renegotiate(&mut up, &pcma_only, Carrier::ReInvite);
    let audio = answer.audio().expect("answer has audio");
    assert_eq!(audio.audio_codecs(), vec![8], "answer: {answer:?}");
    assert_eq!(
        audio.rtpmap(8).map(str::to_ascii_uppercase).as_deref(),
        Some("PCMA/8000")
    );

    // PCMU packets already in flight may still arrive; then PCMA, and nothing else.
    let switching = up.rtp.recv_until(FIRST_RTP, |p: &[RtpPacket]| {
        p.last().is_some_and(|l| l.payload_type == 8)
    });
    let Some(first_pcma) = switching.iter().position(|p| p.payload_type == 8) else {
        up.client.fail(&format!(
            "no PT 8 packet within {FIRST_RTP:?} of the re-INVITE"
        ));
    };
    let mut after = switching[first_pcma..].to_vec();
    after.extend(up.rtp.recv_for(QUIET));
    let pts: Vec<u8> = after.iter().map(|p| p.payload_type).collect();
    assert!(
        pts.iter().all(|&pt| pt == 8),
        "once switched, every packet is PCMA: {pts:?}"
    );
    if let Err(e) = rtp::check_stream(&after) {
        panic!("PCMA stream broken: {e}");
    }
    let last_pcmu = switching[..first_pcma]
        .last()
        .or(up.packets.last())
        .expect("PCMU packets before the switch");
    assert_eq!(
        after[0].sequence,
        last_pcmu.sequence.wrapping_add(1),
        "sequence numbers run on across the codec change"
    );
    hang_up(&mut up.client, &mut up.d.call);
}

/// An INVITE without SDP: the 200 carries our offer (PCMU, PCMA, telephone-event), the ACK
/// carries the answer (RFC 3261 §13.2.1, RFC 3264), and media follows the answer.
#[test]
fn late_offer_is_answered_in_the_ack() {
    let server = Server::start();
    let mut client = SipClient::udp(server.sip_addr());
    let mut call: Call = client.new_call("1000");
    client.send_invite(&mut call, None, &[]);
    let ok = client.expect_final(&mut call, "INVITE", SIP_STEP);
    assert_eq!(ok.status(), Some(200), "{}", ok.to_text());
    let offer = ok
        .sdp()
        .unwrap_or_else(|e| client.fail(&format!("200 to an SDP-less INVITE needs an offer: {e}")));
    let audio = offer.audio().expect("offer has audio");
    let map = |pt| audio.rtpmap(pt).map(str::to_ascii_uppercase);
    assert!(audio.formats.contains(&0), "offer lists PCMU: {offer:?}");
    assert!(audio.formats.contains(&8), "offer lists PCMA: {offer:?}");
    assert_eq!(map(8).as_deref(), Some("PCMA/8000"));
    let te = audio
        .formats
        .iter()
        .copied()
        .find(|&pt| map(pt).is_some_and(|m| m == "TELEPHONE-EVENT/8000"))
        .unwrap_or_else(|| panic!("offer has no telephone-event/8000: {offer:?}"));
    assert_eq!(audio.direction(), "sendrecv");
    let server_media = offer.audio_addr().expect("offer has an address");

    let mut rtp = RtpReceiver::bind();
    let answer = SdpOffer::new(rtp.addr()).pcma().telephone_event(te);
    client.ack_with_body(&call, &ok, Some(("application/sdp", &answer.render())));

    let packets = rtp.recv_until(FIRST_RTP, |p: &[RtpPacket]| p.len() >= 20);
    if packets.len() < 20 {
        client.fail(&format!(
            "only {} RTP packets at the ACK's address {} within {FIRST_RTP:?}",
            packets.len(),
            rtp.addr()
        ));
    }
    assert!(
        packets.iter().all(|p| p.payload_type == 8),
        "RTP must use PCMA (PT 8) as the ACK answered: {:?}",
        packets.iter().map(|p| p.payload_type).collect::<Vec<_>>()
    );
    assert!(packets.iter().all(|p| p.source == server_media));
    if let Err(e) = rtp::check_stream(&packets) {
        panic!("RTP stream broken: {e}");
    }
    hang_up(&mut client, &mut call);
}

/// `--rtp-timeout 2`: a caller that never sends RTP is hung up with a BYE, not before
/// the timeout.
#[test]
fn silent_caller_gets_bye_after_rtp_timeout() {
    let server = Server::builder().arg("--rtp-timeout").arg("2").start();
    let mut client = SipClient::udp(server.sip_addr());
    let rtp = RtpReceiver::bind();
    let d = dial(&mut client, "1000", &SdpOffer::g711(rtp.addr()));
    let bye = client.answer_bye(&d.call, Duration::from_secs(10));
    let after = bye.received_at - d.ok.received_at;
    assert!(
        after >= Duration::from_millis(1500),
        "BYE {after:?} after the 200, before the 2 s RTP timeout could have passed"
    );
    assert_eq!(
        bye.from_tag(),
        d.call.to_tag,
        "BYE From tag is the server's"
    );
    assert_eq!(bye.to_tag(), Some(d.call.from_tag.clone()));
}

/// `--rtp-timeout 2`: while the caller holds the call with `a=inactive` no RTP is expected,
/// so silence is no reason to hang up; after the resume it is again, counted from the
/// resume.
#[test]
fn inactive_hold_suspends_the_rtp_timeout_until_resume() {
    let server = Server::builder().arg("--rtp-timeout").arg("2").start();
    let mut client = SipClient::udp(server.sip_addr());
    let rtp = RtpReceiver::bind();
    let offer = SdpOffer::g711(rtp.addr());
    let mut d = dial(&mut client, "1000", &offer);
    let held = offer.next_version().direction("inactive");
    reinvite(&mut client, &mut d.call, &held);

    let call_id = d.call.call_id.clone();
    let is_bye = |m: &SipMessage| m.method() == Some("BYE") && m.call_id() == Some(&call_id);
    let bye = client.recv_matching(Duration::from_secs(4), is_bye);
    assert!(
        bye.is_none(),
        "BYE for RTP silence while the call was inactive: {bye:?}"
    );

    let resumed_at = Instant::now();
    reinvite(
        &mut client,
        &mut d.call,
        &held.next_version().direction("sendrecv"),
    );
    let bye = client.answer_bye(&d.call, Duration::from_secs(10));
    let after = bye.received_at - resumed_at;
    assert!(
        after >= Duration::from_millis(1500),
        "BYE {after:?} after the resume: the 2 s timeout must restart when RTP is expected again"
    );
}

/// `--rtp-timeout 2`: a caller that keeps sending is not hung up (5 s, well past the
/// timeout), and the call is still there to hang up.
#[test]
fn caller_sending_rtp_is_not_timed_out() {
    let server = Server::builder().arg("--rtp-timeout").arg("2").start();
    let mut client = SipClient::udp(server.sip_addr());
    let rtp = RtpReceiver::bind();
    let mut d = dial(&mut client, "1000", &SdpOffer::g711(rtp.addr()));
    let sender = rtp.start_sending(d.media, d.payload_type, Signal::Silence, SENDING);
    let until = d.ok.received_at + Duration::from_secs(5);
    let call_id = d.call.call_id.clone();
    let bye = client.recv_matching(until.saturating_duration_since(Instant::now()), |m| {
        m.method() == Some("BYE") && m.call_id() == Some(call_id.as_str())
    });
    assert!(
        bye.is_none(),
        "BYE although we kept sending RTP: {bye:?}\n{}",
        server.log_tail()
    );
    assert!(sender.stop() >= 200, "our sender fell behind badly");
    hang_up(&mut client, &mut d.call);
}
