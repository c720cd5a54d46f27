//! The fake upstream's bedrock dialect (being written).

use hyper::{Method, Response};

use super::fake_upstream::FakeBody;
use super::Ctx;

pub(crate) fn serves(_method: &Method, _path: &str) -> bool {
    false
}

pub(crate) fn respond(_ctx: &Ctx<'_>) -> Response<FakeBody> {
    super::fake_upstream::json_response(hyper::StatusCode::NOT_IMPLEMENTED, b"{}".to_vec())
}
