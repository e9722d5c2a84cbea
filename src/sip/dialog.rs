//! Dialog state for our UAS call legs (RFC 3261 §12): identity, CSeq spaces, the remote
//! target and route set, and how to build a request inside the dialog (our BYE).

use super::msg::{Headers, Method, Request, Uri, build_request};
use super::transport::Peer;

/// RFC 3261 §12: a dialog is identified by Call-ID plus both tags. We are always the UAS, so
/// the local tag is the one we put in the To of our 2xx.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DialogId {
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: String,
}

/// One UAS dialog.
#[derive(Debug, Clone)]
pub struct Dialog {
    pub id: DialogId,
    /// Our From/To values as they appear on the wire (with tags), for requests we send.
    local_party: String,
    remote_party: String,
    /// Remote target: the peer's Contact (RFC 3261 §12.1.1), updated by target refreshes.
    pub remote_target: Uri,
    /// Record-Route of the INVITE in order: our Route set as UAS (§12.1.1).
    pub route_set: Vec<String>,
    /// Last CSeq we used in a request; the peer's CSeq space is separate.
    local_cseq: u32,
    /// Highest CSeq seen from the peer: lower in-dialog requests are out of order (§12.2.2).
    pub remote_cseq: u32,
    /// Where requests and responses go: the peer the INVITE came from. Symmetric
    /// signalling keeps calls working behind NAT, where the Contact is often unroutable.
    pub peer: Peer,
}

impl Dialog {
    /// The dialog a 2xx to `invite` creates, with our `local_tag`.
    pub fn from_invite(invite: &Request, local_tag: &str, peer: Peer) -> Dialog {
        let remote_target = invite
            .contact()
            .map(|c| c.uri)
            .unwrap_or_else(|| invite.from.uri.clone());
        let to = invite.headers.get("To").unwrap_or_default();
        let local_party = if invite.to.tag().is_some() {
            to.to_string()
        } else {
            format!("{to};tag={local_tag}")
        };
        Dialog {
            id: DialogId {
                call_id: invite.call_id.clone(),
                local_tag: local_tag.to_string(),
                remote_tag: invite.from.tag().unwrap_or_default().to_string(),
            },
            local_party,
            remote_party: invite.headers.get("From").unwrap_or_default().to_string(),
            remote_target,
            route_set: invite
                .headers
                .all("Record-Route")
                .map(str::to_string)
                .collect(),
            local_cseq: 0,
            remote_cseq: invite.cseq.seq,
            peer,
        }
    }

    /// Builds the next in-dialog request (§12.2.1.1) with a fresh Via `branch` from `via`.
    pub fn request(&mut self, method: Method, via: String, user_agent: &str) -> Request {
        self.local_cseq += 1;
        let mut h = Headers::new();
        h.push("Via", via);
        h.push("Max-Forwards", "70");
        for r in &self.route_set {
            h.push("Route", r.clone());
        }
        h.push("From", self.local_party.clone());
        h.push("To", self.remote_party.clone());
        h.push("Call-ID", self.id.call_id.clone());
        h.push("CSeq", format!("{} {}", self.local_cseq, method));
        h.push("User-Agent", user_agent.to_string());
        build_request(method, self.remote_target.clone(), h, Vec::new())
    }

    /// Checks and records the CSeq of an in-dialog request; `false` means out of order.
    pub fn accept_remote_cseq(&mut self, req: &Request) -> bool {
        if req.method == Method::Ack || req.method == Method::Cancel {
            return true;
        }
        if req.cseq.seq <= self.remote_cseq {
            return false;
        }
        self.remote_cseq = req.cseq.seq;
        true
    }

    /// A target refresh (re-INVITE, UPDATE) may move the peer (§12.2.2).
    pub fn refresh_target(&mut self, req: &Request) {
        if let Some(c) = req.contact() {
            self.remote_target = c.uri;
        }
    }
}
