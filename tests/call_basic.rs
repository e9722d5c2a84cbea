//! The basic call contract of the real `pinbridge` binary over real sockets on 127.0.0.1:
//! INVITE/100/200/ACK with an SDP answer, the greeting as 20 ms G.711 RTP, BYE from either
//! side, CANCEL, the lost-ACK timers, 488/400/481, OPTIONS and shutdown on SIGTERM.

mod common;

use std::time::{Duration, Instant};

use common::rtp::{self, RtpPacket};
use common::sip::{self, Transport};
use common::{RtpReceiver, SIP_STEP, SdpOffer, Server, Signal, SipClient, audio, dial};

/// The first RTP packet must arrive this soon after the ACK.
const FIRST_RTP: Duration = Duration::from_secs(5);
/// RFC 3261 timers the server promises to use.
const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);

fn client(server: &Server, transport: Transport) -> SipClient {
    match transport {
        Transport::Udp => SipClient::udp(server.sip_addr()),
        Transport::Tcp => SipClient::tcp(server.sip_addr()),
    }
}

fn first_packet(rtp: &mut RtpReceiver, client: &SipClient) -> RtpPacket {
    rtp.recv_one(FIRST_RTP).unwrap_or_else(|| {
        client.fail(&format!(
            "no RTP at {} within {FIRST_RTP:?} of the ACK",
            rtp.addr()
        ))
    })
}

/// The answer to a plain PCMU/PCMA/telephone-event offer: 100 Trying first, then a 200
/// with To tag, Contact and an SDP answer choosing PCMU (our first preference) at 20 ms,
/// with a media address on loopback inside the configured RTP range.
fn answer_is_right(transport: Transport) {
    let server = Server::start();
    let mut client = client(&server, transport);
    let rtp = RtpReceiver::bind();
    let mut call = client.invite("1000", &SdpOffer::g711(rtp.addr()));

    let first = client.expect_response(&call, "INVITE", SIP_STEP);
    assert_eq!(
        first.status(),
        Some(100),
        "want 100 Trying first: {}",
        first.start_line
    );
    let ok = client.expect_final(&mut call, "INVITE", SIP_STEP);
    assert_eq!(ok.status(), Some(200), "{}", ok.to_text());
    client.ack(&call, &ok);

    assert!(call.to_tag.is_some(), "200 OK without a To tag");
    assert_eq!(
        ok.from_tag(),
        Some(call.from_tag.clone()),
        "From tag not echoed"
    );
    let contact = call.remote_target.clone().expect("200 OK without Contact");
    assert!(contact.starts_with("sip:"), "Contact URI {contact:?}");
    if transport == Transport::Tcp {
        assert!(
            contact.to_ascii_lowercase().contains("transport=tcp"),
            "Contact for a TCP call should say transport=tcp: {contact}"
        );
    }
    let sdp = ok.sdp().expect("SDP answer");
    let audio = sdp.audio().expect("answer has an audio m= line");
    assert_eq!(audio.proto, "RTP/AVP");
    assert_eq!(audio.audio_codecs(), vec![0], "PCMU was our first choice");
    assert_eq!(
        audio.rtpmap(0).map(str::to_ascii_uppercase).as_deref(),
        Some("PCMU/8000")
    );
    assert_eq!(audio.ptime(), Some(20), "a=ptime:20");
    assert_eq!(audio.direction(), "sendrecv");
    let media = sdp.audio_addr().expect("answer has c= and m= port");
    assert!(
        media.ip().is_loopback(),
        "media address {media} is not loopback"
    );
    let (lo, hi) = server.rtp_ports();
    assert!(
        (lo..=hi).contains(&media.port()),
        "media port {} outside --rtp-ports {lo}-{hi}",
        media.port()
    );

    client.bye(&mut call);
    let bye_ok = client.expect_final(&mut call, "BYE", SIP_STEP);
    assert_eq!(bye_ok.status(), Some(200), "{}", bye_ok.to_text());
}

#[test]
fn udp_invite_gets_100_then_200_with_sdp_answer() {
    answer_is_right(Transport::Udp);
}

#[test]
fn tcp_invite_gets_100_then_200_with_sdp_answer() {
    answer_is_right(Transport::Tcp);
}

#[test]
fn answer_follows_the_callers_codec_preference() {
    let server = Server::start();
    let mut client = SipClient::udp(server.sip_addr());
    let rtp = RtpReceiver::bind();
    let offer = SdpOffer::new(rtp.addr()).pcma().pcmu().telephone_event(101);
    let mut d = dial(&mut client, "1000", &offer);
    assert_eq!(d.payload_type, 8, "PCMA was our first choice");
    let audio = d.answer.audio().unwrap();
    assert_eq!(
        audio.rtpmap(8).map(str::to_ascii_uppercase).as_deref(),
        Some("PCMA/8000")
    );
    client.bye(&mut d.call);
    assert_eq!(
        client.expect_final(&mut d.call, "BYE", SIP_STEP).status(),
        Some(200)
    );
}

/// The greeting arrives as one clean RTP stream: 20 ms packets (~50 per second, counted
/// over a 2 s window), sequence +1 and timestamp +160 per packet, one SSRC, the chosen
/// payload type, sent from the address in the SDP answer (symmetric RTP, RFC 4961).
fn rtp_stream_is_right(transport: Transport) {
    let server = Server::start();
    let mut client = client(&server, transport);
    let mut rtp = RtpReceiver::bind();
    let mut d = dial(&mut client, "1000", &SdpOffer::g711(rtp.addr()));

    let first = first_packet(&mut rtp, &client);
    let window = Duration::from_secs(2);
    let mut packets = vec![first.clone()];
    packets.extend(rtp.recv_for(window + Duration::from_millis(500)));

    let counted = rtp::count_in_window(&packets, first.received_at, window);
    assert!(
        (80..=120).contains(&counted),
        "{counted} packets in 2 s; 20 ms packetisation gives 100 (accepting 40-60 per second)"
    );
    if let Err(e) = rtp::check_stream(&packets) {
        panic!("RTP stream broken: {e}");
    }
    assert_eq!(
        first.payload_type, d.payload_type,
        "RTP PT is not the negotiated one"
    );
    assert_eq!(
        first.source, d.media,
        "RTP should come from the address in the SDP answer"
    );
    assert!(
        rtp.malformed.is_empty(),
        "non-RTP datagrams: {:?}",
        rtp.malformed
    );

    client.bye(&mut d.call);
    let bye_ok = client.expect_final(&mut d.call, "BYE", SIP_STEP);
    assert_eq!(bye_ok.status(), Some(200), "{}", bye_ok.to_text());
    if let Err(drained) = rtp.wait_quiet(Duration::from_secs(1), Duration::from_secs(5)) {
        panic!(
            "RTP did not stop after BYE/200 ({} more packets)",
            drained.len()
        );
    }
}

#[test]
fn udp_call_streams_rtp_at_50_packets_per_second_and_stops_on_bye() {
    rtp_stream_is_right(Transport::Udp);
}

#[test]
fn tcp_call_streams_rtp_at_50_packets_per_second_and_stops_on_bye() {
    rtp_stream_is_right(Transport::Tcp);
}

/// What the caller hears is the greeting asset: the decoded RTP correlates with
/// `audio/greeting.*` decoded independently (sox) at 8 kHz, and starts with it.
fn hears_the_greeting(offer: fn(std::net::SocketAddr) -> SdpOffer, want_pt: u8) {
    let reference = audio::greeting_pcm8k();
    assert!(
        reference.len() >= 4000,
        "greeting asset is shorter than 0.5 s ({} samples)",
        reference.len()
    );
    let server = Server::start();
    let mut client = SipClient::udp(server.sip_addr());
    let mut rtp = RtpReceiver::bind();
    let mut d = dial(&mut client, "1000", &offer(rtp.addr()));
    assert_eq!(d.payload_type, want_pt);

    // The whole greeting plus a second, but never more than 20 s of listening.
    let listen =
        Duration::from_millis(reference.len() as u64 / 8 + 1000).min(Duration::from_secs(20));
    let first = first_packet(&mut rtp, &client);
    let mut packets = vec![first];
    packets.extend(rtp.recv_for(listen));
    let heard = rtp::decode_stream(&packets);

    let min_overlap = 4000.min(reference.len());
    let a = rtp::best_alignment(&heard, &reference, min_overlap).unwrap_or_else(|| {
        panic!(
            "received audio ({} samples) is silent or too short to compare",
            heard.len()
        )
    });
    assert!(
        a.correlation >= 0.8,
        "received audio does not match the greeting: best correlation {:.3} at lag {} \
         (overlap {} samples)",
        a.correlation,
        a.lag,
        a.overlap
    );
    assert!(
        (-800..=16_000).contains(&a.lag),
        "greeting should start with the stream (within 2 s), found at lag {} samples",
        a.lag
    );
    client.bye(&mut d.call);
    assert_eq!(
        client.expect_final(&mut d.call, "BYE", SIP_STEP).status(),
        Some(200)
    );
}

#[test]
fn caller_hears_the_greeting_in_pcmu() {
    hears_the_greeting(SdpOffer::g711, 0);
}

#[test]
fn caller_hears_the_greeting_in_pcma() {
    hears_the_greeting(|a| SdpOffer::new(a).pcma().telephone_event(101), 8);
}

/// CANCEL right after the INVITE races the answer. Either the CANCEL wins (200 to the
/// CANCEL, 487 to the INVITE, which we ACK) or the answer does (200 to the INVITE; the
/// CANCEL then gets 200 or 481), and we ACK and hang up. Both must end cleanly.
#[test]
fn cancel_racing_the_answer_ends_cleanly() {
    let server = Server::start();
    let mut client = SipClient::udp(server.sip_addr());
    let rtp = RtpReceiver::bind();
    let mut call = client.invite("1000", &SdpOffer::g711(rtp.addr()));
    client.cancel(&call);

    let cancel_resp = client.expect_final(&mut call, "CANCEL", SIP_STEP);
    let invite_final = client.expect_final(&mut call, "INVITE", SIP_STEP);
    let cancel_status = cancel_resp.status().unwrap();
    match invite_final.status() {
        Some(487) => {
            assert_eq!(
                cancel_status,
                200,
                "CANCEL that won: {}",
                cancel_resp.to_text()
            );
            assert_eq!(
                invite_final.top_via_branch(),
                call.invite_branch,
                "487 belongs to the INVITE transaction"
            );
            client.ack(&call, &invite_final);
            // The ACK (same branch as the INVITE) ends the 487's retransmissions (Timer G,
            // RFC 3261 §17.2.1): after letting any in flight pass, none may follow. Without
            // a matched ACK one would come 1.5 s after the first 487.
            client.drain(Duration::from_millis(600));
            let cseq = call.invite_cseq;
            let late = client.recv_matching(Duration::from_secs(2), |m| {
                m.call_id() == Some(call.call_id.as_str())
                    && m.cseq() == Some((cseq, "INVITE".into()))
            });
            assert!(late.is_none(), "INVITE response after the ACK: {late:?}");
        }
        Some(200) => {
            assert!(
                cancel_status == 200 || cancel_status == 481,
                "CANCEL after the answer: {}",
                cancel_resp.to_text()
            );
            client.ack(&call, &invite_final);
            client.bye(&mut call);
            let bye_ok = client.expect_final(&mut call, "BYE", SIP_STEP);
            assert_eq!(bye_ok.status(), Some(200), "{}", bye_ok.to_text());
        }
        other => client.fail(&format!("INVITE ended with {other:?} after CANCEL")),
    }
}

/// Without an ACK the server retransmits its 200 (T1 = 500 ms doubling up to T2 = 4 s,
/// RFC 3261 §13.3.1.4) and gives up with a BYE after 64·T1 = 32 s. We keep sending RTP so
/// the 30 s media timeout cannot be the reason for the BYE.
#[test]
fn lost_ack_gets_retransmitted_200s_then_a_bye() {
    let server = Server::start();
    let mut client = SipClient::udp(server.sip_addr());
    let rtp = RtpReceiver::bind();
    let mut call = client.invite("1000", &SdpOffer::g711(rtp.addr()));
    let ok = client.expect_final(&mut call, "INVITE", SIP_STEP);
    assert_eq!(ok.status(), Some(200), "{}", ok.to_text());
    let media = ok
        .sdp()
        .expect("SDP answer")
        .audio_addr()
        .expect("media address");
    let t0 = ok.received_at;
    let _media = rtp.start_sending(media, 0, Signal::Silence, Duration::from_secs(50));

    let limit = T1 * 64 + Duration::from_secs(10);
    let mut retransmits: Vec<Instant> = Vec::new();
    let bye = loop {
        let left = (t0 + limit).saturating_duration_since(Instant::now());
        let cseq = call.invite_cseq;
        let msg = client.recv_matching(left, |m| {
            m.call_id() == Some(call.call_id.as_str())
                && (m.method() == Some("BYE")
                    || (m.status() == Some(200) && m.cseq() == Some((cseq, "INVITE".into()))))
        });
        let Some(msg) = msg else {
            client.fail(&format!(
                "no BYE within {limit:?} of the unacknowledged 200 ({} retransmissions seen)",
                retransmits.len()
            ));
        };
        if msg.method() == Some("BYE") {
            client.respond(&msg, 200, "OK");
            break msg;
        }
        retransmits.push(msg.received_at);
        assert!(retransmits.len() < 100, "runaway 200 retransmissions");
    };

    let after_t0 = bye.received_at - t0;
    assert!(
        after_t0 >= T1 * 64 - Duration::from_secs(4),
        "BYE after {after_t0:?}; the server must retransmit for 64·T1 = 32 s first"
    );
    assert!(
        retransmits.len() >= 3,
        "{} retransmitted 200s before the BYE, want at least 3",
        retransmits.len()
    );
    let mut times = vec![t0];
    times.extend(&retransmits);
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps[0] >= T1 - Duration::from_millis(100),
        "first retransmission after {:?}, want T1 = {T1:?}; gaps {gaps:?}",
        gaps[0]
    );
    for k in 0..2 {
        assert!(
            gaps[k + 1].as_secs_f64() >= 1.5 * gaps[k].as_secs_f64(),
            "retransmission intervals should double (T1, 2·T1, 4·T1…): {gaps:?}"
        );
    }
    for g in &gaps {
        assert!(
            *g <= T2 + Duration::from_secs(2),
            "an interval above T2 = {T2:?}: {gaps:?}"
        );
    }
    assert_eq!(
        bye.from_tag(),
        call.to_tag,
        "BYE From tag is the server's To tag"
    );
    assert_eq!(
        bye.to_tag(),
        Some(call.from_tag.clone()),
        "BYE To tag is ours"
    );
}

/// An offer with only G.729 has no codec in common: 488 with a Warning, no dialog.
#[test]
fn offer_without_g711_gets_488_with_warning() {
    let server = Server::start();
    let mut client = SipClient::udp(server.sip_addr());
    let mut rtp = RtpReceiver::bind();
    let offer = SdpOffer::new(rtp.addr()).g729();
    let mut call = client.invite("1000", &offer);
    let resp = client.expect_final(&mut call, "INVITE", SIP_STEP);
    assert_eq!(resp.status(), Some(488), "{}", resp.to_text());
    let warning = resp
        .header("Warning")
        .unwrap_or_else(|| panic!("488 without a Warning header: {}", resp.to_text()));
    // RFC 3261 §20.43: warn-code SP warn-agent SP "warn-text", e.g. 305 for media type.
    assert!(
        warning.len() > 4 && warning[..3].chars().all(|c| c.is_ascii_digit()),
        "Warning is not `code agent \"text\"`: {warning:?}"
    );
    client.ack(&call, &resp);
    let stray = rtp.recv_one(Duration::from_secs(1));
    assert!(stray.is_none(), "RTP for a rejected call: {stray:?}");
}

/// A request with the Via we need for the answer but something broken elsewhere.
fn broken_invite(
    client: &SipClient,
    server: std::net::SocketAddr,
    branch: &str,
    call_id: Option<&str>,
    cseq: &str,
) -> String {
    let local = client.local_addr();
    let mut s = format!(
        "INVITE sip:1000@{server} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch={branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:caller@{local}>;tag={}\r\n\
         To: <sip:1000@{server}>\r\n",
        sip::unique_token()
    );
    if let Some(id) = call_id {
        s.push_str(&format!("Call-ID: {id}\r\n"));
    }
    s.push_str(&format!(
        "CSeq: {cseq}\r\nContact: <sip:caller@{local}>\r\nContent-Length: 0\r\n\r\n"
    ));
    s
}

/// Malformed requests get 400 with a reason phrase, and the server keeps serving.
#[test]
fn malformed_requests_get_400_and_calls_still_work() {
    let server = Server::start();
    let mut client = SipClient::udp(server.sip_addr());
    let cases = [
        ("missing Call-ID", None, "1 INVITE"),
        (
            "garbage CSeq",
            Some(format!("{}@127.0.0.1", sip::unique_token())),
            "garbage",
        ),
    ];
    for (what, call_id, cseq) in &cases {
        let branch = sip::new_branch();
        let raw = broken_invite(
            &client,
            server.sip_addr(),
            &branch,
            call_id.as_deref(),
            cseq,
        );
        client.send_raw(raw.as_bytes());
        let resp = client
            .recv_matching(SIP_STEP, |m| {
                m.is_response() && m.top_via_branch().as_deref() == Some(branch.as_str())
            })
            .unwrap_or_else(|| client.fail(&format!("no response to an INVITE with {what}")));
        assert_eq!(resp.status(), Some(400), "{what}: {}", resp.start_line);
        assert!(
            !resp.reason().unwrap_or("").is_empty(),
            "{what}: 400 without a reason phrase"
        );
    }
    // Plain garbage gets no answer (there is no Via to answer to) and breaks nothing.
    client.send_raw(b"\x00\x01garbage that is not SIP\r\n\r\n");

    let rtp = RtpReceiver::bind();
    let mut d = dial(&mut client, "1000", &SdpOffer::g711(rtp.addr()));
    client.bye(&mut d.call);
    assert_eq!(
        client.expect_final(&mut d.call, "BYE", SIP_STEP).status(),
        Some(200)
    );
}

/// OPTIONS outside a dialog: 200 with Allow listing what a dial-in bridge handles.
#[test]
fn options_gets_200_with_allow() {
    let server = Server::start();
    for transport in [Transport::Udp, Transport::Tcp] {
        let mut client = client(&server, transport);
        let mut options = client.options();
        let resp = client.expect_final(&mut options, "OPTIONS", SIP_STEP);
        assert_eq!(
            resp.status(),
            Some(200),
            "{transport:?}: {}",
            resp.to_text()
        );
        let allow: Vec<String> = resp
            .header_values("Allow")
            .iter()
            .map(|m| m.trim().to_ascii_uppercase())
            .collect();
        for m in ["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS"] {
            assert!(
                allow.iter().any(|a| a == m),
                "{transport:?}: Allow {allow:?} lacks {m}"
            );
        }
    }
}

/// BYE in a dialog the server never had: 481.
#[test]
fn bye_for_an_unknown_dialog_gets_481() {
    let server = Server::start();
    let mut client = SipClient::udp(server.sip_addr());
    let mut call = client.new_call("1000");
    call.to_tag = Some(sip::unique_token());
    call.cseq = 1;
    client.bye(&mut call);
    let resp = client.expect_final(&mut call, "BYE", SIP_STEP);
    assert_eq!(resp.status(), Some(481), "{}", resp.to_text());
}

/// SIGTERM: the server sends BYE on every call (UDP and TCP here), we answer, and it
/// exits 0.
#[test]
fn sigterm_hangs_up_every_call_and_exits_0() {
    let mut server = Server::start();
    let mut udp = SipClient::udp(server.sip_addr());
    let mut tcp = SipClient::tcp(server.sip_addr());
    let (rtp_u, rtp_t) = (RtpReceiver::bind(), RtpReceiver::bind());
    let du = dial(&mut udp, "1000", &SdpOffer::g711(rtp_u.addr()));
    let dt = dial(&mut tcp, "1000", &SdpOffer::g711(rtp_t.addr()));

    server.signal(libc::SIGTERM);
    let bye_u = udp.answer_bye(&du.call, Duration::from_secs(10));
    let bye_t = tcp.answer_bye(&dt.call, Duration::from_secs(10));
    assert_eq!(bye_u.from_tag(), du.call.to_tag);
    assert_eq!(bye_t.from_tag(), dt.call.to_tag);

    let status = server
        .wait_exit(common::server::EXIT_TIMEOUT)
        .unwrap_or_else(|| panic!("server still running after SIGTERM\n{}", server.log_tail()));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}\n{}",
        server.log_tail()
    );
}
