//! Workload identity over SDS: each authorized stream gets a fresh key and
//! an X.509-SVID for `spiffe://<trust-domain>/ns/<namespace>/sa/<account>`,
//! where namespace and account come from the stream's reviewed token
//! ([`TokenIdentity`]), never from anything the proxy asks for. They go to
//! the proxy as Istio's secrets `default` (key and chain) and `ROOTCA`
//! (trust bundle), beside the configuration of the same stream.
//!
//! A key is made per stream and lives only in the stream's task and in the
//! response that carries it; a reconnect (after the stream is recycled for
//! a fresh token, or the controller restarts) gets a new key. The session
//! renews the certificate at half its life ([`IssuedSecrets::renew_at`])
//! and pushes it like any other change, so connections are not dropped.
//!
//! A request for any other secret name is refused: not served, counted in
//! `mesh_xds_secret_refusals_total` and logged as a warning. Over Delta the
//! name is answered as absent, as any name the snapshot lacks; Envoy keeps
//! waiting for it without delaying what else it warms.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use time::OffsetDateTime;

use super::auth::TokenIdentity;
use super::snapshot::{Resource, ResourceSet};
use crate::ca::{Authority, CaError, RotationPolicy, SpiffeId};
use crate::translate::secret::{ROOT_SECRET, WORKLOAD_SECRET, root_secret, workload_secret};

/// Istio's default workload certificate lifetime.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);

/// Whether a proxy may be sent the secret it asks for by `name`: only its
/// own (`default`) and the trust bundle (`ROOTCA`).
pub fn is_served_secret(name: &str) -> bool {
    name == WORKLOAD_SECRET || name == ROOT_SECRET
}

/// The CA as the xDS server uses it: set once the controller has loaded
/// (or made) it; until then streams are refused as not ready.
pub struct WorkloadCa {
    authority: RwLock<Option<Arc<Authority>>>,
    trust_domain: String,
    ttl: Duration,
}

impl std::fmt::Debug for WorkloadCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadCa")
            .field("trust_domain", &self.trust_domain)
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// Why a stream's secrets could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("the certificate authority is not loaded yet; reconnect")]
    NotReady,
    #[error("no SPIFFE identity for this proxy: {0}")]
    Identity(CaError),
    #[error("signing the workload certificate: {0}")]
    Sign(CaError),
}

/// A stream's secrets, and what the rest of the stream needs to know of
/// its certificate. The private key is only inside `secrets`.
#[derive(Clone, Debug)]
pub struct IssuedSecrets {
    /// `default` and `ROOTCA`, ready to join the stream's snapshots.
    pub secrets: Arc<ResourceSet>,
    pub summary: CertSummary,
    /// When to issue the next one (half the lifetime, as Istio).
    pub renew_at: OffsetDateTime,
}

/// A workload certificate as debug views show it: no key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertSummary {
    pub spiffe_id: String,
    /// Hex, colon-separated.
    pub serial: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl WorkloadCa {
    /// Certificates of `ttl` for identities in `trust_domain`; no CA yet.
    pub fn new(trust_domain: impl Into<String>, ttl: Duration) -> Self {
        Self { authority: RwLock::new(None), trust_domain: trust_domain.into(), ttl }
    }

    /// A CA ready at once (tests, benchmarks).
    pub fn with_authority(authority: Arc<Authority>, trust_domain: impl Into<String>, ttl: Duration) -> Self {
        let ca = Self::new(trust_domain, ttl);
        ca.set_authority(authority);
        ca
    }

    /// Installs the CA the controller loaded.
    pub fn set_authority(&self, authority: Arc<Authority>) {
        *self.authority.write().unwrap_or_else(|p| p.into_inner()) = Some(authority);
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A new key and certificate for the identity the token proved.
    pub fn issue(&self, identity: &TokenIdentity, now: OffsetDateTime) -> Result<IssuedSecrets, IssueError> {
        let authority =
            self.authority.read().unwrap_or_else(|p| p.into_inner()).clone().ok_or(IssueError::NotReady)?;
        let id = SpiffeId::new(&self.trust_domain, &identity.namespace, &identity.service_account)
            .map_err(IssueError::Identity)?;
        let lifetime = time::Duration::try_from(self.ttl).unwrap_or(time::Duration::DAY);
        let leaf = authority.issue_workload(&id, lifetime, now).map_err(IssueError::Sign)?;
        let secrets = [
            Resource::of(WORKLOAD_SECRET, &workload_secret(&leaf.cert_chain_pem, &leaf.key_pem)),
            Resource::of(ROOT_SECRET, &root_secret(authority.trust_bundle_pem())),
        ];
        Ok(IssuedSecrets {
            secrets: Arc::new(ResourceSet::new(secrets.map(Arc::new))),
            renew_at: RotationPolicy::default().renew_at(&leaf.cert),
            summary: CertSummary {
                spiffe_id: id.to_string(),
                serial: leaf.cert.serial.clone(),
                not_before: leaf.cert.not_before,
                not_after: leaf.cert.not_after,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
    use prost::Message;

    use super::*;
    use crate::ca::Root;
    use crate::xds::auth::tests::identity;

    fn ca(ttl: Duration) -> WorkloadCa {
        let now = OffsetDateTime::now_utc();
        let root = Root::generate("cluster.local", now).expect("root");
        WorkloadCa::with_authority(
            Arc::new(Authority::from_root(&root, now).expect("authority")),
            "cluster.local",
            ttl,
        )
    }

    #[test]
    fn the_certificate_names_the_tokens_service_account_and_renews_at_half_life() {
        let ca = ca(Duration::from_secs(3600));
        let now = OffsetDateTime::now_utc();
        let issued = ca.issue(&identity(), now).expect("issued");
        assert_eq!(issued.summary.spiffe_id, "spiffe://cluster.local/ns/default/sa/bookinfo-productpage");
        // notBefore is backdated against clock skew; life counts from issue.
        let issued_at = issued.summary.not_before + crate::ca::BACKDATE;
        assert_eq!(issued.summary.not_after - issued_at, time::Duration::hours(1));
        assert_eq!(issued.renew_at, issued_at + time::Duration::minutes(30));
        let names: Vec<_> = issued.secrets.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["ROOTCA", "default"]);

        let default =
            Secret::decode(issued.secrets.get("default").expect("default").value()).expect("secret");
        let text = format!("{default:?}");
        assert!(text.contains("BEGIN PRIVATE KEY"), "the workload secret carries the key");
        let again = ca.issue(&identity(), now).expect("issued");
        assert_ne!(again.summary.serial, issued.summary.serial, "a new certificate each time");
    }

    #[test]
    fn without_a_ca_or_with_a_bad_identity_nothing_is_issued() {
        let empty = WorkloadCa::new("cluster.local", DEFAULT_TTL);
        assert!(matches!(empty.issue(&identity(), OffsetDateTime::now_utc()), Err(IssueError::NotReady)));
        let ca = ca(DEFAULT_TTL);
        let bad = TokenIdentity { service_account: "Not_A_Name".into(), ..identity() };
        let err = ca.issue(&bad, OffsetDateTime::now_utc()).expect_err("refused");
        assert!(err.to_string().contains("service account"), "{err}");
    }

    #[test]
    fn only_the_proxys_own_secret_and_the_bundle_are_served() {
        assert!(is_served_secret("default"));
        assert!(is_served_secret("ROOTCA"));
        for other in
            ["spiffe://cluster.local/ns/default/sa/reviews", "kubernetes://reviews-cert", "", "Default"]
        {
            assert!(!is_served_secret(other), "{other}");
        }
    }
}
