//! The `pinbridge` command line: thin wrappers over the library.

use std::io::{IsTerminal, Write};
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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
    }
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
