//! `EventBus(backend="sqlite:///path")`: the bus on a shared durable log
//! ([`crate::backend`]), so that every process opening the same log is one bus.
//! See `docs/backends.md` ("Wiring it into the bus").
//!
//! * Publishing: the event becomes a [`StoredEvent`] (as the per-process store
//!   copies it, [`stored_event`]) and then a record ([`record_from_stored`], the one
//!   encoding the hook command uses too), submitted to the bus's [`Appender`] (group
//!   commit). The publisher's awaitable is completed through the [`Inbox`] once the
//!   record is committed. Nothing is dispatched at publish.
//! * Consuming: each subscribed consumer runs one [`GroupReader`] (group = consumer
//!   name, a fresh instance id). Its `deliver` callback decodes the batch without
//!   the GIL ([`Incoming::decode`]: metadata read, payload checked to be one JSON
//!   object), then, with the GIL taken once for the batch, makes the `Event`s with
//!   their payload kept as text (unpacked on the first read of `event.data`, as on
//!   the memory bus) and pushes them into that consumer's lane only, each with a
//!   [`StoredRef`] that acknowledges the entry when the consumer is done with it, or
//!   dead-letters it in the log when the consumer gives up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::{Mutex, RwLock};
use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyDict, PyList, PyString};

use super::persistence::{py_event, stored_event, StoredBatch};
use crate::backend::appender::Appender;
use crate::backend::codec::{
    payload_object_text, record_from_stored, record_meta, stored_from_record,
};
use crate::backend::reader::{GroupReader, ReaderOptions};
use crate::backend::redis::RedisOptions;
use crate::backend::sqlite::{SqliteLog, SqliteOptions};
use crate::backend::{
    new_instance_id, Durability, Entry, EntryId, LogError, Retention, SharedLog, StartAt,
};
use crate::dispatch::{Engine, Lane, Rejected, ViewNeeds};
use crate::durable::{LogAcker, StoredRef};
use crate::python::exec::Inbox;
use crate::python::model::{
    build_view, AcceptedEvent, Event, EventId, Payload, Timestamp, ViewMemo,
};
use crate::python::runtime::errors::PersistenceError;
use crate::python::runtime::{log_error, log_warning, runtime};
use crate::storage::StoredEvent;

/// Most submissions waiting for the appender before publishers wait.
const APPEND_QUEUE: usize = 65_536;
/// Most entries one reader has delivered and not yet had acknowledged (at least
/// two of its consumer's batches: see [`reader_sizes`]).
const MAX_IN_FLIGHT: usize = 1024;
/// Fewest entries one read claims.
const MIN_READ: usize = 256;
/// Entries per page when replaying a range of the log.
const RANGE_PAGE: usize = 4096;

/// A shared-log error as a Python `PersistenceError` (the message names the log).
pub fn log_error_py(e: &LogError) -> PyErr {
    PersistenceError::new_err(e.to_string())
}

/// What `EventBus(backend=...)` asked for: `None` for the in-process bus.
///
/// `None` and `"memory"` are the in-process bus; `"sqlite:///abs/path.db"` (also
/// `sqlite://rel/path.db`, `sqlite:path.db`, with `?durability=sync|normal`) a shared
/// SQLite log; a `str` without a scheme or an `os.PathLike` is taken as the path of a
/// SQLite log; `"redis://host:port/db?prefix=mpm"` (or `rediss://`) a log on Redis
/// Streams. Any other scheme is refused.
pub fn parse_backend(value: Option<&Bound<'_, PyAny>>) -> PyResult<Option<(String, LogOptions)>> {
    let Some(v) = value.filter(|v| !v.is_none()) else {
        return Ok(None);
    };
    let text: String = if let Ok(s) = v.cast::<PyString>() {
        s.to_cow()?.into_owned()
    } else if v.hasattr("__fspath__")? {
        let p: std::path::PathBuf = v.extract()?;
        let url = p.display().to_string();
        return Ok(Some((url, LogOptions::Sqlite(SqliteOptions::new(p)))));
    } else {
        return Err(PyValueError::new_err(format!(
            "backend must be None, \"memory\", a \"sqlite:///path\" URL or a path, got {}",
            crate::python::convert::text::type_name(v)
        )));
    };
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(PyValueError::new_err(
            "backend is empty (use None or \"memory\" for the in-process bus, or \
             \"sqlite:///path/to/events.db\")",
        ));
    }
    if trimmed == "memory" || trimmed == "memory://" {
        return Ok(None);
    }
    let scheme = trimmed
        .split_once("://")
        .map(|(s, _)| s)
        .filter(|s| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        })
        .or_else(|| trimmed.starts_with("sqlite:").then_some("sqlite"));
    match scheme.map(str::to_ascii_lowercase).as_deref() {
        None => Ok(Some((
            text.clone(),
            LogOptions::Sqlite(SqliteOptions::new(trimmed)),
        ))),
        Some("sqlite") => {
            let opts = SqliteOptions::from_url(trimmed)
                .map_err(|e| PyValueError::new_err(e.to_string()))?;
            Ok(Some((text.clone(), LogOptions::Sqlite(opts))))
        }
        Some("redis" | "rediss" | "redis+cluster" | "rediss+cluster") => {
            let opts = RedisOptions::from_url(trimmed)
                .map_err(|e| PyValueError::new_err(e.to_string()))?;
            Ok(Some((text.clone(), LogOptions::Redis(opts))))
        }
        Some(other) => Err(PyValueError::new_err(format!(
            "backend {text:?}: unknown scheme {other:?} (known: \"memory\", \
             \"sqlite:///path/to/events.db\", \"redis://host:port/0\")"
        ))),
    }
}

/// Which shared log `EventBus(backend=...)` opens.
pub enum LogOptions {
    /// `sqlite:///path`: one SQLite file.
    Sqlite(SqliteOptions),
    /// `redis://...`: Redis Streams.
    Redis(RedisOptions),
}

/// One consumer's group reader, and what its events acknowledge into.
pub struct LaneReader {
    group: Arc<str>,
    reader: RwLock<Option<GroupReader>>,
    /// Set when the consumer leaves or the bus stops: deliveries stop here and what is
    /// in flight is released to the group.
    stopping: AtomicBool,
    /// Entries acknowledged without a call because the consumer's topics do not match.
    skipped: AtomicU64,
}

impl LogAcker for LaneReader {
    fn ack(&self, id: EntryId) {
        if let Some(r) = self.reader.read().as_ref() {
            r.ack(&[id]);
        }
    }

    fn dead_letter(&self, id: EntryId, reason: &str, attempts: u32) {
        let r = self.reader.read();
        if let Some(r) = r.as_ref() {
            if let Err(e) = r.dead_letter(id, reason, attempts) {
                // NOTE: the entry stays pending for the group: redelivered after the
                // claim timeout (at-least-once), not lost.
                eprintln!(
                    "mpm_events: cannot store a dead letter of {}: {e}",
                    self.group
                );
            }
        }
    }
}

impl Drop for LaneReader {
    fn drop(&mut self) {
        // NOTE: the last reference can go with an event dropped on the reader's own
        // thread; stopping the reader there would join that thread from itself.
        if let Some(r) = self.reader.get_mut().take() {
            let _ = std::thread::Builder::new()
                .name("mpm-events-log-drop".into())
                .spawn(move || drop(r));
        }
    }
}

impl LaneReader {
    /// Acks `id` now (on the reader thread: the reader is set).
    fn ack_now(&self, ids: &[EntryId]) {
        if let Some(r) = self.reader.read().as_ref() {
            r.ack(ids);
        }
    }

    /// Hands `entries` (claimed for this consumer) to `lane`; runs on the reader thread.
    fn deliver(
        self: &Arc<Self>,
        py: Python<'_>,
        engine: &Engine<AcceptedEvent>,
        lane: &Arc<Lane<AcceptedEvent>>,
        entries: Vec<(EntryId, Result<Incoming, String>)>,
    ) {
        let mut skip = Vec::new();
        let mut names = PyNames::default();
        for (id, entry) in entries {
            if self.stopping.load(Ordering::Acquire) {
                // NOTE: left in flight: released to the group when the reader stops.
                break;
            }
            let made = entry.and_then(|inc| self.to_event(py, engine, lane, id, inc, &mut names));
            match made {
                Ok(Some(ev)) => loop {
                    match engine.publish_to(ev.clone(), std::slice::from_ref(lane)) {
                        Ok(()) => break,
                        Err(Rejected::QueueFull) => {
                            if self.stopping.load(Ordering::Acquire) {
                                break;
                            }
                            // NOTE: the bus's queue bound; consumers make room.
                            py.detach(|| std::thread::sleep(Duration::from_millis(2)));
                        }
                        // NOTE: stopping; left in flight, released at the reader's stop.
                        Err(Rejected::NotRunning) => break,
                    }
                },
                Ok(None) => {
                    // NOTE: a lane that left the route because the consumer is
                    // leaving is not a topic mismatch: leave the entry in flight
                    // (released at the reader's stop) rather than ack it.
                    if self.stopping.load(Ordering::Acquire) {
                        break;
                    }
                    self.skipped.fetch_add(1, Ordering::Relaxed);
                    skip.push(id);
                }
                Err(reason) => {
                    // NOTE: an entry no event can be made of will never succeed.
                    LogAcker::dead_letter(&**self, id, &reason, 0);
                }
            }
        }
        if !skip.is_empty() {
            self.ack_now(&skip);
        }
    }

    /// The accepted event of entry `id`, or `None` if the consumer's topics do not
    /// match.
    fn to_event(
        self: &Arc<Self>,
        py: Python<'_>,
        engine: &Engine<AcceptedEvent>,
        lane: &Arc<Lane<AcceptedEvent>>,
        id: EntryId,
        inc: Incoming,
        names: &mut PyNames,
    ) -> Result<Option<Arc<AcceptedEvent>>, String> {
        let route = engine
            .route_topic(&inc.topic)
            .map_err(|e| format!("entry {id}: {e}"))?;
        if !route.lanes.iter().any(|l| Arc::ptr_eq(l, lane)) {
            return Ok(None);
        }
        let make = |py: Python<'_>| -> PyResult<AcceptedEvent> {
            let obj = inc.into_event(py, &route.topic, names)?;
            let topic = route.topic.clone();
            let (mut eref, ()) =
                AcceptedEvent::accept(py, obj, crate::clock::now(), |_| Ok((topic, ())))?;
            eref.durable = Some(StoredRef::log_entry(self.clone() as Arc<dyn LogAcker>, id));
            // NOTE: the lane's rule, if any, reads the view (`Engine::publish_to`).
            let need = lane.config.copy_needs();
            if need != ViewNeeds::Nothing {
                eref.view = Some(Arc::new(build_view(
                    py,
                    &eref,
                    need == ViewNeeds::FieldsAndData,
                )?));
            }
            Ok(eref)
        };
        make(py)
            .map(|e| Some(Arc::new(e)))
            .map_err(|e| format!("entry {id} cannot be delivered: {}", e.value(py)))
    }
}

/// The reader's `(batch, max_in_flight)` for a consumer taking `batch_size` events
/// per call.
// NOTE: one read claims a whole consumer batch, and two fit in flight, so the
// reader claims the next batch while the consumer works on this one; with 1,024 in
// flight and batches of 1,000 the two took turns. What a killed instance had in
// flight (its duplicates after the claim timeout) stays bounded by
// max(1,024, 2 x batch_size).
fn reader_sizes(batch_size: usize) -> (usize, usize) {
    let batch = batch_size.clamp(MIN_READ, 16 * MAX_IN_FLIGHT);
    (
        batch,
        MAX_IN_FLIGHT.max(2 * batch_size.min(16 * MAX_IN_FLIGHT)),
    )
}

/// A log entry read for a consumer, decoded without the GIL.
struct Incoming {
    topic: String,
    event_id: String,
    event_type: String,
    source: String,
    correlation_id: Option<String>,
    timestamp_us: i64,
    priority: u8,
    /// The payload as text holding one JSON object (unpacked on the first read of
    /// `event.data`), or bytes for `json.loads` now (see [`payload_object_text`]).
    data: Result<String, Vec<u8>>,
}

impl Incoming {
    fn decode(entry: Entry) -> (EntryId, Result<Incoming, String>) {
        let id = entry.id;
        let r = entry.record;
        let meta = match record_meta(&r) {
            Ok((t, s, c, _)) => (t.into_owned(), s.into_owned(), c.map(|c| c.into_owned())),
            Err(e) => return (id, Err(e.to_string())),
        };
        let (event_type, source, correlation_id) = meta;
        (
            id,
            Ok(Incoming {
                topic: r.topic,
                event_id: r.event_id,
                event_type,
                source,
                correlation_id,
                timestamp_us: r.timestamp_us,
                priority: r.priority,
                data: payload_object_text(r.payload),
            }),
        )
    }

    /// The `Event` (its payload packed when it could be checked without Python).
    fn into_event(self, py: Python<'_>, topic: &str, names: &mut PyNames) -> PyResult<Py<Event>> {
        let data = match self.data {
            Ok(text) => Payload::Packed(text.into_boxed_str(), PyOnceLock::new()),
            // NOTE: not strict JSON holding one object, or maybe a big integer:
            // Python's json decides (and the event's dict check), as for every
            // entry before payloads were kept as text.
            Err(bytes) => {
                let loads = JSON_LOADS.import(py, "json", "loads")?;
                Payload::Object(loads.call1((PyBytes::new(py, &bytes),))?.unbind())
            }
        };
        let ts = DateTime::<Utc>::from_timestamp_micros(self.timestamp_us).unwrap_or_else(Utc::now);
        let e = Event {
            id: EventId::Given(PyString::new(py, &self.event_id).unbind()),
            topic: PyNames::get(&mut names.topic, py, topic),
            type_: PyNames::get(&mut names.type_, py, &self.event_type),
            timestamp: Timestamp::Now(ts, PyOnceLock::new()),
            source: PyNames::get(&mut names.source, py, &self.source),
            data,
            meta: Default::default(),
            correlation_id: self.correlation_id.map(|c| PyString::new(py, &c).unbind()),
            priority: self.priority,
        };
        Py::new(py, e)
    }
}

static JSON_LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// The Python strings of the last topic, type and source made in one delivery:
/// consecutive entries usually share them.
#[derive(Default)]
struct PyNames {
    topic: Option<(String, Py<PyString>)>,
    type_: Option<(String, Py<PyString>)>,
    source: Option<(String, Py<PyString>)>,
}

impl PyNames {
    fn get(slot: &mut Option<(String, Py<PyString>)>, py: Python<'_>, text: &str) -> Py<PyString> {
        match slot {
            Some((t, s)) if t.as_str() == text => s.clone_ref(py),
            _ => {
                let s = PyString::new(py, text).unbind();
                *slot = Some((text.to_string(), s.clone_ref(py)));
                s
            }
        }
    }
}

/// The shared-log state of one bus.
pub struct SharedLogBus {
    /// The backend as given (shown in stats and errors).
    pub url: String,
    log: Arc<dyn SharedLog>,
    appender: Mutex<Option<Appender>>,
    /// This bus's publisher id (in every record it appends).
    publisher: String,
    next_seq: AtomicU64,
    appending: Arc<AtomicUsize>,
    appended: Arc<AtomicU64>,
    append_failures: Arc<AtomicU64>,
    inbox: Arc<Inbox>,
    names: Mutex<ViewMemo>,
    readers: Mutex<HashMap<Arc<str>, Arc<LaneReader>>>,
    closing: AtomicBool,
    retention: Option<(Retention, Duration)>,
    retention_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl SharedLogBus {
    /// Opens the log (a `PersistenceError` naming the path if it cannot be used).
    pub fn open(
        py: Python<'_>,
        url: String,
        opts: LogOptions,
        retention: Option<(Retention, Duration)>,
        inbox: Arc<Inbox>,
    ) -> PyResult<Arc<SharedLogBus>> {
        let log: Arc<dyn SharedLog> = py
            .detach(move || -> Result<Arc<dyn SharedLog>, LogError> {
                Ok(match opts {
                    LogOptions::Sqlite(o) => Arc::new(SqliteLog::open(o)?),
                    // NOTE: with `?spool=` a SpooledLog (src/backend/spool.rs) that
                    // forwards in the background (issue 13).
                    LogOptions::Redis(o) => crate::backend::spool::open_redis(o, true)?,
                })
            })
            .map_err(|e| log_error_py(&e))?;
        Ok(Arc::new(SharedLogBus {
            url,
            log,
            appender: Mutex::new(None),
            publisher: new_instance_id(),
            next_seq: AtomicU64::new(0),
            appending: Arc::new(AtomicUsize::new(0)),
            appended: Arc::new(AtomicU64::new(0)),
            append_failures: Arc::new(AtomicU64::new(0)),
            inbox,
            names: Mutex::new(ViewMemo::default()),
            readers: Mutex::new(HashMap::new()),
            closing: AtomicBool::new(false),
            retention,
            retention_task: Mutex::new(None),
        }))
    }

    fn dyn_log(&self) -> Arc<dyn SharedLog> {
        self.log.clone()
    }

    /// At `start()`: the appender (and the retention timer) run.
    pub fn open_appender(&self) -> PyResult<()> {
        self.closing.store(false, Ordering::Release);
        let mut a = self.appender.lock();
        if a.is_none() {
            *a = Some(Appender::start(self.dyn_log(), APPEND_QUEUE).map_err(|e| log_error_py(&e))?);
        }
        drop(a);
        if let Some((policy, every)) = self.retention {
            let mut t = self.retention_task.lock();
            if t.is_none() {
                let log = Arc::downgrade(&self.log);
                let inbox = Arc::downgrade(&self.inbox);
                *t = Some(runtime().spawn(async move {
                    let mut tick = tokio::time::interval(every);
                    tick.tick().await;
                    loop {
                        tick.tick().await;
                        let Some(log) = log.upgrade() else { return };
                        let r =
                            tokio::task::spawn_blocking(move || log.apply_retention(&policy)).await;
                        let msg = match r {
                            Ok(Ok(rep)) if rep.dropped_unhandled > 0 => format!(
                                "shared log retention removed {} entries some consumer name \
                                 had not handled (older than the hard cap)",
                                rep.dropped_unhandled
                            ),
                            Ok(Ok(_)) | Err(_) => continue,
                            Ok(Err(e)) => format!("shared log retention failed: {e}"),
                        };
                        // NOTE: logged on the loop (the logger needs the GIL); rare.
                        if let Some(inbox) = inbox.upgrade() {
                            inbox.call_soon(Box::new(move |py| log_warning(py, &msg)));
                        }
                    }
                }));
            }
        }
        Ok(())
    }

    /// Refuse new publishes (stop in progress).
    pub fn set_closing(&self, v: bool) {
        self.closing.store(v, Ordering::Release);
    }

    /// Appends submitted and not yet answered.
    pub fn appending(&self) -> usize {
        self.appending.load(Ordering::Acquire)
    }

    /// Submits the records of `erefs` in one transaction; `done` gets how many were
    /// committed (on the appender thread). `Err` (and `done` not called) if they could
    /// not even be queued.
    pub fn submit(
        &self,
        py: Python<'_>,
        erefs: &[AcceptedEvent],
        done: Box<dyn FnOnce(Result<usize, String>) + Send>,
    ) -> PyResult<Result<(), String>> {
        if self.closing.load(Ordering::Acquire) {
            return Ok(Err(String::new()));
        }
        let mut records = Vec::with_capacity(erefs.len());
        for e in erefs {
            let st: StoredEvent = stored_event(py, e, &self.names)?;
            let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
            records.push(record_from_stored(&st, &self.publisher, seq));
        }
        let guard = self.appender.lock();
        let Some(app) = guard.as_ref() else {
            return Ok(Err(String::new()));
        };
        self.appending.fetch_add(1, Ordering::AcqRel);
        let (appending, appended, failures, inbox) = (
            self.appending.clone(),
            self.appended.clone(),
            self.append_failures.clone(),
            self.inbox.clone(),
        );
        let r = app.submit(
            records,
            Box::new(move |r| {
                let out = match r {
                    Ok(ids) => {
                        appended.fetch_add(ids.len() as u64, Ordering::Relaxed);
                        Ok(ids.len())
                    }
                    Err(e) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        Err(e.to_string())
                    }
                };
                done(out);
                if appending.fetch_sub(1, Ordering::AcqRel) == 1 {
                    // NOTE: stop() waits for the appends in flight; wake it.
                    inbox.wake();
                }
            }),
        );
        if let Err(e) = r {
            self.appending.fetch_sub(1, Ordering::AcqRel);
            return Ok(Err(e.to_string()));
        }
        Ok(Ok(()))
    }

    /// Writes the dead letters of events a "dead_letter" schema refused (each with
    /// its violations, one per line, as its reason) into the log under the consumer
    /// name `"<schema>"`, off the loop; the events are never appended. Each one stored
    /// joins `engine`'s dead letters too (so `DeadLetterConsumer`s and the metrics see
    /// it as on the memory bus). `done` gets how many were stored (a failure is
    /// logged; `Err` only if none was). `Err` (and `done` not called) if the bus is
    /// stopping. Counted in [`SharedLogBus::appending`], so `join()` and `stop()` wait
    /// for it.
    pub fn put_invalid(
        &self,
        py: Python<'_>,
        engine: &Engine<AcceptedEvent>,
        letters: Vec<(AcceptedEvent, Vec<String>)>,
        done: Done,
    ) -> PyResult<Result<(), String>> {
        if self.closing.load(Ordering::Acquire) {
            return Ok(Err(String::new()));
        }
        let mut records = Vec::with_capacity(letters.len());
        for (e, errors) in letters {
            let st: StoredEvent = stored_event(py, &e, &self.names)?;
            let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
            let record = record_from_stored(&st, &self.publisher, seq);
            records.push((record, errors.join("\n"), e, errors));
        }
        self.appending.fetch_add(1, Ordering::AcqRel);
        let (log, appending, inbox) =
            (self.log.clone(), self.appending.clone(), self.inbox.clone());
        let engine = engine.downgrade();
        runtime().spawn_blocking(move || {
            let consumer = super::schemas::SCHEMA_CONSUMER;
            let mut stored = 0usize;
            let mut failed = None;
            for (r, reason, eref, errors) in records {
                match log.add_dead_letter(consumer, &r, &reason, 0) {
                    Ok(_) => {
                        stored += 1;
                        if let Some(engine) = engine.upgrade() {
                            let _ = engine.dead_letter_now(Arc::new(eref), consumer.into(), errors);
                        }
                    }
                    Err(e) => {
                        failed = Some(format!(
                            "the dead letter of invalid event {} was not stored: {e}",
                            r.event_id
                        ))
                    }
                }
            }
            match failed {
                Some(msg) if stored == 0 => done(Err(msg)),
                Some(msg) => {
                    inbox.call_soon(Box::new(move |py| log_error(py, &msg)));
                    done(Ok(stored));
                }
                None => done(Ok(stored)),
            }
            if appending.fetch_sub(1, Ordering::AcqRel) == 1 {
                inbox.wake();
            }
        });
        Ok(Ok(()))
    }

    /// `done` completing `fut` on the loop with `True`/`False` (or the count).
    pub fn done_future(
        &self,
        fut: Py<PyAny>,
        count: bool,
    ) -> Box<dyn FnOnce(Result<usize, String>) + Send> {
        let inbox = self.inbox.clone();
        Box::new(move |outcome| {
            inbox.call_soon(Box::new(move |py| {
                let n = match outcome {
                    Ok(n) => n,
                    Err(msg) => {
                        log_error(py, &format!("publish failed: {msg}"));
                        0
                    }
                };
                let f = fut.bind(py);
                if let Ok(false) = f
                    .call_method0(intern!(py, "done"))
                    .and_then(|d| d.is_truthy())
                {
                    let v = if count {
                        n.into_pyobject(py).map(|v| v.into_any()).ok()
                    } else {
                        Some(PyBool::new(py, n > 0).to_owned().into_any())
                    };
                    if let Some(v) = v {
                        let _ = f.call_method1(intern!(py, "set_result"), (v,));
                    }
                }
            }));
        })
    }

    /// Starts the group reader of consumer `name` (lane `lane`), unless it runs.
    pub fn start_reader(
        &self,
        py: Python<'_>,
        engine: &Engine<AcceptedEvent>,
        name: &Arc<str>,
        lane: &Arc<Lane<AcceptedEvent>>,
        claim_timeout: Duration,
        start: StartAt,
    ) -> PyResult<()> {
        if self.readers.lock().contains_key(name) {
            return Ok(());
        }
        let lr = Arc::new(LaneReader {
            group: name.clone(),
            reader: RwLock::new(None),
            stopping: AtomicBool::new(false),
            skipped: AtomicU64::new(0),
        });
        let weak: Weak<LaneReader> = Arc::downgrade(&lr);
        let (engine2, lane2) = (engine.downgrade(), lane.clone());
        let deliver = move |entries: Vec<Entry>| {
            let Some(me) = weak.upgrade() else { return };
            // NOTE: the first batch can come before `start_reader` has stored the
            // reader (acks need it); that takes microseconds.
            while me.reader.read().is_none() && !me.stopping.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_micros(200));
            }
            let Some(engine) = engine2.upgrade() else {
                return;
            };
            // NOTE: metadata and payload are checked before the GIL is taken; with
            // it held, the batch only becomes `Event` objects (payload kept as text).
            let decoded: Vec<(EntryId, Result<Incoming, String>)> =
                entries.into_iter().map(Incoming::decode).collect();
            Python::attach(|py| me.deliver(py, &engine, &lane2, decoded));
        };
        let mut opts = ReaderOptions::new(name.to_string());
        opts.start = start;
        opts.claim_timeout = claim_timeout;
        (opts.batch, opts.max_in_flight) = reader_sizes(lane.config.batch_size);
        let log = self.dyn_log();
        let reader = py
            .detach(move || GroupReader::start(log, opts, deliver))
            .map_err(|e| match e {
                LogError::Invalid(m) => {
                    crate::python::runtime::errors::config_error(format!("consumer {name:?}: {m}"))
                }
                e => log_error_py(&e),
            })?;
        *lr.reader.write() = Some(reader);
        self.readers.lock().insert(name.clone(), lr);
        Ok(())
    }

    /// Consumer `name` is leaving (before its lane is removed): its reader delivers
    /// and claims nothing more.
    pub fn leaving(&self, name: &str) {
        if let Some(lr) = self.readers.lock().get(name) {
            lr.stopping.store(true, Ordering::Release);
            if let Some(r) = lr.reader.read().as_ref() {
                r.pause();
            }
        }
    }

    /// Every consumer is leaving (the bus is dropped without `stop()`).
    pub fn leaving_all(&self) {
        let names: Vec<Arc<str>> = self.readers.lock().keys().cloned().collect();
        for n in names {
            self.leaving(&n);
        }
    }

    /// Stop claiming for every reader (the bus is draining before it stops).
    pub fn pause_readers(&self) {
        for lr in self.readers.lock().values() {
            if let Some(r) = lr.reader.read().as_ref() {
                r.pause();
            }
        }
    }

    /// Stops the reader of `name`: acks written, claims in flight released. Blocks
    /// (call without the GIL).
    pub fn stop_reader(&self, name: &str) -> Result<u64, LogError> {
        let Some(lr) = self.readers.lock().remove(name) else {
            return Ok(0);
        };
        lr.stopping.store(true, Ordering::Release);
        let r = lr.reader.write().take();
        match r {
            Some(r) => r.stop(),
            None => Ok(0),
        }
    }

    /// Stops every reader and the appender (after what is queued is appended). Blocks.
    pub fn close(&self) -> Result<u64, LogError> {
        let names: Vec<Arc<str>> = self.readers.lock().keys().cloned().collect();
        let mut released = 0;
        let mut first_err = None;
        for n in names {
            match self.stop_reader(&n) {
                Ok(k) => released += k,
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
        if let Some(mut a) = self.appender.lock().take() {
            a.close();
        }
        if let Some(t) = self.retention_task.lock().take() {
            t.abort();
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(released),
        }
    }

    /// The log's last entry now (what `join()` waits for).
    pub fn last_entry(&self) -> Result<Option<EntryId>, LogError> {
        self.log.stats().map(|s| s.last)
    }

    /// True when every reader of this bus has handled everything up to `upto`.
    pub fn caught_up(&self, upto: Option<EntryId>) -> Result<bool, LogError> {
        let readers: Vec<Arc<LaneReader>> = self.readers.lock().values().cloned().collect();
        for lr in readers {
            let r = lr.reader.read();
            if let Some(r) = r.as_ref() {
                r.flush()?;
                if !r.caught_up(upto)? {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// `get_dead_letters()`: the log's dead letters, every consumer name.
    pub fn dead_letters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let log = self.log.clone();
        let rows = py
            .detach(move || log.dead_letters(None, usize::MAX >> 1))
            .map_err(|e| log_error_py(&e))?;
        let list = PyList::empty(py);
        for r in rows {
            let d = PyDict::new(py);
            let ev = stored_from_record(&r.record).map_err(|e| log_error_py(&e))?;
            d.set_item("event", py_event(py, &ev)?)?;
            d.set_item("consumer", &r.group)?;
            // NOTE: a schema's dead letter keeps every violation, one per line.
            let errors: Vec<&str> = if r.group == super::schemas::SCHEMA_CONSUMER {
                r.reason.lines().collect()
            } else {
                vec![r.reason.as_str()]
            };
            d.set_item("errors", errors)?;
            d.set_item("attempts", r.attempts)?;
            d.set_item(
                "failed_at",
                DateTime::<Utc>::from_timestamp_micros(r.failed_us),
            )?;
            d.set_item("id", r.dl_id)?;
            d.set_item("entry_id", r.id.to_string())?;
            list.append(d)?;
        }
        Ok(list)
    }

    /// The monitor's purge: removes the log's dead letters of `consumer` (all when
    /// None) whose event id is in `event_ids` (all when None); returns how many.
    pub fn purge_dead_letters(
        &self,
        py: Python<'_>,
        consumer: Option<String>,
        event_ids: Option<Vec<String>>,
    ) -> PyResult<usize> {
        let log = self.log.clone();
        py.detach(move || -> Result<usize, LogError> {
            let ids: Vec<i64> = log
                .dead_letters(consumer.as_deref(), usize::MAX >> 1)?
                .into_iter()
                .filter(|l| {
                    event_ids
                        .as_ref()
                        .is_none_or(|ids| ids.contains(&l.record.event_id))
                })
                .map(|l| l.dl_id)
                .collect();
            if ids.is_empty() {
                return Ok(0);
            }
            Ok(log.remove_dead_letters(&ids)? as usize)
        })
        .map_err(|e| log_error_py(&e))
    }

    /// The monitor's view of every consumer group the log knows (any process's):
    /// `name`, `pending`, `ready`, `lag`, `dead_letters`, `position`.
    pub fn groups<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let log = self.log.clone();
        let stats = py
            .detach(
                move || -> Result<Vec<crate::backend::GroupStats>, LogError> {
                    log.groups()?.iter().map(|g| log.group_stats(g)).collect()
                },
            )
            .map_err(|e| log_error_py(&e))?;
        let list = PyList::empty(py);
        for g in stats {
            let d = PyDict::new(py);
            d.set_item("name", &g.name)?;
            d.set_item("pending", g.pending)?;
            d.set_item("ready", g.ready)?;
            d.set_item("lag", g.lag)?;
            d.set_item("dead_letters", g.dead_letters)?;
            d.set_item("position", g.position.map(|p| p.to_string()))?;
            list.append(d)?;
        }
        Ok(list)
    }

    /// `replay_dead_letters(consumer, event_ids)`: hands dead letters back to their
    /// consumer name in the log (any instance, in any process, gets them). A
    /// `"<schema>"` dead letter (its event was never appended) is checked against
    /// `schemas` as registered now: if it passes it is appended to the log (every
    /// consumer name gets it) and its dead letter removed; if it still fails it stays
    /// as it is, not counted, with a warning naming it.
    pub fn replay_dead_letters(
        &self,
        py: Python<'_>,
        schemas: &crate::schema::Schemas,
        consumer: Option<String>,
        event_ids: Option<Vec<String>>,
    ) -> PyResult<usize> {
        let log = self.log.clone();
        let schema_name = super::schemas::SCHEMA_CONSUMER;
        let (publisher, next_seq) = (&self.publisher, &self.next_seq);
        let (n, still_invalid) = py
            .detach(move || -> Result<(usize, Vec<String>), LogError> {
                let letters = log.dead_letters(consumer.as_deref(), usize::MAX >> 1)?;
                let mut by_group: HashMap<String, Vec<i64>> = HashMap::new();
                let mut republish = Vec::new();
                let mut still_invalid = Vec::new();
                for l in letters {
                    if !event_ids
                        .as_ref()
                        .is_none_or(|ids| ids.contains(&l.record.event_id))
                    {
                        continue;
                    }
                    if l.group != schema_name {
                        by_group.entry(l.group).or_default().push(l.dl_id);
                        continue;
                    }
                    let payload = serde_json::from_slice(&l.record.payload)
                        .unwrap_or(serde_json::Value::Null);
                    match schemas.recheck(&l.record.topic, &payload) {
                        None => republish.push(l),
                        Some(inv) => still_invalid.push(format!(
                            "{} ({})",
                            l.record.event_id,
                            inv.violations
                                .first()
                                .map(|v| v.to_string())
                                .unwrap_or_default()
                        )),
                    }
                }
                let mut n = 0;
                for (g, ids) in by_group {
                    n += log.replay_dead_letters(&g, Some(&ids))? as usize;
                }
                if !republish.is_empty() {
                    // NOTE: appended first, then the dead letters removed: a failure
                    // in between leaves a dead letter of an appended event (replayed
                    // twice if replayed again), never a lost event.
                    // NOTE: published by this bus now: its publisher id and order.
                    let records: Vec<_> = republish
                        .iter()
                        .map(|l| crate::backend::Record {
                            publisher: publisher.clone(),
                            publisher_seq: next_seq.fetch_add(1, Ordering::Relaxed),
                            ..l.record.clone()
                        })
                        .collect();
                    log.append(&records)?;
                    let ids: Vec<i64> = republish.iter().map(|l| l.dl_id).collect();
                    log.remove_dead_letters(&ids)?;
                    n += records.len();
                }
                Ok((n, still_invalid))
            })
            .map_err(|e| log_error_py(&e))?;
        warn_still_invalid(py, &still_invalid);
        Ok(n)
    }

    /// Entries of the log in a time window and topics, all for consumer `to`
    /// (`replay()`), without acknowledgement targets.
    pub fn replay_read(
        &self,
        py: Python<'_>,
        since_us: Option<i64>,
        until_us: Option<i64>,
        topics: Option<Vec<String>>,
        to: String,
    ) -> PyResult<StoredBatch> {
        let log = self.log.clone();
        let rows = py
            .detach(move || -> Result<Vec<StoredEvent>, LogError> {
                let mut out = Vec::new();
                let mut after = None;
                loop {
                    let page =
                        log.range(since_us, until_us, topics.as_deref(), after, RANGE_PAGE)?;
                    let Some(last) = page.last() else { break };
                    after = Some(last.0);
                    for (_, r) in &page {
                        out.push(stored_from_record(r)?);
                    }
                    if page.len() < RANGE_PAGE {
                        break;
                    }
                }
                Ok(out)
            })
            .map_err(|e| log_error_py(&e))?;
        Ok(StoredBatch::for_replay(rows, &to))
    }

    /// Adds the shared-log part of `get_metrics()`.
    pub fn metrics<'py>(&self, py: Python<'py>, d: &Bound<'py, PyDict>) -> PyResult<()> {
        let log = self.log.clone();
        let names: Vec<(Arc<str>, u64)> = self
            .readers
            .lock()
            .iter()
            .map(|(n, r)| (n.clone(), r.skipped.load(Ordering::Relaxed)))
            .collect();
        let names2: Vec<Arc<str>> = names.iter().map(|n| n.0.clone()).collect();
        let stats = py.detach(move || {
            names2
                .iter()
                .map(|n| log.group_stats(n))
                .collect::<Result<Vec<_>, _>>()
        });
        let s = PyDict::new(py);
        s.set_item("backend", &self.url)?;
        s.set_item("events_appended", self.appended.load(Ordering::Relaxed))?;
        s.set_item(
            "append_failures",
            self.append_failures.load(Ordering::Relaxed),
        )?;
        s.set_item("appends_in_flight", self.appending())?;
        let per = PyDict::new(py);
        match stats {
            Ok(stats) => {
                for ((name, skipped), g) in names.iter().zip(stats) {
                    let e = PyDict::new(py);
                    e.set_item("pending", g.pending)?;
                    e.set_item("ready", g.ready)?;
                    e.set_item("lag", g.lag)?;
                    e.set_item("dead_letters", g.dead_letters)?;
                    e.set_item("skipped_by_topic", *skipped)?;
                    per.set_item(name.as_ref(), e)?;
                }
            }
            Err(e) => {
                log_warning(py, &format!("get_metrics(): {e}"));
            }
        }
        s.set_item("consumers", per)?;
        d.set_item("shared_log", s)?;
        Ok(())
    }

    /// Engine dead letters of log entries become dead letters in the log.
    pub fn listen_dead_letters(engine: &Engine<AcceptedEvent>) {
        engine.add_dead_letter_listener(move |letter| {
            let Some(d) = letter.event.durable.as_ref().filter(|d| d.is_log_entry()) else {
                return;
            };
            let d = d.clone();
            let reason = letter
                .errors
                .last()
                .cloned()
                .unwrap_or_else(|| "failed".into());
            let attempts = letter.attempts;
            // NOTE: a write to the log; never on the engine's threads.
            runtime().spawn_blocking(move || {
                d.dead_letter(&reason, attempts);
            });
        });
    }
}

/// `replay_dead_letters()` left these `"<schema>"` dead letters in place: their
/// payload still fails a "dead_letter" or "raise" schema.
pub(super) fn warn_still_invalid(py: Python<'_>, which: &[String]) {
    if which.is_empty() {
        return;
    }
    log_warning(
        py,
        &format!(
            "replay_dead_letters(): {} dead letter(s) of the schema check still fail their \
             schema and stay in the dead letters: {}",
            which.len(),
            which.join(", ")
        ),
    );
}

// ----- the EventBus side (called by `bus/mod.rs`) -----

/// Opens the shared log of `EventBus(backend=...)`, with the bus's durability,
/// compression, size cap and retention keyword arguments.
#[allow(clippy::type_complexity)]
pub(super) fn open(
    py: Python<'_>,
    url: String,
    opts: LogOptions,
    inbox: &Arc<Inbox>,
    (durability, flush_interval, max_age, max_bytes): (
        &str,
        f64,
        Option<&Bound<'_, PyAny>>,
        Option<u64>,
    ),
    (compress_threshold, retention_interval, hard_limit): (usize, Option<f64>, Option<u64>),
) -> PyResult<Arc<SharedLogBus>> {
    let durability_mode = match durability {
        "sync" => Durability::Sync,
        "async" | "normal" => Durability::Normal,
        other => {
            return Err(PyValueError::new_err(format!(
                "durability must be \"sync\" or \"async\", got {other:?}"
            )))
        }
    };
    let opts = match opts {
        LogOptions::Sqlite(mut o) => {
            // NOTE: a `?durability=` in the URL wins over the keyword argument.
            if !url.contains("durability=") {
                o.durability = durability_mode;
            }
            o.compress_threshold = compress_threshold;
            o.hard_limit_bytes = hard_limit;
            LogOptions::Sqlite(o)
        }
        LogOptions::Redis(mut o) => {
            // NOTE: on Redis what survives a crash is the server's appendfsync setting
            // (docs/backends.md, RedisLog); `durability` cannot change it from here.
            if hard_limit.is_some() {
                return Err(PyValueError::new_err(
                    "persistence_hard_limit_bytes does not apply to a Redis backend \
                     (cap the server with maxmemory, the log with retention_max_bytes)",
                ));
            }
            if !url.contains("compress_threshold=") {
                o.compress_threshold = compress_threshold;
            }
            LogOptions::Redis(o)
        }
    };
    // NOTE: the same validation of the retention arguments as enable_persistence.
    let po = super::persist::options(
        Some(std::path::PathBuf::from("-")),
        durability,
        flush_interval,
        max_age,
        max_bytes,
        compress_threshold,
        retention_interval,
        hard_limit,
    )?;
    let retention = match (po.max_age, po.max_bytes, po.retention_interval) {
        (None, None, _) | (_, _, None) => None,
        (max_age, max_bytes, Some(every)) => Some((
            Retention {
                max_age,
                max_bytes,
                hard_max_age: None,
            },
            every,
        )),
    };
    SharedLogBus::open(py, url, opts, retention, inbox.clone())
}

/// At `start()`, after the engine started: the appender and every consumer's reader.
pub(super) fn start(bus: &super::EventBus, py: Python<'_>, l: &SharedLogBus) -> PyResult<()> {
    l.open_appender()?;
    let subs: Vec<_> = bus
        .shared
        .consumers
        .read()
        .iter()
        .map(|(n, s)| (n.clone(), s.lane.clone(), s.reader))
        .collect();
    for (name, lane, (claim_timeout, start)) in subs {
        l.start_reader(py, &bus.shared.engine, &name, &lane, claim_timeout, start)?;
    }
    Ok(())
}

/// An event accepted for the log: checked (topic, dict payload) and its payload
/// packed, with the violations if a "dead_letter" schema refuses it (a "raise" one
/// raises here).
fn accept_for_log(
    bus: &super::EventBus,
    py: Python<'_>,
    event: &Bound<'_, PyAny>,
) -> PyResult<(AcceptedEvent, Option<crate::schema::Invalid>)> {
    let owned = super::as_event(event)?;
    let eref = accept_owned(bus, py, owned)?;
    let invalid = super::schemas::check_accepted(py, &bus.schemas, &eref)?;
    Ok((eref, invalid))
}

/// Submits `eref` to the log, or, when a schema refused it (`invalid`), its dead
/// letter (see [`SharedLogBus::put_invalid`]).
fn submit_one(
    bus: &super::EventBus,
    py: Python<'_>,
    l: &SharedLogBus,
    eref: AcceptedEvent,
    invalid: Option<crate::schema::Invalid>,
    done: Done,
) -> PyResult<Result<(), String>> {
    match invalid {
        None => l.submit(py, std::slice::from_ref(&eref), done),
        Some(inv) => {
            let letters = vec![(eref, super::schemas::letter_errors(&inv))];
            l.put_invalid(py, &bus.shared.engine, letters, done)
        }
    }
}

fn accept_owned(
    bus: &super::EventBus,
    py: Python<'_>,
    owned: Py<crate::python::model::Event>,
) -> PyResult<AcceptedEvent> {
    let (eref, ()) = AcceptedEvent::accept(py, owned, crate::clock::now(), |topic| {
        crate::topic::validate_topic(topic).map(|()| (Arc::from(topic), ()))
    })?;
    // NOTE: stored as JSON text; packing first lets the copy take the text as is.
    crate::python::model::pack_payload(py, eref.event(py)?);
    bus.shared
        .last_event_us
        .store(crate::clock::now_unix_micros(), Ordering::Relaxed);
    Ok(eref)
}

/// A publish not taken: an empty `msg` means the bus is stopping (warned once).
fn refused(bus: &super::EventBus, py: Python<'_>, msg: &str) {
    if msg.is_empty() {
        bus.warn_not_running(py);
    } else {
        log_error(py, &format!("publish failed: {msg}"));
    }
}

/// `publish` on a shared-log bus: an awaitable completed with `True` once the event
/// is committed to the log.
pub(super) fn publish(
    bus: &super::EventBus,
    py: Python<'_>,
    l: &SharedLogBus,
    event: &Bound<'_, PyAny>,
) -> PyResult<Py<PyAny>> {
    use crate::python::runtime::awaitable::{Pending, Ready};
    let (eref, invalid) = accept_for_log(bus, py, event)?;
    let event_loop = match bus.shared.inbox.current_loop(py) {
        Some(lp) if bus.shared.engine.is_accepting() => lp,
        _ => {
            bus.warn_not_running(py);
            return Ok(Ready::of_bool(py, false).into_any());
        }
    };
    let fut = event_loop
        .bind(py)
        .call_method0(intern!(py, "create_future"))?;
    match submit_one(
        bus,
        py,
        l,
        eref,
        invalid,
        l.done_future(fut.clone().unbind(), false),
    )? {
        Ok(()) => {
            let it = fut.call_method0(intern!(py, "__await__"))?.unbind();
            Ok(Py::new(py, Pending { it })?.into_any())
        }
        Err(msg) => {
            refused(bus, py, &msg);
            Ok(Ready::of_bool(py, false).into_any())
        }
    }
}

/// `publish_batch` on a shared-log bus: every event checked first, then all of them
/// in one transaction; the awaitable gives how many were committed.
pub(super) fn publish_batch(
    bus: &super::EventBus,
    py: Python<'_>,
    l: &SharedLogBus,
    events: &Bound<'_, PyAny>,
) -> PyResult<Py<PyAny>> {
    use crate::python::runtime::awaitable::{Pending, Ready};
    let mut memo = super::PrepMemo::default();
    let owned = bus.validate_batch(py, events, &mut memo)?;
    let mut dead: std::collections::VecDeque<(usize, crate::schema::Invalid)> =
        memo.checked.take().unwrap_or_default().into();
    let zero = |py: Python<'_>| -> PyResult<Py<PyAny>> {
        Ready::of(py, 0i64.into_pyobject(py)?.into_any().unbind()).map(Py::into_any)
    };
    if owned.is_empty() {
        return zero(py);
    }
    let event_loop = match bus.shared.inbox.current_loop(py) {
        Some(lp) if bus.shared.engine.is_accepting() => lp,
        _ => {
            bus.warn_not_running(py);
            return zero(py);
        }
    };
    // NOTE: as on the memory bus, the events a "dead_letter" schema refused go to
    // the dead letters (written to the log apart) and count as accepted.
    let mut erefs = Vec::with_capacity(owned.len());
    let mut invalid = Vec::new();
    for (i, e) in owned.into_iter().enumerate() {
        let eref = accept_owned(bus, py, e)?;
        match dead.front() {
            Some((j, _)) if *j == i => {
                let (_, inv) = dead.pop_front().expect("front");
                invalid.push((eref, inv));
            }
            _ => erefs.push(eref),
        }
    }
    let fut = event_loop
        .bind(py)
        .call_method0(intern!(py, "create_future"))?;
    let done = Counted::new(l.done_future(fut.clone().unbind(), true), &l.inbox);
    let (mut parts, mut refusals) = (0, Vec::new());
    if !erefs.is_empty() {
        parts += 1;
        if let Err(msg) = l.submit(py, &erefs, done.part())? {
            refusals.push(msg);
        }
    }
    if !invalid.is_empty() {
        parts += 1;
        let letters = invalid
            .into_iter()
            .map(|(e, inv)| (e, super::schemas::letter_errors(&inv)))
            .collect();
        if let Err(msg) = l.put_invalid(py, &bus.shared.engine, letters, done.part())? {
            refusals.push(msg);
        }
    }
    done.seal();
    // NOTE: a stopping bus refuses both parts alike: warned once.
    if let Some(msg) = refusals.first() {
        refused(bus, py, msg);
    }
    if refusals.len() == parts {
        // NOTE: nothing was submitted: answered now, as before there were two parts
        // (the future's own answer, 0, comes through the loop and is not awaited).
        return zero(py);
    }
    let it = fut.call_method0(intern!(py, "__await__"))?.unbind();
    Ok(Py::new(py, Pending { it })?.into_any())
}

/// One publisher's answer made of several submissions (a batch's appended events
/// and its schema dead letters): `done` is called once, with the sum, when every
/// part handed out has answered and [`Counted::seal`] was called. A part whose
/// submission was refused (its callback dropped uncalled) counts as 0.
struct Counted {
    state: Arc<Mutex<CountedState>>,
}

/// How a shared-log submission answers its publisher: how many were committed.
type Done = Box<dyn FnOnce(Result<usize, String>) + Send>;

struct CountedState {
    /// Parts not answered yet, plus one until sealed.
    left: usize,
    total: usize,
    error: Option<String>,
    done: Option<Done>,
    inbox: Arc<Inbox>,
}

/// Answers its part with 0 if dropped before it was called.
struct PartGuard(Option<Arc<Mutex<CountedState>>>);

impl Drop for PartGuard {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            Counted::answer(&s, Ok(0));
        }
    }
}

impl Counted {
    fn new(done: Done, inbox: &Arc<Inbox>) -> Counted {
        Counted {
            state: Arc::new(Mutex::new(CountedState {
                left: 1,
                total: 0,
                error: None,
                done: Some(done),
                inbox: inbox.clone(),
            })),
        }
    }

    /// The `done` of one more part.
    fn part(&self) -> Done {
        self.state.lock().left += 1;
        let mut guard = PartGuard(Some(self.state.clone()));
        Box::new(move |r| {
            if let Some(s) = guard.0.take() {
                Counted::answer(&s, r);
            }
        })
    }

    /// Every part was handed out.
    fn seal(self) {
        Counted::answer(&self.state, Ok(0));
    }

    fn answer(state: &Mutex<CountedState>, r: Result<usize, String>) {
        let mut s = state.lock();
        match r {
            Ok(n) => s.total += n,
            Err(msg) => {
                if let Some(prev) = s.error.replace(msg) {
                    // NOTE: two failing parts: the first is logged here, the last
                    // reaches the publisher's answer.
                    s.inbox.call_soon(Box::new(move |py| {
                        log_error(py, &format!("publish failed: {prev}"))
                    }));
                }
            }
        }
        s.left -= 1;
        if s.left > 0 {
            return;
        }
        let done = s.done.take();
        let out = match (s.total, s.error.take()) {
            (0, Some(msg)) => Err(msg),
            (n, Some(msg)) => {
                s.inbox.call_soon(Box::new(move |py| {
                    log_error(py, &format!("publish failed: {msg}"))
                }));
                Ok(n)
            }
            (n, None) => Ok(n),
        };
        drop(s);
        if let Some(done) = done {
            done(out);
        }
    }
}

/// `publish_nowait` on a shared-log bus: blocks (GIL released) until the commit.
pub(super) fn publish_blocking(
    bus: &super::EventBus,
    l: &SharedLogBus,
    event: &Bound<'_, PyAny>,
) -> PyResult<bool> {
    let py = event.py();
    let (eref, invalid) = accept_for_log(bus, py, event)?;
    if !bus.shared.engine.is_accepting() {
        bus.warn_not_running(py);
        return Ok(false);
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let r = submit_one(
        bus,
        py,
        l,
        eref,
        invalid,
        Box::new(move |o| {
            let _ = tx.send(o);
        }),
    )?;
    let outcome = match r {
        Ok(()) => py
            .detach(move || rx.recv())
            .unwrap_or_else(|_| Err("the shared log's appender stopped".into())),
        Err(msg) => Err(msg),
    };
    match outcome {
        Ok(n) => Ok(n > 0),
        Err(msg) => {
            refused(bus, py, &msg);
            Ok(false)
        }
    }
}
