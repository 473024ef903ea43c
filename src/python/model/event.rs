//! `Event` and `EventMetadata`: the Python event classes, and the engine's view
//! of an accepted event.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString, PyType};

use crate::python::convert::text::{type_name, uuid_text};
use crate::python::convert::{priority::*, time::*};
use crate::python::model::metadata::*;
use crate::python::runtime::errors::*;
use crate::topic::Pattern;

pub(crate) fn check_str<'py>(
    obj: &Bound<'py, PyAny>,
    field: &str,
) -> PyResult<Bound<'py, PyString>> {
    obj.cast::<PyString>().cloned().map_err(|_| {
        event_error(format!(
            "Event.{field} must be a str, got {}",
            type_name(obj)
        ))
    })
}

pub(crate) fn check_data<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    if obj.is_instance_of::<PyDict>() {
        Ok(obj.clone())
    } else {
        Err(event_error(format!(
            "Event.data must be a dict, got {}",
            type_name(obj)
        )))
    }
}

pub(crate) fn check_timestamp<'py>(
    py: Python<'py>,
    obj: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    match obj {
        None => Ok(crate::clock::now().into_pyobject(py)?.into_any()),
        Some(o) if o.is_none() => Ok(crate::clock::now().into_pyobject(py)?.into_any()),
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
                .get_or_try_init(py, || crate::python::convert::json::unpack_json(py, json))
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

    pub(crate) fn type_name(&self, py: Python<'_>) -> String {
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
        Timestamp::Now(crate::clock::now(), PyOnceLock::new())
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
