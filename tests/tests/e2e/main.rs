//! Cross-service tests: the whole pipeline against a real NATS JetStream and PostgreSQL.

mod answering_machine;
mod call_expiry;
mod calling_window;
mod campaign_states;
mod carrier_stack;
mod carriers;
mod chaos;
mod chaos_generated;
mod consent;
mod custom_fields;
mod dashboard;
mod do_not_call;
mod expiry;
mod frequency_cap;
mod lifecycle;
mod pacing;
mod retention;
mod retries;
mod shutdown;
mod stack;
mod subjects;
mod subjects_generated;
mod subjects_walk;
mod traces;
mod walking_skeleton;
mod webhooks;
