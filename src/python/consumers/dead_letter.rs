//! `DeadLetterConsumer`: every dead letter of the bus as a JSON line on disk, with
//! rotation, retention and replay.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyCFunction, PyDict, PyList, PySet};
use serde_json::Value;

use crate::python::consumers::base::SinkConsumer;
use crate::python::consumers::logging::default_topics;
use crate::python::consumers::make_config;
use crate::sinks::dead_letter::{DeadLetterConfig, DeadLetterSink, ReplayFilter};

#[doc = stub_doc!(DeadLetterConsumer)]
#[pyclass(module = "mpm_events._core", name = "DeadLetterConsumer", extends = SinkConsumer, frozen)]
pub struct DeadLetterConsumer {
    sink: Arc<DeadLetterSink>,
    #[pyo3(get)]
    max_file_size: u64,
    #[pyo3(get)]
    retention_days: f64,
}

pub(crate) fn to_utc(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<DateTime<Utc>>> {
    let Some(o) = obj.filter(|o| !o.is_none()) else {
        return Ok(None);
    };
    crate::python::convert::time::datetime_utc(o)
        .map(Some)
        .ok_or_else(|| {
            PyTypeError::new_err(format!(
                "start_time and end_time must be datetimes or None, got {}",
                crate::python::convert::text::type_name(o)
            ))
        })
}

pub(crate) fn record_to_event(py: Python<'_>, rec: &Value) -> PyResult<Py<PyAny>> {
    let s = |k: &str| rec[k].as_str().map(str::to_string);
    let meta_kw = PyDict::new(py);
    let m = &rec["metadata"];
    meta_kw.set_item("retry_count", m["retry_count"].as_i64().unwrap_or(0))?;
    let failed: Vec<String> = m["consumers_failed"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    meta_kw.set_item("consumers_failed", PySet::new(py, &failed)?)?;
    let errors: Vec<String> = m["error_messages"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    meta_kw.set_item("error_messages", errors)?;
    let metadata = py
        .get_type::<crate::python::model::EventMetadata>()
        .call((), Some(&meta_kw))?;
    let fromiso = py
        .import("datetime")?
        .getattr("datetime")?
        .getattr("fromisoformat")?;
    let kw = PyDict::new(py);
    kw.set_item("id", s("id"))?;
    kw.set_item("topic", s("topic"))?;
    kw.set_item("type", s("type"))?;
    kw.set_item("timestamp", fromiso.call1((s("timestamp"),))?)?;
    kw.set_item("source", s("source"))?;
    kw.set_item(
        "data",
        pythonize::pythonize(py, &rec["data"]).map_err(|e| PyValueError::new_err(e.to_string()))?,
    )?;
    kw.set_item("metadata", metadata)?;
    kw.set_item("correlation_id", s("correlation_id"))?;
    kw.set_item("priority", s("priority").unwrap_or_else(|| "NORMAL".into()))?;
    Ok(py
        .get_type::<crate::python::model::Event>()
        .call((), Some(&kw))?
        .unbind())
}

#[pymethods]
impl DeadLetterConsumer {
    #[new]
    #[pyo3(signature = (output_dir=None, max_file_size=10*1024*1024, retention_days=7.0, topics=None, *, name="DeadLetterConsumer"))]
    fn new(
        py: Python<'_>,
        output_dir: Option<&Bound<'_, PyAny>>,
        max_file_size: u64,
        retention_days: f64,
        topics: Option<Py<PyAny>>,
        name: &str,
    ) -> PyResult<PyClassInitializer<Self>> {
        if max_file_size == 0 {
            return Err(PyValueError::new_err("max_file_size must be > 0"));
        }
        let dir: PathBuf = match output_dir.filter(|d| !d.is_none()) {
            Some(d) => d.extract()?,
            None => py
                .import("pathlib")?
                .getattr("Path")?
                .call_method0("home")?
                .extract::<PathBuf>()?
                .join(".claude-mpm")
                .join("dead-letter"),
        };
        let topics = default_topics(py, topics, &["error.**", "failed.**"]);
        let priority = crate::python::convert::priority::consumer_priority_member(py, 1)?.unbind();
        let config = make_config(py, name, &[("topics", topics), ("priority", priority)])?;
        let sink = Arc::new(DeadLetterSink::new(DeadLetterConfig {
            output_dir: dir,
            max_file_size,
            retention_days,
            name: name.to_string(),
        }));
        Ok(PyClassInitializer::from(SinkConsumer {
            sink: sink.clone(),
            config,
        })
        .add_subclass(DeadLetterConsumer {
            sink,
            max_file_size,
            retention_days,
        }))
    }

    #[doc = stub_doc!(DeadLetterConsumer, output_dir)]
    #[getter]
    fn output_dir<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        py.import("pathlib")?
            .getattr("Path")?
            .call1((self.sink.output_dir(),))
    }

    #[doc = stub_doc!(DeadLetterConsumer, files)]
    fn files<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let path = py.import("pathlib")?.getattr("Path")?;
        let items = self
            .sink
            .files()
            .into_iter()
            .map(|p| path.call1((p,)))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, items)
    }

    #[doc = stub_doc!(DeadLetterConsumer, cleanup)]
    fn cleanup(&self, py: Python<'_>) -> u64 {
        let sink = self.sink.clone();
        py.detach(move || sink.cleanup())
    }

    #[doc = stub_doc!(DeadLetterConsumer, replay_events)]
    #[pyo3(signature = (start_time=None, end_time=None, topic_filter=None))]
    fn replay_events<'py>(
        &self,
        py: Python<'py>,
        start_time: Option<&Bound<'py, PyAny>>,
        end_time: Option<&Bound<'py, PyAny>>,
        topic_filter: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let filter = ReplayFilter {
            start: to_utc(start_time)?,
            end: to_utc(end_time)?,
            topic: topic_filter,
        };
        let sink = self.sink.clone();
        let f = PyCFunction::new_closure(py, None, None, move |args, _| -> PyResult<Py<PyAny>> {
            let py = args.py();
            let sink = sink.clone();
            let filter = filter.clone();
            let report = py
                .detach(move || sink.replay(&filter))
                .map_err(PyValueError::new_err)?;
            if report.skipped > 0 {
                crate::python::runtime::log_warning(
                    py,
                    &format!(
                        "Skipped {} unreadable dead-letter line(s) (torn by a crash?)",
                        report.skipped
                    ),
                );
            }
            let events = report
                .records
                .iter()
                .map(|r| record_to_event(py, r))
                .collect::<PyResult<Vec<_>>>()?;
            Ok(PyList::new(py, events)?.into_any().unbind())
        })?;
        crate::python::runtime::py_api::to_thread(py, (f,))
    }
}

// ---------------------------------------------------------------------------
// Socket.IO
