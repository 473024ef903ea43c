//! The monitor: an HTTP server on the engine's Tokio runtime that serves the
//! monitor page, the live stream (SSE at `/api/stream`, WebSocket at `/ws`) and
//! the JSON API (docs/monitor.md).
//!
//! Plain Rust (no pyo3). The stream comes from a [`tap::Tap`]; the JSON endpoints
//! other than `/api/events/<id>` are answered by an [`ApiHandler`], which the
//! binding layer implements (it runs them on the bus's event loop).
//!
//! Security (loopback by default): every `/api` and `/ws` request must carry a
//! `Host` naming the address the server listens on (DNS rebinding); state-changing
//! requests (`POST`) also need the per-run token (`?token=` or
//! `Authorization: Bearer`), else 401, and an `Origin`, if sent, of the server
//! itself, else 403. Every response carries `Content-Security-Policy: default-src 'self'`.

pub mod assets;
mod common;
mod security;
mod stream;
pub mod tap;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use tokio::sync::oneshot;

use common::{json_response, AppState};
pub use common::{ApiHandler, ApiRequest, ApiResponse};
pub use tap::Tap;

/// How long the server waits for the [`ApiHandler`]'s answer.
const API_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request body accepted.
const MAX_BODY: usize = 1 << 20;

/// A running monitor server.
pub struct MonitorServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The per-run token state-changing requests need.
    pub token: String,
    tap: Arc<Tap>,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl MonitorServer {
    /// Binds `host:port` (port 0: any free port) and serves on `runtime`.
    pub fn start(
        runtime: &tokio::runtime::Handle,
        host: &str,
        port: u16,
        tap: Arc<Tap>,
        api: Arc<dyn ApiHandler>,
    ) -> std::io::Result<MonitorServer> {
        let std_listener = std::net::TcpListener::bind((host, port))?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let token = uuid::Uuid::new_v4().simple().to_string();
        let guard = Arc::new(security::Guard::new(host, addr, token.clone()));
        let state = AppState {
            tap: tap.clone(),
            api,
        };
        let app = Router::new()
            .route("/", get(page))
            .route("/index.html", get(page))
            .route("/assets/{name}", get(asset))
            .route("/api/stream", get(stream::sse))
            .route("/api/stream/check", get(stream::check))
            .route("/ws", get(stream::ws))
            .route("/api/events/{id}", get(event_detail))
            .route("/api/{*rest}", any(api_call))
            .layer(axum::middleware::from_fn_with_state(guard, security::check))
            .with_state(state);
        let (tx, rx) = oneshot::channel::<()>();
        let listener = {
            let _g = runtime.enter();
            tokio::net::TcpListener::from_std(std_listener)?
        };
        let task = runtime.spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(MonitorServer {
            addr,
            token,
            tap,
            shutdown: Some(tx),
            task,
        })
    }

    /// The page's URL with the token, e.g. `http://127.0.0.1:8765/?token=...`.
    pub fn url(&self) -> String {
        let host = match self.addr.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            std::net::IpAddr::V4(ip) => ip.to_string(),
        };
        format!("http://{host}:{}/?token={}", self.addr.port(), self.token)
    }

    /// Stops serving: open streams end ("monitor stopped"), the listener closes.
    pub fn stop(&mut self) {
        self.tap.drop_clients("monitor stopped");
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // NOTE: a WebSocket or keep-alive connection may outlive the graceful
        // shutdown; the task is aborted after a short grace.
        // NOTE: the listener closes when the serve task ends; with no connection
        // open that is at once, so wait for it (bounded) and a connect made right
        // after stop() is refused, not accepted and left unanswered.
        let deadline = std::time::Instant::now() + Duration::from_millis(500);
        while !self.task.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        let task = self.task.abort_handle();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(2));
            task.abort();
        });
    }
}

impl Drop for MonitorServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn page() -> Response {
    asset_response("index.html")
}

async fn asset(Path(name): Path<String>) -> Response {
    asset_response(&name)
}

fn asset_response(name: &str) -> Response {
    match assets::get(name) {
        Some((mime, bytes)) => {
            let mut r = Response::new(Body::from(bytes));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
            r
        }
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

async fn event_detail(State(st): State<AppState>, Path(id): Path<String>) -> Response {
    match st.tap.event(&id) {
        Some(v) => json_response(200, v.to_string()),
        None => json_response(
            404,
            serde_json::json!({
                "error": format!(
                    "event {id:?} is not in the monitor's recent history (it keeps the \
                     last events published while a client watched)"
                )
            })
            .to_string(),
        ),
    }
}

async fn api_call(
    State(st): State<AppState>,
    Path(rest): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
    req: Request,
) -> Response {
    let method = req.method().clone();
    if method != Method::GET && method != Method::POST {
        return json_response(405, ApiResponse::error(405, "only GET and POST").body);
    }
    let body = if method == Method::POST {
        match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
            Ok(b) => Some(String::from_utf8_lossy(&b).into_owned()),
            Err(_) => {
                return json_response(
                    413,
                    ApiResponse::error(413, "request body too large (1 MiB at most)").body,
                )
            }
        }
    } else {
        None
    };
    let (tx, rx) = oneshot::channel();
    st.api.call(
        ApiRequest {
            method: method.as_str().to_owned(),
            path: rest,
            query: query.into_iter().filter(|(k, _)| k != "token").collect(),
            body,
        },
        tx,
    );
    match tokio::time::timeout(API_TIMEOUT, rx).await {
        Ok(Ok(r)) => json_response(r.status, r.body),
        Ok(Err(_)) => json_response(
            503,
            ApiResponse::error(503, "the bus did not answer (is it running?)").body,
        ),
        Err(_) => json_response(
            503,
            ApiResponse::error(
                503,
                "the bus did not answer within 10 s (is its event loop blocked?)",
            )
            .body,
        ),
    }
}
