//! When an RTP packet arrived: the kernel's receive timestamp (`SO_TIMESTAMPNS`), not the
//! moment the receiving task got to run.
//!
//! Jitter and gaps are what the load generator measures, and it shares the machine with the
//! server: at thousands of calls on two cores a receive task can wait milliseconds for a
//! worker thread, and stamping packets with `Instant::now()` after `recv_from` reported that
//! scheduling delay as the server's jitter and gaps. With `SO_TIMESTAMPNS` the kernel stamps
//! each datagram (CLOCK_REALTIME) when it queues it on the socket, so the figures cover the
//! server and the network path only, however late the packet is read.
//!
//! [`Receiver::try_recv`] reads one datagram with `recvmsg` and its control message, reusing
//! one control buffer per socket (no allocation per packet); [`arrival_instant`] turns the
//! wall-clock stamp into an [`Instant`] by its age. A datagram without a stamp (the option
//! could not be set) is stamped by the caller at the time it is read, as before.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};
use nix::sys::time::TimeSpec;

/// A kernel stamp older than this is taken for a step of the wall clock (NTP, the admin), not
/// for a packet that waited so long in the socket buffer, and is ignored.
pub const MAX_AGE: Duration = Duration::from_secs(10);

/// Asks the kernel to stamp every datagram `socket` receives (`SO_TIMESTAMPNS`).
pub fn enable_timestamps(socket: &impl AsFd) -> io::Result<()> {
    setsockopt(socket, sockopt::ReceiveTimestampns, &true).map_err(io::Error::from)
}

/// Reads datagrams with their kernel receive timestamps; one per socket, reused for every
/// packet.
pub struct Receiver {
    /// Room for one `SCM_TIMESTAMPNS` control message.
    cmsg: Vec<u8>,
}

impl Receiver {
    pub fn new() -> Self {
        Receiver {
            cmsg: nix::cmsg_space!(TimeSpec),
        }
    }

    /// One datagram from the non-blocking `socket` into `buf`: its length and, when the
    /// kernel stamped it, the wall-clock time it was queued. `WouldBlock` when none is
    /// waiting (for tokio's `try_io`).
    pub fn try_recv(
        &mut self,
        socket: &impl AsRawFd,
        buf: &mut [u8],
    ) -> io::Result<(usize, Option<SystemTime>)> {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut self.cmsg),
            MsgFlags::empty(),
        )
        .map_err(io::Error::from)?;
        let stamp = msg.cmsgs().ok().and_then(|mut cmsgs| {
            cmsgs.find_map(|c| match c {
                ControlMessageOwned::ScmTimestampns(ts) => Some(system_time(ts)),
                _ => None,
            })
        });
        Ok((msg.bytes, stamp))
    }
}

impl Default for Receiver {
    fn default() -> Self {
        Receiver::new()
    }
}

fn system_time(ts: TimeSpec) -> SystemTime {
    let since_epoch = Duration::new(
        ts.tv_sec().max(0) as u64,
        ts.tv_nsec().clamp(0, 999_999_999) as u32,
    );
    SystemTime::UNIX_EPOCH + since_epoch
}

/// The [`Instant`] at which a datagram stamped `kernel` arrived, given a reading of both
/// clocks taken together now: `now - (wall_now - kernel)`. A stamp from the future (the
/// wall clock stepped back) or older than [`MAX_AGE`] (stepped forward) gives `now`.
pub fn arrival_instant(kernel: SystemTime, wall_now: SystemTime, now: Instant) -> Instant {
    match wall_now.duration_since(kernel) {
        Ok(age) if age <= MAX_AGE => now.checked_sub(age).unwrap_or(now),
        _ => now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_becomes_an_instant_by_its_age() {
        let now = Instant::now();
        let wall = SystemTime::now();
        let age = Duration::from_micros(7_250);
        assert_eq!(arrival_instant(wall - age, wall, now), now - age);
        assert_eq!(arrival_instant(wall, wall, now), now);
    }

    #[test]
    fn stamps_from_a_stepped_clock_saturate_to_now() {
        let now = Instant::now();
        let wall = SystemTime::now();
        // The wall clock went back after the packet was stamped.
        assert_eq!(
            arrival_instant(wall + Duration::from_millis(3), wall, now),
            now
        );
        // ... or forward by more than a packet can wait.
        assert_eq!(
            arrival_instant(wall - MAX_AGE - Duration::from_secs(1), wall, now),
            now
        );
        assert_eq!(arrival_instant(wall - MAX_AGE, wall, now), now - MAX_AGE);
    }

    #[test]
    fn timespecs_convert_to_wall_clock_time() {
        let t = system_time(TimeSpec::new(1_700_000_000, 123_456_789));
        let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(d, Duration::new(1_700_000_000, 123_456_789));
    }

    #[test]
    fn loopback_datagrams_carry_a_kernel_stamp() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        enable_timestamps(&rx).unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let before = SystemTime::now();
        tx.send_to(b"hello", rx.local_addr().unwrap()).unwrap();
        let mut receiver = Receiver::new();
        let mut buf = [0u8; 64];
        let (n, stamp) = receiver.try_recv(&rx, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        let stamp = stamp.expect("SO_TIMESTAMPNS gives a stamp");
        assert!(stamp >= before - Duration::from_millis(1));
        assert!(stamp <= SystemTime::now());
        // Without the option there is no stamp, and the reader says so.
        let plain = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(b"x", plain.local_addr().unwrap()).unwrap();
        let (n, stamp) = receiver.try_recv(&plain, &mut buf).unwrap();
        assert_eq!((n, stamp), (1, None));
    }
}
