//! The Redis backend: answers shared by every process on one Redis, each key with its TTL.
//!
//! Keys are `<prefix>:<cache key>` (the cache key is `<namespace>:<sha256>` or the digest
//! alone), written with `SET key value PX ttl` (without `PX` when there is no TTL) and read
//! with `GET`: one round trip each, one key each, so Redis Cluster needs no hash tags. The
//! connection is made on first use (a cache may be configured while Redis is down) through
//! [`RedisPool`], which bounds every call by its deadline.
//!
//! Failure policy: Redis failing or timing out never fails a call. A lookup becomes a miss and
//! a store is skipped; both are counted ([`RedisCache::degraded_ops`]) and a warning is logged
//! once per outage. After a failure Redis is left alone for [`RETRY_AFTER_FAILURE`] (calls
//! during that pause are misses at once, counted too), then the next call tries again, so the
//! cache recovers by itself when Redis is back.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use super::CacheBackend;
use crate::error::{Error, Result};
use crate::redis::{RedisConfig, RedisPool};

/// Default key prefix: keys look like `llmux:cache:<namespace>:<sha256>`.
pub const DEFAULT_PREFIX: &str = "llmux:cache";
/// How long Redis is skipped after a failure before the next call tries it again.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// The longest TTL written (about 100 years).
const MAX_TTL_MS: u64 = 100 * 365 * 24 * 3_600_000;

/// The response cache in Redis.
pub struct RedisCache {
    config: Option<RedisConfig>,
    pool: tokio::sync::OnceCell<RedisPool>,
    prefix: String,
    skip_until: Mutex<Option<Instant>>,
    in_outage: AtomicBool,
    degraded: AtomicU64,
}

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // RedisConfig's Debug redacts credentials.
        f.debug_struct("RedisCache")
            .field("target", &self.config.as_ref().map(|c| &c.target))
            .field("pool", &self.pool.get())
            .field("prefix", &self.prefix)
            .field("degraded_ops", &self.degraded_ops())
            .finish()
    }
}

impl RedisCache {
    /// A cache on `config`'s Redis under `prefix` (e.g. [`DEFAULT_PREFIX`]); connects on first
    /// use.
    pub fn new(config: RedisConfig, prefix: &str) -> Self {
        Self::build(Some(config), tokio::sync::OnceCell::new(), prefix)
    }

    /// A cache on an already connected pool.
    pub fn with_pool(pool: RedisPool, prefix: &str) -> Self {
        Self::build(None, tokio::sync::OnceCell::new_with(Some(pool)), prefix)
    }

    fn build(
        config: Option<RedisConfig>,
        pool: tokio::sync::OnceCell<RedisPool>,
        prefix: &str,
    ) -> Self {
        RedisCache {
            config,
            pool,
            prefix: prefix.trim_end_matches(':').to_owned(),
            skip_until: Mutex::new(None),
            in_outage: AtomicBool::new(false),
            degraded: AtomicU64::new(0),
        }
    }

    /// Lookups turned into misses and stores skipped because Redis failed or was being
    /// skipped after a failure.
    pub fn degraded_ops(&self) -> u64 {
        self.degraded.load(Ordering::Relaxed)
    }

    /// The Redis key of a cache key.
    pub fn redis_key(&self, key: &str) -> String {
        format!("{}:{key}", self.prefix)
    }

    fn lock_skip(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.skip_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `op` on Redis unless it is being skipped; `None` when Redis did not answer (the
    /// failure has been counted and, once per outage, logged).
    async fn try_redis<T, F>(&self, what: &str, op: impl FnOnce(RedisPool) -> F) -> Option<T>
    where
        F: std::future::Future<Output = Result<T>>,
    {
        let skipping = self.lock_skip().is_some_and(|until| Instant::now() < until);
        if skipping {
            self.degraded.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let out = match self.connection().await {
            Ok(pool) => op(pool).await,
            Err(e) => Err(e),
        };
        match out {
            Ok(v) => {
                if self.in_outage.swap(false, Ordering::AcqRel) {
                    *self.lock_skip() = None;
                    tracing::info!(prefix = %self.prefix, "redis response cache: Redis is back");
                }
                Some(v)
            }
            Err(e) => {
                *self.lock_skip() = Instant::now().checked_add(RETRY_AFTER_FAILURE);
                if !self.in_outage.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        prefix = %self.prefix,
                        operation = what,
                        error = %e,
                        "redis response cache: Redis unavailable; lookups miss and answers are not stored until it answers again"
                    );
                }
                self.degraded.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    async fn connection(&self) -> Result<RedisPool> {
        let pool = self
            .pool
            .get_or_try_init(|| async {
                match &self.config {
                    Some(cfg) => RedisPool::connect(cfg).await,
                    None => Err(Error::invalid_config("redis response cache: no connection")),
                }
            })
            .await?;
        Ok(pool.clone())
    }
}

impl CacheBackend for RedisCache {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<String>>> {
        Box::pin(async move {
            let k = self.redis_key(key);
            let got = self
                .try_redis("get", |pool| async move {
                    pool.query::<Option<String>>(::redis::cmd("GET").arg(&k).clone())
                        .await
                })
                .await;
            Ok(got.flatten())
        })
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        value: String,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut cmd = ::redis::cmd("SET");
            cmd.arg(self.redis_key(key)).arg(value);
            if let Some(t) = ttl {
                // Redis refuses expiries past its clock's range: longer TTLs are capped.
                let ms = u64::try_from(t.as_millis())
                    .unwrap_or(MAX_TTL_MS)
                    .clamp(1, MAX_TTL_MS);
                cmd.arg("PX").arg(ms);
            }
            self.try_redis("set", |pool| async move {
                pool.query::<::redis::Value>(cmd).await
            })
            .await;
            Ok(())
        })
    }

    fn degraded_ops(&self) -> u64 {
        RedisCache::degraded_ops(self)
    }
}
