//! Plain-function consumers: each runs on a Python worker thread of its own
//! (`mpm_events._bus.workers`), which takes its jobs here without the GIL.

use crate::dispatch::Executor;
use crate::python::exec::inbox::*;
use crate::python::exec::loop_exec::*;
use crate::python::model::accepted::AcceptedEvent;
use parking_lot::Mutex;
use pyo3::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

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

pub(crate) fn start_worker(
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
    crate::python::runtime::py_api::start_sync_worker(py, (source, name))?;
    Ok(())
}

impl Executor<AcceptedEvent> for ThreadExecutor {
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
