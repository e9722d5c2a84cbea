//! Media workers: they own the RTP sockets of their calls and one 20 ms clock each, and make
//! every call hear what it should — a prompt, hold music, or G.711 silence — at 50 packets/s.
//!
//! Two layers:
//! - [`CallMedia`] is one call's media as a sans-IO state machine. It is fed received
//!   datagrams ([`CallMedia::handle_datagram`]), time ([`CallMedia::handle_timeout`]) and
//!   commands from signalling ([`CallMedia::configure`], [`CallMedia::play`]); it hands back
//!   the RTP packets that are due ([`CallMedia::poll_transmit`]), events
//!   ([`CallMedia::poll_event`]) and when to call again ([`CallMedia::poll_timeout`]). Every
//!   rule — pacing, sequence/timestamp continuity, marker bit, hold, source validation, RTP
//!   timeout — lives and is tested here, on a virtual clock.
//! - [`Engine`] is the thin I/O layer: a cheap handle that binds a socket per call from the
//!   [`PortPool`] and passes it to one of `workers` worker threads.
//!
//! Workers are operating-system threads of their own, not tasks on the server's tokio
//! runtime: a media frame must leave on time however busy signalling is (a burst of INVITEs,
//! an admin request, a TLS handshake), and a task shares its runtime thread with all of
//! that. A worker sleeps on its command channel until its next slot (`recv_timeout`, a
//! futex with a high-resolution timeout, not tokio's 1 ms timer wheel), and reads its
//! non-blocking sockets without a readiness registry: each slot's calls are read with one
//! `recvmmsg` per socket per tick, which returns whatever is queued (an edge-triggered epoll
//! loop needs an `epoll_wait`, the read, and a second read that says `EAGAIN`).
//!
//! Time slots: the 20 ms period is cut into `SLOTS` slots of `SLOT_TICK` (2 ms), on one grid
//! shared by every worker (the engine's start instant). Each call belongs to a slot — the
//! least loaded of its worker's next five when it opens (so its first frame leaves within
//! 10 ms of the answer), kept for its life, across workers too — and
//! its frame clock is phase-shifted into it ([`CallMedia::set_frame_origin`]), so its frames
//! fall due at `slot start + k × 20 ms`, exactly 20 ms apart. A worker wakes at every slot
//! start and serves only that slot's calls: drains their sockets (one `recvmmsg` each, see
//! [`super::recv_batch`]), feeds the datagrams to their `CallMedia`s, and sends the frames that are
//! due (`send_to`). Sending every call's packet on one 20 ms tick made the last of a few
//! thousand calls several milliseconds late, every frame; now a tick has a tenth of them.
//!
//! Signalling drives a session: [`Engine::open`] (put the port in the SDP answer) →
//! [`Engine::configure`] (the negotiated media; again on every re-INVITE, hold and resume) →
//! [`Engine::play`] / [`Engine::stop_playback`] → [`Engine::close`]. It hears back through
//! [`MediaEvent`]s.
//!
//! Meetings: [`Engine::join_meeting`] moves a session to the worker that runs its meeting's
//! [`Mixer`] (the first participant's), so a meeting's mix is one worker's business. A
//! meeting's mix runs once per period, in the slot of the participant that made it: that
//! tick reads the slot's sockets, mixes, then sends. Participants in other slots keep their
//! own slot; each takes the newest mixed frame when its own frame falls due, which is before
//! the next mix (one mix per 20 ms, one packet per 20 ms), so every mixed frame is sent once.
//! A participant's audio is heard by the others within a frame of arriving (plus one frame of
//! lookahead when the call runs in-band DTMF detection, so a key press never reaches the
//! mix).
//!
//! Hot path (DESIGN.md): per packet no allocation, no lock shared across calls, no syscall
//! beyond the socket read or write. Locks are taken only by `open`/`close`/control calls.
//!
//! Faults (issue 7): a worker handles each session's datagrams, frames and commands inside
//! `catch_unwind`, and each meeting's mix likewise. A panic there drops that session (or
//! that meeting's sessions) only — socket closed, port back in the pool, out of its mix — and
//! reports [`MediaEvent::Failed`], so signalling hangs the call up; the worker's other calls
//! never miss a frame.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::ops::RangeInclusive;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self as channel, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{debug, error, info_span, warn};

use super::dtmf::goertzel::{InbandDetector, InbandEvent, samples_to_duration};
use super::dtmf::rfc4733::EventReceiver;
use super::dtmf::{Digit, DtmfMethod};
use super::mixer::Mixer;
use super::player::{Clip, PlayMode, Playback};
use super::recv_batch::RecvBatch;
use super::rtp::{
    FRAME_TIMESTAMP_STEP, Latch, MAX_PACKET_LEN, PortPool, PortPoolError, RtpPacket, RtpSender,
};
use super::{Codec, Direction, FRAME_SAMPLES, Frame, PTIME, PayloadType, g711};

/// A late tick makes a call send the frames it owes, but at most this many at once (60 ms):
/// an older backlog is skipped — its time passes on the RTP timestamp, and the next packet
/// starts a talkspurt — rather than burst into the peer's jitter buffer.
const MAX_CATCH_UP_FRAMES: u64 = 3;
/// Slots per 20 ms period; a worker wakes once per slot (every `SLOT_TICK`).
const SLOTS: usize = 10;
/// `PTIME / SLOTS`: 2 ms. Short enough that a few thousand calls a worker make a few hundred
/// per tick; long enough that an idle-ish worker's 500 wake-ups a second cost nothing.
const SLOT_TICK: Duration = Duration::from_nanos(PTIME.as_nanos() as u64 / SLOTS as u64);
/// A new session goes to the least loaded of the next this many slots (see `choose_slot`).
const SOON_SLOTS: usize = 5;
/// Datagrams read from one call's socket per tick. A peer sends one per 20 ms, plus a few
/// redundant RFC 4733 event packets; beyond this a flood waits in (and overflows) the kernel
/// buffer instead of starving the worker's other calls.
const MAX_DATAGRAMS_PER_TICK: usize = 32;
/// Ports tried by one `open` when other processes hold some of the range.
const MAX_BIND_ATTEMPTS: usize = 16;
/// Audio a meeting participant has sent and the mixer has not yet taken: three frames. A
/// burst beyond it (a peer catching up after a stall) drops the oldest audio, so the delay a
/// participant adds to the mix stays bounded.
const MIX_BUFFER_SAMPLES: usize = 3 * FRAME_SAMPLES;
/// After a participant's last sign of a key press (a telephone-event packet, or a tone the
/// in-band detector is weighing), its audio stays out of the mix this long, so the others
/// never hear its keypad.
const KEY_PRESS_QUIET: Duration = Duration::from_millis(60);
/// μ-law and A-law encodings of a zero sample (ITU-T G.711 tables).
const SILENCE_PCMU: Frame = [0xFF; FRAME_SAMPLES];
const SILENCE_PCMA: Frame = [0xD5; FRAME_SAMPLES];

/// One call's media session, named by signalling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionId(pub u64);

/// What the SDP offer/answer settled for a call, from our point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MediaParams {
    /// The address in the peer's SDP (`c=` and `m=` port); `None` or a null address when it
    /// named none (RFC 3264 §8.4 `0.0.0.0` hold).
    pub remote: Option<SocketAddr>,
    /// Where the call's SIP came from: RTP from any port on this IP is the peer's too.
    pub signalling_ip: IpAddr,
    pub codec: Codec,
    /// The payload type carrying `codec`: its static number, or the peer's dynamic one when
    /// its SDP put G.711 on a dynamic type (RFC 3551 §3 allows either).
    pub payload_type: PayloadType,
    /// The negotiated `telephone-event` payload type (RFC 4733), if any.
    pub telephone_event: Option<PayloadType>,
    pub direction: Direction,
    /// Run the in-band (Goertzel) DTMF detector on the caller's audio. Off unless the call's
    /// DTMF mode wants it, since it costs a G.711 decode per packet.
    pub inband_dtmf: bool,
}

/// What a call's media tells signalling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallEvent {
    /// No RTP from the peer for `rtp_timeout` while we expected some. Fires once per silence.
    RtpTimeout,
    /// A [`PlayMode::Once`] playback sent its last frame. Not sent for a playback replaced by
    /// `play` or ended by `stop_playback`.
    PlaybackFinished { clip: String },
    /// A key press heard in the media (RFC 4733 event or in-band tone).
    Digit(Digit),
}

/// What [`CallMedia::handle_datagram`] made of a datagram (the engine counts these).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inbound {
    /// RTP from the call's peer, handed to the call.
    Accepted,
    /// RTP from the call's peer while our direction does not receive; dropped.
    NotExpected,
    /// From a source the call does not accept (or before it is configured); dropped.
    Foreign,
    /// From an accepted source but not a usable RTP packet (garbage, RTCP); dropped.
    Malformed,
}

/// One RTP packet to send: `len` bytes at the start of the buffer given to `poll_transmit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub destination: SocketAddr,
    pub len: usize,
    /// When its frame fell due: how late the packet leaves is measured from here.
    pub due: Instant,
}

/// Per-call counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallStats {
    /// Packets produced by `poll_transmit`.
    pub sent: u64,
    /// Frames skipped because the call was polled too late to send them (see
    /// `MAX_CATCH_UP_FRAMES`).
    pub late_frames_skipped: u64,
    /// Accepted packets carrying the negotiated codec.
    pub audio_received: u64,
    /// Accepted packets carrying the negotiated telephone-event payload type.
    pub telephone_events_received: u64,
    /// Accepted packets with another payload type (comfort noise, …), ignored.
    pub other_received: u64,
    pub not_expected: u64,
    pub foreign: u64,
    pub malformed: u64,
}

/// One call's media, sans-IO. See the module docs for how it is driven.
#[derive(Debug)]
pub struct CallMedia {
    rtp_timeout: Duration,
    sender: RtpSender,
    /// `None` until the first `configure`: until then we know neither peer nor codec, so we
    /// send nothing and accept nothing.
    negotiated: Option<Negotiated>,
    playback: Option<Playback>,
    /// When the next 20 ms frame is due. Starts at the first `configure` (on the frame grid,
    /// if one is set) and then runs for the life of the call, sent or not, so the RTP
    /// timestamp follows the clock.
    next_frame_at: Option<Instant>,
    /// Frames fall due at `origin + k × PTIME` (the call's time slot); `None`: from the
    /// first `configure` on.
    frame_origin: Option<Instant>,
    /// When the peer's silence becomes an [`CallEvent::RtpTimeout`]; `None` while our
    /// direction does not receive, and once the event fired until a packet re-arms it.
    rx_deadline: Option<Instant>,
    events: VecDeque<CallEvent>,
    stats: CallStats,
    /// RFC 4733 events on the negotiated telephone-event payload type.
    telephone_events: EventReceiver,
    /// The in-band detector, while the call's DTMF mode wants one.
    inband: Option<Box<InbandDetector>>,
    /// The call's port into a meeting's mix, while it is in one.
    mix: Option<Box<MixPort>>,
}

/// What a meeting participant's call keeps for the mixer: the audio it sent, decoded, and
/// the mixed frame it is to hear next.
#[derive(Debug)]
struct MixPort {
    /// Decoded audio not yet mixed, oldest first (`len` samples).
    buffer: [i16; MIX_BUFFER_SAMPLES],
    len: usize,
    /// Hold one frame back before mixing: when the in-band detector runs, a key press is
    /// recognised as a candidate only some milliseconds into its tone, and the frame held
    /// back is the one it started in. Costs one frame (20 ms) of delay, which is all the
    /// mixing delay DESIGN allows, so only calls with in-band detection pay it.
    lookahead: bool,
    /// Audio stays out of the mix until then (a key press is going on).
    quiet_until: Option<Instant>,
    /// The mixer's frame for the next packet, in the call's codec.
    out: Frame,
    out_ready: bool,
}

impl MixPort {
    fn new(lookahead: bool) -> Self {
        MixPort {
            buffer: [0; MIX_BUFFER_SAMPLES],
            len: 0,
            lookahead,
            quiet_until: None,
            out: [0; FRAME_SAMPLES],
            out_ready: false,
        }
    }

    /// Buffers `pcm`, as silence while a key press is going on, dropping the oldest audio
    /// beyond the buffer.
    fn push(&mut self, now: Instant, pcm: &[i16]) {
        let quiet = self.quiet_until.is_some_and(|until| now < until);
        let pcm = &pcm[pcm.len().saturating_sub(MIX_BUFFER_SAMPLES)..];
        let overflow = (self.len + pcm.len()).saturating_sub(MIX_BUFFER_SAMPLES);
        if overflow > 0 {
            self.buffer.copy_within(overflow..self.len, 0);
            self.len -= overflow;
        }
        let dst = &mut self.buffer[self.len..self.len + pcm.len()];
        if quiet {
            dst.fill(0);
        } else {
            dst.copy_from_slice(pcm);
        }
        self.len += pcm.len();
    }

    /// A key press is going on: silence what is buffered and what comes in the next
    /// `KEY_PRESS_QUIET`.
    fn key_press(&mut self, now: Instant) {
        self.buffer[..self.len].fill(0);
        self.quiet_until = Some(now + KEY_PRESS_QUIET);
    }

    /// The oldest frame of audio, if a whole one (and, with lookahead, one more) is there.
    fn take(&mut self, out: &mut [i16; FRAME_SAMPLES]) -> bool {
        let need = if self.lookahead {
            2 * FRAME_SAMPLES
        } else {
            FRAME_SAMPLES
        };
        if self.len < need {
            return false;
        }
        out.copy_from_slice(&self.buffer[..FRAME_SAMPLES]);
        self.buffer.copy_within(FRAME_SAMPLES..self.len, 0);
        self.len -= FRAME_SAMPLES;
        true
    }
}

#[derive(Clone, Debug)]
struct Negotiated {
    params: MediaParams,
    latch: Latch,
}

impl CallMedia {
    /// A call that will send with `sender` and report [`CallEvent::RtpTimeout`] after
    /// `rtp_timeout` without RTP from the peer.
    pub fn new(sender: RtpSender, rtp_timeout: Duration) -> Self {
        CallMedia {
            rtp_timeout,
            sender,
            negotiated: None,
            playback: None,
            next_frame_at: None,
            frame_origin: None,
            rx_deadline: None,
            events: VecDeque::with_capacity(2),
            stats: CallStats::default(),
            telephone_events: EventReceiver::new(),
            inband: None,
            mix: None,
        }
    }

    /// Sets or replaces the negotiated media (answer, re-INVITE, hold, resume). The frame
    /// clock starts at the first call, and sequence numbers and timestamps run on across
    /// later ones. When the parameters change, the RTP timeout clock restarts from `now`
    /// (if we now expect to receive at all); repeating the same parameters (a session
    /// refresh) changes nothing.
    pub fn configure(&mut self, now: Instant, params: MediaParams) {
        match &mut self.negotiated {
            Some(n) if n.params == params => return,
            Some(n) => {
                n.latch.retarget(params.remote, params.signalling_ip);
                n.params = params;
            }
            None => {
                self.negotiated = Some(Negotiated {
                    params,
                    latch: Latch::new(params.remote, params.signalling_ip),
                });
            }
        }
        self.rx_deadline = params.direction.receives().then(|| now + self.rtp_timeout);
        if self.next_frame_at.is_none() {
            self.next_frame_at = Some(self.on_frame_grid(now));
        }
        match (params.inband_dtmf, self.inband.is_some()) {
            (true, false) => self.inband = Some(Box::default()),
            (false, true) => self.inband = None,
            _ => {}
        }
        if let Some(mix) = &mut self.mix {
            mix.lookahead = params.inband_dtmf;
        }
    }

    /// Puts the call's frames on the grid `origin + k × 20 ms` (`origin` may be any instant
    /// on it, past or future): the first frame after `configure` falls due on the grid's first
    /// instant at or after the configure. A running clock moves to the grid's first instant
    /// at or after its next frame, so it is only ever delayed (by less than 20 ms, once) and
    /// frames never go closer than 20 ms apart.
    pub fn set_frame_origin(&mut self, origin: Instant) {
        self.frame_origin = Some(origin);
        if let Some(next) = self.next_frame_at {
            self.next_frame_at = Some(self.on_frame_grid(next));
        }
    }

    /// The first instant of the frame grid at or after `t` (`t` itself without a grid).
    fn on_frame_grid(&self, t: Instant) -> Instant {
        let Some(origin) = self.frame_origin else {
            return t;
        };
        let period = PTIME.as_nanos();
        if t <= origin {
            let back = (origin - t).as_nanos() / period * period;
            origin - Duration::from_nanos(back as u64)
        } else {
            let ahead = (t - origin).as_nanos().div_ceil(period) * period;
            origin + Duration::from_nanos(ahead as u64)
        }
    }

    /// Connects the call to a meeting's mix: from now on its audio is buffered for
    /// [`CallMedia::take_mix_input`], and when no prompt plays it sends what
    /// [`CallMedia::set_mix_output`] gave it (silence when the mixer gave nothing).
    pub fn join_mix(&mut self) {
        if self.mix.is_none() {
            let lookahead = self
                .negotiated
                .as_ref()
                .is_some_and(|n| n.params.inband_dtmf);
            self.mix = Some(Box::new(MixPort::new(lookahead)));
        }
    }

    /// Disconnects the call from the mix: silence (or prompts) again.
    pub fn leave_mix(&mut self) {
        self.mix = None;
    }

    pub fn in_mix(&self) -> bool {
        self.mix.is_some()
    }

    /// The call's next frame of audio for the mixer, decoded; false when it has none due
    /// (lost or late packets, hold, not in a mix).
    pub fn take_mix_input(&mut self, out: &mut [i16; FRAME_SAMPLES]) -> bool {
        self.mix.as_mut().is_some_and(|mix| mix.take(out))
    }

    /// The mixed frame the call sends next (in its codec), unless a prompt is playing.
    pub fn set_mix_output(&mut self, frame: &Frame) {
        if let Some(mix) = &mut self.mix {
            mix.out = *frame;
            mix.out_ready = true;
        }
    }

    /// Plays `clip` from its start in place of whatever was playing, from the next frame.
    pub fn play(&mut self, clip: Arc<Clip>, mode: PlayMode) {
        self.playback = Some(Playback::new(clip, mode));
    }

    /// Stops the playback, if any; silence follows. No event.
    pub fn stop_playback(&mut self) {
        self.playback = None;
    }

    /// One datagram that arrived on the call's socket from `source`.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        datagram: &[u8],
    ) -> Inbound {
        let Some(negotiated) = &mut self.negotiated else {
            self.stats.foreign += 1;
            return Inbound::Foreign;
        };
        if !negotiated.latch.allows(source) {
            self.stats.foreign += 1;
            return Inbound::Foreign;
        }
        let Ok(packet) = RtpPacket::parse(datagram) else {
            self.stats.malformed += 1;
            return Inbound::Malformed;
        };
        if !negotiated.latch.observe(now, source) {
            // Another accepted source while the latched one is live.
            self.stats.foreign += 1;
            return Inbound::Foreign;
        }
        if !negotiated.params.direction.receives() {
            self.stats.not_expected += 1;
            return Inbound::NotExpected;
        }
        self.rx_deadline = Some(now + self.rtp_timeout);
        self.on_rtp(now, &packet);
        Inbound::Accepted
    }

    /// Time passed: fires the RTP timeout when it is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(deadline) = self.rx_deadline
            && now >= deadline
        {
            self.rx_deadline = None;
            self.events.push_back(CallEvent::RtpTimeout);
        }
    }

    /// The next RTP packet due by `now`, written into `buf`; call until `None`. Produces one
    /// packet per 20 ms frame that falls due while the call is configured, our direction
    /// sends and a destination is known; frames due otherwise pass silently (timestamp
    /// advances, next packet marked). A caller late by more than `MAX_CATCH_UP_FRAMES`
    /// frames gets only the newest few.
    #[must_use]
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8; MAX_PACKET_LEN],
    ) -> Option<Transmit> {
        self.skip_backlog(now);
        loop {
            let due = self.next_frame_at?;
            if now < due {
                return None;
            }
            self.next_frame_at = Some(due + PTIME);
            let negotiated = self.negotiated.as_ref()?;
            let destination = negotiated
                .params
                .direction
                .sends()
                .then(|| negotiated.latch.destination())
                .flatten();
            let Some(destination) = destination else {
                self.sender.skip(FRAME_TIMESTAMP_STEP);
                continue;
            };
            let (codec, pt) = (negotiated.params.codec, negotiated.params.payload_type);
            let len = self.write_frame(codec, pt, buf);
            self.stats.sent += 1;
            return Some(Transmit {
                destination,
                len,
                due,
            });
        }
    }

    /// Tells the call that the packet last returned by `poll_transmit` was not sent (the
    /// socket refused it): the peer sees a gap, so the next packet starts a talkspurt.
    pub fn transmit_failed(&mut self) {
        self.sender.restart_talkspurt();
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<CallEvent> {
        self.events.pop_front()
    }

    /// When something next falls due: a frame or the RTP timeout.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.next_frame_at, self.rx_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn params(&self) -> Option<&MediaParams> {
        self.negotiated.as_ref().map(|n| &n.params)
    }

    pub fn is_playing(&self) -> bool {
        self.playback.is_some()
    }

    pub fn stats(&self) -> &CallStats {
        &self.stats
    }

    /// Every accepted RTP packet ends here, with its payload type, RTP timestamp and payload.
    ///
    /// HOOK(dtmf): packets of the negotiated `telephone-event` payload type go to the
    /// RFC 4733 receiver here (it keys events by `timestamp`); audio payloads feed the
    /// in-band (Goertzel) detector.
    /// HOOK(mixer): audio payloads become this participant's input frame here.
    fn on_rtp(&mut self, now: Instant, packet: &RtpPacket<'_>) {
        crate::fault::check_media_payload(packet.payload);
        let Some(negotiated) = &self.negotiated else {
            return;
        };
        let payload_type = packet.header.payload_type;
        if payload_type == negotiated.params.payload_type {
            self.stats.audio_received += 1;
            if self.inband.is_none() && self.mix.is_none() {
                return;
            }
            let codec = negotiated.params.codec;
            let mut pcm = [0i16; FRAME_SAMPLES];
            for chunk in packet.payload.chunks(FRAME_SAMPLES) {
                let pcm = &mut pcm[..chunk.len()];
                g711::decode(codec, chunk, pcm);
                let mut tone = false;
                if let Some(detector) = &mut self.inband {
                    detector.handle_samples(pcm);
                    tone = detector.tone_suspected();
                }
                if let Some(mix) = &mut self.mix {
                    if tone {
                        mix.key_press(now);
                    }
                    mix.push(now, pcm);
                }
            }
            if let Some(detector) = &mut self.inband {
                while let Some(event) = detector.poll_event() {
                    if let InbandEvent::Pressed { key, start_sample } = event {
                        // The tone began this many samples before the detector's clock.
                        let ago = samples_to_duration(detector.position() - start_sample);
                        let at = now.checked_sub(ago).unwrap_or(now);
                        let method = DtmfMethod::Inband;
                        self.events
                            .push_back(CallEvent::Digit(Digit { key, at, method }));
                    }
                }
            }
        } else if Some(payload_type) == negotiated.params.telephone_event {
            self.stats.telephone_events_received += 1;
            if let Some(mix) = &mut self.mix {
                mix.key_press(now);
            }
            if self.telephone_events.handle_rtp(now, packet).is_err() {
                self.stats.malformed += 1;
            }
            while let Some(digit) = self.telephone_events.poll_digit() {
                self.events.push_back(CallEvent::Digit(digit));
            }
        } else {
            self.stats.other_received += 1;
        }
    }

    /// If `now` is more than `MAX_CATCH_UP_FRAMES` frames past the next due frame, lets
    /// the excess pass unsent.
    fn skip_backlog(&mut self, now: Instant) {
        let Some(due) = self.next_frame_at else {
            return;
        };
        let Some(late) = now.checked_duration_since(due) else {
            return;
        };
        let due_frames = (late.as_nanos() / PTIME.as_nanos()) as u64 + 1;
        let excess = due_frames.saturating_sub(MAX_CATCH_UP_FRAMES);
        if excess == 0 {
            return;
        }
        // Timestamps are modulo 2^32, so truncating the frame count first is exact.
        self.sender
            .skip(FRAME_TIMESTAMP_STEP.wrapping_mul(excess as u32));
        self.next_frame_at = Some(due + Duration::from_nanos(excess * PTIME.as_nanos() as u64));
        self.stats.late_frames_skipped += excess;
    }

    /// Writes the next frame — the playback's, else silence — as an RTP packet into `buf`.
    fn write_frame(
        &mut self,
        codec: Codec,
        pt: PayloadType,
        buf: &mut [u8; MAX_PACKET_LEN],
    ) -> usize {
        let mixed = match &mut self.mix {
            Some(mix) if mix.out_ready => {
                mix.out_ready = false;
                Some(&mix.out)
            }
            _ => None,
        };
        let frame = self
            .playback
            .as_mut()
            .and_then(|p| p.next_frame(codec))
            .or(mixed)
            .unwrap_or(match codec {
                Codec::Pcmu => &SILENCE_PCMU,
                Codec::Pcma => &SILENCE_PCMA,
            });
        let len = self
            .sender
            .write(pt, frame, FRAME_TIMESTAMP_STEP, buf)
            .expect("a G.711 frame fits MAX_PACKET_LEN");
        if let Some(playback) = &self.playback
            && playback.finished()
        {
            let clip = playback.clip().name().to_owned();
            self.playback = None;
            self.events.push_back(CallEvent::PlaybackFinished { clip });
        }
        len
    }
}

/// A worker's slot schedule, sans-IO: tick `k` is at `epoch + k × SLOT_TICK` and serves slot
/// `k % SLOTS`. Every worker shares the engine's epoch, so a slot is the same phase on all
/// of them and a session moving between workers keeps its frame clock.
#[derive(Clone, Copy, Debug)]
struct SlotClock {
    epoch: Instant,
    /// The first tick not yet served.
    next_tick: u64,
}

impl SlotClock {
    fn new(epoch: Instant, now: Instant) -> Self {
        let mut clock = SlotClock {
            epoch,
            next_tick: 0,
        };
        clock.next_tick = clock.index(now) + 1;
        clock
    }

    /// When the next tick is due.
    fn next_deadline(&self) -> Instant {
        self.at(self.next_tick)
    }

    /// The frame grid of `slot`: any instant on it (see [`CallMedia::set_frame_origin`]).
    fn origin(&self, slot: usize) -> Instant {
        self.at(slot as u64)
    }

    /// The ticks due by `now` not yet served, oldest first, as (deadline, slot). After a
    /// stall only the last `SLOTS` of them — every slot once: each call's frame clock knows
    /// how many frames it owes, and serving a slot twice in one wake-up would add nothing.
    fn due(&mut self, now: Instant) -> impl Iterator<Item = (Instant, usize)> + use<> {
        let current = self.index(now);
        let first = self
            .next_tick
            .max((current + 1).saturating_sub(SLOTS as u64));
        self.next_tick = self.next_tick.max(current + 1);
        let clock = *self;
        (first..=current).map(move |k| (clock.at(k), (k % SLOTS as u64) as usize))
    }

    fn index(&self, t: Instant) -> u64 {
        (t.saturating_duration_since(self.epoch).as_nanos() / SLOT_TICK.as_nanos()) as u64
    }

    fn at(&self, tick: u64) -> Instant {
        self.epoch + Duration::from_nanos(tick * SLOT_TICK.as_nanos() as u64)
    }
}

/// How the engine is set up; see `config.rs` for the defaults.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Local address RTP sockets bind to.
    pub bind_ip: IpAddr,
    /// Inclusive range of local ports; calls use its even ports (see [`PortPool`]).
    pub rtp_ports: RangeInclusive<u16>,
    /// Peer silence that ends a call (DESIGN.md: 30 s).
    pub rtp_timeout: Duration,
    /// Worker threads, each with its own clock and calls; one per core.
    pub workers: usize,
}

/// What the engine tells signalling, per session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MediaEvent {
    /// No RTP from the peer for `rtp_timeout` while we expected some: hang up (BYE).
    RtpTimeout(SessionId),
    /// A [`PlayMode::Once`] clip finished playing.
    PlaybackFinished { session: SessionId, clip: String },
    /// A key press heard in the call's media.
    Digit { session: SessionId, digit: Digit },
    /// Handling the session panicked: the worker has dropped it (socket closed, port back in
    /// the pool, out of its mix) and carries on with its other sessions. Signalling should end
    /// the call and `close` the session.
    Failed(SessionId),
}

/// Engine-wide counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub sessions_open: usize,
    /// Ports whose socket is still open (a closed session's port returns once its worker
    /// has dropped the socket).
    pub ports_in_use: usize,
    pub packets_sent: u64,
    /// Valid RTP from each call's peer.
    pub packets_received: u64,
    /// Datagrams from sources a call does not accept.
    pub packets_dropped_foreign: u64,
    /// Datagrams from accepted sources that were not usable RTP.
    pub packets_malformed: u64,
    /// Packets the socket refused (send buffer full, unreachable address family).
    pub send_failures: u64,
    /// Sent packets by how late they left after their frame fell due: under 1, 2, 5, 10
    /// and 20 ms, and 20 ms or more (see [`SEND_LATENESS_BOUNDS`]).
    pub send_lateness: [u64; LATENESS_BUCKETS],
}

/// Upper bounds of the [`EngineStats::send_lateness`] buckets; the last bucket is open.
pub const SEND_LATENESS_BOUNDS: [Duration; LATENESS_BUCKETS - 1] = [
    Duration::from_millis(1),
    Duration::from_millis(2),
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(20),
];
pub const LATENESS_BUCKETS: usize = 6;

fn lateness_bucket(late: Duration) -> usize {
    SEND_LATENESS_BOUNDS
        .iter()
        .position(|bound| late < *bound)
        .unwrap_or(LATENESS_BUCKETS - 1)
}

#[derive(Debug, Error)]
pub enum MediaError {
    #[error("all RTP ports are in use")]
    PortsExhausted,
    #[error("RTP port range {start}-{end} holds no even port with its RTCP port beside it")]
    EmptyPortRange { start: u16, end: u16 },
    #[error("binding RTP socket {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("no media session {0:?}")]
    UnknownSession(SessionId),
    #[error("media session {0:?} is already open")]
    SessionExists(SessionId),
    #[error("the media engine needs at least one worker")]
    NoWorkers,
    #[error("starting media worker thread {index}")]
    Spawn {
        index: usize,
        #[source]
        source: io::Error,
    },
    #[error("media worker {0} has stopped")]
    WorkerStopped(usize),
}

/// Handle to the media engine; clones share it. When the last clone drops, the workers
/// stop and close their sockets.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

struct Shared {
    bind_ip: IpAddr,
    pool: Arc<Mutex<PortPool>>,
    routes: Mutex<HashMap<SessionId, Route>>,
    /// The worker each meeting's mix runs on, and how many sessions are in it.
    meetings: Mutex<HashMap<MixId, MeetingRoute>>,
    workers: Vec<WorkerHandle>,
    next_worker: AtomicUsize,
}

/// A meeting's mix, named by signalling (the bridge's meeting id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MixId(pub u64);

/// Where an open session lives. `worker` is its home: commands for it always go there, and
/// a home worker that handed the session to a meeting's worker forwards them (the channels
/// keep order, so a command never overtakes the session it is about).
#[derive(Clone, Copy, Debug)]
struct Route {
    worker: usize,
    port: u16,
    meeting: Option<MixId>,
}

#[derive(Clone, Copy, Debug)]
struct MeetingRoute {
    worker: usize,
    members: usize,
}

struct WorkerHandle {
    commands: channel::Sender<Command>,
    counters: Arc<WorkerCounters>,
}

impl Drop for Shared {
    /// The last engine handle is gone: every worker stops, closing its sockets. (Workers
    /// hold senders to each other to hand sessions over, so a closed channel cannot say it.)
    fn drop(&mut self) {
        for worker in &self.workers {
            let _ = worker.commands.send(Command::Stop);
        }
    }
}

enum Command {
    Open {
        id: SessionId,
        socket: StdUdpSocket,
        port: u16,
        sender: RtpSender,
    },
    Configure {
        id: SessionId,
        params: MediaParams,
    },
    Play {
        id: SessionId,
        clip: Arc<Clip>,
        mode: PlayMode,
    },
    StopPlayback {
        id: SessionId,
    },
    Close {
        id: SessionId,
    },
    /// Put the session in `meeting`'s mix, which runs on `worker` (moving the session there
    /// first if it lives elsewhere).
    Join {
        id: SessionId,
        meeting: MixId,
        worker: usize,
    },
    Leave {
        id: SessionId,
    },
    SetMuted {
        id: SessionId,
        muted: bool,
    },
    /// A session handed over by another worker; the `Join` that caused it follows.
    Adopt {
        id: SessionId,
        session: Box<Session>,
    },
    /// Sent to the meeting's worker directly.
    Tone {
        meeting: MixId,
        clip: Arc<Clip>,
        except: SessionId,
    },
    /// The engine is gone: close every socket and end the thread.
    Stop,
}

impl Command {
    /// The session a command is about (all but `Tone`).
    fn session(&self) -> Option<SessionId> {
        match self {
            Command::Open { id, .. }
            | Command::Configure { id, .. }
            | Command::Play { id, .. }
            | Command::StopPlayback { id }
            | Command::Close { id }
            | Command::Join { id, .. }
            | Command::Leave { id }
            | Command::SetMuted { id, .. }
            | Command::Adopt { id, .. } => Some(*id),
            Command::Tone { .. } | Command::Stop => None,
        }
    }
}

impl Engine {
    /// Starts `cfg.workers` worker threads. Events go to `events`; if its receiver is
    /// dropped they are discarded.
    pub fn start(
        cfg: EngineConfig,
        events: mpsc::UnboundedSender<MediaEvent>,
    ) -> Result<Engine, MediaError> {
        if cfg.workers == 0 {
            return Err(MediaError::NoWorkers);
        }
        let pool = PortPool::new(cfg.rtp_ports.clone()).map_err(|e| match e {
            PortPoolError::Empty { start, end } => MediaError::EmptyPortRange { start, end },
            PortPoolError::Exhausted { .. } => MediaError::PortsExhausted,
        })?;
        let pool = Arc::new(Mutex::new(pool));
        let channels: Vec<_> = (0..cfg.workers).map(|_| channel::channel()).collect();
        let peers: Vec<_> = channels.iter().map(|(tx, _)| tx.clone()).collect();
        // The slot grid every worker shares.
        let epoch = now();
        let mut workers = Vec::with_capacity(cfg.workers);
        for (index, (commands, rx)) in channels.into_iter().enumerate() {
            {
                let counters = Arc::new(WorkerCounters::default());
                let worker = Worker {
                    index,
                    peers: peers.clone(),
                    forward: HashMap::new(),
                    meetings: HashMap::new(),
                    meeting_slots: HashMap::new(),
                    mix_in: [0; FRAME_SAMPLES],
                    sessions: HashMap::new(),
                    slots: vec![Vec::new(); SLOTS],
                    clock: SlotClock::new(epoch, epoch),
                    rtp_timeout: cfg.rtp_timeout,
                    ipv6_sockets: cfg.bind_ip.is_ipv6(),
                    pool: pool.clone(),
                    counters: counters.clone(),
                    events: events.clone(),
                    send_buf: [0; MAX_PACKET_LEN],
                    failed: Vec::new(),
                };
                let spawned = std::thread::Builder::new()
                    .name(format!("media-{index}"))
                    .spawn(move || {
                        let _span = info_span!("media_worker", worker = index).entered();
                        worker.run(rx);
                    });
                if let Err(source) = spawned {
                    // Those already started stop when their channels' `Stop` comes.
                    for started in &workers {
                        let WorkerHandle { commands, .. } = started;
                        let _ = commands.send(Command::Stop);
                    }
                    return Err(MediaError::Spawn { index, source });
                }
                workers.push(WorkerHandle { commands, counters });
            }
        }
        Ok(Engine {
            shared: Arc::new(Shared {
                bind_ip: cfg.bind_ip,
                pool,
                routes: Mutex::new(HashMap::new()),
                meetings: Mutex::new(HashMap::new()),
                workers,
                next_worker: AtomicUsize::new(0),
            }),
        })
    }

    /// Opens a media session: takes a port from the pool, binds a UDP socket to it (skipping
    /// ports other processes hold, a bounded number of times) and hands it to a worker.
    /// Returns the local port at once, for the SDP answer. Nothing is sent until
    /// [`Engine::configure`].
    pub fn open(&self, id: SessionId) -> Result<u16, MediaError> {
        let mut routes = lock(&self.shared.routes);
        if routes.contains_key(&id) {
            return Err(MediaError::SessionExists(id));
        }
        let (socket, port) = self.bind_free_port()?;
        let worker = self.assign_worker(id);
        let command = Command::Open {
            id,
            socket,
            port,
            sender: RtpSender::new(&mut rand::rng()),
        };
        if self.shared.workers[worker].commands.send(command).is_err() {
            lock(&self.shared.pool).release(port);
            return Err(MediaError::WorkerStopped(worker));
        }
        routes.insert(
            id,
            Route {
                worker,
                port,
                meeting: None,
            },
        );
        debug!(session = id.0, port, worker, "media session open");
        Ok(port)
    }

    /// Sets or replaces the session's negotiated media: after the SDP answer, and on every
    /// re-INVITE (new address or codec, hold, resume).
    pub fn configure(&self, id: SessionId, params: MediaParams) -> Result<(), MediaError> {
        self.command(id, Command::Configure { id, params })
    }

    /// Plays `clip` in place of whatever the session was playing.
    pub fn play(&self, id: SessionId, clip: Arc<Clip>, mode: PlayMode) -> Result<(), MediaError> {
        self.command(id, Command::Play { id, clip, mode })
    }

    /// Stops the session's playback; silence follows.
    pub fn stop_playback(&self, id: SessionId) -> Result<(), MediaError> {
        self.command(id, Command::StopPlayback { id })
    }

    /// Ends the session: its worker stops sending, drops the socket and returns the port to
    /// the pool. Closing an unknown or already closed session does nothing.
    pub fn close(&self, id: SessionId) {
        let Some(route) = lock(&self.shared.routes).remove(&id) else {
            return;
        };
        if let Some(meeting) = route.meeting {
            self.meeting_left(meeting);
        }
        let worker = &self.shared.workers[route.worker];
        if worker.commands.send(Command::Close { id }).is_err() {
            // The worker is gone, and its sockets with it.
            lock(&self.shared.pool).release(route.port);
        }
        debug!(session = id.0, port = route.port, "media session closed");
    }

    /// Connects the session to `meeting`'s mix (made on the first join): it hears the
    /// others and they hear it, N−1, from the next frame. All of a meeting's sessions are
    /// moved to one worker, so the mix needs no lock or hand-off between workers. A session
    /// already in another meeting's mix leaves it first.
    pub fn join_meeting(&self, id: SessionId, meeting: MixId) -> Result<(), MediaError> {
        let mut routes = lock(&self.shared.routes);
        let route = routes.get_mut(&id).ok_or(MediaError::UnknownSession(id))?;
        if route.meeting == Some(meeting) {
            return Ok(());
        }
        let old = route.meeting.replace(meeting);
        let home = route.worker;
        let worker = {
            let mut meetings = lock(&self.shared.meetings);
            let entry = meetings.entry(meeting).or_insert(MeetingRoute {
                worker: home,
                members: 0,
            });
            entry.members += 1;
            entry.worker
        };
        drop(routes);
        if let Some(old) = old {
            self.meeting_left(old);
        }
        self.send(
            home,
            Command::Join {
                id,
                meeting,
                worker,
            },
        )
    }

    /// Takes the session out of its meeting's mix: silence (or prompts) again.
    pub fn leave_meeting(&self, id: SessionId) -> Result<(), MediaError> {
        let (home, meeting) = {
            let mut routes = lock(&self.shared.routes);
            let route = routes.get_mut(&id).ok_or(MediaError::UnknownSession(id))?;
            (route.worker, route.meeting.take())
        };
        if let Some(meeting) = meeting {
            self.meeting_left(meeting);
            self.send(home, Command::Leave { id })?;
        }
        Ok(())
    }

    /// A muted session still hears its meeting; nobody hears it.
    pub fn set_muted(&self, id: SessionId, muted: bool) -> Result<(), MediaError> {
        self.command(id, Command::SetMuted { id, muted })
    }

    /// Plays `clip` once into `meeting`'s mix, heard by all but `except` (join and leave
    /// tones). Nothing happens if nobody is in the meeting's mix.
    pub fn play_tone(&self, meeting: MixId, clip: Arc<Clip>, except: SessionId) {
        let worker = lock(&self.shared.meetings).get(&meeting).map(|m| m.worker);
        if let Some(worker) = worker {
            let _ = self.send(
                worker,
                Command::Tone {
                    meeting,
                    clip,
                    except,
                },
            );
        }
    }

    /// Meetings with a mix in the engine.
    pub fn meetings(&self) -> usize {
        lock(&self.shared.meetings).len()
    }

    fn meeting_left(&self, meeting: MixId) {
        let mut meetings = lock(&self.shared.meetings);
        if let Some(entry) = meetings.get_mut(&meeting) {
            entry.members -= 1;
            if entry.members == 0 {
                meetings.remove(&meeting);
            }
        }
    }

    fn send(&self, worker: usize, command: Command) -> Result<(), MediaError> {
        self.shared.workers[worker]
            .commands
            .send(command)
            .map_err(|_| MediaError::WorkerStopped(worker))
    }

    pub fn stats(&self) -> EngineStats {
        let mut stats = EngineStats {
            sessions_open: lock(&self.shared.routes).len(),
            ports_in_use: lock(&self.shared.pool).in_use(),
            ..EngineStats::default()
        };
        for worker in &self.shared.workers {
            let c = &worker.counters;
            stats.packets_sent += c.sent.load(Ordering::Relaxed);
            stats.packets_received += c.received.load(Ordering::Relaxed);
            stats.packets_dropped_foreign += c.foreign.load(Ordering::Relaxed);
            stats.packets_malformed += c.malformed.load(Ordering::Relaxed);
            stats.send_failures += c.send_failures.load(Ordering::Relaxed);
            for (total, n) in stats.send_lateness.iter_mut().zip(&c.send_lateness) {
                *total += n.load(Ordering::Relaxed);
            }
        }
        stats
    }

    /// Which worker a new session goes to: round-robin. A session that joins a meeting moves
    /// to the meeting's worker (see [`Engine::join_meeting`]).
    fn assign_worker(&self, _id: SessionId) -> usize {
        self.shared.next_worker.fetch_add(1, Ordering::Relaxed) % self.shared.workers.len()
    }

    fn bind_free_port(&self) -> Result<(StdUdpSocket, u16), MediaError> {
        let mut last_error = None;
        for _ in 0..MAX_BIND_ATTEMPTS {
            let port = lock(&self.shared.pool)
                .allocate()
                .map_err(|_| MediaError::PortsExhausted)?;
            let addr = SocketAddr::new(self.shared.bind_ip, port);
            let bound = StdUdpSocket::bind(addr).and_then(|socket| {
                socket.set_nonblocking(true)?;
                Ok(socket)
            });
            match bound {
                Ok(socket) => return Ok((socket, port)),
                Err(source) => {
                    // Back in the pool: whoever holds it may let go. Round-robin moves on.
                    lock(&self.shared.pool).release(port);
                    if source.kind() != io::ErrorKind::AddrInUse {
                        return Err(MediaError::Bind { addr, source });
                    }
                    warn!(port, "RTP port held by another process; skipping");
                    last_error = Some(MediaError::Bind { addr, source });
                }
            }
        }
        Err(last_error.expect("MAX_BIND_ATTEMPTS is at least one"))
    }

    fn command(&self, id: SessionId, command: Command) -> Result<(), MediaError> {
        let route = lock(&self.shared.routes)
            .get(&id)
            .copied()
            .ok_or(MediaError::UnknownSession(id))?;
        self.shared.workers[route.worker]
            .commands
            .send(command)
            .map_err(|_| MediaError::WorkerStopped(route.worker))
    }
}

/// The engine's maps stay consistent under panic (no update spans a panicking call), so a
/// poisoned lock is still good to use.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One worker's counters, on their own cache line so workers never write a shared one.
/// Added to once per tick, not per packet.
#[derive(Default)]
#[repr(align(64))]
struct WorkerCounters {
    sent: AtomicU64,
    received: AtomicU64,
    foreign: AtomicU64,
    malformed: AtomicU64,
    send_failures: AtomicU64,
    send_lateness: [AtomicU64; LATENESS_BUCKETS],
}

/// A tick's counts, added to the shared counters once at its end.
#[derive(Default)]
struct Tally {
    sent: u64,
    received: u64,
    foreign: u64,
    malformed: u64,
    send_failures: u64,
    send_lateness: [u64; LATENESS_BUCKETS],
}

impl Tally {
    fn count(&mut self, inbound: Inbound) {
        match inbound {
            Inbound::Accepted | Inbound::NotExpected => self.received += 1,
            Inbound::Foreign => self.foreign += 1,
            Inbound::Malformed => self.malformed += 1,
        }
    }

    fn add_to(&self, counters: &WorkerCounters) {
        for (counter, n) in [
            (&counters.sent, self.sent),
            (&counters.received, self.received),
            (&counters.foreign, self.foreign),
            (&counters.malformed, self.malformed),
            (&counters.send_failures, self.send_failures),
        ] {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
        for (counter, &n) in counters.send_lateness.iter().zip(&self.send_lateness) {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

/// A worker thread: its calls, their sockets, the mixes of its meetings, and its clock.
struct Worker {
    index: usize,
    /// Every worker's command channel (this one's included), to hand sessions over.
    peers: Vec<channel::Sender<Command>>,
    /// Sessions whose home this is but that live on another worker now (in a meeting
    /// there): their commands are passed on, in order.
    forward: HashMap<SessionId, usize>,
    meetings: HashMap<MixId, Box<Mixer>>,
    /// The slot each meeting's mix runs in: its first participant's here.
    meeting_slots: HashMap<MixId, usize>,
    /// Scratch for one participant's frame on its way into a mix.
    mix_in: [i16; FRAME_SAMPLES],
    /// Boxed (a `Session` is 800 bytes), like the mixers: a table growing between two ticks
    /// moves pointers, not megabytes.
    sessions: HashMap<SessionId, Box<Session>>,
    /// The sessions of each time slot (each session is in its `Session::slot`'s list).
    slots: Vec<Vec<SessionId>>,
    clock: SlotClock,
    rtp_timeout: Duration,
    /// Sockets are IPv6 (dual-stack): IPv4 destinations are sent to as IPv4-mapped.
    ipv6_sockets: bool,
    pool: Arc<Mutex<PortPool>>,
    counters: Arc<WorkerCounters>,
    events: mpsc::UnboundedSender<MediaEvent>,
    send_buf: [u8; MAX_PACKET_LEN],
    /// Sessions whose handling panicked in this tick, dropped at its end (kept to reuse the
    /// allocation: empty but for a panic).
    failed: Vec<SessionId>,
}

struct Session {
    media: CallMedia,
    /// Non-blocking.
    socket: StdUdpSocket,
    port: u16,
    meeting: Option<MixId>,
    /// The time slot it is served in, for life (see the module docs).
    slot: usize,
}

impl Worker {
    fn run(mut self, commands: channel::Receiver<Command>) {
        self.clock = SlotClock::new(self.clock.epoch, now());
        // Made here: its buffers hold raw pointers, so it is not `Send` and never leaves
        // this thread.
        let mut recv = RecvBatch::default();
        loop {
            // No sessions, no wake-ups: a stale deadline afterwards serves each slot once.
            let received = if self.sessions.is_empty() {
                commands.recv().map_err(|_| RecvTimeoutError::Disconnected)
            } else {
                let deadline = self.clock.next_deadline();
                commands.recv_timeout(deadline.saturating_duration_since(now()))
            };
            match received {
                Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(command) => self.apply_contained(now(), command),
                Err(RecvTimeoutError::Timeout) => {}
            }
            // After a command too: a steady stream of them must not hold the slots up.
            let now = now();
            for (deadline, slot) in self.clock.due(now) {
                self.tick(&mut recv, now, deadline, slot);
            }
        }
        let mut pool = lock(&self.pool);
        for (_, session) in self.sessions.drain() {
            drop(session.socket);
            pool.release(session.port);
        }
    }

    /// [`Worker::apply`], with a panic contained to the command's session (see
    /// [`Worker::tick`] for why unwinding here is sound). A panic between taking a session
    /// out of the maps and putting it back (`Join`) drops it during the unwind: its socket
    /// closes, and its port stays counted in use until the process ends.
    fn apply_contained(&mut self, now: Instant, command: Command) {
        let id = command.session();
        let outcome = catch_unwind(AssertUnwindSafe(|| self.apply(now, command)));
        if let Err(payload) = outcome {
            let what = crate::fault::panic_message(payload.as_ref()).to_owned();
            match id {
                Some(id) => {
                    self.failed.push(id);
                    self.drop_failed(&what);
                }
                None => error!(panic = %what, "a media command panicked; ignored"),
            }
        }
    }

    fn apply(&mut self, now: Instant, command: Command) {
        if let Some(id) = command.session() {
            if let Command::Adopt { .. } = command {
                // Back home (or here for the first time): handle its commands here again.
                self.forward.remove(&id);
            } else if let Some(&to) = self.forward.get(&id) {
                if let Command::Close { .. } = command {
                    self.forward.remove(&id);
                }
                self.pass_on(to, command);
                return;
            }
        }
        match command {
            Command::Open {
                id,
                socket,
                port,
                sender,
            } => {
                let slot = choose_slot(&self.slots, self.clock.index(now));
                let mut media = CallMedia::new(sender, self.rtp_timeout);
                media.set_frame_origin(self.clock.origin(slot));
                let session = Box::new(Session {
                    media,
                    socket,
                    port,
                    meeting: None,
                    slot,
                });
                if let Some(old) = self.insert_session(id, session) {
                    // The engine refuses duplicate ids; keep the pool honest regardless.
                    lock(&self.pool).release(old.port);
                }
            }
            Command::Configure { id, params } => {
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.media.configure(now, params);
                    if let Some(mixer) = s.meeting.and_then(|m| self.meetings.get_mut(&m)) {
                        mixer.set_codec(id.0, params.codec);
                    }
                }
            }
            Command::Play { id, clip, mode } => {
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.media.play(clip, mode);
                }
            }
            Command::StopPlayback { id } => {
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.media.stop_playback();
                }
            }
            Command::Close { id } => {
                if let Some(mut session) = self.remove_session(id) {
                    self.leave_mix(id, &mut session);
                    drop(session.socket);
                    lock(&self.pool).release(session.port);
                }
            }
            Command::Join {
                id,
                meeting,
                worker,
            } => {
                let Some(mut session) = self.remove_session(id) else {
                    return;
                };
                self.leave_mix(id, &mut session);
                if worker != self.index {
                    self.forward.insert(id, worker);
                    self.pass_on(worker, Command::Adopt { id, session });
                    self.pass_on(
                        worker,
                        Command::Join {
                            id,
                            meeting,
                            worker,
                        },
                    );
                    return;
                }
                let codec = session.media.params().map_or(Codec::Pcmu, |p| p.codec);
                self.meetings.entry(meeting).or_default().add(id.0, codec);
                self.meeting_slots.entry(meeting).or_insert(session.slot);
                session.media.join_mix();
                session.meeting = Some(meeting);
                self.insert_session(id, session);
            }
            Command::Leave { id } => {
                if let Some(mut session) = self.sessions.remove(&id) {
                    self.leave_mix(id, &mut session);
                    self.sessions.insert(id, session);
                }
            }
            Command::SetMuted { id, muted } => {
                if let Some(s) = self.sessions.get(&id)
                    && let Some(mixer) = s.meeting.and_then(|m| self.meetings.get_mut(&m))
                {
                    mixer.set_muted(id.0, muted);
                }
            }
            Command::Adopt { id, session } => {
                if let Some(old) = self.insert_session(id, session) {
                    lock(&self.pool).release(old.port);
                }
            }
            Command::Tone {
                meeting,
                clip,
                except,
            } => {
                if let Some(mixer) = self.meetings.get_mut(&meeting) {
                    mixer.play_tone(clip, except.0);
                }
            }
            // Handled by `run`.
            Command::Stop => {}
        }
    }

    /// Adds a session to the map and its slot's list; returns one it replaced (then the
    /// list already held the id, in that one's slot).
    fn insert_session(&mut self, id: SessionId, session: Box<Session>) -> Option<Box<Session>> {
        let slot = session.slot;
        let old = self.sessions.insert(id, session);
        match &old {
            Some(old) if old.slot == slot => {}
            Some(old) => {
                remove_id(&mut self.slots[old.slot], id);
                self.slots[slot].push(id);
            }
            None => self.slots[slot].push(id),
        }
        old
    }

    fn remove_session(&mut self, id: SessionId) -> Option<Box<Session>> {
        let session = self.sessions.remove(&id)?;
        remove_id(&mut self.slots[session.slot], id);
        Some(session)
    }

    /// Takes `session` out of its meeting's mix, dropping the mix when it was the last.
    fn leave_mix(&mut self, id: SessionId, session: &mut Session) {
        session.media.leave_mix();
        let Some(meeting) = session.meeting.take() else {
            return;
        };
        if let Some(mixer) = self.meetings.get_mut(&meeting) {
            mixer.remove(id.0);
            if mixer.is_empty() {
                self.meetings.remove(&meeting);
                self.meeting_slots.remove(&meeting);
            }
        }
    }

    /// Sends `command` to worker `to`. If that worker has stopped, a session in the command
    /// is dropped with its socket, and its port goes back to the pool.
    fn pass_on(&self, to: usize, command: Command) {
        let Err(channel::SendError(command)) = self.peers[to].send(command) else {
            return;
        };
        if let Command::Adopt { session, .. } = command {
            lock(&self.pool).release(session.port);
        }
    }

    /// One slot's tick (scheduled for `deadline`): for each of the slot's calls, take in what
    /// arrived; mix the slot's meetings; then send what is due.
    fn tick(&mut self, recv: &mut RecvBatch, now: Instant, deadline: Instant, slot: usize) {
        let mut tally = Tally::default();
        let mut panicked: Option<String> = None;
        // Each session's work runs inside `catch_unwind`. `AssertUnwindSafe` is sound because
        // a session whose handling panicked is dropped whole at the end of the tick (nothing
        // reads its half-updated `CallMedia` again), the worker's maps are changed only
        // between sessions, and the shared scratch buffers and `tally` are plain data that any
        // later write overwrites or that at worst miscounts one tick.
        for id in &self.slots[slot] {
            let Some(session) = self.sessions.get_mut(id) else {
                continue;
            };

            let tally = &mut tally;
            let received = catch_unwind(AssertUnwindSafe(|| {
                let media = &mut session.media;
                recv.drain(&session.socket, MAX_DATAGRAMS_PER_TICK, |source, bytes| {
                    tally.count(media.handle_datagram(now, source, bytes));
                });
                session.media.handle_timeout(now);
            }));
            if let Err(payload) = received {
                panicked.get_or_insert_with(|| {
                    crate::fault::panic_message(payload.as_ref()).to_owned()
                });
                self.failed.push(*id);
            }
        }
        if !self.failed.is_empty() {
            // Out of the maps before the mix, so no mix reads a broken session.
            self.drop_failed(panicked.as_deref().unwrap_or("panic"));
        }
        self.mix(slot);
        for &id in &self.slots[slot] {
            let Some(session) = self.sessions.get_mut(&id) else {
                continue;
            };
            let send_buf = &mut self.send_buf;
            let events = &self.events;
            let tally = &mut tally;
            let ipv6 = self.ipv6_sockets;
            let sent = catch_unwind(AssertUnwindSafe(|| {
                Self::send_due(session, id, now, deadline, ipv6, send_buf, events, tally)
            }));
            if let Err(payload) = sent {
                panicked.get_or_insert_with(|| {
                    crate::fault::panic_message(payload.as_ref()).to_owned()
                });
                self.failed.push(id);
            }
        }
        if !self.failed.is_empty() {
            self.drop_failed(panicked.as_deref().unwrap_or("panic"));
        }
        tally.add_to(&self.counters);
    }

    /// Sends the session's frames that are due and passes its events on to signalling.
    #[allow(clippy::too_many_arguments)]
    fn send_due(
        session: &mut Session,
        id: SessionId,
        now: Instant,
        deadline: Instant,
        ipv6_sockets: bool,
        send_buf: &mut [u8; MAX_PACKET_LEN],
        events: &mpsc::UnboundedSender<MediaEvent>,
        tally: &mut Tally,
    ) {
        while let Some(transmit) = session.media.poll_transmit(now, send_buf) {
            let destination = for_socket(transmit.destination, ipv6_sockets);
            match session
                .socket
                .send_to(&send_buf[..transmit.len], destination)
            {
                Ok(_) => {
                    tally.sent += 1;
                    // A vDSO clock read, no syscall: how late the packet left after the
                    // later of its frame's due time and the tick that sends it.
                    let late = self::now().saturating_duration_since(transmit.due.max(deadline));
                    tally.send_lateness[lateness_bucket(late)] += 1;
                }
                Err(_) => {
                    tally.send_failures += 1;
                    session.media.transmit_failed();
                }
            }
        }
        while let Some(event) = session.media.poll_event() {
            let event = match event {
                CallEvent::RtpTimeout => MediaEvent::RtpTimeout(id),
                CallEvent::PlaybackFinished { clip } => {
                    MediaEvent::PlaybackFinished { session: id, clip }
                }
                CallEvent::Digit(digit) => MediaEvent::Digit { session: id, digit },
            };
            // A dropped receiver means nobody is listening any more; nothing to do.
            let _ = events.send(event);
        }
    }

    /// Drops the sessions in `self.failed` (their handling panicked with `what`): out of
    /// their mix, socket closed, port back in the pool; signalling hears
    /// [`MediaEvent::Failed`] and ends the call. The engine's route stays until that
    /// `close`, whose command then finds nothing here to do.
    fn drop_failed(&mut self, what: &str) {
        let failed = std::mem::take(&mut self.failed);
        for &id in &failed {
            error!(session = id.0, panic = %what, "media session panicked; dropping it");
            if let Some(mut session) = self.remove_session(id) {
                self.leave_mix(id, &mut session);
                let port = session.port;
                drop(session);
                lock(&self.pool).release(port);
            }
            let _ = self.events.send(MediaEvent::Failed(id));
        }
        self.failed = failed;
        self.failed.clear();
    }

    /// One frame of every meeting whose mix runs in `slot`: each participant's audio in, each
    /// one's mix out, ready for its next packet (in this tick, or in its own slot's).
    ///
    /// A panic in one meeting's mix fails that meeting's sessions (a mixer is shared by all
    /// of them, so none of them can be trusted to go on); other meetings mix on.
    fn mix(&mut self, slot: usize) {
        let mut panicked = None;
        let mut broken = Vec::new();
        for (meeting, mixer) in &mut self.meetings {
            if self.meeting_slots.get(meeting) != Some(&slot) {
                continue;
            }
            let (sessions, mix_in) = (&mut self.sessions, &mut self.mix_in);
            let mixed = catch_unwind(AssertUnwindSafe(|| {
                for i in 0..mixer.len() {
                    let id = SessionId(mixer.id_at(i));
                    if let Some(session) = sessions.get_mut(&id)
                        && session.media.take_mix_input(mix_in)
                    {
                        mixer.input_at(i, mix_in);
                    }
                }
                mixer.mix();
                for (id, frame) in mixer.outputs() {
                    if let Some(session) = sessions.get_mut(&SessionId(id)) {
                        session.media.set_mix_output(frame);
                    }
                }
            }));
            if let Err(payload) = mixed {
                panicked.get_or_insert_with(|| {
                    crate::fault::panic_message(payload.as_ref()).to_owned()
                });
                self.failed
                    .extend((0..mixer.len()).map(|i| SessionId(mixer.id_at(i))));
                broken.push(*meeting);
            }
        }
        if let Some(what) = panicked {
            // The broken mixers go first, so dropping their sessions does not touch them.
            for meeting in broken {
                self.meetings.remove(&meeting);
                self.meeting_slots.remove(&meeting);
            }
            self.drop_failed(&what);
        }
    }
}

/// The slot for a session opened at tick `current`: the least loaded of the next
/// `SOON_SLOTS`, so that its first frame leaves soon after the call is answered (within
/// 10 ms) while a burst of new calls still spreads over half the period.
fn choose_slot(slots: &[Vec<SessionId>], current: u64) -> usize {
    (1..=SOON_SLOTS as u64)
        .map(|d| ((current + d) % slots.len() as u64) as usize)
        .min_by_key(|&slot| slots[slot].len())
        .expect("SOON_SLOTS is at least one")
}

fn remove_id(ids: &mut Vec<SessionId>, id: SessionId) {
    if let Some(i) = ids.iter().position(|x| *x == id) {
        ids.swap_remove(i);
    }
}

/// The instant the sans-IO cores see.
fn now() -> Instant {
    Instant::now()
}

fn for_socket(destination: SocketAddr, ipv6_socket: bool) -> SocketAddr {
    match destination {
        SocketAddr::V4(v4) if ipv6_socket => {
            SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::super::Ssrc;
    use super::super::rtp::{RtpHeader, RtpPacket};
    use super::*;

    const REMOTE: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10)), 4000);
    const SIGNALLING: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5));
    const NAT: SocketAddr = SocketAddr::new(SIGNALLING, 61000);
    const STRANGER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 66)), 4000);
    const TIMEOUT: Duration = Duration::from_secs(30);
    const MS: Duration = Duration::from_millis(1);

    fn params() -> MediaParams {
        MediaParams {
            remote: Some(REMOTE),
            signalling_ip: SIGNALLING,
            codec: Codec::Pcmu,
            payload_type: Codec::Pcmu.payload_type(),
            telephone_event: Some(PayloadType(101)),
            direction: Direction::SendRecv,
            inband_dtmf: false,
        }
    }

    fn with_direction(direction: Direction) -> MediaParams {
        MediaParams {
            direction,
            ..params()
        }
    }

    fn call() -> CallMedia {
        CallMedia::new(RtpSender::from_state(Ssrc(0xabc), 1000, 5000), TIMEOUT)
    }

    /// `frames` frames; μ-law frame `i` is all `i + 1`, A-law frame `i` is all `0x40 + i`.
    fn clip(name: &str, frames: u8) -> Arc<Clip> {
        Arc::new(Clip::from_frames(
            name,
            (0..frames).map(|i| [i + 1; FRAME_SAMPLES]).collect(),
            (0..frames).map(|i| [0x40 + i; FRAME_SAMPLES]).collect(),
        ))
    }

    #[derive(Debug)]
    struct Sent {
        to: SocketAddr,
        header: RtpHeader,
        /// The payload's first byte (every test frame is one repeated byte).
        fill: u8,
    }

    /// Everything due by `now`.
    fn drain(call: &mut CallMedia, now: Instant) -> Vec<Sent> {
        let mut buf = [0u8; MAX_PACKET_LEN];
        let mut sent = Vec::new();
        while let Some(t) = call.poll_transmit(now, &mut buf) {
            let packet = RtpPacket::parse(&buf[..t.len]).unwrap();
            assert_eq!(packet.payload.len(), FRAME_SAMPLES);
            assert!(packet.payload.iter().all(|b| *b == packet.payload[0]));
            sent.push(Sent {
                to: t.destination,
                header: packet.header,
                fill: packet.payload[0],
            });
        }
        sent
    }

    /// What a worker ticking every 20 ms (5 ms after each frame falls due) sends for
    /// frames `from..to`, counted from `t0`.
    fn ticks(call: &mut CallMedia, t0: Instant, frames: std::ops::Range<u32>) -> Vec<Sent> {
        frames
            .flat_map(|k| {
                let now = t0 + PTIME * k + 5 * MS;
                call.handle_timeout(now);
                drain(call, now)
            })
            .collect()
    }

    fn rtp(pt: u8, seq: u16) -> Vec<u8> {
        let mut buf = [0u8; MAX_PACKET_LEN];
        let header = RtpHeader {
            payload_type: PayloadType(pt),
            marker: false,
            sequence: seq,
            timestamp: u32::from(seq) * 160,
            ssrc: Ssrc(77),
        };
        let len = header.write(&[0xff; FRAME_SAMPLES], &mut buf).unwrap();
        buf[..len].to_vec()
    }

    fn events(call: &mut CallMedia) -> Vec<CallEvent> {
        std::iter::from_fn(|| call.poll_event()).collect()
    }

    #[test]
    fn sends_nothing_and_accepts_nothing_before_configure() {
        let t0 = Instant::now();
        let mut call = call();
        assert_eq!(call.poll_timeout(), None);
        assert!(ticks(&mut call, t0, 0..100).is_empty());
        assert_eq!(
            call.handle_datagram(t0, REMOTE, &rtp(0, 1)),
            Inbound::Foreign
        );
        call.handle_timeout(t0 + 2 * TIMEOUT);
        assert!(events(&mut call).is_empty());
    }

    #[test]
    fn sends_silence_every_20_ms_with_continuous_sequence_and_timestamp() {
        let t0 = Instant::now();
        let mut call = call();
        call.configure(t0, params());
        assert_eq!(call.poll_timeout(), Some(t0));
        let sent = ticks(&mut call, t0, 0..50);
        assert_eq!(sent.len(), 50, "50 packets a second");
        for (i, s) in sent.iter().enumerate() {
            assert_eq!(s.to, REMOTE);
            assert_eq!(s.header.payload_type, PayloadType(0));
            assert_eq!(s.header.ssrc, Ssrc(0xabc));
            assert_eq!(s.header.sequence, 1000 + i as u16);
            assert_eq!(s.header.timestamp, 5000 + 160 * i as u32);
            assert_eq!(s.header.marker, i == 0, "marker on the first packet only");
            assert_eq!(s.fill, 0xFF, "μ-law silence");
        }
        assert_eq!(call.poll_timeout(), Some(t0 + PTIME * 50));
        assert!(
            drain(&mut call, t0 + PTIME * 50 - MS).is_empty(),
            "not early"
        );
    }

    #[test]
    fn a_law_sends_payload_type_8_and_a_law_silence() {
        let t0 = Instant::now();
        let mut call = call();
        call.configure(
            t0,
            MediaParams {
                codec: Codec::Pcma,
                payload_type: Codec::Pcma.payload_type(),
                ..params()
            },
        );
        let sent = ticks(&mut call, t0, 0..2);
        assert!(
            sent.iter()
                .all(|s| s.header.payload_type == PayloadType(8) && s.fill == 0xD5)
        );
    }

    #[test]
    fn plays_a_clip_once_then_reports_it_and_falls_silent() {
        let t0 = Instant::now();
        let mut call = call();
        call.configure(t0, params());
        call.play(clip("welcome", 3), PlayMode::Once);
        let first = ticks(&mut call, t0, 0..2);
        assert!(events(&mut call).is_empty(), "not before the last frame");
        let rest = ticks(&mut call, t0, 2..3);
        assert_eq!(
            events(&mut call),
            [CallEvent::PlaybackFinished {
                clip: "welcome".into()
            }]
        );
        assert!(!call.is_playing());
        let after = ticks(&mut call, t0, 3..5);
        let fills: Vec<_> = first
            .iter()
            .chain(&rest)
            .chain(&after)
            .map(|s| s.fill)
            .collect();
        assert_eq!(fills, [1, 2, 3, 0xFF, 0xFF]);
        assert!(events(&mut call).is_empty(), "reported once");
    }

    #[test]
    fn an_empty_clip_finishes_at_the_next_frame() {
        let t0 = Instant::now();
        let mut call = call();
        call.configure(t0, params());
        call.play(clip("nothing", 0), PlayMode::Once);
        let sent = ticks(&mut call, t0, 0..1);
        assert_eq!(sent[0].fill, 0xFF);
        assert_eq!(
            events(&mut call),
            [CallEvent::PlaybackFinished {
                clip: "nothing".into()
            }]
        );
    }

    #[test]
    fn loops_hold_music_without_events() {
        let t0 = Instant::now();
        let mut call = call();
        call.configure(t0, params());
        call.play(clip("music", 3), PlayMode::Loop);
        let fills: Vec<_> = ticks(&mut call, t0, 0..7).iter().map(|s| s.fill).collect();
        assert_eq!(fills, [1, 2, 3, 1, 2, 3, 1]);
        assert!(events(&mut call).is_empty());
    }

    #[test]
    fn sequence_and_timestamp_run_on_across_prompt_changes() {
        let t0 = Instant::now();
        let mut call = call();
        call.play(clip("greeting", 5), PlayMode::Once); // before configure: waits
        call.configure(t0, params());
        let mut sent = ticks(&mut call, t0, 0..2);
        call.play(clip("enter-id", 2), PlayMode::Once);
        sent.extend(ticks(&mut call, t0, 2..3));
        call.stop_playback();
        sent.extend(ticks(&mut call, t0, 3..4));
        call.play(clip("music", 1), PlayMode::Loop);
        sent.extend(ticks(&mut call, t0, 4..6));
        let fills: Vec<_> = sent.iter().map(|s| s.fill).collect();
        assert_eq!(fills, [1, 2, 1, 0xFF, 1, 1]);
        for (i, s) in sent.iter().enumerate() {
            assert_eq!(s.header.sequence, 1000 + i as u16);
            assert_eq!(s.header.timestamp, 5000 + 160 * i as u32);
            assert_eq!(s.header.marker, i == 0);
        }
        assert!(
            events(&mut call).is_empty(),
            "replaced and stopped: no event"
        );
    }

    #[test]
    fn a_codec_change_switches_law_mid_clip() {
        let t0 = Instant::now();
        let mut call = call();
        call.configure(t0, params());
        call.play(clip("greeting", 4), PlayMode::Once);
        let mut sent = ticks(&mut call, t0, 0..2);
        call.configure(
            t0 + 30 * MS,
            MediaParams {
                codec: Codec::Pcma,
                payload_type: Codec::Pcma.payload_type(),
                ..params()
            },
        );
        sent.extend(ticks(&mut call, t0, 2..4));
        let got: Vec<_> = sent
            .iter()
            .map(|s| (s.header.payload_type.0, s.fill))
            .collect();
        assert_eq!(got, [(0, 1), (0, 2), (8, 0x42), (8, 0x43)]);
    }

    #[test]
    fn hold_stops_sending_and_resume_marks_the_talkspurt_on_the_same_clock() {
        let t0 = Instant::now();
        let mut call = call();
        call.configure(t0, params());
        call.play(clip("music", 3), PlayMode::Loop);
        assert_eq!(ticks(&mut call, t0, 0..5).len(), 5);
        // The caller puts us on hold (a=sendonly): we receive only.
        call.configure(t0 + 95 * MS, with_direction(Direction::RecvOnly));
        assert!(ticks(&mut call, t0, 5..55).is_empty());
        call.configure(t0 + 1095 * MS, with_direction(Direction::Inactive));
        assert!(ticks(&mut call, t0, 55..60).is_empty());
        call.configure(t0 + 1195 * MS, params());
        let resumed = ticks(&mut call, t0, 60..62);
        let got: Vec<_> = resumed
            .iter()
            .map(|s| {
                (
                    s.header.marker,
                    s.header.sequence,
                    s.header.timestamp,
                    s.fill,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (true, 1005, 5000 + 60 * 160, 3), // music picks up where it paused
                (false, 1006, 5000 + 61 * 160, 1)
            ]
        );
    }

    #[test]
    fn a_late_tick_catches_up_a_few_frames_and_skips_the_rest() {
        let t0 = Instant::now();
        let mut call = call();
        call.configure(t0, params());
        assert_eq!(drain(&mut call, t0).len(), 1);
        // 45 ms late: the frames due at 20 and 40 ms go out together.
        let two = drain(&mut call, t0 + 45 * MS);
        assert_eq!(two.len(), 2);
        assert!(two.iter().all(|s| !s.header.marker));
        // Stalled for a second: the newest three frames go out, the rest is skipped.
        let burst = drain(&mut call, t0 + 1005 * MS);
        let got: Vec<_> = burst
            .iter()
            .map(|s| (s.header.marker, s.header.sequence, s.header.timestamp))
            .collect();
        assert_eq!(
            got,
            [
                (true, 1003, 5000 + 48 * 160),
                (false, 1004, 5000 + 49 * 160),
                (false, 1005, 5000 + 50 * 160)
            ]
        );
        assert_eq!(call.stats().late_frames_skipped, 45);
        assert_eq!(call.poll_timeout(), Some(t0 + 51 * PTIME));
    }

    #[test]
    fn with_a_frame_origin_the_first_frame_waits_for_the_slot_then_comes_every_20_ms() {
        let t0 = Instant::now();
        let mut call = call();
        // Slot 3 of 10: frames at t0 + 6 ms + k × 20 ms.
        call.set_frame_origin(t0 + 6 * MS);
        call.configure(t0 + 13 * MS, params());
        assert_eq!(call.poll_timeout(), Some(t0 + 26 * MS));
        assert!(drain(&mut call, t0 + 25 * MS).is_empty());
        let mut sent = Vec::new();
        for k in 0..50u32 {
            let at = t0 + 26 * MS + PTIME * k;
            let got = drain(&mut call, at);
            assert_eq!(got.len(), 1, "frame {k} at its slot instant");
            assert_eq!(call.poll_timeout(), Some(at + PTIME));
            sent.extend(got);
        }
        for (i, s) in sent.iter().enumerate() {
            assert_eq!(s.header.sequence, 1000 + i as u16);
            assert_eq!(s.header.timestamp, 5000 + 160 * i as u32);
            assert_eq!(s.header.marker, i == 0);
        }
        // An origin in the future names the same grid.
        let mut later = call_with_origin(t0 + 6 * MS + 40 * PTIME);
        later.configure(t0 + 13 * MS, params());
        assert_eq!(later.poll_timeout(), Some(t0 + 26 * MS));
    }

    fn call_with_origin(origin: Instant) -> CallMedia {
        let mut call = call();
        call.set_frame_origin(origin);
        call
    }

    #[test]
    fn moving_a_running_frame_clock_into_a_slot_only_delays_it_once() {
        let t0 = Instant::now();
        let mut call = call();
        call.configure(t0, params());
        assert_eq!(drain(&mut call, t0).len(), 1);
        assert_eq!(drain(&mut call, t0 + PTIME).len(), 1);
        // The grid moves 7 ms later: the frame due at 40 ms goes at 47 ms, then every 20 ms.
        call.set_frame_origin(t0 + 7 * MS);
        assert_eq!(call.poll_timeout(), Some(t0 + 47 * MS));
        assert!(drain(&mut call, t0 + 46 * MS).is_empty());
        let next = drain(&mut call, t0 + 47 * MS);
        assert_eq!(next.len(), 1);
        assert!(!next[0].header.marker);
        assert_eq!(next[0].header.timestamp, 5000 + 2 * 160);
        assert_eq!(call.poll_timeout(), Some(t0 + 67 * MS));
    }

    #[test]
    fn the_slot_clock_serves_each_slot_in_turn_every_2_ms() {
        let epoch = Instant::now();
        let mut clock = SlotClock::new(epoch, epoch);
        assert_eq!(SLOT_TICK * SLOTS as u32, PTIME);
        assert_eq!(clock.next_deadline(), epoch + SLOT_TICK);
        let mut served = Vec::new();
        for k in 1..=25u32 {
            // Woken a little late, as timers are.
            let now = epoch + SLOT_TICK * k + MS / 4;
            let due: Vec<_> = clock.due(now).collect();
            assert_eq!(due.len(), 1, "tick {k}");
            assert_eq!(due[0].0, epoch + SLOT_TICK * k);
            served.push(due[0].1);
        }
        let want: Vec<usize> = (1..=25).map(|k| k % SLOTS).collect();
        assert_eq!(served, want);
        // Nothing twice.
        assert_eq!(clock.due(epoch + SLOT_TICK * 25 + MS / 2).count(), 0);
        assert_eq!(clock.origin(4), epoch + 4 * SLOT_TICK);
    }

    #[test]
    fn after_a_stall_the_slot_clock_serves_every_slot_once_oldest_first() {
        let epoch = Instant::now();
        let mut clock = SlotClock::new(epoch, epoch);
        // 53 ms without a wake-up: ticks 1..=26 are due; the last ten, one per slot.
        let due: Vec<_> = clock.due(epoch + 53 * MS).collect();
        let slots: Vec<usize> = due.iter().map(|(_, slot)| *slot).collect();
        assert_eq!(slots, [7, 8, 9, 0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(due[0].0, epoch + 17 * SLOT_TICK);
        assert_eq!(due[9].0, epoch + 26 * SLOT_TICK);
        assert_eq!(clock.next_deadline(), epoch + 27 * SLOT_TICK);
    }

    /// A worker's schedule on a virtual clock: 1000 calls arriving over 100 ms spread over
    /// the slots by `choose_slot`, each tick serving one slot's calls, for one second.
    #[test]
    fn slotted_calls_send_a_tenth_per_tick_each_exactly_every_20_ms() {
        let epoch = Instant::now();
        let mut clock = SlotClock::new(epoch, epoch);
        let mut slots: Vec<Vec<SessionId>> = vec![Vec::new(); SLOTS];
        let mut calls = Vec::new();
        for i in 0..1000u64 {
            // Calls arrive over the first 100 ms, at odd instants.
            let at = epoch + Duration::from_micros(i * 100 + 37);
            let slot = choose_slot(&slots, clock.index(at));
            slots[slot].push(SessionId(i));
            let mut call = call_with_origin(clock.origin(slot));
            call.configure(at, params());
            // Its first frame is at most 10 ms away.
            assert!(call.poll_timeout().unwrap() - at <= SOON_SLOTS as u32 * SLOT_TICK);
            calls.push(call);
        }
        let loads: Vec<usize> = slots.iter().map(Vec::len).collect();
        assert!(loads.iter().all(|&n| (90..=110).contains(&n)), "{loads:?}");
        let mut sends: Vec<Vec<Instant>> = vec![Vec::new(); calls.len()];
        let mut buf = [0u8; MAX_PACKET_LEN];
        let mut per_tick = Vec::new();
        for k in 1..=500u32 {
            let now = epoch + SLOT_TICK * k;
            for (deadline, slot) in clock.due(now) {
                let mut n = 0;
                for id in &slots[slot] {
                    let call = &mut calls[id.0 as usize];
                    while let Some(t) = call.poll_transmit(now, &mut buf) {
                        assert_eq!(t.due, deadline, "due exactly at its slot's tick");
                        sends[id.0 as usize].push(now);
                        n += 1;
                    }
                }
                per_tick.push(n);
            }
        }
        // Once every call is running (after 120 ms), each tick sends exactly one slot.
        assert!(
            per_tick[60..]
                .iter()
                .zip(loads.iter().cycle().skip(1))
                .all(|(a, b)| a == b),
            "{per_tick:?}"
        );
        for (i, times) in sends.iter().enumerate() {
            assert!(times.len() >= 44, "call {i} sent {}", times.len());
            assert!(
                times.windows(2).all(|w| w[1] - w[0] == PTIME),
                "call {i} not every 20 ms"
            );
        }
    }

    #[test]
    fn rtp_timeout_fires_once_after_peer_silence_and_rearms_on_a_packet() {
        let t0 = Instant::now();
        let mut call = call();
        call.configure(t0, params());
        call.handle_timeout(t0 + TIMEOUT - MS);
        assert!(events(&mut call).is_empty());
        call.handle_timeout(t0 + TIMEOUT);
        assert_eq!(events(&mut call), [CallEvent::RtpTimeout]);
        call.handle_timeout(t0 + 3 * TIMEOUT);
        assert!(events(&mut call).is_empty(), "once");
        let t1 = t0 + 4 * TIMEOUT;
        assert_eq!(
            call.handle_datagram(t1, REMOTE, &rtp(0, 1)),
            Inbound::Accepted
        );
        call.handle_timeout(t1 + TIMEOUT);
        assert_eq!(events(&mut call), [CallEvent::RtpTimeout]);
    }

    #[test]
    fn each_accepted_packet_pushes_the_timeout_back() {
        let t0 = Instant::now();
        let mut call = call();
        call.configure(t0, params());
        let t1 = t0 + Duration::from_secs(20);
        assert_eq!(call.handle_datagram(t1, NAT, &rtp(0, 1)), Inbound::Accepted);
        call.handle_timeout(t0 + TIMEOUT);
        assert!(events(&mut call).is_empty());
        assert_eq!(call.poll_timeout(), Some(t0), "next frame still first");
        drain(&mut call, t1);
        assert_eq!(call.poll_timeout(), Some(t1 + PTIME));
        call.handle_timeout(t1 + TIMEOUT);
        assert_eq!(events(&mut call), [CallEvent::RtpTimeout]);
    }

    #[test]
    fn no_timeout_while_our_direction_does_not_receive() {
        let t0 = Instant::now();
        for direction in [Direction::SendOnly, Direction::Inactive] {
            let mut call = call();
            call.configure(t0, with_direction(direction));
            call.handle_timeout(t0 + 10 * TIMEOUT);
            assert!(events(&mut call).is_empty(), "{direction:?}");
        }
    }

    #[test]
    fn changed_params_restart_the_timeout_clock_and_a_refresh_does_not() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut call = call();
        call.configure(t0, params());
        call.configure(t0 + 20 * s, params()); // session refresh: same SDP
        call.handle_timeout(t0 + 30 * s);
        assert_eq!(events(&mut call), [CallEvent::RtpTimeout]);

        let mut call = self::call();
        call.configure(t0, params());
        call.configure(t0 + 20 * s, with_direction(Direction::SendOnly)); // peer holds
        call.handle_timeout(t0 + 100 * s);
        call.configure(t0 + 100 * s, params()); // resume
        call.handle_timeout(t0 + 129 * s);
        assert!(events(&mut call).is_empty());
        call.handle_timeout(t0 + 130 * s);
        assert_eq!(events(&mut call), [CallEvent::RtpTimeout]);

        let mut call = self::call();
        call.configure(t0, params());
        let moved = MediaParams {
            remote: Some(SocketAddr::new(REMOTE.ip(), 5000)),
            ..params()
        };
        call.configure(t0 + 20 * s, moved); // re-INVITE to a new port
        call.handle_timeout(t0 + 49 * s);
        assert!(events(&mut call).is_empty());
    }

    #[test]
    fn foreign_sources_are_counted_and_ignored() {
        let t0 = Instant::now();
        let mut call = call();
        call.configure(t0, params());
        let other_port = SocketAddr::new(REMOTE.ip(), 4002);
        for (i, source) in [STRANGER, other_port].into_iter().enumerate() {
            let at = t0 + 5 * MS * (i as u32 + 1);
            assert_eq!(
                call.handle_datagram(at, source, &rtp(0, 1)),
                Inbound::Foreign
            );
        }
        assert_eq!(call.stats().foreign, 2);
        assert_eq!(call.stats().audio_received, 0);
        assert_eq!(drain(&mut call, t0 + 25 * MS)[0].to, REMOTE, "not latched");
        call.handle_timeout(t0 + TIMEOUT);
        assert_eq!(events(&mut call), [CallEvent::RtpTimeout], "not kept alive");
    }

    #[test]
    fn latches_onto_the_first_accepted_source_symmetric_rtp() {
        let t0 = Instant::now();
        let mut call = call();
        call.configure(t0, params());
        assert_eq!(drain(&mut call, t0)[0].to, REMOTE);
        assert_eq!(
            call.handle_datagram(t0 + 10 * MS, NAT, &rtp(0, 1)),
            Inbound::Accepted
        );
        assert_eq!(drain(&mut call, t0 + 25 * MS)[0].to, NAT);
        // Another port on the signalling IP while NAT is live: refused.
        let stray = SocketAddr::new(SIGNALLING, 62000);
        assert_eq!(
            call.handle_datagram(t0 + 30 * MS, stray, &rtp(0, 2)),
            Inbound::Foreign
        );
        assert_eq!(drain(&mut call, t0 + 45 * MS)[0].to, NAT);
    }

    #[test]
    fn with_no_sdp_address_we_wait_for_the_peer_then_send_to_it() {
        let t0 = Instant::now();
        let mut call = call();
        call.configure(
            t0,
            MediaParams {
                remote: None,
                ..params()
            },
        );
        assert!(ticks(&mut call, t0, 0..10).is_empty());
        let at = t0 + 10 * PTIME;
        assert_eq!(call.handle_datagram(at, NAT, &rtp(0, 1)), Inbound::Accepted);
        let sent = ticks(&mut call, t0, 10..11);
        let h = sent[0].header;
        assert_eq!(
            (sent[0].to, h.marker, h.sequence, h.timestamp),
            (NAT, true, 1000, 5000 + 1600)
        );
    }

    #[test]
    fn garbage_from_an_accepted_source_is_counted_not_latched() {
        let t0 = Instant::now();
        let mut call = call();
        call.configure(t0, params());
        assert_eq!(call.handle_datagram(t0, NAT, b"hello"), Inbound::Malformed);
        let rtcp_rr = [0x80, 201, 0, 1, 0, 0, 0, 1];
        assert_eq!(call.handle_datagram(t0, NAT, &rtcp_rr), Inbound::Malformed);
        assert_eq!(call.stats().malformed, 2);
        assert_eq!(drain(&mut call, t0)[0].to, REMOTE);
    }

    #[test]
    fn accepted_packets_are_sorted_by_payload_type_for_the_hooks() {
        let t0 = Instant::now();
        let mut call = call();
        call.configure(t0, params());
        for pt in [0, 0, 101, 13, 8] {
            assert_eq!(
                call.handle_datagram(t0, REMOTE, &rtp(pt, 1)),
                Inbound::Accepted
            );
        }
        let stats = call.stats();
        assert_eq!(
            (
                stats.audio_received,
                stats.telephone_events_received,
                stats.other_received
            ),
            (2, 1, 2)
        );
    }

    /// PCMU packets carrying `key` as a −10 dBm0 tone pair for `frames` × 20 ms, then silence.
    fn audio(seq: u16, value: i16) -> Vec<u8> {
        let mut payload = [0u8; FRAME_SAMPLES];
        g711::encode(Codec::Pcmu, &[value; FRAME_SAMPLES], &mut payload);
        let mut buf = [0u8; MAX_PACKET_LEN];
        let header = RtpHeader {
            payload_type: PayloadType(0),
            marker: false,
            sequence: seq,
            timestamp: u32::from(seq) * 160,
            ssrc: Ssrc(77),
        };
        let len = header.write(&payload, &mut buf).unwrap();
        buf[..len].to_vec()
    }

    #[test]
    fn in_a_mix_the_call_buffers_its_audio_and_sends_the_mixed_frame() {
        let t0 = Instant::now();
        let mut call = call();
        call.configure(t0, params());
        let peer = params().remote.unwrap();
        let mut pcm = [0i16; FRAME_SAMPLES];
        // Not in a mix: nothing is buffered.
        call.handle_datagram(t0, peer, &audio(1, 1000));
        assert!(!call.take_mix_input(&mut pcm));
        call.join_mix();
        assert!(call.in_mix());
        call.handle_datagram(t0, peer, &audio(2, 1000));
        assert!(call.take_mix_input(&mut pcm));
        assert!((pcm[0] - 1000).abs() < 40, "{}", pcm[0]);
        assert!(!call.take_mix_input(&mut pcm), "one frame per packet");
        // A burst beyond three frames drops the oldest.
        for seq in 3..8 {
            call.handle_datagram(t0, peer, &audio(seq, 100 * seq as i16));
        }
        let mut taken = Vec::new();
        while call.take_mix_input(&mut pcm) {
            taken.push(pcm[0]);
        }
        assert_eq!(taken.len(), 3);
        assert!((taken[0] - 500).abs() < 20, "{taken:?}");
        // The mixed frame goes out in place of silence, once.
        call.set_mix_output(&[0x42; FRAME_SAMPLES]);
        let sent = drain(&mut call, t0);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].fill, 0x42);
        let sent = ticks(&mut call, t0, 1..2);
        assert_eq!(sent[0].fill, 0xFF);
        // A prompt plays over the mix.
        call.play(clip("help", 1), PlayMode::Once);
        call.set_mix_output(&[0x42; FRAME_SAMPLES]);
        let sent = ticks(&mut call, t0, 2..3);
        assert_eq!(sent[0].fill, 1);
        call.leave_mix();
        call.handle_datagram(t0, peer, &audio(9, 1000));
        assert!(!call.take_mix_input(&mut pcm));
    }

    #[test]
    fn a_telephone_event_keeps_the_callers_audio_out_of_the_mix() {
        let t0 = Instant::now();
        let mut call = call();
        let mut p = params();
        p.telephone_event = Some(PayloadType(101));
        call.configure(t0, p);
        call.join_mix();
        let peer = p.remote.unwrap();
        let mut pcm = [0i16; FRAME_SAMPLES];
        call.handle_datagram(t0, peer, &audio(1, 3000));
        call.handle_datagram(t0, peer, &rtp(101, 2));
        call.handle_datagram(t0 + 20 * MS, peer, &audio(3, 3000));
        assert!(call.take_mix_input(&mut pcm));
        assert_eq!(pcm, [0; FRAME_SAMPLES], "buffered audio silenced");
        assert!(call.take_mix_input(&mut pcm));
        assert_eq!(
            pcm, [0; FRAME_SAMPLES],
            "audio during the key press silenced"
        );
        call.handle_datagram(t0 + 100 * MS, peer, &audio(4, 3000));
        assert!(call.take_mix_input(&mut pcm));
        assert!(pcm[0] > 2900, "heard again after the key press");
    }

    #[test]
    fn with_inband_detection_a_tone_never_reaches_the_mix() {
        let t0 = Instant::now();
        let mut call = call();
        let mut p = params();
        p.inband_dtmf = true;
        call.configure(t0, p);
        call.join_mix();
        let peer = p.remote.unwrap();
        let mut pcm = [0i16; FRAME_SAMPLES];
        let mut mixed = Vec::new();
        // Quiet speech-level noise, then the tone for 5, then quiet again.
        let mut packets: Vec<Vec<u8>> = (0..5).map(|i| audio(i, 0)).collect();
        packets.extend(tone_packets(crate::media::dtmf::Key::D5, 5));
        packets.extend((20..30).map(|i| audio(i, 0)));
        for (i, bytes) in packets.iter().enumerate() {
            let now = t0 + 20 * MS * i as u32;
            call.handle_datagram(now, peer, bytes);
            while call.take_mix_input(&mut pcm) {
                mixed.push(pcm.iter().map(|&x| i32::from(x).abs()).max().unwrap());
            }
        }
        assert!(mixed.len() >= packets.len() - 2, "{} frames", mixed.len());
        assert!(
            mixed.iter().all(|&peak| peak < 64),
            "tone energy reached the mix: {mixed:?}"
        );
        let digits: Vec<_> = events(&mut call);
        assert_eq!(digits.len(), 1, "the tone is still a digit: {digits:?}");
    }

    fn tone_packets(key: crate::media::dtmf::Key, frames: u16) -> Vec<Vec<u8>> {
        use crate::media::dtmf::goertzel::{COL_HZ, ROW_HZ, key_tones};
        let (r, c) = key_tones(key);
        let (f1, f2) = (ROW_HZ[r], COL_HZ[c]);
        let amp = 22_748.0 * 10f32.powf(-13.0 / 20.0); // each tone −13 dBm0: pair ≈ −10 dBm0
        (0..frames + 10)
            .map(|seq| {
                let mut pcm = [0i16; FRAME_SAMPLES];
                if seq < frames {
                    for (i, s) in pcm.iter_mut().enumerate() {
                        let t = (usize::from(seq) * FRAME_SAMPLES + i) as f32 / 8000.0;
                        let v = amp
                            * ((std::f32::consts::TAU * f1 * t).sin()
                                + (std::f32::consts::TAU * f2 * t).sin());
                        *s = v as i16;
                    }
                }
                let mut payload = [0u8; FRAME_SAMPLES];
                g711::encode(Codec::Pcmu, &pcm, &mut payload);
                let mut buf = [0u8; MAX_PACKET_LEN];
                let header = RtpHeader {
                    payload_type: PayloadType(0),
                    marker: false,
                    sequence: seq,
                    timestamp: u32::from(seq) * 160,
                    ssrc: Ssrc(77),
                };
                let len = header.write(&payload, &mut buf).unwrap();
                buf[..len].to_vec()
            })
            .collect()
    }

    #[test]
    fn inband_tones_become_digits_only_when_asked_for() {
        use crate::media::dtmf::Key;
        let t0 = Instant::now();
        for inband_dtmf in [false, true] {
            let mut call = call();
            call.configure(
                t0,
                MediaParams {
                    inband_dtmf,
                    ..params()
                },
            );
            for (i, packet) in tone_packets(Key::D5, 4).iter().enumerate() {
                call.handle_datagram(t0 + 20 * MS * i as u32, REMOTE, packet);
            }
            let digits: Vec<(Key, DtmfMethod)> = events(&mut call)
                .into_iter()
                .filter_map(|e| match e {
                    CallEvent::Digit(d) => Some((d.key, d.method)),
                    _ => None,
                })
                .collect();
            let expected = if inband_dtmf {
                vec![(Key::D5, DtmfMethod::Inband)]
            } else {
                vec![]
            };
            assert_eq!(digits, expected, "inband_dtmf = {inband_dtmf}");
        }
    }

    #[test]
    fn packets_while_we_do_not_receive_are_dropped_but_still_latch() {
        let t0 = Instant::now();
        let mut call = call();
        call.configure(t0, with_direction(Direction::SendOnly));
        assert_eq!(
            call.handle_datagram(t0, NAT, &rtp(0, 1)),
            Inbound::NotExpected
        );
        assert_eq!(call.stats().audio_received, 0);
        assert_eq!(drain(&mut call, t0)[0].to, NAT);
    }

    #[test]
    fn dual_stack_sockets_send_to_ipv4_mapped_addresses() {
        let v4: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:4000".parse().unwrap();
        assert_eq!(for_socket(v4, true), mapped);
        assert_eq!(for_socket(v4, false), v4);
    }

    mod udp {
        //! The engine over real sockets on 127.0.0.1. Each test owns a slice of 41000–41999
        //! and every wait is bounded.

        use tokio::net::UdpSocket;
        use tokio::sync::mpsc::UnboundedReceiver;
        use tokio::time::{sleep, timeout};

        use super::*;

        const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
        /// TEST-NET-1: no packet in these tests comes from it.
        const ELSEWHERE: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        const WAIT: Duration = Duration::from_secs(5);

        fn start(
            ports: RangeInclusive<u16>,
            rtp_timeout: Duration,
        ) -> (Engine, UnboundedReceiver<MediaEvent>) {
            let (tx, rx) = mpsc::unbounded_channel();
            let cfg = EngineConfig {
                bind_ip: LOCALHOST,
                rtp_ports: ports,
                rtp_timeout,
                workers: 2,
            };
            (Engine::start(cfg, tx).unwrap(), rx)
        }

        fn towards(peer: &UdpSocket, signalling_ip: IpAddr) -> MediaParams {
            MediaParams {
                remote: Some(peer.local_addr().unwrap()),
                signalling_ip,
                codec: Codec::Pcmu,
                payload_type: Codec::Pcmu.payload_type(),
                telephone_event: None,
                direction: Direction::SendRecv,
                inband_dtmf: false,
            }
        }

        async fn receive(peer: &UdpSocket) -> (Vec<u8>, SocketAddr) {
            let mut buf = [0u8; 2048];
            let (len, from) = timeout(WAIT, peer.recv_from(&mut buf))
                .await
                .expect("a packet within WAIT")
                .unwrap();
            (buf[..len].to_vec(), from)
        }

        async fn until(engine: &Engine, what: impl Fn(&EngineStats) -> bool) -> EngineStats {
            timeout(WAIT, async {
                loop {
                    let stats = engine.stats();
                    if what(&stats) {
                        return stats;
                    }
                    sleep(10 * MS).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("stats never matched: {:?}", engine.stats()))
        }

        /// What a peer hears: the mean of the decoded samples of its newest packet.
        async fn heard(peer: &UdpSocket) -> i32 {
            let (bytes, _) = receive(peer).await;
            let packet = RtpPacket::parse(&bytes).unwrap();
            let mut pcm = [0i16; FRAME_SAMPLES];
            g711::decode(Codec::Pcmu, packet.payload, &mut pcm);
            pcm.iter().map(|&x| i32::from(x)).sum::<i32>() / FRAME_SAMPLES as i32
        }

        async fn say(peer: &UdpSocket, to: SocketAddr, seq: u16, value: i16) {
            let mut payload = [0u8; FRAME_SAMPLES];
            g711::encode(Codec::Pcmu, &[value; FRAME_SAMPLES], &mut payload);
            let mut buf = [0u8; MAX_PACKET_LEN];
            let header = RtpHeader {
                payload_type: PayloadType(0),
                marker: false,
                sequence: seq,
                timestamp: u32::from(seq) * 160,
                ssrc: Ssrc(u32::from(value as u16)),
            };
            let len = header.write(&payload, &mut buf).unwrap();
            peer.send_to(&buf[..len], to).await.unwrap();
        }

        #[tokio::test]
        async fn a_meeting_spread_over_two_workers_mixes_n_minus_one() {
            let (engine, _events) = start(41900..=41999, Duration::from_secs(30));
            let values = [1000i16, 2000, 4000];
            let mut peers = Vec::new();
            for (i, _) in values.iter().enumerate() {
                let id = SessionId(i as u64 + 1);
                let peer = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
                let port = engine.open(id).unwrap();
                engine.configure(id, towards(&peer, LOCALHOST)).unwrap();
                // Round-robin put the sessions on both workers: joining moves them to one.
                engine.join_meeting(id, MixId(9)).unwrap();
                peers.push((id, peer, SocketAddr::new(LOCALHOST, port)));
            }
            assert_eq!(engine.meetings(), 1);
            let expect = [6000, 5000, 3000];
            let mut last = [0i32; 3];
            for seq in 0..40u16 {
                for (i, (_, peer, to)) in peers.iter().enumerate() {
                    say(peer, *to, seq, values[i]).await;
                }
                for (i, (_, peer, _)) in peers.iter().enumerate() {
                    last[i] = heard(peer).await;
                }
                if last
                    .iter()
                    .zip(expect)
                    .all(|(&got, want)| (got - want).abs() < want / 10)
                {
                    break;
                }
            }
            for (got, want) in last.iter().zip(expect) {
                assert!(
                    (got - want).abs() < want / 10,
                    "heard {last:?}, want {expect:?}"
                );
            }
            // The third leaves: it hears silence, the others stop hearing it.
            engine.leave_meeting(peers[2].0).unwrap();
            let mut settled = false;
            for seq in 40..80u16 {
                for (i, (_, peer, to)) in peers.iter().enumerate() {
                    say(peer, *to, seq, values[i]).await;
                }
                for (i, (_, peer, _)) in peers.iter().enumerate() {
                    last[i] = heard(peer).await;
                }
                if (last[0] - 2000).abs() < 200 && (last[1] - 1000).abs() < 100 && last[2] == 0 {
                    settled = true;
                    break;
                }
            }
            assert!(settled, "after a leave: {last:?}");
            for (id, _, _) in &peers {
                engine.close(*id);
            }
            assert_eq!(engine.meetings(), 0);
            until(&engine, |s| s.ports_in_use == 0 && s.sessions_open == 0).await;
        }

        #[tokio::test]
        async fn streams_a_clip_at_50_packets_a_second_then_silence() {
            let (engine, mut events) = start(41000..=41099, Duration::from_secs(30));
            let peer = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
            let id = SessionId(1);
            let port = engine.open(id).unwrap();
            assert!((41000..=41098).contains(&port) && port % 2 == 0);
            engine
                .play(id, clip("greeting", 10), PlayMode::Once)
                .unwrap();
            engine.configure(id, towards(&peer, LOCALHOST)).unwrap();

            let mut packets = Vec::new();
            let mut arrivals = Vec::new();
            for _ in 0..50 {
                let (bytes, from) = receive(&peer).await;
                assert_eq!(from, SocketAddr::new(LOCALHOST, port));
                arrivals.push(tokio::time::Instant::now());
                packets.push(bytes);
            }
            let span = arrivals[49] - arrivals[0];
            assert!(
                (850 * MS..2000 * MS).contains(&span),
                "49 intervals of 20 ms took {span:?}"
            );
            let first = RtpPacket::parse(&packets[0]).unwrap().header;
            assert!(first.marker);
            for (i, bytes) in packets.iter().enumerate() {
                let p = RtpPacket::parse(bytes).unwrap();
                assert_eq!(p.header.sequence, first.sequence.wrapping_add(i as u16));
                assert_eq!(
                    p.header.timestamp,
                    first.timestamp.wrapping_add(160 * i as u32)
                );
                assert_eq!(p.header.ssrc, first.ssrc);
                assert_eq!(p.header.payload_type, PayloadType(0));
                let fill = if i < 10 { i as u8 + 1 } else { 0xFF };
                assert_eq!(p.payload, &[fill; FRAME_SAMPLES][..], "packet {i}");
            }
            let event = timeout(WAIT, events.recv()).await.unwrap();
            assert_eq!(
                event,
                Some(MediaEvent::PlaybackFinished {
                    session: id,
                    clip: "greeting".into()
                })
            );
            // The worker adds a tick's counts once the tick is over, which may be after the
            // peer has its packets and signalling its event.
            let stats = until(&engine, |s| s.packets_sent >= 50).await;
            assert_eq!((stats.sessions_open, stats.ports_in_use), (1, 1));
            engine.close(id);
        }

        #[tokio::test]
        async fn close_stops_sending_and_returns_the_port() {
            let (engine, _events) = start(41100..=41199, Duration::from_secs(30));
            let peer = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
            let id = SessionId(7);
            let port = engine.open(id).unwrap();
            assert!(matches!(engine.open(id), Err(MediaError::SessionExists(_))));
            engine.configure(id, towards(&peer, LOCALHOST)).unwrap();
            receive(&peer).await;
            engine.close(id);
            engine.close(id); // idempotent
            until(&engine, |s| s.ports_in_use == 0 && s.sessions_open == 0).await;
            // The socket is gone: the port can be bound again.
            StdUdpSocket::bind((LOCALHOST, port)).expect("port released");
            assert!(matches!(
                engine.configure(id, towards(&peer, LOCALHOST)),
                Err(MediaError::UnknownSession(SessionId(7)))
            ));
            // Drain what was in flight, then expect silence.
            sleep(60 * MS).await;
            let mut buf = [0u8; 2048];
            while peer.try_recv_from(&mut buf).is_ok() {}
            let quiet = timeout(200 * MS, peer.recv_from(&mut buf)).await;
            assert!(quiet.is_err(), "nothing sent after close");
            // Round-robin: the next session gets another port.
            let next = engine.open(SessionId(8)).unwrap();
            assert_ne!(next, port);
        }

        #[tokio::test]
        async fn foreign_packets_are_counted_and_ignored_and_the_peer_latches() {
            let (engine, _events) = start(41200..=41299, Duration::from_secs(30));
            let peer = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
            let stranger = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
            let id = SessionId(3);
            let port = engine.open(id).unwrap();
            let ours = SocketAddr::new(LOCALHOST, port);
            // Signalling came from elsewhere, so only the SDP address itself is accepted.
            engine.configure(id, towards(&peer, ELSEWHERE)).unwrap();
            receive(&peer).await;
            for seq in 0..5 {
                stranger.send_to(&rtp(0, seq), ours).await.unwrap();
            }
            until(&engine, |s| s.packets_dropped_foreign == 5).await;
            peer.send_to(&rtp(0, 1), ours).await.unwrap();
            until(&engine, |s| s.packets_received == 1).await;
            peer.send_to(b"not rtp", ours).await.unwrap();
            until(&engine, |s| s.packets_malformed == 1).await;
            // Still sending to the peer, never to the stranger.
            receive(&peer).await;
            let mut buf = [0u8; 2048];
            assert!(
                timeout(100 * MS, stranger.recv_from(&mut buf))
                    .await
                    .is_err()
            );
            engine.close(id);
        }

        #[tokio::test]
        async fn reports_rtp_timeout_when_the_peer_is_silent() {
            let (engine, mut events) = start(41300..=41399, 300 * MS);
            let peer = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
            let id = SessionId(4);
            engine.open(id).unwrap();
            engine.configure(id, towards(&peer, LOCALHOST)).unwrap();
            let event = timeout(WAIT, events.recv()).await.unwrap();
            assert_eq!(event, Some(MediaEvent::RtpTimeout(id)));
            engine.close(id);
        }

        #[tokio::test]
        async fn hold_silences_the_stream_and_resume_marks_it() {
            let (engine, _events) = start(41400..=41499, Duration::from_secs(30));
            let peer = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
            let id = SessionId(5);
            engine.open(id).unwrap();
            let params = towards(&peer, LOCALHOST);
            engine.configure(id, params).unwrap();
            let (before, _) = receive(&peer).await;
            let before = RtpPacket::parse(&before).unwrap().header;
            let hold = MediaParams {
                direction: Direction::RecvOnly,
                ..params
            };
            engine.configure(id, hold).unwrap();
            sleep(60 * MS).await;
            let mut buf = [0u8; 2048];
            while peer.try_recv_from(&mut buf).is_ok() {}
            assert!(timeout(200 * MS, peer.recv_from(&mut buf)).await.is_err());
            engine.configure(id, params).unwrap();
            let (after, _) = receive(&peer).await;
            let after = RtpPacket::parse(&after).unwrap().header;
            assert!(after.marker);
            assert_eq!(after.ssrc, before.ssrc);
            let held_for = after.timestamp.wrapping_sub(before.timestamp);
            assert!(held_for >= 160 * 10, "timestamp kept time through hold");
            engine.close(id);
        }

        #[tokio::test]
        async fn open_skips_ports_held_by_others_and_gives_up_when_all_are() {
            // 41500 and 41502; the test holds 41500.
            let (engine, _events) = start(41500..=41503, Duration::from_secs(30));
            let Ok(_held) = StdUdpSocket::bind((LOCALHOST, 41500)) else {
                return; // someone else holds it; the point is moot
            };
            if StdUdpSocket::bind((LOCALHOST, 41502)).is_err() {
                return;
            }
            assert_eq!(engine.open(SessionId(1)).unwrap(), 41502);
            assert!(matches!(
                engine.open(SessionId(2)),
                Err(MediaError::Bind { .. })
            ));
            assert_eq!(engine.stats().ports_in_use, 1);
            engine.close(SessionId(1));
            until(&engine, |s| s.ports_in_use == 0).await;
            assert_eq!(engine.open(SessionId(3)).unwrap(), 41502);
            let (engine, _events) = start(41504..=41505, Duration::from_secs(30));
            let _port = engine.open(SessionId(1));
            assert!(matches!(
                engine.open(SessionId(2)),
                Err(MediaError::PortsExhausted | MediaError::Bind { .. })
            ));
        }

        #[test]
        fn start_needs_a_worker_and_ports_but_no_runtime() {
            let (tx, _rx) = mpsc::unbounded_channel();
            let cfg = EngineConfig {
                bind_ip: LOCALHOST,
                rtp_ports: 41600..=41699,
                rtp_timeout: Duration::from_secs(30),
                workers: 1,
            };
            // Workers are threads of their own: no tokio runtime needed.
            let engine = Engine::start(cfg.clone(), tx.clone()).unwrap();
            let port = engine.open(SessionId(1)).unwrap();
            // Dropping the last handle stops the worker, which closes the session's socket.
            drop(engine);
            let freed = (0..200).any(|_| {
                std::thread::sleep(10 * MS);
                std::net::UdpSocket::bind((LOCALHOST, port)).is_ok()
            });
            assert!(
                freed,
                "port {port} still bound after the engine was dropped"
            );
            let none = EngineConfig {
                workers: 0,
                ..cfg.clone()
            };
            assert!(matches!(
                Engine::start(none, tx.clone()),
                Err(MediaError::NoWorkers)
            ));
            let empty = EngineConfig {
                rtp_ports: 41601..=41601,
                ..cfg
            };
            assert!(matches!(
                Engine::start(empty, tx),
                Err(MediaError::EmptyPortRange { .. })
            ));
        }
    }
}
