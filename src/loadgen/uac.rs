//! One load-generator call's SIP side as a sans-IO user agent client (RFC 3261): INVITE with
//! an SDP offer, retransmitted over UDP (Timer A, given up at Timer B); provisional responses;
//! the 2xx answered with ACK (again for each retransmitted 2xx, §13.2.2.4); a non-2xx final
//! ACKed in its transaction (§17.1.1.3); BYE at the end, retransmitted (Timers E and F); a
//! BYE from the server answered with 200.
//!
//! Driven like every machine here: `handle_response`/`handle_request`/`handle_timeout`/
//! `hangup` in, `poll_transmit`/`poll_event`/`poll_timeout` out. Messages are built and read
//! with [`crate::sip::msg`] and SDP with [`crate::sip::sdp`]. The route set is not used: the
//! loadgen talks to one server directly.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::media::Direction;
use crate::sip::msg::{self, Headers, Method, Request, Response, Uri};
use crate::sip::sdp::{self, LocalMedia, Negotiated};

/// RFC 3261 §17.1.1.1: round-trip estimate.
pub const T1: Duration = Duration::from_millis(500);
/// RFC 3261 §17.1.2.2: cap on non-INVITE retransmission intervals.
pub const T2: Duration = Duration::from_secs(4);
/// Timers B and F: 64·T1.
pub const TIMER_B: Duration = Duration::from_secs(32);

/// Who and where one call is.
#[derive(Clone, Debug)]
pub struct UacConfig {
    /// The server's SIP address (Request-URI host and destination).
    pub server: SocketAddr,
    /// Our SIP socket's address (Via, Contact).
    pub local_sip: SocketAddr,
    /// Our RTP address, offered in SDP.
    pub local_rtp: SocketAddr,
    /// The Request-URI user part: the conference ID (direct dial).
    pub user: String,
    /// Unique per call: Call-ID, From tag and branches are made from it.
    pub id: String,
}

/// What the call tells its driver.
#[derive(Clone, Debug, PartialEq)]
pub enum UacEvent {
    /// 200 OK to the INVITE: the call is up and media was negotiated.
    Answered(Negotiated),
    /// The call could not be set up, or failed after.
    Failed(String),
    /// The call is over: our BYE answered (`by_server` false) or the server's BYE answered.
    Ended { by_server: bool },
}

#[derive(Debug)]
enum State {
    /// Timer A retransmits the INVITE until a response; Timer B gives up.
    Calling {
        next: Instant,
        interval: Duration,
        give_up: Instant,
    },
    /// A provisional response arrived: no more retransmissions; still bounded by Timer B.
    Proceeding {
        give_up: Instant,
    },
    Established {
        ack: Vec<u8>,
    },
    /// Our BYE is out: Timer E retransmits, Timer F gives up.
    Terminating {
        bye: Vec<u8>,
        ack: Vec<u8>,
        next: Instant,
        interval: Duration,
        give_up: Instant,
    },
    Terminated,
}

/// One call's user agent client.
#[derive(Debug)]
pub struct Uac {
    cfg: UacConfig,
    call_id: String,
    from_tag: String,
    invite: Vec<u8>,
    invite_branch: String,
    /// The dialog's remote tag and target, from the 200 OK.
    remote_tag: Option<String>,
    remote_target: Option<Uri>,
    state: State,
    transmits: VecDeque<Vec<u8>>,
    events: VecDeque<UacEvent>,
}

impl Uac {
    /// Starts the call at `now`: the INVITE is ready in [`Uac::poll_transmit`].
    pub fn new(now: Instant, cfg: UacConfig) -> Uac {
        let call_id = format!("{}@pinbridge-loadgen", cfg.id);
        let from_tag = format!("lg{}", cfg.id);
        let invite_branch = format!("z9hG4bK-lg-{}-1", cfg.id);
        let local = LocalMedia {
            addr: cfg.local_rtp.ip(),
            port: cfg.local_rtp.port(),
            session_id: 1,
            session_version: 1,
        };
        let offer = sdp::offer(&local, Direction::SendRecv);
        let mut uac = Uac {
            call_id,
            from_tag,
            invite: Vec::new(),
            invite_branch: invite_branch.clone(),
            remote_tag: None,
            remote_target: None,
            state: State::Calling {
                next: now + T1,
                interval: T1,
                give_up: now + TIMER_B,
            },
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            cfg,
        };
        let mut h = uac.headers(Method::Invite, 1, &invite_branch, None);
        h.push("Contact", format!("<sip:loadgen@{}>", uac.cfg.local_sip));
        h.push("Content-Type", "application/sdp");
        let req = msg::build_request(Method::Invite, uac.request_uri(), h, offer.into_bytes());
        uac.invite = req.to_bytes();
        uac.transmits.push_back(uac.invite.clone());
        uac
    }

    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    /// True once the call is over (ended or failed).
    pub fn is_terminated(&self) -> bool {
        matches!(self.state, State::Terminated)
    }

    /// A response to one of our requests.
    pub fn handle_response(&mut self, now: Instant, resp: &Response) {
        match resp.cseq.method {
            Method::Invite => self.handle_invite_response(now, resp),
            Method::Bye
                if resp.status >= 200 && matches!(self.state, State::Terminating { .. }) =>
            {
                self.state = State::Terminated;
                self.events
                    .push_back(if resp.status < 300 || resp.status == 481 {
                        UacEvent::Ended { by_server: false }
                    } else {
                        UacEvent::Failed(format!("BYE answered {} {}", resp.status, resp.reason))
                    });
            }
            _ => {}
        }
    }

    fn handle_invite_response(&mut self, now: Instant, resp: &Response) {
        if resp.vias.first().and_then(|v| v.branch()) != Some(self.invite_branch.as_str()) {
            return;
        }
        match (&self.state, resp.status) {
            (State::Calling { give_up, .. }, 100..=199) => {
                self.state = State::Proceeding { give_up: *give_up };
            }
            (State::Calling { .. } | State::Proceeding { .. }, 200..=299) => {
                self.remote_tag = resp.to_tag().map(str::to_string);
                self.remote_target = resp
                    .headers
                    .get("Contact")
                    .and_then(|c| msg::NameAddr::parse(c).ok())
                    .map(|c| c.uri);
                let ack = self.ack_2xx(resp);
                self.transmits.push_back(ack.clone());
                match sdp::accept_answer(&resp.body, Direction::SendRecv) {
                    Ok(neg) => {
                        self.state = State::Established { ack };
                        self.events.push_back(UacEvent::Answered(neg));
                    }
                    Err(e) => {
                        // Answered but unusable: end the dialog at once.
                        self.state = State::Established { ack };
                        self.events
                            .push_back(UacEvent::Failed(format!("200 OK with bad SDP: {e}")));
                        self.hangup(now);
                    }
                }
            }
            (State::Calling { .. } | State::Proceeding { .. }, 300..) => {
                // §17.1.1.3: the ACK for a non-2xx final is part of the INVITE transaction.
                self.transmits.push_back(self.ack_non_2xx(resp));
                self.state = State::Terminated;
                self.events.push_back(UacEvent::Failed(format!(
                    "INVITE answered {} {}",
                    resp.status, resp.reason
                )));
            }
            // §13.2.2.4: a retransmitted 2xx gets the same ACK again.
            (State::Established { ack } | State::Terminating { ack, .. }, 200..=299) => {
                self.transmits.push_back(ack.clone());
            }
            _ => {}
        }
    }

    /// A request from the server in this call's dialog.
    pub fn handle_request(&mut self, _now: Instant, req: &Request) {
        let (status, reason) = match req.method {
            Method::Bye => (200, "OK"),
            Method::Options | Method::Info => (200, "OK"),
            Method::Ack => return,
            _ => (501, "Not Implemented"),
        };
        let resp = Response::to(req, status, reason, None);
        self.transmits.push_back(resp.to_bytes());
        if req.method == Method::Bye && !self.is_terminated() {
            let was_up = matches!(self.state, State::Established { .. });
            self.state = State::Terminated;
            self.events.push_back(if was_up {
                UacEvent::Ended { by_server: true }
            } else {
                UacEvent::Failed("server sent BYE before the call was up".into())
            });
        }
    }

    /// Time passed: retransmit or give up.
    pub fn handle_timeout(&mut self, now: Instant) {
        match &mut self.state {
            State::Calling {
                next,
                interval,
                give_up,
            } => {
                if now >= *give_up {
                    self.state = State::Terminated;
                    self.events
                        .push_back(UacEvent::Failed("no answer to INVITE (Timer B)".into()));
                } else if now >= *next {
                    // Timer A doubles without a cap (§17.1.1.2).
                    *interval *= 2;
                    *next = now + *interval;
                    self.transmits.push_back(self.invite.clone());
                }
            }
            State::Proceeding { give_up } => {
                if now >= *give_up {
                    self.state = State::Terminated;
                    self.events
                        .push_back(UacEvent::Failed("no final answer to INVITE".into()));
                }
            }
            State::Terminating {
                bye,
                next,
                interval,
                give_up,
                ..
            } => {
                if now >= *give_up {
                    self.state = State::Terminated;
                    self.events
                        .push_back(UacEvent::Failed("no answer to BYE (Timer F)".into()));
                } else if now >= *next {
                    *interval = (*interval * 2).min(T2);
                    *next = now + *interval;
                    self.transmits.push_back(bye.clone());
                }
            }
            State::Established { .. } | State::Terminated => {}
        }
    }

    /// Ends the call: BYE when established, nothing to do when it never came up (a pending
    /// INVITE is left to its timers: CANCEL is not needed by the loadgen).
    pub fn hangup(&mut self, now: Instant) {
        let State::Established { ack } = &self.state else {
            return;
        };
        let ack = ack.clone();
        let branch = format!("z9hG4bK-lg-{}-3", self.cfg.id);
        let h = self.headers(Method::Bye, 2, &branch, self.remote_tag.as_deref());
        let uri = self
            .remote_target
            .clone()
            .unwrap_or_else(|| self.request_uri());
        let bye = msg::build_request(Method::Bye, uri, h, Vec::new()).to_bytes();
        self.transmits.push_back(bye.clone());
        self.state = State::Terminating {
            bye,
            ack,
            next: now + T1,
            interval: T1,
            give_up: now + TIMER_B,
        };
    }

    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<UacEvent> {
        self.events.pop_front()
    }

    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Calling { next, give_up, .. } | State::Terminating { next, give_up, .. } => {
                Some((*next).min(*give_up))
            }
            State::Proceeding { give_up } => Some(*give_up),
            State::Established { .. } | State::Terminated => None,
        }
    }

    fn request_uri(&self) -> Uri {
        Uri::parse(&format!("sip:{}@{}", self.cfg.user, self.cfg.server))
            .expect("conference IDs are digits and the server an IP:port")
    }

    fn headers(&self, method: Method, seq: u32, branch: &str, to_tag: Option<&str>) -> Headers {
        let mut h = Headers::new();
        h.push(
            "Via",
            format!("SIP/2.0/UDP {};branch={branch};rport", self.cfg.local_sip),
        );
        h.push("Max-Forwards", "70");
        h.push(
            "From",
            format!(
                "<sip:loadgen@{}>;tag={}",
                host(self.cfg.local_sip.ip()),
                self.from_tag
            ),
        );
        let to = format!("<sip:{}@{}>", self.cfg.user, self.cfg.server);
        h.push(
            "To",
            match to_tag {
                Some(tag) => format!("{to};tag={tag}"),
                None => to,
            },
        );
        h.push("Call-ID", self.call_id.clone());
        h.push("CSeq", format!("{seq} {method}"));
        h.push("User-Agent", "pinbridge-loadgen");
        h
    }

    /// §13.2.2.4: the ACK for a 2xx is its own transaction (new branch), same CSeq number.
    fn ack_2xx(&self, resp: &Response) -> Vec<u8> {
        let branch = format!("z9hG4bK-lg-{}-2", self.cfg.id);
        let h = self.headers(Method::Ack, 1, &branch, resp.to_tag());
        let uri = self
            .remote_target
            .clone()
            .unwrap_or_else(|| self.request_uri());
        msg::build_request(Method::Ack, uri, h, Vec::new()).to_bytes()
    }

    /// §17.1.1.3: same branch and Request-URI as the INVITE, To from the response.
    fn ack_non_2xx(&self, resp: &Response) -> Vec<u8> {
        let h = self.headers(Method::Ack, 1, &self.invite_branch, resp.to_tag());
        msg::build_request(Method::Ack, self.request_uri(), h, Vec::new()).to_bytes()
    }
}

fn host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::msg::Message;

    fn cfg() -> UacConfig {
        UacConfig {
            server: "127.0.0.1:5060".parse().unwrap(),
            local_sip: "127.0.0.1:40000".parse().unwrap(),
            local_rtp: "127.0.0.1:40002".parse().unwrap(),
            user: "1234567".into(),
            id: "7".into(),
        }
    }

    fn request(bytes: &[u8]) -> Request {
        match msg::parse(bytes).expect("our own messages parse") {
            Message::Request(r) => r,
            Message::Response(_) => panic!("not a request"),
        }
    }

    fn answer(req: &Request, status: u16, sdp: &str) -> Response {
        let mut r = Response::to(req, status, "X", Some("srv"))
            .with_header("Contact", "<sip:pinbridge@127.0.0.1:5060>");
        if !sdp.is_empty() {
            r = r.with_body("application/sdp", sdp.as_bytes().to_vec());
        }
        match msg::parse(&r.to_bytes()).unwrap() {
            Message::Response(r) => r,
            Message::Request(_) => unreachable!(),
        }
    }

    const ANSWER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 30000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n";

    #[test]
    fn invite_is_retransmitted_on_timer_a_until_a_provisional_then_answered_acked_and_byed() {
        let t0 = Instant::now();
        let mut uac = Uac::new(t0, cfg());
        let invite = request(&uac.poll_transmit().unwrap());
        assert_eq!(invite.method, Method::Invite);
        assert_eq!(invite.uri.user.as_deref(), Some("1234567"));
        assert!(String::from_utf8_lossy(&invite.body).contains("m=audio 40002 RTP/AVP 0 8 101"));
        // Timer A: 500 ms, then 1 s later.
        assert_eq!(uac.poll_timeout(), Some(t0 + T1));
        uac.handle_timeout(t0 + T1);
        assert!(uac.poll_transmit().is_some());
        assert_eq!(uac.poll_timeout(), Some(t0 + T1 + 2 * T1));
        uac.handle_response(t0 + T1, &answer(&invite, 100, ""));
        assert_eq!(uac.poll_timeout(), Some(t0 + TIMER_B));
        uac.handle_response(t0 + T1, &answer(&invite, 200, ANSWER));
        let ack = request(&uac.poll_transmit().unwrap());
        assert_eq!((ack.method.clone(), ack.cseq.seq), (Method::Ack, 1));
        assert_eq!(ack.to.tag(), Some("srv"));
        assert_eq!(ack.uri.to_string(), "sip:pinbridge@127.0.0.1:5060");
        let Some(UacEvent::Answered(neg)) = uac.poll_event() else {
            panic!("no answer event")
        };
        assert_eq!(neg.remote, Some("127.0.0.1:30000".parse().unwrap()));
        // A retransmitted 200 gets the ACK again.
        uac.handle_response(t0 + T1, &answer(&invite, 200, ANSWER));
        assert_eq!(
            uac.poll_transmit().map(|b| request(&b).method),
            Some(Method::Ack)
        );
        // BYE, retransmitted on Timer E, answered.
        uac.hangup(t0 + Duration::from_secs(10));
        let bye = request(&uac.poll_transmit().unwrap());
        assert_eq!((bye.method.clone(), bye.cseq.seq), (Method::Bye, 2));
        uac.handle_timeout(t0 + Duration::from_secs(10) + T1);
        assert!(uac.poll_transmit().is_some());
        uac.handle_response(t0 + Duration::from_secs(11), &answer(&bye, 200, ""));
        assert_eq!(uac.poll_event(), Some(UacEvent::Ended { by_server: false }));
        assert!(uac.is_terminated());
    }

    #[test]
    fn a_rejection_is_acked_and_fails_and_silence_fails_at_timer_b() {
        let t0 = Instant::now();
        let mut uac = Uac::new(t0, cfg());
        let invite = request(&uac.poll_transmit().unwrap());
        uac.handle_response(t0, &answer(&invite, 486, ""));
        let ack = request(&uac.poll_transmit().unwrap());
        assert_eq!(ack.top_via().branch(), invite.top_via().branch());
        assert!(matches!(uac.poll_event(), Some(UacEvent::Failed(r)) if r.contains("486")));

        let mut uac = Uac::new(t0, cfg());
        let mut sent = 0;
        for _ in 0..20 {
            while uac.poll_transmit().is_some() {
                sent += 1;
            }
            let Some(at) = uac.poll_timeout() else { break };
            uac.handle_timeout(at);
        }
        // 0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s, then Timer B at 32 s.
        assert_eq!(sent, 7);
        assert!(matches!(uac.poll_event(), Some(UacEvent::Failed(r)) if r.contains("Timer B")));
    }

    #[test]
    fn a_server_bye_is_answered_with_200() {
        let t0 = Instant::now();
        let mut uac = Uac::new(t0, cfg());
        let invite = request(&uac.poll_transmit().unwrap());
        uac.handle_response(t0, &answer(&invite, 200, ANSWER));
        while uac.poll_transmit().is_some() {}
        let _ = uac.poll_event();
        let bye = "BYE sip:loadgen@127.0.0.1:40000 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKs1\r\nFrom: <sip:1234567@127.0.0.1>;tag=srv\r\nTo: <sip:loadgen@127.0.0.1>;tag=lg7\r\nCall-ID: 7@pinbridge-loadgen\r\nCSeq: 1 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";
        uac.handle_request(t0, &request(bye.as_bytes()));
        let ok = uac.poll_transmit().unwrap();
        assert!(ok.starts_with(b"SIP/2.0 200 OK"));
        assert_eq!(uac.poll_event(), Some(UacEvent::Ended { by_server: true }));
    }
}
