//! Values cross between Python and the library as JSON text, written and
//! read by Python's `json` module.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;
use serde_json::value::RawValue;

/// JSON text: what the library stores and hands back.
pub(crate) type Json = Box<RawValue>;

/// `value` as compact JSON. NaN and infinities are refused (they are not
/// JSON, and other languages could not read the entry); so is anything
/// `json.dumps` cannot write, with its own `TypeError`.
pub(crate) fn dumps(py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<Json> {
    static ENCODE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let encode = ENCODE.get_or_try_init(py, || -> PyResult<_> {
        let kwargs = PyDict::new(py);
        kwargs.set_item("ensure_ascii", false)?;
        kwargs.set_item("allow_nan", false)?;
        kwargs.set_item("separators", (",", ":"))?;
        let encoder = py
            .import("json")?
            .getattr("JSONEncoder")?
            .call((), Some(&kwargs))?;
        Ok(encoder.getattr("encode")?.unbind())
    })?;
    let text: String = encode.bind(py).call1((value,))?.extract()?;
    RawValue::from_string(text)
        .map_err(|e| pyo3::exceptions::PyValueError::new_err(format!("not JSON: {e}")))
}

/// The Python value of JSON text.
pub(crate) fn loads(py: Python<'_>, json: &RawValue) -> PyResult<Py<PyAny>> {
    static LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let loads = LOADS.import(py, "json", "loads")?;
    Ok(loads.call1((json.get(),))?.unbind())
}
