//! The process's native hooks, configured from Python: the spend budget
//! (`llmux.set_budget` / `llmux.max_budget`), the response cache (`llmux.cache = Cache(...)`)
//! and the redacted request log (`llmux.set_request_log`). Every call made through the SDK
//! runs them.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::errors::to_pyerr;
use super::runtime::block_on;
use crate::cache::{
    CacheBackend, CacheHook, CacheMode, CacheSettings, MemoryCache, RedisCache,
    DEFAULT_PREFIX as CACHE_PREFIX,
};
use crate::hooks::builtin::{BudgetHook, BudgetScope, RequestLog};
use crate::hooks::{Hook, Pipeline};
use crate::redis::{RedisConfig, RedisPool, RedisTarget};

#[derive(Default)]
struct Configured {
    budget: Option<Arc<BudgetHook>>,
    cache: Option<Arc<CacheHook>>,
    log: Option<Arc<RequestLog>>,
    pipeline: Option<Arc<Pipeline>>,
}

static HOOKS: RwLock<Option<Configured>> = RwLock::new(None);

fn rebuild(c: &mut Configured) {
    let mut hooks: Vec<Arc<dyn Hook>> = Vec::new();
    if let Some(b) = &c.budget {
        hooks.push(b.clone());
    }
    if let Some(cache) = &c.cache {
        hooks.push(cache.clone());
    }
    if let Some(l) = &c.log {
        hooks.push(l.clone());
    }
    c.pipeline = (!hooks.is_empty()).then(|| Arc::new(Pipeline::new(hooks)));
}

fn update(f: impl FnOnce(&mut Configured)) {
    let mut g = HOOKS.write().unwrap_or_else(PoisonError::into_inner);
    let c = g.get_or_insert_with(Configured::default);
    f(c);
    rebuild(c);
}

/// The hooks every SDK call runs (none unless configured).
pub fn current() -> Option<Arc<Pipeline>> {
    HOOKS
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .and_then(|c| c.pipeline.clone())
}

/// Sets (or, with `None`, removes) the spend budget in USD. `window` in seconds (default: the
/// life of the process, or 30 days in Redis); `per_user` counts each OpenAI `user` apart;
/// `redis_url` shares the spend between processes.
#[pyfunction]
#[pyo3(signature = (max_budget, window=None, per_user=false, redis_url=None))]
pub fn set_budget(
    py: Python<'_>,
    max_budget: Option<f64>,
    window: Option<f64>,
    per_user: bool,
    redis_url: Option<String>,
) -> PyResult<()> {
    let Some(max) = max_budget else {
        update(|c| c.budget = None);
        return Ok(());
    };
    if !(max.is_finite() && max >= 0.0) {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "max_budget must be a non-negative number",
        ));
    }
    let scope = if per_user {
        BudgetScope::User
    } else {
        BudgetScope::Global
    };
    let hook = match redis_url {
        Some(url) => {
            let w =
                Duration::try_from_secs_f64(window.unwrap_or(30.0 * 86_400.0)).map_err(|_| {
                    pyo3::exceptions::PyValueError::new_err(
                        "budget_duration must be a positive number of seconds",
                    )
                })?;
            let cfg = RedisConfig::new(RedisTarget::Url(url));
            let pool = block_on(py, async move { RedisPool::connect(&cfg).await })?
                .map_err(|e| to_pyerr(py, e))?;
            BudgetHook::redis(max, w, scope, pool, "llmux")
        }
        None => {
            let w = match window {
                None => Duration::from_secs(100 * 365 * 86_400),
                Some(w) => Duration::try_from_secs_f64(w).map_err(|_| {
                    pyo3::exceptions::PyValueError::new_err(
                        "budget_duration must be a positive number of seconds",
                    )
                })?,
            };
            BudgetHook::local(max, w, scope)
        }
    };
    update(|c| c.budget = Some(Arc::new(hook)));
    Ok(())
}

/// The spend counted by the budget so far (global, or of `user`), or None without a budget.
#[pyfunction]
#[pyo3(signature = (user=None))]
pub fn current_spend(py: Python<'_>, user: Option<String>) -> PyResult<Option<f64>> {
    let budget = HOOKS
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .and_then(|c| c.budget.clone());
    let Some(b) = budget else { return Ok(None) };
    let spent = block_on(py, async move { b.current(user.as_deref()).await })?
        .map_err(|e| to_pyerr(py, e))?;
    Ok(Some(spent))
}

/// Writes one redacted JSON line per call to `path` (None stops).
#[pyfunction]
#[pyo3(signature = (path))]
pub fn set_request_log(py: Python<'_>, path: Option<std::path::PathBuf>) -> PyResult<()> {
    let log = match path {
        Some(p) => Some(Arc::new(RequestLog::open(&p).map_err(|e| to_pyerr(py, e))?)),
        None => None,
    };
    update(|c| c.log = log);
    Ok(())
}

/// How long the response cache waits to connect to Redis, and for each command: a slow Redis
/// costs a call at most this much before the lookup counts as a miss.
const CACHE_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const CACHE_COMMAND_TIMEOUT: Duration = Duration::from_millis(250);

fn ttl(v: Option<f64>, name: &str) -> PyResult<Option<Duration>> {
    match v {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 => {
            Duration::try_from_secs_f64(s).map(Some).map_err(|_| {
                pyo3::exceptions::PyValueError::new_err(format!("{name} is out of range"))
            })
        }
        Some(s) => Err(pyo3::exceptions::PyValueError::new_err(format!(
            "{name} must be a positive number of seconds, got {s}"
        ))),
    }
}

/// Sets (or, with `kind=None`, removes) the response cache: `kind` "local" (in this process,
/// at most `max_entries` answers, least recently used evicted first) or "redis" (on
/// `redis_url`, shared by every process on it, keys under `prefix`). `ttl` in seconds is the
/// default time to live of stored answers (none: no expiry by age); `namespace` prefixes every
/// key; `mode` is "default_on" or "default_off". Connecting to Redis happens on first use.
#[pyfunction]
#[pyo3(signature = (kind, mode="default_on", namespace=None, ttl_seconds=None, max_entries=200, redis_url=None, prefix=None))]
#[allow(clippy::too_many_arguments)]
pub fn set_cache(
    py: Python<'_>,
    kind: Option<&str>,
    mode: &str,
    namespace: Option<String>,
    ttl_seconds: Option<f64>,
    max_entries: usize,
    redis_url: Option<String>,
    prefix: Option<String>,
) -> PyResult<()> {
    let Some(kind) = kind else {
        update(|c| c.cache = None);
        return Ok(());
    };
    let mode = CacheMode::parse(mode).map_err(|e| to_pyerr(py, e))?;
    let default_ttl = ttl(ttl_seconds, "ttl")?;
    let backend: Arc<dyn CacheBackend> = match kind {
        "local" => Arc::new(MemoryCache::new(max_entries)),
        "redis" => {
            let Some(url) = redis_url else {
                return Err(pyo3::exceptions::PyValueError::new_err(
                    "a redis cache needs redis_url",
                ));
            };
            let mut cfg = RedisConfig::new(RedisTarget::Url(url));
            cfg.connect_timeout = CACHE_CONNECT_TIMEOUT;
            cfg.command_timeout = CACHE_COMMAND_TIMEOUT;
            Arc::new(RedisCache::new(
                cfg,
                prefix.as_deref().unwrap_or(CACHE_PREFIX),
            ))
        }
        other => {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "cache kind must be 'local' or 'redis', got '{other}'"
            )))
        }
    };
    let hook = CacheHook::new(
        backend,
        CacheSettings {
            mode,
            namespace: namespace.filter(|n| !n.is_empty()),
            default_ttl,
        },
    );
    update(|c| c.cache = Some(Arc::new(hook)));
    Ok(())
}

/// Counters of the response cache (`hits`, `misses`, `stores`, `errors`, and `degraded` for
/// Redis operations that failed or were skipped), or None without a cache.
#[pyfunction]
pub fn cache_stats(py: Python<'_>) -> PyResult<Option<Bound<'_, PyDict>>> {
    let cache = HOOKS
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .and_then(|c| c.cache.clone());
    let Some(cache) = cache else { return Ok(None) };
    let s = cache.stats();
    let d = PyDict::new(py);
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    d.set_item("hits", load(&s.hits))?;
    d.set_item("misses", load(&s.misses))?;
    d.set_item("stores", load(&s.stores))?;
    d.set_item("errors", load(&s.errors))?;
    d.set_item("degraded", cache.backend().degraded_ops())?;
    d.set_item("backend", cache.backend().name())?;
    Ok(Some(d))
}
