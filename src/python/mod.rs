//! The Python binding layer, built as `mpm_events._core`.
//!
//! Only this module tree imports pyo3. The engine it drives lives in
//! [`crate::dispatch`]; Tokio timers run on a small shared runtime and never
//! attach to Python.

use std::sync::OnceLock;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

// NOTE: first, so that `stub_doc!` is in scope in the modules below.
#[macro_use]
mod stub_docs;

mod bus;
mod config;
mod consumers;
mod delivery_log;
mod errors;
mod event;
mod executor;
mod native;
mod persist;
mod producer;

static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// The Tokio runtime behind every bus of the process (timers and native sinks).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mpm-events-rt")
            .enable_all()
            .build()
            .expect("cannot start the mpm-events Tokio runtime")
    })
}

fn logger(py: Python<'_>) -> PyResult<&Py<PyAny>> {
    LOGGER.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
        Ok(py
            .import("mpm_events._log")?
            .call_method0("logger")?
            .unbind())
    })
}

fn log(py: Python<'_>, level: &str, msg: &str) {
    if let Ok(logger) = logger(py) {
        let _ = logger.bind(py).call_method1(level, (msg,));
    }
}

/// Makes sure the `mpm_events` logger exists with its `NullHandler`.
pub fn ensure_logger(py: Python<'_>) {
    let _ = logger(py);
}

/// Logs at INFO to the `mpm_events` logger.
pub fn log_info(py: Python<'_>, msg: &str) {
    log(py, "info", msg);
}

/// Logs at WARNING to the `mpm_events` logger.
pub fn log_warning(py: Python<'_>, msg: &str) {
    log(py, "warning", msg);
}

/// Logs at ERROR to the `mpm_events` logger.
pub fn log_error(py: Python<'_>, msg: &str) {
    log(py, "error", msg);
}

/// Raises `InvalidTopicError` unless `topic` is a valid published topic (the
/// engine's own check, for `mpm_events.testing`).
#[pyfunction]
fn _validate_topic(topic: &str) -> PyResult<()> {
    crate::topic::validate_topic(topic).map_err(errors::topic_error)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(_validate_topic, m)?)?;
    m.add_class::<event::Event>()?;
    m.add_class::<event::EventMetadata>()?;
    m.add_class::<config::ConsumerConfig>()?;
    m.add_class::<bus::EventBus>()?;
    m.add_class::<bus::Ready>()?;
    m.add_class::<bus::Leaving>()?;
    m.add_class::<executor::PyJob>()?;
    m.add_class::<executor::JobSource>()?;
    m.add_class::<native::NativeConsumer>()?;
    m.add_class::<consumers::MetricsConsumer>()?;
    m.add_class::<producer::HookEventProducer>()?;
    m.add_class::<consumers::LoggingConsumer>()?;
    m.add_class::<consumers::DeadLetterConsumer>()?;
    m.add_class::<consumers::SocketIOConsumer>()?;
    m.add_class::<persist::StoredBatch>()?;
    m.add_class::<persist::Pending>()?;
    Ok(())
}
