//! A fuzz harness for every parser that reads network input, on the stable toolchain: seeded
//! mutations of *valid* inputs (the RFC 4475/5118 torture corpus and our own INVITE, BYE,
//! OPTIONS… texts, SDP offers, RTP and RFC 4733 packets, SIP INFO bodies), each fed to the
//! parser and to the sans-IO layer above it, with an oracle that says what a sane outcome is.
//!
//! Three users share it: the proptests in `tests/parse_props.rs` (proptest picks and shrinks
//! the [`Mutation`]s), the short bounded run in `tests/fuzz_short.rs`, and
//! `cargo run --release --example fuzz -- TARGET COUNT [SEED]` for long runs. A panic is
//! caught and counted as a crash; an oracle violation is counted as a failure; both keep the
//! first offending input so it can be replayed.
//!
//! No nightly, no `cargo fuzz`: the generator is a SplitMix64 seeded from the command line,
//! so a run is reproducible from `(target, seed, count)`.

use std::fmt;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::media::dtmf::info;
use crate::media::dtmf::rfc4733::{EVENT_LEN, EventReceiver, Rfc4733Error, TelephoneEvent};
use crate::media::rtp::RtpPacket;
use crate::sip::endpoint::{Endpoint, EndpointConfig, Event};
use crate::sip::msg::{self, MAX_MESSAGE_SIZE, Message, Method, ParseError};
use crate::sip::sdp::{self, LocalMedia};
use crate::sip::transport::{Peer, Transport};

/// Longest input a mutation may grow to: past the SIP size limit, so the limit is exercised.
pub const MAX_INPUT: usize = MAX_MESSAGE_SIZE + 4096;

/// Byte strings that tend to matter to a SIP/SDP parser, spliced in by [`Mutation::Token`].
pub const TOKENS: &[&[u8]] = &[
    b"\0",
    b"\r\n",
    b"\n",
    b"\r\n ",
    b"\r\n\t",
    b"\r\n\r\n",
    b" ",
    b":",
    b";",
    b",",
    b"=",
    b"<",
    b">",
    b"\"",
    b"\\",
    b"%00",
    b"%",
    b"@",
    b"[",
    b"]",
    b"\xff\xfe",
    b"\xc3\x28",
    b"\xe2\x82",
    b"SIP/2.0",
    b"sip:",
    b"tel:",
    b"z9hG4bK",
    b";tag=",
    b";branch=",
    b";rport",
    b"Content-Length: 99999\r\n",
    b"Content-Length: -1\r\n",
    b"l: 0\r\n",
    b"CSeq: 4294967296 INVITE\r\n",
    b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKx\r\n",
    b"v: SIP/2.0/TCP [::1]:5070\r\n",
    b"Require: 100rel\r\n",
    b"Content-Type: application/sdp\r\n",
    b"Content-Encoding: gzip\r\n",
    b"m=audio 0 RTP/AVP 0\r\n",
    b"m=video 9 RTP/AVP 31\r\n",
    b"c=IN IP6 ::1\r\n",
    b"a=rtpmap:101 telephone-event/8000\r\n",
    b"a=inactive\r\n",
    b"4294967295",
    b"65536",
    b"-1",
    b"0",
];

/// One edit to an input. Positions are taken modulo the input's length, so any value is
/// valid and proptest can shrink them freely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    FlipBit {
        at: usize,
        bit: u8,
    },
    SetByte {
        at: usize,
        byte: u8,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    Delete {
        at: usize,
        len: usize,
    },
    /// Splices in `TOKENS[token % TOKENS.len()]`.
    Token {
        at: usize,
        token: usize,
    },
    /// Repeats line `line` (CRLF or LF separated) `times` more times: duplicate headers, and
    /// with large counts a header flood.
    DuplicateLine {
        line: usize,
        times: usize,
    },
    /// Swaps two lines.
    SwapLines {
        a: usize,
        b: usize,
    },
    /// Cuts the input at `at`.
    Truncate {
        at: usize,
    },
    /// Folds line `line` many times over: `Name: a\r\n b\r\n b…` (deep folding).
    Fold {
        line: usize,
        times: usize,
    },
}

impl Mutation {
    /// Applies the edit in place; the result is never longer than [`MAX_INPUT`].
    pub fn apply(&self, input: &mut Vec<u8>) {
        let pos = |at: usize, len: usize| if len == 0 { 0 } else { at % (len + 1) };
        match self {
            Mutation::FlipBit { at, bit } => {
                if !input.is_empty() {
                    let i = at % input.len();
                    input[i] ^= 1 << (bit % 8);
                }
            }
            Mutation::SetByte { at, byte } => {
                if !input.is_empty() {
                    let i = at % input.len();
                    input[i] = *byte;
                }
            }
            Mutation::Insert { at, bytes } => {
                let i = pos(*at, input.len());
                input.splice(i..i, bytes.iter().copied());
            }
            Mutation::Delete { at, len } => {
                if !input.is_empty() {
                    let i = at % input.len();
                    let end = (i + len % 64 + 1).min(input.len());
                    input.drain(i..end);
                }
            }
            Mutation::Token { at, token } => {
                let i = pos(*at, input.len());
                let t = TOKENS[token % TOKENS.len()];
                input.splice(i..i, t.iter().copied());
            }
            Mutation::DuplicateLine { line, times } => {
                let lines = line_spans(input);
                if let Some(&(s, e)) = lines.get(line % lines.len().max(1)) {
                    let copy = input[s..e].to_vec();
                    let n = (times % 200).max(1);
                    let mut extra = Vec::with_capacity(copy.len() * n);
                    for _ in 0..n {
                        extra.extend_from_slice(&copy);
                    }
                    input.splice(e..e, extra);
                }
            }
            Mutation::SwapLines { a, b } => {
                let lines = line_spans(input);
                if lines.len() >= 2 {
                    let (x, y) = (a % lines.len(), b % lines.len());
                    let (x, y) = (x.min(y), x.max(y));
                    if x != y {
                        let (xs, xe) = lines[x];
                        let (ys, ye) = lines[y];
                        let mut out = input[..xs].to_vec();
                        out.extend_from_slice(&input[ys..ye]);
                        out.extend_from_slice(&input[xe..ys]);
                        out.extend_from_slice(&input[xs..xe]);
                        out.extend_from_slice(&input[ye..]);
                        *input = out;
                    }
                }
            }
            Mutation::Truncate { at } => {
                let i = pos(*at, input.len());
                input.truncate(i);
            }
            Mutation::Fold { line, times } => {
                let lines = line_spans(input);
                if let Some(&(_, e)) = lines.get(line % lines.len().max(1)) {
                    // Insert before the line's terminator.
                    let end = if e >= 2 && &input[e - 2..e] == b"\r\n" {
                        e - 2
                    } else if e >= 1 && input[e - 1] == b'\n' {
                        e - 1
                    } else {
                        e
                    };
                    let n = (times % 2000).max(1);
                    let mut extra = Vec::with_capacity(n * 4);
                    for _ in 0..n {
                        extra.extend_from_slice(b"\r\n x");
                    }
                    input.splice(end..end, extra);
                }
            }
        }
        input.truncate(MAX_INPUT);
    }
}

/// (start, end including the terminator) of each line.
fn line_spans(input: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, b) in input.iter().enumerate() {
        if *b == b'\n' {
            out.push((start, i + 1));
            start = i + 1;
        }
    }
    if start < input.len() {
        out.push((start, input.len()));
    }
    out
}

/// `seed` with every mutation applied in order.
pub fn mutate(seed: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for m in mutations {
        m.apply(&mut out);
    }
    out
}

/// SplitMix64: small, fast, and the same sequence on every platform and toolchain.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-enough in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// A random mutation; sizes are biased small, with the occasional large one.
    pub fn mutation(&mut self) -> Mutation {
        let at = self.next_u64() as usize;
        match self.below(10) {
            0 => Mutation::FlipBit {
                at,
                bit: self.below(8) as u8,
            },
            1 => Mutation::SetByte {
                at,
                byte: self.next_u64() as u8,
            },
            2 => {
                let n = self.below(16) + 1;
                Mutation::Insert {
                    at,
                    bytes: (0..n).map(|_| self.next_u64() as u8).collect(),
                }
            }
            3 => Mutation::Delete {
                at,
                len: self.below(64),
            },
            4 | 5 => Mutation::Token {
                at,
                token: self.below(TOKENS.len()),
            },
            6 => Mutation::DuplicateLine {
                line: self.below(64),
                times: if self.below(8) == 0 {
                    self.below(200)
                } else {
                    self.below(3)
                },
            },
            7 => Mutation::SwapLines {
                a: self.below(64),
                b: self.below(64),
            },
            8 => Mutation::Truncate { at },
            _ => Mutation::Fold {
                line: self.below(64),
                times: if self.below(4) == 0 {
                    self.below(2000)
                } else {
                    self.below(4)
                },
            },
        }
    }
}

/// The parsers this harness drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `msg::parse`, `msg::frame_stream` and the endpoint (transactions, SDP on INVITE).
    Sip,
    /// The endpoint with a call up: mutated in-dialog BYE, INFO, re-INVITE, UPDATE, ACK.
    Dialog,
    Sdp,
    Rtp,
    Rfc4733,
    Info,
}

impl Target {
    pub const ALL: [Target; 6] = [
        Target::Sip,
        Target::Dialog,
        Target::Sdp,
        Target::Rtp,
        Target::Rfc4733,
        Target::Info,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Target::Sip => "sip",
            Target::Dialog => "dialog",
            Target::Sdp => "sdp",
            Target::Rtp => "rtp",
            Target::Rfc4733 => "rfc4733",
            Target::Info => "info",
        }
    }

    pub fn from_name(s: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == s)
    }

    /// The built-in valid inputs to mutate.
    pub fn seeds(self) -> Vec<Vec<u8>> {
        let texts: &[&str] = match self {
            Target::Sip => SIP_SEEDS,
            Target::Dialog => DIALOG_SEEDS,
            Target::Sdp => SDP_SEEDS,
            Target::Info => INFO_SEEDS,
            Target::Rtp => return rtp_seeds(),
            Target::Rfc4733 => return rfc4733_seeds(),
        };
        let sip = matches!(self, Target::Sip | Target::Dialog);
        texts
            .iter()
            .map(|t| {
                if sip {
                    with_content_length(t)
                } else {
                    t.as_bytes().to_vec()
                }
            })
            .collect()
    }

    /// Runs one input through the target and its oracle.
    pub fn check(self, input: &[u8]) -> Result<(), String> {
        match self {
            Target::Sip => check_sip(input),
            Target::Dialog => check_dialog(input),
            Target::Sdp => check_sdp(input),
            Target::Rtp => check_rtp(input),
            Target::Rfc4733 => check_rfc4733(input),
            Target::Info => check_info(input),
        }
    }
}

/// `text` with its `Content-Length` (or `l`) value set to the length of its body, so the
/// seeds below stay valid when edited.
fn with_content_length(text: &str) -> Vec<u8> {
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return text.as_bytes().to_vec();
    };
    let head: Vec<String> = head
        .split("\r\n")
        .map(|line| match line.split_once(':') {
            Some((name, _)) if name == "Content-Length" || name == "l" => {
                format!("{name}: {}", body.len())
            }
            _ => line.to_string(),
        })
        .collect();
    format!("{}\r\n\r\n{body}", head.join("\r\n")).into_bytes()
}

/// The torture corpus's messages (every `*.dat` under `dir`), as extra SIP seeds.
pub fn corpus_seeds(dir: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for sub in ["rfc4475", "rfc5118"] {
        let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        let mut files: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            if f.extension().is_some_and(|e| e == "dat")
                && let Ok(b) = std::fs::read(&f)
            {
                out.push(b);
            }
        }
    }
    out
}

/// What a run found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub target: &'static str,
    pub seed: u64,
    pub tried: u64,
    /// Inputs that panicked.
    pub crashes: u64,
    /// Inputs whose outcome the oracle refused.
    pub failures: u64,
    /// The first crashing or failing input and why.
    pub first: Option<(Vec<u8>, String)>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "fuzz {}: seed {} tried {} crashes {} failures {}",
            self.target, self.seed, self.tried, self.crashes, self.failures
        )?;
        if let Some((input, why)) = &self.first {
            write!(
                f,
                "\nfirst: {why}\ninput ({} bytes): {:?}",
                input.len(),
                String::from_utf8_lossy(&input[..input.len().min(600)])
            )?;
        }
        Ok(())
    }
}

/// `count` mutated inputs for `target` from `seed`: each picks a seed input and applies one
/// to four random mutations (sometimes stacking on the previous mutant). Bounded in count;
/// panics are caught per input.
pub fn run(target: Target, extra_seeds: &[Vec<u8>], seed: u64, count: u64) -> Report {
    let mut seeds = target.seeds();
    seeds.extend(extra_seeds.iter().cloned());
    let mut rng = SplitMix64::new(seed);
    let mut report = Report {
        target: target.name(),
        seed,
        ..Report::default()
    };
    let mut last: Vec<u8> = Vec::new();
    for _ in 0..count {
        let base = if !last.is_empty() && rng.below(4) == 0 {
            std::mem::take(&mut last)
        } else {
            seeds[rng.below(seeds.len())].clone()
        };
        let n = rng.below(4) + 1;
        let mutations: Vec<Mutation> = (0..n).map(|_| rng.mutation()).collect();
        let input = mutate(&base, &mutations);
        report.tried += 1;
        match catch_unwind(AssertUnwindSafe(|| target.check(&input))) {
            Ok(Ok(())) => {}
            Ok(Err(why)) => {
                report.failures += 1;
                report.first.get_or_insert((input.clone(), why));
            }
            Err(panic) => {
                report.crashes += 1;
                let why = crate::fault::panic_message(panic.as_ref());
                report
                    .first
                    .get_or_insert((input.clone(), format!("panic: {why}")));
            }
        }
        if input.len() < 8 * 1024 {
            last = input;
        }
    }
    report
}

// ---- oracles -----------------------------------------------------------------------------

fn test_endpoint() -> Endpoint {
    Endpoint::new(EndpointConfig {
        sip_addr: "127.0.0.1:5060".parse().expect("literal address"),
        media_ip: "127.0.0.1".parse().expect("literal address"),
        user_agent: "pinbridge/fuzz".into(),
    })
}

fn udp_peer() -> Peer {
    Peer {
        transport: Transport::Udp,
        addr: SocketAddr::from(([127, 0, 0, 1], 5070)),
        conn: None,
    }
}

/// The status of a response we transmitted, from its start line.
fn status_of(bytes: &[u8]) -> Result<u16, String> {
    let line_end = bytes
        .iter()
        .position(|b| *b == b'\r')
        .unwrap_or(bytes.len());
    let line = String::from_utf8_lossy(&bytes[..line_end]);
    let mut it = line.splitn(3, ' ');
    match (it.next(), it.next().and_then(|c| c.parse::<u16>().ok())) {
        (Some("SIP/2.0"), Some(s)) if (100..=699).contains(&s) => Ok(s),
        _ => Err(format!(
            "we sent something that is not a response: {line:?}"
        )),
    }
}

/// SIP: whatever parses as a request gets a response with a 1xx–6xx status (none for ACK),
/// and the response we send parses with our own parser; a request that does not parse but
/// is addressable gets exactly the parser's status; anything else is dropped and counted.
/// A parsed request also survives serialise → parse with its identity intact; TCP framing
/// never claims more octets than it was given.
pub fn check_sip(input: &[u8]) -> Result<(), String> {
    if let Ok(Some(n)) = msg::frame_stream(input)
        && n > input.len()
    {
        return Err(format!("frame_stream framed {n} of {} octets", input.len()));
    }
    let parsed = msg::parse(input);
    let mut ep = test_endpoint();
    let dropped_before = ep.stats().dropped;
    let now = Instant::now();
    ep.handle_datagram(now, input, udp_peer());
    let sent: Vec<Vec<u8>> = std::iter::from_fn(|| ep.poll_transmit())
        .map(|t| t.bytes)
        .collect();
    match &parsed {
        Ok(Message::Request(r)) => {
            let again = msg::parse(&r.to_bytes())
                .map_err(|e| format!("re-serialised request does not parse: {e}"))?;
            match again {
                Message::Request(r2)
                    if r2.method == r.method && r2.call_id == r.call_id && r2.cseq == r.cseq => {}
                other => return Err(format!("round trip changed the request: {other:?}")),
            }
            if r.method == Method::Ack {
                if !sent.is_empty() {
                    return Err("answered an ACK".into());
                }
            } else {
                let first = sent.first().ok_or("a parsed request got no response")?;
                status_of(first)?;
                for s in &sent {
                    status_of(s)?;
                    match msg::parse(s) {
                        Ok(Message::Response(_)) => {}
                        other => {
                            return Err(format!("our response does not parse back: {other:?}"));
                        }
                    }
                }
            }
        }
        Ok(Message::Response(_)) => {
            if !sent.is_empty() {
                return Err("a stray response was answered".into());
            }
        }
        Err(ParseError {
            reply: Some(reply), ..
        }) => {
            if reply.head.method == Method::Ack {
                if !sent.is_empty() {
                    return Err("answered a malformed ACK".into());
                }
            } else {
                if sent.len() != 1 {
                    return Err(format!("malformed request got {} responses", sent.len()));
                }
                let s = status_of(&sent[0])?;
                if s != reply.status {
                    return Err(format!("parser said {} but we sent {s}", reply.status));
                }
            }
        }
        Err(ParseError { reply: None, .. }) => {
            if !sent.is_empty() {
                return Err("an unaddressable message was answered".into());
            }
            if ep.stats().dropped != dropped_before + 1 {
                return Err("a dropped message was not counted".into());
            }
        }
    }
    // Take any call on offer, so the answer path (SDP answer, 200) runs too.
    let legs: Vec<_> = std::iter::from_fn(|| ep.poll_event())
        .filter_map(|e| match e {
            Event::Incoming { leg, .. } => Some(leg),
            _ => None,
        })
        .collect();
    for leg in legs {
        ep.accept(now, leg, 40000);
    }
    for t in std::iter::from_fn(|| ep.poll_transmit()) {
        status_of(&t.bytes)?;
    }
    ep.handle_timeout(now + Duration::from_secs(64));
    while ep.poll_transmit().is_some() {}
    Ok(())
}

const CALL_ID: &str = "fuzz-call@127.0.0.1";
const FROM_TAG: &str = "ft1";

fn dialog_invite() -> String {
    let sdp = SDP_SEEDS[0];
    format!(
        "INVITE sip:1234567@127.0.0.1:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-inv;rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@127.0.0.1:5070>;tag={FROM_TAG}\r\n\
         To: <sip:1234567@127.0.0.1:5060>\r\n\
         Call-ID: {CALL_ID}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:alice@127.0.0.1:5070>\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

/// Dialog: a call is set up (INVITE, accept, ACK), then the mutated in-dialog message (its
/// `TOTAG` replaced by our real To tag) arrives. Every request but ACK gets a 1xx–6xx
/// response; nothing panics; timers run to the end without trouble.
pub fn check_dialog(input: &[u8]) -> Result<(), String> {
    let mut ep = test_endpoint();
    let now = Instant::now();
    ep.handle_datagram(now, dialog_invite().as_bytes(), udp_peer());
    let leg = std::iter::from_fn(|| ep.poll_event())
        .find_map(|e| match e {
            Event::Incoming { leg, .. } => Some(leg),
            _ => None,
        })
        .ok_or("the dialog seed INVITE was not offered")?;
    ep.accept(now, leg, 40000);
    let to_tag = std::iter::from_fn(|| ep.poll_transmit())
        .filter_map(|t| match msg::parse(&t.bytes) {
            Ok(Message::Response(r)) if r.status == 200 => r.to_tag().map(str::to_string),
            _ => None,
        })
        .next()
        .ok_or("no 200 with a To tag")?;
    let ack = format!(
        "ACK sip:1234567@127.0.0.1:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-ack\r\n\
         From: <sip:alice@127.0.0.1:5070>;tag={FROM_TAG}\r\n\
         To: <sip:1234567@127.0.0.1:5060>;tag={to_tag}\r\n\
         Call-ID: {CALL_ID}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    );
    ep.handle_datagram(now, ack.as_bytes(), udp_peer());
    while ep.poll_transmit().is_some() {}
    while ep.poll_event().is_some() {}
    let input = replace_all(input, b"TOTAG", to_tag.as_bytes());
    let parsed = msg::parse(&input);
    let later = now + Duration::from_millis(100);
    ep.handle_datagram(later, &input, udp_peer());
    let sent: Vec<Vec<u8>> = std::iter::from_fn(|| ep.poll_transmit())
        .map(|t| t.bytes)
        .collect();
    let wants_answer = match &parsed {
        Ok(Message::Request(r)) => r.method != Method::Ack,
        Err(ParseError {
            reply: Some(reply), ..
        }) => reply.head.method != Method::Ack,
        _ => false,
    };
    if wants_answer && sent.is_empty() {
        return Err("an in-dialog request got no response".into());
    }
    for s in &sent {
        status_of(s)?;
    }
    while ep.poll_event().is_some() {}
    // Run every timer (2xx retransmits, BYE, Timer J…) to quiescence, bounded.
    let mut t = later;
    for _ in 0..200 {
        let Some(next) = ep.poll_timeout() else {
            break;
        };
        t = t.max(next);
        ep.handle_timeout(t);
        while ep.poll_transmit().is_some() {}
        while ep.poll_event().is_some() {}
    }
    Ok(())
}

fn replace_all(input: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(input[i]);
            i += 1;
        }
    }
    out
}

/// SDP: an answer keeps the offer's stream count and is itself acceptable as an answer when
/// one stream was offered; a refusal is a 400/488 with a Warning that can be quoted as is.
pub fn check_sdp(input: &[u8]) -> Result<(), String> {
    let local = LocalMedia {
        addr: "127.0.0.1".parse().expect("literal address"),
        port: 40000,
        session_id: 1,
        session_version: 1,
    };
    let count_m = |b: &[u8]| {
        String::from_utf8_lossy(b)
            .lines()
            // As the SDP parser reads lines: trimmed.
            .filter(|l| l.trim().starts_with("m="))
            .count()
    };
    match sdp::answer(input, &local) {
        Ok(a) => {
            let offered = count_m(input);
            let answered = count_m(a.sdp.as_bytes());
            if offered != answered {
                return Err(format!("offer had {offered} m= lines, answer {answered}"));
            }
            if a.negotiated.telephone_event == Some(a.negotiated.payload_type) {
                return Err("telephone-event and audio share a payload type".into());
            }
            if offered == 1
                && sdp::accept_answer(a.sdp.as_bytes(), crate::media::Direction::SendRecv).is_err()
            {
                return Err("our own answer is not acceptable as an answer".into());
            }
        }
        Err(e) => {
            if !matches!(e.sip_status(), 400 | 488) {
                return Err(format!("SDP refusal with status {}", e.sip_status()));
            }
            if e.warning()
                .chars()
                .any(|c| c == '"' || c == '\\' || c.is_control())
            {
                return Err(format!("unquotable warning {:?}", e.warning()));
            }
        }
    }
    let _ = sdp::accept_answer(input, crate::media::Direction::SendOnly);
    Ok(())
}

/// RTP: a parsed packet's payload lies inside the datagram; fed to the RFC 4733 receiver it
/// reports at most one key per packet.
pub fn check_rtp(input: &[u8]) -> Result<(), String> {
    let Ok(packet) = RtpPacket::parse(input) else {
        return Ok(());
    };
    if packet.payload.len() + 12 > input.len() {
        return Err("payload longer than the datagram allows".into());
    }
    let mut rx = EventReceiver::new();
    let now = Instant::now();
    let _ = rx.handle_rtp(now, &packet);
    let _ = rx.handle_rtp(now + Duration::from_millis(50), &packet);
    let keys = std::iter::from_fn(|| rx.poll_digit()).count();
    if keys > 1 {
        return Err(format!("one packet sent twice gave {keys} keys"));
    }
    Ok(())
}

/// RFC 4733: a payload parses only when it is a whole number of 4-octet events, and the
/// first event round-trips (the reserved bit cleared); a train of mutants through the
/// receiver reports at most one key per packet.
pub fn check_rfc4733(input: &[u8]) -> Result<(), String> {
    match TelephoneEvent::parse(input) {
        Ok(e) => {
            if input.len() < EVENT_LEN || !input.len().is_multiple_of(EVENT_LEN) {
                return Err(format!("parsed a {}-octet payload", input.len()));
            }
            let mut first = [0u8; EVENT_LEN];
            first.copy_from_slice(&input[..EVENT_LEN]);
            first[1] &= !0x40;
            if e.to_bytes() != first {
                return Err("event does not round-trip".into());
            }
        }
        Err(Rfc4733Error::TooShort(n)) if n < EVENT_LEN => {}
        Err(Rfc4733Error::Misaligned(n)) if !n.is_multiple_of(EVENT_LEN) => {}
        Err(e) => return Err(format!("wrong error {e:?}")),
    }
    let mut rx = EventReceiver::new();
    let t0 = Instant::now();
    let mut keys = 0;
    for (i, chunk) in input.chunks(EVENT_LEN).enumerate().take(64) {
        let ts = u32::from_be_bytes([chunk[0], chunk.get(1).copied().unwrap_or(0), 0, 0]);
        let _ = rx.handle_packet(
            t0 + Duration::from_millis(i as u64 * 10),
            crate::media::Ssrc(u32::from(chunk[0] & 3)),
            i as u16,
            ts,
            i == 0,
            chunk,
        );
        keys += std::iter::from_fn(|| rx.poll_digit()).count();
        if keys > i + 1 {
            return Err(format!("{keys} keys after {} packets", i + 1));
        }
    }
    Ok(())
}

/// SIP INFO bodies: the input is `Content-Type\n\nbody`; the outcome is a key, or 200 (a hook
/// flash), 400 or 415 with a short printable reason.
pub fn check_info(input: &[u8]) -> Result<(), String> {
    let split = input
        .windows(2)
        .position(|w| w == b"\n\n")
        .unwrap_or(input.len());
    let ct = String::from_utf8_lossy(&input[..split]).into_owned();
    let body = input.get(split + 2..).unwrap_or_default();
    match info::parse(&ct, body) {
        Ok(_) => {
            if info::InfoType::from_content_type(&ct).is_none() {
                return Err(format!("a key from unknown content type {ct:?}"));
            }
        }
        Err(e) => {
            // 200 is a hook flash (`!`): understood, not a key.
            if !matches!(e.sip_status(), 200 | 400 | 415) {
                return Err(format!("INFO refusal with status {}", e.sip_status()));
            }
            let r = e.reason();
            if r.len() >= 80 || !r.chars().all(|c| c == ' ' || c.is_ascii_graphic()) {
                return Err(format!("unsafe reason {r:?}"));
            }
        }
    }
    Ok(())
}

// ---- seeds -------------------------------------------------------------------------------

/// Valid messages: an INVITE with SDP, OPTIONS, BYE, CANCEL, ACK, INFO, REGISTER, an
/// all-compact INVITE, a late-offer INVITE, a TCP INVITE, and a 200 response.
pub const SIP_SEEDS: &[&str] = &[
    "INVITE sip:1234567@127.0.0.1:5060 SIP/2.0\r\n\
     Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1;rport\r\n\
     Max-Forwards: 70\r\n\
     From: \"Alice\" <sip:alice@127.0.0.1:5070>;tag=a1\r\n\
     To: <sip:1234567@127.0.0.1:5060>\r\n\
     Call-ID: c1@127.0.0.1\r\n\
     CSeq: 1 INVITE\r\n\
     Contact: <sip:alice@127.0.0.1:5070>\r\n\
     Content-Type: application/sdp\r\n\
     Content-Length: 185\r\n\
     \r\n\
     v=0\r\n\
     o=alice 1 1 IN IP4 127.0.0.1\r\n\
     s=-\r\n\
     c=IN IP4 127.0.0.1\r\n\
     t=0 0\r\n\
     m=audio 40002 RTP/AVP 0 8 101\r\n\
     a=rtpmap:101 telephone-event/8000\r\n\
     a=fmtp:101 0-15\r\n\
     a=ptime:20\r\n\
     a=sendrecv\r\n",
    "OPTIONS sip:127.0.0.1:5060 SIP/2.0\r\n\
     Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-o1;rport\r\n\
     Max-Forwards: 70\r\n\
     From: <sip:probe@127.0.0.1:5070>;tag=o1\r\n\
     To: <sip:127.0.0.1:5060>\r\n\
     Call-ID: o1@127.0.0.1\r\n\
     CSeq: 1 OPTIONS\r\n\
     Accept: application/sdp\r\n\
     Content-Length: 0\r\n\r\n",
    "BYE sip:127.0.0.1:5060 SIP/2.0\r\n\
     Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-b1;rport\r\n\
     Max-Forwards: 70\r\n\
     From: <sip:alice@127.0.0.1:5070>;tag=a1\r\n\
     To: <sip:1234567@127.0.0.1:5060>;tag=srv\r\n\
     Call-ID: c1@127.0.0.1\r\n\
     CSeq: 2 BYE\r\n\
     Content-Length: 0\r\n\r\n",
    "CANCEL sip:1234567@127.0.0.1:5060 SIP/2.0\r\n\
     Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1;rport\r\n\
     Max-Forwards: 70\r\n\
     From: <sip:alice@127.0.0.1:5070>;tag=a1\r\n\
     To: <sip:1234567@127.0.0.1:5060>\r\n\
     Call-ID: c1@127.0.0.1\r\n\
     CSeq: 1 CANCEL\r\n\
     Content-Length: 0\r\n\r\n",
    "ACK sip:1234567@127.0.0.1:5060 SIP/2.0\r\n\
     Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-a1;rport\r\n\
     Max-Forwards: 70\r\n\
     From: <sip:alice@127.0.0.1:5070>;tag=a1\r\n\
     To: <sip:1234567@127.0.0.1:5060>;tag=srv\r\n\
     Call-ID: c1@127.0.0.1\r\n\
     CSeq: 1 ACK\r\n\
     Content-Length: 0\r\n\r\n",
    "INFO sip:127.0.0.1:5060 SIP/2.0\r\n\
     Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-i1;rport\r\n\
     From: <sip:alice@127.0.0.1:5070>;tag=a1\r\n\
     To: <sip:1234567@127.0.0.1:5060>;tag=srv\r\n\
     Call-ID: c1@127.0.0.1\r\n\
     CSeq: 3 INFO\r\n\
     Content-Type: application/dtmf-relay\r\n\
     Content-Length: 24\r\n\r\n\
     Signal=5\r\nDuration=160\r\n",
    "REGISTER sip:127.0.0.1 SIP/2.0\r\n\
     Via: SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bK-r1\r\n\
     From: <sip:alice@127.0.0.1>;tag=r1\r\n\
     To: <sip:alice@127.0.0.1>\r\n\
     Call-ID: r1@127.0.0.1\r\n\
     CSeq: 1 REGISTER\r\n\
     Contact: <sip:alice@127.0.0.1:5070;transport=tcp>;expires=60\r\n\
     Content-Length: 0\r\n\r\n",
    "INVITE sip:1234567@127.0.0.1 SIP/2.0\r\n\
     v: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-c\r\n\
     f: <sip:alice@127.0.0.1>;tag=a\r\n\
     t: <sip:1234567@127.0.0.1>\r\n\
     i: compact@127.0.0.1\r\n\
     CSeq: 7 INVITE\r\n\
     m: <sip:alice@127.0.0.1:5070>\r\n\
     k: timer\r\n\
     c: application/sdp\r\n\
     l: 82\r\n\
     \r\n\
     v=0\r\n\
     o=- 1 1 IN IP4 127.0.0.1\r\n\
     s=-\r\n\
     c=IN IP4 127.0.0.1\r\n\
     t=0 0\r\n\
     m=audio 4000 RTP/AVP 8\r\n",
    "INVITE sip:1234567@127.0.0.1:5060 SIP/2.0\r\n\
     Via: SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bK-late;rport\r\n\
     Max-Forwards: 70\r\n\
     From: <sip:anonymous@anonymous.invalid>;tag=l1\r\n\
     To: <sip:1234567@127.0.0.1:5060>\r\n\
     Call-ID: late@127.0.0.1\r\n\
     CSeq: 1 INVITE\r\n\
     Privacy: id\r\n\
     Supported: timer, replaces\r\n\
     Contact: <sip:anon@127.0.0.1:5070;transport=tcp>\r\n\
     Content-Length: 0\r\n\r\n",
    "SIP/2.0 200 OK\r\n\
     Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKbye1\r\n\
     From: <sip:1234567@127.0.0.1:5060>;tag=srv\r\n\
     To: <sip:alice@127.0.0.1:5070>;tag=a1\r\n\
     Call-ID: c1@127.0.0.1\r\n\
     CSeq: 1 BYE\r\n\
     Content-Length: 0\r\n\r\n",
];

/// In-dialog requests for the call [`check_dialog`] sets up; `TOTAG` is our To tag.
pub const DIALOG_SEEDS: &[&str] = &[
    "BYE sip:127.0.0.1:5060 SIP/2.0\r\n\
     Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-d1;rport\r\n\
     From: <sip:alice@127.0.0.1:5070>;tag=ft1\r\n\
     To: <sip:1234567@127.0.0.1:5060>;tag=TOTAG\r\n\
     Call-ID: fuzz-call@127.0.0.1\r\n\
     CSeq: 2 BYE\r\n\
     Content-Length: 0\r\n\r\n",
    "INFO sip:127.0.0.1:5060 SIP/2.0\r\n\
     Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-d2;rport\r\n\
     From: <sip:alice@127.0.0.1:5070>;tag=ft1\r\n\
     To: <sip:1234567@127.0.0.1:5060>;tag=TOTAG\r\n\
     Call-ID: fuzz-call@127.0.0.1\r\n\
     CSeq: 2 INFO\r\n\
     Content-Type: application/dtmf-relay\r\n\
     Content-Length: 26\r\n\r\n\
     Signal=#\r\nDuration=160\r\n\r\n",
    "INFO sip:127.0.0.1:5060 SIP/2.0\r\n\
     Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-d3;rport\r\n\
     From: <sip:alice@127.0.0.1:5070>;tag=ft1\r\n\
     To: <sip:1234567@127.0.0.1:5060>;tag=TOTAG\r\n\
     Call-ID: fuzz-call@127.0.0.1\r\n\
     CSeq: 2 INFO\r\n\
     Content-Type: application/dtmf\r\n\
     Content-Length: 1\r\n\r\n\
     7",
    "INVITE sip:127.0.0.1:5060 SIP/2.0\r\n\
     Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-d4;rport\r\n\
     From: <sip:alice@127.0.0.1:5070>;tag=ft1\r\n\
     To: <sip:1234567@127.0.0.1:5060>;tag=TOTAG\r\n\
     Call-ID: fuzz-call@127.0.0.1\r\n\
     CSeq: 2 INVITE\r\n\
     Contact: <sip:alice@127.0.0.1:5070>\r\n\
     Content-Type: application/sdp\r\n\
     Content-Length: 101\r\n\r\n\
     v=0\r\n\
     o=alice 1 2 IN IP4 127.0.0.1\r\n\
     s=-\r\n\
     c=IN IP4 0.0.0.0\r\n\
     t=0 0\r\n\
     m=audio 40002 RTP/AVP 0\r\n\
     a=sendonly\r\n",
    "UPDATE sip:127.0.0.1:5060 SIP/2.0\r\n\
     Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-d5;rport\r\n\
     From: <sip:alice@127.0.0.1:5070>;tag=ft1\r\n\
     To: <sip:1234567@127.0.0.1:5060>;tag=TOTAG\r\n\
     Call-ID: fuzz-call@127.0.0.1\r\n\
     CSeq: 2 UPDATE\r\n\
     Content-Type: application/sdp\r\n\
     Content-Length: 92\r\n\r\n\
     v=0\r\n\
     o=alice 1 3 IN IP4 127.0.0.1\r\n\
     s=-\r\n\
     c=IN IP4 127.0.0.1\r\n\
     t=0 0\r\n\
     m=audio 40004 RTP/AVP 8\r\n",
    "OPTIONS sip:127.0.0.1:5060 SIP/2.0\r\n\
     Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-d6;rport\r\n\
     From: <sip:alice@127.0.0.1:5070>;tag=ft1\r\n\
     To: <sip:1234567@127.0.0.1:5060>;tag=TOTAG\r\n\
     Call-ID: fuzz-call@127.0.0.1\r\n\
     CSeq: 2 OPTIONS\r\n\
     Content-Length: 0\r\n\r\n",
];

/// SDP offers: G.711 with telephone-event, two streams, hold, IPv6, AVPF, only G.729.
pub const SDP_SEEDS: &[&str] = &[
    "v=0\r\n\
     o=alice 1 1 IN IP4 127.0.0.1\r\n\
     s=-\r\n\
     c=IN IP4 127.0.0.1\r\n\
     t=0 0\r\n\
     m=audio 40002 RTP/AVP 0 8 101\r\n\
     a=rtpmap:101 telephone-event/8000\r\n\
     a=fmtp:101 0-15\r\n\
     a=ptime:20\r\n\
     a=sendrecv\r\n",
    "v=0\r\n\
     o=- 2 2 IN IP4 127.0.0.1\r\n\
     s=call\r\n\
     t=0 0\r\n\
     m=video 40010 RTP/AVP 96\r\n\
     c=IN IP4 127.0.0.1\r\n\
     a=rtpmap:96 H264/90000\r\n\
     m=audio 40012 RTP/AVP 8 0\r\n\
     c=IN IP4 127.0.0.1\r\n\
     a=rtpmap:8 PCMA/8000\r\n\
     a=sendonly\r\n",
    "v=0\n\
     o=- 3 3 IN IP6 ::1\n\
     s=-\n\
     c=IN IP6 ::1\n\
     t=0 0\n\
     m=audio 40020 RTP/AVPF 0 96\n\
     a=rtpmap:96 telephone-event/8000\n\
     a=inactive\n",
    "v=0\r\n\
     o=- 4 4 IN IP4 0.0.0.0\r\n\
     s=-\r\n\
     c=IN IP4 0.0.0.0\r\n\
     t=0 0\r\n\
     m=audio 40030 RTP/AVP 18\r\n\
     a=rtpmap:18 G729/8000\r\n",
];

/// INFO inputs as `Content-Type\n\nbody`.
pub const INFO_SEEDS: &[&str] = &[
    "application/dtmf-relay\n\nSignal=5\r\nDuration=160\r\n",
    "application/dtmf-relay\n\nSignal= #\r\nDuration= 250\r\n",
    "application/dtmf-relay; charset=utf-8\n\nsignal=11\nduration=100\n",
    "application/dtmf\n\n5",
    "application/dtmf\n\n*\r\n",
    "text/plain\n\n5",
];

fn rtp_seeds() -> Vec<Vec<u8>> {
    let mut plain = vec![
        0x80, 0x00, 0x12, 0x34, 0, 0, 0x03, 0x20, 0xde, 0xad, 0xbe, 0xef,
    ];
    plain.extend(std::iter::repeat_n(0xffu8, 160));
    // CSRC count 1, extension, padding (4 octets).
    let mut fancy = vec![0xb1, 0x08, 0x00, 0x01, 0, 0, 0, 160, 1, 2, 3, 4, 9, 9, 9, 9];
    fancy.extend_from_slice(&[0xbe, 0xde, 0x00, 0x01, 0x10, 0xaa, 0, 0]);
    fancy.extend(std::iter::repeat_n(0xd5u8, 160));
    fancy.extend_from_slice(&[0, 0, 0, 4]);
    // telephone-event (PT 101, marker), key 5, volume 10, duration 400.
    let event = vec![
        0x80, 0xe5, 0x00, 0x02, 0, 0, 1, 0, 0, 0, 0, 7, 5, 10, 0x01, 0x90,
    ];
    vec![plain, fancy, event]
}

fn rfc4733_seeds() -> Vec<Vec<u8>> {
    vec![
        vec![5, 10, 0x01, 0x90],
        vec![11, 0x8a, 0x03, 0x20],
        vec![1, 10, 0, 160, 2, 10, 0, 160, 3, 0x8a, 1, 64],
        vec![16, 0, 0, 0],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_passes_its_oracle_unmutated() {
        for target in Target::ALL {
            for (i, seed) in target.seeds().iter().enumerate() {
                if let Err(e) = target.check(seed) {
                    panic!("{} seed {i}: {e}", target.name());
                }
            }
        }
    }

    #[test]
    fn sip_seeds_are_valid_messages() {
        for (i, seed) in Target::Sip.seeds().iter().enumerate() {
            assert!(
                msg::parse(seed).is_ok(),
                "SIP seed {i}: {:?}",
                msg::parse(seed)
            );
        }
        for (i, seed) in Target::Dialog.seeds().iter().enumerate() {
            let seed = replace_all(seed, b"TOTAG", b"t1");
            assert!(
                matches!(msg::parse(&seed), Ok(Message::Request(_))),
                "dialog seed {i}"
            );
        }
    }

    #[test]
    fn seed_invite_is_a_call_and_its_mutants_still_get_answers() {
        // The oracle is not vacuous: the unmutated INVITE parses and is answered.
        let seed = Target::Sip.seeds()[0].clone();
        assert!(matches!(msg::parse(&seed), Ok(Message::Request(_))));
        let broken = mutate(&seed, &[Mutation::Token { at: 0, token: 0 }]);
        assert!(msg::parse(&broken).is_err());
        check_sip(&broken).unwrap();
    }

    #[test]
    fn mutations_stay_bounded() {
        let mut b = vec![b'a'; MAX_INPUT];
        Mutation::DuplicateLine {
            line: 0,
            times: 199,
        }
        .apply(&mut b);
        assert!(b.len() <= MAX_INPUT);
        let mut lines = b"a: 1\r\nb: 2\r\n".to_vec();
        Mutation::SwapLines { a: 0, b: 1 }.apply(&mut lines);
        assert_eq!(lines, b"b: 2\r\na: 1\r\n");
        let mut folded = b"a: 1\r\n".to_vec();
        Mutation::Fold { line: 0, times: 1 }.apply(&mut folded);
        assert_eq!(folded, b"a: 1\r\n x\r\n");
    }

    #[test]
    fn the_generator_is_deterministic() {
        let a = run(Target::Info, &[], 7, 50);
        let b = run(Target::Info, &[], 7, 50);
        assert_eq!(
            (a.tried, a.crashes, a.failures),
            (b.tried, b.crashes, b.failures)
        );
        assert_eq!(a.tried, 50);
    }
}
