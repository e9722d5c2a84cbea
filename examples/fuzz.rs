//! Long fuzz runs on the stable toolchain (see `pinbridge::fuzz`):
//!
//! ```sh
//! cargo run --release --example fuzz -- sip 10000000        # one target, 10 M inputs
//! cargo run --release --example fuzz -- all 1000000 42      # every target, seed 42
//! ```
//!
//! Targets: sip, dialog, sdp, rtp, rfc4733, info, all. The SIP targets also mutate the
//! RFC 4475/5118 torture corpus when `../shared/sip-torture` (or `PINBRIDGE_TORTURE_DIR`)
//! exists. Prints one report line per target (messages tried, crashes, oracle failures, and
//! the first offending input); exits 1 if anything crashed or failed.

use std::path::PathBuf;
use std::process::ExitCode;

use pinbridge::fuzz::{self, Target};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: fuzz TARGET|all COUNT [SEED]";
    let (Some(which), Some(count)) = (args.first(), args.get(1).and_then(|c| c.parse().ok()))
    else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    let seed: u64 = match args.get(2).map(|s| s.parse()) {
        None => 1,
        Some(Ok(s)) => s,
        Some(Err(_)) => {
            eprintln!("{usage}");
            return ExitCode::from(2);
        }
    };
    let targets: Vec<Target> = if which == "all" {
        Target::ALL.to_vec()
    } else {
        match Target::from_name(which) {
            Some(t) => vec![t],
            None => {
                eprintln!("unknown target {which}; {usage}");
                return ExitCode::from(2);
            }
        }
    };
    let dir = std::env::var_os("PINBRIDGE_TORTURE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/sip-torture"));
    let corpus = fuzz::corpus_seeds(&dir);
    // Panics are caught and counted per input; keep their messages off the terminal.
    std::panic::set_hook(Box::new(|_| {}));
    let mut bad = false;
    for t in targets {
        let extra: &[Vec<u8>] = if t == Target::Sip { &corpus } else { &[] };
        let started = std::time::Instant::now();
        let report = fuzz::run(t, extra, seed, count);
        println!("{report} ({:.1} s)", started.elapsed().as_secs_f64());
        bad |= report.crashes > 0 || report.failures > 0;
    }
    if bad {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
