//! The Redis limiter: GCRA in Lua, shared by every process on the same Redis, and what happens
//! when Redis cannot answer.
//!
//! This module owns the Redis key layout of the limits, the scripts (`scripts/admit.lua`,
//! `scripts/settle.lua`, `scripts/heartbeat.lua`), the circuit breaker, the heartbeats that
//! count live processes, and the failure policy ([`FailPolicy`]).
//!
//! Keys (`P` is the prefix, `llmux:rl` by default), hash-tagged by scope so that every key of a
//! scope lives in one Redis Cluster slot: `P:{scope}:rpm` and `P:{scope}:tpm` (TATs, in µs of
//! Redis's clock, expiring once they are in the past), `P:{scope}:par` (parallel-request leases,
//! a sorted set scored by expiry), `P:{scope}:resv:<request id>` (the tokens a request
//! reserved: consumed by the settle, which makes a retried settle a no-op). Live processes beat
//! into `P:{hb}:live`.
//!
//! One admission is one `EVALSHA` (reloaded by `redis::Script` after `NOSCRIPT`, so a
//! `SCRIPT FLUSH` or a restarted Redis costs one extra round trip, not a failed request) that
//! checks and charges every limit of every scope, all or nothing. On Redis Cluster the scopes
//! of one request may live in different slots: each scope is admitted by its own script call,
//! concurrently, and when one refuses, the scopes already charged are given back (undone).
//!
//! When Redis fails or misses its deadline ([`crate::redis::RedisConfig::command_timeout`]),
//! the circuit breaker opens: for a back-off that grows from [`BREAKER_MIN`] to
//! [`BREAKER_MAX`], calls skip Redis and are decided by the policy at once, without paying the
//! deadline again. Then one call probes Redis (the others keep to the policy until it answers);
//! the heartbeat, every [`RedisLimiterOptions::heartbeat_interval`], probes as well, so the
//! limiter recovers by itself when Redis returns, with no restart. Policies:
//! - `open`: admit, charging nothing;
//! - `closed`: refuse with `rate_limited` and a `Retry-After` of the breaker's remaining time;
//! - `local`: each process enforces its share of every limit, `1/N` where `N` is the number of
//!   live processes that beat into Redis while it was up.
//!
//! Transitions are logged (a warning when the breaker opens, once per outage; an info line when
//! it closes) and counted in [`LimiterStats`].

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use ::redis::Script;
use futures_util::future::{join_all, BoxFuture};

use super::gcra::LocalLimiter;
use super::{
    Admitted, Charge, Demand, Denial, Limited, LimiterStats, Placement, RateInfo, RateLimiter,
    ScopeLimits,
};
use crate::error::{Error, ErrorKind, Result};
use crate::redis::{RedisConfig, RedisPool};

/// The shortest time the breaker stays open.
pub const BREAKER_MIN: Duration = Duration::from_millis(500);
/// The longest time the breaker stays open before probing again.
pub const BREAKER_MAX: Duration = Duration::from_secs(5);
/// How long a settle keeps retrying while Redis is unavailable.
const SETTLE_PATIENCE: Duration = Duration::from_secs(30);

/// What to do when Redis cannot decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailPolicy {
    Open,
    Closed,
    Local,
}

impl FailPolicy {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "open" => Ok(FailPolicy::Open),
            "closed" => Ok(FailPolicy::Closed),
            "local" => Ok(FailPolicy::Local),
            other => Err(Error::invalid_config(format!(
                "rate_limit.on_redis_failure: '{other}' is not one of open, closed, local"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FailPolicy::Open => "open",
            FailPolicy::Closed => "closed",
            FailPolicy::Local => "local",
        }
    }
}

/// Settings of a [`RedisLimiter`].
#[derive(Debug, Clone)]
pub struct RedisLimiterOptions {
    pub prefix: String,
    pub policy: FailPolicy,
    /// How long a parallel-request lease lasts when its request never settles (a crashed
    /// process); longer than the longest call.
    pub lease: Duration,
    pub heartbeat_interval: Duration,
    /// A process that has not beaten for this long no longer counts as live.
    pub heartbeat_window: Duration,
}

impl Default for RedisLimiterOptions {
    fn default() -> Self {
        RedisLimiterOptions {
            prefix: "llmux:rl".into(),
            policy: FailPolicy::Local,
            lease: Duration::from_secs(660),
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_window: Duration::from_secs(5),
        }
    }
}

struct Scripts {
    admit: Script,
    settle: Script,
    heartbeat: Script,
}

/// What the breaker lets a call do.
enum Gate {
    Try,
    /// This call is the one probe of a half-open breaker.
    Probe,
    /// Redis is being skipped for this long.
    Skip(Duration),
}

#[derive(Debug)]
struct BreakerState {
    open_until: Option<Instant>,
    backoff: Duration,
}

#[derive(Debug)]
struct Breaker {
    state: Mutex<BreakerState>,
    probing: AtomicBool,
    trips: AtomicU64,
}

impl Breaker {
    fn new() -> Self {
        Breaker {
            state: Mutex::new(BreakerState {
                open_until: None,
                backoff: BREAKER_MIN,
            }),
            probing: AtomicBool::new(false),
            trips: AtomicU64::new(0),
        }
    }

    fn gate(&self) -> Gate {
        let s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match s.open_until {
            None => Gate::Try,
            Some(until) => {
                let now = Instant::now();
                if now < until {
                    Gate::Skip(until - now)
                } else if self.probing.swap(true, Ordering::AcqRel) {
                    Gate::Skip(s.backoff)
                } else {
                    Gate::Probe
                }
            }
        }
    }

    fn is_open(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .open_until
            .is_some()
    }

    fn success(&self, probe: bool, label: &str) {
        if probe {
            self.probing.store(false, Ordering::Release);
        }
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if s.open_until.take().is_some() {
            tracing::info!(target_redis = %label, "rate limiter: Redis answers again; limits are shared again");
        }
        s.backoff = BREAKER_MIN;
    }

    fn failure(&self, probe: bool, err: &Error, policy: FailPolicy, label: &str) {
        if probe {
            self.probing.store(false, Ordering::Release);
        }
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let was_open = s.open_until.is_some();
        s.open_until = Some(Instant::now() + s.backoff);
        s.backoff = (s.backoff * 2).min(BREAKER_MAX);
        if !was_open {
            self.trips.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                target_redis = %label,
                error = %err,
                policy = policy.as_str(),
                "rate limiter: Redis unavailable; deciding by the failure policy until it answers"
            );
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    admitted: AtomicU64,
    denied: AtomicU64,
    redis_errors: AtomicU64,
    fallback_admitted: AtomicU64,
    fallback_denied: AtomicU64,
    settles_dropped: AtomicU64,
}

/// GCRA limits in Redis, shared by every process on it.
pub struct RedisLimiter {
    config: RedisConfig,
    pool: RwLock<Option<RedisPool>>,
    connecting: AtomicBool,
    opts: RedisLimiterOptions,
    scripts: Scripts,
    /// The `local` policy's limiter (shares of the limits).
    local: LocalLimiter,
    breaker: Breaker,
    instance: String,
    live: AtomicU64,
    counters: Counters,
    label: String,
}

impl fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("target", &self.label)
            .field("policy", &self.opts.policy)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Turns a scope name into a safe hash tag (no braces inside).
fn tag(scope: &str) -> String {
    scope.replace(['{', '}'], "_")
}

impl RedisLimiter {
    /// Connects to Redis and starts the heartbeat. A Redis that cannot be reached now is not
    /// an error: the limiter starts with its breaker open, decides by the policy, and keeps
    /// trying to connect.
    pub async fn start(config: RedisConfig, opts: RedisLimiterOptions) -> Arc<Self> {
        let me = Arc::new(Self::new(config, opts, None));
        me.beat().await;
        Self::spawn_heartbeat(&me);
        me
    }

    /// A limiter on an existing pool (the connection is shared with other users of `pool`).
    pub async fn with_pool(pool: RedisPool, opts: RedisLimiterOptions) -> Arc<Self> {
        let me = Arc::new(Self::new(pool.config().clone(), opts, Some(pool)));
        me.beat().await;
        Self::spawn_heartbeat(&me);
        me
    }

    fn new(config: RedisConfig, opts: RedisLimiterOptions, pool: Option<RedisPool>) -> Self {
        let label = format!("{:?}", config.target);
        RedisLimiter {
            config,
            pool: RwLock::new(pool),
            connecting: AtomicBool::new(false),
            opts,
            scripts: Scripts {
                admit: Script::new(include_str!("scripts/admit.lua")),
                settle: Script::new(include_str!("scripts/settle.lua")),
                heartbeat: Script::new(include_str!("scripts/heartbeat.lua")),
            },
            local: LocalLimiter::new(),
            breaker: Breaker::new(),
            instance: format!("{}-{:016x}", std::process::id(), rand::random::<u64>()),
            live: AtomicU64::new(1),
            counters: Counters::default(),
            label,
        }
    }

    pub fn policy(&self) -> FailPolicy {
        self.opts.policy
    }

    fn spawn_heartbeat(me: &Arc<Self>) {
        let weak = Arc::downgrade(me);
        let every = me.opts.heartbeat_interval;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(me) = weak.upgrade() else { break };
                me.beat().await;
            }
        });
    }

    /// The pool, connecting first when there is none yet (one connect at a time).
    async fn pool(&self) -> Result<RedisPool> {
        if let Some(p) = self
            .pool
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            return Ok(p);
        }
        if self.connecting.swap(true, Ordering::AcqRel) {
            return Err(Error::new(
                ErrorKind::Connection,
                format!("redis {}: connecting", self.label),
            ));
        }
        let out = RedisPool::connect(&self.config).await;
        self.connecting.store(false, Ordering::Release);
        let pool = out?;
        *self.pool.write().unwrap_or_else(PoisonError::into_inner) = Some(pool.clone());
        Ok(pool)
    }

    /// One heartbeat: says this process is alive, learns how many are, and probes Redis for
    /// the breaker.
    pub async fn beat(&self) {
        let out = async {
            let pool = self.pool().await?;
            let window = self.opts.heartbeat_window.as_millis().max(1).to_string();
            let key = format!("{}:{{hb}}:live", self.opts.prefix);
            pool.eval::<u64>(
                &self.scripts.heartbeat,
                &[key],
                &[self.instance.clone(), window],
            )
            .await
        }
        .await;
        match out {
            Ok(n) => {
                self.live.store(n.max(1), Ordering::Relaxed);
                self.breaker.success(false, &self.label);
            }
            Err(e) => {
                self.counters.redis_errors.fetch_add(1, Ordering::Relaxed);
                self.breaker
                    .failure(false, &e, self.opts.policy, &self.label);
            }
        }
    }

    fn keys(&self, scope: &str, request_id: &str) -> [String; 4] {
        let p = &self.opts.prefix;
        let t = tag(scope);
        [
            format!("{p}:{{{t}}}:rpm"),
            format!("{p}:{{{t}}}:tpm"),
            format!("{p}:{{{t}}}:par"),
            format!("{p}:{{{t}}}:resv:{request_id}"),
        ]
    }

    fn marker_ttl_ms(&self) -> u128 {
        self.opts.lease.as_millis() + 60_000
    }

    /// One admit script over `scopes` (all in one slot, or a standalone server).
    async fn admit_script(
        &self,
        pool: &RedisPool,
        request_id: &str,
        scopes: &[&ScopeLimits],
        tokens: u64,
    ) -> Result<std::result::Result<(Vec<Charge>, RateInfo), Denial>> {
        let mut keys = Vec::with_capacity(scopes.len() * 4);
        let mut args = vec![
            scopes.len().to_string(),
            request_id.to_owned(),
            self.opts.lease.as_millis().max(1).to_string(),
            self.marker_ttl_ms().to_string(),
        ];
        let mut charges = Vec::with_capacity(scopes.len());
        for s in scopes {
            keys.extend(self.keys(&s.scope, request_id));
            let cost = s.token_cost(tokens);
            let (rt, rtau) = s
                .rpm
                .map_or((0.0, 0.0), |r| (r.interval_us(), r.tolerance_us()));
            let (tt, ttau) = s
                .tpm
                .map_or((0.0, 0.0), |r| (r.interval_us(), r.tolerance_us()));
            args.extend([
                num(rt),
                num(rtau),
                num(tt),
                num(ttau),
                cost.to_string(),
                s.max_parallel.unwrap_or(0).to_string(),
            ]);
            charges.push(Charge::of(s, cost));
        }
        let out: Vec<i64> = pool.eval(&self.scripts.admit, &keys, &args).await?;
        if out.first() == Some(&1) {
            let mut info = RateInfo::default();
            let get = |i: usize| out.get(i).copied().unwrap_or(-1);
            if get(1) >= 0 {
                let limit = scopes.iter().filter_map(|s| s.rpm).map(|r| r.limit).min();
                info.limit_requests = limit;
                info.remaining_requests = Some(get(1) as u64);
                info.reset_requests = Some(Duration::from_micros(get(2).max(0) as u64));
            }
            if get(3) >= 0 {
                let limit = scopes.iter().filter_map(|s| s.tpm).map(|r| r.limit).min();
                info.limit_tokens = limit;
                info.remaining_tokens = Some(get(3) as u64);
                info.reset_tokens = Some(Duration::from_micros(get(4).max(0) as u64));
            }
            return Ok(Ok((charges, info)));
        }
        let (idx, what, wait) = match out.as_slice() {
            [0, idx, what, wait, ..] => (*idx, *what, *wait),
            _ => {
                return Err(Error::new(
                    ErrorKind::Internal,
                    format!("redis {}: unexpected admit reply {out:?}", self.label),
                ))
            }
        };
        let scope = usize::try_from(idx - 1)
            .ok()
            .and_then(|i| scopes.get(i))
            .ok_or_else(|| Error::new(ErrorKind::Internal, "admit script: bad scope index"))?;
        let limited = match what {
            1 => Limited::Requests,
            2 => Limited::Tokens,
            _ => Limited::Parallel,
        };
        let wait = (wait >= 0).then_some(wait as f64);
        Ok(Err(Denial::new(scope, limited, wait)))
    }

    /// One settle script over `charges` (one slot, or a standalone server). Returns how many
    /// scopes were settled by this call (0 when a previous call already did).
    async fn settle_script(
        &self,
        pool: &RedisPool,
        request_id: &str,
        charges: &[&Charge],
        used: u64,
        undo: bool,
    ) -> Result<u64> {
        let mut keys = Vec::with_capacity(charges.len() * 4);
        let mut args = vec![
            charges.len().to_string(),
            request_id.to_owned(),
            if undo { "1" } else { "0" }.to_owned(),
        ];
        for c in charges {
            keys.extend(self.keys(&c.scope, request_id));
            args.extend([
                num(c.rpm_interval_us.unwrap_or(0.0)),
                num(c.tpm_interval_us.unwrap_or(0.0)),
                if undo { 0 } else { used }.to_string(),
            ]);
        }
        pool.eval(&self.scripts.settle, &keys, &args).await
    }

    /// Admits in Redis: one script, or on Cluster one per scope with the charged ones undone
    /// when another refuses.
    async fn redis_admit(
        &self,
        pool: &RedisPool,
        demand: &Demand,
    ) -> Result<std::result::Result<Admitted, Denial>> {
        let scopes: Vec<&ScopeLimits> = demand.scopes.iter().filter(|s| !s.is_empty()).collect();
        let admitted = |(charges, info)| Admitted {
            charges,
            placement: Placement::Primary,
            info,
        };
        if !pool.is_cluster() || scopes.len() <= 1 {
            return Ok(self
                .admit_script(pool, &demand.request_id, &scopes, demand.tokens)
                .await?
                .map(admitted));
        }
        let outs = join_all(scopes.iter().map(|s| {
            self.admit_script(
                pool,
                &demand.request_id,
                std::slice::from_ref(s),
                demand.tokens,
            )
        }))
        .await;
        let mut charges = Vec::new();
        let mut info = RateInfo::default();
        let mut refusal: Option<Result<Denial>> = None;
        for out in outs {
            match out {
                Ok(Ok((c, i))) => {
                    charges.extend(c);
                    merge_info(&mut info, &i);
                }
                Ok(Err(d)) => {
                    if refusal.is_none() {
                        refusal = Some(Ok(d));
                    }
                }
                Err(e) => refusal = Some(Err(e)),
            }
        }
        match refusal {
            None => Ok(Ok(admitted((charges, info)))),
            Some(r) => {
                // Give back what was charged, scope by scope (each in its own slot).
                join_all(charges.iter().map(|c| async move {
                    self.settle_script(pool, &demand.request_id, &[c], 0, true)
                        .await
                }))
                .await;
                r.map(Err)
            }
        }
    }

    /// Decides without Redis, by the policy.
    fn fallback(
        &self,
        demand: &Demand,
        wait: Duration,
    ) -> Result<std::result::Result<Admitted, Denial>> {
        match self.opts.policy {
            FailPolicy::Open => {
                self.counters
                    .fallback_admitted
                    .fetch_add(1, Ordering::Relaxed);
                Ok(Ok(Admitted {
                    charges: Vec::new(),
                    placement: Placement::Nowhere,
                    info: RateInfo::default(),
                }))
            }
            FailPolicy::Closed => {
                self.counters
                    .fallback_denied
                    .fetch_add(1, Ordering::Relaxed);
                let wait = wait.max(Duration::from_millis(100));
                Err(Error::new(
                    ErrorKind::RateLimited,
                    format!(
                        "Rate limiter unavailable (Redis {} does not answer) and the policy is \
                         `closed`: try again in {:.1} s",
                        self.label,
                        wait.as_secs_f64()
                    ),
                )
                .with_retry_after(Some(wait))
                .with_upstream_code(Some("rate_limiter_unavailable".into())))
            }
            FailPolicy::Local => {
                let n = self.live.load(Ordering::Relaxed).max(1);
                let shared = Demand {
                    request_id: demand.request_id.clone(),
                    scopes: demand.scopes.iter().map(|s| s.share(n)).collect(),
                    tokens: demand.tokens,
                };
                let out = self.local.admit(&shared);
                let c = if out.is_ok() {
                    &self.counters.fallback_admitted
                } else {
                    &self.counters.fallback_denied
                };
                c.fetch_add(1, Ordering::Relaxed);
                Ok(out.map(|(charges, info)| Admitted {
                    charges,
                    placement: Placement::Fallback,
                    info,
                }))
            }
        }
    }

    async fn admit_inner(&self, demand: &Demand) -> Result<std::result::Result<Admitted, Denial>> {
        if let Some(d) = demand.scopes.iter().find_map(zero_limit) {
            self.counters.denied.fetch_add(1, Ordering::Relaxed);
            return Ok(Err(d));
        }
        let probe = match self.breaker.gate() {
            Gate::Skip(wait) => return self.fallback(demand, wait),
            Gate::Try => false,
            Gate::Probe => true,
        };
        let out = match self.pool().await {
            Ok(pool) => self.redis_admit(&pool, demand).await,
            Err(e) => Err(e),
        };
        match out {
            Ok(decision) => {
                self.breaker.success(probe, &self.label);
                let c = if decision.is_ok() {
                    &self.counters.admitted
                } else {
                    &self.counters.denied
                };
                c.fetch_add(1, Ordering::Relaxed);
                Ok(decision)
            }
            Err(e) => {
                self.counters.redis_errors.fetch_add(1, Ordering::Relaxed);
                self.breaker
                    .failure(probe, &e, self.opts.policy, &self.label);
                self.fallback(demand, BREAKER_MIN)
            }
        }
    }

    async fn settle_redis(
        &self,
        request_id: &str,
        charges: &[Charge],
        used: u64,
        undo: bool,
    ) -> Result<()> {
        let started = Instant::now();
        let mut wait = Duration::from_millis(100);
        loop {
            let out = async {
                let pool = self.pool().await?;
                if pool.is_cluster() && charges.len() > 1 {
                    let pool = &pool;
                    for r in join_all(charges.iter().map(|c| async move {
                        self.settle_script(pool, request_id, &[c], used, undo).await
                    }))
                    .await
                    {
                        r?;
                    }
                    Ok(())
                } else {
                    let all: Vec<&Charge> = charges.iter().collect();
                    self.settle_script(&pool, request_id, &all, used, undo)
                        .await
                        .map(|_| ())
                }
            }
            .await;
            match out {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.counters.redis_errors.fetch_add(1, Ordering::Relaxed);
                    if started.elapsed() + wait > SETTLE_PATIENCE {
                        self.counters
                            .settles_dropped
                            .fetch_add(1, Ordering::Relaxed);
                        return Err(e);
                    }
                }
            }
            // Safe to repeat: the reservation marker makes a settle count once.
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    }
}

fn merge_info(into: &mut RateInfo, from: &RateInfo) {
    if from.remaining_requests.is_some()
        && into
            .remaining_requests
            .is_none_or(|x| from.remaining_requests.is_some_and(|y| y < x))
    {
        into.limit_requests = from.limit_requests;
        into.remaining_requests = from.remaining_requests;
        into.reset_requests = from.reset_requests;
    }
    if from.remaining_tokens.is_some()
        && into
            .remaining_tokens
            .is_none_or(|x| from.remaining_tokens.is_some_and(|y| y < x))
    {
        into.limit_tokens = from.limit_tokens;
        into.remaining_tokens = from.remaining_tokens;
        into.reset_tokens = from.reset_tokens;
    }
}

/// A limit of zero refuses everything, without asking Redis.
fn zero_limit(s: &ScopeLimits) -> Option<Denial> {
    if s.rpm.is_some_and(|r| r.limit == 0) {
        return Some(Denial::new(s, Limited::Requests, None));
    }
    if s.tpm.is_some_and(|r| r.limit == 0) {
        return Some(Denial::new(s, Limited::Tokens, None));
    }
    if s.max_parallel == Some(0) {
        return Some(Denial::new(s, Limited::Parallel, None));
    }
    None
}

/// A number for a script argument: integers print without a fraction.
fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 9e15 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

impl RateLimiter for RedisLimiter {
    fn admit<'a>(
        &'a self,
        demand: &'a Demand,
    ) -> BoxFuture<'a, Result<std::result::Result<Admitted, Denial>>> {
        Box::pin(self.admit_inner(demand))
    }

    fn settle<'a>(
        &'a self,
        request_id: &'a str,
        admitted: &'a Admitted,
        used: u64,
        undo: bool,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            match admitted.placement {
                Placement::Nowhere => Ok(()),
                Placement::Fallback => {
                    self.local.settle(&admitted.charges, used, undo);
                    Ok(())
                }
                Placement::Primary => {
                    self.settle_redis(request_id, &admitted.charges, used, undo)
                        .await
                }
            }
        })
    }

    fn stats(&self) -> LimiterStats {
        let c = &self.counters;
        LimiterStats {
            admitted: c.admitted.load(Ordering::Relaxed),
            denied: c.denied.load(Ordering::Relaxed),
            redis_errors: c.redis_errors.load(Ordering::Relaxed),
            fallback_admitted: c.fallback_admitted.load(Ordering::Relaxed),
            fallback_denied: c.fallback_denied.load(Ordering::Relaxed),
            breaker_open: self.breaker.is_open(),
            breaker_trips: self.breaker.trips.load(Ordering::Relaxed),
            live_processes: self.live.load(Ordering::Relaxed),
            settles_dropped: c.settles_dropped.load(Ordering::Relaxed),
        }
    }
}
