//! The dead-letter sink: appends failed events as JSON lines to
//! `dead-letter-<UTC time>.jsonl` files, rotates by size, deletes files past
//! retention, and reads them back for replay (skipping a torn last line).
//!
//! File format (one JSON object per line, UTF-8, `\n`-terminated): the
//! original's `_serialize_event` shape `{id, topic, type, timestamp (ISO 8601),
//! source, data, correlation_id, priority (name), metadata: {retry_count,
//! consumers_failed, error_messages}}` plus `dead_letter: {consumer, errors,
//! attempts, stored_at}`: the consumer that gave up (`null` when stored because
//! the event arrived on one of the sink's own topics already failed), the error
//! of each attempt, and the number of attempts.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, SecondsFormat, Utc};
use parking_lot::Mutex;
use serde_json::{json, Value};

use super::{BoxFuture, Sink, SinkItem};
use crate::event::{priority_name, EventView};
use crate::topic::Pattern;

/// How often retention is enforced while writing.
const CLEANUP_EVERY: Duration = Duration::from_secs(3600);

/// Settings of the dead-letter sink.
#[derive(Debug, Clone)]
pub struct DeadLetterConfig {
    /// Directory of the `.jsonl` files.
    pub output_dir: PathBuf,
    /// Size after which a new file is started, bytes.
    pub max_file_size: u64,
    /// Files not modified for this many days are deleted.
    pub retention_days: f64,
    /// The consumer's name (its own failures are not stored twice).
    pub name: String,
}

#[derive(Default)]
struct Writer {
    current: Option<PathBuf>,
    size: u64,
    last_cleanup: Option<Instant>,
    stored: u64,
    replayed: u64,
    files_created: u64,
    total_bytes: u64,
    write_errors: u64,
    files_deleted: u64,
    skipped_lines: u64,
    last_error: Option<String>,
}

/// Persists dead letters.
pub struct DeadLetterSink {
    config: DeadLetterConfig,
    w: Mutex<Writer>,
}

/// ISO 8601 like Python's `datetime.isoformat()` on an aware UTC datetime.
pub fn iso(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, false)
}

/// The original's `_serialize_event` plus the failure record.
pub fn serialize(v: &EventView, consumer: Option<&str>, errors: &[String], attempts: u32) -> Value {
    let m = v.meta.lock();
    json!({
        "id": &*v.id,
        "topic": &*v.topic,
        "type": &*v.event_type,
        "timestamp": iso(&v.timestamp),
        "source": &*v.source,
        "data": v.data.clone().unwrap_or(Value::Null),
        "correlation_id": v.correlation_id,
        "priority": priority_name(v.priority),
        "metadata": {
            "retry_count": m.retry_count,
            "consumers_failed": m.failed().iter().map(|f| f.to_string()).collect::<Vec<_>>(),
            "error_messages": m.errors(),
        },
        "dead_letter": {
            "consumer": consumer,
            "errors": errors,
            "attempts": attempts,
            "stored_at": iso(&crate::clock::now()),
        },
    })
}

/// The original's `_should_store`: failed consumers, retries exhausted, or errors.
pub fn should_store(v: &EventView) -> bool {
    let m = v.meta.lock();
    !m.failed().is_empty() || m.retry_count >= m.max_retries || !m.errors().is_empty()
}

/// `(time part, counter)` of a file name, for ordering; `None` if not ours.
fn file_key(name: &str) -> Option<(String, u32)> {
    let stem = name.strip_prefix("dead-letter-")?.strip_suffix(".jsonl")?;
    // NOTE: names are `YYYYmmdd-HHMMSS` or `YYYYmmdd-HHMMSS-N` (N >= 1 when
    // several files start within the same second).
    let mut parts = stem.splitn(3, '-');
    let (d, t) = (parts.next()?, parts.next()?);
    let n = parts
        .next()
        .map(|n| n.parse().unwrap_or(u32::MAX))
        .unwrap_or(0);
    Some((format!("{d}-{t}"), n))
}

/// What a replay returns besides the events.
#[derive(Debug, Default)]
pub struct ReplayReport {
    /// Stored records (JSON objects), oldest file first, in file order.
    pub records: Vec<Value>,
    /// Lines that could not be parsed (e.g. torn by a crash) and were skipped.
    pub skipped: u64,
}

/// Filters of [`DeadLetterSink::replay`].
#[derive(Debug, Default, Clone)]
pub struct ReplayFilter {
    /// Earliest event timestamp (inclusive).
    pub start: Option<DateTime<Utc>>,
    /// Latest event timestamp (inclusive).
    pub end: Option<DateTime<Utc>>,
    /// A topic prefix (as the original) or, if it contains `*`, a pattern.
    pub topic: Option<String>,
}

impl DeadLetterSink {
    /// A sink writing into `config.output_dir` (created on `initialize`).
    pub fn new(config: DeadLetterConfig) -> Self {
        DeadLetterSink {
            config,
            w: Mutex::new(Writer::default()),
        }
    }

    /// The files of the directory, oldest first.
    pub fn files(&self) -> Vec<PathBuf> {
        let Ok(rd) = fs::read_dir(&self.config.output_dir) else {
            return Vec::new();
        };
        let mut v: Vec<((String, u32), PathBuf)> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                file_key(&name).map(|k| (k, e.path()))
            })
            .collect();
        v.sort();
        v.into_iter().map(|(_, p)| p).collect()
    }

    /// Deletes files not modified within the retention period; returns how many.
    pub fn cleanup(&self) -> u64 {
        let cutoff = SystemTime::now()
            .checked_sub(Duration::from_secs_f64(
                self.config.retention_days.max(0.0) * 86_400.0,
            ))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let current = self.w.lock().current.clone();
        let mut n = 0;
        for p in self.files() {
            if Some(&p) == current.as_ref() {
                continue;
            }
            let old = fs::metadata(&p)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < cutoff);
            if old && fs::remove_file(&p).is_ok() {
                n += 1;
            }
        }
        let mut w = self.w.lock();
        w.files_deleted += n;
        w.last_cleanup = Some(Instant::now());
        n
    }

    fn new_file_name(&self) -> PathBuf {
        let base = crate::clock::now().format("%Y%m%d-%H%M%S").to_string();
        let dir = &self.config.output_dir;
        let mut p = dir.join(format!("dead-letter-{base}.jsonl"));
        let mut n = 1;
        while p.exists() {
            p = dir.join(format!("dead-letter-{base}-{n}.jsonl"));
            n += 1;
        }
        p
    }

    fn rotate(&self, w: &mut Writer) {
        let p = self.new_file_name();
        // NOTE: create the file now so that a second rotation within the same
        // second sees the name taken.
        if let Err(e) = File::create(&p) {
            w.last_error = Some(format!("cannot create {}: {e}", p.display()));
        }
        w.current = Some(p);
        w.size = 0;
        w.files_created += 1;
    }

    /// Appends one record (one `write` call per line, so a crash can tear at
    /// most the last line).
    pub fn store(&self, record: &Value) -> Result<(), String> {
        let mut line = serde_json::to_vec(record).map_err(|e| e.to_string())?;
        line.push(b'\n');
        let due_cleanup = {
            let mut w = self.w.lock();
            if w.current.is_none()
                || (w.size > 0 && w.size + line.len() as u64 > self.config.max_file_size)
            {
                self.rotate(&mut w);
            }
            let path = w.current.clone().expect("rotated");
            let res = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut f| f.write_all(&line));
            if let Err(e) = res {
                w.write_errors += 1;
                let msg = format!("cannot write {}: {e}", path.display());
                w.last_error = Some(msg.clone());
                return Err(msg);
            }
            w.size += line.len() as u64;
            w.total_bytes += line.len() as u64;
            w.stored += 1;
            w.last_cleanup.is_none_or(|t| t.elapsed() >= CLEANUP_EVERY)
        };
        if due_cleanup {
            self.cleanup();
        }
        Ok(())
    }

    /// Reads the stored records matching `filter`. Unparsable lines (a torn
    /// last line after a crash) are skipped and counted.
    pub fn replay(&self, filter: &ReplayFilter) -> Result<ReplayReport, String> {
        let pattern = match &filter.topic {
            Some(t) if t.contains('*') => Some(Pattern::parse(t).map_err(|e| e.to_string())?),
            _ => None,
        };
        let mut out = ReplayReport::default();
        for p in self.files() {
            let Ok(f) = File::open(&p) else { continue };
            for line in BufReader::new(f).split(b'\n') {
                let Ok(line) = line else { break };
                if line.iter().all(|b| b.is_ascii_whitespace()) {
                    continue;
                }
                let Ok(rec) = serde_json::from_slice::<Value>(&line) else {
                    out.skipped += 1;
                    continue;
                };
                let Some(ts) = rec["timestamp"]
                    .as_str()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc))
                else {
                    out.skipped += 1;
                    continue;
                };
                if filter.start.is_some_and(|s| ts < s) || filter.end.is_some_and(|e| ts > e) {
                    continue;
                }
                let topic = rec["topic"].as_str().unwrap_or("");
                let keep = match (&pattern, &filter.topic) {
                    (Some(p), _) => p.matches(topic),
                    (None, Some(prefix)) => topic.starts_with(prefix.as_str()),
                    (None, None) => true,
                };
                if keep {
                    out.records.push(rec);
                }
            }
        }
        let mut w = self.w.lock();
        w.replayed += out.records.len() as u64;
        w.skipped_lines += out.skipped;
        Ok(out)
    }

    /// The output directory.
    pub fn output_dir(&self) -> &Path {
        &self.config.output_dir
    }
}

impl Sink for DeadLetterSink {
    fn needs_data(&self) -> bool {
        true
    }

    fn initialize(&self) -> Result<(), String> {
        fs::create_dir_all(&self.config.output_dir).map_err(|e| {
            format!(
                "cannot create dead-letter directory {}: {e}",
                self.config.output_dir.display()
            )
        })?;
        self.cleanup();
        let mut w = self.w.lock();
        self.rotate(&mut w);
        Ok(())
    }

    fn consume(self: Arc<Self>, items: Vec<SinkItem>) -> BoxFuture<Vec<Result<(), String>>> {
        let results = items
            .iter()
            .map(|i| {
                if !should_store(&i.view) {
                    return Ok(());
                }
                let errors = i.view.meta.lock().errors().to_vec();
                let retries = i.view.meta.lock().retry_count.max(0) as u32;
                self.store(&serialize(&i.view, None, &errors, retries))
            })
            .collect();
        Box::pin(async move { results })
    }

    fn wants_dead_letters(&self) -> bool {
        true
    }

    fn on_dead_letter(&self, item: SinkItem, consumer: &str, errors: &[String], attempts: u32) {
        if consumer == self.config.name {
            // NOTE: our own write failed every retry; writing again would fail too.
            return;
        }
        let _ = self.store(&serialize(&item.view, Some(consumer), errors, attempts));
    }

    fn metrics(&self) -> Value {
        let w = self.w.lock();
        json!({
            "events_stored": w.stored,
            "events_replayed": w.replayed,
            "files_created": w.files_created,
            "total_size_bytes": w.total_bytes,
            "current_file": w.current.as_ref().map(|p| p.display().to_string()),
            "current_file_size": w.size,
            "files_deleted": w.files_deleted,
            "write_errors": w.write_errors,
            "lines_skipped": w.skipped_lines,
            "last_error": w.last_error,
        })
    }

    fn is_healthy(&self) -> bool {
        self.w.lock().current.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_sort_by_time_then_counter() {
        let mut names = [
            "dead-letter-20240101-120000-2.jsonl",
            "dead-letter-20240101-120000.jsonl",
            "dead-letter-20231231-235959.jsonl",
            "dead-letter-20240101-120000-1.jsonl",
        ];
        names.sort_by_key(|n| file_key(n).unwrap());
        assert_eq!(
            names,
            [
                "dead-letter-20231231-235959.jsonl",
                "dead-letter-20240101-120000.jsonl",
                "dead-letter-20240101-120000-1.jsonl",
                "dead-letter-20240101-120000-2.jsonl",
            ]
        );
        assert!(file_key("other.jsonl").is_none());
    }
}
