//! Host, Origin and token checks (see the module doc of [`super`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::Response;

use super::common::{header_str, json_response, secure_headers, ApiResponse};

/// What a request is checked against.
pub struct Guard {
    /// Host header values accepted (`host:port`, lowercase); empty: any (bound to
    /// a wildcard address).
    hosts: Vec<String>,
    /// Origins accepted (`http://host:port`).
    origins: Vec<String>,
    token: String,
}

impl Guard {
    pub fn new(bind_host: &str, addr: SocketAddr, token: String) -> Guard {
        let port = addr.port();
        let mut names: Vec<String> = vec![bind_host.to_ascii_lowercase(), addr.ip().to_string()];
        if addr.ip().is_loopback() {
            names.extend(["localhost", "127.0.0.1", "[::1]"].map(String::from));
        }
        let names: Vec<String> = names
            .into_iter()
            .map(|n| {
                if n.contains(':') && !n.starts_with('[') {
                    format!("[{n}]")
                } else {
                    n
                }
            })
            .collect();
        let wildcard = addr.ip().is_unspecified();
        Guard {
            hosts: if wildcard {
                Vec::new()
            } else {
                names.iter().map(|n| format!("{n}:{port}")).collect()
            },
            origins: names.iter().map(|n| format!("http://{n}:{port}")).collect(),
            token,
        }
    }

    fn host_ok(&self, host: Option<&str>) -> bool {
        if self.hosts.is_empty() {
            return true;
        }
        host.is_some_and(|h| self.hosts.iter().any(|a| a.eq_ignore_ascii_case(h)))
    }

    fn origin_ok(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        match origin {
            // NOTE: non-browser clients (the CLI, curl) send no Origin; a browser
            // always sends one on a POST.
            None => true,
            Some(o) => {
                self.origins.iter().any(|a| a.eq_ignore_ascii_case(o))
                    || (self.hosts.is_empty()
                        && host.is_some_and(|h| o.eq_ignore_ascii_case(&format!("http://{h}"))))
            }
        }
    }

    fn token_ok(&self, req: &Request) -> bool {
        let bearer = header_str(req.headers(), header::AUTHORIZATION)
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let query = req.uri().query().and_then(|q| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == "token")
                .map(|(_, v)| v)
        });
        [bearer, query]
            .into_iter()
            .flatten()
            .any(|t| constant_time_eq(t.as_bytes(), self.token.as_bytes()))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The middleware: refuses what the guard refuses, adds the security headers.
pub async fn check(State(g): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let guarded = path.starts_with("/api/") || path == "/ws";
    let host = header_str(req.headers(), header::HOST).map(str::to_owned);
    if guarded && !g.host_ok(host.as_deref()) {
        return secure_headers(json_response(
            403,
            ApiResponse::error(
                403,
                "Host header does not name this monitor (DNS rebinding?)",
            )
            .body,
        ));
    }
    // NOTE: browsers open WebSockets across origins without CORS: a page elsewhere
    // must not read the stream.
    if path == "/ws" && !g.origin_ok(header_str(req.headers(), header::ORIGIN), host.as_deref()) {
        return secure_headers(json_response(
            403,
            ApiResponse::error(403, "cross-origin WebSocket refused").body,
        ));
    }
    let changes = req.method() != Method::GET && req.method() != Method::HEAD;
    if changes {
        if !g.token_ok(&req) {
            return secure_headers(json_response(
                401,
                ApiResponse::error(
                    401,
                    "this action needs the monitor's token (?token=... or Authorization: Bearer ...)",
                )
                .body,
            ));
        }
        let origin = header_str(req.headers(), header::ORIGIN);
        if !g.origin_ok(origin, host.as_deref()) {
            return secure_headers(json_response(
                403,
                ApiResponse::error(403, "cross-origin request refused").body,
            ));
        }
    }
    secure_headers(next.run(req).await)
}
