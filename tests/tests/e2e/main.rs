//! Cross-service tests: the whole pipeline against a real NATS JetStream and PostgreSQL.

mod retries;
mod stack;
mod walking_skeleton;
