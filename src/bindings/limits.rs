//! The process's rate limit for SDK calls, configured from Python (`llmux.set_rate_limit`,
//! `llmux.rate_limit`), and the limiter counters shown to Python.

use std::sync::{Arc, PoisonError, RwLock};

use pyo3::prelude::*;
use pyo3::types::PyDict;
use pythonize::{depythonize, pythonize};
use serde_json::{json, Value};

use super::errors::to_pyerr;
use super::runtime::block_on;
use crate::error::Error;
use crate::limiter::{build_limiter, Admission, LimiterStats, RateLimitConfig};
use crate::redis::RedisConfig;

static LIMITS: RwLock<Option<Arc<Admission>>> = RwLock::new(None);

/// The rate limit every SDK call passes (none unless configured).
pub fn current() -> Option<Arc<Admission>> {
    LIMITS
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

fn json_of(v: Option<&Bound<'_, PyDict>>, what: &str) -> PyResult<Option<Value>> {
    v.map(|d| {
        depythonize::<Value>(d.as_any())
            .map_err(|e| pyo3::exceptions::PyTypeError::new_err(format!("{what}: {e}")))
    })
    .transpose()
}

/// Sets (or, with `None`, removes) the rate limit of every SDK call of this process. `config`
/// is the `rate_limit` block; `redis` the `redis` block (needed when `distributed` is true).
#[pyfunction]
#[pyo3(signature = (config, redis=None))]
pub fn set_rate_limit(
    py: Python<'_>,
    config: Option<&Bound<'_, PyDict>>,
    redis: Option<&Bound<'_, PyDict>>,
) -> PyResult<()> {
    let Some(config) = json_of(config, "rate_limit")? else {
        *LIMITS.write().unwrap_or_else(PoisonError::into_inner) = None;
        return Ok(());
    };
    let cfg = RateLimitConfig::from_json(&config).map_err(|e| to_pyerr(py, e))?;
    let redis = json_of(redis, "redis")?
        .map(|r| RedisConfig::from_json(&r))
        .transpose()
        .map_err(|e| to_pyerr(py, e))?;
    if !cfg.is_active() {
        *LIMITS.write().unwrap_or_else(PoisonError::into_inner) = None;
        return Ok(());
    }
    let limiter = block_on(py, {
        let cfg = cfg.clone();
        async move { build_limiter(&cfg, redis.as_ref()).await }
    })?
    .map_err(|e| to_pyerr(py, e))?;
    *LIMITS.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(Admission {
        limiter,
        config: cfg,
    }));
    Ok(())
}

/// The limiter's counters as a dict.
pub(crate) fn stats_to_py(py: Python<'_>, s: &LimiterStats) -> PyResult<Py<PyAny>> {
    let v = json!({
        "admitted": s.admitted,
        "denied": s.denied,
        "redis_errors": s.redis_errors,
        "fallback_admitted": s.fallback_admitted,
        "fallback_denied": s.fallback_denied,
        "breaker_open": s.breaker_open,
        "breaker_trips": s.breaker_trips,
        "live_processes": s.live_processes,
        "settles_dropped": s.settles_dropped,
        "script_calls": s.script_calls,
        "blocks": s.blocks,
        "prefetched": s.prefetched,
    });
    Ok(pythonize(py, &v)
        .map_err(|e| to_pyerr(py, Error::new(crate::ErrorKind::Internal, e.to_string())))?
        .unbind())
}

/// Counters of the SDK's rate limiter (None without one).
#[pyfunction]
pub fn rate_limit_stats(py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
    current()
        .map(|a| stats_to_py(py, &a.limiter.stats()))
        .transpose()
}
