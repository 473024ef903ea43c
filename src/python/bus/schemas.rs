//! `EventBus.register_schema`: payload schemas checked in Rust at publish
//! (`crate::schema`), and what publishing does with an event that fails one.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use serde_json::Value;

use crate::python::convert::json::to_json;
use crate::python::model::AcceptedEvent;
use crate::python::runtime::errors::{config_error, event_error, schema_error, topic_error};
use crate::schema::{Invalid, OnInvalid, Schema, Schemas};

/// The consumer name dead letters of invalid events carry.
pub const SCHEMA_CONSUMER: &str = "<schema>";

/// Reads `schema`: a JSON Schema dict, its JSON text, or a class with
/// `model_json_schema()` (a pydantic model: pydantic is imported only by it).
fn schema_value(schema: &Bound<'_, PyAny>) -> PyResult<Value> {
    let obj = if schema.is_instance_of::<PyDict>() || schema.is_instance_of::<PyString>() {
        schema.clone()
    } else if schema.hasattr("model_json_schema")? {
        schema.call_method0("model_json_schema")?
    } else {
        return Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "register_schema(): schema must be a JSON Schema dict or a pydantic model class, got {}",
            crate::python::convert::text::type_name(schema)
        )));
    };
    if let Ok(s) = obj.cast::<PyString>() {
        return serde_json::from_str(&s.to_cow()?)
            .map_err(|e| config_error(format!("register_schema(): schema is not JSON: {e}")));
    }
    to_json(&obj, 0).map_err(|e| config_error(format!("register_schema(): schema: {e}")))
}

/// `register_schema(topic_pattern, schema, on_invalid=...)`.
pub fn register(
    schemas: &Schemas,
    pattern: &str,
    schema: &Bound<'_, PyAny>,
    on_invalid: &str,
) -> PyResult<()> {
    let mode = match on_invalid {
        "raise" => OnInvalid::Raise,
        "dead_letter" => OnInvalid::DeadLetter,
        other => {
            return Err(config_error(format!(
                "register_schema(): on_invalid must be \"raise\" or \"dead_letter\", got {other:?}"
            )))
        }
    };
    crate::topic::Pattern::parse(pattern).map_err(topic_error)?;
    let value = schema_value(schema)?;
    let compiled = Schema::compile(pattern, &value, mode)
        .map_err(|e| config_error(format!("register_schema({pattern:?}): {e}")))?;
    schemas.register(compiled);
    Ok(())
}

/// Checks a payload on `topic` against its schemas: `Ok(None)` when valid (or
/// no schema applies), the violations for a "dead_letter" schema, and a
/// `SchemaValidationError` (with `context` naming the event) for a "raise" one.
pub fn check(
    py: Python<'_>,
    schemas: &Schemas,
    topic: &str,
    payload: impl FnOnce() -> Result<Value, String>,
    context: &str,
) -> PyResult<Option<Invalid>> {
    if schemas.is_empty() {
        return Ok(None);
    }
    let list = schemas.for_topic(topic);
    if list.is_empty() {
        return Ok(None);
    }
    let value = payload().map_err(|e| {
        event_error(format!(
            "{context}: the payload cannot be validated as JSON: {e}"
        ))
    })?;
    match schemas.check(topic, &list, &value) {
        None => Ok(None),
        Some(inv) if inv.on_invalid == OnInvalid::Raise => {
            Err(schema_error(py, context, &inv.violations))
        }
        Some(inv) => Ok(Some(inv)),
    }
}

/// [`check`] on an accepted event (its view's payload copy, if it has one).
pub fn check_accepted(
    py: Python<'_>,
    schemas: &Schemas,
    eref: &AcceptedEvent,
) -> PyResult<Option<Invalid>> {
    check_accepted_with(py, schemas, eref, true)
}

/// [`check_accepted`], told whether the view's payload copy (if any) is the
/// whole payload (not the parts rules read, see `DataCopy::ForRules`).
pub fn check_accepted_with(
    py: Python<'_>,
    schemas: &Schemas,
    eref: &AcceptedEvent,
    view_data_whole: bool,
) -> PyResult<Option<Invalid>> {
    let whole = eref
        .view
        .as_ref()
        .and_then(|v| v.data.as_ref())
        .filter(|_| view_data_whole);
    if let Some(data) = whole {
        return check(py, schemas, &eref.topic, || Ok(data.clone()), "the event");
    }
    check(
        py,
        schemas,
        &eref.topic,
        || crate::python::model::payload_json(py, eref),
        "the event",
    )
}

/// The dead-letter errors of an invalid event.
pub fn letter_errors(inv: &Invalid) -> Vec<String> {
    inv.violations
        .iter()
        .map(|v| format!("schema validation failed: {v}"))
        .collect()
}
