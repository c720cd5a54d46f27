//! Rate limits: requests per minute, tokens per minute and parallel requests, per scope (an API
//! key, a user, a team, a model, a deployment), exact across every process that shares Redis.
//!
//! This module owns the [`RateLimiter`] trait and its two implementations of one algorithm,
//! GCRA ([`gcra`]): [`LocalLimiter`] in this process and [`RedisLimiter`] in Redis (one Lua
//! script, one round trip per admission, Redis's clock; none while a busy scope is far from its
//! limits and admits from blocks fetched ahead, [`prefetch`]). It also owns the `rate_limit` config
//! block ([`RateLimitConfig`]), how a request maps onto scopes ([`KeyStrategy`], [`Caller`]),
//! the token reservation of a request ([`reservation`]), and the [`Ticket`] that settles an
//! admission exactly once.
//!
//! The life of a request: [`admit`] checks every limit of every scope of the request and
//! charges them all, or none (a denial is a [`ErrorKind::RateLimited`] error with the time to
//! wait). TPM is reserved at admission: a cheap prompt estimate plus the output cap (the larger
//! of `max_tokens` / `max_completion_tokens`, else [`DEFAULT_OUTPUT_RESERVE`]), capped at the
//! scope's burst so that a request is never refused for good. When the call ends the ticket is
//! settled with the real usage: the difference is refunded or charged as debt, and the
//! parallel-request slot is released. A ticket dropped unsettled (a cancelled call) releases its
//! slot and keeps its reservation.

pub mod distributed;
pub mod gcra;
mod prefetch;

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::{Map, Value};

use crate::error::{Error, ErrorKind, Result};
use crate::types::ChatRequest;
pub use distributed::{FailPolicy, RedisLimiter, RedisLimiterOptions};
pub use gcra::LocalLimiter;

/// Output tokens reserved for a request that declares no cap (then capped at the limit).
pub const DEFAULT_OUTPUT_RESERVE: u64 = 1024;
/// `used` for a settle that keeps the reservation as charged (a call abandoned before its
/// usage was known) and only gives back its parallel slot.
pub const KEEP_RESERVATION: u64 = u64::MAX;
/// The longest `prefetch_ms`: a block's window is a moment, not a share of the minute.
pub const MAX_PREFETCH_MS: u64 = 1000;
/// The wait suggested to a request refused for too many parallel requests.
pub const PARALLEL_RETRY_AFTER: Duration = Duration::from_secs(1);

/// A GCRA limit: `limit` units per `period`, at most `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub limit: u64,
    pub period: Duration,
    /// How many units may pass at once (the bucket's capacity); at least 1.
    pub burst: u64,
}

impl Rate {
    /// `limit` per minute with a burst of one minute's worth.
    pub fn per_minute(limit: u64) -> Self {
        Rate {
            limit,
            period: Duration::from_secs(60),
            burst: limit,
        }
    }

    pub fn with_burst(mut self, burst: u64) -> Self {
        self.burst = burst;
        self
    }

    /// The emission interval in µs (infinite for a limit of zero).
    pub fn interval_us(&self) -> f64 {
        if self.limit == 0 {
            return f64::INFINITY;
        }
        gcra::us(self.period) / self.limit as f64
    }

    /// The tolerance in µs: `burst` intervals.
    pub fn tolerance_us(&self) -> f64 {
        self.capacity() as f64 * self.interval_us()
    }

    /// How many units may pass at once.
    pub fn capacity(&self) -> u64 {
        self.burst.max(1)
    }

    /// This process's share when `n` processes split the limit (at least 1 unit).
    pub fn share(&self, n: u64) -> Rate {
        let n = n.max(1);
        if self.limit == 0 {
            return *self;
        }
        Rate {
            limit: (self.limit / n).max(1),
            period: self.period,
            burst: (self.capacity() / n).max(1),
        }
    }
}

/// The limits of one scope.
#[derive(Debug, Clone, PartialEq)]
pub struct ScopeLimits {
    /// Names the scope: `api_key:…`, `user:…`, `deployment:…`. Becomes a Redis hash tag.
    pub scope: String,
    pub rpm: Option<Rate>,
    pub tpm: Option<Rate>,
    pub max_parallel: Option<u64>,
}

impl ScopeLimits {
    pub fn new(scope: impl Into<String>) -> Self {
        ScopeLimits {
            scope: scope.into(),
            rpm: None,
            tpm: None,
            max_parallel: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rpm.is_none() && self.tpm.is_none() && self.max_parallel.is_none()
    }

    /// The tokens this scope reserves for a request that asks for `tokens`: capped at the
    /// burst, so that one request can always pass on an idle limit.
    pub fn token_cost(&self, tokens: u64) -> u64 {
        self.tpm.map_or(0, |r| tokens.min(r.capacity()))
    }

    /// The same limits at `1/n` (each of `n` processes enforcing its share).
    pub fn share(&self, n: u64) -> ScopeLimits {
        ScopeLimits {
            scope: self.scope.clone(),
            rpm: self.rpm.map(|r| r.share(n)),
            tpm: self.tpm.map(|r| r.share(n)),
            max_parallel: self.max_parallel.map(|m| (m / n.max(1)).max(1)),
        }
    }
}

/// What one request asks of the limiter.
#[derive(Debug, Clone)]
pub struct Demand {
    /// Unique per request: names its reservation and its parallel-request lease.
    pub request_id: String,
    pub scopes: Vec<ScopeLimits>,
    /// Tokens to reserve (prompt estimate + output cap).
    pub tokens: u64,
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    Requests,
    Tokens,
    Parallel,
}

impl Limited {
    fn describe(self) -> &'static str {
        match self {
            Limited::Requests => "requests per minute",
            Limited::Tokens => "tokens per minute",
            Limited::Parallel => "parallel requests",
        }
    }
}

/// A refusal: which scope and limit, and how long to wait (`None`: the request can never pass).
#[derive(Debug, Clone, PartialEq)]
pub struct Denial {
    pub scope: String,
    pub limited: Limited,
    pub limit: u64,
    pub retry_after: Option<Duration>,
}

impl Denial {
    pub(crate) fn new(limits: &ScopeLimits, limited: Limited, retry_after_us: Option<f64>) -> Self {
        let limit = match limited {
            Limited::Requests => limits.rpm.map_or(0, |r| r.limit),
            Limited::Tokens => limits.tpm.map_or(0, |r| r.limit),
            Limited::Parallel => limits.max_parallel.unwrap_or(0),
        };
        Denial {
            scope: limits.scope.clone(),
            limited,
            limit,
            retry_after: retry_after_us.map(|w| Duration::from_micros(w.max(0.0).ceil() as u64)),
        }
    }

    /// The caller's error: `rate_limited` with the time to wait.
    pub fn into_error(self) -> Error {
        let wait = match self.retry_after {
            Some(w) => format!("try again in {:.3} s", w.as_secs_f64()),
            None => "this request can never pass this limit".to_owned(),
        };
        let mut e = Error::new(
            ErrorKind::RateLimited,
            format!(
                "Rate limit exceeded for {}: {} {} allowed; {wait}",
                self.scope,
                self.limit,
                self.limited.describe()
            ),
        )
        .with_retry_after(self.retry_after)
        .with_upstream_code(Some("rate_limit_exceeded".into()));
        e.provider = Some("llmux".into());
        e
    }
}

/// What an admission charged in one scope: enough to settle it later.
#[derive(Debug, Clone, PartialEq)]
pub struct Charge {
    pub scope: String,
    /// Tokens reserved.
    pub tokens: u64,
    pub rpm_interval_us: Option<f64>,
    pub tpm_interval_us: Option<f64>,
    pub parallel: bool,
}

impl Charge {
    /// Whether settling changes anything: a token reservation or a parallel slot. A scope
    /// with only a requests limit is done at admission.
    pub fn needs_settle(&self) -> bool {
        self.tpm_interval_us.is_some() || self.parallel
    }

    pub(crate) fn of(limits: &ScopeLimits, tokens: u64) -> Self {
        Charge {
            scope: limits.scope.clone(),
            tokens,
            rpm_interval_us: limits.rpm.map(|r| r.interval_us()),
            tpm_interval_us: limits.tpm.map(|r| r.interval_us()),
            parallel: limits.max_parallel.is_some(),
        }
    }
}

/// The tightest limits seen by an admission, for `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateInfo {
    pub limit_requests: Option<u64>,
    pub remaining_requests: Option<u64>,
    pub reset_requests: Option<Duration>,
    pub limit_tokens: Option<u64>,
    pub remaining_tokens: Option<u64>,
    pub reset_tokens: Option<Duration>,
}

impl RateInfo {
    pub(crate) fn note_requests(&mut self, r: &Rate, remaining: u64, busy_us: f64) {
        if self.remaining_requests.is_none_or(|x| remaining < x) {
            self.limit_requests = Some(r.limit);
            self.remaining_requests = Some(remaining);
            self.reset_requests = Some(Duration::from_micros(busy_us.max(0.0) as u64));
        }
    }

    pub(crate) fn note_tokens(&mut self, r: &Rate, remaining: u64, busy_us: f64) {
        if self.remaining_tokens.is_none_or(|x| remaining < x) {
            self.limit_tokens = Some(r.limit);
            self.remaining_tokens = Some(remaining);
            self.reset_tokens = Some(Duration::from_micros(busy_us.max(0.0) as u64));
        }
    }
}

/// Where an admission was charged, so that it is settled in the same place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// In the limiter's own store (Redis for a Redis limiter).
    Primary,
    /// In the process-local fallback (Redis was unavailable, policy `local`).
    Fallback,
    /// Nothing was charged (Redis was unavailable, policy `open`).
    Nowhere,
    /// From a block this process fetched from Redis ahead of its demand (settled in the block).
    Prefetched,
}

/// A granted admission, before it is wrapped in a [`Ticket`].
#[derive(Debug)]
pub struct Admitted {
    pub charges: Vec<Charge>,
    pub placement: Placement,
    pub info: RateInfo,
    /// The blocks whose tokens a prefetched admission holds.
    pub(crate) blocks: Vec<prefetch::BlockUse>,
}

impl Admitted {
    pub(crate) fn new(charges: Vec<Charge>, placement: Placement, info: RateInfo) -> Self {
        Admitted {
            charges,
            placement,
            info,
            blocks: Vec::new(),
        }
    }
}

/// Counters for logs, tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimiterStats {
    pub admitted: u64,
    pub denied: u64,
    /// Redis calls that failed or ran out of time.
    pub redis_errors: u64,
    /// Admissions decided by the failure policy while Redis was unavailable.
    pub fallback_admitted: u64,
    pub fallback_denied: u64,
    /// Whether the circuit breaker is open (Redis is being skipped).
    pub breaker_open: bool,
    /// Times the breaker opened.
    pub breaker_trips: u64,
    /// Live processes sharing the limits, as last seen in Redis (1 for a local limiter).
    pub live_processes: u64,
    /// Settles that could not reach Redis after their retries (their reservation stays).
    pub settles_dropped: u64,
    /// Script calls made to Redis (admissions and settles share calls: compare with
    /// `admitted` to see how well they batch).
    pub script_calls: u64,
    /// Blocks of admissions fetched from Redis ahead of the demand, and the admissions made
    /// from them without a round trip (both counted in `admitted`).
    pub blocks: u64,
    pub prefetched: u64,
}

/// One algorithm, two stores: in this process or in Redis.
pub trait RateLimiter: Send + Sync + fmt::Debug {
    /// Checks and charges every limit of `demand`, all or nothing. A refusal is `Err(Denial)`
    /// inside `Ok`; `Err` outside is a failure to decide (policy `closed` while Redis is down).
    fn admit<'a>(
        &'a self,
        demand: &'a Demand,
    ) -> BoxFuture<'a, Result<std::result::Result<Admitted, Denial>>>;

    /// Settles an admission: `used` tokens replace the reservation ([`KEEP_RESERVATION`] keeps
    /// it as charged); `undo` also gives back the request itself. Idempotent: a settle applied
    /// twice (a retried call) counts once.
    fn settle<'a>(
        &'a self,
        request_id: &'a str,
        admitted: &'a Admitted,
        used: u64,
        undo: bool,
    ) -> BoxFuture<'a, Result<()>>;

    /// Queues a settle to be applied in the background, without a task or a reply to wait
    /// for, when this limiter can (it then retries on its own); false when the caller must run
    /// [`RateLimiter::settle`] itself.
    fn settle_detached(&self, _request_id: &str, _admitted: &Admitted, _used: u64) -> bool {
        false
    }

    fn stats(&self) -> LimiterStats;
}

impl RateLimiter for LocalLimiter {
    fn admit<'a>(
        &'a self,
        demand: &'a Demand,
    ) -> BoxFuture<'a, Result<std::result::Result<Admitted, Denial>>> {
        let out = LocalLimiter::admit(self, demand)
            .map(|(charges, info)| Admitted::new(charges, Placement::Primary, info));
        self.count(out.is_ok());
        Box::pin(std::future::ready(Ok(out)))
    }

    fn settle<'a>(
        &'a self,
        _request_id: &'a str,
        admitted: &'a Admitted,
        used: u64,
        undo: bool,
    ) -> BoxFuture<'a, Result<()>> {
        LocalLimiter::settle(self, &admitted.charges, used, undo);
        Box::pin(std::future::ready(Ok(())))
    }

    fn stats(&self) -> LimiterStats {
        self.counters()
    }
}

/// Admits `demand`, or explains why not. A demand without any limit passes at once.
pub async fn admit(limiter: &Arc<dyn RateLimiter>, demand: Demand) -> Result<Ticket> {
    admit_or_deny(limiter, demand)
        .await?
        .map_err(Denial::into_error)
}

/// Admits `demand`, or gives the [`Denial`] itself (for callers that report which limit
/// refused, such as the gateway's `x-ratelimit-*` headers).
pub async fn admit_or_deny(
    limiter: &Arc<dyn RateLimiter>,
    demand: Demand,
) -> Result<std::result::Result<Ticket, Denial>> {
    if demand.scopes.iter().all(ScopeLimits::is_empty) {
        return Ok(Ok(Ticket::none()));
    }
    Ok(limiter.admit(&demand).await?.map(|admitted| Ticket {
        inner: Some(TicketInner {
            limiter: limiter.clone(),
            runtime: tokio::runtime::Handle::try_current().ok(),
            request_id: demand.request_id,
            admitted,
        }),
        done: AtomicBool::new(false),
    }))
}

struct TicketInner {
    limiter: Arc<dyn RateLimiter>,
    /// Where to run a settle that waits for I/O (the ticket may be dropped off the runtime).
    runtime: Option<tokio::runtime::Handle>,
    request_id: String,
    admitted: Admitted,
}

/// An admission to settle once the call's real usage is known. Settling twice is harmless;
/// dropping it unsettled releases the parallel slot and keeps the reservation.
pub struct Ticket {
    inner: Option<TicketInner>,
    done: AtomicBool,
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("request_id", &self.inner.as_ref().map(|i| &i.request_id))
            .field(
                "placement",
                &self.inner.as_ref().map(|i| i.admitted.placement),
            )
            .finish()
    }
}

impl Ticket {
    /// A ticket for a call with no limits.
    pub fn none() -> Self {
        Ticket {
            inner: None,
            done: AtomicBool::new(true),
        }
    }

    /// The tightest limits the admission saw (for response headers).
    pub fn info(&self) -> RateInfo {
        self.inner
            .as_ref()
            .map(|i| i.admitted.info)
            .unwrap_or_default()
    }

    pub fn placement(&self) -> Option<Placement> {
        self.inner.as_ref().map(|i| i.admitted.placement)
    }

    /// Settles with the tokens the call really used, now (tests, and callers that can wait).
    pub async fn settle_now(self, used: u64) -> Result<()> {
        self.settle_inner(used, false).await
    }

    /// Gives the whole admission back (a request admitted but never sent: refused elsewhere).
    pub async fn undo(self) -> Result<()> {
        self.settle_inner(0, true).await
    }

    /// Gives the whole admission back in the background.
    pub fn undo_later(self) {
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if let Err(e) = self.undo().await {
                        tracing::warn!(error = %e, "rate limiter: undo failed");
                    }
                });
            }
            // Outside a runtime: keep the charge (conservative), release the slot.
            Err(_) => Self::spawn_settle(self, KEEP_RESERVATION),
        }
    }

    async fn settle_inner(mut self, used: u64, undo: bool) -> Result<()> {
        self.done.store(true, Ordering::Release);
        match self.inner.take() {
            Some(i) => {
                i.limiter
                    .settle(&i.request_id, &i.admitted, used, undo)
                    .await
            }
            None => Ok(()),
        }
    }

    /// Settles with the tokens the call really used, in the background: the caller does not
    /// wait for Redis. Outside a tokio runtime it settles in place when that needs no I/O.
    pub fn settle(self, used: u64) {
        Self::spawn_settle(self, used)
    }

    fn spawn_settle(mut ticket: Ticket, used: u64) {
        ticket.done.store(true, Ordering::Release);
        let Some(i) = ticket.inner.take() else {
            return;
        };
        if i.limiter.settle_detached(&i.request_id, &i.admitted, used) {
            return;
        }
        let rt = i
            .runtime
            .clone()
            .or_else(|| tokio::runtime::Handle::try_current().ok());
        let Some(rt) = rt else {
            // No runtime to wait on: only a settle that needs no I/O can be done here.
            if i.admitted.placement == Placement::Primary {
                tracing::warn!(
                    "rate limiter: a settle was dropped outside a runtime; its lease will expire"
                );
            } else {
                let _ = futures_util::FutureExt::now_or_never(i.limiter.settle(
                    &i.request_id,
                    &i.admitted,
                    used,
                    false,
                ));
            }
            return;
        };
        let mut fut = Box::pin(async move {
            if let Err(e) = i
                .limiter
                .settle(&i.request_id, &i.admitted, used, false)
                .await
            {
                tracing::warn!(error = %e, "rate limiter: settle failed");
            }
        });
        // A local settle finishes at once; only one that waits for Redis is spawned. The first
        // poll runs inside the runtime's context (timers, spawns).
        let _entered = rt.enter();
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        if fut.as_mut().poll(&mut cx).is_ready() {
            return;
        }
        rt.spawn(fut);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.done.load(Ordering::Acquire) || self.inner.is_none() {
            return;
        }
        let ticket = Ticket {
            inner: self.inner.take(),
            done: AtomicBool::new(false),
        };
        Self::spawn_settle(ticket, KEEP_RESERVATION);
    }
}

/// How requests map onto a scope of the `rate_limit` block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStrategy {
    ApiKey,
    User,
    Model,
    ApiKeyModel,
    Team,
}

impl KeyStrategy {
    pub const NAMES: [&'static str; 5] = ["api_key", "user", "model", "api_key_model", "team"];

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "api_key" => KeyStrategy::ApiKey,
            "user" => KeyStrategy::User,
            "model" => KeyStrategy::Model,
            "api_key_model" => KeyStrategy::ApiKeyModel,
            "team" => KeyStrategy::Team,
            other => {
                return Err(Error::invalid_config(format!(
                    "rate_limit.key_strategy: '{other}' is not one of {}",
                    Self::NAMES.join(", ")
                )))
            }
        })
    }
}

/// Who is calling, as far as limits care. The API key is only ever held hashed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// A hash of the caller's API key (never the key itself).
    pub key_hash: Option<String>,
    pub user: Option<String>,
    pub team: Option<String>,
}

impl Caller {
    /// A short, stable, non-reversible name for an API key (SHA-256, first 16 bytes in hex).
    /// Each thread remembers the names of the last few keys it hashed (a process calls with
    /// few keys, and hashing one costs more than the rest of an admission), found by a
    /// fingerprint of the key: two SipHash digests under keys drawn at random for this
    /// process, so the key itself is not kept.
    pub fn hash_key(key: &str) -> String {
        use std::hash::BuildHasher;
        const REMEMBERED: usize = 8;
        /// (fingerprint, name) pairs, and the next one to replace when full.
        type Names = (Vec<([u64; 2], String)>, usize);
        thread_local! {
            static NAMES: std::cell::RefCell<Names> = const { std::cell::RefCell::new((Vec::new(), 0)) };
        }
        static SEEDS: std::sync::OnceLock<[std::hash::RandomState; 2]> = std::sync::OnceLock::new();
        let seeds =
            SEEDS.get_or_init(|| [std::hash::RandomState::new(), std::hash::RandomState::new()]);
        let print = [seeds[0].hash_one(key), seeds[1].hash_one(key)];
        NAMES.with_borrow_mut(|(names, next)| {
            if let Some((_, name)) = names.iter().find(|(p, _)| *p == print) {
                return name.clone();
            }
            let name = Self::digest_key(key);
            let entry = (print, name.clone());
            if names.len() < REMEMBERED {
                names.push(entry);
            } else {
                names[*next] = entry;
                *next = (*next + 1) % REMEMBERED;
            }
            name
        })
    }

    fn digest_key(key: &str) -> String {
        use sha2::{Digest, Sha256};
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let digest = Sha256::digest(key.as_bytes());
        let mut out = String::with_capacity(32);
        for b in &digest[..16] {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
        out
    }
}

/// The `rate_limit` config block (YAML, or a dict from Python).
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// Share the limits through Redis (`redis` config); false keeps them in this process.
    pub distributed: bool,
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub max_parallel_requests: Option<u64>,
    /// Requests that may come at once (default: `requests_per_minute`).
    pub request_burst: Option<u64>,
    /// Tokens that may be reserved at once (default: `tokens_per_minute`).
    pub token_burst: Option<u64>,
    pub key_strategy: KeyStrategy,
    pub on_redis_failure: FailPolicy,
    /// How images and audio count toward token limits (0: only as requests).
    pub media: MediaWeights,
    /// How long a block of admissions fetched ahead from Redis may be used (`prefetch_ms`;
    /// zero decides every admission in Redis). See [`prefetch`].
    pub prefetch: Duration,
}

/// How images and seconds of audio count toward token limits (`rate_limit.tokens_per_image`,
/// `rate_limit.tokens_per_audio_second`): each image, each second of audio, counts as that
/// many tokens against every tpm that applies to the call (the `rate_limit` scope, a virtual
/// key's, a deployment's). Zero (the default): media calls count only as requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MediaWeights {
    pub tokens_per_image: u64,
    pub tokens_per_audio_second: u64,
}

impl MediaWeights {
    /// The tokens `m` counts for; a started second counts whole.
    pub fn tokens(&self, m: crate::types::Media) -> u64 {
        let seconds = if m.seconds.is_finite() && m.seconds > 0.0 {
            // Saturating: a huge duration counts as the most there is.
            m.seconds.ceil() as u64
        } else {
            0
        };
        m.images
            .saturating_mul(self.tokens_per_image)
            .saturating_add(seconds.saturating_mul(self.tokens_per_audio_second))
    }
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            enabled: true,
            distributed: false,
            requests_per_minute: None,
            tokens_per_minute: None,
            max_parallel_requests: None,
            request_burst: None,
            token_burst: None,
            key_strategy: KeyStrategy::ApiKey,
            on_redis_failure: FailPolicy::Local,
            media: MediaWeights::default(),
            prefetch: distributed::DEFAULT_PREFETCH,
        }
    }
}

impl RateLimitConfig {
    pub const KEYS: [&'static str; 12] = [
        "enabled",
        "distributed",
        "requests_per_minute",
        "tokens_per_minute",
        "max_parallel_requests",
        "request_burst",
        "token_burst",
        "key_strategy",
        "on_redis_failure",
        "tokens_per_image",
        "tokens_per_audio_second",
        "prefetch_ms",
    ];

    /// Reads the block; an unknown key or a value of the wrong type is an `invalid_config`
    /// error that names it. `rpm` / `tpm` are accepted as LiteLLM's short names.
    pub fn from_json(v: &Value) -> Result<Self> {
        let obj = v
            .as_object()
            .ok_or_else(|| Error::invalid_config("rate_limit must be a mapping"))?;
        let mut c = RateLimitConfig::default();
        for (k, val) in obj {
            if val.is_null() {
                continue;
            }
            match k.as_str() {
                "enabled" => c.enabled = flag(k, val)?,
                "distributed" => c.distributed = flag(k, val)?,
                "requests_per_minute" | "rpm" => c.requests_per_minute = Some(count(k, val)?),
                "tokens_per_minute" | "tpm" => c.tokens_per_minute = Some(count(k, val)?),
                "max_parallel_requests" => c.max_parallel_requests = Some(count(k, val)?),
                "request_burst" => c.request_burst = Some(positive(k, val)?),
                "token_burst" => c.token_burst = Some(positive(k, val)?),
                "key_strategy" => c.key_strategy = KeyStrategy::parse(text(k, val)?)?,
                "on_redis_failure" => c.on_redis_failure = FailPolicy::parse(text(k, val)?)?,
                "tokens_per_image" => c.media.tokens_per_image = count(k, val)?,
                "tokens_per_audio_second" => c.media.tokens_per_audio_second = count(k, val)?,
                "prefetch_ms" => {
                    let ms = count(k, val)?;
                    if ms > MAX_PREFETCH_MS {
                        return Err(Error::invalid_config(format!(
                            "rate_limit.prefetch_ms must be at most {MAX_PREFETCH_MS}, got {ms}"
                        )));
                    }
                    c.prefetch = Duration::from_millis(ms);
                }
                other => {
                    return Err(Error::invalid_config(format!(
                        "rate_limit.{other}: unknown key (known: {})",
                        Self::KEYS.join(", ")
                    )))
                }
            }
        }
        Ok(c)
    }

    /// Whether the block limits anything.
    pub fn is_active(&self) -> bool {
        self.enabled
            && (self.requests_per_minute.is_some()
                || self.tokens_per_minute.is_some()
                || self.max_parallel_requests.is_some())
    }

    /// The scope of a call by `caller` to `model`, with this block's limits.
    pub fn scope_for(&self, caller: &Caller, model: &str) -> ScopeLimits {
        fn or_anon(v: &Option<String>) -> &str {
            v.as_deref().unwrap_or("-")
        }
        let name = match self.key_strategy {
            KeyStrategy::ApiKey => format!("api_key:{}", or_anon(&caller.key_hash)),
            KeyStrategy::User => format!("user:{}", or_anon(&caller.user)),
            KeyStrategy::Model => format!("model:{model}"),
            KeyStrategy::ApiKeyModel => {
                format!("api_key_model:{}:{model}", or_anon(&caller.key_hash))
            }
            KeyStrategy::Team => format!("team:{}", or_anon(&caller.team)),
        };
        ScopeLimits {
            scope: name,
            rpm: self.requests_per_minute.map(|l| {
                let r = Rate::per_minute(l);
                self.request_burst.map_or(r, |b| r.with_burst(b))
            }),
            tpm: self.tokens_per_minute.map(|l| {
                let r = Rate::per_minute(l);
                self.token_burst.map_or(r, |b| r.with_burst(b))
            }),
            max_parallel: self.max_parallel_requests,
        }
    }
}

fn flag(k: &str, v: &Value) -> Result<bool> {
    v.as_bool()
        .ok_or_else(|| Error::invalid_config(format!("rate_limit.{k} must be true or false")))
}

fn count(k: &str, v: &Value) -> Result<u64> {
    v.as_u64().ok_or_else(|| {
        Error::invalid_config(format!(
            "rate_limit.{k} must be a whole number >= 0, got {v}"
        ))
    })
}

fn positive(k: &str, v: &Value) -> Result<u64> {
    match v.as_u64() {
        Some(n) if n > 0 => Ok(n),
        _ => Err(Error::invalid_config(format!(
            "rate_limit.{k} must be a whole number >= 1, got {v}"
        ))),
    }
}

fn text<'a>(k: &str, v: &'a Value) -> Result<&'a str> {
    v.as_str()
        .ok_or_else(|| Error::invalid_config(format!("rate_limit.{k} must be a string")))
}

/// The prompt tokens of a chat request, estimated cheaply (about 4 characters a token, plus
/// a few per message and a fixed amount per image); exact counts come from the usage.
pub fn estimate_prompt_tokens(messages: &[Value]) -> u64 {
    let mut chars: u64 = 0;
    let mut extra: u64 = 0;
    for m in messages {
        extra += 4;
        match m.get("content") {
            Some(Value::String(s)) => chars += s.len() as u64,
            Some(Value::Array(parts)) => {
                for p in parts {
                    if let Some(t) = p.get("text").and_then(Value::as_str) {
                        chars += t.len() as u64;
                    } else {
                        extra += 85;
                    }
                }
            }
            _ => {}
        }
        if let Some(calls) = m.get("tool_calls") {
            chars += calls.to_string().len() as u64;
        }
    }
    chars.div_ceil(4) + extra
}

/// Tokens a chat request reserves: the prompt estimate plus the output cap, the larger of
/// `max_tokens` and `max_completion_tokens`, or [`DEFAULT_OUTPUT_RESERVE`].
pub fn reservation(req: &ChatRequest) -> u64 {
    estimate_prompt_tokens(&req.messages) + req.output_cap().unwrap_or(DEFAULT_OUTPUT_RESERVE)
}

/// Tokens an embedding input reserves (about 4 characters a token).
pub fn embedding_reservation(input: &Value) -> u64 {
    fn chars(v: &Value) -> u64 {
        match v {
            Value::String(s) => s.len() as u64,
            Value::Array(items) => items.iter().map(chars).sum(),
            // A token id list: each number is a token (times 4 characters, divided below).
            Value::Number(_) => 4,
            _ => 0,
        }
    }
    chars(input).div_ceil(4).max(1)
}

/// Tokens a streamed call used when it ended without usage (the caller left early): the
/// prompt estimate plus what was streamed.
pub fn streamed_usage(prompt_estimate: u64, streamed_chars: u64) -> u64 {
    prompt_estimate + streamed_chars.div_ceil(4)
}

/// The limiter a `rate_limit` block asks for: in this process, or in Redis when `distributed`
/// (which then needs `redis`).
pub async fn build_limiter(
    cfg: &RateLimitConfig,
    redis: Option<&crate::redis::RedisConfig>,
) -> Result<Arc<dyn RateLimiter>> {
    if !cfg.distributed {
        return Ok(Arc::new(LocalLimiter::new()));
    }
    let Some(redis) = redis else {
        return Err(Error::invalid_config(
            "rate_limit.distributed is true but no redis is configured",
        ));
    };
    let opts = RedisLimiterOptions {
        policy: cfg.on_redis_failure,
        prefetch: cfg.prefetch,
        ..Default::default()
    };
    Ok(RedisLimiter::start(redis.clone(), opts).await)
}

/// A rate limit applied to every call of an SDK process or a gateway: one limiter, one rule.
#[derive(Debug, Clone)]
pub struct Admission {
    pub limiter: Arc<dyn RateLimiter>,
    pub config: RateLimitConfig,
}

impl Admission {
    /// Admits a chat request by `caller`.
    pub async fn admit_chat(
        &self,
        request_id: &str,
        caller: &Caller,
        req: &ChatRequest,
    ) -> Result<Ticket> {
        let scope = self.config.scope_for(caller, &req.model);
        admit(
            &self.limiter,
            Demand {
                request_id: request_id.to_owned(),
                scopes: vec![scope],
                tokens: reservation(req),
            },
        )
        .await
    }

    /// Admits an image or audio call: one request, reserving the tokens its estimate counts
    /// for (see [`MediaWeights`]).
    pub async fn admit_media(
        &self,
        request_id: &str,
        caller: &Caller,
        model: &str,
        estimate: crate::types::Media,
    ) -> Result<Ticket> {
        admit(
            &self.limiter,
            Demand {
                request_id: request_id.to_owned(),
                scopes: vec![self.config.scope_for(caller, model)],
                tokens: self.config.media.tokens(estimate),
            },
        )
        .await
    }

    /// Admits an embedding request by `caller`.
    pub async fn admit_embedding(
        &self,
        request_id: &str,
        caller: &Caller,
        model: &str,
        input: &Value,
    ) -> Result<Ticket> {
        let scope = self.config.scope_for(caller, model);
        admit(
            &self.limiter,
            Demand {
                request_id: request_id.to_owned(),
                scopes: vec![scope],
                tokens: embedding_reservation(input),
            },
        )
        .await
    }
}

/// The caller of an SDK call: its `user`, its API key (hashed) and its team from `metadata`.
pub fn caller_of(params: &Map<String, Value>, api_key: Option<&str>, team: Option<&str>) -> Caller {
    Caller {
        key_hash: api_key.map(Caller::hash_key),
        user: params
            .get("user")
            .and_then(Value::as_str)
            .map(str::to_owned),
        team: team.map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn demand(scopes: Vec<ScopeLimits>, tokens: u64) -> Demand {
        Demand {
            request_id: format!("r{}", rand::random::<u64>()),
            scopes,
            tokens,
        }
    }

    #[test]
    fn api_keys_are_named_by_the_first_half_of_their_sha256() {
        assert_eq!(Caller::hash_key("abc"), "ba7816bf8f01cfea414140de5dae2223");
        // Again from the thread's memory, and after it has forgotten the key.
        assert_eq!(Caller::hash_key("abc"), "ba7816bf8f01cfea414140de5dae2223");
        for i in 0..20 {
            assert_eq!(Caller::hash_key(&format!("k{i}")).len(), 32);
        }
        assert_eq!(Caller::hash_key("abc"), "ba7816bf8f01cfea414140de5dae2223");
        assert_ne!(Caller::hash_key("abd"), Caller::hash_key("abc"));
    }

    #[test]
    fn media_counts_as_configured_tokens() {
        use crate::types::Media;
        let c = RateLimitConfig::from_json(&json!({
            "tokens_per_minute": 10000, "tokens_per_image": 1000, "tokens_per_audio_second": 50
        }))
        .unwrap();
        let m = c.media;
        assert_eq!(
            m.tokens(Media {
                images: 3,
                seconds: 0.0
            }),
            3000
        );
        // A started second counts whole.
        assert_eq!(
            m.tokens(Media {
                images: 0,
                seconds: 2.1
            }),
            150
        );
        assert_eq!(
            m.tokens(Media {
                images: 1,
                seconds: f64::NAN
            }),
            1000
        );
        assert_eq!(
            m.tokens(Media {
                images: u64::MAX,
                seconds: 1e300
            }),
            u64::MAX
        );
        // Unset: media count only as requests.
        assert_eq!(
            MediaWeights::default().tokens(Media {
                images: 4,
                seconds: 9.0
            }),
            0
        );
        assert!(RateLimitConfig::from_json(&json!({"tokens_per_image": -1})).is_err());
    }

    #[test]
    fn config_parses_and_rejects_unknown_keys() {
        let c = RateLimitConfig::from_json(&json!({
            "enabled": true, "distributed": true, "requests_per_minute": 100,
            "tokens_per_minute": 100000, "max_parallel_requests": 20,
            "key_strategy": "api_key_model", "on_redis_failure": "closed"
        }))
        .unwrap();
        assert_eq!(c.requests_per_minute, Some(100));
        assert_eq!(c.key_strategy, KeyStrategy::ApiKeyModel);
        assert_eq!(c.on_redis_failure, FailPolicy::Closed);
        assert_eq!(c.prefetch, distributed::DEFAULT_PREFETCH);
        let off = RateLimitConfig::from_json(&json!({"prefetch_ms": 0})).unwrap();
        assert_eq!(off.prefetch, Duration::ZERO);
        for bad in [
            json!({"prefetch_ms": 1001}),
            json!({"prefetch_ms": -5}),
            json!({"requests_per_min": 1}),
            json!({"requests_per_minute": "ten"}),
            json!({"key_strategy": "ip"}),
            json!({"on_redis_failure": "maybe"}),
            json!({"request_burst": 0}),
            json!([1]),
        ] {
            let e = RateLimitConfig::from_json(&bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidConfig, "{bad}");
        }
    }

    #[test]
    fn scopes_follow_the_key_strategy_and_never_hold_the_key() {
        let mut c = RateLimitConfig {
            requests_per_minute: Some(5),
            ..Default::default()
        };
        let caller = caller_of(
            json!({"user": "u1"}).as_object().unwrap(),
            Some("sk-secret-123"),
            Some("t9"),
        );
        let s = c.scope_for(&caller, "gpt-4o");
        assert!(s.scope.starts_with("api_key:"));
        assert!(!s.scope.contains("sk-secret"));
        c.key_strategy = KeyStrategy::User;
        assert_eq!(c.scope_for(&caller, "m").scope, "user:u1");
        c.key_strategy = KeyStrategy::Team;
        assert_eq!(c.scope_for(&caller, "m").scope, "team:t9");
        c.key_strategy = KeyStrategy::Model;
        assert_eq!(c.scope_for(&Caller::default(), "m").scope, "model:m");
        c.key_strategy = KeyStrategy::User;
        assert_eq!(c.scope_for(&Caller::default(), "m").scope, "user:-");
    }

    #[test]
    fn reservation_takes_the_larger_cap() {
        let mut r = ChatRequest::new(
            "m",
            vec![json!({"role": "user", "content": "x".repeat(400)})],
        );
        assert_eq!(reservation(&r), 100 + 4 + DEFAULT_OUTPUT_RESERVE);
        r.params.insert("max_tokens".into(), json!(1));
        r.params
            .insert("max_completion_tokens".into(), json!(10_000));
        assert_eq!(reservation(&r), 104 + 10_000);
        // Capped at the scope's burst: a request is never refused for good.
        let s = ScopeLimits {
            tpm: Some(Rate::per_minute(60)),
            ..ScopeLimits::new("k")
        };
        assert_eq!(s.token_cost(reservation(&r)), 60);
    }

    #[tokio::test]
    async fn local_limiter_is_all_or_nothing() {
        let l: Arc<dyn RateLimiter> = Arc::new(LocalLimiter::new());
        let a = ScopeLimits {
            rpm: Some(Rate::per_minute(10)),
            ..ScopeLimits::new("a")
        };
        let b = ScopeLimits {
            rpm: Some(Rate::per_minute(2)),
            ..ScopeLimits::new("b")
        };
        let mut admitted = 0;
        for _ in 0..5 {
            if admit(&l, demand(vec![a.clone(), b.clone()], 0))
                .await
                .is_ok()
            {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 2, "b's limit");
        // a was charged only for the two admitted requests: 8 more pass on a alone.
        let mut alone = 0;
        for _ in 0..20 {
            if admit(&l, demand(vec![a.clone()], 0)).await.is_ok() {
                alone += 1;
            }
        }
        assert_eq!(alone, 8);
        let e = admit(&l, demand(vec![a.clone()], 0)).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::RateLimited);
        let wait = e.retry_after.unwrap();
        assert!(
            wait > Duration::from_secs(5) && wait <= Duration::from_secs(6),
            "{wait:?}"
        );
    }

    #[tokio::test]
    async fn an_abandoned_call_keeps_only_what_it_reserved() {
        let l: Arc<dyn RateLimiter> = Arc::new(LocalLimiter::new());
        let s = ScopeLimits {
            tpm: Some(Rate::per_minute(1000)),
            ..ScopeLimits::new("k")
        };
        // Asks for 5000, reserves the burst (1000), and is dropped unsettled.
        drop(admit(&l, demand(vec![s.clone()], 5000)).await.unwrap());
        let e = admit(&l, demand(vec![s.clone()], 100)).await.unwrap_err();
        // The 1000 reserved stay charged (100 tokens flow back in 6 s), not a debt of 5000.
        let wait = e.retry_after.unwrap();
        assert!(wait <= Duration::from_secs(6), "{wait:?}");
    }

    #[tokio::test]
    async fn tpm_refunds_readmit_and_parallel_slots_release() {
        let l: Arc<dyn RateLimiter> = Arc::new(LocalLimiter::new());
        let s = ScopeLimits {
            tpm: Some(Rate::per_minute(1000)),
            max_parallel: Some(3),
            ..ScopeLimits::new("k")
        };
        let t1 = admit(&l, demand(vec![s.clone()], 600)).await.unwrap();
        assert!(admit(&l, demand(vec![s.clone()], 600)).await.is_err());
        // Used 100 of the 600 reserved: the refund re-admits.
        t1.settle_now(100).await.unwrap();
        let t2 = admit(&l, demand(vec![s.clone()], 600)).await.unwrap();
        let t3 = admit(&l, demand(vec![s.clone()], 10)).await.unwrap();
        let t4 = admit(&l, demand(vec![s.clone()], 10)).await.unwrap();
        let e = admit(&l, demand(vec![s.clone()], 10)).await.unwrap_err();
        assert!(e.message.contains("parallel"), "{e}");
        drop(t4); // an abandoned call releases its slot
        let t5 = admit(&l, demand(vec![s.clone()], 10)).await.unwrap();
        for t in [t2, t3, t5] {
            t.settle_now(0).await.unwrap();
        }
    }
}
