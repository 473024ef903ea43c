//! Tests of the Socket.IO sink against a real python-socketio server
//! (`tests/helpers/sio_server.py`), started as a child process.
//!
//! The server's python is `$MPM_TEST_PYTHON`, else `.venv/bin/python` in the
//! crate root. When `MPM_TEST_PYTHON` is set (as `make test-rust` does) it must be
//! able to run the server: a server test panics saying why if it cannot (for
//! example python-socketio missing), so a broken setup never passes for a good
//! one. When it is not set and no `.venv` python has python-socketio, each server
//! test prints `SKIPPED <test>: ...` straight to the terminal (the test harness
//! would hide an ordinary `eprintln!`) and returns; cargo's harness has no
//! runtime skip, so it still counts as passed, but visibly.

use super::*;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

/// Whether `py` can run the server: Ok, or why not (the import error, or why it
/// could not be started).
fn server_python_ok(py: &Path) -> Result<(), String> {
    let out = Command::new(py)
        .args(["-c", "import socketio, aiohttp"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run it: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("").trim().to_string();
        Err(format!(
            "`import socketio, aiohttp` failed ({}): {last}",
            out.status
        ))
    }
}

/// The python for the test server, or None to skip `test` (see the module docs).
fn python(test: &str) -> Option<PathBuf> {
    if let Some(py) = std::env::var_os("MPM_TEST_PYTHON") {
        let py = PathBuf::from(py);
        if let Err(why) = server_python_ok(&py) {
            panic!(
                "{test}: MPM_TEST_PYTHON={} cannot run the Socket.IO test server: {why}. \
                 Install python-socketio[asyncio_client] and aiohttp into it (`make venv`), \
                 or unset MPM_TEST_PYTHON to skip the server tests",
                py.display()
            );
        }
        return Some(py);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    match server_python_ok(&venv) {
        Ok(()) => Some(venv),
        Err(why) => {
            // NOTE: written to the real stderr, not through eprintln!, which the
            // test harness captures and shows only for failing tests.
            let _ = writeln!(
                std::io::stderr(),
                "\nSKIPPED {test}: no python with python-socketio and aiohttp \
                 (MPM_TEST_PYTHON is not set; {}: {why})",
                venv.display()
            );
            None
        }
    }
}

/// A running `sio_server.py`; killed on drop.
struct Server {
    child: Child,
    lines: mpsc::Receiver<Value>,
    port: u16,
    /// Every `{"event": .., "data": ..}` seen so far.
    events: Vec<(String, Value)>,
    refused: usize,
}

impl Server {
    fn spawn(py: &PathBuf, port: u16, auth: Option<&str>) -> Server {
        Self::spawn_with(py, port, auth, None)
    }

    fn spawn_with(py: &PathBuf, port: u16, auth: Option<&str>, events: Option<&str>) -> Server {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/helpers/sio_server.py");
        let mut cmd = Command::new(py);
        cmd.arg(script).arg("--port").arg(port.to_string());
        if let Some(a) = auth {
            cmd.arg("--auth").arg(a);
        }
        if let Some(e) = events {
            cmd.arg("--events").arg(e);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sio_server.py");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        let first = lines
            .recv_timeout(Duration::from_secs(20))
            .expect("server did not report its port");
        let port = first["port"].as_u64().expect("port line") as u16;
        Server {
            child,
            lines,
            port,
            events: Vec::new(),
            refused: 0,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn pump(&mut self, timeout: Duration) -> bool {
        match self.lines.recv_timeout(timeout) {
            Ok(v) => {
                if let Some(ev) = v.get("event").and_then(Value::as_str) {
                    self.events.push((ev.to_string(), v["data"].clone()));
                } else if v.get("refused").is_some() {
                    self.refused += 1;
                }
                true
            }
            Err(_) => false,
        }
    }

    /// Waits (bounded) until at least `n` events were received.
    fn wait_events(&mut self, n: usize, timeout: Duration) -> &[(String, Value)] {
        let deadline = std::time::Instant::now() + timeout;
        while self.events.len() < n {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || !self.pump(left) && std::time::Instant::now() >= deadline {
                break;
            }
        }
        &self.events
    }

    /// Collects whatever arrives within `quiet` (to catch unexpected extras).
    fn drain(&mut self, quiet: Duration) {
        while self.pump(quiet) {}
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Read what it printed before dying.
        self.drain(Duration::from_millis(200));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn item(i: u64, topic: &str) -> Outgoing {
    let p = payload(
        &format!("id-{i}"),
        "test",
        topic,
        "2025-01-01T00:00:00+00:00",
        "rust-test",
        json!({ "n": i }),
        if i % 2 == 0 { Some("corr") } else { None },
    );
    Outgoing {
        // NOTE: the emitter tests use the legacy names: a mix of names, some of
        // which a server may have no handler for.
        event: event_name_for(topic, &EventNaming::Default, Protocol::Legacy).to_string(),
        payload: p,
        token: i,
    }
}

fn fast_config(url: String) -> SocketIoConfig {
    SocketIoConfig {
        url,
        reconnect_initial: Duration::from_millis(100),
        reconnect_max: Duration::from_millis(500),
        connect_timeout: Duration::from_secs(5),
        ..SocketIoConfig::default()
    }
}

/// Polls a cheap condition until true or the timeout; returns whether it held.
async fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn all_ok(d: &[Delivery]) -> bool {
    d.iter().all(|d| d.result.is_ok())
}

#[test]
fn event_names_by_protocol_prefix_and_overrides() {
    let d = EventNaming::Default;
    let legacy = |t| event_name_for(t, &d, Protocol::Legacy);
    assert_eq!(legacy("hook.pre_tool"), "hook_event");
    assert_eq!(legacy("cli.start"), "cli_event");
    assert_eq!(legacy("system.up"), "system_event");
    assert_eq!(legacy("agent.x"), "agent_event");
    assert_eq!(legacy("build.done"), "build_event");
    assert_eq!(legacy("hooks"), "claude_event");
    assert_eq!(legacy("other.thing"), "claude_event");
    for t in [
        "hook.pre_tool",
        "cli.start",
        "system.up",
        "agent.x",
        "build.done",
        "x",
    ] {
        assert_eq!(
            event_name_for(t, &d, Protocol::Dashboard),
            "claude_event",
            "{t}"
        );
        assert_eq!(
            event_name_for(t, &d, Protocol::default()),
            "claude_event",
            "{t}"
        );
    }
    let fixed = EventNaming::Fixed("custom".into());
    for protocol in [Protocol::Dashboard, Protocol::Legacy] {
        assert_eq!(event_name_for("hook.a", &fixed, protocol), "custom");
    }
    let map = EventNaming::Prefixes(vec![
        ("hook.".into(), "h".into()),
        ("hook.tool.".into(), "ht".into()),
    ]);
    for protocol in [Protocol::Dashboard, Protocol::Legacy] {
        assert_eq!(event_name_for("hook.tool.use", &map, protocol), "ht");
        assert_eq!(event_name_for("hook.x", &map, protocol), "h");
    }
    // Topics that match no prefix get the protocol's name.
    assert_eq!(event_name_for("cli.x", &map, Protocol::Legacy), "cli_event");
    assert_eq!(
        event_name_for("cli.x", &map, Protocol::Dashboard),
        "claude_event"
    );
}

#[test]
fn payload_shape_is_exact() {
    let p = payload("i", "t", "hook.a", "2025", "s", json!({"k": 1}), None);
    let keys: Vec<&String> = p.as_object().unwrap().keys().collect();
    let mut expected = vec![
        "correlation_id",
        "data",
        "id",
        "source",
        "timestamp",
        "topic",
        "type",
    ];
    expected.sort();
    let mut keys: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
    keys.sort();
    assert_eq!(keys, expected);
    assert_eq!(p["correlation_id"], Value::Null);
}

#[test]
fn url_translation() {
    assert_eq!(
        ws_url("http://127.0.0.1:8765").unwrap(),
        "ws://127.0.0.1:8765/socket.io/?EIO=4&transport=websocket"
    );
    assert_eq!(
        ws_url("http://h:1/custom").unwrap(),
        "ws://h:1/custom/?EIO=4&transport=websocket"
    );
    assert_eq!(
        ws_url("https://h:1").unwrap(),
        "wss://h:1/socket.io/?EIO=4&transport=websocket"
    );
    assert!(ws_url("ftp://h:1").is_err());
}

#[test]
fn ack_parsing() {
    assert_eq!(parse_ack("37[\"ok\"]", ""), Some(7));
    assert_eq!(parse_ack("3/x,12[]", ""), None);
    assert_eq!(parse_ack("3/x,12[]", "/x,"), Some(12));
    assert_eq!(parse_ack("2[\"e\"]", ""), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_names_and_payloads_arrive_in_order() {
    let Some(py) = python("sinks_names_and_payloads_arrive_in_order") else {
        return;
    };
    let mut server = Server::spawn(&py, 0, None);
    let sink = SocketIoSink::start(fast_config(server.url()));
    let topics = [
        "hook.pre",
        "cli.run",
        "system.up",
        "agent.go",
        "build.ok",
        "misc.x",
    ];
    let items: Vec<Outgoing> = (0..30).map(|i| item(i, topics[i as usize % 6])).collect();
    let expected: Vec<(String, Value)> = items
        .iter()
        .map(|o| (o.event.clone(), o.payload.clone()))
        .collect();
    let mut receipts = Vec::new();
    for chunk in items.chunks(7) {
        let r = sink.send(chunk.to_vec());
        assert!(r.rejected.is_empty());
        receipts.push(r.completion);
    }
    for c in receipts {
        let d = tokio::time::timeout(Duration::from_secs(20), c.wait())
            .await
            .expect("delivery in time");
        assert!(all_ok(&d), "{d:?}");
    }
    server.wait_events(30, Duration::from_secs(10));
    server.drain(Duration::from_millis(200));
    assert_eq!(server.events, expected);
    let m = sink.metrics();
    assert!(m.connected);
    assert_eq!((m.emitted, m.failed, m.buffered), (30, 0, 0));
    assert!(m.emit_latency_p50_ms > 0.0 && m.emit_latency_p99_ms >= m.emit_latency_p50_ms);
    assert!(sink.shutdown(Duration::from_secs(5)).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_emit_per_batch_sends_one_array() {
    let Some(py) = python("sinks_emit_per_batch_sends_one_array") else {
        return;
    };
    let mut server = Server::spawn(&py, 0, None);
    let cfg = SocketIoConfig {
        emit_per_batch: Some("claude_batch".into()),
        ..fast_config(server.url())
    };
    let sink = SocketIoSink::start(cfg);
    let items: Vec<Outgoing> = (0..5).map(|i| item(i, "hook.a")).collect();
    let payloads: Vec<Value> = items.iter().map(|o| o.payload.clone()).collect();
    let r = sink.send(items);
    let d = tokio::time::timeout(Duration::from_secs(20), r.completion.wait())
        .await
        .unwrap();
    assert_eq!(d.len(), 5);
    assert!(all_ok(&d));
    server.wait_events(1, Duration::from_secs(10));
    server.drain(Duration::from_millis(200));
    assert_eq!(
        server.events,
        vec![("claude_batch".to_string(), Value::Array(payloads))]
    );
    assert_eq!(sink.metrics().emitted, 5);
    assert!(sink.shutdown(Duration::from_secs(5)).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_server_restart_mid_stream_loses_nothing() {
    let Some(py) = python("sinks_server_restart_mid_stream_loses_nothing") else {
        return;
    };
    let mut first = Server::spawn(&py, 0, None);
    let port = first.port;
    let sink = SocketIoSink::start(fast_config(first.url()));
    let total: u64 = 300;
    let mut completions = Vec::new();
    for i in 0..150 {
        completions.push(sink.send(vec![item(i, "hook.a")]).completion);
        if i % 10 == 0 {
            tokio::task::yield_now().await;
        }
    }
    // Kill it mid-stream, while some items are surely in flight or pending.
    first.wait_events(50, Duration::from_secs(10));
    first.kill();
    for i in 150..total {
        completions.push(sink.send(vec![item(i, "hook.a")]).completion);
    }
    assert!(
        wait_until(Duration::from_secs(5), || !sink.metrics().connected).await,
        "sink noticed the loss"
    );
    // Every item resolves: delivered, or failed with the reason (its connection
    // attempt failed while the server was away). The caller retries the failed
    // ones, as the bus does, once the server is back.
    let mut failed = Vec::new();
    for c in completions {
        let d = tokio::time::timeout(Duration::from_secs(30), c.wait())
            .await
            .expect("every item resolves");
        for d in d {
            if let Err(why) = &d.result {
                assert!(why.contains("cannot reach the Socket.IO server"), "{why}");
                failed.push(d.token);
            }
        }
    }
    assert!(
        !failed.is_empty(),
        "attempts while the server was away fail"
    );
    let mut second = Server::spawn(&py, port, None);
    // Retry what failed, as the bus does with a delay, until it is delivered.
    let mut left = failed.clone();
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        let retried = sink.send(left.iter().map(|&i| item(i, "hook.a")).collect());
        let d = tokio::time::timeout(Duration::from_secs(30), retried.completion.wait())
            .await
            .expect("the retries resolve");
        left = d
            .iter()
            .filter(|d| d.result.is_err())
            .map(|d| d.token)
            .collect();
        left.sort_unstable();
    }
    assert!(left.is_empty(), "{} never delivered", left.len());
    second.wait_events(1, Duration::from_secs(5));
    second.drain(Duration::from_millis(300));
    let mut seen = std::collections::HashMap::<u64, usize>::new();
    for (_, data) in first.events.iter().chain(second.events.iter()) {
        *seen.entry(data["data"]["n"].as_u64().unwrap()).or_default() += 1;
    }
    let missing: Vec<u64> = (0..total).filter(|i| !seen.contains_key(i)).collect();
    let duplicates: usize = seen.values().map(|c| c - 1).sum();
    let m = sink.metrics();
    eprintln!(
        "restart: first got {}, second got {}, failed {}, duplicates {duplicates}, resent {}",
        first.events.len(),
        second.events.len(),
        failed.len(),
        m.resent,
    );
    assert!(missing.is_empty(), "lost items: {missing:?}");
    assert!(
        duplicates as u64 <= m.maybe_duplicated,
        "duplicates only where an ack was lost"
    );
    assert!(m.unreachable >= failed.len() as u64);
    // Order is preserved within each server's stream.
    for s in [&first, &second] {
        let ns: Vec<u64> = s
            .events
            .iter()
            .map(|(_, d)| d["data"]["n"].as_u64().unwrap())
            .collect();
        assert!(ns.windows(2).all(|w| w[0] < w[1]), "in order: {ns:?}");
    }
    assert!(sink.shutdown(Duration::from_secs(5)).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_no_server_fails_fast_then_one_appears() {
    let Some(py) = python("sinks_no_server_fails_fast_then_one_appears") else {
        return;
    };
    let port = free_port();
    let cfg = SocketIoConfig {
        reconnect_initial: Duration::from_millis(200),
        reconnect_max: Duration::from_secs(1),
        ..fast_config(format!("http://127.0.0.1:{port}"))
    };
    let sink = SocketIoSink::start(cfg);
    let r = sink.send((0..20).map(|i| item(i, "system.x")).collect());
    assert!(r.rejected.is_empty());
    // The connection attempt they wait for is refused: all fail with the reason.
    let d = tokio::time::timeout(Duration::from_secs(5), r.completion.wait())
        .await
        .expect("failed at once, not after ack_timeout");
    assert_eq!(d.len(), 20);
    assert!(d
        .iter()
        .all(|d| d.result.as_ref().is_err_and(|e| e.contains("refused"))));
    let m = sink.metrics();
    assert!(!m.connected);
    assert_eq!(
        (m.buffered, m.failed, m.unreachable, m.emitted),
        (0, 20, 20, 0)
    );
    assert!(m.last_error.is_some());
    // A retry right after the failed attempt fails at once too (no new attempt
    // is due yet), so a draining caller never waits a reconnect delay per retry.
    let again = sink
        .send(vec![item(20, "system.x")])
        .completion
        .wait()
        .await;
    assert!(again[0]
        .result
        .as_ref()
        .is_err_and(|e| e.contains("ms ago")));
    let mut server = Server::spawn(&py, port, None);
    // A send after the reconnect delay starts an attempt on demand: delivered.
    let mut delivered = None;
    for _ in 0..50 {
        let d = sink
            .send(vec![item(21, "system.x")])
            .completion
            .wait()
            .await;
        if all_ok(&d) {
            delivered = Some(d);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(delivered.is_some(), "delivered once the server appears");
    server.wait_events(1, Duration::from_secs(5));
    assert!(sink.metrics().last_error.is_none());
    assert!(sink.shutdown(Duration::from_secs(5)).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_refused_auth_fails_items_and_reports_error() {
    let Some(py) = python("sinks_refused_auth_fails_items_and_reports_error") else {
        return;
    };
    let mut server = Server::spawn(&py, 0, Some("s3cret"));
    let cfg = SocketIoConfig {
        auth: Some(json!({ "token": "wrong" })),
        ..fast_config(server.url())
    };
    let sink = SocketIoSink::start(cfg);
    let r = sink.send((0..10).map(|i| item(i, "hook.a")).collect());
    assert!(r.rejected.is_empty());
    let d = tokio::time::timeout(Duration::from_secs(10), r.completion.wait())
        .await
        .unwrap();
    assert_eq!(d.len(), 10);
    assert!(
        d.iter().all(|d| d
            .result
            .as_ref()
            .is_err_and(|e| e.contains("bad auth token"))),
        "{d:?}"
    );
    let m = sink.metrics();
    assert!(!m.connected);
    assert_eq!((m.buffered, m.emitted, m.failed), (0, 0, 10));
    // Idle, it keeps reconnecting with backoff, not in a hot loop: with 100 ms
    // doubling to 500 ms, ~3 s allow < 15 tries.
    assert!(
        wait_until(Duration::from_secs(10), || sink.metrics().connect_attempts
            >= 3)
        .await,
        "keeps retrying"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let attempts = sink.metrics().connect_attempts;
    assert!(attempts < 15, "backing off: {attempts} attempts");
    server.drain(Duration::from_millis(200));
    assert!(server.events.is_empty());
    assert!(server.refused >= 3);
    assert!(sink.shutdown(Duration::from_millis(300)).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_accepted_auth_delivers() {
    let Some(py) = python("sinks_accepted_auth_delivers") else {
        return;
    };
    let mut server = Server::spawn(&py, 0, Some("s3cret"));
    let cfg = SocketIoConfig {
        auth: Some(json!({ "token": "s3cret" })),
        headers: vec![("X-Test".into(), "1".into())],
        ..fast_config(server.url())
    };
    let sink = SocketIoSink::start(cfg);
    let r = sink.send(vec![item(1, "cli.a")]);
    let d = tokio::time::timeout(Duration::from_secs(20), r.completion.wait())
        .await
        .unwrap();
    assert!(all_ok(&d));
    assert_eq!(server.wait_events(1, Duration::from_secs(5)).len(), 1);
    assert!(sink.shutdown(Duration::from_secs(5)).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_overflow_hands_items_back() {
    // No server: a port nothing listens on, and a connect timeout long enough
    // that the items are still waiting when we look.
    let cfg = SocketIoConfig {
        buffer_limit: 5,
        ..fast_config("http://10.255.255.1:9".to_string())
    };
    let sink = SocketIoSink::start(cfg);
    let r = sink.send((0..8).map(|i| item(i, "hook.a")).collect());
    let rejected: Vec<u64> = r.rejected.iter().map(|o| o.token).collect();
    assert_eq!(rejected, vec![5, 6, 7]);
    assert_eq!(r.completion.tokens(), &[0, 1, 2, 3, 4]);
    let r2 = sink.send(vec![item(9, "hook.a")]);
    assert_eq!(r2.rejected.len(), 1);
    assert!(r2.completion.wait().await.is_empty());
    let m = sink.metrics();
    assert_eq!((m.rejected, m.failed), (4, 4));
    assert!(m.buffered <= 5);
    let back = sink.shutdown(Duration::from_millis(200)).await;
    assert!(back.len() <= 5);
    let d = r.completion.wait().await;
    assert_eq!(d.len(), 5);
    assert!(d.iter().all(|d| d.result.is_err()));
    // After shutdown everything is rejected.
    assert_eq!(sink.send(vec![item(10, "hook.a")]).rejected.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_shutdown_flushes_a_single_item() {
    let Some(py) = python("sinks_shutdown_flushes_a_single_item") else {
        return;
    };
    let mut server = Server::spawn(&py, 0, None);
    // Like a short-lived hook process: start, send one, shut down at once.
    let sink = SocketIoSink::start(fast_config(server.url()));
    let r = sink.send(vec![item(42, "hook.post")]);
    let undelivered = sink.shutdown(Duration::from_secs(10)).await;
    assert!(undelivered.is_empty());
    let d = r.completion.wait().await;
    assert_eq!(
        d,
        vec![Delivery {
            token: 42,
            result: Ok(())
        }]
    );
    assert_eq!(server.wait_events(1, Duration::from_secs(5)).len(), 1);
    assert_eq!(server.events[0].0, "hook_event");
    assert!(!sink.metrics().connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_unacked_events_fail_after_ack_timeout() {
    let Some(py) = python("sinks_unacked_events_fail_after_ack_timeout") else {
        return;
    };
    // Only claude_event has a handler: hook_event reaches the server un-acked.
    let mut server = Server::spawn_with(&py, 0, None, Some("claude_event"));
    let cfg = SocketIoConfig {
        ack_timeout: Duration::from_millis(300),
        ..fast_config(server.url())
    };
    let sink = SocketIoSink::start(cfg);
    let r1 = sink.send(vec![item(1, "hook.a")]);
    let r2 = sink.send(vec![item(2, "other.a")]);
    let d1 = tokio::time::timeout(Duration::from_secs(20), r1.completion.wait())
        .await
        .unwrap();
    let d2 = tokio::time::timeout(Duration::from_secs(20), r2.completion.wait())
        .await
        .unwrap();
    let why = d1[0].result.clone().unwrap_err();
    assert!(
        why.contains("no ack from the Socket.IO server within 0.300s"),
        "{why}"
    );
    assert!(all_ok(&d2));
    server.wait_events(1, Duration::from_secs(5));
    server.drain(Duration::from_millis(200));
    assert_eq!(server.events.len(), 1);
    assert_eq!(server.events[0].0, "claude_event");
    let m = sink.metrics();
    assert_eq!(
        (m.emitted, m.failed, m.ack_timeouts, m.unacked, m.buffered),
        (1, 1, 1, 0, 0)
    );
    assert!(sink.shutdown(Duration::from_secs(5)).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_without_require_ack_written_counts_delivered() {
    let Some(py) = python("sinks_without_require_ack_written_counts_delivered") else {
        return;
    };
    let mut server = Server::spawn_with(&py, 0, None, Some("claude_event"));
    let cfg = SocketIoConfig {
        require_ack: false,
        ..fast_config(server.url())
    };
    let sink = SocketIoSink::start(cfg);
    let r = sink.send(vec![item(1, "hook.a"), item(2, "other.a")]);
    let d = tokio::time::timeout(Duration::from_secs(20), r.completion.wait())
        .await
        .unwrap();
    assert!(all_ok(&d));
    server.wait_events(1, Duration::from_secs(5));
    let m = sink.metrics();
    assert_eq!((m.emitted, m.unacked, m.failed), (2, 2, 0));
    assert!(sink.shutdown(Duration::from_secs(5)).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_shutdown_fails_items_still_unacked_at_the_deadline() {
    let Some(py) = python("sinks_shutdown_fails_items_still_unacked_at_the_deadline") else {
        return;
    };
    let server = Server::spawn_with(&py, 0, None, Some("claude_event"));
    let cfg = SocketIoConfig {
        ack_timeout: Duration::from_secs(60),
        ..fast_config(server.url())
    };
    let sink = SocketIoSink::start(cfg);
    assert!(wait_until(Duration::from_secs(10), || sink.metrics().connected).await);
    let r = sink.send(vec![item(1, "hook.a")]);
    assert!(wait_until(Duration::from_secs(5), || sink.metrics().in_flight == 1).await);
    // The ack never comes: at the shutdown deadline the item is handed back, failed.
    let started = Instant::now();
    let undelivered = sink.shutdown(Duration::from_millis(300)).await;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(undelivered.len(), 1);
    let d = r.completion.wait().await;
    assert!(d[0].result.is_err());
    assert_eq!(sink.metrics().emitted, 0);
}
