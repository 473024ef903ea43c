//! Tests of the durable store, on real files in temporary directories.

use super::*;
use std::collections::{BTreeSet, HashSet};
use std::io::{BufRead, BufReader};
use std::time::Instant;

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("mpm-store-test")
        .tempdir()
        .unwrap()
}

fn ev(id: &str, topic: &str, ts: i64) -> StoredEvent {
    StoredEvent {
        seq: 0,
        id: id.to_string(),
        topic: topic.into(),
        event_type: "test".into(),
        source: "unit".into(),
        timestamp_us: ts,
        published_us: ts + 1,
        priority: 2,
        correlation_id: Some(format!("corr-{id}")),
        data_json: format!("{{\"id\":\"{id}\"}}").into_bytes(),
    }
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn all(store: &Store) -> Vec<StoredEvent> {
    store.replay(None, None, &|_| true).unwrap()
}

fn ids(evs: &[StoredEvent]) -> Vec<String> {
    evs.iter().map(|e| e.id.clone()).collect()
}

#[test]
fn append_and_read_back() {
    let dir = tmp();
    let path = dir.path().join("nested/dir/events.db");
    let store = Store::open(StoreOptions::new(&path)).unwrap();
    let s1 = store
        .append(ev("a", "hook.response", 100), names(&["c1"]))
        .unwrap();
    let s2 = store.append(ev("b", "hook.tool", 200), vec![]).unwrap();
    let batch = store
        .append_batch(vec![
            (ev("c", "system.health", 300), vec![]),
            (ev("d", "cli.run", 400), vec![]),
        ])
        .unwrap();
    assert!(s1 < s2 && s2 < batch[0] && batch[0] < batch[1]);
    let got = all(&store);
    assert_eq!(ids(&got), ["a", "b", "c", "d"]);
    let mut want = ev("a", "hook.response", 100);
    want.seq = s1;
    assert_eq!(got[0], want);
    store.close().unwrap();
    assert!(path.exists());

    // Still there after reopening.
    let store = Store::open(StoreOptions::new(&path)).unwrap();
    assert_eq!(ids(&all(&store)), ["a", "b", "c", "d"]);
    assert!(store.append(ev("e", "x", 1), vec![]).unwrap() > batch[1]);
}

#[test]
fn invalid_priority_is_rejected() {
    let dir = tmp();
    let store = Store::open(StoreOptions::new(dir.path().join("e.db"))).unwrap();
    let mut e = ev("a", "t", 1);
    e.priority = 9;
    assert!(matches!(
        store.append(e, vec![]),
        Err(StorageError::InvalidEvent(_))
    ));
}

#[test]
fn group_commit_with_concurrent_threads() {
    let dir = tmp();
    let store = Arc::new(Store::open(StoreOptions::new(dir.path().join("e.db"))).unwrap());
    let threads = 8;
    let per = 300;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                (0..per)
                    .map(|i| {
                        store
                            .append(ev(&format!("{t}-{i}"), "hook.x", i), vec![])
                            .unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut seqs = HashSet::new();
    for h in handles {
        for s in h.join().unwrap() {
            assert!(seqs.insert(s), "duplicate seq {s}");
        }
    }
    assert_eq!(seqs.len(), threads * per as usize);
    assert_eq!(
        store.stats().unwrap().events,
        (threads * per as usize) as u64
    );
}

#[test]
fn ack_and_unacked() {
    let dir = tmp();
    let path = dir.path().join("e.db");
    let store = Store::open(StoreOptions::new(&path)).unwrap();
    store
        .append(ev("e1", "hook.a", 1), names(&["A", "B"]))
        .unwrap();
    store.append(ev("e2", "hook.b", 2), names(&["B"])).unwrap();
    store.append(ev("e3", "hook.c", 3), names(&["A"])).unwrap();
    store.append(ev("e4", "hook.d", 4), vec![]).unwrap();
    store.ack("e1", "A").unwrap();
    store
        .ack_many(vec![("e3".into(), "A".into()), ("nope".into(), "A".into())])
        .unwrap();
    store.flush().unwrap();

    let un = store.unacked(&names(&["A", "B"])).unwrap();
    let summary: Vec<(String, Vec<String>)> =
        un.iter().map(|(e, c)| (e.id.clone(), c.clone())).collect();
    assert_eq!(
        summary,
        vec![("e1".into(), names(&["B"])), ("e2".into(), names(&["B"]))]
    );
    assert!(store.unacked(&names(&["A"])).unwrap().is_empty());
    assert!(store.unacked(&names(&["Z"])).unwrap().is_empty());
    assert_eq!(un[0].0.data_json, b"{\"id\":\"e1\"}");
    store.close().unwrap();

    // Acks survive a restart.
    let store = Store::open(StoreOptions::new(&path)).unwrap();
    let un = store.unacked(&names(&["A", "B"])).unwrap();
    assert_eq!(
        un.iter().map(|(e, _)| e.id.as_str()).collect::<Vec<_>>(),
        ["e1", "e2"]
    );
    store.ack("e1", "B").unwrap();
    store.ack("e2", "B").unwrap();
    store.flush().unwrap();
    assert!(store.unacked(&names(&["A", "B"])).unwrap().is_empty());
}

#[test]
fn replay_by_window_and_topic() {
    let dir = tmp();
    let store = Store::open(StoreOptions::new(dir.path().join("e.db"))).unwrap();
    // Appended out of timestamp order on purpose: replay orders by timestamp, then seq.
    store
        .append(ev("t30", "hook.tool.use", 30), vec![])
        .unwrap();
    store
        .append(ev("t10", "hook.response", 10), vec![])
        .unwrap();
    store
        .append(ev("t20", "system.health", 20), vec![])
        .unwrap();
    store
        .append(ev("t20b", "hook.response", 20), vec![])
        .unwrap();
    store
        .append(ev("t40", "hook.response", 40), vec![])
        .unwrap();

    assert_eq!(ids(&all(&store)), ["t10", "t20", "t20b", "t30", "t40"]);
    let w = store.replay(Some(20), Some(40), &|_| true).unwrap();
    assert_eq!(ids(&w), ["t20", "t20b", "t30"]);
    let hooks = store
        .replay(None, None, &|t| t.starts_with("hook."))
        .unwrap();
    assert_eq!(ids(&hooks), ["t10", "t20b", "t30", "t40"]);
    let both = store
        .replay(Some(15), None, &|t| t == "hook.response")
        .unwrap();
    assert_eq!(ids(&both), ["t20b", "t40"]);
    assert!(store.replay(Some(41), None, &|_| true).unwrap().is_empty());

    let mut first_two = Vec::new();
    store
        .replay_each(None, None, &|_| true, &mut |e| {
            first_two.push(e.id);
            first_two.len() < 2
        })
        .unwrap();
    assert_eq!(first_two, ["t10", "t20"]);
}

#[test]
fn dead_letters_survive_reopen() {
    let dir = tmp();
    let path = dir.path().join("e.db");
    let store = Store::open(StoreOptions::new(&path)).unwrap();
    let seq = store
        .append(ev("e1", "hook.a", 1), names(&["A", "B"]))
        .unwrap();
    let mut stored = all(&store).remove(0);
    assert_eq!(stored.seq, seq);
    let errs = names(&["boom", "boom again"]);
    let id1 = store.put_dead_letter(&stored, "A", &errs, 3).unwrap();
    stored.seq = 0;
    stored.id = "e-unknown".into();
    let id2 = store.put_dead_letter(&stored, "B", &[], 1).unwrap();
    // The dead-lettered delivery to A is no longer pending; B's still is.
    store.flush().unwrap();
    let un = store.unacked(&names(&["A", "B"])).unwrap();
    assert_eq!(un.len(), 1);
    assert_eq!(un[0].1, names(&["B"]));
    store.close().unwrap();

    let store = Store::open(StoreOptions::new(&path)).unwrap();
    let dls = store.dead_letters().unwrap();
    assert_eq!(dls.len(), 2);
    assert_eq!(dls[0].id, id1);
    assert_eq!(dls[0].event.id, "e1");
    assert_eq!(dls[0].event.seq, seq);
    assert_eq!(dls[0].event.data_json, b"{\"id\":\"e1\"}");
    assert_eq!(dls[0].consumer, "A");
    assert_eq!(dls[0].errors, errs);
    assert_eq!(dls[0].attempts, 3);
    assert!(dls[0].failed_us > 0);
    assert_eq!(dls[1].id, id2);
    assert_eq!(dls[1].event.seq, 0);
    assert_eq!(store.remove_dead_letters(&[id1, 999]).unwrap(), 1);
    assert_eq!(
        store
            .dead_letters()
            .unwrap()
            .iter()
            .map(|d| d.id)
            .collect::<Vec<_>>(),
        [id2]
    );
    store.close().unwrap();
    let store = Store::open(StoreOptions::new(&path)).unwrap();
    assert_eq!(store.dead_letters().unwrap().len(), 1);
}

#[test]
fn retention_by_age_deletes_exactly_the_old_events() {
    let dir = tmp();
    let path = dir.path().join("e.db");
    let mut opts = StoreOptions::new(&path);
    opts.max_age = Some(Duration::from_secs(3600));
    opts.retention_interval = None;
    let store = Store::open(opts).unwrap();
    let now = now_us();
    let hour = 3_600_000_000i64;
    store
        .append(ev("old1", "a", now - 3 * hour), names(&["A"]))
        .unwrap();
    store
        .append(ev("new1", "a", now - hour / 2), names(&["A"]))
        .unwrap();
    store
        .append(ev("old2", "a", now - hour - 60_000_000), names(&["A"]))
        .unwrap();
    store.append(ev("new2", "a", now), names(&["A"])).unwrap();
    store.append(ev("future", "a", now + hour), vec![]).unwrap();
    let dl_ev = all(&store).remove(0);
    store.put_dead_letter(&dl_ev, "B", &[], 1).unwrap();

    let report = store.apply_retention().unwrap();
    assert_eq!(report.deleted_by_age, 2);
    assert_eq!(report.deleted_by_size, 0);
    assert!(report.bytes_after < report.bytes_before);
    assert_eq!(ids(&all(&store)), ["new1", "new2", "future"]);
    // Pending deliveries of deleted events are gone, the others stay.
    let un = store.unacked(&names(&["A"])).unwrap();
    assert_eq!(
        un.iter().map(|(e, _)| e.id.as_str()).collect::<Vec<_>>(),
        ["new1", "new2"]
    );
    // Dead letters are not subject to retention.
    assert_eq!(store.dead_letters().unwrap().len(), 1);
    let st = store.stats().unwrap();
    assert_eq!(st.total_bytes, report.bytes_after);
    assert_eq!(st.pending_deliveries, 2);
    // Idempotent.
    assert_eq!(store.apply_retention().unwrap().deleted_by_age, 0);
    assert_eq!(all(&store).len(), 3);
}

#[test]
fn retention_by_size_deletes_oldest_first_just_enough() {
    let dir = tmp();
    let path = dir.path().join("e.db");
    let mut opts = StoreOptions::new(&path);
    opts.retention_interval = None;
    // Find the size of one row (all rows below have the same shape).
    let store = Store::open(opts.clone()).unwrap();
    store.append(ev("evX", "t", 0), vec![]).unwrap();
    let row = store.stats().unwrap().total_bytes;
    store.close().unwrap();
    std::fs::remove_file(&path).unwrap();

    // Ten equal rows; keep at most 3.5 rows' worth: the 7 oldest (by timestamp) go.
    opts.max_bytes = Some(row * 7 / 2);
    let store = Store::open(opts).unwrap();
    let order = [5, 2, 9, 0, 7, 1, 8, 3, 6, 4];
    for ts in order {
        store
            .append(ev(&format!("ev{ts}"), "t", ts as i64 + 1000), names(&["A"]))
            .unwrap();
    }
    assert_eq!(store.stats().unwrap().total_bytes, row * 10);
    let report = store.apply_retention().unwrap();
    assert_eq!(report.deleted_by_size, 7);
    assert_eq!(report.deleted_by_age, 0);
    assert_eq!(report.bytes_after, row * 3);
    assert_eq!(ids(&all(&store)), ["ev7", "ev8", "ev9"]);
    assert_eq!(store.stats().unwrap().pending_deliveries, 3);
    assert_eq!(store.apply_retention().unwrap().deleted_by_size, 0);
}

#[test]
fn background_retention_runs_by_itself() {
    let dir = tmp();
    let mut opts = StoreOptions::new(dir.path().join("e.db"));
    opts.max_age = Some(Duration::from_secs(60));
    opts.retention_interval = Some(Duration::from_millis(50));
    let store = Store::open(opts).unwrap();
    store
        .append(ev("old", "t", now_us() - 120_000_000), vec![])
        .unwrap();
    store.append(ev("new", "t", now_us()), vec![]).unwrap();
    let t0 = Instant::now();
    while all(&store).len() > 1 && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(ids(&all(&store)), ["new"]);
}

#[test]
fn compression_round_trip() {
    let dir = tmp();
    let path = dir.path().join("e.db");
    let mut opts = StoreOptions::new(&path);
    opts.compress_threshold = 1024;
    let store = Store::open(opts).unwrap();
    let mut big = ev("big", "t", 1);
    big.data_json = format!("{{\"text\":\"{}\"}}", "hello world ".repeat(2000)).into_bytes();
    let mut small = ev("small", "t", 2);
    small.data_json = b"{\"x\":[1,2,3]}".to_vec();
    store.append(big.clone(), names(&["A"])).unwrap();
    store.append(small.clone(), vec![]).unwrap();
    let got = all(&store);
    assert_eq!(got[0].data_json, big.data_json);
    assert_eq!(got[1].data_json, small.data_json);
    assert_eq!(
        store.unacked(&names(&["A"])).unwrap()[0].0.data_json,
        big.data_json
    );
    store.put_dead_letter(&got[0], "A", &[], 1).unwrap();
    assert_eq!(
        store.dead_letters().unwrap()[0].event.data_json,
        big.data_json
    );
    store.close().unwrap();

    // On disk: codec 1 and much smaller for the big one, plain JSON for the small one.
    let conn = Connection::open(&path).unwrap();
    let rows: Vec<(String, i64, i64)> = conn
        .prepare("SELECT id, codec, length(data) FROM events ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(rows[0].0, "big");
    assert_eq!(rows[0].1, Codec::Lz4 as i64);
    assert!((rows[0].2 as usize) < big.data_json.len() / 4);
    assert_eq!(rows[1].1, Codec::None as i64);
    // The readable view shows plain payloads as text.
    let txt: String = conn
        .query_row(
            "SELECT data_json FROM events_readable WHERE id = 'small'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(txt, "{\"x\":[1,2,3]}");
}

#[test]
fn garbage_file_gives_corrupt_error_naming_the_path() {
    let dir = tmp();
    let path = dir.path().join("events.db");
    let garbage: Vec<u8> = (0..10_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(&path, &garbage).unwrap();
    let err = Store::open(StoreOptions::new(&path)).unwrap_err();
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("Move the file aside"), "{msg}");
    // Never touched.
    assert_eq!(std::fs::read(&path).unwrap(), garbage);
}

#[test]
fn damaged_store_gives_corrupt_error() {
    let dir = tmp();
    let path = dir.path().join("events.db");
    let store = Store::open(StoreOptions::new(&path)).unwrap();
    let evs = (0..2000)
        .map(|i| (ev(&format!("e{i}"), "t", i), vec![]))
        .collect();
    store.append_batch(evs).unwrap();
    store.close().unwrap();
    // Overwrite a few pages in the middle with garbage, keeping the header intact.
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 64 * 1024);
    for b in &mut bytes[16 * 1024..40 * 1024] {
        *b = 0xA5;
    }
    std::fs::write(&path, &bytes).unwrap();
    let err = Store::open(StoreOptions::new(&path)).unwrap_err();
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains(&path.display().to_string()));
}

#[test]
fn foreign_sqlite_database_is_refused() {
    let dir = tmp();
    let path = dir.path().join("other.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
    }
    let err = Store::open(StoreOptions::new(&path)).unwrap_err();
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("not an mpm-events store"));
    let conn = Connection::open(&path).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
}

#[test]
fn full_store_fails_cleanly_and_keeps_earlier_rows() {
    let dir = tmp();
    let path = dir.path().join("e.db");
    let mut opts = StoreOptions::new(&path);
    opts.hard_limit_bytes = Some(256 * 1024);
    opts.compress_threshold = usize::MAX;
    let store = Store::open(opts).unwrap();
    let mut ok = Vec::new();
    let mut full = None;
    for i in 0..1000 {
        let mut e = ev(&format!("e{i}"), "t", i);
        e.data_json = format!("{{\"pad\":\"{}\"}}", "x".repeat(2000)).into_bytes();
        match store.append(e, names(&["A"])) {
            Ok(_) => ok.push(format!("e{i}")),
            Err(err) => {
                full = Some(err);
                break;
            }
        }
    }
    let err = full.expect("the size limit was never hit");
    assert!(matches!(err, StorageError::Full { .. }), "{err:?}");
    assert!(err.to_string().contains(&path.display().to_string()));
    assert!(ok.len() > 10);
    // A batch fails as a whole; small writes that fit may still go through.
    let big_batch = (0..50)
        .map(|i| {
            let mut e = ev(&format!("b{i}"), "t", i);
            e.data_json = vec![b'1'; 4000];
            (e, vec![])
        })
        .collect();
    assert!(store.append_batch(big_batch).is_err());
    assert_eq!(ids(&all(&store)), ok);
    store.close().unwrap();

    // Reopen without the limit: intact, and writable again.
    let store = Store::open(StoreOptions::new(&path)).unwrap();
    assert_eq!(ids(&all(&store)), ok);
    assert_eq!(store.unacked(&names(&["A"])).unwrap().len(), ok.len());
    store.append(ev("after", "t", 5000), vec![]).unwrap();
}

#[test]
fn async_mode_writes_everything_by_close() {
    let dir = tmp();
    let path = dir.path().join("e.db");
    let mut opts = StoreOptions::new(&path);
    opts.durability = Durability::Async {
        flush_interval: Duration::from_millis(20),
    };
    let store = Store::open(opts.clone()).unwrap();
    for i in 0..500 {
        store
            .append_async(ev(&format!("e{i}"), "t", i), names(&["A"]))
            .unwrap();
    }
    let seq = store.append(ev("sync-in-async", "t", 600), vec![]).unwrap();
    assert!(seq > 0);
    store.flush().unwrap();
    assert_eq!(all(&store).len(), 501);
    for i in 500..1000 {
        store
            .append_async(ev(&format!("e{i}"), "t", i), vec![])
            .unwrap();
    }
    store.close().unwrap();
    let store = Store::open(opts).unwrap();
    assert_eq!(all(&store).len(), 1001);
    assert_eq!(store.stats().unwrap().async_errors, 0);
}

#[test]
fn append_deferred_and_with_callback() {
    let dir = tmp();
    let store = Store::open(StoreOptions::new(dir.path().join("e.db"))).unwrap();
    let rxs: Vec<_> = (0..100)
        .map(|i| {
            store
                .append_deferred(ev(&format!("e{i}"), "t", i), vec![])
                .unwrap()
        })
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let seqs: Vec<i64> = rt.block_on(async {
        let mut v = Vec::new();
        for rx in rxs {
            v.push(rx.await.unwrap().unwrap());
        }
        v
    });
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    let (tx, rx) = std::sync::mpsc::channel();
    store
        .append_with(ev("cb", "t", 1), vec![], move |r| tx.send(r).unwrap())
        .unwrap();
    assert!(rx.recv().unwrap().unwrap() > seqs[99]);
}

#[test]
fn closed_store_answers_closed() {
    let dir = tmp();
    let mut store = Store::open(StoreOptions::new(dir.path().join("e.db"))).unwrap();
    store.shutdown().unwrap();
    assert!(matches!(
        store.append(ev("a", "t", 1), vec![]),
        Err(StorageError::Closed)
    ));
    assert!(matches!(store.ack("a", "A"), Err(StorageError::Closed)));
}

#[test]
fn reopen_after_drop_without_close_keeps_acknowledged_appends() {
    let dir = tmp();
    let path = dir.path().join("e.db");
    let store = Store::open(StoreOptions::new(&path)).unwrap();
    let mut acked = Vec::new();
    for i in 0..200 {
        store
            .append(ev(&format!("e{i}"), "t", i), names(&["A"]))
            .unwrap();
        acked.push(format!("e{i}"));
    }
    drop(store);
    let store = Store::open(StoreOptions::new(&path)).unwrap();
    assert_eq!(ids(&all(&store)), acked);
}

/// Environment variable naming the store path for [`crash_child_appender`].
const CRASH_ENV: &str = "MPM_STORE_CRASH_CHILD";

/// Child process of [`sigkill_keeps_every_acknowledged_append`]: appends from 4 threads
/// in Sync mode and prints the id of each append that returned Ok, until killed.
#[test]
#[ignore = "child process of sigkill_keeps_every_acknowledged_append"]
fn crash_child_appender() {
    let Ok(path) = std::env::var(CRASH_ENV) else {
        return;
    };
    let store = Arc::new(Store::open(StoreOptions::new(path)).unwrap());
    let run = format!("{}", std::process::id());
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            let run = run.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut i = 0u64;
                // Bounded in case the parent never kills us.
                while start.elapsed() < Duration::from_secs(60) {
                    let id = format!("{run}-{t}-{i}");
                    store
                        .append(ev(&id, "crash.test", i as i64), names(&["A"]))
                        .unwrap();
                    println!("ACK {id}");
                    i += 1;
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn sigkill_keeps_every_acknowledged_append() {
    let dir = tmp();
    let path = dir.path().join("crash.db");
    let exe = std::env::current_exe().unwrap();
    let mut rng = fastrand::Rng::with_seed(42);
    let mut all_acked = BTreeSet::new();
    for round in 0..4 {
        let kill_after = rng.usize(50..3000);
        let mut child = std::process::Command::new(&exe)
            .args([
                "storage::tests::crash_child_appender",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .env(CRASH_ENV, &path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut acked = 0;
        for line in out.lines() {
            let Ok(line) = line else { break };
            if let Some(id) = line.strip_prefix("ACK ") {
                all_acked.insert(id.to_string());
                acked += 1;
                if acked >= kill_after {
                    child.kill().unwrap(); // SIGKILL on unix
                    break;
                }
            }
        }
        child.wait().unwrap();
        assert!(
            acked >= kill_after,
            "round {round}: child stopped after {acked} acks"
        );

        let store = Store::open(StoreOptions::new(&path)).unwrap();
        let stored: HashSet<String> = all(&store).into_iter().map(|e| e.id).collect();
        let lost: Vec<_> = all_acked
            .iter()
            .filter(|id| !stored.contains(*id))
            .collect();
        assert!(
            lost.is_empty(),
            "round {round}: lost acknowledged events {lost:?}"
        );
        // Every unacked delivery is there for redelivery too.
        let pending: HashSet<String> = store
            .unacked(&names(&["A"]))
            .unwrap()
            .into_iter()
            .map(|(e, _)| e.id)
            .collect();
        assert!(all_acked.iter().all(|id| pending.contains(id)));
        store.close().unwrap();
    }
}

/// Throughput of Sync-mode appends from 8 threads. Run in release mode:
/// `cargo test --release --no-default-features storage::tests::bench -- --ignored --nocapture`
#[test]
#[ignore = "benchmark"]
fn bench_sync_append_8_threads() {
    let dir = tmp();
    let n_threads = 8;
    let per_thread = 20_000;

    // (a) Blocking append: each thread has one event in flight.
    let store = Arc::new(Store::open(StoreOptions::new(dir.path().join("a.db"))).unwrap());
    let t0 = Instant::now();
    let hs: Vec<_> = (0..n_threads)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..per_thread / 4 {
                    store
                        .append(
                            ev(&format!("{t}-{i}"), "hook.tool", i as i64),
                            names(&["A"]),
                        )
                        .unwrap();
                }
            })
        })
        .collect();
    hs.into_iter().for_each(|h| h.join().unwrap());
    let n = n_threads * per_thread / 4;
    let dt = t0.elapsed().as_secs_f64();
    println!(
        "sync append, 8 threads, 1 in flight each: {n} events in {dt:.2}s = {:.0} events/s",
        n as f64 / dt
    );

    // (b) Pipelined: each thread keeps up to 256 appends in flight (what an async
    // publisher with many concurrent publishes does), waiting for each to be durable.
    let store = Arc::new(Store::open(StoreOptions::new(dir.path().join("b.db"))).unwrap());
    let t0 = Instant::now();
    let hs: Vec<_> = (0..n_threads)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let (tx, rx) = std::sync::mpsc::channel::<Result<i64>>();
                let mut in_flight = 0;
                for i in 0..per_thread {
                    if in_flight >= 256 {
                        rx.recv().unwrap().unwrap();
                        in_flight -= 1;
                    }
                    let tx = tx.clone();
                    store
                        .append_with(
                            ev(&format!("{t}-{i}"), "hook.tool", i as i64),
                            names(&["A"]),
                            move |r| {
                                let _ = tx.send(r);
                            },
                        )
                        .unwrap();
                    in_flight += 1;
                }
                for _ in 0..in_flight {
                    rx.recv().unwrap().unwrap();
                }
            })
        })
        .collect();
    hs.into_iter().for_each(|h| h.join().unwrap());
    let n = n_threads * per_thread;
    let dt = t0.elapsed().as_secs_f64();
    println!(
        "sync append, 8 threads, 256 in flight each: {n} events in {dt:.2}s = {:.0} events/s",
        n as f64 / dt
    );
    assert_eq!(store.stats().unwrap().events, n as u64);
}

#[test]
fn panicking_callback_does_not_stop_the_writer() {
    let dir = tmp();
    let store = Store::open(StoreOptions::new(dir.path().join("e.db"))).unwrap();
    store
        .append_with(ev("a", "t", 1), vec![], |_| panic!("callback bug"))
        .unwrap();
    assert!(store.append(ev("b", "t", 2), vec![]).unwrap() > 0);
    assert_eq!(ids(&all(&store)), ["a", "b"]);
}

#[test]
fn unacked_with_many_consumer_names() {
    let dir = tmp();
    let store = Store::open(StoreOptions::new(dir.path().join("e.db"))).unwrap();
    let consumers: Vec<String> = (0..1200).map(|i| format!("c{i:04}")).collect();
    store.append(ev("e1", "t", 1), consumers.clone()).unwrap();
    store
        .append(ev("e2", "t", 2), names(&["c0001", "c1100"]))
        .unwrap();
    store.flush().unwrap();
    let un = store.unacked(&consumers).unwrap();
    assert_eq!(un.len(), 2);
    assert_eq!(un[0].0.id, "e1");
    assert_eq!(un[0].1, consumers);
    assert_eq!(un[1].1, names(&["c0001", "c1100"]));
}

fn pending_ids(store: &Store, consumers: &[&str]) -> Vec<(String, Vec<String>)> {
    store
        .unacked(&names(consumers))
        .unwrap()
        .into_iter()
        .map(|(e, c)| (e.id, c))
        .collect()
}

#[test]
fn acks_before_and_after_a_checkpoint() {
    let dir = tmp();
    let path = dir.path().join("e.db");
    let store = Store::open(StoreOptions::new(&path)).unwrap();
    let s1 = store.append(ev("e1", "t", 1), names(&["A", "B"])).unwrap();
    let s2 = store.append(ev("e2", "t", 2), names(&["A"])).unwrap();
    // Acked while the deliveries are only in the writer's memory.
    store.ack_keys(vec![(AckKey::Seq(s1), "A".into())]).unwrap();
    // stats() checkpoints: what is still pending becomes rows.
    assert_eq!(store.stats().unwrap().pending_deliveries, 2);
    // Acked after the checkpoint: the rows go.
    store.ack_keys(vec![(AckKey::Seq(s2), "A".into())]).unwrap();
    store.ack("e1", "nobody").unwrap();
    assert_eq!(store.stats().unwrap().pending_deliveries, 1);
    let s3 = store.append(ev("e3", "t", 3), names(&["A", "B"])).unwrap();
    store.ack("e3", "B").unwrap();
    assert_eq!(
        pending_ids(&store, &["A", "B"]),
        vec![("e1".into(), names(&["B"])), ("e3".into(), names(&["A"]))]
    );
    assert!(s3 > s2);
    store.close().unwrap();
    let store = Store::open(StoreOptions::new(&path)).unwrap();
    assert_eq!(
        pending_ids(&store, &["A", "B"]),
        vec![("e1".into(), names(&["B"])), ("e3".into(), names(&["A"]))]
    );
}

#[test]
fn deliveries_kept_in_memory_come_back_after_a_crash() {
    let dir = tmp();
    let path = dir.path().join("e.db");
    let store = Store::open(StoreOptions::new(&path)).unwrap();
    store.append(ev("e1", "t", 1), names(&["A", "B"])).unwrap();
    store.append(ev("e2", "t", 2), names(&["B"])).unwrap();
    store.append(ev("e3", "t", 3), vec![]).unwrap();
    store.ack("e1", "A").unwrap();
    store.close().unwrap();
    // What a writer killed before its first checkpoint leaves: the events with their
    // targets, no delivery rows, the mark below them.
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "DELETE FROM deliveries; UPDATE store_meta SET value = 0 WHERE key = 'deliveries_through';",
        )
        .unwrap();
    }
    let store = Store::open(StoreOptions::new(&path)).unwrap();
    // At least once: the ack that was only in memory is lost, nothing else.
    assert_eq!(
        pending_ids(&store, &["A", "B"]),
        vec![
            ("e1".into(), names(&["A", "B"])),
            ("e2".into(), names(&["B"]))
        ]
    );
    store.ack("e1", "A").unwrap();
    store.ack("e1", "B").unwrap();
    let s4 = store.append(ev("e4", "t", 4), names(&["A"])).unwrap();
    assert!(s4 > 3);
    store.close().unwrap();
    let store = Store::open(StoreOptions::new(&path)).unwrap();
    assert_eq!(
        pending_ids(&store, &["A", "B"]),
        vec![("e2".into(), names(&["B"])), ("e4".into(), names(&["A"]))]
    );
}

#[test]
fn version_1_store_is_migrated_with_its_pending_deliveries() {
    let dir = tmp();
    let path = dir.path().join("v1.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE events (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, topic TEXT NOT NULL,
                 event_type TEXT NOT NULL, source TEXT NOT NULL, timestamp_us INTEGER NOT NULL,
                 published_us INTEGER NOT NULL,
                 priority INTEGER NOT NULL CHECK (priority BETWEEN 1 AND 4),
                 correlation_id TEXT, codec INTEGER NOT NULL DEFAULT 0, data BLOB NOT NULL,
                 size_bytes INTEGER NOT NULL);
             CREATE INDEX events_by_time ON events (timestamp_us, seq);
             CREATE TABLE deliveries (seq INTEGER NOT NULL, consumer TEXT NOT NULL,
                 PRIMARY KEY (seq, consumer)) WITHOUT ROWID;
             CREATE TABLE dead_letters (
                 dl_id INTEGER PRIMARY KEY AUTOINCREMENT, event_seq INTEGER,
                 event_id TEXT NOT NULL, topic TEXT NOT NULL, event_type TEXT NOT NULL,
                 source TEXT NOT NULL, timestamp_us INTEGER NOT NULL,
                 published_us INTEGER NOT NULL, priority INTEGER NOT NULL, correlation_id TEXT,
                 codec INTEGER NOT NULL DEFAULT 0, data BLOB NOT NULL, consumer TEXT NOT NULL,
                 errors_json TEXT NOT NULL, attempts INTEGER NOT NULL, failed_us INTEGER NOT NULL);
             INSERT INTO events (id, topic, event_type, source, timestamp_us, published_us,
                 priority, data, size_bytes) VALUES
                 ('old1', 't', 'x', 's', 1, 1, 2, CAST('{}' AS BLOB), 50),
                 ('old2', 't', 'x', 's', 2, 2, 2, CAST('{}' AS BLOB), 50);
             INSERT INTO deliveries VALUES (2, 'A');
             PRAGMA application_id = 1297108293;
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let store = Store::open(StoreOptions::new(&path)).unwrap();
    assert_eq!(
        pending_ids(&store, &["A"]),
        vec![("old2".into(), names(&["A"]))]
    );
    store.append(ev("new", "t", 3), names(&["A"])).unwrap();
    store.ack("old2", "A").unwrap();
    store.close().unwrap();
    let store = Store::open(StoreOptions::new(&path)).unwrap();
    assert_eq!(
        pending_ids(&store, &["A"]),
        vec![("new".into(), names(&["A"]))]
    );
    drop(store);
    let c = rusqlite::Connection::open(&path).unwrap();
    let v: i32 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 2);
}

/// A queue of rows the writer takes in batches, as the bus uses it.
struct TestSource {
    rows: parking_lot::Mutex<Vec<Row>>,
    seqs: Arc<parking_lot::Mutex<Vec<i64>>>,
    takes: std::sync::atomic::AtomicUsize,
}

impl AppendSource for TestSource {
    fn take(&self) -> Option<(Vec<Row>, Reply<Vec<i64>>)> {
        let rows = std::mem::take(&mut *self.rows.lock());
        if rows.is_empty() {
            return None;
        }
        self.takes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let seqs = self.seqs.clone();
        Some((rows, Box::new(move |r| seqs.lock().extend(r.unwrap()))))
    }
}

#[test]
fn append_from_takes_everything_queued_in_one_go() {
    let dir = tmp();
    let store = Store::open(StoreOptions::new(dir.path().join("e.db"))).unwrap();
    let src = Arc::new(TestSource {
        rows: parking_lot::Mutex::new(Vec::new()),
        seqs: Arc::new(parking_lot::Mutex::new(Vec::new())),
        takes: 0.into(),
    });
    for i in 0..100 {
        let row = store
            .prepare(ev(&format!("e{i}"), "t", i), names(&["A"]))
            .unwrap();
        src.rows.lock().push(row);
    }
    // One command for all of them; a second one finds nothing left.
    store.append_from(src.clone()).unwrap();
    store.append_from(src.clone()).unwrap();
    store.flush().unwrap();
    assert_eq!(src.takes.load(std::sync::atomic::Ordering::Relaxed), 1);
    let seqs = src.seqs.lock().clone();
    assert_eq!(seqs.len(), 100);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    let got = all(&store);
    assert_eq!(got.len(), 100);
    assert_eq!(got[7].id, "e7");
    assert_eq!(got[7].seq, seqs[7]);
    assert_eq!(pending_ids(&store, &["A"]).len(), 100);
}
