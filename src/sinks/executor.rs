//! Running a lane's jobs in a Rust [`Sink`] on the Tokio runtime, without the GIL.

use std::sync::Arc;
use std::time::Duration;

use crate::dispatch::{EventLike, Executor, Job, Outcome};
use crate::event::EventView;

use super::{Sink, SinkItem};

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

impl<E: SinkEvent> Executor<E> for SinkExecutor {
    fn execute(&self, job: Arc<Job<E>>) {
        let sink = self.sink.clone();
        let timeout = self.timeout;
        self.runtime.spawn(async move {
            let outcomes = run_job(&sink, &job, timeout).await;
            match outcomes {
                Some(outcomes) => {
                    job.record_all(outcomes);
                    job.finish();
                }
                None => job.fail_rest(&format!(
                    "consume timed out after {:.3}s",
                    timeout.as_secs_f64()
                )),
            }
        });
    }
}

/// The job's outcomes, or None if the sink's call timed out.
async fn run_job<E: SinkEvent>(
    sink: &Arc<dyn Sink>,
    job: &Job<E>,
    timeout: Duration,
) -> Option<Vec<Outcome>> {
    let needs_data = sink.needs_data();
    let mut pre: Vec<Option<Outcome>> = vec![None; job.items.len()];
    let mut items = Vec::with_capacity(job.items.len());
    for (i, d) in job.items.iter().enumerate() {
        match d.entry.event.view() {
            Some(v) if !needs_data || v.data.is_some() => items.push(SinkItem {
                view: v.clone(),
                attempt: d.attempt(),
                // NOTE: handed back with an item the sink could not deliver later
                // (Socket.IO at shutdown), so the engine dead-letters this event.
                origin: Some(d.entry.clone()),
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
    let results = if items.is_empty() {
        Vec::new()
    } else {
        tokio::time::timeout(timeout, sink.clone().consume(items))
            .await
            .ok()?
    };
    let mut results = results.into_iter();
    Some(
        pre.into_iter()
            .map(|p| {
                p.unwrap_or_else(|| match results.next() {
                    Some(Ok(())) => Outcome::Success,
                    Some(Err(e)) => Outcome::Failure(e),
                    None => {
                        Outcome::Failure("the consumer reported no outcome for this event".into())
                    }
                })
            })
            .collect(),
    )
}
