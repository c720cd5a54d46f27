//! Retry arithmetic: exponential backoff with full jitter, upstream retry hints, and the
//! decision whether another attempt fits before the deadline. Pure functions; the pipeline
//! owns the loop.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;

/// Backoff parameters. Attempt `n` (0-based retry number) waits a uniform random time in
/// `[0, min(cap, base * 2^n)]` (AWS "full jitter"), and never less than the upstream's hint.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(8),
        }
    }
}

impl Backoff {
    /// The ceiling of the jitter window for retry number `n`.
    pub fn ceiling(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.min(30)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The delay before retry `n`, given a uniform sample `u` in [0, 1) and an optional hint.
    pub fn delay(&self, n: u32, u: f64, hint: Option<Duration>) -> Duration {
        let jittered = self.ceiling(n).mul_f64(u.clamp(0.0, 1.0));
        match hint {
            Some(h) => jittered.max(h),
            None => jittered,
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Retry(Duration),
    GiveUp,
}

/// Decides the next step: retry only retryable errors, only while retries remain, and only if
/// the wait (at least the hint) ends before the deadline; a hint past the deadline gives up at
/// once rather than sleeping into a timeout.
pub fn decide(
    retryable: bool,
    retries_done: u32,
    max_retries: u32,
    delay: Duration,
    remaining: Duration,
) -> Decision {
    if !retryable || retries_done >= max_retries || delay >= remaining {
        Decision::GiveUp
    } else {
        Decision::Retry(delay)
    }
}

/// Reads `retry-after-ms` (milliseconds, OpenAI/Azure) or `retry-after` (seconds or an HTTP
/// date). Negative, unparsable or past values give `None`.
pub fn retry_hint(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers.get("retry-after-ms").and_then(|v| v.to_str().ok()) {
        if let Ok(ms) = ms.trim().parse::<f64>() {
            if let Ok(d) = Duration::try_from_secs_f64(ms / 1000.0) {
                return Some(d);
            }
        }
    }
    let v = headers.get("retry-after")?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).ok();
    }
    let when = httpdate::parse_http_date(v).ok()?;
    when.duration_since(SystemTime::now()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn ceiling_doubles_then_caps() {
        let b = Backoff::default();
        assert_eq!(b.ceiling(0), Duration::from_millis(500));
        assert_eq!(b.ceiling(1), Duration::from_secs(1));
        assert_eq!(b.ceiling(3), Duration::from_secs(4));
        assert_eq!(b.ceiling(10), Duration::from_secs(8));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(8));
    }

    #[test]
    fn delay_is_full_jitter_never_below_hint() {
        let b = Backoff::default();
        assert_eq!(b.delay(2, 0.0, None), Duration::ZERO);
        assert_eq!(b.delay(2, 0.5, None), Duration::from_secs(1));
        assert_eq!(
            b.delay(0, 0.9, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(
            b.delay(5, 0.9, Some(Duration::from_millis(10))),
            Duration::from_secs_f64(7.2)
        );
    }

    #[test]
    fn decisions() {
        let s = Duration::from_secs(1);
        assert_eq!(decide(true, 0, 2, s, 10 * s), Decision::Retry(s));
        assert_eq!(decide(false, 0, 2, s, 10 * s), Decision::GiveUp);
        assert_eq!(decide(true, 2, 2, s, 10 * s), Decision::GiveUp);
        // A hint longer than the time left surfaces the error at once.
        assert_eq!(decide(true, 0, 5, 30 * s, 10 * s), Decision::GiveUp);
    }

    #[test]
    fn hints() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_hint(&h), None);
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_hint(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", HeaderValue::from_static("1500"));
        assert_eq!(retry_hint(&h), Some(Duration::from_millis(1500)));
        let mut h = HeaderMap::new();
        let future = SystemTime::now() + Duration::from_secs(30);
        h.insert(
            "retry-after",
            HeaderValue::from_str(&httpdate::fmt_http_date(future)).unwrap(),
        );
        let d = retry_hint(&h).unwrap();
        assert!(
            d > Duration::from_secs(27) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        h.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_hint(&h), None);
        h.insert("retry-after", HeaderValue::from_static("-3"));
        assert_eq!(retry_hint(&h), None);
    }
}
