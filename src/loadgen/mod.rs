//! `pinbridge loadgen`: a load generator with quality measurement, written on our own SIP and
//! RTP code (issue 6).
//!
//! It places `--calls` calls at `--rate` per second into `--meetings` meetings (plus a
//! `--lobby-fraction` of callers in conferences whose organizer never comes), dials each
//! conference ID directly, lets one caller per meeting key `*`, the PIN and `#`, sends 20 ms
//! RTP per caller (its own tone, or with `--audio-file` a looped recording), receives
//! everything the server sends and reports setup latency, RTP loss, jitter and gaps, and
//! whether every caller heard what it should (see [`listen`]: only tone mode can check that
//! meeting callers do not hear themselves).
//!
//! Layout: [`uac`] (one call's SIP, sans-IO), [`stats`] (RFC 3550 receive statistics),
//! [`arrival`] (kernel receive timestamps, so our own scheduling is not measured as jitter),
//! [`listen`] (tones sent, what was heard), [`plan`] (who calls where), [`report`] (table and
//! JSON), [`run`] (the tokio layer). This file is the command line and the organizers.

pub mod arrival;
pub mod listen;
pub mod plan;
pub mod report;
pub mod run;
pub mod stats;
pub mod uac;

use std::io::{IsTerminal, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use serde_json::{Value, json};

use crate::admin::client::{Client, ClientError};
use crate::audio::{Assets, AudioError, decode_to_pcm8k};

use listen::{FileFrames, KnownFrames, SendAudio};
use plan::{Conference, Plan};
use report::Report;
use run::{Progress, RunConfig};

/// `pinbridge loadgen` options.
#[derive(Args, Debug, Clone)]
pub struct LoadgenArgs {
    /// The server's SIP address (UDP).
    #[arg(long, default_value = "127.0.0.1:5060")]
    pub server: SocketAddr,
    /// Calls to place.
    #[arg(long, default_value_t = 10)]
    pub calls: usize,
    /// New calls per second.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Seconds each call stays up after it is answered.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Meetings the non-lobby callers are spread over (one organizer each).
    #[arg(long, default_value_t = 1)]
    pub meetings: usize,
    /// Share of the calls that wait in lobbies whose organizer never comes (0–1).
    #[arg(long, default_value_t = 0.0)]
    pub lobby_fraction: f64,
    /// Conferences to call, one `conference_id;pin` per line (meetings first, then lobby
    /// rooms; `#` comments, blank lines and a SIPp `SEQUENTIAL` line are skipped).
    #[arg(long, value_name = "FILE", conflicts_with = "admin_url")]
    pub organizers_file: Option<PathBuf>,
    /// Create the organizers through the server's admin API at this URL instead.
    #[arg(long, value_name = "URL")]
    pub admin_url: Option<String>,
    /// Admin bearer token [default: DIR/admin-token].
    #[arg(long, env = "PINBRIDGE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// The server's data directory, where its generated admin token is.
    #[arg(long, value_name = "DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Write the organizers created through the admin API to FILE (`conference_id;pin`
    /// lines, for --organizers-file in later runs).
    #[arg(long, value_name = "FILE")]
    pub organizers_out: Option<PathBuf>,
    /// Local address for SIP and RTP.
    #[arg(long, default_value = "127.0.0.1")]
    pub local_ip: IpAddr,
    /// Local RTP ports (even ports of LOW-HIGH) [default: any free port].
    #[arg(long, value_name = "LOW-HIGH", value_parser = parse_range)]
    pub rtp_ports: Option<(u16, u16)>,
    /// The server's sounds, to recognise its hold music and prompts.
    #[arg(long, value_name = "DIR", default_value = "./audio")]
    pub audio_dir: PathBuf,
    /// Seconds from the organizer's 200 OK to its `*` (after the greeting).
    #[arg(long, default_value_t = 2.5)]
    pub organizer_delay: f64,
    /// Send this recording (any format the server's sounds may be in: FLAC, WAV, Ogg, …),
    /// looped, instead of a tone per caller. Meeting callers are then checked for hearing the
    /// others' audio only: whether they hear themselves (N−1) needs tone mode.
    #[arg(long, value_name = "FILE")]
    pub audio_file: Option<PathBuf>,
    /// Tasks sending RTP (each sends one packet per call every 20 ms).
    #[arg(long, default_value_t = 2)]
    pub senders: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
}

fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s.split_once('-').ok_or("want LOW-HIGH")?;
    let a: u16 = a.trim().parse().map_err(|e| format!("{a}: {e}"))?;
    let b: u16 = b.trim().parse().map_err(|e| format!("{b}: {e}"))?;
    if a > b {
        return Err(format!("{a} is above {b}"));
    }
    Ok((a, b))
}

/// Why a load run could not be done (a run with failed calls is not an error: it is reported).
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("{0}")]
    Plan(String),
    #[error("organizers file {path}: {reason}")]
    OrganizersFile { path: String, reason: String },
    #[error("the plan needs {need} conferences but {have} were given")]
    TooFewConferences { need: usize, have: usize },
    #[error("give --organizers-file or --admin-url")]
    NoOrganizers,
    #[error("creating organizers: {0}")]
    Admin(#[from] ClientError),
    #[error("loading the server's sounds: {0}")]
    Audio(#[from] AudioError),
    #[error("--audio-file: {0}")]
    AudioFile(AudioError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// Runs `pinbridge loadgen`: prints progress on stderr and the report on `out`.
pub fn run_cli(args: LoadgenArgs, out: &mut impl Write) -> Result<Report, LoadgenError> {
    let positive = |x: f64| x.is_finite() && x > 0.0;
    let not_negative = |x: f64| x.is_finite() && x >= 0.0;
    if !positive(args.rate) || !not_negative(args.duration) || !not_negative(args.organizer_delay) {
        return Err(LoadgenError::Plan(
            "--rate must be above 0, --duration and --organizer-delay not negative".into(),
        ));
    }
    let mut plan =
        Plan::new(args.calls, args.meetings, args.lobby_fraction).map_err(LoadgenError::Plan)?;
    // Decoded before any organizer is created, so a bad file costs nothing.
    let audio = match &args.audio_file {
        None => SendAudio::Tones,
        Some(path) => {
            let pcm = decode_to_pcm8k(path).map_err(LoadgenError::AudioFile)?;
            plan = plan.with_file_audio();
            SendAudio::File {
                path: path.display().to_string(),
                frames: Arc::new(FileFrames::from_pcm(&pcm)),
            }
        }
    };
    let conferences = organizers(&args, &plan)?;
    let io = |what: &str| {
        let what = what.to_string();
        move |source| LoadgenError::Io { what, source }
    };
    let assets = Assets::load(&args.audio_dir)?;
    let known = Arc::new(KnownFrames::from_assets(&assets));
    drop(assets);
    let cfg = RunConfig {
        server: args.server,
        local_ip: args.local_ip,
        rate: args.rate,
        duration: Duration::from_secs_f64(args.duration),
        organizer_delay: Duration::from_secs_f64(args.organizer_delay),
        rtp_ports: args.rtp_ports,
        senders: args.senders,
        audio,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(io("starting the tokio runtime"))?;
    let quiet = args.quiet;
    let tty = std::io::stderr().is_terminal();
    let report = runtime
        .block_on(run::run(cfg, plan, conferences, known, |p: &Progress| {
            if quiet {
                return;
            }
            let line = format!(
                "loadgen {:>4}s  started {}/{}  established {}  in meeting {}  failed {}  finished {}",
                p.elapsed.as_secs(),
                p.started,
                p.total,
                p.established,
                p.in_meeting,
                p.failed,
                p.finished
            );
            if tty {
                eprint!("\r{line}\x1b[K");
            } else {
                eprintln!("{line}");
            }
        }))
        .map_err(io("running the calls"))?;
    if tty && !quiet {
        eprintln!();
    }
    if args.json {
        let text = serde_json::to_string_pretty(&report).expect("the report serialises");
        writeln!(out, "{text}").map_err(io("writing the report"))?;
    } else {
        writeln!(out, "{report}").map_err(io("writing the report"))?;
    }
    Ok(report)
}

/// The conferences the plan calls: read from the file, or created through the admin API.
fn organizers(args: &LoadgenArgs, plan: &Plan) -> Result<Vec<Conference>, LoadgenError> {
    let need = plan.conferences();
    let conferences = if let Some(path) = &args.organizers_file {
        let text = std::fs::read_to_string(path).map_err(|e| LoadgenError::OrganizersFile {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        parse_organizers(&text).map_err(|reason| LoadgenError::OrganizersFile {
            path: path.display().to_string(),
            reason,
        })?
    } else if let Some(url) = &args.admin_url {
        let token =
            crate::admin::client::resolve_token(args.admin_token.as_deref(), &args.data_dir)?;
        let created = create_organizers(&Client::new(url, &token), need)?;
        if let Some(out) = &args.organizers_out {
            let text: String = created
                .iter()
                .map(|c| format!("{};{}\n", c.id, c.pin))
                .collect();
            std::fs::write(out, text).map_err(|source| LoadgenError::Io {
                what: format!("writing {}", out.display()),
                source,
            })?;
        }
        created
    } else if need == 0 {
        Vec::new()
    } else {
        return Err(LoadgenError::NoOrganizers);
    };
    if conferences.len() < need {
        return Err(LoadgenError::TooFewConferences {
            need,
            have: conferences.len(),
        });
    }
    Ok(conferences)
}

/// `conference_id;pin[;…]` lines.
pub fn parse_organizers(text: &str) -> Result<Vec<Conference>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.eq_ignore_ascii_case("SEQUENTIAL") {
            continue;
        }
        let mut fields = line.split(';').map(str::trim);
        let (Some(id), Some(pin)) = (fields.next(), fields.next()) else {
            return Err(format!("line {}: want conference_id;pin", n + 1));
        };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(id) || !digits(pin) {
            return Err(format!(
                "line {}: conference ID and PIN must be digits",
                n + 1
            ));
        }
        out.push(Conference {
            id: id.to_string(),
            pin: pin.to_string(),
        });
    }
    Ok(out)
}

/// Enables `n` new organizers (`POST /api/users`); their PINs are in the answers, once.
fn create_organizers(client: &Client, n: usize) -> Result<Vec<Conference>, LoadgenError> {
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut out = Vec::with_capacity(n);
    for k in 0..n {
        let id = format!("loadgen-{run}-{k}@loadgen.invalid");
        let body = json!({"id": id, "email": id, "display_name": format!("Loadgen {k}")});
        let v = client.request("POST", "/api/users", Some(&body))?;
        let field = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        let (Some(id), Some(pin)) = (field(&v["user"]["conference_id"]), field(&v["pin"])) else {
            return Err(
                ClientError::Response("no conference_id or pin in the answer".into()).into(),
            );
        };
        out.push(Conference { id, pin });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn organizers_file_lines() {
        let text = "SEQUENTIAL\n# id;pin\n1234567;40917;\n\n7654321 ; 11111\n";
        let c = parse_organizers(text).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!((c[1].id.as_str(), c[1].pin.as_str()), ("7654321", "11111"));
        assert!(
            parse_organizers("1234567\n")
                .unwrap_err()
                .contains("line 1")
        );
        assert!(parse_organizers("abc;1\n").is_err());
    }
}
