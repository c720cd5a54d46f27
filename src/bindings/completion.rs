//! `completion`, `acompletion`, their streaming forms, and embeddings: convert, call the
//! pipeline, convert back. Sync forms block without the GIL; async forms return awaitables.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use serde_json::Value;

use super::convert::{hidden, messages, split_kwargs, to_py};
use super::errors::to_pyerr;
use super::runtime::block_on;
use super::stream::NativeStream;
use crate::error::Result;
use crate::pipeline::{self, CallOptions, Completed};
use crate::types::{ChatCompletion, ChatRequest, EmbeddingRequest, EmbeddingResponse};

fn chat_args(
    model: String,
    msgs: &Bound<'_, PyAny>,
    kwargs: Option<&Bound<'_, PyDict>>,
) -> PyResult<(ChatRequest, CallOptions)> {
    let (params, opts) = split_kwargs(kwargs)?;
    Ok((
        ChatRequest {
            model,
            messages: messages(msgs)?,
            params,
        },
        opts,
    ))
}

/// `(response_dict, hidden_params)` for Python to wrap.
fn unary_result<'py, T: serde::Serialize>(
    py: Python<'py>,
    r: Result<Completed<T>>,
    caller_model: &str,
) -> PyResult<Bound<'py, PyTuple>> {
    match r {
        Ok(done) => {
            let h = hidden(py, &done.meta, caller_model)?;
            h.set_item("_response_ms", done.elapsed.as_secs_f64() * 1000.0)?;
            PyTuple::new(py, [to_py(py, &done.response)?, h.into_any()])
        }
        Err(e) => Err(to_pyerr(py, e)),
    }
}

#[pyfunction]
#[pyo3(signature = (model, messages, kwargs=None))]
pub fn completion<'py>(
    py: Python<'py>,
    model: String,
    messages: &Bound<'py, PyAny>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyTuple>> {
    let (req, opts) = chat_args(model.clone(), messages, kwargs)?;
    let r = block_on(py, async move { pipeline::completion(req, &opts).await })?;
    unary_result(py, r, &model)
}

/// A finished call carried back into Python by the async bridge.
pub struct Unary<T>(Result<Completed<T>>, String);

impl<'py, T: serde::Serialize> IntoPyObject<'py> for Unary<T> {
    type Target = PyTuple;
    type Output = Bound<'py, PyTuple>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        unary_result(py, self.0, &self.1)
    }
}

#[pyfunction]
#[pyo3(signature = (model, messages, kwargs=None))]
pub fn acompletion<'py>(
    py: Python<'py>,
    model: String,
    messages: &Bound<'py, PyAny>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let (req, opts) = chat_args(model.clone(), messages, kwargs)?;
    pyo3_async_runtimes::tokio::future_into_py(py, async move {
        let r: Result<Completed<ChatCompletion>> = pipeline::completion(req, &opts).await;
        Ok(Unary(r, model))
    })
}

#[pyfunction]
#[pyo3(signature = (model, messages, kwargs=None))]
pub fn completion_stream<'py>(
    py: Python<'py>,
    model: String,
    messages: &Bound<'py, PyAny>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<NativeStream> {
    let (req, opts) = chat_args(model.clone(), messages, kwargs)?;
    let opened = block_on(
        py,
        async move { pipeline::completion_stream(req, &opts).await },
    )?;
    match opened {
        Ok((stream, meta)) => NativeStream::new(py, stream, &meta, &model),
        Err(e) => Err(to_pyerr(py, e)),
    }
}

/// An opened stream carried back into Python by the async bridge.
pub struct Opened(
    Result<(crate::streaming::ChatStream, pipeline::CallMeta)>,
    String,
);

impl<'py> IntoPyObject<'py> for Opened {
    type Target = NativeStream;
    type Output = Bound<'py, NativeStream>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        match self.0 {
            Ok((stream, meta)) => Bound::new(py, NativeStream::new(py, stream, &meta, &self.1)?),
            Err(e) => Err(to_pyerr(py, e)),
        }
    }
}

#[pyfunction]
#[pyo3(signature = (model, messages, kwargs=None))]
pub fn acompletion_stream<'py>(
    py: Python<'py>,
    model: String,
    messages: &Bound<'py, PyAny>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let (req, opts) = chat_args(model.clone(), messages, kwargs)?;
    pyo3_async_runtimes::tokio::future_into_py(py, async move {
        let r = pipeline::completion_stream(req, &opts).await;
        Ok(Opened(r, model))
    })
}

fn embedding_args(
    model: String,
    input: &Bound<'_, PyAny>,
    kwargs: Option<&Bound<'_, PyDict>>,
) -> PyResult<(EmbeddingRequest, CallOptions)> {
    let (params, opts) = split_kwargs(kwargs)?;
    let input: Value = pythonize::depythonize(input).map_err(|e| {
        pyo3::exceptions::PyTypeError::new_err(format!(
            "input must be a string, a list of strings or a list of token lists: {e}"
        ))
    })?;
    Ok((
        EmbeddingRequest {
            model,
            input,
            params,
        },
        opts,
    ))
}

#[pyfunction]
#[pyo3(signature = (model, input, kwargs=None))]
pub fn embedding<'py>(
    py: Python<'py>,
    model: String,
    input: &Bound<'py, PyAny>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyTuple>> {
    let (req, opts) = embedding_args(model.clone(), input, kwargs)?;
    let r = block_on(py, async move { pipeline::embedding(req, &opts).await })?;
    unary_result(py, r, &model)
}

#[pyfunction]
#[pyo3(signature = (model, input, kwargs=None))]
pub fn aembedding<'py>(
    py: Python<'py>,
    model: String,
    input: &Bound<'py, PyAny>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let (req, opts) = embedding_args(model.clone(), input, kwargs)?;
    pyo3_async_runtimes::tokio::future_into_py(py, async move {
        let r: Result<Completed<EmbeddingResponse>> = pipeline::embedding(req, &opts).await;
        Ok(Unary(r, model))
    })
}
