//! When to renew: inside the CA's ARI window (RFC 9773) when it offers one, else at two thirds
//! of the lifetime (the PRD's "30 days before expiry" is too late for 45-day certificates). A
//! failed order is retried with exponential backoff, capped so CA rate limits are respected
//! (Let's Encrypt: 5 failed validations per hostname per hour).

use std::time::Duration;

/// Two thirds into [not_before, not_after].
pub fn two_thirds(not_before_ms: i64, not_after_ms: i64) -> i64 {
    not_before_ms + (not_after_ms - not_before_ms) * 2 / 3
}

/// A point in an ARI suggested window: RFC 9773 §4.2 asks clients to pick uniformly at random in
/// it so renewals spread; `fraction` in [0, 1] is that random draw.
pub fn in_window(start_ms: i64, end_ms: i64, fraction: f64) -> i64 {
    let fraction = fraction.clamp(0.0, 1.0);
    start_ms + ((end_ms - start_ms).max(0) as f64 * fraction) as i64
}

/// The delay before retry number `failures` (1-based): 1 min, doubling, at most 6 h; never
/// less than the CA's Retry-After.
pub fn retry_delay(failures: u32, retry_after: Option<Duration>) -> Duration {
    let exp = failures.saturating_sub(1).min(10);
    let backoff = Duration::from_secs(60u64 << exp).min(Duration::from_secs(6 * 3600));
    retry_after.map_or(backoff, |ra| ra.max(backoff))
}

/// The delay before a failed custom domain is checked again after `attempts` failures: `base`,
/// doubling, at most 6 h.
pub fn domain_retry_delay(attempts: u32, base: Duration) -> Duration {
    let exp = attempts.saturating_sub(1).min(16);
    base.saturating_mul(1 << exp)
        .min(Duration::from_secs(6 * 3600))
}

/// Days from `now_ms` to `not_after_ms` (the expiry gauge).
pub fn days_left(now_ms: i64, not_after_ms: i64) -> f64 {
    (not_after_ms - now_ms) as f64 / 86_400_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_thirds_of_a_45_day_certificate_is_day_30() {
        let day = 86_400_000;
        assert_eq!(two_thirds(0, 45 * day), 30 * day);
        assert_eq!(two_thirds(10 * day, 100 * day), 70 * day);
    }

    #[test]
    fn window_draw_stays_inside() {
        assert_eq!(in_window(100, 200, 0.0), 100);
        assert_eq!(in_window(100, 200, 1.0), 200);
        assert_eq!(in_window(100, 200, 7.0), 200);
        assert_eq!(in_window(100, 200, 0.5), 150);
    }

    #[test]
    fn domain_backoff_starts_at_the_base_and_is_capped() {
        let base = Duration::from_secs(720);
        assert_eq!(domain_retry_delay(1, base), base);
        assert_eq!(domain_retry_delay(2, base), base * 2);
        assert_eq!(domain_retry_delay(40, base), Duration::from_secs(6 * 3600));
        // Four failures fit in the first hour at most: under Let's Encrypt's five.
        let first_hour: Duration = (1..=4).map(|a| domain_retry_delay(a, base)).sum();
        assert!(first_hour > Duration::from_secs(3600));
    }

    #[test]
    fn backoff_doubles_is_capped_and_respects_retry_after() {
        assert_eq!(retry_delay(1, None), Duration::from_secs(60));
        assert_eq!(retry_delay(3, None), Duration::from_secs(240));
        assert_eq!(retry_delay(50, None), Duration::from_secs(6 * 3600));
        assert_eq!(
            retry_delay(1, Some(Duration::from_secs(3600))),
            Duration::from_secs(3600)
        );
    }
}
