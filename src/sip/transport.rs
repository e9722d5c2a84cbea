//! SIP over UDP and TCP: the listeners, TCP stream framing by Content-Length, size limits, and
//! the addressing types the sans-IO layers use to say where a message goes.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::msg::{MAX_MESSAGE_SIZE, frame_stream, leading_crlf};

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

/// The SIP listeners: UDP and TCP on the same address and port.
pub struct Listeners {
    pub udp: Arc<UdpSocket>,
    pub tcp: TcpListener,
    pub local: SocketAddr,
}

impl Listeners {
    /// Binds UDP and TCP on `addr`. With port 0 the UDP socket picks the port and TCP takes
    /// the same one; if TCP finds it taken, another port is tried (a few times).
    pub async fn bind(addr: SocketAddr) -> io::Result<Listeners> {
        let attempts = if addr.port() == 0 { 20 } else { 1 };
        let mut last_err = None;
        for _ in 0..attempts {
            let udp = UdpSocket::bind(addr).await?;
            let local = udp.local_addr()?;
            match TcpListener::bind(local).await {
                Ok(tcp) => {
                    return Ok(Listeners {
                        udp: Arc::new(udp),
                        tcp,
                        local,
                    });
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("could not bind SIP listeners")))
    }
}

/// What TCP connection tasks report to the signalling core.
#[derive(Debug)]
pub enum TcpInbound {
    Opened {
        conn: ConnId,
        addr: SocketAddr,
        writer: mpsc::UnboundedSender<Vec<u8>>,
    },
    Message {
        peer: Peer,
        bytes: Vec<u8>,
    },
    Closed(ConnId),
}

// ---- TCP flood limits (issue 7) ------------------------------------------------------------

/// The TCP limits: connections per source IP, and how long a connection may sit idle or take
/// over one message (no slowloris).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpLimits {
    pub per_source: usize,
    pub idle_timeout: Duration,
    pub message_timeout: Duration,
}

impl From<&super::limits::Limits> for TcpLimits {
    fn from(l: &super::limits::Limits) -> Self {
        TcpLimits {
            per_source: l.tcp_per_source,
            idle_timeout: l.tcp_idle_timeout,
            message_timeout: l.tcp_message_timeout,
        }
    }
}

/// What the TCP limits did, for logs.
#[derive(Debug, Default)]
pub struct TcpCounters {
    /// Connections closed at accept: their source already had `per_source` open.
    pub refused: AtomicU64,
    /// Connections closed after `idle_timeout` without an octet.
    pub idle_closed: AtomicU64,
    /// Connections closed because a message took longer than `message_timeout`.
    pub slow_closed: AtomicU64,
}

/// Open connections per source IP; a slot is given back when its guard drops.
#[derive(Clone, Default)]
struct PerSource(Arc<Mutex<HashMap<IpAddr, usize>>>);

struct Slot {
    table: PerSource,
    ip: IpAddr,
}

impl PerSource {
    fn take(&self, ip: IpAddr, max: usize) -> Option<Slot> {
        let mut t = self
            .0
            .lock()
            .expect("per-source table lock is never poisoned");
        let n = t.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self
            .table
            .0
            .lock()
            .expect("per-source table lock is never poisoned");
        if let Some(n) = t.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                t.remove(&self.ip);
            }
        }
    }
}

/// Accepts TCP connections and spawns a reader and a writer task for each, within `limits`.
pub fn spawn_tcp_acceptor(
    listener: TcpListener,
    inbound: mpsc::Sender<TcpInbound>,
    limits: TcpLimits,
) -> Arc<TcpCounters> {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let counters = Arc::new(TcpCounters::default());
    let table = PerSource::default();
    let stats = counters.clone();
    tokio::spawn(async move {
        loop {
            let (stream, addr) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "TCP accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let ip = addr.ip().to_canonical();
            let Some(slot) = table.take(ip, limits.per_source) else {
                let n = stats.refused.fetch_add(1, Ordering::Relaxed) + 1;
                // Logged at powers of two: a connection flood must not become a log flood.
                if n.is_power_of_two() {
                    warn!(%addr, per_source = limits.per_source, refused_total = n, "TCP connection refused: source has too many open");
                }
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let conn = ConnId(NEXT.fetch_add(1, Ordering::Relaxed));
            let (read, mut write) = stream.into_split();
            let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
            if inbound
                .send(TcpInbound::Opened {
                    conn,
                    addr,
                    writer: tx,
                })
                .await
                .is_err()
            {
                return;
            }
            tokio::spawn(async move {
                while let Some(bytes) = rx.recv().await {
                    if write.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                let _ = write.shutdown().await;
            });
            let conn_stats = stats.clone();
            let inbound = inbound.clone();
            tokio::spawn(async move {
                read_connection(read, conn, addr, inbound, limits, &conn_stats).await;
                drop(slot);
            });
        }
    });
    counters
}

/// Frames messages off one connection by Content-Length (RFC 3261 §18.3). A stream that
/// cannot be framed (bad or conflicting Content-Length, oversize) is handed on once so the
/// core can answer 400/513, and the connection is closed.
async fn read_connection(
    mut read: tokio::net::tcp::OwnedReadHalf,
    conn: ConnId,
    addr: SocketAddr,
    inbound: mpsc::Sender<TcpInbound>,
    limits: TcpLimits,
    stats: &TcpCounters,
) {
    let peer = Peer {
        transport: Transport::Tcp,
        addr,
        conn: Some(conn),
    };
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    let mut last_octet = tokio::time::Instant::now();
    // When the first octet of the message now in `buf` arrived.
    let mut message_started: Option<tokio::time::Instant> = None;
    'conn: loop {
        loop {
            let skip = leading_crlf(&buf);
            buf.drain(..skip);
            match frame_stream(&buf) {
                Ok(Some(len)) => {
                    message_started = None;
                    let bytes: Vec<u8> = buf.drain(..len).collect();
                    if inbound
                        .send(TcpInbound::Message {
                            peer: peer.clone(),
                            bytes,
                        })
                        .await
                        .is_err()
                    {
                        break 'conn;
                    }
                }
                Ok(None) => {
                    if buf.is_empty() {
                        message_started = None;
                    }
                    break;
                }
                Err(e) => {
                    debug!(%addr, reason = %e.reason, "closing unframeable TCP stream");
                    // One octet over the limit lets the parser answer 513 rather than 400.
                    let end = buf.len().min(MAX_MESSAGE_SIZE + 1);
                    let bytes = buf[..end].to_vec();
                    let _ = inbound
                        .send(TcpInbound::Message {
                            peer: peer.clone(),
                            bytes,
                        })
                        .await;
                    break 'conn;
                }
            }
        }
        if buf.is_empty() {
            message_started = None;
        } else {
            message_started.get_or_insert(last_octet);
        }
        // A partial message must complete within message_timeout of its first octet, however
        // slowly it drips; an empty connection may idle for idle_timeout.
        let deadline = match message_started {
            Some(t) => t + limits.message_timeout,
            None => last_octet + limits.idle_timeout,
        };
        match tokio::time::timeout_at(deadline, read.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                last_octet = tokio::time::Instant::now();
                buf.extend_from_slice(&chunk[..n]);
            }
            Err(_) => {
                let (counter, why) = match message_started {
                    Some(_) => (&stats.slow_closed, "message not complete within the limit"),
                    None => (&stats.idle_closed, "idle"),
                };
                let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
                info!(%addr, reason = why, buffered = buf.len(), closed_total = n, "closing TCP connection");
                break;
            }
        }
    }
    let _ = inbound.send(TcpInbound::Closed(conn)).await;
}

/// The signalling core's view of open TCP connections: where to write.
#[derive(Default)]
pub struct TcpConnections {
    writers: HashMap<ConnId, (SocketAddr, mpsc::UnboundedSender<Vec<u8>>)>,
}

impl TcpConnections {
    pub fn opened(
        &mut self,
        conn: ConnId,
        addr: SocketAddr,
        writer: mpsc::UnboundedSender<Vec<u8>>,
    ) {
        self.writers.insert(conn, (addr, writer));
    }

    pub fn closed(&mut self, conn: ConnId) {
        self.writers.remove(&conn);
    }

    pub fn len(&self) -> usize {
        self.writers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.writers.is_empty()
    }

    /// Queues bytes on the peer's connection, or on any open connection from the same
    /// address when the original one is gone. `false` if no connection can carry them.
    pub fn send(&self, peer: &Peer, bytes: Vec<u8>) -> bool {
        let by_id = peer.conn.and_then(|c| self.writers.get(&c));
        let writer = by_id.or_else(|| self.writers.values().find(|(a, _)| *a == peer.addr));
        match writer {
            Some((_, w)) => w.send(bytes).is_ok(),
            None => false,
        }
    }
}
