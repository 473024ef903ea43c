//! What the monitor's server, security checks and streams share: the API handler
//! contract, the router's state, response helpers.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use tokio::sync::oneshot;

use super::tap::Tap;

/// One JSON API request handed to the [`ApiHandler`].
#[derive(Debug, Clone)]
pub struct ApiRequest {
    /// "GET" or "POST".
    pub method: String,
    /// The path after `/api/`, e.g. `dead-letters/redrive`.
    pub path: String,
    /// The query parameters, in order (the token removed).
    pub query: Vec<(String, String)>,
    /// The request body (POST), as text.
    pub body: Option<String>,
}

/// The answer: a status and a JSON text.
#[derive(Debug, Clone)]
pub struct ApiResponse {
    pub status: u16,
    pub body: String,
}

impl ApiResponse {
    /// `{"error": message}` with `status`.
    pub fn error(status: u16, message: &str) -> Self {
        ApiResponse {
            status,
            body: serde_json::json!({ "error": message }).to_string(),
        }
    }
}

/// Answers the JSON endpoints the server does not answer itself.
pub trait ApiHandler: Send + Sync + 'static {
    /// Starts answering `req`; the answer goes to `reply` (dropping it gives 503).
    fn call(&self, req: ApiRequest, reply: oneshot::Sender<ApiResponse>);
}

#[derive(Clone)]
pub struct AppState {
    pub tap: Arc<Tap>,
    pub api: Arc<dyn ApiHandler>,
}

/// Adds the security headers (CSP `default-src 'self'`, no referrer, no framing).
pub fn secure_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // NOTE: the page's URL holds the token: never send it on as a Referer.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

/// A JSON response.
pub fn json_response(status: u16, body: String) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The parts of a request the security check reads.
pub fn header_str(h: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}
