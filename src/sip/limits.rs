//! Flood limits for SIP (issue 7), sans-IO: a token bucket per source IP address with the
//! time passed in, and the settings for every limit the transport and endpoint enforce.
//!
//! [`SourceLimiter::check`] answers [`Verdict::Allow`] while the source has tokens; once it
//! is out, the first request is answered `503` with `Retry-After` ([`Verdict::Reject`]) and
//! the rest are dropped silently ([`Verdict::Drop`]) until `retry_after` has passed, so a
//! flood costs us one response per source per `retry_after` and not one per packet. The
//! table of sources is bounded ([`MAX_SOURCES`]); idle sources (full buckets) are forgotten.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Most sources a limiter remembers at once (about 64 bytes each): a spoofed-source flood
/// cannot grow the table without bound.
pub const MAX_SOURCES: usize = 65_536;

/// A sustained rate with a burst allowance; `per_second == 0` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

impl RateLimit {
    pub const UNLIMITED: RateLimit = RateLimit {
        per_second: 0,
        burst: 0,
    };

    pub fn is_unlimited(&self) -> bool {
        self.per_second == 0
    }
}

/// Every flood limit, with the defaults SECURITY.md documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// New calls (INVITE outside a dialog) per source IP.
    pub invites: RateLimit,
    /// Every SIP message per source IP (checked before parsing; over it: silent drop).
    pub messages: RateLimit,
    /// Calls up at once, all sources together; more get `503`.
    pub max_calls: usize,
    /// `Retry-After` of our `503`s, and how long a source over its INVITE limit hears nothing
    /// more after one.
    pub retry_after: Duration,
    /// Open TCP connections per source IP; more are closed at once.
    pub tcp_per_source: usize,
    /// A TCP connection with no octets for this long is closed.
    pub tcp_idle_timeout: Duration,
    /// Once a message has begun on a TCP connection, all of it must arrive within this
    /// (slowloris: a header dripped one octet at a time).
    pub tcp_message_timeout: Duration,
}

impl Limits {
    pub const DEFAULT_INVITE_RATE: u32 = 10;
    pub const DEFAULT_INVITE_BURST: u32 = 40;
    pub const DEFAULT_MESSAGE_RATE: u32 = 200;
    pub const DEFAULT_MESSAGE_BURST: u32 = 400;
    pub const DEFAULT_MAX_CALLS: usize = 1000;
    pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);
    pub const DEFAULT_TCP_PER_SOURCE: usize = 16;
    pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
    pub const DEFAULT_TCP_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            invites: RateLimit {
                per_second: Self::DEFAULT_INVITE_RATE,
                burst: Self::DEFAULT_INVITE_BURST,
            },
            messages: RateLimit {
                per_second: Self::DEFAULT_MESSAGE_RATE,
                burst: Self::DEFAULT_MESSAGE_BURST,
            },
            max_calls: Self::DEFAULT_MAX_CALLS,
            retry_after: Self::DEFAULT_RETRY_AFTER,
            tcp_per_source: Self::DEFAULT_TCP_PER_SOURCE,
            tcp_idle_timeout: Self::DEFAULT_TCP_IDLE_TIMEOUT,
            tcp_message_timeout: Self::DEFAULT_TCP_MESSAGE_TIMEOUT,
        }
    }
}

/// A token bucket: holds up to `burst` tokens, refilled at `per_second`; each event takes
/// one. Time only moves when `now` is passed in.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    limit: RateLimit,
    /// Tokens, in millitokens, so refills at low rates are not lost to rounding.
    milli: u64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(now: Instant, limit: RateLimit) -> Self {
        TokenBucket {
            limit,
            milli: u64::from(limit.burst.max(1)) * 1000,
            last: now,
        }
    }

    fn capacity(&self) -> u64 {
        u64::from(self.limit.burst.max(1)) * 1000
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        // Whole millitokens earned; the remainder of time is kept by moving `last` only as
        // far as it was used.
        let earned = elapsed.as_micros() * u128::from(self.limit.per_second) / 1000;
        if earned == 0 {
            return;
        }
        let earned = u64::try_from(earned).unwrap_or(u64::MAX);
        if self.milli.saturating_add(earned) >= self.capacity() {
            self.milli = self.capacity();
            self.last = now;
        } else {
            self.milli += earned;
            let used = Duration::from_micros(earned * 1000 / u64::from(self.limit.per_second));
            self.last += used;
        }
    }

    /// Takes a token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        if self.limit.is_unlimited() {
            return true;
        }
        self.refill(now);
        if self.milli >= 1000 {
            self.milli -= 1000;
            true
        } else {
            false
        }
    }

    /// Whether the bucket is full at `now` (the source has been quiet).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.milli >= self.capacity()
    }
}

/// What to do with one event from a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Over the limit: answer `503` with `Retry-After` (the first time in a while).
    Reject,
    /// Over the limit and already told: drop without answering.
    Drop,
}

#[derive(Debug, Clone)]
struct SourceState {
    bucket: TokenBucket,
    told_at: Option<Instant>,
}

/// Token buckets per source IP.
#[derive(Debug, Clone)]
pub struct SourceLimiter {
    limit: RateLimit,
    retry_after: Duration,
    sources: HashMap<IpAddr, SourceState>,
    max_sources: usize,
}

impl SourceLimiter {
    pub fn new(limit: RateLimit, retry_after: Duration) -> Self {
        Self::with_capacity(limit, retry_after, MAX_SOURCES)
    }

    /// As [`SourceLimiter::new`] with a smaller source table (for tests).
    pub fn with_capacity(limit: RateLimit, retry_after: Duration, max_sources: usize) -> Self {
        SourceLimiter {
            limit,
            retry_after,
            sources: HashMap::new(),
            max_sources: max_sources.max(1),
        }
    }

    /// One event from `source` at `now`.
    pub fn check(&mut self, now: Instant, source: IpAddr) -> Verdict {
        if self.limit.is_unlimited() {
            return Verdict::Allow;
        }
        let source = source.to_canonical();
        if !self.sources.contains_key(&source) && self.sources.len() >= self.max_sources {
            self.prune(now);
        }
        let limit = self.limit;
        let state = self.sources.entry(source).or_insert_with(|| SourceState {
            bucket: TokenBucket::new(now, limit),
            told_at: None,
        });
        if state.bucket.try_take(now) {
            return Verdict::Allow;
        }
        match state.told_at {
            Some(t) if now.saturating_duration_since(t) < self.retry_after => Verdict::Drop,
            _ => {
                state.told_at = Some(now);
                Verdict::Reject
            }
        }
    }

    /// Sources remembered now.
    pub fn len(&self) -> usize {
        self.sources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Forgets quiet sources; if every source is busy, forgets one anyway (the table stays
    /// bounded, at the price of a fresh bucket for some flooder).
    fn prune(&mut self, now: Instant) {
        let retry_after = self.retry_after;
        self.sources.retain(|_, s| {
            let quiet = s
                .told_at
                .is_none_or(|t| now.saturating_duration_since(t) >= retry_after);
            !(quiet && s.bucket.is_full(now))
        });
        if self.sources.len() >= self.max_sources
            && let Some(k) = self.sources.keys().next().copied()
        {
            self.sources.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    fn limit(per_second: u32, burst: u32) -> RateLimit {
        RateLimit { per_second, burst }
    }

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(t0, limit(5, 10));
        assert_eq!((0..20).filter(|_| b.try_take(t0)).count(), 10);
        // 5 per second: one token every 200 ms, none before.
        assert!(!b.try_take(t0 + Duration::from_millis(199)));
        assert!(b.try_take(t0 + Duration::from_millis(200)));
        assert!(!b.try_take(t0 + Duration::from_millis(300)));
        // Over 10 s at most the burst comes back, not 50.
        let later = t0 + Duration::from_secs(10);
        assert_eq!((0..100).filter(|_| b.try_take(later)).count(), 10);
    }

    #[test]
    fn bucket_keeps_fractions_of_tokens() {
        // 3 per second polled every 100 ms for 10 s: the one token left plus 30 earned, not
        // 1 (0.3 token rounded away each time) or 101.
        let t0 = Instant::now();
        let mut b = TokenBucket::new(t0, limit(3, 2));
        assert!(b.try_take(t0));
        let taken = (1..=100)
            .filter(|i| b.try_take(t0 + Duration::from_millis(100 * i)))
            .count();
        assert_eq!(taken, 31);
        // With room for one token only, what overflows while it is full is lost: a token
        // every 400 ms (the 4th poll), 25 in 10 s.
        let mut b = TokenBucket::new(t0, limit(3, 1));
        assert!(b.try_take(t0));
        let taken = (1..=100)
            .filter(|i| b.try_take(t0 + Duration::from_millis(100 * i)))
            .count();
        assert_eq!(taken, 25);
    }

    #[test]
    fn unlimited_never_refuses() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(RateLimit::UNLIMITED, Duration::from_secs(5));
        assert!((0..10_000).all(|_| l.check(t0, A) == Verdict::Allow));
        assert!(l.is_empty());
    }

    #[test]
    fn over_the_limit_one_reject_then_drops_until_retry_after() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(limit(1, 2), Duration::from_secs(5));
        assert_eq!(l.check(t0, A), Verdict::Allow);
        assert_eq!(l.check(t0, A), Verdict::Allow);
        assert_eq!(l.check(t0, A), Verdict::Reject);
        assert_eq!(l.check(t0, A), Verdict::Drop);
        // Another source is not affected.
        assert_eq!(l.check(t0, B), Verdict::Allow);
        // A token comes back after 1 s: allowed, then over again but still within the
        // retry-after window, so dropped.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(l.check(t1, A), Verdict::Allow);
        assert_eq!(l.check(t1, A), Verdict::Drop);
        // After retry_after, told again once.
        let t5 = t0 + Duration::from_millis(5001);
        assert_eq!(l.check(t5, A), Verdict::Allow);
        assert_eq!(l.check(t5, A), Verdict::Allow);
        assert_eq!(l.check(t5, A), Verdict::Reject);
        assert_eq!(l.check(t5, A), Verdict::Drop);
    }

    #[test]
    fn ipv4_mapped_ipv6_is_the_same_source() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(limit(1, 1), Duration::from_secs(5));
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(l.check(t0, A), Verdict::Allow);
        assert_eq!(l.check(t0, mapped), Verdict::Reject);
    }

    #[test]
    fn the_source_table_is_bounded() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::with_capacity(limit(1, 1), Duration::from_secs(5), 100);
        for i in 0..10_000u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert_eq!(l.check(t0, ip), Verdict::Allow);
            assert!(l.len() <= 100, "{} sources after {i}", l.len());
        }
        // Quiet sources are forgotten first: after a second everyone's bucket is full again.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(l.check(t1, A), Verdict::Allow);
        assert_eq!(l.len(), 1);
    }
}
