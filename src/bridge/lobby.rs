//! The lobby of a meeting that has not started: who waits, in arrival order, and when each
//! waiting caller next hears the "waiting for the organizer" reminder.
//!
//! Owned by [`super::meeting`]'s `Meeting` while it waits for its organizer; everyone is let go
//! at once, in arrival order, by [`Lobby::release`] when the meeting starts. Sans-IO like its
//! owner: the reminder instants are data, reported through [`Lobby::next_reminder`] and acted
//! on by [`Lobby::remind`] with an explicit `now`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::sip::endpoint::LegId;

/// One caller waiting in the lobby.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiter {
    pub leg: LegId,
    /// When the caller entered the lobby (for "waited N s" in the logs).
    pub since: Instant,
    /// When the caller next hears the reminder; `None` when reminders are off.
    next_reminder: Option<Instant>,
}

/// Callers waiting for a meeting to start, oldest first.
#[derive(Debug, Default)]
pub struct Lobby {
    waiters: VecDeque<Waiter>,
}

impl Lobby {
    pub fn new() -> Lobby {
        Lobby::default()
    }

    /// `leg` starts waiting at `now`, behind everyone already here. With `reminder`, it hears
    /// the reminder every `reminder` from now on (`None` or zero: never).
    pub fn push(&mut self, now: Instant, leg: LegId, reminder: Option<Duration>) {
        let next_reminder = reminder.filter(|d| !d.is_zero()).map(|d| now + d);
        self.waiters.push_back(Waiter {
            leg,
            since: now,
            next_reminder,
        });
    }

    /// Takes `leg` out of the lobby (it hung up, or is starting the meeting itself); the others
    /// keep their order.
    pub fn remove(&mut self, leg: LegId) -> Option<Waiter> {
        let at = self.waiters.iter().position(|w| w.leg == leg)?;
        self.waiters.remove(at)
    }

    /// Empties the lobby, oldest arrival first.
    pub fn release(&mut self) -> impl Iterator<Item = Waiter> + '_ {
        self.waiters.drain(..)
    }

    pub fn contains(&self, leg: LegId) -> bool {
        self.waiters.iter().any(|w| w.leg == leg)
    }

    pub fn len(&self) -> usize {
        self.waiters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiters.is_empty()
    }

    /// The waiting legs, oldest arrival first.
    pub fn legs(&self) -> impl Iterator<Item = LegId> + '_ {
        self.waiters.iter().map(|w| w.leg)
    }

    /// The earliest pending reminder. A scan: lobbies hold at most `max_participants` callers
    /// and this runs once per driver loop, not per media packet.
    pub fn next_reminder(&self) -> Option<Instant> {
        self.waiters.iter().filter_map(|w| w.next_reminder).min()
    }

    /// Calls `due` for every caller whose reminder is due at `now`, in arrival order, and
    /// schedules their next one `interval` later. A driver that wakes late plays one reminder,
    /// not the backlog: the next is then counted from `now`.
    pub fn remind(&mut self, now: Instant, interval: Duration, mut due: impl FnMut(LegId)) {
        for w in &mut self.waiters {
            let Some(at) = w.next_reminder else { continue };
            if at > now {
                continue;
            }
            due(w.leg);
            let next = at + interval;
            w.next_reminder = Some(if next > now { next } else { now + interval });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn lobby(t0: Instant, legs: &[u64]) -> Lobby {
        legs.iter().fold(Lobby::new(), |mut l, &n| {
            l.push(t0 + Duration::from_secs(n), LegId(n), Some(MINUTE));
            l
        })
    }

    #[test]
    fn release_keeps_arrival_order_without_the_removed() {
        let t0 = Instant::now();
        let mut l = lobby(t0, &[3, 1, 2, 5]);
        assert_eq!(l.remove(LegId(2)).map(|w| w.leg), Some(LegId(2)));
        assert_eq!(l.remove(LegId(2)), None);
        let out: Vec<LegId> = l.release().map(|w| w.leg).collect();
        assert_eq!(out, [LegId(3), LegId(1), LegId(5)]);
        assert!(l.is_empty());
    }

    #[test]
    fn reminders_every_interval_per_caller_and_no_backlog() {
        let t0 = Instant::now();
        let mut l = lobby(t0, &[0, 10]);
        assert_eq!(l.next_reminder(), Some(t0 + MINUTE));

        let mut heard = Vec::new();
        l.remind(t0 + MINUTE, MINUTE, |leg| heard.push(leg));
        assert_eq!(heard, [LegId(0)]);
        assert_eq!(
            l.next_reminder(),
            Some(t0 + MINUTE + Duration::from_secs(10))
        );

        // The driver oversleeps by five minutes: one reminder each, the next a minute later.
        heard.clear();
        let late = t0 + 6 * MINUTE;
        l.remind(late, MINUTE, |leg| heard.push(leg));
        assert_eq!(heard, [LegId(0), LegId(10)]);
        assert_eq!(l.next_reminder(), Some(late + MINUTE));
    }

    #[test]
    fn no_reminders_when_off() {
        let t0 = Instant::now();
        let mut l = Lobby::new();
        l.push(t0, LegId(1), None);
        l.push(t0, LegId(2), Some(Duration::ZERO));
        assert_eq!(l.next_reminder(), None);
    }
}
