//! `HttpConsumer`: events POSTed to an HTTP endpoint, by default the Claude MPM
//! dashboard's `POST /api/events` (the route claude-mpm's hooks use).

use std::path::PathBuf;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::python::consumers::base::SinkConsumer;
use crate::python::consumers::logging::default_topics;
use crate::python::consumers::make_config;
use crate::python::consumers::socketio::secs;
use crate::python::runtime::errors::config_error;
use crate::sinks::http::{HttpConfig, HttpFormat, HttpSink};
use crate::sinks::tls::TlsOptions;

#[doc = stub_doc!(HttpConsumer)]
#[pyclass(module = "mpm_events._core", name = "HttpConsumer", extends = SinkConsumer, frozen)]
pub struct HttpConsumer {
    #[pyo3(get)]
    url: String,
    #[pyo3(get)]
    format: &'static str,
    #[pyo3(get)]
    timeout: f64,
    #[pyo3(get)]
    batch_size: usize,
    #[pyo3(get)]
    batch_timeout: f64,
}

#[pymethods]
impl HttpConsumer {
    #[new]
    #[pyo3(signature = (url="http://127.0.0.1:8765/api/events", *, format="claude-mpm", headers=None, timeout=2.0, batch_size=10, batch_timeout=0.0, max_retries=3, retry_delay=0.1, retry_backoff=2.0, max_retry_delay=30.0, topics=None, ca_file=None, client_cert=None, client_key=None, name="HttpConsumer"))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        url: &str,
        format: &str,
        headers: Option<&Bound<'_, PyDict>>,
        timeout: f64,
        batch_size: usize,
        batch_timeout: f64,
        max_retries: u32,
        retry_delay: f64,
        retry_backoff: f64,
        max_retry_delay: f64,
        topics: Option<Py<PyAny>>,
        ca_file: Option<PathBuf>,
        client_cert: Option<PathBuf>,
        client_key: Option<PathBuf>,
        name: &str,
    ) -> PyResult<PyClassInitializer<Self>> {
        let format = HttpFormat::parse(format).map_err(config_error)?;
        let request_timeout = secs("timeout", timeout)?;
        let headers = match headers {
            None => Vec::new(),
            Some(h) => h
                .iter()
                .map(|(k, v)| Ok((k.extract()?, v.extract()?)))
                .collect::<PyResult<_>>()?,
        };
        // NOTE: the default URL is claude-mpm's dashboard on its default port.
        let url = url.to_string();
        let sink = HttpSink::new(HttpConfig {
            url: url.clone(),
            format,
            headers,
            timeout: request_timeout,
            tls: TlsOptions {
                ca_file,
                client_cert,
                client_key,
            },
        })
        .map_err(|e| config_error(format!("HttpConsumer: {e}")))?;
        // NOTE: the bus bounds the whole consume() call; a batch is up to
        // batch_size requests one after the other, each bounded by `timeout`.
        let call_timeout = (timeout * batch_size.max(1) as f64 + 5.0).max(30.0);
        let topics = default_topics(py, topics, &["**"]);
        let priority = crate::python::convert::priority::consumer_priority_member(py, 2)?.unbind();
        let obj = |v: Bound<'_, PyAny>| v.unbind();
        let config = make_config(
            py,
            name,
            &[
                ("topics", topics),
                ("priority", priority),
                ("batch_size", obj(batch_size.into_pyobject(py)?.into_any())),
                (
                    "batch_timeout",
                    obj(batch_timeout.into_pyobject(py)?.into_any()),
                ),
                (
                    "max_retries",
                    obj(max_retries.into_pyobject(py)?.into_any()),
                ),
                (
                    "retry_delay",
                    obj(retry_delay.into_pyobject(py)?.into_any()),
                ),
                (
                    "retry_backoff",
                    obj(retry_backoff.into_pyobject(py)?.into_any()),
                ),
                (
                    "max_retry_delay",
                    obj(max_retry_delay.into_pyobject(py)?.into_any()),
                ),
                ("timeout", obj(call_timeout.into_pyobject(py)?.into_any())),
            ],
        )?;
        Ok(PyClassInitializer::from(SinkConsumer {
            sink: Arc::new(sink),
            config,
        })
        .add_subclass(HttpConsumer {
            url,
            format: format.name(),
            timeout,
            batch_size,
            batch_timeout,
        }))
    }
}
