//! Durable publishing, between publishers, the store ([`crate::storage::Store`]) and
//! the engine: nothing is dispatched that is not stored, and what a consumer handled
//! is acknowledged in the store.
//!
//! * [`DurableLog::submit`] queues a prepared row and its event in the outbox. Only
//!   the push that finds the outbox empty tells the store's writer; the writer takes
//!   the whole outbox at once (one transaction, one fsync in sync mode, one callback)
//!   and its callback, on the writer thread, dispatches the stored batch into the
//!   engine with one call and then answers each publisher ([`Answer`]).
//! * [`Acks`] collects `(seq, consumer)` pairs from the events' [`StoredRef`]s and
//!   sends them to the store in batches (never fsynced on their own: a lost ack means
//!   one redelivery).
//!
//! Plain Rust: the binding layer turns Python events into rows and answers into
//! awaitables through [`DurableHooks`].

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::dispatch::{Engine, EventLike, Rejected, Route};
use crate::storage::{AckKey, AppendSource, Reply, Row, StorageError, Store, StoreOptions};

/// Acks are sent to the store once this many are collected (or by the flusher task).
const ACK_BATCH: usize = 1024;
/// How often collected acks are sent at the latest.
const ACK_FLUSH: Duration = Duration::from_millis(20);
/// Most durable publishes waiting for the writer before publishers wait for room.
pub const OUTBOX_CAPACITY: usize = 65_536;

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

    /// Acknowledgements handed to the store so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

/// Where a consumer's acknowledgement of an entry of a shared log goes (the
/// [`crate::backend::reader::GroupReader`] of that consumer, behind the binding).
pub trait LogAcker: Send + Sync {
    /// The consumer handled entry `id` (success or filtered out).
    fn ack(&self, id: crate::backend::EntryId);
    /// The consumer gave up on entry `id`: a dead letter in the log.
    fn dead_letter(&self, id: crate::backend::EntryId, reason: &str, attempts: u32);
}

/// What an [`StoredRef`] acknowledges into.
enum AckTarget {
    /// The per-process store (`enable_persistence`): `(seq, consumer)` pairs.
    Store(Arc<Acks>),
    /// An entry of a shared log, delivered to one consumer's group reader.
    Log(Arc<dyn LogAcker>, crate::backend::EntryId),
}

/// An event's place in durable storage and the way to acknowledge it: a row of the
/// per-process store (its sequence number once stored), or an entry of a shared log.
// NOTE: one type behind one `Arc` for both, so `AcceptedEvent` keeps its size (W5).
pub struct StoredRef {
    target: AckTarget,
    /// The store's sequence number once the event is stored (0 before; 0 for a log
    /// entry).
    seq: AtomicI64,
}

impl StoredRef {
    /// A reference for an event not stored yet.
    pub fn new(acks: &Arc<Acks>) -> Arc<StoredRef> {
        Arc::new(StoredRef {
            target: AckTarget::Store(acks.clone()),
            seq: AtomicI64::new(0),
        })
    }

    /// A reference for entry `id` of a shared log, acknowledged through `acker`.
    pub fn log_entry(acker: Arc<dyn LogAcker>, id: crate::backend::EntryId) -> Arc<StoredRef> {
        Arc::new(StoredRef {
            target: AckTarget::Log(acker, id),
            seq: AtomicI64::new(0),
        })
    }

    /// Remembers where the event is stored, so acks delete by primary key.
    pub fn stored_as(&self, seq: i64) {
        self.seq.store(seq, Ordering::Release);
    }

    /// The store's sequence number (0 while not stored, and for a log entry).
    pub fn seq(&self) -> i64 {
        self.seq.load(Ordering::Acquire)
    }

    /// True for an entry of a shared log (not a row of the per-process store).
    pub fn is_log_entry(&self) -> bool {
        matches!(self.target, AckTarget::Log(..))
    }

    /// `consumer` is done with the event.
    pub fn ack(&self, consumer: &Arc<str>) {
        match &self.target {
            // NOTE: an event is dispatched only once stored (`stored_as` comes first),
            // so the seq is known; 0 would mean nothing stored, so nothing to ack.
            AckTarget::Store(acks) => match self.seq() {
                0 => {}
                seq => acks.ack_key(AckKey::Seq(seq), consumer),
            },
            // NOTE: a log entry is delivered to exactly one consumer (its group's lane).
            AckTarget::Log(acker, id) => acker.ack(*id),
        }
    }

    /// The consumer gave up on the event: for a log entry, a dead letter in the log
    /// (returns true); a store row's dead letter is written by the binding (false).
    pub fn dead_letter(&self, reason: &str, attempts: u32) -> bool {
        match &self.target {
            AckTarget::Store(_) => false,
            AckTarget::Log(acker, id) => {
                acker.dead_letter(*id, reason, attempts);
                true
            }
        }
    }
}

/// How the outcome of one durable append reaches its publisher: `Ok(true)`
/// dispatched, `Ok(false)` stored but refused by the engine, `Err(msg)` not stored.
pub enum Answer {
    /// Only log a failure (async durability: `publish` already returned).
    // NOTE: no callback object per event on the hot async path.
    Log,
    /// Hand the outcome to this callback (on the writer thread).
    Call(Box<dyn FnOnce(Result<bool, String>) + Send>),
}

/// What the binding does for the durable log, without the GIL, on the writer thread.
pub trait DurableHooks: Send + Sync + 'static {
    /// An [`Answer::Log`] append failed.
    fn log_failure(&self, msg: String);
    /// The last append in flight was answered (`join()` and drain waiters wake).
    fn drained(&self);
}

/// One durable publish waiting for the writer.
struct Outgoing<E: EventLike> {
    event: E,
    route: Arc<Route<E>>,
    stored: Arc<StoredRef>,
    answer: Answer,
}

struct OutboxQueue<E: EventLike> {
    /// The rows to store, in publish order.
    rows: Vec<Row>,
    /// What to do with each once stored (same order).
    items: Vec<Outgoing<E>>,
}

/// Counters shared with the writer's callbacks.
struct Flight {
    pending: AtomicUsize,
    failures: AtomicU64,
    hooks: Arc<dyn DurableHooks>,
}

impl Flight {
    fn done_one(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.hooks.drained();
        }
    }

    fn answer(&self, answer: Answer, outcome: Result<bool, String>) {
        match answer {
            Answer::Log => {
                if let Err(msg) = outcome {
                    self.hooks.log_failure(msg);
                }
            }
            Answer::Call(f) => f(outcome),
        }
    }
}

/// Durable publishes waiting for the store's writer, taken by it in batches.
///
/// NOTE: one channel command, one transaction and one callback per batch instead of
/// per event: those were a large share of both the publishing thread's and the
/// writer's time per event.
struct Outbox<E: EventLike> {
    queue: Mutex<OutboxQueue<E>>,
    /// Signalled when the writer takes the queue (publishers wait for room).
    room: Condvar,
    engine: OnceLock<Engine<E>>,
    flight: Arc<Flight>,
    acks: Arc<Acks>,
}

impl<E: EventLike> AppendSource for Outbox<E> {
    fn take(&self) -> Option<(Vec<Row>, Reply<Vec<i64>>)> {
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
fn dispatch_stored<E: EventLike>(
    items: Vec<Outgoing<E>>,
    res: crate::storage::Result<Vec<i64>>,
    engine: Option<Engine<E>>,
    flight: &Flight,
    acks: &Acks,
) {
    match (res, engine) {
        (Ok(seqs), Some(engine)) => {
            // NOTE: one engine call for the whole batch: each lane's lock is taken and
            // its consumer woken once, not once per event.
            let mut events = Vec::with_capacity(items.len());
            let mut rest = Vec::with_capacity(items.len());
            for (item, seq) in items.into_iter().zip(seqs) {
                item.stored.stored_as(seq);
                events.push((Arc::new(item.event), item.route.clone()));
                rest.push((seq, item.route, item.answer));
            }
            let mut full = vec![false; rest.len()];
            let (_, refused) = engine.publish_many_with(events, |i| full[i] = true);
            let stopped = matches!(refused, Some(Rejected::NotRunning));
            for ((seq, route, answer), full) in rest.into_iter().zip(full) {
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
                flight.answer(answer, outcome);
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
                    item.event.topic()
                );
                flight.answer(item.answer, Err(msg));
                flight.done_one();
            }
        }
    }
}

/// The durable log of one bus: the store, the outbox in front of its writer and the
/// acknowledgements.
pub struct DurableLog<E: EventLike> {
    /// The store.
    pub store: Arc<Store>,
    /// Acknowledgements waiting to be sent.
    pub acks: Arc<Acks>,
    outbox: Arc<Outbox<E>>,
}

impl<E: EventLike> DurableLog<E> {
    /// Opens the store; collected acks are flushed every 20 ms on `runtime`.
    pub fn open(
        opts: StoreOptions,
        hooks: Arc<dyn DurableHooks>,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Self, StorageError> {
        let store = Arc::new(Store::open(opts)?);
        let acks = Arc::new(Acks {
            store: Arc::downgrade(&store),
            buf: Mutex::new(Vec::new()),
            sent: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&acks);
        runtime.spawn(async move {
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
            hooks,
        });
        Ok(DurableLog {
            store,
            acks: acks.clone(),
            outbox: Arc::new(Outbox {
                queue: Mutex::new(OutboxQueue {
                    rows: Vec::new(),
                    items: Vec::new(),
                }),
                room: Condvar::new(),
                engine: OnceLock::new(),
                flight,
                acks,
            }),
        })
    }

    /// A reference for an event about to be submitted.
    pub fn new_ref(&self) -> Arc<StoredRef> {
        StoredRef::new(&self.acks)
    }

    /// Appends submitted and not yet answered by the writer.
    pub fn pending(&self) -> usize {
        self.outbox.flight.pending.load(Ordering::Acquire)
    }

    /// Appends that could not be stored.
    pub fn failures(&self) -> u64 {
        self.outbox.flight.failures.load(Ordering::Relaxed)
    }

    /// True when [`OUTBOX_CAPACITY`] publishes wait for the writer: the caller should
    /// [`DurableLog::wait_for_room`] (without the GIL) before submitting.
    pub fn is_full(&self) -> bool {
        self.outbox.queue.lock().rows.len() >= OUTBOX_CAPACITY
    }

    /// Blocks until the writer has taken the outbox (back-pressure when the disk is
    /// slower than the publishers).
    pub fn wait_for_room(&self) {
        let mut q = self.outbox.queue.lock();
        self.outbox
            .room
            .wait_while(&mut q, |q| q.rows.len() >= OUTBOX_CAPACITY);
    }

    /// Queues `row` (made by [`Store::prepare`]) and its `event` for the writer; once
    /// stored, the event is dispatched on `route` into `engine` and `answer` is told
    /// (on the writer thread). `stored` must be the event's own [`StoredRef`].
    pub fn submit(
        &self,
        engine: &Engine<E>,
        row: Row,
        event: E,
        route: Arc<Route<E>>,
        stored: Arc<StoredRef>,
        answer: Answer,
    ) {
        let outbox = &self.outbox;
        outbox.engine.get_or_init(|| engine.clone());
        outbox.flight.pending.fetch_add(1, Ordering::AcqRel);
        let was_empty = {
            let mut q = outbox.queue.lock();
            q.rows.push(row);
            q.items.push(Outgoing {
                event,
                route,
                stored,
                answer,
            });
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
    }

    /// Sends collected acks and waits until everything queued is on disk.
    pub fn flush(&self) -> Result<(), StorageError> {
        self.acks.flush();
        self.store.flush()
    }
}

impl<E: EventLike> Drop for DurableLog<E> {
    fn drop(&mut self) {
        // NOTE: the store itself writes what is queued when its last handle goes.
        self.acks.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::{Executor, Job, LaneConfig, Outcome};
    use crate::retry::RetryPolicy;
    use crate::storage::{StoredEvent, Targets};
    use crate::topic::Pattern;
    use std::sync::mpsc;
    use std::time::Instant;

    struct Ev {
        topic: Arc<str>,
        stored: Arc<StoredRef>,
    }

    impl EventLike for Ev {
        fn topic(&self) -> &str {
            &self.topic
        }
        fn priority(&self) -> u8 {
            3
        }
        fn on_retry(&self, _: u32) {}
        fn on_success(&self, _: &Arc<str>) {}
        fn on_failure(&self, _: &Arc<str>, _: &str) {}
        fn on_handled(&self, consumer: &Arc<str>) {
            self.stored.ack(consumer);
        }
    }

    /// Succeeds at once, on the calling thread.
    struct Inline;
    impl Executor<Ev> for Inline {
        fn execute(&self, job: Arc<Job<Ev>>) {
            job.record_all(job.items.iter().map(|_| Outcome::Success));
            job.finish();
        }
    }

    #[derive(Default)]
    struct Hooks {
        drained: AtomicUsize,
        logged: Mutex<Vec<String>>,
    }
    impl DurableHooks for Hooks {
        fn log_failure(&self, msg: String) {
            self.logged.lock().push(msg);
        }
        fn drained(&self) {
            self.drained.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn stored_event(topic: &str, i: usize) -> StoredEvent {
        StoredEvent {
            seq: 0,
            id: format!("id-{i}"),
            topic: topic.into(),
            event_type: "T".into(),
            source: "s".into(),
            timestamp_us: 1_700_000_000_000_000 + i as i64,
            published_us: 1_700_000_000_000_000 + i as i64,
            priority: 3,
            correlation_id: None,
            data_json: br#"{"i":1}"#.to_vec(),
        }
    }

    fn setup(
        rt: &tokio::runtime::Runtime,
        dir: &std::path::Path,
    ) -> (Engine<Ev>, DurableLog<Ev>, Arc<Hooks>) {
        let engine: Engine<Ev> = Engine::new(rt.handle().clone(), 1000, 100);
        engine.add_lane(
            LaneConfig {
                name: "c".into(),
                priority: 3,
                batch_size: 1,
                batch_timeout: Duration::ZERO,
                retry: RetryPolicy::default(),
                timeout: Duration::from_secs(30),
                engine_timeout: false,
                chunk: 64,
                needs_view: crate::dispatch::ViewNeeds::Nothing,
                honours_cut: true,
                ordered: false,
                rule: None,
            },
            vec![Pattern::parse("**").unwrap()],
            None,
            Arc::new(Inline),
        );
        let hooks = Arc::new(Hooks::default());
        let log = DurableLog::open(
            StoreOptions::new(dir.join("events.db")),
            hooks.clone(),
            rt.handle(),
        )
        .unwrap();
        (engine, log, hooks)
    }

    fn submit(
        engine: &Engine<Ev>,
        log: &DurableLog<Ev>,
        i: usize,
        tx: &mpsc::Sender<Result<bool, String>>,
    ) {
        let route = engine.route_topic("a.b").unwrap();
        let targets: Targets = route
            .lanes
            .iter()
            .map(|l| l.config.name.to_string())
            .collect();
        let row = log.store.prepare(stored_event("a.b", i), targets).unwrap();
        let stored = log.new_ref();
        let ev = Ev {
            topic: route.topic.clone(),
            stored: stored.clone(),
        };
        let tx = tx.clone();
        let answer = Answer::Call(Box::new(move |o| {
            let _ = tx.send(o);
        }));
        log.submit(engine, row, ev, route, stored, answer);
    }

    fn wait_until(mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "condition not met in time");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn stored_events_are_dispatched_answered_and_acked() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (engine, log, hooks) = setup(&rt, dir.path());
        engine.start();
        let (tx, rx) = mpsc::channel();
        for i in 0..50 {
            submit(&engine, &log, i, &tx);
        }
        let answers: Vec<_> = (0..50)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        assert!(answers.iter().all(|a| *a == Ok(true)));
        wait_until(|| engine.is_idle() && log.pending() == 0);
        assert!(hooks.drained.load(Ordering::Relaxed) >= 1);
        assert_eq!(engine.counters().processed, 50);
        log.flush().unwrap();
        assert_eq!(log.acks.sent(), 50);
        assert!(log.store.unacked(&["c".into()]).unwrap().is_empty());
        assert_eq!(log.store.stats().unwrap().events, 50);
    }

    #[test]
    fn a_stopped_engine_leaves_the_deliveries_pending_in_the_store() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (engine, log, _) = setup(&rt, dir.path());
        let (tx, rx) = mpsc::channel();
        submit(&engine, &log, 0, &tx); // the engine was never started
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), Ok(false));
        log.flush().unwrap();
        assert_eq!(log.store.unacked(&["c".into()]).unwrap().len(), 1);
    }

    #[test]
    fn a_failed_write_answers_not_stored_and_logs_async_failures() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (engine, log, hooks) = setup(&rt, dir.path());
        engine.start();
        let route = engine.route_topic("a.b").unwrap();
        let stored = log.new_ref();
        let ev = Ev {
            topic: route.topic.clone(),
            stored: stored.clone(),
        };
        let flight = Flight {
            pending: AtomicUsize::new(1),
            failures: AtomicU64::new(0),
            hooks: hooks.clone(),
        };
        let items = vec![Outgoing {
            event: ev,
            route,
            stored,
            answer: Answer::Log,
        }];
        // The writer's answer for a batch it could not store.
        dispatch_stored(
            items,
            Err(StorageError::Closed),
            Some(engine.clone()),
            &flight,
            &log.acks,
        );
        assert_eq!(flight.failures.load(Ordering::Relaxed), 1);
        let logged = hooks.logged.lock().clone();
        assert_eq!(logged.len(), 1);
        assert!(
            logged[0].contains("not stored, not dispatched"),
            "{logged:?}"
        );
        assert_eq!(hooks.drained.load(Ordering::Relaxed), 1);
        assert_eq!(engine.counters().published, 0, "nothing dispatched");
    }
}
