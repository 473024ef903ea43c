//! The built-in consumers written in Rust, as Python classes.

use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use chrono::{DateTime, Utc};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyCFunction, PyDict, PyList, PySet};
use serde_json::Value;

use super::config::ConsumerConfig;
use super::native::NativeConsumer;
use crate::sinks::dead_letter::{DeadLetterConfig, DeadLetterSink, ReplayFilter};
use crate::sinks::logging::{parse_level, LogBatch, LoggingConfig, LoggingSink, INFO};
use crate::sinks::metrics::{MetricsConfig, MetricsSink};
use crate::sinks::socketio::{EventNaming, SocketIoConfig};
use crate::sinks::socketio_consumer::SocketIoConsumerSink;

/// Builds a `ConsumerConfig` from keyword arguments.
pub fn make_config(
    py: Python<'_>,
    name: &str,
    kwargs: &[(&str, Py<PyAny>)],
) -> PyResult<Py<ConsumerConfig>> {
    let kw = PyDict::new(py);
    for (k, v) in kwargs {
        kw.set_item(*k, v)?;
    }
    let cfg = py.get_type::<ConsumerConfig>().call((name,), Some(&kw))?;
    Ok(cfg.cast_into::<ConsumerConfig>()?.unbind())
}

#[doc = stub_doc!(MetricsConsumer)]
#[pyclass(module = "mpm_events._core", name = "MetricsConsumer", extends = NativeConsumer, frozen)]
pub struct MetricsConsumer {
    #[pyo3(get)]
    window_size: u64,
    #[pyo3(get)]
    top_n: usize,
    #[pyo3(get)]
    report_interval: f64,
}

#[pymethods]
impl MetricsConsumer {
    #[new]
    #[pyo3(signature = (window_size=300, top_n=10, report_interval=60.0, *, name="MetricsConsumer", topics=None))]
    fn new(
        py: Python<'_>,
        window_size: u64,
        top_n: usize,
        report_interval: f64,
        name: &str,
        topics: Option<Py<PyAny>>,
    ) -> PyResult<PyClassInitializer<Self>> {
        if window_size == 0 {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "window_size must be >= 1 second",
            ));
        }
        let topics = topics.unwrap_or_else(|| {
            vec!["**"]
                .into_pyobject(py)
                .expect("list")
                .into_any()
                .unbind()
        });
        let priority = super::event::consumer_priority_member(py, 5)?.unbind();
        let config = make_config(py, name, &[("topics", topics), ("priority", priority)])?;
        let mut metrics = MetricsSink::new(MetricsConfig { window_size, top_n });
        if report_interval > 0.0 && report_interval.is_finite() {
            // NOTE: the report goes through the same one-thread log writer as the
            // LoggingConsumer, never attaching to Python from a Tokio task.
            let (tx, rx) = mpsc::channel::<LogBatch>();
            spawn_log_writer(get_logger(py, "mpm_events.metrics")?, rx)?;
            let tx = parking_lot::Mutex::new(tx);
            metrics = metrics.with_report(
                Duration::from_secs_f64(report_interval),
                Box::new(move |text| {
                    let (done, written) = tokio::sync::oneshot::channel();
                    tx.lock()
                        .send(LogBatch {
                            records: vec![(INFO, text)],
                            done,
                        })
                        .ok()
                        .map(|_| written)
                }),
            );
        }
        let sink = Arc::new(metrics);
        Ok(
            PyClassInitializer::from(NativeConsumer { sink, config }).add_subclass(
                MetricsConsumer {
                    window_size,
                    top_n,
                    report_interval,
                },
            ),
        )
    }
}

// ---------------------------------------------------------------------------
// Log writer: the one Python-side thread of a logging-backed consumer.

/// Starts a thread that writes record batches to `logger`: it attaches to
/// Python once per batch (several queued batches are merged), never from a
/// Tokio task, and confirms each batch once written. It ends when every sender
/// is dropped.
pub fn spawn_log_writer(logger: Py<PyAny>, rx: mpsc::Receiver<LogBatch>) -> PyResult<()> {
    std::thread::Builder::new()
        .name("mpm-events-log".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut batches = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batches.push(more);
                }
                let written = Python::try_attach(|py| {
                    let logger = logger.bind(py);
                    for b in &batches {
                        for (level, msg) in &b.records {
                            if let Err(e) = logger.call_method1("log", (*level, msg.as_str())) {
                                e.print(py);
                            }
                        }
                    }
                });
                if written.is_none() {
                    // NOTE: the interpreter is gone; dropping the senders fails the batches.
                    return;
                }
                for b in batches {
                    let _ = b.done.send(());
                }
            }
        })
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start the log writer: {e}")))?;
    Ok(())
}

fn get_logger(py: Python<'_>, name: &str) -> PyResult<Py<PyAny>> {
    Ok(py
        .import("logging")?
        .call_method1("getLogger", (name,))?
        .unbind())
}

fn default_topics(py: Python<'_>, topics: Option<Py<PyAny>>, default: &[&str]) -> Py<PyAny> {
    match topics {
        Some(t) if !t.bind(py).is_none() && t.bind(py).is_truthy().unwrap_or(true) => t,
        _ => default
            .to_vec()
            .into_pyobject(py)
            .expect("list")
            .into_any()
            .unbind(),
    }
}

#[doc = stub_doc!(LoggingConsumer)]
#[pyclass(module = "mpm_events._core", name = "LoggingConsumer", extends = NativeConsumer, frozen)]
pub struct LoggingConsumer {
    #[pyo3(get)]
    log_level: String,
    #[pyo3(get)]
    format_json: bool,
    #[pyo3(get)]
    include_data: bool,
    #[pyo3(get)]
    max_data_length: usize,
    #[pyo3(get)]
    logger_name: String,
}

#[pymethods]
impl LoggingConsumer {
    #[new]
    #[pyo3(signature = (log_level="INFO", topics=None, format_json=true, include_data=true, max_data_length=1000, *, logger_name="mpm_events.events", name="LoggingConsumer"))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        log_level: &str,
        topics: Option<Py<PyAny>>,
        format_json: bool,
        include_data: bool,
        max_data_length: usize,
        logger_name: &str,
        name: &str,
    ) -> PyResult<PyClassInitializer<Self>> {
        let level = parse_level(log_level).ok_or_else(|| {
            PyValueError::new_err(format!(
                "unknown log_level {log_level:?} (DEBUG, INFO, WARNING, ERROR, CRITICAL)"
            ))
        })?;
        let topics = default_topics(py, topics, &["**"]);
        let priority = super::event::consumer_priority_member(py, 4)?.unbind();
        let config = make_config(py, name, &[("topics", topics), ("priority", priority)])?;
        let (tx, rx) = mpsc::channel();
        let sink = Arc::new(LoggingSink::new(
            LoggingConfig {
                level,
                format_json,
                include_data,
                max_data_length,
            },
            tx,
        ));
        spawn_log_writer(get_logger(py, logger_name)?, rx)?;
        Ok(
            PyClassInitializer::from(NativeConsumer { sink, config }).add_subclass(
                LoggingConsumer {
                    log_level: log_level.to_ascii_uppercase(),
                    format_json,
                    include_data,
                    max_data_length,
                    logger_name: logger_name.to_string(),
                },
            ),
        )
    }
}

// ---------------------------------------------------------------------------
// Dead letters

#[doc = stub_doc!(DeadLetterConsumer)]
#[pyclass(module = "mpm_events._core", name = "DeadLetterConsumer", extends = NativeConsumer, frozen)]
pub struct DeadLetterConsumer {
    sink: Arc<DeadLetterSink>,
    #[pyo3(get)]
    max_file_size: u64,
    #[pyo3(get)]
    retention_days: f64,
}

fn to_utc(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<DateTime<Utc>>> {
    let Some(o) = obj.filter(|o| !o.is_none()) else {
        return Ok(None);
    };
    super::event::datetime_utc(o).map(Some).ok_or_else(|| {
        PyTypeError::new_err(format!(
            "start_time and end_time must be datetimes or None, got {}",
            super::event::type_name(o)
        ))
    })
}

fn record_to_event(py: Python<'_>, rec: &Value) -> PyResult<Py<PyAny>> {
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
        .get_type::<super::event::EventMetadata>()
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
        .get_type::<super::event::Event>()
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
        let priority = super::event::consumer_priority_member(py, 1)?.unbind();
        let config = make_config(py, name, &[("topics", topics), ("priority", priority)])?;
        let sink = Arc::new(DeadLetterSink::new(DeadLetterConfig {
            output_dir: dir,
            max_file_size,
            retention_days,
            name: name.to_string(),
        }));
        Ok(PyClassInitializer::from(NativeConsumer {
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
                super::log_warning(
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
        py.import("mpm_events._bus")?
            .call_method1("to_thread", (f,))
    }
}

// ---------------------------------------------------------------------------
// Socket.IO

#[doc = stub_doc!(SocketIOConsumer)]
#[pyclass(module = "mpm_events._core", name = "SocketIOConsumer", extends = NativeConsumer, frozen)]
pub struct SocketIOConsumer {
    #[pyo3(get)]
    url: String,
    #[pyo3(get)]
    namespace: String,
    #[pyo3(get)]
    port_range: (u16, u16),
    #[pyo3(get)]
    reconnect_delay: f64,
    #[pyo3(get)]
    max_reconnect_delay: f64,
    #[pyo3(get)]
    batch_size: usize,
    #[pyo3(get)]
    batch_timeout: f64,
    #[pyo3(get)]
    buffer_limit: usize,
}

fn secs(name: &str, v: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(v)
        .map_err(|_| PyValueError::new_err(format!("{name} must be a non-negative number")))
}

#[pymethods]
impl SocketIOConsumer {
    #[new]
    #[pyo3(signature = (socketio_server=None, port_range=(8765, 8785), reconnect_delay=1.0, max_reconnect_delay=30.0, batch_size=10, batch_timeout=0.1, *, url=None, namespace="/", auth=None, headers=None, event_name=None, buffer_limit=10_000, emit_per_batch=None, flush_timeout=5.0, name="SocketIOConsumer"))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        socketio_server: Option<&Bound<'_, PyAny>>,
        port_range: (u16, u16),
        reconnect_delay: f64,
        max_reconnect_delay: f64,
        batch_size: usize,
        batch_timeout: f64,
        url: Option<String>,
        namespace: &str,
        auth: Option<&Bound<'_, PyAny>>,
        headers: Option<&Bound<'_, PyDict>>,
        event_name: Option<&Bound<'_, PyAny>>,
        buffer_limit: usize,
        emit_per_batch: Option<&Bound<'_, PyAny>>,
        flush_timeout: f64,
        name: &str,
    ) -> PyResult<PyClassInitializer<Self>> {
        if buffer_limit == 0 {
            return Err(PyValueError::new_err("buffer_limit must be >= 1"));
        }
        let mut url = url;
        if let Some(s) = socketio_server.filter(|s| !s.is_none()) {
            match s.extract::<String>() {
                Ok(u) if url.is_none() => url = Some(u),
                Ok(_) => {}
                Err(_) => super::log_warning(
                    py,
                    "SocketIOConsumer: a server object is not used (this consumer is a \
                     Socket.IO client); pass url=... to choose the server",
                ),
            }
        }
        let url = url.unwrap_or_else(|| format!("http://127.0.0.1:{}", port_range.0));
        let naming = match event_name.filter(|e| !e.is_none()) {
            None => EventNaming::Default,
            Some(e) => match e.extract::<String>() {
                Ok(n) => EventNaming::Fixed(n),
                Err(_) => EventNaming::Prefixes(
                    e.cast::<PyDict>()?
                        .iter()
                        .map(|(k, v)| Ok((k.extract()?, v.extract()?)))
                        .collect::<PyResult<_>>()?,
                ),
            },
        };
        let emit_per_batch = match emit_per_batch.filter(|e| !e.is_none()) {
            None => None,
            Some(e) => match e.extract::<String>() {
                Ok(n) => Some(n),
                Err(_) => e.is_truthy()?.then(|| "claude_event_batch".to_string()),
            },
        };
        let auth = match auth.filter(|a| !a.is_none()) {
            None => None,
            Some(a) => Some(super::native::to_json(a, 0).map_err(PyValueError::new_err)?),
        };
        let headers = match headers {
            None => Vec::new(),
            Some(h) => h
                .iter()
                .map(|(k, v)| Ok((k.extract()?, v.extract()?)))
                .collect::<PyResult<_>>()?,
        };
        let cfg = SocketIoConfig {
            url: url.clone(),
            namespace: namespace.to_string(),
            auth,
            headers,
            reconnect_initial: secs("reconnect_delay", reconnect_delay)?,
            reconnect_max: secs("max_reconnect_delay", max_reconnect_delay)?,
            buffer_limit,
            emit_per_batch,
            ..SocketIoConfig::default()
        };
        let topics = default_topics(py, None, &["**"]);
        let priority = super::event::consumer_priority_member(py, 2)?.unbind();
        let config = make_config(
            py,
            name,
            &[
                ("topics", topics),
                ("priority", priority),
                (
                    "batch_size",
                    batch_size.into_pyobject(py)?.into_any().unbind(),
                ),
                (
                    "batch_timeout",
                    batch_timeout.into_pyobject(py)?.into_any().unbind(),
                ),
                ("max_retries", 3i64.into_pyobject(py)?.into_any().unbind()),
                (
                    "retry_backoff",
                    2.0f64.into_pyobject(py)?.into_any().unbind(),
                ),
            ],
        )?;
        let sink = Arc::new(SocketIoConsumerSink::start(
            name.to_string(),
            cfg,
            naming,
            secs("flush_timeout", flush_timeout)?,
            super::runtime().handle(),
        ));
        Ok(
            PyClassInitializer::from(NativeConsumer { sink, config }).add_subclass(
                SocketIOConsumer {
                    url,
                    namespace: namespace.to_string(),
                    port_range,
                    reconnect_delay,
                    max_reconnect_delay,
                    batch_size,
                    batch_timeout,
                    buffer_limit,
                },
            ),
        )
    }
}
