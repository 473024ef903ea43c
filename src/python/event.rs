//! `Event` and `EventMetadata`: the Python event classes, and the engine's view
//! of an accepted event.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PySet, PyString, PyType};

use super::errors::{event_error, topic_error};
use crate::dispatch::EventLike;
use crate::topic::Pattern;

static EVENT_PRIORITY: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static CONSUMER_PRIORITY: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static FROMISOFORMAT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

const EVENT_PRIORITY_NAMES: [&str; 4] = ["CRITICAL", "HIGH", "NORMAL", "LOW"];
const CONSUMER_PRIORITY_NAMES: [&str; 5] = ["CRITICAL", "HIGH", "NORMAL", "LOW", "DEFERRED"];

fn event_priority_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    EVENT_PRIORITY.import(py, "mpm_events.interfaces", "EventPriority")
}

fn consumer_priority_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
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
fn read_priority(obj: &Bound<'_, PyAny>, names: &[&str], what: &str) -> PyResult<u8> {
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

static EVENT_PRIORITY_MEMBERS: PyOnceLock<Vec<Py<PyAny>>> = PyOnceLock::new();

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

pub use crate::event::{MetaCell, MetaState};

fn to_py_datetime<'py>(py: Python<'py>, dt: &Option<DateTime<Utc>>) -> PyResult<Bound<'py, PyAny>> {
    match dt {
        Some(dt) => dt.into_pyobject(py).map(|b| b.into_any()),
        None => Ok(py.None().into_bound(py)),
    }
}

fn read_datetime(obj: &Bound<'_, PyAny>, field: &str) -> PyResult<Option<DateTime<Utc>>> {
    if obj.is_none() {
        return Ok(None);
    }
    if let Some(dt) = datetime_utc(obj) {
        return Ok(Some(dt));
    }
    if let Ok(s) = obj.extract::<String>() {
        let parsed = parse_timestamp(obj.py(), &s)?;
        return read_datetime(&parsed, field);
    }
    Err(PyTypeError::new_err(format!(
        "EventMetadata.{field} must be a datetime or None"
    )))
}

fn names_from(obj: &Bound<'_, PyAny>, field: &str) -> PyResult<thin_vec::ThinVec<Arc<str>>> {
    let mut out: thin_vec::ThinVec<Arc<str>> = thin_vec::ThinVec::new();
    for item in obj
        .try_iter()
        .map_err(|_| PyTypeError::new_err(format!("EventMetadata.{field} must be a set of str")))?
    {
        let s: String = item?
            .extract()
            .map_err(|_| PyTypeError::new_err(format!("EventMetadata.{field} must hold str")))?;
        if !out.iter().any(|n| **n == *s) {
            out.push(s.into());
        }
    }
    Ok(out)
}

/// The Python containers of an event's metadata, made on first access so that
/// user code can mutate them as it could the original's dataclass fields.
pub struct PyMirror {
    processed: Py<PySet>,
    failed: Py<PySet>,
    errors: Py<PyList>,
}

/// Handles to the (up-to-date) Python containers.
struct MirrorRefs {
    processed: Py<PySet>,
    failed: Py<PySet>,
    errors: Py<PyList>,
}

impl EventMetadata {
    /// Creates the Python containers, or replays the engine's changes onto them.
    fn mirror(&self, py: Python<'_>) -> PyResult<MirrorRefs> {
        let mut st = self.cell.lock();
        if st.mirror().is_none() {
            let m = PyMirror {
                processed: PySet::new(py, st.processed.iter().map(|n| &**n))?.unbind(),
                failed: PySet::new(py, st.failed().iter().map(|n| &**n))?.unbind(),
                errors: PyList::new(py, st.errors())?.unbind(),
            };
            st.set_mirror(Box::new(m));
        }
        let pending = st.take_pending();
        let m = st
            .mirror()
            .and_then(|m| m.downcast_ref::<PyMirror>())
            .expect("mirror");
        for op in pending {
            match op {
                crate::event::MetaOp::Processed(c) => {
                    m.failed.bind(py).discard(&*c)?;
                    m.processed.bind(py).add(&*c)?;
                }
                crate::event::MetaOp::Failed(c, msg) => {
                    m.failed.bind(py).add(&*c)?;
                    m.errors.bind(py).append(msg)?;
                }
            }
        }
        Ok(MirrorRefs {
            processed: m.processed.clone_ref(py),
            failed: m.failed.clone_ref(py),
            errors: m.errors.clone_ref(py),
        })
    }
}

#[doc = stub_doc!(EventMetadata)]
#[pyclass(module = "mpm_events._core", name = "EventMetadata", frozen)]
pub struct EventMetadata {
    pub(crate) cell: MetaCell,
}

#[pymethods]
impl EventMetadata {
    #[new]
    #[pyo3(signature = (retry_count=0, max_retries=3, published_at=None, consumed_at=None, consumers_processed=None, consumers_failed=None, error_messages=None))]
    fn new(
        retry_count: i64,
        max_retries: i64,
        published_at: Option<&Bound<'_, PyAny>>,
        consumed_at: Option<&Bound<'_, PyAny>>,
        consumers_processed: Option<&Bound<'_, PyAny>>,
        consumers_failed: Option<&Bound<'_, PyAny>>,
        error_messages: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let mut st = MetaState::default();
        st.retry_count = retry_count;
        st.max_retries = max_retries;
        if let Some(v) = published_at {
            st.published_at = read_datetime(v, "published_at")?;
        }
        if let Some(v) = consumed_at {
            st.consumed_at = read_datetime(v, "consumed_at")?;
        }
        if let Some(v) = consumers_processed {
            st.processed = names_from(v, "consumers_processed")?;
        }
        if let Some(v) = consumers_failed {
            st.set_failed(names_from(v, "consumers_failed")?);
        }
        if let Some(v) = error_messages {
            st.set_errors(
                v.extract::<Vec<String>>()
                    .map_err(|_| {
                        PyTypeError::new_err("EventMetadata.error_messages must be a list of str")
                    })?
                    .into(),
            );
        }
        Ok(EventMetadata {
            cell: Arc::new(Mutex::new(st)),
        })
    }

    /// How many retries the event has had (highest over its consumers).
    #[getter]
    fn retry_count(&self) -> i64 {
        self.cell.lock().retry_count
    }
    #[setter]
    fn set_retry_count(&self, v: i64) {
        self.cell.lock().retry_count = v;
    }
    #[getter]
    fn max_retries(&self) -> i64 {
        self.cell.lock().max_retries
    }
    #[setter]
    fn set_max_retries(&self, v: i64) {
        self.cell.lock().max_retries = v;
    }
    #[getter]
    fn published_at<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let v = self.cell.lock().published_at;
        to_py_datetime(py, &v)
    }
    #[setter]
    fn set_published_at(&self, v: &Bound<'_, PyAny>) -> PyResult<()> {
        self.cell.lock().published_at = read_datetime(v, "published_at")?;
        Ok(())
    }
    #[getter]
    fn consumed_at<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let v = self.cell.lock().consumed_at;
        to_py_datetime(py, &v)
    }
    #[setter]
    fn set_consumed_at(&self, v: &Bound<'_, PyAny>) -> PyResult<()> {
        self.cell.lock().consumed_at = read_datetime(v, "consumed_at")?;
        Ok(())
    }
    /// Names of the consumers that handled the event: a live `set`.
    #[getter]
    fn consumers_processed<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(self.mirror(py)?.processed.bind(py).clone().into_any())
    }
    #[setter]
    fn set_consumers_processed(&self, py: Python<'_>, v: &Bound<'_, PyAny>) -> PyResult<()> {
        let names = names_from(v, "consumers_processed")?;
        let set = PySet::new(py, names.iter().map(|n| &**n))?.unbind();
        self.mirror(py)?;
        let mut st = self.cell.lock();
        st.processed = names;
        if let Some(m) = st.mirror_mut().and_then(|m| m.downcast_mut::<PyMirror>()) {
            m.processed = set;
        }
        Ok(())
    }
    /// Names of the consumers whose latest attempt failed: a live `set`.
    #[getter]
    fn consumers_failed<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(self.mirror(py)?.failed.bind(py).clone().into_any())
    }
    #[setter]
    fn set_consumers_failed(&self, py: Python<'_>, v: &Bound<'_, PyAny>) -> PyResult<()> {
        let names = names_from(v, "consumers_failed")?;
        let set = PySet::new(py, names.iter().map(|n| &**n))?.unbind();
        self.mirror(py)?;
        let mut st = self.cell.lock();
        st.set_failed(names);
        if let Some(m) = st.mirror_mut().and_then(|m| m.downcast_mut::<PyMirror>()) {
            m.failed = set;
        }
        Ok(())
    }
    /// Every failure message, oldest first: a live `list`.
    #[getter]
    fn error_messages<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(self.mirror(py)?.errors.bind(py).clone().into_any())
    }
    #[setter]
    fn set_error_messages(&self, py: Python<'_>, v: &Bound<'_, PyAny>) -> PyResult<()> {
        let errors: Vec<String> = v.extract().map_err(|_| {
            PyTypeError::new_err("EventMetadata.error_messages must be a list of str")
        })?;
        let list = PyList::new(py, &errors)?.unbind();
        self.mirror(py)?;
        let mut st = self.cell.lock();
        st.set_errors(errors.into());
        if let Some(m) = st.mirror_mut().and_then(|m| m.downcast_mut::<PyMirror>()) {
            m.errors = list;
        }
        Ok(())
    }

    fn __repr__(&self) -> String {
        let st = self.cell.lock();
        format!(
            "EventMetadata(retry_count={}, max_retries={}, published_at={}, consumed_at={}, consumers_processed={:?}, consumers_failed={:?}, error_messages={:?})",
            st.retry_count,
            st.max_retries,
            st.published_at.map(|d| d.to_rfc3339()).unwrap_or_else(|| "None".into()),
            st.consumed_at.map(|d| d.to_rfc3339()).unwrap_or_else(|| "None".into()),
            st.processed,
            st.failed(),
            st.errors()
        )
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        let Ok(other) = other.cast::<EventMetadata>() else {
            return false;
        };
        if Arc::ptr_eq(&self.cell, &other.get().cell) {
            return true;
        }
        let (a, b) = (
            self.cell.lock().snapshot(),
            other.get().cell.lock().snapshot(),
        );
        let set = |v: &[Arc<str>]| {
            let mut v: Vec<&str> = v.iter().map(|s| &**s).collect();
            v.sort_unstable();
            v.into_iter().map(str::to_owned).collect::<Vec<_>>()
        };
        a.retry_count == b.retry_count
            && a.max_retries == b.max_retries
            && a.published_at == b.published_at
            && a.consumed_at == b.consumed_at
            && set(&a.processed) == set(&b.processed)
            && set(a.failed()) == set(b.failed())
            && a.errors() == b.errors()
    }

    #[doc = stub_doc!(EventMetadata, to_dict)]
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let st = self.cell.lock().snapshot();
        let d = PyDict::new(py);
        d.set_item("retry_count", st.retry_count)?;
        d.set_item("max_retries", st.max_retries)?;
        d.set_item("published_at", st.published_at.map(|t| t.to_rfc3339()))?;
        d.set_item("consumed_at", st.consumed_at.map(|t| t.to_rfc3339()))?;
        d.set_item(
            "consumers_processed",
            st.processed
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )?;
        d.set_item(
            "consumers_failed",
            st.failed()
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )?;
        d.set_item("error_messages", st.errors().to_vec())?;
        Ok(d)
    }
}

/// Reads any object with the EventMetadata attributes (ours or the original's).
fn read_metadata(obj: &Bound<'_, PyAny>) -> PyResult<MetaCell> {
    if obj.is_none() {
        return Ok(Arc::new(Mutex::new(MetaState::default())));
    }
    if let Ok(ours) = obj.cast::<EventMetadata>() {
        return Ok(ours.get().cell.clone());
    }
    let get = |name: &str| -> PyResult<Bound<'_, PyAny>> {
        obj.getattr(name).map_err(|_| {
            event_error(format!(
                "metadata of type {} has no attribute {name:?}",
                type_name(obj)
            ))
        })
    };
    let m = EventMetadata::new(
        get("retry_count")?.extract()?,
        get("max_retries")?.extract()?,
        Some(&get("published_at")?),
        Some(&get("consumed_at")?),
        Some(&get("consumers_processed")?),
        Some(&get("consumers_failed")?),
        Some(&get("error_messages")?),
    )?;
    Ok(m.cell)
}

pub(crate) fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

fn parse_timestamp<'py>(py: Python<'py>, s: &str) -> PyResult<Bound<'py, PyAny>> {
    let f = FROMISOFORMAT
        .import(py, "datetime", "datetime")?
        .getattr("fromisoformat")?;
    f.call1((s,)).map_err(|e| {
        PyValueError::new_err(format!(
            "Event.timestamp {s:?} is not an ISO 8601 datetime: {e}"
        ))
    })
}

fn check_str<'py>(obj: &Bound<'py, PyAny>, field: &str) -> PyResult<Bound<'py, PyString>> {
    obj.cast::<PyString>().cloned().map_err(|_| {
        event_error(format!(
            "Event.{field} must be a str, got {}",
            type_name(obj)
        ))
    })
}

fn check_data<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    if obj.is_instance_of::<PyDict>() {
        Ok(obj.clone())
    } else {
        Err(event_error(format!(
            "Event.data must be a dict, got {}",
            type_name(obj)
        )))
    }
}

fn check_timestamp<'py>(
    py: Python<'py>,
    obj: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    match obj {
        None => Ok(Utc::now().into_pyobject(py)?.into_any()),
        Some(o) if o.is_none() => Ok(Utc::now().into_pyobject(py)?.into_any()),
        Some(o) => {
            if let Ok(s) = o.cast::<PyString>() {
                return parse_timestamp(py, &s.to_cow()?);
            }
            if o.is_instance_of::<pyo3::types::PyDateTime>() {
                return Ok(o.clone());
            }
            Err(event_error(format!(
                "Event.timestamp must be a datetime or an ISO 8601 str, got {}",
                type_name(o)
            )))
        }
    }
}

/// An event's payload: the caller's object, or (once the bus has accepted the
/// event) a compact JSON copy turned back into a dict only if someone reads it.
pub enum Payload {
    /// A Python object (a dict, checked at construction and publish).
    Object(Py<PyAny>),
    /// Packed at publish: JSON text, and the dict made from it on first read.
    Packed(Box<str>, PyOnceLock<Py<PyAny>>),
}

impl Payload {
    /// The payload as a Python object (unpacking it, once, if needed).
    pub fn get(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match self {
            Payload::Object(o) => Ok(o.clone_ref(py)),
            Payload::Packed(json, cache) => cache
                .get_or_try_init(py, || super::native::unpack_json(py, json))
                .map(|o| o.clone_ref(py)),
        }
    }

    /// Whether the payload is a dict.
    pub fn is_dict(&self, py: Python<'_>) -> bool {
        match self {
            Payload::Object(o) => o.bind(py).is_instance_of::<PyDict>(),
            Payload::Packed(..) => true,
        }
    }

    fn type_name(&self, py: Python<'_>) -> String {
        match self {
            Payload::Object(o) => type_name(o.bind(py)),
            Payload::Packed(..) => "dict".into(),
        }
    }

    fn clone_ref(&self, py: Python<'_>) -> PyResult<Payload> {
        Ok(match self {
            Payload::Object(o) => Payload::Object(o.clone_ref(py)),
            Payload::Packed(json, cache) => match cache.get(py) {
                Some(o) => Payload::Object(o.clone_ref(py)),
                None => Payload::Packed(json.clone(), PyOnceLock::new()),
            },
        })
    }
}

/// An event's timestamp: made in Rust (and turned into a Python `datetime`
/// only if someone reads it) or given by the caller.
pub enum Timestamp {
    /// Set by the bus at creation time.
    Now(DateTime<Utc>, PyOnceLock<Py<PyAny>>),
    /// Given by the caller (a `datetime`), with its UTC time.
    // NOTE: converted once when set (datetimes are immutable) instead of at every
    // read by the engine (views for Rust consumers, the store, logging); under the
    // stable ABI the conversion costs Python calls.
    Given(Py<PyAny>, DateTime<Utc>),
}

impl Timestamp {
    fn now() -> Self {
        Timestamp::Now(Utc::now(), PyOnceLock::new())
    }

    /// A caller's `datetime` (naive datetimes are taken as UTC).
    fn given(t: Bound<'_, PyAny>) -> Self {
        let utc = datetime_utc(&t).unwrap_or_else(Utc::now);
        Timestamp::Given(t.unbind(), utc)
    }

    /// The Python `datetime`.
    pub fn to_py(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match self {
            Timestamp::Given(p, _) => Ok(p.clone_ref(py)),
            Timestamp::Now(dt, cell) => cell
                .get_or_try_init(py, || {
                    Ok::<_, PyErr>(dt.into_pyobject(py)?.into_any().unbind())
                })
                .map(|p| p.clone_ref(py)),
        }
    }

    /// The time in UTC (naive datetimes are taken as UTC).
    pub fn to_utc(&self) -> DateTime<Utc> {
        match self {
            Timestamp::Now(dt, _) | Timestamp::Given(_, dt) => *dt,
        }
    }

    fn clone_ref(&self, py: Python<'_>) -> Self {
        match self {
            Timestamp::Now(dt, _) => Timestamp::Now(*dt, PyOnceLock::new()),
            Timestamp::Given(p, dt) => Timestamp::Given(p.clone_ref(py), *dt),
        }
    }
}

static UTC_TZ: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// A `datetime` in UTC; naive datetimes are taken as UTC (stored and published
/// timestamps are UTC, like the original's isoformat round trip). `None` if `t` is not
/// a datetime.
pub(crate) fn datetime_utc(t: &Bound<'_, PyAny>) -> Option<DateTime<Utc>> {
    if let Some(dt) = utc_fast(t) {
        return Some(dt);
    }
    t.extract::<DateTime<chrono::FixedOffset>>()
        .map(|d| d.with_timezone(&Utc))
        .or_else(|_| t.extract::<chrono::NaiveDateTime>().map(|n| n.and_utc()))
        .ok()
}

/// A datetime whose tzinfo is `datetime.timezone.utc` (what `datetime.now(UTC)` makes),
/// converted with one method call; `None` for any other datetime.
///
/// NOTE: under the stable ABI pyo3's chrono conversion reads the fields and the
/// offset through several Python calls: it was a fifth of `publish_batch`'s time per
/// event into a Rust consumer (W6). `timestamp()` is exact to the microsecond here:
/// Python rounds the exact value to the nearest double, whose error (< 0.25 us for
/// dates before 2100) the rounding below removes.
fn utc_fast(t: &Bound<'_, PyAny>) -> Option<DateTime<Utc>> {
    let py = t.py();
    let utc = UTC_TZ
        .get_or_try_init(py, || {
            py.import("datetime")?
                .getattr("timezone")?
                .getattr("utc")
                .map(Bound::unbind)
        })
        .ok()?;
    if !t.getattr(pyo3::intern!(py, "tzinfo")).ok()?.is(utc) {
        return None;
    }
    let secs: f64 = t
        .call_method0(pyo3::intern!(py, "timestamp"))
        .ok()?
        .extract()
        .ok()?;
    DateTime::from_timestamp_micros((secs * 1e6).round() as i64)
}

#[doc = stub_doc!(Event)]
#[pyclass(module = "mpm_events._core", name = "Event", subclass, weakref)]
pub struct Event {
    pub(crate) id: EventId,
    pub(crate) topic: Py<PyString>,
    pub(crate) type_: Py<PyString>,
    pub(crate) timestamp: Timestamp,
    pub(crate) source: Py<PyString>,
    pub(crate) data: Payload,
    pub(crate) meta: MetaCell,
    pub(crate) correlation_id: Option<Py<PyString>>,
    pub(crate) priority: u8,
}

/// An event's id: a uuid4 made in Rust (turned into a Python str only when
/// read) or the caller's str.
pub enum EventId {
    /// Generated for an event created without an id.
    Fresh(uuid::Uuid, PyOnceLock<Py<PyString>>),
    /// Given by the caller.
    Given(Py<PyString>),
}

impl EventId {
    fn fresh() -> Self {
        EventId::Fresh(uuid::Uuid::new_v4(), PyOnceLock::new())
    }

    /// The id as a Python str.
    pub fn to_py(&self, py: Python<'_>) -> Py<PyString> {
        match self {
            EventId::Given(s) => s.clone_ref(py),
            EventId::Fresh(u, cell) => cell
                .get_or_init(py, || {
                    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
                    PyString::new(py, u.hyphenated().encode_lower(&mut buf)).unbind()
                })
                .clone_ref(py),
        }
    }

    /// The id as Rust text.
    pub fn text(&self, py: Python<'_>) -> String {
        match self {
            EventId::Given(s) => s
                .bind(py)
                .to_cow()
                .map(|c| c.into_owned())
                .unwrap_or_default(),
            EventId::Fresh(u, _) => uuid_text(u),
        }
    }

    fn clone_ref(&self, py: Python<'_>) -> Self {
        match self {
            EventId::Given(s) => EventId::Given(s.clone_ref(py)),
            EventId::Fresh(u, _) => EventId::Fresh(*u, PyOnceLock::new()),
        }
    }
}

impl Event {
    /// Builds an event from already-checked parts (used by the producer when it
    /// publishes through `publish()`).
    #[allow(clippy::too_many_arguments)]
    pub fn from_parts(
        _py: Python<'_>,
        topic: Bound<'_, PyString>,
        type_: Bound<'_, PyString>,
        source: Bound<'_, PyString>,
        data: Bound<'_, PyAny>,
        correlation_id: Option<Bound<'_, PyString>>,
        priority: u8,
    ) -> PyResult<Self> {
        Ok(Event {
            id: EventId::fresh(),
            topic: topic.unbind(),
            type_: type_.unbind(),
            timestamp: Timestamp::now(),
            source: source.unbind(),
            data: Payload::Object(data.unbind()),
            meta: Arc::new(Mutex::new(MetaState::default())),
            correlation_id: correlation_id.map(Bound::unbind),
            priority,
        })
    }

    /// Converts any object with the Event attributes (for example the original
    /// package's dataclass) into our `Event`, keeping its id.
    pub fn from_foreign(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        let py = obj.py();
        let get = |name: &str| -> PyResult<Bound<'_, PyAny>> {
            obj.getattr(name).map_err(|_| {
                event_error(format!(
                    "expected an Event; the object of type {} has no attribute {name:?}",
                    type_name(obj)
                ))
            })
        };
        let id = get("id")?;
        let topic = get("topic")?;
        let type_ = get("type")?;
        let timestamp = get("timestamp")?;
        let source = get("source")?;
        let data = get("data")?;
        let metadata = obj.getattr("metadata").ok();
        let correlation_id = obj.getattr("correlation_id").ok();
        let priority = obj.getattr("priority").ok();
        Event::new(
            py,
            Some(&id),
            Some(&topic),
            Some(&type_),
            Some(&timestamp),
            Some(&source),
            Some(&data),
            metadata.as_ref(),
            correlation_id.as_ref(),
            priority.as_ref(),
        )
    }

    /// The topic as Rust text.
    pub fn topic_str(&self, py: Python<'_>) -> PyResult<String> {
        Ok(self.topic.bind(py).to_cow()?.into_owned())
    }

    /// The id as Rust text.
    pub fn id_str(&self, py: Python<'_>) -> PyResult<String> {
        Ok(self.id.text(py))
    }
}

#[pymethods]
impl Event {
    #[new]
    #[pyo3(signature = (id=None, topic=None, r#type=None, timestamp=None, source=None, data=None, metadata=None, correlation_id=None, priority=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        id: Option<&Bound<'_, PyAny>>,
        topic: Option<&Bound<'_, PyAny>>,
        r#type: Option<&Bound<'_, PyAny>>,
        timestamp: Option<&Bound<'_, PyAny>>,
        source: Option<&Bound<'_, PyAny>>,
        data: Option<&Bound<'_, PyAny>>,
        metadata: Option<&Bound<'_, PyAny>>,
        correlation_id: Option<&Bound<'_, PyAny>>,
        priority: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let id = match id {
            Some(i) if !i.is_none() => check_str(i, "id")?,
            _ => PyString::new(py, ""),
        };
        let id = if id.to_cow()?.is_empty() {
            EventId::fresh()
        } else {
            EventId::Given(id.unbind())
        };
        let empty = || PyString::new(py, "");
        let topic = topic
            .map(|t| check_str(t, "topic"))
            .transpose()?
            .unwrap_or_else(empty);
        let type_ = r#type
            .map(|t| check_str(t, "type"))
            .transpose()?
            .unwrap_or_else(empty);
        let source = source
            .map(|t| check_str(t, "source"))
            .transpose()?
            .unwrap_or_else(empty);
        let data = match data {
            None => PyDict::new(py).into_any(),
            Some(d) if d.is_none() => PyDict::new(py).into_any(),
            Some(d) => check_data(d)?,
        };
        let correlation_id = match correlation_id {
            Some(c) if !c.is_none() => Some(check_str(c, "correlation_id")?.unbind()),
            _ => None,
        };
        let priority = match priority {
            Some(p) if !p.is_none() => read_event_priority(p)
                .map_err(|e| event_error(format!("Event.priority: {}", e.value(py))))?,
            _ => 3,
        };
        let meta = match metadata {
            Some(m) => read_metadata(m)?,
            None => Arc::new(Mutex::new(MetaState::default())),
        };
        Ok(Event {
            id,
            topic: topic.unbind(),
            type_: type_.unbind(),
            timestamp: match timestamp {
                Some(t) if !t.is_none() => Timestamp::given(check_timestamp(py, Some(t))?),
                _ => Timestamp::now(),
            },
            source: source.unbind(),
            data: Payload::Object(data.unbind()),
            meta,
            correlation_id,
            priority,
        })
    }

    /// Accepts the constructor's arguments again so that a subclass's
    /// `super().__init__(...)` works (the object is built in `__new__`).
    #[pyo3(signature = (*_args, **_kwargs))]
    fn __init__(
        &self,
        _args: &Bound<'_, pyo3::types::PyTuple>,
        _kwargs: Option<&Bound<'_, pyo3::types::PyDict>>,
    ) {
    }

    #[getter]
    fn id(&self, py: Python<'_>) -> Py<PyString> {
        self.id.to_py(py)
    }
    #[setter]
    fn set_id(&mut self, v: &Bound<'_, PyAny>) -> PyResult<()> {
        self.id = EventId::Given(check_str(v, "id")?.unbind());
        Ok(())
    }
    #[getter]
    fn topic(&self, py: Python<'_>) -> Py<PyString> {
        self.topic.clone_ref(py)
    }
    #[setter]
    fn set_topic(&mut self, v: &Bound<'_, PyAny>) -> PyResult<()> {
        self.topic = check_str(v, "topic")?.unbind();
        Ok(())
    }
    #[getter(r#type)]
    fn get_type(&self, py: Python<'_>) -> Py<PyString> {
        self.type_.clone_ref(py)
    }
    #[setter(r#type)]
    fn set_type(&mut self, v: &Bound<'_, PyAny>) -> PyResult<()> {
        self.type_ = check_str(v, "type")?.unbind();
        Ok(())
    }
    #[getter]
    fn timestamp(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.timestamp.to_py(py)
    }
    #[setter]
    fn set_timestamp(&mut self, py: Python<'_>, v: &Bound<'_, PyAny>) -> PyResult<()> {
        self.timestamp = Timestamp::given(check_timestamp(py, Some(v))?);
        Ok(())
    }
    #[getter]
    fn source(&self, py: Python<'_>) -> Py<PyString> {
        self.source.clone_ref(py)
    }
    #[setter]
    fn set_source(&mut self, v: &Bound<'_, PyAny>) -> PyResult<()> {
        self.source = check_str(v, "source")?.unbind();
        Ok(())
    }
    #[getter]
    fn data(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.data.get(py)
    }
    #[setter]
    fn set_data(&mut self, v: &Bound<'_, PyAny>) -> PyResult<()> {
        self.data = Payload::Object(check_data(v)?.unbind());
        Ok(())
    }
    #[getter]
    fn metadata(&self) -> EventMetadata {
        EventMetadata {
            cell: self.meta.clone(),
        }
    }
    #[setter]
    fn set_metadata(&mut self, v: &Bound<'_, PyAny>) -> PyResult<()> {
        self.meta = read_metadata(v)?;
        Ok(())
    }
    #[getter]
    fn correlation_id(&self, py: Python<'_>) -> Option<Py<PyString>> {
        self.correlation_id.as_ref().map(|c| c.clone_ref(py))
    }
    #[setter]
    fn set_correlation_id(&mut self, v: &Bound<'_, PyAny>) -> PyResult<()> {
        self.correlation_id = if v.is_none() {
            None
        } else {
            Some(check_str(v, "correlation_id")?.unbind())
        };
        Ok(())
    }
    #[getter]
    fn priority<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        event_priority_member(py, self.priority)
    }
    #[setter]
    fn set_priority(&mut self, v: &Bound<'_, PyAny>) -> PyResult<()> {
        self.priority = read_event_priority(v)?;
        Ok(())
    }

    #[doc = stub_doc!(Event, matches_topic)]
    fn matches_topic(&self, py: Python<'_>, pattern: &str) -> PyResult<bool> {
        let p = Pattern::parse(pattern).map_err(topic_error)?;
        Ok(p.matches(&self.topic.bind(py).to_cow()?))
    }

    #[doc = stub_doc!(Event, to_dict)]
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("id", self.id.to_py(py))?;
        d.set_item("topic", &self.topic)?;
        d.set_item("type", &self.type_)?;
        d.set_item(
            "timestamp",
            self.timestamp
                .to_py(py)?
                .bind(py)
                .call_method0("isoformat")?,
        )?;
        d.set_item("source", &self.source)?;
        d.set_item("data", self.data.get(py)?)?;
        d.set_item("metadata", self.metadata().to_dict(py)?)?;
        d.set_item("correlation_id", &self.correlation_id)?;
        d.set_item(
            "priority",
            EVENT_PRIORITY_NAMES[(self.priority - 1) as usize],
        )?;
        Ok(d)
    }

    #[doc = stub_doc!(Event, from_dict)]
    #[classmethod]
    fn from_dict<'py>(
        cls: &Bound<'py, PyType>,
        d: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = cls.py();
        let d = d
            .cast::<PyDict>()
            .map_err(|_| event_error("Event.from_dict() expects a dict"))?;
        let get = |k: &str| -> PyResult<Option<Bound<'py, PyAny>>> { d.get_item(k) };
        let require = |k: &str| -> PyResult<Bound<'py, PyAny>> {
            get(k)?.ok_or_else(|| event_error(format!("Event.from_dict(): missing key {k:?}")))
        };
        let kwargs = PyDict::new(py);
        for k in ["id", "topic", "type", "timestamp", "source"] {
            kwargs.set_item(k, require(k)?)?;
        }
        for k in ["data", "correlation_id", "priority"] {
            if let Some(v) = get(k)? {
                kwargs.set_item(k, v)?;
            }
        }
        if let Some(m) = get("metadata")? {
            if let Ok(m) = m.cast::<PyDict>() {
                let meta = py.get_type::<EventMetadata>().call((), Some(m))?;
                kwargs.set_item("metadata", meta)?;
            } else if !m.is_none() {
                kwargs.set_item("metadata", m)?;
            }
        }
        cls.call((), Some(&kwargs))
    }

    fn __eq__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        match other.cast::<Event>() {
            Ok(o) => {
                let same = self.id.text(py) == o.borrow().id.text(py);
                Ok(pyo3::types::PyBool::new(py, same)
                    .to_owned()
                    .into_any()
                    .unbind())
            }
            Err(_) => Ok(py.NotImplemented()),
        }
    }

    fn __hash__(&self, py: Python<'_>) -> PyResult<isize> {
        self.id.to_py(py).bind(py).hash()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "Event(id={:?}, topic={:?}, type={:?}, source={:?}, priority={}, correlation_id={})",
            self.id.text(py),
            self.topic.bind(py).to_cow()?,
            self.type_.bind(py).to_cow()?,
            self.source.bind(py).to_cow()?,
            EVENT_PRIORITY_NAMES[(self.priority - 1) as usize],
            match &self.correlation_id {
                Some(c) => format!("{:?}", c.bind(py).to_cow()?),
                None => "None".into(),
            }
        ))
    }

    #[doc = stub_doc!(Event, __copy__)]
    fn __copy__(&self, py: Python<'_>) -> PyResult<Self> {
        Ok(Event {
            id: self.id.clone_ref(py),
            topic: self.topic.clone_ref(py),
            type_: self.type_.clone_ref(py),
            timestamp: self.timestamp.clone_ref(py),
            source: self.source.clone_ref(py),
            data: self.data.clone_ref(py)?,
            meta: Arc::new(Mutex::new(self.meta.lock().snapshot())),
            correlation_id: self.correlation_id.as_ref().map(|c| c.clone_ref(py)),
            priority: self.priority,
        })
    }
}

/// The engine's handle on an accepted event.
pub struct EventRef {
    /// The topic it was published on (shared with its cached route).
    pub topic: Arc<str>,
    /// 1..=4.
    pub priority: u8,
    /// The Python object, or the fields it will be made from.
    body: Body,
    /// Its metadata, updated by the engine without the GIL.
    pub meta: MetaCell,
    /// Fields copied for Rust consumers, when one is on the event's route.
    pub view: Option<Arc<crate::event::EventView>>,
    /// Where acknowledgements go when the event is stored (`enable_persistence`).
    pub durable: Option<Arc<super::persist::Durable>>,
}

// NOTE: every queued event holds one `Arc<EventRef>` (W5, bytes per queued
// event); with the Arc's 16 bytes it fits mimalloc's 128-byte size class.
const _: () = assert!(std::mem::size_of::<EventRef>() <= 112);

/// The fields of an event made by the compiled `HookEventProducer`, kept in Rust
/// until a Python consumer needs the `Event` object. Its source is always the
/// producer's ([`hook_source`]).
pub struct EventParts {
    /// The event id.
    pub id: uuid::Uuid,
    /// Creation time, in nanoseconds since the Unix epoch (exact for 1677..2262;
    /// see [`EventParts::new`]).
    timestamp_ns: i64,
    /// `Event.type`.
    pub type_: Py<PyString>,
    /// `Event.correlation_id`.
    pub correlation_id: Option<Py<PyString>>,
    /// The payload: packed JSON text, or the dict when it could not be packed
    /// (or no Python consumer is on the route).
    pub data: PartsData,
}

/// The payload of [`EventParts`].
pub enum PartsData {
    /// JSON text (see [`pack_payload`]).
    Packed(Box<str>),
    /// A dict.
    Object(Py<PyAny>),
}

impl EventParts {
    /// Fields of a new event made now, with a fresh id.
    pub fn new(type_: Py<PyString>, correlation_id: Option<Py<PyString>>, data: PartsData) -> Self {
        // NOTE: the clock reads nanoseconds as i64 until the year 2262.
        let timestamp_ns = Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
        EventParts {
            id: uuid::Uuid::new_v4(),
            timestamp_ns,
            type_,
            correlation_id,
            data,
        }
    }

    /// Creation time.
    pub fn timestamp(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_nanos(self.timestamp_ns)
    }
}

/// A uuid as the usual lower-case hyphenated text.
pub fn uuid_text(u: &uuid::Uuid) -> String {
    // NOTE: encode_lower into a buffer skips the fmt machinery of to_string().
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    u.hyphenated().encode_lower(&mut buf).to_owned()
}

static HOOK_SOURCE: PyOnceLock<Py<PyString>> = PyOnceLock::new();

/// `"hook_handler"`, the source of every `HookEventProducer` event (one shared str).
pub fn hook_source(py: Python<'_>) -> &Bound<'_, PyString> {
    HOOK_SOURCE
        .get_or_init(py, || PyString::new(py, "hook_handler").unbind())
        .bind(py)
}

// NOTE: an event waiting in lanes costs far less as Rust fields than as a Python
// `Event` object (plus its topic string): about 100 bytes against 260 on the
// Python heap. Every consumer gets the same object, made once on first use.
enum Body {
    /// An `Event` given to `publish()` (or already made).
    Object(Py<Event>),
    /// A producer-made event; the `Event` is made from it on first use.
    Parts(EventParts, MadeEvent),
}

/// The `Event` made from [`EventParts`]: set once, read and written only with
/// the GIL held.
// NOTE: PyOnceLock would do, but takes 16 bytes to this one's 8, and these 8 keep
// `Arc<EventRef>` within mimalloc's 128-byte size class (W5, bytes per queued
// event). The GIL is what serialises access: every method takes a `Python`
// token, and this abi3 extension cannot be loaded by a free-threaded CPython.
struct MadeEvent(std::cell::UnsafeCell<Option<Py<Event>>>);

// SAFETY: the cell is only read or written by `MadeEvent::get` and
// `MadeEvent::get_or_try_init`, which require the GIL (a `Python` token), so no
// two threads access it at once; it goes from `None` to `Some` once and is never
// changed again, so references handed out stay valid while `self` lives. The
// `Py` inside is `Send + Sync` (dropping it without the GIL defers the decref).
unsafe impl Sync for MadeEvent {}

impl MadeEvent {
    fn new() -> Self {
        MadeEvent(std::cell::UnsafeCell::new(None))
    }

    fn get(&self, _py: Python<'_>) -> Option<&Py<Event>> {
        // SAFETY: see `impl Sync`: the GIL is held and the value never changes once set.
        unsafe { (*self.0.get()).as_ref() }
    }

    fn get_or_try_init(
        &self,
        py: Python<'_>,
        make: impl FnOnce() -> PyResult<Py<Event>>,
    ) -> PyResult<&Py<Event>> {
        if let Some(e) = self.get(py) {
            return Ok(e);
        }
        let made = make()?;
        // NOTE: `make` runs Python (allocation, maybe a GC pass and finalizers);
        // if that re-entered and set the cell, keep the first object.
        // SAFETY: see `impl Sync`; no reference into the cell exists while it is `None`.
        unsafe {
            let slot = &mut *self.0.get();
            if slot.is_none() {
                *slot = Some(made);
            }
            Ok(slot.as_ref().expect("just set"))
        }
    }
}

/// Where an event's fields are read from: its `Event` object once there is one
/// (user code may have changed it), else the Rust fields it was made from.
pub enum Source<'a> {
    /// The Python object.
    Object(&'a Py<Event>),
    /// The Rust fields (no object was made yet).
    Parts(&'a EventParts),
}

/// Packs a plain-JSON payload of an accepted event into compact text.
///
/// An accepted event may wait in lanes for a while; keeping its payload as text
/// instead of Python dicts costs less memory and gives the GC nothing to walk.
/// It is unpacked (once) only if someone reads `event.data`.
pub fn pack_payload(py: Python<'_>, event: &Py<Event>) {
    if let Ok(mut e) = event.try_borrow_mut(py) {
        if let Payload::Object(o) = &e.data {
            if let Some(json) = super::native::pack_json(o.bind(py)) {
                e.data = Payload::Packed(json, PyOnceLock::new());
            }
        }
    }
}

/// The GC need not track an accepted event of our own type.
fn untrack(py: Python<'_>, event: &Py<Event>) {
    // NOTE: our pyclasses do not report references to the GC (no
    // __traverse__), so tracking an accepted event only makes every
    // collection walk it; many events wait in lanes at once.
    // Subclasses may have a __dict__ (and cycles through it): keep those.
    if event.bind(py).get_type().is(py.get_type::<Event>()) {
        // SAFETY: `event` is a live, GC-enabled object of our own type.
        unsafe { pyo3::ffi::PyObject_GC_UnTrack(event.as_ptr().cast()) };
    }
}

impl EventRef {
    /// The event's id.
    pub fn id(&self, py: Python<'_>) -> String {
        match self.source(py) {
            Source::Object(e) => e.borrow(py).id.text(py),
            Source::Parts(p) => uuid_text(&p.id),
        }
    }

    /// The `Event` object consumers receive, made (once) if the event was
    /// published as Rust fields.
    pub fn event(&self, py: Python<'_>) -> PyResult<&Py<Event>> {
        match &self.body {
            Body::Object(e) => Ok(e),
            Body::Parts(p, made) => made.get_or_try_init(py, || {
                let e = Py::new(
                    py,
                    Event {
                        id: EventId::Fresh(p.id, PyOnceLock::new()),
                        topic: PyString::new(py, &self.topic).unbind(),
                        type_: p.type_.clone_ref(py),
                        timestamp: Timestamp::Now(p.timestamp(), PyOnceLock::new()),
                        source: hook_source(py).clone().unbind(),
                        data: match &p.data {
                            PartsData::Packed(json) => {
                                Payload::Packed(json.clone(), PyOnceLock::new())
                            }
                            PartsData::Object(o) => Payload::Object(o.clone_ref(py)),
                        },
                        meta: self.meta.clone(),
                        correlation_id: p.correlation_id.as_ref().map(|c| c.clone_ref(py)),
                        priority: self.priority,
                    },
                )?;
                untrack(py, &e);
                Ok(e)
            }),
        }
    }

    /// Where the event's fields are to be read from now.
    pub fn source(&self, py: Python<'_>) -> Source<'_> {
        match &self.body {
            Body::Object(e) => Source::Object(e),
            Body::Parts(p, made) => match made.get(py) {
                Some(e) => Source::Object(e),
                None => Source::Parts(p),
            },
        }
    }

    /// Wraps a producer-made event whose topic was routed (`topic` is the
    /// route's) and whose payload was checked to be a dict.
    pub fn from_parts(
        topic: Arc<str>,
        priority: u8,
        parts: EventParts,
        now: DateTime<Utc>,
    ) -> Self {
        let mut meta = MetaState::default();
        meta.published_at = Some(now);
        EventRef {
            topic,
            priority,
            body: Body::Parts(parts, MadeEvent::new()),
            meta: Arc::new(Mutex::new(meta)),
            view: None,
            durable: None,
        }
    }

    /// Checks `event` for publishing (its topic must be valid: `route` is asked
    /// for the topic's route, which validates it) and wraps it.
    pub fn accept<R>(
        py: Python<'_>,
        event: Py<Event>,
        now: DateTime<Utc>,
        route: impl FnOnce(&str) -> Result<(Arc<str>, R), crate::topic::TopicError>,
    ) -> PyResult<(Self, R)> {
        let ((topic, routed), priority, meta) = {
            let e = event.borrow(py);
            untrack(py, &event);
            let routed = route(&e.topic.bind(py).to_cow()?).map_err(topic_error)?;
            if !e.data.is_dict(py) {
                return Err(event_error(format!(
                    "Event.data must be a dict, got {}",
                    e.data.type_name(py)
                )));
            }
            (routed, e.priority, e.meta.clone())
        };
        meta.lock().published_at = Some(now);
        Ok((
            EventRef {
                topic,
                priority,
                body: Body::Object(event),
                meta,
                view: None,
                durable: None,
            },
            routed,
        ))
    }
}

impl EventLike for EventRef {
    fn topic(&self) -> &str {
        &self.topic
    }

    fn priority(&self) -> u8 {
        self.priority
    }

    fn on_retry(&self, attempt: u32) {
        let mut m = self.meta.lock();
        m.retry_count = m.retry_count.max(attempt as i64);
    }

    fn on_success(&self, consumer: &Arc<str>) {
        self.meta.lock().record_success(consumer);
    }

    fn on_handled(&self, consumer: &Arc<str>) {
        if let Some(d) = &self.durable {
            d.ack(consumer);
        }
    }

    fn on_failure(&self, consumer: &Arc<str>, error: &str) {
        self.meta.lock().record_failure(consumer, error);
    }
}
