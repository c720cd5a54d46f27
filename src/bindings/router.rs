//! `NativeRouter`: the core `Router` for Python's `llmux.Router`. Converts `model_list` and
//! the settings once at construction; each call converts its arguments, routes, and converts
//! the result back (with `model_id`, `model_group` and attempted fallbacks in the hidden params).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use pythonize::depythonize;
use serde_json::{Map, Value};

use super::bridge::{submit, Bridge, Outcome, TaskHandle};
use super::convert::{hidden, messages, split_kwargs, to_py};
use super::errors::to_pyerr;
use super::runtime::block_on;
use super::stream;
use crate::error::Result;
use crate::limiter::{
    FailPolicy, LocalLimiter, RateLimitConfig, RateLimiter, RedisLimiter, RedisLimiterOptions,
};
use crate::pipeline::{CallMeta, Completed, Mock};
use crate::pricing;
use crate::providers::{Endpoint, Secret};
use crate::redis::{RedisConfig, RedisPool};
use crate::router::budget::RetryBudget;
use crate::router::redis_stats::RedisStats;
use crate::router::stats::{ClusterStats, LocalStats};
use crate::router::strategy::Strategy;
use crate::router::{Deployment, Fallbacks, Routed, Router, Settings};
use crate::types::{ChatCompletion, ChatRequest, EmbeddingRequest, EmbeddingResponse};

fn bad(msg: String) -> PyErr {
    PyValueError::new_err(msg)
}

fn as_str(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn secs(v: &Value, what: &str) -> PyResult<Duration> {
    v.as_f64()
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| bad(format!("{what} must be a positive number of seconds")))
}

/// One `model_list` entry.
fn deployment(entry: &Value, index: usize) -> PyResult<Deployment> {
    let group = entry
        .get("model_name")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("model_list[{index}] needs a 'model_name'")))?
        .to_owned();
    let lp = entry
        .get("litellm_params")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            bad(format!(
                "model_list[{index}] ('{group}') needs 'litellm_params'"
            ))
        })?;
    let model = lp
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            bad(format!(
                "model_list[{index}] ('{group}') needs litellm_params.model"
            ))
        })?
        .to_owned();
    let info = entry.get("model_info").and_then(Value::as_object);
    let id = match info.and_then(|i| i.get("id")).and_then(as_str) {
        Some(id) => id,
        None => {
            // Stable across processes: the same entry gets the same id everywhere.
            let mut h = DefaultHasher::new();
            group.hash(&mut h);
            serde_json::to_string(lp).unwrap_or_default().hash(&mut h);
            format!("{:016x}", h.finish())
        }
    };
    let mut d = Deployment {
        id,
        group,
        model,
        endpoint: Endpoint::default(),
        rpm: entry.get("rpm").and_then(Value::as_u64),
        tpm: entry.get("tpm").and_then(Value::as_u64),
        weight: None,
        max_parallel_requests: None,
        timeout: None,
        tags: Vec::new(),
        cost_per_token: None,
        params: Map::new(),
        mock: None,
        extra_headers: Vec::new(),
    };
    let (mut cin, mut cout) = (None, None);
    for (k, v) in lp {
        if v.is_null() {
            continue;
        }
        let s = || as_str(v).ok_or_else(|| bad(format!("litellm_params.{k} must be a string")));
        match k.as_str() {
            "model" => {}
            "api_base" | "base_url" => d.endpoint.api_base = Some(s()?),
            "api_key" => d.endpoint.api_key = Some(Secret::new(s()?)),
            "api_version" => d.endpoint.api_version = Some(s()?),
            "organization" => d.endpoint.organization = Some(s()?),
            "custom_llm_provider" => d.endpoint.custom_llm_provider = Some(s()?),
            "azure_ad_token" => d.endpoint.azure_ad_token = Some(Secret::new(s()?)),
            "aws_access_key_id" => d.endpoint.aws_access_key_id = Some(s()?),
            "aws_secret_access_key" => d.endpoint.aws_secret_access_key = Some(Secret::new(s()?)),
            "aws_session_token" => d.endpoint.aws_session_token = Some(Secret::new(s()?)),
            "aws_region_name" => d.endpoint.aws_region_name = Some(s()?),
            "rpm" => d.rpm = v.as_u64(),
            "tpm" => d.tpm = v.as_u64(),
            "weight" => d.weight = v.as_f64(),
            "max_parallel_requests" => d.max_parallel_requests = v.as_u64(),
            "timeout" | "stream_timeout" if k == "timeout" => {
                d.timeout = Some(secs(v, "litellm_params.timeout")?)
            }
            "tags" => {
                d.tags = serde_json::from_value(v.clone())
                    .map_err(|_| bad("litellm_params.tags must be a list of strings".into()))?
            }
            "input_cost_per_token" => cin = v.as_f64(),
            "output_cost_per_token" => cout = v.as_f64(),
            "mock_response" => {
                if let Some(t) = v.as_str() {
                    d.mock = Some(Mock::parse(t));
                }
            }
            "extra_headers" => {
                let m: Map<String, Value> = serde_json::from_value(v.clone())
                    .map_err(|_| bad("litellm_params.extra_headers must be a dict".into()))?;
                d.extra_headers = m
                    .into_iter()
                    .filter_map(|(k, v)| as_str(&v).map(|v| (k, v)))
                    .collect();
            }
            // Retries and timeouts belong to the router.
            "max_retries" | "num_retries" | "stream_timeout" => {}
            _ => {
                d.params.insert(k.clone(), v.clone());
            }
        }
    }
    d.cost_per_token = match (cin, cout) {
        (Some(i), Some(o)) => Some((i, o)),
        (Some(i), None) => Some((i, 0.0)),
        (None, Some(o)) => Some((0.0, o)),
        (None, None) => pricing::lookup(None, &d.model).map(|e| {
            let f = |k: &str| e.get(k).and_then(Value::as_f64).unwrap_or(0.0);
            (f("input_cost_per_token"), f("output_cost_per_token"))
        }),
    };
    Ok(d)
}

/// `[{"gpt-4o": ["claude"]}, ...]` as pairs.
fn fallbacks(v: Option<&Value>, what: &str) -> PyResult<Fallbacks> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let list = v.as_array().ok_or_else(|| {
        bad(format!(
            "{what} must be a list of {{group: [fallback groups]}}"
        ))
    })?;
    let mut out = Vec::new();
    for item in list {
        let m = item
            .as_object()
            .ok_or_else(|| bad(format!("{what}: each item must be a dict")))?;
        for (k, to) in m {
            let to: Vec<String> = match to {
                Value::String(s) => vec![s.clone()],
                other => serde_json::from_value(other.clone())
                    .map_err(|_| bad(format!("{what}: '{k}' must map to a list of group names")))?,
            };
            out.push((k.clone(), to));
        }
    }
    Ok(out)
}

fn settings(s: &Map<String, Value>) -> PyResult<(Settings, RetryBudget)> {
    let mut out = Settings::default();
    let err = |e: crate::error::Error| bad(e.message.clone());
    if let Some(v) = s.get("routing_strategy").and_then(Value::as_str) {
        out.strategy = Strategy::parse(v).map_err(err)?;
    }
    if let Some(v) = s.get("num_retries").and_then(Value::as_u64) {
        out.num_retries = v as u32;
    }
    if let Some(v) = s.get("timeout").filter(|v| !v.is_null()) {
        out.timeout = secs(v, "timeout")?;
    }
    if let Some(v) = s.get("allowed_fails").and_then(Value::as_u64) {
        out.allowed_fails = v;
    }
    if let Some(v) = s.get("cooldown_time").filter(|v| !v.is_null()) {
        out.cooldown_time = Duration::from_secs_f64(
            v.as_f64()
                .filter(|f| *f >= 0.0)
                .ok_or_else(|| bad("cooldown_time must be >= 0".into()))?,
        );
    }
    if let Some(v) = s.get("max_fallbacks").and_then(Value::as_u64) {
        out.max_fallbacks = v as usize;
    }
    out.disable_cooldowns = s
        .get("disable_cooldowns")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    out.fallbacks = fallbacks(s.get("fallbacks"), "fallbacks")?;
    out.context_window_fallbacks = fallbacks(
        s.get("context_window_fallbacks"),
        "context_window_fallbacks",
    )?;
    out.content_policy_fallbacks = fallbacks(
        s.get("content_policy_fallbacks"),
        "content_policy_fallbacks",
    )?;
    let budget = match s.get("retry_budget").and_then(Value::as_object) {
        None => RetryBudget::default(),
        Some(b) => RetryBudget::new(
            b.get("ratio").and_then(Value::as_f64).unwrap_or(0.2),
            b.get("min_per_window").and_then(Value::as_u64).unwrap_or(3),
            Duration::from_secs_f64(b.get("window").and_then(Value::as_f64).unwrap_or(10.0)),
        ),
    };
    Ok((out, budget))
}

fn routed_hidden<'py>(
    py: Python<'py>,
    meta: &CallMeta,
    group: &str,
    r: &RoutedInfo,
) -> PyResult<Bound<'py, PyDict>> {
    let h = hidden(py, meta, group)?;
    h.set_item("model_id", &r.deployment_id)?;
    h.set_item("model_group", &r.model_group)?;
    h.set_item("attempts", r.attempts)?;
    let extra = PyDict::new(py);
    if r.attempted_fallbacks > 0 {
        extra.set_item("x-litellm-attempted-fallbacks", r.attempted_fallbacks)?;
    }
    h.set_item("additional_headers", extra)?;
    Ok(h)
}

struct RoutedInfo {
    deployment_id: String,
    model_group: String,
    attempted_fallbacks: u32,
    attempts: u32,
}

fn info<T>(r: &Routed<T>) -> RoutedInfo {
    RoutedInfo {
        deployment_id: r.deployment_id.clone(),
        model_group: r.model_group.clone(),
        attempted_fallbacks: r.attempted_fallbacks,
        attempts: r.attempts,
    }
}

/// A routed unary result for Python: `(response, hidden)`.
struct RoutedUnary<T>(Result<Routed<Completed<T>>>, String);

fn unary_to_py<'py, T: serde::Serialize>(
    py: Python<'py>,
    r: Result<Routed<Completed<T>>>,
    group: &str,
) -> PyResult<Bound<'py, PyTuple>> {
    let routed = r.map_err(|e| to_pyerr(py, e))?;
    let i = info(&routed);
    let done = routed.value;
    let h = routed_hidden(py, &done.meta, group, &i)?;
    h.set_item("_response_ms", done.elapsed.as_secs_f64() * 1000.0)?;
    PyTuple::new(py, [to_py(py, &done.response)?, h.into_any()])
}

impl<T: serde::Serialize + Send + 'static> Outcome for RoutedUnary<T> {
    fn into_py(self: Box<Self>, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(unary_to_py(py, self.0, &self.1)?.into_any().unbind())
    }
}

/// A routed stream for Python: `(NativeStream, first_batch, hidden)`.
struct RoutedStream(Result<(stream::Opened, RoutedInfo)>, String);

async fn open_routed(
    router: Arc<Router>,
    req: ChatRequest,
    opts: crate::pipeline::CallOptions,
    tags: Vec<String>,
    group: String,
) -> RoutedStream {
    let r = match router.completion_stream(req, &opts, &tags).await {
        Ok(routed) => {
            let i = info(&routed);
            stream::open(Ok(routed.value), group.clone())
                .await
                .map(|o| (o, i))
        }
        Err(e) => Err(e),
    };
    RoutedStream(r, group)
}

fn stream_to_py<'py>(py: Python<'py>, r: RoutedStream) -> PyResult<Bound<'py, PyTuple>> {
    let (opened, i) = r.0.map_err(|e| to_pyerr(py, e))?;
    let meta = opened.meta().clone();
    let t = stream::opened_to_py(py, Ok(opened))?;
    let h = routed_hidden(py, &meta, &r.1, &i)?;
    // Merge the routing details into the stream's own hidden params.
    let native = t.get_item(0)?;
    let own = native.getattr("hidden_params")?;
    own.call_method1("update", (h,))?;
    Ok(t)
}

impl Outcome for RoutedStream {
    fn into_py(self: Box<Self>, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(stream_to_py(py, *self)?.into_any().unbind())
    }
}

/// In-process stats and limits, or Redis-backed ones shared by every process on the same
/// Redis. Deployment limits follow the Redis setting; the `rate_limit` block may keep its own
/// limits in process (`distributed: false`) and sets the failure policy.
type SharedState = (
    Arc<dyn ClusterStats>,
    Arc<dyn RateLimiter>,
    Option<RateLimitConfig>,
);

fn shared_state(py: Python<'_>, s: &Map<String, Value>) -> PyResult<SharedState> {
    let rate_limit = s
        .get("rate_limit")
        .filter(|v| !v.is_null())
        .map(RateLimitConfig::from_json)
        .transpose()
        .map_err(|e| bad(e.message.clone()))?;
    let Some(redis) = s.get("redis").filter(|v| !v.is_null()) else {
        if rate_limit.as_ref().is_some_and(|r| r.distributed) {
            return Err(bad(
                "rate_limit.distributed is true but no Redis is configured (redis_url, redis_host, ...)".into(),
            ));
        }
        return Ok((
            Arc::new(LocalStats::new()),
            Arc::new(LocalLimiter::new()),
            rate_limit,
        ));
    };
    let cfg = RedisConfig::from_json(redis).map_err(|e| bad(e.message.clone()))?;
    let lease = match s.get("stats_lease_ttl").filter(|v| !v.is_null()) {
        Some(v) => secs(v, "stats_lease_ttl")?,
        None => Duration::from_secs(120),
    };
    let policy = rate_limit
        .as_ref()
        .map_or(FailPolicy::Local, |r| r.on_redis_failure);
    let local_limits = rate_limit.as_ref().is_some_and(|r| !r.distributed)
        && s.get("rate_limit")
            .and_then(|r| r.get("distributed"))
            .is_some();
    let (pool, limiter) = block_on(py, async move {
        let pool = RedisPool::connect(&cfg).await?;
        let limiter: Arc<dyn RateLimiter> = if local_limits {
            Arc::new(LocalLimiter::new())
        } else {
            let opts = RedisLimiterOptions {
                policy,
                ..Default::default()
            };
            RedisLimiter::with_pool(pool.clone(), opts).await
        };
        Ok::<_, crate::Error>((pool, limiter))
    })?
    .map_err(|e| to_pyerr(py, e))?;
    Ok((
        Arc::new(RedisStats::new(pool, "llmux", lease)),
        limiter,
        rate_limit,
    ))
}

#[pyclass(module = "llmux._llmux", frozen)]
pub struct NativeRouter {
    inner: Arc<Router>,
}

fn chat_args(
    model: &str,
    msgs: &Bound<'_, PyAny>,
    kwargs: Option<&Bound<'_, PyDict>>,
) -> PyResult<(ChatRequest, crate::pipeline::CallOptions)> {
    let (params, opts) = split_kwargs(kwargs)?;
    Ok((
        ChatRequest {
            model: model.to_owned(),
            messages: messages(msgs)?,
            params,
        },
        opts,
    ))
}

#[pymethods]
impl NativeRouter {
    #[new]
    fn new(
        py: Python<'_>,
        model_list: &Bound<'_, PyList>,
        settings_dict: &Bound<'_, PyDict>,
    ) -> PyResult<Self> {
        let entries: Vec<Value> = depythonize(model_list)
            .map_err(|e| PyTypeError::new_err(format!("model_list: {e}")))?;
        let deployments = entries
            .iter()
            .enumerate()
            .map(|(i, e)| deployment(e, i))
            .collect::<PyResult<Vec<_>>>()?;
        let s: Map<String, Value> = depythonize(settings_dict)
            .map_err(|e| PyTypeError::new_err(format!("router settings: {e}")))?;
        let (settings, budget) = settings(&s)?;
        let (stats, limiter, rate_limit) = shared_state(py, &s)?;
        let router = Router::new(deployments, settings, stats, budget)
            .map_err(|e| bad(e.message.clone()))?
            .with_limits(limiter, rate_limit);
        Ok(NativeRouter {
            inner: Arc::new(router),
        })
    }

    #[pyo3(signature = (model, messages, kwargs=None, tags=Vec::new()))]
    fn completion<'py>(
        &self,
        py: Python<'py>,
        model: String,
        messages: &Bound<'py, PyAny>,
        kwargs: Option<&Bound<'py, PyDict>>,
        tags: Vec<String>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let (req, opts) = chat_args(&model, messages, kwargs)?;
        let router = self.inner.clone();
        let r = block_on(
            py,
            async move { router.completion(req, &opts, &tags).await },
        )?;
        unary_to_py(py, r, &model)
    }

    #[pyo3(signature = (bridge, fut, model, messages, kwargs=None, tags=Vec::new()))]
    fn acompletion(
        &self,
        bridge: &Bound<'_, Bridge>,
        fut: Py<PyAny>,
        model: String,
        messages: &Bound<'_, PyAny>,
        kwargs: Option<&Bound<'_, PyDict>>,
        tags: Vec<String>,
    ) -> PyResult<TaskHandle> {
        let (req, opts) = chat_args(&model, messages, kwargs)?;
        let router = self.inner.clone();
        submit(bridge, fut, async move {
            let r: Result<Routed<Completed<ChatCompletion>>> =
                router.completion(req, &opts, &tags).await;
            RoutedUnary(r, model)
        })
    }

    #[pyo3(signature = (model, messages, kwargs=None, tags=Vec::new()))]
    fn completion_stream<'py>(
        &self,
        py: Python<'py>,
        model: String,
        messages: &Bound<'py, PyAny>,
        kwargs: Option<&Bound<'py, PyDict>>,
        tags: Vec<String>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let (req, opts) = chat_args(&model, messages, kwargs)?;
        let r = block_on(py, open_routed(self.inner.clone(), req, opts, tags, model))?;
        stream_to_py(py, r)
    }

    #[pyo3(signature = (bridge, fut, model, messages, kwargs=None, tags=Vec::new()))]
    fn acompletion_stream(
        &self,
        bridge: &Bound<'_, Bridge>,
        fut: Py<PyAny>,
        model: String,
        messages: &Bound<'_, PyAny>,
        kwargs: Option<&Bound<'_, PyDict>>,
        tags: Vec<String>,
    ) -> PyResult<TaskHandle> {
        let (req, opts) = chat_args(&model, messages, kwargs)?;
        submit(
            bridge,
            fut,
            open_routed(self.inner.clone(), req, opts, tags, model),
        )
    }

    #[pyo3(signature = (model, input, kwargs=None))]
    fn embedding<'py>(
        &self,
        py: Python<'py>,
        model: String,
        input: &Bound<'py, PyAny>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let (params, opts) = split_kwargs(kwargs)?;
        let input: Value =
            depythonize(input).map_err(|e| PyTypeError::new_err(format!("input: {e}")))?;
        let req = EmbeddingRequest {
            model: model.clone(),
            input,
            params,
        };
        let router = self.inner.clone();
        let r = block_on(py, async move { router.embedding(req, &opts, &[]).await })?;
        unary_to_py(py, r, &model)
    }

    #[pyo3(signature = (bridge, fut, model, input, kwargs=None))]
    fn aembedding(
        &self,
        bridge: &Bound<'_, Bridge>,
        fut: Py<PyAny>,
        model: String,
        input: &Bound<'_, PyAny>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<TaskHandle> {
        let (params, opts) = split_kwargs(kwargs)?;
        let input: Value =
            depythonize(input).map_err(|e| PyTypeError::new_err(format!("input: {e}")))?;
        let req = EmbeddingRequest {
            model: model.clone(),
            input,
            params,
        };
        let router = self.inner.clone();
        submit(bridge, fut, async move {
            let r: Result<Routed<Completed<EmbeddingResponse>>> =
                router.embedding(req, &opts, &[]).await;
            RoutedUnary(r, model)
        })
    }

    /// The limiter's counters: a dict.
    fn rate_limit_stats(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        super::limits::stats_to_py(py, &self.inner.limiter().stats())
    }

    /// Every deployment with its stats: a list of dicts.
    fn deployment_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let router = self.inner.clone();
        let rows = block_on(py, async move { router.deployment_stats().await })?
            .map_err(|e| to_pyerr(py, e))?;
        let out = PyList::empty(py);
        for (d, s) in rows {
            let row = PyDict::new(py);
            row.set_item("model_id", &d.id)?;
            row.set_item("model_group", &d.group)?;
            row.set_item("model", &d.model)?;
            row.set_item("in_flight", s.in_flight)?;
            row.set_item("latency_ewma_ms", s.latency_ewma_ms)?;
            row.set_item("ttft_ewma_ms", s.ttft_ewma_ms)?;
            row.set_item("requests_this_minute", s.requests_this_minute)?;
            row.set_item("tokens_this_minute", s.tokens_this_minute)?;
            row.set_item("fails_this_minute", s.fails_this_minute)?;
            row.set_item("successes", s.successes)?;
            row.set_item("failures", s.failures)?;
            row.set_item(
                "cooldown_remaining",
                s.cooldown_remaining.map(|c| c.as_secs_f64()),
            )?;
            out.append(row)?;
        }
        Ok(out)
    }

    /// The retry budget's counters.
    fn retry_budget<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let b = self.inner.budget();
        let d = PyDict::new(py);
        d.set_item("requests", b.requests)?;
        d.set_item("retries", b.retries)?;
        d.set_item("allowed_retries", b.allowed_retries)?;
        d.set_item("exhausted", b.exhausted)?;
        Ok(d)
    }
}
