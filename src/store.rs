//! The embedded store (sled): users, the conference-ID index, tenant settings, failed-attempt
//! counters and lockouts, and the audit log. Everything else reaches sled through here.
//!
//! (Issue 4 fills this in; the identifier types below are shared by the IVR and the bridge.)

use std::fmt;

/// A conference ID: the digits a caller keys in (or dials as the Request-URI user part).
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ConferenceId(pub String);

impl ConferenceId {
    /// A conference ID is 4 to 15 decimal digits; anything else is not one.
    pub fn parse(s: &str) -> Option<ConferenceId> {
        (4..=15).contains(&s.len()).then_some(())?;
        s.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| ConferenceId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConferenceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A user (organizer) identifier such as `amos.marble@contoso.com`.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct UserId(pub String);

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
