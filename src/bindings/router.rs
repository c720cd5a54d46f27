//! `NativeRouter`: the core `Router` for Python's `llmux.Router`. Converts `model_list` and
//! the settings once at construction; each call converts its arguments, routes, and converts
//! the result back (with `model_id`, `model_group` and attempted fallbacks in the hidden params).

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
use crate::config;
use crate::error::Result;
use crate::limiter::{LocalLimiter, RateLimitConfig, RateLimiter};
use crate::pipeline::{CallMeta, Completed};
use crate::redis::RedisConfig;
use crate::router::stats::{ClusterStats, LocalStats};
use crate::router::{Routed, Router};
use crate::streaming::BinaryStream;
use crate::types::{
    ChatCompletion, ChatRequest, EmbeddingRequest, EmbeddingResponse, ImageRequest, ImageResponse,
    TranscriptionResponse,
};

fn bad(msg: String) -> PyErr {
    PyValueError::new_err(msg)
}

fn cfg_err(e: crate::error::Error) -> PyErr {
    bad(e.message.clone())
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
        .map_err(cfg_err)?;
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
    let cfg = RedisConfig::from_json(redis).map_err(cfg_err)?;
    let lease = match s.get("stats_lease_ttl").filter(|v| !v.is_null()) {
        Some(v) => config::secs(v, "stats_lease_ttl").map_err(cfg_err)?,
        None => Duration::from_secs(120),
    };
    let explicit = s
        .get("rate_limit")
        .and_then(|r| r.get("distributed"))
        .is_some();
    let placement = config::limit_placement(rate_limit.as_ref(), explicit);
    let state = block_on(py, async move {
        config::shared_state(Some(&cfg), &placement, lease).await
    })?
    .map_err(|e| to_pyerr(py, e))?;
    Ok((state.stats, state.limiter, rate_limit))
}

/// A routed speech call for Python: `(NativeAudio, hidden)` with the routing details.
fn routed_audio<'py>(
    py: Python<'py>,
    r: Result<Routed<(BinaryStream, CallMeta)>>,
    group: &str,
) -> PyResult<Bound<'py, PyTuple>> {
    let routed = r.map_err(|e| to_pyerr(py, e))?;
    let i = info(&routed);
    let meta = routed.value.1.clone();
    let (a, _) = super::audio::audio_to_py(py, Ok(routed.value), group)?;
    let h = routed_hidden(py, &meta, group, &i)?;
    h.set_item(
        "_response_ms",
        meta.started.elapsed().as_secs_f64() * 1000.0,
    )?;
    PyTuple::new(py, [a, h.into_any()])
}

struct RoutedAudio(Result<Routed<(BinaryStream, CallMeta)>>, String);

impl Outcome for RoutedAudio {
    fn into_py(self: Box<Self>, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(routed_audio(py, self.0, &self.1)?.into_any().unbind())
    }
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
        let deployments = config::deployments(&entries).map_err(cfg_err)?;
        let s: Map<String, Value> = depythonize(settings_dict)
            .map_err(|e| PyTypeError::new_err(format!("router settings: {e}")))?;
        let (settings, budget) = config::router_settings(&s).map_err(cfg_err)?;
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

    #[pyo3(signature = (model, prompt, kwargs=None))]
    fn image_generation<'py>(
        &self,
        py: Python<'py>,
        model: String,
        prompt: String,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let (params, opts) = split_kwargs(kwargs)?;
        let req = ImageRequest {
            model: model.clone(),
            prompt,
            params,
        };
        let router = self.inner.clone();
        let r = block_on(
            py,
            async move { router.image_generation(req, &opts, &[]).await },
        )?;
        unary_to_py(py, r, &model)
    }

    #[pyo3(signature = (bridge, fut, model, prompt, kwargs=None))]
    fn aimage_generation(
        &self,
        bridge: &Bound<'_, Bridge>,
        fut: Py<PyAny>,
        model: String,
        prompt: String,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<TaskHandle> {
        let (params, opts) = split_kwargs(kwargs)?;
        let req = ImageRequest {
            model: model.clone(),
            prompt,
            params,
        };
        let router = self.inner.clone();
        submit(bridge, fut, async move {
            let r: Result<Routed<Completed<ImageResponse>>> =
                router.image_generation(req, &opts, &[]).await;
            RoutedUnary(r, model)
        })
    }

    #[pyo3(signature = (model, input, kwargs=None))]
    fn speech<'py>(
        &self,
        py: Python<'py>,
        model: String,
        input: String,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let (req, opts) = super::audio::speech_args(model.clone(), input, kwargs)?;
        let router = self.inner.clone();
        let r = block_on(py, async move { router.speech(req, &opts, &[]).await })?;
        routed_audio(py, r, &model)
    }

    #[pyo3(signature = (bridge, fut, model, input, kwargs=None))]
    fn aspeech(
        &self,
        bridge: &Bound<'_, Bridge>,
        fut: Py<PyAny>,
        model: String,
        input: String,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<TaskHandle> {
        let (req, opts) = super::audio::speech_args(model.clone(), input, kwargs)?;
        let router = self.inner.clone();
        submit(bridge, fut, async move {
            RoutedAudio(router.speech(req, &opts, &[]).await, model)
        })
    }

    #[pyo3(signature = (model, path, data, filename, kwargs=None))]
    fn transcription<'py>(
        &self,
        py: Python<'py>,
        model: String,
        path: Option<std::path::PathBuf>,
        data: Option<&Bound<'py, pyo3::types::PyBytes>>,
        filename: String,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let (req, opts) =
            super::audio::transcription_args(model.clone(), path, data, filename, kwargs)?;
        let router = self.inner.clone();
        let r = block_on(
            py,
            async move { router.transcription(req, &opts, &[]).await },
        )?;
        unary_to_py(py, r, &model)
    }

    #[pyo3(signature = (bridge, fut, model, path, data, filename, kwargs=None))]
    #[allow(clippy::too_many_arguments)]
    fn atranscription(
        &self,
        bridge: &Bound<'_, Bridge>,
        fut: Py<PyAny>,
        model: String,
        path: Option<std::path::PathBuf>,
        data: Option<&Bound<'_, pyo3::types::PyBytes>>,
        filename: String,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<TaskHandle> {
        let (req, opts) =
            super::audio::transcription_args(model.clone(), path, data, filename, kwargs)?;
        let router = self.inner.clone();
        submit(bridge, fut, async move {
            let r: Result<Routed<Completed<TranscriptionResponse>>> =
                router.transcription(req, &opts, &[]).await;
            RoutedUnary(r, model)
        })
    }

    #[pyo3(signature = (model, prompt, images, mask=None, kwargs=None))]
    #[allow(clippy::type_complexity)]
    fn image_edit<'py>(
        &self,
        py: Python<'py>,
        model: String,
        prompt: String,
        images: Vec<(
            Option<std::path::PathBuf>,
            Option<Bound<'py, pyo3::types::PyBytes>>,
            String,
        )>,
        mask: Option<(
            Option<std::path::PathBuf>,
            Option<Bound<'py, pyo3::types::PyBytes>>,
            String,
        )>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let (req, opts) =
            super::audio::image_edit_args(model.clone(), prompt, images, mask, kwargs)?;
        let router = self.inner.clone();
        let r = block_on(py, async move { router.image_edit(req, &opts, &[]).await })?;
        unary_to_py(py, r, &model)
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
