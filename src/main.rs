//! The `pinbridge` command line: thin wrappers over the library.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use clap::{Parser, Subcommand};

use pinbridge::admin::api::AdminToken;
use pinbridge::audio::Assets;
use pinbridge::config::{Config, ServeArgs};
use pinbridge::descriptors;
use pinbridge::pin::{self, Pepper};
use pinbridge::store::{self, AuditEntry, NewUser, Store, UserId};

/// pinbridge — a SIP/RTP dial-in meeting bridge.
///
/// Callers dial in over SIP (UDP or TCP), hear prompts, enter a conference ID and the
/// organizer's PIN with their keypad, wait in a lobby with hold music, and meet.
#[derive(Parser, Debug)]
#[command(name = "pinbridge", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server: SIP on UDP and TCP, RTP on the configured port range.
    ///
    /// Every flag can also be set with its PINBRIDGE_* environment variable or in the TOML
    /// file given with --config (key = flag name with underscores). Flags win over the
    /// environment, which wins over the file. When the server is ready it prints one line on
    /// stdout: `pinbridge ready sip=IP:PORT http=IP:PORT`; logs go to stderr.
    Serve(Box<ServeArgs>),
    /// Administration through the running server's admin HTTP API: users, PINs, conference
    /// IDs, lockouts, tenant settings, audit log, emails.
    Admin(pinbridge::admin::client::AdminArgs),
    /// Organizers, straight in the store: only while the server is not running (sled allows
    /// one process).
    Users(UsersArgs),
    /// DTMF diagnostics.
    #[command(subcommand)]
    Dtmf(DtmfCommand),
    /// Load generator: places calls into meetings and lobbies over SIP/RTP and reports setup
    /// latency, RTP loss, jitter and gaps, and whether every caller heard what it should.
    ///
    /// Progress goes to stderr every second; the report (a table, or JSON with --json) to
    /// stdout. A run with failed calls still exits 0: read `quality.pass` in the report.
    Loadgen(Box<pinbridge::loadgen::LoadgenArgs>),
}

#[derive(Subcommand, Debug)]
enum DtmfCommand {
    /// Find the DTMF digits in an audio file with the server's in-band detector.
    ///
    /// Reads any format the server can decode (WAV, FLAC, OGG/Vorbis, MP3…), at any rate and
    /// channel count (it is resampled to 8 kHz mono), and prints each digit with its start
    /// time in milliseconds.
    Detect {
        /// The audio file.
        file: std::path::PathBuf,
        /// Print a JSON array of {"digit", "start_ms", "duration_ms"} instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    return_large_blocks_to_the_system();
    let cli = Cli::parse();
    // One clear line (with its causes) and a non-zero exit, never a backtrace.
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pinbridge: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Makes glibc serve every allocation of 1 MiB or more with its own mmap, unmapped again when
/// freed. By default glibc raises that threshold to the size of the first such block freed
/// (up to 32 MiB) and from then on keeps blocks that size in the freeing thread's arena: each
/// 19 MiB argon2 working memory (a PIN hashed for the admin API, on whichever blocking
/// thread) stayed in the process, one per arena — 300 MB of a server that needs 20 (seen in
/// `/proc/PID/status` after creating 16 users). A fixed threshold turns the dynamic one off.
fn return_large_blocks_to_the_system() {
    const THRESHOLD: libc::c_int = 1 << 20;
    // SAFETY: mallopt only sets a parameter of glibc's allocator; it is called first thing in
    // main, before this program starts a thread or allocates a large block.
    let set = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD) };
    debug_assert_eq!(set, 1, "glibc accepts a 1 MiB mmap threshold");
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Users(args) => users(args),
        Command::Admin(args) => {
            let mut out = std::io::stdout().lock();
            pinbridge::admin::client::run(args, &mut out)?;
            Ok(())
        }
        Command::Dtmf(DtmfCommand::Detect { file, json }) => dtmf_detect(&file, json),
        Command::Loadgen(args) => {
            let mut out = std::io::stdout().lock();
            pinbridge::loadgen::run_cli(*args, &mut out)?;
            Ok(())
        }
    }
}

fn dtmf_detect(file: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let digits = pinbridge::media::dtmf::file::detect_file(file)
        .with_context(|| format!("cannot detect DTMF in {}", file.display()))?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(&digits)?)?;
    } else {
        for d in &digits {
            writeln!(
                out,
                "{}\t{} ms\t({} ms long)",
                d.key, d.start_ms, d.duration_ms
            )?;
        }
    }
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = Config::load(&args).context("invalid configuration")?;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cfg.log_level))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    reserve_descriptors(&cfg);
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data directory {}", cfg.data_dir.display()))?;
    let assets = Assets::load(&cfg.audio_dir)
        .with_context(|| format!("loading audio assets from {}", cfg.audio_dir.display()))?;
    let store = Store::open(&cfg.data_dir)?.with_lockout_policy(cfg.lockout)?;
    tracing::info!(policy = ?cfg.lockout, trusted_trunks = ?cfg.trusted_trunks, "brute-force limits");
    let (pepper, source) = Pepper::load(cfg.pin_pepper.as_deref(), &cfg.data_dir)?;
    tracing::info!(?source, "PIN pepper loaded");
    store.check_pepper(&pepper)?;
    if args.demo {
        seed_demo(&store, &pepper)?;
    }
    // Admin API token (issue 5): configured, or generated into <data_dir>/admin-token.
    let (admin_token, created) =
        AdminToken::load_or_create(cfg.admin_token.as_deref(), &cfg.data_dir)
            .with_context(|| format!("admin token in {}", cfg.data_dir.display()))?;
    if created {
        tracing::info!(
            path = %cfg.data_dir.join(AdminToken::FILE_NAME).display(),
            "generated the admin API token; `pinbridge admin` on this machine reads it from there"
        );
    }
    let services = pinbridge::server::Services {
        store: Arc::new(store),
        pepper: Arc::new(pepper),
        mail_wake: Arc::default(),
        admin_token: Arc::new(admin_token),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    // A task on the runtime's workers, not `block_on`'s own future: the workers drive the
    // sockets, so a worker that sees an INVITE arrive polls the signalling task itself instead
    // of waking the main thread to do it. INVITE→200 p99 at 1000 setups/s (two SIPp, 3 s
    // calls) went from 16–19 ms to 6.3–7.5 ms, at 500/s from 4.3 to 1.2 ms
    // (`bench/setup-rate.sh`).
    let server = runtime.spawn(async move {
        pinbridge::server::run(
            cfg,
            Arc::new(assets),
            services,
            |ready| {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{ready}");
                let _ = out.flush();
            },
            pinbridge::server::shutdown_signal(),
        )
        .await
    });
    runtime
        .block_on(server)
        .context("the server task panicked")??;
    Ok(())
}

/// One descriptor per call the configuration allows (`--max-calls`, at most one per RTP
/// port pair) plus signalling's, before any thread starts: see [`descriptors`].
fn reserve_descriptors(cfg: &Config) {
    let rtp_sessions = pinbridge::media::rtp::PortPool::new(cfg.rtp_ports.clone())
        .map_or(usize::MAX, |pool| pool.capacity());
    let wanted = descriptors::for_calls(cfg.limits.max_calls.min(rtp_sessions));
    match descriptors::reserve(wanted) {
        Ok(r) if r.is_short() => tracing::warn!(
            wanted = r.wanted,
            hard_limit = r.limit,
            "the descriptor limit (ulimit -Hn) is below what the configured calls need; calls beyond it are refused with 503"
        ),
        Ok(r) => tracing::info!(
            descriptors = r.table,
            soft_limit_before = r.limit_before,
            soft_limit = r.limit,
            "descriptor table reserved"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "could not reserve the descriptor table; call setup may stall while it grows")
        }
    }
}

/// `serve --demo`: on an empty store, one organizer whose conference ID and PIN are printed
/// once (the PIN never again); on a store with users, nothing.
fn seed_demo(store: &Store, pepper: &Pepper) -> anyhow::Result<()> {
    if !store.users()?.is_empty() {
        eprintln!("--demo: the store already has users; nothing seeded");
        return Ok(());
    }
    let new = NewUser {
        id: UserId("demo@pinbridge.invalid".into()),
        display_name: "Demo Organizer".into(),
        email: "demo@pinbridge.invalid".into(),
        requires_pin: Some(true),
    };
    let (user, pin) = store.create_organizer(new, pepper)?;
    let entry = AuditEntry::new(
        SystemTime::now(),
        "serve --demo",
        store::audit::USER_CREATE,
        user.id.to_string(),
        format!("created; conference id {}", user.conference_id),
        None,
    );
    store.append_audit(&entry)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "demo organizer: conference id {} pin {}",
        user.conference_id,
        pin.expose()
    )?;
    out.flush()?;
    Ok(())
}

#[derive(clap::Args, Debug)]
struct UsersArgs {
    #[command(subcommand)]
    command: UsersCommand,
}

#[derive(Subcommand, Debug)]
enum UsersCommand {
    /// Create an organizer: prints their new conference ID and PIN, once.
    ///
    /// The PIN is hashed with the pepper from PINBRIDGE_PIN_PEPPER, or else DIR/pepper
    /// (created on first use): the server must use the same one.
    Add(UsersAddArgs),
    /// List the organizers (PINs are always shown masked).
    List(StoreDirArg),
}

#[derive(clap::Args, Debug)]
struct UsersAddArgs {
    /// User id, e.g. amos.marble@contoso.com.
    id: String,
    /// Primary email address.
    #[arg(long)]
    email: String,
    /// Display name [default: the id].
    #[arg(long)]
    name: Option<String>,
    /// The organizer does not need a PIN to start their meetings: the first caller who is
    /// not anonymous starts them [default: the tenant setting, which requires one].
    #[arg(long)]
    no_pin_required: bool,
    #[command(flatten)]
    store: StoreDirArg,
}

#[derive(clap::Args, Debug)]
struct StoreDirArg {
    /// Directory of the store, as given to `pinbridge serve`.
    #[arg(
        long,
        env = "PINBRIDGE_DATA_DIR",
        value_name = "DIR",
        default_value = "./data"
    )]
    data_dir: PathBuf,
}

fn users(args: UsersArgs) -> anyhow::Result<()> {
    match args.command {
        UsersCommand::Add(args) => users_add(args),
        UsersCommand::List(args) => users_list(args),
    }
}

fn users_add(args: UsersAddArgs) -> anyhow::Result<()> {
    let data_dir = &args.store.data_dir;
    let store = Store::open(data_dir)?;
    let (pepper, _) = Pepper::load(None, data_dir)?;
    let new = NewUser {
        id: UserId(args.id.clone()),
        display_name: args.name.unwrap_or_else(|| args.id.clone()),
        email: args.email,
        requires_pin: args.no_pin_required.then_some(false),
    };
    let created = store.create_organizer(new, &pepper);
    let outcome = match &created {
        Ok((user, _)) => format!("created; conference id {}", user.conference_id),
        Err(e) => format!("refused: {e}"),
    };
    let entry = AuditEntry::new(
        SystemTime::now(),
        "cli",
        store::audit::USER_CREATE,
        args.id,
        outcome,
        None,
    );
    store.append_audit(&entry)?;
    let (user, pin) = created?;
    // The only place a PIN is printed: once, to whoever created the organizer.
    let mut out = std::io::stdout().lock();
    writeln!(out, "conference id: {}", user.conference_id)?;
    writeln!(out, "pin: {}", pin.expose())?;
    out.flush()?;
    eprintln!(
        "organizer {} created; the PIN is not shown again (reset it to get a new one)",
        user.id
    );
    Ok(())
}

fn users_list(args: StoreDirArg) -> anyhow::Result<()> {
    let store = Store::open(&args.data_dir)?;
    let users = store.users()?;
    if users.is_empty() {
        eprintln!("no users in {}", args.data_dir.display());
        return Ok(());
    }
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_string();
    let mut rows = vec![
        [
            "ID",
            "NAME",
            "EMAIL",
            "CONFERENCE ID",
            "ENABLED",
            "PIN REQUIRED",
            "PIN",
            "PIN LENGTH",
            "PIN SET",
        ]
        .map(String::from),
    ];
    for u in users {
        rows.push([
            u.id.to_string(),
            u.display_name,
            u.email,
            u.conference_id.to_string(),
            yes_no(u.enabled),
            yes_no(u.requires_pin),
            if u.pin_hash.is_some() { pin::MASK } else { "-" }.to_string(),
            u.pin_len.map_or("-".to_string(), |n| n.to_string()),
            u.pin_set_at.map_or("-".to_string(), store::format_utc),
        ]);
    }
    let mut widths = [0usize; 9];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        writeln!(out, "{}", line.join("  ").trim_end())?;
    }
    Ok(())
}
