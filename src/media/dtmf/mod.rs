//! DTMF: the three ways a key press reaches us — RFC 4733 telephone-events in RTP
//! (`rfc4733`), SIP INFO bodies (`info`), and tones in the audio found by a Goertzel
//! detector (`goertzel`) — merged into one stream of [`Digit`]s, one per key press.

use std::fmt;
use std::time::Instant;

pub mod file;
pub mod goertzel;
pub mod info;
pub mod rfc4733;
pub mod stream;

/// A DTMF key (RFC 4733 §3.2 events 0–15).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    D0,
    D1,
    D2,
    D3,
    D4,
    D5,
    D6,
    D7,
    D8,
    D9,
    Star,
    Pound,
    A,
    B,
    C,
    D,
}

impl Key {
    /// The RFC 4733 event code of this key.
    pub const fn event_code(self) -> u8 {
        self as u8
    }

    /// The key for an RFC 4733 event code (0–15); other events are not keys.
    pub const fn from_event_code(code: u8) -> Option<Key> {
        const KEYS: [Key; 16] = [
            Key::D0,
            Key::D1,
            Key::D2,
            Key::D3,
            Key::D4,
            Key::D5,
            Key::D6,
            Key::D7,
            Key::D8,
            Key::D9,
            Key::Star,
            Key::Pound,
            Key::A,
            Key::B,
            Key::C,
            Key::D,
        ];
        if (code as usize) < KEYS.len() {
            Some(KEYS[code as usize])
        } else {
            None
        }
    }

    /// The key printed on the keypad: `0`–`9`, `*`, `#`, `A`–`D`.
    pub const fn as_char(self) -> char {
        match self {
            Key::Star => '*',
            Key::Pound => '#',
            Key::A => 'A',
            Key::B => 'B',
            Key::C => 'C',
            Key::D => 'D',
            digit => (b'0' + digit as u8) as char,
        }
    }

    /// Parses a keypad character (case-insensitive for A–D).
    pub fn from_char(c: char) -> Option<Key> {
        match c.to_ascii_uppercase() {
            '0'..='9' => Key::from_event_code(c as u8 - b'0'),
            '*' => Some(Key::Star),
            '#' => Some(Key::Pound),
            'A' => Some(Key::A),
            'B' => Some(Key::B),
            'C' => Some(Key::C),
            'D' => Some(Key::D),
            _ => None,
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_char())
    }
}

/// How a digit reached us.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DtmfMethod {
    Rfc4733,
    Info,
    Inband,
}

/// One key press.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digit {
    pub key: Key,
    /// When the key press began (as near as the method tells).
    pub at: Instant,
    pub method: DtmfMethod,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_codes_and_chars() {
        for code in 0..16u8 {
            let k = Key::from_event_code(code).unwrap();
            assert_eq!(k.event_code(), code);
            assert_eq!(Key::from_char(k.as_char()), Some(k));
        }
        assert_eq!(Key::from_event_code(16), None);
        assert_eq!(Key::from_char('x'), None);
        assert_eq!(Key::D7.to_string(), "7");
        assert_eq!(Key::Pound.to_string(), "#");
    }
}
