//! The threads organizer PIN checks run on: a few of their own, at a lower scheduling
//! priority than everything else in the server.
//!
//! A PIN check is argon2id — about 21 ms of one core and 19 MiB (see [`crate::pin`]) — plus a
//! store write when the PIN is wrong. On tokio's blocking pool a burst of organizers (a
//! hundred meetings starting at the top of the hour) ran a check per thread at once: every
//! core busy with argon2 for a fraction of a second, media workers waiting for a core and
//! callers hearing gaps of 100 ms and more, and one 19 MiB working set per thread kept by
//! the allocator afterwards. Here a fixed number of threads take checks from one queue, so
//! at most that many run at once, each thread reuses one argon2 working memory
//! ([`crate::pin::verify`] keeps it per thread), and the threads run at nice
//! [`NICE`]: whenever a media worker or the signalling task wants a core, the scheduler
//! gives it before a PIN check, which only waits a little longer.
//!
//! The queue has no bound of its own: a call has at most one check outstanding, so the
//! concurrent-call limit bounds it.

use std::io;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};

use tracing::{debug, warn};

/// Scheduling niceness of the check threads (0 is normal, 19 the lowest). At 10 the kernel
/// gives a normal thread about nine times their share of a contended core.
pub const NICE: i32 = 10;

type Job = Box<dyn FnOnce() + Send>;

/// Handle to the check threads; clones share them. The threads end when the last handle
/// is dropped and the queue is empty.
#[derive(Clone)]
pub struct PinChecks {
    jobs: Sender<Job>,
}

impl PinChecks {
    /// Starts `threads` check threads (at least one).
    pub fn start(threads: usize) -> io::Result<PinChecks> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for index in 0..threads.max(1) {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("pin-check-{index}"))
                .spawn(move || {
                    lower_priority();
                    run(&queue);
                })?;
        }
        Ok(PinChecks { jobs })
    }

    /// One check thread per two cores, at least one: PIN checks never take more than half
    /// the machine, and a two-core machine still checks about 47 PINs a second.
    pub fn default_threads() -> usize {
        std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
    }

    /// Queues `job`; it runs on the first free check thread.
    pub fn submit(&self, job: impl FnOnce() + Send + 'static) {
        if self.jobs.send(Box::new(job)).is_err() {
            // Only if every thread panicked out of `run`, which catches panics.
            warn!("PIN check threads are gone; check dropped");
        }
    }
}

fn run(queue: &Mutex<Receiver<Job>>) {
    loop {
        // The lock is held only while waiting for the next job, never while one runs.
        let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(job) = job else {
            return;
        };
        // A check that panics loses its own answer (its call times out waiting in the IVR
        // like any stuck lookup), not the thread.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
            warn!("a PIN check panicked");
        }
    }
}

/// Sets this thread's niceness to [`NICE`], or leaves it if the process already runs nicer
/// (never raises a priority an operator lowered).
fn lower_priority() {
    let tid = rustix::thread::gettid();
    // On Linux a thread id names one thread here, so only this thread changes.
    let current = rustix::process::getpriority_process(Some(tid)).unwrap_or(0);
    if current >= NICE {
        return;
    }
    if let Err(e) = rustix::process::setpriority_process(Some(tid), NICE) {
        debug!(error = %e, "could not lower the PIN check thread's priority");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn nice_of(tid: i32) -> i32 {
        // Field 19 of /proc/thread-self/stat is the nice value; fields after the
        // parenthesised name are space-separated.
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        after_name.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[test]
    fn jobs_run_on_lower_priority_threads_and_survive_a_panic() {
        let checks = PinChecks::start(2).unwrap();
        let (tx, rx) = mpsc::channel();
        checks.submit(|| panic!("a check that fails badly"));
        for _ in 0..4 {
            let tx = tx.clone();
            checks.submit(move || {
                let tid = rustix::thread::gettid().as_raw_nonzero().get();
                tx.send((tid, nice_of(tid))).unwrap();
            });
        }
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(rx.recv_timeout(Duration::from_secs(5)).unwrap());
        }
        let me = rustix::thread::gettid().as_raw_nonzero().get();
        let base = nice_of(me);
        assert!(
            seen.iter().all(|&(_, nice)| nice == base.max(NICE)),
            "{seen:?}, test thread at {base}"
        );
        assert!(seen.iter().all(|&(tid, _)| tid != me));
        assert_eq!(
            nice_of(me),
            base,
            "the submitting thread keeps its priority"
        );
    }

    #[test]
    fn no_more_checks_run_at_once_than_there_are_threads() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let checks = PinChecks::start(2).unwrap();
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel();
        for _ in 0..8 {
            let (running, most, tx) = (running.clone(), most.clone(), tx.clone());
            checks.submit(move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
                running.fetch_sub(1, Ordering::SeqCst);
                tx.send(()).unwrap();
            });
        }
        for _ in 0..8 {
            rx.recv_timeout(Duration::from_secs(5)).unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }
}
