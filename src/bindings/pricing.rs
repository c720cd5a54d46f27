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
