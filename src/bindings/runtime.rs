//! The process's one tokio runtime (pyo3-async-runtimes') and the blocking bridge for sync
//! calls: the GIL is released while the future runs, and Ctrl-C is honoured by polling
//! Python's signal handlers every 100 ms and aborting the Rust work.

use std::future::Future;
use std::time::Duration;

use pyo3::prelude::*;

pub fn runtime() -> &'static tokio::runtime::Runtime {
    pyo3_async_runtimes::tokio::get_runtime()
}

/// Runs `fut` on the runtime without holding the GIL. A pending KeyboardInterrupt (or any
/// exception from a signal handler) aborts the task and is raised.
pub fn block_on<F>(py: Python<'_>, fut: F) -> PyResult<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let rt = runtime();
    let mut handle = rt.spawn(fut);
    loop {
        let polled = py.detach(|| {
            rt.block_on(async {
                tokio::time::timeout(Duration::from_millis(100), &mut handle).await
            })
        });
        match polled {
            Ok(Ok(out)) => return Ok(out),
            Ok(Err(join_err)) => {
                return Err(pyo3::exceptions::PyRuntimeError::new_err(format!(
                    "llmux task failed: {join_err}"
                )));
            }
            Err(_elapsed) => {
                if let Err(e) = py.check_signals() {
                    handle.abort();
                    return Err(e);
                }
            }
        }
    }
}
