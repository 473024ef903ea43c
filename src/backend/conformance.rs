//! The conformance suite of [`SharedLog`] backends: every backend passes the same
//! tests. A backend's test module instantiates it with
//! `conformance_suite!(factory);`, where `factory()` returns a [`TestLog`]: a fresh
//! empty log and a way to open more handles on it (each standing in for another
//! process). Real multi-process tests live with each backend.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{new_instance_id, EntryId, LogError, Record, Retention, SharedLog, StartAt};

/// A fresh log under test.
pub(crate) struct TestLog {
    /// Open one more handle on the same log.
    pub open: Box<dyn Fn() -> Arc<dyn SharedLog> + Send + Sync>,
}

impl TestLog {
    fn handle(&self) -> Arc<dyn SharedLog> {
        (self.open)()
    }
}

/// Instantiate every conformance test for a backend factory `fn() -> TestLog`.
///
/// `conformance_suite!(factory, skip_unless = available)`: each test first calls
/// `available(test_name) -> bool` and returns at once when it says false (a backend
/// whose server is missing skips visibly; `available` says why).
macro_rules! conformance_suite {
    ($factory:path) => {
        $crate::backend::conformance::conformance_suite!($factory, skip_unless = $crate::backend::conformance::always);
    };
    ($factory:path, skip_unless = $guard:path) => {
        $crate::backend::conformance::conformance_suite!(@tests $factory, $guard;
            fan_out_to_two_groups_is_exact,
            instances_of_one_group_share_exactly,
            start_earliest_latest_and_time,
            position_and_pending_survive_reopen,
            expired_claims_are_redelivered_and_renewed_ones_are_not,
            ack_removes_from_pending,
            dead_letters_are_visible_from_another_handle_and_replay,
            per_publisher_order_per_group,
            retention_keeps_unhandled_and_counts_the_hard_cap,
            retention_by_size_drops_handled_oldest_first,
            blocked_read_wakes_on_append_from_another_handle,
            range_filters_by_time_topic_and_pages,
            bad_inputs_are_refused_clearly,
            append_is_all_or_nothing,
            delete_group_forgets_it,
            release_hands_claims_back_at_once,
            requeue_hands_handled_entries_to_one_group,
            unlogged_dead_letters_reach_no_group,
        );
    };
    (@tests $factory:path, $guard:path; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                if !$guard(stringify!($name)) {
                    return;
                }
                $crate::backend::conformance::$name($factory);
            }
        )*
    };
}
pub(crate) use conformance_suite;

/// The guard of a backend that needs nothing outside the process.
pub(crate) fn always(_test: &str) -> bool {
    true
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// A record from `publisher` with counter `n`.
pub(crate) fn rec(publisher: &str, n: u64) -> Record {
    Record {
        event_id: format!("{publisher}-{n}"),
        topic: "hook.pre_tool".into(),
        priority: 3,
        timestamp_us: now_us(),
        publisher: publisher.into(),
        publisher_seq: n,
        // Fixed width, so every record has the same stored size.
        payload: format!("{{\"n\":\"{n:08}\"}}").into_bytes(),
        metadata: b"{}".to_vec(),
    }
}

fn append_n(log: &dyn SharedLog, publisher: &str, n: u64) -> Vec<EntryId> {
    let records: Vec<Record> = (0..n).map(|i| rec(publisher, i)).collect();
    log.append(&records).unwrap()
}

/// Read and acknowledge everything `group` has now (non-blocking rounds).
fn drain(log: &dyn SharedLog, group: &str, instance: &str) -> Vec<super::Entry> {
    let mut all = Vec::new();
    loop {
        let got = log.read(group, instance, 64, None).unwrap();
        if got.is_empty() {
            return all;
        }
        let ids: Vec<EntryId> = got.iter().map(|e| e.id).collect();
        assert_eq!(log.ack(group, &ids).unwrap(), ids.len() as u64);
        all.extend(got);
    }
}

/// Call `f` until it returns Some, failing after `timeout`.
fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

pub(crate) fn fan_out_to_two_groups_is_exact(factory: fn() -> TestLog) {
    let t = factory();
    let log = t.handle();
    assert!(log.ensure_group("a", StartAt::Earliest).unwrap());
    assert!(log.ensure_group("b", StartAt::Earliest).unwrap());
    let ids = append_n(&*log, "p", 100);
    for g in ["a", "b"] {
        let got = drain(&*log, g, &new_instance_id());
        assert_eq!(
            got.iter().map(|e| e.id).collect::<Vec<_>>(),
            ids,
            "group {g}"
        );
        assert!(got.iter().all(|e| e.deliveries == 1));
        assert_eq!(got[7].record, rec_like(&got[7].record, "p", 7));
        let st = log.group_stats(g).unwrap();
        assert_eq!((st.pending, st.lag, st.ready), (0, 0, 0));
        assert_eq!(st.position, ids.last().copied());
    }
}

fn rec_like(r: &Record, publisher: &str, n: u64) -> Record {
    Record {
        timestamp_us: r.timestamp_us,
        ..rec(publisher, n)
    }
}

pub(crate) fn instances_of_one_group_share_exactly(factory: fn() -> TestLog) {
    let t = Arc::new(factory());
    t.handle().ensure_group("g", StartAt::Earliest).unwrap();
    const N: usize = 300;
    let acked = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (t, acked) = (t.clone(), acked.clone());
        readers.push(std::thread::spawn(move || {
            let log = t.handle();
            let me = new_instance_id();
            let mut mine = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            while acked.load(Ordering::SeqCst) < N {
                assert!(Instant::now() < deadline, "readers did not get all {N}");
                let got = log
                    .read("g", &me, 7, Some(Duration::from_millis(20)))
                    .unwrap();
                let ids: Vec<EntryId> = got.iter().map(|e| e.id).collect();
                log.ack("g", &ids).unwrap();
                acked.fetch_add(ids.len(), Ordering::SeqCst);
                mine.extend(got.into_iter().map(|e| e.record.event_id));
            }
            mine
        }));
    }
    let log = t.handle();
    for i in 0..(N as u64 / 3) {
        let recs: Vec<Record> = (0..3).map(|k| rec("p", i * 3 + k)).collect();
        log.append(&recs).unwrap();
    }
    let parts: Vec<Vec<String>> = readers.into_iter().map(|h| h.join().unwrap()).collect();
    let total: usize = parts.iter().map(Vec::len).sum();
    let all: HashSet<&String> = parts.iter().flatten().collect();
    assert_eq!(total, N, "every event to exactly one instance");
    assert_eq!(all.len(), N);
    assert_eq!(log.group_stats("g").unwrap().pending, 0);
}

pub(crate) fn start_earliest_latest_and_time(factory: fn() -> TestLog) {
    let t = factory();
    let log = t.handle();
    let base = now_us() - 10_000_000;
    let recs: Vec<Record> = (0..3)
        .map(|i| Record {
            timestamp_us: base + i as i64 * 1_000_000,
            ..rec("p", i)
        })
        .collect();
    log.append(&recs).unwrap();
    log.ensure_group("early", StartAt::Earliest).unwrap();
    log.ensure_group("late", StartAt::Latest).unwrap();
    log.ensure_group("timed", StartAt::Time(base + 1_000_000))
        .unwrap();
    // A known group keeps its position whatever start is given again.
    assert!(!log.ensure_group("late", StartAt::Earliest).unwrap());
    log.append(&[rec("p", 3)]).unwrap();
    let seqs = |g: &str| -> Vec<u64> {
        drain(&*log, g, "i")
            .into_iter()
            .map(|e| e.record.publisher_seq)
            .collect()
    };
    assert_eq!(seqs("early"), vec![0, 1, 2, 3]);
    assert_eq!(seqs("late"), vec![3]);
    assert_eq!(seqs("timed"), vec![1, 2, 3]);
    // A time after every entry behaves as latest.
    log.ensure_group("future", StartAt::Time(now_us() + 3_600_000_000))
        .unwrap();
    assert_eq!(seqs("future"), Vec::<u64>::new());
    assert_eq!(
        log.groups().unwrap(),
        vec!["early", "future", "late", "timed"]
    );
}

pub(crate) fn position_and_pending_survive_reopen(factory: fn() -> TestLog) {
    let t = factory();
    let first = t.handle();
    first.ensure_group("g", StartAt::Earliest).unwrap();
    let ids = append_n(&*first, "p", 10);
    let a = first.read("g", "i1", 5, None).unwrap();
    first
        .ack("g", &a.iter().map(|e| e.id).collect::<Vec<_>>())
        .unwrap();
    let b = first.read("g", "i1", 3, None).unwrap();
    assert_eq!(b.iter().map(|e| e.id).collect::<Vec<_>>(), ids[5..8]);
    first.close();
    drop(first);

    let again = t.handle();
    let st = again.group_stats("g").unwrap();
    assert_eq!((st.pending, st.lag), (3, 2));
    let rest = again.read("g", "i2", 10, None).unwrap();
    assert_eq!(rest.iter().map(|e| e.id).collect::<Vec<_>>(), ids[8..]);
    let back = again.claim_expired("g", "i2", Duration::ZERO, 10).unwrap();
    let back_ids: Vec<EntryId> = back.iter().map(|e| e.id).collect();
    assert!(back_ids.iter().all(|id| ids[5..].contains(id)));
    let b8: Vec<&super::Entry> = back.iter().filter(|e| ids[5..8].contains(&e.id)).collect();
    assert_eq!(b8.len(), 3);
    assert!(b8.iter().all(|e| e.deliveries == 2));
}

pub(crate) fn expired_claims_are_redelivered_and_renewed_ones_are_not(factory: fn() -> TestLog) {
    let t = factory();
    let x = t.handle();
    let y = t.handle();
    x.ensure_group("g", StartAt::Earliest).unwrap();
    append_n(&*x, "p", 4);
    let held = x.read("g", "x", 4, None).unwrap();
    assert_eq!(held.len(), 4);
    let ids: Vec<EntryId> = held.iter().map(|e| e.id).collect();
    let lease = Duration::from_millis(300);
    assert!(y.claim_expired("g", "y", lease, 10).unwrap().is_empty());
    // x keeps renewing the first two (a heartbeat) and lets the last two expire.
    let mut taken = Vec::new();
    wait_for(
        Duration::from_secs(10),
        "the unrenewed claims to expire",
        || {
            assert_eq!(x.renew("g", "x", &ids[..2]).unwrap(), ids[..2].to_vec());
            taken.extend(y.claim_expired("g", "y", lease, 10).unwrap());
            (taken.len() >= 2).then_some(())
        },
    );
    assert_eq!(taken.iter().map(|e| e.id).collect::<Vec<_>>(), ids[2..]);
    assert!(taken.iter().all(|e| e.deliveries == 2));
    assert_eq!(taken[0].record, held[2].record);
    // x has lost them: renewing says so.
    assert_eq!(x.renew("g", "x", &ids).unwrap(), ids[..2].to_vec());
    assert_eq!(y.ack("g", &ids[2..]).unwrap(), 2);
    assert_eq!(x.ack("g", &ids[..2]).unwrap(), 2);
    assert_eq!(x.group_stats("g").unwrap().pending, 0);
}

pub(crate) fn ack_removes_from_pending(factory: fn() -> TestLog) {
    let t = factory();
    let log = t.handle();
    log.ensure_group("g", StartAt::Earliest).unwrap();
    append_n(&*log, "p", 5);
    let got = log.read("g", "i", 10, None).unwrap();
    let ids: Vec<EntryId> = got.iter().map(|e| e.id).collect();
    assert_eq!(log.group_stats("g").unwrap().pending, 5);
    assert_eq!(log.ack("g", &ids[..3]).unwrap(), 3);
    assert_eq!(
        log.ack("g", &ids[..3]).unwrap(),
        0,
        "acking twice is a no-op"
    );
    assert_eq!(log.group_stats("g").unwrap().pending, 2);
    let back = log.claim_expired("g", "j", Duration::ZERO, 10).unwrap();
    assert_eq!(back.iter().map(|e| e.id).collect::<Vec<_>>(), ids[3..]);
    assert!(log.read("g", "i", 10, None).unwrap().is_empty());
}

pub(crate) fn dead_letters_are_visible_from_another_handle_and_replay(factory: fn() -> TestLog) {
    let t = factory();
    let a = t.handle();
    let b = t.handle();
    a.ensure_group("g", StartAt::Earliest).unwrap();
    a.ensure_group("other", StartAt::Earliest).unwrap();
    append_n(&*a, "p", 3);
    let got = a.read("g", "i", 3, None).unwrap();
    let dl = a.dead_letter("g", got[1].id, "boom", 3).unwrap();
    a.ack("g", &[got[0].id, got[2].id]).unwrap();
    assert!(matches!(
        a.dead_letter("g", got[1].id, "again", 1),
        Err(LogError::Invalid(_))
    ));
    let seen = b.dead_letters(Some("g"), 100).unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (
            seen[0].dl_id,
            seen[0].id,
            seen[0].reason.as_str(),
            seen[0].attempts
        ),
        (dl, got[1].id, "boom", 3)
    );
    assert_eq!(seen[0].record, got[1].record);
    assert_eq!(seen[0].group, "g");
    assert!(b.dead_letters(Some("other"), 100).unwrap().is_empty());
    let st = b.group_stats("g").unwrap();
    assert_eq!((st.pending, st.dead_letters), (0, 1));
    assert_eq!(b.stats().unwrap().dead_letters, 1);

    // Replayed from the other handle: back to the group only, once.
    assert_eq!(b.replay_dead_letters("g", None).unwrap(), 1);
    assert_eq!(b.group_stats("g").unwrap().ready, 1);
    let again = a.read("g", "i", 10, None).unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].id, again[0].deliveries), (got[1].id, 1));
    assert!(a.dead_letters(None, 100).unwrap().is_empty());
    assert_eq!(drain(&*a, "other", "o").len(), 3, "other group unaffected");

    let dl = a.dead_letter("g", again[0].id, "boom", 1).unwrap();
    assert_eq!(b.remove_dead_letters(&[dl, dl + 1000]).unwrap(), 1);
    assert_eq!(a.stats().unwrap().dead_letters, 0);
}

pub(crate) fn unlogged_dead_letters_reach_no_group(factory: fn() -> TestLog) {
    let t = factory();
    let a = t.handle();
    let b = t.handle();
    a.ensure_group("g", StartAt::Earliest).unwrap();
    let small = rec("p", 1);
    // Big and repetitive: stored compressed where the backend compresses.
    let big = Record {
        payload: format!("{{\"s\":\"{}\"}}", "x".repeat(20_000)).into_bytes(),
        ..rec("p", 2)
    };
    let d1 = a
        .add_dead_letter("<schema>", &small, "$.n: bad\n$: worse", 0)
        .unwrap();
    let d2 = a.add_dead_letter("<schema>", &big, "why", 0).unwrap();
    assert_ne!(d1, d2);
    let seen = b.dead_letters(Some("<schema>"), 100).unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        (
            seen[0].dl_id,
            seen[0].id,
            seen[0].reason.as_str(),
            seen[0].attempts
        ),
        (d1, EntryId::new(0, 0), "$.n: bad\n$: worse", 0)
    );
    assert_eq!((&seen[0].record, &seen[1].record), (&small, &big));
    assert_eq!(seen[0].group, "<schema>");
    // Never in the log: no group gets it, none is created for the name.
    assert!(a.read("g", "i", 10, None).unwrap().is_empty());
    assert_eq!(b.groups().unwrap(), vec!["g".to_string()]);
    assert_eq!(b.stats().unwrap().entries, 0);
    assert_eq!(b.stats().unwrap().dead_letters, 2);
    assert!(b.dead_letters(Some("g"), 100).unwrap().is_empty());
    assert!(matches!(
        a.add_dead_letter(
            "<schema>",
            &Record {
                priority: 9,
                ..rec("p", 3)
            },
            "x",
            0
        ),
        Err(LogError::Invalid(_))
    ));
    assert_eq!(b.remove_dead_letters(&[d1]).unwrap(), 1);
    assert_eq!(a.dead_letters(None, 100).unwrap().len(), 1);
}

pub(crate) fn per_publisher_order_per_group(factory: fn() -> TestLog) {
    let t = Arc::new(factory());
    let log = t.handle();
    log.ensure_group("g1", StartAt::Earliest).unwrap();
    log.ensure_group("g2", StartAt::Earliest).unwrap();
    let pubs: Vec<_> = (0..3)
        .map(|p| {
            let t = t.clone();
            std::thread::spawn(move || {
                let log = t.handle();
                let name = format!("pub{p}");
                let mut n = 0u64;
                let mut size = 1;
                while n < 150 {
                    let recs: Vec<Record> = (n..n + size).map(|i| rec(&name, i)).collect();
                    log.append(&recs).unwrap();
                    n += size;
                    size = size % 5 + 1;
                }
                n
            })
        })
        .collect();
    // Read while they publish.
    let mut got: BTreeMap<&str, Vec<Record>> = BTreeMap::new();
    let total: u64 = {
        let ends: Vec<u64> = pubs.into_iter().map(|h| h.join().unwrap()).collect();
        ends.iter().sum()
    };
    for g in ["g1", "g2"] {
        let mut all = Vec::new();
        wait_for(Duration::from_secs(10), "every entry", || {
            all.extend(drain(&*log, g, "i").into_iter().map(|e| e.record));
            (all.len() as u64 >= total).then_some(())
        });
        got.insert(g, all);
    }
    for (g, records) in got {
        let mut last: BTreeMap<String, u64> = BTreeMap::new();
        for r in records {
            if let Some(prev) = last.get(&r.publisher) {
                assert!(
                    r.publisher_seq > *prev,
                    "group {g}: {} out of order",
                    r.event_id
                );
            }
            last.insert(r.publisher.clone(), r.publisher_seq);
        }
        assert_eq!(last.len(), 3);
    }
}

pub(crate) fn retention_keeps_unhandled_and_counts_the_hard_cap(factory: fn() -> TestLog) {
    let t = factory();
    let log = t.handle();
    log.ensure_group("g", StartAt::Earliest).unwrap();
    let hour_ago = now_us() - 3_600_000_000;
    let old: Vec<Record> = (0..10)
        .map(|i| Record {
            timestamp_us: hour_ago,
            ..rec("p", i)
        })
        .collect();
    log.append(&old).unwrap();
    let got = log.read("g", "i", 8, None).unwrap();
    log.ack("g", &got[..6].iter().map(|e| e.id).collect::<Vec<_>>())
        .unwrap();
    // 6 handled, 2 pending, 2 never read: only the handled go.
    let minute = Duration::from_secs(60);
    let r = log
        .apply_retention(&Retention {
            max_age: Some(minute),
            ..Retention::default()
        })
        .unwrap();
    assert_eq!(
        (r.deleted_by_age, r.kept_unhandled, r.dropped_unhandled),
        (6, 4, 0)
    );
    assert_eq!(log.stats().unwrap().entries, 4);
    // A fresh entry is younger than the hard cap and stays.
    log.append(&[rec("p", 10)]).unwrap();
    let r = log
        .apply_retention(&Retention {
            max_age: Some(minute),
            hard_max_age: Some(Duration::from_secs(1800)),
            ..Retention::default()
        })
        .unwrap();
    assert_eq!(r.dropped_unhandled, 4);
    let st = log.stats().unwrap();
    assert_eq!((st.entries, st.dropped_unhandled), (1, 4));
    // The dropped pending entries are gone from the group too; the fresh one arrives.
    let rest = drain(&*log, "g", "i");
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].record.publisher_seq, 10);
    assert_eq!(log.group_stats("g").unwrap().pending, 0);
    assert!(log
        .claim_expired("g", "i", Duration::ZERO, 10)
        .unwrap()
        .is_empty());
}

pub(crate) fn retention_by_size_drops_handled_oldest_first(factory: fn() -> TestLog) {
    let t = factory();
    let log = t.handle();
    log.ensure_group("fast", StartAt::Earliest).unwrap();
    let ids = append_n(&*log, "p", 20);
    drain(&*log, "fast", "i");
    let per = log.stats().unwrap().bytes / 20;
    // A second group that has not read anything holds everything.
    log.ensure_group("paused", StartAt::Earliest).unwrap();
    let limit = Retention {
        max_bytes: Some(per * 5),
        ..Retention::default()
    };
    let r = log.apply_retention(&limit).unwrap();
    assert_eq!(r.deleted_by_size, 0);
    assert_eq!(log.stats().unwrap().entries, 20);
    // Once it has handled the first 12, those can go, oldest first.
    let got = log.read("paused", "i", 12, None).unwrap();
    log.ack("paused", &got.iter().map(|e| e.id).collect::<Vec<_>>())
        .unwrap();
    let r = log.apply_retention(&limit).unwrap();
    assert_eq!(r.deleted_by_size, 12);
    assert_eq!(log.stats().unwrap().first, Some(ids[12]));
    assert_eq!(drain(&*log, "paused", "i").len(), 8);
    let r = log.apply_retention(&limit).unwrap();
    assert_eq!(r.deleted_by_size, 3);
    assert!(log.stats().unwrap().bytes <= per * 5);
}

pub(crate) fn blocked_read_wakes_on_append_from_another_handle(factory: fn() -> TestLog) {
    let t = Arc::new(factory());
    let log = t.handle();
    log.ensure_group("g", StartAt::Earliest).unwrap();
    // Nothing there: the read gives up at its timeout.
    let started = Instant::now();
    assert!(log
        .read("g", "i", 10, Some(Duration::from_millis(100)))
        .unwrap()
        .is_empty());
    assert!(started.elapsed() >= Duration::from_millis(100));
    let reader = {
        let t = t.clone();
        std::thread::spawn(move || {
            let log = t.handle();
            let started = Instant::now();
            let got = log
                .read("g", "i", 10, Some(Duration::from_secs(20)))
                .unwrap();
            (got, started.elapsed())
        })
    };
    let other = t.handle();
    other.append(&[rec("p", 0)]).unwrap();
    let (got, waited) = reader.join().unwrap();
    assert_eq!(got.len(), 1);
    assert!(waited < Duration::from_secs(20), "woke before its timeout");
}

pub(crate) fn range_filters_by_time_topic_and_pages(factory: fn() -> TestLog) {
    let t = factory();
    let log = t.handle();
    let base = now_us() - 100_000_000;
    let recs: Vec<Record> = (0..10)
        .map(|i| Record {
            timestamp_us: base + i as i64 * 1000,
            topic: if i % 2 == 0 {
                "hook.pre_tool"
            } else {
                "system.tick"
            }
            .into(),
            ..rec("p", i)
        })
        .collect();
    let ids = log.append(&recs).unwrap();
    let all = log.range(None, None, None, None, 100).unwrap();
    assert_eq!(all.len(), 10);
    let window = log
        .range(Some(base + 2000), Some(base + 6000), None, None, 100)
        .unwrap();
    assert_eq!(
        window
            .iter()
            .map(|(_, r)| r.publisher_seq)
            .collect::<Vec<_>>(),
        vec![2, 3, 4, 5]
    );
    let hooks = log
        .range(None, None, Some(&["hook.**".to_string()]), None, 100)
        .unwrap();
    assert_eq!(
        hooks
            .iter()
            .map(|(_, r)| r.publisher_seq)
            .collect::<Vec<_>>(),
        vec![0, 2, 4, 6, 8]
    );
    let page1 = log.range(None, None, None, None, 4).unwrap();
    let page2 = log
        .range(None, None, None, Some(page1.last().unwrap().0), 4)
        .unwrap();
    assert_eq!(page2[0].0, ids[4]);
    assert!(matches!(
        log.range(None, None, Some(&["bad..pattern".to_string()]), None, 10),
        Err(LogError::Invalid(_))
    ));
    // Reading a range moves no group.
    log.ensure_group("g", StartAt::Earliest).unwrap();
    log.range(None, None, None, None, 100).unwrap();
    assert_eq!(log.group_stats("g").unwrap().lag, 10);
}

pub(crate) fn bad_inputs_are_refused_clearly(factory: fn() -> TestLog) {
    let t = factory();
    let log = t.handle();
    let err = log.read("nope", "i", 10, None).unwrap_err();
    assert_eq!(err, LogError::UnknownGroup("nope".into()));
    assert!(err.to_string().contains("\"nope\""));
    assert!(matches!(
        log.ack("nope", &[]),
        Err(LogError::UnknownGroup(_))
    ));
    assert!(matches!(
        log.ensure_group("", StartAt::Earliest),
        Err(LogError::Invalid(_))
    ));
    log.ensure_group("g", StartAt::Earliest).unwrap();
    assert!(matches!(
        log.read("g", "i", 0, None),
        Err(LogError::Invalid(_))
    ));
    assert!(matches!(
        log.read("g", "", 1, None),
        Err(LogError::Invalid(_))
    ));
    let mut bad = rec("p", 0);
    bad.priority = 0;
    let msg = log.append(&[bad]).unwrap_err().to_string();
    assert!(msg.contains("priority"), "{msg}");
    let mut bad = rec("p", 0);
    bad.topic = "no spaces allowed".into();
    let msg = log.append(&[bad]).unwrap_err().to_string();
    assert!(msg.contains("topic"), "{msg}");
    let mut bad = rec("p", 0);
    bad.event_id.clear();
    assert!(matches!(log.append(&[bad]), Err(LogError::Invalid(_))));
    assert!(log.append(&[]).unwrap().is_empty());
    log.close();
    assert_eq!(log.append(&[rec("p", 0)]), Err(LogError::Closed));
    assert_eq!(log.read("g", "i", 1, None), Err(LogError::Closed));
}

pub(crate) fn append_is_all_or_nothing(factory: fn() -> TestLog) {
    let t = factory();
    let log = t.handle();
    let mut batch: Vec<Record> = (0..5).map(|i| rec("p", i)).collect();
    batch[3].priority = 9;
    assert!(log.append(&batch).is_err());
    assert_eq!(log.stats().unwrap().entries, 0);
    batch[3].priority = 1;
    assert_eq!(log.append(&batch).unwrap().len(), 5);
    assert_eq!(log.stats().unwrap().entries, 5);
}

pub(crate) fn delete_group_forgets_it(factory: fn() -> TestLog) {
    let t = factory();
    let log = t.handle();
    log.ensure_group("g", StartAt::Earliest).unwrap();
    append_n(&*log, "p", 3);
    log.read("g", "i", 3, None).unwrap();
    assert!(log.delete_group("g").unwrap());
    assert!(!log.delete_group("g").unwrap());
    assert!(log.groups().unwrap().is_empty());
    // Recreated, it starts over.
    log.ensure_group("g", StartAt::Earliest).unwrap();
    assert_eq!(drain(&*log, "g", "i").len(), 3);
}

pub(crate) fn release_hands_claims_back_at_once(factory: fn() -> TestLog) {
    let t = factory();
    let log = t.handle();
    log.ensure_group("g", StartAt::Earliest).unwrap();
    append_n(&*log, "p", 3);
    let got = log.read("g", "a", 3, None).unwrap();
    let ids: Vec<EntryId> = got.iter().map(|e| e.id).collect();
    // Only the holder can release.
    assert_eq!(log.release("g", "b", &ids).unwrap(), 0);
    assert_eq!(log.release("g", "a", &ids[..2]).unwrap(), 2);
    let hour = Duration::from_secs(3600);
    let back = t.handle().claim_expired("g", "b", hour, 10).unwrap();
    assert_eq!(back.iter().map(|e| e.id).collect::<Vec<_>>(), ids[..2]);
    assert!(back.iter().all(|e| e.deliveries == 2));
}

pub(crate) fn requeue_hands_handled_entries_to_one_group(factory: fn() -> TestLog) {
    let t = factory();
    let log = t.handle();
    log.ensure_group("g", StartAt::Earliest).unwrap();
    log.ensure_group("other", StartAt::Earliest).unwrap();
    append_n(&*log, "p", 4);
    let first = log.read("g", "a", 2, None).unwrap();
    let ids: Vec<EntryId> = first.iter().map(|e| e.id).collect();
    log.ack("g", &ids).unwrap();
    let all: Vec<EntryId> = log
        .range(None, None, None, None, 10)
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    // Two handled entries come back; two not yet handed to the group are skipped.
    let b = t.handle();
    assert_eq!(b.requeue("g", &all).unwrap(), 2);
    assert_eq!(b.group_stats("g").unwrap().ready, 2);
    let got = drain(&*log, "g", "a");
    let mut seen: Vec<(EntryId, u32)> = got.iter().map(|e| (e.id, e.deliveries)).collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![(all[0], 1), (all[1], 1), (all[2], 1), (all[3], 1)],
        "each once: the two replayed, then the two the group had not read"
    );
    assert_eq!(
        drain(&*log, "other", "o").len(),
        4,
        "other group unaffected"
    );
    assert!(matches!(
        b.requeue("nobody", &all),
        Err(LogError::UnknownGroup(_))
    ));
}
