//! The process's file-descriptor table, sized for the calls before the first one arrives.
//!
//! Every call holds one RTP socket, so a server carrying thousands of calls holds thousands
//! of descriptors. Linux grows a process's descriptor table by doubling it when a new
//! descriptor does not fit, and once the process has threads each growth waits for an RCU
//! grace period (`expand_fdtable` calls `synchronize_rcu`). Here that wait was 6–15 ms, taken
//! by the signalling task inside the `bind` of the 241st, 497th, 1009th and 2033rd call's RTP
//! socket — every INVITE behind it waited too (`bench/setup-rate.sh 1000 10 2`). The table
//! never shrinks, so growing it once at start, while the process has one thread, takes that
//! wait out of call setup for good.
//!
//! Debian's default soft limit of 1024 descriptors (kept low for programs that use
//! `select`, which this one does not) would also refuse the 1000th call's RTP socket, so the
//! soft limit is raised towards the hard one as far as the configured calls need.

use std::io;

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Descriptors kept for everything that is not a call's RTP socket: SIP over TCP, admin
/// HTTP connections, the store's files, logs.
pub const SIGNALLING_MARGIN: u64 = 1024;

/// What [`reserve`] did, for the start-up log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    /// The descriptors asked for.
    pub wanted: u64,
    /// The soft `RLIMIT_NOFILE` before and after.
    pub limit_before: u64,
    pub limit: u64,
    /// The descriptor table now holds at least this many descriptors.
    pub table: u64,
}

impl Reservation {
    /// Fewer descriptors than wanted: the hard limit is lower.
    pub fn is_short(&self) -> bool {
        self.table < self.wanted
    }
}

/// Descriptors for `calls` concurrent calls plus [`SIGNALLING_MARGIN`].
pub fn for_calls(calls: usize) -> u64 {
    (calls as u64).saturating_add(SIGNALLING_MARGIN)
}

/// Raises the soft descriptor limit to `wanted` (at most the hard limit) and grows the
/// descriptor table to hold that many, by duplicating a descriptor to the highest number
/// and closing it again. Call it early in `main`, before threads start, so the growth itself
/// waits for no grace period.
pub fn reserve(wanted: u64) -> io::Result<Reservation> {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    let limit_before = current.unwrap_or(u64::MAX);
    let hard = maximum.unwrap_or(u64::MAX);
    let limit = if limit_before < wanted {
        let raised = wanted.min(hard);
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(raised),
                maximum,
            },
        )?;
        raised
    } else {
        limit_before
    };
    let table = wanted.min(limit);
    if table > 0 {
        // Descriptor numbers are i32; a limit above that is not a table anyone can fill.
        let highest = i32::try_from(table - 1).unwrap_or(i32::MAX);
        let null = std::fs::File::open("/dev/null")?;
        // F_DUPFD gives the lowest free descriptor at or above `highest`, growing the table
        // to hold it; dropping the copy frees the number and keeps the table.
        drop(rustix::io::fcntl_dupfd_cloexec(&null, highest)?);
    }
    Ok(Reservation {
        wanted,
        limit_before,
        limit,
        table,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of this process's descriptor table (`FDSize` in `/proc/self/status`).
    fn table_size() -> io::Result<u64> {
        let status = std::fs::read_to_string("/proc/self/status")?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("FDSize:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| io::Error::other("no FDSize line in /proc/self/status"))
    }

    #[test]
    fn grows_the_table_and_keeps_it() {
        let before = table_size().unwrap();
        let wanted = (before * 4).max(4096);
        let r = reserve(wanted).unwrap();
        assert!(r.limit >= r.table, "{r:?}");
        assert!(
            table_size().unwrap() >= r.table,
            "table {} after reserving {r:?}",
            table_size().unwrap()
        );
        if !r.is_short() {
            assert!(r.table >= wanted, "{r:?}");
        }
        // The duplicate is closed again: its number is free.
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open("/dev/null").unwrap();
        let highest = i32::try_from(r.table - 1).unwrap();
        let again = rustix::io::fcntl_dupfd_cloexec(&f, highest).unwrap();
        assert_eq!(again.as_raw_fd(), highest);
    }

    #[test]
    fn never_lowers_the_limit() {
        let r = reserve(8).unwrap();
        assert_eq!(r.limit, r.limit_before);
        assert!(r.limit >= 8);
        assert!(!r.is_short());
    }

    #[test]
    fn counts_one_descriptor_per_call_plus_the_margin() {
        assert_eq!(for_calls(1000), 1000 + SIGNALLING_MARGIN);
        assert_eq!(for_calls(usize::MAX), u64::MAX);
    }
}
