//! The caller's journey from answer to meeting, as a sans-IO state machine: greeting →
//! conference ID → (lobby → `*` → organizer PIN) → meeting, and every way out of it.
//!
//! A [`Flow`] owns one call's IVR state and nothing else. It is fed inputs with an explicit
//! `now` (`handle_key`, `handle_playback_finished`, `handle_lookup`, `handle_pin_result`,
//! `handle_lobby`, `handle_meeting_started`, `handle_meeting_full`, `handle_meeting_ended`,
//! `handle_timeout`) and drained for [`Action`]s (`poll_action`) and its next deadline
//! (`poll_timeout`). It never reads a clock or touches a socket, the store or the media
//! engine: the server performs every action and reports the results back. Inputs that do not
//! fit the current state (a late lookup, a key while the PIN is being verified) are ignored,
//! so the server never has to filter them.
//!
//! # Keys
//! - **Conference ID and PIN entry.** Digits are collected until `#`. `*` clears what was
//!   typed and replays the entry prompt (a way to start over). `#` with nothing typed counts
//!   as a timeout with nothing typed (see below). `A`–`D` are ignored everywhere. The first
//!   digit typed while the entry prompt plays stops it ([`Action::StopPlayback`], barge-in);
//!   digits typed during the greeting barge in the same way and start the conference ID,
//!   unless the call was dialled to a conference ID that is known or still being looked up.
//!   Keys typed while a "sorry" prompt plays, while the store looks something up or while
//!   the bridge answers are ignored.
//! - **Conference ID**: at most [`MAX_CONFERENCE_ID_DIGITS`] digits; one more is an invalid
//!   entry at once, and so is an entry [`ConferenceId::parse`] rejects (fewer than 4
//!   digits). An invalid entry counts as an unknown conference ID without asking the store.
//! - **PIN**: [`IvrConfig::min_pin_digits`]–[`IvrConfig::max_pin_digits`] digits; an entry
//!   outside that counts as a wrong PIN for this call without asking the store (it cannot
//!   match, and the store's per-conference counters are for real verification attempts).
//! - **Lobby**: `*` (at any time, also during the "organizer or wait" prompt) starts PIN
//!   entry; other keys are ignored.
//! - **Meeting**: `*6` toggles the caller's own mute, `*1` plays the help prompt. A `*` not
//!   followed by a key within [`IvrConfig::command_timeout`] is dropped, and so is a `*`
//!   followed by any other key; a second `*` starts the command over. Keys in the meeting
//!   are consumed here and go nowhere else: the server must not relay them (no SIP INFO
//!   towards others, no RFC 4733 telephone-event packets into the mixer, which decodes only
//!   the negotiated G.711 payload type). In-band tones are part of the caller's audio and
//!   reach the mix like speech; suppressing them there is the mixer's business, not ours.
//!
//! # Routing a known conference
//! Started → [`Action::Join`]. Not started, no PIN required → [`Action::Admit`] (the bridge
//! applies the start rules). Not started, PIN required → OrganizerOrWait and
//! [`Action::EnterLobby`]; hold music after the prompt; `*` → PIN → [`Action::VerifyPin`] →
//! [`Action::StartMeeting`]. A wrong PIN replays "not correct" and the PIN prompt;
//! [`IvrConfig::pin_tries`] wrong PINs end the call; `LockedOut` (or `pin_locked` in the
//! lookup) plays PinUnavailable and keeps the caller in the lobby. The lock is as the flow
//! last heard it: it is not re-checked until the caller's next verification, which the
//! store answers anyway.
//!
//! # Per-source limits (issue 7)
//! Every unknown or invalid conference ID *keyed in* is reported with
//! [`Action::ConferenceIdFailed`] (the store counts them per source across calls; a dialled
//! Request-URI that is not a known ID is not: trunks put their own numbers there). When the
//! server learns the caller's source is blocked — from a look-up, a PIN verification
//! ([`PinResult::SourceBlocked`]) or a failure it just recorded — it calls
//! [`Flow::handle_source_blocked`]: the caller hears why (ConferenceIdUnknown while an ID was
//! being checked, PinUnavailable while a PIN was), then Goodbye, and is hung up with
//! [`EndCause::SourceBlocked`]. The flow keeps no per-source state itself.
//!
//! # Timers (all data; [`Flow::poll_timeout`] is the earliest)
//! - **First digit**: [`IvrConfig::first_digit_timeout`] (10 s) after the entry prompt
//!   *finished playing* (`handle_playback_finished`), not after it started.
//! - **Between digits**: [`IvrConfig::inter_digit_timeout`] (5 s) after each digit.
//! - On a timeout with digits typed, the entry is taken as complete (an implied `#`). On a
//!   timeout with nothing typed the prompt is replayed, at most
//!   [`IvrConfig::max_prompt_repeats`] (3) times in a row; the next one gives up: the
//!   conference ID ends the call (Goodbye, [`EndCause::NoInput`]), the PIN returns the
//!   caller to the lobby. Any key press ends a "row".
//! - **Lobby reminder**: after each [`IvrConfig::reminder_interval`] (60 s) of uninterrupted
//!   hold music, WaitingForOrganizer plays once, then the hold music starts again and the
//!   interval starts over. No reminder while the caller enters a PIN.
//! - **Meeting command**: a pending `*` is dropped after [`IvrConfig::command_timeout`] (2 s).
//! - **Goodbye guard**: once the call is leaving, [`Action::Hangup`] is emitted when the
//!   Goodbye prompt has finished, or at the latest [`IvrConfig::goodbye_guard`] after the
//!   leaving started, so a call whose prompts never report an end still hangs up.
//!
//! # Prompts and `handle_playback_finished`
//! Every sound the caller hears before the meeting comes from [`Action::Play`], hold music
//! included. The flow waits for the end of a [`PlayMode::Once`] sound before its next step
//! (the digit timer, the next prompt, the hang-up), so the server must report each one with
//! `handle_playback_finished(now, sound)` — also when it could not play it at all (no media
//! session, engine error): then the step follows at once. A finish for a sound the current
//! state is not waiting for is ignored (it is stale: a replaced prompt). A finish can only be
//! told apart by its sound, so a stale finish of a prompt replayed by itself (`*`, a
//! timeout) starts the first-digit timer up to one prompt length early; harmless.
//! A failure that ends the call plays its "sorry" prompt first (ConferenceIdUnknown,
//! PinIncorrect, MeetingFull), then Goodbye, then [`Action::Hangup`].
//!
//! # Secrets
//! PIN digits are never logged at any level, and the in-progress entry's `Debug` shows only
//! its length; logs carry `pin_len` and `attempt`. The PIN leaves only inside
//! [`Action::VerifyPin`], as a [`Pin`], whose `Debug`/`Display` are redacted. Conference IDs
//! are not secret and are logged. The server must not log keys either while a call is in
//! the IVR: a per-key log line leaks the PIN one digit at a time.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use thiserror::Error;
use tracing::{debug, info, warn};

use crate::audio::Sound;
use crate::media::dtmf::Key;
use crate::media::player::PlayMode;
use crate::pin::Pin;
use crate::store::ConferenceId;

/// The longest conference ID a caller can key in: [`ConferenceId::parse`] accepts 4–15 digits.
pub const MAX_CONFERENCE_ID_DIGITS: usize = 15;

/// The IVR's tunables. [`Default`] gives the product defaults (DESIGN.md, "Call flow").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IvrConfig {
    /// From the end of an entry prompt to the first digit (10 s).
    pub first_digit_timeout: Duration,
    /// From one digit to the next; when it runs out the entry counts as complete (5 s).
    pub inter_digit_timeout: Duration,
    /// Replays of an entry prompt in a row when nothing is typed, before giving up (3).
    pub max_prompt_repeats: u32,
    /// Conference IDs a caller may try (unknown or invalid) before Goodbye (3).
    pub conference_id_tries: u32,
    /// Wrong PINs per call before Goodbye (3). The store separately counts failures per
    /// conference and per source and decides lockouts.
    pub pin_tries: u32,
    /// Fewest digits a PIN entry may have (4; the tenant PIN length is 4–12).
    pub min_pin_digits: usize,
    /// Most digits a PIN entry may have (12).
    pub max_pin_digits: usize,
    /// Hold music between two "waiting for the organizer" reminders in the lobby (60 s).
    pub reminder_interval: Duration,
    /// How long an in-meeting `*` waits for its command key (2 s).
    pub command_timeout: Duration,
    /// Longest wait for the leaving prompts to finish before hanging up anyway (15 s).
    pub goodbye_guard: Duration,
}

impl Default for IvrConfig {
    fn default() -> Self {
        IvrConfig {
            first_digit_timeout: Duration::from_secs(10),
            inter_digit_timeout: Duration::from_secs(5),
            max_prompt_repeats: 3,
            conference_id_tries: 3,
            pin_tries: 3,
            min_pin_digits: 4,
            max_pin_digits: 12,
            reminder_interval: Duration::from_secs(60),
            command_timeout: Duration::from_secs(2),
            goodbye_guard: Duration::from_secs(15),
        }
    }
}

impl IvrConfig {
    /// Checks the settings make a usable flow; `config` calls this once at start.
    pub fn validate(&self) -> Result<(), IvrConfigError> {
        let durations = [
            ("first_digit_timeout", self.first_digit_timeout),
            ("inter_digit_timeout", self.inter_digit_timeout),
            ("reminder_interval", self.reminder_interval),
            ("command_timeout", self.command_timeout),
            ("goodbye_guard", self.goodbye_guard),
        ];
        if let Some((name, _)) = durations.iter().find(|(_, d)| d.is_zero()) {
            return Err(IvrConfigError::ZeroDuration(name));
        }
        if self.conference_id_tries == 0 {
            return Err(IvrConfigError::NoTries("conference_id_tries"));
        }
        if self.pin_tries == 0 {
            return Err(IvrConfigError::NoTries("pin_tries"));
        }
        if self.min_pin_digits == 0 || self.min_pin_digits > self.max_pin_digits {
            return Err(IvrConfigError::PinDigits {
                min: self.min_pin_digits,
                max: self.max_pin_digits,
            });
        }
        Ok(())
    }
}

/// Why an [`IvrConfig`] cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IvrConfigError {
    #[error("IVR setting {0} must be longer than zero")]
    ZeroDuration(&'static str),
    #[error("IVR setting {0} must allow at least one try")]
    NoTries(&'static str),
    #[error(
        "IVR PIN length {min}–{max} digits: the minimum must be at least 1 and not above the maximum"
    )]
    PinDigits { min: usize, max: usize },
}

/// What signalling knows about the call when the IVR starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallFacts {
    /// The Request-URI user part, when [`ConferenceId::parse`] accepts it (direct dial).
    pub dialed: Option<ConferenceId>,
    /// The caller withheld their identity; passed on to the bridge in [`Action::Admit`].
    pub anonymous: bool,
}

/// The store's answer to [`Action::Lookup`] for a known conference ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConferenceFacts {
    pub id: ConferenceId,
    /// The organizer requires their PIN to start the meeting.
    pub requires_pin: bool,
    /// The meeting is running now.
    pub started: bool,
    /// Organizer PIN entry for this conference is locked out right now.
    pub pin_locked: bool,
}

/// The store's answer to [`Action::VerifyPin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinResult {
    /// The organizer's PIN: start the meeting.
    Verified,
    /// Not the PIN (the store has counted the failure).
    Wrong,
    /// PIN entry is locked for this conference (this attempt was not checked, or it was the
    /// failure that locked it).
    LockedOut,
    /// The caller's source is blocked for too many failures: not checked; the call ends.
    SourceBlocked,
}

/// Why the IVR hung up, for [`Action::Hangup`] and the call's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndCause {
    /// Nothing was typed through every replay of the conference ID prompt.
    NoInput,
    /// [`IvrConfig::conference_id_tries`] unknown or invalid conference IDs.
    UnknownConference,
    /// [`IvrConfig::pin_tries`] wrong PINs on this call.
    PinFailures,
    /// The bridge refused the caller: the meeting is at its maximum size.
    MeetingFull,
    /// The bridge ended the meeting.
    MeetingEnded,
    /// The caller's source is over a per-source failure limit (issue 7).
    SourceBlocked,
}

/// What the server must do for the call. Drain with [`Flow::poll_action`] after every input,
/// and perform them in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Play the sound from its start in place of whatever plays (the mode is always
    /// `sound.play_mode()`: hold music loops, everything else plays once). Report the end of
    /// a `Once` sound with [`Flow::handle_playback_finished`], or at once if it cannot play.
    /// In the meeting (Muted, Unmuted, Help, JoinedMeeting, MeetingStarting) the prompt goes
    /// to this caller only, over or instead of their mix — never into what others hear.
    Play(Sound, PlayMode),
    /// Stop the current playback (the caller barged in); silence follows. No report.
    StopPlayback,
    /// Look the ID up in the store (off the signalling path) and answer with
    /// [`Flow::handle_lookup`]. At most one lookup is outstanding at a time.
    Lookup(ConferenceId),
    /// The meeting is running: add the caller to it. Answer with
    /// [`Flow::handle_meeting_started`] once they are in, [`Flow::handle_meeting_full`] if it
    /// is full, or [`Flow::handle_lobby`] if it is no longer running and they must wait.
    Join(ConferenceId),
    /// The organizer does not require a PIN and the meeting is not running: the bridge
    /// decides (a caller who is not anonymous starts it; an anonymous one waits in the lobby
    /// unless the tenant allows anonymous starts). Answer with
    /// [`Flow::handle_meeting_started`], [`Flow::handle_lobby`] or
    /// [`Flow::handle_meeting_full`].
    Admit {
        conference: ConferenceId,
        anonymous: bool,
    },
    /// Put the caller in the conference's lobby (arrival order counts from here). The flow
    /// plays the lobby's sounds itself (OrganizerOrWait, then hold music via `Play`); the
    /// bridge only keeps the membership and calls [`Flow::handle_meeting_started`] when the
    /// meeting starts. Answer nothing.
    EnterLobby(ConferenceId),
    /// A conference ID keyed on this call was unknown or invalid (`digits` long): count it
    /// for the caller's source. Answer nothing, unless the count blocks the source: then
    /// [`Flow::handle_source_blocked`]. The digits themselves are not passed on, so they
    /// reach no log or audit (a caller at the wrong prompt may have keyed their PIN).
    ConferenceIdFailed { digits: usize },
    /// Verify the organizer PIN on the blocking pool (argon2, counters, audit) and answer
    /// with [`Flow::handle_pin_result`]. Never log `pin`'s digits.
    VerifyPin { conference: ConferenceId, pin: Pin },
    /// The organizer's PIN verified: start the meeting, release the lobby into it (this
    /// caller included) and call [`Flow::handle_meeting_started`] (or `handle_meeting_full`).
    StartMeeting(ConferenceId),
    /// Mute (true) or unmute (false) this caller's audio in the meeting mix.
    SetMuted(bool),
    /// Hang up (BYE) and remove the caller from the bridge; the flow is over and emits
    /// nothing more.
    Hangup(EndCause),
}

/// One call's IVR. Create it when the call is up (ACK received); it starts with the greeting.
#[derive(Debug)]
pub struct Flow {
    config: IvrConfig,
    anonymous: bool,
    state: State,
    /// Unknown or invalid conference IDs keyed on this call.
    id_failures: u32,
    /// Wrong PINs on this call (store answers and malformed entries).
    pin_failures: u32,
    actions: VecDeque<Action>,
}

impl Flow {
    /// Starts the IVR for a call that is up: plays the greeting and, for a direct dial,
    /// looks the dialled conference ID up while it plays.
    pub fn new(now: Instant, config: IvrConfig, call: CallFacts) -> Flow {
        let _ = now;
        info!(
            dialed = ?call.dialed.as_ref().map(ConferenceId::as_str),
            anonymous = call.anonymous,
            "IVR start"
        );
        let mut actions = VecDeque::from([Action::Play(Sound::Greeting, PlayMode::Once)]);
        let dialed = match call.dialed {
            Some(id) => {
                actions.push_back(Action::Lookup(id.clone()));
                DirectDial::Pending(id)
            }
            None => DirectDial::Absent,
        };
        Flow {
            config,
            anonymous: call.anonymous,
            state: State::Greeting { dialed },
            id_failures: 0,
            pin_failures: 0,
            actions,
        }
    }

    /// A key the caller pressed (from RFC 4733, SIP INFO or in-band detection, merged).
    pub fn handle_key(&mut self, now: Instant, key: Key) {
        match &mut self.state {
            State::Greeting { dialed } => {
                let may_type = matches!(dialed, DirectDial::Absent | DirectDial::Unknown);
                if !(may_type && is_digit(key)) {
                    return;
                }
                // Barge-in on the greeting: the entry stops it (its prompt counts as
                // playing) and the typed digit begins the conference ID.
                let mut entry = Entry::new(Sound::EnterConferenceId, MAX_CONFERENCE_ID_DIGITS);
                let step = entry.key(now, key, &self.config, &mut self.actions);
                self.set_state(State::EnteringId(entry));
                if let Some(step) = step {
                    self.id_entered(now, step);
                }
            }
            State::EnteringId(entry) => {
                if let Some(step) = entry.key(now, key, &self.config, &mut self.actions) {
                    self.id_entered(now, step);
                }
            }
            State::EnteringPin { entry, .. } => {
                if let Some(step) = entry.key(now, key, &self.config, &mut self.actions) {
                    self.pin_entered(now, step);
                }
            }
            State::Lobby { .. } if key == Key::Star => self.begin_pin_entry(),
            State::InMeeting {
                muted,
                command_until,
                ..
            } => {
                let pending = command_until.take().is_some_and(|until| now < until);
                match key {
                    Key::Star => *command_until = Some(now + self.config.command_timeout),
                    Key::D6 if pending => {
                        *muted = !*muted;
                        let muted = *muted;
                        info!(muted, "caller toggled mute (*6)");
                        self.actions.push_back(Action::SetMuted(muted));
                        self.play(if muted { Sound::Muted } else { Sound::Unmuted });
                    }
                    Key::D1 if pending => {
                        debug!("caller asked for help (*1)");
                        self.play(Sound::Help);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// A [`PlayMode::Once`] sound ended (or could not be played at all).
    pub fn handle_playback_finished(&mut self, now: Instant, sound: Sound) {
        match &mut self.state {
            State::Greeting { dialed } if sound == Sound::Greeting => {
                match std::mem::replace(dialed, DirectDial::Absent) {
                    DirectDial::Absent | DirectDial::Unknown => self.prompt_for_id(),
                    DirectDial::Pending(id) => self.set_state(State::LookingUp {
                        id,
                        source: IdSource::Dialed,
                    }),
                    DirectDial::Known(facts) => self.route(facts),
                }
            }
            State::EnteringId(entry) | State::EnteringPin { entry, .. } => {
                entry.prompt_finished(now, sound, &self.config);
            }
            State::IdUnknown if sound == Sound::ConferenceIdUnknown => self.prompt_for_id(),
            State::PinIncorrect { conference } if sound == Sound::PinIncorrect => {
                let conference = conference.clone();
                self.prompt_for_pin(conference);
            }
            State::Lobby {
                conference,
                pin_locked,
                phase: LobbyPhase::Announcing(playing),
            } if *playing == sound => {
                let (conference, pin_locked) = (conference.clone(), *pin_locked);
                self.hold(now, conference, pin_locked);
            }
            State::Leaving { playing, cause, .. } if *playing == sound => {
                if sound == Sound::Goodbye {
                    let cause = *cause;
                    self.hang_up(cause);
                } else {
                    *playing = Sound::Goodbye;
                    self.play(Sound::Goodbye);
                }
            }
            _ => {}
        }
    }

    /// The store's answer to [`Action::Lookup`]: `None` when the ID is unknown.
    pub fn handle_lookup(&mut self, now: Instant, facts: Option<ConferenceFacts>) {
        match &mut self.state {
            State::Greeting { dialed } => {
                let DirectDial::Pending(id) = dialed else {
                    return;
                };
                *dialed = match facts {
                    Some(facts) if facts.id == *id => DirectDial::Known(facts),
                    Some(facts) => {
                        warn!(expected = %id, got = %facts.id, "lookup answer for another ID; ignored");
                        return;
                    }
                    None => {
                        info!(conference = %id, "dialled conference ID unknown; prompting");
                        DirectDial::Unknown
                    }
                };
            }
            State::LookingUp { id, source } => match facts {
                Some(facts) if facts.id == *id => self.route(facts),
                Some(facts) => {
                    warn!(expected = %id, got = %facts.id, "lookup answer for another ID; ignored");
                }
                None if *source == IdSource::Dialed => {
                    info!(conference = %id, "dialled conference ID unknown; prompting");
                    self.prompt_for_id();
                }
                None => {
                    let digits = id.as_str().len();
                    info!(digits, "conference ID unknown");
                    self.id_failed(now, digits);
                }
            },
            _ => debug!("lookup answer outside a lookup; ignored"),
        }
    }

    /// The store's verdict on [`Action::VerifyPin`].
    pub fn handle_pin_result(&mut self, now: Instant, result: PinResult) {
        let State::VerifyingPin { conference } = &self.state else {
            debug!(?result, "PIN result outside verification; ignored");
            return;
        };
        let conference = conference.clone();
        let attempt = self.pin_failures + 1;
        match result {
            PinResult::Verified => {
                info!(%conference, attempt, "organizer PIN verified; starting the meeting");
                self.actions
                    .push_back(Action::StartMeeting(conference.clone()));
                self.set_state(State::Joining {
                    conference,
                    how: JoinHow::Start,
                    pin_locked: false,
                });
            }
            PinResult::Wrong => {
                info!(%conference, attempt, "organizer PIN wrong");
                self.pin_wrong(now, conference);
            }
            PinResult::LockedOut => {
                info!(%conference, attempt, "organizer PIN entry locked out; back to the lobby");
                self.announce_in_lobby(conference, true, Sound::PinUnavailable);
            }
            PinResult::SourceBlocked => self.handle_source_blocked(now),
        }
    }

    /// The caller's source is blocked (too many failed conference IDs or PINs from it across
    /// calls): the prompt that fits what the caller was doing, Goodbye, hang up. Ignored
    /// once the call is leaving, and in the meeting (a caller who got in stays in).
    pub fn handle_source_blocked(&mut self, now: Instant) {
        let first = match self.state {
            State::Leaving { .. } | State::Ended(_) | State::InMeeting { .. } => return,
            State::EnteringPin { .. } | State::PinIncorrect { .. } | State::VerifyingPin { .. } => {
                Sound::PinUnavailable
            }
            State::Greeting { .. } | State::LookingUp { .. } | State::EnteringId(_) => {
                Sound::ConferenceIdUnknown
            }
            // "Not recognised" is already playing: not again from its start.
            State::IdUnknown | State::Joining { .. } | State::Lobby { .. } => Sound::Goodbye,
        };
        info!("caller's source is blocked for too many failures; disconnecting");
        self.leave(now, EndCause::SourceBlocked, first);
    }

    /// The bridge placed the caller in the lobby in answer to [`Action::Admit`] (or to a
    /// [`Action::Join`] that found the meeting no longer running).
    pub fn handle_lobby(&mut self, now: Instant) {
        let _ = now;
        let State::Joining {
            conference,
            pin_locked,
            ..
        } = &self.state
        else {
            debug!("lobby placement outside joining; ignored");
            return;
        };
        let (conference, pin_locked) = (conference.clone(), *pin_locked);
        info!(%conference, "waiting in the lobby");
        self.announce_in_lobby(conference, pin_locked, Sound::OrganizerOrWait);
    }

    /// The bridge put the caller in the started meeting: after Join, Admit or StartMeeting,
    /// or because the meeting started while the caller waited in the lobby (entering or
    /// verifying a PIN included — that entry is abandoned). Lobby timers stop.
    pub fn handle_meeting_started(&mut self, now: Instant) {
        let _ = now;
        let (conference, prompt) = match &self.state {
            State::Joining {
                conference, how, ..
            } => {
                let prompt = match how {
                    JoinHow::Join => Sound::JoinedMeeting,
                    JoinHow::Admit | JoinHow::Start => Sound::MeetingStarting,
                };
                (conference.clone(), prompt)
            }
            State::Lobby { conference, .. }
            | State::EnteringPin { conference, .. }
            | State::PinIncorrect { conference }
            | State::VerifyingPin { conference } => (conference.clone(), Sound::MeetingStarting),
            _ => {
                debug!(
                    state = self.state.name(),
                    "meeting start outside a conference; ignored"
                );
                return;
            }
        };
        info!(%conference, "in the meeting");
        self.play(prompt);
        self.set_state(State::InMeeting {
            conference,
            muted: false,
            command_until: None,
        });
    }

    /// The bridge refused the caller because the meeting is full: MeetingFull, Goodbye,
    /// hang up.
    pub fn handle_meeting_full(&mut self, now: Instant) {
        if self.is_leaving() {
            return;
        }
        info!("meeting full");
        self.leave(now, EndCause::MeetingFull, Sound::MeetingFull);
    }

    /// The bridge ended the meeting: Goodbye, hang up.
    pub fn handle_meeting_ended(&mut self, now: Instant) {
        if self.is_leaving() {
            return;
        }
        info!("meeting ended");
        self.leave(now, EndCause::MeetingEnded, Sound::Goodbye);
    }

    /// Time passed; call at (or after) [`Flow::poll_timeout`]. Early calls do nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        match &mut self.state {
            State::EnteringId(entry) => {
                if let Some(step) = entry.timeout(now, &self.config, &mut self.actions) {
                    self.id_entered(now, step);
                }
            }
            State::EnteringPin { entry, .. } => {
                if let Some(step) = entry.timeout(now, &self.config, &mut self.actions) {
                    self.pin_entered(now, step);
                }
            }
            State::Lobby {
                phase: LobbyPhase::Holding { next_reminder },
                ..
            } if *next_reminder <= now => {
                debug!("lobby reminder");
                self.play(Sound::WaitingForOrganizer);
                if let State::Lobby { phase, .. } = &mut self.state {
                    *phase = LobbyPhase::Announcing(Sound::WaitingForOrganizer);
                }
            }
            State::InMeeting { command_until, .. } if command_until.is_some_and(|t| t <= now) => {
                debug!("in-meeting * without a command key; dropped");
                *command_until = None;
            }
            State::Leaving { guard, cause, .. } if *guard <= now => {
                let cause = *cause;
                warn!(?cause, "leaving prompts never finished; hanging up anyway");
                self.hang_up(cause);
            }
            _ => {}
        }
    }

    /// The next action to perform, in order; `None` when there is nothing more for now.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When to call [`Flow::handle_timeout`] next; `None` while waiting only on events.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::EnteringId(entry) | State::EnteringPin { entry, .. } => entry.deadline,
            State::Lobby {
                phase: LobbyPhase::Holding { next_reminder },
                ..
            } => Some(*next_reminder),
            State::InMeeting { command_until, .. } => *command_until,
            State::Leaving { guard, .. } => Some(*guard),
            _ => None,
        }
    }

    /// The state's name, for logs and metrics (`"lobby"`, `"in_meeting"`, …).
    pub fn state_name(&self) -> &'static str {
        self.state.name()
    }

    /// Whether a key pressed now would be part of a PIN (or its `#`): then nothing may log
    /// it. Keys in every other state (conference IDs, `*` in the lobby, in-meeting commands)
    /// are not secret.
    pub fn keys_are_secret(&self) -> bool {
        matches!(
            self.state,
            State::EnteringPin { .. } | State::PinIncorrect { .. } | State::VerifyingPin { .. }
        )
    }

    /// The conference the caller is headed for, once known.
    pub fn conference(&self) -> Option<&ConferenceId> {
        match &self.state {
            State::Joining { conference, .. }
            | State::Lobby { conference, .. }
            | State::EnteringPin { conference, .. }
            | State::PinIncorrect { conference }
            | State::VerifyingPin { conference }
            | State::InMeeting { conference, .. } => Some(conference),
            _ => None,
        }
    }

    /// Whether the caller is muted in the meeting.
    pub fn is_muted(&self) -> bool {
        matches!(self.state, State::InMeeting { muted: true, .. })
    }

    /// The cause, once [`Action::Hangup`] has been emitted.
    pub fn ended(&self) -> Option<EndCause> {
        match self.state {
            State::Ended(cause) => Some(cause),
            _ => None,
        }
    }

    fn play(&mut self, sound: Sound) {
        self.actions
            .push_back(Action::Play(sound, sound.play_mode()));
    }

    fn set_state(&mut self, state: State) {
        debug!(from = self.state.name(), to = state.name(), "IVR state");
        self.state = state;
    }

    fn is_leaving(&self) -> bool {
        matches!(self.state, State::Leaving { .. } | State::Ended(_))
    }

    fn prompt_for_id(&mut self) {
        self.play(Sound::EnterConferenceId);
        self.set_state(State::EnteringId(Entry::new(
            Sound::EnterConferenceId,
            MAX_CONFERENCE_ID_DIGITS,
        )));
    }

    fn id_entered(&mut self, now: Instant, step: Step) {
        match step {
            Step::Digits(digits) => match ConferenceId::parse(&digits) {
                Some(id) => {
                    info!(digits = id.as_str().len(), "conference ID entered");
                    self.actions.push_back(Action::Lookup(id.clone()));
                    self.set_state(State::LookingUp {
                        id,
                        source: IdSource::Keyed,
                    });
                }
                None => {
                    info!(digits = digits.len(), "conference ID entry invalid");
                    self.id_failed(now, digits.len());
                }
            },
            Step::TooLong => {
                info!("conference ID entry too long");
                self.id_failed(now, MAX_CONFERENCE_ID_DIGITS + 1);
            }
            Step::NoInput => {
                info!("no conference ID entered");
                self.leave(now, EndCause::NoInput, Sound::Goodbye);
            }
        }
    }

    /// An unknown or invalid conference ID (`digits` long): reported for the source's count,
    /// then "not recognised" and the prompt again or, after the last try, Goodbye.
    fn id_failed(&mut self, now: Instant, digits: usize) {
        self.actions
            .push_back(Action::ConferenceIdFailed { digits });
        self.id_failures += 1;
        if self.id_failures >= self.config.conference_id_tries {
            info!(tries = self.id_failures, "too many unknown conference IDs");
            self.leave(now, EndCause::UnknownConference, Sound::ConferenceIdUnknown);
            return;
        }
        self.play(Sound::ConferenceIdUnknown);
        self.set_state(State::IdUnknown);
    }

    /// Acts on a known conference: join it, let the bridge admit the caller, or wait in the
    /// lobby for the organizer.
    fn route(&mut self, facts: ConferenceFacts) {
        info!(
            conference = %facts.id,
            requires_pin = facts.requires_pin,
            started = facts.started,
            pin_locked = facts.pin_locked,
            "conference found"
        );
        let ConferenceFacts {
            id: conference,
            pin_locked,
            ..
        } = facts;
        if facts.started {
            self.actions.push_back(Action::Join(conference.clone()));
            self.set_state(State::Joining {
                conference,
                how: JoinHow::Join,
                pin_locked,
            });
        } else if !facts.requires_pin {
            self.actions.push_back(Action::Admit {
                conference: conference.clone(),
                anonymous: self.anonymous,
            });
            self.set_state(State::Joining {
                conference,
                how: JoinHow::Admit,
                pin_locked,
            });
        } else {
            info!(%conference, "waiting in the lobby");
            self.actions
                .push_back(Action::EnterLobby(conference.clone()));
            self.announce_in_lobby(conference, pin_locked, Sound::OrganizerOrWait);
        }
    }

    /// Plays a once-only lobby prompt; hold music follows when it ends.
    fn announce_in_lobby(&mut self, conference: ConferenceId, pin_locked: bool, sound: Sound) {
        self.play(sound);
        self.set_state(State::Lobby {
            conference,
            pin_locked,
            phase: LobbyPhase::Announcing(sound),
        });
    }

    /// (Re)starts hold music in the lobby and the reminder interval with it.
    fn hold(&mut self, now: Instant, conference: ConferenceId, pin_locked: bool) {
        self.play(Sound::HoldMusic);
        self.set_state(State::Lobby {
            conference,
            pin_locked,
            phase: LobbyPhase::Holding {
                next_reminder: now + self.config.reminder_interval,
            },
        });
    }

    /// `*` in the lobby.
    fn begin_pin_entry(&mut self) {
        let State::Lobby {
            conference,
            pin_locked,
            ..
        } = &self.state
        else {
            return;
        };
        let conference = conference.clone();
        if *pin_locked {
            info!(%conference, "organizer PIN entry requested while locked out");
            self.announce_in_lobby(conference, true, Sound::PinUnavailable);
            return;
        }
        info!(%conference, "organizer PIN entry");
        self.prompt_for_pin(conference);
    }

    fn prompt_for_pin(&mut self, conference: ConferenceId) {
        self.play(Sound::EnterPin);
        self.set_state(State::EnteringPin {
            conference,
            entry: Entry::new(Sound::EnterPin, self.config.max_pin_digits),
        });
    }

    fn pin_entered(&mut self, now: Instant, step: Step) {
        let State::EnteringPin { conference, .. } = &self.state else {
            return;
        };
        let conference = conference.clone();
        let attempt = self.pin_failures + 1;
        match step {
            Step::Digits(digits) if digits.len() >= self.config.min_pin_digits => {
                info!(%conference, pin_len = digits.len(), attempt, "verifying organizer PIN");
                self.actions.push_back(Action::VerifyPin {
                    conference: conference.clone(),
                    pin: Pin::new(digits),
                });
                self.set_state(State::VerifyingPin { conference });
            }
            Step::Digits(digits) => {
                info!(%conference, pin_len = digits.len(), attempt, "PIN entry too short");
                self.pin_wrong(now, conference);
            }
            Step::TooLong => {
                info!(%conference, attempt, "PIN entry too long");
                self.pin_wrong(now, conference);
            }
            Step::NoInput => {
                info!(%conference, "PIN entry abandoned; back to the lobby");
                self.hold(now, conference, false);
            }
        }
    }

    /// A wrong PIN: "not correct", then the prompt again or, after the last try, Goodbye.
    fn pin_wrong(&mut self, now: Instant, conference: ConferenceId) {
        self.pin_failures += 1;
        if self.pin_failures >= self.config.pin_tries {
            info!(%conference, attempts = self.pin_failures, "too many wrong PINs");
            self.leave(now, EndCause::PinFailures, Sound::PinIncorrect);
            return;
        }
        self.play(Sound::PinIncorrect);
        self.set_state(State::PinIncorrect { conference });
    }

    /// Plays `first` (then Goodbye, unless `first` is Goodbye) and hangs up after.
    fn leave(&mut self, now: Instant, cause: EndCause, first: Sound) {
        info!(?cause, "leaving");
        self.play(first);
        self.set_state(State::Leaving {
            cause,
            playing: first,
            guard: now + self.config.goodbye_guard,
        });
    }

    fn hang_up(&mut self, cause: EndCause) {
        info!(?cause, "hanging up");
        self.actions.push_back(Action::Hangup(cause));
        self.set_state(State::Ended(cause));
    }
}

/// Where the caller is. Exactly one at a time (STYLE §6).
#[derive(Debug)]
enum State {
    /// The greeting plays; a dialled conference ID may be looked up meanwhile.
    Greeting { dialed: DirectDial },
    /// Waiting for the store's answer to a lookup (silence).
    LookingUp { id: ConferenceId, source: IdSource },
    /// Collecting a conference ID.
    EnteringId(Entry),
    /// "Not recognised" plays; the ID prompt follows.
    IdUnknown,
    /// Waiting for the bridge's answer to Join, Admit or StartMeeting.
    Joining {
        conference: ConferenceId,
        how: JoinHow,
        pin_locked: bool,
    },
    /// In the conference's lobby, waiting for the meeting to start.
    Lobby {
        conference: ConferenceId,
        pin_locked: bool,
        phase: LobbyPhase,
    },
    /// Collecting the organizer PIN (still a lobby member for the bridge).
    EnteringPin {
        conference: ConferenceId,
        entry: Entry,
    },
    /// "PIN not correct" plays; the PIN prompt follows.
    PinIncorrect { conference: ConferenceId },
    /// Waiting for the store's verdict on the PIN; keys are ignored.
    VerifyingPin { conference: ConferenceId },
    /// In the started meeting.
    InMeeting {
        conference: ConferenceId,
        muted: bool,
        /// A `*` is waiting for its command key until this instant.
        command_until: Option<Instant>,
    },
    /// Playing the last prompts (`playing`, then Goodbye) before hanging up.
    Leaving {
        cause: EndCause,
        playing: Sound,
        /// Hang up at this instant even if the prompts never report their end.
        guard: Instant,
    },
    /// Hung up; inert.
    Ended(EndCause),
}

/// The lookup of a dialled conference ID, while the greeting plays.
#[derive(Debug)]
enum DirectDial {
    Absent,
    Pending(ConferenceId),
    Known(ConferenceFacts),
    Unknown,
}

/// Where a looked-up ID came from: an unknown dialled ID is not a failed try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdSource {
    Dialed,
    Keyed,
}

/// Which request the bridge is answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JoinHow {
    Join,
    Admit,
    Start,
}

#[derive(Debug)]
enum LobbyPhase {
    /// A once-only lobby prompt plays (OrganizerOrWait, WaitingForOrganizer, PinUnavailable);
    /// hold music follows.
    Announcing(Sound),
    /// Hold music plays; the reminder is due at `next_reminder`.
    Holding { next_reminder: Instant },
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Greeting { .. } => "greeting",
            State::LookingUp { .. } => "looking_up",
            State::EnteringId(_) => "entering_id",
            State::IdUnknown => "id_unknown",
            State::Joining { .. } => "joining",
            State::Lobby { .. } => "lobby",
            State::EnteringPin { .. } => "entering_pin",
            State::PinIncorrect { .. } => "pin_incorrect",
            State::VerifyingPin { .. } => "verifying_pin",
            State::InMeeting { .. } => "in_meeting",
            State::Leaving { .. } => "leaving",
            State::Ended(_) => "ended",
        }
    }
}

/// Digits being keyed in after a prompt, `#`-terminated, with the digit timers.
struct Entry {
    prompt: Sound,
    max_digits: usize,
    /// May be a PIN: never printed (see the `Debug` impl).
    digits: String,
    /// `None` while the prompt plays with nothing typed (the first-digit timer starts when it
    /// finishes); otherwise when the current digit timer runs out.
    deadline: Option<Instant>,
    /// Timeouts with nothing typed since the last key press.
    silent_repeats: u32,
}

/// How an [`Entry`] ended.
enum Step {
    /// `#`, or the inter-digit timer with digits typed.
    Digits(String),
    /// One digit more than allowed.
    TooLong,
    /// Nothing typed through every replay of the prompt.
    NoInput,
}

impl Entry {
    /// An entry whose prompt has just been asked to play.
    fn new(prompt: Sound, max_digits: usize) -> Entry {
        Entry {
            prompt,
            max_digits,
            digits: String::new(),
            deadline: None,
            silent_repeats: 0,
        }
    }

    fn key(
        &mut self,
        now: Instant,
        key: Key,
        config: &IvrConfig,
        actions: &mut VecDeque<Action>,
    ) -> Option<Step> {
        match key {
            Key::Pound if self.digits.is_empty() => self.nothing_typed(actions, config),
            Key::Pound => {
                self.deadline = None;
                Some(Step::Digits(std::mem::take(&mut self.digits)))
            }
            Key::Star => {
                self.digits.clear();
                self.silent_repeats = 0;
                self.replay(actions);
                None
            }
            key if is_digit(key) => {
                if self.deadline.is_none() {
                    actions.push_back(Action::StopPlayback);
                }
                self.silent_repeats = 0;
                self.digits.push(key.as_char());
                if self.digits.len() > self.max_digits {
                    self.digits.clear();
                    self.deadline = None;
                    return Some(Step::TooLong);
                }
                self.deadline = Some(now + config.inter_digit_timeout);
                None
            }
            _ => None,
        }
    }

    fn timeout(
        &mut self,
        now: Instant,
        config: &IvrConfig,
        actions: &mut VecDeque<Action>,
    ) -> Option<Step> {
        if self.deadline.is_none_or(|d| d > now) {
            return None;
        }
        if self.digits.is_empty() {
            return self.nothing_typed(actions, config);
        }
        // An implied `#`: the caller stopped typing.
        self.deadline = None;
        Some(Step::Digits(std::mem::take(&mut self.digits)))
    }

    fn prompt_finished(&mut self, now: Instant, sound: Sound, config: &IvrConfig) {
        if sound == self.prompt && self.deadline.is_none() {
            self.deadline = Some(now + config.first_digit_timeout);
        }
    }

    /// A timeout (or a lone `#`) with nothing typed: replay the prompt, or give up.
    fn nothing_typed(
        &mut self,
        actions: &mut VecDeque<Action>,
        config: &IvrConfig,
    ) -> Option<Step> {
        self.silent_repeats += 1;
        if self.silent_repeats > config.max_prompt_repeats {
            self.deadline = None;
            return Some(Step::NoInput);
        }
        debug!(prompt = %self.prompt, repeat = self.silent_repeats, "nothing entered; replaying the prompt");
        self.replay(actions);
        None
    }

    fn replay(&mut self, actions: &mut VecDeque<Action>) {
        actions.push_back(Action::Play(self.prompt, self.prompt.play_mode()));
        self.deadline = None;
    }
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("prompt", &self.prompt)
            .field("typed", &self.digits.len())
            .field("deadline", &self.deadline)
            .field("silent_repeats", &self.silent_repeats)
            .finish()
    }
}

fn is_digit(key: Key) -> bool {
    key.event_code() <= Key::D9.event_code()
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;

    const ID: &str = "4455667788";
    const PIN: &str = "73914";

    fn id() -> ConferenceId {
        ConferenceId::parse(ID).unwrap()
    }

    fn play(sound: Sound) -> Action {
        Action::Play(sound, sound.play_mode())
    }

    fn facts(requires_pin: bool, started: bool, pin_locked: bool) -> ConferenceFacts {
        ConferenceFacts {
            id: id(),
            requires_pin,
            started,
            pin_locked,
        }
    }

    fn dialed() -> CallFacts {
        CallFacts {
            dialed: Some(id()),
            anonymous: false,
        }
    }

    fn not_dialed() -> CallFacts {
        CallFacts {
            dialed: None,
            anonymous: false,
        }
    }

    /// One call's IVR on a virtual clock, with a pretend media engine that remembers which
    /// once-only sound is playing so a test can say "it finished now" (STYLE §10).
    struct Harness {
        flow: Flow,
        start: Instant,
        now: Instant,
        playing: Option<Sound>,
        out: Vec<Action>,
    }

    impl Harness {
        fn new(call: CallFacts) -> Harness {
            Harness::with_config(IvrConfig::default(), call)
        }

        fn with_config(config: IvrConfig, call: CallFacts) -> Harness {
            config.validate().unwrap();
            let start = Instant::now();
            let mut h = Harness {
                flow: Flow::new(start, config, call),
                start,
                now: start,
                playing: None,
                out: Vec::new(),
            };
            h.pump();
            h
        }

        fn pump(&mut self) {
            while let Some(action) = self.flow.poll_action() {
                match &action {
                    Action::Play(sound, PlayMode::Once) => self.playing = Some(*sound),
                    Action::Play(_, PlayMode::Loop) | Action::StopPlayback => self.playing = None,
                    _ => {}
                }
                self.out.push(action);
            }
        }

        /// Everything the flow asked for since the last call.
        fn take(&mut self) -> Vec<Action> {
            std::mem::take(&mut self.out)
        }

        fn elapsed(&self) -> Duration {
            self.now - self.start
        }

        fn keys(&mut self, keys: &str) {
            for c in keys.chars() {
                self.flow.handle_key(self.now, Key::from_char(c).unwrap());
                self.pump();
            }
        }

        /// The playing once-only sound ends now; returns which it was.
        fn finish(&mut self) -> Sound {
            let sound = self.playing.take().expect("a once-only sound is playing");
            self.flow.handle_playback_finished(self.now, sound);
            self.pump();
            sound
        }

        /// Jumps the clock to the next deadline and fires it; returns the time since start.
        fn fire(&mut self) -> Duration {
            let at = self.flow.poll_timeout().expect("a timer is armed");
            assert!(at >= self.now, "timer in the past");
            self.now = at;
            self.flow.handle_timeout(self.now);
            self.pump();
            self.elapsed()
        }

        /// Moves the clock forward by `d`, firing every timer due on the way.
        fn advance(&mut self, d: Duration) {
            let until = self.now + d;
            while let Some(at) = self.flow.poll_timeout().filter(|at| *at <= until) {
                self.now = at;
                self.flow.handle_timeout(at);
                self.pump();
            }
            self.now = until;
        }

        fn lookup(&mut self, facts: Option<ConferenceFacts>) {
            self.flow.handle_lookup(self.now, facts);
            self.pump();
        }

        fn pin_result(&mut self, result: PinResult) {
            self.flow.handle_pin_result(self.now, result);
            self.pump();
        }

        fn meeting_started(&mut self) {
            self.flow.handle_meeting_started(self.now);
            self.pump();
        }

        fn state(&self) -> &'static str {
            self.flow.state_name()
        }

        /// Not dialled: greeting done, the conference ID prompt is playing.
        fn at_id_prompt() -> Harness {
            let mut h = Harness::new(not_dialed());
            assert_eq!(h.take(), [play(Sound::Greeting)]);
            h.finish();
            assert_eq!(h.take(), [play(Sound::EnterConferenceId)]);
            h
        }

        /// Dialled to a PIN conference that has not started: hold music is playing.
        fn in_lobby(pin_locked: bool) -> Harness {
            let mut h = Harness::new(dialed());
            h.lookup(Some(facts(true, false, pin_locked)));
            h.finish();
            assert_eq!(
                h.take(),
                [
                    play(Sound::Greeting),
                    Action::Lookup(id()),
                    Action::EnterLobby(id()),
                    play(Sound::OrganizerOrWait),
                ]
            );
            h.finish();
            assert_eq!(h.take(), [play(Sound::HoldMusic)]);
            assert_eq!(h.state(), "lobby");
            h
        }

        /// In the lobby, `*` pressed and the PIN prompt finished: ready for digits.
        fn at_pin_prompt() -> Harness {
            let mut h = Harness::in_lobby(false);
            h.keys("*");
            assert_eq!(h.take(), [play(Sound::EnterPin)]);
            h.finish();
            h
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// After the ID prompt finished, keys `digits` and has the store say the ID is unknown.
    fn enter_unknown_id(h: &mut Harness, digits: &str) {
        h.keys(digits);
        let id = ConferenceId::parse(digits.trim_end_matches('#')).unwrap();
        assert_eq!(h.take(), [Action::Lookup(id)]);
        h.lookup(None);
    }

    // ---- Conference ID ----

    #[test]
    fn dialled_known_id_skips_the_prompt() {
        let mut h = Harness::new(dialed());
        assert_eq!(h.take(), [play(Sound::Greeting), Action::Lookup(id())]);
        h.lookup(Some(facts(true, true, false)));
        assert_eq!(h.take(), [], "the greeting plays to its end first");
        assert_eq!(h.finish(), Sound::Greeting);
        assert_eq!(h.take(), [Action::Join(id())]);
        assert_eq!(h.flow.conference(), Some(&id()));
        h.meeting_started();
        assert_eq!(h.take(), [play(Sound::JoinedMeeting)]);
        assert_eq!(h.state(), "in_meeting");
    }

    #[test]
    fn dialled_lookup_answered_after_the_greeting() {
        let mut h = Harness::new(dialed());
        h.take();
        h.finish();
        assert_eq!(h.take(), [], "silence while the store answers");
        assert_eq!(h.state(), "looking_up");
        h.lookup(Some(facts(true, true, false)));
        assert_eq!(h.take(), [Action::Join(id())]);
    }

    #[test]
    fn dialled_unknown_id_prompts_without_counting_a_try() {
        let mut h = Harness::new(dialed());
        h.take();
        h.lookup(None);
        h.finish();
        assert_eq!(h.take(), [play(Sound::EnterConferenceId)]);
        // The same after the greeting: the answer comes late.
        let mut late = Harness::new(dialed());
        late.take();
        late.finish();
        late.lookup(None);
        assert_eq!(late.take(), [play(Sound::EnterConferenceId)]);

        // Two keyed unknown IDs still leave a third try.
        for _ in 0..2 {
            h.finish();
            enter_unknown_id(&mut h, "1111#");
            assert_eq!(h.take(), [failed(4), play(Sound::ConferenceIdUnknown)]);
            h.finish();
            assert_eq!(h.take(), [play(Sound::EnterConferenceId)]);
        }
        h.finish();
        h.keys("2222#");
        h.take();
        h.lookup(Some(ConferenceFacts {
            id: ConferenceId::parse("2222").unwrap(),
            ..facts(false, true, false)
        }));
        assert_eq!(
            h.take(),
            [Action::Join(ConferenceId::parse("2222").unwrap())]
        );
    }

    fn failed(digits: usize) -> Action {
        Action::ConferenceIdFailed { digits }
    }

    #[test]
    fn a_blocked_source_hears_why_then_goodbye_and_is_hung_up() {
        // While a keyed conference ID is being looked up.
        let mut h = Harness::at_id_prompt();
        h.finish();
        h.keys("1234#");
        h.take();
        h.flow.handle_source_blocked(h.now);
        h.pump();
        assert_eq!(h.take(), [play(Sound::ConferenceIdUnknown)]);
        h.finish();
        assert_eq!(h.take(), [play(Sound::Goodbye)]);
        h.finish();
        assert_eq!(h.take(), [Action::Hangup(EndCause::SourceBlocked)]);
        // Once leaving, a second report changes nothing.
        h.flow.handle_source_blocked(h.now);
        h.pump();
        assert_eq!(h.take(), []);

        // After an unknown ID, while "not recognised" plays (the failure that blocked the
        // source): straight to Goodbye, the prompt is not started again.
        let mut h = Harness::at_id_prompt();
        h.finish();
        h.keys("1234#");
        h.take();
        h.lookup(None);
        assert_eq!(h.take(), [failed(4), play(Sound::ConferenceIdUnknown)]);
        h.flow.handle_source_blocked(h.now);
        h.pump();
        assert_eq!(h.take(), [play(Sound::Goodbye)]);
        h.finish();
        assert_eq!(h.take(), [Action::Hangup(EndCause::SourceBlocked)]);

        // While a PIN is being verified: the store refused it unchecked.
        let mut h = Harness::at_pin_prompt();
        h.keys("12345#");
        assert!(matches!(
            h.take().as_slice(),
            [.., Action::VerifyPin { .. }]
        ));
        h.pin_result(PinResult::SourceBlocked);
        assert_eq!(h.take(), [play(Sound::PinUnavailable)]);
        h.finish();
        assert_eq!(h.take(), [play(Sound::Goodbye)]);
        h.finish();
        assert_eq!(h.take(), [Action::Hangup(EndCause::SourceBlocked)]);
    }

    #[test]
    fn unknown_id_three_times_says_goodbye_and_hangs_up() {
        let mut h = Harness::at_id_prompt();
        for _ in 0..2 {
            h.finish();
            enter_unknown_id(&mut h, "1234#");
            assert_eq!(h.take(), [failed(4), play(Sound::ConferenceIdUnknown)]);
            h.keys("5678#"); // ignored while "not recognised" plays
            assert_eq!(h.take(), []);
            h.finish();
            assert_eq!(h.take(), [play(Sound::EnterConferenceId)]);
        }
        h.finish();
        enter_unknown_id(&mut h, "1234#");
        assert_eq!(h.take(), [failed(4), play(Sound::ConferenceIdUnknown)]);
        assert_eq!(h.state(), "leaving");
        h.finish();
        assert_eq!(h.take(), [play(Sound::Goodbye)]);
        h.finish();
        assert_eq!(h.take(), [Action::Hangup(EndCause::UnknownConference)]);
        assert_eq!(h.flow.ended(), Some(EndCause::UnknownConference));
        assert_eq!(h.flow.poll_timeout(), None);
    }

    #[test]
    fn pound_terminates_the_entry() {
        let mut h = Harness::at_id_prompt();
        h.finish();
        h.keys("4455667788");
        assert_eq!(h.take(), []);
        h.keys("#");
        assert_eq!(h.take(), [Action::Lookup(id())]);
        assert_eq!(
            h.flow.poll_timeout(),
            None,
            "no digit timer while looking up"
        );
        h.keys("9#");
        assert_eq!(h.take(), [], "keys are ignored during the lookup");
    }

    #[test]
    fn star_clears_the_entry_and_replays_the_prompt() {
        let mut h = Harness::at_id_prompt();
        h.finish();
        h.keys("999");
        h.keys("*");
        assert_eq!(h.take(), [play(Sound::EnterConferenceId)]);
        assert_eq!(h.flow.poll_timeout(), None, "waits for the replayed prompt");
        h.finish();
        assert_eq!(h.flow.poll_timeout(), Some(h.now + secs(10)));
        h.keys("4455667788#");
        assert_eq!(h.take(), [Action::Lookup(id())]);
    }

    #[test]
    fn first_digit_timer_starts_when_the_prompt_ends_and_repeats_three_times() {
        let mut h = Harness::at_id_prompt();
        assert_eq!(
            h.flow.poll_timeout(),
            None,
            "no timer while the prompt plays"
        );
        // Each prompt takes 4 s to play; the caller never types.
        let mut replays = Vec::new();
        for _ in 0..3 {
            h.advance(secs(4));
            h.finish();
            assert_eq!(h.fire(), h.elapsed());
            replays.push(h.elapsed());
            assert_eq!(h.take(), [play(Sound::EnterConferenceId)]);
        }
        assert_eq!(replays, [secs(14), secs(28), secs(42)]);
        h.advance(secs(4));
        h.finish();
        assert_eq!(h.fire(), secs(56));
        assert_eq!(h.take(), [play(Sound::Goodbye)]);
        h.finish();
        assert_eq!(h.take(), [Action::Hangup(EndCause::NoInput)]);
    }

    #[test]
    fn a_key_press_ends_a_row_of_repeats() {
        let mut h = Harness::at_id_prompt();
        for _ in 0..3 {
            h.finish();
            h.fire();
            assert_eq!(h.take(), [play(Sound::EnterConferenceId)]);
        }
        h.keys("*"); // clears and replays; the row starts over
        assert_eq!(h.take(), [play(Sound::EnterConferenceId)]);
        for _ in 0..3 {
            h.finish();
            h.fire();
            assert_eq!(h.take(), [play(Sound::EnterConferenceId)]);
        }
        h.finish();
        h.fire();
        assert_eq!(h.take(), [play(Sound::Goodbye)]);
    }

    #[test]
    fn a_lone_pound_counts_as_nothing_typed() {
        let mut h = Harness::at_id_prompt();
        h.finish();
        h.keys("#");
        assert_eq!(h.take(), [play(Sound::EnterConferenceId)]);
        for _ in 0..2 {
            h.finish();
            h.fire();
            assert_eq!(h.take(), [play(Sound::EnterConferenceId)]);
        }
        h.finish();
        h.keys("#");
        assert_eq!(h.take(), [play(Sound::Goodbye)]);
    }

    #[test]
    fn inter_digit_timeout_takes_what_was_typed() {
        let mut h = Harness::at_id_prompt();
        h.finish();
        h.advance(secs(9));
        h.keys("4455");
        assert_eq!(h.flow.poll_timeout(), Some(h.now + secs(5)));
        h.advance(secs(4));
        h.keys("6677");
        h.advance(secs(4));
        h.keys("88");
        assert_eq!(h.take(), []);
        assert_eq!(h.fire(), secs(9 + 4 + 4 + 5));
        assert_eq!(h.take(), [Action::Lookup(id())], "an implied #");
    }

    #[test]
    fn typing_barges_in_on_the_prompt() {
        let mut h = Harness::at_id_prompt();
        h.keys("4");
        assert_eq!(h.take(), [Action::StopPlayback]);
        h.keys("4");
        assert_eq!(h.take(), [], "only the first digit stops the prompt");
        // A finish racing the stop changes nothing: the inter-digit timer stays.
        let deadline = h.flow.poll_timeout();
        h.flow
            .handle_playback_finished(h.now, Sound::EnterConferenceId);
        assert_eq!(h.flow.poll_timeout(), deadline);
        h.keys("55667788#");
        assert_eq!(h.take(), [Action::Lookup(id())]);
    }

    #[test]
    fn typing_barges_in_on_the_greeting() {
        let mut h = Harness::new(not_dialed());
        h.take();
        h.keys("#*"); // not digits: ignored during the greeting
        assert_eq!(h.take(), []);
        h.keys("4455667788#");
        assert_eq!(h.take(), [Action::StopPlayback, Action::Lookup(id())]);

        // A direct dial being looked up ignores keys during the greeting.
        let mut h = Harness::new(dialed());
        h.take();
        h.keys("12");
        assert_eq!(h.take(), []);
    }

    #[test]
    fn more_than_fifteen_digits_is_an_invalid_entry() {
        let mut h = Harness::at_id_prompt();
        h.finish();
        h.keys("123456789012345");
        assert_eq!(h.take(), []);
        h.keys("6");
        assert_eq!(
            h.take(),
            [failed(16), play(Sound::ConferenceIdUnknown)],
            "no lookup"
        );
        // Too short for a conference ID is invalid too, and both count as tries.
        h.finish();
        h.finish();
        h.take();
        h.keys("123#");
        assert_eq!(h.take(), [failed(3), play(Sound::ConferenceIdUnknown)]);
        h.finish();
        h.finish();
        h.take();
        enter_unknown_id(&mut h, "1234#");
        assert_eq!(h.take(), [failed(4), play(Sound::ConferenceIdUnknown)]);
        assert_eq!(h.state(), "leaving");
    }

    #[test]
    fn a_lookup_answer_for_another_id_is_ignored() {
        let mut h = Harness::new(dialed());
        h.take();
        h.finish();
        h.lookup(Some(ConferenceFacts {
            id: ConferenceId::parse("9999").unwrap(),
            ..facts(false, true, false)
        }));
        assert_eq!(h.take(), []);
        assert_eq!(h.state(), "looking_up");
    }

    // ---- Routing ----

    #[test]
    fn a_started_meeting_is_joined() {
        let mut h = Harness::at_id_prompt();
        h.keys("4455667788#");
        h.take();
        h.lookup(Some(facts(true, true, true)));
        assert_eq!(h.take(), [Action::Join(id())]);
        h.keys("*6");
        assert_eq!(h.take(), [], "keys are ignored while the bridge answers");
        h.meeting_started();
        assert_eq!(h.take(), [play(Sound::JoinedMeeting)]);
    }

    #[test]
    fn no_pin_required_asks_the_bridge_to_admit() {
        let mut h = Harness::new(CallFacts {
            dialed: Some(id()),
            anonymous: true,
        });
        h.take();
        h.lookup(Some(facts(false, false, false)));
        h.finish();
        assert_eq!(
            h.take(),
            [Action::Admit {
                conference: id(),
                anonymous: true
            }]
        );
        // Anonymous: the bridge puts the caller in the lobby.
        h.flow.handle_lobby(h.now);
        h.pump();
        assert_eq!(h.take(), [play(Sound::OrganizerOrWait)]);
        h.finish();
        assert_eq!(h.take(), [play(Sound::HoldMusic)]);
        h.meeting_started();
        assert_eq!(h.take(), [play(Sound::MeetingStarting)]);

        // Not anonymous: the bridge starts the meeting with this caller.
        let mut h = Harness::new(dialed());
        h.take();
        h.lookup(Some(facts(false, false, false)));
        h.finish();
        assert_eq!(
            h.take(),
            [Action::Admit {
                conference: id(),
                anonymous: false
            }]
        );
        h.meeting_started();
        assert_eq!(h.take(), [play(Sound::MeetingStarting)]);
        assert_eq!(h.state(), "in_meeting");
    }

    // ---- Lobby and PIN ----

    #[test]
    fn lobby_star_pin_verified_starts_the_meeting() {
        let mut h = Harness::at_pin_prompt();
        assert_eq!(h.flow.poll_timeout(), Some(h.now + secs(10)));
        h.keys(PIN);
        h.keys("#");
        assert_eq!(
            h.take(),
            [Action::VerifyPin {
                conference: id(),
                pin: Pin::new(PIN)
            }]
        );
        assert_eq!(h.flow.poll_timeout(), None);
        h.keys("123#*");
        assert_eq!(h.take(), [], "keys are ignored while verifying");
        h.pin_result(PinResult::Verified);
        assert_eq!(h.take(), [Action::StartMeeting(id())]);
        h.meeting_started();
        assert_eq!(h.take(), [play(Sound::MeetingStarting)]);
        assert_eq!(h.state(), "in_meeting");
    }

    #[test]
    fn keys_are_secret_exactly_while_a_pin_is_being_entered_or_checked() {
        let h = Harness::at_id_prompt();
        assert!(!h.flow.keys_are_secret(), "conference IDs are not secret");
        let mut h = Harness::in_lobby(false);
        assert!(!h.flow.keys_are_secret(), "the lobby's `*` is not secret");
        h.keys("*");
        assert!(h.flow.keys_are_secret(), "PIN entry");
        h.keys(PIN);
        h.keys("#");
        assert!(h.flow.keys_are_secret(), "while verifying");
        h.pin_result(PinResult::Verified);
        h.meeting_started();
        assert!(
            !h.flow.keys_are_secret(),
            "in-meeting commands are not secret"
        );
    }

    #[test]
    fn star_during_the_organizer_prompt_starts_pin_entry() {
        let mut h = Harness::new(dialed());
        h.lookup(Some(facts(true, false, false)));
        h.finish();
        h.take();
        h.keys("*");
        assert_eq!(h.take(), [play(Sound::EnterPin)]);
        h.keys("7");
        assert_eq!(
            h.take(),
            [Action::StopPlayback],
            "barge-in on the PIN prompt"
        );
    }

    #[test]
    fn a_wrong_pin_is_retried() {
        let mut h = Harness::at_pin_prompt();
        h.keys("1111#");
        h.take();
        h.pin_result(PinResult::Wrong);
        assert_eq!(h.take(), [play(Sound::PinIncorrect)]);
        h.keys("73914#");
        assert_eq!(h.take(), [], "keys are ignored while 'not correct' plays");
        h.finish();
        assert_eq!(h.take(), [play(Sound::EnterPin)]);
        h.finish();
        h.keys("73914#");
        assert!(matches!(h.take()[..], [Action::VerifyPin { .. }]));
        h.pin_result(PinResult::Verified);
        assert_eq!(h.take(), [Action::StartMeeting(id())]);
    }

    #[test]
    fn three_wrong_pins_hang_up() {
        let mut h = Harness::at_pin_prompt();
        for attempt in 1..=3 {
            h.keys("1111#");
            assert!(matches!(h.take()[..], [Action::VerifyPin { .. }]));
            h.pin_result(PinResult::Wrong);
            assert_eq!(h.take(), [play(Sound::PinIncorrect)]);
            h.finish();
            if attempt < 3 {
                assert_eq!(h.take(), [play(Sound::EnterPin)]);
                h.finish();
            }
        }
        assert_eq!(h.take(), [play(Sound::Goodbye)]);
        h.finish();
        assert_eq!(h.take(), [Action::Hangup(EndCause::PinFailures)]);
    }

    #[test]
    fn malformed_pins_count_as_wrong_without_asking_the_store() {
        let mut h = Harness::at_pin_prompt();
        h.keys("123#"); // too short
        assert_eq!(h.take(), [play(Sound::PinIncorrect)]);
        h.finish();
        h.finish();
        h.take();
        h.keys("1234567890123"); // the 13th digit is one too many
        assert_eq!(h.take(), [play(Sound::PinIncorrect)]);
        h.finish();
        h.finish();
        h.take();
        h.keys("1111#");
        h.take();
        h.pin_result(PinResult::Wrong);
        assert_eq!(h.take(), [play(Sound::PinIncorrect)]);
        assert_eq!(h.state(), "leaving");
    }

    #[test]
    fn locked_out_plays_pin_unavailable_and_returns_to_the_lobby() {
        let mut h = Harness::at_pin_prompt();
        h.keys("1111#");
        h.take();
        h.pin_result(PinResult::LockedOut);
        assert_eq!(h.take(), [play(Sound::PinUnavailable)]);
        assert_eq!(h.state(), "lobby");
        h.finish();
        assert_eq!(h.take(), [play(Sound::HoldMusic)]);
        h.keys("*");
        assert_eq!(h.take(), [play(Sound::PinUnavailable)], "still locked");
        h.finish();
        assert_eq!(h.take(), [play(Sound::HoldMusic)]);
        h.meeting_started();
        assert_eq!(h.take(), [play(Sound::MeetingStarting)]);
    }

    #[test]
    fn a_locked_conference_refuses_pin_entry_at_star() {
        let mut h = Harness::in_lobby(true);
        h.keys("*");
        assert_eq!(h.take(), [play(Sound::PinUnavailable)]);
        h.keys("73914#");
        assert_eq!(h.take(), [], "digits in the lobby are ignored");
        h.finish();
        assert_eq!(h.take(), [play(Sound::HoldMusic)]);
        assert_eq!(h.state(), "lobby");
    }

    #[test]
    fn abandoned_pin_entry_returns_to_the_lobby() {
        let mut h = Harness::at_pin_prompt();
        for _ in 0..3 {
            h.fire();
            assert_eq!(h.take(), [play(Sound::EnterPin)]);
            h.finish();
        }
        h.fire();
        assert_eq!(h.take(), [play(Sound::HoldMusic)]);
        assert_eq!(h.state(), "lobby");
        assert_eq!(h.flow.poll_timeout(), Some(h.now + secs(60)));
        // A later try still has all its PIN attempts.
        h.keys("*");
        assert_eq!(h.take(), [play(Sound::EnterPin)]);
    }

    #[test]
    fn lobby_reminders_play_at_the_interval() {
        let config = IvrConfig {
            reminder_interval: secs(45),
            ..IvrConfig::default()
        };
        let mut h = Harness::with_config(config, dialed());
        h.lookup(Some(facts(true, false, false)));
        h.finish();
        h.advance(secs(3)); // OrganizerOrWait plays for 3 s
        h.finish();
        assert_eq!(h.take().last(), Some(&play(Sound::HoldMusic)));
        let hold_from = h.elapsed();
        let mut reminders = Vec::new();
        for _ in 0..3 {
            reminders.push(h.fire() - hold_from);
            assert_eq!(h.take(), [play(Sound::WaitingForOrganizer)]);
            assert_eq!(
                h.flow.poll_timeout(),
                None,
                "no reminder timer while it plays"
            );
            h.advance(secs(5)); // the reminder plays for 5 s
            h.finish();
            assert_eq!(h.take(), [play(Sound::HoldMusic)]);
        }
        assert_eq!(reminders, [secs(45), secs(95), secs(145)]);
    }

    #[test]
    fn no_reminder_during_pin_entry() {
        let mut h = Harness::in_lobby(false);
        h.advance(secs(59));
        h.keys("*");
        h.take();
        h.finish();
        h.advance(secs(9));
        h.keys("7391");
        h.advance(secs(4));
        assert_eq!(h.take(), []);
    }

    #[test]
    fn meeting_start_interrupts_pin_entry() {
        let mut h = Harness::at_pin_prompt();
        h.keys("73");
        h.meeting_started();
        assert_eq!(h.take(), [play(Sound::MeetingStarting)]);
        assert_eq!(h.state(), "in_meeting");
        assert_eq!(
            h.flow.poll_timeout(),
            None,
            "digit and lobby timers are gone"
        );
        h.keys("914#");
        assert_eq!(h.take(), [], "no VerifyPin");

        // While the PIN is being verified: the late result is ignored.
        let mut h = Harness::at_pin_prompt();
        h.keys("73914#");
        h.take();
        h.meeting_started();
        assert_eq!(h.take(), [play(Sound::MeetingStarting)]);
        h.pin_result(PinResult::Wrong);
        assert_eq!(h.take(), []);
        assert_eq!(h.state(), "in_meeting");
    }

    // ---- In the meeting ----

    fn in_meeting() -> Harness {
        let mut h = Harness::new(dialed());
        h.lookup(Some(facts(true, true, false)));
        h.finish();
        h.meeting_started();
        h.take();
        h
    }

    #[test]
    fn star_six_toggles_mute_and_star_one_plays_help() {
        let mut h = in_meeting();
        h.keys("*6");
        assert_eq!(h.take(), [Action::SetMuted(true), play(Sound::Muted)]);
        assert!(h.flow.is_muted());
        h.keys("*6");
        assert_eq!(h.take(), [Action::SetMuted(false), play(Sound::Unmuted)]);
        assert!(!h.flow.is_muted());
        h.keys("*1");
        assert_eq!(h.take(), [play(Sound::Help)]);
        h.keys("61#0*9");
        assert_eq!(h.take(), [], "anything else is ignored");
        h.keys("*");
        assert_eq!(h.flow.poll_timeout(), Some(h.now + secs(2)));
        h.keys("*6");
        assert_eq!(h.take(), [Action::SetMuted(true), play(Sound::Muted)]);
    }

    #[test]
    fn a_lone_star_is_dropped_after_two_seconds() {
        let mut h = in_meeting();
        h.keys("*");
        assert_eq!(h.fire(), h.elapsed());
        assert_eq!(h.flow.poll_timeout(), None);
        h.keys("6");
        assert_eq!(h.take(), []);
        // Just inside the window still counts.
        h.keys("*");
        h.advance(Duration::from_millis(1999));
        h.keys("1");
        assert_eq!(h.take(), [play(Sound::Help)]);
        // A key handled late, before the timer fired, does not count either.
        h.keys("*");
        h.now += secs(3);
        h.keys("6");
        assert_eq!(h.take(), []);
    }

    #[test]
    fn a_full_meeting_plays_its_prompt_then_goodbye() {
        let mut h = Harness::new(dialed());
        h.lookup(Some(facts(true, true, false)));
        h.finish();
        h.take();
        h.flow.handle_meeting_full(h.now);
        h.pump();
        assert_eq!(h.take(), [play(Sound::MeetingFull)]);
        h.keys("*6");
        h.meeting_started();
        assert_eq!(h.take(), [], "nothing else while leaving");
        h.finish();
        assert_eq!(h.take(), [play(Sound::Goodbye)]);
        h.finish();
        assert_eq!(h.take(), [Action::Hangup(EndCause::MeetingFull)]);
    }

    #[test]
    fn an_ended_meeting_says_goodbye_and_hangs_up() {
        let mut h = in_meeting();
        h.flow.handle_meeting_ended(h.now);
        h.pump();
        assert_eq!(h.take(), [play(Sound::Goodbye)]);
        h.finish();
        assert_eq!(h.take(), [Action::Hangup(EndCause::MeetingEnded)]);
    }

    #[test]
    fn the_goodbye_guard_hangs_up_when_prompts_never_finish() {
        let mut h = in_meeting();
        h.flow.handle_meeting_ended(h.now);
        h.pump();
        h.take();
        let left_at = h.elapsed();
        assert_eq!(h.fire() - left_at, secs(15));
        assert_eq!(h.take(), [Action::Hangup(EndCause::MeetingEnded)]);
        // A finish reported at once (the prompt could not play) hangs up at once.
        let mut h = in_meeting();
        h.flow.handle_meeting_ended(h.now);
        h.flow.handle_playback_finished(h.now, Sound::Goodbye);
        h.pump();
        assert_eq!(
            h.take(),
            [play(Sound::Goodbye), Action::Hangup(EndCause::MeetingEnded)]
        );
    }

    #[test]
    fn nothing_happens_after_hangup() {
        let mut h = in_meeting();
        h.flow.handle_meeting_ended(h.now);
        h.pump();
        h.finish();
        h.take();
        let now = h.now;
        for key in "0123456789*#".chars() {
            h.flow.handle_key(now, Key::from_char(key).unwrap());
        }
        for sound in Sound::ALL {
            h.flow.handle_playback_finished(now, sound);
        }
        h.flow.handle_lookup(now, Some(facts(true, true, false)));
        h.flow.handle_pin_result(now, PinResult::Verified);
        h.flow.handle_lobby(now);
        h.flow.handle_meeting_started(now);
        h.flow.handle_meeting_full(now);
        h.flow.handle_meeting_ended(now);
        h.flow.handle_timeout(now + secs(3600));
        h.pump();
        assert_eq!(h.take(), []);
        assert_eq!(h.flow.poll_timeout(), None);
        assert_eq!(h.flow.ended(), Some(EndCause::MeetingEnded));
    }

    #[test]
    fn stale_playback_finishes_are_ignored() {
        let mut h = Harness::at_id_prompt();
        h.flow.handle_playback_finished(h.now, Sound::Greeting);
        h.pump();
        assert_eq!(
            h.flow.poll_timeout(),
            None,
            "still waiting for the ID prompt"
        );
        let mut h = Harness::in_lobby(false);
        h.flow
            .handle_playback_finished(h.now, Sound::OrganizerOrWait);
        h.pump();
        assert_eq!(h.take(), [], "hold music is not restarted");
    }

    #[test]
    fn config_validation() {
        assert_eq!(IvrConfig::default().validate(), Ok(()));
        let bad = IvrConfig {
            inter_digit_timeout: Duration::ZERO,
            ..IvrConfig::default()
        };
        assert_eq!(
            bad.validate(),
            Err(IvrConfigError::ZeroDuration("inter_digit_timeout"))
        );
        let bad = IvrConfig {
            min_pin_digits: 8,
            max_pin_digits: 6,
            ..IvrConfig::default()
        };
        assert!(matches!(
            bad.validate(),
            Err(IvrConfigError::PinDigits { min: 8, max: 6 })
        ));
        let bad = IvrConfig {
            pin_tries: 0,
            ..IvrConfig::default()
        };
        assert_eq!(bad.validate(), Err(IvrConfigError::NoTries("pin_tries")));
    }

    // ---- Secrets ----

    #[test]
    fn an_entry_in_progress_does_not_print_its_digits() {
        let config = IvrConfig::default();
        let mut actions = VecDeque::new();
        let mut entry = Entry::new(Sound::EnterPin, 12);
        for c in "7391".chars() {
            entry.key(
                Instant::now(),
                Key::from_char(c).unwrap(),
                &config,
                &mut actions,
            );
        }
        entry.deadline = None; // keep an Instant's digits out of the text
        let text = format!("{entry:?}");
        assert!(text.contains("typed: 4"), "{text}");
        assert!(!text.contains("7391"), "{text}");
    }

    /// A `MakeWriter` into a shared buffer.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn pin_digits_never_reach_the_logs() {
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .without_time()
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let mut h = Harness::at_pin_prompt();
            // A wrong try, a `*` restart, then the right PIN.
            h.keys("73915#");
            h.pin_result(PinResult::Wrong);
            h.finish();
            h.finish();
            h.keys("739*");
            h.finish();
            h.keys(PIN);
            h.fire(); // an implied # by the inter-digit timeout
            let actions = h.take();
            assert!(actions.contains(&Action::VerifyPin {
                conference: id(),
                pin: Pin::new(PIN)
            }));
            // What a careless `?action` log line would print (the Pin is redacted).
            tracing::trace!(?actions, "test dump of the actions");
            h.pin_result(PinResult::Verified);
            h.meeting_started();
        });
        let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        assert!(logs.contains("pin_len=5"), "logs not captured:\n{logs}");
        assert!(logs.contains("attempt=2"), "{logs}");
        assert!(logs.contains(ID), "conference IDs are logged");
        for secret in [PIN, "73915", "739"] {
            assert!(!logs.contains(secret), "{secret} in the logs:\n{logs}");
        }
    }

    // ---- Any order of inputs ----

    /// One input a server might deliver, in any order, at any time.
    #[derive(Debug, Clone)]
    enum Input {
        Key(u8),
        Finished(usize),
        FinishPlaying,
        Lookup(Option<(bool, bool, bool)>),
        PinResult(u8),
        Lobby,
        MeetingStarted,
        MeetingFull,
        MeetingEnded,
        Wait(u64),
        Fire,
    }

    fn input() -> impl proptest::strategy::Strategy<Value = Input> {
        use proptest::prelude::*;
        prop_oneof![
            6 => (0u8..16).prop_map(Input::Key),
            1 => (0..Sound::ALL.len()).prop_map(Input::Finished),
            4 => Just(Input::FinishPlaying),
            2 => proptest::option::of((any::<bool>(), any::<bool>(), any::<bool>()))
                .prop_map(Input::Lookup),
            1 => (0u8..3).prop_map(Input::PinResult),
            1 => Just(Input::Lobby),
            1 => Just(Input::MeetingStarted),
            1 => Just(Input::MeetingFull),
            1 => Just(Input::MeetingEnded),
            2 => (0u64..70_000).prop_map(Input::Wait),
            3 => Just(Input::Fire),
        ]
    }

    proptest::proptest! {
        /// Whatever arrives in whatever order: no panic, a PIN leaves only well formed,
        /// Hangup comes at most once and last, and a timer is never armed after it.
        #[test]
        fn any_input_sequence_is_handled(
            dial in proptest::bool::ANY,
            inputs in proptest::collection::vec(input(), 0..120),
        ) {
            let mut h = Harness::new(if dial { dialed() } else { not_dialed() });
            for input in inputs {
                let now = h.now;
                match input {
                    Input::Key(code) => h.flow.handle_key(now, Key::from_event_code(code).unwrap()),
                    Input::Finished(i) => h.flow.handle_playback_finished(now, Sound::ALL[i]),
                    Input::FinishPlaying => {
                        if let Some(sound) = h.playing.take() {
                            h.flow.handle_playback_finished(now, sound);
                        }
                    }
                    Input::Lookup(f) => h.flow.handle_lookup(
                        now,
                        f.map(|(requires_pin, started, pin_locked)| {
                            facts(requires_pin, started, pin_locked)
                        }),
                    ),
                    Input::PinResult(r) => h.flow.handle_pin_result(
                        now,
                        [PinResult::Verified, PinResult::Wrong, PinResult::LockedOut][r as usize],
                    ),
                    Input::Lobby => h.flow.handle_lobby(now),
                    Input::MeetingStarted => h.flow.handle_meeting_started(now),
                    Input::MeetingFull => h.flow.handle_meeting_full(now),
                    Input::MeetingEnded => h.flow.handle_meeting_ended(now),
                    Input::Wait(ms) => h.advance(Duration::from_millis(ms)),
                    Input::Fire => {
                        if h.flow.poll_timeout().is_some() {
                            h.fire();
                        }
                    }
                }
                h.pump();
            }
            let out = h.take();
            let hangups = out.iter().filter(|a| matches!(a, Action::Hangup(_))).count();
            proptest::prop_assert!(hangups <= 1);
            if hangups == 1 {
                proptest::prop_assert!(matches!(out.last(), Some(Action::Hangup(_))));
                proptest::prop_assert!(h.flow.ended().is_some());
                proptest::prop_assert_eq!(h.flow.poll_timeout(), None);
            }
            for action in &out {
                if let Action::VerifyPin { pin, .. } = action {
                    proptest::prop_assert!((4..=12).contains(&pin.len()));
                    proptest::prop_assert!(pin.expose().bytes().all(|b| b.is_ascii_digit()));
                }
            }
        }
    }
}
