//! The one mapping from `ErrorKind` to LiteLLM's exception classes. The classes live in
//! `python/llmux/exceptions.py`; `_from_native` there builds the instance (and, when the
//! program has imported `openai`, makes it an instance of the matching openai class too).

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use crate::error::{Error, ErrorKind};

/// The LiteLLM class for a kind. Exhaustive: a new kind must be placed here.
pub const fn class_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Authentication => "AuthenticationError",
        ErrorKind::PermissionDenied => "PermissionDeniedError",
        ErrorKind::BadRequest => "BadRequestError",
        ErrorKind::UnprocessableEntity => "UnprocessableEntityError",
        ErrorKind::UnsupportedParams => "UnsupportedParamsError",
        ErrorKind::ContextWindowExceeded => "ContextWindowExceededError",
        ErrorKind::ContentPolicyViolation => "ContentPolicyViolationError",
        ErrorKind::NotFound => "NotFoundError",
        ErrorKind::RateLimited => "RateLimitError",
        ErrorKind::QuotaExceeded => "RateLimitError",
        ErrorKind::Timeout => "Timeout",
        ErrorKind::Connection => "APIConnectionError",
        ErrorKind::ServiceUnavailable => "ServiceUnavailableError",
        ErrorKind::BadGateway => "BadGatewayError",
        ErrorKind::Internal => "InternalServerError",
        ErrorKind::InvalidResponse => "APIResponseValidationError",
        ErrorKind::Api => "APIError",
        ErrorKind::BudgetExceeded => "BudgetExceededError",
        ErrorKind::InvalidConfig => "BadRequestError",
    }
}

static FACTORY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn factory(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    FACTORY
        .get_or_try_init(py, || -> PyResult<Py<PyAny>> {
            Ok(py
                .import("llmux.exceptions")?
                .getattr("_from_native")?
                .unbind())
        })
        .map(|f| f.bind(py))
}

/// Builds the Python exception for a core error.
pub fn to_pyerr(py: Python<'_>, e: Error) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let exc = factory(py)?.call1((
            class_name(e.kind),
            e.kind.code(),
            &e.message,
            e.status_code(),
            e.provider.as_deref(),
            e.model.as_deref(),
            e.retry_after.map(|d| d.as_secs_f64()),
            e.upstream_code.as_deref(),
            e.attempts,
            Option::<&str>::None,
        ))?;
        Ok(PyErr::from_value(exc))
    };
    build().unwrap_or_else(|err| err)
}

/// Every kind's code and class, for tests that check the mapping is total.
#[pyfunction]
pub fn error_kinds() -> Vec<(&'static str, &'static str, bool, u16)> {
    ErrorKind::ALL
        .iter()
        .map(|k| (k.code(), class_name(*k), k.retryable(), k.default_status()))
        .collect()
}
