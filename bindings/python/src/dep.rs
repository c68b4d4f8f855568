//! `Dep.table` and `Dep.row`, with primary-key values rendered as
//! PostgreSQL's capture triggers render them.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDate, PyDateTime, PyFloat, PyInt, PyList, PyString, PyTime, PyTuple};

use crate::errors::to_py;

/// What a cache entry depends on: a whole table, or one row of it. When
/// the invalidator sees a committed change to it, the entry is deleted.
///
/// Table names are ``table`` (schema ``public``) or ``schema.table``,
/// spelled as PostgreSQL stores them.
///
/// >>> Dep.table("products").id
/// 't:public.products'
/// >>> Dep.row("products", 42).id
/// 'r:public.products:42'
/// >>> Dep.row("shop.order_lines", (1001, 3)).id
/// 'r:shop.order_lines:1001,3'
#[pyclass(module = "smartcache", frozen, eq, hash, subclass)]
pub(crate) struct Dep {
    pub(crate) dep: smartcache::Dep,
    id: String,
}

// Equal when their ids are: `products` and `public.products` are one table.
impl PartialEq for Dep {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for Dep {}

impl std::hash::Hash for Dep {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

impl Dep {
    fn new(dep: smartcache::Dep) -> PyResult<Self> {
        let id = dep.id().map_err(|e| to_py(e.into()))?.as_str().to_owned();
        Ok(Self { dep, id })
    }
}

#[pymethods]
impl Dep {
    /// Depends on every row of ``table``: any INSERT, UPDATE, DELETE or
    /// TRUNCATE deletes the entry.
    ///
    /// >>> Dep.table("shop.products").id
    /// 't:shop.products'
    #[staticmethod]
    fn table(table: &str) -> PyResult<Self> {
        Self::new(smartcache::Dep::table(table))
    }

    /// Depends on the row of ``table`` whose primary key is ``pk``: one
    /// value, or a tuple of one value per key column in key order.
    ///
    /// Values are rendered as PostgreSQL renders the column in JSON: ``int``
    /// as digits, ``bool`` as ``true``/``false``, ``str`` as it is,
    /// ``Decimal`` with its exponent expanded (``Decimal("1.50")`` matches
    /// a ``numeric(10,2)`` column holding 1.50), ``UUID`` in lower case,
    /// naive ``datetime`` as ``2024-05-01T10:00:00.25``, aware ``datetime``
    /// in UTC as ``2024-05-01T10:00:00+00:00``, ``date`` and ``time`` in ISO
    /// form. ``float``, ``bytes`` and ``None`` are refused.
    ///
    /// >>> Dep.row("products", 7).id
    /// 'r:public.products:7'
    /// >>> import uuid
    /// >>> Dep.row("users", uuid.UUID(int=1)).id
    /// 'r:public.users:00000000-0000-0000-0000-000000000001'
    #[staticmethod]
    fn row(table: &str, pk: &Bound<'_, PyAny>) -> PyResult<Self> {
        let values = if let Ok(t) = pk.cast::<PyTuple>() {
            t.iter().map(|v| render(&v)).collect::<PyResult<Vec<_>>>()?
        } else if let Ok(l) = pk.cast::<PyList>() {
            l.iter().map(|v| render(&v)).collect::<PyResult<Vec<_>>>()?
        } else {
            vec![render(pk)?]
        };
        Self::new(smartcache::Dep::row(table, values))
    }

    /// The dependency id stored in Redis: ``t:schema.table`` or
    /// ``r:schema.table:row``, as ``smartcache-invalidator keys`` lists it.
    #[getter]
    fn id(&self) -> &str {
        &self.id
    }

    fn __repr__(&self) -> String {
        format!("<Dep {}>", self.id)
    }
}

/// One primary-key value as the text `to_jsonb(col) #>> '{}'` gives.
fn render(v: &Bound<'_, PyAny>) -> PyResult<String> {
    let py = v.py();
    if let Ok(b) = v.cast::<PyBool>() {
        return Ok(if b.is_true() { "true" } else { "false" }.to_owned());
    }
    if v.is_instance_of::<PyInt>() {
        return Ok(v.str()?.to_string());
    }
    if let Ok(s) = v.cast::<PyString>() {
        return Ok(s.to_str()?.to_owned());
    }
    if v.is_instance_of::<PyDateTime>() {
        let v = if v.getattr("tzinfo")?.is_none() {
            v.clone()
        } else {
            static UTC: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
            let utc = UTC.import(py, "datetime", "timezone")?.getattr("utc")?;
            v.call_method1("astimezone", (utc,))?
        };
        return Ok(trim_fraction(
            &v.call_method0("isoformat")?.extract::<String>()?,
        ));
    }
    if v.is_instance_of::<PyDate>() || v.is_instance_of::<PyTime>() {
        return Ok(trim_fraction(
            &v.call_method0("isoformat")?.extract::<String>()?,
        ));
    }
    static DECIMAL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    if v.is_instance(DECIMAL.import(py, "decimal", "Decimal")?)? {
        let format = py.import("builtins")?.getattr("format")?;
        return format.call1((v, "f"))?.extract();
    }
    static UUID: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    if v.is_instance(UUID.import(py, "uuid", "UUID")?)? {
        return Ok(v.str()?.to_string());
    }
    let why = if v.is_instance_of::<PyFloat>() {
        "floats make poor keys: their text depends on the server's extra_float_digits"
    } else if v.is_none() {
        "a primary key is never NULL"
    } else {
        "use int, str, bool, Decimal, UUID, datetime, date or time, or a tuple of them"
    };
    Err(PyTypeError::new_err(format!(
        "Dep.row cannot use a {} as a primary-key value: {why}",
        v.get_type().name()?
    )))
}

/// `10:00:00.250000` -> `10:00:00.25`, as PostgreSQL writes fractions.
fn trim_fraction(iso: &str) -> String {
    let Some(dot) = iso.find('.') else {
        return iso.to_owned();
    };
    let end = iso[dot + 1..]
        .find(|c: char| !c.is_ascii_digit())
        .map_or(iso.len(), |i| dot + 1 + i);
    let digits = iso[dot + 1..end].trim_end_matches('0');
    let mut out = iso[..dot].to_owned();
    if !digits.is_empty() {
        out.push('.');
        out.push_str(digits);
    }
    out.push_str(&iso[end..]);
    out
}
