//! Route handlers, one module per resource.

pub mod bulk;
pub mod call_audit;
pub mod call_queries;
pub mod callbacks;
pub mod calls;
pub mod campaign_admin;
pub mod campaigns;
pub mod compat;
pub mod consents;
pub mod contact_calls;
pub mod contact_import;
pub mod contacts;
pub mod dlq;
pub mod dnc;
pub mod rerun;
pub mod reschedule;
pub mod subjects;
pub mod table;
pub mod tokens;
pub mod webhook_deliveries;
pub mod webhooks;
