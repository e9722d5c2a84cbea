//! Issue 7, hostile RTP against the real binary over real UDP on loopback.
//!
//! What "an unexpected source" is (see `media::rtp::Latch`): a call takes RTP only from the
//! address in the caller's SDP or from the IP its SIP came from (any port: a NAT may map the
//! media elsewhere), and among those it latches onto the first that sends valid RTP
//! (symmetric RTP); another accepted address may take the latch over only after the
//! latched one has been silent for `RELATCH_AFTER` (2 s), or if it is the exact SDP
//! address. Everything else is counted as foreign and dropped before it is parsed.
//!
//! Covered here, beyond `call_media.rs`, `dtmf_e2e.rs` (RFC 4733 across sequence and
//! timestamp wraps, duplicates, reordering, loss) and the engine's unit tests:
//! - RTP injected into a meeting participant's port from a foreign IP, or from another port
//!   of the participant's own IP while it talks, never reaches the mix (the others do not
//!   hear the injected tone), and RFC 4733 events from there produce no digit;
//! - garbage, truncated, wrong-version, huge CSRC-count, padding-overrun, extension-overrun,
//!   RTCP and empty datagrams from a call's own (accepted) source disturb neither that call
//!   (its stream, its DTMF) nor another call on the same media worker (largest gap);
//! - an SSRC change mid-call, sequence and timestamp wrap-around, duplicated and reordered
//!   packets keep the caller's audio flowing into the mix.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::Server;
use common::call_log::{call_lines, tone_power, wait_call_log};
use common::caller::{Caller, EVENT_PT};
use common::g711::encode_ulaw;
use common::rtp::{MediaPlan, RtpPacket, Signal, decode_stream};
use common::stats::{gauge, stats};

/// Peak amplitude of the tones (about −15 dBm0): a sine of amplitude A scores (A/32768)².
const AMPLITUDE: i16 = 6000;
/// A tone "is heard" above this power and "is not" below a hundredth of it.
const HEARD: f64 = 0.002;
const NOT_HEARD: f64 = HEARD / 100.0;
/// Longest silence a call may hear while hostile packets arrive (20 ms stream; a loaded
/// 2-core machine, not a lost call).
const MAX_GAP: Duration = Duration::from_millis(300);

/// One 20 ms PCMU frame of a `hz` tone, frame `n` of a continuous sine.
fn tone_frame(hz: f64, n: u32) -> Vec<u8> {
    (0..160u32)
        .map(|k| {
            let t = f64::from(n * 160 + k) / 8000.0;
            encode_ulaw((f64::from(AMPLITUDE) * (2.0 * std::f64::consts::PI * hz * t).sin()) as i16)
        })
        .collect()
}

/// Sends `packets` from `socket` to `dest`, one every 20 ms (absolute schedule).
fn send_paced(socket: &UdpSocket, dest: SocketAddr, packets: &[Vec<u8>]) {
    let start = Instant::now();
    for (i, p) in packets.iter().enumerate() {
        let _ = socket.send_to(p, dest);
        let next = start + Duration::from_millis(20) * (i as u32 + 1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}

/// `frames` packets of a `hz` tone on one SSRC from sequence 0.
fn tone_packets(hz: f64, frames: u32, ssrc: u32) -> Vec<Vec<u8>> {
    (0..frames)
        .map(|i| RtpPacket::build(0, i == 0, i as u16, i * 160, ssrc, &tone_frame(hz, i)))
        .collect()
}

/// RFC 4733 packets of pressing `keys` (60 ms each), as a phone sends them.
fn key_packets(keys: &str) -> Vec<Vec<u8>> {
    let mut plan = MediaPlan::new(0);
    plan.silence(2).key_presses(EVENT_PT, keys, 3, 3);
    plan.take_packets().into_iter().map(|p| p.bytes).collect()
}

/// A meeting of two named callers (the organizer needs no PIN: the first starts it).
fn meeting(server: &Server) -> (Caller, Caller) {
    let conference = server.organizer("org@contoso.com").conference.clone();
    let a = Caller::dial(server, &conference);
    let b = Caller::dial(server, &conference);
    for c in [&a, &b] {
        wait_call_log(server, c.call_id(), "joined the meeting", 1);
    }
    (a, b)
}

fn meeting_server() -> Server {
    Server::builder()
        .organizer("org@contoso.com", &["--no-pin-required"])
        .arg("--rtp-timeout")
        .arg("120")
        .start()
}

#[test]
fn foreign_rtp_into_a_participants_port_never_reaches_the_mix_nor_gives_digits() {
    let server = meeting_server();
    let (mut a, mut b) = meeting(&server);
    // A talks (silence): its latch is live. B listens to the mix.
    a.talk(Signal::Silence);
    b.talk(Signal::Silence);
    // Let the "meeting is starting" prompts end.
    std::thread::sleep(Duration::from_secs(4));
    let before = stats(&server);

    // Into A's port: a 1000 Hz tone from another IP, a 1600 Hz tone from another port of
    // A's own IP (allowed, but A holds the latch), and key presses from both.
    let stranger = UdpSocket::bind("127.0.0.2:0").expect("binding 127.0.0.2 (loopback)");
    let neighbour = UdpSocket::bind("127.0.0.1:0").expect("binding 127.0.0.1");
    let a_port = a.d.media;
    let b_heard = std::thread::scope(|scope| {
        scope.spawn(|| send_paced(&stranger, a_port, &tone_packets(1000.0, 150, 0xbad1)));
        scope.spawn(|| send_paced(&neighbour, a_port, &tone_packets(1600.0, 150, 0xbad2)));
        std::thread::sleep(Duration::from_millis(300));
        decode_stream(&b.listen(Duration::from_secs(2)))
    });
    let keys = key_packets("5#");
    send_paced(&stranger, a_port, &keys);
    send_paced(&neighbour, a_port, &keys);

    let (p1000, p1600) = (tone_power(&b_heard, 1000.0), tone_power(&b_heard, 1600.0));
    assert!(
        p1000 < NOT_HEARD && p1600 < NOT_HEARD,
        "B heard injected tones: 1000 Hz {p1000:.2e}, 1600 Hz {p1600:.2e}"
    );
    let after = stats(&server);
    let dropped = gauge(&after, "rtp_packets_dropped_foreign")
        - gauge(&before, "rtp_packets_dropped_foreign");
    assert!(
        dropped >= 2 * 150 + 2 * keys.len() as u64 - 20,
        "foreign packets counted: {dropped}"
    );
    // No digit from the injected key presses.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        call_lines(&server, a.call_id(), "dtmf digit").is_empty(),
        "injected key presses became digits"
    );

    // Controls: A's own tone reaches B, and A's own key presses are digits.
    a.talk(Signal::Tone {
        hz: 400.0,
        amplitude: AMPLITUDE,
    });
    std::thread::sleep(Duration::from_millis(300));
    let heard = decode_stream(&b.listen(Duration::from_secs(2)));
    let p400 = tone_power(&heard, 400.0);
    assert!(p400 > HEARD, "B must hear A's own tone: {p400:.2e}");
    a.stop_talking();
    a.rtp.send_plan(a_port, &{
        let mut plan = MediaPlan::new(0);
        plan.starting_at(40_000, 4_000_000);
        plan.silence(2).key_presses(EVENT_PT, "5", 3, 3);
        plan.take_packets()
    });
    wait_call_log(&server, a.call_id(), "dtmf digit", 1);
    a.hang_up();
    b.hang_up();
}

/// Datagrams that are not usable RTP, each kind a few times (`pt` is the call's audio PT).
fn hostile_datagrams(pt: u8) -> Vec<(&'static str, Vec<u8>)> {
    let good = RtpPacket::build(pt, false, 7, 7 * 160, 0xabcd, &[0xff; 160]);
    let mut out: Vec<(&'static str, Vec<u8>)> = Vec::new();
    out.push(("empty", Vec::new()));
    out.push(("one octet", vec![0x80]));
    out.push(("11-octet header", good[..11].to_vec()));
    for v in [0u8, 1, 3] {
        let mut p = good.clone();
        p[0] = (p[0] & 0x3f) | (v << 6);
        out.push(("wrong version", p));
    }
    let mut csrc = good[..20].to_vec();
    csrc[0] |= 0x0f; // 15 CSRCs = 60 octets, in a 20-octet datagram
    out.push(("CSRC count overrun", csrc));
    let mut pad = good.clone();
    pad[0] |= 0x20;
    *pad.last_mut().unwrap() = 255; // more padding than the packet holds
    out.push(("padding overrun", pad));
    let mut pad0 = good.clone();
    pad0[0] |= 0x20;
    *pad0.last_mut().unwrap() = 0;
    out.push(("padding count 0", pad0));
    let mut ext = good[..16].to_vec();
    ext[0] |= 0x10;
    ext[12..16].copy_from_slice(&[0xbe, 0xde, 0xff, 0xff]); // 65535 words
    out.push(("extension overrun", ext));
    let mut rtcp = good[..8].to_vec();
    rtcp[1] = 200; // RTCP SR on the RTP port
    rtcp.extend_from_slice(&[0; 20]);
    out.push(("RTCP", rtcp));
    let mut noise = Vec::with_capacity(1400);
    let mut x = 0x1234_5678u32;
    for _ in 0..1400 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        noise.push((x & 0x3f) as u8); // version 0 in the first octet
    }
    out.push(("random noise", noise));
    out
}

fn largest_gap(packets: &[RtpPacket]) -> Duration {
    packets
        .windows(2)
        .map(|w| w[1].received_at.duration_since(w[0].received_at))
        .max()
        .unwrap_or_default()
}

fn assert_steady(packets: &[RtpPacket], window: Duration, who: &str) {
    let want = (window.as_millis() / 20) as usize;
    assert!(
        packets.len() * 10 >= want * 8,
        "{who} got {} packets in {window:?}, want about {want}",
        packets.len()
    );
    let gap = largest_gap(packets);
    assert!(gap <= MAX_GAP, "{who}'s stream stopped for {gap:?}");
}

#[test]
fn malformed_packets_on_one_call_disturb_neither_it_nor_another_call() {
    // One media worker: both calls are served by the same task and the same ticks.
    let server = Server::builder()
        .arg("--media-workers")
        .arg("1")
        .arg("--rtp-timeout")
        .arg("120")
        .start();
    let mut victim = Caller::dial(&server, "1000");
    let mut bystander = Caller::dial(&server, "1000");
    victim.talk(Signal::Silence);
    bystander.talk(Signal::Silence);
    // Both latched and streaming.
    assert!(victim.rtp.recv_for(Duration::from_millis(500)).len() > 10);
    assert!(bystander.rtp.recv_for(Duration::from_millis(500)).len() > 10);
    let before = stats(&server);

    // From the victim's own socket (an accepted source, so every datagram reaches the
    // parser): 1.5 s of every kind of malformed datagram, 30 per kind, at ~400/s.
    let kinds = hostile_datagrams(victim.d.payload_type);
    let mut barrage = Vec::new();
    for _ in 0..30 {
        for (_, bytes) in &kinds {
            barrage.push(bytes.clone());
        }
    }
    let window = Duration::from_secs(3);
    let (victim_heard, bystander_heard) = std::thread::scope(|scope| {
        let dest = victim.d.media;
        let socket = victim.rtp.clone_socket();
        let barrage = &barrage;
        scope.spawn(move || {
            let start = Instant::now();
            for (i, p) in barrage.iter().enumerate() {
                let _ = socket.send_to(p, dest);
                let next = start + Duration::from_micros(2500) * (i as u32 + 1);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        });
        let by = &mut bystander.rtp;
        let handle = scope.spawn(move || by.recv_for(window));
        let v = victim.rtp.recv_for(window);
        (v, handle.join().unwrap())
    });
    assert_steady(&bystander_heard, window, "the other call");
    assert_steady(&victim_heard, window, "the call itself");
    let after = stats(&server);
    let malformed =
        gauge(&after, "rtp_packets_malformed") - gauge(&before, "rtp_packets_malformed");
    let expected = barrage.len() as u64 - 30; // the empty datagram may be read as nothing
    assert!(
        malformed >= expected,
        "malformed datagrams counted: {malformed}, sent {}",
        barrage.len()
    );
    assert_eq!(gauge(&after, "calls"), 2, "{after}");
    assert_eq!(gauge(&after, "faults_contained"), 0, "{after}");

    // The call itself still hears its keypad: its IVR takes a digit.
    victim.stop_talking();
    victim.rtp.send_plan(victim.d.media, &{
        let mut plan = MediaPlan::new(0);
        plan.starting_at(50_000, 9_000_000);
        plan.silence(2).key_presses(EVENT_PT, "7", 3, 3);
        plan.take_packets()
    });
    wait_call_log(&server, victim.call_id(), "dtmf digit", 1);
    victim.hang_up();
    bystander.hang_up();
}

/// `frames` packets of a tone, numbered from `sequence`/`timestamp` (wrapping) on `ssrc`.
fn tone_run(hz: f64, frames: u32, ssrc: u32, sequence: u16, timestamp: u32) -> Vec<Vec<u8>> {
    (0..frames)
        .map(|i| {
            RtpPacket::build(
                0,
                i == 0,
                sequence.wrapping_add(i as u16),
                timestamp.wrapping_add(i * 160),
                ssrc,
                &tone_frame(hz, i),
            )
        })
        .collect()
}

#[test]
fn ssrc_change_wraparound_duplicates_and_reordering_keep_audio_in_the_mix() {
    let server = meeting_server();
    let (mut a, mut b) = meeting(&server);
    a.talk(Signal::Silence);
    b.talk(Signal::Silence);
    std::thread::sleep(Duration::from_secs(4));
    a.stop_talking();

    // A's phone: 2.4 s of 400 Hz whose sequence number wraps after 6 packets and whose
    // timestamp wraps after 10; then a new SSRC (a phone restarting its stream, a transfer
    // through an SBC) at unrelated numbers, 2.4 s of 700 Hz, with every 5th packet sent
    // twice and every 7th pair swapped.
    let first = tone_run(400.0, 120, 0x1111_1111, 65_530, u32::MAX - 9 * 160 + 1);
    let mut second = tone_run(700.0, 120, 0x2222_2222, 1_000, 123_456_789);
    for i in (0..second.len() - 1).step_by(7) {
        second.swap(i, i + 1);
    }
    let second: Vec<Vec<u8>> = second
        .into_iter()
        .enumerate()
        .flat_map(|(i, p)| {
            if i % 5 == 0 {
                vec![p.clone(), p]
            } else {
                vec![p]
            }
        })
        .collect();
    let a_port = a.d.media;
    let heard = std::thread::scope(|scope| {
        let rtp = &a.rtp;
        scope.spawn(move || {
            let start = Instant::now();
            let mut slot = 0u32;
            for p in first.iter() {
                rtp.send_to(a_port, p);
                slot += 1;
                let next = start + Duration::from_millis(20) * slot;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            // Duplicates go out back to back, so the stream keeps its 20 ms pace.
            let mut last_seq = None;
            for p in second.iter() {
                let seq = u16::from_be_bytes([p[2], p[3]]);
                rtp.send_to(a_port, p);
                if last_seq == Some(seq) {
                    continue;
                }
                last_seq = Some(seq);
                slot += 1;
                let next = start + Duration::from_millis(20) * slot;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        });
        std::thread::sleep(Duration::from_millis(200));
        let across_wrap = decode_stream(&b.rtp.recv_for(Duration::from_millis(2000)));
        std::thread::sleep(Duration::from_millis(400));
        let after_change = decode_stream(&b.rtp.recv_for(Duration::from_millis(1800)));
        (across_wrap, after_change)
    });
    let (across_wrap, after_change) = heard;
    let p400 = tone_power(&across_wrap, 400.0);
    assert!(
        p400 > HEARD,
        "across the sequence/timestamp wrap B must hear A's 400 Hz: {p400:.2e}"
    );
    let p700 = tone_power(&after_change, 700.0);
    assert!(
        p700 > HEARD,
        "after the SSRC change B must hear A's 700 Hz: {p700:.2e}"
    );
    a.hang_up();
    b.hang_up();
}
