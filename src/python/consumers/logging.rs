//! `LoggingConsumer`: every event as a log record, formatted in Rust, handed to
//! Python `logging` in batches by a writer thread.

use std::sync::{mpsc, Arc};

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use crate::python::consumers::base::SinkConsumer;
use crate::python::consumers::make_config;
use crate::sinks::logging::{parse_level, LogBatch, LoggingConfig, LoggingSink};

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

pub(crate) fn get_logger(py: Python<'_>, name: &str) -> PyResult<Py<PyAny>> {
    Ok(py
        .import("logging")?
        .call_method1("getLogger", (name,))?
        .unbind())
}

pub(crate) fn default_topics(
    py: Python<'_>,
    topics: Option<Py<PyAny>>,
    default: &[&str],
) -> Py<PyAny> {
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
#[pyclass(module = "mpm_events._core", name = "LoggingConsumer", extends = SinkConsumer, frozen)]
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
        let priority = crate::python::convert::priority::consumer_priority_member(py, 4)?.unbind();
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
            PyClassInitializer::from(SinkConsumer { sink, config }).add_subclass(LoggingConsumer {
                log_level: log_level.to_ascii_uppercase(),
                format_json,
                include_data,
                max_data_length,
                logger_name: logger_name.to_string(),
            }),
        )
    }
}

// ---------------------------------------------------------------------------
// Dead letters
