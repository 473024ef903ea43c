//! The built-in consumers, one class a file, each the Python face of a Rust sink
//! (`crate::sinks`) on the [`base::SinkConsumer`] base class.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::python::model::ConsumerConfig;

pub mod base;
pub mod dead_letter;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod socketio;

pub use base::SinkConsumer;
pub use dead_letter::DeadLetterConsumer;
pub use http::HttpConsumer;
pub use logging::LoggingConsumer;
pub use metrics::MetricsConsumer;
pub use socketio::SocketIOConsumer;

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

/// Registers this room's classes.
pub fn init_pymodule(m: &Bound<'_, pyo3::types::PyModule>) -> PyResult<()> {
    m.add_class::<SinkConsumer>()?;
    m.add_class::<MetricsConsumer>()?;
    m.add_class::<LoggingConsumer>()?;
    m.add_class::<DeadLetterConsumer>()?;
    m.add_class::<SocketIOConsumer>()?;
    m.add_class::<HttpConsumer>()?;
    Ok(())
}
