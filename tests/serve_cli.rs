//! `pinbridge serve` refuses bad settings before binding anything: one clear line naming the
//! setting or file, and a non-zero exit; and a good start sizes the process for its calls.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn serve(args: &[&str], data_dir: &Path) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pinbridge"))
        .arg("serve")
        .args(["--sip-listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running pinbridge");
    // A refused start exits at once; one that does not exit within 20 s started by mistake.
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    panic!(
        "serve {args:?} did not refuse to start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn refused(out: &Output, needles: &[&str]) {
    assert!(!out.status.success(), "exit status {:?}", out.status);
    let err = String::from_utf8_lossy(&out.stderr);
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        out.stdout.is_empty(),
        "nothing on stdout for a refused start"
    );
}

#[test]
fn a_missing_or_corrupt_audio_asset_stops_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    let audio = tmp.path().join("audio");
    std::fs::create_dir(&audio).unwrap();
    let repo_audio = Path::new(env!("CARGO_MANIFEST_DIR")).join("audio");
    for entry in std::fs::read_dir(&repo_audio).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "flac") && !path.ends_with("greeting.flac") {
            std::fs::copy(&path, audio.join(path.file_name().unwrap())).unwrap();
        }
    }
    let data = tmp.path().join("data");
    let out = serve(&["--audio-dir", audio.to_str().unwrap()], &data);
    refused(&out, &["greeting"]);

    std::fs::write(audio.join("greeting.flac"), b"not a flac file").unwrap();
    let out = serve(&["--audio-dir", audio.to_str().unwrap()], &data);
    refused(&out, &["greeting.flac"]);
}

#[test]
fn bad_settings_name_the_setting() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = serve(&["--rtp-ports", "30000-20000"], &data);
    refused(&out, &["--rtp-ports", "30000-20000"]);
    let out = serve(&["--audio-dir", "/nonexistent/audio"], &data);
    refused(&out, &["audio_dir", "/nonexistent/audio"]);
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(&cfg, "sip_listn = \"127.0.0.1:5060\"\n").unwrap();
    let out = serve(&["--config", cfg.to_str().unwrap()], &data);
    refused(&out, &["bad.toml", "sip_listn"]);
}

#[test]
fn help_lists_every_setting() {
    let out = Command::new(env!("CARGO_BIN_EXE_pinbridge"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--sip-listen",
        "--rtp-ports",
        "--data-dir",
        "--audio-dir",
        "--log-level",
        "--rtp-timeout",
        "--dtmf-mode",
        "PINBRIDGE_SIP_LISTEN",
    ] {
        assert!(help.contains(flag), "serve --help lacks {flag}");
    }
}

/// The descriptor table is grown for the configured calls before the first call (see
/// `pinbridge::descriptors`), and the soft descriptor limit raised to match, even when the
/// server starts under a low soft limit (`ulimit -Sn 512`).
#[test]
fn reserves_a_descriptor_per_call_at_start() {
    let data = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"ulimit -Sn 512 && exec "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_pinbridge"))
        .args([
            "serve",
            "--sip-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--rtp-ports",
            "40000-49999",
            "--max-calls",
            "2000",
            "--data-dir",
        ])
        .arg(data.path())
        .arg("--audio-dir")
        .arg(common::repo_root().join("audio"));
    let server = common::process::BoundedChild::spawn("pinbridge serve", cmd);
    let ready = common::wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
        server.stdout_so_far().starts_with("pinbridge ready")
    });
    assert!(ready, "not ready: {}", server.stderr_so_far());
    let proc_file =
        |name: &str| std::fs::read_to_string(format!("/proc/{}/{name}", server.id())).unwrap();
    // 2000 calls (the 10000-port range has 5000 RTP sessions) + 1024 for signalling.
    let wanted = 2000 + 1024;
    let table: u64 = proc_file("status")
        .lines()
        .find_map(|l| l.strip_prefix("FDSize:"))
        .map(|v| v.trim().parse().unwrap())
        .expect("FDSize line");
    assert!(table >= wanted, "descriptor table {table} < {wanted}");
    let soft: u64 = proc_file("limits")
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .map(|v| v.parse().unwrap())
        .expect("Max open files line");
    assert!(soft >= wanted, "soft descriptor limit {soft} < {wanted}");
    assert!(
        server.stderr_so_far().contains("descriptor table reserved"),
        "{}",
        server.stderr_so_far()
    );
}
