//! Administration (issue 5): one [`Service`] holding every admin operation, and the faces over
//! it — the HTTP API ([`api`]), the `pinbridge admin` command line that is a client of that
//! API ([`client`]), the emails the operations queue ([`emails`]), and the users' own
//! self-service page ([`web`]).
//!
//! Why the CLI goes through HTTP: sled allows one process, so while `pinbridge serve` runs
//! nothing else may open the store. Every face reaches the same [`Service`], so a rule
//! (validation, masking, auditing, durability) is written once.

pub mod api;
pub mod client;
pub mod emails;
pub mod service;
pub mod web;

pub use service::{
    Actor, AdminError, AuditView, ConferenceIdReset, EmailOptions, EmailOutcome, EmailView,
    EnableUser, Enabled, LockoutView, PinReset, Service, SettingsPatch, UserView,
};
