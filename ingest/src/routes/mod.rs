//! Route handlers, one module per resource.

pub mod calls;
pub mod campaigns;
pub mod compat;
