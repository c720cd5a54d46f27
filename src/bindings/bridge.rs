//! The asyncio bridge: how results of Rust tasks reach awaiting Python coroutines.
//!
//! A generic `future_into_py` makes the tokio thread take the GIL for every finished call, to
//! convert the result and schedule it on the loop; under load that thread queues behind the
//! event loop for the GIL, one request at a time. Here a finished task only pushes its result
//! (still a Rust value) onto a queue and, when the queue was empty, writes one byte to a pipe
//! the event loop watches (`loop.add_reader`). The loop's reader callback, `Bridge.drain`, takes
//! every queued result at once, converts them with the GIL it already holds, and resolves
//! their futures. Tokio threads never wait for the GIL, and a busy loop wakes once for many
//! results.
//!
//! Cancellation: each submission returns a [`TaskHandle`]; the Python coroutine awaiting the
//! future calls `abort()` when it is cancelled, which drops the Rust future (and its socket).

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, PoisonError};

use pyo3::prelude::*;

/// A finished task's result, converted to Python only inside `drain`.
pub trait Outcome: Send + 'static {
    fn into_py(self: Box<Self>, py: Python<'_>) -> PyResult<Py<PyAny>>;
}

struct Done {
    fut: Py<PyAny>,
    outcome: Box<dyn Outcome>,
}

struct Inner {
    queue: Mutex<Vec<Done>>,
    reader: std::io::PipeReader,
    writer: std::io::PipeWriter,
}

impl Inner {
    fn push(&self, done: Done) {
        let was_empty = {
            let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            q.push(done);
            q.len() == 1
        };
        if was_empty {
            // One byte per empty-to-non-empty transition: at most one unread byte, never blocks.
            let _ = (&self.writer).write(&[1]);
        }
    }
}

/// One per event loop: created and registered by `llmux._aio`.
#[pyclass(module = "llmux._llmux", frozen)]
pub struct Bridge {
    inner: Arc<Inner>,
}

#[pymethods]
impl Bridge {
    #[new]
    fn new() -> PyResult<Self> {
        let (reader, writer) = std::io::pipe()?;
        Ok(Bridge {
            inner: Arc::new(Inner {
                queue: Mutex::new(Vec::new()),
                reader,
                writer,
            }),
        })
    }

    /// The pipe's read end, for `loop.add_reader` (Python sets it non-blocking).
    #[getter]
    fn fd(&self) -> i32 {
        self.inner.reader.as_raw_fd()
    }

    /// Resolves every finished future. Called by the event loop when the pipe is readable.
    fn drain(&self, py: Python<'_>) -> PyResult<()> {
        let mut buf = [0u8; 64];
        let _ = (&self.inner.reader).read(&mut buf);
        let batch = std::mem::take(
            &mut *self
                .inner
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        // Every future of the batch is resolved even if one of them fails to be: the first
        // such failure is raised to the loop's exception handler afterwards.
        let mut first_err: Option<PyErr> = None;
        for done in batch {
            let fut = done.fut.bind(py);
            let resolved = (|| -> PyResult<()> {
                // A cancelled (or otherwise finished) future takes no result.
                if fut.call_method0(pyo3::intern!(py, "done"))?.is_truthy()? {
                    return Ok(());
                }
                match done.outcome.into_py(py) {
                    Ok(v) => fut.call_method1(pyo3::intern!(py, "set_result"), (v,))?,
                    Err(e) => {
                        fut.call_method1(pyo3::intern!(py, "set_exception"), (e.into_value(py),))?
                    }
                };
                Ok(())
            })();
            if let Err(e) = resolved {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// Aborts the Rust task of a submission.
#[pyclass(module = "llmux._llmux", frozen)]
pub struct TaskHandle {
    handle: tokio::task::AbortHandle,
}

#[pymethods]
impl TaskHandle {
    fn abort(&self) {
        self.handle.abort();
    }
}

/// Runs `fut` on the runtime; its outcome resolves the Python future `py_fut` through `bridge`.
pub fn submit<F, O>(bridge: &Bound<'_, Bridge>, py_fut: Py<PyAny>, fut: F) -> PyResult<TaskHandle>
where
    F: std::future::Future<Output = O> + Send + 'static,
    O: Outcome,
{
    let inner = bridge.get().inner.clone();
    let join = super::runtime::runtime()?.spawn(async move {
        let outcome = fut.await;
        inner.push(Done {
            fut: py_fut,
            outcome: Box::new(outcome),
        });
    });
    Ok(TaskHandle {
        handle: join.abort_handle(),
    })
}
