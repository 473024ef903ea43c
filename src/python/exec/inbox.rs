//! The inbox of the event loop: jobs for coroutine consumers and calls queued by
//! threads without the GIL, run by the loop in one go per wake-up
//! ([`crate::wake::Waker`]).
//!
//! Two ways to wake the loop: a byte on the wake-up socket (any thread), or, for
//! a publish made on the loop's own thread inside [`Inbox::deferring`], a call
//! to the loop's pump (`_bus.loop._Pump.wake`) when the publish returns, which
//! queues one run on the loop (a reusable Handle on asyncio's ready queue, or the
//! Future a pump Task waits on elsewhere). The second costs no system call and no
//! selector round: at paced rates (W13, issue 16) the socket's write, its
//! readiness and its read were most of what an event cost the loop.

use crate::dispatch::Executor;
use crate::python::exec::loop_exec::*;
use crate::python::model::accepted::AcceptedEvent;
use crate::python::runtime::py_api;
use crate::wake::Waker;
use parking_lot::Mutex;
use pyo3::prelude::*;
use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

thread_local! {
    /// A small number naming this thread (0 is never used).
    static THREAD: u64 = {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        NEXT.fetch_add(1, Ordering::Relaxed)
    };
    /// The inbox whose wake-ups this thread defers right now ([`Inbox::deferring`]).
    static DEFERRING: Cell<usize> = const { Cell::new(0) };
}

fn this_thread() -> u64 {
    THREAD.with(|t| *t)
}

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
    /// The loop's pump (`_Pump.wake`, returns True once it scheduled a run) and
    /// the loop's thread; 0 while there is none (wake-ups then use the socket).
    pump: Mutex<Option<Py<PyAny>>>,
    pump_thread: AtomicU64,
    /// A wake-up owed to the loop by the [`Inbox::deferring`] scope running now.
    deferred: AtomicBool,
}

/// Restores the previous deferring scope and pays the wake-up it owes.
struct Deferring<'a, 'py> {
    inbox: &'a Inbox,
    previous: usize,
    py: Python<'py>,
}

impl Drop for Deferring<'_, '_> {
    fn drop(&mut self) {
        DEFERRING.with(|d| d.set(self.previous));
        if self.inbox.deferred.swap(false, Ordering::AcqRel) {
            self.inbox.wake_pump(self.py);
        }
    }
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
            pump: Mutex::new(None),
            pump_thread: AtomicU64::new(0),
            deferred: AtomicBool::new(false),
        })
    }

    /// Sets (on the loop's thread) or clears the loop's pump.
    pub fn set_pump(&self, pump: Option<Py<PyAny>>) {
        let thread = if pump.is_some() { this_thread() } else { 0 };
        *self.pump.lock() = pump;
        self.pump_thread.store(thread, Ordering::Release);
    }

    /// Runs `f` (a publish) with the wake-ups it causes deferred to its end when
    /// this is the loop's thread: then one call to the pump replaces the socket
    /// round. Elsewhere `f` just runs.
    pub fn deferring<R>(&self, py: Python<'_>, f: impl FnOnce() -> R) -> R {
        if self.pump_thread.load(Ordering::Acquire) != this_thread() {
            return f();
        }
        let me = self as *const Inbox as usize;
        let previous = DEFERRING.with(|d| d.replace(me));
        let _scope = Deferring {
            inbox: self,
            previous,
            py,
        };
        f()
    }

    /// Pays a deferred wake-up: the pump's `wake()`, or the socket when the pump
    /// is gone or cannot schedule (its loop closed).
    fn wake_pump(&self, py: Python<'_>) {
        let pump = self.pump.lock().as_ref().map(|p| p.clone_ref(py));
        let scheduled = pump.is_some_and(|p| {
            p.call0(py)
                .and_then(|r| r.bind(py).is_truthy())
                .unwrap_or(false)
        });
        if !scheduled {
            self.waker.force_wake();
        }
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

    /// Wakes the loop unless a wake-up is already pending (deferred to the end
    /// of the [`Inbox::deferring`] scope this thread is in for this inbox).
    pub fn wake(&self) {
        if self.waker.claim() {
            let me = self as *const Inbox as usize;
            if DEFERRING.with(|d| d.get()) == me {
                self.deferred.store(true, Ordering::Release);
            } else {
                self.waker.force_wake();
            }
        }
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
