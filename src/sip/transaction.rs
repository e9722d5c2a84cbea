//! RFC 3261 §17 transactions as sans-IO state machines.
//!
//! Each transaction is fed inputs with an explicit `now` (`handle_request`, `handle_response`,
//! `respond`, `handle_timeout`) and drained for outputs (`poll_transmit`, `poll_event`,
//! `poll_timeout`). Nothing here reads a clock or touches a socket, so every timer path is
//! tested by jumping the clock (see the tests at the bottom).
//!
//! Implemented: the INVITE server transaction with RFC 6026's `Accepted` state (the TU, not the
//! transaction, retransmits 2xx: see [`TwoXxRetransmit`]), the non-INVITE server transaction,
//! and the non-INVITE client transaction (our BYE). We never send INVITE, so there is no
//! INVITE client transaction.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::msg::{Method, Request};
use super::transport::Peer;

/// RTT estimate (RFC 3261 §17.1.1.1).
pub const T1: Duration = Duration::from_millis(500);
/// Maximum retransmit interval for non-INVITE requests and INVITE responses.
pub const T2: Duration = Duration::from_secs(4);
/// Maximum time a message remains in the network.
pub const T4: Duration = Duration::from_secs(5);

/// The timers of RFC 3261 §17 (table 4 in Appendix A) plus RFC 6026's Timer L.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxTimer {
    /// Client non-INVITE request retransmit.
    E,
    /// Client non-INVITE transaction timeout (64·T1).
    F,
    /// Server INVITE final-response retransmit.
    G,
    /// Server INVITE wait for ACK (64·T1).
    H,
    /// Server INVITE wait for ACK retransmits (T4 over UDP).
    I,
    /// Server non-INVITE wait for request retransmits (64·T1 over UDP).
    J,
    /// Client non-INVITE wait for response retransmits (T4 over UDP).
    K,
    /// Server INVITE `Accepted` state: absorb INVITE retransmits (64·T1, RFC 6026 §8.7).
    L,
}

/// Bytes to send and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub bytes: Vec<u8>,
    pub peer: Peer,
}

/// What a transaction tells its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxEvent {
    /// A response arrived for our client transaction (provisional or final).
    Response(Box<super::msg::Response>),
    /// Timer B/F/H fired: the peer never completed the exchange (RFC 3261 §17.1.2.2, §17.2.1).
    Timeout,
    /// The transaction is over and may be forgotten.
    Terminated,
}

/// The output side shared by server transactions, so their owner drains them one way.
pub trait ServerTransaction {
    fn poll_transmit(&mut self) -> Option<Transmit>;
    fn poll_event(&mut self) -> Option<TxEvent>;
    fn poll_timeout(&self) -> Option<Instant>;
}

macro_rules! server_transaction {
    ($t:ty) => {
        impl ServerTransaction for $t {
            fn poll_transmit(&mut self) -> Option<Transmit> {
                <$t>::poll_transmit(self)
            }
            fn poll_event(&mut self) -> Option<TxEvent> {
                <$t>::poll_event(self)
            }
            fn poll_timeout(&self) -> Option<Instant> {
                <$t>::poll_timeout(self)
            }
        }
    };
}

server_transaction!(InviteServer);
server_transaction!(NonInviteServer);

/// How a transaction recognises its messages (RFC 3261 §17.2.3, §17.1.3). ACK to a non-2xx
/// final response matches its INVITE, so ACK keys are stored with method INVITE.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TxKey {
    /// `branch` with the magic cookie, plus sent-by and method.
    Rfc3261 {
        branch: String,
        sent_by: String,
        method: String,
    },
    /// Pre-RFC 3261 peers (no cookie): matched on Call-ID, CSeq number, From tag, top Via and
    /// method.
    Rfc2543 {
        call_id: String,
        cseq: u32,
        from_tag: String,
        via: String,
        method: String,
    },
}

impl TxKey {
    /// The server-transaction key of a request; ACK and CANCEL get the key of the INVITE
    /// transaction they belong to when `for_invite` is set.
    pub fn server(req: &Request, for_invite: bool) -> TxKey {
        let method = if for_invite {
            Method::Invite.as_str().to_string()
        } else {
            req.method.as_str().to_string()
        };
        let via = req.top_via();
        match via.rfc3261_branch() {
            Some(branch) => TxKey::Rfc3261 {
                branch: branch.to_string(),
                sent_by: via.sent_by().to_ascii_lowercase(),
                method,
            },
            None => TxKey::Rfc2543 {
                call_id: req.call_id.clone(),
                cseq: req.cseq.seq,
                from_tag: req.from.tag().unwrap_or_default().to_string(),
                via: via.sent_by().to_ascii_lowercase(),
                method,
            },
        }
    }
}

/// Retransmission schedule: `interval = (interval * 2).min(cap)` (RFC 3261 §17.1.2.2).
#[derive(Debug, Clone, Copy)]
struct Backoff {
    next: Instant,
    interval: Duration,
    cap: Duration,
}

impl Backoff {
    fn start(now: Instant, cap: Duration) -> Backoff {
        Backoff {
            next: now + T1,
            interval: T1,
            cap,
        }
    }

    /// Advances after a retransmission at `next`.
    fn fire(&mut self) {
        self.interval = (self.interval * 2).min(self.cap);
        self.next += self.interval;
    }
}

/// States of the INVITE server transaction (RFC 3261 Figure 7, RFC 6026 Figure 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InviteServerState {
    Proceeding,
    /// A 2xx was sent; the TU retransmits it; INVITE retransmits are absorbed.
    Accepted,
    /// A 3xx–6xx was sent; waiting for the ACK.
    Completed,
    /// ACK received; absorbing ACK retransmits.
    Confirmed,
    Terminated,
}

/// RFC 3261 §17.2.1 INVITE server transaction.
#[derive(Debug)]
pub struct InviteServer {
    state: InviteServerState,
    peer: Peer,
    last_response: Option<Vec<u8>>,
    retransmit: Option<Backoff>,
    /// Timer H, I or L, whichever the current state runs.
    deadline: Option<(TxTimer, Instant)>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<TxEvent>,
}

impl InviteServer {
    /// Starts the transaction for a new INVITE; responses go to `peer`.
    pub fn new(peer: Peer) -> Self {
        InviteServer {
            state: InviteServerState::Proceeding,
            peer,
            last_response: None,
            retransmit: None,
            deadline: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    pub fn state(&self) -> InviteServerState {
        self.state
    }

    /// A retransmitted INVITE (or, in `Completed`, the ACK) arrived.
    pub fn handle_request(&mut self, now: Instant, req: &Request) {
        match (self.state, &req.method) {
            (InviteServerState::Proceeding | InviteServerState::Accepted, Method::Invite) => {
                // §17.2.1: resend the most recent provisional; RFC 6026 §7.1 absorbs INVITE
                // retransmits in Accepted — resending our 2xx then is harmless and speeds up a
                // peer that lost it.
                self.resend();
            }
            (InviteServerState::Completed, Method::Invite) => self.resend(),
            (InviteServerState::Completed, Method::Ack) => {
                self.state = InviteServerState::Confirmed;
                self.retransmit = None;
                let wait = if self.peer.reliable() {
                    Duration::ZERO
                } else {
                    T4
                };
                self.deadline = Some((TxTimer::I, now + wait));
            }
            _ => {}
        }
    }

    /// The TU's response. Provisional responses keep the transaction in `Proceeding`; a 2xx
    /// moves it to `Accepted`, 3xx–6xx to `Completed`.
    pub fn respond(&mut self, now: Instant, bytes: Vec<u8>, status: u16) {
        if self.state != InviteServerState::Proceeding {
            return;
        }
        self.transmits.push_back(Transmit {
            bytes: bytes.clone(),
            peer: self.peer.clone(),
        });
        self.last_response = Some(bytes);
        match status {
            100..=199 => {}
            200..=299 => {
                self.state = InviteServerState::Accepted;
                self.deadline = Some((TxTimer::L, now + 64 * T1));
            }
            _ => {
                self.state = InviteServerState::Completed;
                if !self.peer.reliable() {
                    self.retransmit = Some(Backoff::start(now, T2));
                }
                self.deadline = Some((TxTimer::H, now + 64 * T1));
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(b) = &mut self.retransmit {
            while b.next <= now {
                b.fire();
                if let Some(bytes) = &self.last_response {
                    self.transmits.push_back(Transmit {
                        bytes: bytes.clone(),
                        peer: self.peer.clone(),
                    });
                }
            }
        }
        if let Some((timer, at)) = self.deadline
            && at <= now
        {
            if timer == TxTimer::H {
                self.events.push_back(TxEvent::Timeout);
            }
            self.terminate();
        }
    }

    /// The transport failed to deliver (RFC 3261 §17.2.4).
    pub fn transport_error(&mut self) {
        self.events.push_back(TxEvent::Timeout);
        self.terminate();
    }

    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<TxEvent> {
        self.events.pop_front()
    }

    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let retransmit = self.retransmit.map(|b| b.next);
        let deadline = self.deadline.map(|(_, at)| at);
        [retransmit, deadline].into_iter().flatten().min()
    }

    fn resend(&mut self) {
        if let Some(bytes) = &self.last_response {
            self.transmits.push_back(Transmit {
                bytes: bytes.clone(),
                peer: self.peer.clone(),
            });
        }
    }

    fn terminate(&mut self) {
        if self.state != InviteServerState::Terminated {
            self.state = InviteServerState::Terminated;
            self.retransmit = None;
            self.deadline = None;
            self.events.push_back(TxEvent::Terminated);
        }
    }
}

/// States of the non-INVITE server transaction (RFC 3261 Figure 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonInviteServerState {
    Trying,
    Proceeding,
    Completed,
    Terminated,
}

/// RFC 3261 §17.2.2 non-INVITE server transaction.
#[derive(Debug)]
pub struct NonInviteServer {
    state: NonInviteServerState,
    peer: Peer,
    last_response: Option<Vec<u8>>,
    timer_j: Option<Instant>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<TxEvent>,
}

impl NonInviteServer {
    pub fn new(peer: Peer) -> Self {
        NonInviteServer {
            state: NonInviteServerState::Trying,
            peer,
            last_response: None,
            timer_j: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    pub fn state(&self) -> NonInviteServerState {
        self.state
    }

    /// A retransmission of the request: answered with the last response, if any.
    pub fn handle_request(&mut self, _now: Instant) {
        if let Some(bytes) = &self.last_response {
            self.transmits.push_back(Transmit {
                bytes: bytes.clone(),
                peer: self.peer.clone(),
            });
        }
    }

    pub fn respond(&mut self, now: Instant, bytes: Vec<u8>, status: u16) {
        if matches!(
            self.state,
            NonInviteServerState::Completed | NonInviteServerState::Terminated
        ) {
            return;
        }
        self.transmits.push_back(Transmit {
            bytes: bytes.clone(),
            peer: self.peer.clone(),
        });
        self.last_response = Some(bytes);
        if status < 200 {
            self.state = NonInviteServerState::Proceeding;
            return;
        }
        self.state = NonInviteServerState::Completed;
        let wait = if self.peer.reliable() {
            Duration::ZERO
        } else {
            64 * T1
        };
        self.timer_j = Some(now + wait);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.timer_j.is_some_and(|at| at <= now) {
            self.timer_j = None;
            self.state = NonInviteServerState::Terminated;
            self.events.push_back(TxEvent::Terminated);
        }
    }

    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<TxEvent> {
        self.events.pop_front()
    }

    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timer_j
    }
}

/// States of the non-INVITE client transaction (RFC 3261 Figure 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonInviteClientState {
    Trying,
    Proceeding,
    Completed,
    Terminated,
}

/// RFC 3261 §17.1.2 non-INVITE client transaction (our BYE).
#[derive(Debug)]
pub struct NonInviteClient {
    state: NonInviteClientState,
    peer: Peer,
    request: Vec<u8>,
    retransmit: Option<Backoff>,
    timer_f: Option<Instant>,
    timer_k: Option<Instant>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<TxEvent>,
}

impl NonInviteClient {
    /// Sends `request` to `peer` at once and starts Timers E (unreliable only) and F.
    pub fn new(now: Instant, request: Vec<u8>, peer: Peer) -> Self {
        let retransmit = (!peer.reliable()).then(|| Backoff::start(now, T2));
        let mut tx = NonInviteClient {
            state: NonInviteClientState::Trying,
            peer: peer.clone(),
            request: request.clone(),
            retransmit,
            timer_f: Some(now + 64 * T1),
            timer_k: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        };
        tx.transmits.push_back(Transmit {
            bytes: request,
            peer,
        });
        tx
    }

    pub fn state(&self) -> NonInviteClientState {
        self.state
    }

    pub fn handle_response(&mut self, now: Instant, resp: super::msg::Response) {
        match self.state {
            NonInviteClientState::Trying | NonInviteClientState::Proceeding => {}
            _ => return, // retransmitted final responses are absorbed
        }
        if resp.status < 200 {
            self.state = NonInviteClientState::Proceeding;
            // §17.1.2.2: in Proceeding, Timer E fires every T2.
            if let Some(b) = &mut self.retransmit {
                b.cap = T2;
            }
            self.events.push_back(TxEvent::Response(Box::new(resp)));
            return;
        }
        self.state = NonInviteClientState::Completed;
        self.retransmit = None;
        self.timer_f = None;
        let wait = if self.peer.reliable() {
            Duration::ZERO
        } else {
            T4
        };
        self.timer_k = Some(now + wait);
        self.events.push_back(TxEvent::Response(Box::new(resp)));
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(b) = &mut self.retransmit {
            while b.next <= now {
                if self.state == NonInviteClientState::Proceeding {
                    b.interval = T2;
                    b.next += T2;
                } else {
                    b.fire();
                }
                self.transmits.push_back(Transmit {
                    bytes: self.request.clone(),
                    peer: self.peer.clone(),
                });
            }
        }
        if self.timer_f.is_some_and(|at| at <= now) {
            self.events.push_back(TxEvent::Timeout);
            self.terminate();
        }
        if self.timer_k.is_some_and(|at| at <= now) {
            self.terminate();
        }
    }

    pub fn transport_error(&mut self) {
        if self.state != NonInviteClientState::Terminated {
            self.events.push_back(TxEvent::Timeout);
            self.terminate();
        }
    }

    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<TxEvent> {
        self.events.pop_front()
    }

    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let r = self.retransmit.map(|b| b.next);
        [r, self.timer_f, self.timer_k].into_iter().flatten().min()
    }

    fn terminate(&mut self) {
        if self.state != NonInviteClientState::Terminated {
            self.state = NonInviteClientState::Terminated;
            self.retransmit = None;
            self.timer_f = None;
            self.timer_k = None;
            self.events.push_back(TxEvent::Terminated);
        }
    }
}

/// The UAS core's 2xx retransmission (RFC 3261 §13.3.1.4): the 2xx to an INVITE is resent
/// at T1, 2·T1, … capped at T2 until the ACK arrives; after 64·T1 without ACK the session is
/// to be ended. Over reliable transports the 2xx is not resent but the ACK wait still applies.
#[derive(Debug)]
pub struct TwoXxRetransmit {
    peer: Peer,
    response: Vec<u8>,
    retransmit: Option<Backoff>,
    give_up: Instant,
    done: bool,
    transmits: VecDeque<Transmit>,
}

impl TwoXxRetransmit {
    /// Call right after the 2xx was first sent at `now`.
    pub fn new(now: Instant, response: Vec<u8>, peer: Peer) -> Self {
        TwoXxRetransmit {
            retransmit: (!peer.reliable()).then(|| Backoff::start(now, T2)),
            peer,
            response,
            give_up: now + 64 * T1,
            done: false,
            transmits: VecDeque::new(),
        }
    }

    /// The ACK arrived: stop.
    pub fn acknowledged(&mut self) {
        self.done = true;
    }

    /// A retransmitted INVITE: resend at once.
    pub fn resend(&mut self) {
        if !self.done {
            self.transmits.push_back(Transmit {
                bytes: self.response.clone(),
                peer: self.peer.clone(),
            });
        }
    }

    /// Returns `true` exactly once, when 64·T1 passed without ACK.
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        if self.done {
            return false;
        }
        if self.give_up <= now {
            self.done = true;
            return true;
        }
        if let Some(b) = &mut self.retransmit {
            while b.next <= now {
                b.fire();
                self.transmits.push_back(Transmit {
                    bytes: self.response.clone(),
                    peer: self.peer.clone(),
                });
            }
        }
        false
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        let r = self.retransmit.map(|b| b.next);
        [r, Some(self.give_up)].into_iter().flatten().min()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::sip::msg::{Message, Response, parse};
    use crate::sip::transport::{ConnId, Transport};

    fn udp() -> Peer {
        Peer {
            transport: Transport::Udp,
            addr: "127.0.0.1:5070".parse::<SocketAddr>().unwrap(),
            conn: None,
        }
    }

    fn tcp() -> Peer {
        Peer {
            transport: Transport::Tcp,
            addr: "127.0.0.1:5070".parse::<SocketAddr>().unwrap(),
            conn: Some(ConnId(1)),
        }
    }

    fn request(method: &str) -> Request {
        let text = format!(
            "{method} sip:1@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n\
             From: <sip:a@h>;tag=f\r\nTo: <sip:1@h>\r\nCall-ID: c\r\nCSeq: 1 {method}\r\n\r\n"
        );
        match parse(text.as_bytes()).unwrap() {
            Message::Request(r) => r,
            _ => unreachable!(),
        }
    }

    fn response(status: u16) -> Response {
        Response::to(&request("BYE"), status, "X", Some("t"))
    }

    /// Drives a machine until `end`, always jumping to its next timeout, and records the
    /// offsets (from `start`) at which it transmitted.
    fn run<M>(
        m: &mut M,
        start: Instant,
        end: Instant,
        timeout: impl Fn(&M) -> Option<Instant>,
        fire: impl Fn(&mut M, Instant),
        poll: impl Fn(&mut M) -> Option<Transmit>,
    ) -> Vec<Duration> {
        let mut sent = Vec::new();
        for _ in 0..1000 {
            let Some(at) = timeout(m) else { break };
            if at > end {
                break;
            }
            fire(m, at);
            while poll(m).is_some() {
                sent.push(at - start);
            }
        }
        sent
    }

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|m| Duration::from_millis(*m)).collect()
    }

    #[test]
    fn invite_server_non_2xx_retransmits_with_timer_g_until_timer_h() {
        let t0 = Instant::now();
        let mut tx = InviteServer::new(udp());
        tx.respond(t0, b"100".to_vec(), 100);
        tx.respond(t0, b"486".to_vec(), 486);
        assert_eq!(tx.poll_transmit().unwrap().bytes, b"100");
        assert_eq!(tx.poll_transmit().unwrap().bytes, b"486");
        assert_eq!(tx.state(), InviteServerState::Completed);
        let sent = run(
            &mut tx,
            t0,
            t0 + Duration::from_secs(40),
            |m| m.poll_timeout(),
            |m, at| m.handle_timeout(at),
            |m| m.poll_transmit(),
        );
        // G: 0.5, 1, 2, 4, then every T2 = 4 s: 8.5, 12.5, … until H at 32 s.
        assert_eq!(
            sent,
            ms(&[
                500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500
            ])
        );
        assert_eq!(tx.poll_event(), Some(TxEvent::Timeout));
        assert_eq!(tx.poll_event(), Some(TxEvent::Terminated));
        assert_eq!(tx.state(), InviteServerState::Terminated);
    }

    #[test]
    fn invite_server_ack_stops_retransmits_and_timer_i_absorbs() {
        let t0 = Instant::now();
        let mut tx = InviteServer::new(udp());
        tx.respond(t0, b"487".to_vec(), 487);
        while tx.poll_transmit().is_some() {}
        tx.handle_timeout(t0 + T1);
        assert!(tx.poll_transmit().is_some());
        tx.handle_request(t0 + Duration::from_millis(700), &request("ACK"));
        assert_eq!(tx.state(), InviteServerState::Confirmed);
        assert_eq!(
            tx.poll_timeout(),
            Some(t0 + Duration::from_millis(700) + T4)
        );
        tx.handle_request(t0 + Duration::from_millis(800), &request("ACK"));
        assert!(tx.poll_transmit().is_none());
        tx.handle_timeout(t0 + Duration::from_millis(700) + T4);
        assert_eq!(tx.poll_event(), Some(TxEvent::Terminated));
    }

    #[test]
    fn invite_server_over_tcp_does_not_retransmit_and_timer_i_is_zero() {
        let t0 = Instant::now();
        let mut tx = InviteServer::new(tcp());
        tx.respond(t0, b"488".to_vec(), 488);
        while tx.poll_transmit().is_some() {}
        assert_eq!(tx.poll_timeout(), Some(t0 + 64 * T1));
        tx.handle_request(t0 + T1, &request("ACK"));
        assert_eq!(tx.poll_timeout(), Some(t0 + T1));
    }

    #[test]
    fn invite_server_absorbs_retransmitted_invites() {
        let t0 = Instant::now();
        let mut tx = InviteServer::new(udp());
        tx.respond(t0, b"100".to_vec(), 100);
        while tx.poll_transmit().is_some() {}
        tx.handle_request(t0 + T1, &request("INVITE"));
        assert_eq!(tx.poll_transmit().unwrap().bytes, b"100");
        tx.respond(t0 + T1, b"200".to_vec(), 200);
        assert_eq!(tx.state(), InviteServerState::Accepted);
        while tx.poll_transmit().is_some() {}
        tx.handle_request(t0 + 2 * T1, &request("INVITE"));
        assert_eq!(tx.poll_transmit().unwrap().bytes, b"200");
        // Timer L ends Accepted after 64·T1 without a timeout event.
        tx.handle_timeout(t0 + T1 + 64 * T1);
        assert_eq!(tx.poll_event(), Some(TxEvent::Terminated));
    }

    #[test]
    fn non_invite_server_timer_j() {
        let t0 = Instant::now();
        let mut tx = NonInviteServer::new(udp());
        tx.handle_request(t0);
        assert!(
            tx.poll_transmit().is_none(),
            "nothing to resend before the TU answers"
        );
        tx.respond(t0, b"200".to_vec(), 200);
        assert!(tx.poll_transmit().is_some());
        tx.handle_request(t0 + T1);
        assert_eq!(tx.poll_transmit().unwrap().bytes, b"200");
        assert_eq!(tx.poll_timeout(), Some(t0 + 64 * T1));
        tx.handle_timeout(t0 + 64 * T1);
        assert_eq!(tx.state(), NonInviteServerState::Terminated);
        let mut tcp_tx = NonInviteServer::new(tcp());
        tcp_tx.respond(t0, b"200".to_vec(), 200);
        assert_eq!(tcp_tx.poll_timeout(), Some(t0));
    }

    #[test]
    fn non_invite_client_timer_e_doubles_to_t2_and_timer_f_times_out() {
        let t0 = Instant::now();
        let mut tx = NonInviteClient::new(t0, b"BYE".to_vec(), udp());
        assert!(tx.poll_transmit().is_some());
        let sent = run(
            &mut tx,
            t0,
            t0 + Duration::from_secs(40),
            |m| m.poll_timeout(),
            |m, at| m.handle_timeout(at),
            |m| m.poll_transmit(),
        );
        assert_eq!(
            sent,
            ms(&[
                500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500
            ])
        );
        assert_eq!(tx.poll_event(), Some(TxEvent::Timeout));
        assert_eq!(tx.poll_event(), Some(TxEvent::Terminated));
    }

    #[test]
    fn non_invite_client_completes_on_final_and_absorbs_retransmits() {
        let t0 = Instant::now();
        let mut tx = NonInviteClient::new(t0, b"BYE".to_vec(), udp());
        while tx.poll_transmit().is_some() {}
        tx.handle_response(t0 + Duration::from_millis(100), response(200));
        assert!(matches!(tx.poll_event(), Some(TxEvent::Response(r)) if r.status == 200));
        assert_eq!(tx.state(), NonInviteClientState::Completed);
        tx.handle_response(t0 + Duration::from_millis(200), response(200));
        assert_eq!(tx.poll_event(), None);
        assert_eq!(
            tx.poll_timeout(),
            Some(t0 + Duration::from_millis(100) + T4)
        );
        tx.handle_timeout(t0 + Duration::from_millis(100) + T4);
        assert_eq!(tx.poll_event(), Some(TxEvent::Terminated));
    }

    #[test]
    fn non_invite_client_provisional_moves_timer_e_to_t2() {
        let t0 = Instant::now();
        let mut tx = NonInviteClient::new(t0, b"BYE".to_vec(), udp());
        while tx.poll_transmit().is_some() {}
        tx.handle_response(t0 + Duration::from_millis(100), response(100));
        let sent = run(
            &mut tx,
            t0,
            t0 + Duration::from_secs(10),
            |m| m.poll_timeout(),
            |m, at| m.handle_timeout(at),
            |m| m.poll_transmit(),
        );
        assert_eq!(sent, ms(&[500, 4500, 8500]));
    }

    #[test]
    fn two_xx_retransmit_schedule_then_give_up_at_64_t1() {
        let t0 = Instant::now();
        let mut r = TwoXxRetransmit::new(t0, b"200".to_vec(), udp());
        let mut sent = Vec::new();
        let mut gave_up = None;
        for _ in 0..100 {
            let Some(at) = r.poll_timeout() else { break };
            if r.handle_timeout(at) {
                gave_up = Some(at - t0);
            }
            while r.poll_transmit().is_some() {
                sent.push(at - t0);
            }
        }
        assert_eq!(
            sent,
            ms(&[
                500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500
            ])
        );
        assert_eq!(gave_up, Some(64 * T1));
    }

    #[test]
    fn two_xx_retransmit_stops_on_ack_and_not_sent_over_tcp() {
        let t0 = Instant::now();
        let mut r = TwoXxRetransmit::new(t0, b"200".to_vec(), udp());
        r.handle_timeout(t0 + T1);
        assert!(r.poll_transmit().is_some());
        r.acknowledged();
        assert_eq!(r.poll_timeout(), None);
        assert!(!r.handle_timeout(t0 + 64 * T1));
        let mut t = TwoXxRetransmit::new(t0, b"200".to_vec(), tcp());
        assert_eq!(t.poll_timeout(), Some(t0 + 64 * T1));
        assert!(t.handle_timeout(t0 + 64 * T1));
        assert!(t.poll_transmit().is_none());
    }

    #[test]
    fn keys_match_retransmits_and_acks() {
        let invite = request("INVITE");
        let ack = request("ACK");
        assert_eq!(TxKey::server(&invite, false), TxKey::server(&ack, true));
        assert_ne!(TxKey::server(&invite, false), TxKey::server(&ack, false));
        let legacy = Request {
            vias: vec![crate::sip::msg::Via::parse("SIP/2.0/UDP h:5060").unwrap()],
            ..invite.clone()
        };
        assert!(matches!(
            TxKey::server(&legacy, false),
            TxKey::Rfc2543 { .. }
        ));
    }
}
