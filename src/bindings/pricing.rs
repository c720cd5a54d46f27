//! Price table and cost functions for Python (`llmux.completion_cost`, `cost_per_token`,
//! `get_model_info`, `register_model`, `model_cost`): conversions around `crate::pricing`.

use pyo3::prelude::*;
use pyo3::types::PyDict;
use pythonize::{depythonize, pythonize};
use serde_json::{Map, Value};

use super::errors::to_pyerr;
use crate::pricing;
use crate::types::Usage;

fn to_py<'py>(py: Python<'py>, v: &impl serde::Serialize) -> PyResult<Bound<'py, PyAny>> {
    pythonize(py, v).map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))
}

/// The table entry of a model, or `None`.
#[pyfunction]
#[pyo3(signature = (model, provider=None))]
pub fn model_entry<'py>(
    py: Python<'py>,
    model: &str,
    provider: Option<&str>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    pricing::lookup(provider, model)
        .map(|e| to_py(py, &*e))
        .transpose()
}

/// `(prompt_cost, completion_cost)` in USD for a usage dict, or `None` when unpriced.
#[pyfunction]
#[pyo3(signature = (model, usage, provider=None))]
pub fn cost_for(
    model: &str,
    usage: &Bound<'_, PyDict>,
    provider: Option<&str>,
) -> PyResult<Option<(f64, f64)>> {
    let usage: Usage = depythonize(usage)
        .map_err(|e| pyo3::exceptions::PyTypeError::new_err(format!("usage: {e}")))?;
    Ok(pricing::cost(provider, model, &usage).map(|c| (c.prompt, c.completion)))
}

/// Adds or updates entries (`{"model-name": {"input_cost_per_token": ..., ...}}`).
#[pyfunction]
pub fn register_model(py: Python<'_>, entries: &Bound<'_, PyDict>) -> PyResult<()> {
    let m: Map<String, Value> = depythonize(entries)
        .map_err(|e| pyo3::exceptions::PyTypeError::new_err(format!("register_model: {e}")))?;
    pricing::register(m).map_err(|e| to_pyerr(py, e))
}

/// Loads a price file in LiteLLM's format over the current table; returns its entry count.
#[pyfunction]
pub fn load_price_file(py: Python<'_>, path: std::path::PathBuf) -> PyResult<usize> {
    pricing::load_file(&path).map_err(|e| to_pyerr(py, e))
}

/// The whole table as a dict.
#[pyfunction]
pub fn model_cost(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    for (k, v) in pricing::entries() {
        d.set_item(k, to_py(py, &*v)?)?;
    }
    Ok(d)
}

/// How many calls found no price since the process started.
#[pyfunction]
pub fn unpriced_count() -> u64 {
    pricing::unpriced_count()
}

/// Tokens of `text` (a string or a list of strings), or of `messages` (plus `tools`).
#[pyfunction]
#[pyo3(signature = (model, text=None, messages=None, tools=None))]
pub fn token_count(
    py: Python<'_>,
    model: &str,
    text: Option<&Bound<'_, PyAny>>,
    messages: Option<&Bound<'_, PyAny>>,
    tools: Option<&Bound<'_, PyAny>>,
) -> PyResult<usize> {
    let value = |v: &Bound<'_, PyAny>, what: &str| -> PyResult<Value> {
        depythonize(v).map_err(|e| pyo3::exceptions::PyTypeError::new_err(format!("{what}: {e}")))
    };
    let counted = if let Some(t) = text {
        match value(t, "text")? {
            Value::String(s) => pricing::tokens::count_text(model, &s),
            Value::Array(items) => items.iter().try_fold(0usize, |n, s| {
                Ok(n + pricing::tokens::count_text(model, s.as_str().unwrap_or_default())?)
            }),
            _ => {
                return Err(pyo3::exceptions::PyTypeError::new_err(
                    "text must be a string or a list of strings",
                ))
            }
        }
    } else if let Some(m) = messages {
        let msgs = super::convert::messages(m)?;
        let tools = tools.map(|t| value(t, "tools")).transpose()?;
        pricing::tokens::count_messages(model, &msgs, tools.as_ref())
    } else {
        return Err(pyo3::exceptions::PyTypeError::new_err(
            "token_counter needs text= or messages=",
        ));
    };
    counted.map_err(|e| to_pyerr(py, e))
}

/// Loads a price file and reloads it whenever it changes; returns its entry count.
#[pyfunction]
pub fn watch_price_file(py: Python<'_>, path: std::path::PathBuf) -> PyResult<usize> {
    pricing::watch_file(&path).map_err(|e| to_pyerr(py, e))
}
