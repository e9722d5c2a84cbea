//! Email delivery against a real SMTP server (aiosmtpd on 127.0.0.1): the worker delivers what
//! the store queued, keeps mail queued while the server is down and sends it when it returns;
//! `pinbridge serve` sends mail a killed process left queued, over SMTP or into the outbox
//! folder. Every wait is bounded.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use pinbridge::notify::{
    Delivery, Email, MailConfig, MailTransport, Mailer, RetryPolicy, SmtpConfig, TlsMode,
};
use pinbridge::store::{DeliveryState, QueuedEmail, Store};

use common::Server;
use common::smtp::SmtpServer;

/// How long a delivery may take once the SMTP server is up.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(20);
const PIN: &str = "48213";

fn pin_email(to: &str) -> Email {
    Email {
        to: to.to_string(),
        subject: format!("Your new PIN for {to}"),
        text: format!("Your PIN is {PIN}.\nDial in and press * to start your meeting."),
        html: format!("<p>Your PIN is <b>{PIN}</b>.</p>"),
    }
}

fn smtp_mailer(smtp: &SmtpServer) -> Mailer {
    Mailer::new(&MailConfig {
        from: "PIN Bridge <pinbridge@example.com>".into(),
        transport: MailTransport::Smtp(SmtpConfig {
            host: "127.0.0.1".into(),
            port: smtp.port(),
            tls: TlsMode::None,
            credentials: None,
        }),
    })
    .expect("an SMTP mailer")
}

/// Polls the store (every 20 ms, at most `timeout`) until `cond` holds for email `id`;
/// returns the last record seen and whether it did.
async fn wait_for_email(
    store: &Store,
    id: u64,
    timeout: Duration,
    cond: impl Fn(&QueuedEmail) -> bool,
) -> (QueuedEmail, bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let q = store.email(id).unwrap().expect("the queued email exists");
        if cond(&q) || Instant::now() >= deadline {
            let held = cond(&q);
            return (q, held);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_mail_reaches_a_real_smtp_server_with_both_parts() {
    let smtp = SmtpServer::start_new();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path().join("data")).unwrap());
    let first = store
        .enqueue_email(&pin_email("amos.marble@contoso.com"), SystemTime::now())
        .unwrap();
    let delivery = Delivery::spawn(
        store.clone(),
        smtp_mailer(&smtp),
        RetryPolicy::default(),
        Arc::default(),
    );
    let second = store
        .enqueue_email(&pin_email("jo.iles@contoso.com"), SystemTime::now())
        .unwrap();
    delivery.waker().notify_one();

    for id in [first, second] {
        let (q, delivered) = wait_for_email(&store, id, DELIVERY_TIMEOUT, |q| {
            q.state == DeliveryState::Delivered
        })
        .await;
        assert!(delivered, "not delivered: {q:?}");
        assert_eq!(q.email, None, "the body (and its PIN) left the store");
        assert_eq!(q.attempts, 1);
    }
    delivery.shutdown(Duration::from_secs(5)).await;

    let mut received = smtp.wait_for_messages(2, DELIVERY_TIMEOUT);
    received.sort_by_key(|m| m.to());
    assert_eq!(received.len(), 2);
    for (mail, to) in received
        .iter()
        .zip(["amos.marble@contoso.com", "jo.iles@contoso.com"])
    {
        assert_eq!(mail.to(), [to], "{}", mail.raw_text());
        assert_eq!(mail.from().as_deref(), Some("pinbridge@example.com"));
        assert_eq!(
            mail.subject().as_deref(),
            Some(format!("Your new PIN for {to}").as_str())
        );
        assert_eq!(
            mail.text().as_deref().map(str::trim_end),
            Some("Your PIN is 48213.\nDial in and press * to start your meeting.")
        );
        assert_eq!(
            mail.html().as_deref().map(str::trim_end),
            Some("<p>Your PIN is <b>48213</b>.</p>")
        );
        assert!(
            mail.message_id()
                .is_some_and(|m| m.ends_with("@example.com"))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_waits_while_smtp_is_down_and_goes_out_when_it_returns() {
    // The port is reserved but nothing listens on it yet.
    let mut smtp = SmtpServer::new();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path().join("data")).unwrap());
    let retry = RetryPolicy {
        first: Duration::from_millis(100),
        max: Duration::from_millis(400),
    };
    let delivery = Delivery::spawn(store.clone(), smtp_mailer(&smtp), retry, Arc::default());
    let id = store
        .enqueue_email(&pin_email("amos.marble@contoso.com"), SystemTime::now())
        .unwrap();
    delivery.waker().notify_one();

    let (q, retried) =
        wait_for_email(&store, id, Duration::from_secs(15), |q| q.attempts >= 3).await;
    assert!(retried, "fewer than 3 attempts recorded: {q:?}");
    assert_eq!(q.state, DeliveryState::Queued);
    assert!(q.email.is_some(), "kept until delivered");
    let error = q.last_error.clone().unwrap_or_default();
    assert!(!error.is_empty() && !error.contains(PIN), "{error}");
    assert!(
        q.next_attempt_at > SystemTime::now() - Duration::from_secs(1),
        "{q:?}"
    );

    smtp.start();
    let (q, delivered) = wait_for_email(&store, id, DELIVERY_TIMEOUT, |q| {
        q.state == DeliveryState::Delivered
    })
    .await;
    assert!(delivered, "not delivered after the server came back: {q:?}");
    assert_eq!(q.email, None);
    assert!(q.attempts >= 4, "{q:?}");
    delivery.shutdown(Duration::from_secs(5)).await;

    let received = smtp.wait_for_messages(1, DELIVERY_TIMEOUT);
    assert_eq!(received.len(), 1, "delivered exactly once");
    assert_eq!(
        received[0].subject().as_deref(),
        Some("Your new PIN for amos.marble@contoso.com")
    );
    assert!(received[0].text().is_some_and(|t| t.contains(PIN)));
}

/// Queues `n` emails in the store of a data directory, as a server killed before delivering
/// them would have left it; returns their ids.
fn leave_queued(data_dir: &std::path::Path, to: &[&str]) -> Vec<u64> {
    let store = Store::open(data_dir).expect("opening the store before the server");
    to.iter()
        .map(|to| {
            store
                .enqueue_email(&pin_email(to), SystemTime::now())
                .unwrap()
        })
        .collect()
}

fn delivered_in(data_dir: &std::path::Path, ids: &[u64]) -> Vec<QueuedEmail> {
    let store = Store::open(data_dir).expect("opening the store after the server");
    ids.iter()
        .map(|id| store.email(*id).unwrap().expect("the record stays"))
        .collect()
}

#[test]
fn serve_sends_mail_a_killed_process_left_queued() {
    let smtp = SmtpServer::start_new();
    let ids = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let ids_out = ids.clone();
    let mut server = Server::builder()
        .prepare_data_dir(move |data| {
            *ids_out.borrow_mut() = leave_queued(data, &["amos.marble@contoso.com"]);
        })
        .arg("--smtp-host")
        .arg("127.0.0.1")
        .arg("--smtp-tls")
        .arg("none")
        .arg("--smtp-port")
        .arg(smtp.port().to_string())
        .arg("--mail-from")
        .arg("pinbridge@example.com")
        .start();
    let received = smtp.wait_for_messages(1, DELIVERY_TIMEOUT);
    assert_eq!(
        received[0].subject().as_deref(),
        Some("Your new PIN for amos.marble@contoso.com")
    );
    assert!(server.wait_for_log("email delivered", DELIVERY_TIMEOUT));
    assert!(server.terminate().success(), "{}", server.log_tail());
    let logs = server.logs();
    assert!(!logs.contains(PIN), "a PIN reached the logs:\n{logs}");
    let ids = ids.borrow().clone();
    for q in delivered_in(&server.data_dir(), &ids) {
        assert_eq!((q.state, q.email), (DeliveryState::Delivered, None));
    }
}

#[test]
fn serve_writes_eml_files_when_no_smtp_server_is_set() {
    let ids = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let ids_out = ids.clone();
    let mut server = Server::builder()
        .prepare_data_dir(move |data| {
            *ids_out.borrow_mut() = leave_queued(data, &["a@example.com", "b@example.com"]);
        })
        .start();
    let ids = ids.borrow().clone();
    let outbox = server.data_dir().join("outbox");
    let files = |ids: &[u64]| {
        ids.iter()
            .all(|id| outbox.join(format!("{id}.eml")).is_file())
    };
    assert!(
        common::wait_until(DELIVERY_TIMEOUT, Duration::from_millis(50), || files(&ids)),
        "no .eml files in {}:\n{}",
        outbox.display(),
        server.log_tail()
    );
    assert!(server.terminate().success(), "{}", server.log_tail());
    let raw = std::fs::read(outbox.join(format!("{}.eml", ids[0]))).unwrap();
    let mail = common::smtp::ReceivedMail { raw };
    assert_eq!(mail.to(), ["a@example.com"]);
    assert_eq!(mail.from().as_deref(), Some("pinbridge@localhost"));
    assert!(mail.html().is_some_and(|h| h.contains("<b>48213</b>")));
    for q in delivered_in(&server.data_dir(), &ids) {
        assert_eq!((q.state, q.email), (DeliveryState::Delivered, None));
    }
}
