//! RedisLog: the conformance suite and Redis-specific failure tests, each against its
//! own `redis-server` (started on a free port with `--appendonly yes --appendfsync
//! always` in a temporary directory, killed on drop), never the shared one on 6379.
//!
//! The server binary is `$MPM_REDIS_SERVER`, else `redis-server` on PATH or
//! `/usr/bin/redis-server`. When `MPM_TEST_PYTHON` is set (as `make test-rust` does)
//! a missing binary fails every Redis test with the reason; otherwise each prints
//! `SKIPPED <test>: ...` to the real stderr and returns (cargo has no runtime skip).

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{RedisLog, RedisOptions};
use crate::backend::conformance::{conformance_suite, rec, TestLog};
use crate::backend::error::LogError;
use crate::backend::{EntryId, Record, SharedLog, StartAt};

/// The redis-server binary, if there is one.
fn server_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MPM_REDIS_SERVER") {
        return Some(PathBuf::from(p));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("redis-server"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let p = PathBuf::from("/usr/bin/redis-server");
        p.is_file().then_some(p)
    })
}

/// Whether `test` can run (see the module docs): panics under `make test-rust` when
/// the server is missing, prints SKIPPED otherwise.
pub(crate) fn redis_available(test: &str) -> bool {
    if server_binary().is_some() {
        return true;
    }
    if std::env::var_os("MPM_TEST_PYTHON").is_some() {
        panic!(
            "{test}: no redis-server binary (looked at $MPM_REDIS_SERVER, PATH and \
             /usr/bin/redis-server); install it (apt-get install redis-server) or unset \
             MPM_TEST_PYTHON to skip the Redis tests"
        );
    }
    let _ = writeln!(
        std::io::stderr(),
        "\nSKIPPED {test}: no redis-server binary (MPM_TEST_PYTHON is not set)"
    );
    false
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private redis-server; SIGKILLed on drop.
pub(crate) struct RedisServer {
    child: Option<Child>,
    pub(crate) port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Start one on a free port (a few tries: the port may be taken meanwhile).
    pub(crate) fn start() -> RedisServer {
        for _ in 0..5 {
            let mut s = RedisServer {
                child: None,
                port: free_port(),
                dir: tempfile::tempdir().unwrap(),
            };
            if s.spawn() {
                return s;
            }
        }
        panic!("could not start a redis-server on a free port");
    }

    /// Start the process (again) on the same port and directory; true when it answers.
    fn spawn(&mut self) -> bool {
        let bin = server_binary().expect("redis-server binary");
        let child = Command::new(bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    self.child = None;
                    return false;
                }
            }
            if let Ok(client) = redis::Client::open(self.url()) {
                if let Ok(mut c) = client.get_connection_with_timeout(Duration::from_millis(200)) {
                    if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                        return true;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// SIGKILL the server (nothing flushed beyond what appendfsync always did).
    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port and data directory.
    pub(crate) fn restart(&mut self) {
        assert!(self.spawn(), "redis-server did not come back");
    }

    fn raw(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

static PREFIXES: AtomicU64 = AtomicU64::new(0);

fn options(server: &RedisServer) -> RedisOptions {
    let mut o = RedisOptions::new(server.url());
    o.prefix = format!("t{}", PREFIXES.fetch_add(1, Ordering::Relaxed));
    o
}

fn redis_factory() -> TestLog {
    let server = Arc::new(RedisServer::start());
    let opts = options(&server);
    TestLog {
        open: Box::new(move || {
            let _keep = &server;
            Arc::new(RedisLog::open(opts.clone()).unwrap()) as Arc<dyn SharedLog>
        }),
    }
}

conformance_suite!(redis_factory, skip_unless = redis_available);

// ---------------------------------------------------------------- Redis-specific

#[test]
fn urls_parse_and_mask_passwords() {
    let o = RedisOptions::from_url("redis://h:6380/2?prefix=bus1&dedup_ttl=30").unwrap();
    assert_eq!(o.url, "redis://h:6380/2");
    assert_eq!(o.prefix, "bus1");
    assert_eq!(o.dedup_ttl, Duration::from_secs(30));
    let o = RedisOptions::from_url("rediss://u:secret@h/0?ca_file=/etc/ca.pem").unwrap();
    assert_eq!(o.prefix, "mpm");
    assert_eq!(o.ca_file, Some(PathBuf::from("/etc/ca.pem")));
    for bad in [
        "sqlite:///x.db",
        "redis://h/0?prefix=",
        "redis://h/0?prefix=a{b}",
        "redis://h/0?colour=red",
        "redis://h/0?timeout=-1",
        "redis://h/0?ca_file=/ca.pem",
    ] {
        let err = RedisOptions::from_url(bad).unwrap_err();
        assert!(matches!(err, LogError::Invalid(_)), "{bad}: {err:?}");
    }
    let o = RedisOptions::from_url("redis://h/0?block_timeout=0.03").unwrap();
    assert_eq!(o.block_timeout, Some(Duration::from_millis(30)));
    assert_eq!(
        RedisOptions::from_url("redis://h/0").unwrap().block_timeout,
        None
    );
    for bad in ["0", "-1", "abc", "inf", "NaN", ""] {
        let url = format!("redis://h/0?block_timeout={bad}");
        let err = RedisOptions::from_url(&url).unwrap_err().to_string();
        assert!(
            err.contains("block_timeout must be a positive number of seconds"),
            "{url}: {err}"
        );
    }
    let err = RedisOptions::from_url("redis://u:secret@h/0?x=1").unwrap_err();
    assert!(!err.to_string().contains("secret"), "{err}");
}

#[test]
fn unreachable_server_is_an_io_error_naming_the_url() {
    if !redis_available("unreachable_server_is_an_io_error_naming_the_url") {
        return;
    }
    let mut o = RedisOptions::new(format!("redis://127.0.0.1:{}/0", free_port()));
    o.timeout = Duration::from_millis(500);
    let err = RedisLog::open(o).unwrap_err();
    assert!(matches!(err, LogError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("127.0.0.1"), "{err}");
}

#[test]
fn keys_share_one_hash_tag() {
    if !redis_available("keys_share_one_hash_tag") {
        return;
    }
    let server = RedisServer::start();
    let mut o = RedisOptions::new(server.url());
    o.prefix = "bus".into();
    let log = RedisLog::open(o).unwrap();
    log.ensure_group("g", StartAt::Earliest).unwrap();
    log.append(&[rec("p", 0)]).unwrap();
    let got = log.read("g", "i", 1, None).unwrap();
    log.dead_letter("g", got[0].id, "boom", 1).unwrap();
    let mut c = server.raw();
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut c).unwrap();
    keys.sort();
    // The publisher's de-dup key beside the stream, its dead letters and meta.
    assert_eq!(
        keys,
        ["{bus}:dlq", "{bus}:meta", "{bus}:pub:p", "{bus}:stream"]
    );
}

#[test]
fn blocking_read_longer_than_a_default_response_timeout_strands_nothing() {
    if !redis_available("blocking_read_longer_than_a_default_response_timeout_strands_nothing") {
        return;
    }
    let server = RedisServer::start();
    let opts = options(&server);
    let log = Arc::new(RedisLog::open(opts.clone()).unwrap());
    log.ensure_group("g", StartAt::Earliest).unwrap();
    let reader = {
        let log = log.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let got = log
                .read("g", "i", 10, Some(Duration::from_secs(6)))
                .unwrap();
            (got, started.elapsed())
        })
    };
    // Longer than redis-rs's 500 ms default response timeout, and than our 1 s slice.
    std::thread::sleep(Duration::from_millis(1700));
    RedisLog::open(opts)
        .unwrap()
        .append(&[rec("p", 0)])
        .unwrap();
    let (got, waited) = reader.join().unwrap();
    assert_eq!(got.len(), 1, "the entry reached the blocked reader");
    // (The thread may start its clock a little after the sleep began.)
    assert!(waited >= Duration::from_millis(1500), "{waited:?}");
    let st = log.group_stats("g").unwrap();
    assert_eq!(
        (st.pending, st.lag),
        (1, 0),
        "pending = what the reader got"
    );
}

#[test]
fn a_lost_read_reply_is_reread_by_the_instance() {
    if !redis_available("a_lost_read_reply_is_reread_by_the_instance") {
        return;
    }
    let server = RedisServer::start();
    let opts = options(&server);
    let log = RedisLog::open(opts.clone()).unwrap();
    log.ensure_group("g", StartAt::Earliest).unwrap();
    let ids = log
        .append(&(0..5).map(|i| rec("p", i)).collect::<Vec<_>>())
        .unwrap();
    // The server delivers 3 into instance i's pending list; the reply never arrives.
    let mut c = server.raw();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg("i")
        .arg("COUNT")
        .arg(3)
        .arg("STREAMS")
        .arg(format!("{{{}}}:stream", opts.prefix))
        .arg(">")
        .query(&mut c)
        .unwrap();
    // Instance i (re)starting on a handle gets those first, then the rest.
    let again = RedisLog::open(opts).unwrap();
    let first = again.read("g", "i", 10, None).unwrap();
    assert_eq!(first.iter().map(|e| e.id).collect::<Vec<_>>(), ids[..3]);
    assert!(first.iter().all(|e| e.deliveries >= 1));
    let rest = again.read("g", "i", 10, None).unwrap();
    assert_eq!(rest.iter().map(|e| e.id).collect::<Vec<_>>(), ids[3..]);
    assert!(again.read("g", "i", 10, None).unwrap().is_empty());
}

#[test]
fn a_retried_publish_keeps_one_copy() {
    if !redis_available("a_retried_publish_keeps_one_copy") {
        return;
    }
    let server = RedisServer::start();
    let log = RedisLog::open(options(&server)).unwrap();
    let r = rec("p", 7);
    let a = log.append(std::slice::from_ref(&r)).unwrap();
    // The same record again (a retry after a timed-out reply), from another handle too.
    let b = log.append(std::slice::from_ref(&r)).unwrap();
    let other = RedisLog::open(log.options().clone()).unwrap();
    let c = other.append(&[r.clone(), rec("p", 8)]).unwrap();
    assert_eq!(a, b);
    assert_eq!(c[0], a[0]);
    assert_eq!(log.stats().unwrap().entries, 2);
    let all = log.range(None, None, None, None, 100).unwrap();
    assert_eq!(
        all.iter().filter(|(_, x)| x.event_id == "p-7").count(),
        1,
        "one copy"
    );
}

#[test]
fn duplicates_in_one_batch_and_across_regrouped_batches_keep_one_copy() {
    if !redis_available("duplicates_in_one_batch_and_across_regrouped_batches_keep_one_copy") {
        return;
    }
    let server = RedisServer::start();
    let log = RedisLog::open(options(&server)).unwrap();
    let r = |i| rec("p", i);
    let a = log.append(&[r(0), r(0), r(1)]).unwrap();
    // A flushed script cache (a restart without persistence of scripts, a failover)
    // is reloaded on NOSCRIPT and the batch sent again.
    let mut raw = server.raw();
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut raw).unwrap();
    assert_eq!(a[0], a[1]);
    assert_ne!(a[0], a[2]);
    // A forwarder that retries regroups: every batch shares some ids with an earlier one.
    let b = log.append(&[r(1), r(2)]).unwrap();
    let c = log.append(&[r(3), r(0), r(2), r(4)]).unwrap();
    assert_eq!((b[0], c[1], c[2]), (a[2], a[0], b[1]));
    let all = log.range(None, None, None, None, 100).unwrap();
    let ids: Vec<&str> = all.iter().map(|(_, x)| x.event_id.as_str()).collect();
    assert_eq!(ids, ["p-0", "p-1", "p-2", "p-3", "p-4"]);
    // One stored range per stretch appended: here every record came alone.
    let prefix = &log.options().prefix;
    let ranges: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("{{{prefix}}}:pub:p"))
        .arg(0)
        .arg(-1)
        .query(&mut raw)
        .unwrap();
    let starts: Vec<&str> = ranges
        .iter()
        .map(|m| m.split(':').next().unwrap())
        .collect();
    assert_eq!(starts, ["0", "1", "2", "3", "4"], "{ranges:?}");
}

#[test]
fn a_batch_is_one_range_and_its_retries_and_regroupings_keep_one_copy() {
    if !redis_available("a_batch_is_one_range_and_its_retries_and_regroupings_keep_one_copy") {
        return;
    }
    let server = RedisServer::start();
    let log = RedisLog::open(options(&server)).unwrap();
    let mut raw = server.raw();
    let prefix = log.options().prefix.clone();
    let ranges = |raw: &mut redis::Connection, p: &str| -> Vec<String> {
        redis::cmd("ZRANGE")
            .arg(format!("{{{prefix}}}:pub:{p}"))
            .arg(0)
            .arg(-1)
            .query(raw)
            .unwrap()
    };
    let a: Vec<Record> = (100..200).map(|i| rec("a", i)).collect();
    let first = log.append(&a).unwrap();
    assert_eq!(ranges(&mut raw, "a").len(), 1, "one range for 100 records");
    // The same batch again (a retry after a lost reply): the same ids, nothing added.
    assert_eq!(log.append(&a).unwrap(), first);
    // Regrouped with new records on both sides, and another publisher interleaved
    // (a spool forward): old ones keep their ids, new ones are appended once, in order.
    let mut mixed: Vec<Record> = (50..250).map(|i| rec("a", i)).collect();
    mixed.insert(10, rec("b", 0));
    mixed.insert(150, rec("b", 1));
    let got = log.append(&mixed).unwrap();
    for (r, id) in mixed.iter().zip(&got) {
        if r.publisher == "a" && (100..200).contains(&r.publisher_seq) {
            assert_eq!(
                *id,
                first[(r.publisher_seq - 100) as usize],
                "{}",
                r.event_id
            );
        }
    }
    let all = log.range(None, None, None, None, 1000).unwrap();
    let mut seen: Vec<&str> = all.iter().map(|(_, x)| x.event_id.as_str()).collect();
    assert_eq!(seen.len(), 100 + 100 + 2, "one copy each");
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 202, "no duplicate");
    // Per publisher in order, and the stored ranges disjoint.
    let a_seqs: Vec<u64> = all
        .iter()
        .filter(|(_, x)| x.publisher == "a")
        .map(|(_, x)| x.publisher_seq)
        .collect();
    let mut sorted = a_seqs.clone();
    sorted.sort();
    assert_eq!(a_seqs.len(), 200);
    let mut covered: Vec<(u64, u64)> = ranges(&mut raw, "a")
        .iter()
        .map(|m| {
            let mut it = m.split(':');
            let s: u64 = it.next().unwrap().parse().unwrap();
            let n: u64 = it.next().unwrap().parse().unwrap();
            (s, s + n)
        })
        .collect();
    covered.sort();
    assert!(covered.windows(2).all(|w| w[0].1 <= w[1].0), "{covered:?}");
    assert_eq!(covered.iter().map(|(s, e)| e - s).sum::<u64>(), 200);
    // A record beyond the script's exact numbers is appended, never de-duplicated.
    let huge = rec("c", u64::MAX);
    let x = log.append(std::slice::from_ref(&huge)).unwrap();
    let y = log.append(std::slice::from_ref(&huge)).unwrap();
    assert_ne!(x, y);
    assert!(ranges(&mut raw, "c").is_empty());
}

#[test]
fn the_append_command_is_built_in_one_buffer_that_never_grows() {
    let mut o = RedisOptions::new("redis://127.0.0.1:1/0");
    o.prefix = "p".repeat(100);
    let log = RedisLog::open_unchecked(o).unwrap();
    let mut records: Vec<Record> = (0..300).map(|i| rec("p", i)).collect();
    records.push(Record {
        payload: vec![b'a'; 20_000],
        ..rec("p", 300)
    });
    records.push(Record {
        payload: (0..6_000u32).flat_map(|i| i.to_le_bytes()).collect(),
        event_id: "é".repeat(200),
        ..rec("p", 301)
    });
    for n in [1, 2, 301, 302] {
        let cmd = log.append_command_for_test(&records[..n]);
        let cap = super::append_command_capacity(&records[..n]);
        assert!(cmd.len() <= cap, "{n}: {} > {cap}", cmd.len());
        assert_eq!(cmd.capacity(), cap, "{n}: the buffer grew");
        // A well-formed RESP array of 12 + n bulks (one publisher, one run), as
        // redis-rs parses it.
        let v = redis::parse_redis_value(&cmd).unwrap();
        let redis::Value::Array(parts) = v else {
            panic!("not an array")
        };
        assert_eq!(parts.len(), 12 + n);
        assert_eq!(parts[0], redis::Value::BulkString(b"EVALSHA".to_vec()));
        let redis::Value::BulkString(last) = &parts[parts.len() - 1] else {
            panic!("not a bulk")
        };
        let back = super::packed::read(last).unwrap().record().unwrap();
        assert_eq!(back, records[n - 1]);
    }
    // The worst case: every record its own run and its own 100-byte publisher.
    let worst: Vec<Record> = (0..50u64)
        .map(|i| Record {
            publisher: format!("{i:0>100}"),
            ..rec("p", (1 << 52) - 2 * i)
        })
        .collect();
    let cmd = log.append_command_for_test(&worst);
    let cap = super::append_command_capacity(&worst);
    assert!(
        cmd.len() <= cap && cmd.capacity() == cap,
        "{} {cap}",
        cmd.len()
    );
    let redis::Value::Array(parts) = redis::parse_redis_value(&cmd).unwrap() else {
        panic!("not an array")
    };
    assert_eq!(parts.len(), 3 + 2 + 50 + 3 + 3 * 50 + 50);
}

#[test]
fn runs_cut_a_batch_by_publisher_and_consecutive_numbers() {
    let r = |p: &str, n| rec(p, n);
    let records = [
        r("a", 5),
        r("a", 6),
        r("b", 0),
        r("a", 7),
        r("a", 7),
        r("a", 9),
        r("c", u64::MAX),
    ];
    let (publishers, runs) = super::runs_of(&records);
    assert_eq!(publishers, ["a", "b"]);
    let got: Vec<(usize, u64, usize)> = runs.iter().map(|x| (x.key, x.first_seq, x.len)).collect();
    assert_eq!(
        got,
        [
            (3, 5, 2),
            (4, 0, 1),
            (3, 7, 1),
            (3, 7, 1),
            (3, 9, 1),
            (0, u64::MAX, 1)
        ]
    );
}

#[test]
fn a_publishers_ranges_are_forgotten_dedup_ttl_after_its_last_append() {
    if !redis_available("a_publishers_ranges_are_forgotten_dedup_ttl_after_its_last_append") {
        return;
    }
    let server = RedisServer::start();
    let mut o = options(&server);
    o.dedup_ttl = Duration::from_millis(1500);
    let log = RedisLog::open(o).unwrap();
    let mut raw = server.raw();
    let key = format!("{{{}}}:pub:p", log.options().prefix);
    let first = log.append(&[rec("p", 1)]).unwrap();
    assert_eq!(log.append(&[rec("p", 1)]).unwrap(), first);
    let pttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut raw).unwrap();
    assert!((1..=1500).contains(&pttl), "PTTL {pttl}");
    // Once the key expired (waited for, not slept on), the record is new again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis::cmd("EXISTS")
        .arg(&key)
        .query::<i64>(&mut raw)
        .unwrap()
        == 1
    {
        assert!(Instant::now() < deadline, "the de-dup key never expired");
        std::thread::sleep(Duration::from_millis(20));
    }
    let again = log.append(&[rec("p", 1), rec("p", 2)]).unwrap();
    assert_ne!(again[0], first[0]);
    assert_eq!(log.stats().unwrap().entries, 3);
}

/// XADD one entry in the ten-field layout older versions wrote (and HINCRBY its
/// bytes, as their script did).
fn xadd_old_layout(c: &mut redis::Connection, prefix: &str, r: &Record, lz4: bool) -> EntryId {
    let stored = if lz4 {
        lz4_flex::compress_prepend_size(&r.payload)
    } else {
        r.payload.clone()
    };
    let z = stored.len() + r.metadata.len();
    let id: String = redis::cmd("XADD")
        .arg(format!("{{{prefix}}}:stream"))
        .arg("*")
        .arg("e")
        .arg(&r.event_id)
        .arg("t")
        .arg(&r.topic)
        .arg("p")
        .arg(r.priority)
        .arg("ts")
        .arg(r.timestamp_us)
        .arg("pb")
        .arg(&r.publisher)
        .arg("ps")
        .arg(r.publisher_seq)
        .arg("c")
        .arg(u8::from(lz4))
        .arg("d")
        .arg(stored)
        .arg("m")
        .arg(&r.metadata)
        .arg("z")
        .arg(z)
        .query(c)
        .unwrap();
    let _: i64 = redis::cmd("HINCRBY")
        .arg(format!("{{{prefix}}}:meta"))
        .arg("bytes")
        .arg(z)
        .query(c)
        .unwrap();
    EntryId::parse(&id).unwrap()
}

#[test]
fn entries_in_the_old_multi_field_layout_are_still_read() {
    if !redis_available("entries_in_the_old_multi_field_layout_are_still_read") {
        return;
    }
    let server = RedisServer::start();
    let o = options(&server);
    let log = RedisLog::open(o.clone()).unwrap();
    let mut c = server.raw();
    log.ensure_group("g", StartAt::Earliest).unwrap();
    let small_old = rec("old", 0);
    let small_new = rec("new", 0);
    let big = Record {
        payload: format!("{{\"t\":\"{}\"}}", "abc".repeat(5_000)).into_bytes(),
        topic: "hook.big".into(),
        ..rec("old", 1)
    };
    // NOTE: compared through this summary: a failure must not print 15 kB payloads.
    let show = |v: &[(EntryId, Record)]| -> Vec<String> {
        v.iter()
            .map(|(i, r)| {
                format!(
                    "{i} {} {} {} {} {}/{} payload {}B {:x}",
                    r.event_id,
                    r.topic,
                    r.priority,
                    r.timestamp_us,
                    r.publisher,
                    r.publisher_seq,
                    r.payload.len(),
                    r.payload
                        .iter()
                        .fold(0u64, |h, b| h.wrapping_mul(31) ^ *b as u64)
                )
            })
            .collect()
    };
    let old0 = xadd_old_layout(&mut c, &o.prefix, &small_old, false);
    let old1 = xadd_old_layout(&mut c, &o.prefix, &big, true);
    // The same record again, packed: new to the buckets (the old layout had its own keys).
    let new = log.append(&[small_new.clone(), big.clone()]).unwrap();
    let want = vec![
        (old0, small_old.clone()),
        (old1, big.clone()),
        (new[0], small_new.clone()),
        (new[1], big.clone()),
    ];
    let got = log.range(None, None, None, None, 10).unwrap();
    assert!(got == want, "{:?} != {:?}", show(&got), show(&want));
    // Topic and time filters read both layouts.
    let only_big = log
        .range(None, None, Some(&["hook.big".to_string()]), None, 10)
        .unwrap();
    assert_eq!(
        only_big.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        [old1, new[1]]
    );
    let t = small_new.timestamp_us;
    let since = log.range(Some(t), None, None, None, 10).unwrap();
    let want_since: Vec<EntryId> = want
        .iter()
        .filter(|(_, r)| r.timestamp_us >= t)
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(
        since.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        want_since
    );
    assert!(want_since.contains(&new[0]) && !want_since.contains(&old0));
    // A group reads both; a dead letter of each kind keeps its record and replays.
    let read: Vec<(EntryId, Record)> = log
        .read("g", "i", 10, None)
        .unwrap()
        .into_iter()
        .map(|e| (e.id, e.record))
        .collect();
    assert!(read == want, "{:?}", show(&read));
    log.dead_letter("g", old1, "boom", 1).unwrap();
    log.dead_letter("g", new[0], "boom", 1).unwrap();
    let dls: Vec<(EntryId, Record)> = log
        .dead_letters(Some("g"), 10)
        .unwrap()
        .into_iter()
        .map(|d| (d.id, d.record))
        .collect();
    let want_dls = vec![(old1, big.clone()), (new[0], small_new.clone())];
    assert!(dls == want_dls, "{:?}", show(&dls));
    log.ack("g", &[old0, new[1]]).unwrap();
    assert_eq!(log.replay_dead_letters("g", None).unwrap(), 2);
    let again = log.read("g", "i", 10, None).unwrap();
    assert_eq!(
        again.iter().map(|e| e.id).collect::<Vec<_>>(),
        [old1, new[0]]
    );
    log.ack("g", &[old1, new[0]]).unwrap();
    // Byte accounting agrees for both layouts: trimming all of them leaves 0.
    assert!(log.stats().unwrap().bytes > 0);
    let r = log
        .apply_retention(&crate::backend::Retention {
            max_age: Some(Duration::ZERO),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.deleted_by_age, 4);
    let st = log.stats().unwrap();
    assert_eq!((st.entries, st.bytes), (0, 0));
}

#[test]
fn deleted_pending_entries_are_counted_when_claimed() {
    if !redis_available("deleted_pending_entries_are_counted_when_claimed") {
        return;
    }
    let server = RedisServer::start();
    let opts = options(&server);
    let log = RedisLog::open(opts.clone()).unwrap();
    log.ensure_group("g", StartAt::Earliest).unwrap();
    log.append(&(0..3).map(|i| rec("p", i)).collect::<Vec<_>>())
        .unwrap();
    let got = log.read("g", "dead", 3, None).unwrap();
    // Someone deletes a pending entry by hand before it was handled.
    let mut c = server.raw();
    let n: i64 = redis::cmd("XDEL")
        .arg(format!("{{{}}}:stream", opts.prefix))
        .arg(got[1].id.to_string())
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 1);
    let back = log.claim_expired("g", "me", Duration::ZERO, 10).unwrap();
    assert_eq!(
        back.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![got[0].id, got[2].id]
    );
    assert_eq!(log.stats().unwrap().dropped_unhandled, 1);
    assert_eq!(log.group_stats("g").unwrap().pending, 2);
}

#[test]
fn large_payloads_are_compressed_and_round_trip() {
    if !redis_available("large_payloads_are_compressed_and_round_trip") {
        return;
    }
    let server = RedisServer::start();
    let log = RedisLog::open(options(&server)).unwrap();
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
fn killed_server_restarted_keeps_every_acknowledged_publish() {
    if !redis_available("killed_server_restarted_keeps_every_acknowledged_publish") {
        return;
    }
    let mut server = RedisServer::start();
    let mut opts = options(&server);
    opts.timeout = Duration::from_millis(500);
    let log = Arc::new(RedisLog::open(opts.clone()).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let failed = Arc::new(AtomicU64::new(0));
    let storm: Vec<_> = (0..3)
        .map(|p| {
            let (log, stop, ok, failed) = (log.clone(), stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                let name = format!("pub{p}");
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let r = rec(&name, n);
                    match log.append(std::slice::from_ref(&r)) {
                        Ok(_) => ok.lock().push(r.event_id),
                        Err(_) => {
                            failed.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                    n += 1;
                }
            })
        })
        .collect();
    let wait_ok = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while ok.lock().len() < n {
            assert!(Instant::now() < deadline, "publishers stalled");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_ok(300);
    server.kill();
    let before_restart = {
        let deadline = Instant::now() + Duration::from_secs(10);
        while failed.load(Ordering::SeqCst) < 3 {
            assert!(
                Instant::now() < deadline,
                "no publish failed while Redis was down"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        ok.lock().len()
    };
    server.restart();
    wait_ok(before_restart + 300);
    stop.store(true, Ordering::SeqCst);
    for h in storm {
        h.join().unwrap();
    }
    let acknowledged: Vec<String> = ok.lock().clone();
    let fresh = RedisLog::open(opts).unwrap();
    let mut stored = HashSet::new();
    let mut after = None;
    loop {
        let page = fresh.range(None, None, None, after, 1000).unwrap();
        let Some(last) = page.last().map(|(id, _)| *id) else {
            break;
        };
        stored.extend(page.into_iter().map(|(_, r)| r.event_id));
        after = Some(last);
    }
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|e| !stored.contains(*e))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged publishes lost (failed attempts {}): {:?}",
        lost.len(),
        acknowledged.len(),
        failed.load(Ordering::SeqCst),
        &lost[..lost.len().min(5)]
    );
    assert_eq!(
        stored.len() as u64,
        fresh.stats().unwrap().entries,
        "no duplicates"
    );
}

/// A CA and a server certificate for `localhost` made with the openssl CLI, or None.
fn make_certs(dir: &std::path::Path) -> Option<()> {
    let run = |args: &[&str]| {
        Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let ok = run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=mpm test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]) && run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]) && {
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n\
             extendedKeyUsage=serverAuth\n",
        )
        .is_ok()
    } && run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        "server.pem",
        "-extfile",
        "ext.cnf",
    ]);
    ok.then_some(())
}

#[test]
fn rediss_over_rustls_with_a_private_ca() {
    if !redis_available("rediss_over_rustls_with_a_private_ca") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    if make_certs(dir.path()).is_none() {
        let _ = writeln!(
            std::io::stderr(),
            "\nSKIPPED rediss_over_rustls_with_a_private_ca: the openssl CLI could not \
             make test certificates"
        );
        return;
    }
    let port = free_port();
    let d = |f: &str| dir.path().join(f).display().to_string();
    let _server = Kid(Command::new(server_binary().unwrap())
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args([
            "--tls-cert-file",
            &d("server.pem"),
            "--tls-key-file",
            &d("server.key"),
        ])
        .args([
            "--tls-ca-cert-file",
            &d("ca.pem"),
            "--tls-auth-clients",
            "no",
        ])
        .args(["--save", "", "--dir", &d("")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    let url = format!(
        "rediss://localhost:{port}/0?prefix=tls&ca_file={}",
        d("ca.pem")
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        match RedisLog::open_url(&url) {
            Ok(log) => break log,
            Err(e) => {
                assert!(Instant::now() < deadline, "no TLS connection: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    log.ensure_group("g", StartAt::Earliest).unwrap();
    log.append(&[rec("p", 0)]).unwrap();
    let got = log
        .read("g", "i", 10, Some(Duration::from_secs(2)))
        .unwrap();
    assert_eq!(got.len(), 1);
    // Without the private CA the server's certificate is not trusted.
    let plain = format!("rediss://localhost:{port}/0?prefix=tls&timeout=2");
    assert!(RedisLog::open_url(&plain).is_err());
}

// ---------------------------------------------------------------- multi-process

const ROLE: &str = "MPM_REDIS_LOG_CHILD_ROLE";

/// Entry point of the child processes (the test binary re-executed with `--exact`
/// and [`ROLE`] set). Without the variable it does nothing.
#[test]
fn redis_child_process_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let arg = |k: &str| std::env::var(k).unwrap_or_default();
    let mut o = RedisOptions::new(arg("MPM_REDIS_URL"));
    o.prefix = arg("MPM_REDIS_PREFIX");
    let log = RedisLog::open(o).unwrap();
    match role.as_str() {
        // Claim a batch of MAX, print the ids, then hang (to be killed).
        "claim" => {
            let max: usize = arg("MAX").parse().unwrap();
            let got = log
                .read("g", "doomed", max, Some(Duration::from_secs(10)))
                .unwrap();
            let ids: Vec<String> = got.iter().map(|e| e.id.to_string()).collect();
            println!("CHILD claimed {}", ids.join(" "));
            loop {
                std::thread::park();
            }
        }
        other => panic!("unknown child role {other}"),
    }
}

struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sigkilled_reader_mid_batch_is_redelivered_after_the_claim_timeout() {
    if !redis_available("sigkilled_reader_mid_batch_is_redelivered_after_the_claim_timeout") {
        return;
    }
    let server = RedisServer::start();
    let opts = options(&server);
    let log = RedisLog::open(opts.clone()).unwrap();
    log.ensure_group("g", StartAt::Earliest).unwrap();
    let ids = log
        .append(&(0..20).map(|i| rec("p", i)).collect::<Vec<_>>())
        .unwrap();
    let mut kid = Kid(Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "backend::redis::tests::redis_child_process_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, "claim")
        .env("MPM_REDIS_URL", server.url())
        .env("MPM_REDIS_PREFIX", &opts.prefix)
        .env("MAX", "8")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap());
    let out = BufReader::new(kid.0.stdout.take().unwrap());
    let mut claimed = Vec::new();
    for line in out.lines() {
        let line = line.unwrap();
        // NOTE: the harness prints `test <name> ... ` before the child's first line.
        if let Some((_, rest)) = line.split_once("CHILD claimed ") {
            claimed = rest
                .split(' ')
                .map(|s| EntryId::parse(s).unwrap())
                .collect();
            break;
        }
    }
    assert_eq!(claimed, ids[..8], "the child claimed the first batch");
    kid.0.kill().unwrap();
    kid.0.wait().unwrap();
    // The other instance handles the rest meanwhile; the dead one's batch comes back
    // after the claim timeout, each once, delivery count 2.
    let rest = log.read("g", "alive", 100, None).unwrap();
    assert_eq!(rest.iter().map(|e| e.id).collect::<Vec<_>>(), ids[8..]);
    let rest_ids: Vec<EntryId> = rest.iter().map(|e| e.id).collect();
    assert_eq!(log.ack("g", &rest_ids).unwrap(), 12);
    let lease = Duration::from_millis(400);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut back = Vec::new();
    while back.len() < 8 {
        assert!(
            Instant::now() < deadline,
            "the dead reader's batch never came back"
        );
        back.extend(log.claim_expired("g", "alive", lease, 100).unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(back.iter().map(|e| e.id).collect::<Vec<_>>(), ids[..8]);
    assert!(back.iter().all(|e| e.deliveries == 2));
    let all: Vec<EntryId> = back.iter().chain(rest.iter()).map(|e| e.id).collect();
    assert_eq!(all.len(), 20, "0 lost, 0 duplicated");
    assert_eq!(log.ack("g", &all).unwrap(), 8);
    assert_eq!(log.group_stats("g").unwrap().pending, 0);
}

// ---------------------------------------------------------------- GroupReader on Redis

fn reader_opts(group: &str, claim_timeout: Duration) -> crate::backend::reader::ReaderOptions {
    crate::backend::reader::ReaderOptions {
        claim_timeout,
        poll: Duration::from_millis(20),
        ..crate::backend::reader::ReaderOptions::new(group)
    }
}

#[test]
fn a_long_handler_keeps_its_claims_and_stop_hands_them_on() {
    use crate::backend::reader::GroupReader;
    if !redis_available("a_long_handler_keeps_its_claims_and_stop_hands_them_on") {
        return;
    }
    let server = RedisServer::start();
    let opts = options(&server);
    let log: Arc<dyn SharedLog> = Arc::new(RedisLog::open(opts.clone()).unwrap());
    log.append(&(0..5).map(|i| rec("p", i)).collect::<Vec<_>>())
        .unwrap();
    // NOTE: 500 ms: the heartbeat (every 167 ms) has a wide margin on a loaded machine.
    let lease = Duration::from_millis(500);
    let (tx, rx) = std::sync::mpsc::channel();
    let a = GroupReader::start(log.clone(), reader_opts("g", lease), move |b| {
        tx.send(b).unwrap()
    })
    .unwrap();
    let held = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(held.len(), 5);
    // The handler takes three claim timeouts: another process never gets them.
    let other = RedisLog::open(opts).unwrap();
    let until = Instant::now() + lease * 3;
    while Instant::now() < until {
        assert!(other
            .claim_expired("g", "thief", lease, 10)
            .unwrap()
            .is_empty());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(a.stats().lost_claims, 0);
    // Stopping releases them to a running second instance at once.
    let (tx, rx) = std::sync::mpsc::channel();
    let b = GroupReader::start(
        log.clone(),
        reader_opts("g", Duration::from_secs(60)),
        move |b| tx.send(b).unwrap(),
    )
    .unwrap();
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
    assert_eq!(a.stop().unwrap(), 5);
    let again = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(
        again.iter().map(|e| e.id).collect::<Vec<_>>(),
        held.iter().map(|e| e.id).collect::<Vec<_>>()
    );
    assert!(again.iter().all(|e| e.deliveries == 2));
    b.ack(&again.iter().map(|e| e.id).collect::<Vec<_>>());
    b.stop().unwrap();
    assert_eq!(log.group_stats("g").unwrap().pending, 0);
}

#[test]
fn a_group_reader_delivers_everything_once_and_catches_up() {
    use crate::backend::reader::GroupReader;
    if !redis_available("a_group_reader_delivers_everything_once_and_catches_up") {
        return;
    }
    let server = RedisServer::start();
    let log: Arc<dyn SharedLog> = Arc::new(RedisLog::open(options(&server)).unwrap());
    log.append(&(0..300).map(|i| rec("p", i)).collect::<Vec<_>>())
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = GroupReader::start(
        log.clone(),
        crate::backend::reader::ReaderOptions {
            batch: 32,
            ..reader_opts("g", Duration::from_secs(30))
        },
        move |batch| tx.send(batch).unwrap(),
    )
    .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 300 {
        let batch = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        reader.ack(&batch.iter().map(|e| e.id).collect::<Vec<_>>());
        seen.extend(batch.into_iter().map(|e| e.record.publisher_seq));
    }
    assert_eq!(seen, (0..300).collect::<Vec<_>>());
    let last = log.stats().unwrap().last;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !reader.caught_up(last).unwrap() {
        assert!(Instant::now() < deadline, "acks never written");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(reader.stop().unwrap(), 0);
    let g = log.group_stats("g").unwrap();
    assert_eq!((g.pending, g.lag), (0, 0));
}

#[test]
fn a_trimmed_dead_letter_replays_from_its_copy_to_its_group_only() {
    if !redis_available("a_trimmed_dead_letter_replays_from_its_copy_to_its_group_only") {
        return;
    }
    let server = RedisServer::start();
    let opts = options(&server);
    let log = RedisLog::open(opts.clone()).unwrap();
    for g in ["a", "b"] {
        log.ensure_group(g, StartAt::Earliest).unwrap();
    }
    let ids = log
        .append(&(0..3).map(|i| rec("p", i)).collect::<Vec<_>>())
        .unwrap();
    let got = log.read("a", "ia", 3, None).unwrap();
    assert_eq!(got.len(), 3);
    log.dead_letter("a", ids[1], "boom x3", 3).unwrap();
    log.ack("a", &[ids[0], ids[2]]).unwrap();
    assert_eq!(log.read("b", "ib", 3, None).unwrap().len(), 3);
    log.ack("b", &ids).unwrap();
    // The stream is trimmed past the dead-lettered entry (by hand, as a MAXLEN would).
    let mut c = server.raw();
    let _: i64 = redis::cmd("XTRIM")
        .arg(format!("{{{}}}:stream", opts.prefix))
        .arg("MAXLEN")
        .arg(0)
        .query(&mut c)
        .unwrap();
    assert_eq!(log.range(None, None, None, None, 100).unwrap().len(), 0);
    assert_eq!(log.replay_dead_letters("a", None).unwrap(), 1);
    let back = log.read("a", "ia", 10, None).unwrap();
    let lost = usize::from(back.is_empty());
    assert_eq!(
        back.iter()
            .map(|e| (e.record.event_id.clone(), e.deliveries))
            .collect::<Vec<_>>(),
        vec![(rec("p", 1).event_id, 1)],
        "lost={lost} handled={} (the copy restored from the dead letter)",
        back.len()
    );
    // Group b does not see it again; range leaves the copy out; no dead letter left.
    let dup = log.read("b", "ib", 10, None).unwrap();
    assert!(dup.is_empty(), "duplicates={} in group b", dup.len());
    assert_eq!(log.range(None, None, None, None, 100).unwrap().len(), 0);
    assert!(log.dead_letters(None, 10).unwrap().is_empty());
    log.ack("a", &[back[0].id]).unwrap();
    assert_eq!(log.group_stats("a").unwrap().pending, 0);
}

#[test]
fn cluster_urls_name_their_nodes() {
    let o = RedisOptions::from_url("redis+cluster://u:pw@h1:7000,h2:7001?prefix=x").unwrap();
    assert_eq!(
        o.cluster_nodes,
        vec!["redis://u:pw@h1:7000", "redis://u:pw@h2:7001"]
    );
    assert_eq!(o.prefix, "x");
    for bad in [
        "redis+cluster://",
        "redis+cluster://h1/3",
        "redis+cluster://h1",
    ] {
        let e = RedisOptions::from_url(bad).unwrap_err().to_string();
        assert!(e.contains("cluster URL names its nodes"), "{bad}: {e}");
    }
    let o = RedisOptions::from_url("redis://h:1/0?spool=/tmp/s.db&prefix=p").unwrap();
    assert_eq!(o.spool.as_deref(), Some(std::path::Path::new("/tmp/s.db")));
    let o = RedisOptions::from_url("redis://h:1/0?spool=default&prefix=p").unwrap();
    assert!(o
        .spool
        .unwrap()
        .ends_with(".claude-mpm/mpm-events/spool/h_1_0_p.db"));
    assert!(RedisOptions::from_url("redis://h:1/0?spool=off")
        .unwrap()
        .spool
        .is_none());
}

// ---------------------------------------------------------------- round trips per read

/// Round trips this thread has made to Redis so far.
fn round_trips() -> u64 {
    super::ROUND_TRIPS.with(|n| n.get())
}

#[test]
fn a_read_acks_the_last_batch_and_claims_the_next_in_one_round_trip() {
    if !redis_available("a_read_acks_the_last_batch_and_claims_the_next_in_one_round_trip") {
        return;
    }
    let server = RedisServer::start();
    let log = RedisLog::open(options(&server)).unwrap();
    let ids = log
        .append(&(0..30).map(|i| rec("p", i)).collect::<Vec<_>>())
        .unwrap();
    log.ensure_group("g", StartAt::Earliest).unwrap();
    // The first read of the instance on this handle also re-reads its own pending.
    let first = log.read("g", "i", 10, None).unwrap();
    assert_eq!(first.iter().map(|e| e.id).collect::<Vec<_>>(), ids[..10]);
    let (acked, second) = log
        .ack_and_read("g", "i", &ids[..10], 10, Some(Duration::from_secs(1)))
        .unwrap();
    assert_eq!((acked, second.len()), (10, 10));
    let before = round_trips();
    let (acked, third) = log
        .ack_and_read("g", "i", &ids[10..20], 10, Some(Duration::from_secs(1)))
        .unwrap();
    assert_eq!(round_trips() - before, 1, "ack + read in one pipeline");
    assert_eq!(acked, 10);
    assert_eq!(third.iter().map(|e| e.id).collect::<Vec<_>>(), ids[20..]);
    assert!(third.iter().all(|e| e.deliveries == 1));
    let g = log.group_stats("g").unwrap();
    assert_eq!(g.pending, 10, "the first two batches are acknowledged");
    // Nothing new: the pipeline, then one blocking XREADGROUP.
    let before = round_trips();
    let (acked, none) = log
        .ack_and_read("g", "i", &ids[20..], 10, Some(Duration::from_millis(50)))
        .unwrap();
    assert_eq!((acked, none.len()), (10, 0));
    assert_eq!(round_trips() - before, 2);
    assert_eq!(log.group_stats("g").unwrap().pending, 0);
    // An ack repeated counts nothing; an unknown group is named.
    assert_eq!(
        log.ack_and_read("g", "i", &ids[..3], 10, None).unwrap().0,
        0
    );
    assert_eq!(
        log.ack_and_read("nope", "i", &ids[..3], 10, None)
            .unwrap_err(),
        LogError::UnknownGroup("nope".into())
    );
}

#[test]
fn replayed_dead_letters_come_first_in_the_same_round_trip() {
    if !redis_available("replayed_dead_letters_come_first_in_the_same_round_trip") {
        return;
    }
    let server = RedisServer::start();
    let log = RedisLog::open(options(&server)).unwrap();
    let ids = log
        .append(&(0..3).map(|i| rec("p", i)).collect::<Vec<_>>())
        .unwrap();
    log.ensure_group("g", StartAt::Earliest).unwrap();
    let got = log.read("g", "i", 1, None).unwrap();
    assert_eq!(got[0].id, ids[0]);
    let dl = log.dead_letter("g", ids[0], "boom", 1).unwrap();
    assert_eq!(log.replay_dead_letters("g", Some(&[dl])).unwrap(), 1);
    let before = round_trips();
    let (_, got) = log.ack_and_read("g", "i", &[], 2, None).unwrap();
    assert_eq!(round_trips() - before, 1, "one pipeline");
    assert_eq!(got.iter().map(|e| e.id).collect::<Vec<_>>(), ids[..2]);
    assert_eq!(got.iter().map(|e| e.deliveries).collect::<Vec<_>>(), [1, 1]);
    assert_eq!(log.group_stats("g").unwrap().ready, 0);
    // The new entry that pipeline claimed beyond `max` is the next read's, at no cost.
    let before = round_trips();
    let (_, rest) = log.ack_and_read("g", "i", &[], 10, None).unwrap();
    assert_eq!(round_trips() - before, 0);
    assert_eq!(rest.iter().map(|e| e.id).collect::<Vec<_>>(), ids[2..]);
    assert_eq!(log.group_stats("g").unwrap().pending, 3);
}

#[test]
fn has_expired_sees_released_and_idle_claims_only() {
    if !redis_available("has_expired_sees_released_and_idle_claims_only") {
        return;
    }
    let server = RedisServer::start();
    let log = RedisLog::open(options(&server)).unwrap();
    let ids = log
        .append(&(0..4).map(|i| rec("p", i)).collect::<Vec<_>>())
        .unwrap();
    log.ensure_group("g", StartAt::Earliest).unwrap();
    let lease = Duration::from_secs(60);
    assert!(!log.has_expired("g", lease).unwrap(), "nothing pending");
    assert_eq!(log.read("g", "a", 4, None).unwrap().len(), 4);
    assert!(
        !log.has_expired("g", lease).unwrap(),
        "all four freshly claimed"
    );
    assert_eq!(log.release("g", "a", &ids[..1]).unwrap(), 1);
    assert!(log.has_expired("g", lease).unwrap(), "a released claim");
    assert_eq!(log.claim_expired("g", "b", lease, 10).unwrap().len(), 1);
    assert!(!log.has_expired("g", lease).unwrap(), "taken over");
    let short = Duration::from_millis(30);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log.has_expired("g", short).unwrap() {
        assert!(Instant::now() < deadline, "claims idle 30 ms never seen");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        log.has_expired("nope", lease).unwrap_err(),
        LogError::UnknownGroup("nope".into())
    );
}

#[test]
fn a_group_reader_makes_about_one_round_trip_per_read() {
    use crate::backend::reader::GroupReader;
    if !redis_available("a_group_reader_makes_about_one_round_trip_per_read") {
        return;
    }
    let server = RedisServer::start();
    let log: Arc<dyn SharedLog> = Arc::new(RedisLog::open(options(&server)).unwrap());
    log.append(&(0..400).map(|i| rec("p", i)).collect::<Vec<_>>())
        .unwrap();
    let poll = Duration::from_millis(100);
    let opts = crate::backend::reader::ReaderOptions {
        batch: 10,
        max_in_flight: 1024,
        poll,
        ..crate::backend::reader::ReaderOptions::new("g")
    };
    // NOTE: `deliver` runs on the reader thread: it reads that thread's counter.
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = GroupReader::start(log.clone(), opts, move |b| {
        tx.send((round_trips(), Instant::now(), b)).unwrap()
    })
    .unwrap();
    let mut seen = Vec::new();
    while seen
        .iter()
        .map(|(_, _, b): &(u64, Instant, Vec<_>)| b.len())
        .sum::<usize>()
        < 400
    {
        let (n, at, b) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        reader.ack(
            &b.iter()
                .map(|e: &crate::backend::Entry| e.id)
                .collect::<Vec<_>>(),
        );
        seen.push((n, at, b));
    }
    let (first, last) = (&seen[1], &seen[seen.len() - 1]);
    let reads = (seen.len() - 2) as u64;
    // One pipeline per read; besides, a `has_expired` probe every poll.
    let probes = (last.1 - first.1).as_millis() as u64 / poll.as_millis() as u64 + 1;
    let trips = last.0 - first.0;
    assert!(
        trips <= reads + probes,
        "{trips} round trips for {reads} reads and at most {probes} probes"
    );
    wait_until_caught_up(&reader);
    reader.stop().unwrap();
    assert_eq!(log.group_stats("g").unwrap().pending, 0);
}

fn wait_until_caught_up(reader: &crate::backend::reader::GroupReader) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !reader.caught_up(None).unwrap() {
        assert!(Instant::now() < deadline, "acks never written");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_forward_retried_after_a_dead_forwarder_keeps_one_copy() {
    if !redis_available("a_forward_retried_after_a_dead_forwarder_keeps_one_copy") {
        return;
    }
    use crate::backend::spool::{Spool, FORWARD_GROUP};
    use crate::backend::sqlite::{SqliteLog, SqliteOptions};
    let server = RedisServer::start();
    let log = RedisLog::open(options(&server)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool.db");
    let spool = Spool::new(&path);
    // Two publishers' records interleaved in the spool, as two hooks spooled them.
    let spooled: Vec<Record> = (0..6)
        .map(|i| rec(["a", "b"][i % 2], i as u64 / 2))
        .collect();
    for r in &spooled {
        spool.put(std::slice::from_ref(r)).unwrap();
    }
    // A forwarder that died after its Redis append and before its ack in the spool:
    // its batch (the first four) stays claimed there.
    let raw = SqliteLog::open(SqliteOptions::new(&path)).unwrap();
    let dead = raw.read(FORWARD_GROUP, "dead", 4, None).unwrap();
    let records: Vec<Record> = dead.iter().map(|e| e.record.clone()).collect();
    let first = log.append(&records).unwrap();
    // The next forward takes the dead one's batch first, again, then the rest.
    let done = spool.forward(&log).unwrap();
    assert_eq!(done.records, 6);
    let all = log.range(None, None, None, None, 100).unwrap();
    let ids: Vec<&str> = all.iter().map(|(_, x)| x.event_id.as_str()).collect();
    assert_eq!(
        ids,
        ["a-0", "b-0", "a-1", "b-1", "a-2", "b-2"],
        "one copy each, in order"
    );
    assert_eq!(
        all[..4].iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        first
    );
}
