//! SIPp (Debian `sip-tester`, 3.6) as a real peer: its built-in UAS for checking our own
//! client, and UAC scenarios from `sipp-scenarios/` against the server.
//!
//! SIPp runs in the foreground with `-nostdin`, in a temporary working directory that
//! receives its statistics CSV, error log and screen dump; every run is bounded by
//! SIPp's own `-timeout` and by a process wait limit above it. A missing `sipp` is a test
//! failure that says how to install it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use super::process::{BoundedChild, Finished, read_or_explain, tail, which};
use super::sip::Transport;

/// Path of `sipp`; panics with installation advice when it is missing.
pub fn sipp_path() -> PathBuf {
    which("sipp").unwrap_or_else(|| {
        panic!(
            "`sipp` is not on PATH. These tests drive the server with SIPp; install it with \
             `apt-get install -y sip-tester` (Debian/Ubuntu) — .ci/run does this."
        )
    })
}

/// A scenario shipped for users in `sipp-scenarios/`.
pub fn scenario(name: &str) -> PathBuf {
    existing(super::repo_root().join("sipp-scenarios").join(name))
}

/// A SIPp scenario that only tests use, in `tests/sipp/`.
pub fn fixture(name: &str) -> PathBuf {
    existing(super::repo_root().join("tests").join("sipp").join(name))
}

fn existing(p: PathBuf) -> PathBuf {
    assert!(p.is_file(), "missing SIPp scenario {}", p.display());
    p
}

/// What a finished SIPp run left: exit status, output, and its files.
pub struct SippOutcome {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// The last row of the `-trace_stat` CSV, by column name (empty if none was written).
    pub stats: HashMap<String, String>,
    /// The `-trace_err` log (unexpected messages), possibly empty.
    pub errors: String,
    /// The `-trace_screen` final screen.
    pub screen: String,
    /// The `-trace_msg` log.
    pub messages: String,
    _workdir: tempfile::TempDir,
}

impl SippOutcome {
    /// A cumulative counter from the statistics, e.g. `stat("SuccessfulCall(C)")`.
    pub fn stat(&self, name: &str) -> Option<u64> {
        self.stats.get(name)?.trim().parse().ok()
    }

    /// A readable account for assertion messages.
    pub fn report(&self) -> String {
        format!(
            "sipp exit status: {}\n--- final screen ---\n{}\n--- stderr ---\n{}\n\
             --- unexpected messages (-trace_err) ---\n{}\n--- last messages (-trace_msg) ---\n{}",
            self.status,
            tail(&self.screen, 6000),
            tail(&self.stderr, 4000),
            tail(&self.errors, 6000),
            tail(&self.messages, 6000),
        )
    }
}

/// A SIPp process running in the background.
pub struct SippRun {
    child: BoundedChild,
    workdir: tempfile::TempDir,
}

impl SippRun {
    /// Starts `sipp` with `args` plus the tracing options, in a fresh working directory.
    pub fn spawn(name: &str, args: &[String]) -> SippRun {
        Self::spawn_with_files(name, args, &[])
    }

    /// Like [`SippRun::spawn`], with `files` (name, contents) written into the working
    /// directory first (e.g. audio for `rtp_stream`).
    pub fn spawn_with_files(name: &str, args: &[String], files: &[(&str, &[u8])]) -> SippRun {
        let workdir = tempfile::Builder::new()
            .prefix("pinbridge-sipp-")
            .tempdir()
            .expect("temp dir for sipp");
        let d = workdir.path();
        for (file, contents) in files {
            std::fs::write(d.join(file), contents).expect("writing a file for sipp");
        }
        let mut cmd = Command::new(sipp_path());
        cmd.current_dir(d)
            .args(args)
            .arg("-nostdin")
            .args(["-trace_stat", "-fd", "1", "-stf"])
            .arg(d.join("stat.csv"))
            .args(["-trace_err", "-error_file"])
            .arg(d.join("errors.log"))
            .args(["-trace_screen", "-screen_file"])
            .arg(d.join("screen.log"))
            .args(["-trace_msg", "-message_file"])
            .arg(d.join("messages.log"));
        SippRun {
            child: BoundedChild::spawn(name, cmd),
            workdir,
        }
    }

    pub fn workdir(&self) -> &Path {
        self.workdir.path()
    }

    /// Waits at most `timeout` for SIPp to exit (panics with its output otherwise).
    pub fn finish(self, timeout: Duration) -> SippOutcome {
        let Finished {
            status,
            stdout,
            stderr,
        } = self.child.finish(timeout);
        let d = self.workdir.path();
        let stats = std::fs::read_to_string(d.join("stat.csv"))
            .map(|t| parse_stat_csv(&t))
            .unwrap_or_default();
        SippOutcome {
            status,
            stdout,
            stderr,
            stats,
            errors: std::fs::read_to_string(d.join("errors.log")).unwrap_or_default(),
            screen: read_or_explain(&d.join("screen.log")),
            messages: std::fs::read_to_string(d.join("messages.log")).unwrap_or_default(),
            _workdir: self.workdir,
        }
    }
}

/// SIPp's `-t` value for a transport (one socket).
pub fn transport_flag(t: Transport) -> &'static str {
    match t {
        Transport::Udp => "u1",
        Transport::Tcp => "t1",
    }
}

/// Starts SIPp's built-in UAS scenario on 127.0.0.1:`port`; see [`start_uas_scenario`].
pub fn start_uas(
    transport: Transport,
    port: u16,
    media_port: u16,
    calls: u32,
    timeout: Duration,
) -> SippRun {
    start_uas_scenario(
        &["-sn", "uas"],
        transport,
        port,
        media_port,
        calls,
        timeout,
        &[],
    )
}

/// Starts SIPp as a UAS (`scenario` is `["-sn", "uas"]` or `["-sf", FILE]`) on
/// 127.0.0.1:`port` for `calls` calls, bounded by `-timeout`. SIPp binds `media_port` and
/// `media_port + 2` itself and fails if they are taken, so both must be ours. Returns once
/// the SIP port is bound (at most 10 s). `files` are written to SIPp's working directory.
pub fn start_uas_scenario(
    scenario: &[&str],
    transport: Transport,
    port: u16,
    media_port: u16,
    calls: u32,
    timeout: Duration,
    files: &[(&str, &[u8])],
) -> SippRun {
    let args: Vec<String> = scenario
        .iter()
        .copied()
        .chain([
            "-i",
            "127.0.0.1",
            "-mi",
            "127.0.0.1",
            "-bind_local",
            "-p",
            &port.to_string(),
            "-mp",
            &media_port.to_string(),
            "-t",
            transport_flag(transport),
            "-m",
            &calls.to_string(),
            "-timeout",
            &format!("{}s", timeout.as_secs().max(1)),
            "-timeout_error",
        ])
        .map(|s| s.to_string())
        .collect();
    let run =
        SippRun::spawn_with_files(&format!("sipp {} (UAS)", scenario.join(" ")), &args, files);
    if !wait_port_bound(transport, port, Duration::from_secs(10)) {
        let outcome = run.finish(Duration::from_secs(1));
        panic!(
            "SIPp UAS never bound 127.0.0.1:{port}/{transport:?}\n{}",
            outcome.report()
        );
    }
    run
}

/// The arguments for running a UAC scenario file against `target`:
/// `-sf FILE target -i 127.0.0.1 -p SIP_PORT -mp MEDIA_PORT -m CALLS -r RATE -l LIMIT
/// -timeout Ns -timeout_error`.
#[allow(clippy::too_many_arguments)]
pub fn uac_args(
    scenario: &Path,
    target: SocketAddr,
    transport: Transport,
    sip_port: u16,
    media_port: u16,
    calls: u32,
    rate: u32,
    limit: u32,
    timeout: Duration,
) -> Vec<String> {
    vec![
        "-sf".into(),
        scenario.display().to_string(),
        target.to_string(),
        "-i".into(),
        "127.0.0.1".into(),
        "-mi".into(),
        "127.0.0.1".into(),
        "-bind_local".into(),
        "-p".into(),
        sip_port.to_string(),
        "-mp".into(),
        media_port.to_string(),
        "-t".into(),
        transport_flag(transport).into(),
        "-m".into(),
        calls.to_string(),
        "-r".into(),
        rate.to_string(),
        "-l".into(),
        limit.to_string(),
        "-timeout".into(),
        format!("{}s", timeout.as_secs().max(1)),
        "-timeout_error".into(),
    ]
}

/// Parses a `-trace_stat` CSV (`;`-separated, header row first) into the last row by
/// column name; the last row holds the final cumulative counters.
pub fn parse_stat_csv(text: &str) -> HashMap<String, String> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next() else {
        return HashMap::new();
    };
    let Some(last) = lines.next_back() else {
        return HashMap::new();
    };
    header
        .split(';')
        .map(|h| h.trim().to_string())
        .zip(last.split(';').map(|v| v.trim().to_string()))
        .filter(|(h, _)| !h.is_empty())
        .collect()
}

/// Whether some socket is bound to `port` (UDP) or listening on it (TCP), from
/// `/proc/net` — looking, not probing, so it never steals the port.
pub fn port_is_bound(transport: Transport, port: u16) -> bool {
    let (files, want_state) = match transport {
        Transport::Udp => (["/proc/net/udp", "/proc/net/udp6"], None),
        Transport::Tcp => (["/proc/net/tcp", "/proc/net/tcp6"], Some("0A")), // 0A = LISTEN
    };
    files.iter().any(|f| {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        text.lines().skip(1).any(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let Some(local) = cols.get(1) else {
                return false;
            };
            let port_ok = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok())
                == Some(port);
            port_ok && want_state.is_none_or(|s| cols.get(3) == Some(&s))
        })
    })
}

/// Waits at most `timeout` for [`port_is_bound`].
pub fn wait_port_bound(transport: Transport, port: u16, timeout: Duration) -> bool {
    super::wait_until(timeout, Duration::from_millis(20), || {
        port_is_bound(transport, port)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_csv_last_row_by_name() {
        let csv = "StartTime;SuccessfulCall(C);FailedCall(C);\n\
                   t0;0;0;\n\
                   t1;50;0;\n";
        let s = parse_stat_csv(csv);
        assert_eq!(s.get("SuccessfulCall(C)").map(String::as_str), Some("50"));
        assert_eq!(s.get("FailedCall(C)").map(String::as_str), Some("0"));
        assert!(parse_stat_csv("only;a;header\n").is_empty());
    }

    #[test]
    fn proc_net_sees_a_bound_udp_port() {
        // A port of our own block: nobody else binds it between the two checks.
        let block = super::super::ports::PortBlock::reserve();
        let port = block.aux_port(39);
        let s = std::net::UdpSocket::bind(("127.0.0.1", port)).unwrap();
        assert!(port_is_bound(Transport::Udp, port));
        assert!(!port_is_bound(Transport::Tcp, port));
        drop(s);
        // The kernel's table may lag the close by a moment on a busy machine: bounded wait.
        let gone = super::super::wait_until(
            std::time::Duration::from_secs(2),
            std::time::Duration::from_millis(20),
            || !port_is_bound(Transport::Udp, port),
        );
        assert!(
            gone,
            "port {port} still listed as bound 2 s after its socket closed"
        );
    }
}
