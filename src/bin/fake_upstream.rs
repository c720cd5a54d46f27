//! `llmux-fake-upstream`: runs the fake OpenAI-compatible upstream as a process.
//!
//! Usage: `llmux-fake-upstream [--host H] [--port P] [--threads N]`
//! (defaults: 127.0.0.1, 0 = any free port, 2 worker threads). Once bound it writes
//! exactly `LISTENING <port>\n` to stdout, then serves until SIGINT or SIGTERM.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use _llmux::testing::fake_upstream;

struct Args {
    host: IpAddr,
    port: u16,
    threads: usize,
}

const USAGE: &str = "usage: llmux-fake-upstream [--host H] [--port P] [--threads N]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        host: IpAddr::from([127, 0, 0, 1]),
        port: 0,
        threads: 2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => (arg.clone(), None),
        };
        if name == "--help" || name == "-h" {
            return Err(USAGE.to_owned());
        }
        let value = match inline.or_else(|| it.next()) {
            Some(v) => v,
            None => return Err(format!("missing value for {name}\n{USAGE}")),
        };
        match name.as_str() {
            "--host" => {
                args.host = if value == "localhost" {
                    IpAddr::from([127, 0, 0, 1])
                } else {
                    value
                        .parse()
                        .map_err(|e| format!("bad --host {value:?}: {e}"))?
                }
            }
            "--port" => {
                args.port = value
                    .parse()
                    .map_err(|e| format!("bad --port {value:?}: {e}"))?
            }
            "--threads" => {
                args.threads = value
                    .parse::<usize>()
                    .map_err(|e| format!("bad --threads {value:?}: {e}"))?
                    .max(1)
            }
            _ => return Err(format!("unknown argument {name}\n{USAGE}")),
        }
    }
    Ok(args)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn run(addr: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let port = listener.local_addr()?.port();
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "LISTENING {port}")?;
        out.flush()?;
    }
    fake_upstream::serve(listener, shutdown_signal()).await
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("llmux-fake-upstream: cannot build runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(SocketAddr::new(args.host, args.port))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("llmux-fake-upstream: {e}");
            ExitCode::FAILURE
        }
    }
}
