//! Conversions between Python values and the core's types, done once per call.
//!
//! `kwargs` of `completion()` are split here: LLMux's own options (`api_key`, `num_retries`,
//! `timeout`, ...) go to `CallOptions`; LiteLLM-only keys that mean nothing upstream are
//! consumed; everything else (with `None` values dropped) is sent upstream as OpenAI
//! parameters, as LiteLLM does for OpenAI-compatible providers. The cache controls (`cache`,
//! `caching`) stay in the parameters for the cache hook, which removes them; the pipeline
//! strips them before any provider request is built.

use std::time::Duration;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};
use pythonize::{depythonize, pythonize};
use serde_json::{Map, Value};

use crate::pipeline::{CallMeta, CallOptions, Mock};
use crate::providers::Secret;

/// Keys LiteLLM accepts that are not sent upstream and that LLMux does not act on in this
/// call path (routing and logging features read them where those features live).
const CONSUMED: &[&str] = &[
    "metadata",
    "litellm_call_id",
    "litellm_logging_obj",
    "logger_fn",
    "model_list",
    "tags",
    "acompletion",
    "aembedding",
    "client",
    "shared_session",
    "proxy_server_request",
    "preset_cache_key",
    "model_info",
    "input_cost_per_token",
    "output_cost_per_token",
    "base_model",
    "no-log",
];

fn type_err(key: &str, want: &str) -> PyErr {
    PyTypeError::new_err(format!("{key} must be {want}"))
}

fn opt_string(v: &Bound<'_, PyAny>, key: &str) -> PyResult<Option<String>> {
    if v.is_none() {
        return Ok(None);
    }
    v.extract::<String>()
        .map(Some)
        .map_err(|_| type_err(key, "a string"))
}

fn seconds(v: &Bound<'_, PyAny>, key: &str) -> PyResult<Option<Duration>> {
    if v.is_none() {
        return Ok(None);
    }
    let s: f64 = v
        .extract()
        .map_err(|_| type_err(key, "a number of seconds"))?;
    match Duration::try_from_secs_f64(s) {
        Ok(d) if s > 0.0 => Ok(Some(d)),
        _ => Err(pyo3::exceptions::PyValueError::new_err(format!(
            "{key} must be a positive number of seconds, got {s}"
        ))),
    }
}

fn headers(v: &Bound<'_, PyAny>, key: &str, out: &mut Vec<(String, String)>) -> PyResult<()> {
    if v.is_none() {
        return Ok(());
    }
    let d = v
        .cast::<PyDict>()
        .map_err(|_| type_err(key, "a dict of strings"))?;
    for (k, val) in d.iter() {
        let k: String = k
            .extract()
            .map_err(|_| type_err(key, "a dict of strings"))?;
        let val: String = val.str()?.extract()?;
        out.push((k, val));
    }
    Ok(())
}

/// A message list: dicts, or objects with `model_dump()` (LiteLLM `Message`s appended back to
/// the conversation, pydantic models).
pub fn messages(v: &Bound<'_, PyAny>) -> PyResult<Vec<Value>> {
    let list = v
        .cast::<PyList>()
        .map_err(|_| type_err("messages", "a list of dicts"))?;
    let mut out = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let value: Value = if item.is_instance_of::<PyDict>() {
            depythonize(&item)
        } else if item.hasattr("model_dump")? {
            depythonize(&item.call_method0("model_dump")?)
        } else {
            return Err(type_err(&format!("messages[{i}]"), "a dict"));
        }
        .map_err(|e| {
            PyTypeError::new_err(format!("messages[{i}] is not JSON-serialisable: {e}"))
        })?;
        out.push(value);
    }
    Ok(out)
}

/// Splits `kwargs` into upstream parameters and call options.
pub fn split_kwargs(
    kwargs: Option<&Bound<'_, PyDict>>,
) -> PyResult<(Map<String, Value>, CallOptions)> {
    let mut params = Map::new();
    let mut opts = CallOptions {
        hooks: super::hooks::current(),
        admission: super::limits::current(),
        ..CallOptions::default()
    };
    let mut drop_list: Vec<String> = Vec::new();
    let Some(kwargs) = kwargs else {
        return Ok((params, opts));
    };
    for (k, v) in kwargs.iter() {
        let key = k
            .cast::<PyString>()
            .map_err(|_| PyTypeError::new_err("keyword names must be strings"))?;
        let key = key.to_cow()?;
        let key: &str = &key;
        match key {
            "api_base" | "base_url" => {
                if let Some(s) = opt_string(&v, key)? {
                    opts.endpoint.api_base = Some(s);
                }
            }
            // LiteLLM's name for Bedrock's endpoint; `api_base` wins when both are given.
            "aws_bedrock_runtime_endpoint" => {
                if let Some(s) = opt_string(&v, key)? {
                    opts.endpoint.api_base.get_or_insert(s);
                }
            }
            "api_key" => opts.endpoint.api_key = opt_string(&v, key)?.map(Secret::new),
            "custom_llm_provider" => opts.endpoint.custom_llm_provider = opt_string(&v, key)?,
            "api_version" => opts.endpoint.api_version = opt_string(&v, key)?,
            "azure_ad_token" => {
                opts.endpoint.azure_ad_token = opt_string(&v, key)?.map(Secret::new)
            }
            "aws_access_key_id" => opts.endpoint.aws_access_key_id = opt_string(&v, key)?,
            "aws_secret_access_key" => {
                opts.endpoint.aws_secret_access_key = opt_string(&v, key)?.map(Secret::new)
            }
            "aws_session_token" => {
                opts.endpoint.aws_session_token = opt_string(&v, key)?.map(Secret::new)
            }
            "aws_region_name" => opts.endpoint.aws_region_name = opt_string(&v, key)?,
            "drop_params" => opts.drop_params = !v.is_none() && v.is_truthy()?,
            "organization" => opts.endpoint.organization = opt_string(&v, key)?,
            "timeout" | "request_timeout" => {
                if let Some(t) = seconds(&v, key)? {
                    opts.timeout = t;
                }
            }
            "stream_timeout" => opts.stream_timeout = seconds(&v, key)?,
            "num_retries" | "max_retries" => {
                if !v.is_none() {
                    let n: u32 = v
                        .extract()
                        .map_err(|_| type_err(key, "a non-negative integer"))?;
                    // num_retries wins over max_retries when both are given.
                    if key == "num_retries" || opts.num_retries == 0 {
                        opts.num_retries = n;
                    }
                }
            }
            "extra_headers" | "headers" => headers(&v, key, &mut opts.extra_headers)?,
            "extra_body" => {
                if !v.is_none() {
                    let body: Map<String, Value> = depythonize(&v)
                        .map_err(|_| type_err("extra_body", "a JSON-serialisable dict"))?;
                    opts.extra_body = Some(body);
                }
            }
            "mock_response" => {
                if let Some(s) = opt_string(&v, key)? {
                    opts.mock = Some(Mock::parse(&s));
                }
            }
            "additional_drop_params" => {
                if !v.is_none() {
                    drop_list = v
                        .extract()
                        .map_err(|_| type_err(key, "a list of parameter names"))?;
                }
            }
            // Limits by team read the caller's team from LiteLLM's metadata keys.
            "metadata" => {
                if let Ok(d) = v.cast::<PyDict>() {
                    for name in ["team_id", "user_api_key_team_id"] {
                        if let Some(t) = d.get_item(name)? {
                            if let Ok(t) = t.extract::<String>() {
                                opts.team = Some(t);
                                break;
                            }
                        }
                    }
                }
            }
            k if CONSUMED.contains(&k) => {}
            _ => {
                if v.is_none() {
                    continue;
                }
                let value: Value = depythonize(&v).map_err(|e| {
                    PyTypeError::new_err(format!("parameter '{key}' is not JSON-serialisable: {e}"))
                })?;
                params.insert(key.to_owned(), value);
            }
        }
    }
    for name in drop_list {
        params.remove(&name);
    }
    Ok((params, opts))
}

/// `_hidden_params` as LiteLLM fills them for a direct call.
pub fn hidden<'py>(
    py: Python<'py>,
    meta: &CallMeta,
    caller_model: &str,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("custom_llm_provider", meta.provider)?;
    d.set_item("api_base", &meta.api_base)?;
    d.set_item("model_id", py.None())?;
    d.set_item("response_cost", meta.cost)?;
    d.set_item("litellm_model_name", caller_model)?;
    d.set_item("attempts", meta.attempts)?;
    if meta.cache_hit {
        d.set_item("cache_hit", true)?;
    }
    Ok(d)
}

pub fn to_py<'py, T: serde::Serialize>(py: Python<'py>, v: &T) -> PyResult<Bound<'py, PyAny>> {
    pythonize(py, v).map_err(|e| {
        pyo3::exceptions::PyValueError::new_err(format!("cannot convert response: {e}"))
    })
}
