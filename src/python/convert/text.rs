//! Small text conversions: a Python object's type name (for error messages) and
//! a uuid's usual text.

use pyo3::prelude::*;

/// The name of `obj`'s type, for error messages.
pub fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// A uuid as the usual lower-case hyphenated text.
pub fn uuid_text(u: &uuid::Uuid) -> String {
    // NOTE: encode_lower into a buffer skips the fmt machinery of to_string().
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    u.hyphenated().encode_lower(&mut buf).to_owned()
}
