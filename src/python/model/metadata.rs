//! `EventMetadata`: an event's processing metadata, kept by the bus, with the
//! live Python containers (sets, list) the original's dataclass had.

use parking_lot::Mutex;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PySet};
use std::sync::Arc;

use crate::python::convert::text::type_name;
use crate::python::convert::time::*;
use crate::python::runtime::errors::*;

pub use crate::event::{MetaCell, MetaState};

fn names_from(obj: &Bound<'_, PyAny>, field: &str) -> PyResult<thin_vec::ThinVec<Arc<str>>> {
    let mut out: thin_vec::ThinVec<Arc<str>> = thin_vec::ThinVec::new();
    for item in obj
        .try_iter()
        .map_err(|_| PyTypeError::new_err(format!("EventMetadata.{field} must be a set of str")))?
    {
        let s: String = item?
            .extract()
            .map_err(|_| PyTypeError::new_err(format!("EventMetadata.{field} must hold str")))?;
        if !out.iter().any(|n| **n == *s) {
            out.push(s.into());
        }
    }
    Ok(out)
}

/// The Python containers of an event's metadata, made on first access so that
/// user code can mutate them as it could the original's dataclass fields.
pub struct PyMirror {
    processed: Py<PySet>,
    failed: Py<PySet>,
    errors: Py<PyList>,
}

/// Handles to the (up-to-date) Python containers.
pub(crate) struct MirrorRefs {
    processed: Py<PySet>,
    failed: Py<PySet>,
    errors: Py<PyList>,
}

impl EventMetadata {
    /// Creates the Python containers, or replays the engine's changes onto them.
    fn mirror(&self, py: Python<'_>) -> PyResult<MirrorRefs> {
        let mut st = self.cell.lock();
        if st.mirror().is_none() {
            let m = PyMirror {
                processed: PySet::new(py, st.processed.iter().map(|n| &**n))?.unbind(),
                failed: PySet::new(py, st.failed().iter().map(|n| &**n))?.unbind(),
                errors: PyList::new(py, st.errors())?.unbind(),
            };
            st.set_mirror(Box::new(m));
        }
        let pending = st.take_pending();
        let m = st
            .mirror()
            .and_then(|m| m.downcast_ref::<PyMirror>())
            .expect("mirror");
        for op in pending {
            match op {
                crate::event::MetaOp::Processed(c) => {
                    m.failed.bind(py).discard(&*c)?;
                    m.processed.bind(py).add(&*c)?;
                }
                crate::event::MetaOp::Failed(c, msg) => {
                    m.failed.bind(py).add(&*c)?;
                    m.errors.bind(py).append(msg)?;
                }
            }
        }
        Ok(MirrorRefs {
            processed: m.processed.clone_ref(py),
            failed: m.failed.clone_ref(py),
            errors: m.errors.clone_ref(py),
        })
    }
}

#[doc = stub_doc!(EventMetadata)]
#[pyclass(module = "mpm_events._core", name = "EventMetadata", frozen)]
pub struct EventMetadata {
    pub(crate) cell: MetaCell,
}

#[pymethods]
impl EventMetadata {
    #[new]
    #[pyo3(signature = (retry_count=0, max_retries=3, published_at=None, consumed_at=None, consumers_processed=None, consumers_failed=None, error_messages=None))]
    fn new(
        retry_count: i64,
        max_retries: i64,
        published_at: Option<&Bound<'_, PyAny>>,
        consumed_at: Option<&Bound<'_, PyAny>>,
        consumers_processed: Option<&Bound<'_, PyAny>>,
        consumers_failed: Option<&Bound<'_, PyAny>>,
        error_messages: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let mut st = MetaState::default();
        st.retry_count = retry_count;
        st.max_retries = max_retries;
        if let Some(v) = published_at {
            st.published_at = read_datetime(v, "published_at")?;
        }
        if let Some(v) = consumed_at {
            st.consumed_at = read_datetime(v, "consumed_at")?;
        }
        if let Some(v) = consumers_processed {
            st.processed = names_from(v, "consumers_processed")?;
        }
        if let Some(v) = consumers_failed {
            st.set_failed(names_from(v, "consumers_failed")?);
        }
        if let Some(v) = error_messages {
            st.set_errors(
                v.extract::<Vec<String>>()
                    .map_err(|_| {
                        PyTypeError::new_err("EventMetadata.error_messages must be a list of str")
                    })?
                    .into(),
            );
        }
        Ok(EventMetadata {
            cell: Arc::new(Mutex::new(st)),
        })
    }

    /// How many retries the event has had (highest over its consumers).
    #[getter]
    fn retry_count(&self) -> i64 {
        self.cell.lock().retry_count
    }
    #[setter]
    fn set_retry_count(&self, v: i64) {
        self.cell.lock().retry_count = v;
    }
    #[getter]
    fn max_retries(&self) -> i64 {
        self.cell.lock().max_retries
    }
    #[setter]
    fn set_max_retries(&self, v: i64) {
        self.cell.lock().max_retries = v;
    }
    #[getter]
    fn published_at<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let v = self.cell.lock().published_at;
        to_py_datetime(py, &v)
    }
    #[setter]
    fn set_published_at(&self, v: &Bound<'_, PyAny>) -> PyResult<()> {
        self.cell.lock().published_at = read_datetime(v, "published_at")?;
        Ok(())
    }
    #[getter]
    fn consumed_at<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let v = self.cell.lock().consumed_at;
        to_py_datetime(py, &v)
    }
    #[setter]
    fn set_consumed_at(&self, v: &Bound<'_, PyAny>) -> PyResult<()> {
        self.cell.lock().consumed_at = read_datetime(v, "consumed_at")?;
        Ok(())
    }
    /// Names of the consumers that handled the event: a live `set`.
    #[getter]
    fn consumers_processed<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(self.mirror(py)?.processed.bind(py).clone().into_any())
    }
    #[setter]
    fn set_consumers_processed(&self, py: Python<'_>, v: &Bound<'_, PyAny>) -> PyResult<()> {
        let names = names_from(v, "consumers_processed")?;
        let set = PySet::new(py, names.iter().map(|n| &**n))?.unbind();
        self.mirror(py)?;
        let mut st = self.cell.lock();
        st.processed = names;
        if let Some(m) = st.mirror_mut().and_then(|m| m.downcast_mut::<PyMirror>()) {
            m.processed = set;
        }
        Ok(())
    }
    /// Names of the consumers whose latest attempt failed: a live `set`.
    #[getter]
    fn consumers_failed<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(self.mirror(py)?.failed.bind(py).clone().into_any())
    }
    #[setter]
    fn set_consumers_failed(&self, py: Python<'_>, v: &Bound<'_, PyAny>) -> PyResult<()> {
        let names = names_from(v, "consumers_failed")?;
        let set = PySet::new(py, names.iter().map(|n| &**n))?.unbind();
        self.mirror(py)?;
        let mut st = self.cell.lock();
        st.set_failed(names);
        if let Some(m) = st.mirror_mut().and_then(|m| m.downcast_mut::<PyMirror>()) {
            m.failed = set;
        }
        Ok(())
    }
    /// Every failure message, oldest first: a live `list`.
    #[getter]
    fn error_messages<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(self.mirror(py)?.errors.bind(py).clone().into_any())
    }
    #[setter]
    fn set_error_messages(&self, py: Python<'_>, v: &Bound<'_, PyAny>) -> PyResult<()> {
        let errors: Vec<String> = v.extract().map_err(|_| {
            PyTypeError::new_err("EventMetadata.error_messages must be a list of str")
        })?;
        let list = PyList::new(py, &errors)?.unbind();
        self.mirror(py)?;
        let mut st = self.cell.lock();
        st.set_errors(errors.into());
        if let Some(m) = st.mirror_mut().and_then(|m| m.downcast_mut::<PyMirror>()) {
            m.errors = list;
        }
        Ok(())
    }

    fn __repr__(&self) -> String {
        let st = self.cell.lock();
        format!(
            "EventMetadata(retry_count={}, max_retries={}, published_at={}, consumed_at={}, consumers_processed={:?}, consumers_failed={:?}, error_messages={:?})",
            st.retry_count,
            st.max_retries,
            st.published_at.map(|d| d.to_rfc3339()).unwrap_or_else(|| "None".into()),
            st.consumed_at.map(|d| d.to_rfc3339()).unwrap_or_else(|| "None".into()),
            st.processed,
            st.failed(),
            st.errors()
        )
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        let Ok(other) = other.cast::<EventMetadata>() else {
            return false;
        };
        if Arc::ptr_eq(&self.cell, &other.get().cell) {
            return true;
        }
        let (a, b) = (
            self.cell.lock().snapshot(),
            other.get().cell.lock().snapshot(),
        );
        let set = |v: &[Arc<str>]| {
            let mut v: Vec<&str> = v.iter().map(|s| &**s).collect();
            v.sort_unstable();
            v.into_iter().map(str::to_owned).collect::<Vec<_>>()
        };
        a.retry_count == b.retry_count
            && a.max_retries == b.max_retries
            && a.published_at == b.published_at
            && a.consumed_at == b.consumed_at
            && set(&a.processed) == set(&b.processed)
            && set(a.failed()) == set(b.failed())
            && a.errors() == b.errors()
    }

    #[doc = stub_doc!(EventMetadata, to_dict)]
    pub(crate) fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let st = self.cell.lock().snapshot();
        let d = PyDict::new(py);
        d.set_item("retry_count", st.retry_count)?;
        d.set_item("max_retries", st.max_retries)?;
        d.set_item("published_at", st.published_at.map(|t| t.to_rfc3339()))?;
        d.set_item("consumed_at", st.consumed_at.map(|t| t.to_rfc3339()))?;
        d.set_item(
            "consumers_processed",
            st.processed
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )?;
        d.set_item(
            "consumers_failed",
            st.failed()
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )?;
        d.set_item("error_messages", st.errors().to_vec())?;
        Ok(d)
    }
}

/// Reads any object with the EventMetadata attributes (ours or the original's).
pub(crate) fn read_metadata(obj: &Bound<'_, PyAny>) -> PyResult<MetaCell> {
    if obj.is_none() {
        return Ok(Arc::new(Mutex::new(MetaState::default())));
    }
    if let Ok(ours) = obj.cast::<EventMetadata>() {
        return Ok(ours.get().cell.clone());
    }
    let get = |name: &str| -> PyResult<Bound<'_, PyAny>> {
        obj.getattr(name).map_err(|_| {
            event_error(format!(
                "metadata of type {} has no attribute {name:?}",
                type_name(obj)
            ))
        })
    };
    let m = EventMetadata::new(
        get("retry_count")?.extract()?,
        get("max_retries")?.extract()?,
        Some(&get("published_at")?),
        Some(&get("consumed_at")?),
        Some(&get("consumers_processed")?),
        Some(&get("consumers_failed")?),
        Some(&get("error_messages")?),
    )?;
    Ok(m.cell)
}
