//! [`project_py`]: a payload that is still the publisher's Python object, cut
//! down to what consumers' rules read ([`Projection`]) without converting the
//! rest, so routing by content costs lookups of the named keys only (issue 15,
//! W1r).

use crate::python::convert::json::to_json;
use crate::rules::Projection;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};
use serde_json::{Map, Value};

/// The value [`Projection::project`] makes of `to_json(obj)`, reading only the
/// keys `p` names. Exact dicts whose keys are all exact `str` are looked up key by
/// key and exact lists element by element; anything else (a dict with other keys,
/// whose conversion turns keys into text; a subclass; a scalar) is converted as
/// `to_json` converts it and then cut down, so the result is always the same.
pub fn project_py(p: &Projection, obj: &Bound<'_, PyAny>, depth: usize) -> Result<Value, String> {
    if let Ok(d) = obj.cast_exact::<PyDict>() {
        if d.iter().all(|(k, _)| k.is_exact_instance_of::<PyString>()) {
            if depth > crate::python::convert::json::MAX_DEPTH {
                return to_json(obj, depth);
            }
            let mut out = Map::new();
            for (key, below) in p.keys() {
                if let Some(v) = d.get_item(key).map_err(|e| e.to_string())? {
                    out.insert(key.to_string(), project_py(below, &v, depth + 1)?);
                }
            }
            return Ok(Value::Object(out));
        }
    } else if let Ok(l) = obj.cast_exact::<PyList>() {
        if depth <= crate::python::convert::json::MAX_DEPTH {
            return l
                .iter()
                .map(|v| project_py(p, &v, depth + 1))
                .collect::<Result<_, _>>()
                .map(Value::Array);
        }
    }
    to_json(obj, depth).map(|v| p.project(&v))
}
