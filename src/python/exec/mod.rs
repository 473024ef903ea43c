//! Executors that run jobs in Python: on the event loop ([`loop_exec`]), on a
//! worker thread ([`thread_exec`]), fed through the loop's [`inbox`].

pub mod inbox;
pub mod loop_exec;
pub mod thread_exec;

pub use inbox::{Inbox, LoopExecutor};
pub use loop_exec::{PyConsumer, PyJob};
pub use thread_exec::{JobSource, ThreadExecutor};

/// Registers this room's classes.
pub fn init_pymodule(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
    use pyo3::types::PyModuleMethods;
    m.add_class::<PyJob>()?;
    m.add_class::<JobSource>()?;
    Ok(())
}
