//! `enable_persistence=True`: the glue between the Python bus and the durable store
//! ([`crate::storage::Store`]). See `docs/persistence.md` for the guarantees.
//!
//! * Publishing: the event is copied into a [`StoredEvent`] (on the publisher's thread,
//!   with the GIL) and queued in the bus's [`Outbox`]; the store's writer takes the
//!   whole outbox at once (`Store::append_from`) and its callback (on the writer thread,
//!   without the GIL) dispatches the batch into the engine once it is committed
//!   (fsynced in `"sync"` mode) and then answers each publisher (through the [`Inbox`]
//!   for awaitables). So many concurrent `publish` calls share one group commit, and
//!   nothing is dispatched that is not stored.
//! * Acknowledgements: [`Acks`] collects (seq, consumer) pairs from
//!   `EventLike::on_handled` and sends them to the store in batches (never fsynced on
//!   their own: a lost ack means one redelivery).
//! * Restart redelivery and replay read rows into a [`StoredBatch`] off the event loop;
//!   the bus then pushes them into the engine as the queue bound allows.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::{Condvar, Mutex};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList};

use super::bus::Ready;
use super::errors::PersistenceError;
use super::event::{hook_source, uuid_text, Event, EventRef, PartsData, Source};
use super::executor::Inbox;
use super::native::{build_view, interned, ViewMemo};
use super::{log_error, runtime};
use crate::dispatch::{Engine, Lane, Rejected, Route, ViewNeeds};
use crate::storage::{
    AckKey, AppendSource, Durability, Reply, StorageError, Store, StoreOptions, StoredEvent,
    Targets,
};

static JSON_LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Acks are sent to the store once this many are collected (or by the flusher task).
const ACK_BATCH: usize = 1024;
/// How often collected acks are sent at the latest.
const ACK_FLUSH: Duration = Duration::from_millis(20);

/// A storage error as a Python `PersistenceError` (the message names the path).
pub fn persistence_error(e: &StorageError) -> PyErr {
    PersistenceError::new_err(e.to_string())
}

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

/// Options of [`Persist::open`], read from the `EventBus` keyword arguments.
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

/// Collected acknowledgements, sent to the store in batches.
///
/// NOTE: holds the store weakly: events (which hold this) may be dropped on the store's
/// writer thread, and dropping the last handle of a store there would join the writer
/// from itself.
pub struct Acks {
    store: Weak<Store>,
    buf: Mutex<Vec<(AckKey, Arc<str>)>>,
    sent: AtomicU64,
}

impl Acks {
    /// Records that `consumer` handled the event stored as `key`.
    pub fn ack_key(&self, key: AckKey, consumer: &Arc<str>) {
        let full = {
            let mut b = self.buf.lock();
            b.push((key, consumer.clone()));
            b.len() >= ACK_BATCH
        };
        if full {
            self.flush();
        }
    }

    /// Sends what was collected to the store's writer (not waited for).
    pub fn flush(&self) {
        let pairs = std::mem::take(&mut *self.buf.lock());
        if pairs.is_empty() {
            return;
        }
        let n = pairs.len() as u64;
        if let Some(store) = self.store.upgrade() {
            if store.ack_keys(pairs).is_ok() {
                self.sent.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

/// An event's handle on the acknowledgements.
pub struct Durable {
    acks: Arc<Acks>,
    /// The store's sequence number once the event is stored (0 before).
    seq: std::sync::atomic::AtomicI64,
}

impl Durable {
    fn new(acks: &Arc<Acks>) -> Arc<Durable> {
        Arc::new(Durable {
            acks: acks.clone(),
            seq: std::sync::atomic::AtomicI64::new(0),
        })
    }

    /// Remembers where the event is stored, so acks delete by primary key.
    fn stored_as(&self, seq: i64) {
        self.seq.store(seq, Ordering::Release);
    }

    /// `consumer` is done with the event.
    pub fn ack(&self, consumer: &Arc<str>) {
        // NOTE: an event is dispatched only once stored (`stored_as` comes first), so
        // the seq is known; 0 would mean nothing stored, so nothing to acknowledge.
        match self.seq.load(Ordering::Acquire) {
            0 => {}
            seq => self.acks.ack_key(AckKey::Seq(seq), consumer),
        }
    }
}

/// Counters and waiters shared with the writer's callbacks (no store handle: see
/// [`Acks`]).
struct Flight {
    pending: AtomicUsize,
    failures: AtomicU64,
    waiters: Mutex<Vec<Py<PyAny>>>,
    inbox: Arc<Inbox>,
}

impl Flight {
    fn done_one(self: &Arc<Self>) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            // NOTE: join() counts writes in flight as outstanding; wake it.
            self.inbox.wake();
            if !self.waiters.lock().is_empty() {
                let me = self.clone();
                self.inbox
                    .call_soon(Box::new(move |py| me.resolve_waiters(py)));
            }
        }
    }

    fn resolve_waiters(&self, py: Python<'_>) {
        if self.pending.load(Ordering::Acquire) != 0 {
            return;
        }
        let waiters: Vec<_> = self.waiters.lock().drain(..).collect();
        for w in waiters {
            let w = w.bind(py);
            if let Ok(false) = w.call_method0("done").and_then(|d| d.is_truthy()) {
                let _ = w.call_method1("set_result", (true,));
            }
        }
    }
}

/// Most durable publishes waiting for the writer before publishers wait for room.
const OUTBOX_CAPACITY: usize = 65_536;

/// One durable publish waiting for the writer.
struct Outgoing {
    eref: EventRef,
    route: Arc<Route<EventRef>>,
    durable: Arc<Durable>,
    done: Done,
}

#[derive(Default)]
struct OutboxQueue {
    /// The rows to store, in publish order.
    rows: Vec<crate::storage::Row>,
    /// What to do with each once stored (same order).
    items: Vec<Outgoing>,
}

/// Durable publishes waiting for the store's writer, taken by it in batches.
///
/// NOTE: one channel command, one transaction and one callback per batch instead of
/// per event: those were a large share of both the publishing thread's and the
/// writer's time per event.
struct Outbox {
    queue: Mutex<OutboxQueue>,
    /// Signalled when the writer takes the queue (publishers wait for room).
    room: Condvar,
    engine: std::sync::OnceLock<Engine<EventRef>>,
    flight: Arc<Flight>,
    acks: Arc<Acks>,
}

impl AppendSource for Outbox {
    fn take(&self) -> Option<(Vec<crate::storage::Row>, Reply<Vec<i64>>)> {
        let (rows, items) = {
            let mut q = self.queue.lock();
            if q.rows.is_empty() {
                return None;
            }
            let n = q.rows.len();
            (
                std::mem::replace(&mut q.rows, Vec::with_capacity(n)),
                std::mem::replace(&mut q.items, Vec::with_capacity(n)),
            )
        };
        self.room.notify_all();
        let engine = self.engine.get().cloned();
        let flight = self.flight.clone();
        let acks = self.acks.clone();
        Some((
            rows,
            Box::new(move |res| dispatch_stored(items, res, engine, &flight, &acks)),
        ))
    }
}

/// After the writer stored (or failed to store) `items`: dispatch each stored event,
/// then answer its publisher.
fn dispatch_stored(
    items: Vec<Outgoing>,
    res: crate::storage::Result<Vec<i64>>,
    engine: Option<Engine<EventRef>>,
    flight: &Arc<Flight>,
    acks: &Acks,
) {
    match (res, engine) {
        (Ok(seqs), Some(engine)) => {
            // NOTE: one engine call for the whole batch: each lane's lock is taken and
            // its consumer woken once, not once per event.
            let mut events = Vec::with_capacity(items.len());
            let mut rest = Vec::with_capacity(items.len());
            for (item, seq) in items.into_iter().zip(seqs) {
                item.durable.stored_as(seq);
                events.push((Arc::new(item.eref), item.route.clone()));
                rest.push((seq, item.route, item.done));
            }
            let mut full = vec![false; rest.len()];
            let (_, refused) = engine.publish_many_with(events, |i| full[i] = true);
            let stopped = matches!(refused, Some(Rejected::NotRunning));
            for ((seq, route, done), full) in rest.into_iter().zip(full) {
                let outcome = if stopped {
                    // NOTE: the bus stopped meanwhile; the deliveries stay pending and
                    // are redelivered when a bus starts on this store again.
                    Ok(false)
                } else if full {
                    // NOTE: stored but not accepted: publish reports False, so the
                    // deliveries are acked to keep them from coming back at restart.
                    for l in &route.lanes {
                        acks.ack_key(AckKey::Seq(seq), &l.config.name);
                    }
                    Ok(false)
                } else {
                    Ok(true)
                };
                done.finish(&flight.inbox, outcome);
                flight.done_one();
            }
        }
        (res, _) => {
            let e = match res {
                Err(e) => e.to_string(),
                Ok(_) => "the bus has no engine".to_string(),
            };
            for item in items {
                flight.failures.fetch_add(1, Ordering::Relaxed);
                let msg = format!(
                    "event on topic {}: not stored, not dispatched: {e}",
                    item.eref.topic
                );
                item.done.finish(&flight.inbox, Err(msg));
                flight.done_one();
            }
        }
    }
}

/// The persistence state of one bus.
pub struct Persist {
    pub store: Arc<Store>,
    pub path: PathBuf,
    pub sync: bool,
    pub acks: Arc<Acks>,
    flight: Arc<Flight>,
    /// Durable publishes waiting for the writer.
    outbox: Arc<Outbox>,
    /// The consumer names of the last route stored (a route's events share one list).
    // NOTE: weak, so that a route dropped from the engine's cache (after an unsubscribe)
    // does not keep its lanes alive; the pointer cannot be reused while this is held.
    last_targets: Mutex<Option<(Weak<Route<EventRef>>, Targets)>>,
    /// The last event type and source stored, shared by the next events that have them.
    names: Mutex<ViewMemo>,
    closing: AtomicBool,
    /// Redeliveries started at `start()` and not finished (join() waits for them).
    pub redelivering: AtomicUsize,
    redelivered: AtomicU64,
    replayed: AtomicU64,
}

/// How the outcome of one durable append is reported: `Ok(true)` dispatched, `Ok(false)`
/// stored but refused by the engine, `Err(msg)` not stored.
pub enum Done {
    /// Only log a failure (async durability: `publish` already returned).
    // NOTE: no callback object per event on the hot async path.
    Log,
    /// Hand the outcome to this callback (on the writer thread).
    Call(Box<dyn FnOnce(Result<bool, String>) + Send>),
}

impl Done {
    fn finish(self, inbox: &Inbox, outcome: Result<bool, String>) {
        match self {
            Done::Log => {
                if let Err(msg) = outcome {
                    inbox.call_soon(Box::new(move |py| {
                        log_error(py, &format!("publish failed: {msg}"))
                    }));
                }
            }
            Done::Call(f) => f(outcome),
        }
    }
}

impl Persist {
    /// Opens the store; a corrupt or unreadable file raises `PersistenceError`.
    pub fn open(opts: PersistOptions, inbox: Arc<Inbox>) -> PyResult<Arc<Persist>> {
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
        let store = Arc::new(Store::open(so).map_err(|e| persistence_error(&e))?);
        let acks = Arc::new(Acks {
            store: Arc::downgrade(&store),
            buf: Mutex::new(Vec::new()),
            sent: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&acks);
        runtime().spawn(async move {
            let mut tick = tokio::time::interval(ACK_FLUSH);
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(a) => a.flush(),
                    None => return,
                }
            }
        });
        let flight = Arc::new(Flight {
            pending: AtomicUsize::new(0),
            failures: AtomicU64::new(0),
            waiters: Mutex::new(Vec::new()),
            inbox,
        });
        Ok(Arc::new(Persist {
            store,
            path: opts.path,
            sync: opts.sync,
            acks: acks.clone(),
            outbox: Arc::new(Outbox {
                queue: Mutex::new(OutboxQueue::default()),
                room: Condvar::new(),
                engine: std::sync::OnceLock::new(),
                flight: flight.clone(),
                acks: acks.clone(),
            }),
            flight,
            last_targets: Mutex::new(None),
            names: Mutex::new(ViewMemo::default()),
            closing: AtomicBool::new(false),
            redelivering: AtomicUsize::new(0),
            redelivered: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
        }))
    }

    /// Appends submitted and not yet answered by the writer.
    pub fn pending(&self) -> usize {
        self.flight.pending.load(Ordering::Acquire)
    }

    /// True when no write and no start-time redelivery is in progress.
    pub fn is_quiet(&self) -> bool {
        self.pending() == 0 && self.redelivering.load(Ordering::Acquire) == 0
    }

    /// A start-time redelivery finished.
    pub fn redelivery_done(&self) {
        self.redelivering.fetch_sub(1, Ordering::AcqRel);
        self.flight.inbox.wake();
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
    fn targets(&self, route: &Arc<Route<EventRef>>) -> Targets {
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
        engine: &Engine<EventRef>,
        mut eref: EventRef,
        route: Arc<Route<EventRef>>,
        done: Done,
    ) -> PyResult<Result<(), String>> {
        let stored = stored_event(py, &eref, &self.names)?;
        let targets = self.targets(&route);
        let row = match self.store.prepare(stored, targets) {
            Ok(row) => row,
            Err(e) => return Ok(Err(format!("event not stored, not dispatched: {e}"))),
        };
        let durable = Durable::new(&self.acks);
        eref.durable = Some(durable.clone());
        let outbox = &self.outbox;
        outbox.engine.get_or_init(|| engine.clone());
        self.flight.pending.fetch_add(1, Ordering::AcqRel);
        let item = Outgoing {
            eref,
            route,
            durable,
            done,
        };
        let was_empty = {
            let mut q = outbox.queue.lock();
            if q.rows.len() >= OUTBOX_CAPACITY {
                // NOTE: back-pressure when the disk is slower than the publishers. The
                // writer's take() makes room without the GIL; release it meanwhile.
                drop(q);
                py.detach(|| {
                    let mut q = outbox.queue.lock();
                    outbox
                        .room
                        .wait_while(&mut q, |q| q.rows.len() >= OUTBOX_CAPACITY);
                });
                q = outbox.queue.lock();
            }
            q.rows.push(row);
            q.items.push(item);
            q.rows.len() == 1
        };
        // NOTE: only the push that finds the queue empty tells the writer; it takes
        // whatever is queued by the time it gets to the command (one transaction and
        // one callback for all of them).
        if was_empty {
            if let Err(e) = self.store.append_from(outbox.clone()) {
                // The store is closed: nobody will take the queue; answer it here.
                if let Some((_, reply)) = outbox.take() {
                    reply(Err(e));
                }
            }
        }
        Ok(Ok(()))
    }

    /// `done` for an awaitable `publish`: completes `fut` on the loop, logging failures.
    pub fn done_future(&self, fut: Py<PyAny>) -> Done {
        let inbox = self.flight.inbox.clone();
        Done::Call(Box::new(move |outcome| {
            inbox.call_soon(Box::new(move |py| {
                let ok = match outcome {
                    Ok(ok) => ok,
                    Err(msg) => {
                        log_error(py, &format!("publish failed: {msg}"));
                        false
                    }
                };
                let f = fut.bind(py);
                if let Ok(false) = f.call_method0("done").and_then(|d| d.is_truthy()) {
                    let _ = f.call_method1("set_result", (ok,));
                }
            }));
        }))
    }

    /// `done` that only logs failures (async durability: publish already returned).
    pub fn done_log(&self) -> Done {
        Done::Log
    }

    /// Adds a future completed once no append is in flight.
    pub fn add_drain_waiter(&self, py: Python<'_>, fut: Py<PyAny>) {
        self.flight.waiters.lock().push(fut);
        if self.pending() == 0 {
            self.flight.resolve_waiters(py);
        }
    }

    /// Sends collected acks and waits until everything queued is on disk.
    pub fn flush(&self, py: Python<'_>) -> PyResult<()> {
        self.acks.flush();
        let store = self.store.clone();
        py.detach(move || store.flush())
            .map_err(|e| persistence_error(&e))
    }

    /// Records one dead letter (the event was dead-lettered for `consumer`).
    pub fn put_dead_letter(
        &self,
        py: Python<'_>,
        eref: &EventRef,
        consumer: &str,
        errors: Vec<String>,
        attempts: u32,
    ) {
        let stored = match stored_event(py, eref, &self.names) {
            Ok(s) => s,
            Err(e) => return e.print(py),
        };
        let store = self.store.clone();
        let consumer = consumer.to_owned();
        // NOTE: the store answers after the commit; never wait for that on the loop.
        runtime().spawn_blocking(move || {
            if let Err(e) = store.put_dead_letter(&stored, &consumer, &errors, attempts) {
                eprintln!("mpm_events: cannot store a dead letter: {e}");
            }
        });
    }

    /// The highest stored seq: what [`Persist::unacked`] is limited to, so that live
    /// events (higher seqs, not acknowledged yet) are not delivered twice.
    pub fn watermark(&self) -> PyResult<i64> {
        self.store.last_seq().map_err(|e| persistence_error(&e))
    }

    /// Stored events up to seq `upto` that some of `names` have not acknowledged
    /// (flushes acks first).
    pub fn unacked(&self, py: Python<'_>, names: Vec<String>, upto: i64) -> PyResult<StoredBatch> {
        self.flush(py)?;
        let store = self.store.clone();
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
        self.acks.flush();
        let store = self.store.clone();
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
        engine: &Engine<EventRef>,
        batch: &StoredBatch,
        lane_of: impl Fn(&str) -> Option<Arc<Lane<EventRef>>>,
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
            let (mut eref, ()) = EventRef::accept(py, obj, Utc::now(), |topic| {
                crate::topic::validate_topic(topic).map(|()| (Arc::from(topic), ()))
            })?;
            let durable = Durable::new(&self.acks);
            durable.stored_as(ev.seq);
            eref.durable = Some(durable);
            if batch.replay {
                // NOTE: a lane serves higher event priorities first; one level for the
                // whole replay keeps it in store order (the Event keeps its priority).
                eref.priority = 4;
            }
            let need = lanes
                .iter()
                .map(|l| l.config.needs_view)
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
                    let c = if batch.replay {
                        &self.replayed
                    } else {
                        &self.redelivered
                    };
                    c.fetch_add(1, Ordering::Relaxed);
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

    /// `persistence_stats()`.
    pub fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let store = self.store.clone();
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
        d.set_item(
            "write_failures",
            self.flight.failures.load(Ordering::Relaxed),
        )?;
        d.set_item("writes_in_flight", self.pending())?;
        d.set_item("acks_written", self.acks.sent.load(Ordering::Relaxed))?;
        d.set_item("redelivered", self.redelivered.load(Ordering::Relaxed))?;
        d.set_item("replayed", self.replayed.load(Ordering::Relaxed))?;
        Ok(d)
    }

    /// `apply_retention()`.
    pub fn apply_retention<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let store = self.store.clone();
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
        let store = self.store.clone();
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

impl Drop for Persist {
    fn drop(&mut self) {
        // NOTE: the store itself writes what is queued when its last handle goes.
        self.acks.flush();
    }
}

/// Stored events waiting to be pushed into the engine (restart redelivery or replay).
#[pyclass(module = "mpm_events._core", name = "_StoredBatch", frozen)]
pub struct StoredBatch {
    rows: Mutex<VecDeque<(StoredEvent, Vec<String>)>>,
    replay: bool,
}

#[pymethods]
impl StoredBatch {
    /// Rows not pushed yet.
    #[getter]
    fn remaining(&self) -> usize {
        self.rows.lock().len()
    }
}

/// The store's copy of an accepted event.
pub fn stored_event(
    py: Python<'_>,
    eref: &EventRef,
    names: &Mutex<ViewMemo>,
) -> PyResult<StoredEvent> {
    let seq = eref
        .durable
        .as_ref()
        .map_or(0, |d| d.seq.load(Ordering::Acquire));
    // NOTE: a producer-made event with a packed payload is stored from its fields,
    // without making the `Event` object (which a Python consumer may never need).
    if let Source::Parts(p) = eref.source(py) {
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
                published_us: Utc::now().timestamp_micros(),
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
        super::event::Payload::Packed(json, _) => json.as_bytes().to_vec(),
        super::event::Payload::Object(_) => {
            let view = match &eref.view {
                Some(v) if v.data.is_some() => v.clone(),
                _ => Arc::new(build_view(py, eref, true)?),
            };
            match &view.data {
                Some(d) => serde_json::to_vec(d)
                    .map_err(|err| super::errors::event_error(err.to_string()))?,
                None => {
                    return Err(super::errors::event_error(format!(
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
        published_us: Utc::now().timestamp_micros(),
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
    p: &Arc<Persist>,
    py: Python<'_>,
    event_loop: Option<Py<PyAny>>,
    submit: impl FnOnce(Done) -> PyResult<Result<(), String>>,
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
        return Ok(match submit(Done::Call(Box::new(|_| {})))? {
            // NOTE: not reachable (no loop means not started), kept total.
            Ok(()) => Ready::of_bool(py, true).into_any(),
            Err(msg) => refused(py, msg),
        });
    };
    let fut = event_loop.bind(py).call_method0("create_future")?;
    match submit(p.done_future(fut.clone().unbind()))? {
        Ok(()) => {
            let it = fut.call_method0("__await__")?.unbind();
            Ok(Py::new(py, Pending { it })?.into_any())
        }
        Err(msg) => Ok(refused(py, msg)),
    }
}

/// `publish_nowait` with persistence: blocks (GIL released) until the event is stored
/// (sync durability) or queued (async).
pub fn publish_blocking(
    p: &Arc<Persist>,
    py: Python<'_>,
    submit: impl FnOnce(Done) -> PyResult<Result<(), String>>,
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
    let r = submit(Done::Call(Box::new(move |o| {
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

/// The awaitable of a sync-durability `publish`: a coroutine (in asyncio's sense, so
/// `create_task` accepts it) that waits for the writer's answer.
#[pyclass(module = "mpm_events._core", name = "_Pending", frozen)]
pub struct Pending {
    it: Py<PyAny>,
}

#[pymethods]
impl Pending {
    fn __await__(slf: Py<Self>) -> Py<Self> {
        slf
    }
    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }
    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.it.bind(py).call_method0("__next__")
    }
    #[pyo3(signature = (value=None))]
    fn send<'py>(
        &self,
        py: Python<'py>,
        value: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let v = value.unwrap_or_else(|| py.None().into_bound(py));
        self.it.bind(py).call_method1("send", (v,))
    }
    #[pyo3(signature = (typ, val=None, tb=None))]
    fn throw<'py>(
        &self,
        py: Python<'py>,
        typ: Bound<'py, PyAny>,
        val: Option<Bound<'py, PyAny>>,
        tb: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let exc = match val {
            Some(v) if !v.is_none() => v,
            _ => typ,
        };
        let _ = tb;
        let _ = py;
        self.it.bind(exc.py()).call_method1("throw", (exc,))
    }
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.it.bind(py).call_method0("close").map(|_| ())
    }
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
pub fn listen_dead_letters(p: &Arc<Persist>, engine: &Engine<EventRef>, inbox: &Arc<Inbox>) {
    let (weak, inbox) = (Arc::downgrade(p), Arc::downgrade(inbox));
    engine.add_dead_letter_listener(move |letter| {
        if letter.event.durable.is_none() {
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
