//! SIP over UDP and TCP: the listeners, TCP stream framing by Content-Length, size limits, and
//! the addressing types the sans-IO layers use to say where a message goes.

use std::net::SocketAddr;

/// The transports we listen on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    /// The token used in Via and in `transport=` URI parameters.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        }
    }
}

/// Identifies one accepted TCP connection for the life of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Where a message came from or goes to. Over TCP, `conn` names the connection a request
/// arrived on, so its responses go back on it (RFC 3261 §18.2.2).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    pub transport: Transport,
    pub addr: SocketAddr,
    pub conn: Option<ConnId>,
}

impl Peer {
    /// Reliable transports need no retransmissions (RFC 3261 §17.1.1.2, §17.2.1).
    pub fn reliable(&self) -> bool {
        self.transport == Transport::Tcp
    }
}
