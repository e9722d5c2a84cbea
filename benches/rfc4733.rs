//! RFC 4733 receive path per packet: the payload parse alone, and what the media engine does
//! for every packet on the telephone-event payload type (RTP parse, `EventReceiver`, drain).
//!
//! `cargo bench --bench rfc4733` (add `-- --quick` for a fast look).

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use pinbridge::media::dtmf::rfc4733::{EventCode, EventReceiver, TelephoneEvent};
use pinbridge::media::rtp::{RtpHeader, RtpPacket};
use pinbridge::media::{PayloadType, Ssrc};

/// Updates per event before the end packets: 200 ms key presses at 20 ms, as SIPp sends.
const UPDATES: u16 = 10;
/// Samples between event starts (400 ms).
const EVENT_SPACING: u32 = 3200;

/// The datagrams of the digit string "1234#": per digit a start packet, updates, and the end
/// packet three times (RFC 4733 §2.5.1.4).
fn train() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut seq = 0u16;
    for (n, code) in [1u8, 2, 3, 4, 11].into_iter().enumerate() {
        let timestamp = n as u32 * EVENT_SPACING;
        let blocks = (0..UPDATES)
            .map(|i| (false, i * 160))
            .chain((0..3).map(|_| (true, UPDATES * 160)));
        for (i, (end, duration)) in blocks.enumerate() {
            let event = TelephoneEvent {
                event: EventCode(code),
                end,
                volume: 10,
                duration,
            };
            let header = RtpHeader {
                payload_type: PayloadType(101),
                marker: i == 0,
                sequence: seq,
                timestamp,
                ssrc: Ssrc(0x0102_0305),
            };
            let mut buf = [0u8; 16];
            let len = header.write(&event.to_bytes(), &mut buf).unwrap();
            out.push(buf[..len].to_vec());
            seq = seq.wrapping_add(1);
        }
    }
    out
}

fn parse(c: &mut Criterion) {
    let payload = [5u8, 0x8a, 0x06, 0x40];
    c.bench_function("rfc4733/parse_payload", |b| {
        b.iter(|| TelephoneEvent::parse(black_box(&payload)))
    });
}

fn receive(c: &mut Criterion) {
    let mut datagrams = train();
    let len = datagrams.len() as u16;
    let span = 5 * EVENT_SPACING;
    let now = Instant::now();
    let mut rx = EventReceiver::new();
    let mut i = 0;
    c.bench_function("rfc4733/receive_per_packet", |b| {
        b.iter(|| {
            let datagram = &mut datagrams[i];
            let packet = RtpPacket::parse(black_box(datagram)).unwrap();
            let _ = rx.handle_rtp(now, &packet);
            while let Some(digit) = rx.poll_digit() {
                black_box(digit);
            }
            // Move this packet on by one pass of the train, so that every pass carries new
            // events rather than repeats of the first.
            let seq = u16::from_be_bytes([datagram[2], datagram[3]]).wrapping_add(len);
            let ts = u32::from_be_bytes([datagram[4], datagram[5], datagram[6], datagram[7]])
                .wrapping_add(span);
            datagram[2..4].copy_from_slice(&seq.to_be_bytes());
            datagram[4..8].copy_from_slice(&ts.to_be_bytes());
            i = (i + 1) % datagrams.len();
        })
    });
    assert!(rx.stats().keys >= 5, "the bench fed new events");
}

criterion_group!(benches, parse, receive);
criterion_main!(benches);
