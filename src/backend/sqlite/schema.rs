//! The shared log's SQLite schema, connection setup and the checks made at open.
//!
//! Keep in step with the layout documented in `docs/backends.md`.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use super::sq;
use crate::backend::error::{LogError, Result};
use crate::backend::Durability;

/// `PRAGMA application_id` of a shared log ("MPML" in ASCII). Differs from the
/// per-process store's ("MPME") so neither opens the other's file.
pub const APPLICATION_ID: i32 = 0x4D50_4D4C;

/// `PRAGMA user_version`: the schema version this code writes and understands.
pub const SCHEMA_VERSION: i32 = 1;

const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// Schema version 1, created in one transaction on an empty file.
///
/// * `log_entries`: the log. `seq` is the entry id (AUTOINCREMENT: never reused, so a
///   group's position stays meaningful after retention deletes entries).
/// * `log_groups`: one row per consumer group; `position` is the last seq handed out.
/// * `log_pending`: entries handed to a group and not yet acknowledged or
///   dead-lettered. `owner` is the instance holding the claim (NULL: waiting to be
///   handed out again, e.g. a replayed dead letter), `claimed_us` the last delivery or
///   renewal (a claim idle longer than the claim timeout may be taken over).
/// * `log_dead_letters`: entries a group gave up on, with a copy of the entry.
/// * `log_meta`: counters (`dropped_unhandled`).
const SCHEMA: &str = r#"
CREATE TABLE log_entries (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id      TEXT    NOT NULL,
    topic         TEXT    NOT NULL,
    priority      INTEGER NOT NULL CHECK (priority BETWEEN 1 AND 4),
    timestamp_us  INTEGER NOT NULL,
    appended_us   INTEGER NOT NULL,
    publisher     TEXT    NOT NULL,
    publisher_seq INTEGER NOT NULL,
    codec         INTEGER NOT NULL DEFAULT 0,
    payload       BLOB    NOT NULL,
    metadata      BLOB    NOT NULL,
    size_bytes    INTEGER NOT NULL
);
CREATE INDEX log_entries_by_time ON log_entries (timestamp_us, seq);

CREATE TABLE log_groups (
    name       TEXT    PRIMARY KEY,
    position   INTEGER NOT NULL,
    created_us INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE log_pending (
    grp        TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    owner      TEXT,
    claimed_us INTEGER NOT NULL,
    deliveries INTEGER NOT NULL,
    PRIMARY KEY (grp, seq)
) WITHOUT ROWID;

CREATE TABLE log_dead_letters (
    dl_id         INTEGER PRIMARY KEY AUTOINCREMENT,
    grp           TEXT    NOT NULL,
    seq           INTEGER NOT NULL,
    event_id      TEXT    NOT NULL,
    topic         TEXT    NOT NULL,
    priority      INTEGER NOT NULL,
    timestamp_us  INTEGER NOT NULL,
    appended_us   INTEGER NOT NULL,
    publisher     TEXT    NOT NULL,
    publisher_seq INTEGER NOT NULL,
    codec         INTEGER NOT NULL,
    payload       BLOB    NOT NULL,
    metadata      BLOB    NOT NULL,
    size_bytes    INTEGER NOT NULL,
    reason        TEXT    NOT NULL,
    attempts      INTEGER NOT NULL,
    failed_us     INTEGER NOT NULL
);
CREATE INDEX log_dead_letters_by_group ON log_dead_letters (grp, dl_id);

CREATE TABLE log_meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO log_meta (key, value) VALUES ('dropped_unhandled', 0);
"#;

/// Reject a file that is not an SQLite database before SQLite touches it.
pub fn check_file_header(path: &Path, location: &str) -> Result<()> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(location, e.to_string())),
    };
    if !meta.is_file() {
        return Err(io(location, "exists but is not a regular file".into()));
    }
    if meta.len() == 0 {
        return Ok(());
    }
    let mut header = [0u8; 16];
    let mut f = std::fs::File::open(path).map_err(|e| io(location, e.to_string()))?;
    let mut n = 0;
    while n < header.len() {
        match f.read(&mut header[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(io(location, e.to_string())),
        }
    }
    if n < header.len() || &header != SQLITE_HEADER {
        return Err(LogError::Corrupt {
            location: location.to_string(),
            detail: format!(
                "the file ({} bytes) does not start with the SQLite header",
                meta.len()
            ),
        });
    }
    Ok(())
}

fn io(location: &str, detail: String) -> LogError {
    LogError::Io {
        location: location.to_string(),
        detail,
    }
}

/// Open and prepare one connection: WAL, `synchronous` for the durability, the schema
/// created (first opener) or checked (everyone else).
pub fn open(
    path: &Path,
    location: &str,
    durability: Durability,
    busy_timeout: Duration,
    verify: bool,
) -> Result<Connection> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            io(
                location,
                format!("cannot create directory {}: {e}", dir.display()),
            )
        })?;
    }
    check_file_header(path, location)?;
    crate::storage::sqlite_process_setup();
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags).map_err(|e| sq(location, e))?;
    // NOTE: SQLite silently opens a write-protected file read-only; say so now rather
    // than at the first append.
    if conn
        .is_readonly(rusqlite::MAIN_DB)
        .map_err(|e| sq(location, e))?
    {
        return Err(io(location, "the file is read-only".into()));
    }
    set_busy_wait(&conn, busy_timeout).map_err(|e| sq(location, e))?;
    // NOTE: check what the file is before anything can write to it: switching to WAL
    // rewrites the header of a rollback-journal database (another program's file must
    // be left as it was). This is the first access to page 1: a non-database fails here.
    let (tables, app_id, version) = identity(&conn, location)?;
    if tables > 0 {
        check_identity(location, tables, app_id, version)?;
    }
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(|e| sq(location, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(LogError::Backend {
            location: location.to_string(),
            detail: format!("could not switch to WAL journal mode (got {mode})"),
        });
    }
    let level = match durability {
        Durability::Sync => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", level)
        .map_err(|e| sq(location, e))?;
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)
        .map_err(|e| sq(location, e))?;

    // NOTE: an existing log is checked with a plain read (many short-lived publishers
    // open it at once: they must not queue for the write lock); a new one is created
    // under the write lock, re-checked there, so two processes opening a new file at
    // once do not both create the schema.
    let existing: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .map_err(|e| sq(location, e))?;
    let behavior = if existing == 0 {
        TransactionBehavior::Immediate
    } else {
        TransactionBehavior::Deferred
    };
    let tx = conn
        .transaction_with_behavior(behavior)
        .map_err(|e| sq(location, e))?;
    let (tables, app_id, version) = identity(&tx, location)?;
    if tables == 0 {
        tx.execute_batch(SCHEMA).map_err(|e| sq(location, e))?;
        tx.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(|e| sq(location, e))?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(|e| sq(location, e))?;
    } else {
        check_identity(location, tables, app_id, version)?;
    }
    tx.commit().map_err(|e| sq(location, e))?;

    if verify && tables > 0 {
        let lines: Vec<String> = {
            let mut stmt = conn
                .prepare("PRAGMA quick_check(20)")
                .map_err(|e| sq(location, e))?;
            let rows = stmt
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(|e| sq(location, e))?;
            rows.collect::<rusqlite::Result<_>>()
                .map_err(|e| sq(location, e))?
        };
        if !(lines.len() == 1 && lines[0] == "ok") {
            return Err(LogError::Corrupt {
                location: location.to_string(),
                detail: format!("integrity check failed: {}", lines.join("; ")),
            });
        }
    }
    Ok(conn)
}

/// `(schema objects, application_id, user_version)` of an open database.
fn identity(conn: &Connection, location: &str) -> Result<(i64, i32, i32)> {
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .map_err(|e| sq(location, e))?;
    let app_id: i32 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(|e| sq(location, e))?;
    let version: i32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| sq(location, e))?;
    Ok((tables, app_id, version))
}

/// A database with a schema must be a shared log of a version this code reads.
fn check_identity(location: &str, tables: i64, app_id: i32, version: i32) -> Result<()> {
    if app_id != APPLICATION_ID {
        return Err(LogError::Corrupt {
            location: location.to_string(),
            detail: format!(
                "it is an SQLite database but not an mpm-events shared log \
                 (application_id {app_id:#x}, {tables} schema objects)"
            ),
        });
    }
    if version > SCHEMA_VERSION {
        return Err(LogError::Incompatible {
            location: location.to_string(),
            detail: format!(
                "schema version {version}, this version supports up to {SCHEMA_VERSION}"
            ),
        });
    }
    if version < 1 {
        return Err(LogError::Corrupt {
            location: location.to_string(),
            detail: format!("the shared log schema is missing (schema version {version})"),
        });
    }
    Ok(())
}

/// Cap the file at `limit` bytes (`PRAGMA max_page_count`, per connection): writes
/// beyond it fail as on a full disk.
pub fn set_hard_limit(conn: &Connection, location: &str, limit: u64) -> Result<()> {
    let page_size: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .map_err(|e| sq(location, e))?;
    let pages = (limit / page_size.max(512) as u64).max(1);
    conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
        .map_err(|e| sq(location, e))
}

/// The longest a connection waits for another process's write lock.
///
/// NOTE: a plain function pointer is all SQLite's busy handler takes, so the budget
/// is process-wide: the longest any open log asked for (10 s by default).
static BUSY_BUDGET_US: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

thread_local! {
    /// When the current busy wait on this thread began.
    static BUSY_SINCE: std::cell::Cell<Option<std::time::Instant>> =
        const { std::cell::Cell::new(None) };
}

/// Waits for a busy database in short random sleeps instead of SQLite's
/// `busy_timeout`, whose sleeps grow to 100 ms: with fifty hook processes
/// appending at once, the lock is free most of the time they sleep (measured: the
/// slowest of 50 concurrent appends 0.3 s with this, 1.1 to 2.7 s without).
fn set_busy_wait(conn: &Connection, budget: Duration) -> rusqlite::Result<()> {
    BUSY_BUDGET_US.fetch_max(
        budget.as_micros().min(u64::MAX as u128) as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    conn.busy_handler(Some(busy_wait))
}

fn busy_wait(attempt: i32) -> bool {
    let now = std::time::Instant::now();
    let since = BUSY_SINCE.with(|s| {
        if attempt == 0 || s.get().is_none() {
            s.set(Some(now));
        }
        s.get().unwrap_or(now)
    });
    let budget = BUSY_BUDGET_US.load(std::sync::atomic::Ordering::Relaxed);
    if now.duration_since(since).as_micros() as u64 >= budget {
        BUSY_SINCE.with(|s| s.set(None));
        return false;
    }
    // NOTE: random, so that waiting processes do not retry in lockstep.
    std::thread::sleep(Duration::from_micros(fastrand::u64(300..1500)));
    true
}
