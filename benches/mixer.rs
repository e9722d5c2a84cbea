//! The meeting and lobby hot paths, per 20 ms frame:
//! - `mixer/mix/N`: one meeting of N participants who all send audio (noise at levels
//!   from −40 to −10 dBm0, so the active-talker rule has to rank them): inputs in, one
//!   `Mixer::mix`, every output read.
//! - `lobby/hold_music/1000`: 1000 lobby calls each sending their next hold-music frame as
//!   an RTP packet (`CallMedia::poll_transmit` over the shared pre-encoded clip).
//!
//! `cargo bench --bench mixer` (add `-- --quick` for a fast look).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use pinbridge::media::engine::{CallMedia, MediaParams};
use pinbridge::media::mixer::Mixer;
use pinbridge::media::player::{Clip, PlayMode};
use pinbridge::media::rtp::{MAX_PACKET_LEN, RtpSender};
use pinbridge::media::{Codec, Direction, FRAME_SAMPLES, PTIME};

/// A small seeded generator: benchmarks must not depend on the OS's randomness.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> i32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as i32 & 0xFFFF) - 0x8000
    }
}

/// Frames of noise for `n` participants, participant `i` at its own level.
fn inputs(n: usize) -> Vec<[i16; FRAME_SAMPLES]> {
    let mut rng = Lcg(42);
    (0..n)
        .map(|i| {
            let db = -40.0 + 30.0 * i as f32 / n.max(1) as f32;
            let gain = 10f32.powf(db / 20.0);
            std::array::from_fn(|_| (rng.next() as f32 * gain) as i16)
        })
        .collect()
}

fn mix(c: &mut Criterion) {
    let mut group = c.benchmark_group("mixer/mix");
    for n in [3usize, 10, 50, 250] {
        let frames = inputs(n);
        let mut mixer = Mixer::new();
        for i in 0..n {
            let codec = if i % 4 == 3 { Codec::Pcma } else { Codec::Pcmu };
            mixer.add(i as u64, codec);
        }
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                for (i, frame) in frames.iter().enumerate() {
                    mixer.input_at(i, frame);
                }
                mixer.mix();
                let mut sum = 0u32;
                for (_, frame) in mixer.outputs() {
                    sum = sum.wrapping_add(u32::from(frame[0]));
                }
                black_box(sum)
            })
        });
    }
    group.finish();
}

fn hold_music(c: &mut Criterion) {
    const CALLS: usize = 1000;
    let pcm: Vec<i16> = inputs(1)[0]
        .iter()
        .cycle()
        .take(8000 * 30)
        .copied()
        .collect();
    let clip = Arc::new(Clip::from_pcm("hold_music", pcm));
    let t0 = Instant::now();
    let mut calls: Vec<CallMedia> = (0..CALLS)
        .map(|i| {
            let mut call =
                CallMedia::new(RtpSender::new(&mut rand::rng()), Duration::from_secs(30));
            let peer = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 40000 + i as u16);
            call.configure(
                t0,
                MediaParams {
                    remote: Some(peer),
                    signalling_ip: peer.ip(),
                    codec: Codec::Pcmu,
                    payload_type: Codec::Pcmu.payload_type(),
                    telephone_event: None,
                    direction: Direction::SendRecv,
                    inband_dtmf: false,
                },
            );
            call.play(clip.clone(), PlayMode::Loop);
            call
        })
        .collect();
    let mut buf = [0u8; MAX_PACKET_LEN];
    let mut now = t0;
    c.bench_function("lobby/hold_music/1000", |b| {
        b.iter(|| {
            let mut bytes = 0usize;
            for call in &mut calls {
                while let Some(t) = call.poll_transmit(now, &mut buf) {
                    bytes += t.len;
                }
            }
            now += PTIME;
            black_box(bytes)
        })
    });
}

criterion_group!(benches, mix, hold_music);
criterion_main!(benches);
