//! The retry budget: a cap on retries relative to first attempts, so an upstream outage does
//! not multiply the traffic sent to it.
//!
//! Envoy/Finagle style. Over a sliding window, a retry is allowed while
//! `retries < max(min_per_window, floor(ratio * requests))`, where `requests` are the first
//! attempts recorded in the window and `retries` the retries granted in it. Denied retries are
//! counted (`exhausted`) for metrics.
//!
//! Defaults ([`RetryBudget::default`]): `ratio` 0.2 (Envoy's `budget_percent` of 20%), a floor of
//! 3 retries per window (Envoy's `min_retry_concurrency`), and a 10 s window (Finagle's
//! `RetryBudget` TTL). The window is [`BUCKETS`] buckets of `window / BUCKETS` (1 s by default);
//! it slides one bucket at a time, so it spans between 9/10 and all of `window`.
//!
//! Thread-safe: one mutex around ten small counters. No I/O.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Default share of first attempts that may be retried.
pub const DEFAULT_RATIO: f64 = 0.2;
/// Default retries always allowed per window, however few requests there were.
pub const DEFAULT_MIN_PER_WINDOW: u64 = 3;
/// Default window length.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);
/// How many buckets the window is cut into.
pub const BUCKETS: usize = 10;

/// The time source of a [`RetryBudget`]; injectable so tests move time without sleeping.
pub type BudgetClock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// The budget's counters, as seen now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BudgetSnapshot {
    /// First attempts in the window.
    pub requests: u64,
    /// Retries granted in the window.
    pub retries: u64,
    /// `max(min_per_window, floor(ratio * requests))`.
    pub allowed_retries: u64,
    /// Retries denied since start.
    pub exhausted: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which bucket of time (since `State::base`) these counts belong to.
    epoch: u64,
    requests: u64,
    retries: u64,
}

#[derive(Debug)]
struct State {
    base: Instant,
    buckets: [Bucket; BUCKETS],
    exhausted: u64,
}

/// A retry budget over a sliding window. See the module documentation.
pub struct RetryBudget {
    ratio: f64,
    min_per_window: u64,
    window: Duration,
    /// `window / BUCKETS` in nanoseconds, at least 1.
    bucket_nanos: u128,
    clock: BudgetClock,
    state: Mutex<State>,
}

impl std::fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ratio", &self.ratio)
            .field("min_per_window", &self.min_per_window)
            .field("window", &self.window)
            .field("now", &self.snapshot())
            .finish()
    }
}

impl Default for RetryBudget {
    /// Ratio 0.2, at least 3 retries per window, a 10 s window.
    fn default() -> Self {
        RetryBudget::new(DEFAULT_RATIO, DEFAULT_MIN_PER_WINDOW, DEFAULT_WINDOW)
    }
}

impl RetryBudget {
    /// A budget on the system clock. A negative or NaN `ratio` counts as 0 (only the floor
    /// applies); an infinite one allows every retry.
    pub fn new(ratio: f64, min_per_window: u64, window: Duration) -> Self {
        RetryBudget::with_clock(ratio, min_per_window, window, Arc::new(Instant::now))
    }

    /// A budget on an injected clock (tests).
    pub fn with_clock(
        ratio: f64,
        min_per_window: u64,
        window: Duration,
        clock: BudgetClock,
    ) -> Self {
        let ratio = if ratio.is_nan() { 0.0 } else { ratio.max(0.0) };
        let bucket_nanos = (window.as_nanos() / BUCKETS as u128).max(1);
        let base = clock();
        RetryBudget {
            ratio,
            min_per_window,
            window,
            bucket_nanos,
            clock,
            state: Mutex::new(State {
                base,
                buckets: [Bucket::default(); BUCKETS],
                exhausted: 0,
            }),
        }
    }

    pub fn ratio(&self) -> f64 {
        self.ratio
    }

    pub fn min_per_window(&self) -> u64 {
        self.min_per_window
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// Records a first attempt.
    pub fn record_request(&self) {
        self.with_state(|st, epoch| {
            let b = current(st, epoch);
            b.requests = b.requests.saturating_add(1);
        });
    }

    /// Whether a retry may be sent now; if so, it is counted against the budget.
    pub fn try_acquire_retry(&self) -> bool {
        self.with_state(|st, epoch| {
            let (requests, retries) = totals(st, epoch);
            if retries < self.allowed(requests) {
                let b = current(st, epoch);
                b.retries = b.retries.saturating_add(1);
                true
            } else {
                st.exhausted = st.exhausted.saturating_add(1);
                false
            }
        })
    }

    /// The counters of the current window.
    pub fn snapshot(&self) -> BudgetSnapshot {
        self.with_state(|st, epoch| {
            let (requests, retries) = totals(st, epoch);
            BudgetSnapshot {
                requests,
                retries,
                allowed_retries: self.allowed(requests),
                exhausted: st.exhausted,
            }
        })
    }

    /// `max(min_per_window, floor(ratio * requests))`; the epsilon keeps `0.29 * 100` at 29.
    fn allowed(&self, requests: u64) -> u64 {
        let by_ratio = (self.ratio * requests as f64 + 1e-9).floor();
        // `as` saturates: an infinite ratio allows u64::MAX.
        self.min_per_window.max(by_ratio as u64)
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut State, u64) -> T) -> T {
        let now = (self.clock)();
        // Plain counters: a panic elsewhere cannot leave them inconsistent.
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        // A clock before `base` (it never goes back in production) reads as bucket 0.
        let elapsed = now.saturating_duration_since(st.base).as_nanos();
        let epoch = u64::try_from(elapsed / self.bucket_nanos).unwrap_or(u64::MAX);
        f(&mut st, epoch)
    }
}

/// The bucket of `epoch`, reset if it last held an older epoch.
fn current(st: &mut State, epoch: u64) -> &mut Bucket {
    let slot = &mut st.buckets[(epoch % BUCKETS as u64) as usize];
    if slot.epoch != epoch {
        *slot = Bucket {
            epoch,
            requests: 0,
            retries: 0,
        };
    }
    slot
}

/// (requests, retries) over the buckets still inside the window ending at `epoch`.
fn totals(st: &State, epoch: u64) -> (u64, u64) {
    st.buckets
        .iter()
        .filter(|b| b.epoch <= epoch && epoch - b.epoch < BUCKETS as u64)
        .fold((0u64, 0u64), |(rq, rt), b| {
            (rq.saturating_add(b.requests), rt.saturating_add(b.retries))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock tests move by hand.
    #[derive(Clone)]
    struct ManualClock {
        base: Instant,
        millis: Arc<Mutex<u64>>,
    }

    impl ManualClock {
        fn new() -> Self {
            ManualClock {
                base: Instant::now(),
                millis: Arc::new(Mutex::new(0)),
            }
        }

        fn advance(&self, ms: u64) {
            *self.millis.lock().unwrap() += ms;
        }

        fn clock(&self) -> BudgetClock {
            let me = self.clone();
            Arc::new(move || me.base + Duration::from_millis(*me.millis.lock().unwrap()))
        }
    }

    fn grant_all(b: &RetryBudget) -> u64 {
        let mut n = 0;
        while b.try_acquire_retry() {
            n += 1;
            assert!(n < 1_000_000, "budget never ran out");
        }
        n
    }

    #[test]
    fn ratio_caps_retries() {
        let b = RetryBudget::default();
        for _ in 0..100 {
            b.record_request();
        }
        assert_eq!(grant_all(&b), 20);
        let s = b.snapshot();
        assert_eq!(
            s,
            BudgetSnapshot {
                requests: 100,
                retries: 20,
                allowed_retries: 20,
                exhausted: 1,
            }
        );
        assert!(!b.try_acquire_retry());
        assert_eq!(b.snapshot().exhausted, 2);
        // More first attempts earn more retries: 105 * 0.2 = 21.
        for _ in 0..5 {
            b.record_request();
        }
        assert_eq!(grant_all(&b), 1);
    }

    #[test]
    fn floor_applies_with_few_requests() {
        let b = RetryBudget::default();
        assert_eq!(b.snapshot().allowed_retries, 3);
        assert_eq!(grant_all(&b), 3);
        for _ in 0..10 {
            b.record_request();
        }
        // 10 * 0.2 = 2 < 3: still the floor, already used.
        assert_eq!(b.snapshot().allowed_retries, 3);
        assert!(!b.try_acquire_retry());

        let none = RetryBudget::new(0.0, 0, DEFAULT_WINDOW);
        none.record_request();
        assert!(!none.try_acquire_retry());
        let bad = RetryBudget::new(f64::NAN, 1, DEFAULT_WINDOW);
        bad.record_request();
        assert_eq!(grant_all(&bad), 1);
    }

    #[test]
    fn ratio_rounding_is_exact_on_integers() {
        let b = RetryBudget::new(0.29, 0, DEFAULT_WINDOW);
        for _ in 0..100 {
            b.record_request();
        }
        assert_eq!(b.snapshot().allowed_retries, 29);
    }

    #[test]
    fn window_slides_and_old_buckets_expire() {
        let clock = ManualClock::new();
        let b = RetryBudget::with_clock(0.2, 3, Duration::from_secs(10), clock.clock());
        for _ in 0..50 {
            b.record_request();
        }
        assert_eq!(grant_all(&b), 10);

        // Five seconds on: the first bucket still counts.
        clock.advance(5_000);
        for _ in 0..50 {
            b.record_request();
        }
        assert_eq!(b.snapshot().requests, 100);
        assert_eq!(grant_all(&b), 10);
        assert_eq!(b.snapshot().retries, 20);

        // At 10 s the bucket of t=0 has left the window; the one of t=5 s remains.
        clock.advance(5_000);
        let s = b.snapshot();
        assert_eq!((s.requests, s.retries, s.allowed_retries), (50, 10, 10));
        assert!(!b.try_acquire_retry());

        // At 15 s everything has expired: only the floor is left.
        clock.advance(5_000);
        let s = b.snapshot();
        assert_eq!((s.requests, s.retries, s.allowed_retries), (0, 0, 3));
        assert_eq!(s.exhausted, 3);
        assert_eq!(grant_all(&b), 3);

        // A long idle gap (many windows) wipes everything, whatever slot it lands in.
        clock.advance(3_600_000 + 300);
        assert_eq!(b.snapshot().retries, 0);
    }

    #[test]
    fn shared_across_threads() {
        let b = Arc::new(RetryBudget::default());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    for _ in 0..250 {
                        b.record_request();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let granted: u64 = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..100).filter(|_| b.try_acquire_retry()).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap() as u64)
            .sum();
        assert_eq!(granted, 200);
        assert_eq!(b.snapshot().exhausted, 200);
        assert!(format!("{b:?}").contains("RetryBudget"));
    }
}
