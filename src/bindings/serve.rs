//! `serve`: runs the gateway (`llmux serve`) on the process's runtime with the GIL released.
//! SIGTERM is handled by the server itself; Ctrl-C (Python's SIGINT handler) starts the same
//! graceful shutdown, and the KeyboardInterrupt is raised once in-flight requests are done.
//! Python callbacks named in the config (`litellm_settings.callbacks`) run as a hook on the
//! gateway's pipeline ([`PyCallbacks`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use pyo3::prelude::*;
use pythonize::{depythonize, pythonize};
use serde_json::{json, Map, Value};

use super::errors::to_pyerr;
use super::runtime::runtime;
use crate::error::ErrorKind;
use crate::hooks::{Hook, HookContext, Pre};
use crate::server::{self, ServeOptions};
use crate::types::{ChatCompletion, ChatRequest};

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
        hook_loader: Some(Arc::new(load_hooks)),
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

/// The hook that runs Python callbacks (`litellm_settings.callbacks`) on the gateway's calls.
struct PyCallbacks {
    loggers: Arc<Py<PyAny>>,
}

/// The `_callbacks.Call` of one attempt, kept from `pre` to `post`.
struct CallHandle(Arc<Py<PyAny>>);

/// Builds the Python callbacks hook for `names` (`module.attribute`).
fn load_hooks(names: &[String]) -> crate::Result<Vec<Arc<dyn Hook>>> {
    Python::attach(|py| -> PyResult<Vec<Arc<dyn Hook>>> {
        let loggers = py
            .import("llmux._serve")?
            .call_method1("load_callbacks", (names.to_vec(),))?;
        let hook: Arc<dyn Hook> = Arc::new(PyCallbacks {
            loggers: Arc::new(loggers.unbind()),
        });
        Ok(vec![hook])
    })
    .map_err(|e| crate::Error::invalid_config(e.to_string()))
}

/// Logs a Python error raised by a callback (callbacks never fail a call).
fn log_py(what: &str, e: &PyErr) {
    tracing::warn!(error = %e, "python callback {what} failed");
}

impl Hook for PyCallbacks {
    fn name(&self) -> &str {
        "python_callbacks"
    }

    fn deadline(&self) -> Duration {
        // `async_pre_call_hook` may call out (a moderation API): LiteLLM's pre-call timeout.
        Duration::from_secs(30)
    }

    fn needs_streamed_response(&self, _ctx: &HookContext) -> bool {
        true
    }

    fn pre<'a>(
        &'a self,
        ctx: &'a mut HookContext,
        req: &'a mut ChatRequest,
    ) -> BoxFuture<'a, crate::Result<Pre>> {
        let loggers = self.loggers.clone();
        let model = ctx.model_group.clone();
        let messages = Value::Array(req.messages.clone());
        let params = Value::Object(req.params.clone());
        Box::pin(async move {
            let started = tokio::task::spawn_blocking(move || {
                Python::attach(|py| -> PyResult<_> {
                    let out = py.import("llmux._serve")?.call_method1(
                        "start_call",
                        (
                            loggers.bind(py),
                            model,
                            pythonize(py, &messages)?,
                            pythonize(py, &params)?,
                        ),
                    )?;
                    let (call, msgs, params): (
                        Bound<'_, PyAny>,
                        Bound<'_, PyAny>,
                        Bound<'_, PyAny>,
                    ) = out.extract()?;
                    if call.is_none() {
                        return Ok(Err(msgs.extract::<String>()?));
                    }
                    let msgs: Vec<Value> = depythonize(&msgs)?;
                    let params: Map<String, Value> = depythonize(&params)?;
                    Ok(Ok((call.unbind(), msgs, params)))
                })
            })
            .await
            .map_err(|e| crate::Error::new(ErrorKind::Internal, format!("callback task: {e}")))?
            .map_err(|e| crate::Error::new(ErrorKind::Internal, format!("python callback: {e}")))?;
            match started {
                Err(reason) => {
                    let mut e = crate::Error::new(ErrorKind::BadRequest, reason);
                    e.provider = Some("llmux".into());
                    Ok(Pre::Reject(e))
                }
                Ok((call, msgs, params)) => {
                    req.messages = msgs;
                    req.params = params;
                    ctx.extensions.insert(CallHandle(Arc::new(call)));
                    Ok(Pre::Continue)
                }
            }
        })
    }

    fn post<'a>(
        &'a self,
        ctx: &'a HookContext,
        outcome: &'a mut crate::Result<ChatCompletion>,
    ) -> BoxFuture<'a, crate::Result<()>> {
        let call = ctx.extensions.get::<CallHandle>().map(|c| c.0.clone());
        let hidden = json!({
            "model_group": ctx.model_group,
            "model_id": ctx.deployment,
            "response_cost": ctx.cost,
            "_response_ms": ctx.started.elapsed().as_secs_f64() * 1000.0,
        });
        let response = outcome
            .as_ref()
            .ok()
            .and_then(|r| serde_json::to_value(r).ok());
        let error = outcome.as_ref().err().cloned();
        Box::pin(async move {
            let Some(call) = call else { return Ok(()) };
            // Off the request path: the answer goes out while Python logs it.
            tokio::task::spawn_blocking(move || {
                Python::attach(|py| {
                    let serve = match py.import("llmux._serve") {
                        Ok(m) => m,
                        Err(e) => return log_py("import", &e),
                    };
                    let done = match (error, response) {
                        (Some(e), _) => {
                            let exc = to_pyerr(py, e).into_value(py);
                            match pythonize(py, &hidden) {
                                Ok(h) => serve.call_method1("failed", (call.bind(py), exc, h)),
                                Err(e) => Err(e.into()),
                            }
                        }
                        (None, Some(resp)) => {
                            match (pythonize(py, &resp), pythonize(py, &hidden)) {
                                (Ok(r), Ok(h)) => {
                                    serve.call_method1("succeeded", (call.bind(py), r, h))
                                }
                                (Err(e), _) | (_, Err(e)) => Err(e.into()),
                            }
                        }
                        (None, None) => Ok(py.None().into_bound(py)),
                    };
                    if let Err(e) = done {
                        log_py("event", &e);
                    }
                })
            });
            Ok(())
        })
    }
}
