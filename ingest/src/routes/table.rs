//! The route table: every path ingest serves, with who may call it, declared once.
//!
//! Each resource declares its rows beside its handlers (a `routes()` function in its module:
//! `routes::calls`, `routes::campaigns`, …, `dashboard`, `audit`); [`table`] joins them. A
//! documented row is made from the handler's `#[utoipa::path]` (through `utoipa_axum`'s
//! [`routes!`](utoipa_axum::routes)): its path, methods and OpenAPI operation come from that
//! one annotation, and both the router ([`router`]) and the OpenAPI document ([`openapi`])
//! are built from the same rows, so neither can drift from the access rules.
//!
//! To add a route: write the handler with `#[utoipa::path(method, path = …)]`; add a row
//! `token(routes!(handler))` (or `public`/`own`, with `.reads()`, `.admin()`, `.callback()`,
//! `.expensive(…)` for its rule) to its resource's `routes()`, and a new resource's
//! `routes()` to [`table`]. Handlers of one row share its path: `routes!(get, remove)`.
//!
//! A route is either [`Access::Token`] (the token check wraps the route's every method, HEAD,
//! OPTIONS, unknown methods and the 405 answer included), [`Access::Public`] (holds no data),
//! or [`Access::OwnCheck`] (the handler verifies its own credential: a Twilio signature, a
//! dashboard ticket). axum answers HEAD with the GET handler, so a check that skipped HEAD
//! once let anyone read every GET route's status and length; wrapping the whole method
//! router leaves no method outside the check.
//!
//! A row may also mark methods as expensive (bulk calls, contact import, list queries,
//! dashboard tickets): those count against their token's rate limit ([`crate::limits`]),
//! checked after the token, before the handler.
//!
//! Tests walk [`table`] with every method (`ingest/tests/it/security.rs`), with each role
//! (`roles.rs`), and every expensive route over its limit (`limits.rs`); the tests below
//! check that the rows and the document agree.

use std::sync::LazyLock;

use axum::{
    Router,
    http::Method,
    middleware,
    routing::{MethodRouter, get},
};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter, UtoipaMethodRouterExt};

use crate::{AppState, auth, dashboard, http_metrics, limits, openapi, routes};

pub(crate) const GET: &[Method] = &[Method::GET];
pub(crate) const POST: &[Method] = &[Method::POST];

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

/// A path and its handlers, documented (from `routes!`) or not (infrastructure routes).
pub(crate) struct Route {
    path: String,
    methods: Vec<Method>,
    handlers: Handlers,
}

enum Handlers {
    Documented(UtoipaMethodRouter<AppState>),
    Undocumented(MethodRouter<AppState>),
}

impl From<UtoipaMethodRouter<AppState>> for Route {
    /// The path and methods of the handlers' `#[utoipa::path]` annotations.
    fn from(route: UtoipaMethodRouter<AppState>) -> Self {
        let mut paths = route.1.paths.iter();
        let (Some((path, item)), None) = (paths.next(), paths.next()) else {
            panic!("one row is one path: {:?}", route.1.paths.keys());
        };
        let methods = [
            (&item.get, Method::GET),
            (&item.put, Method::PUT),
            (&item.post, Method::POST),
            (&item.delete, Method::DELETE),
            (&item.options, Method::OPTIONS),
            (&item.head, Method::HEAD),
            (&item.patch, Method::PATCH),
            (&item.trace, Method::TRACE),
        ]
        .into_iter()
        .filter(|(operation, _)| operation.is_some())
        .map(|(_, method)| method)
        .collect();
        Self {
            path: path.clone(),
            methods,
            handlers: Handlers::Documented(route),
        }
    }
}

/// A route that is not part of the API's description (health, metrics, pages).
pub(crate) fn undocumented(
    path: &'static str,
    methods: &'static [Method],
    handlers: MethodRouter<AppState>,
) -> Route {
    Route {
        path: path.to_owned(),
        methods: methods.to_vec(),
        handlers: Handlers::Undocumented(handlers),
    }
}

/// One row of the table.
pub struct Entry {
    pub path: String,
    /// The methods the route serves (axum also answers HEAD for GET).
    pub methods: Vec<Method>,
    pub access: Access,
    /// Methods limited per token ([`crate::limits`]); HEAD counts as GET.
    pub expensive: &'static [Method],
    /// Whether the route is an operation of the OpenAPI document.
    pub documented: bool,
    handlers: Handlers,
}

impl Entry {
    fn new(route: impl Into<Route>, access: Access) -> Self {
        let Route {
            path,
            methods,
            handlers,
        } = route.into();
        Self {
            path,
            methods,
            access,
            expensive: &[],
            documented: matches!(handlers, Handlers::Documented(_)),
            handlers,
        }
    }

    /// Marks `methods` of this route as expensive. Only a token route can be: the limit is
    /// the token's. (The dashboard's stream, which checks its own credential, checks the
    /// limit itself once it knows the token.)
    pub(crate) fn expensive(mut self, methods: &'static [Method]) -> Self {
        assert!(matches!(self.access, Access::Token(_)), "{}", self.path);
        assert!(
            methods.iter().all(|m| self.methods.contains(m)),
            "{}: expensive {methods:?} not among {:?}",
            self.path,
            self.methods
        );
        self.expensive = methods;
        self
    }

    /// Every method of this token route only reads: a viewer may call it.
    pub(crate) fn reads(self) -> Self {
        self.rule(auth::Rule::Reads)
    }

    /// Every method of this token route administers (tokens): only an admin token may call it.
    pub(crate) fn admin(self) -> Self {
        self.rule(auth::Rule::Admin)
    }

    /// This token route reports call outcomes: a carrier's token may call it.
    pub(crate) fn callback(self) -> Self {
        self.rule(auth::Rule::Callback)
    }

    fn rule(mut self, rule: auth::Rule) -> Self {
        assert!(matches!(self.access, Access::Token(_)), "{}", self.path);
        self.access = Access::Token(rule);
        self
    }
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("path", &self.path)
            .field("methods", &self.methods)
            .field("access", &self.access)
            .field("expensive", &self.expensive)
            .field("documented", &self.documented)
            .finish_non_exhaustive()
    }
}

/// A token route, each method needing what its kind needs ([`auth::Rule::ByMethod`]).
pub(crate) fn token(route: impl Into<Route>) -> Entry {
    Entry::new(route, Access::Token(auth::Rule::ByMethod))
}

/// A route anyone may call: it holds no data.
pub(crate) fn public(route: impl Into<Route>) -> Entry {
    Entry::new(route, Access::Public)
}

/// A route whose handler checks `credential` itself.
pub(crate) fn own(credential: &'static str, route: impl Into<Route>) -> Entry {
    Entry::new(route, Access::OwnCheck(credential))
}

/// Every route ingest serves. `metrics_require_token` decides `/metrics`.
pub fn table(metrics_require_token: bool) -> Vec<Entry> {
    [
        service(metrics_require_token),
        routes::compat::routes(),
        routes::calls::routes(),
        routes::campaigns::routes(),
        routes::dnc::routes(),
        routes::consents::routes(),
        routes::dlq::routes(),
        routes::webhooks::routes(),
        routes::tokens::routes(),
        crate::audit::routes(),
        routes::subjects::routes(),
        routes::callbacks::routes(),
        dashboard::routes(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Health, metrics and the API's description.
fn service(metrics_require_token: bool) -> Vec<Entry> {
    let metrics = undocumented("/metrics", GET, get(http_metrics::render));
    vec![
        public(undocumented("/healthz", GET, get(|| async { "ok" }))),
        public(undocumented("/readyz", GET, get(crate::ready))),
        // The API's description is public, like the old system's docs.
        public(undocumented(
            "/api/v1/openapi.json",
            GET,
            get(openapi::document),
        )),
        public(undocumented("/api/v1/docs", GET, get(openapi::page))),
        if metrics_require_token {
            token(metrics)
        } else {
            public(metrics)
        },
    ]
}

/// Mounts `entries` on one router with the document's base; `guard` wraps each row's
/// methods in what its access needs.
fn assemble(
    entries: Vec<Entry>,
    guard: impl Fn(Access, &'static [Method], MethodRouter<AppState>) -> MethodRouter<AppState>,
) -> OpenApiRouter<AppState> {
    entries.into_iter().fold(
        OpenApiRouter::with_openapi(openapi::base()),
        |router, entry| {
            let (access, expensive) = (entry.access, entry.expensive);
            match entry.handlers {
                Handlers::Documented(route) => {
                    router.routes(route.map(|methods| guard(access, expensive, methods)))
                }
                Handlers::Undocumented(methods) => {
                    router.route(&entry.path, guard(access, expensive, methods))
                }
            }
        },
    )
}

/// The router of [`table`]: the token check wraps every method of every token route, and
/// the rate limit, inside it, the expensive ones.
pub(crate) fn router(state: &AppState) -> Router<AppState> {
    assemble(
        table(state.config.metrics_require_token),
        |access, expensive, methods| match access {
            Access::Token(rule) => {
                let methods = if expensive.is_empty() {
                    methods
                } else {
                    methods.layer(middleware::from_fn_with_state(
                        limits::Limited {
                            state: state.clone(),
                            methods: expensive,
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
            Access::Public | Access::OwnCheck(_) => methods,
        },
    )
    .into()
}

/// The OpenAPI document of [`table`] (`GET /api/v1/openapi.json`), built once.
pub fn openapi() -> &'static utoipa::openapi::OpenApi {
    static DOCUMENT: LazyLock<utoipa::openapi::OpenApi> =
        LazyLock::new(|| assemble(table(false), |_, _, methods| methods).into_openapi());
    &DOCUMENT
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn documented_operations() -> BTreeSet<(String, String)> {
        let doc = serde_json::to_value(openapi()).expect("json");
        let mut operations = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("item").keys() {
                if [
                    "get", "put", "post", "delete", "options", "head", "patch", "trace",
                ]
                .contains(&method.as_str())
                {
                    operations.insert((path.clone(), method.to_uppercase()));
                }
            }
        }
        operations
    }

    /// A row added without a rule, or a route mounted beside the table, shows up here: every
    /// operation of the document is a documented row's method and the other way round, no
    /// path has two rows, and the undocumented rows are exactly the known infrastructure.
    #[test]
    fn the_rows_and_the_document_agree() {
        for metrics_require_token in [false, true] {
            let rows = table(metrics_require_token);
            let paths: BTreeSet<&str> = rows.iter().map(|r| r.path.as_str()).collect();
            assert_eq!(paths.len(), rows.len(), "a path has two rows");
            let from_rows: BTreeSet<(String, String)> = rows
                .iter()
                .filter(|r| r.documented)
                .flat_map(|r| r.methods.iter().map(|m| (r.path.clone(), m.to_string())))
                .collect();
            assert_eq!(from_rows, documented_operations());
            let undocumented: BTreeSet<&str> = rows
                .iter()
                .filter(|r| !r.documented)
                .map(|r| r.path.as_str())
                .collect();
            assert_eq!(
                undocumented,
                BTreeSet::from([
                    "/healthz",
                    "/readyz",
                    "/metrics",
                    "/api/v1/openapi.json",
                    "/api/v1/docs",
                    "/",
                ])
            );
            for row in &rows {
                assert!(!row.methods.is_empty(), "{} serves nothing", row.path);
                if !row.expensive.is_empty() {
                    assert!(matches!(row.access, Access::Token(_)), "{}", row.path);
                }
            }
            let metrics = rows.iter().find(|r| r.path == "/metrics").expect("metrics");
            assert_eq!(
                matches!(metrics.access, Access::Token(_)),
                metrics_require_token
            );
        }
    }

    /// Only the routes that hold no data or check their own credential go without a token.
    #[test]
    fn only_the_known_routes_go_without_a_token() {
        let open: Vec<(String, Access)> = table(false)
            .into_iter()
            .filter(|r| !matches!(r.access, Access::Token(_)) && r.path != "/metrics")
            .map(|r| (r.path, r.access))
            .collect();
        let expected = [
            ("/healthz", Access::Public),
            ("/readyz", Access::Public),
            ("/api/v1/openapi.json", Access::Public),
            ("/api/v1/docs", Access::Public),
            (
                "/api/v1/callbacks/twilio",
                Access::OwnCheck("Twilio's signature"),
            ),
            ("/", Access::Public),
            (
                "/api/v1/dashboard/events",
                Access::OwnCheck("a dashboard ticket or the API token"),
            ),
        ];
        assert_eq!(open.len(), expected.len(), "{open:?}");
        for (path, access) in expected {
            assert!(
                open.iter().any(|(p, a)| p == path && *a == access),
                "{path} {access:?} not in {open:?}"
            );
        }
    }
}
