//! Cross-service tests: the whole pipeline against a real NATS JetStream and PostgreSQL.

mod stack;
mod walking_skeleton;
