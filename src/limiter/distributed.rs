//! The Redis limiter: GCRA in Lua, shared by every process on the same Redis, and what happens
//! when Redis cannot answer.
//!
//! This module owns the Redis key layout of the limits, the scripts (`scripts/limits.lua`,
//! `scripts/heartbeat.lua`), the circuit breaker, the heartbeats that
//! count live processes, and the failure policy ([`FailPolicy`]).
//!
//! Keys (`P` is the prefix, `llmux:rl` by default), hash-tagged by scope so that every key of a
//! scope lives in one Redis Cluster slot: `P:{scope}:rpm` and `P:{scope}:tpm` (TATs, in µs of
//! Redis's clock, expiring once they are in the past), `P:{scope}:open:<epoch>` (the requests
//! admitted on a scope with a token or parallel limit and not yet settled: sets of integers, one
//! per lease period, the "epoch", each expiring at the end of the next one; the open requests are
//! those of the current and the previous epoch). A request is a set member by a 62-bit digest of
//! its id ([`member`]), which Redis stores as a sorted array of integers: finding, adding and
//! removing one is a binary search. The count of the two sets is the parallel count, and a
//! settle applies only when it removes its request from one of them, which makes a retried
//! settle a no-op. An unsettled request (its process crashed) stops counting between one and
//! two leases after its admission. The client sends each settle's token difference (used minus
//! reserved; it knows what it reserved). Live processes beat into `P:{hb}:live`. The script
//! needs Redis 6.2 or later (`SMISMEMBER`).
//!
//! Admissions and settles queued while a script call is in flight go together in the next
//! one; each scope is described once per call and requests name it by index, so a batch of
//! many requests on one scope costs Redis little more than one. A busy scope far from its
//! limits also asks, in the same call, for a block of admissions that this process then makes
//! by itself for a few milliseconds ([`super::prefetch`], which says why the limits stay
//! exact): then most admissions cost no round trip at all.
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
use tokio::sync::{mpsc, oneshot};

use super::gcra::LocalLimiter;
use super::prefetch::{Ask, Granted, Prefetch, Release, Tally};
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
/// How long a block of admissions fetched ahead may be used, by default.
pub const DEFAULT_PREFETCH: Duration = Duration::from_millis(50);
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
    /// process): at least this long and at most twice; longer than the longest call. Every
    /// process sharing a Redis must use the same lease: it names the open-request sets.
    pub lease: Duration,
    pub heartbeat_interval: Duration,
    /// A process that has not beaten for this long no longer counts as live.
    pub heartbeat_window: Duration,
    /// How long a block of admissions fetched ahead may be used ([`super::prefetch`]); zero
    /// decides every admission in Redis.
    pub prefetch: Duration,
}

impl Default for RedisLimiterOptions {
    fn default() -> Self {
        RedisLimiterOptions {
            prefix: "llmux:rl".into(),
            policy: FailPolicy::Local,
            lease: Duration::from_secs(660),
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_window: Duration::from_secs(5),
            prefetch: DEFAULT_PREFETCH,
        }
    }
}

struct Scripts {
    limits: Script,
    heartbeat: Script,
}

/// The blocks one script call asks for, by scope index in the call. Those still here when it
/// is dropped (the call failed, or its future was cancelled at the await) are lost asks.
struct Asks<'l, 'a> {
    limiter: &'l RedisLimiter,
    asks: Vec<(usize, &'a ScopeLimits, Ask)>,
}

impl Drop for Asks<'_, '_> {
    fn drop(&mut self) {
        for (_, limits, ask) in self.asks.drain(..) {
            self.limiter.ask_lost(limits, &ask);
        }
    }
}

/// Clears a flag when dropped (a future holding it may be cancelled at any await).
struct ResetOnDrop<'a>(&'a AtomicBool);

impl Drop for ResetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The most requests one script call decides.
const MAX_BATCH: usize = 256;

/// A decision on one request: its charges and limits, or why not.
type Decision = std::result::Result<(Vec<Charge>, RateInfo), Denial>;

/// The scopes of one script call, each described once: its name and five numbers (requests
/// interval and tolerance, tokens interval and tolerance, max parallel), in order of first use,
/// and for a scope admitted here its limits (which may ask for a block). A call names few scopes
/// (most often one): they are found by a scan, and through a map once there are more than
/// [`ScopeTable::SCAN`].
#[derive(Default)]
struct ScopeTable<'a> {
    scopes: Vec<(&'a str, [f64; 5], Option<&'a ScopeLimits>)>,
    /// 1-based positions in `scopes`, once there are many.
    index: std::collections::HashMap<&'a str, usize>,
}

impl<'a> ScopeTable<'a> {
    const SCAN: usize = 8;

    fn add(&mut self, name: &'a str, d: [f64; 5], limits: Option<&'a ScopeLimits>) {
        self.scopes.push((name, d, limits));
        if self.scopes.len() == Self::SCAN + 1 {
            for (i, (n, _, _)) in self.scopes.iter().enumerate() {
                self.index.insert(n, i + 1);
            }
        } else if self.scopes.len() > Self::SCAN {
            self.index.insert(name, self.scopes.len());
        }
    }

    /// The 1-based index of a scope in the table (0: not there).
    fn find(&self, name: &str) -> usize {
        if self.scopes.len() > Self::SCAN {
            return self.index.get(name).copied().unwrap_or(0);
        }
        self.scopes
            .iter()
            .position(|(n, _, _)| *n == name)
            .map_or(0, |i| i + 1)
    }

    fn admit_scope(&mut self, s: &'a ScopeLimits) {
        if self.find(&s.scope) == 0 {
            let (rt, rtau) = s
                .rpm
                .map_or((0.0, 0.0), |r| (r.interval_us(), r.tolerance_us()));
            let (tt, ttau) = s
                .tpm
                .map_or((0.0, 0.0), |r| (r.interval_us(), r.tolerance_us()));
            let maxp = s.max_parallel.unwrap_or(0) as f64;
            self.add(&s.scope, [rt, rtau, tt, ttau, maxp], Some(s));
        }
    }

    /// A scope only settled in this call: its intervals; a parallel limit is marked as 1 (the
    /// scope is tracked; no admission here counts against it).
    fn settle_scope(&mut self, c: &'a Charge) {
        if self.find(&c.scope) == 0 {
            let par = if c.parallel { 1.0 } else { 0.0 };
            self.add(
                &c.scope,
                [
                    c.rpm_interval_us.unwrap_or(0.0),
                    0.0,
                    c.tpm_interval_us.unwrap_or(0.0),
                    0.0,
                    par,
                ],
                None,
            );
        }
    }
}

/// One request's part of an admit script call.
struct AdmitReq<'a> {
    id: &'a str,
    scopes: &'a [ScopeLimits],
    tokens: u64,
}

/// One request's part of a settle script call (a request, or a block's slot).
struct SettleReq<'a> {
    member: i64,
    charges: &'a [Charge],
    used: u64,
    undo: bool,
}

/// An admission waiting for the next batch.
struct AdmitJob {
    id: String,
    scopes: Vec<ScopeLimits>,
    tokens: u64,
    reply: oneshot::Sender<Result<Decision>>,
}

/// Work for the next script call.
enum Job {
    Admit(AdmitJob),
    Settle(SettleJob),
}

/// A settle waiting for the next batch. Without a reply, nobody waits for it: when its batch
/// fails, the limiter retries it in the background.
struct SettleJob {
    member: i64,
    charges: Vec<Charge>,
    used: u64,
    undo: bool,
    reply: Option<oneshot::Sender<Result<()>>>,
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
    /// Whether `state` says open: read without the lock on every call while Redis answers.
    /// While it is false the back-off is at its minimum (only a success closes the breaker,
    /// and it resets the back-off).
    open: AtomicBool,
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
            open: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            trips: AtomicU64::new(0),
        }
    }

    fn gate(&self) -> Gate {
        if !self.open.load(Ordering::Acquire) {
            return Gate::Try;
        }
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
        self.open.load(Ordering::Acquire)
    }

    fn success(&self, probe: bool, label: &str) {
        if probe {
            self.probing.store(false, Ordering::Release);
        } else if !self.open.load(Ordering::Acquire) {
            return;
        }
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        self.open.store(false, Ordering::Release);
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
        if was_open && !probe {
            // Another failure of the same outage (a call already in flight, a heartbeat):
            // the breaker is open already; only probes move the back-off.
            return;
        }
        s.open_until = Some(Instant::now() + s.backoff);
        self.open.store(true, Ordering::Release);
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
    script_calls: AtomicU64,
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
    /// Queues of the batchers (one server or Sentinel; Cluster calls per scope instead).
    jobs: mpsc::UnboundedSender<Job>,
    /// This limiter, for background work it starts (undoing admissions whose answer was lost).
    me: std::sync::Weak<RedisLimiter>,
    /// Blocks of admissions fetched ahead.
    prefetch: Prefetch,
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
        Self::launch(config, opts, None).await
    }

    /// A limiter on an existing pool (the connection is shared with other users of `pool`).
    pub async fn with_pool(pool: RedisPool, opts: RedisLimiterOptions) -> Arc<Self> {
        Self::launch(pool.config().clone(), opts, Some(pool)).await
    }

    async fn launch(
        config: RedisConfig,
        opts: RedisLimiterOptions,
        pool: Option<RedisPool>,
    ) -> Arc<Self> {
        let (jobs, rx) = mpsc::unbounded_channel();
        let me = Arc::new_cyclic(|me| Self::new(config, opts, pool, jobs, me.clone()));
        me.beat().await;
        Self::spawn_heartbeat(&me);
        tokio::spawn(batches(Arc::downgrade(&me), rx));
        me
    }

    fn new(
        config: RedisConfig,
        opts: RedisLimiterOptions,
        pool: Option<RedisPool>,
        jobs: mpsc::UnboundedSender<Job>,
        me: std::sync::Weak<RedisLimiter>,
    ) -> Self {
        let label = format!("{:?}", config.target);
        RedisLimiter {
            prefetch: Prefetch::new(opts.prefetch),
            jobs,
            me,
            config,
            pool: RwLock::new(pool),
            connecting: AtomicBool::new(false),
            opts,
            scripts: Scripts {
                limits: Script::new(include_str!("scripts/limits.lua")),
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
        // Reset even when the caller is cancelled mid-connect.
        let _reset = ResetOnDrop(&self.connecting);
        let pool = RedisPool::connect(&self.config).await?;
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

    /// One script call: `settles` first, then `admits` (their scopes all in one slot, or a
    /// standalone server). Each scope is sent once (three keys, nine numbers); requests name
    /// their scopes by index. A busy scope admitted here may ask for a block (see
    /// [`super::prefetch`]). Returns the scope settles applied and one decision per admission.
    async fn script(
        &self,
        pool: &RedisPool,
        settles: &[SettleReq<'_>],
        admits: &[AdmitReq<'_>],
    ) -> Result<(u64, Vec<Decision>)> {
        let mut table = ScopeTable::default();
        // Admissions first: their limits are the whole of a scope's description.
        for r in admits {
            for s in r.scopes {
                table.admit_scope(s);
            }
        }
        for r in settles {
            for c in r.charges {
                table.settle_scope(c);
            }
        }
        let mut asks = Asks {
            limiter: self,
            asks: table
                .scopes
                .iter()
                .enumerate()
                .filter_map(|(i, (_, _, limits))| {
                    limits.and_then(|l| Some((i, l, self.prefetch.ask(l)?)))
                })
                .collect(),
        };
        // Keys and arguments go straight into the command (no string per number).
        let p = &self.opts.prefix;
        let mut cmd = crate::redis::evalsha(&self.scripts.limits, table.scopes.len() * 3);
        for (name, _, _) in &table.scopes {
            let t = tag(name);
            cmd.arg(format!("{p}:{{{t}}}:rpm"))
                .arg(format!("{p}:{{{t}}}:tpm"))
                .arg(format!("{p}:{{{t}}}:open"));
        }
        cmd.arg(table.scopes.len())
            .arg(settles.len())
            .arg(admits.len())
            .arg(self.opts.lease.as_millis().max(1).to_string())
            .arg(self.opts.prefetch.as_micros().to_string());
        for (i, (_, d, _)) in table.scopes.iter().enumerate() {
            for v in d {
                cmd.arg(num(*v));
            }
            match asks.asks.iter().find(|(j, _, _)| *j == i) {
                Some((_, _, a)) => cmd.arg(a.requests).arg(a.tokens).arg(a.slots).arg(a.member),
                None => cmd.arg(0).arg(0).arg(0).arg(0),
            };
        }
        for r in settles {
            cmd.arg(r.member).arg(u8::from(r.undo)).arg(r.charges.len());
            for c in r.charges {
                let delta = if r.undo {
                    -i128::from(c.tokens)
                } else if r.used == super::KEEP_RESERVATION {
                    0
                } else {
                    i128::from(r.used) - i128::from(c.tokens)
                };
                cmd.arg(table.find(&c.scope)).arg(delta);
            }
        }
        for r in admits {
            cmd.arg(member(r.id)).arg(r.scopes.len());
            for sc in r.scopes {
                cmd.arg(table.find(&sc.scope)).arg(sc.token_cost(r.tokens));
            }
        }
        self.counters.script_calls.fetch_add(1, Ordering::Relaxed);
        let sent = Instant::now();
        let reply = pool
            .eval_cmd::<Vec<u8>>(&self.scripts.limits, &cmd)
            .await
            .and_then(|packed| self.parse_limits_reply(&packed, admits, table.scopes.len()));
        if let Ok((_, _, grants)) = &reply {
            for (i, limits, ask) in std::mem::take(&mut asks.asks) {
                let g = grants.get(i).copied().unwrap_or_default();
                if let Some((tally, until)) = self.prefetch.granted(limits, &ask, sent, &g) {
                    self.expire_block_at(limits.scope.clone(), tally, until);
                }
            }
        }
        // Otherwise (a failed call) `asks` answers its blocks as not granted when dropped.
        reply.map(|(settled, decisions, _)| (settled, decisions))
    }

    /// A block asked for and not known to be granted (its call failed, or was dropped): the
    /// scope may ask again, and the parallel slots Redis may have granted all the same are
    /// given back (a slot that is not there is a no-op). Its tokens, if granted, stay charged:
    /// the strict side.
    fn ask_lost(&self, limits: &ScopeLimits, ask: &Ask) {
        self.prefetch.failed(limits);
        for i in 0..ask.slots {
            self.release(Release {
                member: ask.member + i as i64,
                charge: Charge::of(limits, 0),
                used: 0,
            });
        }
    }

    /// The script's reply: the settles applied, one decision per admission, one block per
    /// scope.
    fn parse_limits_reply(
        &self,
        packed: &[u8],
        admits: &[AdmitReq<'_>],
        nscopes: usize,
    ) -> Result<(u64, Vec<Decision>, Vec<Granted>)> {
        let out: Vec<i64> = packed
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0xff; 8])))
            .collect();
        if !packed.len().is_multiple_of(8) || out.len() != 1 + admits.len() * 5 + nscopes * 7 {
            return Err(Error::new(
                ErrorKind::Internal,
                format!(
                    "redis {}: limits reply of {} bytes for {} admissions on {nscopes} scopes",
                    self.label,
                    packed.len(),
                    admits.len()
                ),
            ));
        }
        let (decided, blocks) = out[1..].split_at(admits.len() * 5);
        let decisions = admits
            .iter()
            .zip(decided.chunks(5))
            .map(|(r, o)| Self::decision(r, o))
            .collect::<Result<Vec<_>>>()?;
        let grants = blocks
            .chunks_exact(7)
            .map(|g| [g[0], g[1], g[2], g[3], g[4], g[5], g[6]])
            .collect();
        Ok((out[0].max(0) as u64, decisions, grants))
    }

    /// Ends a block's window at `until`: its free slots go back, and its tokens settle when
    /// that was its last open part.
    fn expire_block_at(&self, scope: String, tally: Arc<Tally>, until: Instant) {
        let (Some(me), Ok(rt)) = (self.me.upgrade(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        rt.spawn(async move {
            tokio::time::sleep_until(until.into()).await;
            for r in me.prefetch.expire(&scope, &tally) {
                me.release(r);
            }
        });
    }

    /// Settles a block's member in Redis (its tokens, or a parallel slot), in the background
    /// and retried like any settle: in the next batch, or on Cluster by its own call.
    fn release(&self, r: Release) {
        let job = SettleJob {
            member: r.member,
            charges: vec![r.charge],
            used: r.used,
            undo: false,
            reply: None,
        };
        if !self.batched() {
            self.settle_in_background(job, Duration::ZERO);
        } else if self.jobs.send(Job::Settle(job)).is_err() {
            self.counters
                .settles_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Runs a settle in a task of its own after `delay`, retried like any settle; without a
    /// runtime to run it on, it is counted as dropped.
    fn settle_in_background(&self, job: SettleJob, delay: Duration) {
        let (Some(me), Ok(rt)) = (self.me.upgrade(), tokio::runtime::Handle::try_current()) else {
            self.counters
                .settles_dropped
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        rt.spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if let Err(e) = me
                .settle_redis(job.member, &job.charges, job.used, job.undo)
                .await
            {
                tracing::warn!(error = %e, "rate limiter: settle failed");
            }
        });
    }

    /// One request's five numbers from the admit script.
    fn decision(r: &AdmitReq<'_>, o: &[i64]) -> Result<Decision> {
        let get = |i: usize| o.get(i).copied().unwrap_or(-1);
        if get(0) == 1 {
            let mut info = RateInfo::default();
            if get(1) >= 0 {
                info.limit_requests = r.scopes.iter().filter_map(|s| s.rpm).map(|x| x.limit).min();
                info.remaining_requests = Some(get(1) as u64);
                info.reset_requests = Some(Duration::from_micros(get(2).max(0) as u64));
            }
            if get(3) >= 0 {
                info.limit_tokens = r.scopes.iter().filter_map(|s| s.tpm).map(|x| x.limit).min();
                info.remaining_tokens = Some(get(3) as u64);
                info.reset_tokens = Some(Duration::from_micros(get(4).max(0) as u64));
            }
            let charges = r
                .scopes
                .iter()
                .map(|s| Charge::of(s, s.token_cost(r.tokens)))
                .collect();
            return Ok(Ok((charges, info)));
        }
        let scope = usize::try_from(get(1) - 1)
            .ok()
            .and_then(|i| r.scopes.get(i))
            .ok_or_else(|| Error::new(ErrorKind::Internal, "admit script: bad scope index"))?;
        let limited = match get(2) {
            1 => Limited::Requests,
            2 => Limited::Tokens,
            _ => Limited::Parallel,
        };
        let wait = get(3);
        Ok(Err(Denial::new(
            scope,
            limited,
            (wait >= 0).then_some(wait as f64),
        )))
    }

    /// Admits in Redis. On one server (or Sentinel) the request joins the next batch: one
    /// script call decides every admission queued while the previous call was in flight. On
    /// Cluster each scope is admitted by its own call (its own slot), and the charged ones are
    /// undone when another refuses.
    async fn redis_admit(
        &self,
        pool: &RedisPool,
        demand: &Demand,
    ) -> Result<std::result::Result<Admitted, Denial>> {
        if !pool.is_cluster() {
            return self.batch_admit(demand).await;
        }
        let scopes: Vec<&ScopeLimits> = demand.scopes.iter().filter(|s| !s.is_empty()).collect();
        let admitted = |(charges, info)| Admitted::new(charges, Placement::Primary, info);
        let outs = join_all(
            scopes
                .iter()
                .map(|s| self.admit_one_scope(pool, &demand.request_id, s, demand.tokens)),
        )
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
                    let req = SettleReq {
                        member: member(&demand.request_id),
                        charges: std::slice::from_ref(c),
                        used: 0,
                        undo: true,
                    };
                    self.script(pool, std::slice::from_ref(&req), &[]).await
                }))
                .await;
                r.map(Err)
            }
        }
    }

    /// Admits in the next batch (one server or Sentinel).
    async fn batch_admit(&self, demand: &Demand) -> Result<std::result::Result<Admitted, Denial>> {
        let (reply, rx) = oneshot::channel();
        let job = AdmitJob {
            id: demand.request_id.clone(),
            scopes: demand
                .scopes
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect(),
            tokens: demand.tokens,
            reply,
        };
        self.jobs
            .send(Job::Admit(job))
            .map_err(|_| Error::new(ErrorKind::Internal, "rate limiter: batcher stopped"))?;
        let out = rx
            .await
            .map_err(|_| Error::new(ErrorKind::Internal, "rate limiter: batch lost"))?;
        Ok(out?.map(|(charges, info)| Admitted::new(charges, Placement::Primary, info)))
    }

    /// Whether the pool is connected to one server or a Sentinel group (not Cluster): calls
    /// then go in batches, and need no handle on the pool (the batch takes its own).
    fn batched(&self) -> bool {
        self.pool
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|p| !p.is_cluster())
    }

    /// Admits one request on one scope (Cluster: one slot per call).
    async fn admit_one_scope(
        &self,
        pool: &RedisPool,
        id: &str,
        scope: &ScopeLimits,
        tokens: u64,
    ) -> Result<Decision> {
        let req = AdmitReq {
            id,
            scopes: std::slice::from_ref(scope),
            tokens,
        };
        let (_, mut out) = self.script(pool, &[], std::slice::from_ref(&req)).await?;
        out.pop()
            .ok_or_else(|| Error::new(ErrorKind::Internal, "admit script: empty reply"))
    }

    /// Runs a batch of queued settles and admissions with one script call.
    async fn flush(&self, jobs: Vec<Job>) {
        let mut admits = Vec::new();
        let mut settles = Vec::new();
        for j in jobs {
            match j {
                Job::Admit(a) => admits.push(a),
                Job::Settle(s) => settles.push(s),
            }
        }
        let out = match self.pool().await {
            Ok(pool) => {
                let s: Vec<SettleReq<'_>> = settles
                    .iter()
                    .map(|j| SettleReq {
                        member: j.member,
                        charges: &j.charges,
                        used: j.used,
                        undo: j.undo,
                    })
                    .collect();
                let a: Vec<AdmitReq<'_>> = admits
                    .iter()
                    .map(|j| AdmitReq {
                        id: &j.id,
                        scopes: &j.scopes,
                        tokens: j.tokens,
                    })
                    .collect();
                self.script(&pool, &s, &a).await
            }
            Err(e) => Err(e),
        };
        match out {
            Ok((_, decisions)) => {
                for job in settles {
                    if let Some(reply) = job.reply {
                        let _ = reply.send(Ok(()));
                    }
                }
                for (job, d) in admits.into_iter().zip(decisions) {
                    let _ = job.reply.send(Ok(d));
                }
            }
            Err(e) => {
                for job in settles {
                    match job.reply {
                        Some(reply) => {
                            let _ = reply.send(Err(e.clone()));
                        }
                        None => self.retry_settle(job),
                    }
                }
                for job in admits {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// A detached settle whose batch failed: retried in the background like any settle.
    fn retry_settle(&self, job: SettleJob) {
        self.counters.redis_errors.fetch_add(1, Ordering::Relaxed);
        self.settle_in_background(job, Duration::from_millis(100));
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
                Ok(Ok(Admitted::new(
                    Vec::new(),
                    Placement::Nowhere,
                    RateInfo::default(),
                )))
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
                Ok(out.map(|(charges, info)| Admitted::new(charges, Placement::Fallback, info)))
            }
        }
    }

    async fn admit_inner(&self, demand: &Demand) -> Result<std::result::Result<Admitted, Denial>> {
        if let Some(d) = demand.scopes.iter().find_map(zero_limit) {
            self.counters.denied.fetch_add(1, Ordering::Relaxed);
            return Ok(Err(d));
        }
        if let Some((charges, info, blocks)) = self.prefetch.try_admit(demand) {
            self.counters.admitted.fetch_add(1, Ordering::Relaxed);
            let mut a = Admitted::new(charges, Placement::Prefetched, info);
            a.blocks = blocks;
            return Ok(Ok(a));
        }
        let probe = match self.breaker.gate() {
            Gate::Skip(wait) => return self.fallback(demand, wait),
            Gate::Try => false,
            Gate::Probe => true,
        };
        // A cancelled probe must not leave the breaker waiting for it forever.
        let _probe = probe.then(|| ResetOnDrop(&self.breaker.probing));
        let out = if self.batched() {
            self.batch_admit(demand).await
        } else {
            match self.pool().await {
                Ok(pool) => self.redis_admit(&pool, demand).await,
                Err(e) => Err(e),
            }
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
                self.undo_unanswered(demand);
                self.fallback(demand, BREAKER_MIN)
            }
        }
    }

    /// An admission whose answer was lost (a timeout) may still have been applied: give back
    /// what it may have charged, in the background and retried. Only scopes that track open
    /// requests are undone (membership says whether the admission happened, and makes the undo
    /// count once); a requests-only scope keeps its charge, erring on the strict side.
    fn undo_unanswered(&self, demand: &Demand) {
        let charges: Vec<Charge> = demand
            .scopes
            .iter()
            .filter(|s| s.tpm.is_some() || s.max_parallel.is_some())
            .map(|s| Charge::of(s, s.token_cost(demand.tokens)))
            .collect();
        let (Some(me), Ok(rt)) = (self.me.upgrade(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        if charges.is_empty() {
            return;
        }
        let m = member(&demand.request_id);
        rt.spawn(async move {
            let _ = me.settle_redis(m, &charges, 0, true).await;
        });
    }

    /// Settles the open-set member `m` (a request, or a block's) on each of `charges`.
    async fn settle_redis(&self, m: i64, charges: &[Charge], used: u64, undo: bool) -> Result<()> {
        let charges: Vec<Charge> = charges
            .iter()
            .filter(|c| undo || c.needs_settle())
            .cloned()
            .collect();
        if charges.is_empty() {
            // Only requests limits: nothing to refund, no slot to release.
            return Ok(());
        }
        let started = Instant::now();
        let mut wait = Duration::from_millis(100);
        loop {
            let out = async {
                let pool = self.pool().await?;
                if pool.is_cluster() {
                    let pool = &pool;
                    for r in join_all(charges.iter().map(|c| async move {
                        let req = SettleReq {
                            member: m,
                            charges: std::slice::from_ref(c),
                            used,
                            undo,
                        };
                        self.script(pool, std::slice::from_ref(&req), &[]).await
                    }))
                    .await
                    {
                        r?;
                    }
                    Ok(())
                } else {
                    let (reply, rx) = oneshot::channel();
                    let job = SettleJob {
                        member: m,
                        charges: charges.clone(),
                        used,
                        undo,
                        reply: Some(reply),
                    };
                    self.jobs.send(Job::Settle(job)).map_err(|_| {
                        Error::new(ErrorKind::Internal, "rate limiter: batcher stopped")
                    })?;
                    rx.await
                        .map_err(|_| Error::new(ErrorKind::Internal, "rate limiter: batch lost"))?
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
            // Safe to repeat: a settle applies only when it removes its request from the open set.
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    }
}

/// Script calls in flight at once. One: under load, everything queued while a call is in
/// flight goes in the next (batches of about 20 at 22k admissions/s on the benchmark, against
/// 10 with two in flight and about 5 with four), which costs Redis and this process less CPU
/// per request (two in flight: Redis 10 µs a request instead of 7, and no more calls a second);
/// an admission waits at most for the call in flight and its own.
const BATCHES_IN_FLIGHT: usize = 1;

/// Runs queued jobs in batches: when the call slot is free, everything queued so far goes in
/// one script call (up to [`MAX_BATCH`]). Ends when the limiter is dropped.
async fn batches(limiter: std::sync::Weak<RedisLimiter>, mut rx: mpsc::UnboundedReceiver<Job>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let Some(me) = limiter.upgrade() else { break };
        tokio::spawn(async move {
            me.flush(jobs).await;
            drop(permit);
        });
    }
}

pub(super) fn merge_info(into: &mut RateInfo, from: &RateInfo) {
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

/// A request's member in the open sets: a digest of its id, 62 bits so that it is a
/// non-negative `i64` (Redis keeps sets of such integers as sorted arrays). Ids are random per
/// request; two requests in flight on one scope share a digest with a chance of about one in
/// 10^18 per pair.
fn member(request_id: &str) -> i64 {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: the same id gives the same member in every process of a build,
    // and the admission and the settle of a request are made by the same process.
    let mut h = std::hash::DefaultHasher::new();
    request_id.hash(&mut h);
    (h.finish() >> 2) as i64
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
                Placement::Prefetched => {
                    // What goes to Redis goes in the background, retried: the block's account
                    // has moved on already, and must not wait on this future.
                    for r in Prefetch::settle(&admitted.blocks, used, undo) {
                        self.release(r);
                    }
                    Ok(())
                }
                Placement::Fallback => {
                    self.local.settle(&admitted.charges, used, undo);
                    Ok(())
                }
                Placement::Primary => {
                    self.settle_redis(member(request_id), &admitted.charges, used, undo)
                        .await
                }
            }
        })
    }

    fn settle_detached(&self, request_id: &str, admitted: &Admitted, used: u64) -> bool {
        if !self.batched() {
            return false;
        }
        match admitted.placement {
            Placement::Primary => {}
            Placement::Prefetched => {
                for r in Prefetch::settle(&admitted.blocks, used, false) {
                    self.release(r);
                }
                return true;
            }
            Placement::Fallback | Placement::Nowhere => return false,
        }
        let charges: Vec<Charge> = admitted
            .charges
            .iter()
            .filter(|c| c.needs_settle())
            .cloned()
            .collect();
        if charges.is_empty() {
            // Only requests limits: nothing to refund, no slot to release.
            return true;
        }
        let job = SettleJob {
            member: member(request_id),
            charges,
            used,
            undo: false,
            reply: None,
        };
        self.jobs.send(Job::Settle(job)).is_ok()
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
            script_calls: c.script_calls.load(Ordering::Relaxed),
            blocks: self.prefetch.blocks.load(Ordering::Relaxed),
            prefetched: self.prefetch.admitted.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::RedisTarget;

    /// Scopes are found by a scan while few, and by a map past [`ScopeTable::SCAN`]; the
    /// indexes are the same either way.
    #[test]
    fn scope_indexes_by_scan_and_by_map() {
        let names: Vec<String> = (0..20).map(|i| format!("s{i}")).collect();
        let mut t = ScopeTable::default();
        for (i, n) in names.iter().enumerate() {
            assert_eq!(t.find(n), 0);
            t.add(n, [i as f64; 5], None);
            for (j, m) in names[..=i].iter().enumerate() {
                assert_eq!(t.find(m), j + 1, "{m} among {}", i + 1);
            }
        }
        assert_eq!(t.find("nope"), 0);
    }

    /// Every admission and every batch is a future that is moved (into a box, into a task).
    /// Connecting to Redis, which happens rarely, must not make them kilobytes large.
    #[tokio::test]
    async fn admission_and_batch_futures_stay_small() {
        let cfg = RedisConfig::new(RedisTarget::Url("redis://127.0.0.1:1".into()));
        let l = RedisLimiter::start(cfg, RedisLimiterOptions::default()).await;
        let d = Demand {
            request_id: "x".into(),
            scopes: vec![],
            tokens: 0,
        };
        let admit = std::mem::size_of_val(&l.admit_inner(&d));
        let batch = std::mem::size_of_val(&l.flush(Vec::new()));
        assert!(admit < 2048, "an admission's future is {admit} bytes");
        assert!(batch < 4096, "a batch's future is {batch} bytes");
    }
}
