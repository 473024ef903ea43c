//! Python objects as JSON: `to_json` (a serde `Value` for Rust consumers) and the
//! compact text payloads are packed into at publish (`pack_json`/`unpack_json`).

use pyo3::ffi;
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
    pack_with(|out| pack_into(obj, 0, out))
}

/// [`pack_json`] of the dict `{key: value, ...}` of `fields`, in their order,
/// without making the dict.
pub fn pack_json_fields(fields: &[(&str, &Bound<'_, PyAny>)]) -> Option<Box<str>> {
    pack_with(|out| {
        out.push('{');
        for (i, (key, value)) in fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_str(key, out);
            out.push(':');
            if !pack_into(value, 1, out) {
                return false;
            }
        }
        out.push('}');
        true
    })
}

/// Runs `write` on a cleared reusable buffer; its text if `write` returned true.
fn pack_with(write: impl FnOnce(&mut String) -> bool) -> Option<Box<str>> {
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
            let ok = write(&mut out);
            let packed = ok.then(|| Box::from(out.as_str()));
            if out.capacity() > 4 * 1024 {
                *out = String::with_capacity(256);
            }
            packed
        }
        Err(_) => {
            let mut out = String::new();
            write(&mut out).then(|| out.into_boxed_str())
        }
    })
}

pub(crate) fn pack_into(obj: &Bound<'_, PyAny>, depth: usize, out: &mut String) -> bool {
    if depth > PACK_MAX_DEPTH || out.len() > PACK_MAX_BYTES {
        return false;
    }
    // NOTE: the most common types first: payloads are mostly str values in dicts.
    if let Ok(s) = obj.cast_exact::<PyString>() {
        let Ok(text) = s.to_cow() else { return false };
        push_json_str(&text, out);
        return true;
    }
    if let Ok(d) = obj.cast_exact::<PyDict>() {
        out.push('{');
        let (mut pos, mut k, mut v) = (0, std::ptr::null_mut(), std::ptr::null_mut());
        let mut first = true;
        // NOTE: PyDict_Next with borrowed references, not pyo3's iterator (which
        // takes a reference to every key and value and checks the size at each
        // step: ~600 instructions of a W1 event, issue 16). Nothing here runs
        // Python code or lets the GIL go, so the dict cannot change meanwhile.
        // SAFETY: `d` is a live dict; the pointers PyDict_Next fills are borrowed
        // references to its keys and values, valid while it is unchanged.
        while unsafe { ffi::PyDict_Next(d.as_ptr(), &mut pos, &mut k, &mut v) } != 0 {
            let (key, value) = unsafe {
                (
                    Borrowed::from_ptr(obj.py(), k),
                    Borrowed::from_ptr(obj.py(), v),
                )
            };
            let Ok(key) = key.cast_exact::<PyString>() else {
                return false;
            };
            let Ok(key) = key.to_cow() else { return false };
            if !first {
                out.push(',');
            }
            first = false;
            push_json_str(&key, out);
            out.push(':');
            if !pack_into(&value, depth + 1, out) {
                return false;
            }
        }
        out.push('}');
        return true;
    }
    if obj.is_none() {
        out.push_str("null");
        return true;
    }
    if let Ok(b) = obj.cast_exact::<PyBool>() {
        out.push_str(if b.is_true() { "true" } else { "false" });
        return true;
    }
    if obj.cast_exact::<PyInt>().is_ok() {
        let Ok(i) = obj.extract::<i64>() else {
            return false;
        };
        out.push_str(itoa::Buffer::new().format(i));
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
    if let Ok(l) = obj.cast_exact::<PyList>() {
        out.push('[');
        // NOTE: by index with borrowed references, as the dicts above; the list
        // cannot change meanwhile either.
        for i in 0..l.len() {
            // SAFETY: `i` is below the length of the live list `l`, which nothing
            // changes meanwhile; PyList_GetItem returns a borrowed reference.
            let item = unsafe { ffi::PyList_GetItem(l.as_ptr(), i as ffi::Py_ssize_t) };
            if item.is_null() {
                // SAFETY: the error PyList_GetItem set is ours to clear.
                unsafe { ffi::PyErr_Clear() };
                return false;
            }
            if i > 0 {
                out.push(',');
            }
            // SAFETY: a borrowed reference to a live item (see above).
            let item = unsafe { Borrowed::from_ptr(obj.py(), item) };
            if !pack_into(&item, depth + 1, out) {
                return false;
            }
        }
        out.push(']');
        return true;
    }
    false
}

/// Bytes that a JSON string literal cannot hold as they are.
static NEEDS_ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = true;
        b += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// Appends `s` to `out` as a JSON string literal (escaping as serde_json does).
#[inline]
fn push_json_str(s: &str, out: &mut String) {
    let bytes = s.as_bytes();
    // NOTE: most keys and values need no escape: one table scan, then one copy (the
    // byte-by-byte path was ~1k instructions of a W1 event's ~15k, issue 16).
    if bytes.iter().any(|&b| NEEDS_ESCAPE[b as usize]) {
        return push_json_str_escaped(s, out);
    }
    out.reserve(bytes.len() + 2);
    out.push('"');
    out.push_str(s);
    out.push('"');
}

/// [`push_json_str`] for a string with something to escape.
#[cold]
fn push_json_str_escaped(s: &str, out: &mut String) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            use std::fmt::Write;
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Turns JSON text back into Python objects: packed payloads (ours), and text
/// other writers put in a shared log.
pub fn unpack_json(py: Python<'_>, json: &str) -> PyResult<Py<PyAny>> {
    // NOTE: the direct parser makes the Python objects as it reads (no serde
    // `Value` in between, no per-node allocation): most of the cost of a
    // consumer's first read of `event.data` (W1d, issue 16). Anything it does not
    // take (an integer beyond 64 bits, a lone surrogate, bad text) goes the serde
    // way, which gives the same values (or the error).
    let mut p = Unpacker {
        text: json,
        s: json.as_bytes(),
        i: 0,
    };
    if let Some(v) = p.value(py, 0) {
        p.ws();
        if p.i == p.s.len() {
            return Ok(v.unbind());
        }
    }
    unpack_json_serde(py, json)
}

fn unpack_json_serde(py: Python<'_>, json: &str) -> PyResult<Py<PyAny>> {
    let value: Value = serde_json::from_str(json).map_err(|e| {
        pyo3::exceptions::PyValueError::new_err(format!("corrupt packed payload: {e}"))
    })?;
    Ok(pythonize::pythonize(py, &value)
        .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?
        .unbind())
}

/// A JSON reader that makes Python objects; `None` means "not taken here".
struct Unpacker<'a> {
    /// The text, and the same as bytes.
    text: &'a str,
    s: &'a [u8],
    i: usize,
}

/// Longest dict key [`key_str`] remembers, in bytes, and how many it remembers.
const KEY_CACHE_MAX_LEN: usize = 48;
const KEY_CACHE_MAX_KEYS: usize = 1024;

/// The Python str for a dict key read from packed text: the same object for the
/// same key, with its hash already computed (payload keys repeat from event to
/// event: `tool`, `params`, `session_id`, ...).
// NOTE: a new str per key (made, hashed on insertion, freed with the dict) was ~300
// instructions a key when a consumer reads `event.data` (W1d, issue 16). The cache
// is read and written with the GIL held (its lock is never contended), keeps at most
// `KEY_CACHE_MAX_KEYS` short keys and is never cleared: payloads with ever new keys
// fall back to new strs once it is full.
fn key_str<'py>(py: Python<'py>, key: &str) -> Bound<'py, PyString> {
    use parking_lot::Mutex;
    use rustc_hash::FxHashMap;
    static KEYS: Mutex<Option<FxHashMap<Box<str>, Py<PyString>>>> = Mutex::new(None);
    if key.len() > KEY_CACHE_MAX_LEN {
        return PyString::new(py, key);
    }
    let mut keys = KEYS.lock();
    let keys = keys.get_or_insert_with(FxHashMap::default);
    if let Some(k) = keys.get(key) {
        return k.bind(py).clone();
    }
    let k = PyString::new(py, key);
    if keys.len() < KEY_CACHE_MAX_KEYS {
        // NOTE: hashed once here; every dict it goes into reuses the cached hash.
        let _ = k.hash();
        keys.insert(key.into(), k.clone().unbind());
    }
    k
}

impl Unpacker<'_> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.s.get(self.i) {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        self.ws();
        if self.s.get(self.i) == Some(&b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn value<'py>(&mut self, py: Python<'py>, depth: usize) -> Option<Bound<'py, PyAny>> {
        // NOTE: the same nesting limit serde_json has (128), so deep text goes its way.
        if depth > 127 {
            return None;
        }
        self.ws();
        match *self.s.get(self.i)? {
            b'{' => {
                self.i += 1;
                let d = PyDict::new(py);
                if self.eat(b'}') {
                    return Some(d.into_any());
                }
                loop {
                    self.ws();
                    if self.s.get(self.i) != Some(&b'"') {
                        return None;
                    }
                    let k = self.string_with(py, key_str)?;
                    if !self.eat(b':') {
                        return None;
                    }
                    let v = self.value(py, depth + 1)?;
                    d.set_item(k, v).ok()?;
                    if self.eat(b',') {
                        continue;
                    }
                    return self.eat(b'}').then(|| d.into_any());
                }
            }
            b'[' => {
                self.i += 1;
                let l = PyList::empty(py);
                if self.eat(b']') {
                    return Some(l.into_any());
                }
                loop {
                    let v = self.value(py, depth + 1)?;
                    l.append(v).ok()?;
                    if self.eat(b',') {
                        continue;
                    }
                    return self.eat(b']').then(|| l.into_any());
                }
            }
            b'"' => self.string(py).map(Bound::into_any),
            b't' => self
                .word(b"true")
                .then(|| PyBool::new(py, true).to_owned().into_any()),
            b'f' => self
                .word(b"false")
                .then(|| PyBool::new(py, false).to_owned().into_any()),
            b'n' => self.word(b"null").then(|| py.None().into_bound(py)),
            b'-' | b'0'..=b'9' => self.number(py),
            _ => None,
        }
    }

    fn word(&mut self, w: &[u8]) -> bool {
        if self.s[self.i..].starts_with(w) {
            self.i += w.len();
            true
        } else {
            false
        }
    }

    fn number<'py>(&mut self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        let start = self.i;
        let mut float = false;
        while let Some(&b) = self.s.get(self.i) {
            match b {
                b'0'..=b'9' | b'-' | b'+' => {}
                b'.' | b'e' | b'E' => float = true,
                _ => break,
            }
            self.i += 1;
        }
        let text = self.text.get(start..self.i)?;
        // NOTE: "-0" is left to serde_json, whatever it makes of it (we never write it).
        if !valid_json_number(text.as_bytes()) || text == "-0" {
            return None;
        }
        if float {
            let v: f64 = text.parse().ok()?;
            // NOTE: serde_json refuses numbers out of f64's range.
            v.is_finite().then(|| PyFloat::new(py, v).into_any())
        } else {
            // NOTE: beyond i64 serde_json reads u64 or f64: its way.
            let v: i64 = text.parse().ok()?;
            Some(v.into_pyobject(py).ok()?.into_any())
        }
    }

    /// A string starting at the opening quote.
    fn string<'py>(&mut self, py: Python<'py>) -> Option<Bound<'py, PyString>> {
        self.string_with(py, PyString::new)
    }

    /// [`Unpacker::string`], an escape-free one made by `make`.
    fn string_with<'py>(
        &mut self,
        py: Python<'py>,
        make: fn(Python<'py>, &str) -> Bound<'py, PyString>,
    ) -> Option<Bound<'py, PyString>> {
        self.i += 1;
        let start = self.i;
        while let Some(&b) = self.s.get(self.i) {
            match b {
                b'"' => {
                    // NOTE: the run starts and stops at ASCII bytes of a &str, so it
                    // is a char boundary at both ends: no UTF-8 check needed.
                    let text = self.text.get(start..self.i)?;
                    self.i += 1;
                    return Some(make(py, text));
                }
                b'\\' => return self.escaped(py, start),
                0..=0x1f => return None,
                _ => self.i += 1,
            }
        }
        None
    }

    /// The rest of a string that has escapes; `start` is after its opening quote.
    fn escaped<'py>(&mut self, py: Python<'py>, start: usize) -> Option<Bound<'py, PyString>> {
        let mut out: Vec<u8> = self.s[start..self.i].to_vec();
        loop {
            let b = *self.s.get(self.i)?;
            self.i += 1;
            match b {
                b'"' => {
                    let text = String::from_utf8(out).ok()?;
                    return Some(PyString::new(py, &text));
                }
                b'\\' => {
                    let e = *self.s.get(self.i)?;
                    self.i += 1;
                    let c = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            if (0xD800..0xDC00).contains(&hi) {
                                if !self.word(b"\\u") {
                                    return None;
                                }
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return None;
                                }
                                char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))?
                            } else {
                                // NOTE: a lone low surrogate: not a char; serde's way.
                                char::from_u32(hi)?
                            }
                        }
                        _ => return None,
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                0..=0x1f => return None,
                _ => out.push(b),
            }
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let h = self.s.get(self.i..self.i + 4)?;
        let h = std::str::from_utf8(h).ok()?;
        let v = u32::from_str_radix(h, 16).ok()?;
        if h.bytes().any(|b| !b.is_ascii_hexdigit()) {
            return None;
        }
        self.i += 4;
        Some(v)
    }
}

/// JSON's number grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
fn valid_json_number(t: &[u8]) -> bool {
    let mut i = 0;
    if t.get(i) == Some(&b'-') {
        i += 1;
    }
    match t.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            while let Some(b'0'..=b'9') = t.get(i) {
                i += 1;
            }
        }
        _ => return false,
    }
    if t.get(i) == Some(&b'.') {
        i += 1;
        let s = i;
        while let Some(b'0'..=b'9') = t.get(i) {
            i += 1;
        }
        if i == s {
            return false;
        }
    }
    if let Some(b'e' | b'E') = t.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = t.get(i) {
            i += 1;
        }
        let s = i;
        while let Some(b'0'..=b'9') = t.get(i) {
            i += 1;
        }
        if i == s {
            return false;
        }
    }
    i == t.len()
}
