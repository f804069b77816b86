//! The live dashboard: a page at `/` (static HTML, CSS and script embedded in the binary,
//! nothing loaded from elsewhere, so it works offline) and a server-sent event stream at
//! `GET /api/v1/dashboard/events` that keeps it current.
//!
//! The page is public; everything it shows needs the API token. It asks for the token, keeps
//! it in `sessionStorage`, and sends it in a header for the API calls (dead letters,
//! redrive) and to obtain a [`ticket`] that opens the event stream (a browser's
//! `EventSource` cannot send headers; the ticket module says why a ticket and not the token
//! goes in the URL). Programs may open the stream with the token in a header instead.
//!
//! The stream starts with a `snapshot` event (the whole view: campaigns with their calls per
//! bucket, dial rate and queue depths, and the DLQ size), then sends `update` events with the
//! campaigns that changed, at most every [`hub::TICK`]. The numbers come from one [`hub`]
//! per process, started by the first stream, which follows JetStream and aggregates in
//! [`tally`]. A browser that falls behind gets a fresh snapshot instead of the updates it
//! missed.
//!
//! A token holds at most `ingest.dashboard.max_streams_per_token` streams at once
//! ([`streams`]), and opening one counts against its rate limit ([`crate::limits`]).

pub mod hub;
pub mod streams;
pub mod tally;
pub mod ticket;

use std::{
    convert::Infallible,
    sync::{Arc, OnceLock},
    time::Duration,
};

use axum::{
    extract::{Query, State, rejection::QueryRejection},
    http::{HeaderMap, HeaderValue, header},
    response::{
        Html, IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use ccm_core::access::Need;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_util::sync::CancellationToken;
use utoipa_axum::routes;

use crate::routes::table::{Entry, GET, POST, own, public, token, undocumented};
use crate::{
    AppState,
    auth::{self, TokenId},
    error::ApiJson,
    limits,
};
use hub::{Frame, Shared, Sources};
use streams::StreamCounts;
use ticket::{Refused, TicketKey, Tickets};

/// The `Retry-After` of a stream refused for its token's cap: streams end when their
/// browser leaves, which no one can predict, so a page retries now and then.
const STREAM_CAP_RETRY_SECS: u64 = 10;

/// How long a new stream waits for the feed's first reading of the read model before it
/// sends what it has (a snapshot marked not ready).
const FIRST_SNAPSHOT_WAIT: Duration = Duration::from_secs(10);

/// The dashboard's share of the application state; cheap to clone.
#[derive(Debug, Clone)]
pub struct Dashboard {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tickets: Tickets,
    streams: StreamCounts,
    stop: CancellationToken,
    feed: OnceLock<Arc<Shared>>,
}

impl Dashboard {
    /// The dashboard of an ingest whose tickets are signed with `key`, and whose tokens hold
    /// at most `max_streams_per_token` streams each (0: no cap).
    pub fn new(key: &TicketKey, max_streams_per_token: u32) -> Self {
        Self {
            inner: Arc::new(Inner {
                tickets: Tickets::new(key),
                streams: StreamCounts::new(max_streams_per_token),
                stop: CancellationToken::new(),
                feed: OnceLock::new(),
            }),
        }
    }

    /// Ends the feed and every open stream. Called when ingest shuts down: a graceful
    /// shutdown waits for open responses, and an event stream never ends by itself.
    pub fn stop(&self) {
        self.inner.stop.cancel();
    }

    /// The feed, started by the first caller.
    fn feed(&self, state: &AppState) -> Arc<Shared> {
        self.inner
            .feed
            .get_or_init(|| {
                hub::start(
                    Sources {
                        js: state.js.clone(),
                        pg: state.pg.clone(),
                        campaigns: state.campaign_cache.clone(),
                    },
                    self.inner.stop.child_token(),
                )
            })
            .clone()
    }
}

/// `GET /`: the page. It holds no data; it fetches everything with the token the operator
/// enters.
pub async fn page() -> Response {
    let mut response = Html(include_str!("page.html")).into_response();
    let headers = response.headers_mut();
    // Inline script and style only, no framing: the page loads nothing from elsewhere.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A ticket for the event stream.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IssuedTicket {
    /// Pass as `?ticket=` to `GET /api/v1/dashboard/events`.
    pub ticket: String,
    pub expires_in_secs: i64,
}

/// Issues a short-lived ticket that opens the dashboard's event stream once (for browsers,
/// whose `EventSource` cannot send the token in a header). The stream it opens counts
/// against this token's stream cap.
#[utoipa::path(post, path = "/api/v1/dashboard/ticket", tag = "dashboard",
    responses(
        (status = 200, body = IssuedTicket),
        (status = 401, body = crate::openapi::CompatError),
        (status = 429, description = "Over the token's rate limit; see `Retry-After`", body = crate::openapi::Problem,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ))]
pub(crate) async fn ticket(
    State(state): State<AppState>,
    axum::Extension(token): axum::Extension<TokenId>,
) -> ApiJson<IssuedTicket> {
    ApiJson(IssuedTicket {
        ticket: state
            .dashboard
            .inner
            .tickets
            .issue(token, chrono::Utc::now().timestamp()),
        expires_in_secs: ticket::TICKET_TTL_SECS,
    })
}

/// The stream's query string.
#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    pub ticket: Option<String>,
}

/// One server-sent event of the dashboard stream, as the OpenAPI document describes it: each
/// event of a `text/event-stream` body is checked against the response schema, so the schema
/// is that of an event, not of the whole body.
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)] // Only documents the wire format; the events are written by axum's `Sse`.
pub struct SseEvent {
    /// `snapshot` or `update`.
    pub event: String,
    /// The JSON view: every campaign (snapshot) or the campaigns that changed (update).
    pub data: String,
}

/// Live progress as server-sent events: `snapshot` (the whole view) first, then `update`
/// (the campaigns that changed), at most twice a second. Needs a ticket from
/// `POST /api/v1/dashboard/ticket` in the query (each ticket opens one stream), or the token
/// in a header. A token holds a few streams at once (`ingest.dashboard.max_streams_per_token`).
#[utoipa::path(get, path = "/api/v1/dashboard/events", tag = "dashboard",
    params(("ticket" = Option<String>, Query, description = "A ticket from POST /api/v1/dashboard/ticket")),
    responses(
        (status = 200, description = "`text/event-stream` of `snapshot` and `update` events", content_type = "text/event-stream", body = SseEvent),
        (status = 401, body = crate::openapi::CompatError),
        (status = 429, description = "Over the token's rate limit (`rate_limited`) or its cap of open streams (`too_many_streams`); see `Retry-After`",
            body = crate::openapi::Problem, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ))]
pub(crate) async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Response {
    // The credential is checked before anything else, so a malformed query without a valid
    // credential is a 401 like any other unauthenticated request.
    let ticket = query.ok().and_then(|Query(q)| q.ticket);
    let token = match (auth::token(&headers), ticket) {
        (Some(token), _) => state
            .tokens
            .identify(token, chrono::Utc::now())
            .ok()
            .map(|identity| identity.id),
        (None, Some(ticket)) => redeem(&state, &ticket),
        (None, None) => None,
    };
    let Some(token) = token else {
        return auth::unauthorized("A valid ticket or token is required");
    };
    // A carrier's token reads nothing (its ticket could not have been issued either).
    if let Some(role) = state.tokens.role(token).filter(|r| !r.allows(Need::Read)) {
        return auth::forbidden(role, Need::Read);
    }
    if let Err(too_many) = state.limits.check(token) {
        return too_many.into_response();
    }
    let Some(guard) = state.dashboard.inner.streams.open(token) else {
        return too_many_streams();
    };
    let feed = state.dashboard.feed(&state);
    let stop = state.dashboard.inner.stop.clone();
    let (tx, mut rx) = mpsc::channel::<Event>(4);
    tokio::spawn(forward(feed, tx, stop));
    // The guard lives in the response body: the stream's place is freed when hyper drops the
    // body, however the stream ended.
    let stream = futures::stream::poll_fn(move |cx| {
        let _held = &guard;
        rx.poll_recv(cx).map(|e| e.map(Ok::<_, Infallible>))
    });
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    // Proxies must not buffer the stream.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The token whose ticket this is, once: a ticket opens one stream, and none once its token
/// was removed from the configuration.
fn redeem(state: &AppState, ticket: &str) -> Option<TokenId> {
    match state
        .dashboard
        .inner
        .tickets
        .redeem(ticket, chrono::Utc::now().timestamp())
    {
        Ok(claim) => state
            .tokens
            .contains(claim.token, chrono::Utc::now())
            .then_some(claim.token),
        Err(Refused::Busy) => {
            tracing::warn!("too many dashboard tickets redeemed within a minute; refusing more");
            None
        }
        Err(Refused::Invalid | Refused::Used) => None,
    }
}

fn too_many_streams() -> Response {
    limits::too_many_requests(
        "too_many_streams",
        "This token holds as many dashboard streams as it may; close one or retry later.".into(),
        STREAM_CAP_RETRY_SECS,
    )
}

/// Feeds one browser until it goes away or ingest stops.
async fn forward(feed: Arc<Shared>, tx: mpsc::Sender<Event>, stop: CancellationToken) {
    // Subscribed before the snapshot is taken, so no change falls between the two.
    let mut frames = feed.subscribe();
    let mut ready = feed.ready();
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = tx.closed() => return,
        _ = tokio::time::timeout(FIRST_SNAPSHOT_WAIT, ready.wait_for(|r| *r)) => {}
    }
    let snapshot = |data: &str| Event::default().event("snapshot").data(data);
    if tx.send(snapshot(&feed.snapshot())).await.is_err() {
        return;
    }
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tx.closed() => return,
            frame = frames.recv() => match frame {
                Ok(Frame::Snapshot(data)) => snapshot(&data),
                Ok(Frame::Update(data)) => Event::default().event("update").data(&*data),
                // Missed updates are replaced by the whole view.
                Err(RecvError::Lagged(_)) => snapshot(&feed.snapshot()),
                Err(RecvError::Closed) => return,
            },
        };
        if tx.send(event).await.is_err() {
            return;
        }
    }
}

/// The dashboard's page, its tickets and its stream.
pub(crate) fn routes() -> Vec<Entry> {
    vec![
        // The page holds no data; it asks for the token.
        public(undocumented("/", GET, axum::routing::get(page))),
        token(routes!(ticket)).expensive(POST).reads(),
        // Limited per token too, by the handler once it knows the token (see `expensive`).
        own("a dashboard ticket or the API token", routes!(events)),
    ]
}
