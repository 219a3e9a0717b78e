//! Workload identity as Istio spells it: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`,
//! and the name rules that keep a bad string out of a certificate.

use std::fmt;

use super::error::CaError;

const SCHEME: &str = "spiffe://";

const LABEL_RULE: &str = "must be a DNS-1123 label: at most 63 lowercase letters, digits or '-', \
                          starting and ending with a letter or digit";
const SUBDOMAIN_RULE: &str = "must be a DNS-1123 subdomain: at most 253 characters, DNS-1123 labels \
                              (lowercase letters, digits, '-') joined by '.'";
const TRUST_DOMAIN_RULE: &str =
    "must be 1 to 255 lowercase letters, digits, '.', '-' or '_' (a SPIFFE trust domain, e.g. cluster.local)";

/// The SPIFFE identity of a Kubernetes service account, validated on construction.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

impl SpiffeId {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Result<Self, CaError> {
        check_trust_domain(trust_domain)?;
        if !is_dns1123_label(namespace) {
            return Err(invalid("namespace", namespace, LABEL_RULE));
        }
        if !is_dns1123_subdomain(service_account) {
            return Err(invalid("service account", service_account, SUBDOMAIN_RULE));
        }
        Ok(Self {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        })
    }

    /// Parses the URI form, e.g. from a peer certificate's URI SAN.
    pub fn parse(uri: &str) -> Result<Self, CaError> {
        let bad = |reason| CaError::InvalidSpiffeId { value: uri.to_string(), reason };
        let rest = uri.strip_prefix(SCHEME).ok_or_else(|| bad("it does not start with spiffe://"))?;
        match rest.split('/').collect::<Vec<_>>()[..] {
            [trust_domain, "ns", namespace, "sa", service_account] => {
                Self::new(trust_domain, namespace, service_account)
            }
            _ => Err(bad("the path is not /ns/<namespace>/sa/<service-account>")),
        }
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

pub(crate) fn check_trust_domain(value: &str) -> Result<(), CaError> {
    let ok = (1..=255).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok { Ok(()) } else { Err(invalid("trust domain", value, TRUST_DOMAIN_RULE)) }
}

pub(crate) fn check_dns_name(value: &str) -> Result<(), CaError> {
    if is_dns1123_subdomain(value) { Ok(()) } else { Err(invalid("DNS name", value, SUBDOMAIN_RULE)) }
}

fn is_dns1123_label(value: &str) -> bool {
    let bytes = value.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            bytes.len() <= 63 && alnum(first) && alnum(last) && bytes.iter().all(|b| alnum(b) || *b == b'-')
        }
        _ => false,
    }
}

fn is_dns1123_subdomain(value: &str) -> bool {
    value.len() <= 253 && value.split('.').all(is_dns1123_label)
}

fn invalid(kind: &'static str, value: &str, rule: &'static str) -> CaError {
    CaError::InvalidName { kind, value: value.to_string(), rule }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_istio_identities() {
        let id = SpiffeId::new("cluster.local", "default", "bookinfo-productpage").unwrap();
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/bookinfo-productpage");
        assert_eq!(SpiffeId::parse(&id.to_string()).unwrap(), id);
        // Service accounts are subdomains, so dots are fine.
        assert!(SpiffeId::new("cluster.local", "ns1", "a.b-c").is_ok());
    }

    #[test]
    fn rejects_bad_namespaces() {
        for ns in ["", "Default", "-a", "a-", "a.b", "a_b", "a/b", &"a".repeat(64)] {
            let err = SpiffeId::new("cluster.local", ns, "sa").unwrap_err();
            assert!(
                matches!(err, CaError::InvalidName { kind: "namespace", .. }),
                "namespace {ns:?} gave {err}"
            );
        }
        assert!(SpiffeId::new("cluster.local", &"a".repeat(63), "sa").is_ok());
    }

    #[test]
    fn rejects_bad_service_accounts() {
        for sa in ["", "SA", "a..b", ".a", "a.", "a/b", "a b", &"a".repeat(254)] {
            let err = SpiffeId::new("cluster.local", "default", sa).unwrap_err();
            assert!(
                matches!(err, CaError::InvalidName { kind: "service account", .. }),
                "service account {sa:?} gave {err}"
            );
        }
    }

    #[test]
    fn rejects_bad_trust_domains() {
        for td in ["", "Cluster.local", "spiffe://cluster.local", "a/b", "a b", &"a".repeat(256)] {
            let err = SpiffeId::new(td, "default", "sa").unwrap_err();
            assert!(matches!(err, CaError::InvalidName { kind: "trust domain", .. }), "{td:?} gave {err}");
        }
        assert!(SpiffeId::new("my_corp-1.example", "default", "sa").is_ok());
    }

    #[test]
    fn rejects_malformed_uris() {
        for uri in [
            "https://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a",
            "spiffe://cluster.local/ns/a/sa/b/extra",
            "spiffe://cluster.local/sa/b/ns/a",
        ] {
            assert!(matches!(SpiffeId::parse(uri), Err(CaError::InvalidSpiffeId { .. })), "{uri}");
        }
        assert!(matches!(
            SpiffeId::parse("spiffe://cluster.local/ns/Bad/sa/b"),
            Err(CaError::InvalidName { kind: "namespace", .. })
        ));
    }

    #[test]
    fn error_messages_say_what_and_how() {
        let msg = SpiffeId::new("cluster.local", "My_NS", "sa").unwrap_err().to_string();
        assert!(msg.contains("invalid namespace \"My_NS\""), "{msg}");
        assert!(msg.contains("DNS-1123 label"), "{msg}");
    }
}
