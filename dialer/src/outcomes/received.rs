//! How many outcomes reached this dialer, by route: in memory for tests and in the metric
//! `ccm_dialer_outcomes_received_total{route}` for the benchmark and dashboards.

use std::sync::atomic::{AtomicU64, Ordering};

use ccm_core::metrics::counter;

/// How an outcome reached this dialer: the `route` label of
/// `ccm_dialer_outcomes_received_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A copy sent to this dialer's own address.
    Addressed,
    /// A copy sent to another dialer's address that this one listens to while it waits for
    /// an attempt that dialer placed.
    Adopted,
    /// A copy no address could be found for, sent to every dialer.
    Broadcast,
    /// Read from the stream by a waiting call (after a reconnect, periodically, or right
    /// after adopting): the copy was missed or never sent.
    Stream,
}

impl Route {
    fn label(self) -> &'static str {
        match self {
            Self::Addressed => "addressed",
            Self::Adopted => "adopted",
            Self::Broadcast => "broadcast",
            Self::Stream => "stream",
        }
    }
}

/// How many outcomes this dialer received, by route (copies, whether a call here waited for
/// them or not; stream reads that found an outcome).
#[derive(Debug, Default)]
pub struct Received {
    addressed: AtomicU64,
    adopted: AtomicU64,
    broadcast: AtomicU64,
    stream: AtomicU64,
}

impl Received {
    /// Counts one outcome that came by `route`.
    pub(super) fn count(&self, route: Route) {
        self.counter(route).fetch_add(1, Ordering::Relaxed);
        counter!("ccm_dialer_outcomes_received_total", "route" => route.label()).increment(1);
    }

    fn counter(&self, route: Route) -> &AtomicU64 {
        match route {
            Route::Addressed => &self.addressed,
            Route::Adopted => &self.adopted,
            Route::Broadcast => &self.broadcast,
            Route::Stream => &self.stream,
        }
    }

    /// How many came by `route`.
    pub fn get(&self, route: Route) -> u64 {
        self.counter(route).load(Ordering::Relaxed)
    }
}
