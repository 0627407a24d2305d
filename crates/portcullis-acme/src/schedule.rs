//! When to renew and how long to wait after a failure.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, SystemTime};

use portcullis_tls::CertInfo;

/// A random number in [0, 1), good enough for jitter.
pub(crate) fn random_unit() -> f64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// When a certificate should be renewed when the CA gives no window: when a third of its
/// lifetime remains (or `renew_before` ahead of expiry, but never before half the lifetime
/// has passed, so a short-lived certificate does not renew in a loop), minus up to 2% of
/// the lifetime (at most an hour) of jitter so many names do not renew at once.
pub(crate) fn renewal_time(
    info: &CertInfo,
    renew_before: Option<Duration>,
    jitter: f64,
) -> SystemTime {
    let lifetime = info
        .not_after
        .duration_since(info.not_before)
        .unwrap_or_default();
    let ahead = match renew_before {
        Some(before) => before.min(lifetime / 2),
        None => lifetime / 3,
    };
    let spread = (lifetime / 50).min(Duration::from_secs(3600));
    info.not_after - ahead - spread.mul_f64(jitter.clamp(0.0, 1.0))
}

/// A time inside the CA's suggested renewal window (ARI).
pub(crate) fn time_in_window(start: SystemTime, end: SystemTime, r: f64) -> SystemTime {
    match end.duration_since(start) {
        Ok(width) => start + width.mul_f64(r.clamp(0.0, 1.0)),
        Err(_) => start,
    }
}

/// Wait after the `failures`-th failure in a row: `initial`, doubling, capped at `max`,
/// with ±10% jitter.
pub(crate) fn backoff(initial: Duration, max: Duration, failures: u32, jitter: f64) -> Duration {
    let doubled = initial.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    doubled.min(max).mul_f64(0.9 + 0.2 * jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(days: u64) -> CertInfo {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        CertInfo {
            not_before: start,
            not_after: start + Duration::from_secs(days * 86_400),
            names: vec![],
            issuer: String::new(),
            serial: String::new(),
        }
    }

    #[test]
    fn renews_when_a_third_remains_with_bounded_jitter() {
        let c = info(90);
        let at = renewal_time(&c, None, 0.0);
        assert_eq!(
            c.not_after.duration_since(at).unwrap(),
            Duration::from_secs(30 * 86_400)
        );
        let jittered = renewal_time(&c, None, 0.999);
        let spread = at.duration_since(jittered).unwrap();
        assert!(spread > Duration::ZERO && spread <= Duration::from_secs(3600));
    }

    #[test]
    fn renew_before_is_honoured_but_never_before_half_the_lifetime() {
        let c = info(90);
        let at = renewal_time(&c, Some(Duration::from_secs(10 * 86_400)), 0.0);
        assert_eq!(
            c.not_after.duration_since(at).unwrap(),
            Duration::from_secs(10 * 86_400)
        );
        let short = info(6);
        let at = renewal_time(&short, Some(Duration::from_secs(30 * 86_400)), 0.0);
        assert_eq!(
            short.not_after.duration_since(at).unwrap(),
            Duration::from_secs(3 * 86_400)
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let (i, m) = (Duration::from_secs(60), Duration::from_secs(3600));
        assert_eq!(backoff(i, m, 1, 0.5), Duration::from_secs(60));
        assert_eq!(backoff(i, m, 2, 0.5), Duration::from_secs(120));
        assert_eq!(backoff(i, m, 4, 0.5), Duration::from_secs(480));
        assert_eq!(backoff(i, m, 30, 0.5), Duration::from_secs(3600));
        assert!(backoff(i, m, 1, 0.0) >= Duration::from_secs(54));
        assert!(backoff(i, m, 1, 0.99) <= Duration::from_secs(66));
    }

    #[test]
    fn window_times_fall_inside_the_window() {
        let s = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let e = s + Duration::from_secs(50);
        assert_eq!(time_in_window(s, e, 0.0), s);
        assert_eq!(time_in_window(s, e, 0.5), s + Duration::from_secs(25));
        assert_eq!(time_in_window(e, s, 0.5), e);
        assert!(random_unit() < 1.0);
    }
}
