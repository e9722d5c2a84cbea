//! PINs: generation (CSPRNG), argon2id + pepper hashing, masking, constant-time verification.
//!
//! (Issue 4 fills this in; the `Pin` type below is shared by the IVR.)

use std::fmt;

/// A PIN in clear. It exists only while a PIN is being created, delivered or checked; its
/// `Debug` and `Display` never show the digits, so it cannot leak into logs by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Pin(String);

impl Pin {
    /// Wraps digits the caller keyed in or a generator produced.
    pub fn new(digits: impl Into<String>) -> Pin {
        Pin(digits.into())
    }

    /// The digits, for hashing or for the one place that shows them (creation, email).
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(*****)")
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("*****")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_never_print_their_digits() {
        let p = Pin::new("48213");
        assert_eq!(format!("{p:?} {p}"), "Pin(*****) *****");
        assert_eq!(p.expose(), "48213");
    }
}
