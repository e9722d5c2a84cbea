//! DTMF end to end, against the real `pinbridge` binary over real sockets on 127.0.0.1: key
//! presses sent as RFC 4733 telephone-events (clean, with lost start and end packets, with
//! duplicated and reordered packets, on PT 101 and 96), as SIP INFO (`application/dtmf-relay`
//! and `application/dtmf`, and bodies that must be refused), as in-band PCMU tones, as RFC 4733
//! and INFO at once, and from SIPp's `play_dtmf` (`sipp-scenarios/dtmf-rfc2833.xml`).
//!
//! What the server heard is read from its log: until the IVR consumes digits, `src/server.rs`
//! logs every digit of a call's one `DigitStream` at debug level, inside the call's span:
//!
//! ```text
//! … DEBUG call{leg=1 call_id=X from_user=caller}: pinbridge::server: dtmf digit key=5 method=Rfc4733
//! ```
//!
//! "Exactly once" needs to know that every packet sent has been handled. RFC 4733 tests end
//! with a *fence*: one more clean key press after the packets under test. One media worker
//! handles a call's packets in arrival order and hands its digits to the signalling task in
//! that order, so once the fence digit is in the log every earlier packet has been handled,
//! and any duplicate would stand before it. INFO digits are logged by the signalling task
//! while it answers the INFO, so the 200 to a later BYE fences them. In-band tests have no
//! such fence (a tone is judged over several frames): they wait for the digits, keep sending
//! silence, hang up, and then count.

mod common;

use std::time::Duration;

use common::g711;
use common::rtp::{MediaPlan, Pacer, PacketRole, PlannedPacket};
use common::sip::Transport;
use common::sipp::{self, SippRun};
use common::{
    Dialed, PortBlock, RtpReceiver, SIP_STEP, SdpOffer, Server, SipClient, SipMessage, dial,
    hang_up,
};

/// Every key of the keypad, in an order that no sorting or deduplication could produce.
const ALL_KEYS: &str = "1234567890*#ABCD";
/// A key press lasts this many 20 ms packets before its three end packets (60 ms down).
const PRESS_FRAMES: u32 = 3;
/// Audio frames between key presses (60 ms), and before the first.
const GAP_FRAMES: u32 = 3;
/// The clean key press that ends an RFC 4733 test (see the module docs).
const FENCE: char = '5';
/// How long the digits may take to show up in the log once their packets are sent.
const DIGIT_WAIT: Duration = Duration::from_secs(5);
/// Silence sent after in-band tones before counting digits.
const SETTLE_FRAMES: u32 = 15;

/// One `dtmf digit` line of the server's log.
#[derive(Clone, Debug, PartialEq)]
struct Logged {
    key: char,
    method: String,
}

/// The digits the server logged for the call `call_id`, in log order.
fn logged_digits(server: &Server, call_id: &str) -> Vec<Logged> {
    let span_field = format!("call_id={call_id} ");
    server
        .log_lines_with(&["dtmf digit", &span_field])
        .iter()
        .map(|line| {
            let key = field(line, "key")
                .and_then(|k| k.chars().next())
                .unwrap_or_else(|| panic!("`dtmf digit` line without key=: {line}"));
            let method = field(line, "method")
                .unwrap_or_else(|| panic!("`dtmf digit` line without method=: {line}"))
                .to_string();
            Logged { key, method }
        })
        .collect()
}

/// The value of ` name=value` in a tracing fmt line (up to the next space).
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {name}="))? + name.len() + 2;
    line[at..].split_whitespace().next()
}

/// Waits at most [`DIGIT_WAIT`] for `n` digits of the call; returns those logged by then.
fn wait_digits(server: &Server, call_id: &str, n: usize) -> Vec<Logged> {
    common::wait_until(DIGIT_WAIT, Duration::from_millis(50), || {
        logged_digits(server, call_id).len() >= n
    });
    logged_digits(server, call_id)
}

fn keys_of(digits: &[Logged]) -> String {
    digits.iter().map(|d| d.key).collect()
}

/// Asserts that the call's log holds exactly the digits `want`, in order, each by `method`.
fn assert_digits(server: &Server, call_id: &str, want: &str, method: &str) {
    let got = logged_digits(server, call_id);
    let exact = keys_of(&got) == want && got.iter().all(|d| d.method == method);
    assert!(
        exact,
        "want the digits {want:?}, each once, by {method}; the server logged {:?}:\n{got:#?}\n\
         --- every dtmf line of the server ---\n{}",
        keys_of(&got),
        server.log_lines_with(&["dtmf digit"]).join("\n"),
    );
}

/// A call that is up, with our media socket.
struct Up {
    client: SipClient,
    rtp: RtpReceiver,
    d: Dialed,
}

/// Dials with `offer(our media address)` and, if `event_pt` is given, checks that the
/// answer took telephone-event on that payload type.
fn call_up(
    server: &Server,
    offer: impl FnOnce(std::net::SocketAddr) -> SdpOffer,
    event_pt: Option<u8>,
) -> Up {
    let mut client = SipClient::udp(server.sip_addr());
    let rtp = RtpReceiver::bind();
    let d = dial(&mut client, "1000", &offer(rtp.addr()));
    let audio = d.answer.audio().expect("dial checked the audio section");
    match event_pt {
        Some(pt) => {
            let map = audio.rtpmap(pt).unwrap_or("");
            if !(audio.formats.contains(&pt) && map.eq_ignore_ascii_case("telephone-event/8000")) {
                client.fail(&format!(
                    "the answer must take telephone-event on our PT {pt}; it has formats {:?}, \
                     a=rtpmap:{pt} {map:?}",
                    audio.formats
                ));
            }
        }
        None => {
            if audio.formats.len() != 1 {
                client.fail(&format!(
                    "we offered no telephone-event; the answer has formats {:?}",
                    audio.formats
                ));
            }
        }
    }
    Up { client, rtp, d }
}

/// Dials with PCMU and telephone-event on `event_pt`, sends every key of the keypad as
/// RFC 4733 events through `network` (which may drop, repeat and reorder the packets),
/// then the fence, and asserts that each key was reported once, in order, by RFC 4733.
fn keypad_by_rfc4733(
    event_pt: u8,
    numbering: Option<(u16, u32)>,
    network: impl FnOnce(Vec<PlannedPacket>) -> Vec<PlannedPacket>,
) {
    let server = Server::start();
    let mut up = call_up(
        &server,
        |addr| SdpOffer::new(addr).pcmu().telephone_event(event_pt),
        Some(event_pt),
    );
    let mut plan = MediaPlan::new(0);
    if let Some((sequence, timestamp)) = numbering {
        plan.starting_at(sequence, timestamp);
    }
    plan.silence(GAP_FRAMES)
        .key_presses(event_pt, ALL_KEYS, PRESS_FRAMES, GAP_FRAMES);
    let mut packets = network(plan.take_packets());
    plan.key_press(event_pt, FENCE, PRESS_FRAMES)
        .silence(GAP_FRAMES);
    packets.extend(plan.take_packets());
    up.rtp.send_plan(up.d.media, &packets);

    let want = format!("{ALL_KEYS}{FENCE}");
    wait_digits(&server, &up.d.call.call_id, want.len());
    assert_digits(&server, &up.d.call.call_id, &want, "Rfc4733");
    hang_up(&mut up.client, &mut up.d.call);
}

/// Where the packet with `role` is in `packets`.
fn position(packets: &[PlannedPacket], role: PacketRole) -> usize {
    packets
        .iter()
        .position(|p| p.role == role)
        .unwrap_or_else(|| panic!("no {role:?} planned"))
}

// ---------------------------------------------------------------------------------------
// RFC 4733

/// Every key as telephone-events on PT 101, 20 ms audio between presses: one digit per key,
/// in order, no duplicate from the updates or the three end packets.
#[test]
fn rfc4733_every_key_on_pt_101_is_one_digit() {
    keypad_by_rfc4733(101, None, |packets| packets);
}

/// The same on PT 96 (SIPp's), with sequence numbers and timestamps starting just before
/// their wraps, so the keys cross both.
#[test]
fn rfc4733_every_key_on_pt_96_across_the_wraps_is_one_digit() {
    keypad_by_rfc4733(96, Some((65_500, u32::MAX - 20 * 160)), |packets| packets);
}

/// Lost packets: no key press keeps its start packet (nor its marker); of every third press
/// only the three end packets arrive; of every third press after the second none of the
/// end packets arrive, so the next key starts before this one ended. Still one digit each.
#[test]
fn rfc4733_lost_start_packets_still_give_one_digit_each() {
    keypad_by_rfc4733(101, None, |packets| {
        packets
            .into_iter()
            .filter(|p| match p.role {
                PacketRole::Audio => true,
                PacketRole::EventStart { .. } => false,
                PacketRole::EventUpdate { press, .. } => press % 3 != 1,
                PacketRole::EventEnd { press, .. } => press % 3 != 2,
            })
            .collect()
    });
}

/// Duplicated and reordered packets: every event packet arrives twice; the first update
/// overtakes the start packet, the first end packet overtakes the last update; and a copy of
/// each press's last end packet straggles in right after the next press has started.
#[test]
fn rfc4733_duplicated_and_reordered_packets_give_one_digit_each() {
    keypad_by_rfc4733(101, None, |mut packets| {
        let presses = ALL_KEYS.len();
        for press in 0..presses {
            let start = position(&packets, PacketRole::EventStart { press });
            let first_update = position(&packets, PacketRole::EventUpdate { press, n: 1 });
            packets.swap(start, first_update);
            let last_update = position(
                &packets,
                PacketRole::EventUpdate {
                    press,
                    n: PRESS_FRAMES - 1,
                },
            );
            let first_end = position(&packets, PacketRole::EventEnd { press, copy: 0 });
            packets.swap(last_update, first_end);
        }
        for press in 1..presses {
            let previous_end = PacketRole::EventEnd {
                press: press - 1,
                copy: 2,
            };
            let mut straggler = packets[position(&packets, previous_end)].clone();
            let start = position(&packets, PacketRole::EventStart { press });
            straggler.slot = packets[start].slot;
            packets.insert(start + 1, straggler);
        }
        packets
            .into_iter()
            .flat_map(|p| {
                let copies = if p.role == PacketRole::Audio { 1 } else { 2 };
                std::iter::repeat_n(p, copies)
            })
            .collect()
    });
}

// ---------------------------------------------------------------------------------------
// SIP INFO

/// Sends an INFO with `body` of type `content_type` in the call; returns the final answer.
fn info(up: &mut Up, content_type: &str, body: &str) -> SipMessage {
    up.client
        .request(&mut up.d.call, "INFO", &[], Some((content_type, body)));
    up.client.expect_final(&mut up.d.call, "INFO", SIP_STEP)
}

fn expect_status(up: &Up, resp: &SipMessage, status: u16, what: &str) {
    if resp.status() != Some(status) {
        up.client.fail(&format!(
            "{what}: answered {:?}, want {status}",
            resp.start_line
        ));
    }
}

/// Sends each key of `keys` as an INFO with `body(key)` and expects 200 for each; then
/// hangs up and asserts the digits, by Info.
fn keys_by_info(content_type: &str, keys: &str, body: impl Fn(char) -> String) {
    let server = Server::start();
    let mut up = call_up(&server, SdpOffer::g711, Some(101));
    for key in keys.chars() {
        let resp = info(&mut up, content_type, &body(key));
        expect_status(&up, &resp, 200, &format!("INFO {content_type} {key}"));
    }
    hang_up(&mut up.client, &mut up.d.call);
    assert_digits(&server, &up.d.call.call_id, keys, "Info");
}

/// `application/dtmf-relay` (`Signal=` and `Duration=` lines): 200 and one digit per INFO.
#[test]
fn info_dtmf_relay_keys_are_digits() {
    keys_by_info("application/dtmf-relay", "159#", |k| {
        format!("Signal={k}\r\nDuration=160\r\n")
    });
}

/// `application/dtmf` (the key alone): 200 and one digit per INFO.
#[test]
fn info_application_dtmf_keys_are_digits() {
    keys_by_info("application/dtmf", "159#", |k| k.to_string());
}

/// Bodies that carry no key are refused and leave no digit: a dtmf-relay Signal that is no
/// key and one without Signal get 400 with a reason; `text/plain` gets 415 with the Accept
/// list. A good INFO afterwards still works, and is the only digit.
#[test]
fn info_bodies_without_a_key_are_refused_and_give_no_digit() {
    let server = Server::start();
    let mut up = call_up(&server, SdpOffer::g711, Some(101));
    let relay = "application/dtmf-relay";
    for body in ["Signal=X\r\nDuration=160\r\n", "Duration=160\r\n"] {
        let resp = info(&mut up, relay, body);
        expect_status(&up, &resp, 400, &format!("dtmf-relay body {body:?}"));
        let reason = resp.reason().unwrap_or("");
        if reason.is_empty() || reason.eq_ignore_ascii_case("Bad Request") {
            up.client.fail(&format!(
                "the 400 to {body:?} must say what is wrong, says {reason:?}"
            ));
        }
    }
    let resp = info(&mut up, "text/plain", "5\r\n");
    expect_status(&up, &resp, 415, "text/plain body");
    let accept = resp.header_values("Accept");
    if !accept
        .iter()
        .any(|t| t.trim().eq_ignore_ascii_case("application/dtmf-relay"))
    {
        up.client
            .fail(&format!("415 must list what we accept, Accept: {accept:?}"));
    }

    let resp = info(&mut up, relay, "Signal=7\r\nDuration=160\r\n");
    expect_status(&up, &resp, 200, "a good INFO after the refused ones");
    hang_up(&mut up.client, &mut up.d.call);
    assert_digits(&server, &up.d.call.call_id, "7", "Info");
}

// ---------------------------------------------------------------------------------------
// In-band

/// The keypad's low group (rows) and high group (columns), Hz (ITU-T Q.23).
const ROWS: [f64; 4] = [697.0, 770.0, 852.0, 941.0];
const COLUMNS: [f64; 4] = [1209.0, 1336.0, 1477.0, 1633.0];

/// The frequency pair of a key: its row and its column.
fn dtmf_pair(key: char) -> (f64, f64) {
    const PAD: [&str; 4] = ["123A", "456B", "789C", "*0#D"];
    PAD.iter()
        .enumerate()
        .find_map(|(r, row)| row.find(key).map(|c| (ROWS[r], COLUMNS[c])))
        .unwrap_or_else(|| panic!("{key:?} is not a DTMF key"))
}

/// Peak of a 0 dBm0 sine in 16-bit linear units: μ-law's full-scale sine (peak 8159 in its
/// 14-bit range, ×4 here) is +3.17 dBm0 (ITU-T G.711).
const DBM0_PEAK: f64 = 8159.0 * 4.0 / 1.440_5;

/// 8 kHz linear audio of `keys` as DTMF: each key `tone_ms` of its two sines, each at
/// `dbm0`, then `pause_ms` of silence.
fn dtmf_tones(keys: &str, tone_ms: u32, pause_ms: u32, dbm0: f64) -> Vec<i16> {
    let amplitude = DBM0_PEAK * 10f64.powf(dbm0 / 20.0);
    let mut out = Vec::new();
    for key in keys.chars() {
        let (low, high) = dtmf_pair(key);
        for n in 0..tone_ms * 8 {
            let t = f64::from(n) / 8000.0;
            let s = amplitude
                * ((2.0 * std::f64::consts::PI * low * t).sin()
                    + (2.0 * std::f64::consts::PI * high * t).sin());
            out.push(s.round() as i16);
        }
        out.extend(std::iter::repeat_n(0, (pause_ms * 8) as usize));
    }
    out
}

/// Amplitude of the `hz` component of 8 kHz `x`, by correlation with a sine and a cosine.
fn amplitude_at(x: &[f64], hz: f64) -> f64 {
    let (mut sin, mut cos) = (0.0, 0.0);
    for (n, v) in x.iter().enumerate() {
        let w = 2.0 * std::f64::consts::PI * hz * n as f64 / 8000.0;
        sin += v * w.sin();
        cos += v * w.cos();
    }
    2.0 * (sin * sin + cos * cos).sqrt() / x.len() as f64
}

/// The generator itself, so that a failing in-band test is about the server: through μ-law,
/// each key's tone holds its row and column at −10 dBm0 (±0.5 dB) and none of the other six
/// DTMF frequencies above −26 dBm0 (window leakage), and its pause is digital silence.
#[test]
fn generated_tones_are_the_key_pairs_at_minus_10_dbm0() {
    for key in ALL_KEYS.chars() {
        let samples = dtmf_tones(&key.to_string(), 70, 70, -10.0);
        assert_eq!(samples.len(), 1120);
        assert!(samples[560..].iter().all(|&s| s == 0), "{key}: pause");
        let tone: Vec<f64> = samples[..560]
            .iter()
            .map(|&s| f64::from(g711::decode_ulaw(g711::encode_ulaw(s))))
            .collect();
        let (low, high) = dtmf_pair(key);
        for hz in ROWS.into_iter().chain(COLUMNS) {
            let dbm0 = 20.0 * (amplitude_at(&tone, hz) / DBM0_PEAK).log10();
            if hz == low || hz == high {
                assert!(
                    (dbm0 + 10.0).abs() < 0.5,
                    "{key}: {hz} Hz at {dbm0:.2} dBm0"
                );
            } else {
                assert!(dbm0 < -26.0, "{key}: {hz} Hz at {dbm0:.2} dBm0");
            }
        }
    }
}

/// The keys the in-band tests play: 70 ms tones, 70 ms pauses, −10 dBm0 per tone.
const TONE_KEYS: &str = "2580*#";

/// Plans 200 ms of silence, the tones of [`TONE_KEYS`] in the audio, and
/// [`SETTLE_FRAMES`] of silence.
fn tone_packets(plan: &mut MediaPlan) -> Vec<PlannedPacket> {
    plan.silence(10)
        .audio(&dtmf_tones(TONE_KEYS, 70, 70, -10.0))
        .silence(SETTLE_FRAMES);
    plan.take_packets()
}

/// Sends the tones in `plan`'s PCMU stream, waits for the digits, sends more silence, hangs
/// up; asserts the tones' keys were each reported once, by Inband.
fn assert_tones_heard(server: &Server, mut up: Up, plan: &mut MediaPlan) {
    up.rtp.send_plan(up.d.media, &tone_packets(plan));
    wait_digits(server, &up.d.call.call_id, TONE_KEYS.len());
    plan.silence(SETTLE_FRAMES);
    up.rtp.send_plan(up.d.media, &plan.take_packets());
    hang_up(&mut up.client, &mut up.d.call);
    assert_digits(server, &up.d.call.call_id, TONE_KEYS, "Inband");
}

/// No telephone-event offered, `auto` mode: the tones in the PCMU audio are the digits.
#[test]
fn inband_tones_without_telephone_event_are_digits() {
    let server = Server::start();
    let up = call_up(&server, |a| SdpOffer::new(a).pcmu(), None);
    assert_tones_heard(&server, up, &mut MediaPlan::new(0));
}

/// telephone-event negotiated, `auto` mode: in-band detection is off, so the same tones
/// give no digit. An RFC 4733 press after them is the fence, and the only digit.
#[test]
fn inband_tones_are_not_digits_in_auto_when_telephone_event_is_negotiated() {
    let server = Server::start();
    let mut up = call_up(&server, SdpOffer::g711, Some(101));
    let mut plan = MediaPlan::new(0);
    let mut packets = tone_packets(&mut plan);
    plan.key_press(101, 'D', PRESS_FRAMES).silence(GAP_FRAMES);
    packets.extend(plan.take_packets());
    up.rtp.send_plan(up.d.media, &packets);
    wait_digits(&server, &up.d.call.call_id, 1);
    hang_up(&mut up.client, &mut up.d.call);
    assert_digits(&server, &up.d.call.call_id, "D", "Rfc4733");
}

/// `--dtmf-mode inband` with telephone-event negotiated: the tones are digits, and an
/// RFC 4733 press sent before them is not.
#[test]
fn inband_mode_hears_tones_even_with_telephone_event_negotiated() {
    let server = Server::builder().arg("--dtmf-mode").arg("inband").start();
    let up = call_up(&server, SdpOffer::g711, Some(101));
    let mut plan = MediaPlan::new(0);
    plan.silence(GAP_FRAMES)
        .key_press(101, 'A', PRESS_FRAMES)
        .silence(GAP_FRAMES);
    up.rtp.send_plan(up.d.media, &plan.take_packets());
    assert_tones_heard(&server, up, &mut plan);
}

// ---------------------------------------------------------------------------------------
// One key press by two methods

/// `auto` with telephone-event negotiated: each of `37#` is pressed once but sent both as an
/// RFC 4733 event and as an INFO at about the same time (the INFO just before the start
/// packet for `3` and `#`, just after it for `7`): one digit per press. A last, RFC 4733
/// only, press of `9` is the fence for the media path; the BYE's 200 for the INFOs.
#[test]
fn a_key_sent_by_rfc4733_and_info_at_once_is_one_digit() {
    let server = Server::start();
    let mut up = call_up(&server, SdpOffer::g711, Some(101));
    let mut plan = MediaPlan::new(0);
    plan.silence(GAP_FRAMES)
        .key_presses(101, "37#", PRESS_FRAMES, 10)
        .key_press(101, '9', PRESS_FRAMES)
        .silence(GAP_FRAMES);
    let packets = plan.take_packets();
    let keys: Vec<char> = "37#".chars().collect();

    let pacer = Pacer::start();
    for p in &packets {
        pacer.wait_for(p.slot);
        let info_for = match p.role {
            PacketRole::EventStart { press } if press < keys.len() => Some(press),
            _ => None,
        };
        let Some(press) = info_for else {
            up.rtp.send_to(up.d.media, &p.bytes);
            continue;
        };
        let body = format!("Signal={}\r\nDuration=160\r\n", keys[press]);
        let info_first = press % 2 == 0;
        if !info_first {
            up.rtp.send_to(up.d.media, &p.bytes);
        }
        let resp = info(&mut up, "application/dtmf-relay", &body);
        expect_status(&up, &resp, 200, &format!("INFO {}", keys[press]));
        if info_first {
            up.rtp.send_to(up.d.media, &p.bytes);
        }
    }
    wait_digits(&server, &up.d.call.call_id, 4);
    hang_up(&mut up.client, &mut up.d.call);

    let got = logged_digits(&server, &up.d.call.call_id);
    assert_eq!(
        keys_of(&got),
        "37#9",
        "one digit per press, whichever method came first: {got:#?}"
    );
    assert_eq!(got[3].method, "Rfc4733", "the fence: {got:#?}");
}

// ---------------------------------------------------------------------------------------
// SIPp

/// SIPp's own limit for the run (`-timeout`, with `-timeout_error`).
const SIPP_TIMEOUT: Duration = Duration::from_secs(30);
/// Our limit on the SIPp process, above its own.
const SIPP_PROCESS_LIMIT: Duration = Duration::from_secs(45);

/// `sipp-scenarios/dtmf-rfc2833.xml`, one call against the real binary: SIPp's `play_dtmf`
/// sends `1234#` and then `*9` (new SSRC, same timestamps) as RFC 4733 events on PT 96;
/// the call succeeds and the server reports exactly `1234#*9`, by RFC 4733.
#[test]
fn sipp_play_dtmf_keys_are_digits() {
    let server = Server::start();
    let ports = PortBlock::reserve();
    let args = sipp::uac_args(
        &sipp::scenario("dtmf-rfc2833.xml"),
        server.sip_addr(),
        Transport::Udp,
        ports.aux_port(20),
        ports.aux_port(30),
        1,
        1,
        1,
        SIPP_TIMEOUT,
    );
    let outcome = SippRun::spawn("sipp dtmf-rfc2833.xml", &args).finish(SIPP_PROCESS_LIMIT);
    assert!(
        outcome.status.success(),
        "SIPp reported a failed call\n{}",
        outcome.report()
    );
    assert_eq!(
        outcome.stat("SuccessfulCall(C)"),
        Some(1),
        "{}",
        outcome.report()
    );

    let calls: Vec<String> = server
        .log_lines_with(&["incoming call"])
        .iter()
        .filter_map(|l| l.split("call_id=").nth(1)?.split_whitespace().next())
        .map(str::to_string)
        .collect();
    assert_eq!(calls.len(), 1, "one call from SIPp: {calls:?}");
    wait_digits(&server, &calls[0], 7);
    assert_digits(&server, &calls[0], "1234#*9", "Rfc4733");
}
