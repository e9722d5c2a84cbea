//! G.711 μ-law and A-law (ITU-T G.711), sample by sample and frame by frame.
//!
//! OWNED BY: audio helper (to be implemented with lookup tables for decode).

use super::Codec;

/// Encodes one linear 16-bit sample to μ-law.
pub fn encode_ulaw(_sample: i16) -> u8 {
    unimplemented!("g711::encode_ulaw")
}

/// Decodes one μ-law byte to a linear 16-bit sample.
pub fn decode_ulaw(_byte: u8) -> i16 {
    unimplemented!("g711::decode_ulaw")
}

/// Encodes one linear 16-bit sample to A-law.
pub fn encode_alaw(_sample: i16) -> u8 {
    unimplemented!("g711::encode_alaw")
}

/// Decodes one A-law byte to a linear 16-bit sample.
pub fn decode_alaw(_byte: u8) -> i16 {
    unimplemented!("g711::decode_alaw")
}

/// Encodes `pcm` into `out` (same length) with `codec`.
pub fn encode(codec: Codec, pcm: &[i16], out: &mut [u8]) {
    let f = match codec {
        Codec::Pcmu => encode_ulaw,
        Codec::Pcma => encode_alaw,
    };
    for (o, s) in out.iter_mut().zip(pcm) {
        *o = f(*s);
    }
}

/// Decodes `bytes` into `out` (same length) with `codec`.
pub fn decode(codec: Codec, bytes: &[u8], out: &mut [i16]) {
    let f = match codec {
        Codec::Pcmu => decode_ulaw,
        Codec::Pcma => decode_alaw,
    };
    for (o, b) in out.iter_mut().zip(bytes) {
        *o = f(*b);
    }
}
