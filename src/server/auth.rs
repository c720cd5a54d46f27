//! Who is calling: the master key, a virtual key from the config, or anyone when no master key
//! is configured. Keys are read from `Authorization: Bearer`, `api-key` (Azure clients) or
//! `x-api-key`, hashed with SHA-256, and compared as digests: the master key in constant time,
//! virtual keys by digest lookup (a digest reveals nothing usable about a key). Only digests
//! are kept, logged (as aliases) or used in limiter scopes.

use std::sync::Arc;
use std::time::SystemTime;

use hyper::header::{HeaderMap, AUTHORIZATION};

use super::errors::ours;
use super::Live;
use crate::config::file::{key_digest, VirtualKey};
use crate::error::{Error, ErrorKind};

/// An authenticated caller.
#[derive(Debug, Clone)]
pub enum Principal {
    /// No master key is configured: the gateway is open.
    Open,
    Master,
    Key(Arc<VirtualKey>),
}

impl Principal {
    /// Whether the caller may use model group `group`.
    pub fn allows(&self, group: &str) -> bool {
        match self {
            Principal::Open | Principal::Master => true,
            Principal::Key(k) => k
                .models
                .as_ref()
                .is_none_or(|m| m.iter().any(|x| x == group)),
        }
    }

    /// For logs and metrics: never the key itself.
    pub fn name(&self) -> &str {
        match self {
            Principal::Open => "anonymous",
            Principal::Master => "master",
            Principal::Key(k) => &k.alias,
        }
    }
}

/// Constant-time equality of two digests.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The key a request presents, if any.
pub fn presented(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        let key = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .unwrap_or(v)
            .trim();
        if !key.is_empty() {
            return Some(key);
        }
    }
    ["api-key", "x-api-key"]
        .iter()
        .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

/// Authenticates a request against the live config. Returns the caller and the digest of the
/// key it presented (for limits by key).
pub fn authenticate(
    live: &Live,
    headers: &HeaderMap,
) -> Result<(Principal, Option<[u8; 32]>), Error> {
    let key = presented(headers);
    let Some(master) = &live.master_digest else {
        return Ok((Principal::Open, key.map(key_digest)));
    };
    let Some(key) = key else {
        return Err(ours(
            ErrorKind::Authentication,
            "No API key provided. Send it as 'Authorization: Bearer <key>'.",
        ));
    };
    let d = key_digest(key);
    if same(&d, master) {
        return Ok((Principal::Master, Some(d)));
    }
    match live.keys.get(&d) {
        Some(k) if k.expired(SystemTime::now()) => Err(ours(
            ErrorKind::Authentication,
            format!("API key '{}' has expired.", k.alias),
        )),
        Some(k) => Ok((Principal::Key(k.clone()), Some(d))),
        None => Err(ours(
            ErrorKind::Authentication,
            "Invalid API key. The key is not known to this gateway.",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_compare_in_constant_time_and_exactly() {
        let a = key_digest("sk-a");
        assert!(same(&a, &key_digest("sk-a")));
        assert!(!same(&a, &key_digest("sk-b")));
    }

    #[test]
    fn keys_come_from_the_usual_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(presented(&h), None);
        h.insert("x-api-key", "sk-x".parse().unwrap());
        assert_eq!(presented(&h), Some("sk-x"));
        h.insert(AUTHORIZATION, "Bearer sk-y".parse().unwrap());
        assert_eq!(presented(&h), Some("sk-y"));
    }
}
