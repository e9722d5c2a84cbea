//! Test-only fault injection: ways for the integration tests to make the real binary panic in
//! one call's signalling or in one media session, to prove that a panic is contained to that
//! call (`tests/faults.rs`), and to make one call's deferred IVR steps late, as they are on a
//! loaded server, to prove that what the caller hears does not depend on their timing
//! (`tests/meeting.rs`).
//!
//! The hooks are compiled in only with the `fault-injection` cargo feature, which is off by
//! default and turned on for test builds alone (see `Cargo.toml`). Without it the checks are
//! constant `false` and vanish, so a release build has no remotely triggerable panic. What
//! every build has is [`panic_message`], the one way a caught panic is described (calls,
//! media workers, the fuzzer).

/// Where a signalling panic can be asked for, named in the Request-URI user part of the
/// INVITE: `fault-panic-on-invite` panics while the call is being offered,
/// `fault-panic-on-ack` once it is confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignallingFault {
    OnInvite,
    OnAck,
}

/// The Request-URI user that asks for `fault`.
pub const fn signalling_user(fault: SignallingFault) -> &'static str {
    match fault {
        SignallingFault::OnInvite => "fault-panic-on-invite",
        SignallingFault::OnAck => "fault-panic-on-ack",
    }
}

/// The From user of a call whose deferred IVR steps (`Calls::run_flow_later`) run
/// [`SLOW_FLOW_DELAY`] late instead of on the signalling task's next turn.
pub const SLOW_FLOW_CALLER: &str = "fault-slow-flow";
pub const SLOW_FLOW_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether the call from `from_user` asked for slow deferred IVR steps; always false without
/// the feature.
pub fn slow_flow_wanted(from_user: Option<&str>) -> bool {
    cfg!(feature = "fault-injection") && from_user == Some(SLOW_FLOW_CALLER)
}

/// An RTP payload starting with these octets, accepted by a call, makes its media session
/// panic on the media worker.
pub const MEDIA_PANIC_PAYLOAD: &[u8] = b"pinbridge-fault:panic";

/// Whether the call dialled as `user` asked for `fault`; always false without the feature.
pub fn signalling_wanted(user: Option<&str>, fault: SignallingFault) -> bool {
    cfg!(feature = "fault-injection") && user == Some(signalling_user(fault))
}

/// Panics if `payload` asks for a media panic (feature `fault-injection` only).
#[inline]
pub fn check_media_payload(payload: &[u8]) {
    if cfg!(feature = "fault-injection") && payload.starts_with(MEDIA_PANIC_PAYLOAD) {
        panic!("fault injection: media panic requested by an RTP payload");
    }
}

/// The message a panic was raised with (`panic!` with a literal or a formatted string).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}
