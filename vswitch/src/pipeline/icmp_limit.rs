//! A token bucket for ICMP errors, as routers have (RFC 1812 §4.3.2.8): a pod looping TTL-1
//! packets must not turn the switch into an ICMP flood.

#[derive(Debug, Clone)]
pub struct IcmpLimiter {
    per_second: u64,
    burst: u64,
    /// Tokens scaled by 1e9 so that refills stay integral at nanosecond resolution.
    tokens: u64,
    last_ns: u64,
}

const SCALE: u64 = 1_000_000_000;

impl IcmpLimiter {
    pub fn new(per_second: u64, burst: u64) -> IcmpLimiter {
        IcmpLimiter { per_second, burst, tokens: burst * SCALE, last_ns: 0 }
    }

    /// Takes a token if one is left at time `now_ns` (any monotonic clock).
    pub fn allow(&mut self, now_ns: u64) -> bool {
        let elapsed = now_ns.saturating_sub(self.last_ns);
        self.last_ns = self.last_ns.max(now_ns);
        self.tokens = (self.tokens + elapsed.saturating_mul(self.per_second)).min(self.burst * SCALE);
        if self.tokens >= SCALE {
            self.tokens -= SCALE;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_then_the_rate() {
        let mut l = IcmpLimiter::new(10, 3);
        assert!((0..3).all(|_| l.allow(0)));
        assert!(!l.allow(0));
        assert!(!l.allow(50_000_000)); // half a token after 50 ms
        assert!(l.allow(100_000_000));
        assert!(!l.allow(100_000_000));
        // A long pause refills only up to the burst.
        assert_eq!((0..10).filter(|_| l.allow(60 * SCALE)).count(), 3);
    }
}
