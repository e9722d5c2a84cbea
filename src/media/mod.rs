//! Media: G.711 (`g711`), RTP packets and the port pool (`rtp`), pre-encoded sounds
//! (`player`) and the workers that own the RTP sockets and the 20 ms clock (`engine`).

use std::time::Duration;

pub mod dtmf;
pub mod engine;
pub mod g711;
pub mod mixer;
pub mod player;
pub mod recv_batch;
pub mod rtp;

/// Narrowband telephony: every codec we speak runs at 8 kHz.
pub const SAMPLE_RATE: u32 = 8000;
/// Packetisation time we send and ask for (`a=ptime:20`).
pub const PTIME: Duration = Duration::from_millis(20);
/// Samples in one 20 ms frame at 8 kHz; also the RTP timestamp step per packet.
pub const FRAME_SAMPLES: usize = 160;
/// One 20 ms frame of G.711 (one byte per sample).
pub type Frame = [u8; FRAME_SAMPLES];

/// RTP payload type number (RFC 3550 §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PayloadType(pub u8);

/// RTP synchronisation source identifier (RFC 3550 §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ssrc(pub u32);

/// The audio codecs pinbridge negotiates: the two G.711 laws (ITU-T G.711, RFC 3551 §4.5.14).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    /// μ-law, static payload type 0.
    Pcmu,
    /// A-law, static payload type 8.
    Pcma,
}

impl Codec {
    /// The static payload type RFC 3551 assigns.
    pub const fn payload_type(self) -> PayloadType {
        match self {
            Codec::Pcmu => PayloadType(0),
            Codec::Pcma => PayloadType(8),
        }
    }

    /// The encoding name used in `a=rtpmap` (case-insensitive on input).
    pub const fn encoding_name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        }
    }
}

/// Media direction from *our* point of view (RFC 3264 §6.1): whether we may send RTP and
/// whether we expect to receive it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Direction {
    #[default]
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    /// May we send RTP?
    pub const fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    /// Should the peer be sending RTP to us?
    pub const fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }
}
