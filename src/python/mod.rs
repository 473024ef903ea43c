//! The Python binding layer, built as `mpm_events._core`.
//!
//! Only this module tree imports pyo3; the engine it drives ([`crate::dispatch`],
//! [`crate::durable`], [`crate::sinks`], ...) needs no GIL. The folders import only
//! downward, checked by `tools/check_layers.py` in `make lint`
//! (`docs/architecture.md` draws the rooms):
//!
//! 1. [`runtime`]: the Tokio runtime, logging, the error bridge, the awaitables,
//!    the list of Python functions Rust calls;
//! 2. [`convert`]: JSON, priorities, datetimes between Python and Rust;
//! 3. [`model`]: `Event`, `EventMetadata`, `ConsumerConfig`, the accepted event and
//!    the views Rust consumers read;
//! 4. [`exec`]: running jobs in Python (the loop's inbox, coroutine consumers,
//!    worker threads);
//! 5. [`consumers`]: the built-in consumers, each a Python face of a Rust sink;
//! 6. [`bus`]: `EventBus`, its persistence and its delivery log;
//! 7. [`producer`]: the compiled `HookEventProducer`.

use pyo3::prelude::*;

// NOTE: first, so that `stub_doc!` is in scope in the modules below.
#[macro_use]
mod stub_docs;

mod runtime;

mod convert;

mod model;

mod exec;

mod consumers;

mod bus;

mod producer;

/// Raises `InvalidTopicError` unless `topic` is a valid published topic (the
/// engine's own check, for `mpm_events.testing`).
#[pyfunction]
fn _validate_topic(topic: &str) -> PyResult<()> {
    crate::topic::validate_topic(topic).map_err(runtime::errors::topic_error)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(_validate_topic, m)?)?;
    runtime::init_pymodule(m)?;
    model::init_pymodule(m)?;
    exec::init_pymodule(m)?;
    consumers::init_pymodule(m)?;
    bus::init_pymodule(m)?;
    producer::init_pymodule(m)?;
    Ok(())
}
