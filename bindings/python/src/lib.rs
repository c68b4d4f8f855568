//! Python bindings of the `smartcache` library: the module
//! `smartcache._smartcache`, re-exported by the `smartcache` package.
//!
//! Nothing of the protocol lives here: every call goes through
//! `smartcache::Cache`, so Python and Rust share the key layout, the Lua
//! scripts and the fill leases. Values cross as JSON text
//! (`serde_json::value::RawValue`), encoded and decoded by Python's `json`
//! module.

mod cache;
mod dep;
mod errors;
mod json;
mod wait;

use pyo3::prelude::*;

#[pymodule]
fn _smartcache(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all().thread_name("smartcache");
    pyo3_async_runtimes::tokio::init(runtime);
    m.add_class::<cache::Cache>()?;
    m.add_class::<cache::KeyInfo>()?;
    m.add_class::<dep::Dep>()?;
    m.add_function(wrap_pyfunction!(_after_fork_in_child, m)?)?;
    Ok(())
}

/// Marks this process as a fork of one whose runtime had started; the
/// package registers it with `os.register_at_fork`.
#[pyfunction]
fn _after_fork_in_child() {
    wait::forked();
}
