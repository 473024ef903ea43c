//! The engine's handle on an accepted event ([`AcceptedEvent`]): the `Event` object or
//! the fields a compiled producer gave, its metadata, the copy Rust consumers
//! read, and its place in the store.

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyString;
use std::sync::Arc;

use crate::dispatch::EventLike;
use crate::python::runtime::errors::*;

use crate::python::convert::text::uuid_text;
use crate::python::model::event::*;
use crate::python::model::metadata::*;

/// The engine's handle on an accepted event.
pub struct AcceptedEvent {
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
    /// Where acknowledgements go when the event is stored (`enable_persistence`)
    /// or was read from a shared log (`backend=`): see [`crate::durable::StoredRef`].
    pub durable: Option<Arc<crate::durable::StoredRef>>,
}

// NOTE: every queued event holds one `Arc<AcceptedEvent>` (W5, bytes per queued
// event); with the Arc's 16 bytes it fits mimalloc's 128-byte size class.
const _: () = assert!(std::mem::size_of::<AcceptedEvent>() <= 112);

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

/// The payload of a producer-made event as the producer gives it to the bus: a
/// dict, or the fields of one that is made only if something needs the dict.
pub enum DraftData<'py> {
    /// A dict (the bus checks that it is one).
    Dict(Bound<'py, PyAny>),
    /// `publish_tool_use`'s `{"tool": .., "params": .., "result": ..}`
    /// ([`TOOL_USE_KEYS`]).
    ToolUse([Bound<'py, PyAny>; 3]),
}

/// The keys of [`DraftData::ToolUse`], in order.
pub const TOOL_USE_KEYS: [&str; 3] = ["tool", "params", "result"];

static TOOL_USE_STRS: PyOnceLock<[Py<PyString>; 3]> = PyOnceLock::new();

impl<'py> DraftData<'py> {
    /// The payload as a dict (made now from fields).
    pub fn into_dict(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self {
            DraftData::Dict(d) => Ok(d),
            DraftData::ToolUse(values) => {
                let keys = TOOL_USE_STRS.get_or_init(py, || {
                    TOOL_USE_KEYS.map(|k| PyString::intern(py, k).unbind())
                });
                let d = pyo3::types::PyDict::new(py);
                for (k, v) in keys.iter().zip(values) {
                    d.set_item(k.bind(py), v)?;
                }
                Ok(d.into_any())
            }
        }
    }

    /// The payload packed as [`crate::python::convert::json::pack_json`] packs the
    /// dict (None: not plain JSON).
    pub fn pack(&self) -> Option<Box<str>> {
        match self {
            DraftData::Dict(d) => crate::python::convert::json::pack_json(d),
            DraftData::ToolUse([tool, params, result]) => {
                let [k0, k1, k2] = TOOL_USE_KEYS;
                crate::python::convert::json::pack_json_fields(&[
                    (k0, tool),
                    (k1, params),
                    (k2, result),
                ])
            }
        }
    }
}

/// The payload of [`EventParts`].
pub enum PartsData {
    /// JSON text (see [`pack_payload`]).
    Packed(Box<str>),
    /// A dict.
    Object(Py<PyAny>),
}

impl EventParts {
    /// Fields of a new event made at `timestamp_ns` ([`crate::clock::now_unix_nanos`]),
    /// with a fresh id.
    pub fn new(
        type_: Py<PyString>,
        correlation_id: Option<Py<PyString>>,
        data: PartsData,
        timestamp_ns: i64,
    ) -> Self {
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
        crate::clock::from_unix_nanos(self.timestamp_ns)
    }
}

pub(crate) static HOOK_SOURCE: PyOnceLock<Py<PyString>> = PyOnceLock::new();

/// `"hook_handler"`, the source of every `HookEventProducer` event (one shared str).
pub fn hook_source(py: Python<'_>) -> &Bound<'_, PyString> {
    HOOK_SOURCE
        .get_or_init(py, || PyString::new(py, "hook_handler").unbind())
        .bind(py)
}

/// The Python str of an event's topic: the previous event's when the topic is the
/// same (events on one topic share their route's `Arc`), else a new one.
// NOTE: a new str per event was ~200 instructions of a W1 event (issue 16). The
// cache holds one entry and lives as long as the module; replacing its entry drops
// the old str with the GIL held.
fn topic_str(py: Python<'_>, topic: &Arc<str>) -> Py<PyString> {
    static LAST: Mutex<Option<(Arc<str>, Py<PyString>)>> = Mutex::new(None);
    let mut last = LAST.lock();
    if let Some((t, s)) = &*last {
        if Arc::ptr_eq(t, topic) || **t == **topic {
            return s.clone_ref(py);
        }
    }
    let s = PyString::new(py, topic).unbind();
    *last = Some((topic.clone(), s.clone_ref(py)));
    s
}

// NOTE: an event waiting in lanes costs far less as Rust fields than as a Python
// `Event` object (plus its topic string): about 100 bytes against 260 on the
// Python heap. Every consumer gets the same object, made once on first use.
pub(crate) enum Body {
    /// An `Event` given to `publish()` (or already made).
    Object(Py<Event>),
    /// A producer-made event; the `Event` is made from it on first use.
    Parts(EventParts, MadeEvent),
}

/// The `Event` made from [`EventParts`]: set once, read and written only with
/// the GIL held.
// NOTE: PyOnceLock would do, but takes 16 bytes to this one's 8, and these 8 keep
// `Arc<AcceptedEvent>` within mimalloc's 128-byte size class (W5, bytes per queued
// event). The GIL is what serialises access: every method takes a `Python`
// token, and this abi3 extension cannot be loaded by a free-threaded CPython.
pub(crate) struct MadeEvent(std::cell::UnsafeCell<Option<Py<Event>>>);

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
pub enum Origin<'a> {
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
            if let Some(json) = crate::python::convert::json::pack_json(o.bind(py)) {
                e.data = Payload::Packed(json, PyOnceLock::new());
            }
        }
    }
}

/// The GC need not track an accepted event of our own type.
pub(crate) fn untrack(py: Python<'_>, event: &Py<Event>) {
    // NOTE: our pyclasses do not report references to the GC (no
    // __traverse__), so tracking an accepted event only makes every
    // collection walk it; many events wait in lanes at once.
    // Subclasses may have a __dict__ (and cycles through it): keep those.
    if event.bind(py).get_type().is(py.get_type::<Event>()) {
        // SAFETY: `event` is a live, GC-enabled object of our own type.
        unsafe { pyo3::ffi::PyObject_GC_UnTrack(event.as_ptr().cast()) };
    }
}

impl AcceptedEvent {
    /// The event's id.
    pub fn id(&self, py: Python<'_>) -> String {
        match self.origin(py) {
            Origin::Object(e) => e.borrow(py).id.text(py),
            Origin::Parts(p) => uuid_text(&p.id),
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
                        topic: topic_str(py, &self.topic),
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
    pub fn origin(&self, py: Python<'_>) -> Origin<'_> {
        match &self.body {
            Body::Object(e) => Origin::Object(e),
            Body::Parts(p, made) => match made.get(py) {
                Some(e) => Origin::Object(e),
                None => Origin::Parts(p),
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
        AcceptedEvent {
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
            AcceptedEvent {
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

impl crate::sinks::executor::SinkEvent for AcceptedEvent {
    fn view(&self) -> Option<&Arc<crate::event::EventView>> {
        self.view.as_ref()
    }
}

impl EventLike for AcceptedEvent {
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

    fn rule_view(&self) -> Option<&crate::event::EventView> {
        self.view.as_deref()
    }
}
