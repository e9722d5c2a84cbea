//! Who a failed conference ID or PIN is counted against (issue 7's per-source limits).
//!
//! By default a caller is their signalling IP address. Behind a carrier trunk or SBC every
//! call arrives from the same address, so keying by IP would let one guesser lock out every
//! caller; for the configured trusted trunks the key is instead the caller's number: the user
//! part of `P-Asserted-Identity` (RFC 3325, which a trusted trunk vouches for), else of
//! `From`. A number is only as good as the trunk that asserts it, which is why this applies
//! to listed trunks only: from anywhere else the number is whatever the caller typed into
//! their softphone, and the IP is the one thing they cannot choose freely.
//!
//! Pure functions and plain data: the store counts, `calls` asks [`identify`] once per call.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// The longest caller number kept as a key; longer ones are cut (E.164 is 15 digits, SIP
/// user parts may carry a few more characters).
pub const MAX_NUMBER_LEN: usize = 32;

/// The key for callers through a trusted trunk with no usable number (withheld, anonymous,
/// or nothing but punctuation): they cannot be told apart, so they share one budget.
pub const ANONYMOUS: &str = "anonymous";

/// What per-source failures are counted under.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceKey {
    /// A caller's signalling IP (IPv4-mapped IPv6 addresses as their IPv4 address).
    Ip(IpAddr),
    /// A caller's number, as asserted by a trusted trunk (normalised by [`normalize_number`]).
    Caller(String),
}

/// One call's source: the key its failures count under, and the signalling IP it came from
/// (the audit log's `source`; for [`SourceKey::Caller`] that is the trunk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub ip: IpAddr,
    pub key: SourceKey,
}

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Source {
        let ip = ip.to_canonical();
        Source {
            ip,
            key: SourceKey::Ip(ip),
        }
    }
}

impl fmt::Display for SourceKey {
    /// `192.0.2.1` / `2001:db8::1` for an address, `caller:+15551234` for a number: the text
    /// stored as the sled key, shown by the admin API and accepted back by [`FromStr`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceKey::Ip(ip) => write!(f, "{ip}"),
            SourceKey::Caller(number) => write!(f, "caller:{number}"),
        }
    }
}

impl FromStr for SourceKey {
    type Err = String;

    fn from_str(s: &str) -> Result<SourceKey, String> {
        if let Some(number) = s.strip_prefix("caller:") {
            if number == ANONYMOUS {
                return Ok(SourceKey::Caller(ANONYMOUS.to_string()));
            }
            return match normalize_number(number) {
                Some(n) if n == number => Ok(SourceKey::Caller(n)),
                _ => Err(format!(
                    "{s:?} is not a source: after caller: comes a number of up to {MAX_NUMBER_LEN} characters 0-9 a-z + * #"
                )),
            };
        }
        s.parse::<IpAddr>()
            .map(|ip| SourceKey::Ip(ip.to_canonical()))
            .map_err(|_| {
                format!(
                    "{s:?} is not a source: an IP address or caller:NUMBER, e.g. caller:+15551234"
                )
            })
    }
}

/// The source of a call from `ip`. For a trusted trunk the key is the caller's number
/// (`asserted_user`, the P-Asserted-Identity user part, else `from_user`), normalised; a
/// trunk call without a usable number is [`ANONYMOUS`]. Anyone else is keyed by `ip`.
pub fn identify(
    ip: IpAddr,
    asserted_user: Option<&str>,
    from_user: Option<&str>,
    trusted_trunks: &[IpAddr],
) -> Source {
    let ip = ip.to_canonical();
    if !trusted_trunks.iter().any(|t| t.to_canonical() == ip) {
        return Source::from(ip);
    }
    let number = asserted_user
        .and_then(normalize_number)
        .or_else(|| from_user.and_then(normalize_number))
        .unwrap_or_else(|| ANONYMOUS.to_string());
    Source {
        ip,
        key: SourceKey::Caller(number),
    }
}

/// A caller number as a key: user parameters (`;phone-context=…`) dropped, visual separators
/// (`-.() `, RFC 3966 §5.1.1) removed, letters lowercased; `None` when nothing but separators
/// is left, or for `anonymous` (callers who withheld their number share [`ANONYMOUS`]). Cut
/// at [`MAX_NUMBER_LEN`]. Any other character makes it unusable (`None`): a key is shown to
/// administrators and written to the audit log, so it holds nothing that could be markup.
pub fn normalize_number(user: &str) -> Option<String> {
    let user = user.split(';').next().unwrap_or_default();
    let mut number = String::new();
    for c in user.chars() {
        match c {
            '-' | '.' | '(' | ')' | ' ' => {}
            c if c.is_ascii_alphanumeric() || c == '+' || c == '*' || c == '#' => {
                number.push(c.to_ascii_lowercase());
            }
            _ => return None,
        }
    }
    number.truncate(MAX_NUMBER_LEN);
    (!number.is_empty() && number != ANONYMOUS).then_some(number)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    const TRUNK: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
    const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));

    #[test]
    fn untrusted_sources_are_their_ip_whatever_number_they_claim() {
        let s = identify(OTHER, Some("+15551234"), Some("alice"), &[TRUNK]);
        assert_eq!(s.key, SourceKey::Ip(OTHER));
        assert_eq!(s.ip, OTHER);
        let mapped = IpAddr::V6(Ipv4Addr::new(198, 51, 100, 7).to_ipv6_mapped());
        assert_eq!(identify(mapped, None, None, &[]).key, SourceKey::Ip(OTHER));
    }

    #[test]
    fn a_trusted_trunk_keys_by_asserted_identity_then_from() {
        let key = |pai, from| identify(TRUNK, pai, from, &[TRUNK]).key;
        assert_eq!(
            key(Some("+1-555-1234"), Some("9999")),
            SourceKey::Caller("+15551234".into())
        );
        assert_eq!(
            key(None, Some("2065550100")),
            SourceKey::Caller("2065550100".into())
        );
        assert_eq!(
            key(Some("anonymous"), Some("+15550000;npdi")),
            SourceKey::Caller("+15550000".into())
        );
        assert_eq!(
            key(None, Some("Anonymous")),
            SourceKey::Caller(ANONYMOUS.into())
        );
        assert_eq!(key(Some("<b>"), None), SourceKey::Caller(ANONYMOUS.into()));
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 10).to_ipv6_mapped());
        assert_eq!(
            identify(mapped, Some("42"), None, &[TRUNK]).key,
            SourceKey::Caller("42".into())
        );
    }

    #[test]
    fn keys_round_trip_through_text_and_bad_text_is_refused() {
        for key in [
            SourceKey::Ip(OTHER),
            SourceKey::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            SourceKey::Caller("+15551234".into()),
            SourceKey::Caller(ANONYMOUS.into()),
        ] {
            assert_eq!(key.to_string().parse::<SourceKey>(), Ok(key));
        }
        assert_eq!(
            "caller:+15551234".parse(),
            Ok(SourceKey::Caller("+15551234".into()))
        );
        for bad in [
            "",
            "caller:",
            "caller:+1 555",
            "caller:<x>",
            "10.0.0",
            "caller:anonymous!",
        ] {
            assert!(bad.parse::<SourceKey>().is_err(), "{bad:?}");
        }
        assert_eq!(
            normalize_number(&"1".repeat(40)).map(|n| n.len()),
            Some(MAX_NUMBER_LEN)
        );
    }
}
