//! The meeting bridge end to end, against the real `pinbridge` binary over real sockets on
//! 127.0.0.1: organizers created with `pinbridge users add`, callers that dial in with our
//! own SIP client, enter conference IDs and PINs as RFC 4733 telephone-events, wait in the
//! lobby hearing the hold music (checked against the asset decoded by sox), and then hear
//! each other in the meeting (each sends its own tone; a Goertzel filter on what each
//! receives finds the others' tones and not its own; after `*6` nobody hears the muted
//! caller).
//!
//! A caller whose IVR steps run late (a test-only hook, as on a loaded server) still hears
//! its "meeting is starting" prompt before the meeting, not after a few frames of it.
//!
//! Progress is read from the server's info log, per call (its Call-ID is in the call's
//! span): `waiting in the lobby`, `organizer PIN verified`, `joined the meeting`.

mod common;

use std::time::Duration;

use common::call_log::{STEP_WAIT, assert_not_logged, call_lines, tone_power, wait_call_log};
use common::caller::Caller;
use common::rtp::{Signal, decode_stream};
use common::{Server, audio, best_correlation};

/// The "not correct" prompt, after which the PIN prompt takes keys again (2.5 s, and a
/// margin).
const PIN_INCORRECT_PROMPT: Duration = Duration::from_millis(3000);
/// The "enter the PIN" prompt (about 2 s), and a margin.
const PIN_PROMPT: Duration = Duration::from_millis(3500);
/// Peak amplitude of each participant's tone (about −12 dBm0).
const TONE_AMPLITUDE: i16 = 6000;

fn hold_music() -> Vec<i16> {
    audio::decode_with_sox(&audio::asset("hold_music"))
}

#[test]
fn lobby_hears_hold_music_then_the_organizer_starts_and_everyone_hears_everyone_else() {
    let server = Server::builder()
        .organizer("amos.marble@contoso.com", &[])
        .log_level("info")
        .arg("--rtp-timeout")
        .arg("120")
        .start();
    let org = server.organizer("amos.marble@contoso.com").clone();
    let hold = hold_music();

    // Two callers dial the conference ID directly: no ID prompt, straight to the lobby.
    let mut a = Caller::dial(&server, &org.conference);
    let mut b = Caller::dial(&server, &org.conference);
    // A third dials the bridge's number and types the ID.
    let mut c = Caller::dial(&server, "1000");
    c.press(&format!("{}#", org.conference));
    for caller in [&a, &b, &c] {
        wait_call_log(&server, caller.call_id(), "waiting in the lobby", 1);
    }
    assert!(call_lines(&server, a.call_id(), "conference ID entered").is_empty());
    assert_eq!(
        call_lines(&server, c.call_id(), "conference ID entered").len(),
        1
    );

    // In the lobby they hear the "organizer or wait" prompt (4.7 s), then the hold music.
    let scores: Vec<f64> = std::thread::scope(|scope| {
        let handles: Vec<_> = [&mut a, &mut b, &mut c]
            .into_iter()
            .map(|caller| {
                let hold = &hold;
                scope.spawn(move || {
                    let heard = decode_stream(&caller.listen(Duration::from_secs(7)));
                    best_correlation(&heard, hold)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        scores.iter().all(|&s| s > 0.8),
        "correlation of what each lobby caller heard with the hold music: {scores:.2?}"
    );
    for caller in [&a, &b, &c] {
        assert!(call_lines(&server, caller.call_id(), "joined the meeting").is_empty());
    }

    // The organizer: `*`, PIN, `#`. The meeting starts and the lobby joins it.
    let mut o = Caller::dial(&server, &org.conference);
    wait_call_log(&server, o.call_id(), "waiting in the lobby", 1);
    o.press("*");
    wait_call_log(&server, o.call_id(), "organizer PIN entry", 1);
    o.press(&format!("{}#", org.pin));
    wait_call_log(&server, o.call_id(), "organizer PIN verified", 1);
    for caller in [&a, &b, &c, &o] {
        wait_call_log(&server, caller.call_id(), "joined the meeting", 1);
    }
    assert!(
        !server
            .log_lines_with(&["joined the meeting", "participants=4"])
            .is_empty(),
        "the server counts four participants"
    );

    // Everyone talks at once, each on its own frequency.
    let tones = [400.0, 600.0, 1000.0, 2000.0];
    let mut all = [a, b, c, o];
    for (caller, hz) in all.iter_mut().zip(tones) {
        caller.talk(Signal::Tone {
            hz,
            amplitude: TONE_AMPLITUDE,
        });
    }
    // Let the "meeting is starting" prompts end, then record everyone at once.
    std::thread::sleep(Duration::from_secs(4));
    let heard: Vec<Vec<i16>> = std::thread::scope(|scope| {
        let handles: Vec<_> = all
            .iter_mut()
            .map(|caller| {
                scope.spawn(move || decode_stream(&caller.listen(Duration::from_secs(2))))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // A full-scale sine scores 1.0; ours is about (6000/32768)² ≈ 0.034 before the
    // mixer's sum and G.711. Heard: above a quarter of that. Not heard: 30 dB below it.
    let full = (f64::from(TONE_AMPLITUDE) / 32768.0).powi(2);
    for (i, pcm) in heard.iter().enumerate() {
        assert!(
            pcm.len() >= 8000,
            "participant {i} received {} samples",
            pcm.len()
        );
        let powers: Vec<f64> = tones.iter().map(|&hz| tone_power(pcm, hz) / full).collect();
        for (j, &p) in powers.iter().enumerate() {
            if i == j {
                assert!(
                    p < 0.001,
                    "participant {i} hears its own tone: {powers:.4?}"
                );
            } else {
                assert!(
                    p > 0.25,
                    "participant {i} does not hear {j}'s tone: {powers:.4?}"
                );
            }
        }
    }

    // `*6`: the first caller mutes itself. The others stop hearing its tone (its key
    // presses never reach them either), and it still hears them.
    all[0].press("*6");
    wait_call_log(&server, all[0].call_id(), "caller toggled mute", 1);
    // The "you are muted" prompt (to the caller alone) ends.
    std::thread::sleep(Duration::from_secs(2));
    let heard: Vec<Vec<i16>> = std::thread::scope(|scope| {
        let handles: Vec<_> = all
            .iter_mut()
            .map(|caller| {
                scope.spawn(move || decode_stream(&caller.listen(Duration::from_millis(1500))))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, pcm) in heard.iter().enumerate() {
        let powers: Vec<f64> = tones.iter().map(|&hz| tone_power(pcm, hz) / full).collect();
        for (j, &p) in powers.iter().enumerate() {
            if i == j || j == 0 {
                assert!(p < 0.001, "muted: participant {i} hears {j}: {powers:.4?}");
            } else {
                assert!(p > 0.25, "muted: participant {i} lost {j}: {powers:.4?}");
            }
        }
    }

    assert_not_logged(&server, &org.pin);
    for caller in all {
        caller.hang_up();
    }
    assert!(server.wait_for_log("reason=LastLeft", Duration::from_secs(10)));
}

#[test]
fn an_anonymous_caller_waits_and_a_named_caller_starts_a_meeting_without_pin() {
    let server = Server::builder()
        .organizer("lee.gu@contoso.com", &["--no-pin-required"])
        .log_level("info")
        .start();
    let org = server.organizer("lee.gu@contoso.com").clone();

    let mut anon = Caller::dial_from(&server, &org.conference, "sip:anonymous@anonymous.invalid");
    wait_call_log(&server, anon.call_id(), "waiting in the lobby", 1);
    let heard = decode_stream(&anon.listen(Duration::from_secs(7)));
    let score = best_correlation(&heard, &hold_music());
    assert!(score > 0.8, "anonymous caller in the lobby: {score:.2}");
    assert!(call_lines(&server, anon.call_id(), "joined the meeting").is_empty());
    assert!(
        server
            .log_lines_with(&["meeting started conference="])
            .is_empty()
    );

    // A caller who is not anonymous starts it on arrival (no PIN asked); both are in.
    let named = Caller::dial(&server, &org.conference);
    wait_call_log(&server, named.call_id(), "joined the meeting", 1);
    wait_call_log(&server, anon.call_id(), "joined the meeting", 1);
    assert!(call_lines(&server, named.call_id(), "organizer PIN entry").is_empty());
    assert_eq!(
        server
            .log_lines_with(&["meeting started conference="])
            .len(),
        1
    );
    assert_not_logged(&server, &org.pin);
    anon.hang_up();
    named.hang_up();
}

#[test]
fn five_wrong_pins_lock_organizer_pin_entry_for_the_conference() {
    let server = Server::builder()
        .organizer("amos.marble@contoso.com", &[])
        .log_level("info")
        .start();
    let org = server.organizer("amos.marble@contoso.com").clone();
    // Five-digit wrong PINs unlike the real one, above 65535 so that no port number in the
    // log can look like one.
    let real: u32 = org.pin.parse().unwrap();
    let wrong: Vec<String> = (1..=5u32)
        .map(|i| 65_536 + (real + 1_111 * i) % 34_464)
        .map(|n| if n == real { n + 1 } else { n })
        .map(|n| n.to_string())
        .collect();

    // First call: into the lobby, `*`, then three wrong PINs (after each, "not correct" and
    // the PIN prompt again); then the server says goodbye and hangs up.
    let mut first = Caller::dial(&server, &org.conference);
    wait_call_log(&server, first.call_id(), "waiting in the lobby", 1);
    first.press("*");
    wait_call_log(&server, first.call_id(), "organizer PIN entry", 1);
    for (n, pin) in wrong[..3].iter().enumerate() {
        first.press(&format!("{pin}#"));
        wait_call_log(&server, first.call_id(), "organizer PIN wrong", n + 1);
        std::thread::sleep(PIN_INCORRECT_PROMPT);
    }
    wait_call_log(&server, first.call_id(), "too many wrong PINs", 1);
    let bye = first.client.expect_request(&first.d.call, "BYE", STEP_WAIT);
    first.client.respond(&bye, 200, "OK");

    // Second call: two more wrong PINs lock the conference; back to the lobby.
    let mut second = Caller::dial(&server, &org.conference);
    wait_call_log(&server, second.call_id(), "waiting in the lobby", 1);
    second.press("*");
    wait_call_log(&server, second.call_id(), "organizer PIN entry", 1);
    second.press(&format!("{}#", wrong[3]));
    wait_call_log(&server, second.call_id(), "organizer PIN wrong", 1);
    std::thread::sleep(PIN_INCORRECT_PROMPT);
    second.press(&format!("{}#", wrong[4]));
    wait_call_log(&server, second.call_id(), "locked out", 1);

    // Third call: even the right PIN is not taken while the lockout lasts.
    let mut third = Caller::dial(&server, &org.conference);
    wait_call_log(&server, third.call_id(), "waiting in the lobby", 1);
    third.press("*");
    wait_call_log(&server, third.call_id(), "requested while locked out", 1);
    third.press(&format!("{}#", org.pin));
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        server
            .log_lines_with(&["meeting started conference="])
            .is_empty()
    );
    assert!(call_lines(&server, third.call_id(), "organizer PIN verified").is_empty());

    assert_not_logged(&server, &org.pin);
    for pin in &wrong {
        assert_not_logged(&server, pin);
    }
    second.hang_up();
    third.hang_up();
}

/// The tone of the lobby caller who talks in the tests of late IVR steps.
const TALKER_HZ: f64 = 1000.0;

/// Two callers waiting in `conference`'s lobby: one already sending its [`TALKER_HZ`] tone,
/// and one from `fault-slow-flow`, whose deferred IVR steps run late (test builds only,
/// `pinbridge::fault::SLOW_FLOW_CALLER`).
fn talker_and_slow_caller(server: &Server, conference: &str) -> (Caller, Caller) {
    let mut talker = Caller::dial(server, conference);
    wait_call_log(server, talker.call_id(), "waiting in the lobby", 1);
    talker.talk(Signal::Tone {
        hz: TALKER_HZ,
        amplitude: TONE_AMPLITUDE,
    });
    let from = format!("sip:{}@127.0.0.1", pinbridge::fault::SLOW_FLOW_CALLER);
    let slow = Caller::dial_from(server, conference, &from);
    wait_call_log(server, slow.call_id(), "waiting in the lobby", 1);
    (talker, slow)
}

/// A caller in the lobby hears the "meeting is starting" prompt first when the meeting
/// starts, and the meeting after it, never a few frames of the meeting and then the prompt
/// cutting in — however late the IVR's deferred step runs. The caller asks (test builds
/// only) for its deferred IVR steps to run 1 s late, as they may (less) on a loaded server; when
/// the session joined the mix before its prompt was sent, it heard the meeting first.
#[test]
fn a_lobby_caller_hears_the_starting_prompt_before_the_meeting() {
    let server = Server::builder()
        .organizer("amos.marble@contoso.com", &[])
        .log_level("info")
        .start();
    let org = server.organizer("amos.marble@contoso.com").clone();
    // The other lobby caller talks already, so the meeting is audible from its first frame.
    let (talker, mut waiting) = talker_and_slow_caller(&server, &org.conference);
    // The caller under test has started PIN entry itself and is silent once the PIN prompt
    // is over: nothing plays for it when the meeting starts, so whatever it hears first
    // after that is either its prompt or the meeting.
    waiting.press("*");
    wait_call_log(&server, waiting.call_id(), "organizer PIN entry", 1);
    std::thread::sleep(PIN_PROMPT);

    let mut o = Caller::dial(&server, &org.conference);
    wait_call_log(&server, o.call_id(), "waiting in the lobby", 1);
    o.press("*");
    wait_call_log(&server, o.call_id(), "organizer PIN entry", 1);
    waiting.rtp.recv_for(Duration::from_millis(30));
    o.press(&format!("{}#", org.pin));
    // Silence, the PIN check and the deferred step, the prompt, a few seconds of the meeting.
    let heard = waiting.rtp.recv_for(Duration::from_secs(8));
    wait_call_log(&server, waiting.call_id(), "joined the meeting", 1);

    // Each 20 ms frame: the other caller's tone (the meeting), silence, or something else
    // (hold music, a prompt). The tone at −12 dBm0 scores about 0.03; music and speech far
    // less.
    let frames: Vec<&str> = heard
        .iter()
        .filter_map(|p| common::g711::decode_payload(p.payload_type, &p.payload))
        .map(|pcm| {
            let mean_abs = pcm.iter().map(|&x| i64::from(x).abs()).sum::<i64>() / pcm.len() as i64;
            if tone_power(&pcm, TALKER_HZ) > 0.01 {
                "meeting"
            } else if mean_abs < 50 {
                "silence"
            } else {
                "other"
            }
        })
        .collect();
    // Runs of equal frames, for the failure messages: [("silence", 66), ("other", 64), …].
    let mut runs: Vec<(&str, usize)> = Vec::new();
    for &f in &frames {
        match runs.last_mut() {
            Some((g, n)) if *g == f => *n += 1,
            _ => runs.push((f, 1)),
        }
    }
    let first_meeting = frames
        .iter()
        .position(|&f| f == "meeting")
        .unwrap_or_else(|| panic!("the lobby caller never heard the other one: {runs:?}"));
    let after = &frames[first_meeting..];
    let prompt_after = after.iter().filter(|&&f| f == "other").count();
    assert!(
        prompt_after <= 2,
        "{prompt_after} frames of prompt after the meeting was first heard (frame {first_meeting}): \
         the caller heard the meeting before its prompt; what it heard: {runs:?}"
    );
    assert!(
        after.iter().filter(|&&f| f == "meeting").count() > 50,
        "the meeting goes on after the prompt: {runs:?}"
    );
    for caller in [o, talker, waiting] {
        caller.hang_up();
    }
}

/// `*6` pressed the moment the meeting starts holds, and `*6` again undoes it. The caller's
/// IVR steps run 1 s late (the test-only hook above), so its keys arrive while its join into
/// the mix is still pending: the first key runs its IVR steps and the pending join with them,
/// and the mute that follows must reach a session that is in the mix.
#[test]
fn a_mute_pressed_as_the_meeting_starts_holds() {
    let server = Server::builder()
        .organizer("amos.marble@contoso.com", &[])
        .log_level("info")
        .start();
    let org = server.organizer("amos.marble@contoso.com").clone();
    const MUTED_HZ: f64 = 600.0;
    let (mut talker, mut muted) = talker_and_slow_caller(&server, &org.conference);
    muted.talk(Signal::Tone {
        hz: MUTED_HZ,
        amplitude: TONE_AMPLITUDE,
    });

    let mut o = Caller::dial(&server, &org.conference);
    wait_call_log(&server, o.call_id(), "waiting in the lobby", 1);
    o.press("*");
    wait_call_log(&server, o.call_id(), "organizer PIN entry", 1);
    o.press(&format!("{}#", org.pin));
    wait_call_log(&server, muted.call_id(), "joined the meeting", 1);
    muted.press_by_info("*6");
    wait_call_log(&server, muted.call_id(), "caller toggled mute", 1);
    // The test means something only if the mute came while the join was still pending.
    let at = |needle: &str| {
        let line = call_lines(&server, muted.call_id(), needle).remove(0);
        log_seconds(&line).unwrap_or_else(|| panic!("no timestamp in {line:?}"))
    };
    let (joined, toggled) = (at("joined the meeting"), at("caller toggled mute"));
    assert!(
        toggled - joined < pinbridge::fault::SLOW_FLOW_DELAY.as_secs_f64(),
        "the mute came {:.3} s after the bridge's join, after the deferred step",
        toggled - joined
    );

    // The prompts ("starting", "muted") end; then the others must not hear the muted caller.
    std::thread::sleep(Duration::from_secs(4));
    let full = (f64::from(TONE_AMPLITUDE) / 32768.0).powi(2);
    let powers = |talker: &mut Caller, o: &mut Caller| -> Vec<(f64, f64)> {
        [talker, o]
            .into_iter()
            .map(|caller| {
                let pcm = decode_stream(&caller.listen(Duration::from_millis(1500)));
                assert!(pcm.len() >= 8000, "received {} samples", pcm.len());
                (
                    tone_power(&pcm, MUTED_HZ) / full,
                    tone_power(&pcm, TALKER_HZ) / full,
                )
            })
            .collect()
    };
    let muted_heard = powers(&mut talker, &mut o);
    assert!(
        muted_heard.iter().all(|&(m, _)| m < 0.001),
        "the talker and the organizer hear the muted caller (power of its tone, of the \
         talker's): {muted_heard:.4?}"
    );
    assert!(
        muted_heard[1].1 > 0.25,
        "the organizer does not hear the talker: {muted_heard:.4?}"
    );
    // The control: unmuted, its tone is heard, so the silence above was the mute.
    muted.press_by_info("*6");
    wait_call_log(&server, muted.call_id(), "caller toggled mute", 2);
    std::thread::sleep(Duration::from_secs(3));
    let unmuted_heard = powers(&mut talker, &mut o);
    assert!(
        unmuted_heard.iter().all(|&(m, _)| m > 0.25),
        "unmuted, the caller is not heard: {unmuted_heard:.4?}"
    );
    for caller in [o, talker, muted] {
        caller.hang_up();
    }
}

/// Seconds of the day of a log line's `2026-12-07T19:34:21.418555Z` timestamp.
fn log_seconds(line: &str) -> Option<f64> {
    let time = line.split_whitespace().next()?.split('T').nth(1)?;
    let mut parts = time.trim_end_matches('Z').split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}
