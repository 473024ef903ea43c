//! The dead-letter fan-out: every dead letter of the bus reaches each sink that
//! wants them (the `DeadLetterConsumer`s).

use std::sync::Arc;

use parking_lot::RwLock;

use super::{Sink, SinkItem};

/// The sinks that receive every dead letter.
#[derive(Default)]
pub struct DeadLetterSinks {
    sinks: RwLock<Vec<Arc<dyn Sink>>>,
}

impl DeadLetterSinks {
    /// Adds a sink.
    pub fn add(&self, sink: Arc<dyn Sink>) {
        self.sinks.write().push(sink);
    }

    /// Removes a sink (compared by pointer).
    pub fn remove(&self, sink: &Arc<dyn Sink>) {
        self.sinks.write().retain(|s| !Arc::ptr_eq(s, sink));
    }

    /// True when no sink wants dead letters (the fan-out is skipped).
    pub fn is_empty(&self) -> bool {
        self.sinks.read().is_empty()
    }

    /// Hands one dead letter to every sink.
    pub fn fan_out(&self, item: &SinkItem, consumer: &str, errors: &[String], attempts: u32) {
        for s in self.sinks.read().iter() {
            s.on_dead_letter(item.clone(), consumer, errors, attempts);
        }
    }

    /// Every sink's `metrics()["current_file"]`, where it has one.
    pub fn files(&self) -> Vec<String> {
        self.sinks
            .read()
            .iter()
            .filter_map(|s| {
                s.metrics()
                    .get("current_file")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventView, MetaState};
    use crate::sinks::BoxFuture;
    use parking_lot::Mutex;
    use serde_json::{json, Value};

    type Letter = (String, String, Vec<String>, u32);

    #[derive(Default)]
    struct Collect(Mutex<Vec<Letter>>);

    impl Sink for Collect {
        fn needs_data(&self) -> bool {
            false
        }
        fn consume(self: Arc<Self>, items: Vec<SinkItem>) -> BoxFuture<Vec<Result<(), String>>> {
            Box::pin(async move { items.iter().map(|_| Ok(())).collect() })
        }
        fn on_dead_letter(&self, item: SinkItem, consumer: &str, errors: &[String], n: u32) {
            self.0.lock().push((
                item.view.id.to_string(),
                consumer.into(),
                errors.to_vec(),
                n,
            ));
        }
        fn metrics(&self) -> Value {
            json!({"current_file": "/tmp/x.jsonl"})
        }
    }

    fn item() -> SinkItem {
        SinkItem {
            view: Arc::new(EventView {
                id: "e1".into(),
                topic: "a.b".into(),
                event_type: "T".into(),
                source: "s".into(),
                timestamp: chrono::Utc::now(),
                data: None,
                data_error: None,
                correlation_id: None,
                priority: 3,
                meta: Arc::new(Mutex::new(MetaState::default())),
            }),
            attempt: 2,
        }
    }

    #[test]
    fn every_sink_gets_each_dead_letter_until_removed() {
        let fan = DeadLetterSinks::default();
        assert!(fan.is_empty());
        let (a, b) = (Arc::new(Collect::default()), Arc::new(Collect::default()));
        let (da, db): (Arc<dyn Sink>, Arc<dyn Sink>) = (a.clone(), b.clone());
        fan.add(da.clone());
        fan.add(db);
        fan.fan_out(&item(), "c", &["boom".into()], 3);
        assert_eq!(a.0.lock().len(), 1);
        assert_eq!(
            b.0.lock()[0],
            ("e1".into(), "c".into(), vec!["boom".into()], 3)
        );
        fan.remove(&da);
        fan.fan_out(&item(), "c", &[], 1);
        assert_eq!((a.0.lock().len(), b.0.lock().len()), (1, 2));
        assert_eq!(fan.files(), vec!["/tmp/x.jsonl".to_string()]);
    }
}
