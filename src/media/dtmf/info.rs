//! DTMF in SIP INFO bodies: which key an INFO request inside a call carries, or which SIP
//! status refuses it.
//!
//! No RFC defines these bodies (RFC 6086 is the INFO framework; neither type is registered as
//! an Info Package), so this module follows what equipment sends, and is lenient where
//! senders differ:
//!
//! - `application/dtmf-relay` (Cisco's format, the most common): lines `Signal=<key>` and
//!   `Duration=<ms>`, e.g. `Signal=5\r\nDuration=160\r\n` (Asterisk, Linphone). Seen in the
//!   wild and accepted: bare LF line ends (SEMS), a space after `=` and no final line end
//!   (`Signal= 5\r\nDuration= 100`, JsSIP and SIP.js), the lines in either order, any case in
//!   the names, and the key given as its RFC 4733 event code in decimal (SEMS/yeti send
//!   `Signal=10` for `*` and `Signal=11` for `#`; Asterisk reads 10–15 the same way). Lines
//!   other than `Signal` are ignored, `Duration` included: the IVR needs the key, and the
//!   digit is dated by the INFO's arrival.
//! - `application/dtmf`: the body is the key alone (`5`, optionally with a line end), or its
//!   decimal event code (SEMS sends the code).
//!
//! Keys are `0`–`9`, `*`, `#` and `A`–`D` (either case). A hook flash (`!` or code 16) is a
//! valid signal that is not a key: it gets `200 OK` and no digit. Anything else gets a
//! [`InfoError`] whose [`InfoError::sip_status`] is 415 (a body type we do not take; the
//! endpoint adds `Accept`) or 400 with a reason phrase naming the problem.
//!
//! Pure functions, no state: the SIP endpoint calls [`parse`] for each INFO in a dialog.

use thiserror::Error;

use super::Key;

/// The INFO body types that carry DTMF.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InfoType {
    /// `application/dtmf-relay`: `Signal=` and `Duration=` lines.
    DtmfRelay,
    /// `application/dtmf`: the key alone.
    Dtmf,
}

impl InfoType {
    /// The type named by a `Content-Type` value: parameters dropped, case and surrounding
    /// space ignored (RFC 3261 §7.3.1, RFC 2045 §5.1).
    pub fn from_content_type(value: &str) -> Option<InfoType> {
        let media_type = value.split(';').next().unwrap_or_default().trim();
        if media_type.eq_ignore_ascii_case("application/dtmf-relay") {
            Some(InfoType::DtmfRelay)
        } else if media_type.eq_ignore_ascii_case("application/dtmf") {
            Some(InfoType::Dtmf)
        } else {
            None
        }
    }

    /// The media type as written in `Content-Type`.
    pub const fn media_type(self) -> &'static str {
        match self {
            InfoType::DtmfRelay => "application/dtmf-relay",
            InfoType::Dtmf => "application/dtmf",
        }
    }

    /// The short name used in reason phrases.
    const fn short_name(self) -> &'static str {
        match self {
            InfoType::DtmfRelay => "dtmf-relay",
            InfoType::Dtmf => "dtmf",
        }
    }

    /// What holds the key, in reason phrases.
    const fn value_name(self) -> &'static str {
        match self {
            InfoType::DtmfRelay => "Signal",
            InfoType::Dtmf => "body",
        }
    }
}

/// Why an INFO request yields no digit. [`Self::sip_status`] and [`Self::reason`] are the
/// answer to send.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum InfoError {
    /// The body is of a type we do not take (or there is no `Content-Type`).
    #[error("INFO body of type {0:?} is not application/dtmf-relay or application/dtmf")]
    UnsupportedType(String),
    #[error("empty {} body", .0.short_name())]
    EmptyBody(InfoType),
    #[error("{} body is not text", .0.short_name())]
    NotText(InfoType),
    #[error("dtmf-relay body without Signal")]
    MissingSignal,
    #[error("dtmf-relay body with more than one Signal")]
    RepeatedSignal,
    /// The signal is not one of the sixteen keys (nor a hook flash). `value` is the sender's
    /// text, cut short and with anything but printable ASCII replaced, so that it can stand
    /// in a reason phrase and a log line.
    #[error("{} {} \"{value}\" is not a DTMF key", .kind.short_name(), .kind.value_name())]
    NotAKey { kind: InfoType, value: String },
    /// A hook flash (`!`, event 16): understood, but not a key. Answered `200 OK`.
    #[error("hook flash is not a keypad key")]
    HookFlash,
}

impl InfoError {
    /// The SIP status to answer the INFO with.
    pub fn sip_status(&self) -> u16 {
        match self {
            InfoError::UnsupportedType(_) => 415,
            InfoError::HookFlash => 200,
            _ => 400,
        }
    }

    /// The reason phrase for [`Self::sip_status`]: the standard one for 415 and 200, the
    /// problem itself for 400. Printable ASCII only, safe for a status line.
    pub fn reason(&self) -> String {
        match self {
            InfoError::UnsupportedType(_) => "Unsupported Media Type".to_string(),
            InfoError::HookFlash => "OK".to_string(),
            other => other.to_string(),
        }
    }
}

/// The key an INFO body carries. `content_type` is the request's `Content-Type` value as
/// received (parameters allowed), or empty when it has none.
pub fn parse(content_type: &str, body: &[u8]) -> Result<Key, InfoError> {
    let Some(kind) = InfoType::from_content_type(content_type) else {
        return Err(InfoError::UnsupportedType(printable(content_type)));
    };
    let Ok(text) = std::str::from_utf8(body) else {
        return Err(InfoError::NotText(kind));
    };
    if text.trim().is_empty() {
        return Err(InfoError::EmptyBody(kind));
    }
    let value = match kind {
        InfoType::Dtmf => text.trim(),
        InfoType::DtmfRelay => relay_signal(text)?,
    };
    match signal(value) {
        Signal::Key(key) => Ok(key),
        Signal::Flash => Err(InfoError::HookFlash),
        Signal::Unknown => Err(InfoError::NotAKey {
            kind,
            value: printable(value),
        }),
    }
}

/// The value of the one `Signal` line of a dtmf-relay body.
fn relay_signal(text: &str) -> Result<&str, InfoError> {
    let mut found = None;
    for line in text.lines() {
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        if !name.trim().eq_ignore_ascii_case("signal") {
            continue;
        }
        if found.is_some() {
            return Err(InfoError::RepeatedSignal);
        }
        found = Some(value.trim());
    }
    found.ok_or(InfoError::MissingSignal)
}

enum Signal {
    Key(Key),
    Flash,
    Unknown,
}

/// A keypad character, `!` for flash, or an RFC 4733 event code in decimal.
fn signal(value: &str) -> Signal {
    let mut chars = value.chars();
    if let (Some(c), None) = (chars.next(), chars.next()) {
        if c == '!' {
            return Signal::Flash;
        }
        if let Some(key) = Key::from_char(c) {
            return Signal::Key(key);
        }
    }
    if value.len() <= 3 && value.bytes().all(|b| b.is_ascii_digit()) {
        match value.parse::<u8>() {
            Ok(16) => return Signal::Flash,
            Ok(code) => {
                if let Some(key) = Key::from_event_code(code) {
                    return Signal::Key(key);
                }
            }
            Err(_) => {}
        }
    }
    Signal::Unknown
}

/// At most [`SNIPPET_CHARS`] characters of `text`, printable ASCII kept and everything else
/// (CR, LF, controls, non-ASCII) shown as `?`, for reason phrases and logs.
fn printable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(SNIPPET_CHARS)
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect();
    if text.chars().nth(SNIPPET_CHARS).is_some() {
        out.push_str("...");
    }
    out
}

/// Longest piece of the sender's text quoted back in a reason phrase.
const SNIPPET_CHARS: usize = 16;

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const RELAY: &str = "application/dtmf-relay";
    const DTMF: &str = "application/dtmf";

    fn relay(body: &str) -> Result<Key, InfoError> {
        parse(RELAY, body.as_bytes())
    }

    #[test]
    fn dtmf_relay_bodies_from_real_senders() {
        let cases: &[(&str, Key)] = &[
            // Asterisk, Linphone, Cisco.
            ("Signal=5\r\nDuration=160\r\n", Key::D5),
            // SEMS: LF line ends, the event code for * and #.
            ("Signal=10\nDuration=250\n", Key::Star),
            ("Signal=11\nDuration=250\n", Key::Pound),
            // JsSIP / SIP.js: a space after '=', no final CRLF.
            ("Signal= 9\r\nDuration= 100", Key::D9),
            ("signal=0\r\nduration=160\r\n", Key::D0),
            ("  SIGNAL =  #  \r\n", Key::Pound),
            ("Duration=160\r\nSignal=*\r\n", Key::Star),
            ("Signal=A\r\nDuration=160\r\n", Key::A),
            ("Signal=d\r\n", Key::D),
            ("Signal=12", Key::A),
            ("Signal=15", Key::D),
            ("Signal=07", Key::D7),
            ("\r\nSignal=3\r\n\r\nDuration=160\r\n\r\n", Key::D3),
            // Unknown lines are ignored.
            ("Signal=4\r\nDuration=160\r\nVolume=10\r\n", Key::D4),
        ];
        for (body, key) in cases {
            assert_eq!(relay(body), Ok(*key), "{body:?}");
        }
        let with_params = "Application/DTMF-Relay ; charset=us-ascii";
        assert_eq!(parse(with_params, b"Signal=1\r\n"), Ok(Key::D1));
    }

    #[test]
    fn dtmf_bodies_are_the_key_alone() {
        for (body, key) in [
            ("5", Key::D5),
            ("5\r\n", Key::D5),
            (" # ", Key::Pound),
            ("*", Key::Star),
            ("b", Key::B),
            ("11", Key::Pound),
            ("10\n", Key::Star),
        ] {
            assert_eq!(parse(DTMF, body.as_bytes()), Ok(key), "{body:?}");
        }
        assert_eq!(parse("APPLICATION/DTMF", b"2"), Ok(Key::D2));
    }

    #[test]
    fn malformed_bodies_are_400_with_the_problem_named() {
        let cases: &[(&str, &[u8], &str)] = &[
            (RELAY, b"", "empty dtmf-relay body"),
            (RELAY, b"\r\n \r\n", "empty dtmf-relay body"),
            (RELAY, b"Duration=160\r\n", "dtmf-relay body without Signal"),
            (RELAY, b"5", "dtmf-relay body without Signal"),
            (
                RELAY,
                b"Signal=5\r\nSignal=6\r\n",
                "dtmf-relay body with more than one Signal",
            ),
            (
                RELAY,
                b"Signal=\r\n",
                "dtmf-relay Signal \"\" is not a DTMF key",
            ),
            (
                RELAY,
                b"Signal=E",
                "dtmf-relay Signal \"E\" is not a DTMF key",
            ),
            (
                RELAY,
                b"Signal=17",
                "dtmf-relay Signal \"17\" is not a DTMF key",
            ),
            (
                RELAY,
                b"Signal=55",
                "dtmf-relay Signal \"55\" is not a DTMF key",
            ),
            (
                RELAY,
                b"Signal=1 2",
                "dtmf-relay Signal \"1 2\" is not a DTMF key",
            ),
            (RELAY, b"Signal=\xff\r\n", "dtmf-relay body is not text"),
            (DTMF, b"", "empty dtmf body"),
            (DTMF, b"12a", "dtmf body \"12a\" is not a DTMF key"),
            (
                DTMF,
                b"Signal=5",
                "dtmf body \"Signal=5\" is not a DTMF key",
            ),
            (DTMF, b"\xc3\x28", "dtmf body is not text"),
        ];
        for (ct, body, reason) in cases {
            let err = parse(ct, body).unwrap_err();
            assert_eq!(err.sip_status(), 400, "{body:?}");
            assert_eq!(err.reason(), *reason, "{body:?}");
        }
    }

    #[test]
    fn other_body_types_are_415() {
        for ct in [
            "text/plain",
            "application/sdp",
            "",
            "application/dtmf-relayx",
        ] {
            let err = parse(ct, b"Signal=5\r\n").unwrap_err();
            assert_eq!(err.sip_status(), 415, "{ct:?}");
            assert_eq!(err.reason(), "Unsupported Media Type");
        }
        assert_eq!(
            InfoType::from_content_type(" application/dtmf "),
            Some(InfoType::Dtmf)
        );
        assert_eq!(InfoType::DtmfRelay.media_type(), RELAY);
    }

    #[test]
    fn a_hook_flash_is_accepted_without_a_digit() {
        for (ct, body) in [(RELAY, "Signal=!\r\n"), (RELAY, "Signal=16"), (DTMF, "!")] {
            let err = parse(ct, body.as_bytes()).unwrap_err();
            assert_eq!(err, InfoError::HookFlash);
            assert_eq!((err.sip_status(), err.reason().as_str()), (200, "OK"));
        }
    }

    #[test]
    fn reasons_quote_the_sender_safely() {
        let err = relay("Signal=\u{1}\u{7f}é\tx\r\n").unwrap_err();
        assert_eq!(
            err.reason(),
            "dtmf-relay Signal \"????x\" is not a DTMF key"
        );
        let long = format!("Signal={}", "9".repeat(40));
        let reason = relay(&long).unwrap_err().reason();
        assert!(reason.contains("\"9999999999999999...\""), "{reason}");
        let err = parse("text/plain\r\nX: y", b"").unwrap_err();
        assert!(!err.to_string().contains('\r'));
    }

    proptest! {
        #[test]
        fn never_panics_and_reasons_are_safe(
            ct in prop_oneof![Just(RELAY.to_string()), Just(DTMF.to_string()), ".{0,30}"],
            body in prop_oneof![
                ".{0,60}".prop_map(String::into_bytes),
                proptest::collection::vec(any::<u8>(), 0..60),
                "(Signal|signal|Duration)? *= *[0-9A-Da-d*#!]{0,3}(\r?\n)?".prop_map(String::into_bytes),
            ],
        ) {
            match parse(&ct, &body) {
                Ok(_) => prop_assert!(InfoType::from_content_type(&ct).is_some()),
                Err(e) => {
                    prop_assert!(matches!(e.sip_status(), 200 | 400 | 415));
                    let reason = e.reason();
                    prop_assert!(reason.chars().all(|c| c == ' ' || c.is_ascii_graphic()), "{:?}", reason);
                    prop_assert!(reason.len() < 80);
                }
            }
        }

        #[test]
        fn every_key_round_trips_in_any_spelling(
            code in 0u8..16,
            numeric: bool,
            lower: bool,
            sp1 in " {0,2}", sp2 in " {0,2}",
            eol in prop_oneof![Just("\r\n"), Just("\n"), Just("")],
            duration_first: bool,
        ) {
            let key = Key::from_event_code(code).unwrap();
            let value = if numeric { code.to_string() } else if lower { key.as_char().to_ascii_lowercase().to_string() } else { key.as_char().to_string() };
            let name = if lower { "signal" } else { "Signal" };
            let signal = format!("{name}{sp1}={sp2}{value}{eol}");
            let duration = format!("Duration=160{eol}");
            let body = match (eol.is_empty(), duration_first) {
                (true, _) => signal,
                (false, true) => duration + &signal,
                (false, false) => signal + &duration,
            };
            prop_assert_eq!(parse(RELAY, body.as_bytes()), Ok(key));
            prop_assert_eq!(parse(DTMF, format!("{sp1}{value}{eol}").as_bytes()), Ok(key));
        }
    }
}
