//! `HookEventProducer` in Rust: the hook handler's hot path.
//!
//! Hook handlers publish an event per tool use; building the event and handing
//! it to our bus here costs no coroutine, no Python frame and no Python-level
//! dict of metrics per event; the bus keeps the event's fields in Rust and makes
//! the `Event` object only when a Python consumer first needs it. With any other
//! bus (a test double, the original's bus) the producer awaits that bus's
//! `publish()` with an `Event`, like the original does.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString, PyType};

use crate::python::bus::EventBus;
use crate::python::model::{DraftData, Event, EventParts};
use crate::python::runtime::awaitable::Ready;

static OWN_PUBLISH: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

#[doc = stub_doc!(HookEventProducer)]
#[pyclass(
    module = "mpm_events._core",
    name = "HookEventProducer",
    subclass,
    frozen
)]
pub struct HookEventProducer {
    bus: Py<PyAny>,
    fast: Option<Py<EventBus>>,
    source: Py<PyString>,
    published: AtomicU64,
    failed: AtomicU64,
    batches: AtomicU64,
}

impl HookEventProducer {
    /// True when `publish` is ours (not overridden by a Python subclass).
    fn publish_is_ours(slf: &Bound<'_, Self>) -> PyResult<bool> {
        let py = slf.py();
        if slf.get_type().is(py.get_type::<HookEventProducer>()) {
            return Ok(true);
        }
        let own = OWN_PUBLISH.get_or_try_init(py, || {
            Ok::<_, PyErr>(
                py.get_type::<HookEventProducer>()
                    .getattr("publish")?
                    .unbind(),
            )
        })?;
        Ok(slf.get_type().getattr("publish")?.is(own.bind(py)))
    }

    fn count(&self, ok: bool) {
        if ok {
            self.published.fetch_add(1, Ordering::Relaxed);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Logs a failed publish into our bus and counts the outcome; never raises.
    fn settle(&self, py: Python<'_>, result: PyResult<bool>) -> bool {
        let ok = match result {
            Ok(ok) => ok,
            Err(e) => {
                crate::python::runtime::log_error(
                    py,
                    &format!("Error publishing hook event: {}", e.value(py)),
                );
                false
            }
        };
        self.count(ok);
        ok
    }

    /// Publishes directly into our bus; never raises.
    fn send_fast(&self, py: Python<'_>, bus: &Py<EventBus>, event: &Bound<'_, PyAny>) -> bool {
        self.settle(py, bus.get().publish_now(event))
    }

    /// Hands a new event to the bus: directly into ours (as fields, without an
    /// `Event` object), else as an `Event` through `publish()`.
    fn send<'py>(slf: &Bound<'py, Self>, draft: Draft<'py>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        if let Some(bus) = &this.fast {
            if Self::publish_is_ours(slf)? {
                let Draft {
                    topic,
                    type_,
                    data,
                    correlation_id,
                    priority,
                } = draft;
                let result = bus
                    .get()
                    .accept_parts(py, &topic, priority, data, |data, now| {
                        EventParts::new(
                            type_.unbind(),
                            correlation_id.map(Bound::unbind),
                            data,
                            now,
                        )
                    });
                let ok = this.settle(py, result);
                return Ok(Ready::of_bool(py, ok).into_bound(py).into_any());
            }
        }
        let event = Bound::new(py, draft.into_event(py, this.source.bind(py))?)?;
        slf.call_method1("publish", (event,))
    }

    /// Checks the arguments common to every helper and collects the fields.
    fn make<'py>(
        &self,
        topic: impl Into<Cow<'static, str>>,
        type_: Bound<'py, PyString>,
        data: DraftData<'py>,
        correlation_id: Option<Bound<'py, PyAny>>,
        priority: u8,
    ) -> PyResult<Draft<'py>> {
        let correlation_id = match correlation_id {
            Some(c) if !c.is_none() => Some(c.cast_into::<PyString>().map_err(|e| {
                crate::python::runtime::errors::event_error(format!(
                    "correlation_id must be a str or None, got {}",
                    e.into_inner()
                        .get_type()
                        .name()
                        .map(|n| n.to_string())
                        .unwrap_or_default()
                ))
            })?),
            _ => None,
        };
        Ok(Draft {
            topic: topic.into(),
            type_,
            data,
            correlation_id,
            priority,
        })
    }
}

/// The fields of an event the producer is about to publish.
struct Draft<'py> {
    topic: Cow<'static, str>,
    type_: Bound<'py, PyString>,
    data: DraftData<'py>,
    correlation_id: Option<Bound<'py, PyString>>,
    priority: u8,
}

impl<'py> Draft<'py> {
    /// The `Event` with these fields.
    fn into_event(self, py: Python<'py>, source: &Bound<'py, PyString>) -> PyResult<Event> {
        Event::from_parts(
            py,
            PyString::new(py, &self.topic),
            self.type_,
            source.clone(),
            self.data.into_dict(py)?,
            self.correlation_id,
            self.priority,
        )
    }
}

#[pymethods]
impl HookEventProducer {
    // NOTE: extra arguments are accepted (and ignored) so that a Python subclass
    // may take its own constructor arguments, as it could with the original.
    #[new]
    #[pyo3(signature = (event_bus, *_args, **_kwargs))]
    fn new(
        py: Python<'_>,
        event_bus: Bound<'_, PyAny>,
        _args: &Bound<'_, pyo3::types::PyTuple>,
        _kwargs: Option<&Bound<'_, PyDict>>,
    ) -> Self {
        // NOTE: a "sync" durable bus answers only after the commit; its own publish()
        // returns the awaitable for that. Every other bus of ours answers at once.
        let fast = event_bus
            .cast::<EventBus>()
            .ok()
            .filter(|b| b.get().answers_at_once())
            .map(|b| b.clone().unbind());
        HookEventProducer {
            bus: event_bus.unbind(),
            fast,
            // NOTE: the one shared str, which events kept as fields also report.
            source: crate::python::model::hook_source(py).clone().unbind(),
            published: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            batches: AtomicU64::new(0),
        }
    }

    /// Accepts the constructor's arguments again, so a subclass's
    /// `super().__init__(event_bus)` works (the work is done in `__new__`).
    #[pyo3(signature = (*_args, **_kwargs))]
    fn __init__(
        &self,
        _args: &Bound<'_, pyo3::types::PyTuple>,
        _kwargs: Option<&Bound<'_, PyDict>>,
    ) {
    }

    #[doc = stub_doc!(HookEventProducer, event_bus)]
    #[getter]
    fn event_bus(&self, py: Python<'_>) -> Py<PyAny> {
        self.bus.clone_ref(py)
    }

    #[doc = stub_doc!(HookEventProducer, source_name)]
    #[getter]
    fn source_name(&self, py: Python<'_>) -> Py<PyString> {
        self.source.clone_ref(py)
    }

    #[doc = stub_doc!(HookEventProducer, publish)]
    fn publish<'py>(
        slf: &Bound<'py, Self>,
        event: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        if let Some(bus) = &this.fast {
            return Ok(Ready::of_bool(py, this.send_fast(py, bus, &event))
                .into_bound(py)
                .into_any());
        }
        crate::python::runtime::py_api::publish_via_bus(py, (slf, event))
    }

    #[doc = stub_doc!(HookEventProducer, publish_batch)]
    fn publish_batch<'py>(
        slf: &Bound<'py, Self>,
        events: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        crate::python::runtime::py_api::publish_batch_via_bus(py, (slf, events))
    }

    #[doc = stub_doc!(HookEventProducer, publish_response)]
    #[pyo3(signature = (response_data, correlation_id=None))]
    fn publish_response<'py>(
        slf: &Bound<'py, Self>,
        response_data: Bound<'py, PyAny>,
        correlation_id: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let e = slf.get().make(
            "hook.response",
            PyString::new(py, "AssistantResponse"),
            DraftData::Dict(response_data),
            correlation_id,
            2,
        )?;
        Self::send(slf, e)
    }

    #[doc = stub_doc!(HookEventProducer, publish_tool_use)]
    #[pyo3(signature = (tool_name, tool_params, tool_result=None, correlation_id=None))]
    fn publish_tool_use<'py>(
        slf: &Bound<'py, Self>,
        tool_name: Bound<'py, PyAny>,
        tool_params: Bound<'py, PyAny>,
        tool_result: Option<Bound<'py, PyAny>>,
        correlation_id: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let result = tool_result.unwrap_or_else(|| py.None().into_bound(py));
        // NOTE: the dict is made only if something needs it (see `DraftData`).
        let e = slf.get().make(
            "hook.tool",
            pyo3::intern!(py, "ToolUse").clone(),
            DraftData::ToolUse([tool_name, tool_params, result]),
            correlation_id,
            3,
        )?;
        Self::send(slf, e)
    }

    #[doc = stub_doc!(HookEventProducer, publish_error)]
    #[pyo3(signature = (error_type, error_message, error_details=None, correlation_id=None))]
    fn publish_error<'py>(
        slf: &Bound<'py, Self>,
        error_type: Bound<'py, PyAny>,
        error_message: Bound<'py, PyAny>,
        error_details: Option<Bound<'py, PyAny>>,
        correlation_id: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let data = PyDict::new(py);
        data.set_item("error_type", error_type)?;
        data.set_item("message", error_message)?;
        let details = match error_details {
            Some(d) if d.is_truthy()? => d,
            _ => PyDict::new(py).into_any(),
        };
        data.set_item("details", details)?;
        let e = slf.get().make(
            "hook.error",
            PyString::new(py, "Error"),
            DraftData::Dict(data.into_any()),
            correlation_id,
            1,
        )?;
        Self::send(slf, e)
    }

    #[doc = stub_doc!(HookEventProducer, publish_subagent_event)]
    #[pyo3(signature = (subagent_name, event_type, event_data, correlation_id=None))]
    fn publish_subagent_event<'py>(
        slf: &Bound<'py, Self>,
        subagent_name: Bound<'py, PyAny>,
        event_type: &str,
        event_data: Bound<'py, PyAny>,
        correlation_id: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let data = PyDict::new(py);
        data.set_item("subagent", subagent_name)?;
        let mapping = event_data.cast::<pyo3::types::PyMapping>().map_err(|_| {
            crate::python::runtime::errors::event_error(
                "publish_subagent_event(): event_data must be a mapping (a dict)",
            )
        })?;
        data.update(mapping)?;
        let topic = format!("hook.subagent.{}", event_type.to_lowercase());
        let type_ = PyString::new(py, &format!("Subagent{event_type}"));
        let e = slf.get().make(
            topic,
            type_,
            DraftData::Dict(data.into_any()),
            correlation_id,
            3,
        )?;
        Self::send(slf, e)
    }

    #[doc = stub_doc!(HookEventProducer, publish_raw_hook_event)]
    #[pyo3(signature = (hook_type, hook_data, correlation_id=None))]
    fn publish_raw_hook_event<'py>(
        slf: &Bound<'py, Self>,
        hook_type: Bound<'py, PyString>,
        hook_data: Bound<'py, PyAny>,
        correlation_id: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let kind = hook_type.to_cow()?.to_lowercase();
        let topic = if kind.contains("response") {
            "hook.response"
        } else if kind.contains("tool") {
            "hook.tool"
        } else if kind.contains("error") {
            "hook.error"
        } else if kind.contains("subagent") {
            "hook.subagent"
        } else {
            "hook.generic"
        };
        let priority = if kind.contains("error") || kind.contains("critical") {
            1
        } else if kind.contains("response") {
            2
        } else {
            3
        };
        let e = slf.get().make(
            topic,
            hook_type,
            DraftData::Dict(hook_data),
            correlation_id,
            priority,
        )?;
        Self::send(slf, e)
    }

    #[doc = stub_doc!(HookEventProducer, get_metrics)]
    fn get_metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("events_published", self.published.load(Ordering::Relaxed))?;
        d.set_item("events_failed", self.failed.load(Ordering::Relaxed))?;
        d.set_item("batch_published", self.batches.load(Ordering::Relaxed))?;
        Ok(d)
    }

    /// Adds to the counters (used by the Python slow path).
    fn _count(&self, published: u64, failed: u64, batches: u64) {
        self.published.fetch_add(published, Ordering::Relaxed);
        self.failed.fetch_add(failed, Ordering::Relaxed);
        self.batches.fetch_add(batches, Ordering::Relaxed);
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "HookEventProducer(event_bus={})",
            self.bus.bind(py).repr()?
        ))
    }

    #[classmethod]
    fn __class_getitem__(cls: &Bound<'_, PyType>, _item: &Bound<'_, PyAny>) -> Py<PyType> {
        cls.clone().unbind()
    }
}

/// Registers this room's classes.
pub fn init_pymodule(m: &Bound<'_, pyo3::types::PyModule>) -> PyResult<()> {
    m.add_class::<HookEventProducer>()?;
    Ok(())
}
