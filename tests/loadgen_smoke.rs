//! `pinbridge loadgen` against the real server, both as processes on 127.0.0.1: a short
//! smoke version of the capacity load (issue 6). It checks correctness, not speed (speed is
//! measured by `bench/capacity.sh`, never asserted as wall-clock limits here): no failed
//! call, packet loss within the quality rule, every lobby caller heard hold music and every
//! meeting caller heard another participant and not itself (tone mode) or the others' audio
//! (`--audio-file`, which cannot check "not itself").

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::Server;
use common::process::run_bounded;
use serde_json::Value;

/// Bound on one loadgen run: the ramp, the calls, the BYEs, and a wide margin.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

fn loadgen(server: SocketAddr, args: &[&str]) -> common::process::Finished {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pinbridge"));
    cmd.arg("loadgen")
        .arg("--server")
        .arg(server.to_string())
        .arg("--audio-dir")
        .arg(common::repo_root().join("audio"))
        .args(args);
    run_bounded("pinbridge loadgen", cmd, RUN_TIMEOUT)
}

/// A server with `n` organizers, and the `--organizers-file` listing them (`ID;PIN` lines)
/// in a temporary directory that lives as long as the returned guard.
fn server_with_organizers(n: usize) -> (Server, tempfile::TempDir, PathBuf) {
    let mut builder = Server::builder().log_level("info");
    for k in 0..n {
        builder = builder.organizer(&format!("org{k}@example.com"), &[]);
    }
    let server = builder.start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("organizers.txt");
    let lines: String = (0..n)
        .map(|k| {
            let o = server.organizer(&format!("org{k}@example.com"));
            format!("{};{}\n", o.conference, o.pin)
        })
        .collect();
    std::fs::write(&file, lines).unwrap();
    (server, dir, file)
}

/// The `--json` report of a loadgen run that must have exited 0.
fn json_report(out: &common::process::Finished, server: &Server) -> Value {
    assert!(
        out.status.success(),
        "loadgen failed: {}\n{}",
        out.stderr,
        server.log_tail()
    );
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", out.stdout))
}

fn num(v: &Value, path: &str) -> f64 {
    path.split('.')
        .fold(v, |v, k| &v[k])
        .as_f64()
        .unwrap_or_else(|| panic!("no number at {path} in {v:#}"))
}

#[test]
fn forty_calls_in_four_meetings_and_a_lobby_for_ten_seconds() {
    let (server, _dir, file) = server_with_organizers(5);

    // 40 calls at 10/s: 8 wait in a lobby whose organizer never comes, 32 meet in 4
    // meetings of 8. Each call lasts 10 s; hold music starts about 6.3 s after the answer.
    let out = loadgen(
        server.sip_addr(),
        &[
            "--calls",
            "40",
            "--rate",
            "10",
            "--duration",
            "10",
            "--meetings",
            "4",
            "--lobby-fraction",
            "0.2",
            "--organizers-file",
            file.to_str().unwrap(),
            "--json",
        ],
    );
    let report = json_report(&out, &server);
    let show = || format!("{report:#}\n--- stderr ---\n{}", out.stderr);

    assert_eq!(num(&report, "calls.attempted"), 40.0, "{}", show());
    assert_eq!(num(&report, "calls.established"), 40.0, "{}", show());
    assert_eq!(num(&report, "calls.failed"), 0.0, "{}", show());
    assert_eq!(num(&report, "calls.organizers"), 4.0, "{}", show());
    assert_eq!(num(&report, "calls.lobby_callers"), 8.0, "{}", show());
    assert_eq!(num(&report, "calls.in_meeting"), 32.0, "{}", show());
    assert_eq!(report["quality"]["no_failed_calls"], true, "{}", show());

    // The quality rule's loss part holds even on a busy debug build.
    assert!(num(&report, "rtp.loss_percent") <= 0.1, "{}", show());
    assert_eq!(report["quality"]["loss_ok"], true, "{}", show());
    // Every call got most of its 10 s of 50 packets/s (the server keeps sending until the
    // BYE; prompt boundaries may pause it briefly).
    assert!(
        num(&report, "rtp.received") >= 40.0 * 10.0 * 50.0 * 0.9,
        "{}",
        show()
    );
    assert!(
        num(&report, "rtp.sent") >= 40.0 * 10.0 * 50.0 * 0.9,
        "{}",
        show()
    );

    // Heard what they should.
    assert_eq!(num(&report, "heard.lobby_checked"), 8.0, "{}", show());
    assert_eq!(num(&report, "heard.lobby_ok"), 8.0, "{}", show());
    assert_eq!(num(&report, "heard.meeting_checked"), 32.0, "{}", show());
    assert_eq!(num(&report, "heard.meeting_ok"), 32.0, "{}", show());
    assert_eq!(report["heard"]["all_ok"], true, "{}", show());

    // Latency and jitter are reported, not judged: sanity only. Jitter is an average
    // deviation of 20 ms packets; far above a second would mean a unit or wrap error.
    assert_eq!(num(&report, "setup_ms.invite_to_200.count"), 40.0);
    assert_eq!(num(&report, "setup_ms.invite_to_meeting.count"), 32.0);
    assert!(
        num(&report, "setup_ms.invite_to_meeting.p50") > num(&report, "setup_ms.invite_to_200.p50")
    );
    let jitter = num(&report, "rtp.jitter_ms.max");
    assert!((0.0..1000.0).contains(&jitter), "{}", show());
    let gap = num(&report, "rtp.max_gap_ms.max");
    assert!((19.0..10_000.0).contains(&gap), "{}", show());

    // Progress went to stderr while it ran.
    assert!(
        out.stderr.contains("loadgen") && out.stderr.contains("established"),
        "{}",
        out.stderr
    );
}

#[test]
fn twelve_calls_sending_a_recording_in_two_meetings_and_a_lobby() {
    let (server, _dir, file) = server_with_organizers(3);
    let recording = common::repo_root().join("audio/greeting.flac");

    // 12 calls: 4 in one lobby room, 8 in 2 meetings of 4, every one looping the greeting
    // from its own point. 8 s is enough for the meetings (started about 3 s after the
    // organizer's answer) and for the lobby's hold music (from about 6.3 s).
    let out = loadgen(
        server.sip_addr(),
        &[
            "--calls",
            "12",
            "--rate",
            "10",
            "--duration",
            "8",
            "--meetings",
            "2",
            "--lobby-fraction",
            "0.34",
            "--organizers-file",
            file.to_str().unwrap(),
            "--audio-file",
            recording.to_str().unwrap(),
            "--json",
        ],
    );
    let report = json_report(&out, &server);
    let show = || format!("{report:#}\n--- stderr ---\n{}", out.stderr);

    assert_eq!(report["audio"]["mode"], "file", "{}", show());
    assert_eq!(
        report["audio"]["file"],
        recording.to_str().unwrap(),
        "{}",
        show()
    );
    assert_eq!(num(&report, "calls.established"), 12.0, "{}", show());
    assert_eq!(num(&report, "calls.failed"), 0.0, "{}", show());
    assert_eq!(num(&report, "calls.in_meeting"), 8.0, "{}", show());
    assert_eq!(
        report["heard"]["meeting_check"],
        "others_audible",
        "{}",
        show()
    );
    assert_eq!(num(&report, "heard.lobby_checked"), 4.0, "{}", show());
    assert_eq!(num(&report, "heard.lobby_ok"), 4.0, "{}", show());
    assert_eq!(num(&report, "heard.meeting_checked"), 8.0, "{}", show());
    assert_eq!(num(&report, "heard.meeting_ok"), 8.0, "{}", show());
    assert_eq!(report["heard"]["all_ok"], true, "{}", show());
    assert!(num(&report, "rtp.loss_percent") <= 0.1, "{}", show());
    assert!(
        num(&report, "rtp.sent") >= 12.0 * 8.0 * 50.0 * 0.9,
        "{}",
        show()
    );
}

#[test]
fn organizers_from_the_admin_api_and_the_table() {
    let server = Server::builder().log_level("info").start();
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("organizers.txt");
    let out = loadgen(
        server.sip_addr(),
        &[
            "--calls",
            "4",
            "--rate",
            "10",
            "--duration",
            "7",
            "--meetings",
            "1",
            "--lobby-fraction",
            "0.25",
            "--admin-url",
            &server.http_url(),
            "--admin-token",
            &server.admin_token(),
            "--organizers-out",
            saved.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "loadgen failed: {}\n{}",
        out.stderr,
        server.log_tail()
    );
    // Two organizers were created (the meeting, the lobby room) and saved with their PINs.
    let saved = std::fs::read_to_string(&saved).unwrap();
    assert_eq!(saved.lines().count(), 2, "{saved}");
    assert!(saved.lines().all(|l| l.split(';').count() == 2));
    for needle in [
        "audio      tone per caller",
        "attempted 4  established 4  failed 0",
        "in meeting 3",
        "heard      lobby 1/1 hold music, meeting 3/3",
        "setup INVITE→200",
        "RTP jitter",
        "RTP largest gap",
        "lost 0 (0.000 %)",
    ] {
        assert!(
            out.stdout.contains(needle),
            "no {needle:?} in:\n{}",
            out.stdout
        );
    }
}

#[test]
fn bad_input_is_one_line_and_exit_1() {
    // Nothing listens there: both runs fail before the first call.
    let nowhere: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let out = loadgen(nowhere, &["--calls", "4", "--meetings", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        out.stderr.trim(),
        "pinbridge: give --organizers-file or --admin-url"
    );
    let out = loadgen(
        nowhere,
        &["--calls", "4", "--organizers-file", "/nonexistent/orgs"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr
            .starts_with("pinbridge: organizers file /nonexistent/orgs:"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
}

#[test]
fn a_missing_or_undecodable_audio_file_is_one_line_and_exit_1() {
    // Checked before organizers are needed or any call is placed.
    let nowhere: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let out = loadgen(
        nowhere,
        &["--calls", "4", "--audio-file", "/nonexistent/talk.wav"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        out.stderr.trim(),
        "pinbridge: --audio-file: audio file /nonexistent/talk.wav: not found"
    );

    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("talk.wav");
    std::fs::write(&junk, "this is not a WAV file\n".repeat(20)).unwrap();
    let out = loadgen(
        nowhere,
        &["--calls", "4", "--audio-file", junk.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    let prefix = format!("pinbridge: --audio-file: audio file {}: ", junk.display());
    assert!(out.stderr.starts_with(&prefix), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
}
