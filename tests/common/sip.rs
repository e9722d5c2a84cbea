//! A small SIP UAC for tests (RFC 3261), over real UDP or TCP sockets on 127.0.0.1.
//!
//! Deliberately independent of the server's `sip::msg`: plain text handling, compact header
//! names understood on input, Content-Length framing on TCP. It keeps what a UAC must keep
//! right — Call-ID, CSeq, From/To tags, `z9hG4bK` branches, the remote target from Contact
//! and the route set — and leaves everything else to the test: it never retransmits, never
//! answers on its own, and lets a test send any bytes at all.
//!
//! Messages that arrive while a test waits for something else are kept in order and
//! offered to the next matching wait, so a BYE from the server is never lost behind a
//! retransmitted 200. Every wait takes a timeout. On panic the client prints its transcript.

use std::cell::Cell;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// RFC 3261 compact header forms (§7.3.3, §20) and the few from later RFCs we may meet.
const COMPACT: &[(&str, &str)] = &[
    ("i", "call-id"),
    ("m", "contact"),
    ("e", "content-encoding"),
    ("l", "content-length"),
    ("c", "content-type"),
    ("f", "from"),
    ("s", "subject"),
    ("k", "supported"),
    ("t", "to"),
    ("v", "via"),
    ("o", "event"),
    ("r", "refer-to"),
    ("u", "allow-events"),
    ("b", "referred-by"),
    ("x", "session-expires"),
];

/// Largest message we accept on a TCP stream before calling the peer broken.
const MAX_STREAM_BUFFER: usize = 1 << 20;
/// Messages kept for later waits; the oldest are dropped beyond this.
const MAX_PENDING: usize = 1000;
/// Transcript entries kept for failure reports.
const MAX_TRANSCRIPT: usize = 300;

/// The magic cookie every RFC 3261 branch starts with (§8.1.1.7).
pub const BRANCH_COOKIE: &str = "z9hG4bK";

/// Lower-cased full name of a header, with compact forms expanded.
fn canonical(name: &str) -> String {
    let lower = name.trim().to_ascii_lowercase();
    COMPACT
        .iter()
        .find(|(short, _)| *short == lower)
        .map_or(lower, |(_, long)| long.to_string())
}

/// A unique token for tags, branches and Call-IDs: process id, time and a counter.
pub fn unique_token() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{:x}{:08x}{n:x}", std::process::id(), nanos)
}

/// A new RFC 3261 branch.
pub fn new_branch() -> String {
    format!("{BRANCH_COOKIE}{}", unique_token())
}

/// One SIP message as received: start line, headers in order (unfolded, names as sent),
/// body, and when and from where it arrived.
#[derive(Clone, Debug)]
pub struct SipMessage {
    pub start_line: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub received_at: Instant,
    pub source: Option<SocketAddr>,
}

impl SipMessage {
    /// Parses one UDP datagram. Without Content-Length the body is the rest of the
    /// datagram (RFC 3261 §18.3).
    pub fn parse_datagram(bytes: &[u8]) -> Result<SipMessage, String> {
        let (head_len, body_start) =
            find_head_end(bytes).ok_or("no blank line after the headers")?;
        let mut msg = Self::parse_head(&bytes[..head_len])?;
        let rest = &bytes[body_start..];
        let body_len = match msg.content_length()? {
            Some(n) if n > rest.len() => {
                return Err(format!("Content-Length {n} but {} body bytes", rest.len()));
            }
            Some(n) => n,
            None => rest.len(),
        };
        msg.body = rest[..body_len].to_vec();
        Ok(msg)
    }

    /// Parses one message from the front of a stream buffer: `Ok(None)` if incomplete,
    /// otherwise the message and the bytes it used. Missing Content-Length means no body.
    pub fn parse_stream(buf: &[u8]) -> Result<Option<(SipMessage, usize)>, String> {
        // Keep-alive CRLFs between messages (RFC 5626 §3.5.1) are skipped.
        let skip = buf
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        let buf = &buf[skip..];
        let Some((head_len, body_start)) = find_head_end(buf) else {
            return Ok(None);
        };
        let mut msg = Self::parse_head(&buf[..head_len])?;
        let len = msg.content_length()?.unwrap_or(0);
        if buf.len() < body_start + len {
            return Ok(None);
        }
        msg.body = buf[body_start..body_start + len].to_vec();
        Ok(Some((msg, skip + body_start + len)))
    }

    fn parse_head(head: &[u8]) -> Result<SipMessage, String> {
        let text = std::str::from_utf8(head).map_err(|e| format!("headers not UTF-8: {e}"))?;
        let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
        let start_line = lines.next().unwrap_or("").to_string();
        if start_line.is_empty() {
            return Err("empty start line".into());
        }
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in lines {
            if line.starts_with(' ') || line.starts_with('\t') {
                // RFC 3261 §7.3.1: folded continuation of the previous header.
                let last = headers
                    .last_mut()
                    .ok_or("continuation line before any header")?;
                last.1.push(' ');
                last.1.push_str(line.trim());
                continue;
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| format!("header line without colon: {line:?}"))?;
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
        Ok(SipMessage {
            start_line,
            headers,
            body: Vec::new(),
            received_at: Instant::now(),
            source: None,
        })
    }

    /// Status code of a response.
    pub fn status(&self) -> Option<u16> {
        let rest = self.start_line.strip_prefix("SIP/2.0 ")?;
        rest.get(..3)?.parse().ok()
    }

    /// Reason phrase of a response (may be empty).
    pub fn reason(&self) -> Option<&str> {
        self.status()?;
        Some(self.start_line.get(12..).unwrap_or("").trim())
    }

    pub fn is_response(&self) -> bool {
        self.status().is_some()
    }

    /// Method of a request.
    pub fn method(&self) -> Option<&str> {
        if self.is_response() {
            return None;
        }
        self.start_line.split(' ').next()
    }

    pub fn request_uri(&self) -> Option<&str> {
        if self.is_response() {
            return None;
        }
        self.start_line.split(' ').nth(1)
    }

    /// First value of a header, by full or compact name, case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        let want = canonical(name);
        self.headers
            .iter()
            .find(|(n, _)| canonical(n) == want)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header: all lines, each split at top-level commas.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        let want = canonical(name);
        self.headers
            .iter()
            .filter(|(n, _)| canonical(n) == want)
            .flat_map(|(_, v)| split_top_level_commas(v))
            .collect()
    }

    /// The header lines with this name, verbatim (for echoing Via in a response).
    pub fn header_lines(&self, name: &str) -> Vec<&(String, String)> {
        let want = canonical(name);
        self.headers
            .iter()
            .filter(|(n, _)| canonical(n) == want)
            .collect()
    }

    pub fn call_id(&self) -> Option<&str> {
        self.header("Call-ID")
    }

    /// CSeq number and method.
    pub fn cseq(&self) -> Option<(u32, String)> {
        let v = self.header("CSeq")?;
        let mut it = v.split_whitespace();
        let n = it.next()?.parse().ok()?;
        Some((n, it.next()?.to_string()))
    }

    pub fn to_tag(&self) -> Option<String> {
        self.header("To").and_then(tag_param)
    }

    // "from-tag" is the RFC 3261 name (§19.3), not a constructor.
    #[allow(clippy::wrong_self_convention)]
    pub fn from_tag(&self) -> Option<String> {
        self.header("From").and_then(tag_param)
    }

    /// The branch parameter of the topmost Via.
    pub fn top_via_branch(&self) -> Option<String> {
        let top = self.header_values("Via").into_iter().next()?;
        header_param(&top, "branch")
    }

    /// The URI in the first Contact.
    pub fn contact_uri(&self) -> Option<String> {
        self.header_values("Contact")
            .first()
            .map(|c| name_addr_uri(c).to_string())
    }

    /// Record-Route URIs in message order.
    pub fn record_route(&self) -> Vec<String> {
        self.header_values("Record-Route")
    }

    /// Content-Length, if present; an error if present but not a number.
    pub fn content_length(&self) -> Result<Option<usize>, String> {
        match self.header("Content-Length") {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| format!("bad Content-Length {v:?}")),
        }
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as SDP.
    pub fn sdp(&self) -> Result<Sdp, String> {
        let ct = self.header("Content-Type").unwrap_or("");
        if !ct.to_ascii_lowercase().starts_with("application/sdp") {
            return Err(format!("Content-Type is {ct:?}, not application/sdp"));
        }
        Sdp::parse(&self.body_text())
    }

    /// The message as text, for transcripts.
    pub fn to_text(&self) -> String {
        let mut s = self.start_line.clone();
        s.push_str("\r\n");
        for (n, v) in &self.headers {
            let _ = write!(s, "{n}: {v}\r\n");
        }
        s.push_str("\r\n");
        s.push_str(&self.body_text());
        s
    }
}

/// Where the header block ends: `(head_len, body_start)`.
fn find_head_end(bytes: &[u8]) -> Option<(usize, usize)> {
    if let Some(i) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
        return Some((i, i + 4));
    }
    bytes
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| (i, i + 2))
}

/// Splits a header value at commas that are not inside quotes or angle brackets.
pub fn split_top_level_commas(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut depth, mut quoted, mut cur) = (0i32, false, String::new());
    for ch in v.chars() {
        match ch {
            '"' => quoted = !quoted,
            '<' if !quoted => depth += 1,
            '>' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                out.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// The URI of a name-addr or addr-spec (`"Bob" <sip:b@h>;tag=x` → `sip:b@h`).
pub fn name_addr_uri(v: &str) -> &str {
    if let (Some(a), Some(b)) = (v.find('<'), v.find('>'))
        && a < b
    {
        return &v[a + 1..b];
    }
    v.split(';').next().unwrap_or(v).trim()
}

/// A header parameter (after the URI, outside `<>`), case-insensitive name.
pub fn header_param(v: &str, name: &str) -> Option<String> {
    let params = match v.rfind('>') {
        Some(i) => &v[i + 1..],
        None => v.split_once(';').map_or("", |(_, p)| p),
    };
    params.split(';').find_map(|p| {
        let (k, val) = p.split_once('=').unwrap_or((p, ""));
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| val.trim().to_string())
    })
}

fn tag_param(v: &str) -> Option<String> {
    header_param(v, "tag").filter(|t| !t.is_empty())
}

/// A parsed SDP session (RFC 4566), just what the tests look at.
#[derive(Clone, Debug, PartialEq)]
pub struct Sdp {
    pub origin: Option<String>,
    /// Session-level `c=` address.
    pub connection: Option<IpAddr>,
    pub media: Vec<SdpMedia>,
    /// Session-level `a=` lines (without `a=`).
    pub attributes: Vec<String>,
}

/// One `m=` section.
#[derive(Clone, Debug, PartialEq)]
pub struct SdpMedia {
    pub kind: String,
    pub port: u16,
    pub proto: String,
    pub formats: Vec<u8>,
    /// Media-level `c=` address.
    pub connection: Option<IpAddr>,
    /// Media-level `a=` lines (without `a=`).
    pub attributes: Vec<String>,
}

impl Sdp {
    pub fn parse(text: &str) -> Result<Sdp, String> {
        let mut sdp = Sdp {
            origin: None,
            connection: None,
            media: Vec::new(),
            attributes: Vec::new(),
        };
        let mut saw_version = false;
        for line in text.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
            let (kind, value) = line
                .split_once('=')
                .ok_or_else(|| format!("SDP line without '=': {line:?}"))?;
            match kind {
                "v" => saw_version = value == "0",
                "o" => sdp.origin = Some(value.to_string()),
                "c" => {
                    let addr = parse_connection(value)?;
                    match sdp.media.last_mut() {
                        Some(m) => m.connection = Some(addr),
                        None => sdp.connection = Some(addr),
                    }
                }
                "m" => {
                    let mut it = value.split_whitespace();
                    let kind = it.next().ok_or("m= without media")?.to_string();
                    let port = it
                        .next()
                        .and_then(|p| p.split('/').next()?.parse().ok())
                        .ok_or_else(|| format!("bad m= port: {line:?}"))?;
                    let proto = it.next().ok_or("m= without proto")?.to_string();
                    let formats = it
                        .map(|f| f.parse().map_err(|_| format!("bad format {f:?}")))
                        .collect::<Result<_, _>>()?;
                    sdp.media.push(SdpMedia {
                        kind,
                        port,
                        proto,
                        formats,
                        connection: None,
                        attributes: Vec::new(),
                    });
                }
                "a" => match sdp.media.last_mut() {
                    Some(m) => m.attributes.push(value.to_string()),
                    None => sdp.attributes.push(value.to_string()),
                },
                _ => {}
            }
        }
        if !saw_version {
            return Err("SDP without v=0".into());
        }
        Ok(sdp)
    }

    /// The first audio section.
    pub fn audio(&self) -> Option<&SdpMedia> {
        self.media.iter().find(|m| m.kind == "audio")
    }

    /// Where to send audio: the media-level `c=` or else the session one, and the m= port.
    pub fn audio_addr(&self) -> Option<SocketAddr> {
        let m = self.audio()?;
        let ip = m.connection.or(self.connection)?;
        Some(SocketAddr::new(ip, m.port))
    }
}

fn parse_connection(v: &str) -> Result<IpAddr, String> {
    // c=IN IP4 127.0.0.1 (a multicast TTL suffix is not expected here)
    let mut it = v.split_whitespace();
    let (net, _ty, addr) = (it.next(), it.next(), it.next());
    if net != Some("IN") {
        return Err(format!("c= network is not IN: {v:?}"));
    }
    addr.and_then(|a| a.split('/').next()?.parse().ok())
        .ok_or_else(|| format!("bad c= address: {v:?}"))
}

impl SdpMedia {
    /// `a=rtpmap` value for a payload type (`PCMU/8000`).
    pub fn rtpmap(&self, pt: u8) -> Option<&str> {
        self.attr_for_pt("rtpmap", pt)
    }

    pub fn fmtp(&self, pt: u8) -> Option<&str> {
        self.attr_for_pt("fmtp", pt)
    }

    fn attr_for_pt(&self, attr: &str, pt: u8) -> Option<&str> {
        let prefix = format!("{attr}:{pt} ");
        self.attributes
            .iter()
            .find_map(|a| a.strip_prefix(&prefix).map(str::trim))
    }

    /// `a=ptime` in milliseconds.
    pub fn ptime(&self) -> Option<u32> {
        self.attributes
            .iter()
            .find_map(|a| a.strip_prefix("ptime:")?.trim().parse().ok())
    }

    /// The direction attribute, `sendrecv` when absent (RFC 4566 §6).
    pub fn direction(&self) -> &str {
        self.attributes
            .iter()
            .map(String::as_str)
            .find(|a| matches!(*a, "sendrecv" | "sendonly" | "recvonly" | "inactive"))
            .unwrap_or("sendrecv")
    }

    /// Payload types that are not telephone-event: the audio codecs in the answer.
    pub fn audio_codecs(&self) -> Vec<u8> {
        self.formats
            .iter()
            .copied()
            .filter(|&pt| {
                !self
                    .rtpmap(pt)
                    .is_some_and(|m| m.to_ascii_lowercase().starts_with("telephone-event"))
            })
            .collect()
    }
}

/// An SDP offer (or answer) to put in an INVITE, re-INVITE, UPDATE or ACK.
#[derive(Clone, Debug)]
pub struct SdpOffer {
    pub media_addr: SocketAddr,
    /// `(payload type, rtpmap value, fmtp value)` in preference order.
    pub formats: Vec<(u8, String, Option<String>)>,
    pub ptime: Option<u32>,
    pub session_id: String,
    /// `o=` sess-version; RFC 3264 §8 wants it one higher in each changed offer.
    pub session_version: u64,
    /// The `a=` direction attribute (`sendrecv`, `sendonly`, `recvonly`, `inactive`).
    pub direction: String,
    /// The `c=` address when it is not `media_addr`'s (e.g. `0.0.0.0`, RFC 2543 hold).
    pub connection: Option<IpAddr>,
}

impl SdpOffer {
    /// An offer with no formats yet, for audio at `media_addr`.
    pub fn new(media_addr: SocketAddr) -> SdpOffer {
        SdpOffer {
            media_addr,
            formats: Vec::new(),
            ptime: Some(20),
            session_id: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_secs())
                .to_string(),
            session_version: 1,
            direction: "sendrecv".into(),
            connection: None,
        }
    }

    /// The usual phone offer: PCMU, PCMA, telephone-event/8000 on 101.
    pub fn g711(media_addr: SocketAddr) -> SdpOffer {
        SdpOffer::new(media_addr).pcmu().pcma().telephone_event(101)
    }

    pub fn pcmu(self) -> SdpOffer {
        self.codec(0, "PCMU/8000")
    }

    pub fn pcma(self) -> SdpOffer {
        self.codec(8, "PCMA/8000")
    }

    pub fn g729(self) -> SdpOffer {
        self.codec(18, "G729/8000")
    }

    pub fn codec(mut self, pt: u8, rtpmap: &str) -> SdpOffer {
        self.formats.push((pt, rtpmap.to_string(), None));
        self
    }

    pub fn telephone_event(mut self, pt: u8) -> SdpOffer {
        self.formats
            .push((pt, "telephone-event/8000".into(), Some("0-16".into())));
        self
    }

    pub fn ptime(mut self, ms: Option<u32>) -> SdpOffer {
        self.ptime = ms;
        self
    }

    /// Sets the direction attribute (`sendonly` puts the other side on hold).
    pub fn direction(mut self, direction: &str) -> SdpOffer {
        self.direction = direction.to_string();
        self
    }

    /// Writes `c=` with `ip` instead of the media address (the m= port stays).
    pub fn connection(mut self, ip: IpAddr) -> SdpOffer {
        self.connection = Some(ip);
        self
    }

    /// Moves the media to `addr`.
    pub fn media_addr(mut self, addr: SocketAddr) -> SdpOffer {
        self.media_addr = addr;
        self
    }

    /// Drops every format (to list others with `pcmu`, `pcma`, `codec`…).
    pub fn clear_formats(mut self) -> SdpOffer {
        self.formats.clear();
        self
    }

    /// The next version of this session description (same `o=` id, version + 1), for a
    /// re-offer (RFC 3264 §8).
    pub fn next_version(&self) -> SdpOffer {
        let mut next = self.clone();
        next.session_version += 1;
        next
    }

    pub fn render(&self) -> String {
        let ip = self.media_addr.ip();
        let ipv = if ip.is_ipv4() { "IP4" } else { "IP6" };
        let c_ip = self.connection.unwrap_or(ip);
        let c_ipv = if c_ip.is_ipv4() { "IP4" } else { "IP6" };
        let mut s = format!(
            "v=0\r\no=tester {id} {version} IN {ipv} {ip}\r\ns=pinbridge test\r\nc=IN {c_ipv} {c_ip}\r\nt=0 0\r\n",
            id = self.session_id,
            version = self.session_version,
        );
        let pts: Vec<String> = self.formats.iter().map(|f| f.0.to_string()).collect();
        let _ = write!(
            s,
            "m=audio {} RTP/AVP {}\r\n",
            self.media_addr.port(),
            pts.join(" ")
        );
        for (pt, map, fmtp) in &self.formats {
            let _ = write!(s, "a=rtpmap:{pt} {map}\r\n");
            if let Some(f) = fmtp {
                let _ = write!(s, "a=fmtp:{pt} {f}\r\n");
            }
        }
        if let Some(p) = self.ptime {
            let _ = write!(s, "a=ptime:{p}\r\n");
        }
        let _ = write!(s, "a={}\r\n", self.direction);
        s
    }
}

/// SIP transport of a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    /// As written in Via (`SIP/2.0/UDP`).
    pub fn via_name(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        }
    }
}

/// Our side of one dialog (or of one out-of-dialog request).
#[derive(Clone, Debug)]
pub struct Call {
    pub call_id: String,
    pub from_tag: String,
    /// Our URI (From).
    pub local_uri: String,
    /// Their URI (To).
    pub remote_uri: String,
    /// Request-URI of the INVITE (and of requests before the dialog has a remote target).
    pub request_uri: String,
    /// The server's tag once a final 2xx named it.
    pub to_tag: Option<String>,
    /// The server's Contact URI from the 2xx (RFC 3261 §12.1.2).
    pub remote_target: Option<String>,
    /// Record-Route of the 2xx, reversed (§12.1.2).
    pub route_set: Vec<String>,
    /// Last CSeq number we used.
    pub cseq: u32,
    /// CSeq number of the INVITE (shared by its ACK and CANCEL).
    pub invite_cseq: u32,
    /// Branch of the INVITE (shared by its CANCEL and a non-2xx ACK).
    pub invite_branch: Option<String>,
}

enum Conn {
    Udp(UdpSocket),
    Tcp {
        stream: TcpStream,
        buf: Vec<u8>,
        closed: bool,
    },
}

/// A SIP user agent client over one UDP socket or one TCP connection to the server.
pub struct SipClient {
    conn: Conn,
    transport: Transport,
    server: SocketAddr,
    local: SocketAddr,
    pending: VecDeque<SipMessage>,
    transcript: VecDeque<String>,
    started: Instant,
    /// Set once a panic message included the transcript, so Drop does not repeat it.
    transcript_shown: Cell<bool>,
}

impl SipClient {
    /// A client on a fresh UDP socket on 127.0.0.1.
    pub fn udp(server: SocketAddr) -> SipClient {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("binding a SIP UDP socket");
        let local = socket.local_addr().expect("local address");
        Self::with(Conn::Udp(socket), Transport::Udp, server, local)
    }

    /// A client on a new TCP connection to the server (connect bounded to 5 s).
    pub fn tcp(server: SocketAddr) -> SipClient {
        let stream = TcpStream::connect_timeout(&server, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connecting SIP over TCP to {server}: {e}"));
        stream.set_nodelay(true).expect("TCP_NODELAY");
        let local = stream.local_addr().expect("local address");
        let conn = Conn::Tcp {
            stream,
            buf: Vec::new(),
            closed: false,
        };
        Self::with(conn, Transport::Tcp, server, local)
    }

    // ---- clients from a chosen loopback address (issue 7 flood tests) ----
    // Linux routes all of 127.0.0.0/8 to lo, so 127.0.0.2 is a second "source" for the
    // server's per-source limits.

    /// A client on a fresh UDP socket bound to `ip` (any port).
    pub fn udp_from(ip: IpAddr, server: SocketAddr) -> SipClient {
        let socket = UdpSocket::bind(SocketAddr::new(ip, 0))
            .unwrap_or_else(|e| panic!("binding a SIP UDP socket on {ip}: {e}"));
        let local = socket.local_addr().expect("local address");
        Self::with(Conn::Udp(socket), Transport::Udp, server, local)
    }

    /// A client on a new TCP connection from `ip` to the server.
    pub fn tcp_from(ip: IpAddr, server: SocketAddr) -> SipClient {
        let stream = tcp_connect_from(ip, server)
            .unwrap_or_else(|e| panic!("connecting SIP over TCP from {ip} to {server}: {e}"));
        stream.set_nodelay(true).expect("TCP_NODELAY");
        let local = stream.local_addr().expect("local address");
        let conn = Conn::Tcp {
            stream,
            buf: Vec::new(),
            closed: false,
        };
        Self::with(conn, Transport::Tcp, server, local)
    }

    // ---- end clients from a chosen address

    fn with(conn: Conn, transport: Transport, server: SocketAddr, local: SocketAddr) -> SipClient {
        SipClient {
            conn,
            transport,
            server,
            local,
            pending: VecDeque::new(),
            transcript: VecDeque::new(),
            started: Instant::now(),
            transcript_shown: Cell::new(false),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn server(&self) -> SocketAddr {
        self.server
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// A new dialog towards `user@server` (nothing is sent).
    pub fn new_call(&self, user: &str) -> Call {
        let uri = format!("sip:{user}@{}", self.server);
        Call {
            call_id: format!("{}@127.0.0.1", unique_token()),
            from_tag: unique_token(),
            local_uri: format!("sip:caller@{}", self.local),
            remote_uri: uri.clone(),
            request_uri: uri,
            to_tag: None,
            remote_target: None,
            route_set: Vec::new(),
            cseq: 0,
            invite_cseq: 0,
            invite_branch: None,
        }
    }

    /// Sends an INVITE with `offer` to `user@server`; returns the new call.
    pub fn invite(&mut self, user: &str, offer: &SdpOffer) -> Call {
        let mut call = self.new_call(user);
        self.send_invite(&mut call, Some(("application/sdp", &offer.render())), &[]);
        call
    }

    /// Sends an INVITE (initial or re-INVITE) in `call` with an optional body.
    pub fn send_invite(
        &mut self,
        call: &mut Call,
        body: Option<(&str, &str)>,
        extra_headers: &[(&str, &str)],
    ) {
        let msg = self.invite_text(call, body, extra_headers);
        self.send_raw(msg.as_bytes());
    }

    /// The INVITE [`SipClient::send_invite`] would send, with `call` advanced to it (new
    /// CSeq and branch), but not sent: for sending the very same bytes more than once.
    pub fn invite_text(
        &self,
        call: &mut Call,
        body: Option<(&str, &str)>,
        extra_headers: &[(&str, &str)],
    ) -> String {
        call.cseq += 1;
        call.invite_cseq = call.cseq;
        let branch = new_branch();
        call.invite_branch = Some(branch.clone());
        let uri = self.target_uri(call);
        self.build_request(
            "INVITE",
            &uri,
            call,
            call.cseq,
            &branch,
            extra_headers,
            body,
        )
    }

    /// Sends CANCEL for the call's pending INVITE (§9.1: same Request-URI, Call-ID, From,
    /// To, CSeq number and branch as the INVITE).
    pub fn cancel(&mut self, call: &Call) {
        let branch = call
            .invite_branch
            .clone()
            .expect("CANCEL needs an INVITE sent first");
        let mut to_less = call.clone();
        to_less.to_tag = None;
        let msg = self.build_request(
            "CANCEL",
            &call.request_uri,
            &to_less,
            call.invite_cseq,
            &branch,
            &[],
            None,
        );
        self.send_raw(msg.as_bytes());
    }

    /// Acknowledges the final response to the INVITE. For a 2xx the ACK is a new
    /// transaction to the remote target (§13.2.2.4); for a non-2xx it belongs to the INVITE
    /// transaction: same branch and Request-URI, To copied from the response (§17.1.1.3).
    pub fn ack(&mut self, call: &Call, response: &SipMessage) {
        self.ack_with_body(call, response, None);
    }

    /// [`SipClient::ack`] with a body: the SDP answer to an offer the server put in its 2xx
    /// (RFC 3261 §13.2.1 late offer).
    pub fn ack_with_body(
        &mut self,
        call: &Call,
        response: &SipMessage,
        body: Option<(&str, &str)>,
    ) {
        let status = response.status().expect("ACK answers a response");
        let msg = if (200..300).contains(&status) {
            let uri = self.target_uri(call);
            self.build_request(
                "ACK",
                &uri,
                call,
                call.invite_cseq,
                &new_branch(),
                &[],
                body,
            )
        } else {
            let branch = call
                .invite_branch
                .clone()
                .expect("ACK needs an INVITE sent first");
            let mut with_their_to = call.clone();
            with_their_to.to_tag = response.to_tag();
            self.build_request(
                "ACK",
                &call.request_uri,
                &with_their_to,
                call.invite_cseq,
                &branch,
                &[],
                body,
            )
        };
        self.send_raw(msg.as_bytes());
    }

    /// Sends an in-dialog request (BYE, INFO, OPTIONS…): next CSeq, new branch, to the
    /// remote target through the route set.
    pub fn request(
        &mut self,
        call: &mut Call,
        method: &str,
        extra_headers: &[(&str, &str)],
        body: Option<(&str, &str)>,
    ) {
        let msg = self.request_text(call, method, extra_headers, body);
        self.send_raw(msg.as_bytes());
    }

    /// The request [`SipClient::request`] would send, with `call` advanced to it, but not
    /// sent (to send it with [`SipClient::try_send_raw`], in pieces, or together with
    /// others).
    pub fn request_text(
        &self,
        call: &mut Call,
        method: &str,
        extra_headers: &[(&str, &str)],
        body: Option<(&str, &str)>,
    ) -> String {
        call.cseq += 1;
        let uri = self.target_uri(call);
        self.build_request(
            method,
            &uri,
            call,
            call.cseq,
            &new_branch(),
            extra_headers,
            body,
        )
    }

    /// An out-of-dialog OPTIONS to the server like [`SipClient::options`], built but not
    /// sent.
    pub fn options_text(&self) -> (Call, String) {
        let mut call = self.new_call("pinbridge");
        call.request_uri = format!("sip:{}", self.server);
        let text = self.request_text(&mut call, "OPTIONS", &[("Accept", "application/sdp")], None);
        (call, text)
    }

    pub fn bye(&mut self, call: &mut Call) {
        self.request(call, "BYE", &[], None);
    }

    /// Sends an out-of-dialog OPTIONS to the server; returns its "call" for matching.
    pub fn options(&mut self) -> Call {
        let (call, text) = self.options_text();
        self.send_raw(text.as_bytes());
        call
    }

    /// Sends a response to a request the server sent us (echoing Via, From, To, Call-ID,
    /// CSeq; adds a To tag when the request had none).
    pub fn respond(&mut self, request: &SipMessage, code: u16, reason: &str) {
        let mut s = format!("SIP/2.0 {code} {reason}\r\n");
        for (_, v) in request.header_lines("Via") {
            let _ = write!(s, "Via: {v}\r\n");
        }
        let from = request.header("From").unwrap_or("");
        let mut to = request.header("To").unwrap_or("").to_string();
        if code > 100 && tag_param(&to).is_none() {
            let _ = write!(to, ";tag={}", unique_token());
        }
        let _ = write!(
            s,
            "From: {from}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {}\r\nContent-Length: 0\r\n\r\n",
            request.call_id().unwrap_or(""),
            request.header("CSeq").unwrap_or(""),
        );
        self.send_raw(s.as_bytes());
    }

    /// Sends bytes as they are (one datagram on UDP).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.note("->", &String::from_utf8_lossy(bytes));
        match &mut self.conn {
            Conn::Udp(sock) => {
                sock.send_to(bytes, self.server)
                    .unwrap_or_else(|e| panic!("UDP send to {}: {e}", self.server));
            }
            Conn::Tcp { stream, .. } => stream
                .write_all(bytes)
                .unwrap_or_else(|e| panic!("TCP send to {}: {e}", self.server)),
        }
    }

    /// Sends bytes as they are, reporting a failed write instead of panicking (for tests
    /// where the server may already have closed the TCP connection).
    pub fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.note("->", &String::from_utf8_lossy(bytes));
        let r = match &mut self.conn {
            Conn::Udp(sock) => sock.send_to(bytes, self.server).map(|_| ()),
            Conn::Tcp { stream, .. } => stream.write_all(bytes),
        };
        if let Err(e) = &r {
            self.note("-> failed", &e.to_string());
        }
        r
    }

    /// Whether the server closed (or reset) the TCP connection, as far as reads have
    /// seen. Always false on UDP.
    pub fn is_closed(&self) -> bool {
        matches!(self.conn, Conn::Tcp { closed: true, .. })
    }

    /// Reads until the server closes the TCP connection or `timeout` passes; true if it
    /// closed. Messages read meanwhile are kept for later waits. False at once on UDP.
    pub fn wait_closed(&mut self, timeout: Duration) -> bool {
        if matches!(self.conn, Conn::Udp(_)) {
            return false;
        }
        let deadline = Instant::now() + timeout;
        for _ in 0..MAX_PENDING {
            if self.is_closed() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            if let Some(m) = self.read_message(left) {
                if self.pending.len() >= MAX_PENDING {
                    self.pending.pop_front();
                }
                self.pending.push_back(m);
            }
        }
        self.is_closed()
    }

    /// The next message of any kind, waiting at most `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Option<SipMessage> {
        self.recv_matching(timeout, |_| true)
    }

    /// The first message (kept earlier or arriving within `timeout`) that `want` accepts;
    /// others are kept, in order, for later waits.
    pub fn recv_matching(
        &mut self,
        timeout: Duration,
        mut want: impl FnMut(&SipMessage) -> bool,
    ) -> Option<SipMessage> {
        if let Some(i) = self.pending.iter().position(&mut want) {
            return self.pending.remove(i);
        }
        let deadline = Instant::now() + timeout;
        // Bounded: each pass consumes one message or ends the wait.
        for _ in 0..100_000 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let msg = self.read_message(left)?;
            if want(&msg) {
                return Some(msg);
            }
            if self.pending.len() >= MAX_PENDING {
                self.pending.pop_front();
            }
            self.pending.push_back(msg);
        }
        None
    }

    /// The next response (provisional or final) to `method` in `call`; panics on timeout.
    pub fn expect_response(&mut self, call: &Call, method: &str, timeout: Duration) -> SipMessage {
        let want_cseq = match method {
            "INVITE" | "CANCEL" | "ACK" => call.invite_cseq,
            _ => call.cseq,
        };
        let got = self.recv_matching(timeout, |m| {
            m.is_response()
                && m.call_id() == Some(call.call_id.as_str())
                && m.cseq()
                    .is_some_and(|(n, meth)| n == want_cseq && meth.eq_ignore_ascii_case(method))
        });
        got.unwrap_or_else(|| {
            self.fail(&format!(
                "no response to {method} (CSeq {want_cseq}, Call-ID {}) within {timeout:?}",
                call.call_id
            ))
        })
    }

    /// The final response to `method` in `call`, skipping provisional ones; panics on
    /// timeout. For an INVITE a 2xx establishes the dialog in `call`.
    pub fn expect_final(&mut self, call: &mut Call, method: &str, timeout: Duration) -> SipMessage {
        let deadline = Instant::now() + timeout;
        for _ in 0..1000 {
            let left = deadline.saturating_duration_since(Instant::now());
            let r = self.expect_response(call, method, left);
            let status = r.status().expect("responses have a status");
            if status < 200 {
                continue;
            }
            if method == "INVITE" && (200..300).contains(&status) {
                call.to_tag = r.to_tag();
                call.remote_target = r.contact_uri();
                call.route_set = r.record_route().into_iter().rev().collect();
            }
            return r;
        }
        self.fail(&format!("more than 1000 provisional responses to {method}"))
    }

    /// A request `method` from the server in `call`; panics on timeout.
    pub fn expect_request(&mut self, call: &Call, method: &str, timeout: Duration) -> SipMessage {
        let got = self.recv_matching(timeout, |m| {
            m.method() == Some(method) && m.call_id() == Some(call.call_id.as_str())
        });
        got.unwrap_or_else(|| {
            self.fail(&format!(
                "no {method} for Call-ID {} within {timeout:?}",
                call.call_id
            ))
        })
    }

    /// Waits for the server's BYE in `call` and answers it 200 OK.
    pub fn answer_bye(&mut self, call: &Call, timeout: Duration) -> SipMessage {
        let bye = self.expect_request(call, "BYE", timeout);
        self.respond(&bye, 200, "OK");
        bye
    }

    /// Takes everything kept or arriving during `window` (e.g. retransmissions in flight).
    pub fn drain(&mut self, window: Duration) -> Vec<SipMessage> {
        let mut out: Vec<SipMessage> = self.pending.drain(..).collect();
        let deadline = Instant::now() + window;
        while out.len() < MAX_PENDING {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_message(left) {
                Some(m) => out.push(m),
                None => break,
            }
        }
        out
    }

    /// Messages received but not yet taken by a wait.
    pub fn pending(&self) -> &VecDeque<SipMessage> {
        &self.pending
    }

    /// Panics with `why` and the transcript.
    pub fn fail(&self, why: &str) -> ! {
        self.transcript_shown.set(true);
        panic!(
            "{why}\n--- SIP transcript ({} {} -> {}) ---\n{}",
            self.transport.via_name(),
            self.local,
            self.server,
            self.transcript_text()
        )
    }

    pub fn transcript_text(&self) -> String {
        self.transcript
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn target_uri(&self, call: &Call) -> String {
        call.remote_target
            .clone()
            .unwrap_or_else(|| call.request_uri.clone())
    }

    #[allow(clippy::too_many_arguments)]
    fn build_request(
        &self,
        method: &str,
        uri: &str,
        call: &Call,
        cseq: u32,
        branch: &str,
        extra_headers: &[(&str, &str)],
        body: Option<(&str, &str)>,
    ) -> String {
        let mut s = format!("{method} {uri} SIP/2.0\r\n");
        let _ = write!(
            s,
            "Via: SIP/2.0/{} {};branch={branch};rport\r\n",
            self.transport.via_name(),
            self.local
        );
        for r in &call.route_set {
            let _ = write!(s, "Route: {r}\r\n");
        }
        s.push_str("Max-Forwards: 70\r\n");
        let _ = write!(s, "From: <{}>;tag={}\r\n", call.local_uri, call.from_tag);
        match &call.to_tag {
            Some(t) => {
                let _ = write!(s, "To: <{}>;tag={t}\r\n", call.remote_uri);
            }
            None => {
                let _ = write!(s, "To: <{}>\r\n", call.remote_uri);
            }
        }
        let _ = write!(s, "Call-ID: {}\r\nCSeq: {cseq} {method}\r\n", call.call_id);
        if method != "CANCEL" {
            let transport = match self.transport {
                Transport::Udp => "",
                Transport::Tcp => ";transport=tcp",
            };
            let _ = write!(s, "Contact: <sip:caller@{}{transport}>\r\n", self.local);
        }
        s.push_str("User-Agent: pinbridge-tests\r\n");
        for (n, v) in extra_headers {
            let _ = write!(s, "{n}: {v}\r\n");
        }
        match body {
            Some((ct, b)) => {
                let _ = write!(
                    s,
                    "Content-Type: {ct}\r\nContent-Length: {}\r\n\r\n{b}",
                    b.len()
                );
            }
            None => s.push_str("Content-Length: 0\r\n\r\n"),
        }
        s
    }

    /// Reads one message from the connection within `timeout`. Unparseable input is noted
    /// in the transcript and skipped (UDP) or ends the connection (TCP).
    fn read_message(&mut self, timeout: Duration) -> Option<SipMessage> {
        let deadline = Instant::now() + timeout;
        for _ in 0..100_000 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let server = self.server;
            let got = match &mut self.conn {
                Conn::Udp(sock) => read_datagram(sock, left),
                Conn::Tcp {
                    stream,
                    buf,
                    closed,
                } => read_stream(stream, buf, closed, left).map(|r| r.map(|m| (m, server))),
            };
            match got {
                None => return None,
                Some(Ok((mut msg, from))) => {
                    msg.received_at = Instant::now();
                    msg.source = Some(from);
                    self.note("<-", &msg.to_text());
                    return Some(msg);
                }
                Some(Err(e)) => self.note("<- unparseable", &e),
            }
        }
        None
    }

    fn note(&mut self, dir: &str, text: &str) {
        if self.transcript.len() >= MAX_TRANSCRIPT {
            self.transcript.pop_front();
        }
        let t = self.started.elapsed();
        self.transcript.push_back(format!(
            "[{:>8.3}s] {dir}\n{}",
            t.as_secs_f64(),
            text.trim_end()
        ));
    }
}

impl Drop for SipClient {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.transcript_shown.get() {
            eprintln!(
                "--- SIP transcript of the client {} {} -> {} ---\n{}",
                self.transport.via_name(),
                self.local,
                self.server,
                self.transcript_text()
            );
        }
    }
}

/// `None` on timeout; `Some(Err)` for a datagram that is not SIP (empty keep-alives are
/// skipped silently by returning the error "keep-alive").
fn read_datagram(
    sock: &UdpSocket,
    timeout: Duration,
) -> Option<Result<(SipMessage, SocketAddr), String>> {
    let mut buf = vec![0u8; 65536];
    sock.set_read_timeout(Some(timeout))
        .expect("set_read_timeout");
    match sock.recv_from(&mut buf) {
        Ok((n, from)) => {
            let bytes = &buf[..n];
            if bytes.iter().all(|b| b.is_ascii_whitespace()) {
                return Some(Err("keep-alive".into()));
            }
            Some(
                SipMessage::parse_datagram(bytes)
                    .map(|m| (m, from))
                    .map_err(|e| format!("{e}: {:?}", String::from_utf8_lossy(bytes))),
            )
        }
        Err(e) if is_timeout(&e) => None,
        // ICMP port unreachable from an earlier send shows up here on Linux.
        Err(e) => Some(Err(format!("UDP recv error: {e}"))),
    }
}

fn read_stream(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    closed: &mut bool,
    timeout: Duration,
) -> Option<Result<SipMessage, String>> {
    let deadline = Instant::now() + timeout;
    for _ in 0..100_000 {
        match SipMessage::parse_stream(buf) {
            Ok(Some((msg, used))) => {
                buf.drain(..used);
                return Some(Ok(msg));
            }
            Ok(None) => {}
            Err(e) => {
                let text = String::from_utf8_lossy(buf).into_owned();
                buf.clear();
                *closed = true;
                return Some(Err(format!("{e}: {text:?}; stopped reading this stream")));
            }
        }
        if *closed || buf.len() > MAX_STREAM_BUFFER {
            return None;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        stream
            .set_read_timeout(Some(left))
            .expect("set_read_timeout");
        let mut chunk = [0u8; 16 * 1024];
        match stream.read(&mut chunk) {
            Ok(0) => {
                *closed = true;
                return Some(Err("TCP connection closed by the server".into()));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if is_timeout(&e) => return None,
            Err(e) => {
                *closed = true;
                return Some(Err(format!("TCP read error: {e}")));
            }
        }
    }
    None
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// A blocking TCP connection from `ip` (any port) to `server` (IPv4): std cannot bind before
/// connecting, so the socket is made with libc. Connect is bounded by the kernel's SYN
/// retries; on loopback it succeeds or is refused at once.
pub fn tcp_connect_from(ip: IpAddr, server: SocketAddr) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let (IpAddr::V4(ip), SocketAddr::V4(server)) = (ip, server) else {
        return Err(std::io::Error::other("IPv4 only"));
    };
    let sockaddr = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket(2)/bind(2)/connect(2) on a descriptor we own; the sockaddr_in
    // values live across each call; on error the descriptor is closed before returning.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let local = sockaddr(ip, 0);
        let remote = sockaddr(*server.ip(), server.port());
        if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) != 0
            || libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) != 0
        {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        Ok(TcpStream::from_raw_fd(fd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESPONSE: &str = "SIP/2.0 200 OK\r\n\
        v: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKabc;rport=5070, SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKdef\r\n\
        f: <sip:caller@127.0.0.1:5070>;tag=111\r\n\
        t: \"Bridge\" <sip:1234@127.0.0.1:5060>;tag=srv42\r\n\
        i: abc@127.0.0.1\r\n\
        CSeq: 1 INVITE\r\n\
        m: <sip:pinbridge@127.0.0.1:5060;transport=udp>\r\n\
        Record-Route: <sip:p1;lr>, <sip:p2;lr>\r\n\
        c: application/sdp\r\n\
        Subject: folded\r\n  continues here\r\n\
        l: 128\r\n\r\n\
        v=0\r\n\
        o=- 1 1 IN IP4 127.0.0.1\r\n\
        s=-\r\n\
        c=IN IP4 127.0.0.1\r\n\
        t=0 0\r\n\
        m=audio 30002 RTP/AVP 8 101\r\n\
        a=rtpmap:8 PCMA/8000\r\n\
        a=ptime:20\r\n";

    #[test]
    fn parses_a_compact_response_with_sdp() {
        let body_len = RESPONSE.split("\r\n\r\n").nth(1).unwrap().len();
        let text = RESPONSE.replace("l: 128", &format!("l: {body_len}"));
        let m = SipMessage::parse_datagram(text.as_bytes()).unwrap();
        assert_eq!(m.status(), Some(200));
        assert_eq!(m.reason(), Some("OK"));
        assert_eq!(m.call_id(), Some("abc@127.0.0.1"));
        assert_eq!(m.cseq(), Some((1, "INVITE".into())));
        assert_eq!(m.to_tag().as_deref(), Some("srv42"));
        assert_eq!(m.from_tag().as_deref(), Some("111"));
        assert_eq!(m.top_via_branch().as_deref(), Some("z9hG4bKabc"));
        assert_eq!(m.header_values("Via").len(), 2);
        assert_eq!(
            m.contact_uri().as_deref(),
            Some("sip:pinbridge@127.0.0.1:5060;transport=udp")
        );
        assert_eq!(m.record_route(), vec!["<sip:p1;lr>", "<sip:p2;lr>"]);
        assert_eq!(m.header("subject"), Some("folded continues here"));
        let sdp = m.sdp().unwrap();
        let audio = sdp.audio().unwrap();
        assert_eq!(sdp.audio_addr(), Some("127.0.0.1:30002".parse().unwrap()));
        assert_eq!(audio.formats, vec![8, 101]);
        assert_eq!(audio.rtpmap(8), Some("PCMA/8000"));
        assert_eq!(audio.ptime(), Some(20));
        assert_eq!(audio.direction(), "sendrecv");
    }

    #[test]
    fn stream_framing_uses_content_length() {
        let one = "OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 5\r\n\r\nhello";
        let two = "BYE sip:a@b SIP/2.0\r\nl: 0\r\n\r\n";
        let all = format!("\r\n{one}{two}");
        let (m1, used) = SipMessage::parse_stream(all.as_bytes()).unwrap().unwrap();
        assert_eq!(m1.method(), Some("OPTIONS"));
        assert_eq!(m1.body, b"hello");
        let (m2, used2) = SipMessage::parse_stream(&all.as_bytes()[used..])
            .unwrap()
            .unwrap();
        assert_eq!(m2.method(), Some("BYE"));
        assert_eq!(used + used2, all.len());
        assert!(
            SipMessage::parse_stream(&one.as_bytes()[..one.len() - 1])
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn rejects_inconsistent_datagrams() {
        let short = "SIP/2.0 200 OK\r\nContent-Length: 10\r\n\r\nabc";
        assert!(SipMessage::parse_datagram(short.as_bytes()).is_err());
        assert!(SipMessage::parse_datagram(b"garbage").is_err());
        assert!(SipMessage::parse_datagram(b"INVITE x SIP/2.0\r\nno colon\r\n\r\n").is_err());
    }

    #[test]
    fn header_helpers() {
        assert_eq!(
            name_addr_uri("\"A, B\" <sip:x@y;transport=tcp>;tag=1"),
            "sip:x@y;transport=tcp"
        );
        assert_eq!(name_addr_uri("sip:x@y;tag=1"), "sip:x@y");
        assert_eq!(
            header_param("<sip:x@y;tag=no>;tag=yes", "tag").as_deref(),
            Some("yes")
        );
        assert_eq!(header_param("sip:x@y;TAG=7", "tag").as_deref(), Some("7"));
        assert_eq!(header_param("<sip:x@y;tag=no>", "tag"), None);
        assert_eq!(
            split_top_level_commas("\"a,b\" <sip:c,d>, <sip:e>"),
            vec!["\"a,b\" <sip:c,d>", "<sip:e>"]
        );
        assert!(new_branch().starts_with("z9hG4bK"));
        assert_ne!(unique_token(), unique_token());
    }

    #[test]
    fn offer_renders_and_parses_back() {
        let offer = SdpOffer::g711("127.0.0.1:4000".parse().unwrap());
        let sdp = Sdp::parse(&offer.render()).unwrap();
        let a = sdp.audio().unwrap();
        assert_eq!(a.formats, vec![0, 8, 101]);
        assert_eq!(a.fmtp(101), Some("0-16"));
        assert_eq!(a.audio_codecs(), vec![0, 8]);
        assert_eq!(sdp.audio_addr(), Some("127.0.0.1:4000".parse().unwrap()));
    }

    #[test]
    fn built_requests_carry_the_dialog() {
        let client = SipClient::udp("127.0.0.1:9".parse().unwrap());
        let mut call = client.new_call("1234");
        call.cseq = 1;
        call.to_tag = Some("t9".into());
        let text = client.build_request(
            "BYE",
            "sip:1234@127.0.0.1:9",
            &call,
            2,
            "z9hG4bKx",
            &[],
            None,
        );
        let m = SipMessage::parse_datagram(text.as_bytes()).unwrap();
        assert_eq!(m.method(), Some("BYE"));
        assert_eq!(m.cseq(), Some((2, "BYE".into())));
        assert_eq!(m.to_tag().as_deref(), Some("t9"));
        assert_eq!(m.from_tag(), Some(call.from_tag.clone()));
        assert_eq!(m.top_via_branch().as_deref(), Some("z9hG4bKx"));
        assert_eq!(m.content_length(), Ok(Some(0)));
    }
}
