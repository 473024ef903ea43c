//! `MetricsConsumer`: counts, rates and latencies of what the bus delivers.

use std::sync::{mpsc, Arc};
use std::time::Duration;

use pyo3::prelude::*;

use crate::python::consumers::base::SinkConsumer;
use crate::python::consumers::logging::{get_logger, spawn_log_writer};
use crate::python::consumers::make_config;
use crate::sinks::logging::{LogBatch, INFO};
use crate::sinks::metrics::{MetricsConfig, MetricsSink};

#[doc = stub_doc!(MetricsConsumer)]
#[pyclass(module = "mpm_events._core", name = "MetricsConsumer", extends = SinkConsumer, frozen)]
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
        let priority = crate::python::convert::priority::consumer_priority_member(py, 5)?.unbind();
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
            PyClassInitializer::from(SinkConsumer { sink, config }).add_subclass(MetricsConsumer {
                window_size,
                top_n,
                report_interval,
            }),
        )
    }
}

// ---------------------------------------------------------------------------
// Log writer: the one Python-side thread of a logging-backed consumer.
