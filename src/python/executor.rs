//! Running jobs in Python.
//!
//! Coroutine consumers run on the event loop that started the bus. The engine
//! hands their jobs to a shared inbox and wakes the loop through a socket the
//! loop watches (`loop.add_reader`): a wake-up is written only when the inbox
//! goes from empty to non-empty, so a burst of events costs one wake-up, and no
//! Tokio task ever attaches to Python. The loop then runs every waiting job in
//! one go, stepping each `consume()` coroutine by hand: a coroutine that finishes
//! without suspending (the common case) costs no Task and no loop iteration; one
//! that suspends is handed to a real Task (`_bus.continue_job`) with its timeout.
//!
//! Plain-function consumers run on a worker thread of their own, so a blocking
//! consumer never stalls the loop; the engine times out a call that hangs and
//! gives the consumer a fresh worker.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use parking_lot::Mutex;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyList, PyType};

use super::event::EventRef;
use crate::dispatch::{Executor, Job, Outcome, STOPPED};

/// A job of ours.
pub type PyJobRef = Arc<Job<EventRef>>;

static COROUTINE_TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static CONTINUE_JOB: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static RESUME_FROM: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static SPAWN: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Work queued for the event loop from a thread without the GIL.
pub type LoopCall = Box<dyn FnOnce(Python<'_>) + Send>;

/// The Python callables of one subscribed consumer.
pub struct PyConsumer {
    pub name: Arc<str>,
    pub consume: Py<PyAny>,
    pub consume_batch: Option<Py<PyAny>>,
    pub filter: Option<Py<PyAny>>,
    pub transform: Option<Py<PyAny>>,
    pub error_handler: Option<Py<PyAny>>,
    pub timeout: f64,
}

/// Where jobs for the event loop wait, and how the loop is woken.
pub struct Inbox {
    jobs: Mutex<VecDeque<(Arc<PyConsumer>, PyJobRef)>>,
    calls: Mutex<Vec<LoopCall>>,
    wake_pending: AtomicBool,
    /// Set when the loop that runs coroutine consumers shuts down (see
    /// `_bus.watch_loop`); the next publish rebinds the bus to its running loop.
    loop_gone: AtomicBool,
    tx: UnixStream,
    rx: UnixStream,
    /// The loop that runs coroutine consumers (set by `start()`).
    pub event_loop: Mutex<Option<Py<PyAny>>>,
}

impl Inbox {
    /// A new inbox with its wake-up socket pair.
    pub fn new() -> std::io::Result<Self> {
        let (tx, rx) = UnixStream::pair()?;
        tx.set_nonblocking(true)?;
        rx.set_nonblocking(true)?;
        Ok(Inbox {
            jobs: Mutex::new(VecDeque::new()),
            calls: Mutex::new(Vec::new()),
            wake_pending: AtomicBool::new(false),
            loop_gone: AtomicBool::new(false),
            tx,
            rx,
            event_loop: Mutex::new(None),
        })
    }

    /// The descriptor the event loop watches.
    pub fn fd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.rx.as_raw_fd()
    }

    /// The loop that runs coroutine consumers, if the bus was started.
    pub fn current_loop(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.event_loop.lock().as_ref().map(|l| l.clone_ref(py))
    }

    /// True once the loop that started the bus has shut down.
    pub fn loop_gone(&self) -> bool {
        self.loop_gone.load(Ordering::Acquire)
    }

    /// Records whether the bus's loop has shut down.
    pub fn set_loop_gone(&self, gone: bool) {
        self.loop_gone.store(gone, Ordering::Release);
    }

    /// Wakes the loop unless a wake-up is already pending.
    pub fn wake(&self) {
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            self.force_wake();
        }
    }

    /// Writes a wake-up byte regardless of the pending flag.
    pub fn force_wake(&self) {
        // NOTE: a full socket buffer means wake-ups are already queued; dropping
        // this byte loses nothing.
        let _ = (&self.tx).write(&[1]);
    }

    /// Reads every pending wake-up byte.
    pub fn drain_wakeups(&self) {
        let mut buf = [0u8; 256];
        while let Ok(n) = (&self.rx).read(&mut buf) {
            if n < buf.len() {
                break;
            }
        }
    }

    /// Runs `f` on the event loop with the GIL, soon (one wake-up per burst).
    pub fn call_soon(&self, f: LoopCall) {
        self.calls.lock().push(f);
        self.wake();
    }

    fn push(&self, consumer: Arc<PyConsumer>, job: PyJobRef) {
        self.jobs.lock().push_back((consumer, job));
        self.wake();
    }

    /// Runs waiting jobs on the event loop, up to about `budget` items; returns
    /// true if it stopped because of the budget (a wake-up is then re-armed).
    pub fn run_pending(&self, py: Python<'_>, budget: usize) -> PyResult<bool> {
        let mut done = 0usize;
        loop {
            let calls: Vec<LoopCall> = std::mem::take(&mut *self.calls.lock());
            for call in calls {
                call(py);
            }
            let batch: Vec<_> = self.jobs.lock().drain(..).collect();
            if batch.is_empty() {
                self.wake_pending.store(false, Ordering::Release);
                // NOTE: re-check after clearing the flag: a push that saw the flag
                // still set did not write a wake-up.
                if self.jobs.lock().is_empty() && self.calls.lock().is_empty() {
                    return Ok(false);
                }
                self.wake_pending.store(true, Ordering::Release);
                continue;
            }
            let mut rest = batch.into_iter();
            for (consumer, job) in rest.by_ref() {
                done += job.items.len();
                let job = Bound::new(py, PyJob::new(consumer, job))?;
                if let Some(aw) = PyJob::step(&job, None)? {
                    let timeout = job.get().consumer.timeout;
                    CONTINUE_JOB
                        .import(py, "mpm_events._bus", "continue_job")?
                        .call1((job, aw, timeout))?;
                }
                if done >= budget {
                    break;
                }
            }
            let rest: Vec<_> = rest.collect();
            if done >= budget {
                let mut jobs = self.jobs.lock();
                for item in rest.into_iter().rev() {
                    jobs.push_front(item);
                }
                drop(jobs);
                self.force_wake();
                return Ok(true);
            }
        }
    }
}

/// Runs a lane's jobs on the event loop.
pub struct LoopExecutor {
    pub consumer: Arc<PyConsumer>,
    pub inbox: Arc<Inbox>,
}

impl Executor<EventRef> for LoopExecutor {
    fn execute(&self, job: PyJobRef) {
        self.inbox.push(self.consumer.clone(), job);
    }
}

/// Runs a lane's jobs on a worker thread of its own.
///
/// The worker is a Python daemon thread (`_bus.sync_worker`) that calls the
/// consumer from Python frames; it waits for jobs here without the GIL. Keeping
/// Rust frames off its stack while the consumer runs is what makes interpreter
/// exit safe even when a consumer is busy at that moment.
pub struct ThreadExecutor {
    consumer: Arc<PyConsumer>,
    inbox: Arc<Inbox>,
    tx: Mutex<Option<mpsc::Sender<PyJobRef>>>,
}

impl ThreadExecutor {
    /// A worker for `consumer`; `inbox` gives it the event loop for awaitables.
    pub fn new(py: Python<'_>, consumer: Arc<PyConsumer>, inbox: Arc<Inbox>) -> PyResult<Self> {
        let (tx, rx) = mpsc::channel::<PyJobRef>();
        start_worker(py, consumer.clone(), inbox.clone(), rx)?;
        Ok(ThreadExecutor {
            consumer,
            inbox,
            tx: Mutex::new(Some(tx)),
        })
    }
}

fn start_worker(
    py: Python<'_>,
    consumer: Arc<PyConsumer>,
    inbox: Arc<Inbox>,
    rx: mpsc::Receiver<PyJobRef>,
) -> PyResult<()> {
    let name = format!("mpm-events:{}", consumer.name);
    let source = Py::new(
        py,
        JobSource {
            consumer,
            inbox,
            rx: Mutex::new(rx),
            closed: AtomicBool::new(false),
        },
    )?;
    py.import("mpm_events._bus")?
        .call_method1("start_sync_worker", (source, name))?;
    Ok(())
}

impl Executor<EventRef> for ThreadExecutor {
    fn execute(&self, job: PyJobRef) {
        let sent = self.tx.lock().as_ref().map(|tx| tx.send(job.clone()));
        if !matches!(sent, Some(Ok(()))) {
            job.fail_rest("the consumer's worker thread is gone");
        }
    }

    fn abandon(&self) {
        // NOTE: Python threads cannot be killed; the stuck worker exits when its
        // call returns (its results are ignored), and a new one takes over. The
        // new thread is started from the loop, since this runs without the GIL.
        let (tx, rx) = mpsc::channel::<PyJobRef>();
        *self.tx.lock() = Some(tx);
        let (consumer, inbox) = (self.consumer.clone(), self.inbox.clone());
        self.inbox.call_soon(Box::new(move |py| {
            if let Err(e) = start_worker(py, consumer, inbox, rx) {
                e.print(py);
            }
        }));
    }

    fn close(&self) {
        self.tx.lock().take();
    }
}

/// Where a worker thread takes its jobs from (used by `_bus.sync_worker`).
#[pyclass(module = "mpm_events._core", name = "_JobSource", frozen)]
pub struct JobSource {
    consumer: Arc<PyConsumer>,
    inbox: Arc<Inbox>,
    rx: Mutex<mpsc::Receiver<PyJobRef>>,
    closed: AtomicBool,
}

#[pymethods]
impl JobSource {
    /// The next job, waiting without the GIL; None once the lane is closed.
    fn next_job(&self, py: Python<'_>) -> PyResult<Option<Py<PyJob>>> {
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Ok(None);
            }
            let got = py.detach(|| {
                self.rx
                    .lock()
                    .recv_timeout(std::time::Duration::from_millis(200))
            });
            match got {
                Ok(job) => return Py::new(py, PyJob::new(self.consumer.clone(), job)).map(Some),
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(None),
            }
        }
    }

    /// Makes `next_job` return None (interpreter exit).
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// `(consume, consume_batch, filter_func, transform_func, error_handler, timeout)`.
    #[allow(clippy::type_complexity)]
    fn callables(
        &self,
        py: Python<'_>,
    ) -> (
        Py<PyAny>,
        Option<Py<PyAny>>,
        Option<Py<PyAny>>,
        Option<Py<PyAny>>,
        Option<Py<PyAny>>,
        f64,
    ) {
        let c = &self.consumer;
        let opt = |o: &Option<Py<PyAny>>| o.as_ref().map(|x| x.clone_ref(py));
        (
            c.consume.clone_ref(py),
            opt(&c.consume_batch),
            opt(&c.filter),
            opt(&c.transform),
            opt(&c.error_handler),
            c.timeout,
        )
    }

    /// The event loop that started the bus (for awaitables), if any.
    fn event_loop(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.inbox.current_loop(py)
    }
}

enum Driven<'py> {
    Done(Bound<'py, PyAny>),
    Raised(PyErr),
    Suspended(Bound<'py, PyAny>),
}

/// Steps an awaitable once: finished, raised, or suspended (then returns an
/// awaitable that continues it from where it stopped).
fn drive<'py>(py: Python<'py>, res: Bound<'py, PyAny>) -> PyResult<Driven<'py>> {
    let coro_type = COROUTINE_TYPE.import(py, "types", "CoroutineType")?;
    let iter = if res.get_type().is(coro_type) {
        res.clone()
    } else if let Ok(await_fn) = res.getattr(pyo3::intern!(py, "__await__")) {
        match await_fn.call0() {
            Ok(it) => it,
            Err(e) => return Ok(Driven::Raised(e)),
        }
    } else {
        return Ok(Driven::Done(res));
    };
    let mut out: *mut ffi::PyObject = std::ptr::null_mut();
    // SAFETY: `iter` is a live object; PyIter_Send returns a new reference in
    // `out` for RETURN and NEXT, and sets an exception for ERROR.
    let status = unsafe { ffi::PyIter_Send(iter.as_ptr(), py.None().as_ptr(), &mut out) };
    match status {
        ffi::PySendResult::PYGEN_RETURN => {
            Ok(Driven::Done(unsafe { Bound::from_owned_ptr(py, out) }))
        }
        ffi::PySendResult::PYGEN_NEXT => {
            let yielded = unsafe { Bound::from_owned_ptr(py, out) };
            let cont = RESUME_FROM
                .import(py, "mpm_events._bus", "resume_from")?
                .call1((iter, yielded))?;
            Ok(Driven::Suspended(cont))
        }
        _ => Ok(Driven::Raised(PyErr::fetch(py))),
    }
}

fn describe(py: Python<'_>, e: &PyErr) -> String {
    let ty = e
        .get_type(py)
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Exception".into());
    let msg = e.value(py).str().map(|s| s.to_string()).unwrap_or_default();
    if msg.is_empty() {
        ty
    } else {
        format!("{ty}: {msg}")
    }
}

fn interpret(value: &Bound<'_, PyAny>, what: &str) -> Outcome {
    if value.is_none() {
        return Outcome::Failure(format!("{what} returned None (expected True on success)"));
    }
    match value.is_truthy() {
        Ok(true) => Outcome::Success,
        _ => Outcome::Failure(format!(
            "{what} returned {}",
            value.repr().map(|r| r.to_string()).unwrap_or_default()
        )),
    }
}

enum Prepared<'py> {
    Ready(Bound<'py, PyAny>),
    Filtered,
    Failed(PyErr, String),
}

#[derive(Default)]
struct BatchState {
    pre: Vec<Option<Outcome>>,
    members: Vec<usize>,
}

/// A job being run by Python (exposed so `_bus.continue_job` can resume it).
#[pyclass(module = "mpm_events._core", name = "_Job", frozen)]
pub struct PyJob {
    consumer: Arc<PyConsumer>,
    job: PyJobRef,
    batch: Mutex<BatchState>,
    awaiting_handler: AtomicBool,
}

impl PyJob {
    fn new(consumer: Arc<PyConsumer>, job: PyJobRef) -> Self {
        PyJob {
            consumer,
            job,
            batch: Mutex::new(BatchState::default()),
            awaiting_handler: AtomicBool::new(false),
        }
    }

    fn is_batch(&self) -> bool {
        self.job.config().batch_size > 1 && self.consumer.consume_batch.is_some()
    }

    fn prepare<'py>(&self, py: Python<'py>, event: Bound<'py, PyAny>) -> Prepared<'py> {
        let c = &self.consumer;
        if let Some(f) = &c.filter {
            match f.bind(py).call1((&event,)) {
                Err(e) => {
                    let msg = format!("filter_func raised {}", describe(py, &e));
                    return Prepared::Failed(e, msg);
                }
                // NOTE: a result whose truth value raises is the filter's error, as
                // `if not filter_func(event)` makes it in the worker thread.
                Ok(v) => match v.is_truthy() {
                    Ok(true) => {}
                    Ok(false) => return Prepared::Filtered,
                    Err(e) => {
                        let msg = format!("filter_func raised {}", describe(py, &e));
                        return Prepared::Failed(e, msg);
                    }
                },
            }
        }
        if let Some(t) = &c.transform {
            return match t.bind(py).call1((&event,)) {
                Err(e) => {
                    let msg = format!("transform_func raised {}", describe(py, &e));
                    Prepared::Failed(e, msg)
                }
                Ok(v) if v.is_none() => {
                    let e = pyo3::exceptions::PyTypeError::new_err("transform_func returned None");
                    Prepared::Failed(e, "transform_func returned None instead of an event".into())
                }
                Ok(v) => Prepared::Ready(v),
            };
        }
        Prepared::Ready(event)
    }

    /// Calls the consumer's `error_handler(event, exc)`; returns its
    /// continuation if it suspended (the caller awaits it before going on).
    fn report_error<'py>(
        &self,
        py: Python<'py>,
        index: usize,
        err: &PyErr,
    ) -> Option<Bound<'py, PyAny>> {
        let h = self.consumer.error_handler.as_ref()?;
        let event = self.job.items[index].entry.event.event(py).ok()?.bind(py);
        let result = h
            .bind(py)
            .call1((event, err.value(py)))
            .and_then(|r| drive(py, r));
        match result {
            Ok(Driven::Done(_)) => None,
            Ok(Driven::Suspended(aw)) => Some(aw),
            Ok(Driven::Raised(e)) | Err(e) => {
                self.handler_failed(py, &e);
                None
            }
        }
    }

    fn handler_failed(&self, py: Python<'_>, e: &PyErr) {
        super::log_error(
            py,
            &format!(
                "error_handler of consumer {:?} raised {}",
                self.consumer.name,
                describe(py, e)
            ),
        );
    }

    /// Calls the error handler without waiting for it (batch jobs).
    fn report_error_detached(&self, py: Python<'_>, index: usize, err: &PyErr) {
        if let Some(aw) = self.report_error(py, index, err) {
            if let Err(e) = SPAWN
                .import(py, "mpm_events._bus", "spawn")
                .and_then(|s| s.call1((aw, self.consumer.name.as_ref())))
            {
                e.print(py);
            }
        }
    }

    /// Records a failure, then runs the error handler; returns the handler's
    /// continuation if it suspended.
    fn fail<'py>(
        &self,
        py: Python<'py>,
        index: usize,
        err: PyErr,
        msg: String,
    ) -> Option<Bound<'py, PyAny>> {
        self.job.record(Outcome::Failure(msg));
        let aw = self.report_error(py, index, &err)?;
        self.awaiting_handler.store(true, Ordering::Release);
        Some(aw)
    }

    /// Runs items until the job is done (None) or a call suspends (its continuation).
    fn step<'py>(
        slf: &Bound<'py, Self>,
        resumed: Option<Result<Bound<'py, PyAny>, PyErr>>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let py = slf.py();
        let this = slf.get();
        if this.is_batch() {
            return this.step_batch(py, resumed);
        }
        if let Some(r) = resumed {
            if this.awaiting_handler.swap(false, Ordering::AcqRel) {
                if let Err(e) = r {
                    this.handler_failed(py, &e);
                }
            } else {
                let i = this.job.recorded();
                match r {
                    Ok(v) => {
                        this.job.record(interpret(&v, "consume()"));
                    }
                    Err(e) => {
                        let msg = format!("consume() raised {}", describe(py, &e));
                        if let Some(aw) = this.fail(py, i, e, msg) {
                            return Ok(Some(aw));
                        }
                    }
                }
            }
        }
        if this.job.is_finished() {
            return Ok(None);
        }
        // NOTE: outcomes are collected here and recorded in one go (one lock per
        // run instead of per event); they are flushed before anything that
        // records on its own or leaves this function.
        let base = this.job.recorded();
        let n = this.job.items.len();
        let mut pending: Vec<Outcome> = Vec::with_capacity(n.saturating_sub(base));
        let flush = |pending: &mut Vec<Outcome>| {
            if !pending.is_empty() {
                this.job.record_all(std::mem::take(pending));
            }
        };
        let consume = this.consumer.consume.bind(py);
        loop {
            let i = base + pending.len();
            if i >= n {
                flush(&mut pending);
                this.job.finish();
                return Ok(None);
            }
            if this.job.is_cut() {
                // NOTE: the bus is stopping (or the consumer left): no new call.
                flush(&mut pending);
                this.job.cancel_rest(STOPPED);
                return Ok(None);
            }
            let event = match this.job.items[i].entry.event.event(py) {
                Ok(e) => e.bind(py).clone().into_any(),
                Err(e) => {
                    flush(&mut pending);
                    return Err(e);
                }
            };
            let target = match this.prepare(py, event) {
                Prepared::Filtered => {
                    pending.push(Outcome::Filtered);
                    continue;
                }
                Prepared::Failed(e, msg) => {
                    flush(&mut pending);
                    if let Some(aw) = this.fail(py, i, e, msg) {
                        return Ok(Some(aw));
                    }
                    return Self::step(slf, None);
                }
                Prepared::Ready(t) => t,
            };
            match consume.call1((target,)).map(|r| drive(py, r)) {
                Err(e) | Ok(Ok(Driven::Raised(e))) => {
                    flush(&mut pending);
                    let msg = format!("consume() raised {}", describe(py, &e));
                    if let Some(aw) = this.fail(py, i, e, msg) {
                        return Ok(Some(aw));
                    }
                    return Self::step(slf, None);
                }
                Ok(Ok(Driven::Done(v))) => pending.push(interpret(&v, "consume()")),
                Ok(Ok(Driven::Suspended(aw))) => {
                    flush(&mut pending);
                    return Ok(Some(aw));
                }
                Ok(Err(e)) => {
                    flush(&mut pending);
                    return Err(e);
                }
            }
        }
    }

    fn step_batch<'py>(
        &self,
        py: Python<'py>,
        resumed: Option<Result<Bound<'py, PyAny>, PyErr>>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        if let Some(r) = resumed {
            self.finish_batch(py, r);
            return Ok(None);
        }
        if self.job.is_cut() {
            self.job.cancel_rest(STOPPED);
            return Ok(None);
        }
        let events = PyList::empty(py);
        {
            let mut st = self.batch.lock();
            st.pre = vec![None; self.job.items.len()];
            st.members.clear();
            for (i, item) in self.job.items.iter().enumerate() {
                let event = item.entry.event.event(py)?.bind(py).clone().into_any();
                match self.prepare(py, event) {
                    Prepared::Ready(t) => {
                        events.append(t)?;
                        st.members.push(i);
                    }
                    Prepared::Filtered => st.pre[i] = Some(Outcome::Filtered),
                    Prepared::Failed(e, msg) => {
                        self.report_error_detached(py, i, &e);
                        st.pre[i] = Some(Outcome::Failure(msg));
                    }
                }
            }
            if st.members.is_empty() {
                drop(st);
                self.finish_batch(py, Ok(0i64.into_pyobject(py)?.into_any()));
                return Ok(None);
            }
        }
        let call = self
            .consumer
            .consume_batch
            .as_ref()
            .expect("batch consumer")
            .bind(py)
            .call1((events,));
        match call.map(|r| drive(py, r)) {
            Err(e) | Ok(Ok(Driven::Raised(e))) => self.finish_batch(py, Err(e)),
            Ok(Ok(Driven::Done(v))) => self.finish_batch(py, Ok(v)),
            Ok(Ok(Driven::Suspended(aw))) => return Ok(Some(aw)),
            Ok(Err(e)) => return Err(e),
        }
        Ok(None)
    }

    fn finish_batch(&self, py: Python<'_>, result: Result<Bound<'_, PyAny>, PyErr>) {
        let st = std::mem::take(&mut *self.batch.lock());
        let m = st.members.len();
        let (ok, failure) = match result {
            Ok(v) => {
                let ok = if v.is_instance_of::<PyBool>() {
                    if v.is_truthy().unwrap_or(false) {
                        m
                    } else {
                        0
                    }
                } else {
                    v.extract::<i64>()
                        .map(|n| n.clamp(0, m as i64) as usize)
                        .unwrap_or(0)
                };
                (
                    ok,
                    format!(
                        "consume_batch() reported {ok} of {m} events handled (returned {})",
                        v.repr().map(|r| r.to_string()).unwrap_or_default()
                    ),
                )
            }
            Err(e) => {
                let msg = format!("consume_batch() raised {}", describe(py, &e));
                if let Some(first) = st.members.first() {
                    self.report_error_detached(py, *first, &e);
                }
                (0, msg)
            }
        };
        let mut outcomes = st.pre;
        for (rank, i) in st.members.iter().enumerate() {
            outcomes[*i] = Some(if rank < ok {
                Outcome::Success
            } else {
                Outcome::Failure(failure.clone())
            });
        }
        self.job.record_all(
            outcomes
                .into_iter()
                .map(|o| o.unwrap_or(Outcome::Failure("no outcome".into()))),
        );
        self.job.finish();
    }
}

#[pymethods]
impl PyJob {
    /// Records the result (or exception) of the suspended call and continues;
    /// returns the next continuation to await, or None when the job is done.
    #[pyo3(signature = (result, exc=None))]
    fn resume<'py>(
        slf: &Bound<'py, Self>,
        result: Bound<'py, PyAny>,
        exc: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let resumed = match exc {
            Some(e) if !e.is_none() => Err(PyErr::from_value(e)),
            _ => Ok(result),
        };
        Self::step(slf, Some(resumed))
    }

    /// The consumer's name.
    #[getter]
    fn consumer_name(&self) -> &str {
        &self.consumer.name
    }

    /// The events of the job, in delivery order (sync worker).
    fn events<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let events = self
            .job
            .items
            .iter()
            .map(|d| d.entry.event.event(py).map(|e| e.clone_ref(py)))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, events)
    }

    /// True when the job calls `consume_batch` (sync worker).
    #[getter]
    fn batch(&self) -> bool {
        self.is_batch()
    }

    /// True once the job is closed (for example abandoned after a timeout).
    #[getter]
    fn finished(&self) -> bool {
        self.job.is_finished()
    }

    /// True once the bus asked that no further event of this job be started.
    #[getter]
    fn cut(&self) -> bool {
        self.job.is_cut()
    }

    /// Closes the job, marking the events not yet started as not attempted
    /// (the bus stopped or the consumer unsubscribed).
    fn cancel_rest(&self) {
        self.job.cancel_rest(STOPPED);
    }

    /// Records that the filter skipped the next event (sync worker).
    fn record_filtered(&self) {
        self.job.record(Outcome::Filtered);
    }

    /// Records the next event's `consume()` result (sync worker).
    fn record_value(&self, value: &Bound<'_, PyAny>) {
        self.job.record(interpret(value, "consume()"));
    }

    /// Records that `stage` (e.g. "consume()", "filter_func") raised `exc` for
    /// the next event (sync worker).
    fn record_error(&self, py: Python<'_>, exc: Bound<'_, PyAny>, stage: &str) {
        let e = PyErr::from_value(exc);
        self.job.record(Outcome::Failure(format!(
            "{stage} raised {}",
            describe(py, &e)
        )));
    }

    /// Records a failure with a message (sync worker).
    fn record_failure(&self, message: &str) {
        self.job.record(Outcome::Failure(message.to_owned()));
    }

    /// Closes a batch job (sync worker): `pre` has, per event, None (passed to
    /// `consume_batch`), "filtered", or a failure message; then the batch's
    /// result or exception.
    #[pyo3(signature = (pre, result, exc=None))]
    fn record_batch(
        &self,
        py: Python<'_>,
        pre: Vec<Option<String>>,
        result: Bound<'_, PyAny>,
        exc: Option<Bound<'_, PyAny>>,
    ) {
        {
            let mut st = self.batch.lock();
            st.members = pre
                .iter()
                .enumerate()
                .filter(|(_, p)| p.is_none())
                .map(|(i, _)| i)
                .collect();
            st.pre = pre
                .into_iter()
                .map(|p| match p.as_deref() {
                    None => None,
                    Some("filtered") => Some(Outcome::Filtered),
                    Some(m) => Some(Outcome::Failure(m.to_owned())),
                })
                .collect();
        }
        let r = match exc {
            Some(e) if !e.is_none() => Err(PyErr::from_value(e)),
            _ => Ok(result),
        };
        self.finish_batch(py, r);
    }

    /// Closes the job (items without an outcome fail).
    fn finish(&self) {
        self.job.finish();
    }

    /// Abandons the job: what has no outcome yet fails with `reason`.
    fn abandon(&self, reason: &str) {
        let missing = self.job.items.len().saturating_sub(self.job.recorded());
        self.job.record_all(std::iter::repeat_n(
            Outcome::Failure(reason.to_owned()),
            missing,
        ));
        self.job.finish();
    }
}
