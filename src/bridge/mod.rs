//! Meetings: who waits in the lobby, who is in which started meeting, and the rules for who
//! may start one (`meeting`, `lobby`). Sans-IO; the server performs the actions.

pub mod lobby;
pub mod meeting;
