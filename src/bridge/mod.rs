//! Meetings: who waits in the lobby, who is in which started meeting, and the rules for who
//! may start one. Sans-IO; the server performs the actions.
//!
//! [`Bridge`] is the one entry point: the IVR hands it callers ([`Bridge::admit`]) and
//! verified organizers ([`Bridge::start`]), the call layer reports hang-ups
//! ([`Bridge::leave`]), and the server drains [`Bridge::poll_action`] into the media engine
//! and the calls. `meeting` holds the rules and the facade, `lobby` the waiting line.

pub mod lobby;
pub mod meeting;

pub use meeting::{
    Action, Admission, Bridge, BridgeConfig, Caller, EndReason, MeetingId, OrganizerLeavePolicy,
    Rules, Stats,
};
