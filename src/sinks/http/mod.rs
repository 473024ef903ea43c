//! The HTTP consumer's sink: events POSTed to a URL, by default the Claude MPM
//! dashboard's `POST /api/events` (the route claude-mpm's own hooks use).
//!
//! Delivery contract: an item is delivered only when the server answered 2xx.
//! 408, 429, 5xx, timeouts and connection failures are failed attempts
//! ([`SinkFailure::Retry`]), retried by the bus with the consumer's backoff; a
//! `Retry-After` (seconds or HTTP date) makes the next attempt wait at least
//! that long ([`SinkFailure::RetryNotBefore`]). Any other status (other 4xx;
//! 3xx, as redirects are not followed) is permanent ([`SinkFailure::Permanent`]):
//! the bus dead-letters the event at once, the reason naming the status and an
//! excerpt of the body.
//!
//! Requests: `claude-mpm` posts one event per request (the dashboard's route
//! takes one), `json` one per request for a batch of one and a JSON array
//! otherwise, `cloudevents` a structured-mode event or a batched-mode array
//! (see [`encode`]). A batch's requests go one after the other over the
//! client's keep-alive pool, so the server sees the consumer's order; after a
//! retryable failure the rest of the batch is not sent (it fails with the same
//! reason), so a server that is down costs one connection attempt per batch.
//! TLS (`https://`) goes through [`crate::sinks::tls`] (rustls).

pub mod encode;
pub mod response;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use serde_json::{json, Value};

use super::tls::{self, TlsOptions};
use super::{BoxFuture, Sink, SinkFailure, SinkItem};
use response::Verdict;

/// The body format of the requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpFormat {
    /// claude-mpm's hook handler's body, one event per request.
    ClaudeMpm,
    /// CloudEvents 1.0, structured mode (one) or batched mode (several).
    CloudEvents,
    /// Our `Event.to_dict()`, or an array of them for a batch.
    Json,
}

impl HttpFormat {
    /// Parses a `format=` value: `claude-mpm`, `cloudevents` or `json`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "claude-mpm" => Ok(HttpFormat::ClaudeMpm),
            "cloudevents" => Ok(HttpFormat::CloudEvents),
            "json" => Ok(HttpFormat::Json),
            other => Err(format!(
                "format must be \"claude-mpm\", \"cloudevents\" or \"json\", got {other:?}"
            )),
        }
    }

    /// The `format=` value.
    pub fn name(self) -> &'static str {
        match self {
            HttpFormat::ClaudeMpm => "claude-mpm",
            HttpFormat::CloudEvents => "cloudevents",
            HttpFormat::Json => "json",
        }
    }
}

/// How the sink reaches its server.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// `http://` or `https://` URL the events are POSTed to.
    pub url: String,
    /// The body format.
    pub format: HttpFormat,
    /// Extra request headers (e.g. `Authorization`).
    pub headers: Vec<(String, String)>,
    /// Per-request timeout (connect, send, answer and body).
    pub timeout: Duration,
    /// What `https://` trusts and presents.
    pub tls: TlsOptions,
}

/// The largest response body read (a bigger one is dropped with its connection).
const BODY_LIMIT: usize = 64 * 1024;

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
    requests: AtomicU64,
    responses: [AtomicU64; 4],
    other_responses: AtomicU64,
    timeouts: AtomicU64,
    connection_errors: AtomicU64,
    retry_after_honoured: AtomicU64,
}

/// The HTTP consumer's sink.
pub struct HttpSink {
    url: reqwest::Url,
    format: HttpFormat,
    timeout: Duration,
    client: reqwest::Client,
    counters: Counters,
    latency_us: Mutex<Histogram<u64>>,
    last_error: Mutex<Option<String>>,
    last_status: AtomicU64,
    /// False after a request that failed in a way a retry may fix.
    reachable: AtomicBool,
    stopped: AtomicBool,
    in_flight: AtomicUsize,
    idle: tokio::sync::Notify,
}

/// Counts a request in flight until dropped (also when its future is dropped).
struct InFlight<'a>(&'a HttpSink);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.idle.notify_waiters();
    }
}

/// The chain of an error's causes, `outer: inner: innermost`.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let c_s = c.to_string();
        if !s.contains(&c_s) {
            s.push_str(": ");
            s.push_str(&c_s);
        }
        cur = c.source();
    }
    s
}

impl HttpSink {
    /// Builds the client; errors name what is wrong (URL, header, TLS file).
    pub fn new(config: HttpConfig) -> Result<Self, String> {
        let url = reqwest::Url::parse(&config.url)
            .map_err(|e| format!("url {:?} is not a valid URL ({e})", config.url))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!(
                "url {:?}: expected http://host[:port]/path or https://...",
                config.url
            ));
        }
        if config.timeout.is_zero() {
            return Err("timeout must be > 0".into());
        }
        let mut headers = HeaderMap::new();
        for (k, v) in &config.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("headers: {k:?} is not a valid header name"))?;
            let value = HeaderValue::from_str(v)
                .map_err(|_| format!("headers: the value of {k:?} is not a valid header value"))?;
            headers.insert(name, value);
        }
        let tls = tls::client_config(&config.tls, &[b"http/1.1"])?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .http1_only()
            // NOTE: the dashboard is local: no proxy from the environment
            // (HTTP_PROXY would send hook events elsewhere), no redirects
            // (a POST redirected would be re-sent as a GET).
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .tcp_nodelay(true)
            .user_agent(concat!("mpm-events/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {}", chain(&e)))?;
        Ok(HttpSink {
            url,
            format: config.format,
            timeout: config.timeout,
            client,
            counters: Counters::default(),
            latency_us: Mutex::new(
                Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid histogram bounds"),
            ),
            last_error: Mutex::new(None),
            last_status: AtomicU64::new(0),
            reachable: AtomicBool::new(true),
            stopped: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            idle: tokio::sync::Notify::new(),
        })
    }

    fn fail(&self, msg: String) -> String {
        *self.last_error.lock() = Some(msg.clone());
        msg
    }

    /// One POST; `Ok` on 2xx.
    async fn post(&self, content_type: &'static str, body: Vec<u8>) -> Result<(), SinkFailure> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let _guard = InFlight(self);
        let c = &self.counters;
        c.requests.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let sent = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await;
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) => {
                self.reachable.store(false, Ordering::Relaxed);
                let msg = if e.is_timeout() {
                    c.timeouts.fetch_add(1, Ordering::Relaxed);
                    format!(
                        "POST {} timed out after {:.3}s",
                        self.url,
                        self.timeout.as_secs_f64()
                    )
                } else {
                    c.connection_errors.fetch_add(1, Ordering::Relaxed);
                    format!("POST {} failed: {}", self.url, chain(&e))
                };
                return Err(SinkFailure::Retry(self.fail(msg)));
            }
        };
        let status = resp.status();
        let code = status.as_u16();
        self.last_status.store(code as u64, Ordering::Relaxed);
        match response::class_index(code) {
            Some(i) => c.responses[i].fetch_add(1, Ordering::Relaxed),
            None => c.other_responses.fetch_add(1, Ordering::Relaxed),
        };
        let wait = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| response::retry_after(v, SystemTime::now()));
        // NOTE: the body is read (bounded) so the connection goes back to the
        // pool; a failed or oversized read only costs the connection.
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = resp.chunk().await {
            body.extend_from_slice(&chunk);
            if body.len() > BODY_LIMIT {
                break;
            }
        }
        let us = started.elapsed().as_micros().clamp(1, u64::MAX as u128) as u64;
        let _ = self.latency_us.lock().record(us);
        let describe =
            || response::describe(code, status.canonical_reason(), self.url.as_str(), &body);
        match response::classify(code) {
            Verdict::Delivered => {
                self.reachable.store(true, Ordering::Relaxed);
                Ok(())
            }
            Verdict::Retry => {
                self.reachable.store(false, Ordering::Relaxed);
                let msg = self.fail(describe());
                Err(match wait {
                    Some(w) => {
                        c.retry_after_honoured.fetch_add(1, Ordering::Relaxed);
                        SinkFailure::RetryNotBefore(
                            format!("{msg} (Retry-After: {:.3}s)", w.as_secs_f64()),
                            w,
                        )
                    }
                    None => SinkFailure::Retry(msg),
                })
            }
            Verdict::Permanent => {
                self.reachable.store(true, Ordering::Relaxed);
                Err(SinkFailure::Permanent(self.fail(describe())))
            }
        }
    }

    /// The results of a batch: one request per item, stopping at the first
    /// retryable failure.
    async fn post_each(
        &self,
        items: &[SinkItem],
        format: HttpFormat,
    ) -> Vec<Result<(), SinkFailure>> {
        let mut out = Vec::with_capacity(items.len());
        let mut halted: Option<SinkFailure> = None;
        for item in items {
            if let Some(f) = &halted {
                out.push(Err(not_sent(f)));
                continue;
            }
            if self.stopped.load(Ordering::Acquire) {
                out.push(Err(SinkFailure::Retry(STOPPED.into())));
                continue;
            }
            let body = match format {
                HttpFormat::ClaudeMpm => encode::claude_mpm(&item.view),
                HttpFormat::CloudEvents => encode::cloudevent(&item.view),
                HttpFormat::Json => encode::event_dict(&item.view),
            };
            let ct = if format == HttpFormat::CloudEvents {
                encode::CLOUDEVENT
            } else {
                encode::JSON
            };
            let r = self.post(ct, to_vec(&body)).await;
            if let Err(f @ (SinkFailure::Retry(_) | SinkFailure::RetryNotBefore(..))) = &r {
                halted = Some(f.clone());
            }
            out.push(r);
        }
        out
    }

    /// One request for the whole batch; its result for every item.
    async fn post_all(
        &self,
        items: &[SinkItem],
        format: HttpFormat,
    ) -> Vec<Result<(), SinkFailure>> {
        let (ct, body): (&'static str, Vec<Value>) = match format {
            HttpFormat::CloudEvents => (
                encode::CLOUDEVENTS_BATCH,
                items.iter().map(|i| encode::cloudevent(&i.view)).collect(),
            ),
            _ => (
                encode::JSON,
                items.iter().map(|i| encode::event_dict(&i.view)).collect(),
            ),
        };
        let r = if self.stopped.load(Ordering::Acquire) {
            Err(SinkFailure::Retry(STOPPED.into()))
        } else {
            self.post(ct, to_vec(&Value::Array(body))).await
        };
        vec![r; items.len()]
    }
}

const STOPPED: &str = "the HTTP consumer shut down before this event was sent";

fn to_vec(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// The failure of an item not sent because an earlier one of its batch failed.
fn not_sent(f: &SinkFailure) -> SinkFailure {
    let msg = format!(
        "not sent after an earlier request of its batch failed: {}",
        f.message()
    );
    match f {
        SinkFailure::RetryNotBefore(_, w) => SinkFailure::RetryNotBefore(msg, *w),
        _ => SinkFailure::Retry(msg),
    }
}

impl Sink for HttpSink {
    fn needs_data(&self) -> bool {
        true
    }

    fn consume(self: Arc<Self>, items: Vec<SinkItem>) -> BoxFuture<Vec<Result<(), String>>> {
        let fut = self.consume_detailed(items);
        Box::pin(async move {
            fut.await
                .into_iter()
                .map(|r| r.map_err(|f| f.message().to_string()))
                .collect()
        })
    }

    fn consume_detailed(
        self: Arc<Self>,
        items: Vec<SinkItem>,
    ) -> BoxFuture<Vec<Result<(), SinkFailure>>> {
        Box::pin(async move {
            let c = &self.counters;
            c.received.fetch_add(items.len() as u64, Ordering::Relaxed);
            let results = match (self.format, items.len()) {
                (_, 0) => Vec::new(),
                (HttpFormat::ClaudeMpm, _) | (_, 1) => self.post_each(&items, self.format).await,
                (format, _) => self.post_all(&items, format).await,
            };
            for r in &results {
                match r {
                    Ok(()) => c.delivered.fetch_add(1, Ordering::Relaxed),
                    Err(f) => {
                        c.failed.fetch_add(1, Ordering::Relaxed);
                        // NOTE: whether a retryable failure was the last attempt is
                        // the bus's to say (consumer_stats: dead_lettered); a
                        // permanent answer is the sink's own verdict.
                        if matches!(f, SinkFailure::Permanent(_)) {
                            c.rejected.fetch_add(1, Ordering::Relaxed);
                        }
                        0
                    }
                };
            }
            results
        })
    }

    fn shutdown(self: Arc<Self>) -> BoxFuture<()> {
        Box::pin(async move {
            self.stopped.store(true, Ordering::Release);
            // NOTE: requests in flight end within their timeout; wait no longer.
            let deadline = tokio::time::Instant::now() + self.timeout;
            loop {
                let idle = self.idle.notified();
                if self.in_flight.load(Ordering::Acquire) == 0 {
                    return;
                }
                if tokio::time::timeout_at(deadline, idle).await.is_err() {
                    return;
                }
            }
        })
    }

    fn metrics(&self) -> Value {
        let c = &self.counters;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (p50, p95, p99, mean) = {
            let h = self.latency_us.lock();
            if h.is_empty() {
                (0.0, 0.0, 0.0, 0.0)
            } else {
                let ms = |us: u64| us as f64 / 1000.0;
                (
                    ms(h.value_at_quantile(0.5)),
                    ms(h.value_at_quantile(0.95)),
                    ms(h.value_at_quantile(0.99)),
                    h.mean() / 1000.0,
                )
            }
        };
        let last_status = n(&self.last_status);
        json!({
            "url": self.url.as_str(),
            "format": self.format.name(),
            "events_received": n(&c.received),
            "events_delivered": n(&c.delivered),
            "events_failed": n(&c.failed),
            "events_rejected": n(&c.rejected),
            "requests": n(&c.requests),
            "responses_2xx": n(&c.responses[0]),
            "responses_3xx": n(&c.responses[1]),
            "responses_4xx": n(&c.responses[2]),
            "responses_5xx": n(&c.responses[3]),
            "responses_other": n(&c.other_responses),
            "timeouts": n(&c.timeouts),
            "connection_errors": n(&c.connection_errors),
            "retry_after_honoured": n(&c.retry_after_honoured),
            "in_flight": self.in_flight.load(Ordering::Relaxed),
            "latency_p50_ms": p50,
            "latency_p95_ms": p95,
            "latency_p99_ms": p99,
            "latency_mean_ms": mean,
            "last_status": (last_status != 0).then_some(last_status),
            "last_error": self.last_error.lock().clone(),
        })
    }

    fn is_healthy(&self) -> bool {
        !self.stopped.load(Ordering::Relaxed) && self.reachable.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> HttpConfig {
        HttpConfig {
            url: url.into(),
            format: HttpFormat::ClaudeMpm,
            headers: vec![],
            timeout: Duration::from_secs(2),
            tls: TlsOptions::default(),
        }
    }

    #[test]
    fn formats_parse_by_name() {
        for f in [
            HttpFormat::ClaudeMpm,
            HttpFormat::CloudEvents,
            HttpFormat::Json,
        ] {
            assert_eq!(HttpFormat::parse(f.name()), Ok(f));
        }
        assert!(HttpFormat::parse("xml").unwrap_err().contains("\"xml\""));
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        let err = |c: HttpConfig| HttpSink::new(c).err().unwrap();
        assert!(err(config("not a url")).starts_with("url \"not a url\""));
        assert!(err(config("ftp://h/x")).contains("expected http://"));
        let mut c = config("http://127.0.0.1:1/api/events");
        c.headers = vec![("bad name".into(), "v".into())];
        assert_eq!(err(c), "headers: \"bad name\" is not a valid header name");
        let mut c = config("http://127.0.0.1:1/api/events");
        c.timeout = Duration::ZERO;
        assert_eq!(err(c), "timeout must be > 0");
        assert!(HttpSink::new(config("https://127.0.0.1:1/api/events")).is_ok());
    }

    #[test]
    fn a_refused_connection_fails_fast_and_is_retryable() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        // NOTE: a port just bound and released: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let sink = Arc::new(
            HttpSink::new(config(&format!("http://127.0.0.1:{port}/api/events"))).unwrap(),
        );
        let item = SinkItem {
            view: Arc::new(crate::event::EventView {
                id: "e".into(),
                topic: "hook.tool".into(),
                event_type: "PreToolUse".into(),
                source: "s".into(),
                timestamp: chrono::Utc::now(),
                data: Some(json!({})),
                data_error: None,
                correlation_id: None,
                priority: 3,
                meta: Arc::default(),
            }),
            attempt: 0,
        };
        let out = rt.block_on(sink.clone().consume_detailed(vec![item.clone(), item]));
        assert!(
            matches!(&out[0], Err(SinkFailure::Retry(m)) if m.contains("failed")),
            "{out:?}"
        );
        assert!(
            matches!(&out[1], Err(SinkFailure::Retry(m)) if m.starts_with("not sent after")),
            "{out:?}"
        );
        let m = sink.metrics();
        assert_eq!(
            (m["requests"].as_u64(), m["connection_errors"].as_u64()),
            (Some(1), Some(1))
        );
        assert_eq!(m["events_failed"], 2);
        assert!(!sink.is_healthy());
    }
}
