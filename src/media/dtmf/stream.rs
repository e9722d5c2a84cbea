//! The one digit stream of a call: digits from RFC 4733 events, SIP INFO and the in-band
//! detector go in, one [`Digit`] per key press comes out, in the order accepted.
//!
//! [`DtmfMode`] (per call, from config) says which methods count:
//!
//! | mode      | RFC 4733                           | SIP INFO | in-band                              |
//! |-----------|------------------------------------|----------|--------------------------------------|
//! | `auto`    | if a telephone-event PT negotiated | always   | only if no telephone-event negotiated |
//! | `rfc4733` | always                             | never    | never                                |
//! | `info`    | never                              | always   | never                                |
//! | `inband`  | never                              | never    | always                               |
//!
//! In `auto` one key press can reach us twice: a phone configured for "RFC 2833 + INFO" sends
//! both, and a phone that sends INFO usually leaves its local tone in the audio too, which the
//! in-band detector hears. A digit from one method that matches a digit already reported from
//! *another* method — same key, `at` within [`CROSS_METHOD_WINDOW`] — is that same press and
//! is dropped. Each reported digit absorbs at most one digit per other method, and digits of
//! the same method never merge (each source already yields one digit per press), so a key
//! pressed twice quickly still gives two digits when both methods carry both presses. The
//! single-method modes have nothing to merge.
//!
//! Sans-IO: the call feeds [`DigitStream::handle`] (or the `handle_*` shorthands) and drains
//! [`DigitStream::poll_digit`]; [`DigitStream::wants_inband`] tells the media engine whether
//! to decode audio for the Goertzel detector at all.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{Digit, DtmfMethod, Key};
use crate::media::PayloadType;

/// How far apart (by [`Digit::at`]) two digits of the same key from different methods may be
/// and still be one key press. Each method dates a digit near the key going down: RFC 4733 by
/// the event's start, the in-band detector by the tone's, INFO by its arrival. What separates
/// them is jitter (tens of ms), the detector's and the packetisation's granularity (20–40 ms)
/// and the signalling path's extra delay over the media path (INFO crosses proxies); 200 ms
/// covers these with room to spare. A longer window would buy nothing: repeated presses of
/// one key are told apart by the one-absorption-per-method rule, not by the window, and the
/// window only has to stay short enough that a press one method missed cannot pair with the
/// next press of the other — the fastest keying ITU-T Q.24 allows is one digit per 80 ms
/// (40 ms tone, 40 ms pause); people manage about one per 150–250 ms.
pub const CROSS_METHOD_WINDOW: Duration = Duration::from_millis(200);
/// Digits remembered for merging. At most ~12 key presses a second arrive (Q.24's fastest),
/// from at most two accepted methods at once, so 16 spans well over [`CROSS_METHOD_WINDOW`].
const RECENT_DIGITS: usize = 16;
/// Digits held for [`DigitStream::poll_digit`]; past it the oldest is dropped and counted.
/// The call drains after every input, so this is never reached in practice.
const MAX_PENDING: usize = 32;

/// Which DTMF methods a call listens to (`dtmf_mode` in config: `auto`, `rfc4733`, `info` or
/// `inband`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DtmfMode {
    /// RFC 4733 when negotiated, else in-band; INFO always.
    #[default]
    Auto,
    /// RFC 4733 telephone-events only.
    Rfc4733,
    /// SIP INFO only.
    Info,
    /// Tones in the audio only.
    Inband,
}

impl DtmfMode {
    pub const ALL: [DtmfMode; 4] = [
        DtmfMode::Auto,
        DtmfMode::Rfc4733,
        DtmfMode::Info,
        DtmfMode::Inband,
    ];

    /// The config name.
    pub const fn as_str(self) -> &'static str {
        match self {
            DtmfMode::Auto => "auto",
            DtmfMode::Rfc4733 => "rfc4733",
            DtmfMode::Info => "info",
            DtmfMode::Inband => "inband",
        }
    }
}

impl fmt::Display for DtmfMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DtmfMode {
    type Err = ParseDtmfModeError;

    /// The config name, ignoring case and surrounding space.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.trim();
        DtmfMode::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(name))
            .ok_or_else(|| ParseDtmfModeError(s.to_string()))
    }
}

/// A `dtmf_mode` value that names no mode.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("unknown DTMF mode {0:?}: expected auto, rfc4733, info or inband")]
pub struct ParseDtmfModeError(pub String);

/// Counters of what the stream did with its input, for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Digits reported.
    pub reported: u64,
    /// Digits from a method the mode does not accept now.
    pub ignored: u64,
    /// Digits dropped as the same key press already reported by another method.
    pub merged: u64,
    /// Digits dropped because [`DigitStream::poll_digit`] was not called.
    pub overflowed: u64,
}

/// The digit stream of one call (see the module docs).
#[derive(Clone, Debug)]
pub struct DigitStream {
    mode: DtmfMode,
    telephone_event: Option<PayloadType>,
    /// Digits reported lately (ring), for merging.
    recent: [Option<Reported>; RECENT_DIGITS],
    recent_next: usize,
    pending: VecDeque<Digit>,
    stats: StreamStats,
}

impl DigitStream {
    /// A stream for a call in `mode` whose SDP negotiated `telephone_event` (the payload type
    /// of `telephone-event/8000`, if any).
    pub fn new(mode: DtmfMode, telephone_event: Option<PayloadType>) -> Self {
        DigitStream {
            mode,
            telephone_event,
            recent: [None; RECENT_DIGITS],
            recent_next: 0,
            pending: VecDeque::with_capacity(MAX_PENDING),
            stats: StreamStats::default(),
        }
    }

    /// The SDP was renegotiated (re-INVITE, UPDATE): telephone-events are now on `pt`, or no
    /// longer negotiated. In `auto` this moves the call between RFC 4733 and in-band.
    pub fn set_telephone_event(&mut self, pt: Option<PayloadType>) {
        self.telephone_event = pt;
    }

    pub fn mode(&self) -> DtmfMode {
        self.mode
    }

    pub fn telephone_event(&self) -> Option<PayloadType> {
        self.telephone_event
    }

    /// Whether digits from `method` count now.
    pub fn accepts(&self, method: DtmfMethod) -> bool {
        let negotiated = self.telephone_event.is_some();
        match (self.mode, method) {
            (DtmfMode::Auto, DtmfMethod::Rfc4733) => negotiated,
            (DtmfMode::Auto, DtmfMethod::Info) => true,
            (DtmfMode::Auto, DtmfMethod::Inband) => !negotiated,
            (DtmfMode::Rfc4733, DtmfMethod::Rfc4733)
            | (DtmfMode::Info, DtmfMethod::Info)
            | (DtmfMode::Inband, DtmfMethod::Inband) => true,
            _ => false,
        }
    }

    /// Whether the media engine should decode the call's audio and run the in-band detector.
    /// When false its digits would be ignored, so it can skip the work.
    pub fn wants_inband(&self) -> bool {
        self.accepts(DtmfMethod::Inband)
    }

    /// A digit from any of the three sources.
    pub fn handle(&mut self, digit: Digit) {
        if !self.accepts(digit.method) {
            self.stats.ignored += 1;
            return;
        }
        if let Some(same_press) = self.reported_by_another_method(&digit) {
            same_press.absorbed |= method_bit(digit.method);
            self.stats.merged += 1;
            return;
        }
        self.recent[self.recent_next] = Some(Reported { digit, absorbed: 0 });
        self.recent_next = (self.recent_next + 1) % RECENT_DIGITS;
        self.stats.reported += 1;
        if self.pending.len() == MAX_PENDING {
            self.pending.pop_front();
            self.stats.overflowed += 1;
        }
        self.pending.push_back(digit);
    }

    /// An RFC 4733 key press that began at `at`. Prefer [`Self::handle`] with the receiver's
    /// [`Digit`], which is dated back to the event's start.
    pub fn handle_rfc4733(&mut self, at: Instant, key: Key) {
        self.handle(Digit {
            key,
            at,
            method: DtmfMethod::Rfc4733,
        });
    }

    /// A key from a SIP INFO that arrived at `now`.
    pub fn handle_info(&mut self, now: Instant, key: Key) {
        self.handle(Digit {
            key,
            at: now,
            method: DtmfMethod::Info,
        });
    }

    /// A tone the in-band detector heard start at `at`.
    pub fn handle_inband(&mut self, at: Instant, key: Key) {
        self.handle(Digit {
            key,
            at,
            method: DtmfMethod::Inband,
        });
    }

    /// The next key press.
    #[must_use]
    pub fn poll_digit(&mut self) -> Option<Digit> {
        self.pending.pop_front()
    }

    pub fn stats(&self) -> &StreamStats {
        &self.stats
    }

    /// The earliest reported digit `digit` duplicates: same key, another method that has not
    /// yet been merged into it, close enough in time.
    fn reported_by_another_method(&mut self, digit: &Digit) -> Option<&mut Reported> {
        let bit = method_bit(digit.method);
        self.recent
            .iter_mut()
            .flatten()
            .filter(|r| {
                r.digit.key == digit.key
                    && r.digit.method != digit.method
                    && r.absorbed & bit == 0
                    && distance(r.digit.at, digit.at) <= CROSS_METHOD_WINDOW
            })
            .min_by_key(|r| r.digit.at)
    }
}

/// A digit the stream reported, and which other methods have been merged into it.
#[derive(Clone, Copy, Debug)]
struct Reported {
    digit: Digit,
    /// [`method_bit`]s of the methods whose copy of this press was dropped.
    absorbed: u8,
}

const fn method_bit(method: DtmfMethod) -> u8 {
    match method {
        DtmfMethod::Rfc4733 => 1,
        DtmfMethod::Info => 2,
        DtmfMethod::Inband => 4,
    }
}

fn distance(a: Instant, b: Instant) -> Duration {
    a.saturating_duration_since(b)
        .max(b.saturating_duration_since(a))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const TE: Option<PayloadType> = Some(PayloadType(101));

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn drain(s: &mut DigitStream) -> Vec<Digit> {
        std::iter::from_fn(|| s.poll_digit()).collect()
    }

    fn keys(s: &mut DigitStream) -> String {
        drain(s).iter().map(|d| d.key.as_char()).collect()
    }

    #[test]
    fn modes_parse_from_config_names() {
        for mode in DtmfMode::ALL {
            assert_eq!(mode.as_str().parse::<DtmfMode>(), Ok(mode));
            assert_eq!(mode.to_string(), mode.as_str());
        }
        assert_eq!(" RFC4733 ".parse(), Ok(DtmfMode::Rfc4733));
        assert_eq!("Inband".parse(), Ok(DtmfMode::Inband));
        let err = "rfc2833".parse::<DtmfMode>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown DTMF mode \"rfc2833\": expected auto, rfc4733, info or inband"
        );
        assert_eq!(DtmfMode::default(), DtmfMode::Auto);
    }

    #[test]
    fn modes_round_trip_through_toml() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Config {
            dtmf_mode: DtmfMode,
        }
        for mode in DtmfMode::ALL {
            let text = format!("dtmf_mode = \"{mode}\"\n");
            assert_eq!(toml::from_str::<Config>(&text).unwrap().dtmf_mode, mode);
            assert_eq!(toml::to_string(&Config { dtmf_mode: mode }).unwrap(), text);
        }
        assert!(toml::from_str::<Config>("dtmf_mode = \"both\"").is_err());
    }

    #[test]
    fn auto_takes_rfc4733_when_negotiated_and_inband_otherwise() {
        let t0 = Instant::now();
        let mut s = DigitStream::new(DtmfMode::Auto, TE);
        assert!(!s.wants_inband());
        s.handle_rfc4733(ms(t0, 0), Key::D1);
        s.handle_inband(ms(t0, 1000), Key::D2);
        s.handle_info(ms(t0, 2000), Key::D3);
        assert_eq!(keys(&mut s), "13");
        assert_eq!(s.stats().ignored, 1);

        let mut s = DigitStream::new(DtmfMode::Auto, None);
        assert!(s.wants_inband());
        s.handle_rfc4733(ms(t0, 0), Key::D1);
        s.handle_inband(ms(t0, 1000), Key::D2);
        s.handle_info(ms(t0, 2000), Key::D3);
        assert_eq!(keys(&mut s), "23");
    }

    #[test]
    fn renegotiation_moves_auto_between_rfc4733_and_inband() {
        let t0 = Instant::now();
        let mut s = DigitStream::new(DtmfMode::Auto, None);
        s.handle_inband(ms(t0, 0), Key::D4);
        s.set_telephone_event(TE);
        assert_eq!(s.telephone_event(), TE);
        assert!(!s.wants_inband());
        s.handle_inband(ms(t0, 1000), Key::D5);
        s.handle_rfc4733(ms(t0, 1000), Key::D6);
        s.set_telephone_event(None);
        assert!(s.wants_inband());
        s.handle_rfc4733(ms(t0, 2000), Key::D7);
        s.handle_inband(ms(t0, 2000), Key::D8);
        assert_eq!(keys(&mut s), "468");
    }

    #[test]
    fn single_method_modes_take_only_their_method() {
        let t0 = Instant::now();
        for (mode, want, inband) in [
            (DtmfMode::Rfc4733, "1", false),
            (DtmfMode::Info, "2", false),
            (DtmfMode::Inband, "3", true),
        ] {
            for te in [TE, None] {
                let mut s = DigitStream::new(mode, te);
                assert_eq!(s.mode(), mode);
                assert_eq!(s.wants_inband(), inband, "{mode} {te:?}");
                s.handle_rfc4733(ms(t0, 0), Key::D1);
                s.handle_info(ms(t0, 1000), Key::D2);
                s.handle_inband(ms(t0, 2000), Key::D3);
                assert_eq!(keys(&mut s), want, "{mode} {te:?}");
                assert_eq!(s.stats().ignored, 2);
            }
        }
    }

    #[test]
    fn info_and_inband_copies_of_one_press_are_one_digit() {
        let t0 = Instant::now();
        let mut s = DigitStream::new(DtmfMode::Auto, None);
        s.handle_info(ms(t0, 0), Key::D5);
        s.handle_inband(ms(t0, 60), Key::D5);
        // The tone is dated before the INFO arrived: still the same press.
        s.handle_inband(ms(t0, 1000), Key::D9);
        s.handle_info(ms(t0, 1150), Key::D9);
        let digits = drain(&mut s);
        assert_eq!(digits.len(), 2);
        assert_eq!(
            (digits[0].key, digits[0].method),
            (Key::D5, DtmfMethod::Info)
        );
        assert_eq!(
            (digits[1].key, digits[1].method),
            (Key::D9, DtmfMethod::Inband)
        );
        assert_eq!(s.stats().merged, 2);
    }

    #[test]
    fn rfc4733_and_info_copies_of_one_press_are_one_digit() {
        let t0 = Instant::now();
        let mut s = DigitStream::new(DtmfMode::Auto, TE);
        for (i, key) in [Key::D1, Key::Pound].into_iter().enumerate() {
            let at = ms(t0, 500 * i as u64);
            s.handle_rfc4733(at, key);
            s.handle_info(at + Duration::from_millis(35), key);
        }
        assert_eq!(keys(&mut s), "1#");
    }

    #[test]
    fn the_window_bounds_what_merges() {
        let t0 = Instant::now();
        let mut s = DigitStream::new(DtmfMode::Auto, None);
        s.handle_info(ms(t0, 0), Key::D5);
        s.handle_inband(t0 + CROSS_METHOD_WINDOW, Key::D5);
        s.handle_info(ms(t0, 1000), Key::D6);
        s.handle_inband(
            ms(t0, 1000) + CROSS_METHOD_WINDOW + Duration::from_millis(1),
            Key::D6,
        );
        assert_eq!(keys(&mut s), "566");
    }

    #[test]
    fn different_keys_and_same_method_repeats_never_merge() {
        let t0 = Instant::now();
        let mut s = DigitStream::new(DtmfMode::Auto, None);
        s.handle_info(ms(t0, 0), Key::D5);
        s.handle_inband(ms(t0, 10), Key::D6);
        s.handle_inband(ms(t0, 100), Key::D6);
        s.handle_info(ms(t0, 120), Key::D5);
        assert_eq!(keys(&mut s), "5665");
    }

    #[test]
    fn a_quick_double_press_seen_by_both_methods_is_two_digits() {
        let t0 = Instant::now();
        let mut s = DigitStream::new(DtmfMode::Auto, None);
        s.handle_info(ms(t0, 0), Key::D7);
        s.handle_inband(ms(t0, 40), Key::D7);
        s.handle_info(ms(t0, 150), Key::D7);
        s.handle_inband(ms(t0, 190), Key::D7);
        assert_eq!(keys(&mut s), "77");
        // One method missing the first press still leaves two.
        let mut s = DigitStream::new(DtmfMode::Auto, None);
        s.handle_info(ms(t0, 0), Key::D7);
        s.handle_info(ms(t0, 150), Key::D7);
        s.handle_inband(ms(t0, 190), Key::D7);
        assert_eq!(keys(&mut s), "77");
    }

    #[test]
    fn a_renegotiation_mid_press_does_not_double_it() {
        let t0 = Instant::now();
        let mut s = DigitStream::new(DtmfMode::Auto, None);
        s.handle_inband(ms(t0, 0), Key::D2);
        s.set_telephone_event(TE);
        s.handle_rfc4733(ms(t0, 20), Key::D2);
        assert_eq!(keys(&mut s), "2");
    }

    #[test]
    fn digits_keep_their_order_and_the_queue_is_bounded() {
        let t0 = Instant::now();
        let mut s = DigitStream::new(DtmfMode::Info, None);
        for i in 0..(MAX_PENDING as u64 + 5) {
            s.handle_info(
                ms(t0, i * 300),
                Key::from_event_code((i % 16) as u8).unwrap(),
            );
        }
        let digits = drain(&mut s);
        assert_eq!(digits.len(), MAX_PENDING);
        assert_eq!(digits[0].key, Key::D5);
        assert!(digits.windows(2).all(|w| w[0].at < w[1].at));
        assert_eq!(s.stats().overflowed, 5);
    }

    fn arb_method() -> impl Strategy<Value = DtmfMethod> {
        prop_oneof![
            Just(DtmfMethod::Rfc4733),
            Just(DtmfMethod::Info),
            Just(DtmfMethod::Inband)
        ]
    }

    proptest! {
        #[test]
        fn never_more_digits_than_accepted_input(
            mode in prop::sample::select(DtmfMode::ALL.to_vec()),
            te: bool,
            input in proptest::collection::vec((arb_method(), 0u8..16, 0u64..5000), 0..100),
        ) {
            let t0 = Instant::now();
            let mut s = DigitStream::new(mode, te.then_some(PayloadType(101)));
            let mut accepted = 0;
            let mut out = 0;
            for (method, code, at) in input {
                accepted += u64::from(s.accepts(method));
                s.handle(Digit { key: Key::from_event_code(code).unwrap(), at: ms(t0, at), method });
                while let Some(d) = s.poll_digit() {
                    prop_assert!(s.accepts(d.method));
                    out += 1;
                }
            }
            prop_assert!(out <= accepted);
            let st = s.stats();
            prop_assert_eq!(st.reported, out);
            prop_assert_eq!(st.reported + st.merged, accepted);
            if mode != DtmfMode::Auto {
                prop_assert_eq!(st.merged, 0);
            }
        }

        /// Presses of random keys, each delivered by INFO and by in-band audio with random
        /// skew inside the window, in either order: exactly one digit per press, in order,
        /// as long as presses of the same key are more than two windows apart.
        #[test]
        fn presses_seen_twice_are_reported_once(
            presses in proptest::collection::vec((0u8..16, 0u64..=200, any::<bool>()), 1..40),
        ) {
            let t0 = Instant::now();
            let mut s = DigitStream::new(DtmfMode::Auto, None);
            let mut want = Vec::new();
            let mut got = Vec::new();
            for (i, (code, skew, inband_first)) in presses.into_iter().enumerate() {
                let key = Key::from_event_code(code).unwrap();
                let at = ms(t0, 450 * i as u64);
                let later = at + Duration::from_millis(skew);
                if inband_first {
                    s.handle_inband(at, key);
                    s.handle_info(later, key);
                } else {
                    s.handle_info(at, key);
                    s.handle_inband(later, key);
                }
                want.push(key);
                got.extend(drain(&mut s).iter().map(|d| d.key));
            }
            prop_assert_eq!(got, want);
        }
    }
}
