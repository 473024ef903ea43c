//! The bottom of the binding layer: the Tokio runtime every bus shares, the
//! `mpm_events` logger, the error bridge ([`errors`]), the awaitables made in
//! Rust ([`awaitable`]) and the complete list of Python functions Rust calls
//! ([`py_api`]).

use std::sync::OnceLock;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

pub mod awaitable;
pub mod errors;
pub mod py_api;

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

pub(crate) fn logger(py: Python<'_>) -> PyResult<&Py<PyAny>> {
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

/// Registers this room's classes.
pub fn init_pymodule(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("_Ready", awaitable::Ready::type_object(m.py())?)?;
    m.add_class::<awaitable::Pending>()?;
    Ok(())
}
