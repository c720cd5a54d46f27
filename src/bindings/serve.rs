//! `serve`: runs the gateway (`llmux serve`) on the process's runtime with the GIL released.
//! SIGTERM is handled by the server itself; Ctrl-C (Python's SIGINT handler) starts the same
//! graceful shutdown, and the KeyboardInterrupt is raised once in-flight requests are done.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;

use super::errors::to_pyerr;
use super::runtime::runtime;
use crate::server::{self, ServeOptions};

/// Serves the gateway described by the config file `config` until SIGTERM or Ctrl-C.
/// `host` and `port` override the config's `server` block (port 0 picks a free port); the
/// bound port is written to stdout as `LISTENING <port>`.
#[pyfunction]
#[pyo3(signature = (config, host=None, port=None))]
pub fn serve(
    py: Python<'_>,
    config: PathBuf,
    host: Option<String>,
    port: Option<u16>,
) -> PyResult<()> {
    let rt = runtime()?;
    let opts = ServeOptions {
        config_path: Some(config),
        config_text: None,
        host,
        port,
    };
    let stop = Arc::new(tokio::sync::Notify::new());
    let stop_rx = stop.clone();
    let mut handle = rt.spawn(async move {
        let bound = server::bind(&opts).await?;
        server::announce(bound.addr);
        server::serve(bound, async move {
            tokio::select! {
                () = server::termination() => {}
                () = stop_rx.notified() => {}
            }
        })
        .await
    });
    let mut interrupted: Option<PyErr> = None;
    loop {
        let polled = py.detach(|| {
            rt.block_on(async {
                tokio::time::timeout(Duration::from_millis(100), &mut handle).await
            })
        });
        match polled {
            Ok(Ok(result)) => {
                return match (result, interrupted) {
                    (Err(e), _) => Err(to_pyerr(py, e)),
                    (Ok(()), Some(e)) => Err(e),
                    (Ok(()), None) => Ok(()),
                };
            }
            Ok(Err(join_err)) => {
                return Err(pyo3::exceptions::PyRuntimeError::new_err(format!(
                    "llmux gateway task failed: {join_err}"
                )));
            }
            Err(_elapsed) => {
                if interrupted.is_none() {
                    if let Err(e) = py.check_signals() {
                        stop.notify_one();
                        interrupted = Some(e);
                    }
                }
            }
        }
    }
}
