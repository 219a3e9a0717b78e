//! When to renew a certificate. Istio rotates at half the lifetime: a day-long workload
//! certificate is replaced after twelve hours, leaving twelve hours to retry if the CA or the
//! API server is briefly unavailable.

use time::{Duration, OffsetDateTime};

use super::BACKDATE;
use super::cert::CertInfo;

/// Renews once a set share of a certificate's lifetime (notBefore to notAfter) has passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RotationPolicy {
    renew_at_percent: u8,
}

impl Default for RotationPolicy {
    /// Istio's default: renew at 50 % of the lifetime.
    fn default() -> Self {
        Self { renew_at_percent: 50 }
    }
}

impl RotationPolicy {
    /// Renew once `percent` of the lifetime has passed; values above 100 mean 100 (at expiry).
    pub fn new(percent: u8) -> Self {
        Self { renew_at_percent: percent.min(100) }
    }

    /// The moment `cert` is due for renewal: a share of its life since it
    /// was issued. The CA backdates notBefore by [`BACKDATE`] against clock
    /// skew, so life counts from notBefore + BACKDATE (never past notAfter):
    /// a short-lived certificate is not half used up the moment it is made.
    pub fn renew_at(&self, cert: &CertInfo) -> OffsetDateTime {
        let issued = (cert.not_before + BACKDATE).min(cert.not_after);
        let lifetime = (cert.not_after - issued).whole_seconds().max(0);
        // i128: a lifetime near i64::MAX seconds times 100 must not overflow.
        let elapsed = i128::from(lifetime) * i128::from(self.renew_at_percent) / 100;
        issued + Duration::seconds(i64::try_from(elapsed).unwrap_or(i64::MAX))
    }

    /// Whether the first certificate in `cert_pem` is due for renewal at `now`. A certificate
    /// that cannot be read is due: replacing it is the only way forward.
    pub fn needs_renewal(&self, cert_pem: &str, now: OffsetDateTime) -> bool {
        match CertInfo::from_pem(cert_pem) {
            Ok(cert) => now >= self.renew_at(&cert),
            Err(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::authority::{Authority, BACKDATE, DEFAULT_LEAF_LIFETIME, Root};
    use crate::ca::identity::SpiffeId;

    fn t0() -> OffsetDateTime {
        // 2025-06-01T00:00:00Z: a fixed clock keeps the test deterministic.
        OffsetDateTime::from_unix_timestamp(1_748_736_000).unwrap()
    }

    #[test]
    fn renews_at_half_life_with_an_injected_clock() {
        let root = Root::generate("cluster.local", t0()).unwrap();
        let ca = Authority::from_root(&root, t0()).unwrap();
        let id = SpiffeId::new("cluster.local", "default", "sleep").unwrap();
        let leaf = ca.issue_workload(&id, DEFAULT_LEAF_LIFETIME, t0()).unwrap();

        let policy = RotationPolicy::default();
        let info = CertInfo::from_pem(&leaf.cert_chain_pem).unwrap();
        assert_eq!(info.not_before, t0() - BACKDATE);
        assert_eq!(info.not_after, t0() + DEFAULT_LEAF_LIFETIME);
        let half = t0() + DEFAULT_LEAF_LIFETIME / 2;
        assert_eq!(policy.renew_at(&info), half);

        assert!(!policy.needs_renewal(&leaf.cert_chain_pem, t0()));
        assert!(!policy.needs_renewal(&leaf.cert_chain_pem, half - Duration::seconds(1)));
        assert!(policy.needs_renewal(&leaf.cert_chain_pem, half));
        assert!(policy.needs_renewal(&leaf.cert_chain_pem, t0() + Duration::days(2)));
    }

    #[test]
    fn other_shares_and_unreadable_certificates() {
        let info = CertInfo {
            subject: String::new(),
            issuer: String::new(),
            common_name: None,
            serial: String::new(),
            dns_names: vec![],
            uris: vec![],
            not_before: t0() - BACKDATE,
            not_after: t0() + Duration::hours(10),
            is_ca: false,
        };
        assert_eq!(RotationPolicy::new(80).renew_at(&info), t0() + Duration::hours(8));
        assert_eq!(RotationPolicy::new(0).renew_at(&info), t0());
        assert_eq!(RotationPolicy::new(200).renew_at(&info), info.not_after);
        assert!(RotationPolicy::default().needs_renewal("not a certificate", t0()));
    }

    #[test]
    fn a_short_lived_certificate_is_renewed_halfway_through_its_own_life() {
        let root = Root::generate("cluster.local", t0()).unwrap();
        let ca = Authority::from_root(&root, t0()).unwrap();
        let leaf = ca.issue_serving(&["mesh.mesh-system.svc"], Duration::seconds(6), t0()).unwrap();
        assert_eq!(RotationPolicy::default().renew_at(&leaf.cert), t0() + Duration::seconds(3));
    }
}
