//! Route handlers, one module per resource.

pub mod callbacks;
pub mod calls;
pub mod campaigns;
pub mod dlq;
