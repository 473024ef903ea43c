//! The data the bus moves: `Event`, `EventMetadata` and `ConsumerConfig` (the
//! Python classes), the accepted event the engine holds ([`AcceptedEvent`]) and the
//! views copied for Rust consumers.

use pyo3::prelude::*;

pub mod accepted;
pub mod config;
pub mod event;
pub mod metadata;
pub mod rule;
pub mod view;

pub use accepted::*;
pub use config::{ConsumerConfig, ConsumerSpec};
pub use event::*;
pub use metadata::*;
pub use rule::Rule;
pub use view::*;

/// Registers this room's classes.
pub fn init_pymodule(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Event>()?;
    m.add_class::<EventMetadata>()?;
    m.add_class::<ConsumerConfig>()?;
    m.add_class::<Rule>()?;
    Ok(())
}
