//! G.711 μ-law and A-law (ITU-T G.711), sample by sample and frame by frame.
//!
//! This module owns the only conversion between 16-bit linear PCM and the two G.711 laws.
//! It reproduces the classic Sun/CCITT reference implementation (`g711.c`) bit for bit, the
//! behaviour every softphone and gateway we meet is built on: μ-law works on the top 14 bits
//! with a bias of 33 and A-law on the top 13 bits, and both invert their bits on the wire
//! (μ-law all bits, A-law the even bits, `0x55`).
//!
//! Decoding is a lookup in a 256-entry table built at compile time by a `const fn`; encoding
//! is a few integer operations (the segment is found with `leading_zeros`, not a search
//! loop). Both run on the media hot path: no allocation and no panic for any input. The tests
//! hold the encoders to a literal transcription of the reference for all 65 536 samples.

use super::Codec;

/// Sign bit of a code after its wire inversion has been undone.
const SIGN_BIT: u8 = 0x80;
/// The four quantisation (mantissa) bits of a code.
const QUANT_MASK: u8 = 0x0F;
/// The three segment (exponent) bits of a code.
const SEG_MASK: u8 = 0x70;
const SEG_SHIFT: u32 = 4;

/// μ-law bias added to the magnitude before segmenting (G.711 table 2a: 33 in 14-bit units,
/// 0x84 = 132 in 16-bit units).
const ULAW_BIAS: i32 = 0x84;
/// Largest 14-bit μ-law magnitude before the bias; anything larger clips (8159 + 33 = 8192).
const ULAW_CLIP: i32 = 8159;

/// Evaluates a `const fn(u8) -> i16` for all 256 codes at compile time (a macro because
/// `const fn` cannot call through a function pointer).
macro_rules! build_table {
    ($decode:ident) => {{
        let mut table = [0i16; 256];
        let mut i = 0;
        while i < 256 {
            table[i] = $decode(i as u8);
            i += 1;
        }
        table
    }};
}

/// μ-law code → linear sample, built once at compile time.
static ULAW_TO_LINEAR: [i16; 256] = build_table!(ulaw_to_linear);
/// A-law code → linear sample, built once at compile time.
static ALAW_TO_LINEAR: [i16; 256] = build_table!(alaw_to_linear);

/// Encodes one linear 16-bit sample to μ-law.
///
/// Identical to the reference `linear2ulaw`: 0 encodes to `0xFF`, magnitudes above the
/// largest codeable value (32124) clip to `0x80` / `0x00`.
#[inline]
pub fn encode_ulaw(sample: i16) -> u8 {
    // Work in 14-bit units; `>>` on a negative value rounds toward −∞ as in the reference.
    let mut pcm = i32::from(sample) >> 2;
    let mask = if pcm < 0 {
        pcm = -pcm;
        0x7F
    } else {
        0xFF
    };
    let biased = pcm.min(ULAW_CLIP) + (ULAW_BIAS >> 2);
    // Segment s holds biased magnitudes 2^(s+5) ..= 2^(s+6)-1, segment 0 everything below 64.
    let seg = u32::BITS - ((biased as u32) >> 6).leading_zeros();
    let code = if seg >= 8 {
        0x7F
    } else {
        ((seg << SEG_SHIFT) as u8) | ((biased >> (seg + 1)) as u8 & QUANT_MASK)
    };
    code ^ mask
}

/// Decodes one μ-law byte to a linear 16-bit sample (a table lookup).
#[inline]
pub fn decode_ulaw(byte: u8) -> i16 {
    ULAW_TO_LINEAR[usize::from(byte)]
}

/// Encodes one linear 16-bit sample to A-law.
///
/// Identical to the reference `linear2alaw`: 0 encodes to `0xD5`, −1 to `0x55`; A-law has no
/// zero level, its smallest magnitudes decode to ±8.
#[inline]
pub fn encode_alaw(sample: i16) -> u8 {
    // Work in 13-bit units; negative values are mapped to a magnitude one below (−1 → 0).
    let mut pcm = i32::from(sample) >> 3;
    let mask = if pcm >= 0 {
        0xD5
    } else {
        pcm = -pcm - 1;
        0x55
    };
    // pcm is now 0..=4095. Segments 0 and 1 share one step size; segment s ≥ 1 starts at 2^(s+4).
    let seg = u32::BITS - ((pcm as u32) >> 5).leading_zeros();
    let shift = if seg < 2 { 1 } else { seg };
    let code = ((seg << SEG_SHIFT) as u8) | ((pcm >> shift) as u8 & QUANT_MASK);
    code ^ mask
}

/// Decodes one A-law byte to a linear 16-bit sample (a table lookup).
#[inline]
pub fn decode_alaw(byte: u8) -> i16 {
    ALAW_TO_LINEAR[usize::from(byte)]
}

/// Encodes `pcm` into `out` with `codec`; converts `min(pcm.len(), out.len())` samples.
pub fn encode(codec: Codec, pcm: &[i16], out: &mut [u8]) {
    let f = match codec {
        Codec::Pcmu => encode_ulaw,
        Codec::Pcma => encode_alaw,
    };
    for (o, s) in out.iter_mut().zip(pcm) {
        *o = f(*s);
    }
}

/// Decodes `bytes` into `out` with `codec`; converts `min(bytes.len(), out.len())` samples.
pub fn decode(codec: Codec, bytes: &[u8], out: &mut [i16]) {
    let table = match codec {
        Codec::Pcmu => &ULAW_TO_LINEAR,
        Codec::Pcma => &ALAW_TO_LINEAR,
    };
    for (o, b) in out.iter_mut().zip(bytes) {
        *o = table[usize::from(*b)];
    }
}

/// The reference `ulaw2linear`, evaluated at compile time to fill [`ULAW_TO_LINEAR`].
const fn ulaw_to_linear(byte: u8) -> i16 {
    let u = !byte;
    let seg = ((u & SEG_MASK) >> SEG_SHIFT) as u32;
    let t = ((((u & QUANT_MASK) as i32) << 3) + ULAW_BIAS) << seg;
    let value = if u & SIGN_BIT != 0 {
        ULAW_BIAS - t
    } else {
        t - ULAW_BIAS
    };
    value as i16
}

/// The reference `alaw2linear`, evaluated at compile time to fill [`ALAW_TO_LINEAR`].
const fn alaw_to_linear(byte: u8) -> i16 {
    let a = byte ^ 0x55;
    let seg = ((a & SEG_MASK) >> SEG_SHIFT) as u32;
    let mut t = ((a & QUANT_MASK) as i32) << 4;
    t = match seg {
        0 => t + 8,
        1 => t + 0x108,
        _ => (t + 0x108) << (seg - 1),
    };
    let value = if a & SIGN_BIT != 0 { t } else { -t };
    value as i16
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Literal transcription of Sun's `linear2ulaw` (segment found by searching `seg_uend`),
    /// the oracle the arithmetic encoder must match for every input.
    fn reference_linear2ulaw(pcm_val: i16) -> u8 {
        const SEG_UEND: [i32; 8] = [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF];
        let mut pcm = i32::from(pcm_val) >> 2;
        let mask: u8 = if pcm < 0 {
            pcm = -pcm;
            0x7F
        } else {
            0xFF
        };
        if pcm > 8159 {
            pcm = 8159;
        }
        pcm += 0x84 >> 2;
        let seg = SEG_UEND.iter().position(|&end| pcm <= end).unwrap_or(8);
        if seg >= 8 {
            return 0x7F ^ mask;
        }
        let uval = ((seg as u8) << 4) | (((pcm >> (seg + 1)) & 0xF) as u8);
        uval ^ mask
    }

    /// Literal transcription of Sun's `linear2alaw` (13-bit version, searching `seg_aend`).
    fn reference_linear2alaw(pcm_val: i16) -> u8 {
        const SEG_AEND: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];
        let mut pcm = i32::from(pcm_val) >> 3;
        let mask: u8 = if pcm >= 0 {
            0xD5
        } else {
            pcm = -pcm - 1;
            0x55
        };
        let seg = SEG_AEND.iter().position(|&end| pcm <= end).unwrap_or(8);
        if seg >= 8 {
            return 0x7F ^ mask;
        }
        let mut aval = (seg as u8) << 4;
        if seg < 2 {
            aval |= ((pcm >> 1) & 0xF) as u8;
        } else {
            aval |= ((pcm >> seg) & 0xF) as u8;
        }
        aval ^ mask
    }

    fn all_samples() -> impl Iterator<Item = i16> {
        i16::MIN..=i16::MAX
    }

    /// Sorts codes by the level they stand for: sign-magnitude order with the wire
    /// inversion undone.
    fn ulaw_rank(code: u8) -> i32 {
        let u = !code;
        let mag = i32::from(u & 0x7F);
        if u & SIGN_BIT != 0 { -mag } else { mag }
    }

    fn alaw_rank(code: u8) -> i32 {
        let a = code ^ 0x55;
        let mag = i32::from(a & 0x7F);
        // A-law has no zero: the negative side sits one rank below the positive side.
        if a & SIGN_BIT != 0 { mag } else { -mag - 1 }
    }

    /// Quantisation step, in 16-bit units, of the segment a μ-law code lies in.
    fn ulaw_step(code: u8) -> i32 {
        8 << ((!code & SEG_MASK) >> SEG_SHIFT)
    }

    /// Quantisation step, in 16-bit units, of the segment an A-law code lies in.
    fn alaw_step(code: u8) -> i32 {
        let seg = ((code ^ 0x55) & SEG_MASK) >> SEG_SHIFT;
        if seg == 0 { 16 } else { 16 << (seg - 1) }
    }

    #[test]
    fn known_ulaw_values() {
        assert_eq!(encode_ulaw(0), 0xFF);
        assert_eq!(encode_ulaw(-1), 0x7E);
        assert_eq!(encode_ulaw(i16::MAX), 0x80);
        assert_eq!(encode_ulaw(i16::MIN), 0x00);
        assert_eq!(encode_ulaw(1000), 0xCE);
        assert_eq!(encode_ulaw(-1000), 0x4E);
        assert_eq!(decode_ulaw(0xFF), 0);
        assert_eq!(decode_ulaw(0x7F), 0);
        assert_eq!(decode_ulaw(0x80), 32124);
        assert_eq!(decode_ulaw(0x00), -32124);
        assert_eq!(decode_ulaw(0xFE), 8);
        assert_eq!(decode_ulaw(0x7E), -8);
        assert_eq!(decode_ulaw(0xCE), 988);
        assert_eq!(decode_ulaw(0x4E), -988);
    }

    #[test]
    fn known_alaw_values() {
        assert_eq!(encode_alaw(0), 0xD5);
        assert_eq!(encode_alaw(-1), 0x55);
        assert_eq!(encode_alaw(i16::MAX), 0xAA);
        assert_eq!(encode_alaw(i16::MIN), 0x2A);
        assert_eq!(encode_alaw(1000), 0xFA);
        assert_eq!(encode_alaw(-1000), 0x7A);
        assert_eq!(decode_alaw(0xD5), 8);
        assert_eq!(decode_alaw(0x55), -8);
        assert_eq!(decode_alaw(0xAA), 32256);
        assert_eq!(decode_alaw(0x2A), -32256);
        assert_eq!(decode_alaw(0xFA), 1008);
        assert_eq!(decode_alaw(0x7A), -1008);
    }

    #[test]
    fn encoders_match_reference_for_every_sample() {
        for x in all_samples() {
            assert_eq!(encode_ulaw(x), reference_linear2ulaw(x), "μ-law of {x}");
            assert_eq!(encode_alaw(x), reference_linear2alaw(x), "A-law of {x}");
        }
    }

    #[test]
    fn decode_tables_are_odd_symmetric() {
        for b in 0..=u8::MAX {
            // Flipping the sign bit on the wire negates the level.
            assert_eq!(decode_ulaw(b), -decode_ulaw(b ^ SIGN_BIT), "μ-law {b:#04x}");
            assert_eq!(decode_alaw(b), -decode_alaw(b ^ SIGN_BIT), "A-law {b:#04x}");
        }
    }

    #[test]
    fn encode_of_decode_is_identity() {
        for b in 0..=u8::MAX {
            // 0x7F is μ-law's negative zero: it decodes to 0, which encodes as 0xFF.
            let expected = if b == 0x7F { 0xFF } else { b };
            assert_eq!(encode_ulaw(decode_ulaw(b)), expected, "μ-law {b:#04x}");
            assert_eq!(encode_alaw(decode_alaw(b)), b, "A-law {b:#04x}");
        }
    }

    #[test]
    fn round_trip_error_is_within_half_a_segment_step() {
        let ulaw_max = i32::from(decode_ulaw(0x80));
        let alaw_max = i32::from(decode_alaw(0xAA));
        for x in all_samples() {
            let xi = i32::from(x);

            let u = encode_ulaw(x);
            let err = (xi - i32::from(decode_ulaw(u))).abs();
            if xi.abs() > ulaw_max {
                // Beyond the largest level μ-law clips to it.
                assert_eq!(
                    i32::from(decode_ulaw(u)),
                    ulaw_max * xi.signum(),
                    "μ-law {x}"
                );
            } else {
                // μ-law is specified on 14-bit input: the two discarded low bits can add
                // one 14-bit unit (4) to the half-step quantisation error.
                assert!(err <= ulaw_step(u) / 2 + 4, "μ-law {x}: error {err}");
            }

            let a = encode_alaw(x);
            let err = (xi - i32::from(decode_alaw(a))).abs();
            if xi.abs() > alaw_max {
                assert_eq!(
                    i32::from(decode_alaw(a)),
                    alaw_max * xi.signum(),
                    "A-law {x}"
                );
            } else {
                assert!(err <= alaw_step(a) / 2, "A-law {x}: error {err}");
            }
        }
    }

    #[test]
    fn decode_is_monotonic_in_code_order() {
        let mut ulaw: Vec<u8> = (0..=u8::MAX).collect();
        ulaw.sort_by_key(|&b| ulaw_rank(b));
        for pair in ulaw.windows(2) {
            assert!(decode_ulaw(pair[0]) <= decode_ulaw(pair[1]), "{pair:02x?}");
        }
        let mut alaw: Vec<u8> = (0..=u8::MAX).collect();
        alaw.sort_by_key(|&b| alaw_rank(b));
        for pair in alaw.windows(2) {
            assert!(decode_alaw(pair[0]) < decode_alaw(pair[1]), "{pair:02x?}");
        }
    }

    #[test]
    fn encode_is_monotonic() {
        let mut prev_u = ulaw_rank(encode_ulaw(i16::MIN));
        let mut prev_a = alaw_rank(encode_alaw(i16::MIN));
        for x in all_samples().skip(1) {
            let u = ulaw_rank(encode_ulaw(x));
            let a = alaw_rank(encode_alaw(x));
            assert!(u >= prev_u, "μ-law steps down at {x}");
            assert!(a >= prev_a, "A-law steps down at {x}");
            prev_u = u;
            prev_a = a;
        }
    }

    #[test]
    fn frame_functions_match_sample_functions() {
        let pcm: Vec<i16> = (0..160).map(|i| (i * 409 - 32_000) as i16).collect();
        type Law = (Codec, fn(i16) -> u8, fn(u8) -> i16);
        let laws: [Law; 2] = [
            (Codec::Pcmu, encode_ulaw, decode_ulaw),
            (Codec::Pcma, encode_alaw, decode_alaw),
        ];
        for (codec, enc, dec) in laws {
            let mut bytes = [0u8; 160];
            encode(codec, &pcm, &mut bytes);
            let mut back = [0i16; 160];
            decode(codec, &bytes, &mut back);
            for ((b, x), y) in bytes.iter().zip(&pcm).zip(&back) {
                assert_eq!(*b, enc(*x));
                assert_eq!(*y, dec(*b));
            }
        }
    }

    #[test]
    fn frame_functions_stop_at_the_shorter_slice() {
        let mut out = [0xAAu8; 4];
        encode(Codec::Pcmu, &[0, 0], &mut out);
        assert_eq!(out, [0xFF, 0xFF, 0xAA, 0xAA]);
        let mut pcm = [7i16; 2];
        decode(Codec::Pcma, &[0xD5, 0x55, 0xD5], &mut pcm);
        assert_eq!(pcm, [8, -8]);
    }

    proptest! {
        #[test]
        fn never_panics_and_round_trips(
            pcm in proptest::collection::vec(any::<i16>(), 0..400),
            bytes in proptest::collection::vec(any::<u8>(), 0..400),
            out_len in 0usize..400,
        ) {
            for codec in [Codec::Pcmu, Codec::Pcma] {
                let mut enc = vec![0u8; out_len];
                encode(codec, &pcm, &mut enc);
                let mut dec = vec![0i16; out_len];
                decode(codec, &bytes, &mut dec);

                let n = pcm.len().min(out_len);
                let mut back = vec![0i16; n];
                decode(codec, &enc[..n], &mut back);
                let mut again = vec![0u8; n];
                encode(codec, &back, &mut again);
                // Re-encoding a decoded level is stable (negative zero aside).
                for (a, b) in again.iter().zip(&enc[..n]) {
                    let b = if codec == Codec::Pcmu && *b == 0x7F { 0xFF } else { *b };
                    prop_assert_eq!(*a, b);
                }
            }
        }
    }
}
