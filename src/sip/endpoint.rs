//! The sans-IO SIP user-agent server core: routes every message to its transaction or
//! dialog, answers what it can answer alone (OPTIONS, 4xx/5xx for bad or unsupported
//! requests, 481 for unknown dialogs, CANCEL), negotiates SDP, and tells the application
//! about calls through [`Event`]s.
//!
//! The application decides whether to take a call (`accept`/`reject`), when to end it
//! (`hangup`), and runs the media. Driving is the usual vocabulary: `handle_datagram`,
//! `handle_timeout`, then drain `poll_transmit`, `poll_event`, and sleep until
//! `poll_timeout`. Time is always passed in.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use rand::RngExt;
use tracing::{debug, info, warn};

use super::dialog::{Dialog, DialogId};
use super::hashed::Hashed;
use super::limits::{Limits, SourceLimiter, Verdict};
use super::msg::{self, Message, Method, NameAddr, ParseError, Request, Response, Scheme, Uri};
use super::sdp::{self, LocalMedia, Negotiated};
use super::transaction::{
    InviteServer, InviteServerState, NonInviteClient, NonInviteServer, ServerTransaction, Transmit,
    TwoXxRetransmit, TxEvent, TxKey,
};
use super::transport::{Peer, Transport};
use crate::media::Direction;
use crate::media::dtmf::{self, Key};

/// Methods we implement, for `Allow` (RFC 3261 §20.5).
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE";
/// Bodies we understand, for `Accept` (RFC 3261 §20.1).
pub const ACCEPT: &str = "application/sdp, application/dtmf-relay, application/dtmf";

/// Identifies one call leg inside this process (not the SIP Call-ID, which the peer picks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LegId(pub u64);

/// Static facts the endpoint puts into messages.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// The address we advertise in Contact and Via (`ip:port` of our SIP listener).
    pub sip_addr: SocketAddr,
    /// The address we advertise for media in SDP.
    pub media_ip: IpAddr,
    /// Goes into `User-Agent` / `Server`.
    pub user_agent: String,
}

/// What the application learns about a new call.
#[derive(Debug, Clone)]
pub struct IncomingCall {
    pub call_id: String,
    pub from: NameAddr,
    pub to: NameAddr,
    pub request_uri: Uri,
    pub source: Peer,
    /// The caller withheld their identity (RFC 3323 `Privacy: id`, or an `anonymous` user or
    /// `anonymous.invalid` host, RFC 3261 §8.1.1.3).
    pub anonymous: bool,
    /// The user part of the first P-Asserted-Identity (RFC 3325), %-decoded, if any: the
    /// caller's number as a trusted trunk asserts it (see `crate::source`).
    pub asserted_user: Option<String>,
}

/// Why a leg ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// The caller sent BYE.
    RemoteBye,
    /// The caller cancelled before we answered.
    Cancelled,
    /// We rejected the INVITE with this status.
    Rejected(u16),
    /// We hung up (the BYE was answered or timed out).
    LocalHangup,
    /// No ACK for our 2xx within 64·T1 (RFC 3261 §13.3.1.4); we sent BYE.
    NoAck,
    /// The transport could not deliver to the peer.
    TransportError,
}

/// What the endpoint tells the application.
#[derive(Debug, Clone)]
pub enum Event {
    /// A new INVITE that passed every check: answer with `accept` or `reject`.
    Incoming { leg: LegId, call: Box<IncomingCall> },
    /// Media parameters were (re)negotiated: configure RTP accordingly.
    Media { leg: LegId, negotiated: Negotiated },
    /// The caller acknowledged our 2xx: the call is up.
    Confirmed { leg: LegId },
    /// A DTMF key sent by SIP INFO inside the dialog; already answered 200.
    InfoDigit { leg: LegId, key: Key, at: Instant },
    /// The leg is gone; release its media.
    Ended { leg: LegId, reason: EndReason },
}

/// Counters an operator wants to see.
#[derive(Debug, Clone, Default)]
pub struct EndpointStats {
    pub requests: u64,
    pub responses: u64,
    /// Messages we could not parse and could not answer.
    pub dropped: u64,
    /// Requests rejected with a 4xx/5xx before reaching a call.
    pub rejected: u64,
    pub calls_started: u64,
    pub calls_ended: u64,
    // ---- flood limits (issue 7) ----
    /// Messages dropped unread because their source was over `Limits::messages`.
    pub flood_dropped: u64,
    /// New INVITEs answered `503` because their source was over `Limits::invites`.
    pub invite_503: u64,
    /// New INVITEs dropped unanswered (over the limit, and already told).
    pub invite_dropped: u64,
    /// New INVITEs answered `503` because `Limits::max_calls` calls were up.
    pub busy_503: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LegState {
    /// INVITE received and checked; the application is deciding.
    Offered,
    /// 2xx sent; waiting for the ACK.
    Answered,
    Confirmed,
    /// Our BYE is in flight.
    Terminating,
}

#[derive(Debug)]
struct Leg {
    state: LegState,
    invite: Request,
    invite_key: TxTableKey,
    source: Peer,
    response_peer: Peer,
    local_tag: String,
    dialog: Option<Dialog>,
    media: Option<LocalMedia>,
    /// Our offer awaits the peer's answer in an ACK (late offer, RFC 3261 §13.2.1).
    offered_in_2xx: bool,
    /// The 2xx of the INVITE (or re-INVITE) awaiting ACK, and its CSeq.
    two_xx: Option<(u32, TwoXxRetransmit)>,
    bye_branch: Option<String>,
    /// Set when the leg ends once the BYE completes.
    end_reason: Option<EndReason>,
}

/// A server transaction's key, hashed once (see [`super::hashed`] for why).
type TxTableKey = Hashed<TxKey>;

fn server_key(req: &Request, for_invite: bool) -> TxTableKey {
    Hashed::new(TxKey::server(req, for_invite))
}

/// Which machine a heap entry wakes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Wake {
    InviteServer(u64),
    NonInviteServer(u64),
    Client(u64),
    TwoXx(LegId),
}

/// The SIP user-agent server core.
pub struct Endpoint {
    cfg: EndpointConfig,
    next_id: u64,
    next_leg: u64,
    // Tables keyed by `Hashed` keys with boxed values: growing one (tens of thousands of
    // transactions at 1000 calls a second) moves 16-byte entries and hashes no strings.
    invite_servers: HashMap<TxTableKey, Box<(u64, InviteServer, Option<LegId>)>>,
    non_invite_servers: HashMap<TxTableKey, Box<(u64, NonInviteServer)>>,
    clients: HashMap<String, (u64, NonInviteClient, LegId)>,
    /// Transaction numbers to keys, so timer wakes find their machine.
    wake_keys: HashMap<u64, TxTableKey>,
    client_branches: HashMap<u64, String>,
    /// Boxed: a `Leg` is 1.5 KB, and a table of thousands growing copied megabytes while
    /// INVITEs waited.
    legs: HashMap<LegId, Box<Leg>>,
    dialogs: HashMap<Hashed<DialogId>, LegId>,
    timers: BinaryHeap<Reverse<(Instant, Wake)>>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: EndpointStats,
    // ---- flood limits (issue 7) ----
    limits: Limits,
    message_limiter: SourceLimiter,
    invite_limiter: SourceLimiter,
}

impl Endpoint {
    pub fn new(cfg: EndpointConfig) -> Self {
        Endpoint {
            cfg,
            next_id: 1,
            next_leg: 1,
            invite_servers: HashMap::new(),
            non_invite_servers: HashMap::new(),
            clients: HashMap::new(),
            wake_keys: HashMap::new(),
            client_branches: HashMap::new(),
            legs: HashMap::new(),
            dialogs: HashMap::new(),
            timers: BinaryHeap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: EndpointStats::default(),
            limits: Limits::default(),
            message_limiter: SourceLimiter::new(
                Limits::default().messages,
                Limits::default().retry_after,
            ),
            invite_limiter: SourceLimiter::new(
                Limits::default().invites,
                Limits::default().retry_after,
            ),
        }
    }

    /// Replaces the flood limits (issue 7); [`Limits::default`] applies otherwise.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.message_limiter = SourceLimiter::new(limits.messages, limits.retry_after);
        self.invite_limiter = SourceLimiter::new(limits.invites, limits.retry_after);
        self.limits = limits;
        self
    }

    pub fn stats(&self) -> &EndpointStats {
        &self.stats
    }

    /// Number of legs in any state.
    pub fn leg_count(&self) -> usize {
        self.legs.len()
    }

    /// The Call-ID of a live leg, for logs about it.
    pub fn call_id(&self, leg: LegId) -> Option<&str> {
        self.legs.get(&leg).map(|l| l.invite.call_id.as_str())
    }

    pub fn legs(&self) -> impl Iterator<Item = LegId> + '_ {
        self.legs.keys().copied()
    }

    /// Open transactions, for tests and metrics.
    pub fn transaction_count(&self) -> usize {
        self.invite_servers.len() + self.non_invite_servers.len() + self.clients.len()
    }

    /// One datagram (UDP) or one framed message (TCP) from `source`.
    pub fn handle_datagram(&mut self, now: Instant, bytes: &[u8], source: Peer) {
        // Before parsing, so a flood costs a hash lookup per message.
        if self.message_limiter.check(now, source.addr.ip()) != Verdict::Allow {
            self.stats.flood_dropped += 1;
            if self.stats.flood_dropped.is_power_of_two() {
                warn!(from = %source.addr, dropped_total = self.stats.flood_dropped, "SIP message flood: dropping messages over the per-source limit");
            }
            return;
        }
        match msg::parse(bytes) {
            Ok(Message::Request(req)) => {
                self.stats.requests += 1;
                debug!(method = %req.method, call_id = %req.call_id, cseq = req.cseq.seq, from = %source.addr, "request");
                self.handle_request(now, req, source);
            }
            Ok(Message::Response(resp)) => {
                self.stats.responses += 1;
                debug!(status = resp.status, call_id = %resp.call_id, from = %source.addr, "response");
                self.handle_response(now, resp);
            }
            Err(ParseError {
                reply: Some(reply),
                reason,
            }) => {
                self.stats.rejected += 1;
                info!(status = reply.status, %reason, from = %source.addr, "rejecting malformed request");
                let mut head = *reply.head;
                stamp_via(&mut head, &source);
                let peer = response_peer(&head, &source);
                if head.method == Method::Ack {
                    return; // never answer an ACK (RFC 3261 §17.2.1)
                }
                let resp = self.response(&head, reply.status, &reason, None);
                self.transmits.push_back(Transmit {
                    bytes: resp.to_bytes(),
                    peer,
                });
            }
            Err(e) => {
                self.stats.dropped += 1;
                debug!(reason = %e.reason, from = %source.addr, "dropped unparseable message");
            }
        }
    }

    /// Take the call: answer with 200 OK and SDP for media on `port`.
    pub fn accept(&mut self, now: Instant, leg_id: LegId, port: u16) {
        let Some(leg) = self.legs.get_mut(&leg_id) else {
            return;
        };
        if leg.state != LegState::Offered {
            return;
        }
        let mut rng = rand::rng();
        let media = LocalMedia {
            addr: self.cfg.media_ip,
            port,
            session_id: rng.random_range(1..u32::MAX as u64),
            session_version: 1,
        };
        let (body, negotiated) = if leg.invite.body.is_empty() {
            leg.offered_in_2xx = true;
            (sdp::offer(&media, Direction::SendRecv), None)
        } else {
            match sdp::answer(&leg.invite.body, &media) {
                Ok(a) => (a.sdp, Some(a.negotiated)),
                Err(e) => {
                    // Checked on arrival; only reachable if the offer changed meaning.
                    let status = e.sip_status();
                    self.finish_offered(
                        now,
                        leg_id,
                        status,
                        &reason_for(status),
                        Some(warning(&e)),
                    );
                    return;
                }
            }
        };
        leg.media = Some(media);
        let dialog = Dialog::from_invite(&leg.invite, &leg.local_tag, leg.source.clone());
        self.dialogs.insert(Hashed::new(dialog.id.clone()), leg_id);
        leg.dialog = Some(dialog);
        leg.state = LegState::Answered;
        let leg = &self.legs[&leg_id];
        let resp = self.ok_with_sdp(&leg.invite, &leg.local_tag, body, &leg.source);
        let bytes = resp.to_bytes();
        let leg = self.legs.get_mut(&leg_id).expect("leg exists");
        let cseq = leg.invite.cseq.seq;
        leg.two_xx = Some((
            cseq,
            TwoXxRetransmit::new(now, bytes.clone(), leg.response_peer.clone()),
        ));
        let key = leg.invite_key.clone();
        self.respond_invite(now, &key, bytes, 200);
        self.schedule(Wake::TwoXx(leg_id), now);
        if let Some(n) = negotiated {
            self.events.push_back(Event::Media {
                leg: leg_id,
                negotiated: n,
            });
        }
    }

    /// Refuse the call with `status` (e.g. 486, 503).
    pub fn reject(&mut self, now: Instant, leg: LegId, status: u16, reason: &str) {
        if self
            .legs
            .get(&leg)
            .is_some_and(|l| l.state == LegState::Offered)
        {
            self.finish_offered(now, leg, status, reason, None);
        }
    }

    /// Like [`Endpoint::reject`], with a `Warning` (RFC 3261 §20.43, code 399
    /// "miscellaneous") whose text says why, for refusals a person should understand from a
    /// trace (a blocked source's `403`).
    pub fn reject_with_warning(
        &mut self,
        now: Instant,
        leg: LegId,
        status: u16,
        reason: &str,
        text: &str,
    ) {
        if self
            .legs
            .get(&leg)
            .is_some_and(|l| l.state == LegState::Offered)
        {
            self.finish_offered(now, leg, status, reason, Some(warning_value(399, text)));
        }
    }

    /// End the call from our side: BYE once answered, a final error response before that.
    pub fn hangup(&mut self, now: Instant, leg_id: LegId) {
        self.hangup_with(now, leg_id, EndReason::LocalHangup);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Reverse((_, wake)) = self.timers.pop().expect("peeked");
            self.wake(now, wake);
        }
    }

    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    fn handle_request(&mut self, now: Instant, mut req: Request, source: Peer) {
        stamp_via(&mut req, &source);
        let peer = response_peer(&req, &source);
        match req.method {
            Method::Ack => return self.handle_ack(now, req),
            Method::Cancel => return self.handle_cancel(now, req, peer),
            _ => {}
        }
        let key = server_key(&req, false);
        if req.method == Method::Invite {
            if let Some((_, tx, _)) = self.invite_servers.get_mut(&key).map(|e| &mut **e) {
                // The transaction resends its last response (100, or our 2xx in Accepted).
                tx.handle_request(now, &req);
                self.drain_invite_server(&key);
                return;
            }
        } else if let Some((_, tx)) = self.non_invite_servers.get_mut(&key).map(|e| &mut **e) {
            tx.handle_request(now);
            self.drain_non_invite_server(&key);
            return;
        }
        if let Some(status) = self.precheck(&req) {
            return self.reply(now, &req, peer, status);
        }
        if req.to.tag().is_some() {
            return self.in_dialog(now, req, peer, source);
        }
        match req.method {
            Method::Invite => {
                if self.admit_invite(now, &req, &peer, &source) {
                    self.new_invite(now, req, peer, source)
                }
            }
            // Stateless (RFC 3261 §8.2.7): an OPTIONS flood leaves no transactions behind.
            Method::Options => self.reply_stateless(&req, peer, Reply::Options),
            Method::Bye | Method::Info | Method::Update => self.reply(
                now,
                &req,
                peer,
                Reply::plain(481, "Call/Transaction Does Not Exist"),
            ),
            Method::Other(_) => self.reply(now, &req, peer, Reply::plain(501, "Not Implemented")),
            _ => self.reply(now, &req, peer, Reply::MethodNotAllowed),
        }
    }

    /// The flood limits on a new call (issue 7): per source, then the global call count.
    /// `false` when the INVITE was answered `503` or dropped.
    fn admit_invite(&mut self, now: Instant, req: &Request, peer: &Peer, source: &Peer) -> bool {
        match self.invite_limiter.check(now, source.addr.ip()) {
            Verdict::Allow => {}
            Verdict::Reject => {
                self.stats.invite_503 += 1;
                warn!(from = %source.addr, rejected_total = self.stats.invite_503, dropped_total = self.stats.invite_dropped, "INVITE flood: source over its call rate; 503, then silence for {:?}", self.limits.retry_after);
                self.busy(now, req, peer.clone());
                return false;
            }
            Verdict::Drop => {
                self.stats.invite_dropped += 1;
                debug!(from = %source.addr, "INVITE over the source's call rate dropped");
                return false;
            }
        }
        if self.legs.len() >= self.limits.max_calls {
            self.stats.busy_503 += 1;
            warn!(from = %source.addr, calls = self.legs.len(), max_calls = self.limits.max_calls, busy_total = self.stats.busy_503, "call limit reached; 503");
            self.busy(now, req, peer.clone());
            return false;
        }
        true
    }

    /// `503 Service Unavailable` with `Retry-After` (RFC 3261 §21.5.4) to a new INVITE.
    fn busy(&mut self, now: Instant, req: &Request, peer: Peer) {
        let key = server_key(req, false);
        self.start_invite_server(now, key.clone(), peer, None);
        let resp = self
            .response(req, 503, "Service Unavailable", Some(&new_tag()))
            .with_header(
                "Retry-After",
                self.limits.retry_after.as_secs().max(1).to_string(),
            );
        self.stats.rejected += 1;
        self.respond_invite(now, &key, resp.to_bytes(), 503);
    }

    /// Request-level checks every request gets before it reaches a call (RFC 3261 §8.2).
    fn precheck(&self, req: &Request) -> Option<Reply> {
        if let Scheme::Other(s) = &req.uri.scheme {
            let _ = s;
            return Some(Reply::plain(416, "Unsupported URI Scheme"));
        }
        // §8.2.2.3: we implement no extensions, so any required option tag is unsupported.
        let required: Vec<String> = req
            .headers
            .all("Require")
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect();
        if !required.is_empty() && req.method != Method::Cancel && req.method != Method::Ack {
            return Some(Reply::BadExtension(required.join(", ")));
        }
        if matches!(req.method, Method::Invite | Method::Update) && !req.body.is_empty() {
            if req.content_type().as_deref() != Some("application/sdp") {
                return Some(Reply::UnsupportedMedia);
            }
            if req
                .headers
                .get("Content-Encoding")
                .is_some_and(|e| !e.eq_ignore_ascii_case("identity"))
            {
                return Some(Reply::UnsupportedMedia);
            }
        }
        if req.method == Method::Invite {
            let accepts: Vec<String> = req
                .headers
                .all("Accept")
                .flat_map(|v| v.split(','))
                .map(|t| {
                    t.split(';')
                        .next()
                        .unwrap_or_default()
                        .trim()
                        .to_ascii_lowercase()
                })
                .collect();
            let ok = |t: &String| t == "application/sdp" || t == "application/*" || t == "*/*";
            // §8.2.3: an Accept header that rules out SDP means we cannot answer (406).
            if req.headers.count("Accept") > 0 && !accepts.iter().any(ok) {
                return Some(Reply::plain(
                    406,
                    "Not Acceptable: application/sdp required",
                ));
            }
        }
        None
    }

    fn new_invite(&mut self, now: Instant, req: Request, peer: Peer, source: Peer) {
        if !req.body.is_empty() {
            // Check the offer before taking a port: no common codec is a 488 (RFC 3264 §6).
            let probe = LocalMedia {
                addr: self.cfg.media_ip,
                port: 9,
                session_id: 1,
                session_version: 1,
            };
            if let Err(e) = sdp::answer(&req.body, &probe) {
                let status = e.sip_status();
                info!(call_id = %req.call_id, error = %e, "rejecting INVITE offer");
                let key = server_key(&req, false);
                self.start_invite_server(now, key.clone(), peer, None);
                let resp = self
                    .response(&req, status, &reason_for(status), Some(&new_tag()))
                    .with_header("Warning", warning(&e));
                self.respond_invite(now, &key, resp.to_bytes(), status);
                self.stats.rejected += 1;
                return;
            }
        }
        let leg_id = LegId(self.next_leg);
        self.next_leg += 1;
        let key = server_key(&req, false);
        self.start_invite_server(now, key.clone(), peer.clone(), Some(leg_id));
        let local_tag = new_tag();
        let trying = self.response(&req, 100, "Trying", None);
        self.respond_invite(now, &key, trying.to_bytes(), 100);
        let anonymous = is_anonymous(&req);
        let call = IncomingCall {
            call_id: req.call_id.clone(),
            from: req.from.clone(),
            to: req.to.clone(),
            request_uri: req.uri.clone(),
            source: source.clone(),
            anonymous,
            asserted_user: asserted_user(&req),
        };
        self.legs.insert(
            leg_id,
            Box::new(Leg {
                state: LegState::Offered,
                invite: req,
                invite_key: key,
                source,
                response_peer: peer,
                local_tag,
                dialog: None,
                media: None,
                offered_in_2xx: false,
                two_xx: None,
                bye_branch: None,
                end_reason: None,
            }),
        );
        self.stats.calls_started += 1;
        self.events.push_back(Event::Incoming {
            leg: leg_id,
            call: Box::new(call),
        });
    }

    fn in_dialog(&mut self, now: Instant, req: Request, peer: Peer, source: Peer) {
        let id = DialogId {
            call_id: req.call_id.clone(),
            local_tag: req.to.tag().unwrap_or_default().to_string(),
            remote_tag: req.from.tag().unwrap_or_default().to_string(),
        };
        let Some(&leg_id) = self.dialogs.get(&Hashed::new(id)) else {
            return self.reply(
                now,
                &req,
                peer,
                Reply::plain(481, "Call/Transaction Does Not Exist"),
            );
        };
        let leg = self
            .legs
            .get_mut(&leg_id)
            .expect("dialog index points at a leg");
        let dialog = leg.dialog.as_mut().expect("indexed legs have dialogs");
        if !dialog.accept_remote_cseq(&req) {
            return self.reply(now, &req, peer, Reply::plain(500, "CSeq Out of Order"));
        }
        // Keep following the peer if its address changed (NAT rebinding).
        dialog.peer = source;
        match req.method {
            Method::Bye => {
                self.reply(now, &req, peer, Reply::plain(200, "OK"));
                self.end_leg(leg_id, EndReason::RemoteBye);
            }
            Method::Invite => self.reinvite(now, leg_id, req, peer),
            Method::Update => self.update(now, leg_id, req, peer),
            Method::Info => self.info(now, leg_id, req, peer),
            Method::Options => self.reply(now, &req, peer, Reply::Options),
            Method::Other(_) => self.reply(now, &req, peer, Reply::plain(501, "Not Implemented")),
            _ => self.reply(now, &req, peer, Reply::MethodNotAllowed),
        }
    }

    /// INFO inside a dialog: a DTMF key (RFC 6086 usage as phones send it), or an error
    /// status naming what is wrong with the body.
    fn info(&mut self, now: Instant, leg: LegId, req: Request, peer: Peer) {
        // An INFO with no body at all is a keep-alive some UAs send: just answer it.
        if req.body.is_empty() && req.headers.get("Content-Type").is_none() {
            return self.reply(now, &req, peer, Reply::plain(200, "OK"));
        }
        let content_type = req.content_type().unwrap_or_default();
        match dtmf::info::parse(&content_type, &req.body) {
            Ok(key) => {
                self.reply(now, &req, peer, Reply::plain(200, "OK"));
                self.events
                    .push_back(Event::InfoDigit { leg, key, at: now });
            }
            Err(e) if e.sip_status() == 415 => self.reply(now, &req, peer, Reply::UnsupportedMedia),
            Err(e) => self.reply(now, &req, peer, Reply::Status(e.sip_status(), e.reason())),
        }
    }

    /// A re-INVITE: hold, resume, codec change, new media address (RFC 3261 §14.2).
    fn reinvite(&mut self, now: Instant, leg_id: LegId, req: Request, peer: Peer) {
        let key = server_key(&req, false);
        let leg = self.legs.get_mut(&leg_id).expect("caller checked");
        if leg.state != LegState::Confirmed
            || leg.two_xx.as_ref().is_some_and(|(_, r)| !r.is_done())
        {
            // §14.2: an INVITE while another is pending gets 500 with Retry-After.
            self.start_invite_server(now, key.clone(), peer, None);
            let resp = self
                .response(&req, 500, "Server Internal Error", None)
                .with_header("Retry-After", "1");
            return self.respond_invite(now, &key, resp.to_bytes(), 500);
        }
        let Some(mut media) = leg.media else {
            return;
        };
        media.session_version += 1;
        let (body, negotiated) = if req.body.is_empty() {
            leg.offered_in_2xx = true;
            (sdp::offer(&media, Direction::SendRecv), None)
        } else {
            match sdp::answer(&req.body, &media) {
                Ok(a) => (a.sdp, Some(a.negotiated)),
                Err(e) => {
                    // §14.2: a failed re-INVITE leaves the session as it was.
                    let status = e.sip_status();
                    self.start_invite_server(now, key.clone(), peer, None);
                    let resp = self
                        .response(&req, status, &reason_for(status), None)
                        .with_header("Warning", warning(&e));
                    return self.respond_invite(now, &key, resp.to_bytes(), status);
                }
            }
        };
        leg.media = Some(media);
        if let Some(d) = leg.dialog.as_mut() {
            d.refresh_target(&req);
        }
        let local_tag = leg.local_tag.clone();
        self.start_invite_server(now, key.clone(), peer.clone(), Some(leg_id));
        let resp = self.ok_with_sdp(&req, &local_tag, body, &peer);
        let bytes = resp.to_bytes();
        let leg = self.legs.get_mut(&leg_id).expect("caller checked");
        leg.state = LegState::Answered;
        leg.two_xx = Some((req.cseq.seq, TwoXxRetransmit::new(now, bytes.clone(), peer)));
        self.respond_invite(now, &key, bytes, 200);
        self.schedule(Wake::TwoXx(leg_id), now);
        if let Some(n) = negotiated {
            self.events.push_back(Event::Media {
                leg: leg_id,
                negotiated: n,
            });
        }
    }

    /// UPDATE (RFC 3311): a new offer inside the dialog, answered at once.
    fn update(&mut self, now: Instant, leg_id: LegId, req: Request, peer: Peer) {
        let leg = self.legs.get_mut(&leg_id).expect("caller checked");
        if req.body.is_empty() {
            return self.reply(now, &req, peer, Reply::plain(200, "OK"));
        }
        let Some(mut media) = leg.media else {
            return self.reply(now, &req, peer, Reply::plain(491, "Request Pending"));
        };
        media.session_version += 1;
        match sdp::answer(&req.body, &media) {
            Ok(a) => {
                leg.media = Some(media);
                if let Some(d) = leg.dialog.as_mut() {
                    d.refresh_target(&req);
                }
                self.reply(now, &req, peer, Reply::Sdp(a.sdp));
                self.events.push_back(Event::Media {
                    leg: leg_id,
                    negotiated: a.negotiated,
                });
            }
            Err(e) => {
                let status = e.sip_status();
                self.reply(now, &req, peer, Reply::Warning(status, warning(&e)));
            }
        }
    }

    fn handle_ack(&mut self, now: Instant, req: Request) {
        // ACK for a non-2xx final response belongs to the INVITE transaction (§17.2.1).
        let key = server_key(&req, true);
        if let Some((_, tx, _)) = self.invite_servers.get_mut(&key).map(|e| &mut **e)
            && tx.state() == InviteServerState::Completed
        {
            tx.handle_request(now, &req);
            self.drain_invite_server(&key);
            return;
        }
        // ACK for a 2xx is a request of its own inside the dialog (§13.2.2.4).
        let id = DialogId {
            call_id: req.call_id.clone(),
            local_tag: req.to.tag().unwrap_or_default().to_string(),
            remote_tag: req.from.tag().unwrap_or_default().to_string(),
        };
        let Some(&leg_id) = self.dialogs.get(&Hashed::new(id)) else {
            debug!(call_id = %req.call_id, "ACK matches no dialog; dropped");
            return;
        };
        let leg = self
            .legs
            .get_mut(&leg_id)
            .expect("dialog index points at a leg");
        let Some((cseq, r)) = &mut leg.two_xx else {
            return; // retransmitted ACK
        };
        if *cseq != req.cseq.seq || r.is_done() {
            return;
        }
        r.acknowledged();
        let first = leg.state == LegState::Answered && leg.invite.cseq.seq == req.cseq.seq;
        if leg.state == LegState::Answered {
            leg.state = LegState::Confirmed;
        }
        let mut negotiated = None;
        if leg.offered_in_2xx {
            leg.offered_in_2xx = false;
            match sdp::accept_answer(&req.body, Direction::SendRecv) {
                Ok(n) => negotiated = Some(n),
                Err(e) => {
                    // §13.3.1.4 / RFC 3264: an unusable answer in the ACK ends the session.
                    warn!(call_id = %req.call_id, error = %e, "no usable SDP answer in ACK; hanging up");
                    self.hangup_with(now, leg_id, EndReason::LocalHangup);
                    return;
                }
            }
        }
        if let Some(n) = negotiated {
            self.events.push_back(Event::Media {
                leg: leg_id,
                negotiated: n,
            });
        }
        if first {
            self.events.push_back(Event::Confirmed { leg: leg_id });
        }
    }

    fn handle_cancel(&mut self, now: Instant, req: Request, peer: Peer) {
        // §9.2: CANCEL matches the INVITE transaction; it gets its own 200.
        let cancel_key = server_key(&req, false);
        if let Some((_, tx)) = self
            .non_invite_servers
            .get_mut(&cancel_key)
            .map(|e| &mut **e)
        {
            tx.handle_request(now);
            self.drain_non_invite_server(&cancel_key);
            return;
        }
        let invite_key = server_key(&req, true);
        let Some((_, tx, leg)) = self.invite_servers.get(&invite_key).map(|e| &**e) else {
            return self.reply(
                now,
                &req,
                peer,
                Reply::plain(481, "Call/Transaction Does Not Exist"),
            );
        };
        let (state, leg) = (tx.state(), *leg);
        self.reply(now, &req, peer, Reply::plain(200, "OK"));
        if state != InviteServerState::Proceeding {
            return; // already answered: the CANCEL has no effect
        }
        if let Some(leg_id) = leg
            && self
                .legs
                .get(&leg_id)
                .is_some_and(|l| l.state == LegState::Offered)
        {
            let invite = self.legs[&leg_id].invite.clone();
            let tag = self.legs[&leg_id].local_tag.clone();
            let resp = self.response(&invite, 487, "Request Terminated", Some(&tag));
            self.respond_invite(now, &invite_key, resp.to_bytes(), 487);
            self.end_leg(leg_id, EndReason::Cancelled);
        }
    }

    fn handle_response(&mut self, now: Instant, resp: Response) {
        let Some(branch) = resp
            .vias
            .first()
            .and_then(|v| v.branch())
            .map(str::to_string)
        else {
            return;
        };
        let Some((_, tx, _)) = self.clients.get_mut(&branch) else {
            debug!(status = resp.status, "stray response dropped");
            return;
        };
        tx.handle_response(now, resp);
        self.drain_client(&branch, now);
    }

    fn hangup_with(&mut self, now: Instant, leg_id: LegId, reason: EndReason) {
        let Some(leg) = self.legs.get_mut(&leg_id) else {
            return;
        };
        match leg.state {
            LegState::Offered => {
                let (status, text) = (480, "Temporarily Unavailable");
                self.finish_offered(now, leg_id, status, text, None);
            }
            LegState::Answered | LegState::Confirmed => {
                leg.state = LegState::Terminating;
                leg.end_reason = Some(reason);
                if let Some((_, r)) = &mut leg.two_xx {
                    r.acknowledged();
                }
                let branch = format!("z9hG4bK{}", new_tag());
                let peer = leg.source.clone();
                let via = format!(
                    "SIP/2.0/{} {};branch={branch};rport",
                    peer.transport.as_str(),
                    self.cfg.sip_addr
                );
                let dialog = leg.dialog.as_mut().expect("answered legs have dialogs");
                let bye = dialog.request(Method::Bye, via, &self.cfg.user_agent);
                let peer = dialog.peer.clone();
                leg.bye_branch = Some(branch.clone());
                let id = self.alloc_id();
                let tx = NonInviteClient::new(now, bye.to_bytes(), peer);
                self.clients.insert(branch.clone(), (id, tx, leg_id));
                self.client_branches.insert(id, branch.clone());
                self.drain_client(&branch, now);
            }
            LegState::Terminating => {}
        }
    }

    /// Sends a final non-2xx to an INVITE still being decided, and ends the leg.
    fn finish_offered(
        &mut self,
        now: Instant,
        leg_id: LegId,
        status: u16,
        reason: &str,
        warning: Option<String>,
    ) {
        let leg = &self.legs[&leg_id];
        let mut resp = self.response(&leg.invite, status, reason, Some(&leg.local_tag));
        if let Some(warning) = warning {
            resp = resp.with_header("Warning", warning);
        }
        let key = leg.invite_key.clone();
        self.respond_invite(now, &key, resp.to_bytes(), status);
        self.end_leg(leg_id, EndReason::Rejected(status));
    }

    fn end_leg(&mut self, leg_id: LegId, reason: EndReason) {
        let Some(leg) = self.legs.remove(&leg_id) else {
            return;
        };
        if let Some(d) = &leg.dialog {
            self.dialogs.remove(&Hashed::new(d.id.clone()));
        }
        // The INVITE transaction keeps absorbing retransmits, but no longer names the leg.
        if let Some((_, _, l)) = self
            .invite_servers
            .get_mut(&leg.invite_key)
            .map(|e| &mut **e)
        {
            *l = None;
        }
        self.stats.calls_ended += 1;
        debug!(leg = leg_id.0, call_id = %leg.invite.call_id, ?reason, "leg ended");
        self.events.push_back(Event::Ended {
            leg: leg_id,
            reason,
        });
    }

    fn wake(&mut self, now: Instant, wake: Wake) {
        match wake {
            Wake::InviteServer(id) => {
                let Some(key) = self.wake_keys.get(&id).cloned() else {
                    return;
                };
                if let Some((_, tx, _)) = self.invite_servers.get_mut(&key).map(|e| &mut **e) {
                    tx.handle_timeout(now);
                    self.drain_invite_server(&key);
                }
            }
            Wake::NonInviteServer(id) => {
                let Some(key) = self.wake_keys.get(&id).cloned() else {
                    return;
                };
                if let Some((_, tx)) = self.non_invite_servers.get_mut(&key).map(|e| &mut **e) {
                    tx.handle_timeout(now);
                    self.drain_non_invite_server(&key);
                }
            }
            Wake::Client(id) => {
                let Some(branch) = self.client_branches.get(&id).cloned() else {
                    return;
                };
                if let Some((_, tx, _)) = self.clients.get_mut(&branch) {
                    tx.handle_timeout(now);
                    self.drain_client(&branch, now);
                }
            }
            Wake::TwoXx(leg_id) => {
                let Some(leg) = self.legs.get_mut(&leg_id) else {
                    return;
                };
                let Some((_, r)) = &mut leg.two_xx else {
                    return;
                };
                let gave_up = r.handle_timeout(now);
                while let Some(t) = r.poll_transmit() {
                    self.transmits.push_back(t);
                }
                if gave_up {
                    warn!(leg = leg_id.0, call_id = %leg.invite.call_id, "no ACK for 2xx within 64*T1; sending BYE");
                    self.hangup_with(now, leg_id, EndReason::NoAck);
                } else if let Some(at) = r.poll_timeout() {
                    self.timers.push(Reverse((at, Wake::TwoXx(leg_id))));
                }
            }
        }
    }

    fn start_invite_server(
        &mut self,
        _now: Instant,
        key: TxTableKey,
        peer: Peer,
        leg: Option<LegId>,
    ) {
        let id = self.alloc_id();
        self.wake_keys.insert(id, key.clone());
        self.invite_servers
            .insert(key, Box::new((id, InviteServer::new(peer), leg)));
    }

    fn respond_invite(&mut self, now: Instant, key: &TxTableKey, bytes: Vec<u8>, status: u16) {
        if let Some((_, tx, _)) = self.invite_servers.get_mut(key).map(|e| &mut **e) {
            tx.respond(now, bytes, status);
        }
        self.drain_invite_server(key);
    }

    fn drain_invite_server(&mut self, key: &TxTableKey) {
        let Some((id, tx, _)) = self.invite_servers.get_mut(key).map(|e| &mut **e) else {
            return;
        };
        let id = *id;
        if drain_server(
            tx,
            Wake::InviteServer(id),
            &mut self.transmits,
            &mut self.timers,
        ) {
            self.invite_servers.remove(key);
            self.wake_keys.remove(&id);
        }
    }

    fn drain_non_invite_server(&mut self, key: &TxTableKey) {
        let Some((id, tx)) = self.non_invite_servers.get_mut(key).map(|e| &mut **e) else {
            return;
        };
        let id = *id;
        if drain_server(
            tx,
            Wake::NonInviteServer(id),
            &mut self.transmits,
            &mut self.timers,
        ) {
            self.non_invite_servers.remove(key);
            self.wake_keys.remove(&id);
        }
    }

    fn drain_client(&mut self, branch: &str, _now: Instant) {
        let Some((id, tx, leg_id)) = self.clients.get_mut(branch) else {
            return;
        };
        let (id, leg_id) = (*id, *leg_id);
        while let Some(t) = tx.poll_transmit() {
            self.transmits.push_back(t);
        }
        let mut finished = false;
        let mut terminated = false;
        while let Some(ev) = tx.poll_event() {
            match ev {
                TxEvent::Response(r) if r.status >= 200 => finished = true,
                TxEvent::Response(_) => {}
                TxEvent::Timeout => finished = true,
                TxEvent::Terminated => terminated = true,
            }
        }
        if let Some(at) = tx.poll_timeout() {
            self.timers.push(Reverse((at, Wake::Client(id))));
        }
        if terminated {
            self.clients.remove(branch);
            self.client_branches.remove(&id);
        }
        if finished || terminated {
            let reason = self
                .legs
                .get(&leg_id)
                .and_then(|l| l.end_reason.clone())
                .unwrap_or(EndReason::LocalHangup);
            self.end_leg(leg_id, reason);
        }
    }

    fn schedule(&mut self, wake: Wake, now: Instant) {
        let at = match &wake {
            Wake::TwoXx(leg) => self
                .legs
                .get(leg)
                .and_then(|l| l.two_xx.as_ref())
                .and_then(|(_, r)| r.poll_timeout()),
            _ => None,
        };
        self.timers.push(Reverse((at.unwrap_or(now), wake)));
    }

    fn alloc_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Answers a non-INVITE request with no transaction: a retransmission is answered
    /// again, and nothing is kept.
    fn reply_stateless(&mut self, req: &Request, peer: Peer, reply: Reply) {
        let resp = self.reply_response(req, &peer, reply);
        self.transmits.push_back(Transmit {
            bytes: resp.to_bytes(),
            peer,
        });
    }

    /// Answers a non-INVITE request (or an INVITE we refuse) through a server transaction.
    fn reply(&mut self, now: Instant, req: &Request, peer: Peer, reply: Reply) {
        let status = reply.status();
        let resp = self.reply_response(req, &peer, reply);
        let key = server_key(req, false);
        if req.method == Method::Invite {
            self.start_invite_server(now, key.clone(), peer, None);
            self.respond_invite(now, &key, resp.to_bytes(), status);
            return;
        }
        let id = self.alloc_id();
        self.wake_keys.insert(id, key.clone());
        let mut tx = NonInviteServer::new(peer);
        tx.respond(now, resp.to_bytes(), status);
        self.non_invite_servers
            .insert(key.clone(), Box::new((id, tx)));
        self.drain_non_invite_server(&key);
    }

    fn reply_response(&mut self, req: &Request, peer: &Peer, reply: Reply) -> Response {
        let status = reply.status();
        if status >= 300 {
            self.stats.rejected += 1;
            debug!(status, method = %req.method, call_id = %req.call_id, "rejecting request");
        }
        let mut resp = self.response(req, status, reply.reason(), Some(&new_tag()));
        match reply {
            Reply::Options => {
                resp = resp
                    .with_header("Allow", ALLOW)
                    .with_header("Accept", ACCEPT)
                    .with_header("Supported", "");
            }
            Reply::MethodNotAllowed => resp = resp.with_header("Allow", ALLOW),
            Reply::UnsupportedMedia => resp = resp.with_header("Accept", ACCEPT),
            Reply::BadExtension(tags) => resp = resp.with_header("Unsupported", tags),
            Reply::Sdp(body) => {
                resp = resp
                    .with_header("Contact", self.contact(peer))
                    .with_body("application/sdp", body.into_bytes())
            }
            Reply::Warning(_, w) => resp = resp.with_header("Warning", w),
            Reply::Plain(..) | Reply::Status(..) => {}
        }
        resp
    }

    fn response(&self, req: &Request, status: u16, reason: &str, to_tag: Option<&str>) -> Response {
        // §8.2.6.2: 100 Trying carries no To tag.
        let tag = if status == 100 { None } else { to_tag };
        Response::to(req, status, reason, tag).with_header("Server", self.cfg.user_agent.clone())
    }

    fn ok_with_sdp(&self, req: &Request, local_tag: &str, body: String, peer: &Peer) -> Response {
        let mut resp = self.response(req, 200, "OK", Some(local_tag));
        // §12.1.1: the UAS copies Record-Route into its 2xx.
        for rr in req.headers.all("Record-Route") {
            resp = resp.with_header("Record-Route", rr.to_string());
        }
        resp.with_header("Contact", self.contact(peer))
            .with_header("Allow", ALLOW)
            .with_header("Supported", "")
            .with_body("application/sdp", body.into_bytes())
    }

    fn contact(&self, peer: &Peer) -> String {
        match peer.transport {
            Transport::Udp => format!("<sip:{}>", self.cfg.sip_addr),
            Transport::Tcp => format!("<sip:{};transport=tcp>", self.cfg.sip_addr),
        }
    }
}

/// Moves a server transaction's transmits out and schedules its next wake; `true` once it
/// has terminated and may be forgotten.
fn drain_server(
    tx: &mut impl ServerTransaction,
    wake: Wake,
    transmits: &mut VecDeque<Transmit>,
    timers: &mut BinaryHeap<Reverse<(Instant, Wake)>>,
) -> bool {
    while let Some(t) = tx.poll_transmit() {
        transmits.push_back(t);
    }
    let mut terminated = false;
    while let Some(ev) = tx.poll_event() {
        terminated |= ev == TxEvent::Terminated;
    }
    if let Some(at) = tx.poll_timeout() {
        timers.push(Reverse((at, wake)));
    }
    terminated
}

/// Canned answers of the endpoint.
enum Reply {
    Plain(u16, &'static str),
    /// A status whose reason phrase names the problem.
    Status(u16, String),
    Options,
    MethodNotAllowed,
    UnsupportedMedia,
    BadExtension(String),
    Sdp(String),
    Warning(u16, String),
}

impl Reply {
    fn plain(status: u16, reason: &'static str) -> Reply {
        Reply::Plain(status, reason)
    }

    fn status(&self) -> u16 {
        match self {
            Reply::Plain(s, _) | Reply::Status(s, _) | Reply::Warning(s, _) => *s,
            Reply::Options | Reply::Sdp(_) => 200,
            Reply::MethodNotAllowed => 405,
            Reply::UnsupportedMedia => 415,
            Reply::BadExtension(_) => 420,
        }
    }

    fn reason(&self) -> &str {
        match self {
            Reply::Plain(_, r) => r,
            Reply::Status(_, r) => r,
            Reply::Options | Reply::Sdp(_) => "OK",
            Reply::MethodNotAllowed => "Method Not Allowed",
            Reply::UnsupportedMedia => "Unsupported Media Type",
            Reply::BadExtension(_) => "Bad Extension",
            Reply::Warning(s, _) => reason_static(*s),
        }
    }
}

fn reason_static(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        488 => "Not Acceptable Here",
        _ => "Error",
    }
}

fn reason_for(status: u16) -> String {
    reason_static(status).to_string()
}

/// RFC 3581 §4 and RFC 3261 §18.2.1: note where the request really came from in its top Via
/// (`received` when the sent-by host differs, `rport` when the client asked for it).
fn stamp_via(req: &mut Request, source: &Peer) {
    let Some(via) = req.vias.first_mut() else {
        return;
    };
    let ip = source.addr.ip();
    if via.host_ip() != Some(ip) {
        via.set_param("received", Some(ip.to_string()));
    }
    if via.param("rport").is_some() {
        via.set_param("received", Some(ip.to_string()));
        via.set_param("rport", Some(source.addr.port().to_string()));
    }
}

/// Where responses to `req` go (RFC 3261 §18.2.2, RFC 3581 §4): back on the same TCP
/// connection; over UDP to the source IP, at the source port when `rport` was requested,
/// else at the sent-by port (default 5060).
fn response_peer(req: &Request, source: &Peer) -> Peer {
    if source.transport == Transport::Tcp {
        return source.clone();
    }
    let via = req.top_via();
    let port = match via.param("rport").flatten().and_then(|p| p.parse().ok()) {
        Some(p) => p,
        None => via.port.unwrap_or(5060),
    };
    Peer {
        transport: Transport::Udp,
        addr: SocketAddr::new(source.addr.ip(), port),
        conn: None,
    }
}

/// `Warning: <code> pinbridge "<text>"` for an offer we refuse (RFC 3261 §20.43).
fn warning(e: &sdp::SdpError) -> String {
    warning_value(e.warn_code(), &e.warning())
}

/// A `Warning` header value (RFC 3261 §20.43) from pinbridge: `code`, and `text` made safe
/// for a quoted-string.
fn warning_value(code: u16, text: &str) -> String {
    let text: String = text.chars().map(sdp::quotable).collect();
    format!("{code} pinbridge \"{text}\"")
}

/// The user part of the first P-Asserted-Identity value (RFC 3325 §9.1; a second value may
/// add a tel URI for the same caller). An unparseable header is as good as none.
fn asserted_user(req: &Request) -> Option<String> {
    let value = req.headers.get("P-Asserted-Identity")?;
    let first = NameAddr::parse(value)
        .ok()
        .or_else(|| NameAddr::parse(value.split(',').next()?).ok())?;
    first.uri.user_unescaped()
}

fn is_anonymous(req: &Request) -> bool {
    let user = req.from.uri.user_unescaped().unwrap_or_default();
    user.eq_ignore_ascii_case("anonymous")
        || req.from.uri.host.eq_ignore_ascii_case("anonymous.invalid")
        || req.headers.has_token("Privacy", "id")
}

fn new_tag() -> String {
    let v: u64 = rand::rng().random();
    format!("{v:016x}")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::sip::msg::{Message, parse};
    use crate::sip::transaction::T1;
    use crate::sip::transport::ConnId;

    const CALLER: &str = "127.0.0.1:5070";

    fn udp_peer() -> Peer {
        Peer {
            transport: Transport::Udp,
            addr: CALLER.parse().unwrap(),
            conn: None,
        }
    }

    fn sdp(codecs: &str, extra: &str) -> String {
        format!(
            "v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio 6000 RTP/AVP {codecs}\r\n{extra}"
        )
    }

    struct Harness {
        ep: Endpoint,
        now: Instant,
        t0: Instant,
    }

    impl Harness {
        fn new() -> Harness {
            let now = Instant::now();
            Harness {
                ep: Endpoint::new(EndpointConfig {
                    sip_addr: "127.0.0.1:5060".parse().unwrap(),
                    media_ip: "127.0.0.1".parse().unwrap(),
                    user_agent: "pinbridge/test".into(),
                }),
                now,
                t0: now,
            }
        }

        fn send(&mut self, text: &str) {
            self.send_from(text, udp_peer());
        }

        fn send_from(&mut self, text: &str, peer: Peer) {
            self.ep.handle_datagram(self.now, text.as_bytes(), peer);
        }

        fn responses(&mut self) -> Vec<(Response, Peer)> {
            let mut out = Vec::new();
            while let Some(t) = self.ep.poll_transmit() {
                match parse(&t.bytes) {
                    Ok(Message::Response(r)) => out.push((r, t.peer)),
                    Ok(Message::Request(r)) => panic!("unexpected request {}", r.method),
                    Err(e) => panic!("we sent something unparseable: {e}"),
                }
            }
            out
        }

        fn statuses(&mut self) -> Vec<u16> {
            self.responses()
                .into_iter()
                .map(|(r, _)| r.status)
                .collect()
        }

        fn requests(&mut self) -> Vec<Request> {
            let mut out = Vec::new();
            while let Some(t) = self.ep.poll_transmit() {
                if let Ok(Message::Request(r)) = parse(&t.bytes) {
                    out.push(r);
                }
            }
            out
        }

        fn events(&mut self) -> Vec<Event> {
            std::iter::from_fn(|| self.ep.poll_event()).collect()
        }

        /// Moves the clock forward, firing every timer on the way.
        fn advance(&mut self, by: Duration) {
            let end = self.now + by;
            for _ in 0..10_000 {
                match self.ep.poll_timeout() {
                    Some(at) if at <= end => {
                        self.now = self.now.max(at);
                        self.ep.handle_timeout(self.now);
                    }
                    _ => break,
                }
            }
            self.now = end;
        }

        /// INVITE, accept, returns (leg, the 200).
        fn answered_call(&mut self, call_id: &str) -> (LegId, Response) {
            self.send(&invite(
                call_id,
                1,
                &sdp("0 8 101", "a=rtpmap:101 telephone-event/8000\r\n"),
            ));
            assert_eq!(self.statuses(), vec![100]);
            let leg = match self.events().as_slice() {
                [Event::Incoming { leg, .. }] => *leg,
                other => panic!("expected Incoming, got {other:?}"),
            };
            self.ep.accept(self.now, leg, 40000);
            let mut rs = self.responses();
            assert_eq!(rs.len(), 1);
            let (ok, _) = rs.remove(0);
            assert_eq!(ok.status, 200);
            (leg, ok)
        }
    }

    fn request(method: &str, call_id: &str, cseq: u32, to_tag: Option<&str>, body: &str) -> String {
        let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
        let ctype = if body.is_empty() {
            String::new()
        } else {
            "Content-Type: application/sdp\r\n".to_string()
        };
        format!(
            "{method} sip:1234567@127.0.0.1:5060 SIP/2.0\r\n\
             Via: SIP/2.0/UDP {CALLER};branch=z9hG4bK-{call_id}-{cseq}-{method}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:alice@127.0.0.1>;tag=alice\r\n\
             To: <sip:1234567@127.0.0.1>{to_tag}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} {method}\r\n\
             Contact: <sip:alice@{CALLER}>\r\n\
             {ctype}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    fn invite(call_id: &str, cseq: u32, body: &str) -> String {
        request("INVITE", call_id, cseq, None, body)
    }

    #[test]
    fn invite_answer_ack_bye() {
        let mut h = Harness::new();
        let (leg, ok) = h.answered_call("c1");
        let tag = ok.to_tag().expect("2xx has a To tag").to_string();
        assert_eq!(ok.headers.get("Contact"), Some("<sip:127.0.0.1:5060>"));
        let body = String::from_utf8(ok.body.clone()).unwrap();
        assert!(body.contains("m=audio 40000 RTP/AVP 0 101"), "{body}");
        assert!(
            matches!(h.events().as_slice(), [Event::Media { negotiated, .. }] if negotiated.codec == crate::media::Codec::Pcmu)
        );
        let mut ack = request("ACK", "c1", 1, Some(&tag), "");
        ack = ack.replace("z9hG4bK-c1-1-ACK", "z9hG4bK-ack");
        h.send(&ack);
        assert!(matches!(h.events().as_slice(), [Event::Confirmed { leg: l }] if *l == leg));
        h.send(&request("BYE", "c1", 2, Some(&tag), ""));
        assert_eq!(h.statuses(), vec![200]);
        assert!(matches!(
            h.events().as_slice(),
            [Event::Ended {
                reason: EndReason::RemoteBye,
                ..
            }]
        ));
        assert_eq!(h.ep.leg_count(), 0);
        // A retransmitted BYE is answered again by its transaction, not a 481.
        h.send(&request("BYE", "c1", 2, Some(&tag), ""));
        assert_eq!(h.statuses(), vec![200]);
        h.advance(64 * T1);
        assert_eq!(h.ep.transaction_count(), 0, "all transactions end");
    }

    #[test]
    fn retransmitted_invite_is_absorbed() {
        let mut h = Harness::new();
        let offer = sdp("0", "");
        h.send(&invite("c2", 1, &offer));
        assert_eq!(h.statuses(), vec![100]);
        assert_eq!(h.events().len(), 1);
        h.send(&invite("c2", 1, &offer));
        assert_eq!(h.statuses(), vec![100]);
        assert!(h.events().is_empty(), "no second call");
        let leg = h.ep.legs().next().unwrap();
        h.ep.accept(h.now, leg, 40002);
        assert_eq!(h.statuses(), vec![200]);
        h.send(&invite("c2", 1, &offer));
        assert!(h.statuses().iter().all(|s| *s == 200));
        assert_eq!(h.ep.leg_count(), 1);
    }

    #[test]
    fn lost_ack_retransmits_2xx_then_byes() {
        let mut h = Harness::new();
        let (leg, _) = h.answered_call("c3");
        h.events();
        let mut times = Vec::new();
        let mut bye = None;
        for _ in 0..400 {
            h.advance(Duration::from_millis(100));
            while let Some(t) = h.ep.poll_transmit() {
                match parse(&t.bytes).unwrap() {
                    Message::Response(r) => {
                        assert_eq!(r.status, 200);
                        times.push(h.now - h.t0);
                    }
                    Message::Request(r) => {
                        assert_eq!(r.method, Method::Bye);
                        bye = Some((h.now - h.t0, r));
                    }
                }
            }
            if bye.is_some() {
                break;
            }
        }
        let ms: Vec<u128> = times.iter().map(|d| d.as_millis()).collect();
        assert_eq!(
            ms,
            vec![
                500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500
            ]
        );
        let (at, bye) = bye.expect("BYE after 64*T1");
        assert_eq!(at, 64 * T1);
        assert_eq!(bye.cseq.seq, 1);
        // The caller answers the BYE: the leg ends as NoAck.
        let ok = Response::to(&bye, 200, "OK", None);
        h.ep.handle_datagram(h.now, &ok.to_bytes(), udp_peer());
        assert!(
            matches!(h.events().as_slice(), [Event::Ended { leg: l, reason: EndReason::NoAck }] if *l == leg)
        );
    }

    #[test]
    fn cancel_before_answer() {
        let mut h = Harness::new();
        h.send(&invite("c4", 1, &sdp("0", "")));
        assert_eq!(h.statuses(), vec![100]);
        h.events();
        let cancel = request("CANCEL", "c4", 1, None, "")
            .replace("z9hG4bK-c4-1-CANCEL", "z9hG4bK-c4-1-INVITE");
        h.send(&cancel);
        let rs = h.responses();
        let statuses: Vec<(u16, String)> = rs
            .iter()
            .map(|(r, _)| (r.status, r.cseq.method.to_string()))
            .collect();
        assert_eq!(
            statuses,
            vec![(200, "CANCEL".into()), (487, "INVITE".into())]
        );
        assert!(matches!(
            h.events().as_slice(),
            [Event::Ended {
                reason: EndReason::Cancelled,
                ..
            }]
        ));
        // ACK for the 487 is absorbed; 487 is retransmitted until it arrives.
        h.advance(T1);
        assert_eq!(h.statuses(), vec![487]);
        let ack = request("ACK", "c4", 1, Some("x"), "")
            .replace("z9hG4bK-c4-1-ACK", "z9hG4bK-c4-1-INVITE");
        h.send(&ack);
        h.advance(Duration::from_secs(40));
        assert!(h.statuses().is_empty());
        // CANCEL after the answer: 200, and the call stays.
        let (_, _) = h.answered_call("c5");
        let cancel = request("CANCEL", "c5", 1, None, "")
            .replace("z9hG4bK-c5-1-CANCEL", "z9hG4bK-c5-1-INVITE");
        h.send(&cancel);
        assert_eq!(h.statuses(), vec![200]);
        assert_eq!(h.ep.leg_count(), 1);
        // CANCEL for nothing: 481.
        h.send(&request("CANCEL", "nope", 1, None, ""));
        assert_eq!(h.statuses(), vec![481]);
    }

    #[test]
    fn our_bye_retransmits_and_completes() {
        let mut h = Harness::new();
        let (leg, ok) = h.answered_call("c6");
        let tag = ok.to_tag().unwrap().to_string();
        h.send(&request("ACK", "c6", 1, Some(&tag), "").replace("c6-1-ACK", "c6-ack"));
        h.events();
        h.ep.hangup(h.now, leg);
        let byes = h.requests();
        assert_eq!(byes.len(), 1);
        let bye = &byes[0];
        assert_eq!(bye.method, Method::Bye);
        assert_eq!(bye.uri.as_str(), format!("sip:alice@{CALLER}"));
        assert_eq!(bye.from.tag(), Some(tag.as_str()));
        assert_eq!(bye.to.tag(), Some("alice"));
        h.advance(T1);
        assert_eq!(h.requests().len(), 1, "Timer E retransmits");
        let ok = Response::to(bye, 200, "OK", None);
        h.ep.handle_datagram(h.now, &ok.to_bytes(), udp_peer());
        assert!(matches!(
            h.events().as_slice(),
            [Event::Ended {
                reason: EndReason::LocalHangup,
                ..
            }]
        ));
        // Unanswered BYE: the leg still ends at Timer F.
        let (leg, _) = h.answered_call("c7");
        h.events();
        h.ep.hangup(h.now, leg);
        h.advance(64 * T1);
        assert!(
            h.events()
                .iter()
                .any(|e| matches!(e, Event::Ended { leg: l, .. } if *l == leg))
        );
    }

    #[test]
    fn options_unknown_methods_and_unknown_dialogs() {
        let mut h = Harness::new();
        h.send(&request("OPTIONS", "o1", 1, None, ""));
        let (r, peer) = h.responses().remove(0);
        assert_eq!(r.status, 200);
        assert_eq!(r.headers.get("Allow"), Some(ALLOW));
        assert!(r.headers.get("Accept").unwrap().contains("application/sdp"));
        assert!(r.headers.get("Supported").is_some());
        assert_eq!(peer.addr, CALLER.parse().unwrap());
        h.send(&request("FOO", "o2", 1, None, ""));
        assert_eq!(h.statuses(), vec![501]);
        h.send(&request("REGISTER", "o3", 1, None, ""));
        let (r, _) = h.responses().remove(0);
        assert_eq!((r.status, r.headers.get("Allow")), (405, Some(ALLOW)));
        h.send(&request("BYE", "o4", 1, Some("unknown"), ""));
        assert_eq!(h.statuses(), vec![481]);
        h.send(&request("INFO", "o5", 1, Some("unknown"), ""));
        assert_eq!(h.statuses(), vec![481]);
        h.send(&request("BYE", "o6", 1, None, ""));
        assert_eq!(h.statuses(), vec![481]);
    }

    #[test]
    fn no_common_codec_is_488_with_warning() {
        let mut h = Harness::new();
        h.send(&invite("n1", 1, &sdp("18", "a=rtpmap:18 G729/8000\r\n")));
        let (r, _) = h.responses().remove(0);
        assert_eq!(r.status, 488);
        assert!(
            r.headers
                .get("Warning")
                .unwrap()
                .starts_with("305 pinbridge \"no common codec")
        );
        assert!(h.events().is_empty());
        assert_eq!(h.ep.leg_count(), 0);
    }

    #[test]
    fn malformed_and_unsupported_requests() {
        let mut h = Harness::new();
        let no_call_id = invite("m1", 1, "").replace("Call-ID: m1\r\n", "");
        h.send(&no_call_id);
        let (r, _) = h.responses().remove(0);
        assert_eq!(
            (r.status, r.reason.as_str()),
            (400, "Missing Call-ID header")
        );
        let required = invite("m2", 1, "").replace(
            "Max-Forwards: 70\r\n",
            "Max-Forwards: 70\r\nRequire: 100rel, foo\r\n",
        );
        h.send(&required);
        let (r, _) = h.responses().remove(0);
        assert_eq!(
            (r.status, r.headers.get("Unsupported")),
            (420, Some("100rel, foo"))
        );
        let bad_type = invite("m3", 1, "hello").replace("application/sdp", "text/plain");
        h.send(&bad_type);
        assert_eq!(h.statuses(), vec![415]);
        let scheme = invite("m4", 1, "").replace(
            "INVITE sip:1234567@127.0.0.1:5060",
            "INVITE isbn:2983792873",
        );
        h.send(&scheme);
        assert_eq!(h.statuses(), vec![416]);
        h.send("garbage\r\n\r\n");
        assert!(h.statuses().is_empty());
        assert_eq!(h.ep.stats().dropped, 1);
    }

    #[test]
    fn late_offer_gets_offer_in_2xx_and_answer_from_ack() {
        let mut h = Harness::new();
        h.send(&invite("l1", 1, ""));
        assert_eq!(h.statuses(), vec![100]);
        let leg = h.ep.legs().next().unwrap();
        h.events();
        h.ep.accept(h.now, leg, 40004);
        let (ok, _) = h.responses().remove(0);
        let offer = String::from_utf8(ok.body.clone()).unwrap();
        assert!(offer.contains("m=audio 40004 RTP/AVP"), "{offer}");
        assert!(h.events().is_empty(), "media waits for the answer");
        let tag = ok.to_tag().unwrap().to_string();
        let ack = request("ACK", "l1", 1, Some(&tag), &sdp("8", "")).replace("l1-1-ACK", "l1-ack");
        h.send(&ack);
        let evs = h.events();
        assert!(
            matches!(&evs[0], Event::Media { negotiated, .. } if negotiated.codec == crate::media::Codec::Pcma)
        );
        assert!(matches!(&evs[1], Event::Confirmed { .. }));
    }

    #[test]
    fn reinvite_hold_and_resume() {
        let mut h = Harness::new();
        let (_, ok) = h.answered_call("r1");
        let tag = ok.to_tag().unwrap().to_string();
        h.send(&request("ACK", "r1", 1, Some(&tag), "").replace("r1-1-ACK", "r1-ack"));
        h.events();
        let hold = request("INVITE", "r1", 2, Some(&tag), &sdp("0", "a=sendonly\r\n"));
        h.send(&hold);
        let (r, _) = h.responses().remove(0);
        assert_eq!(r.status, 200);
        let answer = String::from_utf8(r.body.clone()).unwrap();
        assert!(answer.contains("a=recvonly"), "{answer}");
        assert!(
            answer.contains("m=audio 40000 "),
            "same port on re-INVITE: {answer}"
        );
        assert!(
            matches!(h.events().as_slice(), [Event::Media { negotiated, .. }] if negotiated.direction == Direction::RecvOnly)
        );
        h.send(&request("ACK", "r1", 2, Some(&tag), "").replace("r1-2-ACK", "r1-ack2"));
        let resume = request("INVITE", "r1", 3, Some(&tag), &sdp("8", ""));
        h.send(&resume);
        assert_eq!(h.statuses(), vec![200]);
        assert!(
            matches!(h.events().as_slice(), [Event::Media { negotiated, .. }] if negotiated.direction == Direction::SendRecv && negotiated.codec == crate::media::Codec::Pcma)
        );
        // An old CSeq is out of order.
        h.send(&request("UPDATE", "r1", 1, Some(&tag), ""));
        assert_eq!(h.statuses(), vec![500]);
        let update = request("UPDATE", "r1", 4, Some(&tag), &sdp("0", ""));
        h.send(&update);
        assert_eq!(h.statuses(), vec![200]);
    }

    #[test]
    fn via_received_rport_and_tcp_replies() {
        let mut h = Harness::new();
        let text = request("OPTIONS", "v1", 1, None, "").replace(
            &format!("Via: SIP/2.0/UDP {CALLER};branch=z9hG4bK-v1-1-OPTIONS"),
            "Via: SIP/2.0/UDP phone.example.com:5080;branch=z9hG4bK-v1;rport",
        );
        h.send_from(
            &text,
            Peer {
                transport: Transport::Udp,
                addr: "127.0.0.9:40123".parse().unwrap(),
                conn: None,
            },
        );
        let (r, peer) = h.responses().remove(0);
        assert_eq!(peer.addr, "127.0.0.9:40123".parse().unwrap());
        assert_eq!(r.vias[0].param("received"), Some(Some("127.0.0.9")));
        assert_eq!(r.vias[0].param("rport"), Some(Some("40123")));
        let text = text
            .replace(";rport", "")
            .replace("z9hG4bK-v1", "z9hG4bK-v2");
        h.send_from(
            &text,
            Peer {
                transport: Transport::Udp,
                addr: "127.0.0.9:40123".parse().unwrap(),
                conn: None,
            },
        );
        let (_, peer) = h.responses().remove(0);
        assert_eq!(peer.addr, "127.0.0.9:5080".parse().unwrap());
        let tcp = Peer {
            transport: Transport::Tcp,
            addr: "127.0.0.9:40999".parse().unwrap(),
            conn: Some(ConnId(7)),
        };
        h.send_from(&request("OPTIONS", "v3", 1, None, ""), tcp.clone());
        let (_, peer) = h.responses().remove(0);
        assert_eq!(peer, tcp);
    }

    #[test]
    fn info_carries_dtmf_or_a_precise_error() {
        let mut h = Harness::new();
        let (leg, ok) = h.answered_call("i1");
        let tag = ok.to_tag().unwrap().to_string();
        h.send(&request("ACK", "i1", 1, Some(&tag), "").replace("i1-1-ACK", "i1-ack"));
        h.events();
        let info = |cseq: u32, ctype: &str, body: &str| {
            request("INFO", "i1", cseq, Some(&tag), body).replace("application/sdp", ctype)
        };
        h.send(&info(
            2,
            "application/dtmf-relay",
            "Signal=5\r\nDuration=160\r\n",
        ));
        assert_eq!(h.statuses(), vec![200]);
        assert!(
            matches!(h.events().as_slice(), [Event::InfoDigit { leg: l, key: Key::D5, .. }] if *l == leg)
        );
        h.send(&info(3, "application/dtmf", "#"));
        assert_eq!(h.statuses(), vec![200]);
        assert!(matches!(
            h.events().as_slice(),
            [Event::InfoDigit {
                key: Key::Pound,
                ..
            }]
        ));
        h.send(&info(4, "application/dtmf-relay", "Duration=160\r\n"));
        let (r, _) = h.responses().remove(0);
        assert_eq!(
            (r.status, r.reason.as_str()),
            (400, "dtmf-relay body without Signal")
        );
        h.send(&info(5, "text/plain", "5"));
        let (r, _) = h.responses().remove(0);
        assert_eq!((r.status, r.headers.get("Accept")), (415, Some(ACCEPT)));
        h.send(&request("INFO", "i1", 6, Some(&tag), ""));
        assert_eq!(h.statuses(), vec![200]);
        assert!(h.events().is_empty(), "no digit from errors or keep-alives");
    }

    #[test]
    fn anonymous_callers_are_flagged() {
        let mut h = Harness::new();
        let anon = invite("a1", 1, &sdp("0", "")).replace(
            "<sip:alice@127.0.0.1>",
            "\"Anonymous\" <sip:anonymous@anonymous.invalid>",
        );
        h.send(&anon);
        h.statuses();
        assert!(matches!(h.events().as_slice(), [Event::Incoming { call, .. }] if call.anonymous));
        let private = invite("a2", 1, &sdp("0", "")).replace(
            "Max-Forwards: 70\r\n",
            "Max-Forwards: 70\r\nPrivacy: id\r\n",
        );
        h.send(&private);
        h.statuses();
        assert!(matches!(h.events().as_slice(), [Event::Incoming { call, .. }] if call.anonymous));
        h.send(&invite("a3", 1, &sdp("0", "")));
        h.statuses();
        assert!(matches!(h.events().as_slice(), [Event::Incoming { call, .. }] if !call.anonymous));
    }

    // ---- flood limits (issue 7) ----

    fn limited(limits: Limits) -> Harness {
        let mut h = Harness::new();
        h.ep = std::mem::replace(
            &mut h.ep,
            Endpoint::new(EndpointConfig {
                sip_addr: "127.0.0.1:5060".parse().unwrap(),
                media_ip: "127.0.0.1".parse().unwrap(),
                user_agent: "pinbridge/test".into(),
            }),
        )
        .with_limits(limits);
        h
    }

    fn peer_at(addr: &str) -> Peer {
        Peer {
            transport: Transport::Udp,
            addr: addr.parse().unwrap(),
            conn: None,
        }
    }

    #[test]
    fn invite_flood_is_told_503_once_then_dropped_and_other_sources_pass() {
        use crate::sip::limits::RateLimit;
        let mut h = limited(Limits {
            invites: RateLimit {
                per_second: 2,
                burst: 3,
            },
            retry_after: Duration::from_secs(5),
            ..Limits::default()
        });
        let body = sdp("0", "");
        let mut statuses = Vec::new();
        for i in 0..50 {
            h.send(&invite(&format!("flood-{i}"), 1, &body));
            statuses.extend(h.statuses());
        }
        // Three calls (the burst) get 100 Trying; one 503; the other 46 are dropped.
        assert_eq!(statuses.iter().filter(|s| **s == 100).count(), 3);
        assert_eq!(statuses.iter().filter(|s| **s == 503).count(), 1);
        assert_eq!(statuses.len(), 4);
        assert_eq!(
            (h.ep.stats().invite_503, h.ep.stats().invite_dropped),
            (1, 46)
        );
        // The 503 says when to come back.
        h.send(&invite("flood-again", 1, &body));
        assert!(h.statuses().is_empty());
        // A caller from another address is not affected.
        h.send_from(&invite("honest", 1, &body), peer_at("127.0.0.2:5070"));
        assert_eq!(h.statuses(), vec![100]);
        // After Retry-After the flooder has tokens again.
        h.advance(Duration::from_secs(5));
        h.responses();
        h.send(&invite("later", 1, &body));
        assert_eq!(h.statuses(), vec![100]);
    }

    #[test]
    fn the_503_carries_retry_after() {
        use crate::sip::limits::RateLimit;
        let mut h = limited(Limits {
            invites: RateLimit {
                per_second: 1,
                burst: 1,
            },
            retry_after: Duration::from_secs(7),
            ..Limits::default()
        });
        h.send(&invite("a", 1, ""));
        h.responses();
        h.send(&invite("b", 1, ""));
        let rs = h.responses();
        assert_eq!(rs.len(), 1);
        assert_eq!(rs[0].0.status, 503);
        assert_eq!(rs[0].0.headers.get("Retry-After"), Some("7"));
    }

    #[test]
    fn max_calls_answers_503_until_a_call_ends() {
        let mut h = limited(Limits {
            max_calls: 2,
            ..Limits::default()
        });
        let (_, ok) = h.answered_call("one");
        h.events();
        h.answered_call("two");
        h.events();
        h.send(&invite("three", 1, &sdp("0", "")));
        assert_eq!(h.statuses(), vec![503]);
        assert_eq!(h.ep.stats().busy_503, 1);
        // The caller of the first call hangs up: room for one more.
        h.send(&request("BYE", "one", 2, ok.to_tag(), ""));
        assert_eq!(h.statuses(), vec![200]);
        assert_eq!(h.ep.leg_count(), 1);
        h.send(&invite("four", 1, &sdp("0", "")));
        assert_eq!(h.statuses(), vec![100]);
    }

    #[test]
    fn options_are_answered_without_keeping_transactions() {
        let mut h = Harness::new();
        for i in 0..300 {
            h.send(&request("OPTIONS", &format!("o{i}"), 1, None, ""));
            assert_eq!(h.statuses(), vec![200]);
        }
        assert_eq!(h.ep.transaction_count(), 0);
    }

    #[test]
    fn a_message_flood_is_dropped_before_parsing() {
        use crate::sip::limits::RateLimit;
        let mut h = limited(Limits {
            messages: RateLimit {
                per_second: 10,
                burst: 20,
            },
            ..Limits::default()
        });
        let mut answered = 0;
        for i in 0..100 {
            h.send(&request("OPTIONS", &format!("o{i}"), 1, None, ""));
            answered += h.statuses().len();
        }
        assert_eq!(answered, 20);
        assert_eq!(h.ep.stats().flood_dropped, 80);
        h.send_from(
            &request("OPTIONS", "other", 1, None, ""),
            peer_at("127.0.0.3:5070"),
        );
        assert_eq!(h.statuses(), vec![200]);
    }
}
