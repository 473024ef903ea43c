//! `EventBus.serve_monitor`: the bus's [`crate::monitor`] server, its stream tap fed
//! by the publishers (only while a client watches), its per-event delivery history
//! fed by the engine's delivery observer, and the JSON API answered on the bus's
//! event loop by `mpm_events._monitor.api` (queued through the inbox: no Tokio task
//! attaches to Python).

use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyList;
use tokio::sync::oneshot;

use crate::dispatch::{DeliveryNote, Engine, Outcome};
use crate::monitor::tap::{DeliveryRecord, Tap};
use crate::monitor::{ApiHandler, ApiRequest, ApiResponse, MonitorServer};
use crate::python::convert::json::to_json;
use crate::python::exec::Inbox;
use crate::python::model::{build_view, AcceptedEvent};
use crate::python::runtime::{py_api, runtime};

/// Events the stream keeps for resuming clients and for `/api/events/<id>`.
const RING: usize = 10_000;
/// Events buffered per client before it is dropped as too slow.
const CLIENT_BUFFER: usize = 4_096;

/// The bus's monitor: the tap (always there; idle until a client connects) and the
/// server, once started.
pub struct BusMonitor {
    /// The live stream's hub.
    pub tap: Arc<Tap>,
    server: Mutex<Option<MonitorServer>>,
}

impl Default for BusMonitor {
    fn default() -> Self {
        BusMonitor {
            tap: Tap::new(RING, CLIENT_BUFFER),
            server: Mutex::new(None),
        }
    }
}

impl BusMonitor {
    /// Whether a publisher must call [`BusMonitor::tap_event`] (one relaxed load).
    #[inline]
    pub fn watching(&self) -> bool {
        self.tap.is_active()
    }

    /// Hands an accepted event to the stream: its id (a view is made, without the
    /// payload, if none was, so the engine's observer can name it without the GIL)
    /// and its `to_dict()` document. Never fails the publish.
    pub fn tap_event(&self, py: Python<'_>, eref: &mut AcceptedEvent) {
        if eref.view.is_none() {
            match build_view(py, eref, false) {
                Ok(v) => eref.view = Some(Arc::new(v)),
                Err(_) => return,
            }
        }
        let Some(id) = eref.view.as_ref().map(|v| v.id.clone()) else {
            return;
        };
        let doc = eref
            .event(py)
            .and_then(|e| e.bind(py).call_method0("to_dict"))
            .ok()
            .and_then(|d| to_json(&d, 0).ok());
        if let Some(doc) = doc {
            self.tap.publish(id, eref.topic.clone(), doc);
        }
    }

    /// Starts the server (one per bus) and returns its URL.
    pub fn serve(
        &self,
        bus: &Bound<'_, PyAny>,
        inbox: Arc<Inbox>,
        engine: &Engine<AcceptedEvent>,
        host: &str,
        port: u16,
    ) -> PyResult<String> {
        let py = bus.py();
        let mut server = self.server.lock();
        if let Some(s) = server.as_ref() {
            return Err(PyRuntimeError::new_err(format!(
                "the monitor is already serving at {}",
                s.url()
            )));
        }
        if host.trim().is_empty() {
            return Err(PyValueError::new_err(
                "serve_monitor(): host must not be empty",
            ));
        }
        let weak = py
            .import("weakref")?
            .getattr("ref")?
            .call1((bus,))?
            .unbind();
        let api = Arc::new(LoopApi {
            inbox,
            bus: Arc::new(weak),
        });
        let started = py
            .detach(|| MonitorServer::start(runtime().handle(), host, port, self.tap.clone(), api))
            .map_err(|e| {
                PyOSError::new_err(format!(
                    "serve_monitor(): cannot listen on {host}:{port}: {e}"
                ))
            })?;
        let url = started.url();
        let tap = self.tap.clone();
        engine.set_delivery_observer(Some(Arc::new(
            move |note: &DeliveryNote<'_, AcceptedEvent>| {
                if !tap.is_active() {
                    return;
                }
                let Some(view) = &note.event.view else { return };
                let (outcome, error) = match note.outcome {
                    Outcome::Success => ("success", None),
                    Outcome::Filtered => ("filtered", None),
                    Outcome::Failure(m) | Outcome::FailureNotBefore(m, _) => {
                        ("failure", Some(m.clone()))
                    }
                    Outcome::Rejected(m) => ("rejected", Some(m.clone())),
                    Outcome::Cancelled(m) => ("cancelled", Some(m.clone())),
                };
                let at_ms = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
                tap.record_delivery(
                    &view.id,
                    DeliveryRecord {
                        consumer: note.consumer.clone(),
                        attempt: note.attempt,
                        outcome,
                        error,
                        queue_ms: note.queued.as_secs_f64() * 1000.0,
                        handler_ms: note.handled.as_secs_f64() * 1000.0,
                        at_ms,
                    },
                );
            },
        )));
        *server = Some(started);
        Ok(url)
    }

    /// The URL while serving.
    pub fn url(&self) -> Option<String> {
        self.server.lock().as_ref().map(MonitorServer::url)
    }

    /// Stops the server (idempotent); returns whether one was running.
    pub fn stop(&self, engine: &Engine<AcceptedEvent>) -> bool {
        let s = self.server.lock().take();
        engine.set_delivery_observer(None);
        match s {
            Some(mut s) => {
                s.stop();
                true
            }
            None => false,
        }
    }
}

/// Answers API requests on the bus's loop through `mpm_events._monitor.api`.
struct LoopApi {
    inbox: Arc<Inbox>,
    /// A weak reference to the bus (the bus owns the server).
    bus: Arc<Py<PyAny>>,
}

impl ApiHandler for LoopApi {
    fn call(&self, req: ApiRequest, reply: oneshot::Sender<ApiResponse>) {
        let bus = self.bus.clone();
        self.inbox.call_soon(Box::new(move |py| {
            let answer = (|| -> PyResult<ApiResponse> {
                let bus = bus.bind(py).call0()?;
                if bus.is_none() {
                    return Ok(ApiResponse::error(503, "the bus is gone"));
                }
                let query = PyList::new(py, req.query)?;
                let (status, body): (u16, String) =
                    py_api::monitor_api(py, (bus, req.method, req.path, query, req.body))?
                        .extract()?;
                Ok(ApiResponse { status, body })
            })()
            .unwrap_or_else(|e| ApiResponse::error(500, &format!("monitor API failed: {e}")));
            let _ = reply.send(answer);
        }));
    }
}
