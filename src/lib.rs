//! mpm-events: an event bus engine for Python, written in Rust.
//!
//! The engine modules ([`topic`], [`queue`], [`retry`], ...) are plain Rust and do not
//! import pyo3; the [`python`] module is the thin binding layer built into
//! `mpm_events._core`.

pub mod sinks;

#[cfg(feature = "python")]
pub mod python;
