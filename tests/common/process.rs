//! Child processes with bounded waits: output is drained by threads (so a chatty child never
//! blocks on a full pipe), waits poll `try_wait` until a deadline, and a child still running
//! when its handle is dropped is killed.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often bounded waits look at the child.
const POLL: Duration = Duration::from_millis(20);

/// Finds `program` on `PATH`.
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// A running child whose stdout and stderr are collected in memory.
pub struct BoundedChild {
    name: String,
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

/// What a finished child left behind.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl BoundedChild {
    /// Spawns `cmd` with stdin closed and stdout/stderr captured. Panics if it cannot start.
    pub fn spawn(name: &str, mut cmd: Command) -> BoundedChild {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            drain(
                child.stdout.take().expect("stdout is piped"),
                stdout.clone(),
            ),
            drain(
                child.stderr.take().expect("stderr is piped"),
                stderr.clone(),
            ),
        ];
        BoundedChild {
            name: name.to_string(),
            child,
            stdout,
            stderr,
            readers,
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Output so far (lossy UTF-8).
    pub fn stdout_so_far(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    pub fn stderr_so_far(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Waits at most `timeout` for the child to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) => {}
                Err(e) => panic!("waiting for {}: {e}", self.name),
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits at most `timeout` for the child to exit and collects its output; a child still
    /// running then is killed and the call panics with what it printed.
    pub fn finish(mut self, timeout: Duration) -> Finished {
        let Some(status) = self.wait_timeout(timeout) else {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.join_readers();
            panic!(
                "{} did not exit within {timeout:?}; killed it.\n--- stdout ---\n{}\n--- stderr ---\n{}",
                self.name,
                tail(&self.stdout_so_far(), 8000),
                tail(&self.stderr_so_far(), 8000),
            );
        };
        self.join_readers();
        Finished {
            status,
            stdout: self.stdout_so_far(),
            stderr: self.stderr_so_far(),
        }
    }

    fn join_readers(&mut self) {
        // The pipes close when the child exits (our children do not leave grandchildren
        // holding them), so these joins end promptly.
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

impl Drop for BoundedChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `cmd` to completion within `timeout` (see [`BoundedChild::finish`]).
pub fn run_bounded(name: &str, cmd: Command, timeout: Duration) -> Finished {
    BoundedChild::spawn(name, cmd).finish(timeout)
}

/// Copies everything from `from` into `into` until EOF, on its own thread.
pub fn drain(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => into.lock().unwrap().extend_from_slice(&buf[..n]),
            }
        }
    })
}

/// The last `max` bytes of `s` (on a char boundary), for failure messages.
pub fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Reads a file written by a child, or an explanation of why it could not.
pub fn read_or_explain(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()))
}
