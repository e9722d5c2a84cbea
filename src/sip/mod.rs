//! SIP signalling: message parsing at the edge (`msg`), RFC 3261 transactions
//! (`transaction`), dialogs (`dialog`), SDP offer/answer (`sdp`), the sans-IO user-agent
//! core that ties them together (`endpoint`) and the sockets (`transport`).

pub mod dialog;
pub mod endpoint;
pub mod hashed;
pub mod limits;
pub mod msg;
pub mod sdp;
pub mod transaction;
pub mod transport;
