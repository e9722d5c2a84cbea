//! The tokio layer that runs a pinbridge server: binds the SIP listeners, feeds every
//! datagram, TCP message, media event and timer into the sans-IO [`Endpoint`], performs its
//! transmits, and turns its call events into media actions. It holds no protocol logic.
//!
//! One signalling task owns the endpoint (no locks on the signalling path); media runs on the
//! engine's workers and talks back over a channel.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tracing::{Span, debug, info, info_span, warn};

use crate::audio::{Assets, Sound};
use crate::config::Config;
use crate::media::dtmf::stream::{DigitStream, DtmfMode};
use crate::media::engine::{Engine, EngineConfig, MediaEvent, MediaParams, SessionId};
use crate::media::player::PlayMode;
use crate::sip::endpoint::{Endpoint, EndpointConfig, Event, LegId};
use crate::sip::transport::{
    Listeners, Peer, TcpConnections, TcpInbound, Transport, spawn_tcp_acceptor,
};

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
    #[error("starting media: {0}")]
    Media(String),
    #[error("SIP socket: {0}")]
    Io(#[from] std::io::Error),
}

/// What the server knows about a live call besides what the endpoint keeps.
struct CallCtx {
    span: Span,
    signalling_ip: IpAddr,
    /// The call's one stream of key presses, merged from RFC 4733, INFO and in-band.
    digits: DigitStream,
}

impl CallCtx {
    /// Hands merged digits on. Until the IVR exists they are only logged (at debug); the
    /// IVR will take them from here.
    fn drain_digits(&mut self) {
        while let Some(d) = self.digits.poll_digit() {
            self.span
                .in_scope(|| debug!(key = %d.key, method = ?d.method, "dtmf digit"));
        }
    }
}

/// Binds, then reports the bound SIP address through `ready`, then serves until `shutdown`
/// resolves; then hangs up every call and waits (at most `shutdown_grace`) for the BYEs.
pub async fn run(
    cfg: Config,
    assets: Arc<Assets>,
    ready: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
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
    let mut endpoint = Endpoint::new(EndpointConfig {
        sip_addr: SocketAddr::new(cfg.advertise_ip, local.port()),
        media_ip: cfg.advertise_ip,
        user_agent: format!("pinbridge/{}", env!("CARGO_PKG_VERSION")),
    });
    let (tcp_tx, mut tcp_rx) = mpsc::channel(1024);
    spawn_tcp_acceptor(listeners.tcp, tcp_tx);
    let udp = listeners.udp;
    info!(sip = %local, rtp = ?cfg.rtp_ports, "pinbridge listening");
    ready(local);

    let mut app = App {
        engine,
        dtmf_mode: cfg.dtmf_mode,
        assets,
        calls: HashMap::new(),
        tcp: TcpConnections::default(),
        udp: udp.clone(),
    };
    let mut buf = vec![0u8; 65_536];
    tokio::pin!(shutdown);
    let mut stopping: Option<Instant> = None;
    loop {
        let deadline = endpoint
            .poll_timeout()
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
                TcpInbound::Opened { conn, addr, writer } => app.tcp.opened(conn, addr, writer),
                TcpInbound::Message { peer, bytes } => endpoint.handle_datagram(std::time::Instant::now(), &bytes, peer),
                TcpInbound::Closed(conn) => app.tcp.closed(conn),
            },
            Some(ev) = media_rx.recv() => app.media_event(&mut endpoint, ev),
            _ = sleep_until(deadline) => {
                if stopping.is_some_and(|s| s <= Instant::now()) {
                    warn!(calls = endpoint.leg_count(), "shutdown grace period over; exiting with calls still up");
                    break;
                }
                endpoint.handle_timeout(std::time::Instant::now());
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
        app.drain(&mut endpoint).await;
        if stopping.is_some() && endpoint.leg_count() == 0 {
            info!("all calls ended; bye");
            break;
        }
    }
    Ok(())
}

/// The application side of the endpoint: media and call bookkeeping.
struct App {
    engine: Engine,
    dtmf_mode: DtmfMode,
    assets: Arc<Assets>,
    calls: HashMap<LegId, CallCtx>,
    tcp: TcpConnections,
    udp: Arc<tokio::net::UdpSocket>,
}

impl App {
    /// Performs everything the endpoint queued, until it is quiet.
    async fn drain(&mut self, endpoint: &mut Endpoint) {
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
                self.call_event(endpoint, ev);
            }
            if !progressed {
                break;
            }
        }
    }

    fn call_event(&mut self, endpoint: &mut Endpoint, ev: Event) {
        let now = std::time::Instant::now();
        match ev {
            Event::Incoming { leg, call } => {
                let from_user = call.from.uri.user.clone().unwrap_or_default();
                let span = info_span!("call", leg = leg.0, call_id = %call.call_id, from_user = %from_user);
                let signalling_ip = call.source.addr.ip();
                span.in_scope(|| {
                    info!(to = %call.request_uri, source = %call.source.addr, anonymous = call.anonymous, "incoming call")
                });
                match self.engine.open(SessionId(leg.0)) {
                    Ok(port) => {
                        let digits = DigitStream::new(self.dtmf_mode, None);
                        self.calls.insert(
                            leg,
                            CallCtx {
                                span,
                                signalling_ip,
                                digits,
                            },
                        );
                        endpoint.accept(now, leg, port);
                    }
                    Err(e) => {
                        span.in_scope(|| warn!(error = %e, "no media port; rejecting"));
                        endpoint.reject(now, leg, 503, "Service Unavailable");
                    }
                }
            }
            Event::Media { leg, negotiated } => {
                let Some(ctx) = self.calls.get_mut(&leg) else {
                    return;
                };
                ctx.digits.set_telephone_event(negotiated.telephone_event);
                ctx.span.in_scope(|| info!(codec = ?negotiated.codec, remote = ?negotiated.remote, direction = ?negotiated.direction, dtmf_pt = ?negotiated.telephone_event, "media negotiated"));
                let params = MediaParams {
                    remote: negotiated.remote,
                    signalling_ip: ctx.signalling_ip,
                    codec: negotiated.codec,
                    payload_type: negotiated.payload_type,
                    telephone_event: negotiated.telephone_event,
                    direction: negotiated.direction,
                    inband_dtmf: ctx.digits.wants_inband(),
                };
                if let Err(e) = self.engine.configure(SessionId(leg.0), params) {
                    ctx.span
                        .in_scope(|| warn!(error = %e, "media configure failed"));
                }
            }
            Event::Confirmed { leg } => {
                let Some(ctx) = self.calls.get(&leg) else {
                    return;
                };
                ctx.span.in_scope(|| info!("call up; playing greeting"));
                let greeting = self.assets.clip(Sound::Greeting).clone();
                if let Err(e) = self.engine.play(SessionId(leg.0), greeting, PlayMode::Once) {
                    ctx.span
                        .in_scope(|| warn!(error = %e, "cannot play greeting"));
                }
            }
            Event::InfoDigit { leg, key, at } => {
                if let Some(ctx) = self.calls.get_mut(&leg) {
                    ctx.digits.handle_info(at, key);
                    ctx.drain_digits();
                }
            }
            Event::Ended { leg, reason } => {
                self.engine.close(SessionId(leg.0));
                if let Some(ctx) = self.calls.remove(&leg) {
                    ctx.span.in_scope(|| info!(?reason, "call ended"));
                }
            }
        }
    }

    fn media_event(&mut self, endpoint: &mut Endpoint, ev: MediaEvent) {
        match ev {
            MediaEvent::RtpTimeout(SessionId(id)) => {
                let leg = LegId(id);
                if let Some(ctx) = self.calls.get(&leg) {
                    let span = ctx.span.clone();
                    span.in_scope(|| info!("no RTP received; hanging up"));
                }
                endpoint.hangup(std::time::Instant::now(), leg);
            }
            MediaEvent::Digit {
                session: SessionId(id),
                digit,
            } => {
                if let Some(ctx) = self.calls.get_mut(&LegId(id)) {
                    ctx.digits.handle(digit);
                    ctx.drain_digits();
                }
            }
            MediaEvent::PlaybackFinished {
                session: SessionId(id),
                clip,
            } => {
                if let Some(ctx) = self.calls.get(&LegId(id)) {
                    ctx.span.in_scope(|| debug!(%clip, "playback finished"));
                }
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
