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
        if depth <= crate::python::convert::json::MAX_DEPTH {
            // NOTE: one pass over the dict, comparing its keys' text with the named
            // keys: no key object is made or hashed (W1r). A key that is not an
            // exact `str` sends the whole dict through `to_json`, as before.
            let mut out = Map::with_capacity(p.key_count());
            let mut plain = true;
            for (k, v) in d.iter() {
                let Ok(k) = k.cast_exact::<PyString>() else {
                    plain = false;
                    break;
                };
                if out.len() == p.key_count() {
                    continue;
                }
                let Ok(text) = k.to_str() else {
                    plain = false;
                    break;
                };
                if let Some(below) = p.get(text) {
                    out.insert(text.to_string(), project_py(below, &v, depth + 1)?);
                }
            }
            if plain {
                return Ok(Value::Object(out));
            }
        }
    } else if let Ok(l) = obj.cast_exact::<PyList>() {
        if depth <= crate::python::convert::json::MAX_DEPTH {
            return l
                .iter()
                .map(|v| project_py(p, &v, depth + 1))
                .collect::<Result<_, _>>()
                .map(Value::Array);
        }
    } else if p.is_leaf() {
        // NOTE: a scalar (or anything `to_json` turns into one) is its own cut.
        return to_json(obj, depth).map(|v| match v {
            v @ (Value::Object(_) | Value::Array(_)) => p.project(&v),
            v => v,
        });
    }
    to_json(obj, depth).map(|v| p.project(&v))
}
