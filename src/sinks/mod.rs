//! Engine-side sinks: delivery back-ends used by the built-in consumers.
//!
//! Sinks are plain Rust (tokio) and never import pyo3, so they build and are
//! tested with `--no-default-features`. The Python binding layer wraps them.

pub mod socketio;
