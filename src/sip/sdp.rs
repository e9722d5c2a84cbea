//! TEMPORARY interface stub on main while the SDP branch is written; replaced on merge.

use std::net::{IpAddr, SocketAddr};

use crate::media::{Codec, Direction, PayloadType};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalMedia {
    pub addr: IpAddr,
    pub port: u16,
    pub session_id: u64,
    pub session_version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub codec: Codec,
    pub telephone_event: Option<PayloadType>,
    pub remote: Option<SocketAddr>,
    pub direction: Direction,
    pub ptime: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub negotiated: Negotiated,
    pub sdp: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SdpError {
    #[error("malformed SDP: {0}")]
    Malformed(String),
}

impl SdpError {
    pub fn sip_status(&self) -> u16 {
        400
    }
    pub fn warning(&self) -> String {
        self.to_string()
    }
}

pub fn answer(_offer: &[u8], _local: &LocalMedia) -> Result<Answer, SdpError> {
    Err(SdpError::Malformed("stub".into()))
}

pub fn offer(_local: &LocalMedia, _direction: Direction) -> String {
    String::new()
}

pub fn accept_answer(_answer: &[u8], _local: &LocalMedia) -> Result<Negotiated, SdpError> {
    Err(SdpError::Malformed("stub".into()))
}
