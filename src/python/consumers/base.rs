//! The `_NativeConsumer` base class of the built-in consumers: the Python face of a
//! Rust [`Sink`] (the bus runs it with `crate::sinks::executor::SinkExecutor`; these
//! methods let Python code call it directly too).

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::python::model::{build_view, AcceptedEvent, ConsumerConfig, Event};
use crate::python::runtime::runtime;
use crate::sinks::{Sink, SinkItem};

#[doc = stub_doc!(_NativeConsumer)]
#[pyclass(
    module = "mpm_events._core",
    name = "_NativeConsumer",
    subclass,
    frozen
)]
pub struct SinkConsumer {
    pub sink: Arc<dyn Sink>,
    pub config: Py<ConsumerConfig>,
}

impl SinkConsumer {
    fn run_direct(&self, py: Python<'_>, events: &Bound<'_, PyAny>) -> PyResult<usize> {
        let mut items = Vec::new();
        for e in events.try_iter()? {
            let e = e?;
            let owned: Py<Event> = match e.cast::<Event>() {
                Ok(ev) => ev.clone().unbind(),
                Err(_) => Py::new(py, Event::from_foreign(&e)?)?,
            };
            let (eref, ()) = AcceptedEvent::accept(py, owned, crate::clock::now(), |topic| {
                crate::topic::validate_topic(topic).map(|()| (Arc::from(topic), ()))
            })?;
            let view = build_view(py, &eref, self.sink.needs_data())?;
            items.push(SinkItem {
                view: Arc::new(view),
                attempt: 0,
            });
        }
        let sink = self.sink.clone();
        let results = py.detach(|| runtime().block_on(sink.consume(items)));
        Ok(results.iter().filter(|r| r.is_ok()).count())
    }
}

#[pymethods]
impl SinkConsumer {
    #[doc = stub_doc!(_NativeConsumer, config)]
    #[getter]
    fn config(&self, py: Python<'_>) -> Py<ConsumerConfig> {
        self.config.clone_ref(py)
    }

    // NOTE: prepares the sink (e.g. creates the dead-letter directory); False,
    // logged, on failure.
    #[doc = stub_doc!(_NativeConsumer, initialize)]
    fn initialize(&self, py: Python<'_>) -> Py<PyAny> {
        let ok = match self.sink.initialize() {
            Ok(()) => true,
            Err(e) => {
                crate::python::runtime::log_error(py, &e);
                false
            }
        };
        crate::python::runtime::awaitable::Ready::of_bool(py, ok)
    }

    #[doc = stub_doc!(_NativeConsumer, consume)]
    fn consume(&self, py: Python<'_>, event: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let list = PyList::new(py, [event])?;
        Ok(crate::python::runtime::awaitable::Ready::of_bool(
            py,
            self.run_direct(py, list.as_any())? == 1,
        ))
    }

    #[doc = stub_doc!(_NativeConsumer, consume_batch)]
    fn consume_batch(&self, py: Python<'_>, events: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let n = self.run_direct(py, events)?;
        crate::python::runtime::awaitable::Ready::of(py, n.into_pyobject(py)?.into_any().unbind())
    }

    #[doc = stub_doc!(_NativeConsumer, shutdown)]
    fn shutdown<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let sink = self.sink.clone();
        let f = pyo3::types::PyCFunction::new_closure(py, None, None, move |args, _| {
            let sink = sink.clone();
            args.py().detach(|| runtime().block_on(sink.shutdown()));
        })?;
        crate::python::runtime::py_api::to_thread(py, (f,))
    }

    #[doc = stub_doc!(_NativeConsumer, is_healthy)]
    #[getter]
    fn is_healthy(&self) -> bool {
        self.sink.is_healthy()
    }

    #[doc = stub_doc!(_NativeConsumer, get_metrics)]
    fn get_metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        pythonize::pythonize(py, &self.sink.metrics())
            .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))
    }
}
