//! Conversions between Python objects and Rust values (no pyclasses here).

pub mod json;
pub mod priority;
pub mod project;
pub mod text;
pub mod time;
