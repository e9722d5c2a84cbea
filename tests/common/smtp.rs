//! A real SMTP server for the tests: aiosmtpd (Debian's `python3-aiosmtpd`, which `.ci/run`
//! installs) with its Maildir handler, listening on 127.0.0.1 only. What it accepted is read
//! back from the Maildir and parsed with `mail-parser`, independently of lettre.
//!
//! The port comes from a reserved [`PortBlock`], so a test can start with the server down
//! (nothing else will take the port) and start it later, or stop and restart it, on the same
//! port. A missing aiosmtpd is a loud failure, never a skip.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::ports::PortBlock;
use super::process::{BoundedChild, run_bounded, tail, which};
use super::wait_until;

/// How long aiosmtpd may take to listen (a cold Python start on a loaded machine).
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long it may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// An aiosmtpd process (or, when stopped, its reserved port) and its Maildir.
pub struct SmtpServer {
    python: PathBuf,
    port: u16,
    maildir: PathBuf,
    child: Option<BoundedChild>,
    _root: tempfile::TempDir,
    _ports: PortBlock,
}

impl SmtpServer {
    /// Reserves a port and a Maildir without starting the server.
    pub fn new() -> SmtpServer {
        let python = python_with_aiosmtpd();
        let ports = PortBlock::reserve();
        let root = tempfile::Builder::new()
            .prefix("pinbridge-smtp-")
            .tempdir()
            .expect("creating the Maildir's directory");
        SmtpServer {
            python,
            port: ports.aux_port(0),
            maildir: root.path().join("Maildir"),
            child: None,
            _root: root,
            _ports: ports,
        }
    }

    /// A running server on a fresh port.
    pub fn start_new() -> SmtpServer {
        let mut server = SmtpServer::new();
        server.start();
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn maildir(&self) -> &Path {
        &self.maildir
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts aiosmtpd on the reserved port and waits until it accepts connections; panics
    /// with its output if it does not within [`START_TIMEOUT`].
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "the SMTP server is already running");
        let mut cmd = Command::new(&self.python);
        cmd.args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{}", self.port))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&self.maildir);
        let mut child = BoundedChild::spawn("aiosmtpd", cmd);
        let addr = self.addr();
        let up = wait_until(START_TIMEOUT, Duration::from_millis(50), || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        if !up {
            let exited = child.wait_timeout(Duration::ZERO);
            panic!(
                "aiosmtpd did not listen on {addr} within {START_TIMEOUT:?} (exit: {exited:?})\n{}",
                tail(&child.stderr_so_far(), 4000)
            );
        }
        self.child = Some(child);
    }

    /// Stops the server (SIGTERM, then SIGKILL) and waits until the port refuses connections.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: signalling our own child, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        if child.wait_timeout(STOP_TIMEOUT).is_none() {
            drop(child); // kills and reaps
        }
        let addr = self.addr();
        let down = wait_until(STOP_TIMEOUT, Duration::from_millis(20), || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err()
        });
        assert!(
            down,
            "{addr} still accepts connections after aiosmtpd stopped"
        );
    }

    /// Stops and starts it again on the same port; the Maildir keeps what it had.
    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }

    /// Every message accepted so far, in the Maildir's (delivery-time) name order.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        let mut paths = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(entries) = std::fs::read_dir(self.maildir.join(sub)) else {
                continue;
            };
            paths.extend(entries.map(|e| e.expect("reading the Maildir").path()));
        }
        paths.sort();
        paths
            .into_iter()
            .map(|p| ReceivedMail {
                raw: std::fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display())),
            })
            .collect()
    }

    /// Waits (at most `timeout`) until at least `n` messages arrived; panics otherwise.
    pub fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<ReceivedMail> {
        let arrived = wait_until(timeout, Duration::from_millis(50), || {
            self.messages().len() >= n
        });
        let messages = self.messages();
        assert!(
            arrived,
            "{} of {n} messages arrived at {} within {timeout:?}",
            messages.len(),
            self.addr()
        );
        messages
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        // BoundedChild's own drop kills it.
        self.child.take();
    }
}

/// One message as the SMTP server stored it.
pub struct ReceivedMail {
    pub raw: Vec<u8>,
}

impl ReceivedMail {
    fn parsed(&self) -> mail_parser::Message<'_> {
        mail_parser::MessageParser::default()
            .parse(&self.raw)
            .unwrap_or_else(|| panic!("unparseable message:\n{}", self.raw_text()))
    }

    pub fn raw_text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }

    pub fn subject(&self) -> Option<String> {
        self.parsed().subject().map(str::to_string)
    }

    /// The To addresses (`addr@domain`, without display names).
    pub fn to(&self) -> Vec<String> {
        self.parsed()
            .to()
            .map(|a| a.iter().filter_map(|m| m.address()).map(str::to_string))
            .into_iter()
            .flatten()
            .collect()
    }

    pub fn from(&self) -> Option<String> {
        self.parsed()
            .from()
            .and_then(|a| a.first())
            .and_then(|m| m.address())
            .map(str::to_string)
    }

    pub fn message_id(&self) -> Option<String> {
        self.parsed().message_id().map(str::to_string)
    }

    /// The text/plain part, decoded, with CRLF line ends turned into LF.
    pub fn text(&self) -> Option<String> {
        let msg = self.parsed();
        let part = msg
            .text_bodies()
            .find(|p| p.is_text() && !p.is_text_html())?;
        part.text_contents().map(|t| t.replace("\r\n", "\n"))
    }

    /// The text/html part, decoded, with CRLF line ends turned into LF.
    pub fn html(&self) -> Option<String> {
        let msg = self.parsed();
        let part = msg.html_bodies().find(|p| p.is_text_html())?;
        part.text_contents().map(|t| t.replace("\r\n", "\n"))
    }
}

/// A Python 3 that can import aiosmtpd: `$PINBRIDGE_TEST_PYTHON`, `python3` on PATH (which may
/// be a pyenv or venv without Debian's packages), or Debian's `/usr/bin/python3`. Panics,
/// saying how to install it, when none can.
pub fn python_with_aiosmtpd() -> PathBuf {
    let candidates = [
        std::env::var_os("PINBRIDGE_TEST_PYTHON").map(PathBuf::from),
        which("python3"),
        Some(PathBuf::from("/usr/bin/python3")),
    ];
    let mut tried = Vec::new();
    for python in candidates.into_iter().flatten() {
        if !python.is_file() || tried.contains(&python) {
            continue;
        }
        let mut cmd = Command::new(&python);
        cmd.args(["-c", "import aiosmtpd"]);
        if run_bounded("python3 -c 'import aiosmtpd'", cmd, Duration::from_secs(20))
            .status
            .success()
        {
            return python;
        }
        tried.push(python);
    }
    panic!(
        "no Python 3 with aiosmtpd (tried {tried:?}): install Debian's python3-aiosmtpd \
         (`apt-get install -y python3-aiosmtpd`; .ci/run does) or point PINBRIDGE_TEST_PYTHON \
         at a python3 that has it"
    )
}
