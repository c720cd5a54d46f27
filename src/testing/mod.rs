//! Test support owned by the crate itself: the in-process fake OpenAI-compatible
//! upstream ([`fake_upstream`]) used by the Rust and Python test suites, the demo
//! and the benchmarks. Nothing here is used by the gateway at runtime.

pub mod fake_upstream;
