//! Port blocks that no two test processes (nor two tests in one process) use at once.
//!
//! Ports 20000–29999 are cut into [`BLOCKS`] blocks of [`PortBlock::SIZE`]. Block `k` is
//! owned by whoever holds UDP 127.0.0.1:`LOCK_BASE + k` bound: the kernel arbitrates, so
//! the scheme works across the parallel test binaries and worktrees of this machine. The
//! whole area lies below Linux's ephemeral range (32768–60999), so sockets bound to port 0
//! by anyone never land in a block.
//!
//! Within a block the first [`PortBlock::RTP_PORTS`] ports are for the server's
//! `--rtp-ports`; the rest are auxiliary ports for SIPp (`-p`, `-mp`) and the like.

use std::net::UdpSocket;

const AREA_START: u16 = 20000;
const BLOCKS: u16 = 50;
const LOCK_BASE: u16 = 19000;

/// A reserved range of ports, released when dropped.
#[derive(Debug)]
pub struct PortBlock {
    index: u16,
    _lock: UdpSocket,
}

impl PortBlock {
    /// Ports per block.
    pub const SIZE: u16 = 200;
    /// Ports of a block meant for the server's RTP range (room for 80 RTP/RTCP pairs).
    pub const RTP_PORTS: u16 = 160;

    /// Reserves a free block; panics if all [`BLOCKS`] are taken.
    pub fn reserve() -> PortBlock {
        // Start at a different block in each process so parallel binaries rarely probe the
        // same lock ports first.
        let start = (std::process::id() % u32::from(BLOCKS)) as u16;
        for i in 0..BLOCKS {
            let index = (start + i) % BLOCKS;
            if let Ok(lock) = UdpSocket::bind(("127.0.0.1", LOCK_BASE + index)) {
                return PortBlock { index, _lock: lock };
            }
        }
        panic!(
            "all {BLOCKS} test port blocks are in use (lock ports {LOCK_BASE}..{}); \
             are that many tests running?",
            LOCK_BASE + BLOCKS
        )
    }

    /// First port of the block.
    pub fn first(&self) -> u16 {
        AREA_START + self.index * Self::SIZE
    }

    /// The server's RTP range, inclusive: `(first, last)`.
    pub fn rtp_range(&self) -> (u16, u16) {
        (self.first(), self.first() + Self::RTP_PORTS - 1)
    }

    /// Auxiliary port `i` (0-based, `i < SIZE - RTP_PORTS`), outside the RTP range.
    pub fn aux_port(&self, i: u16) -> u16 {
        assert!(
            i < Self::SIZE - Self::RTP_PORTS,
            "aux port {i} out of the block"
        );
        self.first() + Self::RTP_PORTS + i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_in_one_process_are_distinct_and_inside_the_area() {
        let a = PortBlock::reserve();
        let b = PortBlock::reserve();
        assert_ne!(a.first(), b.first());
        for blk in [&a, &b] {
            let (lo, hi) = blk.rtp_range();
            assert!(lo >= AREA_START && hi < 32768);
            assert!(blk.aux_port(0) > hi);
            assert!(blk.aux_port(39) < blk.first() + PortBlock::SIZE);
        }
    }
}
