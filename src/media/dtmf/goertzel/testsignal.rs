//! Seeded DTMF test signals for the detector's spec tests (test builds only).
//!
//! [`digit_string`] renders keys as 8 kHz PCM under chosen [`Conditions`] — level, twist,
//! per-group frequency deviation, white noise at a given SNR, tone and pause lengths drawn
//! from ranges, an interruption inside each tone — and returns where each tone really is,
//! so tests can compare the detector's report with the truth. Every random choice (phases,
//! durations, noise, where a dropout falls) comes from [`Rng`], a xorshift generator seeded
//! by the test, so a failing case is reproduced by its seed.

use std::f64::consts::PI;

use super::{COL_HZ, DBM0_POWER, ROW_HZ, key_tones};
use crate::media::dtmf::Key;

/// Samples per millisecond at 8 kHz.
pub const MS: f64 = 8.0;

/// A small seeded generator (xorshift64*); plenty for test signals, no dependency.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // SplitMix64 of the seed, so nearby seeds start far apart and 0 is fine.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi] (lo when the range is empty).
    pub fn range(&mut self, (lo, hi): (f64, f64)) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Standard normal (Box–Muller).
    pub fn gaussian(&mut self) -> f64 {
        let u1 = 1.0 - self.unit();
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
    }
}

/// How the tones of a digit string are rendered.
#[derive(Clone, Debug)]
pub struct Conditions {
    /// Total power of the tone pair, dBm0 (see `DBM0_POWER`).
    pub level_dbm0: f64,
    /// High group minus low group, dB: positive is reverse twist, negative normal twist.
    pub twist_db: f64,
    /// Relative frequency deviation of the row (low-group) tone, e.g. 0.015.
    pub row_deviation: f64,
    /// Relative frequency deviation of the column (high-group) tone.
    pub col_deviation: f64,
    /// White Gaussian noise this many dB below the total tone power, over the whole signal.
    pub snr_db: Option<f64>,
    /// Tone length range, ms (each tone draws its own).
    pub tone_ms: (f64, f64),
    /// Pause range between tones, ms.
    pub pause_ms: (f64, f64),
    /// An interruption of this many ms (both tones off) in the middle third of every tone.
    pub dropout_ms: Option<f64>,
}

impl Default for Conditions {
    fn default() -> Self {
        Conditions {
            level_dbm0: -10.0,
            twist_db: 0.0,
            row_deviation: 0.0,
            col_deviation: 0.0,
            snr_db: None,
            tone_ms: (50.0, 80.0),
            pause_ms: (50.0, 80.0),
            dropout_ms: None,
        }
    }
}

/// Where a tone was placed, in samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tone {
    pub key: Key,
    pub start: usize,
    pub len: usize,
}

/// A rendered digit string and its ground truth.
#[derive(Clone, Debug)]
pub struct Signal {
    pub pcm: Vec<i16>,
    pub tones: Vec<Tone>,
}

/// Renders `keys` under `c`: a random lead-in (0–30 ms, so tones fall anywhere relative
/// to the detector's blocks), then tone, pause, tone, …, then 100 ms of tail. Each tone has
/// random phases for its two sines.
pub fn digit_string(rng: &mut Rng, keys: &[Key], c: &Conditions) -> Signal {
    let total = DBM0_POWER as f64 * 10f64.powf(c.level_dbm0 / 10.0);
    let t = 10f64.powf(c.twist_db / 10.0);
    let amp_row = (2.0 * total / (1.0 + t)).sqrt();
    let amp_col = (2.0 * total * t / (1.0 + t)).sqrt();

    let mut x: Vec<f64> = Vec::new();
    let mut tones = Vec::with_capacity(keys.len());
    let lead = (rng.range((0.0, 30.0)) * MS) as usize;
    x.resize(lead, 0.0);
    for (i, &key) in keys.iter().enumerate() {
        if i > 0 {
            let pause = (rng.range(c.pause_ms) * MS).round() as usize;
            x.resize(x.len() + pause, 0.0);
        }
        let len = (rng.range(c.tone_ms) * MS).round() as usize;
        let (r, col) = key_tones(key);
        let w_row = 2.0 * PI * f64::from(ROW_HZ[r]) * (1.0 + c.row_deviation) / 8000.0;
        let w_col = 2.0 * PI * f64::from(COL_HZ[col]) * (1.0 + c.col_deviation) / 8000.0;
        let (ph_row, ph_col) = (rng.range((0.0, 2.0 * PI)), rng.range((0.0, 2.0 * PI)));
        let dropout = c.dropout_ms.map(|ms| {
            let d = (ms * MS).round() as usize;
            let at = rng.range((len as f64 / 3.0, 2.0 * len as f64 / 3.0 - d as f64)) as usize;
            at..at + d
        });
        let start = x.len();
        for n in 0..len {
            if dropout.as_ref().is_some_and(|d| d.contains(&n)) {
                x.push(0.0);
                continue;
            }
            let n = n as f64;
            x.push(amp_row * (w_row * n + ph_row).sin() + amp_col * (w_col * n + ph_col).sin());
        }
        tones.push(Tone { key, start, len });
    }
    x.resize(x.len() + (100.0 * MS) as usize, 0.0);

    if let Some(snr) = c.snr_db {
        let sigma = (total / 10f64.powf(snr / 10.0)).sqrt();
        for s in &mut x {
            *s += sigma * rng.gaussian();
        }
    }
    Signal {
        pcm: x.iter().map(|&s| to_i16(s)).collect(),
        tones,
    }
}

/// White Gaussian noise alone at `dbm0`, `ms` long.
pub fn noise(rng: &mut Rng, dbm0: f64, ms: f64) -> Vec<i16> {
    let sigma = (DBM0_POWER as f64 * 10f64.powf(dbm0 / 10.0)).sqrt();
    (0..(ms * MS) as usize)
        .map(|_| to_i16(sigma * rng.gaussian()))
        .collect()
}

fn to_i16(s: f64) -> i16 {
    s.round().clamp(-32768.0, 32767.0) as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn power(x: &[i16]) -> f64 {
        x.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / x.len() as f64
    }

    #[test]
    fn levels_are_in_dbm0_of_total_power() {
        let mut rng = Rng::new(1);
        let c = Conditions {
            level_dbm0: -10.0,
            twist_db: -6.0,
            tone_ms: (500.0, 500.0),
            ..Conditions::default()
        };
        let s = digit_string(&mut rng, &[Key::D5], &c);
        let t = s.tones[0];
        let p = power(&s.pcm[t.start..t.start + t.len]);
        let db = 10.0 * (p / DBM0_POWER as f64).log10();
        assert!((db + 10.0).abs() < 0.05, "{db} dBm0");
        // 0 dBm0 in all fits 16 bits without clipping, even with 4 dB of twist.
        let c = Conditions {
            level_dbm0: 0.0,
            twist_db: 4.0,
            ..c
        };
        let s = digit_string(&mut rng, &[Key::D], &c);
        assert!(s.pcm.iter().all(|&x| x > i16::MIN && x < i16::MAX));
    }

    #[test]
    fn noise_has_the_asked_snr() {
        let mut rng = Rng::new(2);
        let n = noise(&mut rng, -25.0, 2000.0);
        let db = 10.0 * (power(&n) / DBM0_POWER as f64).log10();
        assert!((db + 25.0).abs() < 0.1, "{db} dBm0");
    }

    #[test]
    fn same_seed_same_signal() {
        let c = Conditions {
            snr_db: Some(15.0),
            dropout_ms: Some(8.0),
            ..Conditions::default()
        };
        let keys = [Key::D1, Key::Pound, Key::A];
        let a = digit_string(&mut Rng::new(7), &keys, &c);
        let b = digit_string(&mut Rng::new(7), &keys, &c);
        assert_eq!(a.pcm, b.pcm);
        assert_eq!(a.tones, b.tones);
        let other = digit_string(&mut Rng::new(8), &keys, &c);
        assert_ne!(a.pcm, other.pcm);
    }
}
