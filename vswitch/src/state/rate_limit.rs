//! Per-port bandwidth limits (Kubernetes' `kubernetes.io/ingress-bandwidth` and
//! `egress-bandwidth`): a token bucket per port and direction, shared by every worker. The
//! datapath shapes with them rather than polices: egress by not reading from the pod while its
//! bucket is in debt ([`TokenBucket::has_room`], [`TokenBucket::charge`], [`TokenBucket::room_at_ns`]:
//! the pod's own queues hold the frames, and TCP clocks itself to the rate), ingress by holding
//! frames over the limit in a bounded per-worker delay queue until [`TokenBucket::admit`] takes
//! them ([`TokenBucket::admits_at_ns`] says when). A TCP stream then gets the rate; policing
//! (dropping a 64 KB GSO frame, ~45 segments at once) left it at half.
//!
//! Each bucket is one `AtomicU64` holding its "theoretical arrival time" (the generic cell rate
//! algorithm, a token bucket kept as a time): the moment the bucket would be full again. The
//! tokens at time `now` are `burst - (tat - now)`, so an idle bucket (tat in the past) is full and
//! refills at the rate with no separate refill step; taking `cost` tokens moves tat on by the
//! time they take to earn. Workers pass the time (their batch's one clock read) and race on the
//! one word with compare-and-swap, so all of them share a port's limit without a lock.
//!
//! A frame costs its whole size, so a GSO super-frame costs the bytes of all its segments. One
//! larger than the whole bucket (a 64 KB GSO frame with a small burst) passes only when the bucket
//! is full, and leaves it in debt: it is never refused forever, and the rate still holds.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bucket time runs in sixteenths of a nanosecond: a byte at 100 Gbit/s is 1.28 of them, and
/// a u64 of them lasts 36 years.
const TICKS_PER_NS: u64 = 16;
const TICKS_PER_SEC: u128 = 1_000_000_000 * TICKS_PER_NS as u128;

/// One direction's limit.
#[derive(Debug)]
pub struct TokenBucket {
    bits_per_second: u64,
    burst_bits: u64,
    /// Ticks per byte, in 48.16 fixed point (no division per frame).
    ticks_per_byte_q16: u64,
    /// The bucket's size, in ticks.
    burst_ticks: u64,
    /// When the bucket is full again, in ticks of the caller's clock.
    full_at: AtomicU64,
}

impl TokenBucket {
    /// `bits_per_second` (at least 1) with room for `burst_bits`; starts full.
    pub fn new(bits_per_second: u64, burst_bits: u64) -> TokenBucket {
        let bits_per_second = bits_per_second.max(1);
        let per_byte = ((8 * TICKS_PER_SEC) << 16) / bits_per_second as u128;
        let burst = burst_bits as u128 * TICKS_PER_SEC / bits_per_second as u128;
        TokenBucket {
            bits_per_second,
            burst_bits,
            ticks_per_byte_q16: per_byte.min(u64::MAX as u128) as u64,
            burst_ticks: burst.min(u64::MAX as u128 / 2) as u64,
            full_at: AtomicU64::new(0),
        }
    }

    pub fn bits_per_second(&self) -> u64 {
        self.bits_per_second
    }

    pub fn burst_bits(&self) -> u64 {
        self.burst_bits
    }

    /// What `bytes` cost, in ticks.
    #[inline]
    fn cost(&self, bytes: usize) -> u64 {
        ((bytes as u128 * self.ticks_per_byte_q16 as u128) >> 16).min(u64::MAX as u128 / 4) as u64
    }

    /// Takes `bytes` worth of tokens at `now_ns` (a monotonic clock every caller shares) if the
    /// bucket holds them; false if the frame is over the limit.
    #[inline]
    pub fn admit(&self, now_ns: u64, bytes: usize) -> bool {
        let now = now_ns.saturating_mul(TICKS_PER_NS);
        let cost = self.cost(bytes);
        let need = cost.min(self.burst_ticks);
        let mut full_at = self.full_at.load(Ordering::Relaxed);
        loop {
            // An idle bucket is full, never fuller: time before `now` earns nothing.
            let start = full_at.max(now);
            // Tokens missing now are start - now; there must be room left for `need`.
            if start - now > self.burst_ticks - need {
                return false;
            }
            // Relaxed: the word is the whole state; nothing else is published through it.
            match self.full_at.compare_exchange_weak(full_at, start + cost, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(current) => full_at = current,
            }
        }
    }

    /// The earliest time (ns, the callers' clock) at which [`TokenBucket::admit`] would take
    /// `bytes`, as the bucket stands now (other workers may take tokens before then: a caller
    /// asks again when the time comes).
    pub fn admits_at_ns(&self, bytes: usize) -> u64 {
        let need = self.cost(bytes).min(self.burst_ticks);
        let full_at = self.full_at.load(Ordering::Relaxed);
        // Admitted once full_at - now <= burst - need.
        full_at.saturating_sub(self.burst_ticks - need).div_ceil(TICKS_PER_NS)
    }

    /// Whether the bucket holds any tokens at `now_ns` (is not empty or in debt): whether a
    /// reader that cannot know a frame's size before reading it may read one more.
    #[inline]
    pub fn has_room(&self, now_ns: u64) -> bool {
        let now = now_ns.saturating_mul(TICKS_PER_NS);
        self.full_at.load(Ordering::Relaxed) < now.saturating_add(self.burst_ticks)
    }

    /// The earliest time (ns) at which [`TokenBucket::has_room`] holds again, as the bucket
    /// stands now.
    pub fn room_at_ns(&self) -> u64 {
        let full_at = self.full_at.load(Ordering::Relaxed);
        // has_room once now > full_at - burst.
        (full_at.saturating_sub(self.burst_ticks) / TICKS_PER_NS) + 1
    }

    /// Takes `bytes` worth of tokens at `now_ns` whatever the bucket holds, leaving it in debt
    /// if it held fewer: for a frame already read (see [`TokenBucket::has_room`]). The rate
    /// still holds, as the debt is paid before the bucket has room again.
    #[inline]
    pub fn charge(&self, now_ns: u64, bytes: usize) {
        let now = now_ns.saturating_mul(TICKS_PER_NS);
        let cost = self.cost(bytes);
        // Relaxed, as in `admit`. The closure always returns Some: the update cannot fail.
        let _ = self
            .full_at
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |full_at| Some(full_at.max(now).saturating_add(cost)));
    }
}

/// A port's limits, one bucket per direction: ingress is traffic into the pod (frames the
/// switch writes to the port), egress traffic from it (frames the switch reads). Held in an
/// `Arc` by [`PortInfo`](super::PortInfo), so the buckets carry over when the control
/// plane publishes a new snapshot.
#[derive(Debug, Default)]
pub struct PortRateLimit {
    pub ingress: Option<TokenBucket>,
    pub egress: Option<TokenBucket>,
}

impl PortRateLimit {
    /// Limits in bits per second for each direction (`None`: unlimited), each with a bucket of
    /// `burst_bits`.
    pub fn new(ingress_bps: Option<u64>, egress_bps: Option<u64>, burst_bits: u64) -> PortRateLimit {
        PortRateLimit {
            ingress: ingress_bps.map(|bps| TokenBucket::new(bps, burst_bits)),
            egress: egress_bps.map(|bps| TokenBucket::new(bps, burst_bits)),
        }
    }

    /// The configuration, without the buckets' state.
    pub fn config(&self) -> RateLimitConfig {
        let rate = |b: &Option<TokenBucket>| b.as_ref().map(|b| b.bits_per_second);
        let burst = [&self.ingress, &self.egress].iter().find_map(|b| b.as_ref().map(|b| b.burst_bits)).unwrap_or(0);
        RateLimitConfig { ingress_bps: rate(&self.ingress), egress_bps: rate(&self.egress), burst_bits: burst }
    }
}

/// Two limits are the same if configured the same; the buckets' state is not compared.
impl PartialEq for PortRateLimit {
    fn eq(&self, other: &Self) -> bool {
        self.config() == other.config()
    }
}

impl Eq for PortRateLimit {}

/// A [`PortRateLimit`] as configured: what is serialised for the API and the state file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RateLimitConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_bps: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_bps: Option<u64>,
    #[serde(default)]
    pub burst_bits: u64,
}

/// `Option<Arc<PortRateLimit>>` as an optional [`RateLimitConfig`] (a deserialised limit starts
/// with full buckets).
pub(crate) mod serde_config {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{PortRateLimit, RateLimitConfig};

    pub fn serialize<S: Serializer>(limit: &Option<Arc<PortRateLimit>>, s: S) -> Result<S::Ok, S::Error> {
        limit.as_ref().map(|l| l.config()).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Arc<PortRateLimit>>, D::Error> {
        let config = Option::<RateLimitConfig>::deserialize(d)?;
        Ok(config.map(|c| Arc::new(PortRateLimit::new(c.ingress_bps, c.egress_bps, c.burst_bits))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_burst_passes_then_the_rate() {
        // 8 Mbit/s = 1000 bytes per ms, a 10 000-byte bucket.
        let bucket = TokenBucket::new(8_000_000, 80_000);
        assert_eq!((0..20).filter(|_| bucket.admit(0, 1000)).count(), 10, "the burst");
        assert!(!bucket.admit(0, 1), "empty");
        assert!(!bucket.admit(MS / 2, 1000), "half a frame earned after 0.5 ms");
        assert!(bucket.admit(MS, 1000), "one frame earned after 1 ms");
        assert!(!bucket.admit(MS, 1000));
        // Over 100 ms, the rate: 100 frames (the bucket was empty at 1 ms).
        let passed = (2..=101).flat_map(|ms| [ms * MS; 3]).filter(|&t| bucket.admit(t, 1000)).count();
        assert_eq!(passed, 100);
        // A long pause refills it only to the burst.
        assert_eq!((0..20).filter(|_| bucket.admit(10_000 * MS, 1000)).count(), 10);
    }

    #[test]
    fn a_frame_larger_than_the_bucket_passes_when_full_and_leaves_debt() {
        // 8 Mbit/s, a 10 000-byte bucket, a 64 KB GSO frame.
        let bucket = TokenBucket::new(8_000_000, 80_000);
        assert!(
            !{
                bucket.admit(0, 1000);
                bucket.admit(0, 65_000)
            },
            "not full: refused"
        );
        assert!(bucket.admit(MS, 65_000), "full again after 1 ms: passes");
        // Full again at 66 ms: at 50 ms 16 ms of tokens are missing, at 57 ms only 9.
        assert!(!bucket.admit(50 * MS, 1000));
        assert!(bucket.admit(57 * MS, 1000));
    }

    #[test]
    fn admits_at_says_when_a_refused_frame_passes() {
        // 8 Mbit/s = 1000 bytes per ms, a 10 000-byte bucket, emptied at 0.
        let bucket = TokenBucket::new(8_000_000, 80_000);
        assert!(bucket.admit(0, 10_000));
        assert_eq!(bucket.admits_at_ns(1000), MS);
        assert!(!bucket.admit(MS - 1, 1000));
        assert!(bucket.admit(bucket.admits_at_ns(1000), 1000));
        // A frame larger than the bucket waits for a full bucket: 10 ms after 1 ms.
        assert_eq!(bucket.admits_at_ns(65_000), 11 * MS);
        assert!(!bucket.admit(11 * MS - 1, 65_000));
        assert!(bucket.admit(11 * MS, 65_000));
        // An idle bucket admits at once (any time in the past).
        assert!(TokenBucket::new(8_000_000, 80_000).admits_at_ns(1000) <= 1);
    }

    #[test]
    fn charging_reads_into_debt_and_has_room_waits_for_it() {
        // 8 Mbit/s, a 10 000-byte bucket: a reader checks for room, reads, then pays.
        let bucket = TokenBucket::new(8_000_000, 80_000);
        let mut read = 0;
        while bucket.has_room(0) {
            bucket.charge(0, 4000);
            read += 4000;
        }
        assert_eq!(read, 12_000, "reads while any token is left: 2000 bytes of debt");
        assert_eq!(bucket.room_at_ns(), 2 * MS + 1);
        assert!(!bucket.has_room(2 * MS));
        assert!(bucket.has_room(bucket.room_at_ns()));
        // A 64 KB GSO frame is read whole and paid for: full again at 12 + 65 ms, room at 67.
        bucket.charge(3 * MS, 65_000);
        assert!(!bucket.has_room(67 * MS));
        assert_eq!(bucket.room_at_ns(), 67 * MS + 1);
        // Over a second of reading as fast as it lets, the rate (and the burst).
        let bucket = TokenBucket::new(8_000_000, 80_000);
        let mut read = 0u64;
        for t in (0..=1000 * MS).step_by(100_000) {
            while bucket.has_room(t) {
                bucket.charge(t, 1500);
                read += 1500;
            }
        }
        assert!((1_010_000..=1_012_000).contains(&read), "{read} bytes in 1 s at 1 MB/s, 10 kB burst");
    }

    #[test]
    fn workers_share_a_bucket() {
        let bucket = std::sync::Arc::new(TokenBucket::new(8_000_000, 8_000_000)); // 1 MB
        let passed: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let bucket = &bucket;
                    s.spawn(move || (0..1000).filter(|_| bucket.admit(0, 1000)).count())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(passed, 1000, "exactly the burst, over all threads");
    }

    #[test]
    fn limits_compare_and_serialise_by_configuration() {
        let a = PortRateLimit::new(Some(1_000_000), None, 8_000);
        let b = PortRateLimit::new(Some(1_000_000), None, 8_000);
        assert!(a.ingress.as_ref().unwrap().admit(0, 1000));
        assert_eq!(a, b, "state is not configuration");
        assert_eq!(a.config(), RateLimitConfig { ingress_bps: Some(1_000_000), egress_bps: None, burst_bits: 8_000 });
    }
}
