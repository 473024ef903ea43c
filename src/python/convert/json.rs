//! Python objects as JSON: `to_json` (a serde `Value` for Rust consumers) and the
//! compact text payloads are packed into at publish (`pack_json`/`unpack_json`).

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::{Map, Number, Value};

/// Deepest payload nesting converted for Rust consumers.
pub const MAX_DEPTH: usize = 200;

/// Converts a payload to JSON like `json.dumps(default=str)`: dicts, lists,
/// tuples, str, int, float, bool and None map directly, datetimes become ISO
/// 8601 text and anything else its `str()`. Fails on nesting deeper than
/// [`MAX_DEPTH`] instead of overflowing the stack.
pub fn to_json(obj: &Bound<'_, PyAny>, depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!("payload is nested deeper than {MAX_DEPTH} levels"));
    }
    if obj.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return s
            .to_cow()
            .map(|s| Value::String(s.into_owned()))
            .map_err(|e| e.to_string());
    }
    if obj.is_instance_of::<PyInt>() {
        if let Ok(i) = obj.extract::<i64>() {
            return Ok(Value::Number(i.into()));
        }
        if let Ok(u) = obj.extract::<u64>() {
            return Ok(Value::Number(u.into()));
        }
        return Ok(Value::String(
            obj.str().map(|s| s.to_string()).unwrap_or_default(),
        ));
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        return Ok(Number::from_f64(f.value())
            .map(Value::Number)
            .unwrap_or(Value::Null));
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        let mut m = Map::with_capacity(d.len());
        for (k, v) in d.iter() {
            let key = match k.cast::<PyString>() {
                Ok(s) => s.to_cow().map_err(|e| e.to_string())?.into_owned(),
                Err(_) => k.str().map_err(|e| e.to_string())?.to_string(),
            };
            m.insert(key, to_json(&v, depth + 1)?);
        }
        return Ok(Value::Object(m));
    }
    if let Ok(l) = obj.cast::<PyList>() {
        return l
            .iter()
            .map(|v| to_json(&v, depth + 1))
            .collect::<Result<_, _>>()
            .map(Value::Array);
    }
    if let Ok(t) = obj.cast::<PyTuple>() {
        return t
            .iter()
            .map(|v| to_json(&v, depth + 1))
            .collect::<Result<_, _>>()
            .map(Value::Array);
    }
    if obj.is_instance_of::<pyo3::types::PyDateTime>()
        || obj.is_instance_of::<pyo3::types::PyDate>()
    {
        if let Ok(s) = obj.call_method0("isoformat") {
            return Ok(Value::String(s.to_string()));
        }
    }
    Ok(Value::String(
        obj.str()
            .map(|s| s.to_string())
            .unwrap_or_else(|_| "<unprintable>".into()),
    ))
}

const PACK_MAX_DEPTH: usize = 32;
const PACK_MAX_BYTES: usize = 64 * 1024;

/// Writes a payload as JSON text if it holds only exact dicts (with str keys),
/// lists, str, int (64-bit), finite float, bool and None, so that unpacking gives
/// back equal values of the same types; None otherwise (the payload then stays
/// the caller's object).
pub fn pack_json(obj: &Bound<'_, PyAny>) -> Option<Box<str>> {
    thread_local! {
        static BUF: std::cell::RefCell<String> = std::cell::RefCell::new(String::with_capacity(256));
    }
    // NOTE: the text is written into a reused buffer and then copied into an
    // allocation of its exact size, because it lives as long as the event waits in
    // lanes: mimalloc's realloc keeps a block in place when it shrinks to half its
    // size or more, so `into_boxed_str()` on a 128-byte String holding a 70-byte
    // payload kept all 128 bytes (48 B per queued event).
    BUF.with(|buf| match buf.try_borrow_mut() {
        Ok(mut out) => {
            out.clear();
            let ok = pack_into(obj, 0, &mut out);
            let packed = ok.then(|| Box::from(out.as_str()));
            if out.capacity() > 4 * 1024 {
                *out = String::with_capacity(256);
            }
            packed
        }
        Err(_) => {
            let mut out = String::new();
            pack_into(obj, 0, &mut out).then(|| out.into_boxed_str())
        }
    })
}

pub(crate) fn pack_into(obj: &Bound<'_, PyAny>, depth: usize, out: &mut String) -> bool {
    use std::fmt::Write;
    if depth > PACK_MAX_DEPTH || out.len() > PACK_MAX_BYTES {
        return false;
    }
    if obj.is_none() {
        out.push_str("null");
        return true;
    }
    if let Ok(b) = obj.cast_exact::<PyBool>() {
        out.push_str(if b.is_true() { "true" } else { "false" });
        return true;
    }
    if let Ok(s) = obj.cast_exact::<PyString>() {
        let Ok(text) = s.to_cow() else { return false };
        return serde_json::to_string(&*text)
            .map(|j| out.push_str(&j))
            .is_ok();
    }
    if obj.cast_exact::<PyInt>().is_ok() {
        let Ok(i) = obj.extract::<i64>() else {
            return false;
        };
        let _ = write!(out, "{i}");
        return true;
    }
    if let Ok(f) = obj.cast_exact::<PyFloat>() {
        let v = f.value();
        if !v.is_finite() {
            return false;
        }
        // NOTE: serde_json writes the shortest text that parses back to the same
        // f64, always with a '.' or exponent, so it unpacks as a float again.
        return serde_json::to_string(&v).map(|j| out.push_str(&j)).is_ok();
    }
    if let Ok(d) = obj.cast_exact::<PyDict>() {
        out.push('{');
        for (i, (k, v)) in d.iter().enumerate() {
            let Ok(k) = k.cast_exact::<PyString>() else {
                return false;
            };
            let Ok(key) = k.to_cow() else { return false };
            if i > 0 {
                out.push(',');
            }
            if serde_json::to_string(&*key)
                .map(|j| out.push_str(&j))
                .is_err()
            {
                return false;
            }
            out.push(':');
            if !pack_into(&v, depth + 1, out) {
                return false;
            }
        }
        out.push('}');
        return true;
    }
    if let Ok(l) = obj.cast_exact::<PyList>() {
        out.push('[');
        for (i, v) in l.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            if !pack_into(&v, depth + 1, out) {
                return false;
            }
        }
        out.push(']');
        return true;
    }
    false
}

/// Turns packed JSON text back into Python objects.
pub fn unpack_json(py: Python<'_>, json: &str) -> PyResult<Py<PyAny>> {
    let value: Value = serde_json::from_str(json).map_err(|e| {
        pyo3::exceptions::PyValueError::new_err(format!("corrupt packed payload: {e}"))
    })?;
    Ok(pythonize::pythonize(py, &value)
        .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?
        .unbind())
}
