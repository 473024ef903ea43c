//! `enable_persistence=True`: the Python side of the engine's durable log
//! ([`crate::durable::DurableLog`]). See `docs/persistence.md` for the guarantees.
//!
//! * Publishing: the event is copied into a [`StoredEvent`] (on the publisher's thread,
//!   with the GIL) and submitted to the durable log, which stores it and dispatches it
//!   once committed; the publisher's awaitable is completed through the [`Inbox`].
//! * Restart redelivery and replay read rows into a [`StoredBatch`] off the event loop;
//!   the bus then pushes them into the engine as the queue bound allows.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::dispatch::{Engine, Lane, Rejected, Route, ViewNeeds};
use crate::durable::{Answer, DurableHooks, DurableLog};
use crate::python::convert::text::uuid_text;
use crate::python::exec::Inbox;
use crate::python::model::{
    build_view, hook_source, interned, AcceptedEvent, Event, Origin, PartsData, ViewMemo,
};
use crate::python::runtime::awaitable::{Pending, Ready};
use crate::python::runtime::errors::{persistence_error, PersistenceError};
use crate::python::runtime::{log_error, runtime};
use crate::storage::{Durability, StoreOptions, StoredEvent, Targets};

static JSON_LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// The default store: `$XDG_DATA_HOME/mpm-events/events.db`, else
/// `~/.local/share/mpm-events/events.db`.
pub fn default_path() -> PyResult<PathBuf> {
    let base = match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(h) => PathBuf::from(h).join(".local").join("share"),
            None => {
                return Err(PersistenceError::new_err(
                    "enable_persistence=True needs persistence_path= (neither XDG_DATA_HOME \
                     nor HOME is set, so there is no default data directory)",
                ))
            }
        },
    };
    Ok(base.join("mpm-events").join("events.db"))
}

/// Options of [`Persistence::open`], read from the `EventBus` keyword arguments.
pub struct PersistOptions {
    pub path: PathBuf,
    pub sync: bool,
    pub flush_interval: Duration,
    pub max_age: Option<Duration>,
    pub max_bytes: Option<u64>,
    pub retention_interval: Option<Duration>,
    pub compress_threshold: usize,
    pub hard_limit_bytes: Option<u64>,
}

/// The persistence state of one bus: the engine's durable log, and what the
/// Python side needs around it (drain waiters, redelivery counters).
pub struct Persistence {
    log: DurableLog<AcceptedEvent>,
    pub path: PathBuf,
    pub sync: bool,
    inbox: Arc<Inbox>,
    /// Futures completed once no append is in flight (`stop()`'s quiesce).
    waiters: Mutex<Vec<Py<PyAny>>>,
    /// The consumer names of the last route stored (a route's events share one list).
    // NOTE: weak, so that a route dropped from the engine's cache (after an unsubscribe)
    // does not keep its lanes alive; the pointer cannot be reused while this is held.
    last_targets: Mutex<Option<(Weak<Route<AcceptedEvent>>, Targets)>>,
    /// The last event type and source stored, shared by the next events that have them.
    names: Mutex<ViewMemo>,
    closing: AtomicBool,
    /// Redeliveries started at `start()` and not finished (join() waits for them).
    pub redelivering: AtomicUsize,
    redelivered: AtomicU64,
    replayed: AtomicU64,
    /// Dead letters of events refused by a "dead_letter" schema being written
    /// ([`Persistence::put_invalid`]); counted as writes in flight.
    invalid_writes: AtomicUsize,
}

/// What the durable log asks of the bus, on the store's writer thread: failures of
/// async publishes are logged and drain waiters completed on the loop.
struct LoopHooks {
    inbox: Arc<Inbox>,
    persist: OnceLock<Weak<Persistence>>,
}

impl DurableHooks for LoopHooks {
    fn log_failure(&self, msg: String) {
        self.inbox.call_soon(Box::new(move |py| {
            log_error(py, &format!("publish failed: {msg}"))
        }));
    }

    fn drained(&self) {
        // NOTE: join() counts writes in flight as outstanding; wake it.
        self.inbox.wake();
        if let Some(p) = self.persist.get().and_then(Weak::upgrade) {
            if !p.waiters.lock().is_empty() {
                self.inbox
                    .call_soon(Box::new(move |py| p.resolve_waiters(py)));
            }
        }
    }
}

impl Persistence {
    /// Opens the store; a corrupt or unreadable file raises `PersistenceError`.
    pub fn open(opts: PersistOptions, inbox: Arc<Inbox>) -> PyResult<Arc<Persistence>> {
        let mut so = StoreOptions::new(&opts.path);
        so.durability = if opts.sync {
            Durability::Sync
        } else {
            Durability::Async {
                flush_interval: opts.flush_interval,
            }
        };
        so.compress_threshold = opts.compress_threshold;
        so.max_age = opts.max_age;
        so.max_bytes = opts.max_bytes;
        so.retention_interval = opts.retention_interval;
        so.hard_limit_bytes = opts.hard_limit_bytes;
        let hooks = Arc::new(LoopHooks {
            inbox: inbox.clone(),
            persist: OnceLock::new(),
        });
        let log = DurableLog::open(so, hooks.clone(), runtime().handle())
            .map_err(|e| persistence_error(&e))?;
        let p = Arc::new(Persistence {
            log,
            path: opts.path,
            sync: opts.sync,
            inbox,
            waiters: Mutex::new(Vec::new()),
            last_targets: Mutex::new(None),
            names: Mutex::new(ViewMemo::default()),
            closing: AtomicBool::new(false),
            redelivering: AtomicUsize::new(0),
            redelivered: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            invalid_writes: AtomicUsize::new(0),
        });
        let _ = hooks.persist.set(Arc::downgrade(&p));
        Ok(p)
    }

    /// Completes the drain waiters if no append is in flight (on the loop).
    fn resolve_waiters(&self, py: Python<'_>) {
        if self.pending() != 0 {
            return;
        }
        let waiters: Vec<_> = self.waiters.lock().drain(..).collect();
        for w in waiters {
            let w = w.bind(py);
            if let Ok(false) = w
                .call_method0(intern!(py, "done"))
                .and_then(|d| d.is_truthy())
            {
                let _ = w.call_method1(intern!(py, "set_result"), (true,));
            }
        }
    }

    /// Appends submitted and not yet answered by the writer.
    pub fn pending(&self) -> usize {
        self.log.pending() + self.invalid_writes.load(Ordering::Acquire)
    }

    /// True when no write and no start-time redelivery is in progress.
    pub fn is_quiet(&self) -> bool {
        self.pending() == 0 && self.redelivering.load(Ordering::Acquire) == 0
    }

    /// A start-time redelivery finished.
    pub fn redelivery_done(&self) {
        self.redelivering.fetch_sub(1, Ordering::AcqRel);
        self.inbox.wake();
    }

    /// Whether new publishes are refused because the bus is stopping.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Refuse (`true`) or accept again (`false`) new publishes.
    pub fn set_closing(&self, v: bool) {
        self.closing.store(v, Ordering::Release);
    }

    /// The names of the consumers on `route`, shared with the previous event's when the
    /// route is the same.
    fn targets(&self, route: &Arc<Route<AcceptedEvent>>) -> Targets {
        let mut last = self.last_targets.lock();
        match &*last {
            Some((r, t)) if std::ptr::eq(r.as_ptr(), Arc::as_ptr(route)) => t.clone(),
            _ => {
                let t: Targets = route
                    .lanes
                    .iter()
                    .map(|l| l.config.name.to_string())
                    .collect();
                *last = Some((Arc::downgrade(route), t.clone()));
                t
            }
        }
    }

    /// Stores `eref` (routed to `lanes`), then dispatches it and calls `done` from the
    /// writer thread. Returns `Err` (and does not call `done`) if the event could not
    /// even be queued for the writer.
    pub fn submit(
        &self,
        py: Python<'_>,
        engine: &Engine<AcceptedEvent>,
        mut eref: AcceptedEvent,
        route: Arc<Route<AcceptedEvent>>,
        done: Answer,
    ) -> PyResult<Result<(), String>> {
        let stored = stored_event(py, &eref, &self.names)?;
        let targets = self.targets(&route);
        let row = match self.log.store.prepare(stored, targets) {
            Ok(row) => row,
            Err(e) => return Ok(Err(format!("event not stored, not dispatched: {e}"))),
        };
        let sref = self.log.new_ref();
        eref.durable = Some(sref.clone());
        if self.log.is_full() {
            // NOTE: back-pressure when the disk is slower than the publishers. The
            // writer makes room without the GIL; release it meanwhile.
            py.detach(|| self.log.wait_for_room());
        }
        self.log.submit(engine, row, eref, route, sref, done);
        Ok(Ok(()))
    }

    /// `done` for an awaitable `publish`: completes `fut` on the loop, logging failures.
    pub fn done_future(&self, fut: Py<PyAny>) -> Answer {
        let inbox = self.inbox.clone();
        Answer::Call(Box::new(move |outcome| {
            inbox.call_soon(Box::new(move |py| {
                let ok = match outcome {
                    Ok(ok) => ok,
                    Err(msg) => {
                        log_error(py, &format!("publish failed: {msg}"));
                        false
                    }
                };
                // NOTE: no `done()` check first (one call per event less): a future
                // already done (its publisher was cancelled) refuses with
                // InvalidStateError, which is dropped here, as the check would.
                let _ = fut.bind(py).call_method1(intern!(py, "set_result"), (ok,));
            }));
        }))
    }

    /// `done` that only logs failures (async durability: publish already returned).
    pub fn done_log(&self) -> Answer {
        Answer::Log
    }

    /// Adds a future completed once no append is in flight.
    pub fn add_drain_waiter(&self, py: Python<'_>, fut: Py<PyAny>) {
        self.waiters.lock().push(fut);
        if self.pending() == 0 {
            self.resolve_waiters(py);
        }
    }

    /// Sends collected acks and waits until everything queued is on disk.
    pub fn flush(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.log.flush())
            .map_err(|e| persistence_error(&e))
    }

    /// Records one dead letter (the event was dead-lettered for `consumer`).
    pub fn put_dead_letter(
        &self,
        py: Python<'_>,
        eref: &AcceptedEvent,
        consumer: &str,
        errors: Vec<String>,
        attempts: u32,
    ) {
        let stored = match stored_event(py, eref, &self.names) {
            Ok(s) => s,
            Err(e) => return e.print(py),
        };
        let store = self.log.store.clone();
        let consumer = consumer.to_owned();
        // NOTE: the store answers after the commit; never wait for that on the loop.
        runtime().spawn_blocking(move || {
            if let Err(e) = store.put_dead_letter(&stored, &consumer, &errors, attempts) {
                eprintln!("mpm_events: cannot store a dead letter: {e}");
            }
        });
    }

    /// Records the dead letter of an event refused by a "dead_letter" schema (it is
    /// never stored as an event, so never delivered nor redelivered); once the store
    /// has it, the dead letter joins `engine`'s (as on the memory bus) and `done` is
    /// answered: `Ok(true)`, or the store's error (then it is in neither).
    pub fn put_invalid(
        self: &Arc<Self>,
        py: Python<'_>,
        engine: &Engine<AcceptedEvent>,
        eref: AcceptedEvent,
        errors: Vec<String>,
        done: Answer,
    ) -> PyResult<()> {
        let stored = stored_event(py, &eref, &self.names)?;
        let store = self.log.store.clone();
        let engine = engine.downgrade();
        self.invalid_writes.fetch_add(1, Ordering::AcqRel);
        let me = self.clone();
        // NOTE: the store answers after the commit; never wait for that on the loop.
        runtime().spawn_blocking(move || {
            let consumer = super::schemas::SCHEMA_CONSUMER;
            let r = store
                .put_dead_letter(&stored, consumer, &errors, 0)
                .map(|_| true)
                .map_err(|e| format!("the dead letter of an invalid event was not stored: {e}"));
            if r.is_ok() {
                if let Some(engine) = engine.upgrade() {
                    // NOTE: `eref.durable` is None, so the store's dead-letter listener
                    // skips this one (stored just above); DeadLetterConsumers get it.
                    let _ = engine.dead_letter_now(Arc::new(eref), consumer.into(), errors);
                }
            }
            match done {
                Answer::Call(f) => f(r),
                Answer::Log => {
                    if let Err(msg) = r {
                        me.inbox.call_soon(Box::new(move |py| {
                            log_error(py, &format!("publish failed: {msg}"))
                        }));
                    }
                }
            }
            // NOTE: as the writer's `drained` hook: join() and stop() wait for it.
            if me.invalid_writes.fetch_sub(1, Ordering::AcqRel) == 1 {
                me.inbox.wake();
                if !me.waiters.lock().is_empty() {
                    let p = me.clone();
                    me.inbox
                        .call_soon(Box::new(move |py| p.resolve_waiters(py)));
                }
            }
        });
        Ok(())
    }

    /// The highest stored seq: what [`Persistence::unacked`] is limited to, so that live
    /// events (higher seqs, not acknowledged yet) are not delivered twice.
    pub fn watermark(&self) -> PyResult<i64> {
        self.log.store.last_seq().map_err(|e| persistence_error(&e))
    }

    /// Stored events up to seq `upto` that some of `names` have not acknowledged
    /// (flushes acks first).
    pub fn unacked(&self, py: Python<'_>, names: Vec<String>, upto: i64) -> PyResult<StoredBatch> {
        self.flush(py)?;
        let store = self.log.store.clone();
        let rows = py
            .detach(move || store.unacked(&names))
            .map_err(|e| persistence_error(&e))?;
        Ok(StoredBatch {
            rows: Mutex::new(rows.into_iter().filter(|(e, _)| e.seq <= upto).collect()),
            replay: false,
        })
    }

    /// Stored events in a time window whose topic matches one of `patterns`, all for
    /// consumer `to`.
    pub fn replay(
        &self,
        py: Python<'_>,
        since_us: Option<i64>,
        until_us: Option<i64>,
        patterns: Vec<crate::topic::Pattern>,
        to: String,
    ) -> PyResult<StoredBatch> {
        self.log.acks.flush();
        let store = self.log.store.clone();
        let rows = py
            .detach(move || {
                store.replay(since_us, until_us, &|t| {
                    patterns.is_empty() || patterns.iter().any(|p| p.matches(t))
                })
            })
            .map_err(|e| persistence_error(&e))?;
        Ok(StoredBatch {
            rows: Mutex::new(rows.into_iter().map(|e| (e, vec![to.clone()])).collect()),
            replay: true,
        })
    }

    /// Pushes rows of `batch` into the engine (to the lanes `lane_of` finds for their
    /// consumer names) until the queue is full. Returns how many were pushed.
    pub fn push(
        &self,
        py: Python<'_>,
        engine: &Engine<AcceptedEvent>,
        batch: &StoredBatch,
        lane_of: impl Fn(&str) -> Option<Arc<Lane<AcceptedEvent>>>,
    ) -> PyResult<usize> {
        let counter = if batch.replay {
            &self.replayed
        } else {
            &self.redelivered
        };
        push_rows(
            py,
            engine,
            batch,
            lane_of,
            Some(&|seq| {
                let durable = self.log.new_ref();
                durable.stored_as(seq);
                durable
            }),
            counter,
        )
    }

    /// `persistence_stats()`.
    pub fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let store = self.log.store.clone();
        let s = py
            .detach(move || store.stats())
            .map_err(|e| persistence_error(&e))?;
        let d = PyDict::new(py);
        d.set_item("path", self.path.to_string_lossy().into_owned())?;
        d.set_item("durability", if self.sync { "sync" } else { "async" })?;
        d.set_item("stored_events", s.events)?;
        d.set_item("stored_bytes", s.total_bytes)?;
        d.set_item("pending_deliveries", s.pending_deliveries)?;
        d.set_item("stored_dead_letters", s.dead_letters)?;
        d.set_item("background_write_errors", s.async_errors)?;
        d.set_item("write_failures", self.log.failures())?;
        d.set_item("writes_in_flight", self.pending())?;
        d.set_item("acks_written", self.log.acks.sent())?;
        d.set_item("redelivered", self.redelivered.load(Ordering::Relaxed))?;
        d.set_item("replayed", self.replayed.load(Ordering::Relaxed))?;
        Ok(d)
    }

    /// `apply_retention()`.
    pub fn apply_retention<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let store = self.log.store.clone();
        let r = py
            .detach(move || store.apply_retention())
            .map_err(|e| persistence_error(&e))?;
        let d = PyDict::new(py);
        d.set_item("deleted_by_age", r.deleted_by_age)?;
        d.set_item("deleted_by_size", r.deleted_by_size)?;
        d.set_item("bytes_before", r.bytes_before)?;
        d.set_item("bytes_after", r.bytes_after)?;
        Ok(d)
    }

    /// `get_stored_dead_letters()`.
    pub fn dead_letters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let store = self.log.store.clone();
        let rows = py
            .detach(move || store.dead_letters())
            .map_err(|e| persistence_error(&e))?;
        let list = PyList::empty(py);
        for r in rows {
            let d = PyDict::new(py);
            d.set_item("id", r.id)?;
            d.set_item("event", py_event(py, &r.event)?)?;
            d.set_item("consumer", r.consumer)?;
            d.set_item("errors", r.errors)?;
            d.set_item("attempts", r.attempts)?;
            d.set_item(
                "failed_at",
                DateTime::<Utc>::from_timestamp_micros(r.failed_us),
            )?;
            list.append(d)?;
        }
        Ok(list)
    }
}

/// Stored events waiting to be pushed into the engine (restart redelivery or replay).
#[pyclass(module = "mpm_events._core", name = "_StoredBatch", frozen)]
pub struct StoredBatch {
    rows: Mutex<VecDeque<(StoredEvent, Vec<String>)>>,
    replay: bool,
}

impl StoredBatch {
    /// Keeps only the rows whose event `rule` matches (`replay(rule=)`).
    pub fn retain_matching(&self, rule: &crate::rules::Rule) {
        self.rows
            .lock()
            .retain(|(e, _)| rule.matches_doc(&crate::rules::stored_doc(e)));
    }

    /// A replay of `rows`, all for consumer `to`.
    pub fn for_replay(rows: Vec<StoredEvent>, to: &str) -> StoredBatch {
        StoredBatch {
            rows: Mutex::new(rows.into_iter().map(|e| (e, vec![to.to_owned()])).collect()),
            replay: true,
        }
    }
}

#[pymethods]
impl StoredBatch {
    /// Rows not pushed yet.
    #[getter]
    fn remaining(&self) -> usize {
        self.rows.lock().len()
    }
}

/// Pushes rows of `batch` into the engine (to the lanes `lane_of` finds for their
/// consumer names) until the queue is full; each event gets the acknowledgement
/// target `durable` makes from its seq (none without it: a replay from a shared log).
/// Returns how many were pushed, counted in `counter` too.
pub fn push_rows(
    py: Python<'_>,
    engine: &Engine<AcceptedEvent>,
    batch: &StoredBatch,
    lane_of: impl Fn(&str) -> Option<Arc<Lane<AcceptedEvent>>>,
    durable: Option<&dyn Fn(i64) -> Arc<crate::durable::StoredRef>>,
    counter: &AtomicU64,
) -> PyResult<usize> {
    let mut pushed = 0;
    loop {
        let Some((ev, names)) = batch.rows.lock().pop_front() else {
            return Ok(pushed);
        };
        let lanes: Vec<_> = names.iter().filter_map(|n| lane_of(n)).collect();
        if lanes.is_empty() {
            continue;
        }
        let obj = py_event(py, &ev)?;
        let (mut eref, ()) = AcceptedEvent::accept(py, obj, crate::clock::now(), |topic| {
            crate::topic::validate_topic(topic).map(|()| (Arc::from(topic), ()))
        })?;
        eref.durable = durable.map(|f| f(ev.seq));
        if batch.replay {
            // NOTE: a lane serves higher event priorities first; one level for the
            // whole replay keeps it in store order (the Event keeps its priority).
            eref.priority = 4;
        }
        let need = lanes
            .iter()
            .map(|l| l.config.copy_needs())
            .max()
            .unwrap_or_default();
        if need != ViewNeeds::Nothing {
            eref.view = Some(Arc::new(build_view(
                py,
                &eref,
                need == ViewNeeds::FieldsAndData,
            )?));
        }
        match engine.publish_to(Arc::new(eref), &lanes) {
            Ok(()) => {
                pushed += 1;
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Err(Rejected::QueueFull) => {
                batch.rows.lock().push_front((ev, names));
                return Ok(pushed);
            }
            Err(Rejected::NotRunning) => {
                batch.rows.lock().push_front((ev, names));
                return Err(pyo3::exceptions::PyRuntimeError::new_err(
                    "the bus stopped while stored events were being delivered",
                ));
            }
        }
    }
}

/// The store's copy of an accepted event.
pub fn stored_event(
    py: Python<'_>,
    eref: &AcceptedEvent,
    names: &Mutex<ViewMemo>,
) -> PyResult<StoredEvent> {
    let seq = eref.durable.as_ref().map_or(0, |d| d.seq());
    // NOTE: a producer-made event with a packed payload is stored from its fields,
    // without making the `Event` object (which a Python consumer may never need).
    if let Origin::Parts(p) = eref.origin(py) {
        if let PartsData::Packed(json) = &p.data {
            let (event_type, source) = {
                let mut memo = names.lock();
                (
                    interned(&mut memo.type_, &p.type_.bind(py).to_cow()?),
                    interned(&mut memo.source, &hook_source(py).to_cow()?),
                )
            };
            return Ok(StoredEvent {
                seq,
                id: uuid_text(&p.id),
                topic: eref.topic.clone(),
                event_type,
                source,
                timestamp_us: p.timestamp().timestamp_micros(),
                published_us: crate::clock::now_unix_micros(),
                priority: eref.priority,
                correlation_id: match &p.correlation_id {
                    Some(c) => Some(c.bind(py).to_cow()?.into_owned()),
                    None => None,
                },
                data_json: json.as_bytes().to_vec(),
            });
        }
    }
    let e = eref.event(py)?.borrow(py);
    let data = match &e.data {
        // NOTE: a payload packed at publish already is JSON text: store it as is rather
        // than parsing it into a Value and serializing that again.
        crate::python::model::Payload::Packed(json, _) => json.as_bytes().to_vec(),
        crate::python::model::Payload::Object(_) => {
            let view = match &eref.view {
                Some(v) if v.data.is_some() => v.clone(),
                _ => Arc::new(build_view(py, eref, true)?),
            };
            match &view.data {
                Some(d) => serde_json::to_vec(d)
                    .map_err(|err| crate::python::runtime::errors::event_error(err.to_string()))?,
                None => {
                    return Err(crate::python::runtime::errors::event_error(format!(
                        "event {} cannot be stored: {}",
                        e.id.text(py),
                        view.data_error
                            .as_deref()
                            .unwrap_or("payload not convertible to JSON")
                    )))
                }
            }
        }
    };
    let (event_type, source) = {
        let mut memo = names.lock();
        (
            interned(&mut memo.type_, &e.type_.bind(py).to_cow()?),
            interned(&mut memo.source, &e.source.bind(py).to_cow()?),
        )
    };
    Ok(StoredEvent {
        // NOTE: known once the store has answered; lets a dead letter find its
        // pending delivery by primary key.
        seq,
        id: e.id.text(py),
        topic: eref.topic.clone(),
        event_type,
        source,
        timestamp_us: e.timestamp.to_utc().timestamp_micros(),
        published_us: crate::clock::now_unix_micros(),
        priority: e.priority,
        correlation_id: match &e.correlation_id {
            Some(c) => Some(c.bind(py).to_cow()?.into_owned()),
            None => None,
        },
        data_json: data,
    })
}

/// A Python `Event` rebuilt from the store, with its original id.
pub fn py_event(py: Python<'_>, ev: &StoredEvent) -> PyResult<Py<Event>> {
    let loads = JSON_LOADS.import(py, "json", "loads")?;
    let data = loads.call1((PyBytes::new(py, &ev.data_json),))?;
    let kw = PyDict::new(py);
    kw.set_item("id", &ev.id)?;
    kw.set_item("topic", &*ev.topic)?;
    kw.set_item("type", &*ev.event_type)?;
    kw.set_item(
        "timestamp",
        DateTime::<Utc>::from_timestamp_micros(ev.timestamp_us).unwrap_or_else(Utc::now),
    )?;
    kw.set_item("source", &*ev.source)?;
    kw.set_item("data", data)?;
    kw.set_item("correlation_id", &ev.correlation_id)?;
    kw.set_item("priority", ev.priority)?;
    Ok(py
        .get_type::<Event>()
        .call((), Some(&kw))?
        .cast_into::<Event>()?
        .unbind())
}

/// `publish` with persistence. Sync durability: an awaitable completed by the writer's
/// callback (through the inbox) once the event is on disk. Async: an already-complete
/// awaitable.
pub fn publish(
    p: &Arc<Persistence>,
    py: Python<'_>,
    event_loop: Option<Py<PyAny>>,
    submit: impl FnOnce(Answer) -> PyResult<Result<(), String>>,
) -> PyResult<Py<PyAny>> {
    let refused = |py: Python<'_>, msg: String| {
        if !msg.is_empty() {
            log_error(py, &format!("publish failed: {msg}"));
        }
        Ready::of_bool(py, false).into_any()
    };
    if !p.sync {
        return Ok(match submit(p.done_log())? {
            Ok(()) => Ready::of_bool(py, true).into_any(),
            Err(msg) => refused(py, msg),
        });
    }
    let Some(event_loop) = event_loop else {
        return Ok(match submit(Answer::Call(Box::new(|_| {})))? {
            // NOTE: not reachable (no loop means not started), kept total.
            Ok(()) => Ready::of_bool(py, true).into_any(),
            Err(msg) => refused(py, msg),
        });
    };
    let fut = event_loop
        .bind(py)
        .call_method0(intern!(py, "create_future"))?;
    match submit(p.done_future(fut.clone().unbind()))? {
        Ok(()) => {
            let it = fut.call_method0(intern!(py, "__await__"))?.unbind();
            Ok(Py::new(py, Pending { it })?.into_any())
        }
        Err(msg) => Ok(refused(py, msg)),
    }
}

/// `publish_nowait` with persistence: blocks (GIL released) until the event is stored
/// (sync durability) or queued (async).
pub fn publish_blocking(
    p: &Arc<Persistence>,
    py: Python<'_>,
    submit: impl FnOnce(Answer) -> PyResult<Result<(), String>>,
) -> PyResult<bool> {
    if !p.sync {
        return Ok(match submit(p.done_log())? {
            Ok(()) => true,
            Err(msg) => {
                if !msg.is_empty() {
                    log_error(py, &format!("publish failed: {msg}"));
                }
                false
            }
        });
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let r = submit(Answer::Call(Box::new(move |o| {
        let _ = tx.send(o);
    })))?;
    let outcome = match r {
        Ok(()) => py
            .detach(move || rx.recv())
            .unwrap_or_else(|_| Err("the event store stopped".into())),
        Err(msg) => Err(msg),
    };
    Ok(match outcome {
        Ok(ok) => ok,
        Err(msg) => {
            if !msg.is_empty() {
                log_error(py, &format!("publish failed: {msg}"));
            }
            false
        }
    })
}

/// Builds [`PersistOptions`] from the `EventBus` keyword arguments.
#[allow(clippy::too_many_arguments)]
pub fn options(
    path: Option<PathBuf>,
    durability: &str,
    flush_interval: f64,
    max_age: Option<&Bound<'_, PyAny>>,
    max_bytes: Option<u64>,
    compress_threshold: usize,
    retention_interval: Option<f64>,
    hard_limit_bytes: Option<u64>,
) -> PyResult<PersistOptions> {
    use pyo3::exceptions::PyValueError;
    let sync = match durability {
        "sync" => true,
        "async" => false,
        other => {
            return Err(PyValueError::new_err(format!(
                "durability must be \"sync\" or \"async\", got {other:?}"
            )))
        }
    };
    let secs = |v: f64, what: &str| -> PyResult<Duration> {
        if v.is_finite() && v > 0.0 {
            Ok(Duration::from_secs_f64(v))
        } else {
            Err(PyValueError::new_err(format!(
                "{what} must be a positive number of seconds, got {v}"
            )))
        }
    };
    let max_age = match max_age {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => {
            // NOTE: a timedelta or a number of seconds.
            let s: f64 = match v.call_method0("total_seconds") {
                Ok(t) => t.extract()?,
                Err(_) => v.extract().map_err(|_| {
                    PyValueError::new_err("retention_max_age must be a timedelta or seconds")
                })?,
            };
            Some(secs(s, "retention_max_age")?)
        }
    };
    Ok(PersistOptions {
        path: match path {
            Some(p) => p,
            None => default_path()?,
        },
        sync,
        flush_interval: secs(flush_interval, "flush_interval")?,
        max_age,
        max_bytes,
        retention_interval: retention_interval
            .map(|v| secs(v, "retention_interval"))
            .transpose()?,
        compress_threshold,
        hard_limit_bytes,
    })
}

/// Stores every dead letter of `engine` (and drops its pending delivery, so it is not
/// redelivered at restart). The copy is made on the event loop, where the payload can
/// be read; if the bus is gone before that, the delivery stays pending and comes back
/// at restart instead (at-least-once either way).
pub fn listen_dead_letters(
    p: &Arc<Persistence>,
    engine: &Engine<AcceptedEvent>,
    inbox: &Arc<Inbox>,
) {
    let (weak, inbox) = (Arc::downgrade(p), Arc::downgrade(inbox));
    engine.add_dead_letter_listener(move |letter| {
        if letter
            .event
            .durable
            .as_ref()
            .is_none_or(|d| d.is_log_entry())
        {
            return;
        }
        let (Some(inbox), weak) = (inbox.upgrade(), weak.clone()) else {
            return;
        };
        let letter = letter.clone();
        inbox.call_soon(Box::new(move |py| {
            if let Some(p) = weak.upgrade() {
                p.put_dead_letter(
                    py,
                    &letter.event,
                    &letter.consumer,
                    letter.errors.clone(),
                    letter.attempts,
                );
            }
        }));
    });
}
