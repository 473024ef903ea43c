//! Maps engine errors to the Python exception hierarchy of `mpm_events.errors`.

use pyo3::prelude::*;

use crate::storage::StorageError;
use crate::topic::TopicError;

pyo3::import_exception!(mpm_events.errors, EventBusError);
pyo3::import_exception!(mpm_events.errors, InvalidTopicError);
pyo3::import_exception!(mpm_events.errors, InvalidEventError);
pyo3::import_exception!(mpm_events.errors, ConsumerConfigError);
pyo3::import_exception!(mpm_events.errors, PersistenceError);
pyo3::import_exception!(mpm_events.errors, InvalidRuleError);
pyo3::import_exception!(mpm_events.errors, SchemaValidationError);

/// A payload that fails its schema: `SchemaValidationError` (a `ValueError`)
/// naming the first violation's JSON path and keyword; `errors` holds them all
/// (dicts of `path`, `keyword`, `message`). `context` says which event.
pub fn schema_error(
    py: Python<'_>,
    context: &str,
    violations: &[crate::schema::Violation],
) -> PyErr {
    let more = match violations.len() {
        0 | 1 => String::new(),
        n => format!(" (and {} more)", n - 1),
    };
    let first = violations
        .first()
        .map_or_else(|| "invalid".to_string(), |v| v.to_string());
    let err = SchemaValidationError::new_err(format!(
        "{context} does not match its schema: {first}{more}"
    ));
    let list = pyo3::types::PyList::empty(py);
    for v in violations {
        let d = pyo3::types::PyDict::new(py);
        let _ = d.set_item("path", &v.path);
        let _ = d.set_item("keyword", &v.keyword);
        let _ = d.set_item("message", &v.message);
        let _ = list.append(d);
    }
    let _ = err.value(py).setattr("errors", list);
    err
}

/// A malformed topic or pattern: `InvalidTopicError` (a `ValueError`).
pub fn topic_error(e: TopicError) -> PyErr {
    InvalidTopicError::new_err(e.to_string())
}

/// Something given as an event is not one: `InvalidEventError` (a `TypeError`).
pub fn event_error(msg: impl Into<String>) -> PyErr {
    InvalidEventError::new_err(msg.into())
}

/// A consumer that cannot be subscribed: `ConsumerConfigError` (a `ValueError`).
pub fn config_error(msg: impl Into<String>) -> PyErr {
    ConsumerConfigError::new_err(msg.into())
}

/// A rule that does not compile: `InvalidRuleError` (a `ValueError`), naming the
/// JSON path of the problem.
pub fn rule_error(e: crate::rules::RuleError) -> PyErr {
    InvalidRuleError::new_err(e.to_string())
}

/// A storage error as a Python `PersistenceError` (the message names the path).
pub fn persistence_error(e: &StorageError) -> PyErr {
    PersistenceError::new_err(e.to_string())
}
