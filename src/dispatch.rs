//! The dispatch engine: routes published events into per-consumer lanes and
//! hands them to executors in jobs, with priority order, batching, retries with
//! backoff, timeouts, a dead-letter queue and an idle signal for `join()`.
//!
//! The engine knows nothing about Python. An [`Executor`] runs jobs (a Python
//! event loop, a worker thread, a Rust sink) and reports each item's
//! [`Outcome`] back through the [`Job`].
//!
//! Life of an event: `publish` routes it (through the [`Router`]) to the lanes of
//! the consumers whose topics match and counts it *queued* until every lane has
//! handed it out, and *outstanding* until every lane has finished with it
//! (delivered, filtered out, or dead-lettered). A lane hands out one job at a
//! time, so each consumer sees its events in priority order, and a failed item
//! waits for its retry on a timer without holding the lane back.

use crate::queue::ChunkedQueue;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use crate::dead_letter::{DeadLetter, DeadLetterQueue};
use crate::retry::RetryPolicy;
use crate::stats::ConsumerStats;
use crate::topic::{Pattern, Router};

/// Number of event priority levels (1 = CRITICAL .. 4 = LOW).
pub const PRIORITY_LEVELS: usize = 4;

/// What the engine needs to know about, and tell, an event.
pub trait EventLike: Send + Sync + 'static {
    /// The event's topic.
    fn topic(&self) -> &str;
    /// Priority, 1 (CRITICAL) to 4 (LOW).
    fn priority(&self) -> u8;
    /// Called before retry attempt `attempt` (1-based) is handed out.
    fn on_retry(&self, attempt: u32);
    /// Called when `consumer` handled the event.
    fn on_success(&self, consumer: &Arc<str>);
    /// Called when an attempt by `consumer` failed with `error`.
    fn on_failure(&self, consumer: &Arc<str>, error: &str);
    /// Called when `consumer` is done with the event: handled or filtered out
    /// (durable stores acknowledge it here).
    fn on_handled(&self, _consumer: &Arc<str>) {}
    /// The copy of the event's fields that consumers' rules are matched
    /// against (see [`LaneConfig::rule`]); None when none was made.
    fn rule_view(&self) -> Option<&crate::event::EventView> {
        None
    }
}

// NOTE: the two high bits of `Entry::unfinished` say how the event ended for the
// lanes already done with it (a flag costs no extra bytes in the entry, W5); the
// low bits count the lanes still working on it.
/// Some lane dead-lettered the event.
const ENDED_DEAD: u32 = 1 << 31;
/// Some lane released the event to the store for redelivery (durable stop).
const ENDED_RELEASED: u32 = 1 << 30;
const LANES_MASK: u32 = ENDED_RELEASED - 1;

/// MONITOR HOOK (issue 14): one finished delivery attempt, as the monitor's
/// per-event delivery history sees it.
pub struct DeliveryNote<'a, E> {
    /// The event.
    pub event: &'a Arc<E>,
    /// The consumer (lane) name.
    pub consumer: &'a Arc<str>,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// How it ended.
    pub outcome: &'a Outcome,
    /// From acceptance until the job was handed to the executor.
    pub queued: Duration,
    /// From hand-out until the outcome was processed (the whole job's, for a batch).
    pub handled: Duration,
}

/// MONITOR HOOK (issue 14): called for every finished delivery while set.
pub type DeliveryObserver<E> = Arc<dyn Fn(&DeliveryNote<'_, E>) + Send + Sync>;

/// An accepted event and its bookkeeping.
pub struct Entry<E> {
    /// The event.
    pub event: Arc<E>,
    /// Lanes that have not yet handed the event out.
    unstarted: AtomicU32,
    /// Lanes that have not yet finished with the event, plus the `ENDED_*` flags.
    unfinished: AtomicU32,
    /// When it was accepted.
    pub accepted: Instant,
}

/// One event waiting in, or handed out by, one lane.
pub struct Delivery<E> {
    /// The event.
    pub entry: Arc<Entry<E>>,
    /// Errors of earlier attempts, one per attempt (see [`Delivery::attempt`]).
    // NOTE: ThinVec: one pointer while empty; a lane holds one Delivery per
    // waiting event, and most events never fail. The attempt number is not
    // stored beside it: every failed attempt adds exactly one error, so the count
    // is the attempt, and a Delivery is 16 bytes instead of 24 (W5).
    pub errors: thin_vec::ThinVec<String>,
}

impl<E> Delivery<E> {
    /// A first attempt.
    fn new(entry: Arc<Entry<E>>) -> Self {
        Delivery {
            entry,
            errors: thin_vec::ThinVec::new(),
        }
    }

    /// 0 for the first attempt, n for the n-th retry.
    pub fn attempt(&self) -> u32 {
        self.errors.len() as u32
    }
}

/// The result of one item of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Handled.
    Success,
    /// Skipped by the consumer's filter (counts as handled).
    Filtered,
    /// Failed with this message; retried if attempts remain.
    Failure(String),
    /// Failed, and the consumer says trying again cannot help (e.g. an HTTP
    /// 400 answer): dead-lettered at once, whatever attempts remain.
    Rejected(String),
    /// Failed; retried like [`Outcome::Failure`], but not sooner than this
    /// delay (e.g. an HTTP `Retry-After`) when the policy's own is shorter.
    FailureNotBefore(String, Duration),
    /// Not attempted: the executor stopped before this item because the job was
    /// cut (the bus is stopping or the consumer unsubscribed). The message says
    /// why; the item is not counted as a failed attempt.
    Cancelled(String),
}

/// What an executor needs copied out of each event at publish time, while the
/// publisher holds the event (the engine itself ignores it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum ViewNeeds {
    /// Nothing: the executor reads the event object itself (Python consumers).
    #[default]
    Nothing,
    /// The event's fields (a Rust sink that does not read the payload).
    Fields,
    /// The fields and the payload as JSON (a Rust sink that reads it).
    FieldsAndData,
}

/// How a `consume_batch` call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchEnd {
    /// It returned: True/False (all or none handled) or a count.
    Returned {
        /// `Some(true/false)` for a bool, None for a count.
        all: Option<bool>,
        /// The count returned (ignored for a bool).
        count: i64,
        /// How the returned value reads, for the failure message.
        repr: String,
    },
    /// It raised (the description of the exception).
    Raised(String),
}

/// The outcomes of a batch job. `pre[i]` is what was decided before the call
/// (filtered out, or failed in the filter or transform), None for the events
/// passed to the call, whose indices are `members` in call order: the first
/// `handled` of them succeeded, the rest failed with the reason `end` gives.
pub fn batch_outcomes(
    pre: Vec<Option<Outcome>>,
    members: &[usize],
    end: &BatchEnd,
) -> Vec<Outcome> {
    let m = members.len();
    let (ok, failure) = match end {
        BatchEnd::Returned { all, count, repr } => {
            let ok = match all {
                Some(true) => m,
                Some(false) => 0,
                None => (*count).clamp(0, m as i64) as usize,
            };
            (
                ok,
                format!("consume_batch() reported {ok} of {m} events handled (returned {repr})"),
            )
        }
        BatchEnd::Raised(desc) => (0, format!("consume_batch() raised {desc}")),
    };
    let mut outcomes = pre;
    for (rank, i) in members.iter().enumerate() {
        if let Some(slot) = outcomes.get_mut(*i) {
            *slot = Some(if rank < ok {
                Outcome::Success
            } else {
                Outcome::Failure(failure.clone())
            });
        }
    }
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or(Outcome::Failure("no outcome".into())))
        .collect()
}

/// How an executor wants the engine to treat a lane.
#[derive(Debug, Clone)]
pub struct LaneConfig {
    /// The consumer's name.
    pub name: Arc<str>,
    /// Consumer priority, 1 (CRITICAL) to 5 (DEFERRED).
    pub priority: u8,
    /// Items per `consume_batch` call; 1 means single `consume` calls.
    pub batch_size: usize,
    /// How long a partial batch may wait for more items.
    pub batch_timeout: Duration,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Per-call timeout.
    pub timeout: Duration,
    /// When true the engine enforces `timeout` itself (for executors that cannot
    /// interrupt a call, such as a worker thread).
    pub engine_timeout: bool,
    /// Most items in one job when `batch_size == 1`.
    pub chunk: usize,
    /// True when the executor checks [`Job::is_cut`] between items; otherwise a
    /// cut job's remaining items are cancelled when it finishes.
    pub honours_cut: bool,
    /// What the executor needs copied out of each event at publish time.
    pub needs_view: ViewNeeds,
    /// A failed attempt holds the lane: nothing after it is handed out until
    /// its retry (which comes first), so the consumer sees events in the order
    /// they were queued across retries, at the cost of throughput while failing.
    pub ordered: bool,
    /// The consumer's content rule: events it does not match never enter the
    /// lane and count as filtered (see `crate::rules`).
    pub rule: Option<crate::rules::Rule>,
}

impl LaneConfig {
    /// What must be copied out of each event for this lane: what the executor
    /// needs, and the fields (with the payload if it names `data`) its rule reads.
    pub fn copy_needs(&self) -> ViewNeeds {
        let rule = match &self.rule {
            None => ViewNeeds::Nothing,
            Some(r) if r.names_field("data") => ViewNeeds::FieldsAndData,
            Some(_) => ViewNeeds::Fields,
        };
        self.needs_view.max(rule)
    }
}

/// Runs jobs for one lane. `execute` must not block: it hands the job over.
pub trait Executor<E: EventLike>: Send + Sync {
    /// Takes a job; each item's outcome is reported with [`Job::record`] and the
    /// job closed with [`Job::finish`].
    fn execute(&self, job: Arc<Job<E>>);
    /// The engine gave up on a job that overran its timeout; the executor should
    /// not let it hold the lane's next jobs back.
    fn abandon(&self) {}
    /// The lane was removed; release resources.
    fn close(&self) {}
}

struct Progress {
    outcomes: Vec<Outcome>,
    finished: bool,
    last_progress: Instant,
}

/// Items handed to an executor in one go.
pub struct Job<E: EventLike> {
    lane: Arc<Lane<E>>,
    token: u64,
    /// The items, in delivery order.
    pub items: Vec<Delivery<E>>,
    progress: Mutex<Progress>,
    cut: AtomicBool,
    /// MONITOR HOOK (issue 14): when the job was handed out (queue time ends,
    /// handler time starts), for the delivery observer.
    started: Instant,
}

impl<E: EventLike> Job<E> {
    /// The lane's configuration.
    pub fn config(&self) -> &LaneConfig {
        &self.lane.config
    }

    /// The lane this job belongs to.
    pub fn lane(&self) -> &Arc<Lane<E>> {
        &self.lane
    }

    /// How many items have an outcome.
    pub fn recorded(&self) -> usize {
        self.progress.lock().outcomes.len()
    }

    /// Records the outcome of the next item. Returns false if the job was
    /// already finished (for example abandoned after a timeout).
    pub fn record(&self, outcome: Outcome) -> bool {
        let mut p = self.progress.lock();
        if p.finished || p.outcomes.len() >= self.items.len() {
            return false;
        }
        p.outcomes.push(outcome);
        if self.lane.config.engine_timeout {
            p.last_progress = Instant::now();
        }
        true
    }

    /// Records outcomes for several consecutive items.
    pub fn record_all(&self, outcomes: impl IntoIterator<Item = Outcome>) -> bool {
        let mut p = self.progress.lock();
        if p.finished {
            return false;
        }
        for o in outcomes {
            if p.outcomes.len() >= self.items.len() {
                break;
            }
            p.outcomes.push(o);
        }
        // NOTE: only the engine's own timeout reads the time of the last progress;
        // other lanes skip the clock read.
        if self.lane.config.engine_timeout {
            p.last_progress = Instant::now();
        }
        true
    }

    /// True once the job was finished (by the executor or by a timeout).
    pub fn is_finished(&self) -> bool {
        self.progress.lock().finished
    }

    /// True once the engine asked the executor to start no further item (the bus
    /// is stopping past its deadline, or the consumer unsubscribed). The executor
    /// then calls [`Job::cancel_rest`] instead of starting the next item.
    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Acquire)
    }

    /// Closes the job, marking every item without an outcome as not attempted.
    pub fn cancel_rest(self: &Arc<Self>, why: &str) {
        {
            let mut p = self.progress.lock();
            if p.finished {
                return;
            }
            while p.outcomes.len() < self.items.len() {
                p.outcomes.push(Outcome::Cancelled(why.to_owned()));
            }
        }
        self.finish();
    }

    /// Closes the job now: the item being worked on (the first without an
    /// outcome) fails with `reason`, and the ones after it were not attempted.
    /// Used when the engine gives up waiting for a call.
    pub fn abandon(self: &Arc<Self>, reason: &str) {
        {
            let mut p = self.progress.lock();
            if p.finished {
                return;
            }
            if p.outcomes.len() < self.items.len() {
                p.outcomes.push(Outcome::Failure(reason.to_owned()));
            }
            while p.outcomes.len() < self.items.len() {
                p.outcomes.push(Outcome::Cancelled(STOPPED.to_owned()));
            }
        }
        self.finish();
    }

    /// Closes the job: items without an outcome fail with "no outcome
    /// reported". Only the first call counts.
    pub fn finish(self: &Arc<Self>) {
        self.finish_with(None);
    }

    /// Closes the job, failing every item without an outcome with `reason`.
    pub fn fail_rest(self: &Arc<Self>, reason: &str) {
        self.finish_with(Some(reason));
    }

    fn finish_with(self: &Arc<Self>, missing: Option<&str>) {
        let outcomes = {
            let mut p = self.progress.lock();
            if p.finished {
                return;
            }
            p.finished = true;
            let reason = missing.unwrap_or("the consumer reported no outcome for this event");
            // NOTE: an executor that cannot stop between items (a sink's batch)
            // has its items after a cut cancelled here, never retried.
            let cut = self.cut.load(Ordering::Acquire) && !self.lane.config.honours_cut;
            while p.outcomes.len() < self.items.len() {
                p.outcomes.push(if cut && missing.is_none() {
                    Outcome::Cancelled(STOPPED.to_owned())
                } else {
                    Outcome::Failure(reason.to_owned())
                });
            }
            std::mem::take(&mut p.outcomes)
        };
        self.lane.job_done(self, outcomes);
    }
}

struct LaneState<E: EventLike> {
    pending: [ChunkedQueue<Delivery<E>>; PRIORITY_LEVELS],
    /// An ordered lane's retries, handed out before anything in `pending`.
    front: VecDeque<Delivery<E>>,
    /// An ordered lane's retries collected from the job in flight.
    hold: Vec<Delivery<E>>,
    /// The longest retry delay among `hold`.
    hold_delay: Duration,
    /// An ordered lane waits for its retries' delay: nothing is handed out.
    holding: bool,
    len: usize,
    in_flight: Option<u64>,
    /// The job handed out (to cut or abandon it at stop).
    current: Option<Arc<Job<E>>>,
    next_token: u64,
    timer_armed: bool,
    batch_due: bool,
    closed: bool,
}

impl<E: EventLike> Default for LaneState<E> {
    fn default() -> Self {
        LaneState {
            pending: Default::default(),
            front: VecDeque::new(),
            hold: Vec::new(),
            hold_delay: Duration::ZERO,
            holding: false,
            len: 0,
            in_flight: None,
            current: None,
            next_token: 0,
            timer_armed: false,
            batch_due: false,
            closed: false,
        }
    }
}

/// One consumer's queue of deliveries.
pub struct Lane<E: EventLike> {
    /// Index of the lane in the engine.
    pub id: usize,
    /// Configuration.
    pub config: LaneConfig,
    /// Patterns the lane was subscribed with.
    pub patterns: Vec<Pattern>,
    /// Delivery statistics.
    pub stats: ConsumerStats,
    executor: Arc<dyn Executor<E>>,
    state: Mutex<LaneState<E>>,
    in_flight_items: AtomicUsize,
    shared: Weak<Shared<E>>,
}

impl<E: EventLike> Lane<E> {
    /// Items waiting in the lane.
    pub fn pending(&self) -> usize {
        self.state.lock().len
    }

    /// Items handed out and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight_items.load(Ordering::Relaxed)
    }

    fn push(self: &Arc<Self>, d: Delivery<E>) -> Option<Delivery<E>> {
        Self::enqueue(&mut self.state.lock(), d)
    }

    /// [`Lane::push`], then [`Lane::pump_in`] under the same lock.
    fn push_and_pump(
        self: &Arc<Self>,
        shared: &Arc<Shared<E>>,
        d: Delivery<E>,
    ) -> Option<Delivery<E>> {
        let mut st = self.state.lock();
        let refused = Self::enqueue(&mut st, d);
        if refused.is_none() {
            self.pump_locked(shared, st);
        }
        refused
    }

    /// Queues `d` by its priority; gives it back if the lane is closed.
    fn enqueue(st: &mut LaneState<E>, d: Delivery<E>) -> Option<Delivery<E>> {
        if st.closed {
            return Some(d);
        }
        let level = (d.entry.event.priority().clamp(1, PRIORITY_LEVELS as u8) - 1) as usize;
        st.pending[level].push_back(d);
        st.len += 1;
        None
    }

    /// Counts `n` new deliveries for this lane (not retries).
    fn count_received(&self, n: usize) {
        self.stats.received.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// An accepted event the lane's rule does not match: received, filtered,
    /// handled, never queued.
    fn skip(&self, event: &E) {
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        self.stats.filtered.fetch_add(1, Ordering::Relaxed);
        event.on_handled(&self.config.name);
    }

    /// Whether the lane's own rule (if any) matches the event.
    fn admits(&self, event: &E) -> bool {
        let Some(rule) = &self.config.rule else {
            return true;
        };
        match event.rule_view() {
            Some(v) => rule.matches_doc(&crate::rules::EventDoc::of(v, |k| rule.names_field(k))),
            None => rule.matches_doc(&serde_json::Map::new()),
        }
    }

    fn push_many(self: &Arc<Self>, ds: Vec<Delivery<E>>) -> Vec<Delivery<E>> {
        let mut st = self.state.lock();
        if st.closed {
            return ds;
        }
        for d in ds {
            let level = (d.entry.event.priority().clamp(1, PRIORITY_LEVELS as u8) - 1) as usize;
            st.pending[level].push_back(d);
            st.len += 1;
        }
        Vec::new()
    }

    /// Hands out the next job if the lane is idle and has something ready.
    fn pump(self: &Arc<Self>) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        self.pump_in(&shared);
    }

    /// [`Lane::pump`] for a caller that already holds the engine (saves the
    /// weak-reference upgrade, an atomic compare-and-swap and a decrement, per call).
    fn pump_in(self: &Arc<Self>, shared: &Arc<Shared<E>>) {
        self.pump_locked(shared, self.state.lock());
    }

    /// [`Lane::pump_in`] under the lane lock the caller already took (one lock
    /// per event instead of two where the caller just changed the state); the
    /// lock is released before the job goes to the executor.
    fn pump_locked(
        self: &Arc<Self>,
        shared: &Arc<Shared<E>>,
        mut st: parking_lot::MutexGuard<'_, LaneState<E>>,
    ) {
        let job = {
            if st.in_flight.is_some() || st.holding || st.len == 0 || st.closed {
                return;
            }
            let batch = self.config.batch_size > 1;
            let ready = !batch
                || st.len >= self.config.batch_size
                || st.batch_due
                || self.config.batch_timeout.is_zero()
                || shared.phase() != Phase::Running;
            if !ready {
                if !st.timer_armed {
                    st.timer_armed = true;
                    let lane = self.clone();
                    let wait = self.config.batch_timeout;
                    shared.runtime.spawn(async move {
                        tokio::time::sleep(wait).await;
                        {
                            let mut st = lane.state.lock();
                            st.timer_armed = false;
                            st.batch_due = true;
                        }
                        lane.pump();
                    });
                }
                return;
            }
            let limit = if batch {
                self.config.batch_size
            } else {
                self.config.chunk.max(1)
            };
            let n = limit.min(st.len);
            let mut items = Vec::with_capacity(n);
            while items.len() < n {
                match st.front.pop_front() {
                    Some(d) => items.push(d),
                    None => break,
                }
            }
            for level in 0..PRIORITY_LEVELS {
                while items.len() < n {
                    match st.pending[level].pop_front() {
                        Some(d) => items.push(d),
                        None => break,
                    }
                }
            }
            st.len -= items.len();
            st.batch_due = false;
            st.next_token += 1;
            let token = st.next_token;
            st.in_flight = Some(token);
            let started = Instant::now();
            let job = Arc::new(Job {
                lane: self.clone(),
                token,
                items,
                progress: Mutex::new(Progress {
                    outcomes: Vec::with_capacity(n),
                    finished: false,
                    last_progress: started,
                }),
                cut: AtomicBool::new(false),
                started,
            });
            st.current = Some(job.clone());
            drop(st);
            job
        };
        self.in_flight_items
            .fetch_add(job.items.len(), Ordering::Relaxed);
        for d in &job.items {
            if d.attempt() == 0 {
                if d.entry.unstarted.fetch_sub(1, Ordering::AcqRel) == 1 {
                    shared.queued.fetch_sub(1, Ordering::AcqRel);
                }
            } else {
                d.entry.event.on_retry(d.attempt());
            }
        }
        if self.config.engine_timeout {
            let job = job.clone();
            let timeout = self.config.timeout;
            shared.runtime.spawn(async move {
                loop {
                    let since = {
                        let p = job.progress.lock();
                        if p.finished {
                            return;
                        }
                        p.last_progress
                    };
                    let deadline = since + timeout;
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    tokio::time::sleep(deadline - now).await;
                }
                let msg = format!("consume timed out after {:.3}s", timeout.as_secs_f64());
                if job.is_cut() {
                    // NOTE: stopping: the items after the hung call were not tried.
                    job.abandon(&msg);
                    return;
                }
                job.lane.executor.abandon();
                job.finish_with(Some(&msg));
            });
        }
        self.executor.execute(job);
    }

    fn job_done(self: &Arc<Self>, job: &Arc<Job<E>>, outcomes: Vec<Outcome>) {
        let shared = self.shared.upgrade();
        self.in_flight_items
            .fetch_sub(job.items.len(), Ordering::Relaxed);
        let closed = self.state.lock().closed;
        let now = Instant::now();
        let mut succeeded = 0u64;
        // NOTE: a job of up to SMALL_JOB items (one event at a time while the lane
        // keeps up) collects its latencies on the stack: no heap allocation per job.
        let mut small = [Duration::ZERO; SMALL_JOB];
        let mut large = Vec::new();
        let on_stack = job.items.len() <= SMALL_JOB;
        if !on_stack {
            large.reserve_exact(job.items.len());
        }
        // MONITOR HOOK (issue 14): one relaxed load per job while nobody observes.
        let observer = shared.as_ref().and_then(|s| s.delivery_observer());
        for (d, outcome) in job.items.iter().zip(outcomes) {
            if let Some(f) = &observer {
                f(&DeliveryNote {
                    event: &d.entry.event,
                    consumer: &self.config.name,
                    attempt: d.attempt() + 1,
                    outcome: &outcome,
                    queued: job.started.saturating_duration_since(d.entry.accepted),
                    handled: now.saturating_duration_since(job.started),
                });
            }
            match outcome {
                Outcome::Success => {
                    let latency = now.saturating_duration_since(d.entry.accepted);
                    if on_stack {
                        small[succeeded as usize] = latency;
                    } else {
                        large.push(latency);
                    }
                    succeeded += 1;
                    d.entry.event.on_success(&self.config.name);
                    d.entry.event.on_handled(&self.config.name);
                    if let Some(s) = &shared {
                        s.finish_entry(&d.entry);
                    }
                }
                Outcome::Filtered => {
                    self.stats.filtered.fetch_add(1, Ordering::Relaxed);
                    d.entry.event.on_handled(&self.config.name);
                    if let Some(s) = &shared {
                        s.finish_entry(&d.entry);
                    }
                }
                Outcome::Failure(msg) => self.failed(&shared, d, msg, closed, Some(Duration::ZERO)),
                Outcome::FailureNotBefore(msg, at_least) => {
                    self.failed(&shared, d, msg, closed, Some(at_least))
                }
                Outcome::Rejected(msg) => self.failed(&shared, d, msg, closed, None),
                Outcome::Cancelled(why) => {
                    let Some(s) = &shared else { continue };
                    let d = Delivery {
                        entry: d.entry.clone(),
                        errors: d.errors.clone(),
                    };
                    s.give_up(self, d, if closed { UNSUBSCRIBED } else { &why });
                }
            }
        }
        self.stats.processed.fetch_add(succeeded, Ordering::Relaxed);
        self.stats.record_latencies(if on_stack {
            &small[..succeeded as usize]
        } else {
            &large
        });
        // NOTE: only an ordered lane collects retries to hold; the others skip the lock.
        if let (true, Some(s)) = (self.config.ordered, &shared) {
            self.hold_for_retries(s);
        }
        let mut st = self.state.lock();
        if st.in_flight == Some(job.token) {
            st.in_flight = None;
            st.current = None;
        }
        // NOTE: without the engine (dropped) `pump` would do nothing either.
        if let Some(s) = &shared {
            self.pump_locked(s, st);
        }
    }

    /// Asks the executor of the job in flight, if any, to start no further item.
    fn cut_current(&self) {
        if let Some(job) = &self.state.lock().current {
            job.cut.store(true, Ordering::Release);
        }
    }

    /// The job in flight, if any.
    fn current_job(&self) -> Option<Arc<Job<E>>> {
        self.state.lock().current.clone()
    }

    /// One failed attempt of `d`: retried after at least `retry_after` (the
    /// policy's delay when longer), or, with `None` (the consumer rejected the
    /// event), dead-lettered at once.
    fn failed(
        self: &Arc<Self>,
        shared: &Option<Arc<Shared<E>>>,
        d: &Delivery<E>,
        msg: String,
        closed: bool,
        retry_after: Option<Duration>,
    ) {
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        d.entry.event.on_failure(&self.config.name, &msg);
        let mut errors = d.errors.clone();
        errors.push(msg);
        let retry = Delivery {
            entry: d.entry.clone(),
            errors,
        };
        let Some(s) = shared else { return };
        let retries_left = d.attempt() < self.config.retry.max_retries;
        let stopping = closed || s.phase() == Phase::Aborting;
        match retry_after {
            Some(at_least) if retries_left && !stopping => {
                self.stats.retried.fetch_add(1, Ordering::Relaxed);
                // NOTE: `retry.attempt()` is the 1-based number of the coming retry.
                let delay = self.config.retry.delay(retry.attempt()).max(at_least);
                s.note_failure(self, &retry, Some(delay));
                if self.config.ordered {
                    // NOTE: held until the job is done, then retried ahead of all.
                    self.stats.retrying.fetch_add(1, Ordering::Relaxed);
                    let mut st = self.state.lock();
                    st.hold.push(retry);
                    st.hold_delay = st.hold_delay.max(delay);
                } else {
                    self.schedule_retry(s, retry, delay);
                }
            }
            Some(_) if retries_left => {
                s.note_failure(self, &retry, None);
                s.give_up(self, retry, if closed { UNSUBSCRIBED } else { STOPPED });
            }
            _ => {
                s.note_failure(self, &retry, None);
                s.dead_letter(self, retry, None);
            }
        }
    }

    fn schedule_retry(self: &Arc<Self>, shared: &Arc<Shared<E>>, d: Delivery<E>, delay: Duration) {
        let lane = self.clone();
        let mut phase = shared.phase_rx.clone();
        self.stats.retrying.fetch_add(1, Ordering::Relaxed);
        shared.runtime.spawn(async move {
            // NOTE: a draining or aborting bus fires waiting retries at once, so
            // stop() neither waits out long backoffs nor loses the events.
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = phase.wait_for(|p| *p != Phase::Running) => {}
            }
            lane.requeue(d);
        });
    }

    /// An ordered lane with retries from the job just done: holds the lane for
    /// their delay, then puts them in front of everything waiting.
    fn hold_for_retries(self: &Arc<Self>, shared: &Arc<Shared<E>>) {
        let (held, delay) = {
            let mut st = self.state.lock();
            if st.hold.is_empty() {
                return;
            }
            st.holding = true;
            (
                std::mem::take(&mut st.hold),
                std::mem::take(&mut st.hold_delay),
            )
        };
        let lane = self.clone();
        let mut phase = shared.phase_rx.clone();
        shared.runtime.spawn(async move {
            // NOTE: like `schedule_retry`: a stopping bus does not wait out the delay.
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = phase.wait_for(|p| *p != Phase::Running) => {}
            }
            lane.release_hold(held);
        });
    }

    fn release_hold(self: &Arc<Self>, held: Vec<Delivery<E>>) {
        self.stats
            .retrying
            .fetch_sub(held.len() as u64, Ordering::Relaxed);
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let given_up = {
            let mut st = self.state.lock();
            st.holding = false;
            if st.closed {
                Some((held, UNSUBSCRIBED))
            } else if shared.phase() == Phase::Aborting {
                Some((held, STOPPED))
            } else {
                st.len += held.len();
                // NOTE: these were handed out before anything still in `front`
                // (a hold released more than one job's worth), so they go first.
                for d in held.into_iter().rev() {
                    st.front.push_front(d);
                }
                None
            }
        };
        if let Some((held, why)) = given_up {
            for d in held {
                shared.give_up(self, d, why);
            }
        }
        self.pump();
    }

    fn requeue(self: &Arc<Self>, d: Delivery<E>) {
        self.stats.retrying.fetch_sub(1, Ordering::Relaxed);
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        if shared.phase() == Phase::Aborting {
            shared.give_up(self, d, STOPPED);
            return;
        }
        if let Some(d) = self.push(d) {
            // NOTE: the consumer unsubscribed while the retry waited.
            shared.give_up(self, d, UNSUBSCRIBED);
            return;
        }
        self.pump();
    }

    /// Closes the lane, returning what was still waiting in it.
    fn close(&self) -> Vec<Delivery<E>> {
        let mut st = self.state.lock();
        st.closed = true;
        st.len = 0;
        let front: Vec<Delivery<E>> = st.front.drain(..).collect();
        front
            .into_iter()
            .chain(st.pending.iter_mut().flat_map(|q| q.drain_all()))
            .collect()
    }

    fn flush_batches(self: &Arc<Self>) {
        self.state.lock().batch_due = true;
        self.pump();
    }
}

/// Lifecycle phase of the engine; retries watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Normal operation.
    Running,
    /// Stopping: flush batches and fire retries now.
    Draining,
    /// Stopping with a deadline passed: dead-letter what is left.
    Aborting,
}

/// Engine-wide counters.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct EngineCounters {
    /// Events accepted.
    pub published: u64,
    /// Events every lane finished with, none dead-lettering or releasing it (events
    /// no consumer was subscribed to count here too).
    pub processed: u64,
    /// Events some lane dead-lettered.
    pub dead_lettered: u64,
    /// Events some lane released for redelivery from the store (and none
    /// dead-lettered).
    pub released: u64,
    pub failed: u64,
    pub dropped: u64,
    pub queued: usize,
    pub outstanding: usize,
    pub dead_letters: usize,
    pub dead_letters_evicted: u64,
}

/// Deliveries bound for one lane.
type LaneBatch<E> = (Arc<Lane<E>>, Vec<Delivery<E>>);

type Listener<E> = Box<dyn Fn(&DeadLetter<E>) + Send + Sync>;
type FailureListener<E> = Box<dyn Fn(&FailedAttempt<'_, E>) + Send + Sync>;

/// Why an event not yet delivered is given up on when the bus stops past its deadline.
pub const STOPPED: &str = "the bus stopped before this event could be delivered";
/// Why an event waiting for a consumer is given up on when it unsubscribes.
pub const UNSUBSCRIBED: &str = "the consumer unsubscribed before this event could be delivered";

/// One failed attempt, as told to failure listeners (for logging).
pub struct FailedAttempt<'a, E> {
    /// The event.
    pub event: &'a Arc<E>,
    /// The consumer.
    pub consumer: &'a Arc<str>,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The attempt's error.
    pub error: &'a str,
    /// When the next attempt is due; None when this was the last one.
    pub retry_in: Option<Duration>,
}

/// Where events on one topic go, cached per topic until subscriptions change.
pub struct Route<E: EventLike> {
    /// The topic (validated).
    pub topic: Arc<str>,
    /// The lanes, in consumer-priority order.
    pub lanes: Vec<Arc<Lane<E>>>,
    /// The most any lane needs copied out of the event.
    pub needs_view: ViewNeeds,
    /// The most any lane's executor needs copied (`needs_view` without what the
    /// rules read): when Nothing, a view would be made for the rules only.
    pub sinks_need: ViewNeeds,
    /// Whether some lane needs nothing copied (its executor reads the event
    /// object itself).
    pub any_plain: bool,
    /// The rules of the lanes that have one, compiled into one matcher.
    pub rules: Option<crate::rules::LaneRules>,
}

impl<E: EventLike> Route<E> {
    /// Which of the route's lanes take `event`: None for all of them (no lane
    /// has a rule), else one flag per lane.
    pub fn admitted(&self, event: &E) -> Option<Vec<bool>> {
        Some(
            self.rules
                .as_ref()?
                .admitted(event.rule_view(), self.lanes.len()),
        )
    }
}

const ROUTE_CACHE_LIMIT: usize = 8192;

/// Jobs of up to this many items collect their latencies without allocating.
const SMALL_JOB: usize = 16;

struct Shared<E: EventLike> {
    router: RwLock<Router>,
    // NOTE: FxHash, not SipHash: the lookup runs on every publish (SipHash was ~190
    // instructions of a W1 event, issue 16); the topics come from the process's own
    // publishers, and the cache is bounded (`ROUTE_CACHE_LIMIT`), so crafted
    // collisions could only slow lookups down, never grow it.
    routes: Mutex<rustc_hash::FxHashMap<Box<str>, Arc<Route<E>>>>,
    lanes: RwLock<Vec<Option<Arc<Lane<E>>>>>,
    accepting: AtomicBool,
    max_queue: AtomicUsize,
    queued: AtomicUsize,
    outstanding: AtomicUsize,
    published: AtomicU64,
    processed: AtomicU64,
    dead_events: AtomicU64,
    released_events: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    dead: Mutex<DeadLetterQueue<E>>,
    dead_listeners: RwLock<Vec<Listener<E>>>,
    failure_listeners: RwLock<Vec<FailureListener<E>>>,
    /// A durable bus releases what it gives up on at stop (the store redelivers it
    /// later) instead of dead-lettering it.
    release_on_stop: AtomicBool,
    on_idle: RwLock<Option<Box<dyn Fn() + Send + Sync>>>,
    /// MONITOR HOOK (issue 14): see [`Engine::set_delivery_observer`].
    observing: AtomicBool,
    observer: RwLock<Option<DeliveryObserver<E>>>,
    phase_tx: watch::Sender<Phase>,
    phase_rx: watch::Receiver<Phase>,
    runtime: tokio::runtime::Handle,
}

impl<E: EventLike> Shared<E> {
    fn phase(&self) -> Phase {
        *self.phase_rx.borrow()
    }

    /// MONITOR HOOK (issue 14): the delivery observer, if one is set.
    fn delivery_observer(&self) -> Option<DeliveryObserver<E>> {
        if !self.observing.load(Ordering::Relaxed) {
            return None;
        }
        self.observer.read().clone()
    }

    fn finish_entry(&self, entry: &Entry<E>) {
        let before = entry.unfinished.fetch_sub(1, Ordering::AcqRel);
        if before & LANES_MASK == 1 {
            let counter = if before & ENDED_DEAD != 0 {
                &self.dead_events
            } else if before & ENDED_RELEASED != 0 {
                &self.released_events
            } else {
                &self.processed
            };
            counter.fetch_add(1, Ordering::Relaxed);
            if self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
                if let Some(cb) = self.on_idle.read().as_ref() {
                    cb();
                }
            }
        }
    }

    /// Gives up on `d`, adding `why` (not an attempt's error) to its errors.
    fn dead_letter(&self, lane: &Lane<E>, mut d: Delivery<E>, why: Option<&str>) {
        lane.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
        self.failed.fetch_add(1, Ordering::Relaxed);
        let attempts = d.attempt();
        if let Some(why) = why {
            d.errors.push(why.into());
        }
        let letter = DeadLetter {
            event: d.entry.event.clone(),
            consumer: lane.config.name.clone(),
            attempts,
            errors: d.errors.into(),
            at: SystemTime::now(),
        };
        for listener in self.dead_listeners.read().iter() {
            listener(&letter);
        }
        self.dead.lock().push(letter);
        d.entry.unfinished.fetch_or(ENDED_DEAD, Ordering::AcqRel);
        self.finish_entry(&d.entry);
    }

    /// Gives up on a delivery that was not (or not fully) attempted because the bus
    /// stopped or the consumer left: a durable bus releases it (it stays unacked in
    /// the store and is redelivered later); otherwise it is dead-lettered with `why`.
    fn give_up(&self, lane: &Lane<E>, d: Delivery<E>, why: &str) {
        if self.release_on_stop.load(Ordering::Relaxed) {
            lane.stats.released.fetch_add(1, Ordering::Relaxed);
            d.entry
                .unfinished
                .fetch_or(ENDED_RELEASED, Ordering::AcqRel);
            self.finish_entry(&d.entry);
        } else {
            self.dead_letter(lane, d, Some(why));
        }
    }

    /// Tells the failure listeners about a failed attempt (the failure path only).
    fn note_failure(&self, lane: &Lane<E>, d: &Delivery<E>, retry_in: Option<Duration>) {
        let listeners = self.failure_listeners.read();
        if listeners.is_empty() {
            return;
        }
        let note = FailedAttempt {
            event: &d.entry.event,
            consumer: &lane.config.name,
            attempt: d.attempt(),
            error: d.errors.last().map(String::as_str).unwrap_or(""),
            retry_in,
        };
        for l in listeners.iter() {
            l(&note);
        }
    }
}

/// The dispatch engine. Cheap to clone.
pub struct Engine<E: EventLike> {
    shared: Arc<Shared<E>>,
}

impl<E: EventLike> Clone for Engine<E> {
    fn clone(&self) -> Self {
        Engine {
            shared: self.shared.clone(),
        }
    }
}

/// A weak handle on an [`Engine`] (for callbacks the engine itself owns).
pub struct WeakEngine<E: EventLike> {
    shared: Weak<Shared<E>>,
}

impl<E: EventLike> WeakEngine<E> {
    /// The engine, if it still exists.
    pub fn upgrade(&self) -> Option<Engine<E>> {
        self.shared.upgrade().map(|shared| Engine { shared })
    }
}

/// Why `publish` did not accept an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// The engine is not accepting events (not started, or stopping).
    NotRunning,
    /// `max_queue_size` events are already queued.
    QueueFull,
}

impl<E: EventLike> Engine<E> {
    /// A stopped engine whose timers run on `runtime`.
    pub fn new(
        runtime: tokio::runtime::Handle,
        max_queue: usize,
        dead_letter_capacity: usize,
    ) -> Self {
        let (phase_tx, phase_rx) = watch::channel(Phase::Running);
        Engine {
            shared: Arc::new(Shared {
                router: RwLock::new(Router::new()),
                routes: Mutex::new(rustc_hash::FxHashMap::default()),
                lanes: RwLock::new(Vec::new()),
                accepting: AtomicBool::new(false),
                max_queue: AtomicUsize::new(max_queue.max(1)),
                queued: AtomicUsize::new(0),
                outstanding: AtomicUsize::new(0),
                published: AtomicU64::new(0),
                processed: AtomicU64::new(0),
                dead_events: AtomicU64::new(0),
                released_events: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                dead: Mutex::new(DeadLetterQueue::new(dead_letter_capacity)),
                dead_listeners: RwLock::new(Vec::new()),
                failure_listeners: RwLock::new(Vec::new()),
                release_on_stop: AtomicBool::new(false),
                on_idle: RwLock::new(None),
                observing: AtomicBool::new(false),
                observer: RwLock::new(None),
                phase_tx,
                phase_rx,
                runtime,
            }),
        }
    }

    /// Sets the callback run (on any thread) whenever the engine becomes idle.
    pub fn set_on_idle(&self, f: impl Fn() + Send + Sync + 'static) {
        *self.shared.on_idle.write() = Some(Box::new(f));
    }

    /// MONITOR HOOK (issue 14): sets (or with `None` clears) the callback run for
    /// every finished delivery attempt, on the thread that processed the outcome.
    /// While none is set the engine pays one relaxed atomic load per job.
    pub fn set_delivery_observer(&self, f: Option<DeliveryObserver<E>>) {
        let on = f.is_some();
        *self.shared.observer.write() = f;
        self.shared.observing.store(on, Ordering::Relaxed);
    }

    /// Adds a callback run for every new dead letter (on the thread that gave up).
    pub fn add_dead_letter_listener(&self, f: impl Fn(&DeadLetter<E>) + Send + Sync + 'static) {
        self.shared.dead_listeners.write().push(Box::new(f));
    }

    /// Adds a callback run for every failed attempt (on the thread that recorded it).
    pub fn add_failure_listener(&self, f: impl Fn(&FailedAttempt<'_, E>) + Send + Sync + 'static) {
        self.shared.failure_listeners.write().push(Box::new(f));
    }

    /// Makes what is given up on at stop (or unsubscribe) released for redelivery
    /// instead of dead-lettered (a durable bus: the store still holds it).
    pub fn set_release_on_stop(&self, release: bool) {
        self.shared
            .release_on_stop
            .store(release, Ordering::Relaxed);
    }

    /// Starts accepting events.
    pub fn start(&self) {
        let _ = self.shared.phase_tx.send(Phase::Running);
        self.shared.accepting.store(true, Ordering::Release);
    }

    /// Whether events are accepted.
    pub fn is_accepting(&self) -> bool {
        self.shared.accepting.load(Ordering::Acquire)
    }

    /// Stops accepting events and flushes partial batches and waiting retries.
    pub fn begin_drain(&self) {
        self.shared.accepting.store(false, Ordering::Release);
        let _ = self.shared.phase_tx.send(Phase::Draining);
        for lane in self.lanes() {
            lane.flush_batches();
        }
    }

    /// Gives up on everything not yet started (used when a stop deadline passes):
    /// waiting items, retries waiting for their timer, and the items of jobs in
    /// flight that the executor has not started (the jobs are cut). They are
    /// dead-lettered with [`STOPPED`] (or released, see
    /// [`Engine::set_release_on_stop`]). A call already running finishes or times
    /// out; [`Engine::abandon_in_flight`] gives up on it.
    pub fn abort_pending(&self) {
        let _ = self.shared.phase_tx.send(Phase::Aborting);
        for lane in self.lanes() {
            lane.cut_current();
            for d in lane.close_pending() {
                if d.attempt() == 0 && d.entry.unstarted.fetch_sub(1, Ordering::AcqRel) == 1 {
                    self.shared.queued.fetch_sub(1, Ordering::AcqRel);
                }
                self.shared.give_up(&lane, d, STOPPED);
            }
        }
    }

    /// Closes every job still in flight: the call running fails with `reason`
    /// (counted as a failed attempt) and what it had not started is given up on as
    /// by [`Engine::abort_pending`]. Returns how many jobs it closed.
    pub fn abandon_in_flight(&self, reason: &str) -> usize {
        let mut n = 0;
        for lane in self.lanes() {
            if let Some(job) = lane.current_job() {
                if !job.is_finished() {
                    job.abandon(reason);
                    n += 1;
                }
            }
        }
        n
    }

    /// Whether the lane has a job in flight.
    pub fn lane_busy(&self, lane: &Lane<E>) -> bool {
        lane.current_job().is_some_and(|j| !j.is_finished())
    }

    /// Closes the lane's job in flight as [`Engine::abandon_in_flight`] does.
    pub fn abandon_lane(&self, lane: &Lane<E>, reason: &str) {
        if let Some(job) = lane.current_job() {
            job.abandon(reason);
        }
    }

    /// The longest per-call timeout among lanes with a job in flight.
    pub fn longest_call_timeout(&self) -> Option<Duration> {
        self.lanes()
            .iter()
            .filter(|l| self.lane_busy(l))
            .map(|l| l.config.timeout)
            .max()
    }

    /// True when every accepted event has been fully handled.
    pub fn is_idle(&self) -> bool {
        self.shared.outstanding.load(Ordering::Acquire) == 0
    }

    /// Sets the queue bound.
    pub fn set_max_queue(&self, n: usize) {
        self.shared.max_queue.store(n.max(1), Ordering::Relaxed);
    }

    /// Adds a lane; returns it.
    pub fn add_lane(
        &self,
        config: LaneConfig,
        patterns: Vec<Pattern>,
        regex: Option<regex::Regex>,
        executor: Arc<dyn Executor<E>>,
    ) -> Arc<Lane<E>> {
        let mut lanes = self.shared.lanes.write();
        let id = lanes
            .iter()
            .position(Option::is_none)
            .unwrap_or(lanes.len());
        let lane = Arc::new(Lane {
            id,
            config,
            patterns,
            stats: ConsumerStats::default(),
            executor,
            state: Mutex::new(LaneState::default()),
            in_flight_items: AtomicUsize::new(0),
            shared: Arc::downgrade(&self.shared),
        });
        // NOTE: a retired lane slot may be reused, so the router is updated under
        // the lanes lock to keep ids and lanes consistent.
        self.shared
            .router
            .write()
            .add(id, lane.config.priority, &lane.patterns, regex);
        if id == lanes.len() {
            lanes.push(Some(lane.clone()));
        } else {
            lanes[id] = Some(lane.clone());
        }
        self.shared.routes.lock().clear();
        lane
    }

    /// Removes a lane. What was waiting in it is given up on with [`UNSUBSCRIBED`]
    /// (dead-lettered, or released on a durable bus); the job in flight is cut: the
    /// call running finishes, the items after it are given up on the same way.
    pub fn remove_lane(&self, lane: &Arc<Lane<E>>) {
        {
            let mut lanes = self.shared.lanes.write();
            self.shared.router.write().remove(lane.id, &lane.patterns);
            if let Some(slot) = lanes.get_mut(lane.id) {
                *slot = None;
            }
            self.shared.routes.lock().clear();
        }
        lane.cut_current();
        for d in lane.close() {
            if d.attempt() == 0 && d.entry.unstarted.fetch_sub(1, Ordering::AcqRel) == 1 {
                self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            }
            self.shared.give_up(lane, d, UNSUBSCRIBED);
        }
        lane.executor.close();
    }

    /// The live lanes, in subscription-slot order.
    pub fn lanes(&self) -> Vec<Arc<Lane<E>>> {
        self.shared.lanes.read().iter().flatten().cloned().collect()
    }

    /// Number of subscriptions in the router.
    pub fn subscription_count(&self) -> usize {
        self.shared.router.read().len()
    }

    /// The lanes an event on `topic` would reach, in consumer-priority order.
    pub fn route(&self, topic: &str) -> Vec<Arc<Lane<E>>> {
        let ids = self.shared.router.read().route(topic);
        let lanes = self.shared.lanes.read();
        ids.iter()
            .filter_map(|i| lanes.get(*i).and_then(|l| l.clone()))
            .collect()
    }

    /// The route of a published topic, validating the topic the first time it
    /// is seen (later publishes on the same topic cost one hash lookup).
    pub fn route_topic(&self, topic: &str) -> Result<Arc<Route<E>>, crate::topic::TopicError> {
        if let Some(r) = self.shared.routes.lock().get(topic) {
            return Ok(r.clone());
        }
        crate::topic::validate_topic(topic)?;
        // NOTE: computed under the lanes lock so a concurrent subscribe either
        // sees this entry cleared or is already part of it.
        let lanes_guard = self.shared.lanes.read();
        let ids = self.shared.router.read().route(topic);
        let lanes: Vec<Arc<Lane<E>>> = ids
            .iter()
            .filter_map(|i| lanes_guard.get(*i).and_then(|l| l.clone()))
            .collect();
        let needs_view = lanes
            .iter()
            .map(|l| l.config.copy_needs())
            .max()
            .unwrap_or_default();
        let sinks_need = lanes
            .iter()
            .map(|l| l.config.needs_view)
            .max()
            .unwrap_or_default();
        let any_plain = lanes
            .iter()
            .any(|l| l.config.needs_view == ViewNeeds::Nothing);
        let rules = crate::rules::LaneRules::of(lanes.iter().map(|l| l.config.rule.as_ref()));
        let route = Arc::new(Route {
            topic: topic.into(),
            lanes,
            needs_view,
            sinks_need,
            any_plain,
            rules,
        });
        let mut cache = self.shared.routes.lock();
        if cache.len() >= ROUTE_CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(topic.into(), route.clone());
        drop(lanes_guard);
        Ok(route)
    }

    /// Accepts an event for the given lanes (usually [`Engine::route`]'s result);
    /// lanes whose rule it does not match count it filtered.
    pub fn publish_to(&self, event: Arc<E>, lanes: &[Arc<Lane<E>>]) -> Result<(), Rejected> {
        if lanes.iter().any(|l| l.config.rule.is_some()) {
            let admitted: Vec<bool> = lanes.iter().map(|l| l.admits(&event)).collect();
            return self.publish_admitted(event, lanes, Some(&admitted));
        }
        self.publish_admitted(event, lanes, None)
    }

    /// Accepts an event for its route's lanes, matching their rules together.
    pub fn publish_route(&self, event: Arc<E>, route: &Route<E>) -> Result<(), Rejected> {
        let admitted = route.admitted(&event);
        self.publish_admitted(event, &route.lanes, admitted.as_deref())
    }

    /// [`Engine::publish_route`] with the route's rules already matched by the
    /// caller: `admitted` has one flag per lane of `route` (see
    /// [`crate::rules::LaneRules::admitted_doc`]), so the event needs no view.
    pub fn publish_route_admitted(
        &self,
        event: Arc<E>,
        route: &Route<E>,
        admitted: &[bool],
    ) -> Result<(), Rejected> {
        assert_eq!(admitted.len(), route.lanes.len(), "one flag per lane");
        self.publish_admitted(event, &route.lanes, Some(admitted))
    }

    /// Accepts an event for the `lanes` that `admitted` flags (all when None);
    /// the others count it filtered once it is accepted.
    fn publish_admitted(
        &self,
        event: Arc<E>,
        all_lanes: &[Arc<Lane<E>>],
        admitted: Option<&[bool]>,
    ) -> Result<(), Rejected> {
        // NOTE: the admitted lanes are walked in place, not collected (W1r: one
        // allocation and a reference count per lane less).
        let takes = |i: usize| admitted.is_none_or(|f| f[i]);
        let n = match admitted {
            None => all_lanes.len(),
            Some(flags) => flags.iter().filter(|ok| **ok).count(),
        };
        let s = &self.shared;
        if !s.accepting.load(Ordering::Acquire) {
            return Err(Rejected::NotRunning);
        }
        let max = s.max_queue.load(Ordering::Relaxed);
        if n > 0
            && s.queued
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                    (q < max).then_some(q + 1)
                })
                .is_err()
        {
            s.dropped.fetch_add(1, Ordering::Relaxed);
            return Err(Rejected::QueueFull);
        }
        s.published.fetch_add(1, Ordering::Relaxed);
        if admitted.is_some() {
            for (i, lane) in all_lanes.iter().enumerate() {
                if !takes(i) {
                    lane.skip(&event);
                }
            }
        }
        if n == 0 {
            s.processed.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let entry = Arc::new(Entry {
            event,
            unstarted: AtomicU32::new(n as u32),
            unfinished: AtomicU32::new(n as u32),
            accepted: Instant::now(),
        });
        s.outstanding.fetch_add(1, Ordering::AcqRel);
        for (i, lane) in all_lanes.iter().enumerate() {
            if !takes(i) {
                continue;
            }
            let d = Delivery::new(entry.clone());
            lane.count_received(1);
            if let Some(d) = lane.push_and_pump(s, d) {
                // NOTE: the lane closed between routing and pushing (a concurrent
                // unsubscribe): the consumer is gone before it saw the event.
                if d.entry.unstarted.fetch_sub(1, Ordering::AcqRel) == 1 {
                    s.queued.fetch_sub(1, Ordering::AcqRel);
                }
                s.give_up(lane, d, UNSUBSCRIBED);
            }
        }
        Ok(())
    }

    /// Accepts many events, each for its route's lanes, taking each lane's lock
    /// once for the whole batch. Returns how many were accepted; stops at the
    /// first `NotRunning`, and counts `QueueFull` refusals as dropped.
    pub fn publish_many(&self, events: Vec<(Arc<E>, Arc<Route<E>>)>) -> (usize, Option<Rejected>) {
        self.publish_many_with(events, |_| {})
    }

    /// [`Engine::publish_many`], calling `on_full(i)` for each event `i` (its index in
    /// `events`) refused because the queue was full.
    pub fn publish_many_with(
        &self,
        events: Vec<(Arc<E>, Arc<Route<E>>)>,
        mut on_full: impl FnMut(usize),
    ) -> (usize, Option<Rejected>) {
        let s = &self.shared;
        if !s.accepting.load(Ordering::Acquire) {
            return (0, Some(Rejected::NotRunning));
        }
        let max = s.max_queue.load(Ordering::Relaxed);
        let now = Instant::now();
        let mut accepted = 0usize;
        let mut entries = 0usize;
        let mut refused = None;
        // Deliveries grouped by lane, in first-seen lane order.
        let mut groups: Vec<LaneBatch<E>> = Vec::new();
        let mut last_route: Option<Arc<Route<E>>> = None;
        let mut slots: Vec<usize> = Vec::new();
        for (i, (event, route)) in events.into_iter().enumerate() {
            let admitted = route.admitted(&event);
            let n = admitted
                .as_ref()
                .map_or(route.lanes.len(), |a| a.iter().filter(|ok| **ok).count());
            if n == 0 {
                s.processed.fetch_add(1, Ordering::Relaxed);
                accepted += 1;
                for lane in &route.lanes {
                    lane.skip(&event);
                }
                continue;
            }
            if s.queued
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                    (q < max).then_some(q + 1)
                })
                .is_err()
            {
                s.dropped.fetch_add(1, Ordering::Relaxed);
                refused = Some(Rejected::QueueFull);
                on_full(i);
                continue;
            }
            if !last_route.as_ref().is_some_and(|r| Arc::ptr_eq(r, &route)) {
                slots.clear();
                for lane in &route.lanes {
                    let pos = groups
                        .iter()
                        .position(|(l, _)| Arc::ptr_eq(l, lane))
                        .unwrap_or_else(|| {
                            groups.push((lane.clone(), Vec::new()));
                            groups.len() - 1
                        });
                    slots.push(pos);
                }
                last_route = Some(route.clone());
            }
            let n = n as u32;
            let entry = Arc::new(Entry {
                event,
                unstarted: AtomicU32::new(n),
                unfinished: AtomicU32::new(n),
                accepted: now,
            });
            for (j, &slot) in slots.iter().enumerate() {
                if admitted.as_ref().is_none_or(|a| a[j]) {
                    groups[slot].1.push(Delivery::new(entry.clone()));
                } else {
                    route.lanes[j].skip(&entry.event);
                }
            }
            accepted += 1;
            entries += 1;
        }
        s.published.fetch_add(accepted as u64, Ordering::Relaxed);
        // NOTE: counted before any lane can hand an entry out and finish it.
        s.outstanding.fetch_add(entries, Ordering::AcqRel);
        for (lane, deliveries) in groups {
            lane.count_received(deliveries.len());
            let rejected = lane.push_many(deliveries);
            for d in rejected {
                if d.entry.unstarted.fetch_sub(1, Ordering::AcqRel) == 1 {
                    s.queued.fetch_sub(1, Ordering::AcqRel);
                }
                s.give_up(&lane, d, UNSUBSCRIBED);
            }
            lane.pump_in(s);
        }
        (accepted, refused)
    }

    /// Routes and accepts one event.
    pub fn publish(&self, event: Arc<E>) -> Result<(), Rejected> {
        // NOTE: through the route cache (one hash lookup under one lock), not the
        // router and the lane list (two read locks, the router cache's lock and a
        // new Vec of lanes per event). A topic the cache refuses (invalid) is
        // routed as before.
        match self.route_topic(event.topic()) {
            Ok(route) => self.publish_to(event, &route.lanes),
            Err(_) => {
                let lanes = self.route(event.topic());
                self.publish_to(event, &lanes)
            }
        }
    }

    /// Accepts an event straight into the dead letters, never delivering it (a
    /// payload that fails its schema): counted published and dead-lettered, and
    /// told to the dead-letter listeners as given up by `consumer`.
    pub fn dead_letter_now(
        &self,
        event: Arc<E>,
        consumer: Arc<str>,
        errors: Vec<String>,
    ) -> Result<(), Rejected> {
        let s = &self.shared;
        if !s.accepting.load(Ordering::Acquire) {
            return Err(Rejected::NotRunning);
        }
        s.published.fetch_add(1, Ordering::Relaxed);
        s.dead_events.fetch_add(1, Ordering::Relaxed);
        s.failed.fetch_add(1, Ordering::Relaxed);
        let letter = DeadLetter {
            event,
            consumer,
            attempts: 0,
            errors,
            at: SystemTime::now(),
        };
        for listener in s.dead_listeners.read().iter() {
            listener(&letter);
        }
        s.dead.lock().push(letter);
        Ok(())
    }

    /// Re-delivers an event to one lane only (dead-letter replay).
    pub fn redeliver(&self, event: Arc<E>, lane: &Arc<Lane<E>>) -> Result<(), Rejected> {
        self.publish_to(event, std::slice::from_ref(lane))
    }

    /// Copies the engine counters.
    pub fn counters(&self) -> EngineCounters {
        let s = &self.shared;
        let dead = s.dead.lock();
        EngineCounters {
            published: s.published.load(Ordering::Relaxed),
            processed: s.processed.load(Ordering::Relaxed),
            dead_lettered: s.dead_events.load(Ordering::Relaxed),
            released: s.released_events.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            queued: s.queued.load(Ordering::Relaxed),
            outstanding: s.outstanding.load(Ordering::Relaxed),
            dead_letters: dead.len(),
            dead_letters_evicted: dead.evicted(),
        }
    }

    /// A handle that does not keep the engine alive.
    pub fn downgrade(&self) -> WeakEngine<E> {
        WeakEngine {
            shared: Arc::downgrade(&self.shared),
        }
    }

    /// Copies the dead letters, oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetter<E>> {
        self.shared.dead.lock().iter().cloned().collect()
    }

    /// Removes and returns the dead letters `pick` selects.
    pub fn take_dead_letters(
        &self,
        pick: impl FnMut(&DeadLetter<E>) -> bool,
    ) -> Vec<DeadLetter<E>> {
        self.shared.dead.lock().take_where(pick)
    }
}

impl<E: EventLike> Lane<E> {
    fn close_pending(&self) -> Vec<Delivery<E>> {
        let mut st = self.state.lock();
        st.len = 0;
        let front: Vec<Delivery<E>> = st.front.drain(..).collect();
        front
            .into_iter()
            .chain(st.pending.iter_mut().flat_map(|q| q.drain_all()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::atomic::AtomicBool;

    struct Ev {
        topic: String,
        priority: u8,
        id: u32,
        retries: AtomicU32,
        ok: Mutex<Vec<String>>,
    }

    impl EventLike for Ev {
        fn topic(&self) -> &str {
            &self.topic
        }
        fn priority(&self) -> u8 {
            self.priority
        }
        fn on_retry(&self, attempt: u32) {
            self.retries.store(attempt, Ordering::Relaxed);
        }
        fn on_success(&self, consumer: &Arc<str>) {
            self.ok.lock().push(consumer.to_string());
        }
        fn on_failure(&self, _: &Arc<str>, _: &str) {}
    }

    fn ev(topic: &str, priority: u8, id: u32) -> Arc<Ev> {
        Arc::new(Ev {
            topic: topic.into(),
            priority,
            id,
            retries: AtomicU32::new(0),
            ok: Mutex::new(vec![]),
        })
    }

    /// Runs jobs on the calling thread when `run` is called.
    #[derive(Default)]
    struct Manual {
        jobs: Mutex<VecDeque<Arc<Job<Ev>>>>,
        fail_first: AtomicU32,
        seen: Mutex<Vec<(u32, usize)>>,
        hang: AtomicBool,
        /// The outcome of a failing item (default: `Failure("boom")`).
        failure: Mutex<Option<Outcome>>,
        /// When each item was run.
        times: Mutex<Vec<Instant>>,
    }

    impl Executor<Ev> for Manual {
        fn execute(&self, job: Arc<Job<Ev>>) {
            self.jobs.lock().push_back(job);
        }
    }

    impl Manual {
        fn run(&self) -> usize {
            let mut n = 0;
            loop {
                let Some(job) = self.jobs.lock().pop_front() else {
                    return n;
                };
                n += 1;
                if self.hang.load(Ordering::Relaxed) {
                    continue;
                }
                for d in &job.items {
                    self.seen.lock().push((d.entry.event.id, job.items.len()));
                    self.times.lock().push(Instant::now());
                    if self.fail_first.load(Ordering::Relaxed) > 0 {
                        self.fail_first.fetch_sub(1, Ordering::Relaxed);
                        let failure = self.failure.lock().clone();
                        job.record(failure.unwrap_or_else(|| Outcome::Failure("boom".into())));
                    } else {
                        job.record(Outcome::Success);
                    }
                }
                job.finish();
            }
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    }

    fn cfg(name: &str) -> LaneConfig {
        LaneConfig {
            name: name.into(),
            priority: 3,
            batch_size: 1,
            batch_timeout: Duration::ZERO,
            retry: RetryPolicy {
                retry_delay: Duration::from_millis(5),
                jitter: 0.0,
                ..RetryPolicy::default()
            },
            timeout: Duration::from_secs(30),
            engine_timeout: false,
            chunk: 64,
            needs_view: ViewNeeds::Nothing,
            ordered: false,
            honours_cut: true,
            rule: None,
        }
    }

    /// A lane named `name` on `pattern`, run by `exec`.
    fn add(
        engine: &Engine<Ev>,
        name: &str,
        pattern: &str,
        exec: Arc<dyn Executor<Ev>>,
    ) -> Arc<Lane<Ev>> {
        engine.add_lane(
            cfg(name),
            vec![Pattern::parse(pattern).unwrap()],
            None,
            exec,
        )
    }

    fn wait_until(mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "condition not met in time");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn priority_order_and_queue_bound() {
        let rt = rt();
        let engine = Engine::new(rt.handle().clone(), 3, 10);
        let exec = Arc::new(Manual::default());
        let lane = engine.add_lane(
            cfg("a"),
            vec![Pattern::parse("**").unwrap()],
            None,
            exec.clone(),
        );
        assert_eq!(engine.publish(ev("x", 3, 0)), Err(Rejected::NotRunning));
        engine.start();
        engine.publish(ev("x", 3, 1)).unwrap(); // handed out at once; held in the executor
        let first = exec.jobs.lock().pop_front().unwrap();
        engine.publish(ev("x", 4, 2)).unwrap();
        engine.publish(ev("x", 1, 3)).unwrap();
        engine.publish(ev("x", 2, 4)).unwrap();
        assert_eq!(engine.publish(ev("x", 2, 5)), Err(Rejected::QueueFull));
        assert_eq!(engine.counters().dropped, 1);
        assert_eq!(engine.counters().queued, 3);
        assert_eq!(lane.pending(), 3);
        first.record(Outcome::Success);
        first.finish();
        exec.run();
        let order: Vec<u32> = exec.seen.lock().iter().map(|s| s.0).collect();
        assert_eq!(order, vec![3, 4, 2], "CRITICAL, HIGH, then LOW");
        assert!(engine.is_idle());
        assert_eq!(engine.counters().queued, 0);
    }

    #[test]
    fn retries_then_dead_letter_and_idle() {
        let rt = rt();
        let engine = Engine::new(rt.handle().clone(), 100, 10);
        let idle = Arc::new(AtomicU32::new(0));
        let i2 = idle.clone();
        engine.set_on_idle(move || {
            i2.fetch_add(1, Ordering::Relaxed);
        });
        let exec = Arc::new(Manual::default());
        exec.fail_first.store(10, Ordering::Relaxed);
        let lane = engine.add_lane(
            cfg("a"),
            vec![Pattern::parse("x").unwrap()],
            None,
            exec.clone(),
        );
        engine.start();
        let e = ev("x", 3, 7);
        engine.publish(e.clone()).unwrap();
        wait_until(|| {
            exec.run();
            engine.is_idle()
        });
        assert_eq!(exec.seen.lock().len(), 4, "1 attempt + 3 retries");
        assert_eq!(e.retries.load(Ordering::Relaxed), 3);
        let dead = engine.dead_letters();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].attempts, 4);
        assert_eq!(dead[0].errors.len(), 4);
        assert_eq!(lane.stats.snapshot().dead_lettered, 1);
        assert_eq!(idle.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn abort_dead_letters_what_waits_with_its_attempt_count() {
        let rt = rt();
        let engine = Engine::new(rt.handle().clone(), 100, 10);
        let exec = Arc::new(Manual::default());
        engine.add_lane(
            cfg("a"),
            vec![Pattern::parse("x").unwrap()],
            None,
            exec.clone(),
        );
        engine.start();
        engine.publish(ev("x", 3, 1)).unwrap(); // handed out; held in the executor
        engine.publish(ev("x", 3, 2)).unwrap();
        engine.abort_pending();
        let dead = engine.dead_letters();
        assert_eq!(dead.len(), 1);
        assert_eq!((dead[0].event.id, dead[0].attempts), (2, 0));
        assert_eq!(
            dead[0].errors,
            vec!["the bus stopped before this event could be delivered".to_string()]
        );
        assert_eq!(engine.counters().queued, 0);
    }

    /// `published = processed + dead-lettered + released + outstanding`, and per
    /// lane `received = processed + filtered + dead-lettered + released + pending
    /// + in flight + retrying`.
    fn assert_adds_up(engine: &Engine<Ev>) {
        let c = engine.counters();
        assert_eq!(
            c.published,
            c.processed + c.dead_lettered + c.released + c.outstanding as u64,
            "{c:?}"
        );
        for lane in engine.lanes() {
            let s = lane.stats.snapshot();
            assert_eq!(
                s.received,
                s.processed
                    + s.filtered
                    + s.dead_lettered
                    + s.released
                    + lane.pending() as u64
                    + lane.in_flight() as u64
                    + s.retrying,
                "{}: {s:?}",
                lane.config.name
            );
        }
    }

    #[test]
    fn abort_cuts_the_job_in_flight_and_abandon_closes_it() {
        let rt = rt();
        let engine = Engine::new(rt.handle().clone(), 100, 10);
        let exec = Arc::new(Manual::default());
        let lane = add(&engine, "a", "x", exec.clone());
        engine.start();
        // One job of three items in flight, one more event waiting.
        let job = {
            for i in 0..3 {
                lane.state.lock().pending[2].push_back(Delivery::new(Arc::new(Entry {
                    event: ev("x", 3, i),
                    unstarted: AtomicU32::new(1),
                    unfinished: AtomicU32::new(1),
                    accepted: Instant::now(),
                })));
            }
            // NOTE: counted as three published events, as publish would.
            engine.shared.published.fetch_add(3, Ordering::Relaxed);
            engine.shared.queued.fetch_add(3, Ordering::Relaxed);
            engine.shared.outstanding.fetch_add(3, Ordering::Relaxed);
            lane.count_received(3);
            lane.state.lock().len = 3;
            lane.pump();
            exec.jobs.lock().pop_front().unwrap()
        };
        engine.publish(ev("x", 3, 9)).unwrap();
        job.record(Outcome::Success); // item 0 done; item 1 running
        engine.abort_pending();
        assert!(
            job.is_cut(),
            "the executor is asked to start no further item"
        );
        assert_eq!(engine.dead_letters().len(), 1, "the waiting event");
        assert!(engine.lane_busy(&lane));
        assert_eq!(engine.abandon_in_flight("abandoned"), 1);
        assert!(!engine.lane_busy(&lane));
        let dead = engine.dead_letters();
        assert_eq!(dead.len(), 3);
        let running = dead.iter().find(|d| d.event.id == 1).unwrap();
        assert_eq!(
            running.attempts, 1,
            "the abandoned call counts as an attempt"
        );
        assert_eq!(running.errors[0], "abandoned");
        let never = dead.iter().find(|d| d.event.id == 2).unwrap();
        assert_eq!(
            (never.attempts, never.errors.len()),
            (0, 1),
            "never attempted"
        );
        assert_eq!(lane.stats.snapshot().failed, 1);
        assert!(engine.is_idle());
        assert_adds_up(&engine);
        assert_eq!(engine.counters().processed, 1);
        assert_eq!(engine.counters().dead_lettered, 3);
    }

    #[test]
    fn a_durable_engine_releases_what_it_gives_up_on_at_stop() {
        let rt = rt();
        let engine = Engine::new(rt.handle().clone(), 100, 10);
        engine.set_release_on_stop(true);
        let exec = Arc::new(Manual::default());
        let lane = add(&engine, "a", "x", exec.clone());
        engine.start();
        for i in 0..5 {
            engine.publish(ev("x", 3, i)).unwrap();
        }
        engine.abort_pending();
        let job = exec.jobs.lock().pop_front().unwrap();
        assert!(job.is_cut());
        job.cancel_rest(STOPPED);
        assert!(engine.dead_letters().is_empty());
        assert_eq!(engine.counters().released, 5);
        assert_eq!(lane.stats.snapshot().released, 5);
        assert!(engine.is_idle());
        assert_adds_up(&engine);
    }

    #[test]
    fn removing_a_lane_gives_up_on_what_waits_for_it() {
        let rt = rt();
        let engine = Engine::new(rt.handle().clone(), 100, 10);
        let exec = Arc::new(Manual::default());
        let a = add(&engine, "a", "x", exec.clone());
        let b = add(&engine, "b", "x", Arc::new(Manual::default()));
        engine.start();
        for i in 0..3 {
            engine.publish(ev("x", 3, i)).unwrap();
        }
        engine.remove_lane(&a);
        let job = exec.jobs.lock().pop_front().unwrap();
        assert!(job.is_cut());
        job.cancel_rest(STOPPED);
        let dead = engine.dead_letters();
        assert_eq!(dead.len(), 3);
        assert!(dead
            .iter()
            .all(|d| d.errors == vec![UNSUBSCRIBED.to_string()]));
        assert_eq!(
            b.pending() + b.in_flight(),
            3,
            "the other consumer still gets them"
        );
        assert_adds_up(&engine);
    }

    #[test]
    fn failure_listeners_hear_each_failed_attempt() {
        let rt = rt();
        let engine = Engine::new(rt.handle().clone(), 100, 10);
        let heard: Arc<Mutex<Vec<(u32, bool)>>> = Arc::default();
        let h = heard.clone();
        engine.add_failure_listener(move |f| {
            h.lock().push((f.attempt, f.retry_in.is_some()));
        });
        let exec = Arc::new(Manual::default());
        exec.fail_first.store(10, Ordering::Relaxed);
        let mut config = cfg("a");
        config.retry.max_retries = 1;
        engine.add_lane(
            config,
            vec![Pattern::parse("x").unwrap()],
            None,
            exec.clone(),
        );
        engine.start();
        engine.publish(ev("x", 3, 1)).unwrap();
        wait_until(|| {
            exec.run();
            engine.is_idle()
        });
        assert_eq!(*heard.lock(), vec![(1, true), (2, false)]);
        assert_adds_up(&engine);
    }

    #[test]
    fn a_rejected_item_is_dead_lettered_without_retries() {
        let rt = rt();
        let engine = Engine::new(rt.handle().clone(), 100, 10);
        let heard: Arc<Mutex<Vec<(u32, bool)>>> = Arc::default();
        let h = heard.clone();
        engine.add_failure_listener(move |f| {
            h.lock().push((f.attempt, f.retry_in.is_some()));
        });
        let exec = Arc::new(Manual::default());
        exec.fail_first.store(10, Ordering::Relaxed);
        *exec.failure.lock() = Some(Outcome::Rejected("HTTP 400: bad".into()));
        add(&engine, "a", "x", exec.clone());
        engine.start();
        engine.publish(ev("x", 3, 1)).unwrap();
        wait_until(|| {
            exec.run();
            engine.is_idle()
        });
        assert_eq!(exec.seen.lock().len(), 1, "one attempt only");
        assert_eq!(*heard.lock(), vec![(1, false)]);
        let dead = engine.dead_letters();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].errors, vec!["HTTP 400: bad".to_string()]);
        assert_adds_up(&engine);
    }

    #[test]
    fn a_failure_with_a_minimum_delay_is_retried_no_sooner() {
        let rt = rt();
        let engine = Engine::new(rt.handle().clone(), 100, 10);
        let heard: Arc<Mutex<Vec<Option<Duration>>>> = Arc::default();
        let h = heard.clone();
        engine.add_failure_listener(move |f| h.lock().push(f.retry_in));
        let exec = Arc::new(Manual::default());
        exec.fail_first.store(1, Ordering::Relaxed);
        let wait = Duration::from_millis(300);
        *exec.failure.lock() = Some(Outcome::FailureNotBefore("HTTP 429".into(), wait));
        add(&engine, "a", "x", exec.clone());
        engine.start();
        engine.publish(ev("x", 3, 1)).unwrap();
        wait_until(|| {
            exec.run();
            engine.is_idle()
        });
        let times = exec.times.lock().clone();
        assert_eq!(times.len(), 2, "failed once, then delivered");
        assert!(times[1] - times[0] >= wait, "{:?}", times[1] - times[0]);
        assert_eq!(
            *heard.lock(),
            vec![Some(wait)],
            "the policy's 5 ms is shorter"
        );
        assert_eq!(engine.counters().processed, 1);
        assert_adds_up(&engine);
    }

    #[test]
    fn batch_outcomes_follow_what_consume_batch_returned() {
        let f = |m: &str| Outcome::Failure(m.into());
        let pre = || {
            vec![
                None,
                Some(Outcome::Filtered),
                None,
                Some(f("filter_func raised X")),
                None,
            ]
        };
        let members = [0, 2, 4];
        let count = |n: i64| BatchEnd::Returned {
            all: None,
            count: n,
            repr: n.to_string(),
        };
        let two = batch_outcomes(pre(), &members, &count(2));
        let why = "consume_batch() reported 2 of 3 events handled (returned 2)";
        assert_eq!(
            two,
            vec![
                Outcome::Success,
                Outcome::Filtered,
                Outcome::Success,
                f("filter_func raised X"),
                f(why)
            ]
        );
        let over = batch_outcomes(pre(), &members, &count(99));
        assert_eq!(
            over[4],
            Outcome::Success,
            "a count above the batch is clamped"
        );
        let neg = batch_outcomes(pre(), &members, &count(-1));
        assert!(
            matches!(neg[0], Outcome::Failure(_)),
            "a negative count handles none"
        );
        let all = BatchEnd::Returned {
            all: Some(true),
            count: 0,
            repr: "True".into(),
        };
        assert_eq!(batch_outcomes(pre(), &members, &all)[4], Outcome::Success);
        let none = BatchEnd::Returned {
            all: Some(false),
            count: 0,
            repr: "False".into(),
        };
        assert_eq!(
            batch_outcomes(pre(), &members, &none)[0],
            f("consume_batch() reported 0 of 3 events handled (returned False)")
        );
        let raised = batch_outcomes(pre(), &members, &BatchEnd::Raised("ValueError: x".into()));
        assert_eq!(raised[2], f("consume_batch() raised ValueError: x"));
        assert_eq!(raised[1], Outcome::Filtered);
    }

    #[test]
    fn batches_flush_on_size_and_timer() {
        let rt = rt();
        let engine = Engine::new(rt.handle().clone(), 100, 10);
        let exec = Arc::new(Manual::default());
        let mut c = cfg("b");
        c.batch_size = 3;
        c.batch_timeout = Duration::from_millis(20);
        engine.add_lane(c, vec![Pattern::parse("**").unwrap()], None, exec.clone());
        engine.start();
        for i in 0..4 {
            engine.publish(ev("x", 3, i)).unwrap();
        }
        exec.run();
        assert_eq!(
            exec.seen.lock().iter().map(|s| s.1).collect::<Vec<_>>(),
            vec![3, 3, 3]
        );
        wait_until(|| {
            exec.run();
            engine.is_idle()
        });
        assert_eq!(exec.seen.lock().last().unwrap(), &(3, 1));
    }

    #[test]
    fn engine_timeout_abandons_hung_job() {
        let rt = rt();
        let engine = Engine::new(rt.handle().clone(), 100, 10);
        let exec = Arc::new(Manual::default());
        exec.hang.store(true, Ordering::Relaxed);
        let mut c = cfg("h");
        c.engine_timeout = true;
        c.timeout = Duration::from_millis(20);
        c.retry.max_retries = 0;
        engine.add_lane(c, vec![Pattern::parse("**").unwrap()], None, exec.clone());
        engine.start();
        engine.publish(ev("x", 3, 1)).unwrap();
        wait_until(|| {
            exec.run();
            engine.is_idle()
        });
        let dead = engine.dead_letters();
        assert!(
            dead[0].errors[0].contains("timed out"),
            "{:?}",
            dead[0].errors
        );
    }

    #[test]
    fn drain_fires_waiting_retries() {
        let rt = rt();
        let engine = Engine::new(rt.handle().clone(), 100, 10);
        let exec = Arc::new(Manual::default());
        exec.fail_first.store(1, Ordering::Relaxed);
        let mut c = cfg("r");
        c.retry.retry_delay = Duration::from_secs(3600);
        engine.add_lane(c, vec![Pattern::parse("**").unwrap()], None, exec.clone());
        engine.start();
        engine.publish(ev("x", 3, 1)).unwrap();
        exec.run();
        assert!(!engine.is_idle());
        engine.begin_drain();
        wait_until(|| {
            exec.run();
            engine.is_idle()
        });
        assert_eq!(engine.dead_letters().len(), 0);
    }
}
