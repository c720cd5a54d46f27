//! `llmux`: the gateway as a Rust binary.
//!
//! Usage: `llmux serve --config config.yaml [--host H] [--port P] [--threads N]`
//! (defaults: host and port from the config's `server` block, else 0.0.0.0:4000; threads: one
//! per core). Once bound it writes `LISTENING <port>` to stdout; logs are JSON on stderr.
//! SIGTERM or SIGINT stops it gracefully.

use std::path::PathBuf;
use std::process::ExitCode;

use _llmux::server::{self, ServeOptions};

const USAGE: &str =
    "usage: llmux serve --config FILE [--host H] [--port P] [--threads N]\n       llmux --version";

struct Args {
    opts: ServeOptions,
    threads: Option<usize>,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    match it.next().as_deref() {
        Some("serve") => {}
        Some("--version" | "-V") => return Err(format!("llmux {}", env!("CARGO_PKG_VERSION"))),
        _ => return Err(USAGE.to_owned()),
    }
    let mut args = Args {
        opts: ServeOptions::default(),
        threads: None,
    };
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => (arg.clone(), None),
        };
        if name == "--help" || name == "-h" {
            return Err(USAGE.to_owned());
        }
        let value = inline
            .or_else(|| it.next())
            .ok_or_else(|| format!("missing value for {name}\n{USAGE}"))?;
        match name.as_str() {
            "--config" | "-c" => args.opts.config_path = Some(PathBuf::from(value)),
            "--host" => args.opts.host = Some(value),
            "--port" | "-p" => {
                args.opts.port = Some(
                    value
                        .parse()
                        .map_err(|e| format!("bad --port {value:?}: {e}"))?,
                )
            }
            "--threads" => {
                args.threads = Some(
                    value
                        .parse::<usize>()
                        .map_err(|e| format!("bad --threads {value:?}: {e}"))?
                        .max(1),
                )
            }
            _ => return Err(format!("unknown argument {name}\n{USAGE}")),
        }
    }
    if args.opts.config_path.is_none() {
        return Err(format!("--config is required\n{USAGE}"));
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        rt.worker_threads(n);
    }
    let runtime = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("llmux: cannot build the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(server::run(args.opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("llmux: {}", e.message);
            ExitCode::FAILURE
        }
    }
}
