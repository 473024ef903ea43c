//! Retry policy: how often and after how long a failed delivery is tried again.

use std::time::Duration;

/// Exponential backoff with jitter, capped.
///
/// The nominal delay before retry `n` (1-based) is
/// `retry_delay * retry_backoff^(n-1)`, capped at `max_retry_delay`; the actual
/// delay is the nominal one times a random factor in `[1 - jitter, 1 + jitter]`,
/// capped again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// How many times a failed delivery is tried again (0 = never).
    pub max_retries: u32,
    /// Delay before the first retry.
    pub retry_delay: Duration,
    /// Multiplier applied to the delay for each further retry.
    pub retry_backoff: f64,
    /// Upper bound on any delay.
    pub max_retry_delay: Duration,
    /// Relative jitter, 0.0 to 1.0.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            retry_delay: Duration::from_millis(100),
            retry_backoff: 1.0,
            max_retry_delay: Duration::from_secs(30),
            jitter: 0.1,
        }
    }
}

impl RetryPolicy {
    /// The nominal (jitter-free) delay before retry `n` (1-based).
    pub fn nominal_delay(&self, n: u32) -> Duration {
        let exp = self
            .retry_backoff
            .max(0.0)
            .powi(n.saturating_sub(1).min(i32::MAX as u32) as i32);
        let secs = self.retry_delay.as_secs_f64() * exp;
        let cap = self.max_retry_delay.as_secs_f64();
        Duration::from_secs_f64(if secs.is_finite() { secs.min(cap) } else { cap })
    }

    /// The delay to wait before retry `n` (1-based), jitter included.
    pub fn delay(&self, n: u32) -> Duration {
        let nominal = self.nominal_delay(n).as_secs_f64();
        let j = self.jitter.clamp(0.0, 1.0);
        let factor = 1.0 - j + 2.0 * j * fastrand::f64();
        Duration::from_secs_f64((nominal * factor).min(self.max_retry_delay.as_secs_f64()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_and_capped() {
        let p = RetryPolicy {
            max_retries: 10,
            retry_delay: Duration::from_millis(100),
            retry_backoff: 2.0,
            max_retry_delay: Duration::from_millis(500),
            jitter: 0.0,
        };
        assert_eq!(p.delay(1), Duration::from_millis(100));
        assert_eq!(p.delay(2), Duration::from_millis(200));
        assert_eq!(p.delay(3), Duration::from_millis(400));
        assert_eq!(p.delay(4), Duration::from_millis(500));
        assert_eq!(p.delay(60), Duration::from_millis(500));
    }

    #[test]
    fn jitter_stays_in_bounds() {
        let p = RetryPolicy {
            jitter: 0.5,
            ..RetryPolicy::default()
        };
        for _ in 0..1000 {
            let d = p.delay(1).as_secs_f64();
            assert!((0.05..=0.15).contains(&d), "{d}");
        }
    }
}
