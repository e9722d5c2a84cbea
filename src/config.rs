//! One `Config` for the server, merged from (highest first) command-line flags, `PINBRIDGE_*`
//! environment variables, a TOML file (`--config`), and built-in defaults, then validated
//! once at start so a bad setting is a clear message before anything binds.
//!
//! Flags and their environment twins are declared together on [`ServeArgs`] (clap reads
//! both); every flag has a TOML key of the same name with `_` for `-`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::bridge::{BridgeConfig, OrganizerLeavePolicy};
use crate::ivr::IvrConfig;
use crate::media::dtmf::stream::DtmfMode;
use crate::notify::{self, MailConfig, MailTransport, SmtpConfig, SmtpCredentials, TlsMode};
use crate::sip::limits::{Limits, RateLimit};
use crate::store::LockoutPolicy;

/// Flags of `pinbridge serve`.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// TOML configuration file; flags and environment variables override its keys.
    #[arg(long, env = "PINBRIDGE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address for SIP over UDP and TCP (port 0 picks a free port) [default: 0.0.0.0:5060].
    #[arg(long, env = "PINBRIDGE_SIP_LISTEN", value_name = "IP:PORT")]
    pub sip_listen: Option<SocketAddr>,
    /// RTP port range; one even port per call [default: 20000-29999].
    #[arg(long, env = "PINBRIDGE_RTP_PORTS", value_name = "LOW-HIGH")]
    pub rtp_ports: Option<PortRange>,
    /// Directory for the store [default: ./data].
    #[arg(long, env = "PINBRIDGE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Directory holding the prompts and hold music [default: ./audio].
    #[arg(long, env = "PINBRIDGE_AUDIO_DIR", value_name = "DIR")]
    pub audio_dir: Option<PathBuf>,
    /// Log filter: a level (error, warn, info, debug, trace) or a tracing directive such as
    /// `pinbridge=debug`; falls back to RUST_LOG, then `info`.
    #[arg(long, env = "PINBRIDGE_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
    /// IP address put in Contact and SDP when listening on a wildcard address
    /// [default: the listen address, or the primary interface's address].
    #[arg(long, env = "PINBRIDGE_ADVERTISE_IP", value_name = "IP")]
    pub advertise_ip: Option<IpAddr>,
    /// Seconds without RTP from a caller before we hang up [default: 30].
    #[arg(long, env = "PINBRIDGE_RTP_TIMEOUT", value_name = "SECONDS")]
    pub rtp_timeout: Option<u64>,
    /// Media worker tasks, each with its own 20 ms clock [default: number of CPUs].
    #[arg(long, env = "PINBRIDGE_MEDIA_WORKERS", value_name = "N")]
    pub media_workers: Option<usize>,
    /// Seconds to wait for BYE answers on shutdown [default: 5].
    #[arg(long, env = "PINBRIDGE_SHUTDOWN_GRACE", value_name = "SECONDS")]
    pub shutdown_grace: Option<u64>,
    /// How callers' key presses are taken: auto (RFC 4733 when negotiated, else in-band; SIP
    /// INFO always), rfc4733, info or inband [default: auto].
    #[arg(long, env = "PINBRIDGE_DTMF_MODE", value_name = "MODE")]
    pub dtmf_mode: Option<DtmfMode>,
    /// Seconds a caller has for the first key after a prompt ends [default: 10].
    #[arg(long, env = "PINBRIDGE_FIRST_DIGIT_TIMEOUT", value_name = "SECONDS")]
    pub first_digit_timeout: Option<u64>,
    /// Seconds allowed between keys; a pause this long ends the entry like `#` [default: 5].
    #[arg(long, env = "PINBRIDGE_INTER_DIGIT_TIMEOUT", value_name = "SECONDS")]
    pub inter_digit_timeout: Option<u64>,
    /// Seconds of hold music between "waiting for the organizer" reminders [default: 60].
    #[arg(long, env = "PINBRIDGE_LOBBY_REMINDER", value_name = "SECONDS")]
    pub lobby_reminder: Option<u64>,
    /// Most callers in one conference, lobby and meeting together [default: 250].
    #[arg(long, env = "PINBRIDGE_MAX_PARTICIPANTS", value_name = "N")]
    pub max_participants: Option<usize>,
    /// End a meeting this many seconds after its organizer leaves [default: the meeting
    /// continues].
    #[arg(long, env = "PINBRIDGE_ORGANIZER_LEAVE_GRACE", value_name = "SECONDS")]
    pub organizer_leave_grace: Option<u64>,
    /// Play a tone to the meeting when someone joins or leaves [default: true].
    #[arg(long, env = "PINBRIDGE_JOIN_TONES", value_name = "BOOL")]
    pub join_tones: Option<bool>,
    /// Seed one demo organizer into an empty store and print its conference ID and PIN.
    #[arg(long)]
    pub demo: bool,
    #[command(flatten)]
    pub mail: MailArgs,
    // ---- admin HTTP API (issue 5) ----
    /// Address of the admin HTTP API (port 0 picks a free port) [default: 127.0.0.1:8080].
    /// Beyond loopback it needs PINBRIDGE_ADMIN_TOKEN or `admin_token` (no flag: `ps` would
    /// show it).
    #[arg(long, env = "PINBRIDGE_HTTP_LISTEN", value_name = "IP:PORT")]
    pub http_listen: Option<SocketAddr>,
    /// The address users reach the self-service page at, for the sign-in links emailed to
    /// them, e.g. https://meet.example.com [default: http://<http-listen address>].
    #[arg(long, env = "PINBRIDGE_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub brute_force: BruteForceArgs,
}

// ---- per-source brute-force limits (issue 7) ---------------------------------------------

/// Flags of `pinbridge serve` for the per-source limits on failed conference IDs and PINs
/// (SECURITY.md, "PIN brute force"). A limit of 0 turns it off.
#[derive(clap::Args, Debug, Default, Clone)]
#[command(next_help_heading = "Brute-force limits")]
pub struct BruteForceArgs {
    /// Wrong organizer PINs from one source within --source-window that block the source
    /// [default: 10; 0 = no limit].
    #[arg(long, env = "PINBRIDGE_SOURCE_PIN_FAILURES", value_name = "N")]
    pub source_pin_failures: Option<u32>,
    /// Unknown or invalid conference IDs keyed from one source within --source-window that
    /// block the source [default: 20; 0 = no limit].
    #[arg(long, env = "PINBRIDGE_SOURCE_ID_FAILURES", value_name = "N")]
    pub source_id_failures: Option<u32>,
    /// Sliding window, in seconds, over which a source's failures are counted [default: 3600].
    #[arg(long, env = "PINBRIDGE_SOURCE_WINDOW", value_name = "SECONDS")]
    pub source_window: Option<u64>,
    /// Signalling address of a carrier trunk or SBC whose calls are counted per caller number
    /// (P-Asserted-Identity, else From) instead of per address; repeat for several (environment:
    /// comma-separated).
    #[arg(
        long = "trusted-trunk",
        env = "PINBRIDGE_TRUSTED_TRUNKS",
        value_name = "IP",
        value_delimiter = ','
    )]
    pub trusted_trunks: Vec<IpAddr>,
}

/// The per-source limits from flags/environment over the TOML file over
/// [`LockoutPolicy::default`], and the trusted trunks.
fn brute_force_config(
    a: &BruteForceArgs,
    f: &FileConfig,
) -> Result<(LockoutPolicy, Vec<IpAddr>), ConfigError> {
    let d = LockoutPolicy::default();
    let invalid = |key: &'static str, message: String| ConfigError::Invalid { key, message };
    let window = match a.source_window.or(f.source_window) {
        None => d.source_window,
        Some(0) => return Err(invalid("source_window", "must be at least 1 second".into())),
        Some(s) if s > 7 * 24 * 3600 => {
            return Err(invalid(
                "source_window",
                format!("{s} s is more than a week; failures are kept at most 1024 per source"),
            ));
        }
        Some(s) => Duration::from_secs(s),
    };
    let limit = |key: &'static str, flag: Option<u32>, file: Option<u32>, default: u32| match flag
        .or(file)
        .unwrap_or(default)
    {
        n if n > 1000 => Err(invalid(
            key,
            format!("{n} is above 1000 (the store keeps at most 1024 failures per source)"),
        )),
        n => Ok(n),
    };
    let policy = LockoutPolicy {
        source_window: window,
        source_max_pin_failures: limit(
            "source_pin_failures",
            a.source_pin_failures,
            f.source_pin_failures,
            d.source_max_pin_failures,
        )?,
        source_max_id_failures: limit(
            "source_id_failures",
            a.source_id_failures,
            f.source_id_failures,
            d.source_max_id_failures,
        )?,
        ..d
    };
    let trunks = if a.trusted_trunks.is_empty() {
        let mut trunks = Vec::new();
        for t in f.trusted_trunks.iter().flatten() {
            let ip = t
                .parse::<IpAddr>()
                .map_err(|_| invalid("trusted_trunks", format!("{t:?} is not an IP address")))?;
            trunks.push(ip);
        }
        trunks
    } else {
        a.trusted_trunks.clone()
    };
    if let Some(ip) = trunks.iter().find(|ip| ip.is_unspecified()) {
        return Err(invalid(
            "trusted_trunks",
            format!("{ip} is not one trunk's address"),
        ));
    }
    Ok((policy, trunks))
}

// ---- flood limits (issue 7) ------------------------------------------------------------------

/// Flags of `pinbridge serve` for the flood limits (SECURITY.md explains each). A rate of 0
/// turns that limit off.
#[derive(clap::Args, Debug, Default, Clone)]
#[command(next_help_heading = "Flood limits")]
pub struct LimitArgs {
    /// New calls (INVITEs) per second from one source IP; over it: 503 with Retry-After,
    /// then silence [default: 10; 0 = no limit].
    #[arg(long, env = "PINBRIDGE_INVITE_RATE", value_name = "PER_SECOND")]
    pub invite_rate: Option<u32>,
    /// INVITEs one source may send at once before the rate applies [default: 40].
    #[arg(long, env = "PINBRIDGE_INVITE_BURST", value_name = "N")]
    pub invite_burst: Option<u32>,
    /// SIP messages of any kind per second from one source IP; over it they are dropped
    /// unread [default: 200; 0 = no limit].
    #[arg(long, env = "PINBRIDGE_MESSAGE_RATE", value_name = "PER_SECOND")]
    pub message_rate: Option<u32>,
    /// Messages one source may send at once before the rate applies [default: 400].
    #[arg(long, env = "PINBRIDGE_MESSAGE_BURST", value_name = "N")]
    pub message_burst: Option<u32>,
    /// Calls up at once, all sources together; more are answered 503 [default: 1000].
    #[arg(long, env = "PINBRIDGE_MAX_CALLS", value_name = "N")]
    pub max_calls: Option<usize>,
    /// Retry-After of a flood or busy 503, and how long a flooding source hears nothing
    /// more after one [default: 5].
    #[arg(long, env = "PINBRIDGE_RETRY_AFTER", value_name = "SECONDS")]
    pub retry_after: Option<u64>,
    /// Open SIP TCP connections per source IP [default: 16].
    #[arg(long, env = "PINBRIDGE_TCP_PER_SOURCE", value_name = "N")]
    pub tcp_per_source: Option<usize>,
    /// Seconds a SIP TCP connection may stay silent before it is closed [default: 300].
    #[arg(long, env = "PINBRIDGE_TCP_IDLE_TIMEOUT", value_name = "SECONDS")]
    pub tcp_idle_timeout: Option<u64>,
    /// Seconds one SIP message may take to arrive over TCP once begun [default: 10].
    #[arg(long, env = "PINBRIDGE_TCP_MESSAGE_TIMEOUT", value_name = "SECONDS")]
    pub tcp_message_timeout: Option<u64>,
}

/// The flood limits from flags/environment over the TOML file over [`Limits::default`].
fn limits_config(a: &LimitArgs, f: &FileConfig) -> Result<Limits, ConfigError> {
    let d = Limits::default();
    let invalid = |key: &'static str, message: String| ConfigError::Invalid { key, message };
    let rate = |flag: Option<u32>,
                file: Option<u32>,
                default: RateLimit,
                burst_flag: Option<u32>,
                burst_file: Option<u32>| {
        let per_second = flag.or(file).unwrap_or(default.per_second);
        let burst = burst_flag
            .or(burst_file)
            .unwrap_or(default.burst.max(per_second));
        RateLimit { per_second, burst }
    };
    let invites = rate(
        a.invite_rate,
        f.invite_rate,
        d.invites,
        a.invite_burst,
        f.invite_burst,
    );
    let messages = rate(
        a.message_rate,
        f.message_rate,
        d.messages,
        a.message_burst,
        f.message_burst,
    );
    for (key, r) in [("invite_burst", invites), ("message_burst", messages)] {
        if !r.is_unlimited() && r.burst == 0 {
            return Err(invalid(key, "must be at least 1".into()));
        }
    }
    let max_calls = a.max_calls.or(f.max_calls).unwrap_or(d.max_calls);
    if max_calls == 0 {
        return Err(invalid("max_calls", "must be at least 1".into()));
    }
    let tcp_per_source = a
        .tcp_per_source
        .or(f.tcp_per_source)
        .unwrap_or(d.tcp_per_source);
    if tcp_per_source == 0 {
        return Err(invalid("tcp_per_source", "must be at least 1".into()));
    }
    let secs =
        |key: &'static str, flag: Option<u64>, file: Option<u64>, default: Duration| match flag
            .or(file)
        {
            Some(0) => Err(invalid(key, "must be at least 1 second".into())),
            Some(s) => Ok(Duration::from_secs(s)),
            None => Ok(default),
        };
    Ok(Limits {
        invites,
        messages,
        max_calls,
        retry_after: secs("retry_after", a.retry_after, f.retry_after, d.retry_after)?,
        tcp_per_source,
        tcp_idle_timeout: secs(
            "tcp_idle_timeout",
            a.tcp_idle_timeout,
            f.tcp_idle_timeout,
            d.tcp_idle_timeout,
        )?,
        tcp_message_timeout: secs(
            "tcp_message_timeout",
            a.tcp_message_timeout,
            f.tcp_message_timeout,
            d.tcp_message_timeout,
        )?,
    })
}

// ---- end flood limits ------------------------------------------------------------------------

// ---- email (issue 5) -------------------------------------------------------------------------

/// Flags of `pinbridge serve` for outgoing email. With no SMTP host, mail is written as
/// `.eml` files into the outbox folder.
#[derive(clap::Args, Debug, Default, Clone)]
#[command(next_help_heading = "Email")]
pub struct MailArgs {
    /// SMTP server to send email through [default: none; write .eml files to --outbox-dir].
    /// The password comes only from PINBRIDGE_SMTP_PASSWORD or the TOML key smtp_password.
    #[arg(long, env = "PINBRIDGE_SMTP_HOST", value_name = "HOST")]
    pub smtp_host: Option<String>,
    /// SMTP port [default: 587 with starttls, 465 with tls, 25 with none].
    #[arg(long, env = "PINBRIDGE_SMTP_PORT", value_name = "PORT")]
    pub smtp_port: Option<u16>,
    /// SMTP connection security: none, starttls (required upgrade) or tls (implicit TLS)
    /// [default: starttls].
    #[arg(long, env = "PINBRIDGE_SMTP_TLS", value_name = "MODE")]
    pub smtp_tls: Option<TlsMode>,
    /// SMTP AUTH user name; needs a password (PINBRIDGE_SMTP_PASSWORD or smtp_password).
    #[arg(long, env = "PINBRIDGE_SMTP_USERNAME", value_name = "USER")]
    pub smtp_username: Option<String>,
    /// From address of every email, `addr@domain` or `Name <addr@domain>`
    /// [default: pinbridge@localhost].
    #[arg(long, env = "PINBRIDGE_MAIL_FROM", value_name = "ADDRESS")]
    pub mail_from: Option<String>,
    /// Folder for .eml files when no SMTP host is set [default: <data-dir>/outbox].
    #[arg(long, env = "PINBRIDGE_OUTBOX_DIR", value_name = "DIR")]
    pub outbox_dir: Option<PathBuf>,
}

/// The email settings from flags/environment over the TOML file over defaults.
fn mail_config(
    args: &MailArgs,
    file: &FileConfig,
    data_dir: &Path,
) -> Result<MailConfig, ConfigError> {
    let invalid = |key: &'static str, message: String| ConfigError::Invalid { key, message };
    let from = args
        .mail_from
        .clone()
        .or_else(|| file.mail_from.clone())
        .unwrap_or_else(|| "pinbridge@localhost".to_string());
    notify::parse_from(&from).map_err(|e| invalid("mail_from", e.to_string()))?;
    let tls = match (args.smtp_tls, &file.smtp_tls) {
        (Some(t), _) => Some(t),
        (None, Some(s)) => Some(s.parse().map_err(|m| invalid("smtp_tls", m))?),
        (None, None) => None,
    };
    let port = args.smtp_port.or(file.smtp_port);
    let username = args
        .smtp_username
        .clone()
        .or_else(|| file.smtp_username.clone());
    let Some(host) = args.smtp_host.clone().or_else(|| file.smtp_host.clone()) else {
        let stray = [
            ("smtp_port", port.is_some()),
            ("smtp_tls", tls.is_some()),
            ("smtp_username", username.is_some()),
        ];
        if let Some((key, _)) = stray.into_iter().find(|(_, set)| *set) {
            return Err(invalid(key, "is set but smtp_host is not".into()));
        }
        let dir = args
            .outbox_dir
            .clone()
            .or_else(|| file.outbox_dir.clone())
            .unwrap_or_else(|| data_dir.join("outbox"));
        return Ok(MailConfig {
            from,
            transport: MailTransport::FileOutbox { dir },
        });
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            "smtp_host",
            format!("{host:?} is not a host name or address"),
        ));
    }
    let tls = tls.unwrap_or_default();
    let port = port.unwrap_or_else(|| tls.default_port());
    if port == 0 {
        return Err(invalid("smtp_port", "must be 1-65535, got 0".into()));
    }
    let password = std::env::var("PINBRIDGE_SMTP_PASSWORD")
        .ok()
        .or_else(|| file.smtp_password.clone());
    let credentials = match (username, password) {
        (Some(username), Some(password)) => Some(SmtpCredentials { username, password }),
        (None, None) => None,
        (Some(_), None) => {
            return Err(invalid(
                "smtp_username",
                "is set but there is no password: set PINBRIDGE_SMTP_PASSWORD or smtp_password"
                    .into(),
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                "smtp_password",
                "is set but smtp_username is not".into(),
            ));
        }
    };
    Ok(MailConfig {
        from,
        transport: MailTransport::Smtp(SmtpConfig {
            host,
            port,
            tls,
            credentials,
        }),
    })
}

/// An inclusive port range written `LOW-HIGH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRange(pub RangeInclusive<u16>);

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (lo, hi) = s.split_once('-').ok_or_else(|| {
            format!("port range {s:?} must be written LOW-HIGH, e.g. 20000-29999")
        })?;
        let parse = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|_| format!("port range {s:?}: {p:?} is not a port number (1-65535)"))
        };
        let (lo, hi) = (parse(lo)?, parse(hi)?);
        if lo == 0 || lo > hi {
            return Err(format!(
                "port range {s:?}: LOW must be at least 1 and not above HIGH"
            ));
        }
        if (lo..=hi).filter(|p| p % 2 == 0).count() == 0 {
            return Err(format!("port range {s:?} holds no even port for RTP"));
        }
        Ok(PortRange(lo..=hi))
    }
}

/// The server's validated settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub sip_listen: SocketAddr,
    pub rtp_ports: RangeInclusive<u16>,
    pub data_dir: PathBuf,
    pub audio_dir: PathBuf,
    pub log_level: String,
    /// Address advertised in Contact and SDP.
    pub advertise_ip: IpAddr,
    pub rtp_timeout: Duration,
    pub media_workers: usize,
    pub shutdown_grace: Duration,
    pub dtmf_mode: DtmfMode,
    /// The caller's journey: digit timeouts, tries, lobby reminders.
    pub ivr: IvrConfig,
    /// Meeting rules: size, tones, what happens when the organizer leaves.
    pub bridge: BridgeConfig,
    /// The server's PIN pepper, if configured (env `PINBRIDGE_PIN_PEPPER` or TOML
    /// `pin_pepper`; deliberately no flag, which `ps` would show). Else `<data_dir>/pepper`.
    pub pin_pepper: Option<String>,
    /// Outgoing email: SMTP, or the outbox folder.
    pub mail: MailConfig,
    // ---- admin HTTP API (issue 5) ----
    /// Where the admin HTTP API listens.
    pub http_listen: SocketAddr,
    /// The admin API's bearer token, if configured (env `PINBRIDGE_ADMIN_TOKEN` or TOML
    /// `admin_token`; no flag). Else `<data_dir>/admin-token`, generated on first run, and
    /// then only a loopback `http_listen` is allowed.
    pub admin_token: Option<String>,
    /// Base of the links in sign-in emails; `None`: `http://` and the bound HTTP address.
    pub public_url: Option<String>,
    // ---- flood limits (issue 7) ----
    pub limits: Limits,
    /// Per-conference lockout and per-source brute-force limits (issue 7).
    pub lockout: LockoutPolicy,
    /// Signalling addresses whose callers are keyed by number, not address.
    pub trusted_trunks: Vec<IpAddr>,
}

/// The admin API's default address: loopback, so a fresh install exposes nothing.
pub const DEFAULT_HTTP_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);
/// A configured admin token shorter than this is refused: it would be guessable.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// A setting that cannot work, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// The TOML file's shape; unknown keys are errors so typos don't pass silently.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    sip_listen: Option<String>,
    rtp_ports: Option<String>,
    data_dir: Option<PathBuf>,
    audio_dir: Option<PathBuf>,
    log_level: Option<String>,
    advertise_ip: Option<String>,
    rtp_timeout: Option<u64>,
    media_workers: Option<usize>,
    shutdown_grace: Option<u64>,
    dtmf_mode: Option<DtmfMode>,
    first_digit_timeout: Option<u64>,
    inter_digit_timeout: Option<u64>,
    lobby_reminder: Option<u64>,
    max_participants: Option<usize>,
    organizer_leave_grace: Option<u64>,
    join_tones: Option<bool>,
    pin_pepper: Option<String>,
    // email (issue 5); smtp_password has no flag (`ps` would show it)
    smtp_host: Option<String>,
    smtp_port: Option<u16>,
    smtp_tls: Option<String>,
    smtp_username: Option<String>,
    smtp_password: Option<String>,
    mail_from: Option<String>,
    outbox_dir: Option<PathBuf>,
    http_listen: Option<String>,
    admin_token: Option<String>,
    public_url: Option<String>,
    // ---- flood limits (issue 7): the keys of `LimitArgs`
    invite_rate: Option<u32>,
    invite_burst: Option<u32>,
    message_rate: Option<u32>,
    message_burst: Option<u32>,
    max_calls: Option<usize>,
    retry_after: Option<u64>,
    tcp_per_source: Option<usize>,
    tcp_idle_timeout: Option<u64>,
    tcp_message_timeout: Option<u64>,
    // ---- per-source brute-force limits (issue 7): the keys of `BruteForceArgs`
    source_pin_failures: Option<u32>,
    source_id_failures: Option<u32>,
    source_window: Option<u64>,
    trusted_trunks: Option<Vec<String>>,
}

impl Config {
    /// Merges flags/environment (already combined by clap) over the TOML file over defaults,
    /// and validates the result.
    pub fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
                        path: path.clone(),
                        source,
                    })?;
                toml::from_str::<FileConfig>(&text).map_err(|e| ConfigError::ParseFile {
                    path: path.clone(),
                    message: e.to_string(),
                })?
            }
            None => FileConfig::default(),
        };
        let invalid = |key: &'static str, message: String| ConfigError::Invalid { key, message };
        let limits = limits_config(&args.limits, &file)?;
        let (lockout, trusted_trunks) = brute_force_config(&args.brute_force, &file)?;

        let sip_listen = match (args.sip_listen, &file.sip_listen) {
            (Some(a), _) => a,
            (None, Some(s)) => s
                .parse()
                .map_err(|_| invalid("sip_listen", format!("{s:?} is not an IP:PORT address")))?,
            (None, None) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 5060)),
        };
        let rtp_ports = match (&args.rtp_ports, &file.rtp_ports) {
            (Some(r), _) => r.0.clone(),
            (None, Some(s)) => {
                s.parse::<PortRange>()
                    .map_err(|m| invalid("rtp_ports", m))?
                    .0
            }
            (None, None) => 20000..=29999,
        };
        if rtp_ports.contains(&sip_listen.port()) {
            return Err(invalid(
                "rtp_ports",
                format!(
                    "range {}-{} contains the SIP port {}",
                    rtp_ports.start(),
                    rtp_ports.end(),
                    sip_listen.port()
                ),
            ));
        }
        let data_dir = args
            .data_dir
            .clone()
            .or_else(|| file.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from("./data"));
        let mail = mail_config(&args.mail, &file, &data_dir)?;
        let audio_dir = args
            .audio_dir
            .clone()
            .or(file.audio_dir)
            .unwrap_or_else(|| PathBuf::from("./audio"));
        check_dir("audio_dir", &audio_dir)?;
        let log_level = args
            .log_level
            .clone()
            .or(file.log_level)
            .or_else(|| std::env::var("RUST_LOG").ok())
            .unwrap_or_else(|| "info".to_string());
        tracing_subscriber::EnvFilter::try_new(&log_level)
            .map_err(|e| invalid("log_level", format!("{log_level:?}: {e}")))?;
        let advertise_ip = match (args.advertise_ip, &file.advertise_ip) {
            (Some(ip), _) => ip,
            (None, Some(s)) => s
                .parse()
                .map_err(|_| invalid("advertise_ip", format!("{s:?} is not an IP address")))?,
            (None, None) => default_advertise_ip(sip_listen.ip()),
        };
        if advertise_ip.is_unspecified() {
            return Err(invalid(
                "advertise_ip",
                "must be a concrete address, not 0.0.0.0 or ::".into(),
            ));
        }
        let rtp_timeout = args.rtp_timeout.or(file.rtp_timeout).unwrap_or(30);
        if rtp_timeout == 0 {
            return Err(invalid("rtp_timeout", "must be at least 1 second".into()));
        }
        let media_workers = args
            .media_workers
            .or(file.media_workers)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if !(1..=256).contains(&media_workers) {
            return Err(invalid(
                "media_workers",
                format!("{media_workers} is not in 1..=256"),
            ));
        }
        let shutdown_grace = args.shutdown_grace.or(file.shutdown_grace).unwrap_or(5);
        let secs = |flag: Option<u64>, toml: Option<u64>, default: Duration| {
            flag.or(toml).map_or(default, Duration::from_secs)
        };
        let defaults = IvrConfig::default();
        let ivr = IvrConfig {
            first_digit_timeout: secs(
                args.first_digit_timeout,
                file.first_digit_timeout,
                defaults.first_digit_timeout,
            ),
            inter_digit_timeout: secs(
                args.inter_digit_timeout,
                file.inter_digit_timeout,
                defaults.inter_digit_timeout,
            ),
            reminder_interval: secs(
                args.lobby_reminder,
                file.lobby_reminder,
                defaults.reminder_interval,
            ),
            ..defaults
        };
        ivr.validate().map_err(|e| invalid("ivr", e.to_string()))?;
        let max_participants = args
            .max_participants
            .or(file.max_participants)
            .unwrap_or(250);
        if max_participants < 2 {
            return Err(invalid(
                "max_participants",
                format!("{max_participants} is below 2"),
            ));
        }
        let bridge = BridgeConfig {
            max_participants,
            notify_tones: args.join_tones.or(file.join_tones).unwrap_or(true),
            organizer_leave: match args.organizer_leave_grace.or(file.organizer_leave_grace) {
                Some(s) => OrganizerLeavePolicy::EndAfter(Duration::from_secs(s)),
                None => OrganizerLeavePolicy::Continue,
            },
            // The IVR plays the lobby reminder (it knows when a caller is keying a PIN).
            lobby_reminder: None,
        };
        let (http_listen, admin_token) = admin_settings(
            args.http_listen,
            file.http_listen.as_deref(),
            std::env::var("PINBRIDGE_ADMIN_TOKEN").ok(),
            file.admin_token,
        )?;
        let public_url = match args.public_url.clone().or(file.public_url.clone()) {
            Some(url) => Some(public_url(&url)?),
            None => None,
        };
        Ok(Config {
            limits,
            lockout,
            trusted_trunks,
            http_listen,
            admin_token,
            public_url,
            sip_listen,
            rtp_ports,
            data_dir,
            audio_dir,
            log_level,
            advertise_ip,
            rtp_timeout: Duration::from_secs(rtp_timeout),
            media_workers,
            shutdown_grace: Duration::from_secs(shutdown_grace),
            dtmf_mode: args.dtmf_mode.or(file.dtmf_mode).unwrap_or_default(),
            ivr,
            bridge,
            pin_pepper: std::env::var("PINBRIDGE_PIN_PEPPER")
                .ok()
                .or(file.pin_pepper),
            mail,
        })
    }
}

/// The admin API's address and token (issue 5): a listener beyond loopback without a
/// configured token is refused, so the API is never reachable from the network with only a
/// token generated into a file nobody was told about.
/// `http://` or `https://`, a host, an optional port and path, no query: the base of the
/// links in sign-in emails. Trailing slashes are dropped.
fn public_url(url: &str) -> Result<String, ConfigError> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    let ok = rest.is_some_and(|r| {
        let host = r.split('/').next().unwrap_or("");
        !host.is_empty()
            && !r.contains(['?', '#', ' ', '"', '<', '>'])
            && r.chars().all(|c| c.is_ascii_graphic())
    });
    if !ok {
        return Err(ConfigError::Invalid {
            key: "public_url",
            message: format!(
                "{url:?} is not an http:// or https:// URL such as https://meet.example.com"
            ),
        });
    }
    Ok(url.trim_end_matches('/').to_string())
}

fn admin_settings(
    flag: Option<SocketAddr>,
    file: Option<&str>,
    env_token: Option<String>,
    file_token: Option<String>,
) -> Result<(SocketAddr, Option<String>), ConfigError> {
    let invalid = |key: &'static str, message: String| ConfigError::Invalid { key, message };
    let http_listen = match (flag, file) {
        (Some(a), _) => a,
        (None, Some(s)) => s
            .parse()
            .map_err(|_| invalid("http_listen", format!("{s:?} is not an IP:PORT address")))?,
        (None, None) => DEFAULT_HTTP_LISTEN,
    };
    let admin_token = env_token.filter(|t| !t.is_empty()).or(file_token);
    if let Some(token) = &admin_token
        && (token.len() < MIN_ADMIN_TOKEN_LEN || token.chars().any(|c| !c.is_ascii_graphic()))
    {
        return Err(invalid(
            "admin_token",
            format!(
                "must be at least {MIN_ADMIN_TOKEN_LEN} printable ASCII characters without spaces (got {})",
                token.len()
            ),
        ));
    }
    if !http_listen.ip().is_loopback() && admin_token.is_none() {
        return Err(invalid(
            "http_listen",
            format!(
                "{http_listen} is reachable beyond this machine, so the admin API needs a token: set PINBRIDGE_ADMIN_TOKEN or admin_token in the config file"
            ),
        ));
    }
    Ok((http_listen, admin_token))
}

fn check_dir(key: &'static str, dir: &Path) -> Result<(), ConfigError> {
    match std::fs::read_dir(dir) {
        Ok(_) => Ok(()),
        Err(e) => Err(ConfigError::Invalid {
            key,
            message: format!("cannot read directory {}: {e}", dir.display()),
        }),
    }
}

/// A wildcard listen address needs something routable to advertise. Connecting a UDP socket
/// sends nothing; it only asks the kernel which source address it would use.
fn default_advertise_ip(listen: IpAddr) -> IpAddr {
    if !listen.is_unspecified() {
        return listen;
    }
    let probe = || -> Option<IpAddr> {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
        s.connect((Ipv4Addr::new(192, 0, 2, 1), 9)).ok()?;
        let ip = s.local_addr().ok()?.ip();
        (!ip.is_unspecified()).then_some(ip)
    };
    probe().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ServeArgs {
        ServeArgs {
            audio_dir: Some(PathBuf::from(env!("CARGO_MANIFEST_DIR"))),
            ..ServeArgs::default()
        }
    }

    #[test]
    fn defaults() {
        let c = Config::load(&args()).unwrap();
        assert_eq!(c.sip_listen, "0.0.0.0:5060".parse().unwrap());
        assert_eq!(c.rtp_ports, 20000..=29999);
        assert_eq!(c.rtp_timeout, Duration::from_secs(30));
        assert!(!c.advertise_ip.is_unspecified());
    }

    #[test]
    fn port_ranges() {
        assert_eq!("100-200".parse::<PortRange>().unwrap().0, 100..=200);
        for bad in ["200-100", "0-10", "abc", "10", "1-70000", "3-3"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn file_values_and_flag_precedence() {
        let dir = std::env::temp_dir().join(format!("pinbridge-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(
            &file,
            "sip_listen = \"127.0.0.1:5080\"\nrtp_ports = \"30000-30100\"\nrtp_timeout = 7\ndtmf_mode = \"inband\"\n",
        )
        .unwrap();
        let mut a = args();
        a.config = Some(file.clone());
        let c = Config::load(&a).unwrap();
        assert_eq!(c.sip_listen, "127.0.0.1:5080".parse().unwrap());
        assert_eq!(c.rtp_ports, 30000..=30100);
        assert_eq!(c.dtmf_mode, DtmfMode::Inband);
        assert_eq!(c.advertise_ip, "127.0.0.1".parse::<IpAddr>().unwrap());
        a.rtp_timeout = Some(9);
        assert_eq!(
            Config::load(&a).unwrap().rtp_timeout,
            Duration::from_secs(9)
        );
        std::fs::write(&file, "sip_listn = \"x\"\n").unwrap();
        let err = Config::load(&a).unwrap_err().to_string();
        assert!(err.contains("sip_listn"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Loads with the TOML `text` and the flags `mail`.
    fn load_mail(text: &str, mail: MailArgs) -> Result<MailConfig, String> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, text).unwrap();
        let mut a = args();
        a.config = Some(file);
        a.data_dir = Some(PathBuf::from("/srv/pb"));
        a.mail = mail;
        Config::load(&a).map(|c| c.mail).map_err(|e| e.to_string())
    }

    #[test]
    fn mail_defaults_to_the_outbox_folder_in_the_data_dir() {
        let mail = load_mail("", MailArgs::default()).unwrap();
        assert_eq!(mail.from, "pinbridge@localhost");
        assert_eq!(
            mail.transport,
            MailTransport::FileOutbox {
                dir: PathBuf::from("/srv/pb/outbox")
            }
        );
        let flags = MailArgs {
            outbox_dir: Some("/tmp/out".into()),
            mail_from: Some("PIN Bridge <pins@example.com>".into()),
            ..MailArgs::default()
        };
        let mail = load_mail("outbox_dir = \"/ignored\"\n", flags).unwrap();
        assert_eq!(mail.from, "PIN Bridge <pins@example.com>");
        assert_eq!(
            mail.transport,
            MailTransport::FileOutbox {
                dir: PathBuf::from("/tmp/out")
            }
        );
    }

    #[test]
    fn smtp_settings_and_their_port_defaults() {
        let smtp = |text: &str, flags: MailArgs| match load_mail(text, flags).unwrap().transport {
            MailTransport::Smtp(s) => s,
            other => panic!("{other:?}"),
        };
        let s = smtp("smtp_host = \"mail.example.com\"\n", MailArgs::default());
        assert_eq!(
            (s.port, s.tls, s.credentials),
            (587, TlsMode::StartTls, None)
        );
        let s = smtp(
            "smtp_host = \"h\"\nsmtp_tls = \"tls\"\n",
            MailArgs::default(),
        );
        assert_eq!((s.port, s.tls), (465, TlsMode::Tls));
        let flags = MailArgs {
            smtp_tls: Some(TlsMode::None),
            smtp_port: Some(2525),
            smtp_username: Some("bridge".into()),
            ..MailArgs::default()
        };
        let s = smtp(
            "smtp_host = \"h\"\nsmtp_tls = \"tls\"\nsmtp_password = \"pw\"\n",
            flags,
        );
        assert_eq!((s.host.as_str(), s.port, s.tls), ("h", 2525, TlsMode::None));
        let c = s.credentials.unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("bridge", "pw"));
        let s = smtp(
            "smtp_host = \"h\"\nsmtp_tls = \"none\"\n",
            MailArgs::default(),
        );
        assert_eq!(s.port, 25);
    }

    #[test]
    fn bad_mail_settings_are_named() {
        for (text, key, words) in [
            (
                "smtp_host = \"h\"\nsmtp_tls = \"ssl\"\n",
                "smtp_tls",
                "none, starttls or tls",
            ),
            ("smtp_host = \"h\"\nsmtp_port = 0\n", "smtp_port", "1-65535"),
            (
                "mail_from = \"not an address\"\n",
                "mail_from",
                "not an address",
            ),
            ("smtp_host = \"\"\n", "smtp_host", "not a host"),
            ("smtp_port = 25\n", "smtp_port", "smtp_host is not"),
            (
                "smtp_host = \"h\"\nsmtp_username = \"u\"\n",
                "smtp_username",
                "PINBRIDGE_SMTP_PASSWORD",
            ),
            (
                "smtp_host = \"h\"\nsmtp_password = \"p\"\n",
                "smtp_password",
                "smtp_username",
            ),
        ] {
            let err = load_mail(text, MailArgs::default()).unwrap_err();
            assert!(
                err.starts_with(key) && err.contains(words),
                "{text:?}: {err}"
            );
        }
    }

    #[test]
    fn clear_errors() {
        let mut a = args();
        a.audio_dir = Some(PathBuf::from("/nonexistent/audio"));
        let err = Config::load(&a).unwrap_err().to_string();
        assert!(
            err.contains("audio_dir") && err.contains("/nonexistent/audio"),
            "{err}"
        );
        let mut a = args();
        a.sip_listen = Some("127.0.0.1:20000".parse().unwrap());
        assert!(
            Config::load(&a)
                .unwrap_err()
                .to_string()
                .contains("SIP port")
        );
        let mut a = args();
        a.log_level = Some("nonsense=[".into());
        assert!(
            Config::load(&a)
                .unwrap_err()
                .to_string()
                .contains("log_level")
        );
    }

    // ---- flood limits (issue 7) ----

    #[test]
    fn flood_limits_default_and_come_from_toml_and_flags() {
        let c = Config::load(&args()).unwrap();
        assert_eq!(c.limits, Limits::default());
        assert_eq!(
            c.limits.invites,
            RateLimit {
                per_second: 10,
                burst: 40
            }
        );
        assert_eq!(c.limits.max_calls, 1000);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "invite_rate = 2\nmax_calls = 7\ntcp_per_source = 3\ntcp_idle_timeout = 60\nmessage_rate = 0\n",
        )
        .unwrap();
        let mut a = args();
        a.config = Some(file.clone());
        a.limits.invite_burst = Some(4);
        a.limits.max_calls = Some(9);
        let l = Config::load(&a).unwrap().limits;
        assert_eq!(
            l.invites,
            RateLimit {
                per_second: 2,
                burst: 4
            }
        );
        assert_eq!(l.max_calls, 9, "the flag wins over the file");
        assert_eq!(l.tcp_per_source, 3);
        assert_eq!(l.tcp_idle_timeout, Duration::from_secs(60));
        assert!(l.messages.is_unlimited());
        std::fs::write(&file, "max_calls = 0\n").unwrap();
        assert_eq!(Config::load(&a).unwrap().limits.max_calls, 9);
        a.limits.max_calls = None;
        let err = Config::load(&a).unwrap_err().to_string();
        assert!(err.contains("max_calls"), "{err}");
        std::fs::write(&file, "tcp_message_timeout = 0\n").unwrap();
        let err = Config::load(&a).unwrap_err().to_string();
        assert!(err.contains("tcp_message_timeout"), "{err}");
    }

    // ---- admin HTTP API (issue 5) ----

    #[test]
    fn admin_listener_defaults_to_loopback_and_needs_a_token_beyond_it() {
        let loopback = admin_settings(None, None, None, None).unwrap();
        assert_eq!(loopback, (DEFAULT_HTTP_LISTEN, None));
        let wide: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let err = admin_settings(Some(wide), None, None, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("http_listen") && err.contains("PINBRIDGE_ADMIN_TOKEN"),
            "{err}"
        );
        let token = "0123456789abcdef-token".to_string();
        let ok = admin_settings(Some(wide), None, Some(token.clone()), None).unwrap();
        assert_eq!(ok, (wide, Some(token.clone())));
        // The file's address is used without a flag; the environment's token wins.
        let (addr, t) = admin_settings(
            None,
            Some("[::1]:9000"),
            Some(token.clone()),
            Some("file-token-0123456789".into()),
        )
        .unwrap();
        assert_eq!(addr, "[::1]:9000".parse().unwrap());
        assert_eq!(t, Some(token));
        let err = admin_settings(None, None, Some("short".into()), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("admin_token") && err.contains("16"), "{err}");
        assert!(admin_settings(None, Some("nope"), None, None).is_err());
    }

    #[test]
    fn admin_keys_are_read_from_the_toml_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "http_listen = \"0.0.0.0:8081\"\nadmin_token = \"a-file-token-0123456789\"\n",
        )
        .unwrap();
        let mut a = args();
        a.config = Some(file);
        let c = Config::load(&a).unwrap();
        assert_eq!(c.http_listen, "0.0.0.0:8081".parse().unwrap());
        // The environment may hold a token of its own; the file's is used only without one.
        if std::env::var_os("PINBRIDGE_ADMIN_TOKEN").is_none() {
            assert_eq!(c.admin_token.as_deref(), Some("a-file-token-0123456789"));
        }
        a.http_listen = Some("127.0.0.1:0".parse().unwrap());
        assert_eq!(
            Config::load(&a).unwrap().http_listen,
            "127.0.0.1:0".parse().unwrap()
        );
    }
}
