//! [`AdmitMemo`]: the last few answers of routes' rules, each kept with the
//! payload values the rules read, so a stream whose events repeat those values
//! (a rule on the tool name) is matched once per distinct value, not once per
//! event (issue 15, W1r).
//!
//! The rules' answer depends only on the payload cut down to what they read
//! ([`Projection`], see [`crate::python::convert::project::project_py`]), the
//! route and the priority. Two payloads that hold the same named keys, in the
//! same order, with the same immutable scalars (exact `str`, `int`, `float`,
//! `bool`, `None`) at them, have the same cut, so the same answer. A payload
//! with anything else on the named paths (a list, a dict where a leaf is named,
//! a key that is not an exact `str`, a subclass) is not remembered: it is cut
//! and matched as before.

use parking_lot::Mutex;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyString};
use std::sync::Arc;

use crate::dispatch::Route;
use crate::python::model::AcceptedEvent;
use crate::rules::Projection;

/// How many answers are kept (a few distinct values per route).
const ENTRIES: usize = 8;

/// One step of a payload's cut, in the order the payload's dicts hold their keys.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The named key at this position of its level's [`Projection::keys`].
    Key(u32),
    /// A scalar at a named key: the object's address and its Python hash (see
    /// [`same_scalar`]).
    Leaf(usize, isize),
    /// The end of a dict's named keys.
    End,
}

/// What an event's rules read, ready to be looked up or remembered.
pub struct Key {
    // NOTE: held, so the route compared by address is never another one made at
    // the same address; a route (and the lanes of consumers unsubscribed since)
    // lives on until its entries are replaced, at most `ENTRIES` of them.
    route: Arc<Route<AcceptedEvent>>,
    priority: u8,
    steps: Vec<Step>,
    /// The steps and the priority hashed together, compared first.
    sig: u64,
}

struct Entry {
    key: Key,
    /// The scalars `key.steps` points at, held so their addresses stay theirs.
    _held: Vec<Py<PyAny>>,
    flags: Arc<[bool]>,
}

/// The outcome of [`AdmitMemo::lookup`].
pub enum Lookup {
    /// A recent event read the same: its answer (one flag per lane).
    Hit(Arc<[bool]>),
    /// Not seen recently: remember the answer under this key.
    Miss(Key),
    /// The payload cannot be keyed (see the module's doc).
    Unkeyable,
}

/// Recent answers of routes' rules (see the module's doc).
#[derive(Default)]
pub struct AdmitMemo {
    entries: Mutex<(Vec<Entry>, usize)>,
}

impl AdmitMemo {
    /// The remembered answer for an event on `route` with `priority` whose
    /// payload is `data` (None when it is no longer the publisher's object).
    pub fn lookup(
        &self,
        py: Python<'_>,
        route: &Arc<Route<AcceptedEvent>>,
        priority: u8,
        data: Option<&Bound<'_, PyAny>>,
    ) -> Lookup {
        let Some(rules) = route.rules.as_ref() else {
            return Lookup::Unkeyable;
        };
        let mut steps = Steps::new();
        match (rules.data_projection(), data) {
            (None, _) => {}
            (Some(p), Some(d)) => {
                if !cut_steps(p, d, 0, &mut steps) {
                    return Lookup::Unkeyable;
                }
            }
            (Some(_), None) => return Lookup::Unkeyable,
        }
        let steps = steps.as_slice();
        // NOTE: one hash per event, compared with each entry's: a stream whose
        // values do not repeat pays a few compares for the memo, not a walk of each
        // entry (W1r's companion with 64 tools).
        let sig = signature(priority, steps);
        let guard = self.entries.lock();
        for e in guard.0.iter() {
            if e.key.sig == sig
                && Arc::ptr_eq(&e.key.route, route)
                && e.key.priority == priority
                && e.key.steps.len() == steps.len()
                && e.key
                    .steps
                    .iter()
                    .zip(steps)
                    .all(|(a, b)| same_step(py, a, b))
            {
                return Lookup::Hit(e.flags.clone());
            }
        }
        drop(guard);
        Lookup::Miss(Key {
            route: route.clone(),
            priority,
            steps: steps.to_vec(),
            sig,
        })
    }

    /// Remembers `flags` as the answer for `key` (replacing the oldest answer
    /// when full). `py` holds the GIL the key's scalars need.
    pub fn remember(&self, py: Python<'_>, key: Key, flags: Arc<[bool]>) {
        // NOTE: SAFETY: the addresses are of live objects the payload still holds
        // (the caller's event has not been released yet).
        let held = key
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Leaf(p, _) => Some(unsafe {
                    Bound::from_borrowed_ptr(py, *p as *mut pyo3::ffi::PyObject).unbind()
                }),
                _ => None,
            })
            .collect();
        let entry = Entry {
            key,
            _held: held,
            flags,
        };
        let mut guard = self.entries.lock();
        let (entries, next) = &mut *guard;
        if entries.len() < ENTRIES {
            entries.push(entry);
        } else {
            entries[*next] = entry;
            *next = (*next + 1) % ENTRIES;
        }
    }
}

/// Most steps a key holds; a cut of more is not remembered.
const MAX_STEPS: usize = 16;

/// The steps of one event's cut, on the stack (see [`MAX_STEPS`]).
struct Steps {
    buf: [Step; MAX_STEPS],
    len: usize,
}

impl Steps {
    fn new() -> Self {
        Steps {
            buf: [Step::End; MAX_STEPS],
            len: 0,
        }
    }

    /// Appends `s`; false when full.
    fn push(&mut self, s: Step) -> bool {
        if self.len == MAX_STEPS {
            return false;
        }
        self.buf[self.len] = s;
        self.len += 1;
        true
    }

    fn as_slice(&self) -> &[Step] {
        &self.buf[..self.len]
    }
}

/// Appends the steps of the cut of `d` (an exact dict) by `p`; false when the cut
/// cannot be keyed.
fn cut_steps(p: &Projection, d: &Bound<'_, PyAny>, depth: usize, out: &mut Steps) -> bool {
    if depth > crate::python::convert::json::MAX_DEPTH || !d.is_exact_instance_of::<PyDict>() {
        return false;
    }
    let py = d.py();
    let mut found = 0;
    let mut pos: ffi::Py_ssize_t = 0;
    let mut key: *mut ffi::PyObject = std::ptr::null_mut();
    let mut value: *mut ffi::PyObject = std::ptr::null_mut();
    // NOTE: the dict's own entries, borrowed (no reference counts, no size check
    // per step as pyo3's iterator makes): nothing here runs Python code, so the
    // dict cannot change while it is walked (W1r's path, issue 15).
    // SAFETY: `d` is a live dict and the GIL is held; `key` and `value` are borrowed
    // references the dict keeps alive while it is not changed.
    while unsafe { ffi::PyDict_Next(d.as_ptr(), &mut pos, &mut key, &mut value) } != 0 {
        if unsafe { ffi::PyUnicode_CheckExact(key) } == 0 {
            return false;
        }
        if found == p.key_count() {
            continue;
        }
        let mut size: ffi::Py_ssize_t = 0;
        let text = unsafe { ffi::PyUnicode_AsUTF8AndSize(key, &mut size) };
        if text.is_null() {
            // NOTE: a key that is not valid UTF-8 (a lone surrogate): not keyed.
            unsafe { ffi::PyErr_Clear() };
            return false;
        }
        // SAFETY: CPython keeps the UTF-8 text with the str, `size` bytes long.
        let text = unsafe { std::slice::from_raw_parts(text.cast::<u8>(), size as usize) };
        let Some((i, (_, below))) = p
            .keys()
            .enumerate()
            .find(|(_, (k, _))| k.as_bytes() == text)
        else {
            continue;
        };
        found += 1;
        if !out.push(Step::Key(i as u32)) {
            return false;
        }
        // SAFETY: see above; borrowed for the rest of this call only.
        let v = unsafe { Bound::from_borrowed_ptr(py, value) };
        if is_scalar(&v) {
            // NOTE: a scalar's hash cannot fail; a str caches its own.
            let Ok(h) = v.hash() else {
                return false;
            };
            if !out.push(Step::Leaf(v.as_ptr() as usize, h)) {
                return false;
            }
        } else if below.is_leaf() || !cut_steps(below, &v, depth + 1, out) {
            // NOTE: a container where a leaf is named, or a list: not keyed.
            return false;
        }
    }
    out.push(Step::End)
}

/// An immutable scalar of an exact type, which the cut copies as it is.
fn is_scalar(v: &Bound<'_, PyAny>) -> bool {
    v.is_none()
        || v.is_exact_instance_of::<PyString>()
        || v.is_exact_instance_of::<PyInt>()
        || v.is_exact_instance_of::<PyFloat>()
        || v.is_exact_instance_of::<PyBool>()
}

/// The steps and the priority hashed together (FxHash's mixing).
fn signature(priority: u8, steps: &[Step]) -> u64 {
    let mix = |h: u64, x: u64| (h.rotate_left(5) ^ x).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    steps.iter().fold(u64::from(priority), |h, s| {
        mix(
            h,
            match *s {
                Step::Key(i) => u64::from(i) | 1 << 40,
                Step::Leaf(_, hash) => hash as u64,
                Step::End => 1 << 41,
            },
        )
    })
}

fn same_step(py: Python<'_>, a: &Step, b: &Step) -> bool {
    match (a, b) {
        (Step::Leaf(x, hx), Step::Leaf(y, hy)) => x == y || (hx == hy && same_scalar(py, *x, *y)),
        _ => a == b,
    }
}

/// Whether two scalars (see [`is_scalar`]) at different addresses are equal
/// values of the same type (`None` and the bools are single objects).
fn same_scalar(py: Python<'_>, a: usize, b: usize) -> bool {
    // NOTE: SAFETY: `a` is held by the memo's entry and `b` by the payload being
    // published, both under the GIL.
    let (a, b) = unsafe {
        (
            Bound::from_borrowed_ptr(py, a as *mut pyo3::ffi::PyObject),
            Bound::from_borrowed_ptr(py, b as *mut pyo3::ffi::PyObject),
        )
    };
    if let (Ok(x), Ok(y)) = (a.cast_exact::<PyString>(), b.cast_exact::<PyString>()) {
        return matches!((x.to_str(), y.to_str()), (Ok(x), Ok(y)) if x == y);
    }
    if let (Ok(x), Ok(y)) = (a.cast_exact::<PyInt>(), b.cast_exact::<PyInt>()) {
        return matches!((x.extract::<i64>(), y.extract::<i64>()), (Ok(x), Ok(y)) if x == y);
    }
    if let (Ok(x), Ok(y)) = (a.cast_exact::<PyFloat>(), b.cast_exact::<PyFloat>()) {
        return x.value().to_bits() == y.value().to_bits();
    }
    false
}
