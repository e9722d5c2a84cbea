//! Who calls where: the calls of a run, assigned to meetings and lobby-only conferences.
//!
//! Meeting callers go round-robin over the meetings, so each meeting's first caller (its
//! organizer, who keys `*`, the PIN and `#`) calls early and the others spread over the
//! ramp. Lobby-only callers are interleaved evenly with them and wait in conferences whose
//! organizer never comes, in rooms as large as the meetings.

use super::listen::{Expect, LOBBY_TONE_HZ, participant_tone};

/// A conference to call: its ID, and the organizer's PIN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conference {
    pub id: String,
    pub pin: String,
}

/// What one caller does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Starts meeting `meeting` with the PIN.
    Organizer { meeting: usize },
    /// Waits in the lobby of meeting `meeting` until it starts, then talks.
    Participant { meeting: usize },
    /// Waits in lobby room `room` (a conference whose organizer never comes).
    Lobby { room: usize },
}

/// One planned call.
#[derive(Clone, Debug)]
pub struct PlannedCall {
    pub role: Role,
    /// Index into the conference list.
    pub conference: usize,
    /// The tone it sends (in tone mode).
    pub tone_hz: u32,
    pub expect: Expect,
}

/// The calls of a run and how many conferences they need.
#[derive(Clone, Debug)]
pub struct Plan {
    pub calls: Vec<PlannedCall>,
    pub meetings: usize,
    pub lobby_rooms: usize,
}

impl Plan {
    /// `calls` callers; `lobby_fraction` of them lobby-only, the rest in `meetings` meetings.
    pub fn new(calls: usize, meetings: usize, lobby_fraction: f64) -> Result<Plan, String> {
        if !(0.0..=1.0).contains(&lobby_fraction) {
            return Err(format!(
                "lobby fraction {lobby_fraction} is not between 0 and 1"
            ));
        }
        let lobby_calls = (calls as f64 * lobby_fraction).round() as usize;
        let meeting_calls = calls - lobby_calls;
        if meeting_calls > 0 && meetings == 0 {
            return Err("calls in meetings need --meetings 1 or more".into());
        }
        let meetings = meetings.min(meeting_calls);
        let room_size = if meetings > 0 {
            meeting_calls.div_ceil(meetings)
        } else {
            10
        };
        let lobby_rooms = lobby_calls.div_ceil(room_size);
        // Meeting sizes, for the tones each participant listens for.
        let size = |m: usize| meeting_calls / meetings + usize::from(m < meeting_calls % meetings);
        let mut out = Vec::with_capacity(calls);
        let (mut lobby_done, mut meeting_done) = (0usize, 0usize);
        for i in 0..calls {
            // Bresenham: caller i is lobby-only when the running share falls behind.
            let lobby_due = ((i + 1) as f64 * lobby_fraction).round() as usize;
            if lobby_done < lobby_due.min(lobby_calls) {
                let room = lobby_done % lobby_rooms;
                lobby_done += 1;
                out.push(PlannedCall {
                    role: Role::Lobby { room },
                    conference: meetings + room,
                    tone_hz: LOBBY_TONE_HZ,
                    expect: Expect::Lobby,
                });
                continue;
            }
            let meeting = meeting_done % meetings;
            let position = meeting_done / meetings;
            meeting_done += 1;
            let own = participant_tone(position);
            let others = (0..size(meeting))
                .map(participant_tone)
                .filter(|&hz| hz != own)
                .collect();
            out.push(PlannedCall {
                role: if position == 0 {
                    Role::Organizer { meeting }
                } else {
                    Role::Participant { meeting }
                },
                conference: meeting,
                tone_hz: own,
                expect: Expect::Meeting { own, others },
            });
        }
        Ok(Plan {
            calls: out,
            meetings,
            lobby_rooms,
        })
    }

    /// File mode: meeting callers listen for audible audio from the others instead of their
    /// tones (everyone sends the same recording, so tones cannot tell them apart).
    pub fn with_file_audio(mut self) -> Plan {
        for call in &mut self.calls {
            if let Expect::Meeting { .. } = call.expect {
                call.expect = Expect::MeetingAudio;
            }
        }
        self
    }

    /// Conferences the plan needs: the meetings first, then the lobby rooms.
    pub fn conferences(&self) -> usize {
        self.meetings + self.lobby_rooms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_in_the_lobby_half_in_meetings_of_ten() {
        let plan = Plan::new(200, 10, 0.5).unwrap();
        assert_eq!(
            (plan.meetings, plan.lobby_rooms, plan.conferences()),
            (10, 10, 20)
        );
        let lobby = plan
            .calls
            .iter()
            .filter(|c| matches!(c.role, Role::Lobby { .. }))
            .count();
        assert_eq!(lobby, 100);
        let organizers: Vec<_> = plan
            .calls
            .iter()
            .filter(|c| matches!(c.role, Role::Organizer { .. }))
            .collect();
        assert_eq!(organizers.len(), 10);
        // Every meeting has 10 callers, each listening for the 9 others' tones.
        for m in 0..10 {
            let members: Vec<_> = plan.calls.iter().filter(|c| c.conference == m).collect();
            assert_eq!(members.len(), 10);
            for c in members {
                let Expect::Meeting { own, others } = &c.expect else {
                    panic!()
                };
                assert_eq!(others.len(), 9);
                assert!(!others.contains(own));
            }
        }
        // Organizers call among the first: the first 20 calls hold all 10.
        assert!(
            plan.calls[..20]
                .iter()
                .filter(|c| matches!(c.role, Role::Organizer { .. }))
                .count()
                == 10
        );
    }

    #[test]
    fn all_lobby_or_no_meetings() {
        let plan = Plan::new(25, 0, 1.0).unwrap();
        assert_eq!((plan.meetings, plan.lobby_rooms), (0, 3));
        assert!(Plan::new(10, 0, 0.5).is_err());
        assert!(Plan::new(10, 2, 1.5).is_err());
    }

    #[test]
    fn file_audio_changes_what_meeting_callers_listen_for_only() {
        let plan = Plan::new(12, 2, 0.34).unwrap().with_file_audio();
        let lobby = plan
            .calls
            .iter()
            .filter(|c| matches!(c.expect, Expect::Lobby))
            .count();
        let audio = plan
            .calls
            .iter()
            .filter(|c| matches!(c.expect, Expect::MeetingAudio))
            .count();
        assert_eq!((lobby, audio), (4, 8));
    }
}
