//! `SocketIOConsumer`: events forwarded to a Socket.IO server (the Claude MPM
//! dashboard).

use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::python::consumers::base::SinkConsumer;
use crate::python::consumers::logging::default_topics;
use crate::python::consumers::make_config;
use crate::sinks::socketio::{EventNaming, Protocol, SocketIoConfig};
use crate::sinks::socketio_consumer::SocketIoConsumerSink;

#[doc = stub_doc!(SocketIOConsumer)]
#[pyclass(module = "mpm_events._core", name = "SocketIOConsumer", extends = SinkConsumer, frozen)]
pub struct SocketIOConsumer {
    #[pyo3(get)]
    url: String,
    #[pyo3(get)]
    namespace: String,
    #[pyo3(get)]
    port_range: (u16, u16),
    #[pyo3(get)]
    reconnect_delay: f64,
    #[pyo3(get)]
    max_reconnect_delay: f64,
    #[pyo3(get)]
    batch_size: usize,
    #[pyo3(get)]
    batch_timeout: f64,
    #[pyo3(get)]
    buffer_limit: usize,
    #[pyo3(get)]
    event_names: String,
    #[pyo3(get)]
    ack_timeout: f64,
    #[pyo3(get)]
    require_ack: bool,
}

pub(crate) fn secs(name: &str, v: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(v)
        .map_err(|_| PyValueError::new_err(format!("{name} must be a non-negative number")))
}

/// The TLS configuration for `wss://`/`https://` URLs when a TLS file is given
/// (errors name the file); None: the default one.
fn tls_config(
    ca_file: Option<std::path::PathBuf>,
    client_cert: Option<std::path::PathBuf>,
    client_key: Option<std::path::PathBuf>,
) -> PyResult<Option<Arc<rustls::ClientConfig>>> {
    if ca_file.is_none() && client_cert.is_none() && client_key.is_none() {
        return Ok(None);
    }
    let opts = crate::sinks::tls::TlsOptions {
        ca_file,
        client_cert,
        client_key,
    };
    crate::sinks::tls::client_config(&opts, &[b"http/1.1"])
        .map(|c| Some(Arc::new(c)))
        .map_err(|e| crate::python::runtime::errors::config_error(format!("SocketIOConsumer: {e}")))
}

#[pymethods]
impl SocketIOConsumer {
    #[new]
    #[pyo3(signature = (socketio_server=None, port_range=(8765, 8785), reconnect_delay=1.0, max_reconnect_delay=30.0, batch_size=10, batch_timeout=0.1, *, url=None, namespace="/", auth=None, headers=None, event_name=None, event_names="dashboard", buffer_limit=10_000, emit_per_batch=None, flush_timeout=5.0, ack_timeout=10.0, require_ack=true, max_retries=3, retry_delay=1.0, name="SocketIOConsumer", ca_file=None, client_cert=None, client_key=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        socketio_server: Option<&Bound<'_, PyAny>>,
        port_range: (u16, u16),
        reconnect_delay: f64,
        max_reconnect_delay: f64,
        batch_size: usize,
        batch_timeout: f64,
        url: Option<String>,
        namespace: &str,
        auth: Option<&Bound<'_, PyAny>>,
        headers: Option<&Bound<'_, PyDict>>,
        event_name: Option<&Bound<'_, PyAny>>,
        event_names: &str,
        buffer_limit: usize,
        emit_per_batch: Option<&Bound<'_, PyAny>>,
        flush_timeout: f64,
        ack_timeout: f64,
        require_ack: bool,
        max_retries: i64,
        retry_delay: f64,
        name: &str,
        ca_file: Option<std::path::PathBuf>,
        client_cert: Option<std::path::PathBuf>,
        client_key: Option<std::path::PathBuf>,
    ) -> PyResult<PyClassInitializer<Self>> {
        if buffer_limit == 0 {
            return Err(PyValueError::new_err("buffer_limit must be >= 1"));
        }
        if ack_timeout.is_nan() || ack_timeout <= 0.0 {
            return Err(PyValueError::new_err(format!(
                "ack_timeout must be a positive number of seconds, got {ack_timeout}"
            )));
        }
        let mut url = url;
        if let Some(s) = socketio_server.filter(|s| !s.is_none()) {
            match s.extract::<String>() {
                Ok(u) if url.is_none() => url = Some(u),
                Ok(_) => {}
                Err(_) => crate::python::runtime::log_warning(
                    py,
                    "SocketIOConsumer: a server object is not used (this consumer is a \
                     Socket.IO client); pass url=... to choose the server",
                ),
            }
        }
        let url = url.unwrap_or_else(|| format!("http://127.0.0.1:{}", port_range.0));
        let (protocol, event_names) = match event_names {
            "dashboard" => (Protocol::Dashboard, "dashboard"),
            "legacy" => (Protocol::Legacy, "legacy"),
            other => {
                return Err(PyValueError::new_err(format!(
                    "event_names must be \"dashboard\" or \"legacy\", got {other:?}"
                )))
            }
        };
        let naming = match event_name.filter(|e| !e.is_none()) {
            None => EventNaming::Default,
            Some(e) => match e.extract::<String>() {
                Ok(n) => EventNaming::Fixed(n),
                Err(_) => EventNaming::Prefixes(
                    e.cast::<PyDict>()?
                        .iter()
                        .map(|(k, v)| Ok((k.extract()?, v.extract()?)))
                        .collect::<PyResult<_>>()?,
                ),
            },
        };
        let emit_per_batch = match emit_per_batch.filter(|e| !e.is_none()) {
            None => None,
            Some(e) => match e.extract::<String>() {
                Ok(n) => Some(n),
                Err(_) => e.is_truthy()?.then(|| "claude_event_batch".to_string()),
            },
        };
        let auth = match auth.filter(|a| !a.is_none()) {
            None => None,
            Some(a) => {
                Some(crate::python::convert::json::to_json(a, 0).map_err(PyValueError::new_err)?)
            }
        };
        let headers = match headers {
            None => Vec::new(),
            Some(h) => h
                .iter()
                .map(|(k, v)| Ok((k.extract()?, v.extract()?)))
                .collect::<PyResult<_>>()?,
        };
        let cfg = SocketIoConfig {
            url: url.clone(),
            namespace: namespace.to_string(),
            auth,
            headers,
            reconnect_initial: secs("reconnect_delay", reconnect_delay)?,
            reconnect_max: secs("max_reconnect_delay", max_reconnect_delay)?,
            buffer_limit,
            emit_per_batch,
            ack_timeout: secs("ack_timeout", ack_timeout)?,
            require_ack,
            tls: tls_config(ca_file, client_cert, client_key)?,
            ..SocketIoConfig::default()
        };
        let topics = default_topics(py, None, &["**"]);
        let priority = crate::python::convert::priority::consumer_priority_member(py, 2)?.unbind();
        let config = make_config(
            py,
            name,
            &[
                ("topics", topics),
                ("priority", priority),
                (
                    "batch_size",
                    batch_size.into_pyobject(py)?.into_any().unbind(),
                ),
                (
                    "batch_timeout",
                    batch_timeout.into_pyobject(py)?.into_any().unbind(),
                ),
                (
                    "max_retries",
                    max_retries.into_pyobject(py)?.into_any().unbind(),
                ),
                (
                    "retry_delay",
                    retry_delay.into_pyobject(py)?.into_any().unbind(),
                ),
                (
                    "retry_backoff",
                    2.0f64.into_pyobject(py)?.into_any().unbind(),
                ),
            ],
        )?;
        let sink = Arc::new(SocketIoConsumerSink::start(
            cfg,
            naming,
            protocol,
            secs("flush_timeout", flush_timeout)?,
            crate::python::runtime::runtime().handle(),
        ));
        Ok(
            PyClassInitializer::from(SinkConsumer { sink, config }).add_subclass(
                SocketIOConsumer {
                    url,
                    namespace: namespace.to_string(),
                    port_range,
                    reconnect_delay,
                    max_reconnect_delay,
                    batch_size,
                    batch_timeout,
                    buffer_limit,
                    event_names: event_names.to_string(),
                    ack_timeout,
                    require_ack,
                },
            ),
        )
    }
}
