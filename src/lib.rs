//! pinbridge: a SIP/RTP dial-in meeting bridge.
//!
//! The library holds every part of the server; `main.rs` is only the command line.
//! Protocol and call logic are sans-IO state machines (`sip::transaction`, `sip::endpoint`,
//! `media::rtp`), driven by the thin tokio layer in `server` and `media::engine`.

pub mod admin;
pub mod audio;
pub mod bridge;
pub mod calls;
pub mod config;
pub mod descriptors;
pub mod fault;
pub mod fuzz;
pub mod ivr;
pub mod loadgen;
pub mod media;
pub mod notify;
pub mod pin;
pub mod pin_checks;
pub mod server;
pub mod sip;
pub mod source;
pub mod store;
