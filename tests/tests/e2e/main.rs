//! Cross-service tests: the whole pipeline against a real NATS JetStream and PostgreSQL.

mod campaign_states;
mod carrier_stack;
mod carriers;
mod retries;
mod stack;
mod walking_skeleton;
