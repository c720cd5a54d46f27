//! LLMux: an LLM gateway engine with a LiteLLM-compatible face.
//!
//! The crate is the whole request pipeline, in Rust: resolve the provider from the model name,
//! translate the request, send it over one shared connection pool, parse the answer or the SSE
//! stream, classify errors into one taxonomy, retry what may pass. Two thin doors open onto it:
//! the Python package (feature `python`, all of PyO3 lives in `bindings`) and HTTP serving
//! (feature `server`). The core builds and tests with neither.
//!
//! Module map:
//! - [`error`]: `Error` / `ErrorKind`, the one taxonomy.
//! - [`types`]: OpenAI-shaped wire types (chat, stream chunks, embeddings, usage).
//! - [`streaming`]: SSE framing (bytes to events) and typed chunk streams.
//! - [`providers`]: provider resolution, the OpenAI dialect and the OpenAI-compatible vendor table.
//! - [`http`]: the process-wide HTTP client.
//! - [`retry`]: backoff arithmetic and retry hints.
//! - [`pipeline`]: `completion`, `completion_stream`, `embedding`: the request pipeline.
//! - [`hooks`]: the hook pipeline around every call, and the built-in hooks.
//! - [`cache`]: the response cache (in process or on Redis), a hook on that pipeline.
//! - [`config`]: config data (model lists, router settings, the gateway's YAML file) into parts.
//! - [`limiter`], [`redis`], [`router`]: limits, shared state, routing.
//! - [`telemetry`]: trace span names and (feature `server`) OTLP export.
//! - `server` (feature `server`): the OpenAI-compatible HTTP gateway, `llmux serve`.

pub mod cache;
pub mod config;
pub mod error;
pub mod hooks;
pub mod http;
pub mod limiter;
pub mod pipeline;
pub mod pricing;
pub mod providers;
pub mod redis;
pub mod retry;
pub mod router;
pub mod spool;
pub mod streaming;
pub mod telemetry;
pub mod types;

#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod testing;

#[cfg(feature = "python")]
mod bindings;

pub use error::{Error, ErrorKind, Result};
pub use pipeline::{completion, completion_stream, embedding, CallOptions};
pub use streaming::ChatStream;

/// mimalloc rather than the system allocator: a call allocates on one runtime thread and
/// frees on another, and glibc's per-thread arenas then contend (a worker sleeping on an arena
/// lock about once every three requests on the SDK benchmark); with mimalloc the SDK serves about
/// 30% more calls a second on the same cores (`benches/rate_limit_overhead.py`, no limit).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
