//! `GET /v1/events` (the history, filtered) and `GET /v1/events/stream` (server-sent events: the history the
//! filter admits, then every new event as it is recorded). Read-only, like every `GET`: no token needed.
//!
//! Query: `function=NAME`, `kind=KIND[,KIND…]` (`scale-out`, `placement`, … — `dilu_api::EventKind`),
//! `since=SEQ` (only later events), `limit=N` (the newest N of the history; default 1000, at most 10000).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use dilu_api::{Event, EventKind, FieldError};
use dilu_control::events::{EventFilter, EventLog};
use futures_util::stream;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use crate::api::{ApiState, field_error};

/// The most events one read returns.
pub const MAX_LIMIT: usize = 10_000;

/// The query of both endpoints.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventQuery {
    function: Option<String>,
    kind: Option<String>,
    since: Option<u64>,
    limit: Option<usize>,
}

/// The query as parsed, or its refusal naming what is wrong.
fn parsed(
    query: Result<Query<EventQuery>, QueryRejection>,
) -> Result<(EventFilter, usize), FieldError> {
    let Query(q) = query.map_err(|e| {
        FieldError::new(
            "query",
            "(as written)",
            format!("{}; expected function, kind, since, limit", e.body_text()),
        )
    })?;
    q.filter()
}

impl EventQuery {
    fn filter(&self) -> Result<(EventFilter, usize), FieldError> {
        let kinds = match &self.kind {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .filter(|k| !k.trim().is_empty())
                .map(|k| {
                    k.trim()
                        .parse::<EventKind>()
                        .map_err(|rule| FieldError::new("kind", k.trim(), rule))
                })
                .collect::<Result<_, _>>()?,
        };
        let limit = self.limit.unwrap_or(1000);
        FieldError::require(
            (1..=MAX_LIMIT).contains(&limit),
            "limit",
            limit,
            format!("must be in 1..={MAX_LIMIT}"),
        )?;
        Ok((
            EventFilter {
                function: self.function.clone(),
                kinds,
                since: self.since,
            },
            limit,
        ))
    }
}

/// `GET /v1/events`.
pub(crate) async fn list(
    State(st): State<Arc<ApiState>>,
    query: Result<Query<EventQuery>, QueryRejection>,
) -> Response {
    match parsed(query) {
        Ok((filter, limit)) => {
            let events = st.platform.controller().events().list(&filter, limit);
            Json(json!({ "events": events })).into_response()
        }
        Err(e) => field_error(e),
    }
}

fn sse(event: &Event, json: &str) -> SseEvent {
    SseEvent::default()
        .id(event.seq.to_string())
        .event(event.kind.as_str())
        .data(json)
}

/// `GET /v1/events/stream`: the admitted history, then live events; a comment every 15 s keeps idle
/// connections open. A subscriber too slow for the log gets a `lagged` event saying how many it missed.
pub(crate) async fn stream(
    State(st): State<Arc<ApiState>>,
    query: Result<Query<EventQuery>, QueryRejection>,
) -> Response {
    match parsed(query) {
        Ok((filter, limit)) => sse_stream(st.platform.controller().events(), filter, limit),
        Err(e) => field_error(e),
    }
}

/// The server-sent-events response for `log`: the last `limit` events `filter` admits, then every new one it
/// admits as it is recorded. What `GET /v1/events/stream` answers, and what the gateway-overhead bench serves
/// beside the gateway to measure the stream's cost.
pub fn sse_stream(log: &EventLog, filter: EventFilter, limit: usize) -> Response {
    // Subscribe before reading the history, so nothing falls between them; duplicates are skipped by seq.
    let live = log.subscribe();
    let history = log.list(&filter, limit);
    let last = history.last().map(|e| e.seq).or(filter.since).unwrap_or(0);
    let replay = stream::iter(
        history
            .iter()
            .map(|e| sse(e, &serde_json::to_string(e).unwrap_or_default()))
            .map(Ok::<_, Infallible>)
            .collect::<Vec<_>>(),
    );
    let updates = stream::unfold((live, filter, last), |(mut rx, filter, last)| async move {
        loop {
            match rx.recv().await {
                Ok(e) if e.event.seq > last && filter.admits(&e.event) => {
                    let next = e.event.seq;
                    return Some((Ok(sse(&e.event, e.json())), (rx, filter, next)));
                }
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => {
                    let note = SseEvent::default()
                        .event("lagged")
                        .data(format!("{{\"missed\": {n}}}"));
                    return Some((Ok(note), (rx, filter, last)));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(futures_util::StreamExt::chain(replay, updates))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
