//! carrier-sim over HTTP: placements, idempotency, faults and signed callbacks.

mod api;
mod throttle;
