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
