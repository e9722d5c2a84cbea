//! An independent G.711 codec (ITU-T G.711, written from the bit layout, no tables) so the
//! tests cross-check the server's encoder instead of trusting `pinbridge::media::g711`.

/// μ-law bias added before the segment search (G.711 §2, "0x84").
const ULAW_BIAS: i32 = 0x84;
/// Largest magnitude μ-law encodes without overflow after the bias.
const ULAW_CLIP: i32 = 32635;

/// Decodes one μ-law byte to 16-bit linear PCM (range ±32124).
pub fn decode_ulaw(byte: u8) -> i16 {
    let u = !byte;
    let exponent = (u >> 4) & 0x07;
    let mantissa = i32::from(u & 0x0f);
    let magnitude = (((mantissa << 3) + ULAW_BIAS) << exponent) - ULAW_BIAS;
    if u & 0x80 != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

/// Decodes one A-law byte to 16-bit linear PCM (range ±32256). The even bits are inverted
/// on the wire (XOR 0x55) and a set sign bit means positive.
pub fn decode_alaw(byte: u8) -> i16 {
    let a = byte ^ 0x55;
    let exponent = (a >> 4) & 0x07;
    let mantissa = i32::from(a & 0x0f);
    let mut magnitude = (mantissa << 4) + 8;
    if exponent != 0 {
        magnitude = (magnitude + 0x100) << (exponent - 1);
    }
    if a & 0x80 != 0 {
        magnitude as i16
    } else {
        -magnitude as i16
    }
}

/// Encodes one 16-bit linear sample to μ-law.
pub fn encode_ulaw(sample: i16) -> u8 {
    let mut x = i32::from(sample);
    let sign = if x < 0 {
        x = -x;
        0x80
    } else {
        0
    };
    x = x.min(ULAW_CLIP) + ULAW_BIAS;
    // x is in 132..=32767: its top bit is bit 7..=14, giving segment 0..=7.
    let exponent = (31 - x.leading_zeros() - 7) as u8;
    let mantissa = ((x >> (exponent + 3)) & 0x0f) as u8;
    !(sign | (exponent << 4) | mantissa)
}

/// Encodes one 16-bit linear sample to A-law.
pub fn encode_alaw(sample: i16) -> u8 {
    let mut x = i32::from(sample);
    let sign = if x >= 0 {
        0x80
    } else {
        x = -x - 1;
        0
    };
    let x = x.min(32767);
    let code = if x < 256 {
        (x >> 4) as u8
    } else {
        // Top bit 8..=14 gives segment 1..=7.
        let exponent = (31 - x.leading_zeros() - 7) as u8;
        let mantissa = ((x >> (exponent + 3)) & 0x0f) as u8;
        (exponent << 4) | mantissa
    };
    (sign | code) ^ 0x55
}

/// Decodes a G.711 payload by RTP payload type (0 = PCMU, 8 = PCMA); `None` for others.
pub fn decode_payload(payload_type: u8, bytes: &[u8]) -> Option<Vec<i16>> {
    let f: fn(u8) -> i16 = match payload_type {
        0 => decode_ulaw,
        8 => decode_alaw,
        _ => return None,
    };
    Some(bytes.iter().map(|&b| f(b)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_code_points() {
        // Silence codes and the extremes, from the G.711 tables.
        assert_eq!(decode_ulaw(0xff), 0);
        assert_eq!(decode_ulaw(0x7f), 0);
        assert_eq!(decode_ulaw(0x80), 32124);
        assert_eq!(decode_ulaw(0x00), -32124);
        assert_eq!(decode_alaw(0xd5), 8);
        assert_eq!(decode_alaw(0x55), -8);
        assert_eq!(decode_alaw(0xaa), 32256);
        assert_eq!(decode_alaw(0x2a), -32256);
        assert_eq!(encode_ulaw(0), 0xff);
        assert_eq!(encode_alaw(0), 0xd5);
    }

    #[test]
    fn every_code_survives_decode_then_encode() {
        for b in 0..=255u8 {
            // μ-law has two zeros (0x7f and 0xff); both decode to 0, which encodes to 0xff.
            let expected = if b == 0x7f { 0xff } else { b };
            assert_eq!(encode_ulaw(decode_ulaw(b)), expected, "ulaw {b:#04x}");
            assert_eq!(encode_alaw(decode_alaw(b)), b, "alaw {b:#04x}");
        }
    }

    #[test]
    fn quantisation_error_is_within_the_segment_step() {
        for s in (-32768i32..=32767).step_by(7) {
            let s = s as i16;
            let u = i32::from(decode_ulaw(encode_ulaw(s)));
            let a = i32::from(decode_alaw(encode_alaw(s)));
            let x = i32::from(s);
            // Largest step is 1024 (μ-law) / 1024 (A-law) in the top segment; half of it
            // plus clipping at the top.
            let tol = (x.abs() / 16).max(16) + 300 * i32::from(x.abs() > 32000);
            assert!((u - x).abs() <= tol, "ulaw {x} -> {u}");
            assert!((a - x).abs() <= tol, "alaw {x} -> {a}");
        }
    }

    #[test]
    fn decode_payload_by_payload_type() {
        assert_eq!(decode_payload(0, &[0xff, 0x80]), Some(vec![0, 32124]));
        assert_eq!(decode_payload(8, &[0xd5]), Some(vec![8]));
        assert_eq!(decode_payload(101, &[0]), None);
    }
}
