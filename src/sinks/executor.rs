//! Running a lane's jobs in a Rust [`Sink`] on the Tokio runtime, without the GIL.

use std::sync::Arc;
use std::time::Duration;

use crate::dispatch::{EventLike, Executor, Job, Outcome};
use crate::event::EventView;

use super::{Sink, SinkFailure, SinkItem};

/// An event a sink can take: its fields, copied once at publish.
pub trait SinkEvent: EventLike {
    /// The fields copied at publish; None if the route needed no copy.
    fn view(&self) -> Option<&Arc<EventView>>;
}

/// Runs a lane's jobs in a sink: one `consume` call per job, bounded by `timeout`.
pub struct SinkExecutor {
    /// The sink.
    pub sink: Arc<dyn Sink>,
    /// Per-call timeout.
    pub timeout: Duration,
    /// The runtime the calls run on.
    pub runtime: tokio::runtime::Handle,
}

/// Jobs of at most this many items go to an [`Sink::runs_inline`] sink on the
/// thread that hands them over.
pub const INLINE_MAX_ITEMS: usize = 16;

impl<E: SinkEvent> Executor<E> for SinkExecutor {
    fn execute(&self, job: Arc<Job<E>>) {
        let sink = self.sink.clone();
        let timeout = self.timeout;
        // NOTE: at paced rates (tens to a thousand events a second) every job is one
        // event, and handing it to a Tokio task wakes a worker thread per event (two
        // context switches and its CPU, W13 in issue 16). A sink whose calls do their
        // work at once (the metrics counters) is called here instead; if its future
        // is not done on the first poll, the rest runs on the runtime as before.
        // Large jobs (a saturated stream, publish_batch) still run on the runtime, in
        // parallel with the publisher.
        if sink.runs_inline() && job.items.len() <= INLINE_MAX_ITEMS {
            let (pre, items) = prepare(&sink, &job);
            if items.is_empty() {
                finish(&job, pre, Vec::new());
                return;
            }
            let mut fut = sink.clone().consume_detailed(items);
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            if let std::task::Poll::Ready(results) = fut.as_mut().poll(&mut cx) {
                finish(&job, pre, results);
                return;
            }
            self.runtime.spawn(async move {
                match tokio::time::timeout(timeout, fut).await {
                    Ok(results) => finish(&job, pre, results),
                    Err(_) => job.fail_rest(&timed_out(timeout)),
                }
            });
            return;
        }
        self.runtime.spawn(async move {
            let (pre, items) = prepare(&sink, &job);
            let results = if items.is_empty() {
                Vec::new()
            } else {
                match tokio::time::timeout(timeout, sink.clone().consume_detailed(items)).await {
                    Ok(results) => results,
                    Err(_) => return job.fail_rest(&timed_out(timeout)),
                }
            };
            finish(&job, pre, results);
        });
    }
}

fn timed_out(timeout: Duration) -> String {
    format!("consume timed out after {:.3}s", timeout.as_secs_f64())
}

/// The job's items the sink can take, and the outcomes of those it cannot (by
/// position; `None` where the sink decides).
fn prepare<E: SinkEvent>(
    sink: &Arc<dyn Sink>,
    job: &Job<E>,
) -> (Vec<Option<Outcome>>, Vec<SinkItem>) {
    let needs_data = sink.needs_data();
    let mut pre: Vec<Option<Outcome>> = vec![None; job.items.len()];
    let mut items = Vec::with_capacity(job.items.len());
    for (i, d) in job.items.iter().enumerate() {
        match d.entry.event.view() {
            Some(v) if !needs_data || v.data.is_some() => items.push(SinkItem {
                view: v.clone(),
                attempt: d.attempt(),
            }),
            Some(v) => {
                let why = v
                    .data_error
                    .clone()
                    .unwrap_or_else(|| "payload not converted".into());
                pre[i] = Some(Outcome::Failure(format!(
                    "cannot convert the payload for a Rust consumer: {why}"
                )));
            }
            None => {
                pre[i] = Some(Outcome::Failure(
                    "event fields were not captured at publish".into(),
                ))
            }
        }
    }
    (pre, items)
}

/// Records the job's outcomes (the sink's `results` fill the places `pre` left
/// open) and finishes it.
fn finish<E: SinkEvent>(
    job: &Arc<Job<E>>,
    pre: Vec<Option<Outcome>>,
    results: Vec<Result<(), SinkFailure>>,
) {
    let mut results = results.into_iter();
    let outcomes: Vec<Outcome> = pre
        .into_iter()
        .map(|p| {
            p.unwrap_or_else(|| match results.next() {
                Some(Ok(())) => Outcome::Success,
                Some(Err(SinkFailure::Retry(e))) => Outcome::Failure(e),
                Some(Err(SinkFailure::RetryNotBefore(e, at_least))) => {
                    Outcome::FailureNotBefore(e, at_least)
                }
                Some(Err(SinkFailure::Permanent(e))) => Outcome::Rejected(e),
                None => Outcome::Failure("the consumer reported no outcome for this event".into()),
            })
        })
        .collect();
    job.record_all(outcomes);
    job.finish();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::{Engine, LaneConfig, ViewNeeds};
    use crate::event::MetaState;
    use crate::retry::RetryPolicy;
    use crate::sinks::BoxFuture;
    use crate::topic::Pattern;
    use parking_lot::Mutex;
    use serde_json::{json, Value};
    use std::time::Instant;

    struct Ev {
        view: Option<Arc<EventView>>,
    }
    impl EventLike for Ev {
        fn topic(&self) -> &str {
            "a.b"
        }
        fn priority(&self) -> u8 {
            3
        }
        fn on_retry(&self, _: u32) {}
        fn on_success(&self, _: &Arc<str>) {}
        fn on_failure(&self, _: &Arc<str>, _: &str) {}
    }
    impl SinkEvent for Ev {
        fn view(&self) -> Option<&Arc<EventView>> {
            self.view.as_ref()
        }
    }

    /// Fails the events whose id starts with "bad", hangs on "slow".
    #[derive(Default)]
    struct Picky(Mutex<Vec<String>>);
    impl Sink for Picky {
        fn needs_data(&self) -> bool {
            true
        }
        fn consume(self: Arc<Self>, items: Vec<SinkItem>) -> BoxFuture<Vec<Result<(), String>>> {
            Box::pin(async move {
                let mut out = Vec::new();
                for i in &items {
                    if i.view.id.starts_with("slow") {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                    self.0.lock().push(i.view.id.to_string());
                    out.push(if i.view.id.starts_with("bad") {
                        Err("rejected".into())
                    } else {
                        Ok(())
                    });
                }
                out
            })
        }
        fn metrics(&self) -> Value {
            json!({})
        }
    }

    fn view(id: &str, data: bool) -> Option<Arc<EventView>> {
        Some(Arc::new(EventView {
            id: id.into(),
            topic: "a.b".into(),
            event_type: "T".into(),
            source: "s".into(),
            timestamp: chrono::Utc::now(),
            data: data.then(|| json!({"k": 1})),
            data_error: (!data).then(|| "not JSON".to_string()),
            correlation_id: None,
            priority: 3,
            meta: Arc::new(Mutex::new(MetaState::default())),
        }))
    }

    fn run(events: Vec<Ev>, timeout: Duration) -> (Engine<Ev>, Arc<Picky>) {
        let sink = Arc::new(Picky::default());
        (run_with(sink.clone(), 0, events, timeout), sink)
    }

    fn run_with(
        sink: Arc<dyn Sink>,
        max_retries: u32,
        events: Vec<Ev>,
        timeout: Duration,
    ) -> Engine<Ev> {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let engine: Engine<Ev> = Engine::new(rt.handle().clone(), 100, 100);
        engine.add_lane(
            LaneConfig {
                name: "sink".into(),
                priority: 3,
                batch_size: 10,
                batch_timeout: Duration::ZERO,
                retry: RetryPolicy {
                    max_retries,
                    retry_delay: Duration::from_millis(1),
                    ..RetryPolicy::default()
                },
                timeout,
                engine_timeout: false,
                chunk: 64,
                needs_view: ViewNeeds::FieldsAndData,
                ordered: false,
                honours_cut: false,
                rule: None,
            },
            vec![Pattern::parse("**").unwrap()],
            None,
            Arc::new(SinkExecutor {
                sink,
                timeout,
                runtime: rt.handle().clone(),
            }),
        );
        engine.start();
        for e in events {
            engine.publish(Arc::new(e)).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !engine.is_idle() {
            assert!(Instant::now() < deadline, "the sink's jobs did not finish");
            std::thread::sleep(Duration::from_millis(2));
        }
        // NOTE: keep the runtime alive until the checks are done.
        std::mem::forget(rt);
        engine
    }

    /// Rejects "reject-*" for good, asks "later-*" to wait 200 ms once.
    #[derive(Default)]
    struct Verdicts(Mutex<Vec<(String, Instant)>>);
    impl Sink for Verdicts {
        fn needs_data(&self) -> bool {
            false
        }
        fn consume(self: Arc<Self>, _: Vec<SinkItem>) -> BoxFuture<Vec<Result<(), String>>> {
            unreachable!("the executor calls consume_detailed")
        }
        fn consume_detailed(
            self: Arc<Self>,
            items: Vec<SinkItem>,
        ) -> BoxFuture<Vec<Result<(), SinkFailure>>> {
            Box::pin(async move {
                items
                    .iter()
                    .map(|i| {
                        self.0.lock().push((i.view.id.to_string(), Instant::now()));
                        if i.view.id.starts_with("reject") {
                            Err(SinkFailure::Permanent("HTTP 400: no".into()))
                        } else if i.view.id.starts_with("later") && i.attempt == 0 {
                            Err(SinkFailure::RetryNotBefore(
                                "HTTP 429".into(),
                                Duration::from_millis(200),
                            ))
                        } else {
                            Ok(())
                        }
                    })
                    .collect()
            })
        }
        fn metrics(&self) -> Value {
            json!({})
        }
    }

    #[test]
    fn permanent_failures_skip_retries_and_retry_hints_delay_them() {
        let sink = Arc::new(Verdicts::default());
        let engine = run_with(
            sink.clone(),
            5,
            vec![
                Ev {
                    view: view("reject-1", true),
                },
                Ev {
                    view: view("later-1", true),
                },
            ],
            Duration::from_secs(5),
        );
        let seen = sink.0.lock().clone();
        let tries = |p: &str| seen.iter().filter(|(id, _)| id.starts_with(p)).count();
        assert_eq!(tries("reject"), 1, "a permanent failure is not retried");
        assert_eq!(tries("later"), 2);
        let later: Vec<_> = seen.iter().filter(|(id, _)| id == "later-1").collect();
        assert!(later[1].1 - later[0].1 >= Duration::from_millis(200));
        let dead = engine.dead_letters();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].errors, vec!["HTTP 400: no".to_string()]);
        assert_eq!(engine.counters().processed, 1);
    }

    #[test]
    fn outcomes_follow_the_sink_and_the_views() {
        let (engine, sink) = run(
            vec![
                Ev {
                    view: view("ok-1", true),
                },
                Ev {
                    view: view("bad-1", true),
                },
                Ev {
                    view: view("nodata", false),
                },
                Ev { view: None },
            ],
            Duration::from_secs(5),
        );
        let seen = sink.0.lock().clone();
        assert_eq!(
            seen,
            vec!["ok-1".to_string(), "bad-1".to_string()],
            "only events with a converted payload reach the sink"
        );
        let dead = engine.dead_letters();
        let errors: Vec<_> = dead.iter().map(|d| d.errors[0].clone()).collect();
        assert_eq!(dead.len(), 3);
        assert!(errors.contains(&"rejected".to_string()));
        assert!(errors
            .iter()
            .any(|e| e == "cannot convert the payload for a Rust consumer: not JSON"));
        assert!(errors
            .iter()
            .any(|e| e == "event fields were not captured at publish"));
        assert_eq!(engine.counters().processed, 1);
    }

    #[test]
    fn a_sink_call_past_its_timeout_fails_the_batch() {
        let (engine, _) = run(
            vec![Ev {
                view: view("slow-1", true),
            }],
            Duration::from_millis(50),
        );
        let dead = engine.dead_letters();
        assert_eq!(dead.len(), 1);
        assert_eq!(
            dead[0].errors,
            vec!["consume timed out after 0.050s".to_string()]
        );
    }
}
