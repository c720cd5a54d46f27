//! `serve_fake_upstream`: runs the fake OpenAI upstream (`crate::testing`) in this process
//! until SIGINT/SIGTERM, for `python -m llmux.testing`.

use std::io::Write;

use pyo3::prelude::*;

use crate::testing::fake_upstream;

#[pyfunction]
#[pyo3(signature = (host="127.0.0.1", port=0, threads=2))]
pub fn serve_fake_upstream(py: Python<'_>, host: &str, port: u16, threads: usize) -> PyResult<()> {
    let addr = format!("{host}:{port}");
    py.detach(|| -> std::io::Result<()> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind(&addr).await?;
            let bound = listener.local_addr()?;
            {
                let mut out = std::io::stdout().lock();
                writeln!(out, "LISTENING {}", bound.port())?;
                out.flush()?;
            }
            fake_upstream::serve(listener, shutdown_signal()).await
        })
    })
    .map_err(|e| pyo3::exceptions::PyOSError::new_err(format!("fake upstream: {e}")))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
