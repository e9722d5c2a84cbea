//! The result of a load run: counts, setup latencies, RTP quality and what callers heard,
//! as a human-readable table or JSON, and the capacity rule it is judged by.

use std::fmt::{self, Write as _};
use std::time::Duration;

use serde::Serialize;

use super::listen::{CallMedia, SendAudio};
use super::plan::Role;
use super::stats::Summary;

/// The capacity rule (issue 6): no failed call, p99 interarrival jitter at most 5 ms, no gap
/// between packets over 60 ms, packet loss at most 0.1 %.
pub const MAX_JITTER_P99_MS: f64 = 5.0;
pub const MAX_GAP_MS: f64 = 60.0;
pub const MAX_LOSS_PERCENT: f64 = 0.1;
/// Failed calls listed in the report, at most.
const LISTED_FAILURES: usize = 20;

/// What happened to one call (input to [`Report::new`]).
#[derive(Debug)]
pub struct CallOutcome {
    pub role: Role,
    pub attempted: bool,
    pub invite_to_200: Option<Duration>,
    /// The 200 OK's arrival.
    pub answered_at: Option<std::time::Instant>,
    pub invite_to_meeting: Option<Duration>,
    pub failure: Option<String>,
    /// The receive side, for calls that were answered.
    pub media: Option<CallMedia>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// What the callers sent, which decides what the meeting check can tell.
    pub audio: Audio,
    pub calls: Calls,
    pub setup_ms: Setup,
    pub rtp: Rtp,
    pub heard: Heard,
    pub quality: Quality,
    /// The first failed calls and why.
    pub failures: Vec<Failure>,
    /// Wall-clock length of the run, seconds.
    pub wall_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Audio {
    /// `tone` (a tone per caller) or `file` (`--audio-file`, looped).
    pub mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

impl Audio {
    fn of(send: &SendAudio) -> Audio {
        match send {
            SendAudio::Tones => Audio {
                mode: "tone",
                file: None,
            },
            SendAudio::File { path, .. } => Audio {
                mode: "file",
                file: Some(path.clone()),
            },
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Calls {
    pub attempted: usize,
    pub established: usize,
    pub failed: usize,
    pub organizers: usize,
    pub meeting_callers: usize,
    pub lobby_callers: usize,
    /// Meeting callers (organizers included) that heard the meeting.
    pub in_meeting: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Setup {
    pub invite_to_200: Summary,
    pub invite_to_meeting: Summary,
}

#[derive(Clone, Debug, Serialize)]
pub struct Rtp {
    /// Packets the load generator sent (all calls).
    pub sent: u64,
    /// What the calls received from the server.
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub loss_percent: f64,
    /// RFC 3550 interarrival jitter at the end of each call, ms.
    pub jitter_ms: Summary,
    /// Each call's largest gap between two packets, ms.
    pub max_gap_ms: Summary,
    /// When each call's largest gap ended, ms after its 200 OK: where in the call flow the
    /// gaps are (greeting 0–1.6 s, "press star" to 6.3 s, hold music after; meeting start).
    pub max_gap_at_ms: Summary,
    /// Datagrams that were not RTP.
    pub malformed: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Heard {
    pub meeting_check: MeetingCheck,
    pub lobby_checked: usize,
    pub lobby_ok: usize,
    pub meeting_checked: usize,
    pub meeting_ok: usize,
    /// Every established caller heard what it should.
    pub all_ok: bool,
}

/// What a meeting caller must have heard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MeetingCheck {
    /// Tone mode: another participant's tone, and not its own (N−1 mixing).
    OthersTonesNotOwn,
    /// File mode: audible audio from the others; whether it hears itself is not checked.
    OthersAudible,
}

#[derive(Clone, Debug, Serialize)]
pub struct Quality {
    /// All four rules hold.
    pub pass: bool,
    pub no_failed_calls: bool,
    pub jitter_p99_ok: bool,
    pub gaps_ok: bool,
    pub loss_ok: bool,
    pub max_jitter_p99_ms: f64,
    pub max_gap_ms: f64,
    pub max_loss_percent: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    pub call: usize,
    pub role: String,
    pub reason: String,
}

impl Report {
    pub fn new(audio: &SendAudio, outcomes: Vec<CallOutcome>, sent: u64, wall: Duration) -> Report {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let count = |f: &dyn Fn(&CallOutcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
        let calls = Calls {
            attempted: count(&|o| o.attempted),
            established: count(&|o| o.invite_to_200.is_some()),
            failed: count(&|o| o.failure.is_some()),
            organizers: count(&|o| matches!(o.role, Role::Organizer { .. })),
            meeting_callers: count(&|o| !matches!(o.role, Role::Lobby { .. })),
            lobby_callers: count(&|o| matches!(o.role, Role::Lobby { .. })),
            in_meeting: count(&|o| o.invite_to_meeting.is_some()),
        };
        let setup = Setup {
            invite_to_200: Summary::of(
                &outcomes
                    .iter()
                    .filter_map(|o| o.invite_to_200)
                    .map(ms)
                    .collect::<Vec<_>>(),
            ),
            invite_to_meeting: Summary::of(
                &outcomes
                    .iter()
                    .filter_map(|o| o.invite_to_meeting)
                    .map(ms)
                    .collect::<Vec<_>>(),
            ),
        };
        let media: Vec<(&CallOutcome, &CallMedia)> = outcomes
            .iter()
            .filter_map(|o| o.media.as_ref().map(|m| (o, m)))
            .collect();
        let (expected, received, lost, malformed) =
            media.iter().fold((0, 0, 0, 0), |acc, (_, m)| {
                (
                    acc.0 + m.stats.expected(),
                    acc.1 + m.stats.received(),
                    acc.2 + m.stats.lost(),
                    acc.3 + m.malformed,
                )
            });
        let loss_percent = if expected == 0 {
            0.0
        } else {
            lost as f64 * 100.0 / expected as f64
        };
        let rtp = Rtp {
            sent,
            expected,
            received,
            lost,
            loss_percent,
            jitter_ms: Summary::of(
                &media
                    .iter()
                    .map(|(_, m)| m.stats.jitter_ms())
                    .collect::<Vec<_>>(),
            ),
            max_gap_ms: Summary::of(
                &media
                    .iter()
                    .map(|(_, m)| ms(m.stats.max_gap()))
                    .collect::<Vec<_>>(),
            ),
            max_gap_at_ms: Summary::of(
                &media
                    .iter()
                    .filter_map(|(o, m)| {
                        let end = m.stats.max_gap_end()?;
                        Some(ms(end.saturating_duration_since(o.answered_at?)))
                    })
                    .collect::<Vec<_>>(),
            ),
            malformed,
        };
        let mut heard = Heard {
            meeting_check: match audio {
                SendAudio::Tones => MeetingCheck::OthersTonesNotOwn,
                SendAudio::File { .. } => MeetingCheck::OthersAudible,
            },
            lobby_checked: 0,
            lobby_ok: 0,
            meeting_checked: 0,
            meeting_ok: 0,
            all_ok: true,
        };
        // Failed calls are listed before callers that heard the wrong thing.
        let mut failures = Vec::new();
        let mut unheard = Vec::new();
        for (call, o) in outcomes.iter().enumerate() {
            if let Some(reason) = &o.failure {
                failures.push(Failure {
                    call,
                    role: role_name(&o.role).into(),
                    reason: reason.clone(),
                });
            }
            let Some(m) = &o.media else { continue };
            let verdict = m.verdict();
            let lobby = matches!(o.role, Role::Lobby { .. });
            if lobby {
                heard.lobby_checked += 1;
                heard.lobby_ok += usize::from(verdict.ok);
            } else {
                heard.meeting_checked += 1;
                heard.meeting_ok += usize::from(verdict.ok);
            }
            if let Some(problem) = verdict.problem {
                heard.all_ok = false;
                unheard.push(Failure {
                    call,
                    role: role_name(&o.role).into(),
                    reason: problem,
                });
            }
        }
        failures.extend(unheard);
        failures.truncate(LISTED_FAILURES);
        let quality = Quality {
            no_failed_calls: calls.failed == 0 && calls.attempted == outcomes.len(),
            jitter_p99_ok: rtp.jitter_ms.p99 <= MAX_JITTER_P99_MS,
            gaps_ok: rtp.max_gap_ms.max <= MAX_GAP_MS,
            loss_ok: rtp.loss_percent <= MAX_LOSS_PERCENT,
            pass: false,
            max_jitter_p99_ms: MAX_JITTER_P99_MS,
            max_gap_ms: MAX_GAP_MS,
            max_loss_percent: MAX_LOSS_PERCENT,
        };
        let quality = Quality {
            pass: quality.no_failed_calls
                && quality.jitter_p99_ok
                && quality.gaps_ok
                && quality.loss_ok,
            ..quality
        };
        Report {
            audio: Audio::of(audio),
            calls,
            setup_ms: setup,
            rtp,
            heard,
            quality,
            failures,
            wall_s: wall.as_secs_f64(),
        }
    }
}

fn role_name(role: &Role) -> &'static str {
    match role {
        Role::Organizer { .. } => "organizer",
        Role::Participant { .. } => "participant",
        Role::Lobby { .. } => "lobby",
    }
}

fn yes(b: bool) -> &'static str {
    if b { "ok" } else { "FAIL" }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.calls;
        let mut s = String::new();
        let _ = match &self.audio.file {
            None => writeln!(s, "audio      tone per caller"),
            Some(file) => writeln!(
                s,
                "audio      file {file}, looped from a different point per caller"
            ),
        };
        let _ = writeln!(
            s,
            "calls      attempted {}  established {}  failed {}  (meeting {} incl. {} organizers, lobby {}; in meeting {})",
            c.attempted,
            c.established,
            c.failed,
            c.meeting_callers,
            c.organizers,
            c.lobby_callers,
            c.in_meeting
        );
        let _ = writeln!(
            s,
            "{:<28} {:>9} {:>9} {:>9} {:>7}",
            "", "p50", "p99", "max", "calls"
        );
        let row = |s: &mut String, name: &str, v: &Summary| {
            let _ = writeln!(
                s,
                "{name:<28} {:>9.1} {:>9.1} {:>9.1} {:>7}",
                v.p50, v.p99, v.max, v.count
            );
        };
        row(
            &mut s,
            "setup INVITE→200 (ms)",
            &self.setup_ms.invite_to_200,
        );
        row(
            &mut s,
            "setup INVITE→meeting (ms)",
            &self.setup_ms.invite_to_meeting,
        );
        row(&mut s, "RTP jitter (ms)", &self.rtp.jitter_ms);
        row(&mut s, "RTP largest gap (ms)", &self.rtp.max_gap_ms);
        row(
            &mut s,
            "  …ended, ms after the 200",
            &self.rtp.max_gap_at_ms,
        );
        let r = &self.rtp;
        let _ = writeln!(
            s,
            "RTP        sent {}  expected {}  received {}  lost {} ({:.3} %)",
            r.sent, r.expected, r.received, r.lost, r.loss_percent
        );
        let h = &self.heard;
        let meeting = match h.meeting_check {
            MeetingCheck::OthersTonesNotOwn => "others and not themselves",
            MeetingCheck::OthersAudible => {
                "others' audio (whether they hear themselves: not checked)"
            }
        };
        let _ = writeln!(
            s,
            "heard      lobby {}/{} hold music, meeting {}/{} {meeting}",
            h.lobby_ok, h.lobby_checked, h.meeting_ok, h.meeting_checked
        );
        let q = &self.quality;
        let _ = writeln!(
            s,
            "quality    {}: failed calls {}, jitter p99 ≤ {} ms {}, gaps ≤ {} ms {}, loss ≤ {} % {}",
            if q.pass { "PASS" } else { "FAIL" },
            yes(q.no_failed_calls),
            q.max_jitter_p99_ms,
            yes(q.jitter_p99_ok),
            q.max_gap_ms,
            yes(q.gaps_ok),
            q.max_loss_percent,
            yes(q.loss_ok)
        );
        for fl in &self.failures {
            let _ = writeln!(s, "  call {} ({}): {}", fl.call, fl.role, fl.reason);
        }
        let _ = write!(s, "wall time  {:.1} s", self.wall_s);
        f.write_str(&s)
    }
}
