//! Issue 7, storage faults against the real binary: a data directory that cannot be used is
//! a clear one-line error and a non-zero exit at start; a full disk makes an admin change
//! answer a `507` problem (never a `200`, never a corrupt store) while calls go on, and once
//! space is freed and the server restarted the store is intact and the next change succeeds.
//!
//! Tests run as root, so permissions do not stop writes: the unwritable and full data
//! directories are tmpfs mounts (read-only, or a few MiB), unmounted by a guard on every
//! path. `mount` must work here (it does on the CI machine, which is like this one); if it
//! does not, these tests fail loudly rather than skip.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::stats::admin_request;
use common::{RtpReceiver, SdpOffer, Server, SipClient, dial, hang_up};
use serde_json::json;

/// A tmpfs mounted at a path, unmounted (lazily, so a straggling process cannot keep it) on
/// drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, options: &str) -> Tmpfs {
        std::fs::create_dir_all(path).expect("creating the mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(path)
            .output()
            .expect("running mount (the storage tests need it, as root)");
        assert!(
            out.status.success(),
            "mount -t tmpfs -o {options} failed (these tests need root and mount): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// `pinbridge serve --data-dir DIR`: must exit non-zero at once with one `pinbridge:` line
/// on stderr that contains `needle`.
fn refuses_to_start(data_dir: &Path, needle: &str) {
    let out = common::process::run_bounded(
        "pinbridge serve",
        {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_pinbridge"));
            cmd.arg("serve")
                .args([
                    "--sip-listen",
                    "127.0.0.1:0",
                    "--http-listen",
                    "127.0.0.1:0",
                ])
                .arg("--data-dir")
                .arg(data_dir)
                .arg("--audio-dir")
                .arg(common::repo_root().join("audio"));
            cmd
        },
        Duration::from_secs(20),
    );
    assert!(
        !out.status.success(),
        "serve on {} must fail",
        data_dir.display()
    );
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    let last = lines.last().copied().unwrap_or("");
    assert!(
        last.starts_with("pinbridge: ") && last.contains(needle),
        "want one clear line containing {needle:?}, got stderr:\n{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("panicked") && !out.stderr.contains("RUST_BACKTRACE"),
        "a clear error, not a crash:\n{}",
        out.stderr
    );
}

#[test]
fn a_data_dir_that_is_a_file_or_read_only_stops_the_start_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"not a directory").unwrap();
    refuses_to_start(&file, "plain-file");

    let ro = Tmpfs::mount(&dir.path().join("ro"), "ro,size=1m");
    refuses_to_start(&ro.path.join("data"), "Read-only file system");
}

fn enable(server: &Server, id: &str) -> (u16, serde_json::Value) {
    let body = json!({"id": id, "email": id, "display_name": "disk test"});
    admin_request(server, "POST", "/api/users", Some(&body))
}

/// Fills the file system holding `dir` with one file; returns its path.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("creating the filler");
    let chunk = vec![0u8; 64 * 1024];
    // Bounded: a 16 MiB tmpfs is full after at most 256 chunks.
    for _ in 0..1024 {
        if f.write_all(&chunk).is_err() {
            break;
        }
    }
    let _ = f.sync_all();
    path
}

#[test]
fn a_full_disk_answers_507_keeps_calls_up_and_leaves_the_store_intact() {
    let root = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&root.path().join("data"), "size=16m");
    let mut server = Server::builder()
        .data_root(root.path())
        .log_level("info")
        .start();
    let (status, _) = enable(&server, "before@contoso.com");
    assert_eq!(status, 201);

    let filler = fill(&disk.path);
    let (status, problem) = enable(&server, "during@contoso.com");
    assert_eq!(status, 507, "a change on a full disk: {problem}");
    assert!(
        problem["type"]
            .as_str()
            .is_some_and(|t| t.ends_with(":insufficient-storage")),
        "{problem}"
    );
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("no space left")),
        "{problem}"
    );
    // Reads still work, and so do calls.
    let (status, _) = admin_request(&server, "GET", "/api/users", None);
    assert_eq!(status, 200);
    let mut rtp = RtpReceiver::bind();
    let mut client = SipClient::udp(server.sip_addr());
    let mut d = dial(&mut client, "1000", &SdpOffer::g711(rtp.addr()));
    assert!(
        rtp.recv_for(Duration::from_secs(1)).len() > 20,
        "a call on a full disk still hears its greeting"
    );
    hang_up(&mut client, &mut d.call);

    // Space back, server restarted (sled refuses writes after a failed one until reopened):
    // the acknowledged change is there, and the next change succeeds.
    std::fs::remove_file(&filler).unwrap();
    server.terminate();
    let server = Server::builder()
        .data_root(root.path())
        .log_level("info")
        .start();
    let (status, users) = admin_request(&server, "GET", "/api/users", None);
    assert_eq!(status, 200);
    let ids: Vec<&str> = users
        .as_array()
        .expect("a list of users")
        .iter()
        .filter_map(|u| u["id"].as_str())
        .collect();
    assert!(ids.contains(&"before@contoso.com"), "{ids:?}");
    let (status, created) = enable(&server, "after@contoso.com");
    assert_eq!(status, 201, "{created}");
    drop(server);
    drop(disk);
}
