//! The embedded store (sled): users, the conference-ID index, tenant settings, failed-PIN
//! counters and lockouts, and the audit log. Everything else reaches sled through [`Store`].
//!
//! # On disk
//! `<data_dir>/lock` (held with `flock` while a [`Store`] is open; holds the owner's pid),
//! `<data_dir>/sled/` (the sled database), `<data_dir>/store.initialized` (tells a damaged
//! store from a new one) and, next to them but never inside sled, `<data_dir>/pepper` (see
//! [`crate::pin::Pepper`]). sled allows one process; a second [`Store::open`] gets
//! [`StoreError::Locked`].
//!
//! Trees: `users` (user id → JSON [`User`]), `conference_ids` (conference id → user id),
//! `settings` (`tenant` → JSON [`TenantSettings`]), `pin_failures_by_conference` and
//! `pin_failures_by_source` and `conference_id_failures_by_source` (key → JSON list of
//! failure times; a source key is an IP or `caller:NUMBER`, see [`SourceKey`]), `lockouts` (conference id →
//! JSON until), `audit` (big-endian u64 from sled's monotonic id generator → JSON
//! [`AuditEntry`]), `outbox` (big-endian u64 queue id → JSON [`QueuedEmail`]; the body is
//! dropped once delivered). The default tree holds `schema_version` (u32, big-endian) and the pepper
//! fingerprint. JSON, so a store can be inspected with any sled dump.
//!
//! # Durability
//! Every method that writes returns only after [`Store::persist`]: sled's `flush()` and then
//! an `fsync` of each file sled owns (see there for why the second step is needed). Writes are
//! therefore blocking I/O: callers on the tokio runtime use `spawn_blocking`. Reads
//! ([`Store::user_by_conference`], [`Store::tenant_settings`], …) do not sync and are fast.
//!
//! # Time
//! Methods about failures and lockouts take `now` explicitly (wall-clock `SystemTime`, since
//! lockouts must survive a restart), so the rules are tested without sleeping.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::{self, Read, Seek, Write};
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use email_address::EmailAddress;
use rand::RngExt;
use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::pin::{self, Pepper, Pin, PinError};
use crate::source::{Source, SourceKey};

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

/// The layout this build reads and writes. Bump it with a migration in [`Store::open`].
pub const SCHEMA_VERSION: u32 = 1;
/// Conference IDs are this many digits unless the tenant says otherwise.
pub const DEFAULT_CONFERENCE_ID_LEN: u8 = 7;
/// Allowed conference-ID lengths: at least 6 digits so IDs are not guessed by walking a
/// small space; at most 15, the longest [`ConferenceId::parse`] accepts.
pub const CONFERENCE_ID_LEN: RangeInclusive<u8> = 6..=15;
/// Default PIN length for a new tenant.
pub const DEFAULT_PIN_LEN: u8 = 5;

const SLED_DIR: &str = "sled";
const LOCK_FILE: &str = "lock";
/// Written (and synced) once the schema version is durable. sled silently recovers a damaged
/// log to an empty database, so "no schema version" alone cannot tell a new store from a
/// destroyed one; this file, outside sled, can.
const INIT_MARKER: &str = "store.initialized";
const KEY_SCHEMA_VERSION: &[u8] = b"schema_version";
const KEY_PEPPER_FINGERPRINT: &[u8] = b"pepper_fingerprint";
const KEY_TENANT: &[u8] = b"tenant";
/// Random draws before giving up on finding a free conference ID (each draw collides with
/// probability users / 9·10^(len-1): at 7 digits even a million users leave 1 in 9).
const CONFERENCE_ID_DRAWS: u32 = 64;
/// Failure times kept per key; counts saturate here, which bounds what a flood can write.
const MAX_KEPT_FAILURES: usize = 1024;

/// An organizer: who they are, their conference ID and the hash of their PIN.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub display_name: String,
    /// Primary address; PINs and conference IDs are emailed here (issue 5).
    pub email: String,
    /// Enabled for audio conferencing: a disabled user's PIN starts no meeting.
    pub enabled: bool,
    pub conference_id: ConferenceId,
    /// argon2id PHC string of the PIN (see [`crate::pin::hash`]); never the PIN.
    pub pin_hash: Option<String>,
    #[serde(with = "opt_unix_secs")]
    pub pin_set_at: Option<SystemTime>,
    pub pin_len: Option<u8>,
    /// The organizer must enter their PIN to start a meeting; callers wait in the lobby.
    pub requires_pin: bool,
    #[serde(with = "unix_secs")]
    pub created_at: SystemTime,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("display_name", &self.display_name)
            .field("email", &self.email)
            .field("enabled", &self.enabled)
            .field("conference_id", &self.conference_id)
            .field("pin_hash", &self.pin_hash.as_ref().map(|_| "<argon2id>"))
            .field("pin_set_at", &self.pin_set_at)
            .field("pin_len", &self.pin_len)
            .field("requires_pin", &self.requires_pin)
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// What an administrator (or `pinbridge users add`) supplies to create an organizer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    pub id: UserId,
    pub display_name: String,
    pub email: String,
    /// `None`: the tenant's [`TenantSettings::organizers_require_pin`].
    pub requires_pin: Option<bool>,
}

impl NewUser {
    pub fn validate(&self) -> Result<(), StoreError> {
        let bad_id = |reason: &str| {
            Err(StoreError::InvalidUserId {
                id: self.id.0.clone(),
                reason: reason.to_string(),
            })
        };
        if self.id.0.is_empty() {
            return bad_id("it is empty");
        }
        if self.id.0.len() > 254 {
            return bad_id("it is longer than 254 bytes");
        }
        if self
            .id
            .0
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return bad_id("it contains spaces or control characters");
        }
        if self.display_name.trim().is_empty() || self.display_name.len() > 256 {
            return Err(StoreError::InvalidDisplayName(self.display_name.clone()));
        }
        if self.display_name.chars().any(char::is_control) {
            return Err(StoreError::InvalidDisplayName(self.display_name.clone()));
        }
        validate_email(&self.email)
    }
}

/// A deliverable-looking address: `local@domain.tld`, no display name, no `[IP]` literal
/// (RFC 5322 `addr-spec` as checked by the `email_address` crate, plus a required TLD).
pub fn validate_email(email: &str) -> Result<(), StoreError> {
    let options = email_address::Options::default()
        .without_display_text()
        .without_domain_literal()
        .with_required_tld();
    let invalid = |reason: String| StoreError::InvalidEmail {
        email: email.to_string(),
        reason,
    };
    let parsed =
        EmailAddress::parse_with_options(email, options).map_err(|e| invalid(e.to_string()))?;
    // The crate allows any atom characters in the domain; a host name has letters, digits
    // and hyphens only (RFC 1123 §2.1; letters include IDN ones).
    let host_char = |c: char| c.is_alphanumeric() || c == '-' || c == '.';
    if !parsed.domain().chars().all(host_char) {
        return Err(invalid("the domain is not a host name".to_string()));
    }
    Ok(())
}

/// Tenant-wide policy. Missing fields of a stored record take their defaults, so adding a
/// field needs no migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TenantSettings {
    /// Length of PINs generated from now on (4–12); existing PINs keep theirs.
    pub pin_length: u8,
    /// Anonymous callers may start a meeting (normally they wait for a known caller).
    pub allow_anonymous_start: bool,
    /// New organizers must enter their PIN to start their meetings.
    pub organizers_require_pin: bool,
    /// Email a new or reset PIN to the user automatically.
    pub auto_email: bool,
    /// Dial-in numbers shown in emails, as written (`+1 206 555 0100`).
    pub dial_in_numbers: Vec<String>,
    /// Digits in conference IDs allocated from now on ([`CONFERENCE_ID_LEN`]).
    pub conference_id_length: u8,
}

impl Default for TenantSettings {
    fn default() -> Self {
        TenantSettings {
            pin_length: DEFAULT_PIN_LEN,
            allow_anonymous_start: false,
            organizers_require_pin: true,
            auto_email: true,
            dial_in_numbers: Vec::new(),
            conference_id_length: DEFAULT_CONFERENCE_ID_LEN,
        }
    }
}

impl TenantSettings {
    /// Checks every field; the error names the setting and the allowed values.
    pub fn validate(&self) -> Result<(), SettingsError> {
        pin::check_length(self.pin_length)
            .map_err(|_| SettingsError::PinLength(self.pin_length))?;
        if !CONFERENCE_ID_LEN.contains(&self.conference_id_length) {
            return Err(SettingsError::ConferenceIdLength(self.conference_id_length));
        }
        for number in &self.dial_in_numbers {
            let allowed = |c: char| c.is_ascii_digit() || " +-().".contains(c);
            let digits = number.chars().filter(char::is_ascii_digit).count();
            if number.len() > 32 || digits < 3 || !number.chars().all(allowed) {
                return Err(SettingsError::DialInNumber(number.clone()));
            }
        }
        Ok(())
    }
}

/// A tenant setting out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("pin_length must be between {min} and {max} digits, got {0}", min = pin::MIN_LEN, max = pin::MAX_LEN)]
    PinLength(u8),
    #[error(
        "conference_id_length must be between {min} and {max} digits, got {0}",
        min = CONFERENCE_ID_LEN.start(),
        max = CONFERENCE_ID_LEN.end()
    )]
    ConferenceIdLength(u8),
    #[error(
        "dial-in number {0:?} must be up to 32 characters of digits, spaces and + - ( ) ., with at least 3 digits"
    )]
    DialInNumber(String),
}

/// The brute-force rules (DESIGN.md call flow, step 3; issue 7). Wrong PINs are counted per
/// conference (5 in 10 minutes lock its PIN entry) and per caller source; unknown or invalid
/// conference IDs per source. A source with too many of either within `source_window` is
/// blocked: its PINs are refused without running argon2, its conference IDs without a
/// look-up, its new calls with `403`, until enough of its failures leave the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutPolicy {
    /// Failures for one conference within `window` that lock it.
    pub max_failures: u32,
    /// Sliding window over which a conference's failures are counted.
    pub window: Duration,
    /// How long organizer PIN entry stays locked.
    pub lockout: Duration,
    /// Sliding window over which a source's failures are counted.
    pub source_window: Duration,
    /// Wrong PINs from one source within `source_window` that block it (0: no limit).
    pub source_max_pin_failures: u32,
    /// Unknown or invalid conference IDs from one source within `source_window` that block
    /// it (0: no limit).
    pub source_max_id_failures: u32,
}

impl LockoutPolicy {
    /// 5 failures …
    pub const DEFAULT_MAX_FAILURES: u32 = 5;
    /// … within 10 minutes …
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10 * 60);
    /// … lock PIN entry for 15 minutes (DESIGN.md, issue 4).
    pub const DEFAULT_LOCKOUT: Duration = Duration::from_secs(15 * 60);
    /// Per-source failures are counted over the last hour.
    pub const DEFAULT_SOURCE_WINDOW: Duration = Duration::from_secs(60 * 60);
    /// 10 wrong PINs per source per hour: three calls' worth of typos (3 tries per call)
    /// and then some, for an organizer who forgot their PIN; and half of what the
    /// per-conference lockout lets through against one conference (20 per hour), so one
    /// source spraying many conferences gains nothing over attacking one (SECURITY.md).
    pub const DEFAULT_SOURCE_MAX_PIN_FAILURES: u32 = 10;
    /// 20 unknown conference IDs per source per hour: a caller who mistypes gets six full
    /// calls (3 tries each) before being blocked, while finding one of M valid 7-digit IDs
    /// takes 10⁷/(20·M) hours from one source (500 h ≈ 21 days with M = 1 000).
    pub const DEFAULT_SOURCE_MAX_ID_FAILURES: u32 = 20;
}

impl Default for LockoutPolicy {
    fn default() -> Self {
        LockoutPolicy {
            max_failures: Self::DEFAULT_MAX_FAILURES,
            window: Self::DEFAULT_WINDOW,
            lockout: Self::DEFAULT_LOCKOUT,
            source_window: Self::DEFAULT_SOURCE_WINDOW,
            source_max_pin_failures: Self::DEFAULT_SOURCE_MAX_PIN_FAILURES,
            source_max_id_failures: Self::DEFAULT_SOURCE_MAX_ID_FAILURES,
        }
    }
}

/// What one wrong PIN did. Every variant carries the caller source's failure count in its
/// window (including this one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureOutcome {
    /// Counted; `remaining` more failures within the window lock the conference.
    Counted {
        failures: u32,
        remaining: u32,
        source_failures: u32,
    },
    /// This failure locked organizer PIN entry for the conference until `until`.
    LockedOut {
        until: SystemTime,
        source_failures: u32,
    },
    /// The conference was already locked (the caller should not have been asked for a PIN);
    /// counted for the source only, and the lockout is not extended.
    AlreadyLocked {
        until: SystemTime,
        source_failures: u32,
    },
}

impl FailureOutcome {
    /// When organizer PIN entry unlocks, if it is locked now.
    pub fn locked_until(&self) -> Option<SystemTime> {
        match *self {
            FailureOutcome::Counted { .. } => None,
            FailureOutcome::LockedOut { until, .. }
            | FailureOutcome::AlreadyLocked { until, .. } => Some(until),
        }
    }

    pub fn source_failures(&self) -> u32 {
        match *self {
            FailureOutcome::Counted {
                source_failures, ..
            }
            | FailureOutcome::LockedOut {
                source_failures, ..
            }
            | FailureOutcome::AlreadyLocked {
                source_failures, ..
            } => source_failures,
        }
    }
}

/// The store's verdict on an organizer PIN keyed in for a conference
/// ([`Store::check_organizer_pin`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinCheck {
    /// The organizer's PIN: their meeting may start.
    Verified(User),
    /// Not the PIN; the failure was counted (and may have locked the conference: see
    /// [`FailureOutcome::locked_until`]).
    Wrong(FailureOutcome),
    /// PIN entry for the conference is locked until then; the PIN was not checked or counted.
    Locked { until: SystemTime },
    /// No organizer has this conference ID; nothing was counted.
    UnknownConference,
    /// The caller's source is blocked (too many failures from it): refused without
    /// checking the PIN (no argon2) or counting it; audited.
    SourceBlocked { until: SystemTime },
    /// The organizer is disabled for audio conferencing: their PIN starts nothing. Not
    /// checked, not counted.
    Disabled,
}

/// Which per-source limit a blocked source is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockReason {
    /// [`LockoutPolicy::source_max_pin_failures`] wrong PINs.
    PinFailures,
    /// [`LockoutPolicy::source_max_id_failures`] unknown or invalid conference IDs.
    ConferenceIdFailures,
}

/// A source over one of its limits ([`Store::source_blocks`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceBlock {
    pub source: SourceKey,
    pub reason: BlockReason,
    /// Failures of that kind in the window now.
    pub failures: u32,
    pub limit: u32,
    /// When enough failures have left the window for the source to be let in again.
    pub until: SystemTime,
    /// New calls refused with `403` since this process started (not stored: a flood's
    /// count is not worth a disk write per INVITE).
    pub refused_calls: u64,
}

/// A source's failures in the window ([`Store::source_failures`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SourceFailures {
    pub pins: u32,
    pub conference_ids: u32,
}

/// A new call from a blocked source ([`Store::refuse_call`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRefusal {
    pub until: SystemTime,
    /// The audit entry to append (blocking: do it off the signalling task), for the first
    /// refusal of the source in each window; `None` for the rest, which are only counted.
    pub audit: Option<AuditEntry>,
}

/// A conference whose organizer PIN entry is locked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lockout {
    pub conference: ConferenceId,
    pub until: SystemTime,
}

/// One line of the audit log: who did what to whom, and how it went.
///
/// Built only with [`AuditEntry::new`]: the action is a `&'static str` from [`audit`] (a
/// fixed vocabulary, never runtime text), and nothing converts a [`Pin`] to text except its
/// masked `Display` (`*****`); the digits come out only through `Pin::expose`, whose call
/// sites a test restricts. Fields are read through accessors, so an entry read back cannot
/// be altered and re-appended either.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    #[serde(with = "unix_millis")]
    at: SystemTime,
    actor: String,
    action: String,
    target: String,
    outcome: String,
    source: Option<IpAddr>,
}

/// The audit vocabulary.
pub mod audit {
    pub const USER_CREATE: &str = "user.create";
    pub const PIN_RESET: &str = "user.reset_pin";
    pub const PIN_FAILURE: &str = "pin.failure";
    pub const PIN_LOCKOUT: &str = "pin.lockout";
    pub const LOCKOUT_CLEAR: &str = "pin.lockout_clear";
    pub const SETTINGS_SET: &str = "tenant.settings";
    // Issue 5, the admin service (`crate::admin::service`).
    pub const USER_ENABLE: &str = "user.enable";
    pub const USER_DISABLE: &str = "user.disable";
    pub const CONFERENCE_ID_RESET: &str = "user.reset_conference_id";
    pub const EMAIL_QUEUE: &str = "email.queue";
    // Issue 7, per-source limits. Never the digits of an unknown conference ID: a caller
    // who confuses the prompts may have keyed their PIN there.
    pub const CONFERENCE_ID_FAILURE: &str = "conference_id.failure";
    /// A source reached one of its limits.
    pub const SOURCE_BLOCK: &str = "source.block";
    /// A blocked source's PIN, conference ID or call was refused (calls: once per window).
    pub const SOURCE_REFUSED: &str = "source.refused";
    pub const SOURCE_BLOCK_CLEAR: &str = "source.block_clear";
    /// Actor for entries the store writes on a caller's behalf.
    pub const ACTOR_CALLER: &str = "caller";
    /// Actor for consequences the store decides itself (a lockout).
    pub const ACTOR_SYSTEM: &str = "system";
}

impl AuditEntry {
    pub fn new(
        at: SystemTime,
        actor: impl Into<String>,
        action: &'static str,
        target: impl Into<String>,
        outcome: impl Into<String>,
        source: Option<IpAddr>,
    ) -> AuditEntry {
        AuditEntry {
            at,
            actor: actor.into(),
            action: action.to_string(),
            target: target.into(),
            outcome: outcome.into(),
            source,
        }
    }

    pub fn at(&self) -> SystemTime {
        self.at
    }

    pub fn actor(&self) -> &str {
        &self.actor
    }

    pub fn action(&self) -> &str {
        &self.action
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    pub fn outcome(&self) -> &str {
        &self.outcome
    }

    pub fn source(&self) -> Option<IpAddr> {
        self.source
    }
}

/// Everything the store can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data directory {path} is not writable: {source}")]
    Unwritable { path: PathBuf, source: io::Error },
    #[error(
        "the store in {path} is in use by another process{}: stop the running pinbridge server first (sled allows one process)",
        holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    Locked { path: PathBuf, holder: Option<u32> },
    #[error("the store is corrupt: {0}")]
    Corrupt(String),
    #[error(
        "the store has schema version {found}, but this build of pinbridge reads version {supported}"
    )]
    SchemaVersion { found: u32, supported: u32 },
    #[error("user {0} already exists")]
    UserExists(UserId),
    #[error("no user {0}")]
    UserNotFound(UserId),
    #[error("invalid user id {id:?}: {reason}")]
    InvalidUserId { id: String, reason: String },
    #[error("invalid display name {0:?}: 1 to 256 characters, no control characters")]
    InvalidDisplayName(String),
    #[error("malformed email address {email:?}: {reason}")]
    InvalidEmail { email: String, reason: String },
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("no free conference ID of {0} digits found; raise conference_id_length")]
    ConferenceIdsExhausted(u8),
    #[error(
        "the PIN pepper differs from the one this store's PINs were hashed with; use the same PINBRIDGE_PIN_PEPPER / pin pepper setting / <data_dir>/pepper file as the server"
    )]
    PepperMismatch,
    #[error("no queued email {0}")]
    EmailNotFound(u64),
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error("store I/O failed: {0}")]
    Io(#[from] io::Error),
    #[error("store failed: {0}")]
    Backend(sled::Error),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(io) => StoreError::Io(io),
            sled::Error::Corruption { at, .. } => {
                StoreError::Corrupt(format!("sled found corrupted data at {at:?}"))
            }
            other => StoreError::Backend(other),
        }
    }
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(e: TransactionError<StoreError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => e.into(),
        }
    }
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

/// The open store. Holds the directory lock until dropped. All methods take `&self`; share
/// it as `Arc<Store>`.
pub struct Store {
    db: sled::Db,
    users: sled::Tree,
    conference_ids: sled::Tree,
    settings: sled::Tree,
    conference_failures: sled::Tree,
    source_failures: sled::Tree,
    /// Unknown or invalid conference IDs per source (issue 7).
    source_id_failures: sled::Tree,
    lockouts: sled::Tree,
    audit: sled::Tree,
    /// Email waiting for delivery (and the record of delivered ones), by queue id.
    outbox: sled::Tree,
    /// One-time sign-in links of the self-service page, by the BLAKE2 hash of the token.
    sign_in_links: sled::Tree,
    sled_dir: PathBuf,
    policy: LockoutPolicy,
    /// Blocked sources, mirrored from the two per-source trees (rebuilt on open and on a
    /// policy change, updated by every write to them), so a new call is checked with a map
    /// look-up and never waits on sled; plus the refused-call counts.
    blocks: Mutex<HashMap<SourceKey, BlockMemo>>,
    /// PIN verifications under way per source: they count against the source's limit until
    /// their failure is recorded, so concurrent calls cannot overshoot it (see
    /// [`Store::check_organizer_pin`]).
    pins_in_flight: Mutex<HashMap<SourceKey, u32>>,
    /// The last pepper [`Store::check_pepper`] accepted, so the argon2 check runs once.
    checked_pepper: Mutex<Option<Pepper>>,
    _lock: fs::File,
}

impl Store {
    /// Opens (creating if needed) the store in `data_dir` with the default [`LockoutPolicy`].
    ///
    /// Errors: [`StoreError::Unwritable`] when the directory cannot be created or written,
    /// [`StoreError::Locked`] when another process (or another `Store` in this one) has it
    /// open, [`StoreError::Corrupt`] when sled or our records cannot be read, and
    /// [`StoreError::SchemaVersion`] when it was written by an incompatible build.
    pub fn open(data_dir: impl AsRef<Path>) -> Result<Store, StoreError> {
        let data_dir = data_dir.as_ref();
        let unwritable = |source| StoreError::Unwritable {
            path: data_dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(data_dir).map_err(unwritable)?;
        let lock = lock_dir(data_dir)?;
        let sled_dir = data_dir.join(SLED_DIR);
        let db = sled::Config::new()
            .path(&sled_dir)
            .open()
            .map_err(|e| open_error(data_dir, e))?;
        let tree = |name: &str| db.open_tree(name).map_err(|e| open_error(data_dir, e));
        let store = Store {
            users: tree("users")?,
            conference_ids: tree("conference_ids")?,
            settings: tree("settings")?,
            conference_failures: tree("pin_failures_by_conference")?,
            source_failures: tree("pin_failures_by_source")?,
            source_id_failures: tree("conference_id_failures_by_source")?,
            lockouts: tree("lockouts")?,
            audit: tree("audit")?,
            outbox: tree("outbox")?,
            sign_in_links: tree("sign_in_links")?,
            db,
            sled_dir,
            policy: LockoutPolicy::default(),
            blocks: Mutex::new(HashMap::new()),
            pins_in_flight: Mutex::new(HashMap::new()),
            checked_pepper: Mutex::new(None),
            _lock: lock,
        };
        store.check_schema(data_dir).map_err(|e| match e {
            StoreError::Io(source) => unwritable(source),
            e => e,
        })?;
        store.rebuild_blocks(SystemTime::now())?;
        Ok(store)
    }

    /// Replaces the lockout rule (from configuration); blocks are recomputed under it.
    pub fn with_lockout_policy(mut self, policy: LockoutPolicy) -> Result<Store, StoreError> {
        self.policy = policy;
        self.rebuild_blocks(SystemTime::now())?;
        Ok(self)
    }

    pub fn lockout_policy(&self) -> LockoutPolicy {
        self.policy
    }

    fn check_schema(&self, data_dir: &Path) -> Result<(), StoreError> {
        let marker = data_dir.join(INIT_MARKER);
        match self.db.get(KEY_SCHEMA_VERSION)? {
            Some(v) => {
                let bytes: [u8; 4] = v.as_ref().try_into().map_err(|_| {
                    StoreError::Corrupt(format!("schema_version is {} bytes, not 4", v.len()))
                })?;
                let found = u32::from_be_bytes(bytes);
                // Migrations from older versions go here, each followed by a version write.
                if found != SCHEMA_VERSION {
                    return Err(StoreError::SchemaVersion {
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
                if !marker.exists() {
                    write_marker(&marker)?;
                }
                Ok(())
            }
            None if marker.exists() || !self.users.is_empty() || !self.settings.is_empty() => {
                Err(StoreError::Corrupt(format!(
                    "{} was initialised but its records are gone (damaged sled files); restore it from a backup",
                    data_dir.display()
                )))
            }
            None => {
                self.db
                    .insert(KEY_SCHEMA_VERSION, &SCHEMA_VERSION.to_be_bytes())?;
                self.persist()?;
                write_marker(&marker)?;
                Ok(())
            }
        }
    }

    /// Makes every write so far durable, surviving a process kill *and* an operating-system
    /// crash or power loss. The one place the store syncs.
    ///
    /// sled 0.34's `flush()` writes its log with `pwrite` and then calls
    /// `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)` on Linux
    /// (`src/pagecache/iobuf.rs`), which starts and waits for the data's writeback but does
    /// not flush the drive's volatile cache nor persist metadata such as a grown file size
    /// (sled issue #1452). So after the flush, every regular file under the sled directory
    /// (`db`, `conf`, `snap.*`, `blobs/*`) is opened and `fsync`ed (`File::sync_all`: on
    /// Linux fsync acts on the inode, whichever descriptor it is called through), then each
    /// directory, so newly created files are reachable after a crash. Closing these extra
    /// descriptors does not drop sled's `flock` (a lock belongs to sled's own open file
    /// description). Not guaranteed: anything the disk itself loses after acknowledging a
    /// cache flush.
    pub fn persist(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        fsync_tree(&self.sled_dir)?;
        Ok(())
    }

    /// Records, on first use, a fingerprint of the pepper (see
    /// [`Pepper::fingerprint`]); afterwards refuses any other pepper with
    /// [`StoreError::PepperMismatch`], so PINs are never hashed under two peppers. The
    /// server calls this once at start.
    pub fn check_pepper(&self, pepper: &Pepper) -> Result<(), StoreError> {
        let mut checked = self
            .checked_pepper
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if checked.as_ref().is_some_and(|p| p.same_as(pepper)) {
            return Ok(());
        }
        loop {
            match self.db.get(KEY_PEPPER_FINGERPRINT)? {
                Some(stored) => {
                    let stored = std::str::from_utf8(&stored).map_err(|_| {
                        StoreError::Corrupt("pepper fingerprint is not text".to_string())
                    })?;
                    if !pepper.matches_fingerprint(stored) {
                        return Err(StoreError::PepperMismatch);
                    }
                    break;
                }
                None => {
                    let fingerprint = pepper.fingerprint()?;
                    let swapped = self.db.compare_and_swap(
                        KEY_PEPPER_FINGERPRINT,
                        None as Option<&[u8]>,
                        Some(fingerprint.as_bytes()),
                    )?;
                    if swapped.is_ok() {
                        self.persist()?;
                        break;
                    }
                }
            }
        }
        *checked = Some(pepper.clone());
        Ok(())
    }

    // ---- users ----------------------------------------------------------------------------

    /// Creates an organizer: validates the request, allocates a unique random conference ID
    /// at the tenant's length, generates a PIN at the tenant's current PIN length, stores
    /// only its hash, and returns the PIN in clear — the only time it is available.
    ///
    /// Errors: [`StoreError::UserExists`], [`StoreError::InvalidUserId`],
    /// [`StoreError::InvalidEmail`], [`StoreError::InvalidDisplayName`],
    /// [`StoreError::PepperMismatch`]. Blocking (argon2 and fsync).
    pub fn create_organizer(
        &self,
        new: NewUser,
        pepper: &Pepper,
    ) -> Result<(User, Pin), StoreError> {
        self.create_organizer_with(new, pepper, random_conference_id)
    }

    /// [`Store::create_organizer`] with the conference-ID draw passed in (tests script it).
    fn create_organizer_with(
        &self,
        new: NewUser,
        pepper: &Pepper,
        mut draw_conference_id: impl FnMut(u8) -> ConferenceId,
    ) -> Result<(User, Pin), StoreError> {
        new.validate()?;
        self.check_pepper(pepper)?;
        let settings = self.tenant_settings()?;
        let id_key = new.id.0.as_bytes();
        if self.users.contains_key(id_key)? {
            return Err(StoreError::UserExists(new.id));
        }
        for _ in 0..CONFERENCE_ID_DRAWS {
            let conference_id = draw_conference_id(settings.conference_id_length);
            let conf_key = conference_id.as_str().as_bytes();
            if self.conference_ids.contains_key(conf_key)? {
                continue;
            }
            let pin = pin::generate(settings.pin_length, &conference_id, None, pepper)?;
            let now = now_whole_secs();
            let user = User {
                id: new.id.clone(),
                display_name: new.display_name.clone(),
                email: new.email.clone(),
                enabled: true,
                conference_id: conference_id.clone(),
                pin_hash: Some(pin::hash(&pin, pepper)?),
                pin_set_at: Some(now),
                pin_len: Some(settings.pin_length),
                requires_pin: new.requires_pin.unwrap_or(settings.organizers_require_pin),
                created_at: now,
            };
            let record = encode(&user);
            let inserted = (&self.users, &self.conference_ids).transaction(|(users, ids)| {
                if users.get(id_key)?.is_some() {
                    return abort(StoreError::UserExists(new.id.clone()));
                }
                if ids.get(conf_key)?.is_some() {
                    return Ok(false);
                }
                users.insert(id_key, record.as_slice())?;
                ids.insert(conf_key, id_key)?;
                Ok(true)
            });
            if !inserted.map_err(StoreError::from)? {
                continue; // a concurrent creation took this conference ID: draw again
            }
            self.persist()?;
            return Ok((user, pin));
        }
        Err(StoreError::ConferenceIdsExhausted(
            settings.conference_id_length,
        ))
    }

    /// Replaces a user's PIN with a new one at the tenant's *current* length (never a repeat
    /// of the old one, never weak) and returns it in clear, once. The old PIN stops working
    /// as soon as this returns.
    pub fn reset_pin(&self, id: &UserId, pepper: &Pepper) -> Result<(User, Pin), StoreError> {
        self.check_pepper(pepper)?;
        let settings = self.tenant_settings()?;
        self.swap_user(id, |mut user| {
            let pin = pin::generate(
                settings.pin_length,
                &user.conference_id,
                user.pin_hash.as_deref(),
                pepper,
            )?;
            user.pin_hash = Some(pin::hash(&pin, pepper)?);
            user.pin_set_at = Some(now_whole_secs());
            user.pin_len = Some(settings.pin_length);
            Ok((user, pin))
        })
    }

    /// Replaces user `id` with what `change` makes of the stored record (compare-and-swap;
    /// when the record changed underneath, by a concurrent reset or edit, `change` runs again
    /// on the new one), durable before it returns.
    fn swap_user<T>(
        &self,
        id: &UserId,
        mut change: impl FnMut(User) -> Result<(User, T), StoreError>,
    ) -> Result<(User, T), StoreError> {
        let key = id.0.as_bytes();
        loop {
            let old_record = self
                .users
                .get(key)?
                .ok_or_else(|| StoreError::UserNotFound(id.clone()))?;
            let (user, extra) = change(decode("user", &old_record)?)?;
            let swapped =
                self.users
                    .compare_and_swap(key, Some(old_record), Some(encode(&user)))?;
            if swapped.is_ok() {
                self.persist()?;
                return Ok((user, extra));
            }
        }
    }

    pub fn user(&self, id: &UserId) -> Result<Option<User>, StoreError> {
        self.users
            .get(id.0.as_bytes())?
            .map(|v| decode("user", &v))
            .transpose()
    }

    /// The organizer whose conference this is: the bridge's lookup for each dialled ID. Two
    /// point reads, no sync.
    pub fn user_by_conference(&self, id: &ConferenceId) -> Result<Option<User>, StoreError> {
        let Some(user_id) = self.conference_ids.get(id.as_str().as_bytes())? else {
            return Ok(None);
        };
        let user = self
            .users
            .get(&user_id)?
            .map(|v| decode::<User>("user", &v))
            .transpose()?;
        match user {
            Some(u) if u.conference_id == *id => Ok(Some(u)),
            Some(_) | None => Err(StoreError::Corrupt(format!(
                "conference ID {id} points at user {:?}, who does not have it",
                String::from_utf8_lossy(&user_id)
            ))),
        }
    }

    /// All users, ordered by id.
    pub fn users(&self) -> Result<Vec<User>, StoreError> {
        self.users.iter().map(|kv| decode("user", &kv?.1)).collect()
    }

    // ---- tenant settings ------------------------------------------------------------------

    /// The tenant's settings (defaults until set).
    pub fn tenant_settings(&self) -> Result<TenantSettings, StoreError> {
        match self.settings.get(KEY_TENANT)? {
            Some(v) => decode("tenant settings", &v),
            None => Ok(TenantSettings::default()),
        }
    }

    /// Validates and stores the tenant's settings.
    pub fn set_tenant_settings(&self, settings: &TenantSettings) -> Result<(), StoreError> {
        settings.validate()?;
        self.settings.insert(KEY_TENANT, encode(settings))?;
        self.persist()
    }

    // ---- failed PINs and lockouts ---------------------------------------------------------

    /// Counts one wrong organizer PIN for `conference` from `source` at `now`, and audits it
    /// (and the lockout it may cause; never the PIN). With the default [`LockoutPolicy`],
    /// the 5th failure for a conference within 10 minutes locks its organizer PIN entry for
    /// 15 minutes.
    ///
    /// - The failures that caused a lockout are spent: the window starts empty when it ends.
    /// - Failures while locked count for the source but neither for the conference nor
    ///   towards extending the lockout, so a guesser cannot keep the organizer out longer.
    /// - A verified PIN does **not** reset the conference's window. The window bounds the
    ///   guesses against one PIN from all callers together; if the organizer's own success
    ///   cleared it, every organizer sign-in would hand a guesser a fresh 4 tries, so their
    ///   budget would grow with the organizer's activity. The price is small: an organizer who
    ///   mistypes, succeeds and mistypes again within 10 minutes may be locked a little
    ///   sooner.
    ///
    /// The failure also counts for `source` (issue 7); the one that takes it to
    /// [`LockoutPolicy::source_max_pin_failures`] blocks the source and is audited as
    /// [`audit::SOURCE_BLOCK`].
    pub fn record_pin_failure(
        &self,
        conference: &ConferenceId,
        source: &Source,
        now: SystemTime,
    ) -> Result<FailureOutcome, StoreError> {
        let policy = self.policy;
        let conf_key = conference.as_str().as_bytes();
        let source_ip = source.ip;
        let source_key = source.key.to_string();
        let limit = policy.source_max_pin_failures;
        let trees = (
            &self.conference_failures,
            &self.source_failures,
            &self.lockouts,
            &self.audit,
        );
        let outcome = trees.transaction(|(conf_tx, source_tx, lockouts_tx, audit_tx)| {
            let mut from_source = load_failures(source_tx.get(&source_key)?)?;
            from_source.record(now, policy.source_window);
            source_tx.insert(source_key.as_bytes(), encode(&from_source))?;
            let source_failures = from_source.count();

            let append_to = |target: &str, actor: &str, action: &'static str, outcome: String| {
                let entry = AuditEntry::new(now, actor, action, target, outcome, Some(source_ip));
                let key = audit_tx.generate_id()?.to_be_bytes();
                audit_tx.insert(&key, encode(&entry))?;
                Ok::<(), ConflictableTransactionError<StoreError>>(())
            };
            let append = |actor: &str, action: &'static str, outcome: String| -> TxResult<()> {
                append_to(conference.as_str(), actor, action, outcome)
            };
            if limit > 0 && source_failures == limit {
                let until = from_source
                    .blocked_until(limit, policy.source_window)
                    .unwrap_or(now + policy.source_window);
                append_to(
                    &source_key,
                    audit::ACTOR_SYSTEM,
                    audit::SOURCE_BLOCK,
                    format!(
                        "source blocked until {} after {source_failures} wrong PINs within {}",
                        format_utc(until),
                        window_text(policy.source_window)
                    ),
                )?;
            }

            if let Some(until) = load_lockout(lockouts_tx.get(conf_key)?)
                .map_err(ConflictableTransactionError::Abort)?
                && until > now
            {
                append(
                    audit::ACTOR_CALLER,
                    audit::PIN_FAILURE,
                    format!("rejected; PIN entry locked until {}", format_utc(until)),
                )?;
                return Ok(FailureOutcome::AlreadyLocked {
                    until,
                    source_failures,
                });
            }

            let mut failures = load_failures(conf_tx.get(conf_key)?)?;
            failures.record(now, policy.window);
            let count = failures.count();
            append(
                audit::ACTOR_CALLER,
                audit::PIN_FAILURE,
                format!("wrong PIN, {count} of {} allowed", policy.max_failures),
            )?;
            if count < policy.max_failures {
                conf_tx.insert(conf_key, encode(&failures))?;
                return Ok(FailureOutcome::Counted {
                    failures: count,
                    remaining: policy.max_failures - count,
                    source_failures,
                });
            }
            let until = now + policy.lockout;
            conf_tx.remove(conf_key)?;
            lockouts_tx.insert(conf_key, encode(&LockoutRecord { until }))?;
            append(
                audit::ACTOR_SYSTEM,
                audit::PIN_LOCKOUT,
                format!(
                    "organizer PIN entry locked until {} after {count} failures",
                    format_utc(until)
                ),
            )?;
            Ok(FailureOutcome::LockedOut {
                until,
                source_failures,
            })
        })?;
        self.persist()?;
        self.refresh_block(&source.key, now)?;
        Ok(outcome)
    }

    /// Checks an organizer PIN keyed in for `conference` from `source` at `now`, in the order
    /// the rules need: a locked conference is refused without looking at the PIN; an
    /// unknown conference or a disabled organizer is refused; otherwise the PIN is verified
    /// (argon2id, constant-time compare) and a wrong one is recorded with
    /// [`Store::record_pin_failure`]. Blocking (argon2, and an fsync on failure): run it with
    /// `spawn_blocking`.
    ///
    /// First of all, a blocked source ([`Store::source_blocked`]) is refused: no argon2, no
    /// count, one [`audit::SOURCE_REFUSED`] entry. So is one whose recorded wrong PINs plus
    /// the verifications it has under way right now reach
    /// [`LockoutPolicy::source_max_pin_failures`]: a source that opens many calls and keys
    /// PINs on all at once still gets no more than its limit checked per window.
    pub fn check_organizer_pin(
        &self,
        conference: &ConferenceId,
        pin: &Pin,
        pepper: &Pepper,
        source: &Source,
        now: SystemTime,
    ) -> Result<PinCheck, StoreError> {
        let reserved = self.reserve_pin_check(&source.key, now)?;
        let blocked = match reserved {
            Some(_) => None,
            None => Some(
                self.source_blocked(&source.key, now)
                    .unwrap_or(now + self.policy.source_window),
            ),
        };
        if let Some(until) = blocked {
            self.append_audit(&AuditEntry::new(
                now,
                audit::ACTOR_SYSTEM,
                audit::SOURCE_REFUSED,
                conference.as_str(),
                format!(
                    "organizer PIN not checked: source {} blocked until {}",
                    source.key,
                    format_utc(until)
                ),
                Some(source.ip),
            ))?;
            return Ok(PinCheck::SourceBlocked { until });
        }
        if let Some(until) = self.pin_lockout(conference, now)? {
            return Ok(PinCheck::Locked { until });
        }
        let Some(user) = self.user_by_conference(conference)? else {
            return Ok(PinCheck::UnknownConference);
        };
        if !user.enabled {
            return Ok(PinCheck::Disabled);
        }
        let verified = user
            .pin_hash
            .as_deref()
            .is_some_and(|phc| pin::verify(pin, phc, pepper));
        if verified {
            return Ok(PinCheck::Verified(user));
        }
        let outcome = self.record_pin_failure(conference, source, now)?;
        Ok(PinCheck::Wrong(outcome))
    }

    /// Counts a PIN verification from `source` as under way, unless the source is blocked or
    /// its recorded failures plus those under way reach its limit (`None`). The count drops
    /// when the returned guard does, after the failure (if any) is recorded.
    fn reserve_pin_check(
        &self,
        source: &SourceKey,
        now: SystemTime,
    ) -> Result<Option<PinCheckGuard<'_>>, StoreError> {
        if self.source_blocked(source, now).is_some() {
            return Ok(None);
        }
        let limit = self.policy.source_max_pin_failures;
        let mut in_flight = self
            .pins_in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let under_way = in_flight.get(source).copied().unwrap_or(0);
        if limit > 0 {
            let (pins, _) = self.load_source(source, now)?;
            if pins.count().saturating_add(under_way) >= limit {
                return Ok(None);
            }
        }
        in_flight.insert(source.clone(), under_way + 1);
        Ok(Some(PinCheckGuard {
            store: self,
            source: source.clone(),
        }))
    }

    /// Until when organizer PIN entry for `conference` is locked, if it is locked at `now`.
    pub fn pin_lockout(
        &self,
        conference: &ConferenceId,
        now: SystemTime,
    ) -> Result<Option<SystemTime>, StoreError> {
        let until = load_lockout(self.lockouts.get(conference.as_str().as_bytes())?)?;
        Ok(until.filter(|until| *until > now))
    }

    /// Every conference locked at `now`, ordered by conference ID.
    pub fn list_lockouts(&self, now: SystemTime) -> Result<Vec<Lockout>, StoreError> {
        let mut locked = Vec::new();
        for kv in self.lockouts.iter() {
            let (key, value) = kv?;
            let record: LockoutRecord = decode("lockout", &value)?;
            if record.until > now {
                locked.push(Lockout {
                    conference: ConferenceId(String::from_utf8_lossy(&key).into_owned()),
                    until: record.until,
                });
            }
        }
        Ok(locked)
    }

    /// Lifts the lockout of `conference` and forgets its counted failures (an administrator
    /// who unlocks means "let the organizer try again"). Returns whether a lockout record was
    /// there. The caller audits it, with its actor.
    pub fn clear_lockout(&self, conference: &ConferenceId) -> Result<bool, StoreError> {
        let key = conference.as_str().as_bytes();
        let removed =
            (&self.lockouts, &self.conference_failures).transaction(|(lockouts, failures)| {
                failures.remove(key)?;
                Ok(lockouts.remove(key)?.is_some())
            });
        let removed = removed.map_err(StoreError::from)?;
        self.persist()?;
        Ok(removed)
    }

    /// Failures from `source` within the policy's source window before `now`.
    pub fn source_failures(
        &self,
        source: &SourceKey,
        now: SystemTime,
    ) -> Result<SourceFailures, StoreError> {
        let (pins, ids) = self.load_source(source, now)?;
        Ok(SourceFailures {
            pins: pins.count(),
            conference_ids: ids.count(),
        })
    }

    // ---- per-source limits (issue 7) ------------------------------------------------------

    /// Counts one unknown or invalid conference ID keyed in from `source` at `now`, and
    /// audits it as [`audit::CONFERENCE_ID_FAILURE`] with only the entry's length (`digits`):
    /// never the digits, which may be a PIN keyed at the wrong prompt. The failure that
    /// takes the source to [`LockoutPolicy::source_max_id_failures`] blocks it
    /// ([`audit::SOURCE_BLOCK`]). Returns until when the source is blocked, if it is now.
    /// Blocking (fsync).
    pub fn record_conference_id_failure(
        &self,
        source: &Source,
        digits: usize,
        now: SystemTime,
    ) -> Result<Option<SystemTime>, StoreError> {
        let policy = self.policy;
        let limit = policy.source_max_id_failures;
        let key = source.key.to_string();
        (&self.source_id_failures, &self.audit).transaction(|(ids_tx, audit_tx)| {
            let mut failures = load_failures(ids_tx.get(&key)?)?;
            failures.record(now, policy.source_window);
            ids_tx.insert(key.as_bytes(), encode(&failures))?;
            let count = failures.count();
            let append = |action: &'static str, actor: &str, outcome: String| {
                let entry = AuditEntry::new(now, actor, action, &key, outcome, Some(source.ip));
                let id = audit_tx.generate_id()?.to_be_bytes();
                audit_tx.insert(&id, encode(&entry))?;
                Ok::<(), ConflictableTransactionError<StoreError>>(())
            };
            let of = if limit == 0 {
                "no limit".to_string()
            } else {
                format!(
                    "{count} of {limit} allowed within {}",
                    window_text(policy.source_window)
                )
            };
            append(
                audit::CONFERENCE_ID_FAILURE,
                audit::ACTOR_CALLER,
                format!("unknown conference ID ({digits} digits); {of}"),
            )?;
            if limit > 0 && count == limit {
                let until = failures
                    .blocked_until(limit, policy.source_window)
                    .unwrap_or(now + policy.source_window);
                append(
                    audit::SOURCE_BLOCK,
                    audit::ACTOR_SYSTEM,
                    format!(
                        "source blocked until {} after {count} unknown conference IDs within {}",
                        format_utc(until),
                        window_text(policy.source_window)
                    ),
                )?;
            }
            Ok(())
        })?;
        self.persist()?;
        self.refresh_block(&source.key, now)
    }

    /// Until when `source` is blocked, if it is at `now`. A map look-up (no I/O), so the
    /// signalling task may call it for every new call.
    pub fn source_blocked(&self, source: &SourceKey, now: SystemTime) -> Option<SystemTime> {
        let mut blocks = self.blocks();
        match blocks.get(source) {
            Some(memo) if memo.until > now => Some(memo.until),
            Some(_) => {
                blocks.remove(source);
                None
            }
            None => None,
        }
    }

    /// Decides the fate of a new call from `source` (no I/O: for the signalling task): `None`
    /// lets it in; a [`CallRefusal`] means answer `403`. Refusals are counted; the first in
    /// each source window carries an audit entry, so a flood of calls from a blocked source
    /// costs at most one audit write per window.
    pub fn refuse_call(&self, source: &Source, now: SystemTime) -> Option<CallRefusal> {
        let window = self.policy.source_window;
        let mut blocks = self.blocks();
        let memo = blocks.get_mut(&source.key)?;
        if memo.until <= now {
            blocks.remove(&source.key);
            return None;
        }
        memo.refused += 1;
        let due = memo
            .audited_at
            .is_none_or(|at| now.duration_since(at).unwrap_or_default() >= window);
        let audit = due.then(|| {
            let unaudited = memo.refused - memo.refused_at_audit;
            memo.audited_at = Some(now);
            memo.refused_at_audit = memo.refused;
            AuditEntry::new(
                now,
                audit::ACTOR_SYSTEM,
                audit::SOURCE_REFUSED,
                source.key.to_string(),
                format!(
                    "new call refused (403) while blocked until {}; {unaudited} refused since the last entry, {} in all (further refusals within {} are counted, not audited)",
                    format_utc(memo.until),
                    memo.refused,
                    window_text(window)
                ),
                Some(source.ip),
            )
        });
        Some(CallRefusal {
            until: memo.until,
            audit,
        })
    }

    /// Every source blocked at `now`, ordered by key, read from the durable trees.
    pub fn source_blocks(&self, now: SystemTime) -> Result<Vec<SourceBlock>, StoreError> {
        let mut keys = std::collections::BTreeSet::new();
        for tree in [&self.source_failures, &self.source_id_failures] {
            for kv in tree.iter() {
                keys.insert(kv?.0);
            }
        }
        let mut blocked = Vec::new();
        for key in keys {
            let text = String::from_utf8_lossy(&key);
            let Ok(source) = text.parse::<SourceKey>() else {
                continue;
            };
            let (pins, ids) = self.load_source(&source, now)?;
            if let Some((reason, failures, limit, until)) = self.block_of(&pins, &ids) {
                let refused_calls = self.blocks().get(&source).map_or(0, |m| m.refused);
                blocked.push(SourceBlock {
                    source,
                    reason,
                    failures,
                    limit,
                    until,
                    refused_calls,
                });
            }
        }
        Ok(blocked)
    }

    /// Forgets every failure counted for `source`, which unblocks it (an administrator who
    /// unblocks means "let them try again"). Returns whether it was blocked at `now`. The
    /// caller audits it, with its actor.
    pub fn clear_source_block(
        &self,
        source: &SourceKey,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        let (pins, ids) = self.load_source(source, now)?;
        let was_blocked = self.block_of(&pins, &ids).is_some();
        let key = source.to_string();
        (&self.source_failures, &self.source_id_failures).transaction(
            |(pin_tx, id_tx)| -> TxResult<()> {
                pin_tx.remove(key.as_bytes())?;
                id_tx.remove(key.as_bytes())?;
                Ok(())
            },
        )?;
        self.persist()?;
        self.blocks().remove(source);
        Ok(was_blocked)
    }

    /// The source's two failure lists, pruned to the window at `now`.
    fn load_source(
        &self,
        source: &SourceKey,
        now: SystemTime,
    ) -> Result<(Failures, Failures), StoreError> {
        let key = source.to_string();
        let mut pins = load_failures_plain(self.source_failures.get(&key)?)?;
        let mut ids = load_failures_plain(self.source_id_failures.get(&key)?)?;
        pins.prune(now, self.policy.source_window);
        ids.prune(now, self.policy.source_window);
        Ok((pins, ids))
    }

    /// Whether failure lists (already pruned) put a source over a limit, and which one
    /// holds it longest: (reason, failures, limit, until).
    fn block_of(
        &self,
        pins: &Failures,
        ids: &Failures,
    ) -> Option<(BlockReason, u32, u32, SystemTime)> {
        let p = self.policy;
        [
            (BlockReason::PinFailures, pins, p.source_max_pin_failures),
            (
                BlockReason::ConferenceIdFailures,
                ids,
                p.source_max_id_failures,
            ),
        ]
        .into_iter()
        .filter_map(|(reason, list, limit)| {
            let until = list.blocked_until(limit, p.source_window)?;
            Some((reason, list.count(), limit, until))
        })
        .max_by_key(|b| b.3)
    }

    /// Re-reads one source's lists into the block mirror; returns its block's end, if any.
    fn refresh_block(
        &self,
        source: &SourceKey,
        now: SystemTime,
    ) -> Result<Option<SystemTime>, StoreError> {
        let (pins, ids) = self.load_source(source, now)?;
        let until = self.block_of(&pins, &ids).map(|b| b.3);
        let mut blocks = self.blocks();
        match until {
            Some(until) => {
                let memo = blocks.entry(source.clone()).or_default();
                memo.until = memo.until.max(until);
            }
            None => {
                blocks.remove(source);
            }
        }
        Ok(until)
    }

    /// Builds the block mirror from the trees (at open and on a policy change).
    fn rebuild_blocks(&self, now: SystemTime) -> Result<(), StoreError> {
        let fresh: HashMap<SourceKey, BlockMemo> = self
            .source_blocks(now)?
            .into_iter()
            .map(|b| {
                let memo = BlockMemo {
                    until: b.until,
                    ..BlockMemo::default()
                };
                (b.source, memo)
            })
            .collect();
        *self.blocks() = fresh;
        Ok(())
    }

    fn blocks(&self) -> std::sync::MutexGuard<'_, HashMap<SourceKey, BlockMemo>> {
        self.blocks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Deletes expired lockouts and failure lists with nothing left in their window, so the
    /// trees do not grow with every source ever seen. Returns how many records went. For a
    /// periodic task; correctness never depends on it.
    pub fn prune_expired(&self, now: SystemTime) -> Result<usize, StoreError> {
        let mut removed = 0;
        for kv in self.lockouts.iter() {
            let (key, value) = kv?;
            let record: LockoutRecord = decode("lockout", &value)?;
            if record.until <= now
                && self
                    .lockouts
                    .compare_and_swap(&key, Some(value), None as Option<&[u8]>)?
                    .is_ok()
            {
                removed += 1;
            }
        }
        for (tree, window) in [
            (&self.conference_failures, self.policy.window),
            (&self.source_failures, self.policy.source_window),
            (&self.source_id_failures, self.policy.source_window),
        ] {
            for kv in tree.iter() {
                let (key, value) = kv?;
                let mut failures: Failures = decode("failure list", &value)?;
                failures.prune(now, window);
                if failures.count() == 0
                    && tree
                        .compare_and_swap(&key, Some(value), None as Option<&[u8]>)?
                        .is_ok()
                {
                    removed += 1;
                }
            }
        }
        if removed > 0 {
            self.persist()?;
        }
        Ok(removed)
    }

    // ---- audit ----------------------------------------------------------------------------

    /// Appends an entry to the audit log. Entries are kept in append order under keys from
    /// sled's monotonic id generator (increasing across restarts).
    pub fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let key = self.db.generate_id()?.to_be_bytes();
        self.audit.insert(key, encode(entry))?;
        self.persist()
    }

    /// The last `n` audit entries, oldest first.
    pub fn audit_tail(&self, n: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let mut entries = self
            .audit
            .iter()
            .rev()
            .take(n)
            .map(|kv| decode("audit entry", &kv?.1))
            .collect::<Result<Vec<AuditEntry>, StoreError>>()?;
        entries.reverse();
        Ok(entries)
    }
}

/// Where a queued email is on its way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting for its first or next attempt.
    Queued,
    /// Accepted by the mail server (or written to the outbox folder); its body is gone.
    Delivered,
}

/// A queued email and its delivery record. `email` is `None` once delivered: a PIN in a
/// message lives in the store only until the message is out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedEmail {
    pub id: u64,
    pub to: String,
    pub subject: String,
    pub state: DeliveryState,
    pub attempts: u32,
    #[serde(with = "unix_millis")]
    pub queued_at: SystemTime,
    pub last_error: Option<String>,
    /// When the next attempt is due. Records written before retries existed lack it and
    /// read as the epoch: due at once.
    #[serde(default = "unix_epoch", with = "unix_millis")]
    pub next_attempt_at: SystemTime,
    /// When the mail server (or the outbox folder) accepted it.
    #[serde(default, with = "opt_unix_secs")]
    pub delivered_at: Option<SystemTime>,
    pub email: Option<crate::notify::Email>,
}

/// How long a delivered email's record (without its body) stays listed.
pub const DELIVERED_EMAIL_RETENTION: Duration = Duration::from_secs(30 * 24 * 60 * 60);

fn unix_epoch() -> SystemTime {
    UNIX_EPOCH
}

impl Store {
    // ---- outbox ---------------------------------------------------------------------------

    /// Queues `email` for delivery and makes it durable before returning its queue id.
    pub fn enqueue_email(
        &self,
        email: &crate::notify::Email,
        now: SystemTime,
    ) -> Result<u64, StoreError> {
        let id = self.db.generate_id()?;
        let queued = QueuedEmail {
            id,
            to: email.to.clone(),
            subject: email.subject.clone(),
            state: DeliveryState::Queued,
            attempts: 0,
            queued_at: now,
            last_error: None,
            next_attempt_at: now,
            delivered_at: None,
            email: Some(email.clone()),
        };
        self.outbox.insert(id.to_be_bytes(), encode(&queued))?;
        self.persist()?;
        Ok(id)
    }

    /// Every email in the outbox, oldest first.
    pub fn emails(&self) -> Result<Vec<QueuedEmail>, StoreError> {
        self.outbox
            .iter()
            .map(|kv| decode("queued email", &kv?.1))
            .collect()
    }

    /// One email's delivery record.
    pub fn email(&self, id: u64) -> Result<Option<QueuedEmail>, StoreError> {
        self.outbox
            .get(id.to_be_bytes())?
            .map(|v| decode("queued email", &v))
            .transpose()
    }

    /// Queued emails whose next attempt is due at `now`, oldest first.
    pub fn due_emails(&self, now: SystemTime) -> Result<Vec<QueuedEmail>, StoreError> {
        let mut due = self.emails()?;
        due.retain(|q| q.state == DeliveryState::Queued && q.next_attempt_at <= now);
        Ok(due)
    }

    /// The earliest next attempt among queued emails; `None` when nothing waits.
    pub fn next_email_attempt(&self) -> Result<Option<SystemTime>, StoreError> {
        Ok(self
            .emails()?
            .iter()
            .filter(|q| q.state == DeliveryState::Queued)
            .map(|q| q.next_attempt_at)
            .min())
    }

    /// The mail server accepted the email: drops its body (it may hold a PIN) and keeps the
    /// delivery record. Delivering an already delivered email changes nothing.
    pub fn mark_delivered(&self, id: u64, now: SystemTime) -> Result<QueuedEmail, StoreError> {
        self.update_email(id, |q| {
            if q.state == DeliveryState::Delivered {
                return;
            }
            q.state = DeliveryState::Delivered;
            q.delivered_at = Some(now);
            q.attempts = q.attempts.saturating_add(1);
            q.last_error = None;
            q.email = None;
        })
    }

    /// An attempt failed with `error` (never the message body); the next one is due at
    /// `next_attempt`. A delivered email is left as it is.
    pub fn record_attempt_failure(
        &self,
        id: u64,
        error: &str,
        next_attempt: SystemTime,
    ) -> Result<QueuedEmail, StoreError> {
        self.update_email(id, |q| {
            if q.state == DeliveryState::Delivered {
                return;
            }
            q.attempts = q.attempts.saturating_add(1);
            q.last_error = Some(error.to_string());
            q.next_attempt_at = next_attempt;
        })
    }

    /// Removes delivered records older than [`DELIVERED_EMAIL_RETENTION`]; returns how many.
    pub fn prune_delivered_emails(&self, now: SystemTime) -> Result<usize, StoreError> {
        let mut pruned = 0;
        for q in self.emails()? {
            let expired = q
                .delivered_at
                .is_some_and(|at| at + DELIVERED_EMAIL_RETENTION <= now);
            if expired && self.outbox.remove(q.id.to_be_bytes())?.is_some() {
                pruned += 1;
            }
        }
        if pruned > 0 {
            self.persist()?;
        }
        Ok(pruned)
    }

    /// Applies `change` to one record atomically and persists it.
    fn update_email(
        &self,
        id: u64,
        change: impl Fn(&mut QueuedEmail),
    ) -> Result<QueuedEmail, StoreError> {
        let key = id.to_be_bytes();
        let updated = self.outbox.transaction(|tx| {
            let Some(v) = tx.get(key)? else {
                return abort(StoreError::EmailNotFound(id));
            };
            let mut q: QueuedEmail =
                decode("queued email", &v).map_err(ConflictableTransactionError::Abort)?;
            change(&mut q);
            tx.insert(&key, encode(&q))?;
            Ok(q)
        })?;
        self.persist()?;
        Ok(updated)
    }
}

/// How long an emailed sign-in link stays good.
pub const SIGN_IN_LINK_TTL: Duration = Duration::from_secs(15 * 60);

#[derive(Serialize, Deserialize)]
struct SignInLink {
    user: UserId,
    #[serde(with = "unix_millis")]
    expires_at: SystemTime,
}

impl Store {
    // ---- self-service sign-in links -------------------------------------------------------

    /// A new one-time sign-in token for `user`, good for [`SIGN_IN_LINK_TTL`]. Only its hash
    /// is stored, so the store never holds a usable link; the token goes into the email.
    pub fn create_sign_in_token(
        &self,
        user: &UserId,
        now: SystemTime,
    ) -> Result<String, StoreError> {
        let token = pin::random_token();
        let link = SignInLink {
            user: user.clone(),
            expires_at: now + SIGN_IN_LINK_TTL,
        };
        self.sign_in_links
            .insert(token_key(&token), encode(&link))?;
        // Old links are swept here rather than by a timer: they are only ever looked up.
        for kv in self.sign_in_links.iter() {
            let (key, value) = kv?;
            let expired =
                decode::<SignInLink>("sign-in link", &value).map_or(true, |l| l.expires_at <= now);
            if expired {
                self.sign_in_links.remove(key)?;
            }
        }
        self.persist()?;
        Ok(token)
    }

    /// Uses up `token`: the user it signs in, if it exists and has not expired. A token works
    /// once, whatever the answer.
    pub fn consume_sign_in_token(
        &self,
        token: &str,
        now: SystemTime,
    ) -> Result<Option<UserId>, StoreError> {
        let Some(value) = self.sign_in_links.remove(token_key(token))? else {
            return Ok(None);
        };
        self.persist()?;
        let link: SignInLink = decode("sign-in link", &value)?;
        Ok((now < link.expires_at).then_some(link.user))
    }
}

/// The key a sign-in token is stored under: BLAKE2b-256 of the token.
fn token_key(token: &str) -> Vec<u8> {
    use blake2::Digest;
    blake2::Blake2b::<blake2::digest::consts::U32>::digest(token.as_bytes()).to_vec()
}

impl Store {
    // ---- admin edits (issue 5) ------------------------------------------------------------

    /// Applies `edit` to user `id` and stores the result (compare-and-swap, retried if the
    /// record changed underneath), durable before it returns. The edit must not touch the
    /// conference ID (see [`Store::reset_conference_id`]) or the PIN (see
    /// [`Store::reset_pin`]); both are restored if it does.
    pub fn update_user(
        &self,
        id: &UserId,
        mut edit: impl FnMut(&mut User),
    ) -> Result<User, StoreError> {
        let (user, ()) = self.swap_user(id, |old| {
            let mut user = old.clone();
            edit(&mut user);
            user.id = old.id;
            user.conference_id = old.conference_id;
            user.pin_hash = old.pin_hash;
            Ok((user, ()))
        })?;
        Ok(user)
    }

    /// Gives user `id` a new random conference ID at the tenant's current length; the old one
    /// stops working as soon as this returns. Returns the updated user and the old ID.
    pub fn reset_conference_id(&self, id: &UserId) -> Result<(User, ConferenceId), StoreError> {
        self.reset_conference_id_with(id, random_conference_id)
    }

    fn reset_conference_id_with(
        &self,
        id: &UserId,
        mut draw_conference_id: impl FnMut(u8) -> ConferenceId,
    ) -> Result<(User, ConferenceId), StoreError> {
        let settings = self.tenant_settings()?;
        let key = id.0.as_bytes();
        for _ in 0..CONFERENCE_ID_DRAWS {
            let new_id = draw_conference_id(settings.conference_id_length);
            let new_key = new_id.as_str().as_bytes();
            let done = (&self.users, &self.conference_ids).transaction(|(users, ids)| {
                let Some(record) = users.get(key)? else {
                    return abort(StoreError::UserNotFound(id.clone()));
                };
                if ids.get(new_key)?.is_some() {
                    return Ok(None);
                }
                let mut user: User =
                    decode("user", &record).map_err(ConflictableTransactionError::Abort)?;
                let old_id = std::mem::replace(&mut user.conference_id, new_id.clone());
                ids.remove(old_id.as_str().as_bytes())?;
                ids.insert(new_key, key)?;
                users.insert(key, encode(&user))?;
                Ok(Some((user, old_id)))
            });
            if let Some(done) = done.map_err(StoreError::from)? {
                self.persist()?;
                return Ok(done);
            }
        }
        Err(StoreError::ConferenceIdsExhausted(
            settings.conference_id_length,
        ))
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("sled_dir", &self.sled_dir)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` (RFC 3339, UTC, whole seconds) for audit text and listings.
pub fn format_utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant, "chrono-Compatible Low-Level Date
    // Algorithms", civil_from_days), for days >= 0.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Takes `<data_dir>/lock` with an exclusive `flock` (held by the returned file) and writes
/// our pid into it, so a second opener can say who holds the store.
fn lock_dir(data_dir: &Path) -> Result<fs::File, StoreError> {
    let path = data_dir.join(LOCK_FILE);
    let unwritable = |source| StoreError::Unwritable {
        path: data_dir.to_path_buf(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(unwritable)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(StoreError::Locked {
                path: data_dir.to_path_buf(),
                holder: pid.trim().parse().ok(),
            });
        }
        Err(fs::TryLockError::Error(e)) => return Err(unwritable(e)),
    }
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .map_err(unwritable)?;
    Ok(file)
}

fn write_marker(path: &Path) -> io::Result<()> {
    let mut file = fs::File::create(path)?;
    writeln!(
        file,
        "pinbridge store schema {SCHEMA_VERSION}; the data is in sled/. Do not delete this file."
    )?;
    file.sync_all()?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn open_error(data_dir: &Path, e: sled::Error) -> StoreError {
    match e {
        sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
            StoreError::Locked {
                path: data_dir.to_path_buf(),
                holder: None,
            }
        }
        sled::Error::Io(io)
            if matches!(
                io.kind(),
                io::ErrorKind::PermissionDenied
                    | io::ErrorKind::ReadOnlyFilesystem
                    | io::ErrorKind::StorageFull
                    | io::ErrorKind::NotADirectory
            ) =>
        {
            StoreError::Unwritable {
                path: data_dir.to_path_buf(),
                source: io,
            }
        }
        sled::Error::Unsupported(what) => StoreError::Corrupt(format!("sled refused it: {what}")),
        other => other.into(),
    }
}

/// `fsync` every regular file below `dir`, then `dir` itself (see [`Store::persist`]).
fn fsync_tree(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            fsync_tree(&path)?;
        } else if kind.is_file() {
            match fs::File::open(&path) {
                Ok(file) => file.sync_all()?,
                // sled removed it (an old snapshot) after we listed it.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    fs::File::open(dir)?.sync_all()
}

/// The wall clock as stored in user records (whole seconds), so a returned [`User`] equals
/// the one read back.
fn now_whole_secs() -> SystemTime {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn random_conference_id(len: u8) -> ConferenceId {
    let mut rng = rand::rng();
    // No leading zero: some trunks and people drop it.
    let digits = (0..len)
        .map(|i| {
            let low = if i == 0 { 1 } else { 0 };
            char::from(b'0' + rng.random_range(low..10u8))
        })
        .collect();
    ConferenceId(digits)
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("store records are plain structs with string keys")
}

fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn abort<T>(e: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

/// Failure times (unix milliseconds) inside a sliding window, oldest first.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Failures(Vec<u64>);

impl Failures {
    /// Drops failures older than `window` before `now` (a failure exactly `window` old is out).
    fn prune(&mut self, now: SystemTime, window: Duration) {
        let now = unix_millis::of(now);
        let window = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        self.0.retain(|&t| now.saturating_sub(t) < window);
    }

    fn record(&mut self, now: SystemTime, window: Duration) {
        self.prune(now, window);
        self.0.push(unix_millis::of(now));
        if self.0.len() > MAX_KEPT_FAILURES {
            let excess = self.0.len() - MAX_KEPT_FAILURES;
            self.0.drain(..excess);
        }
    }

    fn count(&self) -> u32 {
        u32::try_from(self.0.len()).unwrap_or(u32::MAX)
    }

    /// With at least `limit` failures (already pruned to `window`), the time the count
    /// drops below `limit` again: when the `limit`-th newest failure leaves the window.
    /// `None` below the limit, or for a limit of 0 (no limit).
    fn blocked_until(&self, limit: u32, window: Duration) -> Option<SystemTime> {
        let limit = usize::try_from(limit).ok().filter(|l| *l > 0)?;
        let first_needed = self.0.len().checked_sub(limit)?;
        let at = UNIX_EPOCH + Duration::from_millis(self.0[first_needed]);
        Some(at + window)
    }
}

/// A PIN verification under way ([`Store::reserve_pin_check`]).
struct PinCheckGuard<'a> {
    store: &'a Store,
    source: SourceKey,
}

impl Drop for PinCheckGuard<'_> {
    fn drop(&mut self) {
        let mut in_flight = self
            .store
            .pins_in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(n) = in_flight.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                in_flight.remove(&self.source);
            }
        }
    }
}

/// A blocked source as the mirror holds it (`Store::blocks`).
#[derive(Debug, Clone, Copy)]
struct BlockMemo {
    until: SystemTime,
    /// New calls refused while blocked, and that count at the last audited refusal.
    refused: u64,
    refused_at_audit: u64,
    audited_at: Option<SystemTime>,
}

impl Default for BlockMemo {
    fn default() -> Self {
        BlockMemo {
            until: UNIX_EPOCH,
            refused: 0,
            refused_at_audit: 0,
            audited_at: None,
        }
    }
}

/// "1 h", "10 min" or "90 s", for audit texts.
fn window_text(window: Duration) -> String {
    let secs = window.as_secs();
    if secs.is_multiple_of(3600) && secs > 0 {
        format!("{} h", secs / 3600)
    } else if secs.is_multiple_of(60) && secs > 0 {
        format!("{} min", secs / 60)
    } else {
        format!("{secs} s")
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct LockoutRecord {
    #[serde(with = "unix_millis")]
    until: SystemTime,
}

fn load_failures(v: Option<sled::IVec>) -> TxResult<Failures> {
    load_failures_plain(v).map_err(ConflictableTransactionError::Abort)
}

fn load_failures_plain(v: Option<sled::IVec>) -> Result<Failures, StoreError> {
    v.map_or(Ok(Failures::default()), |v| decode("failure list", &v))
}

fn load_lockout(v: Option<sled::IVec>) -> Result<Option<SystemTime>, StoreError> {
    v.map(|v| decode::<LockoutRecord>("lockout", &v).map(|r| r.until))
        .transpose()
}

/// `SystemTime` as whole seconds since the Unix epoch.
mod unix_secs {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        Ok(UNIX_EPOCH + Duration::from_secs(u64::deserialize(d)?))
    }
}

mod opt_unix_secs {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_some(&t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(|s| UNIX_EPOCH + Duration::from_secs(s)))
    }
}

/// `SystemTime` as milliseconds since the Unix epoch (failure windows need sub-second order).
mod unix_millis {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn of(t: SystemTime) -> u64 {
        t.duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(of(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        Ok(UNIX_EPOCH + Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn pepper() -> Pepper {
        Pepper::from_bytes(vec![7u8; pin::PEPPER_LEN]).unwrap()
    }

    fn other_pepper() -> Pepper {
        Pepper::from_bytes(vec![8u8; pin::PEPPER_LEN]).unwrap()
    }

    fn new_user(id: &str) -> NewUser {
        NewUser {
            id: UserId(id.to_string()),
            display_name: format!("User {id}"),
            email: id.to_string(),
            requires_pin: None,
        }
    }

    fn conf(s: &str) -> ConferenceId {
        ConferenceId::parse(s).unwrap()
    }

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_750_000_000)
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("data")).unwrap();
        (dir, store)
    }

    #[test]
    fn a_sign_in_token_works_once_before_it_expires_and_is_stored_only_hashed() {
        let (_dir, store) = open();
        let amos = UserId("amos@contoso.com".into());
        let token = store.create_sign_in_token(&amos, t0()).unwrap();
        assert_eq!(token.len(), 64);
        for kv in store.sign_in_links.iter() {
            let (key, value) = kv.unwrap();
            let raw = [key.as_ref(), value.as_ref()].concat();
            assert!(!raw.windows(token.len()).any(|w| w == token.as_bytes()));
        }
        assert_eq!(store.consume_sign_in_token("nonsense", t0()).unwrap(), None);
        assert_eq!(
            store.consume_sign_in_token(&token, t0() + MIN).unwrap(),
            Some(amos.clone())
        );
        assert_eq!(
            store.consume_sign_in_token(&token, t0() + MIN).unwrap(),
            None,
            "used"
        );

        let late = store.create_sign_in_token(&amos, t0()).unwrap();
        let after = t0() + SIGN_IN_LINK_TTL;
        assert_eq!(
            store.consume_sign_in_token(&late, after).unwrap(),
            None,
            "expired"
        );

        // Expired links are swept when a new one is made.
        let _stale = store.create_sign_in_token(&amos, t0()).unwrap();
        let _fresh = store.create_sign_in_token(&amos, after + MIN).unwrap();
        assert_eq!(store.sign_in_links.len(), 1);
    }

    #[test]
    fn open_creates_the_directory_and_writes_the_schema_version() {
        let (_dir, store) = open();
        let v = store.db.get(KEY_SCHEMA_VERSION).unwrap().unwrap();
        assert_eq!(v.as_ref(), &SCHEMA_VERSION.to_be_bytes());
    }

    #[test]
    fn a_newer_schema_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .db
                .insert(KEY_SCHEMA_VERSION, &99u32.to_be_bytes())
                .unwrap();
            store.persist().unwrap();
        }
        let err = Store::open(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::SchemaVersion {
                    found: 99,
                    supported: SCHEMA_VERSION
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "the store has schema version 99, but this build of pinbridge reads version 1"
        );
    }

    #[test]
    fn a_second_opener_is_told_the_store_is_locked_and_by_whom() {
        let (dir, _store) = open();
        let err = Store::open(dir.path().join("data")).unwrap_err();
        match &err {
            StoreError::Locked { holder, .. } => assert_eq!(*holder, Some(std::process::id())),
            other => panic!("{other:?}"),
        }
        assert!(
            err.to_string().contains("in use by another process"),
            "{err}"
        );
    }

    #[test]
    fn the_lock_is_released_when_the_store_is_dropped() {
        let (dir, store) = open();
        drop(store);
        Store::open(dir.path().join("data")).unwrap();
    }

    #[test]
    fn an_unwritable_data_dir_is_a_clear_error() {
        // Tests may run as root, which ignores permission bits: use a path below a file.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        fs::write(&file, b"x").unwrap();
        let err = Store::open(file.join("data")).unwrap_err();
        assert!(matches!(err, StoreError::Unwritable { .. }), "{err:?}");
        assert!(err.to_string().contains("is not writable"), "{err}");
    }

    #[test]
    fn a_corrupt_store_is_reported_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        for name in ["conf", "db"] {
            fs::write(dir.path().join(SLED_DIR).join(name), [0xA5u8; 4096]).unwrap();
        }
        for f in fs::read_dir(dir.path().join(SLED_DIR)).unwrap() {
            let p = f.unwrap().path();
            if p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("snap.")
            {
                fs::write(&p, [0x5Au8; 4096]).unwrap();
            }
        }
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    }

    #[test]
    fn a_store_whose_sled_log_was_destroyed_is_not_mistaken_for_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let settings = TenantSettings {
                pin_length: 6,
                ..TenantSettings::default()
            };
            store.set_tenant_settings(&settings).unwrap();
        }
        // sled treats a damaged log head as a torn write and recovers an empty database.
        let db = dir.path().join(SLED_DIR).join("db");
        let mut bytes = fs::read(&db).unwrap();
        bytes.iter_mut().take(600).for_each(|b| *b ^= 0xFF);
        fs::write(&db, bytes).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
        assert!(
            err.to_string().contains("restore it from a backup"),
            "{err}"
        );
    }

    // ---- users -------------------------------------------------------------------------------

    #[test]
    fn create_organizer_stores_a_hash_and_returns_the_pin_once() {
        let (_dir, store) = open();
        let (user, pin) = store
            .create_organizer(new_user("amos.marble@contoso.com"), &pepper())
            .unwrap();
        assert_eq!(pin.len(), usize::from(DEFAULT_PIN_LEN));
        assert_eq!(user.pin_len, Some(DEFAULT_PIN_LEN));
        assert!(user.enabled);
        assert!(
            user.requires_pin,
            "tenant default: organizers require a PIN"
        );
        assert!(user.pin_set_at.is_some());
        let id = user.conference_id.as_str();
        assert_eq!(id.len(), usize::from(DEFAULT_CONFERENCE_ID_LEN));
        assert!(!id.starts_with('0'));
        assert_eq!(pin::weakness(pin.expose(), &user.conference_id), None);
        let hash = user.pin_hash.as_deref().unwrap();
        assert!(!hash.contains(pin.expose()));
        assert!(pin::verify(&pin, hash, &pepper()));

        let found = store
            .user_by_conference(&user.conference_id)
            .unwrap()
            .unwrap();
        assert_eq!(found, user);
        assert_eq!(store.user(&user.id).unwrap(), Some(user.clone()));
        assert_eq!(store.users().unwrap(), vec![user]);
        assert_eq!(store.user_by_conference(&conf("1000000")).unwrap(), None);
    }

    #[test]
    fn a_duplicate_id_is_refused() {
        let (_dir, store) = open();
        store
            .create_organizer(new_user("a@example.com"), &pepper())
            .unwrap();
        let err = store
            .create_organizer(new_user("a@example.com"), &pepper())
            .unwrap_err();
        assert!(matches!(err, StoreError::UserExists(_)), "{err:?}");
        assert_eq!(err.to_string(), "user a@example.com already exists");
        assert_eq!(store.users().unwrap().len(), 1);
    }

    #[test]
    fn malformed_emails_and_ids_are_refused() {
        let (_dir, store) = open();
        for email in [
            "",
            "no-at-sign",
            "a@",
            "@example.com",
            "a@localhost",
            "a b@example.com",
            "a@[192.0.2.1]",
            "Amos <a@example.com>",
            "a@exa_mple.com",
            "a@.example.com",
        ] {
            let mut new = new_user("someone");
            new.email = email.to_string();
            let err = store.create_organizer(new, &pepper()).unwrap_err();
            assert!(
                matches!(err, StoreError::InvalidEmail { .. }),
                "{email:?}: {err:?}"
            );
            assert!(
                err.to_string().starts_with("malformed email address"),
                "{err}"
            );
        }
        for id in ["", "two words", "tab\there"] {
            let mut new = new_user("a@example.com");
            new.id = UserId(id.to_string());
            let err = store.create_organizer(new, &pepper()).unwrap_err();
            assert!(
                matches!(err, StoreError::InvalidUserId { .. }),
                "{id:?}: {err:?}"
            );
        }
        let mut new = new_user("a@example.com");
        new.display_name = " ".to_string();
        assert!(matches!(
            store.create_organizer(new, &pepper()),
            Err(StoreError::InvalidDisplayName(_))
        ));
        assert!(store.users().unwrap().is_empty());
    }

    #[test]
    fn requires_pin_follows_the_request_or_the_tenant_default() {
        let (_dir, store) = open();
        let mut new = new_user("a@example.com");
        new.requires_pin = Some(false);
        let (user, _) = store.create_organizer(new, &pepper()).unwrap();
        assert!(!user.requires_pin);
        store
            .set_tenant_settings(&TenantSettings {
                organizers_require_pin: false,
                ..TenantSettings::default()
            })
            .unwrap();
        let (user, _) = store
            .create_organizer(new_user("b@example.com"), &pepper())
            .unwrap();
        assert!(!user.requires_pin);
    }

    #[test]
    fn conference_ids_are_unique_and_a_taken_one_is_skipped() {
        let (_dir, store) = open();
        let (first, _) = store
            .create_organizer_with(new_user("a@example.com"), &pepper(), |_| conf("5550123"))
            .unwrap();
        assert_eq!(first.conference_id, conf("5550123"));
        // The next draws repeat the taken ID twice before offering a free one.
        let mut draws = ["5550123", "5550123", "5550124"].into_iter();
        let (second, _) = store
            .create_organizer_with(new_user("b@example.com"), &pepper(), |_| {
                conf(draws.next().unwrap())
            })
            .unwrap();
        assert_eq!(second.conference_id, conf("5550124"));
        assert_eq!(
            store
                .user_by_conference(&conf("5550123"))
                .unwrap()
                .unwrap()
                .id,
            first.id
        );
        // Only taken IDs on offer: a clear error, not a loop.
        let err = store
            .create_organizer_with(new_user("c@example.com"), &pepper(), |_| conf("5550123"))
            .unwrap_err();
        assert!(
            matches!(err, StoreError::ConferenceIdsExhausted(7)),
            "{err:?}"
        );
    }

    #[test]
    fn random_conference_ids_have_the_asked_length_and_are_distinct() {
        let (_dir, store) = open();
        let mut seen = std::collections::HashSet::new();
        for i in 0..20 {
            let (user, _) = store
                .create_organizer(new_user(&format!("u{i}@example.com")), &pepper())
                .unwrap();
            assert!(seen.insert(user.conference_id));
        }
        for len in CONFERENCE_ID_LEN {
            let id = random_conference_id(len);
            assert_eq!(ConferenceId::parse(id.as_str()), Some(id.clone()));
            assert_eq!(id.as_str().len(), usize::from(len));
            assert!(!id.as_str().starts_with('0'));
        }
    }

    #[test]
    fn the_tenant_lengths_apply_to_new_pins_and_ids_only() {
        let (_dir, store) = open();
        let (old, old_pin) = store
            .create_organizer(new_user("a@example.com"), &pepper())
            .unwrap();
        store
            .set_tenant_settings(&TenantSettings {
                pin_length: 8,
                conference_id_length: 9,
                ..TenantSettings::default()
            })
            .unwrap();
        let (new, new_pin) = store
            .create_organizer(new_user("b@example.com"), &pepper())
            .unwrap();
        assert_eq!((new_pin.len(), new.pin_len), (8, Some(8)));
        assert_eq!(new.conference_id.as_str().len(), 9);
        let old_now = store.user(&old.id).unwrap().unwrap();
        assert_eq!(old_now.pin_len, Some(5));
        assert!(pin::verify(
            &old_pin,
            old_now.pin_hash.as_deref().unwrap(),
            &pepper()
        ));
    }

    #[test]
    fn reset_pin_replaces_the_hash_at_the_current_length() {
        let (_dir, store) = open();
        let (user, old_pin) = store
            .create_organizer(new_user("a@example.com"), &pepper())
            .unwrap();
        store
            .set_tenant_settings(&TenantSettings {
                pin_length: 6,
                ..TenantSettings::default()
            })
            .unwrap();
        let (after, new_pin) = store.reset_pin(&user.id, &pepper()).unwrap();
        assert_eq!((new_pin.len(), after.pin_len), (6, Some(6)));
        assert_eq!(after.conference_id, user.conference_id);
        let stored = store.user(&user.id).unwrap().unwrap();
        assert_eq!(stored, after);
        let hash = stored.pin_hash.as_deref().unwrap();
        assert!(pin::verify(&new_pin, hash, &pepper()));
        assert!(
            !pin::verify(&old_pin, hash, &pepper()),
            "the old PIN stops working"
        );
        let err = store
            .reset_pin(&UserId("nobody@example.com".into()), &pepper())
            .unwrap_err();
        assert_eq!(err.to_string(), "no user nobody@example.com");
    }

    #[test]
    fn a_different_pepper_is_refused() {
        let (_dir, store) = open();
        let (user, _) = store
            .create_organizer(new_user("a@example.com"), &pepper())
            .unwrap();
        let err = store
            .create_organizer(new_user("b@example.com"), &other_pepper())
            .unwrap_err();
        assert!(matches!(err, StoreError::PepperMismatch), "{err:?}");
        assert!(matches!(
            store.reset_pin(&user.id, &other_pepper()),
            Err(StoreError::PepperMismatch)
        ));
        store.check_pepper(&pepper()).unwrap();
    }

    #[test]
    fn debug_output_shows_neither_pin_nor_hash() {
        let (_dir, store) = open();
        let created = store
            .create_organizer(new_user("a@example.com"), &pepper())
            .unwrap();
        let shown = format!("{created:?}");
        assert!(!shown.contains(created.1.expose()), "{shown}");
        assert!(
            !shown.contains(created.0.pin_hash.as_deref().unwrap()),
            "{shown}"
        );
        assert!(shown.contains("Pin(*****)"), "{shown}");
    }

    #[test]
    fn reopening_keeps_users_settings_lockouts_and_audit() {
        let dir = tempfile::tempdir().unwrap();
        let settings = TenantSettings {
            pin_length: 7,
            dial_in_numbers: vec!["+1 206 555 0100".to_string()],
            ..TenantSettings::default()
        };
        let (user, pin) = {
            let store = Store::open(dir.path()).unwrap();
            store.set_tenant_settings(&settings).unwrap();
            let created = store
                .create_organizer(new_user("a@example.com"), &pepper())
                .unwrap();
            for _ in 0..5 {
                store
                    .record_pin_failure(&created.0.conference_id, &ip(1).into(), t0())
                    .unwrap();
            }
            created
        };
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.tenant_settings().unwrap(), settings);
        let found = store
            .user_by_conference(&user.conference_id)
            .unwrap()
            .unwrap();
        assert_eq!(found, user);
        assert!(pin::verify(
            &pin,
            found.pin_hash.as_deref().unwrap(),
            &pepper()
        ));
        assert_eq!(
            store.pin_lockout(&user.conference_id, t0()).unwrap(),
            Some(t0() + LockoutPolicy::DEFAULT_LOCKOUT)
        );
        assert_eq!(
            store
                .source_failures(&SourceKey::Ip(ip(1)), t0())
                .unwrap()
                .pins,
            5
        );
        let before = store.audit_tail(100).unwrap();
        assert_eq!(before.len(), 6, "5 failures and 1 lockout");
        store
            .append_audit(&AuditEntry::new(
                t0(),
                "test",
                audit::SETTINGS_SET,
                "tenant",
                "ok",
                None,
            ))
            .unwrap();
        let after = store.audit_tail(100).unwrap();
        assert_eq!(
            after[..6],
            before[..],
            "appended after the entries from before the restart"
        );
        assert_eq!(after[6].actor(), "test");
    }

    // ---- settings ----------------------------------------------------------------------------

    #[test]
    fn settings_default_and_round_trip() {
        let (_dir, store) = open();
        let defaults = store.tenant_settings().unwrap();
        assert_eq!(defaults.pin_length, 5);
        assert!(!defaults.allow_anonymous_start);
        assert!(defaults.organizers_require_pin);
        assert!(defaults.auto_email);
        assert!(defaults.dial_in_numbers.is_empty());
        assert_eq!(defaults.conference_id_length, 7);
        let changed = TenantSettings {
            pin_length: 12,
            allow_anonymous_start: true,
            organizers_require_pin: false,
            auto_email: false,
            dial_in_numbers: vec!["+44 20 7946 0000".into(), "(206) 555-0100".into()],
            conference_id_length: 6,
        };
        store.set_tenant_settings(&changed).unwrap();
        assert_eq!(store.tenant_settings().unwrap(), changed);
    }

    #[test]
    fn settings_out_of_range_are_refused_naming_the_range() {
        let (_dir, store) = open();
        for len in [0, 3, 13] {
            let bad = TenantSettings {
                pin_length: len,
                ..TenantSettings::default()
            };
            let err = store.set_tenant_settings(&bad).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("pin_length must be between 4 and 12 digits, got {len}")
            );
        }
        for len in [4, 12] {
            TenantSettings {
                pin_length: len,
                ..TenantSettings::default()
            }
            .validate()
            .unwrap();
        }
        let bad = TenantSettings {
            conference_id_length: 5,
            ..TenantSettings::default()
        };
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "conference_id_length must be between 6 and 15 digits, got 5"
        );
        for number in [
            "",
            "12",
            "call me",
            "+1 206 555 0100 ext. 12345678901234567890",
        ] {
            let bad = TenantSettings {
                dial_in_numbers: vec![number.to_string()],
                ..TenantSettings::default()
            };
            assert!(
                matches!(bad.validate(), Err(SettingsError::DialInNumber(_))),
                "{number:?}"
            );
        }
        assert_eq!(store.tenant_settings().unwrap(), TenantSettings::default());
    }

    #[test]
    fn stored_settings_missing_newer_fields_take_defaults() {
        let (_dir, store) = open();
        store
            .settings
            .insert(KEY_TENANT, br#"{"pin_length":6}"#.as_slice())
            .unwrap();
        let s = store.tenant_settings().unwrap();
        assert_eq!(s.pin_length, 6);
        assert_eq!(s.conference_id_length, DEFAULT_CONFERENCE_ID_LEN);
        assert!(s.auto_email);
    }

    // ---- failed PINs and lockouts ------------------------------------------------------------

    #[test]
    fn the_fifth_failure_within_ten_minutes_locks_for_fifteen() {
        let (_dir, store) = open();
        let c = conf("5550123");
        for i in 1..=4u32 {
            let at = t0() + MIN * i;
            let outcome = store.record_pin_failure(&c, &ip(1).into(), at).unwrap();
            assert_eq!(
                outcome,
                FailureOutcome::Counted {
                    failures: i,
                    remaining: 5 - i,
                    source_failures: i
                }
            );
            assert_eq!(store.pin_lockout(&c, at).unwrap(), None);
        }
        let at = t0() + MIN * 5;
        let outcome = store.record_pin_failure(&c, &ip(2).into(), at).unwrap();
        let until = at + 15 * MIN;
        assert_eq!(
            outcome,
            FailureOutcome::LockedOut {
                until,
                source_failures: 1
            }
        );
        assert_eq!(outcome.locked_until(), Some(until));
        assert_eq!(store.pin_lockout(&c, at).unwrap(), Some(until));
        assert_eq!(
            store.list_lockouts(at).unwrap(),
            vec![Lockout {
                conference: c.clone(),
                until
            }]
        );
        // Other conferences are unaffected.
        assert_eq!(store.pin_lockout(&conf("5550124"), at).unwrap(), None);
    }

    #[test]
    fn failures_older_than_the_window_do_not_count() {
        let (_dir, store) = open();
        let c = conf("5550123");
        // 0, 3, 6, 9 minutes: four failures.
        for m in [0u32, 3, 6, 9] {
            store
                .record_pin_failure(&c, &ip(1).into(), t0() + MIN * m)
                .unwrap();
        }
        // At exactly 10 minutes the first one has left the window: still four.
        let outcome = store
            .record_pin_failure(&c, &ip(1).into(), t0() + MIN * 10)
            .unwrap();
        assert!(
            matches!(
                outcome,
                FailureOutcome::Counted {
                    failures: 4,
                    remaining: 1,
                    ..
                }
            ),
            "{outcome:?}"
        );
        // At 11 minutes: 3, 6, 9, 10, 11 are five within ten minutes.
        let outcome = store
            .record_pin_failure(&c, &ip(1).into(), t0() + MIN * 11)
            .unwrap();
        assert!(
            matches!(outcome, FailureOutcome::LockedOut { .. }),
            "{outcome:?}"
        );
    }

    #[test]
    fn a_lockout_expires_and_is_then_neither_reported_nor_listed() {
        let (_dir, store) = open();
        let c = conf("5550123");
        for _ in 0..5 {
            store.record_pin_failure(&c, &ip(1).into(), t0()).unwrap();
        }
        let until = t0() + 15 * MIN;
        let just_before = until - Duration::from_millis(1);
        assert_eq!(store.pin_lockout(&c, just_before).unwrap(), Some(until));
        assert_eq!(store.pin_lockout(&c, until).unwrap(), None);
        assert!(store.list_lockouts(until).unwrap().is_empty());
        // The failures that caused it are spent: a new failure starts a fresh count.
        let outcome = store.record_pin_failure(&c, &ip(1).into(), until).unwrap();
        assert!(
            matches!(
                outcome,
                FailureOutcome::Counted {
                    failures: 1,
                    remaining: 4,
                    ..
                }
            ),
            "{outcome:?}"
        );
        assert_eq!(
            store.prune_expired(until).unwrap(),
            1,
            "the expired lockout record"
        );
    }

    #[test]
    fn failures_while_locked_neither_count_nor_extend_the_lockout() {
        let (_dir, store) = open();
        let c = conf("5550123");
        for _ in 0..5 {
            store.record_pin_failure(&c, &ip(1).into(), t0()).unwrap();
        }
        let until = t0() + 15 * MIN;
        for m in 1..=10u32 {
            let outcome = store
                .record_pin_failure(&c, &ip(1).into(), t0() + MIN * m)
                .unwrap();
            assert_eq!(
                outcome,
                FailureOutcome::AlreadyLocked {
                    until,
                    source_failures: 5 + m
                }
            );
        }
        assert_eq!(store.pin_lockout(&c, t0() + 14 * MIN).unwrap(), Some(until));
        let outcome = store.record_pin_failure(&c, &ip(1).into(), until).unwrap();
        assert!(matches!(
            outcome,
            FailureOutcome::Counted { failures: 1, .. }
        ));
    }

    #[test]
    fn clearing_a_lockout_unlocks_and_forgets_the_count() {
        let (_dir, store) = open();
        let c = conf("5550123");
        for _ in 0..5 {
            store.record_pin_failure(&c, &ip(1).into(), t0()).unwrap();
        }
        assert!(store.clear_lockout(&c).unwrap());
        assert_eq!(store.pin_lockout(&c, t0()).unwrap(), None);
        assert!(!store.clear_lockout(&c).unwrap(), "nothing left to clear");
        for _ in 0..3 {
            store.record_pin_failure(&c, &ip(1).into(), t0()).unwrap();
        }
        store.clear_lockout(&c).unwrap();
        let outcome = store.record_pin_failure(&c, &ip(1).into(), t0()).unwrap();
        assert!(matches!(
            outcome,
            FailureOutcome::Counted { failures: 1, .. }
        ));
    }

    #[test]
    fn failures_are_counted_per_source_across_conferences() {
        let (_dir, store) = open();
        let a = Source::from(ip(1));
        let b = Source::from(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)));
        for (i, id) in ["5550001", "5550002", "5550003"].iter().enumerate() {
            store
                .record_pin_failure(&conf(id), &a, t0() + MIN * i as u32)
                .unwrap();
        }
        store
            .record_pin_failure(&conf("5550001"), &b, t0())
            .unwrap();
        let now = t0() + 3 * MIN;
        let pins = |s: &Source, at| store.source_failures(&s.key, at).unwrap().pins;
        assert_eq!(pins(&a, now), 3);
        assert_eq!(pins(&b, now), 1);
        assert_eq!(pins(&Source::from(ip(9)), now), 0);
        // An IPv4-mapped IPv6 source is the same caller as its IPv4 address.
        let mapped = Source::from(IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped()));
        assert_eq!(pins(&mapped, now), 3);
        let outcome = store
            .record_pin_failure(&conf("5550009"), &mapped, now)
            .unwrap();
        assert_eq!(outcome.source_failures(), 4);
        // The source window is an hour.
        let later = t0() + LockoutPolicy::DEFAULT_SOURCE_WINDOW + MIN;
        assert_eq!(pins(&a, later), 2);
        assert_eq!(pins(&b, later), 0);
    }

    // ---- per-source limits (issue 7) --------------------------------------------------------

    fn small_limits(store: Store) -> Store {
        store
            .with_lockout_policy(LockoutPolicy {
                source_max_pin_failures: 3,
                source_max_id_failures: 4,
                ..LockoutPolicy::default()
            })
            .unwrap()
    }

    #[test]
    fn wrong_pins_across_conferences_block_a_source_until_they_leave_the_window() {
        let (_dir, store) = open();
        let store = small_limits(store);
        let a = Source::from(ip(1));
        let b = Source::from(ip(2));
        // Three wrong PINs, each for another conference, 10 minutes apart.
        for i in 0..3u32 {
            assert_eq!(store.source_blocked(&a.key, t0() + 10 * MIN * i), None);
            let c = conf(&format!("555000{i}"));
            store
                .record_pin_failure(&c, &a, t0() + 10 * MIN * i)
                .unwrap();
        }
        let until = t0() + LockoutPolicy::DEFAULT_SOURCE_WINDOW;
        let now = t0() + 20 * MIN;
        assert_eq!(store.source_blocked(&a.key, now), Some(until));
        assert_eq!(
            store.source_blocked(&b.key, now),
            None,
            "others are unaffected"
        );
        // The right PIN is refused unchecked (not even a wrong pepper is noticed), audited.
        let (user, pin) = store
            .create_organizer(new_user("a@example.com"), &pepper())
            .unwrap();
        let check = store
            .check_organizer_pin(&user.conference_id, &pin, &other_pepper(), &a, now)
            .unwrap();
        assert_eq!(check, PinCheck::SourceBlocked { until });
        let verified = store
            .check_organizer_pin(&user.conference_id, &pin, &pepper(), &b, now)
            .unwrap();
        assert!(matches!(verified, PinCheck::Verified(_)));
        let log = store.audit_tail(100).unwrap();
        let actions: Vec<&str> = log.iter().map(AuditEntry::action).collect();
        assert_eq!(
            actions
                .iter()
                .filter(|a| **a == audit::SOURCE_BLOCK)
                .count(),
            1
        );
        assert_eq!(*actions.last().unwrap(), audit::SOURCE_REFUSED);
        let block = store.source_blocks(now).unwrap();
        assert_eq!(
            block,
            [SourceBlock {
                source: a.key.clone(),
                reason: BlockReason::PinFailures,
                failures: 3,
                limit: 3,
                until,
                refused_calls: 0,
            }]
        );
        // The oldest failure leaves the window at t0 + 1 h: one more try, then blocked again.
        assert_eq!(store.source_blocked(&a.key, until - MIN), Some(until));
        assert_eq!(store.source_blocked(&a.key, until), None);
        assert!(store.source_blocks(until).unwrap().is_empty());
        store
            .record_pin_failure(&conf("5550009"), &a, until)
            .unwrap();
        assert_eq!(
            store.source_blocked(&a.key, until),
            Some(t0() + 10 * MIN + LockoutPolicy::DEFAULT_SOURCE_WINDOW)
        );
    }

    #[test]
    fn pin_checks_under_way_count_against_the_source_limit() {
        let (_dir, store) = open();
        let store = small_limits(store);
        let a = SourceKey::Ip(ip(1));
        for _ in 0..2 {
            store
                .record_pin_failure(&conf("5550001"), &ip(1).into(), t0())
                .unwrap();
        }
        // 2 recorded + 1 under way = the limit of 3: a fourth concurrent check is refused.
        let first = store.reserve_pin_check(&a, t0()).unwrap();
        assert!(first.is_some());
        assert!(store.reserve_pin_check(&a, t0()).unwrap().is_none());
        assert!(
            store
                .reserve_pin_check(&SourceKey::Ip(ip(2)), t0())
                .unwrap()
                .is_some()
        );
        drop(first);
        assert!(store.reserve_pin_check(&a, t0()).unwrap().is_some());
    }

    #[test]
    fn failed_conference_ids_block_a_source_and_only_lengths_are_audited() {
        let (_dir, store) = open();
        let store = small_limits(store);
        let a = Source::from(ip(1));
        for i in 0..3u32 {
            let blocked = store
                .record_conference_id_failure(&a, 7, t0() + MIN * i)
                .unwrap();
            assert_eq!(blocked, None);
        }
        let blocked = store
            .record_conference_id_failure(&a, 3, t0() + 3 * MIN)
            .unwrap();
        assert_eq!(blocked, Some(t0() + LockoutPolicy::DEFAULT_SOURCE_WINDOW));
        let counts = store.source_failures(&a.key, t0() + 3 * MIN).unwrap();
        assert_eq!(
            counts,
            SourceFailures {
                pins: 0,
                conference_ids: 4
            }
        );
        let log = store.audit_tail(100).unwrap();
        assert_eq!(log.len(), 5, "4 failures and the block");
        assert_eq!(log[0].action(), audit::CONFERENCE_ID_FAILURE);
        assert_eq!(
            log[0].outcome(),
            "unknown conference ID (7 digits); 1 of 4 allowed within 1 h"
        );
        assert_eq!(log[4].action(), audit::SOURCE_BLOCK);
        assert_eq!(log[4].target(), "192.0.2.1");
        assert_eq!(log[4].source(), Some(ip(1)));
        let blocks = store.source_blocks(t0() + 3 * MIN).unwrap();
        assert_eq!(blocks[0].reason, BlockReason::ConferenceIdFailures);
    }

    #[test]
    fn refused_calls_are_audited_once_per_window_and_counted() {
        let (_dir, store) = open();
        let store = small_limits(store);
        let a = Source::from(ip(1));
        assert_eq!(store.refuse_call(&a, t0()), None);
        for i in 0..4 {
            store
                .record_conference_id_failure(&a, 7, t0() + MIN * i)
                .unwrap();
        }
        let now = t0() + 5 * MIN;
        let first = store.refuse_call(&a, now).unwrap();
        let entry = first.audit.expect("the first refusal is audited");
        assert_eq!(entry.action(), audit::SOURCE_REFUSED);
        assert!(entry.outcome().contains("1 in all"), "{}", entry.outcome());
        for n in 1..1000u32 {
            let r = store
                .refuse_call(&a, now + Duration::from_millis(u64::from(n)))
                .unwrap();
            assert_eq!(r.audit, None, "a flood is counted, not audited");
        }
        assert_eq!(store.source_blocks(now).unwrap()[0].refused_calls, 1000);
        assert_eq!(store.refuse_call(&Source::from(ip(2)), now), None);
        // Blocked until t0 + 1 h; a call then goes in.
        assert_eq!(
            store.refuse_call(&a, t0() + LockoutPolicy::DEFAULT_SOURCE_WINDOW),
            None
        );
    }

    #[test]
    fn blocks_survive_a_restart_and_clearing_forgets_the_failures() {
        let dir = tempfile::tempdir().unwrap();
        let caller = Source {
            ip: ip(7),
            key: SourceKey::Caller("+15551234".into()),
        };
        let now = SystemTime::now();
        {
            let store = small_limits(Store::open(dir.path()).unwrap());
            for _ in 0..3 {
                store
                    .record_pin_failure(&conf("5550001"), &caller, now)
                    .unwrap();
            }
            assert!(store.source_blocked(&caller.key, now).is_some());
            assert_eq!(
                store.source_blocked(&SourceKey::Ip(ip(7)), now),
                None,
                "not the trunk"
            );
        }
        let store = small_limits(Store::open(dir.path()).unwrap());
        assert!(store.source_blocked(&caller.key, now).is_some());
        assert!(store.refuse_call(&caller, now).is_some());
        assert!(store.clear_source_block(&caller.key, now).unwrap());
        assert_eq!(store.source_blocked(&caller.key, now), None);
        assert_eq!(
            store.source_failures(&caller.key, now).unwrap(),
            SourceFailures::default()
        );
        assert!(!store.clear_source_block(&caller.key, now).unwrap());
        // A limit of 0 is no limit; a stricter policy on restart blocks at once.
        let lax = store
            .with_lockout_policy(LockoutPolicy {
                source_max_pin_failures: 0,
                ..LockoutPolicy::default()
            })
            .unwrap();
        for _ in 0..20 {
            lax.record_pin_failure(&conf("5550002"), &caller, now)
                .unwrap();
        }
        assert_eq!(lax.source_blocked(&caller.key, now), None);
        let strict = small_limits(lax);
        assert!(strict.source_blocked(&caller.key, now).is_some());
    }

    #[test]
    fn the_policy_is_configurable() {
        let (_dir, store) = open();
        let store = store
            .with_lockout_policy(LockoutPolicy {
                max_failures: 2,
                window: MIN,
                lockout: 2 * MIN,
                source_window: MIN,
                ..LockoutPolicy::default()
            })
            .unwrap();
        let c = conf("5550123");
        store.record_pin_failure(&c, &ip(1).into(), t0()).unwrap();
        let outcome = store.record_pin_failure(&c, &ip(1).into(), t0()).unwrap();
        assert_eq!(outcome.locked_until(), Some(t0() + 2 * MIN));
    }

    #[test]
    fn prune_removes_only_what_has_expired() {
        let (_dir, store) = open();
        store
            .record_pin_failure(&conf("5550001"), &ip(1).into(), t0())
            .unwrap();
        store
            .record_pin_failure(&conf("5550002"), &ip(2).into(), t0() + 30 * MIN)
            .unwrap();
        // At +35 min: conference 5550001's failure (10-min window) has expired; both
        // sources are within their hour.
        assert_eq!(store.prune_expired(t0() + 35 * MIN).unwrap(), 1);
        assert_eq!(
            store
                .source_failures(&SourceKey::Ip(ip(1)), t0() + 35 * MIN)
                .unwrap()
                .pins,
            1
        );
        assert_eq!(store.conference_failures.len(), 1);
    }

    // ---- audit -------------------------------------------------------------------------------

    #[test]
    fn failures_and_lockouts_are_audited_in_order() {
        let (_dir, store) = open();
        let c = conf("5550123");
        for i in 0..5u32 {
            store
                .record_pin_failure(&c, &ip(1).into(), t0() + MIN * i)
                .unwrap();
        }
        let tail = store.audit_tail(3).unwrap();
        let actions: Vec<_> = tail.iter().map(AuditEntry::action).collect();
        assert_eq!(
            actions,
            [audit::PIN_FAILURE, audit::PIN_FAILURE, audit::PIN_LOCKOUT]
        );
        assert_eq!(tail[0].outcome(), "wrong PIN, 4 of 5 allowed");
        assert_eq!(tail[1].outcome(), "wrong PIN, 5 of 5 allowed");
        assert_eq!(
            tail[2].outcome(),
            "organizer PIN entry locked until 2025-06-15T15:25:40Z after 5 failures"
        );
        assert!(
            tail.iter()
                .all(|e| e.target() == "5550123" && e.source() == Some(ip(1)))
        );
        assert_eq!(tail[0].at(), t0() + 3 * MIN);
        assert_eq!(store.audit_tail(100).unwrap().len(), 6);
        assert!(store.audit_tail(0).unwrap().is_empty());
    }

    #[test]
    fn no_pin_reaches_the_audit_log() {
        let (_dir, store) = open();
        let (user, pin) = store
            .create_organizer(new_user("a@example.com"), &pepper())
            .unwrap();
        // The ways a careless caller might try to describe a PIN all come out masked.
        store
            .append_audit(&AuditEntry::new(
                SystemTime::now(),
                "cli",
                audit::USER_CREATE,
                user.id.to_string(),
                format!("created with PIN {pin} ({pin:?})"),
                None,
            ))
            .unwrap();
        let (_, new_pin) = store.reset_pin(&user.id, &pepper()).unwrap();
        for _ in 0..5 {
            store
                .record_pin_failure(&user.conference_id, &ip(1).into(), t0())
                .unwrap();
        }
        let entries = store.audit_tail(1000).unwrap();
        assert_eq!(entries[0].outcome(), "created with PIN ***** (Pin(*****))");
        for e in &entries {
            let text = [e.actor(), e.action(), e.target(), e.outcome()].join("|");
            for digits in [pin.expose(), new_pin.expose()] {
                assert!(!text.contains(digits), "{text}");
            }
        }
    }

    #[test]
    fn utc_formatting() {
        assert_eq!(format_utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(t0()), "2025-06-15T15:06:40Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(format_utc(leap), "2000-02-29T00:00:00Z");
        let end = UNIX_EPOCH + Duration::from_secs(4_102_444_799);
        assert_eq!(format_utc(end), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn check_organizer_pin_follows_the_rules_in_order() {
        let (_dir, store) = open();
        let (user, pin) = store
            .create_organizer(new_user("a@example.com"), &pepper())
            .unwrap();
        let c = &user.conference_id;
        let check = |p: &Pin, at| {
            store
                .check_organizer_pin(c, p, &pepper(), &ip(1).into(), at)
                .unwrap()
        };
        assert_eq!(check(&pin, t0()), PinCheck::Verified(user.clone()));
        let wrong = Pin::new(if pin.expose() == "13579" {
            "24680"
        } else {
            "13579"
        });
        for i in 1..=4 {
            assert!(
                matches!(check(&wrong, t0()), PinCheck::Wrong(FailureOutcome::Counted { failures, .. }) if failures == i)
            );
        }
        // A verified PIN does not reset the window: the next failure still locks.
        assert!(matches!(check(&pin, t0()), PinCheck::Verified(_)));
        let locked = check(&wrong, t0());
        assert!(
            matches!(locked, PinCheck::Wrong(FailureOutcome::LockedOut { .. })),
            "{locked:?}"
        );
        // While locked even the right PIN is not looked at.
        let until = t0() + LockoutPolicy::DEFAULT_LOCKOUT;
        assert_eq!(check(&pin, t0()), PinCheck::Locked { until });
        assert!(matches!(check(&pin, until), PinCheck::Verified(_)));
        let unknown = store
            .check_organizer_pin(&conf("1000000"), &pin, &pepper(), &ip(1).into(), t0())
            .unwrap();
        assert_eq!(unknown, PinCheck::UnknownConference);
        // A wrong pepper never verifies.
        let other = store
            .check_organizer_pin(c, &pin, &other_pepper(), &ip(1).into(), until)
            .unwrap();
        assert!(matches!(other, PinCheck::Wrong(_)));
    }

    #[test]
    fn a_disabled_organizer_is_refused_without_counting() {
        let (_dir, store) = open();
        let (mut user, pin) = store
            .create_organizer(new_user("a@example.com"), &pepper())
            .unwrap();
        user.enabled = false;
        store
            .users
            .insert(user.id.0.as_bytes(), encode(&user))
            .unwrap();
        let check = store
            .check_organizer_pin(&user.conference_id, &pin, &pepper(), &ip(1).into(), t0())
            .unwrap();
        assert_eq!(check, PinCheck::Disabled);
        assert_eq!(
            store.source_failures(&SourceKey::Ip(ip(1)), t0()).unwrap(),
            SourceFailures::default()
        );
    }

    // ---- admin edits (issue 5) ----

    #[test]
    fn reset_conference_id_skips_taken_ids_and_frees_the_old_one() {
        let (_dir, store) = open();
        let (a, _) = store
            .create_organizer_with(new_user("a@example.com"), &pepper(), |_| conf("5550123"))
            .unwrap();
        store
            .create_organizer_with(new_user("b@example.com"), &pepper(), |_| conf("5550124"))
            .unwrap();
        let mut draws = ["5550124", "5550125"].into_iter();
        let (moved, old) = store
            .reset_conference_id_with(&a.id, |_| conf(draws.next().unwrap()))
            .unwrap();
        assert_eq!(old, conf("5550123"));
        assert_eq!(moved.conference_id, conf("5550125"));
        assert_eq!(store.user_by_conference(&conf("5550123")).unwrap(), None);
        assert_eq!(
            store.user_by_conference(&conf("5550125")).unwrap(),
            Some(moved.clone())
        );
        assert_eq!(store.user(&a.id).unwrap(), Some(moved));
        // b keeps theirs; an unknown user is not found.
        let b = store
            .user(&UserId("b@example.com".into()))
            .unwrap()
            .unwrap();
        assert_eq!(b.conference_id, conf("5550124"));
        let err = store
            .reset_conference_id(&UserId("nobody@example.com".into()))
            .unwrap_err();
        assert!(matches!(err, StoreError::UserNotFound(_)), "{err:?}");
    }

    #[test]
    fn update_user_keeps_the_identity_id_and_pin() {
        let (_dir, store) = open();
        let (a, _) = store
            .create_organizer(new_user("a@example.com"), &pepper())
            .unwrap();
        let edited = store
            .update_user(&a.id, |u| {
                u.enabled = false;
                u.display_name = "Renamed".into();
                u.conference_id = conf("1111111");
                u.pin_hash = None;
            })
            .unwrap();
        assert!(!edited.enabled);
        assert_eq!(edited.display_name, "Renamed");
        assert_eq!(edited.conference_id, a.conference_id);
        assert_eq!(edited.pin_hash, a.pin_hash);
        assert_eq!(store.user(&a.id).unwrap(), Some(edited));
    }

    // ---- outbox ------------------------------------------------------------------------------

    fn pin_email(to: &str) -> crate::notify::Email {
        crate::notify::Email {
            to: to.to_string(),
            subject: "Your new PIN".to_string(),
            text: "Your PIN is 48213".to_string(),
            html: "<p>Your PIN is <b>48213</b></p>".to_string(),
        }
    }

    #[test]
    fn a_queued_email_is_due_at_once_and_in_queue_order() {
        let (_dir, store) = open();
        let a = store
            .enqueue_email(&pin_email("a@example.com"), t0())
            .unwrap();
        let b = store
            .enqueue_email(&pin_email("b@example.com"), t0())
            .unwrap();
        assert!(a < b);
        let due: Vec<u64> = store
            .due_emails(t0())
            .unwrap()
            .iter()
            .map(|q| q.id)
            .collect();
        assert_eq!(due, [a, b]);
        assert!(store.due_emails(t0() - MIN).unwrap().is_empty());
        assert_eq!(store.next_email_attempt().unwrap(), Some(t0()));
        let q = store.email(a).unwrap().unwrap();
        assert_eq!(
            (q.state, q.attempts, q.next_attempt_at),
            (DeliveryState::Queued, 0, t0())
        );
        assert_eq!(store.email(b + 1).unwrap(), None);
    }

    #[test]
    fn a_failed_attempt_is_counted_and_waits_for_its_retry() {
        let (_dir, store) = open();
        let id = store
            .enqueue_email(&pin_email("a@example.com"), t0())
            .unwrap();
        let retry = t0() + Duration::from_secs(5);
        let q = store
            .record_attempt_failure(id, "connection refused", retry)
            .unwrap();
        assert_eq!(q.attempts, 1);
        assert_eq!(q.last_error.as_deref(), Some("connection refused"));
        assert_eq!(q.state, DeliveryState::Queued);
        assert!(q.email.is_some(), "kept until delivered");
        assert!(
            store
                .due_emails(retry - Duration::from_millis(1))
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.due_emails(retry).unwrap().len(), 1);
        assert_eq!(store.next_email_attempt().unwrap(), Some(retry));
        assert_eq!(store.email(id).unwrap().unwrap(), q, "persisted");
        assert!(matches!(
            store.record_attempt_failure(id + 1, "x", retry),
            Err(StoreError::EmailNotFound(_))
        ));
    }

    #[test]
    fn delivery_drops_the_body_and_keeps_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let id = {
            let store = Store::open(&data).unwrap();
            let id = store
                .enqueue_email(&pin_email("a@example.com"), t0())
                .unwrap();
            store.record_attempt_failure(id, "timeout", t0()).unwrap();
            let q = store.mark_delivered(id, t0() + MIN).unwrap();
            assert_eq!(q.state, DeliveryState::Delivered);
            assert_eq!(q.email, None);
            assert_eq!(
                q.attempts, 2,
                "the failed attempt and the one that delivered"
            );
            assert_eq!(q.last_error, None);
            // Idempotent: a second mark changes nothing, a late failure neither.
            assert_eq!(store.mark_delivered(id, t0() + 2 * MIN).unwrap(), q);
            assert_eq!(store.record_attempt_failure(id, "late", t0()).unwrap(), q);
            id
        };
        // Reopened: the record is there, the PIN is not, nothing is due.
        let store = Store::open(&data).unwrap();
        let q = store.email(id).unwrap().unwrap();
        assert_eq!(
            (q.state, q.to.as_str(), q.subject.as_str()),
            (DeliveryState::Delivered, "a@example.com", "Your new PIN")
        );
        assert!(store.due_emails(t0() + 60 * MIN).unwrap().is_empty());
        assert_eq!(store.next_email_attempt().unwrap(), None);
        let raw: Vec<u8> = store
            .outbox
            .get(id.to_be_bytes())
            .unwrap()
            .unwrap()
            .to_vec();
        assert!(!String::from_utf8_lossy(&raw).contains("48213"));
    }

    #[test]
    fn records_without_retry_fields_decode_as_due() {
        let (_dir, store) = open();
        let old = br#"{"id":9,"to":"a@example.com","subject":"s","state":"queued","attempts":0,"queued_at":1750000000000,"last_error":null,"email":null}"#;
        store
            .outbox
            .insert(9u64.to_be_bytes(), old.as_slice())
            .unwrap();
        let q = store.email(9).unwrap().unwrap();
        assert_eq!((q.next_attempt_at, q.delivered_at), (UNIX_EPOCH, None));
        assert_eq!(store.due_emails(t0()).unwrap().len(), 1);
    }

    #[test]
    fn delivered_records_are_pruned_after_the_retention() {
        let (_dir, store) = open();
        let old = store
            .enqueue_email(&pin_email("a@example.com"), t0())
            .unwrap();
        let queued = store
            .enqueue_email(&pin_email("b@example.com"), t0())
            .unwrap();
        store.mark_delivered(old, t0()).unwrap();
        let later = t0() + DELIVERED_EMAIL_RETENTION;
        assert_eq!(store.prune_delivered_emails(later - MIN).unwrap(), 0);
        assert_eq!(store.prune_delivered_emails(later).unwrap(), 1);
        let left: Vec<u64> = store.emails().unwrap().iter().map(|q| q.id).collect();
        assert_eq!(left, [queued], "queued mail is never pruned");
    }

    #[test]
    fn debug_of_a_queued_email_never_shows_the_body() {
        let (_dir, store) = open();
        let id = store
            .enqueue_email(&pin_email("a@example.com"), t0())
            .unwrap();
        let q = store.email(id).unwrap().unwrap();
        for text in [
            format!("{q:?}"),
            format!("{q:#?}"),
            format!("{:?}", q.email),
        ] {
            assert!(!text.contains("48213"), "{text}");
            assert!(text.contains("a@example.com"), "{text}");
        }
    }

    #[test]
    fn the_store_can_be_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Store>();
    }
}
