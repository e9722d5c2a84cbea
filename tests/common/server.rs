//! The real `pinbridge` binary as a test fixture.
//!
//! `Server::start()` runs `pinbridge serve` on 127.0.0.1 port 0 (SIP and the admin HTTP API)
//! with an RTP range from a reserved [`PortBlock`], a fresh data directory and the
//! repository's `audio/`, then waits (at most [`READY_TIMEOUT`]) for the one stdout line
//! `pinbridge ready sip=ADDR http=ADDR`. Stderr (the
//! logs) goes to a file the test can search. Dropping the fixture kills the process; when
//! the test is panicking it also prints the tail of the logs.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::ports::PortBlock;
use super::process::tail;

/// How long the binary may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `terminate` waits after SIGTERM (the server's own BYE wait is shorter).
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
/// The prefix of the ready line; the SIP address follows, then ` http=` and the admin API's.
const READY_PREFIX: &str = "pinbridge ready sip=";
const READY_HTTP: &str = " http=";

/// An organizer `pinbridge users add` created in the server's store before it started.
#[derive(Clone, Debug)]
pub struct Organizer {
    pub id: String,
    pub conference: String,
    /// The PIN as `users add` printed it, its one appearance.
    pub pin: String,
}

/// Options for starting the server.
pub struct ServerBuilder {
    organizers: Vec<(String, Vec<String>)>,
    rtp_ports: Option<(u16, u16)>,
    audio_dir: PathBuf,
    log_level: String,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
    prepare: Vec<PrepareDataDir>,
    http_listen: String,
    /// Issue 7: a directory to keep the data dir in across restarts, instead of a temp dir.
    root: Option<PathBuf>,
}

/// Work done on the data directory before the server starts.
type PrepareDataDir = Box<dyn FnOnce(&Path)>;

impl ServerBuilder {
    /// The admin API's `--http-listen` [default: 127.0.0.1:0].
    pub fn http_listen(mut self, addr: &str) -> Self {
        self.http_listen = addr.to_string();
        self
    }

    /// Uses this RTP range instead of one from a reserved [`PortBlock`]. The caller then
    /// answers for nobody else using it.
    pub fn rtp_ports(mut self, first: u16, last: u16) -> Self {
        self.rtp_ports = Some((first, last));
        self
    }

    pub fn audio_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.audio_dir = dir.into();
        self
    }

    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.to_string();
        self
    }

    /// Appends an argument after the standard ones.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Runs `f` on the data directory before the server starts (after the organizers are
    /// added), e.g. to leave work in the store as a killed server would.
    pub fn prepare_data_dir(mut self, f: impl FnOnce(&Path) + 'static) -> Self {
        self.prepare.push(Box::new(f));
        self
    }

    /// Creates organizer `id` with `pinbridge users add ID --email ID EXTRA…` in the data
    /// directory before the server starts; [`Server::organizer`] gives its conference ID and
    /// PIN.
    pub fn organizer(mut self, id: &str, extra: &[&str]) -> Self {
        let extra = extra.iter().map(|s| s.to_string()).collect();
        self.organizers.push((id.to_string(), extra));
        self
    }

    // ---- restarts on the same data dir (issue 7) ----

    /// Keeps the data directory at `root/data` (created if missing; left in place when the
    /// server is dropped), so a test can kill the server and start another on the same
    /// store. Each start logs to its own `root/server-stderr-N.log`. The caller owns `root`.
    pub fn data_root(mut self, root: &Path) -> Self {
        self.root = Some(root.to_path_buf());
        self
    }

    // ---- end restarts

    /// Starts the binary and waits for it to be ready; panics (with its logs) if it exits
    /// or stays silent for [`READY_TIMEOUT`].
    pub fn start(self) -> Server {
        static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let ports = PortBlock::reserve();
        let (rtp_first, rtp_last) = self.rtp_ports.unwrap_or_else(|| ports.rtp_range());
        let (temp, root) = match &self.root {
            Some(root) => (None, root.clone()),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("pinbridge-test-")
                    .tempdir()
                    .expect("creating a data dir");
                let root = t.path().to_path_buf();
                (Some(t), root)
            }
        };
        std::fs::create_dir_all(root.join("data")).expect("creating the data dir");
        let organizers: Vec<Organizer> = self
            .organizers
            .iter()
            .map(|(id, extra)| add_organizer(&root.join("data"), id, extra, &self.env))
            .collect();
        for f in self.prepare {
            f(&root.join("data"));
        }
        let log_path = match temp {
            Some(_) => root.join("server-stderr.log"),
            None => root.join(format!(
                "server-stderr-{}.log",
                STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            )),
        };
        let log_file = File::create(&log_path).expect("creating the log file");

        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pinbridge"));
        cmd.arg("serve")
            .args(["--sip-listen", "127.0.0.1:0"])
            .arg("--rtp-ports")
            .arg(format!("{rtp_first}-{rtp_last}"))
            .arg("--audio-dir")
            .arg(&self.audio_dir)
            .arg("--data-dir")
            .arg(root.join("data"))
            .args(["--log-level", &self.log_level])
            .args(["--http-listen", &self.http_listen])
            .args(&self.extra_args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        let command_line = format!("{cmd:?}");
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command_line}: {e}"));

        // Stdout lines go through a channel so the wait for the first one is bounded; the
        // reader keeps draining afterwards so the server never blocks on a full pipe.
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });

        let mut server = Server {
            organizers,
            child,
            sip_addr: "127.0.0.1:0".parse().expect("literal address"),
            http_addr: "127.0.0.1:0".parse().expect("literal address"),
            rtp_ports: (rtp_first, rtp_last),
            log_path,
            stdout: rx,
            extra_stdout: Vec::new(),
            _data_dir: temp,
            root,
            _ports: ports,
            command_line,
            logs_shown: false,
        };
        (server.sip_addr, server.http_addr) = server.wait_ready();
        server
    }
}

/// Runs `pinbridge users add` on `data_dir` (the server is not running yet).
fn add_organizer(
    data_dir: &Path,
    id: &str,
    extra: &[String],
    env: &[(String, String)],
) -> Organizer {
    let out = Command::new(env!("CARGO_BIN_EXE_pinbridge"))
        .args(["users", "add", id, "--email", id])
        .args(extra)
        .arg("--data-dir")
        .arg(data_dir)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("running pinbridge users add");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "pinbridge users add {id} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let value = |prefix: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in {stdout:?}"))
            .trim()
            .to_string()
    };
    Organizer {
        id: id.to_string(),
        conference: value("conference id: "),
        pin: value("pin: "),
    }
}

/// A running `pinbridge serve`.
pub struct Server {
    organizers: Vec<Organizer>,
    child: Child,
    sip_addr: SocketAddr,
    http_addr: SocketAddr,
    rtp_ports: (u16, u16),
    log_path: PathBuf,
    stdout: mpsc::Receiver<String>,
    extra_stdout: Vec<String>,
    /// The temp dir holding `data/`, unless the builder was given a `data_root`.
    _data_dir: Option<tempfile::TempDir>,
    root: PathBuf,
    _ports: PortBlock,
    command_line: String,
    /// Set once a panic message has included the logs, so Drop does not repeat them.
    logs_shown: bool,
}

impl Server {
    /// Starts the server with the standard options.
    pub fn start() -> Server {
        Server::builder().start()
    }

    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            organizers: Vec::new(),
            rtp_ports: None,
            audio_dir: super::repo_root().join("audio"),
            log_level: "debug".into(),
            extra_args: Vec::new(),
            env: Vec::new(),
            prepare: Vec::new(),
            http_listen: "127.0.0.1:0".to_string(),
            root: None,
        }
    }

    /// The SIP address from the ready line (UDP and TCP).
    /// The organizer created by the builder's `organizer(id, …)`.
    pub fn organizer(&self, id: &str) -> &Organizer {
        self.organizers
            .iter()
            .find(|o| o.id == id)
            .unwrap_or_else(|| panic!("no organizer {id} was created"))
    }

    pub fn sip_addr(&self) -> SocketAddr {
        self.sip_addr
    }

    /// The admin HTTP API's address from the ready line.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// `http://IP:PORT` of the admin API.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// The admin token the server generated into its data directory (when none was
    /// configured).
    pub fn admin_token(&self) -> String {
        let path = self.data_dir().join("admin-token");
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
            .trim()
            .to_string()
    }

    /// The `--rtp-ports` range, inclusive.
    pub fn rtp_ports(&self) -> (u16, u16) {
        self.rtp_ports
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The data directory passed as `--data-dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// Where stderr (the logs) is written.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything logged so far (lossy UTF-8).
    pub fn logs(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits at most `timeout` for `needle` to appear in the logs.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        super::wait_until(timeout, Duration::from_millis(50), || {
            self.logs().contains(needle)
        })
    }

    /// Lines printed on stdout after the ready line (the contract says there are none).
    pub fn extra_stdout(&mut self) -> &[String] {
        while let Ok(line) = self.stdout.try_recv() {
            self.extra_stdout.push(line);
        }
        &self.extra_stdout
    }

    /// Sends a signal (`libc::SIGTERM`, `libc::SIGINT`, …) to the server.
    pub fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped, so the pid
        // cannot have been reused).
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {sig}): {}",
            std::io::Error::last_os_error()
        );
    }

    /// Whether the process is still running (it has not exited or crashed).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Log lines that contain every one of `needles`.
    pub fn log_lines_with(&self, needles: &[&str]) -> Vec<String> {
        self.logs()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_string)
            .collect()
    }

    /// Waits at most `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait on the server") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then wait at most [`EXIT_TIMEOUT`]; returns the exit status. Panics (after
    /// SIGKILL) if the server does not exit in time. Calls must have their BYEs answered by
    /// someone meanwhile — use [`Server::signal`] + [`Server::wait_exit`] to answer them
    /// from the test thread.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        match self.wait_exit(EXIT_TIMEOUT) {
            Some(status) => status,
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.logs_shown = true;
                panic!(
                    "pinbridge did not exit within {EXIT_TIMEOUT:?} of SIGTERM; killed it.\n{}",
                    self.log_tail()
                )
            }
        }
    }

    /// The last lines of the logs, for failure messages.
    pub fn log_tail(&self) -> String {
        format!(
            "--- pinbridge stderr ({}), last 12 KiB ---\n{}",
            self.log_path.display(),
            tail(&self.logs(), 12 * 1024)
        )
    }

    fn wait_ready(&mut self) -> (SocketAddr, SocketAddr) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .stdout
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                Ok(line) => {
                    let Some((sip, http)) = line
                        .strip_prefix(READY_PREFIX)
                        .and_then(|rest| rest.split_once(READY_HTTP))
                    else {
                        self.fail_start(&format!(
                            "first stdout line is {line:?}, want \"{READY_PREFIX}127.0.0.1:PORT{READY_HTTP}127.0.0.1:PORT\""
                        ));
                    };
                    let mut parse = |addr: &str| -> SocketAddr {
                        let addr: SocketAddr = addr.trim().parse().unwrap_or_else(|_| {
                            self.fail_start(&format!("ready line has no socket address: {line:?}"))
                        });
                        assert!(
                            addr.ip().is_loopback() && addr.port() != 0,
                            "ready line names {addr}, want 127.0.0.1 and a real port"
                        );
                        addr
                    };
                    return (parse(sip), parse(http));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // Stdout closed: the process is exiting; give it a moment to be reaped.
                    let status = self.wait_exit(Duration::from_secs(2));
                    self.fail_start(&format!(
                        "exited before printing the ready line (status {status:?})"
                    ));
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // Collect any line that raced with the exit before giving up.
                if let Ok(line) = self.stdout.recv_timeout(Duration::from_millis(200)) {
                    self.fail_start(&format!(
                        "exited ({status}) after printing {line:?} instead of the ready line"
                    ));
                }
                self.fail_start(&format!("exited ({status}) before the ready line"));
            }
            if left.is_zero() {
                self.fail_start(&format!("no ready line within {READY_TIMEOUT:?}"));
            }
        }
    }

    fn fail_start(&mut self, why: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.logs_shown = true;
        panic!(
            "pinbridge did not start: {why}\ncommand: {}\n{}",
            self.command_line,
            self.log_tail()
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() && !self.logs_shown {
            eprintln!("{}", self.log_tail());
        }
    }
}
