//! TLS credentials from Kubernetes Secrets, as Istio's gateways read them
//! for a server's `credentialName`: the certificate chain and key under
//! Istio's generic keys (`cert`, `key`) or a `kubernetes.io/tls` Secret's
//! (`tls.crt`, `tls.key`), and the CA clients are verified against under
//! `cacert` or `ca.crt`, with its revocation list under `crl` or `ca.crl`.
//! The generic keys win when both are there, as in Istio.
//!
//! A Secret with none of these keys holds no credential; the index keeps
//! no entry for it.

use std::collections::BTreeMap;

use serde::{Serialize, Serializer};

use super::ObjectKey;

/// Istio's suffix of the SDS name that asks for a credential's CA only.
pub const CA_SUFFIX: &str = "-cacert";

/// What one Secret holds for TLS. Each part is PEM, as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TlsCredential {
    pub key: ObjectKey,
    #[serde(serialize_with = "size")]
    pub cert_chain: Option<Vec<u8>>,
    /// Never shown: debug views say only whether it is there.
    #[serde(serialize_with = "redacted")]
    pub private_key: Option<Vec<u8>>,
    #[serde(serialize_with = "size")]
    pub ca_cert: Option<Vec<u8>>,
    #[serde(serialize_with = "size")]
    pub ca_crl: Option<Vec<u8>>,
}

fn redacted<S: Serializer>(key: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if key.is_some() { "[redacted]" } else { "" })
}

fn size<S: Serializer>(pem: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&pem.as_ref().map(|p| format!("{} bytes", p.len())).unwrap_or_default())
}

impl TlsCredential {
    /// The credential in a Secret's `data` ([`TlsCredential::is_empty`]
    /// when it holds none of its parts).
    pub fn from_data(key: ObjectKey, data: &BTreeMap<String, Vec<u8>>) -> Self {
        let get = |name: &str| data.get(name).filter(|v| !v.is_empty()).cloned();
        let (cert_chain, private_key) = match (get("cert"), get("key")) {
            (Some(cert), Some(key)) => (Some(cert), Some(key)),
            _ => (get("tls.crt"), get("tls.key")),
        };
        Self {
            key,
            cert_chain,
            private_key,
            ca_cert: get("cacert").or_else(|| get("ca.crt")),
            ca_crl: get("crl").or_else(|| get("ca.crl")),
        }
    }

    /// Whether the Secret held nothing for TLS (the index keeps no such).
    pub fn is_empty(&self) -> bool {
        self.cert_chain.is_none() && self.private_key.is_none() && self.ca_cert.is_none()
    }

    /// Whether it can serve as a server's certificate: a chain and its key.
    pub fn has_certificate(&self) -> bool {
        self.cert_chain.is_some() && self.private_key.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect()
    }

    #[test]
    fn reads_tls_secrets_and_istios_generic_keys_the_generic_first() {
        let key = ObjectKey::new("istio-system", "bookinfo-credential");
        let tls = TlsCredential::from_data(
            key.clone(),
            &data(&[("tls.crt", "C"), ("tls.key", "K"), ("ca.crt", "A")]),
        );
        assert_eq!(
            (tls.cert_chain.as_deref(), tls.private_key.as_deref(), tls.ca_cert.as_deref()),
            (Some(&b"C"[..]), Some(&b"K"[..]), Some(&b"A"[..]))
        );
        assert!(tls.has_certificate());

        let both = TlsCredential::from_data(
            key.clone(),
            &data(&[("tls.crt", "C"), ("tls.key", "K"), ("cert", "GC"), ("key", "GK"), ("cacert", "GA")]),
        );
        assert_eq!(
            (both.cert_chain.as_deref(), both.private_key.as_deref()),
            (Some(&b"GC"[..]), Some(&b"GK"[..]))
        );
        assert_eq!(both.ca_cert.as_deref(), Some(&b"GA"[..]));

        // A generic cert without its key does not hide a complete tls pair.
        let half = TlsCredential::from_data(
            key.clone(),
            &data(&[("cert", "GC"), ("tls.crt", "C"), ("tls.key", "K")]),
        );
        assert_eq!(half.cert_chain.as_deref(), Some(&b"C"[..]));

        let ca_only = TlsCredential::from_data(key.clone(), &data(&[("cacert", "A")]));
        assert!(!ca_only.has_certificate() && !ca_only.is_empty());
    }

    #[test]
    fn other_secrets_hold_no_credential_and_keys_are_never_shown() {
        let key = ObjectKey::new("default", "token");
        assert!(TlsCredential::from_data(key.clone(), &data(&[("token", "t"), ("tls.crt", "")])).is_empty());
        let credential = TlsCredential::from_data(key, &data(&[("tls.crt", "C"), ("tls.key", "SECRET")]));
        let shown = serde_json::to_string(&credential).expect("json");
        assert!(!shown.contains("SECRET") && shown.contains("[redacted]"), "{shown}");
    }
}
