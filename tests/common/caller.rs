//! One dial-in caller for the meeting, brute-force and hostile-RTP tests: its SIP client,
//! its RTP socket, the RFC 4733 plan its key presses come from (one plan per call, so
//! sequence numbers and timestamps run on across presses), and the tone it may be sending.

use std::time::Duration;

use super::rtp::{MediaPlan, RtpPacket, Signal};
use super::server::Server;
use super::sip::{SdpOffer, SipClient, SipMessage};
use super::{Dialed, RtpReceiver, RtpSender, SIP_STEP};

/// The telephone-event payload type callers offer.
pub const EVENT_PT: u8 = 101;

pub struct Caller {
    pub client: SipClient,
    pub rtp: RtpReceiver,
    pub d: Dialed,
    plan: MediaPlan,
    sender: Option<RtpSender>,
}

impl Caller {
    /// Dials `user@server` over UDP from 127.0.0.1, offering PCMU and telephone-event.
    pub fn dial(server: &Server, user: &str) -> Caller {
        Caller::expect(Caller::try_dial(
            SipClient::udp(server.sip_addr()),
            user,
            None,
            &[],
        ))
    }

    /// Dials `user@server` from `from_uri` (the From header's address).
    pub fn dial_from(server: &Server, user: &str, from_uri: &str) -> Caller {
        Caller::expect(Caller::try_dial(
            SipClient::udp(server.sip_addr()),
            user,
            Some(from_uri),
            &[],
        ))
    }

    /// Dials `user` with `client` (bound where the test wants the call to come from), with
    /// From `from_uri` when given and `headers` added to the INVITE; `Err` with the final
    /// response when it is not 200 (acknowledged either way).
    pub fn try_dial(
        mut client: SipClient,
        user: &str,
        from_uri: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<Caller, SipMessage> {
        let rtp = RtpReceiver::bind();
        let offer = SdpOffer::new(rtp.addr()).pcmu().telephone_event(EVENT_PT);
        let mut call = client.new_call(user);
        if let Some(uri) = from_uri {
            call.local_uri = uri.into();
        }
        client.send_invite(
            &mut call,
            Some(("application/sdp", &offer.render())),
            headers,
        );
        let ok = client.expect_final(&mut call, "INVITE", SIP_STEP);
        client.ack(&call, &ok);
        if ok.status() != Some(200) {
            return Err(ok);
        }
        let answer = ok.sdp().expect("an SDP answer");
        let media = answer.audio_addr().expect("an audio address");
        let d = Dialed {
            call,
            ok,
            answer,
            media,
            payload_type: 0,
        };
        Ok(Caller {
            client,
            rtp,
            d,
            plan: MediaPlan::new(0),
            sender: None,
        })
    }

    fn expect(dialed: Result<Caller, SipMessage>) -> Caller {
        dialed.unwrap_or_else(|r| panic!("the INVITE was answered {}", r.to_text()))
    }

    pub fn call_id(&self) -> &str {
        &self.d.call.call_id
    }

    /// Presses `keys` as RFC 4733 events (60 ms down, 60 ms between), blocking until sent.
    pub fn press(&mut self, keys: &str) {
        self.plan.silence(2).key_presses(EVENT_PT, keys, 3, 3);
        let packets = self.plan.take_packets();
        self.rtp.send_plan(self.d.media, &packets);
    }

    /// Presses `keys` as SIP INFO (`application/dtmf-relay`), each answered 200: no RTP, so
    /// the caller's audio stream ([`Caller::talk`]) goes on untouched.
    pub fn press_by_info(&mut self, keys: &str) {
        for key in keys.chars() {
            let body = format!("Signal={key}\r\nDuration=160\r\n");
            self.client.request(
                &mut self.d.call,
                "INFO",
                &[],
                Some(("application/dtmf-relay", &body)),
            );
            let resp = self.client.expect_final(&mut self.d.call, "INFO", SIP_STEP);
            assert_eq!(resp.status(), Some(200), "{}", resp.to_text());
        }
    }

    /// Keeps sending `signal` (20 ms PCMU frames from the caller's own socket) until
    /// stopped, at most a minute.
    pub fn talk(&mut self, signal: Signal) {
        self.stop_talking();
        self.sender =
            Some(
                self.rtp
                    .start_sending(self.d.media, 0, signal, Duration::from_secs(60)),
            );
    }

    /// Stops what [`Caller::talk`] started (the socket is then free for hand-made packets).
    pub fn stop_talking(&mut self) {
        self.sender = None;
    }

    /// Drains what arrived so far, then records `window` of what the server sends.
    pub fn listen(&mut self, window: Duration) -> Vec<RtpPacket> {
        self.rtp.recv_for(Duration::from_millis(30));
        self.rtp.recv_for(window)
    }

    /// Waits for the server's BYE and answers it.
    pub fn expect_hung_up(mut self, within: Duration) {
        let bye = self.client.expect_request(&self.d.call, "BYE", within);
        self.client.respond(&bye, 200, "OK");
    }

    pub fn hang_up(mut self) {
        self.stop_talking();
        self.client.bye(&mut self.d.call);
        // Best effort: the server may have ended the call itself.
        let _ = self.client.recv(Duration::from_secs(2));
    }
}
