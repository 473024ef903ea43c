//! The error type of the event store.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Everything that can go wrong in the durable event store.
///
/// Every variant that concerns the database file names its path, so that the message
/// can be shown to a user as is. The type is `Clone` because one failed group commit
/// may have to be reported to several waiting publishers.
#[derive(Debug, Clone)]
pub enum StorageError {
    /// The file exists but is not a readable event store (garbage bytes, a different
    /// SQLite database, a failed integrity check). The store refuses to start rather
    /// than silently starting empty.
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What was found wrong.
        detail: String,
    },
    /// The store was written by a newer version of mpm-events (schema version too high).
    Incompatible {
        /// The database file.
        path: PathBuf,
        /// Found and supported schema versions.
        detail: String,
    },
    /// An operating-system level error: the directory cannot be created, the file cannot
    /// be opened (permissions), an I/O error while writing.
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error (shared so the error stays `Clone`).
        source: Arc<std::io::Error>,
    },
    /// The disk (or the configured size limit) is full: the write was rolled back and
    /// nothing that was stored before is affected.
    Full {
        /// The database file.
        path: PathBuf,
        /// SQLite's message.
        detail: String,
    },
    /// Any other database error.
    Database {
        /// The database file.
        path: PathBuf,
        /// SQLite's message.
        detail: String,
    },
    /// The event is not storable as given (e.g. priority outside 1..=4).
    InvalidEvent(String),
    /// The store has been closed (or its writer thread has stopped).
    Closed,
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::Corrupt { path, detail } => write!(
                f,
                "event store {} is corrupt or is not an mpm-events store ({detail}). \
                 Nothing was changed. Move the file aside (for example rename it to {}.corrupt, \
                 together with any -wal and -shm files next to it) to start with an empty \
                 store, or restore it from a backup",
                path.display(),
                path.display()
            ),
            StorageError::Incompatible { path, detail } => write!(
                f,
                "event store {} was written by a newer version of mpm-events ({detail}); \
                 upgrade mpm-events or point persistence_path at another file",
                path.display()
            ),
            StorageError::Io { path, source } => {
                write!(f, "I/O error on event store {}: {source}", path.display())
            }
            StorageError::Full { path, detail } => write!(
                f,
                "event store {} is full ({detail}); the event was not stored, \
                 earlier events are intact. Free disk space or lower the retention limits",
                path.display()
            ),
            StorageError::Database { path, detail } => {
                write!(
                    f,
                    "event store {}: database error: {detail}",
                    path.display()
                )
            }
            StorageError::InvalidEvent(msg) => write!(f, "invalid event for the store: {msg}"),
            StorageError::Closed => write!(f, "event store is closed"),
        }
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StorageError::Io { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}

impl StorageError {
    /// Classify a rusqlite error that happened on the store at `path`.
    pub(crate) fn from_sqlite(path: &Path, err: rusqlite::Error) -> StorageError {
        use rusqlite::ErrorCode;
        let detail = err.to_string();
        let code = match &err {
            rusqlite::Error::SqliteFailure(e, _) => Some(e.code),
            _ => None,
        };
        match code {
            Some(ErrorCode::DiskFull) => StorageError::Full {
                path: path.to_path_buf(),
                detail,
            },
            Some(ErrorCode::NotADatabase) | Some(ErrorCode::DatabaseCorrupt) => {
                StorageError::Corrupt {
                    path: path.to_path_buf(),
                    detail,
                }
            }
            Some(ErrorCode::CannotOpen)
            | Some(ErrorCode::PermissionDenied)
            | Some(ErrorCode::ReadOnly)
            | Some(ErrorCode::SystemIoFailure) => StorageError::Io {
                path: path.to_path_buf(),
                source: Arc::new(std::io::Error::other(detail)),
            },
            _ => StorageError::Database {
                path: path.to_path_buf(),
                detail,
            },
        }
    }

    pub(crate) fn io(path: &Path, err: std::io::Error) -> StorageError {
        StorageError::Io {
            path: path.to_path_buf(),
            source: Arc::new(err),
        }
    }
}

/// Result alias of the storage module.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
