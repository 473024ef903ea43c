//! mpm-events: an event bus engine for Python, written in Rust.
//!
//! The engine modules ([`topic`], [`dispatch`], [`durable`], [`retry`], [`storage`],
//! [`sinks`], [`wake`], ...) are plain Rust and do not import pyo3; the `python` module
//! is the binding layer built into `mpm_events._core`, in rooms that import only
//! downward (`docs/architecture.md`; `tools/check_layers.py` checks both rules).

pub mod sinks;

#[cfg(feature = "python")]
pub mod python;

pub mod backend;
pub mod clock;
pub mod dead_letter;
pub mod dispatch;
pub mod durable;
pub mod event;
pub mod monitor;
pub mod queue;
pub mod retry;
pub mod rules;
pub mod schema;
pub mod stats;
pub mod storage;
pub mod topic;
pub mod wake;

#[cfg(feature = "python")]
mod alloc;
