//! Every admin operation, in one place: the HTTP API, the CLI (through the API) and later the
//! self-service page call these methods and nothing else touches users, settings or lockouts
//! on an administrator's behalf.
//!
//! Contract of every operation:
//! - **validated** first: unknown user → [`AdminError::NotFound`], duplicate → [`AdminError::
//!   Conflict`], malformed input (email, lengths, option combinations) → [`AdminError::
//!   BadRequest`]; nothing is written for a refused request except its audit entry;
//! - **durable** before it returns: the store syncs every write ([`Store::persist`]), the
//!   email is queued in the store's outbox, and the audit entry is written last;
//! - **audited**: each change (and each refused change) is one [`AuditEntry`] with actor,
//!   time, target and outcome. Reads are not audited: they change nothing, and auditing them
//!   would make reading the audit log write to it;
//! - **masked**: a [`Pin`] leaves only in the [`Enabled`] / [`PinReset`] that creates it
//!   (shown once by the face) and in the email composed by [`super::emails`]. Views show
//!   [`pin::MASK`].
//!
//! Methods are blocking (argon2 and fsync): async callers use `spawn_blocking`. Time comes in
//! as `now`, so tests need no clock.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::emails;
use crate::notify::Email;
use crate::pin::{self, Pepper, Pin};
use crate::store::{
    self, AuditEntry, ConferenceId, DeliveryState, NewUser, QueuedEmail, Store, StoreError,
    TenantSettings, User, UserId, audit,
};

/// Audit entries returned when no limit is asked for.
pub const DEFAULT_AUDIT_LIMIT: usize = 100;
/// The most audit entries one request returns.
pub const MAX_AUDIT_LIMIT: usize = 10_000;

/// The admin operations over one store and pepper. Cheap to clone (two `Arc`s).
#[derive(Clone, Debug)]
pub struct Service {
    store: Arc<Store>,
    pepper: Arc<Pepper>,
    /// Wakes the email delivery worker after a message is queued.
    mail_wake: Arc<tokio::sync::Notify>,
}

/// Who asks: recorded in the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    pub source: Option<IpAddr>,
}

impl Actor {
    /// The holder of the admin token, from `source`.
    pub fn admin(source: Option<IpAddr>) -> Actor {
        Actor {
            name: "admin".to_string(),
            source,
        }
    }

    /// A user acting on their own account (the self-service page).
    pub fn user(id: &UserId, source: Option<IpAddr>) -> Actor {
        Actor {
            name: format!("user:{id}"),
            source,
        }
    }
}

/// Why an operation was refused or failed; each variant is one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No such user (or locked conference): 404.
    #[error("{0}")]
    NotFound(String),
    /// The thing exists already: 409.
    #[error("{0}")]
    Conflict(String),
    /// The request is malformed or out of range: 400.
    #[error("{0}")]
    BadRequest(String),
    /// The store failed (I/O, corruption): 500. The message names the failure, never a PIN.
    #[error("{0}")]
    Internal(String),
    /// The disk holding the store is full (or read-only): 507. Nothing was corrupted, but
    /// the change may not have been saved.
    #[error("{0}")]
    InsufficientStorage(String),
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UserExists(_) => AdminError::Conflict(e.to_string()),
            StoreError::UserNotFound(_) => AdminError::NotFound(e.to_string()),
            StoreError::InvalidUserId { .. }
            | StoreError::InvalidDisplayName(_)
            | StoreError::InvalidEmail { .. }
            | StoreError::Settings(_) => AdminError::BadRequest(e.to_string()),
            StoreError::Io(ref io) if is_out_of_space(io) => {
                AdminError::InsufficientStorage(format!(
                    "the disk holding the store has no space left ({e}): this change may not have been saved; free space, then restart pinbridge (sled stops writing after a failed write until it is reopened) and retry"
                ))
            }
            other => AdminError::Internal(other.to_string()),
        }
    }
}

/// A write the disk refused for lack of space (`ENOSPC`, or `EDQUOT` for a quota), or
/// because the file system went read-only.
fn is_out_of_space(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull
            | std::io::ErrorKind::QuotaExceeded
            | std::io::ErrorKind::ReadOnlyFilesystem
    )
}

/// Where a PIN or conference-ID email goes. The default follows the tenant's `auto_email`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmailOptions {
    /// Send the email even when the tenant has automatic emails off.
    #[serde(default)]
    pub send_email: bool,
    /// Send it to this address instead of the user's primary one; only with `send_email`.
    #[serde(default)]
    pub send_email_to_address: Option<String>,
}

/// A request to enable a user for audio conferencing.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnableUser {
    pub id: String,
    pub display_name: String,
    /// Primary email address.
    pub email: String,
    /// Must the organizer enter their PIN to start a meeting? Default: the tenant setting.
    #[serde(default)]
    pub requires_pin: Option<bool>,
    #[serde(default)]
    pub send_email: bool,
    #[serde(default)]
    pub send_email_to_address: Option<String>,
}

/// What happened to the email an operation wanted to send.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum EmailOutcome {
    /// Durably queued in the outbox under `id`; delivery follows.
    Queued { id: u64, to: String },
    /// Not sent, and why.
    NotSent { reason: String },
}

/// A user as every face shows them: the PIN is always [`pin::MASK`].
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct UserView {
    pub id: String,
    pub display_name: String,
    pub email: String,
    pub enabled: bool,
    pub conference_id: String,
    /// `*****` when a PIN is set (fixed width: not even its length shows), else null.
    pub pin: Option<String>,
    pub pin_length: Option<u8>,
    /// RFC 3339 UTC.
    pub pin_set_at: Option<String>,
    pub requires_pin: bool,
    pub created_at: String,
}

impl From<&User> for UserView {
    fn from(u: &User) -> Self {
        UserView {
            id: u.id.to_string(),
            display_name: u.display_name.clone(),
            email: u.email.clone(),
            enabled: u.enabled,
            conference_id: u.conference_id.to_string(),
            pin: u.pin_hash.as_ref().map(|_| pin::MASK.to_string()),
            pin_length: u.pin_len,
            pin_set_at: u.pin_set_at.map(store::format_utc),
            requires_pin: u.requires_pin,
            created_at: store::format_utc(u.created_at),
        }
    }
}

/// A user enabled (created, or re-enabled with a fresh PIN) and their PIN, shown once.
#[derive(Debug)]
pub struct Enabled {
    pub user: UserView,
    pub pin: Pin,
    /// True when the user is new; false when a disabled user was enabled again.
    pub created: bool,
    pub email: EmailOutcome,
}

/// A new PIN, shown once.
#[derive(Debug)]
pub struct PinReset {
    pub user: UserView,
    pub pin: Pin,
    pub email: EmailOutcome,
}

/// A new conference ID.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct ConferenceIdReset {
    pub user: UserView,
    pub old_conference_id: String,
    pub email: EmailOutcome,
}

/// A conference whose organizer PIN entry is locked.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct LockoutView {
    pub conference_id: String,
    /// The organizer whose conference it is, if any.
    pub user_id: Option<String>,
    /// RFC 3339 UTC.
    pub until: String,
}

/// A caller source over a per-source failure limit (issue 7).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct SourceBlockView {
    /// An IP address, or `caller:NUMBER` for a caller through a trusted trunk.
    pub source: String,
    /// `pin_failures` or `conference_id_failures`.
    pub reason: crate::store::BlockReason,
    /// Failures of that kind in the window, and the limit.
    pub failures: u32,
    pub limit: u32,
    /// RFC 3339 UTC: when the source may call again unless it is cleared.
    pub until: String,
    /// New calls answered `403` since the server started.
    pub refused_calls: u64,
}

/// One audit entry.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct AuditView {
    /// RFC 3339 UTC.
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub source: Option<String>,
}

/// A queued or delivered email, without its body (which may hold a PIN).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct EmailView {
    pub id: u64,
    pub to: String,
    pub subject: String,
    pub state: DeliveryState,
    pub attempts: u32,
    /// RFC 3339 UTC.
    pub queued_at: String,
    pub last_error: Option<String>,
}

impl From<&QueuedEmail> for EmailView {
    fn from(q: &QueuedEmail) -> Self {
        EmailView {
            id: q.id,
            to: q.to.clone(),
            subject: q.subject.clone(),
            state: q.state,
            attempts: q.attempts,
            queued_at: store::format_utc(q.queued_at),
            last_error: q.last_error.clone(),
        }
    }
}

/// A change to the tenant settings: absent fields keep their value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsPatch {
    pub pin_length: Option<u8>,
    pub auto_email: Option<bool>,
    pub allow_anonymous_start: Option<bool>,
    pub organizers_require_pin: Option<bool>,
    pub dial_in_numbers: Option<Vec<String>>,
    pub conference_id_length: Option<u8>,
}

impl SettingsPatch {
    /// `settings` with this patch applied, and a description of what changed (for the audit).
    fn apply(&self, mut settings: TenantSettings) -> (TenantSettings, Vec<String>) {
        let mut changes = Vec::new();
        macro_rules! set {
            ($field:ident) => {
                if let Some(v) = &self.$field {
                    if settings.$field != *v {
                        changes.push(format!(
                            "{} {:?} -> {:?}",
                            stringify!($field),
                            settings.$field,
                            v
                        ));
                    }
                    settings.$field = v.clone();
                }
            };
        }
        set!(pin_length);
        set!(auto_email);
        set!(allow_anonymous_start);
        set!(organizers_require_pin);
        set!(dial_in_numbers);
        set!(conference_id_length);
        (settings, changes)
    }
}

const AUTO_EMAIL_OFF: &str =
    "automatic emails are off for this tenant; pass send_email to send one";

impl Service {
    /// A service whose emails are queued in `store` and picked up by a delivery worker
    /// that `mail_wake` wakes (see [`crate::notify::run_delivery`]).
    pub fn new(
        store: Arc<Store>,
        pepper: Arc<Pepper>,
        mail_wake: Arc<tokio::sync::Notify>,
    ) -> Service {
        Service {
            store,
            pepper,
            mail_wake,
        }
    }

    /// Queues `email` durably and wakes delivery. For messages the service does not compose
    /// itself (the self-service page's sign-in links).
    pub fn queue_email(&self, email: &Email, now: SystemTime) -> Result<u64, AdminError> {
        let id = self.store.enqueue_email(email, now)?;
        self.mail_wake.notify_one();
        Ok(id)
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    // ---- users ----------------------------------------------------------------------------

    /// Enables a user for audio conferencing: a new user gets a unique conference ID and a
    /// PIN at the tenant's current length; a disabled user is enabled again with their
    /// conference ID and a fresh PIN (the old one may have been shared meanwhile). A user
    /// who is enabled already is a conflict. Queues the welcome email per the email rules.
    pub fn enable_user(
        &self,
        actor: &Actor,
        req: EnableUser,
        now: SystemTime,
    ) -> Result<Enabled, AdminError> {
        let target = req.id.clone();
        let result = self.enable_user_inner(req, now);
        self.audited(actor, audit::USER_ENABLE, &target, now, result, |e| {
            format!(
                "{}; conference id {}, PIN of {} digits issued; {}",
                if e.created { "created" } else { "re-enabled" },
                e.user.conference_id,
                e.pin.len(),
                describe_email(&e.email)
            )
        })
    }

    fn enable_user_inner(&self, req: EnableUser, now: SystemTime) -> Result<Enabled, AdminError> {
        let options = EmailOptions {
            send_email: req.send_email,
            send_email_to_address: req.send_email_to_address,
        };
        let new = NewUser {
            id: UserId(req.id),
            display_name: req.display_name,
            email: req.email,
            requires_pin: req.requires_pin,
        };
        new.validate()?;
        let settings = self.store.tenant_settings()?;
        let to = email_destination(&settings, &options, &new.email)?;
        let (user, pin, created) = match self.store.user(&new.id)? {
            Some(existing) if existing.enabled => {
                return Err(AdminError::Conflict(format!(
                    "user {} already exists and is enabled",
                    new.id
                )));
            }
            Some(_) => {
                // Three durable steps, in the order that keeps the old PIN from ever working
                // again: details, new PIN, then enabled. A crash between them leaves the user
                // disabled, and enabling again completes it.
                self.store.update_user(&new.id, |u| {
                    u.display_name = new.display_name.clone();
                    u.email = new.email.clone();
                    if let Some(requires_pin) = new.requires_pin {
                        u.requires_pin = requires_pin;
                    }
                })?;
                let (_, pin) = self.store.reset_pin(&new.id, &self.pepper)?;
                let user = self.store.update_user(&new.id, |u| u.enabled = true)?;
                (user, pin, false)
            }
            None => {
                let (user, pin) = self.store.create_organizer(new, &self.pepper)?;
                (user, pin, true)
            }
        };
        let email = self.send(to, now, |to| {
            emails::welcome(&user, &pin, to, &settings.dial_in_numbers)
        })?;
        Ok(Enabled {
            user: UserView::from(&user),
            pin,
            created,
            email,
        })
    }

    /// Disables a user: their PIN no longer starts meetings (the store answers
    /// `PinCheck::Disabled`). Their conference ID stays theirs. Disabling twice is no error.
    pub fn disable_user(
        &self,
        actor: &Actor,
        id: &str,
        now: SystemTime,
    ) -> Result<UserView, AdminError> {
        let result = self
            .store
            .update_user(&UserId(id.to_string()), |u| u.enabled = false)
            .map(|u| UserView::from(&u))
            .map_err(AdminError::from);
        self.audited(actor, audit::USER_DISABLE, id, now, result, |_| {
            "disabled".to_string()
        })
    }

    pub fn user(&self, id: &str) -> Result<UserView, AdminError> {
        let id = UserId(id.to_string());
        match self.store.user(&id)? {
            Some(u) => Ok(UserView::from(&u)),
            None => Err(StoreError::UserNotFound(id).into()),
        }
    }

    /// Every user, ordered by id.
    pub fn users(&self) -> Result<Vec<UserView>, AdminError> {
        Ok(self.store.users()?.iter().map(UserView::from).collect())
    }

    /// A new CSPRNG PIN at the tenant's current length (never weak, never the previous one);
    /// the old PIN stops working when this returns. Queues the PIN email per `options`.
    /// The administrator's reset and the user's own (actor [`Actor::user`]) are this method.
    pub fn reset_pin(
        &self,
        actor: &Actor,
        id: &str,
        options: &EmailOptions,
        now: SystemTime,
    ) -> Result<PinReset, AdminError> {
        let result = self.reset_pin_inner(id, options, now);
        self.audited(actor, audit::PIN_RESET, id, now, result, |r| {
            format!(
                "new PIN of {} digits issued; {}",
                r.pin.len(),
                describe_email(&r.email)
            )
        })
    }

    fn reset_pin_inner(
        &self,
        id: &str,
        options: &EmailOptions,
        now: SystemTime,
    ) -> Result<PinReset, AdminError> {
        let (id, settings, to) = self.prepare_user_email(id, options)?;
        let (user, pin) = self.store.reset_pin(&id, &self.pepper)?;
        let email = self.send(to, now, |to| {
            emails::pin_reset(&user, &pin, to, &settings.dial_in_numbers)
        })?;
        Ok(PinReset {
            user: UserView::from(&user),
            pin,
            email,
        })
    }

    /// A new conference ID at the tenant's current length; the old one stops working when
    /// this returns. Queues the email with the new ID per `options`.
    pub fn reset_conference_id(
        &self,
        actor: &Actor,
        id: &str,
        options: &EmailOptions,
        now: SystemTime,
    ) -> Result<ConferenceIdReset, AdminError> {
        let result = self.reset_conference_id_inner(id, options, now);
        self.audited(actor, audit::CONFERENCE_ID_RESET, id, now, result, |r| {
            format!(
                "conference id {} -> {}; {}",
                r.old_conference_id,
                r.user.conference_id,
                describe_email(&r.email)
            )
        })
    }

    fn reset_conference_id_inner(
        &self,
        id: &str,
        options: &EmailOptions,
        now: SystemTime,
    ) -> Result<ConferenceIdReset, AdminError> {
        let (id, settings, to) = self.prepare_user_email(id, options)?;
        let (user, old) = self.store.reset_conference_id(&id)?;
        let email = self.send(to, now, |to| {
            emails::conference_id_reset(&user, to, &settings.dial_in_numbers)
        })?;
        Ok(ConferenceIdReset {
            user: UserView::from(&user),
            old_conference_id: old.to_string(),
            email,
        })
    }

    // ---- lockouts -------------------------------------------------------------------------

    /// Conferences whose organizer PIN entry is locked at `now`.
    pub fn lockouts(&self, now: SystemTime) -> Result<Vec<LockoutView>, AdminError> {
        self.store
            .list_lockouts(now)?
            .into_iter()
            .map(|l| {
                let user = self.store.user_by_conference(&l.conference)?;
                Ok(LockoutView {
                    conference_id: l.conference.to_string(),
                    user_id: user.map(|u| u.id.to_string()),
                    until: store::format_utc(l.until),
                })
            })
            .collect()
    }

    /// Lifts the lockout of `conference` (and forgets its counted failures). A conference
    /// that is not locked is not found.
    pub fn clear_lockout(
        &self,
        actor: &Actor,
        conference: &str,
        now: SystemTime,
    ) -> Result<(), AdminError> {
        let result = self.clear_lockout_inner(conference, now);
        self.audited(actor, audit::LOCKOUT_CLEAR, conference, now, result, |()| {
            "lockout cleared".to_string()
        })
    }

    fn clear_lockout_inner(&self, conference: &str, now: SystemTime) -> Result<(), AdminError> {
        let id = ConferenceId::parse(conference).ok_or_else(|| {
            AdminError::BadRequest(format!(
                "{conference:?} is not a conference ID (4 to 15 digits)"
            ))
        })?;
        if self.store.pin_lockout(&id, now)?.is_none() {
            return Err(AdminError::NotFound(format!(
                "conference {id} is not locked"
            )));
        }
        self.store.clear_lockout(&id)?;
        Ok(())
    }

    // ---- per-source blocks (issue 7) ------------------------------------------------------

    /// Caller sources blocked at `now` for too many failed conference IDs or PINs.
    pub fn source_blocks(&self, now: SystemTime) -> Result<Vec<SourceBlockView>, AdminError> {
        Ok(self
            .store
            .source_blocks(now)?
            .into_iter()
            .map(|b| SourceBlockView {
                source: b.source.to_string(),
                reason: b.reason,
                failures: b.failures,
                limit: b.limit,
                until: store::format_utc(b.until),
                refused_calls: b.refused_calls,
            })
            .collect())
    }

    /// Unblocks `source` (an IP address or `caller:NUMBER`) and forgets its counted failures.
    /// A source that is not blocked is not found.
    pub fn clear_source_block(
        &self,
        actor: &Actor,
        source: &str,
        now: SystemTime,
    ) -> Result<(), AdminError> {
        let result = self.clear_source_block_inner(source, now);
        self.audited(
            actor,
            audit::SOURCE_BLOCK_CLEAR,
            source,
            now,
            result,
            |()| "source block cleared".to_string(),
        )
    }

    fn clear_source_block_inner(&self, source: &str, now: SystemTime) -> Result<(), AdminError> {
        let key = source
            .parse::<crate::source::SourceKey>()
            .map_err(AdminError::BadRequest)?;
        if self.store.source_blocked(&key, now).is_none()
            && !self
                .store
                .source_blocks(now)?
                .iter()
                .any(|b| b.source == key)
        {
            return Err(AdminError::NotFound(format!("source {key} is not blocked")));
        }
        self.store.clear_source_block(&key, now)?;
        Ok(())
    }

    // ---- tenant settings ------------------------------------------------------------------

    pub fn settings(&self) -> Result<TenantSettings, AdminError> {
        Ok(self.store.tenant_settings()?)
    }

    /// Applies `patch` (validated as a whole: nothing changes if one field is out of range).
    /// A new PIN length applies to PINs generated afterwards; existing PINs keep theirs.
    pub fn update_settings(
        &self,
        actor: &Actor,
        patch: &SettingsPatch,
        now: SystemTime,
    ) -> Result<TenantSettings, AdminError> {
        let result = self.update_settings_inner(patch);
        self.audited(
            actor,
            audit::SETTINGS_SET,
            "tenant",
            now,
            result,
            |(_, changes)| {
                if changes.is_empty() {
                    "no change".to_string()
                } else {
                    changes.join(", ")
                }
            },
        )
        .map(|(settings, _)| settings)
    }

    fn update_settings_inner(
        &self,
        patch: &SettingsPatch,
    ) -> Result<(TenantSettings, Vec<String>), AdminError> {
        let (settings, changes) = patch.apply(self.store.tenant_settings()?);
        self.store.set_tenant_settings(&settings)?;
        Ok((settings, changes))
    }

    // ---- audit and outbox -----------------------------------------------------------------

    /// The last `limit` audit entries (default [`DEFAULT_AUDIT_LIMIT`]), oldest first.
    pub fn audit(&self, limit: Option<usize>) -> Result<Vec<AuditView>, AdminError> {
        let limit = limit.unwrap_or(DEFAULT_AUDIT_LIMIT);
        if !(1..=MAX_AUDIT_LIMIT).contains(&limit) {
            return Err(AdminError::BadRequest(format!(
                "limit must be between 1 and {MAX_AUDIT_LIMIT}, got {limit}"
            )));
        }
        Ok(self
            .store
            .audit_tail(limit)?
            .iter()
            .map(|e| AuditView {
                at: store::format_utc(e.at()),
                actor: e.actor().to_string(),
                action: e.action().to_string(),
                target: e.target().to_string(),
                outcome: e.outcome().to_string(),
                source: e.source().map(|s| s.to_string()),
            })
            .collect())
    }

    /// Every email in the outbox (metadata only), oldest first.
    pub fn emails(&self) -> Result<Vec<EmailView>, AdminError> {
        Ok(self.store.emails()?.iter().map(EmailView::from).collect())
    }

    // ---- helpers --------------------------------------------------------------------------

    /// The checks before an operation that emails user `id`: they exist, and the email
    /// options are valid. Returns the id, the tenant settings and where the email goes.
    #[allow(clippy::type_complexity)]
    fn prepare_user_email(
        &self,
        id: &str,
        options: &EmailOptions,
    ) -> Result<(UserId, TenantSettings, Result<String, &'static str>), AdminError> {
        let id = UserId(id.to_string());
        let settings = self.store.tenant_settings()?;
        let user = self
            .store
            .user(&id)?
            .ok_or_else(|| StoreError::UserNotFound(id.clone()))?;
        let to = email_destination(&settings, options, &user.email)?;
        Ok((id, settings, to))
    }

    /// Queues the email `compose` builds for `to`, if there is an address to send to.
    fn send(
        &self,
        to: Result<String, &'static str>,
        now: SystemTime,
        compose: impl FnOnce(&str) -> Email,
    ) -> Result<EmailOutcome, AdminError> {
        match to {
            Ok(to) => {
                let id = self.queue_email(&compose(&to), now)?;
                Ok(EmailOutcome::Queued { id, to })
            }
            Err(reason) => Ok(EmailOutcome::NotSent {
                reason: reason.to_string(),
            }),
        }
    }

    /// Writes the audit entry for `result` (the outcome `describe` gives, or the refusal) and
    /// passes `result` on. A failing audit write fails the operation: an unaudited change
    /// must not look successful.
    fn audited<T>(
        &self,
        actor: &Actor,
        action: &'static str,
        target: &str,
        now: SystemTime,
        result: Result<T, AdminError>,
        describe: impl FnOnce(&T) -> String,
    ) -> Result<T, AdminError> {
        let outcome = match &result {
            Ok(value) => describe(value),
            Err(e) => format!("refused: {e}"),
        };
        let entry = AuditEntry::new(now, &actor.name, action, target, outcome, actor.source);
        self.store.append_audit(&entry)?;
        result
    }
}

/// Where the email goes under the tenant's rules: `Ok(address)`, or `Err(why not)` when no
/// email is to be sent. A bad combination or address is a [`AdminError::BadRequest`].
fn email_destination(
    settings: &TenantSettings,
    options: &EmailOptions,
    primary: &str,
) -> Result<Result<String, &'static str>, AdminError> {
    match (&options.send_email_to_address, options.send_email) {
        (Some(_), false) => Err(AdminError::BadRequest(
            "send_email_to_address is only valid together with send_email".to_string(),
        )),
        (Some(address), true) => {
            store::validate_email(address)?;
            Ok(Ok(address.clone()))
        }
        (None, true) => Ok(Ok(primary.to_string())),
        (None, false) if settings.auto_email => Ok(Ok(primary.to_string())),
        (None, false) => Ok(Err(AUTO_EMAIL_OFF)),
    }
}

fn describe_email(outcome: &EmailOutcome) -> String {
    match outcome {
        EmailOutcome::Queued { id, to } => format!("email queued to {to} (id {id})"),
        EmailOutcome::NotSent { reason } => format!("no email: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::Duration;

    use super::*;
    use crate::store::PinCheck;

    fn service() -> (tempfile::TempDir, Service) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("data")).unwrap();
        let pepper = Pepper::from_bytes("service-test-pepper-0123456789").unwrap();
        (
            dir,
            Service::new(Arc::new(store), Arc::new(pepper), Arc::default()),
        )
    }

    fn admin() -> Actor {
        Actor::admin(Some(IpAddr::V4(Ipv4Addr::LOCALHOST)))
    }

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn req(id: &str) -> EnableUser {
        EnableUser {
            id: id.to_string(),
            display_name: format!("Name of {id}"),
            email: id.to_string(),
            requires_pin: None,
            send_email: false,
            send_email_to_address: None,
        }
    }

    fn check(s: &Service, user: &UserView, pin: &Pin) -> PinCheck {
        s.store
            .check_organizer_pin(
                &ConferenceId(user.conference_id.clone()),
                pin,
                &s.pepper,
                &IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)).into(),
                t0(),
            )
            .unwrap()
    }

    fn auto_email(s: &Service, on: bool) {
        let patch = SettingsPatch {
            auto_email: Some(on),
            ..SettingsPatch::default()
        };
        s.update_settings(&admin(), &patch, t0()).unwrap();
    }

    /// Every queued email's full text and HTML.
    fn bodies(s: &Service) -> Vec<Email> {
        s.store
            .emails()
            .unwrap()
            .into_iter()
            .map(|q| q.email.unwrap())
            .collect()
    }

    #[test]
    fn enable_gives_a_conference_id_and_a_pin_at_the_tenant_length_and_welcomes() {
        let (_d, s) = service();
        let e = s
            .enable_user(&admin(), req("amos@contoso.com"), t0())
            .unwrap();
        assert!(e.created);
        assert_eq!(e.user.conference_id.len(), 7);
        assert!(e.user.conference_id.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(e.pin.len(), 5);
        assert_eq!(e.user.pin_length, Some(5));
        assert_eq!(e.user.pin.as_deref(), Some("*****"));
        assert!(matches!(check(&s, &e.user, &e.pin), PinCheck::Verified(_)));
        let conference = ConferenceId(e.user.conference_id.clone());
        assert_eq!(pin::weakness(e.pin.expose(), &conference), None);
        let EmailOutcome::Queued { id, to } = &e.email else {
            panic!("{:?}", e.email)
        };
        assert_eq!(to, "amos@contoso.com");
        let queued = s.store.emails().unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].id, *id);
        let mail = queued[0].email.as_ref().unwrap();
        assert!(mail.text.contains(&e.user.conference_id));
        assert!(mail.text.contains(e.pin.expose()));
    }

    #[test]
    fn duplicate_is_a_conflict_and_bad_input_a_bad_request() {
        let (_d, s) = service();
        s.enable_user(&admin(), req("a@example.com"), t0()).unwrap();
        let dup = s.enable_user(&admin(), req("a@example.com"), t0());
        assert!(matches!(dup, Err(AdminError::Conflict(_))), "{dup:?}");
        let mut bad = req("b@example.com");
        bad.email = "not an email".into();
        let err = s.enable_user(&admin(), bad, t0()).unwrap_err();
        assert!(matches!(err, AdminError::BadRequest(_)), "{err:?}");
        assert!(err.to_string().contains("malformed email"), "{err}");
        let mut bad = req("c@example.com");
        bad.display_name = " ".into();
        assert!(matches!(
            s.enable_user(&admin(), bad, t0()),
            Err(AdminError::BadRequest(_))
        ));
        // Nothing was created by the refusals.
        assert_eq!(s.users().unwrap().len(), 1);
        assert!(matches!(
            s.user("b@example.com"),
            Err(AdminError::NotFound(_))
        ));
    }

    #[test]
    fn unknown_users_are_not_found_for_every_operation() {
        let (_d, s) = service();
        let none = "ghost@example.com";
        let o = EmailOptions::default();
        assert!(matches!(s.user(none), Err(AdminError::NotFound(_))));
        assert!(matches!(
            s.disable_user(&admin(), none, t0()),
            Err(AdminError::NotFound(_))
        ));
        assert!(matches!(
            s.reset_pin(&admin(), none, &o, t0()),
            Err(AdminError::NotFound(_))
        ));
        assert!(matches!(
            s.reset_conference_id(&admin(), none, &o, t0()),
            Err(AdminError::NotFound(_))
        ));
    }

    #[test]
    fn disable_stops_the_pin_from_starting_meetings_and_enable_again_issues_a_new_one() {
        let (_d, s) = service();
        let e = s.enable_user(&admin(), req("a@example.com"), t0()).unwrap();
        let view = s.disable_user(&admin(), "a@example.com", t0()).unwrap();
        assert!(!view.enabled);
        assert_eq!(check(&s, &e.user, &e.pin), PinCheck::Disabled);
        let again = s.enable_user(&admin(), req("a@example.com"), t0()).unwrap();
        assert!(!again.created);
        assert!(again.user.enabled);
        assert_eq!(again.user.conference_id, e.user.conference_id);
        assert!(matches!(
            check(&s, &again.user, &again.pin),
            PinCheck::Verified(_)
        ));
        assert!(matches!(check(&s, &e.user, &e.pin), PinCheck::Wrong(_)));
    }

    #[test]
    fn reset_pin_invalidates_the_old_one_at_once_and_emails_the_new_one() {
        let (_d, s) = service();
        let e = s.enable_user(&admin(), req("a@example.com"), t0()).unwrap();
        let r = s
            .reset_pin(&admin(), "a@example.com", &EmailOptions::default(), t0())
            .unwrap();
        assert_ne!(r.pin, e.pin);
        let conference = ConferenceId(r.user.conference_id.clone());
        assert_eq!(pin::weakness(r.pin.expose(), &conference), None);
        assert!(matches!(check(&s, &r.user, &r.pin), PinCheck::Verified(_)));
        assert!(matches!(check(&s, &e.user, &e.pin), PinCheck::Wrong(_)));
        let mails = bodies(&s);
        assert_eq!(mails.len(), 2);
        assert_eq!(mails[1].to, "a@example.com");
        assert!(mails[1].text.contains(r.pin.expose()));
        assert!(mails[1].html.contains(r.pin.expose()));
        // The user's own reset is the same operation, audited with them as actor.
        let own = Actor::user(&UserId("a@example.com".into()), None);
        let r2 = s
            .reset_pin(&own, "a@example.com", &EmailOptions::default(), t0())
            .unwrap();
        assert!(matches!(check(&s, &r.user, &r.pin), PinCheck::Wrong(_)));
        assert!(matches!(
            check(&s, &r2.user, &r2.pin),
            PinCheck::Verified(_)
        ));
        let entries = s.audit(None).unwrap();
        let last = entries
            .iter()
            .rfind(|e| e.action == audit::PIN_RESET)
            .unwrap();
        assert_eq!(last.actor, "user:a@example.com");
    }

    #[test]
    fn auto_email_off_sends_nothing_and_says_so_unless_forced() {
        let (_d, s) = service();
        auto_email(&s, false);
        let e = s.enable_user(&admin(), req("a@example.com"), t0()).unwrap();
        assert!(
            matches!(&e.email, EmailOutcome::NotSent { reason } if reason.contains("automatic emails are off"))
        );
        let r = s
            .reset_pin(&admin(), "a@example.com", &EmailOptions::default(), t0())
            .unwrap();
        assert!(matches!(r.email, EmailOutcome::NotSent { .. }));
        assert!(s.emails().unwrap().is_empty());
        // send_email forces it, to the primary address …
        let forced = EmailOptions {
            send_email: true,
            send_email_to_address: None,
        };
        let r = s
            .reset_pin(&admin(), "a@example.com", &forced, t0())
            .unwrap();
        assert!(matches!(&r.email, EmailOutcome::Queued { to, .. } if to == "a@example.com"));
        // … or to another address.
        let elsewhere = EmailOptions {
            send_email: true,
            send_email_to_address: Some("helpdesk@example.org".into()),
        };
        let r = s
            .reset_pin(&admin(), "a@example.com", &elsewhere, t0())
            .unwrap();
        assert!(
            matches!(&r.email, EmailOutcome::Queued { to, .. } if to == "helpdesk@example.org")
        );
        let mails = bodies(&s);
        assert_eq!(mails.len(), 2);
        assert_eq!(mails[1].to, "helpdesk@example.org");
        assert!(mails[1].text.contains(r.pin.expose()));
    }

    #[test]
    fn send_email_to_requires_send_email_and_a_valid_address() {
        let (_d, s) = service();
        let e = s.enable_user(&admin(), req("a@example.com"), t0()).unwrap();
        let alone = EmailOptions {
            send_email: false,
            send_email_to_address: Some("x@example.com".into()),
        };
        let err = s
            .reset_pin(&admin(), "a@example.com", &alone, t0())
            .unwrap_err();
        assert!(matches!(err, AdminError::BadRequest(_)));
        assert_eq!(
            err.to_string(),
            "send_email_to_address is only valid together with send_email"
        );
        let bad = EmailOptions {
            send_email: true,
            send_email_to_address: Some("nobody".into()),
        };
        let err = s
            .reset_conference_id(&admin(), "a@example.com", &bad, t0())
            .unwrap_err();
        assert!(matches!(err, AdminError::BadRequest(_)), "{err:?}");
        // Refused before anything changed: the PIN and conference ID still work.
        assert!(matches!(check(&s, &e.user, &e.pin), PinCheck::Verified(_)));
        assert_eq!(s.emails().unwrap().len(), 1);
    }

    #[test]
    fn pin_length_is_4_to_12_and_applies_to_new_pins_only() {
        let (_d, s) = service();
        let e = s.enable_user(&admin(), req("a@example.com"), t0()).unwrap();
        for bad in [0, 3, 13, 200] {
            let patch = SettingsPatch {
                pin_length: Some(bad),
                ..SettingsPatch::default()
            };
            let err = s.update_settings(&admin(), &patch, t0()).unwrap_err();
            assert!(matches!(err, AdminError::BadRequest(_)));
            assert_eq!(
                err.to_string(),
                format!("pin_length must be between 4 and 12 digits, got {bad}")
            );
        }
        assert_eq!(s.settings().unwrap().pin_length, 5);
        let patch = SettingsPatch {
            pin_length: Some(8),
            ..SettingsPatch::default()
        };
        assert_eq!(
            s.update_settings(&admin(), &patch, t0())
                .unwrap()
                .pin_length,
            8
        );
        // The existing PIN keeps its length and still works.
        let view = s.user("a@example.com").unwrap();
        assert_eq!(view.pin_length, Some(5));
        assert!(matches!(check(&s, &view, &e.pin), PinCheck::Verified(_)));
        let r = s
            .reset_pin(&admin(), "a@example.com", &EmailOptions::default(), t0())
            .unwrap();
        assert_eq!(r.pin.len(), 8);
        assert_eq!(r.user.pin_length, Some(8));
        let b = s.enable_user(&admin(), req("b@example.com"), t0()).unwrap();
        assert_eq!(b.pin.len(), 8);
    }

    #[test]
    fn settings_defaults_and_patch() {
        let (_d, s) = service();
        let d = s.settings().unwrap();
        assert_eq!(d.pin_length, 5);
        assert!(d.auto_email);
        assert!(!d.allow_anonymous_start);
        assert!(d.organizers_require_pin);
        let patch = SettingsPatch {
            allow_anonymous_start: Some(true),
            organizers_require_pin: Some(false),
            dial_in_numbers: Some(vec!["+1 206 555 0100".into()]),
            ..SettingsPatch::default()
        };
        let after = s.update_settings(&admin(), &patch, t0()).unwrap();
        assert!(after.allow_anonymous_start && !after.organizers_require_pin);
        assert_eq!(s.settings().unwrap(), after);
        // New organizers follow organizers_require_pin.
        let e = s.enable_user(&admin(), req("a@example.com"), t0()).unwrap();
        assert!(!e.user.requires_pin);
        // The dial-in numbers are in the emails.
        assert!(bodies(&s)[0].text.contains("+1 206 555 0100"));
        let bad = SettingsPatch {
            dial_in_numbers: Some(vec!["call me".into()]),
            ..SettingsPatch::default()
        };
        assert!(matches!(
            s.update_settings(&admin(), &bad, t0()),
            Err(AdminError::BadRequest(_))
        ));
        assert_eq!(s.settings().unwrap(), after);
    }

    #[test]
    fn reset_conference_id_retires_the_old_one_and_emails_the_new_one() {
        let (_d, s) = service();
        let e = s.enable_user(&admin(), req("a@example.com"), t0()).unwrap();
        let r = s
            .reset_conference_id(&admin(), "a@example.com", &EmailOptions::default(), t0())
            .unwrap();
        assert_eq!(r.old_conference_id, e.user.conference_id);
        assert_ne!(r.user.conference_id, e.user.conference_id);
        let old = ConferenceId(e.user.conference_id.clone());
        assert_eq!(s.store.user_by_conference(&old).unwrap(), None);
        let new = ConferenceId(r.user.conference_id.clone());
        assert!(s.store.user_by_conference(&new).unwrap().is_some());
        // The PIN still works, under the new ID.
        assert!(matches!(check(&s, &r.user, &e.pin), PinCheck::Verified(_)));
        let mails = bodies(&s);
        assert_eq!(mails.len(), 2);
        assert!(mails[1].text.contains(&r.user.conference_id));
        assert!(!mails[1].text.contains(e.pin.expose()));
    }

    #[test]
    fn lockouts_are_listed_and_cleared() {
        let (_d, s) = service();
        let e = s.enable_user(&admin(), req("a@example.com"), t0()).unwrap();
        let conf = ConferenceId(e.user.conference_id.clone());
        let src = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9));
        for _ in 0..5 {
            s.store
                .record_pin_failure(&conf, &src.into(), t0())
                .unwrap();
        }
        let locked = s.lockouts(t0()).unwrap();
        assert_eq!(locked.len(), 1);
        assert_eq!(locked[0].conference_id, e.user.conference_id);
        assert_eq!(locked[0].user_id.as_deref(), Some("a@example.com"));
        s.clear_lockout(&admin(), conf.as_str(), t0()).unwrap();
        assert!(s.lockouts(t0()).unwrap().is_empty());
        assert!(matches!(check(&s, &e.user, &e.pin), PinCheck::Verified(_)));
        assert!(matches!(
            s.clear_lockout(&admin(), conf.as_str(), t0()),
            Err(AdminError::NotFound(_))
        ));
        assert!(matches!(
            s.clear_lockout(&admin(), "12ab", t0()),
            Err(AdminError::BadRequest(_))
        ));
    }

    #[test]
    fn views_mask_the_pin_everywhere() {
        let (_d, s) = service();
        let e = s.enable_user(&admin(), req("a@example.com"), t0()).unwrap();
        let digits = e.pin.expose().to_string();
        let shown = [
            serde_json::to_string(&s.user("a@example.com").unwrap()).unwrap(),
            serde_json::to_string(&s.users().unwrap()).unwrap(),
            serde_json::to_string(&e.user).unwrap(),
            serde_json::to_string(&s.emails().unwrap()).unwrap(),
            format!("{e:?}"),
        ];
        for text in shown {
            assert!(!text.contains(&digits), "{text}");
        }
        assert_eq!(s.users().unwrap()[0].pin.as_deref(), Some(pin::MASK));
    }

    #[test]
    fn every_change_and_refusal_is_audited_without_a_pin() {
        let (_d, s) = service();
        // 12-digit PINs: no chance of their digits turning up in a timestamp by accident.
        let patch = SettingsPatch {
            pin_length: Some(12),
            ..SettingsPatch::default()
        };
        s.update_settings(&admin(), &patch, t0()).unwrap();
        let e = s.enable_user(&admin(), req("a@example.com"), t0()).unwrap();
        let r = s
            .reset_pin(&admin(), "a@example.com", &EmailOptions::default(), t0())
            .unwrap();
        s.reset_conference_id(&admin(), "a@example.com", &EmailOptions::default(), t0())
            .unwrap();
        s.disable_user(&admin(), "a@example.com", t0()).unwrap();
        let again = s.enable_user(&admin(), req("a@example.com"), t0()).unwrap();
        let _ = s.enable_user(&admin(), req("a@example.com"), t0());
        let _ = s.reset_pin(
            &admin(),
            "ghost@example.com",
            &EmailOptions::default(),
            t0(),
        );
        let entries = s.audit(None).unwrap();
        let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(
            actions,
            [
                audit::SETTINGS_SET,
                audit::USER_ENABLE,
                audit::PIN_RESET,
                audit::CONFERENCE_ID_RESET,
                audit::USER_DISABLE,
                audit::USER_ENABLE,
                audit::USER_ENABLE,
                audit::PIN_RESET,
            ]
        );
        assert!(entries.iter().all(|e| e.actor == "admin"));
        assert!(
            entries
                .iter()
                .all(|e| e.source.as_deref() == Some("127.0.0.1"))
        );
        assert_eq!(entries[0].outcome, "pin_length 5 -> 12");
        assert_eq!(entries[1].target, "a@example.com");
        assert!(
            entries[1].outcome.starts_with("created;"),
            "{:?}",
            entries[1]
        );
        assert!(
            entries[6].outcome.starts_with("refused: "),
            "{:?}",
            entries[6]
        );
        assert!(entries[7].outcome.contains("no user"), "{:?}", entries[7]);
        let all = serde_json::to_string(&entries).unwrap();
        for pin in [&e.pin, &r.pin, &again.pin] {
            assert!(!all.contains(pin.expose()), "{all}");
        }
    }
}
