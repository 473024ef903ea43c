//! Coroutine consumers: their jobs run on the event loop that started the bus.
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

use crate::dispatch::{batch_outcomes, BatchEnd, Job, Outcome, STOPPED};
use crate::python::model::accepted::AcceptedEvent;
use crate::python::runtime::py_api;
use parking_lot::Mutex;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyList, PyType};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A job of ours.
pub type PyJobRef = Arc<Job<AcceptedEvent>>;

static COROUTINE_TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();

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

pub(crate) enum Driven<'py> {
    Done(Bound<'py, PyAny>),
    Raised(PyErr),
    Suspended(Bound<'py, PyAny>),
}

/// Steps an awaitable once: finished, raised, or suspended (then returns an
/// awaitable that continues it from where it stopped).
pub(crate) fn drive<'py>(py: Python<'py>, res: Bound<'py, PyAny>) -> PyResult<Driven<'py>> {
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
            let cont = py_api::resume_from(py, (iter, yielded))?;
            Ok(Driven::Suspended(cont))
        }
        _ => Ok(Driven::Raised(PyErr::fetch(py))),
    }
}

pub(crate) fn describe(py: Python<'_>, e: &PyErr) -> String {
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

pub(crate) fn interpret(value: &Bound<'_, PyAny>, what: &str) -> Outcome {
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

pub(crate) enum Prepared<'py> {
    Ready(Bound<'py, PyAny>),
    Filtered,
    Failed(PyErr, String),
}

#[derive(Default)]
pub(crate) struct BatchState {
    pre: Vec<Option<Outcome>>,
    members: Vec<usize>,
}

/// A job being run by Python (exposed so `_bus.continue_job` can resume it).
#[pyclass(module = "mpm_events._core", name = "_Job", frozen)]
pub struct PyJob {
    pub(crate) consumer: Arc<PyConsumer>,
    job: PyJobRef,
    batch: Mutex<BatchState>,
    awaiting_handler: AtomicBool,
}

impl PyJob {
    pub(crate) fn new(consumer: Arc<PyConsumer>, job: PyJobRef) -> Self {
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
        crate::python::runtime::log_error(
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
            if let Err(e) = py_api::spawn(py, (aw, self.consumer.name.as_ref())) {
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
    pub(crate) fn step<'py>(
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
            self.finish_batch(py, r, true);
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
                self.finish_batch(py, Ok(0i64.into_pyobject(py)?.into_any()), true);
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
            Err(e) | Ok(Ok(Driven::Raised(e))) => self.finish_batch(py, Err(e), true),
            Ok(Ok(Driven::Done(v))) => self.finish_batch(py, Ok(v), true),
            Ok(Ok(Driven::Suspended(aw))) => return Ok(Some(aw)),
            Ok(Err(e)) => return Err(e),
        }
        Ok(None)
    }

    /// Records a batch call's outcome. `report`: call the error handler for a
    /// raising batch here (the loop executor); the worker thread has already
    /// called it on its own thread, where an async handler runs on the loop.
    fn finish_batch(&self, py: Python<'_>, result: Result<Bound<'_, PyAny>, PyErr>, report: bool) {
        let st = std::mem::take(&mut *self.batch.lock());
        let end = match result {
            Ok(v) => BatchEnd::Returned {
                all: if v.is_instance_of::<PyBool>() {
                    Some(v.is_truthy().unwrap_or(false))
                } else {
                    None
                },
                count: v.extract::<i64>().unwrap_or(0),
                repr: v.repr().map(|r| r.to_string()).unwrap_or_default(),
            },
            Err(e) => {
                if let (true, Some(first)) = (report, st.members.first()) {
                    self.report_error_detached(py, *first, &e);
                }
                BatchEnd::Raised(describe(py, &e))
            }
        };
        self.job
            .record_all(batch_outcomes(st.pre, &st.members, &end));
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
        self.finish_batch(py, r, false);
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
