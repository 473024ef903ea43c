//! Database schema, connection setup and the checks made when a store is opened.
//!
//! See `docs/persistence.md` for the documented schema; keep the two in step.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::error::{Result, StorageError};
use super::Durability;

/// `PRAGMA application_id` of an mpm-events store ("MPME" in ASCII), so that a random
/// SQLite database is recognised as "not ours" instead of being written into.
pub const APPLICATION_ID: i32 = 0x4D50_4D45;

/// `PRAGMA user_version`: the schema version this code writes and understands.
pub const SCHEMA_VERSION: i32 = 2;

/// The 16-byte header every SQLite 3 database file starts with.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// The current schema (version 2). Created in one transaction on a new (empty) file.
///
/// A delivery (event, consumer) is pending while it has a row in `deliveries`, or, for
/// an event above `store_meta.deliveries_through`, while the consumer is named in the
/// event's `targets` (JSON array). The writer keeps the deliveries of recent events in
/// memory, drops each as it is acknowledged, and only the ones still pending at a
/// checkpoint become `deliveries` rows (and the mark moves up). After a crash, every
/// target of an event above the mark counts as pending again: at-least-once.
const SCHEMA: &str = r#"
CREATE TABLE events (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT    NOT NULL,
    topic          TEXT    NOT NULL,
    event_type     TEXT    NOT NULL,
    source         TEXT    NOT NULL,
    timestamp_us   INTEGER NOT NULL,
    published_us   INTEGER NOT NULL,
    priority       INTEGER NOT NULL CHECK (priority BETWEEN 1 AND 4),
    correlation_id TEXT,
    codec          INTEGER NOT NULL DEFAULT 0,
    data           BLOB    NOT NULL,
    size_bytes     INTEGER NOT NULL,
    targets        TEXT
);
CREATE INDEX events_by_time ON events (timestamp_us, seq);

CREATE TABLE deliveries (
    seq      INTEGER NOT NULL,
    consumer TEXT    NOT NULL,
    PRIMARY KEY (seq, consumer)
) WITHOUT ROWID;

CREATE TABLE store_meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO store_meta (key, value) VALUES ('deliveries_through', 0);

CREATE TABLE dead_letters (
    dl_id          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_seq      INTEGER,
    event_id       TEXT    NOT NULL,
    topic          TEXT    NOT NULL,
    event_type     TEXT    NOT NULL,
    source         TEXT    NOT NULL,
    timestamp_us   INTEGER NOT NULL,
    published_us   INTEGER NOT NULL,
    priority       INTEGER NOT NULL,
    correlation_id TEXT,
    codec          INTEGER NOT NULL DEFAULT 0,
    data           BLOB    NOT NULL,
    consumer       TEXT    NOT NULL,
    errors_json    TEXT    NOT NULL,
    attempts       INTEGER NOT NULL,
    failed_us      INTEGER NOT NULL
);

CREATE VIEW events_readable AS
SELECT seq, id, topic, event_type, source,
       datetime(timestamp_us / 1000000, 'unixepoch') AS timestamp_utc,
       timestamp_us, published_us, priority, correlation_id,
       CASE codec WHEN 0 THEN CAST(data AS TEXT) ELSE NULL END AS data_json,
       codec, length(data) AS stored_len
FROM events;
"#;

/// Reject files that are obviously not SQLite databases before SQLite touches them.
///
/// NOTE: SQLite itself would also refuse them (SQLITE_NOTADB), but checking the header
/// ourselves gives a clearer message and guarantees we never write into such a file.
pub fn check_file_header(path: &Path) -> Result<()> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StorageError::io(path, e)),
    };
    if !meta.is_file() {
        return Err(StorageError::io(
            path,
            std::io::Error::other("exists but is not a regular file"),
        ));
    }
    if meta.len() == 0 {
        // An empty file is what SQLite treats as a new database: nothing to lose.
        return Ok(());
    }
    let mut header = [0u8; 16];
    let mut f = std::fs::File::open(path).map_err(|e| StorageError::io(path, e))?;
    let n = read_up_to(&mut f, &mut header).map_err(|e| StorageError::io(path, e))?;
    if n < header.len() || &header != SQLITE_HEADER {
        return Err(StorageError::Corrupt {
            path: path.to_path_buf(),
            detail: format!(
                "the file ({} bytes) does not start with the SQLite header",
                meta.len()
            ),
        });
    }
    Ok(())
}

fn read_up_to(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Process-wide SQLite settings, applied once before the first connection opens.
///
/// Memory statistics off (`SQLITE_CONFIG_MEMSTATUS`): with them on, every SQLite
/// allocation and free takes a global mutex, ~1k instructions per durably stored
/// event (callgrind, W9, issue 16). Nothing here reads them (no soft heap limit,
/// no `sqlite3_memory_used`). If SQLite was initialised already the call is refused
/// and changes nothing.
pub fn sqlite_process_setup() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: sqlite3_config takes (SQLITE_CONFIG_MEMSTATUS, int); before
        // sqlite3_initialize it only sets a global flag, after it returns
        // SQLITE_MISUSE and does nothing.
        unsafe {
            rusqlite::ffi::sqlite3_config(
                rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS,
                0 as std::ffi::c_int,
            );
        }
    });
}

/// Open a connection to `path` with the settings every connection of the store uses.
pub fn connect(path: &Path) -> Result<Connection> {
    sqlite_process_setup();
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn =
        Connection::open_with_flags(path, flags).map_err(|e| StorageError::from_sqlite(path, e))?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(|e| StorageError::from_sqlite(path, e))?;
    Ok(conn)
}

/// Prepare the write connection: check that the file is ours and intact, create the
/// schema on a new file, and switch to WAL with the durability's `synchronous` level.
pub fn init_writer(
    conn: &Connection,
    path: &Path,
    durability: &Durability,
    verify: bool,
) -> Result<()> {
    let sq = |e| StorageError::from_sqlite(path, e);
    // Reading the schema is the first access to page 1: a non-database fails here.
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .map_err(sq)?;
    let app_id: i32 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(sq)?;
    let version: i32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sq)?;

    if tables > 0 && app_id != APPLICATION_ID {
        return Err(StorageError::Corrupt {
            path: path.to_path_buf(),
            detail: format!(
                "it is an SQLite database but not an mpm-events store \
                 (application_id {app_id:#x}, {tables} schema objects)"
            ),
        });
    }
    if version > SCHEMA_VERSION {
        return Err(StorageError::Incompatible {
            path: path.to_path_buf(),
            detail: format!(
                "schema version {version}, this version supports up to {SCHEMA_VERSION}"
            ),
        });
    }

    if verify && tables > 0 {
        quick_check(conn, path)?;
    }

    if tables == 0 {
        // NOTE: auto_vacuum can only be chosen before the first table exists. INCREMENTAL
        // lets retention hand freed pages back to the file system (PRAGMA
        // incremental_vacuum) without a full VACUUM.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
            .map_err(sq)?;
    }
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(sq)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StorageError::Database {
            path: path.to_path_buf(),
            detail: format!("could not switch to WAL journal mode (got {mode})"),
        });
    }
    set_synchronous(conn, path, durability)?;
    // Keep the WAL file from staying huge after a burst.
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)
        .map_err(sq)?;
    // NOTE: stores made before had an index on the (random uuid) event ids; every
    // insert touched a random page of it, which halved write throughput. Lookups
    // now go by seq, so it is dropped.
    conn.execute_batch("DROP INDEX IF EXISTS events_by_id")
        .map_err(sq)?;
    // NOTE: SQLite's default page cache is 2 MiB; the writer re-reads index pages
    // of a growing store (seen as pread() in profiles) once that is exceeded.
    conn.pragma_update(None, "cache_size", -65536).map_err(sq)?;

    if tables == 0 {
        let tx = conn.unchecked_transaction().map_err(sq)?;
        tx.execute_batch(SCHEMA).map_err(sq)?;
        tx.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(sq)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(sq)?;
        tx.commit().map_err(sq)?;
    } else if version < 1 || !has_table(conn, "events").map_err(sq)? {
        return Err(StorageError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("the mpm-events schema is missing (schema version {version})"),
        });
    } else if version == 1 {
        migrate_v1_to_v2(conn).map_err(sq)?;
    }
    Ok(())
}

/// Version 1 kept every pending delivery in `deliveries`; version 2 adds the events'
/// `targets` and the `deliveries_through` mark (see [`SCHEMA`]). Every version-1 event
/// already has its rows in `deliveries`, so the mark starts at the last seq.
fn migrate_v1_to_v2(conn: &Connection) -> rusqlite::Result<()> {
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch(
        "ALTER TABLE events ADD COLUMN targets TEXT;
         CREATE TABLE store_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
         INSERT INTO store_meta (key, value)
             SELECT 'deliveries_through', coalesce(max(seq), 0) FROM events;",
    )?;
    tx.pragma_update(None, "user_version", 2)?;
    tx.commit()
}

/// `synchronous` for the durability mode: FULL fsyncs the WAL at every commit (Sync);
/// NORMAL fsyncs only at checkpoints, which the writer forces every flush interval (Async).
pub fn set_synchronous(conn: &Connection, path: &Path, durability: &Durability) -> Result<()> {
    let level = match durability {
        Durability::Sync => "FULL",
        Durability::Async { .. } => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", level)
        .map_err(|e| StorageError::from_sqlite(path, e))
}

fn has_table(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

/// Run `PRAGMA quick_check` and turn anything but "ok" into [`StorageError::Corrupt`].
pub fn quick_check(conn: &Connection, path: &Path) -> Result<()> {
    let sq = |e| StorageError::from_sqlite(path, e);
    let mut stmt = conn.prepare("PRAGMA quick_check(20)").map_err(sq)?;
    let lines: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(sq)?
        .collect::<rusqlite::Result<_>>()
        .map_err(sq)?;
    if lines.len() == 1 && lines[0] == "ok" {
        Ok(())
    } else {
        Err(StorageError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("integrity check failed: {}", lines.join("; ")),
        })
    }
}

/// Cap the database at `limit` bytes (`PRAGMA max_page_count`, per connection; SQLite
/// never lowers it below the current size). Inserts beyond it fail with SQLITE_FULL.
pub fn set_hard_limit(conn: &Connection, path: &Path, limit: u64) -> Result<()> {
    let sq = |e| StorageError::from_sqlite(path, e);
    let page_size: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .map_err(sq)?;
    let pages = (limit / page_size.max(512) as u64).max(1);
    conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
        .map_err(sq)
}
