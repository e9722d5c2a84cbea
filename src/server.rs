//! The tokio layer that runs a pinbridge server: binds the SIP listeners, feeds every
//! datagram, TCP message, media event and timer into the sans-IO [`Endpoint`], performs its
//! transmits, and turns its call events into media actions. It holds no protocol logic.
//!
//! One signalling task owns the endpoint (no locks on the signalling path); media runs on the
//! engine's workers and talks back over a channel.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tracing::{debug, info, warn};

use crate::admin::Service;
use crate::admin::api::{self, AdminToken, ApiState, Live};
use crate::audio::Assets;
use crate::calls::Calls;
use crate::config::Config;
use crate::media::engine::{Engine, EngineConfig};
use crate::pin::Pepper;
use crate::pin_checks::PinChecks;
use crate::sip::endpoint::{Endpoint, EndpointConfig, LegId};
use crate::sip::transport::{
    Listeners, Peer, TcpConnections, TcpInbound, Transport, spawn_tcp_acceptor,
};
use crate::store::Store;

/// The long-lived services a server runs on, opened before it starts.
pub struct Services {
    pub store: Arc<Store>,
    pub pepper: Arc<Pepper>,
    /// Wakes the email delivery worker: call `notify_one()` after `Store::enqueue_email`.
    pub mail_wake: Arc<tokio::sync::Notify>,
    /// Bearer token of the admin HTTP API (issue 5).
    pub admin_token: Arc<AdminToken>,
}

/// The bound addresses, reported once everything listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    /// SIP, UDP and TCP.
    pub sip: SocketAddr,
    /// The admin HTTP API.
    pub http: SocketAddr,
}

impl std::fmt::Display for Ready {
    /// The stdout ready line: `pinbridge ready sip=IP:PORT http=IP:PORT`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pinbridge ready sip={} http={}", self.sip, self.http)
    }
}

/// How long open admin requests may take to finish after the SIP side has shut down.
const HTTP_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Far enough in the future to mean "no timer".
const IDLE: Duration = Duration::from_secs(3600);

/// Server failures that stop it from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("binding SIP on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("binding the admin HTTP API on {addr}: {source}")]
    BindHttp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("starting media: {0}")]
    Media(String),
    #[error("starting the PIN check threads: {0}")]
    PinChecks(#[source] std::io::Error),
    #[error("setting up email: {0}")]
    Mail(#[from] crate::notify::NotifyError),
    #[error("SIP socket: {0}")]
    Io(#[from] std::io::Error),
}

/// Binds, then reports the bound SIP and HTTP addresses through `ready`, then serves until
/// `shutdown` resolves; then hangs up every call and waits (at most `shutdown_grace`) for the
/// BYEs, and stops the admin API.
pub async fn run(
    cfg: Config,
    assets: Arc<Assets>,
    services: Services,
    ready: impl FnOnce(Ready),
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let mailer = crate::notify::Mailer::new(&cfg.mail)?;
    let listeners = Listeners::bind(cfg.sip_listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: cfg.sip_listen,
            source,
        })?;
    let local = listeners.local;
    let (media_tx, mut media_rx) = mpsc::unbounded_channel();
    let engine = Engine::start(
        EngineConfig {
            bind_ip: cfg.sip_listen.ip(),
            rtp_ports: cfg.rtp_ports.clone(),
            rtp_timeout: cfg.rtp_timeout,
            workers: cfg.media_workers,
        },
        media_tx,
    )
    .map_err(|e| ServerError::Media(e.to_string()))?;
    let live = Arc::new(Live::default());
    let _ = live.engine.set(engine.clone());
    let mut endpoint = Endpoint::new(EndpointConfig {
        sip_addr: SocketAddr::new(cfg.advertise_ip, local.port()),
        media_ip: cfg.advertise_ip,
        user_agent: format!("pinbridge/{}", env!("CARGO_PKG_VERSION")),
    })
    // ---- flood limits (issue 7)
    .with_limits(cfg.limits);
    info!(limits = ?cfg.limits, "flood limits");
    let (tcp_tx, mut tcp_rx) = mpsc::channel(1024);
    let _tcp_counters = spawn_tcp_acceptor(listeners.tcp, tcp_tx, (&cfg.limits).into());
    // ---- end flood limits
    let udp = listeners.udp;
    // ---- admin HTTP API (issue 5): its own listener and task, the same store and pepper.
    let http_listener = tokio::net::TcpListener::bind(cfg.http_listen)
        .await
        .map_err(|source| ServerError::BindHttp {
            addr: cfg.http_listen,
            source,
        })?;
    let http_local = http_listener.local_addr()?;
    let public_url = cfg
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{http_local}"));
    let router = api::router_with(
        ApiState {
            service: Service::new(
                services.store.clone(),
                services.pepper.clone(),
                services.mail_wake.clone(),
            ),
            token: services.admin_token.clone(),
            live: live.clone(),
        },
        crate::admin::web::routes(crate::admin::web::Web::new(public_url)),
    );
    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http_task = tokio::spawn(async move {
        let stop = async {
            let _ = http_stopped.await;
        };
        if let Err(e) = api::serve(http_listener, router, stop).await {
            warn!(error = %e, "admin HTTP API stopped");
        }
    });
    // ---- end admin HTTP API

    info!(sip = %local, http = %http_local, rtp = ?cfg.rtp_ports, "pinbridge listening");
    ready(Ready {
        sip: local,
        http: http_local,
    });

    let delivery = crate::notify::Delivery::spawn(
        services.store.clone(),
        mailer,
        crate::notify::RetryPolicy::default(),
        services.mail_wake,
    );
    let (jobs_tx, mut jobs_rx) = mpsc::unbounded_channel();
    let mut calls = Calls::new(
        engine,
        assets,
        services.store,
        services.pepper,
        PinChecks::start(PinChecks::default_threads()).map_err(ServerError::PinChecks)?,
        cfg.dtmf_mode,
        cfg.ivr.clone(),
        cfg.bridge,
        jobs_tx,
    )
    .with_trusted_trunks(cfg.trusted_trunks.clone());
    let mut io = Io {
        tcp: TcpConnections::default(),
        udp: udp.clone(),
    };
    let mut buf = vec![0u8; 65_536];
    tokio::pin!(shutdown);
    let mut stopping: Option<Instant> = None;
    loop {
        let deadline = [endpoint.poll_timeout(), calls.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
            .map(Instant::from_std)
            .unwrap_or_else(|| Instant::now() + IDLE);
        let deadline = match stopping {
            Some(s) => deadline.min(s),
            None => deadline,
        };
        tokio::select! {
            r = udp.recv_from(&mut buf) => match r {
                Ok((n, src)) => {
                    let peer = Peer { transport: Transport::Udp, addr: src, conn: None };
                    endpoint.handle_datagram(std::time::Instant::now(), &buf[..n], peer);
                }
                // ICMP port unreachable surfaces as ECONNREFUSED on Linux: not fatal.
                Err(e) => debug!(error = %e, "UDP receive error"),
            },
            Some(ev) = tcp_rx.recv() => match ev {
                TcpInbound::Opened { conn, addr, writer } => io.tcp.opened(conn, addr, writer),
                TcpInbound::Message { peer, bytes } => endpoint.handle_datagram(std::time::Instant::now(), &bytes, peer),
                TcpInbound::Closed(conn) => io.tcp.closed(conn),
            },
            Some(ev) = media_rx.recv() => calls.media_event(std::time::Instant::now(), ev, &mut endpoint),
            Some(job) = jobs_rx.recv() => calls.job_done(std::time::Instant::now(), job, &mut endpoint),
            _ = sleep_until(deadline) => {
                if stopping.is_some_and(|s| s <= Instant::now()) {
                    warn!(calls = endpoint.leg_count(), "shutdown grace period over; exiting with calls still up");
                    break;
                }
                let now = std::time::Instant::now();
                endpoint.handle_timeout(now);
                calls.handle_timeout(now, &mut endpoint);
            }
            _ = &mut shutdown, if stopping.is_none() => {
                info!(calls = endpoint.leg_count(), "shutting down: hanging up every call");
                stopping = Some(Instant::now() + cfg.shutdown_grace);
                let now = std::time::Instant::now();
                let legs: Vec<LegId> = endpoint.legs().collect();
                for leg in legs {
                    endpoint.hangup(now, leg);
                }
            }
        }
        io.drain(&mut endpoint, &mut calls).await;
        live.publish(&calls, &endpoint);
        if stopping.is_some() && endpoint.leg_count() == 0 {
            info!("all calls ended; bye");
            break;
        }
    }
    delivery.shutdown(cfg.shutdown_grace).await;
    let _ = http_stop.send(());
    if tokio::time::timeout(HTTP_SHUTDOWN_GRACE, http_task)
        .await
        .is_err()
    {
        warn!("admin HTTP requests still open after the grace period; exiting anyway");
    }
    Ok(())
}

/// The signalling sockets: where the endpoint's transmits go.
struct Io {
    tcp: TcpConnections,
    udp: Arc<tokio::net::UdpSocket>,
}

impl Io {
    /// Performs everything the endpoint queued and hands its call events to `calls`, until
    /// both are quiet.
    async fn drain(&mut self, endpoint: &mut Endpoint, calls: &mut Calls) {
        loop {
            let mut progressed = false;
            while let Some(t) = endpoint.poll_transmit() {
                progressed = true;
                debug!(to = %t.peer.addr, transport = t.peer.transport.as_str(), start = %first_line(&t.bytes), "sending");
                match t.peer.transport {
                    Transport::Udp => {
                        if let Err(e) = self.udp.send_to(&t.bytes, t.peer.addr).await {
                            debug!(error = %e, to = %t.peer.addr, "UDP send failed");
                        }
                    }
                    Transport::Tcp => {
                        if !self.tcp.send(&t.peer, t.bytes) {
                            debug!(to = %t.peer.addr, "no TCP connection to send on");
                        }
                    }
                }
            }
            while let Some(ev) = endpoint.poll_event() {
                progressed = true;
                calls.call_event(std::time::Instant::now(), ev, endpoint);
            }
            if !progressed {
                break;
            }
        }
    }
}

/// The start line of a SIP message, for one-line logs.
fn first_line(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    let end = bytes
        .iter()
        .position(|b| *b == b'\r')
        .unwrap_or(bytes.len().min(120));
    String::from_utf8_lossy(&bytes[..end])
}

/// Waits for SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}
