//! Rust-level benchmarks of routing and dispatch (`cargo bench --no-default-features`).

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use _core::dispatch::{Engine, EventLike, Executor, Job, LaneConfig, Outcome};
use _core::retry::RetryPolicy;
use _core::topic::{Pattern, Router};

fn router_with(n: usize) -> Router {
    let mut r = Router::new();
    r.add(0, 3, &[Pattern::parse("hook.**").unwrap()], None);
    for i in 1..=n {
        let p = Pattern::parse(&format!("idle.{i}.*")).unwrap();
        r.add(i, 3, &[p], None);
    }
    r
}

fn routing(c: &mut Criterion) {
    let mut g = c.benchmark_group("route");
    for n in [1usize, 100, 10_000] {
        let r = router_with(n);
        g.bench_with_input(BenchmarkId::new("cached", n), &r, |b, r| {
            b.iter(|| black_box(r.route(black_box("hook.tool"))))
        });
        // NOTE: more distinct topics than the router caches, so lookups walk the trie.
        let topics: Vec<String> = (0..20_000).map(|i| format!("hook.t{i}.x")).collect();
        g.bench_with_input(BenchmarkId::new("uncached", n), &r, |b, r| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % topics.len();
                black_box(r.route(&topics[i]))
            })
        });
    }
    g.finish();
}

struct Ev(String);

impl EventLike for Ev {
    fn topic(&self) -> &str {
        &self.0
    }
    fn priority(&self) -> u8 {
        3
    }
    fn on_retry(&self, _: u32) {}
    fn on_success(&self, _: &Arc<str>) {}
    fn on_failure(&self, _: &Arc<str>, _: &str) {}
}

/// Finishes every job at once, on the publishing thread.
struct Inline(AtomicU64);

impl Executor<Ev> for Inline {
    fn execute(&self, job: Arc<Job<Ev>>) {
        self.0.fetch_add(job.items.len() as u64, Ordering::Relaxed);
        job.record_all(std::iter::repeat_n(Outcome::Success, job.items.len()));
        job.finish();
    }
}

fn dispatch(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("dispatch");
    g.throughput(Throughput::Elements(1));
    for consumers in [1usize, 5] {
        let engine: Engine<Ev> = Engine::new(rt.handle().clone(), 1 << 20, 16);
        for i in 0..consumers {
            let cfg = LaneConfig {
                name: format!("c{i}").into(),
                priority: 3,
                batch_size: 1,
                batch_timeout: Duration::ZERO,
                retry: RetryPolicy::default(),
                timeout: Duration::from_secs(30),
                engine_timeout: false,
                chunk: 512,
                needs_view: _core::dispatch::ViewNeeds::Nothing,
                honours_cut: true,
                ordered: false,
                rule: None,
            };
            engine.add_lane(
                cfg,
                vec![Pattern::parse("hook.**").unwrap()],
                None,
                Arc::new(Inline(AtomicU64::new(0))),
            );
        }
        engine.start();
        g.bench_function(BenchmarkId::new("publish_and_deliver", consumers), |b| {
            b.iter(|| engine.publish(Arc::new(Ev("hook.tool".into()))).unwrap())
        });
        if consumers == 1 {
            // NOTE: W6's bound (issue 16): the bus hands `publish_batch` to the engine in
            // slices of 2,048 events (`PUBLISH_SLICE` in src/python/bus/mod.rs).
            let route = engine.route_topic("hook.tool").unwrap();
            g.throughput(Throughput::Elements(BATCH as u64));
            g.bench_function(BenchmarkId::new("publish_many", BATCH), |b| {
                b.iter(|| {
                    let batch: Vec<_> = (0..BATCH)
                        .map(|_| (Arc::new(Ev("hook.tool".into())), route.clone()))
                        .collect();
                    engine.publish_many(batch)
                })
            });
            g.throughput(Throughput::Elements(1));
        }
    }
    g.finish();
}

const BATCH: usize = 2048;

/// The anchor of issue 16: what a tokio unbounded channel costs per boxed item, on
/// one thread and from one thread to a task on a worker thread, in the same run as
/// `dispatch/publish_and_deliver/1`.
fn channel(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("channel");
    g.throughput(Throughput::Elements(1));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Box<Ev>>();
    g.bench_function("unbounded_send_recv/one_thread", |b| {
        b.iter(|| {
            tx.send(Box::new(Ev("hook.tool".into()))).unwrap();
            black_box(rx.try_recv().unwrap())
        })
    });
    g.bench_function("unbounded_send_recv/cross_thread", |b| {
        b.iter_custom(|iters| {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Box<Ev>>();
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            rt.spawn(async move {
                let mut n = 0u64;
                while let Some(item) = rx.recv().await {
                    black_box(item);
                    n += 1;
                    if n == iters {
                        break;
                    }
                }
                done_tx.send(()).unwrap();
            });
            let t0 = std::time::Instant::now();
            for _ in 0..iters {
                tx.send(Box::new(Ev("hook.tool".into()))).unwrap();
            }
            done_rx.recv().unwrap();
            t0.elapsed()
        })
    });
    g.finish();
}

/// W8's bound (issue 16): a bare rusqlite loop that inserts the same rows as the
/// durable store (its `events` table, 12 columns, a JSON payload) in groups of 256 (W8's
/// 256 publishing tasks), one transaction per group, WAL with `synchronous=FULL` (one
/// fsync per group, as `durability="sync"`).
fn sqlite(c: &mut Criterion) {
    const GROUP: usize = 256;
    let dir = std::env::temp_dir().join(format!("mpm-bench-sqlite-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("floor.db");
    let _ = std::fs::remove_file(&path);
    let mut conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute_batch(
        "CREATE TABLE events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, topic TEXT NOT NULL,
            event_type TEXT NOT NULL, source TEXT NOT NULL, timestamp_us INTEGER NOT NULL,
            published_us INTEGER NOT NULL, priority INTEGER NOT NULL, correlation_id TEXT,
            codec INTEGER NOT NULL DEFAULT 0, data BLOB NOT NULL, size_bytes INTEGER NOT NULL,
            targets TEXT);
         CREATE INDEX events_by_time ON events (timestamp_us, seq);",
    )
    .unwrap();
    let mut g = c.benchmark_group("sqlite");
    g.throughput(Throughput::Elements(GROUP as u64));
    let mut n = 0i64;
    g.bench_function(BenchmarkId::new("insert_group_sync", GROUP), |b| {
        b.iter(|| {
            let tx = conn.transaction().unwrap();
            {
                let mut ins = tx
                    .prepare_cached(
                        "INSERT INTO events (id, topic, event_type, source, timestamp_us, \
                         published_us, priority, correlation_id, codec, data, size_bytes, \
                         targets) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                    )
                    .unwrap();
                for _ in 0..GROUP {
                    n += 1;
                    let id = format!("{n:032x}");
                    let data = format!(
                        r#"{{"tool":"Bash","params":{{"command":"ls -la","n":{n}}},"result":null}}"#
                    );
                    ins.execute(rusqlite::params![
                        id,
                        "hook.tool",
                        "ToolUse",
                        "hook_handler",
                        n,
                        n,
                        3,
                        Option::<String>::None,
                        0,
                        data.as_bytes(),
                        data.len() as i64,
                        Option::<String>::None
                    ])
                    .unwrap();
                }
            }
            tx.commit().unwrap();
        })
    });
    g.finish();
    drop(conn);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `n` consumer rules on tool-use events: most name one tool (an exact value
/// under `data.tool`), the rest mix prefixes, numeric ranges and anything-but.
fn consumer_rules(n: usize) -> Vec<serde_json::Value> {
    use serde_json::json;
    (0..n)
        .map(|i| match i % 4 {
            0 | 1 => json!({"topic": [{"prefix": "hook."}], "data": {"tool": [format!("tool-{i}")]}}),
            2 => json!({"data": {"tool": [format!("tool-{i}")], "size": [{"numeric": [">", 100]}]}}),
            _ => json!({"type": [format!("Type{i}")], "data": {"file": [{"prefix": format!("/src/{i}/")}]}}),
        })
        .collect()
}

fn rules(c: &mut Criterion) {
    use _core::event::EventView;
    use _core::rules::{EventDoc, Rule, RuleSet};
    let mut g = c.benchmark_group("rules");
    g.throughput(Throughput::Elements(1));
    // NOTE: the document of a tool-use event as routing builds it: the fields the
    // rules name, the payload borrowed from the view.
    let views: Vec<EventView> = (0..1024)
        .map(|k| EventView {
            id: format!("e-{k}").into(),
            topic: "hook.pre_tool".into(),
            event_type: "PreToolUse".into(),
            source: "hook_handler".into(),
            timestamp: chrono::Utc::now(),
            data: Some(serde_json::json!({
                "tool": format!("tool-{}", (k * 37) % 10_000),
                "size": k,
                "file": format!("/src/{}/main.rs", k % 50),
                "session_id": "s-1",
                "params": {"command": "ls -la", "timeout": 30},
            })),
            data_error: None,
            correlation_id: None,
            priority: 3,
            meta: Default::default(),
        })
        .collect();
    for n in [10usize, 10_000] {
        let mut set = RuleSet::default();
        for r in consumer_rules(n) {
            set.add(Rule::compile(&r).unwrap());
        }
        g.bench_with_input(BenchmarkId::new("combined", n), &set, |b, set| {
            let mut i = 0;
            let mut out = Vec::new();
            b.iter(|| {
                i = (i + 1) % views.len();
                let doc = EventDoc::of(&views[i], |k| matches!(k, "topic" | "type" | "data"));
                set.matching_doc(&doc, &mut out);
                black_box(out.len())
            })
        });
    }
    g.finish();
}

fn schema(c: &mut Criterion) {
    use _core::schema::{OnInvalid, Schema, Schemas};
    use serde_json::json;
    let mut g = c.benchmark_group("schema");
    g.throughput(Throughput::Elements(1));
    // NOTE: mpm_events.schemas.TOOL_USE and a publish_tool_use payload.
    let tool_use = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["params", "tool"],
        "properties": {"tool": {"type": "string", "minLength": 1}, "params": {"type": "object"}, "result": {}}
    });
    let payload = json!({"tool": "Bash", "params": {"command": "ls -la", "n": 7}, "result": null});
    let reg = Schemas::default();
    reg.register(Schema::compile("hook.tool", &tool_use, OnInvalid::Raise).unwrap());
    // What publish does per event: the topic's schemas (cached), then the check.
    g.bench_function("tool_use_check", |b| {
        b.iter(|| {
            let list = reg.for_topic(black_box("hook.tool"));
            black_box(reg.check("hook.tool", &list, black_box(&payload)).is_none())
        })
    });
    g.finish();
}

criterion_group!(benches, routing, dispatch, channel, sqlite, rules, schema);
criterion_main!(benches);
