//! The cache key: a SHA-256 of a canonical serialization of what decides the answer.
//!
//! Hashed, in this order and each framed as one canonical JSON document: a format version, the
//! namespace, the tenant (the caller: the OpenAI `user` in the SDK, a virtual key in the
//! gateway), the model name the caller asked for, the messages, and every request parameter
//! except those in [`IGNORED_PARAMS`] (transport and bookkeeping: `stream`, `timeout`,
//! `metadata`, the cache controls themselves, ...). Canonical means: object keys sorted at every
//! depth, no whitespace, and numbers with an integral value written as integers (`1.0` and `1`
//! are the same temperature). So the order of keyword arguments or of keys in a message never
//! changes the key, while any change of model, message, parameter, tenant or namespace does.

use std::io::Write;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::types::ChatRequest;

/// Parameters that do not change the answer, left out of the key.
pub const IGNORED_PARAMS: &[&str] = &[
    "stream",
    "stream_options",
    "metadata",
    "timeout",
    "request_timeout",
    "stream_timeout",
    "api_key",
    "api_base",
    "base_url",
    "api_version",
    "organization",
    "num_retries",
    "max_retries",
    "extra_headers",
    "headers",
    "cache",
    "caching",
    // The tenant is hashed on its own.
    "user",
    "mock_response",
    "litellm_call_id",
    "tags",
];

/// The cache key of `req` for `tenant` in `namespace`: `<namespace>:<sha256 hex>`, or the hex
/// digest alone without a namespace.
pub fn cache_key(
    namespace: Option<&str>,
    tenant: Option<&str>,
    model: &str,
    req: &ChatRequest,
) -> String {
    let mut h = HashWriter(Sha256::new());
    let frame = |h: &mut HashWriter, v: &Value| {
        write_canonical(h, v);
        h.0.update(b"\n");
    };
    frame(&mut h, &Value::String("llmux-cache-v1".into()));
    frame(
        &mut h,
        &namespace.map_or(Value::Null, |n| Value::String(n.into())),
    );
    frame(
        &mut h,
        &tenant.map_or(Value::Null, |t| Value::String(t.into())),
    );
    frame(&mut h, &Value::String(model.to_owned()));
    for m in &req.messages {
        write_canonical(&mut h, m);
    }
    h.0.update(b"\n");
    let params: Map<String, Value> = req
        .params
        .iter()
        .filter(|(k, v)| !IGNORED_PARAMS.contains(&k.as_str()) && !v.is_null())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    frame(&mut h, &Value::Object(params));
    let digest = h.0.finalize();
    let mut hex = String::with_capacity(namespace.map_or(0, |n| n.len() + 1) + 64);
    if let Some(ns) = namespace {
        hex.push_str(ns);
        hex.push(':');
    }
    for b in digest.iter() {
        hex.push(char::from(HEX[usize::from(b >> 4)]));
        hex.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    hex
}

const HEX: &[u8; 16] = b"0123456789abcdef";

struct HashWriter(Sha256);

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Largest integer an `f64` holds exactly.
const EXACT_F64_INT: f64 = 9_007_199_254_740_992.0;

fn write_canonical(h: &mut HashWriter, v: &Value) {
    // Writing into a hasher cannot fail, and neither can serializing a string or a number.
    match v {
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort_unstable();
            h.0.update(b"{");
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    h.0.update(b",");
                }
                let _ = serde_json::to_writer(&mut *h, k);
                h.0.update(b":");
                if let Some(val) = o.get(k) {
                    write_canonical(h, val);
                }
            }
            h.0.update(b"}");
        }
        Value::Array(a) => {
            h.0.update(b"[");
            for (i, item) in a.iter().enumerate() {
                if i > 0 {
                    h.0.update(b",");
                }
                write_canonical(h, item);
            }
            h.0.update(b"]");
        }
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < EXACT_F64_INT => {
                // `f` is integral and exact: the cast is lossless (and turns -0.0 into 0).
                let _ = write!(h, "{}", f as i64);
            }
            _ => {
                let _ = serde_json::to_writer(&mut *h, n);
            }
        },
        other => {
            let _ = serde_json::to_writer(&mut *h, other);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(params: Value) -> ChatRequest {
        let mut r = ChatRequest::new("gpt-4o", vec![json!({"role": "user", "content": "hi"})]);
        if let Value::Object(p) = params {
            r.params = p;
        }
        r
    }

    #[test]
    fn integral_floats_hash_like_integers() {
        let a = cache_key(
            None,
            None,
            "m",
            &req(json!({"temperature": 1, "top_p": 0.5})),
        );
        let b = cache_key(
            None,
            None,
            "m",
            &req(json!({"temperature": 1.0, "top_p": 0.5})),
        );
        assert_eq!(a, b);
        let c = cache_key(
            None,
            None,
            "m",
            &req(json!({"temperature": 1.5, "top_p": 0.5})),
        );
        assert_ne!(a, c);
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn null_parameters_are_absent_ones() {
        assert_eq!(
            cache_key(None, None, "m", &req(json!({"seed": null}))),
            cache_key(None, None, "m", &req(json!({})))
        );
    }

    #[test]
    fn namespace_prefixes_the_key() {
        let k = cache_key(Some("team-a"), None, "m", &req(json!({})));
        assert!(k.starts_with("team-a:"));
        assert_ne!(
            k.trim_start_matches("team-a:"),
            cache_key(None, None, "m", &req(json!({})))
        );
    }
}
