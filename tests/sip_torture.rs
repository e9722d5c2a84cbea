//! Every RFC 4475 and RFC 5118 torture message from `../shared/sip-torture/`, fed to the
//! endpoint core, must be handled as the manifest says: valid requests are processed (the
//! status a UAS like ours gives them), invalid ones are rejected with a 4xx/5xx or dropped,
//! responses that match nothing are dropped, and nothing panics.

mod common;

use std::net::SocketAddr;
use std::time::Instant;

use common::torture::{self, EXPECTED};
use pinbridge::sip::endpoint::{Endpoint, EndpointConfig, Event};
use pinbridge::sip::transport::{Peer, Transport};

fn endpoint() -> Endpoint {
    Endpoint::new(EndpointConfig {
        sip_addr: "127.0.0.1:5060".parse().unwrap(),
        media_ip: "127.0.0.1".parse().unwrap(),
        user_agent: "pinbridge/test".into(),
    })
}

#[test]
fn every_torture_message_is_handled_as_the_manifest_says() {
    torture::assert_table_covers_manifest();
    let source: SocketAddr = "127.0.0.1:5070".parse().unwrap();
    let mut failures = Vec::new();
    for (file, allowed) in EXPECTED {
        let bytes = torture::load(file);
        let mut ep = endpoint();
        let peer = Peer {
            transport: Transport::Udp,
            addr: source,
            conn: None,
        };
        ep.handle_datagram(Instant::now(), &bytes, peer);
        let mut statuses = Vec::new();
        while let Some(t) = ep.poll_transmit() {
            // An error response echoes the peer's broken headers, so read only its status line.
            let text = String::from_utf8_lossy(&t.bytes);
            let line = text.lines().next().unwrap_or_default();
            let mut it = line.splitn(3, ' ');
            match (it.next(), it.next().and_then(|c| c.parse::<u16>().ok())) {
                (Some("SIP/2.0"), Some(status)) => {
                    statuses.push((status, it.next().unwrap_or_default().to_string()))
                }
                _ => failures.push(format!(
                    "{file}: we sent something that is not a response: {line}"
                )),
            }
        }
        let first = statuses.first().map(|(s, _)| *s);
        let ok = match first {
            None => allowed.is_empty(),
            Some(s) => allowed.contains(&s),
        };
        if !ok {
            failures.push(format!("{file}: expected {allowed:?}, got {statuses:?}"));
        }
        if file.ends_with("dblreq.dat") {
            assert_eq!(statuses.len(), 1, "dblreq: only the REGISTER is answered");
        }
        // A valid INVITE becomes a call offer.
        if allowed == &[100] {
            let incoming = std::iter::from_fn(|| ep.poll_event())
                .filter(|e| matches!(e, Event::Incoming { .. }))
                .count();
            if incoming != 1 {
                failures.push(format!(
                    "{file}: expected one incoming call, got {incoming}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "torture failures:\n{}",
        failures.join("\n")
    );
}
