//! The process's native hooks, configured from Python: the spend budget
//! (`llmux.set_budget` / `llmux.max_budget`) and the redacted request log
//! (`llmux.set_request_log`). Every call made through the SDK runs them.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use pyo3::prelude::*;

use super::errors::to_pyerr;
use super::runtime::block_on;
use crate::hooks::builtin::{BudgetHook, BudgetScope, RequestLog};
use crate::hooks::{Hook, Pipeline};
use crate::redis::{RedisConfig, RedisPool, RedisTarget};

#[derive(Default)]
struct Configured {
    budget: Option<Arc<BudgetHook>>,
    log: Option<Arc<RequestLog>>,
    pipeline: Option<Arc<Pipeline>>,
}

static HOOKS: RwLock<Option<Configured>> = RwLock::new(None);

fn rebuild(c: &mut Configured) {
    let mut hooks: Vec<Arc<dyn Hook>> = Vec::new();
    if let Some(b) = &c.budget {
        hooks.push(b.clone());
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
            let w = Duration::from_secs_f64(window.unwrap_or(30.0 * 86_400.0));
            let cfg = RedisConfig::new(RedisTarget::Url(url));
            let pool = block_on(py, async move { RedisPool::connect(&cfg).await })?
                .map_err(|e| to_pyerr(py, e))?;
            BudgetHook::redis(max, w, scope, pool, "llmux")
        }
        None => {
            let w = window.map_or(
                Duration::from_secs(100 * 365 * 86_400),
                Duration::from_secs_f64,
            );
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
