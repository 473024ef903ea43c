//! `/api/stream` (SSE) and `/ws` (WebSocket): the tap's events for one client.
//!
//! Query: `pattern`, `exclude` (repeatable or comma-separated), `rule` (JSON),
//! `after` (resume after this seq; SSE also reads `Last-Event-ID`). A resuming
//! client gets the kept events after its seq, then live ones, with no gap and no
//! duplicate (an `event: gap` says which seqs fell out of the ring, if any).
//! A client whose buffer fills is dropped: SSE ends with `event: dropped` and the
//! reason, a WebSocket with a `{"dropped": reason}` message and a close.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use serde_json::json;

use super::common::{json_response, ApiResponse, AppState};
use super::tap::{Filter, Subscription};

/// The filter the query's `pattern`, `exclude` and `rule` describe.
fn filter_of(query: &[(String, String)]) -> Result<Filter, String> {
    let get = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let exclude: Vec<&str> = query
        .iter()
        .filter(|(n, _)| n == "exclude")
        .map(|(_, v)| v.as_str())
        .collect();
    Filter::parse(get("pattern"), &exclude, get("rule"))
}

fn subscribe(
    st: &AppState,
    query: &[(String, String)],
    last_event_id: Option<&str>,
) -> Result<Subscription, String> {
    let get = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let filter = filter_of(query)?;
    let after = match get("after").or(last_event_id) {
        None | Some("") => None,
        Some(s) => Some(
            s.trim()
                .parse::<u64>()
                .map_err(|_| format!("after / Last-Event-ID must be a seq number, not {s:?}"))?,
        ),
    };
    Ok(st.tap.subscribe(filter, after))
}

enum Phase {
    Gap,
    Backlog(std::vec::IntoIter<std::sync::Arc<super::tap::StreamItem>>),
    Live,
    Done,
}

/// SSE: `id: <seq>` and the event JSON (with `"seq"`) as data.
pub async fn sse(
    State(st): State<AppState>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let last = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let mut sub = match subscribe(&st, &query, last) {
        Ok(s) => s,
        Err(m) => return json_response(400, ApiResponse::error(400, &m).body),
    };
    let backlog = std::mem::take(&mut sub.backlog).into_iter();
    let s = stream::unfold(
        (sub, Phase::Gap, Some(backlog)),
        |(mut sub, mut phase, mut backlog)| async move {
            loop {
                match phase {
                    Phase::Gap => {
                        phase = Phase::Backlog(backlog.take().unwrap_or_default());
                        if let Some((from, to)) = sub.gap {
                            let ev = SseEvent::default()
                                .event("gap")
                                .data(json!({"from": from, "to": to}).to_string());
                            return Some((Ok::<_, Infallible>(ev), (sub, phase, backlog)));
                        }
                    }
                    Phase::Backlog(mut it) => match it.next() {
                        Some(item) => {
                            let ev = SseEvent::default()
                                .id(item.seq.to_string())
                                .data(item.text.as_str());
                            return Some((Ok(ev), (sub, Phase::Backlog(it), backlog)));
                        }
                        None => phase = Phase::Live,
                    },
                    Phase::Live => match sub.rx.recv().await {
                        Some(item) => {
                            let ev = SseEvent::default()
                                .id(item.seq.to_string())
                                .data(item.text.as_str());
                            return Some((Ok(ev), (sub, Phase::Live, backlog)));
                        }
                        None => {
                            let reason = sub
                                .reason
                                .lock()
                                .clone()
                                .unwrap_or_else(|| "stream closed".into());
                            let ev = SseEvent::default()
                                .event("dropped")
                                .data(json!({"reason": reason}).to_string());
                            return Some((Ok(ev), (sub, Phase::Done, backlog)));
                        }
                    },
                    Phase::Done => return None,
                }
            }
        },
    );
    sse_response(s)
}

fn sse_response(s: impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static) -> Response {
    Sse::new(s)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// WebSocket: one text message per event (the event JSON with `"seq"`).
pub async fn ws(
    State(st): State<AppState>,
    Query(query): Query<Vec<(String, String)>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let sub = match subscribe(&st, &query, None) {
        Ok(s) => s,
        Err(m) => return json_response(400, ApiResponse::error(400, &m).body),
    };
    upgrade.on_upgrade(move |socket| run_ws(socket, sub))
}

async fn run_ws(mut socket: WebSocket, mut sub: Subscription) {
    if let Some((from, to)) = sub.gap {
        let gap = json!({"gap": {"from": from, "to": to}}).to_string();
        if socket.send(Message::Text(gap.into())).await.is_err() {
            return;
        }
    }
    for item in std::mem::take(&mut sub.backlog) {
        if socket
            .send(Message::Text(item.text.clone().into()))
            .await
            .is_err()
        {
            return;
        }
    }
    loop {
        tokio::select! {
            item = sub.rx.recv() => match item {
                Some(item) => {
                    if socket.send(Message::Text(item.text.clone().into())).await.is_err() {
                        return;
                    }
                }
                None => {
                    let reason = sub.reason.lock().clone().unwrap_or_else(|| "stream closed".into());
                    let _ = socket
                        .send(Message::Text(json!({"dropped": reason}).to_string().into()))
                        .await;
                    let _ = socket.send(Message::Close(None)).await;
                    return;
                }
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// `/api/stream/check`: whether the stream would accept these filters, as
/// `{"ok": true}` or `{"ok": false, "error": ...}` (always 200: the page asks
/// before it switches its stream).
pub async fn check(Query(query): Query<Vec<(String, String)>>) -> Response {
    let body = match filter_of(&query) {
        Ok(_) => json!({"ok": true}),
        Err(e) => json!({"ok": false, "error": e}),
    };
    json_response(200, body.to_string())
}
