//! Token-bucket rate limits for `tools/call`.
//!
//! Two families of buckets, both from `[mcp.rate_limit]`: one per caller
//! (keyed by stable node ID, across all tools) and one per (caller, tool).
//! Each bucket holds at most `count` tokens (the burst) and refills
//! continuously at `count` per period. A call takes one token from each
//! bucket that applies, and only if every one of them has a token, so a call
//! refused by one limit costs nothing from the other.
//!
//! Time is [`tokio::time::Instant`], so tests drive it with
//! `tokio::time::pause()` and `advance()`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{Rate, RateLimits};

/// Buckets idle for longer than this many refill periods are forgotten, which
/// keeps the table small; a forgotten bucket comes back full, exactly as it
/// would have refilled anyway.
const IDLE_PERIODS: u32 = 2;

/// Buckets kept before the idle ones are swept.
const SWEEP_AT: usize = 4096;

/// Which limit refused a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    /// `per_caller` or `per_tool`.
    pub limit: &'static str,
    /// The configured rate, e.g. `20/s`.
    pub rate: Rate,
    /// When the next token is due.
    pub retry_after: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refilled(self, rate: Rate, now: Instant) -> Bucket {
        let period = rate.period.duration().as_secs_f64();
        let per_sec = f64::from(rate.count) / period;
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        Bucket {
            tokens: (self.tokens + elapsed * per_sec).min(f64::from(rate.count)),
            at: now,
        }
    }

    fn wait(self, rate: Rate) -> Duration {
        let period = rate.period.duration().as_secs_f64();
        let per_sec = f64::from(rate.count) / period;
        if per_sec <= 0.0 {
            return rate.period.duration();
        }
        Duration::from_secs_f64(((1.0 - self.tokens).max(0.0)) / per_sec)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Caller(String),
    Tool(String),
}

/// The rate limiter of one MCP device.
#[derive(Debug)]
pub struct RateLimiter {
    limits: arc_swap::ArcSwap<RateLimits>,
    buckets: Mutex<HashMap<Key, Bucket>>,
}

impl RateLimiter {
    /// A limiter enforcing `limits`; with no limits every call passes.
    pub fn new(limits: RateLimits) -> Self {
        RateLimiter {
            limits: arc_swap::ArcSwap::from_pointee(limits),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Replaces the limits (after a reload); buckets keep their tokens and
    /// refill at the new rates.
    pub fn set_limits(&self, limits: RateLimits) {
        self.limits.store(std::sync::Arc::new(limits));
    }

    /// Takes one token for `caller` (a stable node ID) calling `tool`, or
    /// says which limit is exhausted. `per_caller` counts each caller's
    /// calls across tools; `per_tool` counts each tool's calls across
    /// callers.
    pub fn check(&self, caller: &str, tool: &str) -> Result<(), Limited> {
        let now = Instant::now();
        let limits = self.limits.load();
        let mut wanted: Vec<(Key, Rate, &'static str)> = Vec::with_capacity(2);
        if let Some(rate) = limits.per_caller {
            wanted.push((Key::Caller(caller.to_owned()), rate, "per_caller"));
        }
        if let Some(rate) = limits.per_tool {
            let key = Key::Tool(tool.to_owned());
            wanted.push((key, rate, "per_tool"));
        }
        if wanted.is_empty() {
            return Ok(());
        }
        // A poisoned lock only means another call panicked mid-update; the
        // buckets are still plain numbers.
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() >= SWEEP_AT {
            Self::sweep(&limits, &mut buckets, now);
        }
        let mut refilled = Vec::with_capacity(wanted.len());
        for (key, rate, limit) in &wanted {
            let full = Bucket {
                tokens: f64::from(rate.count),
                at: now,
            };
            let bucket = buckets.get(key).map_or(full, |b| b.refilled(*rate, now));
            if bucket.tokens < 1.0 {
                buckets.insert(key.clone(), bucket);
                return Err(Limited {
                    limit,
                    rate: *rate,
                    retry_after: bucket.wait(*rate),
                });
            }
            refilled.push(bucket);
        }
        for ((key, _, _), mut bucket) in wanted.into_iter().zip(refilled) {
            bucket.tokens -= 1.0;
            buckets.insert(key, bucket);
        }
        Ok(())
    }

    fn sweep(limits: &RateLimits, buckets: &mut HashMap<Key, Bucket>, now: Instant) {
        let longest = [limits.per_caller, limits.per_tool]
            .into_iter()
            .flatten()
            .map(|r| r.period.duration())
            .max()
            .unwrap_or_default();
        let idle = longest * IDLE_PERIODS;
        buckets.retain(|_, b| now.saturating_duration_since(b.at) < idle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RatePeriod;

    fn limits(per_caller: Option<u32>, per_tool: Option<u32>) -> RateLimits {
        let rate = |count| Rate {
            count,
            period: RatePeriod::Second,
        };
        RateLimits {
            per_caller: per_caller.map(rate),
            per_tool: per_tool.map(rate),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_refill() {
        let limiter = RateLimiter::new(limits(Some(2), None));
        assert!(limiter.check("n1", "a").is_ok());
        assert!(limiter.check("n1", "b").is_ok());
        let hit = limiter.check("n1", "a").unwrap_err();
        assert_eq!(hit.limit, "per_caller");
        assert!(hit.retry_after <= Duration::from_millis(500));
        // Another caller has its own bucket.
        assert!(limiter.check("n2", "a").is_ok());
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(limiter.check("n1", "a").is_ok());
        assert!(limiter.check("n1", "a").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn per_tool_is_shared_by_callers_and_costs_nothing_when_refused() {
        let limiter = RateLimiter::new(limits(Some(3), Some(1)));
        assert!(limiter.check("n1", "a").is_ok());
        let hit = limiter.check("n1", "a").unwrap_err();
        assert_eq!(hit.limit, "per_tool");
        // The refused call took no per-caller token: two are left.
        assert!(limiter.check("n1", "b").is_ok());
        assert!(limiter.check("n1", "c").is_ok());
        assert_eq!(limiter.check("n1", "d").unwrap_err().limit, "per_caller");
        // Tool `a` has spent its budget for every caller.
        assert_eq!(limiter.check("n2", "a").unwrap_err().limit, "per_tool");
        assert!(limiter.check("n2", "e").is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn new_limits_apply_to_the_next_call() {
        let limiter = RateLimiter::new(limits(Some(1), None));
        assert!(limiter.check("n1", "a").is_ok());
        assert!(limiter.check("n1", "a").is_err());
        limiter.set_limits(RateLimits::default());
        assert!(limiter.check("n1", "a").is_ok());
        limiter.set_limits(limits(None, Some(1)));
        assert!(limiter.check("n1", "a").is_ok());
        assert_eq!(limiter.check("n2", "a").unwrap_err().limit, "per_tool");
    }

    #[tokio::test(start_paused = true)]
    async fn no_limits_pass_everything() {
        let limiter = RateLimiter::new(RateLimits::default());
        for _ in 0..1000 {
            assert!(limiter.check("n1", "a").is_ok());
        }
    }
}
