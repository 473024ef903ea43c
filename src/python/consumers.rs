//! The built-in consumers written in Rust, as Python classes.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::config::ConsumerConfig;
use super::native::NativeConsumer;
use crate::sinks::metrics::{MetricsConfig, MetricsSink};

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

/// Event statistics collected in Rust (see `_core.pyi`).
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
        let sink = Arc::new(MetricsSink::new(MetricsConfig { window_size, top_n }));
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
