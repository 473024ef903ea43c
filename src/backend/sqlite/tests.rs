//! SqliteLog: the conformance suite, file-level errors, and real multi-process tests
//! (the test binary re-executes itself as a child; see [`child_process_entry`]).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{SqliteLog, SqliteOptions};
use crate::backend::conformance::{conformance_suite, rec, TestLog};
use crate::backend::error::LogError;
use crate::backend::{new_instance_id, Durability, EntryId, Record, SharedLog, StartAt};

fn sqlite_factory() -> TestLog {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let path = dir.path().join("log.db");
    TestLog {
        open: Box::new(move || {
            let _keep = &dir;
            Arc::new(SqliteLog::open_path(&path).unwrap()) as Arc<dyn SharedLog>
        }),
    }
}

conformance_suite!(sqlite_factory);

// ---------------------------------------------------------------- file-level errors

#[test]
fn garbage_file_is_corrupt_and_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    std::fs::write(&path, b"this is not a database at all, not at all").unwrap();
    let err = SqliteLog::open_path(&path).unwrap_err();
    assert!(matches!(err, LogError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains(&path.display().to_string()));
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"this is not a database at all, not at all"
    );
}

#[test]
fn truncated_database_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    {
        let log = SqliteLog::open_path(&path).unwrap();
        log.append(&(0..50).map(|i| rec("p", i)).collect::<Vec<_>>())
            .unwrap();
        log.close();
    }
    // Keep the header, smash the pages after it.
    let mut bytes = std::fs::read(&path).unwrap();
    for b in bytes.iter_mut().skip(100) {
        *b = 0xA5;
    }
    std::fs::write(&path, &bytes).unwrap();
    let _ = std::fs::remove_file(path.with_extension("db-wal"));
    let _ = std::fs::remove_file(path.with_extension("db-shm"));
    let mut opts = SqliteOptions::new(&path);
    opts.verify_on_open = true;
    let err = SqliteLog::open(opts).unwrap_err();
    assert!(matches!(err, LogError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains(&path.display().to_string()));
}

#[test]
fn foreign_sqlite_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.db");
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
        .unwrap();
    drop(c);
    let before = std::fs::read(&path).unwrap();
    let err = SqliteLog::open_path(&path).unwrap_err();
    assert!(
        err.to_string().contains("not an mpm-events shared log"),
        "{err}"
    );
    // Left byte for byte as it was (not switched to WAL), and no WAL file made.
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert!(!path.with_extension("db-wal").exists());
    // The per-process store's file is foreign too (different application_id).
    let store = dir.path().join("store.db");
    drop(crate::storage::Store::open(crate::storage::StoreOptions::new(&store)).unwrap());
    assert!(matches!(
        SqliteLog::open_path(&store).unwrap_err(),
        LogError::Corrupt { .. }
    ));
}

#[test]
fn newer_schema_is_refused_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    SqliteLog::open_path(&path).unwrap().close();
    let c = rusqlite::Connection::open(&path).unwrap();
    c.pragma_update(None, "user_version", super::SCHEMA_VERSION + 1)
        .unwrap();
    drop(c);
    let err = SqliteLog::open_path(&path).unwrap_err();
    assert!(matches!(err, LogError::Incompatible { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("newer"),
        "{msg}"
    );
}

#[test]
fn unopenable_path_is_an_io_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let path = file.join("log.db");
    let err = SqliteLog::open_path(&path).unwrap_err();
    assert!(matches!(err, LogError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains(&path.display().to_string()));
    // A directory where the file should be.
    let err = SqliteLog::open_path(dir.path()).unwrap_err();
    assert!(matches!(err, LogError::Io { .. }), "{err:?}");
}

#[test]
fn full_disk_rolls_back_the_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let mut opts = SqliteOptions::new(&path);
    opts.hard_limit_bytes = Some(256 * 1024);
    opts.compress_threshold = usize::MAX;
    let log = SqliteLog::open(opts).unwrap();
    let big = |i: u64| Record {
        payload: vec![b'x'; 20_000],
        ..rec("p", i)
    };
    let mut stored = 0u64;
    let err = loop {
        match log.append(&[big(stored), big(stored + 1)]) {
            Ok(ids) => stored += ids.len() as u64,
            Err(e) => break e,
        }
        assert!(stored < 1000, "the limit never hit");
    };
    assert!(matches!(err, LogError::Full { .. }), "{err:?}");
    assert!(err.to_string().contains(&path.display().to_string()));
    assert_eq!(log.stats().unwrap().entries, stored, "nothing half-written");
    // Small writes still fit where there is room.
    log.append(&[rec("p", 9999)]).unwrap();
}

#[test]
fn large_payloads_are_compressed_and_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let log = SqliteLog::open_path(dir.path().join("log.db")).unwrap();
    let payload = format!("{{\"t\":\"{}\"}}", "abc".repeat(10_000)).into_bytes();
    let r = Record {
        payload: payload.clone(),
        ..rec("p", 0)
    };
    log.append(&[r]).unwrap();
    assert!(log.stats().unwrap().bytes < payload.len() as u64 / 4);
    let back = log.range(None, None, None, None, 1).unwrap();
    assert_eq!(back[0].1.payload, payload);
}

#[test]
fn backend_urls_parse() {
    let o = SqliteOptions::from_url("sqlite:///tmp/x/events.db").unwrap();
    assert_eq!(o.path, PathBuf::from("/tmp/x/events.db"));
    assert_eq!(o.durability, Durability::Sync);
    let o = SqliteOptions::from_url("sqlite://rel.db?durability=normal").unwrap();
    assert_eq!(
        (o.path, o.durability),
        (PathBuf::from("rel.db"), Durability::Normal)
    );
    for bad in ["redis://x", "sqlite://", "sqlite:///x.db?durability=maybe"] {
        let err = SqliteOptions::from_url(bad).unwrap_err();
        assert!(err.to_string().contains(bad), "{err}");
    }
}

#[test]
fn ids_of_another_backend_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = SqliteLog::open_path(dir.path().join("log.db")).unwrap();
    log.ensure_group("g", StartAt::Earliest).unwrap();
    let err = log
        .ack("g", &[EntryId::new(1_700_000_000_000, 3)])
        .unwrap_err();
    assert!(err.to_string().contains("1700000000000-3"), "{err}");
    assert_eq!(EntryId::parse("12-0").unwrap(), EntryId::new(12, 0));
    assert_eq!(EntryId::parse("12").unwrap(), EntryId::new(12, 0));
    assert!(EntryId::parse("x-1").is_err());
}

// ---------------------------------------------------------------- multi-process

/// The environment variable that makes the test binary act as a child process.
const ROLE: &str = "MPM_SHARED_LOG_CHILD_ROLE";

/// Entry point of the child processes: the test binary re-executed with
/// `--exact <this test>` and [`ROLE`] set. Without the variable it does nothing.
#[test]
fn child_process_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let path = PathBuf::from(std::env::var("MPM_LOG_PATH").unwrap());
    let arg = |k: &str| std::env::var(k).unwrap_or_default();
    let log = SqliteLog::open_path(&path).unwrap();
    match role.as_str() {
        // Append COUNT records as PUBLISHER in batches of 1..=4; print each id.
        // COUNT 0: append until killed.
        "append" => {
            let publisher = arg("PUBLISHER");
            let count: u64 = arg("COUNT").parse().unwrap();
            let mut n = 0u64;
            let mut size = 1u64;
            while count == 0 || n < count {
                let end = if count == 0 {
                    n + size
                } else {
                    (n + size).min(count)
                };
                let recs: Vec<Record> = (n..end).map(|i| rec(&publisher, i)).collect();
                let ids = log.append(&recs).unwrap();
                for (r, id) in recs.iter().zip(ids) {
                    println!("CHILD appended {id} {}", r.event_id);
                }
                n = end;
                size = size % 4 + 1;
            }
            println!("CHILD done");
        }
        // Claim a batch of MAX for group GROUP, print the ids, then hang (to be killed).
        "claim" => {
            let group = arg("GROUP");
            log.ensure_group(&group, StartAt::Earliest).unwrap();
            let max: usize = arg("MAX").parse().unwrap();
            let got = log
                .read(
                    &group,
                    &new_instance_id(),
                    max,
                    Some(Duration::from_secs(10)),
                )
                .unwrap();
            let ids: Vec<String> = got.iter().map(|e| e.id.to_string()).collect();
            println!("CHILD claimed {}", ids.join(" "));
            loop {
                std::thread::park();
            }
        }
        // Say it is about to block, then block on a read and print what arrived.
        "wait_one" => {
            let group = arg("GROUP");
            log.ensure_group(&group, StartAt::Latest).unwrap();
            println!("CHILD ready");
            let got = log
                .read(&group, "waiter", 10, Some(Duration::from_secs(20)))
                .unwrap();
            for e in got {
                println!("CHILD got {} {}", e.id, e.record.event_id);
            }
            println!("CHILD done");
        }
        // Consume group GROUP and print each entry's publish-to-consume latency (µs)
        // until COUNT arrived.
        "latency" => {
            let group = arg("GROUP");
            let count: usize = arg("COUNT").parse().unwrap();
            log.ensure_group(&group, StartAt::Latest).unwrap();
            println!("CHILD ready");
            let mut n = 0;
            while n < count {
                let got = log
                    .read(&group, "lat", 256, Some(Duration::from_secs(20)))
                    .unwrap();
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_micros() as i64;
                let ids: Vec<EntryId> = got.iter().map(|e| e.id).collect();
                for e in &got {
                    println!("CHILD lat {}", now - e.record.timestamp_us);
                }
                log.ack(&group, &ids).unwrap();
                n += got.len();
            }
            println!("CHILD done");
        }
        // One GroupReader instance of GROUP: ack and print every entry until the group
        // has handled entry TOTAL.
        "consume" => {
            use crate::backend::reader::{GroupReader, ReaderOptions};
            let group = arg("GROUP");
            let total: u64 = arg("TOTAL").parse().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            let reader = GroupReader::start(
                Arc::new(log),
                ReaderOptions {
                    batch: 8,
                    poll: Duration::from_millis(20),
                    ..ReaderOptions::new(group)
                },
                move |b| tx.send(b).unwrap(),
            )
            .unwrap();
            println!("CHILD ready");
            let target = Some(EntryId::new(total, 0));
            while !reader.caught_up(target).unwrap() {
                if let Ok(b) = rx.recv_timeout(Duration::from_millis(20)) {
                    for e in &b {
                        println!("CHILD got {}", e.record.event_id);
                    }
                    reader.ack(&b.iter().map(|e| e.id).collect::<Vec<_>>());
                }
            }
            reader.stop().unwrap();
            println!("CHILD done");
        }
        other => panic!("unknown child role {other}"),
    }
    std::process::exit(0);
}

/// A child process that is killed if the test fails before it ends.
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Kid {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Kid {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

fn spawn_child(path: &Path, role: &str, env: &[(&str, String)]) -> Kid {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        "backend::sqlite::tests::child_process_entry",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(ROLE, role)
    .env("MPM_LOG_PATH", path)
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Kid(cmd.spawn().unwrap())
}

/// A child's `CHILD ...` lines, read on a thread, so the test can wait for one with a
/// timeout.
struct Lines {
    rx: std::sync::mpsc::Receiver<String>,
}

impl Lines {
    fn of(child: &mut Kid) -> Lines {
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                // NOTE: the test harness prints "test <name> ... " without a newline
                // before the child's first line, so look for the marker anywhere.
                if let Some(at) = line.find("CHILD ") {
                    if tx.send(line[at + 6..].to_string()).is_err() {
                        break;
                    }
                }
            }
        });
        Lines { rx }
    }

    /// The next line, or None when the child closed its stdout; panics at `timeout`.
    fn next(&self, timeout: Duration) -> Option<String> {
        match self.rx.recv_timeout(timeout) {
            Ok(l) => Some(l),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => None,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("no line from the child within {timeout:?}")
            }
        }
    }

    /// Every remaining line, until the child's stdout closes.
    fn rest(&self) -> Vec<String> {
        let mut v = Vec::new();
        while let Some(l) = self.next(Duration::from_secs(60)) {
            v.push(l);
        }
        v
    }
}

fn appended(lines: &[String]) -> Vec<(EntryId, String)> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("appended "))
        .map(|l| {
            let (id, ev) = l.split_once(' ').unwrap();
            (EntryId::parse(id).unwrap(), ev.to_string())
        })
        .collect()
}

#[test]
fn concurrent_appender_processes_all_present_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    SqliteLog::open_path(&path).unwrap(); // create it first: schema race tested below
    const CHILDREN: usize = 4;
    const EACH: u64 = 150;
    let mut children: Vec<(Kid, Lines)> = (0..CHILDREN)
        .map(|i| {
            let mut c = spawn_child(
                &path,
                "append",
                &[
                    ("PUBLISHER", format!("proc{i}")),
                    ("COUNT", EACH.to_string()),
                ],
            );
            let l = Lines::of(&mut c);
            (c, l)
        })
        .collect();
    let mut printed = Vec::new();
    for (c, l) in children.iter_mut() {
        let lines = l.rest();
        assert_eq!(lines.last().map(String::as_str), Some("done"));
        printed.extend(appended(&lines));
        assert!(c.wait().unwrap().success());
    }
    assert_eq!(printed.len(), CHILDREN * EACH as usize);
    let log = SqliteLog::open_path(&path).unwrap();
    let all = log.range(None, None, None, None, 100_000).unwrap();
    assert_eq!(all.len(), CHILDREN * EACH as usize);
    let ids: HashSet<EntryId> = all.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), all.len(), "ids unique");
    let by_id: HashMap<EntryId, &Record> = all.iter().map(|(i, r)| (*i, r)).collect();
    for (id, ev) in &printed {
        assert_eq!(
            &by_id[id].event_id, ev,
            "entry {id} is what the child appended"
        );
    }
    // Per publisher, log order is append order.
    let mut last: HashMap<&str, u64> = HashMap::new();
    for (_, r) in &all {
        if let Some(p) = last.insert(&r.publisher, r.publisher_seq) {
            assert_eq!(r.publisher_seq, p + 1);
        }
    }
}

#[test]
fn processes_creating_a_new_log_at_once_agree_on_one_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh.db");
    let mut children: Vec<(Kid, Lines)> = (0..3)
        .map(|i| {
            let mut c = spawn_child(
                &path,
                "append",
                &[("PUBLISHER", format!("p{i}")), ("COUNT", "5".into())],
            );
            let l = Lines::of(&mut c);
            (c, l)
        })
        .collect();
    for (c, l) in children.iter_mut() {
        l.rest();
        assert!(c.wait().unwrap().success());
    }
    let log = SqliteLog::open_path(&path).unwrap();
    assert_eq!(log.stats().unwrap().entries, 15);
}

#[test]
fn claims_of_a_killed_process_are_redelivered_after_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let log = SqliteLog::open_path(&path).unwrap();
    log.ensure_group("g", StartAt::Earliest).unwrap();
    let ids = log
        .append(&(0..20).map(|i| rec("p", i)).collect::<Vec<_>>())
        .unwrap();
    let mut child = spawn_child(
        &path,
        "claim",
        &[("GROUP", "g".into()), ("MAX", "8".into())],
    );
    let lines = Lines::of(&mut child);
    let line = lines.next(Duration::from_secs(60)).expect("child claimed");
    let claimed: Vec<EntryId> = line
        .strip_prefix("claimed ")
        .unwrap()
        .split(' ')
        .map(|s| EntryId::parse(s).unwrap())
        .collect();
    assert_eq!(claimed, ids[..8]);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    // Another instance: the rest arrive at once, the dead one's after its lease.
    let me = "survivor";
    let lease = Duration::from_millis(400);
    let fresh = log.read("g", me, 100, None).unwrap();
    assert_eq!(fresh.iter().map(|e| e.id).collect::<Vec<_>>(), ids[8..]);
    let fresh_ids: Vec<EntryId> = fresh.iter().map(|e| e.id).collect();
    assert_eq!(log.ack("g", &fresh_ids).unwrap(), 12);
    let mut back = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while back.len() < claimed.len() {
        assert!(Instant::now() < deadline, "claims never expired");
        back.extend(log.claim_expired("g", me, lease, 100).unwrap());
        if back.is_empty() {
            // Nothing yet: wait on the (blocking) read as the bus's reader would.
            assert!(log
                .read("g", me, 1, Some(Duration::from_millis(50)))
                .unwrap()
                .is_empty());
        }
    }
    assert_eq!(back.iter().map(|e| e.id).collect::<Vec<_>>(), claimed);
    assert!(back.iter().all(|e| e.deliveries == 2));
    let back_ids: Vec<EntryId> = back.iter().map(|e| e.id).collect();
    assert_eq!(log.ack("g", &back_ids).unwrap(), 8, "none lost");
    assert_eq!(log.group_stats("g").unwrap().pending, 0);
}

#[test]
fn entries_of_a_publisher_killed_after_append_returned_are_present() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    SqliteLog::open_path(&path).unwrap();
    let mut child = spawn_child(
        &path,
        "append",
        &[("PUBLISHER", "victim".into()), ("COUNT", "0".into())],
    );
    let lines = Lines::of(&mut child);
    let mut seen = Vec::new();
    while seen.len() < 40 {
        seen.push(lines.next(Duration::from_secs(60)).expect("child appends"));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    seen.extend(lines.rest());
    let acknowledged = appended(&seen);
    assert!(acknowledged.len() >= 40);
    let log = SqliteLog::open_path(&path).unwrap();
    let all: HashMap<EntryId, Record> = log
        .range(None, None, None, None, 1_000_000)
        .unwrap()
        .into_iter()
        .collect();
    for (id, ev) in &acknowledged {
        assert_eq!(
            &all.get(id).expect("acknowledged entry present").event_id,
            ev
        );
    }
    // Nothing beyond what the child could have appended, and no torn batch: the log
    // holds a prefix of the publisher's sequence.
    let mut seqs: Vec<u64> = all.values().map(|r| r.publisher_seq).collect();
    seqs.sort_unstable();
    assert!(seqs.iter().enumerate().all(|(i, s)| *s == i as u64));
}

#[test]
fn two_names_by_three_consumer_processes_fan_out_and_share_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let log = SqliteLog::open_path(&path).unwrap();
    const TOTAL: u64 = 300;
    let mut kids: Vec<(String, Kid, Lines)> = Vec::new();
    for group in ["relay", "audit"] {
        for _ in 0..3 {
            let mut c = spawn_child(
                &path,
                "consume",
                &[("GROUP", group.to_string()), ("TOTAL", TOTAL.to_string())],
            );
            let l = Lines::of(&mut c);
            assert_eq!(l.next(Duration::from_secs(60)).as_deref(), Some("ready"));
            kids.push((group.to_string(), c, l));
        }
    }
    // Published while they run, in small batches.
    for b in 0..(TOTAL / 10) {
        log.append(
            &(b * 10..b * 10 + 10)
                .map(|i| rec("pub", i))
                .collect::<Vec<_>>(),
        )
        .unwrap();
    }
    let mut per_group: HashMap<String, Vec<String>> = HashMap::new();
    for (group, c, l) in kids.iter_mut() {
        let lines = l.rest();
        assert_eq!(lines.last().map(String::as_str), Some("done"));
        per_group.entry(group.clone()).or_default().extend(
            lines
                .iter()
                .filter_map(|x| x.strip_prefix("got ").map(str::to_string)),
        );
        assert!(c.wait().unwrap().success());
    }
    for (group, got) in per_group {
        let unique: HashSet<&String> = got.iter().collect();
        assert_eq!(
            got.len(),
            TOTAL as usize,
            "group {group}: each event to one instance"
        );
        assert_eq!(unique.len(), TOTAL as usize, "group {group}: all of them");
    }
}

#[test]
fn a_reader_in_another_process_wakes_on_append() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let log = SqliteLog::open_path(&path).unwrap();
    let mut child = spawn_child(&path, "wait_one", &[("GROUP", "w".into())]);
    let lines = Lines::of(&mut child);
    assert_eq!(
        lines.next(Duration::from_secs(60)).as_deref(),
        Some("ready")
    );
    let ids = log.append(&[rec("p", 0)]).unwrap();
    let got = lines.next(Duration::from_secs(15)).expect("child got it");
    assert_eq!(got, format!("got {} p-0", ids[0]));
    assert_eq!(lines.next(Duration::from_secs(15)).as_deref(), Some("done"));
    assert!(child.wait().unwrap().success());
}

/// Not a test: rough numbers for docs/backends.md and the bus work (W11). Run with
/// `cargo test --no-default-features --release measure_ -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_throughput_and_cross_process_latency() {
    use crate::backend::appender::Appender;
    use crate::backend::reader::{GroupReader, ReaderOptions};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let log: Arc<dyn SharedLog> = Arc::new(SqliteLog::open_path(&path).unwrap());
    log.ensure_group("r", StartAt::Earliest).unwrap();

    // Single-record submissions from 4 threads through the group-commit appender.
    let app = Arc::new(Appender::start(log.clone(), 65_536).unwrap());
    let t0 = Instant::now();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let app = app.clone();
            std::thread::spawn(move || {
                let (tx, rx) = std::sync::mpsc::channel();
                for i in 0..5000 {
                    let tx = tx.clone();
                    app.submit(
                        vec![rec(&format!("t{t}"), i)],
                        Box::new(move |r| tx.send(r.is_ok()).unwrap()),
                    )
                    .unwrap();
                }
                (0..5000).filter(|_| rx.recv().unwrap()).count()
            })
        })
        .collect();
    let ok: usize = threads.into_iter().map(|h| h.join().unwrap()).sum();
    let dt = t0.elapsed();
    eprintln!(
        "appender, sync, 4 threads x 5000 single records: {:.0}/s ({} commits)",
        ok as f64 / dt.as_secs_f64(),
        app.stats().commits
    );

    let t0 = Instant::now();
    for b in 0..20 {
        let recs: Vec<Record> = (0..1000).map(|i| rec("batch", b * 1000 + i)).collect();
        log.append(&recs).unwrap();
    }
    eprintln!(
        "append batches of 1000, sync: {:.0}/s",
        20_000.0 / t0.elapsed().as_secs_f64()
    );

    let total = log.stats().unwrap().entries as usize;
    let (tx, rx) = std::sync::mpsc::channel();
    let t0 = Instant::now();
    let reader = GroupReader::start(log.clone(), ReaderOptions::new("r"), move |b| {
        tx.send(b).unwrap()
    })
    .unwrap();
    let mut n = 0;
    while n < total {
        let b = rx.recv().unwrap();
        n += b.len();
        reader.ack(&b.iter().map(|e| e.id).collect::<Vec<_>>());
    }
    let last = log.stats().unwrap().last;
    while !reader.caught_up(last).unwrap() {
        std::thread::sleep(Duration::from_millis(1));
    }
    eprintln!(
        "GroupReader, claim + ack {total}: {:.0}/s",
        total as f64 / t0.elapsed().as_secs_f64()
    );
    reader.stop().unwrap();

    // Publish-to-consume latency to a reader in another process, one event every 2 ms.
    let mut child = spawn_child(
        &path,
        "latency",
        &[("GROUP", "lat".into()), ("COUNT", "500".into())],
    );
    let lines = Lines::of(&mut child);
    assert_eq!(
        lines.next(Duration::from_secs(60)).as_deref(),
        Some("ready")
    );
    for i in 0..500 {
        app.append(vec![rec("lat", i)]).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut lat: Vec<i64> = lines
        .rest()
        .iter()
        .filter_map(|l| l.strip_prefix("lat ").map(|v| v.parse().unwrap()))
        .collect();
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1000.0;
    eprintln!(
        "cross-process publish-to-consume, 500 events 2 ms apart: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
}

#[test]
fn has_expired_sees_released_and_expired_claims_by_a_read() {
    let dir = tempfile::tempdir().unwrap();
    let log = SqliteLog::open_path(dir.path().join("log.db")).unwrap();
    log.ensure_group("g", StartAt::Earliest).unwrap();
    let long = Duration::from_secs(60);
    assert!(!log.has_expired("g", long).unwrap(), "nothing pending");
    log.append(&(0..3).map(|i| rec("p", i)).collect::<Vec<_>>())
        .unwrap();
    let got = log.read("g", "a", 3, None).unwrap();
    assert!(!log.has_expired("g", long).unwrap(), "fresh claims");
    assert!(log.has_expired("g", Duration::ZERO).unwrap());
    log.release("g", "a", &[got[0].id]).unwrap();
    assert!(log.has_expired("g", long).unwrap(), "a released claim");
    assert_eq!(log.claim_expired("g", "b", long, 10).unwrap().len(), 1);
    assert!(!log.has_expired("g", long).unwrap(), "taken over");
}

#[test]
fn claims_with_gaps_and_a_vanished_entry_load_and_ack_exactly() {
    // Reads and acks go by runs of consecutive seqs: runs split by gaps, repeated ids
    // and an entry gone from the middle of a run must give exactly what a statement
    // per entry gave.
    let dir = tempfile::tempdir().unwrap();
    let log = SqliteLog::open_path(dir.path().join("log.db")).unwrap();
    log.ensure_group("g", StartAt::Earliest).unwrap();
    let ids = log
        .append(&(0..10).map(|i| rec("p", i)).collect::<Vec<_>>())
        .unwrap();
    let got = log.read("g", "a", 10, None).unwrap();
    let seqs: Vec<u64> = got.iter().map(|e| e.record.publisher_seq).collect();
    assert_eq!(seqs, (0..10).collect::<Vec<_>>(), "one run, in order");
    assert_eq!(got.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
    // Runs [0..=2], [4], [6..=7] (ids of seqs 1-3, 5, 7-8), one of them twice.
    let acked = [ids[0], ids[1], ids[2], ids[4], ids[4], ids[6], ids[7]];
    assert_eq!(
        log.ack("g", &acked).unwrap(),
        6,
        "each pending entry counted once"
    );
    assert_eq!(log.group_stats("g").unwrap().pending, 4);
    assert_eq!(log.ack("g", &acked).unwrap(), 0, "already acknowledged");
    let rest = [ids[3], ids[5], ids[8], ids[9]];
    assert_eq!(log.release("g", "a", &rest).unwrap(), 4);
    // The hard retention cap dropping an entry inside the run [8..=9].
    log.with_conn(|c| {
        c.execute(
            "DELETE FROM log_entries WHERE seq = ?1",
            [ids[8].major as i64],
        )
        .unwrap();
        Ok(())
    })
    .unwrap();
    let again = log
        .claim_expired("g", "b", Duration::from_secs(60), 10)
        .unwrap();
    let seen: Vec<(EntryId, u64, u32)> = again
        .iter()
        .map(|e| (e.id, e.record.publisher_seq, e.deliveries))
        .collect();
    assert_eq!(
        seen,
        vec![(ids[3], 3, 2), (ids[5], 5, 2), (ids[9], 9, 2)],
        "the vanished entry skipped, the rest in order with their delivery counts"
    );
    assert_eq!(log.ack("g", &[ids[3], ids[5], ids[8], ids[9]]).unwrap(), 4);
    assert_eq!(log.group_stats("g").unwrap().pending, 0);
}

// ------------------------------------------------------------- commit durability

/// `PRAGMA synchronous` of the log's connection now (2 FULL, 1 NORMAL).
fn synchronous_of(log: &SqliteLog) -> i64 {
    log.with_conn(|c| Ok(c.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap()))
        .unwrap()
}

#[test]
fn a_sync_log_fsyncs_appends_and_not_claims_or_acks() {
    let dir = tempfile::tempdir().unwrap();
    let log = SqliteLog::open_path(dir.path().join("log.db")).unwrap();
    log.ensure_group("g", StartAt::Earliest).unwrap();
    assert_eq!(synchronous_of(&log), 2);
    log.append(&[rec("p", 0), rec("p", 1)]).unwrap();
    let got = log.read("g", "i", 10, None).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(synchronous_of(&log), 1, "the claim was committed at NORMAL");
    log.ack("g", &[got[0].id]).unwrap();
    assert_eq!(synchronous_of(&log), 1);
    // The next append is fsynced again, and so are dead letters.
    log.append(&[rec("p", 2)]).unwrap();
    assert_eq!(synchronous_of(&log), 2);
    log.ack("g", &[]).unwrap();
    assert_eq!(synchronous_of(&log), 1);
    log.dead_letter("g", got[1].id, "boom", 1).unwrap();
    assert_eq!(synchronous_of(&log), 2);
    assert_eq!(log.dead_letters(Some("g"), 10).unwrap().len(), 1);
    // A `Normal` log never switches.
    let opts = SqliteOptions {
        durability: Durability::Normal,
        ..SqliteOptions::new(dir.path().join("normal.db"))
    };
    let normal = SqliteLog::open(opts).unwrap();
    normal.ensure_group("g", StartAt::Earliest).unwrap();
    normal.append(&[rec("p", 0)]).unwrap();
    let got = normal.read("g", "i", 10, None).unwrap();
    normal.ack("g", &[got[0].id]).unwrap();
    normal.append(&[rec("p", 1)]).unwrap();
    assert_eq!(synchronous_of(&normal), 1);
}
