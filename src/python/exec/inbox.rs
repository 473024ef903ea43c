//! The inbox of the event loop: jobs for coroutine consumers and calls queued by
//! threads without the GIL, run by the loop in one go per wake-up
//! ([`crate::wake::Waker`]).

use crate::dispatch::Executor;
use crate::python::exec::loop_exec::*;
use crate::python::model::accepted::AcceptedEvent;
use crate::python::runtime::py_api;
use crate::wake::Waker;
use parking_lot::Mutex;
use pyo3::prelude::*;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Work queued for the event loop from a thread without the GIL.
pub type LoopCall = Box<dyn FnOnce(Python<'_>) + Send>;

/// Where jobs for the event loop wait, and how the loop is woken.
pub struct Inbox {
    jobs: Mutex<VecDeque<(Arc<PyConsumer>, PyJobRef)>>,
    calls: Mutex<Vec<LoopCall>>,
    /// Set when the loop that runs coroutine consumers shuts down (see
    /// `_bus.watch_loop`); the next publish rebinds the bus to its running loop.
    loop_gone: AtomicBool,
    waker: Waker,
    /// The loop that runs coroutine consumers (set by `start()`).
    pub event_loop: Mutex<Option<Py<PyAny>>>,
}

impl Inbox {
    /// A new inbox with its wake-up socket pair.
    pub fn new() -> std::io::Result<Self> {
        Ok(Inbox {
            jobs: Mutex::new(VecDeque::new()),
            calls: Mutex::new(Vec::new()),
            loop_gone: AtomicBool::new(false),
            waker: Waker::new()?,
            event_loop: Mutex::new(None),
        })
    }

    /// The descriptor the event loop watches.
    pub fn fd(&self) -> i32 {
        self.waker.fd()
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
        self.waker.wake();
    }

    /// Writes a wake-up byte regardless of the pending flag.
    pub fn force_wake(&self) {
        self.waker.force_wake();
    }

    /// Reads every pending wake-up byte.
    pub fn drain_wakeups(&self) {
        self.waker.drain();
    }

    /// Runs `f` on the event loop with the GIL, soon (one wake-up per burst).
    pub fn call_soon(&self, f: LoopCall) {
        self.calls.lock().push(f);
        self.wake();
    }

    pub(crate) fn push(&self, consumer: Arc<PyConsumer>, job: PyJobRef) {
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
                // NOTE: see `Waker::settle`: a push that saw the flag still set
                // wrote no wake-up, so re-check after clearing it.
                if self
                    .waker
                    .settle(|| self.jobs.lock().is_empty() && self.calls.lock().is_empty())
                {
                    return Ok(false);
                }
                continue;
            }
            let mut rest = batch.into_iter();
            for (consumer, job) in rest.by_ref() {
                done += job.items.len();
                let job = Bound::new(py, PyJob::new(consumer, job))?;
                if let Some(aw) = PyJob::step(&job, None)? {
                    let timeout = job.get().consumer.timeout;
                    py_api::continue_job(py, (job, aw, timeout))?;
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

impl Executor<AcceptedEvent> for LoopExecutor {
    fn execute(&self, job: PyJobRef) {
        self.inbox.push(self.consumer.clone(), job);
    }
}
