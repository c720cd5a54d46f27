//! The bedrock dialect (being written).

use super::{Endpoint, Route};
use crate::error::{Error, ErrorKind, Result};

/// The route for `bedrock/<model>`.
pub fn route(model: &str, _ep: &Endpoint) -> Result<Route> {
    Err(Error::new(
        ErrorKind::InvalidConfig,
        format!("provider 'bedrock' is not available in this build (model {model})"),
    ))
}
