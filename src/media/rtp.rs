//! RTP as pinbridge speaks it (RFC 3550, RFC 3551), without sockets or clocks:
//!
//! - [`RtpPacket::parse`] and [`RtpHeader::write`]: the wire format, over `rtp-rs`, which no
//!   other module touches. Parsing returns an [`RtpError`] for anything that is not a whole
//!   RTP version 2 packet; it never panics. Writing fills a caller-provided buffer.
//! - [`RtpSender`]: the sending half of one stream — SSRC, sequence number, timestamp, marker.
//! - [`PortPool`]: the local even ports calls bind their RTP sockets to.
//! - [`Latch`]: which remote addresses may feed a call, and where its RTP goes (symmetric RTP).
//!
//! `media::engine` drives all of it: it owns the sockets and passes in the instants.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use rand::CryptoRng;
use rtp_rs::{RtpPacketBuildError, RtpPacketBuilder, RtpReader, RtpReaderError, Seq};
use thiserror::Error;

use super::{FRAME_SAMPLES, PayloadType, Ssrc};

/// Length of the fixed RTP header, without CSRCs or extension (RFC 3550 §5.1).
pub const HEADER_LEN: usize = 12;
/// The largest packet we send: one fixed header and one 20 ms G.711 frame.
pub const MAX_PACKET_LEN: usize = HEADER_LEN + FRAME_SAMPLES;
/// RTP timestamp units in one 20 ms frame (8 kHz clock, RFC 3551 §4.5.14).
pub const FRAME_TIMESTAMP_STEP: u32 = FRAME_SAMPLES as u32;
/// How long a latched source may stay silent before another accepted source may take the
/// latch over (a NAT rebinding, a media relay switching ports). Longer than any silence a
/// phone with voice activity detection leaves between talkspurts in practice, so a stray
/// stream from the same address cannot steal a live call's media.
pub const RELATCH_AFTER: Duration = Duration::from_secs(2);

/// Why a datagram is not an RTP packet we can use, or a packet could not be written.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RtpError {
    #[error("datagram of {0} bytes is shorter than an RTP header")]
    TooShort(usize),
    #[error("RTP version {0} is not 2")]
    UnsupportedVersion(u8),
    #[error("RTP header needs {header_len} bytes but the datagram has {datagram_len}")]
    Truncated {
        header_len: usize,
        datagram_len: usize,
    },
    #[error("RTP padding length {0} does not fit the datagram")]
    InvalidPadding(u8),
    /// RTCP packet types 192–223 share the second byte with RTP payload types 64–95 under
    /// RFC 5761 §4; a peer multiplexing RTCP onto our RTP port sends these.
    #[error("RTCP packet type {0} on the RTP port")]
    Rtcp(u8),
    #[error("payload type {0} does not fit in 7 bits")]
    InvalidPayloadType(u8),
    #[error("a {need}-byte packet does not fit a {have}-byte buffer")]
    BufferTooSmall { need: usize, have: usize },
}

/// The fixed-header fields pinbridge reads and writes (RFC 3550 §5.1). CSRCs and header
/// extensions are skipped on input and never sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpHeader {
    pub payload_type: PayloadType,
    pub marker: bool,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: Ssrc,
}

impl RtpHeader {
    /// Writes this header and `payload` into `out`, returning the packet length. Allocates
    /// nothing; `out` must hold at least [`HEADER_LEN`] + `payload.len()` bytes.
    pub fn write(&self, payload: &[u8], out: &mut [u8]) -> Result<usize, RtpError> {
        RtpPacketBuilder::new()
            .payload_type(self.payload_type.0)
            .marked(self.marker)
            .sequence(Seq::from(self.sequence))
            .timestamp(self.timestamp)
            .ssrc(self.ssrc.0)
            .payload(payload)
            .build_into(out)
            .map_err(|e| match e {
                RtpPacketBuildError::BufferTooSmall => RtpError::BufferTooSmall {
                    need: HEADER_LEN + payload.len(),
                    have: out.len(),
                },
                // We set no extension, so the only other failure is the payload type.
                _ => RtpError::InvalidPayloadType(self.payload_type.0),
            })
    }
}

/// One received RTP packet, borrowing the datagram it came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    pub header: RtpHeader,
    /// The payload without CSRCs, header extension or padding.
    pub payload: &'a [u8],
}

impl<'a> RtpPacket<'a> {
    /// Reads one RTP version 2 packet. Network input: every malformation is an error, none
    /// panics (a proptest below feeds it random bytes).
    pub fn parse(datagram: &'a [u8]) -> Result<Self, RtpError> {
        if let [first, second, ..] = datagram
            && first >> 6 == 2
            && (192..=223).contains(second)
        {
            return Err(RtpError::Rtcp(*second));
        }
        let reader = RtpReader::new(datagram).map_err(|e| match e {
            RtpReaderError::BufferTooShort(len) => RtpError::TooShort(len),
            RtpReaderError::UnsupportedVersion(v) => RtpError::UnsupportedVersion(v),
            RtpReaderError::HeadersTruncated {
                header_len,
                buffer_len,
            } => RtpError::Truncated {
                header_len,
                datagram_len: buffer_len,
            },
            RtpReaderError::PaddingLengthInvalid(len) => RtpError::InvalidPadding(len),
        })?;
        Ok(RtpPacket {
            header: RtpHeader {
                payload_type: PayloadType(reader.payload_type()),
                marker: reader.mark(),
                sequence: reader.sequence_number().into(),
                timestamp: reader.timestamp(),
                ssrc: Ssrc(reader.ssrc()),
            },
            payload: reader.payload(),
        })
    }
}

/// The sending half of one RTP stream: which SSRC, sequence number and timestamp the next
/// packet carries, and whether it starts a talkspurt.
///
/// The timestamp follows the sampling clock, not the packet count: time that passes without
/// a packet (hold, no destination yet, frames dropped under load) is recorded with
/// [`RtpSender::skip`], which advances the timestamp but not the sequence number
/// (RFC 3550 §5.1) and marks the next packet as the start of a talkspurt (RFC 3551 §4.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtpSender {
    ssrc: Ssrc,
    sequence: u16,
    timestamp: u32,
    /// The next packet is the first of a talkspurt: the first we send, or the first after
    /// a stretch of time in which we sent nothing.
    talkspurt_start: bool,
}

impl RtpSender {
    /// A stream with a random SSRC (RFC 3550 §8.1) and random initial sequence number and
    /// timestamp (§5.1, so that known-plaintext attacks on encrypted streams are harder and
    /// a restarted call is not mistaken for the old one). Pass a CSPRNG (`rand::rng()`).
    pub fn new<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        Self::from_state(Ssrc(rng.next_u32()), rng.next_u32() as u16, rng.next_u32())
    }

    /// A stream whose next packet carries exactly these values (tests, and resuming a stream
    /// handed over from elsewhere). Its next packet starts a talkspurt.
    pub fn from_state(ssrc: Ssrc, sequence: u16, timestamp: u32) -> Self {
        RtpSender {
            ssrc,
            sequence,
            timestamp,
            talkspurt_start: true,
        }
    }

    pub fn ssrc(&self) -> Ssrc {
        self.ssrc
    }

    /// The header the next packet with payload type `pt` will carry.
    pub fn next_header(&self, pt: PayloadType) -> RtpHeader {
        RtpHeader {
            payload_type: pt,
            marker: self.talkspurt_start,
            sequence: self.sequence,
            timestamp: self.timestamp,
            ssrc: self.ssrc,
        }
    }

    /// Writes the next packet into `out` and moves the stream on: sequence number +1 and
    /// timestamp + `samples` (the payload's duration in 8 kHz units), both wrapping. On error
    /// the stream is unchanged.
    pub fn write(
        &mut self,
        pt: PayloadType,
        payload: &[u8],
        samples: u32,
        out: &mut [u8],
    ) -> Result<usize, RtpError> {
        let len = self.next_header(pt).write(payload, out)?;
        self.sequence = self.sequence.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(samples);
        self.talkspurt_start = false;
        Ok(len)
    }

    /// Records that `samples` of time passed without a packet.
    pub fn skip(&mut self, samples: u32) {
        self.timestamp = self.timestamp.wrapping_add(samples);
        self.talkspurt_start = true;
    }

    /// Records that the last packet written never reached the wire (the socket refused it),
    /// so the peer's stream has a gap and the next packet starts a talkspurt.
    pub fn restart_talkspurt(&mut self) {
        self.talkspurt_start = true;
    }
}

/// Why the port pool could not be built or could not hand out a port.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PortPoolError {
    #[error("port range {start}-{end} holds no even RTP port with its RTCP port beside it")]
    Empty { start: u16, end: u16 },
    #[error("all {capacity} RTP ports are in use")]
    Exhausted { capacity: usize },
}

/// The local RTP ports: every even port `p` of the configured inclusive range whose RTCP
/// partner `p + 1` is in the range too (RFC 3550 §11), so a firewall opened for the range
/// passes both.
///
/// Allocation is round-robin from just after the last port handed out, so a port released
/// by an ended call is the last to be reused; late packets still heading for it then find
/// no socket, or a call that has long since latched elsewhere, rather than a fresh call
/// (RTP bleed).
#[derive(Clone, Debug)]
pub struct PortPool {
    /// The lowest port in the pool; slot `i` is port `first + 2 * i`.
    first: u16,
    used: Vec<bool>,
    /// Where the next search for a free slot starts.
    cursor: usize,
    in_use: usize,
}

impl PortPool {
    pub fn new(range: RangeInclusive<u16>) -> Result<Self, PortPoolError> {
        let (start, end) = (*range.start(), *range.end());
        // Port 0 means "any port" to bind(2), so the lowest usable even port is 2.
        let first = u32::from(start.max(2)).next_multiple_of(2);
        let capacity = if first < u32::from(end) {
            ((u32::from(end) - 1 - first) / 2 + 1) as usize
        } else {
            0
        };
        if capacity == 0 {
            return Err(PortPoolError::Empty { start, end });
        }
        Ok(PortPool {
            first: first as u16,
            used: vec![false; capacity],
            cursor: 0,
            in_use: 0,
        })
    }

    /// Takes the next free port after the last one handed out.
    pub fn allocate(&mut self) -> Result<u16, PortPoolError> {
        let capacity = self.used.len();
        for step in 0..capacity {
            let slot = (self.cursor + step) % capacity;
            if !self.used[slot] {
                self.used[slot] = true;
                self.cursor = (slot + 1) % capacity;
                self.in_use += 1;
                return Ok(self.port(slot));
            }
        }
        Err(PortPoolError::Exhausted { capacity })
    }

    /// Returns `port` to the pool. False (and nothing changes) if it is not one of ours or
    /// is not in use, so a double release cannot free a port another call holds.
    pub fn release(&mut self, port: u16) -> bool {
        let Some(slot) = self.slot(port) else {
            return false;
        };
        if !self.used[slot] {
            return false;
        }
        self.used[slot] = false;
        self.in_use -= 1;
        true
    }

    pub fn in_use(&self) -> usize {
        self.in_use
    }

    pub fn capacity(&self) -> usize {
        self.used.len()
    }

    fn port(&self, slot: usize) -> u16 {
        self.first + 2 * slot as u16
    }

    fn slot(&self, port: u16) -> Option<usize> {
        let offset = port.checked_sub(self.first)?;
        let slot = usize::from(offset / 2);
        (offset % 2 == 0 && slot < self.used.len()).then_some(slot)
    }
}

/// Which remote addresses may feed one call, and where its RTP goes.
///
/// A packet is accepted only from the exact address the SDP named, or from any port on the
/// IP address the call's signalling came from (a phone behind NAT names its private address
/// in SDP but its packets arrive from the NAT's public one). Everything else — a stream
/// meant for a call that used this port before, a scanner — is foreign and ignored: no RTP
/// bleed.
///
/// Symmetric RTP (RFC 4961): once a packet arrives from an accepted source we send to that
/// source, which is what gets our packets back through the caller's NAT. While the latched
/// source is live, another accepted source does not take the latch over unless it is the
/// exact SDP address; after [`RELATCH_AFTER`] of silence any accepted source may.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Latch {
    sdp: Option<SocketAddr>,
    signalling_ip: IpAddr,
    latched: Option<Latched>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Latched {
    source: SocketAddr,
    last_seen: Instant,
}

impl Latch {
    /// `sdp_remote` is the address from the SDP's `c=` and `m=` lines; `None`, or a null
    /// address (`0.0.0.0`, port 0: RFC 3264 §8.4 hold), means the SDP named none.
    pub fn new(sdp_remote: Option<SocketAddr>, signalling_ip: IpAddr) -> Self {
        Latch {
            sdp: sdp_remote.filter(is_usable).map(canonical),
            signalling_ip: signalling_ip.to_canonical(),
            latched: None,
        }
    }

    /// New SDP (re-INVITE). If it names the same address (hold, resume, codec change) the
    /// latched source stays, provided the new rules still accept it. If the peer moved its
    /// media, we send to the new address and latch afresh: the old source would otherwise
    /// hold the latch for up to [`RELATCH_AFTER`] while the peer listens elsewhere.
    pub fn retarget(&mut self, sdp_remote: Option<SocketAddr>, signalling_ip: IpAddr) {
        let old = std::mem::replace(self, Latch::new(sdp_remote, signalling_ip));
        if old.sdp == self.sdp {
            self.latched = old.latched.filter(|l| self.allows(l.source));
        }
    }

    /// Whether packets from `source` may feed this call at all.
    pub fn allows(&self, source: SocketAddr) -> bool {
        let source = canonical(source);
        Some(source) == self.sdp || source.ip() == self.signalling_ip
    }

    /// Offers a valid RTP packet from `source` at `now`; true if the call takes it. Latches
    /// onto `source` when nothing is latched, when `source` is the exact SDP address, or when
    /// the latched source has been silent for [`RELATCH_AFTER`].
    pub fn observe(&mut self, now: Instant, source: SocketAddr) -> bool {
        if !self.allows(source) {
            return false;
        }
        let source = canonical(source);
        let take = match self.latched {
            None => true,
            Some(l) if l.source == source => true,
            Some(l) => {
                Some(source) == self.sdp
                    || now.saturating_duration_since(l.last_seen) >= RELATCH_AFTER
            }
        };
        if take {
            self.latched = Some(Latched {
                source,
                last_seen: now,
            });
        }
        take
    }

    /// Where to send: the latched source, else the SDP address, else nowhere yet.
    pub fn destination(&self) -> Option<SocketAddr> {
        self.latched.map(|l| l.source).or(self.sdp)
    }

    /// The source we latched onto, if any.
    pub fn latched(&self) -> Option<SocketAddr> {
        self.latched.map(|l| l.source)
    }
}

fn is_usable(addr: &SocketAddr) -> bool {
    !addr.ip().is_unspecified() && addr.port() != 0
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`, seen on dual-stack sockets) compares as IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::net::Ipv4Addr;

    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn header() -> RtpHeader {
        RtpHeader {
            payload_type: PayloadType(0),
            marker: true,
            sequence: 0x1234,
            timestamp: 0xdead_beef,
            ssrc: Ssrc(0x0102_0304),
        }
    }

    #[test]
    fn writes_the_fixed_header_byte_for_byte() {
        let mut buf = [0u8; MAX_PACKET_LEN];
        let len = header().write(&[0xff; 4], &mut buf).unwrap();
        assert_eq!(
            &buf[..len],
            &[
                0x80, 0x80, 0x12, 0x34, 0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04, 0xff, 0xff,
                0xff, 0xff
            ]
        );
    }

    #[test]
    fn parses_what_it_writes() {
        let mut buf = [0u8; MAX_PACKET_LEN];
        let payload = [0xd5; FRAME_SAMPLES];
        let len = header().write(&payload, &mut buf).unwrap();
        assert_eq!(len, MAX_PACKET_LEN);
        let packet = RtpPacket::parse(&buf[..len]).unwrap();
        assert_eq!(packet.header, header());
        assert_eq!(packet.payload, &payload[..]);
    }

    #[test]
    fn write_refuses_a_small_buffer_and_a_wide_payload_type() {
        let mut small = [0u8; 20];
        assert_eq!(
            header().write(&[0; 160], &mut small),
            Err(RtpError::BufferTooSmall {
                need: 172,
                have: 20
            })
        );
        let wide = RtpHeader {
            payload_type: PayloadType(128),
            ..header()
        };
        assert_eq!(
            wide.write(&[], &mut [0u8; 64]),
            Err(RtpError::InvalidPayloadType(128))
        );
    }

    #[test]
    fn parse_skips_csrcs_extension_and_padding() {
        // V=2 P=1 X=1 CC=1, PT 8, seq 1, ts 2, ssrc 3, one CSRC, a one-word extension,
        // payload [7, 7], then 2 bytes of padding.
        let datagram = [
            0xb1, 0x08, 0x00, 0x01, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x03, // fixed
            0x00, 0x00, 0x00, 0x09, // CSRC
            0xbe, 0xde, 0x00, 0x01, 0xaa, 0xbb, 0xcc, 0xdd, // extension
            0x07, 0x07, // payload
            0x00, 0x02, // padding
        ];
        let packet = RtpPacket::parse(&datagram).unwrap();
        assert_eq!(packet.header.payload_type, PayloadType(8));
        assert_eq!(packet.header.timestamp, 2);
        assert_eq!(packet.payload, &[7, 7]);
    }

    #[test]
    fn parse_names_what_is_wrong() {
        assert_eq!(RtpPacket::parse(&[0x80; 5]), Err(RtpError::TooShort(5)));
        assert_eq!(
            RtpPacket::parse(&[0x40; 12]),
            Err(RtpError::UnsupportedVersion(1))
        );
        // CC=15 promises 60 bytes of CSRCs.
        assert_eq!(
            RtpPacket::parse(&[0x8f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(RtpError::Truncated {
                header_len: 72,
                datagram_len: 14
            })
        );
        // Padding says 0 bytes, which cannot be (it counts itself).
        let mut padded = [0u8; 13];
        padded[0] = 0xa0;
        assert_eq!(RtpPacket::parse(&padded), Err(RtpError::InvalidPadding(0)));
        // An RTCP receiver report (PT 201) multiplexed onto the RTP port.
        let rr = [0x80, 201, 0x00, 0x01, 0, 0, 0, 1];
        assert_eq!(RtpPacket::parse(&rr), Err(RtpError::Rtcp(201)));
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(packet) = RtpPacket::parse(&bytes) {
                prop_assert!(packet.payload.len() + HEADER_LEN <= bytes.len());
            }
        }

        #[test]
        fn parse_never_panics_on_version_2(mut bytes in proptest::collection::vec(any::<u8>(), 12..120)) {
            bytes[0] = 0x80 | (bytes[0] & 0x3f);
            let _ = RtpPacket::parse(&bytes);
        }

        #[test]
        fn header_round_trips(
            pt in 0u8..128, marker: bool, sequence: u16, timestamp: u32, ssrc: u32,
            payload in proptest::collection::vec(any::<u8>(), 0..=FRAME_SAMPLES),
        ) {
            prop_assume!(!(marker && (64..96).contains(&pt)), "RTCP-shaped by RFC 5761");
            let header = RtpHeader { payload_type: PayloadType(pt), marker, sequence, timestamp, ssrc: Ssrc(ssrc) };
            let mut buf = [0u8; MAX_PACKET_LEN];
            let len = header.write(&payload, &mut buf).unwrap();
            let packet = RtpPacket::parse(&buf[..len]).unwrap();
            prop_assert_eq!(packet.header, header);
            prop_assert_eq!(packet.payload, &payload[..]);
        }
    }

    fn send(sender: &mut RtpSender) -> RtpHeader {
        let mut buf = [0u8; MAX_PACKET_LEN];
        let len = sender
            .write(
                PayloadType(0),
                &[0xff; FRAME_SAMPLES],
                FRAME_TIMESTAMP_STEP,
                &mut buf,
            )
            .unwrap();
        RtpPacket::parse(&buf[..len]).unwrap().header
    }

    #[test]
    fn sender_steps_one_packet_and_160_samples_and_marks_only_the_first() {
        let mut sender = RtpSender::from_state(Ssrc(7), 100, 1000);
        let headers: Vec<_> = (0..3).map(|_| send(&mut sender)).collect();
        assert_eq!(
            headers
                .iter()
                .map(|h| (h.marker, h.sequence, h.timestamp, h.ssrc))
                .collect::<Vec<_>>(),
            [
                (true, 100, 1000, Ssrc(7)),
                (false, 101, 1160, Ssrc(7)),
                (false, 102, 1320, Ssrc(7))
            ]
        );
    }

    #[test]
    fn sender_wraps_sequence_and_timestamp() {
        let mut sender = RtpSender::from_state(Ssrc(1), 0xffff, u32::MAX - 100);
        send(&mut sender);
        let h = send(&mut sender);
        assert_eq!((h.sequence, h.timestamp), (0, 59));
    }

    #[test]
    fn time_without_packets_moves_the_timestamp_only_and_marks_the_next_packet() {
        let mut sender = RtpSender::from_state(Ssrc(1), 10, 0);
        send(&mut sender);
        for _ in 0..50 {
            sender.skip(FRAME_TIMESTAMP_STEP);
        }
        let h = send(&mut sender);
        assert_eq!((h.marker, h.sequence, h.timestamp), (true, 11, 51 * 160));
        assert!(!send(&mut sender).marker);
        sender.restart_talkspurt();
        let h = send(&mut sender);
        assert_eq!((h.marker, h.sequence, h.timestamp), (true, 13, 53 * 160));
    }

    #[test]
    fn a_failed_write_leaves_the_stream_where_it_was() {
        let mut sender = RtpSender::from_state(Ssrc(1), 10, 0);
        let before = sender.clone();
        assert!(
            sender
                .write(PayloadType(0), &[0; 160], 160, &mut [0u8; 8])
                .is_err()
        );
        assert_eq!(sender, before);
    }

    #[test]
    fn senders_start_at_random_points() {
        let mut rng = StdRng::seed_from_u64(1);
        let a = RtpSender::new(&mut rng).next_header(PayloadType(0));
        let b = RtpSender::new(&mut rand::rng()).next_header(PayloadType(0));
        let c = RtpSender::new(&mut rand::rng()).next_header(PayloadType(0));
        assert_ne!(
            (a.ssrc, a.sequence, a.timestamp),
            (b.ssrc, b.sequence, b.timestamp)
        );
        assert_ne!(
            (b.ssrc, b.sequence, b.timestamp),
            (c.ssrc, c.sequence, c.timestamp)
        );
        assert!(a.marker);
    }

    #[test]
    fn pool_holds_even_ports_whose_rtcp_partner_is_in_range() {
        let mut pool = PortPool::new(41001..=41008).unwrap();
        assert_eq!(pool.capacity(), 3);
        let ports: Vec<_> = (0..3).map(|_| pool.allocate().unwrap()).collect();
        assert_eq!(ports, [41002, 41004, 41006]);
        assert_eq!(
            pool.allocate(),
            Err(PortPoolError::Exhausted { capacity: 3 })
        );
        assert_eq!(PortPool::new(0..=3).unwrap().capacity(), 1); // 2 and 3; never port 0
        assert_eq!(PortPool::new(65534..=65535).unwrap().capacity(), 1);
        assert_eq!(
            PortPool::new(41000..=41000).unwrap_err(),
            PortPoolError::Empty {
                start: 41000,
                end: 41000
            }
        );
        assert!(PortPool::new(41001..=41002).is_err());
        assert!(PortPool::new(0..=1).is_err());
    }

    #[test]
    fn pool_goes_round_robin_so_a_released_port_is_reused_last() {
        let mut pool = PortPool::new(41000..=41009).unwrap(); // 41000, 41002, …, 41008
        assert_eq!(pool.allocate(), Ok(41000));
        assert_eq!(pool.allocate(), Ok(41002));
        assert!(pool.release(41000));
        assert_eq!(pool.allocate(), Ok(41004));
        assert_eq!(pool.allocate(), Ok(41006));
        assert_eq!(pool.allocate(), Ok(41008));
        assert_eq!(pool.allocate(), Ok(41000)); // wrapped round to the free one
        assert_eq!(pool.in_use(), 5);
    }

    #[test]
    fn pool_refuses_foreign_and_double_releases() {
        let mut pool = PortPool::new(41000..=41009).unwrap();
        let port = pool.allocate().unwrap();
        assert!(!pool.release(41001), "odd");
        assert!(!pool.release(41010), "out of range");
        assert!(!pool.release(40998), "below range");
        assert!(!pool.release(41002), "not in use");
        assert!(pool.release(port));
        assert!(!pool.release(port), "double release");
        assert_eq!(pool.in_use(), 0);
    }

    proptest! {
        #[test]
        fn pool_never_hands_out_a_port_twice(ops in proptest::collection::vec(any::<(bool, u8)>(), 0..400)) {
            let mut pool = PortPool::new(41000..=41063).unwrap();
            let mut held: Vec<u16> = Vec::new();
            for (alloc, pick) in ops {
                if alloc || held.is_empty() {
                    match pool.allocate() {
                        Ok(port) => {
                            prop_assert!(!held.contains(&port));
                            prop_assert!(port % 2 == 0 && (41000..41063).contains(&port));
                            held.push(port);
                        }
                        Err(_) => prop_assert_eq!(held.len(), pool.capacity()),
                    }
                } else {
                    let port = held.swap_remove(usize::from(pick) % held.len());
                    prop_assert!(pool.release(port));
                }
                prop_assert_eq!(pool.in_use(), held.len());
            }
            let unique: HashSet<_> = held.iter().collect();
            prop_assert_eq!(unique.len(), held.len());
        }
    }

    fn addr(ip: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::from((ip, port))
    }

    const SIGNALLING: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5));

    #[test]
    fn latch_accepts_the_sdp_address_and_the_signalling_ip_only() {
        let latch = Latch::new(Some(addr([192, 168, 1, 10], 4000)), SIGNALLING);
        assert!(latch.allows(addr([192, 168, 1, 10], 4000)));
        assert!(latch.allows(addr([203, 0, 113, 5], 61000)));
        assert!(!latch.allows(addr([192, 168, 1, 10], 4002)), "other port");
        assert!(!latch.allows(addr([198, 51, 100, 1], 4000)), "other host");
        let mapped: SocketAddr = "[::ffff:203.0.113.5]:7000".parse().unwrap();
        assert!(latch.allows(mapped), "IPv4-mapped IPv6 is the same host");
    }

    #[test]
    fn latch_sends_to_the_sdp_address_until_a_packet_arrives_then_to_its_source() {
        let t0 = Instant::now();
        let mut latch = Latch::new(Some(addr([192, 168, 1, 10], 4000)), SIGNALLING);
        assert_eq!(latch.destination(), Some(addr([192, 168, 1, 10], 4000)));
        assert!(!latch.observe(t0, addr([198, 51, 100, 1], 4000)));
        assert_eq!(latch.latched(), None);
        assert!(latch.observe(t0, addr([203, 0, 113, 5], 61000)));
        assert_eq!(latch.destination(), Some(addr([203, 0, 113, 5], 61000)));
    }

    #[test]
    fn a_live_latch_is_not_stolen_except_by_the_sdp_address() {
        let t0 = Instant::now();
        let nat = addr([203, 0, 113, 5], 61000);
        let stray = addr([203, 0, 113, 5], 62000);
        let sdp = addr([192, 168, 1, 10], 4000);
        let mut latch = Latch::new(Some(sdp), SIGNALLING);
        assert!(latch.observe(t0, nat));
        assert!(!latch.observe(t0 + Duration::from_millis(500), stray));
        assert!(latch.observe(t0 + Duration::from_millis(1500), nat));
        assert!(!latch.observe(t0 + Duration::from_millis(3000), stray));
        assert_eq!(latch.latched(), Some(nat));
        // Silent for RELATCH_AFTER: the other accepted source takes over.
        assert!(latch.observe(t0 + Duration::from_millis(1500) + RELATCH_AFTER, stray));
        assert_eq!(latch.destination(), Some(stray));
        // The exact SDP address always wins.
        assert!(latch.observe(t0 + Duration::from_millis(3600), sdp));
        assert_eq!(latch.latched(), Some(sdp));
    }

    #[test]
    fn null_sdp_address_names_no_destination() {
        let latch = Latch::new(Some(addr([0, 0, 0, 0], 4000)), SIGNALLING);
        assert_eq!(latch.destination(), None);
        assert!(!latch.allows(addr([0, 0, 0, 0], 4000)));
        let latch = Latch::new(Some(addr([192, 168, 1, 10], 0)), SIGNALLING);
        assert_eq!(latch.destination(), None);
    }

    #[test]
    fn retarget_keeps_the_latch_only_for_the_same_sdp_address_and_accepted_source() {
        let t0 = Instant::now();
        let nat = addr([203, 0, 113, 5], 61000);
        let sdp = addr([192, 168, 1, 10], 4000);
        let mut latch = Latch::new(Some(sdp), SIGNALLING);
        assert!(latch.observe(t0, nat));
        latch.retarget(Some(sdp), SIGNALLING); // hold, resume
        assert_eq!(latch.destination(), Some(nat));
        // The phone moved its media to another port: send there until it speaks.
        latch.retarget(Some(addr([192, 168, 1, 10], 4002)), SIGNALLING);
        assert_eq!(latch.destination(), Some(addr([192, 168, 1, 10], 4002)));
        assert!(latch.observe(t0, nat));
        // Signalling now from elsewhere: the old source is no longer accepted.
        latch.retarget(
            Some(addr([192, 168, 1, 10], 4002)),
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
        );
        assert_eq!(latch.latched(), None);
        latch.retarget(
            Some(addr([198, 51, 100, 7], 30000)),
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
        );
        assert_eq!(latch.latched(), None);
        assert_eq!(latch.destination(), Some(addr([198, 51, 100, 7], 30000)));
    }
}
