//! The one error taxonomy of LLMux.
//!
//! Every failure, whatever its origin (an upstream's error body, a socket, a bad argument, a
//! limiter), becomes an [`Error`] with an [`ErrorKind`]. The kind decides the stable snake_case
//! code, the HTTP status we answer with, and whether a retry may help. The Python exception
//! classes (`bindings/errors.rs`) and, later, the HTTP error bodies are each one exhaustive
//! `match` over `ErrorKind`.
//!
//! This module owns no I/O and imports nothing from providers, bindings or the server.

use std::fmt;
use std::time::Duration;

/// What went wrong, in words a caller can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// 401: the key is missing, wrong or revoked.
    Authentication,
    /// 403: the key is valid but may not do this (region, model access).
    PermissionDenied,
    /// 400: the request is malformed or asks for something the model refuses.
    BadRequest,
    /// 422: the request parsed but a value is unacceptable.
    UnprocessableEntity,
    /// A parameter the provider does not support was given without `drop_params`.
    UnsupportedParams,
    /// The prompt (plus the output cap) does not fit the model's context window.
    ContextWindowExceeded,
    /// The provider's safety system refused the input or output.
    ContentPolicyViolation,
    /// 404: unknown model, deployment or route.
    NotFound,
    /// 429 that will pass: a rate limit.
    RateLimited,
    /// 429/402 that will not pass by waiting: billing quota exhausted.
    QuotaExceeded,
    /// The call (or an upstream gateway, 408/504) ran out of time.
    Timeout,
    /// The socket failed: refused, reset, TLS, DNS, or a stream cut before its end.
    Connection,
    /// 503/529: the upstream is overloaded or down for a while.
    ServiceUnavailable,
    /// 502: a proxy in front of the upstream failed.
    BadGateway,
    /// 500: the upstream failed internally.
    Internal,
    /// The upstream answered 2xx with a body that is not what its API promises.
    InvalidResponse,
    /// An upstream status with no better class (e.g. 409, 418).
    Api,
    /// A spend limit was reached.
    BudgetExceeded,
    /// The call or the configuration names something that cannot work (unknown provider, bad URL).
    InvalidConfig,
}

impl ErrorKind {
    /// Every kind, in declaration order; used by tests that must cover them all.
    pub const ALL: [ErrorKind; 19] = [
        ErrorKind::Authentication,
        ErrorKind::PermissionDenied,
        ErrorKind::BadRequest,
        ErrorKind::UnprocessableEntity,
        ErrorKind::UnsupportedParams,
        ErrorKind::ContextWindowExceeded,
        ErrorKind::ContentPolicyViolation,
        ErrorKind::NotFound,
        ErrorKind::RateLimited,
        ErrorKind::QuotaExceeded,
        ErrorKind::Timeout,
        ErrorKind::Connection,
        ErrorKind::ServiceUnavailable,
        ErrorKind::BadGateway,
        ErrorKind::Internal,
        ErrorKind::InvalidResponse,
        ErrorKind::Api,
        ErrorKind::BudgetExceeded,
        ErrorKind::InvalidConfig,
    ];

    /// The stable machine code (snake_case). Never renamed once published.
    pub const fn code(self) -> &'static str {
        match self {
            ErrorKind::Authentication => "authentication",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::UnprocessableEntity => "unprocessable_entity",
            ErrorKind::UnsupportedParams => "unsupported_params",
            ErrorKind::ContextWindowExceeded => "context_window_exceeded",
            ErrorKind::ContentPolicyViolation => "content_policy_violation",
            ErrorKind::NotFound => "not_found",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::QuotaExceeded => "quota_exceeded",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connection => "connection",
            ErrorKind::ServiceUnavailable => "service_unavailable",
            ErrorKind::BadGateway => "bad_gateway",
            ErrorKind::Internal => "internal",
            ErrorKind::InvalidResponse => "invalid_response",
            ErrorKind::Api => "api_error",
            ErrorKind::BudgetExceeded => "budget_exceeded",
            ErrorKind::InvalidConfig => "invalid_config",
        }
    }

    /// The HTTP status that represents this kind when no upstream status is known.
    pub const fn default_status(self) -> u16 {
        match self {
            ErrorKind::Authentication => 401,
            ErrorKind::PermissionDenied => 403,
            ErrorKind::BadRequest
            | ErrorKind::UnsupportedParams
            | ErrorKind::ContextWindowExceeded
            | ErrorKind::ContentPolicyViolation
            | ErrorKind::BudgetExceeded
            | ErrorKind::InvalidConfig => 400,
            ErrorKind::UnprocessableEntity => 422,
            ErrorKind::NotFound => 404,
            ErrorKind::RateLimited | ErrorKind::QuotaExceeded => 429,
            ErrorKind::Timeout => 408,
            ErrorKind::Connection | ErrorKind::Internal | ErrorKind::Api => 500,
            ErrorKind::ServiceUnavailable => 503,
            ErrorKind::BadGateway | ErrorKind::InvalidResponse => 502,
        }
    }

    /// Whether waiting and sending the same request again may succeed.
    pub const fn retryable(self) -> bool {
        match self {
            ErrorKind::RateLimited
            | ErrorKind::Timeout
            | ErrorKind::Connection
            | ErrorKind::ServiceUnavailable
            | ErrorKind::BadGateway
            | ErrorKind::Internal => true,
            ErrorKind::Authentication
            | ErrorKind::PermissionDenied
            | ErrorKind::BadRequest
            | ErrorKind::UnprocessableEntity
            | ErrorKind::UnsupportedParams
            | ErrorKind::ContextWindowExceeded
            | ErrorKind::ContentPolicyViolation
            | ErrorKind::NotFound
            | ErrorKind::QuotaExceeded
            | ErrorKind::InvalidResponse
            | ErrorKind::Api
            | ErrorKind::BudgetExceeded
            | ErrorKind::InvalidConfig => false,
        }
    }

    /// The kind an upstream HTTP status means when its body says nothing more precise.
    pub const fn from_status(status: u16) -> ErrorKind {
        match status {
            400 | 413 => ErrorKind::BadRequest,
            401 => ErrorKind::Authentication,
            402 => ErrorKind::QuotaExceeded,
            403 => ErrorKind::PermissionDenied,
            404 => ErrorKind::NotFound,
            408 | 504 => ErrorKind::Timeout,
            422 => ErrorKind::UnprocessableEntity,
            429 => ErrorKind::RateLimited,
            502 => ErrorKind::BadGateway,
            503 | 529 => ErrorKind::ServiceUnavailable,
            500..=599 => ErrorKind::Internal,
            _ => ErrorKind::Api,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A classified failure with what a caller needs to report or retry it.
///
/// Boxed so that `Result<T, Error>` stays one pointer wide on the happy path; fields are read
/// through `Deref` (`err.kind`, `err.message`).
#[derive(Debug, Clone)]
pub struct Error(Box<ErrorData>);

/// The fields of an [`Error`].
#[derive(Debug, Clone)]
pub struct ErrorData {
    pub kind: ErrorKind,
    /// Human-readable, never containing a secret.
    pub message: String,
    /// The upstream's HTTP status, when the error came from an HTTP answer.
    pub status: Option<u16>,
    /// The provider prefix (`openai`, `deepseek`, ...), when known.
    pub provider: Option<String>,
    /// The model as the caller named it, when known.
    pub model: Option<String>,
    /// The upstream's retry hint (`retry-after-ms`, `retry-after`), when it gave one.
    pub retry_after: Option<Duration>,
    /// The upstream's own error code or type (`insufficient_quota`, `rate_limit_exceeded`).
    pub upstream_code: Option<String>,
    /// How many attempts were made before giving up (1 = no retry).
    pub attempts: u32,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error(Box::new(ErrorData {
            kind,
            message: message.into(),
            status: None,
            provider: None,
            model: None,
            retry_after: None,
            upstream_code: None,
            attempts: 1,
        }))
    }

    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    pub fn with_retry_after(mut self, hint: Option<Duration>) -> Self {
        self.retry_after = hint;
        self
    }

    pub fn with_upstream_code(mut self, code: Option<String>) -> Self {
        self.upstream_code = code;
        self
    }

    /// Fills provider and model where the error does not know them yet.
    pub fn with_context(mut self, provider: &str, model: &str) -> Self {
        if self.provider.is_none() {
            self.provider = Some(provider.to_owned());
        }
        if self.model.is_none() {
            self.model = Some(model.to_owned());
        }
        self
    }

    /// The status to report: the upstream's, else the kind's default.
    pub fn status_code(&self) -> u16 {
        self.status.unwrap_or(self.kind.default_status())
    }

    pub fn retryable(&self) -> bool {
        self.kind.retryable()
    }

    pub fn invalid_config(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidConfig, message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::BadRequest, message)
    }
}

impl std::ops::Deref for Error {
    type Target = ErrorData;

    fn deref(&self) -> &ErrorData {
        &self.0
    }
}

impl std::ops::DerefMut for Error {
    fn deref_mut(&mut self) -> &mut ErrorData {
        &mut self.0
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.code(), self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for k in ErrorKind::ALL {
            assert!(seen.insert(k.code()), "duplicate code {}", k.code());
            assert!(k.code().chars().all(|c| c.is_ascii_lowercase() || c == '_'));
        }
    }

    #[test]
    fn never_retry_quota_auth_bad_request_policy() {
        for k in [
            ErrorKind::QuotaExceeded,
            ErrorKind::Authentication,
            ErrorKind::BadRequest,
            ErrorKind::ContentPolicyViolation,
            ErrorKind::ContextWindowExceeded,
        ] {
            assert!(!k.retryable(), "{k} must not be retried");
        }
        for k in [
            ErrorKind::RateLimited,
            ErrorKind::ServiceUnavailable,
            ErrorKind::Timeout,
        ] {
            assert!(k.retryable(), "{k} should be retried");
        }
    }

    #[test]
    fn status_classes() {
        assert_eq!(ErrorKind::from_status(429), ErrorKind::RateLimited);
        assert_eq!(ErrorKind::from_status(529), ErrorKind::ServiceUnavailable);
        assert_eq!(ErrorKind::from_status(502), ErrorKind::BadGateway);
        assert_eq!(ErrorKind::from_status(504), ErrorKind::Timeout);
        assert_eq!(ErrorKind::from_status(500), ErrorKind::Internal);
        assert_eq!(ErrorKind::from_status(418), ErrorKind::Api);
    }
}
