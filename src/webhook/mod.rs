//! The admission webhooks, served over HTTPS with a certificate from the
//! mesh's own CA (the rules themselves are [`crate::validate`]):
//! - `admission`: an AdmissionReview in, an answer out (pure);
//! - `injection`: the sidecar injector's review: a Pod in, a patch out (pure);
//! - `server`: the HTTPS listener, whose certificate
//!   ([`crate::ca::serving::ServingCert`], shared with the xDS server) is
//!   swapped in place when it is renewed, so the webhook keeps answering
//!   across a rotation.

pub mod admission;
pub mod configuration;
pub mod gateways;
pub mod injection;
pub mod metrics;
pub mod server;
