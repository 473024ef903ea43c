//! `Rule`: a content rule (EventBridge event-pattern semantics, `crate::rules`)
//! compiled once and matched against events or documents.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString};

use crate::python::convert::json::to_json;
use crate::python::model::event::Event;
use crate::python::runtime::errors::{rule_error, InvalidRuleError};

#[doc = stub_doc!(Rule)]
#[pyclass(module = "mpm_events._core", name = "Rule", frozen)]
pub struct Rule {
    rule: crate::rules::Rule,
    text: String,
}

#[pymethods]
impl Rule {
    #[new]
    fn new(rule: &Bound<'_, PyAny>) -> PyResult<Self> {
        let value = if let Ok(s) = rule.cast::<PyString>() {
            serde_json::from_str(&s.to_cow()?)
                .map_err(|e| InvalidRuleError::new_err(format!("$: not JSON: {e}")))?
        } else {
            check_plain_json(rule, "$", 0)?;
            to_json(rule, 0).map_err(|e| InvalidRuleError::new_err(format!("$: {e}")))?
        };
        let compiled = crate::rules::Rule::compile(&value).map_err(rule_error)?;
        Ok(Rule {
            rule: compiled,
            text: value.to_string(),
        })
    }

    #[doc = stub_doc!(Rule, matches)]
    fn matches(&self, event: &Bound<'_, PyAny>) -> PyResult<bool> {
        // NOTE: an Event is matched as its to_dict() document (what the HTTP
        // consumer's json format posts and the monitor shows).
        let doc = if event.is_instance_of::<PyDict>() {
            event.clone()
        } else if event.is_instance_of::<Event>() || event.hasattr("to_dict")? {
            event.call_method0("to_dict")?
        } else {
            return Err(crate::python::runtime::errors::event_error(format!(
                "Rule.matches takes an Event or a dict, got {}",
                event.get_type().name()?
            )));
        };
        let value = to_json(&doc, 0).map_err(|e| {
            crate::python::runtime::errors::event_error(format!(
                "Rule.matches: the document is not JSON-like: {e}"
            ))
        })?;
        Ok(self.rule.matches(&value))
    }

    fn __repr__(&self) -> String {
        format!("Rule({})", self.text)
    }
}

/// A rule given as a `Rule`, a dict or a JSON string, compiled; an invalid one
/// raises `InvalidRuleError` saying `what` it was given for.
pub(crate) fn compile_rule(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<crate::rules::Rule> {
    if let Ok(r) = obj.cast::<Rule>() {
        return Ok(r.get().rule.clone());
    }
    Rule::new(obj)
        .map(|r| r.rule)
        .map_err(|e| InvalidRuleError::new_err(format!("{what}: {}", e.value(obj.py()))))
}

/// A rule given as Python objects must be plain JSON (dict with str keys, list,
/// str, int, float, bool, None): anything else is refused with its path, rather
/// than matched as its `str()` as payloads are.
fn check_plain_json(obj: &Bound<'_, PyAny>, path: &str, depth: usize) -> PyResult<()> {
    if depth > crate::python::convert::json::MAX_DEPTH {
        return Err(InvalidRuleError::new_err(format!(
            "{path}: nested too deep"
        )));
    }
    if obj.is_none()
        || obj.is_instance_of::<PyBool>()
        || obj.is_instance_of::<PyString>()
        || obj.is_instance_of::<PyInt>()
        || obj.is_instance_of::<PyFloat>()
    {
        return Ok(());
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        for (k, v) in d.iter() {
            let Ok(key) = k.cast::<PyString>() else {
                return Err(InvalidRuleError::new_err(format!(
                    "{path}: keys must be str, got {}",
                    k.get_type().name()?
                )));
            };
            check_plain_json(&v, &format!("{path}.{}", key.to_cow()?), depth + 1)?;
        }
        return Ok(());
    }
    if let Ok(l) = obj.cast::<PyList>() {
        for (i, v) in l.iter().enumerate() {
            check_plain_json(&v, &format!("{path}[{i}]"), depth + 1)?;
        }
        return Ok(());
    }
    Err(InvalidRuleError::new_err(format!(
        "{path}: a {} is not JSON (use dict, list, str, int, float, bool or None)",
        obj.get_type().name()?
    )))
}
