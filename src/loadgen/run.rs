//! The thin tokio layer of the load generator: one SIP socket shared by all calls and driven
//! by one controller task on a 10 ms tick; one RTP socket per call, read by its own task into
//! its [`CallMedia`]; a few sender tasks that each write one packet per call every 20 ms.
//! Packets are timed by the kernel's receive stamp, not by when their task ran
//! ([`arrival`](super::arrival)): on a machine shared with the server the load generator's own
//! scheduling delay would otherwise be reported as the server's jitter and gaps.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::media::dtmf::Key;
use crate::media::dtmf::rfc4733::{EventCode, TelephoneEvent};
use crate::media::rtp::{FRAME_TIMESTAMP_STEP, MAX_PACKET_LEN, RtpHeader};
use crate::media::{Codec, FRAME_SAMPLES, Frame, PTIME, PayloadType, Ssrc, g711};
use crate::sip::msg::{self, Message};

use super::arrival;
use super::listen::{CallMedia, KnownFrames, SendAudio, ToneFrame};
use super::plan::{Conference, Plan, Role};
use super::report::{CallOutcome, Report};
use super::uac::{Uac, UacConfig, UacEvent};

/// The controller's tick: timers, call starts, key presses and hang-ups are checked this often.
const TICK: Duration = Duration::from_millis(10);
/// How long after the last call's planned end the run waits for stragglers (BYE Timer F is
/// 32 s) before it calls the rest failed.
const DRAIN: Duration = Duration::from_secs(40);
/// RFC 4733 key press as sent: 4 updates (80 ms), the end packet 3 times, 60 ms of silence.
const KEY_UPDATES: u16 = 4;
const KEY_END_REPEATS: usize = 3;
const KEY_GAP_FRAMES: usize = 3;

/// How the run is driven (the plan says who calls where).
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub server: SocketAddr,
    pub local_ip: IpAddr,
    /// New calls per second.
    pub rate: f64,
    /// How long each call stays up after its 200 OK.
    pub duration: Duration,
    /// From the organizer's 200 OK to its `*` (after the greeting, during "if you are the
    /// organizer, press star").
    pub organizer_delay: Duration,
    /// Local RTP ports to bind (even ports), or any free port.
    pub rtp_ports: Option<(u16, u16)>,
    /// Sender tasks.
    pub senders: usize,
    /// Tones, or a recording.
    pub audio: SendAudio,
}

/// Live counts for the progress line.
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    pub elapsed: Duration,
    pub started: usize,
    pub total: usize,
    pub established: usize,
    pub in_meeting: usize,
    pub failed: usize,
    pub finished: usize,
}

/// Runs the plan against the server; `progress` is called about once a second.
pub async fn run(
    cfg: RunConfig,
    plan: Plan,
    conferences: Vec<Conference>,
    known: Arc<KnownFrames>,
    mut progress: impl FnMut(&Progress),
) -> std::io::Result<Report> {
    let started_at = Instant::now();
    let sip = UdpSocket::bind((cfg.local_ip, 0)).await?;
    let local_sip = sip.local_addr()?;
    let sent = Arc::new(AtomicU64::new(0));
    let in_meeting = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = (0..cfg.senders.max(1))
        .map(|_| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(sender(rx, sent.clone()));
            tx
        })
        .collect();
    let mut ports = PortCursor::new(cfg.local_ip, cfg.rtp_ports);
    let total = plan.calls.len();
    let mut slots: Vec<Slot> = (0..total).map(|_| Slot::default()).collect();
    let mut by_call_id: HashMap<String, usize> = HashMap::new();
    let mut next_call = 0usize;
    let spacing = Duration::from_secs_f64(1.0 / cfg.rate.max(0.001));
    let last_start = started_at + spacing * total as u32;
    let deadline = last_start + cfg.duration + cfg.organizer_delay + DRAIN;
    let mut tick = tokio::time::interval(TICK);
    let mut next_progress = started_at + Duration::from_secs(1);
    let mut buf = vec![0u8; msg::MAX_MESSAGE_SIZE];
    let mut dirty: Vec<usize> = Vec::new();

    loop {
        tokio::select! {
            r = sip.recv_from(&mut buf) => {
                let Ok((n, _from)) = r else { continue };
                let now = Instant::now();
                let Ok(message) = msg::parse(&buf[..n]) else { continue };
                let call_id = match &message {
                    Message::Request(r) => &r.call_id,
                    Message::Response(r) => &r.call_id,
                };
                let Some(&i) = by_call_id.get(call_id) else { continue };
                let Some(uac) = slots[i].uac.as_mut() else { continue };
                match &message {
                    Message::Request(r) => uac.handle_request(now, r),
                    Message::Response(r) => uac.handle_response(now, r),
                }
                dirty.push(i);
            }
            _ = tick.tick() => {
                let now = Instant::now();
                while next_call < total && started_at + spacing * next_call as u32 <= now {
                    let i = next_call;
                    next_call += 1;
                    let call = &plan.calls[i];
                    let conf = &conferences[call.conference];
                    let socket = match ports.bind() {
                        Ok(s) => s,
                        Err(e) => {
                            slots[i].fail(format!("binding an RTP socket: {e}"));
                            slots[i].done = true;
                            continue;
                        }
                    };
                    let rtp_addr = socket.local_addr()?;
                    let socket = Arc::new(socket);
                    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
                    let media = CallMedia::new(started_at, call.expect.clone(), known.clone());
                    let join = tokio::spawn(receive(socket.clone(), cmd_rx, media, in_meeting.clone()));
                    let uac = Uac::new(now, UacConfig {
                        server: cfg.server,
                        local_sip,
                        local_rtp: rtp_addr,
                        user: conf.id.clone(),
                        id: format!("{}-{i}", std::process::id()),
                    });
                    by_call_id.insert(uac.call_id().to_string(), i);
                    let slot = &mut slots[i];
                    slot.uac = Some(uac);
                    slot.invite_at = Some(now);
                    slot.socket = Some(socket);
                    slot.media = Some((cmd_tx, join));
                    dirty.push(i);
                }
                for (i, slot) in slots.iter_mut().enumerate() {
                    let Some(uac) = slot.uac.as_mut() else { continue };
                    if slot.done {
                        continue;
                    }
                    if uac.poll_timeout().is_some_and(|t| t <= now) {
                        uac.handle_timeout(now);
                        dirty.push(i);
                    }
                    if slot.press_at.is_some_and(|t| t <= now) {
                        slot.press_at = None;
                        if let Role::Organizer { meeting } = plan.calls[i].role {
                            let keys = format!("*{}#", conferences[meeting].pin);
                            let _ = senders[i % senders.len()].send(SenderCmd::Press(i, keys));
                        }
                    }
                    if slot.hangup_at.is_some_and(|t| t <= now) {
                        slot.hangup_at = None;
                        slot.hung_up = true;
                        uac.hangup(now);
                        slot.stop_media(&senders, i);
                        dirty.push(i);
                    }
                }
                if now >= deadline {
                    for slot in slots.iter_mut().filter(|s| !s.done) {
                        slot.fail("still unfinished when the run's time was up".into());
                        slot.done = true;
                    }
                }
            }
        }
        // Perform what the touched calls want: datagrams out, events applied.
        let now = Instant::now();
        dirty.sort_unstable();
        dirty.dedup();
        for i in dirty.drain(..) {
            let slot = &mut slots[i];
            let Some(uac) = slot.uac.as_mut() else {
                continue;
            };
            while let Some(bytes) = uac.poll_transmit() {
                let _ = sip.send_to(&bytes, cfg.server).await;
            }
            let events: Vec<UacEvent> = std::iter::from_fn(|| uac.poll_event()).collect();
            let terminated = uac.is_terminated();
            for event in events {
                match event {
                    UacEvent::Answered(neg) => {
                        slot.answered_at = Some(now);
                        slot.hangup_at = Some(now + cfg.duration);
                        let codec = neg.codec;
                        if let Some((tx, _)) = &slot.media {
                            let _ = tx.send(MediaCmd::Audio(neg.payload_type, codec));
                        }
                        let (Some(remote), Some(socket)) = (neg.remote, slot.socket.clone()) else {
                            continue;
                        };
                        if matches!(plan.calls[i].role, Role::Organizer { .. }) {
                            if neg.telephone_event.is_none() {
                                slot.fail("the server did not accept telephone-event".into());
                            }
                            slot.press_at = Some(now + cfg.organizer_delay);
                        }
                        let (audio, start): (Arc<[Frame]>, usize) = match &cfg.audio {
                            SendAudio::Tones => {
                                let tone = ToneFrame::new(plan.calls[i].tone_hz);
                                (Arc::new([*tone.frame(codec)]), 0)
                            }
                            SendAudio::File { frames, .. } => {
                                (frames.frames(codec).clone(), frames.start(i, total))
                            }
                        };
                        let stream = Stream::new(
                            i,
                            socket,
                            remote,
                            neg.payload_type,
                            neg.telephone_event,
                            (audio, start),
                            codec,
                        );
                        let _ = senders[i % senders.len()].send(SenderCmd::Add(Box::new(stream)));
                    }
                    UacEvent::Failed(reason) => {
                        slot.fail(reason);
                    }
                    UacEvent::Ended { by_server } => {
                        if by_server && !slot.hung_up {
                            let after = slot
                                .answered_at
                                .map_or(0.0, |a| now.duration_since(a).as_secs_f64());
                            slot.fail(format!("the server hung up after {after:.1} s"));
                        }
                    }
                }
            }
            if terminated && !slot.done {
                slot.done = true;
                slot.stop_media(&senders, i);
            }
        }
        let now = Instant::now();
        let finished = slots.iter().filter(|s| s.done).count();
        if now >= next_progress {
            next_progress += Duration::from_secs(1);
            progress(&Progress {
                elapsed: now - started_at,
                started: next_call,
                total,
                established: slots.iter().filter(|s| s.answered_at.is_some()).count(),
                in_meeting: in_meeting.load(Ordering::Relaxed),
                failed: slots.iter().filter(|s| s.failure.is_some()).count(),
                finished,
            });
        }
        if next_call == total && finished == total {
            break;
        }
    }

    // Collect every call's media side.
    let mut outcomes = Vec::with_capacity(total);
    for (i, slot) in slots.iter_mut().enumerate() {
        slot.stop_media(&senders, i);
        let media = match slot.media.take() {
            Some((_, join)) => join.await.ok(),
            None => None,
        };
        outcomes.push(CallOutcome {
            role: plan.calls[i].role.clone(),
            attempted: slot.invite_at.is_some(),
            invite_to_200: slot.answered_at.zip(slot.invite_at).map(|(a, b)| a - b),
            answered_at: slot.answered_at,
            invite_to_meeting: media
                .as_ref()
                .and_then(CallMedia::in_meeting_at)
                .zip(slot.invite_at)
                .map(|(m, b)| m.saturating_duration_since(b)),
            failure: slot.failure.clone(),
            media: media.filter(|_| slot.answered_at.is_some()),
        });
    }
    drop(senders);
    Ok(Report::new(
        &cfg.audio,
        outcomes,
        sent.load(Ordering::Relaxed),
        started_at.elapsed(),
    ))
}

/// One call as the controller tracks it.
#[derive(Default)]
struct Slot {
    uac: Option<Uac>,
    socket: Option<Arc<UdpSocket>>,
    media: Option<(mpsc::UnboundedSender<MediaCmd>, JoinHandle<CallMedia>)>,
    invite_at: Option<Instant>,
    answered_at: Option<Instant>,
    press_at: Option<Instant>,
    hangup_at: Option<Instant>,
    /// We sent (or would have sent) our BYE.
    hung_up: bool,
    media_stopped: bool,
    failure: Option<String>,
    done: bool,
}

impl Slot {
    /// Records the first failure of the call.
    fn fail(&mut self, reason: String) {
        self.failure.get_or_insert(reason);
    }

    fn stop_media(&mut self, senders: &[mpsc::UnboundedSender<SenderCmd>], i: usize) {
        if self.media_stopped {
            return;
        }
        self.media_stopped = true;
        let _ = senders[i % senders.len()].send(SenderCmd::Remove(i));
        if let Some((tx, _)) = &self.media {
            let _ = tx.send(MediaCmd::Stop);
        }
        self.socket = None;
    }
}

/// Binds RTP sockets: even ports of the configured range in turn, or any free port.
struct PortCursor {
    ip: IpAddr,
    range: Option<(u16, u16)>,
    next: u32,
}

impl PortCursor {
    fn new(ip: IpAddr, range: Option<(u16, u16)>) -> Self {
        let next = range.map_or(0, |(a, _)| u32::from(a + a % 2));
        PortCursor { ip, range, next }
    }

    fn bind(&mut self) -> std::io::Result<UdpSocket> {
        let std = match self.range {
            None => StdUdpSocket::bind((self.ip, 0))?,
            Some((_, last)) => loop {
                if self.next > u32::from(last) {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        "the --rtp-ports range is used up",
                    ));
                }
                let port = self.next as u16;
                self.next += 2;
                if let Ok(s) = StdUdpSocket::bind((self.ip, port)) {
                    break s;
                }
            },
        };
        std.set_nonblocking(true)?;
        // Without kernel stamps packets are stamped when read (`receive` falls back).
        let _ = arrival::enable_timestamps(&std);
        UdpSocket::from_std(std)
    }
}

/// What the controller tells a call's receive task.
enum MediaCmd {
    /// The negotiated audio payload type and codec.
    Audio(PayloadType, Codec),
    Stop,
}

/// Reads one call's RTP socket until told to stop (or the controller is gone). Every datagram
/// queued when the socket turns readable is read, each stamped with its kernel arrival time
/// (see [`arrival`]), so a late-running task does not add to the measured jitter.
async fn receive(
    socket: Arc<UdpSocket>,
    mut cmds: mpsc::UnboundedReceiver<MediaCmd>,
    mut media: CallMedia,
    in_meeting: Arc<AtomicUsize>,
) -> CallMedia {
    let mut buf = [0u8; 2048];
    let mut receiver = arrival::Receiver::new();
    loop {
        tokio::select! {
            cmd = cmds.recv() => match cmd {
                Some(MediaCmd::Audio(pt, codec)) => media.set_audio(pt, codec),
                Some(MediaCmd::Stop) | None => break,
            },
            r = socket.readable() => {
                if r.is_err() {
                    continue;
                }
                let before = media.in_meeting_at().is_some();
                loop {
                    let r = socket.try_io(Interest::READABLE, || {
                        receiver.try_recv(&*socket, &mut buf)
                    });
                    let (n, stamp) = match r {
                        Ok(got) => got,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        // An ICMP error or the like: try again on the next turn of the loop,
                        // where a Stop is seen too.
                        Err(_) => break,
                    };
                    let now = Instant::now();
                    let at = stamp.map_or(now, |k| arrival::arrival_instant(k, SystemTime::now(), now));
                    media.handle_datagram(at, &buf[..n]);
                }
                if !before && media.in_meeting_at().is_some() {
                    in_meeting.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    media
}

enum SenderCmd {
    Add(Box<Stream>),
    /// Key presses as RFC 4733 events.
    Press(usize, String),
    Remove(usize),
}

/// What a stream sends on its next tick instead of its tone.
enum Emit {
    Event {
        code: EventCode,
        duration: u16,
        end: bool,
        first: bool,
    },
    Silence,
}

/// One call's sending half.
struct Stream {
    id: usize,
    socket: Arc<UdpSocket>,
    remote: SocketAddr,
    audio_pt: PayloadType,
    event_pt: Option<PayloadType>,
    /// What it says, looped: one frame of its tone, or a recording.
    audio: Arc<[Frame]>,
    /// The next frame of `audio` to send.
    next_audio: usize,
    silence: Frame,
    ssrc: Ssrc,
    sequence: u16,
    timestamp: u32,
    marker: bool,
    event_ts: u32,
    queue: VecDeque<Emit>,
}

impl Stream {
    fn new(
        id: usize,
        socket: Arc<UdpSocket>,
        remote: SocketAddr,
        audio_pt: PayloadType,
        event_pt: Option<PayloadType>,
        (audio, start): (Arc<[Frame]>, usize),
        codec: Codec,
    ) -> Self {
        let mut silence = [0u8; FRAME_SAMPLES];
        g711::encode(codec, &[0i16; FRAME_SAMPLES], &mut silence);
        let r = rand::random::<u64>();
        Stream {
            id,
            socket,
            remote,
            audio_pt,
            event_pt,
            next_audio: start % audio.len().max(1),
            audio,
            silence,
            ssrc: Ssrc(r as u32),
            sequence: (r >> 32) as u16,
            timestamp: (r >> 48) as u32 * 160,
            marker: true,
            event_ts: 0,
            queue: VecDeque::new(),
        }
    }

    fn press(&mut self, keys: &str) {
        for code in keys.chars().filter_map(Key::from_char).map(EventCode::from) {
            for n in 1..=KEY_UPDATES {
                self.queue.push_back(Emit::Event {
                    code,
                    duration: n * FRAME_TIMESTAMP_STEP as u16,
                    end: false,
                    first: n == 1,
                });
            }
            for _ in 0..KEY_END_REPEATS {
                self.queue.push_back(Emit::Event {
                    code,
                    duration: (KEY_UPDATES + 1) * FRAME_TIMESTAMP_STEP as u16,
                    end: true,
                    first: false,
                });
            }
            for _ in 0..KEY_GAP_FRAMES {
                self.queue.push_back(Emit::Silence);
            }
        }
    }

    /// Writes this tick's packet into `out`.
    fn next_packet(&mut self, out: &mut [u8]) -> usize {
        let mut header = RtpHeader {
            payload_type: self.audio_pt,
            marker: self.marker,
            sequence: self.sequence,
            timestamp: self.timestamp,
            ssrc: self.ssrc,
        };
        let event;
        let payload: &[u8] = match (self.queue.pop_front(), self.event_pt) {
            (
                Some(Emit::Event {
                    code,
                    duration,
                    end,
                    first,
                }),
                Some(pt),
            ) => {
                if first {
                    self.event_ts = self.timestamp;
                }
                header.payload_type = pt;
                header.marker = first;
                header.timestamp = self.event_ts;
                event = TelephoneEvent {
                    event: code,
                    end,
                    volume: 10,
                    duration,
                }
                .to_bytes();
                &event
            }
            (Some(Emit::Silence), _) | (Some(Emit::Event { .. }), None) => &self.silence,
            (None, _) => {
                let frame = self.audio.get(self.next_audio).unwrap_or(&self.silence);
                self.next_audio = (self.next_audio + 1) % self.audio.len().max(1);
                frame
            }
        };
        let n = header.write(payload, out).unwrap_or(0);
        self.marker = false;
        self.sequence = self.sequence.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(FRAME_TIMESTAMP_STEP);
        n
    }
}

/// One sender task: every 20 ms, one packet per stream it owns.
async fn sender(mut cmds: mpsc::UnboundedReceiver<SenderCmd>, sent: Arc<AtomicU64>) {
    let mut streams: Vec<Stream> = Vec::new();
    let mut index: HashMap<usize, usize> = HashMap::new();
    let mut tick = tokio::time::interval(PTIME);
    let mut buf = [0u8; MAX_PACKET_LEN];
    loop {
        tokio::select! {
            cmd = cmds.recv() => match cmd {
                Some(SenderCmd::Add(s)) => {
                    index.insert(s.id, streams.len());
                    streams.push(*s);
                }
                Some(SenderCmd::Press(id, keys)) => {
                    if let Some(&k) = index.get(&id) {
                        streams[k].press(&keys);
                    }
                }
                Some(SenderCmd::Remove(id)) => {
                    if let Some(k) = index.remove(&id) {
                        streams.swap_remove(k);
                        if let Some(moved) = streams.get(k) {
                            index.insert(moved.id, k);
                        }
                    }
                }
                None => return,
            },
            _ = tick.tick() => {
                let mut n_sent = 0;
                for s in &mut streams {
                    let n = s.next_packet(&mut buf);
                    if n > 0 && s.socket.try_send_to(&buf[..n], s.remote).is_ok() {
                        n_sent += 1;
                    }
                }
                sent.fetch_add(n_sent, Ordering::Relaxed);
            }
        }
    }
}
