//! Rust consumers: the executor that runs a [`Sink`] on the Tokio runtime, the
//! conversion of an event into the GIL-free [`EventView`] sinks read, and the
//! `_NativeConsumer` base class of the built-in consumers.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::{Map, Number, Value};

use super::config::ConsumerConfig;
use super::event::{Event, EventRef};
use super::executor::PyJobRef;
use super::runtime;
use crate::dispatch::{Executor, Outcome};
use crate::event::EventView;
use crate::sinks::{Sink, SinkItem};

/// Deepest payload nesting converted for Rust consumers.
pub const MAX_DEPTH: usize = 200;

/// Converts a payload to JSON like `json.dumps(default=str)`: dicts, lists,
/// tuples, str, int, float, bool and None map directly, datetimes become ISO
/// 8601 text and anything else its `str()`. Fails on nesting deeper than
/// [`MAX_DEPTH`] instead of overflowing the stack.
pub fn to_json(obj: &Bound<'_, PyAny>, depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!("payload is nested deeper than {MAX_DEPTH} levels"));
    }
    if obj.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return s
            .to_cow()
            .map(|s| Value::String(s.into_owned()))
            .map_err(|e| e.to_string());
    }
    if obj.is_instance_of::<PyInt>() {
        if let Ok(i) = obj.extract::<i64>() {
            return Ok(Value::Number(i.into()));
        }
        if let Ok(u) = obj.extract::<u64>() {
            return Ok(Value::Number(u.into()));
        }
        return Ok(Value::String(
            obj.str().map(|s| s.to_string()).unwrap_or_default(),
        ));
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        return Ok(Number::from_f64(f.value())
            .map(Value::Number)
            .unwrap_or(Value::Null));
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        let mut m = Map::with_capacity(d.len());
        for (k, v) in d.iter() {
            let key = match k.cast::<PyString>() {
                Ok(s) => s.to_cow().map_err(|e| e.to_string())?.into_owned(),
                Err(_) => k.str().map_err(|e| e.to_string())?.to_string(),
            };
            m.insert(key, to_json(&v, depth + 1)?);
        }
        return Ok(Value::Object(m));
    }
    if let Ok(l) = obj.cast::<PyList>() {
        return l
            .iter()
            .map(|v| to_json(&v, depth + 1))
            .collect::<Result<_, _>>()
            .map(Value::Array);
    }
    if let Ok(t) = obj.cast::<PyTuple>() {
        return t
            .iter()
            .map(|v| to_json(&v, depth + 1))
            .collect::<Result<_, _>>()
            .map(Value::Array);
    }
    if obj.is_instance_of::<pyo3::types::PyDateTime>()
        || obj.is_instance_of::<pyo3::types::PyDate>()
    {
        if let Ok(s) = obj.call_method0("isoformat") {
            return Ok(Value::String(s.to_string()));
        }
    }
    Ok(Value::String(
        obj.str()
            .map(|s| s.to_string())
            .unwrap_or_else(|_| "<unprintable>".into()),
    ))
}

/// Recently seen field texts, so consecutive events share one allocation.
#[derive(Default)]
pub struct ViewMemo {
    pub(crate) type_: Option<Arc<str>>,
    pub(crate) source: Option<Arc<str>>,
}

/// `text` as an `Arc<str>`, shared with the previous call's when it is the same text.
pub(crate) fn interned(slot: &mut Option<Arc<str>>, text: &str) -> Arc<str> {
    match slot {
        Some(s) if **s == *text => s.clone(),
        _ => {
            let s: Arc<str> = text.into();
            *slot = Some(s.clone());
            s
        }
    }
}

/// Payload limits for packing: deeper or larger payloads stay Python objects.
const PACK_MAX_DEPTH: usize = 32;
const PACK_MAX_BYTES: usize = 64 * 1024;

/// Writes a payload as JSON text if it holds only exact dicts (with str keys),
/// lists, str, int (64-bit), finite float, bool and None, so that unpacking gives
/// back equal values of the same types; None otherwise (the payload then stays
/// the caller's object).
pub fn pack_json(obj: &Bound<'_, PyAny>) -> Option<Box<str>> {
    thread_local! {
        static BUF: std::cell::RefCell<String> = std::cell::RefCell::new(String::with_capacity(256));
    }
    // NOTE: the text is written into a reused buffer and then copied into an
    // allocation of its exact size, because it lives as long as the event waits in
    // lanes: mimalloc's realloc keeps a block in place when it shrinks to half its
    // size or more, so `into_boxed_str()` on a 128-byte String holding a 70-byte
    // payload kept all 128 bytes (48 B per queued event).
    BUF.with(|buf| match buf.try_borrow_mut() {
        Ok(mut out) => {
            out.clear();
            let ok = pack_into(obj, 0, &mut out);
            let packed = ok.then(|| Box::from(out.as_str()));
            if out.capacity() > 4 * 1024 {
                *out = String::with_capacity(256);
            }
            packed
        }
        Err(_) => {
            let mut out = String::new();
            pack_into(obj, 0, &mut out).then(|| out.into_boxed_str())
        }
    })
}

fn pack_into(obj: &Bound<'_, PyAny>, depth: usize, out: &mut String) -> bool {
    use std::fmt::Write;
    if depth > PACK_MAX_DEPTH || out.len() > PACK_MAX_BYTES {
        return false;
    }
    if obj.is_none() {
        out.push_str("null");
        return true;
    }
    if let Ok(b) = obj.cast_exact::<PyBool>() {
        out.push_str(if b.is_true() { "true" } else { "false" });
        return true;
    }
    if let Ok(s) = obj.cast_exact::<PyString>() {
        let Ok(text) = s.to_cow() else { return false };
        return serde_json::to_string(&*text)
            .map(|j| out.push_str(&j))
            .is_ok();
    }
    if obj.cast_exact::<PyInt>().is_ok() {
        let Ok(i) = obj.extract::<i64>() else {
            return false;
        };
        let _ = write!(out, "{i}");
        return true;
    }
    if let Ok(f) = obj.cast_exact::<PyFloat>() {
        let v = f.value();
        if !v.is_finite() {
            return false;
        }
        // NOTE: serde_json writes the shortest text that parses back to the same
        // f64, always with a '.' or exponent, so it unpacks as a float again.
        return serde_json::to_string(&v).map(|j| out.push_str(&j)).is_ok();
    }
    if let Ok(d) = obj.cast_exact::<PyDict>() {
        out.push('{');
        for (i, (k, v)) in d.iter().enumerate() {
            let Ok(k) = k.cast_exact::<PyString>() else {
                return false;
            };
            let Ok(key) = k.to_cow() else { return false };
            if i > 0 {
                out.push(',');
            }
            if serde_json::to_string(&*key)
                .map(|j| out.push_str(&j))
                .is_err()
            {
                return false;
            }
            out.push(':');
            if !pack_into(&v, depth + 1, out) {
                return false;
            }
        }
        out.push('}');
        return true;
    }
    if let Ok(l) = obj.cast_exact::<PyList>() {
        out.push('[');
        for (i, v) in l.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            if !pack_into(&v, depth + 1, out) {
                return false;
            }
        }
        out.push(']');
        return true;
    }
    false
}

/// Turns packed JSON text back into Python objects.
pub fn unpack_json(py: Python<'_>, json: &str) -> PyResult<Py<PyAny>> {
    let value: Value = serde_json::from_str(json).map_err(|e| {
        pyo3::exceptions::PyValueError::new_err(format!("corrupt packed payload: {e}"))
    })?;
    Ok(pythonize::pythonize(py, &value)
        .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?
        .unbind())
}

/// Copies an event's fields (and, if `with_data`, its payload) for sinks.
pub fn build_view(py: Python<'_>, eref: &EventRef, with_data: bool) -> PyResult<EventView> {
    build_view_with(py, eref, with_data, &mut ViewMemo::default())
}

/// [`build_view`] sharing field texts with the previous event through `memo`.
pub fn build_view_with(
    py: Python<'_>,
    eref: &EventRef,
    with_data: bool,
    memo: &mut ViewMemo,
) -> PyResult<EventView> {
    let convert = |converted: Result<Value, String>| match converted {
        Ok(v) => (Some(v), None),
        Err(err) => (None, Some(err)),
    };
    let e = match eref.source(py) {
        super::event::Source::Object(e) => e.borrow(py),
        super::event::Source::Parts(p) => {
            let (data, data_error) = if with_data {
                convert(match &p.data {
                    super::event::PartsData::Packed(json) => {
                        serde_json::from_str(json).map_err(|err| err.to_string())
                    }
                    super::event::PartsData::Object(o) => to_json(o.bind(py), 0),
                })
            } else {
                (None, None)
            };
            return Ok(EventView {
                id: super::event::uuid_text(&p.id).into(),
                topic: eref.topic.as_ref().into(),
                event_type: interned(&mut memo.type_, &p.type_.bind(py).to_cow()?),
                source: interned(&mut memo.source, &super::event::hook_source(py).to_cow()?),
                timestamp: p.timestamp(),
                data,
                data_error,
                correlation_id: match &p.correlation_id {
                    Some(c) => Some(c.bind(py).to_cow()?.into_owned()),
                    None => None,
                },
                priority: eref.priority,
                meta: eref.meta.clone(),
            });
        }
    };
    let ts: DateTime<Utc> = e.timestamp.to_utc();
    let (data, data_error) = if with_data {
        convert(match &e.data {
            super::event::Payload::Packed(json, _) => {
                serde_json::from_str(json).map_err(|err| err.to_string())
            }
            super::event::Payload::Object(o) => to_json(o.bind(py), 0),
        })
    } else {
        (None, None)
    };
    Ok(EventView {
        id: e.id.text(py).into(),
        topic: eref.topic.as_ref().into(),
        event_type: interned(&mut memo.type_, &e.type_.bind(py).to_cow()?),
        source: interned(&mut memo.source, &e.source.bind(py).to_cow()?),
        timestamp: ts,
        data,
        data_error,
        correlation_id: match &e.correlation_id {
            Some(c) => Some(c.bind(py).to_cow()?.into_owned()),
            None => None,
        },
        priority: e.priority,
        meta: eref.meta.clone(),
    })
}

/// Runs a lane's jobs on a Rust sink, on the Tokio runtime, without the GIL.
pub struct SinkExecutor {
    pub sink: Arc<dyn Sink>,
    pub timeout: Duration,
}

impl Executor<EventRef> for SinkExecutor {
    fn execute(&self, job: PyJobRef) {
        let sink = self.sink.clone();
        let timeout = self.timeout;
        let needs_data = sink.needs_data();
        runtime().spawn(async move {
            let mut pre: Vec<Option<Outcome>> = vec![None; job.items.len()];
            let mut items = Vec::with_capacity(job.items.len());
            for (i, d) in job.items.iter().enumerate() {
                match &d.entry.event.view {
                    Some(v) if !needs_data || v.data.is_some() => {
                        items.push(SinkItem {
                            view: v.clone(),
                            attempt: d.attempt(),
                            origin: Some(d.entry.clone()),
                        });
                    }
                    Some(v) => {
                        let why = v
                            .data_error
                            .clone()
                            .unwrap_or_else(|| "payload not converted".into());
                        pre[i] = Some(Outcome::Failure(format!(
                            "cannot convert the payload for a Rust consumer: {why}"
                        )));
                    }
                    None => {
                        pre[i] = Some(Outcome::Failure(
                            "event fields were not captured at publish".into(),
                        ))
                    }
                }
            }
            let results = if items.is_empty() {
                Vec::new()
            } else {
                match tokio::time::timeout(timeout, sink.consume(items)).await {
                    Ok(r) => r,
                    Err(_) => {
                        job.fail_rest(&format!(
                            "consume timed out after {:.3}s",
                            timeout.as_secs_f64()
                        ));
                        return;
                    }
                }
            };
            let mut results = results.into_iter();
            let outcomes = pre.into_iter().map(|p| {
                p.unwrap_or_else(|| match results.next() {
                    Some(Ok(())) => Outcome::Success,
                    Some(Err(e)) => Outcome::Failure(e),
                    None => {
                        Outcome::Failure("the consumer reported no outcome for this event".into())
                    }
                })
            });
            job.record_all(outcomes.collect::<Vec<_>>());
            job.finish();
        });
    }
}

// NOTE: implements the IEventConsumer methods over a `Sink`, so that the
// built-in consumers also work when called directly (the bus runs the sink).
#[doc = stub_doc!(_NativeConsumer)]
#[pyclass(
    module = "mpm_events._core",
    name = "_NativeConsumer",
    subclass,
    frozen
)]
pub struct NativeConsumer {
    pub sink: Arc<dyn Sink>,
    pub config: Py<ConsumerConfig>,
}

impl NativeConsumer {
    fn run_direct(&self, py: Python<'_>, events: &Bound<'_, PyAny>) -> PyResult<usize> {
        let mut items = Vec::new();
        for e in events.try_iter()? {
            let e = e?;
            let owned: Py<Event> = match e.cast::<Event>() {
                Ok(ev) => ev.clone().unbind(),
                Err(_) => Py::new(py, Event::from_foreign(&e)?)?,
            };
            let (eref, ()) = EventRef::accept(py, owned, chrono::Utc::now(), |topic| {
                crate::topic::validate_topic(topic).map(|()| (Arc::from(topic), ()))
            })?;
            let view = build_view(py, &eref, self.sink.needs_data())?;
            items.push(SinkItem {
                view: Arc::new(view),
                attempt: 0,
                origin: None,
            });
        }
        let sink = self.sink.clone();
        let results = py.detach(|| runtime().block_on(sink.consume(items)));
        Ok(results.iter().filter(|r| r.is_ok()).count())
    }
}

#[pymethods]
impl NativeConsumer {
    #[doc = stub_doc!(_NativeConsumer, config)]
    #[getter]
    fn config(&self, py: Python<'_>) -> Py<ConsumerConfig> {
        self.config.clone_ref(py)
    }

    // NOTE: prepares the sink (e.g. creates the dead-letter directory); False,
    // logged, on failure.
    #[doc = stub_doc!(_NativeConsumer, initialize)]
    fn initialize(&self, py: Python<'_>) -> Py<super::bus::Ready> {
        let ok = match self.sink.initialize() {
            Ok(()) => true,
            Err(e) => {
                super::log_error(py, &e);
                false
            }
        };
        super::bus::Ready::of_bool(py, ok)
    }

    #[doc = stub_doc!(_NativeConsumer, consume)]
    fn consume(&self, py: Python<'_>, event: &Bound<'_, PyAny>) -> PyResult<Py<super::bus::Ready>> {
        let list = PyList::new(py, [event])?;
        Ok(super::bus::Ready::of_bool(
            py,
            self.run_direct(py, list.as_any())? == 1,
        ))
    }

    #[doc = stub_doc!(_NativeConsumer, consume_batch)]
    fn consume_batch(
        &self,
        py: Python<'_>,
        events: &Bound<'_, PyAny>,
    ) -> PyResult<Py<super::bus::Ready>> {
        let n = self.run_direct(py, events)?;
        super::bus::Ready::of(py, n.into_pyobject(py)?.into_any().unbind())
    }

    #[doc = stub_doc!(_NativeConsumer, shutdown)]
    fn shutdown<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let sink = self.sink.clone();
        let f = pyo3::types::PyCFunction::new_closure(py, None, None, move |args, _| {
            let sink = sink.clone();
            args.py().detach(|| runtime().block_on(sink.shutdown()));
        })?;
        py.import("mpm_events._bus")?
            .call_method1("to_thread", (f,))
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
