//! Email to users: PIN resets, new conference IDs, sign-in links. A message is queued in the
//! store first ([`crate::store::Store::enqueue_email`], durable before the operation that
//! caused it answers) and delivered afterwards, so a PIN reset is never lost to a slow or
//! dead SMTP server or a killed process.
//!
//! Delivery is one background task ([`run_delivery`], or [`Delivery::spawn`] which also
//! stops it): it takes due messages from the store oldest first, hands each to the
//! [`Mailer`], and only once the mail server (or the outbox folder) has accepted it marks it
//! delivered, which drops its body. A failure is recorded with the next attempt time from
//! [`RetryPolicy`] and retried for as long as it takes: a message is never dropped. A crash
//! between acceptance and marking sends that message again on the next start (at least once,
//! never zero times); the resend carries the same Message-ID, so a receiver can tell.
//!
//! With no SMTP server configured, the mailer writes each message as an RFC 5322 `.eml` file
//! into an outbox folder, so a fresh install works with no mail server.
//!
//! Logs name the queue id, recipient and subject; never a body, which may hold a PIN.

use std::future::Future;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::store::{QueuedEmail, Store, StoreError};

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

// ---- configuration ---------------------------------------------------------------------------

/// Where mail goes and who it is from (built and validated by [`crate::config`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailConfig {
    /// The From address, `addr@domain` or `Name <addr@domain>`.
    pub from: String,
    pub transport: MailTransport,
}

/// The two ways out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailTransport {
    /// No mail server: one `<queue id>.eml` file per message in this folder.
    FileOutbox {
        dir: PathBuf,
    },
    Smtp(SmtpConfig),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub credentials: Option<SmtpCredentials>,
}

/// SMTP AUTH credentials; `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct SmtpCredentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for SmtpCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// Plain text (a relay on the same host or a trusted network).
    None,
    /// Plain connection upgraded with STARTTLS, which must succeed (RFC 3207).
    #[default]
    StartTls,
    /// TLS from the first byte ("implicit TLS", RFC 8314 §3.3).
    Tls,
}

impl TlsMode {
    /// The usual port for the mode: 25 (relay), 587 (submission), 465 (submissions).
    pub fn default_port(self) -> u16 {
        match self {
            TlsMode::None => 25,
            TlsMode::StartTls => 587,
            TlsMode::Tls => 465,
        }
    }
}

impl FromStr for TlsMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(TlsMode::None),
            "starttls" => Ok(TlsMode::StartTls),
            "tls" => Ok(TlsMode::Tls),
            other => Err(format!(
                "{other:?} is not a TLS mode: use none, starttls or tls"
            )),
        }
    }
}

impl std::fmt::Display for TlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TlsMode::None => "none",
            TlsMode::StartTls => "starttls",
            TlsMode::Tls => "tls",
        })
    }
}

/// A message that could not be built or handed over.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(
        "invalid sender address {address:?} ({reason}): write addr@domain or Name <addr@domain>"
    )]
    InvalidFrom { address: String, reason: String },
    #[error("invalid recipient address {address:?}: {reason}")]
    InvalidTo { address: String, reason: String },
    #[error("building the message: {0}")]
    Build(#[from] lettre::error::Error),
    #[error("TLS setup for {host}: {source}")]
    Tls {
        host: String,
        source: lettre::transport::smtp::Error,
    },
    #[error("SMTP: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
    #[error("writing {path}: {source}")]
    Outbox { path: PathBuf, source: io::Error },
    #[error("the message has no body left (it was delivered)")]
    NoBody,
}

/// Checks a From address as [`Mailer::new`] will read it.
pub fn parse_from(address: &str) -> Result<(), NotifyError> {
    parse_mailbox(address).map(drop)
}

fn parse_mailbox(address: &str) -> Result<Mailbox, NotifyError> {
    address
        .parse::<Mailbox>()
        .map_err(|e| NotifyError::InvalidFrom {
            address: address.to_string(),
            reason: e.to_string(),
        })
}

// ---- retry policy ----------------------------------------------------------------------------

/// When to try again after failures: `first`, then doubling, never more than `max` apart.
/// There is no last attempt; a message waits for its server as long as it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub first: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    /// Short enough that a server restart costs a PIN reset only seconds …
    pub const DEFAULT_FIRST: Duration = Duration::from_secs(5);
    /// … long enough that an outage of hours costs a few attempts per message an hour.
    pub const DEFAULT_MAX: Duration = Duration::from_secs(10 * 60);

    /// The wait after the `failures`-th failed attempt in a row (1-based; 0 is treated as 1).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.first.saturating_mul(1 << doublings).min(self.max)
    }

    /// When to try again after the `failures`-th failure at `now`.
    pub fn next_attempt(&self, failures: u32, now: SystemTime) -> SystemTime {
        now + self.delay(failures)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            first: Self::DEFAULT_FIRST,
            max: Self::DEFAULT_MAX,
        }
    }
}

// ---- the mailer ------------------------------------------------------------------------------

/// Builds the RFC 5322 message for a queued email and hands it to the configured way out.
pub struct Mailer {
    from: Mailbox,
    transport: Transport,
}

enum Transport {
    FileOutbox { dir: PathBuf },
    Smtp(Box<AsyncSmtpTransport<Tokio1Executor>>),
}

/// How long one SMTP command may take before the attempt counts as failed.
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);

impl Mailer {
    /// Opens nothing yet: SMTP connects per message, the outbox folder is made on first use.
    pub fn new(cfg: &MailConfig) -> Result<Mailer, NotifyError> {
        let from = parse_mailbox(&cfg.from)?;
        let transport = match &cfg.transport {
            MailTransport::FileOutbox { dir } => Transport::FileOutbox { dir: dir.clone() },
            MailTransport::Smtp(smtp) => Transport::Smtp(Box::new(smtp_transport(smtp)?)),
        };
        Ok(Mailer { from, transport })
    }

    /// One line for the start-up log.
    pub fn describe(&self) -> String {
        match &self.transport {
            Transport::FileOutbox { dir } => format!("writing .eml files to {}", dir.display()),
            Transport::Smtp(_) => "sending over SMTP".to_string(),
        }
    }

    /// Delivers one queued email; `Ok` means the server (or the folder) has accepted it.
    pub async fn send(&self, queued: &QueuedEmail) -> Result<(), NotifyError> {
        let message = self.message(queued)?;
        match &self.transport {
            Transport::FileOutbox { dir } => {
                let (dir, id, bytes) = (dir.clone(), queued.id, message.formatted());
                tokio::task::spawn_blocking(move || write_eml(&dir, id, &bytes))
                    .await
                    .map_err(|e| NotifyError::Outbox {
                        path: PathBuf::new(),
                        source: io::Error::other(e),
                    })?
            }
            Transport::Smtp(smtp) => {
                smtp.send(message).await?;
                Ok(())
            }
        }
    }

    /// multipart/alternative, text first (RFC 2046 §5.1.4: the preferred part last). Date is
    /// when it was queued and Message-ID comes from the queue id, so a retried or re-sent
    /// message is the same message.
    fn message(&self, queued: &QueuedEmail) -> Result<Message, NotifyError> {
        let email = queued.email.as_ref().ok_or(NotifyError::NoBody)?;
        let to = email
            .to
            .parse::<Mailbox>()
            .map_err(|e| NotifyError::InvalidTo {
                address: email.to.clone(),
                reason: e.to_string(),
            })?;
        let queued_ms = queued
            .queued_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let message_id = format!(
            "<pinbridge.{queued_ms}.{}@{}>",
            queued.id,
            self.from.email.domain()
        );
        Ok(Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(email.subject.as_str())
            .date(queued.queued_at)
            .message_id(Some(message_id))
            .multipart(MultiPart::alternative_plain_html(
                email.text.clone(),
                email.html.clone(),
            ))?)
    }
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("from", &self.from.to_string())
            .field("transport", &self.describe())
            .finish()
    }
}

fn smtp_transport(cfg: &SmtpConfig) -> Result<AsyncSmtpTransport<Tokio1Executor>, NotifyError> {
    let tls_params = || {
        TlsParameters::new(cfg.host.clone()).map_err(|source| NotifyError::Tls {
            host: cfg.host.clone(),
            source,
        })
    };
    let tls = match cfg.tls {
        TlsMode::None => Tls::None,
        TlsMode::StartTls => Tls::Required(tls_params()?),
        TlsMode::Tls => Tls::Wrapper(tls_params()?),
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(cfg.host.as_str())
        .port(cfg.port)
        .tls(tls)
        .timeout(Some(SMTP_TIMEOUT));
    if let Some(c) = &cfg.credentials {
        builder = builder.credentials(Credentials::new(c.username.clone(), c.password.clone()));
    }
    Ok(builder.build())
}

/// Writes `<dir>/<id>.eml` so a reader never sees half a file: a hidden temp file, synced,
/// renamed into place, and the folder synced so the name survives a crash.
fn write_eml(dir: &Path, id: u64, bytes: &[u8]) -> Result<(), NotifyError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| NotifyError::Outbox { path, source }
    };
    std::fs::create_dir_all(dir).map_err(err(dir))?;
    let tmp = dir.join(format!(".{id}.eml.tmp"));
    let path = dir.join(format!("{id}.eml"));
    let mut file = std::fs::File::create(&tmp).map_err(err(&tmp))?;
    file.write_all(bytes).map_err(err(&tmp))?;
    file.sync_all().map_err(err(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, &path).map_err(err(&path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err(dir))
}

// ---- the delivery worker ---------------------------------------------------------------------

/// Longest sleep between looks at the queue, so a wall-clock jump delays mail by at most this.
const MAX_IDLE: Duration = Duration::from_secs(60);
/// Wait after the store itself failed before looking again.
const STORE_RETRY: Duration = Duration::from_secs(5);
/// How often delivered records past their retention are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60 * 60);

/// Delivers queued email until `shutdown` resolves: due messages oldest first, then sleeps
/// until the next attempt is due or `wake` is notified (enqueuers call `notify_one` after
/// [`Store::enqueue_email`]). On shutdown the attempt in flight is finished and recorded,
/// then it returns; whatever is still queued goes out on the next start.
pub async fn run_delivery(
    store: Arc<Store>,
    mailer: Mailer,
    retry: RetryPolicy,
    wake: Arc<Notify>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    info!(mailer = %mailer.describe(), "email delivery started");
    let mut next_prune = tokio::time::Instant::now();
    loop {
        if tokio::time::Instant::now() >= next_prune {
            next_prune += PRUNE_EVERY;
            let now = SystemTime::now();
            if let Some(n @ 1..) = blocking(&store, move |s| s.prune_delivered_emails(now)).await {
                info!(records = n, "pruned delivered email records");
            }
        }
        let now = SystemTime::now();
        let due = blocking(&store, move |s| s.due_emails(now)).await;
        for queued in due.iter().flatten() {
            let send = mailer.send(queued);
            tokio::pin!(send);
            let mut stopping = false;
            let result = tokio::select! {
                r = &mut send => r,
                () = &mut shutdown => {
                    stopping = true;
                    send.await
                }
            };
            record_outcome(&store, &retry, queued, result).await;
            if stopping {
                info!("email delivery stopped");
                return;
            }
        }
        let pause = match (&due, blocking(&store, |s| s.next_email_attempt()).await) {
            (None, _) | (_, None) => STORE_RETRY,
            (_, Some(None)) => MAX_IDLE,
            (_, Some(Some(at))) => at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
                .min(MAX_IDLE),
        };
        if pause.is_zero() {
            continue;
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = wake.notified() => {}
            () = &mut shutdown => {
                info!("email delivery stopped");
                return;
            }
        }
    }
}

async fn record_outcome(
    store: &Arc<Store>,
    retry: &RetryPolicy,
    queued: &QueuedEmail,
    result: Result<(), NotifyError>,
) {
    let id = queued.id;
    let failures = queued.attempts.saturating_add(1);
    match result {
        Ok(()) => {
            info!(id, to = %queued.to, subject = %queued.subject, attempt = failures, "email delivered");
            let now = SystemTime::now();
            blocking(store, move |s| s.mark_delivered(id, now)).await;
        }
        Err(e) => {
            let delay = retry.delay(failures);
            warn!(
                id, to = %queued.to, subject = %queued.subject, attempt = failures,
                error = %e, retry_in_secs = delay.as_secs_f32(),
                "email delivery failed; will retry"
            );
            let (error, next) = (e.to_string(), SystemTime::now() + delay);
            blocking(store, move |s| s.record_attempt_failure(id, &error, next)).await;
        }
    }
}

/// Runs a store call on the blocking pool (they fsync); a failure is logged and read as
/// `None`, and the worker carries on.
async fn blocking<T: Send + 'static>(
    store: &Arc<Store>,
    f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Option<T> {
    let store = store.clone();
    match tokio::task::spawn_blocking(move || f(&store)).await {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            error!(error = %e, "email outbox store failed");
            None
        }
        Err(e) => {
            error!(error = %e, "email outbox store task failed");
            None
        }
    }
}

/// A running [`run_delivery`] task, for the server to wake and stop.
#[derive(Debug)]
pub struct Delivery {
    wake: Arc<Notify>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Delivery {
    /// Spawns the worker on the current tokio runtime.
    pub fn spawn(
        store: Arc<Store>,
        mailer: Mailer,
        retry: RetryPolicy,
        wake: Arc<Notify>,
    ) -> Delivery {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run_delivery(store, mailer, retry, wake.clone(), async {
            let _ = stopped.await;
        }));
        Delivery { wake, stop, task }
    }

    /// What enqueuers notify after [`Store::enqueue_email`].
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Stops the worker, letting the attempt in flight finish for at most `grace`.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(());
        let mut task = self.task;
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            warn!(
                "email delivery still busy after the shutdown grace; the message in flight stays queued"
            );
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_start_at_five_seconds_double_and_stop_growing_at_ten_minutes() {
        let p = RetryPolicy::default();
        let delays: Vec<u64> = (1..=10).map(|n| p.delay(n).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 320, 600, 600, 600]);
        assert_eq!(p.delay(0), Duration::from_secs(5));
        assert_eq!(p.delay(u32::MAX), Duration::from_secs(600), "no overflow");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(p.next_attempt(3, t), t + Duration::from_secs(20));
    }

    #[test]
    fn tls_modes_parse_print_and_pick_their_port() {
        for (s, mode, port) in [
            ("none", TlsMode::None, 25),
            ("starttls", TlsMode::StartTls, 587),
            ("tls", TlsMode::Tls, 465),
        ] {
            assert_eq!(s.parse::<TlsMode>(), Ok(mode));
            assert_eq!(mode.to_string(), s);
            assert_eq!(mode.default_port(), port);
        }
        let err = "ssl".parse::<TlsMode>().unwrap_err();
        assert!(err.contains("none, starttls or tls"), "{err}");
    }

    #[test]
    fn debug_never_shows_a_body_or_a_password() {
        let email = pin_email();
        let shown = format!("{email:?} {email:#?}");
        assert!(!shown.contains("48213"), "{shown}");
        let c = SmtpCredentials {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn from_addresses_are_checked() {
        parse_from("pinbridge@localhost").unwrap();
        parse_from("PIN Bridge <pins@example.com>").unwrap();
        for bad in ["", "pinbridge", "a@b@c", "<unterminated@example.com"] {
            assert!(parse_from(bad).is_err(), "{bad:?} accepted");
        }
    }

    fn pin_email() -> Email {
        Email {
            to: "Amos Marble <amos.marble@contoso.com>".into(),
            subject: "Your new PIN".into(),
            text: "Your PIN is 48213.\nDial in and press * to start.".into(),
            html: "<p>Your PIN is <b>48213</b>.</p>".into(),
        }
    }

    #[tokio::test]
    async fn the_file_outbox_writes_a_complete_message_with_both_parts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("data")).unwrap();
        let queued_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000);
        let id = store.enqueue_email(&pin_email(), queued_at).unwrap();
        let queued = store.email(id).unwrap().unwrap();
        let outbox = dir.path().join("outbox");
        let mailer = Mailer::new(&MailConfig {
            from: "PIN Bridge <pinbridge@example.com>".into(),
            transport: MailTransport::FileOutbox {
                dir: outbox.clone(),
            },
        })
        .unwrap();
        mailer.send(&queued).await.unwrap();

        let names: Vec<String> = std::fs::read_dir(&outbox)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [format!("{id}.eml")], "no temp file left behind");
        let raw = std::fs::read(outbox.join(format!("{id}.eml"))).unwrap();
        let msg = mail_parser::MessageParser::default().parse(&raw).unwrap();
        assert_eq!(msg.subject(), Some("Your new PIN"));
        let from = msg.from().and_then(|a| a.first()).unwrap();
        assert_eq!(from.address(), Some("pinbridge@example.com"));
        let to = msg.to().and_then(|a| a.first()).unwrap();
        assert_eq!(to.address(), Some("amos.marble@contoso.com"));
        assert_eq!(
            msg.message_id(),
            Some(format!("pinbridge.1750000000000.{id}@example.com").as_str())
        );
        let date = msg.date().unwrap();
        assert_eq!(date.to_timestamp(), 1_750_000_000);
        assert!(mail_parser::MimeHeaders::is_content_type(
            &msg,
            "multipart",
            "alternative"
        ));
        assert_eq!(
            // Line breaks go out as CRLF (RFC 5322 §2.3).
            msg.body_text(0).map(|t| t.trim_end().replace("\r\n", "\n")),
            Some("Your PIN is 48213.\nDial in and press * to start.".to_string())
        );
        assert_eq!(
            msg.body_html(0).as_deref().map(str::trim_end),
            Some("<p>Your PIN is <b>48213</b>.</p>")
        );

        // Sending again (a retry after a crash) replaces the file with the same message (the
        // MIME boundary is drawn afresh).
        mailer.send(&queued).await.unwrap();
        assert_eq!(std::fs::read_dir(&outbox).unwrap().count(), 1);
        let again = std::fs::read(outbox.join(format!("{id}.eml"))).unwrap();
        let again = mail_parser::MessageParser::default().parse(&again).unwrap();
        assert_eq!(again.message_id(), msg.message_id());
    }

    #[tokio::test]
    async fn the_worker_delivers_queued_mail_and_drops_the_body() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path().join("data")).unwrap());
        // Queued "by a previous process": before the worker exists.
        let first = store
            .enqueue_email(&pin_email(), SystemTime::now())
            .unwrap();
        let outbox = dir.path().join("outbox");
        let mailer = Mailer::new(&MailConfig {
            from: "pinbridge@localhost".into(),
            transport: MailTransport::FileOutbox {
                dir: outbox.clone(),
            },
        })
        .unwrap();
        let wake = Arc::new(Notify::new());
        let delivery = Delivery::spawn(store.clone(), mailer, RetryPolicy::default(), wake);
        let second = store
            .enqueue_email(&pin_email(), SystemTime::now())
            .unwrap();
        delivery.waker().notify_one();
        let delivered = |id| {
            store
                .email(id)
                .unwrap()
                .is_some_and(|q| q.state == crate::store::DeliveryState::Delivered)
        };
        for _ in 0..250 {
            if delivered(first) && delivered(second) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        delivery.shutdown(Duration::from_secs(5)).await;
        for id in [first, second] {
            let q = store.email(id).unwrap().unwrap();
            assert_eq!(q.state, crate::store::DeliveryState::Delivered, "{q:?}");
            assert_eq!(q.email, None);
            assert!(outbox.join(format!("{id}.eml")).is_file());
        }
    }
}
