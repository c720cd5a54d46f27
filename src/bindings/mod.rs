//! The Python extension module `llmux._llmux`: the only place PyO3 appears.
//!
//! Each function converts its arguments once, calls one core function, and converts the result
//! back once: a call crosses the FFI boundary one time, not once per field. Responses come back
//! as plain dicts in OpenAI's wire shape; `python/llmux/types.py` wraps them lazily in
//! LiteLLM-shaped objects. Errors become the LiteLLM exception classes (see `errors.rs`).

mod audio;
mod bridge;
mod completion;
mod convert;
mod errors;
mod hooks;
mod limits;
mod pricing;
mod router;
mod runtime;
mod serve;
mod stream;
mod testing;

use pyo3::prelude::*;

#[pymodule]
fn _llmux(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(completion::completion, m)?)?;
    m.add_function(wrap_pyfunction!(completion::acompletion, m)?)?;
    m.add_function(wrap_pyfunction!(completion::completion_stream, m)?)?;
    m.add_function(wrap_pyfunction!(completion::acompletion_stream, m)?)?;
    m.add_function(wrap_pyfunction!(completion::embedding, m)?)?;
    m.add_function(wrap_pyfunction!(completion::aembedding, m)?)?;
    m.add_function(wrap_pyfunction!(completion::image_generation, m)?)?;
    m.add_function(wrap_pyfunction!(audio::speech, m)?)?;
    m.add_function(wrap_pyfunction!(audio::aspeech, m)?)?;
    m.add_function(wrap_pyfunction!(audio::transcription, m)?)?;
    m.add_function(wrap_pyfunction!(audio::atranscription, m)?)?;
    m.add_function(wrap_pyfunction!(audio::image_edit, m)?)?;
    m.add_function(wrap_pyfunction!(audio::aimage_edit, m)?)?;
    m.add_function(wrap_pyfunction!(completion::aimage_generation, m)?)?;
    m.add_function(wrap_pyfunction!(errors::error_kinds, m)?)?;
    m.add_function(wrap_pyfunction!(pricing::model_entry, m)?)?;
    m.add_function(wrap_pyfunction!(pricing::cost_for, m)?)?;
    m.add_function(wrap_pyfunction!(pricing::register_model, m)?)?;
    m.add_function(wrap_pyfunction!(pricing::load_price_file, m)?)?;
    m.add_function(wrap_pyfunction!(pricing::model_cost, m)?)?;
    m.add_function(wrap_pyfunction!(pricing::unpriced_count, m)?)?;
    m.add_function(wrap_pyfunction!(pricing::token_count, m)?)?;
    m.add_function(wrap_pyfunction!(pricing::watch_price_file, m)?)?;
    m.add_function(wrap_pyfunction!(testing::serve_fake_upstream, m)?)?;
    m.add_function(wrap_pyfunction!(hooks::set_budget, m)?)?;
    m.add_function(wrap_pyfunction!(hooks::current_spend, m)?)?;
    m.add_function(wrap_pyfunction!(hooks::set_request_log, m)?)?;
    m.add_function(wrap_pyfunction!(limits::set_rate_limit, m)?)?;
    m.add_function(wrap_pyfunction!(limits::rate_limit_stats, m)?)?;
    m.add_function(wrap_pyfunction!(hooks::set_cache, m)?)?;
    m.add_function(wrap_pyfunction!(hooks::cache_stats, m)?)?;
    m.add_function(wrap_pyfunction!(serve::serve, m)?)?;
    m.add_class::<stream::NativeStream>()?;
    m.add_class::<audio::NativeAudio>()?;
    m.add_class::<bridge::Bridge>()?;
    m.add_class::<bridge::TaskHandle>()?;
    m.add_class::<router::NativeRouter>()?;
    Ok(())
}
