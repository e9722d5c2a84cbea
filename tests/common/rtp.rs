//! The caller's media side: an RTP socket on 127.0.0.1 that receives and parses the server's
//! packets (RFC 3550 §5.1), checks their rhythm and numbering, decodes G.711 with our own
//! decoder, and sends 20 ms frames back from the same socket (symmetric RTP, so a server
//! that latches on the source address keeps sending to us).

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::g711;

/// Samples per 20 ms frame at 8 kHz: the RTP timestamp step per packet.
pub const FRAME_SAMPLES: u32 = 160;
/// Packet interval for 20 ms packetisation.
pub const PTIME: Duration = Duration::from_millis(20);
/// Upper bound on packets one receiver keeps (10 minutes at 50/s): bounds memory and loops.
const MAX_PACKETS: usize = 30_000;

/// One received RTP packet.
#[derive(Clone, Debug, PartialEq)]
pub struct RtpPacket {
    pub version: u8,
    pub padding: bool,
    pub extension: bool,
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub csrcs: Vec<u32>,
    pub payload: Vec<u8>,
    /// Arrival time at our socket.
    pub received_at: Instant,
    /// Who sent it.
    pub source: SocketAddr,
}

impl RtpPacket {
    /// Parses an RTP packet (RFC 3550 §5.1): fixed header, CSRC list, header extension
    /// (skipped) and padding (removed).
    pub fn parse(
        bytes: &[u8],
        received_at: Instant,
        source: SocketAddr,
    ) -> Result<RtpPacket, String> {
        if bytes.len() < 12 {
            return Err(format!(
                "{} bytes is shorter than an RTP header",
                bytes.len()
            ));
        }
        let version = bytes[0] >> 6;
        let padding = bytes[0] & 0x20 != 0;
        let extension = bytes[0] & 0x10 != 0;
        let csrc_count = usize::from(bytes[0] & 0x0f);
        let marker = bytes[1] & 0x80 != 0;
        let payload_type = bytes[1] & 0x7f;
        let sequence = u16::from_be_bytes([bytes[2], bytes[3]]);
        let timestamp = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        let ssrc = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        let mut at = 12 + 4 * csrc_count;
        if bytes.len() < at {
            return Err(format!("CSRC count {csrc_count} overruns the packet"));
        }
        let csrcs = bytes[12..at]
            .chunks(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if extension {
            if bytes.len() < at + 4 {
                return Err("extension header overruns the packet".into());
            }
            let words = usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]));
            at += 4 + 4 * words;
            if bytes.len() < at {
                return Err("extension overruns the packet".into());
            }
        }
        let mut end = bytes.len();
        if padding {
            let pad = usize::from(bytes[end - 1]);
            if pad == 0 || end - at < pad {
                return Err(format!("bad padding count {pad}"));
            }
            end -= pad;
        }
        Ok(RtpPacket {
            version,
            padding,
            extension,
            marker,
            payload_type,
            sequence,
            timestamp,
            ssrc,
            csrcs,
            payload: bytes[at..end].to_vec(),
            received_at,
            source,
        })
    }

    /// Serialises a plain packet (no CSRCs, extension or padding).
    pub fn build(
        payload_type: u8,
        marker: bool,
        sequence: u16,
        timestamp: u32,
        ssrc: u32,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + payload.len());
        out.push(0x80);
        out.push((u8::from(marker) << 7) | (payload_type & 0x7f));
        out.extend_from_slice(&sequence.to_be_bytes());
        out.extend_from_slice(&timestamp.to_be_bytes());
        out.extend_from_slice(&ssrc.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }
}

/// A UDP socket on 127.0.0.1 that plays the caller's media endpoint.
pub struct RtpReceiver {
    socket: UdpSocket,
    /// Datagrams that did not parse as RTP.
    pub malformed: Vec<(SocketAddr, Vec<u8>)>,
    received: usize,
}

impl RtpReceiver {
    /// Binds a fresh port on 127.0.0.1 (the port goes into the SDP offer).
    pub fn bind() -> RtpReceiver {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("binding an RTP socket on 127.0.0.1");
        RtpReceiver {
            socket,
            malformed: Vec::new(),
            received: 0,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.socket
            .local_addr()
            .expect("bound socket has an address")
    }

    /// Waits at most `timeout` for one packet.
    pub fn recv_one(&mut self, timeout: Duration) -> Option<RtpPacket> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 2048];
        // Each iteration either returns or consumes one datagram / the remaining time.
        for _ in 0..MAX_PACKETS {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.socket
                .set_read_timeout(Some(left))
                .expect("set_read_timeout");
            match self.socket.recv_from(&mut buf) {
                Ok((n, from)) => match RtpPacket::parse(&buf[..n], Instant::now(), from) {
                    Ok(p) => {
                        self.received += 1;
                        return Some(p);
                    }
                    Err(_) => self.keep_malformed(from, &buf[..n]),
                },
                Err(e) if is_timeout(&e) => return None,
                Err(e) => panic!("RTP recv on {}: {e}", self.addr()),
            }
        }
        None
    }

    /// Collects every packet that arrives during `window` (at most [`MAX_PACKETS`]).
    pub fn recv_for(&mut self, window: Duration) -> Vec<RtpPacket> {
        let deadline = Instant::now() + window;
        let mut out = Vec::new();
        while out.len() < MAX_PACKETS {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.recv_one(left) {
                Some(p) => out.push(p),
                None => break,
            }
        }
        out
    }

    /// Collects packets until `enough` says so or `timeout` passes; returns what arrived.
    pub fn recv_until(
        &mut self,
        timeout: Duration,
        mut enough: impl FnMut(&[RtpPacket]) -> bool,
    ) -> Vec<RtpPacket> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < MAX_PACKETS && !enough(&out) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_one(left) {
                Some(p) => out.push(p),
                None => break,
            }
        }
        out
    }

    /// Waits until no packet has arrived for `quiet`, at most `timeout` in all. Returns the
    /// packets drained meanwhile, or `Err` with them if the stream never went quiet.
    pub fn wait_quiet(
        &mut self,
        quiet: Duration,
        timeout: Duration,
    ) -> Result<Vec<RtpPacket>, Vec<RtpPacket>> {
        let deadline = Instant::now() + timeout;
        let mut drained = Vec::new();
        while drained.len() < MAX_PACKETS {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(drained);
            }
            match self.recv_one(quiet.min(left)) {
                Some(p) => drained.push(p),
                None if left >= quiet => return Ok(drained),
                None => return Err(drained),
            }
        }
        Err(drained)
    }

    /// Starts sending 20 ms frames from this socket to `dest` (see [`RtpSender`]).
    pub fn start_sending(
        &self,
        dest: SocketAddr,
        payload_type: u8,
        signal: Signal,
        max_duration: Duration,
    ) -> RtpSender {
        let socket = self.socket.try_clone().expect("cloning the RTP socket");
        RtpSender::start(socket, dest, payload_type, signal, max_duration)
    }

    /// Another handle on this socket, to send from it on another thread while this one
    /// receives (the server sees one source).
    pub fn clone_socket(&self) -> UdpSocket {
        self.socket.try_clone().expect("cloning the RTP socket")
    }

    /// Sends one datagram from this socket (symmetric RTP: the server latches onto it).
    pub fn send_to(&self, dest: SocketAddr, bytes: &[u8]) {
        self.socket
            .send_to(bytes, dest)
            .unwrap_or_else(|e| panic!("RTP send from {} to {dest}: {e}", self.addr()));
    }

    /// Sends `packets` from this socket on their 20 ms slots (see [`Pacer`]), in the order
    /// given; blocks until the last is sent (at most the last slot × 20 ms).
    pub fn send_plan(&self, dest: SocketAddr, packets: &[PlannedPacket]) {
        let pacer = Pacer::start();
        let first = packets.first().map_or(0, |p| p.slot);
        for p in packets {
            pacer.wait_for(p.slot.saturating_sub(first));
            self.send_to(dest, &p.bytes);
        }
    }

    /// Packets parsed so far over this receiver's life.
    pub fn received(&self) -> usize {
        self.received
    }

    fn keep_malformed(&mut self, from: SocketAddr, bytes: &[u8]) {
        if self.malformed.len() < 100 {
            self.malformed.push((from, bytes.to_vec()));
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// What an [`RtpSender`] puts in its frames.
#[derive(Clone, Copy, Debug)]
pub enum Signal {
    Silence,
    /// A sine tone: frequency in Hz, peak amplitude in 16-bit linear units.
    Tone {
        hz: f64,
        amplitude: i16,
    },
}

impl Signal {
    fn sample(self, n: u64) -> i16 {
        match self {
            Signal::Silence => 0,
            Signal::Tone { hz, amplitude } => {
                let t = n as f64 / 8000.0;
                (f64::from(amplitude) * (2.0 * std::f64::consts::PI * hz * t).sin()) as i16
            }
        }
    }
}

/// Sends one 20 ms G.711 frame every 20 ms (PT 0 = PCMU or 8 = PCMA) on a background
/// thread, until stopped or `max_duration` has passed. Stops on drop.
pub struct RtpSender {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u32>>,
}

impl RtpSender {
    pub fn start(
        socket: UdpSocket,
        dest: SocketAddr,
        payload_type: u8,
        signal: Signal,
        max_duration: Duration,
    ) -> RtpSender {
        let encode: fn(i16) -> u8 = match payload_type {
            0 => g711::encode_ulaw,
            8 => g711::encode_alaw,
            other => panic!("RtpSender speaks PCMU (0) or PCMA (8), not PT {other}"),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let ssrc = 0x5eed_0000 | (std::process::id() & 0xffff);
            let start = Instant::now();
            let frames = (max_duration.as_millis() / PTIME.as_millis()) as u32;
            let mut sent = 0u32;
            let mut frame = [0u8; FRAME_SAMPLES as usize];
            for i in 0..frames {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                for (k, b) in frame.iter_mut().enumerate() {
                    *b = encode(signal.sample(u64::from(i * FRAME_SAMPLES) + k as u64));
                }
                let pkt = RtpPacket::build(
                    payload_type,
                    i == 0,
                    i as u16,
                    i.wrapping_mul(FRAME_SAMPLES),
                    ssrc,
                    &frame,
                );
                if socket.send_to(&pkt, dest).is_ok() {
                    sent += 1;
                }
                // Absolute schedule: frame i+1 leaves at start + (i+1)·20 ms.
                let next = start + PTIME * (i + 1);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            sent
        });
        RtpSender {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sending; returns how many packets went out.
    pub fn stop(mut self) -> u32 {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> u32 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().expect("RTP sender thread panicked"))
            .unwrap_or(0)
    }
}

impl Drop for RtpSender {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// RFC 4733 §3.2 event codes of the keypad: `0`–`9` are 0–9, `*` 10, `#` 11, `A`–`D` 12–15.
pub fn event_code(key: char) -> u8 {
    match key.to_ascii_uppercase() {
        k @ '0'..='9' => k as u8 - b'0',
        '*' => 10,
        '#' => 11,
        k @ 'A'..='D' => 12 + (k as u8 - b'A'),
        other => panic!("{other:?} is not a DTMF key"),
    }
}

/// One RFC 4733 event block (§2.3): event code, E bit, volume in −dBm0 (6 bits, R bit
/// clear), duration in 8 kHz timestamp units.
pub fn telephone_event(event: u8, end: bool, volume: u8, duration: u16) -> [u8; 4] {
    let [d0, d1] = duration.to_be_bytes();
    [event, (u8::from(end) << 7) | (volume & 0x3f), d0, d1]
}

/// What a planned packet is, so a test can drop, repeat or reorder packets by their role
/// the way a network would.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketRole {
    /// A 20 ms audio frame.
    Audio,
    /// The first packet of key press `press` (0-based within the plan): marker set.
    EventStart { press: usize },
    /// Update `n` (1-based) of press `press`: same timestamp, longer duration.
    EventUpdate { press: usize, n: u32 },
    /// Copy `copy` (0, 1, 2) of the final packet of press `press`: E bit set.
    EventEnd { press: usize, copy: u32 },
}

impl PacketRole {
    /// The key press this packet belongs to, if it is a telephone-event packet.
    pub fn press(self) -> Option<usize> {
        match self {
            PacketRole::Audio => None,
            PacketRole::EventStart { press }
            | PacketRole::EventUpdate { press, .. }
            | PacketRole::EventEnd { press, .. } => Some(press),
        }
    }
}

/// One RTP packet of a [`MediaPlan`], due at `slot` × 20 ms after the plan starts.
#[derive(Clone, Debug)]
pub struct PlannedPacket {
    pub slot: u32,
    pub role: PacketRole,
    pub bytes: Vec<u8>,
}

/// A caller's media stream planned ahead: 20 ms audio frames and RFC 4733 key presses on
/// one SSRC, sharing sequence numbers and the 8 kHz timestamp clock, as a phone sends them
/// (RFC 4733 §2.5.1):
///
/// - a key press is one event whose packets all carry the RTP timestamp of its start: a
///   start packet with the marker bit, updates every 20 ms with a growing duration, and
///   the final packet (E bit, full duration) three times, 20 ms apart (§2.5.1.4);
/// - no audio is sent while a key is down; the audio timestamps go on counting meanwhile;
/// - every packet has the next sequence number, retransmitted end packets included.
///
/// The plan is data: a test takes the packets ([`MediaPlan::take_packets`]), drops,
/// repeats or reorders them, and sends them with [`RtpReceiver::send_plan`].
#[derive(Clone, Debug)]
pub struct MediaPlan {
    audio_pt: u8,
    encode: fn(i16) -> u8,
    ssrc: u32,
    sequence: u16,
    /// RTP timestamp of the next 20 ms slot.
    timestamp: u32,
    slot: u32,
    presses: usize,
    /// The next audio packet starts a talkspurt (marker bit).
    talkspurt: bool,
    /// RFC 4733 §2.3.4 volume of the events, in −dBm0.
    volume: u8,
    packets: Vec<PlannedPacket>,
}

impl MediaPlan {
    /// An empty plan for audio in PCMU (PT 0) or PCMA (PT 8), starting at sequence number 1
    /// and timestamp 0.
    pub fn new(audio_pt: u8) -> MediaPlan {
        let encode: fn(i16) -> u8 = match audio_pt {
            0 => g711::encode_ulaw,
            8 => g711::encode_alaw,
            other => panic!("MediaPlan speaks PCMU (0) or PCMA (8), not PT {other}"),
        };
        MediaPlan {
            audio_pt,
            encode,
            ssrc: 0x7e57_0000 | (std::process::id() & 0xffff),
            sequence: 1,
            timestamp: 0,
            slot: 0,
            presses: 0,
            talkspurt: true,
            volume: 10,
            packets: Vec::new(),
        }
    }

    /// Starts the numbering elsewhere (e.g. just before the 16- and 32-bit wraps).
    pub fn starting_at(&mut self, sequence: u16, timestamp: u32) -> &mut Self {
        self.sequence = sequence;
        self.timestamp = timestamp;
        self
    }

    /// `frames` frames of digital silence.
    pub fn silence(&mut self, frames: u32) -> &mut Self {
        self.audio(&vec![0; (frames * FRAME_SAMPLES) as usize])
    }

    /// `samples` (8 kHz linear) as 20 ms frames; a short last frame is padded with silence.
    pub fn audio(&mut self, samples: &[i16]) -> &mut Self {
        for chunk in samples.chunks(FRAME_SAMPLES as usize) {
            let mut frame: Vec<u8> = chunk.iter().map(|&s| (self.encode)(s)).collect();
            frame.resize(FRAME_SAMPLES as usize, (self.encode)(0));
            let marker = std::mem::take(&mut self.talkspurt);
            self.push(
                PacketRole::Audio,
                self.audio_pt,
                marker,
                self.timestamp,
                frame,
            );
        }
        self
    }

    /// One key press as RFC 4733 events on `event_pt`: the start packet and `frames - 1`
    /// updates (the key is down `frames` × 20 ms), then the end packet three times.
    pub fn key_press(&mut self, event_pt: u8, key: char, frames: u32) -> &mut Self {
        assert!(frames >= 1, "a key press lasts at least one packet");
        let code = event_code(key);
        let press = self.presses;
        self.presses += 1;
        let start = self.timestamp;
        for i in 0..frames {
            let duration = u16::try_from((i + 1) * FRAME_SAMPLES).expect("short key press");
            let role = if i == 0 {
                PacketRole::EventStart { press }
            } else {
                PacketRole::EventUpdate { press, n: i }
            };
            let payload = telephone_event(code, false, self.volume, duration);
            self.push(role, event_pt, i == 0, start, payload.to_vec());
        }
        let full = u16::try_from(frames * FRAME_SAMPLES).expect("short key press");
        for copy in 0..3 {
            let payload = telephone_event(code, true, self.volume, full);
            let role = PacketRole::EventEnd { press, copy };
            self.push(role, event_pt, false, start, payload.to_vec());
        }
        // Audio after the event starts a new talkspurt.
        self.talkspurt = true;
        self
    }

    /// Each key of `keys` as a key press of `frames` frames, followed by `gap_frames` frames
    /// of silence.
    pub fn key_presses(
        &mut self,
        event_pt: u8,
        keys: &str,
        frames: u32,
        gap_frames: u32,
    ) -> &mut Self {
        for key in keys.chars() {
            self.key_press(event_pt, key, frames).silence(gap_frames);
        }
        self
    }

    /// The packets planned since the last take, in slot order; the plan goes on from where
    /// it stands (numbering, slots, press count).
    pub fn take_packets(&mut self) -> Vec<PlannedPacket> {
        std::mem::take(&mut self.packets)
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Appends one packet in the next slot, advancing sequence number and timestamp clock.
    fn push(&mut self, role: PacketRole, pt: u8, marker: bool, timestamp: u32, payload: Vec<u8>) {
        let bytes = RtpPacket::build(pt, marker, self.sequence, timestamp, self.ssrc, &payload);
        self.packets.push(PlannedPacket {
            slot: self.slot,
            role,
            bytes,
        });
        self.sequence = self.sequence.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(FRAME_SAMPLES);
        self.slot += 1;
    }
}

/// Sends at an absolute 20 ms schedule: slot `n` is due `n` × 20 ms after the start, so a
/// late slot does not delay the ones after it.
pub struct Pacer {
    start: Instant,
}

impl Pacer {
    pub fn start() -> Pacer {
        Pacer {
            start: Instant::now(),
        }
    }

    /// Sleeps until `slot` is due (at once if it is past).
    pub fn wait_for(&self, slot: u32) {
        let due = self.start + PTIME * slot;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
}

/// Checks that `packets` form one clean 20 ms stream: version 2, one SSRC, one payload
/// type, sequence numbers +1 and timestamps +160 per packet (both wrapping). A marker bit or
/// a timestamp jump at a talk spurt is not expected from a prompt player, so any gap is an
/// error. Returns a description of the first violation.
pub fn check_stream(packets: &[RtpPacket]) -> Result<(), String> {
    let Some(first) = packets.first() else {
        return Err("no packets".into());
    };
    for (i, p) in packets.iter().enumerate() {
        if p.version != 2 {
            return Err(format!("packet {i}: version {}", p.version));
        }
        if p.ssrc != first.ssrc {
            return Err(format!(
                "packet {i}: SSRC {:#x} != {:#x}",
                p.ssrc, first.ssrc
            ));
        }
        if p.payload_type != first.payload_type {
            return Err(format!(
                "packet {i}: PT {} != {}",
                p.payload_type, first.payload_type
            ));
        }
        if p.payload.len() != FRAME_SAMPLES as usize {
            return Err(format!(
                "packet {i}: {} payload bytes, want {FRAME_SAMPLES} (20 ms)",
                p.payload.len()
            ));
        }
    }
    for (i, w) in packets.windows(2).enumerate() {
        let (a, b) = (&w[0], &w[1]);
        if b.sequence != a.sequence.wrapping_add(1) {
            return Err(format!(
                "packets {i}->{}: sequence {} -> {}",
                i + 1,
                a.sequence,
                b.sequence
            ));
        }
        if b.timestamp != a.timestamp.wrapping_add(FRAME_SAMPLES) {
            return Err(format!(
                "packets {i}->{}: timestamp {} -> {} (want +{FRAME_SAMPLES})",
                i + 1,
                a.timestamp,
                b.timestamp
            ));
        }
    }
    Ok(())
}

/// How many of `packets` arrived within `window` after `from`.
pub fn count_in_window(packets: &[RtpPacket], from: Instant, window: Duration) -> usize {
    packets
        .iter()
        .filter(|p| p.received_at >= from && p.received_at < from + window)
        .count()
}

/// Packets per second between the first and the last arrival (0 for fewer than two).
pub fn packet_rate(packets: &[RtpPacket]) -> f64 {
    let (Some(first), Some(last)) = (packets.first(), packets.last()) else {
        return 0.0;
    };
    let span = last
        .received_at
        .duration_since(first.received_at)
        .as_secs_f64();
    if packets.len() < 2 || span == 0.0 {
        return 0.0;
    }
    (packets.len() - 1) as f64 / span
}

/// Concatenates the decoded G.711 payloads of `packets` (PT 0 and 8; others skipped).
pub fn decode_stream(packets: &[RtpPacket]) -> Vec<i16> {
    packets
        .iter()
        .filter_map(|p| g711::decode_payload(p.payload_type, &p.payload))
        .flatten()
        .collect()
}

/// Where the reference sits best inside the received signal.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Alignment {
    /// Index in `received` where `reference[0]` lands (negative: the reference started
    /// before the received signal).
    pub lag: isize,
    /// Normalised cross-correlation over the overlap, in [-1, 1].
    pub correlation: f64,
    /// Samples in the overlap.
    pub overlap: usize,
}

/// Mean square below which an overlap counts as silence (RMS ≈ 32, about −60 dBFS: the
/// G.711 silence codes decode to 0 or ±8).
const SILENCE_MEAN_SQUARE: f64 = 1000.0;

/// The highest normalised cross-correlation between `received` and `reference` over all
/// alignments whose overlap is at least 0.5 s (or the shorter signal, if shorter) and is not
/// silence on either side. 1.0 means `received` contains the reference up to gain; speech
/// heard through G.711 and a different resampler scores well above 0.8, unrelated sound
/// near 0. Returns 0.0 when no alignment qualifies.
pub fn best_correlation(received: &[i16], reference: &[i16]) -> f64 {
    let min_overlap = 4000.min(received.len()).min(reference.len());
    best_alignment(received, reference, min_overlap).map_or(0.0, |a| a.correlation)
}

/// The alignment behind [`best_correlation`], computed with an FFT so a few seconds of
/// audio take milliseconds even in debug builds.
pub fn best_alignment(
    received: &[i16],
    reference: &[i16],
    min_overlap: usize,
) -> Option<Alignment> {
    let (nr, nx) = (received.len(), reference.len());
    if nr == 0 || nx == 0 || min_overlap == 0 {
        return None;
    }
    let r: Vec<f64> = received.iter().map(|&s| f64::from(s)).collect();
    let x: Vec<f64> = reference.iter().map(|&s| f64::from(s)).collect();
    let raw = cross_correlation(&r, &x);
    let prefix = |v: &[f64]| {
        let mut p = Vec::with_capacity(v.len() + 1);
        p.push(0.0);
        for s in v {
            p.push(p.last().unwrap() + s * s);
        }
        p
    };
    let (pr, px) = (prefix(&r), prefix(&x));
    let mut best: Option<Alignment> = None;
    for (k, &dot) in raw.iter().enumerate() {
        let lag = k as isize - (nx as isize - 1);
        // Overlap: reference indices lo..hi land on received lo+lag..hi+lag.
        let lo = (-lag).max(0) as usize;
        let hi = (nr as isize - lag).min(nx as isize);
        if hi <= lo as isize {
            continue;
        }
        let hi = hi as usize;
        let overlap = hi - lo;
        if overlap < min_overlap {
            continue;
        }
        let ex = px[hi] - px[lo];
        let er = pr[(hi as isize + lag) as usize] - pr[(lo as isize + lag) as usize];
        let floor = SILENCE_MEAN_SQUARE * overlap as f64;
        if ex < floor || er < floor {
            continue;
        }
        let c = dot / (ex * er).sqrt();
        if best.is_none_or(|b| c > b.correlation) {
            best = Some(Alignment {
                lag,
                correlation: c,
                overlap,
            });
        }
    }
    best
}

/// `out[k] = Σ_i r[i + lag] · x[i]` for `lag = k − (x.len() − 1)`, i.e. every lag from
/// `−(x.len() − 1)` to `r.len() − 1`, through a zero-padded FFT.
pub fn cross_correlation(r: &[f64], x: &[f64]) -> Vec<f64> {
    let (nr, nx) = (r.len(), x.len());
    let n = (nr + nx).next_power_of_two();
    let mut fr: Vec<(f64, f64)> = r.iter().map(|&v| (v, 0.0)).collect();
    fr.resize(n, (0.0, 0.0));
    let mut fx: Vec<(f64, f64)> = x.iter().map(|&v| (v, 0.0)).collect();
    fx.resize(n, (0.0, 0.0));
    fft(&mut fr, false);
    fft(&mut fx, false);
    // R · conj(X): circular correlation c[k] = Σ_i r[i + k] x[i] (indices mod n).
    let mut prod: Vec<(f64, f64)> = fr
        .iter()
        .zip(&fx)
        .map(|(&(a, b), &(c, d))| (a * c + b * d, b * c - a * d))
        .collect();
    fft(&mut prod, true);
    let circ: Vec<f64> = prod.iter().map(|&(re, _)| re / n as f64).collect();
    // Negative lags sit at the end of the circular result.
    (0..nr + nx - 1)
        .map(|k| {
            let lag = k as isize - (nx as isize - 1);
            circ[lag.rem_euclid(n as isize) as usize]
        })
        .collect()
}

/// In-place iterative radix-2 FFT (`inverse` without the 1/n scaling).
fn fft(a: &mut [(f64, f64)], inverse: bool) {
    let n = a.len();
    assert!(n.is_power_of_two());
    let mut j = 0;
    for i in 1..n {
        let mut bit = n >> 1;
        while j & bit != 0 {
            j ^= bit;
            bit >>= 1;
        }
        j |= bit;
        if i < j {
            a.swap(i, j);
        }
    }
    let mut len = 2;
    while len <= n {
        let ang = 2.0 * std::f64::consts::PI / len as f64 * if inverse { 1.0 } else { -1.0 };
        let (wr, wi) = (ang.cos(), ang.sin());
        for start in (0..n).step_by(len) {
            let (mut cr, mut ci) = (1.0, 0.0);
            for k in 0..len / 2 {
                let (ur, ui) = a[start + k];
                let (vr0, vi0) = a[start + k + len / 2];
                let (vr, vi) = (vr0 * cr - vi0 * ci, vr0 * ci + vi0 * cr);
                a[start + k] = (ur + vr, ui + vi);
                a[start + k + len / 2] = (ur - vr, ui - vi);
                (cr, ci) = (cr * wr - ci * wi, cr * wi + ci * wr);
            }
        }
        len <<= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    /// Deterministic noise (xorshift32), roughly ±amplitude.
    fn noise(n: usize, seed: u32, amplitude: i32) -> Vec<i16> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                ((s % (2 * amplitude as u32)) as i32 - amplitude) as i16
            })
            .collect()
    }

    #[test]
    fn parses_a_literal_header() {
        // V=2, P=0, X=0, CC=0 | M=1, PT=8 | seq 0x1234 | ts 0xdeadbeef | SSRC 0x01020304
        let bytes = [
            0x80, 0x88, 0x12, 0x34, 0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04, 0xd5, 0x55,
        ];
        let p = RtpPacket::parse(&bytes, Instant::now(), src()).unwrap();
        assert_eq!(
            (p.version, p.marker, p.payload_type, p.sequence),
            (2, true, 8, 0x1234)
        );
        assert_eq!((p.timestamp, p.ssrc), (0xdead_beef, 0x0102_0304));
        assert_eq!(p.payload, vec![0xd5, 0x55]);
    }

    #[test]
    fn parses_csrcs_extension_and_padding() {
        let mut b = vec![0xb1, 0x00, 0, 1, 0, 0, 0, 160, 0, 0, 0, 7];
        b.extend_from_slice(&[0, 0, 0, 9]); // one CSRC
        b.extend_from_slice(&[0xbe, 0xde, 0, 1, 1, 2, 3, 4]); // extension, one word
        b.extend_from_slice(&[0xaa, 0xbb]); // payload
        b.extend_from_slice(&[0, 0, 3]); // three bytes of padding
        let p = RtpPacket::parse(&b, Instant::now(), src()).unwrap();
        assert_eq!(p.csrcs, vec![9]);
        assert!(p.extension && p.padding);
        assert_eq!(p.payload, vec![0xaa, 0xbb]);
    }

    #[test]
    fn rejects_truncated_packets() {
        assert!(RtpPacket::parse(&[0x80; 11], Instant::now(), src()).is_err());
        assert!(
            RtpPacket::parse(
                &[0x82, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                Instant::now(),
                src()
            )
            .is_err()
        );
        let padded_too_much = [0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
        assert!(RtpPacket::parse(&padded_too_much, Instant::now(), src()).is_err());
    }

    #[test]
    fn build_then_parse_round_trips() {
        let b = RtpPacket::build(0, true, 65535, u32::MAX, 42, &[1, 2, 3]);
        let p = RtpPacket::parse(&b, Instant::now(), src()).unwrap();
        assert_eq!(
            (p.payload_type, p.marker, p.sequence, p.timestamp, p.ssrc),
            (0, true, 65535, u32::MAX, 42)
        );
        assert_eq!(p.payload, vec![1, 2, 3]);
    }

    fn stream(n: u16, seq0: u16, ts0: u32) -> Vec<RtpPacket> {
        (0..n)
            .map(|i| {
                let b = RtpPacket::build(
                    0,
                    false,
                    seq0.wrapping_add(i),
                    ts0.wrapping_add(u32::from(i) * 160),
                    7,
                    &[0xff; 160],
                );
                RtpPacket::parse(&b, Instant::now(), src()).unwrap()
            })
            .collect()
    }

    #[test]
    fn stream_check_accepts_wrapping_and_rejects_gaps() {
        assert_eq!(check_stream(&stream(10, 65530, u32::MAX - 300)), Ok(()));
        let mut s = stream(10, 0, 0);
        s.remove(4);
        assert!(check_stream(&s).unwrap_err().contains("sequence"));
        let mut s = stream(3, 0, 0);
        s[2].timestamp += 1;
        assert!(check_stream(&s).unwrap_err().contains("timestamp"));
        assert!(check_stream(&[]).is_err());
    }

    #[test]
    fn rate_and_window_count_use_arrival_times() {
        let base = Instant::now();
        let mut s = stream(101, 0, 0);
        for (i, p) in s.iter_mut().enumerate() {
            p.received_at = base + PTIME * i as u32;
        }
        assert!((packet_rate(&s) - 50.0).abs() < 1e-6);
        assert_eq!(count_in_window(&s, base, Duration::from_secs(1)), 50);
        assert_eq!(packet_rate(&s[..1]), 0.0);
    }

    #[test]
    fn fft_cross_correlation_matches_the_definition() {
        let r = [1.0, -2.0, 3.0, 0.5, 4.0];
        let x = [2.0, 1.0, -1.0];
        let fast = cross_correlation(&r, &x);
        for (k, got) in fast.iter().enumerate() {
            let lag = k as isize - 2;
            let want: f64 = (0..3)
                .filter_map(|i| {
                    let j = i as isize + lag;
                    (0..5).contains(&j).then(|| r[j as usize] * x[i])
                })
                .sum();
            assert!((got - want).abs() < 1e-9, "lag {lag}: {got} vs {want}");
        }
    }

    #[test]
    fn correlation_finds_a_delayed_scaled_copy() {
        let reference = noise(8000, 1, 8000);
        let mut received = vec![0i16; 3000];
        received.extend(reference.iter().map(|&s| s / 2));
        received.extend(vec![0i16; 2000]);
        let a = best_alignment(&received, &reference, 4000).unwrap();
        assert_eq!(a.lag, 3000);
        assert!(a.correlation > 0.999, "{a:?}");
    }

    #[test]
    fn correlation_survives_g711_and_partial_overlap() {
        // The receiver heard only the middle of the reference, through μ-law.
        let reference = noise(16000, 2, 6000);
        let received: Vec<i16> = reference[5000..12000]
            .iter()
            .map(|&s| g711::decode_ulaw(g711::encode_ulaw(s)))
            .collect();
        let a = best_alignment(&received, &reference, 4000).unwrap();
        assert_eq!(a.lag, -5000);
        assert!(a.correlation > 0.99, "{a:?}");
    }

    #[test]
    fn unrelated_or_silent_audio_does_not_correlate() {
        let reference = noise(8000, 3, 8000);
        let other = noise(8000, 4, 8000);
        assert!(best_correlation(&other, &reference) < 0.2);
        assert_eq!(best_correlation(&[0i16; 8000], &reference), 0.0);
        assert_eq!(best_correlation(&[], &reference), 0.0);
    }

    fn parsed(p: &PlannedPacket) -> RtpPacket {
        RtpPacket::parse(&p.bytes, Instant::now(), src()).unwrap()
    }

    #[test]
    fn event_codes_and_payload_layout() {
        let codes: Vec<u8> = "0123456789*#ABCD".chars().map(event_code).collect();
        assert_eq!(codes, (0..16).collect::<Vec<u8>>());
        assert_eq!(event_code('d'), 15);
        // RFC 4733 §2.3 Figure 1: event 11 (#), E=1, R=0, volume 10, duration 800.
        assert_eq!(telephone_event(11, true, 10, 800), [11, 0x8a, 0x03, 0x20]);
        assert_eq!(telephone_event(5, false, 0xff, 0), [5, 0x3f, 0, 0]);
    }

    #[test]
    fn a_planned_key_press_is_one_event_with_three_ends() {
        let mut plan = MediaPlan::new(0);
        plan.starting_at(65_534, u32::MAX - 159)
            .silence(2)
            .key_press(101, '7', 3)
            .silence(1);
        let packets = plan.take_packets();
        let roles: Vec<PacketRole> = packets.iter().map(|p| p.role).collect();
        use PacketRole::*;
        assert_eq!(
            roles,
            vec![
                Audio,
                Audio,
                EventStart { press: 0 },
                EventUpdate { press: 0, n: 1 },
                EventUpdate { press: 0, n: 2 },
                EventEnd { press: 0, copy: 0 },
                EventEnd { press: 0, copy: 1 },
                EventEnd { press: 0, copy: 2 },
                Audio,
            ]
        );
        let p: Vec<RtpPacket> = packets.iter().map(parsed).collect();
        // One slot and one sequence number per packet, across the 16-bit wrap.
        for (i, (pkt, planned)) in p.iter().zip(&packets).enumerate() {
            assert_eq!(planned.slot, i as u32);
            assert_eq!(pkt.sequence, 65_534u16.wrapping_add(i as u16));
            assert_eq!(pkt.ssrc, plan.ssrc());
        }
        // Audio: PT 0, 160 bytes of silence, marker on the first frame of each talkspurt.
        assert_eq!(
            (p[0].payload_type, p[0].marker, p[0].payload.len()),
            (0, true, 160)
        );
        assert!(!p[1].marker && p[8].marker);
        assert_eq!(p[1].timestamp, 0, "the timestamp wraps");
        // The event: one timestamp (the slot it started in), marker on the start only,
        // duration growing by 160 per update, the end three times with the full duration.
        let event_ts = 160;
        for pkt in &p[2..8] {
            assert_eq!((pkt.payload_type, pkt.timestamp), (101, event_ts));
        }
        let payloads: Vec<&[u8]> = p[2..8].iter().map(|x| x.payload.as_slice()).collect();
        assert_eq!(
            payloads,
            vec![
                &[7, 10, 0, 160][..],
                &[7, 10, 1, 64],
                &[7, 10, 1, 224],
                &[7, 0x8a, 1, 224],
                &[7, 0x8a, 1, 224],
                &[7, 0x8a, 1, 224],
            ]
        );
        assert!(p[2].marker && p[3..8].iter().all(|x| !x.marker));
        // The audio clock went on under the event.
        assert_eq!(p[8].timestamp, event_ts.wrapping_add(6 * 160));
    }

    #[test]
    fn presses_are_numbered_across_takes() {
        let mut plan = MediaPlan::new(8);
        plan.key_presses(96, "1#", 2, 1);
        let first = plan.take_packets();
        plan.key_press(96, 'A', 1);
        let second = plan.take_packets();
        let presses = |v: &[PlannedPacket]| -> Vec<usize> {
            let mut p: Vec<usize> = v.iter().filter_map(|x| x.role.press()).collect();
            p.dedup();
            p
        };
        assert_eq!(presses(&first), vec![0, 1]);
        assert_eq!(presses(&second), vec![2]);
        assert_eq!(second[0].slot, first.last().unwrap().slot + 1);
        assert_eq!(parsed(&first[5]).payload_type, 8, "audio in the gap");
    }
}
