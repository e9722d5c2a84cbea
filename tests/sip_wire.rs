//! SIP as it arrives on the wire, against the real `pinbridge` binary over real sockets on
//! 127.0.0.1: an INVITE written only with compact header names, INFO inside a dialog, the
//! RFC 4475/5118 torture corpus over UDP and TCP, TCP size limits and stream reassembly,
//! and a retransmitted INVITE.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::rtp::{self, RtpPacket};
use common::sip::{self, Call, SipMessage, Transport};
use common::torture::{self, EXPECTED};
use common::{RtpReceiver, SIP_STEP, SdpOffer, Server, SipClient, audio, dial, hang_up};

/// The first RTP packet must arrive this soon after the ACK.
const FIRST_RTP: Duration = Duration::from_secs(5);
/// The server's TCP message limit (README: "a 64 KiB message limit").
const MAX_MESSAGE: usize = 64 * 1024;
/// How long we give the server to answer part of a message before concluding it waits.
const PAUSE: Duration = Duration::from_millis(200);

fn client(server: &Server, transport: Transport) -> SipClient {
    match transport {
        Transport::Udp => SipClient::udp(server.sip_addr()),
        Transport::Tcp => SipClient::tcp(server.sip_addr()),
    }
}

/// Waits for the first RTP packet of a call; panics with the transcript if none comes.
fn first_packet(rtp: &mut RtpReceiver, client: &SipClient) -> RtpPacket {
    rtp.recv_one(FIRST_RTP).unwrap_or_else(|| {
        client.fail(&format!(
            "no RTP at {} within {FIRST_RTP:?} of the ACK",
            rtp.addr()
        ))
    })
}

/// A full normal call on `transport`: INVITE, 200, ACK, RTP flows, BYE, 200.
fn normal_call_works(server: &Server, transport: Transport) {
    let mut client = client(server, transport);
    let mut rtp = RtpReceiver::bind();
    let mut d = dial(&mut client, "1000", &SdpOffer::g711(rtp.addr()));
    first_packet(&mut rtp, &client);
    hang_up(&mut client, &mut d.call);
}

/// An INVITE whose every header with a compact form uses it (RFC 3261 §7.3.3): `v f t i m
/// l c k s`. Fills in `call` as [`SipClient::invite`] would.
fn compact_invite(client: &SipClient, call: &mut Call, sdp: &str) -> String {
    call.cseq = 1;
    call.invite_cseq = 1;
    let branch = sip::new_branch();
    call.invite_branch = Some(branch.clone());
    let local = client.local_addr();
    let (via, contact) = match client.transport() {
        Transport::Udp => ("UDP", ""),
        Transport::Tcp => ("TCP", ";transport=tcp"),
    };
    format!(
        "INVITE {ruri} SIP/2.0\r\n\
         v: SIP/2.0/{via} {local};branch={branch};rport\r\n\
         Max-Forwards: 70\r\n\
         f: <{from}>;tag={tag}\r\n\
         t: <{to}>\r\n\
         i: {call_id}\r\n\
         CSeq: 1 INVITE\r\n\
         m: <sip:caller@{local}{contact}>\r\n\
         k: timer\r\n\
         s: all compact\r\n\
         c: application/sdp\r\n\
         l: {len}\r\n\
         \r\n\
         {sdp}",
        ruri = call.request_uri,
        from = call.local_uri,
        tag = call.from_tag,
        to = call.remote_uri,
        call_id = call.call_id,
        len = sdp.len(),
    )
}

/// STYLE.md §4: "keep a test proving an all-compact message works" — here over the wire:
/// 100, 200 with an SDP answer that echoes our branch and tag, ACK, RTP, BYE.
fn all_compact_invite_makes_a_call(transport: Transport) {
    let server = Server::start();
    let mut client = client(&server, transport);
    let mut rtp = RtpReceiver::bind();
    let mut call = client.new_call("1000");
    let text = compact_invite(&client, &mut call, &SdpOffer::g711(rtp.addr()).render());
    client.send_raw(text.as_bytes());

    let trying = client.expect_response(&call, "INVITE", SIP_STEP);
    assert_eq!(trying.status(), Some(100), "{}", trying.to_text());
    let ok = client.expect_final(&mut call, "INVITE", SIP_STEP);
    assert_eq!(ok.status(), Some(200), "{}", ok.to_text());
    assert_eq!(ok.top_via_branch(), call.invite_branch, "Via echoed");
    assert_eq!(
        ok.from_tag(),
        Some(call.from_tag.clone()),
        "From tag echoed"
    );
    assert!(call.to_tag.is_some(), "200 without a To tag");
    let answer = ok.sdp().expect("200 carries an SDP answer");
    assert_eq!(answer.audio().unwrap().audio_codecs(), vec![0]);
    client.ack(&call, &ok);
    let p = first_packet(&mut rtp, &client);
    assert_eq!(p.payload_type, 0);
    hang_up(&mut client, &mut call);
}

#[test]
fn all_compact_invite_over_udp_makes_a_call() {
    all_compact_invite_makes_a_call(Transport::Udp);
}

#[test]
fn all_compact_invite_over_tcp_makes_a_call() {
    all_compact_invite_makes_a_call(Transport::Tcp);
}

/// INFO in the dialog: DTMF relay is taken (200); a body type we do not handle gets 415
/// with the Accept list (RFC 3261 §21.4.13), and the call is unaffected.
#[test]
fn info_with_dtmf_relay_gets_200_and_text_plain_gets_415() {
    let server = Server::start();
    let mut client = SipClient::udp(server.sip_addr());
    let rtp = RtpReceiver::bind();
    let mut d = dial(&mut client, "1000", &SdpOffer::g711(rtp.addr()));

    let relay = ("application/dtmf-relay", "Signal=5\r\nDuration=160\r\n");
    client.request(&mut d.call, "INFO", &[], Some(relay));
    let resp = client.expect_final(&mut d.call, "INFO", SIP_STEP);
    assert_eq!(resp.status(), Some(200), "{}", resp.to_text());

    client.request(&mut d.call, "INFO", &[], Some(("text/plain", "5\r\n")));
    let resp = client.expect_final(&mut d.call, "INFO", SIP_STEP);
    assert_eq!(resp.status(), Some(415), "{}", resp.to_text());
    let accept: Vec<String> = resp
        .header_values("Accept")
        .iter()
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    assert!(
        accept.iter().any(|t| t == "application/dtmf-relay"),
        "415 must list what we accept (RFC 3261 §21.4.13), Accept: {accept:?}"
    );

    hang_up(&mut client, &mut d.call);
}

/// The same INVITE (same branch) three times over UDP — twice at once, once after the
/// answer — is one call: every 200 carries the same To tag, one RTP stream arrives, and the
/// server logs one incoming call.
#[test]
fn retransmitted_invite_over_udp_makes_exactly_one_call() {
    let server = Server::start();
    let mut client = SipClient::udp(server.sip_addr());
    let mut rtp = RtpReceiver::bind();
    let mut call = client.new_call("1000");
    let offer = SdpOffer::g711(rtp.addr()).render();
    let invite = client.invite_text(&mut call, Some(("application/sdp", &offer)), &[]);
    client.send_raw(invite.as_bytes());
    client.send_raw(invite.as_bytes());
    let ok = client.expect_final(&mut call, "INVITE", SIP_STEP);
    assert_eq!(ok.status(), Some(200), "{}", ok.to_text());
    client.send_raw(invite.as_bytes());
    let again = client.expect_final(&mut call, "INVITE", SIP_STEP);
    client.ack(&call, &ok);

    let mut finals = vec![ok.clone(), again];
    let cseq = call.invite_cseq;
    finals.extend(
        client
            .drain(Duration::from_millis(500))
            .into_iter()
            .filter(|m| {
                m.status().is_some_and(|s| s >= 200) && m.cseq() == Some((cseq, "INVITE".into()))
            }),
    );
    for f in &finals {
        assert_eq!(f.status(), Some(200), "{}", f.to_text());
        assert_eq!(
            f.to_tag(),
            call.to_tag,
            "a second To tag means a second dialog"
        );
    }

    let mut packets = vec![first_packet(&mut rtp, &client)];
    packets.extend(rtp.recv_until(FIRST_RTP, |p: &[RtpPacket]| p.len() >= 25));
    if let Err(e) = rtp::check_stream(&packets) {
        panic!("two calls' streams would interleave; got: {e}");
    }

    assert!(server.wait_for_log("incoming call", SIP_STEP));
    let incoming = server.log_lines_with(&["incoming call", &call.call_id]);
    assert_eq!(
        incoming.len(),
        1,
        "one INVITE transaction, one call: {incoming:#?}"
    );
    hang_up(&mut client, &mut call);
}

/// Over TCP a message is whatever Content-Length says, however it is cut: headers in three
/// writes (one cut mid-line), the body later; the server answers only when the message is
/// whole. Two requests in one write are two messages.
#[test]
fn tcp_message_split_across_writes_is_reassembled() {
    let server = Server::start();
    let mut client = SipClient::tcp(server.sip_addr());
    let mut rtp = RtpReceiver::bind();
    let mut call = client.new_call("1000");
    let offer = SdpOffer::g711(rtp.addr()).render();
    let invite = client.invite_text(&mut call, Some(("application/sdp", &offer)), &[]);
    let body_at = invite.find("\r\n\r\n").expect("header end") + 4;
    let (head, body) = invite.split_at(body_at);
    let cuts = [0, head.len() / 3, 2 * head.len() / 3, head.len()];
    for w in cuts.windows(2) {
        client.send_raw(&head.as_bytes()[w[0]..w[1]]);
        if let Some(m) = client.recv(PAUSE) {
            client.fail(&format!("answered part of a message: {}", m.start_line));
        }
    }
    client.send_raw(body.as_bytes());
    let ok = client.expect_final(&mut call, "INVITE", SIP_STEP);
    assert_eq!(ok.status(), Some(200), "{}", ok.to_text());
    client.ack(&call, &ok);
    first_packet(&mut rtp, &client);

    let (a, text_a) = client.options_text();
    let (b, text_b) = client.options_text();
    client.send_raw(format!("{text_a}{text_b}").as_bytes());
    for mut o in [a, b] {
        let r = client.expect_final(&mut o, "OPTIONS", SIP_STEP);
        assert_eq!(r.status(), Some(200), "{}", r.to_text());
    }
    hang_up(&mut client, &mut call);
}

/// The head of a request from `client` whose Content-Length we choose.
fn request_head(client: &SipClient, method: &str, content_length: usize) -> String {
    let call = client.new_call("1000");
    format!(
        "{method} {} SIP/2.0\r\n\
         Via: SIP/2.0/TCP {};branch={};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <{}>;tag={}\r\n\
         To: <{}>\r\n\
         Call-ID: {}\r\n\
         CSeq: 1 {method}\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {content_length}\r\n\r\n",
        call.request_uri,
        client.local_addr(),
        sip::new_branch(),
        call.local_uri,
        call.from_tag,
        call.remote_uri,
        call.call_id,
    )
}

/// After the server gave up on a stream: it closed the connection, and whatever it said
/// first was an error response.
/// The server answered `513 Message Too Large` (RFC 3261 §21.5.11) and closed the connection.
fn assert_too_large_then_closed(client: &mut SipClient, what: &str) {
    if !client.wait_closed(SIP_STEP) {
        client.fail(&format!("{what}: connection still open {SIP_STEP:?} later"));
    }
    let answers: Vec<Option<u16>> = client
        .drain(Duration::ZERO)
        .iter()
        .map(|m| m.status())
        .collect();
    if answers != [Some(513)] {
        client.fail(&format!("{what}: expected one 513, got {answers:?}"));
    }
}

/// A Content-Length above the 64 KiB limit: 513, the connection is closed, and a new TCP
/// connection makes a normal call.
#[test]
fn tcp_content_length_over_the_limit_closes_the_connection() {
    let server = Server::start();
    let mut client = SipClient::tcp(server.sip_addr());
    let head = request_head(&client, "INVITE", MAX_MESSAGE + 1000);
    client.send_raw(head.as_bytes());
    // Some of the promised body; the server may already have closed.
    let _ = client.try_send_raw(&[b'x'; 4096]);
    assert_too_large_then_closed(&mut client, "Content-Length over 64 KiB");
    normal_call_works(&server, Transport::Tcp);
}

/// A header block that never ends: once it passes 64 KiB, 513 and the connection is closed,
/// and a new TCP connection makes a normal call.
#[test]
fn tcp_endless_header_closes_the_connection() {
    let server = Server::start();
    let mut client = SipClient::tcp(server.sip_addr());
    let head = request_head(&client, "OPTIONS", 0);
    let start = head.split("Content-Type").next().expect("head");
    client.send_raw(start.as_bytes());
    let filler = format!("X-Filler: {}\r\n", "a".repeat(1000));
    let mut sent = start.len();
    // Twice the limit at most; stop once the server has hung up on us.
    while sent < 2 * MAX_MESSAGE {
        if client.try_send_raw(filler.as_bytes()).is_err() {
            break;
        }
        sent += filler.len();
    }
    assert!(sent > MAX_MESSAGE, "we could only write {sent} bytes");
    assert_too_large_then_closed(&mut client, "endless header block");
    normal_call_works(&server, Transport::Tcp);
}

/// What a TCP stream does with a torture message beyond answering it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum OnStream {
    /// A complete message: answered (or ignored) and the connection stays usable.
    Framed,
    /// Incomplete by its own framing (Content-Length beyond the bytes, or no blank line
    /// after the headers): the server must wait for more (manifest, README).
    Waits,
    /// Unframeable (negative or conflicting Content-Length): the server answers at most a
    /// 400 and closes the connection (manifest).
    Closes,
    /// No Content-Length: on a stream that means no body (RFC 3261 §18.3, §20.14), so the
    /// message is answered and its body bytes are left on the stream as the start of the
    /// next "message"; we take the answer and start a new connection.
    NoLength,
}

fn on_stream(file: &str) -> OnStream {
    match file {
        "rfc4475/clerr.dat" | "rfc4475/baddn.dat" => OnStream::Waits,
        "rfc4475/ncl.dat" | "rfc4475/mcl01.dat" => OnStream::Closes,
        "rfc4475/inv2543.dat" => OnStream::NoLength,
        _ => OnStream::Framed,
    }
}

/// Sends an OPTIONS after whatever was sent last and collects every message that arrives
/// before its 200: the server handles one connection's (or one source's) messages in order,
/// so those are the answers to what came before. `None` if the connection closed first.
fn through_barrier(client: &mut SipClient) -> Option<Vec<SipMessage>> {
    let (barrier, text) = client.options_text();
    if client.try_send_raw(text.as_bytes()).is_err() {
        return None;
    }
    let mut got = Vec::new();
    for _ in 0..1000 {
        let Some(m) = client.recv(SIP_STEP) else {
            if client.is_closed() {
                return None;
            }
            client.fail("no answer to the OPTIONS sent after a torture message");
        };
        if m.is_response() && m.call_id() == Some(barrier.call_id.as_str()) {
            assert_eq!(m.status(), Some(200), "barrier OPTIONS: {}", m.to_text());
            return Some(got);
        }
        got.push(m);
    }
    client.fail("more than 1000 messages before the barrier's answer")
}

/// The first status among `msgs`, judged against the table.
fn judge(
    transport: &str,
    file: &str,
    allowed: &[u16],
    msgs: &[SipMessage],
    failures: &mut Vec<String>,
) {
    let statuses: Vec<u16> = msgs.iter().filter_map(SipMessage::status).collect();
    let ok = match statuses.first() {
        None => allowed.is_empty(),
        Some(s) => allowed.contains(s),
    };
    if !ok {
        failures.push(format!(
            "{transport} {file}: expected first status in {allowed:?}, got {statuses:?}"
        ));
    }
}

/// The identity of a response, to recognise a retransmission of one already judged.
fn response_key(m: &SipMessage) -> String {
    format!(
        "{:?}|{:?}|{:?}|{:?}",
        m.status(),
        m.call_id(),
        m.header("CSeq"),
        m.to_tag()
    )
}

fn is_2xx_to_invite(m: &SipMessage) -> bool {
    m.status().is_some_and(|s| (200..300).contains(&s))
        && m.cseq().is_some_and(|(_, method)| method == "INVITE")
}

fn torture_over_udp(server: &mut Server, failures: &mut Vec<String>) {
    for (file, allowed) in EXPECTED {
        // A socket per message: its answers (and any retransmissions) come only here.
        let mut client = SipClient::udp(server.sip_addr());
        let raw = torture::load(file);
        let bytes = if torture::is_request(&raw) {
            torture::rewrite_top_via_sent_by(&raw, client.local_addr()).unwrap_or(raw)
        } else {
            raw
        };
        client.send_raw(&bytes);
        let got = through_barrier(&mut client).expect("UDP does not close");
        judge("UDP", file, allowed, &got, failures);
        assert!(
            server.is_running(),
            "pinbridge died after {file} over UDP\n{}",
            server.log_tail()
        );
    }
}

fn torture_over_tcp(server: &mut Server, failures: &mut Vec<String>) {
    let mut conn: Option<SipClient> = None;
    let mut judged: HashSet<String> = HashSet::new();
    for (file, allowed) in EXPECTED {
        let client = conn.get_or_insert_with(|| SipClient::tcp(server.sip_addr()));
        let bytes = torture::load(file);
        if let Err(e) = client.try_send_raw(&bytes) {
            failures.push(format!(
                "TCP {file}: cannot send on a fresh connection: {e}"
            ));
            conn = None;
            continue;
        }
        match on_stream(file) {
            OnStream::Waits => {
                if let Some(m) = client.recv(PAUSE) {
                    failures.push(format!(
                        "TCP {file}: answered an incomplete message: {}",
                        m.start_line
                    ));
                }
                conn = None; // we give up on it; the server sees the close
            }
            OnStream::Closes => {
                if !client.wait_closed(SIP_STEP) {
                    failures.push(format!("TCP {file}: connection not closed"));
                }
                let got = client.drain(Duration::ZERO);
                if !got.is_empty() {
                    judge("TCP", file, allowed, &got, failures);
                }
                conn = None;
            }
            OnStream::NoLength => {
                let first = client.recv(SIP_STEP).into_iter().collect::<Vec<_>>();
                judge("TCP", file, allowed, &first, failures);
                conn = None;
            }
            OnStream::Framed => {
                let Some(got) = through_barrier(client) else {
                    failures.push(format!("TCP {file}: the server closed the connection"));
                    conn = None;
                    continue;
                };
                // 2xx to an earlier INVITE may be retransmitted on this connection (RFC 3261
                // §13.3.1.4) at any time; those are not answers to this message. Any other
                // repeat is: messages published with the same branch, sent-by and method
                // (cparam01/cparam02) are one transaction (§17.2.3), and the server rightly
                // answers the second with the first's response.
                let fresh: Vec<SipMessage> = got
                    .into_iter()
                    .filter(|m| {
                        m.is_response() && (judged.insert(response_key(m)) || !is_2xx_to_invite(m))
                    })
                    .collect();
                judge("TCP", file, allowed, &fresh, failures);
            }
        }
        assert!(
            server.is_running(),
            "pinbridge died after {file} over TCP\n{}",
            server.log_tail()
        );
    }
}

/// A caller after the torture hears the greeting: the decoded RTP matches
/// `audio/greeting.*` decoded independently by sox.
fn caller_hears_the_greeting(server: &Server) {
    let reference = audio::greeting_pcm8k();
    let mut client = SipClient::udp(server.sip_addr());
    let mut rtp = RtpReceiver::bind();
    let mut d = dial(&mut client, "1000", &SdpOffer::g711(rtp.addr()));
    let listen =
        Duration::from_millis(reference.len() as u64 / 8 + 1000).min(Duration::from_secs(20));
    let mut packets = vec![first_packet(&mut rtp, &client)];
    packets.extend(rtp.recv_for(listen));
    let heard = rtp::decode_stream(&packets);
    let c = rtp::best_correlation(&heard, &reference);
    assert!(
        c >= 0.8,
        "after the torture the caller does not hear the greeting (correlation {c:.3})"
    );
    hang_up(&mut client, &mut d.call);
}

/// Every RFC 4475/5118 torture message, over UDP (top Via's sent-by pointed at our socket)
/// and then over TCP (as published, one connection after another): the status the table
/// in `tests/common/torture.rs` allows, the server never dies, and a normal call works
/// afterwards.
#[test]
fn torture_corpus_over_the_wire_is_answered_as_the_table_says() {
    torture::assert_table_covers_manifest();
    let mut server = Server::start();
    let mut failures = Vec::new();
    torture_over_udp(&mut server, &mut failures);
    torture_over_tcp(&mut server, &mut failures);
    assert!(server.is_running(), "pinbridge died\n{}", server.log_tail());
    assert!(
        failures.is_empty(),
        "torture over the wire:\n{}",
        failures.join("\n")
    );
    caller_hears_the_greeting(&server);
    normal_call_works(&server, Transport::Tcp);
}
