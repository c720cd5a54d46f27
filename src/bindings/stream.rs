//! `NativeStream`: a chat stream pulled from Python, sync or async, in batches.
//!
//! Each pull waits for one chunk, then takes every chunk already buffered without waiting
//! (up to a cap), so a fast upstream costs one FFI crossing for many chunks. Closing the
//! stream, dropping it, or cancelling the awaiting asyncio task drops the Rust stream and with
//! it the HTTP connection.

use std::sync::Arc;

use futures_util::FutureExt;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use tokio::sync::Mutex;

use super::convert::{hidden, to_py};
use super::errors::to_pyerr;
use super::runtime::block_on;
use crate::error::Error;
use crate::pipeline::CallMeta;
use crate::streaming::{ChatStream, StreamItem};

const MAX_BATCH: usize = 256;

struct State {
    stream: Option<ChatStream>,
    /// An error met after some chunks of a batch; raised on the next pull.
    pending: Option<Error>,
}

enum Batch {
    Items(Vec<StreamItem>),
    End,
    Failed(Error),
}

async fn pull(state: Arc<Mutex<State>>) -> Batch {
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
                break;
            }
            None => break,
        }
    }
    Batch::Items(items)
}

fn batch_to_py(py: Python<'_>, b: Batch) -> PyResult<Option<Bound<'_, PyList>>> {
    match b {
        Batch::End => Ok(None),
        Batch::Failed(e) => Err(to_pyerr(py, e)),
        Batch::Items(items) => {
            let list = PyList::empty(py);
            for it in items {
                let usage = match &it.hidden_usage {
                    Some(u) => to_py(py, u)?,
                    None => py.None().into_bound(py),
                };
                list.append(PyTuple::new(py, [to_py(py, &it.chunk)?, usage])?)?;
            }
            Ok(Some(list))
        }
    }
}

struct PyBatch(Batch);

impl<'py> IntoPyObject<'py> for PyBatch {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        Ok(match batch_to_py(py, self.0)? {
            Some(l) => l.into_any(),
            None => py.None().into_bound(py),
        })
    }
}

#[pyclass(module = "llmux._llmux", frozen)]
pub struct NativeStream {
    state: Arc<Mutex<State>>,
    hidden: Py<PyDict>,
}

impl NativeStream {
    pub fn new(
        py: Python<'_>,
        stream: ChatStream,
        meta: &CallMeta,
        caller_model: &str,
    ) -> PyResult<Self> {
        let h = hidden(py, meta, caller_model)?;
        h.set_item(
            "_response_ms",
            meta.started.elapsed().as_secs_f64() * 1000.0,
        )?;
        Ok(NativeStream {
            state: Arc::new(Mutex::new(State {
                stream: Some(stream),
                pending: None,
            })),
            hidden: h.unbind(),
        })
    }
}

#[pymethods]
impl NativeStream {
    /// `_hidden_params` of the call that opened the stream.
    #[getter]
    fn hidden_params(&self, py: Python<'_>) -> Py<PyDict> {
        self.hidden.clone_ref(py)
    }

    /// Blocks (without the GIL) for the next chunks: a list of `(chunk, hidden_usage)` pairs,
    /// or `None` at the end.
    fn next_batch<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyList>>> {
        let b = block_on(py, pull(self.state.clone()))?;
        batch_to_py(py, b)
    }

    /// Awaitable form of `next_batch`.
    fn anext_batch<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let state = self.state.clone();
        pyo3_async_runtimes::tokio::future_into_py(
            py,
            async move { Ok(PyBatch(pull(state).await)) },
        )
    }

    /// Ends the stream now and closes its connection. Idempotent.
    fn close(&self, py: Python<'_>) {
        let state = self.state.clone();
        py.detach(|| {
            // If a pull is in flight, it holds the lock; dropping its task (cancellation)
            // releases it. Otherwise drop the stream here.
            let dropped_here = match state.try_lock() {
                Ok(mut st) => {
                    st.stream = None;
                    true
                }
                Err(_) => false,
            };
            if !dropped_here {
                super::runtime::runtime().spawn(async move {
                    state.lock().await.stream = None;
                });
            }
        });
    }
}
