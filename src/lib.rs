//! mesh: a service-mesh control plane for Kubernetes that speaks Istio's
//! configuration APIs and drives stock Envoy sidecars.
//!
//! Layers, imports flowing one way (see docs/architecture.md; `make lint`
//! checks them with scripts/layers.py):
//! `api` (CRD types) -> `model` (plain data, Istio's grammar) -> `index`
//! (watch events to model), `translate` (model to Envoy) and `validate`
//! (Istio's rules), which know nothing of each other -> `xds`, `webhook`,
//! `status` -> `app`, which wires them. Beside them, the operator's
//! commands: `ctl`, `analyze`, `dashboard`.

/// This build's version: `mesh version`, the controller's /version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(test)]
mod agreement;
pub mod analyze;
pub mod api;
pub mod app;
pub mod ca;
pub mod ctl;
pub mod dashboard;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod index;
pub mod inject;
pub mod iptables;
pub mod model;
pub mod monitoring;
pub mod readiness;
pub mod status;
pub mod supervisor;
// The fuzz targets use the Bookinfo fixture only.
#[cfg(any(test, feature = "fuzzing"))]
#[cfg_attr(not(test), allow(dead_code))]
mod testing;
pub mod translate;
pub mod validate;
pub mod webhook;
pub mod xds;
