//! The application side of every call: it takes the endpoint's call events, the media
//! engine's events and the results of blocking store work, feeds them to each call's IVR
//! [`Flow`], its [`DigitStream`] and the shared [`Bridge`], and carries out what those
//! sans-IO machines ask for — media commands, store look-ups on the blocking pool, BYEs.
//!
//! It decides nothing itself: the IVR owns the caller's journey, the bridge owns who is in
//! which lobby or meeting, the store owns PINs and lockouts. Everything here runs on the one
//! signalling task; store work (sled, argon2) goes to `spawn_blocking` and comes back as a
//! [`Job`] through a channel, so signalling never waits on storage.
//!
//! Faults: every entry point handles one call at a time, and a panic while handling it is
//! caught ([`Calls::contained`]) and costs that call only: it is logged with the call's id,
//! its state here is dropped, its media session (and port), meeting or lobby place and SIP
//! leg are released (a BYE, or a final error response before the answer), and the server
//! carries on with the others (issue 7; `tests/faults.rs`).
//!
//! Per-source limits (issue 7): each call's [`Source`] is decided once, at the INVITE
//! ([`source::identify`]: the signalling IP, or the caller's number from a trusted trunk). A
//! blocked source's INVITE is answered `403` before a media port is taken — the store
//! answers that from memory ([`Store::refuse_call`]), and only the first refusal per window is
//! audited, off this task.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::IpAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::mpsc;
use tracing::{Span, debug, error, info, info_span, warn};

use crate::audio::{Assets, Sound};
use crate::bridge::{self, Admission, Bridge, Caller, Rules};
use crate::fault::{self, SignallingFault};
use crate::ivr::{self, CallFacts, ConferenceFacts, Flow, IvrConfig, PinResult};
use crate::media::dtmf::stream::{DigitStream, DtmfMode};
use crate::media::engine::{Engine, MediaEvent, MediaParams, MixId, SessionId};
use crate::media::player::PlayMode;
use crate::pin::{Pepper, Pin};
use crate::pin_checks::PinChecks;
use crate::sip::endpoint::{Endpoint, Event, LegId};
use crate::source::{self, Source};
use crate::store::{ConferenceId, FailureOutcome, PinCheck, Store, format_utc};

/// The result of store work done on the blocking pool, for the call that asked.
#[derive(Debug)]
pub enum Job {
    Lookup {
        leg: LegId,
        conference: ConferenceId,
        found: Result<Option<Found>, String>,
    },
    Pin {
        leg: LegId,
        result: PinResult,
    },
    /// The call's source turned out to be blocked (a look-up found it so, or a failure just
    /// recorded blocked it).
    SourceBlocked {
        leg: LegId,
    },
}

/// What a conference look-up found: the facts the IVR needs and the rules for the bridge.
#[derive(Debug, Clone, Copy)]
pub struct Found {
    requires_pin: bool,
    pin_locked: bool,
    allow_anonymous_start: bool,
}

/// Everything a live call has beyond what the endpoint keeps.
struct Call {
    span: Span,
    /// Who its failures count against.
    source: Source,
    anonymous: bool,
    dialed: Option<ConferenceId>,
    /// The call's one stream of key presses, merged from RFC 4733, INFO and in-band.
    digits: DigitStream,
    /// Created when the call is confirmed (ACK); `None` before.
    flow: Option<Flow>,
    /// The rules of the conference the IVR looked up last, for the bridge.
    rules: Option<Rules>,
    /// What the call is hearing, to match the engine's "playback finished" to a `Sound`.
    playing: Option<Sound>,
    /// The meeting mix the bridge put the call in, joined once the IVR's prompt for it has
    /// gone to the engine (see `run_flow`).
    joining: Option<MixId>,
    /// Test builds only (`fault-injection`): the call asked to panic once confirmed.
    panic_on_ack: bool,
    /// Test builds only (`fault-injection`): the call's deferred IVR steps run late.
    slow_flow: bool,
}

/// The per-process application state.
pub struct Calls {
    engine: Engine,
    assets: Arc<Assets>,
    store: Arc<Store>,
    pepper: Arc<Pepper>,
    /// Where argon2 runs (see `pin_checks` for why not on tokio's blocking pool).
    pin_checks: PinChecks,
    dtmf_mode: DtmfMode,
    ivr: IvrConfig,
    bridge: Bridge,
    /// Boxed: a `Call` is about 1 KB; a table of thousands growing would copy megabytes on
    /// the signalling task.
    calls: HashMap<LegId, Box<Call>>,
    /// IVR wake-ups; stale entries are harmless (a flow ignores an early `handle_timeout`).
    timers: BinaryHeap<Reverse<(Instant, LegId)>>,
    jobs: mpsc::UnboundedSender<Job>,
    /// Panics contained to one call, here or in its media session.
    faults: u64,
    /// Signalling addresses whose calls are keyed by caller number (see [`crate::source`]).
    trusted_trunks: Vec<IpAddr>,
}

impl Calls {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        engine: Engine,
        assets: Arc<Assets>,
        store: Arc<Store>,
        pepper: Arc<Pepper>,
        pin_checks: PinChecks,
        dtmf_mode: DtmfMode,
        ivr: IvrConfig,
        bridge: bridge::BridgeConfig,
        jobs: mpsc::UnboundedSender<Job>,
    ) -> Calls {
        Calls {
            engine,
            assets,
            store,
            pepper,
            pin_checks,
            dtmf_mode,
            ivr,
            bridge: Bridge::new(bridge),
            calls: HashMap::new(),
            timers: BinaryHeap::new(),
            jobs,
            faults: 0,
            trusted_trunks: Vec::new(),
        }
    }

    /// Calls from these addresses are counted per caller number, not per address.
    pub fn with_trusted_trunks(mut self, trunks: Vec<IpAddr>) -> Calls {
        self.trusted_trunks = trunks;
        self
    }

    /// The next time `handle_timeout` has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let flows = self.timers.peek().map(|Reverse((at, _))| *at);
        [flows, self.bridge.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant, endpoint: &mut Endpoint) {
        // Bounded: a flow whose deadline did not move would otherwise spin here.
        for _ in 0..100_000 {
            let Some(Reverse((at, leg))) = self.timers.peek().cloned() else {
                break;
            };
            if at > now {
                break;
            }
            self.timers.pop();
            self.contained(now, leg, endpoint, |calls, endpoint| {
                if calls
                    .in_flow(leg, |flow| flow.handle_timeout(now))
                    .is_some()
                {
                    calls.run_flow(now, leg, endpoint);
                }
            });
        }
        if self.bridge.poll_timeout().is_some_and(|at| at <= now) {
            self.bridge.handle_timeout(now);
            self.run_bridge(now, endpoint);
        }
    }

    /// A call event from the endpoint.
    pub fn call_event(&mut self, now: Instant, ev: Event, endpoint: &mut Endpoint) {
        let leg = match &ev {
            Event::Incoming { leg, .. }
            | Event::Media { leg, .. }
            | Event::Confirmed { leg }
            | Event::InfoDigit { leg, .. }
            | Event::Ended { leg, .. } => *leg,
        };
        self.contained(now, leg, endpoint, |calls, endpoint| {
            calls.handle_call_event(now, ev, endpoint)
        });
    }

    fn handle_call_event(&mut self, now: Instant, ev: Event, endpoint: &mut Endpoint) {
        match ev {
            Event::Incoming { leg, call } => {
                let from_user = call.from.uri.user.clone().unwrap_or_default();
                let span = info_span!("call", leg = leg.0, call_id = %call.call_id, from_user = %from_user);
                span.in_scope(|| {
                    info!(to = %call.request_uri, source = %call.source.addr, anonymous = call.anonymous, "incoming call")
                });
                let dialed_user = call.request_uri.user_unescaped();
                let dialed_user = dialed_user.as_deref();
                if fault::signalling_wanted(dialed_user, SignallingFault::OnInvite) {
                    // Before the engine has a session: the leg alone must be released.
                    panic!("fault injection: signalling panic on INVITE");
                }
                let panic_on_ack = fault::signalling_wanted(dialed_user, SignallingFault::OnAck);
                let source = source::identify(
                    call.source.addr.ip(),
                    call.asserted_user.as_deref(),
                    call.from.uri.user_unescaped().as_deref(),
                    &self.trusted_trunks,
                );
                if let Some(refusal) = self.store.refuse_call(&source, SystemTime::now()) {
                    let until = format_utc(refusal.until);
                    span.in_scope(|| info!(source = %source.key, %until, "call refused: source blocked for too many failed conference IDs or PINs"));
                    endpoint.reject_with_warning(
                        now,
                        leg,
                        403,
                        "Forbidden - Too Many Failed Attempts",
                        &format!("too many failed conference IDs or PINs from this source; blocked until {until}"),
                    );
                    if let Some(entry) = refusal.audit {
                        let store = self.store.clone();
                        tokio::task::spawn_blocking(move || {
                            if let Err(e) = store.append_audit(&entry) {
                                warn!(error = %e, "could not audit a refused call");
                            }
                        });
                    }
                    return;
                }
                let port = match self.engine.open(SessionId(leg.0)) {
                    Ok(port) => port,
                    Err(e) => {
                        span.in_scope(|| warn!(error = %e, "no media port; rejecting"));
                        endpoint.reject(now, leg, 503, "Service Unavailable");
                        return;
                    }
                };
                let dialed = call
                    .request_uri
                    .user_unescaped()
                    .and_then(|u| ConferenceId::parse(&u));
                self.calls.insert(
                    leg,
                    Box::new(Call {
                        span,
                        source,
                        anonymous: call.anonymous,
                        dialed,
                        digits: DigitStream::new(self.dtmf_mode, None),
                        flow: None,
                        rules: None,
                        playing: None,
                        joining: None,
                        panic_on_ack,
                        slow_flow: fault::slow_flow_wanted(call.from.uri.user.as_deref()),
                    }),
                );
                endpoint.accept(now, leg, port);
            }
            Event::Media { leg, negotiated } => {
                let Some(call) = self.calls.get_mut(&leg) else {
                    return;
                };
                call.digits.set_telephone_event(negotiated.telephone_event);
                call.span.in_scope(|| info!(codec = ?negotiated.codec, remote = ?negotiated.remote, direction = ?negotiated.direction, dtmf_pt = ?negotiated.telephone_event, "media negotiated"));
                let params = MediaParams {
                    remote: negotiated.remote,
                    // The address signalling came from (the latch compares canonically).
                    signalling_ip: call.source.ip,
                    codec: negotiated.codec,
                    payload_type: negotiated.payload_type,
                    telephone_event: negotiated.telephone_event,
                    direction: negotiated.direction,
                    inband_dtmf: call.digits.wants_inband(),
                };
                if let Err(e) = self.engine.configure(SessionId(leg.0), params) {
                    call.span
                        .in_scope(|| warn!(error = %e, "media configure failed"));
                }
            }
            Event::Confirmed { leg } => {
                let Some(call) = self.calls.get_mut(&leg) else {
                    return;
                };
                call.span.in_scope(|| info!("call up"));
                if call.panic_on_ack {
                    // With a media session, a port and a confirmed dialog to release.
                    panic!("fault injection: signalling panic on ACK");
                }
                let facts = CallFacts {
                    dialed: call.dialed.clone(),
                    anonymous: call.anonymous,
                };
                let flow = call
                    .span
                    .in_scope(|| Flow::new(now, self.ivr.clone(), facts));
                call.flow = Some(flow);
                self.run_flow(now, leg, endpoint);
            }
            Event::InfoDigit { leg, key, at } => {
                if let Some(call) = self.calls.get_mut(&leg) {
                    call.digits.handle_info(at, key);
                    self.drain_digits(now, leg, endpoint);
                }
            }
            Event::Ended { leg, reason } => {
                self.engine.close(SessionId(leg.0));
                if let Some(call) = self.calls.remove(&leg) {
                    let state = call.flow.as_ref().map_or("answering", Flow::state_name);
                    call.span
                        .in_scope(|| info!(?reason, last_state = state, "call ended"));
                }
                if self.bridge.leave(now, leg) {
                    self.run_bridge(now, endpoint);
                }
            }
        }
    }

    /// An event from the media engine.
    pub fn media_event(&mut self, now: Instant, ev: MediaEvent, endpoint: &mut Endpoint) {
        let session = match &ev {
            MediaEvent::RtpTimeout(session)
            | MediaEvent::Failed(session)
            | MediaEvent::Digit { session, .. }
            | MediaEvent::PlaybackFinished { session, .. } => *session,
        };
        self.contained(now, LegId(session.0), endpoint, |calls, endpoint| {
            calls.handle_media_event(now, ev, endpoint)
        });
    }

    fn handle_media_event(&mut self, now: Instant, ev: MediaEvent, endpoint: &mut Endpoint) {
        match ev {
            MediaEvent::Failed(SessionId(id)) => {
                // The engine has dropped the session already; the call cannot go on without
                // media, so it ends as if its handling here had failed.
                let leg = LegId(id);
                self.faults += 1;
                if let Some(call) = self.calls.get(&leg) {
                    call.span
                        .in_scope(|| error!("media session failed; hanging up"));
                }
                self.release(now, leg, endpoint);
            }
            MediaEvent::RtpTimeout(SessionId(id)) => {
                let leg = LegId(id);
                if let Some(call) = self.calls.get(&leg) {
                    call.span.in_scope(|| info!("no RTP received; hanging up"));
                }
                endpoint.hangup(now, leg);
            }
            MediaEvent::Digit {
                session: SessionId(id),
                digit,
            } => {
                let leg = LegId(id);
                if let Some(call) = self.calls.get_mut(&leg) {
                    call.digits.handle(digit);
                    self.drain_digits(now, leg, endpoint);
                }
            }
            MediaEvent::PlaybackFinished {
                session: SessionId(id),
                clip,
            } => {
                let leg = LegId(id);
                let Some(call) = self.calls.get_mut(&leg) else {
                    return;
                };
                let Some(sound) = call.playing.filter(|s| s.stem() == clip) else {
                    return;
                };
                call.playing = None;
                if self
                    .in_flow(leg, |flow| flow.handle_playback_finished(now, sound))
                    .is_some()
                {
                    self.run_flow(now, leg, endpoint);
                }
            }
        }
    }

    /// Store work finished on the blocking pool.
    pub fn job_done(&mut self, now: Instant, job: Job, endpoint: &mut Endpoint) {
        let leg = match &job {
            Job::Lookup { leg, .. } | Job::Pin { leg, .. } | Job::SourceBlocked { leg } => *leg,
        };
        self.contained(now, leg, endpoint, |calls, endpoint| {
            calls.handle_job(now, job, endpoint)
        });
    }

    fn handle_job(&mut self, now: Instant, job: Job, endpoint: &mut Endpoint) {
        match job {
            Job::Lookup {
                leg,
                conference,
                found,
            } => {
                let started = self.bridge.is_started(&conference);
                let Some(call) = self.calls.get_mut(&leg) else {
                    return;
                };
                let facts = match found {
                    Ok(Some(f)) => {
                        call.rules = Some(Rules {
                            requires_pin: f.requires_pin,
                            allow_anonymous_start: f.allow_anonymous_start,
                        });
                        Some(ConferenceFacts {
                            id: conference,
                            requires_pin: f.requires_pin,
                            started,
                            pin_locked: f.pin_locked,
                        })
                    }
                    Ok(None) => None,
                    Err(e) => {
                        // A store failure must not strand the caller: treat as unknown.
                        call.span
                            .in_scope(|| warn!(error = %e, "conference look-up failed"));
                        None
                    }
                };
                if self
                    .in_flow(leg, |flow| flow.handle_lookup(now, facts))
                    .is_some()
                {
                    self.run_flow(now, leg, endpoint);
                }
            }
            Job::Pin { leg, result } => {
                if self
                    .in_flow(leg, |flow| flow.handle_pin_result(now, result))
                    .is_some()
                {
                    self.run_flow(now, leg, endpoint);
                }
            }
            Job::SourceBlocked { leg } => {
                if self
                    .in_flow(leg, |flow| flow.handle_source_blocked(now))
                    .is_some()
                {
                    self.run_flow(now, leg, endpoint);
                }
            }
        }
    }

    /// Live calls, for logs and shutdown.
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Panics contained to one call (its signalling or its media session) so far.
    pub fn faults(&self) -> u64 {
        self.faults
    }

    /// Runs `f`, the handling of one input for call `leg`, and contains a panic in it to
    /// that call: logged with the call's id, then the call is released ([`Calls::release`])
    /// and the server goes on. Returns whether `f` completed.
    ///
    /// `AssertUnwindSafe` is sound here because of what a panic can leave half-done, and what
    /// happens to it next:
    /// - the call's own state (`Call`, its IVR `Flow`, its `DigitStream`) is thrown away;
    /// - the `HashMap`s and the timer heap are only changed by whole std operations, which
    ///   do not leave them broken when a caller panics; a stale timer for a gone call is
    ///   ignored, as for any call that ended;
    /// - the engine keeps its maps consistent under panic (see `media::engine::lock`), and
    ///   `Engine::close` of a session is idempotent;
    /// - the bridge is only ever called with whole operations (`admit`, `start`, `leave`),
    ///   each of which completes before its actions are drained; releasing the call takes it
    ///   out with `Bridge::leave`, which tolerates a call it does not know;
    /// - the endpoint's `hangup` tolerates a leg in any state, or one already gone.
    ///
    /// Only a panic in this call's handling is caught; one in the bridge's own timers or the
    /// endpoint is a bug in shared state, and still stops the server.
    fn contained(
        &mut self,
        now: Instant,
        leg: LegId,
        endpoint: &mut Endpoint,
        f: impl FnOnce(&mut Calls, &mut Endpoint),
    ) -> bool {
        let outcome = catch_unwind(AssertUnwindSafe(|| f(self, endpoint)));
        let Err(payload) = outcome else {
            return true;
        };
        let what = fault::panic_message(payload.as_ref());
        self.faults += 1;
        match self.calls.get(&leg) {
            Some(call) => call.span.in_scope(
                || error!(panic = %what, "handling the call panicked; hanging it up and carrying on"),
            ),
            // Before the call had its own state (its INVITE): name it by its SIP leg.
            None => {
                let call_id = endpoint.call_id(leg).unwrap_or("-");
                error!(leg = leg.0, call_id, panic = %what, "handling the call panicked; hanging it up and carrying on")
            }
        }
        self.release(now, leg, endpoint);
        false
    }

    /// Lets go of everything call `leg` holds: its state here, its media session and port, its
    /// place in a lobby or meeting (the others hear the leave tone; a meeting left empty
    /// ends) and its SIP leg (BYE once answered, a final error response before). The
    /// endpoint's `Ended` event follows and finds nothing left to do.
    fn release(&mut self, now: Instant, leg: LegId, endpoint: &mut Endpoint) {
        self.calls.remove(&leg);
        self.engine.close(SessionId(leg.0));
        // Contained once more, without recursion: a bridge that panics while letting the call
        // go must still not stop the hang-up, nor the server.
        let left = catch_unwind(AssertUnwindSafe(|| {
            if self.bridge.leave(now, leg) {
                self.run_bridge(now, endpoint);
            }
        }));
        if let Err(payload) = left {
            let what = fault::panic_message(payload.as_ref());
            error!(leg = leg.0, panic = %what, "releasing a failed call from the bridge panicked");
        }
        endpoint.hangup(now, leg);
    }

    fn flow(&mut self, leg: LegId) -> Option<&mut Flow> {
        self.calls.get_mut(&leg).and_then(|c| c.flow.as_mut())
    }

    /// Runs `f` on the call's IVR inside the call's span, so what the IVR logs names the
    /// call. `None` when the call or its IVR is gone.
    fn in_flow<R>(&mut self, leg: LegId, f: impl FnOnce(&mut Flow) -> R) -> Option<R> {
        let call = self.calls.get_mut(&leg)?;
        let flow = call.flow.as_mut()?;
        let _in_call = call.span.enter();
        Some(f(flow))
    }

    /// Key presses go to the IVR only, never relayed. They are logged (at debug) only while
    /// they cannot be part of a PIN; during PIN entry the log shows `key=*****`.
    fn drain_digits(&mut self, now: Instant, leg: LegId, endpoint: &mut Endpoint) {
        let Some(call) = self.calls.get_mut(&leg) else {
            return;
        };
        let mut any = false;
        while let Some(d) = call.digits.poll_digit() {
            let secret = call.flow.as_ref().is_some_and(Flow::keys_are_secret);
            let shown: &dyn std::fmt::Display = if secret { &crate::pin::MASK } else { &d.key };
            call.span
                .in_scope(|| debug!(key = %shown, method = ?d.method, "dtmf digit"));
            if let Some(flow) = call.flow.as_mut() {
                let _in_call = call.span.enter();
                flow.handle_key(now, d.key);
                any = true;
            }
        }
        if any {
            self.run_flow(now, leg, endpoint);
        }
    }

    /// Carries out what a call's IVR asks for, until it asks for nothing more.
    fn run_flow(&mut self, now: Instant, leg: LegId, endpoint: &mut Endpoint) {
        for _ in 0..64 {
            let Some(action) = self.flow(leg).and_then(Flow::poll_action) else {
                break;
            };
            self.flow_action(now, leg, action, endpoint);
        }
        if let Some(meeting) = self.calls.get_mut(&leg).and_then(|c| c.joining.take())
            && let Err(e) = self.engine.join_meeting(SessionId(leg.0), meeting)
        {
            warn!(leg = leg.0, meeting = meeting.0, error = %e, "could not join the mix");
        }
        if let Some(at) = self.flow(leg).and_then(|f| f.poll_timeout()) {
            self.timers.push(Reverse((at, leg)));
        }
    }

    fn flow_action(
        &mut self,
        now: Instant,
        leg: LegId,
        action: ivr::Action,
        endpoint: &mut Endpoint,
    ) {
        let session = SessionId(leg.0);
        match action {
            ivr::Action::Play(sound, mode) => self.play(now, leg, sound, mode),
            ivr::Action::StopPlayback => {
                if let Some(call) = self.calls.get_mut(&leg) {
                    call.playing = None;
                }
                let _ = self.engine.stop_playback(session);
            }
            ivr::Action::Lookup(conference) => {
                let Some(source) = self.calls.get(&leg).map(|c| c.source.clone()) else {
                    return;
                };
                let store = self.store.clone();
                let jobs = self.jobs.clone();
                tokio::task::spawn_blocking(move || {
                    if refused_while_blocked(&store, &source, "conference ID") {
                        let _ = jobs.send(Job::SourceBlocked { leg });
                        return;
                    }
                    let found = lookup(&store, &conference).map_err(|e| e.to_string());
                    let _ = jobs.send(Job::Lookup {
                        leg,
                        conference,
                        found,
                    });
                });
            }
            ivr::Action::Join(conference) => self.admit(now, leg, &conference, endpoint),
            ivr::Action::Admit { conference, .. } => self.admit(now, leg, &conference, endpoint),
            ivr::Action::EnterLobby(conference) => self.admit(now, leg, &conference, endpoint),
            ivr::Action::VerifyPin { conference, pin } => self.verify_pin(leg, conference, pin),
            ivr::Action::ConferenceIdFailed { digits } => {
                let Some(source) = self.calls.get(&leg).map(|c| c.source.clone()) else {
                    return;
                };
                let (store, jobs) = (self.store.clone(), self.jobs.clone());
                tokio::task::spawn_blocking(move || {
                    match store.record_conference_id_failure(&source, digits, SystemTime::now()) {
                        Ok(Some(_)) => {
                            let _ = jobs.send(Job::SourceBlocked { leg });
                        }
                        Ok(None) => {}
                        Err(e) => warn!(error = %e, "could not count a failed conference ID"),
                    }
                });
            }
            ivr::Action::StartMeeting(conference) => {
                let admission = self.bridge.start(now, &conference, leg);
                self.admitted(now, leg, admission);
                self.run_bridge(now, endpoint);
            }
            ivr::Action::SetMuted(muted) => {
                if self.bridge.set_muted(now, leg, muted) {
                    self.run_bridge(now, endpoint);
                }
            }
            ivr::Action::Hangup(cause) => {
                if let Some(call) = self.calls.get(&leg) {
                    call.span.in_scope(|| info!(?cause, "IVR hangs up"));
                }
                endpoint.hangup(now, leg);
                if self.bridge.leave(now, leg) {
                    self.run_bridge(now, endpoint);
                }
            }
        }
    }

    fn play(&mut self, now: Instant, leg: LegId, sound: Sound, mode: PlayMode) {
        let clip = self.assets.clip(sound).clone();
        let ok = self.engine.play(SessionId(leg.0), clip, mode).is_ok();
        let Some(call) = self.calls.get_mut(&leg) else {
            return;
        };
        call.playing = Some(sound);
        if !ok {
            // Nothing will report this prompt finished: say so now, so the IVR moves on.
            call.playing = None;
            if let Some(flow) = call.flow.as_mut() {
                let _in_call = call.span.enter();
                flow.handle_playback_finished(now, sound);
            }
        }
    }

    fn admit(
        &mut self,
        now: Instant,
        leg: LegId,
        conference: &ConferenceId,
        endpoint: &mut Endpoint,
    ) {
        let Some(call) = self.calls.get(&leg) else {
            return;
        };
        let caller = Caller {
            anonymous: call.anonymous,
        };
        // A conference always comes through a look-up first; strict rules if it somehow did not.
        let rules = call.rules.unwrap_or(Rules {
            requires_pin: true,
            allow_anonymous_start: false,
        });
        let admission = self.bridge.admit(now, leg, conference, caller, rules);
        self.admitted(now, leg, admission);
        self.run_bridge(now, endpoint);
    }

    /// Tells the IVR where the bridge put the caller. Joining the mix (and the IVR's
    /// "in the meeting") follows from the bridge's `JoinMix` action.
    fn admitted(&mut self, now: Instant, leg: LegId, admission: Admission) {
        self.in_flow(leg, |flow| match admission {
            Admission::Lobby { .. } => flow.handle_lobby(now),
            Admission::Full => flow.handle_meeting_full(now),
            Admission::Started { .. } | Admission::Joined { .. } | Admission::AlreadyIn { .. } => {}
        });
    }

    fn verify_pin(&mut self, leg: LegId, conference: ConferenceId, pin: Pin) {
        let Some(call) = self.calls.get(&leg) else {
            return;
        };
        call.span
            .in_scope(|| debug!(%conference, pin_len = pin.len(), "PIN check sent to the store"));
        let source = call.source.clone();
        let (store, pepper, jobs) = (self.store.clone(), self.pepper.clone(), self.jobs.clone());
        // argon2 takes tens of milliseconds: never on the signalling task.
        self.pin_checks.submit(move || {
            let now = SystemTime::now();
            let check = store.check_organizer_pin(&conference, &pin, &pepper, &source, now);
            let result = match check {
                Ok(PinCheck::Verified(_)) => PinResult::Verified,
                Ok(PinCheck::SourceBlocked { .. }) => PinResult::SourceBlocked,
                // The failure that blocks the source ends the call at once.
                Ok(PinCheck::Wrong(_)) if store.source_blocked(&source.key, now).is_some() => {
                    PinResult::SourceBlocked
                }
                Ok(PinCheck::Wrong(FailureOutcome::Counted { .. })) => PinResult::Wrong,
                Ok(PinCheck::Wrong(_)) | Ok(PinCheck::Locked { .. }) => PinResult::LockedOut,
                Ok(PinCheck::UnknownConference) | Ok(PinCheck::Disabled) => PinResult::Wrong,
                Err(e) => {
                    warn!(%conference, error = %e, "PIN check failed in the store");
                    PinResult::Wrong
                }
            };
            let _ = jobs.send(Job::Pin { leg, result });
        });
    }

    /// Carries out the bridge's actions.
    fn run_bridge(&mut self, now: Instant, endpoint: &mut Endpoint) {
        let _ = endpoint;
        while let Some(action) = self.bridge.poll_action() {
            match action {
                bridge::Action::MeetingStarted {
                    meeting,
                    conference,
                } => debug!(%conference, %meeting, "mix set up for the meeting"),
                // The IVR plays the lobby's hold music and every per-caller prompt itself.
                bridge::Action::ToLobby { .. } | bridge::Action::Announce { .. } => {}
                bridge::Action::JoinMix { leg, meeting } => {
                    let conference = self.bridge.conference_of(leg).cloned();
                    let participants = conference
                        .as_ref()
                        .map_or(0, |c| self.bridge.participants(c));
                    if let Some(call) = self.calls.get(&leg) {
                        call.span.in_scope(|| {
                            info!(conference = ?conference.as_ref().map(ConferenceId::as_str), %meeting, participants, "joined the meeting")
                        });
                    }
                    // The IVR's "joined"/"starting" prompt goes to the engine first and the
                    // session joins the mix right after it (in `run_flow`): joined first, the
                    // caller heard a few frames of the meeting before the prompt cut in
                    // whenever the deferred flow ran a little later (seen under load).
                    if let Some(call) = self.calls.get_mut(&leg) {
                        call.joining = Some(MixId(meeting.0));
                    }
                    self.in_flow(leg, |flow| flow.handle_meeting_started(now));
                    self.run_flow_later(leg, now);
                }
                bridge::Action::LeaveMix { leg, meeting } => {
                    debug!(leg = leg.0, %meeting, "left the mix");
                    if let Some(call) = self.calls.get_mut(&leg) {
                        call.joining = None;
                    }
                    // The call may be torn down already (its session closed): nothing to do.
                    let _ = self.engine.leave_meeting(SessionId(leg.0));
                }
                bridge::Action::Tone {
                    meeting,
                    except,
                    sound,
                } => {
                    debug!(%meeting, except = except.0, ?sound, "meeting tone");
                    let clip = self.assets.clip(sound).clone();
                    self.engine
                        .play_tone(MixId(meeting.0), clip, SessionId(except.0));
                }
                bridge::Action::Muted { leg, muted } => {
                    if let Some(call) = self.calls.get(&leg) {
                        call.span
                            .in_scope(|| debug!(muted, "mute changed in the mix"));
                    }
                    let _ = self.engine.set_muted(SessionId(leg.0), muted);
                }
                bridge::Action::End { leg } => {
                    if let Some(call) = self.calls.get_mut(&leg) {
                        call.joining = None;
                    }
                    let _ = self.engine.leave_meeting(SessionId(leg.0));
                    self.in_flow(leg, |flow| flow.handle_meeting_ended(now));
                    self.run_flow_later(leg, now);
                }
                bridge::Action::MeetingEnded {
                    meeting,
                    conference,
                    reason,
                } => debug!(%conference, %meeting, ?reason, "mix of the meeting dropped"),
            }
        }
    }

    /// Flows touched while the bridge is being drained run on the next wake-up (at once):
    /// running them inline could re-enter the bridge mid-drain.
    fn run_flow_later(&mut self, leg: LegId, now: Instant) {
        let at = if self.calls.get(&leg).is_some_and(|c| c.slow_flow) {
            now + fault::SLOW_FLOW_DELAY
        } else {
            now
        };
        self.timers.push(Reverse((at, leg)));
    }
}

/// Whether the call's source is blocked now; if so the refusal of `what` is audited
/// (blocking: sled). Only calls that were up before the block get here: new ones get `403`.
fn refused_while_blocked(store: &Store, source: &Source, what: &str) -> bool {
    let now = SystemTime::now();
    let Some(until) = store.source_blocked(&source.key, now) else {
        return false;
    };
    let entry = crate::store::AuditEntry::new(
        now,
        crate::store::audit::ACTOR_SYSTEM,
        crate::store::audit::SOURCE_REFUSED,
        source.key.to_string(),
        format!(
            "{what} not looked up: source blocked until {}",
            format_utc(until)
        ),
        Some(source.ip),
    );
    if let Err(e) = store.append_audit(&entry) {
        warn!(error = %e, "could not audit a refused conference ID");
    }
    true
}

/// Reads what the IVR and the bridge need to know about a conference (blocking: sled).
fn lookup(
    store: &Store,
    conference: &ConferenceId,
) -> Result<Option<Found>, crate::store::StoreError> {
    let Some(user) = store.user_by_conference(conference)? else {
        return Ok(None);
    };
    if !user.enabled {
        return Ok(None);
    }
    let settings = store.tenant_settings()?;
    let pin_locked = store.pin_lockout(conference, SystemTime::now())?.is_some();
    Ok(Some(Found {
        requires_pin: user.requires_pin,
        pin_locked,
        allow_anonymous_start: settings.allow_anonymous_start,
    }))
}
