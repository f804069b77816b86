//! The dialer's carrier adapters against carrier-sim over HTTP, and its metrics, probes and
//! outcome router against a real NATS server; the carrier's ids recorded by a placement; the
//! check made again right before a paced call is placed; an outcome missed while disconnected;
//! the hang-up at a call's maximum duration; generated sequences of carrier answers; outcomes
//! addressed to the replica that placed each call; idle campaigns that cost no pull and are
//! woken by their calls.

mod adapters;
mod addressed;
mod answers;
mod caller_ids;
mod concurrent_deliveries;
mod consumer_reconcile;
mod expiry;
mod frequency;
mod idle_campaigns;
mod idle_campaigns_generated;
mod lost_outcome;
mod metrics;
mod outcomes;
mod placements;
mod recheck;
mod stale_cap;
