//! Logging of failed deliveries and dead letters, off the hot path.
//!
//! The engine tells its failure and dead-letter listeners on whatever thread
//! recorded the outcome (a Tokio worker, a consumer's worker thread, the loop),
//! without the GIL. The listeners only append a note here; the notes are logged
//! on the event loop in one go (one loop call per burst, never per event), to
//! the `mpm_events` logger:
//! - a failed attempt at DEBUG (formatted only when DEBUG is enabled);
//! - a dead letter at WARNING, at most [`WINDOW_LINES`] lines per
//!   [`WINDOW`]; the rest are counted and summed up in one line.
//!
//! Nothing is recorded for events that succeed.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pyo3::prelude::*;

use crate::dispatch::{Engine, EventLike};
use crate::python::exec::Inbox;
use crate::python::model::AcceptedEvent;

/// Dead-letter warnings logged one by one per window.
const WINDOW_LINES: u32 = 10;
/// The window of the dead-letter rate limit.
const WINDOW: Duration = Duration::from_secs(10);
/// Notes kept between two flushes; beyond it they are only counted.
const MAX_NOTES: usize = 10_000;

enum Note {
    Failed {
        event: Arc<AcceptedEvent>,
        consumer: Arc<str>,
        attempt: u32,
        error: String,
        retry_in: Option<Duration>,
    },
    Dead {
        event: Arc<AcceptedEvent>,
        consumer: Arc<str>,
        attempts: u32,
        last_error: String,
    },
}

#[derive(Default)]
struct State {
    notes: Vec<Note>,
    /// A flush is queued on the loop.
    scheduled: bool,
    /// Notes not kept because `MAX_NOTES` were waiting.
    overflow_failed: u64,
    overflow_dead: u64,
    window_start: Option<Instant>,
    window_logged: u32,
    window_suppressed: u64,
}

/// Collects failure notes and logs them on the loop.
pub struct DeliveryLog {
    inbox: Weak<Inbox>,
    state: Mutex<State>,
}

impl DeliveryLog {
    /// Installs the listeners on `engine`; notes are flushed through `inbox`.
    pub fn install(engine: &Engine<AcceptedEvent>, inbox: &Arc<Inbox>) -> Arc<DeliveryLog> {
        let log = Arc::new(DeliveryLog {
            inbox: Arc::downgrade(inbox),
            state: Mutex::default(),
        });
        let weak = Arc::downgrade(&log);
        engine.add_failure_listener(move |f| {
            if let Some(log) = weak.upgrade() {
                log.push(Note::Failed {
                    event: f.event.clone(),
                    consumer: f.consumer.clone(),
                    attempt: f.attempt,
                    error: f.error.to_owned(),
                    retry_in: f.retry_in,
                });
            }
        });
        let weak = Arc::downgrade(&log);
        engine.add_dead_letter_listener(move |l| {
            if let Some(log) = weak.upgrade() {
                log.push(Note::Dead {
                    event: l.event.clone(),
                    consumer: l.consumer.clone(),
                    attempts: l.attempts,
                    last_error: l.errors.last().cloned().unwrap_or_default(),
                });
            }
        });
        log
    }

    fn push(self: &Arc<Self>, note: Note) {
        let schedule = {
            let mut st = self.state.lock();
            if st.notes.len() >= MAX_NOTES {
                match note {
                    Note::Failed { .. } => st.overflow_failed += 1,
                    Note::Dead { .. } => st.overflow_dead += 1,
                }
            } else {
                st.notes.push(note);
            }
            !std::mem::replace(&mut st.scheduled, true)
        };
        if schedule {
            if let Some(inbox) = self.inbox.upgrade() {
                let me = self.clone();
                inbox.call_soon(Box::new(move |py| me.flush(py)));
            }
        }
    }

    /// Logs every waiting note (on the loop, or at stop and interpreter exit).
    pub fn flush(&self, py: Python<'_>) {
        let (notes, overflow_failed, overflow_dead) = {
            let mut st = self.state.lock();
            st.scheduled = false;
            (
                std::mem::take(&mut st.notes),
                std::mem::take(&mut st.overflow_failed),
                std::mem::take(&mut st.overflow_dead),
            )
        };
        let Ok(logger) = crate::python::runtime::logger(py) else {
            return;
        };
        let logger = logger.bind(py);
        let enabled = |level: u8| {
            logger
                .call_method1("isEnabledFor", (level,))
                .and_then(|v| v.is_truthy())
                .unwrap_or(false)
        };
        let debug = enabled(10);
        let now = Instant::now();
        // Warnings in order: a closed window's summary, then the new lines.
        let mut warnings: Vec<String> = Vec::new();
        {
            let mut st = self.state.lock();
            for note in &notes {
                let Note::Dead {
                    event,
                    consumer,
                    attempts,
                    last_error,
                } = note
                else {
                    continue;
                };
                if st
                    .window_start
                    .is_none_or(|s| now.duration_since(s) >= WINDOW)
                {
                    warnings.extend(Self::close_window(&mut st));
                    st.window_start = Some(now);
                }
                if st.window_logged < WINDOW_LINES {
                    st.window_logged += 1;
                    warnings.push(format!(
                        "Event {} ({}) dead-lettered for consumer {consumer} after {attempts} \
                         attempt(s): {last_error}",
                        event.id(py),
                        EventLike::topic(event.as_ref()),
                    ));
                } else {
                    st.window_suppressed += 1;
                }
            }
            st.window_suppressed += overflow_dead;
        }
        if debug {
            for note in &notes {
                if let Note::Failed {
                    event,
                    consumer,
                    attempt,
                    error,
                    retry_in,
                } = note
                {
                    let next = match retry_in {
                        Some(d) => format!("retrying in {:.3}s", d.as_secs_f64()),
                        None => "no retry left".to_owned(),
                    };
                    let msg = format!(
                        "Consumer {consumer} failed event {} ({}), attempt {}: {error}; {next}",
                        event.id(py),
                        EventLike::topic(event.as_ref()),
                        attempt,
                    );
                    let _ = logger.call_method1("debug", (msg,));
                }
            }
            if overflow_failed > 0 {
                let msg = format!("{overflow_failed} more failed attempt(s) not logged one by one");
                let _ = logger.call_method1("debug", (msg,));
            }
        }
        for msg in warnings {
            let _ = logger.call_method1("warning", (msg,));
        }
    }

    /// Ends the rate-limit window: the summary line of what it did not log.
    fn close_window(st: &mut State) -> Option<String> {
        st.window_logged = 0;
        let n = std::mem::take(&mut st.window_suppressed);
        (n > 0).then(|| {
            format!(
                "{n} more event(s) were dead-lettered in the last {}s without a line each \
                 (see EventBus.get_dead_letters())",
                WINDOW.as_secs()
            )
        })
    }

    /// Logs what is waiting and the count of dead letters not yet summed up
    /// (at stop and interpreter exit).
    pub fn close(&self, py: Python<'_>) {
        self.flush(py);
        let summary = {
            let mut st = self.state.lock();
            st.window_start = None;
            Self::close_window(&mut st)
        };
        if let (Some(msg), Ok(logger)) = (summary, crate::python::runtime::logger(py)) {
            let _ = logger.bind(py).call_method1("warning", (msg,));
        }
    }
}
