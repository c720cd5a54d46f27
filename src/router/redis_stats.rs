//! The Redis backend of [`ClusterStats`]: routing statistics shared by every process.
//!
//! This module owns the Redis key layout of the routing stats, the Lua scripts that update
//! them (`scripts/*.lua`), the leases that make in-flight counts survive crashed processes, and
//! the fallback to an embedded [`LocalStats`] when Redis cannot answer. Semantics are those of
//! [`LocalStats`] (see [`super::stats`]): fixed wall-clock minute windows, EWMAs with
//! [`EWMA_ALPHA`], latency learnt from successes and timeouts only, cooldowns that extend and
//! never shorten.
//!
//! Key layout, all keys of one deployment hash-tagged with its id so that they share a Redis
//! Cluster slot (`P` is the prefix, [`DEFAULT_PREFIX`] by default):
//! - `P:{id}:h`: hash `lat`, `ttft` (EWMAs in ms), `succ`, `fail` (lifetime counts); no TTL;
//! - `P:{id}:m`: hash `minute` (unix minute of Redis's clock), `req`, `tok`, `fail`, reset by the
//!   scripts when the minute changes, with a 120 s TTL. (One key that rolls rather than one key
//!   per minute, because a key named after Redis's `TIME` could not be declared in `KEYS`, and
//!   Cluster requires every key a script touches to be declared.)
//! - `P:{id}:lease`: sorted set of in-flight leases, member `<instance>:<counter>`, score = expiry
//!   in Redis ms; in flight = the number of unexpired members;
//! - `P:{id}:cd`: the cooldown, a key whose `PTTL` is the time left.
//!
//! Every update is one `EVALSHA` (reloaded after `NOSCRIPT`) whose clock is `redis.call('TIME')`,
//! never the caller's; `clear_cooldown` is a plain `DEL`. `snapshot` runs one script per id,
//! concurrently (each id is its own slot under Cluster; one multiplexed connection otherwise).
//!
//! Leases: `begin` adds a lease that expires after the lease TTL (default
//! [`DEFAULT_LEASE_TTL`]); `end` removes one of this instance's leases for the deployment. A
//! process that dies mid-request leaves leases that stop counting when they expire. The flip
//! side: a request (a long stream) that outlives its lease stops counting as in flight from then
//! on, so the TTL must exceed the longest expected call.
//!
//! Failure policy: a Redis error or timeout never fails a call. The operation is served by the
//! embedded [`LocalStats`] instead, counted ([`RedisStats::degraded_ops`]), and a warning is
//! logged once per outage. After a failure Redis is skipped for [`RETRY_AFTER_FAILURE`], then
//! probed again by the next call, so the backend recovers by itself. During an outage the stats
//! are per process (each process sees only its own traffic), and what was counted locally is
//! not merged back into Redis afterwards. A request begun locally during an outage is ended
//! locally too, so in-flight counts balance on each side.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use ::redis::Script;
use futures_util::future::{join_all, BoxFuture};

use super::stats::{ClusterStats, DeploymentStats, LocalStats, Outcome, EWMA_ALPHA};
use crate::error::{Error, ErrorKind, Result};
use crate::redis::RedisPool;

/// Default key prefix: keys look like `llmux:rs:{<deployment id>}:h`.
pub const DEFAULT_PREFIX: &str = "llmux:rs";
/// Default lease of one in-flight request.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(120);
/// How long Redis is skipped after it failed before the next call probes it again.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// TTL of a minute-window key, refreshed by every write: longer than a minute.
const WINDOW_TTL_MS: u64 = 120_000;
/// The longest cooldown accepted (about 100 years); longer ones are refused like
/// [`LocalStats`] refuses deadlines it cannot represent.
const MAX_COOLDOWN_MS: u128 = 100 * 365 * 24 * 3_600_000;

struct Scripts {
    begin: Script,
    end: Script,
    add_tokens: Script,
    set_cooldown: Script,
    snapshot: Script,
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            begin: Script::new(include_str!("scripts/begin.lua")),
            end: Script::new(include_str!("scripts/end.lua")),
            add_tokens: Script::new(include_str!("scripts/add_tokens.lua")),
            set_cooldown: Script::new(include_str!("scripts/set_cooldown.lua")),
            snapshot: Script::new(include_str!("scripts/snapshot.lua")),
        }
    }
}

/// Where a request begun by this instance is counted.
enum Lease {
    /// A lease member in Redis.
    Redis(String),
    /// In the local fallback (Redis was down at `begin`).
    Local,
}

/// Routing stats in Redis, shared by every process that uses the same server and prefix.
pub struct RedisStats {
    pool: RedisPool,
    prefix: String,
    lease_ttl_ms: u64,
    scripts: Scripts,
    /// Distinguishes this instance's lease members from every other instance's.
    instance: String,
    counter: AtomicU64,
    /// This instance's open requests per deployment, oldest first.
    leases: Mutex<HashMap<String, VecDeque<Lease>>>,
    local: LocalStats,
    /// Redis is not tried before this instant (after a failure).
    skip_until: Mutex<Option<Instant>>,
    /// An outage was logged and has not ended yet.
    in_outage: AtomicBool,
    degraded: AtomicU64,
}

impl std::fmt::Debug for RedisStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStats")
            .field("pool", &self.pool)
            .field("prefix", &self.prefix)
            .field("lease_ttl_ms", &self.lease_ttl_ms)
            .field("degraded_ops", &self.degraded_ops())
            .finish_non_exhaustive()
    }
}

/// The keys of one deployment.
struct Keys {
    h: String,
    m: String,
    lease: String,
    cd: String,
}

impl RedisStats {
    /// Stats under `prefix` (e.g. [`DEFAULT_PREFIX`]) with in-flight leases of `lease_ttl`
    /// (rounded up to whole milliseconds, at least 1 ms).
    pub fn new(pool: RedisPool, prefix: &str, lease_ttl: Duration) -> Self {
        let lease_ttl_ms = u64::try_from(ceil_ms(lease_ttl)).unwrap_or(u64::MAX).max(1);
        RedisStats {
            pool,
            prefix: prefix.to_owned(),
            lease_ttl_ms,
            scripts: Scripts::new(),
            instance: format!("{}-{:016x}", std::process::id(), rand::random::<u64>()),
            counter: AtomicU64::new(0),
            leases: Mutex::new(HashMap::new()),
            local: LocalStats::new(),
            skip_until: Mutex::new(None),
            in_outage: AtomicBool::new(false),
            degraded: AtomicU64::new(0),
        }
    }

    /// Operations served by the local fallback because Redis failed or was being skipped.
    pub fn degraded_ops(&self) -> u64 {
        self.degraded.load(Ordering::Relaxed)
    }

    fn keys(&self, id: &str) -> Keys {
        let base = format!("{}:{{{id}}}", self.prefix);
        Keys {
            h: format!("{base}:h"),
            m: format!("{base}:m"),
            lease: format!("{base}:lease"),
            cd: format!("{base}:cd"),
        }
    }

    fn lock_leases(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<Lease>>> {
        // Plain queues: a panic elsewhere cannot leave them inconsistent.
        self.leases.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_skip(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.skip_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether Redis should be tried now (not within the pause after a failure).
    fn redis_allowed(&self) -> bool {
        match *self.lock_skip() {
            Some(until) => Instant::now() >= until,
            None => true,
        }
    }

    /// Runs `op` on Redis unless it is being skipped; `None` means "serve it locally" (and
    /// has been counted and, once per outage, logged).
    async fn try_redis<T>(
        &self,
        what: &str,
        op: impl std::future::Future<Output = Result<T>>,
    ) -> Option<T> {
        if !self.redis_allowed() {
            self.degraded.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        match op.await {
            Ok(v) => {
                if self.in_outage.swap(false, Ordering::AcqRel) {
                    *self.lock_skip() = None;
                    tracing::info!(pool = ?self.pool, "redis routing stats: Redis is back; stats are shared again");
                }
                Some(v)
            }
            Err(e) => {
                *self.lock_skip() = Instant::now().checked_add(RETRY_AFTER_FAILURE);
                if !self.in_outage.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        pool = ?self.pool,
                        operation = what,
                        error = %e,
                        "redis routing stats: Redis unavailable; serving stats from this process only until it answers again"
                    );
                }
                self.degraded.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    async fn snapshot_one(&self, id: &str) -> Result<DeploymentStats> {
        let k = self.keys(id);
        let raw: Vec<String> = self
            .pool
            .eval(&self.scripts.snapshot, &[k.h, k.m, k.lease, k.cd], &[])
            .await?;
        parse_snapshot(id, &raw)
    }

    async fn snapshot_redis(&self, ids: &[String]) -> Result<Vec<DeploymentStats>> {
        join_all(ids.iter().map(|id| self.snapshot_one(id)))
            .await
            .into_iter()
            .collect()
    }

    async fn begin_redis(&self, id: &str, member: &str) -> Result<()> {
        let k = self.keys(id);
        self.pool
            .eval::<i64>(
                &self.scripts.begin,
                &[k.m, k.lease],
                &[
                    member.to_owned(),
                    self.lease_ttl_ms.to_string(),
                    WINDOW_TTL_MS.to_string(),
                ],
            )
            .await
            .map(drop)
    }

    async fn end_redis(&self, id: &str, member: &str, outcome: &Outcome) -> Result<()> {
        let k = self.keys(id);
        let learn_latency = match outcome.error {
            None => true,
            Some(kind) => kind == ErrorKind::Timeout,
        };
        let args = [
            member.to_owned(),
            ms_f64(outcome.latency).to_string(),
            flag(learn_latency).to_owned(),
            outcome
                .ttft
                .map(|t| ms_f64(t).to_string())
                .unwrap_or_default(),
            outcome.tokens.to_string(),
            flag(outcome.error.is_some()).to_owned(),
            EWMA_ALPHA.to_string(),
            WINDOW_TTL_MS.to_string(),
        ];
        self.pool
            .eval::<i64>(&self.scripts.end, &[k.h, k.m, k.lease], &args)
            .await
            .map(drop)
    }

    async fn add_tokens_redis(&self, id: &str, tokens: u64) -> Result<()> {
        let k = self.keys(id);
        self.pool
            .eval::<i64>(
                &self.scripts.add_tokens,
                &[k.m],
                &[tokens.to_string(), WINDOW_TTL_MS.to_string()],
            )
            .await
            .map(drop)
    }

    async fn set_cooldown_redis(&self, id: &str, ms: u128) -> Result<()> {
        let k = self.keys(id);
        self.pool
            .eval::<i64>(&self.scripts.set_cooldown, &[k.cd], &[ms.to_string()])
            .await
            .map(drop)
    }

    async fn clear_cooldown_redis(&self, id: &str) -> Result<()> {
        let k = self.keys(id);
        let mut cmd = ::redis::cmd("DEL");
        cmd.arg(k.cd);
        self.pool.query::<i64>(cmd).await.map(drop)
    }
}

impl ClusterStats for RedisStats {
    fn snapshot<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<Vec<DeploymentStats>>> {
        Box::pin(async move {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            match self.try_redis("snapshot", self.snapshot_redis(ids)).await {
                Some(v) => Ok(v),
                None => self.local.snapshot(ids).await,
            }
        })
    }

    fn begin<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let n = self.counter.fetch_add(1, Ordering::Relaxed);
            let member = format!("{}:{n}", self.instance);
            let lease = match self.try_redis("begin", self.begin_redis(id, &member)).await {
                Some(()) => Lease::Redis(member),
                None => {
                    self.local.begin(id).await?;
                    Lease::Local
                }
            };
            self.lock_leases()
                .entry(id.to_owned())
                .or_default()
                .push_back(lease);
            Ok(())
        })
    }

    fn end<'a>(&'a self, id: &'a str, outcome: &'a Outcome) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let lease = {
                let mut leases = self.lock_leases();
                let lease = leases.get_mut(id).and_then(VecDeque::pop_front);
                if leases.get(id).is_some_and(VecDeque::is_empty) {
                    leases.remove(id);
                }
                lease
            };
            let member = match lease {
                // Begun locally: ended locally, so that the local in-flight count balances.
                Some(Lease::Local) => return self.local.end(id, outcome).await,
                Some(Lease::Redis(member)) => member,
                // An unmatched end: counted, no lease to remove (in-flight saturates at 0).
                None => String::new(),
            };
            match self
                .try_redis("end", self.end_redis(id, &member, outcome))
                .await
            {
                // The Redis lease, if any, expires by itself.
                Some(()) => Ok(()),
                None => self.local.end(id, outcome).await,
            }
        })
    }

    fn add_tokens<'a>(&'a self, id: &'a str, tokens: u64) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if tokens == 0 {
                return Ok(());
            }
            match self
                .try_redis("add_tokens", self.add_tokens_redis(id, tokens))
                .await
            {
                Some(()) => Ok(()),
                None => self.local.add_tokens(id, tokens).await,
            }
        })
    }

    fn set_cooldown<'a>(&'a self, id: &'a str, dur: Duration) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let ms = ceil_ms(dur);
            if ms > MAX_COOLDOWN_MS {
                return Err(Error::invalid_config(format!(
                    "cooldown of {dur:?} for '{id}' is too long"
                )));
            }
            if ms == 0 {
                // Nothing to cool down; an existing cooldown is never shortened.
                return Ok(());
            }
            match self
                .try_redis("set_cooldown", self.set_cooldown_redis(id, ms))
                .await
            {
                Some(()) => Ok(()),
                None => self.local.set_cooldown(id, dur).await,
            }
        })
    }

    fn clear_cooldown<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            // Clear the local one as well: it may have been set during an outage.
            self.local.clear_cooldown(id).await?;
            match self
                .try_redis("clear_cooldown", self.clear_cooldown_redis(id))
                .await
            {
                Some(()) | None => Ok(()),
            }
        })
    }
}

fn flag(b: bool) -> &'static str {
    if b {
        "1"
    } else {
        "0"
    }
}

fn ms_f64(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Whole milliseconds, rounded up so that a sub-millisecond duration is not lost.
fn ceil_ms(d: Duration) -> u128 {
    d.as_nanos().div_ceil(1_000_000)
}

/// Reads the snapshot script's reply (see `scripts/snapshot.lua`).
fn parse_snapshot(id: &str, raw: &[String]) -> Result<DeploymentStats> {
    let bad = || {
        Error::new(
            ErrorKind::Internal,
            format!("redis routing stats: unexpected snapshot reply for '{id}'"),
        )
    };
    let [in_flight, lat, ttft, req, tok, fails, succ, failures, cd] = raw else {
        return Err(bad());
    };
    let int = |s: &str| s.parse::<u64>().map_err(|_| bad());
    let float = |s: &str| -> Result<Option<f64>> {
        if s.is_empty() {
            Ok(None)
        } else {
            s.parse::<f64>().map(Some).map_err(|_| bad())
        }
    };
    let cd_ms = cd.parse::<i64>().map_err(|_| bad())?;
    Ok(DeploymentStats {
        in_flight: int(in_flight)?,
        latency_ewma_ms: float(lat)?,
        ttft_ewma_ms: float(ttft)?,
        requests_this_minute: int(req)?,
        tokens_this_minute: int(tok)?,
        fails_this_minute: int(fails)?,
        successes: int(succ)?,
        failures: int(failures)?,
        cooldown_remaining: u64::try_from(cd_ms)
            .ok()
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn parses_snapshot_replies() {
        let st = parse_snapshot(
            "a",
            &strings(&["2", "120.5", "", "3", "40", "1", "7", "1", "1500"]),
        )
        .unwrap();
        assert_eq!(st.in_flight, 2);
        assert_eq!(st.latency_ewma_ms, Some(120.5));
        assert_eq!(st.ttft_ewma_ms, None);
        assert_eq!(
            (
                st.requests_this_minute,
                st.tokens_this_minute,
                st.fails_this_minute
            ),
            (3, 40, 1)
        );
        assert_eq!((st.successes, st.failures), (7, 1));
        assert_eq!(st.cooldown_remaining, Some(Duration::from_millis(1500)));
        let st =
            parse_snapshot("a", &strings(&["0", "", "", "0", "0", "0", "0", "0", "-2"])).unwrap();
        assert_eq!(st, DeploymentStats::default());
        assert!(parse_snapshot("a", &strings(&["0"])).is_err());
        assert!(
            parse_snapshot("a", &strings(&["x", "", "", "0", "0", "0", "0", "0", "-2"])).is_err()
        );
    }

    #[test]
    fn rounding() {
        assert_eq!(ceil_ms(Duration::from_micros(1)), 1);
        assert_eq!(ceil_ms(Duration::from_millis(5)), 5);
        assert_eq!(ceil_ms(Duration::ZERO), 0);
    }
}
