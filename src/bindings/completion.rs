//! `completion`, `acompletion`, their streaming forms, embeddings and images: convert, call the
//! pipeline, convert back. Sync forms block without the GIL; async forms return awaitables.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use serde_json::Value;

use super::bridge::{submit, Bridge, Outcome, TaskHandle};
use super::convert::{hidden, messages, split_kwargs, to_py};
use super::errors::to_pyerr;
use super::runtime::block_on;
use super::stream;
use crate::error::Result;
use crate::pipeline::{self, CallOptions, Completed};
use crate::types::{
    ChatCompletion, ChatRequest, EmbeddingRequest, EmbeddingResponse, ImageRequest, ImageResponse,
};

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
pub(crate) fn unary_result<'py, T: serde::Serialize>(
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

/// A finished call carried back into Python by the asyncio bridge.
pub struct Unary<T>(pub Result<Completed<T>>, pub String);

impl<T: serde::Serialize + Send + 'static> Outcome for Unary<T> {
    fn into_py(self: Box<Self>, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(unary_result(py, self.0, &self.1)?.into_any().unbind())
    }
}

/// Starts a chat completion; `fut` (an asyncio future) gets `(response, hidden)`.
#[pyfunction]
#[pyo3(signature = (bridge, fut, model, messages, kwargs=None))]
pub fn acompletion<'py>(
    bridge: &Bound<'py, Bridge>,
    fut: Py<PyAny>,
    model: String,
    messages: &Bound<'py, PyAny>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<TaskHandle> {
    let (req, opts) = chat_args(model.clone(), messages, kwargs)?;
    submit(bridge, fut, async move {
        let r: Result<Completed<ChatCompletion>> = pipeline::completion(req, &opts).await;
        Unary(r, model)
    })
}

/// Opens a chat stream (blocking, GIL released): `(NativeStream, first_batch)`.
#[pyfunction]
#[pyo3(signature = (model, messages, kwargs=None))]
pub fn completion_stream<'py>(
    py: Python<'py>,
    model: String,
    messages: &Bound<'py, PyAny>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyTuple>> {
    let (req, opts) = chat_args(model.clone(), messages, kwargs)?;
    let r = block_on(py, async move {
        stream::open(pipeline::completion_stream(req, &opts).await, model).await
    })?;
    stream::opened_to_py(py, r)
}

/// Opens a chat stream; `fut` gets `(NativeStream, first_batch)`.
#[pyfunction]
#[pyo3(signature = (bridge, fut, model, messages, kwargs=None))]
pub fn acompletion_stream<'py>(
    bridge: &Bound<'py, Bridge>,
    fut: Py<PyAny>,
    model: String,
    messages: &Bound<'py, PyAny>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<TaskHandle> {
    let (req, opts) = chat_args(model.clone(), messages, kwargs)?;
    submit(bridge, fut, async move {
        stream::open(pipeline::completion_stream(req, &opts).await, model).await
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

/// Starts an embedding call; `fut` gets `(response, hidden)`.
#[pyfunction]
#[pyo3(signature = (bridge, fut, model, input, kwargs=None))]
pub fn aembedding<'py>(
    bridge: &Bound<'py, Bridge>,
    fut: Py<PyAny>,
    model: String,
    input: &Bound<'py, PyAny>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<TaskHandle> {
    let (req, opts) = embedding_args(model.clone(), input, kwargs)?;
    submit(bridge, fut, async move {
        let r: Result<Completed<EmbeddingResponse>> = pipeline::embedding(req, &opts).await;
        Unary(r, model)
    })
}

fn image_args(
    model: String,
    prompt: String,
    kwargs: Option<&Bound<'_, PyDict>>,
) -> PyResult<(ImageRequest, CallOptions)> {
    let (params, opts) = split_kwargs(kwargs)?;
    Ok((
        ImageRequest {
            model,
            prompt,
            params,
        },
        opts,
    ))
}

/// Blocking image generation (GIL released): `(response, hidden)`.
#[pyfunction]
#[pyo3(signature = (model, prompt, kwargs=None))]
pub fn image_generation<'py>(
    py: Python<'py>,
    model: String,
    prompt: String,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyTuple>> {
    let (req, opts) = image_args(model.clone(), prompt, kwargs)?;
    let r = block_on(
        py,
        async move { pipeline::image_generation(req, &opts).await },
    )?;
    unary_result(py, r, &model)
}

/// Starts an image generation; `fut` gets `(response, hidden)`.
#[pyfunction]
#[pyo3(signature = (bridge, fut, model, prompt, kwargs=None))]
pub fn aimage_generation<'py>(
    bridge: &Bound<'py, Bridge>,
    fut: Py<PyAny>,
    model: String,
    prompt: String,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<TaskHandle> {
    let (req, opts) = image_args(model.clone(), prompt, kwargs)?;
    submit(bridge, fut, async move {
        let r: Result<Completed<ImageResponse>> = pipeline::image_generation(req, &opts).await;
        Unary(r, model)
    })
}
