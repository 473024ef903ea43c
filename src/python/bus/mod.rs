//! `EventBus`: the Python face of the dispatch engine, with its persistence
//! ([`persistence`]) and its log of failed deliveries ([`delivery_log`]); and
//! [`log_direct`], a shared log's sync functions for processes without a bus.

pub mod admit_memo;
pub mod delivery_log;
pub mod log_direct;
pub mod monitor;
pub mod persistence;
pub mod schemas;
pub mod shared_log;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::{Mutex, RwLock};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PyString};

use crate::dispatch::{Engine, Executor, Lane, LaneConfig, Rejected, Route, ViewNeeds};
use crate::python::consumers::SinkConsumer;
use crate::python::exec::{Inbox, LoopExecutor, PyConsumer, ThreadExecutor};
use crate::python::model::ConsumerSpec;
use crate::python::model::{
    build_view, build_view_projected, build_view_with, payload_object, DataCopy, ViewMemo,
};
use crate::python::model::{AcceptedEvent, DraftData, Event, EventParts, PartsData};
use crate::python::runtime::awaitable::Ready;
use crate::python::runtime::errors::event_error;
use crate::python::runtime::{log_info, log_warning, py_api, runtime};
use crate::sinks::executor::SinkExecutor;
use crate::sinks::fanout::DeadLetterSinks;
use admit_memo::{AdmitMemo, Lookup};
use delivery_log::DeliveryLog;
use persistence::{self as persist, Persistence};
use shared_log::SharedLogBus;

/// Items the loop handles per wake-up before letting other callbacks run.
const LOOP_BUDGET: usize = 16_384;
/// Events `publish_batch` hands to the engine at a time.
const PUBLISH_SLICE: usize = 2048;
/// Events per job for single-event consumers.
const CHUNK: usize = 512;

static INSPECT_ISCOROFN: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// A consumer being unsubscribed: lets `_bus.unsubscribe` wait for its call in
/// flight before `shutdown()`.
#[pyclass(module = "mpm_events._core", name = "_Leaving", frozen)]
pub struct Leaving {
    engine: Engine<AcceptedEvent>,
    lane: Arc<Lane<AcceptedEvent>>,
}

#[pymethods]
impl Leaving {
    /// True while a job of the consumer is still in flight.
    fn busy(&self) -> bool {
        self.engine.lane_busy(&self.lane)
    }

    /// The consumer's per-call timeout, in seconds.
    #[getter]
    fn timeout(&self) -> f64 {
        self.lane.config.timeout.as_secs_f64()
    }

    /// Gives up on the job in flight (its call is counted as failed).
    fn abandon(&self, reason: &str) {
        self.engine.abandon_lane(&self.lane, reason);
    }
}

/// Our `Event` itself, or a new one converted from an object with its attributes.
fn as_event(event: &Bound<'_, PyAny>) -> PyResult<Py<Event>> {
    match event.cast::<Event>() {
        Ok(e) => Ok(e.clone().unbind()),
        Err(_) if event.is_none() => Err(event_error("publish() expected an Event, got None")),
        Err(_) => Py::new(event.py(), Event::from_foreign(event)?),
    }
}

/// What consecutive events of one publish call can share.
#[derive(Default)]
struct PrepMemo {
    route: Option<Arc<Route<AcceptedEvent>>>,
    view: ViewMemo,
    /// The batch's first pass checked the schemas: these (index, violations)
    /// go to the dead letters (a "dead_letter" schema).
    checked: Option<Vec<(usize, crate::schema::Invalid)>>,
    /// The event just prepared failed a "dead_letter" schema.
    invalid: Option<crate::schema::Invalid>,
    /// Set by the caller: the event is dispatched at once on the route it is
    /// prepared with, so its rules may be matched now ([`admitted_now`]).
    match_now: bool,
    /// The event just prepared was matched now: one flag per lane of its route.
    admitted: Option<Arc<[bool]>>,
}

struct Subscribed {
    consumer: Py<PyAny>,
    lane: Arc<Lane<AcceptedEvent>>,
    topics: Vec<String>,
    /// Shared-log bus: the consumer's claim timeout and start.
    reader: (Duration, crate::backend::StartAt),
}

struct BusShared {
    engine: Engine<AcceptedEvent>,
    log: Arc<DeliveryLog>,
    /// A weak reference to the Python bus object (set by `start()`), so that a
    /// publish can rebind the bus to a new loop when its own loop has closed.
    this: Mutex<Option<Py<PyAny>>>,
    dead_letter_sinks: Arc<DeadLetterSinks>,
    inbox: Arc<Inbox>,
    consumers: RwLock<Vec<(Arc<str>, Subscribed)>>,
    /// Futures of `join()` calls waiting for the bus to go idle (shared with the
    /// engine's idle callback, which wakes the loop only while one waits).
    idle_waiters: Arc<Mutex<Vec<Py<PyAny>>>>,
    running: AtomicBool,
    last_event_us: AtomicI64,
    warned_not_running: AtomicBool,
    /// `serve_monitor`: the stream tap (idle until a client connects) and the server.
    monitor: monitor::BusMonitor,
}

#[doc = stub_doc!(EventBus)]
#[pyclass(
    module = "mpm_events._core",
    name = "EventBus",
    subclass,
    frozen,
    weakref
)]
pub struct EventBus {
    shared: Arc<BusShared>,
    max_queue_size: AtomicI64,
    #[pyo3(get)]
    process_interval: f64,
    #[pyo3(get)]
    batch_timeout: f64,
    #[pyo3(get)]
    enable_metrics: bool,
    #[pyo3(get)]
    enable_persistence: bool,
    persist: Option<Arc<Persistence>>,
    /// `backend="sqlite:///..."`: the shared log this bus publishes to and reads from.
    shared_log: Option<Arc<SharedLogBus>>,
    /// `register_schema`: payload schemas checked at publish.
    schemas: crate::schema::Schemas,
    /// Recent answers of the routes' rules (see [`AdmitMemo`]).
    admit_memo: AdmitMemo,
}

impl EventBus {
    /// Rebinds the bus to the running loop if the loop that started it has closed
    /// (see `_bus.loop`); with no running loop to take over, raises if a coroutine
    /// consumer is subscribed. Costs one atomic load while the loop is alive.
    pub(crate) fn ensure_loop(&self, py: Python<'_>) -> PyResult<()> {
        if !self.shared.inbox.loop_gone() {
            return Ok(());
        }
        let this = self.shared.this.lock().as_ref().map(|w| w.clone_ref(py));
        let bus = match this {
            Some(w) => w.bind(py).call0()?,
            None => return Ok(()),
        };
        if bus.is_none() {
            return Ok(());
        }
        if py_api::rebind(py, (bus,))?.is_truthy()? {
            return Ok(());
        }
        // NOTE: no loop runs here. Worker-thread consumers and Rust sinks need none
        // (a synchronous hook handler publishing with publish_nowait); a coroutine
        // consumer would never run, so then the event is refused, saying why.
        let needs_loop = self
            .shared
            .engine
            .lanes()
            .iter()
            .any(|l| l.config.needs_view == ViewNeeds::Nothing && !l.config.engine_timeout);
        if needs_loop {
            return Err(PyRuntimeError::new_err(
                "the event loop this EventBus was started on has closed and no event loop is \
                 running here; await bus.start() inside the new event loop before publishing \
                 (what was queued is delivered then)",
            ));
        }
        Ok(())
    }

    /// Logs the first refusal of a publish because the bus is not running (once
    /// per start: refusals are not logged one by one).
    fn warn_not_running(&self, py: Python<'_>) {
        if !self.shared.warned_not_running.swap(true, Ordering::Relaxed) {
            log_warning(
                py,
                "Cannot publish event - bus not running (further refusals are not logged)",
            );
        }
    }

    /// True when every accepted event is handled and no durable write is in flight.
    fn idle(&self) -> bool {
        self.shared.engine.is_idle()
            && self.persist.as_ref().is_none_or(|p| p.is_quiet())
            && self.shared_log.as_ref().is_none_or(|l| l.appending() == 0)
    }

    fn persist(&self) -> PyResult<&Arc<Persistence>> {
        self.persist.as_ref().ok_or_else(|| {
            PyRuntimeError::new_err(
                "persistence is not enabled (EventBus(enable_persistence=True))",
            )
        })
    }

    /// `publish` with persistence: store, then dispatch; `fut` (sync durability) is
    /// completed by the writer. Returns false if refused before writing.
    fn accept_durable(
        &self,
        p: &Arc<Persistence>,
        event: &Bound<'_, PyAny>,
        done: crate::durable::Answer,
    ) -> PyResult<Result<(), String>> {
        self.accept_durable_checked(p, event, done, None)
    }

    /// [`EventBus::accept_durable`]; `checked`: the batch's first pass checked the
    /// schemas already, with this outcome (`Some(None)`: valid).
    fn accept_durable_checked(
        &self,
        p: &Arc<Persistence>,
        event: &Bound<'_, PyAny>,
        done: crate::durable::Answer,
        checked: Option<Option<crate::schema::Invalid>>,
    ) -> PyResult<Result<(), String>> {
        let py = event.py();
        let owned = as_event(event)?;
        let mut memo = PrepMemo {
            checked: checked.is_some().then(Vec::new),
            ..PrepMemo::default()
        };
        let (eref, route) = self.prepare_event(py, owned, crate::clock::now(), &mut memo)?;
        let invalid = match checked {
            Some(c) => c,
            None => memo.invalid.take(),
        };
        if let Some(inv) = invalid {
            return self.dead_letter_durable(py, p, eref, &inv, done);
        }
        self.submit_durable(py, p, eref, route, done)
    }

    /// An event that failed a "dead_letter" schema on a durable bus: its dead letter
    /// is stored (it survives restarts, `get_stored_dead_letters()`), then kept in
    /// memory as on the memory bus; the event itself is not stored, so it is never
    /// delivered nor redelivered. `done` is answered once the store has it.
    fn dead_letter_durable(
        &self,
        py: Python<'_>,
        p: &Arc<Persistence>,
        eref: AcceptedEvent,
        inv: &crate::schema::Invalid,
        done: crate::durable::Answer,
    ) -> PyResult<Result<(), String>> {
        if !self.shared.engine.is_accepting() || p.is_closing() {
            self.warn_not_running(py);
            return Ok(Err(String::new()));
        }
        p.put_invalid(
            py,
            &self.shared.engine,
            eref,
            schemas::letter_errors(inv),
            done,
        )?;
        Ok(Ok(()))
    }

    /// Hands an accepted event to the store (which dispatches it once stored), unless
    /// the bus stopped accepting.
    fn submit_durable(
        &self,
        py: Python<'_>,
        p: &Arc<Persistence>,
        eref: AcceptedEvent,
        route: Arc<Route<AcceptedEvent>>,
        done: crate::durable::Answer,
    ) -> PyResult<Result<(), String>> {
        if !self.shared.engine.is_accepting() || p.is_closing() {
            self.warn_not_running(py);
            return Ok(Err(String::new()));
        }
        self.shared
            .last_event_us
            .store(crate::clock::now_unix_micros(), Ordering::Relaxed);
        p.submit(py, &self.shared.engine, eref, route, done)
    }

    /// `publish_batch` with persistence: one durable publish per event, resolving to
    /// how many were accepted.
    fn publish_batch_durable(
        &self,
        p: &Arc<Persistence>,
        py: Python<'_>,
        events: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        // NOTE: as on the memory bus, every event is checked before any is stored;
        // those a "dead_letter" schema refuses are dead-lettered (and counted).
        let mut memo = PrepMemo::default();
        let owned_events = self.validate_batch(py, events, &mut memo)?;
        let mut dead: std::collections::VecDeque<(usize, crate::schema::Invalid)> =
            memo.checked.take().unwrap_or_default().into();
        let event_loop = self.shared.inbox.current_loop(py);
        let mut aws = Vec::with_capacity(owned_events.len());
        for (i, owned) in owned_events.into_iter().enumerate() {
            let e = owned.into_bound(py).into_any();
            let lp = event_loop.as_ref().map(|l| l.clone_ref(py));
            let invalid = match dead.front() {
                Some((j, _)) if *j == i => dead.pop_front().map(|(_, inv)| inv),
                _ => None,
            };
            aws.push(persist::publish(p, py, lp, |done| {
                self.accept_durable_checked(p, &e, done, Some(invalid))
            })?);
        }
        py_api::count_true(py, (aws,)).map(Bound::unbind)
    }

    /// `publish_batch`'s first pass: every event converted and checked (topic, payload)
    /// before any is accepted; a bad one raises naming its index.
    fn validate_batch(
        &self,
        py: Python<'_>,
        events: &Bound<'_, PyAny>,
        memo: &mut PrepMemo,
    ) -> PyResult<Vec<Py<Event>>> {
        // NOTE: sized up front: growing a million-entry Vec by doubling showed up as
        // reallocation copies and fresh pages in the W6 profile.
        let mut owned_events: Vec<Py<Event>> = Vec::with_capacity(events.len().unwrap_or(0));
        let mut invalid = Vec::new();
        for (i, e) in events
            .try_iter()
            .map_err(|_| event_error("publish_batch() expects an iterable of events"))?
            .enumerate()
        {
            let e = e?;
            let context = |err: PyErr| {
                let cls = err.get_type(py);
                PyErr::from_type(
                    cls,
                    format!("publish_batch(): event #{i}: {}", err.value(py)),
                )
            };
            let owned: Py<Event> = match e.cast::<Event>() {
                Ok(ev) => ev.clone().unbind(),
                Err(_) => Py::new(py, Event::from_foreign(&e).map_err(context)?)?,
            };
            self.check_event(py, &owned, memo).map_err(context)?;
            if !self.schemas.is_empty() {
                let e = owned.borrow(py);
                let topic = e.topic.bind(py).to_cow()?;
                let list = self.schemas.for_topic(&topic);
                if !list.is_empty() {
                    let value = crate::python::model::event_payload_json(py, &e).map_err(|err| {
                        event_error(format!(
                            "publish_batch(): event #{i}: the payload cannot be validated as JSON: {err}"
                        ))
                    })?;
                    if let Some(inv) = self.schemas.check(&topic, &list, &value) {
                        invalid.push((i, inv));
                    }
                }
            }
            owned_events.push(owned);
        }
        // NOTE: every event is checked, so the error names all that fail.
        if invalid
            .iter()
            .any(|(_, inv)| inv.on_invalid == crate::schema::OnInvalid::Raise)
        {
            let failed: Vec<usize> = invalid.iter().map(|(i, _)| *i).collect();
            let (first, inv) = &invalid[0];
            let err = crate::python::runtime::errors::schema_error(
                py,
                &format!("publish_batch(): event #{first} (of failing events {failed:?})"),
                &inv.violations,
            );
            let _ = err.value(py).setattr("failed", failed);
            return Err(err);
        }
        memo.checked = Some(invalid);
        Ok(owned_events)
    }

    /// Validates an event, routes it and copies what Rust consumers on the
    /// route need.
    /// Checks that an event can be published (valid topic, dict payload)
    /// without accepting it.
    fn check_event(&self, py: Python<'_>, owned: &Py<Event>, memo: &mut PrepMemo) -> PyResult<()> {
        let e = owned.borrow(py);
        let topic = e.topic.bind(py).to_cow()?;
        if memo.route.as_ref().is_none_or(|r| *r.topic != *topic) {
            memo.route = Some(
                self.shared
                    .engine
                    .route_topic(&topic)
                    .map_err(crate::python::runtime::errors::topic_error)?,
            );
        }
        if !e.data.is_dict(py) {
            return Err(event_error(format!(
                "Event.data must be a dict, got {}",
                "a non-dict"
            )));
        }
        Ok(())
    }

    /// The rules' part of preparing an event (issue 15): for one dispatched at
    /// once (`match_now`) on a [`matchable_now`] route, the lanes that take it,
    /// remembered from a recent event that read the same ([`AdmitMemo`]) or
    /// matched now, and no view is needed; otherwise the payload (`payload`, the
    /// publisher's object) cut down to what the rules read, for the view.
    fn rules_now(
        &self,
        py: Python<'_>,
        route: &Arc<Route<AcceptedEvent>>,
        priority: u8,
        payload: Option<&Bound<'_, PyAny>>,
        match_now: bool,
    ) -> (Option<Arc<[bool]>>, Option<Projected>) {
        // NOTE: no rule on the route (W1): nothing to cut or match, and no cost.
        if route.rules.is_none() {
            return (None, None);
        }
        let project = || match data_copy(route) {
            DataCopy::ForRules(p) => {
                payload.map(|o| crate::python::convert::project::project_py(p, o, 0))
            }
            _ => None,
        };
        if !match_now || !matchable_now(route) {
            return (None, project());
        }
        let key = match self.admit_memo.lookup(py, route, priority, payload) {
            Lookup::Hit(flags) => return (Some(flags), None),
            Lookup::Miss(key) => Some(key),
            Lookup::Unkeyable => None,
        };
        let projected = project();
        match admitted_now(route, priority, projected.as_ref()) {
            Some(flags) => {
                let flags: Arc<[bool]> = flags.into();
                if let Some(key) = key {
                    self.admit_memo.remember(py, key, flags.clone());
                }
                (Some(flags), None)
            }
            None => (None, projected),
        }
    }

    fn prepare_event(
        &self,
        py: Python<'_>,
        owned: Py<Event>,
        now: DateTime<Utc>,
        memo: &mut PrepMemo,
    ) -> PyResult<(AcceptedEvent, Arc<Route<AcceptedEvent>>)> {
        let engine = &self.shared.engine;
        let (mut eref, route) = AcceptedEvent::accept(py, owned, now, |topic| {
            // NOTE: a batch is usually on few topics; skip the cache lock when the
            // topic is the previous event's.
            if let Some(r) = memo.route.as_ref().filter(|r| *r.topic == *topic) {
                return Ok((r.topic.clone(), r.clone()));
            }
            let r = engine.route_topic(topic)?;
            memo.route = Some(r.clone());
            Ok((r.topic.clone(), r))
        })?;
        let copy = data_copy(&route);
        // NOTE: rules read the keys they name straight from the publisher's dict,
        // before it is packed (parsing the packed text back cost more than W1r's
        // budget, issue 15).
        let payload = match route.rules.is_some() {
            true => payload_object(py, &eref)?,
            false => None,
        };
        let (admitted, projected) = self.rules_now(
            py,
            &route,
            eref.priority,
            payload.as_ref().map(|o| o.bind(py)),
            memo.match_now,
        );
        memo.admitted = admitted;
        // NOTE: only events some Python consumer will receive are packed (see
        // `pack_payload`); Rust consumers get their own copy below.
        if route.any_plain {
            crate::python::model::pack_payload(py, eref.event(py)?);
        }
        if route.needs_view != ViewNeeds::Nothing && memo.admitted.is_none() {
            eref.view = Some(Arc::new(match projected {
                Some(cut) => build_view_projected(py, &eref, cut, &mut memo.view)?,
                None => build_view_with(py, &eref, copy, &mut memo.view)?,
            }));
        }
        if memo.checked.is_none() {
            memo.invalid = schemas::check_accepted_with(py, &self.schemas, &eref, copy.is_whole())?;
        }
        // NOTE: issue 14's monitor: one relaxed load while nobody watches. An event
        // its schema refuses is not shown (it is raised or dead-lettered instead).
        if memo.invalid.is_none() && self.shared.monitor.watching() {
            self.shared.monitor.tap_event(py, &mut eref);
        }
        Ok((eref, route))
    }

    /// Whether a publish is answered at once: in memory, or durable with "async"
    /// durability (a "sync" publish is answered after the commit).
    pub(crate) fn answers_at_once(&self) -> bool {
        self.persist.as_ref().is_none_or(|p| !p.sync) && self.shared_log.is_none()
    }

    /// Publishes `event` and says whether it was accepted, for callers that need the
    /// answer now (the compiled producer). Only for buses that [`answers_at_once`]
    /// (Self::answers_at_once): a "sync" durable bus would block here until the commit.
    pub(crate) fn publish_now(&self, event: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.ensure_loop(event.py())?;
        if let Some(l) = &self.shared_log {
            return shared_log::publish_blocking(self, l, event);
        }
        match &self.persist {
            None => Ok(self.accept(event)?.is_ok()),
            Some(p) => {
                persist::publish_blocking(p, event.py(), |done| self.accept_durable(p, event, done))
            }
        }
    }

    pub(crate) fn accept(&self, event: &Bound<'_, PyAny>) -> PyResult<Result<(), Rejected>> {
        let py = event.py();
        let owned = as_event(event)?;
        let mut memo = PrepMemo {
            match_now: true,
            ..PrepMemo::default()
        };
        let eref = self.prepare_event(py, owned, crate::clock::now(), &mut memo)?;
        if let Some(inv) = memo.invalid {
            return Ok(self.dead_letter_invalid(py, eref.0, &inv));
        }
        Ok(self.dispatch(py, eref.0, &eref.1, memo.admitted.as_deref()))
    }

    /// [`EventBus::accept`] for an event given as fields by the compiled producer:
    /// the `Event` object is made only when a Python consumer needs it.
    pub(crate) fn accept_parts(
        &self,
        py: Python<'_>,
        topic: &str,
        priority: u8,
        data: DraftData<'_>,
        make: impl FnOnce(PartsData, i64) -> EventParts,
    ) -> PyResult<bool> {
        self.ensure_loop(py)?;
        // NOTE: the same checks, in the same order and with the same errors, as
        // `AcceptedEvent::accept` on an `Event` with these fields.
        let route = self
            .shared
            .engine
            .route_topic(topic)
            .map_err(crate::python::runtime::errors::topic_error)?;
        // NOTE: fields become a dict only when something reads the dict: a rule, or
        // a payload kept as an object (no Python consumer and not stored). Packing
        // them straight saved making, filling and freeing one dict per event (W1,
        // issue 16).
        let pack = route.any_plain || self.persist.is_some();
        let data = match data {
            DraftData::ToolUse(_) if route.rules.is_some() || !pack => {
                DraftData::Dict(data.into_dict(py)?)
            }
            other => other,
        };
        if let DraftData::Dict(d) = &data {
            if !d.is_instance_of::<PyDict>() {
                return Err(event_error(format!(
                    "Event.data must be a dict, got {}",
                    crate::python::convert::text::type_name(d)
                )));
            }
        }
        let dict = match &data {
            DraftData::Dict(d) => Some(d),
            DraftData::ToolUse(_) => None,
        };
        let copy = data_copy(&route);
        // NOTE: see `prepare_event`: the rules' keys are read before packing. A
        // durable bus dispatches after its writer stores the event, maybe on a
        // newer route: it matches the view then.
        let (admitted, projected) =
            self.rules_now(py, &route, priority, dict, self.persist.is_none());
        // NOTE: as `pack_payload` would: only for events a Python consumer receives,
        // or that are stored (the store keeps the JSON text as is).
        let data = match pack {
            true => match data.pack() {
                Some(json) => PartsData::Packed(json),
                None => PartsData::Object(data.into_dict(py)?.unbind()),
            },
            false => PartsData::Object(data.into_dict(py)?.unbind()),
        };
        // NOTE: one clock read for the event's timestamp and its `published_at`.
        let now_ns = crate::clock::now_unix_nanos();
        let mut eref = AcceptedEvent::from_parts(
            route.topic.clone(),
            priority,
            make(data, now_ns),
            crate::clock::from_unix_nanos(now_ns),
        );
        if route.needs_view != ViewNeeds::Nothing && admitted.is_none() {
            let memo = &mut ViewMemo::default();
            eref.view = Some(Arc::new(match projected {
                Some(cut) => build_view_projected(py, &eref, cut, memo)?,
                None => build_view_with(py, &eref, copy, memo)?,
            }));
        }
        if let Some(inv) = schemas::check_accepted_with(py, &self.schemas, &eref, copy.is_whole())?
        {
            return match &self.persist {
                None => Ok(self.dead_letter_invalid(py, eref, &inv).is_ok()),
                Some(p) => Ok(self
                    .dead_letter_durable(py, p, eref, &inv, p.done_log())?
                    .is_ok()),
            };
        }
        if self.shared.monitor.watching() {
            self.shared.monitor.tap_event(py, &mut eref);
        }
        match &self.persist {
            None => Ok(self.dispatch(py, eref, &route, admitted.as_deref()).is_ok()),
            // NOTE: only buses that answer at once get here (the producer's fast path):
            // "async" durability, whose failures are logged by the writer's callback.
            Some(p) => match self.submit_durable(py, p, eref, route, p.done_log())? {
                Ok(()) => Ok(true),
                Err(msg) => {
                    if !msg.is_empty() {
                        crate::python::runtime::log_error(py, &format!("publish failed: {msg}"));
                    }
                    Ok(false)
                }
            },
        }
    }

    /// Accepts an event whose payload failed a "dead_letter" schema into the dead
    /// letters (never delivered).
    fn dead_letter_invalid(
        &self,
        py: Python<'_>,
        eref: AcceptedEvent,
        inv: &crate::schema::Invalid,
    ) -> Result<(), Rejected> {
        let result = self.shared.engine.dead_letter_now(
            Arc::new(eref),
            schemas::SCHEMA_CONSUMER.into(),
            schemas::letter_errors(inv),
        );
        if result == Err(Rejected::NotRunning) {
            self.warn_not_running(py);
        }
        result
    }

    /// `replay_dead_letters()` of the `"<schema>"` dead letters (memory and durable
    /// bus): each whose payload passes the schemas registered now is published again
    /// (same event; on a durable bus stored first), its dead letter removed; one that
    /// still fails stays as it is, not counted, and a warning names it. Returns how
    /// many were published.
    fn replay_schema_letters(
        &self,
        py: Python<'_>,
        event_ids: Option<&[String]>,
    ) -> PyResult<usize> {
        let mut still_invalid = Vec::new();
        let taken = self.shared.engine.take_dead_letters(|l| {
            if *l.consumer != *schemas::SCHEMA_CONSUMER
                || !event_ids.is_none_or(|ids| ids.iter().any(|i| *i == l.event.id(py)))
            {
                return false;
            }
            let payload =
                crate::python::model::payload_json(py, &l.event).unwrap_or(serde_json::Value::Null);
            match self.schemas.recheck(&l.event.topic, &payload) {
                None => true,
                Some(inv) => {
                    still_invalid.push(format!(
                        "{} ({})",
                        l.event.id(py),
                        inv.violations
                            .first()
                            .map(|v| v.to_string())
                            .unwrap_or_default()
                    ));
                    false
                }
            }
        });
        shared_log::warn_still_invalid(py, &still_invalid);
        let mut n = 0;
        for l in taken {
            let event = l.event.event(py)?.clone_ref(py).into_bound(py).into_any();
            let ok = match &self.persist {
                None => self.accept(&event)?.is_ok(),
                Some(p) => {
                    persist::publish_blocking(p, py, |done| self.accept_durable(p, &event, done))?
                }
            };
            if ok {
                n += 1;
            } else {
                log_warning(
                    py,
                    &format!(
                        "dead letter {} of the schema check could not be published again",
                        l.event.id(py)
                    ),
                );
            }
        }
        Ok(n)
    }

    /// Hands an accepted event to the engine.
    fn dispatch(
        &self,
        py: Python<'_>,
        eref: AcceptedEvent,
        route: &Route<AcceptedEvent>,
        admitted: Option<&[bool]>,
    ) -> Result<(), Rejected> {
        let engine = &self.shared.engine;
        let result = self.shared.inbox.deferring(py, || match admitted {
            Some(flags) => engine.publish_route_admitted(Arc::new(eref), route, flags),
            None => engine.publish_route(Arc::new(eref), route),
        });
        match result {
            Ok(()) => {
                self.shared
                    .last_event_us
                    .store(crate::clock::now_unix_micros(), Ordering::Relaxed);
            }
            Err(Rejected::NotRunning) => self.warn_not_running(py),
            Err(Rejected::QueueFull) => {}
        }
        result
    }
}

#[pymethods]
impl EventBus {
    #[new]
    #[pyo3(signature = (max_queue_size=10000, process_interval=0.01, batch_timeout=0.1, enable_metrics=true, enable_persistence=false, *, dead_letter_capacity=10000, persistence_path=None, durability="sync", flush_interval=0.05, retention_max_age=None, retention_max_bytes=None, compress_threshold=4096, retention_interval=60.0, persistence_hard_limit_bytes=None, backend=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        max_queue_size: i64,
        process_interval: f64,
        batch_timeout: f64,
        enable_metrics: bool,
        enable_persistence: bool,
        dead_letter_capacity: i64,
        persistence_path: Option<std::path::PathBuf>,
        durability: &str,
        flush_interval: f64,
        retention_max_age: Option<&Bound<'_, PyAny>>,
        retention_max_bytes: Option<u64>,
        compress_threshold: usize,
        retention_interval: Option<f64>,
        persistence_hard_limit_bytes: Option<u64>,
        backend: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        crate::python::runtime::ensure_logger(py);
        let backend = shared_log::parse_backend(backend)?;
        if backend.is_some() && enable_persistence {
            return Err(PyValueError::new_err(
                "backend= and enable_persistence=True cannot be combined: a shared log \
                 (backend=\"sqlite:///...\") is already durable; use one or the other",
            ));
        }
        if max_queue_size < 1 {
            return Err(PyValueError::new_err(format!(
                "max_queue_size must be >= 1, got {max_queue_size}"
            )));
        }
        if dead_letter_capacity < 1 {
            return Err(PyValueError::new_err("dead_letter_capacity must be >= 1"));
        }
        let engine = Engine::new(
            runtime().handle().clone(),
            max_queue_size as usize,
            dead_letter_capacity as usize,
        );
        let inbox = Arc::new(Inbox::new().map_err(|e| {
            PyRuntimeError::new_err(format!("cannot create the wake-up socket: {e}"))
        })?);
        let idle_inbox = Arc::downgrade(&inbox);
        let idle_waiters: Arc<Mutex<Vec<Py<PyAny>>>> = Arc::default();
        let waiting = Arc::downgrade(&idle_waiters);
        engine.set_on_idle(move || {
            // NOTE: only `join()` waiters care that the bus went idle; waking the loop
            // for nobody cost a loop wake-up (a context switch when the last lane to
            // finish was a Rust sink's) per event at paced rates (W13, issue 16). A
            // waiter added after this check wakes the loop itself (`_add_idle_waiter`).
            if waiting.upgrade().is_some_and(|w| !w.lock().is_empty()) {
                if let Some(inbox) = idle_inbox.upgrade() {
                    inbox.wake();
                }
            }
        });
        // NOTE: Rust consumers that want every dead letter (DeadLetterConsumer) get
        // them on the loop, where the payload can be converted; this runs before
        // the event counts as handled, so join() waits for it.
        let dead_letter_sinks: Arc<DeadLetterSinks> = Arc::default();
        let (dl_sinks, dl_inbox) = (dead_letter_sinks.clone(), Arc::downgrade(&inbox));
        engine.add_dead_letter_listener(move |letter| {
            if dl_sinks.is_empty() {
                return;
            }
            let Some(inbox) = dl_inbox.upgrade() else {
                return;
            };
            let (sinks, letter) = (dl_sinks.clone(), letter.clone());
            inbox.call_soon(Box::new(move |py| {
                let view = match build_view(py, &letter.event, true) {
                    Ok(v) => Arc::new(v),
                    Err(e) => return e.print(py),
                };
                let item = crate::sinks::SinkItem {
                    view,
                    attempt: letter.attempts,
                };
                sinks.fan_out(&item, &letter.consumer, &letter.errors, letter.attempts);
            }));
        });
        let log = DeliveryLog::install(&engine, &inbox);
        // NOTE: a durable bus leaves what it gives up on at stop unacked in the
        // store (redelivered at the next start) instead of dead-lettering it.
        engine.set_release_on_stop(enable_persistence || backend.is_some());
        let persist = if enable_persistence {
            let p = Persistence::open(
                persist::options(
                    persistence_path,
                    durability,
                    flush_interval,
                    retention_max_age,
                    retention_max_bytes,
                    compress_threshold,
                    retention_interval,
                    persistence_hard_limit_bytes,
                )?,
                inbox.clone(),
            )?;
            persist::listen_dead_letters(&p, &engine, &inbox);
            Some(p)
        } else {
            None
        };
        let shared_log = match backend {
            None => None,
            Some((url, opts)) => {
                let l = shared_log::open(
                    py,
                    url,
                    opts,
                    &inbox,
                    (
                        durability,
                        flush_interval,
                        retention_max_age,
                        retention_max_bytes,
                    ),
                    (
                        compress_threshold,
                        retention_interval,
                        persistence_hard_limit_bytes,
                    ),
                )?;
                SharedLogBus::listen_dead_letters(&engine);
                Some(l)
            }
        };
        Ok(EventBus {
            shared: Arc::new(BusShared {
                engine,
                log,
                this: Mutex::new(None),
                dead_letter_sinks,
                inbox,
                consumers: RwLock::new(Vec::new()),
                idle_waiters,
                running: AtomicBool::new(false),
                last_event_us: AtomicI64::new(0),
                warned_not_running: AtomicBool::new(false),
                monitor: monitor::BusMonitor::default(),
            }),
            max_queue_size: AtomicI64::new(max_queue_size),
            process_interval,
            batch_timeout,
            enable_metrics,
            enable_persistence,
            persist,
            shared_log,
            schemas: Default::default(),
            admit_memo: AdmitMemo::default(),
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

    #[doc = stub_doc!(EventBus, max_queue_size)]
    #[getter]
    fn max_queue_size(&self) -> i64 {
        self.max_queue_size.load(Ordering::Relaxed)
    }
    #[setter]
    fn set_max_queue_size(&self, v: i64) -> PyResult<()> {
        if v < 1 {
            return Err(PyValueError::new_err("max_queue_size must be >= 1"));
        }
        self.max_queue_size.store(v, Ordering::Relaxed);
        self.shared.engine.set_max_queue(v as usize);
        Ok(())
    }
    #[doc = stub_doc!(EventBus, is_running)]
    #[getter]
    fn is_running(&self) -> bool {
        self.shared.running.load(Ordering::Acquire)
    }

    #[doc = stub_doc!(EventBus, start)]
    fn start(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let this = slf.get();
        let asyncio = py.import("asyncio")?;
        let event_loop = asyncio.call_method0("get_running_loop").map_err(|_| {
            PyRuntimeError::new_err("EventBus.start() must be awaited inside a running event loop")
        })?;
        if this.shared.running.load(Ordering::Acquire) {
            // NOTE: a bus used again under a new loop (a second asyncio.run()) is
            // rebound to it if its own loop has closed; what waited is delivered.
            if py_api::rebind_if_gone(py, (slf, &event_loop))?.is_truthy()? {
                return Ok(Ready::of_bool(py, true));
            }
            log_warning(py, "Event bus already running");
            return Ok(Ready::of_bool(py, true));
        }
        *this.shared.this.lock() =
            Some(py.import("weakref")?.call_method1("ref", (slf,))?.unbind());
        py_api::attach(py, (slf, this.shared.inbox.fd(), &event_loop))?;
        *this.shared.inbox.event_loop.lock() = Some(event_loop.unbind());
        this.shared
            .warned_not_running
            .store(false, Ordering::Relaxed);
        let watermark = match &this.persist {
            Some(p) => p.watermark()?,
            None => 0,
        };
        this.shared.engine.start();
        this.shared.running.store(true, Ordering::Release);
        if let Some(l) = &this.shared_log {
            shared_log::start(this, py, l)?;
        }
        if let Some(p) = &this.persist {
            // NOTE: consumers subscribed before start get what they have not acked.
            p.set_closing(false);
            let names: Vec<String> = this
                .shared
                .consumers
                .read()
                .iter()
                .map(|(n, _)| n.to_string())
                .collect();
            if !names.is_empty() {
                p.redelivering.fetch_add(1, Ordering::AcqRel);
                py_api::start_redelivery(py, (slf, names, watermark))?;
            }
        }
        // NOTE: anything dispatched while no loop was attached is run now.
        this.shared.inbox.force_wake();
        log_info(py, "Event bus started");
        Ok(Ready::of_bool(py, true))
    }

    #[doc = stub_doc!(EventBus, stop)]
    #[pyo3(signature = (timeout=None))]
    fn stop<'py>(slf: &Bound<'py, Self>, timeout: Option<f64>) -> PyResult<Bound<'py, PyAny>> {
        py_api::stop(slf.py(), (slf, timeout))
    }

    #[doc = stub_doc!(EventBus, publish)]
    fn publish(&self, py: Python<'_>, event: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        self.ensure_loop(py)?;
        if let Some(l) = &self.shared_log {
            return shared_log::publish(self, py, l, event);
        }
        if let Some(p) = &self.persist {
            let event_loop = self.shared.inbox.current_loop(py);
            return persist::publish(p, py, event_loop, |done| {
                self.accept_durable(p, event, done)
            });
        }
        Ok(Ready::of_bool(py, self.accept(event)?.is_ok()).into_any())
    }

    #[doc = stub_doc!(EventBus, publish_nowait)]
    fn publish_nowait(&self, py: Python<'_>, event: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.ensure_loop(py)?;
        if let Some(l) = &self.shared_log {
            return shared_log::publish_blocking(self, l, event);
        }
        if let Some(p) = &self.persist {
            return persist::publish_blocking(p, py, |done| self.accept_durable(p, event, done));
        }
        Ok(self.accept(event)?.is_ok())
    }

    #[doc = stub_doc!(EventBus, publish_batch)]
    fn publish_batch(&self, py: Python<'_>, events: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        self.ensure_loop(py)?;
        if let Some(l) = &self.shared_log {
            return shared_log::publish_batch(self, py, l, events);
        }
        if let Some(p) = &self.persist {
            return self.publish_batch_durable(p, py, events);
        }
        let now = crate::clock::now();
        let mut memo = PrepMemo::default();
        // NOTE: every event is checked before any is accepted, so a bad event in
        // the middle raises without a partial publish.
        let owned_events = self.validate_batch(py, events, &mut memo)?;
        // NOTE: handed to the engine in slices, so consumers start on the first
        // slice while the rest is being prepared.
        let mut accepted = 0usize;
        let mut dead: std::collections::VecDeque<(usize, crate::schema::Invalid)> =
            memo.checked.take().unwrap_or_default().into();
        // NOTE: Some(empty): the first pass checked the schemas already.
        memo.checked = Some(Vec::new());
        let mut rest = owned_events.into_iter().enumerate().peekable();
        while rest.peek().is_some() {
            let mut slice = Vec::with_capacity(PUBLISH_SLICE);
            for (i, owned) in rest.by_ref().take(PUBLISH_SLICE) {
                let (eref, route) = self.prepare_event(py, owned, now, &mut memo)?;
                if dead.front().is_some_and(|(j, _)| *j == i) {
                    let (_, inv) = dead.pop_front().expect("front");
                    if self.dead_letter_invalid(py, eref, &inv).is_ok() {
                        accepted += 1;
                    }
                    continue;
                }
                slice.push((Arc::new(eref), route));
            }
            let (n, refused) = self
                .shared
                .inbox
                .deferring(py, || self.shared.engine.publish_many(slice));
            accepted += n;
            if refused == Some(Rejected::NotRunning) {
                self.warn_not_running(py);
                break;
            }
        }
        let accepted = accepted as i64;
        if accepted > 0 {
            self.shared
                .last_event_us
                .store(crate::clock::now_unix_micros(), Ordering::Relaxed);
        }
        Ready::of(py, accepted.into_pyobject(py)?.into_any().unbind()).map(Py::into_any)
    }

    #[doc = stub_doc!(EventBus, subscribe)]
    fn subscribe<'py>(
        slf: &Bound<'py, Self>,
        consumer: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        py_api::subscribe(slf.py(), (slf, consumer))
    }

    #[doc = stub_doc!(EventBus, unsubscribe)]
    fn unsubscribe<'py>(
        slf: &Bound<'py, Self>,
        consumer_name: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        py_api::unsubscribe(slf.py(), (slf, consumer_name))
    }

    #[doc = stub_doc!(EventBus, join)]
    #[pyo3(signature = (timeout=None))]
    fn join<'py>(slf: &Bound<'py, Self>, timeout: Option<f64>) -> PyResult<Bound<'py, PyAny>> {
        py_api::join(slf.py(), (slf, timeout))
    }

    #[doc = stub_doc!(EventBus, get_consumers)]
    fn get_consumers(&self, py: Python<'_>) -> Vec<Py<PyAny>> {
        self.shared
            .consumers
            .read()
            .iter()
            .map(|(_, s)| s.consumer.clone_ref(py))
            .collect()
    }

    #[doc = stub_doc!(EventBus, get_metrics)]
    fn get_metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.shared.engine.counters();
        let d = PyDict::new(py);
        let consumers = self.shared.consumers.read();
        d.set_item("events_published", c.published)?;
        d.set_item("events_processed", c.processed)?;
        d.set_item("events_dead_lettered", c.dead_lettered)?;
        d.set_item("events_pending_in_store", c.released)?;
        d.set_item("events_failed", c.failed)?;
        let invalid = PyDict::new(py);
        for (topic, n) in self.schemas.invalid_counts() {
            invalid.set_item(topic, n)?;
        }
        d.set_item("schema_invalid", invalid)?;
        d.set_item("events_dropped", c.dropped)?;
        d.set_item("consumers_active", consumers.len())?;
        d.set_item("queue_size", c.queued)?;
        let stats: Vec<_> = consumers
            .iter()
            .map(|(n, s)| {
                (
                    n.clone(),
                    s.lane.stats.snapshot(),
                    s.lane.in_flight(),
                    s.lane.pending(),
                )
            })
            .collect();
        let total: u64 = stats.iter().map(|s| s.1.processed).sum();
        let weighted: f64 = stats
            .iter()
            .map(|s| s.1.latency_p50_ms * s.1.processed as f64)
            .sum();
        d.set_item(
            "processing_time_ms",
            if total > 0 {
                weighted / total as f64
            } else {
                0.0
            },
        )?;
        let last = self.shared.last_event_us.load(Ordering::Relaxed);
        let last_dt: Option<DateTime<Utc>> = if last > 0 {
            DateTime::from_timestamp_micros(last)
        } else {
            None
        };
        d.set_item("last_event_time", last_dt)?;
        d.set_item("dead_letter_queue_size", c.dead_letters)?;
        d.set_item("dead_letters_evicted", c.dead_letters_evicted)?;
        d.set_item("events_in_flight", c.outstanding)?;
        d.set_item("subscriptions", self.shared.engine.subscription_count())?;
        let per = PyDict::new(py);
        for (name, s) in consumers.iter() {
            let m = s
                .consumer
                .bind(py)
                .call_method0("get_metrics")
                .unwrap_or_else(|e| {
                    let err = PyDict::new(py);
                    let _ = err.set_item("error", format!("get_metrics() raised {}", e.value(py)));
                    err.into_any()
                });
            per.set_item(name.as_ref(), m)?;
        }
        d.set_item("consumers", per)?;
        let cs = PyDict::new(py);
        for (name, snap, in_flight, pending) in stats {
            let e = PyDict::new(py);
            e.set_item("received", snap.received)?;
            e.set_item("processed", snap.processed)?;
            e.set_item("failed", snap.failed)?;
            e.set_item("retried", snap.retried)?;
            e.set_item("dead_lettered", snap.dead_lettered)?;
            e.set_item("filtered", snap.filtered)?;
            e.set_item("pending_in_store", snap.released)?;
            e.set_item("retrying", snap.retrying)?;
            e.set_item("in_flight", in_flight)?;
            e.set_item("pending", pending)?;
            e.set_item("latency_p50_ms", snap.latency_p50_ms)?;
            e.set_item("latency_p99_ms", snap.latency_p99_ms)?;
            cs.set_item(name.as_ref(), e)?;
        }
        d.set_item("consumer_stats", cs)?;
        drop(consumers);
        if let Some(l) = &self.shared_log {
            l.metrics(py, &d)?;
        }
        Ok(d)
    }

    #[doc = stub_doc!(EventBus, get_dead_letters)]
    fn get_dead_letters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        if let Some(l) = &self.shared_log {
            return l.dead_letters(py);
        }
        let list = PyList::empty(py);
        for l in self.shared.engine.dead_letters() {
            let d = PyDict::new(py);
            d.set_item("event", l.event.event(py)?.clone_ref(py))?;
            d.set_item("consumer", l.consumer.as_ref())?;
            d.set_item("errors", &l.errors)?;
            d.set_item("attempts", l.attempts)?;
            d.set_item("failed_at", DateTime::<Utc>::from(l.at))?;
            list.append(d)?;
        }
        Ok(list)
    }

    #[doc = stub_doc!(EventBus, replay_dead_letters)]
    #[pyo3(signature = (consumer=None, event_ids=None))]
    fn replay_dead_letters(
        &self,
        py: Python<'_>,
        consumer: Option<String>,
        event_ids: Option<Vec<String>>,
    ) -> PyResult<usize> {
        if let Some(l) = &self.shared_log {
            // NOTE: back in the log for their consumer names: any instance, in any
            // process, gets them (this bus need not run).
            return l.replay_dead_letters(py, &self.schemas, consumer, event_ids);
        }
        if !self.shared.running.load(Ordering::Acquire) {
            return Err(PyRuntimeError::new_err(
                "replay_dead_letters() needs a running bus",
            ));
        }
        let mut n = 0;
        if consumer
            .as_deref()
            .is_none_or(|c| c == schemas::SCHEMA_CONSUMER)
        {
            n += self.replay_schema_letters(py, event_ids.as_deref())?;
        }
        let lanes: HashMap<Arc<str>, Arc<Lane<AcceptedEvent>>> = self
            .shared
            .consumers
            .read()
            .iter()
            .map(|(n, s)| (n.clone(), s.lane.clone()))
            .collect();
        let taken = self.shared.engine.take_dead_letters(|l| {
            consumer.as_deref().is_none_or(|c| *l.consumer == *c)
                && event_ids
                    .as_ref()
                    .is_none_or(|ids| ids.iter().any(|i| *i == l.event.id(py)))
                && lanes.contains_key(&l.consumer)
        });
        for l in taken {
            if self
                .shared
                .engine
                .redeliver(l.event.clone(), &lanes[&l.consumer])
                .is_ok()
            {
                n += 1;
            } else {
                log_warning(
                    py,
                    &format!(
                        "dead letter {} for {} could not be re-queued (queue full)",
                        l.event.id(py),
                        l.consumer
                    ),
                );
            }
        }
        Ok(n)
    }

    #[doc = stub_doc!(EventBus, serve_monitor)]
    #[pyo3(signature = (host="127.0.0.1", port=0))]
    fn serve_monitor(slf: &Bound<'_, Self>, host: &str, port: u16) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let this = slf.get();
        if !this.shared.running.load(Ordering::Acquire) {
            return Err(PyRuntimeError::new_err(
                "serve_monitor() needs a running bus (await bus.start() first)",
            ));
        }
        let url = this.shared.monitor.serve(
            slf.as_any(),
            this.shared.inbox.clone(),
            &this.shared.engine,
            host,
            port,
        )?;
        log_info(py, &format!("monitor serving at {url}"));
        Ready::of(py, PyString::new(py, &url).into_any().unbind())
    }

    #[doc = stub_doc!(EventBus, stop_monitor)]
    fn stop_monitor(&self, py: Python<'_>) -> bool {
        py.detach(|| self.shared.monitor.stop(&self.shared.engine))
    }

    #[doc = stub_doc!(EventBus, monitor_url)]
    #[getter]
    fn monitor_url(&self) -> Option<String> {
        self.shared.monitor.url()
    }

    /// The consumers whose subscriptions match `topic` (the monitor's routing view).
    fn _route(&self, topic: &str) -> PyResult<Vec<String>> {
        let route = self
            .shared
            .engine
            .route_topic(topic)
            .map_err(crate::python::runtime::errors::topic_error)?;
        Ok(route
            .lanes
            .iter()
            .map(|l| l.config.name.to_string())
            .collect())
    }

    /// Removes dead letters (of `consumer`, with these event ids; all when neither)
    /// from the in-memory queue, or from the shared log; returns how many.
    #[pyo3(signature = (consumer=None, event_ids=None))]
    fn _purge_dead_letters(
        &self,
        py: Python<'_>,
        consumer: Option<String>,
        event_ids: Option<Vec<String>>,
    ) -> PyResult<usize> {
        if let Some(l) = &self.shared_log {
            return l.purge_dead_letters(py, consumer, event_ids);
        }
        Ok(self
            .shared
            .engine
            .take_dead_letters(|l| {
                consumer.as_deref().is_none_or(|c| *l.consumer == *c)
                    && event_ids
                        .as_ref()
                        .is_none_or(|ids| ids.iter().any(|i| *i == l.event.id(py)))
            })
            .len())
    }

    /// The shared log's consumer groups (any process's), for the monitor; None
    /// without a shared log.
    fn _log_groups<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyList>>> {
        self.shared_log.as_ref().map(|l| l.groups(py)).transpose()
    }

    /// Ends every monitor stream with `reason` (tests: a dropped connection).
    fn _monitor_drop_clients(&self, reason: &str) -> usize {
        self.shared.monitor.tap.drop_clients(reason)
    }

    /// Puts an event document (JSON text with `id` and `topic`) on the monitor
    /// stream: the standalone monitor's log tailer.
    fn _monitor_push(&self, json: &str) -> PyResult<bool> {
        let v: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| PyValueError::new_err(format!("_monitor_push(): not JSON: {e}")))?;
        let id: Arc<str> = v.get("id").and_then(|x| x.as_str()).unwrap_or("").into();
        let topic: Arc<str> = v.get("topic").and_then(|x| x.as_str()).unwrap_or("").into();
        if !self.shared.monitor.watching() {
            return Ok(false);
        }
        self.shared.monitor.tap.publish(id, topic, v);
        Ok(true)
    }

    /// Whether a monitor client is watching (the log tailer reads only then).
    fn _monitor_watching(&self) -> bool {
        self.shared.monitor.watching()
    }

    // ----- private helpers used by mpm_events._bus -----

    fn _prepare(&self, py: Python<'_>, consumer: &Bound<'_, PyAny>) -> PyResult<Option<Py<PyAny>>> {
        let config = consumer.getattr("config").map_err(|_| {
            let ty = consumer
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default();
            crate::python::runtime::errors::config_error(format!(
                "{ty} has no 'config' attribute; is it an IEventConsumer?"
            ))
        })?;
        let spec = ConsumerSpec::read(&config)?;
        for m in ["consume", "initialize", "shutdown"] {
            if !consumer.hasattr(m)? {
                return Err(crate::python::runtime::errors::config_error(format!(
                    "consumer {:?} has no {m}() method",
                    spec.name
                )));
            }
        }
        if self
            .shared
            .consumers
            .read()
            .iter()
            .any(|(n, _)| *n == spec.name)
        {
            log_warning(py, &format!("Consumer {} already subscribed", spec.name));
            return Ok(None);
        }
        Ok(Some(PyString::new(py, &spec.name).into_any().unbind()))
    }

    fn _register(&self, py: Python<'_>, consumer: &Bound<'_, PyAny>) -> PyResult<bool> {
        let spec = ConsumerSpec::read(&consumer.getattr("config")?)?;
        let mut consumers = self.shared.consumers.write();
        if consumers.iter().any(|(n, _)| *n == spec.name) {
            log_warning(py, &format!("Consumer {} already subscribed", spec.name));
            return Ok(false);
        }
        // Each kind of consumer gets its executor; the lane is the same.
        let (executor, engine_timeout, needs_view): (
            Arc<dyn Executor<AcceptedEvent>>,
            bool,
            ViewNeeds,
        ) = if let Ok(native) = consumer.cast::<SinkConsumer>() {
            let sink = native.get().sink.clone();
            if sink.wants_dead_letters() {
                self.shared.dead_letter_sinks.add(sink.clone());
            }
            let needs_view = if sink.needs_data() {
                ViewNeeds::FieldsAndData
            } else {
                ViewNeeds::Fields
            };
            (
                Arc::new(SinkExecutor {
                    sink,
                    timeout: spec.timeout,
                    runtime: runtime().handle().clone(),
                }),
                false,
                needs_view,
            )
        } else {
            let consume = consumer.getattr("consume")?;
            let batch_fn = if spec.batch_size > 1 {
                consumer.getattr("consume_batch").ok()
            } else {
                None
            };
            let is_coro = INSPECT_ISCOROFN.import(py, "inspect", "iscoroutinefunction")?;
            let target = batch_fn.as_ref().unwrap_or(&consume);
            let is_async = is_coro.call1((target,))?.is_truthy()?;
            let pc = Arc::new(PyConsumer {
                name: spec.name.clone(),
                consume: consume.unbind(),
                consume_batch: batch_fn.map(Bound::unbind),
                filter: spec.filter_func,
                transform: spec.transform_func,
                error_handler: spec.error_handler,
                timeout: spec.timeout.as_secs_f64(),
            });
            if is_async {
                (
                    Arc::new(LoopExecutor {
                        consumer: pc,
                        inbox: self.shared.inbox.clone(),
                    }),
                    false,
                    ViewNeeds::Nothing,
                )
            } else {
                // NOTE: a worker thread cannot interrupt a call; the engine
                // times it out instead.
                (
                    Arc::new(ThreadExecutor::new(py, pc, self.shared.inbox.clone())?),
                    true,
                    ViewNeeds::Nothing,
                )
            }
        };
        // NOTE: Python executors check `Job::is_cut` between events; a sink takes
        // its batch whole.
        let honours_cut = needs_view == ViewNeeds::Nothing;
        let config = LaneConfig {
            name: spec.name.clone(),
            priority: spec.priority,
            batch_size: spec.batch_size,
            batch_timeout: spec.batch_timeout,
            retry: spec.retry,
            timeout: spec.timeout,
            engine_timeout,
            // NOTE: an ordered consumer gets one event per job (with batch_size 1),
            // so nothing after a failed event is attempted before its retry.
            chunk: if spec.ordered { 1 } else { CHUNK },
            needs_view,
            honours_cut,
            ordered: spec.ordered,
            rule: spec.rule.clone(),
        };
        let lane = self
            .shared
            .engine
            .add_lane(config, spec.patterns, spec.regex, executor);
        consumers.push((
            spec.name.clone(),
            Subscribed {
                consumer: consumer.clone().unbind(),
                lane: lane.clone(),
                topics: spec.topic_names,
                reader: (spec.claim_timeout, spec.start),
            },
        ));
        drop(consumers);
        if let Some(l) = &self.shared_log {
            if self.shared.running.load(Ordering::Acquire) {
                if let Err(e) = l.start_reader(
                    py,
                    &self.shared.engine,
                    &spec.name,
                    &lane,
                    spec.claim_timeout,
                    spec.start,
                ) {
                    self.shared
                        .consumers
                        .write()
                        .retain(|(n, _)| *n != spec.name);
                    self.shared.engine.remove_lane(&lane);
                    return Err(e);
                }
            }
        }
        log_info(py, &format!("Subscribed consumer {}", spec.name));
        Ok(true)
    }

    fn _unregister(
        &self,
        py: Python<'_>,
        name: &str,
    ) -> PyResult<Option<(Py<PyAny>, Py<Leaving>)>> {
        let mut consumers = self.shared.consumers.write();
        let Some(pos) = consumers.iter().position(|(n, _)| **n == *name) else {
            return Ok(None);
        };
        let (_, s) = consumers.remove(pos);
        drop(consumers);
        if let Some(l) = &self.shared_log {
            // NOTE: before the lane goes, so no entry is taken for a topic mismatch.
            l.leaving(name);
        }
        if let Ok(native) = s.consumer.bind(py).cast::<SinkConsumer>() {
            let sink = native.get().sink.clone();
            self.shared.dead_letter_sinks.remove(&sink);
        }
        self.shared.engine.remove_lane(&s.lane);
        log_info(py, &format!("Unsubscribed consumer {name}"));
        let leaving = Py::new(
            py,
            Leaving {
                engine: self.shared.engine.clone(),
                lane: s.lane,
            },
        )?;
        Ok(Some((s.consumer, leaving)))
    }

    fn _topics(&self, name: &str) -> Option<Vec<String>> {
        self.shared
            .consumers
            .read()
            .iter()
            .find(|(n, _)| **n == *name)
            .map(|(_, s)| s.topics.clone())
    }

    fn _drain_wakeups(&self) {
        self.shared.inbox.drain_wakeups();
    }

    fn _run_pending(&self, py: Python<'_>) -> PyResult<bool> {
        let more = self.shared.inbox.run_pending(py, LOOP_BUDGET)?;
        if self.idle() {
            let waiters: Vec<_> = self.shared.idle_waiters.lock().drain(..).collect();
            for w in waiters {
                let w = w.bind(py);
                if !w.call_method0("done")?.is_truthy()? {
                    w.call_method1("set_result", (true,))?;
                }
            }
        }
        Ok(more)
    }

    fn _is_idle(&self) -> bool {
        self.idle()
    }

    // ----- persistence (see persist.rs and docs/persistence.md) -----

    #[doc = stub_doc!(EventBus, register_schema)]
    #[pyo3(signature = (topic_pattern, schema, *, on_invalid="raise"))]
    fn register_schema(
        &self,
        topic_pattern: &str,
        schema: &Bound<'_, PyAny>,
        on_invalid: &str,
    ) -> PyResult<()> {
        schemas::register(&self.schemas, topic_pattern, schema, on_invalid)
    }

    #[doc = stub_doc!(EventBus, replay)]
    #[pyo3(signature = (since=None, until=None, topics=None, to=None, *, rule=None))]
    fn replay<'py>(
        slf: &Bound<'py, Self>,
        since: Option<&Bound<'py, PyAny>>,
        until: Option<&Bound<'py, PyAny>>,
        topics: Option<&Bound<'py, PyAny>>,
        to: Option<&Bound<'py, PyAny>>,
        rule: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        // NOTE: compiled here so a bad rule raises at the call, not in the coroutine.
        if let Some(r) = rule.filter(|r| !r.is_none()) {
            crate::python::model::rule::compile_rule(r, "replay(): rule")?;
        }
        py_api::replay(slf.py(), (slf, since, until, topics, to, rule))
    }

    #[doc = stub_doc!(EventBus, persistence_stats)]
    fn persistence_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.persist()?.stats(py)
    }

    #[doc = stub_doc!(EventBus, apply_retention)]
    fn apply_retention<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.persist()?.apply_retention(py)
    }

    #[doc = stub_doc!(EventBus, get_stored_dead_letters)]
    fn get_stored_dead_letters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.persist()?.dead_letters(py)
    }

    #[doc = stub_doc!(EventBus, flush_persistence)]
    fn flush_persistence(&self, py: Python<'_>) -> PyResult<()> {
        self.persist()?.flush(py)
    }

    #[doc = stub_doc!(EventBus, persistence_path)]
    #[getter]
    fn persistence_path(&self) -> Option<String> {
        self.persist
            .as_ref()
            .map(|p| p.path.to_string_lossy().into_owned())
    }

    fn _persist_close_gate(&self, py: Python<'_>, fut: Py<PyAny>) -> PyResult<()> {
        let p = self.persist()?;
        p.set_closing(true);
        p.add_drain_waiter(py, fut);
        Ok(())
    }

    fn _persist_unacked(
        &self,
        py: Python<'_>,
        names: Vec<String>,
        upto: i64,
    ) -> PyResult<persist::StoredBatch> {
        self.persist()?.unacked(py, names, upto)
    }

    fn _persist_redelivery_done(&self) -> PyResult<()> {
        self.persist()?.redelivery_done();
        Ok(())
    }

    fn _persist_watermark(&self) -> PyResult<i64> {
        self.persist()?.watermark()
    }

    #[pyo3(signature = (since_us, until_us, topics, to, rule=None))]
    fn _persist_replay_read(
        &self,
        py: Python<'_>,
        since_us: Option<i64>,
        until_us: Option<i64>,
        topics: Option<Vec<String>>,
        to: String,
        rule: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<persist::StoredBatch> {
        let rule = match rule.filter(|r| !r.is_none()) {
            Some(r) => Some(crate::python::model::rule::compile_rule(
                r,
                "replay(): rule",
            )?),
            None => None,
        };
        let patterns = topics
            .clone()
            .unwrap_or_default()
            .iter()
            .map(|t| {
                crate::topic::Pattern::parse(t).map_err(crate::python::runtime::errors::topic_error)
            })
            .collect::<PyResult<Vec<_>>>()?;
        let batch = match &self.shared_log {
            Some(l) => l.replay_read(py, since_us, until_us, topics, to)?,
            None => self
                .persist()?
                .replay(py, since_us, until_us, patterns, to)?,
        };
        if let Some(rule) = &rule {
            py.detach(|| batch.retain_matching(rule));
        }
        Ok(batch)
    }

    fn _persist_push(
        &self,
        py: Python<'_>,
        batch: &Bound<'_, persist::StoredBatch>,
    ) -> PyResult<usize> {
        let lanes: HashMap<Arc<str>, Arc<Lane<AcceptedEvent>>> = self
            .shared
            .consumers
            .read()
            .iter()
            .map(|(n, s)| (n.clone(), s.lane.clone()))
            .collect();
        if self.shared_log.is_some() {
            return persist::push_rows(
                py,
                &self.shared.engine,
                batch.get(),
                |n| lanes.get(n).cloned(),
                None,
                &std::sync::atomic::AtomicU64::new(0),
            );
        }
        self.persist()?
            .push(py, &self.shared.engine, batch.get(), |n| {
                lanes.get(n).cloned()
            })
    }

    // ----- shared log (see shared_log.rs and docs/backends.md) -----

    #[doc = stub_doc!(EventBus, backend)]
    #[getter]
    fn backend(&self) -> Option<String> {
        self.shared_log.as_ref().map(|l| l.url.clone())
    }

    fn _log_begin_stop(&self) {
        if let Some(l) = &self.shared_log {
            l.set_closing(true);
            l.pause_readers();
        }
    }

    fn _log_last(&self, py: Python<'_>) -> PyResult<Option<(u64, u64)>> {
        let Some(l) = &self.shared_log else {
            return Ok(None);
        };
        py.detach(|| l.last_entry())
            .map(|o| o.map(|e| (e.major, e.minor)))
            .map_err(|e| shared_log::log_error_py(&e))
    }

    fn _log_caught_up(&self, py: Python<'_>, upto: Option<(u64, u64)>) -> PyResult<bool> {
        let Some(l) = &self.shared_log else {
            return Ok(true);
        };
        if !self.shared.engine.is_idle() {
            return Ok(false);
        }
        let upto = upto.map(|(a, b)| crate::backend::EntryId::new(a, b));
        py.detach(|| l.caught_up(upto))
            .map_err(|e| shared_log::log_error_py(&e))
    }

    fn _log_stop_reader(&self, py: Python<'_>, name: &str) -> PyResult<u64> {
        let Some(l) = &self.shared_log else {
            return Ok(0);
        };
        py.detach(|| l.stop_reader(name))
            .map_err(|e| shared_log::log_error_py(&e))
    }

    fn _log_close(&self, py: Python<'_>) -> PyResult<u64> {
        let Some(l) = &self.shared_log else {
            return Ok(0);
        };
        py.detach(|| l.close())
            .map_err(|e| shared_log::log_error_py(&e))
    }

    fn _add_idle_waiter(&self, fut: Py<PyAny>) {
        self.shared.idle_waiters.lock().push(fut);
        // NOTE: the bus may have gone idle before the waiter was added.
        self.shared.inbox.wake();
    }

    fn _set_pump(&self, pump: Option<Py<PyAny>>) {
        self.shared.inbox.set_pump(pump);
    }

    fn _loop_closing(&self, py: Python<'_>) -> PyResult<()> {
        self.shared.inbox.set_loop_gone(true);
        self.shared.inbox.set_pump(None);
        if let Some(l) = self.shared.inbox.event_loop.lock().take() {
            py_api::detach(py, (self.shared.inbox.fd(), l))?;
        }
        Ok(())
    }

    fn _bound_loop(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.shared.inbox.current_loop(py)
    }

    fn _loop_gone(&self) -> bool {
        self.shared.inbox.loop_gone()
    }

    fn _wake_fd(&self) -> i32 {
        self.shared.inbox.fd()
    }

    /// Binds the bus to `event_loop` (already watching the wake-up socket).
    fn _set_loop(&self, event_loop: Py<PyAny>) {
        *self.shared.inbox.event_loop.lock() = Some(event_loop);
        // NOTE: waiters of join() belong to the old loop, which cannot run them.
        self.shared.idle_waiters.lock().clear();
        self.shared.inbox.set_loop_gone(false);
        self.shared.inbox.force_wake();
    }

    fn _ensure_loop(&self, py: Python<'_>) -> PyResult<()> {
        self.ensure_loop(py)
    }

    /// `(events dead-lettered, events left pending in the store)` so far.
    fn _ended_counts(&self) -> (u64, u64) {
        let c = self.shared.engine.counters();
        (c.dead_lettered, c.released)
    }

    /// The longest consumer timeout among calls still running (0 if none), seconds.
    fn _call_grace(&self) -> f64 {
        self.shared
            .engine
            .longest_call_timeout()
            .map(|t| t.as_secs_f64())
            .unwrap_or(0.0)
    }

    fn _abandon_in_flight(&self, reason: &str) -> usize {
        self.shared.engine.abandon_in_flight(reason)
    }

    /// Logs the failure notes still waiting and the dead-letter summary.
    fn _close_log(&self, py: Python<'_>) {
        self.shared.log.close(py);
    }

    /// At interpreter exit with the bus running: gives up on what is not
    /// delivered (no loop will run the consumers), feeds the dead letters to the
    /// dead-letter consumers and the store, and returns the counts given up on
    /// `(dead-lettered, left pending in the store)`.
    fn _at_exit(&self, py: Python<'_>) -> PyResult<(u64, u64)> {
        if !self.shared.running.swap(false, Ordering::AcqRel) {
            return Ok((0, 0));
        }
        let engine = &self.shared.engine;
        let before = engine.counters();
        engine.begin_drain();
        engine.abort_pending();
        engine.abandon_in_flight("the interpreter exited while this event was being delivered");
        // NOTE: retries waiting on a timer fire at once when aborting; they run on
        // the Tokio runtime, so wait for them without the GIL (bounded).
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        loop {
            self.shared.inbox.run_pending(py, usize::MAX)?;
            if engine.is_idle() || std::time::Instant::now() >= deadline {
                break;
            }
            py.detach(|| std::thread::sleep(Duration::from_millis(5)));
        }
        self.shared.inbox.run_pending(py, usize::MAX)?;
        self.shared.log.close(py);
        if let Some(p) = &self.persist {
            let _ = p.flush(py);
        }
        if let Some(l) = &self.shared_log {
            // NOTE: acks written and claims released, so other instances need not
            // wait for the claim timeout.
            let _ = py.detach(|| l.close());
        }
        let after = engine.counters();
        Ok((
            after.dead_lettered - before.dead_lettered,
            after.released - before.released,
        ))
    }

    /// Files the dead-letter consumers write to (for the exit warning).
    fn _dead_letter_files(&self) -> Vec<String> {
        self.shared.dead_letter_sinks.files()
    }

    fn _begin_stop(&self) {
        self.shared.running.store(false, Ordering::Release);
        self.shared.engine.begin_drain();
    }

    fn _abort_pending(&self) {
        self.shared.engine.abort_pending();
    }

    fn _detach(&self, py: Python<'_>) -> PyResult<()> {
        self.shared.inbox.set_pump(None);
        if let Some(l) = self.shared.inbox.event_loop.lock().take() {
            py_api::detach(py, (self.shared.inbox.fd(), l))?;
        }
        Ok(())
    }

    fn _outstanding(&self) -> usize {
        self.shared.engine.counters().outstanding
    }

    fn __repr__(&self) -> String {
        let c = self.shared.engine.counters();
        format!(
            "EventBus(running={}, consumers={}, queued={}, in_flight={}, published={})",
            self.shared.running.load(Ordering::Relaxed),
            self.shared.consumers.read().len(),
            c.queued,
            c.outstanding,
            c.published
        )
    }
}

impl Drop for EventBus {
    fn drop(&mut self) {
        // NOTE: worker threads hold their consumer, not the bus; closing the
        // lanes lets them exit. Readers of a shared log stop delivering first, so
        // no entry is acknowledged for a lane that is gone.
        if let Some(l) = &self.shared_log {
            l.leaving_all();
        }
        for lane in self.shared.engine.lanes() {
            self.shared.engine.remove_lane(&lane);
        }
    }
}

/// Registers this room's classes.
pub fn init_pymodule(m: &Bound<'_, pyo3::types::PyModule>) -> PyResult<()> {
    m.add_class::<EventBus>()?;
    m.add_class::<Leaving>()?;
    m.add_class::<persistence::StoredBatch>()?;
    log_direct::init_pymodule(m)?;
    Ok(())
}

/// A payload cut down to what the rules read (or why it could not be).
type Projected = Result<serde_json::Value, String>;

/// Whether the rules of `route` can be matched at publish without a view: only
/// the rules need a copy of the event, and they read nothing but the payload,
/// the topic and the priority (issue 15, W1r).
fn matchable_now(route: &Route<AcceptedEvent>) -> bool {
    static FIELDS: std::sync::OnceLock<u8> = std::sync::OnceLock::new();
    route.sinks_need == ViewNeeds::Nothing
        && route.rules.as_ref().is_some_and(|r| {
            r.names_within(
                *FIELDS.get_or_init(|| crate::rules::field_bits(&["data", "topic", "priority"])),
            )
        })
}

/// The lanes of a [`matchable_now`] route that take an event with `priority`
/// whose payload the rules cut down to `projected`; None when the payload was
/// not cut (no longer the publisher's object) though the rules read it.
fn admitted_now(
    route: &Route<AcceptedEvent>,
    priority: u8,
    projected: Option<&Projected>,
) -> Option<Vec<bool>> {
    let rules = route.rules.as_ref()?;
    // NOTE: as in the view: a payload that does not convert reads as absent.
    let data = match projected {
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => None,
        None if rules.names("data") => return None,
        None => None,
    };
    let mut fields = Vec::new();
    if rules.names("topic") {
        fields.push(("topic", serde_json::Value::String(route.topic.to_string())));
    }
    if rules.names("priority") {
        let name = crate::event::priority_name(priority);
        fields.push(("priority", serde_json::Value::String(name.to_string())));
    }
    let doc = crate::rules::EventDoc::new(fields, data);
    Some(rules.admitted_doc(&doc, route.lanes.len()))
}

/// How much of the payload routing copies for `route`: all of it when a Rust
/// sink on it reads the payload, else what its consumers' rules read of it.
fn data_copy(route: &Route<AcceptedEvent>) -> DataCopy<'_> {
    if route.needs_view != ViewNeeds::FieldsAndData {
        return DataCopy::Nothing;
    }
    // NOTE: the route needs the payload for a sink or for a rule; only the rules
    // can do with the parts they read (issue 15, W1r).
    let sink_reads = route
        .lanes
        .iter()
        .any(|l| l.config.needs_view == ViewNeeds::FieldsAndData);
    match route.rules.as_ref().and_then(|r| r.data_projection()) {
        Some(p) if !sink_reads => DataCopy::ForRules(p),
        _ => DataCopy::Whole,
    }
}
