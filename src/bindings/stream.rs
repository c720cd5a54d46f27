//! `NativeStream`: a chat stream pulled from Python, sync or async, in batches.
//!
//! Each pull waits for one chunk, then takes every chunk already buffered without waiting
//! (up to a cap), so a fast upstream costs one crossing into Rust for many chunks. A batch
//! that reaches the end of the stream says so (a trailing `None`), which saves the pull that
//! would only learn it. Opening a stream also pulls its first batch, so a stream that fails
//! before its first chunk fails at open, where it can still be retried.
//!
//! Closing the stream, dropping it, or cancelling the awaiting asyncio task drops the Rust
//! stream and with it the HTTP connection.

use std::sync::Arc;

use futures_util::FutureExt;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use tokio::sync::Mutex;

use super::bridge::{submit, Bridge, Outcome, TaskHandle};
use super::convert::{hidden, to_py};
use super::errors::to_pyerr;
use super::runtime::block_on;
use crate::error::{Error, Result};
use crate::pipeline::CallMeta;
use crate::streaming::{ChatStream, StreamItem};

const MAX_BATCH: usize = 256;

struct State {
    stream: Option<ChatStream>,
    /// An error met after some chunks of a batch; raised on the next pull.
    pending: Option<Error>,
}

type Shared = Arc<Mutex<State>>;

enum Batch {
    /// Chunks, and whether the stream ended cleanly right after them.
    Items(Vec<StreamItem>, bool),
    End,
    Failed(Error),
}

async fn pull(state: Shared) -> Batch {
    let mut st = state.lock().await;
    if let Some(e) = st.pending.take() {
        return Batch::Failed(e);
    }
    let Some(stream) = st.stream.as_mut() else {
        return Batch::End;
    };
    let mut items = Vec::new();
    match stream.next().await {
        None => {
            st.stream = None;
            return Batch::End;
        }
        Some(Err(e)) => {
            st.stream = None;
            return Batch::Failed(e);
        }
        Some(Ok(item)) => items.push(item),
    }
    let mut ended = false;
    while items.len() < MAX_BATCH {
        match stream.next().now_or_never() {
            Some(Some(Ok(item))) => items.push(item),
            Some(Some(Err(e))) => {
                st.pending = Some(e);
                st.stream = None;
                break;
            }
            Some(None) => {
                st.stream = None;
                ended = true;
                break;
            }
            None => break,
        }
    }
    Batch::Items(items, ended)
}

fn batch_to_py(py: Python<'_>, b: Batch) -> PyResult<Option<Bound<'_, PyList>>> {
    match b {
        Batch::End => Ok(None),
        Batch::Failed(e) => Err(to_pyerr(py, e)),
        Batch::Items(items, ended) => {
            let list = PyList::empty(py);
            for it in items {
                let usage = match &it.hidden_usage {
                    Some(u) => to_py(py, u)?,
                    None => py.None().into_bound(py),
                };
                list.append(PyTuple::new(py, [to_py(py, &it.chunk)?, usage])?)?;
            }
            if ended {
                list.append(py.None())?;
            }
            Ok(Some(list))
        }
    }
}

impl Outcome for Batch {
    fn into_py(self: Box<Self>, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(match batch_to_py(py, *self)? {
            Some(l) => l.into_any().unbind(),
            None => py.None(),
        })
    }
}

/// A stream opened and its first batch pulled, ready to hand to Python.
pub struct Opened {
    state: Shared,
    first: Batch,
    meta: CallMeta,
    caller_model: String,
}

impl Opened {
    pub fn meta(&self) -> &CallMeta {
        &self.meta
    }
}

/// Opens the stream through the pipeline and pulls its first batch.
pub async fn open(opened: Result<(ChatStream, CallMeta)>, caller_model: String) -> Result<Opened> {
    let (stream, meta) = opened?;
    let state = Arc::new(Mutex::new(State {
        stream: Some(stream),
        pending: None,
    }));
    match pull(state.clone()).await {
        Batch::Failed(e) => Err(e),
        first => Ok(Opened {
            state,
            first,
            meta,
            caller_model,
        }),
    }
}

/// `(NativeStream, first_batch)` for Python.
pub fn opened_to_py(py: Python<'_>, r: Result<Opened>) -> PyResult<Bound<'_, PyTuple>> {
    let o = r.map_err(|e| to_pyerr(py, e))?;
    let h = hidden(py, &o.meta, &o.caller_model)?;
    h.set_item(
        "_response_ms",
        o.meta.started.elapsed().as_secs_f64() * 1000.0,
    )?;
    let native = Bound::new(
        py,
        NativeStream {
            state: o.state,
            hidden: h.unbind(),
        },
    )?;
    let first = match batch_to_py(py, o.first)? {
        Some(l) => l.into_any(),
        None => py.None().into_bound(py),
    };
    PyTuple::new(py, [native.into_any(), first])
}

impl Outcome for Result<Opened> {
    fn into_py(self: Box<Self>, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(opened_to_py(py, *self)?.into_any().unbind())
    }
}

#[pyclass(module = "llmux._llmux", frozen)]
pub struct NativeStream {
    state: Shared,
    hidden: Py<PyDict>,
}

#[pymethods]
impl NativeStream {
    /// `_hidden_params` of the call that opened the stream.
    #[getter]
    fn hidden_params(&self, py: Python<'_>) -> Py<PyDict> {
        self.hidden.clone_ref(py)
    }

    /// Blocks (without the GIL) for the next chunks: a list of `(chunk, hidden_usage)` pairs,
    /// ending with `None` when the stream ended with them; `None` alone at the end.
    fn next_batch<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyList>>> {
        let b = block_on(py, pull(self.state.clone()))?;
        batch_to_py(py, b)
    }

    /// Async form of `next_batch`: `fut` (an asyncio future) gets the batch.
    fn anext_batch(&self, bridge: &Bound<'_, Bridge>, fut: Py<PyAny>) -> PyResult<TaskHandle> {
        submit(bridge, fut, pull(self.state.clone()))
    }

    /// Ends the stream now and closes its connection. Idempotent.
    fn close(&self, py: Python<'_>) {
        let state = self.state.clone();
        py.detach(|| {
            // A pull in flight holds the lock; cancelling it (its task is aborted) releases
            // it, and the spawned task then drops the stream.
            let dropped_here = match state.try_lock() {
                Ok(mut st) => {
                    st.stream = None;
                    true
                }
                Err(_) => false,
            };
            if !dropped_here {
                if let Ok(rt) = super::runtime::runtime() {
                    rt.spawn(async move {
                        state.lock().await.stream = None;
                    });
                }
            }
        });
    }
}
