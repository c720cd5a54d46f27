//! Routing statistics per deployment, behind the [`ClusterStats`] trait.
//!
//! This module owns the numbers the routing strategies read: requests in flight, latency and
//! time-to-first-token EWMAs, the per-minute request/token/failure counters that enforce a
//! deployment's `rpm`/`tpm`, lifetime success/failure counts, and cooldowns. The trait is
//! async-shaped and keyed by deployment id strings so that a shared (Redis) backend can
//! implement it later with the same signatures; [`LocalStats`] is the in-process backend.
//!
//! Semantics shared by every backend:
//! - The minute window is a fixed window per wall-clock minute (`unix seconds / 60`), like
//!   LiteLLM's `{id}:{model}:rpm:{HH-MM}` keys: counters reset when the minute changes, not 60 s
//!   after the first request.
//! - EWMAs use [`EWMA_ALPHA`] (0.2): `new = alpha * sample + (1 - alpha) * old`; the first sample
//!   initialises the average.
//! - Latency is learnt from successes and from timeouts (whose latency is the time waited, a
//!   natural penalty). Other failures do not move it: a deployment that fails fast (429, 401)
//!   must not look fast.
//! - A cooldown is a deadline: setting one extends, never shortens, an existing cooldown.
//!
//! No I/O happens here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;

use crate::error::{Error, ErrorKind, Result};

/// Weight of the newest sample in the latency and TTFT moving averages.
pub const EWMA_ALPHA: f64 = 0.2;

/// What the router knows about one deployment, as seen now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeploymentStats {
    /// Requests begun and not yet ended.
    pub in_flight: u64,
    /// EWMA ([`EWMA_ALPHA`]) of request latency, in milliseconds; `None` before the first sample.
    pub latency_ewma_ms: Option<f64>,
    /// EWMA ([`EWMA_ALPHA`]) of time to first token (streams), in milliseconds.
    pub ttft_ewma_ms: Option<f64>,
    /// Requests started in the current minute window.
    pub requests_this_minute: u64,
    /// Total tokens of calls finished (or settled) in the current minute window.
    pub tokens_this_minute: u64,
    /// Failed calls finished in the current minute window.
    pub fails_this_minute: u64,
    /// Successful calls since start.
    pub successes: u64,
    /// Failed calls since start.
    pub failures: u64,
    /// Time left in the deployment's cooldown; `None` when it is not cooling down.
    pub cooldown_remaining: Option<Duration>,
}

/// How one call to a deployment ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// From the start of the attempt to its end (last byte, or the error).
    pub latency: Duration,
    /// Time to first token, for streams that produced one.
    pub ttft: Option<Duration>,
    /// Total tokens (prompt + completion) known at the end; later usage goes to `add_tokens`.
    pub tokens: u64,
    /// `None` on success.
    pub error: Option<ErrorKind>,
}

/// Cluster-wide routing statistics, keyed by deployment id.
///
/// Every method is a future so that a networked backend fits the same trait.
pub trait ClusterStats: Send + Sync + std::fmt::Debug {
    /// The stats of `ids`, in the same order; an unknown id yields `DeploymentStats::default()`.
    fn snapshot<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<Vec<DeploymentStats>>>;

    /// A request to `id` starts: `in_flight += 1`, `requests_this_minute += 1`.
    fn begin<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>>;

    /// A request to `id` ended: `in_flight -= 1` (saturating), EWMAs, tokens, success or
    /// failure counters and `fails_this_minute`.
    fn end<'a>(&'a self, id: &'a str, outcome: &'a Outcome) -> BoxFuture<'a, Result<()>>;

    /// Tokens settled after the call ended (stream usage), counted in the current minute.
    fn add_tokens<'a>(&'a self, id: &'a str, tokens: u64) -> BoxFuture<'a, Result<()>>;

    /// Cools `id` down for `dur` from now; extends, never shortens, an existing cooldown.
    fn set_cooldown<'a>(&'a self, id: &'a str, dur: Duration) -> BoxFuture<'a, Result<()>>;

    /// Ends `id`'s cooldown now.
    fn clear_cooldown<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>>;
}

/// The time source of [`LocalStats`]: a monotonic instant (cooldowns) and the wall-clock unix
/// minute (`unix seconds / 60`, the minute window). Injectable so tests move time without
/// sleeping.
pub type StatsClock = Arc<dyn Fn() -> (Instant, u64) + Send + Sync>;

/// The real clock: `Instant::now()` and the current unix minute.
pub fn system_clock() -> StatsClock {
    Arc::new(|| {
        let minute = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() / 60)
            .unwrap_or(0);
        (Instant::now(), minute)
    })
}

#[derive(Debug, Clone, Default)]
struct Entry {
    in_flight: u64,
    latency_ewma_ms: Option<f64>,
    ttft_ewma_ms: Option<f64>,
    /// The unix minute the window counters belong to.
    minute: u64,
    requests: u64,
    tokens: u64,
    fails: u64,
    successes: u64,
    failures: u64,
    cooldown_until: Option<Instant>,
}

impl Entry {
    /// Resets the window counters if `minute` is a new window.
    fn roll(&mut self, minute: u64) {
        if self.minute != minute {
            self.minute = minute;
            self.requests = 0;
            self.tokens = 0;
            self.fails = 0;
        }
    }

    fn view(&self, now: Instant, minute: u64) -> DeploymentStats {
        let current = self.minute == minute;
        DeploymentStats {
            in_flight: self.in_flight,
            latency_ewma_ms: self.latency_ewma_ms,
            ttft_ewma_ms: self.ttft_ewma_ms,
            requests_this_minute: if current { self.requests } else { 0 },
            tokens_this_minute: if current { self.tokens } else { 0 },
            fails_this_minute: if current { self.fails } else { 0 },
            successes: self.successes,
            failures: self.failures,
            cooldown_remaining: self
                .cooldown_until
                .and_then(|until| until.checked_duration_since(now))
                .filter(|left| !left.is_zero()),
        }
    }
}

/// `alpha * sample + (1 - alpha) * old`, or `sample` when there is no average yet.
fn ewma(old: Option<f64>, sample: f64) -> f64 {
    match old {
        Some(old) => EWMA_ALPHA * sample + (1.0 - EWMA_ALPHA) * old,
        None => sample,
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The in-process [`ClusterStats`] backend: one mutex over a map of deployment entries.
///
/// Window counters are reset lazily, when an entry is touched in a new minute (and read as zero
/// by `snapshot` when stale). Expired cooldowns read as `None`.
pub struct LocalStats {
    entries: Mutex<HashMap<String, Entry>>,
    clock: StatsClock,
}

impl std::fmt::Debug for LocalStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.lock().len();
        f.debug_struct("LocalStats")
            .field("deployments", &n)
            .finish_non_exhaustive()
    }
}

impl Default for LocalStats {
    fn default() -> Self {
        LocalStats::new()
    }
}

impl LocalStats {
    /// Stats on the system clock.
    pub fn new() -> Self {
        LocalStats::with_clock(system_clock())
    }

    /// Stats on an injected clock (tests).
    pub fn with_clock(clock: StatsClock) -> Self {
        LocalStats {
            entries: Mutex::new(HashMap::new()),
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // The map holds plain counters: a panic elsewhere cannot leave it inconsistent.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on `id`'s entry (created if new), rolled to the current minute.
    fn with_entry<T>(&self, id: &str, f: impl FnOnce(&mut Entry, Instant) -> T) -> T {
        let (now, minute) = (self.clock)();
        let mut map = self.lock();
        if let Some(entry) = map.get_mut(id) {
            entry.roll(minute);
            return f(entry, now);
        }
        let entry = map.entry(id.to_owned()).or_insert_with(|| Entry {
            minute,
            ..Entry::default()
        });
        f(entry, now)
    }

    fn snapshot_now(&self, ids: &[String]) -> Vec<DeploymentStats> {
        let (now, minute) = (self.clock)();
        let map = self.lock();
        ids.iter()
            .map(|id| map.get(id).map(|e| e.view(now, minute)).unwrap_or_default())
            .collect()
    }

    fn begin_now(&self, id: &str) {
        self.with_entry(id, |e, _| {
            e.in_flight = e.in_flight.saturating_add(1);
            e.requests = e.requests.saturating_add(1);
        });
    }

    fn end_now(&self, id: &str, outcome: &Outcome) {
        self.with_entry(id, |e, _| {
            e.in_flight = e.in_flight.saturating_sub(1);
            e.tokens = e.tokens.saturating_add(outcome.tokens);
            let learn_latency = match outcome.error {
                None => {
                    e.successes = e.successes.saturating_add(1);
                    true
                }
                Some(kind) => {
                    e.failures = e.failures.saturating_add(1);
                    e.fails = e.fails.saturating_add(1);
                    kind == ErrorKind::Timeout
                }
            };
            if learn_latency {
                e.latency_ewma_ms = Some(ewma(e.latency_ewma_ms, millis(outcome.latency)));
            }
            if let Some(ttft) = outcome.ttft {
                e.ttft_ewma_ms = Some(ewma(e.ttft_ewma_ms, millis(ttft)));
            }
        });
    }

    fn add_tokens_now(&self, id: &str, tokens: u64) {
        self.with_entry(id, |e, _| e.tokens = e.tokens.saturating_add(tokens));
    }

    fn set_cooldown_now(&self, id: &str, dur: Duration) -> Result<()> {
        self.with_entry(id, |e, now| {
            let until = now.checked_add(dur).ok_or_else(|| {
                Error::invalid_config(format!("cooldown of {dur:?} for '{id}' is too long"))
            })?;
            e.cooldown_until = Some(match e.cooldown_until {
                Some(old) if old > until => old,
                _ => until,
            });
            Ok(())
        })
    }

    fn clear_cooldown_now(&self, id: &str) {
        if let Some(e) = self.lock().get_mut(id) {
            e.cooldown_until = None;
        }
    }
}

impl ClusterStats for LocalStats {
    fn snapshot<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<Vec<DeploymentStats>>> {
        Box::pin(async move { Ok(self.snapshot_now(ids)) })
    }

    fn begin<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.begin_now(id);
            Ok(())
        })
    }

    fn end<'a>(&'a self, id: &'a str, outcome: &'a Outcome) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.end_now(id, outcome);
            Ok(())
        })
    }

    fn add_tokens<'a>(&'a self, id: &'a str, tokens: u64) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.add_tokens_now(id, tokens);
            Ok(())
        })
    }

    fn set_cooldown<'a>(&'a self, id: &'a str, dur: Duration) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.set_cooldown_now(id, dur) })
    }

    fn clear_cooldown<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.clear_cooldown_now(id);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock tests move by hand: seconds since a fixed instant; the unix minute follows.
    #[derive(Clone)]
    struct ManualClock {
        base: Instant,
        secs: Arc<Mutex<f64>>,
    }

    impl ManualClock {
        /// Starts at the first second of unix minute 1000.
        fn new() -> Self {
            ManualClock {
                base: Instant::now(),
                secs: Arc::new(Mutex::new(0.0)),
            }
        }

        fn advance(&self, secs: f64) {
            *self.secs.lock().unwrap() += secs;
        }

        fn clock(&self) -> StatsClock {
            let me = self.clone();
            Arc::new(move || {
                let s = *me.secs.lock().unwrap();
                let minute = 1_000 + (s / 60.0).floor() as u64;
                (me.base + Duration::from_secs_f64(s), minute)
            })
        }
    }

    fn ok(ms: u64, tokens: u64) -> Outcome {
        Outcome {
            latency: Duration::from_millis(ms),
            ttft: None,
            tokens,
            error: None,
        }
    }

    fn failed(ms: u64, kind: ErrorKind) -> Outcome {
        Outcome {
            latency: Duration::from_millis(ms),
            ttft: None,
            tokens: 0,
            error: Some(kind),
        }
    }

    async fn one(stats: &LocalStats, id: &str) -> DeploymentStats {
        let mut v = stats.snapshot(&[id.to_owned()]).await.unwrap();
        v.pop().unwrap()
    }

    #[tokio::test]
    async fn begin_end_balance() {
        let s = LocalStats::new();
        for _ in 0..3 {
            s.begin("a").await.unwrap();
        }
        assert_eq!(one(&s, "a").await.in_flight, 3);
        assert_eq!(one(&s, "a").await.requests_this_minute, 3);
        s.end("a", &ok(10, 5)).await.unwrap();
        s.end("a", &failed(10, ErrorKind::RateLimited))
            .await
            .unwrap();
        let st = one(&s, "a").await;
        assert_eq!(st.in_flight, 1);
        assert_eq!(st.successes, 1);
        assert_eq!(st.failures, 1);
        assert_eq!(st.fails_this_minute, 1);
        assert_eq!(st.tokens_this_minute, 5);
        s.end("a", &ok(10, 0)).await.unwrap();
        // An unmatched end saturates at zero.
        s.end("a", &ok(10, 0)).await.unwrap();
        let st = one(&s, "a").await;
        assert_eq!(st.in_flight, 0);
        assert_eq!(st.successes, 3);
        // Ends do not count as starts.
        assert_eq!(st.requests_this_minute, 3);
    }

    #[tokio::test]
    async fn ewma_math() {
        let s = LocalStats::new();
        s.end("a", &ok(100, 0)).await.unwrap();
        assert_eq!(one(&s, "a").await.latency_ewma_ms, Some(100.0));
        s.end("a", &ok(200, 0)).await.unwrap();
        let l = one(&s, "a").await.latency_ewma_ms.unwrap();
        assert!((l - 120.0).abs() < 1e-9, "{l}");
        s.end("a", &ok(20, 0)).await.unwrap();
        let l = one(&s, "a").await.latency_ewma_ms.unwrap();
        assert!((l - (0.2 * 20.0 + 0.8 * 120.0)).abs() < 1e-9, "{l}");

        // Fast non-timeout failures do not make the deployment look fast...
        s.end("a", &failed(1, ErrorKind::RateLimited))
            .await
            .unwrap();
        assert!((one(&s, "a").await.latency_ewma_ms.unwrap() - 100.0).abs() < 1e-9);
        // ...timeouts count with the time waited.
        s.end("a", &failed(600, ErrorKind::Timeout)).await.unwrap();
        let l = one(&s, "a").await.latency_ewma_ms.unwrap();
        assert!((l - (0.2 * 600.0 + 0.8 * 100.0)).abs() < 1e-9, "{l}");

        // TTFT has its own average.
        assert_eq!(one(&s, "a").await.ttft_ewma_ms, None);
        let mut o = ok(1000, 0);
        o.ttft = Some(Duration::from_millis(50));
        s.end("a", &o).await.unwrap();
        o.ttft = Some(Duration::from_millis(100));
        s.end("a", &o).await.unwrap();
        let t = one(&s, "a").await.ttft_ewma_ms.unwrap();
        assert!((t - 60.0).abs() < 1e-9, "{t}");
    }

    #[tokio::test]
    async fn minute_rollover_resets_window_counters() {
        let clock = ManualClock::new();
        let s = LocalStats::with_clock(clock.clock());
        clock.advance(50.0);
        s.begin("a").await.unwrap();
        s.begin("a").await.unwrap();
        s.end("a", &failed(10, ErrorKind::Internal)).await.unwrap();
        s.add_tokens("a", 70).await.unwrap();
        let st = one(&s, "a").await;
        assert_eq!(
            (
                st.requests_this_minute,
                st.tokens_this_minute,
                st.fails_this_minute
            ),
            (2, 70, 1)
        );

        // Ten seconds later is a new wall-clock minute: a fixed window, not a sliding one.
        clock.advance(10.0);
        let st = one(&s, "a").await;
        assert_eq!(
            (
                st.requests_this_minute,
                st.tokens_this_minute,
                st.fails_this_minute
            ),
            (0, 0, 0)
        );
        // Lifetime counters and in-flight survive the rollover.
        assert_eq!((st.in_flight, st.failures), (1, 1));

        // The call begun last minute ends in this one: its tokens count here.
        s.end("a", &ok(10, 30)).await.unwrap();
        s.begin("a").await.unwrap();
        let st = one(&s, "a").await;
        assert_eq!((st.requests_this_minute, st.tokens_this_minute), (1, 30));
        assert_eq!((st.in_flight, st.successes), (1, 1));
    }

    #[tokio::test]
    async fn cooldown_extends_never_shortens_and_expires() {
        let clock = ManualClock::new();
        let s = LocalStats::with_clock(clock.clock());
        assert_eq!(one(&s, "a").await.cooldown_remaining, None);
        s.set_cooldown("a", Duration::from_secs(10)).await.unwrap();
        assert_eq!(
            one(&s, "a").await.cooldown_remaining,
            Some(Duration::from_secs(10))
        );
        // Shorter: ignored.
        s.set_cooldown("a", Duration::from_secs(3)).await.unwrap();
        assert_eq!(
            one(&s, "a").await.cooldown_remaining,
            Some(Duration::from_secs(10))
        );
        clock.advance(4.0);
        assert_eq!(
            one(&s, "a").await.cooldown_remaining,
            Some(Duration::from_secs(6))
        );
        // Longer: extends.
        s.set_cooldown("a", Duration::from_secs(8)).await.unwrap();
        assert_eq!(
            one(&s, "a").await.cooldown_remaining,
            Some(Duration::from_secs(8))
        );
        clock.advance(8.0);
        assert_eq!(one(&s, "a").await.cooldown_remaining, None);

        s.set_cooldown("a", Duration::from_secs(5)).await.unwrap();
        s.clear_cooldown("a").await.unwrap();
        assert_eq!(one(&s, "a").await.cooldown_remaining, None);
        // Clearing an unknown id is fine.
        s.clear_cooldown("nobody").await.unwrap();
        // Overflowing deadlines are refused, not panicked on.
        let err = s.set_cooldown("a", Duration::MAX).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidConfig);
    }

    #[tokio::test]
    async fn snapshot_keeps_order_and_defaults_unknown() {
        let s = LocalStats::new();
        s.begin("b").await.unwrap();
        s.begin("b").await.unwrap();
        s.begin("c").await.unwrap();
        let ids: Vec<String> = ["c", "x", "b"].iter().map(|s| s.to_string()).collect();
        let v = s.snapshot(&ids).await.unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].in_flight, 1);
        assert_eq!(v[1], DeploymentStats::default());
        assert_eq!(v[2].in_flight, 2);
        assert!(s.snapshot(&[]).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn usable_as_trait_object() {
        let s: Arc<dyn ClusterStats> = Arc::new(LocalStats::new());
        s.begin("a").await.unwrap();
        assert_eq!(s.snapshot(&["a".to_owned()]).await.unwrap()[0].in_flight, 1);
        assert!(format!("{s:?}").contains("LocalStats"));
    }
}
