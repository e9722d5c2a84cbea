//! What the tests that follow a call through the server's log and its audio share: one call's
//! log lines, waiting for a step of its flow, the PIN-never-logged check, and the Goertzel
//! power of a tone in what a caller heard.

use std::time::Duration;

use super::server::Server;
use super::wait_until;

/// How long a step of the call flow (a prompt, a PIN check) may take to show in the log.
pub const STEP_WAIT: Duration = Duration::from_secs(30);

/// The info lines of one call (its Call-ID is in the call's span) that contain `needle`.
pub fn call_lines(server: &Server, call_id: &str, needle: &str) -> Vec<String> {
    server.log_lines_with(&[needle, &format!("call_id={call_id} ")])
}

/// Waits (at most [`STEP_WAIT`]) until the call has logged `needle` at least `n` times.
pub fn wait_call_log(server: &Server, call_id: &str, needle: &str, n: usize) {
    let ok = wait_until(STEP_WAIT, Duration::from_millis(50), || {
        call_lines(server, call_id, needle).len() >= n
    });
    assert!(
        ok,
        "call {call_id} never logged {needle:?} ({n}×); its log:\n{}",
        server
            .log_lines_with(&[&format!("call_id={call_id} ")])
            .join("\n")
    );
}

/// Asserts that a PIN appears nowhere in the server's log as a number of its own (digits
/// inside longer numbers, such as timestamps, and port numbers after a `:` do not count).
pub fn assert_not_logged(server: &Server, pin: &str) {
    let logs = server.logs();
    let bytes = logs.as_bytes();
    for (at, _) in logs.match_indices(pin) {
        let before = at.checked_sub(1).map(|i| bytes[i]);
        let after = bytes.get(at + pin.len()).copied();
        // `:58783` is a port (`127.0.0.1:58783`), which a PIN may happen to equal.
        let alone = !before.is_some_and(|b| b.is_ascii_digit() || b == b':')
            && !after.is_some_and(|b| b.is_ascii_digit());
        assert!(
            !alone,
            "the PIN {pin} is in the server log: {}",
            logs.get(at.saturating_sub(200)..(at + 100).min(logs.len()))
                .unwrap_or("(context not on a character boundary)")
        );
    }
}

/// Power of `hz` in `pcm` (Goertzel), as a fraction of a full-amplitude sine's: a sine of
/// amplitude A scores about (A / 32768)².
pub fn tone_power(pcm: &[i16], hz: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * hz / 8000.0;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in pcm {
        let s0 = f64::from(x) / 32768.0 + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    4.0 * power / (pcm.len() as f64 * pcm.len() as f64)
}
