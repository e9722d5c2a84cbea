//! SIP message syntax at the edge: framing, parsing, validation and serialisation.
//!
//! Everything that reads SIP bytes goes through here, and what comes out is a [`Request`] or
//! [`Response`] whose mandatory headers are present and parsed, so the layers above never see
//! a half-valid message. A message that cannot be parsed becomes a [`ParseError`] that says
//! whether (and with which status and reason phrase) it can still be answered.
//!
//! The design first put `rsip` 0.4 behind this module. Run against the RFC 4475/5118 torture
//! messages it failed valid input we must accept: IPv6 hosts (`sip:[2001:db8::10]:5070`), a
//! user part containing `;` (`sip:user;par=u%40example.net@example.com` became host `user`),
//! `tel:` URIs, LWS around `=` in header parameters, unknown Via transports and unknown
//! methods; and it does not understand compact header names. SIP's grammar is small and this
//! parser is our core, so it is hand-written here against RFC 3261 §7 and §25 and checked
//! against every torture message (`tests/sip_torture.rs`).
//!
//! Tolerance follows the robustness principle where the RFCs allow it: line folding, LWS
//! around separators, bare-LF line ends, compact header names (RFC 3261 §7.3.3), case-
//! insensitive names, extra octets after the body of a UDP datagram (RFC 4475 §3.1.1.8).

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::net::IpAddr;

/// Largest message we accept over UDP or TCP. RFC 3261 §18.1.1 expects requests over 1300
/// octets to use TCP; 64 KiB leaves room for any real SDP while bounding memory per message.
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024;
/// More header lines than any real request carries; a bound against header floods.
pub const MAX_HEADERS: usize = 128;
/// Longest header line (after unfolding) we accept.
pub const MAX_LINE: usize = 8 * 1024;

/// Why a message could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The status to answer with (400, 416, 505, 513…), when the message is a request whose
    /// top Via we could read; `None` means the message can only be dropped (and counted).
    pub reply: Option<Reply>,
    /// What was wrong, suitable for a log line and a reason phrase.
    pub reason: String,
}

/// Enough of a rejected request to address a response to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub head: Box<Request>,
}

impl ParseError {
    fn drop(reason: impl Into<String>) -> Self {
        ParseError {
            reply: None,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reply {
            Some(r) => write!(f, "{} {}", r.status, self.reason),
            None => write!(f, "dropped: {}", self.reason),
        }
    }
}

/// A SIP method. Unknown methods are kept (RFC 3261 §8.2.1: a UAS answers them with 405/501).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Register,
    Info,
    Update,
    Prack,
    Subscribe,
    Notify,
    Refer,
    Message,
    Publish,
    Other(String),
}

impl Method {
    /// Methods are case-sensitive (RFC 3261 §7.1): `invite` is an unknown method.
    pub fn from_token(s: &str) -> Method {
        match s {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "OPTIONS" => Method::Options,
            "REGISTER" => Method::Register,
            "INFO" => Method::Info,
            "UPDATE" => Method::Update,
            "PRACK" => Method::Prack,
            "SUBSCRIBE" => Method::Subscribe,
            "NOTIFY" => Method::Notify,
            "REFER" => Method::Refer,
            "MESSAGE" => Method::Message,
            "PUBLISH" => Method::Publish,
            other => Method::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Register => "REGISTER",
            Method::Info => "INFO",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Refer => "REFER",
            Method::Message => "MESSAGE",
            Method::Publish => "PUBLISH",
            Method::Other(s) => s,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Compact forms (RFC 3261 §7.3.3, §20 and the IANA registry) mapped to canonical names, so
/// everything above this module sees one spelling.
const COMPACT: &[(&str, &str)] = &[
    ("v", "Via"),
    ("i", "Call-ID"),
    ("f", "From"),
    ("t", "To"),
    ("m", "Contact"),
    ("l", "Content-Length"),
    ("c", "Content-Type"),
    ("k", "Supported"),
    ("s", "Subject"),
    ("e", "Content-Encoding"),
    ("o", "Event"),
    ("u", "Allow-Events"),
    ("r", "Refer-To"),
    ("b", "Referred-By"),
];

/// Canonical spellings of the headers we read, so lookups and our output are uniform.
const CANONICAL: &[&str] = &[
    "Via",
    "Call-ID",
    "From",
    "To",
    "CSeq",
    "Contact",
    "Content-Length",
    "Content-Type",
    "Content-Encoding",
    "Max-Forwards",
    "Supported",
    "Require",
    "Proxy-Require",
    "Allow",
    "Accept",
    "Route",
    "Record-Route",
    "Subject",
    "Event",
    "Allow-Events",
    "Refer-To",
    "Referred-By",
    "Expires",
    "Privacy",
    "User-Agent",
    "Server",
    "Warning",
    "Retry-After",
    "Unsupported",
];

/// Headers whose values are comma-separated lists of entries that we address one by one
/// (RFC 3261 §7.3.1). Other headers keep their value whole: `Date` has a comma in it.
const LIST_HEADERS: &[&str] = &["Via", "Contact", "Route", "Record-Route"];

/// Headers a request must carry exactly once (RFC 3261 §8.1.1; §20 for the cardinality).
const SINGLE_MANDATORY: &[&str] = &["Call-ID", "From", "To", "CSeq"];

fn canonical_name(name: &str) -> Cow<'static, str> {
    if name.len() == 1
        && let Some((_, full)) = COMPACT.iter().find(|(c, _)| c.eq_ignore_ascii_case(name))
    {
        return Cow::Borrowed(full);
    }
    match CANONICAL.iter().find(|c| c.eq_ignore_ascii_case(name)) {
        Some(c) => Cow::Borrowed(c),
        None => Cow::Owned(name.to_string()),
    }
}

/// Header fields in message order, names canonicalised, list headers split into entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(Cow<'static, str>, String)>,
}

impl Headers {
    pub fn new() -> Self {
        Headers::default()
    }

    /// The first value of `name` (case-insensitive; compact forms were expanded on parse).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.all(name).next()
    }

    pub fn all<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        self.entries
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn count(&self, name: &str) -> usize {
        self.all(name).count()
    }

    pub fn push(&mut self, name: impl Into<Cow<'static, str>>, value: impl Into<String>) {
        self.entries.push((name.into(), value.into()));
    }

    /// Replaces every value of `name` with one value.
    pub fn set(&mut self, name: &'static str, value: impl Into<String>) {
        self.remove(name);
        self.push(name, value);
    }

    pub fn remove(&mut self, name: &str) {
        self.entries.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_ref(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Does a comma-separated token header (Supported, Require, Allow…) list `token`?
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.all(name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// A URI scheme we can tell apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    Sip,
    Sips,
    Tel,
    Other(String),
}

/// A SIP, SIPS or tel URI (RFC 3261 §19.1, RFC 3966), parsed leniently but completely
/// enough to route on: user part (still %-escaped), host, port, parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    pub scheme: Scheme,
    /// The user part (or the tel number), %-escapes kept as received.
    pub user: Option<String>,
    /// Host as written; IPv6 references keep their brackets.
    pub host: String,
    pub port: Option<u16>,
    pub params: Vec<(String, Option<String>)>,
    /// Raw `?header=value` part, if any (not allowed in a Request-URI).
    pub headers: Option<String>,
    raw: String,
}

impl Uri {
    pub fn parse(s: &str) -> Result<Uri, String> {
        let s = s.trim();
        let (scheme, rest) = s
            .split_once(':')
            .ok_or_else(|| format!("URI without a scheme: {s:?}"))?;
        if scheme.is_empty()
            || !scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        {
            return Err(format!("bad URI scheme {scheme:?}"));
        }
        if rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("whitespace in URI".into());
        }
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "sip" => Scheme::Sip,
            "sips" => Scheme::Sips,
            "tel" => Scheme::Tel,
            other => Scheme::Other(other.to_string()),
        };
        // The user part may hold '?' and ';' (RFC 3261 §25.1 `user-unreserved`), so headers
        // are looked for only after the '@' (userinfo never holds a raw '@').
        let (user_part, host_part) = match rest.split_once('@') {
            Some((u, h)) if matches!(scheme, Scheme::Sip | Scheme::Sips) => (Some(u), h),
            _ => (None, rest),
        };
        let (rest, headers) = match host_part.split_once('?') {
            Some((r, h)) => (r, Some(h.to_string())),
            None => (host_part, None),
        };
        let mut uri = Uri {
            scheme: scheme.clone(),
            user: None,
            host: String::new(),
            port: None,
            params: Vec::new(),
            headers,
            raw: s.to_string(),
        };
        match scheme {
            Scheme::Sip | Scheme::Sips => {
                if let Some(user) = user_part {
                    let user = user.split(':').next().unwrap_or_default();
                    if user.is_empty() {
                        return Err("empty user part in URI".into());
                    }
                    uri.user = Some(user.to_string());
                }
                let mut parts = rest.split(';');
                let hostport = parts.next().unwrap_or_default();
                let (host, port) = parse_hostport(hostport)?;
                uri.host = host;
                uri.port = port;
                uri.params = parse_params(parts)?;
            }
            Scheme::Tel => {
                let mut parts = rest.split(';');
                let number = parts.next().unwrap_or_default();
                if number.is_empty() {
                    return Err("empty tel URI".into());
                }
                uri.user = Some(number.to_string());
                uri.params = parse_params(parts)?;
            }
            Scheme::Other(_) => {
                if rest.is_empty() {
                    return Err("empty URI".into());
                }
            }
        }
        Ok(uri)
    }

    /// The user part with %-escapes decoded (RFC 3261 §19.1.4 compares unescaped).
    pub fn user_unescaped(&self) -> Option<String> {
        self.user.as_deref().map(percent_decode)
    }

    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// `host[:port]` with IPv6 references in brackets (RFC 3261 §25.1, RFC 5118 §4.1).
fn parse_hostport(s: &str) -> Result<(String, Option<u16>), String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty host".into());
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (addr, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("unterminated IPv6 reference {s:?}"))?;
        if addr.is_empty()
            || !addr
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Err(format!("bad IPv6 reference {s:?}"));
        }
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("junk after IPv6 reference {s:?}"))?,
            ),
        };
        (format!("[{addr}]"), port)
    } else {
        match s.split_once(':') {
            Some((h, p)) => {
                if p.contains(':') {
                    return Err(format!("IPv6 address without brackets {s:?}"));
                }
                (h.to_string(), Some(p))
            }
            None => (s.to_string(), None),
        }
    };
    if !host.starts_with('[')
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
    {
        return Err(format!("bad host {host:?}"));
    }
    let port = match port {
        None => None,
        Some(p) => Some(
            p.trim()
                .parse::<u16>()
                .map_err(|_| format!("bad port {p:?}"))?,
        ),
    };
    Ok((host, port))
}

fn parse_params<'a>(
    parts: impl Iterator<Item = &'a str>,
) -> Result<Vec<(String, Option<String>)>, String> {
    let mut out = Vec::new();
    for p in parts {
        let p = p.trim();
        if p.is_empty() {
            return Err("empty parameter".into());
        }
        match p.split_once('=') {
            Some((n, v)) => {
                let n = n.trim();
                if n.is_empty() || !is_token(n) {
                    return Err(format!("bad parameter name {n:?}"));
                }
                out.push((n.to_string(), Some(v.trim().to_string())));
            }
            None => {
                if !is_token(p) {
                    return Err(format!("bad parameter {p:?}"));
                }
                out.push((p.to_string(), None))
            }
        }
    }
    Ok(out)
}

/// RFC 3261 §25.1 `token`.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&c))
}

/// `name-addr / addr-spec` plus header parameters: From, To, Contact, Route entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    pub display_name: Option<String>,
    pub uri: Uri,
    pub params: Vec<(String, Option<String>)>,
}

impl NameAddr {
    pub fn parse(s: &str) -> Result<NameAddr, String> {
        let s = s.trim();
        let (display_name, rest) = if s.starts_with('"') {
            let (name, after) = parse_quoted(s)?;
            let after = after.trim_start();
            if !after.starts_with('<') {
                return Err("quoted display name not followed by <URI>".into());
            }
            (Some(name), after)
        } else if let Some(lt) = s.find('<') {
            let name = s[..lt].trim();
            if !name.is_empty() && !name.split_whitespace().all(is_token) {
                return Err(format!("display name {name:?} must be quoted"));
            }
            ((!name.is_empty()).then(|| name.to_string()), &s[lt..])
        } else {
            (None, s)
        };
        if let Some(inner) = rest.strip_prefix('<') {
            let (uri, after) = inner
                .split_once('>')
                .ok_or_else(|| "missing '>' after URI".to_string())?;
            let uri = Uri::parse(uri)?;
            let after = after.trim();
            let params = match after.strip_prefix(';') {
                Some(p) => parse_params(p.split(';'))?,
                None if after.is_empty() => Vec::new(),
                None => return Err(format!("junk after URI: {after:?}")),
            };
            Ok(NameAddr {
                display_name,
                uri,
                params,
            })
        } else {
            // addr-spec: parameters after the URI belong to the header (RFC 3261 §20.10),
            // and the URI itself cannot hold ',', '?' or ';' unbracketed.
            let mut parts = rest.split(';');
            let uri = parts.next().unwrap_or_default().trim();
            if uri.contains('?') {
                return Err("URI with headers must be enclosed in <>".into());
            }
            let uri = Uri::parse(uri)?;
            let params = parse_params(parts)?;
            Ok(NameAddr {
                display_name,
                uri,
                params,
            })
        }
    }

    pub fn tag(&self) -> Option<&str> {
        self.param("tag").flatten()
    }

    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }
}

/// A quoted-string at the start of `s` (RFC 3261 §25.1, with quoted-pair); returns the
/// unquoted text and the rest.
fn parse_quoted(s: &str) -> Result<(String, &str), String> {
    let mut out = String::new();
    let mut chars = s.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &s[i + 1..])),
            '\\' => match chars.next() {
                Some((_, e)) => out.push(e),
                None => break,
            },
            c => out.push(c),
        }
    }
    Err("unterminated quoted string".into())
}

/// One Via entry (RFC 3261 §20.42).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// Transport token, upper-cased (`UDP`, `TCP`, `TLS`, `SCTP`, or anything else).
    pub transport: String,
    pub host: String,
    pub port: Option<u16>,
    pub params: Vec<(String, Option<String>)>,
}

impl Via {
    pub fn parse(s: &str) -> Result<Via, String> {
        // sent-protocol allows LWS around each '/' (RFC 4475 §3.1.1.1).
        let mut rest = s.trim();
        let mut proto = Vec::with_capacity(3);
        for i in 0..3 {
            let end = if i < 2 {
                rest.find('/').ok_or("Via without SIP/2.0/transport")?
            } else {
                rest.find(|c: char| c.is_whitespace())
                    .ok_or("Via without sent-by")?
            };
            proto.push(rest[..end].trim());
            rest = rest[end..].trim_start();
            if i < 2 {
                rest = rest[1..].trim_start();
            }
        }
        if !proto[0].eq_ignore_ascii_case("SIP") || proto[1] != "2.0" || !is_token(proto[2]) {
            return Err(format!(
                "bad Via protocol {}/{}/{}",
                proto[0], proto[1], proto[2]
            ));
        }
        let mut parts = rest.split(';');
        let (host, port) = parse_hostport(parts.next().unwrap_or_default())?;
        let params = parse_params(parts)?;
        Ok(Via {
            transport: proto[2].to_ascii_uppercase(),
            host,
            port,
            params,
        })
    }

    /// Reads a Via well enough to address an error response: any SIP version, empty
    /// parameters skipped. `None` if not even a host can be found.
    pub fn parse_lenient(s: &str) -> Option<Via> {
        let s = s.trim();
        let slash = s.rfind('/')?;
        let rest = s[slash + 1..].trim_start();
        let split = rest.find(|c: char| c.is_whitespace())?;
        let transport = rest[..split].to_ascii_uppercase();
        let mut parts = rest[split..].split(';');
        let (host, port) = parse_hostport(parts.next()?).ok()?;
        let params = parts
            .filter(|p| !p.trim().is_empty())
            .filter_map(|p| parse_params(std::iter::once(p)).ok())
            .flatten()
            .collect();
        Some(Via {
            transport,
            host,
            port,
            params,
        })
    }

    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }

    pub fn branch(&self) -> Option<&str> {
        self.param("branch").flatten()
    }

    /// The RFC 3261 branch, if this Via carries one (magic cookie `z9hG4bK` and something
    /// after it); otherwise transactions are matched the RFC 2543 way.
    pub fn rfc3261_branch(&self) -> Option<&str> {
        self.branch()
            // Bytes, not str: a multi-byte character across octet 7 must not panic (found by
            // `examples/fuzz.rs`).
            .filter(|b| b.len() > 7 && b.as_bytes()[..7].eq_ignore_ascii_case(b"z9hG4bK"))
    }

    /// `sent-by` as written, for transaction matching (RFC 3261 §17.2.3).
    pub fn sent_by(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.host),
            None => self.host.clone(),
        }
    }

    /// The IP in `sent-by`, if it is a literal address.
    pub fn host_ip(&self) -> Option<IpAddr> {
        self.host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()
    }

    /// Sets or replaces a parameter, keeping its position.
    pub fn set_param(&mut self, name: &str, value: Option<String>) {
        match self
            .params
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some(p) => p.1 = value,
            None => self.params.push((name.to_string(), value)),
        }
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIP/2.0/{} {}", self.transport, self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        for (n, v) in &self.params {
            match v {
                Some(v) => write!(f, ";{n}={v}")?,
                None => write!(f, ";{n}")?,
            }
        }
        Ok(())
    }
}

/// `CSeq` (RFC 3261 §20.16).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    pub seq: u32,
    pub method: Method,
}

impl CSeq {
    fn parse(s: &str) -> Result<CSeq, String> {
        let mut it = s.split_whitespace();
        let (Some(n), Some(m), None) = (it.next(), it.next(), it.next()) else {
            return Err(format!("malformed CSeq {s:?}"));
        };
        let seq: u32 = n
            .parse()
            .ok()
            .filter(|n| *n < 1 << 31)
            .ok_or_else(|| format!("CSeq number {n:?} is not below 2**31"))?;
        if !is_token(m) {
            return Err(format!("malformed CSeq method {m:?}"));
        }
        Ok(CSeq {
            seq,
            method: Method::from_token(m),
        })
    }
}

/// A parsed request: the mandatory headers are present and parsed; everything is still in
/// `headers` too, in order, for copying into responses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub uri: Uri,
    pub headers: Headers,
    pub body: Vec<u8>,
    pub vias: Vec<Via>,
    pub call_id: String,
    pub cseq: CSeq,
    pub from: NameAddr,
    pub to: NameAddr,
}

impl Request {
    pub fn top_via(&self) -> &Via {
        &self.vias[0]
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    /// The Contact of a dialog-creating request, if it has a usable one.
    pub fn contact(&self) -> Option<NameAddr> {
        NameAddr::parse(self.headers.get("Contact")?).ok()
    }

    pub fn content_type(&self) -> Option<String> {
        self.headers.get("Content-Type").map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
    }

    /// Serialises the request with a correct Content-Length.
    pub fn to_bytes(&self) -> Vec<u8> {
        let start = format!("{} {} SIP/2.0\r\n", self.method, self.uri);
        serialize(start, &self.headers, &self.body)
    }
}

/// A parsed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: Headers,
    pub body: Vec<u8>,
    pub vias: Vec<Via>,
    pub call_id: String,
    pub cseq: CSeq,
    pub from: NameAddr,
    pub to: NameAddr,
}

impl Response {
    /// A response to `req` as RFC 3261 §8.2.6.2 builds it: Via (all, in order), From, To,
    /// Call-ID and CSeq copied; a To tag added when `to_tag` is given and the request had
    /// none. The caller adds Contact, body etc.
    pub fn to(
        req: &Request,
        status: u16,
        reason: impl Into<String>,
        to_tag: Option<&str>,
    ) -> Response {
        let mut headers = Headers::new();
        for v in &req.vias {
            headers.push("Via", v.to_string());
        }
        let mut to = req.to.clone();
        let mut to_value = req.headers.get("To").unwrap_or_default().to_string();
        if let (Some(tag), None) = (to_tag, req.to.tag()) {
            to.params.push(("tag".into(), Some(tag.to_string())));
            to_value = format!("{to_value};tag={tag}");
        }
        headers.push(
            "From",
            req.headers.get("From").unwrap_or_default().to_string(),
        );
        headers.push("To", to_value);
        headers.push("Call-ID", req.call_id.clone());
        headers.push("CSeq", format!("{} {}", req.cseq.seq, req.cseq.method));
        let reason = reason.into();
        Response {
            status,
            reason: sanitize_reason(&reason),
            headers,
            body: Vec::new(),
            vias: req.vias.clone(),
            call_id: req.call_id.clone(),
            cseq: req.cseq.clone(),
            from: req.from.clone(),
            to,
        }
    }

    pub fn with_body(mut self, content_type: &str, body: Vec<u8>) -> Response {
        self.headers.set("Content-Type", content_type);
        self.body = body;
        self
    }

    pub fn with_header(
        mut self,
        name: impl Into<Cow<'static, str>>,
        value: impl Into<String>,
    ) -> Response {
        self.headers.push(name, value);
        self
    }

    pub fn to_tag(&self) -> Option<&str> {
        self.to.tag()
    }

    pub fn is_final(&self) -> bool {
        self.status >= 200
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let start = format!("SIP/2.0 {} {}\r\n", self.status, self.reason);
        serialize(start, &self.headers, &self.body)
    }
}

/// A reason phrase must be one line of text (RFC 3261 §25.1 `Reason-Phrase`): whatever we
/// put in it from a parse error (which may quote peer input) is made safe here.
fn sanitize_reason(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(120)
        .collect();
    s.trim().to_string()
}

fn serialize(mut out: String, headers: &Headers, body: &[u8]) -> Vec<u8> {
    for (n, v) in headers.iter() {
        if n.eq_ignore_ascii_case("Content-Length") {
            continue;
        }
        let _ = write!(out, "{n}: {v}\r\n");
    }
    let _ = write!(out, "Content-Length: {}\r\n\r\n", body.len());
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// A message off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Request(Request),
    Response(Response),
}

/// Finds the next whole message at the start of a TCP stream buffer (RFC 3261 §18.3: framing
/// by Content-Length). `Ok(None)` means wait for more bytes; an error means the stream cannot
/// be framed any more and the connection should be closed (after a 400 if possible).
pub fn frame_stream(buf: &[u8]) -> Result<Option<usize>, ParseError> {
    // Keep-alive CRLFs between messages (RFC 5626 §3.5.1) are skipped by the caller via
    // `leading_crlf`; here the buffer starts at a message.
    let Some((head_len, body_start)) = find_head_end(buf) else {
        if buf.len() > MAX_MESSAGE_SIZE {
            return Err(ParseError::drop("message header exceeds the size limit"));
        }
        return Ok(None);
    };
    let head = &buf[..head_len];
    let cl = content_length_raw(head).map_err(ParseError::drop)?;
    let total = body_start + cl.unwrap_or(0);
    if total > MAX_MESSAGE_SIZE {
        return Err(ParseError::drop("message exceeds the size limit"));
    }
    Ok((buf.len() >= total).then_some(total))
}

/// How many CR/LF octets open the buffer (keep-alives and stray line ends before a message).
pub fn leading_crlf(buf: &[u8]) -> usize {
    buf.iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count()
}

/// Locates the blank line ending the header block: returns (end of headers, start of body).
fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some((i, i + 2));
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some((i, i + 3));
            }
        }
        i += 1;
    }
    None
}

/// Content-Length read straight from the raw header block, for framing before full parsing.
fn content_length_raw(head: &[u8]) -> Result<Option<usize>, String> {
    let text = String::from_utf8_lossy(head);
    let mut found: Option<usize> = None;
    for (name, value) in unfold(&text).into_iter().skip(1).filter_map(|l| {
        let (n, v) = l.split_once(':')?;
        Some((n.trim().to_string(), v.trim().to_string()))
    }) {
        if canonical_name(&name) != "Content-Length" {
            continue;
        }
        let n = parse_content_length(&value)?;
        if found.is_some_and(|f| f != n) {
            return Err("conflicting Content-Length headers".into());
        }
        found = Some(n);
    }
    Ok(found)
}

fn parse_content_length(v: &str) -> Result<usize, String> {
    let v = v.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid Content-Length {v:?}"));
    }
    v.parse::<usize>()
        .ok()
        .filter(|n| *n <= MAX_MESSAGE_SIZE)
        .ok_or_else(|| format!("Content-Length {v} too large"))
}

/// Splits a header block into logical lines: CRLF or bare LF ends a line, and a line that
/// starts with SP/HT continues the previous one (RFC 3261 §7.3.1 folding).
fn unfold(head: &str) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for raw in head.split('\n') {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if (line.starts_with(' ') || line.starts_with('\t')) && lines.len() > 1 {
            let last = lines.last_mut().expect("checked non-empty");
            last.push(' ');
            last.push_str(line.trim());
        } else {
            lines.push(line.to_string());
        }
    }
    lines
}

/// Splits a list header value on commas outside quotes and angle brackets.
fn split_list(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut angle, mut escaped) = (false, false, false);
    for c in v.chars() {
        if escaped {
            escaped = false;
            cur.push(c);
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                out.push(std::mem::take(&mut cur).trim().to_string());
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur.trim().to_string());
    out
}

/// Parses one message from a datagram (or one framed TCP message).
///
/// Over UDP the body is Content-Length octets and anything after them is ignored (RFC 3261
/// §18.3, RFC 4475 §3.1.1.8); a Content-Length larger than what arrived is an error. Without
/// Content-Length the body runs to the end of the datagram.
pub fn parse(buf: &[u8]) -> Result<Message, ParseError> {
    if buf.len() > MAX_MESSAGE_SIZE {
        // Try to say so (513, RFC 3261 §21.5.14) if the head is readable.
        let head_end = find_head_end(buf)
            .map(|(h, _)| h)
            .unwrap_or(buf.len().min(MAX_MESSAGE_SIZE));
        return Err(match parse_head(&buf[..head_end]) {
            Ok(Head::Request(h)) => reply_error(h, 513, "Message Too Large"),
            _ => ParseError::drop("message too large"),
        });
    }
    let skip = leading_crlf(buf);
    let buf = &buf[skip..];
    let (head_end, body_start) = match find_head_end(buf) {
        Some(x) => x,
        None => {
            // A message without the blank line: parse what is there to answer 400.
            return Err(match parse_head(buf) {
                Ok(Head::Request(h)) => reply_error(h, 400, "Missing blank line after headers"),
                Ok(Head::Response(_)) => ParseError::drop("response without end of headers"),
                Err(e) => e,
            });
        }
    };
    let head = parse_head(&buf[..head_end])?;
    let available = &buf[body_start..];
    match head {
        Head::Request(h) => {
            let body = match body_of(&h.headers, available) {
                Ok(b) => b,
                // RFC 3261 §21.5.11: a body over our limit is "too large", not malformed.
                Err(BodyError::TooLarge(reason)) => return Err(reply_error(h, 513, &reason)),
                Err(BodyError::Invalid(reason)) => return Err(reply_error(h, 400, &reason)),
            };
            let mut h = h;
            h.body = body;
            validate_request(h).map(Message::Request)
        }
        Head::Response(r) => {
            let body = body_of(&r.headers, available).map_err(|e| ParseError::drop(e.reason()))?;
            let mut r = r;
            r.body = body;
            validate_response(r).map(Message::Response)
        }
    }
}

/// Why a body cannot be taken as Content-Length says.
enum BodyError {
    TooLarge(String),
    Invalid(String),
}

impl BodyError {
    fn reason(self) -> String {
        match self {
            BodyError::TooLarge(r) | BodyError::Invalid(r) => r,
        }
    }
}

fn body_of(headers: &Headers, available: &[u8]) -> Result<Vec<u8>, BodyError> {
    let mut cl: Option<usize> = None;
    for v in headers.all("Content-Length") {
        let n = v.trim().parse::<usize>().ok();
        if n.is_some_and(|n| n > MAX_MESSAGE_SIZE) {
            return Err(BodyError::TooLarge(format!(
                "Content-Length {} over the {MAX_MESSAGE_SIZE} octet limit",
                v.trim()
            )));
        }
        let n = parse_content_length(v).map_err(BodyError::Invalid)?;
        if cl.is_some_and(|c| c != n) {
            return Err(BodyError::Invalid(
                "conflicting Content-Length headers".into(),
            ));
        }
        cl = Some(n);
    }
    match cl {
        None => Ok(available.to_vec()),
        Some(n) if n > available.len() => Err(BodyError::Invalid(format!(
            "Content-Length {n} exceeds the {} body octets received",
            available.len()
        ))),
        Some(n) => Ok(available[..n].to_vec()),
    }
}

/// A request or response whose start line and header lines have been read, before the
/// semantic checks.
enum Head {
    Request(RawRequest),
    Response(RawResponse),
}

struct RawRequest {
    method: Method,
    uri: String,
    version: String,
    headers: Headers,
    body: Vec<u8>,
    /// A problem found while reading header lines, reported once the Via is known.
    line_error: Option<String>,
}

struct RawResponse {
    status: u16,
    reason: String,
    headers: Headers,
    body: Vec<u8>,
}

fn parse_head(head: &[u8]) -> Result<Head, ParseError> {
    // NUL is not rejected here: a quoted-pair may escape it (RFC 4475 §3.1.1.2); the
    // token and URI parsers refuse it everywhere else. Invalid UTF-8 is an error, but the
    // head is still read (lossily) so a request with a usable Via gets its 400.
    let (text, bad_utf8) = match std::str::from_utf8(head) {
        Ok(t) => (Cow::Borrowed(t), false),
        Err(_) => (String::from_utf8_lossy(head), true),
    };
    let lines = unfold(text.trim_start_matches(['\r', '\n']));
    let mut lines = lines.into_iter();
    let start = lines.next().unwrap_or_default();
    let mut headers = Headers::new();
    let mut line_error = bad_utf8.then(|| "invalid UTF-8 in message header".to_string());
    for line in lines {
        if line.is_empty() {
            continue;
        }
        if line.len() > MAX_LINE {
            line_error.get_or_insert_with(|| "header line too long".to_string());
            continue;
        }
        if headers.len() >= MAX_HEADERS {
            line_error.get_or_insert_with(|| "too many header fields".to_string());
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            line_error.get_or_insert_with(|| format!("header line without a colon: {:.40}", line));
            continue;
        };
        let name = name.trim();
        if !is_token(name) {
            line_error.get_or_insert_with(|| format!("bad header name {name:.40}"));
            continue;
        }
        let name = canonical_name(name);
        let value = value.trim();
        if LIST_HEADERS.contains(&name.as_ref()) {
            for v in split_list(value) {
                headers.push(name.clone(), v);
            }
        } else {
            headers.push(name, value.to_string());
        }
    }
    if let Some(rest) = start.strip_prefix("SIP/") {
        let mut it = rest.splitn(3, ' ');
        let version = it.next().unwrap_or_default();
        let code = it.next().unwrap_or_default();
        let reason = it.next().unwrap_or_default().trim().to_string();
        let status: u16 = code
            .parse()
            .ok()
            .filter(|c| (100..=699).contains(c) && code.len() == 3)
            .ok_or_else(|| ParseError::drop(format!("bad status code {code:?}")))?;
        if version != "2.0" {
            return Err(ParseError::drop("response with an unsupported SIP version"));
        }
        if line_error.is_some() {
            return Err(ParseError::drop("malformed response header"));
        }
        return Ok(Head::Response(RawResponse {
            status,
            reason,
            headers,
            body: Vec::new(),
        }));
    }
    let parts: Vec<&str> = start.split_whitespace().collect();
    let Some(&method) = parts.first() else {
        return Err(ParseError::drop("empty start line"));
    };
    if !is_token(method) {
        return Err(ParseError::drop(format!("bad method {method:.40}")));
    }
    let (uri, version) = match parts.as_slice() {
        [_, uri, version] => (uri.to_string(), version.to_string()),
        _ => {
            line_error = Some("malformed Request-Line".into());
            (String::new(), String::new())
        }
    };
    Ok(Head::Request(RawRequest {
        method: Method::from_token(method),
        uri,
        version,
        headers,
        body: Vec::new(),
        line_error,
    }))
}

/// Builds a best-effort request for addressing an error response, or a drop when even the
/// top Via is unusable.
fn reply_error(h: RawRequest, status: u16, reason: &str) -> ParseError {
    // The Vias of a broken request may be broken too: read them leniently, since all we
    // need is where to send the error (RFC 3261 §18.2.2).
    let vias: Vec<Via> = h
        .headers
        .all("Via")
        .filter_map(Via::parse_lenient)
        .collect();
    if vias.is_empty() {
        return ParseError::drop(format!("{reason} (and no usable Via to answer)"));
    }
    let from = h.headers.get("From").and_then(|v| NameAddr::parse(v).ok());
    let to = h.headers.get("To").and_then(|v| NameAddr::parse(v).ok());
    let placeholder = || NameAddr {
        display_name: None,
        uri: Uri::parse("sip:invalid").expect("constant URI parses"),
        params: Vec::new(),
    };
    let cseq = h
        .headers
        .get("CSeq")
        .and_then(|v| CSeq::parse(v).ok())
        .unwrap_or(CSeq {
            seq: 0,
            method: h.method.clone(),
        });
    let head = Request {
        method: h.method,
        uri: Uri::parse(&h.uri)
            .unwrap_or_else(|_| Uri::parse("sip:invalid").expect("constant URI parses")),
        vias,
        call_id: h.headers.get("Call-ID").unwrap_or_default().to_string(),
        cseq,
        from: from.unwrap_or_else(placeholder),
        to: to.unwrap_or_else(placeholder),
        headers: h.headers,
        body: Vec::new(),
    };
    ParseError {
        reply: Some(Reply {
            status,
            head: Box::new(head),
        }),
        reason: sanitize_reason(reason),
    }
}

fn validate_request(h: RawRequest) -> Result<Request, ParseError> {
    if h.headers.count("Via") == 0 {
        return Err(ParseError::drop("request without Via"));
    }
    if let Some(e) = h.line_error.clone() {
        return Err(reply_error(h, 400, &e));
    }
    if h.version != "SIP/2.0" {
        if h.version.len() > 4 && h.version.as_bytes()[..4].eq_ignore_ascii_case(b"SIP/") {
            return Err(reply_error(h, 505, "Version Not Supported"));
        }
        return Err(reply_error(h, 400, "Malformed SIP-Version"));
    }
    if let Err(e) = h
        .headers
        .all("Via")
        .map(Via::parse)
        .collect::<Result<Vec<_>, _>>()
    {
        return Err(reply_error(h, 400, &format!("Malformed Via: {e}")));
    }
    for name in SINGLE_MANDATORY {
        match h.headers.count(name) {
            0 => return Err(reply_error(h, 400, &format!("Missing {name} header"))),
            1 => {}
            _ => return Err(reply_error(h, 400, &format!("Multiple {name} headers"))),
        }
    }
    if h.headers.count("Max-Forwards") > 1 {
        return Err(reply_error(h, 400, "Multiple Max-Forwards headers"));
    }
    if let Some(mf) = h.headers.get("Max-Forwards")
        && mf.parse::<u8>().is_err()
    {
        return Err(reply_error(h, 400, "Invalid Max-Forwards"));
    }
    let cseq = match CSeq::parse(h.headers.get("CSeq").unwrap_or_default()) {
        Ok(c) => c,
        Err(e) => return Err(reply_error(h, 400, &format!("Invalid CSeq: {e}"))),
    };
    if cseq.method != h.method {
        return Err(reply_error(
            h,
            400,
            "CSeq method does not match the request method",
        ));
    }
    let from = match NameAddr::parse(h.headers.get("From").unwrap_or_default()) {
        Ok(f) => f,
        Err(e) => return Err(reply_error(h, 400, &format!("Malformed From: {e}"))),
    };
    let to = match NameAddr::parse(h.headers.get("To").unwrap_or_default()) {
        Ok(t) => t,
        Err(e) => return Err(reply_error(h, 400, &format!("Malformed To: {e}"))),
    };
    let bad_contact = h
        .headers
        .all("Contact")
        .filter(|c| *c != "*")
        .find_map(|c| NameAddr::parse(c).err());
    if let Some(e) = bad_contact {
        return Err(reply_error(h, 400, &format!("Malformed Contact: {e}")));
    }
    if h.uri.starts_with('<') {
        return Err(reply_error(
            h,
            400,
            "Request-URI must not be enclosed in <>",
        ));
    }
    let uri = match Uri::parse(&h.uri) {
        Ok(u) => u,
        Err(e) => return Err(reply_error(h, 400, &format!("Malformed Request-URI: {e}"))),
    };
    if uri.headers.is_some() && matches!(uri.scheme, Scheme::Sip | Scheme::Sips) {
        return Err(reply_error(h, 400, "Request-URI must not contain headers"));
    }
    let call_id = h.headers.get("Call-ID").unwrap_or_default().to_string();
    if call_id.is_empty() || call_id.chars().any(char::is_whitespace) {
        return Err(reply_error(h, 400, "Invalid Call-ID"));
    }
    let vias = h
        .headers
        .all("Via")
        .map(Via::parse)
        .collect::<Result<Vec<_>, _>>()
        .expect("Via values were validated above");
    Ok(Request {
        method: h.method,
        uri,
        headers: h.headers,
        body: h.body,
        vias,
        call_id,
        cseq,
        from,
        to,
    })
}

fn validate_response(r: RawResponse) -> Result<Response, ParseError> {
    let vias = r
        .headers
        .all("Via")
        .map(Via::parse)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ParseError::drop(format!("response with a malformed Via: {e}")))?;
    if vias.is_empty() {
        return Err(ParseError::drop("response without Via"));
    }
    for name in SINGLE_MANDATORY {
        if r.headers.count(name) != 1 {
            return Err(ParseError::drop(format!(
                "response without exactly one {name}"
            )));
        }
    }
    let cseq = CSeq::parse(r.headers.get("CSeq").unwrap_or_default()).map_err(ParseError::drop)?;
    let from =
        NameAddr::parse(r.headers.get("From").unwrap_or_default()).map_err(ParseError::drop)?;
    let to = NameAddr::parse(r.headers.get("To").unwrap_or_default()).map_err(ParseError::drop)?;
    Ok(Response {
        status: r.status,
        reason: r.reason,
        call_id: r.headers.get("Call-ID").unwrap_or_default().to_string(),
        headers: r.headers,
        body: r.body,
        vias,
        cseq,
        from,
        to,
    })
}

/// Builds an outgoing request (BYE, our own requests) with the headers given in order.
pub fn build_request(method: Method, uri: Uri, headers: Headers, body: Vec<u8>) -> Request {
    let vias = headers
        .all("Via")
        .filter_map(|v| Via::parse(v).ok())
        .collect();
    let call_id = headers.get("Call-ID").unwrap_or_default().to_string();
    let cseq = headers
        .get("CSeq")
        .and_then(|v| CSeq::parse(v).ok())
        .unwrap_or(CSeq {
            seq: 1,
            method: method.clone(),
        });
    let placeholder = || NameAddr {
        display_name: None,
        uri: uri.clone(),
        params: Vec::new(),
    };
    let from = headers
        .get("From")
        .and_then(|v| NameAddr::parse(v).ok())
        .unwrap_or_else(placeholder);
    let to = headers
        .get("To")
        .and_then(|v| NameAddr::parse(v).ok())
        .unwrap_or_else(placeholder);
    Request {
        method,
        uri,
        headers,
        body,
        vias,
        call_id,
        cseq,
        from,
        to,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(text: &str) -> Request {
        match parse(text.as_bytes()) {
            Ok(Message::Request(r)) => r,
            other => panic!("expected a request, got {other:?}"),
        }
    }

    fn rejected(text: &str) -> (u16, String) {
        match parse(text.as_bytes()) {
            Err(ParseError {
                reply: Some(r),
                reason,
            }) => (r.status, reason),
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    const INVITE: &str = "INVITE sip:1234567@127.0.0.1:5060 SIP/2.0\r\n\
        Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1;rport\r\n\
        Max-Forwards: 70\r\n\
        From: \"Alice\" <sip:alice@127.0.0.1:5070>;tag=a1\r\n\
        To: <sip:1234567@127.0.0.1:5060>\r\n\
        Call-ID: c1@127.0.0.1\r\n\
        CSeq: 1 INVITE\r\n\
        Contact: <sip:alice@127.0.0.1:5070>\r\n\
        Content-Type: application/sdp\r\n\
        Content-Length: 4\r\n\
        \r\n\
        v=0\n";

    #[test]
    fn parses_a_plain_invite() {
        let r = req(INVITE);
        assert_eq!(r.method, Method::Invite);
        assert_eq!(r.uri.user.as_deref(), Some("1234567"));
        assert_eq!(r.uri.port, Some(5060));
        assert_eq!(r.call_id, "c1@127.0.0.1");
        assert_eq!(
            r.cseq,
            CSeq {
                seq: 1,
                method: Method::Invite
            }
        );
        assert_eq!(r.from.tag(), Some("a1"));
        assert_eq!(r.from.display_name.as_deref(), Some("Alice"));
        assert_eq!(r.to.tag(), None);
        assert_eq!(r.top_via().rfc3261_branch(), Some("z9hG4bK-1"));
        assert_eq!(r.top_via().param("rport"), Some(None));
        assert_eq!(r.body, b"v=0\n");
    }

    #[test]
    fn all_compact_invite_is_normalised() {
        let text = "INVITE sip:1234567@127.0.0.1 SIP/2.0\r\n\
            v: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-c\r\n\
            f: <sip:alice@127.0.0.1>;tag=a\r\n\
            t: <sip:1234567@127.0.0.1>\r\n\
            i: compact@127.0.0.1\r\n\
            CSeq: 7 INVITE\r\n\
            m: <sip:alice@127.0.0.1:5070>\r\n\
            k: timer\r\n\
            s: hello\r\n\
            e: identity\r\n\
            c: application/sdp\r\n\
            l: 3\r\n\
            \r\n\
            v=0";
        let r = req(text);
        assert_eq!(r.call_id, "compact@127.0.0.1");
        assert_eq!(r.from.tag(), Some("a"));
        assert_eq!(r.header("Contact"), Some("<sip:alice@127.0.0.1:5070>"));
        assert_eq!(r.header("Supported"), Some("timer"));
        assert_eq!(r.header("Subject"), Some("hello"));
        assert_eq!(r.header("Content-Encoding"), Some("identity"));
        assert_eq!(r.content_type().as_deref(), Some("application/sdp"));
        assert_eq!(r.body, b"v=0");
        assert_eq!(r.top_via().host, "127.0.0.1");
    }

    #[test]
    fn folded_and_spaced_headers() {
        let text = "OPTIONS sip:u@h SIP/2.0\r\n\
            Via  : SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw\r\n\
            TO :\r\n sip:u@h ;   tag    = 1918181833n\r\n\
            from   : \"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8\r\n\
            cseq: 0009\r\n  OPTIONS\r\n\
            Call-ID: x@y\r\n\
            \r\n";
        let r = req(text);
        assert_eq!(r.top_via().transport, "UDP");
        assert_eq!(r.top_via().host, "192.0.2.2");
        assert_eq!(r.to.tag(), Some("1918181833n"));
        assert_eq!(r.from.tag(), Some("98asjd8"));
        assert_eq!(r.from.display_name.as_deref(), Some("J Rosenberg \\\""));
        assert_eq!(r.cseq.seq, 9);
    }

    #[test]
    fn uris() {
        let u = Uri::parse("sip:user;par=u%40example.net@example.com").unwrap();
        assert_eq!(u.user.as_deref(), Some("user;par=u%40example.net"));
        assert_eq!(u.host, "example.com");
        let u = Uri::parse("sip:[2001:db8::10]:5070").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("[2001:db8::10]", Some(5070)));
        let u = Uri::parse("sip:[2001:db8::10:5070]").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("[2001:db8::10:5070]", None));
        assert!(Uri::parse("sip:2001:db8::10").is_err());
        let u = Uri::parse("sip:%61lice@example.com;transport=TCP").unwrap();
        assert_eq!(u.user_unescaped().as_deref(), Some("alice"));
        assert_eq!(u.param("transport"), Some(Some("TCP")));
        let u = Uri::parse("tel:+15551234;phone-context=example.com").unwrap();
        assert_eq!(
            (u.scheme, u.user.as_deref()),
            (Scheme::Tel, Some("+15551234"))
        );
        let u = Uri::parse("isbn:2983792873").unwrap();
        assert_eq!(u.scheme, Scheme::Other("isbn".into()));
        assert!(Uri::parse("nocolon").is_err());
        assert!(Uri::parse("sip:a b@c").is_err());
    }

    #[test]
    fn missing_and_duplicate_mandatory_headers_get_400_with_the_name() {
        let no_callid = INVITE.replace("Call-ID: c1@127.0.0.1\r\n", "");
        assert_eq!(rejected(&no_callid), (400, "Missing Call-ID header".into()));
        let two_to = INVITE.replace("To:", "To: <sip:x@y>\r\nTo:");
        assert_eq!(rejected(&two_to), (400, "Multiple To headers".into()));
        let bad_cseq = INVITE.replace("CSeq: 1 INVITE", "CSeq: abc INVITE");
        assert_eq!(rejected(&bad_cseq).0, 400);
        let mismatch = INVITE.replace("CSeq: 1 INVITE", "CSeq: 1 OPTIONS");
        assert_eq!(
            rejected(&mismatch),
            (400, "CSeq method does not match the request method".into())
        );
    }

    #[test]
    fn content_length_rules() {
        let too_long = INVITE.replace("Content-Length: 4", "Content-Length: 40");
        assert_eq!(rejected(&too_long).0, 400);
        let negative = INVITE.replace("Content-Length: 4", "Content-Length: -4");
        assert_eq!(rejected(&negative).0, 400);
        let huge = INVITE.replace("Content-Length: 4", "Content-Length: 70000");
        assert_eq!(rejected(&huge).0, 513);
        let shorter = INVITE.replace("Content-Length: 4", "Content-Length: 2");
        assert_eq!(req(&shorter).body, b"v=");
        let absent = INVITE.replace("Content-Length: 4\r\n", "");
        assert_eq!(req(&absent).body, b"v=0\n");
    }

    #[test]
    fn version_and_unparseable_input() {
        let v7 = INVITE.replace("SIP/2.0\r\nVia", "SIP/7.0\r\nVia");
        assert_eq!(rejected(&v7).0, 505);
        assert!(matches!(
            parse(b"\x00\x01garbage"),
            Err(ParseError { reply: None, .. })
        ));
        assert!(matches!(parse(b""), Err(ParseError { reply: None, .. })));
        let no_via = INVITE.replace(
            "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1;rport\r\n",
            "",
        );
        assert!(matches!(
            parse(no_via.as_bytes()),
            Err(ParseError { reply: None, .. })
        ));
    }

    #[test]
    fn response_round_trip() {
        let r = req(INVITE);
        let resp = Response::to(&r, 200, "OK", Some("srv1"))
            .with_header("Contact", "<sip:127.0.0.1:5060>")
            .with_body("application/sdp", b"v=0\r\n".to_vec());
        let bytes = resp.to_bytes();
        let Message::Response(back) = parse(&bytes).unwrap() else {
            panic!("not a response")
        };
        assert_eq!(back.status, 200);
        assert_eq!(back.to_tag(), Some("srv1"));
        assert_eq!(back.from.tag(), Some("a1"));
        assert_eq!(back.body, b"v=0\r\n");
        assert_eq!(back.vias, r.vias);
    }

    #[test]
    fn stream_framing() {
        let msg = INVITE.as_bytes();
        assert_eq!(frame_stream(&msg[..msg.len() - 1]).unwrap(), None);
        assert_eq!(frame_stream(msg).unwrap(), Some(msg.len()));
        let mut two = msg.to_vec();
        two.extend_from_slice(msg);
        assert_eq!(frame_stream(&two).unwrap(), Some(msg.len()));
        assert!(
            frame_stream(b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 1\r\nl: 2\r\n\r\n").is_err()
        );
        assert_eq!(leading_crlf(b"\r\n\r\nINVITE"), 4);
    }

    #[test]
    fn list_headers_split_outside_quotes() {
        let text = INVITE.replace(
            "Contact: <sip:alice@127.0.0.1:5070>",
            "Contact: \"a, b\" <sip:a@h>, <sip:b@h>\r\nVia: SIP/2.0/TCP h2;branch=z9hG4bKx, SIP/2.0/UDP h3",
        );
        let r = req(&text);
        assert_eq!(r.headers.count("Contact"), 2);
        assert_eq!(r.vias.len(), 3);
        assert_eq!(r.vias[2].host, "h3");
    }

    /// Issue 7: hostile requests that still have a readable Via get a 400 whose reason names
    /// the problem.
    #[test]
    fn hostile_requests_get_400_with_a_reason() {
        let cases: Vec<(String, &str)> = vec![
            (
                INVITE.replace("sip:alice@", "sip:al\0ice@"),
                "Malformed From",
            ),
            (
                INVITE.replace(
                    "Max-Forwards: 70\r\n",
                    &"X-Flood: 1\r\n".repeat(MAX_HEADERS + 10),
                ),
                "too many header fields",
            ),
            (
                INVITE.replace(
                    "Max-Forwards: 70",
                    &format!("Subject: a{}", "\r\n x".repeat(MAX_LINE / 2 + 10)),
                ),
                "header line too long",
            ),
            (
                INVITE.replace(
                    "Max-Forwards: 70",
                    &format!("Subject: {}", "y".repeat(MAX_LINE + 1)),
                ),
                "header line too long",
            ),
            (
                INVITE.replace("CSeq: 1 INVITE", "CSeq: 2147483648 INVITE"),
                "Invalid CSeq",
            ),
            (
                INVITE.replace("Content-Length: 4", "Content-Length: 400"),
                "exceeds",
            ),
        ];
        for (text, want) in &cases[1..] {
            let (status, reason) = rejected(text);
            assert_eq!(status, 400, "{want}");
            assert!(reason.contains(want), "{reason:?} lacks {want:?}");
        }
        assert_eq!(rejected(&cases[0].0).0, 400);
        assert!(rejected(&cases[0].0).1.contains(cases[0].1));
        // Invalid UTF-8 in a header value: answered (400), not dropped.
        let mut bytes = INVITE
            .replace("Max-Forwards: 70", "Subject: caf#")
            .into_bytes();
        let at = bytes.iter().position(|b| *b == b'#').unwrap();
        bytes[at] = 0xe9;
        match parse(&bytes) {
            Err(ParseError {
                reply: Some(r),
                reason,
            }) => {
                assert_eq!(r.status, 400);
                assert_eq!(reason, "invalid UTF-8 in message header");
            }
            other => panic!("{other:?}"),
        }
        // A multi-byte character across the branch cookie's end (found by the fuzzer).
        let odd = INVITE.replace("branch=z9hG4bK-1", "branch=z9hG4b\u{685}K-1");
        assert_eq!(req(&odd).top_via().rfc3261_branch(), None);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = parse(&bytes);
            let _ = frame_stream(&bytes);
        }

        #[test]
        fn mutated_invites_never_panic(pos in 0usize..400, byte in proptest::num::u8::ANY) {
            let mut b = INVITE.as_bytes().to_vec();
            let p = pos % b.len();
            b[p] = byte;
            let _ = parse(&b);
        }
    }
}
