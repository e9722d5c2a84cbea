//! Our test SIP client against a peer we did not write: SIPp's built-in UAS on loopback.
//! If these fail, fix the client before believing any server test.

mod common;

use std::time::Duration;

use common::sip::Transport;
use common::sipp;
use common::{PortBlock, RtpReceiver, SdpOffer, SipClient, audio};

const STEP: Duration = Duration::from_secs(5);

/// INVITE → 180 → 200 (SDP) → ACK → BYE → 200 against `sipp -sn uas`, which then exits 0
/// with one successful call.
fn invite_ack_bye_against_sipp_uas(transport: Transport) {
    let ports = PortBlock::reserve();
    let sip_port = ports.aux_port(0);
    let uas = sipp::start_uas(
        transport,
        sip_port,
        ports.aux_port(10),
        1,
        Duration::from_secs(30),
    );
    let peer = format!("127.0.0.1:{sip_port}").parse().unwrap();
    let mut client = match transport {
        Transport::Udp => SipClient::udp(peer),
        Transport::Tcp => SipClient::tcp(peer),
    };
    let rtp = RtpReceiver::bind();

    let mut call = client.invite("service", &SdpOffer::g711(rtp.addr()));
    let ringing = client.expect_response(&call, "INVITE", STEP);
    assert_eq!(ringing.status(), Some(180), "{}", ringing.to_text());
    let ok = client.expect_final(&mut call, "INVITE", STEP);
    assert_eq!(ok.status(), Some(200), "{}", ok.to_text());
    assert!(call.to_tag.is_some(), "200 without To tag");
    let contact = call.remote_target.clone().expect("200 with Contact");
    assert!(contact.contains(&sip_port.to_string()), "{contact}");
    let sdp = ok.sdp().expect("SDP answer");
    assert_eq!(sdp.audio().unwrap().formats, vec![0]);
    assert_eq!(sdp.audio_addr().unwrap().port(), ports.aux_port(10));
    client.ack(&call, &ok);

    client.bye(&mut call);
    let bye_ok = client.expect_final(&mut call, "BYE", STEP);
    assert_eq!(bye_ok.status(), Some(200), "{}", bye_ok.to_text());

    // SIPp keeps the call 4 s (timewait) before it counts it and exits.
    let outcome = uas.finish(Duration::from_secs(40));
    assert!(
        outcome.status.success(),
        "SIPp UAS did not accept our call flow\n{}\n{}",
        outcome.report(),
        client.transcript_text()
    );
    assert_eq!(
        outcome.stat("SuccessfulCall(C)"),
        Some(1),
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

#[test]
fn client_completes_a_call_with_sipp_uas_over_udp() {
    invite_ack_bye_against_sipp_uas(Transport::Udp);
}

#[test]
fn client_completes_a_call_with_sipp_uas_over_tcp() {
    invite_ack_bye_against_sipp_uas(Transport::Tcp);
}

fn start_fixture_uas(name: &str, ports: &PortBlock) -> (sipp::SippRun, SipClient) {
    let sip_port = ports.aux_port(0);
    let path = sipp::fixture(name);
    let uas = sipp::start_uas_scenario(
        &["-sf", &path.display().to_string()],
        Transport::Udp,
        sip_port,
        ports.aux_port(10),
        1,
        Duration::from_secs(20),
        &[],
    );
    let client = SipClient::udp(format!("127.0.0.1:{sip_port}").parse().unwrap());
    (uas, client)
}

fn assert_one_successful_call(uas: sipp::SippRun, client: &SipClient) {
    let outcome = uas.finish(Duration::from_secs(30));
    assert!(
        outcome.status.success() && outcome.stat("SuccessfulCall(C)") == Some(1),
        "SIPp did not count one successful call\n{}\n--- our side ---\n{}",
        outcome.report(),
        client.transcript_text()
    );
}

/// A non-2xx final response is acknowledged inside the INVITE transaction.
#[test]
fn client_acks_a_rejection_from_sipp() {
    let ports = PortBlock::reserve();
    let (uas, mut client) = start_fixture_uas("uas-reject.xml", &ports);
    let rtp = RtpReceiver::bind();
    let mut call = client.invite("busy", &SdpOffer::g711(rtp.addr()));
    let busy = client.expect_final(&mut call, "INVITE", STEP);
    assert_eq!(busy.status(), Some(486), "{}", busy.to_text());
    assert_eq!(call.to_tag, None, "a rejection establishes no dialog");
    client.ack(&call, &busy);
    assert_one_successful_call(uas, &client);
}

/// CANCEL while ringing: 200 to the CANCEL, 487 to the INVITE, ACK for the 487.
#[test]
fn client_cancels_a_ringing_call_at_sipp() {
    let ports = PortBlock::reserve();
    let (uas, mut client) = start_fixture_uas("uas-cancel.xml", &ports);
    let rtp = RtpReceiver::bind();
    let mut call = client.invite("ringing", &SdpOffer::g711(rtp.addr()));
    let ringing = client.expect_response(&call, "INVITE", STEP);
    assert_eq!(ringing.status(), Some(180), "{}", ringing.to_text());
    client.cancel(&call);
    let cancel_ok = client.expect_final(&mut call, "CANCEL", STEP);
    assert_eq!(cancel_ok.status(), Some(200), "{}", cancel_ok.to_text());
    let terminated = client.expect_final(&mut call, "INVITE", STEP);
    assert_eq!(terminated.status(), Some(487), "{}", terminated.to_text());
    client.ack(&call, &terminated);
    assert_one_successful_call(uas, &client);
}

/// The far end hangs up: we receive its BYE in the dialog and answer 200.
#[test]
fn client_answers_a_bye_from_sipp() {
    let ports = PortBlock::reserve();
    let (uas, mut client) = start_fixture_uas("uas-hangup.xml", &ports);
    let rtp = RtpReceiver::bind();
    let mut call = client.invite("hangup", &SdpOffer::g711(rtp.addr()));
    let ok = client.expect_final(&mut call, "INVITE", STEP);
    assert_eq!(ok.status(), Some(200), "{}", ok.to_text());
    client.ack(&call, &ok);
    let bye = client.answer_bye(&call, STEP);
    assert_eq!(bye.to_tag().as_deref(), Some(call.from_tag.as_str()));
    assert_eq!(bye.from_tag(), call.to_tag);
    assert_one_successful_call(uas, &client);
}

/// Our RTP helpers against a stream we did not make: SIPp (`rtp_stream`) plays 2 s of a
/// sox-made μ-law sweep after the ACK. We must count ~50 packets/s, see a clean sequence,
/// decode it (our μ-law decoder against sox's encoder) to something that correlates with
/// sox's linear rendering of the same sweep, and notice when the stream ends.
#[test]
fn rtp_helpers_measure_and_recognise_a_stream_from_sipp() {
    let sweep = ["-n"];
    let effects = ["synth", "2", "sine", "300-3000", "gain", "-6"];
    let ulaw = audio::sox_raw(&sweep, &effects, audio::RawEncoding::MuLaw);
    let reference = audio::pcm_from_le_bytes(&audio::sox_raw(
        &sweep,
        &effects,
        audio::RawEncoding::Linear16,
    ));
    assert_eq!(ulaw.len(), 16_000);

    let ports = PortBlock::reserve();
    let sip_port = ports.aux_port(0);
    let path = sipp::fixture("uas-rtp.xml");
    let uas = sipp::start_uas_scenario(
        &["-sf", &path.display().to_string()],
        Transport::Udp,
        sip_port,
        ports.aux_port(10),
        1,
        Duration::from_secs(20),
        &[("stream.ulaw", &ulaw)],
    );
    let mut client = SipClient::udp(format!("127.0.0.1:{sip_port}").parse().unwrap());
    let mut rtp = RtpReceiver::bind();
    let mut d = common::dial(&mut client, "stream", &SdpOffer::g711(rtp.addr()));
    assert_eq!(d.payload_type, 0);

    let first = rtp.recv_one(STEP).expect("RTP from SIPp");
    let mut packets = vec![first.clone()];
    packets.extend(rtp.recv_until(Duration::from_secs(4), |p| p.len() >= 99));
    assert_eq!(packets.len(), 100, "2 s of 20 ms packets");
    let counted = common::rtp::count_in_window(&packets, first.received_at, Duration::from_secs(1));
    assert!(
        (40..=60).contains(&counted),
        "{counted} packets in the first second"
    );
    let rate = common::rtp::packet_rate(&packets);
    assert!((40.0..=60.0).contains(&rate), "{rate} packets/s");
    common::rtp::check_stream(&packets).expect("clean RTP stream");
    assert_eq!(first.source, d.media, "SIPp sends from its SDP media port");

    let heard = common::rtp::decode_stream(&packets);
    let a = common::rtp::best_alignment(&heard, &reference, 4000).expect("audible");
    assert!(a.correlation > 0.99, "{a:?}");
    assert!(a.lag.abs() <= 160, "stream starts with the file: {a:?}");
    let reversed: Vec<i16> = reference.iter().rev().copied().collect();
    let c = common::rtp::best_correlation(&heard, &reversed);
    assert!(c < 0.5, "the reversed sweep must not match: {c}");
    assert!(
        rtp.wait_quiet(Duration::from_millis(500), STEP).is_ok(),
        "the stream ended after the file"
    );

    client.bye(&mut d.call);
    assert_eq!(
        client.expect_final(&mut d.call, "BYE", STEP).status(),
        Some(200)
    );
    assert_one_successful_call(uas, &client);
}

/// Our G.711 decoders against sox's encoders, sample by sample: every decoded sample lies
/// within the quantisation step of the linear original.
#[test]
fn g711_decoders_agree_with_sox_encoders() {
    let sweep = ["-n"];
    let effects = ["synth", "1", "sine", "50-3900", "gain", "-1"];
    let linear = audio::pcm_from_le_bytes(&audio::sox_raw(
        &sweep,
        &effects,
        audio::RawEncoding::Linear16,
    ));
    for (encoding, decode) in [
        (
            audio::RawEncoding::MuLaw,
            common::g711::decode_ulaw as fn(u8) -> i16,
        ),
        (audio::RawEncoding::ALaw, common::g711::decode_alaw),
    ] {
        let coded = audio::sox_raw(&sweep, &effects, encoding);
        assert_eq!(coded.len(), linear.len());
        for (i, (&byte, &x)) in coded.iter().zip(&linear).enumerate() {
            let (got, x) = (i32::from(decode(byte)), i32::from(x));
            // Half a step of the segment x falls in, plus rounding: ≤ |x|/16 + 16.
            assert!(
                (got - x).abs() <= x.abs() / 16 + 16,
                "{encoding:?} sample {i}: sox encoded {x} as {byte:#04x}, we decode {got}"
            );
        }
    }
}
