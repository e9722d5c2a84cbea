//! The `pinbridge` command line: thin wrappers over the library.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use pinbridge::audio::Assets;
use pinbridge::config::{Config, ServeArgs};

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
    /// stdout: `pinbridge ready sip=IP:PORT`; logs go to stderr.
    Serve(ServeArgs),
    /// DTMF diagnostics.
    #[command(subcommand)]
    Dtmf(DtmfCommand),
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

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Dtmf(DtmfCommand::Detect { file, json }) => dtmf_detect(&file, json),
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
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data directory {}", cfg.data_dir.display()))?;
    let assets = Assets::load(&cfg.audio_dir)
        .with_context(|| format!("loading audio assets from {}", cfg.audio_dir.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async move {
        pinbridge::server::run(
            cfg,
            Arc::new(assets),
            |addr| {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "pinbridge ready sip={addr}");
                let _ = out.flush();
            },
            pinbridge::server::shutdown_signal(),
        )
        .await
    })?;
    Ok(())
}
