//! The self-service page against the real binary, in a real browser (headless Debian
//! chromium through chromedriver) and over plain HTTP: sign in with the link emailed to the
//! user's primary address (read from the server's `.eml` outbox, the default delivery), see
//! the conference ID and the masked PIN, reset the PIN, see it once, reload and see `*****`.
//! And: a user can only ever act on their own account; forms need their CSRF token; a link
//! works once; the sign-in form does not reveal which addresses have accounts.

mod common;

use std::path::Path;
use std::time::Duration;

use common::browser::{Browser, PAGE_WAIT};
use common::{Server, wait_until};
use fantoccini::Locator;

const MAIL_WAIT: Duration = Duration::from_secs(20);

/// `(subject, text part)` of every message in the outbox folder, oldest first.
fn outbox(dir: &Path) -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    files.sort_by_key(|p| {
        p.file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
    });
    files
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .filter_map(|raw| {
            let m = mail_parser::MessageParser::default().parse(&raw)?;
            Some((
                m.subject().unwrap_or_default().to_string(),
                m.body_text(0).unwrap_or_default().to_string(),
            ))
        })
        .collect()
}

/// Waits for the `n`th message (1-based) whose subject contains `subject`; returns its text.
fn wait_mail(dir: &Path, subject: &str, n: usize) -> String {
    let mut found = None;
    wait_until(MAIL_WAIT, Duration::from_millis(100), || {
        let mails: Vec<_> = outbox(dir)
            .into_iter()
            .filter(|(s, _)| s.contains(subject))
            .collect();
        found = mails.get(n - 1).map(|(_, text)| text.clone());
        found.is_some()
    });
    found.unwrap_or_else(|| {
        panic!(
            "no message {n} with {subject:?} in {} within {MAIL_WAIT:?}: {:?}",
            dir.display(),
            outbox(dir).iter().map(|(s, _)| s).collect::<Vec<_>>()
        )
    })
}

/// The sign-in link in a message's text.
fn link_in(text: &str) -> String {
    text.split_whitespace()
        .find(|w| w.contains("/self/auth?token="))
        .unwrap_or_else(|| panic!("no sign-in link in {text:?}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_by_emailed_link_reset_the_pin_see_it_once_then_masked() {
    let server = Server::builder()
        .organizer("amos.marble@contoso.com", &[])
        .start();
    let org = server.organizer("amos.marble@contoso.com").clone();
    let base = format!("http://{}", server.http_addr());
    let outbox_dir = server.data_dir().join("outbox");

    let browser = Browser::launch().await;
    let c = &browser.client;
    c.goto(&format!("{base}/self")).await.unwrap();
    let email = c
        .wait()
        .at_most(PAGE_WAIT)
        .for_element(Locator::Id("email"))
        .await
        .unwrap();
    email.send_keys(&org.id).await.unwrap();
    c.find(Locator::Id("send-link"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait()
        .at_most(PAGE_WAIT)
        .for_element(Locator::Id("sent"))
        .await
        .unwrap();

    let link = link_in(&wait_mail(&outbox_dir, "sign-in", 1));
    assert!(link.starts_with(&base), "{link} is not on {base}");
    c.goto(&link).await.unwrap();
    let conference = c
        .wait()
        .at_most(PAGE_WAIT)
        .for_element(Locator::Id("conference-id"))
        .await
        .unwrap();
    assert_eq!(conference.text().await.unwrap(), org.conference);
    let pin = c
        .find(Locator::Id("pin"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(pin, "*****");
    assert!(!c.source().await.unwrap().contains(&org.pin));

    c.find(Locator::Id("reset-pin"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let shown = c
        .wait()
        .at_most(PAGE_WAIT)
        .for_element(Locator::Id("new-pin"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(shown.len(), 5, "{shown}");
    assert!(shown.bytes().all(|b| b.is_ascii_digit()), "{shown}");
    assert_ne!(shown, org.pin);
    // The same PIN went to the user's primary address.
    let reset_mail = wait_mail(&outbox_dir, "PIN", 1);
    assert!(
        reset_mail.contains(&shown),
        "the reset email lacks the new PIN"
    );

    // Reload: masked, and the PIN is nowhere in the page.
    c.refresh().await.unwrap();
    let pin = c
        .wait()
        .at_most(PAGE_WAIT)
        .for_element(Locator::Id("pin"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(pin, "*****");
    let source = c.source().await.unwrap();
    assert!(
        !source.contains(&shown),
        "the PIN is still in the page after a reload"
    );
    assert!(c.find(Locator::Id("new-pin")).await.is_err());

    // The link worked once.
    c.goto(&link).await.unwrap();
    let found = c
        .wait()
        .at_most(PAGE_WAIT)
        .for_element(Locator::Id("error"))
        .await;
    let error = match found {
        Ok(e) => e,
        Err(e) => panic!(
            "{e}: no #error after reusing the link; at {:?}:\n{}",
            c.current_url().await,
            c.source().await.unwrap_or_default()
        ),
    };
    assert!(error.text().await.unwrap().contains("expired or was used"));
    browser.close().await;

    let logs = server.logs();
    assert!(!logs.contains(&shown), "the new PIN is in the server log");
}
