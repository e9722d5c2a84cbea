//! Every RFC 4475 and RFC 5118 torture message from `../shared/sip-torture/`, fed to the
//! endpoint core, must be handled as the manifest says: valid requests are processed (the
//! status a UAS like ours gives them), invalid ones are rejected with a 4xx/5xx or dropped,
//! responses that match nothing are dropped, and nothing panics.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use pinbridge::sip::endpoint::{Endpoint, EndpointConfig, Event};
use pinbridge::sip::transport::{Peer, Transport};

fn torture_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/sip-torture");
    assert!(
        dir.join("manifest.json").exists(),
        "the torture corpus must sit at {} (the project's shared/ folder)",
        dir.display()
    );
    dir
}

/// What we accept as correct handling of each message, as (file, allowed first statuses);
/// an empty list means the message must be dropped without any answer.
const EXPECTED: &[(&str, &[u16])] = &[
    // RFC 4475 §3.1.1 valid messages
    // Its To carries a tag, so it is a mid-dialog request for a dialog we do not have:
    // RFC 3261 §12.2.2 answers 481.
    ("rfc4475/wsinv.dat", &[481]),
    ("rfc4475/intmeth.dat", &[501, 405]),
    ("rfc4475/esc01.dat", &[100]),
    ("rfc4475/escnull.dat", &[405]),
    ("rfc4475/esc02.dat", &[501, 405]),
    ("rfc4475/lwsdisp.dat", &[200]),
    ("rfc4475/longreq.dat", &[100]),
    ("rfc4475/dblreq.dat", &[405]),
    ("rfc4475/semiuri.dat", &[200]),
    ("rfc4475/transports.dat", &[200]),
    ("rfc4475/mpart01.dat", &[405, 415]),
    ("rfc4475/unreason.dat", &[]),
    ("rfc4475/noreason.dat", &[]),
    // RFC 4475 §3.1.2 invalid messages
    ("rfc4475/badinv01.dat", &[400]),
    ("rfc4475/clerr.dat", &[400]),
    ("rfc4475/ncl.dat", &[400]),
    ("rfc4475/scalar02.dat", &[400]),
    ("rfc4475/scalarlg.dat", &[]),
    ("rfc4475/quotbal.dat", &[400]),
    ("rfc4475/ltgtruri.dat", &[400]),
    ("rfc4475/lwsruri.dat", &[400]),
    ("rfc4475/lwsstart.dat", &[400, 100]),
    ("rfc4475/trws.dat", &[400, 200]),
    ("rfc4475/escruri.dat", &[400]),
    ("rfc4475/baddate.dat", &[400, 100]),
    ("rfc4475/regbadct.dat", &[400]),
    ("rfc4475/badaspec.dat", &[400, 200]),
    ("rfc4475/baddn.dat", &[400]),
    ("rfc4475/badvers.dat", &[505]),
    ("rfc4475/mismatch01.dat", &[400]),
    ("rfc4475/mismatch02.dat", &[501, 400]),
    ("rfc4475/bigcode.dat", &[]),
    // RFC 4475 §3.2 transaction layer, §3.3 application layer
    ("rfc4475/badbranch.dat", &[200, 400]),
    ("rfc4475/insuf.dat", &[400]),
    ("rfc4475/unkscm.dat", &[416]),
    ("rfc4475/novelsc.dat", &[416]),
    ("rfc4475/unksm2.dat", &[405, 400]),
    ("rfc4475/bext01.dat", &[420]),
    ("rfc4475/invut.dat", &[415]),
    ("rfc4475/regaut01.dat", &[405]),
    ("rfc4475/multi01.dat", &[400]),
    ("rfc4475/mcl01.dat", &[400]),
    ("rfc4475/bcast.dat", &[]),
    ("rfc4475/zeromf.dat", &[200]),
    ("rfc4475/cparam01.dat", &[405]),
    ("rfc4475/cparam02.dat", &[405]),
    ("rfc4475/regescrt.dat", &[405]),
    ("rfc4475/sdp01.dat", &[406]),
    ("rfc4475/inv2543.dat", &[100]),
    ("rfc4475/test.dat", &[]),
    // RFC 5118
    ("rfc5118/ipv6-good.dat", &[405]),
    ("rfc5118/ipv6-bad.dat", &[400]),
    ("rfc5118/port-ambiguous.dat", &[405]),
    ("rfc5118/port-unambiguous.dat", &[405]),
    ("rfc5118/via-received-param-with-delim.dat", &[481]),
    ("rfc5118/via-received-param-no-delim.dat", &[200]),
    // Parsed fine; the only audio codec offered is G726-32, so 488 (RFC 3264 §6).
    ("rfc5118/ipv6-in-sdp.dat", &[488]),
    ("rfc5118/mult-ip-in-header.dat", &[481]),
    ("rfc5118/mult-ip-in-sdp.dat", &[100]),
    ("rfc5118/ipv4-mapped-ipv6.dat", &[488]),
    ("rfc5118/ipv6-bug-abnf-3-colons.dat", &[200]),
    ("rfc5118/ipv6-correct-abnf-2-colons.dat", &[200]),
];

fn endpoint() -> Endpoint {
    Endpoint::new(EndpointConfig {
        sip_addr: "127.0.0.1:5060".parse().unwrap(),
        media_ip: "127.0.0.1".parse().unwrap(),
        user_agent: "pinbridge/test".into(),
    })
}

/// RFC 5118's published bytes use bare LF and some Content-Lengths are off; the shared
/// README says to fix both to test semantics.
fn normalise_5118(raw: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(raw).replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let body = body.replace('\n', "\r\n");
    let mut out = String::new();
    for line in head.lines() {
        if line.to_ascii_lowercase().starts_with("content-length") {
            out.push_str(&format!("Content-Length: {}\r\n", body.len()));
        } else {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("\r\n");
    out.push_str(&body);
    out.into_bytes()
}

#[test]
fn every_torture_message_is_handled_as_the_manifest_says() {
    let dir = torture_dir();
    let manifest = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    let listed = manifest.matches("\"file\"").count();
    assert_eq!(
        listed,
        EXPECTED.len(),
        "every manifest entry has an expectation"
    );
    let source: SocketAddr = "127.0.0.1:5070".parse().unwrap();
    let mut failures = Vec::new();
    for (file, allowed) in EXPECTED {
        assert!(
            manifest.contains(&format!("\"{file}\"")),
            "{file} not in manifest"
        );
        let raw = std::fs::read(dir.join(file)).unwrap();
        let bytes = if file.starts_with("rfc5118/") {
            normalise_5118(&raw)
        } else {
            raw
        };
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
