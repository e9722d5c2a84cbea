//! SIP signalling per message, sans-IO: parsing a SIPp INVITE (with its SDP offer) and a BYE
//! with `sip::msg`, and a whole call through the `sip::endpoint` core (INVITE → 100 and the
//! Incoming event, accept → 200 with the SDP answer, ACK → Confirmed, BYE → 200 → Ended),
//! its transactions and timers included, on a virtual clock at 500 calls per second so the
//! endpoint holds the transactions a real server at that rate holds (Timer J, K and H).
//!
//! `cargo bench --bench sip` (add `-- --quick` for a fast look).

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use pinbridge::sip::endpoint::{Endpoint, EndpointConfig, Event};
use pinbridge::sip::limits::{Limits, RateLimit};
use pinbridge::sip::msg;
use pinbridge::sip::transport::{Peer, Transport};

const CALLER: &str = "127.0.0.1:5070";

/// A request as SIPp's basic-call.xml sends it.
fn request(method: &str, call: u64, cseq: u32, to_tag: &str, body: &str) -> String {
    let ctype = if body.is_empty() {
        String::new()
    } else {
        "Content-Type: application/sdp\r\n".to_string()
    };
    format!(
        "{method} sip:service@127.0.0.1:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP {CALLER};branch=z9hG4bK-{call}-{cseq}-{method}\r\n\
         From: sipp <sip:sipp@{CALLER}>;tag=12345SIPpTag00{call}\r\n\
         To: <sip:service@127.0.0.1:5060>{to_tag}\r\n\
         Call-ID: {call}-12345@127.0.0.1\r\n\
         CSeq: {cseq} {method}\r\n\
         Contact: <sip:sipp@{CALLER};transport=UDP>\r\n\
         Max-Forwards: 70\r\n\
         Subject: pinbridge basic call\r\n\
         {ctype}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

const OFFER: &str = "v=0\r\n\
    o=sipp 53655765 2353687637 IN IP4 127.0.0.1\r\n\
    s=-\r\n\
    c=IN IP4 127.0.0.1\r\n\
    t=0 0\r\n\
    m=audio 6000 RTP/AVP 0 8 96\r\n\
    a=rtpmap:0 PCMU/8000\r\n\
    a=rtpmap:8 PCMA/8000\r\n\
    a=rtpmap:96 telephone-event/8000\r\n\
    a=fmtp:96 0-15\r\n\
    a=ptime:20\r\n\
    a=sendrecv\r\n";

fn peer() -> Peer {
    Peer {
        transport: Transport::Udp,
        addr: CALLER.parse::<SocketAddr>().expect("caller address"),
        conn: None,
    }
}

fn parse(c: &mut Criterion) {
    let invite = request("INVITE", 1, 1, "", OFFER);
    let bye = request("BYE", 1, 2, ";tag=abc", "");
    c.bench_function("sip/parse/invite_with_sdp", |b| {
        b.iter(|| msg::parse(black_box(invite.as_bytes())).expect("parses"))
    });
    c.bench_function("sip/parse/bye", |b| {
        b.iter(|| msg::parse(black_box(bye.as_bytes())).expect("parses"))
    });
}

/// One call through the endpoint; the message texts are built before the clock starts.
fn endpoint(c: &mut Criterion) {
    c.bench_function("sip/endpoint/call_invite_accept_ack_bye", |b| {
        b.iter_custom(|iters| {
            // Every call comes from one peer, as from SIPp run with `--invite-rate 0`.
            let mut ep = Endpoint::new(EndpointConfig {
                sip_addr: "127.0.0.1:5060".parse().expect("address"),
                media_ip: "127.0.0.1".parse().expect("address"),
                user_agent: "pinbridge/bench".into(),
            })
            .with_limits(Limits {
                invites: RateLimit::UNLIMITED,
                messages: RateLimit::UNLIMITED,
                ..Limits::default()
            });
            let mut now = Instant::now();
            let mut spent = Duration::ZERO;
            let mut out = 0usize;
            for call in 0..iters {
                // 500 calls per second of virtual time: timers fire as on a loaded server.
                now += Duration::from_millis(2);
                let invite = request("INVITE", call, 1, "", OFFER);
                let start = Instant::now();
                ep.handle_timeout(now);
                ep.handle_datagram(now, invite.as_bytes(), peer());
                let mut leg = None;
                while let Some(ev) = ep.poll_event() {
                    if let Event::Incoming { leg: l, .. } = ev {
                        leg = Some(l);
                    }
                }
                let leg = leg.expect("an Incoming event");
                ep.accept(now, leg, 30000);
                let mut sent = Vec::with_capacity(2);
                while let Some(t) = ep.poll_transmit() {
                    sent.push(t.bytes);
                }
                while ep.poll_event().is_some() {}
                spent += start.elapsed();
                let tag = sent
                    .iter()
                    .find_map(|bytes| match msg::parse(bytes) {
                        Ok(msg::Message::Response(r)) if r.status == 200 => {
                            r.to_tag().map(str::to_owned)
                        }
                        _ => None,
                    })
                    .expect("a 200 with a To tag");
                out += sent.iter().map(Vec::len).sum::<usize>();
                let to_tag = format!(";tag={tag}");
                let ack = request("ACK", call, 1, &to_tag, "").replace("-1-ACK", "-ack");
                let bye = request("BYE", call, 2, &to_tag, "");
                let start = Instant::now();
                ep.handle_datagram(now, ack.as_bytes(), peer());
                ep.handle_datagram(now, bye.as_bytes(), peer());
                while let Some(t) = ep.poll_transmit() {
                    out += t.bytes.len();
                }
                let mut ended = false;
                while let Some(ev) = ep.poll_event() {
                    ended |= matches!(ev, Event::Ended { .. });
                }
                spent += start.elapsed();
                assert!(ended, "the call ended");
            }
            black_box(out);
            spent
        })
    });
}

criterion_group!(benches, parse, endpoint);
criterion_main!(benches);
