//! RFC 4733 telephone-events: the payload format ([`TelephoneEvent`]) and a receiver
//! ([`EventReceiver`]) that turns the packets of the negotiated `telephone-event` payload type
//! into one [`Digit`] per key press.
//!
//! A sender reports one key press as one *event*, identified by the RTP timestamp of its
//! start (RFC 4733 §2.5.1.2): a first packet (marker bit set), updates every 50 ms or so with
//! the same timestamp and a growing duration, and a final packet with the E bit sent three
//! times (§2.5.1.4). The receiver reports the key once, on the first packet it sees of an
//! event, whichever that is, and recognises every later packet of the event by its
//! timestamp. It tolerates what networks and real senders do:
//!
//! - a lost start packet: the first packet seen (an update or an end) reports the key, and the
//!   digit is dated back by the duration it carries;
//! - reordered and duplicated packets: a packet of an event already seen is a repeat; an event
//!   older than the newest one on its stream that was never seen is *late* and dropped, so
//!   digits are always delivered in the order they were pressed;
//! - a new event before the previous one ended (its end packets lost): a new timestamp is a
//!   new key press, even for the same key;
//! - SSRC changes (SIPp 3.6 starts a new SSRC for every `play_dtmf` string and reuses the same
//!   timestamps): each SSRC is its own stream;
//! - timestamp wrap-around: timestamps compare in serial-number arithmetic (RFC 1982 style);
//! - non-key events (16 and up: hook flash, tones): tracked like any event, never reported;
//! - long-duration events (§2.5.1.3, §2.5.2.3): a new segment continues the key press;
//! - a sender whose RTP timestamp went backwards within one SSRC while its sequence numbers
//!   went on: the older timestamp with a newer sequence number starts a new event.
//!
//! Memory is bounded: the receiver remembers [`MAX_SOURCES`] SSRCs (least recently heard
//! forgotten first) and the last [`RECENT_EVENTS`] event timestamps of each.
//!
//! Sans-IO: `media::engine` passes each packet of the negotiated `telephone-event` payload
//! type to [`EventReceiver::handle_packet`] (or [`EventReceiver::handle_rtp`]) with the
//! instant it arrived, then drains [`EventReceiver::poll_digit`]. Per packet it allocates
//! nothing and never panics (property tests below feed it random bytes).

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::{Digit, DtmfMethod, Key};
use crate::media::rtp::RtpPacket;
use crate::media::{SAMPLE_RATE, Ssrc};

/// Bytes in one event block (RFC 4733 §2.3, Figure 1).
pub const EVENT_LEN: usize = 4;
/// How many SSRCs the receiver tells apart at once. Senders change SSRC rarely (SIPp: once
/// per `play_dtmf` string); a stale packet from a forgotten SSRC can still arrive after a
/// switch, and four covers the last three switches.
pub const MAX_SOURCES: usize = 4;
/// How many event timestamps each source remembers, to recognise repeats of events that are
/// no longer the newest. A repeat (an end retransmission, a network duplicate) arrives within
/// a few hundred milliseconds of its event; no one presses eight keys in that time.
pub const RECENT_EVENTS: usize = 8;
/// RFC 3550 Appendix A.1 `MAX_DROPOUT`: a sequence number up to this far ahead of the highest
/// seen is a newer packet (with losses between); farther is a jump we do not trust.
const MAX_DROPOUT: u16 = 3000;
/// RFC 3550 Appendix A.1 `MAX_MISORDER`: a sequence number up to this far behind the highest
/// seen is a reordered or duplicated packet.
const MAX_MISORDER: u16 = 100;
/// After this much silence on a source its sequence numbers are not compared with the last
/// one seen: events usually travel inside the audio stream and share its sequence numbers,
/// and the audio packets we never see may have moved them on by any amount (past 2^16 after
/// 22 minutes). Reordering spans milliseconds, not seconds.
const SEQUENCE_MEMORY: Duration = Duration::from_secs(2);
/// Digits held for [`EventReceiver::poll_digit`]. The engine drains after every packet, and
/// one packet yields at most one digit, so this is never reached in practice; past it the
/// oldest digit is dropped and counted.
const MAX_PENDING: usize = 16;

/// Why a `telephone-event` payload cannot be read.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum Rfc4733Error {
    #[error("telephone-event payload of {0} bytes is shorter than one 4-byte event")]
    TooShort(usize),
    #[error("telephone-event payload of {0} bytes is not a whole number of 4-byte events")]
    Misaligned(usize),
}

/// An RFC 4733 event code (§3.2: 0–9, `*` 10, `#` 11, A–D 12–15, hook flash 16; RFC 4734
/// assigns tones above).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventCode(pub u8);

impl EventCode {
    /// Hook flash (RFC 4733 §3.2): a telephone event, but not a key we act on.
    pub const FLASH: EventCode = EventCode(16);

    /// The keypad key this event stands for, if it is one (codes 0–15).
    pub const fn key(self) -> Option<Key> {
        Key::from_event_code(self.0)
    }
}

impl From<Key> for EventCode {
    fn from(key: Key) -> Self {
        EventCode(key.event_code())
    }
}

impl fmt::Display for EventCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.key() {
            Some(key) => write!(f, "{key}"),
            None => write!(f, "event {}", self.0),
        }
    }
}

/// One event block of a `telephone-event` payload (RFC 4733 §2.3):
///
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |     event     |E|R| volume    |          duration             |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TelephoneEvent {
    /// §2.3.1.
    pub event: EventCode,
    /// §2.3.2 E bit: this packet reports the end of the event.
    pub end: bool,
    /// §2.3.4: the tone's power level in −dBm0 (0–63; larger is quieter). Informational.
    pub volume: u8,
    /// §2.3.5: time since the event began, in RTP timestamp units of the payload type's clock
    /// (8 kHz: we negotiate `telephone-event/8000` only).
    pub duration: u16,
}

impl TelephoneEvent {
    /// Reads the event block of a `telephone-event` payload. A payload holding several blocks
    /// (a sender packing events, §2.5.1.5) is read for its first block only; the rest is
    /// ignored. The R bit is ignored as §2.3.3 requires of receivers.
    pub fn parse(payload: &[u8]) -> Result<Self, Rfc4733Error> {
        let len = payload.len();
        let [event, flags, d0, d1, ..] = *payload else {
            return Err(Rfc4733Error::TooShort(len));
        };
        if !len.is_multiple_of(EVENT_LEN) {
            return Err(Rfc4733Error::Misaligned(len));
        }
        Ok(TelephoneEvent {
            event: EventCode(event),
            end: flags & 0x80 != 0,
            volume: flags & 0x3f,
            duration: u16::from_be_bytes([d0, d1]),
        })
    }

    /// The wire form of this block, R bit clear, volume cut to its 6 bits.
    pub fn to_bytes(&self) -> [u8; EVENT_LEN] {
        let [d0, d1] = self.duration.to_be_bytes();
        let flags = (u8::from(self.end) << 7) | (self.volume & 0x3f);
        [self.event.0, flags, d0, d1]
    }

    /// The keypad key this event is, if any.
    pub const fn key(&self) -> Option<Key> {
        self.event.key()
    }

    /// [`Self::duration`] as time at the 8 kHz telephone-event clock.
    pub fn elapsed(&self) -> Duration {
        Duration::from_micros(u64::from(self.duration) * 1_000_000 / u64::from(SAMPLE_RATE))
    }
}

/// Counters of what the receiver saw, for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    /// Packets handed in, well-formed or not.
    pub packets: u64,
    /// Payloads that were not a whole number of event blocks.
    pub malformed: u64,
    /// Key presses reported.
    pub keys: u64,
    /// Events that are not keys (flash, tones), counted once per event.
    pub other_events: u64,
    /// Packets of events already seen: updates, end retransmissions, duplicates.
    pub repeats: u64,
    /// Packets of events older than the newest on their SSRC and never seen before, or sent
    /// before a restart: dropped.
    pub late: u64,
    /// New segments of long-duration events (RFC 4733 §2.5.2.3).
    pub continuations: u64,
    /// Times a source's timestamps went backwards while its sequence numbers went on.
    pub restarts: u64,
    /// Digits dropped because [`EventReceiver::poll_digit`] was not called.
    pub overflowed: u64,
}

/// Turns the packets of the negotiated `telephone-event` payload type into one [`Digit`] per
/// key press (see the module docs for the rules).
#[derive(Clone, Debug)]
pub struct EventReceiver {
    sources: [Option<Source>; MAX_SOURCES],
    pending: VecDeque<Digit>,
    stats: ReceiverStats,
}

impl Default for EventReceiver {
    fn default() -> Self {
        Self::new()
    }
}

impl EventReceiver {
    pub fn new() -> Self {
        EventReceiver {
            sources: [None; MAX_SOURCES],
            pending: VecDeque::with_capacity(MAX_PENDING),
            stats: ReceiverStats::default(),
        }
    }

    /// One received packet of the telephone-event payload type: its RTP header fields and its
    /// payload (CSRCs, extension and padding already stripped). A malformed payload is
    /// counted and returned as an error, and changes nothing else.
    pub fn handle_packet(
        &mut self,
        now: Instant,
        ssrc: Ssrc,
        sequence: u16,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
    ) -> Result<(), Rfc4733Error> {
        self.stats.packets += 1;
        let event = TelephoneEvent::parse(payload).inspect_err(|_| self.stats.malformed += 1)?;
        let packet = EventPacket {
            sequence,
            timestamp,
            marker,
            event,
        };
        let verdict = match self.source_mut(ssrc) {
            Some(source) => source.classify(now, &packet),
            None => {
                self.insert_source(now, ssrc, &packet);
                Verdict::New
            }
        };
        match verdict {
            Verdict::Repeat => self.stats.repeats += 1,
            Verdict::Late => self.stats.late += 1,
            Verdict::Continuation => self.stats.continuations += 1,
            Verdict::Restart | Verdict::New => {
                if verdict == Verdict::Restart {
                    self.stats.restarts += 1;
                }
                self.report(now, &event);
            }
        }
        Ok(())
    }

    /// [`Self::handle_packet`] for a parsed RTP packet.
    pub fn handle_rtp(&mut self, now: Instant, packet: &RtpPacket<'_>) -> Result<(), Rfc4733Error> {
        let h = &packet.header;
        self.handle_packet(
            now,
            h.ssrc,
            h.sequence,
            h.timestamp,
            h.marker,
            packet.payload,
        )
    }

    /// The next key press, in the order they were pressed. `at` is when the key went down as
    /// far as the packets tell: the arrival of the event's first packet, less the duration it
    /// already reported.
    #[must_use]
    pub fn poll_digit(&mut self) -> Option<Digit> {
        self.pending.pop_front()
    }

    pub fn stats(&self) -> &ReceiverStats {
        &self.stats
    }

    fn report(&mut self, now: Instant, event: &TelephoneEvent) {
        let Some(key) = event.key() else {
            self.stats.other_events += 1;
            return;
        };
        self.stats.keys += 1;
        if self.pending.len() == MAX_PENDING {
            self.pending.pop_front();
            self.stats.overflowed += 1;
        }
        self.pending.push_back(Digit {
            key,
            at: now.checked_sub(event.elapsed()).unwrap_or(now),
            method: DtmfMethod::Rfc4733,
        });
    }

    fn source_mut(&mut self, ssrc: Ssrc) -> Option<&mut Source> {
        self.sources.iter_mut().flatten().find(|s| s.ssrc == ssrc)
    }

    /// Starts tracking `ssrc` with `packet` as its newest event, in a free slot or in place of
    /// the source heard least recently.
    fn insert_source(&mut self, now: Instant, ssrc: Ssrc, packet: &EventPacket) {
        let slot = match self.sources.iter().position(Option::is_none) {
            Some(free) => free,
            None => self
                .sources
                .iter()
                .enumerate()
                .min_by_key(|(_, s)| s.map(|s| s.last_heard))
                .map_or(0, |(i, _)| i),
        };
        self.sources[slot] = Some(Source::new(now, ssrc, packet));
    }
}

/// The fields of one packet the receiver decides on.
#[derive(Clone, Copy, Debug)]
struct EventPacket {
    sequence: u16,
    timestamp: u32,
    marker: bool,
    event: TelephoneEvent,
}

/// What a packet means for its source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// The first packet seen of a new event: report it.
    New,
    /// A new event whose timestamp is older than the newest, sent after it (the sender's
    /// timestamp went backwards): report it.
    Restart,
    /// Another packet of an event already seen.
    Repeat,
    /// An event older than the newest that we never saw: dropped to keep digits in order.
    Late,
    /// The next segment of a long-duration event.
    Continuation,
}

/// What the receiver remembers of one SSRC.
#[derive(Clone, Copy, Debug)]
struct Source {
    ssrc: Ssrc,
    last_heard: Instant,
    /// Highest sequence number seen (RFC 3550 Appendix A.1 `max_seq`).
    max_seq: u16,
    /// RTP timestamp of the newest event.
    newest: u32,
    /// Event code of the newest event (its latest, for a sender reusing a timestamp).
    newest_event: EventCode,
    /// Whether an end packet of the newest event has arrived.
    newest_ended: bool,
    /// Event codes below 32 seen with the newest timestamp, one bit each: a compliant sender
    /// uses one per timestamp, a broken one may reuse a timestamp for the next key.
    newest_codes: u32,
    /// Timestamps of the last [`RECENT_EVENTS`] events (ring), the newest among them.
    recent: [u32; RECENT_EVENTS],
    recent_len: usize,
    recent_next: usize,
}

impl Source {
    fn new(now: Instant, ssrc: Ssrc, packet: &EventPacket) -> Self {
        let mut source = Source {
            ssrc,
            last_heard: now,
            max_seq: packet.sequence,
            newest: packet.timestamp,
            newest_event: packet.event.event,
            newest_ended: packet.event.end,
            newest_codes: 0,
            recent: [0; RECENT_EVENTS],
            recent_len: 0,
            recent_next: 0,
        };
        source.become_newest(packet);
        source
    }

    fn classify(&mut self, now: Instant, packet: &EventPacket) -> Verdict {
        if now.saturating_duration_since(self.last_heard) > SEQUENCE_MEMORY {
            self.max_seq = packet.sequence;
        }
        self.last_heard = now;
        let seq_delta = packet.sequence.wrapping_sub(self.max_seq);
        let seq_ahead = seq_delta != 0 && seq_delta < MAX_DROPOUT;
        let seq_behind = seq_delta != 0 && seq_delta > u16::MAX - MAX_MISORDER;
        if seq_ahead {
            self.max_seq = packet.sequence;
        }
        let event = packet.event;
        if packet.timestamp == self.newest {
            if event.event != self.newest_event && !self.saw_code(event.event) {
                // Not a compliant sender (one timestamp, one event), but no repeat either:
                // the same key press never changes key.
                self.become_newest(packet);
                return Verdict::New;
            }
            self.newest_ended |= event.end && event.event == self.newest_event;
            return Verdict::Repeat;
        }
        if self.remembers(packet.timestamp) {
            return Verdict::Repeat;
        }
        // Serial-number comparison: correct across the 2^32 wrap for any two timestamps less
        // than 2^31 apart (three days at 8 kHz).
        let ahead = packet.timestamp.wrapping_sub(self.newest);
        if (ahead as i32) > 0 {
            if seq_behind {
                // Stamped later than the newest event but sent before it: a packet from
                // before a restart (below).
                return Verdict::Late;
            }
            let continuation = ahead == u32::from(u16::MAX)
                && !packet.marker
                && event.event == self.newest_event
                && !self.newest_ended;
            self.max_seq = packet.sequence;
            self.become_newest(packet);
            return if continuation {
                // RFC 4733 §2.5.1.3: past 0xFFFF units the sender starts a new segment at
                // timestamp + 0xFFFF without the marker bit; same key press.
                Verdict::Continuation
            } else {
                Verdict::New
            };
        }
        if seq_ahead {
            // Sent after everything we have seen, yet stamped earlier: the sender's timestamp
            // went backwards (a B2BUA switching its source behind one SSRC). Old timestamps
            // mean nothing now.
            self.recent_len = 0;
            self.recent_next = 0;
            self.become_newest(packet);
            return Verdict::Restart;
        }
        Verdict::Late
    }

    fn become_newest(&mut self, packet: &EventPacket) {
        let event = packet.event;
        if packet.timestamp != self.newest || self.recent_len == 0 {
            self.newest_codes = 0;
            self.recent[self.recent_next] = packet.timestamp;
            self.recent_next = (self.recent_next + 1) % RECENT_EVENTS;
            self.recent_len = (self.recent_len + 1).min(RECENT_EVENTS);
        }
        self.newest = packet.timestamp;
        self.newest_event = event.event;
        self.newest_ended = event.end;
        if let Some(bit) = 1u32.checked_shl(u32::from(event.event.0)) {
            self.newest_codes |= bit;
        }
    }

    fn saw_code(&self, code: EventCode) -> bool {
        match 1u32.checked_shl(u32::from(code.0)) {
            Some(bit) => self.newest_codes & bit != 0,
            // Codes 32 and up are never keys; treat them as seen rather than track them.
            None => true,
        }
    }

    fn remembers(&self, timestamp: u32) -> bool {
        self.recent[..self.recent_len].contains(&timestamp)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::media::PayloadType;
    use crate::media::rtp::RtpHeader;

    fn block(code: u8, end: bool, duration: u16) -> [u8; 4] {
        TelephoneEvent {
            event: EventCode(code),
            end,
            volume: 10,
            duration,
        }
        .to_bytes()
    }

    /// One packet as a sender puts it on the wire.
    #[derive(Clone, Copy, Debug)]
    struct Pkt {
        ssrc: u32,
        seq: u16,
        ts: u32,
        marker: bool,
        payload: [u8; 4],
    }

    /// An RFC 4733 sender (§2.5.1): a start packet with the marker bit, updates every 20 ms,
    /// the end packet three times. `events` are (key code, timestamp) pairs.
    fn packets(ssrc: u32, first_seq: u16, events: &[(u8, u32)], updates: u16) -> Vec<Pkt> {
        let mut out = Vec::new();
        let mut seq = first_seq;
        let mut push = |ts, marker, payload| {
            out.push(Pkt {
                ssrc,
                seq,
                ts,
                marker,
                payload,
            });
            seq = seq.wrapping_add(1);
        };
        for &(code, ts) in events {
            for i in 0..=updates {
                push(ts, i == 0, block(code, false, i * 160));
            }
            for _ in 0..3 {
                push(ts, false, block(code, true, (updates + 1) * 160));
            }
        }
        out
    }

    fn feed(rx: &mut EventReceiver, now: Instant, pkts: &[Pkt]) -> Vec<Digit> {
        let mut digits = Vec::new();
        for p in pkts {
            rx.handle_packet(now, Ssrc(p.ssrc), p.seq, p.ts, p.marker, &p.payload)
                .unwrap();
            digits.extend(std::iter::from_fn(|| rx.poll_digit()));
        }
        digits
    }

    fn keys(digits: &[Digit]) -> String {
        digits.iter().map(|d| d.key.as_char()).collect()
    }

    #[test]
    fn parses_every_field_and_ignores_the_r_bit() {
        let e = TelephoneEvent::parse(&[11, 0x80 | 0x40 | 0x0a, 0x03, 0x20]).unwrap();
        assert_eq!(
            e,
            TelephoneEvent {
                event: EventCode(11),
                end: true,
                volume: 10,
                duration: 800
            }
        );
        assert_eq!(e.key(), Some(Key::Pound));
        assert_eq!(e.elapsed(), Duration::from_millis(100));
        // to_bytes clears R.
        assert_eq!(e.to_bytes(), [11, 0x8a, 0x03, 0x20]);
        let start = TelephoneEvent::parse(&[5, 0x3f, 0, 0]).unwrap();
        assert!(!start.end);
        assert_eq!(start.volume, 63);
        assert_eq!(start.duration, 0);
        assert_eq!(EventCode(16).key(), None);
        assert_eq!(EventCode::FLASH.to_string(), "event 16");
        assert_eq!(EventCode::from(Key::Star).to_string(), "*");
    }

    #[test]
    fn several_blocks_are_read_for_the_first_and_bad_lengths_are_errors() {
        let mut two = [0u8; 8];
        two[..4].copy_from_slice(&block(3, false, 160));
        two[4..].copy_from_slice(&block(9, true, 800));
        assert_eq!(TelephoneEvent::parse(&two).unwrap().key(), Some(Key::D3));
        for len in 0..4 {
            assert_eq!(
                TelephoneEvent::parse(&two[..len]),
                Err(Rfc4733Error::TooShort(len))
            );
        }
        for len in [5, 6, 7] {
            assert_eq!(
                TelephoneEvent::parse(&two[..len]),
                Err(Rfc4733Error::Misaligned(len))
            );
        }
    }

    #[test]
    fn malformed_payloads_are_counted_and_change_nothing() {
        let mut rx = EventReceiver::new();
        let now = Instant::now();
        for bad in [&[][..], &[1], &[1, 2, 3], &[1, 0, 0, 0, 0]] {
            let err = rx.handle_packet(now, Ssrc(1), 1, 1000, true, bad);
            assert!(err.is_err(), "{bad:?}");
        }
        assert_eq!(rx.poll_digit(), None);
        assert_eq!(rx.stats().malformed, 4);
        // The stream is still untouched: the first real event is reported.
        rx.handle_packet(now, Ssrc(1), 2, 1000, true, &block(1, false, 0))
            .unwrap();
        assert_eq!(rx.poll_digit().map(|d| d.key), Some(Key::D1));
    }

    #[test]
    fn updates_and_triple_end_make_one_digit_at_the_start() {
        let mut rx = EventReceiver::new();
        let t0 = Instant::now();
        let mut digits = Vec::new();
        for (i, p) in packets(7, 100, &[(5, 8000)], 5).iter().enumerate() {
            let now = t0 + Duration::from_millis(20 * i as u64);
            digits.extend(feed(&mut rx, now, &[*p]));
        }
        assert_eq!(keys(&digits), "5");
        assert_eq!(digits[0].at, t0);
        assert_eq!(digits[0].method, DtmfMethod::Rfc4733);
        assert_eq!(rx.stats().repeats, 8);
    }

    #[test]
    fn a_lost_start_is_reported_from_the_first_packet_seen_dated_back() {
        let t0 = Instant::now() + Duration::from_secs(1);
        // Only the end packets arrive.
        let mut rx = EventReceiver::new();
        let all = packets(7, 100, &[(9, 8000)], 4);
        let digits = feed(&mut rx, t0, &all[5..]);
        assert_eq!(keys(&digits), "9");
        assert_eq!(digits[0].at, t0 - Duration::from_millis(100));
        // Start and first updates lost: the third update is the first seen.
        let mut rx = EventReceiver::new();
        let digits = feed(&mut rx, t0, &all[3..]);
        assert_eq!(keys(&digits), "9");
        assert_eq!(digits[0].at, t0 - Duration::from_millis(60));
    }

    #[test]
    fn out_of_order_packets_never_repeat_or_reorder_digits() {
        let now = Instant::now();
        let mut pkts = packets(7, 100, &[(1, 1000), (2, 3000), (3, 5000)], 3);
        // End packets before the updates within an event, and the first event's last packets
        // after the second event began.
        pkts.swap(0, 6);
        pkts.swap(5, 8);
        pkts.swap(12, 14);
        let mut rx = EventReceiver::new();
        assert_eq!(keys(&feed(&mut rx, now, &pkts)), "123");
        // An event whose every packet arrives after the next event's is late: dropped, so
        // that digits never come out of order.
        let mut pkts = packets(7, 100, &[(1, 1000), (2, 3000)], 3);
        pkts.rotate_left(7);
        let mut rx = EventReceiver::new();
        assert_eq!(keys(&feed(&mut rx, now, &pkts)), "2");
        assert_eq!(rx.stats().late, 7);
    }

    #[test]
    fn duplicated_packets_make_no_extra_digits() {
        let now = Instant::now();
        let pkts = packets(7, 100, &[(4, 1000), (4, 3000), (0, 5000)], 2);
        let doubled: Vec<Pkt> = pkts.iter().flat_map(|p| [*p, *p]).collect();
        let mut rx = EventReceiver::new();
        assert_eq!(keys(&feed(&mut rx, now, &doubled)), "440");
        // And a whole replay of the call's packets later on adds nothing.
        assert_eq!(keys(&feed(&mut rx, now, &pkts)), "");
    }

    #[test]
    fn a_new_event_before_the_previous_ended_is_a_new_key_press() {
        let now = Instant::now();
        // No end packets at all; the same key twice, then another.
        let pkts: Vec<Pkt> = packets(7, 100, &[(6, 1000), (6, 2000), (8, 3000)], 3)
            .into_iter()
            .filter(|p| !TelephoneEvent::parse(&p.payload).unwrap().end)
            .collect();
        let mut rx = EventReceiver::new();
        assert_eq!(keys(&feed(&mut rx, now, &pkts)), "668");
    }

    #[test]
    fn every_ssrc_is_its_own_stream() {
        let now = Instant::now();
        let first = packets(0x0102_0305, 1200, &[(1, 24_400), (2, 24_800)], 2);
        // Same timestamps, new SSRC, overlapping sequence numbers.
        let second = packets(0x0102_0306, 1205, &[(1, 24_400), (2, 24_800)], 2);
        let mut rx = EventReceiver::new();
        assert_eq!(keys(&feed(&mut rx, now, &first)), "12");
        assert_eq!(keys(&feed(&mut rx, now, &second[..3])), "1");
        // A straggler of the first stream, then the rest of the second.
        assert_eq!(keys(&feed(&mut rx, now, &first[9..10])), "");
        assert_eq!(keys(&feed(&mut rx, now, &second[3..])), "2");
    }

    #[test]
    fn sources_are_bounded_and_the_least_recent_is_forgotten() {
        let t0 = Instant::now();
        let mut rx = EventReceiver::new();
        for ssrc in 0..10u32 {
            let now = t0 + Duration::from_secs(u64::from(ssrc));
            let digits = feed(&mut rx, now, &packets(ssrc, 0, &[(ssrc as u8, 1000)], 1));
            assert_eq!(digits.len(), 1);
            assert!(rx.sources.iter().flatten().count() <= MAX_SOURCES);
        }
        let kept: Vec<u32> = rx.sources.iter().flatten().map(|s| s.ssrc.0).collect();
        assert_eq!(kept.len(), MAX_SOURCES);
        assert!(kept.iter().all(|&s| s >= 6), "{kept:?}");
    }

    #[test]
    fn timestamps_wrap_around() {
        let now = Instant::now();
        let pkts = packets(7, 65_530, &[(1, u32::MAX - 500), (2, 300), (3, 2000)], 3);
        let mut rx = EventReceiver::new();
        assert_eq!(keys(&feed(&mut rx, now, &pkts)), "123");
        // Stragglers of the event before the wrap are repeats, not new or late.
        assert_eq!(keys(&feed(&mut rx, now, &pkts[..7])), "");
        assert_eq!(rx.stats().late, 0);
    }

    #[test]
    fn non_key_events_are_tracked_but_never_reported() {
        let now = Instant::now();
        // Hook flash, a 440 Hz tone (RFC 4734), then a key.
        let pkts = packets(7, 1, &[(16, 1000), (70, 3000), (255, 4000), (7, 5000)], 2);
        let mut rx = EventReceiver::new();
        assert_eq!(keys(&feed(&mut rx, now, &pkts)), "7");
        assert_eq!(rx.stats().other_events, 3);
        assert_eq!(rx.stats().keys, 1);
    }

    #[test]
    fn zero_duration_events_count() {
        let now = Instant::now();
        let mut rx = EventReceiver::new();
        // A start packet of duration 0 (SIPp's first packet of every event).
        rx.handle_packet(now, Ssrc(1), 1, 1000, true, &block(2, false, 0))
            .unwrap();
        // A lone end packet of duration 0.
        rx.handle_packet(now, Ssrc(1), 2, 2000, false, &block(3, true, 0))
            .unwrap();
        let d: Vec<Digit> = std::iter::from_fn(|| rx.poll_digit()).collect();
        assert_eq!(keys(&d), "23");
        assert!(d.iter().all(|d| d.at == now));
    }

    #[test]
    fn a_long_duration_event_is_one_key_press() {
        let now = Instant::now();
        let mut rx = EventReceiver::new();
        let ts = 10_000u32;
        let seg2 = ts + u32::from(u16::MAX);
        let mut seq = 0;
        let mut send = |rx: &mut EventReceiver, ts, marker, payload: [u8; 4]| {
            seq += 1;
            rx.handle_packet(now, Ssrc(1), seq, ts, marker, &payload)
                .unwrap();
        };
        send(&mut rx, ts, true, block(0, false, 0));
        send(&mut rx, ts, false, block(0, false, 60_000));
        send(&mut rx, ts, false, block(0, false, u16::MAX));
        // §2.5.1.3: the next segment, no marker.
        send(&mut rx, seg2, false, block(0, false, 400));
        send(&mut rx, seg2, false, block(0, true, 800));
        assert_eq!(rx.poll_digit().map(|d| d.key), Some(Key::D0));
        assert_eq!(rx.poll_digit(), None);
        assert_eq!(rx.stats().continuations, 1);
        // The same key again afterwards is a new press.
        send(&mut rx, seg2 + 2000, true, block(0, false, 0));
        assert_eq!(rx.poll_digit().map(|d| d.key), Some(Key::D0));
    }

    #[test]
    fn a_timestamp_that_goes_back_with_newer_sequence_numbers_restarts() {
        let now = Instant::now();
        let mut rx = EventReceiver::new();
        let before = packets(7, 500, &[(1, 900_000)], 2);
        // Same SSRC, sequence numbers carry on, timestamps start again lower.
        let after = packets(7, 506, &[(2, 4000), (3, 6000)], 2);
        assert_eq!(keys(&feed(&mut rx, now, &before)), "1");
        assert_eq!(keys(&feed(&mut rx, now, &after)), "23");
        assert_eq!(rx.stats().restarts, 1);
        // The old stream's packets are now late, not new.
        assert_eq!(keys(&feed(&mut rx, now, &before)), "");
    }

    #[test]
    fn a_sender_reusing_a_timestamp_for_another_key_is_heard() {
        let now = Instant::now();
        let mut rx = EventReceiver::new();
        let mut pkts = packets(7, 1, &[(1, 1000)], 1);
        let more = packets(7, 6, &[(2, 1000), (1, 1000)], 1);
        pkts.extend(more);
        // 1, then 2 on the same timestamp; the 1 afterwards is a repeat of the first.
        assert_eq!(keys(&feed(&mut rx, now, &pkts)), "12");
    }

    /// Builds the datagrams SIPp 3.6 sends for `<exec play_dtmf="DIGITS"/>` (its
    /// `prepare_dtmf` in `src/prepare_pcap.c`, v3.6.1), with the send time of each:
    ///
    /// - SSRC 0x01020304 plus one per `play_dtmf` string; sequence numbers from 1200 for the
    ///   call's first string, advanced by the packet count for the next;
    /// - 20 filler packets on PT 97 (4 zero bytes each, 20 ms apart, timestamps 24000 +
    ///   0, 20, …, 380, sequence numbers stepping by 2);
    /// - per digit n: timestamp 24400 + 400·n; 10 packets on PT 96 every 20 ms, the first
    ///   with the marker bit, durations 0, 160, …, 1440, volume 10; then the end packet
    ///   (duration 1600) three times, 1 ms apart; the next digit 200 ms later.
    fn sipp_play_dtmf(digits: &str, string_index: u32, start_seq: u16) -> Vec<(u64, Vec<u8>)> {
        let ssrc = Ssrc(0x0102_0304 + 1 + string_index);
        let mut out = Vec::new();
        let mut n_pkts: u16 = 0;
        let mut seq_base = start_seq;
        let datagram = |pt: u8, marker: bool, seq: u16, ts: u32, payload: [u8; 4]| {
            let header = RtpHeader {
                payload_type: PayloadType(pt),
                marker,
                sequence: seq,
                timestamp: ts,
                ssrc,
            };
            let mut buf = [0u8; 16];
            let len = header.write(&payload, &mut buf).unwrap();
            buf[..len].to_vec()
        };
        for i in 0..20u16 {
            let send_ms = u64::from(i) * 20;
            let ts = 24_000 + u32::from(i) * 20;
            out.push((send_ms, datagram(97, false, n_pkts + seq_base, ts, [0; 4])));
            n_pkts += 1;
            seq_base += 1;
        }
        let (ts_offset, ts_start) = (400u64, 24_400u32);
        for (n, c) in digits.chars().enumerate() {
            let code = Key::from_char(c).unwrap().event_code();
            let n = n as u32;
            let ts = ts_start + n * 400;
            for k in 0..10u16 {
                let send_ms = ts_offset + u64::from(n + 1) * 400 + u64::from(k) * 20;
                let mut payload = [code, 10, 0, 0];
                payload[2..].copy_from_slice(&(k * 20 * 8).to_be_bytes());
                out.push((
                    send_ms,
                    datagram(96, k == 0, n_pkts + seq_base, ts, payload),
                ));
                n_pkts += 1;
            }
            for i in 0..3u64 {
                let send_ms = ts_offset + u64::from(n + 1) * 400 + 200 + i + 1;
                let mut payload = [code, 0x80 | 10, 0, 0];
                payload[2..].copy_from_slice(&1600u16.to_be_bytes());
                out.push((send_ms, datagram(96, false, n_pkts + seq_base, ts, payload)));
                n_pkts += 1;
            }
        }
        out
    }

    #[test]
    fn sipp_play_dtmf_strings_give_each_digit_once() {
        let te = PayloadType(96);
        let t0 = Instant::now();
        let mut rx = EventReceiver::new();
        let mut got = Vec::new();
        let first = sipp_play_dtmf("1234#", 0, 1200);
        // `last_seq_no` moves on by the packet count: 20 fillers + 13 per digit.
        let second = sipp_play_dtmf("1234#", 1, 1200 + 20 + 5 * 13);
        let call = first
            .iter()
            .map(|(ms, d)| (*ms, d))
            .chain(second.iter().map(|(ms, d)| (ms + 3000, d)));
        for (ms, datagram) in call {
            let packet = RtpPacket::parse(datagram).unwrap();
            // The engine routes only the negotiated telephone-event PT here; the PT 97
            // fillers go elsewhere (and count as "other" payloads).
            if packet.header.payload_type != te {
                assert_eq!(packet.header.payload_type, PayloadType(97));
                continue;
            }
            rx.handle_rtp(t0 + Duration::from_millis(ms), &packet)
                .unwrap();
            got.extend(std::iter::from_fn(|| rx.poll_digit()));
        }
        assert_eq!(keys(&got), "1234#1234#");
        let starts: Vec<u64> = got
            .iter()
            .map(|d| d.at.duration_since(t0).as_millis() as u64)
            .collect();
        assert_eq!(
            starts,
            [800, 1200, 1600, 2000, 2400, 3800, 4200, 4600, 5000, 5400]
        );
        assert_eq!(rx.stats().repeats, 10 * 12);
    }

    #[test]
    fn sipp_digits_survive_loss_of_every_start_packet() {
        let t0 = Instant::now();
        let mut rx = EventReceiver::new();
        let mut got = Vec::new();
        for (ms, datagram) in sipp_play_dtmf("90*", 0, 1200) {
            let packet = RtpPacket::parse(&datagram).unwrap();
            if packet.header.payload_type != PayloadType(96) || packet.header.marker {
                continue;
            }
            rx.handle_rtp(t0 + Duration::from_millis(ms), &packet)
                .unwrap();
            got.extend(std::iter::from_fn(|| rx.poll_digit()));
        }
        assert_eq!(keys(&got), "90*");
        // Dated back by the 160 units (20 ms) the first update reports.
        assert_eq!(got[0].at, t0 + Duration::from_millis(800));
    }

    fn arb_packet() -> impl Strategy<Value = (u32, u16, u32, bool, Vec<u8>)> {
        (
            0u32..6,
            any::<u16>(),
            prop_oneof![any::<u32>(), 0u32..4000],
            any::<bool>(),
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..12),
                (0u8..20, any::<bool>(), any::<u16>())
                    .prop_map(|(c, e, d)| block(c, e, d).to_vec()),
            ],
        )
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            match TelephoneEvent::parse(&bytes) {
                Ok(e) => {
                    prop_assert!(bytes.len() >= EVENT_LEN && bytes.len().is_multiple_of(EVENT_LEN));
                    let mut first = [0u8; 4];
                    first.copy_from_slice(&bytes[..4]);
                    first[1] &= !0x40;
                    prop_assert_eq!(e.to_bytes(), first);
                }
                Err(Rfc4733Error::TooShort(n)) => prop_assert!(n < EVENT_LEN),
                Err(Rfc4733Error::Misaligned(n)) => prop_assert!(!n.is_multiple_of(EVENT_LEN)),
            }
        }

        #[test]
        fn receiver_never_panics(pkts in proptest::collection::vec(arb_packet(), 0..200)) {
            let t0 = Instant::now();
            let mut rx = EventReceiver::new();
            let mut reported = 0u64;
            for (i, (ssrc, seq, ts, marker, payload)) in pkts.iter().enumerate() {
                let now = t0 + Duration::from_millis(i as u64);
                let _ = rx.handle_packet(now, Ssrc(*ssrc), *seq, *ts, *marker, payload);
                while let Some(d) = rx.poll_digit() {
                    prop_assert!(d.at <= now);
                    reported += 1;
                }
            }
            prop_assert_eq!(reported, rx.stats().keys);
            prop_assert!(rx.sources.iter().flatten().count() <= MAX_SOURCES);
        }

        /// Distinct keys at increasing, distinct timestamps (near the wrap or not), each sent
        /// as a full packet train, delivered in any order with duplicates: every key at most
        /// once. Delivered in order with losses (but one packet of each kept): exactly once
        /// each, in order.
        #[test]
        fn each_event_is_reported_at_most_once(
            keys_perm in Just((0u8..16).collect::<Vec<u8>>()).prop_shuffle(),
            n in 1usize..16,
            base in prop_oneof![any::<u32>(), Just(u32::MAX - 5000)],
            gaps in proptest::collection::vec(1u32..4000, 16),
            first_seq: u16,
            updates in 0u16..6,
            order in proptest::collection::vec(any::<prop::sample::Index>(), 0..400),
            keep in proptest::collection::vec(any::<bool>(), 400),
        ) {
            let mut ts = base;
            let events: Vec<(u8, u32)> = keys_perm[..n]
                .iter()
                .zip(&gaps)
                .map(|(&k, &gap)| {
                    ts = ts.wrapping_add(gap);
                    (k, ts)
                })
                .collect();
            let pkts = packets(9, first_seq, &events, updates);
            let now = Instant::now();

            let mut rx = EventReceiver::new();
            let shuffled: Vec<Pkt> = order.iter().map(|i| pkts[i.index(pkts.len())]).collect();
            let got = feed(&mut rx, now, &shuffled);
            let mut seen = [false; 16];
            for d in &got {
                let code = d.key.event_code() as usize;
                prop_assert!(!seen[code], "{:?} twice", d.key);
                prop_assert!(keys_perm[..n].contains(&(code as u8)));
                seen[code] = true;
            }

            let per_event = usize::from(updates) + 4;
            let lossy: Vec<Pkt> = pkts
                .iter()
                .enumerate()
                .filter(|(i, _)| keep[*i % keep.len()] || i % per_event == per_event - 1)
                .map(|(_, p)| *p)
                .collect();
            let mut rx = EventReceiver::new();
            let got = feed(&mut rx, now, &lossy);
            let want: Vec<Key> = events.iter().map(|&(k, _)| Key::from_event_code(k).unwrap()).collect();
            prop_assert_eq!(got.iter().map(|d| d.key).collect::<Vec<_>>(), want);
        }
    }
}
