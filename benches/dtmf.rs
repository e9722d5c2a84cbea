//! DTMF costs on the media hot path, per 20 ms frame (160 samples at 8 kHz) or per packet.
//!
//! `cargo bench --bench dtmf` (add `-- --quick` for a short run). The figures go into the
//! README's performance table; issue 3 asks for the in-band detector to stay well under
//! 2 µs per frame.

use std::f64::consts::PI;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};

use pinbridge::media::FRAME_SAMPLES;
use pinbridge::media::dtmf::goertzel::{DBM0_POWER, InbandDetector};

/// One second of audio, cut into 20 ms frames that the benchmark feeds round and round.
struct Frames(Vec<[i16; FRAME_SAMPLES]>);

impl Frames {
    fn from_fn(mut sample: impl FnMut(usize) -> f64) -> Frames {
        Frames(
            (0..50)
                .map(|f| {
                    std::array::from_fn(|i| {
                        sample(f * FRAME_SAMPLES + i)
                            .round()
                            .clamp(-32768.0, 32767.0) as i16
                    })
                })
                .collect(),
        )
    }

    /// Amplitude of a sine carrying `dbm0`.
    fn amplitude(dbm0: f64) -> f64 {
        (2.0 * f64::from(DBM0_POWER) * 10f64.powf(dbm0 / 10.0)).sqrt()
    }

    /// Key 5 (770 + 1336 Hz), each tone at −13 dBm0, sounding throughout.
    fn tone() -> Frames {
        let a = Frames::amplitude(-13.0);
        let w = |hz: f64| 2.0 * PI * hz / 8000.0;
        Frames::from_fn(|n| a * ((w(770.0) * n as f64).sin() + (w(1336.0) * n as f64).sin()))
    }

    /// Uniform pseudo-random noise at about `dbm0` (an LCG; the spectrum is all we need).
    fn noise(dbm0: f64) -> Frames {
        let a = Frames::amplitude(dbm0) * 3f64.sqrt() / 2f64.sqrt();
        let mut state = 0x2545_F491u32;
        Frames::from_fn(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            a * (f64::from(state) / f64::from(u32::MAX) * 2.0 - 1.0)
        })
    }

    fn silence() -> Frames {
        Frames::from_fn(|_| 0.0)
    }

    /// A committed prompt, decoded as the server decodes it: speech with its pauses.
    fn prompt(stem: &str) -> Frames {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("audio")
            .join(format!("{stem}.flac"));
        let pcm = pinbridge::audio::decode_to_pcm8k(&path).expect("committed prompt decodes");
        Frames(
            pcm.chunks_exact(FRAME_SAMPLES)
                .map(|c| c.try_into().expect("exact chunk"))
                .collect(),
        )
    }
}

fn inband(c: &mut Criterion) {
    let mut group = c.benchmark_group("inband_detector_per_20ms_frame");
    for (name, frames) in [
        // Digital silence and a quiet line: under the energy gate, no Goertzel bank.
        ("silence", Frames::silence()),
        ("line_noise_-60dBm0", Frames::noise(-60.0)),
        // Loud noise: the bank runs on every block, and no window is a candidate.
        ("noise_-20dBm0", Frames::noise(-20.0)),
        // A key held down: bank, candidate checks and the active tone's bookkeeping.
        ("tone", Frames::tone()),
        // Speech, averaged over a whole prompt (pauses included).
        ("speech_prompt_help", Frames::prompt("help")),
    ] {
        let mut det = InbandDetector::new();
        let mut i = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                det.handle_samples(black_box(&frames.0[i]));
                i = (i + 1) % frames.0.len();
                while let Some(ev) = det.poll_event() {
                    black_box(ev);
                }
            })
        });
    }
    group.finish();
}

// RFC 4733 parsing per packet is measured in benches/rfc4733.rs.
criterion_group!(benches, inband);
criterion_main!(benches);
