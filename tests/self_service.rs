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

// ---- over plain HTTP: who may do what ----------------------------------------------------

/// One HTTP exchange with the page: status, headers we look at, body.
struct Page {
    status: u16,
    set_cookies: Vec<String>,
    location: Option<String>,
    body: String,
}

/// A request to the server with optional cookies and a form body; redirects not followed.
fn page(
    server: &Server,
    method: &str,
    path: &str,
    cookies: &[&str],
    form: &[(&str, &str)],
) -> Page {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut req = ureq::http::Request::builder()
        .method(method)
        .uri(format!("{}{path}", server.http_url()));
    if !cookies.is_empty() {
        req = req.header("Cookie", cookies.join("; "));
    }
    let body: String = form
        .iter()
        .map(|(k, v)| format!("{k}={}", v.replace('@', "%40")))
        .collect::<Vec<_>>()
        .join("&");
    if method == "POST" {
        req = req.header("Content-Type", "application/x-www-form-urlencoded");
    }
    let mut resp = agent
        .run(req.body(body).unwrap())
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let headers = resp.headers();
    let set_cookies = headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect();
    let location = headers
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Page {
        status: resp.status().as_u16(),
        set_cookies,
        location,
        body: resp.body_mut().read_to_string().unwrap_or_default(),
    }
}

/// `name=value` of the cookie `name` that `p` sets.
fn cookie_set(p: &Page, name: &str) -> String {
    p.set_cookies
        .iter()
        .find(|c| c.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} cookie in {:?}", p.set_cookies))
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

/// The CSRF token in the page's first form.
fn csrf_in(body: &str) -> String {
    let at = body
        .find("name=\"csrf\" value=\"")
        .expect("a form with a csrf field")
        + 19;
    body[at..].split('"').next().unwrap().to_string()
}

fn pin_set_at(server: &Server, id: &str) -> String {
    let a = page_admin(server, &format!("/api/users/{id}"));
    a["pin_set_at"].as_str().unwrap().to_string()
}

fn page_admin(server: &Server, path: &str) -> serde_json::Value {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let req = ureq::http::Request::builder()
        .uri(format!("{}{path}", server.http_url()))
        .header("Authorization", format!("Bearer {}", server.admin_token()))
        .body(String::new())
        .unwrap();
    let text = agent.run(req).unwrap().body_mut().read_to_string().unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn a_user_can_only_act_on_their_own_account_and_every_form_needs_its_token() {
    let server = Server::builder()
        .organizer("amos.marble@contoso.com", &[])
        .organizer("lee.gu@contoso.com", &[])
        .start();
    let amos = server.organizer("amos.marble@contoso.com").clone();
    let lee = server.organizer("lee.gu@contoso.com").clone();
    let outbox_dir = server.data_dir().join("outbox");

    // The sign-in form sets a CSRF cookie whose value the form carries.
    let form = page(&server, "GET", "/self", &[], &[]);
    assert_eq!(form.status, 200);
    let csrf_cookie = cookie_set(&form, "pb_csrf");
    let csrf = csrf_in(&form.body);
    assert_eq!(csrf_cookie, format!("pb_csrf={csrf}"));
    let attrs = form.set_cookies.join(" | ");
    assert!(
        attrs.contains("HttpOnly") && attrs.contains("SameSite=Strict"),
        "{attrs}"
    );

    // Without the cookie, or with another token: refused, nothing sent.
    let no_cookie = page(
        &server,
        "POST",
        "/self/sign-in",
        &[],
        &[("email", &amos.id), ("csrf", &csrf)],
    );
    assert_eq!(no_cookie.status, 403, "{}", no_cookie.body);
    let other = page(
        &server,
        "POST",
        "/self/sign-in",
        &[&csrf_cookie],
        &[("email", &amos.id), ("csrf", "0000")],
    );
    assert_eq!(other.status, 403);

    // An unknown address gets the same answer as a known one, and no email.
    let unknown = page(
        &server,
        "POST",
        "/self/sign-in",
        &[&csrf_cookie],
        &[("email", "nobody@contoso.com"), ("csrf", &csrf)],
    );
    let known = page(
        &server,
        "POST",
        "/self/sign-in",
        &[&csrf_cookie],
        &[("email", &amos.id), ("csrf", &csrf)],
    );
    assert_eq!((unknown.status, known.status), (200, 200));
    assert_eq!(unknown.body, known.body);
    let link = link_in(&wait_mail(&outbox_dir, "sign-in", 1));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        outbox(&outbox_dir)
            .iter()
            .filter(|(s, _)| s.contains("sign-in"))
            .count(),
        1,
        "one link, for the known address only"
    );

    // The link opens a session for Amos: a strict, HttpOnly cookie scoped to /self.
    let path = &link[link.find("/self/auth").unwrap()..];
    let signed_in = page(&server, "GET", path, &[], &[]);
    assert_eq!(signed_in.status, 303);
    assert_eq!(signed_in.location.as_deref(), Some("/self"));
    let session = cookie_set(&signed_in, "pb_session");
    let attrs = signed_in.set_cookies.join(" | ");
    for want in ["HttpOnly", "SameSite=Strict", "Path=/self"] {
        assert!(attrs.contains(want), "{want} missing: {attrs}");
    }
    let mine = page(&server, "GET", "/self", &[&session], &[]);
    assert!(mine.body.contains(&amos.conference));
    assert!(!mine.body.contains(&lee.conference));
    assert!(!mine.body.contains(&amos.pin));
    let token = csrf_in(&mine.body);

    // No session, or the wrong token: refused, and no PIN changes.
    let before = (pin_set_at(&server, &amos.id), pin_set_at(&server, &lee.id));
    let anonymous = page(&server, "POST", "/self/reset-pin", &[], &[("csrf", &token)]);
    assert_eq!(anonymous.status, 401);
    let forged = page(
        &server,
        "POST",
        "/self/reset-pin",
        &[&session],
        &[("csrf", &csrf)],
    );
    assert_eq!(forged.status, 403);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        (pin_set_at(&server, &amos.id), pin_set_at(&server, &lee.id)),
        before
    );

    // A reset naming Lee in every way a form could still resets Amos's PIN only.
    let reset = page(
        &server,
        "POST",
        "/self/reset-pin",
        &[&session],
        &[
            ("csrf", &token),
            ("id", &lee.id),
            ("user", &lee.id),
            ("email", &lee.id),
        ],
    );
    assert_eq!(reset.status, 303, "{}", reset.body);
    assert_ne!(
        pin_set_at(&server, &amos.id),
        before.0,
        "Amos's PIN was reset"
    );
    assert_eq!(
        pin_set_at(&server, &lee.id),
        before.1,
        "Lee's PIN was not touched"
    );
    let shown = page(&server, "GET", "/self", &[&session], &[]);
    assert!(shown.body.contains("id=\"new-pin\""));
    let again = page(&server, "GET", "/self", &[&session], &[]);
    assert!(
        !again.body.contains("id=\"new-pin\""),
        "the PIN is shown once"
    );
    assert!(again.body.contains("*****"));

    // The audit log names Amos as the actor of his own reset.
    let audit = page_admin(&server, "/api/audit");
    let entry = audit
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["action"] == "user.reset_pin")
        .expect("an audit entry for the reset");
    assert_eq!(entry["target"], amos.id.as_str());
    assert!(
        entry["actor"].as_str().unwrap().contains(&amos.id),
        "{entry}"
    );

    // Signing out ends the session.
    let out = page(
        &server,
        "POST",
        "/self/sign-out",
        &[&session],
        &[("csrf", &token)],
    );
    assert_eq!(out.status, 303);
    let after = page(&server, "GET", "/self", &[&session], &[]);
    assert!(
        after.body.contains("id=\"email\""),
        "signed out: the sign-in form again"
    );
}
