//! Audio: `NativeAudio`, a speech response body pulled from Python as it arrives, sync or
//! async (`speech` / `aspeech` open one; dropping it or `close` drops the HTTP response), and
//! the uploads: `transcription` / `atranscription` and `image_edit` / `aimage_edit`, whose
//! files are streamed from disk.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};
use tokio::sync::Mutex;

use super::bridge::{submit, Bridge, Outcome, TaskHandle};
use super::convert::{hidden, split_kwargs};
use super::errors::to_pyerr;
use super::runtime::block_on;
use crate::error::Result;
use crate::pipeline::{self, CallMeta};
use crate::streaming::BinaryStream;
use crate::types::{FileSource, ImageEditRequest, SpeechRequest, TranscriptionRequest};

type Shared = Arc<Mutex<Option<BinaryStream>>>;

#[pyclass(module = "llmux._llmux", frozen)]
pub struct NativeAudio {
    state: Shared,
    content_type: String,
}

async fn pull(state: Shared) -> Result<Option<Bytes>> {
    let mut g = state.lock().await;
    let Some(s) = g.as_mut() else { return Ok(None) };
    match s.next().await {
        Some(Ok(b)) => Ok(Some(b)),
        None => {
            *g = None;
            Ok(None)
        }
        Some(Err(e)) => {
            *g = None;
            Err(e)
        }
    }
}

fn piece_to_py(py: Python<'_>, r: Result<Option<Bytes>>) -> PyResult<Py<PyAny>> {
    match r {
        Ok(Some(b)) => Ok(PyBytes::new(py, &b).into_any().unbind()),
        Ok(None) => Ok(py.None()),
        Err(e) => Err(to_pyerr(py, e)),
    }
}

struct Piece(Result<Option<Bytes>>);

impl Outcome for Piece {
    fn into_py(self: Box<Self>, py: Python<'_>) -> PyResult<Py<PyAny>> {
        piece_to_py(py, self.0)
    }
}

#[pymethods]
impl NativeAudio {
    /// The upstream's content type (`audio/mpeg`, `audio/wav`, ...).
    #[getter]
    fn content_type(&self) -> &str {
        &self.content_type
    }

    /// The next piece of audio (GIL released while waiting), or None at the end.
    fn next_chunk(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let state = self.state.clone();
        let r = block_on(py, pull(state))?;
        piece_to_py(py, r)
    }

    /// Starts pulling the next piece; `fut` gets bytes, or None at the end.
    fn anext_chunk(&self, bridge: &Bound<'_, Bridge>, fut: Py<PyAny>) -> PyResult<TaskHandle> {
        let state = self.state.clone();
        submit(bridge, fut, async move { Piece(pull(state).await) })
    }

    /// Drops the body (and the connection) now.
    fn close(&self) {
        if let Ok(mut g) = self.state.try_lock() {
            *g = None;
        }
    }
}

/// `(NativeAudio, hidden)` for an opened speech call.
pub fn audio_to_py<'py>(
    py: Python<'py>,
    r: Result<(BinaryStream, CallMeta)>,
    caller_model: &str,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyDict>)> {
    let (stream, meta) = r.map_err(|e| to_pyerr(py, e))?;
    let h = hidden(py, &meta, caller_model)?;
    h.set_item(
        "_response_ms",
        meta.started.elapsed().as_secs_f64() * 1000.0,
    )?;
    let native = Bound::new(
        py,
        NativeAudio {
            content_type: stream.content_type().to_owned(),
            state: Arc::new(Mutex::new(Some(stream))),
        },
    )?;
    Ok((native.into_any(), h))
}

struct Opened(Result<(BinaryStream, CallMeta)>, String);

impl Outcome for Opened {
    fn into_py(self: Box<Self>, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let (a, h) = audio_to_py(py, self.0, &self.1)?;
        Ok(PyTuple::new(py, [a, h.into_any()])?.into_any().unbind())
    }
}

pub fn speech_args(
    model: String,
    input: String,
    kwargs: Option<&Bound<'_, PyDict>>,
) -> PyResult<(SpeechRequest, pipeline::CallOptions)> {
    let (params, opts) = split_kwargs(kwargs)?;
    Ok((
        SpeechRequest {
            model,
            input,
            params,
        },
        opts,
    ))
}

/// Opens a speech call (blocking, GIL released): `(NativeAudio, hidden)`.
#[pyfunction]
#[pyo3(signature = (model, input, kwargs=None))]
pub fn speech<'py>(
    py: Python<'py>,
    model: String,
    input: String,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyTuple>> {
    let (req, opts) = speech_args(model.clone(), input, kwargs)?;
    let r = block_on(py, async move { pipeline::speech(req, &opts).await })?;
    let (a, h) = audio_to_py(py, r, &model)?;
    PyTuple::new(py, [a, h.into_any()])
}

/// Starts a speech call; `fut` gets `(NativeAudio, hidden)`.
#[pyfunction]
#[pyo3(signature = (bridge, fut, model, input, kwargs=None))]
pub fn aspeech(
    bridge: &Bound<'_, Bridge>,
    fut: Py<PyAny>,
    model: String,
    input: String,
    kwargs: Option<&Bound<'_, PyDict>>,
) -> PyResult<TaskHandle> {
    let (req, opts) = speech_args(model.clone(), input, kwargs)?;
    submit(bridge, fut, async move {
        Opened(pipeline::speech(req, &opts).await, model)
    })
}

pub fn transcription_args(
    model: String,
    path: Option<PathBuf>,
    data: Option<&Bound<'_, PyBytes>>,
    filename: String,
    kwargs: Option<&Bound<'_, PyDict>>,
) -> PyResult<(TranscriptionRequest, pipeline::CallOptions)> {
    let (params, opts) = split_kwargs(kwargs)?;
    let file = file_source(path, data)?;
    Ok((
        TranscriptionRequest {
            model,
            file,
            filename,
            params,
        },
        opts,
    ))
}

/// Blocking transcription (GIL released): `(response, hidden)`. The audio is a file `path`
/// (streamed from disk) or `data` in memory.
#[pyfunction]
#[pyo3(signature = (model, path, data, filename, kwargs=None))]
pub fn transcription<'py>(
    py: Python<'py>,
    model: String,
    path: Option<PathBuf>,
    data: Option<&Bound<'py, PyBytes>>,
    filename: String,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyTuple>> {
    let (req, opts) = transcription_args(model.clone(), path, data, filename, kwargs)?;
    let r = block_on(py, async move { pipeline::transcription(req, &opts).await })?;
    super::completion::unary_result(py, r, &model)
}

/// Starts a transcription; `fut` gets `(response, hidden)`.
#[pyfunction]
#[pyo3(signature = (bridge, fut, model, path, data, filename, kwargs=None))]
#[allow(clippy::too_many_arguments)]
pub fn atranscription(
    bridge: &Bound<'_, Bridge>,
    fut: Py<PyAny>,
    model: String,
    path: Option<PathBuf>,
    data: Option<&Bound<'_, PyBytes>>,
    filename: String,
    kwargs: Option<&Bound<'_, PyDict>>,
) -> PyResult<TaskHandle> {
    let (req, opts) = transcription_args(model.clone(), path, data, filename, kwargs)?;
    submit(bridge, fut, async move {
        super::completion::Unary(pipeline::transcription(req, &opts).await, model)
    })
}

/// A file argument from Python: a path (streamed from disk) or bytes.
fn file_source(path: Option<PathBuf>, data: Option<&Bound<'_, PyBytes>>) -> PyResult<FileSource> {
    match (path, data) {
        (Some(p), _) => Ok(FileSource::Path(p)),
        (None, Some(d)) => Ok(FileSource::Bytes(Bytes::copy_from_slice(d.as_bytes()))),
        (None, None) => Err(pyo3::exceptions::PyTypeError::new_err(
            "a file must be a path, bytes or a file object",
        )),
    }
}

type PyFile<'py> = (Option<PathBuf>, Option<Bound<'py, PyBytes>>, String);

pub fn image_edit_args(
    model: String,
    prompt: String,
    images: Vec<PyFile<'_>>,
    mask: Option<PyFile<'_>>,
    kwargs: Option<&Bound<'_, PyDict>>,
) -> PyResult<(ImageEditRequest, pipeline::CallOptions)> {
    let (params, opts) = split_kwargs(kwargs)?;
    let images = images
        .into_iter()
        .map(|(p, d, name)| Ok((file_source(p, d.as_ref())?, name)))
        .collect::<PyResult<Vec<_>>>()?;
    let mask = mask
        .map(|(p, d, name)| Ok::<_, PyErr>((file_source(p, d.as_ref())?, name)))
        .transpose()?;
    Ok((
        ImageEditRequest {
            model,
            prompt,
            images,
            mask,
            params,
        },
        opts,
    ))
}

/// Blocking image edit (GIL released): `(response, hidden)`. Each image (and the mask) is
/// `(path, data, filename)`.
#[pyfunction]
#[pyo3(signature = (model, prompt, images, mask=None, kwargs=None))]
pub fn image_edit<'py>(
    py: Python<'py>,
    model: String,
    prompt: String,
    images: Vec<PyFile<'py>>,
    mask: Option<PyFile<'py>>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyTuple>> {
    let (req, opts) = image_edit_args(model.clone(), prompt, images, mask, kwargs)?;
    let r = block_on(py, async move { pipeline::image_edit(req, &opts).await })?;
    super::completion::unary_result(py, r, &model)
}

/// Starts an image edit; `fut` gets `(response, hidden)`.
#[pyfunction]
#[pyo3(signature = (bridge, fut, model, prompt, images, mask=None, kwargs=None))]
#[allow(clippy::too_many_arguments)]
pub fn aimage_edit<'py>(
    bridge: &Bound<'py, Bridge>,
    fut: Py<PyAny>,
    model: String,
    prompt: String,
    images: Vec<PyFile<'py>>,
    mask: Option<PyFile<'py>>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<TaskHandle> {
    let (req, opts) = image_edit_args(model.clone(), prompt, images, mask, kwargs)?;
    submit(bridge, fut, async move {
        super::completion::Unary(pipeline::image_edit(req, &opts).await, model)
    })
}
