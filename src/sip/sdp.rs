//! SDP offer/answer for a G.711 user agent server: RFC 8866 syntax, RFC 3264 negotiation.
//!
//! This module owns everything pinbridge understands in, and writes as, a session
//! description: a small tolerant parser for the few lines that matter to us (`v=`, `c=`,
//! `m=` and the attributes `rtpmap`, `ptime`, `sendrecv`/`sendonly`/`recvonly`/`inactive`),
//! the answerer's rules (which stream, which codec, which direction), and the SDP text we
//! send. It is pure: bytes in, a [`Negotiated`] and SDP text out. The dialog layer decides
//! when to call it (an INVITE, re-INVITE or UPDATE with a body → [`answer`]; an INVITE
//! without one → [`offer`] in the 200 OK, then [`accept_answer`] on the ACK) and maps an
//! [`SdpError`] to a response with [`SdpError::sip_status`] and [`SdpError::warning`].
//!
//! The parser is hand-written because telephony peers are sloppy in ways full SDP crates
//! reject: bare LF line ends, trailing blanks, vendor attributes, attributes in odd places.
//! We follow Postel: any line or attribute we do not use is ignored, only the `v=0` line and
//! the structure of `m=` lines are required, and no input makes it panic (a proptest holds
//! us to that).
//!
//! What we speak: PCMU and PCMA (RFC 3551 §4.5.14), on their static payload types or on any
//! dynamic type the peer maps to them by name, plus `telephone-event/8000` (RFC 4733) on the
//! peer's payload type. We always send 20 ms frames and say so with `a=ptime:20`.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};

use crate::media::{Codec, Direction, PTIME, PayloadType};

/// The payload type we put `telephone-event/8000` on in our own offers. Any dynamic number
/// would do (RFC 3551 §3: 96–127); 101 is what most phones use.
pub const OFFER_TELEPHONE_EVENT: PayloadType = PayloadType(101);

/// Codecs we speak, in the order we list them in our own offers.
const OUR_CODECS: [Codec; 2] = [Codec::Pcmu, Codec::Pcma];

/// RFC 3551 §4.5.14: both G.711 laws run at 8000 Hz.
const G711_CLOCK_RATE: u32 = 8000;

/// RFC 4733 §7.1.1: the MIME subtype of named telephone events. We only take the 8 kHz
/// clock, the one that matches the G.711 stream it rides along.
const TELEPHONE_EVENT: &str = "telephone-event";

/// Events we accept, for `a=fmtp` (RFC 4733 §3.2: 0–9, `*`, `#`, A–D are 0–15; 16 is flash).
const TELEPHONE_EVENTS: &str = "0-16";

/// Longest piece of peer text quoted in an error message.
const EXCERPT_CHARS: usize = 40;

/// Our side of the media session: where we receive RTP and how we name the session in `o=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalMedia {
    /// The address we receive RTP on, written in `o=` and `c=` (`IN IP4` or `IN IP6`).
    pub addr: IpAddr,
    /// Our RTP port.
    pub port: u16,
    /// `o=` sess-id: stays the same for the whole dialog (RFC 8866 §5.2).
    pub session_id: u64,
    /// `o=` sess-version: the caller increases it each time our SDP changes (RFC 3264 §8).
    pub session_version: u64,
}

/// What offer/answer agreed on for the one audio stream we use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// The G.711 law both sides speak.
    pub codec: Codec,
    /// The payload type that carries `codec` on the wire, in both directions. Equal to
    /// `codec.payload_type()` unless the peer mapped G.711 onto a dynamic payload type with
    /// `a=rtpmap` (we then answer with the peer's number, RFC 3264 §6.1).
    pub payload_type: PayloadType,
    /// The payload type the peer uses for `telephone-event/8000`, when both sides have it.
    pub telephone_event: Option<PayloadType>,
    /// Where to send RTP; `None` when the peer put itself on hold with an unspecified
    /// connection address (`c=IN IP4 0.0.0.0`, RFC 3264 §8.4; `::` likewise).
    pub remote: Option<SocketAddr>,
    /// *Our* direction after negotiation: whether we may send and should expect to receive.
    pub direction: Direction,
    /// The peer's `a=ptime` in milliseconds, if it gave one. We always send 20 ms.
    pub ptime: Option<u32>,
}

/// Our answer to an offer: what was agreed, and the SDP body to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// What the answer commits us to.
    pub negotiated: Negotiated,
    /// The answer SDP (`application/sdp`), CRLF line ends.
    pub sdp: String,
}

/// Why a session description could not be used. Messages quote at most a short, sanitised
/// excerpt of the peer's text, so they are safe in a reason phrase or a Warning header.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// Not SDP, or broken where we cannot guess: no `v=0`, an `m=` line without port,
    /// transport or formats, a missing or unreadable `c=` for the audio stream, or an answer
    /// that does not match our offer's streams.
    #[error("malformed SDP: {0}")]
    Malformed(String),
    /// No audio stream with a non-zero port: none offered, all rejected, or the peer's
    /// answer rejected our audio stream.
    #[error("no usable audio stream")]
    NoAudio,
    /// Audio is offered only over transports we do not speak (we speak RTP/AVP and accept
    /// RTP/AVPF); the field names the first one seen, e.g. `RTP/SAVP`.
    #[error("unsupported audio transport {0}; only RTP/AVP")]
    UnsupportedTransport(String),
    /// The audio stream's connection address is valid SDP but not something we can send to,
    /// e.g. a host name (RFC 8866 §5.7 allows one) or an unknown address type.
    #[error("unsupported connection address: {0}")]
    UnsupportedAddress(String),
    /// Audio was offered, but with no codec we speak. `offered` lists the encoding names of
    /// the peer's formats (telephone-event left out) in its order.
    #[error("no common codec: offered {}", offered_list(.offered))]
    NoCommonCodec {
        /// The peer's encodings, e.g. `["G729", "G722"]`.
        offered: Vec<String>,
    },
}

impl SdpError {
    /// The SIP final response for an offer that fails like this: 400 Bad Request for SDP we
    /// cannot read (RFC 3261 §21.4.1), 488 Not Acceptable Here for SDP we can read but not
    /// accept (RFC 3261 §21.4.26, RFC 3264 §6).
    pub fn sip_status(&self) -> u16 {
        match self {
            SdpError::Malformed(_) => 400,
            SdpError::NoAudio
            | SdpError::UnsupportedTransport(_)
            | SdpError::UnsupportedAddress(_)
            | SdpError::NoCommonCodec { .. } => 488,
        }
    }

    /// The RFC 3261 §20.43 warn-code that fits best: 302 incompatible transport protocol,
    /// 301 incompatible network address formats, 304 media type not available, 305
    /// incompatible media format, 399 otherwise. Using 399 for everything is also correct.
    pub fn warn_code(&self) -> u16 {
        match self {
            SdpError::Malformed(_) => 399,
            SdpError::NoAudio => 304,
            SdpError::UnsupportedTransport(_) => 302,
            SdpError::UnsupportedAddress(_) => 301,
            SdpError::NoCommonCodec { .. } => 305,
        }
    }

    /// Text for `Warning: 399 <host> "<text>"`: printable ASCII without `"` or `\`, so it
    /// goes inside the quoted-string as is (RFC 3261 §20.43, §25.1).
    pub fn warning(&self) -> String {
        self.to_string().chars().map(quotable).collect()
    }
}

/// Answers an offer (from an INVITE, re-INVITE or UPDATE) following RFC 3264 §6.
///
/// The answer has one `m=` line per offered stream, in order. We take the first audio stream
/// that has a non-zero port, an RTP/AVP(F) transport and a G.711 codec, choose the first
/// G.711 format in the peer's order, echo its telephone-event payload type if it has one,
/// and reject every other stream with port 0 and the offer's format list.
pub fn answer(offer: &[u8], local: &LocalMedia) -> Result<Answer, SdpError> {
    let text = String::from_utf8_lossy(offer);
    let offer = SessionDescription::parse(&text)?;

    let mut chosen = None;
    let mut offered = Vec::new();
    let mut saw_rtp_audio = false;
    let mut unsupported_transport = None;
    for (index, media) in offer.media.iter().enumerate() {
        // RFC 3264 §6: a stream offered with port 0 is already rejected; we answer it in kind.
        if !media.is_audio() || media.port == 0 {
            continue;
        }
        if !media.is_rtp_avp() {
            unsupported_transport.get_or_insert(media.proto);
            continue;
        }
        saw_rtp_audio = true;
        if let Some((codec, payload_type)) = media.first_g711() {
            chosen = Some((index, codec, payload_type));
            break;
        }
        media.push_format_names(&mut offered);
    }
    let Some((index, codec, payload_type)) = chosen else {
        return Err(if saw_rtp_audio {
            SdpError::NoCommonCodec { offered }
        } else if let Some(proto) = unsupported_transport {
            SdpError::UnsupportedTransport(excerpt(proto))
        } else {
            SdpError::NoAudio
        });
    };

    let audio = &offer.media[index];
    let negotiated = negotiate(&offer, audio, codec, payload_type, Direction::SendRecv)?;

    let mut sdp = SdpWriter::default();
    sdp.session(local);
    for (i, media) in offer.media.iter().enumerate() {
        if i == index {
            sdp.audio(
                local.port,
                audio.proto,
                &[(codec, payload_type)],
                negotiated.telephone_event,
                negotiated.direction,
            );
        } else {
            sdp.rejected(media);
        }
    }
    Ok(Answer {
        negotiated,
        sdp: sdp.finish(),
    })
}

/// Our offer, for an INVITE that came without SDP (we offer in the 200 OK, RFC 3261
/// §13.2.1): one RTP/AVP audio stream with PCMU, PCMA and telephone-event on
/// [`OFFER_TELEPHONE_EVENT`], `a=ptime:20` and `direction` (ours).
pub fn offer(local: &LocalMedia, direction: Direction) -> String {
    let codecs = OUR_CODECS.map(|codec| (codec, codec.payload_type()));
    let mut sdp = SdpWriter::default();
    sdp.session(local);
    sdp.audio(
        local.port,
        "RTP/AVP",
        &codecs,
        Some(OFFER_TELEPHONE_EVENT),
        direction,
    );
    sdp.finish()
}

/// Reads the peer's answer (in the ACK, or a PRACK/UPDATE response) to our [`offer`] made
/// with direction `offered`.
///
/// The first `m=` line must be the audio stream we offered (further lines are ignored), with
/// a non-zero port and a G.711 codec; the first G.711 format in the answer is used. Our
/// direction is what we offered narrowed by what the peer answered, so a peer that answers
/// `sendrecv` to our `sendonly` does not make us expect RTP. If the answer renumbers a
/// format (RFC 3264 §6.1 says it SHOULD NOT), [`Negotiated`] carries the answer's number.
///
/// There is no response to an ACK: on error the dialog layer should end the call with BYE,
/// using [`SdpError::warning`] for a Reason or Warning header.
pub fn accept_answer(answer: &[u8], offered: Direction) -> Result<Negotiated, SdpError> {
    let text = String::from_utf8_lossy(answer);
    let answer = SessionDescription::parse(&text)?;

    // RFC 3264 §6: one m= line per offered stream; ours offers exactly one, audio.
    let Some(audio) = answer.media.first() else {
        return Err(SdpError::Malformed(
            "answer has no m= line; our offer had one audio stream".into(),
        ));
    };
    if !audio.is_audio() {
        return Err(SdpError::Malformed(format!(
            "answer's first m= line is {}; our offer's is audio",
            excerpt(audio.media)
        )));
    }
    if audio.port == 0 {
        return Err(SdpError::NoAudio);
    }
    if !audio.is_rtp_avp() {
        return Err(SdpError::UnsupportedTransport(excerpt(audio.proto)));
    }
    let Some((codec, payload_type)) = audio.first_g711() else {
        let mut offered = Vec::new();
        audio.push_format_names(&mut offered);
        return Err(SdpError::NoCommonCodec { offered });
    };
    negotiate(&answer, audio, codec, payload_type, offered)
}

/// The negotiated result for the chosen stream `media`, given that we are willing to do `ours`.
fn negotiate(
    session: &SessionDescription<'_>,
    media: &MediaDescription<'_>,
    codec: Codec,
    payload_type: PayloadType,
    ours: Direction,
) -> Result<Negotiated, SdpError> {
    // RFC 8866 §5.7: a c= line in the media section wins over the session's.
    let ip = match media.connection.or(session.connection) {
        Some(Connection::Ip(ip)) => ip,
        Some(Connection::Unsupported(address)) => {
            return Err(SdpError::UnsupportedAddress(excerpt(address)));
        }
        Some(Connection::Malformed(value)) => {
            return Err(SdpError::Malformed(format!(
                "bad connection line c={}",
                excerpt(value)
            )));
        }
        None => {
            return Err(SdpError::Malformed(
                "no c= line for the audio stream".into(),
            ));
        }
    };
    // RFC 3264 §8.4: an unspecified address (the RFC 2543 way to hold) means the peer does
    // not want RTP; it may still send.
    let peer_holds = ip.is_unspecified();
    // RFC 8866 §6.7: media-level direction overrides session level; sendrecv by default.
    let peer_direction = media.direction.or(session.direction).unwrap_or_default();
    Ok(Negotiated {
        codec,
        payload_type,
        telephone_event: media.telephone_event(),
        remote: (!peer_holds).then(|| SocketAddr::new(ip, media.port)),
        direction: our_direction(ours, peer_direction, peer_holds),
        ptime: media.ptime.or(session.ptime),
    })
}

/// RFC 3264 §6.1: we send only if we want to and the peer receives; we receive only if we
/// want to and the peer sends. `peer` is the direction attribute the peer wrote, which is
/// from its own point of view.
fn our_direction(ours: Direction, peer: Direction, peer_holds: bool) -> Direction {
    let sends = ours.sends() && peer.receives() && !peer_holds;
    let receives = ours.receives() && peer.sends();
    match (sends, receives) {
        (true, true) => Direction::SendRecv,
        (true, false) => Direction::SendOnly,
        (false, true) => Direction::RecvOnly,
        (false, false) => Direction::Inactive,
    }
}

/// The direction attribute name (RFC 8866 §6.7).
fn direction_attribute(direction: Direction) -> &'static str {
    match direction {
        Direction::SendRecv => "sendrecv",
        Direction::SendOnly => "sendonly",
        Direction::RecvOnly => "recvonly",
        Direction::Inactive => "inactive",
    }
}

/// `IP4` or `IP6`, the SDP address type of `addr` (RFC 8866 §5.7).
fn address_type(addr: IpAddr) -> &'static str {
    match addr {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    }
}

/// The encoding names RFC 3551 §6 (table 4) gives the static audio payload types, for error
/// messages about formats offered without `a=rtpmap`.
fn static_encoding_name(payload_type: u8) -> Option<&'static str> {
    Some(match payload_type {
        0 => "PCMU",
        3 => "GSM",
        4 => "G723",
        5 | 6 | 16 | 17 => "DVI4",
        7 => "LPC",
        8 => "PCMA",
        9 => "G722",
        10 | 11 => "L16",
        12 => "QCELP",
        13 => "CN",
        14 => "MPA",
        15 => "G728",
        18 => "G729",
        _ => return None,
    })
}

fn offered_list(offered: &[String]) -> Cow<'_, str> {
    if offered.is_empty() {
        Cow::Borrowed("no audio formats")
    } else {
        Cow::Owned(offered.join(", "))
    }
}

/// `c` if it may appear in a SIP quoted-string unescaped, else `?`.
pub fn quotable(c: char) -> char {
    if c == ' ' || (c.is_ascii_graphic() && c != '"' && c != '\\') {
        c
    } else {
        '?'
    }
}

/// A short, quotable excerpt of peer text for an error message.
fn excerpt(text: &str) -> String {
    let mut out: String = text.chars().take(EXCERPT_CHARS).map(quotable).collect();
    if text.chars().nth(EXCERPT_CHARS).is_some() {
        out.push_str("...");
    }
    out
}

/// The parts of a session description we use. Borrows from the text it was parsed from.
#[derive(Debug, Default)]
struct SessionDescription<'a> {
    /// Session-level `c=`, the default for media sections without their own.
    connection: Option<Connection<'a>>,
    /// Session-level direction attribute, the default for media sections.
    direction: Option<Direction>,
    /// Session-level `a=ptime` (strictly a media attribute; some peers put it here).
    ptime: Option<u32>,
    media: Vec<MediaDescription<'a>>,
}

impl<'a> SessionDescription<'a> {
    /// Parses `text`, tolerating CRLF or LF line ends, blank lines, surrounding blanks and
    /// any line or attribute we do not use. Fails only without `v=0` first or on an `m=`
    /// line we cannot read, since then we cannot build an answer with matching streams.
    fn parse(text: &'a str) -> Result<Self, SdpError> {
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, line)| (i + 1, line.trim()))
            .filter(|(_, line)| !line.is_empty());
        // RFC 8866 §5: the description starts with v=0. This is also how we tell SDP from
        // garbage.
        match lines.next() {
            Some((_, "v=0")) => {}
            Some((number, line)) => {
                return Err(SdpError::Malformed(format!(
                    "line {number}: expected v=0, found {}",
                    excerpt(line)
                )));
            }
            None => return Err(SdpError::Malformed("empty session description".into())),
        }

        let mut session = SessionDescription::default();
        for (number, line) in lines {
            let Some((kind, value)) = line.split_once('=') else {
                continue;
            };
            match kind {
                "m" => {
                    let media = MediaDescription::parse(value).map_err(|problem| {
                        SdpError::Malformed(format!(
                            "line {number}: {problem} in m={}",
                            excerpt(value)
                        ))
                    })?;
                    session.media.push(media);
                }
                "c" => {
                    let connection = Connection::parse(value);
                    // RFC 8866 §5.7 allows several c= lines for layered multicast; the first
                    // is the one we would send to.
                    match session.media.last_mut() {
                        Some(media) => media.connection.get_or_insert(connection),
                        None => session.connection.get_or_insert(connection),
                    };
                }
                "a" => session.attribute(value),
                // o=, s=, t=, b=, i=, k=, ... carry nothing we negotiate on.
                _ => {}
            }
        }
        Ok(session)
    }

    /// Applies one `a=` line to the current media section, or to the session before any.
    fn attribute(&mut self, value: &'a str) {
        let Some(attribute) = Attribute::parse(value) else {
            return;
        };
        match (self.media.last_mut(), attribute) {
            (Some(media), Attribute::Direction(direction)) => {
                media.direction.get_or_insert(direction);
            }
            (Some(media), Attribute::Ptime(ptime)) => {
                media.ptime.get_or_insert(ptime);
            }
            (Some(media), Attribute::Rtpmap(rtpmap)) => media.rtpmaps.push(rtpmap),
            (None, Attribute::Direction(direction)) => {
                self.direction.get_or_insert(direction);
            }
            (None, Attribute::Ptime(ptime)) => {
                self.ptime.get_or_insert(ptime);
            }
            // RFC 8866 §6.6: rtpmap is a media-level attribute; one above the first m= line
            // describes no stream.
            (None, Attribute::Rtpmap(_)) => {}
        }
    }
}

/// One `m=` section (RFC 8866 §5.14) and the attributes we use from it.
#[derive(Debug)]
struct MediaDescription<'a> {
    /// `audio`, `video`, `image`, ...
    media: &'a str,
    port: u16,
    /// `RTP/AVP`, `RTP/SAVP`, `udptl`, ...
    proto: &'a str,
    /// The format list as written; for RTP, payload type numbers in preference order.
    formats: Vec<&'a str>,
    connection: Option<Connection<'a>>,
    direction: Option<Direction>,
    ptime: Option<u32>,
    rtpmaps: Vec<RtpMap<'a>>,
}

impl<'a> MediaDescription<'a> {
    /// Parses the value of an `m=` line: `<media> <port>[/<count>] <proto> <fmt> ...`.
    fn parse(value: &'a str) -> Result<Self, &'static str> {
        let mut fields = value.split_whitespace();
        let media = fields.next().ok_or("no media type")?;
        let port = fields.next().ok_or("no port")?;
        // RFC 8866 §5.14: a port may carry a count of consecutive ports; we use the first.
        let port = port.split_once('/').map_or(port, |(port, _count)| port);
        let port = port.parse().map_err(|_| "bad port")?;
        let proto = fields.next().ok_or("no transport")?;
        let formats: Vec<_> = fields.collect();
        if formats.is_empty() {
            return Err("no formats");
        }
        Ok(MediaDescription {
            media,
            port,
            proto,
            formats,
            connection: None,
            direction: None,
            ptime: None,
            rtpmaps: Vec::new(),
        })
    }

    fn is_audio(&self) -> bool {
        self.media.eq_ignore_ascii_case("audio")
    }

    /// RTP/AVP (RFC 3551), or RTP/AVPF (RFC 4585), which differs from AVP only in RTCP
    /// feedback and timing; answered as offered and without `a=rtcp-fb`, it carries our
    /// plain RTP.
    fn is_rtp_avp(&self) -> bool {
        self.proto.eq_ignore_ascii_case("RTP/AVP") || self.proto.eq_ignore_ascii_case("RTP/AVPF")
    }

    /// The RTP payload types in the format list, in the peer's order; non-numbers skipped.
    fn payload_types(&self) -> impl Iterator<Item = u8> + '_ {
        self.formats
            .iter()
            .filter_map(|format| format.parse::<u8>().ok())
            .filter(|pt| *pt <= 127)
    }

    fn rtpmap(&self, payload_type: u8) -> Option<&RtpMap<'a>> {
        self.rtpmaps
            .iter()
            .find(|map| map.payload_type == payload_type)
    }

    /// The G.711 law a payload type carries: by `a=rtpmap` name when there is one (so a
    /// dynamic type counts), else by the static assignment (RFC 3551 §6).
    fn codec(&self, payload_type: u8) -> Option<Codec> {
        match self.rtpmap(payload_type) {
            Some(map) => OUR_CODECS.into_iter().find(|codec| {
                map.name.eq_ignore_ascii_case(codec.encoding_name())
                    && map.clock_rate == G711_CLOCK_RATE
                    && map.channels == 1
            }),
            None => OUR_CODECS
                .into_iter()
                .find(|codec| codec.payload_type().0 == payload_type),
        }
    }

    /// The first G.711 format in the peer's order: RFC 3264 §6.1 lets the answerer pick, and
    /// we honour the caller's preference.
    fn first_g711(&self) -> Option<(Codec, PayloadType)> {
        self.payload_types()
            .find_map(|pt| self.codec(pt).map(|codec| (codec, PayloadType(pt))))
    }

    /// The payload type of `telephone-event/8000`, if listed. Peers that also list it at
    /// 16 or 48 kHz (for wideband codecs) get the 8 kHz one, which pairs with G.711.
    fn telephone_event(&self) -> Option<PayloadType> {
        self.payload_types()
            .find(|pt| {
                self.rtpmap(*pt).is_some_and(|map| {
                    map.name.eq_ignore_ascii_case(TELEPHONE_EVENT)
                        && map.clock_rate == G711_CLOCK_RATE
                })
            })
            .map(PayloadType)
    }

    /// Appends the encoding names of this section's formats (sanitised, de-duplicated,
    /// telephone-event left out) to `names`, for [`SdpError::NoCommonCodec`].
    fn push_format_names(&self, names: &mut Vec<String>) {
        for format in &self.formats {
            let name = match format.parse::<u8>() {
                Ok(pt) => match (self.rtpmap(pt), static_encoding_name(pt)) {
                    (Some(map), _) => excerpt(map.name),
                    (None, Some(name)) => name.to_string(),
                    (None, None) => excerpt(format),
                },
                Err(_) => excerpt(format),
            };
            if name.eq_ignore_ascii_case(TELEPHONE_EVENT)
                || names.iter().any(|known| known.eq_ignore_ascii_case(&name))
            {
                continue;
            }
            names.push(name);
        }
    }
}

/// A `c=` line (RFC 8866 §5.7), kept unresolved until a chosen stream needs it, so a strange
/// connection line on a stream we reject does not fail the whole offer.
#[derive(Clone, Copy, Debug)]
enum Connection<'a> {
    Ip(IpAddr),
    /// Well-formed, but not an IP literal of a type we know (a host name, say).
    Unsupported(&'a str),
    /// Missing fields.
    Malformed(&'a str),
}

impl<'a> Connection<'a> {
    /// Parses `IN IP4 <address>[/<ttl>[/<count>]]` or `IN IP6 <address>[/<count>]`.
    fn parse(value: &'a str) -> Self {
        let mut fields = value.split_whitespace();
        let (Some(net_type), Some(address_type), Some(address)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Connection::Malformed(value);
        };
        // Multicast addresses carry /ttl and /count suffixes; the address comes first.
        let address = address
            .split_once('/')
            .map_or(address, |(address, _)| address);
        if !net_type.eq_ignore_ascii_case("IN") {
            return Connection::Unsupported(value);
        }
        let ip = match address.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => return Connection::Unsupported(address),
        };
        if !address_type.eq_ignore_ascii_case(self::address_type(ip)) {
            return Connection::Unsupported(value);
        }
        Connection::Ip(ip)
    }
}

/// The attributes we use (RFC 8866 §6); every other attribute is ignored.
#[derive(Debug)]
enum Attribute<'a> {
    Direction(Direction),
    Ptime(u32),
    Rtpmap(RtpMap<'a>),
}

impl<'a> Attribute<'a> {
    /// Parses the value of an `a=` line; `None` for attributes we ignore or cannot read.
    fn parse(value: &'a str) -> Option<Self> {
        let Some((name, argument)) = value.split_once(':') else {
            let direction = match value.trim() {
                name if name.eq_ignore_ascii_case("sendrecv") => Direction::SendRecv,
                name if name.eq_ignore_ascii_case("sendonly") => Direction::SendOnly,
                name if name.eq_ignore_ascii_case("recvonly") => Direction::RecvOnly,
                name if name.eq_ignore_ascii_case("inactive") => Direction::Inactive,
                _ => return None,
            };
            return Some(Attribute::Direction(direction));
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("rtpmap") {
            RtpMap::parse(argument).map(Attribute::Rtpmap)
        } else if name.eq_ignore_ascii_case("ptime") {
            let ptime = argument.trim().parse().ok().filter(|ptime| *ptime > 0)?;
            Some(Attribute::Ptime(ptime))
        } else {
            None
        }
    }
}

/// `a=rtpmap:<payload type> <encoding name>/<clock rate>[/<channels>]` (RFC 8866 §6.6).
#[derive(Clone, Copy, Debug)]
struct RtpMap<'a> {
    payload_type: u8,
    name: &'a str,
    clock_rate: u32,
    channels: u32,
}

impl<'a> RtpMap<'a> {
    fn parse(argument: &'a str) -> Option<Self> {
        let (payload_type, encoding) = argument.trim().split_once(char::is_whitespace)?;
        let payload_type = payload_type.parse().ok().filter(|pt| *pt <= 127)?;
        let mut parts = encoding.trim().split('/');
        let name = parts.next().filter(|name| !name.is_empty())?;
        let clock_rate = parts.next()?.trim().parse().ok()?;
        // RFC 8866 §6.6: no channel count means one channel.
        let channels = match parts.next() {
            Some(channels) => channels.trim().parse().ok()?,
            None => 1,
        };
        Some(RtpMap {
            payload_type,
            name,
            clock_rate,
            channels,
        })
    }
}

/// Builds SDP text with CRLF line ends (RFC 8866 §5).
#[derive(Default)]
struct SdpWriter(String);

impl SdpWriter {
    fn line(&mut self, args: fmt::Arguments<'_>) {
        self.0
            .write_fmt(args)
            .expect("formatting into a String cannot fail");
        self.0.push_str("\r\n");
    }

    /// The session section, in RFC 8866 §5 order: v, o, s, c, t.
    fn session(&mut self, local: &LocalMedia) {
        let address_type = address_type(local.addr);
        self.line(format_args!("v=0"));
        self.line(format_args!(
            "o=pinbridge {} {} IN {address_type} {}",
            local.session_id, local.session_version, local.addr
        ));
        self.line(format_args!("s=pinbridge"));
        self.line(format_args!("c=IN {address_type} {}", local.addr));
        self.line(format_args!("t=0 0"));
    }

    /// Our audio stream: `codecs` then telephone-event, each with its rtpmap (written even
    /// for static types; harmless, and some peers look only at rtpmap), ptime, direction.
    fn audio(
        &mut self,
        port: u16,
        proto: &str,
        codecs: &[(Codec, PayloadType)],
        telephone_event: Option<PayloadType>,
        direction: Direction,
    ) {
        let mut formats = String::new();
        for (_, PayloadType(pt)) in codecs {
            write!(formats, " {pt}").expect("formatting into a String cannot fail");
        }
        if let Some(PayloadType(pt)) = telephone_event {
            write!(formats, " {pt}").expect("formatting into a String cannot fail");
        }
        self.line(format_args!("m=audio {port} {proto}{formats}"));
        for (codec, PayloadType(pt)) in codecs.iter().copied() {
            self.line(format_args!(
                "a=rtpmap:{pt} {}/{G711_CLOCK_RATE}",
                codec.encoding_name()
            ));
        }
        if let Some(PayloadType(pt)) = telephone_event {
            self.line(format_args!(
                "a=rtpmap:{pt} {TELEPHONE_EVENT}/{G711_CLOCK_RATE}"
            ));
            self.line(format_args!("a=fmtp:{pt} {TELEPHONE_EVENTS}"));
        }
        self.line(format_args!("a=ptime:{}", PTIME.as_millis()));
        self.line(format_args!("a={}", direction_attribute(direction)));
    }

    /// RFC 3264 §6: a rejected stream is answered with port 0, its media type, transport and
    /// format list as offered, and nothing else.
    fn rejected(&mut self, media: &MediaDescription<'_>) {
        self.line(format_args!(
            "m={} 0 {} {}",
            media.media,
            media.proto,
            media.formats.join(" ")
        ));
    }

    fn finish(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;

    fn local() -> LocalMedia {
        LocalMedia {
            addr: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10)),
            port: 40000,
            session_id: 7,
            session_version: 1,
        }
    }

    fn local6() -> LocalMedia {
        LocalMedia {
            addr: "2001:db8::5".parse().unwrap(),
            ..local()
        }
    }

    fn lines(sdp: &str) -> Vec<&str> {
        assert!(sdp.ends_with("\r\n"), "SDP must end with CRLF: {sdp:?}");
        assert!(
            !sdp.replace("\r\n", "").contains(['\r', '\n']),
            "every line ends with CRLF: {sdp:?}"
        );
        sdp.trim_end_matches("\r\n").split("\r\n").collect()
    }

    fn m_lines(sdp: &str) -> Vec<&str> {
        lines(sdp)
            .into_iter()
            .filter(|line| line.starts_with("m="))
            .collect()
    }

    fn has_line(sdp: &str, wanted: &str) -> bool {
        lines(sdp).contains(&wanted)
    }

    fn answer_ok(offer: &str) -> Answer {
        answer(offer.as_bytes(), &local()).expect("offer should be accepted")
    }

    fn remote(addr: &str) -> Option<SocketAddr> {
        Some(addr.parse().unwrap())
    }

    // SIPp `uac` scenario's SDP with [local_ip], [media_ip] and [media_port] filled in.
    const SIPP_UAC: &str = "v=0\r\n\
        o=user1 53655765 2353687637 IN IP4 127.0.0.1\r\n\
        s=-\r\n\
        c=IN IP4 127.0.0.1\r\n\
        t=0 0\r\n\
        m=audio 6000 RTP/AVP 0\r\n\
        a=rtpmap:0 PCMU/8000\r\n";

    #[test]
    fn sipp_default_offer_gets_a_complete_pcmu_answer() {
        let answer = answer_ok(SIPP_UAC);
        assert_eq!(
            answer.sdp,
            "v=0\r\n\
             o=pinbridge 7 1 IN IP4 203.0.113.10\r\n\
             s=pinbridge\r\n\
             c=IN IP4 203.0.113.10\r\n\
             t=0 0\r\n\
             m=audio 40000 RTP/AVP 0\r\n\
             a=rtpmap:0 PCMU/8000\r\n\
             a=ptime:20\r\n\
             a=sendrecv\r\n"
        );
        assert_eq!(
            answer.negotiated,
            Negotiated {
                codec: Codec::Pcmu,
                payload_type: PayloadType(0),
                telephone_event: None,
                remote: remote("127.0.0.1:6000"),
                direction: Direction::SendRecv,
                ptime: None,
            }
        );
    }

    #[test]
    fn sipp_offer_with_telephone_event_on_96_is_echoed_on_96() {
        let offer = "v=0\r\n\
            o=user1 53655765 2353687637 IN IP4 127.0.0.1\r\n\
            s=-\r\n\
            c=IN IP4 127.0.0.1\r\n\
            t=0 0\r\n\
            m=audio 6000 RTP/AVP 0 96\r\n\
            a=rtpmap:0 PCMU/8000\r\n\
            a=rtpmap:96 telephone-event/8000\r\n\
            a=fmtp:96 0-15\r\n";
        let answer = answer_ok(offer);
        assert_eq!(answer.negotiated.telephone_event, Some(PayloadType(96)));
        assert_eq!(m_lines(&answer.sdp), ["m=audio 40000 RTP/AVP 0 96"]);
        assert!(has_line(&answer.sdp, "a=rtpmap:96 telephone-event/8000"));
        assert!(has_line(&answer.sdp, "a=fmtp:96 0-16"));
    }

    #[test]
    fn polycom_offer_prefers_g722_but_gets_pcmu_with_dtmf() {
        let offer = "v=0\r\n\
            o=- 1700000000 1700000000 IN IP4 192.168.1.50\r\n\
            s=Polycom IP Phone\r\n\
            c=IN IP4 192.168.1.50\r\n\
            t=0 0\r\n\
            a=sendrecv\r\n\
            m=audio 2222 RTP/AVP 9 0 8 18 101\r\n\
            a=rtpmap:9 G722/8000\r\n\
            a=rtpmap:0 PCMU/8000\r\n\
            a=rtpmap:8 PCMA/8000\r\n\
            a=rtpmap:18 G729/8000\r\n\
            a=fmtp:18 annexb=no\r\n\
            a=rtpmap:101 telephone-event/8000\r\n\
            a=fmtp:101 0-15\r\n";
        let answer = answer_ok(offer);
        assert_eq!(answer.negotiated.codec, Codec::Pcmu);
        assert_eq!(answer.negotiated.telephone_event, Some(PayloadType(101)));
        assert_eq!(answer.negotiated.remote, remote("192.168.1.50:2222"));
        assert_eq!(m_lines(&answer.sdp), ["m=audio 40000 RTP/AVP 0 101"]);
        assert!(
            !answer.sdp.contains("PCMA"),
            "answer lists only the chosen codec"
        );
        assert!(!answer.sdp.contains("G72"));
    }

    #[test]
    fn asterisk_offer_with_pcma_first_gets_pcma() {
        let offer = "v=0\r\n\
            o=- 1234567890 1234567890 IN IP4 10.0.0.5\r\n\
            s=Asterisk\r\n\
            c=IN IP4 10.0.0.5\r\n\
            t=0 0\r\n\
            m=audio 10000 RTP/AVP 8 0 3 101\r\n\
            a=rtpmap:8 PCMA/8000\r\n\
            a=rtpmap:0 PCMU/8000\r\n\
            a=rtpmap:3 GSM/8000\r\n\
            a=rtpmap:101 telephone-event/8000\r\n\
            a=fmtp:101 0-16\r\n\
            a=ptime:30\r\n\
            a=maxptime:150\r\n\
            a=sendrecv\r\n";
        let answer = answer_ok(offer);
        assert_eq!(answer.negotiated.codec, Codec::Pcma);
        assert_eq!(answer.negotiated.payload_type, PayloadType(8));
        assert_eq!(answer.negotiated.ptime, Some(30));
        assert_eq!(m_lines(&answer.sdp), ["m=audio 40000 RTP/AVP 8 101"]);
        assert!(has_line(&answer.sdp, "a=rtpmap:8 PCMA/8000"));
        assert!(has_line(&answer.sdp, "a=ptime:20"), "we send 20 ms anyway");
    }

    #[test]
    fn linphone_offer_with_telephone_event_at_three_rates_gets_the_8khz_one() {
        let offer = "v=0\r\n\
            o=alice 3456 789 IN IP4 192.168.0.20\r\n\
            s=Talk\r\n\
            c=IN IP4 192.168.0.20\r\n\
            t=0 0\r\n\
            a=rtcp-xr:rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics\r\n\
            m=audio 7078 RTP/AVP 96 97 98 0 8 101 99 100\r\n\
            a=rtpmap:96 opus/48000/2\r\n\
            a=fmtp:96 useinbandfec=1\r\n\
            a=rtpmap:97 speex/16000\r\n\
            a=fmtp:97 vbr=on\r\n\
            a=rtpmap:98 speex/8000\r\n\
            a=fmtp:98 vbr=on\r\n\
            a=rtpmap:101 telephone-event/48000\r\n\
            a=rtpmap:99 telephone-event/16000\r\n\
            a=rtpmap:100 telephone-event/8000\r\n\
            a=rtcp-fb:* trr-int 1000\r\n\
            a=rtcp-fb:* ccm tmmbr\r\n";
        let answer = answer_ok(offer);
        assert_eq!(answer.negotiated.codec, Codec::Pcmu);
        assert_eq!(answer.negotiated.telephone_event, Some(PayloadType(100)));
        assert_eq!(m_lines(&answer.sdp), ["m=audio 40000 RTP/AVP 0 100"]);
    }

    #[test]
    fn baresip_offer_with_bare_lf_line_ends_is_accepted() {
        let offer = "v=0\n\
            o=- 1867541379 2035541123 IN IP4 192.168.1.7\n\
            s=-\n\
            c=IN IP4 192.168.1.7\n\
            t=0 0\n\
            m=audio 10554 RTP/AVP 96 97 0 8 101\n\
            b=AS:64\n\
            a=rtpmap:96 opus/48000/2\n\
            a=fmtp:96 stereo=1;sprop-stereo=1\n\
            a=rtpmap:97 speex/8000\n\
            a=rtpmap:101 telephone-event/8000\n\
            a=fmtp:101 0-15\n\
            a=sendrecv\n\
            a=label:1\n\
            a=rtcp-rsize\n\
            a=ssrc:1419931297 cname:b0d4e6a5@localhost\n";
        let answer = answer_ok(offer);
        assert_eq!(answer.negotiated.codec, Codec::Pcmu);
        assert_eq!(answer.negotiated.telephone_event, Some(PayloadType(101)));
        assert_eq!(answer.negotiated.remote, remote("192.168.1.7:10554"));
        assert_eq!(m_lines(&answer.sdp), ["m=audio 40000 RTP/AVP 0 101"]);
    }

    #[test]
    fn ipv6_offer_is_answered_from_an_ipv6_address() {
        let offer = "v=0\r\n\
            o=- 20518 0 IN IP6 2001:db8::10\r\n\
            s=-\r\n\
            c=IN IP6 2001:db8::10\r\n\
            t=0 0\r\n\
            m=audio 30000 RTP/AVP 0 101\r\n\
            a=rtpmap:0 PCMU/8000\r\n\
            a=rtpmap:101 telephone-event/8000\r\n";
        let answer = answer(offer.as_bytes(), &local6()).unwrap();
        assert_eq!(answer.negotiated.remote, remote("[2001:db8::10]:30000"));
        assert!(has_line(&answer.sdp, "o=pinbridge 7 1 IN IP6 2001:db8::5"));
        assert!(has_line(&answer.sdp, "c=IN IP6 2001:db8::5"));
    }

    #[test]
    fn media_level_connection_wins_over_session_level() {
        let offer = "v=0\r\n\
            o=- 1 1 IN IP4 198.51.100.1\r\n\
            s=-\r\n\
            c=IN IP4 198.51.100.1\r\n\
            t=0 0\r\n\
            m=audio 5004 RTP/AVP 0\r\n\
            c=IN IP4 198.51.100.2\r\n";
        assert_eq!(
            answer_ok(offer).negotiated.remote,
            remote("198.51.100.2:5004")
        );
    }

    fn hold_offer(connection: &str, session_attribute: &str, media_attribute: &str) -> String {
        format!(
            "v=0\r\n\
             o=- 2 3 IN IP4 192.0.2.4\r\n\
             s=-\r\n\
             c=IN IP4 {connection}\r\n\
             t=0 0\r\n\
             {session_attribute}\
             m=audio 4000 RTP/AVP 0 101\r\n\
             a=rtpmap:101 telephone-event/8000\r\n\
             {media_attribute}"
        )
    }

    #[test]
    fn direction_offers_are_answered_per_rfc3264() {
        let cases = [
            ("a=sendrecv\r\n", Direction::SendRecv, "a=sendrecv"),
            ("a=sendonly\r\n", Direction::RecvOnly, "a=recvonly"),
            ("a=recvonly\r\n", Direction::SendOnly, "a=sendonly"),
            ("a=inactive\r\n", Direction::Inactive, "a=inactive"),
        ];
        for (attribute, ours, line) in cases {
            let answer = answer_ok(&hold_offer("192.0.2.4", "", attribute));
            assert_eq!(answer.negotiated.direction, ours, "offer {attribute:?}");
            assert!(has_line(&answer.sdp, line), "offer {attribute:?}");
            assert_eq!(answer.negotiated.remote, remote("192.0.2.4:4000"));
        }
    }

    #[test]
    fn media_level_direction_overrides_session_level() {
        let answer = answer_ok(&hold_offer("192.0.2.4", "a=sendrecv\r\n", "a=sendonly\r\n"));
        assert_eq!(answer.negotiated.direction, Direction::RecvOnly);
        let answer = answer_ok(&hold_offer("192.0.2.4", "a=inactive\r\n", ""));
        assert_eq!(answer.negotiated.direction, Direction::Inactive);
    }

    #[test]
    fn old_style_hold_with_zero_address_is_answered_recvonly_with_no_remote() {
        let answer = answer_ok(&hold_offer("0.0.0.0", "", ""));
        assert_eq!(answer.negotiated.remote, None);
        assert_eq!(answer.negotiated.direction, Direction::RecvOnly);
        assert!(has_line(&answer.sdp, "a=recvonly"));
        assert!(has_line(&answer.sdp, "c=IN IP4 203.0.113.10"));

        let answer = answer_ok(&hold_offer("0.0.0.0", "", "a=inactive\r\n"));
        assert_eq!(answer.negotiated.direction, Direction::Inactive);
        assert!(has_line(&answer.sdp, "a=inactive"));

        let answer = answer_ok(&hold_offer("0.0.0.0", "", "a=recvonly\r\n"));
        assert_eq!(answer.negotiated.direction, Direction::Inactive);
    }

    #[test]
    fn audio_and_video_offer_rejects_the_video_stream_in_place() {
        let offer = "v=0\r\n\
            o=- 3 3 IN IP4 192.0.2.9\r\n\
            s=-\r\n\
            c=IN IP4 192.0.2.9\r\n\
            t=0 0\r\n\
            m=audio 5004 RTP/AVP 0 8 101\r\n\
            a=rtpmap:101 telephone-event/8000\r\n\
            m=video 5006 RTP/AVP 96 34\r\n\
            a=rtpmap:96 H264/90000\r\n\
            a=fmtp:96 profile-level-id=42801F\r\n";
        let answer = answer_ok(offer);
        assert_eq!(
            m_lines(&answer.sdp),
            ["m=audio 40000 RTP/AVP 0 101", "m=video 0 RTP/AVP 96 34"]
        );
        assert!(!answer.sdp.contains("H264"));
    }

    #[test]
    fn video_first_and_t38_after_keep_their_places() {
        let offer = "v=0\r\n\
            o=- 3 3 IN IP4 192.0.2.9\r\n\
            s=-\r\n\
            c=IN IP4 192.0.2.9\r\n\
            t=0 0\r\n\
            m=video 5006 RTP/AVP 31\r\n\
            m=audio 5004 RTP/AVP 8\r\n\
            m=image 5008 udptl t38\r\n\
            a=T38FaxVersion:0\r\n";
        let answer = answer_ok(offer);
        assert_eq!(
            m_lines(&answer.sdp),
            [
                "m=video 0 RTP/AVP 31",
                "m=audio 40000 RTP/AVP 8",
                "m=image 0 udptl t38"
            ]
        );
    }

    #[test]
    fn audio_with_port_zero_is_rejected_and_the_next_audio_stream_is_taken() {
        let offer = "v=0\r\n\
            o=- 3 3 IN IP4 192.0.2.9\r\n\
            s=-\r\n\
            c=IN IP4 192.0.2.9\r\n\
            t=0 0\r\n\
            m=audio 0 RTP/AVP 0\r\n\
            m=audio 5010 RTP/AVP 8 0\r\n\
            m=audio 5012 RTP/AVP 0\r\n";
        let answer = answer_ok(offer);
        assert_eq!(answer.negotiated.codec, Codec::Pcma);
        assert_eq!(answer.negotiated.remote, remote("192.0.2.9:5010"));
        assert_eq!(
            m_lines(&answer.sdp),
            [
                "m=audio 0 RTP/AVP 0",
                "m=audio 40000 RTP/AVP 8",
                "m=audio 0 RTP/AVP 0"
            ]
        );
    }

    #[test]
    fn audio_stream_without_a_common_codec_is_skipped_for_a_later_one() {
        let offer = "v=0\r\n\
            o=- 3 3 IN IP4 192.0.2.9\r\n\
            s=-\r\n\
            c=IN IP4 192.0.2.9\r\n\
            t=0 0\r\n\
            m=audio 5010 RTP/AVP 18\r\n\
            m=audio 5012 RTP/AVP 0\r\n";
        let answer = answer_ok(offer);
        assert_eq!(answer.negotiated.remote, remote("192.0.2.9:5012"));
        assert_eq!(
            m_lines(&answer.sdp),
            ["m=audio 0 RTP/AVP 18", "m=audio 40000 RTP/AVP 0"]
        );
    }

    #[test]
    fn dynamic_payload_type_mapped_to_pcmu_is_answered_on_that_type() {
        let offer = "v=0\r\n\
            o=- 3 3 IN IP4 192.0.2.9\r\n\
            s=-\r\n\
            c=IN IP4 192.0.2.9\r\n\
            t=0 0\r\n\
            m=audio 5010 RTP/AVP 112 113\r\n\
            a=rtpmap:112 pcmu/8000\r\n\
            a=rtpmap:113 Telephone-Event/8000\r\n";
        let answer = answer_ok(offer);
        assert_eq!(answer.negotiated.codec, Codec::Pcmu);
        assert_eq!(answer.negotiated.payload_type, PayloadType(112));
        assert_eq!(answer.negotiated.telephone_event, Some(PayloadType(113)));
        assert_eq!(m_lines(&answer.sdp), ["m=audio 40000 RTP/AVP 112 113"]);
        assert!(has_line(&answer.sdp, "a=rtpmap:112 PCMU/8000"));
    }

    #[test]
    fn static_payload_type_remapped_by_rtpmap_follows_the_rtpmap() {
        let offer = "v=0\r\n\
            o=- 3 3 IN IP4 192.0.2.9\r\n\
            s=-\r\n\
            c=IN IP4 192.0.2.9\r\n\
            t=0 0\r\n\
            m=audio 5010 RTP/AVP 0 8\r\n\
            a=rtpmap:0 PCMA/8000\r\n";
        let answer = answer_ok(offer);
        assert_eq!(answer.negotiated.codec, Codec::Pcma);
        assert_eq!(answer.negotiated.payload_type, PayloadType(0));
    }

    #[test]
    fn offer_with_only_g729_g722_and_opus_is_488_with_the_names() {
        let offer = "v=0\r\n\
            o=- 3 3 IN IP4 192.0.2.9\r\n\
            s=-\r\n\
            c=IN IP4 192.0.2.9\r\n\
            t=0 0\r\n\
            m=audio 5010 RTP/AVP 18 9 111 101\r\n\
            a=rtpmap:111 opus/48000/2\r\n\
            a=rtpmap:101 telephone-event/8000\r\n";
        let error = answer(offer.as_bytes(), &local()).unwrap_err();
        assert_eq!(
            error,
            SdpError::NoCommonCodec {
                offered: vec!["G729".into(), "G722".into(), "opus".into()]
            }
        );
        assert_eq!(error.sip_status(), 488);
        assert_eq!(error.warn_code(), 305);
        assert_eq!(error.warning(), "no common codec: offered G729, G722, opus");
    }

    #[test]
    fn pcmu_at_the_wrong_clock_rate_is_not_pcmu() {
        let offer = "v=0\r\n\
            o=- 3 3 IN IP4 192.0.2.9\r\n\
            s=-\r\n\
            c=IN IP4 192.0.2.9\r\n\
            t=0 0\r\n\
            m=audio 5010 RTP/AVP 96\r\n\
            a=rtpmap:96 PCMU/16000\r\n";
        let error = answer(offer.as_bytes(), &local()).unwrap_err();
        assert!(matches!(error, SdpError::NoCommonCodec { .. }));
    }

    #[test]
    fn video_only_offer_is_488_no_audio() {
        let offer = "v=0\r\n\
            o=- 3 3 IN IP4 192.0.2.9\r\n\
            s=-\r\n\
            c=IN IP4 192.0.2.9\r\n\
            t=0 0\r\n\
            m=video 5006 RTP/AVP 96\r\n";
        let error = answer(offer.as_bytes(), &local()).unwrap_err();
        assert_eq!(error, SdpError::NoAudio);
        assert_eq!(error.sip_status(), 488);
    }

    #[test]
    fn srtp_only_offer_is_488_unsupported_transport() {
        let offer = "v=0\r\n\
            o=- 3 3 IN IP4 192.0.2.9\r\n\
            s=-\r\n\
            c=IN IP4 192.0.2.9\r\n\
            t=0 0\r\n\
            m=audio 5010 RTP/SAVP 0\r\n\
            a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n";
        let error = answer(offer.as_bytes(), &local()).unwrap_err();
        assert_eq!(error, SdpError::UnsupportedTransport("RTP/SAVP".into()));
        assert_eq!(error.sip_status(), 488);
    }

    #[test]
    fn host_name_in_connection_line_is_488() {
        let offer = "v=0\r\n\
            o=- 3 3 IN IP4 192.0.2.9\r\n\
            s=-\r\n\
            c=IN IP4 media.example.com\r\n\
            t=0 0\r\n\
            m=audio 5010 RTP/AVP 0\r\n";
        let error = answer(offer.as_bytes(), &local()).unwrap_err();
        assert_eq!(
            error,
            SdpError::UnsupportedAddress("media.example.com".into())
        );
        assert_eq!(error.sip_status(), 488);
    }

    #[test]
    fn garbage_bytes_are_400() {
        let garbage = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\"\\\r\nm=audio";
        let error = answer(garbage, &local()).unwrap_err();
        assert!(matches!(error, SdpError::Malformed(_)), "{error:?}");
        assert_eq!(error.sip_status(), 400);
        assert!(
            error
                .warning()
                .chars()
                .all(|c| c == ' ' || (c.is_ascii_graphic() && c != '"' && c != '\\')),
            "{:?}",
            error.warning()
        );
        assert!(matches!(answer(b"", &local()), Err(SdpError::Malformed(_))));
    }

    #[test]
    fn missing_connection_line_is_400() {
        let offer = "v=0\r\n\
            o=- 3 3 IN IP4 192.0.2.9\r\n\
            s=-\r\n\
            t=0 0\r\n\
            m=audio 5010 RTP/AVP 0\r\n";
        let error = answer(offer.as_bytes(), &local()).unwrap_err();
        assert_eq!(
            error,
            SdpError::Malformed("no c= line for the audio stream".into())
        );
        assert_eq!(error.sip_status(), 400);
    }

    #[test]
    fn bad_port_is_400_naming_the_line() {
        for (port, problem) in [
            ("abc", "bad port"),
            ("70000", "bad port"),
            ("-1", "bad port"),
        ] {
            let offer = format!(
                "v=0\r\n\
                 o=- 3 3 IN IP4 192.0.2.9\r\n\
                 s=-\r\n\
                 c=IN IP4 192.0.2.9\r\n\
                 t=0 0\r\n\
                 m=audio {port} RTP/AVP 0\r\n"
            );
            let error = answer(offer.as_bytes(), &local()).unwrap_err();
            assert_eq!(
                error,
                SdpError::Malformed(format!("line 6: {problem} in m=audio {port} RTP/AVP 0"))
            );
            assert_eq!(error.sip_status(), 400);
        }
    }

    #[test]
    fn port_with_a_count_uses_the_first_port() {
        let offer = "v=0\r\n\
            o=- 3 3 IN IP4 192.0.2.9\r\n\
            s=-\r\n\
            c=IN IP4 192.0.2.9\r\n\
            t=0 0\r\n\
            m=audio 5010/2 RTP/AVP 0\r\n";
        assert_eq!(answer_ok(offer).negotiated.remote, remote("192.0.2.9:5010"));
    }

    #[test]
    fn unknown_and_odd_lines_are_ignored() {
        let offer = "\r\n v=0 \r\n\
            o=- 3 3 IN IP4 192.0.2.9\r\n\
            x-vendor: something\r\n\
            s=-\r\n\
            z=\r\n\
            c=IN IP4 192.0.2.9\r\n\
            t=0 0\r\n\
            a=rtpmap:0 G729/8000\r\n\
            a=ice-ufrag:abcd\r\n\
            m=audio 5010 RTP/AVPF 0\r\n\
            a=rtpmap:zz nonsense\r\n\
            a=ptime:soon\r\n\
            a=X-nat:0\r\n\
            a=rtcp:5011 IN IP4 192.0.2.9\r\n";
        let answer = answer_ok(offer);
        assert_eq!(answer.negotiated.codec, Codec::Pcmu);
        assert_eq!(answer.negotiated.ptime, None);
        assert_eq!(m_lines(&answer.sdp), ["m=audio 40000 RTP/AVPF 0"]);
    }

    #[test]
    fn warning_text_is_quotable_even_with_hostile_names() {
        let offer = "v=0\r\n\
            o=- 3 3 IN IP4 192.0.2.9\r\n\
            s=-\r\n\
            c=IN IP4 192.0.2.9\r\n\
            t=0 0\r\n\
            m=audio 5010 RTP/AVP 96\r\n\
            a=rtpmap:96 G\"7\\29/8000\r\n";
        let error = answer(offer.as_bytes(), &local()).unwrap_err();
        assert_eq!(error.warning(), "no common codec: offered G?7?29");
    }

    #[test]
    fn our_offer_is_pcmu_pcma_and_telephone_event() {
        let sdp = offer(&local(), Direction::SendRecv);
        assert_eq!(
            sdp,
            "v=0\r\n\
             o=pinbridge 7 1 IN IP4 203.0.113.10\r\n\
             s=pinbridge\r\n\
             c=IN IP4 203.0.113.10\r\n\
             t=0 0\r\n\
             m=audio 40000 RTP/AVP 0 8 101\r\n\
             a=rtpmap:0 PCMU/8000\r\n\
             a=rtpmap:8 PCMA/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\n\
             a=fmtp:101 0-16\r\n\
             a=ptime:20\r\n\
             a=sendrecv\r\n"
        );
        assert!(has_line(
            &offer(&local6(), Direction::SendOnly),
            "a=sendonly"
        ));
    }

    // A SIPp `uas`-style answer to our late offer.
    const PEER_ANSWER: &str = "v=0\r\n\
        o=user1 53655765 2353687638 IN IP4 127.0.0.1\r\n\
        s=-\r\n\
        c=IN IP4 127.0.0.1\r\n\
        t=0 0\r\n\
        m=audio 6002 RTP/AVP 8 101\r\n\
        a=rtpmap:8 PCMA/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\n\
        a=fmtp:101 0-15\r\n\
        a=ptime:20\r\n";

    #[test]
    fn accept_answer_takes_the_peers_codec_choice() {
        let negotiated = accept_answer(PEER_ANSWER.as_bytes(), Direction::SendRecv).unwrap();
        assert_eq!(
            negotiated,
            Negotiated {
                codec: Codec::Pcma,
                payload_type: PayloadType(8),
                telephone_event: Some(PayloadType(101)),
                remote: remote("127.0.0.1:6002"),
                direction: Direction::SendRecv,
                ptime: Some(20),
            }
        );
    }

    #[test]
    fn accept_answer_narrows_a_sendrecv_answer_to_what_we_offered() {
        let negotiated = accept_answer(PEER_ANSWER.as_bytes(), Direction::SendOnly).unwrap();
        assert_eq!(negotiated.direction, Direction::SendOnly);
        let answer = PEER_ANSWER.replace("a=ptime:20\r\n", "a=sendonly\r\n");
        let negotiated = accept_answer(answer.as_bytes(), Direction::SendRecv).unwrap();
        assert_eq!(negotiated.direction, Direction::RecvOnly);
    }

    #[test]
    fn accept_answer_with_zero_address_means_we_do_not_send() {
        let answer = PEER_ANSWER.replace("c=IN IP4 127.0.0.1", "c=IN IP4 0.0.0.0");
        let negotiated = accept_answer(answer.as_bytes(), Direction::SendRecv).unwrap();
        assert_eq!(negotiated.remote, None);
        assert_eq!(negotiated.direction, Direction::RecvOnly);
    }

    #[test]
    fn accept_answer_rejects_what_we_did_not_offer() {
        let rejected = PEER_ANSWER.replace("m=audio 6002", "m=audio 0");
        assert_eq!(
            accept_answer(rejected.as_bytes(), Direction::SendRecv),
            Err(SdpError::NoAudio)
        );

        let g729 = PEER_ANSWER
            .replace("RTP/AVP 8 101", "RTP/AVP 18 101")
            .replace("a=rtpmap:8 PCMA/8000", "a=rtpmap:18 G729/8000");
        assert_eq!(
            accept_answer(g729.as_bytes(), Direction::SendRecv),
            Err(SdpError::NoCommonCodec {
                offered: vec!["G729".into()]
            })
        );

        let video = PEER_ANSWER.replace("m=audio 6002", "m=video 6002");
        assert!(matches!(
            accept_answer(video.as_bytes(), Direction::SendRecv),
            Err(SdpError::Malformed(_))
        ));

        let no_media = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n";
        assert!(matches!(
            accept_answer(no_media.as_bytes(), Direction::SendRecv),
            Err(SdpError::Malformed(_))
        ));
    }

    #[test]
    fn our_offer_answered_by_ourselves_round_trips() {
        for local in [local(), local6()] {
            for direction in [
                Direction::SendRecv,
                Direction::SendOnly,
                Direction::RecvOnly,
                Direction::Inactive,
            ] {
                check_round_trip(local, direction);
            }
        }
    }

    /// Our offer, answered by our own answerer, accepted back: both sides agree.
    fn check_round_trip(local: LocalMedia, direction: Direction) {
        let peer = LocalMedia {
            addr: match local.addr {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
            },
            port: 5000,
            session_id: 99,
            session_version: 1,
        };
        let our_offer = offer(&local, direction);
        let answered = answer(our_offer.as_bytes(), &peer).expect("our offer is answerable");
        assert_eq!(answered.negotiated.codec, Codec::Pcmu);
        assert_eq!(answered.negotiated.payload_type, PayloadType(0));
        assert_eq!(
            answered.negotiated.telephone_event,
            Some(OFFER_TELEPHONE_EVENT)
        );
        assert_eq!(
            answered.negotiated.remote,
            Some(SocketAddr::new(local.addr, local.port))
        );
        assert_eq!(answered.negotiated.ptime, Some(20));

        let ours = accept_answer(answered.sdp.as_bytes(), direction).expect("our answer is ok");
        assert_eq!(ours.codec, Codec::Pcmu);
        assert_eq!(ours.payload_type, PayloadType(0));
        assert_eq!(ours.telephone_event, Some(OFFER_TELEPHONE_EVENT));
        assert_eq!(ours.remote, Some(SocketAddr::new(peer.addr, peer.port)));
        assert_eq!(ours.direction, direction);
        assert_eq!(
            ours.direction.sends(),
            answered.negotiated.direction.receives()
        );
        assert_eq!(
            ours.direction.receives(),
            answered.negotiated.direction.sends()
        );
    }

    fn any_direction() -> impl Strategy<Value = Direction> {
        prop_oneof![
            Just(Direction::SendRecv),
            Just(Direction::SendOnly),
            Just(Direction::RecvOnly),
            Just(Direction::Inactive),
        ]
    }

    /// Lines that look like SDP, including the ones we parse, with random values.
    fn sdp_line() -> impl Strategy<Value = String> {
        prop_oneof![
            1 => "[a-z]=[ -~]{0,30}",
            3 => (
                "(audio|audio|video|image|AUDIO)",
                "(0|[1-9][0-9]{0,3}|[1-9][0-9]{0,3}/2|[0-9/a]{0,7})",
                "(RTP/AVP|RTP/AVPF|RTP/SAVP|udptl)",
                "(0|8|9[0-9]|1[0-9]{2}|[0-9a-z]{1,3})( (0|8|9[0-9]|1[0-9]{2}|[0-9a-z]{1,3})){0,5}"
            )
                .prop_map(|(media, port, proto, formats)| format!(
                    "m={media} {port} {proto} {formats}"
                )),
            1 => "c=(IN|XX) (IP4|IP6|IPX) [0-9a-f.:/]{0,20}",
            2 => CONNECTION_LINE,
            3 => (
                "(0|8|9[0-9]|1[0-9]{2}|[0-9]{1,4})",
                "(PCMU|pcma|telephone-event|opus|G729)",
                "(8000|8000/1|8000/2|16000|[0-9/]{0,8})"
            )
                .prop_map(|(pt, name, rate)| format!("a=rtpmap:{pt} {name}/{rate}")),
            2 => "a=(sendrecv|sendonly|recvonly|inactive|ptime:[0-9]{0,12})",
        ]
    }

    /// Connection lines we can use (regex: dots escaped).
    const CONNECTION_LINE: &str =
        r"c=IN (IP4 (192\.0\.2\.1|0\.0\.0\.0|224\.2\.1\.1/127)|IP6 (2001:db8::1|::))";

    /// A media section that is mostly well formed: an m= line with a valid port, then
    /// SDP-like lines (attributes, c=) in any order.
    fn media_section() -> impl Strategy<Value = String> {
        (
            "(audio|audio|audio|video|image)",
            prop_oneof![1 => Just(0u16), 4 => 1..=u16::MAX],
            "(RTP/AVP|RTP/AVP|RTP/AVPF|RTP/SAVP|udptl)",
            proptest::collection::vec("(0|8|9|18|96|97|101|t38)", 1..6),
            proptest::collection::vec(sdp_line(), 0..6),
        )
            .prop_map(|(media, port, proto, formats, lines)| {
                let mut section = format!("m={media} {port} {proto} {}", formats.join(" "));
                for line in lines.into_iter().filter(|line| !line.starts_with("m=")) {
                    section.push_str("\r\n");
                    section.push_str(&line);
                }
                section
            })
    }

    /// A session description: v=0, o=, s=, session-level lines, then media sections.
    fn offer_like() -> impl Strategy<Value = Vec<String>> {
        (
            proptest::option::of(CONNECTION_LINE),
            proptest::collection::vec(sdp_line(), 0..3),
            proptest::collection::vec(media_section(), 0..4),
        )
            .prop_map(|(connection, session_lines, media)| {
                let mut lines = vec!["o=- 1 1 IN IP4 192.0.2.1".to_string(), "s=-".to_string()];
                lines.extend(connection);
                lines.extend(
                    session_lines
                        .into_iter()
                        .filter(|line| !line.starts_with("m=")),
                );
                lines.push("t=0 0".to_string());
                lines.extend(media);
                lines
            })
    }

    fn local_media() -> impl Strategy<Value = LocalMedia> {
        (
            prop_oneof![
                any::<[u8; 4]>().prop_map(IpAddr::from),
                any::<[u8; 16]>().prop_map(IpAddr::from),
            ]
            .prop_filter("a real address", |addr| !addr.is_unspecified()),
            1..=u16::MAX,
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(|(addr, port, session_id, session_version)| LocalMedia {
                addr,
                port,
                session_id,
                session_version,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = answer(&bytes, &local());
            let _ = accept_answer(&bytes, Direction::SendRecv);
        }

        #[test]
        fn sdp_like_text_never_panics_and_answers_keep_the_stream_count(
            lines in prop_oneof![proptest::collection::vec(sdp_line(), 0..16), offer_like()],
            crlf in any::<bool>(),
        ) {
            let end = if crlf { "\r\n" } else { "\n" };
            let offer = format!("v=0{end}{}{end}", lines.join(end)).replace("\r\n", end);
            let media_types = |sdp: &str| -> Vec<String> {
                sdp.lines()
                    .filter_map(|line| line.strip_prefix("m="))
                    .map(|m| m.split_whitespace().next().unwrap_or_default().to_ascii_lowercase())
                    .collect()
            };
            match answer(offer.as_bytes(), &local()) {
                Ok(answered) => {
                    // RFC 3264 §6: as many m= lines as offered, in the same order.
                    let offered = media_types(&offer);
                    prop_assert_eq!(media_types(&answered.sdp), offered.clone());
                    if offered.len() == 1 {
                        prop_assert!(
                            accept_answer(answered.sdp.as_bytes(), Direction::SendRecv).is_ok()
                        );
                    }
                    let negotiated = answered.negotiated;
                    prop_assert!(negotiated.telephone_event != Some(negotiated.payload_type));
                }
                Err(error) => prop_assert!(error.warning().chars().all(|c| quotable(c) == c)),
            }
            let _ = accept_answer(offer.as_bytes(), Direction::SendOnly);
        }

        #[test]
        fn round_trip_holds_for_any_local_media(local in local_media(), direction in any_direction()) {
            check_round_trip(local, direction);
        }
    }
}
