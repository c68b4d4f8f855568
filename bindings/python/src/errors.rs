//! The library's errors as the Python exceptions of `smartcache.exceptions`,
//! and the error type of a `compute` callable.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

/// Why a call through the library failed: the library's own error, or the
/// exception raised by the caller's `compute`, which goes back to Python
/// unchanged.
pub(crate) enum Failure {
    Cache(smartcache::Error),
    Python(PyErr),
}

impl From<smartcache::Error> for Failure {
    fn from(e: smartcache::Error) -> Self {
        Failure::Cache(e)
    }
}

impl From<PyErr> for Failure {
    fn from(e: PyErr) -> Self {
        Failure::Python(e)
    }
}

impl From<Failure> for PyErr {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Cache(e) => to_py(e),
            Failure::Python(e) => e,
        }
    }
}

/// The exception for a library error, its message the error and its
/// causes.
pub(crate) fn to_py(e: smartcache::Error) -> PyErr {
    let class = match e {
        smartcache::Error::InvalidName(_) => "InvalidName",
        smartcache::Error::InvalidUrl { .. } => "InvalidUrl",
        smartcache::Error::TlsFile { .. } => "InvalidTlsFile",
        ref e if e.is_redis_unavailable() => "RedisUnavailable",
        _ => "Error",
    };
    let message = chain(&e);
    Python::attach(|py| match exception(py, class) {
        Ok(class) => PyErr::from_type(class, message),
        Err(e) => e,
    })
}

fn exception<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, pyo3::types::PyType>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    let module =
        MODULE.get_or_try_init(py, || py.import("smartcache.exceptions").map(Bound::unbind))?;
    Ok(module.bind(py).getattr(name)?.cast_into()?)
}

fn chain(e: &dyn std::error::Error) -> String {
    std::iter::successors(Some(e), |e| e.source())
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}
