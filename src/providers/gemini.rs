//! The gemini dialect (being written).

use super::{Endpoint, Route};
use crate::error::{Error, ErrorKind, Result};

/// The route for `gemini/<model>`.
pub fn route(model: &str, _ep: &Endpoint) -> Result<Route> {
    Err(Error::new(
        ErrorKind::InvalidConfig,
        format!("provider 'gemini' is not available in this build (model {model})"),
    ))
}
