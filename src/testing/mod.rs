//! Test support owned by the crate itself: the fake upstream ([`fake_upstream`]) used by the
//! Rust and Python test suites, the demo and the benchmarks. It serves OpenAI's API (and Azure
//! OpenAI's paths) and, through one module each, the native dialects of Anthropic, Gemini and
//! Bedrock. Nothing here is used by the gateway at runtime.

pub mod fake_anthropic;
pub mod fake_bedrock;
pub mod fake_gemini;
pub mod fake_upstream;

use bytes::Bytes;
use hyper::{Method, Response, Uri};

use fake_upstream::{Controls, FakeBody};

/// What a dialect module needs to answer one request. Request counting, `x-fake-key`,
/// `x-fake-delay-ms` and `x-fake-fail-times` bookkeeping are done before it is called; the
/// module answers everything else, faults included, in its own dialect.
pub(crate) struct Ctx<'a> {
    pub controls: &'a Controls,
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub body: &'a Bytes,
    /// Whether this request's faults apply (`x-fake-fail-times` not yet used up).
    pub failing: bool,
}

/// A native dialect served besides OpenAI's routes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Dialect {
    Anthropic,
    Gemini,
    Bedrock,
}

impl Dialect {
    pub(crate) fn respond(self, ctx: &Ctx<'_>) -> Response<FakeBody> {
        match self {
            Dialect::Anthropic => fake_anthropic::respond(ctx),
            Dialect::Gemini => fake_gemini::respond(ctx),
            Dialect::Bedrock => fake_bedrock::respond(ctx),
        }
    }
}

/// The dialect whose API this request's path belongs to, if not OpenAI's.
pub(crate) fn dialect_of(method: &Method, path: &str) -> Option<Dialect> {
    if fake_anthropic::serves(method, path) {
        Some(Dialect::Anthropic)
    } else if fake_gemini::serves(method, path) {
        Some(Dialect::Gemini)
    } else if fake_bedrock::serves(method, path) {
        Some(Dialect::Bedrock)
    } else {
        None
    }
}
