//! The response cache: exact-match answers for repeated chat requests.
//!
//! This module owns the cache key ([`key`]: a SHA-256 of the normalised request and its
//! tenant), the storage behind the [`CacheBackend`] trait ([`MemoryCache`]: in process,
//! bounded, LRU with per-entry TTL; [`RedisCache`]: shared by every process on one Redis, with
//! TTLs), the per-request controls LiteLLM defines ([`CacheControls`]: `cache={"no-cache",
//! "no-store", "ttl", "s-maxage", "namespace", "use-cache"}` and `caching=True/False`), and
//! [`CacheHook`], the built-in hook that puts the cache on the hook pipeline:
//! - `pre` reads (and removes) the controls, computes the key, and on a hit answers with
//!   [`Pre::CacheHit`](crate::hooks::Pre::CacheHit): the upstream is not called, the pipeline
//!   marks the call as a cache hit and costs it at zero, and a streaming caller gets the answer
//!   replayed as chunks;
//! - `post` stores a successful answer under the key `pre` left in the call's
//!   [extensions](crate::hooks::HookContext::extensions); a streamed answer is stored when its
//!   stream completes, assembled from its chunks.
//!
//! Entries are JSON: the response and the wall-clock time it was stored (for `s-maxage`).
//! Backend failures never fail a call: a failed lookup is a miss, a failed store is skipped.
//! The controls are request parameters only for the cache: the pipeline strips them
//! ([`strip_controls`]) before any provider request is built, configured cache or not.

pub mod key;
mod memory;
mod redis_cache;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::hooks::{Hook, HookContext, Pre};
use crate::types::{ChatCompletion, ChatRequest};

pub use key::cache_key;
pub use memory::{MemoryCache, DEFAULT_MAX_ENTRIES};
pub use redis_cache::{RedisCache, DEFAULT_PREFIX, RETRY_AFTER_FAILURE};

/// The request parameters that carry cache controls (never sent upstream).
pub const CONTROL_PARAMS: &[&str] = &["cache", "caching"];

/// Removes the cache controls from request parameters.
pub fn strip_controls(params: &mut Map<String, Value>) {
    for k in CONTROL_PARAMS {
        params.remove(*k);
    }
}

/// Where cached answers live: serialized responses under string keys, each with a TTL.
pub trait CacheBackend: Send + Sync + std::fmt::Debug {
    /// A short name for logs ("memory", "redis").
    fn name(&self) -> &'static str;

    /// The value under `key`, or `None` when absent or expired.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<String>>>;

    /// Stores `value` under `key`; it expires after `ttl` (never by age when `None`).
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: String,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<()>>;

    /// Operations that a failing remote store turned into misses or skipped stores.
    fn degraded_ops(&self) -> u64 {
        0
    }
}

/// When calls use the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// Every call, unless it says `caching=False` (or `cache={"use-cache": False}`).
    #[default]
    DefaultOn,
    /// Only calls that say `caching=True` or `cache={"use-cache": True}`.
    DefaultOff,
}

impl CacheMode {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "default_on" => Ok(CacheMode::DefaultOn),
            "default_off" => Ok(CacheMode::DefaultOff),
            other => Err(Error::invalid_config(format!(
                "cache mode must be 'default_on' or 'default_off', got '{other}'"
            ))),
        }
    }
}

/// One request's cache controls (LiteLLM's `cache={...}` and `caching=...`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CacheControls {
    /// `caching=True/False`.
    pub caching: Option<bool>,
    /// `cache={"use-cache": bool}`.
    pub use_cache: Option<bool>,
    /// `no-cache`: do not look up (the answer is still stored).
    pub no_cache: bool,
    /// `no-store`: do not store the answer.
    pub no_store: bool,
    /// `ttl`: seconds the stored answer lives (instead of the cache's default).
    pub ttl: Option<Duration>,
    /// `s-maxage`: accept only an entry younger than this.
    pub s_maxage: Option<Duration>,
    /// `namespace`: look up and store in this namespace (instead of the cache's).
    pub namespace: Option<String>,
}

fn bad(msg: String) -> Error {
    Error::bad_request(msg)
}

fn flag(cache: &Map<String, Value>, name: &str) -> Result<Option<bool>> {
    match cache.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(bad(format!(
            "cache['{name}'] must be true or false, got {other}"
        ))),
    }
}

fn seconds(cache: &Map<String, Value>, name: &str, allow_zero: bool) -> Result<Option<Duration>> {
    let v = match cache.get(name) {
        None | Some(Value::Null) => return Ok(None),
        Some(v) => v,
    };
    let want = if allow_zero {
        "a number of seconds >= 0"
    } else {
        "a positive number of seconds"
    };
    let s = v
        .as_f64()
        .filter(|s| s.is_finite() && (*s > 0.0 || (allow_zero && *s == 0.0)))
        .ok_or_else(|| bad(format!("cache['{name}'] must be {want}, got {v}")))?;
    Duration::try_from_secs_f64(s)
        .map(Some)
        .map_err(|_| bad(format!("cache['{name}'] is out of range: {v}")))
}

impl CacheControls {
    /// Reads and removes the controls from request parameters. A malformed control is a
    /// `bad_request` naming it; keys of `cache` that are not controls are ignored.
    pub fn take(params: &mut Map<String, Value>) -> Result<Self> {
        let mut c = CacheControls::default();
        match params.remove("caching") {
            None | Some(Value::Null) => {}
            Some(Value::Bool(b)) => c.caching = Some(b),
            Some(other) => {
                return Err(bad(format!("caching must be true or false, got {other}")));
            }
        }
        let cache = match params.remove("cache") {
            None | Some(Value::Null) => return Ok(c),
            Some(Value::Object(o)) => o,
            Some(other) => {
                return Err(bad(format!(
                    "cache must be a dict of cache controls (no-cache, no-store, ttl, s-maxage, \
                     namespace, use-cache), got {other}"
                )));
            }
        };
        c.use_cache = flag(&cache, "use-cache")?;
        c.no_cache = flag(&cache, "no-cache")?.unwrap_or(false);
        c.no_store = flag(&cache, "no-store")?.unwrap_or(false);
        c.ttl = seconds(&cache, "ttl", false)?;
        c.s_maxage = match seconds(&cache, "s-maxage", true)? {
            Some(d) => Some(d),
            None => seconds(&cache, "s-max-age", true)?,
        };
        c.namespace = match cache.get("namespace") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(other) => {
                return Err(bad(format!(
                    "cache['namespace'] must be a non-empty string, got {other}"
                )));
            }
        };
        Ok(c)
    }

    /// Whether this call uses the cache at all in `mode`.
    pub fn enabled(&self, mode: CacheMode) -> bool {
        let asked = self.caching.or(self.use_cache);
        match mode {
            CacheMode::DefaultOn => asked != Some(false),
            CacheMode::DefaultOff => asked == Some(true),
        }
    }
}

/// How a [`CacheHook`] behaves.
#[derive(Debug, Clone, Default)]
pub struct CacheSettings {
    pub mode: CacheMode,
    /// The namespace of calls that name none (`None`: keys carry no namespace).
    pub namespace: Option<String>,
    /// TTL of stored answers when the call gives none (`None`: no expiry by age).
    pub default_ttl: Option<Duration>,
}

/// Counters of a [`CacheHook`], for metrics and tests.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub stores: AtomicU64,
    /// Lookups or stores the backend failed (counted as misses / skipped stores), and
    /// entries that could not be read.
    pub errors: AtomicU64,
}

/// What `pre` decided to store, for `post`.
#[derive(Debug)]
struct PendingStore {
    key: String,
    ttl: Option<Duration>,
}

#[derive(Serialize)]
struct EntryRef<'a> {
    stored_at_ms: u64,
    response: &'a ChatCompletion,
}

#[derive(Deserialize)]
struct Entry {
    stored_at_ms: u64,
    response: ChatCompletion,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The response cache on the hook pipeline (see the module docs).
#[derive(Debug)]
pub struct CacheHook {
    backend: Arc<dyn CacheBackend>,
    settings: CacheSettings,
    stats: CacheStats,
}

impl CacheHook {
    pub fn new(backend: Arc<dyn CacheBackend>, settings: CacheSettings) -> Self {
        CacheHook {
            backend,
            settings,
            stats: CacheStats::default(),
        }
    }

    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    pub fn backend(&self) -> &Arc<dyn CacheBackend> {
        &self.backend
    }

    pub fn settings(&self) -> &CacheSettings {
        &self.settings
    }

    async fn lookup(&self, key: &str, s_maxage: Option<Duration>) -> Option<ChatCompletion> {
        let raw = match self.backend.get(key).await {
            Ok(Some(raw)) => raw,
            Ok(None) => return None,
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(backend = self.backend.name(), error = %e, "response cache lookup failed");
                return None;
            }
        };
        let entry: Entry = match serde_json::from_str(&raw) {
            Ok(e) => e,
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(backend = self.backend.name(), error = %e, "unreadable response cache entry");
                return None;
            }
        };
        if let Some(max) = s_maxage {
            let age = now_ms().saturating_sub(entry.stored_at_ms);
            if u128::from(age) > max.as_millis() {
                return None;
            }
        }
        Some(entry.response)
    }
}

impl Hook for CacheHook {
    fn name(&self) -> &str {
        "cache"
    }

    /// After the budget (which may refuse a call before anything else), before the request
    /// log and other hooks that keep per-call state between `pre` and `post`.
    fn priority(&self) -> i32 {
        -50
    }

    fn pre<'a>(
        &'a self,
        ctx: &'a mut HookContext,
        req: &'a mut ChatRequest,
    ) -> BoxFuture<'a, Result<Pre>> {
        Box::pin(async move {
            let controls = match CacheControls::take(&mut req.params) {
                Ok(c) => c,
                Err(e) => return Ok(Pre::Reject(e.with_context("openai", &req.model))),
            };
            // A mock answer is not a model's answer: neither served nor stored.
            if ctx.mock || !controls.enabled(self.settings.mode) {
                return Ok(Pre::Continue);
            }
            let namespace = controls
                .namespace
                .as_deref()
                .or(self.settings.namespace.as_deref());
            let key = cache_key(namespace, ctx.caller.as_deref(), &ctx.model_group, req);
            let found = if controls.no_cache {
                None
            } else {
                self.lookup(&key, controls.s_maxage).await
            };
            if let Some(response) = found {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(Pre::CacheHit(Box::new(response)));
            }
            if !controls.no_cache {
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
            }
            if !controls.no_store {
                ctx.extensions.insert(PendingStore {
                    key,
                    ttl: controls.ttl.or(self.settings.default_ttl),
                });
            }
            Ok(Pre::Continue)
        })
    }

    fn post<'a>(
        &'a self,
        ctx: &'a HookContext,
        outcome: &'a mut Result<ChatCompletion>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let Some(pending) = ctx.extensions.get::<PendingStore>() else {
                return Ok(());
            };
            // Errors are not cached, nor a streamed call whose answer was not assembled.
            let Ok(response) = outcome else {
                return Ok(());
            };
            if response.choices.is_empty() {
                return Ok(());
            }
            let raw = serde_json::to_string(&EntryRef {
                stored_at_ms: now_ms(),
                response,
            })
            .map_err(|e| Error::new(crate::ErrorKind::Internal, format!("cache entry: {e}")))?;
            match self.backend.set(&pending.key, raw, pending.ttl).await {
                Ok(()) => {
                    self.stats.stores.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(backend = self.backend.name(), error = %e, "response cache store failed");
                }
            }
            Ok(())
        })
    }

    fn needs_streamed_response(&self, ctx: &HookContext) -> bool {
        ctx.extensions.get::<PendingStore>().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(o) => o,
            _ => Map::new(),
        }
    }

    #[test]
    fn controls_are_read_and_removed() {
        let mut p = params(json!({
            "temperature": 0,
            "caching": true,
            "cache": {"no-cache": true, "no-store": false, "ttl": 1.5, "s-maxage": 0, "namespace": "ns", "other": 1}
        }));
        let c = CacheControls::take(&mut p).unwrap();
        assert_eq!(p.keys().collect::<Vec<_>>(), ["temperature"]);
        assert_eq!(c.caching, Some(true));
        assert!(c.no_cache && !c.no_store);
        assert_eq!(c.ttl, Some(Duration::from_millis(1500)));
        assert_eq!(c.s_maxage, Some(Duration::ZERO));
        assert_eq!(c.namespace.as_deref(), Some("ns"));
    }

    #[test]
    fn malformed_controls_are_bad_requests() {
        for bad in [
            json!({"cache": {"ttl": "ten"}}),
            json!({"cache": {"ttl": 0}}),
            json!({"cache": {"ttl": -1}}),
            json!({"cache": {"ttl": 1e300}}),
            json!({"cache": {"s-maxage": -1}}),
            json!({"cache": {"no-cache": "yes"}}),
            json!({"cache": {"namespace": 3}}),
            json!({"cache": "no-cache"}),
            json!({"caching": "on"}),
        ] {
            let e = CacheControls::take(&mut params(bad.clone())).unwrap_err();
            assert_eq!(e.kind, crate::ErrorKind::BadRequest, "{bad}");
            assert!(e.message.starts_with("cach"), "{}", e.message);
        }
    }

    #[test]
    fn modes() {
        let on = CacheMode::DefaultOn;
        let off = CacheMode::DefaultOff;
        let c = |v: Value| CacheControls::take(&mut params(v)).unwrap();
        assert!(c(json!({})).enabled(on));
        assert!(!c(json!({"caching": false})).enabled(on));
        assert!(!c(json!({"cache": {"use-cache": false}})).enabled(on));
        assert!(!c(json!({})).enabled(off));
        assert!(c(json!({"caching": true})).enabled(off));
        assert!(c(json!({"cache": {"use-cache": true}})).enabled(off));
        assert_eq!(
            CacheMode::parse("default_off").unwrap(),
            CacheMode::DefaultOff
        );
        assert!(CacheMode::parse("sometimes").is_err());
    }
}
