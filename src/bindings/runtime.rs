//! The process's one tokio runtime, and the blocking bridge for sync calls: the GIL is
//! released while the future runs, and Ctrl-C is honoured by polling Python's signal handlers
//! every 100 ms and aborting the Rust work. (Async calls go through `bridge.rs`.)

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use pyo3::prelude::*;

static RUNTIME: OnceLock<std::io::Result<tokio::runtime::Runtime>> = OnceLock::new();

/// The runtime: worker threads = available cores, built on first use.
pub fn runtime() -> PyResult<&'static tokio::runtime::Runtime> {
    let rt = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .thread_name("llmux-worker")
            .enable_all()
            .build()
    });
    rt.as_ref().map_err(|e| {
        pyo3::exceptions::PyRuntimeError::new_err(format!("cannot start the llmux runtime: {e}"))
    })
}

/// Runs `fut` on the runtime without holding the GIL. A pending KeyboardInterrupt (or any
/// exception from a signal handler) aborts the task and is raised.
pub fn block_on<F>(py: Python<'_>, fut: F) -> PyResult<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let rt = runtime()?;
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
