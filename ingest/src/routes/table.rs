//! The route table: every path ingest serves, with who may call it, in one list.
//!
//! The router is built from this table and nothing else, so the table is the whole truth
//! about authentication: a route is either [`Access::Token`] (the token check wraps the
//! route's every method, HEAD, OPTIONS, unknown methods and the 405 answer included),
//! [`Access::Public`] (holds no data), or [`Access::OwnCheck`] (the handler verifies its
//! own credential: a Twilio signature, a dashboard ticket). axum answers HEAD with the GET
//! handler, so a check that skipped HEAD once let anyone read every GET route's status and
//! length; wrapping the whole method router leaves no method outside the check.
//!
//! A row may also mark methods as expensive (bulk calls, contact import, list queries,
//! dashboard tickets): those count against their token's rate limit ([`crate::limits`]),
//! checked after the token, before the handler.
//!
//! Tests walk [`table`] with every method (`ingest/tests/it/security.rs`) and every
//! expensive route over its limit (`ingest/tests/it/limits.rs`).

use axum::{
    Router,
    http::Method,
    middleware,
    routing::{MethodRouter, delete, get, post, put},
};

use crate::{AppState, auth, dashboard, http_metrics, limits, openapi, routes};

const GET: &[Method] = &[Method::GET];
const POST: &[Method] = &[Method::POST];

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: the route holds no data (health, the API's description, the dashboard page).
    Public,
    /// A configured API token whose role allows what the rule says the method needs, checked
    /// before any handler runs, for every method.
    Token(auth::Rule),
    /// The handler checks a credential of its own; the text names it.
    OwnCheck(&'static str),
}

/// One row of the table.
pub struct Entry {
    pub path: &'static str,
    pub access: Access,
    /// Methods limited per token ([`crate::limits`]); HEAD counts as GET.
    pub expensive: &'static [Method],
    pub(crate) methods: MethodRouter<AppState>,
}

impl Entry {
    /// Marks `methods` of this route as expensive. Only a token route can be: the limit is
    /// the token's. (The dashboard's stream, which checks its own credential, checks the
    /// limit itself once it knows the token.)
    fn expensive(mut self, methods: &'static [Method]) -> Self {
        assert!(matches!(self.access, Access::Token(_)), "{}", self.path);
        self.expensive = methods;
        self
    }

    /// Every method of this token route only reads: a viewer may call it.
    fn reads(mut self) -> Self {
        assert!(matches!(self.access, Access::Token(_)), "{}", self.path);
        self.access = Access::Token(auth::Rule::Reads);
        self
    }

    /// Every method of this token route administers (tokens): only an admin token may call it.
    fn admin(mut self) -> Self {
        assert!(matches!(self.access, Access::Token(_)), "{}", self.path);
        self.access = Access::Token(auth::Rule::Admin);
        self
    }

    /// This token route reports call outcomes: a carrier's token may call it.
    fn callback(mut self) -> Self {
        assert!(matches!(self.access, Access::Token(_)), "{}", self.path);
        self.access = Access::Token(auth::Rule::Callback);
        self
    }
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("path", &self.path)
            .field("access", &self.access)
            .field("expensive", &self.expensive)
            .finish_non_exhaustive()
    }
}

fn token(path: &'static str, methods: MethodRouter<AppState>) -> Entry {
    Entry {
        path,
        access: Access::Token(auth::Rule::ByMethod),
        expensive: &[],
        methods,
    }
}

fn public(path: &'static str, methods: MethodRouter<AppState>) -> Entry {
    Entry {
        path,
        access: Access::Public,
        expensive: &[],
        methods,
    }
}

fn own(path: &'static str, credential: &'static str, methods: MethodRouter<AppState>) -> Entry {
    Entry {
        path,
        access: Access::OwnCheck(credential),
        expensive: &[],
        methods,
    }
}

/// Every route ingest serves. `metrics_require_token` decides `/metrics`.
pub fn table(metrics_require_token: bool) -> Vec<Entry> {
    use routes::{
        bulk, call_queries, callbacks, calls, campaign_admin, campaigns, compat, contact_import,
        contacts, dlq, dnc, tokens, webhook_deliveries, webhooks,
    };
    let metrics = get(http_metrics::render);
    vec![
        public("/healthz", get(|| async { "ok" })),
        public("/readyz", get(crate::ready)),
        // The API's description is public, like the old system's docs.
        public("/api/v1/openapi.json", get(openapi::document)),
        public("/api/v1/docs", get(openapi::page)),
        // The page holds no data; it asks for the token.
        public("/", get(dashboard::page)),
        if metrics_require_token {
            token("/metrics", metrics)
        } else {
            public("/metrics", metrics)
        },
        own(
            "/api/v1/callbacks/twilio",
            "Twilio's signature",
            post(callbacks::twilio),
        ),
        // Limited per token too, by the handler once it knows the token (see `expensive`).
        own(
            "/api/v1/dashboard/events",
            "a dashboard ticket or the API token",
            get(dashboard::events),
        ),
        // The compatible API: the old system's paths, trailing slashes included.
        token("/api/v1/initiate-call/", post(compat::calls::initiate)),
        token("/api/v1/bulk-initiate-calls/", post(compat::calls::bulk)).expensive(POST),
        token("/api/v1/callback/", put(compat::callback::callback)).callback(),
        token(
            "/api/v1/campaigns/",
            get(compat::campaigns::list).post(compat::campaigns::create),
        ),
        token("/api/v1/campaigns/{id}/", get(compat::campaigns::get)),
        token(
            "/api/v1/phone-numbers/",
            post(compat::campaigns::add_phone_numbers),
        ),
        token("/api/v1/metrics/", get(compat::metrics::metrics)),
        // The resource API.
        // Creating a call is the hot path and stays unlimited; listing is a query.
        token("/api/v1/calls", post(calls::create).get(call_queries::list)).expensive(GET),
        token("/api/v1/calls/{id}", get(call_queries::get)),
        token("/api/v1/calls/bulk", post(bulk::create)).expensive(POST),
        token(
            "/api/v1/campaigns",
            post(campaigns::create).get(campaigns::list),
        )
        .expensive(GET),
        token(
            "/api/v1/campaigns/{id}",
            get(campaigns::get).patch(campaign_admin::patch),
        ),
        token("/api/v1/dnc", post(dnc::add)),
        token("/api/v1/dnc/{phone}", get(dnc::get).delete(dnc::remove)),
        token("/api/v1/campaigns/{id}/contacts", post(contacts::add)),
        token(
            "/api/v1/campaigns/{id}/contacts/import",
            post(contact_import::import),
        )
        .expensive(POST),
        token("/api/v1/campaigns/{id}/start", post(campaign_admin::start)),
        token("/api/v1/campaigns/{id}/pause", post(campaign_admin::pause)),
        token(
            "/api/v1/campaigns/{id}/resume",
            post(campaign_admin::resume),
        ),
        token(
            "/api/v1/campaigns/{id}/cancel",
            post(campaign_admin::cancel),
        ),
        token("/api/v1/campaigns/{id}/stats", get(campaign_admin::stats)),
        token("/api/v1/dead-letters", get(dlq::list)).expensive(GET),
        token(
            "/api/v1/dead-letters/{seq}",
            get(dlq::show).delete(dlq::discard),
        ),
        token("/api/v1/dead-letters/{seq}/redrive", post(dlq::redrive)),
        token(
            "/api/v1/webhooks",
            post(webhooks::create).get(webhooks::list),
        ),
        token(
            "/api/v1/webhooks/{id}",
            get(webhooks::get)
                .patch(webhooks::patch)
                .delete(webhooks::delete),
        ),
        token("/api/v1/dashboard/ticket", post(dashboard::ticket))
            .expensive(POST)
            .reads(),
        token(
            "/api/v1/webhooks/{id}/rotate-secret",
            post(webhooks::rotate_secret),
        ),
        token(
            "/api/v1/webhooks/{id}/deliveries",
            get(webhook_deliveries::list),
        )
        .expensive(GET),
        token(
            "/api/v1/webhooks/{id}/deliveries/{msg_id}/redeliver",
            post(webhook_deliveries::redeliver),
        ),
        token(
            "/api/v1/webhooks/{id}/replay",
            post(webhook_deliveries::replay),
        ),
        token("/api/v1/tokens", post(tokens::create).get(tokens::list)).admin(),
        token("/api/v1/tokens/{id}", delete(tokens::revoke)).admin(),
        token(
            "/api/v1/subjects/{phone}/export",
            get(routes::subjects::export),
        )
        .admin(),
        token(
            "/api/v1/subjects/{phone}/erase",
            post(routes::subjects::erase),
        )
        .admin(),
        token("/api/v1/audit", get(crate::audit::list))
            .admin()
            .expensive(GET),
    ]
}

/// The router of `table`: the token check wraps every method of every token route, and the
/// rate limit, inside it, the expensive ones.
pub(crate) fn router(state: &AppState) -> Router<AppState> {
    table(state.config.metrics_require_token)
        .into_iter()
        .fold(Router::new(), |router, entry| {
            let methods = match entry.access {
                Access::Token(rule) => {
                    let methods = if entry.expensive.is_empty() {
                        entry.methods
                    } else {
                        entry.methods.layer(middleware::from_fn_with_state(
                            limits::Limited {
                                state: state.clone(),
                                methods: entry.expensive,
                            },
                            limits::expensive,
                        ))
                    };
                    // Added last, so it runs first: the limit counts by the token it found.
                    methods.layer(middleware::from_fn_with_state(
                        auth::Guard {
                            state: state.clone(),
                            rule,
                        },
                        auth::require_token,
                    ))
                }
                Access::Public | Access::OwnCheck(_) => entry.methods,
            };
            router.route(entry.path, methods)
        })
}
