//! Issue 7, "malformed SIP over the wire": hostile messages sent to the real binary over UDP
//! and TCP — NUL bytes, invalid UTF-8, a header flood, deep folding, an overlong line,
//! Content-Length that does not match the body, bad CSeq, an unknown URI scheme, oversize
//! messages. Each gets `400` with a reason phrase naming the problem when its Via is
//! readable (`416` for the scheme, `513` for the size), and after each an honest call still
//! connects and hangs up on the same transport.

mod common;

use std::time::Duration;

use common::sip::{SipMessage, Transport};
use common::{RtpReceiver, SIP_STEP, SdpOffer, Server, SipClient, dial, hang_up};

/// One hostile request: a valid OPTIONS (or INVITE) from the client, edited.
struct Case {
    name: &'static str,
    /// Builds the bytes from a valid request text of this client.
    build: fn(&str) -> Vec<u8>,
    status: u16,
    /// Words the reason phrase must contain.
    reason: &'static str,
    /// Also over TCP (the UDP-only cases depend on datagram boundaries).
    tcp: bool,
}

fn replace(text: &str, from: &str, to: &str) -> Vec<u8> {
    assert!(text.contains(from), "{from:?} not in the request");
    text.replacen(from, to, 1).into_bytes()
}

const CASES: &[Case] = &[
    Case {
        name: "NUL byte in the From URI",
        build: |t| replace(t, "From: <sip:caller@", "From: <sip:cal\0ler@"),
        status: 400,
        reason: "Malformed From",
        tcp: true,
    },
    Case {
        name: "invalid UTF-8 in a header value",
        build: |t| {
            let mut b = replace(t, "User-Agent: pinbridge-tests", "User-Agent: caf#");
            let at = b.iter().position(|c| *c == b'#').expect("marker");
            b[at] = 0xe9;
            b
        },
        status: 400,
        reason: "invalid UTF-8",
        tcp: true,
    },
    Case {
        name: "200 header lines (limit 128)",
        build: |t| {
            replace(
                t,
                "User-Agent: pinbridge-tests\r\n",
                &"X-Flood: 1\r\n".repeat(200),
            )
        },
        status: 400,
        reason: "too many header fields",
        tcp: true,
    },
    Case {
        name: "a header folded 5000 times",
        build: |t| {
            let folded = format!("User-Agent: a{}", "\r\n x".repeat(5000));
            replace(t, "User-Agent: pinbridge-tests", &folded)
        },
        status: 400,
        reason: "header line too long",
        tcp: true,
    },
    Case {
        name: "a 9000-octet header line",
        build: |t| {
            let long = format!("User-Agent: {}", "y".repeat(9000));
            replace(t, "User-Agent: pinbridge-tests", &long)
        },
        status: 400,
        reason: "header line too long",
        tcp: true,
    },
    Case {
        name: "Content-Length larger than the body",
        build: |t| replace(t, "Content-Length: 0", "Content-Length: 40"),
        status: 400,
        reason: "exceeds",
        tcp: false,
    },
    Case {
        name: "two different Content-Lengths",
        build: |t| replace(t, "Content-Length: 0", "Content-Length: 0\r\nl: 3"),
        status: 400,
        reason: "conflicting Content-Length",
        tcp: true,
    },
    Case {
        name: "negative Content-Length",
        build: |t| replace(t, "Content-Length: 0", "Content-Length: -5"),
        status: 400,
        reason: "Content-Length",
        tcp: true,
    },
    Case {
        name: "CSeq not a number",
        build: |t| replace(t, "CSeq: 1 OPTIONS", "CSeq: one OPTIONS"),
        status: 400,
        reason: "Invalid CSeq",
        tcp: true,
    },
    Case {
        name: "CSeq 2**31",
        build: |t| replace(t, "CSeq: 1 OPTIONS", "CSeq: 2147483648 OPTIONS"),
        status: 400,
        reason: "Invalid CSeq",
        tcp: true,
    },
    Case {
        name: "CSeq method not the request's",
        build: |t| replace(t, "CSeq: 1 OPTIONS", "CSeq: 1 INVITE"),
        status: 400,
        reason: "CSeq method does not match",
        tcp: true,
    },
    Case {
        name: "unknown Request-URI scheme",
        build: |t| {
            let uri = t
                .split_whitespace()
                .nth(1)
                .expect("request line")
                .to_string();
            replace(
                t,
                &format!("OPTIONS {uri} "),
                "OPTIONS xmpp:bridge@example.com ",
            )
        },
        status: 416,
        reason: "Unsupported URI Scheme",
        tcp: true,
    },
    Case {
        name: "Content-Length over the 64 KiB limit",
        build: |t| {
            let body = "x".repeat(100);
            replace(
                t,
                "Content-Length: 0\r\n\r\n",
                &format!("Content-Length: 70000\r\n\r\n{body}"),
            )
        },
        status: 513,
        reason: "limit",
        tcp: false,
    },
];

fn client(server: &Server, transport: Transport) -> SipClient {
    match transport {
        Transport::Udp => SipClient::udp(server.sip_addr()),
        Transport::Tcp => SipClient::tcp(server.sip_addr()),
    }
}

fn honest_call(server: &Server, transport: Transport) {
    let mut c = client(server, transport);
    let rtp = RtpReceiver::bind();
    let mut d = dial(&mut c, "1000", &SdpOffer::g711(rtp.addr()));
    hang_up(&mut c, &mut d.call);
}

fn run_cases(server: &Server, transport: Transport) -> Vec<String> {
    let mut failures = Vec::new();
    for case in CASES
        .iter()
        .filter(|c| transport == Transport::Udp || c.tcp)
    {
        let mut c = client(server, transport);
        let (call, text) = c.options_text();
        let bytes = (case.build)(&text);
        c.send_raw(&bytes);
        let got: Option<SipMessage> = c.recv_matching(SIP_STEP, |m| {
            m.is_response() && m.call_id() == Some(&call.call_id)
        });
        match got {
            Some(m)
                if m.status() == Some(case.status)
                    && m.reason().is_some_and(|r| r.contains(case.reason)) =>
            {
                println!(
                    "{transport:?} {}: {} {}",
                    case.name,
                    case.status,
                    m.reason().unwrap_or("")
                );
            }
            Some(m) => failures.push(format!(
                "{transport:?} {}: got {:?}, want {} with {:?}",
                case.name, m.start_line, case.status, case.reason
            )),
            None => failures.push(format!("{transport:?} {}: no answer", case.name)),
        }
        honest_call(server, transport);
    }
    failures
}

#[test]
fn hostile_messages_over_udp_get_a_reasoned_status_and_calls_still_connect() {
    let mut server = Server::start();
    let failures = run_cases(&server, Transport::Udp);
    assert!(server.is_running(), "the server died");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn hostile_messages_over_tcp_get_a_reasoned_status_and_calls_still_connect() {
    let mut server = Server::start();
    let failures = run_cases(&server, Transport::Tcp);
    assert!(server.is_running(), "the server died");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Unaddressable garbage (no Via, not UTF-8, NULs) is dropped and counted in the logs, and
/// the server goes on: an honest call connects after a few hundred such datagrams.
#[test]
fn unaddressable_garbage_is_dropped_and_calls_still_connect() {
    let mut server = Server::start();
    let mut c = SipClient::udp(server.sip_addr());
    let junk: [&[u8]; 4] = [
        b"\0\0\0\0\0\0\0\0",
        b"\xff\xfe\xfd INVITE \xc3\x28 SIP/2.0\r\n\r\n",
        b"INVITE sip:a@b SIP/2.0\r\nCall-ID: x\r\n\r\n",
        b"SIP/2.0 999 Nope\r\n\r\n",
    ];
    for i in 0..200 {
        c.send_raw(junk[i % junk.len()]);
    }
    assert!(
        c.drain(Duration::from_millis(300)).is_empty(),
        "garbage was answered"
    );
    assert!(server.wait_for_log("dropped unparseable message", SIP_STEP));
    honest_call(&server, Transport::Udp);
    assert!(server.is_running());
}
