//! pinbridge: a SIP/RTP dial-in meeting bridge.
//!
//! The library holds every part of the server; `main.rs` is only the command line.
//! Protocol and call logic are sans-IO state machines (`sip::transaction`, `sip::endpoint`,
//! `media::rtp`), driven by the thin tokio layer in `server` and `media::engine`.

pub mod audio;
pub mod config;
pub mod media;
pub mod server;
pub mod sip;
