//! The error type of the shared logs.

use std::fmt;

/// Everything that can go wrong in a shared log. Variants about the log's storage name
/// its location (file path or URL) so the message can be shown to a user as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogError {
    /// The file is not a readable shared log (garbage, another SQLite database, a
    /// failed integrity check). Nothing was changed.
    Corrupt {
        /// The log's location.
        location: String,
        /// What was found wrong.
        detail: String,
    },
    /// The log was written by a newer version of mpm-events.
    Incompatible {
        /// The log's location.
        location: String,
        /// Found and supported schema versions.
        detail: String,
    },
    /// The log cannot be opened or written: missing permission, read-only file or file
    /// system, a directory that cannot be created, an I/O error.
    Io {
        /// The log's location.
        location: String,
        /// The operating system's or the database's message.
        detail: String,
    },
    /// The disk is full: the transaction was rolled back, earlier entries are intact.
    Full {
        /// The log's location.
        location: String,
        /// The database's message.
        detail: String,
    },
    /// Any other storage error.
    Backend {
        /// The log's location.
        location: String,
        /// The backend's message.
        detail: String,
    },
    /// A bad argument (record, name, limit): the message says which and why.
    Invalid(String),
    /// A group the log does not know (create it with `ensure_group`).
    UnknownGroup(String),
    /// This handle was closed.
    Closed,
}

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogError::Corrupt { location, detail } => write!(
                f,
                "shared event log {location} is corrupt or is not an mpm-events log ({detail}). \
                 Nothing was changed. Move the file aside (with any -wal and -shm files next \
                 to it) to start an empty log, or restore it from a backup"
            ),
            LogError::Incompatible { location, detail } => write!(
                f,
                "shared event log {location} was written by a newer version of mpm-events \
                 ({detail}); upgrade mpm-events or use another log"
            ),
            LogError::Io { location, detail } => {
                write!(
                    f,
                    "cannot open or write shared event log {location}: {detail}"
                )
            }
            LogError::Full { location, detail } => write!(
                f,
                "shared event log {location} is full ({detail}); nothing of this write was \
                 stored, earlier entries are intact"
            ),
            LogError::Backend { location, detail } => {
                write!(f, "shared event log {location}: {detail}")
            }
            LogError::Invalid(msg) => write!(f, "{msg}"),
            LogError::UnknownGroup(g) => write!(
                f,
                "consumer group {g:?} is not known to the log (ensure_group creates it)"
            ),
            LogError::Closed => write!(f, "shared event log handle is closed"),
        }
    }
}

impl std::error::Error for LogError {}

/// Result alias of the backend module.
pub type Result<T, E = LogError> = std::result::Result<T, E>;
