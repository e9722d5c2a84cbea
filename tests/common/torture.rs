//! The RFC 4475 and RFC 5118 torture corpus in `../shared/sip-torture/`, and what our server
//! must answer to each message. `tests/sip_torture.rs` feeds it to the endpoint core
//! (sans-IO); `tests/sip_wire.rs` sends it to the running binary over UDP and TCP. Both
//! judge with the one table, [`EXPECTED`].

use std::net::SocketAddr;
use std::path::PathBuf;

/// What we accept as correct handling of each message, as (file, allowed first statuses);
/// an empty list means the message must be dropped without any answer.
pub const EXPECTED: &[(&str, &[u16])] = &[
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

/// The corpus folder (the project's `shared/sip-torture`); panics if it is missing.
pub fn torture_dir() -> PathBuf {
    let dir = super::repo_root().join("../shared/sip-torture");
    assert!(
        dir.join("manifest.json").exists(),
        "the torture corpus must sit at {} (the project's shared/ folder)",
        dir.display()
    );
    dir
}

/// The `file` entries of `manifest.json`, in order.
pub fn manifest_files() -> Vec<String> {
    let manifest = std::fs::read_to_string(torture_dir().join("manifest.json"))
        .expect("reading manifest.json");
    manifest
        .split("\"file\"")
        .skip(1)
        .filter_map(|rest| {
            let rest = rest.trim_start().strip_prefix(':')?.trim_start();
            let rest = rest.strip_prefix('"')?;
            Some(rest[..rest.find('"')?].to_string())
        })
        .collect()
}

/// Checks that [`EXPECTED`] and the manifest list the same files.
pub fn assert_table_covers_manifest() {
    let listed = manifest_files();
    let mut want: Vec<&str> = listed.iter().map(String::as_str).collect();
    let mut have: Vec<&str> = EXPECTED.iter().map(|(f, _)| *f).collect();
    want.sort_unstable();
    have.sort_unstable();
    assert_eq!(
        have, want,
        "every manifest entry needs exactly one expectation"
    );
}

/// A message's bytes as the tests send it: RFC 4475 byte-exact, RFC 5118 normalised (see
/// [`normalise_5118`]).
pub fn load(file: &str) -> Vec<u8> {
    let raw = std::fs::read(torture_dir().join(file))
        .unwrap_or_else(|e| panic!("reading torture message {file}: {e}"));
    if file.starts_with("rfc5118/") {
        normalise_5118(&raw)
    } else {
        raw
    }
}

/// RFC 5118's published bytes use bare LF and some Content-Lengths are off; the shared
/// README says to fix both to test semantics.
pub fn normalise_5118(raw: &[u8]) -> Vec<u8> {
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

/// Whether the message is a request (its start line is not a status line).
pub fn is_request(msg: &[u8]) -> bool {
    !msg.starts_with(b"SIP/")
}

fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Where the header block ends (the first empty line), or the whole message if none.
fn head_end(msg: &[u8]) -> usize {
    let crlf = msg.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = msg.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(msg.len()),
    }
}

/// Replaces the sent-by (`host[:port]`) of the first value of the first Via header with
/// `addr`, leaving every other byte as it was, so that a server answering "where the Via
/// says" (RFC 3261 §18.2.2) answers our socket. Copes with compact `v:`, folded lines and
/// LWS inside the sent-protocol (RFC 4475 `wsinv`). `None` when the message has no Via.
pub fn rewrite_top_via_sent_by(msg: &[u8], addr: SocketAddr) -> Option<Vec<u8>> {
    let end = head_end(msg);
    let mut pos = msg[..end].iter().position(|&b| b == b'\n')? + 1;
    while pos < end {
        let line_end = msg[pos..end]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(end, |i| pos + i);
        let line = &msg[pos..line_end];
        let folded = matches!(line.first(), Some(b' ' | b'\t'));
        if let (false, Some(colon)) = (folded, line.iter().position(|&b| b == b':')) {
            let name = String::from_utf8_lossy(&line[..colon]);
            let name = name.trim();
            if name.eq_ignore_ascii_case("via") || name.eq_ignore_ascii_case("v") {
                return splice_sent_by(msg, pos + colon + 1, end, addr);
            }
        }
        pos = line_end + 1;
    }
    None
}

/// From the start of a Via value: skip `SIP / 2.0 / transport` and the LWS after it, then
/// replace the sent-by, which runs to the first `;`, `,` or LWS.
fn splice_sent_by(msg: &[u8], start: usize, end: usize, addr: SocketAddr) -> Option<Vec<u8>> {
    let mut i = start;
    let mut slashes = 0;
    while slashes < 2 {
        match msg.get(i)? {
            b'/' => slashes += 1,
            b';' | b',' => return None,
            _ => {}
        }
        i += 1;
        if i >= end {
            return None;
        }
    }
    while i < end && is_lws(msg[i]) {
        i += 1;
    }
    while i < end && !is_lws(msg[i]) && msg[i] != b';' && msg[i] != b',' {
        i += 1; // the transport token
    }
    while i < end && is_lws(msg[i]) {
        i += 1;
    }
    let host_start = i;
    while i < end && !is_lws(msg[i]) && msg[i] != b';' && msg[i] != b',' {
        i += 1;
    }
    if i == host_start {
        return None;
    }
    let mut out = msg[..host_start].to_vec();
    out.extend_from_slice(addr.to_string().as_bytes());
    out.extend_from_slice(&msg[i..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(msg: &str) -> Option<String> {
        let addr: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        rewrite_top_via_sent_by(msg.as_bytes(), addr).map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn plain_via_gets_our_address_and_keeps_its_params() {
        let msg = "OPTIONS sip:a@b SIP/2.0\r\nTo: <sip:a@b>\r\n\
                   Via: SIP/2.0/UDP host5.example.com:5060;branch=z9hG4bKx\r\n\
                   Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKy\r\nl: 4\r\n\r\nbody";
        let want = msg.replace("host5.example.com:5060", "127.0.0.1:40000");
        assert_eq!(rewrite(msg).as_deref(), Some(want.as_str()));
    }

    #[test]
    fn folded_compact_and_ipv6_vias_are_found() {
        let wsinv = "INVITE sip:x SIP/2.0\r\nTO :\r\n sip:v@x;tag=1\r\n\
                     Via  : SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw\r\n\r\n";
        let got = rewrite(wsinv).unwrap();
        assert!(
            got.contains("/UDP\r\n    127.0.0.1:40000;branch=390skdjuw"),
            "{got}"
        );
        let compact = "BYE sip:x SIP/2.0\r\nv: SIP/2.0/TCP  [2001:db8::9:1]:6050 ;rport\r\n\r\n";
        assert_eq!(
            rewrite(compact).as_deref(),
            Some("BYE sip:x SIP/2.0\r\nv: SIP/2.0/TCP  127.0.0.1:40000 ;rport\r\n\r\n")
        );
        // A "v:" inside the body or a folded line is not a Via header.
        assert_eq!(
            rewrite("OPTIONS sip:x SIP/2.0\r\nl: 5\r\n\r\nv: 0\r\n"),
            None
        );
        assert_eq!(
            rewrite("INVITE sip:x\r\nVia-Like: 1\r\n via: x\r\n\r\n"),
            None
        );
    }

    #[test]
    fn the_table_and_the_manifest_agree() {
        assert_table_covers_manifest();
    }
}
