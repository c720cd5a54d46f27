//! HTTP answers for errors: every [`ErrorKind`] as an OpenAI-shaped body
//! (`{"error": {"message", "type", "param", "code"}}`) with its status, `Retry-After` and
//! `x-ratelimit-*` headers on 429. One exhaustive match decides the OpenAI `type` of a kind.

use bytes::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};
use serde_json::json;

use super::body::Out;
use crate::error::{Error, ErrorKind};

/// The OpenAI `error.type` of a kind.
pub const fn openai_type(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Authentication => "authentication_error",
        ErrorKind::PermissionDenied => "permission_error",
        ErrorKind::BadRequest
        | ErrorKind::UnprocessableEntity
        | ErrorKind::UnsupportedParams
        | ErrorKind::ContextWindowExceeded
        | ErrorKind::ContentPolicyViolation
        | ErrorKind::InvalidConfig => "invalid_request_error",
        ErrorKind::NotFound => "not_found_error",
        ErrorKind::RateLimited => "rate_limit_error",
        ErrorKind::QuotaExceeded => "insufficient_quota",
        ErrorKind::BudgetExceeded => "budget_exceeded",
        ErrorKind::Timeout => "timeout_error",
        ErrorKind::Connection
        | ErrorKind::ServiceUnavailable
        | ErrorKind::BadGateway
        | ErrorKind::Internal
        | ErrorKind::InvalidResponse
        | ErrorKind::Api => "api_error",
    }
}

/// The status the gateway answers with. Upstream statuses pass through where they mean the
/// same to our client; a failure of the upstream's own credentials is the gateway's problem,
/// not the caller's (502, not 401/403).
pub fn status_of(e: &Error) -> StatusCode {
    let code = match e.kind {
        ErrorKind::Authentication | ErrorKind::PermissionDenied
            if e.provider.as_deref().is_some_and(|p| p != "llmux") =>
        {
            502
        }
        ErrorKind::Timeout => 504,
        ErrorKind::Connection => 502,
        ErrorKind::InvalidConfig => 500,
        _ => e.status_code(),
    };
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The JSON body of an error (also the payload of an in-stream error event).
pub fn error_json(e: &Error) -> serde_json::Value {
    let code = e
        .upstream_code
        .clone()
        .unwrap_or_else(|| e.kind.code().to_owned());
    json!({
        "error": {
            "message": e.message,
            "type": openai_type(e.kind),
            "param": serde_json::Value::Null,
            "code": code,
        }
    })
}

/// An error response.
pub fn respond(e: &Error, request_id: &str) -> Response<Out> {
    let body = serde_json::to_vec(&error_json(e)).unwrap_or_default();
    let mut r = Response::new(Out::full(Bytes::from(body)));
    *r.status_mut() = status_of(e);
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-request-id", v);
    }
    if let Some(wait) = e.retry_after {
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        h.insert(RETRY_AFTER, HeaderValue::from(secs));
        h.insert("retry-after-ms", HeaderValue::from(wait.as_millis() as u64));
    }
    r
}

/// A gateway-side refusal (bad input, auth): our own error, not an upstream's.
pub fn ours(kind: ErrorKind, message: impl Into<String>) -> Error {
    let mut e = Error::new(kind, message);
    e.provider = Some("llmux".into());
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_status_and_type() {
        for kind in ErrorKind::ALL {
            let e = ours(kind, "x");
            let s = status_of(&e);
            assert!(
                s.is_client_error() || s.is_server_error(),
                "{kind:?} -> {s}"
            );
            assert!(!openai_type(kind).is_empty());
        }
        assert_eq!(status_of(&ours(ErrorKind::RateLimited, "x")), 429);
        let mut upstream = Error::new(ErrorKind::Authentication, "bad upstream key");
        upstream.provider = Some("openai".into());
        assert_eq!(status_of(&upstream), 502);
        assert_eq!(status_of(&ours(ErrorKind::Authentication, "no key")), 401);
    }
}
