//! A PIN reset, end to end through a real SMTP server (aiosmtpd on 127.0.0.1): the
//! administrator resets an organizer's PIN over the admin API, the email reaches the SMTP
//! server, the test reads the PIN from it, dials in with our SIP client, presses `*`, the PIN
//! and `#` as RFC 4733 events, and the meeting starts. Then the SMTP server is stopped, the PIN
//! reset again, the server started again on the same port: the email still arrives, with the
//! PIN that now starts meetings.

mod common;

use std::time::Duration;

use common::rtp::MediaPlan;
use common::smtp::SmtpServer;
use common::{RtpReceiver, SdpOffer, Server, SipClient, dial, hang_up, wait_until};

const STEP_WAIT: Duration = Duration::from_secs(30);
const MAIL_WAIT: Duration = Duration::from_secs(60);
const EVENT_PT: u8 = 101;

fn reset_pin(server: &Server, id: &str) -> serde_json::Value {
    api(server, "POST", &format!("/api/users/{id}/reset-pin"))
}

fn api(server: &Server, method: &str, path: &str) -> serde_json::Value {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let req = ureq::http::Request::builder()
        .method(method)
        .uri(format!("{}{path}", server.http_url()))
        .header("Authorization", format!("Bearer {}", server.admin_token()))
        .body(String::new())
        .unwrap();
    let mut resp = agent.run(req).unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    assert!(status < 300, "{method} {path}: {status} {text}");
    serde_json::from_str(&text).unwrap()
}

/// The organizer PIN in a reset email's text part.
fn pin_in(text: &str) -> String {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Organizer PIN:"))
        .unwrap_or_else(|| panic!("no `Organizer PIN:` line in {text:?}"))
        .trim()
        .to_string()
}

/// Dials the conference directly, keys `*`, `pin`, `#`, and waits for the server to say
/// whether the meeting started. Hangs up afterwards.
fn start_meeting_with(server: &Server, conference: &str, pin: &str) {
    let mut client = SipClient::udp(server.sip_addr());
    let rtp = RtpReceiver::bind();
    let offer = SdpOffer::new(rtp.addr()).pcmu().telephone_event(EVENT_PT);
    let mut d = dial(&mut client, conference, &offer);
    let call = format!("call_id={} ", d.call.call_id);
    let logged = |needle: &str| {
        wait_until(STEP_WAIT, Duration::from_millis(50), || {
            !server.log_lines_with(&[needle, &call]).is_empty()
        })
    };
    assert!(logged("waiting in the lobby"), "{}", server.log_tail());
    let mut plan = MediaPlan::new(0);
    plan.silence(2).key_presses(EVENT_PT, "*", 3, 3);
    rtp.send_plan(d.media, &plan.take_packets());
    assert!(logged("organizer PIN entry"), "{}", server.log_tail());
    plan.silence(2)
        .key_presses(EVENT_PT, &format!("{pin}#"), 3, 3);
    rtp.send_plan(d.media, &plan.take_packets());
    assert!(
        logged("organizer PIN verified"),
        "the emailed PIN did not verify:\n{}",
        server.log_tail()
    );
    assert!(logged("joined the meeting"));
    hang_up(&mut client, &mut d.call);
}

#[test]
fn the_emailed_pin_starts_the_meeting_and_mail_survives_an_smtp_outage() {
    let mut smtp = SmtpServer::start_new();
    let port = smtp.port().to_string();
    let server = Server::builder()
        .organizer("amos.marble@contoso.com", &[])
        .log_level("info")
        .arg("--smtp-host")
        .arg("127.0.0.1")
        .arg("--smtp-port")
        .arg(port.as_str())
        .arg("--smtp-tls")
        .arg("none")
        .start();
    let org = server.organizer("amos.marble@contoso.com").clone();

    // Reset by the administrator, emailed by default.
    let first = reset_pin(&server, &org.id);
    assert_eq!(first["email"]["status"], "queued", "{first}");
    let mails = smtp.wait_for_messages(1, MAIL_WAIT);
    assert_eq!(mails[0].to(), vec![org.id.clone()]);
    let text = mails[0].text().expect("a text part");
    let pin = pin_in(&text);
    assert_eq!(
        pin,
        first["pin"].as_str().unwrap(),
        "the email carries the new PIN"
    );
    assert_ne!(pin, org.pin);
    start_meeting_with(&server, &org.conference, &pin);

    // SMTP down: the next reset's email waits in the queue, attempts counted.
    smtp.stop();
    let second = reset_pin(&server, &org.id);
    assert_eq!(second["email"]["status"], "queued", "{second}");
    let queued_id = second["email"]["id"].as_u64().unwrap();
    let tried = wait_until(MAIL_WAIT, Duration::from_millis(200), || {
        api(&server, "GET", "/api/emails")
            .as_array()
            .unwrap()
            .iter()
            .any(|e| {
                e["id"] == queued_id && e["state"] == "queued" && e["attempts"].as_u64() >= Some(1)
            })
    });
    assert!(tried, "{}", api(&server, "GET", "/api/emails"));

    // SMTP back on the same port: the email arrives, and its PIN is the one that works.
    smtp.start();
    let mails = smtp.wait_for_messages(2, MAIL_WAIT);
    assert_eq!(mails.len(), 2, "one email per reset, none twice");
    let pin2 = pin_in(&mails[1].text().expect("a text part"));
    assert_eq!(pin2, second["pin"].as_str().unwrap());
    let delivered = wait_until(STEP_WAIT, Duration::from_millis(200), || {
        api(&server, "GET", "/api/emails")
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["id"] == queued_id && e["state"] == "delivered")
    });
    assert!(delivered);
    start_meeting_with(&server, &org.conference, &pin2);

    let logs = server.logs();
    for p in [&pin, &pin2] {
        assert!(!logs.contains(&format!("={p}")), "a PIN is in the log");
    }
}
