//! mesh: a service-mesh control plane for Kubernetes that speaks Istio's
//! configuration APIs and drives stock Envoy sidecars.
//!
//! Layers, imports flowing one way (see docs/architecture.md):
//! `api` (CRD types) -> `model` (plain data) -> `index` (watch events to
//! model) -> later `translate`, `xds`, `ca`, `webhook`; `app` wires them.

pub mod api;
pub mod app;
pub mod ca;
pub mod index;
pub mod inject;
pub mod iptables;
pub mod model;
pub mod monitoring;
pub mod readiness;
pub mod status;
pub mod supervisor;
#[cfg(test)]
mod testing;
pub mod translate;
pub mod validate;
pub mod webhook;
pub mod xds;
