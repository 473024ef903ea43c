//! Event and consumer priorities: reading them from Python (the enums of
//! `mpm_events.interfaces`, their names or ints) and making the enum members.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyString, PyType};

static EVENT_PRIORITY: PyOnceLock<Py<PyType>> = PyOnceLock::new();
pub(crate) static CONSUMER_PRIORITY: PyOnceLock<Py<PyType>> = PyOnceLock::new();

pub(crate) const EVENT_PRIORITY_NAMES: [&str; 4] = ["CRITICAL", "HIGH", "NORMAL", "LOW"];
pub(crate) const CONSUMER_PRIORITY_NAMES: [&str; 5] =
    ["CRITICAL", "HIGH", "NORMAL", "LOW", "DEFERRED"];

pub(crate) fn event_priority_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    EVENT_PRIORITY.import(py, "mpm_events.interfaces", "EventPriority")
}

pub(crate) fn consumer_priority_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    CONSUMER_PRIORITY.import(py, "mpm_events.interfaces", "ConsumerPriority")
}

/// The `EventPriority` member for 1..=4.
pub fn event_priority_member(py: Python<'_>, value: u8) -> PyResult<Bound<'_, PyAny>> {
    event_priority_type(py)?.call1((value,))
}

/// The `ConsumerPriority` member for 1..=5.
pub fn consumer_priority_member(py: Python<'_>, value: u8) -> PyResult<Bound<'_, PyAny>> {
    consumer_priority_type(py)?.call1((value,))
}

/// Reads a priority given as our enum, a foreign enum (by `.name`, then
/// `.value`), an int or a name.
pub(crate) fn read_priority(obj: &Bound<'_, PyAny>, names: &[&str], what: &str) -> PyResult<u8> {
    let by_name = |name: &str| {
        names
            .iter()
            .position(|n| n.eq_ignore_ascii_case(name))
            .map(|i| i as u8 + 1)
    };
    if let Ok(s) = obj.cast::<PyString>() {
        let s = s.to_cow()?;
        return by_name(&s).ok_or_else(|| {
            PyValueError::new_err(format!("unknown {what} {s:?}; expected one of {names:?}"))
        });
    }
    if let Ok(v) = obj.extract::<i64>() {
        if !obj.is_instance_of::<pyo3::types::PyBool>() && (1..=names.len() as i64).contains(&v) {
            return Ok(v as u8);
        }
        return Err(PyValueError::new_err(format!(
            "{what} must be 1..{}, got {v}",
            names.len()
        )));
    }
    if let Ok(name) = obj.getattr("name") {
        if let Ok(name) = name.extract::<String>() {
            if let Some(p) = by_name(&name) {
                return Ok(p);
            }
        }
    }
    if let Ok(value) = obj.getattr("value") {
        if let Ok(v) = value.extract::<i64>() {
            if (1..=names.len() as i64).contains(&v) {
                return Ok(v as u8);
            }
        }
    }
    Err(PyTypeError::new_err(format!(
        "{what} must be a {what} member, an int 1..{} or a name, got {}",
        names.len(),
        obj.get_type().name()?
    )))
}

pub(crate) static EVENT_PRIORITY_MEMBERS: PyOnceLock<Vec<Py<PyAny>>> = PyOnceLock::new();

/// Reads an event priority (1..=4).
pub fn read_event_priority(obj: &Bound<'_, PyAny>) -> PyResult<u8> {
    let py = obj.py();
    // NOTE: our own enum members are by far the most common input; compare by
    // identity before anything that could raise and catch an exception.
    let members = EVENT_PRIORITY_MEMBERS.get_or_try_init(py, || -> PyResult<Vec<Py<PyAny>>> {
        (1..=4u8)
            .map(|v| event_priority_member(py, v).map(Bound::unbind))
            .collect()
    })?;
    if let Some(i) = members.iter().position(|m| m.bind(py).is(obj)) {
        return Ok(i as u8 + 1);
    }
    read_priority(obj, &EVENT_PRIORITY_NAMES, "EventPriority")
}

/// Reads a consumer priority (1..=5).
pub fn read_consumer_priority(obj: &Bound<'_, PyAny>) -> PyResult<u8> {
    read_priority(obj, &CONSUMER_PRIORITY_NAMES, "ConsumerPriority")
}
