//! The admission webhooks (work in progress; see docs/architecture.md).

pub mod validate;
