//! The process-wide HTTP client: one connection pool, TCP_NODELAY, keep-alive, rustls with the
//! `ring` provider. Every upstream call goes through [`client`]; the only other client is
//! [`fetch_client`], which follows no redirects, for fetching callers' image URLs when private
//! networks are off limits.

use std::sync::OnceLock;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};

static CLIENT: OnceLock<std::result::Result<reqwest::Client, String>> = OnceLock::new();

fn build() -> std::result::Result<reqwest::Client, String> {
    // Installing fails only if another provider is already the default, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(1024)
        .pool_idle_timeout(Duration::from_secs(90))
        .connect_timeout(Duration::from_secs(30))
        .tcp_keepalive(Duration::from_secs(60))
        .user_agent(concat!("llmux/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.to_string())
}

static FETCH_CLIENT: OnceLock<std::result::Result<reqwest::Client, String>> = OnceLock::new();

/// A client that follows no redirects (a redirect could lead to a private address that was
/// checked away), for fetching URLs callers give.
pub fn fetch_client() -> Result<&'static reqwest::Client> {
    let built = FETCH_CLIENT.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("llmux/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())
    });
    match built {
        Ok(c) => Ok(c),
        Err(e) => Err(Error::new(
            ErrorKind::InvalidConfig,
            format!("cannot build the HTTP client: {e}"),
        )),
    }
}

/// The shared client, built on first use.
pub fn client() -> Result<&'static reqwest::Client> {
    match CLIENT.get_or_init(build) {
        Ok(c) => Ok(c),
        Err(e) => Err(Error::new(
            ErrorKind::InvalidConfig,
            format!("cannot build the HTTP client: {e}"),
        )),
    }
}

/// Classifies a transport failure (no HTTP answer, or a body cut short).
pub fn transport_error(e: &reqwest::Error, api_base: &str) -> Error {
    let mut detail = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        src = s.source();
    }
    if e.is_timeout() {
        Error::new(
            ErrorKind::Timeout,
            format!("request to {api_base} timed out: {detail}"),
        )
    } else if e.is_connect() {
        Error::new(
            ErrorKind::Connection,
            format!("cannot connect to {api_base}: {detail}"),
        )
    } else {
        Error::new(
            ErrorKind::Connection,
            format!("connection to {api_base} failed: {detail}"),
        )
    }
}
