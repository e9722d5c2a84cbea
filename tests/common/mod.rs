//! Helpers shared by the integration tests: they drive the real `pinbridge` binary over real
//! sockets on 127.0.0.1.
//!
//! - [`server::Server`] starts the binary, waits for its ready line, captures its logs and
//!   stops it (SIGTERM with a bounded wait, SIGKILL on drop).
//! - [`ports::PortBlock`] hands out port ranges that no other test process on this machine
//!   uses at the same time (for the server's RTP range and SIPp's own ports).
//! - [`sip::SipClient`] is a small SIP UAC of our own over UDP or TCP, written independently
//!   of the server's parser; [`sip::SdpOffer`] and [`sip::Sdp`] build and read SDP.
//! - [`rtp::RtpReceiver`] / [`rtp::RtpSender`] are the caller's media socket: parse RTP,
//!   decode G.711 with the independent decoder in [`g711`], check rate and sequence, and
//!   [`rtp::best_correlation`] proves what was heard.
//! - [`smtp::SmtpServer`] is a real SMTP server (aiosmtpd) that keeps what it receives in a
//!   Maildir; it can be stopped and started again on the same port.
//! - [`sipp`] finds and runs SIPp; [`audio`] decodes reference audio with sox.
//! - [`caller::Caller`] is one dial-in caller: dial, keys (RFC 4733 or INFO), a tone, listen.
//! - [`torture`] is the RFC 4475/5118 corpus in `../shared/sip-torture/` with the status
//!   each message must get, shared by the sans-IO and the over-the-wire torture tests.
//!
//! Every wait here is bounded in time and every loop in count; a missing tool is a loud
//! failure, never a skip.
//!
//! Each test binary compiles this module and uses only part of it.
#![allow(dead_code, unused_imports)]

pub mod audio;
pub mod browser;
pub mod call_log;
pub mod caller;
pub mod g711;
pub mod ports;
pub mod process;
pub mod rtp;
pub mod server;
pub mod sip;
pub mod sipp;
pub mod smtp;
pub mod stats;
pub mod torture;

use std::time::{Duration, Instant};

pub use ports::PortBlock;
pub use rtp::{RtpPacket, RtpReceiver, RtpSender, Signal, best_correlation};
pub use server::Server;
pub use sip::{Call, Sdp, SdpOffer, SipClient, SipMessage};

/// Polls `cond` every `step` until it returns true or `timeout` passes; returns its last
/// answer. At most `timeout / step + 1` polls.
pub fn wait_until(timeout: Duration, step: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(step.min(deadline.saturating_duration_since(Instant::now())));
    }
}

/// The repository root (where `Cargo.toml`, `audio/` and `sipp-scenarios/` live).
pub fn repo_root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// How long one SIP exchange with the server may take in the tests.
pub const SIP_STEP: Duration = Duration::from_secs(5);

/// A call the server answered and we acknowledged.
pub struct Dialed {
    pub call: Call,
    /// The 200 OK to the INVITE.
    pub ok: SipMessage,
    pub answer: Sdp,
    /// Where the server wants our RTP (c= and m= of the answer).
    pub media: std::net::SocketAddr,
    /// The one audio codec the server chose.
    pub payload_type: u8,
}

/// INVITE with `offer`, expect a 200 with an SDP answer naming exactly one audio codec,
/// ACK it. Panics with the transcript on anything else.
pub fn dial(client: &mut SipClient, user: &str, offer: &SdpOffer) -> Dialed {
    let mut call = client.invite(user, offer);
    let ok = client.expect_final(&mut call, "INVITE", SIP_STEP);
    if ok.status() != Some(200) {
        client.fail(&format!("INVITE answered {:?}, want 200", ok.start_line));
    }
    client.ack(&call, &ok);
    let answer = ok
        .sdp()
        .unwrap_or_else(|e| client.fail(&format!("200 OK without a usable SDP answer: {e}")));
    let media = answer
        .audio_addr()
        .unwrap_or_else(|| client.fail("SDP answer without an audio address"));
    let codecs = answer.audio().map(|a| a.audio_codecs()).unwrap_or_default();
    if codecs.len() != 1 {
        client.fail(&format!(
            "SDP answer must choose one audio codec, has {codecs:?}"
        ));
    }
    Dialed {
        call,
        ok,
        answer,
        media,
        payload_type: codecs[0],
    }
}

/// A re-INVITE in an established call with `offer`: expects a 200 with an SDP answer, ACKs
/// it, and returns both. Panics with the transcript on anything else.
pub fn reinvite(client: &mut SipClient, call: &mut Call, offer: &SdpOffer) -> (SipMessage, Sdp) {
    client.send_invite(call, Some(("application/sdp", &offer.render())), &[]);
    let ok = client.expect_final(call, "INVITE", SIP_STEP);
    if ok.status() != Some(200) {
        client.fail(&format!("re-INVITE answered {:?}, want 200", ok.start_line));
    }
    client.ack(call, &ok);
    let answer = ok
        .sdp()
        .unwrap_or_else(|e| client.fail(&format!("200 to re-INVITE without SDP answer: {e}")));
    (ok, answer)
}

/// BYE from our side; expects 200.
pub fn hang_up(client: &mut SipClient, call: &mut Call) {
    client.bye(call);
    let resp = client.expect_final(call, "BYE", SIP_STEP);
    if resp.status() != Some(200) {
        client.fail(&format!("BYE answered {:?}, want 200", resp.start_line));
    }
}

/// The audit actions of the admin changes (issue 5) that the API and CLI tests perform.
pub const ADMIN_CHANGE_ACTIONS: &[&str] = &[
    pinbridge::store::audit::USER_ENABLE,
    pinbridge::store::audit::SETTINGS_SET,
    pinbridge::store::audit::PIN_RESET,
    pinbridge::store::audit::CONFERENCE_ID_RESET,
    pinbridge::store::audit::USER_DISABLE,
];
