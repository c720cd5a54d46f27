//! The anthropic dialect (being written).

use super::{Endpoint, Route};
use crate::error::{Error, ErrorKind, Result};

/// The route for `anthropic/<model>`.
pub fn route(model: &str, _ep: &Endpoint) -> Result<Route> {
    Err(Error::new(
        ErrorKind::InvalidConfig,
        format!("provider 'anthropic' is not available in this build (model {model})"),
    ))
}
