//! Receive-side RTP statistics of one call, sans-IO: RFC 3550 §6.4.1 interarrival jitter,
//! sequence-based loss (RFC 3550 §A.1/§A.3, with wrap-around), and the largest gap between
//! two packets' arrivals. Fed one packet header and its arrival instant at a time; also the
//! percentile summaries the report uses across calls.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::media::rtp::RtpHeader;
use crate::media::{SAMPLE_RATE, Ssrc};

/// Sequence numbers more than this far behind the highest seen are a restart, not reordering
/// (RFC 3550 §A.1 `MAX_MISORDER`).
const MAX_MISORDER: u16 = 100;

/// One call's receive statistics.
#[derive(Clone, Debug)]
pub struct RtpStats {
    /// Reference instant for arrival times in timestamp units.
    epoch: Instant,
    source: Option<Source>,
    /// Expected and received packets of SSRCs seen earlier in the call.
    expected_before: u64,
    received_before: u64,
    /// RFC 3550 §6.4.1 J, in timestamp units (1/8000 s).
    jitter: f64,
    last_arrival: Option<Instant>,
    max_gap: Duration,
    /// When the packet that ended the largest gap arrived.
    max_gap_end: Option<Instant>,
}

/// Sequence and timing state of the current SSRC.
#[derive(Clone, Debug)]
struct Source {
    ssrc: Ssrc,
    base_seq: u16,
    max_seq: u16,
    /// Sequence number cycles (wraps) counted, times 2^16.
    cycles: u64,
    received: u64,
    /// The last packet's timestamp, and its extended (unwrapped) value.
    last_ts: u32,
    ext_ts: i64,
    /// Arrival minus RTP timestamp of the last packet, in timestamp units.
    transit: f64,
}

impl Source {
    fn expected(&self) -> u64 {
        (self.cycles + u64::from(self.max_seq)).saturating_sub(u64::from(self.base_seq)) + 1
    }
}

impl RtpStats {
    pub fn new(epoch: Instant) -> Self {
        RtpStats {
            epoch,
            source: None,
            expected_before: 0,
            received_before: 0,
            jitter: 0.0,
            last_arrival: None,
            max_gap: Duration::ZERO,
            max_gap_end: None,
        }
    }

    /// Records one packet that arrived at `now`.
    pub fn handle_packet(&mut self, now: Instant, header: &RtpHeader) {
        if let Some(last) = self.last_arrival {
            let gap = now.saturating_duration_since(last);
            if gap > self.max_gap {
                self.max_gap = gap;
                self.max_gap_end = Some(now);
            }
        }
        self.last_arrival = Some(now);
        let arrival =
            now.saturating_duration_since(self.epoch).as_secs_f64() * f64::from(SAMPLE_RATE);
        let seq = header.sequence;
        let src = match &mut self.source {
            Some(src) if src.ssrc == header.ssrc => src,
            other => {
                // A new SSRC (or the first): close the previous one's counts and start over.
                if let Some(old) = other.take() {
                    self.expected_before += old.expected();
                    self.received_before += old.received;
                }
                *other = Some(Source {
                    ssrc: header.ssrc,
                    base_seq: seq,
                    max_seq: seq,
                    cycles: 0,
                    received: 1,
                    last_ts: header.timestamp,
                    ext_ts: i64::from(header.timestamp),
                    transit: arrival - f64::from(header.timestamp),
                });
                return;
            }
        };
        src.received += 1;
        let delta = seq.wrapping_sub(src.max_seq);
        if delta != 0 && delta < 0x8000 {
            if seq < src.max_seq {
                src.cycles += 1 << 16;
            }
            src.max_seq = seq;
        } else if delta >= 0x8000 && seq.wrapping_sub(src.max_seq) < u16::MAX - MAX_MISORDER {
            // Far behind: the sender restarted its numbering; count from here (RFC 3550 §A.1).
            self.expected_before += src.expected().saturating_sub(1);
            self.received_before += src.received.saturating_sub(1);
            src.base_seq = seq;
            src.max_seq = seq;
            src.cycles = 0;
            src.received = 1;
        }
        // RFC 3550 §6.4.1: D(i,j) = (Rj - Ri) - (Sj - Si); J += (|D| - J) / 16.
        src.ext_ts += i64::from(header.timestamp.wrapping_sub(src.last_ts) as i32);
        src.last_ts = header.timestamp;
        let transit = arrival - src.ext_ts as f64;
        let d = (transit - src.transit).abs();
        src.transit = transit;
        self.jitter += (d - self.jitter) / 16.0;
    }

    /// Packets the sequence numbers say were sent.
    pub fn expected(&self) -> u64 {
        self.expected_before + self.source.as_ref().map_or(0, Source::expected)
    }

    pub fn received(&self) -> u64 {
        self.received_before + self.source.as_ref().map_or(0, |s| s.received)
    }

    /// Expected minus received, never negative (duplicates can outnumber losses).
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received())
    }

    /// The interarrival jitter estimate in milliseconds.
    pub fn jitter_ms(&self) -> f64 {
        self.jitter * 1000.0 / f64::from(SAMPLE_RATE)
    }

    /// The largest time between two consecutive arrivals.
    pub fn max_gap(&self) -> Duration {
        self.max_gap
    }

    /// When the largest gap ended (the arrival of the packet after it).
    pub fn max_gap_end(&self) -> Option<Instant> {
        self.max_gap_end
    }
}

/// p50, p99 and max of one figure across calls (nearest-rank percentiles).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub count: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(values: &[f64]) -> Summary {
        if values.is_empty() {
            return Summary::default();
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Summary {
            count: v.len(),
            p50: rank(0.50),
            p99: rank(0.99),
            max: v[v.len() - 1],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(seq: u16, ts: u32) -> RtpHeader {
        RtpHeader {
            payload_type: crate::media::PayloadType(0),
            marker: false,
            sequence: seq,
            timestamp: ts,
            ssrc: Ssrc(7),
        }
    }

    #[test]
    fn a_steady_stream_has_no_jitter_loss_or_gap_beyond_its_period() {
        let t0 = Instant::now();
        let mut s = RtpStats::new(t0);
        for i in 0..100u32 {
            let at = t0 + Duration::from_millis(20 * u64::from(i));
            s.handle_packet(
                at,
                &header(
                    65500u16.wrapping_add(i as u16),
                    (u32::MAX - 800).wrapping_add(160 * i),
                ),
            );
        }
        assert_eq!((s.expected(), s.received(), s.lost()), (100, 100, 0));
        assert!(s.jitter_ms() < 0.001, "{}", s.jitter_ms());
        assert_eq!(s.max_gap(), Duration::from_millis(20));
    }

    #[test]
    fn losses_across_the_wrap_are_counted_and_the_gap_seen() {
        let t0 = Instant::now();
        let mut s = RtpStats::new(t0);
        for i in 0..50u16 {
            if (10..13).contains(&i) {
                continue;
            }
            let at = t0 + Duration::from_millis(20 * u64::from(i));
            s.handle_packet(at, &header(65530u16.wrapping_add(i), 160 * u32::from(i)));
        }
        assert_eq!((s.expected(), s.received(), s.lost()), (50, 47, 3));
        assert_eq!(s.max_gap(), Duration::from_millis(80));
    }

    #[test]
    fn jitter_converges_to_the_mean_deviation_of_arrivals() {
        // Alternate arrivals 5 ms early and 5 ms late: |D| is 10 ms each time, so J → 10 ms.
        let t0 = Instant::now();
        let mut s = RtpStats::new(t0);
        for i in 0..500u64 {
            let skew = if i % 2 == 0 { 5 } else { 15 };
            let at = t0 + Duration::from_millis(20 * i + skew);
            s.handle_packet(at, &header(i as u16, 160 * i as u32));
        }
        assert!((s.jitter_ms() - 10.0).abs() < 0.1, "{}", s.jitter_ms());
    }

    #[test]
    fn a_new_ssrc_keeps_the_counts_of_the_old_one() {
        let t0 = Instant::now();
        let mut s = RtpStats::new(t0);
        for i in 0..10u16 {
            s.handle_packet(t0, &header(i, 0));
        }
        let mut h = header(5000, 0);
        h.ssrc = Ssrc(8);
        s.handle_packet(t0, &h);
        assert_eq!((s.expected(), s.received()), (11, 11));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Summary::of(&v);
        assert_eq!((s.count, s.p50, s.p99, s.max), (100, 50.0, 99.0, 100.0));
        assert_eq!(Summary::of(&[]).count, 0);
    }
}
