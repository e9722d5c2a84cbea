//! Meetings, one per conference ID, and the rules for who waits, who starts one and who joins.
//!
//! A meeting is **waiting** (callers in its [`Lobby`], hearing hold music), **started**
//! (participants in its mix) or **ended** — and an ended meeting is forgotten: the next caller
//! for that conference ID opens a new meeting with a new [`MeetingId`].
//!
//! | event | waiting | started |
//! |---|---|---|
//! | organizer PIN verified ([`Bridge::start`]) or web sign-in ([`Bridge::start_by`]) | starts: the starter, then the lobby in arrival order, join the mix | joins (and cancels an organizer-leave grace) |
//! | [`Bridge::admit`], organizer requires no PIN, caller not anonymous (or anonymous callers may start) | starts, as above | joins |
//! | [`Bridge::admit`], anyone else | waits in the lobby | joins |
//! | [`Bridge::leave`] | leaves the lobby; lobby empty → forgotten | leaves the mix; nobody left → ended |
//! | the organizer-leave grace runs out ([`OrganizerLeavePolicy::EndAfter`]) | — | ended: everyone gets [`Action::End`] |
//!
//! Seats: a meeting holds at most [`BridgeConfig::max_participants`] legs, lobby and mix
//! together; while it waits, one seat is kept for whoever will start it, so a lobby holds at
//! most `max_participants - 1` callers and the organizer is never locked out of their own
//! meeting by a full lobby. Beyond that, [`Admission::Full`].
//!
//! Sans-IO, in the shape of the other machines (STYLE §1): the server calls [`Bridge::admit`],
//! [`Bridge::start`], [`Bridge::leave`], [`Bridge::set_muted`] and [`Bridge::handle_timeout`]
//! with an explicit `now`, then drains [`Bridge::poll_action`] and sleeps until
//! [`Bridge::poll_timeout`]. [`Action`] says what each output asks of the server. The bridge
//! never sees a PIN: the IVR verifies it and then calls `start`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::lobby::Lobby;
use crate::audio::Sound;
use crate::sip::endpoint::LegId;
use crate::store::ConferenceId;

/// Default [`BridgeConfig::max_participants`]: the hosted audio-conferencing norm.
pub const DEFAULT_MAX_PARTICIPANTS: usize = 250;
/// Default [`BridgeConfig::lobby_reminder`]: often enough that a caller on hold music knows
/// they are still connected and why they wait, rare enough not to nag (about two loops of the
/// 32 s hold music).
pub const DEFAULT_LOBBY_REMINDER: Duration = Duration::from_secs(60);

/// A started or waiting meeting, as the media engine knows it: the handle of its mix. Never
/// reused within a process, so a stale action can't reach a later meeting of the same
/// conference ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MeetingId(pub u64);

impl fmt::Display for MeetingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m{}", self.0)
    }
}

/// The bridge's knobs (from `Config`; every default is the hosted-conferencing behaviour).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BridgeConfig {
    /// Legs per meeting, lobby and mix counted together (one seat kept for the starter while
    /// waiting; see the module docs). Default [`DEFAULT_MAX_PARTICIPANTS`].
    pub max_participants: usize,
    /// Join and leave tones to the others in a started meeting. Default on.
    pub notify_tones: bool,
    /// What happens when the last organizer leaves a started meeting. Default: it continues.
    pub organizer_leave: OrganizerLeavePolicy,
    /// How often a lobby caller hears "the meeting will start when the organizer joins";
    /// `None` (or zero) for never. Default [`DEFAULT_LOBBY_REMINDER`].
    pub lobby_reminder: Option<Duration>,
}

impl Default for BridgeConfig {
    fn default() -> BridgeConfig {
        BridgeConfig {
            max_participants: DEFAULT_MAX_PARTICIPANTS,
            notify_tones: true,
            organizer_leave: OrganizerLeavePolicy::Continue,
            lobby_reminder: Some(DEFAULT_LOBBY_REMINDER),
        }
    }
}

/// When the last organizer leg leaves a started meeting. "Organizer" means a leg that came in
/// through [`Bridge::start`] or [`Bridge::start_by`]; a meeting started by a caller under a
/// no-PIN organizer has no organizer leg, so this never applies to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OrganizerLeavePolicy {
    /// The meeting goes on until its last participant leaves.
    #[default]
    Continue,
    /// The meeting ends this long after the last organizer leg left, unless an organizer
    /// starts/joins again before then.
    EndAfter(Duration),
}

/// What the bridge needs to know about a caller (from the INVITE: `anonymous` user part,
/// `anonymous.invalid` host, or `Privacy: id`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caller {
    pub anonymous: bool,
}

/// The organizer's and tenant's settings that decide who may start the meeting (from the
/// store, at the time of the call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// The organizer must enter their PIN to start their meetings.
    pub requires_pin: bool,
    /// The tenant lets anonymous callers start a meeting that needs no PIN.
    pub allow_anonymous_start: bool,
}

impl Rules {
    /// Whether `caller`, by arriving, starts a meeting that is waiting.
    pub fn starts(self, caller: Caller) -> bool {
        !self.requires_pin && (!caller.anonymous || self.allow_anonymous_start)
    }
}

/// Where an admitted (or starting) leg went. Every variant but `Full` and `AlreadyIn` means
/// the bridge now owns the leg until [`Bridge::leave`] or [`Action::End`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Waiting in the lobby of a meeting that has not started.
    Lobby { meeting: MeetingId },
    /// This leg started the meeting and is in its mix.
    Started { meeting: MeetingId },
    /// In the mix of a meeting that was already started.
    Joined { meeting: MeetingId },
    /// No seat: the IVR plays [`Sound::MeetingFull`] and hangs up. Nothing changed.
    Full,
    /// The leg is already in a lobby or meeting (possibly another conference's): a caller bug.
    /// Nothing changed.
    AlreadyIn { meeting: MeetingId },
}

/// Why a started meeting ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Its last participant left.
    LastLeft,
    /// The organizer-leave grace ran out ([`OrganizerLeavePolicy::EndAfter`]).
    OrganizerLeft,
}

/// What the bridge asks of the server and the media engine, in the order it is to be done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A meeting started: the media engine may set up its mix (or do so on the first
    /// `JoinMix`). Always followed by the starter's `JoinMix`.
    MeetingStarted {
        meeting: MeetingId,
        conference: ConferenceId,
    },
    /// Play the shared hold music to `leg`, looped, until it joins a mix or hangs up.
    ToLobby { leg: LegId },
    /// Stop whatever `leg` hears (hold music) and connect it to `meeting`'s mix: it hears the
    /// others (N−1) and they hear it. It joins unmuted.
    JoinMix { leg: LegId, meeting: MeetingId },
    /// Take `leg` out of `meeting`'s mix (it left). Ignore if the call is already torn down.
    LeaveMix { leg: LegId, meeting: MeetingId },
    /// Play `sound` to `leg` alone, once: over hold music in the lobby (then resume it), or
    /// over the meeting audio in the mix. Not heard by the others.
    Announce { leg: LegId, sound: Sound },
    /// Play `sound` once to everyone in `meeting`'s mix except `except` (join/leave tones).
    Tone {
        meeting: MeetingId,
        except: LegId,
        sound: Sound,
    },
    /// Stop (or resume) mixing `leg`'s audio into what the others hear. The confirmation
    /// prompt is the IVR's to play.
    Muted { leg: LegId, muted: bool },
    /// The bridge ended `leg`'s part in the meeting: take it out of the mix, play
    /// [`Sound::Goodbye`], then send BYE. The bridge has already forgotten the leg.
    End { leg: LegId },
    /// A started meeting ended; the media engine can drop its mix. Nothing of it is left in
    /// the bridge.
    MeetingEnded {
        meeting: MeetingId,
        conference: ConferenceId,
        reason: EndReason,
    },
}

/// Counters since the bridge was made (for logs and metrics), and the current sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub meetings_started: u64,
    pub meetings_ended: u64,
    /// Of `meetings_ended`, those ended by the organizer-leave policy.
    pub meetings_ended_by_organizer_leave: u64,
    /// Callers put in a lobby.
    pub lobby_waits: u64,
    /// Legs connected to a mix (starters, lobby releases and later arrivals).
    pub joins: u64,
    /// Legs that left (`leave`) a lobby or a meeting.
    pub leaves: u64,
    /// Legs the bridge ended ([`Action::End`]).
    pub ended_legs: u64,
    /// Admissions refused as [`Admission::Full`].
    pub refused_full: u64,
    /// Now: meetings waiting for their organizer.
    pub waiting_meetings: usize,
    /// Now: started meetings.
    pub started_meetings: usize,
    /// Now: legs in a lobby.
    pub in_lobby: usize,
    /// Now: legs in a mix.
    pub in_meetings: usize,
}

/// All meetings of this server: which leg is where, and the actions that follow.
#[derive(Debug)]
pub struct Bridge {
    config: BridgeConfig,
    /// Live meetings only (waiting or started); ordered so that timeouts act in a stable order.
    meetings: BTreeMap<ConferenceId, Meeting>,
    /// Every leg in a lobby or a mix, and whose. A leg is in at most one meeting.
    legs: HashMap<LegId, ConferenceId>,
    next_meeting: u64,
    actions: VecDeque<Action>,
    stats: Stats,
}

impl Bridge {
    pub fn new(config: BridgeConfig) -> Bridge {
        Bridge {
            config,
            meetings: BTreeMap::new(),
            legs: HashMap::new(),
            next_meeting: 1,
            actions: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    pub fn config(&self) -> &BridgeConfig {
        &self.config
    }

    /// A caller who got past the IVR without starting the meeting (not the organizer, or no
    /// PIN asked): into the lobby, or starting the meeting (see [`Rules::starts`]), or into
    /// the started meeting.
    pub fn admit(
        &mut self,
        now: Instant,
        leg: LegId,
        conference: &ConferenceId,
        caller: Caller,
        rules: Rules,
    ) -> Admission {
        self.enter(leg, conference, false, |m, out| {
            m.admit(now, leg, caller, rules, out)
        })
    }

    /// The organizer's PIN verified on `leg`: the meeting starts (the lobby joins), or, if it
    /// already has, the organizer joins it and any organizer-leave grace is cancelled. A leg
    /// waiting in this conference's lobby may start it.
    pub fn start(&mut self, now: Instant, conference: &ConferenceId, leg: LegId) -> Admission {
        self.enter(leg, conference, true, |m, out| {
            m.start(now, leg, Starter::Pin, out)
        })
    }

    /// A signed-in user joins from the web: the same as [`Bridge::start`].
    pub fn start_by(&mut self, now: Instant, conference: &ConferenceId, leg: LegId) -> Admission {
        self.enter(leg, conference, true, |m, out| {
            m.start(now, leg, Starter::Web, out)
        })
    }

    /// `leg` hung up (or is otherwise gone): out of its lobby or meeting; the meeting ends
    /// when nobody is left. Returns whether the leg was here; an unknown leg is a no-op.
    pub fn leave(&mut self, now: Instant, leg: LegId) -> bool {
        let Some(conference) = self.legs.remove(&leg) else {
            debug!(leg = leg.0, "leave: leg not in any meeting");
            return false;
        };
        let meeting = self
            .meetings
            .get_mut(&conference)
            .expect("every indexed leg's meeting is live");
        let from = self.actions.len();
        let fate = meeting.leave(now, leg, &mut self.actions);
        self.stats.leaves += 1;
        if fate == Fate::Over {
            self.forget(&conference);
        }
        self.tally(from);
        true
    }

    /// Mutes or unmutes `leg` in its started meeting ([`Action::Muted`] when it changes).
    /// Returns false, and does nothing, unless the leg is in a started meeting.
    pub fn set_muted(&mut self, now: Instant, leg: LegId, muted: bool) -> bool {
        let Some(meeting) = self.legs.get(&leg).and_then(|c| self.meetings.get_mut(c)) else {
            return false;
        };
        meeting.set_muted(now, leg, muted, &mut self.actions)
    }

    /// Lobby reminders and organizer-leave grace periods that are due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let from = self.actions.len();
        let mut over = Vec::new();
        for (conference, meeting) in &mut self.meetings {
            if meeting.poll_timeout().is_none_or(|at| at > now) {
                continue;
            }
            if meeting.handle_timeout(now, &mut self.actions) == Fate::Over {
                over.push(conference.clone());
            }
        }
        for conference in &over {
            self.forget(conference);
        }
        self.tally(from);
    }

    /// The next action for the server, in order. Drain after every input.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When to call [`Bridge::handle_timeout`] next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.meetings
            .values()
            .filter_map(Meeting::poll_timeout)
            .min()
    }

    /// Participants in the started meeting of `conference` (0 if waiting or none).
    pub fn participants(&self, conference: &ConferenceId) -> usize {
        self.meetings
            .get(conference)
            .map_or(0, |m| m.participants().len())
    }

    /// Who waits in `conference`'s lobby, oldest arrival first.
    pub fn lobby(&self, conference: &ConferenceId) -> Vec<LegId> {
        match self.meetings.get(conference).map(|m| &m.phase) {
            Some(Phase::Waiting { lobby }) => lobby.legs().collect(),
            _ => Vec::new(),
        }
    }

    pub fn is_started(&self, conference: &ConferenceId) -> bool {
        self.meetings
            .get(conference)
            .is_some_and(|m| matches!(m.phase, Phase::Started { .. }))
    }

    /// The meeting `leg` waits for or is in.
    pub fn meeting_of(&self, leg: LegId) -> Option<MeetingId> {
        self.meetings.get(self.conference_of(leg)?).map(|m| m.id)
    }

    pub fn conference_of(&self, leg: LegId) -> Option<&ConferenceId> {
        self.legs.get(&leg)
    }

    pub fn in_lobby(&self, leg: LegId) -> bool {
        self.conference_of(leg)
            .and_then(|c| self.meetings.get(c))
            .is_some_and(|m| matches!(&m.phase, Phase::Waiting { lobby } if lobby.contains(leg)))
    }

    /// Whether `leg` is muted; `None` unless it is in a started meeting (the IVR's `*6` toggles
    /// with `set_muted(leg, !muted)`).
    pub fn muted(&self, leg: LegId) -> Option<bool> {
        let meeting = self.meetings.get(self.conference_of(leg)?)?;
        meeting
            .participants()
            .iter()
            .find(|p| p.leg == leg)
            .map(|p| p.muted)
    }

    pub fn stats(&self) -> Stats {
        let mut s = self.stats;
        for m in self.meetings.values() {
            match &m.phase {
                Phase::Waiting { lobby } => {
                    s.waiting_meetings += 1;
                    s.in_lobby += lobby.len();
                }
                Phase::Started { participants, .. } => {
                    s.started_meetings += 1;
                    s.in_meetings += participants.len();
                }
            }
        }
        s
    }

    /// The common part of `admit`/`start`/`start_by`: one meeting per leg, a meeting made on
    /// first arrival and dropped again if the arrival didn't stay. `starting` lets a leg in
    /// this conference's lobby through (to start it); any other known leg is refused.
    fn enter(
        &mut self,
        leg: LegId,
        conference: &ConferenceId,
        starting: bool,
        act: impl FnOnce(&mut Meeting, &mut VecDeque<Action>) -> Admission,
    ) -> Admission {
        if let Some(there) = self.legs.get(&leg) {
            let meeting = self.meetings[there].id;
            let from_own_lobby = starting && there == conference && self.in_lobby(leg);
            if !from_own_lobby {
                warn!(leg = leg.0, conference = %conference, in_conference = %there, %meeting,
                    "leg already in a meeting; refused");
                return Admission::AlreadyIn { meeting };
            }
        }
        let config = self.config;
        let next = &mut self.next_meeting;
        let meeting = self.meetings.entry(conference.clone()).or_insert_with(|| {
            let id = MeetingId(*next);
            *next += 1;
            Meeting::new(id, conference.clone(), config)
        });
        let from = self.actions.len();
        let admission = act(meeting, &mut self.actions);
        match admission {
            Admission::Full => {
                self.stats.refused_full += 1;
                if meeting.is_empty() {
                    self.meetings.remove(conference);
                }
            }
            Admission::Lobby { .. } | Admission::Started { .. } | Admission::Joined { .. } => {
                self.legs.insert(leg, conference.clone());
            }
            Admission::AlreadyIn { .. } => {}
        }
        self.tally(from);
        admission
    }

    /// Drops an ended meeting and every leg still indexed to it.
    fn forget(&mut self, conference: &ConferenceId) {
        let Some(meeting) = self.meetings.remove(conference) else {
            return;
        };
        for leg in meeting.legs() {
            self.legs.remove(&leg);
        }
    }

    /// Counts the actions queued since `from`.
    fn tally(&mut self, from: usize) {
        let s = &mut self.stats;
        for action in self.actions.range(from..) {
            match action {
                Action::MeetingStarted { .. } => s.meetings_started += 1,
                Action::ToLobby { .. } => s.lobby_waits += 1,
                Action::JoinMix { .. } => s.joins += 1,
                Action::End { .. } => s.ended_legs += 1,
                Action::MeetingEnded { reason, .. } => {
                    s.meetings_ended += 1;
                    if *reason == EndReason::OrganizerLeft {
                        s.meetings_ended_by_organizer_leave += 1;
                    }
                }
                Action::LeaveMix { .. }
                | Action::Announce { .. }
                | Action::Tone { .. }
                | Action::Muted { .. } => {}
            }
        }
    }
}

impl Default for Bridge {
    fn default() -> Bridge {
        Bridge::new(BridgeConfig::default())
    }
}

/// One conference's meeting while it lives.
#[derive(Debug)]
struct Meeting {
    id: MeetingId,
    conference: ConferenceId,
    config: BridgeConfig,
    phase: Phase,
}

#[derive(Debug)]
enum Phase {
    /// Nobody has started it; callers wait (never empty once the first caller stayed).
    Waiting { lobby: Lobby },
    /// Started; never empty (the last to leave ends it).
    Started {
        since: Instant,
        /// In join order.
        participants: Vec<Participant>,
        /// The organizer-leave grace: the meeting ends at this instant unless an organizer
        /// comes back. Only with [`OrganizerLeavePolicy::EndAfter`].
        ends_at: Option<Instant>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Participant {
    leg: LegId,
    role: Role,
    muted: bool,
}

/// How a participant came in; organizers are who [`OrganizerLeavePolicy`] watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Organizer,
    Caller,
}

/// What started a meeting through `start`, for the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Starter {
    Pin,
    Web,
}

/// Whether a meeting lives on after an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Continues,
    /// Ended (or, never started, abandoned): the bridge forgets it.
    Over,
}

impl Meeting {
    fn new(id: MeetingId, conference: ConferenceId, config: BridgeConfig) -> Meeting {
        Meeting {
            id,
            conference,
            config,
            phase: Phase::Waiting {
                lobby: Lobby::new(),
            },
        }
    }

    fn admit(
        &mut self,
        now: Instant,
        leg: LegId,
        caller: Caller,
        rules: Rules,
        out: &mut VecDeque<Action>,
    ) -> Admission {
        let max = self.config.max_participants;
        let Phase::Waiting { lobby } = &mut self.phase else {
            return self.join(now, leg, Role::Caller, out);
        };
        if rules.starts(caller) {
            if lobby.len() >= max {
                return self.full(leg);
            }
            info!(conference = %self.conference, meeting = %self.id, leg = leg.0,
                "caller starts the meeting (organizer requires no PIN)");
            self.begin(now, leg, Role::Caller, out);
            return Admission::Started { meeting: self.id };
        }
        // One seat stays free for whoever starts the meeting.
        if lobby.len() + 1 >= max {
            return self.full(leg);
        }
        lobby.push(now, leg, self.config.lobby_reminder);
        out.push_back(Action::ToLobby { leg });
        info!(conference = %self.conference, meeting = %self.id, leg = leg.0,
            anonymous = caller.anonymous, requires_pin = rules.requires_pin,
            waiting = lobby.len(), "caller waits in the lobby");
        Admission::Lobby { meeting: self.id }
    }

    fn start(
        &mut self,
        now: Instant,
        leg: LegId,
        by: Starter,
        out: &mut VecDeque<Action>,
    ) -> Admission {
        let Phase::Waiting { lobby } = &mut self.phase else {
            return self.join(now, leg, Role::Organizer, out);
        };
        let waited = lobby.remove(leg).is_some();
        if !waited && lobby.len() >= self.config.max_participants {
            return self.full(leg);
        }
        info!(conference = %self.conference, meeting = %self.id, leg = leg.0, ?by,
            from_lobby = waited, "organizer starts the meeting");
        self.begin(now, leg, Role::Organizer, out);
        Admission::Started { meeting: self.id }
    }

    /// Waiting → started: the starter joins, then the lobby in arrival order. No join tones:
    /// everyone arrives at once and hears "the meeting is starting" instead.
    fn begin(&mut self, now: Instant, starter: LegId, role: Role, out: &mut VecDeque<Action>) {
        let Phase::Waiting { lobby } = &mut self.phase else {
            unreachable!("begin is only called on a waiting meeting");
        };
        let (meeting, conference) = (self.id, &self.conference);
        out.push_back(Action::MeetingStarted {
            meeting,
            conference: conference.clone(),
        });
        out.push_back(Action::JoinMix {
            leg: starter,
            meeting,
        });
        out.push_back(Action::Announce {
            leg: starter,
            sound: Sound::JoinedMeeting,
        });
        let mut participants = vec![Participant {
            leg: starter,
            role,
            muted: false,
        }];
        for w in lobby.release() {
            let leg = w.leg;
            info!(conference = %conference, %meeting, leg = leg.0,
                waited_ms = now.saturating_duration_since(w.since).as_millis() as u64,
                "lobby caller joins the started meeting");
            out.push_back(Action::JoinMix { leg, meeting });
            out.push_back(Action::Announce {
                leg,
                sound: Sound::MeetingStarting,
            });
            participants.push(Participant {
                leg,
                role: Role::Caller,
                muted: false,
            });
        }
        info!(conference = %conference, %meeting, participants = participants.len(),
            "meeting started");
        self.phase = Phase::Started {
            since: now,
            participants,
            ends_at: None,
        };
    }

    /// An arrival at a started meeting.
    fn join(
        &mut self,
        _now: Instant,
        leg: LegId,
        role: Role,
        out: &mut VecDeque<Action>,
    ) -> Admission {
        let Phase::Started {
            participants,
            ends_at,
            ..
        } = &mut self.phase
        else {
            unreachable!("join is only called on a started meeting");
        };
        if participants.len() >= self.config.max_participants {
            return self.full(leg);
        }
        participants.push(Participant {
            leg,
            role,
            muted: false,
        });
        let meeting = self.id;
        out.push_back(Action::JoinMix { leg, meeting });
        out.push_back(Action::Announce {
            leg,
            sound: Sound::JoinedMeeting,
        });
        if self.config.notify_tones && participants.len() > 1 {
            out.push_back(Action::Tone {
                meeting,
                except: leg,
                sound: Sound::JoinTone,
            });
        }
        info!(conference = %self.conference, %meeting, leg = leg.0, ?role,
            participants = participants.len(), "joined the meeting");
        if role == Role::Organizer && ends_at.take().is_some() {
            info!(conference = %self.conference, %meeting, leg = leg.0,
                "organizer back: the meeting no longer ends");
        }
        Admission::Joined { meeting }
    }

    fn full(&self, leg: LegId) -> Admission {
        info!(conference = %self.conference, meeting = %self.id, leg = leg.0,
            max = self.config.max_participants, "meeting full; caller refused");
        Admission::Full
    }

    fn leave(&mut self, now: Instant, leg: LegId, out: &mut VecDeque<Action>) -> Fate {
        let meeting = self.id;
        match &mut self.phase {
            Phase::Waiting { lobby } => {
                let waited = lobby
                    .remove(leg)
                    .map(|w| now.saturating_duration_since(w.since));
                info!(conference = %self.conference, %meeting, leg = leg.0,
                    waited_ms = waited.map(|d| d.as_millis() as u64),
                    waiting = lobby.len(), "caller left the lobby");
                if lobby.is_empty() {
                    info!(conference = %self.conference, %meeting,
                        "lobby empty before the meeting started; meeting forgotten");
                    return Fate::Over;
                }
                Fate::Continues
            }
            Phase::Started {
                since,
                participants,
                ends_at,
            } => {
                let Some(at) = participants.iter().position(|p| p.leg == leg) else {
                    return Fate::Continues;
                };
                let gone = participants.remove(at);
                out.push_back(Action::LeaveMix { leg, meeting });
                info!(conference = %self.conference, %meeting, leg = leg.0,
                    participants = participants.len(), "left the meeting");
                if participants.is_empty() {
                    out.push_back(Action::MeetingEnded {
                        meeting,
                        conference: self.conference.clone(),
                        reason: EndReason::LastLeft,
                    });
                    info!(conference = %self.conference, %meeting,
                        lasted_s = now.saturating_duration_since(*since).as_secs(),
                        reason = ?EndReason::LastLeft, "meeting ended");
                    return Fate::Over;
                }
                if self.config.notify_tones {
                    out.push_back(Action::Tone {
                        meeting,
                        except: leg,
                        sound: Sound::LeaveTone,
                    });
                }
                let organizer_gone = gone.role == Role::Organizer
                    && participants.iter().all(|p| p.role != Role::Organizer);
                if let OrganizerLeavePolicy::EndAfter(grace) = self.config.organizer_leave
                    && organizer_gone
                    && ends_at.is_none()
                {
                    *ends_at = Some(now + grace);
                    info!(conference = %self.conference, %meeting, grace_s = grace.as_secs(),
                        "organizer left: the meeting ends unless they return");
                }
                Fate::Continues
            }
        }
    }

    fn set_muted(
        &mut self,
        _now: Instant,
        leg: LegId,
        muted: bool,
        out: &mut VecDeque<Action>,
    ) -> bool {
        let Phase::Started { participants, .. } = &mut self.phase else {
            return false;
        };
        let Some(p) = participants.iter_mut().find(|p| p.leg == leg) else {
            return false;
        };
        if p.muted != muted {
            p.muted = muted;
            out.push_back(Action::Muted { leg, muted });
            info!(conference = %self.conference, meeting = %self.id, leg = leg.0, muted,
                "mute changed");
        }
        true
    }

    fn handle_timeout(&mut self, now: Instant, out: &mut VecDeque<Action>) -> Fate {
        let meeting = self.id;
        match &mut self.phase {
            Phase::Waiting { lobby } => {
                if let Some(interval) = self.config.lobby_reminder {
                    lobby.remind(now, interval, |leg| {
                        out.push_back(Action::Announce {
                            leg,
                            sound: Sound::WaitingForOrganizer,
                        })
                    });
                }
                Fate::Continues
            }
            Phase::Started {
                since,
                participants,
                ends_at,
            } => {
                if ends_at.is_none_or(|at| at > now) {
                    return Fate::Continues;
                }
                for p in participants.iter() {
                    out.push_back(Action::End { leg: p.leg });
                }
                out.push_back(Action::MeetingEnded {
                    meeting,
                    conference: self.conference.clone(),
                    reason: EndReason::OrganizerLeft,
                });
                info!(conference = %self.conference, %meeting,
                    ended_legs = participants.len(),
                    lasted_s = now.saturating_duration_since(*since).as_secs(),
                    reason = ?EndReason::OrganizerLeft, "meeting ended");
                Fate::Over
            }
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Waiting { lobby } => lobby.next_reminder(),
            Phase::Started { ends_at, .. } => *ends_at,
        }
    }

    /// Started participants in join order (empty while waiting).
    fn participants(&self) -> &[Participant] {
        match &self.phase {
            Phase::Waiting { .. } => &[],
            Phase::Started { participants, .. } => participants,
        }
    }

    fn legs(&self) -> Vec<LegId> {
        match &self.phase {
            Phase::Waiting { lobby } => lobby.legs().collect(),
            Phase::Started { participants, .. } => participants.iter().map(|p| p.leg).collect(),
        }
    }

    fn is_empty(&self) -> bool {
        match &self.phase {
            Phase::Waiting { lobby } => lobby.is_empty(),
            Phase::Started { participants, .. } => participants.is_empty(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: Rules = Rules {
        requires_pin: true,
        allow_anonymous_start: false,
    };
    const NO_PIN: Rules = Rules {
        requires_pin: false,
        allow_anonymous_start: false,
    };
    const NAMED: Caller = Caller { anonymous: false };
    const ANON: Caller = Caller { anonymous: true };
    const M1: MeetingId = MeetingId(1);
    const SEC: Duration = Duration::from_secs(1);

    fn conf() -> ConferenceId {
        ConferenceId("4711001".into())
    }

    fn other() -> ConferenceId {
        ConferenceId("4711002".into())
    }

    fn leg(n: u64) -> LegId {
        LegId(n)
    }

    fn legs(ns: &[u64]) -> Vec<LegId> {
        ns.iter().copied().map(LegId).collect()
    }

    fn config(f: impl FnOnce(&mut BridgeConfig)) -> BridgeConfig {
        let mut c = BridgeConfig::default();
        f(&mut c);
        c
    }

    /// A bridge on a virtual clock, built step by step in one expression. Each setup step
    /// asserts it succeeded and drains its actions, so a test sees only the actions of the
    /// step under test.
    struct Given {
        bridge: Bridge,
        t0: Instant,
        now: Instant,
    }

    fn given() -> Given {
        given_with(BridgeConfig::default())
    }

    fn given_with(config: BridgeConfig) -> Given {
        let t0 = Instant::now();
        Given {
            bridge: Bridge::new(config),
            t0,
            now: t0,
        }
    }

    impl Given {
        /// A named caller to `conf()`, whose organizer requires a PIN.
        fn caller(self, n: u64) -> Given {
            self.admitted(n, NAMED, PIN)
        }

        /// An anonymous caller to `conf()`, whose organizer requires a PIN.
        fn anonymous(self, n: u64) -> Given {
            self.admitted(n, ANON, PIN)
        }

        fn admitted(mut self, n: u64, caller: Caller, rules: Rules) -> Given {
            let a = self.admit(n, caller, rules);
            assert!(
                matches!(
                    a,
                    Admission::Lobby { .. } | Admission::Started { .. } | Admission::Joined { .. }
                ),
                "setup: admit {n}: {a:?}"
            );
            self.actions();
            self
        }

        /// The organizer's PIN verified on leg `n`.
        fn organizer(mut self, n: u64) -> Given {
            let a = self.start(n);
            assert!(
                matches!(a, Admission::Started { .. } | Admission::Joined { .. }),
                "setup: start {n}: {a:?}"
            );
            self.actions();
            self
        }

        fn left(mut self, n: u64) -> Given {
            assert!(self.leave(n), "setup: leave {n}");
            self.actions();
            self
        }

        fn after(mut self, d: Duration) -> Given {
            self.now += d;
            self
        }

        fn admit(&mut self, n: u64, caller: Caller, rules: Rules) -> Admission {
            self.bridge.admit(self.now, leg(n), &conf(), caller, rules)
        }

        fn start(&mut self, n: u64) -> Admission {
            self.bridge.start(self.now, &conf(), leg(n))
        }

        fn leave(&mut self, n: u64) -> bool {
            self.bridge.leave(self.now, leg(n))
        }

        /// Moves the clock by `d`, fires due timers, returns the actions.
        fn tick(&mut self, d: Duration) -> Vec<Action> {
            self.now += d;
            self.bridge.handle_timeout(self.now);
            self.actions()
        }

        fn actions(&mut self) -> Vec<Action> {
            std::iter::from_fn(|| self.bridge.poll_action()).collect()
        }
    }

    fn started(meeting: MeetingId) -> Action {
        Action::MeetingStarted {
            meeting,
            conference: conf(),
        }
    }

    fn join(n: u64) -> Action {
        Action::JoinMix {
            leg: leg(n),
            meeting: M1,
        }
    }

    fn announce(n: u64, sound: Sound) -> Action {
        Action::Announce { leg: leg(n), sound }
    }

    fn tone(except: u64, sound: Sound) -> Action {
        Action::Tone {
            meeting: M1,
            except: leg(except),
            sound,
        }
    }

    fn ended(reason: EndReason) -> Action {
        Action::MeetingEnded {
            meeting: M1,
            conference: conf(),
            reason,
        }
    }

    #[test]
    fn caller_waits_in_lobby_with_hold_music() {
        let mut t = given();
        assert_eq!(t.admit(1, NAMED, PIN), Admission::Lobby { meeting: M1 });
        assert_eq!(t.actions(), [Action::ToLobby { leg: leg(1) }]);
        assert_eq!(t.bridge.lobby(&conf()), legs(&[1]));
        assert!(!t.bridge.is_started(&conf()));
        assert_eq!(t.bridge.participants(&conf()), 0);
        assert_eq!(t.bridge.meeting_of(leg(1)), Some(M1));
        assert!(t.bridge.in_lobby(leg(1)));
    }

    #[test]
    fn organizer_start_releases_lobby_in_arrival_order() {
        let mut t = given().caller(3).anonymous(1).caller(2);
        assert_eq!(t.bridge.lobby(&conf()), legs(&[3, 1, 2]));

        assert_eq!(t.start(9), Admission::Started { meeting: M1 });
        assert_eq!(
            t.actions(),
            [
                started(M1),
                join(9),
                announce(9, Sound::JoinedMeeting),
                join(3),
                announce(3, Sound::MeetingStarting),
                join(1),
                announce(1, Sound::MeetingStarting),
                join(2),
                announce(2, Sound::MeetingStarting),
            ]
        );
        assert!(t.bridge.is_started(&conf()));
        assert_eq!(t.bridge.participants(&conf()), 4);
        assert_eq!(t.bridge.lobby(&conf()), []);
        assert!(!t.bridge.in_lobby(leg(3)));
        assert_eq!(t.bridge.meeting_of(leg(3)), Some(M1));
    }

    #[test]
    fn organizer_may_start_from_the_lobby() {
        let mut t = given().caller(1).caller(2).caller(3);
        assert_eq!(t.start(2), Admission::Started { meeting: M1 });
        assert_eq!(
            t.actions(),
            [
                started(M1),
                join(2),
                announce(2, Sound::JoinedMeeting),
                join(1),
                announce(1, Sound::MeetingStarting),
                join(3),
                announce(3, Sound::MeetingStarting),
            ]
        );
        assert_eq!(t.bridge.participants(&conf()), 3);
    }

    #[test]
    fn web_sign_in_starts_like_the_organizer() {
        let mut t = given().caller(1);
        assert_eq!(
            t.bridge.start_by(t.now, &conf(), leg(9)),
            Admission::Started { meeting: M1 }
        );
        assert_eq!(
            t.actions(),
            [
                started(M1),
                join(9),
                announce(9, Sound::JoinedMeeting),
                join(1),
                announce(1, Sound::MeetingStarting),
            ]
        );
    }

    #[test]
    fn organizer_alone_starts_an_empty_meeting() {
        let mut t = given();
        assert_eq!(t.start(9), Admission::Started { meeting: M1 });
        assert_eq!(
            t.actions(),
            [started(M1), join(9), announce(9, Sound::JoinedMeeting)]
        );
        assert_eq!(t.bridge.participants(&conf()), 1);
    }

    #[test]
    fn pin_required_named_caller_waits() {
        let mut t = given();
        assert_eq!(t.admit(1, NAMED, PIN), Admission::Lobby { meeting: M1 });
        assert!(!t.bridge.is_started(&conf()));
    }

    #[test]
    fn anonymous_caller_cannot_start_without_pin() {
        let mut t = given();
        assert_eq!(t.admit(1, ANON, NO_PIN), Admission::Lobby { meeting: M1 });
        assert_eq!(t.actions(), [Action::ToLobby { leg: leg(1) }]);
        assert!(!t.bridge.is_started(&conf()));
    }

    #[test]
    fn anonymous_caller_starts_when_tenant_allows() {
        let mut t = given().anonymous(1);
        let allow = Rules {
            requires_pin: false,
            allow_anonymous_start: true,
        };
        assert_eq!(t.admit(2, ANON, allow), Admission::Started { meeting: M1 });
        assert_eq!(
            t.actions(),
            [
                started(M1),
                join(2),
                announce(2, Sound::JoinedMeeting),
                join(1),
                announce(1, Sound::MeetingStarting),
            ]
        );
        // Allowing anonymous starts does not let anyone past an organizer's PIN.
        let mut t = given();
        let pin_but_allow = Rules {
            requires_pin: true,
            allow_anonymous_start: true,
        };
        assert_eq!(
            t.admit(1, ANON, pin_but_allow),
            Admission::Lobby { meeting: M1 }
        );
        assert_eq!(
            t.admit(2, NAMED, pin_but_allow),
            Admission::Lobby { meeting: M1 }
        );
    }

    #[test]
    fn no_pin_first_named_caller_starts_and_anonymous_before_them_join() {
        let mut t = given().admitted(1, ANON, NO_PIN).admitted(2, ANON, NO_PIN);
        assert_eq!(t.bridge.lobby(&conf()), legs(&[1, 2]));

        assert_eq!(
            t.admit(3, NAMED, NO_PIN),
            Admission::Started { meeting: M1 }
        );
        assert_eq!(
            t.actions(),
            [
                started(M1),
                join(3),
                announce(3, Sound::JoinedMeeting),
                join(1),
                announce(1, Sound::MeetingStarting),
                join(2),
                announce(2, Sound::MeetingStarting),
            ]
        );
        // The next named caller just joins.
        assert_eq!(t.admit(4, NAMED, NO_PIN), Admission::Joined { meeting: M1 });
        assert_eq!(t.bridge.participants(&conf()), 4);
    }

    #[test]
    fn arrival_after_start_joins_at_once_with_join_tone() {
        let mut t = given().organizer(9).caller(1);
        assert_eq!(t.admit(2, ANON, PIN), Admission::Joined { meeting: M1 });
        assert_eq!(
            t.actions(),
            [
                join(2),
                announce(2, Sound::JoinedMeeting),
                tone(2, Sound::JoinTone),
            ]
        );
        assert_eq!(t.bridge.participants(&conf()), 3);
    }

    #[test]
    fn leave_tone_to_the_others() {
        let mut t = given().organizer(9).caller(1).caller(2);
        assert!(t.leave(1));
        assert_eq!(
            t.actions(),
            [
                Action::LeaveMix {
                    leg: leg(1),
                    meeting: M1
                },
                tone(1, Sound::LeaveTone),
            ]
        );
        assert_eq!(t.bridge.participants(&conf()), 2);
        assert_eq!(t.bridge.meeting_of(leg(1)), None);
    }

    #[test]
    fn no_tones_when_notifications_off() {
        let mut t = given_with(config(|c| c.notify_tones = false))
            .organizer(9)
            .caller(1);
        assert_eq!(t.admit(2, NAMED, PIN), Admission::Joined { meeting: M1 });
        assert_eq!(t.actions(), [join(2), announce(2, Sound::JoinedMeeting)]);
        assert!(t.leave(2));
        assert_eq!(
            t.actions(),
            [Action::LeaveMix {
                leg: leg(2),
                meeting: M1
            }]
        );
    }

    #[test]
    fn leaving_the_lobby_keeps_the_order_of_the_rest() {
        let mut t = given().caller(1).caller(2).caller(3).left(2);
        assert_eq!(t.bridge.lobby(&conf()), legs(&[1, 3]));
        assert_eq!(t.actions(), []);
    }

    #[test]
    fn last_leaves_meeting_ends_and_is_forgotten() {
        let mut t = given().organizer(9).caller(1).left(9);
        assert!(t.leave(1));
        assert_eq!(
            t.actions(),
            [
                Action::LeaveMix {
                    leg: leg(1),
                    meeting: M1
                },
                ended(EndReason::LastLeft),
            ]
        );
        assert!(!t.bridge.is_started(&conf()));
        assert_eq!(t.bridge.participants(&conf()), 0);
        assert_eq!(t.bridge.meeting_of(leg(1)), None);
        assert_eq!(t.bridge.stats().started_meetings, 0);

        // The next caller opens a new meeting, waiting again.
        assert_eq!(
            t.admit(2, NAMED, PIN),
            Admission::Lobby {
                meeting: MeetingId(2)
            }
        );
    }

    #[test]
    fn empty_lobby_meeting_is_forgotten() {
        let mut t = given().caller(1).caller(2).left(1);
        assert!(t.leave(2));
        assert_eq!(t.actions(), []);
        assert_eq!(t.bridge.lobby(&conf()), []);
        assert_eq!(t.bridge.stats().waiting_meetings, 0);
        assert_eq!(t.bridge.poll_timeout(), None);
        assert_eq!(
            t.start(9),
            Admission::Started {
                meeting: MeetingId(2)
            }
        );
    }

    #[test]
    fn full_counts_lobby_and_meeting_and_keeps_a_seat_for_the_starter() {
        let mut t = given_with(config(|c| c.max_participants = 3))
            .caller(1)
            .caller(2);
        // Two wait; the third seat is the organizer's.
        assert_eq!(t.admit(3, NAMED, PIN), Admission::Full);
        assert_eq!(t.actions(), []);
        assert_eq!(t.bridge.lobby(&conf()), legs(&[1, 2]));
        assert_eq!(t.bridge.meeting_of(leg(3)), None);

        assert_eq!(t.start(9), Admission::Started { meeting: M1 });
        assert_eq!(t.bridge.participants(&conf()), 3);
        t.actions();

        assert_eq!(t.admit(4, NAMED, PIN), Admission::Full);
        assert_eq!(t.start(8), Admission::Full);
        assert_eq!(t.actions(), []);

        assert!(t.leave(1));
        t.actions();
        assert_eq!(t.admit(4, NAMED, PIN), Admission::Joined { meeting: M1 });
        assert_eq!(t.bridge.stats().refused_full, 3);
    }

    #[test]
    fn full_lobby_still_lets_a_no_pin_starter_in() {
        let mut t = given_with(config(|c| c.max_participants = 3))
            .admitted(1, ANON, NO_PIN)
            .admitted(2, ANON, NO_PIN);
        assert_eq!(t.admit(3, ANON, NO_PIN), Admission::Full);
        assert_eq!(
            t.admit(4, NAMED, NO_PIN),
            Admission::Started { meeting: M1 }
        );
        assert_eq!(t.bridge.participants(&conf()), 3);
    }

    #[test]
    fn full_first_caller_leaves_no_meeting_behind() {
        let mut t = given_with(config(|c| c.max_participants = 1));
        assert_eq!(t.admit(1, NAMED, PIN), Admission::Full);
        assert_eq!(t.bridge.stats().waiting_meetings, 0);
        assert_eq!(
            t.start(9),
            Admission::Started {
                meeting: MeetingId(2)
            }
        );
    }

    #[test]
    fn organizer_leave_continues_by_default() {
        let mut t = given().organizer(9).caller(1).caller(2).left(9);
        assert_eq!(t.bridge.poll_timeout(), None);
        assert_eq!(t.tick(3600 * SEC), []);
        assert_eq!(t.bridge.participants(&conf()), 2);
    }

    #[test]
    fn organizer_leave_ends_meeting_after_grace() {
        let grace = 120 * SEC;
        let mut t = given_with(config(|c| {
            c.organizer_leave = OrganizerLeavePolicy::EndAfter(grace)
        }))
        .organizer(9)
        .caller(1)
        .caller(2)
        .after(10 * SEC);
        assert!(t.leave(9));
        assert_eq!(
            t.actions(),
            [
                Action::LeaveMix {
                    leg: leg(9),
                    meeting: M1
                },
                tone(9, Sound::LeaveTone),
            ]
        );
        assert_eq!(t.bridge.poll_timeout(), Some(t.t0 + 10 * SEC + grace));

        assert_eq!(t.tick(grace - SEC), []);
        assert_eq!(t.bridge.participants(&conf()), 2);
        assert_eq!(
            t.tick(SEC),
            [
                Action::End { leg: leg(1) },
                Action::End { leg: leg(2) },
                ended(EndReason::OrganizerLeft),
            ]
        );
        assert!(!t.bridge.is_started(&conf()));
        assert_eq!(t.bridge.meeting_of(leg(1)), None);
        assert_eq!(t.bridge.poll_timeout(), None);
        // The server's BYE comes back as a leave: already forgotten, a no-op.
        assert!(!t.leave(1));
        assert_eq!(t.actions(), []);
        let s = t.bridge.stats();
        assert_eq!((s.meetings_ended_by_organizer_leave, s.ended_legs), (1, 2));
    }

    #[test]
    fn organizer_return_within_grace_cancels_the_end() {
        let mut t = given_with(config(|c| {
            c.organizer_leave = OrganizerLeavePolicy::EndAfter(120 * SEC)
        }))
        .organizer(9)
        .caller(1)
        .left(9)
        .after(60 * SEC);
        // The organizer redials on a new leg and enters the PIN again.
        assert_eq!(t.start(10), Admission::Joined { meeting: M1 });
        assert_eq!(
            t.actions(),
            [
                join(10),
                announce(10, Sound::JoinedMeeting),
                tone(10, Sound::JoinTone),
            ]
        );
        assert_eq!(t.bridge.poll_timeout(), None);
        assert_eq!(t.tick(3600 * SEC), []);
        assert_eq!(t.bridge.participants(&conf()), 2);
    }

    #[test]
    fn a_caller_arriving_does_not_cancel_the_grace() {
        let mut t = given_with(config(|c| {
            c.organizer_leave = OrganizerLeavePolicy::EndAfter(120 * SEC)
        }))
        .organizer(9)
        .caller(1)
        .left(9)
        .caller(2);
        assert_eq!(
            t.tick(120 * SEC),
            [
                Action::End { leg: leg(1) },
                Action::End { leg: leg(2) },
                ended(EndReason::OrganizerLeft),
            ]
        );
    }

    #[test]
    fn grace_waits_for_the_last_organizer_leg() {
        let mut t = given_with(config(|c| {
            c.organizer_leave = OrganizerLeavePolicy::EndAfter(120 * SEC)
        }))
        .organizer(9)
        .organizer(10)
        .caller(1)
        .left(9);
        assert_eq!(t.bridge.poll_timeout(), None);
        assert!(t.leave(10));
        assert_eq!(t.bridge.poll_timeout(), Some(t.now + 120 * SEC));
    }

    #[test]
    fn meeting_started_by_a_caller_has_no_organizer_to_lose() {
        let mut t = given_with(config(|c| {
            c.organizer_leave = OrganizerLeavePolicy::EndAfter(SEC)
        }))
        .admitted(1, NAMED, NO_PIN)
        .admitted(2, NAMED, NO_PIN)
        .left(1);
        assert_eq!(t.bridge.poll_timeout(), None);
        assert_eq!(t.tick(3600 * SEC), []);
        assert_eq!(t.bridge.participants(&conf()), 1);
    }

    #[test]
    fn mute_per_participant() {
        let mut t = given().organizer(9).caller(1);
        assert_eq!(t.bridge.muted(leg(1)), Some(false));
        assert!(t.bridge.set_muted(t.now, leg(1), true));
        assert_eq!(
            t.actions(),
            [Action::Muted {
                leg: leg(1),
                muted: true
            }]
        );
        assert_eq!(t.bridge.muted(leg(1)), Some(true));
        assert_eq!(t.bridge.muted(leg(9)), Some(false));

        // No change, no action.
        assert!(t.bridge.set_muted(t.now, leg(1), true));
        assert_eq!(t.actions(), []);

        assert!(t.bridge.set_muted(t.now, leg(1), false));
        assert_eq!(
            t.actions(),
            [Action::Muted {
                leg: leg(1),
                muted: false
            }]
        );

        // Unknown legs: nothing.
        assert!(!t.bridge.set_muted(t.now, leg(42), true));
        assert_eq!(t.bridge.muted(leg(42)), None);
        assert_eq!(t.actions(), []);
    }

    #[test]
    fn mute_is_only_for_a_started_meeting() {
        let mut t = given().caller(1);
        assert!(!t.bridge.set_muted(t.now, leg(1), true));
        assert_eq!(t.bridge.muted(leg(1)), None);
        assert_eq!(t.actions(), []);
    }

    #[test]
    fn a_leg_is_in_one_meeting_only() {
        let mut t = given().caller(1);
        let other_admit = t.bridge.admit(t.now, leg(1), &other(), NAMED, PIN);
        assert_eq!(other_admit, Admission::AlreadyIn { meeting: M1 });
        assert_eq!(
            t.bridge.start(t.now, &other(), leg(1)),
            Admission::AlreadyIn { meeting: M1 }
        );
        assert_eq!(t.admit(1, NAMED, PIN), Admission::AlreadyIn { meeting: M1 });
        assert_eq!(t.actions(), []);
        assert_eq!(t.bridge.lobby(&conf()), legs(&[1]));
        assert_eq!(
            t.bridge.stats().waiting_meetings,
            1,
            "no meeting for other()"
        );

        let mut t = given().organizer(9);
        assert_eq!(t.start(9), Admission::AlreadyIn { meeting: M1 });
        assert_eq!(t.admit(9, NAMED, PIN), Admission::AlreadyIn { meeting: M1 });
        assert_eq!(t.actions(), []);
        assert_eq!(t.bridge.participants(&conf()), 1);
    }

    #[test]
    fn unknown_leg_leave_is_a_noop() {
        let mut t = given().organizer(9).caller(1);
        assert!(!t.leave(42));
        assert_eq!(t.actions(), []);
        assert_eq!(t.bridge.participants(&conf()), 2);
        assert_eq!(t.bridge.stats().leaves, 0);
    }

    #[test]
    fn lobby_callers_are_reminded_until_the_meeting_starts() {
        let mut t = given().caller(1).after(30 * SEC).caller(2);
        assert_eq!(t.bridge.poll_timeout(), Some(t.t0 + 60 * SEC));
        assert_eq!(t.tick(30 * SEC), [announce(1, Sound::WaitingForOrganizer)]);
        assert_eq!(t.bridge.poll_timeout(), Some(t.t0 + 90 * SEC));
        assert_eq!(t.tick(30 * SEC), [announce(2, Sound::WaitingForOrganizer)]);
        assert_eq!(t.start(9), Admission::Started { meeting: M1 });
        assert_eq!(t.bridge.poll_timeout(), None);

        let t = given_with(config(|c| c.lobby_reminder = None)).caller(1);
        assert_eq!(t.bridge.poll_timeout(), None);
    }

    #[test]
    fn meetings_of_different_conferences_are_independent() {
        let mut t = given().organizer(9).caller(1);
        assert_eq!(
            t.bridge.admit(t.now, leg(2), &other(), NAMED, PIN),
            Admission::Lobby {
                meeting: MeetingId(2)
            }
        );
        assert!(t.leave(9));
        assert!(t.leave(1));
        t.actions();
        assert!(!t.bridge.is_started(&conf()));
        assert_eq!(t.bridge.lobby(&other()), legs(&[2]));
        assert_eq!(t.bridge.conference_of(leg(2)), Some(&other()));
    }

    #[test]
    fn stats_count_what_happened() {
        let mut t = given().caller(1).caller(2).organizer(9).caller(3).left(1);
        let s = t.bridge.stats();
        assert_eq!(
            s,
            Stats {
                meetings_started: 1,
                lobby_waits: 2,
                joins: 4,
                leaves: 1,
                started_meetings: 1,
                in_meetings: 3,
                ..Stats::default()
            }
        );
        t = t.left(2).left(3).left(9);
        let s = t.bridge.stats();
        assert_eq!((s.meetings_ended, s.leaves, s.in_meetings), (1, 4, 0));
    }

    /// Start, joins, leaves and the end are logged at info with leg and conference ids.
    #[test]
    fn logs_name_legs_and_conferences() {
        #[derive(Clone, Default)]
        struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Capture {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("not poisoned").extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            given().caller(1).organizer(9).left(1).left(9);
        });
        let text =
            String::from_utf8(capture.0.lock().expect("not poisoned").clone()).expect("utf-8 logs");
        for expected in [
            "caller waits in the lobby",
            "lobby caller joins the started meeting",
            "meeting started",
            "left the meeting",
            "meeting ended",
            "conference=4711001",
            "meeting=m1",
            "leg=1",
            "leg=9",
        ] {
            assert!(text.contains(expected), "{expected:?} not in logs:\n{text}");
        }
    }
}
