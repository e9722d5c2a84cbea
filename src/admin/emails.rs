//! The messages admin operations send, composed as [`Email`] values (plain text and HTML of
//! the same content). Pure functions: the service queues what they return with
//! `Store::enqueue_email`, and delivery (SMTP or the outbox folder) is `notify`'s business.
//!
//! This is one of the few places a PIN's digits leave their [`Pin`] wrapper: the email is
//! its one delivery besides the response that created it.

use crate::notify::Email;
use crate::pin::Pin;
use crate::store::User;

/// Welcome on enable: the conference ID and the PIN.
pub fn welcome(user: &User, pin: &Pin, to: &str, dial_in: &[String]) -> Email {
    compose(
        to,
        "Your audio conferencing details",
        user,
        &[
            "You can now hold meetings that people join by phone.".to_string(),
            format!("Conference ID: {}", user.conference_id),
            format!("Organizer PIN: {}", pin.expose()),
            "To start your meeting, dial in, enter the conference ID followed by #, press * and enter your PIN followed by #.".to_string(),
        ],
        dial_in,
    )
}

/// A new PIN (administrator's or the user's own reset).
pub fn pin_reset(user: &User, pin: &Pin, to: &str, dial_in: &[String]) -> Email {
    compose(
        to,
        "Your new audio conferencing PIN",
        user,
        &[
            "Your organizer PIN was reset; the previous PIN no longer works.".to_string(),
            format!("Organizer PIN: {}", pin.expose()),
            format!("Conference ID: {}", user.conference_id),
        ],
        dial_in,
    )
}

/// A new conference ID (the old one no longer works; the PIN is unchanged and not included).
pub fn conference_id_reset(user: &User, to: &str, dial_in: &[String]) -> Email {
    compose(
        to,
        "Your new audio conferencing ID",
        user,
        &[
            "Your conference ID was changed; the previous ID no longer works. Send the new one to the people you meet with.".to_string(),
            format!("Conference ID: {}", user.conference_id),
            "Your organizer PIN is unchanged.".to_string(),
        ],
        dial_in,
    )
}

fn compose(to: &str, subject: &str, user: &User, lines: &[String], dial_in: &[String]) -> Email {
    let greeting = format!("Hello {},", user.display_name);
    let dial_in_text = if dial_in.is_empty() {
        String::new()
    } else {
        format!("\nDial-in numbers:\n{}\n", dial_in.join("\n"))
    };
    let text = format!(
        "{greeting}\n\n{}\n{dial_in_text}\nThis message was sent by pinbridge. Do not forward it: it may contain your PIN.\n",
        lines.join("\n")
    );
    let paragraphs: String = lines
        .iter()
        .map(|l| format!("<p>{}</p>\n", escape(l)))
        .collect();
    let dial_in_html = if dial_in.is_empty() {
        String::new()
    } else {
        let items: String = dial_in
            .iter()
            .map(|n| format!("<li>{}</li>", escape(n)))
            .collect();
        format!("<p>Dial-in numbers:</p>\n<ul>{items}</ul>\n")
    };
    let html = format!(
        "<!DOCTYPE html>\n<html><body>\n<p>{}</p>\n{paragraphs}{dial_in_html}<p><small>This message was sent by pinbridge. Do not forward it: it may contain your PIN.</small></p>\n</body></html>\n",
        escape(&greeting)
    );
    Email {
        to: to.to_string(),
        subject: subject.to_string(),
        text,
        html,
    }
}

/// HTML text escaping: display names and numbers are user input.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::store::{ConferenceId, UserId};

    fn user() -> User {
        User {
            id: UserId("a@example.com".into()),
            display_name: "Ann <Admin> & Co".into(),
            email: "a@example.com".into(),
            enabled: true,
            conference_id: ConferenceId("5550193".into()),
            pin_hash: None,
            pin_set_at: None,
            pin_len: None,
            requires_pin: true,
            created_at: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn pin_emails_carry_pin_id_and_dial_in_numbers_in_both_parts() {
        let dial_in = vec!["+1 206 555 0100".to_string()];
        let pin = Pin::new("48213");
        for mail in [
            welcome(&user(), &pin, "x@example.org", &dial_in),
            pin_reset(&user(), &pin, "x@example.org", &dial_in),
        ] {
            assert_eq!(mail.to, "x@example.org");
            for part in [&mail.text, &mail.html] {
                assert!(part.contains("48213"), "{part}");
                assert!(part.contains("5550193"), "{part}");
                assert!(part.contains("+1 206 555 0100"), "{part}");
            }
            assert!(
                mail.html.contains("Ann &lt;Admin&gt; &amp; Co"),
                "{}",
                mail.html
            );
            assert!(!mail.html.contains("<Admin>"));
            assert!(mail.text.contains("Hello Ann <Admin> & Co,"));
        }
    }

    #[test]
    fn conference_id_email_has_the_new_id_and_no_pin_section() {
        let mail = conference_id_reset(&user(), "a@example.com", &[]);
        assert_eq!(mail.subject, "Your new audio conferencing ID");
        assert!(mail.text.contains("Conference ID: 5550193"));
        assert!(!mail.text.contains("Organizer PIN:"));
        assert!(!mail.text.contains("Dial-in numbers"));
    }
}
