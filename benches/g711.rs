//! G.711 per 20 ms frame (160 samples): μ-law and A-law encode and decode, as the media path
//! does them (a participant's packet decoded for the mix, a mixed frame encoded per codec).
//!
//! `cargo bench --bench g711` (add `-- --quick` for a fast look).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use pinbridge::media::{Codec, FRAME_SAMPLES, g711};

/// A frame of speech-like audio: a 440 Hz + 1200 Hz mix at about −12 dBFS, so every
/// segment of the companding tables is exercised, not only the silence codes.
fn speech_frame() -> [i16; FRAME_SAMPLES] {
    let mut pcm = [0i16; FRAME_SAMPLES];
    for (n, s) in pcm.iter_mut().enumerate() {
        let t = n as f64 / 8000.0;
        let v = 5000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()
            + 3000.0 * (2.0 * std::f64::consts::PI * 1200.0 * t).sin();
        *s = v as i16;
    }
    pcm
}

fn g711(c: &mut Criterion) {
    let pcm = speech_frame();
    for (name, codec) in [("pcmu", Codec::Pcmu), ("pcma", Codec::Pcma)] {
        let mut bytes = [0u8; FRAME_SAMPLES];
        c.bench_function(&format!("g711/{name}/encode_frame"), |b| {
            b.iter(|| {
                g711::encode(codec, black_box(&pcm), &mut bytes);
                black_box(&bytes);
            })
        });
        g711::encode(codec, &pcm, &mut bytes);
        let mut out = [0i16; FRAME_SAMPLES];
        c.bench_function(&format!("g711/{name}/decode_frame"), |b| {
            b.iter(|| {
                g711::decode(codec, black_box(&bytes), &mut out);
                black_box(&out);
            })
        });
    }
}

criterion_group!(benches, g711);
criterion_main!(benches);
