//! Email to users: PIN resets, new conference IDs, sign-in links. A message is queued in the
//! store first ([`crate::store::Store::enqueue_email`], durable before the operation that
//! caused it answers) and delivered afterwards, so a PIN reset is never lost to a slow or
//! dead SMTP server or a killed process.

use serde::{Deserialize, Serialize};

/// One message to send: plain text and HTML alternatives of the same content. It may carry a
/// PIN (a reset's one delivery): the store keeps the body only until it is delivered.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Email {
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

impl std::fmt::Debug for Email {
    /// The body may hold a PIN: never in a debug print.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Email")
            .field("to", &self.to)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}
