//! The mesh's certificate authority: the pure core, with no I/O.
//!
//! The CA signs from one of two roots of trust:
//! - a **generated** self-signed [`Root`] (ECDSA P-256, ten years), the default;
//! - a **plugged-in** CA in Istio's `cacerts` Secret layout ([`CaCerts`]): the mesh signs with
//!   `ca-cert.pem`/`ca-key.pem` (usually an intermediate) and clients trust `root-cert.pem`.
//!
//! An [`Authority`] loaded from either validates the material up front, with errors that say how
//! to fix it, and then issues [`Leaf`] certificates with a fresh ECDSA P-256 key each:
//! - serving certificates for the controller's own HTTPS endpoints (DNS SANs, serverAuth);
//! - workload certificates for a SPIFFE identity ([`SpiffeId`], URI SAN, serverAuth +
//!   clientAuth), as Istio's CA issues them.
//!
//! [`RotationPolicy`] decides when a certificate is due for renewal (at half its lifetime, like
//! Istio); every time-dependent function takes `now`, so tests need no real clock.
//!
//! [`serving::ServingCert`] holds the serving certificate the webhooks' and the xDS server's TLS
//! present, swapped in place on renewal.
//!
//! Neighbours: nothing here touches the API server, files or the network. The caller in
//! `app` stores a generated root in the Secret `mesh-ca` of the mesh namespace (keys
//! [`CA_CERT`] and [`CA_KEY`]) or reads the user's `cacerts` Secret, publishes
//! [`Authority::trust_bundle_pem`] as ConfigMap `mesh-ca-root-cert` (key [`ROOT_CERT`]) in every
//! namespace, and the SDS layer calls [`Authority::issue_workload`] for each proxy identity.

mod authority;
mod cert;
mod error;
mod identity;
mod key;
mod policy;
pub mod serving;
pub mod store;
#[cfg(test)]
mod tests;

pub use authority::{
    Authority, BACKDATE, CA_CERT, CA_KEY, CERT_CHAIN, CaCerts, DEFAULT_LEAF_LIFETIME, Leaf, ROOT_CERT,
    ROOT_LIFETIME, Root, service_dns_names,
};
pub use cert::CertInfo;
pub use error::{CaError, CaOrigin};
pub use identity::SpiffeId;
pub use policy::RotationPolicy;
