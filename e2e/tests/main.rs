//! End-to-end tests: a real kube-apiserver, real kubectl, the real `mesh`
//! binary. Run with `make test-e2e` (or `make test`), which brings up a
//! cluster of their own and removes it afterwards.

mod support;

mod analyze;
mod authn;
mod authz;
mod ca;
mod crds;
mod debug;
mod destination_policy;
mod egress;
mod gateway;
mod gateway_tls;
mod ha;
mod http_ops;
mod inject;
mod l4_routing;
mod node;
mod observe;
mod resilience;
mod routing;
mod security;
mod sidecar_scope;
mod webhook;
